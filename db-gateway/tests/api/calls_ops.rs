//! The call operations (`calls.*`, `call_logs.*`, `call_costs.*`, `credits.charge_call`,
//! `relationships.record_call`, `transcripts.save`, `memory.*`, `preferences.*`) against the
//! project's real schema: the status order shared with the domain, the daily limit and the
//! idempotency key under concurrency, statuses that only move forward, exactly-once
//! finalisation, the capped credit charge, and the reports.

use std::collections::HashSet;

use callmeback_domain::calls::CallStatus;
use callmeback_gateway_api::ops::calls as ops;
use callmeback_gateway_api::{BatchResponse, OpCall, OpResult, codes};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Map, Value, json};
use tokio_postgres::Client;

use crate::helpers::{
    TestApp, TestOptions, error_of, fresh_nonce, insert_user, ok, ok_batch, refused, spawn_app,
    spawn_app_with,
};

const PHONE: &str = "+15555550100";

/// A gateway with enough connections for ten truly simultaneous batches.
async fn spawn_concurrent_app() -> TestApp {
    spawn_app_with(TestOptions {
        pool_size: 12,
        ..TestOptions::default()
    })
    .await
}

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

/// Postgres' `now()`, and the starts of today and of this month in UTC.
async fn clock(db: &Client) -> (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>) {
    let row = db
        .query_one(
            "SELECT now(), date_trunc('day', now(), 'UTC'), date_trunc('month', now(), 'UTC')",
            &[],
        )
        .await
        .expect("read the clock");
    (row.get(0), row.get(1), row.get(2))
}

/// A call row for `user` with Brad, created (and started) at `created_at`.
async fn insert_call(db: &Client, user: &str, status: &str, created_at: DateTime<Utc>) -> String {
    let id = new_id("call");
    db.execute(
        "INSERT INTO calls (id, user_id, persona_id, phone_number, status, start_time, created_at) \
         VALUES ($1, $2, 'brad', $3, $4, $5, $5)",
        &[&id, &user, &PHONE, &status, &created_at],
    )
    .await
    .expect("insert call");
    id
}

async fn set_sid(db: &Client, call_id: &str) -> String {
    let sid = format!("CA{}", fresh_nonce());
    db.execute(
        "UPDATE calls SET twilio_call_sid = $2 WHERE id = $1",
        &[&call_id, &sid],
    )
    .await
    .expect("set sid");
    sid
}

async fn set_balance(db: &Client, user: &str, credits: i32) {
    db.execute(
        "INSERT INTO user_credits (user_id, available_credits) VALUES ($1, $2) \
         ON CONFLICT (user_id) DO UPDATE SET available_credits = EXCLUDED.available_credits",
        &[&user, &credits],
    )
    .await
    .expect("set balance");
}

async fn balance(db: &Client, user: &str) -> Option<i32> {
    db.query_opt(
        "SELECT available_credits FROM user_credits WHERE user_id = $1",
        &[&user],
    )
    .await
    .expect("read balance")
    .map(|row| row.get(0))
}

async fn count(db: &Client, sql: &str, key: &str) -> i64 {
    db.query_one(sql, &[&key]).await.expect("count").get(0)
}

/// `(status, finalized?)` of a call.
async fn call_state(db: &Client, call_id: &str) -> (String, bool) {
    let row = db
        .query_one(
            "SELECT status, finalized_at IS NOT NULL FROM calls WHERE id = $1",
            &[&call_id],
        )
        .await
        .expect("read call");
    (row.get(0), row.get(1))
}

fn row(result: &OpResult) -> &Map<String, Value> {
    result.first().expect("one row")
}

/// The batch `POST /api/calls` sends: lock the user, then create the call.
fn create_batch(
    call_id: &str,
    user: &str,
    idempotency_key: Option<&str>,
    daily_limit: Option<i32>,
) -> Vec<OpCall> {
    vec![
        OpCall::of(&ops::CALLS_LOCK_USER).param("user_id", user),
        OpCall::of(&ops::CALLS_CREATE)
            .param("id", call_id)
            .param("user_id", user)
            .param("persona_id", "brad")
            .param("phone_number", PHONE)
            .param("scenario_template_id", "tpl_morning_motivation")
            .param("custom_instructions", "Ask about the 10k.")
            .param("payment_method", "credit")
            .param("idempotency_key", idempotency_key)
            .param("daily_limit", daily_limit),
    ]
}

/// How a batch ended: its results, or its error code and the failing operation.
async fn batch_outcome(
    response: reqwest::Response,
) -> Result<BatchResponse, (String, Option<usize>)> {
    match response.status() {
        StatusCode::OK => Ok(response.json().await.expect("a batch response")),
        _ => {
            let (_, body) = error_of(response).await;
            Err((body.error.code, body.error.op_index))
        }
    }
}

// -------------------------------------------------------------------------------------------
// The status order
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn call_status_rank_in_sql_is_the_domains_and_the_check_allows_exactly_every_status() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;

    for status in CallStatus::ALL {
        let rank: Option<i32> = db
            .query_one("SELECT call_status_rank($1)", &[&status.as_str()])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            rank,
            Some(i32::from(status.rank())),
            "rank of {}",
            status.as_str()
        );
    }
    for unknown in ["ringing", "in-progress", "queued", ""] {
        let rank: Option<i32> = db
            .query_one("SELECT call_status_rank($1)", &[&unknown])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rank, None, "`{unknown}` has no rank");
    }

    // The CHECK's list, read from the catalogue, is exactly the domain's.
    let definition: String = db
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conname = 'calls_status_valid' AND conrelid = 'calls'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let allowed: HashSet<&str> = definition.split('\'').skip(1).step_by(2).collect();
    let domain: HashSet<&str> = CallStatus::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(allowed, domain, "{definition}");

    // And the table behaves so: every status is stored, anything else refused.
    for status in CallStatus::ALL {
        insert_call(&db, &user, status.as_str(), now_us()).await;
    }
    for other in ["ringing", "in-progress", "answered", "Completed"] {
        let error = db
            .execute(
                "INSERT INTO calls (id, user_id, persona_id, phone_number, status) \
                 VALUES ($1, $2, 'brad', $3, $4)",
                &[&new_id("call"), &user, &PHONE, &other],
            )
            .await
            .expect_err("the CHECK refuses it");
        assert_eq!(
            error.as_db_error().and_then(|e| e.constraint()),
            Some("calls_status_valid"),
            "{other}"
        );
    }
}

// -------------------------------------------------------------------------------------------
// Placing a call
// -------------------------------------------------------------------------------------------

fn prepare(user: &str, persona: &str, template: Option<&str>, key: Option<&str>) -> OpCall {
    OpCall::of(&ops::CALLS_PREPARE)
        .param("user_id", user)
        .param("persona_id", persona)
        .param("template_id", template)
        .param("idempotency_key", key)
}

