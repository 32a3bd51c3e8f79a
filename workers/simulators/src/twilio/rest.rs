//! The Calls REST API: create, fetch and update (hang up / cancel) calls.
//!
//! Paths are Twilio's (`/2010-04-01/Accounts/{AccountSid}/Calls.json`, `…/Calls/{CallSid}.json`),
//! authenticated with HTTP Basic `AccountSid:AuthToken`. Errors use Twilio's body
//! `{"code","message","more_info","status"}`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::call::{self, CallRequest, ProgressEvent, rfc2822_now};
use super::records::{CallRecord, CallStatus, EndReason, StatusChange};
use super::{CallEntry, TwilioState};
use crate::AppState;
use crate::clock;
use crate::sync::lock;

/// A Twilio API error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TwilioError {
    pub status: u16,
    pub code: u32,
    pub message: String,
}

impl TwilioError {
    fn new(status: u16, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn authenticate() -> Self {
        Self::new(401, 20003, "Authenticate")
    }

    fn not_found(path: &str) -> Self {
        Self::new(
            404,
            20404,
            format!("The requested resource {path} was not found"),
        )
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, 20001, message)
    }
}

impl IntoResponse for TwilioError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = json!({
            "code": self.code,
            "message": self.message,
            "more_info": format!("https://www.twilio.com/docs/errors/{}", self.code),
            "status": self.status,
        });
        (status, Json(body)).into_response()
    }
}

fn authenticate(
    state: &TwilioState,
    headers: &HeaderMap,
    path_account: &str,
) -> Result<(), TwilioError> {
    let config = state.config();
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let expected = format!("{}:{}", config.account_sid, config.auth_token);
    match given {
        Some(given) if given == expected && path_account == config.account_sid => Ok(()),
        _ => Err(TwilioError::authenticate()),
    }
}

fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn method_param(params: &[(String, String)], name: &str) -> Result<String, TwilioError> {
    match param(params, name).map(str::to_ascii_uppercase).as_deref() {
        None | Some("") | Some("POST") => Ok("POST".to_owned()),
        Some("GET") => Ok("GET".to_owned()),
        Some(other) => Err(TwilioError::invalid(format!(
            "{name} must be GET or POST, got {other}"
        ))),
    }
}

fn bounded(
    params: &[(String, String)],
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, TwilioError> {
    match param(params, name) {
        None | Some("") => Ok(default),
        Some(raw) => raw
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|v| range.contains(v))
            .ok_or_else(|| {
                TwilioError::invalid(format!(
                    "{name} must be an integer in {range:?}, got {raw:?}"
                ))
            }),
    }
}

fn parse_form(headers: &HeaderMap, body: &[u8]) -> Vec<(String, String)> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    // Twilio reads only form bodies; anything else carries no parameters.
    if is_form {
        serde_urlencoded::from_bytes(body).unwrap_or_default()
    } else {
        Vec::new()
    }
}

