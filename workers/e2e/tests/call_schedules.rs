//! Scheduled and recurring calls end to end: schedules created through the API, made due in SQL,
//! and fired by the cron trigger (`wrangler dev --test-scheduled`); the call placed, the run
//! recorded, and the next occurrence computed in the schedule's own time zone across
//! daylight-saving changes; overlapping cron runs fire a due schedule once.
//!
//! The cron is triggered at a chosen instant (`/cdn-cgi/handler/scheduled?time=`): a run computes
//! next occurrences from the time it stands for, so the tests can stand on the eve of a
//! daylight-saving change. Which schedules are due is still decided by the database's clock,
//! which is why the tests move `next_run_at` into the past.

mod call_support;

use std::time::Duration;

use call_support::{fast_twilio, sim_calls_to, unanswered};
use callmeback_e2e::Stack;
use callmeback_simulators::twilio::Outcome;
use reqwest::Method;
use serde_json::{Value, json};

/// Fires the cron trigger as if it ran at `at` (RFC 3339), waiting for the run to finish.
async fn run_cron_at(stack: &Stack, at: Option<&str>) {
    let mut url = format!(
        "{}/cdn-cgi/handler/scheduled?cron=*+*+*+*+*",
        stack.worker_url
    );
    if let Some(at) = at {
        let millis = chrono::DateTime::parse_from_rfc3339(at)
            .expect("an RFC 3339 instant")
            .timestamp_millis();
        url.push_str(&format!("&time={millis}"));
    }
    let response = stack
        .http
        .get(&url)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("the cron trigger answers");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(
        status.is_success(),
        "cron run: {status} {body}\n{}",
        stack.worker_log()
    );
}

async fn create_schedule(stack: &Stack, token: &str, body: Value) -> String {
    let (status, body) = stack
        .json(Method::POST, "/api/schedules", Some(token), Some(body))
        .await;
    assert_eq!(status, 201, "{body}");
    body["schedule"]["id"]
        .as_str()
        .expect("schedule id")
        .to_owned()
}

