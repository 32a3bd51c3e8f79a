//! Credits and their ledger, budgets, Stripe webhooks, and the admin report.
//!
//! Every number a rule depends on comes from `callmeback_domain` (`Tier::limits()`,
//! `can_start_call`, `BudgetSettings`); the gateway operations (`db-gateway/src/ops/billing.rs`)
//! store and count, and the routes here put the two together. Nothing takes a user id from the
//! path, the query or the body: the caller's own id comes from the session, so user A's token can
//! only ever read or change user A's credits, ledger and budget.
//!
//! # Routes
//! - `GET /api/credits`: balance, tier, the tier's limits, calls started today and what is left.
//!   "Today" is the UTC calendar day (the same boundary the call allowance and the admin report
//!   use), so the daily allowance resets at 00:00 UTC for everyone.
//! - `GET /api/credits/transactions?limit=&cursor=`: the caller's ledger, newest first, by keyset
//!   pagination. The cursor is opaque to clients: base64url of `created_at|id` of the last row of
//!   the previous page. A cursor that does not decode answers 400 `invalid_cursor`.
//! - `GET`/`PUT /api/budget`: spending caps. `GET` answers the domain defaults when the user has
//!   no settings row (`updated_at: null`); `is_default` says whether the settings equal the
//!   defaults, whoever stored them. `PUT` replaces all four fields (each is required) after
//!   `BudgetSettings::validate`.
//! - `POST /api/webhooks/stripe`: see below.
//! - `GET /api/admin/stats`: the design document's §13 reports, one gateway batch.
//!
//! # Stripe webhooks
//! The signature is checked on the raw body against every secret in `STRIPE_WEBHOOK_SECRETS`
//! (comma-separated, so a secret can be rotated), with Stripe's 300 s tolerance. A forged or
//! malformed signature answers 400 `invalid_signature`; a genuine but old one answers 400
//! `stale_signature` (the domain check reports staleness only after the signature matched, so the
//! distinction tells an attacker nothing, and it tells an operator the clock or a replay is at
//! fault). The event id is recorded in `processed_webhook_events` in the same gateway transaction
//! as the event's effect: a replay answers 200 `{received: true, duplicate: true}` and changes
//! nothing.
//!
//! Events acted on, and the contract the checkout code (the frontend's server side and the Stripe
//! configuration) must follow:
//! - `checkout.session.completed` (mode `payment`, `payment_status` `paid`) and
//!   `payment_intent.succeeded` buy credits. Set `client_reference_id` to the user id and
//!   `metadata: {user_id, credits}` on the Checkout Session, and the same metadata on the
//!   PaymentIntent (`payment_intent_data.metadata`). `credits` is a whole number from 1 to
//!   100000. The purchase is keyed on the PaymentIntent id, so the session event and the
//!   PaymentIntent event of one purchase credit it once, whichever arrives first.
//! - `invoice.paid` for a subscription refills its monthly credits and sets the tier, status and
//!   limits from `Tier::limits()`. The tier is the price's `lookup_key` (`basic`, `premium`,
//!   `unlimited`, optionally followed by `_` and anything, e.g. `premium_monthly`) or
//!   `metadata.tier` on the subscription. The user is the subscription's `metadata.user_id`, else
//!   the user whose `stripe_customer_id` is the invoice's customer, else the user who has this
//!   subscription on file.
//! - `customer.subscription.deleted` returns that user to the free tier; credits are kept.
//!
//! Other event types answer 200 `{received: true, ignored: true}`. So do acted-on events that
//! cannot be applied (no such user, metadata missing or invalid, a subscription checkout whose
//! invoice does the work): Stripe would otherwise retry them for days, and a retry cannot fix
//! them. They are logged with the event id and a reason (never personal data) for an operator to
//! reconcile. A body that is not JSON, or not an event, after a valid signature answers 400.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use callmeback_domain::ids::{new_id, prefix};
use callmeback_domain::stripe::DEFAULT_TOLERANCE_SECS;
use callmeback_domain::{
    BudgetSettings, FieldError, FieldErrors, StripeSigError, Tier, ValidationError, can_start_call,
    verify_stripe_signature,
};
use callmeback_gateway_api::{OpCall, OpResult, codes};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use worker::{Method, Response};

use super::{Access, RouteDef, RouteRequest, Service, json_response, random_16};
use crate::ctx::{read_body, read_json};
use crate::error::ApiError;
use crate::gateway::GatewayError;
use crate::rows::{self, bad_row, first_row, int, optional_int, text};
use crate::session::{authed_batch, authed_call};
use crate::time::rfc3339_secs;

const GET_CREDITS: &str = "getCredits";
const LIST_TRANSACTIONS: &str = "listCreditTransactions";
const GET_BUDGET: &str = "getBudget";
const PUT_BUDGET: &str = "putBudget";
const STRIPE_WEBHOOK: &str = "stripeWebhook";
const ADMIN_STATS: &str = "getAdminStats";

pub(super) const ROUTES: &[RouteDef] = &[
    RouteDef::new(
        Method::Get,
        "/api/credits",
        Access::User,
        Service::Billing,
        GET_CREDITS,
    ),
    RouteDef::new(
        Method::Get,
        "/api/credits/transactions",
        Access::User,
        Service::Billing,
        LIST_TRANSACTIONS,
    ),
    RouteDef::new(
        Method::Get,
        "/api/budget",
        Access::User,
        Service::Billing,
        GET_BUDGET,
    ),
    RouteDef::new(
        Method::Put,
        "/api/budget",
        Access::User,
        Service::Billing,
        PUT_BUDGET,
    ),
    RouteDef::new(
        Method::Post,
        "/api/webhooks/stripe",
        Access::Public,
        Service::Billing,
        STRIPE_WEBHOOK,
    ),
    RouteDef::new(
        Method::Get,
        "/api/admin/stats",
        Access::Admin,
        Service::Billing,
        ADMIN_STATS,
    ),
];

pub(super) async fn handle(route: &RouteDef, request: RouteRequest) -> Result<Response, ApiError> {
    match route.name {
        GET_CREDITS => get_credits(request).await,
        LIST_TRANSACTIONS => list_transactions(request).await,
        GET_BUDGET => get_budget(request).await,
        PUT_BUDGET => put_budget(request).await,
        STRIPE_WEBHOOK => stripe_webhook(request).await,
        ADMIN_STATS => admin_stats(request).await,
        _ => Err(ApiError::not_found()),
    }
}

// ---------------------------------------------------------------------------------------------
// Credits
// ---------------------------------------------------------------------------------------------

async fn get_credits(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let op = OpCall::new("credits.summary").param("user_id", session.user_id());
    let result = authed_call(&request.ctx, session, op).await?;
    json_response(200, &credits_body(first_row(&result)?)?)
}

