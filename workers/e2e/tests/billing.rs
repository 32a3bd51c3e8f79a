//! Credits, the ledger, budgets, Stripe webhooks and the admin report end to end: Worker
//! (workerd) → signed gateway calls → Postgres.
//!
//! Users are registered and logged in through the auth routes. Ledger rows are arranged through
//! the gateway's own `credits.*` operations (signed like the Worker signs them), so the tests
//! exercise the same statements production runs. Stripe events are signed with the stack's
//! webhook secret by `callmeback_domain::sign_stripe_payload`.

use std::collections::HashSet;

use callmeback_domain::sign_stripe_payload;
use callmeback_e2e::{Stack, unix_now};
use callmeback_gateway_api::OP_PATH;
use callmeback_signing::{Key, sign_request};
use rand::Rng;
use reqwest::Method;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

async fn parse(stack: &Stack, what: &str, response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body readable");
    if text.is_empty() {
        return (status, Value::Null);
    }
    let value = serde_json::from_str(&text).unwrap_or_else(|_| {
        panic!(
            "{what} answered {status} with non-JSON: {text}\nworker log:\n{}",
            stack.worker_log()
        )
    });
    (status, value)
}

async fn get(stack: &Stack, path: &str, token: &str) -> (u16, Value) {
    stack.json(Method::GET, path, Some(token), None).await
}

async fn put(stack: &Stack, path: &str, token: &str, body: Value) -> (u16, Value) {
    stack.json(Method::PUT, path, Some(token), Some(body)).await
}

fn random_hex() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Calls a gateway operation directly, signed with the stack's key like the Worker signs.
/// Owned arguments, so 50 of these can run as spawned tasks.
async fn gateway_call(
    http: reqwest::Client,
    gateway_url: String,
    key: Key,
    op: &'static str,
    params: Value,
) -> (u16, Value) {
    let url = format!("{gateway_url}{OP_PATH}");
    let body = serde_json::to_vec(&json!({"op": op, "params": params})).expect("serializable");
    let signed = sign_request(&key, "POST", &url, &body, unix_now(), &random_hex());
    let response = http
        .post(&url)
        .header("content-type", "application/json")
        .header("content-digest", signed.content_digest)
        .header("signature-input", signed.signature_input)
        .header("signature", signed.signature)
        .body(body)
        .send()
        .await
        .expect("request reaches the gateway");
    let status = response.status().as_u16();
    let value = response.json().await.expect("gateway answers JSON");
    (status, value)
}

async fn gateway(stack: &Stack, op: &'static str, params: Value) -> (u16, Value) {
    gateway_call(
        stack.http.clone(),
        stack.gateway_url.clone(),
        stack_key(stack),
        op,
        params,
    )
    .await
}

fn stack_key(stack: &Stack) -> Key {
    Key::new(stack.key_id.clone(), stack.key_secret.clone())
}

/// Adds credits for `user_id` through `credits.add` and returns the ledger row.
async fn add_credits(stack: &Stack, user_id: &str, amount: i64, kind: &str) -> Value {
    let (status, body) = gateway(
        stack,
        "credits.add",
        json!({"user_id": user_id, "amount": amount, "type": kind,
               "transaction_id": format!("txn_{}", random_hex())}),
    )
    .await;
    assert_eq!(status, 200, "credits.add: {body}");
    body["rows"][0].clone()
}

/// Posts a body to the Stripe webhook with the given signature header (or none).
async fn stripe(stack: &Stack, body: &str, signature: Option<&str>) -> (u16, Value) {
    let mut request = stack
        .http
        .post(format!("{}/api/webhooks/stripe", stack.worker_url))
        .header("content-type", "application/json; charset=utf-8")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    let response = request.send().await.expect("request reaches the Worker");
    parse(stack, "POST /api/webhooks/stripe", response).await
}

/// Signs `event` as Stripe would right now and posts it.
async fn stripe_signed(stack: &Stack, event: &Value) -> (u16, Value) {
    let body = event.to_string();
    let header = sign_stripe_payload(
        stack.stripe_webhook_secret.as_bytes(),
        unix_now(),
        body.as_bytes(),
    );
    stripe(stack, &body, Some(&header)).await
}

