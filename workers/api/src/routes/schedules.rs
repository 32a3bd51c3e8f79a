//! Scheduled and recurring calls: `POST /api/schedules`, `GET /api/schedules`,
//! `DELETE /api/schedules/{id}`.
//!
//! A schedule is either one call at an instant (`at`, RFC 3339 with an offset, or `date` +
//! `local_time` + `timezone`), or a recurring call at `local_time` in `timezone` (an IANA name)
//! on the days `recurrence` names: `{"type": "daily"}`, `{"type": "weekdays"}` or
//! `{"type": "days", "days": ["mon", "thu"]}`. The local time is the anchor: "07:30 Europe/Berlin"
//! stays 07:30 across daylight-saving changes (see `callmeback_domain::schedule` for times that do
//! not exist or happen twice). The number is the body's `phone_number` or the user's own.
//!
//! The cron trigger places each due call through the same path and checks as `POST /api/calls`
//! (see [`crate::scheduler`]).

use callmeback_domain::ids::{new_id, prefix};
use callmeback_domain::schedule::{
    DaySet, Recurrence, TimeZoneName, next_occurrence, one_off, parse_local_time,
};
use callmeback_domain::{FieldError, FieldErrors, PhoneE164, ValidationError, is_valid_id};
use callmeback_gateway_api::OpCall;
use callmeback_gateway_api::ops::{accounts, schedules as ops};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use worker::{Method, Response};

use super::{RouteDef, RouteRequest, Service, json_response};
use crate::ctx::read_json;
use crate::error::ApiError;
use crate::rows::{into_first_row, into_values};
use crate::session::{Access, authed_call};

const CREATE: &str = "createSchedule";
const LIST: &str = "listSchedules";
const DELETE: &str = "deleteSchedule";

pub(super) const ROUTES: &[RouteDef] = &[
    RouteDef::new(
        Method::Post,
        "/api/schedules",
        Access::User,
        Service::Schedules,
        CREATE,
    ),
    RouteDef::new(
        Method::Get,
        "/api/schedules",
        Access::User,
        Service::Schedules,
        LIST,
    ),
    RouteDef::new(
        Method::Delete,
        "/api/schedules/{id}",
        Access::User,
        Service::Schedules,
        DELETE,
    ),
];

