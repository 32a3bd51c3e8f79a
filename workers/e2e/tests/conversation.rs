//! The live conversation end to end (issue 8, and the voicemail and memory parts of issue 10):
//! the Worker in workerd, the gateway, Postgres, and the provider simulators, checked through the
//! API, the rows, and what the simulated callee heard.

mod conv_support;

use std::time::Duration;

use callmeback_e2e::Stack;
use callmeback_simulators::llm::LlmMode;
use callmeback_simulators::twilio::records::EndReason as SimEnd;
use callmeback_simulators::twilio::{Outcome, Scenario};
use conv_support::*;
use reqwest::Method;
use serde_json::json;

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

#[tokio::test]
async fn a_whole_call_is_recorded_once_with_transcript_costs_credits_ledger_log_and_stats() {
    let stack = Stack::start().await;
    fast_speech(&stack);
    let user = user(&stack, "whole@example.com", "+14155550111", "basic", 10).await;
    let script = [
        "Hi Brad, good to hear from you.",
        "I went running twice this week.",
    ];
    stack.sims.twilio().set_scenario(
        &user.phone,
        conversation(script.iter().map(|line| says(line)).collect()),
    );

    let call_id = place_call(&stack, &user).await;
    let call = outcome(&stack, &user, &call_id).await;
    let record = sim_call(&stack, &user.phone).await;
    let record = sim_call_ended(&stack, &record.sid, Duration::from_secs(20)).await;

    // The API's view.
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["credits_used"], 1, "{call}");
    let duration = call["duration_seconds"].as_i64().expect("duration");
    assert!((1..60).contains(&duration), "{call}");
    assert_eq!(call["metrics"]["end_reason"], "caller_hung_up", "{call}");
    assert_eq!(call["metrics"]["turn_count"], 2, "two replies: {call}");
    assert_eq!(call["metrics"]["interrupt_count"], 0, "{call}");
    assert!(call["metrics"]["avg_response_time_ms"].is_i64(), "{call}");

    // Greeting first: the first transcript line is the persona's, and it is the first thing the
    // callee heard, before they said anything.
    let transcript = lines(&call);
    assert_eq!(transcript[0].0, "assistant", "{call}");
    let stream = record.stream.as_ref().expect("a media stream");
    assert_eq!(stream.replies[0].after_line, None, "{stream:#?}");
    assert_eq!(words(&heard(&record, 0)), words(&transcript[0].1));
    assert!(stream.replies[0].first_frame_at < stream.lines[0].started_at);
    // Then the callee's lines, each answered.
    let said: Vec<&str> = transcript
        .iter()
        .filter(|(role, _, _)| role == "user")
        .map(|(_, text, _)| text.as_str())
        .collect();
    assert_eq!(said, script, "{call}");
    assert_eq!(
        persona_lines(&call).len(),
        3,
        "greeting and two replies: {call}"
    );

    // The rows.
    let db = stack.db().await;
    let row = db
        .query_one(
            "SELECT status, duration_seconds, credits_used, actual_cost_cents, \
                    finalized_at IS NOT NULL, answered_at IS NOT NULL \
               FROM calls WHERE id = $1",
            &[&call_id],
        )
        .await
        .expect("call row");
    assert_eq!(row.get::<_, String>(0), "completed");
    assert_eq!(i64::from(row.get::<_, i32>(1)), duration);
    assert_eq!(row.get::<_, i32>(2), 1);
    let actual_cost: i32 = row.get(3);
    assert!(row.get::<_, bool>(4), "finalized_at is set");
    assert!(row.get::<_, bool>(5), "answered_at is set");

    // One breakdown; the cost events add up to it and were written as a few batched events
    // (not one per audio frame), numbered per call.
    assert_eq!(
        sql_count(
            &stack,
            "SELECT count(*) FROM call_cost_breakdowns WHERE call_id = $1",
            &[&call_id]
        )
        .await,
        1
    );
    let breakdown = db
        .query_one(
            "SELECT total_cost_cents::text, twilio_duration_seconds, cerebras_input_tokens, \
                    elevenlabs_characters, deepgram_audio_seconds::float8 \
               FROM call_cost_breakdowns WHERE call_id = $1",
            &[&call_id],
        )
        .await
        .expect("breakdown");
    let total: f64 = breakdown.get::<_, String>(0).parse().expect("decimal");
    assert!(total > 0.0);
    assert_eq!(i64::from(breakdown.get::<_, i32>(1)), duration);
    assert!(breakdown.get::<_, i32>(2) > 0, "LLM input tokens metered");
    assert!(breakdown.get::<_, i32>(3) > 0, "TTS characters metered");
    assert!(breakdown.get::<_, f64>(4) > 0.5, "caller audio metered");
    assert_eq!(i64::from(actual_cost), total.round() as i64);
    let events = db
        .query(
            "SELECT id, provider, kind, cost_cents::float8 FROM call_cost_events \
              WHERE call_id = $1 ORDER BY occurred_at, id",
            &[&call_id],
        )
        .await
        .expect("events");
    let sum: f64 = events.iter().map(|e| e.get::<_, f64>(3)).sum();
    assert!(
        (sum - total).abs() < 0.001,
        "events sum to {sum}, breakdown says {total}"
    );
    let kinds: Vec<String> = events.iter().map(|e| e.get::<_, String>(2)).collect();
    for kind in [
        "call_seconds",
        "stt_audio",
        "llm_input_tokens",
        "llm_output_tokens",
        "tts_characters",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{kind} missing from {kinds:?}"
        );
    }
    assert_eq!(kinds.iter().filter(|k| *k == "call_seconds").count(), 1);
    assert!(
        kinds.iter().filter(|k| *k == "stt_audio").count() <= 3,
        "caller audio is metered in batches, not per frame: {kinds:?}"
    );
    let mut seqs: Vec<u32> = events
        .iter()
        .map(|e| {
            let id: String = e.get(0);
            id.rsplit('_')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("cev_<call>_<seq>")
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=seqs.len() as u32).collect::<Vec<_>>());

    // Credits: one started minute, deducted once, with its ledger row.
    let ledger = db
        .query(
            "SELECT type, amount, balance_before, balance_after FROM credit_transactions \
              WHERE call_id = $1",
            &[&call_id],
        )
        .await
        .expect("ledger");
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].get::<_, String>(0), "call_deduction");
    assert_eq!(
        (
            ledger[0].get::<_, i32>(1),
            ledger[0].get::<_, i32>(2),
            ledger[0].get::<_, i32>(3)
        ),
        (-1, 10, 9)
    );
    let credits: i32 = db
        .query_one(
            "SELECT available_credits FROM user_credits WHERE user_id = $1",
            &[&user.id],
        )
        .await
        .expect("credits")
        .get(0);
    assert_eq!(credits, 9);

    // The call log.
    let log = db
        .query_one(
            "SELECT status, turn_count, interrupt_count, avg_response_time_ms, end_reason, \
                    jsonb_array_length(response_times_ms) \
               FROM call_logs WHERE call_id = $1",
            &[&call_id],
        )
        .await
        .expect("one call log");
    assert_eq!(log.get::<_, String>(0), "completed");
    assert_eq!((log.get::<_, i32>(1), log.get::<_, i32>(2)), (2, 0));
    assert!(log.get::<_, Option<i32>>(3).is_some());
    assert_eq!(log.get::<_, String>(4), "caller_hung_up");
    assert!(log.get::<_, i32>(5) >= 2, "every reply's response time");

    // The relationship's statistics.
    let stats = db
        .query_one(
            "SELECT total_calls, total_duration_seconds, last_call_at IS NOT NULL \
               FROM user_persona_relationships WHERE user_id = $1 AND persona_id = 'brad'",
            &[&user.id],
        )
        .await
        .expect("relationship");
    assert_eq!(stats.get::<_, i32>(0), 1);
    assert_eq!(stats.get::<_, i64>(1), duration);
    assert!(stats.get::<_, bool>(2));

    // The stored transcript is what the API showed.
    let stored: serde_json::Value = db
        .query_one(
            "SELECT messages FROM call_transcripts WHERE call_id = $1",
            &[&call_id],
        )
        .await
        .expect("transcript row")
        .get(0);
    assert_eq!(stored, call["transcript"]);
}

