//! How many simultaneous calls one local workerd carries (`scripts/bench-scale`).
//!
//! Steps of N simultaneous calls (default 10, 20, 40, 60, 80, 100, 120), each call a real
//! conversation through the whole stack: the simulated callee speaks a few lines at a natural
//! rate, the persona answers through STT → LLM → TTS (simulators at zero added latency), the
//! caller hangs up, the call is recorded. A step passes when every call completed, the callee
//! heard no gap over 100 ms inside the persona's speech, and Twilio saw no protocol violation;
//! the ramp stops at the first step that fails. Per step it prints the worst gap, the pipeline's
//! own reply latency (STT final → first reply frame at the callee), workerd's CPU per call-minute,
//! workerd's peak memory per call, and this process's CPU (the simulators run here and share the
//! same two cores, so they take part of the machine's capacity).
//!
//! Usage: `bench-scale [--steps 10,20,40] [--lines N]`. Needs the environment
//! `scripts/bench-scale` sets up.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use callmeback_e2e::{Stack, TEST_PASSWORD};
use callmeback_simulators::twilio::{Hangup, Line};
use callmeback_simulators::{LlmConfig, Scenario};
use serde_json::{Value, json};

/// A gap in the persona's speech longer than this is audible: the step fails.
const MAX_GAP_MS: u64 = 100;

#[tokio::main]
async fn main() {
    let mut steps: Vec<usize> = vec![10, 20, 40, 60, 80, 100, 120];
    let mut lines_per_call = 4usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--steps", Some(list)) => {
                steps = list
                    .split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .collect();
            }
            ("--lines", Some(n)) => lines_per_call = n.parse().unwrap_or(lines_per_call),
            _ => {
                eprintln!("usage: bench-scale [--steps 10,20,40] [--lines N]");
                std::process::exit(2);
            }
        }
    }
    println!(
        "bench-scale: steps {steps:?}, {lines_per_call} caller lines per call, runtime {}",
        std::env::var("CALLMEBACK_WORKER_RUNTIME").unwrap_or_else(|_| "wrangler dev".into())
    );

    let stack = Arc::new(
        Stack::start_with_vars(&[
            ("IDLE_PROMPT_MS", "60000"),
            ("CALLS_PER_PHONE_PER_HOUR", "1000"),
        ])
        .await,
    );
    let mut llm = LlmConfig {
        mode: callmeback_simulators::llm::LlmMode::Echo,
        ..stack.sims.llm().config()
    };
    llm.time_to_first_token_ms = 0;
    llm.tokens_per_second = 0;
    stack.sims.llm().set_config(llm);

    let baseline_rss = stack.workerd_rss_kib();
    println!("workerd resident memory before the first call: {baseline_rss} KiB\n");
    println!(
        "{:>5} {:>9} {:>8} {:>11} {:>11} {:>15} {:>14} {:>12}  verdict",
        "calls",
        "completed",
        "max gap",
        "reply p50",
        "reply p99",
        "CPU/call-min",
        "peak mem/call",
        "sims CPU"
    );

    let mut reached = 0;
    for (step_index, &calls) in steps.iter().enumerate() {
        let outcome = run_step(&stack, step_index, calls, lines_per_call).await;
        let passed = outcome.completed == calls
            && outcome.max_gap_ms <= MAX_GAP_MS
            && outcome.violations == 0;
        println!(
            "{:>5} {:>9} {:>5} ms {:>8.1} ms {:>8.1} ms {:>12.0} ms {:>10} KiB {:>9.0} ms  {}",
            calls,
            outcome.completed,
            outcome.max_gap_ms,
            percentile(&mut outcome.reply_ms.clone(), 0.50),
            percentile(&mut outcome.reply_ms.clone(), 0.99),
            outcome.cpu_ms_per_call_minute,
            outcome.peak_rss_per_call_kib,
            outcome.sims_cpu_ms_per_call_minute,
            if passed {
                "ok".to_owned()
            } else {
                format!(
                    "FAILED ({} of {calls} completed, worst gap {} ms, {} violations)",
                    outcome.completed, outcome.max_gap_ms, outcome.violations
                )
            }
        );
        if !passed {
            break;
        }
        reached = calls;
    }
    println!();
    println!(
        "simultaneous calls carried without an audible gap: {reached} (target ≥ 100); CPU per \
         call-minute is workerd's (the Worker and its Durable Objects), sims CPU is this process's \
         (the simulated callees, STT, LLM and TTS) per call-minute"
    );
}

struct StepOutcome {
    completed: usize,
    max_gap_ms: u64,
    violations: usize,
    reply_ms: Vec<f64>,
    cpu_ms_per_call_minute: f64,
    peak_rss_per_call_kib: u64,
    sims_cpu_ms_per_call_minute: f64,
}

