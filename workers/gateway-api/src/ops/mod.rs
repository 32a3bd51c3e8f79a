//! Every operation of the gateway's registry, declared once: its name and its parameters.
//!
//! Both sides build on these declarations. db-gateway's registry pairs each [`OpSpec`] with its
//! SQL (and a test holds the registry to [`ALL`], both ways); the Worker builds its calls from
//! them with [`OpCall::of`], whose [`param`](OpCall::param) refuses (in debug builds) a name the
//! spec does not declare, and its tests check every call it builds with [`OpCall::conforms`].
//!
//! # Declaring an operation
//! One `pub static` in the domain's module, then one line in [`ALL`]:
//!
//! ```
//! use callmeback_gateway_api::ops::{OpSpec, ParamSpec, ParamType};
//!
//! /// Takes credits for a call; `precondition_failed` when the balance does not cover it.
//! pub static CREDITS_DEBIT: OpSpec = OpSpec::new(
//!     "credits.debit",
//!     &[
//!         ParamSpec::required("user_id", ParamType::Text),
//!         ParamSpec::required("amount", ParamType::Int4),
//!         ParamSpec::optional("call_id", ParamType::Text),
//!     ],
//! );
//! ```
//!
//! The order of the parameters is the order the gateway binds them in (`$1`, `$2`, …); the
//! gateway prepares every operation against the migrated schema at startup and refuses to serve
//! when a declared type disagrees with its SQL. Calling one:
//!
//! ```
//! use callmeback_gateway_api::OpCall;
//! use callmeback_gateway_api::ops::billing::CREDITS_DEDUCT;
//!
//! let call = OpCall::of(&CREDITS_DEDUCT)
//!     .param("user_id", "usr_1")
//!     .param("amount", 3)
//!     .param("transaction_id", "txn_1");
//! assert_eq!(call.op, "credits.deduct");
//! assert!(call.conforms().is_ok());
//! ```
//!
//! An operation's name is also the scope a gateway key needs to call it (`credits.*`).

pub mod accounts;
pub mod auth;
pub mod bench;
pub mod billing;
pub mod calls;
pub mod personas;
pub mod schedules;
pub mod system;

#[cfg(doc)]
use crate::OpCall;

/// How a parameter crosses JSON (see the crate docs for the full table) and what the gateway
/// binds it as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// JSON string, bound as `text`.
    Text,
    /// JSON integer within `i32`, bound as `int4`.
    Int4,
    /// JSON integer or a string of decimal digits (64-bit values cannot cross JavaScript numbers
    /// safely), bound as `int8`.
    Int8,
    /// A plain decimal string (`"-12.50"`), bound as `text`; the SQL casts it with
    /// `$n::text::numeric` so no float ever touches the value.
    Numeric,
    /// JSON boolean, bound as `bool`.
    Bool,
    /// RFC 3339 string with an offset, bound as `timestamptz`.
    Timestamptz,
    /// Any JSON value, bound as `jsonb`.
    Jsonb,
    /// JSON array of strings (or nulls), bound as `text[]`.
    TextArray,
    /// A new password in plaintext (1 to 1024 bytes); the gateway binds its Argon2id PHC string
    /// (`$argon2id$…`) as `text` instead. The plaintext is never bound, stored or logged.
    NewPassword,
    /// A password to verify, in plaintext. Only procedures may declare it (they verify it in
    /// Rust); it is never bound to SQL.
    Password,
}

impl ParamType {
    /// What a value of this type must look like, in words (for error messages).
    pub const fn describe(self) -> &'static str {
        match self {
            ParamType::Text => "a string",
            ParamType::Int4 => "a 32-bit integer",
            ParamType::Int8 => "a 64-bit integer (number or digit string)",
            ParamType::Numeric => "a plain decimal string such as \"12.50\"",
            ParamType::Bool => "a boolean",
            ParamType::Timestamptz => "an RFC 3339 timestamp string with offset",
            ParamType::Jsonb => "a JSON value",
            ParamType::TextArray => "an array of strings",
            ParamType::NewPassword | ParamType::Password => "a password of 1 to 1024 bytes",
        }
    }
}

/// One declared parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    /// Required parameters must be present and non-null; optional ones are SQL `NULL` when
    /// absent or `null`.
    pub required: bool,
}

impl ParamSpec {
    pub const fn required(name: &'static str, ty: ParamType) -> Self {
        Self {
            name,
            ty,
            required: true,
        }
    }

    pub const fn optional(name: &'static str, ty: ParamType) -> Self {
        Self {
            name,
            ty,
            required: false,
        }
    }
}

/// A named operation and its parameters, in binding order.
#[derive(Debug, PartialEq, Eq)]
pub struct OpSpec {
    /// `domain.action`, lower case; also the scope a key needs.
    pub name: &'static str,
    pub params: &'static [ParamSpec],
}

impl OpSpec {
    pub const fn new(name: &'static str, params: &'static [ParamSpec]) -> Self {
        Self { name, params }
    }

    /// The declared parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&'static ParamSpec> {
        self.params.iter().find(|param| param.name == name)
    }

    /// Whether the operation declares a parameter called `name`.
    pub fn declares(&self, name: &str) -> bool {
        self.param(name).is_some()
    }
}

