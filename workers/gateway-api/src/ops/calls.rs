//! Phone calls: placing them (checks, the row, the Twilio leg), their status, their outcome, and
//! the reports the app reads.
//!
//! Statuses only move forward (`call_status_rank()` in SQL, `CallStatus::rank` in the domain).
//! Finalisation is one batch that starts with [`CALLS_FINALIZE`], which matches only a call not
//! finalised yet: the rest of the batch commits with it, exactly once.

use super::{OpSpec, ParamSpec, ParamType};

/// Everything placing a call needs, in one row: the user, the persona (active?), the user's
/// relationship with it, the template, credits and tier, calls started today (UTC; calls that
/// never reached Twilio do not count), the budget and this month's spend, and the call an
/// idempotency key already names.
pub static CALLS_PREPARE: OpSpec = OpSpec::new(
    "calls.prepare",
    &[
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("persona_id", ParamType::Text),
        ParamSpec::optional("template_id", ParamType::Text),
        ParamSpec::optional("idempotency_key", ParamType::Text),
    ],
);

/// Locks the user's row for the rest of the transaction, so the daily count and the insert
/// that follows cannot interleave with another request's.
pub static CALLS_LOCK_USER: OpSpec = OpSpec::new(
    "calls.lock_user",
    &[ParamSpec::required("user_id", ParamType::Text)],
);

/// Creates the call row (`initiating`) unless the daily limit is reached or the idempotency key
/// is taken; `precondition_failed` then (the caller tells which by looking the key up).
pub static CALLS_CREATE: OpSpec = OpSpec::new(
    "calls.create",
    &[
        ParamSpec::required("id", ParamType::Text),
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("persona_id", ParamType::Text),
        ParamSpec::required("phone_number", ParamType::Text),
        ParamSpec::optional("scenario_template_id", ParamType::Text),
        ParamSpec::optional("custom_instructions", ParamType::Text),
        ParamSpec::optional("scheduled_call_id", ParamType::Text),
        ParamSpec::optional("payment_method", ParamType::Text),
        ParamSpec::optional("idempotency_key", ParamType::Text),
        ParamSpec::optional("daily_limit", ParamType::Int4),
    ],
);

/// The call an idempotency key names, if any.
pub static CALLS_BY_IDEMPOTENCY_KEY: OpSpec = OpSpec::new(
    "calls.by_idempotency_key",
    &[
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("idempotency_key", ParamType::Text),
    ],
);

/// Twilio accepted the call: its sid, and `calling` unless the call already moved further.
pub static CALLS_MARK_PLACED: OpSpec = OpSpec::new(
    "calls.mark_placed",
    &[
        ParamSpec::required("call_id", ParamType::Text),
        ParamSpec::required("twilio_call_sid", ParamType::Text),
    ],
);

/// Twilio refused the call: `failed` with a readable reason, finalised (nothing to record).
pub static CALLS_MARK_FAILED: OpSpec = OpSpec::new(
    "calls.mark_failed",
    &[
        ParamSpec::required("call_id", ParamType::Text),
        ParamSpec::required("error_message", ParamType::Text),
    ],
);

/// Moves a call to a later, non-final status; no row when it is already there or further.
pub static CALLS_ADVANCE_STATUS: OpSpec = OpSpec::new(
    "calls.advance_status",
    &[
        ParamSpec::required("call_id", ParamType::Text),
        ParamSpec::required("status", ParamType::Text),
        ParamSpec::optional("twilio_call_sid", ParamType::Text),
    ],
);

/// The exactly-once guard of finalisation: the outcome, on a call not finalised yet.
pub static CALLS_FINALIZE: OpSpec = OpSpec::new(
    "calls.finalize",
    &[
        ParamSpec::required("call_id", ParamType::Text),
        ParamSpec::required("status", ParamType::Text),
        ParamSpec::required("ended_at", ParamType::Timestamptz),
        ParamSpec::required("duration_seconds", ParamType::Int4),
        ParamSpec::required("credits_used", ParamType::Int4),
        ParamSpec::required("actual_cost_cents", ParamType::Int4),
        ParamSpec::optional("error_message", ParamType::Text),
        ParamSpec::optional("answered_at", ParamType::Timestamptz),
        ParamSpec::optional("answered_by", ParamType::Text),
    ],
);

/// The call's log row (metrics and rounded costs); once per call.
pub static CALL_LOGS_RECORD: OpSpec = OpSpec::new(
    "call_logs.record",
    &[
        ParamSpec::required("id", ParamType::Text),
        ParamSpec::required("call_id", ParamType::Text),
        ParamSpec::required("status", ParamType::Text),
        ParamSpec::required("duration_seconds", ParamType::Int4),
        ParamSpec::optional("error_message", ParamType::Text),
        ParamSpec::required("cost_stt", ParamType::Int4),
        ParamSpec::required("cost_llm", ParamType::Int4),
        ParamSpec::required("cost_tts", ParamType::Int4),
        ParamSpec::required("cost_twilio", ParamType::Int4),
        ParamSpec::required("cost_total", ParamType::Int4),
        ParamSpec::required("turn_count", ParamType::Int4),
        ParamSpec::required("interrupt_count", ParamType::Int4),
        ParamSpec::optional("avg_response_time_ms", ParamType::Int4),
        ParamSpec::optional("started_at", ParamType::Timestamptz),
        ParamSpec::required("ended_at", ParamType::Timestamptz),
        ParamSpec::required("end_reason", ParamType::Text),
        ParamSpec::required("failures", ParamType::Jsonb),
        ParamSpec::required("response_times_ms", ParamType::Jsonb),
    ],
);

