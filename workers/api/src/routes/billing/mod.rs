//! Credits and their ledger, budgets, Stripe webhooks, and the admin report: one module per
//! sub-resource ([`credits`], [`budget`], [`stripe`], [`admin_stats`]), the route table here.
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
//! - `POST /api/webhooks/stripe`: purchases and subscriptions (see [`stripe`]).
//! - `GET /api/admin/stats`: the design document's §13 reports, one gateway batch.

mod admin_stats;
mod budget;
mod credits;
mod stripe;

use worker::{Method, Response};

use super::{Access, RouteDef, RouteRequest, Service};
use crate::error::ApiError;

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
        GET_CREDITS => credits::get(request).await,
        LIST_TRANSACTIONS => credits::list_transactions(request).await,
        GET_BUDGET => budget::get(request).await,
        PUT_BUDGET => budget::put(request).await,
        STRIPE_WEBHOOK => stripe::webhook(request).await,
        ADMIN_STATS => admin_stats::get(request).await,
        _ => Err(ApiError::not_found()),
    }
}
