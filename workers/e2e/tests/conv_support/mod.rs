//! Shared by the conversation tests (`conversation*.rs`, `media_stream.rs`): fast simulated
//! speech, placing a call, the simulator's record of it, the app's live channel, and rows.
//!
//! Each test file includes this module; not every file uses every helper.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callmeback_e2e::Stack;
use callmeback_simulators::twilio::records::{CallRecord, HeardSegment};
use callmeback_simulators::twilio::{Hangup, Line, Scenario};
use futures_util::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The persona's fixed lines (`callmeback_media::config::FixedLines` defaults).
pub(crate) const WRAP_UP: &str = "Just so you know, we only have a little time left on this call.";
pub(crate) const LIMIT_GOODBYE: &str =
    "We've reached the limit for this call, so I have to say goodbye now. Talk to you soon!";
pub(crate) const FALLBACK: &str =
    "Sorry, I lost my train of thought for a second. Could you say that again?";
pub(crate) const TROUBLE_GOODBYE: &str =
    "I'm having some technical trouble, so I'll hang up now. Sorry about that — talk soon!";

/// Makes simulated speech fast (both sides), so a call of a few lines takes seconds.
pub(crate) fn fast_speech(stack: &Stack) {
    let mut twilio = stack.sims.twilio().config();
    twilio.ms_per_char = 15;
    twilio.amd_decision_ms = 300;
    stack.sims.twilio().set_config(twilio);
    let mut tts = stack.sims.tts().config();
    tts.ms_per_char = 20;
    tts.pause_ms = 60;
    stack.sims.tts().set_config(tts);
}

/// A line the callee says after the persona stopped talking (a short pause).
pub(crate) fn says(text: &str) -> Line {
    Line {
        say: text.to_owned(),
        pause_ms: Some(300),
        ..Line::default()
    }
}

/// A line the callee says over the persona, `after_ms` after its reply started playing.
pub(crate) fn barges_in(text: &str, after_ms: u64) -> Line {
    Line {
        say: text.to_owned(),
        barge_in_after_ms: Some(after_ms),
        ..Line::default()
    }
}

/// A callee who answers, says `lines`, and hangs up shortly after the last reply.
///
/// "After the reply" is 1.5 s of silence from the persona: with 500 ms, a pause between two
/// sentences of the reply on a loaded CI machine (every e2e test at once on two cores) was once
/// taken for its end, and the caller hung up in the middle of it.
pub(crate) fn conversation(lines: Vec<Line>) -> Scenario {
    Scenario {
        ring_ms: 200,
        script: lines,
        hangup: Hangup::Caller { after_ms: 1500 },
        ..Scenario::default()
    }
}

/// A user on `tier` with `credits`, and the phone number calls go to.
pub(crate) async fn user(
    stack: &Stack,
    email: &str,
    phone: &str,
    tier: &str,
    credits: i32,
) -> User {
    let (token, id) = stack.register_with_phone(email, phone).await;
    stack.set_tier(&id, tier, credits).await;
    User {
        token,
        id,
        phone: phone.to_owned(),
    }
}

#[derive(Debug, Clone)]
pub(crate) struct User {
    pub(crate) token: String,
    pub(crate) id: String,
    pub(crate) phone: String,
}

/// `POST /api/calls` to the user's own number with Brad; returns the call id.
pub(crate) async fn place_call(stack: &Stack, user: &User) -> String {
    let (status, body) = stack
        .json(
            Method::POST,
            "/api/calls",
            Some(&user.token),
            Some(json!({"persona_id": "brad"})),
        )
        .await;
    assert_eq!(status, 202, "{body}\n{}", stack.worker_log());
    body["call"]["id"].as_str().expect("call id").to_owned()
}

/// Polls `check` every 100 ms until it gives a value or `timeout` passes (then fails with `what`).
pub(crate) async fn eventually<T>(
    stack: &Stack,
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}\nworker log:\n{}",
            tail(&stack.worker_log(), 12_000)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last `max` bytes of a log (failure messages stay readable).
