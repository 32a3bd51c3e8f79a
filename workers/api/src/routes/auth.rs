//! Accounts and sessions: register, login, logout, me; admin role changes.
//!
//! # Where the work happens
//! Passwords are hashed and verified by db-gateway (Argon2id, OWASP parameters; legacy bcrypt
//! hashes are verified there and upgraded on login), never here: a memory-hard hash would blow a
//! Worker's CPU budget, and the hash never has to leave the gateway. This module validates input,
//! enforces attempt limits, issues and revokes session tokens (`callmeback-auth`), and shapes the
//! JSON.
//!
//! # Enumeration: what login and register reveal
//! - Login answers every failure (unknown email, wrong password, deactivated account, malformed
//!   email) with the same 401 `invalid_credentials` body, after the same gateway work: an unknown
//!   email is verified against a dummy Argon2id hash, so timing does not tell either.
//! - Register cannot hide everything: it answers with a session token, and a taken email cannot
//!   get one, so "created" and "not created" must differ (only an email-confirmation flow, which
//!   this API does not have, could hide that). What it does instead: the failure names no reason
//!   (409 `registration_failed`, "could not be created"), it costs the same as a success (the
//!   gateway hashes the password before the insert meets the unique index), and every
//!   registration attempt counts against the per-IP limit (`REGISTRATIONS_PER_IP`), so probing
//!   emails through register is as rate-bound as guessing passwords through login.
//!
//! # Brute force: what is counted, and when
//! Failed logins are counted in `RateLimiter` Durable Objects (`crate::limits`). A slot is
//! *taken* before the password check, in one atomic limiter call per budget (check and record
//! together), never checked before and recorded after: with check-then-record, 30 concurrent
//! wrong passwords all passed the check before any was recorded. So what a budget counts is
//! attempts whose outcome is a failure or not known yet: a login that turns out right gives its
//! own slot back (`release`, naming the slot's time), one that fails keeps it, and so does one
//! that errors (an outcome nobody saw is counted, failing closed). A budget at its limit answers
//! 429 `too_many_attempts` with `Retry-After` before the password is looked at, even for the right
//! password; a refused attempt gives back whatever it had taken already. If the limiter cannot
//! answer, login fails closed (503). Registration takes a slot of `REGISTRATIONS_PER_IP` before
//! its insert the same way, and never gives it back (see above). The windows are
//! `RateLimitPolicy::LOGIN_FAILURES_PER_*`, 15 minutes, unless `LOGIN_FAILURE_WINDOW_SECS`
//! overrides them (operators, and the tests, which cannot wait 15 minutes to see a lock lift).
//! Per-address budgets key on the client's network (`callmeback_domain::network`): an IPv4
//! address, or an IPv6 /64, since one subscriber holds a whole /64.
//!
//! # Lockout that strangers cannot impose: device tokens
//! An account-wide failure limit alone lets anyone lock any account: ten wrong passwords every 15
//! minutes, from anywhere, and the owner's right password answers 429. So budgets follow OWASP's
//! device cookies (Authentication Cheat Sheet, "Slow Down Online Guessing Attacks with Device
//! Cookies"):
//! - Every successful login (and registration) answers with a `device_token`: the account
//!   (`callmeback_auth::account_ref`, a hash of the email) and a random device id (`dev_…`),
//!   signed with the session keyring under a derived key, valid for 90 days and re-issued (same
//!   device id) on every success. The API is used from apps with bearer tokens, not cookies, so
//!   the token travels in the JSON body and comes back in the `X-Device-Token` request header.
//! - A login carrying a valid device token *for the account it tries* draws only on that
//!   device's own budget, `(account, device)`, 10 failures per window. It is not refused because
//!   of failures made elsewhere (neither the account's shared budget nor the network's), and
//!   its failures touch no one else's. A success forgets the device's failures (whoever
//!   succeeded knows the password).
//! - Any other login (no token, or a malformed, forged, expired or other account's token, which
//!   is ignored as if absent) is *untrusted*: it takes a slot from its network's budget (10 per
//!   window, across accounts), then from the account's shared untrusted budget (10 per window).
//!   A success gives back its own slots only: the failures strangers made stay counted, so the
//!   owner logging in does not hand an attacker a fresh budget.
//!
//! What it costs an attacker: without a device token of the account, at most 10 guesses per
//! account per window from all their addresses together, and 10 per window per IPv4 address or
//! IPv6 /64 across accounts; the owner's known devices keep working throughout, and only new
//! devices (or ones whose token expired) wait out a lockout. A device token cannot be forged (an
//! HMAC under the session keys), is bound to one account (useless for spraying others), and is
//! issued only after the right password, so getting one means already knowing the password or
//! stealing it from the owner's device; a stolen one buys 10 guesses per window for that one
//! account, and a fresh untrusted budget is not gained by logging in.
//!
//! # Sessions
//! A token lives [`TOKEN_TTL_SECS`]. Logout puts its `jti` in `token_blacklist`, in the same
//! gateway batch as the session check and the audit row, and every authenticated route's batch
//! starts with that check, so the token is refused on its very next use. The row is kept until
//! `exp + CLOCK_SKEW_LEEWAY_SECS`, the last instant the verifier would still accept the token,
//! and the check matches the row whatever its expiry (only the purge, an hour later, removes it),
//! so a revocation outlives every token it revokes. Roles in
//! tokens are a hint; admin routes confirm the role in the database (`auth.require_admin`), so a
//! demoted admin loses access at once, and a promoted user signs in again to get an admin token.
//!
//! Security events (`register`, `login_success`, `login_failure`, `password_upgrade`, `logout`,
//! `role_change`) land in `audit_log` with the user id and client IP, never an email or password.

