//! `GET /health`: is the Worker able to do its job right now?
//!
//! It makes one signed `system.ping` call through the gateway, which runs a trivial query, so a
//! 200 proves the whole path: Worker → signature → gateway → pool → Postgres. Either hop failing
//! gives a 503 that names the dependency (`gateway` or `database`), within the gateway timeout.
//!
//! The route is anonymous, so it answers statuses and the round trip's latency only: the database
//! server's version and clock (which `system.ping` returns) would tell an attacker which
//! PostgreSQL release to aim at, and are not repeated here.

use callmeback_gateway_api::ops::system;
use callmeback_gateway_api::{OpCall, codes};
use serde_json::json;
use worker::Response;

use super::{Access, RouteDef, RouteRequest, Service};
use crate::error::ApiError;
use crate::gateway::GatewayError;

pub(super) const ROUTES: &[RouteDef] = &[RouteDef::new(
    worker::Method::Get,
    "/health",
    Access::Public,
    Service::Health,
    "health",
)];

pub(super) async fn handle(_route: &RouteDef, request: RouteRequest) -> Result<Response, ApiError> {
    let gateway = request.ctx.gateway()?;
    let started = js_sys::Date::now();
    let result = gateway.call(&OpCall::of(&system::PING)).await;
    let latency_ms = (js_sys::Date::now() - started).round() as u64;
    match result {
        Ok(_) => Ok(Response::from_json(&json!({
            "status": "ok",
            "gateway": {"status": "ok", "latency_ms": latency_ms},
            "database": {"status": "ok"},
        }))?),
        Err(GatewayError::Rejected { code, .. })
            if code == codes::DATABASE_UNAVAILABLE
                || code == codes::OVERLOADED
                || code == codes::TIMEOUT =>
        {
            Err(
                ApiError::dependency_unavailable("database", "the database is not answering")
                    .with_extra("gateway", json!({"status": "ok"})),
            )
        }
        Err(GatewayError::Rejected { status, code, .. }) => {
            // 401/403 here means the Worker's key is wrong or revoked: the gateway is up but refuses us.
            worker::console_error!("health: gateway refused system.ping: {status} {code}");
            Err(ApiError::dependency_unavailable(
                "gateway",
                "db-gateway refused the Worker's request",
            ))
        }
        Err(GatewayError::Unreachable(reason)) => {
            worker::console_error!("health: gateway unreachable: {reason}");
            Err(ApiError::dependency_unavailable(
                "gateway",
                "db-gateway is unreachable",
            ))
        }
        Err(GatewayError::BadResponse(status)) => {
            worker::console_error!(
                "health: gateway answered outside the contract with status {status}"
            );
            Err(ApiError::dependency_unavailable(
                "gateway",
                "db-gateway answered unexpectedly",
            ))
        }
    }
}