pub(crate) fn tail(log: &str, max: usize) -> &str {
    let mut start = log.len().saturating_sub(max);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

/// The simulator's record of the (only) call to `phone`, once Twilio has it.
pub(crate) async fn sim_call(stack: &Stack, phone: &str) -> CallRecord {
    eventually(
        stack,
        "the simulator has the call",
        Duration::from_secs(20),
        async || {
            stack
                .sims
                .twilio()
                .calls()
                .into_iter()
                .rev()
                .find(|c| c.to == phone)
        },
    )
    .await
}

/// Waits until the simulator's call ended (and its last callback was delivered).
pub(crate) async fn sim_call_ended(stack: &Stack, sid: &str, timeout: Duration) -> CallRecord {
    match stack.sims.twilio().wait_for_end(sid, timeout).await {
        Ok(record) => record,
        Err(error) => panic!(
            "{error}\nrecord: {:#?}\nworker log:\n{}",
            stack.sims.twilio().call(sid),
            tail(&stack.worker_log(), 12_000)
        ),
    }
}

/// Everything the callee heard of reply `index` (its segments' heard text, joined). A reply is
/// the persona's audio between two of the callee's lines.
pub(crate) fn heard(record: &CallRecord, index: usize) -> String {
    let stream = record.stream.as_ref().expect("the call had a media stream");
    stream.replies[index]
        .segments
        .iter()
        .filter_map(|segment| segment.heard_text.clone())
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every persona segment (one per synthesis: about a sentence), in the order played.
pub(crate) fn segments(record: &CallRecord) -> Vec<HeardSegment> {
    record
        .stream
        .as_ref()
        .map(|stream| {
            stream
                .replies
                .iter()
                .flat_map(|reply| reply.segments.iter().cloned())
                .collect()
        })
        .unwrap_or_default()
}

/// Single spaces between words.
pub(crate) fn normalized(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Everything the callee heard of the persona, in order.
pub(crate) fn heard_everything(record: &CallRecord) -> String {
    normalized(
        &segments(record)
            .iter()
            .filter_map(|segment| segment.heard_text.clone())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Whether the callee heard `line` whole.
pub(crate) fn heard_line(record: &CallRecord, line: &str) -> bool {
    heard_everything(record).contains(&normalized(line))
}

/// When (simulator clock, µs) the callee started hearing `line` (its first sentence's segment).
pub(crate) fn line_heard_at(record: &CallRecord, line: &str) -> Option<u64> {
    let line = normalized(line);
    segments(record)
        .iter()
        .find(|segment| {
            segment
                .text
                .as_deref()
                .is_some_and(|text| line.starts_with(&normalized(text)))
        })
        .and_then(|segment| segment.play_started_at)
}

/// The transcript lines of a recorded call as (role, content, interrupted).
pub(crate) fn lines(call: &Value) -> Vec<(String, String, bool)> {
    call["transcript"]
        .as_array()
        .unwrap_or_else(|| panic!("no transcript: {call}"))
        .iter()
        .map(|line| {
            (
                line["role"].as_str().unwrap_or_default().to_owned(),
                line["content"].as_str().unwrap_or_default().to_owned(),
                line["interrupted"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// The persona's lines of a recorded call.
pub(crate) fn persona_lines(call: &Value) -> Vec<String> {
    lines(call)
        .into_iter()
        .filter(|(role, _, _)| role == "assistant")
        .map(|(_, text, _)| text)
        .collect()
}

/// The failures in a call's metrics as (provider, kind, count).
pub(crate) fn failures(call: &Value) -> Vec<(String, String, u64)> {
    call["metrics"]["failures"]
        .as_array()
        .unwrap_or_else(|| panic!("no failures array: {call}"))
        .iter()
        .map(|failure| {
            (
                failure["provider"].as_str().unwrap_or_default().to_owned(),
                failure["kind"].as_str().unwrap_or_default().to_owned(),
                failure["count"].as_u64().unwrap_or(1),
            )
        })
        .collect()
}

/// `GET /api/calls/{id}` once the outcome is recorded.
pub(crate) async fn outcome(stack: &Stack, user: &User, call_id: &str) -> Value {
    stack
        .wait_for_outcome(&user.token, call_id, Duration::from_secs(90))
        .await
}

/// One value of one row, as text (NUMERIC and TIMESTAMPTZ included: cast in the query).
pub(crate) async fn sql_text(stack: &Stack, query: &str, params: &[&str]) -> Option<String> {
    let db = stack.db().await;
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let rows = db.query(query, &params).await.expect("query runs");
    rows.first().and_then(|row| row.get::<_, Option<String>>(0))
}

/// A count.
pub(crate) async fn sql_count(stack: &Stack, query: &str, params: &[&str]) -> i64 {
    let db = stack.db().await;
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    db.query_one(query, &params)
        .await
        .expect("count runs")
        .get::<_, i64>(0)
}

/// The app's live channel (`GET /api/live` with the bearer token): every event it received.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    events: Arc<Mutex<Vec<Value>>>,
}

impl Live {
    pub(crate) async fn open(stack: &Stack, user: &User) -> Live {
        let url = format!("{}/api/live", stack.worker_url.replacen("http", "ws", 1));
        let mut request = url.into_client_request().expect("live URL");
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {}", user.token)).expect("header"),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .unwrap_or_else(|e| panic!("live channel: {e}\n{}", stack.worker_log()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message
                    && let Ok(value) = serde_json::from_str::<Value>(text.as_str())
                {
                    sink.lock().expect("events").push(value);
                }
            }
        });
        Live { events }
    }

    /// The events of `kind` (`type`) about `call_id`, so far.
    pub(crate) fn of(&self, kind: &str, call_id: &str) -> Vec<Value> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .filter(|e| e["type"] == kind && e["call_id"] == call_id)
            .cloned()
            .collect()
    }

    pub(crate) fn all(&self) -> Vec<Value> {
        self.events.lock().expect("events").clone()
    }
}

/// The call's user-facing budget settings, through the API.
pub(crate) async fn set_budget(
    stack: &Stack,
    user: &User,
    per_call_cents: i64,
    monthly_cents: i64,
    auto_cutoff: bool,
) {
    let (status, body) = stack
        .json(
            Method::PUT,
            "/api/budget",
            Some(&user.token),
            Some(json!({
                "max_cost_per_call_cents": per_call_cents,
                "max_monthly_spend_cents": monthly_cents,
                "warn_at_percent": 75,
                "auto_cutoff": auto_cutoff,
            })),
        )
        .await;
    assert_eq!(status, 200, "PUT /api/budget: {body}");
}
