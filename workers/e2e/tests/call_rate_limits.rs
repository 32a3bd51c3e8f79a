//! The per-number rate limit end to end: 2 calls per number per window, refused with 429,
//! `Retry-After` and the remaining count; atomic under concurrent requests; kept in Durable Object
//! storage across a restart of the Worker; free again once the window has passed.

mod call_support;

use std::time::{Duration, Instant};

use call_support::{
    Answer, fast_twilio, place, post_call, rate_limit_status, sim_calls_to, unanswered,
};
use callmeback_e2e::Stack;
use callmeback_simulators::twilio::Outcome;
use serde_json::json;

/// The window of this file's stack: short enough to wait out, long enough to outlast a restart
/// of the Worker on a busy machine.
const WINDOW_SECS: u64 = 45;

fn assert_phone_limited(answer: &Answer) {
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert_eq!(answer.code(), "phone_rate_limited", "{}", answer.body);
    let error = &answer.body["error"];
    assert_eq!(error["remaining"], 0, "{error}");
    assert_eq!(error["limit"], 2, "{error}");
    assert_eq!(error["window_secs"], WINDOW_SECS, "{error}");
    let retry_after: u64 = answer
        .retry_after
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "Retry-After missing or not seconds: {:?}",
                answer.retry_after
            )
        });
    assert!(
        (1..=WINDOW_SECS).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert_eq!(error["retry_after_secs"], retry_after, "{error}");
    assert!(
        !answer.body.to_string().contains("5550150"),
        "the number is masked: {}",
        answer.body
    );
}

#[tokio::test]
async fn the_third_call_within_the_window_is_refused_even_after_a_restart_and_allowed_after_it() {
    let window = WINDOW_SECS.to_string();
    let mut stack = Stack::start_with_vars(&[("PHONE_LIMIT_WINDOW_SECS", &window)]).await;
    fast_twilio(&stack);
    let (token, user_id) = stack
        .register_with_phone("limits@example.com", "+14155550140")
        .await;
    stack.set_tier(&user_id, "basic", 10).await;
    let number = "+14155550150";
    stack
        .sims
        .twilio()
        .set_scenario(number, unanswered(Outcome::Busy));
    let body = json!({"persona_id": "brad", "phone_number": number});

    let fresh = rate_limit_status(&stack, &token, number).await;
    assert_eq!(fresh["remaining"], 2, "{fresh}");
    place(&stack, &token, number).await;
    let after_one = rate_limit_status(&stack, &token, number).await;
    assert_eq!(after_one["remaining"], 1, "{after_one}");
    // Two seconds between the two calls, so the end of the window below sees them leave one at a
    // time (polled every 200 ms): a sliding window frees one slot, not both at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    place(&stack, &token, number).await;

    // Ten requests at once for the last slot: exactly one gets it (another number, same user).
    let contested = "+14155550151";
    stack
        .sims
        .twilio()
        .set_scenario(contested, unanswered(Outcome::Busy));
    place(&stack, &token, contested).await;
    let contested_body = json!({"persona_id": "brad", "phone_number": contested});
    let answers = futures_util::future::join_all(
        (0..10).map(|_| post_call(&stack, Some(&token), contested_body.clone(), None)),
    )
    .await;
    let placed: Vec<&Answer> = answers.iter().filter(|a| a.status == 202).collect();
    let refused: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == 429 && a.code() == "phone_rate_limited")
        .collect();
    assert_eq!(
        (placed.len(), refused.len()),
        (1, 9),
        "{:?}",
        answers
            .iter()
            .map(|a| (a.status, a.code().to_owned()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        sim_calls_to(&stack, contested).len(),
        2,
        "Twilio saw the first call and the one winner"
    );
    let contested_rows: i64 = stack
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM calls WHERE phone_number = $1",
            &[&contested],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(contested_rows, 2);

    // The third call to the first number within the window.
    let third = post_call(&stack, Some(&token), body.clone(), None).await;
    assert_phone_limited(&third);
    assert_eq!(sim_calls_to(&stack, number).len(), 2);
    let before = rate_limit_status(&stack, &token, number).await;
    assert_eq!(before["remaining"], 0, "{before}");
    assert_eq!(before["allowed"], false, "{before}");
    assert_eq!(before["limit"], 2, "{before}");

    // The limiter's state is in Durable Object storage: a restart keeps it.
    stack.restart_worker().await;
    let after = rate_limit_status(&stack, &token, number).await;
    assert_eq!(
        (&after["remaining"], &after["allowed"], &after["limit"]),
        (&before["remaining"], &before["allowed"], &before["limit"]),
        "before {before}, after {after}"
    );
    let retry_before = before["retry_after_secs"].as_u64().expect("retry after");
    let retry_after = after["retry_after_secs"].as_u64().expect("retry after");
    assert!(
        retry_after <= retry_before && retry_after >= 1,
        "the same window, counting down: {retry_before} then {retry_after}"
    );
    assert_phone_limited(&post_call(&stack, Some(&token), body.clone(), None).await);

    // Once the first call has left the window, one more is allowed.
    let deadline = Instant::now() + Duration::from_secs(WINDOW_SECS + 30);
    loop {
        let status = rate_limit_status(&stack, &token, number).await;
        if status["allowed"] == true {
            assert_eq!(status["remaining"], 1, "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the window never passed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answer = post_call(&stack, Some(&token), body, None).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(sim_calls_to(&stack, number).len(), 3);
}
