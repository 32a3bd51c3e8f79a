//! Provider failures during a call (issue 10): survived where possible, never silent, counted in
//! the call log, and two in a row of one provider end the call politely with the reason recorded.
//! Failures are injected through the simulators' own switches.

mod conv_support;

use std::time::Duration;

use callmeback_e2e::Stack;
use callmeback_simulators::llm::{LlmFailure, LlmMode};
use callmeback_simulators::twilio::Hangup;
use callmeback_simulators::twilio::records::EndReason as SimEnd;
use conv_support::*;
use serde_json::Value;

fn failure_count(call: &Value, provider: &str, kind: &str) -> u64 {
    failures(call)
        .iter()
        .filter(|(p, k, _)| p == provider && k == kind)
        .map(|(_, _, count)| count)
        .sum()
}

#[tokio::test]
async fn speech_recognition_dropped_mid_utterance_loses_no_words() {
    let stack = Stack::start().await;
    fast_speech(&stack);
    // The first STT connection drops after 400 ms of the callee's speech, mid-sentence.
    let mut stt = stack.sims.stt().config();
    stt.drop_after_speech_ms = Some(400);
    stack.sims.stt().set_config(stt);
    let user = user(&stack, "stt@example.com", "+14155550141", "basic", 10).await;
    let line = "I want to tell you all about my new bicycle today.";
    stack.sims.twilio().set_scenario(
        &user.phone,
        conversation(vec![says(line), says("Bye for now.")]),
    );

    let call_id = place_call(&stack, &user).await;
    let call = outcome(&stack, &user, &call_id).await;

    let connections = stack.sims.stt().records();
    assert_eq!(
        connections[0].closed_by.as_deref(),
        Some("dropped"),
        "{connections:#?}"
    );
    assert!(connections.len() >= 2, "reconnected: {connections:#?}");
    let transcript = lines(&call);
    assert!(
        transcript
            .iter()
            .any(|(role, text, _)| role == "user" && text == line),
        "every word of the interrupted sentence is in the transcript: {call}"
    );
    assert!(
        stack
            .sims
            .llm()
            .requests()
            .iter()
            .any(|r| r.messages().iter().any(|m| m["content"] == line)),
        "and the persona answered all of it"
    );
    assert_eq!(failure_count(&call, "stt", "disconnected"), 1, "{call}");
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["metrics"]["end_reason"], "caller_hung_up", "{call}");
}

#[tokio::test]
async fn llm_failures_get_a_spoken_fallback_and_two_in_a_row_end_the_call_politely() {
    let stack = Stack::start_with_vars(&[("LLM_FIRST_TOKEN_TIMEOUT_MS", "800")]).await;
    fast_speech(&stack);
    let user = user(&stack, "llm@example.com", "+14155550142", "basic", 10).await;
    // Reply 1 never starts (timeout), reply 2 is fine, reply 3 times out, reply 4 is an error.
    let mut llm = stack.sims.llm().config();
    llm.failures = [
        LlmFailure::Hang,
        LlmFailure::SlowFirstToken { ms: 0 },
        LlmFailure::SlowFirstToken { ms: 5000 },
        LlmFailure::Http500,
    ]
    .into();
    stack.sims.llm().set_config(llm);
    stack.sims.twilio().set_scenario(
        &user.phone,
        callmeback_simulators::Scenario {
            hangup: Hangup::App,
            ..conversation(vec![
                says("What should I cook tonight?"),
                says("I said, what should I cook tonight?"),
                says("Pasta sounds good. Any sauce?"),
                says("Hello, are you still there?"),
                // Only spoken if the call were still going well after the last reply.
                callmeback_simulators::twilio::Line {
                    pause_ms: Some(3000),
                    ..says("This line should never be needed.")
                },
            ])
        },
    );

    let call_id = place_call(&stack, &user).await;
    let call = outcome(&stack, &user, &call_id).await;
    let record = sim_call(&stack, &user.phone).await;
    let record = sim_call_ended(&stack, &record.sid, Duration::from_secs(20)).await;

    // Each failure was answered out loud, and the conversation went on in between.
    let said = persona_lines(&call);
    assert_eq!(
        said.iter().filter(|line| *line == FALLBACK).count(),
        2,
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|line| line.starts_with("I heard you say: I said, what should I cook")),
        "a normal reply between the failures: {said:?}"
    );
    assert!(
        heard_line(&record, FALLBACK),
        "{}",
        heard_everything(&record)
    );
    // The second failure in a row ended the call, politely and through Twilio.
    assert_eq!(
        said.last().map(String::as_str),
        Some(TROUBLE_GOODBYE),
        "{said:?}"
    );
    assert!(
        heard_line(&record, TROUBLE_GOODBYE),
        "{}",
        heard_everything(&record)
    );
    assert_eq!(record.end_reason, Some(SimEnd::AppHangup), "{record:#?}");
    assert_eq!(
        call["metrics"]["end_reason"], "provider_failed:llm",
        "{call}"
    );
    assert_eq!(
        call["error_message"], "the language model failed twice in a row",
        "{call}"
    );
    assert_eq!(
        failure_count(&call, "llm", "first_token_timeout"),
        2,
        "{call}"
    );
    assert_eq!(failure_count(&call, "llm", "request_failed"), 1, "{call}");
    let user_lines = lines(&call)
        .into_iter()
        .filter(|(role, _, _)| role == "user")
        .count();
    assert_eq!(user_lines, 4, "the fifth line was never needed: {call}");
}

