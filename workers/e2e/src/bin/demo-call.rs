//! `demo-call`: places one call against the running local stack (`scripts/dev`) and shows it.
//!
//! Registers a throwaway user with a fresh phone number, asks for a call with a persona, follows
//! the user's live channel (status changes and transcript lines as they happen), then prints the
//! recorded call: transcript, per-turn latencies and the cost breakdown. With the simulators
//! (the default stack), the simulated callee answers and speaks a short scripted conversation, and
//! the per-turn figures include what the simulator measured from its side.
//!
//! Run through `scripts/demo-call`, which reads the URLs from `.local/stack.env`. Usage:
//! `demo-call [--persona brad|sarah|alex] [--phone +E164]`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

const PASSWORD: &str = "demo-call-Passw0rd!";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut persona = "brad".to_owned();
    let suffix: u32 = rand::random::<u32>() % 10_000;
    let mut phone = format!("+1415555{suffix:04}");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--persona" => persona = args.next().context("--persona needs a value")?,
            "--phone" => phone = args.next().context("--phone needs a value")?,
            "-h" | "--help" => {
                println!("demo-call [--persona brad|sarah|alex] [--phone +E164]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    let worker = std::env::var("WORKER_URL").unwrap_or_else(|_| "http://127.0.0.1:8787".into());
    let sim = std::env::var("SIM_URL").ok();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    // 1. A user of our own, with the number to ring.
    let email = format!("demo-{:08x}@example.com", rand::random::<u32>());
    let registered: Value = expect(
        http.post(format!("{worker}/api/auth/register"))
            .json(&json!({"email": email, "password": PASSWORD, "name": "Demo Caller", "phone": phone}))
            .send()
            .await
            .context("the Worker does not answer: is scripts/dev running?")?,
        201,
        "register",
    )
    .await?;
    let token = registered["token"].as_str().context("no token")?.to_owned();
    println!("registered {email} (phone {phone})");

    // 2. The live channel first, so no event is missed.
    let ws_url = format!("{}/api/live", worker.replacen("http", "ws", 1));
    let mut request = ws_url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut live, _) = tokio_tungstenite::connect_async(request)
        .await
        .context("live channel")?;

    // 3. The call.
    let placed: Value = expect(
        http.post(format!("{worker}/api/calls"))
            .bearer_auth(&token)
            .json(&json!({"persona_id": persona}))
            .send()
            .await?,
        202,
        "place the call",
    )
    .await?;
    let call_id = placed["call"]["id"]
        .as_str()
        .context("no call id")?
        .to_owned();
    println!(
        "call {call_id} with {persona}: {}",
        placed["call"]["status"]
    );

    // 4. Follow it live until it is over, then read the record.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    let call = loop {
        let next = tokio::time::timeout(Duration::from_millis(500), live.next()).await;
        if let Ok(Some(Ok(Message::Text(text)))) = next
            && let Ok(event) = serde_json::from_str::<Value>(&text)
            && event["call_id"] == call_id.as_str()
        {
            let at = started.elapsed().as_secs_f64();
            match event["type"].as_str() {
                Some("call_status") => println!("  [{at:6.2}s] status  {}", event["status"]),
                Some("transcript") => println!(
                    "  [{at:6.2}s] {:<9} {}{}",
                    event["role"].as_str().unwrap_or("?"),
                    event["text"].as_str().unwrap_or(""),
                    if event["interrupted"] == true {
                        " (interrupted)"
                    } else {
                        ""
                    }
                ),
                Some(other) => println!("  [{at:6.2}s] {other} {event}"),
                None => {}
            }
        }
        let body: Value = expect(
            http.get(format!("{worker}/api/calls/{call_id}"))
                .bearer_auth(&token)
                .send()
                .await?,
            200,
            "read the call",
        )
        .await?;
        let call = body["call"].clone();
        if !call["metrics"].is_null() || call["status"] == "failed" {
            break call;
        }
        if Instant::now() > deadline {
            bail!("the call was not recorded within 5 minutes: {call}");
        }
    };

    print_record(&call);
    if let Some(sim) = sim {
        print_simulator_timings(&http, &sim, &phone).await;
    }
    Ok(())
}

async fn expect(response: reqwest::Response, status: u16, what: &str) -> anyhow::Result<Value> {
    let code = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if code != status {
        bail!("{what}: HTTP {code}: {body}");
    }
    Ok(body)
}

fn print_record(call: &Value) {
    println!();
    println!(
        "outcome: {}  duration: {}s  credits used: {}",
        call["status"], call["duration_seconds"], call["credits_used"]
    );
    if let Some(error) = call["error_message"].as_str() {
        println!("error: {error}");
    }
    println!("\ntranscript:");
    for line in call["transcript"].as_array().into_iter().flatten() {
        println!(
            "  {:<9} {}{}",
            line["role"].as_str().unwrap_or("?"),
            line["content"]
                .as_str()
                .or(line["text"].as_str())
                .unwrap_or(""),
            if line["interrupted"] == true {
                " (interrupted)"
            } else {
                ""
            }
        );
    }
    let metrics = &call["metrics"];
    println!(
        "\nturns: {}  interruptions: {}  end: {}",
        metrics["turn_count"], metrics["interrupt_count"], metrics["end_reason"]
    );
    if let Some(times) = metrics["response_times_ms"].as_array() {
        let list: Vec<String> = times.iter().map(|t| format!("{t} ms")).collect();
        println!(
            "per-turn response time in the call object (caller's turn ended → first reply audio sent, providers included): {}",
            list.join(", ")
        );
    }
    let costs = &call["costs"];
    if !costs.is_null() {
        println!("\ncost breakdown (cents):");
        for (label, key) in [
            ("Twilio", "twilio_cents"),
            ("speech-to-text", "deepgram_cents"),
            ("LLM", "llm_cents"),
            ("text-to-speech", "elevenlabs_cents"),
            ("total", "total_cents"),
        ] {
            println!("  {label:<15} {}", costs[key].as_str().unwrap_or("-"));
        }
        println!("  usage: {}", costs["usage"]);
    }
}

/// The simulated callee's view: from the caller's words ending to hearing the reply. (Absent
/// when the stack talks to real providers.)
async fn print_simulator_timings(http: &reqwest::Client, sim: &str, phone: &str) {
    let get = |path: &str| http.get(format!("{sim}{path}")).send();
    let Ok(Ok(calls)) = (match get("/sim/twilio/calls").await {
        Ok(response) => Ok(response.json::<Value>().await),
        Err(error) => Err(error),
    }) else {
        return;
    };
    // The latest call the simulator placed to this number.
    let Some(call_sid) = calls
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["to"] == phone)
        .filter_map(|c| c["sid"].as_str())
        .next_back()
    else {
        return;
    };
    let Ok(response) = get("/sim/timings").await else {
        return;
    };
    let Ok(report) = response.json::<Value>().await else {
        return;
    };
    let Some(call) = report["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["call_sid"] == call_sid)
    else {
        return;
    };
    println!("\nper turn, measured by the simulated callee:");
    for segment in call["segments"].as_array().into_iter().flatten() {
        let ms = |key: &str| segment[key].as_i64().map(|us| us as f64 / 1000.0);
        if let (Some(pipeline), Some(heard)) =
            (ms("final_to_reply_us"), ms("speech_end_to_reply_us"))
        {
            println!(
                "  {:<50} STT final → reply audio {pipeline:6.1} ms; stopped speaking → heard reply {heard:7.1} ms",
                segment["text"].as_str().unwrap_or("")
            );
        }
    }
}
