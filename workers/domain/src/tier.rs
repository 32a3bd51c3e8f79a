//! Subscription tiers and the call-allowance rules attached to them.
//!
//! The Worker checks these rules before it places a call, and it uses them again after the call
//! to decide how many credits to take. Both the API and the tests read the same table, so it
//! lives here, free of I/O. The tier names are the values stored in
//! `user_credits.subscription_tier`.
//!
//! # Rule table
//!
//! This is the only place the numbers are written down. [`Tier::limits`] returns them.
//!
//! | tier        | calls per day | longest call | credits per month | spends credits |
//! |-------------|---------------|--------------|-------------------|----------------|
//! | `free`      | 3             | 5 min        | none              | no             |
//! | `basic`     | 10            | 10 min       | 100               | yes            |
//! | `premium`   | unlimited     | 30 min       | 500               | yes            |
//! | `unlimited` | unlimited     | 60 min       | unlimited         | no             |
//!
//! Credit-spending tiers pay 1 credit per *started* minute of call time (61 s costs 2 credits).
//! A call on such a tier may not run longer than its credits can pay for. Free calls are bounded
//! by the daily count instead of credits. Unlimited calls are bounded by nothing except the
//! call-length cap.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Seconds of call time that one credit pays for.
pub const SECONDS_PER_CREDIT: u32 = 60;

/// A subscription tier. It serializes to the lowercase names stored in the database.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// New accounts start here; `user_credits.subscription_tier` defaults to `free`.
    #[default]
    Free,
    Basic,
    Premium,
    Unlimited,
}

impl Tier {
    /// Every tier, cheapest first, for iteration in tests and pricing pages.
    pub const ALL: [Tier; 4] = [Tier::Free, Tier::Basic, Tier::Premium, Tier::Unlimited];

    /// The database and wire name of the tier.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Basic => "basic",
            Tier::Premium => "premium",
            Tier::Unlimited => "unlimited",
        }
    }

    /// The limits of this tier (see the module-level rule table).
    pub const fn limits(self) -> TierLimits {
        match self {
            Tier::Free => TierLimits {
                calls_per_day: Some(3),
                max_call_seconds: 5 * 60,
                monthly_credits: Some(0),
                needs_credits: false,
            },
            Tier::Basic => TierLimits {
                calls_per_day: Some(10),
                max_call_seconds: 10 * 60,
                monthly_credits: Some(100),
                needs_credits: true,
            },
            Tier::Premium => TierLimits {
                calls_per_day: None,
                max_call_seconds: 30 * 60,
                monthly_credits: Some(500),
                needs_credits: true,
            },
            Tier::Unlimited => TierLimits {
                calls_per_day: None,
                max_call_seconds: 60 * 60,
                monthly_credits: None,
                needs_credits: false,
            },
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string named no tier. Matching is exact and lowercase, the same as serde, so a value
/// that was read back from the database cannot be read two ways.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown subscription tier")]
pub struct UnknownTier;

impl UnknownTier {
    /// Stable error code for API responses.
    pub const fn code(&self) -> &'static str {
        "unknown_tier"
    }
}

impl FromStr for Tier {
    type Err = UnknownTier;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|tier| tier.as_str() == s)
            .ok_or(UnknownTier)
    }
}

/// What a tier allows. `None` means "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TierLimits {
    /// Calls that may be started per day; `None` means unlimited.
    pub calls_per_day: Option<u32>,
    /// Hard cap on the length of a single call.
    pub max_call_seconds: u32,
    /// Credits added at each billing cycle; `None` means credits are never counted.
    pub monthly_credits: Option<u32>,
    /// Whether calls on this tier spend credits (and so need a positive balance to start).
    pub needs_credits: bool,
}

/// Credits to deduct for a finished call of `duration_seconds`.
///
/// Credit-spending tiers pay for every *started* minute, so 1 s costs 1 credit and 0 s (a call
/// that was never answered) costs nothing. Tiers that do not spend credits always return 0.
pub fn credits_for_call(tier: Tier, duration_seconds: u32) -> u32 {
    if tier.limits().needs_credits {
        duration_seconds.div_ceil(SECONDS_PER_CREDIT)
    } else {
        0
    }
}

/// Permission to start a call, together with the longest the call may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CallGrant {
    /// The call must be cut off after this many seconds. This is the smaller of the tier's cap
    /// and, on credit-spending tiers, the time the available credits pay for.
    pub max_seconds: u32,
}

