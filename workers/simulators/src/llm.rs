//! The OpenAI-compatible streaming LLM simulator: `POST /v1/chat/completions`.
//!
//! Speaks the Chat Completions wire format as Cerebras serves it (the default) or as OpenAI
//! does: `stream:true` answers `text/event-stream` chunks, one token (about a word) per chunk,
//! then `data: [DONE]`; with `stream_options.include_usage` the usage goes on the last chunk
//! (Cerebras) or on a separate chunk with empty `choices` (OpenAI). Replies echo the caller
//! (`echo` mode) or come from a queue (`scripted`). Every request is recorded with its messages,
//! so tests can check the prompts the Worker sends; a client that disconnects mid-stream stops
//! generation and is recorded as cancelled with the tokens already sent.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::AppState;
use crate::clock;
use crate::sync::lock;

/// Where reply text comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LlmMode {
    /// "I heard you say: <last user message>. Tell me more about that."
    #[default]
    Echo,
    /// Replies queued with `POST /sim/llm/replies`, in order; echo when the queue is empty.
    Scripted,
}

/// Where `usage` goes in a stream with `include_usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageStyle {
    /// On the last chunk, the one with `finish_reason` (as Cerebras sends it).
    #[default]
    Cerebras,
    /// A separate final chunk with `choices: []` (as OpenAI documents it).
    Openai,
}

/// A failure applied to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LlmFailure {
    /// HTTP 500 with an OpenAI-style error body.
    #[serde(rename = "http_500")]
    Http500,
    /// Accept the request and never send a byte.
    Hang,
    /// A well-formed stream with no content.
    Empty,
    /// Delay the first token by `ms` more.
    SlowFirstToken { ms: u64 },
}

/// LLM simulator knobs (`PUT /sim/llm/config` merges into these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LlmConfig {
    /// The key accepted in `Authorization: Bearer <key>`.
    pub api_key: String,
    pub mode: LlmMode,
    pub usage_style: UsageStyle,
    /// Delay before the first content token.
    pub time_to_first_token_ms: u64,
    /// Token rate after the first; 0 = as fast as possible.
    pub tokens_per_second: u32,
    /// Failure injection: one entry per coming request, in order.
    pub failures: VecDeque<LlmFailure>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            api_key: "sim-llm-key".to_owned(),
            mode: LlmMode::Echo,
            usage_style: UsageStyle::Cerebras,
            time_to_first_token_ms: 0,
            tokens_per_second: 0,
            failures: VecDeque::new(),
        }
    }
}

/// One request as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmRequestRecord {
    pub at: u64,
    pub body: Value,
    /// `completed`, `cancelled`, `invalid`, `unauthorized`, `http_500`, `hang`.
    pub outcome: String,
    pub reply: Option<String>,
    pub tokens_sent: u64,
    pub first_token_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub finish_reason: Option<String>,
}

impl LlmRequestRecord {
    /// The `messages` of the request.
    pub fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }
}

#[derive(Debug)]
pub(crate) struct LlmState {
    config: Mutex<LlmConfig>,
    replies: Mutex<VecDeque<String>>,
    requests: Mutex<Vec<LlmRequestRecord>>,
}

impl LlmState {
    pub(crate) fn new(config: LlmConfig) -> Self {
        Self {
            config: Mutex::new(config),
            replies: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn reset(&self) {
        let key = lock(&self.config).api_key.clone();
        *lock(&self.config) = LlmConfig {
            api_key: key,
            ..LlmConfig::default()
        };
        lock(&self.replies).clear();
        lock(&self.requests).clear();
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut LlmRequestRecord)) {
        if let Some(r) = lock(&self.requests).get_mut(index) {
            f(r);
        }
    }
}

/// Library handle on the LLM simulator.
#[derive(Debug, Clone)]
pub struct LlmHandle {
    pub(crate) state: Arc<LlmState>,
}

impl LlmHandle {
    pub fn config(&self) -> LlmConfig {
        lock(&self.state.config).clone()
    }

    pub fn set_config(&self, config: LlmConfig) {
        *lock(&self.state.config) = config;
    }

    /// Queues replies for `scripted` mode.
    pub fn push_replies(&self, replies: impl IntoIterator<Item = String>) {
        lock(&self.state.replies).extend(replies);
    }

