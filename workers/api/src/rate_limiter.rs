//! `RateLimiter`: one Durable Object per limited key (e.g. `login-ip:203.0.113.9`).
//!
//! A Durable Object gives each key a single writer, so concurrent requests cannot race past a
//! limit, and its storage survives restarts (unlike an in-memory counter). The decision logic is
//! `callmeback_domain::ratelimit`; this wrapper only loads and saves the log, and sets an alarm to
//! forget the key once nothing in it can matter any more.
//!
//! Protocol (internal; only the Worker calls it): `POST /` with
//! `{"action": "check" | "record" | "reset", "policy": {"max_events", "window_secs"}}`, answered
//! with a [`Decision`](callmeback_domain::Decision) as JSON.

use std::cell::RefCell;
use std::time::Duration;

use callmeback_domain::{Decision, RateLimitPolicy, SlidingWindowLog};
use serde::{Deserialize, Serialize};
use worker::{
    DurableObject, Env, Method, ObjectNamespace, Request, RequestInit, Response, Result, State,
    durable_object,
};

const EVENTS_KEY: &str = "events";

/// What a caller asks of a limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Would one more event be allowed? (Changes nothing.)
    Check,
    /// Count one event (e.g. a failed login) and answer for the next.
    Record,
    /// Forget every event (e.g. after a successful login).
    Reset,
}

#[derive(Debug, Serialize, Deserialize)]
struct LimiterRequest {
    action: Action,
    policy: RateLimitPolicy,
}

// State holds JS handles without Debug; the macro-generated glue needs none either.
#[allow(missing_debug_implementations)]
#[durable_object]
pub struct RateLimiter {
    state: State,
    /// Loaded from storage on first use; `None` until then.
    log: RefCell<Option<SlidingWindowLog>>,
}

impl DurableObject for RateLimiter {
    fn new(state: State, _env: Env) -> Self {
        Self {
            state,
            log: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let Ok(LimiterRequest { action, policy }) = req.json().await else {
            return Response::error("bad limiter request", 400);
        };
        if !policy.is_valid() {
            return Response::error("invalid policy", 400);
        }
        self.ensure_loaded().await?;
        // The Workers clock never reads before 1970.
        let now = u64::try_from(crate::time::now_secs()).unwrap_or(0);
        // The borrow ends before any await below.
        let (decision, snapshot, expires_at) = {
            let mut slot = self.log.borrow_mut();
            let log = slot.get_or_insert_with(SlidingWindowLog::default);
            let decision = match action {
                Action::Check => log.check(policy, now),
                Action::Record => log.record(policy, now),
                Action::Reset => {
                    log.clear();
                    Decision::Allowed {
                        remaining: policy.max_events,
                    }
                }
            };
            (decision, log.events().to_vec(), log.expires_at(policy))
        };
        let storage = self.state.storage();
        if action != Action::Check {
            if snapshot.is_empty() {
                storage.delete(EVENTS_KEY).await?;
            } else {
                storage.put(EVENTS_KEY, &snapshot).await?;
            }
        }
        if let Some(expires_at) = expires_at
            && action == Action::Record
        {
            storage
                .set_alarm(Duration::from_secs(expires_at.saturating_sub(now).max(1)))
                .await?;
        }
        Response::from_json(&decision)
    }

    async fn alarm(&self) -> Result<Response> {
        // Every event has left its window: nothing is worth keeping.
        self.state.storage().delete_all().await?;
        self.log.replace(Some(SlidingWindowLog::default()));
        Response::ok("cleared")
    }
}

impl RateLimiter {
    async fn ensure_loaded(&self) -> Result<()> {
        if self.log.borrow().is_some() {
            return Ok(());
        }
        let stored: Option<Vec<u64>> = self.state.storage().get(EVENTS_KEY).await?;
        let mut slot = self.log.borrow_mut();
        if slot.is_none() {
            *slot = Some(SlidingWindowLog::from_events(stored.unwrap_or_default()));
        }
        Ok(())
    }
}

/// Asks the limiter for `key` (from the Worker side).
pub async fn ask(
    namespace: &ObjectNamespace,
    key: &str,
    action: Action,
    policy: RateLimitPolicy,
) -> Result<Decision> {
    let stub = namespace.id_from_name(key)?.get_stub()?;
    let body = serde_json::to_string(&LimiterRequest { action, policy })?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(body.into()));
    // The host is never resolved: a stub routes by object id; the URL only has to parse.
    let request = Request::new_with_init("https://rate-limiter.internal/", &init)?;
    let mut response = stub.fetch_with_request(request).await?;
    if response.status_code() != 200 {
        return Err(worker::Error::RustError(format!(
            "rate limiter answered {}",
            response.status_code()
        )));
    }
    response.json().await
}
