//! Accounts: registration, login, the caller's profile, logout and role changes, with their audit
//! trail.
//!
//! Passwords are the reason this module is more than SQL. A new password arrives as a
//! [`ParamType::NewPassword`] and is stored as its Argon2id hash (the plaintext is never bound).
//! Login is the `accounts.login` procedure, because checking a password needs the stored hash, and
//! the hash must never leave the gateway: the procedure loads it, verifies it in Rust, upgrades a
//! legacy bcrypt hash (or an Argon2id hash with outdated parameters) on the same successful
//! login, and answers with the user row. Every failure, whether unknown email, wrong password or
//! deactivated account, is the same `precondition_failed` with one message, after the same work
//! (an unknown email is verified against a dummy hash), and it leaves a `login_failure` row in
//! `audit_log` that names the account (never the email) when there is one.
//!
//! Registration is a batch the Worker sends: `accounts.create_user`, `accounts.create_credits`,
//! `accounts.create_budget_settings` and an `accounts.audit` row, all or nothing. The tier limits and budget
//! defaults come from the Worker (callmeback-domain is their one source), not from column
//! defaults here.

use serde_json::Value;

use super::password::{self, Verdict};
use callmeback_gateway_api::ops::accounts as spec;

use super::{
    DEFAULT_STATEMENT_TIMEOUT_MS, Expect, Mode, OpDef, OpSpec, ParamSpec, ParamType, ProcedureDef,
    ProcedureFuture,
};
use crate::db::{self, OpOutput};
use crate::error::ApiError;
use crate::statement::params::{BoundParam, Plaintext};

/// The one answer for every failed login.
pub const INVALID_CREDENTIALS: &str = "invalid email or password";

