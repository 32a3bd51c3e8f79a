//! The billing operations (`credits.*`, `budget.*`, `webhooks.*`, `subscriptions.*`, `admin.*`)
//! against the project's real schema: ledger consistency, no overdraft under concurrency,
//! idempotent payments and webhook events, and the admin report numbers.

use std::collections::HashSet;

use callmeback_gateway_api::{BatchResponse, OpCall, OpResult, codes};
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use crate::helpers::{TestApp, error_of, fresh_nonce, ok, refused, spawn_app};

fn txn_id() -> String {
    format!("txn_{}", fresh_nonce())
}

/// A user row straight in SQL (the accounts operations are another slice's).
async fn create_user(app: &TestApp) -> String {
    let id = format!("usr_{}", fresh_nonce());
    app.database
        .client()
        .await
        .execute(
            "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, '$argon2id$v=19$test')",
            &[&id, &format!("{id}@example.test")],
        )
        .await
        .expect("insert user");
    id
}

async fn set_balance(app: &TestApp, user_id: &str, credits: i32) {
    app.database
        .client()
        .await
        .execute(
            "INSERT INTO user_credits (user_id, available_credits) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO UPDATE SET available_credits = EXCLUDED.available_credits",
            &[&user_id, &credits],
        )
        .await
        .expect("set balance");
}

