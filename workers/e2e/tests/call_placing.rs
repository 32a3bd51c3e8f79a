//! Placing calls end to end: every way a call ends, every refusal of `POST /api/calls` with its
//! own code, and `Idempotency-Key`. (A whole answered call is `calls.rs`; per-number rate limits
//! are `call_rate_limits.rs`.)

mod call_support;

use std::time::Duration;

use call_support::{
    fast_twilio, get_call, place, post_call, rate_limit_status, sim_calls_to, unanswered,
    wait_for_call, wait_until_final,
};
use callmeback_e2e::Stack;
use callmeback_simulators::twilio::{Outcome, RestError, Scenario};
use reqwest::Method;
use serde_json::json;

const OUTCOME_TIMEOUT: Duration = Duration::from_secs(60);

/// Inserts `count` calls of today that count against the user's daily limit (answered calls
/// Twilio knew about), as if placed earlier.
async fn seed_calls_today(stack: &Stack, user_id: &str, count: i32) {
    stack
        .db()
        .await
        .execute(
            "INSERT INTO calls (id, user_id, persona_id, phone_number, status, twilio_call_sid, \
                                finalized_at, end_time) \
             SELECT 'call_seed' || md5($1 || g), $1, 'brad', '+14155550999', 'completed', \
                    'CA' || md5($1 || g), now(), now() \
             FROM generate_series(1, $2) g",
            &[&user_id, &count],
        )
        .await
        .expect("seed calls");
}

