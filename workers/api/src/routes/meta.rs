//! The API's own description: `GET /api/openapi.json`.
//!
//! The document is a checked-in file (`workers/api/openapi.json`) compiled into the Worker. A unit
//! test below holds it to the router: every route is documented with its `operationId`, and the
//! document names no route the router lacks.

use worker::Response;

use super::{Access, RouteDef, RouteRequest, Service};
use crate::error::ApiError;

/// The OpenAPI 3.1 document, as served.
pub(crate) const OPENAPI_JSON: &str = include_str!("../../openapi.json");

pub(super) const ROUTES: &[RouteDef] = &[RouteDef::new(
    worker::Method::Get,
    "/api/openapi.json",
    Access::Public,
    Service::Meta,
    "getOpenApi",
)];

pub(super) async fn handle(_route: &RouteDef, _call: RouteRequest) -> Result<Response, ApiError> {
    let response = Response::ok(OPENAPI_JSON)?;
    response.headers().set("content-type", "application/json")?;
    response
        .headers()
        .set("cache-control", "public, max-age=300")?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::OPENAPI_JSON;
    use crate::routes::all_routes;

    const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

    #[test]
    fn openapi_document_matches_the_router_exactly() {
        let doc: Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is valid JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths object") {
            for method in METHODS {
                if let Some(operation) = item.get(*method) {
                    let id = operation["operationId"]
                        .as_str()
                        .expect("every operation has an operationId");
                    documented.insert((method.to_uppercase(), path.clone(), id.to_owned()));
                }
            }
        }
        let routed: BTreeSet<_> = all_routes()
            .map(|r| {
                (
                    r.method.to_string().to_uppercase(),
                    r.path.to_owned(),
                    r.name.to_owned(),
                )
            })
            .collect();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from openapi.json: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "openapi.json documents routes the router lacks: {unrouted:?}"
        );
    }

    #[test]
    fn authenticated_operations_declare_bearer_security() {
        let doc: Value = serde_json::from_str(OPENAPI_JSON).expect("valid JSON");
        for route in all_routes() {
            let op = &doc["paths"][route.path][route.method.to_string().to_lowercase()];
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            assert_eq!(
                secured,
                route.access != crate::routes::Access::Public,
                "{} {}: security must match access {:?}",
                route.method,
                route.path,
                route.access
            );
        }
    }
}
