//! The Deepgram streaming STT simulator: `GET /v1/listen` (WebSocket).
//!
//! Recognition is the speech codec: an energy VAD over each 20 ms of received audio decides
//! speech and silence (as a real endpointer would), and the segment decoder says what the words
//! were. Timing follows the audio, not the wall clock, exactly like Deepgram: endpointing fires
//! after `endpointing` ms of silent *audio*, `UtteranceEnd` after `utterance_end_ms` of audio
//! since the last word, and a client that stops sending audio gets no results (and, after 10 s
//! without audio or `KeepAlive`, a close with code 1011 and reason `NET-0001`).
//!
//! Messages have Deepgram's full shape: `Results` (interim and final, with words and metadata),
//! `SpeechStarted`, `UtteranceEnd` and, on `CloseStream`, `Metadata` with the billable duration.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::AppState;
use crate::clock;
use crate::codec::{self, BYTES_PER_MS, SegmentDecoder, SegmentEvent};
use crate::sync::lock;
use crate::timings::Timings;

/// Deepgram simulator knobs (`PUT /sim/stt/config` merges into these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SttConfig {
    /// The key accepted in `Authorization: Token <key>` (or `Sec-WebSocket-Protocol: token, <key>`).
    pub api_key: String,
    /// Added delay before each message is written (model latency).
    pub latency_ms: u64,
    /// Interim results every this many ms of speech audio (with `interim_results=true`).
    pub interim_interval_ms: u64,
    /// VAD: mean |sample| over 20 ms above this is speech (codec speech is ≥ 8 000, silence 0).
    pub vad_threshold: u32,
    /// No audio and no KeepAlive this long closes the socket (1011, `NET-0001`).
    pub idle_timeout_ms: u64,
    /// Failure injection: the next this many handshakes are refused with HTTP 503.
    pub refuse_handshakes: u32,
    /// Failure injection: the next connection is dropped (no close frame, no Metadata) after this
    /// many ms of received speech.
    pub drop_after_speech_ms: Option<u64>,
}

impl Default for SttConfig {
    fn default() -> Self {
        Self {
            api_key: "sim-deepgram-key".to_owned(),
            latency_ms: 0,
            interim_interval_ms: 250,
            vad_threshold: 2000,
            idle_timeout_ms: 10_000,
            refuse_handshakes: 0,
            drop_after_speech_ms: None,
        }
    }
}

/// One message the simulator wrote to a connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SttMessageRecord {
    /// `Results`, `SpeechStarted`, `UtteranceEnd`, `Metadata`.
    #[serde(rename = "type")]
    pub kind: String,
    pub at: u64,
    pub is_final: Option<bool>,
    pub speech_final: Option<bool>,
    pub from_finalize: Option<bool>,
    pub transcript: Option<String>,
    /// Codec segments whose recognition this message completes.
    pub segment_ids: Vec<u32>,
}

/// One `/v1/listen` connection attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SttConnection {
    pub id: u64,
    pub query: BTreeMap<String, String>,
    pub auth_ok: bool,
    /// HTTP status when the handshake was refused (401 auth, 400 parameters, 503 injected).
    pub refused: Option<u16>,
    pub opened_at: u64,
    pub closed_at: Option<u64>,
    /// `client`, `server` (close frame sent) or `dropped` (failure injection).
    pub closed_by: Option<String>,
    pub close_code: Option<u16>,
    pub close_reason: Option<String>,
    pub audio_bytes: u64,
    pub audio_secs: f64,
    pub keepalives: u64,
    pub finalizes: u64,
    pub messages: Vec<SttMessageRecord>,
}

#[derive(Debug)]
pub(crate) struct SttState {
    config: Mutex<SttConfig>,
    connections: Mutex<Vec<SttConnection>>,
    timings: Arc<Timings>,
}

impl SttState {
    pub(crate) fn new(config: SttConfig, timings: Arc<Timings>) -> Self {
        Self {
            config: Mutex::new(config),
            connections: Mutex::new(Vec::new()),
            timings,
        }
    }

    pub(crate) fn reset(&self) {
        let key = lock(&self.config).api_key.clone();
        *lock(&self.config) = SttConfig {
            api_key: key,
            ..SttConfig::default()
        };
        lock(&self.connections).clear();
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut SttConnection)) {
        if let Some(c) = lock(&self.connections).iter_mut().find(|c| c.id == id) {
            f(c);
        }
    }
}

