//! The life of a phone call: its statuses, how Twilio's words map onto them, and the rule that
//! a call never moves backwards.
//!
//! Twilio reports progress through status callbacks that may arrive late, twice, or out of order
//! (each is an independent HTTP request, retried on failure). The media stream and the per-call
//! Durable Object report progress too. Whatever arrives, the stored status only ever moves
//! *forward* along
//!
//! ```text
//! initiating → calling → connected → in_progress → completed | failed | no_answer | busy | canceled | voicemail
//! ```
//!
//! and the first final status wins. [`CallStatus::rank`] is that order. The database applies the
//! same rule in one statement (`UPDATE … WHERE call_status_rank(status) < call_status_rank($new)`,
//! see migrations), so two callbacks racing each other cannot undo one another; a test in the
//! gateway checks that the SQL ranks equal these.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::validate::PhoneE164;

/// The key a phone number is known by wherever it must be remembered without being stored:
/// hex HMAC-SHA256 of the E.164 number under a server secret (the per-number rate limit's
/// Durable Object name, for example). Without the secret the key reveals nothing, and unlike a
/// plain hash it cannot be reversed by hashing every possible number.
pub fn phone_key(secret: &[u8], phone: &PhoneE164) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret).expect("invariant: HMAC accepts keys of any length");
    mac.update(phone.as_str().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Where a call is. Serialises to the names stored in `calls.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    /// The call row exists; Twilio has not been asked yet (or is being asked).
    Initiating,
    /// Twilio accepted the call and is dialling or ringing.
    Calling,
    /// The callee answered (Twilio's `in-progress`).
    Connected,
    /// The media stream is up and the conversation is running.
    InProgress,
    /// Ended after a conversation (or a hang-up once connected).
    Completed,
    /// Could not be placed or broke down; `error_message` says why.
    Failed,
    /// Rang out.
    NoAnswer,
    /// The line was busy.
    Busy,
    /// Ended before it was answered (by the user, or by the system).
    Canceled,
    /// An answering machine took the call; a message may have been left.
    Voicemail,
}

impl CallStatus {
    /// Every status, in rank order (final ones last).
    pub const ALL: [CallStatus; 10] = [
        CallStatus::Initiating,
        CallStatus::Calling,
        CallStatus::Connected,
        CallStatus::InProgress,
        CallStatus::Completed,
        CallStatus::Failed,
        CallStatus::NoAnswer,
        CallStatus::Busy,
        CallStatus::Canceled,
        CallStatus::Voicemail,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            CallStatus::Initiating => "initiating",
            CallStatus::Calling => "calling",
            CallStatus::Connected => "connected",
            CallStatus::InProgress => "in_progress",
            CallStatus::Completed => "completed",
            CallStatus::Failed => "failed",
            CallStatus::NoAnswer => "no_answer",
            CallStatus::Busy => "busy",
            CallStatus::Canceled => "canceled",
            CallStatus::Voicemail => "voicemail",
        }
    }

    /// Position in the call's life. Every final status has the same, highest rank: once a call
    /// has ended, no later report changes how it ended.
    pub const fn rank(self) -> u8 {
        match self {
            CallStatus::Initiating => 0,
            CallStatus::Calling => 1,
            CallStatus::Connected => 2,
            CallStatus::InProgress => 3,
            CallStatus::Completed
            | CallStatus::Failed
            | CallStatus::NoAnswer
            | CallStatus::Busy
            | CallStatus::Canceled
            | CallStatus::Voicemail => 4,
        }
    }

    pub const fn is_final(self) -> bool {
        self.rank() == 4
    }

    /// Whether a call now in `self` may be moved to `next`: only strictly forward.
    pub const fn may_advance_to(self, next: CallStatus) -> bool {
        next.rank() > self.rank()
    }

    /// Whether the callee picked up at some point (costs and credits then apply).
    pub const fn was_answered(self) -> bool {
        matches!(
            self,
            CallStatus::Connected
                | CallStatus::InProgress
                | CallStatus::Completed
                | CallStatus::Voicemail
        )
    }

    /// The status a Twilio `CallStatus` value (status callbacks, the Calls resource) means for
    /// us, or `None` for a value Twilio does not document.
    ///
    /// `in-progress` means answered (`connected`); our own `in_progress` is set when the media
    /// stream starts, which Twilio cannot know about.
    pub fn from_twilio(value: &str) -> Option<CallStatus> {
        Some(match value {
            "queued" | "initiated" | "ringing" => CallStatus::Calling,
            "in-progress" | "answered" => CallStatus::Connected,
            "completed" => CallStatus::Completed,
            "busy" => CallStatus::Busy,
            "failed" => CallStatus::Failed,
            "no-answer" => CallStatus::NoAnswer,
            "canceled" => CallStatus::Canceled,
            _ => return None,
        })
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string named no call status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown call status")]
pub struct UnknownCallStatus;

impl FromStr for CallStatus {
    type Err = UnknownCallStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CallStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or(UnknownCallStatus)
    }
}

/// What an answering-machine detection result says about who picked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnsweredBy {
    Human,
    /// A machine, and its greeting is over (`machine_end_beep`, `_silence`, `_other`): a message
    /// left now is recorded.
    MachineReady,
    /// A machine whose greeting is still playing (`machine_start`).
    MachineGreeting,
    Fax,
    Unknown,
}

impl AnsweredBy {
    /// Reads Twilio's `AnsweredBy` values.
    pub fn from_twilio(value: &str) -> AnsweredBy {
        match value {
            "human" => AnsweredBy::Human,
            "machine_end_beep" | "machine_end_silence" | "machine_end_other" => {
                AnsweredBy::MachineReady
            }
            "machine_start" => AnsweredBy::MachineGreeting,
            "fax" => AnsweredBy::Fax,
            _ => AnsweredBy::Unknown,
        }
    }

    pub const fn is_machine(self) -> bool {
        matches!(
            self,
            AnsweredBy::MachineReady | AnsweredBy::MachineGreeting | AnsweredBy::Fax
        )
    }
}

/// What the persona does when an answering machine picks up (the user's choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoicemailAction {
    /// Wait for the beep, leave a short message, hang up.
    #[default]
    LeaveMessage,
    /// Hang up at once.
    HangUp,
}

impl VoicemailAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            VoicemailAction::LeaveMessage => "leave_message",
            VoicemailAction::HangUp => "hang_up",
        }
    }
}

impl FromStr for VoicemailAction {
    type Err = UnknownCallStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "leave_message" => Ok(VoicemailAction::LeaveMessage),
            "hang_up" => Ok(VoicemailAction::HangUp),
            _ => Err(UnknownCallStatus),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_only_move_forward_and_the_first_final_wins() {
        use CallStatus::*;
        assert!(Initiating.may_advance_to(Calling));
        assert!(Calling.may_advance_to(Connected));
        assert!(Connected.may_advance_to(InProgress));
        assert!(InProgress.may_advance_to(Completed));
        assert!(Initiating.may_advance_to(Failed));
        assert!(Calling.may_advance_to(NoAnswer));
        // Late or repeated reports change nothing.
        assert!(!Connected.may_advance_to(Calling));
        assert!(!InProgress.may_advance_to(Connected));
        assert!(!Completed.may_advance_to(InProgress));
        assert!(!Completed.may_advance_to(Failed));
        assert!(!Busy.may_advance_to(Completed));
        for status in CallStatus::ALL {
            assert!(!status.may_advance_to(status), "{status} to itself");
        }
    }

    #[test]
    fn names_round_trip_and_match_serde() {
        for status in CallStatus::ALL {
            assert_eq!(status.as_str().parse::<CallStatus>(), Ok(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert!("in-progress".parse::<CallStatus>().is_err());
    }

    #[test]
    fn twilio_statuses_map_onto_ours() {
        assert_eq!(
            CallStatus::from_twilio("ringing"),
            Some(CallStatus::Calling)
        );
        assert_eq!(
            CallStatus::from_twilio("in-progress"),
            Some(CallStatus::Connected)
        );
        assert_eq!(
            CallStatus::from_twilio("no-answer"),
            Some(CallStatus::NoAnswer)
        );
        assert_eq!(
            CallStatus::from_twilio("completed"),
            Some(CallStatus::Completed)
        );
        assert_eq!(CallStatus::from_twilio("exploded"), None);
    }

    #[test]
    fn phone_keys_are_keyed_stable_and_reveal_nothing() {
        let phone = PhoneE164::parse("+14155550123").unwrap();
        let key = phone_key(b"secret-1", &phone);
        assert_eq!(key.len(), 64);
        assert_eq!(key, phone_key(b"secret-1", &phone));
        assert_ne!(key, phone_key(b"secret-2", &phone));
        assert!(!key.contains("4155550123"));
    }

    #[test]
    fn answering_machine_results() {
        assert_eq!(AnsweredBy::from_twilio("human"), AnsweredBy::Human);
        assert_eq!(
            AnsweredBy::from_twilio("machine_end_beep"),
            AnsweredBy::MachineReady
        );
        assert!(AnsweredBy::from_twilio("machine_start").is_machine());
        assert!(!AnsweredBy::from_twilio("unknown").is_machine());
    }
}
