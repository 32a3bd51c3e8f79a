//! Runtime configuration, read once from the environment at startup.
//!
//! | Variable                      | Default          | Meaning |
//! |-------------------------------|------------------|---------|
//! | `DATABASE_URL`                | (required)       | Postgres connection string (`postgres://user@host:port/db` or `key=value` form). TLS is not used: Postgres is expected on the same host or a private network. |
//! | `GATEWAY_LISTEN`              | `127.0.0.1:7070` | Address of the signed API (`/v1/op`, `/v1/batch`). Port 0 picks a free port. |
//! | `GATEWAY_ADMIN_LISTEN`        | `127.0.0.1:7071` | Address of the unauthenticated admin listener (`/live`, `/ready`, `/metrics`); keep it on loopback. |
//! | `GATEWAY_KEYS_FILE`           | (required to serve) | JSON file of signing keys and scopes (see [`crate::keys`]). Read once at startup. |
//! | `GATEWAY_PUBLIC_URL`          | unset            | `scheme://authority` clients sign against when a TLS proxy sits in front (e.g. `https://gw.example.com`). Unset: `http://` + the request's `Host`. |
//! | `GATEWAY_MIGRATIONS_DIR`      | `migrations`     | Directory of `NNN_name.sql` files. |
//! | `GATEWAY_POOL_SIZE`           | `16`             | Maximum Postgres connections. |
//! | `GATEWAY_POOL_WAIT_MS`        | `250`            | Longest wait for a free connection (or pipelined read slot) before answering 503 `overloaded`. |
//! | `GATEWAY_PIPELINE_CONNECTIONS`| `2`              | Shared connections that pipeline single reads (see `crate::pipeline`), in addition to the pool; `0` sends every read through the pool. |
//! | `GATEWAY_PIPELINE_DEPTH`      | `64`             | Most reads in flight per shared connection; beyond that a read waits up to `GATEWAY_POOL_WAIT_MS`, then gets 503 `overloaded`. |
//! | `GATEWAY_BODY_LIMIT_BYTES`    | `1048576`        | Largest request body; larger gets 413 `payload_too_large`. |
//! | `GATEWAY_MAX_SKEW_SECS`       | `300`            | Allowed distance between a signature's `created` and the gateway clock; also how long nonces are remembered. Use the same value on every instance. |
//! | `GATEWAY_REPLAY_CACHE_ENTRIES`| `1000000`        | Bound on the per-process replay memory (about 25-40 bytes each); when full it forgets its oldest seconds (see `crate::nonce`). At least 16. |
//! | `GATEWAY_LOG`                 | `info`           | `tracing` filter, e.g. `info,db_gateway=debug`. |
//! | `GATEWAY_BENCH_OPS`           | `0`              | `1` registers `bench.account_balance` (the `pgbench -S` statement). |
//! | `GATEWAY_SHUTDOWN_GRACE_SECS` | `30`             | How long in-flight requests may run after SIGTERM/SIGINT. |
//! | `GATEWAY_WORKER_THREADS`      | CPU count        | Tokio worker threads (read by the binary before the runtime starts, see [`worker_threads_from_env`]). |
//!
//! Empty values count as unset. Errors name the variable but never echo its value (it could be
//! a connection string with a password).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Every setting the gateway reads; see the module docs for the environment variables.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: tokio_postgres::Config,
    pub api_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub keys_file: Option<PathBuf>,
    /// `scheme://authority` without a trailing slash.
    pub public_url: Option<String>,
    pub migrations_dir: PathBuf,
    pub pool_size: usize,
    pub pool_wait: Duration,
    /// Shared connections for pipelined single reads; 0 disables pipelining.
    pub pipeline_connections: usize,
    /// Most reads in flight per shared connection.
    pub pipeline_depth: usize,
    pub body_limit_bytes: usize,
    pub max_skew_secs: i64,
    /// Most `(key id, nonce)` pairs the process remembers (see `crate::nonce`).
    pub replay_cache_entries: usize,
    pub log_filter: String,
    pub bench_ops: bool,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {var} is invalid: {expected}")]
    Invalid {
        var: &'static str,
        expected: &'static str,
    },
}