fn validate(params: &[(String, String)]) -> Result<CallRequest, TwilioError> {
    let to = param(params, "To").unwrap_or_default();
    if to.is_empty() {
        return Err(TwilioError::new(400, 21201, "No 'To' number is specified"));
    }
    if !is_e164(to) {
        return Err(TwilioError::new(
            400,
            21211,
            format!("Invalid 'To' Phone Number: {to}"),
        ));
    }
    let from = param(params, "From").unwrap_or_default();
    if from.is_empty() {
        return Err(TwilioError::new(
            400,
            21603,
            "A 'From' phone number is required.",
        ));
    }
    if !is_e164(from) {
        return Err(TwilioError::new(
            400,
            21212,
            format!("Invalid 'From' Phone Number: {from}"),
        ));
    }
    let url = param(params, "Url").unwrap_or_default();
    if url.is_empty() {
        return Err(TwilioError::new(400, 21205, "Url parameter is required."));
    }
    if !is_http_url(url) {
        return Err(TwilioError::new(
            400,
            21205,
            format!("Url is not a valid URL: {url}"),
        ));
    }
    let status_callback = param(params, "StatusCallback").filter(|u| !u.is_empty());
    if let Some(cb) = status_callback
        && !is_http_url(cb)
    {
        return Err(TwilioError::invalid(format!(
            "StatusCallback is not a valid URL: {cb}"
        )));
    }
    let mut events = BTreeSet::new();
    for (name, value) in params {
        if name == "StatusCallbackEvent" {
            // Twilio also accepts space-separated values in one parameter.
            for value in value.split_whitespace() {
                let event = ProgressEvent::parse(value)
                    .ok_or_else(|| TwilioError::invalid(format!("StatusCallbackEvent {value:?} is not one of initiated, ringing, answered, completed")))?;
                events.insert(event);
            }
        }
    }
    events.insert(ProgressEvent::Completed);
    let machine_detection = match param(params, "MachineDetection") {
        None | Some("") => None,
        Some(m @ ("Enable" | "DetectMessageEnd")) => Some(m.to_owned()),
        Some(other) => {
            return Err(TwilioError::invalid(format!(
                "MachineDetection must be Enable or DetectMessageEnd, got {other:?}"
            )));
        }
    };
    let async_amd = match param(params, "AsyncAmd") {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(TwilioError::invalid(format!(
                "AsyncAmd must be true or false, got {other:?}"
            )));
        }
    };
    Ok(CallRequest {
        to: to.to_owned(),
        from: from.to_owned(),
        url: url.to_owned(),
        method: method_param(params, "Method")?,
        status_callback: status_callback.map(str::to_owned),
        status_callback_method: method_param(params, "StatusCallbackMethod")?,
        events,
        timeout_s: bounded(params, "Timeout", 60, 1..=600)?,
        time_limit_s: bounded(params, "TimeLimit", 14_400, 1..=86_400)?,
        machine_detection,
        async_amd,
        async_amd_url: param(params, "AsyncAmdStatusCallback")
            .filter(|u| !u.is_empty())
            .map(str::to_owned),
        async_amd_method: method_param(params, "AsyncAmdStatusCallbackMethod")?,
    })
}

/// The Call resource as Twilio serialises it.
pub fn call_json(record: &CallRecord) -> Value {
    let uri = format!(
        "/2010-04-01/Accounts/{}/Calls/{}",
        record.account_sid, record.sid
    );
    json!({
        "sid": record.sid,
        "account_sid": record.account_sid,
        "parent_call_sid": null,
        "to": record.to,
        "to_formatted": record.to,
        "from": record.from,
        "from_formatted": record.from,
        "phone_number_sid": null,
        "status": record.status.as_str(),
        "start_time": record.start_time,
        "end_time": record.end_time,
        "duration": record.duration_s.map(|d| d.to_string()),
        "price": null,
        "price_unit": "USD",
        "direction": "outbound-api",
        "answered_by": record.answered_by,
        "api_version": "2010-04-01",
        "forwarded_from": null,
        "group_sid": null,
        "caller_name": null,
        "queue_time": "0",
        "trunk_sid": null,
        "annotation": null,
        "date_created": record.date_created,
        "date_updated": record.date_updated,
        "uri": format!("{uri}.json"),
        "subresource_uris": {
            "notifications": format!("{uri}/Notifications.json"),
            "recordings": format!("{uri}/Recordings.json"),
            "streams": format!("{uri}/Streams.json"),
            "events": format!("{uri}/Events.json"),
        },
    })
}