    pub fn queued_replies(&self) -> usize {
        lock(&self.state.replies).len()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<LlmRequestRecord> {
        lock(&self.state.requests).clone()
    }
}

fn openai_error(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    (status, Json(body)).into_response()
}

/// A 400 `invalid_request_error`: what was wrong and which parameter.
#[derive(Debug)]
struct Invalid {
    message: String,
    param: String,
}

fn invalid(message: impl Into<String>, param: &str) -> Invalid {
    Invalid {
        message: message.into(),
        param: param.to_owned(),
    }
}

impl IntoResponse for Invalid {
    fn into_response(self) -> Response {
        openai_error(
            StatusCode::BAD_REQUEST,
            &self.message,
            "invalid_request_error",
            None,
            Some(&self.param),
        )
    }
}

/// The text of a message's `content` (a string, or an array of `{type:"text",text}` parts).
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
        ),
        _ => None,
    }
}

struct Validated {
    model: String,
    stream: bool,
    include_usage: bool,
    max_tokens: Option<u64>,
    prompt_tokens: u64,
    messages: Vec<(String, String)>,
}

fn validate(body: &Value) -> Result<Validated, Invalid> {
    let Some(object) = body.as_object() else {
        return Err(invalid("The request body must be a JSON object.", "body"));
    };
    let model = match object.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(invalid("you must provide a model parameter", "model")),
    };
    let Some(Value::Array(raw_messages)) = object.get("messages") else {
        return Err(invalid(
            "Missing required parameter: 'messages'.",
            "messages",
        ));
    };
    if raw_messages.is_empty() {
        return Err(invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            "messages",
        ));
    }
    let mut messages = Vec::new();
    let mut chars = 0u64;
    for (i, message) in raw_messages.iter().enumerate() {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
            return Err(invalid(
                format!("Invalid value for 'messages[{i}].role': {role:?}."),
                &format!("messages[{i}].role"),
            ));
        }
        let content = match message.get("content") {
            Some(Value::Null) | None if role == "assistant" => String::new(),
            Some(content) => content_text(content).ok_or_else(|| {
                invalid(
                    format!("Invalid type for 'messages[{i}].content'."),
                    &format!("messages[{i}].content"),
                )
            })?,
            None => {
                return Err(invalid(
                    format!("Missing required parameter: 'messages[{i}].content'."),
                    &format!("messages[{i}].content"),
                ));
            }
        };
        chars += content.chars().count() as u64;
        messages.push((role.to_owned(), content));
    }
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(invalid(
                "Invalid type for 'stream': expected a boolean.",
                "stream",
            ));
        }
    };
    let include_usage = match object.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(options) if !stream => {
            let _ = options;
            return Err(invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
            ));
        }
        Some(options) => options
            .get("include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let mut max_tokens = None;
    for name in ["max_tokens", "max_completion_tokens"] {
        match object.get(name) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => max_tokens = Some(n),
                _ => {
                    return Err(invalid(
                        format!("Invalid '{name}': expected an integer >= 1."),
                        name,
                    ));
                }
            },
        }
    }
    if let Some(t) = object.get("temperature")
        && !t.is_null()
        && !t.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t))
    {
        return Err(invalid(
            "Invalid 'temperature': expected a number between 0 and 2.",
            "temperature",
        ));
    }
    let prompt_tokens = chars.div_ceil(4) + 3 * messages.len() as u64;
    Ok(Validated {
        model,
        stream,
        include_usage,
        max_tokens,
        prompt_tokens,
        messages,
    })
}

/// The reply for `echo` mode (also the fallback of `scripted`).
pub fn echo_reply(messages: &[(String, String)]) -> String {
    let wants_summary = messages
        .iter()
        .filter(|(role, _)| role == "system" || role == "developer")
        .chain(messages.last())
        .any(|(_, content)| content.to_lowercase().contains("summar"));
    let user_lines: Vec<&str> = messages
        .iter()
        .filter(|(role, _)| role == "user")
        .map(|(_, c)| c.trim())
        .filter(|c| !c.is_empty())
        .collect();
    if wants_summary {
        let gist: Vec<&str> = user_lines
            .iter()
            .flat_map(|l| l.split_whitespace())
            .take(12)
            .collect();
        return if gist.is_empty() {
            "Summary: a short call with no details from the caller.".to_owned()
        } else {
            format!(
                "Summary: the caller talked about {}.",
                gist.join(" ").trim_end_matches(['.', '!', '?', ','])
            )
        };
    }
    match messages
        .iter()
        .rev()
        .find(|(role, _)| role == "user")
        .map(|(_, c)| c.trim())
    {
        Some(last) if !last.is_empty() => {
            format!(
                "I heard you say: {}. Tell me more about that.",
                last.trim_end_matches(['.', '!', '?', ','])
            )
        }
        _ => "Hello! It's good to hear from you. How has your day been?".to_owned(),
    }
}

