//! The two HTTP listeners: the signed API and the loopback admin endpoints.
//!
//! - [`api_router`]: `POST /v1/op`, `POST /v1/batch`, behind the [`observe`] middleware (request
//!   id, one access-log line, metrics) and the [`auth`] extractor.
//! - [`admin_router`]: `GET /live`, `GET /ready`, `GET /metrics`, unauthenticated and meant to
//!   be bound to loopback.

mod admin;
mod api;
pub(crate) mod auth;
mod observe;

use std::ops::Deref;
use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use callmeback_gateway_api::{BATCH_PATH, OP_PATH};
use deadpool_postgres::Pool;

use crate::keys::KeyRing;
use crate::metrics::GatewayMetrics;
use crate::nonce::NonceCache;
use crate::ops::Registry;
use crate::pipeline::SharedReads;

/// Everything a request needs, shared by both listeners. Built once; nothing in it is re-read
/// per request.
#[derive(Debug)]
pub(crate) struct SharedState {
    pub(crate) registry: Registry,
    pub(crate) keys: KeyRing,
    pub(crate) nonces: NonceCache,
    pub(crate) pool: Pool,
    /// Single reads pipelined on shared connections (falls back to `pool`).
    pub(crate) reads: SharedReads,
    pub(crate) metrics: GatewayMetrics,
    pub(crate) public_url: Option<String>,
    pub(crate) body_limit_bytes: usize,
    pub(crate) max_skew_secs: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct AppState(Arc<SharedState>);

impl AppState {
    pub(crate) fn new(shared: SharedState) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

pub(crate) fn api_router(state: AppState) -> Router {
    Router::new()
        .route(OP_PATH, post(api::single))
        .route(BATCH_PATH, post(api::batch))
        .fallback(api::not_found)
        .layer(from_fn_with_state(state.clone(), observe::observe))
        .with_state(state)
}

pub(crate) fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/live", get(admin::live))
        .route("/ready", get(admin::ready))
        .route("/metrics", get(admin::metrics))
        .fallback(api::not_found)
        .with_state(state)
}