#[tokio::test]
async fn prepare_gathers_what_placing_a_call_needs_and_counts_today_and_this_month_in_utc() {
    // Fourteen hours ahead of UTC: a "today" or "this month" taken in the session's zone would
    // disagree with UTC's at every time of day.
    let app = spawn_app_with(TestOptions {
        database_timezone: Some("Pacific/Kiritimati"),
        ..TestOptions::default()
    })
    .await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let other = insert_user(&db).await;
    let (now, today, month) = clock(&db).await;

    db.execute(
        "UPDATE users SET name = 'Ada Lovelace', phone = '+15555550123' WHERE id = $1",
        &[&user],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO user_persona_relationships (id, user_id, persona_id, relationship_type, \
                                                 custom_system_prompt, memory_summary) \
         VALUES ($1, $2, 'brad', 'coach', 'Be brief.', 'Training for a 10k.')",
        &[&new_id("rel"), &user],
    )
    .await
    .unwrap();
    set_balance(&db, &user, 12).await;
    db.execute(
        "UPDATE user_credits SET subscription_tier = 'basic' WHERE user_id = $1",
        &[&user],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO user_budget_settings (user_id, max_cost_per_call_cents, max_monthly_spend_cents, \
                                           warn_at_percent_per_call, enable_auto_cutoff) \
         VALUES ($1, 500, 20000, 80, false)",
        &[&user],
    )
    .await
    .unwrap();

    // Today's calls: counted unless they failed before reaching Twilio.
    insert_call(&db, &user, "completed", today).await;
    let failed_placed = insert_call(&db, &user, "failed", now - Duration::seconds(1)).await;
    set_sid(&db, &failed_placed).await;
    insert_call(&db, &user, "failed", now - Duration::seconds(1)).await;
    let in_flight = insert_call(&db, &user, "initiating", now).await;
    db.execute(
        "UPDATE calls SET idempotency_key = 'retry-1' WHERE id = $1",
        &[&in_flight],
    )
    .await
    .unwrap();
    // Not today (UTC), or not this user's.
    insert_call(&db, &user, "completed", today - Duration::seconds(1)).await;
    let others = insert_call(&db, &other, "completed", now).await;
    db.execute(
        "UPDATE calls SET idempotency_key = 'retry-2' WHERE id = $1",
        &[&others],
    )
    .await
    .unwrap();

    // This month's spend: breakdowns of this user's calls made since the month began (UTC).
    // The month's calls are unplaced failures, so they never count as today's calls.
    let first_of_month = insert_call(&db, &user, "failed", month).await;
    let last_month = insert_call(&db, &user, "failed", month - Duration::seconds(1)).await;
    for (call, twilio, deepgram, cerebras, elevenlabs) in [
        (&first_of_month, "1.5", "0.25", "0.0125", "3"),
        (&failed_placed, "2", "0", "0", "0"),
        (&last_month, "100", "0", "0", "0"),
        (&others, "50", "0", "0", "0"),
    ] {
        db.execute(
            "INSERT INTO call_cost_breakdowns (id, call_id, twilio_cost_cents, deepgram_cost_cents, \
                                               cerebras_cost_cents, elevenlabs_cost_cents) \
             VALUES ($1, $2, $3::text::numeric, $4::text::numeric, $5::text::numeric, $6::text::numeric)",
            &[&new_id("cost"), call, &twilio, &deepgram, &cerebras, &elevenlabs],
        )
        .await
        .unwrap();
    }

    let result = ok(app
        .call(&prepare(
            &user,
            "brad",
            Some("tpl_morning_motivation"),
            Some("retry-1"),
        ))
        .await)
    .await;
    assert_eq!(result.row_count, 1);
    let fields = row(&result);
    assert_eq!(fields["user_id"], json!(user));
    assert_eq!(fields["user_name"], json!("Ada Lovelace"));
    assert_eq!(fields["user_phone"], json!("+15555550123"));
    assert_eq!(fields["voicemail_action"], json!("leave_message"));
    assert_eq!(fields["persona_id"], json!("brad"));
    assert_eq!(fields["persona_name"], json!("Brad"));
    assert_eq!(fields["persona_active"], json!(true));
    assert!(fields["core_system_prompt"].is_string());
    assert_eq!(fields["relationship_type"], json!("coach"));
    assert_eq!(fields["custom_system_prompt"], json!("Be brief."));
    assert_eq!(fields["memory_summary"], json!("Training for a 10k."));
    assert_eq!(fields["template_id"], json!("tpl_morning_motivation"));
    assert_eq!(fields["template_active"], json!(true));
    assert!(fields["opening_line"].is_string());
    assert_eq!(fields["available_credits"], json!(12));
    assert_eq!(fields["subscription_tier"], json!("basic"));
    assert_eq!(
        fields["calls_today"],
        json!(3),
        "completed at UTC midnight, failed with a sid, in flight"
    );
    assert_eq!(fields["max_cost_per_call_cents"], json!(500));
    assert_eq!(fields["max_monthly_spend_cents"], json!(20000));
    assert_eq!(fields["warn_at_percent_per_call"], json!(80));
    assert_eq!(fields["enable_auto_cutoff"], json!(false));
    assert_eq!(
        fields["month_spent_cents"],
        json!("6.7625"),
        "4.7625 + 2: not last month's call, not the other user's"
    );
    assert_eq!(fields["existing_call_id"], json!(in_flight));

    // Another user's key, no key, an unknown template, a retired and an unknown persona.
    let fields = ok(app
        .call(&prepare(&user, "brad", None, Some("retry-2")))
        .await)
    .await;
    assert_eq!(row(&fields)["existing_call_id"], Value::Null);
    assert_eq!(row(&fields)["template_id"], Value::Null);
    let fields = ok(app
        .call(&prepare(&user, "brad", Some("tpl_nonexistent"), None))
        .await)
    .await;
    assert_eq!(row(&fields)["existing_call_id"], Value::Null);
    assert_eq!(row(&fields)["template_id"], Value::Null);
    db.execute(
        "UPDATE personas SET is_active = false WHERE id = 'alex'",
        &[],
    )
    .await
    .unwrap();
    let fields = ok(app.call(&prepare(&user, "alex", None, None)).await).await;
    assert_eq!(row(&fields)["persona_id"], json!("alex"));
    assert_eq!(row(&fields)["persona_active"], json!(false));
    assert_eq!(
        row(&fields)["relationship_type"],
        Value::Null,
        "no relationship with Alex"
    );
    let fields = ok(app.call(&prepare(&user, "nobody", None, None)).await).await;
    assert_eq!(row(&fields)["persona_id"], Value::Null);
    assert_eq!(row(&fields)["persona_active"], Value::Null);

    // A newcomer: no credits row, no budget, nothing spent, no calls.
    let newcomer = insert_user(&db).await;
    let fields = ok(app.call(&prepare(&newcomer, "brad", None, None)).await).await;
    let fields = row(&fields);
    assert_eq!(fields["available_credits"], Value::Null);
    assert_eq!(fields["subscription_tier"], Value::Null);
    assert_eq!(fields["max_cost_per_call_cents"], Value::Null);
    assert_eq!(fields["calls_today"], json!(0));
    assert_eq!(fields["month_spent_cents"], json!("0"));
    assert_eq!(fields["memory_summary"], Value::Null);

    // Unknown and deactivated users cannot place calls.
    db.execute(
        "UPDATE users SET is_active = false WHERE id = $1",
        &[&other],
    )
    .await
    .unwrap();
    for nobody in [other.as_str(), "usr_nobody"] {
        let message = refused(
            app.call(&prepare(nobody, "brad", None, None)).await,
            StatusCode::CONFLICT,
            codes::PRECONDITION_FAILED,
        )
        .await
        .error
        .message;
        assert_eq!(message, "user not found");
    }
}

