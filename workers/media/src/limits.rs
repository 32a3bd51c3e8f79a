//! Limits enforced while a call runs.
//!
//! Four limits bound a call; the *tightest* one (the largest share used) decides:
//!
//! | limit            | measured in | at the warning share     | at 100 %                               |
//! |------------------|-------------|--------------------------|----------------------------------------|
//! | per-call budget  | cost        | warn once                | end the call if auto cut-off, else tell |
//! | monthly budget   | cost        | warn once                | end the call if auto cut-off, else tell |
//! | credits          | time        | warn once                | always end the call                    |
//! | tier max length  | time        | warn once                | always end the call                    |
//!
//! Time limits are what the user paid for (one credit per started minute; the tier's longest
//! call), so they end the call whatever the budget settings say; they start the goodbye a little
//! early ([`goodbye_lead_ms`]) so the call is over by the limit. Budgets are the user's own
//! guard rails, and they may choose to be told rather than cut off.
//!
//! [`goodbye_lead_ms`]: crate::config::EngineConfig::goodbye_lead_ms

use callmeback_domain::pricing::Cents;
use serde::{Deserialize, Serialize};

use crate::events::Millis;
use crate::plan::CallLimits;

/// Which limit a warning or cut-off is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    PerCallBudget,
    MonthlyBudget,
    Credits,
    MaxDuration,
}

impl LimitKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            LimitKind::PerCallBudget => "per_call_budget",
            LimitKind::MonthlyBudget => "monthly_budget",
            LimitKind::Credits => "credits",
            LimitKind::MaxDuration => "max_duration",
        }
    }

    const fn is_time(self) -> bool {
        matches!(self, LimitKind::Credits | LimitKind::MaxDuration)
    }
}

/// What to do after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Warn {
        limit: LimitKind,
        percent_used: u32,
    },
    /// End the call now (with a goodbye).
    CutOff {
        limit: LimitKind,
    },
    /// A budget is used up but the user chose not to be cut off: tell them, go on.
    OverBudget {
        limit: LimitKind,
    },
}

/// Remembers which verdicts were already given, so each is given once.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LimitWatch {
    warned: bool,
    cut_off: bool,
    told_over_budget: bool,
}

/// Share used, in parts per million (exact integer arithmetic, no floats).
fn share_ppm(used: i128, limit: i128) -> i128 {
    if limit <= 0 {
        return i128::MAX / 4;
    }
    used.max(0) * 1_000_000 / limit
}

impl LimitWatch {
    /// Checks every limit at `elapsed_ms` since the answer with `cost` spent so far.
    pub fn check(
        &mut self,
        limits: &CallLimits,
        elapsed_ms: u64,
        cost: Cents,
        goodbye_lead_ms: u64,
    ) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        if self.cut_off {
            return verdicts;
        }
        let shares = shares(limits, elapsed_ms, cost);
        // The warning comes first, even when a coarse check finds the limit already reached.
        if !self.warned
            && let Some(&(kind, ppm, _)) = shares.iter().max_by_key(|(_, ppm, _)| *ppm)
            && ppm >= i128::from(limits.warn_percent) * 10_000
        {
            self.warned = true;
            let percent_used =
                u32::try_from((ppm / 10_000).min(i128::from(u32::MAX))).unwrap_or(u32::MAX);
            verdicts.push(Verdict::Warn {
                limit: kind,
                percent_used,
            });
        }
        // Time limits end the call `goodbye_lead_ms` early; budgets at 100 %.
        for &(kind, ppm, limit_ms) in &shares {
            let reached = match limit_ms {
                Some(limit_ms) => elapsed_ms + goodbye_lead_ms.min(limit_ms / 2) >= limit_ms,
                None => ppm >= 1_000_000,
            };
            if !reached {
                continue;
            }
            if kind.is_time() || limits.auto_cutoff {
                self.cut_off = true;
                verdicts.push(Verdict::CutOff { limit: kind });
                return verdicts;
            }
            if !self.told_over_budget {
                self.told_over_budget = true;
                verdicts.push(Verdict::OverBudget { limit: kind });
            }
        }
        verdicts
    }

    /// When a time limit next crosses its warning or cut-off point (for a precise timer, so
    /// silence cannot carry a call past its limit); `None` when nothing time-based is pending.
    pub fn next_time_threshold(
        &self,
        limits: &CallLimits,
        answered_at: Millis,
        now: Millis,
        goodbye_lead_ms: u64,
    ) -> Option<Millis> {
        if self.cut_off {
            return None;
        }
        time_limits(limits)
            .into_iter()
            .flat_map(|limit_ms| {
                let warn_at = limit_ms * u64::from(limits.warn_percent) / 100;
                let cut_at = limit_ms.saturating_sub(goodbye_lead_ms.min(limit_ms / 2));
                [(!self.warned).then_some(warn_at), Some(cut_at)]
            })
            .flatten()
            .map(|offset| answered_at + offset)
            .filter(|&at| at > now)
            .min()
    }

    pub fn has_cut_off(&self) -> bool {
        self.cut_off
    }
}

/// The time limits of a call in milliseconds.
fn time_limits(limits: &CallLimits) -> Vec<u64> {
    let mut out = vec![u64::from(limits.max_duration_secs) * 1000];
    if let Some(credits) = limits.credits_at_start {
        out.push(u64::from(credits) * 60_000);
    }
    out
}

