//! The speech codec: simulated speech as G.711 μ-law audio that carries its own text.
//!
//! Every simulator speaks and listens through this module. The simulated callee encodes each
//! script line as a *speech segment*; the STT simulator decodes segments to "recognise" them; the
//! TTS simulator encodes what it is asked to say; and the callee decodes what the persona said and
//! how much of it was actually played before a `clear`. Because the text travels inside the audio,
//! the Worker under test can re-chunk, buffer, forward or drop audio however it likes and the far
//! end still knows exactly what got through.
//!
//! Format (8 kHz mono μ-law, 8 bytes per ms, 160 bytes per 20 ms frame):
//! - silence is `0xFF` (μ-law zero; `0x7F`, negative zero, also counts as silence);
//! - a segment is a contiguous run of loud bytes, each carrying one 4-bit nibble: even positions
//!   within the segment are `0x10 | nibble`, odd positions `0x90 | nibble`. Both decode to
//!   samples of 8 000–16 000 in magnitude with alternating sign, so an energy VAD sees speech;
//! - the nibble stream (high nibble first) is `b"SP"`, segment id `u32` BE, duration ms `u32` BE,
//!   text length `u16` BE, the UTF-8 text, then zero nibbles until `duration_ms * 8` bytes.
//!
//! A segment ends at the first silence byte after it, or when its declared duration is complete
//! (so two segments sent back to back without a pause still decode as two).

use std::sync::atomic::{AtomicU32, Ordering};

/// μ-law bytes per millisecond at 8 kHz.
pub const BYTES_PER_MS: u64 = 8;
/// One 20 ms frame of μ-law audio: what Twilio sends per `media` message.
pub const FRAME_BYTES: usize = 160;
/// The μ-law encoding of a zero sample.
pub const SILENCE: u8 = 0xFF;
/// Default speaking rate: about 15 characters per second, normal conversational speech.
pub const DEFAULT_MS_PER_CHAR: u32 = 65;
/// No utterance is shorter than this, however short its text.
pub const MIN_SPEECH_MS: u32 = 300;

const MAGIC: &[u8; 2] = b"SP";
/// Magic, id, duration, text length.
const HEADER_BYTES: usize = 2 + 4 + 4 + 2;

static NEXT_SEGMENT_ID: AtomicU32 = AtomicU32::new(1);

/// A segment id unique in this process, so the phone, STT and TTS records can be joined on it.
pub fn next_segment_id() -> u32 {
    NEXT_SEGMENT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Standard G.711 μ-law to 16-bit linear PCM.
pub fn mulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let negative = u & 0x80 != 0;
    let exponent = (u >> 4) & 0x07;
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    let sample = if negative { -magnitude } else { magnitude };
    i16::try_from(sample).expect("μ-law magnitudes are at most 32 124")
}

/// Whether a byte is (μ-law) silence rather than part of a speech segment.
#[inline]
pub fn is_silence(byte: u8) -> bool {
    byte == SILENCE || byte == 0x7F
}

/// How long `text` takes to say at `ms_per_char`, never under [`MIN_SPEECH_MS`].
pub fn duration_for(text: &str, ms_per_char: u32) -> u32 {
    let chars = u32::try_from(text.chars().count()).unwrap_or(u32::MAX);
    chars.saturating_mul(ms_per_char).max(MIN_SPEECH_MS)
}

/// The shortest duration that holds the header and `text_len` bytes of text.
fn min_duration_ms(text_len: usize) -> u32 {
    let nibbles = (HEADER_BYTES + text_len) * 2;
    u32::try_from(nibbles.div_ceil(BYTES_PER_MS as usize)).unwrap_or(u32::MAX)
}

/// Encodes one speech segment.
///
/// The text is cut (at a character boundary) to 65 535 bytes, and the duration is raised when it
/// is too short to hold the header and text (about 1.5 ms per text byte); the header carries the
/// duration actually used, so `result.len() == header duration * 8`.
pub fn encode_segment(id: u32, text: &str, duration_ms: u32) -> Vec<u8> {
    let mut cut = text.len().min(usize::from(u16::MAX));
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let text = &text.as_bytes()[..cut];
    let duration_ms = duration_ms.max(min_duration_ms(text.len()));
    let total = duration_ms as usize * BYTES_PER_MS as usize;

    let mut message = Vec::with_capacity(HEADER_BYTES + text.len());
    message.extend_from_slice(MAGIC);
    message.extend_from_slice(&id.to_be_bytes());
    message.extend_from_slice(&duration_ms.to_be_bytes());
    let len = u16::try_from(text.len()).expect("text was cut to u16::MAX bytes");
    message.extend_from_slice(&len.to_be_bytes());
    message.extend_from_slice(text);

    let mut out = Vec::with_capacity(total);
    for (position, nibble) in message
        .iter()
        .flat_map(|byte| [byte >> 4, byte & 0x0F])
        .chain(std::iter::repeat(0))
        .take(total)
        .enumerate()
    {
        out.push(loud_byte(position, nibble));
    }
    out
}

