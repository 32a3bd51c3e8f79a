//! Per-request context: bindings, request id, client address, and helpers every handler needs.

use std::rc::Rc;

use serde::de::DeserializeOwned;
use worker::{Env, Request};

use crate::config::Config;
use crate::error::ApiError;
use crate::gateway::Gateway;

/// Largest JSON body a route accepts; larger requests get 413 before anything is parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug)]
pub struct RequestCtx {
    pub env: Env,
    /// The isolate's configuration (read once, shared by every request).
    pub config: Rc<Config>,
    pub request_id: String,
    /// The client's address as Cloudflare reports it (`CF-Connecting-IP`), for rate limits and
    /// the audit log. Locally wrangler sets it to the loopback address.
    pub client_ip: String,
}

impl RequestCtx {
    pub fn new(env: Env, req: &Request, request_id: String) -> Self {
        let client_ip = req
            .headers()
            .get("cf-connecting-ip")
            .ok()
            .flatten()
            .filter(|ip| ip.len() <= 64)
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            config: Config::get(&env),
            env,
            request_id,
            client_ip,
        }
    }

    /// A gateway client for this request.
    pub fn gateway(&self) -> Result<Gateway, ApiError> {
        Ok(Gateway::new(
            self.config.gateway.get()?,
            self.request_id.clone(),
        ))
    }

    /// Unix time in seconds ([`crate::time::now_secs`]).
    pub fn now_secs(&self) -> i64 {
        crate::time::now_secs()
    }
}

/// Reads a JSON body: 415 unless JSON, 413 over [`MAX_BODY_BYTES`], 400 with a stable code when
/// the JSON does not parse or does not have the expected shape.
pub async fn read_json<T: DeserializeOwned>(req: &mut Request) -> Result<T, ApiError> {
    let content_type = req
        .headers()
        .get("content-type")
        .ok()
        .flatten()
        .unwrap_or_default();
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            "send the body as application/json",
        ));
    }
    parse_json(&read_body(req, MAX_BODY_BYTES).await?)
}

/// Reads a body of at most `max_bytes`: 413 when the declared length or the body itself is
/// larger, 400 `invalid_body` when it cannot be read.
pub async fn read_body(req: &mut Request, max_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > max_bytes) {
        return Err(payload_too_large(max_bytes));
    }
    let bytes = req
        .bytes()
        .await
        .map_err(|_| ApiError::bad_request("invalid_body", "the request body could not be read"))?;
    if bytes.len() > max_bytes {
        return Err(payload_too_large(max_bytes));
    }
    Ok(bytes)
}

/// Parses JSON bytes with the API's error codes (split out so it is testable natively).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::bad_request("invalid_json", "the body is not valid JSON")
        } else {
            // serde's message names the field and expected type, never echoes values.
            ApiError::bad_request(
                "invalid_body",
                format!("the body does not have the expected shape: {e}"),
            )
        }
    })
}

fn payload_too_large(max_bytes: usize) -> ApiError {
    ApiError::new(
        413,
        "payload_too_large",
        format!("the body is larger than {max_bytes} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        email: String,
    }

    #[test]
    fn json_errors_have_stable_codes() {
        assert_eq!(parse_json::<Body>(b"{").unwrap_err().code, "invalid_json");
        assert_eq!(
            parse_json::<Body>(b"{\"email\": 3}").unwrap_err().code,
            "invalid_body"
        );
        assert_eq!(
            parse_json::<Body>(b"{\"email\": \"a\", \"x\": 1}")
                .unwrap_err()
                .code,
            "invalid_body"
        );
        assert!(parse_json::<Body>(b"{\"email\": \"a@b.co\"}").is_ok());
    }
}
