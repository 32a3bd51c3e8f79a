//! Recording a call's outcome: exactly once, losing nothing.
//!
//! When the engine says the call is over, its outcome (status, duration, costs, credits,
//! transcript, metrics) becomes ONE gateway batch — one transaction — whose first operation,
//! `calls.finalize`, only matches a call that has not been finalised yet. Everything else in the
//! batch (call log, cost breakdown, cost events, the credit deduction with its ledger row, the
//! relationship's statistics and memory, the transcript) commits with it or not at all. A second
//! attempt finds the call finalised, fails that first operation with `precondition_failed`, and
//! changes nothing: a retry never charges twice (the ledger's one-deduction-per-call index
//! backs this up).
//!
//! Before the batch is sent, it is written to the object's own storage. If the gateway cannot be
//! reached, the object's alarm retries with backoff until the batch lands; the record survives a
//! restart of the object.

use std::rc::Rc;
use std::time::Duration;

use callmeback_domain::calls::CallStatus;
use callmeback_domain::ids::{new_id, prefix};
use callmeback_domain::pricing::Cents;
use callmeback_gateway_api::ops::calls as ops;
use callmeback_gateway_api::{OpCall, codes};
use callmeback_media::CallOutcome;
use callmeback_media::meter::CostEvent;
use callmeback_media::prompt;
use callmeback_media::transcript::Role;
use callmeback_providers::openai;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use worker::{Env, State};

use super::runtime::Call;
use super::{FINALIZED_KEY, PENDING_KEY};
use crate::config::{Config, GatewayConfig};
use crate::gateway::{Gateway, GatewayError};
use crate::outbound::{self, now_ms};

/// A summary request that takes longer than this is skipped (the outcome matters more).
const SUMMARY_TIMEOUT_MS: u64 = 8000;
/// Retry delays of a finalisation that could not be recorded: 2 s, 4 s, … up to 5 minutes.
const MAX_RETRY_DELAY_SECS: u64 = 300;

/// What is written, with the ids chosen once so every retry writes the same rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Pending {
    pub user_id: String,
    pub persona_id: String,
    pub outcome: CallOutcome,
    pub answered_by: Option<String>,
    /// Twilio frames dropped as malformed, by kind.
    pub dropped_frames: Vec<(String, u32)>,
    pub log_id: String,
    pub breakdown_id: String,
    pub transaction_id: String,
    pub relationship_id: String,
    pub attempts: u32,
}

/// Builds, persists and submits the outcome of a finished call.
pub(super) async fn run(call: Rc<Call>) {
    let (outcome, user_id, persona_id, previous_memory) = {
        let engine = call.engine.borrow();
        let plan = engine.plan();
        let Some(outcome) = engine.outcome().cloned() else {
            return;
        };
        (
            outcome,
            plan.user_id.clone(),
            plan.persona_id.clone(),
            plan.previous_memory.clone(),
        )
    };
    let mut outcome = outcome;
    outcome
        .cost_events
        .splice(0..0, call.take_unwritten_costs());
    if outcome.status.was_answered() {
        summarise(&call, &mut outcome, previous_memory.as_deref()).await;
    }
    let random = || {
        let mut bytes = [0u8; 16];
        let _ = getrandom::fill(&mut bytes);
        bytes
    };
    let pending = Pending {
        user_id,
        persona_id,
        answered_by: call.answered_by(),
        dropped_frames: call
            .dropped_frames()
            .into_iter()
            .map(|(kind, count)| (kind.to_owned(), count))
            .collect(),
        log_id: new_id(prefix::CALL_LOG, random()),
        breakdown_id: new_id(prefix::COST_BREAKDOWN, random()),
        transaction_id: new_id(prefix::CREDIT_TRANSACTION, random()),
        relationship_id: new_id(prefix::PERSONA_RELATIONSHIP, random()),
        outcome,
        attempts: 0,
    };
    let storage = call.state.storage();
    if let Err(error) = storage.put(PENDING_KEY, &pending).await {
        worker::console_error!("call {}: outcome not persisted: {error}", call.id);
    }
    let status = pending.outcome.status;
    submit(&call.state, &call.gateway, pending).await;
    call.publish_status(status);
}

