//! The cron trigger (every minute): scheduled calls, then housekeeping.
//!
//! 1. **Due schedules.** `schedules.claim_due` takes up to [`CLAIM_BATCH`] due occurrences and
//!    marks them `executing` in the same statement (`FOR UPDATE SKIP LOCKED`): two overlapping
//!    runs never take the same occurrence. Each is placed through the same path and checks as
//!    `POST /api/calls` ([`crate::placing`]), with an idempotency key made of the schedule and the
//!    occurrence, so even a run retried after a crash places that occurrence once. The run is
//!    recorded: `executed` with the call, or `failed` with the reason; a recurring schedule goes
//!    back to `scheduled` with its next occurrence (computed in its time zone).
//! 2. **Runs stuck in `executing`** (a scheduler that died mid-run) are recorded as failed runs
//!    and recurring ones rescheduled.
//! 3. **Housekeeping.** Revoked-token rows long past their expiry are deleted; calls stuck in
//!    `initiating`/`calling` (no news from Twilio for [`STUCK_CALL_SECS`]) are failed.

use callmeback_domain::PhoneE164;
use callmeback_domain::schedule::{Recurrence, TimeZoneName, next_occurrence, parse_local_time};
use callmeback_gateway_api::ops::{calls as call_ops, schedules as ops};
use callmeback_gateway_api::{OpCall, OpResult};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use worker::Env;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::placing::{self, CallRequest, Placement, Requester};

/// Occurrences one run takes on (a minute's worth at most; the rest wait for the next run).
const CLAIM_BATCH: i32 = 25;
/// A run `executing` for longer than this was abandoned.
const STUCK_RUN_SECS: i32 = 600;
/// A call without news from Twilio for this long is failed.
const STUCK_CALL_SECS: i32 = 900;

/// One cron run. Errors are logged; the next run tries again.
pub async fn run(env: &Env, scheduled_time_ms: f64) {
    let config = Config::get(env);
    let run_id = format!("cron-{}", scheduled_time_ms as u64);
    let gateway = match Gateway::from_env(env, run_id.clone()) {
        Ok(gateway) => gateway,
        Err(error) => {
            worker::console_error!("{run_id}: {error}");
            return;
        }
    };
    let now = run_time(scheduled_time_ms);
    match gateway
        .call(&OpCall::of(&ops::SCHEDULES_CLAIM_DUE).param("limit", CLAIM_BATCH))
        .await
    {
        Ok(claimed) => {
            for row in claimed.rows {
                run_one(env, &config, &gateway, &run_id, &row, now).await;
            }
        }
        Err(error) => worker::console_error!("{run_id}: claiming due schedules failed: {error:?}"),
    }
    reclaim_stuck(&gateway, &run_id, now).await;
    housekeeping(&gateway, &run_id).await;
}

async fn run_one(
    env: &Env,
    config: &Config,
    gateway: &Gateway,
    run_id: &str,
    row: &Map<String, Value>,
    now: DateTime<Utc>,
) {
    let text = |field: &str| row.get(field).and_then(Value::as_str);
    let Some(schedule_id) = text("id") else {
        return;
    };
    let occurrence = text("next_run_at").unwrap_or("now");
    let outcome = match (
        text("user_id"),
        text("persona_id"),
        text("phone_number").map(PhoneE164::parse),
    ) {
        (Some(user_id), Some(persona_id), Some(Ok(phone))) => {
            let request = CallRequest {
                user_id: user_id.to_owned(),
                persona_id: persona_id.to_owned(),
                phone: Some(phone),
                template_id: text("scenario_template_id").map(str::to_owned),
                custom_instructions: text("custom_instructions").map(str::to_owned),
                idempotency_key: Some(format!("schedule:{schedule_id}:{occurrence}")),
                scheduled_call_id: Some(schedule_id.to_owned()),
            };
            place(env, config, gateway, run_id, request).await
        }
        _ => Err("the schedule is incomplete".to_owned()),
    };
    let next = next_run(row, now);
    let (status, call_id, error) = match (&outcome, next) {
        (Ok(call_id), Some(_)) => ("scheduled", Some(call_id.clone()), None),
        (Ok(call_id), None) => ("executed", Some(call_id.clone()), None),
        (Err(reason), Some(_)) => ("scheduled", None, Some(reason.clone())),
        (Err(reason), None) => ("failed", None, Some(reason.clone())),
    };
    if let Err(reason) = &outcome {
        worker::console_warn!("{run_id}: schedule {schedule_id} not placed: {reason}");
    }
    record(
        gateway,
        run_id,
        schedule_id,
        status,
        next,
        call_id.as_deref(),
        error.as_deref(),
    )
    .await;
}

