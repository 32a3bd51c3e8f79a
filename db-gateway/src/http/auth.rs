//! The authentication extractor shared by `/v1/op` and `/v1/batch`.
//!
//! In order: read the body under the size limit (413), verify the RFC 9421 signature over
//! method, target URI and `Content-Digest` with `callmeback_signing` (401 with the verifier's
//! code), then look the `(key id, nonce)` up in this process's replay memory (401
//! `replayed_nonce` if it was seen). Only a request that passed all three yields a
//! [`SignedBody`]. What the memory cannot vouch for (a signature older than what it still
//! remembers) is decided by the handlers, which know whether the request writes: a read is
//! refused, a write is left to its database claim (`crate::replay`). Scope checks need the
//! operation name and happen in the handlers too.
//!
//! The target URI is rebuilt the way the client signed it: `GATEWAY_PUBLIC_URL` (when a TLS
//! proxy sits in front) or `http://` + `Host`, followed by the path and query as received.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::{CONTENT_LENGTH, HOST};
use axum::http::request::Parts;
use callmeback_signing::{
    CONTENT_DIGEST_HEADER, RequestParts, SIGNATURE_HEADER, SIGNATURE_INPUT_HEADER, VerifyError,
    verify_request,
};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};

use super::AppState;
use crate::error::{ApiError, REPLAYED_NONCE};
use crate::nonce::NonceVerdict;
use crate::replay::{self, NonceClaim};

/// Longest nonce accepted (the Worker sends 32 hex digits); the database column has the same
/// bound.
const MAX_NONCE_LEN: usize = 128;

/// A request body whose signature verified and whose nonce this process has not seen.
#[derive(Debug)]
pub(crate) struct SignedBody {
    pub(crate) key_id: String,
    pub(crate) body: Bytes,
    nonce: String,
    /// `created` + max skew: when the signature stops verifying anywhere.
    expires_at: i64,
    /// `Fresh`, or `Forgotten` when the memory cannot vouch for the nonce.
    memory: NonceVerdict,
}

impl SignedBody {
    /// What a request that writes records in its transaction.
    pub(crate) fn claim(&self) -> NonceClaim<'_> {
        NonceClaim {
            key_id: &self.key_id,
            nonce: &self.nonce,
            expires_at: self.expires_at,
        }
    }

    /// For requests that only read: refuses a nonce the memory cannot vouch for, since reads
    /// have no database claim behind them.
    pub(crate) fn require_remembered(&self, state: &AppState) -> Result<(), ApiError> {
        if self.memory == NonceVerdict::Forgotten {
            state.metrics.record_auth_failure(REPLAYED_NONCE);
            return Err(ApiError::Unauthorized {
                code: REPLAYED_NONCE,
                message: "this signature is older than the gateway's replay memory; sign the \
                          request again"
                    .to_owned(),
            });
        }
        Ok(())
    }
}

impl FromRequest<AppState> for SignedBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let limit = state.body_limit_bytes;

        // Refuse an announced oversize body before reading a byte of it.
        let announced = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if announced.is_some_and(|length| length > limit as u64) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        let body = Limited::new(body, limit).collect().await.map_err(|error| {
            if error.is::<LengthLimitError>() {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::BadRequest("the request body could not be read".to_owned())
            }
        })?;
        let body = body.to_bytes();

        let target_uri = target_uri(state, &parts)?;
        let now = unix_now();
        let verified = header_values(&parts)
            .and_then(|[content_digest, signature_input, signature]| {
                let request = RequestParts {
                    method: parts.method.as_str(),
                    target_uri: &target_uri,
                    body: &body,
                    content_digest,
                    signature_input,
                    signature,
                };
                verify_request(
                    &request,
                    |id| state.keys.get(id).map(|entry| &entry.key),
                    now,
                    state.max_skew_secs,
                )
            })
            .map_err(|error| {
                state.metrics.record_auth_failure(error.code());
                ApiError::Unauthorized {
                    code: error.code(),
                    message: error.to_string(),
                }
            })?;

        if verified.nonce.len() > MAX_NONCE_LEN {
            let code = VerifyError::MalformedHeader(SIGNATURE_INPUT_HEADER).code();
            state.metrics.record_auth_failure(code);
            return Err(ApiError::Unauthorized {
                code,
                message: format!("the nonce is longer than {MAX_NONCE_LEN} characters"),
            });
        }
        let memory =
            state
                .nonces
                .check_and_insert(&verified.key_id, &verified.nonce, verified.created, now);
        if memory == NonceVerdict::Replayed {
            state.metrics.record_auth_failure(REPLAYED_NONCE);
            return Err(replay::replayed());
        }
        Ok(SignedBody {
            expires_at: verified.created.saturating_add(state.max_skew_secs),
            key_id: verified.key_id,
            nonce: verified.nonce,
            body,
            memory,
        })
    }
}

/// The three signature headers; present but not visible ASCII counts as malformed.
fn header_values(parts: &Parts) -> Result<[Option<&str>; 3], VerifyError> {
    let read = |name: &'static str| match parts.headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| VerifyError::MalformedHeader(name)),
    };
    Ok([
        read(CONTENT_DIGEST_HEADER)?,
        read(SIGNATURE_INPUT_HEADER)?,
        read(SIGNATURE_HEADER)?,
    ])
}

fn target_uri(state: &AppState, parts: &Parts) -> Result<String, ApiError> {
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let (scheme, authority) = match &state.public_url {
        Some(public_url) => ("", public_url.as_str()),
        None => {
            let authority = match parts.uri.authority() {
                Some(authority) => authority.as_str(),
                None => parts
                    .headers
                    .get(HOST)
                    .and_then(|host| host.to_str().ok())
                    .ok_or_else(|| {
                        ApiError::BadRequest("the Host header is required".to_owned())
                    })?,
            };
            ("http://", authority)
        }
    };
    // One exact-size allocation; `format!` would grow its buffer as it goes.
    let mut uri = String::with_capacity(scheme.len() + authority.len() + path.len());
    uri.push_str(scheme);
    uri.push_str(authority);
    uri.push_str(path);
    Ok(uri)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}
