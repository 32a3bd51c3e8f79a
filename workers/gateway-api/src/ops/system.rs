//! Operations about the gateway and its database rather than any business domain.
//!
//! `system.ping` is the one operation every valid key may call whatever its scopes: it is how a
//! caller checks that its key, its clock and the path to Postgres all work.

use super::OpSpec;

/// Liveness through the database: `ok`, the database time and the server version.
pub static PING: OpSpec = OpSpec::new("system.ping", &[]);

/// The newest applied migration (`precondition_failed` when none is).
pub static SCHEMA_VERSION: OpSpec = OpSpec::new("system.schema_version", &[]);
