//! Placing calls end to end: the Worker in workerd, the gateway, Postgres, and the provider
//! simulators (Twilio with a simulated callee, Deepgram, the LLM, ElevenLabs).

use std::time::Duration;

use callmeback_e2e::Stack;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn a_whole_call_from_request_to_recorded_outcome() {
    let stack = Stack::start().await;
    let (token, user_id) = stack
        .register_with_phone("caller@example.com", "+14155550101")
        .await;
    stack.set_tier(&user_id, "basic", 10).await;

    let (status, body) = stack
        .json(
            Method::POST,
            "/api/calls",
            Some(&token),
            Some(json!({"persona_id": "brad"})),
        )
        .await;
    assert_eq!(status, 202, "{body}\n{}", stack.worker_log());
    let call_id = body["call"]["id"].as_str().expect("call id").to_owned();
    assert_eq!(body["call"]["status"], "calling", "{body}");

    let call = stack
        .wait_for_outcome(&token, &call_id, Duration::from_secs(90))
        .await;
    assert_eq!(
        call["status"],
        "completed",
        "{call}\n{}",
        stack.worker_log()
    );
    let transcript = call["transcript"].as_array().expect("transcript");
    assert!(transcript.len() >= 4, "{call}");
    assert_eq!(
        transcript[0]["role"], "assistant",
        "the persona greets first: {call}"
    );
    assert!(transcript.iter().any(|line| line["role"] == "user"));
    assert!(call["costs"]["total_cents"].is_string(), "{call}");
    assert!(call["credits_used"].as_i64().unwrap_or(0) >= 1, "{call}");
}