use std::str::FromStr as _;

use callmeback_auth::{CLOCK_SKEW_LEEWAY_SECS, Role, SessionClaims, TOKEN_TTL_SECS, account_ref};
use callmeback_domain::ids::prefix;
use callmeback_domain::{
    BudgetSettings, Email, FieldError, FieldErrors, Name, Password, PhoneE164, RateLimitPolicy,
    Take, Tier, ValidationError, new_id,
};
use callmeback_gateway_api::ops::accounts;
use callmeback_gateway_api::{OpCall, codes};
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use worker::{Method, Response};

use super::{Access, RouteDef, RouteRequest, Service, json_response, random_16};
use crate::config::LoginLimits;
use crate::ctx::{RequestCtx, read_json};
use crate::error::ApiError;
use crate::gateway::GatewayError;
use crate::limits::{LimitKey, Limiter, LimiterError};
use crate::session::{Session, authed_batch, authed_call};
use crate::{rows, time};

const REGISTER: &str = "register";
const LOGIN: &str = "login";
const LOGOUT: &str = "logout";
const GET_ME: &str = "getMe";
const ADMIN_SET_USER_ROLE: &str = "adminSetUserRole";

pub(super) const ROUTES: &[RouteDef] = &[
    RouteDef::new(
        Method::Post,
        "/api/auth/register",
        Access::Public,
        Service::Auth,
        REGISTER,
    ),
    RouteDef::new(
        Method::Post,
        "/api/auth/login",
        Access::Public,
        Service::Auth,
        LOGIN,
    ),
    RouteDef::new(
        Method::Post,
        "/api/auth/logout",
        Access::User,
        Service::Auth,
        LOGOUT,
    ),
    RouteDef::new(
        Method::Get,
        "/api/auth/me",
        Access::User,
        Service::Auth,
        GET_ME,
    ),
    RouteDef::new(
        Method::Put,
        "/api/admin/users/{id}/role",
        Access::Admin,
        Service::Auth,
        ADMIN_SET_USER_ROLE,
    ),
];

pub(super) async fn handle(route: &RouteDef, request: RouteRequest) -> Result<Response, ApiError> {
    match route.name {
        REGISTER => register(request).await,
        LOGIN => login(request).await,
        LOGOUT => logout(request).await,
        GET_ME => me(request).await,
        ADMIN_SET_USER_ROLE => set_user_role(request).await,
        _ => Err(ApiError::not_found()),
    }
}

/// Longest password the gateway accepts (bytes); anything longer cannot be anyone's password.
const MAX_PASSWORD_BYTES: usize = 1024;
/// The request header a client sends its device token in (returned as `device_token` by login
/// and register).
pub(crate) const DEVICE_TOKEN_HEADER: &str = "x-device-token";
/// Longest user id accepted from a path (the column's own limit).
const MAX_USER_ID_LEN: usize = 255;

// ---------------------------------------------------------------------------------------------
// Register
// ---------------------------------------------------------------------------------------------