#[tokio::test]
async fn create_respects_the_daily_limit_and_no_limit_means_unlimited() {
    let app = spawn_app_with(TestOptions {
        database_timezone: Some("Pacific/Kiritimati"),
        ..TestOptions::default()
    })
    .await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let (_, today, _) = clock(&db).await;
    // Yesterday's calls (UTC) do not count.
    insert_call(&db, &user, "completed", today - Duration::seconds(1)).await;
    insert_call(&db, &user, "completed", today - Duration::hours(3)).await;

    let first = new_id("call");
    let results = ok_batch(app.batch(create_batch(&first, &user, None, Some(2))).await).await;
    assert_eq!(results.results[0].first().unwrap()["id"], json!(user));
    let created = results.results[1].first().expect("the call row");
    assert_eq!(created["id"], json!(first));
    assert_eq!(created["status"], json!("initiating"));
    assert_eq!(created["persona_id"], json!("brad"));
    assert_eq!(created["phone_number"], json!(PHONE));
    assert_eq!(
        created["scenario_template_id"],
        json!("tpl_morning_motivation")
    );
    assert_eq!(created["custom_instructions"], json!("Ask about the 10k."));
    assert_eq!(created["twilio_call_sid"], Value::Null);

    let second = new_id("call");
    ok_batch(app.batch(create_batch(&second, &user, None, Some(2))).await).await;
    let (status, body) = error_of(
        app.batch(create_batch(&new_id("call"), &user, None, Some(2)))
            .await,
    )
    .await;
    assert_eq!(
        (status, body.error.code.as_str(), body.error.op_index),
        (StatusCode::CONFLICT, codes::PRECONDITION_FAILED, Some(1)),
        "the third call of a 2-a-day user: {}",
        body.error.message
    );

    // A call Twilio refused (failed, no sid) gives its slot back; one it placed does not.
    ok(app
        .call(
            &OpCall::of(&ops::CALLS_MARK_PLACED)
                .param("call_id", first.as_str())
                .param("twilio_call_sid", format!("CA{}", fresh_nonce())),
        )
        .await)
    .await;
    ok(app
        .call(
            &OpCall::of(&ops::CALLS_MARK_FAILED)
                .param("call_id", second.as_str())
                .param("error_message", "Twilio: invalid number"),
        )
        .await)
    .await;
    let third = new_id("call");
    ok_batch(app.batch(create_batch(&third, &user, None, Some(2))).await).await;
    refused(
        app.batch(create_batch(&new_id("call"), &user, None, Some(2)))
            .await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;

    // No limit: premium and unlimited tiers.
    for _ in 0..3 {
        ok_batch(
            app.batch(create_batch(&new_id("call"), &user, None, None))
                .await,
        )
        .await;
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM calls WHERE user_id = $1", &user).await,
        2 + 3 + 3
    );

    // The lock finds no such user: the batch stops there.
    let (status, body) = error_of(
        app.batch(create_batch(&new_id("call"), "usr_nobody", None, None))
            .await,
    )
    .await;
    assert_eq!(
        (status, body.error.code.as_str(), body.error.op_index),
        (StatusCode::CONFLICT, codes::PRECONDITION_FAILED, Some(0))
    );
}

#[tokio::test]
async fn ten_simultaneous_creates_with_one_call_left_today_place_exactly_one() {
    let app = spawn_concurrent_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let bystander = insert_user(&db).await;
    for _ in 0..2 {
        insert_call(&db, &user, "completed", now_us()).await;
    }

    for round in 0..3 {
        // A limit of (calls so far + 1): one call left in every round.
        let limit = 3 + round;
        let batches: Vec<Vec<OpCall>> = (0..10)
            .map(|_| create_batch(&new_id("call"), &user, None, Some(limit)))
            .collect();
        // Another user's calls at the same moment are not held up or counted.
        let bystanders: Vec<Vec<OpCall>> = (0..2)
            .map(|_| create_batch(&new_id("call"), &bystander, None, Some(2 * (round + 1))))
            .collect();
        let responses = join_all(
            batches
                .iter()
                .chain(&bystanders)
                .map(|ops| app.batch(ops.clone())),
        )
        .await;
        let mut outcomes = Vec::new();
        for response in responses {
            outcomes.push(batch_outcome(response).await);
        }
        let (mine, theirs) = outcomes.split_at(10);
        assert_eq!(
            mine.iter().filter(|outcome| outcome.is_ok()).count(),
            1,
            "round {round}: {mine:?}"
        );
        for outcome in mine.iter().filter_map(|outcome| outcome.as_ref().err()) {
            assert_eq!(
                outcome,
                &(codes::PRECONDITION_FAILED.to_owned(), Some(1)),
                "round {round}"
            );
        }
        assert!(theirs.iter().all(Result::is_ok), "{theirs:?}");
        assert_eq!(
            count(&db, "SELECT count(*) FROM calls WHERE user_id = $1", &user).await,
            i64::from(limit)
        );
    }
}

#[tokio::test]
async fn an_idempotency_key_places_one_call_per_user_even_when_requests_race() {
    let app = spawn_concurrent_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let other = insert_user(&db).await;

    let first = new_id("call");
    ok_batch(
        app.batch(create_batch(&first, &user, Some("key-1"), None))
            .await,
    )
    .await;
    let (status, body) = error_of(
        app.batch(create_batch(&new_id("call"), &user, Some("key-1"), None))
            .await,
    )
    .await;
    assert_eq!(
        (status, body.error.code.as_str(), body.error.op_index),
        (StatusCode::CONFLICT, codes::PRECONDITION_FAILED, Some(1))
    );
    // The retry finds the call the key placed.
    let found = ok(app
        .call(
            &OpCall::of(&ops::CALLS_BY_IDEMPOTENCY_KEY)
                .param("user_id", user.as_str())
                .param("idempotency_key", "key-1"),
        )
        .await)
    .await;
    assert_eq!(found.row_count, 1);
    assert_eq!(row(&found)["id"], json!(first));
    let prepared = ok(app.call(&prepare(&user, "brad", None, Some("key-1"))).await).await;
    assert_eq!(row(&prepared)["existing_call_id"], json!(first));

    // Another user's key of the same text is theirs alone.
    let others = new_id("call");
    ok_batch(
        app.batch(create_batch(&others, &other, Some("key-1"), None))
            .await,
    )
    .await;
    let found = ok(app
        .call(
            &OpCall::of(&ops::CALLS_BY_IDEMPOTENCY_KEY)
                .param("user_id", other.as_str())
                .param("idempotency_key", "key-1"),
        )
        .await)
    .await;
    assert_eq!(row(&found)["id"], json!(others));
    assert_eq!(
        ok(app
            .call(
                &OpCall::of(&ops::CALLS_BY_IDEMPOTENCY_KEY)
                    .param("user_id", user.as_str())
                    .param("idempotency_key", "key-unused"),
            )
            .await)
        .await
        .row_count,
        0
    );

    // Ten racing requests with one new key, with and without the user lock: one row each time.
    for (key, locked) in [("key-2", true), ("key-3", false)] {
        let batches: Vec<Vec<OpCall>> = (0..10)
            .map(|_| {
                let mut ops = create_batch(&new_id("call"), &user, Some(key), None);
                if !locked {
                    ops.remove(0);
                }
                ops
            })
            .collect();
        let responses = join_all(batches.iter().map(|ops| app.batch(ops.clone()))).await;
        let mut placed = 0;
        for response in responses {
            match batch_outcome(response).await {
                Ok(_) => placed += 1,
                Err((code, _)) => assert_eq!(code, codes::PRECONDITION_FAILED, "{key}"),
            }
        }
        assert_eq!(placed, 1, "{key}");
        let rows = db
            .query_one(
                "SELECT count(*) FROM calls WHERE user_id = $1 AND idempotency_key = $2",
                &[&user, &key],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(rows, 1, "{key}");
    }
}

// -------------------------------------------------------------------------------------------
// Status
// -------------------------------------------------------------------------------------------

fn mark_placed(call_id: &str, sid: &str) -> OpCall {
    OpCall::of(&ops::CALLS_MARK_PLACED)
        .param("call_id", call_id)
        .param("twilio_call_sid", sid)
}

fn mark_failed(call_id: &str, reason: &str) -> OpCall {
    OpCall::of(&ops::CALLS_MARK_FAILED)
        .param("call_id", call_id)
        .param("error_message", reason)
}

fn advance(call_id: &str, status: &str) -> OpCall {
    OpCall::of(&ops::CALLS_ADVANCE_STATUS)
        .param("call_id", call_id)
        .param("status", status)
}

async fn sid_of(db: &Client, call_id: &str) -> Option<String> {
    db.query_one(
        "SELECT twilio_call_sid FROM calls WHERE id = $1",
        &[&call_id],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn mark_placed_stores_the_sid_and_moves_initiating_to_calling_but_never_back() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;

    let call = insert_call(&db, &user, "initiating", now_us()).await;
    let result = ok(app.call(&mark_placed(&call, "CA_first")).await).await;
    assert_eq!(row(&result)["status"], json!("calling"));
    assert_eq!(sid_of(&db, &call).await.as_deref(), Some("CA_first"));

    // Twilio's callbacks got there first: the call stays where they left it.
    for status in ["calling", "connected", "in_progress", "completed", "busy"] {
        let call = insert_call(&db, &user, status, now_us()).await;
        let sid = format!("CA{}", fresh_nonce());
        let result = ok(app.call(&mark_placed(&call, &sid)).await).await;
        assert_eq!(row(&result)["status"], json!(status));
        assert_eq!(call_state(&db, &call).await.0, status);
        assert_eq!(sid_of(&db, &call).await, Some(sid));
    }

    assert_eq!(
        ok(app.call(&mark_placed("call_nobody", "CA_x")).await)
            .await
            .row_count,
        0
    );
}

#[tokio::test]
async fn mark_failed_fails_and_finalises_only_a_call_not_yet_finalised() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;

    let call = insert_call(&db, &user, "initiating", now_us()).await;
    let result = ok(app
        .call(&mark_failed(&call, "Twilio: invalid number"))
        .await)
    .await;
    assert_eq!(row(&result)["id"], json!(call));
    let stored = db
        .query_one(
            "SELECT status, error_message, end_time IS NOT NULL, finalized_at IS NOT NULL \
             FROM calls WHERE id = $1",
            &[&call],
        )
        .await
        .unwrap();
    assert_eq!(stored.get::<_, String>(0), "failed");
    assert_eq!(stored.get::<_, String>(1), "Twilio: invalid number");
    assert!(stored.get::<_, bool>(2) && stored.get::<_, bool>(3));

    // Once finalised, neither a second failure nor a finalisation changes it.
    let again = ok(app.call(&mark_failed(&call, "something else")).await).await;
    assert_eq!(again.row_count, 0);
    let message: String = db
        .query_one("SELECT error_message FROM calls WHERE id = $1", &[&call])
        .await
        .unwrap()
        .get(0);
    assert_eq!(message, "Twilio: invalid number");

    // A call finalised as completed is not turned into a failure.
    let done = insert_call(&db, &user, "completed", now_us()).await;
    db.execute(
        "UPDATE calls SET finalized_at = now() WHERE id = $1",
        &[&done],
    )
    .await
    .unwrap();
    assert_eq!(
        ok(app.call(&mark_failed(&done, "late failure")).await)
            .await
            .row_count,
        0
    );
    assert_eq!(call_state(&db, &done).await, ("completed".to_owned(), true));
}

#[tokio::test]
async fn advance_status_moves_only_forward_never_into_a_final_status_nor_on_a_finalised_call() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let answered_at = |call: String| {
        let db = &db;
        async move {
            db.query_one("SELECT answered_at FROM calls WHERE id = $1", &[&call])
                .await
                .unwrap()
                .get::<_, Option<DateTime<Utc>>>(0)
        }
    };

    let call = insert_call(&db, &user, "initiating", now_us()).await;
    let moved = ok(app
        .call(&advance(&call, "calling").param("twilio_call_sid", "CA_cb"))
        .await)
    .await;
    assert_eq!(row(&moved)["status"], json!("calling"));
    assert_eq!(
        sid_of(&db, &call).await.as_deref(),
        Some("CA_cb"),
        "a callback may bring the sid"
    );
    assert_eq!(answered_at(call.clone()).await, None);

    // Duplicates and stale reports change nothing and say so with no row.
    for stale in ["calling", "initiating"] {
        assert_eq!(
            ok(app.call(&advance(&call, stale)).await).await.row_count,
            0,
            "{stale}"
        );
        assert_eq!(call_state(&db, &call).await.0, "calling");
    }

    // Skipping ahead is fine; the pick-up time is set once.
    let moved = ok(app
        .call(&advance(&call, "in_progress").param("twilio_call_sid", "CA_other"))
        .await)
    .await;
    assert_eq!(row(&moved)["status"], json!("in_progress"));
    assert_eq!(
        sid_of(&db, &call).await.as_deref(),
        Some("CA_cb"),
        "a known sid is not replaced"
    );
    let picked_up = answered_at(call.clone())
        .await
        .expect("answered_at set on in_progress");
    let late = ok(app
        .call(&advance(&call, "connected").param("twilio_call_sid", "CA_late"))
        .await)
    .await;
    assert_eq!(late.row_count, 0, "connected arrives after in_progress");
    assert_eq!(call_state(&db, &call).await.0, "in_progress");
    assert_eq!(sid_of(&db, &call).await.as_deref(), Some("CA_cb"));
    assert_eq!(answered_at(call.clone()).await, Some(picked_up));

    // connected then in_progress: answered_at stays the first.
    let other = insert_call(&db, &user, "calling", now_us()).await;
    ok(app.call(&advance(&other, "connected")).await).await;
    let first_pick_up = answered_at(other.clone()).await.expect("set on connected");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let moved = ok(app.call(&advance(&other, "in_progress")).await).await;
    assert_eq!(row(&moved)["status"], json!("in_progress"));
    assert_eq!(answered_at(other.clone()).await, Some(first_pick_up));

    // Final statuses are finalisation's business, never a status update's.
    for status in CallStatus::ALL.iter().filter(|s| s.is_final()) {
        assert_eq!(
            ok(app.call(&advance(&call, status.as_str())).await)
                .await
                .row_count,
            0,
            "{}",
            status.as_str()
        );
    }
    assert_eq!(call_state(&db, &call).await.0, "in_progress");
    // Unknown words have no rank and move nothing.
    assert_eq!(
        ok(app.call(&advance(&other, "ringing")).await)
            .await
            .row_count,
        0
    );

    // A finalised call does not move, even to a higher, non-final rank.
    let closed = insert_call(&db, &user, "calling", now_us()).await;
    db.execute(
        "UPDATE calls SET finalized_at = now() WHERE id = $1",
        &[&closed],
    )
    .await
    .unwrap();
    for status in ["connected", "in_progress"] {
        assert_eq!(
            ok(app.call(&advance(&closed, status)).await)
                .await
                .row_count,
            0
        );
    }
    assert_eq!(call_state(&db, &closed).await, ("calling".to_owned(), true));
    assert_eq!(answered_at(closed).await, None);
}

// -------------------------------------------------------------------------------------------
// Finalisation
// -------------------------------------------------------------------------------------------

/// One call's outcome with the ids the Worker picks once (`Pending`), so retries are identical.
struct Outcome {
    call_id: String,
    user_id: String,
    status: &'static str,
    answered_at: DateTime<Utc>,
    ended_at: DateTime<Utc>,
    duration_secs: i32,
    credits_used: i32,
    memory: Option<&'static str>,
    log_id: String,
    breakdown_id: String,
    transaction_id: String,
    relationship_id: String,
}

impl Outcome {
    /// A call of `user` answered two minutes ago that just ended after 61 seconds.
    async fn of_new_call(db: &Client, user: &str, credits_used: i32) -> Self {
        let started = now_us() - Duration::minutes(2);
        let call_id = insert_call(db, user, "in_progress", started).await;
        set_sid(db, &call_id).await;
        let answered_at = started + Duration::seconds(5);
        Self {
            call_id,
            user_id: user.to_owned(),
            status: "completed",
            answered_at,
            ended_at: answered_at + Duration::seconds(61),
            duration_secs: 61,
            credits_used,
            memory: Some("Likes tea."),
            log_id: new_id("clog"),
            breakdown_id: new_id("cost"),
            transaction_id: new_id("txn"),
            relationship_id: new_id("rel"),
        }
    }

    fn event_id(&self, seq: u32) -> String {
        format!("cev_{}_{seq}", self.call_id)
    }

    fn events(&self) -> Value {
        let at = rfc3339(self.ended_at);
        json!([
            {"id": self.event_id(1), "provider": "twilio", "kind": "call_minutes",
             "quantity": "1.016667", "unit": "minutes", "cost_cents": "1.700000", "occurred_at": at},
            {"id": self.event_id(2), "provider": "deepgram", "kind": "stt_audio",
             "quantity": "61.000", "unit": "seconds", "cost_cents": "0.427000", "occurred_at": at},
            {"id": self.event_id(3), "provider": "cerebras", "kind": "llm_output_tokens",
             "quantity": "40", "unit": "tokens", "cost_cents": "0.018600", "occurred_at": at},
        ])
    }

    /// The batch `finalization_ops` (workers/api/src/call_session/finalize.rs) builds.
    fn batch(&self) -> Vec<OpCall> {
        let call_id = self.call_id.as_str();
        let ended_at = rfc3339(self.ended_at);
        let answered_at = rfc3339(self.answered_at);
        let mut batch = vec![
            OpCall::of(&ops::CALLS_FINALIZE)
                .param("call_id", call_id)
                .param("status", self.status)
                .param("ended_at", ended_at.as_str())
                .param("duration_seconds", self.duration_secs)
                .param("credits_used", self.credits_used)
                .param("actual_cost_cents", 4)
                .param("error_message", None::<&str>)
                .param("answered_at", answered_at.as_str())
                .param("answered_by", "human"),
            OpCall::of(&ops::CALL_LOGS_RECORD)
                .param("id", self.log_id.as_str())
                .param("call_id", call_id)
                .param("status", "completed")
                .param("duration_seconds", self.duration_secs)
                .param("error_message", None::<&str>)
                .param("cost_stt", 0)
                .param("cost_llm", 0)
                .param("cost_tts", 2)
                .param("cost_twilio", 2)
                .param("cost_total", 4)
                .param("turn_count", 6)
                .param("interrupt_count", 1)
                .param("avg_response_time_ms", 340)
                .param("started_at", answered_at.as_str())
                .param("ended_at", ended_at.as_str())
                .param("end_reason", "caller_hung_up")
                .param(
                    "failures",
                    json!([{"provider": "telephony", "kind": "dropped_frames:invalid_json", "count": 2}]),
                )
                .param("response_times_ms", json!([320, 360])),
            OpCall::of(&ops::COST_BREAKDOWN_RECORD)
                .param("id", self.breakdown_id.as_str())
                .param("call_id", call_id)
                .param("twilio_cost_cents", "1.7000")
                .param("deepgram_cost_cents", "0.4270")
                .param("cerebras_cost_cents", "0.0186")
                .param("elevenlabs_cost_cents", "2.1600")
                .param("twilio_duration_seconds", self.duration_secs)
                .param("deepgram_audio_seconds", "61.00")
                .param("cerebras_input_tokens", 300)
                .param("cerebras_output_tokens", 40)
                .param("elevenlabs_characters", 120),
            OpCall::of(&ops::COST_EVENTS_ADD)
                .param("call_id", call_id)
                .param("events", self.events()),
        ];
        if self.credits_used > 0 {
            batch.push(
                OpCall::of(&ops::CREDITS_CHARGE_CALL)
                    .param("user_id", self.user_id.as_str())
                    .param("amount", self.credits_used)
                    .param("transaction_id", self.transaction_id.as_str())
                    .param("call_id", call_id)
                    .param(
                        "description",
                        format!("Call of {} started minute(s)", self.credits_used),
                    ),
            );
        }
        batch.push(
            OpCall::of(&ops::RELATIONSHIPS_RECORD_CALL)
                .param("id", self.relationship_id.as_str())
                .param("user_id", self.user_id.as_str())
                .param("persona_id", "brad")
                .param("duration_seconds", self.duration_secs)
                .param("ended_at", ended_at.as_str())
                .param("memory_summary", self.memory),
        );
        batch.push(
            OpCall::of(&ops::TRANSCRIPTS_SAVE)
                .param("call_id", call_id)
                .param(
                    "messages",
                    json!([
                        {"role": "assistant", "content": "Hi Ada!", "timestamp": answered_at, "interrupted": true},
                        {"role": "user", "content": "Hello.", "timestamp": ended_at},
                    ]),
                ),
        );
        batch
    }
}

/// Everything finalisation writes about one call and its user, to compare before and after.
#[derive(Debug, PartialEq)]
struct Recorded {
    call: (String, Option<i32>, Option<i32>, Option<i32>, bool),
    balance: Option<i32>,
    ledger: Vec<(i32, i32, i32)>,
    logs: i64,
    breakdowns: i64,
    events: i64,
    relationship: Option<(i32, i64, Option<String>)>,
    transcripts: i64,
}

async fn recorded(db: &Client, outcome: &Outcome) -> Recorded {
    let call = db
        .query_one(
            "SELECT status, duration_seconds, credits_used, actual_cost_cents, \
                    finalized_at IS NOT NULL FROM calls WHERE id = $1",
            &[&outcome.call_id],
        )
        .await
        .unwrap();
    let ledger = db
        .query(
            "SELECT amount, balance_before, balance_after FROM credit_transactions \
             WHERE user_id = $1 ORDER BY created_at, id",
            &[&outcome.user_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let relationship = db
        .query_opt(
            "SELECT total_calls, total_duration_seconds, memory_summary \
             FROM user_persona_relationships WHERE user_id = $1 AND persona_id = 'brad'",
            &[&outcome.user_id],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2)));
    let call_id = outcome.call_id.as_str();
    Recorded {
        call: (
            call.get(0),
            call.get(1),
            call.get(2),
            call.get(3),
            call.get(4),
        ),
        balance: balance(db, &outcome.user_id).await,
        ledger,
        logs: count(
            db,
            "SELECT count(*) FROM call_logs WHERE call_id = $1",
            call_id,
        )
        .await,
        breakdowns: count(
            db,
            "SELECT count(*) FROM call_cost_breakdowns WHERE call_id = $1",
            call_id,
        )
        .await,
        events: count(
            db,
            "SELECT count(*) FROM call_cost_events WHERE call_id = $1",
            call_id,
        )
        .await,
        relationship,
        transcripts: count(
            db,
            "SELECT count(*) FROM call_transcripts WHERE call_id = $1",
            call_id,
        )
        .await,
    }
}

#[tokio::test]
async fn the_finalisation_batch_lands_once_and_a_replay_fails_first_and_changes_nothing() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    set_balance(&db, &user, 10).await;
    let outcome = Outcome::of_new_call(&db, &user, 2).await;

    let results = ok_batch(app.batch(outcome.batch()).await).await.results;
    assert_eq!(results.len(), 7);
    assert_eq!(results[0].first().unwrap()["user_id"], json!(user));
    assert_eq!(results[0].first().unwrap()["persona_id"], json!("brad"));
    assert_eq!(results[1].row_count, 1, "log written");
    assert_eq!(
        results[2].first().unwrap()["total_cost_cents"],
        json!("4.3056")
    );
    assert_eq!(results[3].row_count, 3, "three events added");
    let charge = results[4].first().expect("a ledger row");
    assert_eq!(
        (
            &charge["id"],
            &charge["amount"],
            &charge["balance_before"],
            &charge["balance_after"]
        ),
        (
            &json!(outcome.transaction_id),
            &json!(-2),
            &json!(10),
            &json!(8)
        )
    );
    assert_eq!(results[5].first().unwrap()["total_calls"], json!(1));
    assert_eq!(
        results[6].first().unwrap()["call_id"],
        json!(outcome.call_id)
    );

    let after = recorded(&db, &outcome).await;
    assert_eq!(
        after,
        Recorded {
            call: ("completed".to_owned(), Some(61), Some(2), Some(4), true),
            balance: Some(8),
            ledger: vec![(-2, 10, 8)],
            logs: 1,
            breakdowns: 1,
            events: 3,
            relationship: Some((1, 61, Some("Likes tea.".to_owned()))),
            transcripts: 1,
        }
    );
    let call = db
        .query_one(
            "SELECT end_time, answered_at, answered_by, payment_method, payment_status \
             FROM calls WHERE id = $1",
            &[&outcome.call_id],
        )
        .await
        .unwrap();
    assert_eq!(call.get::<_, DateTime<Utc>>(0), outcome.ended_at);
    assert_eq!(call.get::<_, DateTime<Utc>>(1), outcome.answered_at);
    assert_eq!(call.get::<_, String>(2), "human");
    assert_eq!(call.get::<_, String>(3), "credit");
    assert_eq!(call.get::<_, String>(4), "credit_used");
    let ledger_call: Option<String> = db
        .query_one(
            "SELECT call_id FROM credit_transactions WHERE id = $1",
            &[&outcome.transaction_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ledger_call.as_deref(), Some(outcome.call_id.as_str()));

    // The same batch again (the Worker's retry after a lost answer): op 0 refuses, nothing moves.
    let (status, body) = error_of(app.batch(outcome.batch()).await).await;
    assert_eq!(
        (status, body.error.code.as_str(), body.error.op_index),
        (StatusCode::CONFLICT, codes::PRECONDITION_FAILED, Some(0))
    );
    assert_eq!(body.error.message, "the call was already finalised");
    assert_eq!(recorded(&db, &outcome).await, after);

    // A different outcome for the same call, with new ids and new events, is refused the same way.
    let mut second = Outcome::of_new_call(&db, &user, 5).await;
    second.call_id = outcome.call_id.clone();
    second.status = "failed";
    second.memory = Some("Something else.");
    let mut batch = second.batch();
    batch.insert(
        4,
        OpCall::of(&ops::COST_EVENTS_ADD)
            .param("call_id", second.call_id.as_str())
            .param(
                "events",
                json!([{"id": new_id("cev"), "provider": "elevenlabs", "kind": "tts_characters",
                        "quantity": "120", "unit": "characters", "cost_cents": "2.160000",
                        "occurred_at": rfc3339(now_us())}]),
            ),
    );
    let (_, body) = error_of(app.batch(batch).await).await;
    assert_eq!(
        (body.error.code.as_str(), body.error.op_index),
        (codes::PRECONDITION_FAILED, Some(0))
    );
    assert_eq!(recorded(&db, &outcome).await, after);
}

#[tokio::test]
async fn identical_finalisation_batches_at_the_same_moment_commit_exactly_once() {
    let app = spawn_concurrent_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    set_balance(&db, &user, 10).await;

    for round in 0..3 {
        let outcome = Outcome::of_new_call(&db, &user, 3).await;
        let batch = outcome.batch();
        let responses = join_all((0..5).map(|_| app.batch(batch.clone()))).await;
        let mut committed = 0;
        for response in responses {
            match batch_outcome(response).await {
                Ok(_) => committed += 1,
                Err(error) => assert_eq!(
                    error,
                    (codes::PRECONDITION_FAILED.to_owned(), Some(0)),
                    "round {round}"
                ),
            }
        }
        assert_eq!(committed, 1, "round {round}");
        let state = recorded(&db, &outcome).await;
        assert_eq!(
            (
                state.logs,
                state.breakdowns,
                state.events,
                state.transcripts
            ),
            (1, 1, 3, 1)
        );
        assert_eq!(
            state.relationship.map(|r| r.0),
            Some(round + 1),
            "one more call per round"
        );
    }
    assert_eq!(balance(&db, &user).await, Some(1), "10 - 3 - 3 - 3");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM credit_transactions WHERE user_id = $1",
            &user
        )
        .await,
        3
    );
}

