//! Operations the Worker runs on every authenticated request.
//!
//! The Worker verifies a session token's signature itself (no round trip), but revocation and
//! account state live here. Rather than a separate lookup, the Worker puts `auth.session_check` in
//! front of the request's own operations in one batch: a revoked token, a deactivated account or a
//! missing admin role aborts the whole batch (nothing else runs or commits) and costs no extra
//! round trip. The role comes from the database, never from the token alone.

use super::{DEFAULT_STATEMENT_TIMEOUT_MS, Expect, Mode, OpDef, Param, ParamType};

/// Operation name: the session is still valid (token not revoked, account active).
pub const SESSION_CHECK: &str = "auth.session_check";
/// Operation name: the session's user is an admin.
pub const REQUIRE_ADMIN: &str = "auth.require_admin";

pub static OPS: &[OpDef] = &[
    OpDef {
        name: SESSION_CHECK,
        sql: "SELECT u.id, u.email, u.role FROM users u \
              WHERE u.id = $1 AND u.is_active \
                AND NOT EXISTS (SELECT 1 FROM token_blacklist t WHERE t.token_id = $2 AND t.expires_at > now())",
        params: &[
            Param::required("user_id", ParamType::Text),
            Param::required("jti", ParamType::Text),
        ],
        mode: Mode::Read,
        expect: Expect::One {
            message: "session is no longer valid",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        name: REQUIRE_ADMIN,
        sql: "SELECT u.id FROM users u WHERE u.id = $1 AND u.is_active AND u.role = 'admin'",
        params: &[Param::required("user_id", ParamType::Text)],
        mode: Mode::Read,
        expect: Expect::One {
            message: "admin role required",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
];
