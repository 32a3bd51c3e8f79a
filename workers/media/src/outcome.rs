//! The record of a finished call: what the finalisation writes, exactly once.

use callmeback_domain::calls::{AnsweredBy, CallStatus};
use callmeback_domain::pricing::{CostBreakdown, RateCard, Usage};
use serde::{Deserialize, Serialize};

use crate::events::{Millis, Provider};
use crate::limits::LimitKind;
use crate::meter::CostEvent;
use crate::transcript::Line;

/// Why the call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum EndReason {
    /// The callee hung up (or the line dropped).
    CallerHungUp,
    /// The user (through the app) or the system asked to end it.
    HangUpRequested,
    /// A limit was reached.
    LimitReached(LimitKind),
    /// A provider failed twice in a row.
    ProviderFailed(Provider),
    /// Nobody spoke for too long.
    Idle,
    /// An answering machine took the call.
    Voicemail,
    /// Busy, no answer, failed or canceled before anyone picked up.
    NotAnswered,
}

impl EndReason {
    /// A stable code for logs and `call_logs.end_reason`.
    pub fn code(self) -> String {
        match self {
            EndReason::CallerHungUp => "caller_hung_up".to_owned(),
            EndReason::HangUpRequested => "hang_up_requested".to_owned(),
            EndReason::LimitReached(limit) => format!("limit_reached:{}", limit.as_str()),
            EndReason::ProviderFailed(provider) => format!("provider_failed:{}", provider.as_str()),
            EndReason::Idle => "idle".to_owned(),
            EndReason::Voicemail => "voicemail".to_owned(),
            EndReason::NotAnswered => "not_answered".to_owned(),
        }
    }

    /// A sentence for `calls.error_message` when the ending was not a normal one.
    pub fn error_message(self) -> Option<&'static str> {
        match self {
            EndReason::ProviderFailed(Provider::Stt) => {
                Some("speech recognition failed twice in a row")
            }
            EndReason::ProviderFailed(Provider::Llm) => {
                Some("the language model failed twice in a row")
            }
            EndReason::ProviderFailed(Provider::Tts) => {
                Some("speech synthesis failed twice in a row")
            }
            EndReason::ProviderFailed(Provider::Telephony) => Some("the telephony provider failed"),
            _ => None,
        }
    }
}

/// A provider failure during the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub provider: Provider,
    pub kind: String,
    pub at_ms: Millis,
}

/// Everything finalisation records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallOutcome {
    pub call_id: String,
    pub status: CallStatus,
    pub end_reason: EndReason,
    pub answered_at_ms: Option<Millis>,
    pub ended_at_ms: Millis,
    /// Telephony seconds (billed if the provider said, else measured).
    pub duration_secs: u32,
    pub usage: Usage,
    pub cost: CostBreakdown,
    /// Started minutes, never more than the credits the user had when the call started.
    pub credits_used: u32,
    pub transcript: Vec<Line>,
    /// Replies the persona gave.
    pub turn_count: u32,
    pub interrupt_count: u32,
    pub avg_response_ms: Option<u32>,
    pub response_times_ms: Vec<u32>,
    pub failures: Vec<FailureRecord>,
    pub answered_by: Option<AnsweredBy>,
    /// Cost events not yet written during the call.
    pub cost_events: Vec<CostEvent>,
    /// Sequence number for the next cost event (events are numbered per call).
    pub next_cost_seq: u32,
    /// The memory summary for the next call, when one was made.
    pub summary: Option<String>,
}

impl CallOutcome {
    /// Adds the post-call summary and meters the LLM request that wrote it like any other.
    pub fn add_summary(
        &mut self,
        summary: String,
        prompt_tokens: u64,
        completion_tokens: u64,
        rates: &RateCard,
        now: Millis,
    ) {
        self.usage.llm_input_tokens += prompt_tokens;
        self.usage.llm_output_tokens += completion_tokens;
        self.cost = CostBreakdown::from_usage_at(&self.usage, rates);
        for (kind, quantity, rate) in [
            ("llm_input_tokens", prompt_tokens, rates.llm_input_per_token),
            (
                "llm_output_tokens",
                completion_tokens,
                rates.llm_output_per_token,
            ),
        ] {
            self.cost_events.push(CostEvent {
                seq: self.next_cost_seq,
                provider: "cerebras".to_owned(),
                kind: kind.to_owned(),
                quantity: quantity.to_string(),
                unit: "tokens".to_owned(),
                cost: rate.price(quantity),
                at_ms: now,
            });
            self.next_cost_seq += 1;
        }
        self.summary = Some(summary);
    }
}
