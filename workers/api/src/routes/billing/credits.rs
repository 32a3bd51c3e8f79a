//! `GET /api/credits` and `GET /api/credits/transactions`: the caller's balance, tier limits and
//! calls today, and their ledger.

use callmeback_domain::{Tier, can_start_call};
use callmeback_gateway_api::ops::billing;
use callmeback_gateway_api::{OpCall, OpResult};
use serde_json::{Map, Value, json};
use worker::Response;

use crate::error::ApiError;
use crate::pagination::{PageQuery, page, public_fields};
use crate::routes::{RouteRequest, json_response};
use crate::rows::{bad_row, first_row, int, optional_int};
use crate::session::authed_call;

pub(super) async fn get(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let op = summary_op(session.user_id());
    let result = authed_call(&request.ctx, session, op).await?;
    json_response(200, &credits_body(first_row(&result)?)?)
}

fn summary_op(user_id: &str) -> OpCall {
    OpCall::of(&billing::CREDITS_SUMMARY).param("user_id", user_id)
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

pub(super) async fn list_transactions(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let url = request.req.url()?;
    let query = PageQuery::parse(url.query_pairs())?;

    let op = transactions_op(session.user_id(), &query);
    let result = authed_call(&request.ctx, session, op).await?;
    json_response(200, &transactions_body(result, query.limit)?)
}

fn transactions_op(user_id: &str, query: &PageQuery) -> OpCall {
    query.apply(OpCall::of(&billing::CREDITS_TRANSACTIONS).param("user_id", user_id))
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
    let (transactions, next_cursor) =
        page(result, limit, |row| public_fields(row, TRANSACTION_FIELDS))?;
    Ok(json!({ "transactions": transactions, "next_cursor": next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::row;

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

    fn query(pairs: &[(&str, &str)]) -> Result<PageQuery, ApiError> {
        PageQuery::parse(pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())))
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
        let cursor =
            crate::pagination::Cursor::decode(body["next_cursor"].as_str().expect("cursor"))
                .expect("valid");
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
    fn every_gateway_call_matches_its_spec() {
        let first_page = query(&[]).expect("no query");
        let cursor = crate::pagination::Cursor {
            created_at: "2026-11-22T10:00:00.123456Z".to_owned(),
            id: "txn_abc".to_owned(),
        };
        let next_page = query(&[("cursor", &cursor.encode())]).expect("valid");
        for call in [
            summary_op("usr_1"),
            transactions_op("usr_1", &first_page),
            transactions_op("usr_1", &next_page),
        ] {
            assert_eq!(call.conforms(), Ok(()), "{}", call.op);
        }
    }
}
