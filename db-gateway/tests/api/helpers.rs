//! `spawn_app()`: a gateway on a fresh database, started in-process on random ports, with a
//! client that signs its requests like the Worker does.
//!
//! Needs a Postgres cluster whose admin URL is in `TEST_DATABASE_URL` (e.g.
//! `postgres://postgres@127.0.0.1:54329/postgres`). Every test gets its own database with a
//! random name, migrated from a temporary directory of fixture migrations, and dropped when the
//! test ends (`TEST_KEEP_DB=1` keeps it for debugging). `TEST_LOG=1` prints the gateway's logs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use callmeback_gateway_api::{
    BATCH_PATH, BatchRequest, BatchResponse, ErrorBody, OP_PATH, OpCall, OpResult,
};
use callmeback_signing::{Key, SignedHeaders, sign_request};
use db_gateway::Config;
use db_gateway::ops::{
    DEFAULT_STATEMENT_TIMEOUT_MS, Expect, Mode, OpDef, OpSpec, ParamSpec, ParamType, Registry,
};
use rand::RngCore as _;
use reqwest::StatusCode;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

/// Key with every scope.
pub(crate) const FULL_KEY_ID: &str = "test-full";
/// Key that may only call `test.count_items` (and, like every key, `system.ping`).
pub(crate) const NARROW_KEY_ID: &str = "test-narrow";

/// Fixture schema for the test-only operations.
pub(crate) const FIXTURE_MIGRATION: &str = "
CREATE TABLE test_items (
    id       TEXT PRIMARY KEY,
    quantity INT4 NOT NULL CONSTRAINT test_items_quantity_non_negative CHECK (quantity >= 0),
    note     TEXT
);
";