#[tokio::test]
async fn barge_in_clears_the_audio_and_cuts_the_line_at_what_was_heard_but_mhm_does_not() {
    let stack = Stack::start().await;
    fast_speech(&stack);
    let user = user(&stack, "barge@example.com", "+14155550112", "basic", 10).await;
    let story = "Last weekend I walked along the river for hours. The weather was perfect and the \
                 trees were turning gold. I stopped at a little cafe for coffee and a croissant. \
                 Then I met an old friend from school and we talked about everything. It was one \
                 of the best days I have had in a long while.";
    let mut llm = stack.sims.llm().config();
    llm.mode = LlmMode::Scripted;
    stack.sims.llm().set_config(llm);
    stack.sims.llm().push_replies([story.to_owned()]);
    stack.sims.twilio().set_scenario(
        &user.phone,
        conversation(vec![
            says("Tell me about your weekend."),
            barges_in("Mhm.", 700),
            barges_in("Wait, stop, I have a question.", 900),
        ]),
    );

    let call_id = place_call(&stack, &user).await;
    let call = outcome(&stack, &user, &call_id).await;
    let record = sim_call(&stack, &user.phone).await;
    let record = sim_call_ended(&stack, &record.sid, Duration::from_secs(20)).await;
    let stream = record.stream.as_ref().expect("a media stream");

    // One clear: the real interruption, not the "mhm".
    assert!(
        stream.lines[1].barge_in && stream.lines[2].barge_in,
        "{stream:#?}"
    );
    assert_eq!(stream.clears.len(), 1, "{stream:#?}");
    assert_eq!(call["metrics"]["interrupt_count"], 1, "{call}");
    let interrupts: i32 = stack
        .db()
        .await
        .query_one(
            "SELECT interrupt_count FROM call_logs WHERE call_id = $1",
            &[&call_id],
        )
        .await
        .expect("log")
        .get(0);
    assert_eq!(interrupts, 1);

    // The story's line is cut where the callee stopped hearing it, and flagged.
    let transcript = lines(&call);
    let cut: Vec<&(String, String, bool)> = transcript
        .iter()
        .filter(|(role, _, interrupted)| role == "assistant" && *interrupted)
        .collect();
    assert_eq!(cut.len(), 1, "{call}");
    let cut_words = words(&cut[0].1);
    let story_words = words(story);
    assert!(
        !cut_words.is_empty() && cut_words.len() < story_words.len(),
        "{cut:?}"
    );
    assert_eq!(
        cut_words[..],
        story_words[..cut_words.len()],
        "a prefix of the story"
    );
    // What the callee heard of the story: the replies after line 0 and line 1 (the "mhm" ends
    // one reply record in the simulator, the story goes on in the next).
    let heard_story: Vec<String> = stream
        .replies
        .iter()
        .enumerate()
        .filter(|(_, reply)| matches!(reply.after_line, Some(0) | Some(1)))
        .map(|(i, _)| heard(&record, i))
        .collect();
    let heard_words = words(&heard_story.join(" "));
    assert!(
        heard_words.len().abs_diff(cut_words.len()) <= 1,
        "transcript {cut_words:?} vs heard {heard_words:?}"
    );
    // "Mhm" is not a turn of its own; the real interruption is.
    assert!(
        !transcript
            .iter()
            .any(|(role, text, _)| role == "user" && text.to_lowercase().starts_with("mhm")),
        "{call}"
    );
    assert!(
        transcript
            .iter()
            .any(|(role, text, _)| role == "user" && text.starts_with("Wait, stop"))
    );
    // The next reply was asked for with the story as heard, not as written.
    let requests = stack.sims.llm().requests();
    let after_cut = requests
        .iter()
        .find(|r| {
            r.messages().iter().any(|m| {
                m["content"]
                    .as_str()
                    .is_some_and(|c| c.contains("Wait, stop"))
            })
        })
        .expect("a reply to the interruption was requested");
    let remembered: Vec<&str> = after_cut
        .messages()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(remembered.contains(&cut[0].1.as_str()), "{remembered:?}");
}

