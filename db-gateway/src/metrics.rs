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
//! | `gateway_pipeline_max_connections`  | gauge     | —             |
//! | `gateway_pipeline_connections`      | gauge     | — (open shared connections) |
//! | `gateway_pipeline_in_flight`        | gauge     | —             |
//! | `gateway_pipeline_reads_total`      | counter   | — (reads answered on shared connections) |
//! | `gateway_pipeline_fallbacks_total`  | counter   | — (reads sent to the pool instead) |
//! | `gateway_pipeline_reconnects_total` | counter   | —             |
//! | `gateway_replay_cache_entries`      | gauge     | — (nonces this process remembers) |
//! | `gateway_replay_cache_max_entries`  | gauge     | — (`GATEWAY_REPLAY_CACHE_ENTRIES`) |
//! | `gateway_replay_cache_evicted_total` | counter  | — (nonces forgotten early to stay within the bound) |
//! | `gateway_replay_cache_unremembered_total` | counter | — (requests served without being remembered) |
//! | `gateway_replay_nonces_deleted_total` | counter | — (expired rows this process deleted from `gateway_request_nonces`) |
//! | `gateway_replay_cleanup_runs_total` | counter   | `outcome` (`ok`, `failed`) |
//!
//! `op` is a registry name, `batch`, or `unknown` (anything that did not resolve to an
//! operation); client-chosen strings never become label values, so cardinality stays bounded.
//!
//! Each [`GatewayMetrics`] owns its recorder instead of installing a process-global one, so
//! several gateways in one process (the integration tests) keep separate numbers.
//!
//! The per-request pair (counter and histogram of one `op` × `status`) is registered once and
//! its handles kept, so recording a request costs a lookup by the label's address and two
//! atomic updates rather than building and hashing label sets.
//!
//! The recorder keeps every histogram sample until its next upkeep folds them into the buckets.
//! Rendering `/metrics` runs one, but a gateway nobody scrapes would grow by every request's
//! sample, so [`GatewayMetrics::upkeep_loop`] runs one every few seconds while the gateway
//! serves.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram, Key, Label, Metadata, Recorder as _};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::nonce::NonceCacheStatus;
use crate::pipeline::PipelineStatus;

const REQUESTS_TOTAL: &str = "gateway_requests_total";
const REQUEST_DURATION: &str = "gateway_request_duration_seconds";
const AUTH_FAILURES: &str = "gateway_auth_failures_total";
const LOAD_SHED: &str = "gateway_load_shed_total";
const POOL_SIZE: &str = "gateway_pool_size";
const POOL_MAX_SIZE: &str = "gateway_pool_max_size";
const POOL_IN_USE: &str = "gateway_pool_in_use";
const POOL_WAITING: &str = "gateway_pool_waiting";
const PIPELINE_MAX_CONNECTIONS: &str = "gateway_pipeline_max_connections";
const PIPELINE_CONNECTIONS: &str = "gateway_pipeline_connections";
const PIPELINE_IN_FLIGHT: &str = "gateway_pipeline_in_flight";
const PIPELINE_READS: &str = "gateway_pipeline_reads_total";
const PIPELINE_FALLBACKS: &str = "gateway_pipeline_fallbacks_total";
const PIPELINE_RECONNECTS: &str = "gateway_pipeline_reconnects_total";
const REPLAY_CACHE_ENTRIES: &str = "gateway_replay_cache_entries";
const REPLAY_CACHE_MAX_ENTRIES: &str = "gateway_replay_cache_max_entries";
const REPLAY_CACHE_EVICTED: &str = "gateway_replay_cache_evicted_total";
const REPLAY_CACHE_UNREMEMBERED: &str = "gateway_replay_cache_unremembered_total";
const REPLAY_NONCES_DELETED: &str = "gateway_replay_nonces_deleted_total";
const REPLAY_CLEANUP_RUNS: &str = "gateway_replay_cleanup_runs_total";

/// How often recorded histogram samples are folded into their buckets (see the module docs).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

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
    requests: Arc<RwLock<HashMap<RequestLabels, RequestHandles>>>,
}

/// An `op` label by address and length (labels are `'static`; two copies of one name at
/// different addresses just map to the same registered series) and a status label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RequestLabels {
    op_address: usize,
    op_len: usize,
    status: &'static str,
}

