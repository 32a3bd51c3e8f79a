//! Sliding-window rate limiting, as plain data: a log of event times and a policy.
//!
//! The Worker keeps one log per limited key (a client IP, an account) inside a `RateLimiter`
//! Durable Object, which gives each key a single writer; this module decides. A sliding log is
//! exact (no burst at window edges, unlike fixed windows) and small: it never keeps more than
//! `max_events` timestamps, because older ones cannot change the answer.
//!
//! Two ways to use a log:
//! - [`check`](SlidingWindowLog::check) first, [`record`](SlidingWindowLog::record) afterwards,
//!   for events that count only once their outcome is known (a failed login);
//! - [`take`](SlidingWindowLog::take), which checks and records in one step, for events that
//!   count as soon as they start (a call placed). Because the Durable Object runs one request at a
//!   time per key, two concurrent takes can never both get the last slot. A slot taken for
//!   something that then did not happen is given back with
//!   [`release`](SlidingWindowLog::release).
//!
//! Time is passed in (unix seconds), so every rule is tested with a fake clock.

use serde::{Deserialize, Serialize};

/// At most `max_events` events per `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitPolicy {
    pub max_events: u32,
    pub window_secs: u64,
}

impl RateLimitPolicy {
    /// Failed logins per client IP: 10 per 15 minutes.
    pub const LOGIN_FAILURES_PER_IP: Self = Self {
        max_events: 10,
        window_secs: 15 * 60,
    };
    /// Failed logins per account from devices it does not trust: 10 per 15 minutes.
    pub const LOGIN_FAILURES_PER_ACCOUNT: Self = Self {
        max_events: 10,
        window_secs: 15 * 60,
    };
    /// Failed logins per account from one device that signed in to it before (a valid device
    /// token): 10 per 15 minutes, a budget of its own that failures elsewhere do not touch.
    pub const LOGIN_FAILURES_PER_DEVICE: Self = Self {
        max_events: 10,
        window_secs: 15 * 60,
    };
    /// Calls to one phone number: 2 per rolling hour (the number is known only by its keyed
    /// hash). Deployments may change it (`CALLS_PER_PHONE_PER_HOUR`).
    pub const CALLS_PER_PHONE: Self = Self {
        max_events: 2,
        window_secs: 60 * 60,
    };
    /// Call requests per user: 20 per hour, whatever the numbers (stops a script from cycling
    /// through numbers).
    pub const CALL_REQUESTS_PER_USER: Self = Self {
        max_events: 20,
        window_secs: 60 * 60,
    };
    /// Call requests per client network (IPv4 address or IPv6 /64): 60 per hour (several users
    /// behind one NAT).
    pub const CALL_REQUESTS_PER_IP: Self = Self {
        max_events: 60,
        window_secs: 60 * 60,
    };
    /// Registrations per client IP: 20 per hour.
    pub const REGISTRATIONS_PER_IP: Self = Self {
        max_events: 20,
        window_secs: 60 * 60,
    };

    /// A policy that can ever allow something.
    pub fn is_valid(&self) -> bool {
        self.max_events > 0 && self.window_secs > 0 && self.max_events <= 10_000
    }
}

/// The answer for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Under the limit; `remaining` more events fit in the window.
    Allowed { remaining: u32 },
    /// At the limit; the oldest counted event leaves the window in `retry_after_secs`.
    Limited { retry_after_secs: u64 },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed { .. })
    }
}

/// The answer to [`SlidingWindowLog::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Take {
    /// The event was recorded at `at` (give it back with [`SlidingWindowLog::release`]);
    /// `remaining` more fit in the window.
    Taken { remaining: u32, at: u64 },
    /// At the limit: nothing was recorded. The oldest counted event leaves the window in
    /// `retry_after_secs`.
    Limited { retry_after_secs: u64 },
}

/// Event times (unix seconds), oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlidingWindowLog {
    events: Vec<u64>,
}

