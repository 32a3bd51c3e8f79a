//! The VPS backup tooling in `deploy/` (backup.sh, restore-drill.sh, restore.sh), run for real.
//!
//! Operators run these scripts, not Rust code, so the test drives them exactly as systemd or a
//! person would: as processes, with environment variables, against a real PostgreSQL server, and
//! judges them by exit status, files on disk and the databases left behind. The tables are made
//! here and do not come from the migrations, so the scripts are tested on their own.
//!
//! Needs `TEST_DATABASE_URL`: a `postgres://` admin URL of a throwaway cluster (e.g.
//! `postgres://postgres@127.0.0.1:54329/postgres`; `scripts/test` starts one) and the client
//! tools `pg_dump`, `pg_restore` and `psql` on PATH or in `/usr/lib/postgresql/*/bin`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_postgres::{Client, NoTls};

/// Goes into the connection URLs handed to the scripts (percent-encoded, decoded `pw@never/…`);
/// no script output may contain it in either form. A trust-auth cluster ignores it.
const PASSWORD_ENCODED: &str = "pw%40never%2Fprinted%3A42";
const PASSWORD_FRAGMENT: &str = "never/printed";

const DRILL_PREFIX: &str = "callmeback_restore_drill_";

#[tokio::test]
async fn backups_rotate_and_restore_drills_catch_every_mismatch() {
    let fixture = Fixture::create().await;
    let source = fixture.client(&fixture.name).await;
    source
        .batch_execute(
            "CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL);
             INSERT INTO customers (name) SELECT 'customer ' || n FROM generate_series(1, 25) n;
             CREATE TABLE orders (
                 id bigserial PRIMARY KEY,
                 customer_id bigint NOT NULL REFERENCES customers (id),
                 total_cents integer NOT NULL
             );
             INSERT INTO orders (customer_id, total_cents)
                 SELECT 1 + n % 25, n * 100 FROM generate_series(1, 40) n;
             CREATE TABLE \"Mixed Case\" (x integer);
             INSERT INTO \"Mixed Case\" VALUES (1), (2), (3);
             CREATE TABLE audit_events (at timestamptz NOT NULL DEFAULT now());
             CREATE VIEW big_orders AS SELECT * FROM orders WHERE total_cents > 1000;",
        )
        .await
        .expect("source tables can be created");

    // --- backup.sh: three runs, retention keeps the newest two ---------------------------------
    let mut seen = Vec::new();
    for run in 1..=3 {
        let output = fixture.script("backup.sh", &[], &[]);
        let text = expect_success(&output, &format!("backup.sh run {run}"));
        assert_no_secret(&text, "backup.sh");
        let dumps = fixture.dumps();
        let newest = dumps.last().expect("a dump was written").clone();
        assert!(
            !seen.contains(&newest),
            "run {run} must write a new file, got {newest}"
        );
        seen.push(newest);
        assert_eq!(dumps.len(), run.min(2), "dumps after run {run}: {dumps:?}");
    }
    let kept = fixture.dumps();
    assert_eq!(
        kept,
        seen[1..].to_vec(),
        "the two newest dumps are kept, the oldest deleted"
    );
    for dump in &kept {
        let sums = std::fs::read_to_string(fixture.backup_dir.join(format!("{dump}.sha256")))
            .expect("every kept dump has its checksum file");
        assert!(
            sums.ends_with(&format!("  {dump}\n")),
            "sha256sum format: {sums}"
        );
    }
    assert!(
        !fixture
            .backup_dir
            .join(format!("{}.sha256", seen[0]))
            .exists()
    );
    let leftovers: Vec<String> = fixture
        .file_names()
        .into_iter()
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary files remain: {leftovers:?}"
    );

    // --- restore-drill.sh --exact on an unchanged source passes and cleans up -----------------
    let output = fixture.script("restore-drill.sh", &["--exact"], &[]);
    let text = expect_success(&output, "restore-drill.sh --exact on an unchanged source");
    assert_no_secret(&text, "restore-drill.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(drill_row(&stdout, "customers"), ["25", "25", "ok"]);
    assert_eq!(drill_row(&stdout, "orders"), ["40", "40", "ok"]);
    assert_eq!(drill_row(&stdout, "Mixed Case"), ["3", "3", "ok"]);
    assert_eq!(drill_row(&stdout, "audit_events"), ["0", "0", "ok"]);
    assert!(
        !stdout.lines().any(|line| line.starts_with("big_orders")),
        "views have no rows of their own and are not compared:\n{stdout}"
    );
    fixture.assert_scratch_dropped(&text).await;

    // --- the source grows: tolerated by default, refused by --exact ---------------------------
    source
        .batch_execute("INSERT INTO orders (customer_id, total_cents) VALUES (1, 99)")
        .await
        .expect("a row can be added to the source");
    let output = fixture.script("restore-drill.sh", &[], &[]);
    let text = expect_success(
        &output,
        "restore-drill.sh (non-exact) after the source grew",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(drill_row(&stdout, "orders")[..3], ["41", "40", "ok:"]);
    fixture.assert_scratch_dropped(&text).await;

    let output = fixture.script("restore-drill.sh", &["--exact"], &[]);
    let text = expect_failure(&output, "restore-drill.sh --exact after the source grew");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(drill_row(&stdout, "orders")[..3], ["41", "40", "FAIL:"]);
    assert_eq!(drill_row(&stdout, "customers"), ["25", "25", "ok"]);
    assert!(text.contains("FAILED"), "the failure is named:\n{text}");
    fixture.assert_scratch_dropped(&text).await;

    // --- a source that lost rows fails even without --exact, unless that table is ignored -----
    source
        .batch_execute("DELETE FROM \"Mixed Case\" WHERE x = 3")
        .await
        .expect("a row can be deleted from the source");
    let output = fixture.script("restore-drill.sh", &[], &[]);
    let text = expect_failure(&output, "restore-drill.sh after the source lost a row");
    assert_eq!(
        drill_row(&String::from_utf8_lossy(&output.stdout), "Mixed Case")[..3],
        ["2", "3", "FAIL:"]
    );
    fixture.assert_scratch_dropped(&text).await;
    let output = fixture.script("restore-drill.sh", &["--ignore-table", "Mixed Case"], &[]);
    let text = expect_success(&output, "restore-drill.sh --ignore-table 'Mixed Case'");
    assert_eq!(
        drill_row(&String::from_utf8_lossy(&output.stdout), "Mixed Case"),
        ["2", "3", "ignored"]
    );
    fixture.assert_scratch_dropped(&text).await;

    // --- restore.sh: confirmation, creation, refusal to overwrite, --force ---------------------
    let newest_dump = fixture
        .backup_dir
        .join(kept.last().expect("two dumps kept"));
    let newest_dump = newest_dump.to_str().expect("temp paths are UTF-8");
    let target = format!("{}_restored", fixture.name);
    let output = fixture.script("restore.sh", &[newest_dump, &target], &[]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "no --yes, no restore: {}",
        combined(&output)
    );
    assert!(
        !fixture.database_exists(&target).await,
        "nothing is created without --yes"
    );

    let output = fixture.script("restore.sh", &["--yes", newest_dump, &target], &[]);
    assert_no_secret(
        &expect_success(&output, "restore.sh into a new database"),
        "restore.sh",
    );
    let restored = fixture.client(&target).await;
    assert_eq!(count(&restored, "orders").await, 40);
    assert_eq!(count(&restored, "customers").await, 25);

    let output = fixture.script("restore.sh", &["--yes", newest_dump, &target], &[]);
    let text = expect_failure(
        &output,
        "restore.sh over a non-empty database without --force",
    );
    assert!(
        text.contains("--force"),
        "the refusal says how to override it:\n{text}"
    );

    restored
        .batch_execute("DELETE FROM orders WHERE id > 10")
        .await
        .expect("the restored copy can be changed");
    let output = fixture.script(
        "restore.sh",
        &["--yes", "--force", newest_dump, &target],
        &[],
    );
    expect_success(&output, "restore.sh --force over a non-empty database");
    assert_eq!(
        count(&restored, "orders").await,
        40,
        "--force put the dumped rows back"
    );
    drop(restored);

    // --- a dump whose checksum does not match is refused before anything is restored ----------
    let sums_path = fixture
        .backup_dir
        .join(format!("{}.sha256", kept.last().expect("kept")));
    let sums = std::fs::read_to_string(&sums_path).expect("checksum file readable");
    let flipped = if sums.starts_with('0') { "1" } else { "0" };
    std::fs::write(&sums_path, format!("{flipped}{}", &sums[1..])).expect("checksum file writable");
    let output = fixture.script("restore-drill.sh", &[], &[]);
    let text = expect_failure(&output, "restore-drill.sh with a tampered checksum");
    assert!(
        text.contains("checksum mismatch"),
        "the reason is named:\n{text}"
    );
    assert!(
        !text.contains(DRILL_PREFIX),
        "no scratch database was even created:\n{text}"
    );
    let output = fixture.script(
        "restore.sh",
        &["--yes", "--force", newest_dump, &target],
        &[],
    );
    let text = expect_failure(&output, "restore.sh with a tampered checksum");
    assert!(
        text.contains("checksum mismatch"),
        "the reason is named:\n{text}"
    );

    // The older dump still verifies and can be drilled explicitly.
    let older_dump = fixture.backup_dir.join(&kept[0]);
    let output = fixture.script(
        "restore-drill.sh",
        &[
            "--ignore-table",
            "Mixed Case",
            older_dump.to_str().expect("UTF-8"),
        ],
        &[],
    );
    let text = expect_success(&output, "restore-drill.sh on an explicit, intact dump");
    fixture.assert_scratch_dropped(&text).await;

    // --- bad configuration fails loudly instead of doing something surprising -----------------
    let output = fixture.script("backup.sh", &[], &[("BACKUP_KEEP_DAILY", "0")]);
    expect_failure(&output, "backup.sh with BACKUP_KEEP_DAILY=0");
    let output = fixture.script("restore-drill.sh", &[], &[("ADMIN_DATABASE_URL", "")]);
    let text = expect_failure(&output, "restore-drill.sh without ADMIN_DATABASE_URL");
    assert!(
        text.contains("ADMIN_DATABASE_URL"),
        "the missing variable is named:\n{text}"
    );
    for script in ["backup.sh", "restore-drill.sh", "restore.sh"] {
        let output = fixture.script(script, &["-h"], &[]);
        let text = expect_success(&output, &format!("{script} -h"));
        assert!(
            text.contains("usage:"),
            "{script} -h prints its usage:\n{text}"
        );
    }
}

/// A fresh source database, a backup directory, and the cluster's admin URL; all removed on drop.
struct Fixture {
    admin_url: String,
    name: String,
    backup_dir: PathBuf,
}

impl Fixture {
    async fn create() -> Self {
        let admin_url = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
            panic!(
                "TEST_DATABASE_URL is not set. The backup/restore test needs a throwaway Postgres \
                 cluster: set TEST_DATABASE_URL to its admin URL, e.g. \
                 postgres://postgres@127.0.0.1:54329/postgres (scripts/test starts one)."
            )
        });
        assert!(
            admin_url.starts_with("postgres://") || admin_url.starts_with("postgresql://"),
            "TEST_DATABASE_URL must be a postgres:// URL"
        );
        let name = format!("backup_restore_{}", unique_suffix());
        let backup_dir = std::env::temp_dir().join(format!("callmeback-backups-{name}"));
        std::fs::create_dir_all(&backup_dir).expect("backup dir can be created");
        let fixture = Self {
            admin_url,
            name,
            backup_dir,
        };
        fixture
            .admin()
            .await
            .batch_execute(&format!("CREATE DATABASE \"{}\"", fixture.name))
            .await
            .expect("the source database can be created");
        fixture
    }

    async fn admin(&self) -> Client {
        connect(&self.admin_url).await
    }

    async fn client(&self, database: &str) -> Client {
        connect(&url_with_database(&self.admin_url, database)).await
    }

    /// Runs a deploy script with the fixture's environment plus `extra_env`.
    fn script(&self, script: &str, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let admin_url = with_password(&self.admin_url);
        let mut command = Command::new(deploy_dir().join(script));
        command.args(args);
        // Whatever the developer's shell has must not leak into what is tested.
        for var in [
            "PGDATABASE",
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGPASSWORD",
            "PGSERVICE",
            "BACKUP_PREFIX",
        ] {
            command.env_remove(var);
        }
        command
            .env("DATABASE_URL", url_with_database(&admin_url, &self.name))
            .env("ADMIN_DATABASE_URL", &admin_url)
            .env("BACKUP_DIR", &self.backup_dir)
            .env("BACKUP_KEEP_DAILY", "2")
            .envs(extra_env.iter().copied());
        command
            .output()
            .unwrap_or_else(|error| panic!("cannot run deploy/{script}: {error}"))
    }

    fn file_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.backup_dir)
            .expect("backup dir readable")
            .map(|entry| {
                entry
                    .expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// The finished dumps, oldest first (their names sort by time).
    fn dumps(&self) -> Vec<String> {
        self.file_names()
            .into_iter()
            .filter(|name| name.starts_with("callmeback-") && name.ends_with(".dump"))
            .collect()
    }

    async fn database_exists(&self, name: &str) -> bool {
        let row = self
            .admin()
            .await
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .await
            .expect("pg_database readable");
        row.get::<_, i64>(0) > 0
    }

    /// The drill names its scratch database in its output; it must exist no more.
    async fn assert_scratch_dropped(&self, drill_output: &str) {
        let start = drill_output
            .find(DRILL_PREFIX)
            .unwrap_or_else(|| panic!("the drill names its scratch database:\n{drill_output}"));
        let scratch: String = drill_output[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            !self.database_exists(&scratch).await,
            "scratch database {scratch} was dropped"
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.backup_dir);
        // Drop is synchronous; a short-lived runtime on another thread does the async work.
        let admin_url = self.admin_url.clone();
        let databases = [self.name.clone(), format!("{}_restored", self.name)];
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&admin_url, NoTls).await.ok()?;
                tokio::spawn(connection);
                for database in databases {
                    let sql = format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)");
                    client.batch_execute(&sql).await.ok()?;
                }
                Some(())
            })
        });
        let _ = cleanup.join();
    }
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("test cluster reachable");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn count(client: &Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .await
        .expect("table countable")
        .get(0)
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The same server URL with another database in the path (query string kept).
fn url_with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(base, query)| (base, Some(query)));
    let authority_start = base.find("://").expect("URL has a scheme") + 3;
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// The URL with PASSWORD_ENCODED as its password, unless it already carries one (then that one
/// is what must stay secret, and it is left in place so authentication still works).
fn with_password(url: &str) -> String {
    let authority_start = url.find("://").expect("URL has a scheme") + 3;
    let rest = &url[authority_start..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.split_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => url.to_owned(),
        Some((user, host)) => {
            format!(
                "{}{user}:{PASSWORD_ENCODED}@{host}{}",
                &url[..authority_start],
                &rest[authority.len()..]
            )
        }
        None => format!(
            "{}postgres:{PASSWORD_ENCODED}@{rest}",
            &url[..authority_start]
        ),
    }
}

fn assert_no_secret(text: &str, what: &str) {
    assert!(
        !text.contains(PASSWORD_ENCODED) && !text.contains(PASSWORD_FRAGMENT),
        "{what} printed the password:\n{text}"
    );
    if let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") {
        assert!(
            !text.contains(&admin_url),
            "{what} printed a connection URL:\n{text}"
        );
    }
}

/// The cells after the table name in the drill's table: source, restored, status words.
fn drill_row(stdout: &str, table: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .find(|line| {
            line.strip_prefix(table)
                .is_some_and(|rest| rest.starts_with("  "))
        })
        .unwrap_or_else(|| panic!("no row for {table} in the drill's table:\n{stdout}"));
    line[table.len()..]
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn combined(output: &Output) -> String {
    format!(
        "exit status: {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn expect_success(output: &Output, what: &str) -> String {
    let text = combined(output);
    assert!(output.status.success(), "{what} should succeed:\n{text}");
    text
}

fn expect_failure(output: &Output, what: &str) -> String {
    let text = combined(output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{what} should fail with status 1:\n{text}"
    );
    text
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
