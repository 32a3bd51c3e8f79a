//! Operations about the gateway and its database rather than any business domain.
//!
//! `system.ping` is the one operation every valid key may call whatever its scopes: it is how a
//! caller checks that its key, its clock and the path to Postgres all work.

use super::{DEFAULT_STATEMENT_TIMEOUT_MS, Expect, Mode, OpDef};

/// Name of the liveness-through-the-database operation.
pub const PING: &str = "system.ping";
/// Name of the "which migration is applied" operation.
pub const SCHEMA_VERSION: &str = "system.schema_version";

pub static OPS: &[OpDef] = &[
    OpDef {
        name: PING,
        sql: "SELECT true AS ok, now() AS db_time, current_setting('server_version') AS server_version",
        params: &[],
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        name: SCHEMA_VERSION,
        sql: "SELECT version, name, applied_at FROM schema_migrations ORDER BY version DESC LIMIT 1",
        params: &[],
        mode: Mode::Read,
        expect: Expect::One {
            message: "no migration has been applied",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
];