impl Take {
    pub fn is_taken(&self) -> bool {
        matches!(self, Self::Taken { .. })
    }
}

impl SlidingWindowLog {
    /// Rebuilds a log from stored times (sorted here, so storage order does not matter).
    pub fn from_events(mut events: Vec<u64>) -> Self {
        events.sort_unstable();
        Self { events }
    }

    pub fn events(&self) -> &[u64] {
        &self.events
    }

    /// Drops events that left the window and any beyond the policy's cap.
    pub fn prune(&mut self, policy: RateLimitPolicy, now: u64) {
        // An event counts while `t + window > now` (written this way, not `t > now - window`,
        // so that times near zero do not underflow).
        self.events
            .retain(|&t| t.saturating_add(policy.window_secs) > now);
        let cap = policy.max_events as usize;
        if self.events.len() > cap {
            self.events.drain(..self.events.len() - cap);
        }
    }

    /// Would one more event be allowed now?
    pub fn check(&mut self, policy: RateLimitPolicy, now: u64) -> Decision {
        self.prune(policy, now);
        let count = self.events.len() as u32;
        if count < policy.max_events {
            return Decision::Allowed {
                remaining: policy.max_events - count,
            };
        }
        let oldest = self.events.first().copied().unwrap_or(now);
        Decision::Limited {
            retry_after_secs: (oldest + policy.window_secs).saturating_sub(now).max(1),
        }
    }

    /// Records one event and answers for the *next* one.
    pub fn record(&mut self, policy: RateLimitPolicy, now: u64) -> Decision {
        self.prune(policy, now);
        self.events.push(now);
        self.check(policy, now)
    }

    /// Checks and records in one step: when one more event is allowed it is recorded at `now`;
    /// at the limit nothing is recorded.
    pub fn take(&mut self, policy: RateLimitPolicy, now: u64) -> Take {
        match self.check(policy, now) {
            Decision::Allowed { remaining } => {
                self.events.push(now);
                Take::Taken {
                    remaining: remaining - 1,
                    at: now,
                }
            }
            Decision::Limited { retry_after_secs } => Take::Limited { retry_after_secs },
        }
    }

    /// Removes one event recorded at `at` (a slot given back). `false` when there is none: it
    /// has left the window already, or was never recorded.
    pub fn release(&mut self, at: u64) -> bool {
        match self.events.iter().rposition(|&t| t == at) {
            Some(index) => {
                self.events.remove(index);
                true
            }
            None => false,
        }
    }

    pub fn clear(&mut self) {
        self.events.clear();
    }

