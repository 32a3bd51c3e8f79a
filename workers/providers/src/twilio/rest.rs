//! The Calls REST API (`/2010-04-01/Accounts/{AccountSid}/Calls.json`) and status callbacks.

use callmeback_domain::calls::{AnsweredBy, CallStatus};
use serde::Deserialize;

/// The status callback events we ask for: all four.
pub const STATUS_CALLBACK_EVENTS: [&str; 4] = ["initiated", "ringing", "answered", "completed"];

/// What a new outbound call needs.
#[derive(Debug, Clone)]
pub struct CreateCall<'a> {
    pub to: &'a str,
    pub from: &'a str,
    /// TwiML URL (`/twilio/voice/{call_id}`).
    pub url: &'a str,
    pub status_callback: &'a str,
    /// Seconds to ring before giving up.
    pub timeout_secs: u32,
    /// Hard cap on the call's length (the backstop behind our own limits).
    pub time_limit_secs: u32,
    /// Answering-machine detection, asynchronously (the stream starts at once).
    pub amd_callback: Option<&'a str>,
}

/// The path of the Calls resource of an account.
pub fn calls_path(account_sid: &str) -> String {
    format!("/2010-04-01/Accounts/{account_sid}/Calls.json")
}

/// The path of one call (hang-up, fetch).
pub fn call_path(account_sid: &str, call_sid: &str) -> String {
    format!("/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json")
}

/// The form body of a Calls.json POST.
pub fn create_call_form(call: &CreateCall<'_>) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("To", call.to)
        .append_pair("From", call.from)
        .append_pair("Url", call.url)
        .append_pair("Method", "POST")
        .append_pair("StatusCallback", call.status_callback)
        .append_pair("StatusCallbackMethod", "POST");
    for event in STATUS_CALLBACK_EVENTS {
        form.append_pair("StatusCallbackEvent", event);
    }
    form.append_pair("Timeout", &call.timeout_secs.to_string())
        .append_pair("TimeLimit", &call.time_limit_secs.to_string());
    if let Some(callback) = call.amd_callback {
        form.append_pair("MachineDetection", "DetectMessageEnd")
            .append_pair("AsyncAmd", "true")
            .append_pair("AsyncAmdStatusCallback", callback)
            .append_pair("AsyncAmdStatusCallbackMethod", "POST");
    }
    form.finish()
}

/// The form body that ends a call (`Status=completed`; `canceled` only works before answer).
pub fn hang_up_form() -> String {
    "Status=completed".to_owned()
}

/// The parts of a Call resource we read.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct CallResource {
    pub sid: String,
    pub status: String,
}

/// Twilio's error body.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TwilioError {
    pub code: Option<u32>,
    pub message: String,
    #[serde(default)]
    pub more_info: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
}

impl TwilioError {
    /// A sentence safe to store and show (phone numbers from Twilio's message are masked).
    pub fn readable(&self) -> String {
        let code = self
            .code
            .map(|code| format!(" (Twilio error {code})"))
            .unwrap_or_default();
        format!("{}{code}", mask_numbers(&self.message))
    }
}

/// Replaces every run of six or more digits (phone numbers in Twilio's messages) with `…`.
fn mask_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() >= 6 {
            out.push('…');
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
        } else {
            flush(&mut digits, &mut out);
            out.push(ch);
        }
    }
    flush(&mut digits, &mut out);
    out
}

/// What a status callback reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    pub call_sid: String,
    /// Twilio's `CallStatus`, mapped (None for an undocumented value).
    pub status: Option<CallStatus>,
    pub raw_status: String,
    pub duration_secs: Option<u32>,
    pub sequence_number: Option<u32>,
}

/// Reads a status callback's form parameters.
pub fn status_report(params: &[(String, String)]) -> Option<StatusReport> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let call_sid = get("CallSid")?.to_owned();
    let raw_status = get("CallStatus")?.to_owned();
    Some(StatusReport {
        status: CallStatus::from_twilio(&raw_status),
        raw_status,
        call_sid,
        duration_secs: get("CallDuration").and_then(|d| d.parse().ok()),
        sequence_number: get("SequenceNumber").and_then(|n| n.parse().ok()),
    })
}

/// Reads an answering-machine detection callback (`AnsweredBy`).
pub fn amd_result(params: &[(String, String)]) -> Option<(String, AnsweredBy)> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    Some((
        get("CallSid")?.to_owned(),
        AnsweredBy::from_twilio(get("AnsweredBy")?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_call_form_asks_for_everything_the_call_needs() {
        let form = create_call_form(&CreateCall {
            to: "+15551234567",
            from: "+15557654321",
            url: "https://api.example.com/twilio/voice/call_1",
            status_callback: "https://api.example.com/twilio/status/call_1",
            timeout_secs: 25,
            time_limit_secs: 600,
            amd_callback: Some("https://api.example.com/twilio/amd/call_1"),
        });
        let pairs: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| {
            pairs
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("To"), vec!["+15551234567"]);
        assert_eq!(
            get("StatusCallbackEvent"),
            vec!["initiated", "ringing", "answered", "completed"]
        );
        assert_eq!(get("TimeLimit"), vec!["600"]);
        assert_eq!(get("MachineDetection"), vec!["DetectMessageEnd"]);
        assert_eq!(get("AsyncAmd"), vec!["true"]);
        assert!(form.contains("To=%2B15551234567"), "{form}");
    }

    #[test]
    fn errors_are_readable_without_phone_numbers() {
        let error: TwilioError = serde_json::from_str(
            r#"{"code": 21211, "message": "The 'To' number +15551234567 is not a valid phone number.", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}"#,
        )
        .unwrap();
        assert_eq!(
            error.readable(),
            "The 'To' number +… is not a valid phone number. (Twilio error 21211)"
        );
    }

    #[test]
    fn status_callbacks_map_to_call_statuses() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1"),
            ("CallStatus", "completed"),
            ("CallDuration", "42"),
            ("SequenceNumber", "3"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let report = status_report(&params).unwrap();
        assert_eq!(report.status, Some(CallStatus::Completed));
        assert_eq!(report.duration_secs, Some(42));
        assert_eq!(report.sequence_number, Some(3));
        assert!(status_report(&[]).is_none());
    }
}
