//! Harness for end-to-end tests: starts the real stack on free ports, one stack per test.
//!
//! A [`Stack`] is a fresh Postgres database (on the cluster named by `TEST_DATABASE_URL`), a
//! `db-gateway` process that applies the migrations to it, and the Worker served by `wrangler dev`
//! (workerd) that reaches that gateway with a freshly generated signing key. Everything is torn
//! down when the `Stack` is dropped.
//!
//! `scripts/test` builds the pieces first and sets the environment:
//! - `TEST_DATABASE_URL`: admin URL of a throwaway cluster;
//! - `CALLMEBACK_GATEWAY_BIN`: the built `db-gateway` binary;
//! - `CALLMEBACK_WORKER_MAIN`: the built Worker entry (`workers/api/build/index.js`).
//!
//! Missing environment is a failure with a clear message, never a silent skip.
//!
//! `CALLMEBACK_WORKER_RUNTIME=workerd` serves the Worker with `workerd serve` directly, from a
//! config generated out of wrangler.toml (no `wrangler dev` proxy, no inspector): the benchmarks use
//! it to measure the Worker rather than the dev tooling. Cron (`/__scheduled`) needs `wrangler dev`.
//!
//! Every stack also runs the provider simulators (`callmeback-simulators`) in-process on a free
//! port, and the Worker is configured to reach Twilio, Deepgram, the LLM and ElevenLabs there:
//! [`Stack::sims`] sets scenarios and reads what each provider saw.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::Rng;

/// The password every test user gets (valid under the password policy).
pub const TEST_PASSWORD: &str = "correct horse battery staple";

/// Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// The code of a field-level validation error in an error body.
pub fn field_code<'a>(body: &'a serde_json::Value, field: &str) -> &'a str {
    body["error"]["fields"][field]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error for field {field}: {body}"))
}

/// What [`raw_http`] read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAnswer {
    /// The status code, when a status line arrived in time.
    pub status: Option<u16>,
    /// Status line and headers.
    pub head: String,
    /// Whatever of the body arrived (up to 64 KiB).
    pub body: String,
}

/// Writes `head` to the Worker over a plain TCP connection, then `body_chunks` in the background
/// (and then keeps the connection open without finishing the body), and reads the answer for up
/// to `wait`. For what an HTTP client will not send: unknown methods, chunked bodies that never
/// end.
pub async fn raw_http(
    stack: &Stack,
    head: &[u8],
    body_chunks: &[Vec<u8>],
    wait: Duration,
) -> RawAnswer {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let address = stack.worker_url.trim_start_matches("http://");
    let socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the Worker");
    let (mut reader, mut writer) = socket.into_split();
    writer.write_all(head).await.expect("send the request head");
    let chunks = body_chunks.to_vec();
    let sender = tokio::spawn(async move {
        for chunk in chunks {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // Never finish the body: an answer can only come from a server that stopped reading.
        tokio::time::sleep(Duration::from_secs(120)).await;
        drop(writer);
    });
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(read) = tokio::time::timeout_at(deadline, reader.read(&mut buffer)).await else {
            break;
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(count) => received.extend_from_slice(&buffer[..count]),
        }
        if received.len() > 64 * 1024 || response_complete(&received) {
            break;
        }
    }
    sender.abort();
    let text = String::from_utf8_lossy(&received).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    RawAnswer {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|status| status.parse().ok()),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Whether `received` holds a whole response with a `Content-Length` body.
fn response_complete(received: &[u8]) -> bool {
    let text = String::from_utf8_lossy(received);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .is_some_and(|length| body.len() >= length)
}

/// The frontend origin the test Worker allows for CORS.
pub const TEST_ORIGIN: &str = "http://app.callmeback.test";

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill(&mut bytes[..]);
    bytes
}

/// The repository root (this crate lives in `workers/e2e`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root exists")
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests through scripts/test, which builds and starts what they need")
    })
}

