//! The real binary: `serve` (migrate, listening line, logs, SIGTERM) and `gen-key`.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use callmeback_gateway_api::{OP_PATH, OpCall};
use callmeback_signing::{Key, sign_request};
use db_gateway::keys::KeyRing;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::Command;

use crate::helpers::{TempDir, TestDatabase, fresh_nonce, random_secret, unix_now, write_file};

const BINARY: &str = env!("CARGO_BIN_EXE_db-gateway");

/// `key=value` connection string for the test database (the binary reads `DATABASE_URL`).
fn connection_string(config: &tokio_postgres::Config) -> String {
    let mut parts = Vec::new();
    if let Some(tokio_postgres::config::Host::Tcp(host)) = config.get_hosts().first() {
        parts.push(format!("host={host}"));
    }
    if let Some(port) = config.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={user}"));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!("password={}", String::from_utf8_lossy(password)));
    }
    if let Some(dbname) = config.get_dbname() {
        parts.push(format!("dbname={dbname}"));
    }
    parts.join(" ")
}

#[tokio::test]
async fn gen_key_prints_an_entry_the_keys_file_accepts() {
    let output = Command::new(BINARY)
        .args(["gen-key", "worker-2026-12"])
        .output()
        .await
        .unwrap();

    assert!(output.status.success());
    let line = String::from_utf8(output.stdout).unwrap();
    let ring = KeyRing::from_json(format!(r#"{{"keys":[{}]}}"#, line.trim()).as_bytes()).unwrap();
    assert!(ring.get("worker-2026-12").is_some());
}

#[tokio::test]
async fn serve_migrates_announces_its_ports_logs_safely_and_stops_on_sigterm() {
    let database = TestDatabase::create().await;
    let dir = TempDir::new();
    // The real schema: at startup the binary checks every production operation against it.
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let secret = random_secret();
    let key = Key::new("bin-key", secret.clone());
    write_file(
        &dir.path().join("keys.json"),
        &serde_json::json!({"keys": [{"id": "bin-key", "secret_b64": BASE64.encode(&secret), "scopes": ["*"]}]})
            .to_string(),
    );

    let mut child = Command::new(BINARY)
        .arg("serve")
        .env_clear()
        .env("DATABASE_URL", connection_string(&database.config))
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_KEYS_FILE", dir.path().join("keys.json"))
        .env("GATEWAY_MIGRATIONS_DIR", &migrations)
        .env("GATEWAY_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });

    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line))
        .await
        .expect("announces itself in time")
        .unwrap();
    let rest = line
        .trim_end()
        .strip_prefix("db-gateway listening api=")
        .unwrap_or_else(|| panic!("{line:?}"));
    let (api, admin) = rest.split_once(" admin=").unwrap();
    let (api, admin): (std::net::SocketAddr, std::net::SocketAddr) =
        (api.parse().unwrap(), admin.parse().unwrap());
    assert_ne!(api.port(), 0);
    assert_ne!(admin.port(), 0);

    let http = reqwest::Client::new();
    let call = |op: OpCall, request_id: &'static str| {
        let body = serde_json::to_vec(&op).unwrap();
        let url = format!("http://{api}{OP_PATH}");
        let signed = sign_request(&key, "POST", &url, &body, unix_now(), &fresh_nonce());
        http.post(url)
            .header("content-digest", signed.content_digest)
            .header("signature-input", signed.signature_input)
            .header("signature", signed.signature)
            .header("x-request-id", request_id)
            .body(body)
            .send()
    };
    let version = call(OpCall::new("system.schema_version"), "bin-req-ok")
        .await
        .unwrap();
    assert_eq!(version.status(), 200, "migrations ran before serving");
    let leaky = call(
        OpCall::new("system.ping").param("password", "SECRET-PARAM-VALUE"),
        "bin-req-bad",
    )
    .await
    .unwrap();
    assert_eq!(leaky.status(), 400);
    let ready = http
        .get(format!("http://{admin}/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    let pid = child.id().expect("still running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");

    let mut remaining = String::new();
    stdout.read_to_string(&mut remaining).await.unwrap();
    assert_eq!(remaining, "", "stdout carries only the listening line");
    let logs = logs.await.unwrap();
    assert!(
        !logs.contains("SECRET-PARAM-VALUE"),
        "a parameter value reached the logs:\n{logs}"
    );
    let access_lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["target"] == "db_gateway::access")
        .collect();
    let bad = access_lines
        .iter()
        .find(|entry| entry["span"]["request_id"] == "bin-req-bad")
        .unwrap_or_else(|| panic!("no access line for bin-req-bad in:\n{logs}"));
    assert_eq!(bad["status"], 400);
    assert_eq!(bad["op"], "system.ping");
    assert_eq!(bad["key_id"], "bin-key");
    assert_eq!(bad["error_code"], "invalid_params");
    assert!(bad["duration_ms"].is_number());
    let ok = access_lines
        .iter()
        .find(|entry| entry["span"]["request_id"] == "bin-req-ok")
        .unwrap();
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["error_code"], "-");
}
