//! The rate-limiter client: every limited key, and the calls to its `RateLimiter` object.
//!
//! One Durable Object per [`LimitKey`] (see [`crate::rate_limiter`]) keeps a sliding-window log of
//! that key's events; the rules are `callmeback_domain::ratelimit`. Two ways to use it:
//! - [`Limiter::check`] before and [`Limiter::record`] after, for events that count only once
//!   their outcome is known (a failed login), with [`Limiter::reset`] to forget them;
//! - [`Limiter::take`], which checks and records in one Durable Object call, for events that
//!   count as soon as they start. The object runs one request at a time per key, so two
//!   concurrent takes never both get the last slot. A slot taken for something that then did not
//!   happen (a phone call the provider refused) goes back with [`Limiter::release`], naming the
//!   time `take` recorded.
//!
//! Nothing here knows HTTP: failures are [`LimiterError`]s (`ApiError: From<LimiterError>`), so a
//! Durable Object or a scheduled handler uses the same client.

use std::fmt;

use callmeback_domain::{Decision, RateLimitPolicy, Take, client_network};
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};
use worker::{Env, Method, ObjectNamespace, Request, RequestInit};

use crate::rate_limiter::{Action, LimiterRequest};

/// The Durable Object namespace binding (`wrangler.toml`).
const BINDING: &str = "RATE_LIMITER";

/// The name of one limited thing: the Durable Object that counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKey(String);

impl LimitKey {
    /// Failed logins from one client network (IPv4 address or IPv6 /64, see
    /// `callmeback_domain::network`).
    pub fn login_ip(ip: &str) -> Self {
        Self(format!("login-ip:{}", client_network(ip)))
    }

    /// Failed logins of one account from devices it does not trust, named by its
    /// `callmeback_auth::account_ref` (a SHA-256 of the normalised email), never the address, so
    /// no address becomes an object name.
    pub fn login_account(account_ref: &str) -> Self {
        Self(format!("login-account:{account_ref}"))
    }

    /// Failed logins of one account from one device it trusts (a valid device token): a hash of
    /// the account reference and the device id.
    pub fn login_device(account_ref: &str, device_id: &str) -> Self {
        let mut digest = Sha256::new();
        digest.update(account_ref.as_bytes());
        digest.update(b"|");
        digest.update(device_id.as_bytes());
        Self(format!("login-device:{}", hex::encode(digest.finalize())))
    }

    /// Registration attempts from one client network (IPv4 address or IPv6 /64).
    pub fn register_ip(ip: &str) -> Self {
        Self(format!("register-ip:{}", client_network(ip)))
    }

    /// Calls to one phone number, by the number's keyed hash
    /// (`callmeback_domain::calls::phone_key`): the number itself never names an object.
    pub fn phone(phone_key: &str) -> Self {
        Self(format!("phone:{phone_key}"))
    }

    /// Call requests of one user.
    pub fn call_requests_user(user_id: &str) -> Self {
        Self(format!("calls-user:{user_id}"))
    }