pub(super) async fn handle(route: &RouteDef, request: RouteRequest) -> Result<Response, ApiError> {
    match route.name {
        CREATE => create(request).await,
        LIST => list(request).await,
        DELETE => delete(request).await,
        _ => Err(ApiError::not_found()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecurrenceBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    days: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    persona_id: Option<String>,
    #[serde(default)]
    template_id: Option<String>,
    #[serde(default)]
    phone_number: Option<String>,
    #[serde(default)]
    custom_instructions: Option<String>,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    date: Option<String>,
    #[serde(default)]
    local_time: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    recurrence: Option<RecurrenceBody>,
}

/// A schedule that passed validation.
#[derive(Debug, PartialEq)]
struct NewSchedule {
    persona_id: String,
    template_id: Option<String>,
    phone: Option<PhoneE164>,
    custom_instructions: Option<String>,
    first_run: DateTime<Utc>,
    recurrence: Option<Recurrence>,
    local_time: Option<String>,
    timezone: String,
}

/// How far ahead a schedule may start.
const MAX_AHEAD_DAYS: i64 = 366;

fn field(code: &'static str, message: &str) -> FieldError {
    FieldError::new(code, message)
}

fn validate(body: CreateBody, now: DateTime<Utc>) -> Result<NewSchedule, FieldErrors> {
    let mut errors = FieldErrors::new();
    let persona_id = body
        .persona_id
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty());
    if persona_id.is_none() {
        errors.add("persona_id", ValidationError::Required);
    }
    let phone = match body
        .phone_number
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        Some(number) => errors.check("phone_number", PhoneE164::parse(number)),
        None => None,
    };
    let custom_instructions = body
        .custom_instructions
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    if custom_instructions
        .as_deref()
        .is_some_and(|t| t.chars().count() > 2000)
    {
        errors.add(
            "custom_instructions",
            ValidationError::TooLong { max: 2000 },
        );
    }
    let zone = body.timezone.as_deref().map(TimeZoneName::parse);
    let local_time = body.local_time.as_deref().map(parse_local_time);
    let mut when: Option<(DateTime<Utc>, Option<Recurrence>)> = None;
    match (&body.at, &body.recurrence, &body.date) {
        (Some(at), None, None) if body.local_time.is_none() => match DateTime::parse_from_rfc3339(at) {
            Ok(instant) => when = Some((instant.with_timezone(&Utc), None)),
            Err(_) => errors.add("at", field("invalid_datetime", "an RFC 3339 date-time with an offset")),
        },
        (None, recurrence, date) => {
            let zone = match zone {
                Some(Ok(zone)) => Some(zone),
                Some(Err(error)) => {
                    errors.add("timezone", error);
                    None
                }
                None => {
                    errors.add("timezone", ValidationError::Required);
                    None
                }
            };
            let time = match local_time {
                Some(Ok(time)) => Some(time),
                Some(Err(error)) => {
                    errors.add("local_time", error);
                    None
                }
                None => {
                    errors.add("local_time", ValidationError::Required);
                    None
                }
            };
            match (recurrence, date) {
                (Some(recurrence), None) => {
                    let rule = match recurrence.kind.as_str() {
                        "daily" => Some(Recurrence::Daily),
                        "weekdays" => Some(Recurrence::Weekdays),
                        "days" => match DaySet::from_names(
                            recurrence.days.iter().flatten().map(String::as_str),
                        ) {
                            Ok(days) => Some(Recurrence::Days(days)),
                            Err(error) => {
                                errors.add("recurrence.days", error);
                                None
                            }
                        },
                        _ => {
                            errors.add("recurrence.type", field("invalid", "daily, weekdays or days"));
                            None
                        }
                    };
                    if let (Some(rule), Some(time), Some(zone)) = (rule, time, zone) {
                        when = Some((next_occurrence(rule, time, zone.tz(), now), Some(rule)));
                    }
                }
                (None, Some(date)) => match NaiveDate::parse_from_str(date, "%Y-%m-%d") {
                    Ok(date) => {
                        if let (Some(time), Some(zone)) = (time, zone) {
                            when = Some((one_off(date, time, zone.tz()), None));
                        }
                    }
                    Err(_) => errors.add("date", field("invalid_date", "a date as YYYY-MM-DD")),
                },
                _ => errors.add(
                    "recurrence",
                    field("invalid", "give either `recurrence` or `date` with local_time and timezone"),
                ),
            }
        }
        _ => errors.add(
            "at",
            field("invalid", "give `at`, or `date` + `local_time` + `timezone`, or `recurrence` + `local_time` + `timezone`"),
        ),
    }
    if let Some((first_run, recurrence)) = when
        && recurrence.is_none()
    {
        if first_run <= now {
            errors.add("at", field("in_the_past", "the time must be in the future"));
        } else if first_run > now + chrono::Duration::days(MAX_AHEAD_DAYS) {
            errors.add("at", field("too_far", "at most a year ahead"));
        }
    }
    match (when, errors.is_empty()) {
        (Some((first_run, recurrence)), true) => Ok(NewSchedule {
            persona_id: persona_id.unwrap_or_default(),
            template_id: body
                .template_id
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
            phone,
            custom_instructions,
            first_run,
            recurrence,
            local_time: body.local_time.map(|t| t.trim().to_owned()),
            timezone: body
                .timezone
                .map(|zone| zone.trim().to_owned())
                .unwrap_or_else(|| "UTC".to_owned()),
        }),
        _ => Err(errors),
    }
}