#[inline]
fn loud_byte(position: usize, nibble: u8) -> u8 {
    if position.is_multiple_of(2) {
        0x10 | nibble
    } else {
        0x90 | nibble
    }
}

/// What a listener heard of `text` when playback stopped after `heard_ms` of a `duration_ms`
/// segment.
///
/// The rule: speech runs at a constant rate over the characters of the text, so after `heard_ms`
/// the first `floor(chars * heard_ms / duration_ms)` characters have been said; a word was heard
/// when all of its characters were (whole words only, no half words). Words are returned
/// joined by single spaces; at or past the full duration the whole text is heard.
pub fn heard_text(text: &str, heard_ms: u32, duration_ms: u32) -> String {
    if heard_ms >= duration_ms {
        return text.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    let total = text.chars().count() as u64;
    let heard_chars = total * u64::from(heard_ms) / u64::from(duration_ms.max(1));
    let mut words = Vec::new();
    let mut index = 0u64;
    let mut word_start: Option<usize> = None;
    for (byte_index, ch) in text.char_indices() {
        if ch.is_whitespace() {
            if let Some(start) = word_start.take() {
                if index <= heard_chars {
                    words.push(&text[start..byte_index]);
                } else {
                    break;
                }
            }
        } else if word_start.is_none() {
            word_start = Some(byte_index);
        }
        index += 1;
    }
    if let Some(start) = word_start
        && index <= heard_chars
    {
        words.push(&text[start..]);
    }
    words.join(" ")
}

/// A segment whose header and text have been decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub id: u32,
    pub text: String,
    pub duration_ms: u32,
}

/// What [`SegmentDecoder::feed`] observed, in stream order. Offsets count every byte fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEvent {
    /// The first loud byte of a segment (its header is not decodable yet).
    Began { offset: u64 },
    /// The header and text of the segment that began at `offset` are now known.
    Started { info: SegmentInfo, offset: u64 },
    /// The segment that began at `offset` ended after `seen_bytes` loud bytes, either at a silence
    /// byte or because its declared duration was complete. `id` is `None` for loud audio that did
    /// not carry a valid header (noise, or a segment whose start was never received).
    Ended {
        id: Option<u32>,
        offset: u64,
        seen_bytes: u64,
    },
}

#[derive(Debug)]
struct Current {
    start: u64,
    seen: u64,
    /// The message bytes decoded so far (header, then text), until the text is complete.
    message: Vec<u8>,
    high_nibble: Option<u8>,
    /// Known once the header is complete and valid.
    declared_bytes: Option<u64>,
    info: Option<SegmentInfo>,
    /// The header did not start with the magic: loud audio that is not a codec segment.
    invalid: bool,
}

/// Streaming decoder: feed it audio in chunks cut anywhere.
#[derive(Debug, Default)]
pub struct SegmentDecoder {
    offset: u64,
    current: Option<Current>,
}