#[tokio::test]
async fn a_tts_failure_is_retried_and_heard_and_two_in_a_row_end_the_call() {
    let stack = Stack::start().await;
    fast_speech(&stack);
    let user = user(&stack, "tts@example.com", "+14155550143", "basic", 10).await;
    let mut llm = stack.sims.llm().config();
    llm.mode = LlmMode::Scripted;
    stack.sims.llm().set_config(llm);
    let first = "Let me think about that one.";
    let second = "Here is another thought.";
    stack
        .sims
        .llm()
        .push_replies([first.to_owned(), second.to_owned()]);
    stack.sims.twilio().set_scenario(
        &user.phone,
        callmeback_simulators::Scenario {
            hangup: Hangup::App,
            ..conversation(vec![
                says("Give me some advice."),
                says("Anything else?"),
                // Only spoken if the call were still going well after the last reply.
                callmeback_simulators::twilio::Line {
                    pause_ms: Some(3000),
                    ..says("This line should never be needed.")
                },
            ])
        },
    );

    let call_id = place_call(&stack, &user).await;
    let ringing = sim_call(&stack, &user.phone).await;
    // Once the greeting has played: the next synthesis produces no audio at all.
    eventually(
        &stack,
        "the greeting is heard",
        Duration::from_secs(30),
        async || {
            let record = stack.sims.twilio().call(&ringing.sid)?;
            (!record.stream?.lines.is_empty()).then_some(())
        },
    )
    .await;
    let mut tts = stack.sims.tts().config();
    tts.silent_generations = 1;
    stack.sims.tts().set_config(tts.clone());
    // Once the retried reply has been heard: the next two syntheses are silent.
    eventually(
        &stack,
        "the retried reply is heard",
        Duration::from_secs(30),
        async || {
            let record = stack.sims.twilio().call(&ringing.sid)?;
            heard_line(&record, first).then_some(())
        },
    )
    .await;
    tts.silent_generations = 2;
    stack.sims.tts().set_config(tts);

    let call = outcome(&stack, &user, &call_id).await;
    let record = sim_call_ended(&stack, &ringing.sid, Duration::from_secs(20)).await;

    // The first failure: synthesised again, heard, and in the transcript once.
    let synthesised: Vec<(String, bool)> = stack
        .sims
        .tts()
        .records()
        .iter()
        .flat_map(|c| c.contexts.iter())
        .flat_map(|c| c.segments.iter())
        .map(|s| (s.text.clone(), s.silent))
        .collect();
    assert!(
        synthesised.contains(&(first.to_owned(), true))
            && synthesised.contains(&(first.to_owned(), false)),
        "{synthesised:?}"
    );
    let said = persona_lines(&call);
    assert_eq!(
        said.iter().filter(|line| *line == first).count(),
        1,
        "{said:?}"
    );
    // The second, twice in a row: nothing can be said, so the call is hung up with the reason.
    assert!(
        !said.iter().any(|line| line == second),
        "never heard: {said:?}"
    );
    assert!(!heard_line(&record, second));
    assert_eq!(record.end_reason, Some(SimEnd::AppHangup), "{record:#?}");
    assert_eq!(
        call["metrics"]["end_reason"], "provider_failed:tts",
        "{call}"
    );
    assert_eq!(
        call["error_message"], "speech synthesis failed twice in a row",
        "{call}"
    );
    assert_eq!(failure_count(&call, "tts", "no_audio"), 3, "{call}");
}
