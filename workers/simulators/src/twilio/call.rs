//! Driving one call: progress, signed webhooks, answering machine detection, TwiML, the stream.
//!
//! A call runs as one task: `queued` → `ringing` → the scenario's outcome. Status callbacks go
//! through a per-call sender task that delivers them one at a time, in order (each awaited before
//! the next, as Twilio does), optionally twice or with `ringing` held back until after `answered`.
//! Every request to the app is form-encoded and carries `X-Twilio-Signature`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::phone::{self, PhoneEnd, PhoneParams};
use super::records::{AmdRecord, CallError, CallStatus, EndReason, StatusChange, WebhookRecord};
use super::scenario::{Outcome, Scenario};
use super::twiml::{self, Verb};
use super::{CallEntry, TwilioState};
use crate::clock;
use crate::codec;

/// Twilio: "HTTP retrieval failure" (TwiML fetch did not answer 200).
pub const ERR_HTTP_RETRIEVAL: u32 = 11200;

/// The `StatusCallbackEvent` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ProgressEvent {
    Initiated,
    Ringing,
    Answered,
    Completed,
}

impl ProgressEvent {
    pub(crate) fn parse(value: &str) -> Option<Self> {
        match value {
            "initiated" => Some(Self::Initiated),
            "ringing" => Some(Self::Ringing),
            "answered" => Some(Self::Answered),
            "completed" => Some(Self::Completed),
            _ => None,
        }
    }
}

/// A validated `Calls.json` request.
#[derive(Debug, Clone)]
pub(crate) struct CallRequest {
    pub(crate) to: String,
    pub(crate) from: String,
    pub(crate) url: String,
    pub(crate) method: String,
    pub(crate) status_callback: Option<String>,
    pub(crate) status_callback_method: String,
    pub(crate) events: BTreeSet<ProgressEvent>,
    pub(crate) timeout_s: u64,
    pub(crate) time_limit_s: u64,
    pub(crate) machine_detection: Option<String>,
    pub(crate) async_amd: bool,
    pub(crate) async_amd_url: Option<String>,
    pub(crate) async_amd_method: String,
}

/// Twilio's date format (RFC 2822).
pub(crate) fn rfc2822_now() -> String {
    chrono::Utc::now().to_rfc2822()
}

/// Sends one signed webhook and records it with the app's answer.
pub(crate) async fn send_webhook(
    state: &TwilioState,
    entry: &CallEntry,
    kind: &str,
    url: &str,
    method: &str,
    params: Vec<(String, String)>,
) -> Option<(u16, String)> {
    let token = state.config().auth_token;
    let is_get = method.eq_ignore_ascii_case("GET");
    let (target, signed_params) = if is_get {
        let query = serde_urlencoded::to_string(&params).unwrap_or_default();
        let separator = if url.contains('?') { '&' } else { '?' };
        (format!("{url}{separator}{query}"), Vec::new())
    } else {
        (url.to_owned(), params.clone())
    };
    let signature = super::signature::compute(&token, &target, &signed_params);
    let index = entry.update(|r| {
        r.webhooks.push(WebhookRecord {
            kind: kind.to_owned(),
            url: target.clone(),
            method: if is_get { "GET" } else { "POST" }.to_owned(),
            params: params.clone(),
            signature: signature.clone(),
            status: None,
            error: None,
            sent_at: clock::now_us(),
            answered_at: None,
        });
        r.webhooks.len() - 1
    });
    let request = if is_get {
        state.http.get(&target)
    } else {
        state
            .http
            .post(&target)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(&params).unwrap_or_default())
    };
    let result = request
        .header("X-Twilio-Signature", &signature)
        .send()
        .await;
    let outcome = match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            Ok((status, body))
        }
        Err(error) => Err(error.to_string()),
    };
    entry.update(|r| {
        if let Some(w) = r.webhooks.get_mut(index) {
            w.answered_at = Some(clock::now_us());
            match &outcome {
                Ok((status, _)) => w.status = Some(*status),
                Err(error) => w.error = Some(error.clone()),
            }
        }
    });
    outcome.ok()
}