impl SegmentDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes fed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The segment being received: its info (once decodable), where it began, and how many ms of
    /// it have been seen.
    pub fn current(&self) -> Option<(Option<&SegmentInfo>, u64, u64)> {
        self.current
            .as_ref()
            .map(|c| (c.info.as_ref(), c.start, c.seen / BYTES_PER_MS))
    }

    /// Forgets a partly received segment (after a `clear`, what follows is new audio). The
    /// offset keeps counting. Returns the end event of the forgotten segment, if any.
    pub fn reset(&mut self) -> Option<SegmentEvent> {
        self.current.take().map(|c| SegmentEvent::Ended {
            id: c.info.as_ref().map(|i| i.id),
            offset: c.start,
            seen_bytes: c.seen,
        })
    }

    /// Decodes `chunk`, appending what happened to `events` (not cleared first, so one buffer
    /// can be reused without allocating per frame).
    pub fn feed(&mut self, chunk: &[u8], events: &mut Vec<SegmentEvent>) {
        let mut i = 0;
        while i < chunk.len() {
            let Some(current) = self.current.as_mut() else {
                // Idle: skip silence quickly.
                match chunk[i..].iter().position(|&b| !is_silence(b)) {
                    Some(skip) => {
                        i += skip;
                        let start = self.offset + i as u64;
                        events.push(SegmentEvent::Began { offset: start });
                        self.current = Some(Current {
                            start,
                            seen: 0,
                            message: Vec::with_capacity(64),
                            high_nibble: None,
                            declared_bytes: None,
                            info: None,
                            invalid: false,
                        });
                        continue;
                    }
                    None => break,
                }
            };
            let byte = chunk[i];
            if is_silence(byte) {
                let ended = self.current.take().expect("matched Some above");
                events.push(SegmentEvent::Ended {
                    id: ended.info.as_ref().map(|info| info.id),
                    offset: ended.start,
                    seen_bytes: ended.seen,
                });
                i += 1;
                continue;
            }
            if current.info.is_some() || current.invalid {
                // Nothing left to decode: find the end (silence or declared length) in one scan.
                let limit = current.declared_bytes.map_or(usize::MAX, |d| {
                    usize::try_from(d.saturating_sub(current.seen)).unwrap_or(usize::MAX)
                });
                let rest = &chunk[i..];
                let window = &rest[..rest.len().min(limit)];
                let loud = window
                    .iter()
                    .position(|&b| is_silence(b))
                    .unwrap_or(window.len());
                current.seen += loud as u64;
                i += loud;
                if current.declared_bytes == Some(current.seen) {
                    let ended = self.current.take().expect("matched Some above");
                    events.push(SegmentEvent::Ended {
                        id: ended.info.as_ref().map(|info| info.id),
                        offset: ended.start,
                        seen_bytes: ended.seen,
                    });
                }
                continue;
            }
            // Decoding the header or text: one nibble per byte.
            current.seen += 1;
            i += 1;
            let nibble = byte & 0x0F;
            match current.high_nibble.take() {
                None => current.high_nibble = Some(nibble),
                Some(high) => {
                    current.message.push((high << 4) | nibble);
                    Self::parse_message(current, events);
                }
            }
            if current.declared_bytes == Some(current.seen) {
                let ended = self.current.take().expect("matched Some above");
                events.push(SegmentEvent::Ended {
                    id: ended.info.as_ref().map(|info| info.id),
                    offset: ended.start,
                    seen_bytes: ended.seen,
                });
            }
        }
        self.offset += chunk.len() as u64;
    }

    fn parse_message(current: &mut Current, events: &mut Vec<SegmentEvent>) {
        let message = &current.message;
        if message.len() == MAGIC.len() && message.as_slice() != MAGIC {
            current.invalid = true;
            return;
        }
        if message.len() < HEADER_BYTES {
            return;
        }
        let text_len = usize::from(u16::from_be_bytes([message[10], message[11]]));
        if message.len() == HEADER_BYTES {
            let duration = u32::from_be_bytes([message[6], message[7], message[8], message[9]]);
            current.declared_bytes = Some(u64::from(duration) * BYTES_PER_MS);
        }
        if message.len() < HEADER_BYTES + text_len {
            return;
        }
        let id = u32::from_be_bytes([message[2], message[3], message[4], message[5]]);
        let duration_ms = u32::from_be_bytes([message[6], message[7], message[8], message[9]]);
        let text = String::from_utf8_lossy(&message[HEADER_BYTES..]).into_owned();
        let info = SegmentInfo {
            id,
            text,
            duration_ms,
        };
        events.push(SegmentEvent::Started {
            info: info.clone(),
            offset: current.start,
        });
        current.info = Some(info);
        current.message = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(audio: &[u8], chunk: usize) -> Vec<SegmentEvent> {
        let mut decoder = SegmentDecoder::new();
        let mut events = Vec::new();
        for piece in audio.chunks(chunk) {
            decoder.feed(piece, &mut events);
        }
        events
    }

    #[test]
    fn mulaw_decode_matches_g711() {
        assert_eq!(mulaw_to_linear(0xFF), 0);
        assert_eq!(mulaw_to_linear(0x7F), 0);
        assert_eq!(mulaw_to_linear(0x00), -32124);
        assert_eq!(mulaw_to_linear(0x80), 32124);
        assert_eq!(mulaw_to_linear(0x10), -15996);
        assert_eq!(mulaw_to_linear(0x90), 15996);
        // Loud codec bytes are all large, alternating in sign.
        for nibble in 0..16u8 {
            assert!(mulaw_to_linear(0x10 | nibble) < -8000);
            assert!(mulaw_to_linear(0x90 | nibble) > 8000);
        }
    }

    #[test]
    fn segment_layout_and_length() {
        let audio = encode_segment(7, "hi", 300);
        assert_eq!(audio.len(), 2400);
        // 'S' = 0x53: nibbles 5, 3 at even/odd positions.
        assert_eq!(&audio[..4], &[0x15, 0x93, 0x15, 0x90]);
        assert!(audio.iter().all(|&b| !is_silence(b)));
    }

    #[test]
    fn decodes_across_any_chunking() {
        let mut audio = vec![SILENCE; 37];
        audio.extend(encode_segment(42, "Hello there, how are you?", 1625));
        audio.extend([SILENCE; 100]);
        audio.extend(encode_segment(43, "Fine, thanks — «ça va».", 400));
        audio.extend([SILENCE; 3]);
        for chunk in [1, 7, 160, 333, 100_000] {
            let events = decode_all(&audio, chunk);
            let started: Vec<_> = events
                .iter()
                .filter_map(|e| match e {
                    SegmentEvent::Started { info, .. } => {
                        Some((info.id, info.text.clone(), info.duration_ms))
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(
                started,
                vec![
                    (42, "Hello there, how are you?".to_owned(), 1625),
                    (43, "Fine, thanks — «ça va».".to_owned(), 400)
                ],
                "chunk size {chunk}"
            );
            let ended: Vec<_> = events
                .iter()
                .filter_map(|e| match e {
                    SegmentEvent::Ended {
                        id,
                        offset,
                        seen_bytes,
                    } => Some((*id, *offset, *seen_bytes)),
                    _ => None,
                })
                .collect();
            assert_eq!(
                ended,
                vec![(Some(42), 37, 13_000), (Some(43), 37 + 13_000 + 100, 3200)]
            );
        }
    }

    #[test]
    fn back_to_back_segments_split_on_declared_length() {
        let mut audio = encode_segment(1, "one", 300);
        audio.extend(encode_segment(2, "two", 300));
        let events = decode_all(&audio, 160);
        let ids: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                SegmentEvent::Started { info, .. } => Some(info.id),
                _ => None,
            })
            .collect();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn cut_segment_reports_seen_bytes_and_noise_has_no_id() {
        let audio = encode_segment(9, "a rather long sentence", 2000);
        let mut decoder = SegmentDecoder::new();
        let mut events = Vec::new();
        decoder.feed(&audio[..800], &mut events);
        assert_eq!(decoder.current().map(|(_, _, ms)| ms), Some(100));
        decoder.feed(&[SILENCE], &mut events);
        assert!(events.contains(&SegmentEvent::Ended {
            id: Some(9),
            offset: 0,
            seen_bytes: 800
        }));

        let mut events = Vec::new();
        SegmentDecoder::new().feed(&[0x20, 0x30, 0x40, 0x50, 0x60, SILENCE], &mut events);
        assert_eq!(
            events,
            vec![
                SegmentEvent::Began { offset: 0 },
                SegmentEvent::Ended {
                    id: None,
                    offset: 0,
                    seen_bytes: 5
                }
            ]
        );
    }

    #[test]
    fn short_durations_are_raised_to_fit_the_text() {
        let text = "x".repeat(400);
        let audio = encode_segment(3, &text, 10);
        let events = decode_all(&audio, 1000);
        let SegmentEvent::Started { info, .. } = &events[1] else {
            panic!("expected Started, got {events:?}");
        };
        assert_eq!(info.text, text);
        assert_eq!(
            audio.len() as u64,
            u64::from(info.duration_ms) * BYTES_PER_MS
        );
        assert!(info.duration_ms >= 103);
    }

    #[test]
    fn heard_text_keeps_whole_words_in_proportion() {
        let text = "one two three four"; // 18 chars
        assert_eq!(heard_text(text, 0, 1800), "");
        assert_eq!(heard_text(text, 300, 1800), "one"); // 3 chars
        assert_eq!(heard_text(text, 600, 1800), "one"); // 6 chars: "two" incomplete
        assert_eq!(heard_text(text, 700, 1800), "one two"); // 7 chars
        assert_eq!(heard_text(text, 1799, 1800), "one two three"); // 17 chars
        assert_eq!(heard_text(text, 1800, 1800), "one two three four");
        assert_eq!(heard_text("  spaced   out ", 5000, 10), "spaced out");
    }

    #[test]
    fn durations_follow_the_text() {
        assert_eq!(duration_for("hi", DEFAULT_MS_PER_CHAR), MIN_SPEECH_MS);
        assert_eq!(duration_for(&"a".repeat(20), 65), 1300);
    }

    #[test]
    fn segment_ids_are_unique() {
        let a = next_segment_id();
        let b = next_segment_id();
        assert_ne!(a, b);
    }
}
