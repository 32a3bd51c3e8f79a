//! workerd's own floor for a media stream (`scripts/bench-floor`): what the runtime costs, on this
//! machine, to deliver Twilio's 50 media frames a second per call into a Durable Object that does
//! almost nothing with them.
//!
//! Twilio fixes the rate and the shape of a media stream: one JSON text frame every 20 ms per call
//! (~300 bytes, 160 bytes of μ-law in base64). A profile of `CallSession` showed most of its CPU in
//! workerd's own event machinery (KJ promises, entering V8, the WebSocket read loop) rather than in
//! our wasm, so the call's CPU per call-minute (`scripts/bench-voice`, `scripts/bench-scale`) is
//! read against this floor, measured in the same run on the same machine.
//!
//! How: `workers/e2e/floor/floor.js` (a module Worker, two Durable Object classes) is served by
//! `workerd serve` directly with SQLite-backed objects stored on disk, as `callmeback_e2e` serves
//! the real Worker. For each variant and each number of simultaneous calls N, N WebSocket clients
//! (`/{variant}/ws/{name}`, one object per call) send realistic Twilio `media` frames (fresh
//! sequence numbers, chunks, timestamps and payloads) every 20 ms, their starts spread over the
//! first 20 ms. After a 2 s warm-up, workerd's CPU (utime + stime of every process in its process
//! group, from `/proc`, 10 ms resolution) is read over the measured window, minus its idle CPU
//! measured just before over 2 s with nothing connected, and divided by the call-minutes in the
//! window. Variants:
//! - `listener`: `server.accept()` and a `message` event listener (what `CallSession` does);
//! - `hibernation`: `ctx.acceptWebSocket()` and `webSocketMessage()` (the hibernation API).
//!
//! Each object counts its messages, sends the count back every 50 messages, and answers a final
//! `count` request: "delivered msg/s" is what the objects counted over the whole send (warm-up
//! included) divided by its duration, and µs/msg is the window's CPU over the messages delivered
//! in it at that rate. The load generator's own CPU (this process) over the same
//! window is reported beside it, since it shares the machine with workerd.
//!
//! Usage: `bench-floor [--calls 1,10,50] [--seconds 20]`. Needs `node_modules` (scripts/bootstrap).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use callmeback_e2e::{free_port, repo_root, stop_group};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio_tungstenite::tungstenite::Message;