/// A free loopback port (the kernel picks it; released just before use).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// One running stack. Dropping it stops the processes and drops the database.
#[derive(Debug)]
pub struct Stack {
    pub worker_url: String,
    pub gateway_url: String,
    pub gateway_admin_url: String,
    pub database_url: String,
    pub key_id: String,
    pub key_secret: Vec<u8>,
    /// The Stripe webhook signing secret the Worker accepts (tests sign events with it).
    pub stripe_webhook_secret: String,
    /// The Worker's `JWT_SIGNING_KEYS` (`kid:base64`), for tests that mint their own tokens.
    pub jwt_keys: String,
    admin_database_url: String,
    database_name: String,
    gateway: Option<Child>,
    worker: Option<Child>,
    dir: PathBuf,
    pub http: reqwest::Client,
    /// The provider simulators this stack's Worker talks to.
    pub sims: callmeback_simulators::Simulators,
    /// The Worker's `MEDIA_STREAM_SECRET`, for tests that forge or check stream tokens.
    pub media_stream_secret: Vec<u8>,
    /// How the gateway and the Worker were started, to restart them on the same ports.
    gateway_bin: String,
    keys_file: PathBuf,
    gateway_listen: String,
    worker_main: String,
    worker_port: u16,
    worker_env: String,
}

/// CPU seconds of a stack's workerd processes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorkerdCpu {
    /// The process running the Worker and its Durable Objects.
    pub worker: f64,
    /// `wrangler dev`'s local proxy in front of it (not part of a deployment).
    pub proxy: f64,
}

/// The Twilio number calls come from in tests.
pub const TEST_FROM_NUMBER: &str = "+15005550006";

impl Stack {
    /// Starts Postgres database + gateway + Worker and waits until the Worker answers.
    pub async fn start() -> Stack {
        Self::start_with_vars(&[]).await
    }

