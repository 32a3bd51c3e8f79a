//! Soak mode (`--soak SECONDS`): the gateway alone at full rate for a long time, to show that
//! nothing grows without bound and nothing is refused for it.
//!
//! The replay protection used to keep every nonce of the signature window in memory up to a
//! cap, and answer 503 to everything once the cap was reached. This mode drives the gateway
//! the way the Worker does, for as long as asked: `clients` closed-loop connections, each
//! request freshly signed, mostly the benchmark's point read plus a share of write batches (a
//! read and an `accounts.audit` insert in one transaction, like the Worker's "check, then
//! write" batches). Every second it samples the gateway's resident memory from
//! `/proc/<pid>/status`; every answer is counted by status. It prints requests per second, the
//! total, the count of 503s (must be 0), the gateway's RSS at the start, middle and end (and a
//! timeline), the replay-memory metrics when the admin URL is known, and how many nonce rows
//! the database holds at the end (the periodic cleanup keeps that bounded too).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use callmeback_gateway_api::{BATCH_PATH, BatchRequest, OP_PATH, OpCall};
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, sleep_until, timeout};

use callmeback_gateway_api::ops::bench;

use crate::gateway_client::GatewayConnection;
use crate::targets::Target;

/// How often the gateway's RSS is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often progress goes to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// Replacement connections one client may open before it gives up.
const MAX_RECONNECTS: u32 = 5;

#[derive(Debug, Clone)]
pub(crate) struct SoakPlan {
    pub(crate) duration: Duration,
    pub(crate) clients: usize,
    pub(crate) write_percent: u32,
    pub(crate) request_timeout: Duration,
    pub(crate) max_aid: i32,
    pub(crate) gateway_pid: u32,
    pub(crate) gateway_admin: Option<SocketAddr>,
    /// Where to count `gateway_request_nonces` rows at the end.
    pub(crate) database: Option<tokio_postgres::Config>,
}

/// Answers of one client, by HTTP status, plus requests that got no answer.
#[derive(Debug, Default)]
struct ClientTally {
    by_status: BTreeMap<u16, u64>,
    reads: u64,
    writes: u64,
    failures: u64,
    first_failure: Option<String>,
    stopped_early: bool,
}