/// The `GET /api/credits` body from a `credits.summary` row. A user without a credits row yet is
/// on the default tier with no credits, exactly what the column defaults would say.
fn credits_body(row: &Map<String, Value>) -> Result<Value, ApiError> {
    let available_credits = optional_int(row, "available_credits")?.unwrap_or(0);
    let tier = match row.get("subscription_tier") {
        None | Some(Value::Null) => Tier::default(),
        Some(value) => value
            .as_str()
            .and_then(|name| name.parse().ok())
            .ok_or_else(|| bad_row("subscription_tier"))?,
    };
    let calls_today =
        u32::try_from(int(row, "calls_today")?).map_err(|_| bad_row("calls_today"))?;
    let limits = tier.limits();
    let next_call = match can_start_call(tier, available_credits, calls_today) {
        Ok(grant) => json!({"allowed": true, "max_seconds": grant.max_seconds}),
        Err(refusal) => json!({"allowed": false, "reason": refusal.code()}),
    };
    Ok(json!({
        "available_credits": available_credits,
        "tier": tier,
        "subscription_status": row.get("subscription_status").cloned().unwrap_or(Value::Null),
        "subscription_renews_at": row.get("subscription_end_date").cloned().unwrap_or(Value::Null),
        "limits": limits,
        "calls_today": calls_today,
        "calls_remaining_today": limits.calls_per_day.map(|limit| limit.saturating_sub(calls_today)),
        "next_call": next_call,
    }))
}

/// Page size of `GET /api/credits/transactions` when `limit` is absent.
const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page a client may ask for.
const MAX_PAGE_SIZE: u32 = 100;

async fn list_transactions(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let url = request.req.url()?;
    let query = TransactionsQuery::parse(url.query_pairs())?;

    let mut op = OpCall::new("credits.transactions")
        .param("user_id", session.user_id())
        // One row more than the page: its presence says whether there is a next page.
        .param("limit", query.limit + 1);
    if let Some(cursor) = &query.cursor {
        op = op
            .param("before_created_at", cursor.created_at.as_str())
            .param("before_id", cursor.id.as_str());
    }
    let result = authed_call(&request.ctx, session, op).await?;
    json_response(200, &transactions_body(result, query.limit)?)
}

#[derive(Debug, PartialEq, Eq)]
struct TransactionsQuery {
    limit: u32,
    cursor: Option<Cursor>,
}

impl TransactionsQuery {
    /// Reads `limit` and `cursor`; other query parameters are ignored (cache busters and the
    /// like are common in frontends).
    fn parse<'a>(
        pairs: impl Iterator<Item = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>,
    ) -> Result<Self, ApiError> {
        let mut query = TransactionsQuery {
            limit: DEFAULT_PAGE_SIZE,
            cursor: None,
        };
        for (key, value) in pairs {
            match key.as_ref() {
                "limit" => {
                    query.limit = value
                        .parse::<u32>()
                        .ok()
                        .filter(|limit| (1..=MAX_PAGE_SIZE).contains(limit))
                        .ok_or_else(|| {
                            let mut errors = FieldErrors::new();
                            errors.add(
                                "limit",
                                ValidationError::OutOfRange {
                                    min: 1,
                                    max: i64::from(MAX_PAGE_SIZE),
                                },
                            );
                            ApiError::validation_failed(errors)
                        })?;
                }
                "cursor" => query.cursor = Some(Cursor::decode(&value)?),
                _ => {}
            }
        }
        Ok(query)
    }
}

/// Where the previous page ended: the `(created_at, id)` of its last row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    /// Exactly as the gateway encodes timestamps: `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    created_at: String,
    id: String,
}

