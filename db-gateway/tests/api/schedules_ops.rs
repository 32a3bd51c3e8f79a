//! The schedule operations (`schedules.*`) and housekeeping (`maintenance.purge_blacklist`)
//! against the project's real schema: what a schedule may be created with, whose schedules a
//! user sees and cancels, the scheduler's claims (never one occurrence twice, even when two runs
//! overlap), recording runs, and reclaiming runs a dead scheduler left behind.

use std::collections::HashSet;
use std::time::Duration as StdDuration;

use callmeback_gateway_api::ops::schedules as ops;
use callmeback_gateway_api::{OpCall, OpResult, codes};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Map, Value, json};
use tokio_postgres::Client;

use crate::helpers::{
    TestOptions, fresh_nonce, insert_user, ok, refused, spawn_app, spawn_app_with,
};

const PHONE: &str = "+15555550100";

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", fresh_nonce())
}

/// The current time at Postgres' precision (microseconds), so stored times compare equal.
fn now_us() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("a valid time")
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn row(result: &OpResult) -> &Map<String, Value> {
    result.first().expect("one row")
}

fn ids(result: &OpResult) -> Vec<String> {
    result
        .rows
        .iter()
        .map(|r| r["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// A one-off schedule of Brad's straight in SQL, in `status`, next due at `next_run_at`.
async fn insert_schedule(
    db: &Client,
    user: &str,
    status: &str,
    next_run_at: Option<DateTime<Utc>>,
) -> String {
    let id = new_id("sch");
    db.execute(
        "INSERT INTO scheduled_calls (id, user_id, persona_id, phone_number, scheduled_time, \
                                      status, next_run_at) \
         VALUES ($1, $2, 'brad', $3, COALESCE($5, now()), $4, $5)",
        &[&id, &user, &PHONE, &status, &next_run_at],
    )
    .await
    .expect("insert schedule");
    id
}

/// `(status, next_run_at, claimed?)` of a schedule.
async fn schedule_state(db: &Client, id: &str) -> (String, Option<DateTime<Utc>>, bool) {
    let row = db
        .query_one(
            "SELECT status, next_run_at, claimed_at IS NOT NULL FROM scheduled_calls WHERE id = $1",
            &[&id],
        )
        .await
        .expect("read schedule");
    (row.get(0), row.get(1), row.get(2))
}

fn create(id: &str, user: &str, persona: &str, at: DateTime<Utc>, timezone: &str) -> OpCall {
    OpCall::of(&ops::SCHEDULES_CREATE)
        .param("id", id)
        .param("user_id", user)
        .param("persona_id", persona)
        .param("phone_number", PHONE)
        .param("scheduled_time", rfc3339(at))
        .param("timezone", timezone)
}

fn claim(limit: i32) -> OpCall {
    OpCall::of(&ops::SCHEDULES_CLAIM_DUE).param("limit", limit)
}

fn record_run(id: &str, status: &str) -> OpCall {
    OpCall::of(&ops::SCHEDULES_RECORD_RUN)
        .param("id", id)
        .param("status", status)
}

#[tokio::test]
async fn create_stores_one_off_and_recurring_schedules_for_an_active_persona_in_a_known_zone() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let at = now_us() + Duration::hours(1);

    let one_off = new_id("sch");
    let result = ok(app.call(&create(&one_off, &user, "brad", at, "UTC")).await).await;
    let fields = row(&result);
    assert_eq!(fields["id"], json!(one_off));
    assert_eq!(fields["persona_id"], json!("brad"));
    assert_eq!(fields["status"], json!("scheduled"));
    assert_eq!(fields["scheduled_time"], json!(rfc3339(at)));
    assert_eq!(
        fields["next_run_at"],
        json!(rfc3339(at)),
        "first due at the scheduled time"
    );
    for column in ["recurrence_rule", "recurrence_days", "local_time"] {
        assert_eq!(fields[column], Value::Null, "{column}");
    }

    // Mondays, Wednesdays and Fridays at 07:30 in Berlin.
    let weekly = new_id("sch");
    let result = ok(app
        .call(
            &create(&weekly, &user, "sarah", at, "Europe/Berlin")
                .param("recurrence_rule", "weekly")
                .param("recurrence_days", 0b001_0101)
                .param("local_time", "07:30")
                .param("scenario_template_id", "tpl_evening_wind_down")
                .param("custom_instructions", "Ask how the week went."),
        )
        .await)
    .await;
    let fields = row(&result);
    assert_eq!(fields["recurrence_rule"], json!("weekly"));
    assert_eq!(fields["recurrence_days"], json!(21));
    assert_eq!(fields["local_time"], json!("07:30"));
    assert_eq!(fields["timezone"], json!("Europe/Berlin"));
    assert_eq!(
        fields["scenario_template_id"],
        json!("tpl_evening_wind_down")
    );
    assert_eq!(
        fields["custom_instructions"],
        json!("Ask how the week went.")
    );
    let stored = db
        .query_one(
            "SELECT local_time::text, recurrence_days::int4 FROM scheduled_calls WHERE id = $1",
            &[&weekly],
        )
        .await
        .unwrap();
    assert_eq!(stored.get::<_, String>(0), "07:30:00");
    assert_eq!(stored.get::<_, i32>(1), 21);

    let weekdays = new_id("sch");
    let result = ok(app
        .call(
            &create(&weekdays, &user, "brad", at, "America/New_York")
                .param("recurrence_rule", "weekdays")
                .param("local_time", "18:05"),
        )
        .await)
    .await;
    assert_eq!(row(&result)["local_time"], json!("18:05"));
    assert_eq!(row(&result)["recurrence_days"], Value::Null);

    // A retired or unknown persona.
    db.execute(
        "UPDATE personas SET is_active = false WHERE id = 'alex'",
        &[],
    )
    .await
    .unwrap();
    for persona in ["alex", "nobody"] {
        let message = refused(
            app.call(&create(&new_id("sch"), &user, persona, at, "UTC"))
                .await,
            StatusCode::CONFLICT,
            codes::PRECONDITION_FAILED,
        )
        .await
        .error
        .message;
        assert_eq!(message, "persona not found or not active");
    }
    // Zones Postgres does not know by an IANA name (a POSIX string would pass `AT TIME ZONE`).
    for zone in ["Mars/Olympus_Mons", "XYZ+3", "europe/berlin", ""] {
        refused(
            app.call(&create(&new_id("sch"), &user, "brad", at, zone))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::CONSTRAINT_VIOLATION,
        )
        .await;
    }
    // Recurrences the table refuses.
    for bad in [
        create(&new_id("sch"), &user, "brad", at, "UTC")
            .param("recurrence_rule", "weekly")
            .param("local_time", "07:30"),
        create(&new_id("sch"), &user, "brad", at, "UTC").param("recurrence_rule", "daily"),
        create(&new_id("sch"), &user, "brad", at, "UTC")
            .param("recurrence_rule", "weekly")
            .param("recurrence_days", 0)
            .param("local_time", "07:30"),
        create(&new_id("sch"), &user, "brad", at, "UTC")
            .param("recurrence_rule", "weekly")
            .param("recurrence_days", 128)
            .param("local_time", "07:30"),
        create(&new_id("sch"), &user, "brad", at, "UTC")
            .param("recurrence_rule", "monthly")
            .param("local_time", "07:30"),
    ] {
        refused(
            app.call(&bad).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::CONSTRAINT_VIOLATION,
        )
        .await;
    }
    for time in ["25:00", "half past seven"] {
        refused(
            app.call(
                &create(&new_id("sch"), &user, "brad", at, "UTC")
                    .param("recurrence_rule", "daily")
                    .param("local_time", time),
            )
            .await,
            StatusCode::BAD_REQUEST,
            codes::INVALID_PARAMS,
        )
        .await;
    }
    refused(
        app.call(&create(&new_id("sch"), "usr_nobody", "brad", at, "UTC"))
            .await,
        StatusCode::CONFLICT,
        codes::FOREIGN_KEY_VIOLATION,
    )
    .await;

    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM scheduled_calls WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 3, "refusals store nothing");
}

#[tokio::test]
async fn list_hides_canceled_schedules_and_cancel_touches_only_the_owners() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let other = insert_user(&db).await;
    let now = now_us();
    let late = insert_schedule(&db, &user, "scheduled", Some(now + Duration::hours(3))).await;
    let soon = insert_schedule(&db, &user, "scheduled", Some(now + Duration::hours(1))).await;
    let middle = insert_schedule(&db, &user, "scheduled", Some(now + Duration::hours(2))).await;
    let done = insert_schedule(&db, &user, "executed", None).await;
    let already_canceled = insert_schedule(&db, &user, "canceled", None).await;
    let theirs = insert_schedule(&db, &other, "scheduled", Some(now + Duration::hours(1))).await;
    let list = |user: &str| OpCall::of(&ops::SCHEDULES_LIST).param("user_id", user);
    let cancel = |user: &str, id: &str| {
        OpCall::of(&ops::SCHEDULES_CANCEL)
            .param("user_id", user)
            .param("id", id)
    };

    let listed = ok(app.call(&list(&user)).await).await;
    assert_eq!(
        ids(&listed),
        vec![soon.clone(), middle.clone(), late.clone(), done.clone()],
        "next first, the finished ones last, no canceled one"
    );

    // Not theirs to cancel.
    let message = refused(
        app.call(&cancel(&other, &middle)).await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await
    .error
    .message;
    assert_eq!(message, "schedule not found");
    assert_eq!(schedule_state(&db, &middle).await.0, "scheduled");

    let canceled = ok(app.call(&cancel(&user, &middle)).await).await;
    assert_eq!(row(&canceled)["id"], json!(middle));
    assert_eq!(row(&canceled)["status"], json!("canceled"));
    assert_eq!(
        ids(&ok(app.call(&list(&user)).await).await),
        vec![soon, late, done]
    );
    for id in [&middle, &already_canceled, &"sch_nobody".to_owned()] {
        refused(
            app.call(&cancel(&user, id)).await,
            StatusCode::CONFLICT,
            codes::PRECONDITION_FAILED,
        )
        .await;
    }
    assert_eq!(ids(&ok(app.call(&list(&other)).await).await), vec![theirs]);
}

#[tokio::test]
async fn two_concurrent_claims_never_take_a_row_twice_and_together_take_every_due_row() {
    let app = spawn_app_with(TestOptions {
        pool_size: 8,
        ..TestOptions::default()
    })
    .await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let now = now_us();
    let mut due = HashSet::new();
    for minutes in 1..=20 {
        due.insert(
            insert_schedule(
                &db,
                &user,
                "scheduled",
                Some(now - Duration::minutes(minutes)),
            )
            .await,
        );
    }
    let mut untouchable = Vec::new();
    for hours in 1..=3 {
        untouchable.push(
            insert_schedule(&db, &user, "scheduled", Some(now + Duration::hours(hours))).await,
        );
    }
    for status in ["canceled", "canceled", "executing", "executed", "failed"] {
        untouchable
            .push(insert_schedule(&db, &user, status, Some(now - Duration::minutes(30))).await);
    }
    let before: Vec<_> = {
        let mut states = Vec::new();
        for id in &untouchable {
            states.push(schedule_state(&db, id).await);
        }
        states
    };
    let due_ids: Vec<String> = due.iter().cloned().collect();

    // Limits that let one run take everything, that split the rows, and uneven ones.
    for (round, (a, b)) in [(20, 20), (12, 12), (7, 15), (20, 20), (11, 10)]
        .into_iter()
        .enumerate()
    {
        let claims = [claim(a), claim(b)];
        let responses = join_all(claims.iter().map(|call| app.call(call))).await;
        let mut claimed = Vec::new();
        for response in responses {
            claimed.push(ids(&ok(response).await));
        }
        let (first, second) = (&claimed[0], &claimed[1]);
        assert!(
            first.len() <= a as usize && second.len() <= b as usize,
            "round {round}: a claim takes at most its limit: {} of {a}, {} of {b}",
            first.len(),
            second.len()
        );
        let mut all: Vec<&String> = first.iter().chain(second).collect();
        all.sort();
        let before_dedup = all.len();
        all.dedup();
        assert_eq!(
            before_dedup,
            all.len(),
            "round {round}: a row was claimed twice: {first:?} {second:?}"
        );
        let union: HashSet<String> = all.into_iter().cloned().collect();
        assert_eq!(
            union, due,
            "round {round}: together the claims take every due row and nothing else"
        );
        for id in &due_ids {
            let (status, _, claimed) = schedule_state(&db, id).await;
            assert_eq!(
                (status.as_str(), claimed),
                ("executing", true),
                "round {round}"
            );
        }
        let mut after = Vec::new();
        for id in &untouchable {
            after.push(schedule_state(&db, id).await);
        }
        assert_eq!(
            after, before,
            "round {round}: not due, canceled or not scheduled"
        );

        // Next round: the same occurrences are due again.
        db.execute(
            "UPDATE scheduled_calls SET status = 'scheduled', claimed_at = NULL WHERE id = ANY($1)",
            &[&due_ids],
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn claim_skips_rows_another_run_holds_and_returns_what_placing_the_call_needs() {
    let app = spawn_app().await;
    let mut holder = app.database.client().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let now = now_us();
    let mut due = Vec::new();
    for minutes in 1..=5 {
        due.push(
            insert_schedule(
                &db,
                &user,
                "scheduled",
                Some(now - Duration::minutes(minutes)),
            )
            .await,
        );
    }
    let recurring = new_id("sch");
    db.execute(
        "INSERT INTO scheduled_calls (id, user_id, persona_id, phone_number, scheduled_time, \
                                      recurrence_rule, local_time, timezone, scenario_template_id, \
                                      custom_instructions) \
         VALUES ($1, $2, 'sarah', $3, $4, 'daily', '07:30', 'Asia/Tokyo', 'tpl_language_practice', \
                 'Practise Japanese.')",
        &[&recurring, &user, &PHONE, &(now - Duration::hours(2))],
    )
    .await
    .unwrap();

    // Another run holds two of the due rows.
    let held = vec![due[0].clone(), due[3].clone()];
    let transaction = holder.transaction().await.unwrap();
    transaction
        .query(
            "SELECT id FROM scheduled_calls WHERE id = ANY($1) FOR UPDATE",
            &[&held],
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(StdDuration::from_secs(10), app.call(&claim(100)))
        .await
        .expect("a claim does not wait for rows another run holds");
    let first = ok(first).await;
    let got: HashSet<String> = ids(&first).into_iter().collect();
    let expected: HashSet<String> = [&due[1], &due[2], &due[4], &recurring]
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(got, expected);
    let fields = first
        .rows
        .iter()
        .find(|r| r["id"] == json!(recurring))
        .expect("the recurring schedule is claimed");
    assert_eq!(fields["user_id"], json!(user));
    assert_eq!(fields["persona_id"], json!("sarah"));
    assert_eq!(fields["phone_number"], json!(PHONE));
    assert_eq!(fields["recurrence_rule"], json!("daily"));
    assert_eq!(fields["local_time"], json!("07:30"));
    assert_eq!(fields["timezone"], json!("Asia/Tokyo"));
    assert_eq!(
        fields["scenario_template_id"],
        json!("tpl_language_practice")
    );
    assert_eq!(fields["custom_instructions"], json!("Practise Japanese."));
    assert_eq!(
        fields["next_run_at"],
        json!(rfc3339(now - Duration::hours(2)))
    );
    transaction.rollback().await.unwrap();

    let second = ok(app.call(&claim(100)).await).await;
    assert_eq!(
        ids(&second).into_iter().collect::<HashSet<_>>(),
        held.into_iter().collect::<HashSet<_>>()
    );
    assert_eq!(ok(app.call(&claim(100)).await).await.row_count, 0);
}

#[tokio::test]
async fn record_run_applies_only_to_a_claimed_run() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let now = now_us();
    let recurring =
        insert_schedule(&db, &user, "scheduled", Some(now - Duration::minutes(2))).await;
    db.execute(
        "UPDATE scheduled_calls SET recurrence_rule = 'daily', local_time = '07:30' WHERE id = $1",
        &[&recurring],
    )
    .await
    .unwrap();
    let one_off = insert_schedule(&db, &user, "scheduled", Some(now - Duration::minutes(1))).await;
    let waiting = insert_schedule(&db, &user, "scheduled", Some(now + Duration::hours(1))).await;
    let call_id = new_id("call");
    db.execute(
        "INSERT INTO calls (id, user_id, persona_id, phone_number, scheduled_call_id) \
         VALUES ($1, $2, 'brad', $3, $4)",
        &[&call_id, &user, &PHONE, &recurring],
    )
    .await
    .unwrap();

    // Not claimed: nothing to record.
    for status in ["executed", "failed"] {
        assert_eq!(
            ok(app.call(&record_run(&waiting, status)).await)
                .await
                .row_count,
            0
        );
    }
    assert_eq!(schedule_state(&db, &waiting).await.0, "scheduled");

    assert_eq!(ok(app.call(&claim(10)).await).await.row_count, 2);

    // Back to `scheduled` needs the next occurrence.
    refused(
        app.call(&record_run(&recurring, "scheduled")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        codes::CONSTRAINT_VIOLATION,
    )
    .await;
    assert_eq!(schedule_state(&db, &recurring).await.0, "executing");
    let next = now + Duration::days(1);
    let result = ok(app
        .call(
            &record_run(&recurring, "scheduled")
                .param("next_run_at", rfc3339(next))
                .param("call_id", call_id.as_str()),
        )
        .await)
    .await;
    assert_eq!(row(&result)["status"], json!("scheduled"));
    assert_eq!(row(&result)["next_run_at"], json!(rfc3339(next)));
    let stored = db
        .query_one(
            "SELECT call_id, last_run_at IS NOT NULL, claimed_at IS NULL, last_error \
             FROM scheduled_calls WHERE id = $1",
            &[&recurring],
        )
        .await
        .unwrap();
    assert_eq!(stored.get::<_, Option<String>>(0), Some(call_id.clone()));
    assert!(stored.get::<_, bool>(1) && stored.get::<_, bool>(2));
    assert_eq!(stored.get::<_, Option<String>>(3), None);
    // Recorded once: a second report of the same run finds nothing to record.
    assert_eq!(
        ok(app
            .call(&record_run(&recurring, "failed").param("last_error", "late duplicate"))
            .await)
        .await
        .row_count,
        0
    );
    assert_eq!(
        schedule_state(&db, &recurring).await,
        ("scheduled".to_owned(), Some(next), false)
    );
    // Tomorrow's occurrence is not due now.
    assert_eq!(ok(app.call(&claim(10)).await).await.row_count, 0);

    // A one-off that could not place its call.
    let result = ok(app
        .call(&record_run(&one_off, "failed").param("last_error", "daily call limit reached"))
        .await)
    .await;
    assert_eq!(row(&result)["status"], json!("failed"));
    assert_eq!(row(&result)["next_run_at"], Value::Null);
    let error: Option<String> = db
        .query_one(
            "SELECT last_error FROM scheduled_calls WHERE id = $1",
            &[&one_off],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(error.as_deref(), Some("daily call limit reached"));
    assert_eq!(
        ok(app.call(&record_run(&one_off, "executed")).await)
            .await
            .row_count,
        0
    );

    // Canceled while its run was in flight: the run's outcome does not revive it.
    db.execute(
        "UPDATE scheduled_calls SET next_run_at = now() - interval '1 minute' WHERE id = $1",
        &[&waiting],
    )
    .await
    .unwrap();
    assert_eq!(
        ids(&ok(app.call(&claim(10)).await).await),
        vec![waiting.clone()]
    );
    ok(app
        .call(
            &OpCall::of(&ops::SCHEDULES_CANCEL)
                .param("user_id", user.as_str())
                .param("id", waiting.as_str()),
        )
        .await)
    .await;
    assert_eq!(
        ok(app
            .call(&record_run(&waiting, "scheduled").param("next_run_at", rfc3339(next)))
            .await)
        .await
        .row_count,
        0
    );
    assert_eq!(schedule_state(&db, &waiting).await.0, "canceled");
}

#[tokio::test]
async fn reclaim_stuck_returns_only_runs_claimed_longer_ago_than_the_threshold() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let now = now_us();
    let mut runs = Vec::new();
    for minutes in 1..=5 {
        runs.push(
            insert_schedule(
                &db,
                &user,
                "scheduled",
                Some(now - Duration::minutes(minutes)),
            )
            .await,
        );
    }
    assert_eq!(ok(app.call(&claim(10)).await).await.row_count, 5);
    let claimed_ago = |id: String, ago: &'static str| {
        let db = &db;
        async move {
            db.execute(
                "UPDATE scheduled_calls SET claimed_at = now() - $2::text::interval WHERE id = $1",
                &[&id, &ago],
            )
            .await
            .unwrap();
        }
    };
    // Two runs a dead scheduler left 20 and 15 minutes ago; one slow but within the threshold.
    claimed_ago(runs[0].clone(), "20 minutes").await;
    claimed_ago(runs[1].clone(), "15 minutes").await;
    claimed_ago(runs[2].clone(), "9 minutes").await;
    // Rows no longer executing are not runs, however old their claim.
    let finished = insert_schedule(&db, &user, "failed", None).await;
    let rescheduled =
        insert_schedule(&db, &user, "scheduled", Some(now + Duration::hours(1))).await;
    for id in [&finished, &rescheduled] {
        claimed_ago(id.clone(), "2 hours").await;
    }
    let reclaim = |limit: i32| {
        OpCall::of(&ops::SCHEDULES_RECLAIM_STUCK)
            .param("older_than_secs", 600)
            .param("limit", limit)
    };

    // Oldest first, up to the limit.
    let first = ok(app.call(&reclaim(1)).await).await;
    assert_eq!(ids(&first), vec![runs[0].clone()]);
    let second = ok(app.call(&reclaim(100)).await).await;
    assert_eq!(ids(&second), vec![runs[1].clone()]);
    assert!(second.rows[0].contains_key("timezone") && second.rows[0].contains_key("next_run_at"));
    // Reclaiming restarts the clock: the same runs are not handed out again right away.
    assert_eq!(ok(app.call(&reclaim(100)).await).await.row_count, 0);
    for id in &runs {
        assert_eq!(schedule_state(&db, id).await.0, "executing");
    }

    // A reclaimed run is then recorded like any other.
    let result = ok(app
        .call(&record_run(&runs[0], "failed").param("last_error", "the scheduler stopped"))
        .await)
    .await;
    assert_eq!(row(&result)["status"], json!("failed"));
}

#[tokio::test]
async fn purge_blacklist_deletes_only_tokens_expired_more_than_an_hour_ago() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    for (token, expires) in [
        ("jti_two_hours", "-2 hours"),
        ("jti_61_minutes", "-61 minutes"),
        ("jti_59_minutes", "-59 minutes"),
        ("jti_one_minute", "-1 minute"),
        ("jti_future", "1 hour"),
    ] {
        db.execute(
            "INSERT INTO token_blacklist (token_id, user_id, expires_at) \
             VALUES ($1, $2, now() + $3::text::interval)",
            &[&token, &user, &expires],
        )
        .await
        .unwrap();
    }
    let purge = OpCall::of(&ops::MAINTENANCE_PURGE_BLACKLIST);

    assert_eq!(ok(app.call(&purge).await).await.row_count, 2);
    let left: Vec<String> = db
        .query(
            "SELECT token_id FROM token_blacklist ORDER BY expires_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, vec!["jti_59_minutes", "jti_one_minute", "jti_future"]);
    assert_eq!(ok(app.call(&purge).await).await.row_count, 0);
}
