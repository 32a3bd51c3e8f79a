//! Prometheus metrics, rendered by the admin listener's `GET /metrics`.
//!
//! | Metric                              | Type      | Labels        |
//! |-------------------------------------|-----------|---------------|
//! | `gateway_requests_total`            | counter   | `op`, `status` |
//! | `gateway_request_duration_seconds`  | histogram | `op`, `status` |
//! | `gateway_auth_failures_total`       | counter   | `reason`      |
//! | `gateway_load_shed_total`           | counter   | —             |
//! | `gateway_pool_size`                 | gauge     | —             |
//! | `gateway_pool_max_size`             | gauge     | —             |
//! | `gateway_pool_in_use`               | gauge     | —             |
//! | `gateway_pool_waiting`              | gauge     | —             |
//!
//! `op` is a registry name, `batch`, or `unknown` (anything that did not resolve to an
//! operation); client-chosen strings never become label values, so cardinality stays bounded.
//!
//! Each [`GatewayMetrics`] owns its recorder instead of installing a process-global one, so
//! several gateways in one process (the integration tests) keep separate numbers.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Key, Label, Metadata, Recorder as _};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

const REQUESTS_TOTAL: &str = "gateway_requests_total";
const REQUEST_DURATION: &str = "gateway_request_duration_seconds";
const AUTH_FAILURES: &str = "gateway_auth_failures_total";
const LOAD_SHED: &str = "gateway_load_shed_total";
const POOL_SIZE: &str = "gateway_pool_size";
const POOL_MAX_SIZE: &str = "gateway_pool_max_size";
const POOL_IN_USE: &str = "gateway_pool_in_use";
const POOL_WAITING: &str = "gateway_pool_waiting";

/// Buckets from half a millisecond (a cached point read on loopback) to the 5 s statement
/// timeout and beyond.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_owned()), DURATION_BUCKETS)
            .expect("invariant: the bucket list is non-empty")
            .build_recorder();
        let handle = recorder.handle();
        Self {
            recorder: Arc::new(recorder),
            handle,
        }
    }

    /// One finished request on the API listener.
    pub fn record_request(&self, op: &'static str, status: u16, duration: Duration) {
        let labels = [
            Label::new("op", op),
            Label::new("status", status_label(status)),
        ];
        self.recorder
            .register_counter(&Key::from_parts(REQUESTS_TOTAL, labels.to_vec()), &METADATA)
            .increment(1);
        self.recorder
            .register_histogram(
                &Key::from_parts(REQUEST_DURATION, labels.to_vec()),
                &METADATA,
            )
            .record(duration.as_secs_f64());
    }

    /// A rejected signature, replayed nonce or missing scope; `reason` is the error code.
    pub fn record_auth_failure(&self, reason: &'static str) {
        self.recorder
            .register_counter(
                &Key::from_parts(AUTH_FAILURES, vec![Label::new("reason", reason)]),
                &METADATA,
            )
            .increment(1);
    }

    /// A request refused because no connection (or nonce slot) was free in time.
    pub fn record_load_shed(&self) {
        self.recorder
            .register_counter(&Key::from_name(LOAD_SHED), &METADATA)
            .increment(1);
    }

    /// Prometheus text, with the pool gauges sampled now.
    pub fn render(&self, pool: &deadpool_postgres::Status) -> String {
        let gauge = |name: &'static str, value: usize| {
            self.recorder
                .register_gauge(&Key::from_name(name), &METADATA)
                .set(value as f64);
        };
        gauge(POOL_SIZE, pool.size);
        gauge(POOL_MAX_SIZE, pool.max_size);
        gauge(POOL_IN_USE, pool.size.saturating_sub(pool.available));
        gauge(POOL_WAITING, pool.waiting);
        // Make the counters visible before their first increment, so dashboards and alerts
        // see a 0 rather than "no data".
        self.recorder
            .register_counter(&Key::from_name(LOAD_SHED), &METADATA)
            .increment(0);
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// Status codes the gateway answers with, as static strings (no allocation per request).
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        422 => "422",
        500 => "500",
        503 => "503",
        504 => "504",
        _ => "other",
    }
}
