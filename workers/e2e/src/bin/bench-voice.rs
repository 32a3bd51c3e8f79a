//! The voice pipeline's own latency and CPU, on the real stack with the simulators at zero added
//! latency (`scripts/bench-voice`).
//!
//! Measured per caller turn, on the simulators' clock: from the STT final result for the caller's
//! line *leaving the STT simulator* to the first audio frame of the persona's reply *reaching the
//! simulated callee*. With zero-latency simulators, everything in between is ours: the Worker's
//! handling of the STT message, the engine, the LLM request and stream, sentence cutting, the TTS
//! request and its audio, pacing, and the Twilio media frame — plus the loopback hops. The LLM and
//! TTS simulators answer at once, so this is the pipeline's own added latency.
//!
//! CPU: the workerd processes' CPU time (from `/proc`) over the calls, divided by the call-minutes
//! (an upper bound on the Durable Objects' CPU: it includes the runtime's own networking), with the
//! idle CPU of the same workerd over the same wall time subtracted.
//!
//! Usage: `bench-voice [--turns N] [--calls C]` (defaults 200 and 4: C simultaneous calls of N/C
//! caller lines each). Needs the environment `scripts/bench-voice` sets up.

use std::time::{Duration, Instant};

use callmeback_e2e::Stack;
use callmeback_simulators::twilio::{Hangup, Line};
use callmeback_simulators::{LlmConfig, Scenario};
use serde_json::json;