/// Operations that exist only in tests; production never registers them, so the production
/// surface stays exactly what the Worker needs.
pub(crate) static TEST_OPS: &[OpDef] = &[
    OpDef {
        spec: &OpSpec::new(
            "test.echo_types",
            &[
                ParamSpec::required("t", ParamType::Text),
                ParamSpec::required("i4", ParamType::Int4),
                ParamSpec::required("i8", ParamType::Int8),
                ParamSpec::required("n", ParamType::Numeric),
                ParamSpec::required("b", ParamType::Bool),
                ParamSpec::required("ts", ParamType::Timestamptz),
                ParamSpec::required("j", ParamType::Jsonb),
                ParamSpec::required("arr", ParamType::TextArray),
                ParamSpec::optional("maybe", ParamType::Text),
            ],
        ),
        sql: "SELECT $1::text AS t, $2::int4 AS i4, $3::int8 AS i8, $4::text::numeric AS n, \
              $5::bool AS b, $6::timestamptz AS ts, $7::jsonb AS j, $8::text[] AS arr, \
              $9::text AS maybe",
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &OpSpec::new(
            "test.echo_numeric",
            &[ParamSpec::required("n", ParamType::Numeric)],
        ),
        sql: "SELECT $1::text::numeric AS n, ($1::text::numeric)::text AS pg_text",
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &OpSpec::new("test.encodings", &[]),
        sql: "SELECT 7::int2 AS i2, 1.5::float4 AS f4, 'NaN'::float8 AS f8_nan, \
              '-Infinity'::float8 AS f8_neg_inf, 'NaN'::numeric AS n_nan, \
              '0.000'::numeric AS n_zero, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS id, \
              '2026-11-22'::date AS day, 'infinity'::timestamptz AS forever, \
              ARRAY['x', NULL]::varchar[] AS tags, '{\"k\": [1, \"2\"]}'::json AS doc, \
              NULL::int8 AS nothing, 'abc'::varchar(5) AS short",
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &OpSpec::new(
            "test.insert_item",
            &[
                ParamSpec::required("id", ParamType::Text),
                ParamSpec::required("quantity", ParamType::Int4),
                ParamSpec::optional("note", ParamType::Text),
            ],
        ),
        sql: "INSERT INTO test_items (id, quantity, note) VALUES ($1, $2, $3) RETURNING id, quantity",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &OpSpec::new(
            "test.take_item",
            &[
                ParamSpec::required("id", ParamType::Text),
                ParamSpec::required("quantity", ParamType::Int4),
            ],
        ),
        sql: "UPDATE test_items SET quantity = quantity - $2 WHERE id = $1 AND quantity >= $2 \
              RETURNING quantity",
        mode: Mode::Write,
        expect: Expect::One {
            message: "not enough items",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &OpSpec::new(
            "test.set_quantity",
            &[
                ParamSpec::required("id", ParamType::Text),
                ParamSpec::required("quantity", ParamType::Int4),
            ],
        ),
        sql: "UPDATE test_items SET quantity = $2 WHERE id = $1",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        // Declared Read but writes: READ ONLY batches must stop it.
        spec: &OpSpec::new(
            "test.mislabelled_write",
            &[ParamSpec::required("id", ParamType::Text)],
        ),
        sql: "INSERT INTO test_items (id, quantity) VALUES ($1, 1) RETURNING id",
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &OpSpec::new("test.count_items", &[]),
        sql: "SELECT count(*) AS n FROM test_items",
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &OpSpec::new("test.sleep", &[ParamSpec::required("ms", ParamType::Int4)]),
        sql: "SELECT true AS slept FROM pg_sleep($1::int4 / 1000.0)",
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &OpSpec::new(
            "test.sleep_with_short_timeout",
            &[ParamSpec::required("ms", ParamType::Int4)],
        ),
        sql: "SELECT true AS slept FROM pg_sleep($1::int4 / 1000.0)",
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: 100,
    },
];

/// Knobs a test may turn; everything else is the production default.
#[derive(Debug, Clone)]
pub(crate) struct TestOptions {
    pub(crate) pool_size: usize,
    pub(crate) pool_wait: Duration,
    /// Shared connections for pipelined reads (production default 2; 0 = pool only).
    pub(crate) pipeline_connections: usize,
    pub(crate) pipeline_depth: usize,
    pub(crate) body_limit_bytes: usize,
    pub(crate) shutdown_grace: Duration,
    pub(crate) bench_ops: bool,
    pub(crate) public_url: Option<String>,
    /// `GATEWAY_REPLAY_CACHE_ENTRIES`; `None` keeps the production default.
    pub(crate) replay_cache_entries: Option<usize>,
    /// The test database's `TimeZone`, which every gateway session inherits (`None`: the
    /// cluster's). A zone far from UTC shows whether "today" and "this month" are UTC's.
    pub(crate) database_timezone: Option<&'static str>,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            pool_size: 4,
            pool_wait: Duration::from_millis(2_000),
            pipeline_connections: 2,
            pipeline_depth: 64,
            body_limit_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(10),
            bench_ops: false,
            public_url: None,
            replay_cache_entries: None,
            database_timezone: None,
        }
    }
}

/// A running gateway plus everything needed to talk to it and to its database.
#[derive(Debug)]
pub(crate) struct TestApp {
    pub(crate) api_addr: std::net::SocketAddr,
    pub(crate) admin_addr: std::net::SocketAddr,
    pub(crate) http: reqwest::Client,
    pub(crate) full_key: Key,
    pub(crate) narrow_key: Key,
    pub(crate) database: TestDatabase,
    /// Holds the fixture migrations and keys file until the app is dropped.
    _dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    /// What it was started with, for [`TestApp::restart`] and [`TestApp::spawn_peer`].
    config: Config,
    registry: Registry,
}

/// Another gateway on the same database and keys as a [`TestApp`], as a second instance behind
/// a load balancer would be (sign against a `public_url` so both accept the same signatures).
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) api_addr: std::net::SocketAddr,
    pub(crate) admin_addr: std::net::SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// A built gateway, serving until `shutdown` fires.