/// The call's cost per provider (exact decimals); the final figures win over running ones.
pub static COST_BREAKDOWN_RECORD: OpSpec = OpSpec::new(
    "call_costs.record_breakdown",
    &[
        ParamSpec::required("id", ParamType::Text),
        ParamSpec::required("call_id", ParamType::Text),
        ParamSpec::required("twilio_cost_cents", ParamType::Numeric),
        ParamSpec::required("deepgram_cost_cents", ParamType::Numeric),
        ParamSpec::required("cerebras_cost_cents", ParamType::Numeric),
        ParamSpec::required("elevenlabs_cost_cents", ParamType::Numeric),
        ParamSpec::required("twilio_duration_seconds", ParamType::Int4),
        ParamSpec::required("deepgram_audio_seconds", ParamType::Numeric),
        ParamSpec::required("cerebras_input_tokens", ParamType::Int4),
        ParamSpec::required("cerebras_output_tokens", ParamType::Int4),
        ParamSpec::required("elevenlabs_characters", ParamType::Int4),
    ],
);

/// A batch of cost events (`[{id, provider, kind, quantity, unit, cost_cents, occurred_at}]`);
/// events already recorded (same id) are skipped, so a retried batch adds nothing twice.
pub static COST_EVENTS_ADD: OpSpec = OpSpec::new(
    "call_costs.add_events",
    &[
        ParamSpec::required("call_id", ParamType::Text),
        ParamSpec::required("events", ParamType::Jsonb),
    ],
);

/// Takes a call's credits with its ledger row: the amount, or what is left if less (a call never
/// costs more credits than there are). Nothing when there is nothing to take.
pub static CREDITS_CHARGE_CALL: OpSpec = OpSpec::new(
    "credits.charge_call",
    &[
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("amount", ParamType::Int4),
        ParamSpec::required("transaction_id", ParamType::Text),
        ParamSpec::required("call_id", ParamType::Text),
        ParamSpec::optional("description", ParamType::Text),
    ],
);

/// One more call with a persona: counts, duration, last call, and the persona's new memory.
pub static RELATIONSHIPS_RECORD_CALL: OpSpec = OpSpec::new(
    "relationships.record_call",
    &[
        ParamSpec::required("id", ParamType::Text),
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("persona_id", ParamType::Text),
        ParamSpec::required("duration_seconds", ParamType::Int4),
        ParamSpec::required("ended_at", ParamType::Timestamptz),
        ParamSpec::optional("memory_summary", ParamType::Text),
    ],
);

/// The transcript as a JSON array of `{role, content, timestamp}`.
pub static TRANSCRIPTS_SAVE: OpSpec = OpSpec::new(
    "transcripts.save",
    &[
        ParamSpec::required("call_id", ParamType::Text),
        ParamSpec::required("messages", ParamType::Jsonb),
    ],
);

/// A page of a user's calls, newest first, before an optional `(created_at, id)` cursor.
pub static CALLS_LIST: OpSpec = OpSpec::new(
    "calls.list",
    &[
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::optional("before_created_at", ParamType::Timestamptz),
        ParamSpec::optional("before_id", ParamType::Text),
        ParamSpec::required("limit", ParamType::Int4),
    ],
);

/// One of a user's calls with its costs, metrics and transcript.
pub static CALLS_GET: OpSpec = OpSpec::new(
    "calls.get",
    &[
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("call_id", ParamType::Text),
    ],
);

/// Fails calls stuck in `initiating`/`calling` for longer than `older_than_secs`.
pub static CALLS_FAIL_STUCK: OpSpec = OpSpec::new(
    "calls.fail_stuck",
    &[
        ParamSpec::required("older_than_secs", ParamType::Int4),
        ParamSpec::required("limit", ParamType::Int4),
    ],
);

/// What the persona remembers of a user (`persona not found` when the persona does not exist).
pub static MEMORY_GET: OpSpec = OpSpec::new(
    "memory.get",
    &[
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("persona_id", ParamType::Text),
    ],
);

/// Forgets what the persona remembers of a user.
pub static MEMORY_CLEAR: OpSpec = OpSpec::new(
    "memory.clear",
    &[
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("persona_id", ParamType::Text),
    ],
);

/// The user's call preferences.
pub static PREFERENCES_GET: OpSpec = OpSpec::new(
    "preferences.get",
    &[ParamSpec::required("user_id", ParamType::Text)],
);

/// Sets what the persona does when an answering machine picks up.
pub static PREFERENCES_SET: OpSpec = OpSpec::new(
    "preferences.set",
    &[
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("voicemail_action", ParamType::Text),
    ],
);
