//! The Worker's one error type at its HTTP boundary.
//!
//! Every failure a route can have becomes an [`ApiError`], which renders as
//! `{"error": {"code", "message", "fields"?, ...}}` with a stable `code`. Frontends branch on the
//! code; the message is for people. Nothing internal (SQL, gateway bodies, stack traces) leaks.

use callmeback_domain::FieldErrors;
use callmeback_gateway_api::codes;
use serde_json::{Map, Value, json};
use worker::Response;

use crate::config::ConfigError;
use crate::gateway::GatewayError;
use crate::limits::LimiterError;

/// A failure with its HTTP status and stable code.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Field-level validation messages, `{"email": {"code", "message"}}`.
    pub fields: Option<Value>,
    /// Extra members of the error object (e.g. which dependency is down).
    pub extra: Map<String, Value>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields: None,
            extra: Map::new(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    pub fn not_found() -> Self {
        Self::new(404, "not_found", "no such route")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "method_not_allowed",
            "method not allowed on this route",
        )
    }

    /// A dependency (gateway, database) is unreachable or unhealthy.
    pub fn dependency_unavailable(dependency: &str, message: impl Into<String>) -> Self {
        Self::new(503, "dependency_unavailable", message)
            .with_extra("dependency", json!(dependency))
            .with_retry_after(1)
    }

    /// 400 `validation_failed` with every invalid field under `fields`.
    pub fn validation_failed(errors: FieldErrors) -> Self {
        let fields = serde_json::to_value(&errors).unwrap_or(Value::Null);
        Self::bad_request("validation_failed", "some fields are invalid").with_fields(fields)
    }

    /// Something failed that the caller cannot fix; details only in the Worker's log.
    pub fn internal() -> Self {
        Self::new(500, "internal", "internal error")
    }

    #[must_use]
    pub fn with_extra(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    #[must_use]
    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    #[must_use]
    pub fn with_fields(mut self, fields: Value) -> Self {
        self.fields = Some(fields);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".to_owned(), json!(self.code));
        error.insert("message".to_owned(), json!(self.message));
        if let Some(fields) = &self.fields {
            error.insert("fields".to_owned(), fields.clone());
        }
        for (key, value) in &self.extra {
            error.insert(key.clone(), value.clone());
        }
        json!({ "error": error })
    }

    /// Renders the error; falls back to a fixed body if even that fails.
    pub fn into_response(self) -> Response {
        let rendered = Response::from_json(&self.body()).map(|r| r.with_status(self.status));
        match rendered {
            Ok(response) => {
                if let Some(seconds) = self.retry_after {
                    // Setting a header on a fresh response cannot fail for a valid name/value.
                    let _ = response.headers().set("retry-after", &seconds.to_string());
                }
                response
            }
            Err(_) => Response::error(
                r#"{"error":{"code":"internal","message":"internal error"}}"#,
                500,
            )
            .expect("a static error response is always constructible"),
        }
    }
}

impl From<worker::Error> for ApiError {
    fn from(err: worker::Error) -> Self {
        worker::console_error!("worker runtime error: {err}");
        Self::internal()
    }
}

/// A deploy mistake: logged with the binding's name (never its value), answered 500
/// `misconfigured` without details.
impl From<ConfigError> for ApiError {
    fn from(err: ConfigError) -> Self {
        worker::console_error!("{err}");
        Self::new(500, err.code(), "the service is misconfigured")
    }
}

/// A limiter that cannot answer fails the request closed: 503 naming `rate_limiter` (a missing
/// binding is a deploy mistake: 500).
impl From<LimiterError> for ApiError {
    fn from(err: LimiterError) -> Self {
        worker::console_error!("{err}");
        match err {
            LimiterError::Binding(_) => Self::internal(),
            LimiterError::Unavailable(_) => {
                Self::dependency_unavailable("rate_limiter", "the rate limiter is unavailable")
            }
        }
    }
}

/// How a gateway failure reaches the API's caller when the route has no more specific answer.
impl From<GatewayError> for ApiError {
    fn from(err: GatewayError) -> Self {
        match err {
            GatewayError::Unreachable(reason) => {
                worker::console_error!("gateway unreachable: {reason}");
                Self::dependency_unavailable("gateway", "db-gateway is unreachable")
            }
            GatewayError::BadResponse(status) => {
                worker::console_error!(
                    "gateway answered outside the contract with status {status}"
                );
                Self::dependency_unavailable("gateway", "db-gateway answered unexpectedly")
            }
            GatewayError::Rejected {
                status,
                code,
                message,
                ..
            } => match code.as_str() {
                codes::DATABASE_UNAVAILABLE | codes::OVERLOADED => {
                    Self::dependency_unavailable("database", "the database is busy or unavailable")
                }
                codes::TIMEOUT => Self::new(504, "timeout", "the database did not answer in time"),
                codes::CONFLICT => Self::new(409, "conflict", "that already exists"),
                codes::PRECONDITION_FAILED => Self::new(409, "precondition_failed", message),
                codes::CONSTRAINT_VIOLATION => {
                    Self::new(422, "constraint_violation", "the values were refused")
                }
                codes::FOREIGN_KEY_VIOLATION => Self::new(
                    409,
                    "reference_not_found",
                    "a referenced item does not exist",
                ),
                codes::RETRY => Self::new(409, "retry", "a concurrent change interfered; retry")
                    .with_retry_after(1),
                _ => {
                    // 400/401/403/404 from the gateway mean the Worker sent something wrong: a bug
                    // or a configuration error, not the caller's fault.
                    worker::console_error!("gateway refused a call: {status} {code}");
                    Self::internal()
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_code_message_and_extras() {
        let err = ApiError::dependency_unavailable("gateway", "db-gateway is unreachable");
        assert_eq!(err.status, 503);
        assert_eq!(
            err.body(),
            json!({"error": {"code": "dependency_unavailable", "message": "db-gateway is unreachable", "dependency": "gateway"}})
        );
    }

    #[test]
    fn fields_are_included_when_present() {
        let err = ApiError::bad_request("validation_failed", "invalid input")
            .with_fields(json!({"email": {"code": "invalid_email", "message": "not an email"}}));
        assert_eq!(
            err.body()["error"]["fields"]["email"]["code"],
            "invalid_email"
        );
    }
}