    /// Like [`Stack::start`], with extra Worker variables (`NAME`, `value`) on top of the
    /// harness's own, e.g. a short login-limit window.
    pub async fn start_with_vars(extra_vars: &[(&str, &str)]) -> Stack {
        let admin_database_url = required_env("TEST_DATABASE_URL");
        let gateway_bin = required_env("CALLMEBACK_GATEWAY_BIN");
        let worker_main = required_env("CALLMEBACK_WORKER_MAIN");
        assert!(
            Path::new(&worker_main).exists(),
            "{worker_main} does not exist: build the Worker (scripts/build-worker)"
        );

        let suffix: u64 = rand::rng().random();
        let database_name = format!("e2e_{suffix:016x}");
        let dir = std::env::temp_dir().join(format!("callmeback-{database_name}"));
        std::fs::create_dir_all(&dir).expect("create the test's temp dir");
        create_database(&admin_database_url, &database_name).await;
        let database_url = replace_database(&admin_database_url, &database_name);

        let key_id = "worker-e2e".to_owned();
        let key_secret = random_bytes::<32>().to_vec();
        let secret_b64 = base64::engine::general_purpose::STANDARD.encode(&key_secret);
        let keys_file = dir.join("gateway-keys.json");
        std::fs::write(
            &keys_file,
            format!(
                r#"{{"keys":[{{"id":"{key_id}","secret_b64":"{secret_b64}","scopes":["*"]}}]}}"#
            ),
        )
        .expect("write keys file");

        let gateway_listen = format!("127.0.0.1:{}", free_port());
        let (gateway, api_addr, admin_addr) = spawn_gateway(
            &gateway_bin,
            &database_url,
            &keys_file,
            &gateway_listen,
            &dir,
        );
        let gateway_url = format!("http://{api_addr}");
        let gateway_admin_url = format!("http://{admin_addr}");

        let sims =
            callmeback_simulators::Simulators::start(callmeback_simulators::SimConfig::default())
                .await
                .expect("start the provider simulators");
        let sim_defaults = callmeback_simulators::SimConfig::default();
        let media_stream_secret = random_bytes::<32>().to_vec();

        let worker_port = free_port();
        let worker_url = format!("http://127.0.0.1:{worker_port}");
        let stripe_webhook_secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(random_bytes::<24>())
        );
        let jwt_keys = format!(
            "e2e-1:{}",
            base64::engine::general_purpose::STANDARD.encode(random_bytes::<32>())
        );
        // GATEWAY_TIMEOUT_MS is raised from the 3 s default: on a shared 2-core CI machine a login
        // (Argon2id or bcrypt on the gateway) can take seconds, and a timeout there is noise, not a bug.
        let worker_env = format!(
            "GATEWAY_URL={gateway_url}\nGATEWAY_KEY_ID={key_id}\nGATEWAY_KEY_SECRET={secret_b64}\n\
             JWT_SIGNING_KEYS={jwt_keys}\nSTRIPE_WEBHOOK_SECRETS={stripe_webhook_secret}\n\
             CORS_ALLOWED_ORIGINS={TEST_ORIGIN}\nGATEWAY_TIMEOUT_MS=10000\n"
        );
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let worker_env = format!(
            "{worker_env}PUBLIC_BASE_URL={worker_url}\nTWILIO_API_BASE_URL={sim}\n\
             TWILIO_ACCOUNT_SID={sid}\nTWILIO_AUTH_TOKEN={token}\nTWILIO_FROM_NUMBER={TEST_FROM_NUMBER}\n\
             MEDIA_STREAM_SECRET={stream}\nPHONE_HASH_SECRET={phone}\n\
             DEEPGRAM_URL={ws}/v1/listen\nDEEPGRAM_API_KEY={stt_key}\n\
             LLM_BASE_URL={sim}/v1\nLLM_API_KEY={llm_key}\n\
             ELEVENLABS_URL={ws}\nELEVENLABS_API_KEY={tts_key}\n",
            sim = sims.base_url(),
            ws = sims.ws_base_url(),
            sid = sim_defaults.twilio.account_sid,
            token = sim_defaults.twilio.auth_token,
            stream = b64(&media_stream_secret),
            phone = b64(&random_bytes::<32>()),
            stt_key = sim_defaults.stt.api_key,
            llm_key = sim_defaults.llm.api_key,
            tts_key = sim_defaults.tts.api_key,
        );
        let worker_env: String = extra_vars.iter().fold(worker_env, |env, (name, value)| {
            format!("{env}{name}={value}\n")
        });
        let worker = spawn_worker(&worker_main, worker_port, &worker_env, &dir);

        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let mut stack = Stack {
            worker_url,
            gateway_url,
            gateway_admin_url,
            database_url,
            key_id,
            key_secret,
            stripe_webhook_secret,
            jwt_keys,
            admin_database_url,
            database_name,
            gateway: Some(gateway),
            worker: Some(worker),
            dir,
            http,
            sims,
            media_stream_secret,
            gateway_bin,
            keys_file,
            gateway_listen,
            worker_main,
            worker_port,
            worker_env,
        };
        stack.wait_for_worker().await;
        stack
    }

    async fn wait_for_worker(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut port_moves = 0;
        loop {
            if let Some(worker) = self.worker.as_mut()
                && let Ok(Some(status)) = worker.try_wait()
            {
                // `free_port` cannot hold the port until wrangler binds it: with tests running in
                // parallel another process can take it in between. Move to a fresh port.
                if self.worker_log().contains("Address already in use") && port_moves < 5 {
                    port_moves += 1;
                    self.move_worker_to_a_fresh_port();
                    continue;
                }
                panic!(
                    "wrangler dev exited with {status}; log:\n{}",
                    self.worker_log()
                );
            }
            let probe = self
                .http
                .get(format!("{}/health", self.worker_url))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if probe.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Worker did not answer within 120 s; log:\n{}",
                self.worker_log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts the Worker again on a new free port (its public URL follows).
    fn move_worker_to_a_fresh_port(&mut self) {
        if let Some(child) = self.worker.take() {
            stop_group(child);
        }
        let old_url = self.worker_url.clone();
        self.worker_port = free_port();
        self.worker_url = format!("http://127.0.0.1:{}", self.worker_port);
        self.worker_env = self.worker_env.replace(
            &format!("PUBLIC_BASE_URL={old_url}\n"),
            &format!("PUBLIC_BASE_URL={}\n", self.worker_url),
        );
        let _ = std::fs::remove_file(self.dir.join("worker.log"));
        self.worker = Some(spawn_worker(
            &self.worker_main,
            self.worker_port,
            &self.worker_env,
            &self.dir,
        ));
    }

    /// The Worker's (wrangler's) output so far, for failure messages.
    pub fn worker_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("worker.log")).unwrap_or_default()
    }

    /// The gateway's output so far.
    pub fn gateway_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// Stops the gateway (to test how the Worker behaves without it).
    pub fn stop_gateway(&mut self) {
        if let Some(child) = self.gateway.take() {
            stop_group(child);
        }
    }

    /// Starts the gateway again, on the same address and database, after [`Self::stop_gateway`].
    pub fn start_gateway(&mut self) {
        assert!(self.gateway.is_none(), "the gateway is running");
        let (child, _, _) = spawn_gateway(
            &self.gateway_bin,
            &self.database_url,
            &self.keys_file,
            &self.gateway_listen,
            &self.dir,
        );
        self.gateway = Some(child);
    }

    /// Stops workerd and starts it again on the same port and local state (Durable Object
    /// storage survives, as it does across a deploy).
    pub async fn restart_worker(&mut self) {
        if let Some(child) = self.worker.take() {
            stop_group(child);
        }
        self.worker = Some(spawn_worker(
            &self.worker_main,
            self.worker_port,
            &self.worker_env,
            &self.dir,
        ));
        self.wait_for_worker().await;
    }

    /// CPU seconds (user + system) used so far by this stack's workerd processes, read from
    /// `/proc`: the one running the Worker and its Durable Objects, and the one `wrangler dev`
    /// puts in front of it as a local proxy (which production does not have).
    pub fn workerd_cpu_seconds(&self) -> WorkerdCpu {
        let mut cpu = WorkerdCpu::default();
        for process in self.workerd_processes() {
            let Ok(stat) = std::fs::read_to_string(process.join("stat")) else {
                continue;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = fields
                .get(11)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
                + fields
                    .get(12)
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0);
            let seconds = ticks as f64 / 100.0; // USER_HZ on Linux
            let cmdline = std::fs::read(process.join("cmdline")).unwrap_or_default();
            // The Worker's own workerd is the one wrangler attaches its inspector to, or the one
            // serving our own config when run directly.
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("--inspector-addr") || cmdline.contains("workerd.capnp") {
                cpu.worker += seconds;
            } else {
                cpu.proxy += seconds;
            }
        }
        cpu
    }

    /// `/proc/<pid>` of every live workerd process of this stack (its process group).
    fn workerd_processes(&self) -> Vec<PathBuf> {
        let Some(group) = self.worker.as_ref().map(Child::id) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or_default();
            let pgrp: u32 = fields.nth(1).and_then(|f| f.parse().ok()).unwrap_or(0);
            if pgrp == group && comm.starts_with("workerd") && state != "Z" {
                found.push(entry.path());
            }
        }
        found
    }

    /// Resident memory (KiB) of this stack's workerd processes.
    pub fn workerd_rss_kib(&self) -> u64 {
        self.workerd_processes()
            .iter()
            .map(|process| {
                std::fs::read_to_string(process.join("status"))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|line| line.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// `GET` a Worker path.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.worker_url))
            .send()
            .await
            .expect("request reaches the Worker")
    }

    /// Sends a request to the Worker (JSON body and bearer token optional) and returns the status
    /// and the parsed JSON body (`Null` for an empty body). A non-JSON body fails the test with the
    /// Worker's log.
    pub async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.worker_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request reaches the Worker");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body readable");
        if text.is_empty() {
            return (status, serde_json::Value::Null);
        }
        let value = serde_json::from_str(&text).unwrap_or_else(|_| {
            panic!(
                "{method} {path} answered {status} with non-JSON: {text}\nworker log:\n{}",
                self.worker_log()
            )
        });
        (status, value)
    }

    /// Registers `email` with [`TEST_PASSWORD`]; returns (token, user id).
    pub async fn register(&self, email: &str) -> (String, String) {
        let body =
            serde_json::json!({"email": email, "password": TEST_PASSWORD, "name": "Test User"});
        let (status, body) = self
            .json(
                reqwest::Method::POST,
                "/api/auth/register",
                None,
                Some(body),
            )
            .await;
        assert_eq!(
            status,
            201,
            "register: {body}\nworker log:\n{}",
            self.worker_log()
        );
        let token = body["token"].as_str().expect("token").to_owned();
        let user_id = body["user"]["id"].as_str().expect("user id").to_owned();
        (token, user_id)
    }

    /// Registers `email` with a phone number of their own; returns (token, user id).
    pub async fn register_with_phone(&self, email: &str, phone: &str) -> (String, String) {
        let body = serde_json::json!({"email": email, "password": TEST_PASSWORD, "name": "Ada Lovelace", "phone": phone});
        let (status, body) = self
            .json(
                reqwest::Method::POST,
                "/api/auth/register",
                None,
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "register: {body}");
        (
            body["token"].as_str().expect("token").to_owned(),
            body["user"]["id"].as_str().expect("user id").to_owned(),
        )
    }

    /// Puts a user on `tier` with `credits` (straight in SQL: Stripe is another test's subject).
    pub async fn set_tier(&self, user_id: &str, tier: &str, credits: i32) {
        self.db()
            .await
            .execute(
                "UPDATE user_credits SET subscription_tier = $2, available_credits = $3 WHERE user_id = $1",
                &[&user_id, &tier, &credits],
            )
            .await
            .expect("set tier");
    }

    /// Polls `GET /api/calls/{id}` until the call is recorded as over (or `timeout`); returns it.
    pub async fn wait_for_outcome(
        &self,
        token: &str,
        call_id: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self
                .json(
                    reqwest::Method::GET,
                    &format!("/api/calls/{call_id}"),
                    Some(token),
                    None,
                )
                .await;
            assert_eq!(status, 200, "get call: {body}");
            let call = &body["call"];
            if !call["metrics"].is_null()
                || call["status"] == "failed" && !call["error_message"].is_null()
            {
                return call.clone();
            }
            assert!(
                Instant::now() < deadline,
                "call {call_id} not recorded within {timeout:?}: {call}\nworker log:\n{}",
                self.worker_log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Logs `email` in with [`TEST_PASSWORD`]; returns the token.
    pub async fn login(&self, email: &str) -> String {
        let body = serde_json::json!({"email": email, "password": TEST_PASSWORD});
        let (status, body) = self
            .json(reqwest::Method::POST, "/api/auth/login", None, Some(body))
            .await;
        assert_eq!(status, 200, "login: {body}");
        body["token"].as_str().expect("token").to_owned()
    }

    /// Registers `email`, makes them an admin in SQL, and logs in again for a token with the role.
    pub async fn admin_token(&self, email: &str) -> String {
        self.register(email).await;
        self.db()
            .await
            .execute(
                "UPDATE users SET role = 'admin' WHERE email = $1",
                &[&email],
            )
            .await
            .expect("promote to admin");
        self.login(email).await
    }

    /// A Postgres client on this stack's database (for arranging and checking state).
    pub async fn db(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
                .await
                .expect("test database reachable");
        tokio::spawn(connection);
        client
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(child) = self.worker.take() {
            stop_group(child);
        }
        self.stop_gateway();
        let admin = self.admin_database_url.clone();
        let name = self.database_name.clone();
        // Dropping the database is best effort: the cluster is thrown away after the run anyway.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    if let Ok((client, conn)) =
                        tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(conn);
                        let _ = client
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .await;
                    }
                });
            }
        })
        .join();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn create_database(admin_url: &str, name: &str) {
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to TEST_DATABASE_URL: {e}"));
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create the test database");
}