struct Callbacks {
    tx: Option<mpsc::UnboundedSender<Vec<(String, String)>>>,
    task: Option<tokio::task::JoinHandle<()>>,
    sequence: u64,
    held: Option<Vec<(String, String)>>,
    reverse_late: bool,
}

impl Callbacks {
    fn start(
        state: Arc<TwilioState>,
        entry: Arc<CallEntry>,
        req: &CallRequest,
        scenario: &Scenario,
    ) -> Self {
        let Some(url) = req.status_callback.clone() else {
            return Self {
                tx: None,
                task: None,
                sequence: 0,
                held: None,
                reverse_late: false,
            };
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<(String, String)>>();
        let method = req.status_callback_method.clone();
        let times = if scenario.duplicate_callbacks { 2 } else { 1 };
        let task = tokio::spawn(async move {
            while let Some(params) = rx.recv().await {
                for _ in 0..times {
                    send_webhook(
                        &state,
                        &entry,
                        "status_callback",
                        &url,
                        &method,
                        params.clone(),
                    )
                    .await;
                }
            }
        });
        Self {
            tx: Some(tx),
            task: Some(task),
            sequence: 0,
            held: None,
            reverse_late: scenario.reverse_late_callbacks,
        }
    }

    fn enqueue(
        &mut self,
        event: ProgressEvent,
        mut params: Vec<(String, String)>,
        requested: &BTreeSet<ProgressEvent>,
    ) {
        let Some(tx) = &self.tx else { return };
        if event != ProgressEvent::Completed && !requested.contains(&event) {
            return;
        }
        params.push(("SequenceNumber".to_owned(), self.sequence.to_string()));
        params.push(("Timestamp".to_owned(), rfc2822_now()));
        params.push((
            "CallbackSource".to_owned(),
            "call-progress-events".to_owned(),
        ));
        self.sequence += 1;
        if event == ProgressEvent::Ringing && self.reverse_late {
            self.held = Some(params);
            return;
        }
        let _ = tx.send(params);
        if event == ProgressEvent::Answered || event == ProgressEvent::Completed {
            self.release();
        }
    }

    fn release(&mut self) {
        if let (Some(tx), Some(held)) = (&self.tx, self.held.take()) {
            let _ = tx.send(held);
        }
    }

    async fn drain(mut self) {
        self.release();
        self.tx = None;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Drives the call from `queued` to its end.
pub(crate) async fn drive(
    state: Arc<TwilioState>,
    entry: Arc<CallEntry>,
    req: CallRequest,
    scenario: Scenario,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = state.config();
    let sid = entry.snapshot().sid;
    let base = |status: CallStatus| -> Vec<(String, String)> {
        [
            ("AccountSid", config.account_sid.as_str()),
            ("ApiVersion", "2010-04-01"),
            ("CallSid", sid.as_str()),
            ("CallStatus", status.as_str()),
            ("Called", req.to.as_str()),
            ("Caller", req.from.as_str()),
            ("Direction", "outbound-api"),
            ("From", req.from.as_str()),
            ("To", req.to.as_str()),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
    };
    let mut callbacks = Callbacks::start(state.clone(), entry.clone(), &req, &scenario);
    let mut end_request = entry.end_request.subscribe();

    callbacks.enqueue(
        ProgressEvent::Initiated,
        base(CallStatus::Queued),
        &req.events,
    );

    // Pre-answer: a cancel ends the call as canceled.
    let outcome: Result<(), (CallStatus, EndReason)> = async {
        wait(
            &mut end_request,
            &mut shutdown,
            Duration::from_millis(config.ringing_delay_ms),
        )
        .await
        .map_err(|_| (CallStatus::Canceled, EndReason::Canceled))?;
        if scenario.outcome == Outcome::Failed {
            return Err((CallStatus::Failed, EndReason::Failed));
        }
        set_status(&entry, CallStatus::Ringing);
        callbacks.enqueue(
            ProgressEvent::Ringing,
            base(CallStatus::Ringing),
            &req.events,
        );
        let timeout_ms = req.timeout_s * 1000;
        let (ring_ms, result) = match scenario.outcome {
            Outcome::Busy => (
                scenario.ring_ms.min(timeout_ms),
                Err((CallStatus::Busy, EndReason::Busy)),
            ),
            Outcome::NoAnswer => (
                scenario.ring_ms.min(timeout_ms),
                Err((CallStatus::NoAnswer, EndReason::NoAnswer)),
            ),
            Outcome::Answer | Outcome::Machine | Outcome::Failed
                if scenario.ring_ms > timeout_ms =>
            {
                (timeout_ms, Err((CallStatus::NoAnswer, EndReason::NoAnswer)))
            }
            Outcome::Answer | Outcome::Machine | Outcome::Failed => (scenario.ring_ms, Ok(())),
        };
        wait(
            &mut end_request,
            &mut shutdown,
            Duration::from_millis(ring_ms),
        )
        .await
        .map_err(|_| (CallStatus::Canceled, EndReason::Canceled))?;
        result
    }
    .await;
    if let Err((status, reason)) = outcome {
        finish(&entry, callbacks, base(status), status, reason, &req.events).await;
        return;
    }

    // Answered.
    let answered_at = clock::now_us();
    entry.update(|r| {
        r.answered_at = Some(answered_at);
        r.start_time = Some(rfc2822_now());
    });
    set_status(&entry, CallStatus::InProgress);
    let limit = Duration::from_secs(req.time_limit_s);
    let limiter = {
        let entry = entry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            entry.end_request.send_if_modified(|r| {
                if r.is_none() {
                    *r = Some(EndReason::TimeLimit);
                    true
                } else {
                    false
                }
            });
        })
    };

    let machine = scenario.outcome == Outcome::Machine;
    let detect_end = req.machine_detection.as_deref() == Some("DetectMessageEnd");
    let (answered_by, amd_delay_ms) = if machine {
        if detect_end {
            let greeting = scenario
                .machine_greeting_ms
                .max(u64::from(codec::MIN_SPEECH_MS));
            ("machine_end_beep".to_owned(), greeting + 100 + 500)
        } else {
            ("machine_start".to_owned(), config.amd_decision_ms)
        }
    } else {
        (scenario.answered_by.clone(), config.amd_decision_ms)
    };
    let mut greeting_played = false;
    let mut twiml_params = base(CallStatus::InProgress);
    if req.machine_detection.is_some() {
        if req.async_amd {
            if let Some(url) = req.async_amd_url.clone() {
                let (state, entry, method, sid) = (
                    state.clone(),
                    entry.clone(),
                    req.async_amd_method.clone(),
                    sid.clone(),
                );
                let account_sid = config.account_sid.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(amd_delay_ms)).await;
                    if entry.snapshot().status != CallStatus::InProgress {
                        return;
                    }
                    entry.update(|r| {
                        r.answered_by = Some(answered_by.clone());
                        r.amd = Some(AmdRecord {
                            mode: "async".to_owned(),
                            answered_by: answered_by.clone(),
                            decided_at: clock::now_us(),
                        });
                    });
                    let params = vec![
                        ("CallSid".to_owned(), sid),
                        ("AccountSid".to_owned(), account_sid),
                        ("AnsweredBy".to_owned(), answered_by),
                        (
                            "MachineDetectionDuration".to_owned(),
                            amd_delay_ms.to_string(),
                        ),
                    ];
                    send_webhook(&state, &entry, "amd", &url, &method, params).await;
                });
            }
        } else {
            // Synchronous AMD holds the TwiML fetch until it decides.
            if wait(
                &mut end_request,
                &mut shutdown,
                Duration::from_millis(amd_delay_ms),
            )
            .await
            .is_err()
            {
                let reason = requested_reason(&end_request);
                limiter.abort();
                finish(
                    &entry,
                    callbacks,
                    base(CallStatus::Completed),
                    CallStatus::Completed,
                    reason,
                    &req.events,
                )
                .await;
                return;
            }
            greeting_played = machine && detect_end;
            entry.update(|r| {
                r.answered_by = Some(answered_by.clone());
                r.amd = Some(AmdRecord {
                    mode: "sync".to_owned(),
                    answered_by: answered_by.clone(),
                    decided_at: clock::now_us(),
                });
            });
            twiml_params.push(("AnsweredBy".to_owned(), answered_by.clone()));
        }
    }

    let fetched = send_webhook(&state, &entry, "twiml", &req.url, &req.method, twiml_params).await;
    callbacks.enqueue(
        ProgressEvent::Answered,
        base(CallStatus::InProgress),
        &req.events,
    );
    let verbs = match fetched {
        Some((200, body)) => twiml::parse(&body).map_err(|e| (e.code(), e.to_string())),
        Some((status, _)) => Err((
            ERR_HTTP_RETRIEVAL,
            format!("TwiML fetch answered HTTP {status}"),
        )),
        None => Err((
            ERR_HTTP_RETRIEVAL,
            "TwiML fetch failed (no HTTP answer)".to_owned(),
        )),
    };
    let verbs = match verbs {
        Ok(verbs) => verbs,
        Err((code, message)) => {
            entry.update(|r| {
                r.errors.push(CallError {
                    code,
                    message,
                    at: clock::now_us(),
                });
            });
            limiter.abort();
            finish(
                &entry,
                callbacks,
                base(CallStatus::Failed),
                CallStatus::Failed,
                EndReason::TwimlError,
                &req.events,
            )
            .await;
            return;
        }
    };

    let mut reason = EndReason::TwimlEnd;
    for verb in verbs {
        if end_request.borrow().is_some() {
            reason = requested_reason(&end_request);
            break;
        }
        match verb {
            Verb::Say { text } => {
                let ms = codec::duration_for(&text, config.ms_per_char);
                entry.update(|r| r.said.push(text));
                if wait(
                    &mut end_request,
                    &mut shutdown,
                    Duration::from_millis(u64::from(ms)),
                )
                .await
                .is_err()
                {
                    reason = requested_reason(&end_request);
                    break;
                }
            }
            Verb::Pause { seconds } => {
                if wait(
                    &mut end_request,
                    &mut shutdown,
                    Duration::from_secs(u64::from(seconds)),
                )
                .await
                .is_err()
                {
                    reason = requested_reason(&end_request);
                    break;
                }
            }
            Verb::Hangup => {
                reason = EndReason::TwimlHangup;
                break;
            }
            Verb::Unsupported { name } => entry.update(|r| r.unsupported_verbs.push(name)),
            Verb::Connect(stream) => {
                let stream_sid = format!("MZ{}", random_hex32());
                let params = PhoneParams {
                    stream: stream.clone(),
                    account_sid: config.account_sid.clone(),
                    auth_token: config.auth_token.clone(),
                    call_sid: sid.clone(),
                    stream_sid: stream_sid.clone(),
                    script: scenario.script.clone(),
                    hangup: scenario.hangup,
                    max_wait_ms: scenario.max_wait_ms,
                    ms_per_char: config.ms_per_char,
                    jitter_buffer_ms: config.jitter_buffer_ms,
                    machine_greeting_ms: machine.then_some(if greeting_played {
                        0
                    } else {
                        scenario.machine_greeting_ms
                    }),
                };
                stream_status(&state, &entry, &stream, &stream_sid, &sid, "stream-started");
                let end = phone::run(&entry, &state.timings, &params, &mut shutdown).await;
                stream_status(&state, &entry, &stream, &stream_sid, &sid, "stream-stopped");
                match end {
                    PhoneEnd::Caller => {
                        reason = EndReason::CallerHangup;
                        break;
                    }
                    PhoneEnd::Requested(r) => {
                        reason = r;
                        break;
                    }
                    // Twilio goes on with the next verb after <Connect>.
                    PhoneEnd::AppClosed | PhoneEnd::ConnectFailed(_) => {}
                }
            }
        }
    }
    limiter.abort();
    finish(
        &entry,
        callbacks,
        base(CallStatus::Completed),
        CallStatus::Completed,
        reason,
        &req.events,
    )
    .await;
}