/// Runs the soak and prints its report; `Ok(false)` if any request was not answered 200.
pub(crate) async fn run(target: &Arc<Target>, plan: SoakPlan) -> anyhow::Result<bool> {
    let mut connections = Vec::with_capacity(plan.clients);
    for index in 0..plan.clients {
        connections.push(
            GatewayConnection::open(Arc::clone(target))
                .await
                .with_context(|| format!("opening connection {} of {}", index + 1, plan.clients))?,
        );
    }
    let started = Instant::now();
    let until = started + plan.duration;
    let answered = Arc::new(AtomicU64::new(0));
    let mut clients = JoinSet::new();
    for (index, connection) in connections.into_iter().enumerate() {
        clients.spawn(drive(
            Arc::clone(target),
            connection,
            plan.clone(),
            index,
            until,
            Arc::clone(&answered),
        ));
    }

    // Sample RSS every second while the clients run.
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut ticks = tokio::time::interval_at(started + SAMPLE_EVERY, SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_progress = started + PROGRESS_EVERY;
    loop {
        let tick = ticks.tick().await;
        if tick >= until {
            break;
        }
        let elapsed = tick.duration_since(started);
        let Some(rss) = rss_kib(plan.gateway_pid) else {
            bail!(
                "cannot read the RSS of gateway process {} (has it exited?)",
                plan.gateway_pid
            );
        };
        samples.push((elapsed, rss));
        if tick >= next_progress {
            next_progress += PROGRESS_EVERY;
            eprintln!(
                "soak: {:>4} s, {} answers, gateway RSS {}",
                elapsed.as_secs(),
                answered.load(Ordering::Relaxed),
                mib(rss)
            );
        }
    }
    sleep_until(until).await;
    if let Some(rss) = rss_kib(plan.gateway_pid) {
        samples.push((plan.duration, rss));
    }

    let mut total = ClientTally::default();
    let mut stopped_early = 0;
    while let Some(joined) = clients.join_next().await {
        let tally = joined.context("a soak client panicked")?;
        for (status, count) in tally.by_status {
            *total.by_status.entry(status).or_default() += count;
        }
        total.reads += tally.reads;
        total.writes += tally.writes;
        total.failures += tally.failures;
        if total.first_failure.is_none() {
            total.first_failure = tally.first_failure;
        }
        stopped_early += usize::from(tally.stopped_early);
    }

    let metrics = match plan.gateway_admin {
        Some(admin) => replay_metrics(admin).await.unwrap_or_else(|error| {
            vec![format!("(could not read the gateway's metrics: {error:#})")]
        }),
        None => Vec::new(),
    };
    let nonce_rows = match &plan.database {
        Some(database) => Some(count_nonce_rows(database).await),
        None => None,
    };
    report(&plan, &total, &samples, &metrics, nonce_rows, stopped_early);
    let clean = total.failures == 0
        && stopped_early == 0
        && total.by_status.keys().all(|status| *status == 200);
    Ok(clean)
}

async fn drive(
    target: Arc<Target>,
    mut connection: GatewayConnection,
    plan: SoakPlan,
    client: usize,
    until: Instant,
    answered: Arc<AtomicU64>,
) -> ClientTally {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut tally = ClientTally::default();
    let mut reconnects = 0;
    let mut sent: u64 = 0;
    while Instant::now() < until {
        sent += 1;
        let write = rng.random_range(0..100) < plan.write_percent;
        let (path, body) = if write {
            tally.writes += 1;
            let batch = BatchRequest {
                ops: vec![
                    OpCall::of(&bench::ACCOUNT_BALANCE)
                        .param("aid", rng.random_range(1..=plan.max_aid)),
                    OpCall::new("accounts.audit")
                        .param("event_type", "bench_soak")
                        .param("details", json!({"client": client, "request": sent})),
                ],
            };
            (BATCH_PATH, serde_json::to_vec(&batch))
        } else {
            tally.reads += 1;
            let read = OpCall::of(&bench::ACCOUNT_BALANCE)
                .param("aid", rng.random_range(1..=plan.max_aid));
            (OP_PATH, serde_json::to_vec(&read))
        };
        let body = match body {
            Ok(body) => body,
            Err(error) => {
                tally.failures += 1;
                tally.first_failure.get_or_insert(error.to_string());
                break;
            }
        };
        let failure = match timeout(plan.request_timeout, connection.post(path, body)).await {
            Ok(Ok((status, _body))) => {
                *tally.by_status.entry(status.as_u16()).or_default() += 1;
                answered.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Ok(Err(error)) => format!("{error:#}"),
            Err(_elapsed) => format!("no answer within {} ms", plan.request_timeout.as_millis()),
        };
        tally.failures += 1;
        tally.first_failure.get_or_insert(failure);
        if reconnects >= MAX_RECONNECTS {
            tally.stopped_early = true;
            break;
        }
        reconnects += 1;
        match GatewayConnection::open(Arc::clone(&target)).await {
            Ok(fresh) => connection = fresh,
            Err(error) => {
                tally
                    .first_failure
                    .get_or_insert(format!("reconnecting: {error:#}"));
                tally.stopped_early = true;
                break;
            }
        }
    }
    tally
}

fn report(
    plan: &SoakPlan,
    total: &ClientTally,
    samples: &[(Duration, u64)],
    metrics: &[String],
    nonce_rows: Option<anyhow::Result<i64>>,
    stopped_early: usize,
) {
    let answers: u64 = total.by_status.values().sum();
    let seconds = plan.duration.as_secs_f64();
    println!(
        "soak: {:.0} s at full rate, {} clients, {}% write batches (read + accounts.audit insert), \
         the rest single reads ({})",
        seconds,
        plan.clients,
        plan.write_percent,
        bench::ACCOUNT_BALANCE.name
    );
    println!(
        "  requests:       {answers} answered ({:.1}/s): {} reads, {} write batches sent",
        answers as f64 / seconds,
        total.reads,
        total.writes
    );
    let statuses: Vec<String> = total
        .by_status
        .iter()
        .map(|(status, count)| format!("{status}: {count}"))
        .collect();
    println!("  by status:      {}", statuses.join(", "));
    println!(
        "  503 answers:    {} (must be 0)",
        total.by_status.get(&503).copied().unwrap_or(0)
    );
    println!(
        "  no answer:      {} (timeouts, broken connections){}",
        total.failures,
        total
            .first_failure
            .as_ref()
            .map(|failure| format!("; first: {failure}"))
            .unwrap_or_default()
    );
    if stopped_early > 0 {
        println!("  clients stopped early: {stopped_early}");
    }
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        let middle = samples[samples.len() / 2];
        let (min, max) = samples.iter().fold((u64::MAX, 0), |(min, max), (_, rss)| {
            (min.min(*rss), max.max(*rss))
        });
        println!(
            "  gateway RSS:    start {} (t={} s), middle {} (t={} s), end {} (t={} s); min {}, max {}",
            mib(first.1),
            first.0.as_secs(),
            mib(middle.1),
            middle.0.as_secs(),
            mib(last.1),
            last.0.as_secs(),
            mib(min),
            mib(max)
        );
        let step = (samples.len() / 10).max(1);
        let timeline: Vec<String> = samples
            .iter()
            .step_by(step)
            .chain(std::iter::once(last))
            .map(|(at, rss)| format!("{}s {}", at.as_secs(), mib(*rss)))
            .collect();
        println!("  RSS timeline:   {}", timeline.join(", "));
    }
    for line in metrics {
        println!("  {line}");
    }
    match nonce_rows {
        Some(Ok(rows)) => println!(
            "  gateway_request_nonces rows at the end: {rows} (each write batch's nonce; the \
             gateways delete a row once its signature has expired)"
        ),
        Some(Err(error)) => println!("  gateway_request_nonces rows: unknown ({error:#})"),
        None => {}
    }
}

/// `VmRSS` of a process in KiB (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The `gateway_replay_*` lines of the gateway's `/metrics`.
async fn replay_metrics(admin: SocketAddr) -> anyhow::Result<Vec<String>> {
    let stream = tokio::net::TcpStream::connect(admin).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get("/metrics")
        .header(hyper::header::HOST, admin.to_string())
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter(|line| line.starts_with("gateway_replay_"))
        .map(str::to_owned)
        .collect())
}

async fn count_nonce_rows(database: &tokio_postgres::Config) -> anyhow::Result<i64> {
    let client = crate::targets::connect_postgres(database).await?;
    let row = client
        .query_one("SELECT count(*) FROM gateway_request_nonces", &[])
        .await?;
    Ok(row.get(0))
}