/// Library handle on the Deepgram simulator.
#[derive(Debug, Clone)]
pub struct SttHandle {
    pub(crate) state: Arc<SttState>,
}

impl SttHandle {
    pub fn config(&self) -> SttConfig {
        lock(&self.state.config).clone()
    }

    pub fn set_config(&self, config: SttConfig) {
        *lock(&self.state.config) = config;
    }

    /// Every connection attempt so far.
    pub fn records(&self) -> Vec<SttConnection> {
        lock(&self.state.connections).clone()
    }
}

/// |linear| of every μ-law byte, for the VAD.
const ABS_LINEAR: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let u = !(i as u8);
        let exponent = (u >> 4) & 0x07;
        let mantissa = (u & 0x0F) as i32;
        let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
        table[i] = magnitude as u16;
        i += 1;
    }
    table
};

#[derive(Debug, Clone)]
struct Options {
    model: String,
    interim: bool,
    endpointing: Option<u64>,
    utterance_end_ms: Option<u64>,
    vad_events: bool,
    punctuate: bool,
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"err_code": code, "err_msg": message, "request_id": uuid::Uuid::new_v4().to_string()});
    (status, axum::Json(body)).into_response()
}

fn flag(query: &BTreeMap<String, String>, name: &str) -> bool {
    query.get(name).is_some_and(|v| v == "true")
}

fn parse_options(query: &BTreeMap<String, String>) -> Result<Options, String> {
    match query.get("encoding").map(String::as_str) {
        Some("mulaw") => {}
        Some(other) => {
            return Err(format!(
                "encoding {other:?} is not supported by this simulator; use mulaw"
            ));
        }
        None => return Err("encoding is required for raw audio (mulaw)".to_owned()),
    }
    if query.get("sample_rate").map(String::as_str) != Some("8000") {
        return Err("sample_rate must be 8000 for mulaw".to_owned());
    }
    if let Some(channels) = query.get("channels")
        && channels != "1"
    {
        return Err(format!("channels must be 1, got {channels}"));
    }
    let endpointing = match query.get("endpointing").map(String::as_str) {
        None => Some(10),
        Some("false") => None,
        Some("true") => Some(10),
        Some(ms) => Some(
            ms.parse::<u64>()
                .map_err(|_| format!("endpointing must be ms or false, got {ms:?}"))?,
        ),
    };
    let utterance_end_ms = match query.get("utterance_end_ms") {
        None => None,
        Some(ms) => Some(
            ms.parse::<u64>()
                .map_err(|_| format!("utterance_end_ms must be ms, got {ms:?}"))?,
        ),
    };
    Ok(Options {
        model: query
            .get("model")
            .cloned()
            .unwrap_or_else(|| "base".to_owned()),
        interim: flag(query, "interim_results"),
        endpointing,
        utterance_end_ms,
        vad_events: flag(query, "vad_events"),
        punctuate: flag(query, "punctuate") || flag(query, "smart_format"),
    })
}

/// `GET /v1/listen`: the WebSocket handshake.
pub(crate) async fn listen(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let state = app.stt.clone();
    let query: BTreeMap<String, String> =
        serde_urlencoded::from_str::<Vec<(String, String)>>(raw.as_deref().unwrap_or(""))
            .unwrap_or_default()
            .into_iter()
            .collect();
    let (config, refuse) = {
        let mut config = lock(&state.config);
        let refuse = config.refuse_handshakes > 0;
        if refuse {
            config.refuse_handshakes -= 1;
        }
        (config.clone(), refuse)
    };
    let header_key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token "))
        .map(|k| k.trim().to_owned());
    let protocols: Vec<String> = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').map(|p| p.trim().to_owned()).collect())
        .unwrap_or_default();
    let protocol_key = match protocols.as_slice() {
        [token, key, ..] if token == "token" => Some(key.clone()),
        _ => None,
    };
    let auth_ok = header_key.as_deref() == Some(config.api_key.as_str())
        || protocol_key.as_deref() == Some(config.api_key.as_str());
    let id = {
        let mut connections = lock(&state.connections);
        let id = connections.len() as u64 + 1;
        connections.push(SttConnection {
            id,
            query: query.clone(),
            auth_ok,
            refused: None,
            opened_at: clock::now_us(),
            closed_at: None,
            closed_by: None,
            close_code: None,
            close_reason: None,
            audio_bytes: 0,
            audio_secs: 0.0,
            keepalives: 0,
            finalizes: 0,
            messages: Vec::new(),
        });
        id
    };
    let refuse_with = |status: StatusCode, code: &str, message: &str| {
        state.update(id, |c| c.refused = Some(status.as_u16()));
        error_response(status, code, message)
    };
    if refuse {
        return refuse_with(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "injected failure: handshake refused",
        );
    }
    if !auth_ok {
        return refuse_with(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTH",
            "Invalid credentials.",
        );
    }
    let options = match parse_options(&query) {
        Ok(options) => options,
        Err(message) => return refuse_with(StatusCode::BAD_REQUEST, "Bad Request", &message),
    };
    let drop_after = {
        let mut config = lock(&state.config);
        config.drop_after_speech_ms.take()
    };
    let upgrade = if protocol_key.is_some() {
        upgrade.protocols(["token"])
    } else {
        upgrade
    };
    let shutdown = app.shutdown.clone();
    upgrade.on_upgrade(move |socket| async move {
        let mut conn = Conn::new(state, id, config, options, drop_after);
        conn.run(socket, shutdown).await;
    })
}