fn requested_reason(end_request: &watch::Receiver<Option<EndReason>>) -> EndReason {
    (*end_request.borrow()).unwrap_or(EndReason::SimulatorReset)
}

/// `<Stream statusCallback>`: sent in the background (it must not delay the media).
fn stream_status(
    state: &Arc<TwilioState>,
    entry: &Arc<CallEntry>,
    stream: &twiml::Stream,
    stream_sid: &str,
    call_sid: &str,
    event: &str,
) {
    let Some(url) = stream.status_callback.clone() else {
        return;
    };
    let method = stream
        .status_callback_method
        .clone()
        .unwrap_or_else(|| "POST".to_owned());
    let params = vec![
        ("AccountSid".to_owned(), state.config().account_sid),
        ("CallSid".to_owned(), call_sid.to_owned()),
        ("StreamSid".to_owned(), stream_sid.to_owned()),
        (
            "StreamName".to_owned(),
            stream.name.clone().unwrap_or_else(|| stream_sid.to_owned()),
        ),
        ("StreamEvent".to_owned(), event.to_owned()),
        ("Timestamp".to_owned(), chrono::Utc::now().to_rfc3339()),
    ];
    let (state, entry) = (state.clone(), entry.clone());
    tokio::spawn(async move {
        send_webhook(&state, &entry, "stream_status", &url, &method, params).await;
    });
}

