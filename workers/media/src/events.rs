//! What goes into the engine and what comes out of it.
//!
//! The vocabulary is provider-neutral: "a transcript arrived", "play this audio", not Deepgram or
//! Twilio JSON. Provider crates translate their wire messages into [`Event`]s and carry out
//! [`Action`]s, so adding a provider never touches the engine.

use callmeback_domain::calls::{AnsweredBy, CallStatus};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, as the Durable Object reads them from its clock.
pub type Millis = u64;

/// Speech-to-text results, in the order the provider sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SttEvent {
    /// Voice activity began (a hint; barge-in waits for words).
    SpeechStarted,
    /// Recognised words. `is_final`: this stretch of audio will not be revised. `speech_final`:
    /// the provider's endpointing says the speaker paused — the caller's turn is over.
    Transcript {
        text: String,
        is_final: bool,
        speech_final: bool,
    },
    /// The provider saw a gap after the last word: the turn is over if it was not already.
    UtteranceEnd,
}

/// A streaming LLM reply for one turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmEvent {
    /// More reply text.
    Delta(String),
    /// Token usage as the provider reported it (whichever chunk carried it).
    Usage {
        prompt_tokens: u64,
        completion_tokens: u64,
    },
    /// The stream ended normally.
    Finished,
    /// The request or the stream failed; the reason is for logs (never user data).
    Failed(String),
}

/// Synthesised speech.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtsEvent {
    /// μ-law 8 kHz audio for a context; `chars` is how many characters of the context's text this
    /// audio covers when the provider says so (alignment), which maps what the caller heard back
    /// to words.
    Audio {
        context: String,
        audio: Vec<u8>,
        chars: Option<u32>,
    },
    /// The provider finished a context (all its audio has been sent).
    ContextFinished { context: String },
}

/// Everything the engine reacts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The media stream started (Twilio `start`, its token already verified).
    StreamStarted {
        stream_sid: String,
    },
    /// The media stream ended (Twilio `stop`, or the socket closed).
    StreamStopped,
    /// Twilio echoed one of our marks: the audio before it has been played to the caller.
    Mark {
        name: String,
    },
    /// The caller pressed a key.
    Dtmf {
        digit: char,
    },
    Stt(SttEvent),
    /// The STT connection is (again) open; buffered caller audio should be replayed
    /// ([`crate::Engine::audio_to_replay`]).
    SttConnected,
    /// The STT connection broke or could not be opened.
    SttLost {
        reason: String,
    },
    Llm {
        turn: u32,
        event: LlmEvent,
    },
    Tts(TtsEvent),
    /// The TTS connection is (again) open.
    TtsConnected,
    /// The TTS connection broke or could not be opened.
    TtsLost {
        reason: String,
    },
    /// A timer the engine asked for ([`Action::WakeAt`]) or the periodic alarm fired.
    Tick,
    /// Twilio says the callee answered (status callback `in-progress`).
    Answered,
    /// Answering-machine detection result.
    AnsweredBy(AnsweredBy),
    /// Twilio reported a final status (status callback), with its billed duration if known.
    TelephonyEnded {
        status: CallStatus,
        duration_secs: Option<u32>,
    },
    /// Someone asked to end the call (the user through the API, or the system).
    HangUpRequested,
}

/// Which provider a failure or a cost belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Telephony,
    Stt,
    Llm,
    Tts,
}

impl Provider {
    pub const fn as_str(self) -> &'static str {
        match self {
            Provider::Telephony => "telephony",
            Provider::Stt => "stt",
            Provider::Llm => "llm",
            Provider::Tts => "tts",
        }
    }
}

/// One chat message of an LLM request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

/// What to ask the LLM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmRequest {
    pub messages: Vec<ChatMessage>,
    pub max_tokens: u32,
    pub temperature: f64,
}

/// Something the app sees live (pushed to the user's live channel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    /// One finished transcript line.
    Transcript {
        call_id: String,
        role: crate::transcript::Role,
        text: String,
        /// RFC 3339 is produced by the glue; here milliseconds since the epoch.
        at_ms: Millis,
        interrupted: bool,
    },
    /// A limit reached its warning threshold.
    BudgetWarning {
        call_id: String,
        limit: crate::limits::LimitKind,
        percent_used: u32,
    },
    /// A limit was reached: the call is being ended, or (auto cut-off off) goes on.
    LimitReached {
        call_id: String,
        limit: crate::limits::LimitKind,
        ending: bool,
    },
}

/// What the engine wants done. The glue carries these out in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this audio to the caller, followed by a mark with this name.
    PlayAudio {
        audio: Vec<u8>,
        mark: String,
    },
    /// Drop every bit of audio the telephony side still holds (barge-in).
    ClearAudio,
    StartLlm {
        turn: u32,
        request: LlmRequest,
    },
    CancelLlm {
        turn: u32,
    },
    /// Open a synthesis context (with the call's voice and settings).
    TtsOpen {
        context: String,
    },
    /// More text for a context (ends with a space, as streaming TTS expects).
    TtsText {
        context: String,
        text: String,
    },
    /// Generate whatever text the context still holds; no more text follows.
    TtsFlush {
        context: String,
    },
    /// Abandon a context (its audio will be ignored if any still arrives).
    TtsClose {
        context: String,
    },
    Publish(LiveEvent),
    /// Persist a status change (the store keeps it monotonic).
    SetStatus(CallStatus),
    /// Ask the telephony provider to end the call.
    HangUp,
    /// Deliver [`Event::Tick`] at (or soon after) this time. The latest request replaces earlier ones.
    WakeAt(Millis),
    /// A provider failed; log it with the call id and count it.
    Failure {
        provider: Provider,
        kind: &'static str,
    },
    /// The call is over and [`crate::Engine::outcome`] is ready to be recorded.
    Finished,
}