pub static OPS: &[OpDef] = &[
    OpDef {
        spec: &spec::CREATE_USER,
        sql: "INSERT INTO users (id, email, password_hash, name, phone) \
              VALUES ($1, lower($2), $3, $4, $5) \
              RETURNING id, email, name, phone, role, created_at, last_login_at",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::CREATE_CREDITS,
        sql: "INSERT INTO user_credits (user_id, subscription_tier, monthly_credit_allowance, \
                  max_calls_per_day, max_call_duration_seconds) \
              VALUES ($1, $2, $3, $4, $5) \
              RETURNING user_id, available_credits, subscription_tier, monthly_credit_allowance, \
                  max_calls_per_day, max_call_duration_seconds",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::CREATE_BUDGET_SETTINGS,
        sql: "INSERT INTO user_budget_settings (user_id, max_cost_per_call_cents, \
                  max_monthly_spend_cents, warn_at_percent_per_call, enable_auto_cutoff) \
              VALUES ($1, $2, $3, $4, $5) \
              RETURNING user_id, max_cost_per_call_cents, max_monthly_spend_cents, \
                  warn_at_percent_per_call, enable_auto_cutoff",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::AUDIT,
        sql: "INSERT INTO audit_log (event_type, user_id, ip, details) \
              VALUES ($1, $2, $3, COALESCE($4, '{}'::jsonb)) RETURNING id",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::GET_USER,
        sql: "SELECT u.id, u.email, u.name, u.phone, u.role, u.created_at, u.last_login_at, \
                  c.subscription_tier, c.available_credits \
              FROM users u LEFT JOIN user_credits c ON c.user_id = u.id WHERE u.id = $1",
        mode: Mode::Read,
        expect: Expect::One {
            message: "user not found",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::REVOKE_TOKEN,
        // Revoking twice is harmless; the first revocation's expiry stands.
        sql: "INSERT INTO token_blacklist (token_id, user_id, expires_at) \
              VALUES ($1, $2, to_timestamp($3::int8)) ON CONFLICT (token_id) DO NOTHING",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::SET_ROLE,
        // The row lock makes `previous_role` exact under concurrent changes; the audit row is
        // part of the same statement, so a role never changes unrecorded. A no-op change is not
        // an event.
        sql: "WITH target AS (SELECT id, role AS previous_role FROM users WHERE id = $1 FOR UPDATE), \
             changed AS (UPDATE users u SET role = $2 FROM target t WHERE u.id = t.id \
                 RETURNING u.id, u.email, u.name, u.phone, u.role, u.created_at, u.last_login_at, \
                     t.previous_role), \
             audited AS (INSERT INTO audit_log (event_type, user_id, ip, details) \
                 SELECT 'role_change', c.id, $4::text, jsonb_build_object( \
                     'actor_user_id', $3::text, 'from', c.previous_role, 'to', c.role) \
                 FROM changed c WHERE c.previous_role IS DISTINCT FROM c.role) \
             SELECT id, email, name, phone, role, created_at, last_login_at, previous_role \
             FROM changed",
        mode: Mode::Write,
        expect: Expect::One {
            message: "user not found",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
];

pub(crate) static PROCEDURES: &[ProcedureDef] = &[ProcedureDef {
    spec: &spec::LOGIN,
    statements: LOGIN_STATEMENTS,
    run: login,
}];

static LOGIN_STATEMENTS: &[OpDef] = &[LOGIN_LOAD, LOGIN_SUCCEED, LOGIN_FAIL];

/// The stored hash; it never leaves the gateway.
const LOGIN_LOAD: OpDef = OpDef {
    spec: &OpSpec::new(
        "accounts.login_load",
        &[ParamSpec::required("email", ParamType::Text)],
    ),
    sql: "SELECT id, password_hash, is_active FROM users WHERE email = lower(btrim($1))",
    mode: Mode::Read,
    expect: Expect::Any,
    statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
};

/// Stamps the login, swaps in an upgraded hash and writes the audit rows, in one statement. The
/// `password_hash = $2` guard makes it a no-op if the hash changed since it was verified (or the
/// account was deactivated meanwhile); the procedure then treats the login as failed.
const LOGIN_SUCCEED: OpDef = OpDef {
    spec: &OpSpec::new(
        "accounts.login_succeed",
        &[
            ParamSpec::required("user_id", ParamType::Text),
            ParamSpec::required("verified_hash", ParamType::Text),
            ParamSpec::optional("new_hash", ParamType::Text),
            ParamSpec::optional("ip", ParamType::Text),
            ParamSpec::optional("upgraded_from", ParamType::Text),
        ],
    ),
    sql: "WITH account AS ( \
             UPDATE users SET last_login_at = now(), \
                 password_hash = COALESCE($3::text, password_hash) \
             WHERE id = $1 AND password_hash = $2 AND is_active \
             RETURNING id, email, name, phone, role, created_at, last_login_at), \
         success AS (INSERT INTO audit_log (event_type, user_id, ip) \
             SELECT 'login_success', id, $4::text FROM account), \
         upgrade AS (INSERT INTO audit_log (event_type, user_id, ip, details) \
             SELECT 'password_upgrade', id, $4::text, \
                 jsonb_build_object('from', $5::text, 'to', 'argon2id') \
             FROM account WHERE $3::text IS NOT NULL) \
         SELECT id, email, name, phone, role, created_at, last_login_at, \
             $3::text IS NOT NULL AS password_upgraded \
         FROM account",
    mode: Mode::Write,
    expect: Expect::Any,
    statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
};

/// A failed login: the account when there is one (never the email), the address, and why.
const LOGIN_FAIL: OpDef = OpDef {
    spec: &OpSpec::new(
        "accounts.login_fail",
        &[
            ParamSpec::optional("user_id", ParamType::Text),
            ParamSpec::optional("ip", ParamType::Text),
            ParamSpec::required("reason", ParamType::Text),
        ],
    ),
    sql: "INSERT INTO audit_log (event_type, user_id, ip, details) \
          VALUES ('login_failure', $1, $2, jsonb_build_object('reason', $3::text))",
    mode: Mode::Write,
    expect: Expect::Any,
    statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
};

/// Why a login failed, for the audit log only (the client always hears [`INVALID_CREDENTIALS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureReason {
    UnknownAccount,
    WrongPassword,
    InactiveAccount,
    /// The hash changed (or the account was deactivated) between verification and update.
    ChangedConcurrently,
}

impl FailureReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::UnknownAccount => "unknown_account",
            Self::WrongPassword => "wrong_password",
            Self::InactiveAccount => "inactive_account",
            Self::ChangedConcurrently => "changed_concurrently",
        }
    }
}

/// What the login needs from the `users` row.
struct StoredAccount {
    id: String,
    password_hash: String,
    is_active: bool,
}

fn login<'a>(
    pool: &'a deadpool_postgres::Pool,
    params: &'a [BoundParam<'a>],
) -> ProcedureFuture<'a> {
    Box::pin(run_login(pool, params))
}