#[derive(Debug)]
struct Pending {
    id: Option<u32>,
    text: Option<String>,
    duration_ms: u32,
    start_byte: u64,
    seen_bytes: u64,
    ended: bool,
    words_emitted: usize,
}

#[derive(Debug, Clone)]
struct Word {
    word: String,
    punctuated: String,
    start: f64,
    end: f64,
}

impl Pending {
    /// Words revealed so far: a word counts once all its characters have been "said".
    fn words(&self) -> Vec<Word> {
        let Some(text) = &self.text else {
            return Vec::new();
        };
        let total = text.chars().count().max(1) as f64;
        let duration_ms = f64::from(self.duration_ms.max(1));
        let seen_ms = (self.seen_bytes / BYTES_PER_MS) as f64;
        let heard_chars = (total * seen_ms.min(duration_ms) / duration_ms).floor();
        let base_s = (self.start_byte / BYTES_PER_MS) as f64 / 1000.0;
        let mut out = Vec::new();
        let mut char_index = 0usize;
        let mut current: Option<(usize, String)> = None;
        let push = |start: usize, end: usize, token: String, out: &mut Vec<Word>| {
            if (end as f64) <= heard_chars || seen_ms >= duration_ms {
                let at = |c: usize| base_s + (c as f64 / total) * duration_ms / 1000.0;
                let word: String = token
                    .chars()
                    .filter(|c| c.is_alphanumeric() || *c == '\'')
                    .flat_map(char::to_lowercase)
                    .collect();
                if !word.is_empty() {
                    out.push(Word {
                        word,
                        punctuated: token,
                        start: at(start),
                        end: at(end),
                    });
                }
            }
        };
        for ch in text.chars() {
            if ch.is_whitespace() {
                if let Some((start, token)) = current.take() {
                    push(start, char_index, token, &mut out);
                }
            } else {
                current
                    .get_or_insert_with(|| (char_index, String::new()))
                    .1
                    .push(ch);
            }
            char_index += 1;
        }
        if let Some((start, token)) = current.take() {
            push(start, char_index, token, &mut out);
        }
        out
    }
}

struct Outgoing {
    due: Instant,
    body: String,
    record: SttMessageRecord,
}

enum Flow {
    Continue,
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// Drop the TCP connection without a close frame.
    Drop,
}

struct Conn {
    state: Arc<SttState>,
    id: u64,
    config: SttConfig,
    options: Options,
    drop_after_speech_ms: Option<u64>,
    request_id: String,
    model_uuid: String,
    audio_bytes: u64,
    block_sum: u32,
    block_len: usize,
    speaking: bool,
    silence_run_ms: u64,
    speech_ms: u64,
    decoder: SegmentDecoder,
    events: Vec<SegmentEvent>,
    pending: Vec<Pending>,
    last_interim_ms: u64,
    window_start_s: f64,
    /// Words finalised since the last UtteranceEnd: (end of last word, ms of audio; segment ids).
    utterance: Option<(u64, Vec<u32>)>,
    outgoing: VecDeque<Outgoing>,
    sha: Sha256,
}

