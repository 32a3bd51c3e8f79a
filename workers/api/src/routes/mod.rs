//! HTTP routing for the Worker: route tables as data, one dispatch function.
//!
//! Each service module (`health`, …) declares its routes in a `ROUTES` table of [`RouteDef`]s and
//! handles them in its `handle` function. Keeping routes as data lets one place do what every route
//! needs (CORS, method checks, authentication, JSON errors) and lets a test check the OpenAPI
//! document against the router. Handlers return `Result<Response, ApiError>`; [`dispatch`] renders
//! errors as JSON, so no route can answer with an HTML error page or a bare 500. A handler gets a
//! [`RouteRequest`]: the context, the request, its path parameters and (for `User`/`Admin`
//! routes) the verified session.
//!
//! Services: `health`, `meta` (the OpenAPI document), `auth`, `personas/` (catalogue,
//! relationships, admin), `billing/` (credits, budget, stripe, admin_stats), `calls`,
//! `schedules`, `live`, `me` (call preferences, personas' memories) and `twilio` (Twilio's
//! webhooks and media stream); the two larger services are directories with one module per
//! sub-resource and the route table in `mod.rs`.

mod auth;
mod billing;
mod calls;
mod health;
mod live;
mod me;
mod meta;
mod personas;
mod schedules;
mod twilio;

use std::rc::Rc;

use worker::{Env, Method, Request, Response};

use crate::ctx::RequestCtx;
use crate::error::ApiError;
pub use crate::session::Access;
use crate::session::{self, Session};

/// Which module handles a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Health,
    /// Register, login, logout, me; admin role changes.
    Auth,
    /// Personas, the caller's relationships with them, scenario templates; their admin.
    Personas,
    /// Credits, ledger, budgets, Stripe webhooks, admin reports.
    Billing,
    /// The API description itself.
    Meta,
    /// Placing, listing and ending phone calls; a number's rate limit.
    Calls,
    /// Scheduled and recurring calls.
    Schedules,
    /// The app's live channel.
    Live,
    /// Call preferences and personas' memories.
    Me,
    /// Twilio's webhooks and media stream.
    Twilio,
}

/// One route: method + path pattern (`{name}` marks a path parameter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDef {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub service: Service,
    /// Stable id of the route, also the OpenAPI `operationId`.
    pub name: &'static str,
}

impl RouteDef {
    pub const fn new(
        method: Method,
        path: &'static str,
        access: Access,
        service: Service,
        name: &'static str,
    ) -> Self {
        Self {
            method,
            path,
            access,
            service,
            name,
        }
    }
}

/// Every route table, in matching order.
pub const TABLES: &[&[RouteDef]] = &[
    health::ROUTES,
    meta::ROUTES,
    auth::ROUTES,
    personas::ROUTES,
    billing::ROUTES,
    calls::ROUTES,
    schedules::ROUTES,
    live::ROUTES,
    me::ROUTES,
    twilio::ROUTES,
];

/// Iterates every route.
pub fn all_routes() -> impl Iterator<Item = &'static RouteDef> {
    TABLES.iter().flat_map(|table| table.iter())
}

/// Path parameters of a matched route, in pattern order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PathParams(Vec<(&'static str, String)>);

impl PathParams {
    /// The value of `{name}`; routes only ask for names their pattern has.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }
}

/// Matches a path against a pattern, collecting `{param}` segments.
pub fn match_path(pattern: &'static str, path: &str) -> Option<PathParams> {
    let mut params = Vec::new();
    let mut pattern_segments = pattern.trim_matches('/').split('/');
    let mut path_segments = path
        .trim_end_matches('/')
        .trim_start_matches('/')
        .split('/');
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (None, None) => return Some(PathParams(params)),
            (Some(p), Some(s)) if p.starts_with('{') && p.ends_with('}') => {
                if s.is_empty() {
                    return None;
                }
                params.push((&p[1..p.len() - 1], s.to_owned()));
            }
            (Some(p), Some(s)) if p == s => {}
            _ => return None,
        }
    }
}

/// The route for a method and path: 404 when no pattern matches, 405 when only the method differs.
pub fn resolve(method: &Method, path: &str) -> Result<(&'static RouteDef, PathParams), ApiError> {
    let mut path_known = false;
    for route in all_routes() {
        if let Some(params) = match_path(route.path, path) {
            if route.method == *method {
                return Ok((route, params));
            }
            path_known = true;
        }
    }
    Err(if path_known {
        ApiError::method_not_allowed()
    } else {
        ApiError::not_found()
    })
}

/// The answer for a method the API does not route: 405 on a known path, 404 elsewhere.
fn unroutable(path: &str) -> ApiError {
    if all_routes().any(|route| match_path(route.path, path).is_some()) {
        ApiError::method_not_allowed()
    } else {
        ApiError::not_found()
    }
}

/// What a handler receives.
#[derive(Debug)]
pub struct RouteRequest {
    pub ctx: RequestCtx,
    pub req: Request,
    pub params: PathParams,
    /// Present for `Access::User` and `Access::Admin` routes.
    pub session: Option<Session>,
}

