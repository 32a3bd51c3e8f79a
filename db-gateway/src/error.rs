//! The one error type of the HTTP boundary, with its stable codes and statuses.
//!
//! Every failure a client can see is an [`ApiError`]; its `code()` is what clients branch on
//! (see `callmeback_gateway_api::codes`), its `Display` is the human message. Messages are built
//! from operation names, parameter names and constraint names only: never SQL text, parameter
//! values or the server's own error text (which can quote values, e.g. SQLSTATE 22P02).

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callmeback_gateway_api::{ErrorBody, ErrorDetail, codes};
use tokio_postgres::error::SqlState;

/// Code for a nonce seen before within the signature window (HTTP 401).
pub const REPLAYED_NONCE: &str = "replayed_nonce";
/// Code for a path the gateway does not serve (HTTP 404).
pub const NOT_FOUND: &str = "not_found";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no operation named `{0}`")]
    UnknownOperation(String),
    #[error("{0}")]
    InvalidParams(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Signature verification failed; `code` is `VerifyError::code()` or [`REPLAYED_NONCE`].
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    #[error("key `{key_id}` may not call `{op}`")]
    Forbidden { key_id: String, op: &'static str },
    #[error("{0}")]
    PreconditionFailed(&'static str),
    #[error("{message}")]
    Database {
        code: &'static str,
        status: StatusCode,
        message: String,
    },
    /// Load shedding: no connection (or pipelined-read slot, or hashing slot) was free in time.
    #[error("{0}; retry shortly")]
    Overloaded(String),
    /// `detail` (why) goes to the log only.
    #[error("the database is unavailable")]
    DatabaseUnavailable { detail: String },
    #[error("path not found")]
    NotFound,
    /// Details go to the log (see [`ApiError::log_detail`]); the client learns nothing more.
    #[error("internal error")]
    Internal(String),
    /// The error of operation `op_index` in a batch.
    #[error("{error}")]
    InBatch {
        op_index: usize,
        error: Box<ApiError>,
    },
}

impl ApiError {
    /// Attaches a batch position.
    pub fn at(self, op_index: usize) -> Self {
        match self {
            already @ ApiError::InBatch { .. } => already,
            error => ApiError::InBatch {
                op_index,
                error: Box::new(error),
            },
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => codes::BAD_REQUEST,
            ApiError::UnknownOperation(_) => codes::UNKNOWN_OPERATION,
            ApiError::InvalidParams(_) => codes::INVALID_PARAMS,
            ApiError::PayloadTooLarge { .. } => codes::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized { code, .. } => code,
            ApiError::Forbidden { .. } => codes::FORBIDDEN,
            ApiError::PreconditionFailed(_) => codes::PRECONDITION_FAILED,
            ApiError::Database { code, .. } => code,
            ApiError::Overloaded(_) => codes::OVERLOADED,
            ApiError::DatabaseUnavailable { .. } => codes::DATABASE_UNAVAILABLE,
            ApiError::NotFound => NOT_FOUND,
            ApiError::Internal(_) => codes::INTERNAL,
            ApiError::InBatch { error, .. } => error.code(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::InvalidParams(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownOperation(_) | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::PreconditionFailed(_) => StatusCode::CONFLICT,
            ApiError::Database { status, .. } => *status,
            ApiError::Overloaded(_) | ApiError::DatabaseUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::InBatch { error, .. } => error.status(),
        }
    }

    fn op_index(&self) -> Option<usize> {
        match self {
            ApiError::InBatch { op_index, .. } => Some(*op_index),
            _ => None,
        }
    }

    /// What only the log may know (internal details); `None` when the message says it all.
    pub fn log_detail(&self) -> Option<&str> {
        match self {
            ApiError::Internal(detail) | ApiError::DatabaseUnavailable { detail } => Some(detail),
            ApiError::InBatch { error, .. } => error.log_detail(),
            _ => None,
        }
    }

    /// Maps a pool checkout failure: waiting too long is load shedding, anything else means
    /// Postgres cannot be reached.
    pub fn from_pool(error: &deadpool_postgres::PoolError, waited: Duration) -> Self {
        use deadpool_postgres::{PoolError, TimeoutType};
        match error {
            PoolError::Timeout(TimeoutType::Wait) => ApiError::Overloaded(format!(
                "no database connection became free within {} ms",
                waited.as_millis()
            )),
            PoolError::Timeout(_) | PoolError::Backend(_) | PoolError::Closed => {
                ApiError::DatabaseUnavailable {
                    detail: format!("pool checkout failed: {error}"),
                }
            }
            PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => {
                ApiError::Internal(format!("pool misconfigured: {error}"))
            }
        }
    }

    /// Maps a Postgres error to a stable code. Only the SQLSTATE and object names (constraint,
    /// column) are used; the server's message is never copied because it can quote values.
    pub fn from_postgres(error: &tokio_postgres::Error, op: &str) -> Self {
        let Some(db) = error.as_db_error() else {
            return if error.is_closed() || is_io(error) {
                ApiError::DatabaseUnavailable {
                    detail: format!("operation `{op}`: {error}"),
                }
            } else {
                ApiError::Internal(format!("operation `{op}`: client error: {error}"))
            };
        };
        let state = db.code();
        let constraint = db.constraint().unwrap_or("unnamed");
        let database =
            |code: &'static str, status: StatusCode, message: String| ApiError::Database {
                code,
                status,
                message,
            };
        if *state == SqlState::UNIQUE_VIOLATION {
            database(
                codes::CONFLICT,
                StatusCode::CONFLICT,
                format!("unique constraint `{constraint}` refused a duplicate"),
            )
        } else if *state == SqlState::FOREIGN_KEY_VIOLATION {
            database(
                codes::FOREIGN_KEY_VIOLATION,
                StatusCode::CONFLICT,
                format!("foreign key `{constraint}` refused the change"),
            )
        } else if *state == SqlState::CHECK_VIOLATION {
            database(
                codes::CONSTRAINT_VIOLATION,
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("check constraint `{constraint}` refused the values"),
            )
        } else if *state == SqlState::NOT_NULL_VIOLATION {
            database(
                codes::CONSTRAINT_VIOLATION,
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "column `{}` may not be null",
                    db.column().unwrap_or("unnamed")
                ),
            )
        } else if *state == SqlState::T_R_SERIALIZATION_FAILURE
            || *state == SqlState::T_R_DEADLOCK_DETECTED
        {
            database(
                codes::RETRY,
                StatusCode::CONFLICT,
                "transaction conflicted with another; retry it".to_owned(),
            )
        } else if *state == SqlState::QUERY_CANCELED {
            database(
                codes::TIMEOUT,
                StatusCode::GATEWAY_TIMEOUT,
                format!("operation `{op}` exceeded its statement timeout"),
            )
        } else if is_unavailable(state) {
            ApiError::DatabaseUnavailable {
                detail: format!("operation `{op}` failed with SQLSTATE {}", state.code()),
            }
        } else if state.code().starts_with("22") {
            // Class 22 (data exception): a value the database refused, e.g. a number too large
            // for its column. That is the caller's input, not a gateway fault.
            database(
                codes::INVALID_PARAMS,
                StatusCode::BAD_REQUEST,
                format!(
                    "the database refused a parameter value (SQLSTATE {})",
                    state.code()
                ),
            )
        } else {
            ApiError::Internal(format!(
                "operation `{op}` failed with SQLSTATE {}",
                state.code()
            ))
        }
    }
}

fn is_io(error: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        if inner.is::<std::io::Error>() {
            return true;
        }
        source = inner.source();
    }
    false
}

/// Connection exceptions (class 08), shutdowns and "too many connections".
fn is_unavailable(state: &SqlState) -> bool {
    state.code().starts_with("08")
        || *state == SqlState::ADMIN_SHUTDOWN
        || *state == SqlState::CRASH_SHUTDOWN
        || *state == SqlState::CANNOT_CONNECT_NOW
        || *state == SqlState::TOO_MANY_CONNECTIONS
}

/// Carried in response extensions so the access-log middleware sees the code without parsing
/// the body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub(crate) &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
                op_index: self.op_index(),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        // Both 503s are transient: tell clients when a retry makes sense.
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response.extensions_mut().insert(ErrorCode(code));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_errors_keep_code_status_and_index() {
        let error = ApiError::PreconditionFailed("insufficient credits").at(1);
        assert_eq!(error.code(), codes::PRECONDITION_FAILED);
        assert_eq!(error.status(), StatusCode::CONFLICT);
        assert_eq!(error.op_index(), Some(1));
        assert_eq!(error.to_string(), "insufficient credits");
        assert_eq!(error.at(3).op_index(), Some(1), "the first index wins");
    }

    #[test]
    fn internal_details_stay_out_of_the_message() {
        let error = ApiError::Internal("secret detail".into());
        assert_eq!(error.to_string(), "internal error");
        assert_eq!(error.log_detail(), Some("secret detail"));
    }
}