#[derive(Debug, Clone)]
struct RequestHandles {
    total: Counter,
    duration: Histogram,
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
            requests: Arc::default(),
        }
    }

    /// One finished request on the API listener.
    pub fn record_request(&self, op: &'static str, status: u16, duration: Duration) {
        let status = status_label(status);
        let labels = RequestLabels {
            op_address: op.as_ptr() as usize,
            op_len: op.len(),
            status,
        };
        let seconds = duration.as_secs_f64();
        {
            let known = self
                .requests
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(handles) = known.get(&labels) {
                handles.total.increment(1);
                handles.duration.record(seconds);
                return;
            }
        }
        let handles = self.register_request(labels, op, status);
        handles.total.increment(1);
        handles.duration.record(seconds);
    }

    /// First request with these labels: registers its series (registering twice yields the
    /// same series, so a race here is harmless).
    #[cold]
    fn register_request(
        &self,
        labels: RequestLabels,
        op: &'static str,
        status: &'static str,
    ) -> RequestHandles {
        let label_set = [Label::new("op", op), Label::new("status", status)];
        let handles = RequestHandles {
            total: self.recorder.register_counter(
                &Key::from_parts(REQUESTS_TOTAL, label_set.to_vec()),
                &METADATA,
            ),
            duration: self.recorder.register_histogram(
                &Key::from_parts(REQUEST_DURATION, label_set.to_vec()),
                &METADATA,
            ),
        };
        self.requests
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(labels, handles.clone());
        handles
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

    /// A request refused because no connection (or other bounded slot) was free in time.
    pub fn record_load_shed(&self) {
        self.recorder
            .register_counter(&Key::from_name(LOAD_SHED), &METADATA)
            .increment(1);
    }

    /// Folds recorded histogram samples into their buckets every few seconds, until the task
    /// is dropped, so memory stays bounded whether or not anyone scrapes `/metrics`.
    pub async fn upkeep_loop(self) {
        let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.handle.run_upkeep();
        }
    }

    /// One round of the nonce cleanup: the rows it deleted, or `None` if it failed.
    pub fn record_nonce_cleanup(&self, deleted: Option<u64>) {
        let outcome = if deleted.is_some() { "ok" } else { "failed" };
        self.recorder
            .register_counter(
                &Key::from_parts(REPLAY_CLEANUP_RUNS, vec![Label::new("outcome", outcome)]),
                &METADATA,
            )
            .increment(1);
        self.recorder
            .register_counter(&Key::from_name(REPLAY_NONCES_DELETED), &METADATA)
            .increment(deleted.unwrap_or(0));
    }

    /// Prometheus text, with the pool, pipeline and replay-memory gauges sampled now.
    pub fn render(
        &self,
        pool: &deadpool_postgres::Status,
        pipeline: &PipelineStatus,
        replay: &NonceCacheStatus,
    ) -> String {
        let gauge = |name: &'static str, value: usize| {
            self.recorder
                .register_gauge(&Key::from_name(name), &METADATA)
                .set(value as f64);
        };
        gauge(POOL_SIZE, pool.size);
        gauge(POOL_MAX_SIZE, pool.max_size);
        gauge(POOL_IN_USE, pool.size.saturating_sub(pool.available));
        gauge(POOL_WAITING, pool.waiting);
        gauge(PIPELINE_MAX_CONNECTIONS, pipeline.max_connections);
        gauge(PIPELINE_CONNECTIONS, pipeline.open_connections);
        gauge(PIPELINE_IN_FLIGHT, pipeline.in_flight);
        gauge(REPLAY_CACHE_ENTRIES, replay.entries);
        gauge(REPLAY_CACHE_MAX_ENTRIES, replay.max_entries);
        // Kept by the pipeline itself (it has no recorder); exported as counters.
        let counter = |name: &'static str, value: u64| {
            self.recorder
                .register_counter(&Key::from_name(name), &METADATA)
                .absolute(value);
        };
        counter(PIPELINE_READS, pipeline.reads);
        counter(PIPELINE_FALLBACKS, pipeline.fallbacks);
        counter(PIPELINE_RECONNECTS, pipeline.reconnects);
        counter(REPLAY_CACHE_EVICTED, replay.evicted);
        counter(REPLAY_CACHE_UNREMEMBERED, replay.unremembered);
        // Make the counters visible before their first increment, so dashboards and alerts
        // see a 0 rather than "no data".
        for name in [LOAD_SHED, REPLAY_NONCES_DELETED] {
            self.recorder
                .register_counter(&Key::from_name(name), &METADATA)
                .increment(0);
        }
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