impl Conn {
    fn new(
        state: Arc<SttState>,
        id: u64,
        config: SttConfig,
        options: Options,
        drop_after_speech_ms: Option<u64>,
    ) -> Self {
        Self {
            state,
            id,
            config,
            options,
            drop_after_speech_ms,
            request_id: uuid::Uuid::new_v4().to_string(),
            model_uuid: uuid::Uuid::new_v4().to_string(),
            audio_bytes: 0,
            block_sum: 0,
            block_len: 0,
            speaking: false,
            silence_run_ms: 0,
            speech_ms: 0,
            decoder: SegmentDecoder::new(),
            events: Vec::with_capacity(8),
            pending: Vec::new(),
            last_interim_ms: 0,
            window_start_s: 0.0,
            utterance: None,
            outgoing: VecDeque::new(),
            sha: Sha256::new(),
        }
    }

    fn audio_ms(&self) -> u64 {
        self.audio_bytes / BYTES_PER_MS
    }

    async fn run(
        &mut self,
        mut socket: WebSocket,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let idle = Duration::from_millis(self.config.idle_timeout_ms);
        let mut last_activity = Instant::now();
        let flow = loop {
            let next_due = self.outgoing.front().map(|o| o.due);
            let send_timer = async {
                match next_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let flow = tokio::select! {
                () = crate::sync::until_true(&mut shutdown) => Flow::Close(1001, "simulator shutting down"),
                () = tokio::time::sleep_until(last_activity + idle) => Flow::Close(1011, "NET-0001"),
                () = send_timer => Flow::Continue,
                message = socket.recv() => match message {
                    Some(Ok(Message::Binary(bytes))) => {
                        last_activity = Instant::now();
                        self.on_audio(&bytes)
                    }
                    Some(Ok(Message::Text(text))) => {
                        match serde_json::from_str::<Value>(text.as_str()).ok().as_ref().and_then(|v| v.get("type")).and_then(Value::as_str) {
                            Some("KeepAlive") => {
                                last_activity = Instant::now();
                                self.state.update(self.id, |c| c.keepalives += 1);
                                Flow::Continue
                            }
                            Some("Finalize") => {
                                self.state.update(self.id, |c| c.finalizes += 1);
                                self.final_result(false, true);
                                Flow::Continue
                            }
                            Some("CloseStream") => {
                                self.final_result(self.options.endpointing.is_some(), false);
                                self.metadata();
                                Flow::Close(1000, "")
                            }
                            _ => Flow::Close(1008, "DATA-0000"),
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        self.closed("client", None, None);
                        return;
                    }
                    Some(Ok(_)) => Flow::Continue,
                },
            };
            let graceful = matches!(flow, Flow::Close(1000, _));
            // Messages already due go out first; on a graceful close, everything queued.
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
            Flow::Close(code, reason) => {
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
                self.closed("server", Some(code), Some(reason));
            }
            Flow::Continue => {}
        }
    }

    fn closed(&self, by: &str, code: Option<u16>, reason: Option<&str>) {
        let (bytes, at) = (self.audio_bytes, clock::now_us());
        self.state.update(self.id, |c| {
            c.closed_at = Some(at);
            c.closed_by = Some(by.to_owned());
            c.close_code = code;
            c.close_reason = reason.map(str::to_owned);
            c.audio_bytes = bytes;
            c.audio_secs = bytes as f64 / 8000.0;
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
            let mut record = out.record;
            record.at = at;
            let timings = &self.state.timings;
            match record.kind.as_str() {
                "Results" if record.is_final == Some(true) => {
                    for id in &record.segment_ids {
                        timings.stt_final_sent(*id, at);
                    }
                }
                "UtteranceEnd" => {
                    for id in &record.segment_ids {
                        timings.utterance_end_sent(*id, at);
                    }
                }
                _ => {}
            }
            self.state.update(self.id, |c| c.messages.push(record));
        }
        Ok(())
    }

    fn queue(&mut self, body: Value, record: SttMessageRecord) {
        self.outgoing.push_back(Outgoing {
            due: Instant::now() + Duration::from_millis(self.config.latency_ms),
            body: body.to_string(),
            record,
        });
    }

    fn on_audio(&mut self, bytes: &[u8]) -> Flow {
        self.sha.update(bytes);
        self.events.clear();
        self.decoder.feed(bytes, &mut self.events);
        for event in std::mem::take(&mut self.events) {
            match event {
                SegmentEvent::Began { offset } => self.pending.push(Pending {
                    id: None,
                    text: None,
                    duration_ms: 0,
                    start_byte: offset,
                    seen_bytes: 0,
                    ended: false,
                    words_emitted: 0,
                }),
                SegmentEvent::Started { info, offset } => {
                    if let Some(p) = self.pending.iter_mut().find(|p| p.start_byte == offset) {
                        p.id = Some(info.id);
                        p.duration_ms = info.duration_ms;
                        p.text = Some(info.text);
                    }
                }
                SegmentEvent::Ended {
                    offset, seen_bytes, ..
                } => {
                    if let Some(p) = self.pending.iter_mut().find(|p| p.start_byte == offset) {
                        p.ended = true;
                        p.seen_bytes = seen_bytes;
                    }
                }
            }
        }
        if let Some((_, start, seen_ms)) = self.decoder.current()
            && let Some(p) = self.pending.iter_mut().find(|p| p.start_byte == start)
        {
            p.seen_bytes = seen_ms * BYTES_PER_MS;
        }
        let mut flow = Flow::Continue;
        for &byte in bytes {
            self.block_sum += u32::from(ABS_LINEAR[usize::from(byte)]);
            self.block_len += 1;
            self.audio_bytes += 1;
            if self.block_len == codec::FRAME_BYTES {
                let speech = self.block_sum / codec::FRAME_BYTES as u32 > self.config.vad_threshold;
                self.block_sum = 0;
                self.block_len = 0;
                if let Flow::Drop = self.on_block(speech) {
                    flow = Flow::Drop;
                }
            }
        }
        // The record's audio total is refreshed about once a second (and at close), not per frame.
        let bytes_total = self.audio_bytes;
        if bytes_total / 8000 != (bytes_total - bytes.len() as u64) / 8000 {
            self.state.update(self.id, |c| {
                c.audio_bytes = bytes_total;
                c.audio_secs = bytes_total as f64 / 8000.0;
            });
        }
        flow
    }

    fn on_block(&mut self, speech: bool) -> Flow {
        let now_ms = self.audio_ms();
        if speech {
            if !self.speaking {
                self.speaking = true;
                self.last_interim_ms = now_ms;
                if self.options.vad_events {
                    let at = now_ms.saturating_sub(20) as f64 / 1000.0;
                    self.queue(
                        json!({"type": "SpeechStarted", "channel": [0, 1], "timestamp": at}),
                        record("SpeechStarted", None, None, None, None, Vec::new()),
                    );
                }
            }
            self.silence_run_ms = 0;
            self.speech_ms += 20;
            if self
                .drop_after_speech_ms
                .is_some_and(|limit| self.speech_ms >= limit)
            {
                return Flow::Drop;
            }
            if self.options.interim
                && now_ms - self.last_interim_ms >= self.config.interim_interval_ms
            {
                self.last_interim_ms = now_ms;
                self.interim_result();
            }
        } else {
            if self.speaking {
                self.silence_run_ms += 20;
                if self
                    .options
                    .endpointing
                    .is_none_or(|ms| self.silence_run_ms >= ms)
                {
                    self.speaking = false;
                    self.final_result(self.options.endpointing.is_some(), false);
                }
            }
            if let (Some(gap), false) = (self.options.utterance_end_ms, self.speaking)
                && let Some((last_word_end_ms, _)) = &self.utterance
                && now_ms.saturating_sub(*last_word_end_ms) >= gap
            {
                let (last_word_end_ms, ids) = self.utterance.take().expect("matched Some");
                self.queue(
                    json!({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": last_word_end_ms as f64 / 1000.0}),
                    record("UtteranceEnd", None, None, None, None, ids),
                );
            }
        }
        Flow::Continue
    }

    fn results_body(
        &self,
        words: &[Word],
        is_final: bool,
        speech_final: bool,
        from_finalize: bool,
    ) -> (Value, String) {
        let transcript = words
            .iter()
            .map(|w| {
                if self.options.punctuate {
                    w.punctuated.as_str()
                } else {
                    w.word.as_str()
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        let now_s = self.audio_ms() as f64 / 1000.0;
        let words_json: Vec<Value> = words
            .iter()
            .map(|w| {
                json!({
                    "word": w.word,
                    "start": w.start,
                    "end": w.end,
                    "confidence": 0.99,
                    "punctuated_word": if self.options.punctuate { w.punctuated.as_str() } else { w.word.as_str() },
                })
            })
            .collect();
        let body = json!({
            "type": "Results",
            "channel_index": [0, 1],
            "duration": (now_s - self.window_start_s).max(0.0),
            "start": self.window_start_s,
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{
                "transcript": transcript,
                "confidence": if words.is_empty() { 0.0 } else { 0.99 },
                "words": words_json,
            }]},
            "metadata": {
                "request_id": self.request_id,
                "model_info": {"name": self.options.model, "version": "2024-01-01.0", "arch": self.options.model},
                "model_uuid": self.model_uuid,
            },
        });
        (body, transcript)
    }

    fn interim_result(&mut self) {
        let words: Vec<Word> = self
            .pending
            .iter()
            .flat_map(|p| p.words().into_iter().skip(p.words_emitted))
            .collect();
        if words.is_empty() {
            return;
        }
        let (body, transcript) = self.results_body(&words, false, false, false);
        self.queue(
            body,
            record(
                "Results",
                Some(false),
                Some(false),
                Some(false),
                Some(transcript),
                Vec::new(),
            ),
        );
    }

    /// A final result with everything recognised and not yet finalised.
    fn final_result(&mut self, speech_final: bool, from_finalize: bool) {
        if self.pending.is_empty() {
            return;
        }
        let mut words = Vec::new();
        let mut completed = Vec::new();
        for p in &mut self.pending {
            let revealed = p.words();
            words.extend(revealed.iter().skip(p.words_emitted).cloned());
            p.words_emitted = revealed.len();
            if p.ended
                && let Some(id) = p.id
            {
                completed.push(id);
            }
        }
        self.pending.retain(|p| !p.ended);
        if let Some(last) = words.last() {
            let end_ms = (last.end * 1000.0).round() as u64;
            let ids = match self.utterance.take() {
                Some((_, mut ids)) => {
                    ids.extend(&completed);
                    ids
                }
                None => completed.clone(),
            };
            self.utterance = Some((end_ms, ids));
        }
        let (body, transcript) = self.results_body(&words, true, speech_final, from_finalize);
        self.window_start_s = self.audio_ms() as f64 / 1000.0;
        self.queue(
            body,
            record(
                "Results",
                Some(true),
                Some(speech_final),
                Some(from_finalize),
                Some(transcript),
                completed,
            ),
        );
    }

    fn metadata(&mut self) {
        let sha = hex::encode(self.sha.clone().finalize());
        let body = json!({
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": sha,
            "created": chrono::Utc::now().to_rfc3339(),
            "duration": self.audio_bytes as f64 / 8000.0,
            "channels": 1,
        });
        self.queue(body, record("Metadata", None, None, None, None, Vec::new()));
    }
}

fn record(
    kind: &str,
    is_final: Option<bool>,
    speech_final: Option<bool>,
    from_finalize: Option<bool>,
    transcript: Option<String>,
    segment_ids: Vec<u32>,
) -> SttMessageRecord {
    SttMessageRecord {
        kind: kind.to_owned(),
        at: 0,
        is_final,
        speech_final,
        from_finalize,
        transcript,
        segment_ids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vad_table_matches_the_decoder() {
        for byte in 0..=255u8 {
            assert_eq!(
                i32::from(ABS_LINEAR[usize::from(byte)]),
                i32::from(codec::mulaw_to_linear(byte)).abs()
            );
        }
    }

    #[test]
    fn options_follow_deepgram_defaults_and_reject_other_encodings() {
        let q = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let o =
            parse_options(&q(&[("encoding", "mulaw"), ("sample_rate", "8000")])).expect("valid");
        assert_eq!(o.endpointing, Some(10));
        assert!(!o.interim);
        let o = parse_options(&q(&[
            ("encoding", "mulaw"),
            ("sample_rate", "8000"),
            ("endpointing", "false"),
        ]))
        .expect("valid");
        assert_eq!(o.endpointing, None);
        assert!(parse_options(&q(&[("encoding", "linear16"), ("sample_rate", "8000")])).is_err());
        assert!(parse_options(&q(&[("encoding", "mulaw"), ("sample_rate", "16000")])).is_err());
        assert!(parse_options(&q(&[("sample_rate", "8000")])).is_err());
    }

    #[test]
    fn words_are_revealed_in_proportion_with_times() {
        let p = Pending {
            id: Some(1),
            text: Some("Hello there, friend!".to_owned()), // 20 chars, 2000 ms
            duration_ms: 2000,
            start_byte: 8000, // 1 s into the stream
            seen_bytes: 1300 * 8,
            ended: false,
            words_emitted: 0,
        };
        let words = p.words();
        assert_eq!(
            words.iter().map(|w| w.word.as_str()).collect::<Vec<_>>(),
            vec!["hello", "there"]
        );
        assert_eq!(words[1].punctuated, "there,");
        assert!((words[0].start - 1.0).abs() < 1e-9);
        assert!((words[0].end - 1.5).abs() < 1e-9);
    }
}
