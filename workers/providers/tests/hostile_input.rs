//! Randomised inputs against every parser that reads bytes from the network: Twilio's media
//! frames and webhook forms, Deepgram's and ElevenLabs' events, the LLM's event stream.
//!
//! What must hold whatever arrives: no panic, a stable error code for what is refused, and the
//! round trips the call depends on (our own `media` frame parses back to the same audio; a valid
//! signature stays valid only for the exact parameters signed).

use callmeback_providers::twilio::media::{self, Inbound, MediaError};
use callmeback_providers::twilio::{rest, signature};
use callmeback_providers::{deepgram, elevenlabs, openai};
use proptest::prelude::*;

const VALID_FRAMES: &[&str] = &[
    r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
    r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"customParameters":{"call_id":"c1"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"streamSid":"MZ1"}"#,
    r#"{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"//7+/w=="},"streamSid":"MZ1"}"#,
    r#"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}"#,
    r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"m1"}}"#,
    r#"{"event":"stop","sequenceNumber":"5","streamSid":"MZ1","stop":{"accountSid":"AC1","callSid":"CA1"}}"#,
];

fn known_code(error: MediaError) -> bool {
    matches!(
        error.code(),
        "invalid_json"
            | "unknown_event"
            | "missing_field"
            | "invalid_base64"
            | "payload_too_large"
            | "unsupported_format"
            | "invalid_stream_sid"
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any text at all: parsed or refused with a known code, never a panic.
    #[test]
    fn twilio_frames_of_arbitrary_text_never_panic(frame in any::<String>()) {
        let mut audio = Vec::new();
        if let Err(error) = media::parse_inbound(&frame, &mut audio) {
            prop_assert!(known_code(error));
        }
    }

    /// Valid frames cut short or with one byte changed: the usual shape of a corrupted frame.
    #[test]
    fn corrupted_twilio_frames_never_panic(
        which in 0..VALID_FRAMES.len(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let frame = VALID_FRAMES[which].as_bytes();
        let mut audio = Vec::new();
        let truncated = String::from_utf8_lossy(&frame[..cut.index(frame.len())]);
        if let Err(error) = media::parse_inbound(&truncated, &mut audio) {
            prop_assert!(known_code(error));
        }
        let mut flipped = frame.to_vec();
        flipped[flip.index(frame.len())] = byte;
        let flipped = String::from_utf8_lossy(&flipped);
        if let Err(error) = media::parse_inbound(&flipped, &mut audio) {
            prop_assert!(known_code(error));
        }
    }

    /// JSON-shaped frames with the right keys and wrong kinds of values.
    #[test]
    fn twilio_frames_with_wrong_value_types_are_refused(
        event in prop::sample::select(vec!["media", "start", "mark", "dtmf", "stop", "connected", "other"]),
        sid in prop_oneof![Just("\"MZ1\"".to_owned()), Just("17".to_owned()), Just("null".to_owned()), Just("\"a b\"".to_owned()), Just("\"\"".to_owned()), "\"[A-Za-z0-9]{0,80}\""],
        payload in prop_oneof![Just("\"//8=\"".to_owned()), Just("42".to_owned()), Just("\"!!\"".to_owned()), Just("[]".to_owned()), "\"[A-Za-z0-9+/=]{0,64}\""],
    ) {
        let frame = format!(
            r#"{{"event":"{event}","streamSid":{sid},"media":{{"payload":{payload}}},"mark":{{"name":{sid}}},"dtmf":{{"digit":{sid}}}}}"#
        );
        let mut audio = Vec::new();
        match media::parse_inbound(&frame, &mut audio) {
            Ok(Inbound::Media { stream_sid }) => {
                prop_assert_eq!(event, "media");
                prop_assert!(stream_sid.bytes().all(|b| b.is_ascii_alphanumeric()));
            }
            Ok(_) => prop_assert!(event != "other"),
            Err(error) => prop_assert!(known_code(error)),
        }
    }

    /// Whatever audio we send, our own frame reads back as exactly that audio.
    #[test]
    fn our_media_frames_round_trip(audio in prop::collection::vec(any::<u8>(), 0..media::MAX_PAYLOAD_BYTES)) {
        let mut frame = String::new();
        media::write_media("MZabc123", &audio, &mut frame);
        let mut decoded = vec![7u8; 3]; // stale content must be cleared
        let parsed = media::parse_inbound(&frame, &mut decoded);
        prop_assert_eq!(parsed, Ok(Inbound::Media { stream_sid: "MZabc123".into() }));
        prop_assert_eq!(decoded, audio);
    }

    /// Oversized payloads are refused before any decoding.
    #[test]
    fn oversized_payloads_are_refused(extra in 1usize..4000) {
        let payload = "A".repeat(media::MAX_PAYLOAD_BYTES.div_ceil(3) * 4 + extra);
        let frame = format!(r#"{{"event":"media","streamSid":"MZ1","media":{{"payload":"{payload}"}}}}"#);
        let mut audio = Vec::new();
        prop_assert_eq!(media::parse_inbound(&frame, &mut audio), Err(MediaError::PayloadTooLarge));
    }

    /// A webhook body of any bytes parses to pairs; a signature holds for exactly the signed
    /// parameters and URL, and for nothing changed.
    #[test]
    fn signatures_hold_only_for_what_was_signed(
        body in prop::collection::vec(any::<u8>(), 0..512),
        token in "[a-f0-9]{32}",
        tamper in any::<prop::sample::Index>(),
    ) {
        let params = signature::parse_form(&body);
        let url = "https://api.example.com/twilio/status/c1";
        let signed = signature::compute(&token, url, &params);
        prop_assert!(signature::is_valid(&token, url, &params, &signed));
        prop_assert!(!signature::is_valid(&token, "https://api.example.com/twilio/status/c2", &params, &signed));
        prop_assert!(!signature::is_valid("", url, &params, &signed));
        prop_assert!(!signature::is_valid(&token, url, &params, ""));
        let mut extra = params.clone();
        extra.push(("CallStatus".to_owned(), "completed".to_owned()));
        prop_assert!(!signature::is_valid(&token, url, &extra, &signed));
        if !params.is_empty() {
            let mut changed = params.clone();
            let at = tamper.index(changed.len());
            changed[at].1.push('x');
            prop_assert!(!signature::is_valid(&token, url, &changed, &signed));
        }
        // Status and answering-machine readers accept any pairs without panicking.
        let _ = rest::status_report(&params);
        let _ = rest::amd_result(&params);
    }

    /// Provider events of any text: parsed or an error, never a panic.
    #[test]
    fn provider_events_of_arbitrary_text_never_panic(text in any::<String>()) {
        let _ = deepgram::parse(&text);
        let _ = elevenlabs::parse(&text);
        let _ = openai::chunk_events(&text);
        let _ = openai::completion(&text);
    }

    /// The LLM's event stream split at arbitrary points yields the same events as in one piece.
    #[test]
    fn sse_events_survive_any_chunking(
        contents in prop::collection::vec("[a-zé日 ]{0,12}", 1..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        crlf in any::<bool>(),
    ) {
        let newline = if crlf { "\r\n" } else { "\n" };
        let mut stream = String::new();
        for content in &contents {
            let chunk = serde_json::json!({"choices": [{"delta": {"content": content}}]});
            stream.push_str(&format!("data: {chunk}{newline}{newline}"));
        }
        stream.push_str(&format!(": keep-alive{newline}{newline}data: [DONE]{newline}{newline}"));
        let bytes = stream.as_bytes();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len())).collect();
        points.sort_unstable();
        let mut parser = openai::SseParser::default();
        let mut events = Vec::new();
        let mut from = 0;
        for point in points.into_iter().chain([bytes.len()]) {
            events.extend(parser.feed(&bytes[from..point]));
            from = point;
        }
        prop_assert_eq!(events.len(), contents.len() + 1);
        prop_assert_eq!(events.last(), Some(&openai::SseData::Done));
        for (event, content) in events.iter().zip(&contents) {
            let openai::SseData::Json(data) = event else {
                return Err(TestCaseError::fail("expected a JSON event"));
            };
            let text: String = openai::chunk_events(data)
                .into_iter()
                .filter_map(|e| match e {
                    callmeback_media::events::LlmEvent::Delta(text) => Some(text),
                    _ => None,
                })
                .collect();
            prop_assert_eq!(&text, content);
        }
    }
}
