//! `GET /api/credits` and `GET /api/credits/transactions`: the caller's balance, tier limits and
//! calls today, and their ledger.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use callmeback_domain::{FieldErrors, Tier, ValidationError, can_start_call};
use callmeback_gateway_api::ops::billing;
use callmeback_gateway_api::{OpCall, OpResult};
use serde_json::{Map, Value, json};
use worker::Response;

use crate::error::ApiError;
use crate::routes::{RouteRequest, json_response};
use crate::rows::{bad_row, first_row, int, optional_int, text};
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

/// Page size of `GET /api/credits/transactions` when `limit` is absent.
const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page a client may ask for.
const MAX_PAGE_SIZE: u32 = 100;

pub(super) async fn list_transactions(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let url = request.req.url()?;
    let query = TransactionsQuery::parse(url.query_pairs())?;

    let op = transactions_op(session.user_id(), &query);
    let result = authed_call(&request.ctx, session, op).await?;
    json_response(200, &transactions_body(result, query.limit)?)
}

fn transactions_op(user_id: &str, query: &TransactionsQuery) -> OpCall {
    let op = OpCall::of(&billing::CREDITS_TRANSACTIONS)
        .param("user_id", user_id)
        // One row more than the page: its presence says whether there is a next page.
        .param("limit", query.limit + 1);
    match &query.cursor {
        Some(cursor) => op
            .param("before_created_at", cursor.created_at.as_str())
            .param("before_id", cursor.id.as_str()),
        None => op,
    }
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
    fn every_gateway_call_matches_its_spec() {
        let first_page = query(&[]).expect("no query");
        let cursor = Cursor {
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
