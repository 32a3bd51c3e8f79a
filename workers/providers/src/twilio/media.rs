//! Twilio Media Streams messages (bidirectional, `<Connect><Stream>`).
//!
//! In: `connected`, `start`, `media`, `dtmf`, `mark`, `stop`, as JSON text frames. Out: only
//! `media`, `mark` and `clear` (anything else makes Twilio raise 31924), as text frames with the
//! stream's `streamSid` and base64 μ-law 8 kHz payloads.
//!
//! Parsing is on the per-frame path (50 inbound frames a second per call), so it borrows from the
//! frame: a `media` message is parsed without allocating, its payload decoded into a buffer the
//! caller reuses. Anything malformed — bad JSON, an unknown event, a missing field, bad base64,
//! an oversized payload — is a [`MediaError`] with a stable code, to be counted and dropped.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

/// The largest inbound payload accepted: one second of audio (Twilio sends 20 ms frames).
pub const MAX_PAYLOAD_BYTES: usize = 8000;

/// One inbound message, borrowing from the frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    Connected,
    Start(StreamStart),
    /// Caller audio, decoded into the caller's buffer (see [`parse_inbound`]).
    Media {
        stream_sid: Cow<'a, str>,
    },
    Dtmf {
        stream_sid: Cow<'a, str>,
        digit: char,
    },
    Mark {
        stream_sid: Cow<'a, str>,
        name: Cow<'a, str>,
    },
    Stop {
        stream_sid: Cow<'a, str>,
    },
}

/// What a `start` message says about the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    pub stream_sid: String,
    pub call_sid: String,
    pub account_sid: String,
    /// The `<Parameter>`s of the TwiML.
    pub custom_parameters: BTreeMap<String, String>,
    pub encoding: String,
    pub sample_rate: u32,
    pub channels: u32,
}

/// Why an inbound frame was dropped. Codes are stable (metrics, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaError {
    InvalidJson,
    UnknownEvent,
    MissingField,
    InvalidBase64,
    PayloadTooLarge,
    /// A `start` whose media format is not μ-law 8 kHz mono.
    UnsupportedFormat,
    /// A `streamSid` that is not a plain identifier.
    InvalidStreamSid,
}

impl MediaError {
    pub const fn code(self) -> &'static str {
        match self {
            MediaError::InvalidJson => "invalid_json",
            MediaError::UnknownEvent => "unknown_event",
            MediaError::MissingField => "missing_field",
            MediaError::InvalidBase64 => "invalid_base64",
            MediaError::PayloadTooLarge => "payload_too_large",
            MediaError::UnsupportedFormat => "unsupported_format",
            MediaError::InvalidStreamSid => "invalid_stream_sid",
        }
    }
}

/// A JSON string borrowed from the frame when it has no escapes (serde only borrows a `Cow`
/// that is a field of its own, not one inside an `Option`).
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(rename = "streamSid", borrow, default)]
    stream_sid: Option<Text<'a>>,
    #[serde(borrow, default)]
    media: Option<RawMedia<'a>>,
    #[serde(default)]
    start: Option<RawStart>,
    #[serde(borrow, default)]
    mark: Option<RawMark<'a>>,
    #[serde(default)]
    dtmf: Option<RawDtmf>,
}

