//! Twilio's requests to the Worker end to end: `X-Twilio-Signature` on the voice, status and AMD
//! webhooks, and callbacks that arrive twice, out of order or after the call was recorded.

mod call_support;

use std::time::{Duration, Instant};

use call_support::{
    fast_twilio, get_call, place, post_signed, post_twilio, recorded_state, short_conversation,
    sign, sim_calls_to, status_params, unanswered, wait_until_final,
};
use callmeback_e2e::Stack;
use callmeback_simulators::twilio::{Outcome, Scenario};
use reqwest::Method;

const OUTCOME_TIMEOUT: Duration = Duration::from_secs(60);

fn amd_params(call_sid: &str, answered_by: &str) -> Vec<(String, String)> {
    vec![
        (
            "AccountSid".to_owned(),
            "AC00000000000000000000000000000000".to_owned(),
        ),
        ("AnsweredBy".to_owned(), answered_by.to_owned()),
        ("CallSid".to_owned(), call_sid.to_owned()),
        ("MachineDetectionDuration".to_owned(), "1200".to_owned()),
    ]
}

fn voice_params(call_sid: &str) -> Vec<(String, String)> {
    let mut params = status_params(call_sid, "in-progress", None);
    params.push(("AnsweredBy".to_owned(), "human".to_owned()));
    params
}

/// The Twilio sid of a call (from the database: the API does not show it).
async fn call_sid(stack: &Stack, call_id: &str) -> String {
    stack
        .db()
        .await
        .query_one(
            "SELECT twilio_call_sid FROM calls WHERE id = $1",
            &[&call_id],
        )
        .await
        .expect("call row")
        .get::<_, Option<String>>(0)
        .expect("the call has a Twilio sid")
}

