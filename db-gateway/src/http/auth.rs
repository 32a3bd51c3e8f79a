//! The authentication extractor shared by `/v1/op` and `/v1/batch`.
//!
//! In order: read the body under the size limit (413), verify the RFC 9421 signature over
//! method, target URI and `Content-Digest` with `callmeback_signing` (401 with the verifier's
//! code), then refuse a nonce already used within the skew window (401 `replayed_nonce`). Only
//! a request that passed all three yields a [`SignedBody`]; scope checks need the operation
//! name and happen in the handlers.
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
use crate::nonce::NonceRejection;

/// A request body whose signature verified and whose nonce is fresh.
#[derive(Debug)]
pub(crate) struct SignedBody {
    pub(crate) key_id: String,
    pub(crate) body: Bytes,
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

        match state.nonces.check_and_insert(
            &verified.key_id,
            &verified.nonce,
            verified.created,
            now,
        ) {
            Ok(()) => {}
            Err(NonceRejection::Replayed) => {
                state.metrics.record_auth_failure(REPLAYED_NONCE);
                return Err(ApiError::Unauthorized {
                    code: REPLAYED_NONCE,
                    message: "this nonce was already used within the signature window".to_owned(),
                });
            }
            Err(NonceRejection::Full) => {
                // Counted as load shedding by the access layer, like a pool timeout.
                tracing::warn!("nonce cache is full; shedding load");
                return Err(ApiError::Overloaded(
                    "too many recent requests to track for replay protection".to_owned(),
                ));
            }
        }
        Ok(SignedBody {
            key_id: verified.key_id,
            body,
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
