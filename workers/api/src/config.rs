//! The Worker's configuration, read once per request from its bindings.
//!
//! Plain vars come from `wrangler.toml` `[vars]`; secrets from `wrangler secret put` in production
//! and `.dev.vars` locally. Missing or invalid configuration is a deploy mistake, so it answers 500
//! with code `misconfigured` and names the binding in the log, never its value.

use callmeback_signing::Key;
use worker::Env;

use crate::error::ApiError;

/// How the Worker reaches db-gateway.
#[derive(Debug)]
pub struct GatewayConfig {
    /// Base URL without trailing slash, e.g. `https://db.callmeback.example`.
    pub base_url: String,
    /// The signing key (id + secret) shared with the gateway.
    pub key: Key,
    /// Bound on one gateway round trip.
    pub timeout_ms: u32,
}

impl GatewayConfig {
    pub fn from_env(env: &Env) -> Result<Self, ApiError> {
        let base_url = var(env, "GATEWAY_URL")?.trim_end_matches('/').to_owned();
        let key_id = var(env, "GATEWAY_KEY_ID")?;
        let secret_b64 = secret(env, "GATEWAY_KEY_SECRET")?;
        let secret =
            decode_base64(&secret_b64).ok_or_else(|| misconfigured("GATEWAY_KEY_SECRET"))?;
        let timeout_ms = match var(env, "GATEWAY_TIMEOUT_MS") {
            Ok(raw) => raw
                .parse()
                .map_err(|_| misconfigured("GATEWAY_TIMEOUT_MS"))?,
            Err(_) => 3000,
        };
        Ok(Self {
            base_url,
            key: Key::new(key_id, secret),
            timeout_ms,
        })
    }
}

fn var(env: &Env, name: &'static str) -> Result<String, ApiError> {
    env.var(name)
        .map(|v| v.to_string())
        .map_err(|_| misconfigured(name))
}

fn secret(env: &Env, name: &'static str) -> Result<String, ApiError> {
    env.secret(name)
        .map(|v| v.to_string())
        .map_err(|_| misconfigured(name))
}

fn misconfigured(name: &'static str) -> ApiError {
    worker::console_error!("configuration binding {name} is missing or invalid");
    ApiError::new(500, "misconfigured", "the service is misconfigured")
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}