async fn balance(app: &TestApp, user_id: &str) -> Option<i32> {
    app.database
        .client()
        .await
        .query_opt(
            "SELECT available_credits FROM user_credits WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .expect("read balance")
        .map(|row| row.get(0))
}

async fn ledger_count(app: &TestApp, user_id: &str) -> i64 {
    app.database
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM credit_transactions WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .expect("count ledger")
        .get(0)
}

/// A call row for `user_id`, created `age` (a Postgres interval such as `2 seconds`) ago.
async fn create_call(app: &TestApp, user_id: &str, status: &str, age: &str) -> String {
    let id = format!("call_{}", fresh_nonce());
    app.database
        .client()
        .await
        .execute(
            "INSERT INTO calls (id, user_id, persona_id, phone_number, status, duration_seconds, \
                                start_time, created_at) \
             VALUES ($1, $2, 'brad', '+15555550100', $3, 120, \
                     now() - $4::text::interval, now() - $4::text::interval)",
            &[&id, &user_id, &status, &age],
        )
        .await
        .expect("insert call");
    id
}

fn deduct(user_id: &str, amount: i64) -> OpCall {
    OpCall::new("credits.deduct")
        .param("user_id", user_id)
        .param("amount", amount)
        .param("transaction_id", txn_id())
}

fn add(user_id: &str, amount: i64, kind: &str) -> OpCall {
    OpCall::new("credits.add")
        .param("user_id", user_id)
        .param("amount", amount)
        .param("type", kind)
        .param("transaction_id", txn_id())
}

fn purchase(user_id: &str, amount: i64, payment_intent: &str) -> OpCall {
    add(user_id, amount, "purchase").param("payment_intent_id", payment_intent)
}

fn row(result: &OpResult) -> &Map<String, Value> {
    result.first().expect("one row")
}

#[tokio::test]
async fn summary_reports_defaults_for_a_new_user_and_counts_only_todays_calls() {
    let app = spawn_app().await;
    let user = create_user(&app).await;
    let other = create_user(&app).await;

    let summary = ok(app
        .call(&OpCall::new("credits.summary").param("user_id", user.as_str()))
        .await)
    .await;
    let fields = row(&summary);
    assert_eq!(fields["user_id"], json!(user));
    assert_eq!(
        fields["available_credits"],
        Value::Null,
        "no credits row yet"
    );
    assert_eq!(fields["subscription_tier"], Value::Null);
    assert_eq!(fields["calls_today"], json!(0));

    create_call(&app, &user, "completed", "1 second").await;
    create_call(&app, &user, "failed", "2 seconds").await;
    create_call(&app, &user, "completed", "25 hours").await;
    create_call(&app, &other, "completed", "1 second").await;
    set_balance(&app, &user, 12).await;

    let summary = ok(app
        .call(&OpCall::new("credits.summary").param("user_id", user.as_str()))
        .await)
    .await;
    let fields = row(&summary);
    assert_eq!(fields["available_credits"], json!(12));
    assert_eq!(fields["subscription_tier"], json!("free"));
    // Calls from yesterday (25 h ago is always before today's UTC midnight) and other users'
    // calls do not count; failed ones do (they were started).
    assert_eq!(fields["calls_today"], json!(2));

    refused(
        app.call(&OpCall::new("credits.summary").param("user_id", "usr_nobody"))
            .await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;
}

#[tokio::test]
async fn deduct_writes_balance_and_ledger_together_and_refuses_overdrafts() {
    let app = spawn_app().await;
    let user = create_user(&app).await;
    set_balance(&app, &user, 10).await;
    let call = create_call(&app, &user, "completed", "1 second").await;

    let result = ok(app
        .call(
            &deduct(&user, 3)
                .param("call_id", call.as_str())
                .param("description", "Call with Brad - 3 minutes"),
        )
        .await)
    .await;
    let entry = row(&result);
    assert_eq!(entry["amount"], json!(-3));
    assert_eq!(entry["type"], json!("call_deduction"));
    assert_eq!(entry["balance_before"], json!(10));
    assert_eq!(entry["balance_after"], json!(7));
    assert_eq!(entry["call_id"], json!(call));
    assert_eq!(balance(&app, &user).await, Some(7));

    // One deduction per call: a retried charge is a conflict, not a second deduction.
    refused(
        app.call(&deduct(&user, 3).param("call_id", call.as_str()))
            .await,
        StatusCode::CONFLICT,
        codes::CONFLICT,
    )
    .await;
    let message = refused(
        app.call(&deduct(&user, 8)).await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await
    .error
    .message;
    assert_eq!(message, "insufficient credits");
    for bad_amount in [0, -5] {
        refused(
            app.call(&deduct(&user, bad_amount)).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::CONSTRAINT_VIOLATION,
        )
        .await;
    }
    assert_eq!(
        balance(&app, &user).await,
        Some(7),
        "refusals change nothing"
    );
    assert_eq!(ledger_count(&app, &user).await, 1);

    // Exactly the balance may be taken; then nothing more.
    ok(app.call(&deduct(&user, 7)).await).await;
    assert_eq!(balance(&app, &user).await, Some(0));
    refused(
        app.call(&deduct(&user, 1)).await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;

    // A user who never had a credits row has nothing to deduct.
    let newcomer = create_user(&app).await;
    refused(
        app.call(&deduct(&newcomer, 1)).await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;
}

#[tokio::test]
async fn fifty_concurrent_deductions_against_seven_credits_take_exactly_seven() {
    let app = spawn_app().await;
    let user = create_user(&app).await;
    set_balance(&app, &user, 7).await;

    let calls: Vec<OpCall> = (0..50).map(|_| deduct(&user, 1)).collect();
    let responses = join_all(calls.iter().map(|call| app.call(call))).await;

    let mut succeeded = 0;
    let mut refused_count = 0;
    for response in responses {
        match response.status() {
            StatusCode::OK => succeeded += 1,
            StatusCode::CONFLICT => {
                let (_, body) = error_of(response).await;
                assert_eq!(body.error.code, codes::PRECONDITION_FAILED);
                refused_count += 1;
            }
            other => panic!(
                "unexpected status {other}: {}",
                response.text().await.unwrap()
            ),
        }
    }
    assert_eq!((succeeded, refused_count), (7, 43));
    assert_eq!(balance(&app, &user).await, Some(0));

    let rows = app
        .database
        .client()
        .await
        .query(
            "SELECT amount, balance_before, balance_after FROM credit_transactions \
             WHERE user_id = $1 ORDER BY balance_before DESC",
            &[&user],
        )
        .await
        .unwrap();
    let chain: Vec<(i32, i32, i32)> = rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let expected: Vec<(i32, i32, i32)> = (1..=7)
        .rev()
        .map(|before| (-1, before, before - 1))
        .collect();
    assert_eq!(
        chain, expected,
        "each deduction starts where the previous one ended"
    );
}

#[tokio::test]
async fn add_upserts_the_balance_and_purchases_are_credited_once_per_payment_intent() {
    let app = spawn_app().await;
    let user = create_user(&app).await;

    // No credits row yet: the purchase creates it.
    let first = ok(app.call(&purchase(&user, 50, "pi_one")).await).await;
    let entry = row(&first);
    assert_eq!(entry["type"], json!("purchase"));
    assert_eq!(entry["payment_intent_id"], json!("pi_one"));
    assert_eq!(
        (
            entry["balance_before"].clone(),
            entry["balance_after"].clone()
        ),
        (json!(0), json!(50))
    );

    // A replay of the same payment intent (any transaction id) is a no-op answered with no rows.
    let replay = ok(app.call(&purchase(&user, 50, "pi_one")).await).await;
    assert_eq!(replay.row_count, 0);
    assert_eq!(balance(&app, &user).await, Some(50));

    // Concurrent deliveries of one new payment intent: exactly one credits.
    let racers: Vec<OpCall> = (0..10).map(|_| purchase(&user, 20, "pi_two")).collect();
    let responses = join_all(racers.iter().map(|call| app.call(call))).await;
    let mut credited = 0;
    for response in responses {
        match response.status() {
            StatusCode::OK => {
                let result: OpResult = response.json().await.unwrap();
                credited += result.row_count;
            }
            StatusCode::CONFLICT => {
                let (_, body) = error_of(response).await;
                assert_eq!(
                    body.error.code,
                    codes::CONFLICT,
                    "the unique index stops the loser"
                );
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(credited, 1);
    assert_eq!(balance(&app, &user).await, Some(70));

    for kind in ["subscription_refill", "refund", "admin_adjustment"] {
        let result = ok(app.call(&add(&user, 5, kind)).await).await;
        assert_eq!(row(&result)["type"], json!(kind));
    }
    assert_eq!(balance(&app, &user).await, Some(85));

    // A negative adjustment within the balance works and is recorded with its sign...
    let adjust = ok(app
        .call(
            &add(&user, -15, "admin_adjustment")
                .param("actor_user_id", user.as_str())
                .param("description", "goodwill correction"),
        )
        .await)
    .await;
    assert_eq!(row(&adjust)["balance_after"], json!(70));
    // ...one beyond it is refused by the balance CHECK and changes nothing.
    refused(
        app.call(&add(&user, -71, "admin_adjustment")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        codes::CONSTRAINT_VIOLATION,
    )
    .await;
    // Deductions are not `add`'s business, a purchase needs its payment intent, zero is no change.
    for call in [
        add(&user, 5, "call_deduction"),
        add(&user, -5, "call_deduction"),
        add(&user, 5, "purchase"),
        add(&user, 0, "refund"),
        add(&user, 5, "bonus_points"),
    ] {
        refused(
            app.call(&call).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::CONSTRAINT_VIOLATION,
        )
        .await;
    }
    assert_eq!(balance(&app, &user).await, Some(70));

    // A user without a credits row has nothing to take away either.
    let newcomer = create_user(&app).await;
    refused(
        app.call(&add(&newcomer, -1, "admin_adjustment")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        codes::CONSTRAINT_VIOLATION,
    )
    .await;
    assert_eq!(balance(&app, &newcomer).await, None);

    refused(
        app.call(&purchase("usr_nobody", 5, "pi_three")).await,
        StatusCode::CONFLICT,
        codes::FOREIGN_KEY_VIOLATION,
    )
    .await;

    // Every ledger row is consistent with its neighbour.
    let rows = app
        .database
        .client()
        .await
        .query(
            "SELECT balance_before, balance_after FROM credit_transactions \
             WHERE user_id = $1 ORDER BY created_at, balance_before",
            &[&user],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 6);
    let total: i32 = rows
        .iter()
        .map(|r| r.get::<_, i32>(1) - r.get::<_, i32>(0))
        .sum();
    assert_eq!(total, 70);
}

#[tokio::test]
async fn transactions_page_newest_first_with_a_keyset_cursor() {
    let app = spawn_app().await;
    let user = create_user(&app).await;
    let other = create_user(&app).await;
    for amount in 1..=25 {
        ok(app.call(&add(&user, amount, "refund")).await).await;
    }
    ok(app.call(&add(&other, 100, "refund")).await).await;

    let page = |before: Option<(Value, Value)>| {
        let mut call = OpCall::new("credits.transactions")
            .param("user_id", user.as_str())
            .param("limit", 10);
        if let Some((created_at, id)) = before {
            call = call
                .param("before_created_at", created_at)
                .param("before_id", id);
        }
        call
    };

    let mut seen = Vec::new();
    let mut cursor = None;
    let mut sizes = Vec::new();
    loop {
        let result = ok(app.call(&page(cursor.clone())).await).await;
        sizes.push(result.rows.len());
        let Some(last) = result.rows.last() else {
            break;
        };
        cursor = Some((last["created_at"].clone(), last["id"].clone()));
        seen.extend(result.rows.iter().map(|r| {
            assert_eq!(r["user_id"], json!(user), "only the caller's rows");
            (
                r["created_at"].as_str().unwrap().to_owned(),
                r["id"].as_str().unwrap().to_owned(),
                r["amount"].as_i64().unwrap(),
            )
        }));
    }
    assert_eq!(sizes, vec![10, 10, 5, 0]);
    let ids: HashSet<_> = seen.iter().map(|(_, id, _)| id.clone()).collect();
    assert_eq!(ids.len(), 25, "no row twice, none skipped");
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| (&b.0, &b.1).cmp(&(&a.0, &a.1)));
    assert_eq!(seen, sorted, "newest first, ties broken by id");
    // Newest first: the last refund (25 credits) was written last.
    assert_eq!(seen[0].2, 25);
    assert_eq!(seen[24].2, 1);

    refused(
        app.call(&page(Some((json!("not a time"), json!("txn_x")))))
            .await,
        StatusCode::BAD_REQUEST,
        codes::INVALID_PARAMS,
    )
    .await;
}

#[tokio::test]
async fn budget_get_is_empty_until_put_and_put_replaces() {
    let app = spawn_app().await;
    let user = create_user(&app).await;
    let get = || OpCall::new("budget.get").param("user_id", user.as_str());
    let put = |per_call: i64, monthly: i64, warn: i64, cutoff: bool| {
        OpCall::new("budget.put")
            .param("user_id", user.as_str())
            .param("max_cost_per_call_cents", per_call)
            .param("max_monthly_spend_cents", monthly)
            .param("warn_at_percent", warn)
            .param("auto_cutoff", cutoff)
    };

    assert_eq!(ok(app.call(&get()).await).await.row_count, 0);

    let saved = ok(app.call(&put(500, 20_000, 80, false)).await).await;
    let fields = row(&saved);
    assert_eq!(fields["max_cost_per_call_cents"], json!(500));
    assert_eq!(fields["max_monthly_spend_cents"], json!(20_000));
    assert_eq!(fields["warn_at_percent"], json!(80));
    assert_eq!(fields["auto_cutoff"], json!(false));

    ok(app.call(&put(700, 700, 100, true)).await).await;
    let read = ok(app.call(&get()).await).await;
    let fields = row(&read);
    assert_eq!(fields["max_cost_per_call_cents"], json!(700));
    assert_eq!(fields["warn_at_percent"], json!(100));
    assert_eq!(fields["auto_cutoff"], json!(true));

    for bad in [
        put(800, 700, 50, true),
        put(0, 700, 50, true),
        put(10, 700, 0, true),
    ] {
        refused(
            app.call(&bad).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::CONSTRAINT_VIOLATION,
        )
        .await;
    }
    assert_eq!(
        row(&ok(app.call(&get()).await).await)["max_cost_per_call_cents"],
        json!(700)
    );
}

fn record_event(event_id: &str) -> OpCall {
    OpCall::new("webhooks.record_event")
        .param("provider", "stripe")
        .param("event_id", event_id)
        .param("event_type", "payment_intent.succeeded")
}

#[tokio::test]
async fn a_webhook_event_is_processed_once_with_its_effect() {
    let app = spawn_app().await;
    let user = create_user(&app).await;

    let response = app
        .batch(vec![record_event("evt_1"), purchase(&user, 30, "pi_evt")])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: BatchResponse = response.json().await.unwrap();
    assert_eq!(body.results[0].first().unwrap()["event_id"], json!("evt_1"));
    assert_eq!(body.results[1].row_count, 1);
    assert_eq!(balance(&app, &user).await, Some(30));

    // The replay stops at the first op and nothing after it runs.
    let response = app
        .batch(vec![record_event("evt_1"), add(&user, 30, "refund")])
        .await;
    let (status, body) = error_of(response).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body.error.code, codes::PRECONDITION_FAILED);
    assert_eq!(body.error.op_index, Some(0));
    assert_eq!(body.error.message, "event already processed");
    assert_eq!(balance(&app, &user).await, Some(30));

    // Another event about the same payment intent is recorded but credits nothing.
    let response = app
        .batch(vec![record_event("evt_2"), purchase(&user, 30, "pi_evt")])
        .await;
    let body: BatchResponse = response.json().await.unwrap();
    assert_eq!(body.results[1].row_count, 0);
    assert_eq!(balance(&app, &user).await, Some(30));
    assert_eq!(ledger_count(&app, &user).await, 1);

    // Providers are separate namespaces.
    ok(app
        .call(
            &OpCall::new("webhooks.record_event")
                .param("provider", "twilio")
                .param("event_id", "evt_1"),
        )
        .await)
    .await;
}

fn refill(tier: &str, monthly: i64, calls_per_day: Option<i64>, max_seconds: i64) -> OpCall {
    let call = OpCall::new("subscriptions.refill")
        .param("subscription_id", "sub_1")
        .param("tier", tier)
        .param("monthly_credits", monthly)
        .param("max_call_seconds", max_seconds)
        .param("period_start", "2026-11-01T00:00:00Z")
        .param("period_end", "2026-12-01T00:00:00Z")
        .param("event_created", "2026-11-01T00:00:05Z")
        .param("transaction_id", txn_id())
        .param("description", format!("{tier} subscription refill"));
    match calls_per_day {
        Some(limit) => call.param("max_calls_per_day", limit),
        None => call,
    }
}

async fn credits_row(
    app: &TestApp,
    user_id: &str,
) -> (String, Option<String>, i32, Option<i32>, i32, i32) {
    let row = app
        .database
        .client()
        .await
        .query_one(
            "SELECT subscription_tier, subscription_status, monthly_credit_allowance, \
                    max_calls_per_day, max_call_duration_seconds, available_credits \
             FROM user_credits WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .unwrap();
    (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    )
}

#[tokio::test]
async fn subscription_refill_finds_the_user_sets_the_tier_and_adds_credits() {
    let app = spawn_app().await;
    let user = create_user(&app).await;
    set_balance(&app, &user, 4).await;

    // First invoice: found by metadata user id; the customer gets linked to the user.
    let result = ok(app
        .call(
            &refill("basic", 100, Some(10), 600)
                .param("user_id", user.as_str())
                .param("stripe_customer_id", "cus_1"),
        )
        .await)
    .await;
    let fields = row(&result);
    assert_eq!(fields["available_credits"], json!(104));
    assert!(
        fields["transaction_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("txn_"))
    );
    assert_eq!(
        credits_row(&app, &user).await,
        (
            "basic".to_owned(),
            Some("active".to_owned()),
            100,
            Some(10),
            600,
            104
        )
    );
    let linked: Option<String> = app
        .database
        .client()
        .await
        .query_one(
            "SELECT stripe_customer_id FROM users WHERE id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(linked.as_deref(), Some("cus_1"));

    // Next cycle: only the customer id is known; an upgrade to premium lifts the daily limit.
    // (Each period is refilled once, so the next cycles carry their own periods.)
    ok(app
        .call(
            &in_period(
                refill("premium", 500, None, 1800),
                "2026-12-01",
                "2027-01-01",
            )
            .param("stripe_customer_id", "cus_1"),
        )
        .await)
    .await;
    assert_eq!(
        credits_row(&app, &user).await,
        (
            "premium".to_owned(),
            Some("active".to_owned()),
            500,
            None,
            1800,
            604
        )
    );

    // Unlimited has no monthly credits: tier changes, no ledger row.
    let before = ledger_count(&app, &user).await;
    let result = ok(app
        .call(&in_period(
            refill("unlimited", 0, None, 3600),
            "2027-01-01",
            "2027-02-01",
        ))
        .await)
    .await;
    assert_eq!(
        row(&result)["transaction_id"],
        Value::Null,
        "found by subscription id"
    );
    assert_eq!(ledger_count(&app, &user).await, before);
    assert_eq!(credits_row(&app, &user).await.0, "unlimited");

    // Nobody to charge: nothing happens.
    let message = refused(
        app.call(
            &refill("basic", 100, Some(10), 600)
                .param("subscription_id", "sub_unknown")
                .param("stripe_customer_id", "cus_unknown"),
        )
        .await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await
    .error
    .message;
    assert_eq!(message, "no user for this subscription");
    refused(
        app.call(
            &in_period(
                refill("gold", 100, Some(10), 600),
                "2027-02-01",
                "2027-03-01",
            )
            .param("user_id", user.as_str()),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        codes::CONSTRAINT_VIOLATION,
    )
    .await;
}

/// The same refill for another billing period (dates `YYYY-MM-DD`, midnight UTC); the event is
/// created five seconds into it.
fn in_period(call: OpCall, start: &str, end: &str) -> OpCall {
    call.param("period_start", format!("{start}T00:00:00Z"))
        .param("period_end", format!("{end}T00:00:00Z"))
        .param("event_created", format!("{start}T00:00:05Z"))
}

fn end(subscription_id: &str) -> OpCall {
    OpCall::new("subscriptions.end")
        .param("subscription_id", subscription_id)
        .param("tier", "free")
        .param("monthly_credits", 0)
        .param("max_calls_per_day", 3)
        .param("max_call_seconds", 300)
        .param("ended_at", "2026-11-20T00:00:00Z")
        .param("event_created", "2026-11-20T00:00:01Z")
}

#[tokio::test]
async fn subscription_end_returns_the_user_to_free_but_not_for_a_stale_subscription() {
    let app = spawn_app().await;
    let user = create_user(&app).await;
    ok(app
        .call(&refill("premium", 500, None, 1800).param("user_id", user.as_str()))
        .await)
    .await;

    // A deletion of some older subscription does not touch the current one (it used to be
    // refused; now the old subscription is recorded as ended and the user's is left alone).
    let stale = ok(app
        .call(&end("sub_old").param("user_id", user.as_str()))
        .await)
    .await;
    assert_eq!(row(&stale)["ended"], json!(false));
    assert_eq!(credits_row(&app, &user).await.0, "premium");

    let result = ok(app.call(&end("sub_1")).await).await;
    assert_eq!(row(&result)["user_id"], json!(user));
    assert_eq!(row(&result)["ended"], json!(true));
    assert_eq!(
        credits_row(&app, &user).await,
        (
            "free".to_owned(),
            Some("canceled".to_owned()),
            0,
            Some(3),
            300,
            500
        ),
        "back to free limits; bought credits stay"
    );
}

async fn subscription_state(app: &TestApp, subscription_id: &str) -> (String, Option<String>) {
    let row = app
        .database
        .client()
        .await
        .query_one(
            "SELECT status, to_char(period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD') \
             FROM stripe_subscriptions WHERE subscription_id = $1",
            &[&subscription_id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn flags(result: &OpResult) -> (Value, Value) {
    let fields = row(result);
    (fields["refilled"].clone(), fields["activated"].clone())
}

#[tokio::test]
async fn subscription_events_follow_the_subscriptions_history_not_arrival_order() {
    let app = spawn_app().await;
    let user = create_user(&app).await;
    let november = || {
        in_period(
            refill("basic", 100, Some(10), 600),
            "2026-11-01",
            "2026-12-01",
        )
        .param("user_id", user.as_str())
    };
    assert_eq!(
        flags(&ok(app.call(&november()).await).await),
        (json!(true), json!(true))
    );
    assert_eq!(balance(&app, &user).await, Some(100));

    // Deleted on 20 November.
    ok(app.call(&end("sub_1")).await).await;
    assert_eq!(credits_row(&app, &user).await.0, "free");

    // The November invoice again, as a new event (a late retry): it used to set the tier back to
    // basic and add another 100 credits. The period was refilled already and the subscription
    // has ended since: nothing changes.
    assert_eq!(
        flags(&ok(app.call(&november()).await).await),
        (json!(false), json!(false))
    );
    assert_eq!(
        credits_row(&app, &user).await,
        (
            "free".to_owned(),
            Some("canceled".to_owned()),
            0,
            Some(3),
            300,
            100
        )
    );
    assert_eq!(ledger_count(&app, &user).await, 1);

    // October's invoice, paid but delivered only now: its credits were paid for, so the period is
    // refilled (once), but a period before the end does not bring the subscription back.
    let october = || {
        in_period(
            refill("basic", 100, Some(10), 600),
            "2026-10-01",
            "2026-11-01",
        )
        .param("user_id", user.as_str())
    };
    assert_eq!(
        flags(&ok(app.call(&october()).await).await),
        (json!(true), json!(false))
    );
    assert_eq!(
        flags(&ok(app.call(&october()).await).await),
        (json!(false), json!(false))
    );
    assert_eq!(credits_row(&app, &user).await.0, "free");
    assert_eq!(balance(&app, &user).await, Some(200));
    assert_eq!(
        subscription_state(&app, "sub_1").await.0,
        "canceled".to_owned()
    );

    // A period that starts after the end can only come from a re-activation: it applies.
    let december = in_period(
        refill("premium", 500, None, 1800),
        "2026-12-01",
        "2027-01-01",
    )
    .param("user_id", user.as_str());
    assert_eq!(
        flags(&ok(app.call(&december).await).await),
        (json!(true), json!(true))
    );
    assert_eq!(credits_row(&app, &user).await.0, "premium");
    assert_eq!(
        subscription_state(&app, "sub_1").await,
        ("active".to_owned(), Some("2026-12-01".to_owned()))
    );

    // A deletion older than the newest paid period (20 November < 1 December) is stale.
    let stale_end = ok(app.call(&end("sub_1")).await).await;
    assert_eq!(row(&stale_end)["ended"], json!(false));
    assert_eq!(credits_row(&app, &user).await.0, "premium");

    // An older invoice after a newer one refills its own period but keeps the newer tier.
    let september = in_period(
        refill("basic", 100, Some(10), 600),
        "2026-09-01",
        "2026-10-01",
    )
    .param("user_id", user.as_str());
    assert_eq!(
        flags(&ok(app.call(&september).await).await),
        (json!(true), json!(false))
    );
    assert_eq!(credits_row(&app, &user).await.0, "premium");
    assert_eq!(balance(&app, &user).await, Some(800));

    // A deletion after the newest period ends it; so does nothing a second time.
    let final_end = end("sub_1")
        .param("ended_at", "2027-01-01T00:00:00Z")
        .param("event_created", "2027-01-01T00:00:01Z");
    assert_eq!(
        row(&ok(app.call(&final_end).await).await)["ended"],
        json!(true)
    );
    assert_eq!(
        row(&ok(app.call(&final_end).await).await)["ended"],
        json!(false)
    );
    assert_eq!(credits_row(&app, &user).await.0, "free");
    assert_eq!(
        balance(&app, &user).await,
        Some(800),
        "credits never expire"
    );
}

#[tokio::test]
async fn ten_concurrent_deliveries_of_one_period_refill_it_once() {
    let app = spawn_app().await;
    let user = create_user(&app).await;
    set_balance(&app, &user, 0).await;
    let deliveries = (0..10).map(|index| {
        // Ten events about one invoice period, created a second apart.
        let call = in_period(
            refill("basic", 100, Some(10), 600),
            "2026-11-01",
            "2026-12-01",
        )
        .param("user_id", user.as_str())
        .param(
            "event_created",
            format!("2026-11-01T00:00:{:02}Z", 10 + index),
        );
        let app = &app;
        async move { app.call(&call).await }
    });
    let mut refilled = 0;
    for response in join_all(deliveries).await {
        if ok(response).await.first().unwrap()["refilled"] == json!(true) {
            refilled += 1;
        }
    }
    assert_eq!(refilled, 1);
    assert_eq!(balance(&app, &user).await, Some(100));
    assert_eq!(ledger_count(&app, &user).await, 1);
    assert_eq!(credits_row(&app, &user).await.0, "basic");
}

#[tokio::test]
async fn admin_reports_sum_costs_rank_personas_and_count_days() {
    let app = spawn_app().await;
    let alice = create_user(&app).await;
    let bob = create_user(&app).await;
    let db = app.database.client().await;

    let recent = create_call(&app, &alice, "completed", "1 second").await;
    let recent_sarah = create_call(&app, &bob, "completed", "2 seconds").await;
    db.execute(
        "UPDATE calls SET persona_id = 'sarah' WHERE id = $1",
        &[&recent_sarah],
    )
    .await
    .unwrap();
    create_call(&app, &alice, "failed", "3 seconds").await;
    create_call(&app, &alice, "in_progress", "4 seconds").await;
    let old = create_call(&app, &bob, "completed", "40 days").await;
    let yesterday = create_call(&app, &bob, "completed", "25 hours").await;
    for (id, call, twilio, created) in [
        ("cost_a", &recent, "6.5", "1 second"),
        ("cost_b", &recent_sarah, "1.25", "2 seconds"),
        ("cost_c", &old, "100", "40 days"),
        ("cost_d", &yesterday, "2", "25 hours"),
    ] {
        db.execute(
            "INSERT INTO call_cost_breakdowns (id, call_id, twilio_cost_cents, deepgram_cost_cents, \
                                               cerebras_cost_cents, elevenlabs_cost_cents, created_at) \
             VALUES ($1, $2, $3::text::numeric, 2.15, 0.02, 4.5, now() - $4::text::interval)",
            &[&id, call, &twilio, &created],
        )
        .await
        .unwrap();
    }
    ok(app.call(&purchase(&alice, 40, "pi_a")).await).await;
    ok(app.call(&deduct(&alice, 3)).await).await;
    set_balance(&app, &bob, 2).await;
    db.execute(
        "UPDATE user_credits SET subscription_tier = 'basic' WHERE user_id = $1",
        &[&bob],
    )
    .await
    .unwrap();

    let response = app
        .batch(vec![
            OpCall::new("admin.cost_by_provider").param("days", 30),
            OpCall::new("admin.top_personas")
                .param("days", 30)
                .param("limit", 10),
            OpCall::new("admin.revenue_by_day").param("days", 7),
            OpCall::new("admin.calls_today"),
            OpCall::new("admin.low_credit_users")
                .param("below", 10)
                .param("tiers", json!(["basic", "premium"])),
        ])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: BatchResponse = response.json().await.unwrap();

    let cost = body.results[0].first().unwrap();
    assert_eq!(
        cost["calls"],
        json!(3),
        "the 40-day-old call is outside the window"
    );
    assert_eq!(cost["twilio_cents"], json!("9.7500"));
    assert_eq!(cost["deepgram_cents"], json!("6.4500"));
    assert_eq!(cost["cerebras_cents"], json!("0.0600"));
    assert_eq!(cost["elevenlabs_cents"], json!("13.5000"));
    assert_eq!(cost["total_cents"], json!("29.7600"));

    let personas = &body.results[1].rows;
    assert_eq!(personas.len(), 2);
    assert_eq!(personas[0]["persona_id"], json!("brad"));
    assert_eq!(
        personas[0]["call_count"],
        json!(2),
        "completed only, 30 days"
    );
    assert_eq!(personas[0]["total_duration_seconds"], json!("240"));
    assert_eq!(personas[1]["persona_id"], json!("sarah"));
    assert_eq!(personas[1]["call_count"], json!(1));

    let days = &body.results[2].rows;
    assert_eq!(days.len(), 7, "every day of the window, newest first");
    let today = &days[0];
    // "A few seconds ago" may fall on yesterday right after midnight UTC; allow for it by summing.
    let total_completed: i64 = days
        .iter()
        .map(|d| d["completed_calls"].as_i64().unwrap())
        .sum();
    assert_eq!(total_completed, 3);
    let purchased: i64 = days
        .iter()
        .map(|d| {
            d["credits_purchased"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(purchased, 40);
    assert_eq!(today["credits_spent"], json!("3"));
    assert!(today["day"].as_str().is_some_and(|d| d.len() == 10));

    let calls_today = body.results[3].first().unwrap();
    assert_eq!(calls_today["total_calls"], json!(4));
    assert_eq!(calls_today["completed"], json!(2));
    assert_eq!(calls_today["failed"], json!(1));
    assert_eq!(calls_today["in_progress"], json!(1));
    assert_eq!(calls_today["avg_duration_seconds"], json!("120.0"));

    let low = body.results[4].first().unwrap();
    assert_eq!(
        low["users"],
        json!(1),
        "bob (basic, 2 credits); alice is on free"
    );
}
