//! Operations about the gateway and its database rather than any business domain.
//!
//! `system.ping` is the one operation every valid key may call whatever its scopes: it is how a
//! caller checks that its key, its clock and the path to Postgres all work.

use callmeback_gateway_api::ops::system as spec;

use super::{DEFAULT_STATEMENT_TIMEOUT_MS, Expect, Mode, OpDef};

pub static OPS: &[OpDef] = &[
    OpDef {
        spec: &spec::PING,
        sql: "SELECT true AS ok, now() AS db_time, current_setting('server_version') AS server_version",
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::SCHEMA_VERSION,
        sql: "SELECT version, name, applied_at FROM schema_migrations ORDER BY version DESC LIMIT 1",
        mode: Mode::Read,
        expect: Expect::One {
            message: "no migration has been applied",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
];