#[tokio::test]
async fn a_call_ending_while_the_gateway_is_down_is_recorded_once_when_it_is_back() {
    let mut stack = Stack::start().await;
    fast_speech(&stack);
    let user = user(&stack, "outage@example.com", "+14155550113", "basic", 10).await;
    stack.sims.twilio().set_scenario(
        &user.phone,
        conversation(vec![says("Hello there."), says("Talk to you later, bye.")]),
    );
    let call_id = place_call(&stack, &user).await;
    let record = sim_call(&stack, &user.phone).await;
    // The conversation is under way: take the gateway away before the callee hangs up.
    eventually(
        &stack,
        "the callee speaks",
        Duration::from_secs(30),
        async || {
            let record = stack.sims.twilio().call(&record.sid)?;
            (!record.stream?.lines.is_empty()).then_some(())
        },
    )
    .await;
    stack.stop_gateway();
    sim_call_ended(&stack, &record.sid, Duration::from_secs(30)).await;
    eventually(
        &stack,
        "a failed finalisation attempt",
        Duration::from_secs(30),
        async || {
            stack
                .worker_log()
                .contains("outcome not recorded (attempt 1)")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        sql_count(
            &stack,
            "SELECT count(*) FROM calls WHERE id = $1 AND finalized_at IS NULL",
            &[&call_id]
        )
        .await,
        1,
        "nothing is recorded while the gateway is down"
    );

    stack.start_gateway();
    let call = outcome(&stack, &user, &call_id).await;
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["credits_used"], 1, "{call}");
    // Exactly once: one charge, one ledger row, one log, one breakdown, stats counted once —
    // even after the retries that failed and any that follow.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (table, expected) in [
        ("credit_transactions", 1),
        ("call_logs", 1),
        ("call_cost_breakdowns", 1),
        ("call_transcripts", 1),
    ] {
        assert_eq!(
            sql_count(
                &stack,
                &format!("SELECT count(*) FROM {table} WHERE call_id = $1"),
                &[&call_id]
            )
            .await,
            expected,
            "{table}"
        );
    }
    let db = stack.db().await;
    let credits: i32 = db
        .query_one(
            "SELECT available_credits FROM user_credits WHERE user_id = $1",
            &[&user.id],
        )
        .await
        .expect("credits")
        .get(0);
    assert_eq!(credits, 9);
    let total_calls: i32 = db
        .query_one(
            "SELECT total_calls FROM user_persona_relationships WHERE user_id = $1 AND persona_id = 'brad'",
            &[&user.id],
        )
        .await
        .expect("relationship")
        .get(0);
    assert_eq!(total_calls, 1);
    assert!(
        stack.worker_log().contains("outcome not recorded (attempt"),
        "the first attempts failed"
    );
}

