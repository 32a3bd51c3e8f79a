//! Integration tests against a real Postgres (`TEST_DATABASE_URL`, see `helpers.rs`).
//!
//! One test binary (faster to build than one per file), one module per area.

mod accounts_ops;
mod admin;
mod auth;
mod batch;
mod billing_ops;
mod binary;
mod calls_ops;
mod helpers;
mod lifecycle;
mod migrations;
mod ops;
mod personas_ops;
mod pipeline;
mod replay;
mod schedules_ops;