async fn run_login(
    pool: &deadpool_postgres::Pool,
    params: &[BoundParam<'_>],
) -> Result<OpOutput, ApiError> {
    let (email, password, ip) = match params {
        [BoundParam::Text(email), BoundParam::Password(password), ip] => {
            (*email, *password, optional_text(ip))
        }
        _ => {
            return Err(ApiError::Internal(format!(
                "procedure `{}` received parameters of unexpected types",
                spec::LOGIN.name
            )));
        }
    };

    // The connection goes back to the pool before the CPU-heavy verification.
    let account = {
        let client = db::checkout(pool).await?;
        let found = db::run_on_client(&client, &LOGIN_LOAD, &[BoundParam::Text(email)]).await?;
        stored_account(&found)?
    };
    let verdict = verify(password, account.as_ref()).await?;

    let client = db::checkout(pool).await?;
    let reason = match (&account, verdict) {
        (None, _) => FailureReason::UnknownAccount,
        (Some(_), Verdict::Mismatch) => FailureReason::WrongPassword,
        (Some(account), Verdict::Match { .. }) if !account.is_active => {
            FailureReason::InactiveAccount
        }
        (Some(account), Verdict::Match { upgrade }) => {
            let (from, new_hash) = match upgrade {
                Some((scheme, hash)) => (Some(scheme.as_str()), Some(hash)),
                None => (None, None),
            };
            let succeeded = db::run_on_client(
                &client,
                &LOGIN_SUCCEED,
                &[
                    BoundParam::Text(&account.id),
                    BoundParam::Text(&account.password_hash),
                    new_hash.map_or(BoundParam::Null, BoundParam::PasswordHash),
                    text_or_null(ip),
                    text_or_null(from),
                ],
            )
            .await?;
            if succeeded.row_count() == 1 {
                return Ok(succeeded);
            }
            FailureReason::ChangedConcurrently
        }
    };
    db::run_on_client(
        &client,
        &LOGIN_FAIL,
        &[
            text_or_null(account.as_ref().map(|account| account.id.as_str())),
            text_or_null(ip),
            BoundParam::Text(reason.as_str()),
        ],
    )
    .await?;
    Err(ApiError::PreconditionFailed(INVALID_CREDENTIALS))
}

async fn verify(
    password: Plaintext<'_>,
    account: Option<&StoredAccount>,
) -> Result<Verdict, ApiError> {
    password::verify_on_worker_thread(
        password.expose().to_owned(),
        account.map(|account| account.password_hash.clone()),
    )
    .await
}

fn stored_account(found: &OpOutput) -> Result<Option<StoredAccount>, ApiError> {
    if found.row_count() == 0 {
        return Ok(None);
    }
    let text = |column: &str| match found.value(0, column) {
        Some(Value::String(text)) => Ok(text.clone()),
        _ => Err(ApiError::Internal(format!(
            "`{}` returned no text `{column}`",
            LOGIN_LOAD.name()
        ))),
    };
    Ok(Some(StoredAccount {
        id: text("id")?,
        password_hash: text("password_hash")?,
        is_active: matches!(found.value(0, "is_active"), Some(Value::Bool(true))),
    }))
}

fn optional_text<'a>(param: &BoundParam<'a>) -> Option<&'a str> {
    match param {
        BoundParam::Text(text) => Some(text),
        _ => None,
    }
}

fn text_or_null(value: Option<&str>) -> BoundParam<'_> {
    value.map_or(BoundParam::Null, BoundParam::Text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Registry;

    #[test]
    fn login_is_a_procedure_and_its_statements_are_not_callable() {
        let registry = Registry::production(false).expect("production registry is valid");
        assert!(registry.is_procedure(spec::LOGIN.name));
        assert!(registry.get(spec::LOGIN.name).is_none());
        for statement in LOGIN_STATEMENTS {
            assert!(
                registry.get(statement.name()).is_none()
                    && !registry.is_procedure(statement.name()),
                "{} must not be callable: it returns a password hash",
                statement.name()
            );
        }
        for name in [
            spec::CREATE_USER.name,
            spec::CREATE_CREDITS.name,
            spec::CREATE_BUDGET_SETTINGS.name,
            spec::AUDIT.name,
            spec::GET_USER.name,
            spec::REVOKE_TOKEN.name,
            spec::SET_ROLE.name,
        ] {
            assert!(registry.get(name).is_some(), "{name} is registered");
        }
    }

    #[test]
    fn create_user_takes_a_new_password_never_a_hash() {
        let create = OPS
            .iter()
            .find(|op| op.name() == spec::CREATE_USER.name)
            .unwrap();
        let password = create
            .params()
            .iter()
            .find(|p| p.name == "password")
            .unwrap();
        assert_eq!(password.ty, ParamType::NewPassword);
    }
}