#[tokio::test]
async fn voicemail_gets_a_short_message_or_a_hang_up_as_the_user_chose() {
    let stack = Stack::start_with_vars(&[("CALLS_PER_PHONE_PER_HOUR", "10")]).await;
    fast_speech(&stack);
    let leaves = user(&stack, "leaves@example.com", "+14155550114", "basic", 10).await;
    let hangs_up = user(&stack, "hangsup@example.com", "+14155550115", "basic", 10).await;
    let (status, body) = stack
        .json(
            Method::PUT,
            "/api/me/preferences",
            Some(&hangs_up.token),
            Some(json!({"voicemail_action": "hang_up"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["voicemail_action"], "hang_up");
    let machine = Scenario {
        outcome: Outcome::Machine,
        ring_ms: 200,
        machine_greeting_ms: 800,
        ..Scenario::default()
    };
    stack
        .sims
        .twilio()
        .set_scenario(&leaves.phone, machine.clone());
    stack.sims.twilio().set_scenario(&hangs_up.phone, machine);

    let left_id = place_call(&stack, &leaves).await;
    let hung_id = place_call(&stack, &hangs_up).await;
    let left = outcome(&stack, &leaves, &left_id).await;
    let hung = outcome(&stack, &hangs_up, &hung_id).await;
    let left_record = sim_call(&stack, &leaves.phone).await;
    let left_record = sim_call_ended(&stack, &left_record.sid, Duration::from_secs(20)).await;
    let hung_record = sim_call(&stack, &hangs_up.phone).await;
    let hung_record = sim_call_ended(&stack, &hung_record.sid, Duration::from_secs(20)).await;

    // Leave a message: after the beep, the short message built for the call, then goodbye.
    assert_eq!(left["status"], "voicemail", "{left}");
    assert_eq!(left["metrics"]["end_reason"], "voicemail", "{left}");
    assert!(
        left["costs"]["total_cents"].is_string(),
        "recorded with its cost: {left}"
    );
    assert!(
        left["answered_by"]
            .as_str()
            .is_some_and(|a| a.starts_with("machine")),
        "{left}"
    );
    let message = persona_lines(&left)
        .into_iter()
        .find(|line| line.contains("Sorry I missed you"))
        .unwrap_or_else(|| panic!("no voicemail message: {left}"));
    let amd_at = left_record.amd.as_ref().expect("AMD ran").decided_at;
    assert!(
        heard_line(&left_record, &message),
        "the machine recorded the whole message: {}",
        heard_everything(&left_record)
    );
    let message_at = line_heard_at(&left_record, &message).expect("played");
    assert!(message_at >= amd_at, "the message comes after the beep");
    let log_status: String = stack
        .db()
        .await
        .query_one(
            "SELECT status FROM call_logs WHERE call_id = $1",
            &[&left_id],
        )
        .await
        .expect("log")
        .get(0);
    assert_eq!(log_status, "voicemail");

    // Hang up: the call ends at the beep, through Twilio, and nothing more is said.
    assert_eq!(hung["status"], "voicemail", "{hung}");
    assert_eq!(hung["metrics"]["end_reason"], "voicemail", "{hung}");
    assert_eq!(
        hung_record.end_reason,
        Some(SimEnd::AppHangup),
        "{hung_record:#?}"
    );
    assert!(
        !persona_lines(&hung)
            .iter()
            .any(|line| line.contains("missed you")),
        "{hung}"
    );
    let amd_at = hung_record.amd.as_ref().expect("AMD ran").decided_at;
    assert!(
        segments(&hung_record)
            .iter()
            .all(|segment| segment.play_started_at.is_none_or(|at| at < amd_at)),
        "nothing starts playing after the beep: {:#?}",
        segments(&hung_record)
    );
    let ended_at = hung_record.ended_at.expect("ended");
    assert!(
        ended_at - amd_at < 5_000_000,
        "hung up at once, not after the machine's timeout"
    );
}

#[tokio::test]
async fn the_persona_remembers_the_last_call_until_the_user_clears_its_memory() {
    let stack = Stack::start_with_vars(&[("CALLS_PER_PHONE_PER_HOUR", "10")]).await;
    fast_speech(&stack);
    let user = user(&stack, "memory@example.com", "+14155550116", "basic", 30).await;
    // Call 1: one reply, then the summary — which (as a careless model might) repeats the card
    // and phone number the caller read out. Neither may be stored.
    let mut llm = stack.sims.llm().config();
    llm.mode = LlmMode::Scripted;
    stack.sims.llm().set_config(llm);
    stack.sims.llm().push_replies([
        "What a lovely name for a puppy!".to_owned(),
        "Ada adopted a puppy named Biscuit. She read out her card 4242 4242 4242 4242 and her \
         number +1 415 555 0199 for the vet."
            .to_owned(),
    ]);
    stack.sims.twilio().set_scenario(
        &user.phone,
        conversation(vec![says(
            "My puppy is called Biscuit. My card is 4242 4242 4242 4242, my phone 415 555 0199.",
        )]),
    );
    let first = place_call(&stack, &user).await;
    outcome(&stack, &user, &first).await;
    assert_eq!(
        stack.sims.llm().queued_replies(),
        0,
        "one reply and the summary"
    );
    let summary_request = stack
        .sims
        .llm()
        .requests()
        .into_iter()
        .find(|r| r.body["stream"] != true)
        .expect("a summary was asked for");
    assert!(
        summary_request.body["max_tokens"]
            .as_u64()
            .is_some_and(|t| t <= 120),
        "bounded in tokens: {}",
        summary_request.body
    );
    let (status, memory) = stack
        .json(
            Method::GET,
            "/api/personas/brad/memory",
            Some(&user.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{memory}");
    let summary = memory["summary"]
        .as_str()
        .unwrap_or_else(|| panic!("{memory}"))
        .to_owned();
    assert!(summary.contains("Biscuit"), "{summary}");
    assert!(
        !summary.chars().any(|c| c.is_ascii_digit()),
        "no card or phone digits in the memory: {summary}"
    );
    let stored = sql_text(
        &stack,
        "SELECT memory_summary FROM user_persona_relationships WHERE user_id = $1 AND persona_id = 'brad'",
        &[&user.id],
    )
    .await
    .expect("stored memory");
    assert!(
        !stored.contains("4242") && !stored.contains("0199"),
        "{stored}"
    );

    // Call 2: the persona is given the memory.
    let before = stack.sims.llm().requests().len();
    stack.sims.twilio().set_scenario(
        &user.phone,
        conversation(vec![says("I am back, how are you?")]),
    );
    let second = place_call(&stack, &user).await;
    outcome(&stack, &user, &second).await;
    let conversation_requests = |from: usize| {
        stack.sims.llm().requests()[from..]
            .iter()
            .filter(|r| r.body["stream"] == true)
            .map(|r| {
                r.messages()[0]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect::<Vec<String>>()
    };
    let systems = conversation_requests(before);
    assert!(!systems.is_empty());
    assert!(
        systems.iter().all(|system| system.contains(&summary)),
        "call 2's prompt carries call 1's summary: {systems:?}"
    );

    // Cleared: gone from the API and from call 3's prompt.
    let (status, body) = stack
        .json(
            Method::DELETE,
            "/api/personas/brad/memory",
            Some(&user.token),
            None,
        )
        .await;
    assert!(status == 200 || status == 204, "{status} {body}");
    let (_, memory) = stack
        .json(
            Method::GET,
            "/api/personas/brad/memory",
            Some(&user.token),
            None,
        )
        .await;
    assert!(memory["summary"].is_null(), "{memory}");
    let before = stack.sims.llm().requests().len();
    stack
        .sims
        .twilio()
        .set_scenario(&user.phone, conversation(vec![says("Hello again.")]));
    let third = place_call(&stack, &user).await;
    outcome(&stack, &user, &third).await;
    let systems = conversation_requests(before);
    assert!(!systems.is_empty());
    assert!(
        systems
            .iter()
            .all(|system| !system.contains("Biscuit")
                && !system.contains("remember from earlier calls")),
        "call 3 starts without memory: {systems:?}"
    );
}
