//! Twilio's REST API from the Worker: place a call, end a call.
//!
//! The wire format (form bodies, resources, errors) is `callmeback_providers::twilio::rest`; this
//! module only sends it. Requests use HTTP Basic auth (`AccountSid:AuthToken`) against
//! `TWILIO_API_BASE_URL` (`https://api.twilio.com` in production, the local simulator in
//! development and tests) and are bounded in time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use callmeback_providers::twilio::rest::{self, CallResource, CreateCall, TwilioError};

use crate::config::TelephonyConfig;
use crate::outbound::{self, OutboundError};

/// Twilio answers within a second or two; past this the attempt counts as failed.
const REST_TIMEOUT_MS: u64 = 10_000;

/// Why a Twilio request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TelephonyError {
    /// Twilio refused the request; the error says why in words safe to store.
    Refused { status: u16, error: TwilioError },
    /// No answer, or an answer that is not Twilio's.
    Unreachable(String),
}

impl TelephonyError {
    /// A sentence for `calls.error_message` (no phone numbers, no secrets).
    pub fn readable(&self) -> String {
        match self {
            TelephonyError::Refused { error, .. } => error.readable(),
            TelephonyError::Unreachable(_) => {
                "the telephony provider could not be reached".to_owned()
            }
        }
    }
}

fn basic_auth(config: &TelephonyConfig) -> String {
    let credentials = format!("{}:{}", config.account_sid, config.auth_token);
    format!("Basic {}", STANDARD.encode(credentials))
}

async fn post_form<T: serde::de::DeserializeOwned>(
    config: &TelephonyConfig,
    path: &str,
    form: String,
) -> Result<T, TelephonyError> {
    let url = format!("{}{path}", config.api_base);
    let authorization = basic_auth(config);
    let request = outbound::post(
        &url,
        &[
            ("authorization", &authorization),
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", "application/json"),
        ],
        form,
    )
    .map_err(unreachable)?;
    let mut response = outbound::send_bounded(request, REST_TIMEOUT_MS)
        .await
        .map_err(unreachable)?;
    let status = response.status_code();
    let body = response
        .bytes()
        .await
        .map_err(|e| TelephonyError::Unreachable(e.to_string()))?;
    if (200..300).contains(&status) {
        return serde_json::from_slice(&body)
            .map_err(|_| TelephonyError::Unreachable(format!("unreadable {status} answer")));
    }
    match serde_json::from_slice::<TwilioError>(&body) {
        Ok(error) => Err(TelephonyError::Refused { status, error }),
        Err(_) => Err(TelephonyError::Unreachable(format!(
            "status {status} without a Twilio error"
        ))),
    }
}

fn unreachable(error: OutboundError) -> TelephonyError {
    TelephonyError::Unreachable(error.to_string())
}

/// `POST /2010-04-01/Accounts/{sid}/Calls.json`.
pub async fn create_call(
    config: &TelephonyConfig,
    call: &CreateCall<'_>,
) -> Result<CallResource, TelephonyError> {
    post_form(
        config,
        &rest::calls_path(&config.account_sid),
        rest::create_call_form(call),
    )
    .await
}

/// Ends a call (`Status=completed`). A call that already ended is not an error.
pub async fn hang_up(config: &TelephonyConfig, call_sid: &str) -> Result<(), TelephonyError> {
    match post_form::<CallResource>(
        config,
        &rest::call_path(&config.account_sid, call_sid),
        rest::hang_up_form(),
    )
    .await
    {
        Ok(_) => Ok(()),
        // 20404: no such call (it ended and was archived) — nothing left to end.
        Err(TelephonyError::Refused { error, .. }) if error.code == Some(20404) => Ok(()),
        Err(other) => Err(other),
    }
}
