//! `callmeback-sim`: every provider simulator on one local port, for `scripts/dev` and benchmarks.
//!
//! Prints `callmeback-sim listening http://127.0.0.1:PORT` on stdout once it accepts connections;
//! logs go to stderr. Stops on Ctrl-C or SIGTERM.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use callmeback_simulators::{SimConfig, Simulators};

const HELP: &str = "\
callmeback-sim: local stand-ins for Twilio, Deepgram, an OpenAI-compatible LLM and ElevenLabs

USAGE:
    callmeback-sim [OPTIONS]

Every option can also be given as an environment variable (flags win over the environment,
which wins over --config, which wins over the defaults).

OPTIONS:
    --config FILE              CALLMEBACK_SIM_CONFIG             JSON SimConfig with any knobs
                                                                 (see the crate README)
    --bind HOST:PORT           CALLMEBACK_SIM_BIND               default 127.0.0.1:8790
    --port PORT                CALLMEBACK_SIM_PORT               port on 127.0.0.1 (0 = any free)
    --twilio-account-sid SID   CALLMEBACK_SIM_TWILIO_ACCOUNT_SID default AC00000000000000000000000000000000
    --twilio-auth-token TOKEN  CALLMEBACK_SIM_TWILIO_AUTH_TOKEN  default sim-auth-token
    --deepgram-key KEY         CALLMEBACK_SIM_DEEPGRAM_KEY       default sim-deepgram-key
    --llm-key KEY              CALLMEBACK_SIM_LLM_KEY            default sim-llm-key
    --elevenlabs-key KEY       CALLMEBACK_SIM_ELEVENLABS_KEY     default sim-elevenlabs-key
    -h, --help                 this text

The control API (/sim/...) has no authentication: keep the default loopback bind.
Logging: RUST_LOG (default info), to stderr.
";

/// Option name, environment variable.
const OPTIONS: [(&str, &str); 8] = [
    ("--config", "CALLMEBACK_SIM_CONFIG"),
    ("--bind", "CALLMEBACK_SIM_BIND"),
    ("--port", "CALLMEBACK_SIM_PORT"),
    ("--twilio-account-sid", "CALLMEBACK_SIM_TWILIO_ACCOUNT_SID"),
    ("--twilio-auth-token", "CALLMEBACK_SIM_TWILIO_AUTH_TOKEN"),
    ("--deepgram-key", "CALLMEBACK_SIM_DEEPGRAM_KEY"),
    ("--llm-key", "CALLMEBACK_SIM_LLM_KEY"),
    ("--elevenlabs-key", "CALLMEBACK_SIM_ELEVENLABS_KEY"),
];

fn settings() -> anyhow::Result<Option<std::collections::HashMap<&'static str, String>>> {
    let mut values = std::collections::HashMap::new();
    for (flag, env) in OPTIONS {
        if let Ok(value) = std::env::var(env)
            && !value.is_empty()
        {
            values.insert(flag, value);
        }
    }
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        let Some((flag, _)) = OPTIONS.iter().find(|(flag, _)| *flag == name) else {
            bail!("unknown option {arg:?} (see --help)");
        };
        let value = match inline {
            Some(value) => value,
            None => args
                .next()
                .with_context(|| format!("{flag} needs a value"))?,
        };
        values.insert(flag, value);
    }
    Ok(Some(values))
}

fn config() -> anyhow::Result<Option<SimConfig>> {
    let Some(values) = settings()? else {
        return Ok(None);
    };
    let mut config = match values.get("--config") {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {path} as a SimConfig"))?
        }
        None => SimConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8790)),
            ..SimConfig::default()
        },
    };
    if let Some(bind) = values.get("--bind") {
        config.bind = bind
            .parse()
            .with_context(|| format!("--bind {bind:?} is not HOST:PORT"))?;
    }
    if let Some(port) = values.get("--port") {
        let port: u16 = port
            .parse()
            .with_context(|| format!("--port {port:?} is not a port"))?;
        config.bind.set_port(port);
    }
    if let Some(v) = values.get("--twilio-account-sid") {
        config.twilio.account_sid.clone_from(v);
    }
    if let Some(v) = values.get("--twilio-auth-token") {
        config.twilio.auth_token.clone_from(v);
    }
    if let Some(v) = values.get("--deepgram-key") {
        config.stt.api_key.clone_from(v);
    }
    if let Some(v) = values.get("--llm-key") {
        config.llm.api_key.clone_from(v);
    }
    if let Some(v) = values.get("--elevenlabs-key") {
        config.tts.api_key.clone_from(v);
    }
    Ok(Some(config))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(config) = config()? else {
        print!("{HELP}");
        return Ok(());
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let sims = Simulators::start(config)
        .await
        .context("starting the simulators")?;
    println!("callmeback-sim listening {}", sims.base_url());
    std::io::stdout().flush().context("writing to stdout")?;
    tracing::info!(base_url = %sims.base_url(), "Simulators ready.");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    tracing::info!("Stopping.");
    sims.shutdown();
    Ok(())
}