#[derive(Deserialize)]
struct RawMedia<'a> {
    #[serde(borrow)]
    payload: Cow<'a, str>,
    #[serde(borrow, default)]
    track: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct RawMark<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawDtmf {
    digit: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStart {
    stream_sid: String,
    call_sid: String,
    #[serde(default)]
    account_sid: String,
    #[serde(default)]
    custom_parameters: BTreeMap<String, String>,
    #[serde(default)]
    media_format: Option<RawFormat>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFormat {
    encoding: String,
    sample_rate: u32,
    channels: u32,
}

/// Parses one inbound text frame. For `media`, the payload is decoded into `audio` (cleared
/// first); the buffer keeps its capacity, so steady-state parsing does not allocate.
pub fn parse_inbound<'a>(frame: &'a str, audio: &mut Vec<u8>) -> Result<Inbound<'a>, MediaError> {
    let raw: Raw<'a> = serde_json::from_str(frame).map_err(|_| MediaError::InvalidJson)?;
    let sid = |raw_sid: Option<Text<'a>>| -> Result<Cow<'a, str>, MediaError> {
        let sid = raw_sid.ok_or(MediaError::MissingField)?.0;
        if is_plain_sid(&sid) {
            Ok(sid)
        } else {
            Err(MediaError::InvalidStreamSid)
        }
    };
    match raw.event.as_ref() {
        "media" => {
            let media = raw.media.ok_or(MediaError::MissingField)?;
            if media
                .track
                .as_ref()
                .is_some_and(|track| track.0 != "inbound")
            {
                // Only the caller's track is expected on a `<Connect>` stream.
                return Err(MediaError::UnknownEvent);
            }
            // Base64 of MAX_PAYLOAD_BYTES is at most 4/3 as long.
            if media.payload.len() > MAX_PAYLOAD_BYTES.div_ceil(3) * 4 {
                return Err(MediaError::PayloadTooLarge);
            }
            audio.clear();
            STANDARD
                .decode_vec(media.payload.as_bytes(), audio)
                .map_err(|_| MediaError::InvalidBase64)?;
            Ok(Inbound::Media {
                stream_sid: sid(raw.stream_sid)?,
            })
        }
        "mark" => {
            let mark = raw.mark.ok_or(MediaError::MissingField)?;
            Ok(Inbound::Mark {
                stream_sid: sid(raw.stream_sid)?,
                name: mark.name,
            })
        }
        "dtmf" => {
            let digit = raw
                .dtmf
                .and_then(|dtmf| {
                    let mut chars = dtmf.digit.chars();
                    match (chars.next(), chars.next()) {
                        (Some(c), None)
                            if c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D') =>
                        {
                            Some(c)
                        }
                        _ => None,
                    }
                })
                .ok_or(MediaError::MissingField)?;
            Ok(Inbound::Dtmf {
                stream_sid: sid(raw.stream_sid)?,
                digit,
            })
        }
        "stop" => Ok(Inbound::Stop {
            stream_sid: sid(raw.stream_sid)?,
        }),
        "start" => {
            let start = raw.start.ok_or(MediaError::MissingField)?;
            if !is_plain_sid(&start.stream_sid) || !is_plain_sid(&start.call_sid) {
                return Err(MediaError::InvalidStreamSid);
            }
            let format = start.media_format.ok_or(MediaError::MissingField)?;
            if format.encoding != "audio/x-mulaw"
                || format.sample_rate != 8000
                || format.channels != 1
            {
                return Err(MediaError::UnsupportedFormat);
            }
            Ok(Inbound::Start(StreamStart {
                stream_sid: start.stream_sid,
                call_sid: start.call_sid,
                account_sid: start.account_sid,
                custom_parameters: start.custom_parameters,
                encoding: format.encoding,
                sample_rate: format.sample_rate,
                channels: format.channels,
            }))
        }
        "connected" => Ok(Inbound::Connected),
        _ => Err(MediaError::UnknownEvent),
    }
}