/// Every operation production serves (operations and procedures), by domain. The benchmark-only
/// [`bench`](mod@bench) operations are not in it.
pub static ALL: &[&OpSpec] = &[
    &system::PING,
    &system::SCHEMA_VERSION,
    &auth::SESSION_CHECK,
    &auth::REQUIRE_ADMIN,
    &accounts::CREATE_USER,
    &accounts::CREATE_CREDITS,
    &accounts::CREATE_BUDGET_SETTINGS,
    &accounts::AUDIT,
    &accounts::GET_USER,
    &accounts::REVOKE_TOKEN,
    &accounts::SET_ROLE,
    &accounts::LOGIN,
    &personas::LIST_ACTIVE,
    &personas::GET_ACTIVE,
    &personas::ADMIN_LIST,
    &personas::ADMIN_CREATE,
    &personas::ADMIN_UPDATE,
    &personas::ADMIN_DEACTIVATE,
    &personas::LIST_FOR_USER,
    &personas::UPSERT,
    &personas::TEMPLATES_LIST_ACTIVE,
    &personas::TEMPLATES_ADMIN_LIST,
    &personas::TEMPLATES_ADMIN_CREATE,
    &personas::TEMPLATES_ADMIN_UPDATE,
    &personas::TEMPLATES_ADMIN_DEACTIVATE,
    &billing::CREDITS_SUMMARY,
    &billing::CREDITS_TRANSACTIONS,
    &billing::CREDITS_DEDUCT,
    &billing::CREDITS_ADD,
    &billing::BUDGET_GET,
    &billing::BUDGET_PUT,
    &billing::WEBHOOKS_RECORD_EVENT,
    &billing::SUBSCRIPTIONS_REFILL,
    &billing::SUBSCRIPTIONS_END,
    &billing::ADMIN_COST_BY_PROVIDER,
    &billing::ADMIN_TOP_PERSONAS,
    &billing::ADMIN_REVENUE_BY_DAY,
    &billing::ADMIN_CALLS_TODAY,
    &billing::ADMIN_LOW_CREDIT_USERS,
    &calls::CALLS_PREPARE,
    &calls::CALLS_LOCK_USER,
    &calls::CALLS_CREATE,
    &calls::CALLS_BY_IDEMPOTENCY_KEY,
    &calls::CALLS_MARK_PLACED,
    &calls::CALLS_MARK_FAILED,
    &calls::CALLS_ADVANCE_STATUS,
    &calls::CALLS_FINALIZE,
    &calls::CALL_LOGS_RECORD,
    &calls::COST_BREAKDOWN_RECORD,
    &calls::COST_EVENTS_ADD,
    &calls::CREDITS_CHARGE_CALL,
    &calls::RELATIONSHIPS_RECORD_CALL,
    &calls::TRANSCRIPTS_SAVE,
    &calls::CALLS_LIST,
    &calls::CALLS_GET,
    &calls::CALLS_FAIL_STUCK,
    &calls::MEMORY_GET,
    &calls::MEMORY_CLEAR,
    &calls::PREFERENCES_GET,
    &calls::PREFERENCES_SET,
    &schedules::SCHEDULES_CREATE,
    &schedules::SCHEDULES_LIST,
    &schedules::SCHEDULES_CANCEL,
    &schedules::SCHEDULES_CLAIM_DUE,
    &schedules::SCHEDULES_RECORD_RUN,
    &schedules::SCHEDULES_RECLAIM_STUCK,
    &schedules::MAINTENANCE_PURGE_BLACKLIST,
];

/// The spec in [`ALL`] called `name`.
pub fn find(name: &str) -> Option<&'static OpSpec> {
    ALL.iter().copied().find(|spec| spec.name == name)
}

/// Why a call does not match its operation's declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecMismatch {
    /// The call was not built with [`OpCall::of`], so there is nothing to check it against.
    NoSpec { op: String },
    /// The call names a parameter the operation does not declare.
    Undeclared { op: &'static str, param: String },
    /// A required parameter is absent or `null`.
    MissingRequired {
        op: &'static str,
        param: &'static str,
    },
}

impl std::fmt::Display for SpecMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoSpec { op } => write!(f, "the call of `{op}` was not built from a spec"),
            Self::Undeclared { op, param } => {
                write!(f, "operation `{op}` declares no parameter `{param}`")
            }
            Self::MissingRequired { op, param } => {
                write!(f, "operation `{op}` needs parameter `{param}`")
            }
        }
    }
}

impl std::error::Error for SpecMismatch {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn names_are_unique_and_look_like_domain_dot_action() {
        let mut seen = BTreeSet::new();
        for spec in ALL.iter().chain(bench::ALL) {
            assert!(seen.insert(spec.name), "{} is declared twice", spec.name);
            let (domain, action) = spec.name.split_once('.').expect("domain.action");
            for segment in [domain, action] {
                assert!(
                    !segment.is_empty()
                        && segment
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "{}",
                    spec.name
                );
            }
            let mut params = BTreeSet::new();
            for param in spec.params {
                assert!(
                    params.insert(param.name),
                    "{} declares {} twice",
                    spec.name,
                    param.name
                );
            }
        }
        assert_eq!(find("credits.deduct"), Some(&billing::CREDITS_DEDUCT));
        assert_eq!(find("bench.account_balance"), None);
    }
}
