//! Operations the Worker runs on every authenticated request.
//!
//! The Worker verifies a session token's signature itself (no round trip), but revocation and
//! account state live here. Rather than a separate lookup, the Worker puts `auth.session_check` in
//! front of the request's own operations in one batch: a revoked token, a deactivated account or a
//! missing admin role aborts the whole batch (nothing else runs or commits) and costs no extra
//! round trip. The role comes from the database, never from the token alone.

use callmeback_gateway_api::ops::auth as spec;

use super::{DEFAULT_STATEMENT_TIMEOUT_MS, Expect, Mode, OpDef};

pub static OPS: &[OpDef] = &[
    OpDef {
        spec: &spec::SESSION_CHECK,
        // Any blacklist row revokes, whatever its `expires_at`: the row is the revocation, and
        // only the purge (`maintenance.purge_blacklist`, an hour past `expires_at`, which the
        // Worker sets to the token's `exp` plus the verifier's leeway) removes it. Comparing
        // with `now()` here would end a revocation early by any skew between this clock and the
        // verifier's.
        sql: "SELECT u.id, u.email, u.role FROM users u \
              WHERE u.id = $1 AND u.is_active \
                AND NOT EXISTS (SELECT 1 FROM token_blacklist t WHERE t.token_id = $2)",
        mode: Mode::Read,
        expect: Expect::One {
            message: "session is no longer valid",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::REQUIRE_ADMIN,
        sql: "SELECT u.id FROM users u WHERE u.id = $1 AND u.is_active AND u.role = 'admin'",
        mode: Mode::Read,
        expect: Expect::One {
            message: "admin role required",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
];
