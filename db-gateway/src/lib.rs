//! `db-gateway`: the only path from the Cloudflare Workers to Postgres.
//!
//! Workers send signed HTTP requests naming an operation from a fixed registry; the gateway
//! verifies the signature, checks the key's scopes, binds typed parameters to a prepared
//! statement and answers JSON. No SQL ever crosses the wire.
//!
//! Module map:
//! - [`config`]: environment → [`Config`].
//! - [`keys`]: the keys file, key rotation and scopes.
//! - [`replay`]: replay protection (its design), with the database claim and cleanup.
//! - [`nonce`]: the per-process replay memory.
//! - [`statement`]: what one operation is ([`statement::OpDef`]), how its parameters bind and its
//!   result columns encode; the leaf below `db` and `ops`.
//! - [`ops`]: the operation registry (SQL for every operation of
//!   `callmeback_gateway_api::ops::ALL`) and the procedures.
//! - [`migrate`]: the schema migrator.
//! - [`db`]: pool construction and running operations (single and batch).
//! - [`pipeline`]: single reads pipelined on a few shared connections.
//! - `http`: the API and admin routers, auth extractor and access logging.
//! - [`error`]: the API error type and its stable codes.
//! - [`metrics`], [`telemetry`]: Prometheus metrics and JSON logs.
//! - [`startup`]: [`Application`], which binds and serves.
//!
//! `main.rs` only parses the command line and calls into this library.

pub mod config;
pub mod db;
pub mod error;
mod http;
pub mod keys;
pub mod metrics;
pub mod migrate;
pub mod nonce;
pub mod ops;
pub mod pipeline;
pub mod replay;
pub mod startup;
pub mod statement;
pub mod telemetry;

pub use config::Config;
pub use error::ApiError;
pub use startup::{Application, StartupError, migrate_database};

/// Most operations one `/v1/batch` request may hold.
pub const MAX_BATCH_OPS: usize = 50;
