//! The per-call conversation engine, written sans-I/O.
//!
//! A Durable Object per call owns the sockets (Twilio media, STT, TTS) and the LLM requests; this
//! crate owns every decision. The object turns what arrives into [`Event`]s (with the time), calls
//! [`Engine::handle`], and carries out the [`Action`]s it gets back: send audio, a mark or a
//! `clear`; start or cancel an LLM request; open, feed, flush or close a TTS context; publish a
//! live event; set a timer; hang up; record the outcome. Because nothing here touches the network
//! or the clock, every rule — greeting first, turn ends, barge-in, pacing, limits, failures,
//! voicemail, exactly-what-was-heard transcripts — is unit-tested natively with a fake clock.
//!
//! Modules:
//! - [`engine`]: the state machine (start here; the per-frame path is [`Engine::caller_audio`]);
//! - [`events`]: the event and action vocabulary, provider-neutral;
//! - [`plan`]: what a call needs, fixed when it is placed;
//! - [`playout`]: real-time pacing of outbound audio, marks, "what has been heard";
//! - [`sentences`]: streaming LLM text → sentences for TTS;
//! - [`transcript`]: lines as heard, and the LLM history built from them;
//! - [`meter`]: provider usage priced as it happens, and batched cost events;
//! - [`limits`]: budget and duration limits during the call;
//! - [`outcome`]: the finalisation record;
//! - [`prompt`]: system prompt composition and the post-call memory summary;
//! - [`config`]: tuning and the persona's fixed lines.

pub mod config;
pub mod engine;
pub mod events;
pub mod limits;
pub mod meter;
pub mod outcome;
pub mod plan;
pub mod playout;
pub mod prompt;
pub mod sentences;
pub mod transcript;

pub use config::EngineConfig;
pub use engine::{AudioRoute, Engine};
pub use events::{Action, Event, LiveEvent, LlmEvent, Millis, Provider, SttEvent, TtsEvent};
pub use outcome::{CallOutcome, EndReason};
pub use plan::CallPlan;
