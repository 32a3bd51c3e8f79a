//! Per-user spending limits, and the decision to warn or cut off a call.
//!
//! Each user has a cap on the provider cost of a single call and a cap per calendar month
//! (`user_budget_settings`, design doc §8.2). While a call runs, the voice pipeline measures its
//! cost every few seconds and asks [`BudgetStatus::evaluate`] whether to keep going, warn the
//! user, or hang up. Before a call starts, evaluating with zero spend on the call stops a user
//! whose month is already used up.
//!
//! Rules:
//! - The warning threshold (`warn_at_percent`) applies to both limits. Whichever limit is
//!   reached first triggers it.
//! - When a limit is reached (100 %), the call is cut off if `auto_cutoff` is set. Otherwise it is
//!   only a warning, and the user has chosen to be billed past the cap.
//! - Amounts are compared exactly in micro-cents, so "75 %" means 75 %, not 74.999…%.

use serde::{Deserialize, Serialize};

use crate::pricing::Cents;
use crate::validate::{FieldErrors, ValidationError};

/// A user's budget. Cent amounts are whole cents, the same as the `INTEGER` columns.
///
/// The fields are `i64`, and the percentage is too, so that negative or absurd values from a
/// request body still deserialize. [`validate`](Self::validate) then reports them against the
/// right field, instead of serde failing with a parse error that names no field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetSettings {
    pub max_cost_per_call_cents: i64,
    pub max_monthly_spend_cents: i64,
    pub warn_at_percent: i64,
    pub auto_cutoff: bool,
}

impl Default for BudgetSettings {
    /// $10 per call, $100 per month, warn at 75 %, cut off at the limit.
    fn default() -> Self {
        BudgetSettings {
            max_cost_per_call_cents: 1000,
            max_monthly_spend_cents: 10_000,
            warn_at_percent: 75,
            auto_cutoff: true,
        }
    }
}

impl BudgetSettings {
    /// The largest amount the `INTEGER` columns can hold.
    pub const MAX_CENTS: i64 = i32::MAX as i64;

    /// Checks every field and reports problems under their own field names.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        errors.check(
            "max_cost_per_call_cents",
            positive_cents(self.max_cost_per_call_cents),
        );
        errors.check(
            "max_monthly_spend_cents",
            positive_cents(self.max_monthly_spend_cents),
        );
        if !(1..=100).contains(&self.warn_at_percent) {
            errors.add(
                "warn_at_percent",
                ValidationError::OutOfRange { min: 1, max: 100 },
            );
        }
        // One call costing more than the whole month can never be reached. The per-call field is
        // blamed, because the user most likely mistyped that one.
        if errors.is_empty() && self.max_cost_per_call_cents > self.max_monthly_spend_cents {
            errors.add(
                "max_cost_per_call_cents",
                ValidationError::PerCallExceedsMonthly,
            );
        }
        errors.into_result()
    }
}

fn positive_cents(cents: i64) -> Result<(), ValidationError> {
    if cents <= 0 {
        Err(ValidationError::NotPositive)
    } else if cents > BudgetSettings::MAX_CENTS {
        Err(ValidationError::OutOfRange {
            min: 1,
            max: BudgetSettings::MAX_CENTS,
        })
    } else {
        Ok(())
    }
}

/// Which cap a warning or cutoff is about, so the user can be told which one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetLimit {
    PerCall,
    Monthly,
}

/// What to do about the spending so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum BudgetStatus {
    /// Below every warning threshold.
    Ok,
    /// At or above the warning threshold. The percentage can pass 100 when `auto_cutoff` is off.
    Warn {
        limit: BudgetLimit,
        percent_used: u32,
    },
    /// A limit has been reached and `auto_cutoff` is on: end the call, or do not start one.
    Cutoff { limit: BudgetLimit },
}

impl BudgetStatus {
    /// Evaluates both limits and returns the more severe outcome. On a tie the per-call limit is
    /// named, because the user can act on it at once.
    ///
    /// `spent_this_month` must already include `spent_this_call`, which is how the monthly total
    /// is queried. Negative spend (refunds) counts as zero. If `settings` are invalid (a limit of
    /// zero or less), the limit counts as already reached. An unusable budget fails closed.
    pub fn evaluate(
        spent_this_call: Cents,
        spent_this_month: Cents,
        settings: &BudgetSettings,
    ) -> BudgetStatus {
        let per_call = Self::against(
            BudgetLimit::PerCall,
            spent_this_call,
            settings.max_cost_per_call_cents,
            settings,
        );
        let monthly = Self::against(
            BudgetLimit::Monthly,
            spent_this_month,
            settings.max_monthly_spend_cents,
            settings,
        );
        if monthly.severity() > per_call.severity() {
            monthly
        } else {
            per_call
        }
    }