fn charge(user: &str, amount: i32, call_id: &str) -> OpCall {
    OpCall::of(&ops::CREDITS_CHARGE_CALL)
        .param("user_id", user)
        .param("amount", amount)
        .param("transaction_id", new_id("txn"))
        .param("call_id", call_id)
        .param("description", format!("Call of {amount} started minute(s)"))
}

#[tokio::test]
async fn charge_call_takes_the_amount_or_what_is_left_and_nothing_from_an_empty_balance() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let ledger = |user: String| {
        let db = &db;
        async move {
            db.query(
                "SELECT amount, balance_before, balance_after, type, call_id, description \
                 FROM credit_transactions WHERE user_id = $1 ORDER BY created_at, id",
                &[&user],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, i32>(0),
                    r.get::<_, i32>(1),
                    r.get::<_, i32>(2),
                    r.get::<_, String>(3),
                    r.get::<_, Option<String>>(4),
                    r.get::<_, Option<String>>(5),
                )
            })
            .collect::<Vec<_>>()
        }
    };

    // Enough credits: the amount.
    set_balance(&db, &user, 10).await;
    let first = insert_call(&db, &user, "completed", now_us()).await;
    let result = ok(app.call(&charge(&user, 4, &first)).await).await;
    assert_eq!(
        (
            &row(&result)["amount"],
            &row(&result)["balance_before"],
            &row(&result)["balance_after"]
        ),
        (&json!(-4), &json!(10), &json!(6))
    );
    assert_eq!(balance(&db, &user).await, Some(6));

    // Fewer credits than the call used: what is left, down to zero, never below.
    let second = insert_call(&db, &user, "completed", now_us()).await;
    let result = ok(app.call(&charge(&user, 9, &second)).await).await;
    assert_eq!(
        (
            &row(&result)["amount"],
            &row(&result)["balance_before"],
            &row(&result)["balance_after"]
        ),
        (&json!(-6), &json!(6), &json!(0))
    );
    assert_eq!(balance(&db, &user).await, Some(0));

    // Nothing left: nothing taken, no ledger row.
    let third = insert_call(&db, &user, "completed", now_us()).await;
    let result = ok(app.call(&charge(&user, 2, &third)).await).await;
    assert_eq!(result.row_count, 0);
    assert_eq!(balance(&db, &user).await, Some(0));
    assert_eq!(
        ledger(user.clone()).await,
        vec![
            (
                -4,
                10,
                6,
                "call_deduction".to_owned(),
                Some(first.clone()),
                Some("Call of 4 started minute(s)".to_owned())
            ),
            (
                -6,
                6,
                0,
                "call_deduction".to_owned(),
                Some(second.clone()),
                Some("Call of 9 started minute(s)".to_owned())
            ),
        ]
    );

    // One deduction per call, whatever the path: a second charge of a call is refused.
    set_balance(&db, &user, 5).await;
    refused(
        app.call(&charge(&user, 1, &first)).await,
        StatusCode::CONFLICT,
        codes::CONFLICT,
    )
    .await;
    assert_eq!(balance(&db, &user).await, Some(5));
    // Zero or less charges nothing.
    for amount in [0, -3] {
        let call = insert_call(&db, &user, "completed", now_us()).await;
        assert_eq!(
            ok(app.call(&charge(&user, amount, &call)).await)
                .await
                .row_count,
            0
        );
    }
    assert_eq!(balance(&db, &user).await, Some(5));
    assert_eq!(ledger(user.clone()).await.len(), 2);

    // A user who never had a credits row has nothing to take.
    let newcomer = insert_user(&db).await;
    let call = insert_call(&db, &newcomer, "completed", now_us()).await;
    assert_eq!(
        ok(app.call(&charge(&newcomer, 1, &call)).await)
            .await
            .row_count,
        0
    );
    assert_eq!(balance(&db, &newcomer).await, None);
}

