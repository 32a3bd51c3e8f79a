//! What the Twilio simulator records about each call (served as JSON by `/sim/twilio/calls`).
//!
//! Instants are microseconds on the simulator clock ([`crate::clock`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Twilio's call statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallStatus {
    Queued,
    Ringing,
    InProgress,
    Completed,
    Busy,
    NoAnswer,
    Failed,
    Canceled,
}

impl CallStatus {
    /// As Twilio writes it (`in-progress`, `no-answer`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Queued => "queued",
            CallStatus::Ringing => "ringing",
            CallStatus::InProgress => "in-progress",
            CallStatus::Completed => "completed",
            CallStatus::Busy => "busy",
            CallStatus::NoAnswer => "no-answer",
            CallStatus::Failed => "failed",
            CallStatus::Canceled => "canceled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            CallStatus::Completed
                | CallStatus::Busy
                | CallStatus::NoAnswer
                | CallStatus::Failed
                | CallStatus::Canceled
        )
    }
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The simulated callee hung up (end of script, or the voicemail finished recording).
    CallerHangup,
    /// REST `Status=completed` while in progress.
    AppHangup,
    /// REST `Status=canceled|completed` while queued or ringing.
    Canceled,
    /// The app closed the media stream and the TwiML had nothing after `<Connect>`.
    TwimlEnd,
    /// `<Hangup/>`.
    TwimlHangup,
    /// TwiML fetch failed, answered non-200, or did not parse.
    TwimlError,
    TimeLimit,
    Busy,
    NoAnswer,
    Failed,
    /// `POST /sim/reset` ended the call.
    SimulatorReset,
}

/// One request the simulator made to the application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRecord {
    /// `twiml`, `status_callback`, `amd`, `stream_status`.
    pub kind: String,
    pub url: String,
    pub method: String,
    pub params: Vec<(String, String)>,
    pub signature: String,
    /// The HTTP status the app answered (`None`: no answer, see `error`).
    pub status: Option<u16>,
    pub error: Option<String>,
    pub sent_at: u64,
    pub answered_at: Option<u64>,
}

/// A status change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: CallStatus,
    pub at: u64,
}

/// Answering machine detection as performed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmdRecord {
    /// `sync` (AnsweredBy on the TwiML fetch) or `async` (AsyncAmdStatusCallback).
    pub mode: String,
    pub answered_by: String,
    pub decided_at: u64,
}

/// A Twilio error the call raised (in Twilio's debugger these are notifications).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallError {
    pub code: u32,
    pub message: String,
    pub at: u64,
}

/// A message from the app that Twilio would reject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// 31950 binary frame, 31924 unsupported event, 31951 malformed message.
    pub code: u32,
    pub message: String,
    /// The offending message, cut to 200 characters.
    pub excerpt: String,
    pub at: u64,
}

/// A mark echoed back to the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkEcho {
    pub name: String,
    pub at: u64,
    /// Echoed because a `clear` dropped the audio before it (not because it played).
    pub cleared: bool,
}

/// One persona segment as the callee heard it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeardSegment {
    /// `None`: audio without a decodable codec header.
    pub segment_id: Option<u32>,
    pub text: Option<String>,
    pub duration_ms: Option<u32>,
    /// Milliseconds actually played (`None` while still playing).
    pub heard_ms: Option<u64>,
    /// [`crate::codec::heard_text`] at the point playback stopped.
    pub heard_text: Option<String>,
    pub cut_by_clear: bool,
    /// When it started playing at the callee.
    pub play_started_at: Option<u64>,
}

/// One persona reply: the audio between two caller turns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyRecord {
    /// The caller line it answers (`None`: the greeting, before any line).
    pub after_line: Option<usize>,
    /// Arrival of the media frame in which its first segment began.
    pub first_frame_at: u64,
    pub segments: Vec<HeardSegment>,
    pub cut_by_clear: bool,
    /// Playback underruns inside a segment (queue empty, segment incomplete, audio then resumed), ms.
    pub gaps_ms: Vec<u64>,
}

/// One caller line as spoken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRecord {
    pub index: usize,
    pub segment_id: Option<u32>,
    pub say: String,
    pub dtmf: Option<String>,
    /// First speech frame sent.
    pub started_at: u64,
    /// Last speech frame sent.
    pub ended_at: Option<u64>,
    /// Spoken because the persona stayed silent past `max_wait_ms`.
    pub forced_by_max_wait: bool,
    /// Spoken over the persona (barge-in line).
    pub barge_in: bool,
}

/// The phone side of the media stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub url: String,
    pub name: Option<String>,
    pub stream_sid: String,
    /// `<Parameter>`s from the TwiML, sent in `start.customParameters`.
    pub custom_parameters: BTreeMap<String, String>,
    pub connected_at: Option<u64>,
    /// The handshake failed (Twilio error 31920 recorded).
    pub connect_error: Option<String>,
    pub start_sent_at: Option<u64>,
    pub stop_sent_at: Option<u64>,
    pub closed_at: Option<u64>,
    /// `caller` (stop sent by the simulator) or `app` (the app closed the socket).
    pub closed_by: Option<String>,
    pub media_frames_sent: u64,
    /// Messages received from the app, by kind (`media`, `mark`, `clear`, `binary`, `invalid`).
    pub messages_received: BTreeMap<String, u64>,
    /// μ-law bytes the app sent.
    pub audio_bytes_received: u64,
    pub violations: Vec<Violation>,
    pub marks_echoed: Vec<MarkEcho>,
    /// Instants of the `clear` messages.
    pub clears: Vec<u64>,
    pub dtmf_sent: Vec<String>,
    pub replies: Vec<ReplyRecord>,
    pub lines: Vec<LineRecord>,
    /// Largest playback gap of the call, ms.
    pub max_gap_ms: u64,
}

/// Everything about one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub sid: String,
    pub account_sid: String,
    pub to: String,
    pub from: String,
    /// The `Calls.json` form parameters as received.
    pub request: Vec<(String, String)>,
    pub status: CallStatus,
    pub status_history: Vec<StatusChange>,
    pub answered_by: Option<String>,
    pub date_created: String,
    pub date_updated: String,
    /// RFC 2822, set on answer.
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub answered_at: Option<u64>,
    pub ended_at: Option<u64>,
    /// Seconds in progress (rounded up), set at the end.
    pub duration_s: Option<u64>,
    pub webhooks: Vec<WebhookRecord>,
    pub amd: Option<AmdRecord>,
    /// `<Say>` texts executed.
    pub said: Vec<String>,
    /// Verbs the simulator skipped.
    pub unsupported_verbs: Vec<String>,
    pub errors: Vec<CallError>,
    pub stream: Option<StreamRecord>,
    pub end_reason: Option<EndReason>,
}

impl CallRecord {
    /// The webhooks of one kind, in the order they were sent.
    pub fn webhooks_of(&self, kind: &str) -> impl Iterator<Item = &WebhookRecord> {
        self.webhooks.iter().filter(move |w| w.kind == kind)
    }

    /// `CallStatus` values of the status callbacks, in delivery order.
    pub fn callback_statuses(&self) -> Vec<String> {
        self.webhooks_of("status_callback")
            .filter_map(|w| {
                w.params
                    .iter()
                    .find(|(n, _)| n == "CallStatus")
                    .map(|(_, v)| v.clone())
            })
            .collect()
    }
}
