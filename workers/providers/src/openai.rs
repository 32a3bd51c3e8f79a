//! OpenAI-compatible chat completions, streamed as server-sent events (Cerebras by default).
//!
//! Usage is read from whichever chunk carries it: OpenAI sends a final chunk with empty
//! `choices`, Cerebras attaches `usage` to the last content chunk (the one with
//! `finish_reason`). When a stream is cancelled no usage arrives; the engine then estimates.

use callmeback_media::LlmEvent;
use callmeback_media::events::{ChatRole, LlmRequest};
use serde::{Deserialize, Serialize};

/// LLM settings (Worker variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmSettings {
    pub model: String,
}

impl Default for LlmSettings {
    fn default() -> Self {
        Self {
            model: "llama3.1-8b".to_owned(),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    max_completion_tokens: u32,
    max_tokens: u32,
    temperature: f64,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// The JSON body of a chat completion request.
pub fn request_body(settings: &LlmSettings, request: &LlmRequest, stream: bool) -> String {
    let body = Body {
        model: &settings.model,
        messages: request
            .messages
            .iter()
            .map(|m| Message {
                role: match m.role {
                    ChatRole::System => "system",
                    ChatRole::User => "user",
                    ChatRole::Assistant => "assistant",
                },
                content: &m.content,
            })
            .collect(),
        // Both spellings: OpenAI prefers the new one, some compatible servers know only the old.
        max_completion_tokens: request.max_tokens,
        max_tokens: request.max_tokens,
        temperature: request.temperature,
        stream,
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
    };
    serde_json::to_string(&body).expect("invariant: the body serialises")
}

/// Splits a byte stream into server-sent events' `data` payloads.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
}

/// One SSE payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseData {
    Json(String),
    /// `data: [DONE]`.
    Done,
}

impl SseParser {
    /// Feeds bytes as they arrive; returns the events completed by them. Events end at a blank
    /// line; only complete events are decoded, so a UTF-8 character split across network
    /// chunks is never cut.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseData> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some((end, separator)) = find_event_end(&self.buffer) {
            let event: Vec<u8> = self.buffer.drain(..end + separator).collect();
            let text = String::from_utf8_lossy(&event[..end]);
            let mut data = String::new();
            for line in text.lines() {
                if let Some(value) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            if data.is_empty() {
                continue; // a comment or keep-alive
            }
            events.push(if data.trim() == "[DONE]" {
                SseData::Done
            } else {
                SseData::Json(data)
            });
        }
        events
    }
}

/// The end of the first event (index of its blank line) and the separator's length.
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    message: Option<Delta>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// The engine events of one streamed chunk (content and/or usage), or a failure for an
/// in-stream error object.
pub fn chunk_events(data: &str) -> Vec<LlmEvent> {
    let Ok(chunk) = serde_json::from_str::<Chunk>(data) else {
        return vec![LlmEvent::Failed("unreadable stream chunk".to_owned())];
    };
    if chunk.error.is_some() {
        return vec![LlmEvent::Failed("error in stream".to_owned())];
    }
    let mut events = Vec::new();
    for choice in chunk.choices {
        if let Some(content) = choice
            .delta
            .and_then(|d| d.content)
            .filter(|c| !c.is_empty())
        {
            events.push(LlmEvent::Delta(content));
        }
    }
    if let Some(usage) = chunk.usage {
        events.push(LlmEvent::Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        });
    }
    events
}

/// A non-streamed completion: its text and usage.
pub fn completion(body: &str) -> Option<(String, Option<(u64, u64)>)> {
    let chunk: Chunk = serde_json::from_str(body).ok()?;
    let text = chunk
        .choices
        .into_iter()
        .find_map(|c| c.message.and_then(|m| m.content))?;
    Some((
        text,
        chunk.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
    ))
}

#[cfg(test)]
mod tests {
    use callmeback_media::events::ChatMessage;

    use super::*;

    #[test]
    fn body_streams_with_usage() {
        let request = LlmRequest {
            messages: vec![ChatMessage {
                role: ChatRole::System,
                content: "Be brief.".to_owned(),
            }],
            max_tokens: 150,
            temperature: 0.7,
        };
        let body: serde_json::Value =
            serde_json::from_str(&request_body(&LlmSettings::default(), &request, true)).unwrap();
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["max_completion_tokens"], 150);
        let plain: serde_json::Value =
            serde_json::from_str(&request_body(&LlmSettings::default(), &request, false)).unwrap();
        assert!(plain.get("stream_options").is_none());
    }

    #[test]
    fn sse_events_survive_any_chunking() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"Hé\"}}]}\n\n: keep-alive\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"llo\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":22,\"completion_tokens\":3,\"total_tokens\":25}}\r\n\r\ndata: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut parser = SseParser::default();
            let mut events = parser.feed(&stream.as_bytes()[..split]);
            events.extend(parser.feed(&stream.as_bytes()[split..]));
            assert_eq!(events.len(), 3, "split at {split}: {events:?}");
            assert_eq!(events[2], SseData::Done);
            let SseData::Json(first) = &events[0] else {
                panic!()
            };
            assert_eq!(chunk_events(first), vec![LlmEvent::Delta("Hé".to_owned())]);
        }
    }

    #[test]
    fn usage_is_read_from_whichever_chunk_has_it() {
        // Cerebras: on the last content chunk.
        let cerebras = r#"{"choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":22,"completion_tokens":3,"total_tokens":25}}"#;
        assert_eq!(
            chunk_events(cerebras),
            vec![
                LlmEvent::Delta("!".to_owned()),
                LlmEvent::Usage {
                    prompt_tokens: 22,
                    completion_tokens: 3
                }
            ]
        );
        // OpenAI: a final chunk with empty choices.
        let openai =
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#;
        assert_eq!(
            chunk_events(openai),
            vec![LlmEvent::Usage {
                prompt_tokens: 9,
                completion_tokens: 4
            }]
        );
        assert!(matches!(chunk_events("nope")[0], LlmEvent::Failed(_)));
        assert!(matches!(
            chunk_events(r#"{"error":{"message":"overloaded"}}"#)[0],
            LlmEvent::Failed(_)
        ));
    }

    #[test]
    fn completions_for_summaries() {
        let body = r#"{"choices":[{"message":{"role":"assistant","content":"Ada runs."}}],"usage":{"prompt_tokens":50,"completion_tokens":3}}"#;
        assert_eq!(
            completion(body),
            Some(("Ada runs.".to_owned(), Some((50, 3))))
        );
        assert_eq!(completion("{}"), None);
    }
}