struct Started {
    api_addr: std::net::SocketAddr,
    admin_addr: std::net::SocketAddr,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

async fn start(config: Config, registry: Registry) -> Started {
    let app = db_gateway::Application::build_with_registry(config, registry)
        .await
        .expect("gateway starts");
    let (api_addr, admin_addr) = (app.api_addr(), app.admin_addr());
    let (shutdown, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stop.await;
    }));
    Started {
        api_addr,
        admin_addr,
        shutdown,
        server,
    }
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(TestOptions::default()).await
}

pub(crate) async fn spawn_app_with(options: TestOptions) -> TestApp {
    init_test_logging();
    let database = TestDatabase::create().await;
    if let Some(zone) = options.database_timezone {
        database
            .client()
            .await
            .batch_execute(&format!(
                "ALTER DATABASE \"{}\" SET timezone = '{zone}'",
                database.name
            ))
            .await
            .expect("the test database's time zone can be set");
    }
    apply_project_schema(&database).await;
    let dir = TempDir::new();
    let migrations = dir.path().join("migrations");
    write_file(&migrations.join("001_test_items.sql"), FIXTURE_MIGRATION);

    let (full_secret, narrow_secret) = (random_secret(), random_secret());
    let full_key = Key::new(FULL_KEY_ID, full_secret.clone());
    let narrow_key = Key::new(NARROW_KEY_ID, narrow_secret.clone());
    let keys_file = dir.path().join("keys.json");
    write_file(
        &keys_file,
        &serde_json::json!({"keys": [
            {"id": FULL_KEY_ID, "secret_b64": BASE64.encode(&full_secret), "scopes": ["*"]},
            {"id": NARROW_KEY_ID, "secret_b64": BASE64.encode(&narrow_secret), "scopes": ["test.count_items"]},
        ]})
        .to_string(),
    );

    let mut config = Config::with_defaults(database.config.clone());
    config.api_listen = "127.0.0.1:0".parse().expect("valid address");
    config.admin_listen = "127.0.0.1:0".parse().expect("valid address");
    config.keys_file = Some(keys_file);
    config.migrations_dir = migrations;
    config.pool_size = options.pool_size;
    config.pool_wait = options.pool_wait;
    config.pipeline_connections = options.pipeline_connections;
    config.pipeline_depth = options.pipeline_depth;
    config.body_limit_bytes = options.body_limit_bytes;
    config.shutdown_grace = options.shutdown_grace;
    config.public_url = options.public_url;
    if let Some(entries) = options.replay_cache_entries {
        config.replay_cache_entries = entries;
    }

    db_gateway::migrate_database(&config)
        .await
        .expect("fixture migrations apply");
    let registry = Registry::production(options.bench_ops)
        .and_then(|registry| registry.with(TEST_OPS))
        .expect("test registry is valid");
    let started = start(config.clone(), registry.clone()).await;

    TestApp {
        api_addr: started.api_addr,
        admin_addr: started.admin_addr,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client builds"),
        full_key,
        narrow_key,
        database,
        _dir: dir,
        shutdown: Some(started.shutdown),
        server: Some(started.server),
        config,
        registry,
    }
}

/// The project's schema and seed data (`migrations/NNN_*.sql`), applied with plain SQL rather
/// than the migrator: production operations are prepared at startup and need the real tables,
/// while `schema_migrations` keeps recording only the fixture migration the tests expect.
async fn apply_project_schema(database: &TestDatabase) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the project's migrations directory exists")
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| {
                    name.ends_with(".sql")
                        && name.len() > 4
                        && name.as_bytes()[..3].iter().all(u8::is_ascii_digit)
                        && name.as_bytes()[3] == b'_'
                })
        })
        .collect();
    files.sort();
    let client = database.client().await;
    for file in files {
        let sql = std::fs::read_to_string(&file).expect("migration readable");
        client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|error| panic!("{} does not apply: {error}", file.display()));
    }
}