    /// Call requests from one client network (IPv4 address or IPv6 /64).
    pub fn call_requests_ip(ip: &str) -> Self {
        Self(format!("calls-ip:{}", client_network(ip)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the limiter could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimiterError {
    /// The `RATE_LIMITER` binding is missing: a deploy mistake.
    #[error("RATE_LIMITER binding missing: {0}")]
    Binding(String),
    /// The object did not answer, or answered outside the protocol. Callers fail closed.
    #[error("rate limiter failed: {0}")]
    Unavailable(String),
}

/// A client of the `RATE_LIMITER` namespace.
#[derive(Debug)]
pub struct Limiter {
    namespace: ObjectNamespace,
}

impl Limiter {
    pub fn from_env(env: &Env) -> Result<Self, LimiterError> {
        env.durable_object(BINDING)
            .map(|namespace| Self { namespace })
            .map_err(|error| LimiterError::Binding(error.to_string()))
    }

    /// Would one more event be allowed? Changes nothing.
    pub async fn check(
        &self,
        key: &LimitKey,
        policy: RateLimitPolicy,
    ) -> Result<Decision, LimiterError> {
        self.ask(key, Action::Check, policy, None).await
    }

    /// Counts one event now (even past the limit) and answers for the next one.
    pub async fn record(
        &self,
        key: &LimitKey,
        policy: RateLimitPolicy,
    ) -> Result<Decision, LimiterError> {
        self.ask(key, Action::Record, policy, None).await
    }

    /// Forgets every event of the key.
    pub async fn reset(
        &self,
        key: &LimitKey,
        policy: RateLimitPolicy,
    ) -> Result<Decision, LimiterError> {
        self.ask(key, Action::Reset, policy, None).await
    }

    /// Checks and records in one step: [`Take::Taken`] (recorded, with how many remain and the
    /// recorded event's time) or [`Take::Limited`] (nothing recorded).
    pub async fn take(
        &self,
        key: &LimitKey,
        policy: RateLimitPolicy,
    ) -> Result<Take, LimiterError> {
        self.ask(key, Action::Take, policy, None).await
    }

    /// Gives back one event recorded at `at` (the time [`Take::Taken`] reported) and answers for
    /// the next one. Releasing an event that has left the window, or was never recorded, changes
    /// nothing.
    pub async fn release(
        &self,
        key: &LimitKey,
        policy: RateLimitPolicy,
        at: u64,
    ) -> Result<Decision, LimiterError> {
        self.ask(key, Action::Release, policy, Some(at)).await
    }

    async fn ask<T: DeserializeOwned>(
        &self,
        key: &LimitKey,
        action: Action,
        policy: RateLimitPolicy,
        at: Option<u64>,
    ) -> Result<T, LimiterError> {
        let unavailable = |error: worker::Error| LimiterError::Unavailable(error.to_string());
        let stub = self
            .namespace
            .id_from_name(key.as_str())
            .and_then(|id| id.get_stub())
            .map_err(unavailable)?;
        let body = serde_json::to_string(&LimiterRequest { action, policy, at })
            .map_err(|error| LimiterError::Unavailable(error.to_string()))?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post).with_body(Some(body.into()));
        // The host is never resolved: a stub routes by object id; the URL only has to parse.
        let request =
            Request::new_with_init("https://rate-limiter.internal/", &init).map_err(unavailable)?;
        let mut response = stub
            .fetch_with_request(request)
            .await
            .map_err(unavailable)?;
        if response.status_code() != 200 {
            return Err(LimiterError::Unavailable(format!(
                "rate limiter answered {}",
                response.status_code()
            )));
        }
        response.json().await.map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_and_device_keys_hash_the_email() {
        let ada = callmeback_auth::account_ref("ada@example.com");
        let bob = callmeback_auth::account_ref("bob@example.com");
        let key = LimitKey::login_account(&ada);
        let key = key.as_str();
        assert!(key.starts_with("login-account:"));
        assert!(!key.contains("ada"));
        assert_eq!(key.len(), "login-account:".len() + 64);
        assert_eq!(key, LimitKey::login_account(&ada).as_str());
        assert_ne!(key, LimitKey::login_account(&bob).as_str());

        let device = LimitKey::login_device(&ada, "dev_1");
        assert!(device.as_str().starts_with("login-device:"));
        assert_eq!(device.as_str().len(), "login-device:".len() + 64);
        assert_ne!(device, LimitKey::login_device(&ada, "dev_2"));
        assert_ne!(device, LimitKey::login_device(&bob, "dev_1"));
    }

    #[test]
    fn address_keys_name_the_client_network() {
        assert_eq!(
            LimitKey::login_ip("203.0.113.9").as_str(),
            "login-ip:203.0.113.9"
        );
        assert_eq!(
            LimitKey::register_ip("203.0.113.9").to_string(),
            "register-ip:203.0.113.9"
        );
        // IPv6 per /64, in whatever spelling the header carries.
        for ip in [
            "2001:db8:7:8::1",
            "2001:DB8:7:8:ffff::2",
            "[2001:db8:7:8::3]",
        ] {
            assert_eq!(
                LimitKey::login_ip(ip).as_str(),
                "login-ip:2001:db8:7:8::/64"
            );
            assert_eq!(
                LimitKey::register_ip(ip).as_str(),
                "register-ip:2001:db8:7:8::/64"
            );
        }
        assert_eq!(
            LimitKey::login_ip("::ffff:203.0.113.9"),
            LimitKey::login_ip("203.0.113.9")
        );
        assert_eq!(LimitKey::login_ip("garbage").as_str(), "login-ip:unknown");
        assert_eq!(
            LimitKey::call_requests_ip("2001:db8:7:8::9").as_str(),
            "calls-ip:2001:db8:7:8::/64"
        );
    }

    #[test]
    fn requests_name_their_action_and_carry_at_only_for_release() {
        let policy = RateLimitPolicy::REGISTRATIONS_PER_IP;
        let take = LimiterRequest {
            action: Action::Take,
            policy,
            at: None,
        };
        assert_eq!(
            serde_json::to_value(&take).unwrap(),
            serde_json::json!({"action": "take", "policy": {"max_events": 20, "window_secs": 3600}})
        );
        let release = LimiterRequest {
            action: Action::Release,
            policy,
            at: Some(7),
        };
        assert_eq!(serde_json::to_value(&release).unwrap()["at"], 7);
    }
}