/// The alarm's retry of a stored outcome.
pub(super) async fn retry_pending(state: Rc<State>, env: Env) {
    let storage = state.storage();
    let Ok(Some(pending)) = storage.get::<Pending>(PENDING_KEY).await else {
        return;
    };
    let config = Config::get(&env);
    let Ok(gateway) = config.gateway.get() else {
        worker::console_error!("finalisation retry: gateway configuration unavailable");
        let _ = storage.set_alarm(Duration::from_secs(60)).await;
        return;
    };
    let status = pending.outcome.status;
    let user_id = pending.user_id.clone();
    let call_id = pending.outcome.call_id.clone();
    if submit(&state, gateway, pending).await {
        let event = json!({"type": "call_status", "call_id": call_id, "status": status});
        let _ = crate::live::publish(&env, &user_id, &event).await;
    }
}

/// Sends the batch; on success marks the object finalised, otherwise schedules a retry.
/// Returns whether the outcome is now recorded.
async fn submit(state: &State, gateway: &GatewayConfig, mut pending: Pending) -> bool {
    let call_id = pending.outcome.call_id.clone();
    let gateway = Gateway::new(gateway, format!("finalize-{call_id}"));
    let storage = state.storage();
    match gateway.batch(finalization_ops(&pending)).await {
        Ok(_) => {}
        Err(GatewayError::Rejected {
            code,
            op_index: Some(0),
            ..
        }) if code == codes::PRECONDITION_FAILED => {
            // Recorded before (an earlier attempt committed, or the sweeper closed the call).
        }
        Err(error) => {
            pending.attempts += 1;
            let delay = (2u64 << pending.attempts.min(8)).min(MAX_RETRY_DELAY_SECS);
            worker::console_warn!(
                "call {call_id}: outcome not recorded (attempt {}): {error:?}; retry in {delay} s",
                pending.attempts
            );
            let _ = storage.put(PENDING_KEY, &pending).await;
            let _ = storage.set_alarm(Duration::from_secs(delay)).await;
            return false;
        }
    }
    let _ = storage.put(FINALIZED_KEY, true).await;
    let _ = storage.delete(PENDING_KEY).await;
    let _ = storage.delete_alarm().await;
    true
}

/// Asks the LLM for the persona's memory of this call (bounded in tokens and time); metered into
/// the outcome. Failure only means no new memory.
async fn summarise(call: &Rc<Call>, outcome: &mut CallOutcome, previous: Option<&str>) {
    let Some(request) = prompt::summary_request(previous, &outcome.transcript) else {
        return;
    };
    let voice = &call.voice;
    let authorization = format!("Bearer {}", voice.llm_key);
    let Ok(http) = outbound::post(
        &format!("{}/chat/completions", voice.llm_url),
        &[
            ("authorization", &authorization),
            ("content-type", "application/json"),
        ],
        openai::request_body(&voice.llm, &request, false),
    ) else {
        return;
    };
    let answer = match outbound::send_bounded(http, SUMMARY_TIMEOUT_MS).await {
        Ok(mut response) if response.status_code() == 200 => response.text().await.ok(),
        Ok(response) => {
            worker::console_warn!(
                "call {}: summary refused ({})",
                call.id,
                response.status_code()
            );
            None
        }
        Err(error) => {
            worker::console_warn!("call {}: summary failed: {error}", call.id);
            None
        }
    };
    let Some((text, usage)) = answer.as_deref().and_then(openai::completion) else {
        return;
    };
    let summary = prompt::sanitize_summary(&text);
    if summary.is_empty() {
        return;
    }
    let (prompt_tokens, completion_tokens) = usage.unwrap_or_else(|| {
        let prompt: usize = request.messages.iter().map(|m| m.content.len()).sum();
        ((prompt as u64).div_ceil(4), (text.len() as u64).div_ceil(4))
    });
    let rates = call.engine.borrow().plan().rates;
    outcome.add_summary(summary, prompt_tokens, completion_tokens, &rates, now_ms());
}

