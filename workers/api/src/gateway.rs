//! The Worker's client for db-gateway: signed calls of named operations, with a bounded wait.
//!
//! Each call is one HTTPS request signed per RFC 9421 (`callmeback-signing`): the gateway checks
//! the key, the body digest, the clock and a fresh nonce. A call that does not finish within
//! `GATEWAY_TIMEOUT_MS` is aborted, so a hung gateway turns into a quick 503, never a hung route.

use std::time::Duration;

use callmeback_gateway_api::{
    BATCH_PATH, BatchRequest, BatchResponse, ErrorBody, OP_PATH, OpCall, OpResult,
};
use futures_util::future::{Either, select};
use serde::Serialize;
use serde::de::DeserializeOwned;
use worker::{AbortController, Delay, Env, Fetch, Headers, Method, Request, RequestInit};

use crate::config::{Config, ConfigError, GatewayConfig};

/// Why a gateway call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayError {
    /// No answer within the timeout, or the connection failed.
    Unreachable(String),
    /// The gateway answered with an error body (stable `code`, HTTP status).
    Rejected {
        status: u16,
        code: String,
        message: String,
        op_index: Option<usize>,
    },
    /// The gateway answered something that is not the contract (a proxy error page, say).
    BadResponse(u16),
}

impl GatewayError {
    /// The gateway's error code, if it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A configured client; cheap to build per request.
#[derive(Debug)]
pub struct Gateway {
    config: GatewayConfig,
    request_id: String,
}

impl Gateway {
    /// A client with the given configuration; `request_id` travels with every call.
    pub fn new(config: &GatewayConfig, request_id: String) -> Self {
        Self {
            config: config.clone(),
            request_id,
        }
    }

    /// A client from the isolate's [`Config`], for code without a request context (a Durable
    /// Object, a scheduled handler).
    pub fn from_env(env: &Env, request_id: String) -> Result<Self, ConfigError> {
        Ok(Self::new(Config::get(env).gateway.get()?, request_id))
    }

    /// Calls one operation.
    pub async fn call(&self, call: &OpCall) -> Result<OpResult, GatewayError> {
        self.post(OP_PATH, call).await
    }

    /// Runs several operations in one transaction (all or nothing).
    pub async fn batch(&self, ops: Vec<OpCall>) -> Result<BatchResponse, GatewayError> {
        self.post(BATCH_PATH, &BatchRequest { ops }).await
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, GatewayError> {
        let body = serde_json::to_vec(body).map_err(|_| GatewayError::BadResponse(0))?;
        let url = format!("{}{path}", self.config.base_url);
        let created = crate::time::now_secs();
        let nonce = random_nonce();
        let signed = callmeback_signing::sign_request(
            &self.config.key,
            "POST",
            &url,
            &body,
            created,
            &nonce,
        );

        let headers = Headers::new();
        let set = |name: &str, value: &str| {
            headers
                .set(name, value)
                .map_err(|e| GatewayError::Unreachable(e.to_string()))
        };
        set("content-type", "application/json")?;
        set("content-digest", &signed.content_digest)?;
        set("signature-input", &signed.signature_input)?;
        set("signature", &signed.signature)?;
        set(callmeback_gateway_api::REQUEST_ID_HEADER, &self.request_id)?;

        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_headers(headers)
            .with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
        let request = Request::new_with_init(&url, &init)
            .map_err(|e| GatewayError::Unreachable(e.to_string()))?;

        let controller = AbortController::default();
        let signal = controller.signal();
        let fetch = Fetch::Request(request);
        let send = fetch.send_with_signal(&signal);
        let timeout = Delay::from(Duration::from_millis(u64::from(self.config.timeout_ms)));
        let mut response = match select(Box::pin(send), timeout).await {
            Either::Left((result, _)) => {
                result.map_err(|e| GatewayError::Unreachable(e.to_string()))?
            }
            Either::Right(((), _)) => {
                controller.abort();
                return Err(GatewayError::Unreachable(format!(
                    "no answer within {} ms",
                    self.config.timeout_ms
                )));
            }
        };

        let status = response.status_code();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| GatewayError::Unreachable(e.to_string()))?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|_| GatewayError::BadResponse(status));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(ErrorBody { error }) => Err(GatewayError::Rejected {
                status,
                code: error.code,
                message: error.message,
                op_index: error.op_index,
            }),
            Err(_) => Err(GatewayError::BadResponse(status)),
        }
    }
}

/// 128 random bits, hex: unique per request so the gateway can refuse replays.
pub fn random_nonce() -> String {
    let mut bytes = [0u8; 16];
    // Web Crypto's getRandomValues does not fail for 16 bytes; a failure would leave zeros, which
    // the gateway's replay check then refuses on reuse rather than accepting silently.
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}