/// Why a call may not start. The codes are stable and reach API clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallRefusal {
    #[error("daily call limit of {limit} reached")]
    DailyCallLimit { limit: u32 },
    #[error("not enough credits to start a call")]
    InsufficientCredits { available: i64 },
}

impl CallRefusal {
    /// Stable error code for API responses.
    pub const fn code(&self) -> &'static str {
        match self {
            CallRefusal::DailyCallLimit { .. } => "daily_call_limit",
            CallRefusal::InsufficientCredits { .. } => "insufficient_credits",
        }
    }
}

/// Call allowance: decides whether a user on `tier` may start another call.
///
/// `available_credits` is the signed balance as stored. It may already be negative if an earlier
/// call ran over, so anything below 1 counts as "no credits". `calls_today` is the number of calls
/// started so far in the current day, not counting this one.
///
/// The daily limit is checked first. A user who hits both limits is told about the one that
/// buying credits would not fix.
pub fn can_start_call(
    tier: Tier,
    available_credits: i64,
    calls_today: u32,
) -> Result<CallGrant, CallRefusal> {
    let limits = tier.limits();
    if let Some(limit) = limits.calls_per_day
        && calls_today >= limit
    {
        return Err(CallRefusal::DailyCallLimit { limit });
    }

    let mut max_seconds = limits.max_call_seconds;
    if limits.needs_credits {
        if available_credits < 1 {
            return Err(CallRefusal::InsufficientCredits {
                available: available_credits,
            });
        }
        let paid_seconds = available_credits.saturating_mul(i64::from(SECONDS_PER_CREDIT));
        // `paid_seconds` is positive here; when it does not fit in u32 it exceeds every tier cap.
        let paid_seconds = u32::try_from(paid_seconds).unwrap_or(u32::MAX);
        max_seconds = max_seconds.min(paid_seconds);
    }
    Ok(CallGrant { max_seconds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_names_round_trip_through_from_str_and_serde() {
        for tier in Tier::ALL {
            assert_eq!(tier.as_str().parse::<Tier>(), Ok(tier));
            assert_eq!(tier.to_string(), tier.as_str());
            let json = serde_json::to_string(&tier).expect("serialize tier");
            assert_eq!(json, format!("\"{}\"", tier.as_str()));
            let back: Tier = serde_json::from_str(&json).expect("deserialize tier");
            assert_eq!(back, tier);
        }
    }

    #[test]
    fn tier_parsing_is_exact() {
        for bad in ["", "Free", "FREE", " free", "free ", "gold", "premium_plus"] {
            assert_eq!(bad.parse::<Tier>(), Err(UnknownTier), "{bad:?}");
        }
        assert!(serde_json::from_str::<Tier>("\"Basic\"").is_err());
        assert_eq!(UnknownTier.code(), "unknown_tier");
    }

    #[test]
    fn default_tier_is_free_like_the_database_default() {
        assert_eq!(Tier::default(), Tier::Free);
    }

    #[test]
    fn rule_table_matches_the_pricing_page() {
        let free = Tier::Free.limits();
        assert_eq!(free.calls_per_day, Some(3));
        assert_eq!(free.max_call_seconds, 300);
        assert!(!free.needs_credits);

        let basic = Tier::Basic.limits();
        assert_eq!(basic.calls_per_day, Some(10));
        assert_eq!(basic.max_call_seconds, 600);
        assert_eq!(basic.monthly_credits, Some(100));
        assert!(basic.needs_credits);

        let premium = Tier::Premium.limits();
        assert_eq!(premium.calls_per_day, None);
        assert_eq!(premium.max_call_seconds, 1800);
        assert_eq!(premium.monthly_credits, Some(500));
        assert!(premium.needs_credits);

        let unlimited = Tier::Unlimited.limits();
        assert_eq!(unlimited.calls_per_day, None);
        assert_eq!(unlimited.max_call_seconds, 3600);
        assert_eq!(unlimited.monthly_credits, None);
        assert!(!unlimited.needs_credits);
    }

    #[test]
    fn credits_are_charged_per_started_minute_on_paid_tiers() {
        for tier in [Tier::Basic, Tier::Premium] {
            assert_eq!(credits_for_call(tier, 0), 0);
            assert_eq!(credits_for_call(tier, 1), 1);
            assert_eq!(credits_for_call(tier, 59), 1);
            assert_eq!(credits_for_call(tier, 60), 1);
            assert_eq!(credits_for_call(tier, 61), 2);
            assert_eq!(credits_for_call(tier, 300), 5);
            assert_eq!(credits_for_call(tier, u32::MAX), u32::MAX.div_ceil(60));
        }
    }

    #[test]
    fn free_and_unlimited_never_spend_credits() {
        for seconds in (0..=7200).step_by(7) {
            assert_eq!(credits_for_call(Tier::Free, seconds), 0);
            assert_eq!(credits_for_call(Tier::Unlimited, seconds), 0);
        }
    }

    #[test]
    fn credits_cover_exactly_the_started_minutes_for_every_duration() {
        for seconds in 0..=4000u32 {
            let credits = credits_for_call(Tier::Basic, seconds);
            // Enough credits to pay for every second...
            assert!(credits * 60 >= seconds, "{seconds}s -> {credits}");
            // ...and never a whole unused minute.
            assert!(
                credits == 0 || (credits - 1) * 60 < seconds,
                "{seconds}s -> {credits}"
            );
        }
    }

    #[test]
    fn daily_limit_refuses_once_reached() {
        assert_eq!(
            can_start_call(Tier::Free, 0, 2),
            Ok(CallGrant { max_seconds: 300 })
        );
        let refusal = can_start_call(Tier::Free, 0, 3).expect_err("fourth free call");
        assert_eq!(refusal, CallRefusal::DailyCallLimit { limit: 3 });
        assert_eq!(refusal.code(), "daily_call_limit");

        assert!(can_start_call(Tier::Basic, 50, 9).is_ok());
        assert_eq!(
            can_start_call(Tier::Basic, 50, 10),
            Err(CallRefusal::DailyCallLimit { limit: 10 })
        );
    }

    #[test]
    fn unlimited_call_counts_never_refuse() {
        for calls_today in [0, 10, 1000, u32::MAX] {
            assert!(can_start_call(Tier::Premium, 1, calls_today).is_ok());
            assert!(can_start_call(Tier::Unlimited, 0, calls_today).is_ok());
        }
    }

    #[test]
    fn paid_tiers_need_a_positive_balance() {
        for tier in [Tier::Basic, Tier::Premium] {
            for credits in [0, -1, -500, i64::MIN] {
                let refusal = can_start_call(tier, credits, 0).expect_err("no credits");
                assert_eq!(
                    refusal,
                    CallRefusal::InsufficientCredits { available: credits }
                );
                assert_eq!(refusal.code(), "insufficient_credits");
            }
        }
    }

    #[test]
    fn free_and_unlimited_ignore_the_balance() {
        for credits in [i64::MIN, -3, 0, 7, i64::MAX] {
            assert_eq!(
                can_start_call(Tier::Free, credits, 0),
                Ok(CallGrant { max_seconds: 300 })
            );
            assert_eq!(
                can_start_call(Tier::Unlimited, credits, 0),
                Ok(CallGrant { max_seconds: 3600 })
            );
        }
    }

    #[test]
    fn daily_limit_is_reported_before_missing_credits() {
        assert_eq!(
            can_start_call(Tier::Basic, 0, 10),
            Err(CallRefusal::DailyCallLimit { limit: 10 })
        );
    }

    #[test]
    fn grant_is_capped_by_credits_and_tier() {
        assert_eq!(
            can_start_call(Tier::Basic, 3, 0),
            Ok(CallGrant { max_seconds: 180 })
        );
        assert_eq!(
            can_start_call(Tier::Basic, 100, 0),
            Ok(CallGrant { max_seconds: 600 })
        );
        assert_eq!(
            can_start_call(Tier::Premium, 29, 0),
            Ok(CallGrant { max_seconds: 1740 })
        );
        assert_eq!(
            can_start_call(Tier::Premium, i64::MAX, 0),
            Ok(CallGrant { max_seconds: 1800 })
        );
    }

    #[test]
    fn a_granted_call_never_costs_more_than_the_balance() {
        for tier in Tier::ALL {
            for credits in 1..=120i64 {
                let grant = can_start_call(tier, credits, 0).expect("balance is positive");
                assert!(grant.max_seconds <= tier.limits().max_call_seconds);
                let cost = credits_for_call(tier, grant.max_seconds);
                assert!(
                    i64::from(cost) <= credits,
                    "{tier}: {credits} credits granted {}s costing {cost}",
                    grant.max_seconds
                );
            }
        }
    }
}
