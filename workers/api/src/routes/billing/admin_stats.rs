//! `GET /api/admin/stats`: the design document's §13 reports, one gateway batch.

use callmeback_domain::Tier;
use callmeback_gateway_api::ops::billing;
use callmeback_gateway_api::{OpCall, OpResult};
use serde_json::{Map, Value, json};
use worker::Response;

use crate::error::ApiError;
use crate::routes::{RouteRequest, json_response};
use crate::rows::{self, first_row, int};
use crate::session::authed_batch;

/// Window of the cost and persona reports (design document §13).
const COST_WINDOW_DAYS: u32 = 30;
/// Window of the per-day report.
const DAILY_WINDOW_DAYS: u32 = 7;
/// How many personas the ranking lists.
const TOP_PERSONAS: u32 = 10;
/// "Low credits" means fewer than this many (design document §13).
const LOW_CREDIT_THRESHOLD: u32 = 10;

pub(super) async fn get(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let credit_tiers: Vec<&str> = Tier::ALL
        .into_iter()
        .filter(|tier| tier.limits().needs_credits)
        .map(Tier::as_str)
        .collect();
    let results = authed_batch(&request.ctx, session, report_ops(&credit_tiers)).await?;
    json_response(200, &admin_stats_body(&results, &credit_tiers)?)
}

/// The five reports, in the order [`admin_stats_body`] reads them.
fn report_ops(credit_tiers: &[&str]) -> Vec<OpCall> {
    vec![
        OpCall::of(&billing::ADMIN_COST_BY_PROVIDER).param("days", COST_WINDOW_DAYS),
        OpCall::of(&billing::ADMIN_TOP_PERSONAS)
            .param("days", COST_WINDOW_DAYS)
            .param("limit", TOP_PERSONAS),
        OpCall::of(&billing::ADMIN_REVENUE_BY_DAY).param("days", DAILY_WINDOW_DAYS),
        OpCall::of(&billing::ADMIN_CALLS_TODAY),
        OpCall::of(&billing::ADMIN_LOW_CREDIT_USERS)
            .param("below", LOW_CREDIT_THRESHOLD)
            .param("tiers", credit_tiers),
    ]
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
    use crate::rows::row;

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

    #[test]
    fn every_gateway_call_matches_its_spec() {
        for call in report_ops(&["basic", "premium"]) {
            assert_eq!(call.conforms(), Ok(()), "{}", call.op);
        }
    }
}
