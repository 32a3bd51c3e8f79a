//! `deploy/pg-lib.sh` keeps passwords off command lines, whatever form the connection string
//! takes, and the connection still authenticates.
//!
//! The deploy scripts (backup.sh, restore-drill.sh, restore.sh) hand every connection string to
//! `pg_with`, which must move a password out of it and into PGPASSWORD: anything in argv is
//! readable by every local user (`ps`, /proc/PID/cmdline). This test puts a stub `psql` first on
//! PATH that writes down its argv and environment and then runs the real psql, and calls
//! `psql_query` (the function the scripts use) with each form of connection string against a
//! throwaway Postgres cluster that demands a password (scram-sha-256), started here because the
//! shared test cluster trusts every local connection.
//!
//! Needs the PostgreSQL server binaries (`initdb`, `pg_ctl`, `psql`) in
//! `/usr/lib/postgresql/*/bin`; `scripts/bootstrap` installs them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

/// Every character a connection string treats specially: space, quotes, backslash, '@', '/',
/// ':', '%', '&', '=', '?'.
const PASSWORD: &str = r#"s3cr@t/p:w 'q' "d" \b %41&x=y?z"#;
/// Parts of the password that are distinctive enough to search for in the stub's argv.
const FRAGMENTS: &[&str] = &["s3cr@t", "s3cr%40t", "%41&x=y", "%2541"];

#[test]
fn pg_with_passes_every_form_of_password_through_the_environment_only() {
    let cluster = PasswordCluster::start();
    let port = cluster.port;
    let uri_password = percent_encode(PASSWORD);
    let quoted_password = PASSWORD.replace('\\', r"\\").replace('\'', r"\'");
    let unquoted_password: String = PASSWORD
        .chars()
        .flat_map(|c| match c {
            ' ' | '\\' | '\'' => vec!['\\', c],
            _ => vec![c],
        })
        .collect();

    let forms = [
        (
            "URI with the password in its userinfo",
            format!(
                "postgres://postgres:{uri_password}@127.0.0.1:{port}/postgres?application_name=pglib_userinfo"
            ),
            "pglib_userinfo",
        ),
        (
            "URI with ?password=",
            format!(
                "postgresql://postgres@127.0.0.1:{port}/postgres?password={uri_password}&application_name=pglib_query"
            ),
            "pglib_query",
        ),
        (
            "key=value with an unquoted, backslash-escaped password",
            format!(
                "host=127.0.0.1 port={port} user=postgres dbname=postgres password={unquoted_password} application_name=pglib_plain"
            ),
            "pglib_plain",
        ),
        (
            "key=value with quoted values and spaces around '='",
            format!(
                "host = '127.0.0.1' port='{port}' user='postgres' password = '{quoted_password}' dbname='postgres' application_name='pg lib\\'s test'"
            ),
            "pg lib's test",
        ),
    ];

    for (form, conn, application_name) in &forms {
        let run = cluster.psql_query(conn, false);
        let stdout = expect_success(&run.output, form);
        assert_eq!(
            stdout.trim_end(),
            format!("postgres\t{application_name}"),
            "{form}: the query ran as postgres with the other settings intact"
        );
        run.assert_password_only_in_environment(form);

        // The scripts aim CONN at other databases with conn_with_db before calling pg_with.
        let run = cluster.psql_query(conn, true);
        let stdout = expect_success(&run.output, &format!("{form}, through conn_with_db"));
        assert!(
            stdout.starts_with("postgres\t"),
            "{form}, through conn_with_db: {stdout}"
        );
        run.assert_password_only_in_environment(&format!("{form}, through conn_with_db"));
    }

    // The cluster really demands the password: without it the same query fails.
    let run = cluster.psql_query(
        &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        false,
    );
    assert!(
        !run.output.status.success(),
        "a connection without the password must be refused:\n{}",
        combined(&run.output)
    );
}

/// A cluster with scram-sha-256 authentication for everyone, removed on drop.
struct PasswordCluster {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
}

/// One `psql_query` through the stub, with what the stub saw.
struct StubRun {
    output: Output,
    argv: Vec<String>,
    environment: Vec<String>,
}

