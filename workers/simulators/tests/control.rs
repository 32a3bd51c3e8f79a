//! The `callmeback-sim` binary and its HTTP control API.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// Kills the child on drop, so a failing assertion does not leak the process.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_binary() -> (Sim, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_callmeback-sim"))
        .args(["--port", "0", "--twilio-account-sid", common::ACCOUNT])
        .env("CALLMEBACK_SIM_TWILIO_AUTH_TOKEN", common::TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("ready line");
    let base = line
        .trim()
        .strip_prefix("callmeback-sim listening ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    (Sim(child), base)
}

#[test]
fn help_documents_flags_and_environment() {
    let output = Command::new(env!("CARGO_BIN_EXE_callmeback-sim"))
        .arg("--help")
        .output()
        .expect("runs");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("utf-8");
    for needle in [
        "--port",
        "CALLMEBACK_SIM_PORT",
        "--twilio-auth-token",
        "CALLMEBACK_SIM_DEEPGRAM_KEY",
        "--config",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_callmeback-sim"))
        .arg("--bogus")
        .output()
        .expect("runs");
    assert!(!output.status.success());
}

#[tokio::test]
async fn control_api_drives_the_binary() {
    let (_sim, base) = spawn_binary();
    let app = common::start_app().await;
    let client = reqwest::Client::new();
    let health: Value = client
        .get(format!("{base}/sim"))
        .send()
        .await
        .expect("up")
        .json()
        .await
        .expect("json");
    assert_eq!(health["ok"], true);

    let to = "+14155550111";
    let scenario = json!({"ring_ms": 50, "script": [{"say": "Hi from the binary.", "pause_ms": 200}], "hangup": {"caller": {"after_ms": 100}}});
    let response = client
        .put(format!("{base}/sim/twilio/scenarios/{to}"))
        .json(&scenario)
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 200);
    let bad = client
        .put(format!("{base}/sim/twilio/scenarios/{to}"))
        .json(&json!({"outcome": "explode"}))
        .send()
        .await
        .expect("answers");
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_body");

    let response = client
        .post(format!(
            "{base}/2010-04-01/Accounts/{}/Calls.json",
            common::ACCOUNT
        ))
        .header("authorization", common::basic_auth())
        .form(&[
            ("To", to),
            ("From", "+14155550199"),
            ("Url", &format!("{}/twiml", app.base)),
        ])
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 201);
    let sid = response.json::<Value>().await.expect("json")["sid"]
        .as_str()
        .expect("sid")
        .to_owned();

    let record: Value = client
        .post(format!(
            "{base}/sim/twilio/calls/{sid}/wait?timeout_ms=15000"
        ))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(record["end_reason"], "caller_hangup");
    assert_eq!(record["stream"]["lines"][0]["say"], "Hi from the binary.");
    assert_eq!(app.log().heard_lines, vec!["Hi from the binary."]);
    let calls: Value = client
        .get(format!("{base}/sim/twilio/calls"))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(calls.as_array().map(Vec::len), Some(1));
    let one = client
        .get(format!("{base}/sim/twilio/calls/{sid}"))
        .send()
        .await
        .expect("answers");
    assert_eq!(one.status(), 200);
    let missing = client
        .get(format!("{base}/sim/twilio/calls/CAnope"))
        .send()
        .await
        .expect("answers");
    assert_eq!(missing.status(), 404);
    let timeout = client
        .post(format!("{base}/sim/twilio/calls/CAnope/wait?timeout_ms=10"))
        .send()
        .await
        .expect("answers");
    assert_eq!(timeout.status(), 404);

    // Config merges: one knob changes, the key stays.
    let stt: Value = client
        .put(format!("{base}/sim/stt/config"))
        .json(&json!({"latency_ms": 25}))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(stt["latency_ms"], 25);
    assert_eq!(stt["api_key"], "sim-deepgram-key");
    let llm: Value = client
        .put(format!("{base}/sim/llm/config"))
        .json(&json!({"mode": "scripted", "failures": [{"kind": "http_500"}]}))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(llm["mode"], "scripted", "{llm}");
    let queued: Value = client
        .post(format!("{base}/sim/llm/replies"))
        .json(&json!({"replies": ["One.", "Two."]}))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(queued["queued"], 2);
    let tts = client
        .put(format!("{base}/sim/tts/config"))
        .json(&json!({"chunk_ms": "big"}))
        .send()
        .await
        .expect("answers");
    assert_eq!(tts.status(), 400);
    let twilio: Value = client
        .put(format!("{base}/sim/twilio/config"))
        .json(&json!({"jitter_buffer_ms": 60}))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(twilio["jitter_buffer_ms"], 60);
    assert_eq!(twilio["auth_token"], common::TOKEN);

    let timings: Value = client
        .get(format!("{base}/sim/timings"))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(timings["clock"], "microseconds since simulator start");
    assert_eq!(timings["calls"][0]["call_sid"], sid.as_str());
    assert!(timings["calls"][0]["segments"][0]["speech_end_at"].is_u64());
    for path in ["/sim/stt/records", "/sim/tts/records", "/sim/llm/requests"] {
        let response = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), 200, "{path}");
    }

    let reset = client
        .post(format!("{base}/sim/reset"))
        .send()
        .await
        .expect("answers");
    assert_eq!(reset.status(), 204);
    let calls: Value = client
        .get(format!("{base}/sim/twilio/calls"))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(calls, json!([]));
    let llm: Value = client
        .get(format!("{base}/sim/llm/config"))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(llm["mode"], "echo");
    assert_eq!(llm["failures"], json!([]));
    tokio::time::sleep(Duration::from_millis(10)).await;
}