#[tokio::test]
async fn simultaneous_charges_of_different_calls_take_the_balance_exactly_once() {
    let app = spawn_concurrent_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    set_balance(&db, &user, 20).await;
    let mut calls = Vec::new();
    for _ in 0..10 {
        calls.push(insert_call(&db, &user, "completed", now_us()).await);
    }

    // Ten calls of 3 credits end at once: 6 are charged in full, one gets the last 2, three
    // find nothing left.
    let charges: Vec<OpCall> = calls.iter().map(|call| charge(&user, 3, call)).collect();
    let responses = join_all(charges.iter().map(|call| app.call(call))).await;
    let mut taken = Vec::new();
    for response in responses {
        let result = ok(response).await;
        taken.extend(result.rows.iter().map(|r| r["amount"].as_i64().unwrap()));
    }
    taken.sort_unstable();
    assert_eq!(taken, vec![-3, -3, -3, -3, -3, -3, -2]);
    assert_eq!(balance(&db, &user).await, Some(0));

    // Every ledger row starts where the one before it ended.
    let chain: Vec<(i32, i32, i32)> = db
        .query(
            "SELECT amount, balance_before, balance_after FROM credit_transactions \
             WHERE user_id = $1 ORDER BY balance_before DESC",
            &[&user],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        chain,
        vec![
            (-3, 20, 17),
            (-3, 17, 14),
            (-3, 14, 11),
            (-3, 11, 8),
            (-3, 8, 5),
            (-3, 5, 2),
            (-2, 2, 0)
        ]
    );
}

