//! CORS for the configured frontend origins (`CORS_ALLOWED_ORIGINS`, comma-separated).
//!
//! Only listed origins get `Access-Control-Allow-Origin`; others get no CORS headers, so browsers
//! refuse to read the response. Authentication is by bearer token, not cookies, so credentials
//! mode is not enabled.

use worker::Response;

const ALLOWED_METHODS: &str = "GET, POST, PUT, DELETE, OPTIONS";
/// `x-device-token` carries the device token to `POST /api/auth/login` (see `routes/auth.rs`).
const ALLOWED_HEADERS: &str = "authorization, content-type, x-device-token, x-request-id";
const MAX_AGE_SECS: &str = "600";

#[derive(Debug, Default)]
pub struct CorsPolicy {
    origins: Vec<String>,
}

impl CorsPolicy {
    pub fn from_list(list: &str) -> Self {
        Self {
            origins: list
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == "*" || o == origin)
    }

    /// Adds CORS headers to a response for an allowed origin.
    pub fn apply(&self, response: &Response, origin: Option<&str>) {
        if let Some(origin) = origin.filter(|o| self.allows(o)) {
            let headers = response.headers();
            let _ = headers.set("access-control-allow-origin", origin);
            let _ = headers.set("vary", "origin");
            let _ = headers.set("access-control-expose-headers", "retry-after, x-request-id");
        }
    }

    /// Answers an `OPTIONS` preflight: 204 with the allowed methods and headers for an allowed
    /// origin, plain 204 without CORS headers otherwise.
    pub fn preflight(&self, origin: Option<&str>) -> worker::Result<Response> {
        let response = Response::empty()?.with_status(204);
        if let Some(origin) = origin.filter(|o| self.allows(o)) {
            let headers = response.headers();
            let _ = headers.set("access-control-allow-origin", origin);
            let _ = headers.set("access-control-allow-methods", ALLOWED_METHODS);
            let _ = headers.set("access-control-allow-headers", ALLOWED_HEADERS);
            let _ = headers.set("access-control-max-age", MAX_AGE_SECS);
            let _ = headers.set("vary", "origin");
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_are_allowed() {
        let policy =
            CorsPolicy::from_list("https://app.callmeback.example, http://localhost:5173/");
        assert!(policy.allows("https://app.callmeback.example"));
        assert!(policy.allows("http://localhost:5173"));
        assert!(!policy.allows("https://evil.example"));
        assert!(!CorsPolicy::from_list("").allows("https://app.callmeback.example"));
    }
}