#[tokio::test]
async fn every_terminal_state_driven_by_the_simulator() {
    let stack = Stack::start().await;
    fast_twilio(&stack);
    let twilio = stack.sims.twilio();
    let (token, user_id) = stack
        .register_with_phone("ends@example.com", "+14155550100")
        .await;
    stack.set_tier(&user_id, "basic", 10).await;
    // The persona hangs up on a machine at once (leaving a message is conversation.rs's subject).
    stack
        .db()
        .await
        .execute(
            "UPDATE users SET voicemail_action = 'hang_up' WHERE id = $1",
            &[&user_id],
        )
        .await
        .expect("voicemail preference");

    let busy = "+14155550101";
    let no_answer = "+14155550102";
    let failed = "+14155550103";
    let machine = "+14155550104";
    let ringing = "+14155550105";
    twilio.set_scenario(busy, unanswered(Outcome::Busy));
    twilio.set_scenario(no_answer, unanswered(Outcome::NoAnswer));
    twilio.set_scenario(failed, unanswered(Outcome::Failed));
    twilio.set_scenario(
        machine,
        Scenario {
            outcome: Outcome::Machine,
            ring_ms: 200,
            machine_greeting_ms: 400,
            hangup: callmeback_simulators::twilio::Hangup::App,
            ..Scenario::default()
        },
    );
    // Rings for long enough to be hung up on first.
    twilio.set_scenario(
        ringing,
        Scenario {
            ring_ms: 20_000,
            ..Scenario::default()
        },
    );

    let mut expected = Vec::new();
    for (number, status) in [
        (busy, "busy"),
        (no_answer, "no_answer"),
        (failed, "failed"),
        (machine, "voicemail"),
    ] {
        expected.push((place(&stack, &token, number).await, number, status));
    }

    // Canceled: hung up by the user while it rings.
    let canceled = place(&stack, &token, ringing).await;
    wait_for_call(&stack, &token, &canceled, OUTCOME_TIMEOUT, "calling", |c| {
        c["status"] == "calling"
    })
    .await;
    let (status, body) = stack
        .json(
            Method::POST,
            &format!("/api/calls/{canceled}/hangup"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}\n{}", stack.worker_log());
    expected.push((canceled.clone(), ringing, "canceled"));

    for (call_id, number, status) in &expected {
        let call = wait_until_final(&stack, &token, call_id, OUTCOME_TIMEOUT).await;
        assert_eq!(call["status"], *status, "{number}: {call}");
        let sim = sim_calls_to(&stack, number);
        assert_eq!(sim.len(), 1, "{number}: one call reached Twilio");
        assert!(
            sim[0].status.is_terminal(),
            "{number}: Twilio's leg is over: {:?}",
            sim[0].status
        );
        if *status != "voicemail" {
            assert!(
                call["answered_at"].is_null(),
                "{number}: never answered: {call}"
            );
            assert_eq!(call["credits_used"], 0, "{number}: nothing to pay: {call}");
        }
    }
    let voicemail = get_call(&stack, &token, &expected[3].0).await;
    assert_eq!(voicemail["answered_by"], "machine_end_beep", "{voicemail}");
    let hung_up = sim_calls_to(&stack, ringing);
    assert_eq!(
        hung_up[0].end_reason,
        Some(callmeback_simulators::twilio::records::EndReason::Canceled),
        "the hang-up reached Twilio before the callee answered"
    );
    // A call that is over cannot be hung up again.
    let (status, body) = stack
        .json(
            Method::POST,
            &format!("/api/calls/{canceled}/hangup"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "call_ended");
}

#[tokio::test]
async fn a_call_twilio_refuses_fails_readably_and_costs_neither_slot_nor_daily_call() {
    let stack = Stack::start().await;
    fast_twilio(&stack);
    let twilio = stack.sims.twilio();
    let (token, user_id) = stack
        .register_with_phone("refused-by-twilio@example.com", "+14155550110")
        .await;
    stack.set_tier(&user_id, "basic", 10).await;
    // Nine of the tier's ten calls of the day are used: one more may be placed.
    seed_calls_today(&stack, &user_id, 9).await;

    let abroad = "+4915112345678";
    twilio.set_scenario(
        abroad,
        Scenario {
            rest_error: Some(RestError {
                status: 400,
                code: 21215,
                message: format!(
                    "Account not authorized to call {abroad}. Perhaps you need to enable some international permissions"
                ),
            }),
            ..Scenario::default()
        },
    );
    let answer = post_call(
        &stack,
        Some(&token),
        json!({"persona_id": "brad", "phone_number": abroad}),
        None,
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let call = &answer.body["call"];
    assert_eq!(call["status"], "failed", "{call}");
    let message = call["error_message"].as_str().expect("error message");
    assert!(
        message.contains("Account not authorized to call") && message.contains("21215"),
        "{message}"
    );
    assert!(
        !message.contains("15112345678"),
        "no phone number in the stored message: {message}"
    );
    let stored = get_call(&stack, &token, &answer.call_id()).await;
    assert_eq!(stored["status"], "failed");
    assert_eq!(stored["error_message"], message);
    assert!(
        sim_calls_to(&stack, abroad).is_empty(),
        "nothing was dialled"
    );

    // The number's slot was given back…
    let limit = rate_limit_status(&stack, &token, abroad).await;
    assert_eq!(limit["remaining"], 2, "{limit}");
    assert_eq!(limit["allowed"], true, "{limit}");
    // …and the day's tenth call is still there to place, then the eleventh is refused.
    let busy = "+14155550111";
    twilio.set_scenario(busy, unanswered(Outcome::Busy));
    place(&stack, &token, busy).await;
    let refused = post_call(
        &stack,
        Some(&token),
        json!({"persona_id": "brad", "phone_number": busy}),
        None,
    )
    .await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.code(), "daily_call_limit", "{}", refused.body);
}

#[tokio::test]
async fn each_refusal_has_its_own_code_and_places_nothing() {
    let stack = Stack::start().await;
    fast_twilio(&stack);
    let own = "+14155550120";
    let (token, user_id) = stack.register_with_phone("no@example.com", own).await;
    stack.set_tier(&user_id, "basic", 10).await;
    let db = stack.db().await;
    let brad = json!({"persona_id": "brad"});

    // Not signed in.
    let answer = post_call(&stack, None, brad.clone(), None).await;
    assert_eq!((answer.status, answer.code()), (401, "unauthorized"));
    let answer = post_call(&stack, Some("not-a-token"), brad.clone(), None).await;
    assert_eq!((answer.status, answer.code()), (401, "unauthorized"));

    // No such persona; a persona no longer offered.
    let answer = post_call(&stack, Some(&token), json!({"persona_id": "nobody"}), None).await;
    assert_eq!(
        (answer.status, answer.code()),
        (404, "persona_not_found"),
        "{}",
        answer.body
    );
    db.execute(
        "UPDATE personas SET is_active = false WHERE id = 'alex'",
        &[],
    )
    .await
    .expect("retire alex");
    let answer = post_call(&stack, Some(&token), json!({"persona_id": "alex"}), None).await;
    assert_eq!(
        (answer.status, answer.code()),
        (409, "persona_inactive"),
        "{}",
        answer.body
    );

    // Numbers that are not E.164.
    for number in ["04155550120", "+0415555012", "+1415", "+1 415 555 01 2x"] {
        let answer = post_call(
            &stack,
            Some(&token),
            json!({"persona_id": "brad", "phone_number": number}),
            None,
        )
        .await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, "validation_failed"),
            "{number}: {}",
            answer.body
        );
        assert_eq!(
            callmeback_e2e::field_code(&answer.body, "phone_number"),
            "invalid_phone"
        );
    }

    // The tier's calls of the day are used up.
    seed_calls_today(&stack, &user_id, 10).await;
    let answer = post_call(&stack, Some(&token), brad.clone(), None).await;
    assert_eq!(
        (answer.status, answer.code()),
        (429, "daily_call_limit"),
        "{}",
        answer.body
    );
    assert_eq!(answer.body["error"]["limit"], 10);
    db.execute("DELETE FROM calls WHERE user_id = $1", &[&user_id])
        .await
        .expect("forget the day's calls");

    // A paid tier without credits for one minute.
    stack.set_tier(&user_id, "basic", 0).await;
    let answer = post_call(&stack, Some(&token), brad.clone(), None).await;
    assert_eq!(
        (answer.status, answer.code()),
        (402, "insufficient_credits"),
        "{}",
        answer.body
    );
    stack.set_tier(&user_id, "basic", 10).await;

    // This month's budget is spent.
    db.execute(
        "INSERT INTO user_budget_settings (user_id, max_cost_per_call_cents, max_monthly_spend_cents) \
         VALUES ($1, 100, 100) \
         ON CONFLICT (user_id) DO UPDATE SET max_cost_per_call_cents = 100, max_monthly_spend_cents = 100",
        &[&user_id],
    )
    .await
    .expect("budget");
    seed_calls_today(&stack, &user_id, 1).await;
    db.execute(
        "INSERT INTO call_cost_breakdowns (id, call_id, twilio_cost_cents) \
         SELECT 'ccb_seed', id, 100 FROM calls WHERE user_id = $1",
        &[&user_id],
    )
    .await
    .expect("spend");
    let answer = post_call(&stack, Some(&token), brad.clone(), None).await;
    assert_eq!(
        (answer.status, answer.code()),
        (402, "budget_exhausted"),
        "{}",
        answer.body
    );

    // None of it rang a phone or left a call behind.
    assert!(
        stack.sims.twilio().calls().is_empty(),
        "Twilio was asked to call"
    );
    let rows: i64 = db
        .query_one(
            "SELECT count(*) FROM calls WHERE user_id = $1 AND id NOT LIKE 'call_seed%'",
            &[&user_id],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "a refused request left a call row");
    let limit = rate_limit_status(&stack, &token, own).await;
    assert_eq!(limit["remaining"], 2, "no refusal took a slot: {limit}");

    // With the budget raised the same request goes through.
    db.execute(
        "UPDATE user_budget_settings SET max_monthly_spend_cents = 10000 WHERE user_id = $1",
        &[&user_id],
    )
    .await
    .expect("raise budget");
    stack
        .sims
        .twilio()
        .set_scenario(own, unanswered(Outcome::Busy));
    let answer = post_call(&stack, Some(&token), brad, None).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
}

