//! Admin endpoints: liveness, readiness (a pooled `SELECT 1` within one second) and metrics.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use deadpool_postgres::Timeouts;
use serde_json::json;

use super::AppState;
use crate::error::ApiError;

/// Readiness must answer quickly even when the database hangs.
const READY_BUDGET: Duration = Duration::from_secs(1);

/// The process is up and serving HTTP.
pub(super) async fn live() -> Response {
    Json(json!({"status": "live"})).into_response()
}

/// The gateway can reach Postgres. Waits up to its own one-second budget for a connection
/// rather than the request wait limit, so a brief burst of load shedding does not flap
/// readiness.
pub(super) async fn ready(State(state): State<AppState>) -> Response {
    let timeouts = Timeouts {
        wait: Some(READY_BUDGET),
        create: Some(READY_BUDGET),
        recycle: Some(READY_BUDGET),
    };
    let probe = async {
        let client = state
            .pool
            .timeout_get(&timeouts)
            .await
            .map_err(|error| error.to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|error| error.to_string())?;
        Ok::<_, String>(())
    };
    match tokio::time::timeout(READY_BUDGET, probe).await {
        Ok(Ok(())) => Json(json!({"status": "ready"})).into_response(),
        Ok(Err(reason)) => {
            tracing::warn!(reason = %reason, "readiness probe failed");
            ApiError::DatabaseUnavailable { detail: reason }.into_response()
        }
        Err(_) => {
            tracing::warn!("readiness probe timed out");
            ApiError::DatabaseUnavailable {
                detail: "readiness probe timed out".to_owned(),
            }
            .into_response()
        }
    }
}

/// Prometheus text exposition.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(
        &state.pool.status(),
        &state.reads.status(),
        &state.nonces.status(),
    );
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