#[tokio::test]
async fn add_events_records_each_event_id_once() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let call = insert_call(&db, &user, "in_progress", now_us()).await;
    let at = rfc3339(now_us());
    let event = |id: &str, cost: &str| {
        json!({"id": id, "provider": "deepgram", "kind": "stt_audio", "quantity": "15.250",
               "unit": "seconds", "cost_cents": cost, "occurred_at": at})
    };
    let add = |events: Value| {
        OpCall::of(&ops::COST_EVENTS_ADD)
            .param("call_id", call.as_str())
            .param("events", events)
    };

    // A repeated id within one batch of events.
    let result = ok(app
        .call(&add(json!([
            event("cev_a", "0.106750"),
            event("cev_b", "0.106750"),
            event("cev_a", "9.000000"),
        ])))
        .await)
    .await;
    assert_eq!(result.row_count, 2);
    // A retried batch that overlaps the first.
    let result = ok(app
        .call(&add(json!([
            event("cev_b", "0.106750"),
            event("cev_c", "0.000001")
        ])))
        .await)
    .await;
    assert_eq!(result.row_count, 1);
    assert_eq!(
        ok(app.call(&add(json!([]))).await).await.row_count,
        0,
        "an empty batch is fine"
    );

    let stored: Vec<(String, String, String)> = db
        .query(
            "SELECT id, quantity::text, cost_cents::text FROM call_cost_events \
             WHERE call_id = $1 ORDER BY id",
            &[&call],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        stored,
        vec![
            (
                "cev_a".to_owned(),
                "15.250000".to_owned(),
                "0.106750".to_owned()
            ),
            (
                "cev_b".to_owned(),
                "15.250000".to_owned(),
                "0.106750".to_owned()
            ),
            (
                "cev_c".to_owned(),
                "15.250000".to_owned(),
                "0.000001".to_owned()
            ),
        ],
        "the first occurrence of an id wins"
    );

    // An event the table refuses fails the whole statement.
    refused(
        app.call(&add(json!([
            {"id": "cev_d", "provider": "openai", "kind": "llm_output_tokens", "quantity": "1",
             "unit": "tokens", "cost_cents": "0.1", "occurred_at": at}
        ])))
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        codes::CONSTRAINT_VIOLATION,
    )
    .await;
}

