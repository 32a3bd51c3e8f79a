//! HTTP routing for the Worker: one table of routes, one dispatch function.
//!
//! Handlers return `Result<Response, ApiError>`; [`dispatch`] turns errors into JSON responses, so
//! no route can answer with an HTML error page or a bare 500.

mod health;

use worker::{Env, Method, Request, Response};

use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::gateway::Gateway;

/// Routes a request to its handler.
pub async fn dispatch(req: Request, env: Env, request_id: String) -> Response {
    let path = req.path();
    let method = req.method();
    let result = route(&method, &path, req, &env, request_id).await;
    result.unwrap_or_else(ApiError::into_response)
}

async fn route(
    method: &Method,
    path: &str,
    _req: Request,
    env: &Env,
    request_id: String,
) -> Result<Response, ApiError> {
    match (method, path) {
        (Method::Get, "/health") => {
            let gateway = Gateway::new(GatewayConfig::from_env(env)?, request_id);
            health::health(&gateway).await
        }
        (_, "/health") => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::not_found()),
    }
}