/// The same URL with another database name (last path segment).
fn replace_database(url: &str, name: &str) -> String {
    let (base, _) = url
        .rsplit_once('/')
        .expect("TEST_DATABASE_URL has a database path");
    format!("{base}/{name}")
}

fn spawn_gateway(
    bin: &str,
    database_url: &str,
    keys_file: &Path,
    listen: &str,
    dir: &Path,
) -> (Child, String, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))
        .expect("gateway log file");
    let mut child = Command::new(bin)
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("GATEWAY_LISTEN", listen)
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_KEYS_FILE", keys_file)
        .env("GATEWAY_MIGRATIONS_DIR", repo_root().join("migrations"))
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("db-gateway listening ") {
                let mut api = String::new();
                let mut admin = String::new();
                for part in rest.split_whitespace() {
                    if let Some(v) = part.strip_prefix("api=") {
                        api = v.to_owned();
                    } else if let Some(v) = part.strip_prefix("admin=") {
                        admin = v.to_owned();
                    }
                }
                let _ = tx.send((api, admin));
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok((api, admin)) => (child, api, admin),
        Err(_) => {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
            panic!("db-gateway did not report its addresses within 60 s; log:\n{log}");
        }
    }
}

fn spawn_worker(main: &str, port: u16, worker_env: &str, dir: &Path) -> Child {
    if std::env::var("CALLMEBACK_WORKER_RUNTIME").as_deref() == Ok("workerd") {
        return spawn_workerd(main, port, worker_env, dir);
    }
    let config = test_wrangler_config(
        &std::fs::read_to_string(repo_root().join("wrangler.toml")).expect("read wrangler.toml"),
        main,
    );
    std::fs::write(dir.join("wrangler.toml"), config).expect("write test wrangler config");
    std::fs::write(dir.join("worker.env"), worker_env).expect("write worker env file");
    let (log, log_err) = worker_log_files(dir);
    Command::new(repo_root().join("node_modules/.bin/wrangler"))
        .current_dir(dir)
        .args(["dev", "-c", "wrangler.toml", "--ip", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args(["--inspector-port"])
        .arg(free_port().to_string())
        .args([
            "--persist-to",
            "state",
            "--env-file",
            "worker.env",
            "--show-interactive-dev-session=false",
            // Exposes /__scheduled so tests can fire the cron trigger.
            "--test-scheduled",
        ])
        .env("WRANGLER_SEND_METRICS", "false")
        .env("CI", "true")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .expect("start wrangler dev (run scripts/bootstrap for node_modules)")
}

/// Serves the built Worker with `workerd serve` and a config equivalent to what `wrangler dev`
/// gives it: wrangler.toml's `[vars]` and the env file as text bindings, its Durable Object
/// classes (SQLite-backed, stored under `dir`), outbound access to loopback (the simulators).
fn spawn_workerd(main: &str, port: u16, worker_env: &str, dir: &Path) -> Child {
    let wrangler =
        std::fs::read_to_string(repo_root().join("wrangler.toml")).expect("read wrangler.toml");
    std::fs::write(dir.join("worker.env"), worker_env).expect("write worker env file");
    // Embedded files are found relative to the config: copy the build beside it.
    let main_dir = dir.join("worker-build");
    std::fs::create_dir_all(&main_dir).expect("create the build copy dir");
    let build_dir = Path::new(main)
        .parent()
        .expect("the Worker's build directory");
    for file in ["index.js", "index_bg.wasm"] {
        std::fs::copy(build_dir.join(file), main_dir.join(file)).expect("copy the built Worker");
    }
    let storage = dir.join("workerd-state");
    std::fs::create_dir_all(&storage).expect("create Durable Object storage dir");
    let config = workerd_config(
        &wrangler,
        worker_env,
        Path::new("worker-build"),
        &storage,
        port,
    );
    std::fs::write(dir.join("workerd.capnp"), config).expect("write workerd config");
    let (log, log_err) = worker_log_files(dir);
    Command::new(repo_root().join("node_modules/.bin/workerd"))
        .current_dir(dir)
        .args(["serve", "--experimental", "workerd.capnp"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .expect("start workerd (run scripts/bootstrap for node_modules)")
}

/// The workerd config (Cap'n Proto text) for the Worker built in `build_dir`.
pub fn workerd_config(
    wrangler_toml: &str,
    worker_env: &str,
    build_dir: &Path,
    storage: &Path,
    port: u16,
) -> String {
    let quote = |value: &str| format!("{value:?}");
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: &str| {
        vars.retain(|(n, _)| n != name);
        vars.push((name.to_owned(), value.to_owned()));
    };
    let mut section = String::new();
    let mut compatibility_date = "2026-04-01".to_owned();
    let mut classes: Vec<(String, String)> = Vec::new();
    let mut binding_name = String::new();
    for line in wrangler_toml.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim().trim_matches('"'));
        match section.as_str() {
            "" if key == "compatibility_date" => compatibility_date = value.to_owned(),
            "[vars]" => set(key, value),
            "[[durable_objects.bindings]]" if key == "name" => binding_name = value.to_owned(),
            "[[durable_objects.bindings]]" if key == "class_name" => {
                classes.push((std::mem::take(&mut binding_name), value.to_owned()));
            }
            _ => {}
        }
    }
    for line in worker_env.lines() {
        if let Some((key, value)) = line.split_once('=') {
            set(key.trim(), value.trim());
        }
    }
    let mut bindings: Vec<String> = vars
        .iter()
        .map(|(name, value)| format!("(name = {}, text = {})", quote(name), quote(value)))
        .collect();
    bindings.extend(classes.iter().map(|(name, class)| {
        format!(
            "(name = {}, durableObjectNamespace = {})",
            quote(name),
            quote(class)
        )
    }));
    let namespaces: Vec<String> = classes
        .iter()
        .map(|(_, class)| {
            format!(
                "(className = {}, uniqueKey = {}, enableSql = true)",
                quote(class),
                quote(&format!("callmeback-{class}"))
            )
        })
        .collect();
    let build = |file: &str| quote(&build_dir.join(file).display().to_string());
    format!(
        r#"using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "internet", network = (allow = ["public", "private", "local"])),
    (name = "do-storage", disk = (path = {storage}, writable = true)),
  ],
  sockets = [(name = "http", address = "127.0.0.1:{port}", http = (), service = "main")],
);

const worker :Workerd.Worker = (
  modules = [
    (name = "index.js", esModule = embed {index_js}),
    (name = "index_bg.wasm", wasm = embed {index_wasm}),
  ],
  compatibilityDate = {date},
  bindings = [
    {bindings}
  ],
  durableObjectNamespaces = [
    {namespaces}
  ],
  durableObjectStorage = (localDisk = "do-storage"),
  globalOutbound = "internet",
);
"#,
        storage = quote(&storage.display().to_string()),
        index_js = build("index.js"),
        index_wasm = build("index_bg.wasm"),
        date = quote(&compatibility_date),
        bindings = bindings.join(",\n    "),
        namespaces = namespaces.join(",\n    "),
    )
}