fn record_call(
    user: &str,
    persona: &str,
    duration: i32,
    ended_at: DateTime<Utc>,
    memory: Option<&str>,
) -> OpCall {
    OpCall::of(&ops::RELATIONSHIPS_RECORD_CALL)
        .param("id", new_id("rel"))
        .param("user_id", user)
        .param("persona_id", persona)
        .param("duration_seconds", duration)
        .param("ended_at", rfc3339(ended_at))
        .param("memory_summary", memory)
}

#[tokio::test]
async fn record_call_creates_or_increments_and_keeps_the_memory_when_none_is_new() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let relationship = |persona: &'static str| {
        let (db, user) = (&db, user.clone());
        async move {
            let row = db
                .query_one(
                    "SELECT relationship_type, total_calls, total_duration_seconds, last_call_at, \
                            memory_summary, memory_updated_at \
                     FROM user_persona_relationships WHERE user_id = $1 AND persona_id = $2",
                    &[&user, &persona],
                )
                .await
                .unwrap();
            (
                row.get::<_, String>(0),
                row.get::<_, i32>(1),
                row.get::<_, i64>(2),
                row.get::<_, Option<DateTime<Utc>>>(3),
                row.get::<_, Option<String>>(4),
                row.get::<_, Option<DateTime<Utc>>>(5),
            )
        }
    };
    let t1 = now_us() - Duration::hours(1);

    // No relationship yet: created, with the memory.
    let result = ok(app
        .call(&record_call(&user, "brad", 30, t1, Some("Likes tea.")))
        .await)
    .await;
    assert_eq!(row(&result)["total_calls"], json!(1));
    let (kind, calls, seconds, last, memory, remembered_at) = relationship("brad").await;
    assert_eq!(
        (kind.as_str(), calls, seconds, last, memory.as_deref()),
        ("friend", 1, 30, Some(t1), Some("Likes tea."))
    );
    let remembered_at = remembered_at.expect("memory time set");

    // A call with no new memory (the summary failed) keeps the old one; an older end time does
    // not move last_call_at back.
    ok(app
        .call(&record_call(
            &user,
            "brad",
            20,
            t1 - Duration::minutes(5),
            None,
        ))
        .await)
    .await;
    let (_, calls, seconds, last, memory, memory_time) = relationship("brad").await;
    assert_eq!(
        (calls, seconds, last, memory.as_deref(), memory_time),
        (2, 50, Some(t1), Some("Likes tea."), Some(remembered_at))
    );

    // A new memory replaces it.
    let t2 = now_us();
    ok(app
        .call(&record_call(&user, "brad", 10, t2, Some("Ran the 10k.")))
        .await)
    .await;
    let (_, calls, seconds, last, memory, memory_time) = relationship("brad").await;
    assert_eq!(
        (calls, seconds, last, memory.as_deref()),
        (3, 60, Some(t2), Some("Ran the 10k."))
    );
    assert!(memory_time.is_some_and(|at| at > remembered_at));

    // A relationship the user set up before any call keeps its settings.
    db.execute(
        "INSERT INTO user_persona_relationships (id, user_id, persona_id, relationship_type) \
         VALUES ($1, $2, 'sarah', 'mentor')",
        &[&new_id("rel"), &user],
    )
    .await
    .unwrap();
    ok(app.call(&record_call(&user, "sarah", 45, t2, None)).await).await;
    let (kind, calls, seconds, last, memory, memory_time) = relationship("sarah").await;
    assert_eq!(
        (kind.as_str(), calls, seconds, last, memory, memory_time),
        ("mentor", 1, 45, Some(t2), None, None)
    );
}

// -------------------------------------------------------------------------------------------
// Reports and housekeeping
// -------------------------------------------------------------------------------------------

fn list(user: &str, limit: i32, cursor: Option<(Value, Value)>) -> OpCall {
    let call = OpCall::of(&ops::CALLS_LIST)
        .param("user_id", user)
        .param("limit", limit);
    match cursor {
        Some((created_at, id)) => call
            .param("before_created_at", created_at)
            .param("before_id", id),
        None => call,
    }
}

