//! The phone side of a `<Connect><Stream>` Media Stream: the simulated callee.
//!
//! Connects to the app's WebSocket as Twilio does (signed handshake), sends `connected`, `start`,
//! then one `media` frame every 20 ms in real time for the whole call (silence, or the speech of
//! the current script line), `dtmf` when the script presses keys, `mark` echoes when playback
//! reaches them, and `stop` when the call ends. It accepts only what Twilio accepts (`media`,
//! `mark`, `clear`, strictly shaped) and records everything else as a violation with its Twilio
//! error code. Received audio goes through the [`Playback`] queue and the codec, so the record
//! says what the callee actually heard, when, and where playback stuttered.
//!
//! The hot loop does no allocation per frame beyond the outgoing message itself: silence is
//! encoded once, payloads are decoded into a reused buffer, and decoder/playback events go into
//! reused vectors.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::CallEntry;
use super::playback::{PlayEvent, Playback};
use super::records::{
    EndReason, HeardSegment, LineRecord, MarkEcho, ReplyRecord, StreamRecord, Violation,
};
use super::scenario::{DEFAULT_PAUSE_MS, Hangup, Line, MACHINE_GREETING};
use super::twiml::Stream;
use crate::clock;
use crate::codec::{
    self, BYTES_PER_MS, FRAME_BYTES, SILENCE, SegmentDecoder, SegmentEvent, SegmentInfo,
};
use crate::timings::Timings;

/// Twilio: binary frames are not accepted.
pub const ERR_BINARY: u32 = 31950;
/// Twilio: only `media`, `mark` and `clear` may be sent.
pub const ERR_UNSUPPORTED_EVENT: u32 = 31924;
/// Twilio: malformed message (missing/extra field, wrong streamSid, bad payload).
pub const ERR_MALFORMED: u32 = 31951;
/// Twilio: the stream's WebSocket handshake failed.
pub const ERR_HANDSHAKE: u32 = 31920;

const FRAME: Duration = Duration::from_millis(20);
/// The voicemail tone after the greeting: loud audio that carries no codec header.
const TONE_MS: u64 = 500;

/// What the phone needs to run a stream.
#[derive(Debug, Clone)]
pub(crate) struct PhoneParams {
    pub(crate) stream: Stream,
    pub(crate) account_sid: String,
    pub(crate) auth_token: String,
    pub(crate) call_sid: String,
    pub(crate) stream_sid: String,
    pub(crate) script: Vec<Line>,
    pub(crate) hangup: Hangup,
    pub(crate) max_wait_ms: u64,
    pub(crate) ms_per_char: u32,
    pub(crate) jitter_buffer_ms: u64,
    /// Voicemail: `Some(greeting_ms)` speaks the greeting and tone first (unless already played
    /// before the stream started, `Some(0)`), then records.
    pub(crate) machine_greeting_ms: Option<u64>,
}

/// How the stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PhoneEnd {
    /// The callee hung up (stop sent).
    Caller,
    /// The app closed the WebSocket.
    AppClosed,
    /// The call was ended from outside (REST, TimeLimit, reset); stop sent.
    Requested(EndReason),
    /// The handshake failed.
    ConnectFailed(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Inbound<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(rename = "streamSid", borrow, default)]
    stream_sid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    media: Option<MediaIn<'a>>,
    #[serde(borrow, default)]
    mark: Option<MarkIn<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MediaIn<'a> {
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkIn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// Only the event name, to tell an unsupported event from a malformed one.
#[derive(Deserialize)]
struct EventOnly<'a> {
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
}

/// A persona segment being received/played.
#[derive(Debug)]
struct Tracked {
    reply: usize,
    index_in_reply: usize,
    start: u64,
    declared: Option<u64>,
    end: Option<u64>,
    info: Option<SegmentInfo>,
    play_started: bool,
}

impl Tracked {
    /// Stream position where the segment is complete, once known.
    fn complete_at(&self) -> Option<u64> {
        self.end.or(self.declared.map(|d| self.start + d))
    }
}