async fn create(mut request: RouteRequest) -> Result<Response, ApiError> {
    let body: CreateBody = read_json(&mut request.req).await?;
    let now = DateTime::from_timestamp(request.ctx.now_secs(), 0).ok_or_else(ApiError::internal)?;
    let schedule = validate(body, now).map_err(ApiError::validation_failed)?;
    let session = request.session()?;
    let phone = match &schedule.phone {
        Some(phone) => phone.as_str().to_owned(),
        None => {
            let user = authed_call(
                &request.ctx,
                session,
                OpCall::of(&accounts::GET_USER).param("user_id", session.user_id()),
            )
            .await?;
            let user = into_first_row(user)?;
            user.get("phone")
                .and_then(Value::as_str)
                .filter(|phone| PhoneE164::parse(phone).is_ok())
                .map(str::to_owned)
                .ok_or_else(|| {
                    let mut errors = FieldErrors::new();
                    errors.add(
                        "phone_number",
                        field(
                            "required",
                            "give a phone number, or add one to your account",
                        ),
                    );
                    ApiError::validation_failed(errors)
                })?
        }
    };
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|_| ApiError::internal())?;
    let id = new_id(prefix::SCHEDULED_CALL, random);
    let first_run = schedule.first_run.to_rfc3339();
    let op = OpCall::of(&ops::SCHEDULES_CREATE)
        .param("id", id.as_str())
        .param("user_id", session.user_id())
        .param("persona_id", schedule.persona_id.as_str())
        .param("phone_number", phone.as_str())
        .param("scheduled_time", first_run.as_str())
        .param(
            "recurrence_rule",
            schedule.recurrence.map(|r| r.rule_name()),
        )
        .param(
            "recurrence_days",
            schedule.recurrence.and_then(|r| match r {
                Recurrence::Days(days) => Some(i64::from(days.mask())),
                _ => None,
            }),
        )
        .param("local_time", schedule.local_time.as_deref())
        .param("timezone", schedule.timezone.as_str())
        .param("scenario_template_id", schedule.template_id.as_deref())
        .param(
            "custom_instructions",
            schedule.custom_instructions.as_deref(),
        );
    let created = match authed_call(&request.ctx, session, op).await {
        Ok(result) => into_first_row(result)?,
        Err(error) if error.code == "precondition_failed" => {
            return Err(ApiError::new(
                404,
                "persona_not_found",
                "no such active persona",
            ));
        }
        Err(error) if error.code == "constraint_violation" => {
            let mut errors = FieldErrors::new();
            errors.add("timezone", ValidationError::InvalidTimeZone);
            return Err(ApiError::validation_failed(errors));
        }
        Err(error) if error.code == "reference_not_found" => {
            return Err(ApiError::new(
                404,
                "template_not_found",
                "no such scenario template",
            ));
        }
        Err(error) => return Err(error),
    };
    json_response(
        201,
        &json!({"schedule": schedule_body(Value::Object(created))}),
    )
}

async fn list(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let result = authed_call(
        &request.ctx,
        session,
        OpCall::of(&ops::SCHEDULES_LIST).param("user_id", session.user_id()),
    )
    .await?;
    let schedules: Vec<Value> = into_values(result).into_iter().map(schedule_body).collect();
    json_response(200, &json!({"schedules": schedules}))
}

async fn delete(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let id = request.params.get("id");
    if !is_valid_id(prefix::SCHEDULED_CALL, id) {
        return Err(schedule_not_found());
    }
    let op = OpCall::of(&ops::SCHEDULES_CANCEL)
        .param("user_id", session.user_id())
        .param("id", id);
    match authed_call(&request.ctx, session, op).await {
        Ok(result) => json_response(
            200,
            &json!({"schedule": schedule_body(Value::Object(into_first_row(result)?))}),
        ),
        Err(error) if error.code == "precondition_failed" => Err(schedule_not_found()),
        Err(error) => Err(error),
    }
}

fn schedule_not_found() -> ApiError {
    ApiError::new(404, "schedule_not_found", "no such schedule")
}