/// Sleeps `duration` unless the call is asked to end (or the simulator shuts down) first.
async fn wait(
    end_request: &mut watch::Receiver<Option<EndReason>>,
    shutdown: &mut watch::Receiver<bool>,
    duration: Duration,
) -> Result<(), ()> {
    if end_request.borrow().is_some() {
        return Err(());
    }
    tokio::select! {
        () = tokio::time::sleep(duration) => Ok(()),
        () = async { let _ = end_request.wait_for(Option::is_some).await.map(|_| ()); } => Err(()),
        () = crate::sync::until_true(shutdown) => Err(()),
    }
}

pub(crate) fn set_status(entry: &CallEntry, status: CallStatus) {
    entry.update(|r| {
        r.status = status;
        r.date_updated = rfc2822_now();
        r.status_history.push(StatusChange {
            status,
            at: clock::now_us(),
        });
    });
    entry.status.send_replace(status);
}

async fn finish(
    entry: &CallEntry,
    mut callbacks: Callbacks,
    mut params: Vec<(String, String)>,
    status: CallStatus,
    reason: EndReason,
    events: &BTreeSet<ProgressEvent>,
) {
    let now = clock::now_us();
    let duration_s = entry.update(|r| {
        let duration_s = r
            .answered_at
            .map_or(0, |a| (now.saturating_sub(a)).div_ceil(1_000_000));
        r.ended_at = Some(now);
        r.end_time = Some(rfc2822_now());
        r.duration_s = Some(duration_s);
        r.end_reason = Some(reason);
        duration_s
    });
    set_status(entry, status);
    params.push(("CallDuration".to_owned(), duration_s.to_string()));
    params.push(("Duration".to_owned(), duration_s.div_ceil(60).to_string()));
    callbacks.enqueue(ProgressEvent::Completed, params, events);
    callbacks.drain().await;
    entry.ended.send_replace(true);
}

/// 32 lowercase hex digits, the random part of Twilio sids.
pub(crate) fn random_hex32() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}