#[derive(Debug)]
enum Caller {
    /// Waiting to say `line`; `since` is when the previous line (or the stream) ended.
    Waiting { line: usize, since_us: u64 },
    Speaking {
        line: usize,
        audio: Vec<u8>,
        position: usize,
        segment_id: Option<u32>,
    },
    /// After the last line: waiting for the reply, then hanging up (or not, `Hangup::App`).
    Finishing { since_us: u64 },
}

struct Phone<'a> {
    entry: &'a CallEntry,
    timings: &'a Timings,
    params: &'a PhoneParams,
    sequence: u64,
    frames_sent: u64,
    silence_b64: String,
    playback: Playback,
    decoder: SegmentDecoder,
    segment_events: Vec<SegmentEvent>,
    play_events: Vec<PlayEvent>,
    payload: Vec<u8>,
    frame: [u8; FRAME_BYTES],
    tracked: Vec<Tracked>,
    /// `Some(after_line)`: the next segment that begins starts a new reply.
    awaiting_reply: Option<Option<usize>>,
    reply_count: usize,
    gap_since: Option<(u64, usize)>,
    caller: Caller,
    /// First persona segment play start since the caller state last changed.
    reply_play_start_us: Option<u64>,
    line_segments: Vec<Option<u32>>,
    outbox: Vec<String>,
    hang_up: bool,
    last_advance_us: u64,
    /// When the last persona segment stopped playing (completed or cleared).
    speech_ended_us: u64,
}

impl std::fmt::Debug for Phone<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phone")
            .field("call_sid", &self.params.call_sid)
            .finish_non_exhaustive()
    }
}