/// Writes a batch of cost events during the call (idempotent by id).
pub(super) async fn write_cost_events(call: &Call, events: &[CostEvent]) -> Result<(), String> {
    let gateway = Gateway::new(&call.gateway, format!("costs-{}", call.id));
    gateway
        .call(
            &OpCall::of(&ops::COST_EVENTS_ADD)
                .param("call_id", call.id.as_str())
                .param("events", cost_events_json(&call.id, events)),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// Moves the stored status forward (never backward). Returns whether it changed.
pub(super) async fn advance_status(
    call: &Call,
    status: CallStatus,
    call_sid: Option<&str>,
) -> Result<bool, String> {
    let gateway = Gateway::new(&call.gateway, format!("status-{}", call.id));
    gateway
        .call(
            &OpCall::of(&ops::CALLS_ADVANCE_STATUS)
                .param("call_id", call.id.as_str())
                .param("status", status.as_str())
                .param("twilio_call_sid", call_sid),
        )
        .await
        .map(|result| result.row_count > 0)
        .map_err(|e| format!("{e:?}"))
}

/// The finalisation batch (pure: tested natively).
pub(super) fn finalization_ops(pending: &Pending) -> Vec<OpCall> {
    let outcome = &pending.outcome;
    let call_id = outcome.call_id.as_str();
    let ended_at = rfc3339_ms(outcome.ended_at_ms);
    let answered_at = outcome.answered_at_ms.map(rfc3339_ms);
    let mut ops = vec![
        OpCall::of(&ops::CALLS_FINALIZE)
            .param("call_id", call_id)
            .param("status", outcome.status.as_str())
            .param("ended_at", ended_at.as_str())
            .param("duration_seconds", outcome.duration_secs)
            .param("credits_used", outcome.credits_used)
            .param(
                "actual_cost_cents",
                outcome.cost.total.round_to_whole_cents(),
            )
            .param("error_message", outcome.end_reason.error_message())
            .param("answered_at", answered_at.as_deref())
            .param("answered_by", pending.answered_by.as_deref()),
        OpCall::of(&ops::CALL_LOGS_RECORD)
            .param("id", pending.log_id.as_str())
            .param("call_id", call_id)
            .param("status", log_status(outcome.status))
            .param("duration_seconds", outcome.duration_secs)
            .param("error_message", outcome.end_reason.error_message())
            .param("cost_stt", outcome.cost.deepgram.round_to_whole_cents())
            .param("cost_llm", outcome.cost.cerebras.round_to_whole_cents())
            .param("cost_tts", outcome.cost.elevenlabs.round_to_whole_cents())
            .param("cost_twilio", outcome.cost.twilio.round_to_whole_cents())
            .param("cost_total", outcome.cost.total.round_to_whole_cents())
            .param("turn_count", outcome.turn_count)
            .param("interrupt_count", outcome.interrupt_count)
            .param("avg_response_time_ms", outcome.avg_response_ms)
            .param("started_at", answered_at.as_deref())
            .param("ended_at", ended_at.as_str())
            .param("end_reason", outcome.end_reason.code())
            .param("failures", failures_json(pending))
            .param("response_times_ms", json!(outcome.response_times_ms)),
        OpCall::of(&ops::COST_BREAKDOWN_RECORD)
            .param("id", pending.breakdown_id.as_str())
            .param("call_id", call_id)
            .param(
                "twilio_cost_cents",
                outcome.cost.twilio.to_decimal_string_4(),
            )
            .param(
                "deepgram_cost_cents",
                outcome.cost.deepgram.to_decimal_string_4(),
            )
            .param(
                "cerebras_cost_cents",
                outcome.cost.cerebras.to_decimal_string_4(),
            )
            .param(
                "elevenlabs_cost_cents",
                outcome.cost.elevenlabs.to_decimal_string_4(),
            )
            .param("twilio_duration_seconds", outcome.duration_secs)
            .param(
                "deepgram_audio_seconds",
                seconds_2(outcome.usage.deepgram_audio_ms),
            )
            .param(
                "cerebras_input_tokens",
                clamp_i32(outcome.usage.llm_input_tokens),
            )
            .param(
                "cerebras_output_tokens",
                clamp_i32(outcome.usage.llm_output_tokens),
            )
            .param(
                "elevenlabs_characters",
                clamp_i32(outcome.usage.tts_characters),
            ),
    ];
    if !outcome.cost_events.is_empty() {
        ops.push(
            OpCall::of(&ops::COST_EVENTS_ADD)
                .param("call_id", call_id)
                .param("events", cost_events_json(call_id, &outcome.cost_events)),
        );
    }
    if outcome.credits_used > 0 {
        ops.push(
            OpCall::of(&ops::CREDITS_CHARGE_CALL)
                .param("user_id", pending.user_id.as_str())
                .param("amount", outcome.credits_used)
                .param("transaction_id", pending.transaction_id.as_str())
                .param("call_id", call_id)
                .param(
                    "description",
                    format!("Call of {} started minute(s)", outcome.credits_used),
                ),
        );
    }
    if outcome.status.was_answered() {
        ops.push(
            OpCall::of(&ops::RELATIONSHIPS_RECORD_CALL)
                .param("id", pending.relationship_id.as_str())
                .param("user_id", pending.user_id.as_str())
                .param("persona_id", pending.persona_id.as_str())
                .param("duration_seconds", outcome.duration_secs)
                .param("ended_at", ended_at.as_str())
                .param("memory_summary", outcome.summary.as_deref()),
        );
    }
    if !outcome.transcript.is_empty() {
        ops.push(
            OpCall::of(&ops::TRANSCRIPTS_SAVE)
                .param("call_id", call_id)
                .param("messages", transcript_json(outcome)),
        );
    }
    ops
}

/// `call_logs.status` has its own (older) vocabulary.
fn log_status(status: CallStatus) -> &'static str {
    match status {
        CallStatus::Initiating | CallStatus::Calling => "initiated",
        CallStatus::Connected | CallStatus::InProgress => "connected",
        other => other.as_str(),
    }
}

fn transcript_json(outcome: &CallOutcome) -> Value {
    Value::Array(
        outcome
            .transcript
            .iter()
            .map(|line| {
                let mut message = json!({
                    "role": match line.role {
                        Role::User => "user",
                        Role::Assistant => "assistant",
                    },
                    "content": line.text,
                    "timestamp": rfc3339_ms(line.at_ms),
                });
                if line.interrupted {
                    message["interrupted"] = Value::Bool(true);
                }
                message
            })
            .collect(),
    )
}

fn cost_events_json(call_id: &str, events: &[CostEvent]) -> Value {
    Value::Array(
        events
            .iter()
            .map(|event| {
                json!({
                    "id": format!("cev_{call_id}_{}", event.seq),
                    "provider": event.provider,
                    "kind": event.kind,
                    "quantity": event.quantity,
                    "unit": event.unit,
                    "cost_cents": decimal_6(event.cost),
                    "occurred_at": rfc3339_ms(event.at_ms),
                })
            })
            .collect(),
    )
}

fn failures_json(pending: &Pending) -> Value {
    let mut failures: Vec<Value> = pending
        .outcome
        .failures
        .iter()
        .map(|failure| {
            json!({
                "provider": failure.provider.as_str(),
                "kind": failure.kind,
                "at": rfc3339_ms(failure.at_ms),
            })
        })
        .collect();
    for (kind, count) in &pending.dropped_frames {
        failures.push(json!({"provider": "telephony", "kind": format!("dropped_frames:{kind}"), "count": count}));
    }
    Value::Array(failures)
}

/// Micro-cents as a decimal string with six places (`call_cost_events.cost_cents`).
fn decimal_6(cost: Cents) -> String {
    let micro = cost.micro_cents();
    let sign = if micro < 0 { "-" } else { "" };
    let magnitude = micro.unsigned_abs();
    format!(
        "{sign}{}.{:06}",
        magnitude / 1_000_000,
        magnitude % 1_000_000
    )
}

/// Milliseconds as seconds with two decimals (truncated).
fn seconds_2(ms: u64) -> String {
    format!("{}.{:02}", ms / 1000, (ms % 1000) / 10)
}

fn clamp_i32(value: u64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// RFC 3339 with milliseconds, UTC.
pub(super) fn rfc3339_ms(ms: u64) -> String {
    let seconds = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let nanos = u32::try_from((ms % 1000) * 1_000_000).unwrap_or(0);
    chrono::DateTime::from_timestamp(seconds, nanos)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use callmeback_domain::calls::AnsweredBy;
    use callmeback_domain::pricing::{CostBreakdown, Usage};
    use callmeback_media::EndReason;
    use callmeback_media::transcript::Line;

    use super::*;

    fn pending(status: CallStatus, credits: u32) -> Pending {
        let usage = Usage {
            twilio_seconds: 61,
            deepgram_audio_ms: 61_000,
            llm_input_tokens: 300,
            llm_output_tokens: 40,
            tts_characters: 120,
        };
        Pending {
            user_id: "usr_1".to_owned(),
            persona_id: "brad".to_owned(),
            outcome: CallOutcome {
                call_id: "call_1".to_owned(),
                status,
                end_reason: EndReason::CallerHungUp,
                answered_at_ms: Some(1_700_000_000_000),
                ended_at_ms: 1_700_000_061_000,
                duration_secs: 61,
                usage,
                cost: CostBreakdown::from_usage(&usage),
                credits_used: credits,
                transcript: vec![Line {
                    role: Role::Assistant,
                    text: "Hi!".to_owned(),
                    at_ms: 1_700_000_000_500,
                    interrupted: true,
                }],
                turn_count: 1,
                interrupt_count: 0,
                avg_response_ms: Some(12),
                response_times_ms: vec![12],
                failures: Vec::new(),
                answered_by: Some(AnsweredBy::Human),
                cost_events: Vec::new(),
                next_cost_seq: 1,
                summary: Some("Likes tea.".to_owned()),
            },
            answered_by: Some("human".to_owned()),
            dropped_frames: vec![("invalid_json".to_owned(), 2)],
            log_id: "clog_1".to_owned(),
            breakdown_id: "cost_1".to_owned(),
            transaction_id: "txn_1".to_owned(),
            relationship_id: "rel_1".to_owned(),
            attempts: 0,
        }
    }

    #[test]
    fn an_answered_call_records_everything_in_one_batch_guarded_by_finalize() {
        let ops = finalization_ops(&pending(CallStatus::Completed, 2));
        let names: Vec<&str> = ops.iter().map(|op| op.op.as_str()).collect();
        assert_eq!(
            names[0],
            ops::CALLS_FINALIZE.name,
            "the exactly-once guard comes first"
        );
        for spec in [
            &ops::CALL_LOGS_RECORD,
            &ops::COST_BREAKDOWN_RECORD,
            &ops::CREDITS_CHARGE_CALL,
            &ops::RELATIONSHIPS_RECORD_CALL,
            &ops::TRANSCRIPTS_SAVE,
        ] {
            assert!(
                names.contains(&spec.name),
                "{} missing from {names:?}",
                spec.name
            );
        }
        for op in &ops {
            assert!(op.conforms().is_ok(), "{} does not match its spec", op.op);
        }
        let finalize = &ops[0].params;
        assert_eq!(finalize["status"], "completed");
        assert_eq!(finalize["credits_used"], 2);
        assert_eq!(finalize["ended_at"], "2023-11-14T22:14:21.000Z");
        let transcript = &ops
            .iter()
            .find(|op| op.op == ops::TRANSCRIPTS_SAVE.name)
            .unwrap()
            .params["messages"];
        assert_eq!(transcript[0]["role"], "assistant");
        assert_eq!(transcript[0]["interrupted"], true);
        let log = &ops[1].params;
        assert_eq!(log["failures"][0]["kind"], "dropped_frames:invalid_json");
    }

    #[test]
    fn unanswered_calls_charge_nothing_and_touch_no_relationship() {
        let mut pending = pending(CallStatus::NoAnswer, 0);
        pending.outcome.transcript.clear();
        let names: Vec<String> = finalization_ops(&pending)
            .into_iter()
            .map(|op| op.op)
            .collect();
        assert!(!names.iter().any(|n| n == ops::CREDITS_CHARGE_CALL.name));
        assert!(
            !names
                .iter()
                .any(|n| n == ops::RELATIONSHIPS_RECORD_CALL.name)
        );
        assert!(!names.iter().any(|n| n == ops::TRANSCRIPTS_SAVE.name));
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal_6(Cents::from_micro_cents(1_234_567)), "1.234567");
        assert_eq!(decimal_6(Cents::from_micro_cents(10)), "0.000010");
        assert_eq!(seconds_2(61_239), "61.23");
        assert_eq!(log_status(CallStatus::Voicemail), "voicemail");
        assert_eq!(log_status(CallStatus::InProgress), "connected");
    }
}