/// `POST /api/auth/register`. Fields are optional here so a missing one is reported as
/// `required` next to the others instead of as a parse error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    phone: Option<String>,
}

/// A registration that passed validation.
#[derive(Debug)]
struct NewAccount {
    email: Email,
    password: Password,
    name: Option<Name>,
    phone: Option<PhoneE164>,
}

fn validate_registration(body: RegisterBody) -> Result<NewAccount, FieldErrors> {
    let mut errors = FieldErrors::new();
    let email = errors.check("email", Email::parse(body.email.as_deref().unwrap_or("")));
    let password = errors.check(
        "password",
        body.password
            .ok_or(ValidationError::Required)
            .and_then(Password::new),
    );
    // Optional fields: absent, null and blank all mean "not given".
    let name = match non_blank(body.name.as_deref()) {
        Some(name) => errors.check("name", Name::parse(name)).map(Some),
        None => Some(None),
    };
    let phone = match non_blank(body.phone.as_deref()) {
        Some(phone) => errors.check("phone", PhoneE164::parse(phone)).map(Some),
        None => Some(None),
    };
    match (email, password, name, phone) {
        (Some(email), Some(password), Some(name), Some(phone)) if errors.is_empty() => {
            Ok(NewAccount {
                email,
                password,
                name,
                phone,
            })
        }
        _ => Err(errors),
    }
}

fn non_blank(value: Option<&str>) -> Option<&str> {
    value.filter(|text| !text.trim().is_empty())
}

/// The registration batch: the user, their free-tier credits row and default budget (both from
/// callmeback-domain, the one place those numbers live), and the audit row.
fn registration_ops(user_id: &str, account: &NewAccount, ip: &str) -> Vec<OpCall> {
    let free = Tier::Free.limits();
    let budget = BudgetSettings::default();
    vec![
        OpCall::of(&accounts::CREATE_USER)
            .param("id", user_id)
            .param("email", account.email.as_str())
            .param("password", account.password.expose_secret())
            .param("name", account.name.as_ref().map(|name| name.as_str()))
            .param("phone", account.phone.as_ref().map(|phone| phone.as_str())),
        OpCall::of(&accounts::CREATE_CREDITS)
            .param("user_id", user_id)
            .param("tier", Tier::Free.as_str())
            .param(
                "monthly_credit_allowance",
                free.monthly_credits.unwrap_or(0),
            )
            .param("max_calls_per_day", free.calls_per_day)
            .param("max_call_duration_seconds", free.max_call_seconds),
        OpCall::of(&accounts::CREATE_BUDGET_SETTINGS)
            .param("user_id", user_id)
            .param("max_cost_per_call_cents", budget.max_cost_per_call_cents)
            .param("max_monthly_spend_cents", budget.max_monthly_spend_cents)
            .param("warn_at_percent_per_call", budget.warn_at_percent)
            .param("enable_auto_cutoff", budget.auto_cutoff),
        audit_op("register", Some(user_id), ip),
    ]
}

async fn register(mut request: RouteRequest) -> Result<Response, ApiError> {
    let body: RegisterBody = read_json(&mut request.req).await?;
    let account = validate_registration(body).map_err(ApiError::validation_failed)?;
    let ctx = &request.ctx;
    let limiter = Limiter::from_env(&ctx.env)?;
    // The slot is taken before the insert, in one limiter call: concurrent registrations from one
    // network cannot all pass a check and record afterwards. Every attempt that gets a slot
    // counts, created or not (probing for taken emails is rate-bound too), so nothing is given
    // back.
    let ip_key = LimitKey::register_ip(&ctx.client_ip);
    if let Take::Limited { retry_after_secs } = limiter
        .take(&ip_key, RateLimitPolicy::REGISTRATIONS_PER_IP)
        .await?
    {
        return Err(too_many_attempts(retry_after_secs));
    }

    let user_id = new_id(prefix::USER, random_16()?);
    let outcome = ctx
        .gateway()?
        .batch(registration_ops(&user_id, &account, &ctx.client_ip))
        .await;
    let results = match outcome {
        Ok(response) => response.results,
        Err(GatewayError::Rejected {
            code,
            op_index: Some(0),
            ..
        }) if code == codes::CONFLICT => return Err(registration_failed()),
        Err(other) => return Err(other.into()),
    };
    let user = results
        .into_iter()
        .next()
        .ok_or_else(ApiError::internal)
        .and_then(rows::into_first_row)?;
    // The device that chose the password is trusted from the start.
    let device_id = new_id(prefix::DEVICE, random_16()?);
    session_response(
        ctx,
        201,
        &user,
        account_ref(account.email.as_str()),
        &device_id,
    )
}