/// Runs the stream until the call ends; records everything into `entry`.
pub(crate) async fn run(
    entry: &CallEntry,
    timings: &Timings,
    params: &PhoneParams,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> PhoneEnd {
    let signature = super::signature::compute(&params.auth_token, &params.stream.url, &[]);
    entry.update(|r| {
        r.stream = Some(StreamRecord {
            url: params.stream.url.clone(),
            name: params.stream.name.clone(),
            stream_sid: params.stream_sid.clone(),
            custom_parameters: params.stream.parameters.iter().cloned().collect(),
            ..StreamRecord::default()
        });
    });
    let mut end_request = entry.end_request.subscribe();
    let connected = tokio::select! {
        result = connect(&params.stream.url, &signature) => result,
        reason = requested(&mut end_request) => return PhoneEnd::Requested(reason),
    };
    let mut ws = match connected {
        Ok(ws) => ws,
        Err(error) => {
            entry.update(|r| {
                r.errors.push(super::records::CallError {
                    code: ERR_HANDSHAKE,
                    message: format!("stream handshake failed: {error}"),
                    at: clock::now_us(),
                });
                if let Some(s) = r.stream.as_mut() {
                    s.connect_error = Some(error.clone());
                }
            });
            return PhoneEnd::ConnectFailed(error);
        }
    };
    let start_us = clock::now_us();
    let mut phone = Phone::new(entry, timings, params, start_us);
    phone.with_stream(|s| s.connected_at = Some(start_us));

    let start = json!({
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": params.account_sid,
            "streamSid": params.stream_sid,
            "callSid": params.call_sid,
            "tracks": ["inbound"],
            "customParameters": params
                .stream
                .parameters
                .iter()
                .map(|(name, value)| (name.clone(), json!(value)))
                .collect::<serde_json::Map<_, _>>(),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": params.stream_sid,
    });
    let opening = [
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.to_owned(),
        start.to_string(),
    ];
    for message in opening {
        if ws.send(Message::text(message)).await.is_err() {
            phone.finish(clock::now_us());
            phone.with_stream(|s| s.closed_by = Some("app".to_owned()));
            return PhoneEnd::AppClosed;
        }
    }
    phone.sequence = 1;
    let start_sent = clock::now_us();
    phone.with_stream(|s| s.start_sent_at = Some(start_sent));

    let mut ticker = tokio::time::interval_at(Instant::now(), FRAME);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let outcome = loop {
        let mark_due = phone.playback.next_mark_due_us().map(clock::instant_at);
        let mark_timer = async {
            match mark_due {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            reason = requested(&mut end_request) => break PhoneEnd::Requested(reason),
            () = crate::sync::until_true(shutdown) => break PhoneEnd::Requested(EndReason::SimulatorReset),
            inbound = ws.next() => {
                let now = clock::now_us();
                match inbound {
                    Some(Ok(Message::Text(text))) => phone.on_text(text.as_str(), now),
                    Some(Ok(Message::Binary(bytes))) => phone.violation(ERR_BINARY, "binary frame", &format!("<{} bytes>", bytes.len()), now),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        phone.finish(now);
                        break PhoneEnd::AppClosed;
                    }
                    Some(Ok(_)) => {}
                }
            }
            _ = ticker.tick() => {
                let now = clock::now_us();
                let media = phone.tick(now);
                if phone.flush(&mut ws).await.is_err() || ws.send(Message::text(media)).await.is_err() {
                    phone.finish(clock::now_us());
                    break PhoneEnd::AppClosed;
                }
                phone.after_frame_sent(clock::now_us());
                if phone.hang_up {
                    break PhoneEnd::Caller;
                }
                continue;
            }
            () = mark_timer => {
                let now = clock::now_us();
                phone.advance(now);
            }
        }
        if phone.flush(&mut ws).await.is_err() {
            phone.finish(clock::now_us());
            break PhoneEnd::AppClosed;
        }
    };
    match outcome {
        PhoneEnd::AppClosed => {
            phone.with_stream(|s| {
                s.closed_by = Some("app".to_owned());
                s.closed_at = Some(clock::now_us());
            });
        }
        PhoneEnd::Caller | PhoneEnd::Requested(_) => {
            let now = clock::now_us();
            phone.finish(now);
            phone.sequence += 1;
            let stop = json!({
                "event": "stop",
                "sequenceNumber": phone.sequence.to_string(),
                "streamSid": params.stream_sid,
                "stop": {"accountSid": params.account_sid, "callSid": params.call_sid},
            });
            // The app may already be gone; the call ends either way.
            let _ = phone.flush(&mut ws).await;
            let _ = ws.send(Message::text(stop.to_string())).await;
            let stop_at = clock::now_us();
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
            phone.with_stream(|s| {
                s.stop_sent_at = Some(stop_at);
                s.closed_by = Some("caller".to_owned());
                s.closed_at = Some(clock::now_us());
            });
        }
        PhoneEnd::ConnectFailed(_) => {}
    }
    outcome
}

/// Resolves once the call is asked to end, with the reason.
async fn requested(end_request: &mut tokio::sync::watch::Receiver<Option<EndReason>>) -> EndReason {
    let reason = end_request
        .wait_for(Option::is_some)
        .await
        .map(|reason| (*reason).unwrap_or(EndReason::AppHangup));
    match reason {
        Ok(reason) => reason,
        // The sender lives in the call entry, which outlives this stream.
        Err(_) => std::future::pending().await,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, signature: &str) -> Result<Ws, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let headers = request.headers_mut();
    headers.insert(
        "X-Twilio-Signature",
        HeaderValue::from_str(signature).map_err(|e| e.to_string())?,
    );
    headers.insert("User-Agent", HeaderValue::from_static("Twilio.TmeWs/1.0"));
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("handshake timed out after 10 s".to_owned()),
    }
}

/// Counts one message of `kind` (no allocation once the kind has been seen).
fn bump(counts: &mut std::collections::BTreeMap<String, u64>, kind: &str) {
    match counts.get_mut(kind) {
        Some(count) => *count += 1,
        None => {
            counts.insert(kind.to_owned(), 1);
        }
    }
}

