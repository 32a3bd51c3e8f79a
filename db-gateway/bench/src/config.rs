//! The benchmark's settings, from flags or environment variables.
//!
//! Every option is a `--name value` flag and, for scripts and CI, an environment variable
//! `BENCH_NAME` (upper-cased, dashes to underscores); the flag wins. Only loopback addresses are
//! accepted: the benchmark compares three local paths on one machine and must never be pointed
//! at a shared database or a deployed gateway by accident.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};

use crate::targets::PathKind;

/// One recognised option: its flag name (without `--`), a default, and its help text.
struct OptionSpec {
    name: &'static str,
    default: Option<&'static str>,
    help: &'static str,
}

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "direct-url",
        default: None,
        help: "Postgres URL for the direct path, e.g. postgres://postgres@127.0.0.1:5432/bench",
    },
    OptionSpec {
        name: "pgbouncer-url",
        default: None,
        help: "Postgres URL of PgBouncer (transaction pooling)",
    },
    OptionSpec {
        name: "gateway-url",
        default: None,
        help: "db-gateway API base URL, e.g. http://127.0.0.1:7070",
    },
    OptionSpec {
        name: "gateway-keys-file",
        default: None,
        help: "the gateway's keys file (JSON); the benchmark signs with one of its keys",
    },
    OptionSpec {
        name: "gateway-key-id",
        default: None,
        help: "which key of the keys file to sign with (default: the first)",
    },
    OptionSpec {
        name: "paths",
        default: Some("direct,pgbouncer,gateway"),
        help: "comma-separated paths to measure",
    },
    OptionSpec {
        name: "clients",
        default: Some("1,16"),
        help: "comma-separated concurrent client counts, each measured per path",
    },
    OptionSpec {
        name: "duration-secs",
        default: Some("10"),
        help: "measured seconds per run",
    },
    OptionSpec {
        name: "warmup-secs",
        default: Some("2"),
        help: "seconds of load before measuring, per run",
    },
    OptionSpec {
        name: "scale",
        default: None,
        help: "pgbench scale (aid in 1..=scale*100000); read from pgbench_branches if omitted",
    },
    OptionSpec {
        name: "pgbouncer-pid",
        default: None,
        help: "PgBouncer's process id, to report its CPU time per request (Linux)",
    },
    OptionSpec {
        name: "gateway-pid",
        default: None,
        help: "db-gateway's process id, to report its CPU time per request (Linux)",
    },
    OptionSpec {
        name: "threads",
        default: None,
        help: "tokio worker threads of the load generator (default: CPU count)",
    },
    OptionSpec {
        name: "max-requests-per-client",
        default: Some("5000000"),
        help: "hard cap on requests one client sends in a run, warm-up included",
    },
    OptionSpec {
        name: "soak",
        default: None,
        help: "soak mode: instead of the comparison, run the gateway alone for this many seconds \
               at full rate (the largest --clients value) with a mix of signed reads and write \
               batches, sampling its RSS (needs --gateway-pid); e.g. 600",
    },
    OptionSpec {
        name: "soak-write-percent",
        default: Some("10"),
        help: "soak mode: share of requests that are write batches (the rest are reads), 0-100",
    },
    OptionSpec {
        name: "gateway-admin-url",
        default: None,
        help: "db-gateway admin base URL (loopback), read for replay-memory metrics after a soak",
    },
    OptionSpec {
        name: "request-timeout-ms",
        default: Some("5000"),
        help: "a request slower than this counts as an error and its connection is replaced",
    },
];

/// Longest run the benchmark accepts, so a typo cannot keep a machine busy for hours.
const MAX_SECONDS: f64 = 3600.0;
/// Most concurrent clients: each is a connection, and the test cluster allows 200.
const MAX_CLIENTS: usize = 150;