fn registration_failed() -> ApiError {
    ApiError::new(
        409,
        "registration_failed",
        "the account could not be created; if you already have one, sign in",
    )
}

// ---------------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------------

/// `POST /api/auth/login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The credentials as the login uses them. Only presence is checked: the policy for new
/// passwords must not lock out old ones, and a malformed email is just an unknown account.
#[derive(Debug, PartialEq, Eq)]
struct Credentials {
    /// Trimmed and lower-cased, as stored.
    email: String,
    password: String,
}

fn login_credentials(body: LoginBody) -> Result<Credentials, FieldErrors> {
    let mut errors = FieldErrors::new();
    let email = non_blank(body.email.as_deref()).map(|email| email.trim().to_lowercase());
    if email.is_none() {
        errors.add("email", ValidationError::Required);
    }
    let password = body.password.filter(|password| !password.is_empty());
    if password.is_none() {
        errors.add("password", ValidationError::Required);
    }
    match (email, password) {
        (Some(email), Some(password)) => Ok(Credentials { email, password }),
        _ => Err(errors),
    }
}

async fn login(mut request: RouteRequest) -> Result<Response, ApiError> {
    let device_header = request
        .req
        .headers()
        .get(DEVICE_TOKEN_HEADER)
        .ok()
        .flatten();
    let body: LoginBody = read_json(&mut request.req).await?;
    let credentials = login_credentials(body).map_err(ApiError::validation_failed)?;
    let ctx = &request.ctx;
    let account = account_ref(&credentials.email);
    let trusted = trusted_device(ctx, device_header.as_deref(), &account)?;
    let limiter = Limiter::from_env(&ctx.env)?;
    let budget = LoginBudget::new(
        &ctx.config.login,
        &ctx.client_ip,
        &account,
        trusted.as_deref(),
    );
    let slots = budget.take(&limiter).await?;

    let verified = if credentials.password.len() > MAX_PASSWORD_BYTES {
        // No stored password can be this long; the gateway would refuse to hash it.
        None
    } else {
        let attempt = login_op(&credentials, &ctx.client_ip);
        match ctx.gateway()?.call(&attempt).await {
            Ok(result) => Some(result),
            Err(GatewayError::Rejected { code, .. }) if code == codes::PRECONDITION_FAILED => None,
            // The slots stay taken: an attempt whose outcome is unknown counts as a failure.
            Err(other) => return Err(other.into()),
        }
    };
    // A failure keeps its slots: they are the failure count.
    let Some(result) = verified else {
        return Err(invalid_credentials());
    };
    if let Err(error) = budget.succeeded(&limiter, &slots).await {
        // The slots then leave at the end of their window; the login itself is fine.
        worker::console_error!(
            "request {}: a successful login's limiter slots were not given back: {error}",
            ctx.request_id
        );
    }
    let user = rows::into_first_row(result)?;
    let device_id = match trusted {
        Some(device_id) => device_id,
        None => new_id(prefix::DEVICE, random_16()?),
    };
    session_response(ctx, 200, &user, account, &device_id)
}

/// The device id of a valid device token for `account`, if the request carries one. Any other
/// token (malformed, forged, expired, or for another account) makes the device untrusted, as if
/// it had sent none; the reason is logged, never the token.
fn trusted_device(
    ctx: &RequestCtx,
    header: Option<&str>,
    account: &str,
) -> Result<Option<String>, ApiError> {
    let Some(token) = header.map(str::trim).filter(|token| !token.is_empty()) else {
        return Ok(None);
    };
    match ctx
        .config
        .jwt
        .get()?
        .verify_device_token(token, ctx.now_secs())
    {
        Ok(device) if device.account == account => Ok(Some(device.device_id)),
        Ok(_) => {
            worker::console_log!(
                "request {}: device token for another account ignored",
                ctx.request_id
            );
            Ok(None)
        }
        Err(reason) => {
            worker::console_log!(
                "request {}: device token ignored ({})",
                ctx.request_id,
                reason.code()
            );
            Ok(None)
        }
    }
}

