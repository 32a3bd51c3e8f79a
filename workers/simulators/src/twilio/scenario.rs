//! What happens when the simulator "dials" a number: the scenario of the `To` number.
//!
//! JSON shape (every field optional, defaults shown):
//! `{"outcome":"answer","ring_ms":1000,"answered_by":"human","machine_greeting_ms":3000,
//!   "script":[{"say":"…","pause_ms":600},{"say":"…","barge_in_after_ms":800,"dtmf":"5"}],
//!   "hangup":{"caller":{"after_ms":1500}},"max_wait_ms":15000,"duplicate_callbacks":false,
//!   "reverse_late_callbacks":false,"rest_error":null}`; `"hangup":"app"` leaves it to the app.

use serde::{Deserialize, Serialize};

/// How the call attempt ends up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A person answers and follows the script.
    #[default]
    Answer,
    Busy,
    NoAnswer,
    Failed,
    /// Voicemail answers: a greeting, a tone, then it records.
    Machine,
}

/// One thing the callee says.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Line {
    /// The words (may be empty for a DTMF-only line).
    pub say: String,
    /// Speak after the persona has been silent (playback queue empty) this long. The default
    /// (600 ms) applies when neither this nor `barge_in_after_ms` is set.
    pub pause_ms: Option<u64>,
    /// Speak this long after the persona's reply started playing, over it.
    pub barge_in_after_ms: Option<u64>,
    /// Digits pressed as the line starts (one `dtmf` message each).
    pub dtmf: Option<String>,
}

/// Default pause before a line.
pub const DEFAULT_PAUSE_MS: u64 = 600;
/// Default wait after the last reply before the caller hangs up.
pub const DEFAULT_HANGUP_AFTER_MS: u64 = 1500;

fn default_hangup_after_ms() -> u64 {
    DEFAULT_HANGUP_AFTER_MS
}

/// Who ends an answered call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hangup {
    /// After the last line, the caller waits for the reply, then hangs up `after_ms` after it ended.
    Caller {
        #[serde(default = "default_hangup_after_ms")]
        after_ms: u64,
    },
    /// The caller never hangs up; the app must (REST `Status=completed`, closing the stream, or
    /// `<Hangup/>`), or TimeLimit will.
    App,
}

impl Default for Hangup {
    fn default() -> Self {
        Hangup::Caller {
            after_ms: DEFAULT_HANGUP_AFTER_MS,
        }
    }
}

/// A Twilio error the `Calls.json` POST itself answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestError {
    pub status: u16,
    pub code: u32,
    pub message: String,
}

/// The behaviour of one destination number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Scenario {
    pub outcome: Outcome,
    /// Ringing time before the outcome (capped by the request's `Timeout`).
    pub ring_ms: u64,
    /// AMD result for an answered call (`human`, `unknown`, `fax`, …).
    pub answered_by: String,
    /// Length of the voicemail greeting before the tone (outcome `machine`).
    pub machine_greeting_ms: u64,
    pub script: Vec<Line>,
    pub hangup: Hangup,
    /// The caller speaks anyway when the persona has not started a reply this long after a line.
    pub max_wait_ms: u64,
    /// Deliver every status callback twice (idempotency tests).
    pub duplicate_callbacks: bool,
    /// Deliver `ringing` after `answered` (ordering tests).
    pub reverse_late_callbacks: bool,
    pub rest_error: Option<RestError>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            outcome: Outcome::Answer,
            ring_ms: 1000,
            answered_by: "human".to_owned(),
            machine_greeting_ms: 3000,
            script: Vec::new(),
            hangup: Hangup::default(),
            max_wait_ms: 15_000,
            duplicate_callbacks: false,
            reverse_late_callbacks: false,
            rest_error: None,
        }
    }
}

impl Scenario {
    /// The scenario of numbers without one: a person answers and has a short friendly chat.
    pub fn default_conversation() -> Self {
        let line = |say: &str| Line {
            say: say.to_owned(),
            ..Line::default()
        };
        Self {
            script: vec![
                line("Hi, thanks for calling me back."),
                line("I had a pretty busy week at work, but it went well."),
                line("That sounds good. Thank you, bye for now."),
            ],
            ..Self::default()
        }
    }
}

/// The voicemail greeting text (outcome `machine`).
pub const MACHINE_GREETING: &str =
    "Hi, you have reached the voicemail of this number. Please leave a message after the tone.";