/// What the gateway path needs to sign and send requests.
#[derive(Debug, Clone)]
pub(crate) struct GatewayEndpoint {
    pub(crate) addr: SocketAddr,
    /// `host:port` exactly as given: sent as `Host` and used in the signed `@target-uri`.
    pub(crate) authority: String,
    pub(crate) keys_file: PathBuf,
    pub(crate) key_id: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) direct: Option<tokio_postgres::Config>,
    pub(crate) pgbouncer: Option<tokio_postgres::Config>,
    pub(crate) gateway: Option<GatewayEndpoint>,
    pub(crate) paths: Vec<PathKind>,
    pub(crate) clients: Vec<usize>,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) scale: Option<u32>,
    pub(crate) pgbouncer_pid: Option<u32>,
    pub(crate) gateway_pid: Option<u32>,
    pub(crate) threads: Option<usize>,
    pub(crate) max_requests_per_client: u64,
    pub(crate) request_timeout: Duration,
    /// Soak mode and its length (see `crate::soak`).
    pub(crate) soak: Option<Duration>,
    pub(crate) soak_write_percent: u32,
    pub(crate) gateway_admin: Option<SocketAddr>,
}

/// Either settings to run with, or a request for the usage text.
#[derive(Debug)]
pub(crate) enum Invocation {
    Run(Box<Config>),
    Help,
}

pub(crate) fn usage() -> String {
    let mut text = String::from(
        "db-gateway-bench: one point lookup direct to Postgres, through PgBouncer and through \
         db-gateway\n\nUsage: db-gateway-bench [--option value]...\n\nOptions (env var in \
         brackets; flags win):\n",
    );
    for option in OPTIONS {
        let default = option
            .default
            .map(|value| format!(" (default {value})"))
            .unwrap_or_default();
        text.push_str(&format!(
            "  --{:<26} [{}] {}{default}\n",
            option.name,
            env_name(option.name),
            option.help
        ));
    }
    text
}

fn env_name(flag: &str) -> String {
    format!("BENCH_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

impl Invocation {
    /// Parses flags (without the program name), falling back to `env` for options not given.
    pub(crate) fn parse(
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let mut given: HashMap<&'static str, String> = HashMap::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                return Ok(Self::Help);
            }
            let (name, inline_value) = match arg.strip_prefix("--") {
                Some(rest) => match rest.split_once('=') {
                    Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                    None => (rest.to_owned(), None),
                },
                None => bail!("unexpected argument `{arg}` (see --help)"),
            };
            let spec = OPTIONS
                .iter()
                .find(|option| option.name == name)
                .ok_or_else(|| anyhow!("unknown option `--{name}` (see --help)"))?;
            let value = match inline_value {
                Some(value) => value,
                None => args
                    .next()
                    .ok_or_else(|| anyhow!("option `--{name}` needs a value"))?,
            };
            given.insert(spec.name, value);
        }
        let lookup = |name: &'static str| -> Option<String> {
            given
                .get(name)
                .cloned()
                .or_else(|| env(&env_name(name)).filter(|value| !value.is_empty()))
                .or_else(|| {
                    OPTIONS
                        .iter()
                        .find(|option| option.name == name)
                        .and_then(|option| option.default.map(str::to_owned))
                })
        };
        Config::from_lookup(lookup).map(|config| Self::Run(Box::new(config)))
    }
}

