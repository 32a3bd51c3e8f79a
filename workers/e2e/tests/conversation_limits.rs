//! Limits enforced during the call (issue 10): a warning (live event and a wrap-up line) at 75 %
//! of the tightest limit, then at 100 % a goodbye and the call ended through Twilio — or, for a
//! budget without auto cut-off, a notice and the call goes on. Budgets are reached in seconds by
//! pricing telephony time high; time limits with one credit and the operator's `MAX_CALL_SECONDS`.

mod conv_support;

use std::time::Duration;

use callmeback_e2e::Stack;
use callmeback_simulators::twilio::records::{CallRecord, EndReason as SimEnd};
use callmeback_simulators::twilio::{Hangup, Scenario};
use conv_support::*;
use serde_json::Value;

/// Two cents a second of telephony: a 24-cent budget lasts 12 s.
const EXPENSIVE_TELEPHONY: (&str, &str) = ("RATE_TWILIO_CENTS_PER_MINUTE", "120");
/// Silence must end by a limit, not by the idle prompt.
const NO_IDLE_PROMPT: (&str, &str) = ("IDLE_PROMPT_MS", "300000");

/// A talkative callee who never hangs up (only the app can end the call).
fn chatty() -> Scenario {
    let lines = [
        "Tell me something nice.",
        "And then what happened?",
        "That is interesting.",
        "Go on please.",
        "What else?",
        "I like that a lot.",
        "Keep going.",
        "Really, tell me more.",
        "And after that?",
        "Fascinating, continue.",
    ];
    Scenario {
        hangup: Hangup::App,
        ..conversation(lines.iter().map(|line| says(line)).collect())
    }
}

/// A callee who picks up and never says a word.
fn silent() -> Scenario {
    Scenario {
        ring_ms: 200,
        script: Vec::new(),
        hangup: Hangup::App,
        ..Scenario::default()
    }
}

/// The checks every cut-off shares: one warning about `limit` (live event and the wrap-up line,
/// heard), then the goodbye (heard, the persona's last words) and the hang-up through Twilio.
fn assert_warned_then_cut_off(
    call: &Value,
    record: &CallRecord,
    live: &Live,
    call_id: &str,
    limit: &str,
) {
    let warnings = live.of("budget_warning", call_id);
    assert_eq!(warnings.len(), 1, "{:?}", live.all());
    assert_eq!(warnings[0]["limit"], limit, "{warnings:?}");
    let percent = warnings[0]["percent_used"].as_u64().expect("percent");
    assert!((75..100).contains(&percent), "{warnings:?}");
    let reached = live.of("limit_reached", call_id);
    assert_eq!(reached.len(), 1, "{:?}", live.all());
    assert_eq!(reached[0]["limit"], limit);
    assert_eq!(reached[0]["ending"], true);

    let said = persona_lines(call);
    let wrap_up = said.iter().position(|line| line == WRAP_UP);
    let goodbye = said.iter().position(|line| line == LIMIT_GOODBYE);
    assert!(
        matches!((wrap_up, goodbye), (Some(w), Some(g)) if w < g),
        "the wrap-up line, then the goodbye: {said:?}\ntranscript: {:#?}\nsimulator: {:#?}",
        lines(call),
        record.stream
    );
    assert_eq!(
        said.last().map(String::as_str),
        Some(LIMIT_GOODBYE),
        "{said:?}"
    );
    assert!(heard_line(record, WRAP_UP), "{}", heard_everything(record));
    assert!(
        heard_line(record, LIMIT_GOODBYE),
        "{}",
        heard_everything(record)
    );

    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(
        call["metrics"]["end_reason"],
        format!("limit_reached:{limit}"),
        "{call}"
    );
    assert_eq!(
        record.end_reason,
        Some(SimEnd::AppHangup),
        "ended through Twilio's REST API: {record:#?}"
    );
}

/// When (seconds after the stream started) the callee began hearing `line`.
fn heard_at(record: &CallRecord, line: &str) -> f64 {
    let start = record
        .stream
        .as_ref()
        .and_then(|stream| stream.start_sent_at)
        .expect("a stream that started");
    let at = line_heard_at(record, line).unwrap_or_else(|| panic!("{line:?} was not heard"));
    at.saturating_sub(start) as f64 / 1e6
}