/// The floor Worker, written beside the generated config at start.
const FLOOR_JS: &str = include_str!("../../floor/floor.js");
/// Twilio sends one media frame per 20 ms of audio.
const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// Not measured: connections settle, V8 warms up.
const WARM_UP: Duration = Duration::from_secs(2);
/// workerd's idle CPU is measured over this long before each step.
const IDLE: Duration = Duration::from_secs(2);
const VARIANTS: [&str; 2] = ["listener", "hibernation"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut calls: Vec<usize> = vec![1, 10, 50];
    let mut seconds = 20u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--calls", Some(v)) => {
                calls = v
                    .split(',')
                    .map(|n| n.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--calls takes numbers separated by commas")?;
            }
            ("--seconds", Some(v)) => seconds = v.parse().context("--seconds takes a number")?,
            _ => {
                eprintln!("usage: bench-floor [--calls 1,10,50] [--seconds 20]");
                std::process::exit(2);
            }
        }
    }
    calls.retain(|&n| n > 0);
    if calls.is_empty() || seconds == 0 {
        bail!("need at least one call count and a positive --seconds");
    }
    let window = Duration::from_secs(seconds);

    let workerd = Workerd::start()?;
    println!(
        "bench-floor: {} (pid {}), {} frames/s per call, {}-byte frames, warm-up {} s, window {} s",
        workerd.version,
        workerd.pid(),
        Duration::from_secs(1).as_millis() / FRAME_INTERVAL.as_millis(),
        media_frame("MZ00000000000000000000000000000000", 0, &[0u8; 160]).len(),
        WARM_UP.as_secs(),
        seconds
    );

    let run = async {
        let mut results = Vec::new();
        for variant in VARIANTS {
            for &n in &calls {
                let step = run_step(&workerd, variant, n, window).await?;
                eprintln!(
                    "  {variant:<11} {n:>3} calls: {:.0} CPU ms per call-minute",
                    step.cpu_ms_per_call_minute()
                );
                results.push(step);
            }
        }
        anyhow::Ok(results)
    };
    let results = tokio::select! {
        results = run => results?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    };
    drop(workerd);

    println!();
    println!(
        "{:<11} {:>5} {:>10} {:>9} {:>13} {:>8} {:>10} {:>10} {:>13}",
        "variant",
        "calls",
        "workerd ms",
        "idle ms/s",
        "ms/call-min",
        "µs/msg",
        "sent/s",
        "deliv./s",
        "loadgen ms/cm"
    );
    for r in &results {
        println!(
            "{:<11} {:>5} {:>10.0} {:>9.1} {:>13.0} {:>8.1} {:>10.1} {:>10.1} {:>13.0}",
            r.variant,
            r.calls,
            r.cpu_seconds * 1000.0,
            r.idle_per_second * 1000.0,
            r.cpu_ms_per_call_minute(),
            r.cpu_us_per_message(),
            r.sent as f64 / r.send_seconds,
            r.delivered as f64 / r.send_seconds,
            r.loadgen_seconds * 1000.0 / r.call_minutes(),
        );
    }
    println!(
        "(workerd ms: CPU over the {seconds} s window minus idle; ms/call-min: that per call-minute; \
         µs/msg: per message delivered in the window; sent/deliv.: frames per second over the whole \
         send, all calls; loadgen ms/cm: this process's CPU per call-minute)"
    );
    let summary: Vec<String> = VARIANTS
        .iter()
        .map(|variant| {
            let figures: Vec<String> = results
                .iter()
                .filter(|r| r.variant == *variant)
                .map(|r| format!("{}×{:.0}", r.calls, r.cpu_ms_per_call_minute()))
                .collect();
            format!("{variant} {}", figures.join(" "))
        })
        .collect();
    println!(
        "summary: workerd floor at 50 frames/s, CPU ms per call-minute (calls×ms): {}",
        summary.join("; ")
    );
    Ok(())
}

/// One measured step: one variant, `calls` simultaneous calls.
struct Step {
    variant: &'static str,
    calls: usize,
    window_seconds: f64,
    /// workerd CPU over the window, idle subtracted.
    cpu_seconds: f64,
    idle_per_second: f64,
    /// This process's CPU over the window.
    loadgen_seconds: f64,
    /// Frames sent and counted by the objects over the whole send (warm-up included).
    sent: u64,
    delivered: u64,
    send_seconds: f64,
}

impl Step {
    fn call_minutes(&self) -> f64 {
        self.calls as f64 * self.window_seconds / 60.0
    }

    fn cpu_ms_per_call_minute(&self) -> f64 {
        self.cpu_seconds * 1000.0 / self.call_minutes()
    }

    /// Per message delivered, at the rate delivered over the whole send.
    fn cpu_us_per_message(&self) -> f64 {
        let rate = self.delivered as f64 / self.send_seconds;
        self.cpu_seconds * 1e6 / (rate * self.window_seconds).max(1.0)
    }
}

