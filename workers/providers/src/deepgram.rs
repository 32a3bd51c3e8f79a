//! Deepgram streaming speech-to-text (`/v1/listen` over a WebSocket).
//!
//! The caller's μ-law 8 kHz audio goes over untouched as binary frames (`encoding=mulaw`,
//! `sample_rate=8000`): no transcoding on the per-frame path. We ask for interim results (barge-in
//! needs words while the caller is still speaking), endpointing (`speech_final` ends the caller's
//! turn), utterance-end messages (the documented backstop when `speech_final` never comes) and VAD
//! events. Auth is the `Authorization: Token …` header on the handshake.

use callmeback_media::SttEvent;
use serde::Deserialize;

/// Keeps the socket open while no audio flows (Deepgram closes after 10 s otherwise).
pub const KEEP_ALIVE: &str = r#"{"type":"KeepAlive"}"#;
/// Flushes what Deepgram holds as final results.
pub const FINALIZE: &str = r#"{"type":"Finalize"}"#;
/// Ends the stream: final results, then `Metadata` with the billed duration, then close.
pub const CLOSE_STREAM: &str = r#"{"type":"CloseStream"}"#;

/// Recognition settings (Worker variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SttSettings {
    pub model: String,
    pub language: String,
    /// Silence that ends a turn (`speech_final`); Deepgram recommends 300–500 ms for dialogue.
    pub endpointing_ms: u32,
    /// Gap after the last word that sends `UtteranceEnd` (≥ 1000 ms per Deepgram).
    pub utterance_end_ms: u32,
}

impl Default for SttSettings {
    fn default() -> Self {
        Self {
            model: "nova-3".to_owned(),
            language: "en".to_owned(),
            endpointing_ms: 300,
            utterance_end_ms: 1000,
        }
    }
}

/// The listen URL for `base` (e.g. `wss://api.deepgram.com/v1/listen`).
pub fn listen_url(base: &str, settings: &SttSettings) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("model", &settings.model)
        .append_pair("language", &settings.language)
        .append_pair("encoding", "mulaw")
        .append_pair("sample_rate", "8000")
        .append_pair("channels", "1")
        .append_pair("interim_results", "true")
        .append_pair("endpointing", &settings.endpointing_ms.to_string())
        .append_pair("utterance_end_ms", &settings.utterance_end_ms.to_string())
        .append_pair("vad_events", "true")
        .append_pair("smart_format", "true")
        .append_pair("punctuate", "true");
    format!("{}?{}", base.trim_end_matches('/'), query.finish())
}

/// The `Authorization` header value.
pub fn authorization(api_key: &str) -> String {
    format!("Token {api_key}")
}

/// One server message, read.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    Stt(SttEvent),
    /// Sent at the end of a stream: the audio Deepgram counted (billing).
    Metadata {
        duration_secs: f64,
    },
    /// An error Deepgram reported in-band.
    Error {
        message: String,
    },
    /// Results without words (silence between utterances), or types we do not use.
    Nothing,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    is_final: bool,
    #[serde(default)]
    speech_final: bool,
    /// An object on `Results`, an array of indexes on `UtteranceEnd`: read per type.
    #[serde(default)]
    channel: Option<serde_json::Value>,
    #[serde(default)]
    duration: Option<f64>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Reads one text message from Deepgram.
pub fn parse(text: &str) -> Result<ServerMessage, serde_json::Error> {
    let raw: Raw = serde_json::from_str(text)?;
    Ok(match raw.kind.as_str() {
        "Results" => {
            let transcript = raw
                .channel
                .as_ref()
                .and_then(|c| c.pointer("/alternatives/0/transcript"))
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if transcript.trim().is_empty() && !raw.speech_final {
                ServerMessage::Nothing
            } else {
                ServerMessage::Stt(SttEvent::Transcript {
                    text: transcript,
                    is_final: raw.is_final,
                    speech_final: raw.speech_final,
                })
            }
        }
        "UtteranceEnd" => ServerMessage::Stt(SttEvent::UtteranceEnd),
        "SpeechStarted" => ServerMessage::Stt(SttEvent::SpeechStarted),
        "Metadata" => ServerMessage::Metadata {
            duration_secs: raw.duration.unwrap_or(0.0),
        },
        "Error" => ServerMessage::Error {
            message: raw.description.or(raw.message).unwrap_or_default(),
        },
        _ => ServerMessage::Nothing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_asks_for_mulaw_passthrough_interims_and_endpointing() {
        let url = listen_url("wss://api.deepgram.com/v1/listen", &SttSettings::default());
        for part in [
            "encoding=mulaw",
            "sample_rate=8000",
            "interim_results=true",
            "endpointing=300",
            "utterance_end_ms=1000",
            "vad_events=true",
            "model=nova-3",
        ] {
            assert!(url.contains(part), "{part} missing from {url}");
        }
        assert!(url.starts_with("wss://api.deepgram.com/v1/listen?"));
    }

    #[test]
    fn results_and_signals() {
        let interim = r#"{"type":"Results","channel_index":[0,1],"duration":1.0,"start":0.0,"is_final":false,"speech_final":false,"channel":{"alternatives":[{"transcript":"hello there","confidence":0.9,"words":[]}]},"metadata":{"request_id":"r"}}"#;
        assert_eq!(
            parse(interim).unwrap(),
            ServerMessage::Stt(SttEvent::Transcript {
                text: "hello there".to_owned(),
                is_final: false,
                speech_final: false
            })
        );
        let endpoint = r#"{"type":"Results","is_final":true,"speech_final":true,"channel":{"alternatives":[{"transcript":""}]}}"#;
        assert!(matches!(
            parse(endpoint).unwrap(),
            ServerMessage::Stt(SttEvent::Transcript {
                speech_final: true,
                ..
            })
        ));
        let silence = r#"{"type":"Results","is_final":true,"speech_final":false,"channel":{"alternatives":[{"transcript":""}]}}"#;
        assert_eq!(parse(silence).unwrap(), ServerMessage::Nothing);
        assert_eq!(
            parse(r#"{"type":"UtteranceEnd","channel":[0,1],"last_word_end":2.1}"#).unwrap(),
            ServerMessage::Stt(SttEvent::UtteranceEnd)
        );
        assert_eq!(
            parse(r#"{"type":"SpeechStarted","channel":[0,1],"timestamp":0.5}"#).unwrap(),
            ServerMessage::Stt(SttEvent::SpeechStarted)
        );
        assert_eq!(
            parse(r#"{"type":"Metadata","duration":12.5,"channels":1}"#).unwrap(),
            ServerMessage::Metadata {
                duration_secs: 12.5
            }
        );
        assert!(parse("{").is_err());
    }
}
