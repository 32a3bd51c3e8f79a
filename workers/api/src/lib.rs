//! The callmeback Worker: the HTTP routes the frontend and Twilio call.
//!
//! Thin glue over pure crates: business rules live in `callmeback-domain`, request signing in
//! `callmeback-signing`, the gateway contract in `callmeback-gateway-api`. This crate reads the
//! request, calls the gateway, and renders JSON.
//!
//! Modules, lowest first (none depends on one further down this list):
//! - [`time`]: the clock (JavaScript's, the only one there is) and RFC 3339 formatting;
//! - [`cors`]: CORS headers for the configured origins;
//! - [`config`]: the typed [`config::Config`] (vars and secrets), read once per isolate, with
//!   its own [`config::ConfigError`];
//! - [`gateway`]: signed, time-bounded calls to db-gateway, built from a `Config` section;
//!   failures are [`gateway::GatewayError`]s;
//! - [`rate_limiter`]: the `RateLimiter` Durable Object; [`limits`]: its client (keys,
//!   check/record/reset, atomic take, release);
//! - [`error`]: [`error::ApiError`], the one error type of the HTTP boundary, and how
//!   configuration, gateway and limiter errors become one;
//! - [`rows`]: reading gateway rows (`int8` digit strings, missing rows);
//! - [`ctx`]: per-request context (config, client address, request id) and body reading;
//! - [`session`]: who is calling ([`session::Access`], tokens, the guard operations);
//! - [`pagination`]: keyset pages (`?limit=&cursor=`) of growing lists;
//! - [`outbound`]: outbound WebSockets with headers and bounded requests (providers, Twilio);
//! - [`telephony`]: Twilio's REST API (place and end calls);
//! - [`live`]: the `UserHub` Durable Object (the app's live channel) and its client;
//! - [`call_session`]: the `CallSession` Durable Object, one per call: the media stream, the
//!   providers and the conversation engine, limits, finalisation exactly once;
//! - [`placing`]: placing a call, the path shared by `POST /api/calls` and the scheduler;
//! - [`scheduler`]: the cron trigger (scheduled calls, housekeeping);
//! - [`routes`]: the route table and handlers, one module per service.
//!
//! Durable Objects and other code without a request reach the same configuration and gateway
//! with `Config::get(&env)` and `Gateway::from_env(&env, id)`, and never touch `ApiError`.

pub mod call_session;
pub mod config;
pub mod cors;
pub mod ctx;
pub mod error;
pub mod gateway;
pub mod limits;
pub mod live;
pub mod outbound;
pub mod pagination;
pub mod placing;
pub mod rate_limiter;
pub mod routes;
pub mod rows;
pub mod scheduler;
pub mod session;
pub mod telephony;
pub mod time;

use worker::{Context, Env, Request, Response, ScheduleContext, ScheduledEvent, event};

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

/// The cron trigger (`[triggers] crons` in wrangler.toml): scheduled calls and housekeeping.
#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    scheduler::run(&env, event.schedule()).await;
}

/// A caller-supplied request id is echoed and logged, so it must be short and plain.
fn is_acceptable_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
