//! The callmeback Worker: the HTTP routes the frontend and Twilio call.
//!
//! Thin glue over pure crates: business rules live in `callmeback-domain`, request signing in
//! `callmeback-signing`, the gateway contract in `callmeback-gateway-api`. This crate reads the
//! request, calls the gateway, and renders JSON.
//!
//! Modules:
//! - [`routes`]: the route table and handlers;
//! - [`gateway`]: signed, time-bounded calls to db-gateway;
//! - [`limits`]: the rate-limiter client (keys, check/record/reset, atomic take, release);
//! - [`rate_limiter`]: the `RateLimiter` Durable Object behind it;
//! - [`config`]: the typed [`config::Config`] (vars and secrets), read once per isolate;
//! - [`error`]: the one error type of the HTTP boundary.

pub mod config;
pub mod cors;
pub mod ctx;
pub mod error;
pub mod gateway;
pub mod limits;
pub mod rate_limiter;
pub mod routes;
pub mod rows;
pub mod session;
pub mod time;

use worker::{Context, Env, Request, Response, event};

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let request_id = req
        .headers()
        .get(callmeback_gateway_api::REQUEST_ID_HEADER)
        .ok()
        .flatten()
        .filter(|id| is_acceptable_request_id(id))
        .unwrap_or_else(gateway::random_nonce);
    let response = routes::dispatch(req, env, request_id.clone()).await;
    let _ = response
        .headers()
        .set(callmeback_gateway_api::REQUEST_ID_HEADER, &request_id);
    Ok(response)
}

/// A caller-supplied request id is echoed and logged, so it must be short and plain.
fn is_acceptable_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