fn stripe_event(id: &str, kind: &str, object: Value) -> Value {
    json!({
        "id": id, "object": "event", "api_version": "2025-03-31.basil", "type": kind,
        "created": unix_now(), "livemode": false, "data": {"object": object}
    })
}

fn checkout_completed(event_id: &str, user_id: &str, payment_intent: &str, credits: u32) -> Value {
    stripe_event(
        event_id,
        "checkout.session.completed",
        json!({
            "id": format!("cs_test_{event_id}"), "object": "checkout.session", "mode": "payment",
            "payment_status": "paid", "payment_intent": payment_intent,
            "client_reference_id": user_id,
            "metadata": {"user_id": user_id, "credits": credits.to_string()}
        }),
    )
}

async fn balance(stack: &Stack, token: &str) -> i64 {
    let (status, body) = get(stack, "/api/credits", token).await;
    assert_eq!(status, 200, "{body}");
    body["available_credits"].as_i64().expect("balance")
}

/// Every ledger row of the caller, following the cursors.
async fn all_transactions(stack: &Stack, token: &str, page_size: u32) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut path = format!("/api/credits/transactions?limit={page_size}");
    loop {
        let (status, body) = get(stack, &path, token).await;
        assert_eq!(status, 200, "{body}");
        let page = body["transactions"]
            .as_array()
            .expect("transactions")
            .clone();
        assert!(page.len() <= page_size as usize);
        rows.extend(page);
        match body["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!("/api/credits/transactions?limit={page_size}&cursor={cursor}")
            }
            None => return rows,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Credits and the ledger
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_new_free_user_sees_the_free_tier_and_todays_calls() {
    let stack = Stack::start().await;
    let (token, user_id) = stack.register("free@example.test").await;

    let (status, body) = get(&stack, "/api/credits", &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["available_credits"], 0);
    assert_eq!(body["tier"], "free");
    assert_eq!(
        body["limits"],
        json!({"calls_per_day": 3, "max_call_seconds": 300, "monthly_credits": 0,
               "needs_credits": false})
    );
    assert_eq!(body["calls_today"], 0);
    assert_eq!(body["calls_remaining_today"], 3);
    assert_eq!(
        body["next_call"],
        json!({"allowed": true, "max_seconds": 300})
    );

    // Two calls today and one yesterday: only today's count against the daily allowance.
    let client = stack.db().await;
    for (id, age) in [
        ("call_a", "1 second"),
        ("call_b", "2 seconds"),
        ("call_c", "25 hours"),
    ] {
        client
            .execute(
                "INSERT INTO calls (id, user_id, persona_id, phone_number, status, start_time, \
                                    created_at) \
                 VALUES ($1, $2, 'brad', '+15555550100', 'completed', now() - $3::text::interval, \
                         now() - $3::text::interval)",
                &[&id, &user_id, &age],
            )
            .await
            .expect("insert call");
    }
    let (_, body) = get(&stack, "/api/credits", &token).await;
    assert_eq!(body["calls_today"], 2);
    assert_eq!(body["calls_remaining_today"], 1);

    let (status, body) = stack.json(Method::GET, "/api/credits", None, None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
}

#[tokio::test]
async fn transactions_page_by_cursor_and_users_only_ever_see_their_own_billing_data() {
    let stack = Stack::start().await;
    let (alice, alice_id) = stack.register("alice@example.test").await;
    let (bob, bob_id) = stack.register("bob@example.test").await;
    for amount in 1..=25 {
        add_credits(&stack, &alice_id, amount, "refund").await;
    }
    for amount in [100, 200, 300] {
        add_credits(&stack, &bob_id, amount, "admin_adjustment").await;
    }

    // Pages of 10: 10, 10, 5, newest first, nothing twice, nothing skipped.
    let (status, first) = get(&stack, "/api/credits/transactions?limit=10", &alice).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["transactions"].as_array().unwrap().len(), 10);
    assert_eq!(first["transactions"][0]["amount"], 25, "newest first");
    let row = &first["transactions"][0];
    for field in [
        "id",
        "amount",
        "type",
        "description",
        "balance_before",
        "balance_after",
        "call_id",
        "created_at",
    ] {
        assert!(row.get(field).is_some(), "{field} in {row}");
    }
    assert_eq!(row["balance_after"], 325);
    assert_eq!(row["balance_before"], 300);
    let alice_rows = all_transactions(&stack, &alice, 10).await;
    let amounts: Vec<i64> = alice_rows
        .iter()
        .map(|r| r["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, (1..=25).rev().collect::<Vec<_>>());
    let alice_ids: HashSet<String> = alice_rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(alice_ids.len(), 25);

    // The default page is 20; the last page has no cursor.
    let (_, default_page) = get(&stack, "/api/credits/transactions", &alice).await;
    assert_eq!(default_page["transactions"].as_array().unwrap().len(), 20);
    assert!(default_page["next_cursor"].is_string());

    // Bad input.
    for path in [
        "/api/credits/transactions?cursor=not-a-cursor!",
        "/api/credits/transactions?cursor=bm90IGEgY3Vyc29y",
    ] {
        let (status, body) = get(&stack, path, &alice).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_cursor")),
            "{path}"
        );
    }
    for limit in ["0", "101", "x"] {
        let (status, body) = get(
            &stack,
            &format!("/api/credits/transactions?limit={limit}"),
            &alice,
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "validation_failed");
        assert_eq!(body["error"]["fields"]["limit"]["code"], "out_of_range");
    }

    // Bob, even with Alice's cursor and Alice's id in the query, sees only Bob's rows.
    let cursor = first["next_cursor"].as_str().expect("cursor");
    for path in [
        "/api/credits/transactions".to_owned(),
        format!("/api/credits/transactions?user_id={alice_id}"),
        format!("/api/credits/transactions?cursor={cursor}&user_id={alice_id}"),
    ] {
        let (status, body) = get(&stack, &path, &bob).await;
        assert_eq!(status, 200, "{body}");
        for row in body["transactions"].as_array().unwrap() {
            assert!(
                !alice_ids.contains(row["id"].as_str().unwrap()),
                "{path}: {row}"
            );
        }
    }
    let bob_rows = all_transactions(&stack, &bob, 2).await;
    assert_eq!(bob_rows.len(), 3);
    let (_, body) = get(&stack, &format!("/api/credits?user_id={alice_id}"), &bob).await;
    assert_eq!(body["available_credits"], 600, "Bob's own balance");

    // Budgets: Alice's change is invisible to Bob, and Bob cannot write Alice's.
    let settings = json!({"max_cost_per_call_cents": 300, "max_monthly_spend_cents": 3000,
                          "warn_at_percent": 60, "auto_cutoff": false});
    let (status, _) = put(&stack, "/api/budget", &alice, settings.clone()).await;
    assert_eq!(status, 200);
    let (_, bobs) = get(&stack, &format!("/api/budget?user_id={alice_id}"), &bob).await;
    assert_eq!(bobs["is_default"], true, "{bobs}");
    let mut with_owner = settings.clone();
    with_owner["user_id"] = json!(alice_id);
    with_owner["max_cost_per_call_cents"] = json!(1);
    let (status, body) = put(&stack, "/api/budget", &bob, with_owner).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_body"))
    );
    let (_, alices) = get(&stack, "/api/budget", &alice).await;
    assert_eq!(alices["max_cost_per_call_cents"], 300);
}

#[tokio::test]
async fn budget_defaults_then_saved_settings_and_field_level_validation() {
    let stack = Stack::start().await;
    let (token, _) = stack.register("budget@example.test").await;

    let (status, mut body) = get(&stack, "/api/budget", &token).await;
    assert_eq!(status, 200, "{body}");
    // Registration may or may not store a settings row; either way the values are the defaults.
    body.as_object_mut().expect("object").remove("updated_at");
    assert_eq!(
        body,
        json!({"max_cost_per_call_cents": 1000, "max_monthly_spend_cents": 10000,
               "warn_at_percent": 75, "auto_cutoff": true, "is_default": true})
    );

    let settings = json!({"max_cost_per_call_cents": 250, "max_monthly_spend_cents": 5000,
                          "warn_at_percent": 90, "auto_cutoff": false});
    let (status, saved) = put(&stack, "/api/budget", &token, settings).await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["max_cost_per_call_cents"], 250);
    assert_eq!(saved["is_default"], false);
    assert!(saved["updated_at"].is_string());
    let (_, read) = get(&stack, "/api/budget", &token).await;
    assert_eq!(read, saved);

    let (status, body) = put(
        &stack,
        "/api/budget",
        &token,
        json!({"max_cost_per_call_cents": 6000, "max_monthly_spend_cents": 5000,
               "warn_at_percent": 101, "auto_cutoff": true}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "validation_failed");
    assert_eq!(
        body["error"]["fields"]["warn_at_percent"]["code"],
        "out_of_range"
    );

    let (_, body) = put(
        &stack,
        "/api/budget",
        &token,
        json!({"max_cost_per_call_cents": 6000, "max_monthly_spend_cents": 5000,
               "warn_at_percent": 50, "auto_cutoff": true}),
    )
    .await;
    assert_eq!(
        body["error"]["fields"]["max_cost_per_call_cents"]["code"],
        "per_call_exceeds_monthly"
    );

    let (_, body) = put(
        &stack,
        "/api/budget",
        &token,
        json!({"max_cost_per_call_cents": -1, "auto_cutoff": "yes"}),
    )
    .await;
    let fields = &body["error"]["fields"];
    assert_eq!(
        fields["max_monthly_spend_cents"]["code"], "required",
        "{body}"
    );
    assert_eq!(fields["auto_cutoff"]["code"], "invalid_type");

    let (_, after) = get(&stack, "/api/budget", &token).await;
    assert_eq!(
        after["max_cost_per_call_cents"], 250,
        "refused writes change nothing"
    );
}

#[tokio::test]
async fn fifty_concurrent_deductions_never_overdraw_and_leave_a_consistent_ledger() {
    let stack = Stack::start().await;
    let (token, user_id) = stack.register("racer@example.test").await;
    add_credits(&stack, &user_id, 7, "admin_adjustment").await;

    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let params = json!({"user_id": user_id, "amount": 1,
                            "transaction_id": format!("txn_{}", random_hex()),
                            "description": "concurrent deduction"});
        racers.spawn(gateway_call(
            stack.http.clone(),
            stack.gateway_url.clone(),
            stack_key(&stack),
            "credits.deduct",
            params,
        ));
    }
    let mut succeeded = 0;
    let mut refused = 0;
    for (status, body) in racers.join_all().await {
        match status {
            200 => succeeded += 1,
            409 => {
                assert_eq!(body["error"]["code"], "precondition_failed", "{body}");
                assert_eq!(body["error"]["message"], "insufficient credits");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((succeeded, refused), (7, 43));
    assert_eq!(balance(&stack, &token).await, 0);

    // The ledger, as the user sees it: the adjustment and seven deductions that chain exactly.
    let rows = all_transactions(&stack, &token, 3).await;
    assert_eq!(rows.len(), 8);
    let mut chain: Vec<(i64, i64, i64)> = rows
        .iter()
        .filter(|r| r["type"] == "call_deduction")
        .map(|r| {
            (
                r["amount"].as_i64().unwrap(),
                r["balance_before"].as_i64().unwrap(),
                r["balance_after"].as_i64().unwrap(),
            )
        })
        .collect();
    chain.sort_by_key(|&(_, before, _)| std::cmp::Reverse(before));
    let expected: Vec<(i64, i64, i64)> = (1..=7).rev().map(|b| (-1, b, b - 1)).collect();
    assert_eq!(chain, expected);
}

// ---------------------------------------------------------------------------------------------
// Stripe
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stripe_purchases_are_verified_credited_once_and_replays_change_nothing() {
    let stack = Stack::start().await;
    let (token, user_id) = stack.register("buyer@example.test").await;

    let purchase = checkout_completed("evt_purchase_1", &user_id, "pi_1", 50);
    let body = purchase.to_string();
    let header = sign_stripe_payload(
        stack.stripe_webhook_secret.as_bytes(),
        unix_now(),
        body.as_bytes(),
    );
    let (status, answer) = stripe(&stack, &body, Some(&header)).await;
    assert_eq!(
        (status, answer.clone()),
        (200, json!({"received": true})),
        "{}",
        stack.worker_log()
    );
    assert_eq!(balance(&stack, &token).await, 50);
    let (_, page) = get(&stack, "/api/credits/transactions", &token).await;
    assert_eq!(page["transactions"][0]["type"], "purchase");
    assert_eq!(page["transactions"][0]["amount"], 50);

    // The same delivery again: acknowledged as a duplicate, nothing changes.
    let (status, answer) = stripe(&stack, &body, Some(&header)).await;
    assert_eq!(
        (status, answer),
        (200, json!({"received": true, "duplicate": true}))
    );
    // The PaymentIntent's own event for the same purchase: also credited once only.
    let intent = stripe_event(
        "evt_purchase_2",
        "payment_intent.succeeded",
        json!({"id": "pi_1", "object": "payment_intent",
               "metadata": {"user_id": user_id, "credits": "50"}}),
    );
    let (status, answer) = stripe_signed(&stack, &intent).await;
    assert_eq!(
        (status, answer),
        (200, json!({"received": true, "duplicate": true}))
    );
    assert_eq!(balance(&stack, &token).await, 50);

    // Signatures: wrong secret, tampered body, missing header, stale timestamp.
    let fresh = checkout_completed("evt_purchase_3", &user_id, "pi_3", 10).to_string();
    let now = unix_now();
    let forged = sign_stripe_payload(b"whsec_not_the_secret", now, fresh.as_bytes());
    let tampered_body = fresh.replace("\"10\"", "\"10000\"");
    let valid = sign_stripe_payload(
        stack.stripe_webhook_secret.as_bytes(),
        now,
        fresh.as_bytes(),
    );
    for (what, body, header, code) in [
        (
            "wrong secret",
            fresh.as_str(),
            Some(forged.as_str()),
            "invalid_signature",
        ),
        (
            "tampered body",
            tampered_body.as_str(),
            Some(valid.as_str()),
            "invalid_signature",
        ),
        ("no header", fresh.as_str(), None, "invalid_signature"),
        (
            "garbage header",
            fresh.as_str(),
            Some("t=abc,v1=xyz"),
            "invalid_signature",
        ),
    ] {
        let (status, answer) = stripe(&stack, body, header).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{what}"
        );
    }
    let stale = sign_stripe_payload(
        stack.stripe_webhook_secret.as_bytes(),
        now - 301,
        fresh.as_bytes(),
    );
    let (status, answer) = stripe(&stack, &fresh, Some(&stale)).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("stale_signature"))
    );
    assert_eq!(
        balance(&stack, &token).await,
        50,
        "refused deliveries change nothing"
    );

    // Several v1 signatures (secret rotation): one valid among them is enough.
    let valid_v1 = valid.split_once(",v1=").expect("v1").1;
    let rotated = format!(
        "t={now},v1={},v1={valid_v1},v0={}",
        "ab".repeat(32),
        "cd".repeat(32)
    );
    let (status, answer) = stripe(&stack, &fresh, Some(&rotated)).await;
    assert_eq!((status, answer), (200, json!({"received": true})));
    assert_eq!(balance(&stack, &token).await, 60);

    // A valid signature over something that is not JSON.
    let junk = "{not json";
    let header = sign_stripe_payload(
        stack.stripe_webhook_secret.as_bytes(),
        unix_now(),
        junk.as_bytes(),
    );
    let (status, answer) = stripe(&stack, junk, Some(&header)).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );

    // Events we do not handle, and purchases for nobody, are acknowledged and ignored.
    let (status, answer) = stripe_signed(
        &stack,
        &stripe_event("evt_other", "charge.refunded", json!({"id": "ch_1"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["ignored"], true);
    let (status, answer) = stripe_signed(
        &stack,
        &checkout_completed("evt_nobody", "usr_nobody", "pi_9", 5),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        json!({"received": true, "ignored": true, "reason": "unknown_user"})
    );
    assert_eq!(balance(&stack, &token).await, 60);
}

#[tokio::test]
async fn stripe_subscription_invoice_sets_the_tier_and_deletion_returns_to_free() {
    let stack = Stack::start().await;
    let (token, user_id) = stack.register("subscriber@example.test").await;

    let invoice = stripe_event(
        "evt_invoice_1",
        "invoice.paid",
        json!({
            "id": "in_1", "object": "invoice", "customer": "cus_e2e", "subscription": "sub_e2e",
            "billing_reason": "subscription_create",
            "subscription_details": {"metadata": {"user_id": user_id}},
            "lines": {"data": [{
                "price": {"id": "price_1", "lookup_key": "premium_monthly"},
                "period": {"start": unix_now(), "end": unix_now() + 30 * 86_400}
            }]}
        }),
    );
    let (status, answer) = stripe_signed(&stack, &invoice).await;
    assert_eq!(
        (status, answer),
        (200, json!({"received": true})),
        "{}",
        stack.worker_log()
    );

    let (_, credits) = get(&stack, "/api/credits", &token).await;
    assert_eq!(credits["tier"], "premium");
    assert_eq!(credits["subscription_status"], "active");
    assert_eq!(credits["available_credits"], 500);
    assert_eq!(credits["limits"]["calls_per_day"], Value::Null);
    assert_eq!(credits["limits"]["max_call_seconds"], 1800);
    assert_eq!(credits["calls_remaining_today"], Value::Null);
    assert!(credits["subscription_renews_at"].is_string());
    let (_, page) = get(&stack, "/api/credits/transactions", &token).await;
    assert_eq!(page["transactions"][0]["type"], "subscription_refill");

    // The same invoice event again refills nothing.
    let (_, answer) = stripe_signed(&stack, &invoice).await;
    assert_eq!(answer["duplicate"], true);
    assert_eq!(balance(&stack, &token).await, 500);

    // Cancellation: identified by the subscription alone; credits stay, limits go back to free.
    let deleted = stripe_event(
        "evt_sub_deleted",
        "customer.subscription.deleted",
        json!({"id": "sub_e2e", "object": "subscription", "customer": "cus_e2e",
               "status": "canceled", "ended_at": unix_now()}),
    );
    let (status, answer) = stripe_signed(&stack, &deleted).await;
    assert_eq!((status, answer), (200, json!({"received": true})));
    let (_, credits) = get(&stack, "/api/credits", &token).await;
    assert_eq!(credits["tier"], "free");
    assert_eq!(credits["subscription_status"], "canceled");
    assert_eq!(credits["available_credits"], 500);
    assert_eq!(credits["limits"]["calls_per_day"], 3);
    let row = stack.db()
        .await
        .query_one(
            "SELECT max_calls_per_day, max_call_duration_seconds FROM user_credits WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .expect("credits row");
    assert_eq!(
        (row.get::<_, Option<i32>>(0), row.get::<_, i32>(1)),
        (Some(3), 300)
    );

    // A deletion for a subscription nobody has is acknowledged and ignored.
    let unknown = stripe_event(
        "evt_sub_unknown",
        "customer.subscription.deleted",
        json!({"id": "sub_unknown", "object": "subscription", "customer": "cus_unknown"}),
    );
    let (status, answer) = stripe_signed(&stack, &unknown).await;
    assert_eq!(status, 200);
    assert_eq!(answer["reason"], "unknown_subscription");
}

// ---------------------------------------------------------------------------------------------
// Admin report
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn admin_stats_are_for_admins_only() {
    let stack = Stack::start().await;
    let (user_token, user_id) = stack.register("plain@example.test").await;
    stack.register("boss@example.test").await;

    let (status, body) = get(&stack, "/api/admin/stats", &user_token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = stack
        .json(Method::GET, "/api/admin/stats", None, None)
        .await;
    assert_eq!(status, 401);

    stack
        .db()
        .await
        .execute(
            "UPDATE users SET role = 'admin' WHERE email = 'boss@example.test'",
            &[],
        )
        .await
        .expect("promote");
    let admin = stack.login("boss@example.test").await;

    // Some activity to report: a purchase today, and a basic-tier user who is low on credits.
    add_credits(&stack, &user_id, 4, "refund").await;
    stack
        .db()
        .await
        .execute(
            "UPDATE user_credits SET subscription_tier = 'basic' WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .expect("make basic");

    let (status, stats) = get(&stack, "/api/admin/stats", &admin).await;
    assert_eq!(status, 200, "{stats}\n{}", stack.worker_log());
    assert_eq!(stats["cost_by_provider"]["window_days"], 30);
    assert_eq!(stats["cost_by_provider"]["calls"], 0);
    assert_eq!(stats["cost_by_provider"]["total_cents"], "0.0000");
    assert_eq!(stats["top_personas"]["personas"], json!([]));
    let days = stats["revenue_by_day"]["days"].as_array().expect("days");
    assert_eq!(days.len(), 7);
    assert_eq!(days[0]["credits_purchased"], 0);
    assert_eq!(stats["calls_today"]["total_calls"], 0);
    assert_eq!(stats["low_credit_users"]["count"], 1);
    assert_eq!(
        stats["low_credit_users"]["tiers"],
        json!(["basic", "premium"])
    );

    // The role lives in the database: a demoted admin's token stops working at once.
    stack
        .db()
        .await
        .execute(
            "UPDATE users SET role = 'user' WHERE email = 'boss@example.test'",
            &[],
        )
        .await
        .expect("demote");
    let (status, _) = get(&stack, "/api/admin/stats", &admin).await;
    assert_eq!(status, 403);
}

/// An `invoice.paid` for `subscription` and `user_id`, paying the period `[start, end)`, created
/// at `created`.
fn invoice_paid(
    event_id: &str,
    user_id: &str,
    subscription: &str,
    (start, end): (i64, i64),
    created: i64,
) -> Value {
    let mut event = stripe_event(
        event_id,
        "invoice.paid",
        json!({
            "id": format!("in_{event_id}"), "object": "invoice", "customer": format!("cus_{user_id}"),
            "subscription": subscription, "billing_reason": "subscription_cycle",
            "subscription_details": {"metadata": {"user_id": user_id}},
            "lines": {"data": [{
                "price": {"id": "price_1", "lookup_key": "premium_monthly"},
                "period": {"start": start, "end": end}
            }]}
        }),
    );
    event["created"] = json!(created);
    event
}

fn subscription_deleted(event_id: &str, user_id: &str, subscription: &str, ended_at: i64) -> Value {
    let mut event = stripe_event(
        event_id,
        "customer.subscription.deleted",
        json!({"id": subscription, "object": "subscription", "customer": format!("cus_{user_id}"),
               "status": "canceled", "ended_at": ended_at, "metadata": {"user_id": user_id}}),
    );
    event["created"] = json!(ended_at);
    event
}

async fn tier_and_balance(stack: &Stack, token: &str) -> (String, i64) {
    let (status, body) = get(stack, "/api/credits", token).await;
    assert_eq!(status, 200, "{body}");
    (
        body["tier"].as_str().expect("tier").to_owned(),
        body["available_credits"].as_i64().expect("balance"),
    )
}

#[tokio::test]
async fn a_late_invoice_does_not_resurrect_a_cancelled_subscription_and_order_does_not_matter() {
    let stack = Stack::start().await;
    let now = unix_now();
    let period = (now - 20 * 86_400, now + 10 * 86_400);

    // Ada: the invoice, then the deletion, then the same period's invoice again under a new event
    // id (a retry that arrives late). It used to set the tier back to premium and add 500 credits.
    let (ada, ada_id) = stack.register("ada@example.test").await;
    let paid = invoice_paid("evt_ada_paid", &ada_id, "sub_ada", period, period.0 + 60);
    assert_eq!(
        stripe_signed(&stack, &paid).await,
        (200, json!({"received": true}))
    );
    assert_eq!(
        tier_and_balance(&stack, &ada).await,
        ("premium".to_owned(), 500)
    );
    let deleted = subscription_deleted("evt_ada_deleted", &ada_id, "sub_ada", now);
    assert_eq!(
        stripe_signed(&stack, &deleted).await,
        (200, json!({"received": true}))
    );
    assert_eq!(
        tier_and_balance(&stack, &ada).await,
        ("free".to_owned(), 500)
    );
    let late = invoice_paid(
        "evt_ada_paid_retry",
        &ada_id,
        "sub_ada",
        period,
        period.0 + 90,
    );
    let (status, answer) = stripe_signed(&stack, &late).await;
    assert_eq!(
        (status, answer),
        (
            200,
            json!({"received": true, "ignored": true, "reason": "stale_event"})
        )
    );
    assert_eq!(
        tier_and_balance(&stack, &ada).await,
        ("free".to_owned(), 500)
    );

    // Bob: the same two events in the other order. The period was paid for, so its credits come
    // (once); the subscription has ended, so the tier does not. The end state is Ada's.
    let (bob, bob_id) = stack.register("bob@example.test").await;
    let deleted = subscription_deleted("evt_bob_deleted", &bob_id, "sub_bob", now);
    assert_eq!(stripe_signed(&stack, &deleted).await.0, 200);
    let paid = invoice_paid("evt_bob_paid", &bob_id, "sub_bob", period, period.0 + 60);
    assert_eq!(
        stripe_signed(&stack, &paid).await,
        (200, json!({"received": true}))
    );
    assert_eq!(
        tier_and_balance(&stack, &bob).await,
        ("free".to_owned(), 500)
    );
    let again = invoice_paid(
        "evt_bob_paid_retry",
        &bob_id,
        "sub_bob",
        period,
        period.0 + 90,
    );
    assert_eq!(
        stripe_signed(&stack, &again).await.1["reason"],
        "stale_event"
    );
    assert_eq!(
        tier_and_balance(&stack, &bob).await,
        ("free".to_owned(), 500)
    );

    // A live-mode event reaching this test-mode deployment is ignored, whatever it says.
    let mut live = invoice_paid(
        "evt_live",
        &ada_id,
        "sub_live",
        (now, now + 30 * 86_400),
        now,
    );
    live["livemode"] = json!(true);
    let (status, answer) = stripe_signed(&stack, &live).await;
    assert_eq!(
        (status, answer),
        (
            200,
            json!({"received": true, "ignored": true, "reason": "livemode_mismatch"})
        )
    );
    assert_eq!(
        tier_and_balance(&stack, &ada).await,
        ("free".to_owned(), 500)
    );
}

#[tokio::test]
async fn a_live_mode_deployment_ignores_test_mode_events() {
    let stack = Stack::start_with_vars(&[("STRIPE_LIVEMODE", "true")]).await;
    let (token, user_id) = stack.register("live@example.test").await;
    let now = unix_now();
    let test_mode = invoice_paid("evt_test", &user_id, "sub_1", (now, now + 86_400), now);
    let (status, answer) = stripe_signed(&stack, &test_mode).await;
    assert_eq!(answer["reason"], "livemode_mismatch", "{status} {answer}");
    let mut live = test_mode.clone();
    live["id"] = json!("evt_live");
    live["livemode"] = json!(true);
    assert_eq!(
        stripe_signed(&stack, &live).await,
        (200, json!({"received": true}))
    );
    assert_eq!(
        tier_and_balance(&stack, &token).await,
        ("premium".to_owned(), 500)
    );
}
