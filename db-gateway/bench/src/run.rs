//! One run: N clients hammer one path in a closed loop for warm-up + measured time.
//!
//! All connections are opened before the clock starts, and every client starts at the same
//! instant, so connection setup is never measured and the measured window is the same for all.
//! A client sends its next request as soon as the previous one is answered; a request counts
//! toward the results if it *started* inside the measured window. Every loop is bounded twice:
//! by the run's end time and by a per-client request cap.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use crate::cpu::{Process, cpu_time};
use crate::stats::Summary;
use crate::targets::{Connection, Target};

/// Lead time so every client task is spawned and waiting before the common start.
const START_DELAY: Duration = Duration::from_millis(100);
/// How many replacement connections one client may open in a run before it gives up.
const MAX_RECONNECTS: u32 = 5;
/// Latency samples reserved per measured second and client.
const PRESIZE_SAMPLES_PER_SEC: usize = 20_000;

/// Timing and bounds shared by every client of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunPlan {
    pub(crate) clients: usize,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) max_requests_per_client: u64,
    pub(crate) request_timeout: Duration,
    /// Accounts are `1..=max_aid`.
    pub(crate) max_aid: i32,
    /// The proxy process whose CPU time to report, if any (none for the direct path).
    pub(crate) proxy: Option<Process>,
}

/// What one run produced.
#[derive(Debug)]
pub(crate) struct RunOutcome {
    pub(crate) summary: Summary,
    /// The first error seen, to tell a broken setup from a slow one.
    pub(crate) first_error: Option<String>,
    /// Clients that stopped early (request cap reached or connection lost for good).
    pub(crate) clients_stopped_early: usize,
    /// CPU time per measured request of the load generator and of the proxy, when known.
    pub(crate) bench_cpu_per_request: Option<Duration>,
    pub(crate) proxy_cpu_per_request: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    until: Instant,
}

#[derive(Debug, Default)]
struct ClientOutcome {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    stopped_early: bool,
}

impl ClientOutcome {
    fn record_error(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }
}

pub(crate) async fn run(target: &Arc<Target>, plan: RunPlan) -> anyhow::Result<RunOutcome> {
    let mut connections = Vec::with_capacity(plan.clients);
    for index in 0..plan.clients {
        connections.push(
            target
                .connect()
                .await
                .with_context(|| format!("opening connection {} of {}", index + 1, plan.clients))?,
        );
    }
    let start = Instant::now() + START_DELAY;
    let window = Window {
        start,
        measure_from: start + plan.warmup,
        until: start + plan.warmup + plan.duration,
    };
    let mut clients = JoinSet::new();
    for connection in connections {
        clients.spawn(drive(Arc::clone(target), connection, plan, window));
    }
    // CPU is sampled at the edges of the measured window, like the requests that count.
    let sample = || (cpu_time(Process::Current), plan.proxy.and_then(cpu_time));
    sleep_until(window.measure_from).await;
    let (bench_before, proxy_before) = sample();
    sleep_until(window.until).await;
    let (bench_after, proxy_after) = sample();

    let mut latencies_ns = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let mut clients_stopped_early = 0;
    while let Some(joined) = clients.join_next().await {
        let outcome = joined.context("a client task panicked")?;
        latencies_ns.extend(outcome.latencies_ns);
        errors += outcome.errors;
        if first_error.is_none() {
            first_error = outcome.first_error;
        }
        clients_stopped_early += usize::from(outcome.stopped_early);
    }
    let summary = Summary::new(latencies_ns, plan.duration, errors);
    let per_request = |before: Option<Duration>, after: Option<Duration>| {
        let spent = after?.checked_sub(before?)?;
        let requests = u32::try_from(summary.requests).ok().filter(|&n| n > 0)?;
        Some(spent / requests)
    };
    Ok(RunOutcome {
        bench_cpu_per_request: per_request(bench_before, bench_after),
        proxy_cpu_per_request: per_request(proxy_before, proxy_after),
        summary,
        first_error,
        clients_stopped_early,
    })
}

async fn drive(
    target: Arc<Target>,
    mut connection: Connection,
    plan: RunPlan,
    window: Window,
) -> ClientOutcome {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut outcome = ClientOutcome {
        // Room for a fast client's samples up front, so growing the vector is not measured.
        latencies_ns: Vec::with_capacity(
            (plan.duration.as_secs() as usize)
                .saturating_mul(PRESIZE_SAMPLES_PER_SEC)
                .min(1 << 20),
        ),
        ..ClientOutcome::default()
    };
    let mut reconnects = 0;
    sleep_until(window.start).await;

    let mut sent = 0;
    loop {
        let started = Instant::now();
        if started >= window.until {
            break;
        }
        if sent >= plan.max_requests_per_client {
            outcome.stopped_early = true;
            break;
        }
        sent += 1;
        let aid = rng.random_range(1..=plan.max_aid);
        let result = timeout(plan.request_timeout, connection.balance(aid)).await;
        let elapsed = started.elapsed();
        let must_reconnect = match result {
            Ok(Ok(_balance)) => {
                if started >= window.measure_from {
                    outcome
                        .latencies_ns
                        .push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
                }
                false
            }
            Ok(Err(error)) => {
                outcome.record_error(format!("{error:#}"));
                connection.is_closed()
            }
            Err(_elapsed) => {
                outcome.record_error(format!(
                    "no answer within {} ms",
                    plan.request_timeout.as_millis()
                ));
                // The abandoned request may still be in flight on this connection.
                true
            }
        };
        if must_reconnect {
            if reconnects >= MAX_RECONNECTS {
                outcome.stopped_early = true;
                break;
            }
            reconnects += 1;
            match timeout(plan.request_timeout, target.connect()).await {
                Ok(Ok(fresh)) => connection = fresh,
                Ok(Err(error)) => {
                    outcome.record_error(format!("reconnecting: {error:#}"));
                    outcome.stopped_early = true;
                    break;
                }
                Err(_elapsed) => {
                    outcome.record_error("reconnecting timed out".to_owned());
                    outcome.stopped_early = true;
                    break;
                }
            }
        }
    }
    outcome
}