impl Cursor {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}|{}", self.created_at, self.id))
    }

    /// Decodes and fully checks a cursor, so that nothing the gateway would refuse reaches it.
    fn decode(text: &str) -> Result<Cursor, ApiError> {
        let invalid = || ApiError::bad_request("invalid_cursor", "the cursor is not valid");
        if text.len() > 512 {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
        let decoded = String::from_utf8(bytes).map_err(|_| invalid())?;
        let (created_at, id) = decoded.split_once('|').ok_or_else(invalid)?;
        let id_ok = (1..=255).contains(&id.len()) && !id.chars().any(char::is_control);
        if !is_gateway_timestamp(created_at) || !id_ok {
            return Err(invalid());
        }
        Ok(Cursor {
            created_at: created_at.to_owned(),
            id: id.to_owned(),
        })
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` with a real calendar date: the one shape the gateway emits for
/// `timestamptz`, and one it will parse back.
fn is_gateway_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() != 27 {
        return false;
    }
    let shape_ok = bytes.iter().enumerate().all(|(index, &byte)| match index {
        4 | 7 => byte == b'-',
        10 => byte == b'T',
        13 | 16 => byte == b':',
        19 => byte == b'.',
        26 => byte == b'Z',
        _ => byte.is_ascii_digit(),
    });
    if !shape_ok {
        return false;
    }
    let number = |range: std::ops::Range<usize>| -> u32 {
        text[range]
            .parse()
            .expect("invariant: the shape check admitted only digits here")
    };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    let (hour, minute, second) = (number(11..13), number(14..16), number(17..19));
    let year = i32::try_from(year).expect("invariant: four digits fit in i32");
    chrono::NaiveDate::from_ymd_opt(year, month, day).is_some()
        && hour < 24
        && minute < 60
        && second < 60
}

/// The public fields of a ledger row.
const TRANSACTION_FIELDS: &[&str] = &[
    "id",
    "amount",
    "type",
    "description",
    "balance_before",
    "balance_after",
    "call_id",
    "created_at",
];

fn transactions_body(result: OpResult, limit: u32) -> Result<Value, ApiError> {
    let page_size = usize::try_from(limit).unwrap_or(usize::MAX);
    let has_more = result.rows.len() > page_size;
    let rows = &result.rows[..result.rows.len().min(page_size)];
    let next_cursor = match rows.last() {
        Some(last) if has_more => Some(
            Cursor {
                created_at: text(last, "created_at")?.to_owned(),
                id: text(last, "id")?.to_owned(),
            }
            .encode(),
        ),
        _ => None,
    };
    let transactions: Vec<Value> = rows
        .iter()
        .map(|row| {
            let public: Map<String, Value> = TRANSACTION_FIELDS
                .iter()
                .map(|field| {
                    let value = row.get(*field).cloned().unwrap_or(Value::Null);
                    ((*field).to_owned(), value)
                })
                .collect();
            Value::Object(public)
        })
        .collect();
    Ok(json!({ "transactions": transactions, "next_cursor": next_cursor }))
}

// ---------------------------------------------------------------------------------------------
// Budget
// ---------------------------------------------------------------------------------------------

async fn get_budget(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let op = OpCall::new("budget.get").param("user_id", session.user_id());
    let result = authed_call(&request.ctx, session, op).await?;
    let body = match result.first() {
        Some(row) => budget_body(&budget_from_row(row)?, row.get("updated_at")),
        None => budget_body(&BudgetSettings::default(), None),
    };
    json_response(200, &body)
}

async fn put_budget(mut request: RouteRequest) -> Result<Response, ApiError> {
    let body: Map<String, Value> = read_json(&mut request.req).await?;
    let settings = budget_from_body(&body)?;
    let session = request.session()?;
    let op = OpCall::new("budget.put")
        .param("user_id", session.user_id())
        .param("max_cost_per_call_cents", settings.max_cost_per_call_cents)
        .param("max_monthly_spend_cents", settings.max_monthly_spend_cents)
        .param("warn_at_percent", settings.warn_at_percent)
        .param("auto_cutoff", settings.auto_cutoff);
    let result = authed_call(&request.ctx, session, op).await?;
    let row = first_row(&result)?;
    json_response(
        200,
        &budget_body(&budget_from_row(row)?, row.get("updated_at")),
    )
}

const BUDGET_INT_FIELDS: [&str; 3] = [
    "max_cost_per_call_cents",
    "max_monthly_spend_cents",
    "warn_at_percent",
];

/// A full `PUT /api/budget` body: every field required, each checked for its type, then the
/// domain's rules. Unknown members are refused like in every body of the API.
fn budget_from_body(body: &Map<String, Value>) -> Result<BudgetSettings, ApiError> {
    if let Some(unknown) = body
        .keys()
        .find(|key| !BUDGET_INT_FIELDS.contains(&key.as_str()) && key.as_str() != "auto_cutoff")
    {
        let name: String = unknown.chars().take(64).collect();
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("unknown field `{name}`"),
        ));
    }
    let mut errors = FieldErrors::new();
    let mut ints = [0i64; 3];
    for (slot, field) in ints.iter_mut().zip(BUDGET_INT_FIELDS) {
        match body.get(field) {
            None | Some(Value::Null) => errors.add(field, ValidationError::Required),
            Some(value) => match value.as_i64() {
                Some(number) => *slot = number,
                None => errors.add(field, FieldError::new("invalid_type", "must be an integer")),
            },
        }
    }
    let auto_cutoff = match body.get("auto_cutoff") {
        None | Some(Value::Null) => {
            errors.add("auto_cutoff", ValidationError::Required);
            false
        }
        Some(value) => value.as_bool().unwrap_or_else(|| {
            errors.add(
                "auto_cutoff",
                FieldError::new("invalid_type", "must be true or false"),
            );
            false
        }),
    };
    errors.into_result().map_err(ApiError::validation_failed)?;
    let [
        max_cost_per_call_cents,
        max_monthly_spend_cents,
        warn_at_percent,
    ] = ints;
    let settings = BudgetSettings {
        max_cost_per_call_cents,
        max_monthly_spend_cents,
        warn_at_percent,
        auto_cutoff,
    };
    settings.validate().map_err(ApiError::validation_failed)?;
    Ok(settings)
}

fn budget_from_row(row: &Map<String, Value>) -> Result<BudgetSettings, ApiError> {
    Ok(BudgetSettings {
        max_cost_per_call_cents: int(row, "max_cost_per_call_cents")?,
        max_monthly_spend_cents: int(row, "max_monthly_spend_cents")?,
        warn_at_percent: int(row, "warn_at_percent")?,
        auto_cutoff: row
            .get("auto_cutoff")
            .and_then(Value::as_bool)
            .ok_or_else(|| bad_row("auto_cutoff"))?,
    })
}

fn budget_body(settings: &BudgetSettings, updated_at: Option<&Value>) -> Value {
    json!({
        "max_cost_per_call_cents": settings.max_cost_per_call_cents,
        "max_monthly_spend_cents": settings.max_monthly_spend_cents,
        "warn_at_percent": settings.warn_at_percent,
        "auto_cutoff": settings.auto_cutoff,
        "is_default": *settings == BudgetSettings::default(),
        "updated_at": updated_at.cloned().unwrap_or(Value::Null),
    })
}

// ---------------------------------------------------------------------------------------------
// Stripe webhooks
// ---------------------------------------------------------------------------------------------

/// Stripe events are small, but an invoice with many lines is larger than a typical API body.
const MAX_WEBHOOK_BYTES: usize = 256 * 1024;
/// Most credits one purchase may carry (metadata is configuration, so this bounds a mistake).
const MAX_PURCHASE_CREDITS: u32 = 100_000;

async fn stripe_webhook(mut request: RouteRequest) -> Result<Response, ApiError> {
    let ctx = &request.ctx;
    let header = request
        .req
        .headers()
        .get("stripe-signature")
        .ok()
        .flatten()
        .ok_or_else(invalid_signature)?;
    let secrets = ctx.config.stripe.get()?.webhook_secrets();

    let body = read_body(&mut request.req, MAX_WEBHOOK_BYTES).await?;

    verify_stripe_signature(
        &header,
        &body,
        &secrets,
        ctx.now_secs(),
        DEFAULT_TOLERANCE_SECS,
    )
    .map_err(|error| {
        worker::console_log!(
            "request {}: stripe webhook refused ({})",
            ctx.request_id,
            error.code()
        );
        match error {
            StripeSigError::Stale => ApiError::bad_request(
                "stale_signature",
                "the signature timestamp is outside the tolerance",
            ),
            _ => invalid_signature(),
        }
    })?;

    let event = parse_stripe_event(&body)?;
    let action = plan_stripe_event(&event);
    if let StripeAction::Ignore { reason } = action {
        worker::console_log!(
            "request {}: stripe event {} ({}) ignored: {reason}",
            ctx.request_id,
            event.id,
            event.kind
        );
        return json_response(
            200,
            &json!({"received": true, "ignored": true, "reason": reason}),
        );
    }
    let Some(ops) = action_ops(&event, &action, random_16()?) else {
        worker::console_error!(
            "stripe event {}: no operations for an applicable action",
            event.id
        );
        return Err(ApiError::internal());
    };

    match ctx.gateway()?.batch(ops).await {
        Ok(response) => {
            let effect = response.results.get(1);
            if matches!(action, StripeAction::Purchase { .. })
                && effect.is_some_and(|result| result.row_count == 0)
            {
                // The other event of the same purchase got there first.
                worker::console_log!(
                    "request {}: stripe event {}: payment already credited",
                    ctx.request_id,
                    event.id
                );
                return json_response(200, &json!({"received": true, "duplicate": true}));
            }
            worker::console_log!(
                "request {}: stripe event {} ({}) applied",
                ctx.request_id,
                event.id,
                event.kind
            );
            json_response(200, &json!({"received": true}))
        }
        Err(error) => match webhook_failure(&action, &error) {
            Some(body) => {
                worker::console_log!(
                    "request {}: stripe event {} ({}): {}",
                    ctx.request_id,
                    event.id,
                    event.kind,
                    body.get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or("duplicate")
                );
                json_response(200, &body)
            }
            None => Err(ApiError::from(error)),
        },
    }
}

/// How a refused webhook batch is answered when it is not a real failure: a replayed event id
/// (op 0) or a duplicate purchase racing in under another event id are duplicates; a user or
/// subscription that does not exist is ignored (a retry cannot fix it). Anything else is an
/// error Stripe should retry.
fn webhook_failure(action: &StripeAction, error: &GatewayError) -> Option<Value> {
    let GatewayError::Rejected { code, op_index, .. } = error else {
        return None;
    };
    match (op_index, code.as_str(), action) {
        (Some(0), codes::PRECONDITION_FAILED, _) => {
            Some(json!({"received": true, "duplicate": true}))
        }
        (Some(1), codes::CONFLICT, StripeAction::Purchase { .. }) => {
            Some(json!({"received": true, "duplicate": true}))
        }
        (Some(1), codes::FOREIGN_KEY_VIOLATION, StripeAction::Purchase { .. }) => {
            Some(json!({"received": true, "ignored": true, "reason": "unknown_user"}))
        }
        (Some(1), codes::PRECONDITION_FAILED, StripeAction::SubscriptionPaid { .. }) => {
            Some(json!({"received": true, "ignored": true, "reason": "unknown_user"}))
        }
        (Some(1), codes::PRECONDITION_FAILED, StripeAction::SubscriptionEnded { .. }) => {
            Some(json!({"received": true, "ignored": true, "reason": "unknown_subscription"}))
        }
        _ => None,
    }
}

/// The parts of a Stripe event this handler reads; Stripe sends many more.
#[derive(Debug, Deserialize)]
struct StripeEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: StripeEventData,
}

#[derive(Debug, Deserialize)]
struct StripeEventData {
    object: Value,
}

fn parse_stripe_event(body: &[u8]) -> Result<StripeEvent, ApiError> {
    let event: StripeEvent = serde_json::from_slice(body).map_err(|error| {
        if error.is_syntax() || error.is_eof() {
            ApiError::bad_request("invalid_json", "the body is not valid JSON")
        } else {
            ApiError::bad_request("invalid_event", "the body is not a Stripe event")
        }
    })?;
    let id_ok = (1..=255).contains(&event.id.len()) && !event.id.chars().any(char::is_control);
    if !id_ok || event.kind.is_empty() || event.kind.len() > 255 || !event.data.object.is_object() {
        return Err(ApiError::bad_request(
            "invalid_event",
            "the body is not a Stripe event",
        ));
    }
    Ok(event)
}

/// What an event asks for, decided without I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StripeAction {
    Purchase {
        user_id: String,
        credits: u32,
        payment_intent_id: String,
    },
    SubscriptionPaid {
        user_id: Option<String>,
        customer_id: Option<String>,
        subscription_id: String,
        tier: Tier,
        /// The billing period the invoice pays for, unix seconds.
        period: Option<(i64, i64)>,
    },
    SubscriptionEnded {
        user_id: Option<String>,
        customer_id: Option<String>,
        subscription_id: String,
        ended_at: Option<i64>,
    },
    Ignore {
        reason: &'static str,
    },
}

fn plan_stripe_event(event: &StripeEvent) -> StripeAction {
    let object = &event.data.object;
    match event.kind.as_str() {
        "checkout.session.completed" => {
            if str_at(object, "/mode").is_some_and(|mode| mode != "payment") {
                return ignore("subscription_checkout");
            }
            if str_at(object, "/payment_status") != Some("paid") {
                return ignore("not_paid");
            }
            let Some(payment_intent_id) = id_at(object, "/payment_intent") else {
                return ignore("missing_payment_intent");
            };
            let user_id = id_text(object, "/client_reference_id")
                .or_else(|| id_text(object, "/metadata/user_id"));
            purchase(user_id, object, payment_intent_id)
        }
        "payment_intent.succeeded" => {
            let Some(payment_intent_id) = id_text(object, "/id") else {
                return ignore("missing_payment_intent");
            };
            purchase(
                id_text(object, "/metadata/user_id"),
                object,
                payment_intent_id,
            )
        }
        "invoice.paid" => {
            let Some(subscription_id) = id_at(object, "/subscription")
                .or_else(|| id_at(object, "/parent/subscription_details/subscription"))
            else {
                return ignore("not_a_subscription_invoice");
            };
            let Some(tier) = invoice_tier(object) else {
                return ignore("unknown_tier");
            };
            let user_id = INVOICE_METADATA
                .into_iter()
                .find_map(|metadata| id_text(object, &format!("{metadata}/user_id")));
            let period = match (
                object
                    .pointer("/lines/data/0/period/start")
                    .and_then(Value::as_i64),
                object
                    .pointer("/lines/data/0/period/end")
                    .and_then(Value::as_i64),
            ) {
                (Some(start), Some(end)) if end >= start => Some((start, end)),
                _ => None,
            };
            StripeAction::SubscriptionPaid {
                user_id,
                customer_id: id_at(object, "/customer"),
                subscription_id,
                tier,
                period,
            }
        }
        "customer.subscription.deleted" => {
            let Some(subscription_id) = id_text(object, "/id") else {
                return ignore("missing_subscription");
            };
            StripeAction::SubscriptionEnded {
                user_id: id_text(object, "/metadata/user_id"),
                customer_id: id_at(object, "/customer"),
                subscription_id,
                ended_at: object
                    .get("ended_at")
                    .and_then(Value::as_i64)
                    .or_else(|| object.get("canceled_at").and_then(Value::as_i64)),
            }
        }
        _ => ignore("unhandled_event_type"),
    }
}

fn ignore(reason: &'static str) -> StripeAction {
    StripeAction::Ignore { reason }
}

fn purchase(user_id: Option<String>, object: &Value, payment_intent_id: String) -> StripeAction {
    let Some(user_id) = user_id else {
        return ignore("missing_user");
    };
    match purchase_credits(object.pointer("/metadata/credits")) {
        Some(credits) => StripeAction::Purchase {
            user_id,
            credits,
            payment_intent_id,
        },
        None => ignore("invalid_credits_metadata"),
    }
}

/// `metadata.credits`: Stripe metadata values are strings, but a number is accepted too.
fn purchase_credits(value: Option<&Value>) -> Option<u32> {
    let credits = match value? {
        Value::String(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse().ok()?
        }
        Value::Number(number) => u32::try_from(number.as_u64()?).ok()?,
        _ => return None,
    };
    (1..=MAX_PURCHASE_CREDITS)
        .contains(&credits)
        .then_some(credits)
}

/// Where subscription metadata sits in an invoice, newest API version first.
const INVOICE_METADATA: [&str; 3] = [
    "/parent/subscription_details/metadata",
    "/subscription_details/metadata",
    "/metadata",
];

/// The paid tier an invoice is for: a line's price `lookup_key`, else `metadata.tier`.
fn invoice_tier(invoice: &Value) -> Option<Tier> {
    let from_lines = invoice
        .pointer("/lines/data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|line| str_at(line, "/price/lookup_key").and_then(paid_tier_from_key));
    from_lines.or_else(|| {
        INVOICE_METADATA
            .into_iter()
            .find_map(|metadata| str_at(invoice, &format!("{metadata}/tier")))
            .and_then(paid_tier_from_key)
    })
}

/// `premium` or `premium_monthly` → premium. The free tier is never bought.
fn paid_tier_from_key(key: &str) -> Option<Tier> {
    let name = key.split_once('_').map_or(key, |(name, _)| name);
    name.parse::<Tier>().ok().filter(|tier| *tier != Tier::Free)
}

/// The gateway operations an action needs, `webhooks.record_event` first; `None` for nothing.
fn action_ops(event: &StripeEvent, action: &StripeAction, random: [u8; 16]) -> Option<Vec<OpCall>> {
    let record = OpCall::new("webhooks.record_event")
        .param("provider", "stripe")
        .param("event_id", event.id.as_str())
        .param("event_type", event.kind.as_str());
    let transaction_id = new_id(prefix::CREDIT_TRANSACTION, random);
    let effect = match action {
        StripeAction::Ignore { .. } => return None,
        StripeAction::Purchase {
            user_id,
            credits,
            payment_intent_id,
        } => OpCall::new("credits.add")
            .param("user_id", user_id.as_str())
            .param("amount", *credits)
            .param("type", "purchase")
            .param("transaction_id", transaction_id)
            .param("payment_intent_id", payment_intent_id.as_str())
            .param("description", format!("Purchase of {credits} credits")),
        StripeAction::SubscriptionPaid {
            user_id,
            customer_id,
            subscription_id,
            tier,
            period,
        } => {
            let limits = tier.limits();
            let monthly = limits.monthly_credits.unwrap_or(0);
            let mut op = OpCall::new("subscriptions.refill")
                .param("user_id", user_id.clone())
                .param("stripe_customer_id", customer_id.clone())
                .param("subscription_id", subscription_id.as_str())
                .param("tier", tier.as_str())
                .param("monthly_credits", monthly)
                .param("max_calls_per_day", limits.calls_per_day)
                .param("max_call_seconds", limits.max_call_seconds)
                .param("transaction_id", transaction_id)
                .param(
                    "description",
                    format!("{tier} subscription: {monthly} monthly credits"),
                );
            if let Some((start, end)) = period
                && let (Some(start), Some(end)) = (rfc3339_secs(*start), rfc3339_secs(*end))
            {
                op = op.param("period_start", start).param("period_end", end);
            }
            op
        }
        StripeAction::SubscriptionEnded {
            user_id,
            customer_id,
            subscription_id,
            ended_at,
        } => {
            let free = Tier::Free;
            let limits = free.limits();
            OpCall::new("subscriptions.end")
                .param("subscription_id", subscription_id.as_str())
                .param("user_id", user_id.clone())
                .param("stripe_customer_id", customer_id.clone())
                .param("tier", free.as_str())
                .param("monthly_credits", limits.monthly_credits.unwrap_or(0))
                .param("max_calls_per_day", limits.calls_per_day)
                .param("max_call_seconds", limits.max_call_seconds)
                .param("ended_at", ended_at.and_then(rfc3339_secs))
        }
    };
    Some(vec![record, effect])
}

/// A string at a JSON pointer, if present and non-empty.
fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
}

/// An identifier string at a pointer: non-empty, at most 255 characters, no control characters.
fn id_text(value: &Value, pointer: &str) -> Option<String> {
    str_at(value, pointer)
        .filter(|text| text.len() <= 255 && !text.chars().any(char::is_control))
        .map(str::to_owned)
}

/// A Stripe reference that is either an id string or, when expanded, an object with an `id`.
fn id_at(value: &Value, pointer: &str) -> Option<String> {
    id_text(value, pointer).or_else(|| id_text(value, &format!("{pointer}/id")))
}

fn invalid_signature() -> ApiError {
    ApiError::bad_request(
        "invalid_signature",
        "the Stripe-Signature header is missing or does not match",
    )
}

// ---------------------------------------------------------------------------------------------
// Admin report
// ---------------------------------------------------------------------------------------------

/// Window of the cost and persona reports (design document §13).
const COST_WINDOW_DAYS: u32 = 30;
/// Window of the per-day report.
const DAILY_WINDOW_DAYS: u32 = 7;
/// How many personas the ranking lists.
const TOP_PERSONAS: u32 = 10;
/// "Low credits" means fewer than this many (design document §13).
const LOW_CREDIT_THRESHOLD: u32 = 10;

async fn admin_stats(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let credit_tiers: Vec<&str> = Tier::ALL
        .into_iter()
        .filter(|tier| tier.limits().needs_credits)
        .map(Tier::as_str)
        .collect();
    let ops = vec![
        OpCall::new("admin.cost_by_provider").param("days", COST_WINDOW_DAYS),
        OpCall::new("admin.top_personas")
            .param("days", COST_WINDOW_DAYS)
            .param("limit", TOP_PERSONAS),
        OpCall::new("admin.revenue_by_day").param("days", DAILY_WINDOW_DAYS),
        OpCall::new("admin.calls_today"),
        OpCall::new("admin.low_credit_users")
            .param("below", LOW_CREDIT_THRESHOLD)
            .param("tiers", credit_tiers.clone()),
    ];
    let results = authed_batch(&request.ctx, session, ops).await?;
    json_response(200, &admin_stats_body(&results, &credit_tiers)?)
}

fn admin_stats_body(results: &[OpResult], credit_tiers: &[&str]) -> Result<Value, ApiError> {
    let [cost, personas, days, today, low] = results else {
        worker::console_error!("admin stats batch returned {} results", results.len());
        return Err(ApiError::internal());
    };
    let personas: Vec<Value> = personas.rows.iter().map(numbers_as_json).collect();
    let days: Vec<Value> = days.rows.iter().map(numbers_as_json).collect();
    let mut cost_by_provider = numbers_as_json(first_row(cost)?);
    cost_by_provider["window_days"] = json!(COST_WINDOW_DAYS);
    Ok(json!({
        "cost_by_provider": cost_by_provider,
        "top_personas": {
            "window_days": COST_WINDOW_DAYS,
            "personas": personas,
        },
        "revenue_by_day": {
            "window_days": DAILY_WINDOW_DAYS,
            "days": days,
        },
        "calls_today": numbers_as_json(first_row(today)?),
        "low_credit_users": {
            "below_credits": LOW_CREDIT_THRESHOLD,
            "tiers": credit_tiers,
            "count": int(first_row(low)?, "users")?,
        },
    }))
}

/// Counts cross the gateway as `int8` strings; they are shown as JSON numbers (they are far
/// below 2^53). Money stays a decimal string (`"12.3400"` cents), never a float.
fn numbers_as_json(row: &Map<String, Value>) -> Value {
    let converted = row
        .iter()
        .map(|(key, value)| {
            let is_money = key.ends_with("_cents");
            let value = match value {
                Value::String(_) if !is_money => rows::int8(value)
                    .map(Value::from)
                    .unwrap_or_else(|| value.clone()),
                _ => value.clone(),
            };
            (key.clone(), value)
        })
        .collect();
    Value::Object(converted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("test rows are objects"),
        }
    }

    fn event(kind: &str, object: Value) -> StripeEvent {
        StripeEvent {
            id: "evt_1".to_owned(),
            kind: kind.to_owned(),
            data: StripeEventData { object },
        }
    }

    #[test]
    fn credits_of_a_new_user_are_the_free_tier_defaults() {
        let body = credits_body(&row(json!({
            "user_id": "usr_1", "available_credits": null, "subscription_tier": null,
            "subscription_status": null, "subscription_end_date": null, "calls_today": 1
        })))
        .expect("valid row");
        assert_eq!(body["available_credits"], 0);
        assert_eq!(body["tier"], "free");
        assert_eq!(body["limits"]["calls_per_day"], 3);
        assert_eq!(body["limits"]["max_call_seconds"], 300);
        assert_eq!(body["limits"]["needs_credits"], false);
        assert_eq!(body["calls_today"], 1);
        assert_eq!(body["calls_remaining_today"], 2);
        assert_eq!(
            body["next_call"],
            json!({"allowed": true, "max_seconds": 300})
        );
    }

    #[test]
    fn credits_follow_the_tier_rules() {
        let premium = credits_body(&row(json!({
            "available_credits": 3, "subscription_tier": "premium",
            "subscription_status": "active", "calls_today": 40
        })))
        .expect("valid row");
        assert_eq!(premium["limits"]["calls_per_day"], Value::Null);
        assert_eq!(premium["limits"]["monthly_credits"], 500);
        assert_eq!(premium["calls_remaining_today"], Value::Null);
        // Three credits pay for three minutes, less than premium's 30-minute cap.
        assert_eq!(premium["next_call"]["max_seconds"], 180);

        let basic_broke = credits_body(&row(json!({
            "available_credits": 0, "subscription_tier": "basic", "calls_today": "2"
        })))
        .expect("valid row");
        assert_eq!(
            basic_broke["next_call"],
            json!({"allowed": false, "reason": "insufficient_credits"})
        );
        assert_eq!(basic_broke["calls_remaining_today"], 8);

        let free_used_up = credits_body(&row(json!({
            "available_credits": 0, "subscription_tier": "free", "calls_today": 5
        })))
        .expect("valid row");
        assert_eq!(free_used_up["calls_remaining_today"], 0);
        assert_eq!(free_used_up["next_call"]["reason"], "daily_call_limit");

        // (A row the gateway could not have produced is an internal error; that path logs
        // through the Workers runtime, so it is not exercised natively.)
    }

    fn query(pairs: &[(&str, &str)]) -> Result<TransactionsQuery, ApiError> {
        TransactionsQuery::parse(pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())))
    }

    #[test]
    fn limit_defaults_to_20_and_must_be_1_to_100() {
        assert_eq!(query(&[]).expect("no query").limit, 20);
        assert_eq!(
            query(&[("limit", "100"), ("x", "y")]).expect("max").limit,
            100
        );
        for bad in ["0", "101", "-1", "ten", ""] {
            let error = query(&[("limit", bad)]).expect_err(bad);
            assert_eq!(error.code, "validation_failed");
            assert_eq!(
                error.fields.expect("fields")["limit"]["code"],
                "out_of_range"
            );
        }
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = Cursor {
            created_at: "2026-11-22T10:00:00.123456Z".to_owned(),
            id: "txn_abc".to_owned(),
        };
        let encoded = cursor.encode();
        assert!(
            encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(
            query(&[("cursor", &encoded)]).expect("valid").cursor,
            Some(cursor)
        );

        let encode = |raw: &str| URL_SAFE_NO_PAD.encode(raw);
        for bad in [
            "!!!".to_owned(),
            "".to_owned(),
            encode("no separator"),
            encode("2026-11-22T10:00:00.123456Z|"),
            encode("2026-11-22 10:00:00|txn_1"),
            encode("2026-02-30T10:00:00.000000Z|txn_1"),
            encode("2026-11-22T24:00:00.000000Z|txn_1"),
            encode("2026-11-22T10:00:00.000000+01:00|txn_1"),
            encode("2026-11-22T10:00:00.000000Z|txn\n1"),
            "A".repeat(600),
        ] {
            let error = query(&[("cursor", &bad)]).expect_err(&bad);
            assert_eq!(error.code, "invalid_cursor", "{bad}");
            assert_eq!(error.status, 400);
        }
        assert!(is_gateway_timestamp("2024-02-29T23:59:59.999999Z"));
        assert!(!is_gateway_timestamp("2023-02-29T00:00:00.000000Z"));
        assert!(!is_gateway_timestamp("1900-02-29T00:00:00.000000Z"));
        assert!(is_gateway_timestamp("2000-02-29T00:00:00.000000Z"));
    }

    fn ledger_row(n: i64) -> Map<String, Value> {
        row(json!({
            "id": format!("txn_{n}"), "user_id": "usr_1", "amount": n, "type": "refund",
            "description": null, "balance_before": 0, "balance_after": n, "call_id": null,
            "payment_intent_id": null, "created_at": format!("2026-11-22T10:00:{n:02}.000000Z")
        }))
    }

    #[test]
    fn a_page_with_one_extra_row_has_a_next_cursor() {
        let result = OpResult {
            rows: (0..3).rev().map(ledger_row).collect(),
            row_count: 3,
        };
        let body = transactions_body(result, 2).expect("valid rows");
        let transactions = body["transactions"].as_array().expect("array");
        assert_eq!(transactions.len(), 2);
        assert_eq!(transactions[0]["id"], "txn_2");
        assert!(
            transactions[0].get("user_id").is_none(),
            "only public fields"
        );
        assert!(transactions[0].get("payment_intent_id").is_none());
        let cursor = Cursor::decode(body["next_cursor"].as_str().expect("cursor")).expect("valid");
        assert_eq!(cursor.id, "txn_1");
        assert_eq!(cursor.created_at, "2026-11-22T10:00:01.000000Z");

        let last_page = OpResult {
            rows: vec![ledger_row(0)],
            row_count: 1,
        };
        let body = transactions_body(last_page, 2).expect("valid rows");
        assert_eq!(body["next_cursor"], Value::Null);
    }

    #[test]
    fn budget_bodies_need_every_field_with_its_type_and_the_domain_rules() {
        let valid = row(json!({
            "max_cost_per_call_cents": 500, "max_monthly_spend_cents": 5000,
            "warn_at_percent": 80, "auto_cutoff": false
        }));
        let settings = budget_from_body(&valid).expect("valid");
        assert_eq!(settings.max_cost_per_call_cents, 500);
        assert!(!settings.auto_cutoff);

        let error = budget_from_body(&row(
            json!({"max_cost_per_call_cents": "5", "auto_cutoff": 1}),
        ))
        .expect_err("wrong types");
        let fields = error.fields.expect("fields");
        assert_eq!(fields["max_cost_per_call_cents"]["code"], "invalid_type");
        assert_eq!(fields["max_monthly_spend_cents"]["code"], "required");
        assert_eq!(fields["warn_at_percent"]["code"], "required");
        assert_eq!(fields["auto_cutoff"]["code"], "invalid_type");

        let mut too_big = valid.clone();
        too_big.insert("max_cost_per_call_cents".into(), json!(6000));
        let error = budget_from_body(&too_big).expect_err("per call > monthly");
        assert_eq!(error.code, "validation_failed");
        assert_eq!(
            error.fields.expect("fields")["max_cost_per_call_cents"]["code"],
            "per_call_exceeds_monthly"
        );

        assert_eq!(budget_body(&settings, None)["is_default"], false);
        let defaults = budget_body(&BudgetSettings::default(), None);
        assert_eq!(defaults["is_default"], true);
        assert_eq!(defaults["updated_at"], Value::Null);

        let mut extra = valid;
        extra.insert("user_id".into(), json!("usr_other"));
        assert_eq!(
            budget_from_body(&extra).expect_err("unknown").code,
            "invalid_body"
        );
    }

    #[test]
    fn purchases_read_the_metadata_contract() {
        let session = json!({
            "mode": "payment", "payment_status": "paid", "payment_intent": "pi_1",
            "client_reference_id": "usr_1", "metadata": {"credits": "50"}
        });
        assert_eq!(
            plan_stripe_event(&event("checkout.session.completed", session.clone())),
            StripeAction::Purchase {
                user_id: "usr_1".into(),
                credits: 50,
                payment_intent_id: "pi_1".into()
            }
        );
        let intent = json!({"id": "pi_1", "metadata": {"user_id": "usr_1", "credits": 50}});
        assert_eq!(
            plan_stripe_event(&event("payment_intent.succeeded", intent)),
            StripeAction::Purchase {
                user_id: "usr_1".into(),
                credits: 50,
                payment_intent_id: "pi_1".into()
            }
        );
        let expanded = json!({
            "mode": "payment", "payment_status": "paid", "payment_intent": {"id": "pi_2"},
            "metadata": {"user_id": "usr_2", "credits": "7"}
        });
        assert!(matches!(
            plan_stripe_event(&event("checkout.session.completed", expanded)),
            StripeAction::Purchase { ref payment_intent_id, credits: 7, .. } if payment_intent_id == "pi_2"
        ));

        for (change, reason) in [
            (json!({"mode": "subscription"}), "subscription_checkout"),
            (json!({"payment_status": "unpaid"}), "not_paid"),
            (json!({"payment_intent": null}), "missing_payment_intent"),
            (json!({"client_reference_id": null}), "missing_user"),
            (
                json!({"metadata": {"credits": "0"}}),
                "invalid_credits_metadata",
            ),
            (
                json!({"metadata": {"credits": "100001"}}),
                "invalid_credits_metadata",
            ),
            (
                json!({"metadata": {"credits": "1.5"}}),
                "invalid_credits_metadata",
            ),
            (json!({"metadata": {}}), "invalid_credits_metadata"),
        ] {
            let mut object = session.clone();
            for (key, value) in change.as_object().expect("object") {
                object[key] = value.clone();
            }
            assert_eq!(
                plan_stripe_event(&event("checkout.session.completed", object)),
                StripeAction::Ignore { reason },
                "{change}"
            );
        }
        assert_eq!(
            plan_stripe_event(&event("charge.refunded", json!({}))),
            StripeAction::Ignore {
                reason: "unhandled_event_type"
            }
        );
    }

    #[test]
    fn invoices_name_their_tier_by_lookup_key_or_metadata() {
        let invoice = json!({
            "customer": "cus_1", "subscription": "sub_1",
            "lines": {"data": [{"price": {"lookup_key": "premium_monthly"},
                                "period": {"start": 1_763_942_400, "end": 1_766_620_800}}]},
            "subscription_details": {"metadata": {"user_id": "usr_1"}}
        });
        assert_eq!(
            plan_stripe_event(&event("invoice.paid", invoice)),
            StripeAction::SubscriptionPaid {
                user_id: Some("usr_1".into()),
                customer_id: Some("cus_1".into()),
                subscription_id: "sub_1".into(),
                tier: Tier::Premium,
                period: Some((1_763_942_400, 1_766_620_800)),
            }
        );
        // Newer API versions: subscription under `parent`, tier in its metadata.
        let newer = json!({
            "customer": {"id": "cus_2"},
            "parent": {"subscription_details": {"subscription": "sub_2", "metadata": {"tier": "basic"}}},
            "lines": {"data": [{"pricing": {"price_details": {"price": "price_x"}}}]}
        });
        assert!(matches!(
            plan_stripe_event(&event("invoice.paid", newer)),
            StripeAction::SubscriptionPaid { tier: Tier::Basic, user_id: None, ref customer_id, .. }
                if customer_id.as_deref() == Some("cus_2")
        ));
        assert_eq!(
            plan_stripe_event(&event("invoice.paid", json!({"customer": "cus_1"}))),
            StripeAction::Ignore {
                reason: "not_a_subscription_invoice"
            }
        );
        for key in ["free", "gold", "Premium"] {
            let invoice = json!({"subscription": "sub_1", "metadata": {"tier": key}});
            assert_eq!(
                plan_stripe_event(&event("invoice.paid", invoice)),
                StripeAction::Ignore {
                    reason: "unknown_tier"
                },
                "{key}"
            );
        }
    }

    #[test]
    fn ops_carry_the_tier_rules_from_the_domain() {
        let paid = StripeAction::SubscriptionPaid {
            user_id: None,
            customer_id: Some("cus_1".into()),
            subscription_id: "sub_1".into(),
            tier: Tier::Basic,
            period: Some((0, 86_400 * 31)),
        };
        let source = event("invoice.paid", json!({}));
        let ops = action_ops(&source, &paid, [7; 16]).expect("ops");
        assert_eq!(ops[0].op, "webhooks.record_event");
        assert_eq!(ops[0].params["event_id"], "evt_1");
        assert_eq!(ops[1].op, "subscriptions.refill");
        let params = &ops[1].params;
        assert_eq!(params["monthly_credits"], 100);
        assert_eq!(params["max_calls_per_day"], 10);
        assert_eq!(params["max_call_seconds"], 600);
        assert_eq!(params["period_start"], "1970-01-01T00:00:00Z");
        assert_eq!(params["period_end"], "1970-02-01T00:00:00Z");
        assert!(
            params["transaction_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("txn_"))
        );

        let unlimited = StripeAction::SubscriptionPaid {
            user_id: None,
            customer_id: Some("cus_1".into()),
            subscription_id: "sub_1".into(),
            tier: Tier::Unlimited,
            period: None,
        };
        let ops = action_ops(&source, &unlimited, [7; 16]).expect("ops");
        assert_eq!(ops[1].params["monthly_credits"], 0);
        assert_eq!(ops[1].params["max_calls_per_day"], Value::Null);
        assert!(!ops[1].params.contains_key("period_start"));

        let ended = StripeAction::SubscriptionEnded {
            user_id: None,
            customer_id: None,
            subscription_id: "sub_1".into(),
            ended_at: Some(1_700_000_000),
        };
        let ops = action_ops(&source, &ended, [7; 16]).expect("ops");
        assert_eq!(ops[1].params["tier"], "free");
        assert_eq!(ops[1].params["max_calls_per_day"], 3);
        assert_eq!(ops[1].params["max_call_seconds"], 300);
        assert_eq!(ops[1].params["ended_at"], "2023-11-14T22:13:20Z");

        assert!(action_ops(&source, &ignore("x"), [7; 16]).is_none());
    }

    #[test]
    fn refused_webhook_batches_that_are_not_failures() {
        let purchase = StripeAction::Purchase {
            user_id: "usr_1".into(),
            credits: 1,
            payment_intent_id: "pi_1".into(),
        };
        let rejected = |code: &str, index: usize| GatewayError::Rejected {
            status: 409,
            code: code.to_owned(),
            message: String::new(),
            op_index: Some(index),
        };
        assert_eq!(
            webhook_failure(&purchase, &rejected(codes::PRECONDITION_FAILED, 0)),
            Some(json!({"received": true, "duplicate": true}))
        );
        assert_eq!(
            webhook_failure(&purchase, &rejected(codes::CONFLICT, 1)),
            Some(json!({"received": true, "duplicate": true}))
        );
        assert_eq!(
            webhook_failure(&purchase, &rejected(codes::FOREIGN_KEY_VIOLATION, 1))
                .expect("ignored")["reason"],
            "unknown_user"
        );
        assert_eq!(
            webhook_failure(&purchase, &rejected(codes::TIMEOUT, 1)),
            None
        );
        assert_eq!(
            webhook_failure(&purchase, &GatewayError::Unreachable("down".into())),
            None
        );
    }

    #[test]
    fn stripe_bodies_must_be_events() {
        assert_eq!(
            parse_stripe_event(b"{").expect_err("syntax").code,
            "invalid_json"
        );
        assert_eq!(
            parse_stripe_event(br#"{"id": "evt_1"}"#)
                .expect_err("shape")
                .code,
            "invalid_event"
        );
        assert_eq!(
            parse_stripe_event(br#"{"id": "", "type": "x", "data": {"object": {}}}"#)
                .expect_err("empty id")
                .code,
            "invalid_event"
        );
        let event = parse_stripe_event(
            br#"{"id": "evt_9", "object": "event", "type": "invoice.paid", "data": {"object": {"id": "in_1"}}}"#,
        )
        .expect("valid event");
        assert_eq!(event.kind, "invoice.paid");
    }

    #[test]
    fn admin_stats_put_the_five_reports_together() {
        let one = |value: Value| OpResult {
            rows: vec![row(value)],
            row_count: 1,
        };
        let results = [
            one(json!({"calls": 2, "twilio_cents": "1.3000", "total_cents": "2.0000"})),
            one(
                json!({"persona_id": "brad", "name": "Brad", "call_count": 2,
                       "total_duration_seconds": "120"}),
            ),
            one(
                json!({"day": "2026-11-22", "completed_calls": 2, "provider_cost_cents": "2.0000",
                       "credits_purchased": "50", "credits_spent": "3"}),
            ),
            one(
                json!({"total_calls": 3, "completed": 2, "failed": 1, "in_progress": 0,
                       "avg_duration_seconds": "60.0"}),
            ),
            one(json!({"users": 4})),
        ];
        let body = admin_stats_body(&results, &["basic", "premium"]).expect("complete batch");
        assert_eq!(body["cost_by_provider"]["window_days"], 30);
        assert_eq!(body["cost_by_provider"]["calls"], 2);
        assert_eq!(body["cost_by_provider"]["total_cents"], "2.0000");
        assert_eq!(
            body["top_personas"]["personas"][0]["total_duration_seconds"],
            120
        );
        assert_eq!(body["revenue_by_day"]["days"][0]["credits_purchased"], 50);
        assert_eq!(body["revenue_by_day"]["window_days"], 7);
        assert_eq!(body["calls_today"]["failed"], 1);
        assert_eq!(
            body["low_credit_users"],
            json!({"below_credits": 10, "tiers": ["basic", "premium"], "count": 4})
        );
    }

    #[test]
    fn admin_numbers_become_json_numbers_and_money_stays_decimal() {
        let converted = numbers_as_json(&row(json!({
            "persona_id": "brad", "call_count": 3, "total_duration_seconds": "240",
            "provider_cost_cents": "12.3400", "day": "2026-11-22"
        })));
        assert_eq!(converted["total_duration_seconds"], 240);
        assert_eq!(converted["provider_cost_cents"], "12.3400");
        assert_eq!(converted["day"], "2026-11-22");
        assert_eq!(converted["persona_id"], "brad");
    }
}