/// Twilio sids are letters and digits (`MZ…`, `CA…`); anything else is refused, which also means
/// they can be written into JSON without escaping.
fn is_plain_sid(sid: &str) -> bool {
    (2..=64).contains(&sid.len()) && sid.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Appends `{"event":"media","streamSid":…,"media":{"payload":…}}` for `audio` to `out`.
pub fn write_media(stream_sid: &str, audio: &[u8], out: &mut String) {
    out.reserve(audio.len().div_ceil(3) * 4 + stream_sid.len() + 64);
    out.push_str(r#"{"event":"media","streamSid":""#);
    out.push_str(stream_sid);
    out.push_str(r#"","media":{"payload":""#);
    STANDARD.encode_string(audio, out);
    out.push_str(r#""}}"#);
}

/// `{"event":"mark","streamSid":…,"mark":{"name":…}}`. Mark names are ours (`m17`): plain
/// identifiers like the sid, so neither needs escaping.
pub fn mark_message(stream_sid: &str, name: &str) -> String {
    debug_assert!(is_plain_sid(stream_sid) && name.bytes().all(|b| b.is_ascii_alphanumeric()));
    format!(r#"{{"event":"mark","streamSid":"{stream_sid}","mark":{{"name":"{name}"}}}}"#)
}

/// `{"event":"clear","streamSid":…}`: Twilio drops the audio it still holds.
pub fn clear_message(stream_sid: &str) -> String {
    debug_assert!(is_plain_sid(stream_sid));
    format!(r#"{{"event":"clear","streamSid":"{stream_sid}"}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC1","streamSid":"MZ123","callSid":"CA123","tracks":["inbound"],"customParameters":{"token":"abc.def"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"streamSid":"MZ123"}"#;

    #[test]
    fn start_carries_sids_and_parameters() {
        let mut audio = Vec::new();
        let Inbound::Start(start) = parse_inbound(START, &mut audio).unwrap() else {
            panic!("not a start");
        };
        assert_eq!(start.stream_sid, "MZ123");
        assert_eq!(start.call_sid, "CA123");
        assert_eq!(start.custom_parameters["token"], "abc.def");
    }

    #[test]
    fn media_decodes_into_the_reused_buffer_without_copying_the_sid() {
        let frame = r#"{"event":"media","sequenceNumber":"2","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"//8A"},"streamSid":"MZ123"}"#;
        let mut audio = Vec::with_capacity(160);
        let parsed = parse_inbound(frame, &mut audio).unwrap();
        assert!(matches!(
            parsed,
            Inbound::Media {
                stream_sid: Cow::Borrowed("MZ123")
            }
        ));
        assert_eq!(audio, vec![0xFF, 0xFF, 0x00]);
    }

    #[test]
    fn malformed_frames_have_stable_codes() {
        let mut audio = Vec::new();
        let cases = [
            ("not json", MediaError::InvalidJson),
            (
                r#"{"event":"bogus","streamSid":"MZ1"}"#,
                MediaError::UnknownEvent,
            ),
            (
                r#"{"event":"media","streamSid":"MZ1"}"#,
                MediaError::MissingField,
            ),
            (
                r#"{"event":"media","streamSid":"MZ1","media":{"payload":"!!!"}}"#,
                MediaError::InvalidBase64,
            ),
            (
                r#"{"event":"media","media":{"payload":"AAAA"}}"#,
                MediaError::MissingField,
            ),
            (
                r#"{"event":"media","streamSid":"MZ\"1","media":{"payload":"AAAA"}}"#,
                MediaError::InvalidStreamSid,
            ),
            (
                r#"{"event":"mark","streamSid":"MZ1"}"#,
                MediaError::MissingField,
            ),
            (
                r#"{"event":"dtmf","streamSid":"MZ1","dtmf":{"digit":"55"}}"#,
                MediaError::MissingField,
            ),
            (
                r#"{"event":"start","start":{"streamSid":"MZ1","callSid":"CA1","mediaFormat":{"encoding":"audio/l16","sampleRate":16000,"channels":1}}}"#,
                MediaError::UnsupportedFormat,
            ),
            (
                r#"{"event":"media","streamSid":"MZ1","media":{"track":"outbound","payload":"AAAA"}}"#,
                MediaError::UnknownEvent,
            ),
        ];
        for (frame, expected) in cases {
            assert_eq!(parse_inbound(frame, &mut audio), Err(expected), "{frame}");
        }
        let huge = format!(
            r#"{{"event":"media","streamSid":"MZ1","media":{{"payload":"{}"}}}}"#,
            "A".repeat(20_000)
        );
        assert_eq!(
            parse_inbound(&huge, &mut audio),
            Err(MediaError::PayloadTooLarge)
        );
    }

    #[test]
    fn dtmf_mark_and_stop() {
        let mut audio = Vec::new();
        assert_eq!(
            parse_inbound(
                r#"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"7"}}"#,
                &mut audio
            ),
            Ok(Inbound::Dtmf {
                stream_sid: Cow::Borrowed("MZ1"),
                digit: '7'
            })
        );
        assert_eq!(
            parse_inbound(
                r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"m3"}}"#,
                &mut audio
            ),
            Ok(Inbound::Mark {
                stream_sid: Cow::Borrowed("MZ1"),
                name: Cow::Borrowed("m3")
            })
        );
        assert_eq!(
            parse_inbound(
                r#"{"event":"stop","streamSid":"MZ1","stop":{"accountSid":"AC1","callSid":"CA1"}}"#,
                &mut audio
            ),
            Ok(Inbound::Stop {
                stream_sid: Cow::Borrowed("MZ1")
            })
        );
    }

    #[test]
    fn outbound_messages_are_exactly_twilios_shapes() {
        let mut out = String::new();
        write_media("MZ1", &[0xFF, 0xFF, 0x00], &mut out);
        assert_eq!(
            out,
            r#"{"event":"media","streamSid":"MZ1","media":{"payload":"//8A"}}"#
        );
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["media"]["payload"], "//8A");
        assert_eq!(
            mark_message("MZ1", "m1"),
            r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"m1"}}"#
        );
        let value: serde_json::Value = serde_json::from_str(&mark_message("MZ1", "m1")).unwrap();
        assert_eq!(value["mark"]["name"], "m1");
        assert_eq!(
            clear_message("MZ1"),
            r#"{"event":"clear","streamSid":"MZ1"}"#
        );
    }
}