    fn against(
        limit: BudgetLimit,
        spent: Cents,
        limit_cents: i64,
        settings: &BudgetSettings,
    ) -> BudgetStatus {
        let spent_micro = i128::from(spent.micro_cents().max(0));
        let limit_micro = i128::from(Cents::from_whole_cents(limit_cents).micro_cents());
        if limit_micro <= 0 {
            return if settings.auto_cutoff {
                BudgetStatus::Cutoff { limit }
            } else {
                BudgetStatus::Warn {
                    limit,
                    percent_used: u32::MAX,
                }
            };
        }
        // spent / limit >= p / 100 without division, so there is no rounding at the threshold.
        let reached_percent = |percent: i128| spent_micro * 100 >= limit_micro * percent;
        if reached_percent(100) && settings.auto_cutoff {
            BudgetStatus::Cutoff { limit }
        } else if reached_percent(i128::from(settings.warn_at_percent.clamp(1, 100))) {
            let percent_used = spent_micro * 100 / limit_micro;
            BudgetStatus::Warn {
                limit,
                percent_used: u32::try_from(percent_used).unwrap_or(u32::MAX),
            }
        } else {
            BudgetStatus::Ok
        }
    }

    fn severity(self) -> u8 {
        match self {
            BudgetStatus::Ok => 0,
            BudgetStatus::Warn { .. } => 1,
            BudgetStatus::Cutoff { .. } => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(cents: i64) -> Cents {
        Cents::from_whole_cents(cents)
    }

    #[test]
    fn defaults_match_the_database_defaults_and_are_valid() {
        let settings = BudgetSettings::default();
        assert_eq!(settings.max_cost_per_call_cents, 1000);
        assert_eq!(settings.max_monthly_spend_cents, 10_000);
        assert_eq!(settings.warn_at_percent, 75);
        assert!(settings.auto_cutoff);
        assert_eq!(settings.validate(), Ok(()));
    }

    #[test]
    fn validation_reports_each_bad_field() {
        let settings = BudgetSettings {
            max_cost_per_call_cents: 0,
            max_monthly_spend_cents: -5,
            warn_at_percent: 0,
            auto_cutoff: true,
        };
        let errors = settings.validate().expect_err("every field is bad");
        let codes: Vec<(&str, &str)> = errors
            .iter()
            .map(|(field, error)| (field, error.code.as_ref()))
            .collect();
        assert_eq!(
            codes,
            [
                ("max_cost_per_call_cents", "not_positive"),
                ("max_monthly_spend_cents", "not_positive"),
                ("warn_at_percent", "out_of_range"),
            ]
        );
        let json = serde_json::to_value(&errors).expect("serialize");
        assert_eq!(
            json["warn_at_percent"]["message"],
            "must be between 1 and 100"
        );
    }

    #[test]
    fn warn_percent_bounds() {
        for percent in -5..=105 {
            let settings = BudgetSettings {
                warn_at_percent: percent,
                ..BudgetSettings::default()
            };
            assert_eq!(
                settings.validate().is_ok(),
                (1..=100).contains(&percent),
                "{percent}"
            );
        }
    }

    #[test]
    fn amounts_must_fit_the_integer_columns() {
        let settings = BudgetSettings {
            max_cost_per_call_cents: 1000,
            max_monthly_spend_cents: i64::from(i32::MAX) + 1,
            ..BudgetSettings::default()
        };
        let errors = settings.validate().expect_err("too large");
        assert_eq!(
            errors
                .get("max_monthly_spend_cents")
                .map(|e| e.code.as_ref()),
            Some("out_of_range")
        );
        let at_max = BudgetSettings {
            max_cost_per_call_cents: i64::from(i32::MAX),
            max_monthly_spend_cents: i64::from(i32::MAX),
            ..BudgetSettings::default()
        };
        assert_eq!(at_max.validate(), Ok(()));
    }

    #[test]
    fn per_call_may_not_exceed_monthly() {
        let settings = BudgetSettings {
            max_cost_per_call_cents: 5001,
            max_monthly_spend_cents: 5000,
            ..BudgetSettings::default()
        };
        let errors = settings.validate().expect_err("per call above monthly");
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors
                .get("max_cost_per_call_cents")
                .map(|e| e.code.as_ref()),
            Some("per_call_exceeds_monthly")
        );
        let equal = BudgetSettings {
            max_cost_per_call_cents: 5000,
            ..settings
        };
        assert_eq!(equal.validate(), Ok(()));
    }

    #[test]
    fn settings_deserialize_even_when_invalid() {
        let settings: BudgetSettings = serde_json::from_str(
            r#"{"max_cost_per_call_cents":-1,"max_monthly_spend_cents":100,"warn_at_percent":500,"auto_cutoff":false}"#,
        )
        .expect("shape is right");
        let errors = settings.validate().expect_err("values are wrong");
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn status_thresholds_on_a_single_call() {
        let settings = BudgetSettings::default();
        let month = whole(2000);
        assert_eq!(
            BudgetStatus::evaluate(whole(0), month, &settings),
            BudgetStatus::Ok
        );
        assert_eq!(
            BudgetStatus::evaluate(Cents::from_micro_cents(749_999_999), month, &settings),
            BudgetStatus::Ok
        );
        assert_eq!(
            BudgetStatus::evaluate(whole(750), month, &settings),
            BudgetStatus::Warn {
                limit: BudgetLimit::PerCall,
                percent_used: 75
            }
        );
        assert_eq!(
            BudgetStatus::evaluate(Cents::from_micro_cents(999_999_999), month, &settings),
            BudgetStatus::Warn {
                limit: BudgetLimit::PerCall,
                percent_used: 99
            }
        );
        assert_eq!(
            BudgetStatus::evaluate(whole(1000), month, &settings),
            BudgetStatus::Cutoff {
                limit: BudgetLimit::PerCall
            }
        );
    }

    #[test]
    fn without_auto_cutoff_the_limit_only_warns() {
        let settings = BudgetSettings {
            auto_cutoff: false,
            ..BudgetSettings::default()
        };
        assert_eq!(
            BudgetStatus::evaluate(whole(1500), whole(1500), &settings),
            BudgetStatus::Warn {
                limit: BudgetLimit::PerCall,
                percent_used: 150
            }
        );
        assert_eq!(
            BudgetStatus::evaluate(whole(0), whole(20_000), &settings),
            BudgetStatus::Warn {
                limit: BudgetLimit::Monthly,
                percent_used: 200
            }
        );
    }

    #[test]
    fn monthly_limit_blocks_a_call_before_it_starts() {
        let settings = BudgetSettings::default();
        assert_eq!(
            BudgetStatus::evaluate(Cents::ZERO, whole(10_000), &settings),
            BudgetStatus::Cutoff {
                limit: BudgetLimit::Monthly
            }
        );
        assert_eq!(
            BudgetStatus::evaluate(Cents::ZERO, whole(7_600), &settings),
            BudgetStatus::Warn {
                limit: BudgetLimit::Monthly,
                percent_used: 76
            }
        );
    }

    #[test]
    fn the_more_severe_limit_wins() {
        let settings = BudgetSettings::default();
        // Call at 80 % (warn), month exhausted (cutoff).
        assert_eq!(
            BudgetStatus::evaluate(whole(800), whole(10_000), &settings),
            BudgetStatus::Cutoff {
                limit: BudgetLimit::Monthly
            }
        );
        // Both warn: the per-call one is reported.
        assert_eq!(
            BudgetStatus::evaluate(whole(800), whole(8_000), &settings),
            BudgetStatus::Warn {
                limit: BudgetLimit::PerCall,
                percent_used: 80
            }
        );
    }

    #[test]
    fn refunds_count_as_no_spend() {
        let settings = BudgetSettings::default();
        assert_eq!(
            BudgetStatus::evaluate(whole(-5000), whole(-5000), &settings),
            BudgetStatus::Ok
        );
    }

    #[test]
    fn invalid_limits_fail_closed() {
        let broken = BudgetSettings {
            max_cost_per_call_cents: 0,
            ..BudgetSettings::default()
        };
        assert_eq!(
            BudgetStatus::evaluate(Cents::ZERO, Cents::ZERO, &broken),
            BudgetStatus::Cutoff {
                limit: BudgetLimit::PerCall
            }
        );
    }

    #[test]
    fn status_is_monotonic_in_spend() {
        for warn_at_percent in [1, 50, 75, 100] {
            let settings = BudgetSettings {
                max_cost_per_call_cents: 400,
                warn_at_percent,
                ..BudgetSettings::default()
            };
            let mut previous = 0;
            for micro in (0..=600_000_000i64).step_by(1_234_567) {
                let spent = Cents::from_micro_cents(micro);
                let status = BudgetStatus::evaluate(spent, spent, &settings);
                assert!(
                    status.severity() >= previous,
                    "{micro} at {warn_at_percent}%"
                );
                previous = status.severity();
                let expected_severity = if micro >= 400_000_000 {
                    2
                } else if micro * 100 >= 400_000_000 * warn_at_percent {
                    1
                } else {
                    0
                };
                assert_eq!(
                    status.severity(),
                    expected_severity,
                    "{micro} at {warn_at_percent}%"
                );
            }
        }
    }

    #[test]
    fn status_serializes_with_a_tag() {
        let json = serde_json::to_value(BudgetStatus::Warn {
            limit: BudgetLimit::Monthly,
            percent_used: 80,
        })
        .expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"status": "warn", "limit": "monthly", "percent_used": 80})
        );
        assert_eq!(
            serde_json::to_value(BudgetStatus::Ok).expect("serialize"),
            serde_json::json!({"status": "ok"})
        );
    }
}