impl Config {
    /// Defaults for everything but the database (and no keys file).
    pub fn with_defaults(database: tokio_postgres::Config) -> Self {
        Self {
            database,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
            keys_file: None,
            public_url: None,
            migrations_dir: PathBuf::from("migrations"),
            pool_size: 16,
            pool_wait: Duration::from_millis(250),
            pipeline_connections: 2,
            pipeline_depth: 64,
            body_limit_bytes: 1024 * 1024,
            max_skew_secs: 300,
            replay_cache_entries: DEFAULT_REPLAY_CACHE_ENTRIES,
            log_filter: "info".to_owned(),
            bench_ops: false,
            shutdown_grace: Duration::from_secs(30),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment in production, a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());

        let database = get("DATABASE_URL")
            .ok_or(ConfigError::Missing("DATABASE_URL"))?
            .parse::<tokio_postgres::Config>()
            .map_err(|_| ConfigError::Invalid {
                var: "DATABASE_URL",
                expected: "a postgres:// URL or key=value connection string",
            })?;
        let mut config = Self::with_defaults(database);

        if let Some(value) = get("GATEWAY_LISTEN") {
            config.api_listen =
                parse(&value, "GATEWAY_LISTEN", "host:port such as 127.0.0.1:7070")?;
        }
        if let Some(value) = get("GATEWAY_ADMIN_LISTEN") {
            config.admin_listen = parse(
                &value,
                "GATEWAY_ADMIN_LISTEN",
                "host:port such as 127.0.0.1:7071",
            )?;
        }
        config.keys_file = get("GATEWAY_KEYS_FILE").map(PathBuf::from);
        if let Some(value) = get("GATEWAY_PUBLIC_URL") {
            config.public_url = Some(parse_public_url(&value).ok_or(ConfigError::Invalid {
                var: "GATEWAY_PUBLIC_URL",
                expected: "http(s)://host[:port] with no path",
            })?);
        }
        if let Some(value) = get("GATEWAY_MIGRATIONS_DIR") {
            config.migrations_dir = PathBuf::from(value);
        }
        if let Some(value) = get("GATEWAY_POOL_SIZE") {
            config.pool_size = parse(&value, "GATEWAY_POOL_SIZE", "an integer from 1")?;
            if config.pool_size == 0 {
                return Err(ConfigError::Invalid {
                    var: "GATEWAY_POOL_SIZE",
                    expected: "an integer from 1",
                });
            }
        }
        if let Some(value) = get("GATEWAY_POOL_WAIT_MS") {
            config.pool_wait =
                Duration::from_millis(parse(&value, "GATEWAY_POOL_WAIT_MS", "milliseconds")?);
        }
        if let Some(value) = get("GATEWAY_PIPELINE_CONNECTIONS") {
            config.pipeline_connections = parse(
                &value,
                "GATEWAY_PIPELINE_CONNECTIONS",
                "an integer from 0 to 64",
            )?;
            if config.pipeline_connections > MAX_PIPELINE_CONNECTIONS {
                return Err(ConfigError::Invalid {
                    var: "GATEWAY_PIPELINE_CONNECTIONS",
                    expected: "an integer from 0 to 64",
                });
            }
        }
        if let Some(value) = get("GATEWAY_PIPELINE_DEPTH") {
            config.pipeline_depth = parse(&value, "GATEWAY_PIPELINE_DEPTH", "an integer from 1")?;
            if config.pipeline_depth == 0 {
                return Err(ConfigError::Invalid {
                    var: "GATEWAY_PIPELINE_DEPTH",
                    expected: "an integer from 1",
                });
            }
        }
        if let Some(value) = get("GATEWAY_BODY_LIMIT_BYTES") {
            config.body_limit_bytes = parse(&value, "GATEWAY_BODY_LIMIT_BYTES", "a byte count")?;
        }
        if let Some(value) = get("GATEWAY_MAX_SKEW_SECS") {
            config.max_skew_secs = parse(&value, "GATEWAY_MAX_SKEW_SECS", "seconds from 1")?;
            if config.max_skew_secs < 1 {
                return Err(ConfigError::Invalid {
                    var: "GATEWAY_MAX_SKEW_SECS",
                    expected: "seconds from 1",
                });
            }
        }
        if let Some(value) = get("GATEWAY_REPLAY_CACHE_ENTRIES") {
            const EXPECTED: &str = "an integer from 16";
            config.replay_cache_entries = parse(&value, "GATEWAY_REPLAY_CACHE_ENTRIES", EXPECTED)?;
            if config.replay_cache_entries < MIN_REPLAY_CACHE_ENTRIES {
                return Err(ConfigError::Invalid {
                    var: "GATEWAY_REPLAY_CACHE_ENTRIES",
                    expected: EXPECTED,
                });
            }
        }
        if let Some(value) = get("GATEWAY_LOG") {
            config.log_filter = value;
        }
        if let Some(value) = get("GATEWAY_BENCH_OPS") {
            config.bench_ops = parse_bool(&value).ok_or(ConfigError::Invalid {
                var: "GATEWAY_BENCH_OPS",
                expected: "1/0, true/false or yes/no",
            })?;
        }
        if let Some(value) = get("GATEWAY_SHUTDOWN_GRACE_SECS") {
            config.shutdown_grace =
                Duration::from_secs(parse(&value, "GATEWAY_SHUTDOWN_GRACE_SECS", "seconds")?);
        }
        Ok(config)
    }
}