/// (limit, share used in ppm, the limit in ms for time limits).
fn shares(
    limits: &CallLimits,
    elapsed_ms: u64,
    cost: Cents,
) -> Vec<(LimitKind, i128, Option<u64>)> {
    let cost = i128::from(cost.micro_cents());
    let budget = |cents: i64| i128::from(Cents::from_whole_cents(cents).micro_cents());
    let mut out = vec![
        (
            LimitKind::PerCallBudget,
            share_ppm(cost, budget(limits.per_call_budget_cents)),
            None,
        ),
        (
            LimitKind::MonthlyBudget,
            share_ppm(cost, budget(limits.monthly_remaining_cents)),
            None,
        ),
    ];
    let max_ms = u64::from(limits.max_duration_secs) * 1000;
    out.push((
        LimitKind::MaxDuration,
        share_ppm(i128::from(elapsed_ms), i128::from(max_ms)),
        Some(max_ms),
    ));
    if let Some(credits) = limits.credits_at_start {
        let credit_ms = u64::from(credits) * 60_000;
        out.push((
            LimitKind::Credits,
            share_ppm(i128::from(elapsed_ms), i128::from(credit_ms)),
            Some(credit_ms),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> CallLimits {
        CallLimits {
            max_duration_secs: 600,
            credits_at_start: Some(5),
            per_call_budget_cents: 100,
            monthly_remaining_cents: 1000,
            warn_percent: 75,
            auto_cutoff: true,
        }
    }

    const LEAD: u64 = 6000;

    #[test]
    fn the_tightest_limit_warns_once_then_cuts_off_early_enough() {
        let mut watch = LimitWatch::default();
        let limits = limits();
        // Credits: 5 minutes = 300 s is tighter than the tier's 600 s.
        assert!(watch.check(&limits, 200_000, Cents::ZERO, LEAD).is_empty());
        assert_eq!(
            watch.check(&limits, 225_000, Cents::ZERO, LEAD),
            vec![Verdict::Warn {
                limit: LimitKind::Credits,
                percent_used: 75
            }]
        );
        assert!(
            watch.check(&limits, 230_000, Cents::ZERO, LEAD).is_empty(),
            "warned once"
        );
        assert!(watch.check(&limits, 293_999, Cents::ZERO, LEAD).is_empty());
        assert_eq!(
            watch.check(&limits, 294_000, Cents::ZERO, LEAD),
            vec![Verdict::CutOff {
                limit: LimitKind::Credits
            }]
        );
        assert!(
            watch.check(&limits, 400_000, Cents::ZERO, LEAD).is_empty(),
            "cut off once"
        );
    }

    #[test]
    fn budgets_cut_off_only_with_auto_cutoff() {
        let mut limits = limits();
        limits.credits_at_start = None;
        let mut watch = LimitWatch::default();
        let spent = |cents| Cents::from_whole_cents(cents);
        assert_eq!(
            watch.check(&limits, 1000, spent(80), LEAD),
            vec![Verdict::Warn {
                limit: LimitKind::PerCallBudget,
                percent_used: 80
            }]
        );
        assert_eq!(
            watch.check(&limits, 2000, spent(100), LEAD),
            vec![Verdict::CutOff {
                limit: LimitKind::PerCallBudget
            }]
        );

        limits.auto_cutoff = false;
        let mut watch = LimitWatch::default();
        assert_eq!(
            watch.check(&limits, 1000, spent(150), LEAD),
            vec![
                Verdict::Warn {
                    limit: LimitKind::PerCallBudget,
                    percent_used: 150
                },
                Verdict::OverBudget {
                    limit: LimitKind::PerCallBudget
                }
            ]
        );
        assert!(
            watch.check(&limits, 2000, spent(160), LEAD).is_empty(),
            "told once"
        );
        // Time limits still end the call.
        assert_eq!(
            watch.check(&limits, 595_000, spent(170), LEAD),
            vec![Verdict::CutOff {
                limit: LimitKind::MaxDuration
            }]
        );
    }

    #[test]
    fn monthly_remaining_can_be_the_tightest() {
        let mut limits = limits();
        limits.monthly_remaining_cents = 20;
        let mut watch = LimitWatch::default();
        assert_eq!(
            watch.check(&limits, 1000, Cents::from_whole_cents(16), LEAD),
            vec![Verdict::Warn {
                limit: LimitKind::MonthlyBudget,
                percent_used: 80
            }]
        );
        assert_eq!(
            watch.check(&limits, 1000, Cents::from_whole_cents(20), LEAD),
            vec![Verdict::CutOff {
                limit: LimitKind::MonthlyBudget
            }]
        );
    }

    #[test]
    fn timers_point_at_the_next_time_threshold() {
        let limits = limits();
        let mut watch = LimitWatch::default();
        assert_eq!(
            watch.next_time_threshold(&limits, 1_000, 1_000, LEAD),
            Some(226_000)
        );
        watch.check(&limits, 225_000, Cents::ZERO, LEAD);
        assert_eq!(
            watch.next_time_threshold(&limits, 1_000, 226_000, LEAD),
            Some(295_000)
        );
        watch.check(&limits, 294_000, Cents::ZERO, LEAD);
        assert_eq!(
            watch.next_time_threshold(&limits, 1_000, 300_000, LEAD),
            None
        );
    }
}
