//! Tuning of the conversation engine: pacing, barge-in, timeouts and the few fixed lines the
//! persona says on its own. Deployments override these through Worker variables; the defaults are
//! what a phone conversation needs.

use serde::{Deserialize, Serialize};

/// μ-law at 8 kHz: one byte per sample, eight per millisecond.
pub const BYTES_PER_MS: u64 = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Audio per outbound media message (each followed by a mark). Every WebSocket message
    /// costs the runtime far more than its bytes, so frames are larger than Twilio's 20 ms; the
    /// first frame of a reply goes out as soon as any audio exists, whatever this says.
    pub frame_ms: u64,
    /// How far ahead of the caller's ear we let the telephony side's buffer run: two frames, so
    /// the next frame is always there before the current one ends. `clear` empties it at once
    /// on a barge-in, so a longer lead costs nothing there.
    pub lead_ms: u64,
    /// Caller audio sent to STT in pieces of this length (Twilio sends 20 ms frames; sending
    /// two at a time halves the messages for at most 20 ms more recognition delay).
    pub stt_batch_ms: u64,
    /// Words (not counting backchannels like "mhm") the caller must say over the persona before
    /// it stops talking. Shorter sounds are echo, coughs or listening noises.
    pub barge_in_min_words: u32,
    /// Longest reply text the LLM is asked to continue from: older turns are dropped from the
    /// prompt first (the system prompt always stays).
    pub max_history_chars: usize,
    /// No first LLM token within this → the turn is answered with a fallback line.
    pub llm_first_token_timeout_ms: u64,
    /// Text sent to TTS without any audio back within this → TTS failure.
    pub tts_timeout_ms: u64,
    /// The caller said nothing for this long after the persona finished → "are you still there?".
    pub idle_prompt_ms: u64,
    /// ... and after this much more silence, goodbye.
    pub idle_hangup_ms: u64,
    /// Limits are checked at least this often, whatever else happens.
    pub limit_check_interval_ms: u64,
    /// Time limits start the goodbye this early, so the call ends within the limit.
    pub goodbye_lead_ms: u64,
    /// A goodbye (or voicemail message) that has not finished playing after this long is cut.
    pub goodbye_timeout_ms: u64,
    /// Caller audio kept for replay to a reconnected STT (since the last final result).
    pub stt_replay_max_ms: u64,
    /// Waiting for the voicemail beep at most this long after a machine answered.
    pub voicemail_beep_timeout_ms: u64,
    pub lines: FixedLines,
}

/// What the persona says when no LLM is involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FixedLines {
    /// The LLM failed or was too slow for one turn.
    pub fallback: String,
    /// A limit reached its warning threshold.
    pub wrap_up: String,
    /// A limit was reached.
    pub limit_goodbye: String,
    /// A provider failed twice in a row.
    pub trouble_goodbye: String,
    /// Nobody answered the idle prompt.
    pub idle_prompt: String,
    pub idle_goodbye: String,
}

impl Default for FixedLines {
    fn default() -> Self {
        Self {
            fallback: "Sorry, I lost my train of thought for a second. Could you say that again?"
                .to_owned(),
            wrap_up: "Just so you know, we only have a little time left on this call.".to_owned(),
            limit_goodbye: "We've reached the limit for this call, so I have to say goodbye \
                            now. Talk to you soon!"
                .to_owned(),
            trouble_goodbye: "I'm having some technical trouble, so I'll hang up now. Sorry \
                              about that — talk soon!"
                .to_owned(),
            idle_prompt: "Are you still there?".to_owned(),
            idle_goodbye: "It seems you've stepped away. I'll let you go — goodbye!".to_owned(),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            frame_ms: 160,
            lead_ms: 320,
            stt_batch_ms: 40,
            barge_in_min_words: 2,
            max_history_chars: 6000,
            llm_first_token_timeout_ms: 4000,
            tts_timeout_ms: 5000,
            idle_prompt_ms: 20_000,
            idle_hangup_ms: 15_000,
            limit_check_interval_ms: 30_000,
            goodbye_lead_ms: 6000,
            goodbye_timeout_ms: 12_000,
            stt_replay_max_ms: 15_000,
            voicemail_beep_timeout_ms: 30_000,
            lines: FixedLines::default(),
        }
    }
}

impl EngineConfig {
    pub fn frame_bytes(&self) -> usize {
        usize::try_from(self.frame_ms.max(20) * BYTES_PER_MS).unwrap_or(800)
    }
}