/// More shared connections than this would defeat their purpose (few busy backends).
const MAX_PIPELINE_CONNECTIONS: usize = 64;
/// About 35 MB at most; the whole ±300 s window at up to ~3,300 requests per second, a shorter
/// one (older signatures refused for reads) above that.
const DEFAULT_REPLAY_CACHE_ENTRIES: usize = 1_000_000;
/// One per shard of the replay memory.
const MIN_REPLAY_CACHE_ENTRIES: usize = 16;

/// `GATEWAY_WORKER_THREADS`: how many tokio worker threads the binary starts, `None` for
/// tokio's default (one per CPU). It is read apart from [`Config`] because the runtime must
/// exist before anything else runs, including commands that need no database (`gen-key`).
///
/// Fewer threads than cores can help when the gateway shares a small machine with Postgres:
/// every extra worker is one more thread to wake and migrate between the same few cores.
pub fn worker_threads_from_env() -> Result<Option<usize>, ConfigError> {
    worker_threads_from_lookup(|name| std::env::var(name).ok())
}

fn worker_threads_from_lookup(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<usize>, ConfigError> {
    const VAR: &str = "GATEWAY_WORKER_THREADS";
    const EXPECTED: &str = "an integer from 1 to 1024";
    let Some(value) = lookup(VAR).filter(|value| !value.trim().is_empty()) else {
        return Ok(None);
    };
    let threads: usize = parse(&value, VAR, EXPECTED)?;
    if !(1..=1024).contains(&threads) {
        return Err(ConfigError::Invalid {
            var: VAR,
            expected: EXPECTED,
        });
    }
    Ok(Some(threads))
}

fn parse<T: std::str::FromStr>(
    value: &str,
    var: &'static str,
    expected: &'static str,
) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError::Invalid { var, expected })
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// `http(s)://authority`, tolerating one trailing slash; anything with a path is refused
/// because clients sign the full target URI and a path prefix would silently break them.
fn parse_public_url(value: &str) -> Option<String> {
    let value = value.trim().trim_end_matches('/');
    let authority = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))?;
    let valid = !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@'])
        && !authority.chars().any(char::is_whitespace);
    valid.then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_apply_when_only_the_database_is_set() {
        let config =
            config(&[("DATABASE_URL", "postgres://gw@127.0.0.1:5432/callmeback")]).unwrap();
        assert_eq!(config.api_listen.to_string(), "127.0.0.1:7070");
        assert_eq!(config.admin_listen.to_string(), "127.0.0.1:7071");
        assert_eq!(config.pool_size, 16);
        assert_eq!(config.pool_wait, Duration::from_millis(250));
        assert_eq!(config.pipeline_connections, 2);
        assert_eq!(config.pipeline_depth, 64);
        assert_eq!(config.body_limit_bytes, 1_048_576);
        assert_eq!(config.max_skew_secs, 300);
        assert_eq!(config.replay_cache_entries, 1_000_000);
        assert_eq!(config.migrations_dir, PathBuf::from("migrations"));
        assert!(!config.bench_ops);
        assert!(config.keys_file.is_none() && config.public_url.is_none());
    }

    #[test]
    fn every_variable_is_read() {
        let config = config(&[
            ("DATABASE_URL", "host=127.0.0.1 user=gw dbname=x"),
            ("GATEWAY_LISTEN", "127.0.0.1:0"),
            ("GATEWAY_ADMIN_LISTEN", "[::1]:9000"),
            ("GATEWAY_KEYS_FILE", "/etc/gw/keys.json"),
            ("GATEWAY_PUBLIC_URL", "https://gw.example.com/"),
            ("GATEWAY_MIGRATIONS_DIR", "/srv/migrations"),
            ("GATEWAY_POOL_SIZE", "4"),
            ("GATEWAY_POOL_WAIT_MS", "50"),
            ("GATEWAY_PIPELINE_CONNECTIONS", "0"),
            ("GATEWAY_PIPELINE_DEPTH", "8"),
            ("GATEWAY_BODY_LIMIT_BYTES", "1024"),
            ("GATEWAY_MAX_SKEW_SECS", "60"),
            ("GATEWAY_REPLAY_CACHE_ENTRIES", "5000"),
            ("GATEWAY_LOG", "debug"),
            ("GATEWAY_BENCH_OPS", "1"),
            ("GATEWAY_SHUTDOWN_GRACE_SECS", "5"),
        ])
        .unwrap();
        assert_eq!(config.api_listen.port(), 0);
        assert_eq!(config.admin_listen.to_string(), "[::1]:9000");
        assert_eq!(config.keys_file, Some(PathBuf::from("/etc/gw/keys.json")));
        assert_eq!(config.public_url.as_deref(), Some("https://gw.example.com"));
        assert_eq!(config.migrations_dir, PathBuf::from("/srv/migrations"));
        assert_eq!(config.pool_size, 4);
        assert_eq!(config.pool_wait, Duration::from_millis(50));
        assert_eq!(config.pipeline_connections, 0);
        assert_eq!(config.pipeline_depth, 8);
        assert_eq!(config.body_limit_bytes, 1024);
        assert_eq!(config.max_skew_secs, 60);
        assert_eq!(config.replay_cache_entries, 5000);
        assert_eq!(config.log_filter, "debug");
        assert!(config.bench_ops);
        assert_eq!(config.shutdown_grace, Duration::from_secs(5));
    }

    #[test]
    fn errors_name_the_variable_without_its_value() {
        assert_eq!(
            config(&[]).unwrap_err(),
            ConfigError::Missing("DATABASE_URL")
        );
        let error = config(&[("DATABASE_URL", "postgres://u:hunter2@h:notaport/db")]).unwrap_err();
        assert!(
            error.to_string().contains("DATABASE_URL") && !error.to_string().contains("hunter2")
        );
        for (var, value) in [
            ("GATEWAY_POOL_SIZE", "0"),
            ("GATEWAY_POOL_WAIT_MS", "soon"),
            ("GATEWAY_PUBLIC_URL", "https://gw.example.com/prefix"),
            ("GATEWAY_PUBLIC_URL", "gw.example.com"),
            ("GATEWAY_BENCH_OPS", "maybe"),
            ("GATEWAY_LISTEN", "localhost"),
            ("GATEWAY_MAX_SKEW_SECS", "0"),
            ("GATEWAY_PIPELINE_CONNECTIONS", "65"),
            ("GATEWAY_PIPELINE_CONNECTIONS", "-1"),
            ("GATEWAY_PIPELINE_DEPTH", "0"),
            ("GATEWAY_REPLAY_CACHE_ENTRIES", "15"),
            ("GATEWAY_REPLAY_CACHE_ENTRIES", "many"),
        ] {
            let error = config(&[("DATABASE_URL", "postgres://h/db"), (var, value)]).unwrap_err();
            assert!(
                matches!(error, ConfigError::Invalid { var: v, .. } if v == var),
                "{var}={value}"
            );
        }
    }

    #[test]
    fn worker_threads_default_to_tokio_and_are_bounded() {
        let lookup = |value: &'static str| {
            move |name: &str| (name == "GATEWAY_WORKER_THREADS").then(|| value.to_owned())
        };
        assert_eq!(worker_threads_from_lookup(|_| None), Ok(None));
        assert_eq!(worker_threads_from_lookup(lookup(" ")), Ok(None));
        assert_eq!(worker_threads_from_lookup(lookup("1")), Ok(Some(1)));
        for bad in ["0", "1025", "two"] {
            assert!(
                matches!(
                    worker_threads_from_lookup(lookup(bad)),
                    Err(ConfigError::Invalid {
                        var: "GATEWAY_WORKER_THREADS",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
