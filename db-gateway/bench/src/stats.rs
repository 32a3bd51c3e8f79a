//! Latency percentiles and throughput of one run.
//!
//! Latencies are kept exactly (one `u64` of nanoseconds per request, bounded by the per-client
//! request cap) and sorted once at the end: a run is at most a few million samples, so exact
//! nearest-rank percentiles cost less than getting a histogram's precision settings right.

use std::time::Duration;

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Summary {
    /// Successful requests started inside the measured window.
    pub(crate) requests: u64,
    pub(crate) requests_per_sec: f64,
    pub(crate) p50: Option<Duration>,
    pub(crate) p99: Option<Duration>,
    /// Failed or timed-out requests over the whole run, warm-up included.
    pub(crate) errors: u64,
}

impl Summary {
    /// `latencies_ns` are the successful requests of the measured window, in any order.
    pub(crate) fn new(mut latencies_ns: Vec<u64>, window: Duration, errors: u64) -> Self {
        latencies_ns.sort_unstable();
        let requests = latencies_ns.len() as u64;
        Self {
            requests,
            requests_per_sec: requests as f64 / window.as_secs_f64(),
            p50: percentile(&latencies_ns, 50.0).map(Duration::from_nanos),
            p99: percentile(&latencies_ns, 99.0).map(Duration::from_nanos),
            errors,
        }
    }
}

/// Nearest-rank percentile of sorted samples: the smallest sample with at least `pct` percent
/// of all samples at or below it.
pub(crate) fn percentile(sorted: &[u64], pct: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50));
        assert_eq!(percentile(&samples, 99.0), Some(99));
        assert_eq!(percentile(&samples, 100.0), Some(100));
        assert_eq!(percentile(&samples, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_sorts_and_divides_by_the_window() {
        let mut samples: Vec<u64> = (1..=1000).map(|n| n * 1000).collect();
        samples.reverse();
        let summary = Summary::new(samples, Duration::from_secs(4), 3);
        assert_eq!(summary.requests, 1000);
        assert!((summary.requests_per_sec - 250.0).abs() < 1e-9);
        assert_eq!(summary.p50, Some(Duration::from_micros(500)));
        assert_eq!(summary.p99, Some(Duration::from_micros(990)));
        assert_eq!(summary.errors, 3);
        assert_eq!(
            Summary::new(Vec::new(), Duration::from_secs(1), 0).p50,
            None
        );
    }
}