impl Config {
    fn from_lookup(lookup: impl Fn(&'static str) -> Option<String>) -> anyhow::Result<Self> {
        let paths = parse_paths(&lookup("paths").unwrap_or_default())?;
        let clients = parse_clients(&lookup("clients").unwrap_or_default())?;
        let duration = parse_seconds(
            "duration-secs",
            &lookup("duration-secs").unwrap_or_default(),
        )?;
        if duration.is_zero() {
            bail!("--duration-secs must be greater than 0");
        }
        let warmup = parse_seconds("warmup-secs", &lookup("warmup-secs").unwrap_or_default())?;

        let direct = lookup("direct-url")
            .map(|url| parse_postgres_url("direct-url", &url))
            .transpose()?;
        let pgbouncer = lookup("pgbouncer-url")
            .map(|url| parse_postgres_url("pgbouncer-url", &url))
            .transpose()?;
        let gateway = match lookup("gateway-url") {
            Some(url) => {
                let (addr, authority) = parse_gateway_url(&url)?;
                let keys_file = lookup("gateway-keys-file")
                    .ok_or_else(|| anyhow!("--gateway-url needs --gateway-keys-file"))?;
                Some(GatewayEndpoint {
                    addr,
                    authority,
                    keys_file: PathBuf::from(keys_file),
                    key_id: lookup("gateway-key-id"),
                })
            }
            None => None,
        };
        for path in &paths {
            let configured = match path {
                PathKind::Direct => direct.is_some(),
                PathKind::PgBouncer => pgbouncer.is_some(),
                PathKind::Gateway => gateway.is_some(),
            };
            if !configured {
                bail!(
                    "path `{}` is selected but --{} is not set",
                    path.name(),
                    match path {
                        PathKind::Direct => "direct-url",
                        PathKind::PgBouncer => "pgbouncer-url",
                        PathKind::Gateway => "gateway-url",
                    }
                );
            }
        }

        let scale = lookup("scale")
            .map(|value| parse_positive::<u32>("scale", &value))
            .transpose()?;
        if let Some(scale) = scale
            && u64::from(scale) * 100_000 > i32::MAX as u64
        {
            bail!("--scale {scale} is too large: aid is an int4");
        }
        let pgbouncer_pid = lookup("pgbouncer-pid")
            .map(|value| parse_positive::<u32>("pgbouncer-pid", &value))
            .transpose()?;
        let gateway_pid = lookup("gateway-pid")
            .map(|value| parse_positive::<u32>("gateway-pid", &value))
            .transpose()?;
        let threads = lookup("threads")
            .map(|value| parse_positive::<usize>("threads", &value))
            .transpose()?;
        let max_requests_per_client = parse_positive::<u64>(
            "max-requests-per-client",
            &lookup("max-requests-per-client").unwrap_or_default(),
        )?;
        let request_timeout = Duration::from_millis(parse_positive::<u64>(
            "request-timeout-ms",
            &lookup("request-timeout-ms").unwrap_or_default(),
        )?);

        let soak = lookup("soak")
            .map(|value| parse_seconds("soak", &value))
            .transpose()?;
        if let Some(soak) = soak {
            if soak.is_zero() {
                bail!("--soak must be greater than 0");
            }
            if gateway.is_none() || gateway_pid.is_none() {
                bail!("--soak needs --gateway-url, --gateway-keys-file and --gateway-pid");
            }
        }
        let soak_write_percent = lookup("soak-write-percent")
            .unwrap_or_default()
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|percent| *percent <= 100)
            .ok_or_else(|| anyhow!("--soak-write-percent must be an integer from 0 to 100"))?;
        let gateway_admin = lookup("gateway-admin-url")
            .map(|url| parse_gateway_url(&url).map(|(addr, _)| addr))
            .transpose()
            .context("--gateway-admin-url")?;

        Ok(Self {
            soak,
            soak_write_percent,
            gateway_admin,
            direct,
            pgbouncer,
            gateway,
            paths,
            clients,
            duration,
            warmup,
            scale,
            pgbouncer_pid,
            gateway_pid,
            threads,
            max_requests_per_client,
            request_timeout,
        })
    }
}

fn parse_paths(value: &str) -> anyhow::Result<Vec<PathKind>> {
    let mut paths = Vec::new();
    for name in value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        let path = PathKind::ALL
            .into_iter()
            .find(|path| path.name() == name)
            .ok_or_else(|| anyhow!("unknown path `{name}` (use direct, pgbouncer, gateway)"))?;
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        bail!("--paths selects no path");
    }
    Ok(paths)
}

fn parse_clients(value: &str) -> anyhow::Result<Vec<usize>> {
    let mut clients = Vec::new();
    for item in value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let count = parse_positive::<usize>("clients", item)?;
        if count > MAX_CLIENTS {
            bail!("--clients {count} is over the limit of {MAX_CLIENTS}");
        }
        if !clients.contains(&count) {
            clients.push(count);
        }
    }
    if clients.is_empty() {
        bail!("--clients selects no client count");
    }
    Ok(clients)
}

