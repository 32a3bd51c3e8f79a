//! `RateLimiter`: one Durable Object per limited key (e.g. `login-ip:203.0.113.9`).
//!
//! A Durable Object gives each key a single writer, so concurrent requests cannot race past a
//! limit, and its storage survives restarts (unlike an in-memory counter). The decision logic is
//! `callmeback_domain::ratelimit`; this wrapper only loads and saves the log (a list of unix
//! seconds under `events`), and sets an alarm to forget the key once nothing in it can matter any
//! more. Callers use the client in [`crate::limits`], never this protocol directly.
//!
//! Protocol (internal; only the Worker calls it): `POST /` with
//! `{"action": "check" | "record" | "reset" | "take" | "release", "policy": {"max_events",
//! "window_secs"}, "at"?}`, answered with a [`Take`](callmeback_domain::Take) for `take` and a
//! `Decision` for everything else.

use std::cell::RefCell;
use std::time::Duration;

use callmeback_domain::{Decision, RateLimitPolicy, SlidingWindowLog};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use worker::{DurableObject, Env, Request, Response, Result, State, durable_object};

const EVENTS_KEY: &str = "events";

/// What a caller asks of a limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    /// Would one more event be allowed? (Changes nothing.)
    Check,
    /// Count one event (e.g. a failed login) and answer for the next.
    Record,
    /// Forget every event (e.g. after a successful login).
    Reset,
    /// Count one event if it is allowed, in the same step as the check.
    Take,
    /// Remove one event recorded at `at`.
    Release,
}

/// One request to a limiter.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LimiterRequest {
    pub(crate) action: Action,
    pub(crate) policy: RateLimitPolicy,
    /// The event to remove (`release` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) at: Option<u64>,
}

// State holds JS handles without Debug; the macro-generated glue needs none either.
#[allow(missing_debug_implementations)]
#[durable_object]
pub struct RateLimiter {
    state: State,
    /// Loaded from storage on first use; `None` until then.
    log: RefCell<Option<SlidingWindowLog>>,
}

/// What one action did to the log.
struct Outcome {
    answer: Value,
    /// Whether the log must be saved.
    changed: bool,
    /// Whether an event was added (so the alarm must cover it).
    added: bool,
}

impl DurableObject for RateLimiter {
    fn new(state: State, _env: Env) -> Self {
        Self {
            state,
            log: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let Ok(LimiterRequest { action, policy, at }) = req.json().await else {
            return Response::error("bad limiter request", 400);
        };
        if !policy.is_valid() {
            return Response::error("invalid policy", 400);
        }
        if action == Action::Release && at.is_none() {
            return Response::error("release needs `at`", 400);
        }
        self.ensure_loaded().await?;
        // The Workers clock never reads before 1970.
        let now = u64::try_from(crate::time::now_secs()).unwrap_or(0);
        // The borrow ends before any await below.
        let (outcome, snapshot, expires_at) = {
            let mut slot = self.log.borrow_mut();
            let log = slot.get_or_insert_with(SlidingWindowLog::default);
            let outcome = apply(log, action, policy, at, now)?;
            (outcome, log.events().to_vec(), log.expires_at(policy))
        };
        let storage = self.state.storage();
        if outcome.changed {
            if snapshot.is_empty() {
                storage.delete(EVENTS_KEY).await?;
            } else {
                storage.put(EVENTS_KEY, &snapshot).await?;
            }
        }
        if let Some(expires_at) = expires_at
            && outcome.added
        {
            storage
                .set_alarm(Duration::from_secs(expires_at.saturating_sub(now).max(1)))
                .await?;
        }
        Response::from_json(&outcome.answer)
    }

    async fn alarm(&self) -> Result<Response> {
        // Every event has left its window: nothing is worth keeping.
        self.state.storage().delete_all().await?;
        self.log.replace(Some(SlidingWindowLog::default()));
        Response::ok("cleared")
    }
}

/// Carries out one action on the log (no I/O).
fn apply(
    log: &mut SlidingWindowLog,
    action: Action,
    policy: RateLimitPolicy,
    at: Option<u64>,
    now: u64,
) -> Result<Outcome> {
    let (answer, changed, added) = match action {
        Action::Check => (json(log.check(policy, now))?, false, false),
        Action::Record => (json(log.record(policy, now))?, true, true),
        Action::Reset => {
            log.clear();
            let allowed = Decision::Allowed {
                remaining: policy.max_events,
            };
            (json(allowed)?, true, false)
        }
        Action::Take => {
            let take = log.take(policy, now);
            (json(take)?, take.is_taken(), take.is_taken())
        }
        Action::Release => {
            let released = at.is_some_and(|at| log.release(at));
            (json(log.check(policy, now))?, released, false)
        }
    };
    Ok(Outcome {
        answer,
        changed,
        added,
    })
}

fn json(answer: impl Serialize) -> Result<Value> {
    Ok(serde_json::to_value(answer)?)
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const P: RateLimitPolicy = RateLimitPolicy {
        max_events: 2,
        window_secs: 60,
    };

    fn run(log: &mut SlidingWindowLog, action: Action, at: Option<u64>, now: u64) -> Outcome {
        apply(log, action, P, at, now).expect("answers serialise")
    }

    #[test]
    fn take_saves_and_arms_the_alarm_only_when_it_records() {
        let mut log = SlidingWindowLog::default();
        let first = run(&mut log, Action::Take, None, 100);
        assert_eq!(
            first.answer,
            json!({"decision": "taken", "remaining": 1, "at": 100})
        );
        assert!(first.changed && first.added);
        run(&mut log, Action::Take, None, 101);
        let refused = run(&mut log, Action::Take, None, 102);
        assert_eq!(
            refused.answer,
            json!({"decision": "limited", "retry_after_secs": 58})
        );
        assert!(!refused.changed && !refused.added);
        assert_eq!(log.events(), &[100, 101]);
    }

    #[test]
    fn release_removes_the_named_event_and_answers_for_the_next() {
        let mut log = SlidingWindowLog::from_events(vec![100, 101]);
        let released = run(&mut log, Action::Release, Some(101), 102);
        assert_eq!(
            released.answer,
            json!({"decision": "allowed", "remaining": 1})
        );
        assert!(released.changed && !released.added);
        assert_eq!(log.events(), &[100]);
        let again = run(&mut log, Action::Release, Some(101), 102);
        assert!(!again.changed, "nothing left to give back");
    }

    #[test]
    fn check_record_and_reset_keep_their_protocol() {
        let mut log = SlidingWindowLog::default();
        let check = run(&mut log, Action::Check, None, 100);
        assert_eq!(check.answer, json!({"decision": "allowed", "remaining": 2}));
        assert!(!check.changed);
        let record = run(&mut log, Action::Record, None, 100);
        assert_eq!(
            record.answer,
            json!({"decision": "allowed", "remaining": 1})
        );
        assert!(record.changed && record.added);
        let reset = run(&mut log, Action::Reset, None, 100);
        assert_eq!(reset.answer, json!({"decision": "allowed", "remaining": 2}));
        assert!(reset.changed && log.events().is_empty());
    }
}