async fn run_step(
    workerd: &Workerd,
    variant: &'static str,
    calls: usize,
    window: Duration,
) -> anyhow::Result<Step> {
    // Idle: nothing connected (the previous step's objects are closed).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_start = workerd.cpu_seconds();
    tokio::time::sleep(IDLE).await;
    let idle_per_second = (workerd.cpu_seconds() - idle_start) / IDLE.as_secs_f64();

    let run_id: u32 = rand::rng().random();
    let mut sockets = Vec::with_capacity(calls);
    for i in 0..calls {
        let url = format!(
            "ws://127.0.0.1:{}/{variant}/ws/{run_id:08x}-{calls}-{i}",
            workerd.port
        );
        let (socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .with_context(|| format!("connecting {url}"))?;
        sockets.push(socket);
    }

    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let end = start + WARM_UP + window;
    let mut tasks = Vec::with_capacity(calls);
    for (i, socket) in sockets.into_iter().enumerate() {
        // Calls do not start in step: spread their frames over the 20 ms.
        let first = start + FRAME_INTERVAL * i as u32 / calls as u32;
        tasks.push(tokio::spawn(call(socket, first, end)));
    }

    tokio::time::sleep_until(start + WARM_UP).await;
    let cpu_start = workerd.cpu_seconds();
    let gen_start = self_cpu_seconds();
    let window_started = Instant::now();
    tokio::time::sleep_until(end).await;
    let cpu_end = workerd.cpu_seconds();
    let gen_end = self_cpu_seconds();
    let window_seconds = window_started.elapsed().as_secs_f64();

    let (mut sent, mut delivered) = (0, 0);
    for task in tasks {
        let (s, d) = task.await.context("a call task panicked")??;
        sent += s;
        delivered += d;
    }
    Ok(Step {
        variant,
        calls,
        window_seconds,
        cpu_seconds: (cpu_end - cpu_start) - idle_per_second * window_seconds,
        idle_per_second,
        loadgen_seconds: gen_end - gen_start,
        sent,
        delivered,
        send_seconds: (end - start).as_secs_f64(),
    })
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One call: a media frame every 20 ms from `first` until `end`, then the object's final count.
/// Returns (frames sent, frames the object counted).
async fn call(
    socket: Socket,
    first: tokio::time::Instant,
    end: tokio::time::Instant,
) -> anyhow::Result<(u64, u64)> {
    let (mut sink, mut stream) = socket.split();
    let reader = tokio::spawn(async move {
        while let Some(message) = stream.next().await {
            // The object's count every 50 frames, then its final count.
            if let Message::Text(text) = message?
                && let Some(final_count) = text.strip_prefix("final:")
            {
                return Ok(final_count.parse::<u64>()?);
            }
        }
        bail!("the object closed the socket before its final count")
    });

    let stream_sid = format!("MZ{:032x}", rand::rng().random::<u128>());
    let mut audio = [0u8; 160];
    let mut ticks = tokio::time::interval_at(first, FRAME_INTERVAL);
    let mut sent = 0u64;
    loop {
        let now = ticks.tick().await;
        if now >= end {
            break;
        }
        rand::rng().fill(&mut audio[..]);
        sink.send(Message::text(media_frame(&stream_sid, sent, &audio)))
            .await?;
        sent += 1;
    }
    sink.send(Message::text("count")).await?;
    let delivered = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .context("no final count within 10 s")???;
    let _ = sink.close().await;
    Ok((sent, delivered))
}

/// A Twilio `media` event for chunk `chunk` (0-based) of a stream, as Twilio sends it
/// (sequence numbers start after `connected` and `start`).
fn media_frame(stream_sid: &str, chunk: u64, audio: &[u8]) -> String {
    let payload = base64::engine::general_purpose::STANDARD.encode(audio);
    format!(
        r#"{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{ts}","payload":"{payload}"}},"streamSid":"{stream_sid}"}}"#,
        seq = chunk + 2,
        chunk = chunk + 1,
        ts = chunk * 20,
    )
}

/// utime + stime of a `/proc/<pid>/stat`, in seconds.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0) // USER_HZ on Linux
}

fn self_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_cpu_seconds(&s))
        .unwrap_or(0.0)
}

/// workerd serving the floor Worker, in its own process group; stopped (and its files removed)
/// when dropped.
struct Workerd {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    version: String,
}