fn parse_seconds(name: &str, value: &str) -> anyhow::Result<Duration> {
    let seconds: f64 = value
        .trim()
        .parse()
        .with_context(|| format!("--{name} must be a number of seconds, got `{value}`"))?;
    if !seconds.is_finite() || !(0.0..=MAX_SECONDS).contains(&seconds) {
        bail!("--{name} must be between 0 and {MAX_SECONDS} seconds, got `{value}`");
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_positive<T>(name: &str, value: &str) -> anyhow::Result<T>
where
    T: std::str::FromStr + PartialOrd + Default,
{
    let parsed: T = value
        .trim()
        .parse()
        .map_err(|_| anyhow!("--{name} must be a positive integer, got `{value}`"))?;
    if parsed <= T::default() {
        bail!("--{name} must be a positive integer, got `{value}`");
    }
    Ok(parsed)
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parses a Postgres URL and insists on TCP to loopback, so the paths are measured alike.
fn parse_postgres_url(name: &str, url: &str) -> anyhow::Result<tokio_postgres::Config> {
    // The URL may carry a password; it must not be echoed back in an error.
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|_| anyhow!("--{name} is not a valid Postgres URL"))?;
    let hosts = config.get_hosts();
    if hosts.is_empty() {
        bail!("--{name} names no host");
    }
    for host in hosts {
        match host {
            tokio_postgres::config::Host::Tcp(host) if is_loopback_host(host) => {}
            _ => bail!("--{name} must point at a loopback TCP address (127.0.0.1, ::1, localhost)"),
        }
    }
    Ok(config)
}

/// Parses `http://<loopback ip>:<port>` (an optional trailing `/`, nothing else).
fn parse_gateway_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let authority = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--gateway-url must start with http:// (got `{url}`)"))?
        .trim_end_matches('/');
    let addr: SocketAddr = authority.parse().map_err(|_| {
        anyhow!("--gateway-url must be http://<ip>:<port> without a path (got `{url}`)")
    })?;
    if !addr.ip().is_loopback() {
        bail!("--gateway-url must be a loopback address (got `{url}`)");
    }
    Ok((addr, authority.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Invocation> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        Invocation::parse(args.iter().map(|arg| (*arg).to_owned()), |key| {
            env.get(key).cloned()
        })
    }

    fn run_config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match parse(args, env).expect("valid settings") {
            Invocation::Run(config) => *config,
            Invocation::Help => panic!("expected settings, got --help"),
        }
    }

    #[test]
    fn defaults_and_flags_over_env() {
        let config = run_config(
            &[
                "--direct-url",
                "postgres://postgres@127.0.0.1:5432/bench",
                "--duration-secs=3",
            ],
            &[
                ("BENCH_PATHS", "direct"),
                ("BENCH_DURATION_SECS", "99"),
                ("BENCH_WARMUP_SECS", "0.5"),
            ],
        );
        assert_eq!(config.paths, vec![PathKind::Direct]);
        assert_eq!(config.clients, vec![1, 16]);
        assert_eq!(config.duration, Duration::from_secs(3));
        assert_eq!(config.warmup, Duration::from_millis(500));
        assert_eq!(config.request_timeout, Duration::from_secs(5));
        assert!(config.scale.is_none());
        assert!(config.soak.is_none());
        assert_eq!(config.soak_write_percent, 10);
    }

    #[test]
    fn selected_paths_need_their_endpoints() {
        let error = parse(&["--paths", "direct,gateway"], &[]).expect_err("no URLs");
        assert!(error.to_string().contains("direct-url"), "{error}");
        let error = parse(
            &[
                "--paths",
                "gateway",
                "--gateway-url",
                "http://127.0.0.1:7070",
            ],
            &[],
        )
        .expect_err("no keys file");
        assert!(error.to_string().contains("keys-file"), "{error}");
    }

    #[test]
    fn only_loopback_addresses_are_accepted() {
        assert!(parse_postgres_url("direct-url", "postgres://u@127.0.0.1:5432/db").is_ok());
        assert!(parse_postgres_url("direct-url", "postgres://u@localhost/db").is_ok());
        assert!(parse_postgres_url("direct-url", "postgres://u@[::1]:5432/db").is_ok());
        assert!(parse_postgres_url("direct-url", "postgres://u@10.0.0.5:5432/db").is_err());
        assert!(parse_postgres_url("direct-url", "postgres://u@db.example.com/db").is_err());
        assert!(parse_postgres_url("direct-url", "host=/tmp user=u").is_err());

        let (addr, authority) = parse_gateway_url("http://127.0.0.1:7070/").expect("loopback");
        assert_eq!(addr.port(), 7070);
        assert_eq!(authority, "127.0.0.1:7070");
        assert!(parse_gateway_url("http://192.168.1.2:7070").is_err());
        assert!(parse_gateway_url("https://127.0.0.1:7070").is_err());
        assert!(parse_gateway_url("http://127.0.0.1:7070/v1").is_err());
    }

    /// Env settings under which every path is configured, so each case below fails for its
    /// own reason only.
    const ALL_PATHS_ENV: &[(&str, &str)] = &[
        (
            "BENCH_DIRECT_URL",
            "postgres://postgres@127.0.0.1:5432/bench",
        ),
        (
            "BENCH_PGBOUNCER_URL",
            "postgres://postgres@127.0.0.1:6432/bench",
        ),
        ("BENCH_GATEWAY_URL", "http://127.0.0.1:7070"),
        ("BENCH_GATEWAY_KEYS_FILE", "/tmp/keys.json"),
    ];

    #[test]
    fn rejects_bad_numbers_and_lists() {
        assert!(parse(&[], ALL_PATHS_ENV).is_ok());
        for (args, mentions) in [
            (&["--duration-secs", "0"][..], "duration-secs"),
            (&["--warmup-secs", "-1"], "warmup-secs"),
            (&["--warmup-secs", "NaN"], "warmup-secs"),
            (&["--clients", "1,0"], "clients"),
            (&["--clients", "151"], "clients"),
            (&["--paths", "direct,mysql"], "mysql"),
            (&["--scale", "30000"], "scale"),
            (&["--threads", "0"], "threads"),
            (&["--gateway-pid", "x"], "gateway-pid"),
            (&["--bogus", "1"], "bogus"),
            (&["--soak", "60"], "gateway-pid"),
            (&["--soak", "0", "--gateway-pid", "7"], "soak"),
            (&["--soak-write-percent", "101"], "soak-write-percent"),
            (&["--clients"], "clients"),
            (&["positional"], "positional"),
        ] {
            let error = parse(args, ALL_PATHS_ENV).expect_err("invalid settings");
            assert!(error.to_string().contains(mentions), "{args:?}: {error}");
        }
        assert!(matches!(parse(&["--help"], &[]), Ok(Invocation::Help)));
    }

    #[test]
    fn soak_mode_needs_the_gateway_and_its_pid() {
        let config = run_config(&["--soak", "600", "--gateway-pid", "42"], ALL_PATHS_ENV);
        assert_eq!(config.soak, Some(Duration::from_secs(600)));
        assert_eq!(config.gateway_pid, Some(42));
        let config = run_config(
            &[
                "--soak=5",
                "--gateway-pid=42",
                "--soak-write-percent=0",
                "--gateway-admin-url=http://127.0.0.1:7071",
            ],
            ALL_PATHS_ENV,
        );
        assert_eq!(config.soak_write_percent, 0);
        assert_eq!(config.gateway_admin.map(|addr| addr.port()), Some(7071));
        assert!(
            parse(
                &["--gateway-admin-url", "http://10.0.0.1:7071"],
                ALL_PATHS_ENV
            )
            .is_err()
        );
    }

    #[test]
    fn lists_are_deduplicated_in_order() {
        assert_eq!(parse_clients("16, 1,16").expect("valid"), vec![16, 1]);
        assert_eq!(
            parse_paths("gateway,direct,gateway").expect("valid"),
            vec![PathKind::Gateway, PathKind::Direct]
        );
    }
}