async fn budget_call(stack: &Stack, user: &User) -> (String, Value, CallRecord, Live) {
    let live = Live::open(stack, user).await;
    stack.sims.twilio().set_scenario(&user.phone, chatty());
    let call_id = place_call(stack, user).await;
    let call = outcome(stack, user, &call_id).await;
    let record = sim_call(stack, &user.phone).await;
    let record = sim_call_ended(stack, &record.sid, Duration::from_secs(20)).await;
    (call_id, call, record, live)
}

#[tokio::test]
async fn the_per_call_budget_warns_then_ends_the_call_with_auto_cutoff() {
    let stack = Stack::start_with_vars(&[EXPENSIVE_TELEPHONY]).await;
    fast_speech(&stack);
    let user = user(&stack, "percall@example.com", "+14155550131", "basic", 10).await;
    set_budget(&stack, &user, 24, 10_000, true).await;
    let (call_id, call, record, live) = budget_call(&stack, &user).await;
    assert_warned_then_cut_off(&call, &record, &live, &call_id, "per_call_budget");
    let cost = call["actual_cost_cents"].as_i64().expect("cost");
    assert!(
        (24..=34).contains(&cost),
        "cut off at the budget, not long after: {call}"
    );
}

#[tokio::test]
async fn the_monthly_budget_left_warns_then_ends_the_call_with_auto_cutoff() {
    let stack = Stack::start_with_vars(&[EXPENSIVE_TELEPHONY]).await;
    fast_speech(&stack);
    let user = user(&stack, "monthly@example.com", "+14155550132", "basic", 10).await;
    set_budget(&stack, &user, 100, 100, true).await;
    // 76 cents already spent this month: 24 left, tighter than the per-call 100.
    let db = stack.db().await;
    let prior = callmeback_domain::ids::new_id("call", [9; 16]);
    db.execute(
        "INSERT INTO calls (id, user_id, persona_id, phone_number, twilio_call_sid, status, finalized_at) \
         VALUES ($1, $2, 'brad', $3, 'CAprior', 'completed', now())",
        &[&prior, &user.id, &user.phone],
    )
    .await
    .expect("a prior call");
    db.execute(
        "INSERT INTO call_cost_breakdowns (id, call_id, twilio_cost_cents) VALUES ('cost_prior', $1, 76)",
        &[&prior],
    )
    .await
    .expect("its costs");
    let (call_id, call, record, live) = budget_call(&stack, &user).await;
    assert_warned_then_cut_off(&call, &record, &live, &call_id, "monthly_budget");
    let cost = call["actual_cost_cents"].as_i64().expect("cost");
    assert!((24..=34).contains(&cost), "{call}");
}

#[tokio::test]
async fn without_auto_cutoff_a_spent_budget_is_a_notice_and_the_call_goes_on() {
    let stack = Stack::start_with_vars(&[EXPENSIVE_TELEPHONY]).await;
    fast_speech(&stack);
    let user = user(&stack, "notice@example.com", "+14155550133", "basic", 10).await;
    set_budget(&stack, &user, 12, 10_000, false).await;
    let live = Live::open(&stack, &user).await;
    // The callee talks past the budget, then hangs up on their own.
    let script = [
        "Tell me something nice.",
        "And then what happened?",
        "That is interesting.",
        "Go on please.",
        "What else?",
        "I like that a lot.",
        "Alright, bye for now.",
    ];
    stack.sims.twilio().set_scenario(
        &user.phone,
        conversation(script.iter().map(|line| says(line)).collect()),
    );
    let call_id = place_call(&stack, &user).await;
    let call = outcome(&stack, &user, &call_id).await;
    let record = sim_call(&stack, &user.phone).await;
    let record = sim_call_ended(&stack, &record.sid, Duration::from_secs(20)).await;

    let warnings = live.of("budget_warning", &call_id);
    assert_eq!(warnings.len(), 1, "{:?}", live.all());
    assert_eq!(warnings[0]["limit"], "per_call_budget");
    let reached = live.of("limit_reached", &call_id);
    assert_eq!(reached.len(), 1, "told once: {:?}", live.all());
    assert_eq!(reached[0]["limit"], "per_call_budget");
    assert_eq!(reached[0]["ending"], false);
    let said = persona_lines(&call);
    assert!(said.iter().any(|line| line == WRAP_UP), "{said:?}");
    assert!(!said.iter().any(|line| line == LIMIT_GOODBYE), "{said:?}");
    // Every line of the callee was heard and answered: the call went on to its natural end.
    let user_lines = lines(&call)
        .into_iter()
        .filter(|(role, _, _)| role == "user")
        .count();
    assert_eq!(user_lines, 7, "{call}");
    assert_eq!(call["metrics"]["end_reason"], "caller_hung_up", "{call}");
    assert_eq!(record.end_reason, Some(SimEnd::CallerHangup));
    let cost = call["actual_cost_cents"].as_i64().expect("cost");
    assert!(cost > 12, "the call went past the budget: {call}");
}

