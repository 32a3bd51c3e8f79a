//! Benchmark-only operations, registered only when `GATEWAY_BENCH_OPS=1`.
//!
//! `bench.account_balance` is exactly the statement `pgbench -S` runs, so the same workload can
//! be measured straight against Postgres and through the gateway. Its table exists only after
//! `pgbench -i`, which is why startup verification skips this module's operations.

use callmeback_gateway_api::ops::bench as spec;

use super::{DEFAULT_STATEMENT_TIMEOUT_MS, Expect, Mode, OpDef};

/// Prefix shared by every benchmark operation (used to skip them in startup verification).
pub const PREFIX: &str = "bench.";

pub static OPS: &[OpDef] = &[OpDef {
    spec: &spec::ACCOUNT_BALANCE,
    sql: "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    mode: Mode::Read,
    expect: Expect::Any,
    statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
}];