/// 32 random bytes, the size `gen-key` produces.
pub(crate) fn random_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    secret
}

impl TestApp {
    pub(crate) fn api_url(&self, path: &str) -> String {
        format!("http://{}{}", self.api_addr, path)
    }

    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// Signs `body` for `POST path` the way the Worker does.
    pub(crate) fn sign(
        &self,
        key: &Key,
        path: &str,
        body: &[u8],
        created: i64,
        nonce: &str,
    ) -> SignedHeaders {
        sign_request(key, "POST", &self.api_url(path), body, created, nonce)
    }

    /// Sends `body` with exactly the given headers (for tampering tests).
    pub(crate) async fn post_with_headers(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self.http.post(self.api_url(path)).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request reaches the gateway")
    }

    /// Signs with `key` (fresh nonce, current time) and sends.
    pub(crate) async fn post_signed(
        &self,
        key: &Key,
        path: &str,
        body: Vec<u8>,
    ) -> reqwest::Response {
        let signed = self.sign(key, path, &body, unix_now(), &fresh_nonce());
        self.post_with_headers(path, body, &signed_header_list(&signed))
            .await
    }

    pub(crate) async fn call_as(&self, key: &Key, call: &OpCall) -> reqwest::Response {
        self.post_signed(
            key,
            OP_PATH,
            serde_json::to_vec(call).expect("serializable"),
        )
        .await
    }

    pub(crate) async fn call(&self, call: &OpCall) -> reqwest::Response {
        self.call_as(&self.full_key, call).await
    }

    pub(crate) async fn batch(&self, ops: Vec<OpCall>) -> reqwest::Response {
        let body = serde_json::to_vec(&BatchRequest { ops }).expect("serializable");
        self.post_signed(&self.full_key, BATCH_PATH, body).await
    }

    /// Stops the gateway the way SIGTERM would and waits for it to drain.
    pub(crate) async fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.server.take() {
            Some(server) => server.await.expect("server task does not panic"),
            None => Ok(()),
        }
    }

    /// Stops the gateway (draining it) and starts a fresh process-equivalent on the same
    /// database and keys: new memory, new ports.
    pub(crate) async fn restart(&mut self) {
        self.shutdown().await.expect("the gateway stops cleanly");
        let started = start(self.config.clone(), self.registry.clone()).await;
        self.api_addr = started.api_addr;
        self.admin_addr = started.admin_addr;
        self.shutdown = Some(started.shutdown);
        self.server = Some(started.server);
    }

    /// A second gateway on the same database and keys.
    pub(crate) async fn spawn_peer(&self) -> Peer {
        let started = start(self.config.clone(), self.registry.clone()).await;
        Peer {
            api_addr: started.api_addr,
            admin_addr: started.admin_addr,
            shutdown: Some(started.shutdown),
            server: Some(started.server),
        }
    }

    /// Fires the shutdown signal without waiting; returns the server task.
    pub(crate) fn begin_shutdown(&mut self) -> JoinHandle<std::io::Result<()>> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.take().expect("server still running")
    }
}

impl Peer {
    pub(crate) async fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.server.take() {
            Some(server) => server.await.expect("server task does not panic"),
            None => Ok(()),
        }
    }
}

pub(crate) fn signed_header_list(signed: &SignedHeaders) -> Vec<(&'static str, &str)> {
    vec![
        ("content-type", "application/json"),
        ("content-digest", signed.content_digest.as_str()),
        ("signature-input", signed.signature_input.as_str()),
        ("signature", signed.signature.as_str()),
    ]
}

/// A call of `op` with the members of a JSON object as its parameters.
pub(crate) fn call(op: &str, params: serde_json::Value) -> OpCall {
    let serde_json::Value::Object(params) = params else {
        panic!("params must be an object")
    };
    OpCall::new(op).with_params(params)
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

pub(crate) fn fresh_nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Reads a response as the gateway's error body.
/// The result of an operation that must succeed (the test fails with the body otherwise).
pub(crate) async fn ok(response: reqwest::Response) -> OpResult {
    let status = response.status();
    let text = response.text().await.expect("body readable");
    assert_eq!(status, StatusCode::OK, "unexpected answer: {text}");
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("not an OpResult ({error}): {text}"))
}

