//! Accounts: registration, login, the caller's profile, logout and role changes, with their audit
//! trail.
//!
//! Registration is one batch: [`CREATE_USER`], [`CREATE_CREDITS`], [`CREATE_BUDGET_SETTINGS`] and
//! an [`AUDIT`] row, all or nothing; the tier limits and budget defaults come from
//! `callmeback-domain`. [`LOGIN`] is a *procedure*: called by name like an operation, but alone,
//! never in a batch. Every failed login is the same `precondition_failed`.

use super::{OpSpec, ParamSpec, ParamType};

/// Inserts a user; `password` is a [`ParamType::NewPassword`] (stored as Argon2id).
pub static CREATE_USER: OpSpec = OpSpec::new(
    "accounts.create_user",
    &[
        ParamSpec::required("id", ParamType::Text),
        ParamSpec::required("email", ParamType::Text),
        ParamSpec::required("password", ParamType::NewPassword),
        ParamSpec::optional("name", ParamType::Text),
        ParamSpec::optional("phone", ParamType::Text),
    ],
);

/// A new user's `user_credits` row with their tier's limits.
pub static CREATE_CREDITS: OpSpec = OpSpec::new(
    "accounts.create_credits",
    &[
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("tier", ParamType::Text),
        ParamSpec::required("monthly_credit_allowance", ParamType::Int4),
        // NULL: no daily limit.
        ParamSpec::optional("max_calls_per_day", ParamType::Int4),
        ParamSpec::required("max_call_duration_seconds", ParamType::Int4),
    ],
);

/// A new user's `user_budget_settings` row.
pub static CREATE_BUDGET_SETTINGS: OpSpec = OpSpec::new(
    "accounts.create_budget_settings",
    &[
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("max_cost_per_call_cents", ParamType::Int4),
        ParamSpec::required("max_monthly_spend_cents", ParamType::Int4),
        ParamSpec::required("warn_at_percent_per_call", ParamType::Int4),
        ParamSpec::required("enable_auto_cutoff", ParamType::Bool),
    ],
);

/// One security event in `audit_log` (never secrets in `details`).
pub static AUDIT: OpSpec = OpSpec::new(
    "accounts.audit",
    &[
        ParamSpec::required("event_type", ParamType::Text),
        ParamSpec::optional("user_id", ParamType::Text),
        ParamSpec::optional("ip", ParamType::Text),
        ParamSpec::optional("details", ParamType::Jsonb),
    ],
);

/// A user's profile and credit summary.
pub static GET_USER: OpSpec = OpSpec::new(
    "accounts.get_user",
    &[ParamSpec::required("user_id", ParamType::Text)],
);

/// Revokes a session token (its `jti`); `auth.session_check` refuses it while the row exists.
pub static REVOKE_TOKEN: OpSpec = OpSpec::new(
    "accounts.revoke_token",
    &[
        ParamSpec::required("jti", ParamType::Text),
        ParamSpec::required("user_id", ParamType::Text),
        // The last instant any verifier accepts the token (its `exp` plus the clock-skew
        // leeway), unix seconds; the purge removes the row an hour after it.
        ParamSpec::required("expires_at_unix", ParamType::Int8),
    ],
);

/// Changes a user's role, recording `role_change` in the same statement.
pub static SET_ROLE: OpSpec = OpSpec::new(
    "accounts.set_role",
    &[
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("role", ParamType::Text),
        ParamSpec::required("actor_user_id", ParamType::Text),
        ParamSpec::optional("ip", ParamType::Text),
    ],
);

/// Procedure: verify an email and password and answer with the user row (the stored hash never
/// leaves the gateway; a legacy hash is upgraded on the same login). Every failure, whatever its
/// reason, is `precondition_failed` with one message.
pub static LOGIN: OpSpec = OpSpec::new(
    "accounts.login",
    &[
        // Any string: the policy for new passwords must not lock out existing ones, and a
        // malformed email is simply an unknown account.
        ParamSpec::required("email", ParamType::Text),
        ParamSpec::required("password", ParamType::Password),
        ParamSpec::optional("ip", ParamType::Text),
    ],
);