#[tokio::test]
async fn list_pages_the_callers_calls_newest_first_with_a_keyset_cursor() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let other = insert_user(&db).await;
    // 25 calls; three at a time share a creation time (microseconds apart from the next), so
    // the id must break ties. Another user's calls are interleaved at the same times.
    let base = now_us() - Duration::hours(2);
    for i in 0..25_i64 {
        let at = base + Duration::microseconds(1_000_001 * (i / 3) + 7);
        insert_call(&db, &user, "completed", at).await;
        if i % 5 == 0 {
            insert_call(&db, &other, "completed", at).await;
        }
    }
    let expected: Vec<String> = db
        .query(
            "SELECT id FROM calls WHERE user_id = $1 ORDER BY created_at DESC, id DESC",
            &[&user],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor = None;
    loop {
        // A cursor that does not advance would page forever; six pages are plenty for 25 rows.
        assert!(sizes.len() < 6, "the cursor does not advance: {sizes:?}");
        let page = ok(app.call(&list(&user, 10, cursor.clone())).await).await;
        sizes.push(page.rows.len());
        let Some(last) = page.rows.last() else { break };
        cursor = Some((last["created_at"].clone(), last["id"].clone()));
        for call in &page.rows {
            assert_eq!(call["persona_name"], json!("Brad"));
            assert_eq!(call["status"], json!("completed"));
            seen.push(call["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(sizes, vec![10, 10, 5, 0]);
    assert_eq!(
        seen, expected,
        "newest first, ties by id, none twice, none skipped"
    );

    // A cursor in the middle of a tie continues right after it.
    let page = ok(app.call(&list(&user, 100, None)).await).await;
    let middle = &page.rows[4];
    let rest = ok(app
        .call(&list(
            &user,
            100,
            Some((middle["created_at"].clone(), middle["id"].clone())),
        ))
        .await)
    .await;
    let rest: Vec<&str> = rest
        .rows
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        rest,
        expected[5..].iter().map(String::as_str).collect::<Vec<_>>()
    );

    assert_eq!(
        ok(app.call(&list("usr_nobody", 10, None)).await)
            .await
            .row_count,
        0
    );
}

#[tokio::test]
async fn get_returns_only_the_callers_call_with_its_costs_log_and_transcript() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let stranger = insert_user(&db).await;
    set_balance(&db, &user, 10).await;
    let outcome = Outcome::of_new_call(&db, &user, 2).await;
    ok_batch(app.batch(outcome.batch()).await).await;
    let get = |user: &str, call: &str| {
        OpCall::of(&ops::CALLS_GET)
            .param("user_id", user)
            .param("call_id", call)
    };

    let result = ok(app.call(&get(&user, &outcome.call_id)).await).await;
    assert_eq!(result.row_count, 1);
    let call = row(&result);
    assert_eq!(call["id"], json!(outcome.call_id));
    assert_eq!(call["status"], json!("completed"));
    assert_eq!(call["persona_name"], json!("Brad"));
    assert_eq!(call["duration_seconds"], json!(61));
    assert_eq!(call["credits_used"], json!(2));
    assert_eq!(call["answered_by"], json!("human"));
    assert_eq!(call["ended_at"], json!(rfc3339(outcome.ended_at)));
    assert_eq!(call["answered_at"], json!(rfc3339(outcome.answered_at)));
    assert!(call["finalized_at"].is_string());
    assert_eq!(call["twilio_cost_cents"], json!("1.7000"));
    assert_eq!(call["total_cost_cents"], json!("4.3056"));
    assert_eq!(call["deepgram_audio_seconds"], json!("61.00"));
    assert_eq!(call["cerebras_output_tokens"], json!(40));
    assert_eq!(call["turn_count"], json!(6));
    assert_eq!(call["interrupt_count"], json!(1));
    assert_eq!(call["avg_response_time_ms"], json!(340));
    assert_eq!(call["end_reason"], json!("caller_hung_up"));
    assert_eq!(call["response_times_ms"], json!([320, 360]));
    assert_eq!(call["failures"][0]["count"], json!(2));
    assert_eq!(call["transcript"][0]["content"], json!("Hi Ada!"));
    assert_eq!(call["transcript"][1]["role"], json!("user"));

    // A call with nothing recorded yet has empty extras.
    let bare = insert_call(&db, &user, "calling", now_us()).await;
    let result = ok(app.call(&get(&user, &bare)).await).await;
    let call = row(&result);
    for column in [
        "total_cost_cents",
        "turn_count",
        "transcript",
        "finalized_at",
        "ended_at",
    ] {
        assert_eq!(call[column], Value::Null, "{column}");
    }

    // Someone else's call does not exist for this user.
    for (asker, call) in [
        (stranger.as_str(), outcome.call_id.as_str()),
        (user.as_str(), "call_nobody"),
    ] {
        let message = refused(
            app.call(&get(asker, call)).await,
            StatusCode::CONFLICT,
            codes::PRECONDITION_FAILED,
        )
        .await
        .error
        .message;
        assert_eq!(message, "call not found");
    }
}

#[tokio::test]
async fn fail_stuck_finalises_only_old_unfinalised_initiating_or_calling_calls() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let now = now_us();
    let old = now - Duration::minutes(10);

    let stuck_initiating = insert_call(&db, &user, "initiating", old).await;
    let stuck_calling = insert_call(&db, &user, "calling", old - Duration::seconds(1)).await;
    let fresh = insert_call(&db, &user, "initiating", now).await;
    let connected = insert_call(&db, &user, "connected", old).await;
    let in_progress = insert_call(&db, &user, "in_progress", old).await;
    let completed = insert_call(&db, &user, "completed", old).await;
    let closed = insert_call(&db, &user, "calling", old).await;
    db.execute(
        "UPDATE calls SET finalized_at = now() WHERE id = $1",
        &[&closed],
    )
    .await
    .unwrap();
    let sweep = |limit: i32| {
        OpCall::of(&ops::CALLS_FAIL_STUCK)
            .param("older_than_secs", 300)
            .param("limit", limit)
    };

    // Oldest first, up to the limit.
    let first = ok(app.call(&sweep(1)).await).await;
    assert_eq!(first.row_count, 1);
    assert_eq!(row(&first)["id"], json!(stuck_calling));
    assert_eq!(row(&first)["user_id"], json!(user));
    let second = ok(app.call(&sweep(100)).await).await;
    let ids: Vec<&Value> = second.rows.iter().map(|r| &r["id"]).collect();
    assert_eq!(ids, vec![&json!(stuck_initiating)]);
    assert_eq!(ok(app.call(&sweep(100)).await).await.row_count, 0);

    for call in [&stuck_initiating, &stuck_calling] {
        assert_eq!(call_state(&db, call).await, ("failed".to_owned(), true));
        let stored = db
            .query_one(
                "SELECT error_message, end_time IS NOT NULL FROM calls WHERE id = $1",
                &[call],
            )
            .await
            .unwrap();
        assert!(stored.get::<_, Option<String>>(0).is_some());
        assert!(stored.get::<_, bool>(1));
    }
    for (call, state) in [
        (&fresh, ("initiating", false)),
        (&connected, ("connected", false)),
        (&in_progress, ("in_progress", false)),
        (&completed, ("completed", false)),
        (&closed, ("calling", true)),
    ] {
        assert_eq!(call_state(&db, call).await, (state.0.to_owned(), state.1));
    }

    // A swept call's late finalisation is refused at its first operation.
    let mut outcome = Outcome::of_new_call(&db, &user, 0).await;
    outcome.call_id = stuck_calling.clone();
    let (_, body) = error_of(app.batch(outcome.batch()).await).await;
    assert_eq!(
        (body.error.code.as_str(), body.error.op_index),
        (codes::PRECONDITION_FAILED, Some(0))
    );
}

// -------------------------------------------------------------------------------------------
// Memory and preferences
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn memory_is_read_per_user_and_persona_and_cleared() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let other = insert_user(&db).await;
    for (who, memory) in [(&user, "Likes tea."), (&other, "Prefers coffee.")] {
        ok(app
            .call(&record_call(who, "brad", 30, now_us(), Some(memory)))
            .await)
        .await;
    }
    let get = |user: &str, persona: &str| {
        OpCall::of(&ops::MEMORY_GET)
            .param("user_id", user)
            .param("persona_id", persona)
    };
    let clear = |user: &str, persona: &str| {
        OpCall::of(&ops::MEMORY_CLEAR)
            .param("user_id", user)
            .param("persona_id", persona)
    };

    let result = ok(app.call(&get(&user, "brad")).await).await;
    assert_eq!(row(&result)["persona_id"], json!("brad"));
    assert_eq!(row(&result)["memory_summary"], json!("Likes tea."));
    assert!(row(&result)["memory_updated_at"].is_string());
    // A persona never called: known, nothing remembered.
    let result = ok(app.call(&get(&user, "sarah")).await).await;
    assert_eq!(row(&result)["memory_summary"], Value::Null);
    assert_eq!(row(&result)["memory_updated_at"], Value::Null);
    let message = refused(
        app.call(&get(&user, "nobody")).await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await
    .error
    .message;
    assert_eq!(message, "persona not found");

    let cleared = ok(app.call(&clear(&user, "brad")).await).await;
    assert_eq!(row(&cleared)["persona_id"], json!("brad"));
    let result = ok(app.call(&get(&user, "brad")).await).await;
    assert_eq!(row(&result)["memory_summary"], Value::Null);
    assert!(
        row(&result)["memory_updated_at"].is_string(),
        "when it was forgotten"
    );
    // The other user's memory of the same persona stays.
    let result = ok(app.call(&get(&other, "brad")).await).await;
    assert_eq!(row(&result)["memory_summary"], json!("Prefers coffee."));
    // Nothing to clear: no row.
    assert_eq!(
        ok(app.call(&clear(&user, "sarah")).await).await.row_count,
        0
    );
    // The call statistics survive forgetting.
    let calls: i32 = db
        .query_one(
            "SELECT total_calls FROM user_persona_relationships \
             WHERE user_id = $1 AND persona_id = 'brad'",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(calls, 1);
}

#[tokio::test]
async fn preferences_default_to_leaving_a_message_and_accept_only_the_two_actions() {
    let app = spawn_app().await;
    let db = app.database.client().await;
    let user = insert_user(&db).await;
    let get = |user: &str| OpCall::of(&ops::PREFERENCES_GET).param("user_id", user);
    let set = |user: &str, action: &str| {
        OpCall::of(&ops::PREFERENCES_SET)
            .param("user_id", user)
            .param("voicemail_action", action)
    };

    let result = ok(app.call(&get(&user)).await).await;
    assert_eq!(row(&result)["voicemail_action"], json!("leave_message"));
    let result = ok(app.call(&set(&user, "hang_up")).await).await;
    assert_eq!(row(&result)["voicemail_action"], json!("hang_up"));
    let result = ok(app.call(&get(&user)).await).await;
    assert_eq!(row(&result)["voicemail_action"], json!("hang_up"));

    for bad in ["voicemail", "Hang_up", "", "leave_message "] {
        refused(
            app.call(&set(&user, bad)).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::CONSTRAINT_VIOLATION,
        )
        .await;
    }
    let result = ok(app.call(&set(&user, "leave_message")).await).await;
    assert_eq!(row(&result)["voicemail_action"], json!("leave_message"));

    for call in [get("usr_nobody"), set("usr_nobody", "hang_up")] {
        let message = refused(
            app.call(&call).await,
            StatusCode::CONFLICT,
            codes::PRECONDITION_FAILED,
        )
        .await
        .error
        .message;
        assert_eq!(message, "user not found");
    }
}
