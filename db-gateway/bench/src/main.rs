//! `db-gateway-bench`: is db-gateway a bottleneck compared with PgBouncer?
//!
//! Measures the pgbench select-only lookup direct to Postgres, through PgBouncer (transaction
//! pooling) and through db-gateway, each at a few client counts, and prints throughput, median
//! and p99 latency, errors, and the gateway's ratios against its targets. It expects the three
//! services to be running already; `scripts/bench-gateway` starts them, runs this, and stops them.
//!
//! Exit status: 0 when every run finished without errors (whether or not the targets were met:
//! they are reported, not enforced), 1 when the benchmark could not run, 2 when some requests
//! failed or clients stopped early, which makes the figures unreliable.

mod config;
mod cpu;
mod gateway_client;
mod report;
mod run;
mod soak;
mod stats;
mod targets;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};

use crate::config::{Config, Invocation};
use crate::report::RunRecord;
use crate::run::RunPlan;
use crate::targets::{LOOKUP_SQL, PathKind, Target};

/// pgbench creates this many accounts per unit of scale.
const ACCOUNTS_PER_SCALE: i32 = 100_000;

fn main() -> ExitCode {
    let invocation =
        match Invocation::parse(std::env::args().skip(1), |name| std::env::var(name).ok()) {
            Ok(invocation) => invocation,
            Err(error) => {
                eprintln!("error: {error:#}");
                return ExitCode::from(1);
            }
        };
    let config = match invocation {
        Invocation::Help => {
            print!("{}", config::usage());
            return ExitCode::SUCCESS;
        }
        Invocation::Run(config) => *config,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // Always explicit, so the printed thread count is the real one (tokio would otherwise also
    // honour TOKIO_WORKER_THREADS).
    runtime.enable_all().worker_threads(worker_threads(&config));
    let result = runtime
        .build()
        .context("starting the tokio runtime")
        .and_then(|runtime| runtime.block_on(benchmark(config)));
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

async fn benchmark(config: Config) -> anyhow::Result<ExitCode> {
    let targets = config
        .paths
        .iter()
        .map(|&path| Target::for_path(path, &config).map(|target| (path, target)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let scale = match config.scale {
        Some(scale) => scale,
        None => detect_scale(&config).await?,
    };
    let max_aid = i32::try_from(scale)
        .ok()
        .and_then(|scale| scale.checked_mul(ACCOUNTS_PER_SCALE))
        .ok_or_else(|| anyhow!("scale {scale} is too large for int4 account ids"))?;
    preflight(&targets, max_aid).await?;
    if let Some(duration) = config.soak {
        return soak(&config, &targets, duration, max_aid).await;
    }

    let threads = worker_threads(&config);
    println!("db-gateway benchmark: `{LOOKUP_SQL}`, aid uniform in 1..={max_aid} (scale {scale})");
    println!(
        "each run: {:.1} s warm-up, then {:.1} s measured; closed loop, one connection per client",
        config.warmup.as_secs_f64(),
        config.duration.as_secs_f64()
    );
    println!(
        "load generator: {threads} tokio worker thread(s) on a machine with {} CPU(s), shared \
         with Postgres, PgBouncer and the gateway",
        cpu_count()
    );
    if let Some(load) = load_average() {
        println!("load average before: {load}");
    }
    for (path, target) in &targets {
        let extra = target
            .gateway()
            .map(|gateway| format!("; key id `{}`", gateway.key_id()))
            .unwrap_or_default();
        println!("  {:<10} {}{extra}", path.name(), path.method());
    }
    println!();

    let mut records = Vec::new();
    for (path, target) in &targets {
        for &clients in &config.clients {
            eprintln!("running {} with {clients} client(s) ...", path.name());
            let plan = RunPlan {
                clients,
                warmup: config.warmup,
                duration: config.duration,
                max_requests_per_client: config.max_requests_per_client,
                request_timeout: config.request_timeout,
                max_aid,
                proxy: match path {
                    PathKind::Direct => None,
                    PathKind::PgBouncer => config.pgbouncer_pid.map(cpu::Process::Pid),
                    PathKind::Gateway => config.gateway_pid.map(cpu::Process::Pid),
                },
            };
            let outcome = run::run(target, plan)
                .await
                .with_context(|| format!("{} with {clients} client(s)", path.name()))?;
            records.push(RunRecord {
                path: *path,
                clients,
                outcome,
            });
        }
    }

    print!("{}", report::table(&records));
    println!(
        "(bench-cpu / proxy-cpu: CPU microseconds per measured request used by this load \
         generator / by the PgBouncer or gateway process)"
    );
    println!();
    println!("ratios:");
    print!("{}", report::ratios_text(&report::ratios(&records)));

    if let Some(load) = load_average() {
        println!("load average after:  {load}");
    }

    let mut unreliable = false;
    for record in &records {
        let outcome = &record.outcome;
        if let Some(error) = &outcome.first_error {
            unreliable = true;
            println!(
                "note: {} x{}: {} error(s), first: {error}",
                record.path.name(),
                record.clients,
                outcome.summary.errors
            );
        }
        if outcome.clients_stopped_early > 0 {
            unreliable = true;
            println!(
                "note: {} x{}: {} client(s) stopped early (request cap or lost connection)",
                record.path.name(),
                record.clients,
                outcome.clients_stopped_early
            );
        }
    }
    Ok(if unreliable {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Soak mode: the gateway path alone, for `duration`, at the largest client count.
async fn soak(
    config: &Config,
    targets: &[(PathKind, Arc<Target>)],
    duration: std::time::Duration,
    max_aid: i32,
) -> anyhow::Result<ExitCode> {
    let (_, gateway) = targets
        .iter()
        .find(|(path, _)| *path == PathKind::Gateway)
        .ok_or_else(|| anyhow!("--soak needs the gateway path (--paths gateway)"))?;
    let gateway_pid = config
        .gateway_pid
        .ok_or_else(|| anyhow!("--soak needs --gateway-pid"))?;
    let clients = config.clients.iter().copied().max().unwrap_or(16);
    if let Some(load) = load_average() {
        println!("load average before: {load}");
    }
    let clean = soak::run(
        gateway,
        soak::SoakPlan {
            duration,
            clients,
            write_percent: config.soak_write_percent,
            request_timeout: config.request_timeout,
            max_aid,
            gateway_pid,
            gateway_admin: config.gateway_admin,
            database: config.direct.clone(),
        },
    )
    .await?;
    if let Some(load) = load_average() {
        println!("load average after:  {load}");
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

fn worker_threads(config: &Config) -> usize {
    config.threads.unwrap_or_else(cpu_count)
}

/// The 1/5/15-minute load averages (Linux): other work on the machine skews every figure.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let fields: Vec<&str> = text.split_whitespace().take(3).collect();
    (fields.len() == 3).then(|| fields.join(" "))
}

/// Reads the pgbench scale (one `pgbench_branches` row per unit) over a Postgres path.
async fn detect_scale(config: &Config) -> anyhow::Result<u32> {
    let postgres = config
        .direct
        .as_ref()
        .or(config.pgbouncer.as_ref())
        .ok_or_else(|| anyhow!("pass --scale: no Postgres URL to read it from"))?;
    let client = targets::connect_postgres(postgres).await?;
    // query_typed works through PgBouncer's transaction mode as well as directly.
    let rows = client
        .query_typed("SELECT count(*)::int4 FROM pgbench_branches", &[])
        .await
        .context("reading the pgbench scale (did `pgbench -i` run?)")?;
    let scale: i32 = rows
        .first()
        .ok_or_else(|| anyhow!("count(*) returned no row"))?
        .try_get(0)?;
    u32::try_from(scale)
        .ok()
        .filter(|&scale| scale > 0)
        .ok_or_else(|| anyhow!("pgbench_branches is empty: run `pgbench -i` first"))
}

/// Every path must return the same balances for a few accounts before anything is timed, so
/// a misconfigured path cannot produce fast but meaningless figures.
async fn preflight(targets: &[(PathKind, Arc<Target>)], max_aid: i32) -> anyhow::Result<()> {
    let probes = [1, max_aid / 2 + 1, max_aid];
    let mut expected: Option<(PathKind, Vec<i32>)> = None;
    for (path, target) in targets {
        let mut connection = target
            .connect()
            .await
            .with_context(|| format!("preflight: connecting over {}", path.name()))?;
        let mut balances = Vec::with_capacity(probes.len());
        for aid in probes {
            balances.push(
                connection
                    .balance(aid)
                    .await
                    .with_context(|| format!("preflight: aid {aid} over {}", path.name()))?,
            );
        }
        match &expected {
            None => expected = Some((*path, balances)),
            Some((first, first_balances)) if *first_balances != balances => bail!(
                "preflight: {} and {} disagree on accounts {probes:?}: {first_balances:?} vs \
                 {balances:?}",
                first.name(),
                path.name()
            ),
            Some(_) => {}
        }
    }
    Ok(())
}
