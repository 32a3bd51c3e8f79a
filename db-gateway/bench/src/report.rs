//! The results table and the gateway's targets relative to PgBouncer.
//!
//! The targets say what "the gateway is not a bottleneck" means for this project: at full
//! concurrency it must serve at least PgBouncer's throughput (it replaces PgBouncer as the one
//! place that holds Postgres connections), and a lone request may cost at most twice
//! PgBouncer's median latency (HTTP, JSON and signature checks are allowed to cost something,
//! but not to dominate). Ratios against direct Postgres are printed for reference only.

use std::fmt::Write as _;
use std::time::Duration;

use crate::run::RunOutcome;
use crate::targets::PathKind;

/// Gateway/PgBouncer throughput at the highest client count must be at least this.
pub(crate) const THROUGHPUT_TARGET: f64 = 1.0;
/// Gateway/PgBouncer median latency at the lowest client count must be at most this.
pub(crate) const P50_TARGET: f64 = 2.0;

#[derive(Debug)]
pub(crate) struct RunRecord {
    pub(crate) path: PathKind,
    pub(crate) clients: usize,
    pub(crate) outcome: RunOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Miss,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Miss => "MISS",
        }
    }
}

/// One line of the ratios section.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ratio {
    pub(crate) label: String,
    pub(crate) value: Option<f64>,
    /// `None` for reference-only ratios.
    pub(crate) verdict: Option<Verdict>,
    pub(crate) target: Option<&'static str>,
}

fn micros(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "-".to_owned(),
        |duration| format!("{:.1}", duration.as_secs_f64() * 1e6),
    )
}

fn ms(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "-".to_owned(),
        |duration| format!("{:.3}", duration.as_secs_f64() * 1000.0),
    )
}

pub(crate) fn table(records: &[RunRecord]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>7} {:>12} {:>9} {:>9} {:>7} {:>10} {:>10}",
        "path", "clients", "requests/s", "p50 ms", "p99 ms", "errors", "bench-cpu", "proxy-cpu"
    );
    for record in records {
        let summary = &record.outcome.summary;
        let _ = writeln!(
            out,
            "{:<10} {:>7} {:>12.1} {:>9} {:>9} {:>7} {:>10} {:>10}",
            record.path.name(),
            record.clients,
            summary.requests_per_sec,
            ms(summary.p50),
            ms(summary.p99),
            summary.errors,
            micros(record.outcome.bench_cpu_per_request),
            micros(record.outcome.proxy_cpu_per_request),
        );
    }
    out
}

fn find(records: &[RunRecord], path: PathKind, clients: usize) -> Option<&RunRecord> {
    records
        .iter()
        .find(|record| record.path == path && record.clients == clients)
}

fn throughput_ratio(records: &[RunRecord], over: PathKind, clients: usize) -> Option<f64> {
    let gateway = find(records, PathKind::Gateway, clients)?
        .outcome
        .summary
        .requests_per_sec;
    let base = find(records, over, clients)?
        .outcome
        .summary
        .requests_per_sec;
    (base > 0.0).then(|| gateway / base)
}

fn p50_ratio(records: &[RunRecord], over: PathKind, clients: usize) -> Option<f64> {
    let gateway = find(records, PathKind::Gateway, clients)?
        .outcome
        .summary
        .p50?;
    let base = find(records, over, clients)?.outcome.summary.p50?;
    (!base.is_zero()).then(|| gateway.as_secs_f64() / base.as_secs_f64())
}

/// Throughput ratios at the highest client count and p50 ratios at the lowest (16 and 1 with
/// the default settings).
pub(crate) fn ratios(records: &[RunRecord]) -> Vec<Ratio> {
    let most = records
        .iter()
        .map(|record| record.clients)
        .max()
        .unwrap_or(0);
    let fewest = records
        .iter()
        .map(|record| record.clients)
        .min()
        .unwrap_or(0);
    let judged = |value: Option<f64>, pass: fn(f64) -> bool| {
        value.map(|value| {
            if pass(value) {
                Verdict::Pass
            } else {
                Verdict::Miss
            }
        })
    };
    let throughput = throughput_ratio(records, PathKind::PgBouncer, most);
    let p50 = p50_ratio(records, PathKind::PgBouncer, fewest);
    vec![
        Ratio {
            label: format!("gateway/pgbouncer throughput @{most} clients"),
            value: throughput,
            verdict: judged(throughput, |value| value >= THROUGHPUT_TARGET),
            target: Some(">= 1.00"),
        },
        Ratio {
            label: format!("gateway/pgbouncer p50 @{fewest} client(s)"),
            value: p50,
            verdict: judged(p50, |value| value <= P50_TARGET),
            target: Some("<= 2.00"),
        },
        Ratio {
            label: format!("gateway/direct throughput @{most} clients"),
            value: throughput_ratio(records, PathKind::Direct, most),
            verdict: None,
            target: None,
        },
        Ratio {
            label: format!("gateway/direct p50 @{fewest} client(s)"),
            value: p50_ratio(records, PathKind::Direct, fewest),
            verdict: None,
            target: None,
        },
    ]
}