/// A schedule row as the API shows it: the recurrence as `{type, days?}`.
fn schedule_body(row: Value) -> Value {
    let Value::Object(mut row) = row else {
        return row;
    };
    let rule = row
        .remove("recurrence_rule")
        .and_then(|v| v.as_str().map(str::to_owned));
    let days = row.remove("recurrence_days").and_then(|v| v.as_i64());
    let recurrence = rule
        .as_deref()
        .and_then(|rule| Recurrence::from_stored(rule, days))
        .map(|r| match r {
            Recurrence::Daily => json!({"type": "daily"}),
            Recurrence::Weekdays => json!({"type": "weekdays"}),
            Recurrence::Days(days) => json!({"type": "days", "days": days.names()}),
        });
    row.insert("recurrence".to_owned(), recurrence.unwrap_or(Value::Null));
    Value::Object(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn body(value: Value) -> CreateBody {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn recurring_schedules_start_at_their_next_local_time() {
        let schedule = validate(
            body(json!({"persona_id": "brad", "local_time": "07:30", "timezone": "Europe/Berlin", "recurrence": {"type": "weekdays"}})),
            now(),
        )
        .unwrap();
        assert_eq!(schedule.first_run.to_rfc3339(), "2026-11-27T06:30:00+00:00");
        assert_eq!(schedule.recurrence, Some(Recurrence::Weekdays));
    }

    #[test]
    fn one_off_calls_by_instant_or_local_date() {
        let at = validate(
            body(json!({"persona_id": "brad", "at": "2026-11-28T09:00:00+01:00"})),
            now(),
        )
        .unwrap();
        assert_eq!(at.first_run.to_rfc3339(), "2026-11-28T08:00:00+00:00");
        let local = validate(
            body(json!({"persona_id": "brad", "date": "2026-11-28", "local_time": "09:00", "timezone": "America/New_York"})),
            now(),
        )
        .unwrap();
        assert_eq!(local.first_run.to_rfc3339(), "2026-11-28T14:00:00+00:00");
        assert_eq!(local.recurrence, None);
    }

    #[test]
    fn mistakes_are_reported_per_field() {
        let cases = [
            (
                json!({"at": "2026-11-28T09:00:00+01:00"}),
                "persona_id",
                "required",
            ),
            (
                json!({"persona_id": "brad", "at": "2020-01-01T00:00:00Z"}),
                "at",
                "in_the_past",
            ),
            (
                json!({"persona_id": "brad", "at": "tomorrow"}),
                "at",
                "invalid_datetime",
            ),
            (
                json!({"persona_id": "brad", "local_time": "7:30", "timezone": "Europe/Berlin", "recurrence": {"type": "daily"}}),
                "local_time",
                "invalid_time_of_day",
            ),
            (
                json!({"persona_id": "brad", "local_time": "07:30", "timezone": "Mars/Base", "recurrence": {"type": "daily"}}),
                "timezone",
                "invalid_time_zone",
            ),
            (
                json!({"persona_id": "brad", "local_time": "07:30", "timezone": "UTC", "recurrence": {"type": "days", "days": ["funday"]}}),
                "recurrence.days",
                "invalid_day",
            ),
            (
                json!({"persona_id": "brad", "local_time": "07:30", "timezone": "UTC", "recurrence": {"type": "hourly"}}),
                "recurrence.type",
                "invalid",
            ),
            (json!({"persona_id": "brad"}), "timezone", "required"),
        ];
        for (input, field, code) in cases {
            let errors = validate(body(input.clone()), now()).unwrap_err();
            assert_eq!(
                errors.get(field).map(|e| e.code.as_ref()),
                Some(code),
                "{input}: {errors}"
            );
        }
    }

    #[test]
    fn rows_show_the_recurrence_as_an_object() {
        let shown = schedule_body(
            json!({"id": "sch_1", "recurrence_rule": "weekly", "recurrence_days": 9}),
        );
        assert_eq!(
            shown["recurrence"],
            json!({"type": "days", "days": ["mon", "thu"]})
        );
        assert!(shown.get("recurrence_rule").is_none());
        assert_eq!(
            schedule_body(json!({"recurrence_rule": null}))["recurrence"],
            Value::Null
        );
    }
}