/// Places a scheduled call; the call id, or why not (a stable code and message, no personal data).
async fn place(
    env: &Env,
    config: &Config,
    gateway: &Gateway,
    run_id: &str,
    request: CallRequest,
) -> Result<String, String> {
    let telephony = config.telephony.get().map_err(|e| e.to_string())?;
    let public_base_url = placing::public_base_url(telephony, None)
        .ok_or_else(|| "PUBLIC_BASE_URL is not configured".to_owned())?;
    let placement = Placement {
        env,
        config,
        gateway,
        public_base_url,
        request_id: run_id,
    };
    match placing::place_call(&placement, request, Requester::Scheduler).await {
        Ok(placed) => {
            let call = placed.call.as_object();
            let status = call.and_then(|c| c.get("status")).and_then(Value::as_str);
            let id = call
                .and_then(|c| c.get("id"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if status == Some("failed") {
                let reason = call
                    .and_then(|c| c.get("error_message"))
                    .and_then(Value::as_str)
                    .unwrap_or("the call failed");
                return Err(format!("call_failed: {reason}"));
            }
            Ok(id)
        }
        Err(error) => Err(format!("{}: {}", error.code, error.message)),
    }
}

/// The occurrence after this one, for a recurring schedule.
fn next_run(row: &Map<String, Value>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let text = |field: &str| row.get(field).and_then(Value::as_str);
    let rule = text("recurrence_rule")?;
    let recurrence =
        Recurrence::from_stored(rule, row.get("recurrence_days").and_then(Value::as_i64))?;
    let local_time = parse_local_time(text("local_time")?).ok()?;
    let zone = TimeZoneName::parse(text("timezone").unwrap_or("UTC")).ok()?;
    // After this occurrence and after now: a run that was late skips what it missed.
    let this_one = text("next_run_at")
        .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
        .map(|at| at.with_timezone(&Utc))
        .unwrap_or(now);
    Some(next_occurrence(
        recurrence,
        local_time,
        zone.tz(),
        this_one.max(now),
    ))
}

#[allow(clippy::too_many_arguments)]
async fn record(
    gateway: &Gateway,
    run_id: &str,
    schedule_id: &str,
    status: &str,
    next: Option<DateTime<Utc>>,
    call_id: Option<&str>,
    error: Option<&str>,
) {
    let next = next.map(|at| at.to_rfc3339());
    let error: Option<String> = error.map(|e| e.chars().take(500).collect());
    let op = OpCall::of(&ops::SCHEDULES_RECORD_RUN)
        .param("id", schedule_id)
        .param("status", status)
        .param("next_run_at", next.as_deref())
        .param("call_id", call_id)
        .param("last_error", error.as_deref());
    if let Err(error) = gateway.call(&op).await {
        worker::console_error!("{run_id}: run of schedule {schedule_id} not recorded: {error:?}");
    }
}

async fn reclaim_stuck(gateway: &Gateway, run_id: &str, now: DateTime<Utc>) {
    let stuck = gateway
        .call(
            &OpCall::of(&ops::SCHEDULES_RECLAIM_STUCK)
                .param("older_than_secs", STUCK_RUN_SECS)
                .param("limit", CLAIM_BATCH),
        )
        .await;
    let rows = match stuck {
        Ok(OpResult { rows, .. }) => rows,
        Err(error) => {
            worker::console_warn!("{run_id}: stuck runs not checked: {error:?}");
            return;
        }
    };
    for row in rows {
        let Some(id) = row.get("id").and_then(Value::as_str) else {
            continue;
        };
        let next = next_run(&row, now);
        let status = if next.is_some() {
            "scheduled"
        } else {
            "failed"
        };
        record(
            gateway,
            run_id,
            id,
            status,
            next,
            None,
            Some("scheduler_interrupted: the run did not finish"),
        )
        .await;
    }
}

async fn housekeeping(gateway: &Gateway, run_id: &str) {
    if let Err(error) = gateway
        .call(&OpCall::of(&ops::MAINTENANCE_PURGE_BLACKLIST))
        .await
    {
        worker::console_warn!("{run_id}: blacklist not purged: {error:?}");
    }
    match gateway
        .call(
            &OpCall::of(&call_ops::CALLS_FAIL_STUCK)
                .param("older_than_secs", STUCK_CALL_SECS)
                .param("limit", 100),
        )
        .await
    {
        Ok(result) if result.row_count > 0 => {
            worker::console_warn!("{run_id}: {} stuck call(s) marked failed", result.row_count);
        }
        Ok(_) => {}
        Err(error) => worker::console_warn!("{run_id}: stuck calls not checked: {error:?}"),
    }
}

/// The instant a run stands for: the cron's scheduled time (the minute the trigger fired), or
/// the clock when the event carries none. Next occurrences are computed from it, so a run is
/// reproducible from its event alone (local runs and tests set it through
/// `/cdn-cgi/handler/scheduled?time=`); which schedules are due is still the database's clock.
fn run_time(scheduled_time_ms: f64) -> DateTime<Utc> {
    let scheduled = scheduled_time_ms.is_finite().then(|| {
        // Whole milliseconds well inside chrono's range: the cast cannot wrap.
        DateTime::from_timestamp_millis(scheduled_time_ms as i64)
    });
    scheduled
        .flatten()
        .filter(|at| at.timestamp() > 0)
        .or_else(|| DateTime::from_timestamp(crate::time::now_secs(), 0))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn recurring_runs_move_to_the_next_local_occurrence() {
        let row = json!({
            "recurrence_rule": "weekdays", "recurrence_days": null, "local_time": "07:30",
            "timezone": "Europe/Berlin", "next_run_at": "2026-11-27T06:30:00.000000Z"
        });
        let now = DateTime::parse_from_rfc3339("2026-11-27T06:30:20Z")
            .unwrap()
            .with_timezone(&Utc);
        let next = next_run(row.as_object().unwrap(), now).unwrap();
        assert_eq!(
            next.to_rfc3339(),
            "2026-11-30T06:30:00+00:00",
            "Friday → Monday"
        );
        let one_off =
            json!({"recurrence_rule": null, "next_run_at": "2026-11-27T06:30:00.000000Z"});
        assert_eq!(next_run(one_off.as_object().unwrap(), now), None);
    }

    #[test]
    fn a_run_stands_for_its_scheduled_minute() {
        let at = run_time(1_806_148_800_000.0);
        assert_eq!(at.to_rfc3339(), "2027-03-27T12:00:00+00:00");
    }

    #[test]
    fn every_gateway_call_matches_its_spec() {
        for call in [
            OpCall::of(&ops::SCHEDULES_CLAIM_DUE).param("limit", CLAIM_BATCH),
            OpCall::of(&ops::SCHEDULES_RECLAIM_STUCK)
                .param("older_than_secs", 1)
                .param("limit", 1),
            OpCall::of(&ops::MAINTENANCE_PURGE_BLACKLIST),
            OpCall::of(&call_ops::CALLS_FAIL_STUCK)
                .param("older_than_secs", 1)
                .param("limit", 1),
        ] {
            assert_eq!(call.conforms(), Ok(()), "{}", call.op);
        }
    }
}