#[tokio::main]
async fn main() {
    let mut turns = 200usize;
    let mut calls = 4usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse().ok());
        match (arg.as_str(), value) {
            ("--turns", Some(v)) => turns = v,
            ("--calls", Some(v)) => calls = v,
            _ => {
                eprintln!("usage: bench-voice [--turns N] [--calls C]");
                std::process::exit(2);
            }
        }
    }
    let calls = calls.max(1);
    let lines_per_call = turns.div_ceil(calls);
    println!(
        "bench-voice: {calls} simultaneous calls × {lines_per_call} caller lines (zero-latency simulators)"
    );

    let stack = Stack::start_with_vars(&[("IDLE_PROMPT_MS", "60000")]).await;
    // Short replies and short lines: many turns per minute, and the same work per turn.
    let mut llm = LlmConfig {
        mode: callmeback_simulators::llm::LlmMode::Scripted,
        ..stack.sims.llm().config()
    };
    llm.time_to_first_token_ms = 0;
    llm.tokens_per_second = 0;
    stack.sims.llm().set_config(llm);
    stack
        .sims
        .llm()
        .push_replies((0..turns + calls * 4).map(|_| "Sure thing, tell me more.".to_owned()));

    let mut tokens = Vec::new();
    for index in 0..calls {
        let phone = format!("+1415555{:04}", 2000 + index);
        let (token, user_id) = stack
            .register_with_phone(&format!("bench{index}@example.com"), &phone)
            .await;
        stack.set_tier(&user_id, "unlimited", 0).await;
        let lines = (0..lines_per_call)
            .map(|n| Line {
                say: format!("Line number {n} of the benchmark."),
                pause_ms: Some(200),
                ..Line::default()
            })
            .collect();
        stack.sims.twilio().set_scenario(
            &phone,
            Scenario {
                script: lines,
                hangup: Hangup::Caller { after_ms: 300 },
                ring_ms: 100,
                ..Scenario::default()
            },
        );
        tokens.push(token);
    }

    // Idle CPU of this workerd over a known wall time, to subtract.
    let idle_start = stack.workerd_cpu_seconds();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_end = stack.workerd_cpu_seconds();
    let idle_per_second = (idle_end.worker - idle_start.worker) / 5.0;

    let cpu_start = stack.workerd_cpu_seconds();
    let started = Instant::now();
    let mut call_ids = Vec::new();
    for token in &tokens {
        let (status, body) = stack
            .json(
                reqwest::Method::POST,
                "/api/calls",
                Some(token),
                Some(json!({"persona_id": "alex"})),
            )
            .await;
        assert_eq!(status, 202, "placing a call: {body}");
        call_ids.push(body["call"]["id"].as_str().expect("call id").to_owned());
    }
    // Every call ends when its callee hangs up after the last line.
    let deadline = Instant::now() + Duration::from_secs(60 + 10 * lines_per_call as u64);
    loop {
        let records = stack.sims.twilio().calls();
        let ended = records.iter().filter(|r| r.ended_at.is_some()).count();
        if ended >= calls {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "calls did not end in time ({ended}/{calls})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu_end = stack.workerd_cpu_seconds();
    let cpu = cpu_end.worker - cpu_start.worker - idle_per_second * wall;
    let proxy_cpu = cpu_end.proxy - cpu_start.proxy;
    let records = stack.sims.twilio().calls();
    let call_seconds: f64 = records
        .iter()
        .filter_map(|r| Some((r.ended_at? as f64 - r.answered_at? as f64) / 1e6))
        .sum();

    let mut final_to_reply: Vec<f64> = Vec::new();
    let mut speech_end_to_reply: Vec<f64> = Vec::new();
    for call in stack.sims.timings().calls {
        for segment in call.segments {
            if let Some(us) = segment.final_to_reply_us {
                final_to_reply.push(us as f64 / 1000.0);
            }
            if let Some(us) = segment.speech_end_to_reply_us {
                speech_end_to_reply.push(us as f64 / 1000.0);
            }
        }
    }
    let gaps: Vec<u64> = records
        .iter()
        .filter_map(|r| r.stream.as_ref())
        .flat_map(|s| {
            s.replies
                .iter()
                .flat_map(|reply| reply.gaps_ms.iter().copied())
        })
        .collect();
    let violations: usize = records
        .iter()
        .filter_map(|r| r.stream.as_ref())
        .map(|s| s.violations.len())
        .sum();

    // Where the time goes, hop by hop, on the simulators' clock (one call at a time only: the
    // LLM and TTS records do not name their call).
    let mut hops: [Vec<f64>; 5] = Default::default();
    if calls == 1 {
        let llm_requests = stack.sims.llm().requests();
        let tts_segments: Vec<_> = stack
            .sims
            .tts()
            .records()
            .into_iter()
            .flat_map(|connection| connection.contexts.into_iter())
            .flat_map(|context| context.segments.into_iter())
            .collect();
        for call in stack.sims.timings().calls {
            for segment in call.segments {
                let (Some(final_at), Some(reply_at)) =
                    (segment.stt_final_sent_at, segment.reply_first_frame_at)
                else {
                    continue;
                };
                let Some(llm) = llm_requests
                    .iter()
                    .filter(|r| r.at >= final_at)
                    .min_by_key(|r| r.at)
                else {
                    continue;
                };
                let Some(first_token) = llm.first_token_at else {
                    continue;
                };
                let Some(tts) = tts_segments
                    .iter()
                    .filter(|g| g.triggered_at >= first_token)
                    .min_by_key(|g| g.triggered_at)
                else {
                    continue;
                };
                let Some(first_audio) = tts.first_audio_at else {
                    continue;
                };
                let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1000.0;
                hops[0].push(ms(final_at, llm.at));
                hops[1].push(ms(llm.at, first_token));
                hops[2].push(ms(first_token, tts.triggered_at));
                hops[3].push(ms(tts.triggered_at, first_audio));
                hops[4].push(ms(first_audio, reply_at));
            }
        }
    }

    // The call objects' own view: caller's turn over (as the Worker saw it) → first reply frame
    // sent, from each call's recorded metrics.
    let mut in_object: Vec<f64> = Vec::new();
    for (token, call_id) in tokens.iter().zip(&call_ids) {
        let call = stack
            .wait_for_outcome(token, call_id, Duration::from_secs(60))
            .await;
        if let Some(times) = call["metrics"]["response_times_ms"].as_array() {
            in_object.extend(times.iter().filter_map(serde_json::Value::as_f64));
        }
    }

    println!();
    println!(
        "turns measured: {} (of {turns} asked)",
        final_to_reply.len()
    );
    for (what, values) in [
        "  hop 1: STT final sent → LLM request received by the LLM simulator",
        "  hop 2: LLM simulator: request → first token sent",
        "  hop 3: first token sent → sentence received by the TTS simulator",
        "  hop 4: TTS simulator: sentence → first audio sent",
        "  hop 5: first audio sent → first reply frame at the callee",
    ]
    .into_iter()
    .zip(hops.iter_mut())
    {
        if !values.is_empty() {
            report(what, values);
        }
    }
    report(
        "inside the call object: caller's turn over → first reply frame sent",
        &mut in_object,
    );
    report(
        "STT final → first reply frame at the callee",
        &mut final_to_reply,
    );
    report(
        "callee's end of speech → first reply frame",
        &mut speech_end_to_reply,
    );
    println!(
        "workerd CPU: {:.2} s over {:.1} call-minutes → {:.0} ms per call-minute (idle {:.1} ms/s subtracted)",
        cpu,
        call_seconds / 60.0,
        cpu * 1000.0 / (call_seconds / 60.0).max(1e-9),
        idle_per_second * 1000.0
    );
    println!(
        "wrangler dev's local proxy (not in production): {:.0} ms per call-minute more",
        proxy_cpu * 1000.0 / (call_seconds / 60.0).max(1e-9)
    );
    println!(
        "audio gaps inside persona speech: {} (max {} ms); Twilio protocol violations: {violations}",
        gaps.len(),
        gaps.iter().max().copied().unwrap_or(0)
    );
    println!(
        "anchor (shared/notes/voice-latency-anchor.md, pipecat fastest configuration, same kind of machine): \
         29–30 / 45 / 48–50 ms p50/p95/p99, 3.1 s CPU per call-minute; targets here: p50 ≤ 5 ms, p99 ≤ 20 ms, ≤ 100 ms CPU per call-minute"
    );
    if let Some(p50) = percentile(&mut final_to_reply, 50.0) {
        println!(
            "ratio of our p50 to pipecat's fastest p50 (29.5 ms): {:.2}",
            p50 / 29.5
        );
    }
}

fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    Some(values[rank.min(values.len() - 1)])
}

fn report(what: &str, values: &mut [f64]) {
    match (
        percentile(values, 50.0),
        percentile(values, 95.0),
        percentile(values, 99.0),
    ) {
        (Some(p50), Some(p95), Some(p99)) => println!(
            "{what}: p50 {p50:.1} ms, p95 {p95:.1} ms, p99 {p99:.1} ms (n = {}, max {:.1} ms)",
            values.len(),
            values.last().copied().unwrap_or(0.0)
        ),
        _ => println!("{what}: no samples"),
    }
}
