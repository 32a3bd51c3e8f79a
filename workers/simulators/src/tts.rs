//! The ElevenLabs TTS simulator: `/v1/text-to-speech/{voice_id}/multi-stream-input` and
//! `/v1/text-to-speech/{voice_id}/stream-input` (WebSocket).
//!
//! Text is buffered per context and generated when it reaches a sentence end, when the
//! `chunk_length_schedule` threshold is passed, on `flush`, or per message with `auto_mode=true`.
//! Each generation is one codec segment (fresh segment id, duration from the text) followed by a
//! short natural pause, sent as several base64 μ-law `audio` messages with character alignment.
//! `close_context` drops that context's audio not yet sent and answers `isFinal`. Only
//! `output_format=ulaw_8000` is accepted: the Worker must never ask for anything else.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::AppState;
use crate::clock;
use crate::codec::{self, BYTES_PER_MS, SILENCE};
use crate::sync::lock;

/// ElevenLabs' default `chunk_length_schedule`.
const DEFAULT_SCHEDULE: [u64; 4] = [120, 160, 250, 290];

/// TTS simulator knobs (`PUT /sim/tts/config` merges into these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TtsConfig {
    /// The key accepted in `xi-api-key` (header), `authorization` (query) or `xi_api_key` (first message).
    pub api_key: String,
    /// Delay from a generation being triggered to its first audio message.
    pub time_to_first_byte_ms: u64,
    /// Audio per `audio` message.
    pub chunk_ms: u64,
    /// Speaking rate of the persona.
    pub ms_per_char: u32,
    /// Silence after each generation (a natural pause).
    pub pause_ms: u64,
    /// Failure injection: refuse the next this many handshakes with HTTP 503.
    pub refuse_handshakes: u32,
    /// Failure injection: drop the next connection after it received this many messages.
    pub close_after_messages: Option<u32>,
    /// Failure injection: the next this many generations produce no audio (then `isFinal`).
    pub silent_generations: u32,
}

impl Default for TtsConfig {
    fn default() -> Self {
        Self {
            api_key: "sim-elevenlabs-key".to_owned(),
            time_to_first_byte_ms: 0,
            chunk_ms: 250,
            ms_per_char: codec::DEFAULT_MS_PER_CHAR,
            pause_ms: 120,
            refuse_handshakes: 0,
            close_after_messages: None,
            silent_generations: 0,
        }
    }
}

/// One generation (one codec segment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtsSegment {
    pub segment_id: u32,
    pub text: String,
    pub duration_ms: u32,
    pub triggered_at: u64,
    pub first_audio_at: Option<u64>,
    pub audio_messages: u32,
    /// No audio was produced (failure injection).
    pub silent: bool,
    /// Audio not yet sent was dropped by `close_context`.
    pub truncated: bool,
}

/// One context (the single-context endpoint has one, named "").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TtsContext {
    pub context_id: String,
    /// All text received, concatenated.
    pub text: String,
    pub characters_billed: u64,
    pub voice_settings: Option<Value>,
    pub generation_config: Option<Value>,
    pub segments: Vec<TtsSegment>,
    pub flushes: u32,
    pub closed: bool,
    pub final_sent_at: Option<u64>,
}

/// One connection attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TtsConnection {
    pub id: u64,
    /// `multi-stream-input` or `stream-input`.
    pub endpoint: String,
    pub voice_id: String,
    pub query: BTreeMap<String, String>,
    pub auth_ok: Option<bool>,
    pub refused: Option<u16>,
    pub opened_at: u64,
    pub closed_at: Option<u64>,
    pub closed_by: Option<String>,
    pub close_code: Option<u16>,
    pub close_reason: Option<String>,
    pub messages_received: u64,
    /// Characters of text received (what ElevenLabs bills).
    pub characters_billed: u64,
    pub contexts: Vec<TtsContext>,
    /// Messages ElevenLabs would ignore or reject, explained.
    pub violations: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct TtsState {
    config: Mutex<TtsConfig>,
    connections: Mutex<Vec<TtsConnection>>,
}