#[tokio::test]
async fn a_retried_request_with_the_same_idempotency_key_places_one_call() {
    let stack = Stack::start().await;
    fast_twilio(&stack);
    let (token, user_id) = stack
        .register_with_phone("retry@example.com", "+14155550130")
        .await;
    stack.set_tier(&user_id, "basic", 10).await;
    let number = "+14155550131";
    stack
        .sims
        .twilio()
        .set_scenario(number, unanswered(Outcome::Busy));
    let body = json!({"persona_id": "brad", "phone_number": number});

    // One after the other: the retry answers with the first call.
    let first = post_call(&stack, Some(&token), body.clone(), Some("order-42")).await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.body["replayed"], false);
    let retry = post_call(&stack, Some(&token), body.clone(), Some("order-42")).await;
    assert_eq!(retry.status, 202, "{}", retry.body);
    assert_eq!(retry.body["replayed"], true, "{}", retry.body);
    assert_eq!(retry.call_id(), first.call_id());
    // Even once the call is over.
    wait_until_final(&stack, &token, &first.call_id(), OUTCOME_TIMEOUT).await;
    let late = post_call(&stack, Some(&token), body.clone(), Some("order-42")).await;
    assert_eq!(late.status, 202, "{}", late.body);
    assert_eq!(late.call_id(), first.call_id());
    assert_eq!(late.body["call"]["status"], "busy", "{}", late.body);
    assert_eq!(sim_calls_to(&stack, number).len(), 1, "one Calls.json POST");

    // At the same time (a client that timed out and retried while the first was in flight).
    let other = "+14155550132";
    stack
        .sims
        .twilio()
        .set_scenario(other, unanswered(Outcome::Busy));
    let body = json!({"persona_id": "brad", "phone_number": other});
    let (a, b) = tokio::join!(
        post_call(&stack, Some(&token), body.clone(), Some("order-43")),
        post_call(&stack, Some(&token), body.clone(), Some("order-43")),
    );
    assert_eq!((a.status, b.status), (202, 202), "{}\n{}", a.body, b.body);
    assert_eq!(a.call_id(), b.call_id());
    assert_eq!(
        sim_calls_to(&stack, other).len(),
        1,
        "one Calls.json POST for two concurrent requests"
    );
    // The loser of the race gave its rate-limit slot back.
    let limit = rate_limit_status(&stack, &token, other).await;
    assert_eq!(limit["remaining"], 1, "{limit}");

    // A different key is a different call.
    let again = post_call(&stack, Some(&token), body, Some("order-44")).await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_ne!(again.call_id(), a.call_id());
    let rows: i64 = stack
        .db()
        .await
        .query_one("SELECT count(*) FROM calls WHERE user_id = $1", &[&user_id])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 3);
}