/// `POST /2010-04-01/Accounts/{AccountSid}/Calls.json`
pub(crate) async fn create_call(
    State(app): State<AppState>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, TwilioError> {
    let state = &app.twilio;
    authenticate(state, &headers, &account)?;
    let params = parse_form(&headers, &body);
    let req = validate(&params)?;
    let scenario = state.scenario_for(&req.to);
    if let Some(error) = &scenario.rest_error {
        return Err(TwilioError::new(
            error.status,
            error.code,
            error.message.clone(),
        ));
    }
    let now = rfc2822_now();
    let record = CallRecord {
        sid: format!("CA{}", call::random_hex32()),
        account_sid: account,
        to: req.to.clone(),
        from: req.from.clone(),
        request: params,
        status: CallStatus::Queued,
        status_history: vec![StatusChange {
            status: CallStatus::Queued,
            at: clock::now_us(),
        }],
        answered_by: None,
        date_created: now.clone(),
        date_updated: now,
        start_time: None,
        end_time: None,
        answered_at: None,
        ended_at: None,
        duration_s: None,
        webhooks: Vec::new(),
        amd: None,
        said: Vec::new(),
        unsupported_verbs: Vec::new(),
        errors: Vec::new(),
        stream: None,
        end_reason: None,
    };
    let body = call_json(&record);
    let entry = Arc::new(CallEntry {
        record: Mutex::new(record),
        end_request: watch::channel(None).0,
        status: watch::channel(CallStatus::Queued).0,
        ended: watch::channel(false).0,
    });
    lock(&state.calls).push(entry.clone());
    let shutdown = app.shutdown.clone();
    state
        .tasks
        .spawn(call::drive(state.clone(), entry, req, scenario, shutdown));
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn call_sid_from(file: &str) -> Option<&str> {
    file.strip_suffix(".json")
}

/// `GET /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`
pub(crate) async fn get_call(
    State(app): State<AppState>,
    Path((account, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, TwilioError> {
    authenticate(&app.twilio, &headers, &account)?;
    let sid = call_sid_from(&file).ok_or_else(|| TwilioError::not_found(&file))?;
    let entry = app
        .twilio
        .find(sid)
        .ok_or_else(|| TwilioError::not_found(&format!("/Calls/{file}")))?;
    Ok(Json(call_json(&entry.snapshot())).into_response())
}

/// `POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json` with `Status=completed|canceled`.
pub(crate) async fn update_call(
    State(app): State<AppState>,
    Path((account, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, TwilioError> {
    authenticate(&app.twilio, &headers, &account)?;
    let sid = call_sid_from(&file).ok_or_else(|| TwilioError::not_found(&file))?;
    let entry = app
        .twilio
        .find(sid)
        .ok_or_else(|| TwilioError::not_found(&format!("/Calls/{file}")))?;
    let params = parse_form(&headers, &body);
    let requested = match param(&params, "Status") {
        Some("completed") => Some(true),
        Some("canceled") => Some(false),
        None | Some("") => None,
        Some(other) => {
            return Err(TwilioError::invalid(format!(
                "Status must be completed or canceled, got {other:?}"
            )));
        }
    };
    let status = entry.snapshot().status;
    // A call that already ended answers unchanged, as Twilio does.
    if let Some(completed) = requested
        && !status.is_terminal()
    {
        let reason = match status {
            CallStatus::Queued | CallStatus::Ringing => Some(EndReason::Canceled),
            // `canceled` has no effect on a call in progress.
            _ if completed => Some(EndReason::AppHangup),
            _ => None,
        };
        if let Some(reason) = reason {
            entry.end_request.send_if_modified(|r| {
                if r.is_none() {
                    *r = Some(reason);
                    true
                } else {
                    false
                }
            });
            // Answer once the hang-up took effect, so the body shows the final status.
            let mut watcher = entry.status.subscribe();
            let _ = tokio::time::timeout(
                Duration::from_secs(3),
                watcher.wait_for(|s| s.is_terminal()),
            )
            .await;
        }
    }
    Ok(Json(call_json(&entry.snapshot())).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn e164() {
        assert!(is_e164("+14155550123"));
        assert!(!is_e164("14155550123"));
        assert!(!is_e164("+0123"));
        assert!(!is_e164("+1415555012a"));
        assert!(!is_e164("+1234567890123456"));
    }

    #[test]
    fn validation_codes() {
        let code = |pairs: &[(&str, &str)]| validate(&p(pairs)).err().map(|e| e.code);
        assert_eq!(code(&[]), Some(21201));
        assert_eq!(code(&[("To", "555")]), Some(21211));
        assert_eq!(code(&[("To", "+15550001111")]), Some(21603));
        assert_eq!(
            code(&[("To", "+15550001111"), ("From", "abc")]),
            Some(21212)
        );
        assert_eq!(
            code(&[("To", "+15550001111"), ("From", "+15550002222")]),
            Some(21205)
        );
        let ok = [
            ("To", "+15550001111"),
            ("From", "+15550002222"),
            ("Url", "http://a.test/t"),
        ];
        assert_eq!(code(&ok), None);
        let mut with = ok.to_vec();
        with.push(("Timeout", "601"));
        assert_eq!(code(&with), Some(20001));
        let mut events = ok.to_vec();
        events.extend([
            ("StatusCallbackEvent", "ringing"),
            ("StatusCallbackEvent", "answered"),
            ("Bogus", "1"),
        ]);
        let req = validate(&p(&events)).expect("valid");
        assert_eq!(
            req.events.into_iter().collect::<Vec<_>>(),
            vec![
                ProgressEvent::Ringing,
                ProgressEvent::Answered,
                ProgressEvent::Completed
            ]
        );
        assert_eq!(req.timeout_s, 60);
        assert_eq!(req.time_limit_s, 14_400);
    }
}