async fn run_step(
    stack: &Arc<Stack>,
    step_index: usize,
    calls: usize,
    lines_per_call: usize,
) -> StepOutcome {
    // Users and numbers of this step (a distinct client address each: the per-address limits
    // on registration and call requests are not what is measured here).
    let mut users = Vec::new();
    for index in 0..calls {
        let phone = format!("+1{:03}555{:04}", 201 + step_index, index);
        let ip = format!("10.{}.{}.{}", step_index + 1, index / 250, index % 250 + 1);
        let token = register(
            stack,
            &format!("scale{step_index}-{index}@example.com"),
            &phone,
            &ip,
        )
        .await;
        let lines = (0..lines_per_call)
            .map(|n| Line {
                say: format!("This is line {n}, how are you doing today?"),
                ..Line::default()
            })
            .collect();
        stack.sims.twilio().set_scenario(
            &phone,
            Scenario {
                script: lines,
                hangup: Hangup::Caller { after_ms: 500 },
                ring_ms: 200,
                ..Scenario::default()
            },
        );
        users.push((token, phone, ip));
    }

    // Peak workerd memory while the step runs.
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampling = {
        let stack = stack.clone();
        let peak_rss = peak_rss.clone();
        tokio::spawn(async move {
            loop {
                peak_rss.fetch_max(stack.workerd_rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let rss_before = stack.workerd_rss_kib();
    let cpu_before = stack.workerd_cpu_seconds().worker;
    let own_cpu_before = own_cpu_seconds();

    let mut placing = Vec::new();
    for (token, _, ip) in &users {
        let stack = stack.clone();
        let (token, ip) = (token.clone(), ip.clone());
        placing.push(tokio::spawn(async move {
            let response = stack
                .http
                .post(format!("{}/api/calls", stack.worker_url))
                .bearer_auth(&token)
                .header("cf-connecting-ip", &ip)
                .json(&json!({"persona_id": "alex"}))
                .send()
                .await;
            match response {
                Ok(response) if response.status().as_u16() == 202 => true,
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    eprintln!("a call was refused: {status} {body}");
                    false
                }
                Err(error) => {
                    eprintln!("placing a call failed: {error}");
                    false
                }
            }
        }));
    }
    for task in placing {
        let _ = task.await;
    }

    // Until every callee of this step has hung up (or a generous deadline).
    let phones: HashSet<&str> = users.iter().map(|(_, phone, _)| phone.as_str()).collect();
    let deadline = Instant::now() + Duration::from_secs(120 + 15 * lines_per_call as u64);
    let records = loop {
        let records: Vec<_> = stack
            .sims
            .twilio()
            .calls()
            .into_iter()
            .filter(|r| phones.contains(r.to.as_str()))
            .collect();
        let ended = records.iter().filter(|r| r.ended_at.is_some()).count();
        if ended >= calls || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let cpu = stack.workerd_cpu_seconds().worker - cpu_before;
    let own_cpu = own_cpu_seconds() - own_cpu_before;
    sampling.abort();

    let call_minutes: f64 = records
        .iter()
        .filter_map(|r| Some((r.ended_at? as f64 - r.answered_at? as f64) / 60e6))
        .sum();
    let completed = records
        .iter()
        .filter(|r| {
            r.status.as_str() == "completed"
                && r.stream.as_ref().is_some_and(|s| {
                    s.lines.len() == lines_per_call && s.replies.len() > lines_per_call
                })
        })
        .count();
    let streams = records.iter().filter_map(|r| r.stream.as_ref());
    let max_gap_ms = streams.clone().map(|s| s.max_gap_ms).max().unwrap_or(0);
    let violations = streams.map(|s| s.violations.len()).sum();
    let sids: HashSet<&str> = records.iter().map(|r| r.sid.as_str()).collect();
    let reply_ms = stack
        .sims
        .timings()
        .calls
        .into_iter()
        .filter(|c| sids.contains(c.call_sid.as_str()))
        .flat_map(|c| c.segments)
        .filter_map(|s| s.final_to_reply_us)
        .map(|us| us as f64 / 1000.0)
        .collect();

    // Let the step's calls finish recording before the next step starts.
    wait_until_recorded(stack, &users).await;

    StepOutcome {
        completed,
        max_gap_ms,
        violations,
        reply_ms,
        cpu_ms_per_call_minute: cpu * 1000.0 / call_minutes.max(1e-9),
        peak_rss_per_call_kib: peak_rss.load(Ordering::Relaxed).saturating_sub(rss_before)
            / calls.max(1) as u64,
        sims_cpu_ms_per_call_minute: own_cpu * 1000.0 / call_minutes.max(1e-9),
    }
}

async fn register(stack: &Stack, email: &str, phone: &str, ip: &str) -> String {
    let response = stack
        .http
        .post(format!("{}/api/auth/register", stack.worker_url))
        .header("cf-connecting-ip", ip)
        .json(&json!({"email": email, "password": TEST_PASSWORD, "name": "Scale Test", "phone": phone}))
        .send()
        .await
        .expect("register");
    assert_eq!(response.status().as_u16(), 201, "register {email}");
    let body: Value = response.json().await.expect("register body");
    let token = body["token"].as_str().expect("token").to_owned();
    let user_id = body["user"]["id"].as_str().expect("user id");
    stack.set_tier(user_id, "unlimited", 0).await;
    token
}

async fn wait_until_recorded(stack: &Stack, users: &[(String, String, String)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let database = stack.db().await;
    let expected = users.len() as i64;
    while Instant::now() < deadline {
        let phones: Vec<&str> = users.iter().map(|(_, p, _)| p.as_str()).collect();
        let pending: i64 = database
            .query_one(
                "SELECT count(*) FROM calls WHERE phone_number = ANY($1) AND finalized_at IS NULL",
                &[&phones],
            )
            .await
            .map(|row| row.get(0))
            .unwrap_or(expected);
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("some calls of the step were not recorded within 60 s");
}

/// CPU seconds (user + system) of this process: the simulators.
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    ticks as f64 / 100.0
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[rank.min(values.len() - 1)]
}