/// Which failure budgets a login attempt draws on (see the module docs).
#[derive(Debug, Clone, PartialEq)]
enum LoginBudget {
    /// A device the account trusts: its own (account, device) budget only.
    Trusted {
        device: LimitKey,
        policy: RateLimitPolicy,
    },
    /// Any other device: the client network's budget, then the account's shared budget.
    Untrusted {
        ip: (LimitKey, RateLimitPolicy),
        account: (LimitKey, RateLimitPolicy),
    },
}

/// A limiter slot this attempt holds.
#[derive(Debug, Clone, PartialEq)]
struct Slot {
    key: LimitKey,
    policy: RateLimitPolicy,
    at: u64,
}

impl LoginBudget {
    fn new(
        limits: &LoginLimits,
        client_ip: &str,
        account: &str,
        trusted_device: Option<&str>,
    ) -> Self {
        match trusted_device {
            Some(device_id) => Self::Trusted {
                device: LimitKey::login_device(account, device_id),
                policy: limits.per_device,
            },
            None => Self::Untrusted {
                ip: (LimitKey::login_ip(client_ip), limits.per_ip),
                account: (LimitKey::login_account(account), limits.per_account),
            },
        }
    }

    /// Takes one slot from every budget, each in one atomic limiter call, before the password is
    /// checked; 429 when any budget is spent (nothing stays taken then). The network's slot is
    /// taken before the account's, so a burst from one network is cut at the network's limit
    /// before it reaches the account, and a burst at one account from many networks is cut at
    /// the account's.
    async fn take(&self, limiter: &Limiter) -> Result<Vec<Slot>, ApiError> {
        let budgets: Vec<(&LimitKey, RateLimitPolicy)> = match self {
            Self::Trusted { device, policy } => vec![(device, *policy)],
            Self::Untrusted { ip, account } => vec![(&ip.0, ip.1), (&account.0, account.1)],
        };
        let mut slots = Vec::with_capacity(budgets.len());
        for (key, policy) in budgets {
            match limiter.take(key, policy).await {
                Ok(Take::Taken { at, .. }) => slots.push(Slot {
                    key: key.clone(),
                    policy,
                    at,
                }),
                outcome => {
                    // Give back what this attempt took; a failure to do so only means the slot
                    // leaves at the end of its window.
                    if let Err(error) = release_all(limiter, &slots).await {
                        worker::console_error!(
                            "a refused login's slots were not given back: {error}"
                        );
                    }
                    return Err(match outcome {
                        Ok(Take::Limited { retry_after_secs }) => {
                            too_many_attempts(retry_after_secs)
                        }
                        Ok(Take::Taken { .. }) => ApiError::internal(),
                        Err(error) => error.into(),
                    });
                }
            }
        }
        Ok(slots)
    }

    /// After the right password: an untrusted attempt gives its own slots back (a success is not
    /// a failure, but the failures others made stay counted); a trusted device's failures are
    /// forgotten, since they were made by someone who has now proved the password.
    async fn succeeded(&self, limiter: &Limiter, slots: &[Slot]) -> Result<(), LimiterError> {
        match self {
            Self::Trusted { device, policy } => limiter.reset(device, *policy).await.map(|_| ()),
            Self::Untrusted { .. } => release_all(limiter, slots).await,
        }
    }
}

async fn release_all(limiter: &Limiter, slots: &[Slot]) -> Result<(), LimiterError> {
    let released = join_all(
        slots
            .iter()
            .map(|slot| limiter.release(&slot.key, slot.policy, slot.at)),
    )
    .await;
    released
        .into_iter()
        .try_for_each(|result| result.map(|_| ()))
}

fn invalid_credentials() -> ApiError {
    ApiError::new(401, "invalid_credentials", "invalid email or password")
}

// ---------------------------------------------------------------------------------------------
// Logout and me
// ---------------------------------------------------------------------------------------------

async fn logout(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let ops = logout_ops(session, &request.ctx.client_ip);
    authed_batch(&request.ctx, session, ops).await?;
    Ok(Response::empty()?.with_status(204))
}