#[tokio::test]
async fn one_credit_buys_one_minute_even_of_silence_and_no_more_is_charged() {
    let stack = Stack::start_with_vars(&[NO_IDLE_PROMPT]).await;
    fast_speech(&stack);
    let user = user(&stack, "credit@example.com", "+14155550134", "basic", 1).await;
    let live = Live::open(&stack, &user).await;
    stack.sims.twilio().set_scenario(&user.phone, silent());
    let call_id = place_call(&stack, &user).await;
    let call = outcome(&stack, &user, &call_id).await;
    let record = sim_call(&stack, &user.phone).await;
    let record = sim_call_ended(&stack, &record.sid, Duration::from_secs(20)).await;

    assert_warned_then_cut_off(&call, &record, &live, &call_id, "credits");
    // On time, with nobody talking: warned at 75 % of the minute, goodbye early enough to be
    // over by the minute.
    let warned = heard_at(&record, WRAP_UP);
    let goodbye = heard_at(&record, LIMIT_GOODBYE);
    assert!((44.5..48.0).contains(&warned), "warned at {warned} s");
    assert!((53.5..57.0).contains(&goodbye), "goodbye at {goodbye} s");
    assert!(
        call["duration_seconds"].as_i64().expect("duration") <= 60,
        "{call}"
    );
    assert_eq!(call["credits_used"], 1, "{call}");
    let db = stack.db().await;
    let credits: i32 = db
        .query_one(
            "SELECT available_credits FROM user_credits WHERE user_id = $1",
            &[&user.id],
        )
        .await
        .expect("credits")
        .get(0);
    assert_eq!(credits, 0, "never below what the user had");
    let ledger = db
        .query(
            "SELECT amount, balance_before, balance_after FROM credit_transactions WHERE call_id = $1",
            &[&call_id],
        )
        .await
        .expect("ledger");
    assert_eq!(ledger.len(), 1);
    assert_eq!(
        (
            ledger[0].get::<_, i32>(0),
            ledger[0].get::<_, i32>(1),
            ledger[0].get::<_, i32>(2)
        ),
        (-1, 1, 0)
    );
}

#[tokio::test]
async fn a_silent_call_is_warned_and_ended_at_its_length_limit_by_the_timer() {
    let stack = Stack::start_with_vars(&[NO_IDLE_PROMPT, ("MAX_CALL_SECONDS", "36")]).await;
    fast_speech(&stack);
    // Free calls spend no credits: the longest call is the only time limit.
    let user = user(&stack, "length@example.com", "+14155550135", "free", 0).await;
    let live = Live::open(&stack, &user).await;
    stack.sims.twilio().set_scenario(&user.phone, silent());
    let call_id = place_call(&stack, &user).await;
    let call = outcome(&stack, &user, &call_id).await;
    let record = sim_call(&stack, &user.phone).await;
    let record = sim_call_ended(&stack, &record.sid, Duration::from_secs(20)).await;

    assert_warned_then_cut_off(&call, &record, &live, &call_id, "max_duration");
    // 75 % of 36 s, and the goodbye 6 s before the end.
    let warned = heard_at(&record, WRAP_UP);
    let goodbye = heard_at(&record, LIMIT_GOODBYE);
    assert!((26.5..29.0).contains(&warned), "warned at {warned} s");
    assert!((29.5..32.0).contains(&goodbye), "goodbye at {goodbye} s");
    assert!(
        call["duration_seconds"].as_i64().expect("duration") <= 36,
        "{call}"
    );
    assert_eq!(call["credits_used"], 0, "{call}");
}
