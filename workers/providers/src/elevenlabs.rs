//! ElevenLabs streaming text-to-speech (`multi-stream-input` over a WebSocket).
//!
//! One socket per call, opened before the persona first speaks and kept for the whole call; one
//! *context* per utterance, so a barge-in closes the context and the next utterance opens a new
//! one on the same socket, with no reconnect. Output is `ulaw_8000`: the audio goes to Twilio
//! as it comes. `auto_mode` generates each sentence as soon as it arrives (we send whole
//! sentences), which is what makes the first audio fast.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use callmeback_media::TtsEvent;
use callmeback_media::plan::VoiceSettings;
use serde::Deserialize;
use serde_json::json;

/// Synthesis settings (Worker variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtsSettings {
    pub model_id: String,
}

impl Default for TtsSettings {
    fn default() -> Self {
        Self {
            model_id: "eleven_flash_v2_5".to_owned(),
        }
    }
}

/// The socket URL for `base` (e.g. `wss://api.elevenlabs.io`). `voice_id` must be a plain id.
pub fn multi_stream_url(base: &str, voice_id: &str, settings: &TtsSettings) -> String {
    let voice: String = form_urlencoded::byte_serialize(voice_id.as_bytes()).collect();
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("model_id", &settings.model_id)
        .append_pair("output_format", "ulaw_8000")
        .append_pair("auto_mode", "true")
        // A call may be silent for a while; keep-alives are also sent (see the glue).
        .append_pair("inactivity_timeout", "180")
        .append_pair("sync_alignment", "true");
    format!(
        "{}/v1/text-to-speech/{voice}/multi-stream-input?{}",
        base.trim_end_matches('/'),
        query.finish()
    )
}

/// Opens a context with the call's voice settings (they may only be given here).
pub fn init_context(context: &str, voice: &VoiceSettings) -> String {
    json!({
        "text": " ",
        "context_id": context,
        "voice_settings": {
            "stability": voice.stability,
            "similarity_boost": voice.similarity_boost,
            "style": voice.style,
            "use_speaker_boost": voice.use_speaker_boost,
            "speed": voice.speed,
        },
    })
    .to_string()
}

/// More text for a context (it should end with a space).
pub fn text(context: &str, text: &str) -> String {
    json!({"text": text, "context_id": context}).to_string()
}

/// Generate what the context holds; the utterance is complete.
pub fn flush(context: &str) -> String {
    json!({"text": "", "context_id": context, "flush": true}).to_string()
}

/// Abandon a context (barge-in) or release a finished one.
pub fn close_context(context: &str) -> String {
    json!({"context_id": context, "close_context": true}).to_string()
}

/// Keeps the socket from timing out while nobody speaks.
pub fn keep_alive(context: &str) -> String {
    json!({"text": "", "context_id": context}).to_string()
}

/// Ends the session.
pub fn close_socket() -> String {
    json!({"close_socket": true}).to_string()
}

/// One server message, read.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    Tts(TtsEvent),
    Error { message: String },
    Nothing,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    audio: Option<String>,
    #[serde(default, rename = "isFinal", alias = "is_final")]
    is_final: Option<bool>,
    #[serde(default, rename = "contextId", alias = "context_id")]
    context_id: Option<String>,
    #[serde(default)]
    alignment: Option<RawAlignment>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct RawAlignment {
    #[serde(default)]
    chars: Vec<String>,
}

/// Reads one text message from ElevenLabs.
pub fn parse(text: &str) -> Result<ServerMessage, serde_json::Error> {
    let raw: Raw = serde_json::from_str(text)?;
    if raw.error.is_some() || (raw.message.is_some() && raw.audio.is_none()) {
        return Ok(ServerMessage::Error {
            message: raw.message.or(raw.error).unwrap_or_default(),
        });
    }
    let context = raw.context_id.unwrap_or_default();
    if let Some(audio) = raw.audio.filter(|audio| !audio.is_empty()) {
        let Ok(bytes) = STANDARD.decode(audio.as_bytes()) else {
            return Ok(ServerMessage::Error {
                message: "audio is not base64".to_owned(),
            });
        };
        return Ok(ServerMessage::Tts(TtsEvent::Audio {
            context,
            audio: bytes,
            chars: raw
                .alignment
                .map(|a| u32::try_from(a.chars.len()).unwrap_or(u32::MAX)),
        }));
    }
    if raw.is_final == Some(true) {
        return Ok(ServerMessage::Tts(TtsEvent::ContextFinished { context }));
    }
    Ok(ServerMessage::Nothing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_asks_for_ulaw_and_auto_mode() {
        let url = multi_stream_url(
            "wss://api.elevenlabs.io/",
            "voice 1",
            &TtsSettings::default(),
        );
        assert!(
            url.starts_with(
                "wss://api.elevenlabs.io/v1/text-to-speech/voice+1/multi-stream-input?"
            ),
            "{url}"
        );
        assert!(url.contains("output_format=ulaw_8000"));
        assert!(url.contains("auto_mode=true"));
        assert!(url.contains("model_id=eleven_flash_v2_5"));
    }

    #[test]
    fn messages_are_the_documented_shapes() {
        let init: serde_json::Value =
            serde_json::from_str(&init_context("t1", &VoiceSettings::default())).unwrap();
        assert_eq!(init["text"], " ");
        assert_eq!(init["context_id"], "t1");
        assert_eq!(init["voice_settings"]["similarity_boost"], 0.75);
        let close: serde_json::Value = serde_json::from_str(&close_context("t1")).unwrap();
        assert_eq!(close["close_context"], true);
        let flush: serde_json::Value = serde_json::from_str(&flush("t1")).unwrap();
        assert_eq!(flush["flush"], true);
    }

    #[test]
    fn audio_final_and_errors() {
        let audio = r#"{"audio":"//8A","isFinal":null,"contextId":"t2","alignment":{"chars":["H","i"],"charStartTimesMs":[0,50],"charsDurationsMs":[50,50]}}"#;
        assert_eq!(
            parse(audio).unwrap(),
            ServerMessage::Tts(TtsEvent::Audio {
                context: "t2".to_owned(),
                audio: vec![0xFF, 0xFF, 0x00],
                chars: Some(2)
            })
        );
        assert_eq!(
            parse(r#"{"isFinal":true,"contextId":"t2"}"#).unwrap(),
            ServerMessage::Tts(TtsEvent::ContextFinished {
                context: "t2".to_owned()
            })
        );
        assert!(matches!(
            parse(r#"{"message":"quota exceeded","error":"quota"}"#).unwrap(),
            ServerMessage::Error { .. }
        ));
        assert!(matches!(
            parse(r#"{"audio":"!!","contextId":"t2"}"#).unwrap(),
            ServerMessage::Error { .. }
        ));
    }
}