/// Splits a reply into stream tokens: a word with its leading space, long words in 4-char pieces.
pub fn tokenize(reply: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    for (i, word) in reply.split(' ').enumerate() {
        let mut piece = String::new();
        if i > 0 {
            piece.push(' ');
        }
        let chars: Vec<char> = word.chars().collect();
        if chars.len() <= 8 {
            piece.extend(chars);
            tokens.push(piece);
        } else {
            for (j, chunk) in chars.chunks(4).enumerate() {
                if j == 0 {
                    piece.extend(chunk);
                    tokens.push(std::mem::take(&mut piece));
                } else {
                    tokens.push(chunk.iter().collect());
                }
            }
        }
    }
    tokens.retain(|t| !t.is_empty());
    tokens
}

/// `POST /v1/chat/completions`
pub(crate) async fn chat_completions(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let state = app.llm.clone();
    let config = lock(&state.config).clone();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let index = {
        let mut requests = lock(&state.requests);
        requests.push(LlmRequestRecord {
            at: clock::now_us(),
            body: parsed.clone(),
            outcome: "received".to_owned(),
            reply: None,
            tokens_sent: 0,
            first_token_at: None,
            finished_at: None,
            finish_reason: None,
        });
        requests.len() - 1
    };
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if key != Some(config.api_key.as_str()) {
        state.update(index, |r| r.outcome = "unauthorized".to_owned());
        let message = "Incorrect API key provided.";
        return openai_error(
            StatusCode::UNAUTHORIZED,
            message,
            "invalid_request_error",
            Some("invalid_api_key"),
            None,
        );
    }
    if parsed.is_null() {
        state.update(index, |r| r.outcome = "invalid".to_owned());
        return invalid("We could not parse the JSON body of your request.", "body")
            .into_response();
    }
    let request = match validate(&parsed) {
        Ok(request) => request,
        Err(error) => {
            state.update(index, |r| r.outcome = "invalid".to_owned());
            return error.into_response();
        }
    };
    let failure = lock(&state.config).failures.pop_front();
    let mut extra_first_token_ms = 0;
    let mut empty = false;
    match failure {
        Some(LlmFailure::Http500) => {
            state.update(index, |r| r.outcome = "http_500".to_owned());
            let message = "The server had an error while processing your request.";
            return openai_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                message,
                "server_error",
                None,
                None,
            );
        }
        Some(LlmFailure::Hang) => {
            state.update(index, |r| r.outcome = "hang".to_owned());
            // Never a byte; bounded so a forgotten client cannot pin the task forever.
            tokio::time::sleep(Duration::from_secs(600)).await;
            return StatusCode::GATEWAY_TIMEOUT.into_response();
        }
        Some(LlmFailure::Empty) => empty = true,
        Some(LlmFailure::SlowFirstToken { ms }) => extra_first_token_ms = ms,
        None => {}
    }
    let reply = if empty {
        String::new()
    } else {
        let scripted = (config.mode == LlmMode::Scripted)
            .then(|| lock(&state.replies).pop_front())
            .flatten();
        scripted.unwrap_or_else(|| echo_reply(&request.messages))
    };
    let mut tokens = tokenize(&reply);
    let mut finish_reason = "stop";
    if let Some(max) = request.max_tokens
        && tokens.len() as u64 > max
    {
        tokens.truncate(usize::try_from(max).unwrap_or(usize::MAX));
        finish_reason = "length";
    }
    let completion_tokens = tokens.len() as u64;
    let usage = json!({
        "prompt_tokens": request.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": request.prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
    });
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = chrono::Utc::now().timestamp();
    let first_token_delay =
        Duration::from_millis(config.time_to_first_token_ms + extra_first_token_ms);
    let text: String = tokens.concat();
    state.update(index, |r| r.reply = Some(text.clone()));

    if !request.stream {
        tokio::time::sleep(first_token_delay).await;
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": request.model,
            "system_fingerprint": "fp_sim",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason, "logprobs": null}],
            "usage": usage,
        });
        let now = clock::now_us();
        state.update(index, |r| {
            r.outcome = "completed".to_owned();
            r.tokens_sent = completion_tokens;
            r.first_token_at = Some(now);
            r.finished_at = Some(now);
            r.finish_reason = Some(finish_reason.to_owned());
        });
        return Json(body).into_response();
    }

    let model = request.model.clone();
    let envelope = move |choices: Value, usage: Option<&Value>| -> Bytes {
        let mut body = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_sim",
            "choices": choices,
        });
        if let Some(usage) = usage {
            body["usage"] = usage.clone();
        }
        Bytes::from(format!("data: {body}\n\n"))
    };
    let chunk = {
        let envelope = envelope.clone();
        move |delta: Value, finish: Option<&str>, usage: Option<&Value>| -> Bytes {
            envelope(
                json!([{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]),
                usage,
            )
        }
    };
    // Capacity 1: generation advances only as fast as the client reads, so a disconnect is seen
    // within one token.
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let usage_style = config.usage_style;
    let include_usage = request.include_usage;
    let tokens_per_second = config.tokens_per_second;
    let generator = async move {
        let send = |bytes: Bytes| {
            let tx = tx.clone();
            async move { tx.send(bytes).await.map_err(|_| ()) }
        };
        let cancelled = |sent: u64| {
            state.update(index, |r| {
                r.outcome = "cancelled".to_owned();
                r.tokens_sent = sent;
                r.finished_at = Some(clock::now_us());
            });
        };
        if send(chunk(
            json!({"role": "assistant", "content": ""}),
            None,
            None,
        ))
        .await
        .is_err()
        {
            return cancelled(0);
        }
        tokio::select! {
            () = tokio::time::sleep(first_token_delay) => {}
            () = tx.closed() => return cancelled(0),
        }
        let mut sent = 0u64;
        for token in &tokens {
            if sent > 0 && tokens_per_second > 0 {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs_f64(1.0 / f64::from(tokens_per_second))) => {}
                    () = tx.closed() => return cancelled(sent),
                }
            }
            if send(chunk(json!({"content": token}), None, None))
                .await
                .is_err()
            {
                return cancelled(sent);
            }
            if sent == 0 {
                state.update(index, |r| r.first_token_at = Some(clock::now_us()));
            }
            sent += 1;
        }
        let last = match (include_usage, usage_style) {
            (true, UsageStyle::Cerebras) => {
                vec![chunk(json!({}), Some(finish_reason), Some(&usage))]
            }
            (true, UsageStyle::Openai) => vec![
                chunk(json!({}), Some(finish_reason), None),
                envelope(json!([]), Some(&usage)),
            ],
            (false, _) => vec![chunk(json!({}), Some(finish_reason), None)],
        };
        for bytes in last
            .into_iter()
            .chain([Bytes::from_static(b"data: [DONE]\n\n")])
        {
            if send(bytes).await.is_err() {
                return cancelled(sent);
            }
        }
        state.update(index, |r| {
            r.outcome = "completed".to_owned();
            r.tokens_sent = sent;
            r.finished_at = Some(clock::now_us());
            r.finish_reason = Some(finish_reason.to_owned());
        });
    };
    tokio::spawn(generator);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(r, c)| ((*r).to_owned(), (*c).to_owned()))
            .collect()
    }

    #[test]
    fn echo_quotes_the_last_user_message() {
        let reply = echo_reply(&m(&[
            ("system", "You are Brad."),
            ("user", "I went hiking."),
            ("assistant", "Nice"),
            ("user", "It rained!"),
        ]));
        assert_eq!(
            reply,
            "I heard you say: It rained. Tell me more about that."
        );
        assert!(echo_reply(&m(&[("system", "You are Brad.")])).starts_with("Hello!"));
        let summary = echo_reply(&m(&[
            ("system", "Summarize the call."),
            ("user", "I went hiking in the rain."),
        ]));
        assert_eq!(
            summary,
            "Summary: the caller talked about I went hiking in the rain."
        );
    }

    #[test]
    fn tokens_rebuild_the_reply() {
        let reply = "I heard you say: extraordinarily good. Tell me more.";
        let tokens = tokenize(reply);
        assert_eq!(tokens.concat(), reply);
        assert_eq!(tokens[0], "I");
        assert_eq!(tokens[1], " heard");
        assert!(tokens.contains(&" extr".to_owned()));
    }

    #[test]
    fn validation_is_openai_shaped() {
        assert!(
            validate(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
                .is_ok()
        );
        assert!(validate(&json!({"messages": [{"role": "user", "content": "hi"}]})).is_err());
        assert!(validate(&json!({"model": "m", "messages": []})).is_err());
        assert!(
            validate(&json!({"model": "m", "messages": [{"role": "robot", "content": "hi"}]}))
                .is_err()
        );
        assert!(
            validate(&json!({"model": "m", "messages": [{"role": "user", "content": 5}]})).is_err()
        );
        assert!(validate(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": true}})).is_err());
        assert!(validate(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0})).is_err());
        assert!(validate(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 3})).is_err());
        let v = validate(&json!({"model": "m", "messages": [{"role": "system", "content": "abcdefgh"}, {"role": "user", "content": "hi"}]}))
            .unwrap_or_else(|_| panic!("valid"));
        // ceil(10 / 4) + 3 * 2
        assert_eq!(v.prompt_tokens, 9);
    }
}
