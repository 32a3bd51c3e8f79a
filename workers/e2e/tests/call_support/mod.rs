//! Helpers of the call tests (`call_*.rs`, `live_channel.rs`): placing calls with their headers,
//! waiting for a call's status, Twilio scenarios that end quickly, and hand-signed Twilio
//! requests.
//!
//! Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use callmeback_e2e::Stack;
use callmeback_simulators::SimConfig;
use callmeback_simulators::twilio::records::CallRecord;
use callmeback_simulators::twilio::{Outcome, Scenario};
use reqwest::Method;
use serde_json::{Value, json};

/// An answer of the Worker: status, `Retry-After` (if any) and the JSON body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<String>,
    pub(crate) body: Value,
}

impl Answer {
    /// The error code of an error body.
    pub(crate) fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// The call of a 202 body.
    pub(crate) fn call_id(&self) -> String {
        self.body["call"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no call in {}: {}", self.status, self.body))
            .to_owned()
    }
}

/// `POST /api/calls` with an optional bearer token and `Idempotency-Key`.
pub(crate) async fn post_call(
    stack: &Stack,
    token: Option<&str>,
    body: Value,
    idempotency_key: Option<&str>,
) -> Answer {
    let mut request = stack
        .http
        .post(format!("{}/api/calls", stack.worker_url))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.expect("request reaches the Worker");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.expect("body readable");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| {
            panic!(
                "POST /api/calls answered {status} with non-JSON: {text}\n{}",
                stack.worker_log()
            )
        })
    };
    Answer {
        status,
        retry_after,
        body,
    }
}

/// Places a call to `phone` with persona `brad` and expects 202.
pub(crate) async fn place(stack: &Stack, token: &str, phone: &str) -> String {
    let answer = post_call(
        stack,
        Some(token),
        json!({"persona_id": "brad", "phone_number": phone}),
        None,
    )
    .await;
    assert_eq!(
        answer.status,
        202,
        "{}\n{}",
        answer.body,
        stack.worker_log()
    );
    answer.call_id()
}

