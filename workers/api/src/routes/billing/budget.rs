//! `GET /api/budget` and `PUT /api/budget`: the caller's spending caps.

use callmeback_domain::{BudgetSettings, FieldError, FieldErrors, ValidationError};
use callmeback_gateway_api::OpCall;
use callmeback_gateway_api::ops::billing;
use serde_json::{Map, Value, json};
use worker::Response;

use crate::ctx::read_json;
use crate::error::ApiError;
use crate::routes::{RouteRequest, json_response};
use crate::rows::{bad_row, first_row, int};
use crate::session::authed_call;

pub(super) async fn get(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let op = get_op(session.user_id());
    let result = authed_call(&request.ctx, session, op).await?;
    let body = match result.first() {
        Some(row) => budget_body(&budget_from_row(row)?, row.get("updated_at")),
        None => budget_body(&BudgetSettings::default(), None),
    };
    json_response(200, &body)
}

pub(super) async fn put(mut request: RouteRequest) -> Result<Response, ApiError> {
    let body: Map<String, Value> = read_json(&mut request.req).await?;
    let settings = budget_from_body(&body)?;
    let session = request.session()?;
    let op = put_op(session.user_id(), &settings);
    let result = authed_call(&request.ctx, session, op).await?;
    let row = first_row(&result)?;
    json_response(
        200,
        &budget_body(&budget_from_row(row)?, row.get("updated_at")),
    )
}

fn get_op(user_id: &str) -> OpCall {
    OpCall::of(&billing::BUDGET_GET).param("user_id", user_id)
}

fn put_op(user_id: &str, settings: &BudgetSettings) -> OpCall {
    OpCall::of(&billing::BUDGET_PUT)
        .param("user_id", user_id)
        .param("max_cost_per_call_cents", settings.max_cost_per_call_cents)
        .param("max_monthly_spend_cents", settings.max_monthly_spend_cents)
        .param("warn_at_percent", settings.warn_at_percent)
        .param("auto_cutoff", settings.auto_cutoff)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::row;

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
    fn every_gateway_call_matches_its_spec() {
        for call in [get_op("usr_1"), put_op("usr_1", &BudgetSettings::default())] {
            assert_eq!(call.conforms(), Ok(()), "{}", call.op);
        }
    }
}