    /// When the newest event leaves the window (nothing left to remember after that).
    pub fn expires_at(&self, policy: RateLimitPolicy) -> Option<u64> {
        self.events.last().map(|t| t + policy.window_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RateLimitPolicy = RateLimitPolicy {
        max_events: 3,
        window_secs: 60,
    };

    #[test]
    fn allows_until_the_limit_then_limits_until_the_oldest_leaves() {
        let mut log = SlidingWindowLog::default();
        assert_eq!(log.check(P, 1000), Decision::Allowed { remaining: 3 });
        assert_eq!(log.record(P, 1000), Decision::Allowed { remaining: 2 });
        assert_eq!(log.record(P, 1010), Decision::Allowed { remaining: 1 });
        assert_eq!(
            log.record(P, 1020),
            Decision::Limited {
                retry_after_secs: 40
            }
        );
        assert_eq!(
            log.check(P, 1059),
            Decision::Limited {
                retry_after_secs: 1
            }
        );
        // At 1060 the event of 1000 is exactly one window old and no longer counts.
        assert_eq!(log.check(P, 1060), Decision::Allowed { remaining: 1 });
    }

    #[test]
    fn never_keeps_more_than_max_events() {
        let mut log = SlidingWindowLog::default();
        for t in 0..100 {
            log.record(P, 5000 + t);
        }
        assert_eq!(log.events().len(), 3);
        assert_eq!(log.events(), &[5097, 5098, 5099]);
    }

    #[test]
    fn clear_resets_and_expiry_follows_newest_event() {
        let mut log = SlidingWindowLog::from_events(vec![30, 10, 20]);
        assert_eq!(log.events(), &[10, 20, 30]);
        assert_eq!(log.expires_at(P), Some(90));
        log.clear();
        assert_eq!(log.check(P, 31), Decision::Allowed { remaining: 3 });
        assert_eq!(log.expires_at(P), None);
    }

    #[test]
    fn retry_after_is_always_positive_and_bounded_by_window() {
        for start in 0..200u64 {
            let mut log = SlidingWindowLog::default();
            for i in 0..3 {
                log.record(P, start + i);
            }
            match log.check(P, start + 2) {
                Decision::Limited { retry_after_secs } => {
                    assert!((1..=P.window_secs).contains(&retry_after_secs))
                }
                other => panic!("expected limited, got {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_policies_are_detected() {
        assert!(
            !RateLimitPolicy {
                max_events: 0,
                window_secs: 10
            }
            .is_valid()
        );
        assert!(
            !RateLimitPolicy {
                max_events: 1,
                window_secs: 0
            }
            .is_valid()
        );
        assert!(RateLimitPolicy::LOGIN_FAILURES_PER_IP.is_valid());
    }

    #[test]
    fn take_records_only_what_it_allows() {
        let mut log = SlidingWindowLog::default();
        assert_eq!(
            log.take(P, 1000),
            Take::Taken {
                remaining: 2,
                at: 1000
            }
        );
        assert_eq!(
            log.take(P, 1010),
            Take::Taken {
                remaining: 1,
                at: 1010
            }
        );
        assert_eq!(
            log.take(P, 1020),
            Take::Taken {
                remaining: 0,
                at: 1020
            }
        );
        assert_eq!(
            log.take(P, 1030),
            Take::Limited {
                retry_after_secs: 30
            }
        );
        // The refused take left nothing behind.
        assert_eq!(log.events(), &[1000, 1010, 1020]);
        // Once the oldest leaves the window, there is room again.
        assert_eq!(
            log.take(P, 1060),
            Take::Taken {
                remaining: 0,
                at: 1060
            }
        );
        assert_eq!(log.events(), &[1010, 1020, 1060]);
    }

    #[test]
    fn release_gives_back_exactly_one_slot() {
        let mut log = SlidingWindowLog::default();
        for _ in 0..3 {
            log.take(P, 500);
        }
        assert!(!log.take(P, 501).is_taken());
        assert!(log.release(500));
        assert_eq!(log.events(), &[500, 500]);
        assert_eq!(
            log.take(P, 502),
            Take::Taken {
                remaining: 0,
                at: 502
            }
        );
        // Nothing was recorded at 501, and a slot cannot be given back twice.
        assert!(!log.release(501));
        assert!(log.release(502));
        assert!(!log.release(502));
        assert_eq!(log.check(P, 503), Decision::Allowed { remaining: 1 });
    }

    #[test]
    fn a_released_event_that_already_left_the_window_changes_nothing() {
        let mut log = SlidingWindowLog::default();
        let Take::Taken { at, .. } = log.take(P, 100) else {
            panic!("an empty log allows")
        };
        log.take(P, 200);
        assert!(!log.release(at), "pruned when 200 was taken");
        assert_eq!(log.events(), &[200]);
    }

    #[test]
    fn take_answers_cross_json_like_decisions() {
        assert_eq!(
            serde_json::to_value(Take::Taken {
                remaining: 2,
                at: 7
            })
            .unwrap(),
            serde_json::json!({"decision": "taken", "remaining": 2, "at": 7})
        );
        assert_eq!(
            serde_json::to_value(Take::Limited {
                retry_after_secs: 9
            })
            .unwrap(),
            serde_json::json!({"decision": "limited", "retry_after_secs": 9})
        );
    }
}
