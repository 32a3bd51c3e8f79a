//! Structured logging: one JSON object per line on stderr (stdout is reserved for the
//! `db-gateway listening …` line that scripts parse).

use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("GATEWAY_LOG is not a valid tracing filter: {0}")]
    Filter(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Installs the global JSON subscriber with `filter` (e.g. `info,db_gateway=debug`).
pub fn init_tracing(filter: &str) -> Result<(), TelemetryError> {
    let filter =
        EnvFilter::try_new(filter).map_err(|error| TelemetryError::Filter(error.to_string()))?;
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)
}