/// `GET /api/calls/{id}` → the call.
pub(crate) async fn get_call(stack: &Stack, token: &str, call_id: &str) -> Value {
    let (status, body) = stack
        .json(
            Method::GET,
            &format!("/api/calls/{call_id}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "get call: {body}");
    body["call"].clone()
}

/// Polls the call until `done(call)` holds (or fails the test after `timeout`).
pub(crate) async fn wait_for_call(
    stack: &Stack,
    token: &str,
    call_id: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let call = get_call(stack, token, call_id).await;
        if done(&call) {
            return call;
        }
        assert!(
            Instant::now() < deadline,
            "call {call_id}: not {what} within {timeout:?}: {call}\nworker log:\n{}",
            stack.worker_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the call's outcome is recorded (`finalized_at` set in the database) and returns
/// the call as the API shows it.
pub(crate) async fn wait_until_final(
    stack: &Stack,
    token: &str,
    call_id: &str,
    timeout: Duration,
) -> Value {
    let db = stack.db().await;
    let deadline = Instant::now() + timeout;
    loop {
        let row = db
            .query_one(
                "SELECT finalized_at IS NOT NULL AS done FROM calls WHERE id = $1",
                &[&call_id],
            )
            .await
            .expect("call row");
        if row.get::<_, bool>("done") {
            return get_call(stack, token, call_id).await;
        }
        assert!(
            Instant::now() < deadline,
            "call {call_id}: outcome not recorded within {timeout:?}: {}\nworker log:\n{}",
            get_call(stack, token, call_id).await,
            stack.worker_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The simulated callees speak fast and Twilio's steps take little time.
pub(crate) fn fast_twilio(stack: &Stack) {
    let twilio = stack.sims.twilio();
    let mut config = twilio.config();
    config.ms_per_char = 15;
    config.ringing_delay_ms = 50;
    config.amd_decision_ms = 300;
    twilio.set_config(config);
}

/// A number that rings briefly and ends with `outcome` (busy, no answer, failed).
pub(crate) fn unanswered(outcome: Outcome) -> Scenario {
    Scenario {
        outcome,
        ring_ms: 200,
        ..Scenario::default()
    }
}

/// A callee who answers, says one short line and hangs up soon after the reply.
pub(crate) fn short_conversation() -> Scenario {
    Scenario {
        ring_ms: 200,
        script: vec![callmeback_simulators::twilio::Line {
            say: "Hi, all good here, bye.".to_owned(),
            ..Default::default()
        }],
        hangup: callmeback_simulators::twilio::Hangup::Caller { after_ms: 300 },
        ..Scenario::default()
    }
}

/// The calls the Twilio simulator accepted for `number`.
pub(crate) fn sim_calls_to(stack: &Stack, number: &str) -> Vec<CallRecord> {
    stack
        .sims
        .twilio()
        .calls()
        .into_iter()
        .filter(|call| call.to == number)
        .collect()
}

/// `GET /api/rate-limit?phone_number=` → (status, body).
pub(crate) async fn rate_limit_status(stack: &Stack, token: &str, phone: &str) -> Value {
    let encoded = phone.replace('+', "%2B");
    let (status, body) = stack
        .json(
            Method::GET,
            &format!("/api/rate-limit?phone_number={encoded}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "rate-limit status: {body}");
    body
}

/// The auth token the Twilio simulator signs with (and the Worker checks against).
pub(crate) fn twilio_auth_token() -> String {
    SimConfig::default().twilio.auth_token
}

/// The parameters of a status callback, as Twilio sends them.
pub(crate) fn status_params(
    call_sid: &str,
    status: &str,
    duration: Option<u32>,
) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = [
        ("AccountSid", SimConfig::default().twilio.account_sid),
        ("ApiVersion", "2010-04-01".to_owned()),
        ("CallSid", call_sid.to_owned()),
        ("CallStatus", status.to_owned()),
        ("Direction", "outbound-api".to_owned()),
        ("From", callmeback_e2e::TEST_FROM_NUMBER.to_owned()),
        ("To", "+15005550199".to_owned()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    if let Some(seconds) = duration {
        params.push(("CallDuration".to_owned(), seconds.to_string()));
    }
    params
}

/// Posts a Twilio-style form to `path`, signed over `signed_url` and `signed_params` (pass the
/// request's own to sign correctly; `None` sends no signature header). Returns (status, body).
pub(crate) async fn post_twilio(
    stack: &Stack,
    path: &str,
    params: &[(String, String)],
    signature: Option<String>,
) -> (u16, String) {
    let mut request = stack
        .http
        .post(format!("{}{path}", stack.worker_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(params).expect("form encodes"));
    if let Some(signature) = signature {
        request = request.header("x-twilio-signature", signature);
    }
    let response = request.send().await.expect("request reaches the Worker");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Twilio's signature of a request to `url` with `params`.
pub(crate) fn sign(url: &str, params: &[(String, String)]) -> String {
    callmeback_providers::twilio::signature::compute(&twilio_auth_token(), url, params)
}

/// Posts a correctly signed Twilio form to `path`.
pub(crate) async fn post_signed(
    stack: &Stack,
    path: &str,
    params: &[(String, String)],
) -> (u16, String) {
    let signature = sign(&format!("{}{path}", stack.worker_url), params);
    post_twilio(stack, path, params, Some(signature)).await
}

/// The call's row fields that must not change once it is recorded.
pub(crate) async fn recorded_state(stack: &Stack, call_id: &str) -> Value {
    let row = stack
        .db()
        .await
        .query_one(
            "SELECT status, duration_seconds, credits_used, error_message, \
                    finalized_at::text AS finalized_at, updated_at::text AS updated_at, \
                    (SELECT count(*) FROM call_logs l WHERE l.call_id = c.id) AS logs, \
                    (SELECT count(*) FROM call_cost_breakdowns b WHERE b.call_id = c.id) AS breakdowns, \
                    (SELECT count(*) FROM credit_transactions t WHERE t.call_id = c.id) AS charges \
             FROM calls c WHERE id = $1",
            &[&call_id],
        )
        .await
        .expect("call row");
    json!({
        "status": row.get::<_, String>("status"),
        "duration_seconds": row.get::<_, Option<i32>>("duration_seconds"),
        "credits_used": row.get::<_, Option<i32>>("credits_used"),
        "error_message": row.get::<_, Option<String>>("error_message"),
        "finalized_at": row.get::<_, Option<String>>("finalized_at"),
        "updated_at": row.get::<_, Option<String>>("updated_at"),
        "logs": row.get::<_, i64>("logs"),
        "breakdowns": row.get::<_, i64>("breakdowns"),
        "charges": row.get::<_, i64>("charges"),
    })
}
