//! Per-request observability: request id, one structured access-log line, and metrics.
//!
//! The request id comes from `x-request-id` when the caller sent a sane one (so the Worker's
//! id follows the request across both logs), otherwise it is generated; either way it is echoed
//! in the response. Handlers report what only they know (operation, key id) through a
//! [`RequestOutcome`] response extension, and errors report their code through
//! [`crate::error::ErrorCode`], so this layer never parses bodies. The log line carries no
//! parameters, bodies, secrets or SQL values.

use std::borrow::Cow;
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
use crate::telemetry;

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

    /// Borrowed for the common cases, so most log lines allocate nothing for it.
    fn log_value(&self) -> Cow<'static, str> {
        match self {
            OpLabel::Unknown => Cow::Borrowed("unknown"),
            OpLabel::Single(name) => Cow::Borrowed(name),
            OpLabel::Batch(names) => Cow::Owned(format!("batch[{}]", names.join(","))),
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

    let op = outcome.op.log_value();
    log_access(
        &span,
        &AccessRecord {
            request_id: &request_id,
            op: &op,
            status,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            key_id: outcome.key_id.as_deref().unwrap_or("-"),
            error_code: error_code.unwrap_or("-"),
        },
    );
    response
}

/// The fields of one access-log line.
#[derive(Debug)]
struct AccessRecord<'a> {
    request_id: &'a str,
    op: &'a str,
    status: u16,
    duration_ms: f64,
    key_id: &'a str,
    error_code: &'a str,
}

/// Writes the access-log line: `WARN` for 5xx, else `INFO`, in the request span.
///
/// Formatting it through `tracing` costs several microseconds per request (field visitors, a
/// JSON map, re-parsing the span's fields), a tenth of the gateway's whole CPU budget for a
/// point read. So when the gateway's own subscriber is installed, the line is written straight
/// to its buffer in the identical format, after the same filter check; `tracing` remains the
/// path for any other subscriber.
fn log_access(span: &tracing::Span, record: &AccessRecord<'_>) {
    let is_warn = record.status >= 500;
    let enabled = if is_warn {
        tracing::enabled!(target: ACCESS_TARGET, tracing::Level::WARN)
    } else {
        tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO)
    };
    if !enabled {
        return;
    }
    if let Some(writer) = telemetry::installed_writer() {
        let mut line = Vec::with_capacity(ACCESS_LINE_CAPACITY);
        format_access_line(
            &mut line,
            &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            is_warn,
            record,
            !span.is_disabled(),
        );
        writer.append(&line);
        return;
    }
    log_access_with_tracing(span, is_warn, record);
}

fn log_access_with_tracing(span: &tracing::Span, is_warn: bool, record: &AccessRecord<'_>) {
    let _entered = span.enter();
    let AccessRecord {
        request_id,
        op,
        status,
        duration_ms,
        key_id,
        error_code,
    } = *record;
    if is_warn {
        tracing::warn!(target: "db_gateway::access", request_id, op, status, duration_ms, key_id, error_code, "request");
    } else {
        tracing::info!(target: "db_gateway::access", request_id, op, status, duration_ms, key_id, error_code, "request");
    }
}

/// `target` of access-log lines (`GATEWAY_LOG=info,db_gateway::access=off` silences them).
const ACCESS_TARGET: &str = "db_gateway::access";
/// A typical line fits without growing the buffer.
const ACCESS_LINE_CAPACITY: usize = 384;

/// The line `telemetry`'s JSON subscriber prints for the `tracing` calls in [`log_access`]
/// (same keys, order and number formatting; a unit test compares the two).
fn format_access_line(
    line: &mut Vec<u8>,
    timestamp: &str,
    is_warn: bool,
    record: &AccessRecord<'_>,
    in_span: bool,
) {
    let string = |line: &mut Vec<u8>, value: &str| {
        // Writing JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *line, value);
    };
    line.extend_from_slice(b"{\"timestamp\":");
    string(line, timestamp);
    line.extend_from_slice(if is_warn {
        b",\"level\":\"WARN\",\"message\":\"request\",\"request_id\":"
    } else {
        b",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":"
    });
    string(line, record.request_id);
    line.extend_from_slice(b",\"op\":");
    string(line, record.op);
    line.extend_from_slice(b",\"status\":");
    let _ = serde_json::to_writer(&mut *line, &record.status);
    line.extend_from_slice(b",\"duration_ms\":");
    let _ = serde_json::to_writer(&mut *line, &record.duration_ms);
    line.extend_from_slice(b",\"key_id\":");
    string(line, record.key_id);
    line.extend_from_slice(b",\"error_code\":");
    string(line, record.error_code);
    line.extend_from_slice(b",\"target\":\"db_gateway::access\"");
    if in_span {
        line.extend_from_slice(b",\"span\":{\"request_id\":");
        string(line, record.request_id);
        line.extend_from_slice(b",\"name\":\"request\"}");
    }
    line.extend_from_slice(b"}\n");
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

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_direct_access_line_is_the_line_tracing_would_print() {
        let records = [
            AccessRecord {
                request_id: "8f58831e5c1b6c0aa38dc9e11f91510c",
                op: "bench.account_balance",
                status: 200,
                duration_ms: 0.073668,
                key_id: "bench",
                error_code: "-",
            },
            AccessRecord {
                request_id: r#"odd"id\with{json}"#,
                op: "batch[a.b,c.d]",
                status: 503,
                duration_ms: 250.0,
                key_id: "worker-2026-11",
                error_code: "overloaded",
            },
        ];
        for record in &records {
            let is_warn = record.status >= 500;
            let captured = Captured::default();
            let subscriber = telemetry::json_subscriber_builder()
                .with_writer({
                    let captured = captured.clone();
                    move || captured.clone()
                })
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                let span = tracing::info_span!("request", request_id = %record.request_id);
                log_access_with_tracing(&span, is_warn, record);
            });
            let expected = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
            let parsed: serde_json::Value = serde_json::from_str(&expected).unwrap();
            let timestamp = parsed["timestamp"].as_str().unwrap();

            let mut line = Vec::new();
            format_access_line(&mut line, timestamp, is_warn, record, true);
            assert_eq!(String::from_utf8(line).unwrap(), expected);
        }
    }

    #[test]
    fn timestamps_have_the_subscribers_shape() {
        let timestamp = chrono::DateTime::from_timestamp_micros(1_795_000_000_000_007)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        // tracing-subscriber prints `YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC.
        assert_eq!(timestamp, "2026-11-18T11:06:40.000007Z");
    }

    #[test]
    fn lines_outside_a_span_have_no_span_object() {
        let mut line = Vec::new();
        let record = AccessRecord {
            request_id: "r",
            op: "unknown",
            status: 401,
            duration_ms: 1.5,
            key_id: "-",
            error_code: "bad_signature",
        };
        format_access_line(
            &mut line,
            "2026-11-22T00:00:00.000000Z",
            false,
            &record,
            false,
        );
        let parsed: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert!(parsed.get("span").is_none());
        assert_eq!(parsed["status"], 401);
        assert_eq!(parsed["target"], "db_gateway::access");
        assert!(line.ends_with(b"}\n"));
    }

    #[test]
    fn batch_labels_are_bounded_but_logs_list_names() {
        let label = OpLabel::Batch(vec!["a.b", "c.d"]);
        assert_eq!(label.metric_label(), "batch");
        assert_eq!(label.log_value(), "batch[a.b,c.d]");
        assert_eq!(OpLabel::Unknown.metric_label(), "unknown");
    }
}