/// Makes schedules due now (in the database's clock).
async fn make_due(stack: &Stack, ids: &[&str]) {
    let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
    let changed = stack
        .db()
        .await
        .execute(
            "UPDATE scheduled_calls SET next_run_at = now() - interval '1 minute' WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .expect("make due");
    assert_eq!(changed as usize, ids.len());
}

/// A schedule's row after a run: status, next run (UTC, RFC 3339), the call it placed, the
/// error, whether it ran.
async fn schedule_row(stack: &Stack, id: &str) -> Value {
    let row = stack
        .db()
        .await
        .query_one(
            "SELECT status, \
                    to_char(next_run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS next_run_at, \
                    call_id, last_error, executed_at IS NOT NULL AS ran \
             FROM scheduled_calls WHERE id = $1",
            &[&id],
        )
        .await
        .expect("schedule row");
    json!({
        "status": row.get::<_, String>("status"),
        "next_run_at": row.get::<_, Option<String>>("next_run_at"),
        "call_id": row.get::<_, Option<String>>("call_id"),
        "last_error": row.get::<_, Option<String>>("last_error"),
        "ran": row.get::<_, bool>("ran"),
    })
}

/// Checks that a run of `id` placed a call to `number` (and this run's call is a new one).
async fn assert_ran(
    stack: &Stack,
    id: &str,
    number: &str,
    status: &str,
    next: Option<&str>,
    calls_before: usize,
) -> String {
    let row = schedule_row(stack, id).await;
    assert_eq!(row["status"], status, "{id}: {row}\n{}", stack.worker_log());
    assert_eq!(row["last_error"], Value::Null, "{id}: {row}");
    assert_eq!(row["ran"], true, "{id}: {row}");
    assert_eq!(row["next_run_at"].as_str(), next, "{id}: {row}");
    let call_id = row["call_id"]
        .as_str()
        .expect("the run names its call")
        .to_owned();
    let placed = stack
        .db()
        .await
        .query_one(
            "SELECT scheduled_call_id, phone_number, twilio_call_sid IS NOT NULL FROM calls WHERE id = $1",
            &[&call_id],
        )
        .await
        .expect("the schedule's call exists");
    assert_eq!(placed.get::<_, Option<String>>(0).as_deref(), Some(id));
    assert_eq!(placed.get::<_, String>(1), number);
    assert!(placed.get::<_, bool>(2), "the call reached Twilio");
    assert_eq!(
        sim_calls_to(stack, number).len(),
        calls_before + 1,
        "{id}: one call to its number this run"
    );
    call_id
}

#[tokio::test]
async fn recurring_schedules_keep_their_local_time_across_daylight_saving_changes() {
    let stack = Stack::start().await;
    fast_twilio(&stack);
    let (token, user_id) = stack
        .register_with_phone("dst@example.com", "+14155550180")
        .await;
    stack.set_tier(&user_id, "basic", 10).await;
    let numbers = [
        "+493012345601",
        "+493012345602",
        "+12125550103",
        "+12125550104",
        "+493012345605",
    ];
    for number in numbers {
        stack
            .sims
            .twilio()
            .set_scenario(number, unanswered(Outcome::Busy));
    }
    let daily = |time: &str, zone: &str, number: &str| {
        json!({"persona_id": "brad", "phone_number": number, "local_time": time,
               "timezone": zone, "recurrence": {"type": "daily"}})
    };
    let berlin = create_schedule(&stack, &token, daily("07:30", "Europe/Berlin", numbers[0])).await;
    let berlin_gap =
        create_schedule(&stack, &token, daily("02:30", "Europe/Berlin", numbers[1])).await;
    let new_york = create_schedule(
        &stack,
        &token,
        daily("07:30", "America/New_York", numbers[2]),
    )
    .await;
    let new_york_twice = create_schedule(
        &stack,
        &token,
        daily("01:30", "America/New_York", numbers[3]),
    )
    .await;
    let berlin_autumn =
        create_schedule(&stack, &token, daily("07:30", "Europe/Berlin", numbers[4])).await;
    let (status, listed) = stack
        .json(Method::GET, "/api/schedules", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["schedules"].as_array().map(Vec::len), Some(5));

    // Saturday 13 March 2027, evening: New York moves its clocks forward that night (02:00 →
    // 03:00 EST → EDT); Berlin does not until two weeks later.
    make_due(&stack, &[&berlin, &new_york]).await;
    run_cron_at(&stack, Some("2027-03-13T17:00:00Z")).await;
    assert_ran(
        &stack,
        &new_york,
        numbers[2],
        "scheduled",
        Some("2027-03-14T11:30:00Z"),
        0,
    )
    .await;
    assert_ran(
        &stack,
        &berlin,
        numbers[0],
        "scheduled",
        Some("2027-03-14T06:30:00Z"),
        0,
    )
    .await;

    // Saturday 27 March 2027: Berlin moves forward that night (02:00 → 03:00 CET → CEST). 07:30
    // is 05:30 UTC from Sunday on, and 02:30 does not exist on Sunday: it fires at 03:30.
    make_due(&stack, &[&berlin, &berlin_gap, &new_york]).await;
    run_cron_at(&stack, Some("2027-03-27T12:00:00Z")).await;
    assert_ran(
        &stack,
        &berlin,
        numbers[0],
        "scheduled",
        Some("2027-03-28T05:30:00Z"),
        1,
    )
    .await;
    assert_ran(
        &stack,
        &berlin_gap,
        numbers[1],
        "scheduled",
        Some("2027-03-28T01:30:00Z"),
        0,
    )
    .await;
    assert_ran(
        &stack,
        &new_york,
        numbers[2],
        "scheduled",
        Some("2027-03-28T11:30:00Z"),
        1,
    )
    .await;

    // Saturday 6 November 2027: New York falls back that night (02:00 EDT → 01:00 EST); 01:30
    // happens twice and fires once, at the first (EDT). Berlin is on winter time again.
    make_due(&stack, &[&new_york_twice, &berlin_autumn]).await;
    run_cron_at(&stack, Some("2027-11-06T17:00:00Z")).await;
    assert_ran(
        &stack,
        &new_york_twice,
        numbers[3],
        "scheduled",
        Some("2027-11-07T05:30:00Z"),
        0,
    )
    .await;
    assert_ran(
        &stack,
        &berlin_autumn,
        numbers[4],
        "scheduled",
        Some("2027-11-07T06:30:00Z"),
        0,
    )
    .await;

    // A run with nothing due places nothing.
    let total = stack.sims.twilio().calls().len();
    run_cron_at(&stack, None).await;
    assert_eq!(stack.sims.twilio().calls().len(), total);
}

#[tokio::test]
async fn two_overlapping_cron_runs_fire_a_due_schedule_once() {
    let stack = Stack::start().await;
    fast_twilio(&stack);
    let (token, user_id) = stack
        .register_with_phone("cron@example.com", "+14155550190")
        .await;
    stack.set_tier(&user_id, "basic", 10).await;
    let numbers = ["+14155550191", "+14155550192", "+14155550193"];
    let mut ids = Vec::new();
    for number in numbers {
        stack
            .sims
            .twilio()
            .set_scenario(number, unanswered(Outcome::Busy));
        // One-off calls an hour from now, made due below.
        let at = stack
            .db()
            .await
            .query_one(
                "SELECT to_char((now() + interval '1 hour') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
                &[],
            )
            .await
            .expect("now")
            .get::<_, String>(0);
        ids.push(
            create_schedule(
                &stack,
                &token,
                json!({"persona_id": "brad", "phone_number": number, "at": at}),
            )
            .await,
        );
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    make_due(&stack, &id_refs).await;

    tokio::join!(run_cron_at(&stack, None), run_cron_at(&stack, None));

    for (id, number) in ids.iter().zip(numbers) {
        let call_id = assert_ran(&stack, id, number, "executed", None, 0).await;
        let calls: i64 = stack
            .db()
            .await
            .query_one(
                "SELECT count(*) FROM calls WHERE scheduled_call_id = $1",
                &[id],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(calls, 1, "{id} fired {calls} times");
        let (status, call) = stack
            .json(
                Method::GET,
                &format!("/api/calls/{call_id}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, 200, "{call}");
        assert_eq!(call["call"]["scheduled_call_id"], id.as_str());
    }
    // A third run finds nothing left to do.
    run_cron_at(&stack, None).await;
    assert_eq!(stack.sims.twilio().calls().len(), numbers.len());
}