/// The voicemail tone: loud bytes whose nibbles do not start with the codec magic.
fn tone() -> Vec<u8> {
    (0..TONE_MS * BYTES_PER_MS)
        .map(|i| if i.is_multiple_of(2) { 0x1F } else { 0x9F })
        .collect()
}

impl<'a> Phone<'a> {
    fn new(
        entry: &'a CallEntry,
        timings: &'a Timings,
        params: &'a PhoneParams,
        start_us: u64,
    ) -> Self {
        let caller = match params.machine_greeting_ms {
            Some(ms) if ms > 0 => Caller::Waiting {
                line: 0,
                since_us: start_us,
            },
            Some(_) => Caller::Finishing { since_us: start_us },
            None if params.script.is_empty() => Caller::Finishing { since_us: start_us },
            None => Caller::Waiting {
                line: 0,
                since_us: start_us,
            },
        };
        Self {
            entry,
            timings,
            params,
            sequence: 0,
            frames_sent: 0,
            silence_b64: STANDARD.encode([SILENCE; FRAME_BYTES]),
            playback: Playback::new(start_us, params.jitter_buffer_ms),
            decoder: SegmentDecoder::new(),
            segment_events: Vec::with_capacity(8),
            play_events: Vec::with_capacity(8),
            payload: Vec::with_capacity(4096),
            frame: [SILENCE; FRAME_BYTES],
            tracked: Vec::new(),
            awaiting_reply: Some(None),
            reply_count: 0,
            gap_since: None,
            caller,
            reply_play_start_us: None,
            line_segments: Vec::new(),
            outbox: Vec::new(),
            hang_up: false,
            last_advance_us: start_us,
            speech_ended_us: start_us,
        }
    }

    fn with_stream<R>(&self, f: impl FnOnce(&mut StreamRecord) -> R) -> R {
        self.entry
            .update(|r| f(r.stream.get_or_insert_with(StreamRecord::default)))
    }

    fn next_sequence(&mut self) -> String {
        self.sequence += 1;
        self.sequence.to_string()
    }

    async fn flush(&mut self, ws: &mut Ws) -> Result<(), ()> {
        for message in self.outbox.drain(..) {
            ws.send(Message::text(message)).await.map_err(|_| ())?;
        }
        Ok(())
    }

    fn violation(&mut self, code: u32, message: &str, raw: &str, now: u64) {
        let excerpt: String = raw.chars().take(200).collect();
        self.with_stream(|s| {
            *s.messages_received
                .entry(
                    if code == ERR_BINARY {
                        "binary"
                    } else {
                        "invalid"
                    }
                    .to_owned(),
                )
                .or_default() += 1;
            s.violations.push(Violation {
                code,
                message: message.to_owned(),
                excerpt,
                at: now,
            });
        });
    }