/// The project's wrangler.toml, minus its build step (the tests run a prebuilt Worker), with
/// `main` pointing at the built entry.
pub fn test_wrangler_config(original: &str, main: &str) -> String {
    let mut out = String::new();
    let mut in_build = false;
    for line in original.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            in_build = trimmed == "[build]";
        }
        if in_build {
            continue;
        }
        if trimmed.starts_with("main =") {
            out.push_str(&format!("main = {main:?}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The Worker's log (`worker.log` in the stack's dir), opened twice: its stdout and its stderr.
fn worker_log_files(dir: &Path) -> (std::fs::File, std::fs::File) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("worker.log"))
        .expect("worker log file");
    let log_err = log.try_clone().expect("clone log handle");
    (log, log_err)
}

/// Stops a child and everything it started (it leads its own process group): TERM, then KILL
/// after ten seconds.
pub fn stop_group(mut child: Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Usually the group is gone by now and kill says so; that is not news.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_config_drops_build_and_repoints_main() {
        let original = "name = \"x\"\nmain = \"a/b.js\"\n[build]\ncommand = \"make\"\nwatch_dir = [\"a\"]\n[vars]\nA = \"1\"\n";
        let config = test_wrangler_config(original, "/abs/index.js");
        assert!(!config.contains("[build]") && !config.contains("command"));
        assert!(config.contains("main = \"/abs/index.js\""));
        assert!(config.contains("[vars]\nA = \"1\""));
    }

    #[test]
    fn database_is_replaced_in_url() {
        assert_eq!(
            replace_database("postgres://u@h:1/postgres", "e2e_1"),
            "postgres://u@h:1/e2e_1"
        );
    }
}