impl TtsState {
    pub(crate) fn new(config: TtsConfig) -> Self {
        Self {
            config: Mutex::new(config),
            connections: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn reset(&self) {
        let key = lock(&self.config).api_key.clone();
        *lock(&self.config) = TtsConfig {
            api_key: key,
            ..TtsConfig::default()
        };
        lock(&self.connections).clear();
    }

    fn update<R>(&self, id: u64, f: impl FnOnce(&mut TtsConnection) -> R) -> Option<R> {
        lock(&self.connections)
            .iter_mut()
            .find(|c| c.id == id)
            .map(f)
    }

    fn take_silent_generation(&self) -> bool {
        let mut config = lock(&self.config);
        if config.silent_generations > 0 {
            config.silent_generations -= 1;
            true
        } else {
            false
        }
    }
}

/// Library handle on the ElevenLabs simulator.
#[derive(Debug, Clone)]
pub struct TtsHandle {
    pub(crate) state: Arc<TtsState>,
}

impl TtsHandle {
    pub fn config(&self) -> TtsConfig {
        lock(&self.state.config).clone()
    }

    pub fn set_config(&self, config: TtsConfig) {
        *lock(&self.state.config) = config;
    }

    /// Every connection attempt so far.
    pub fn records(&self) -> Vec<TtsConnection> {
        lock(&self.state.connections).clone()
    }
}

pub(crate) async fn multi_stream_input(
    State(app): State<AppState>,
    Path(voice_id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    handshake(app, voice_id, raw, headers, upgrade, true)
}

pub(crate) async fn stream_input(
    State(app): State<AppState>,
    Path(voice_id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    handshake(app, voice_id, raw, headers, upgrade, false)
}

fn handshake(
    app: AppState,
    voice_id: String,
    raw: Option<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
    multi: bool,
) -> Response {
    let state = app.tts.clone();
    let query: BTreeMap<String, String> =
        serde_urlencoded::from_str::<Vec<(String, String)>>(raw.as_deref().unwrap_or(""))
            .unwrap_or_default()
            .into_iter()
            .collect();
    let (config, refuse, close_after) = {
        let mut config = lock(&state.config);
        let refuse = config.refuse_handshakes > 0;
        if refuse {
            config.refuse_handshakes -= 1;
        }
        let close_after = if refuse {
            None
        } else {
            config.close_after_messages.take()
        };
        (config.clone(), refuse, close_after)
    };
    let id = {
        let mut connections = lock(&state.connections);
        let id = connections.len() as u64 + 1;
        connections.push(TtsConnection {
            id,
            endpoint: if multi {
                "multi-stream-input"
            } else {
                "stream-input"
            }
            .to_owned(),
            voice_id,
            query: query.clone(),
            auth_ok: None,
            refused: None,
            opened_at: clock::now_us(),
            closed_at: None,
            closed_by: None,
            close_code: None,
            close_reason: None,
            messages_received: 0,
            characters_billed: 0,
            contexts: Vec::new(),
            violations: Vec::new(),
        });
        id
    };
    if refuse {
        state.update(id, |c| c.refused = Some(503));
        let body = json!({"detail": {"status": "service_unavailable", "message": "injected failure: handshake refused"}});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let header_key = headers
        .get("xi-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let given_key = header_key.or_else(|| query.get("authorization").cloned());
    let shutdown = app.shutdown.clone();
    upgrade.on_upgrade(move |socket| async move {
        let mut conn = Conn {
            state,
            id,
            auth: given_key.map(|k| k == config.api_key),
            config,
            multi,
            close_after,
            query,
            contexts: Vec::new(),
            outgoing: VecDeque::new(),
        };
        conn.run(socket, shutdown).await;
    })
}

#[derive(Debug)]
struct Context {
    id: String,
    buffer: String,
    generations: usize,
    messages: u64,
    schedule: Vec<u64>,
    closed: bool,
    /// Index of this context in the connection record.
    record: usize,
}

#[derive(Debug)]
struct Outgoing {
    due: Instant,
    context: String,
    body: String,
    /// (record context index, segment index) for audio; `None` for isFinal.
    segment: Option<(usize, usize)>,
    is_final: bool,
}

enum Flow {
    Continue,
    Close(u16, String),
    Drop,
}

struct Conn {
    state: Arc<TtsState>,
    id: u64,
    config: TtsConfig,
    multi: bool,
    close_after: Option<u32>,
    /// `None` until a key was seen (header, query or first message).
    auth: Option<bool>,
    query: BTreeMap<String, String>,
    contexts: Vec<Context>,
    outgoing: VecDeque<Outgoing>,
}

impl Conn {
    fn auto_mode(&self) -> bool {
        self.query.get("auto_mode").is_some_and(|v| v == "true")
    }

    fn check_query(&self) -> Result<Duration, String> {
        match self.query.get("output_format").map(String::as_str) {
            Some("ulaw_8000") => {}
            other => {
                return Err(format!(
                    "unsupported output format: {}",
                    other.unwrap_or("mp3_44100_128 (default)")
                ));
            }
        }
        let timeout = match self.query.get("inactivity_timeout") {
            None => 20,
            Some(t) => match t.parse::<u64>() {
                Ok(t) if (1..=180).contains(&t) => t,
                _ => {
                    return Err(format!(
                        "inactivity_timeout must be 1..=180 seconds, got {t}"
                    ));
                }
            },
        };
        Ok(Duration::from_secs(timeout))
    }

    async fn run(
        &mut self,
        mut socket: WebSocket,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        if self.auth == Some(false) {
            self.state.update(self.id, |c| c.auth_ok = Some(false));
            self.close(&mut socket, 1008, "Invalid API key.".to_owned())
                .await;
            return;
        }
        let inactivity = match self.check_query() {
            Ok(timeout) => timeout,
            Err(reason) => {
                self.close(&mut socket, 1008, reason).await;
                return;
            }
        };
        let mut last_message = Instant::now();
        let flow = loop {
            let next_due = self.outgoing.front().map(|o| o.due);
            let send_timer = async {
                match next_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let flow = tokio::select! {
                () = crate::sync::until_true(&mut shutdown) => Flow::Close(1001, "simulator shutting down".to_owned()),
                () = tokio::time::sleep_until(last_message + inactivity) => Flow::Close(
                    1008,
                    format!("Have not received new text for {} seconds; closing the connection.", inactivity.as_secs()),
                ),
                () = send_timer => Flow::Continue,
                message = socket.recv() => match message {
                    Some(Ok(Message::Text(text))) => {
                        last_message = Instant::now();
                        self.on_message(text.as_str())
                    }
                    Some(Ok(Message::Binary(_))) => Flow::Close(1003, "binary messages are not supported".to_owned()),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        self.closed("client", None, None);
                        return;
                    }
                    Some(Ok(_)) => Flow::Continue,
                },
            };
            let graceful = matches!(&flow, Flow::Close(1000, _));
            if self.send_due(&mut socket, graceful).await.is_err() {
                self.closed("client", None, None);
                return;
            }
            if !matches!(flow, Flow::Continue) {
                break flow;
            }
        };
        match flow {
            Flow::Drop => {
                self.closed("dropped", None, None);
                drop(socket);
            }
            Flow::Close(code, reason) => self.close(&mut socket, code, reason).await,
            Flow::Continue => {}
        }
    }

    async fn close(&self, socket: &mut WebSocket, code: u16, reason: String) {
        let frame = CloseFrame {
            code,
            reason: reason.clone().into(),
        };
        let _ = socket.send(Message::Close(Some(frame))).await;
        self.closed("server", Some(code), Some(reason));
    }

    fn closed(&self, by: &str, code: Option<u16>, reason: Option<String>) {
        self.state.update(self.id, |c| {
            c.closed_at = Some(clock::now_us());
            c.closed_by = Some(by.to_owned());
            c.close_code = code;
            c.close_reason = reason;
        });
    }

    fn violation(&self, message: String) {
        self.state.update(self.id, |c| c.violations.push(message));
    }

    fn on_message(&mut self, text: &str) -> Flow {
        let count = self
            .state
            .update(self.id, |c| {
                c.messages_received += 1;
                c.messages_received
            })
            .unwrap_or(0);
        let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
            return Flow::Close(1008, "invalid message: expected a JSON object".to_owned());
        };
        // Authentication: header or query at the handshake, else `xi_api_key` in the first message.
        let configured = self.config.api_key.clone();
        if self.auth.is_none() {
            let key = message
                .get("xi_api_key")
                .or_else(|| message.get("xi-api-key"))
                .and_then(Value::as_str);
            if let Some(key) = key {
                self.auth = Some(key == configured);
            }
        }
        if self.auth != Some(true) {
            self.state.update(self.id, |c| c.auth_ok = Some(false));
            return Flow::Close(1008, "Invalid API key or no API key provided.".to_owned());
        }
        self.state.update(self.id, |c| c.auth_ok = Some(true));
        if self.close_after.is_some_and(|k| count >= u64::from(k)) {
            return Flow::Drop;
        }
        if message.get("close_socket").and_then(Value::as_bool) == Some(true) {
            return Flow::Close(1000, String::new());
        }
        let context_id = if self.multi {
            match message.get("context_id") {
                Some(Value::String(id)) => id.clone(),
                _ => {
                    self.violation(
                        "message without context_id; using the default context \"\"".to_owned(),
                    );
                    String::new()
                }
            }
        } else {
            if message.contains_key("context_id") {
                self.violation(
                    "context_id on the single-context stream-input endpoint is ignored".to_owned(),
                );
            }
            String::new()
        };
        let text_field = match message.get("text") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(t.clone()),
            Some(_) => {
                return Flow::Close(1008, "invalid message: text must be a string".to_owned());
            }
        };
        let index = self.context_index(&context_id);
        let first = self.contexts[index].messages == 0;
        self.contexts[index].messages += 1;
        if let Some(settings) = message.get("voice_settings") {
            if first {
                if let Err(reason) = validate_voice_settings(settings) {
                    return Flow::Close(1008, reason);
                }
                let record = self.contexts[index].record;
                let settings = settings.clone();
                self.state.update(self.id, |c| {
                    c.contexts[record].voice_settings = Some(settings)
                });
            } else {
                self.violation(format!(
                    "voice_settings on a later message of context {context_id:?} are ignored"
                ));
            }
        }
        if let Some(config) = message.get("generation_config") {
            if let Some(schedule) = config.get("chunk_length_schedule") {
                let values: Option<Vec<u64>> = schedule
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).collect());
                match values {
                    Some(v) if !v.is_empty() && v.iter().all(|x| (50..=500).contains(x)) => {
                        self.contexts[index].schedule = v
                    }
                    _ => {
                        return Flow::Close(
                            1008,
                            "chunk_length_schedule values must be 50..=500".to_owned(),
                        );
                    }
                }
            }
            let record = self.contexts[index].record;
            let config = config.clone();
            self.state.update(self.id, |c| {
                c.contexts[record].generation_config = Some(config)
            });
        }
        let close_context = message.get("close_context").and_then(Value::as_bool) == Some(true);
        let flush = message.get("flush").and_then(Value::as_bool) == Some(true);
        if self.contexts[index].closed {
            self.violation(format!("message for closed context {context_id:?} ignored"));
            return Flow::Continue;
        }
        if let Some(text) = &text_field {
            let chars = text.chars().count() as u64;
            let record = self.contexts[index].record;
            self.state.update(self.id, |c| {
                c.characters_billed += chars;
                c.contexts[record].characters_billed += chars;
                c.contexts[record].text.push_str(text);
            });
            if text.is_empty() && !self.multi {
                // `{"text":""}` ends the single-context stream: generate what is left, then close.
                self.generate_rest(index);
                self.final_for(index);
                return Flow::Close(1000, String::new());
            }
            self.contexts[index].buffer.push_str(text);
        }
        if close_context {
            self.close_context(index);
            return Flow::Continue;
        }
        if flush {
            let record = self.contexts[index].record;
            self.state
                .update(self.id, |c| c.contexts[record].flushes += 1);
            self.generate_rest(index);
            self.final_for(index);
            return Flow::Continue;
        }
        if self.auto_mode() {
            self.generate_rest(index);
        } else {
            self.generate_ready(index);
        }
        Flow::Continue
    }

    fn context_index(&mut self, id: &str) -> usize {
        if let Some(i) = self.contexts.iter().position(|c| c.id == id) {
            return i;
        }
        let record = self
            .state
            .update(self.id, |c| {
                c.contexts.push(TtsContext {
                    context_id: id.to_owned(),
                    text: String::new(),
                    characters_billed: 0,
                    voice_settings: None,
                    generation_config: None,
                    segments: Vec::new(),
                    flushes: 0,
                    closed: false,
                    final_sent_at: None,
                });
                c.contexts.len() - 1
            })
            .unwrap_or(0);
        self.contexts.push(Context {
            id: id.to_owned(),
            buffer: String::new(),
            generations: 0,
            messages: 0,
            schedule: DEFAULT_SCHEDULE.to_vec(),
            closed: false,
            record,
        });
        self.contexts.len() - 1
    }

    /// Generates complete sentences, or everything once the schedule threshold is passed.
    fn generate_ready(&mut self, index: usize) {
        let context = &self.contexts[index];
        let threshold = context.schedule[context.generations.min(context.schedule.len() - 1)];
        if context.buffer.chars().count() as u64 >= threshold {
            self.generate_rest(index);
            return;
        }
        let bytes = context.buffer.as_bytes();
        let mut cut = None;
        for i in 0..bytes.len().saturating_sub(1) {
            if matches!(bytes[i], b'.' | b'!' | b'?') && bytes[i + 1] == b' ' {
                cut = Some(i + 2);
            }
        }
        if let Some(cut) = cut {
            let rest = self.contexts[index].buffer.split_off(cut);
            let ready = std::mem::replace(&mut self.contexts[index].buffer, rest);
            self.generate(index, &ready);
        }
    }

    fn generate_rest(&mut self, index: usize) {
        let text = std::mem::take(&mut self.contexts[index].buffer);
        self.generate(index, &text);
    }

    fn generate(&mut self, index: usize, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        self.contexts[index].generations += 1;
        let segment_id = codec::next_segment_id();
        let duration_ms = codec::duration_for(text, self.config.ms_per_char);
        let silent = self.state.take_silent_generation();
        let context_id = self.contexts[index].id.clone();
        let record = self.contexts[index].record;
        let segment_index = self
            .state
            .update(self.id, |c| {
                let segments = &mut c.contexts[record].segments;
                segments.push(TtsSegment {
                    segment_id,
                    text: text.to_owned(),
                    duration_ms,
                    triggered_at: clock::now_us(),
                    first_audio_at: None,
                    audio_messages: 0,
                    silent,
                    truncated: false,
                });
                segments.len() - 1
            })
            .unwrap_or(0);
        if silent {
            return;
        }
        let mut audio = codec::encode_segment(segment_id, text, duration_ms);
        audio.extend(std::iter::repeat_n(
            SILENCE,
            (self.config.pause_ms * BYTES_PER_MS) as usize,
        ));
        let chunk_bytes = (self.config.chunk_ms.max(20) * BYTES_PER_MS) as usize;
        let chars: Vec<char> = text.chars().collect();
        let ms_per_char = f64::from(duration_ms) / chars.len().max(1) as f64;
        let due = Instant::now() + Duration::from_millis(self.config.time_to_first_byte_ms);
        for (n, piece) in audio.chunks(chunk_bytes).enumerate() {
            let start_ms = (n * chunk_bytes) as f64 / BYTES_PER_MS as f64;
            let end_ms = start_ms + piece.len() as f64 / BYTES_PER_MS as f64;
            let mut a_chars = Vec::new();
            let mut a_starts = Vec::new();
            let mut a_durations = Vec::new();
            for (i, ch) in chars.iter().enumerate() {
                let at = i as f64 * ms_per_char;
                if at >= start_ms && at < end_ms {
                    a_chars.push(ch.to_string());
                    a_starts.push(at.round() as u64);
                    a_durations.push(ms_per_char.round() as u64);
                }
            }
            let alignment = json!({"chars": a_chars, "charStartTimesMs": a_starts, "charsDurationsMs": a_durations});
            let mut body = json!({
                "audio": STANDARD.encode(piece),
                "isFinal": null,
                "normalizedAlignment": alignment,
                "alignment": alignment,
            });
            if self.multi {
                body["contextId"] = json!(context_id);
            }
            self.outgoing.push_back(Outgoing {
                due,
                context: context_id.clone(),
                body: body.to_string(),
                segment: Some((record, segment_index)),
                is_final: false,
            });
        }
    }

    /// `isFinal` for a context, after its queued audio.
    fn final_for(&mut self, index: usize) {
        let context_id = self.contexts[index].id.clone();
        let body = if self.multi {
            json!({"isFinal": true, "contextId": context_id})
        } else {
            json!({"isFinal": true})
        };
        let due = self.outgoing.back().map_or_else(Instant::now, |o| o.due);
        self.outgoing.push_back(Outgoing {
            due,
            context: context_id,
            body: body.to_string(),
            segment: None,
            is_final: true,
        });
    }

    fn close_context(&mut self, index: usize) {
        let context_id = self.contexts[index].id.clone();
        self.contexts[index].closed = true;
        self.contexts[index].buffer.clear();
        let record = self.contexts[index].record;
        let mut dropped = Vec::new();
        self.outgoing.retain(|o| {
            let keep = o.context != context_id;
            if !keep && let Some(segment) = o.segment {
                dropped.push(segment);
            }
            keep
        });
        self.state.update(self.id, |c| {
            c.contexts[record].closed = true;
            for (ctx, seg) in dropped {
                c.contexts[ctx].segments[seg].truncated = true;
            }
        });
        let body = json!({"isFinal": true, "contextId": context_id});
        self.outgoing.push_back(Outgoing {
            due: Instant::now(),
            context: context_id,
            body: body.to_string(),
            segment: None,
            is_final: true,
        });
    }

    async fn send_due(
        &mut self,
        socket: &mut WebSocket,
        everything: bool,
    ) -> Result<(), axum::Error> {
        let now = Instant::now();
        while let Some(front) = self.outgoing.front() {
            if !everything && front.due > now {
                break;
            }
            let out = self.outgoing.pop_front().expect("front exists");
            socket.send(Message::Text(out.body.into())).await?;
            let at = clock::now_us();
            if let Some((ctx, seg)) = out.segment {
                self.state.update(self.id, |c| {
                    let segment = &mut c.contexts[ctx].segments[seg];
                    segment.first_audio_at.get_or_insert(at);
                    segment.audio_messages += 1;
                });
            } else if out.is_final {
                let context = self
                    .contexts
                    .iter()
                    .find(|c| c.id == out.context)
                    .map(|c| c.record);
                if let Some(record) = context {
                    self.state.update(self.id, |c| {
                        c.contexts[record].final_sent_at.get_or_insert(at);
                    });
                }
            }
        }
        Ok(())
    }
}

fn validate_voice_settings(settings: &Value) -> Result<(), String> {
    let Some(object) = settings.as_object() else {
        return Err("voice_settings must be an object".to_owned());
    };
    for (name, range) in [
        ("stability", 0.0..=1.0),
        ("similarity_boost", 0.0..=1.0),
        ("style", 0.0..=1.0),
        ("speed", 0.7..=1.2),
    ] {
        if let Some(value) = object.get(name)
            && !value.is_null()
            && !value.as_f64().is_some_and(|v| range.contains(&v))
        {
            return Err(format!(
                "voice_settings.{name} must be a number in {range:?}"
            ));
        }
    }
    if let Some(value) = object.get("use_speaker_boost")
        && !value.is_null()
        && !value.is_boolean()
    {
        return Err("voice_settings.use_speaker_boost must be a boolean".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voice_settings_ranges() {
        assert!(
            validate_voice_settings(
                &json!({"stability": 0.5, "similarity_boost": 0.8, "speed": 1.0})
            )
            .is_ok()
        );
        assert!(validate_voice_settings(&json!({"speed": 1.3})).is_err());
        assert!(validate_voice_settings(&json!({"speed": 0.6})).is_err());
        assert!(validate_voice_settings(&json!({"stability": 2})).is_err());
        assert!(validate_voice_settings(&json!({"use_speaker_boost": "yes"})).is_err());
        assert!(validate_voice_settings(&json!(5)).is_err());
    }
}