/// The results of a batch that must succeed.
pub(crate) async fn ok_batch(response: reqwest::Response) -> BatchResponse {
    let status = response.status();
    let text = response.text().await.expect("body readable");
    assert_eq!(status, StatusCode::OK, "unexpected answer: {text}");
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("not a batch ({error}): {text}"))
}

/// Asserts a refusal with this status and error code; returns the error body.
pub(crate) async fn refused(
    response: reqwest::Response,
    status: StatusCode,
    code: &str,
) -> ErrorBody {
    let (actual_status, body) = error_of(response).await;
    assert_eq!(
        (actual_status, body.error.code.as_str()),
        (status, code),
        "{}",
        body.error.message
    );
    body
}

pub(crate) async fn error_of(response: reqwest::Response) -> (StatusCode, ErrorBody) {
    let status = response.status();
    let text = response.text().await.expect("body readable");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not an ErrorBody: {text}"));
    (status, body)
}

/// A database of its own on the `TEST_DATABASE_URL` cluster, dropped with the value.
#[derive(Debug)]
pub(crate) struct TestDatabase {
    pub(crate) name: String,
    pub(crate) config: tokio_postgres::Config,
    admin: tokio_postgres::Config,
}

impl TestDatabase {
    pub(crate) async fn create() -> Self {
        let admin_url = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
            panic!(
                "TEST_DATABASE_URL is not set. The db-gateway integration tests need a Postgres \
                 cluster: set TEST_DATABASE_URL to an admin URL such as \
                 postgres://postgres@127.0.0.1:54329/postgres (the project's scripts start one)."
            )
        });
        let admin: tokio_postgres::Config = admin_url
            .parse()
            .expect("TEST_DATABASE_URL is a valid connection string");
        let name = format!("gw_test_{}", fresh_nonce());
        let client = connect(&admin).await;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("test database can be created");
        let mut config = admin.clone();
        config.dbname(&name);
        Self {
            name,
            config,
            admin,
        }
    }

    pub(crate) async fn client(&self) -> tokio_postgres::Client {
        connect(&self.config).await
    }

    pub(crate) async fn admin_client(&self) -> tokio_postgres::Client {
        connect(&self.admin).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::env::var_os("TEST_KEEP_DB").is_some() {
            return;
        }
        // Drop is synchronous; a short-lived runtime on another thread does the async work.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let (client, connection) = admin.connect(NoTls).await.ok()?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .ok()
            })
        });
        let _ = cleanup.join();
    }
}

pub(crate) async fn connect(config: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, connection) = config.connect(NoTls).await.expect("test cluster reachable");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        let path = std::env::temp_dir().join(format!("db-gateway-test-{}", fresh_nonce()));
        std::fs::create_dir_all(&path).expect("temp dir can be created");
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn write_file(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("parent dir can be created");
    }
    std::fs::write(path, contents).expect("file can be written");
}

fn init_test_logging() {
    static GUARD: OnceLock<Option<db_gateway::telemetry::LogGuard>> = OnceLock::new();
    GUARD.get_or_init(|| {
        std::env::var_os("TEST_LOG")
            .and_then(|_| db_gateway::telemetry::init_tracing("info,db_gateway=debug").ok())
    });
}

/// A user row straight in SQL (the accounts operations are another slice's); returns its id.
pub(crate) async fn insert_user(db: &tokio_postgres::Client) -> String {
    let id = format!("usr_{}", fresh_nonce());
    db.execute(
        "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, '$argon2id$v=19$test')",
        &[&id, &format!("{id}@example.test")],
    )
    .await
    .expect("insert user");
    id
}
