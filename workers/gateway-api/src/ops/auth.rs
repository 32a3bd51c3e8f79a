//! Operations the Worker runs on every authenticated request.
//!
//! The Worker verifies a session token's signature itself; revocation, account state and the
//! admin role live in the database. The Worker puts [`SESSION_CHECK`] (and for admin routes
//! [`REQUIRE_ADMIN`]) in front of the request's own operations in one batch, so a revoked token
//! aborts the whole batch at no extra round trip.

use super::{OpSpec, ParamSpec, ParamType};

/// The session is still valid (token not revoked, account active).
pub static SESSION_CHECK: OpSpec = OpSpec::new(
    "auth.session_check",
    &[
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("jti", ParamType::Text),
    ],
);

/// The session's user is an admin.
pub static REQUIRE_ADMIN: OpSpec = OpSpec::new(
    "auth.require_admin",
    &[ParamSpec::required("user_id", ParamType::Text)],
);