pub(crate) fn ratios_text(ratios: &[Ratio]) -> String {
    let mut out = String::new();
    for ratio in ratios {
        let value = ratio
            .value
            .map_or_else(|| "n/a".to_owned(), |value| format!("{value:.2}"));
        let judgement = match (ratio.target, ratio.verdict) {
            (Some(target), Some(verdict)) => format!("(target {target})  {}", verdict.label()),
            (Some(target), None) => format!("(target {target})  not measured"),
            (None, _) => "(reference)".to_owned(),
        };
        let _ = writeln!(out, "  {:<42} {value:>6}  {judgement}", ratio.label);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Summary;

    fn record(path: PathKind, clients: usize, rps: f64, p50_us: u64) -> RunRecord {
        RunRecord {
            path,
            clients,
            outcome: RunOutcome {
                summary: Summary {
                    requests: rps as u64,
                    requests_per_sec: rps,
                    p50: Some(Duration::from_micros(p50_us)),
                    p99: Some(Duration::from_micros(p50_us * 3)),
                    errors: 0,
                },
                first_error: None,
                clients_stopped_early: 0,
                bench_cpu_per_request: Some(Duration::from_nanos(12_340)),
                proxy_cpu_per_request: None,
            },
        }
    }

    #[test]
    fn ratios_use_most_clients_for_throughput_and_fewest_for_latency() {
        let records = vec![
            record(PathKind::Direct, 1, 10_000.0, 100),
            record(PathKind::Direct, 16, 40_000.0, 400),
            record(PathKind::PgBouncer, 1, 5_000.0, 200),
            record(PathKind::PgBouncer, 16, 20_000.0, 800),
            record(PathKind::Gateway, 1, 3_000.0, 500),
            record(PathKind::Gateway, 16, 22_000.0, 700),
        ];
        let ratios = ratios(&records);
        assert_eq!(ratios[0].label, "gateway/pgbouncer throughput @16 clients");
        assert!((ratios[0].value.expect("measured") - 1.1).abs() < 1e-9);
        assert_eq!(ratios[0].verdict, Some(Verdict::Pass));
        assert!((ratios[1].value.expect("measured") - 2.5).abs() < 1e-9);
        assert_eq!(ratios[1].verdict, Some(Verdict::Miss));
        assert!((ratios[2].value.expect("measured") - 0.55).abs() < 1e-9);
        assert_eq!(ratios[2].verdict, None);
        assert!((ratios[3].value.expect("measured") - 5.0).abs() < 1e-9);
        let text = ratios_text(&ratios);
        assert!(text.contains("1.10  (target >= 1.00)  PASS"), "{text}");
        assert!(text.contains("2.50  (target <= 2.00)  MISS"), "{text}");
    }

    #[test]
    fn missing_runs_give_no_verdict() {
        let records = vec![record(PathKind::Gateway, 16, 1_000.0, 100)];
        let ratios = ratios(&records);
        assert!(
            ratios
                .iter()
                .all(|ratio| ratio.value.is_none() && ratio.verdict.is_none())
        );
        assert!(ratios_text(&ratios).contains("n/a"));
    }

    #[test]
    fn table_lists_every_run() {
        let text = table(&[
            record(PathKind::Direct, 1, 12_345.67, 81),
            record(PathKind::Gateway, 16, 999.0, 1_500),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].starts_with("direct") && lines[1].contains("12345.7"),
            "{text}"
        );
        assert!(
            lines[1].contains("0.081") && lines[1].contains("0.243"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("gateway") && lines[2].contains("1.500"),
            "{text}"
        );
    }
}
