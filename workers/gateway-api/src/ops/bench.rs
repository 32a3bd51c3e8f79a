//! Benchmark-only operations, served only when the gateway runs with `GATEWAY_BENCH_OPS=1`.
//!
//! They are not part of [`ALL`](super::ALL): production never serves them. `bench.account_balance`
//! is exactly the statement `pgbench -S` runs (its table exists only after `pgbench -i`).

use super::{OpSpec, ParamSpec, ParamType};

/// The `pgbench -S` statement: one account balance by id.
pub static ACCOUNT_BALANCE: OpSpec = OpSpec::new(
    "bench.account_balance",
    &[ParamSpec::required("aid", ParamType::Int4)],
);

/// Every benchmark operation.
pub static ALL: &[&OpSpec] = &[&ACCOUNT_BALANCE];