impl PasswordCluster {
    fn start() -> Self {
        let bindir = postgres_bindir();
        let dir = std::env::temp_dir().join(format!("pg-lib-passwords-{}", unique_suffix()));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).expect("temp dir can be created");
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).expect("password file can be written");
        let cluster = Self {
            port: free_port(),
            dir,
            bindir,
        };
        // initdb and postgres refuse to run as root; the `postgres` user then owns the files.
        if is_root() {
            run_checked(
                Command::new("chown")
                    .args(["-R", "postgres:"])
                    .arg(&cluster.dir),
                "chown the cluster directory",
            );
        }
        run_checked(
            cluster
                .as_cluster_owner(&cluster.bindir.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb",
        );
        std::fs::remove_file(&pwfile).expect("password file can be removed");
        let settings = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = off\n",
            cluster.port,
            cluster.dir.display()
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf readable");
        text.push_str(&settings);
        std::fs::write(&conf, text).expect("postgresql.conf writable");
        run_checked(
            cluster
                .as_cluster_owner(&cluster.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(cluster.dir.join("postgres.log"))
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        );
        cluster
    }

    fn as_cluster_owner(&self, program: &Path) -> Command {
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// Runs `SELECT current_user, application_name` through pg-lib.sh's `psql_query CONN`
    /// (optionally CONN re-aimed at `postgres` by `conn_with_db` first), with a stub `psql` first
    /// on PATH that records its argv and environment and then runs the real one.
    fn psql_query(&self, conn: &str, through_conn_with_db: bool) -> StubRun {
        let stub_dir = self.dir.join(format!("stub-{}", unique_suffix()));
        std::fs::create_dir_all(&stub_dir).expect("stub dir can be created");
        let stub = stub_dir.join("psql");
        std::fs::write(
            &stub,
            "#!/usr/bin/env bash\n\
             printf '%s\\0' \"$@\" >\"$STUB_RECORD.argv\"\n\
             env -0 >\"$STUB_RECORD.env\"\n\
             exec \"$REAL_PSQL\" \"$@\"\n",
        )
        .expect("stub can be written");
        make_executable(&stub);
        let record = stub_dir.join("record");
        let script = if through_conn_with_db {
            r#"source "$PG_LIB"; conn="$(conn_with_db "$CONN" postgres)"; psql_query "$conn" <<<"SELECT current_user, current_setting('application_name')""#
        } else {
            r#"source "$PG_LIB"; psql_query "$CONN" <<<"SELECT current_user, current_setting('application_name')""#
        };
        let mut command = Command::new("bash");
        command.args(["-euo", "pipefail", "-c", script]);
        // Whatever the developer's shell has must not leak into what is tested.
        for var in [
            "PGPASSWORD",
            "PGPASSFILE",
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGSERVICE",
            "PGAPPNAME",
            "PSQL",
        ] {
            command.env_remove(var);
        }
        let path = format!(
            "{}:{}",
            stub_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = command
            .env("PATH", path)
            .env("PG_LIB", deploy_dir().join("pg-lib.sh"))
            .env("CONN", conn)
            .env("REAL_PSQL", self.bindir.join("psql"))
            .env("STUB_RECORD", &record)
            // No ~/.pgpass may supply the password behind the test's back.
            .env("PGPASSFILE", "/dev/null")
            .output()
            .expect("bash runs");
        let read_nul_separated = |suffix: &str| -> Vec<String> {
            std::fs::read(record.with_extension(suffix))
                .map(|bytes| {
                    bytes
                        .split(|byte| *byte == 0)
                        .filter(|item| !item.is_empty())
                        .map(|item| String::from_utf8_lossy(item).into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let run = StubRun {
            argv: read_nul_separated("argv"),
            environment: read_nul_separated("env"),
            output,
        };
        let _ = std::fs::remove_dir_all(&stub_dir);
        run
    }
}

impl StubRun {
    fn assert_password_only_in_environment(&self, form: &str) {
        assert!(!self.argv.is_empty(), "{form}: the stub psql ran");
        for arg in &self.argv {
            assert!(
                !arg.contains(PASSWORD) && FRAGMENTS.iter().all(|fragment| !arg.contains(fragment)),
                "{form}: the password is on the command line: {arg}"
            );
        }
        assert!(
            self.environment
                .iter()
                .any(|var| var.strip_prefix("PGPASSWORD=") == Some(PASSWORD)),
            "{form}: the password reaches psql through PGPASSWORD"
        );
        let text = combined(&self.output);
        assert!(
            !text.contains(PASSWORD) && FRAGMENTS.iter().all(|fragment| !text.contains(fragment)),
            "{form}: the output shows the password:\n{text}"
        );
    }
}

impl Drop for PasswordCluster {
    fn drop(&mut self) {
        let _ = self
            .as_cluster_owner(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
fn postgres_bindir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bindir = entry.path().join("bin");
            bindir.join("initdb").exists().then_some((version, bindir))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bindir)| bindir).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: this test starts its own \
             cluster with password authentication (scripts/bootstrap installs them)"
        )
    })
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .expect("stub can be made executable");
}

fn run_checked(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {what}: {error}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}",
        combined(&output)
    );
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
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
    assert!(
        output.status.success(),
        "{what} should succeed:\n{}",
        combined(output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!("{}_{nanos}", std::process::id())
}
