//! Per-request observability: request id, one structured access-log line, and metrics.
//!
//! The request id comes from `x-request-id` when the caller sent a sane one (so the Worker's
//! id follows the request across both logs), otherwise it is generated; either way it is echoed
//! in the response. Handlers report what only they know (operation, key id) through a
//! [`RequestOutcome`] response extension, and errors report their code through
//! [`crate::error::ErrorCode`], so this layer never parses bodies. The log line carries no
//! parameters, bodies, secrets or SQL values.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use callmeback_gateway_api::{REQUEST_ID_HEADER, codes};
use rand::RngCore as _;
use tracing::Instrument as _;

use super::AppState;
use crate::error::ErrorCode;

/// Longest caller-supplied request id we adopt; longer (or odd-looking) ids are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Which operation(s) a request ran, for labels and logs.
#[derive(Debug, Clone, Default)]
pub(crate) enum OpLabel {
    /// The body was not (yet) resolved to a registry entry.
    #[default]
    Unknown,
    Single(&'static str),
    /// Registry names of the batch's operations, as far as they resolved.
    Batch(Vec<&'static str>),
}

impl OpLabel {
    /// Bounded-cardinality metric label.
    fn metric_label(&self) -> &'static str {
        match self {
            OpLabel::Unknown => "unknown",
            OpLabel::Single(name) => name,
            OpLabel::Batch(_) => "batch",
        }
    }

    fn log_value(&self) -> String {
        match self {
            OpLabel::Unknown => "unknown".to_owned(),
            OpLabel::Single(name) => (*name).to_owned(),
            OpLabel::Batch(names) => format!("batch[{}]", names.join(",")),
        }
    }
}

/// Set by the API handlers on their response.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestOutcome {
    pub(crate) op: OpLabel,
    pub(crate) key_id: Option<String>,
}

impl RequestOutcome {
    pub(crate) fn authenticated(key_id: String) -> Self {
        Self {
            op: OpLabel::Unknown,
            key_id: Some(key_id),
        }
    }
}

pub(super) async fn observe(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| is_acceptable_request_id(id))
        .map_or_else(generate_request_id, str::to_owned);

    let span = tracing::info_span!("request", request_id = %request_id);
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();

    let status = response.status().as_u16();
    let outcome = response
        .extensions_mut()
        .remove::<RequestOutcome>()
        .unwrap_or_default();
    let error_code = response.extensions().get::<ErrorCode>().map(|code| code.0);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    state
        .metrics
        .record_request(outcome.op.metric_label(), status, elapsed);
    if error_code == Some(codes::OVERLOADED) {
        state.metrics.record_load_shed();
    }

    let _entered = span.enter();
    let request_id = request_id.as_str();
    let op = outcome.op.log_value();
    let key_id = outcome.key_id.as_deref().unwrap_or("-");
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let error_code = error_code.unwrap_or("-");
    if status >= 500 {
        tracing::warn!(target: "db_gateway::access", request_id, op, status, duration_ms, key_id, error_code, "request");
    } else {
        tracing::info!(target: "db_gateway::access", request_id, op, status, duration_ms, key_id, error_code, "request");
    }
    response
}

/// Visible ASCII only, so the id is safe in a header and a log line as-is.
fn is_acceptable_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

fn generate_request_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_adopted_only_when_sane() {
        assert!(is_acceptable_request_id("req-123_abc"));
        assert!(!is_acceptable_request_id(""));
        assert!(!is_acceptable_request_id("has space"));
        assert!(!is_acceptable_request_id(&"x".repeat(129)));
        let generated = generate_request_id();
        assert_eq!(generated.len(), 32);
        assert_ne!(generated, generate_request_id());
    }

    #[test]
    fn batch_labels_are_bounded_but_logs_list_names() {
        let label = OpLabel::Batch(vec!["a.b", "c.d"]);
        assert_eq!(label.metric_label(), "batch");
        assert_eq!(label.log_value(), "batch[a.b,c.d]");
        assert_eq!(OpLabel::Unknown.metric_label(), "unknown");
    }
}