impl Workerd {
    fn start() -> anyhow::Result<Workerd> {
        let bin = workerd_binary()?;
        let version = Command::new(&bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("callmeback-bench-floor-{}", std::process::id()));
        let storage = dir.join("do-storage");
        std::fs::create_dir_all(&storage).context("creating the bench's temp dir")?;
        std::fs::write(dir.join("floor.js"), FLOOR_JS)?;
        let port = free_port();
        let wrangler = std::fs::read_to_string(repo_root().join("wrangler.toml"))?;
        std::fs::write(
            dir.join("workerd.capnp"),
            floor_config(&compatibility_date(&wrangler), &storage, port),
        )?;
        let log = std::fs::File::create(dir.join("workerd.log"))?;
        let child = Command::new(&bin)
            .current_dir(&dir)
            .args(["serve", "--experimental", "workerd.capnp"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let workerd = Workerd {
            child: Some(child),
            port,
            dir,
            version,
        };
        workerd.wait_ready()?;
        Ok(workerd)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Waits until the Worker answers (404 for `/`), up to 30 s.
    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let request = "GET / HTTP/1.1\r\nHost: floor\r\nConnection: close\r\n\r\n";
                let mut answer = [0u8; 12];
                if conn.write_all(request.as_bytes()).is_ok()
                    && conn.read_exact(&mut answer).is_ok()
                    && &answer == b"HTTP/1.1 404"
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.join("workerd.log")).unwrap_or_default();
        bail!("workerd did not answer within 30 s; its log:\n{log}")
    }

    /// utime + stime of every live process in workerd's process group, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let group = self.pid();
        let mut total = 0.0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let pgrp: u32 = rest
                .split_whitespace()
                .nth(2)
                .and_then(|f| f.parse().ok())
                .unwrap_or(0);
            if pgrp == group {
                total += stat_cpu_seconds(&stat).unwrap_or(0.0);
            }
        }
        total
    }
}

impl Drop for Workerd {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_group(child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The workerd binary npm installed (`scripts/bootstrap`).
fn workerd_binary() -> anyhow::Result<PathBuf> {
    let root = repo_root();
    [
        "node_modules/@cloudflare/workerd-linux-64/bin/workerd",
        "node_modules/.bin/workerd",
    ]
    .iter()
    .map(|p| root.join(p))
    .find(|p| p.exists())
    .context("workerd not found under node_modules: run scripts/bootstrap")
}

/// wrangler.toml's `compatibility_date`, so the floor runs with the Worker's runtime behaviour.
fn compatibility_date(wrangler_toml: &str) -> String {
    wrangler_toml
        .lines()
        .take_while(|line| !line.trim_start().starts_with('['))
        .find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == "compatibility_date").then(|| value.trim().trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "2026-04-01".to_owned())
}

/// The workerd config (Cap'n Proto text) serving `floor.js` from the config's directory, with
/// both Durable Object classes SQLite-backed on disk under `storage` (as the Worker's are).
fn floor_config(compatibility_date: &str, storage: &Path, port: u16) -> String {
    format!(
        r#"using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "do-storage", disk = (path = {storage:?}, writable = true)),
  ],
  sockets = [(name = "http", address = "127.0.0.1:{port}", http = (), service = "main")],
);

const worker :Workerd.Worker = (
  modules = [(name = "floor.js", esModule = embed "floor.js")],
  compatibilityDate = {compatibility_date:?},
  bindings = [
    (name = "LISTENER", durableObjectNamespace = "FloorListener"),
    (name = "HIBERNATION", durableObjectNamespace = "FloorHibernation"),
  ],
  durableObjectNamespaces = [
    (className = "FloorListener", uniqueKey = "bench-floor-FloorListener", enableSql = true),
    (className = "FloorHibernation", uniqueKey = "bench-floor-FloorHibernation", enableSql = true),
  ],
  durableObjectStorage = (localDisk = "do-storage"),
);
"#,
        storage = storage.display().to_string(),
    )
}