#[tokio::test]
async fn twilio_webhooks_need_a_valid_signature() {
    let stack = Stack::start().await;
    fast_twilio(&stack);
    let twilio = stack.sims.twilio();
    let (token, user_id) = stack
        .register_with_phone("signed@example.com", "+14155550160")
        .await;
    stack.set_tier(&user_id, "basic", 10).await;

    // A call that is over, and one that keeps ringing while forged requests arrive.
    let over_number = "+14155550161";
    twilio.set_scenario(over_number, unanswered(Outcome::Busy));
    let over = place(&stack, &token, over_number).await;
    let ringing_number = "+14155550162";
    twilio.set_scenario(
        ringing_number,
        Scenario {
            ring_ms: 20_000,
            ..Scenario::default()
        },
    );
    let ringing = place(&stack, &token, ringing_number).await;
    let ringing_sid = call_sid(&stack, &ringing).await;
    wait_until_final(&stack, &token, &over, OUTCOME_TIMEOUT).await;
    let over_sid = call_sid(&stack, &over).await;

    let base = stack.worker_url.clone();
    let port_less = base
        .rsplit_once(':')
        .expect("the URL has a port")
        .0
        .to_owned();
    for (route, params) in [
        ("status", status_params(&ringing_sid, "completed", Some(30))),
        ("amd", amd_params(&ringing_sid, "machine_end_beep")),
        ("voice", voice_params(&ringing_sid)),
    ] {
        let path = format!("/twilio/{route}/{ringing}");
        let url = format!("{base}{path}");
        // A parameter changed after signing.
        let mut tampered = params.clone();
        tampered[1].1.push('x');
        // Signed for another URL: another call, another host, another route.
        let wrong_urls = [
            format!("{base}/twilio/{route}/{over}"),
            format!("https://evil.example{path}"),
            format!(
                "{base}/twilio/{}/{ringing}",
                if route == "status" { "amd" } else { "status" }
            ),
        ];
        let mut forgeries = vec![
            (
                "tampered",
                post_twilio(&stack, &path, &tampered, Some(sign(&url, &params))).await,
            ),
            (
                "missing header",
                post_twilio(&stack, &path, &params, None).await,
            ),
            (
                "empty header",
                post_twilio(&stack, &path, &params, Some(String::new())).await,
            ),
            (
                "other token",
                post_twilio(
                    &stack,
                    &path,
                    &params,
                    Some(callmeback_providers::twilio::signature::compute(
                        "not-the-auth-token",
                        &url,
                        &params,
                    )),
                )
                .await,
            ),
        ];
        for wrong in &wrong_urls {
            forgeries.push((
                "wrong url",
                post_twilio(&stack, &path, &params, Some(sign(wrong, &params))).await,
            ));
        }
        for (what, (status, body)) in forgeries {
            assert_eq!(status, 403, "{route}, {what}: {body}");
            assert!(
                body.contains("invalid_signature"),
                "{route}, {what}: {body}"
            );
        }
    }
    // None of the forgeries changed the ringing call.
    let call = get_call(&stack, &token, &ringing).await;
    assert_eq!(call["status"], "calling", "{call}");
    assert!(call["answered_by"].is_null(), "{call}");
    let unfinished: bool = stack
        .db()
        .await
        .query_one(
            "SELECT finalized_at IS NULL FROM calls WHERE id = $1",
            &[&ringing],
        )
        .await
        .expect("row")
        .get(0);
    assert!(unfinished, "a forged callback ended the call");

    // Correctly signed requests are accepted: with the URL as called, and without its port (as
    // Twilio's own validator allows).
    let path = format!("/twilio/status/{ringing}");
    let ringing_again = status_params(&ringing_sid, "ringing", None);
    let (status, body) = post_signed(&stack, &path, &ringing_again).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = post_twilio(
        &stack,
        &path,
        &ringing_again,
        Some(sign(&format!("{port_less}{path}"), &ringing_again)),
    )
    .await;
    assert_eq!(status, 204, "signed without the port: {body}");
    let (status, body) = post_signed(
        &stack,
        &format!("/twilio/amd/{over}"),
        &amd_params(&over_sid, "human"),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    // The voice webhook of a call that is over answers with TwiML that ends Twilio's leg.
    let (status, twiml) = post_signed(
        &stack,
        &format!("/twilio/voice/{over}"),
        &voice_params(&over_sid),
    )
    .await;
    assert_eq!(status, 200, "{twiml}");
    assert!(
        twiml.contains("<Hangup") && !twiml.contains("<Stream"),
        "a finished call gets no media stream: {twiml}"
    );

    // The ringing call, hung up, ends as canceled: the signed "ringing" did not disturb it.
    let (status, body) = stack
        .json(
            Method::POST,
            &format!("/api/calls/{ringing}/hangup"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let call = wait_until_final(&stack, &token, &ringing, OUTCOME_TIMEOUT).await;
    assert_eq!(call["status"], "canceled", "{call}");
}

#[tokio::test]
async fn duplicate_late_and_reordered_callbacks_never_move_a_call_backwards() {
    let stack = Stack::start().await;
    fast_twilio(&stack);
    let (token, user_id) = stack
        .register_with_phone("late@example.com", "+14155550170")
        .await;
    stack.set_tier(&user_id, "basic", 10).await;
    let number = "+14155550171";
    stack.sims.twilio().set_scenario(
        number,
        Scenario {
            duplicate_callbacks: true,
            reverse_late_callbacks: true,
            ..short_conversation()
        },
    );
    let call_id = place(&stack, &token, number).await;

    // `ringing` arrives (twice) after `in-progress`: the call stays answered.
    let deadline = Instant::now() + OUTCOME_TIMEOUT;
    loop {
        let sim = sim_calls_to(&stack, number);
        let answered_late_ringing = sim.first().is_some_and(|call| {
            let callbacks: Vec<_> = call.webhooks_of("status_callback").collect();
            let first_in_progress = callbacks.iter().position(|w| {
                w.params
                    .iter()
                    .any(|(n, v)| n == "CallStatus" && v == "in-progress")
            });
            let last_ringing = callbacks.iter().rposition(|w| {
                w.params
                    .iter()
                    .any(|(n, v)| n == "CallStatus" && v == "ringing")
            });
            matches!((first_in_progress, last_ringing), (Some(a), Some(r)) if r > a)
                && callbacks[last_ringing.unwrap_or_default()].status.is_some()
        });
        if answered_late_ringing {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the simulator never delivered the late ringing: {:?}",
            sim.first().map(|c| c.callback_statuses())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = get_call(&stack, &token, &call_id).await;
    assert!(
        ["connected", "in_progress", "completed"].contains(&call["status"].as_str().unwrap_or("")),
        "a late ringing moved the call back: {call}"
    );

    let call = wait_until_final(&stack, &token, &call_id, OUTCOME_TIMEOUT).await;
    assert_eq!(
        call["status"],
        "completed",
        "{call}\n{}",
        stack.worker_log()
    );
    let sim = sim_calls_to(&stack, number).remove(0);
    stack
        .sims
        .twilio()
        .wait_for_end(&sim.sid, OUTCOME_TIMEOUT)
        .await
        .expect("Twilio's leg ends");
    let sim = sim_calls_to(&stack, number).remove(0);
    let statuses = sim.callback_statuses();
    assert_eq!(
        statuses,
        [
            "queued",
            "queued",
            "in-progress",
            "in-progress",
            "ringing",
            "ringing",
            "completed",
            "completed"
        ],
        "the simulator's delivery order"
    );
    for webhook in sim.webhooks_of("status_callback") {
        assert_eq!(
            webhook.status,
            Some(204),
            "every callback accepted: {webhook:?}"
        );
    }
    let recorded = recorded_state(&stack, &call_id).await;
    assert_eq!(recorded["logs"], 1, "{recorded}");
    assert_eq!(recorded["breakdowns"], 1, "{recorded}");
    assert_eq!(recorded["charges"], 1, "charged once: {recorded}");
    let credits = |db: tokio_postgres::Client, user: String| async move {
        db.query_one(
            "SELECT available_credits FROM user_credits WHERE user_id = $1",
            &[&user],
        )
        .await
        .expect("credits")
        .get::<_, i32>(0)
    };
    let credits_before = credits(stack.db().await, user_id.clone()).await;

    // Hand-posted, correctly signed callbacks after the outcome was recorded.
    let sid = sim.sid.clone();
    let path = format!("/twilio/status/{call_id}");
    for (status, duration) in [
        ("ringing", None),
        ("in-progress", None),
        ("completed", Some(999)),
        ("busy", None),
        ("no-answer", None),
        ("failed", None),
        ("canceled", None),
    ] {
        let (code, body) = post_signed(&stack, &path, &status_params(&sid, status, duration)).await;
        assert_eq!(code, 204, "late {status}: {body}");
    }
    let (code, body) = post_signed(
        &stack,
        &format!("/twilio/amd/{call_id}"),
        &amd_params(&sid, "machine_end_beep"),
    )
    .await;
    assert_eq!(code, 204, "late amd: {body}");
    assert_eq!(
        recorded_state(&stack, &call_id).await,
        recorded,
        "late callbacks changed the recorded call"
    );
    let after = get_call(&stack, &token, &call_id).await;
    assert_eq!(after["status"], "completed");
    assert_eq!(after["answered_by"], call["answered_by"]);
    assert_eq!(
        credits(stack.db().await, user_id).await,
        credits_before,
        "charged again"
    );
}