    fn on_text(&mut self, text: &str, now: u64) {
        let inbound: Inbound<'_> = match serde_json::from_str(text) {
            Ok(inbound) => inbound,
            Err(error) => {
                let event = serde_json::from_str::<EventOnly<'_>>(text)
                    .ok()
                    .and_then(|e| e.event);
                match event.as_deref() {
                    Some(e) if !matches!(e, "media" | "mark" | "clear") => {
                        self.violation(
                            ERR_UNSUPPORTED_EVENT,
                            &format!("unsupported event {e:?}"),
                            text,
                            now,
                        );
                    }
                    _ => self.violation(
                        ERR_MALFORMED,
                        &format!("malformed message: {error}"),
                        text,
                        now,
                    ),
                }
                return;
            }
        };
        if !matches!(inbound.event.as_ref(), "media" | "mark" | "clear") {
            let message = format!("unsupported event {:?}", inbound.event);
            self.violation(ERR_UNSUPPORTED_EVENT, &message, text, now);
            return;
        }
        match inbound.stream_sid.as_deref() {
            None => return self.violation(ERR_MALFORMED, "missing streamSid", text, now),
            Some(sid) if sid != self.params.stream_sid => {
                return self.violation(ERR_MALFORMED, "wrong streamSid", text, now);
            }
            Some(_) => {}
        }
        match (inbound.event.as_ref(), inbound.media, inbound.mark) {
            ("media", Some(media), None) => {
                self.payload.clear();
                if STANDARD
                    .decode_vec(media.payload.as_bytes(), &mut self.payload)
                    .is_err()
                {
                    return self.violation(
                        ERR_MALFORMED,
                        "media.payload is not valid base64",
                        text,
                        now,
                    );
                }
                self.on_audio(now);
            }
            ("mark", None, Some(mark)) => {
                self.count("mark");
                self.advance(now);
                self.playback.push_mark(mark.name.into_owned());
                self.advance(now);
            }
            ("clear", None, None) => {
                self.count("clear");
                self.on_clear(now);
            }
            (event, _, _) => {
                let message = format!("unexpected or missing fields for {event:?}");
                self.violation(ERR_MALFORMED, &message, text, now);
            }
        }
    }

    fn count(&self, kind: &str) {
        self.with_stream(|s| bump(&mut s.messages_received, kind));
    }

    fn on_audio(&mut self, now: u64) {
        let len = self.payload.len();
        self.with_stream(|s| {
            bump(&mut s.messages_received, "media");
            s.audio_bytes_received += len as u64;
        });
        self.advance(now);
        self.segment_events.clear();
        self.decoder.feed(&self.payload, &mut self.segment_events);
        let events = std::mem::take(&mut self.segment_events);
        for event in &events {
            self.on_segment_event(event, now);
        }
        self.segment_events = events;
        self.playback.push_audio(len, now);
        self.advance(now);
    }

    fn on_segment_event(&mut self, event: &SegmentEvent, now: u64) {
        match event {
            SegmentEvent::Began { offset } => {
                if let Some(after_line) = self.awaiting_reply.take() {
                    self.reply_count += 1;
                    self.with_stream(|s| {
                        s.replies.push(ReplyRecord {
                            after_line,
                            first_frame_at: now,
                            segments: Vec::new(),
                            cut_by_clear: false,
                            gaps_ms: Vec::new(),
                        });
                    });
                    if let Some(segment) =
                        after_line.and_then(|l| self.line_segments.get(l).copied().flatten())
                    {
                        self.timings.reply_first_frame(segment, now);
                    }
                }
                let reply = self.reply_count.saturating_sub(1);
                let index_in_reply = self.with_stream(|s| {
                    let segments = &mut s.replies[reply].segments;
                    segments.push(HeardSegment {
                        segment_id: None,
                        text: None,
                        duration_ms: None,
                        heard_ms: None,
                        heard_text: None,
                        cut_by_clear: false,
                        play_started_at: None,
                    });
                    segments.len() - 1
                });
                self.tracked.push(Tracked {
                    reply,
                    index_in_reply,
                    start: *offset,
                    declared: None,
                    end: None,
                    info: None,
                    play_started: false,
                });
            }
            SegmentEvent::Started { info, offset } => {
                if let Some(t) = self.tracked.iter_mut().find(|t| t.start == *offset) {
                    t.declared = Some(u64::from(info.duration_ms) * BYTES_PER_MS);
                    t.info = Some(info.clone());
                    let (reply, index) = (t.reply, t.index_in_reply);
                    self.with_stream(|s| {
                        let seg = &mut s.replies[reply].segments[index];
                        seg.segment_id = Some(info.id);
                        seg.text = Some(info.text.clone());
                        seg.duration_ms = Some(info.duration_ms);
                    });
                }
            }
            SegmentEvent::Ended {
                offset, seen_bytes, ..
            } => {
                if let Some(t) = self.tracked.iter_mut().find(|t| t.start == *offset) {
                    t.end = Some(offset + seen_bytes);
                }
            }
        }
    }

    fn on_clear(&mut self, now: u64) {
        // Play up to now first (marks reached, segments completed), then drop the rest: the
        // playback position only jumps after what was really heard is known.
        self.advance(now);
        self.play_events.clear();
        let (marks, heard_up_to) = self.playback.clear(now, &mut self.play_events);
        self.play_events.clear();
        self.gap_since = None;
        self.decoder.reset();
        // Everything not fully played is cut where playback stood.
        let cut: Vec<Tracked> = std::mem::take(&mut self.tracked);
        for t in &cut {
            let position = heard_up_to.min(t.complete_at().unwrap_or(u64::MAX));
            self.finalize(t, position, true);
        }
        if !cut.is_empty() {
            self.speech_ended_us = now;
        }
        self.with_stream(|s| {
            s.clears.push(now);
            if let Some(reply) = s.replies.last_mut() {
                reply.cut_by_clear = true;
            }
        });
        for name in marks {
            self.echo_mark(name, now, true);
        }
    }

    fn echo_mark(&mut self, name: String, at: u64, cleared: bool) {
        let sequence = self.next_sequence();
        let echo = json!({
            "event": "mark",
            "sequenceNumber": sequence,
            "streamSid": self.params.stream_sid,
            "mark": {"name": name},
        });
        self.outbox.push(echo.to_string());
        self.with_stream(|s| s.marks_echoed.push(MarkEcho { name, at, cleared }));
    }

    /// Records how much of `t` was heard: up to stream position `position`.
    fn finalize(&self, t: &Tracked, position: u64, cut_by_clear: bool) {
        let heard_ms = position.saturating_sub(t.start) / BYTES_PER_MS;
        let heard_text = t.info.as_ref().map(|info| {
            codec::heard_text(
                &info.text,
                u32::try_from(heard_ms).unwrap_or(u32::MAX),
                info.duration_ms,
            )
        });
        self.with_stream(|s| {
            let seg = &mut s.replies[t.reply].segments[t.index_in_reply];
            seg.heard_ms = Some(heard_ms);
            seg.heard_text = heard_text;
            seg.cut_by_clear = cut_by_clear && t.complete_at().is_none_or(|c| position < c);
        });
    }

    /// Plays up to `now`: echoes marks, notes play starts and gaps, finalises played segments.
    fn advance(&mut self, now: u64) {
        self.play_events.clear();
        self.playback.advance(now, &mut self.play_events);
        self.handle_play_events(now);
    }

    fn handle_play_events(&mut self, now: u64) {
        let events = std::mem::take(&mut self.play_events);
        for event in &events {
            match event {
                PlayEvent::Mark { name, at_us } => self.echo_mark(name.clone(), *at_us, false),
                PlayEvent::Idle { at_us, position } => {
                    let incomplete = self.tracked.iter().find(|t| {
                        t.start < *position && t.complete_at().is_none_or(|c| *position < c)
                    });
                    if let Some(t) = incomplete {
                        self.gap_since = Some((*at_us, t.reply));
                    }
                }
                PlayEvent::Resumed { at_us, .. } => {
                    if let Some((since, reply)) = self.gap_since.take() {
                        let gap_ms = at_us.saturating_sub(since) / 1000;
                        if gap_ms > 0 {
                            self.with_stream(|s| {
                                s.replies[reply].gaps_ms.push(gap_ms);
                                s.max_gap_ms = s.max_gap_ms.max(gap_ms);
                            });
                        }
                    }
                }
            }
        }
        self.play_events = events;
        self.play_events.clear();
        let played = self.playback.played();
        let previous_advance = std::mem::replace(&mut self.last_advance_us, now);
        // Play starts (for the script's timing) and completed segments.
        let mut index = 0;
        while index < self.tracked.len() {
            let t = &mut self.tracked[index];
            if !t.play_started && played > t.start {
                t.play_started = true;
                // Exact unless playback idled since the previous advance (then at most one tick early).
                let started_at = now
                    .saturating_sub((played - t.start) * 125)
                    .max(previous_advance);
                let (reply, i) = (t.reply, t.index_in_reply);
                self.reply_play_start_us.get_or_insert(started_at);
                self.with_stream(|s| {
                    s.replies[reply].segments[i].play_started_at = Some(started_at)
                });
            }
            let t = &self.tracked[index];
            if let Some(complete) = t.complete_at()
                && played >= complete
            {
                let done = self.tracked.remove(index);
                self.finalize(&done, complete, false);
                self.speech_ended_us = now
                    .saturating_sub((played - complete) * 125)
                    .max(previous_advance);
                continue;
            }
            index += 1;
        }
    }

    /// Prepares the media frame for this tick (and any dtmf), returns the media message.
    fn tick(&mut self, now: u64) -> String {
        self.advance(now);
        self.step_script(now);
        let payload_is_speech = match &mut self.caller {
            Caller::Speaking {
                audio, position, ..
            } => {
                let end = (*position + FRAME_BYTES).min(audio.len());
                let n = end - *position;
                self.frame[..n].copy_from_slice(&audio[*position..end]);
                self.frame[n..].fill(SILENCE);
                *position = end;
                true
            }
            _ => false,
        };
        let n = self.frames_sent;
        let sequence = self.next_sequence();
        let mut message = String::with_capacity(360);
        let _ = write!(
            message,
            r#"{{"event":"media","sequenceNumber":"{sequence}","media":{{"track":"inbound","chunk":"{}","timestamp":"{}","payload":""#,
            n + 1,
            n * 20
        );
        if payload_is_speech {
            STANDARD.encode_string(self.frame, &mut message);
        } else {
            message.push_str(&self.silence_b64);
        }
        let _ = write!(message, r#""}},"streamSid":"{}"}}"#, self.params.stream_sid);
        message
    }

    /// Bookkeeping once this tick's frame is on the wire.
    fn after_frame_sent(&mut self, now: u64) {
        self.frames_sent += 1;
        if self.frames_sent.is_multiple_of(50) {
            let frames = self.frames_sent;
            self.with_stream(|s| s.media_frames_sent = frames);
        }
        if let Caller::Speaking {
            line,
            audio,
            position,
            segment_id,
        } = &self.caller
        {
            let (line, segment_id) = (*line, *segment_id);
            if *position == FRAME_BYTES.min(audio.len()) {
                if let Some(id) = segment_id {
                    self.timings.speech_start(id, now);
                }
                self.with_stream(|s| {
                    if let Some(l) = s.lines.iter_mut().find(|l| l.index == line) {
                        l.started_at = now;
                    }
                });
            }
            if *position >= audio.len() {
                self.end_line(line, segment_id, now);
            }
        }
    }

    fn end_line(&mut self, line: usize, segment_id: Option<u32>, now: u64) {
        if let Some(id) = segment_id {
            self.timings.speech_end(id, now);
        }
        self.with_stream(|s| {
            if let Some(l) = s.lines.iter_mut().find(|l| l.index == line) {
                l.ended_at = Some(now);
            }
        });
        self.awaiting_reply = Some(Some(line));
        self.reply_play_start_us = None;
        let next = line + 1;
        self.caller =
            if self.params.machine_greeting_ms.is_none() && next < self.params.script.len() {
                Caller::Waiting {
                    line: next,
                    since_us: now,
                }
            } else {
                Caller::Finishing { since_us: now }
            };
    }

    /// Decides whether the caller starts a line (or hangs up) at this tick.
    fn step_script(&mut self, now: u64) {
        // The persona is silent when no speech segment is playing or waiting to play (silence
        // audio the app keeps sending does not count as talking).
        let silent_for = self
            .tracked
            .is_empty()
            .then(|| now.saturating_sub(self.speech_ended_us) / 1000);
        let replied = self.reply_play_start_us;
        match self.caller {
            Caller::Speaking { .. } => {}
            Caller::Waiting { line, since_us } => {
                if let Some(greeting_ms) = self.params.machine_greeting_ms {
                    // Voicemail: the greeting and the tone, at once.
                    let text = MACHINE_GREETING;
                    let id = codec::next_segment_id();
                    let duration = u32::try_from(greeting_ms).unwrap_or(u32::MAX);
                    let mut audio = codec::encode_segment(id, text, duration);
                    audio.extend(std::iter::repeat_n(SILENCE, 800));
                    audio.extend(tone());
                    self.begin_line(
                        line,
                        text.to_owned(),
                        None,
                        Some(id),
                        audio,
                        false,
                        false,
                        now,
                    );
                    return;
                }
                let spec = &self.params.script[line];
                let waited_ms = now.saturating_sub(since_us) / 1000;
                let (go, barge_in) = match (spec.barge_in_after_ms, replied) {
                    (Some(after), Some(started)) => (now >= started + after * 1000, true),
                    (Some(_), None) => (false, true),
                    (None, Some(started)) => {
                        let pause = spec.pause_ms.unwrap_or(DEFAULT_PAUSE_MS);
                        let silent_since_reply = self.speech_ended_us >= started;
                        (
                            silent_since_reply && silent_for.is_some_and(|silent| silent >= pause),
                            false,
                        )
                    }
                    (None, None) => (false, false),
                };
                let forced = !go && replied.is_none() && waited_ms >= self.params.max_wait_ms;
                if go || forced {
                    let say = spec.say.clone();
                    let dtmf = spec.dtmf.clone();
                    let id = (!say.trim().is_empty()).then(codec::next_segment_id);
                    let audio = id.map_or_else(Vec::new, |id| {
                        codec::encode_segment(
                            id,
                            &say,
                            codec::duration_for(&say, self.params.ms_per_char),
                        )
                    });
                    if let Some(digits) = &dtmf {
                        for digit in digits.chars() {
                            let sequence = self.next_sequence();
                            let message = json!({
                                "event": "dtmf",
                                "streamSid": self.params.stream_sid,
                                "sequenceNumber": sequence,
                                "dtmf": {"track": "inbound_track", "digit": digit.to_string()},
                            });
                            self.outbox.push(message.to_string());
                        }
                        self.with_stream(|s| s.dtmf_sent.push(digits.clone()));
                    }
                    self.begin_line(line, say, dtmf, id, audio, forced, barge_in && !forced, now);
                    if id.is_none() {
                        self.end_line(line, None, now);
                    }
                }
            }
            Caller::Finishing { since_us } => {
                let Hangup::Caller { after_ms } = self.params.hangup else {
                    return;
                };
                let waited_ms = now.saturating_sub(since_us) / 1000;
                let done = match replied {
                    Some(started) => {
                        self.speech_ended_us >= started
                            && silent_for.is_some_and(|silent| silent >= after_ms)
                    }
                    None => waited_ms >= self.params.max_wait_ms,
                };
                if done {
                    self.hang_up = true;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn begin_line(
        &mut self,
        line: usize,
        say: String,
        dtmf: Option<String>,
        segment_id: Option<u32>,
        audio: Vec<u8>,
        forced: bool,
        barge_in: bool,
        now: u64,
    ) {
        if let Some(id) = segment_id {
            self.timings
                .register_line(id, &self.params.call_sid, line, &say);
        }
        self.line_segments
            .resize(self.line_segments.len().max(line + 1), None);
        self.line_segments[line] = segment_id;
        self.with_stream(|s| {
            s.lines.push(LineRecord {
                index: line,
                segment_id,
                say,
                dtmf,
                started_at: now,
                ended_at: None,
                forced_by_max_wait: forced,
                barge_in,
            });
        });
        if !audio.is_empty() {
            self.caller = Caller::Speaking {
                line,
                audio,
                position: 0,
                segment_id,
            };
        }
    }

    /// Final bookkeeping: what was playing is heard up to where playback stands.
    fn finish(&mut self, now: u64) {
        self.advance(now);
        let played = self.playback.played();
        for t in std::mem::take(&mut self.tracked) {
            let position = played.min(t.complete_at().unwrap_or(u64::MAX));
            self.finalize(&t, position, false);
        }
        let frames = self.frames_sent;
        self.with_stream(|s| s.media_frames_sent = frames);
    }
}