impl RouteRequest {
    /// The session of an authenticated route (the dispatcher guarantees it for User/Admin routes).
    pub fn session(&self) -> Result<&Session, ApiError> {
        self.session.as_ref().ok_or_else(session::unauthorized)
    }
}

/// The request's method exactly as sent, if it is one the API can route. workers-rs maps any
/// method it does not know to `GET` (`Method::from(String)`), so `PROPFIND /api/auth/me` used to run
/// as a `GET`; the runtime's own string is read instead, and matching is exact (methods are
/// case-sensitive, RFC 9110 §9.1). `None` answers 405 on a known path, else 404.
///
/// (`CONNECT` never gets here: workerd refuses an incoming CONNECT before any handler runs.)
pub fn routable_method(raw: &str) -> Option<Method> {
    Some(match raw {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        _ => return None,
    })
}

/// Routes a request to its handler and renders any error as JSON.
pub async fn dispatch(req: Request, env: Env, request_id: String) -> Response {
    let ctx = RequestCtx::new(env, &req, request_id);
    let origin = req.headers().get("origin").ok().flatten();
    let config = Rc::clone(&ctx.config);
    let method = routable_method(&req.inner().method());
    if method == Some(Method::Options) {
        return config
            .cors
            .preflight(origin.as_deref())
            .unwrap_or_else(|error| ApiError::from(error).into_response());
    }
    let response = match route(method, req, ctx).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    config.cors.apply(&response, origin.as_deref());
    response
}

async fn route(
    method: Option<Method>,
    req: Request,
    ctx: RequestCtx,
) -> Result<Response, ApiError> {
    let (route, params) = match method {
        Some(method) => resolve(&method, &req.path())?,
        None => return Err(unroutable(&req.path())),
    };
    let session = match route.access {
        Access::Public => None,
        Access::User | Access::Admin => Some(session::authenticate(&ctx, &req, route.access)?),
    };
    let request = RouteRequest {
        ctx,
        req,
        params,
        session,
    };
    match route.service {
        Service::Health => health::handle(route, request).await,
        Service::Auth => auth::handle(route, request).await,
        Service::Personas => personas::handle(route, request).await,
        Service::Billing => billing::handle(route, request).await,
        Service::Meta => meta::handle(route, request).await,
        Service::Calls => calls::handle(route, request).await,
        Service::Schedules => schedules::handle(route, request).await,
        Service::Live => live::handle(route, request).await,
        Service::Me => me::handle(route, request).await,
        Service::Twilio => twilio::handle(route, request).await,
    }
}

/// A JSON response with the given status.
fn json_response(status: u16, body: &serde_json::Value) -> Result<Response, ApiError> {
    Ok(Response::from_json(body)?.with_status(status))
}

/// 16 random bytes (for ids and token ids), from Web Crypto.
fn random_16() -> Result<[u8; 16], ApiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| {
        worker::console_error!("no randomness available for an id");
        ApiError::internal()
    })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_literal_and_parameter_segments() {
        assert_eq!(
            match_path("/health", "/health"),
            Some(PathParams::default())
        );
        assert_eq!(
            match_path("/health", "/health/"),
            Some(PathParams::default())
        );
        let params = match_path("/api/personas/{id}", "/api/personas/brad").expect("matches");
        assert_eq!(params.get("id"), "brad");
        assert_eq!(match_path("/api/personas/{id}", "/api/personas/"), None);
        assert_eq!(
            match_path("/api/personas/{id}", "/api/personas/brad/extra"),
            None
        );
        assert_eq!(match_path("/api/personas", "/api/personas/brad"), None);
    }

    #[test]
    fn resolve_distinguishes_unknown_paths_from_wrong_methods() {
        assert_eq!(
            resolve(&Method::Get, "/nope").unwrap_err().code,
            "not_found"
        );
        assert_eq!(
            resolve(&Method::Post, "/health").unwrap_err().code,
            "method_not_allowed"
        );
        assert_eq!(
            resolve(&Method::Get, "/health").expect("route").0.name,
            "health"
        );
    }

    #[test]
    fn only_methods_sent_exactly_are_routed() {
        assert_eq!(routable_method("GET"), Some(Method::Get));
        assert_eq!(routable_method("DELETE"), Some(Method::Delete));
        for other in [
            "get", "Get", "PROPFIND", "TRACE", "CONNECT", "QUERY", "", "GET ",
        ] {
            assert_eq!(routable_method(other), None, "{other:?}");
        }
        assert_eq!(unroutable("/api/personas").code, "method_not_allowed");
        assert_eq!(unroutable("/api/personas/brad").status, 405);
        assert_eq!(unroutable("/nope").code, "not_found");
    }

    #[test]
    fn route_names_are_unique_and_patterns_do_not_shadow_each_other() {
        let routes: Vec<_> = all_routes().collect();
        for (i, a) in routes.iter().enumerate() {
            for b in &routes[i + 1..] {
                assert_ne!(a.name, b.name, "duplicate route name");
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "duplicate route {} {}",
                    a.method,
                    a.path
                );
            }
        }
    }
}