async fn me(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let result = authed_call(&request.ctx, session, get_user_op(session.user_id())).await?;
    let row = rows::into_first_row(result)?;
    json_response(
        200,
        &json!({
            "user": user_json(&row),
            "credits": {
                "subscription_tier": row.get("subscription_tier").cloned().unwrap_or(Value::Null),
                "available_credits": row.get("available_credits").cloned().unwrap_or(Value::Null),
            },
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// Admin: role changes
// ---------------------------------------------------------------------------------------------

/// `PUT /api/admin/users/{id}/role`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    #[serde(default)]
    role: Option<String>,
}

fn parse_role(body: RoleBody) -> Result<Role, FieldErrors> {
    let mut errors = FieldErrors::new();
    match body.role.as_deref().map(Role::from_str) {
        Some(Ok(role)) => return Ok(role),
        Some(Err(_)) => errors.add(
            "role",
            FieldError::new("invalid_choice", "must be one of: user, admin"),
        ),
        None => errors.add("role", ValidationError::Required),
    }
    Err(errors)
}

fn is_plausible_user_id(id: &str) -> bool {
    (1..=MAX_USER_ID_LEN).contains(&id.len()) && !id.chars().any(char::is_control)
}

async fn set_user_role(mut request: RouteRequest) -> Result<Response, ApiError> {
    let target = request.params.get("id").to_owned();
    if !is_plausible_user_id(&target) {
        return Err(user_not_found());
    }
    let body: RoleBody = read_json(&mut request.req).await?;
    let role = parse_role(body).map_err(ApiError::validation_failed)?;
    let session = request.session()?;
    if target == session.user_id() {
        // An admin demoting themselves could leave no admin at all; another admin must do it.
        return Err(ApiError::new(
            409,
            "cannot_change_own_role",
            "an admin cannot change their own role",
        ));
    }
    let op = set_role_op(&target, role, session.user_id(), &request.ctx.client_ip);
    let result = authed_call(&request.ctx, session, op)
        .await
        .map_err(|error| {
            if error.code == codes::PRECONDITION_FAILED {
                user_not_found()
            } else {
                error
            }
        })?;
    let row = rows::into_first_row(result)?;
    json_response(200, &json!({ "user": user_json(&row) }))
}

fn user_not_found() -> ApiError {
    ApiError::new(404, "user_not_found", "no such user")
}

// ---------------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------------

fn audit_op(event_type: &str, user_id: Option<&str>, ip: &str) -> OpCall {
    OpCall::of(&accounts::AUDIT)
        .param("event_type", event_type)
        .param("user_id", user_id)
        .param("ip", ip)
}

/// The password check, which the gateway runs (`accounts.login` is a procedure).
fn login_op(credentials: &Credentials, ip: &str) -> OpCall {
    OpCall::of(&accounts::LOGIN)
        .param("email", credentials.email.as_str())
        .param("password", credentials.password.as_str())
        .param("ip", ip)
}

/// Revokes the session's token for as long as any verifier could accept it (its `exp` plus the
/// clock-skew leeway), with the audit row.
fn logout_ops(session: &Session, ip: &str) -> Vec<OpCall> {
    vec![
        OpCall::of(&accounts::REVOKE_TOKEN)
            .param("jti", session.claims.jti.as_str())
            .param("user_id", session.user_id())
            .param(
                "expires_at_unix",
                session.expires_at.saturating_add(CLOCK_SKEW_LEEWAY_SECS),
            ),
        audit_op("logout", Some(session.user_id()), ip),
    ]
}

fn get_user_op(user_id: &str) -> OpCall {
    OpCall::of(&accounts::GET_USER).param("user_id", user_id)
}

fn set_role_op(target: &str, role: Role, actor_user_id: &str, ip: &str) -> OpCall {
    OpCall::of(&accounts::SET_ROLE)
        .param("user_id", target)
        .param("role", role.as_str())
        .param("actor_user_id", actor_user_id)
        .param("ip", ip)
}

/// The public shape of a user, the same in every response.
fn user_json(row: &Map<String, Value>) -> Value {
    let mut user = Map::new();
    for field in [
        "id",
        "email",
        "name",
        "phone",
        "role",
        "created_at",
        "last_login_at",
    ] {
        user.insert(
            field.to_owned(),
            row.get(field).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(user)
}

/// Issues a session token for the user row and a device token for the device, and answers
/// `{token, token_type, expires_at, device_token, user}`.
fn session_response(
    ctx: &RequestCtx,
    status: u16,
    user: &Map<String, Value>,
    account: String,
    device_id: &str,
) -> Result<Response, ApiError> {
    let text = |field: &str| rows::text(user, field).map(str::to_owned);
    let role = Role::from_str(&text("role")?).map_err(|_| {
        worker::console_error!("request {}: a user row has an unknown role", ctx.request_id);
        ApiError::internal()
    })?;
    let claims = SessionClaims {
        jti: new_id(prefix::TOKEN, random_16()?),
        sub: text("id")?,
        email: text("email")?,
        role,
    };
    let now = ctx.now_secs();
    let keyring = ctx.config.jwt.get()?;
    let token = keyring.issue(&claims, now);
    let device_token = keyring.issue_device_token(&account, device_id, now);
    json_response(
        status,
        &json!({
            "token": token,
            "token_type": "Bearer",
            "expires_at": time::rfc3339_millis(now + TOKEN_TTL_SECS),
            "device_token": device_token,
            "user": user_json(user),
        }),
    )
}

fn too_many_attempts(retry_after_secs: u64) -> ApiError {
    ApiError::new(
        429,
        "too_many_attempts",
        "too many attempts; wait before trying again",
    )
    .with_retry_after(u32::try_from(retry_after_secs).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: Value) -> RegisterBody {
        serde_json::from_value(json).expect("a register body")
    }

    fn field_codes(errors: &FieldErrors) -> Vec<(String, String)> {
        errors
            .iter()
            .map(|(field, error)| (field.to_owned(), error.code.to_string()))
            .collect()
    }

    #[test]
    fn registration_reports_every_bad_field_with_its_code() {
        let errors = validate_registration(body(json!({
            "email": "not-an-email", "password": "short", "name": "x".repeat(101), "phone": "5551234"
        })))
        .unwrap_err();
        assert_eq!(
            field_codes(&errors),
            [
                ("email".to_owned(), "invalid_email".to_owned()),
                ("name".to_owned(), "too_long".to_owned()),
                ("password".to_owned(), "password_too_short".to_owned()),
                ("phone".to_owned(), "invalid_phone".to_owned()),
            ]
        );
        let missing = validate_registration(body(json!({}))).unwrap_err();
        assert_eq!(
            field_codes(&missing),
            [
                ("email".to_owned(), "required".to_owned()),
                ("password".to_owned(), "required".to_owned()),
            ]
        );
        let long = validate_registration(body(json!({
            "email": "a@b.co", "password": "p".repeat(129)
        })))
        .unwrap_err();
        assert_eq!(
            field_codes(&long),
            [("password".to_owned(), "password_too_long".to_owned())]
        );
    }

    #[test]
    fn registration_normalises_and_treats_blank_optionals_as_absent() {
        let account = validate_registration(body(json!({
            "email": "  Ada@Example.COM ", "password": "ten chars!", "name": "  ", "phone": null
        })))
        .expect("valid");
        assert_eq!(account.email.as_str(), "ada@example.com");
        assert!(account.name.is_none() && account.phone.is_none());
        assert!(!format!("{account:?}").contains("ten chars!"));

        let account = validate_registration(body(json!({
            "email": "ada@example.com", "password": "ten chars!", "name": " Ada ", "phone": "+1 (555) 123-4567"
        })))
        .expect("valid");
        assert_eq!(account.name.as_ref().map(Name::as_str), Some("Ada"));
        assert_eq!(
            account.phone.as_ref().map(PhoneE164::as_str),
            Some("+15551234567")
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_value::<RegisterBody>(json!({"role": "admin"})).is_err());
        assert!(serde_json::from_value::<LoginBody>(json!({"email": "a", "otp": 1})).is_err());
        assert!(serde_json::from_value::<RoleBody>(json!({"role": "admin", "x": 1})).is_err());
    }

    #[test]
    fn registration_uses_the_domain_defaults() {
        let account = validate_registration(body(json!({
            "email": "ada@example.com", "password": "ten chars!"
        })))
        .unwrap();
        let ops = registration_ops("usr_1", &account, "203.0.113.7");
        let names: Vec<&str> = ops.iter().map(|op| op.op.as_str()).collect();
        assert_eq!(
            names,
            [
                "accounts.create_user",
                "accounts.create_credits",
                "accounts.create_budget_settings",
                "accounts.audit"
            ]
        );
        assert_eq!(ops[0].params["name"], Value::Null);
        assert_eq!(ops[1].params["tier"], json!("free"));
        assert_eq!(ops[1].params["max_calls_per_day"], json!(3));
        assert_eq!(ops[1].params["max_call_duration_seconds"], json!(300));
        assert_eq!(ops[1].params["monthly_credit_allowance"], json!(0));
        assert_eq!(ops[2].params["max_cost_per_call_cents"], json!(1000));
        assert_eq!(ops[2].params["warn_at_percent_per_call"], json!(75));
        assert_eq!(ops[3].params["event_type"], json!("register"));
    }

    #[test]
    fn login_needs_both_fields_but_no_policy() {
        let credentials = login_credentials(LoginBody {
            email: Some("  ADA@example.com ".to_owned()),
            password: Some("short".to_owned()),
        })
        .expect("any non-empty values");
        assert_eq!(credentials.email, "ada@example.com");
        assert_eq!(credentials.password, "short");
        let errors = login_credentials(LoginBody {
            email: Some(" ".to_owned()),
            password: Some(String::new()),
        })
        .unwrap_err();
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn trusted_devices_draw_on_their_own_budget_only() {
        let limits = LoginLimits {
            per_ip: RateLimitPolicy::LOGIN_FAILURES_PER_IP,
            per_account: RateLimitPolicy::LOGIN_FAILURES_PER_ACCOUNT,
            per_device: RateLimitPolicy {
                max_events: 7,
                window_secs: 60,
            },
        };
        let account = account_ref("ada@example.com");
        assert_eq!(
            LoginBudget::new(&limits, "2001:db8::1", &account, Some("dev_1")),
            LoginBudget::Trusted {
                device: LimitKey::login_device(&account, "dev_1"),
                policy: limits.per_device,
            }
        );
        assert_eq!(
            LoginBudget::new(&limits, "2001:db8::1", &account, None),
            LoginBudget::Untrusted {
                ip: (LimitKey::login_ip("2001:db8::ffff"), limits.per_ip),
                account: (LimitKey::login_account(&account), limits.per_account),
            }
        );
    }

    #[test]
    fn roles_are_user_or_admin() {
        assert_eq!(
            parse_role(RoleBody {
                role: Some("admin".to_owned())
            }),
            Ok(Role::Admin)
        );
        for bad in [Some("root"), Some("Admin"), None] {
            let errors = parse_role(RoleBody {
                role: bad.map(str::to_owned),
            })
            .unwrap_err();
            assert!(errors.get("role").is_some());
        }
        assert!(is_plausible_user_id("usr_0123"));
        assert!(!is_plausible_user_id(""));
        assert!(!is_plausible_user_id("usr\n1"));
        assert!(!is_plausible_user_id(&"x".repeat(256)));
    }

    #[test]
    fn every_gateway_call_matches_its_spec() {
        let account = validate_registration(body(json!({
            "email": "ada@example.com", "password": "ten chars!", "name": "Ada", "phone": "+15551234567"
        })))
        .expect("valid");
        let credentials = Credentials {
            email: "ada@example.com".to_owned(),
            password: "ten chars!".to_owned(),
        };
        let session = Session {
            claims: SessionClaims {
                jti: "tok_1".to_owned(),
                sub: "usr_1".to_owned(),
                email: "ada@example.com".to_owned(),
                role: Role::User,
            },
            expires_at: 1_800_000_000,
            access: Access::User,
        };
        let mut calls = registration_ops("usr_1", &account, "203.0.113.7");
        calls.extend(logout_ops(&session, "203.0.113.7"));
        calls.push(login_op(&credentials, "203.0.113.7"));
        calls.push(get_user_op("usr_1"));
        calls.push(set_role_op("usr_2", Role::Admin, "usr_1", "203.0.113.7"));
        calls.push(audit_op("login_failure", None, "203.0.113.7"));
        for call in calls {
            assert_eq!(call.conforms(), Ok(()), "{}", call.op);
        }
    }

    #[test]
    fn users_have_one_public_shape() {
        let mut row = Map::new();
        row.insert("id".into(), json!("usr_1"));
        row.insert("email".into(), json!("ada@example.com"));
        row.insert("password_upgraded".into(), json!(true));
        row.insert("subscription_tier".into(), json!("free"));
        let user = user_json(&row);
        let mut keys: Vec<&String> = user.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "created_at",
                "email",
                "id",
                "last_login_at",
                "name",
                "phone",
                "role"
            ]
        );
        assert_eq!(user["phone"], Value::Null);
    }
}
