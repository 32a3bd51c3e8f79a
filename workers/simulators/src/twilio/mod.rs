//! The Twilio simulator: the Calls REST API, signed webhooks (TwiML fetch, status callbacks,
//! answering machine detection) and the phone side of `<Connect><Stream>` Media Streams.
//!
//! A call is driven by the [`Scenario`] of its `To` number: ring, then answer (a simulated callee
//! who follows a script of lines), or a machine, or busy / no-answer / failed. Everything the
//! application did is recorded in a [`CallRecord`](records::CallRecord).

pub mod call;
pub mod phone;
pub mod playback;
pub mod records;
pub mod rest;
pub mod scenario;
pub mod signature;
pub mod twiml;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::sync::lock;
use crate::tasks::Tasks;
use crate::timings::Timings;
use records::{CallRecord, CallStatus, EndReason};
pub use scenario::{Hangup, Line, Outcome, RestError, Scenario};

/// Twilio side configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TwilioConfig {
    /// The account the REST API authenticates (HTTP Basic user) and whose token signs webhooks.
    pub account_sid: String,
    pub auth_token: String,
    /// Extra delay before received audio starts playing at the callee (a jitter buffer).
    pub jitter_buffer_ms: u64,
    /// Speaking rate of the simulated callee.
    pub ms_per_char: u32,
    /// From `initiated` to `ringing`.
    pub ringing_delay_ms: u64,
    /// How long answering machine detection takes to decide `human` (or `machine_start`).
    pub amd_decision_ms: u64,
}

impl Default for TwilioConfig {
    fn default() -> Self {
        Self {
            account_sid: "AC00000000000000000000000000000000".to_owned(),
            auth_token: "sim-auth-token".to_owned(),
            jitter_buffer_ms: 0,
            ms_per_char: crate::codec::DEFAULT_MS_PER_CHAR,
            ringing_delay_ms: 100,
            amd_decision_ms: 1000,
        }
    }
}

/// One call's shared state: its record, and the channels its driver listens and reports on.
#[derive(Debug)]
pub(crate) struct CallEntry {
    pub(crate) record: Mutex<CallRecord>,
    /// Set to ask the call to end (REST `Status=completed|canceled`, TimeLimit, shutdown).
    pub(crate) end_request: watch::Sender<Option<EndReason>>,
    /// The call's status, for REST updates that wait for the hang-up to take effect.
    pub(crate) status: watch::Sender<CallStatus>,
    /// True once the call ended and its last callback was delivered.
    pub(crate) ended: watch::Sender<bool>,
}

impl CallEntry {
    pub(crate) fn snapshot(&self) -> CallRecord {
        lock(&self.record).clone()
    }

    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut CallRecord) -> R) -> R {
        f(&mut lock(&self.record))
    }
}

/// Shared state of the Twilio simulator.
#[derive(Debug)]
pub(crate) struct TwilioState {
    pub(crate) config: Mutex<TwilioConfig>,
    pub(crate) scenarios: Mutex<HashMap<String, Scenario>>,
    pub(crate) default_scenario: Mutex<Scenario>,
    /// Calls in creation order.
    pub(crate) calls: Mutex<Vec<Arc<CallEntry>>>,
    pub(crate) http: reqwest::Client,
    pub(crate) timings: Arc<Timings>,
    pub(crate) tasks: Arc<Tasks>,
}

impl TwilioState {
    pub(crate) fn new(config: TwilioConfig, timings: Arc<Timings>, tasks: Arc<Tasks>) -> Self {
        Self {
            config: Mutex::new(config),
            scenarios: Mutex::new(HashMap::new()),
            default_scenario: Mutex::new(Scenario::default_conversation()),
            calls: Mutex::new(Vec::new()),
            http: reqwest::Client::builder()
                .user_agent("TwilioProxy/1.1")
                .timeout(Duration::from_secs(15))
                .build()
                .expect("a reqwest client with rustls builds"),
            timings,
            tasks,
        }
    }

    pub(crate) fn config(&self) -> TwilioConfig {
        lock(&self.config).clone()
    }

    pub(crate) fn scenario_for(&self, to: &str) -> Scenario {
        lock(&self.scenarios)
            .get(to)
            .cloned()
            .unwrap_or_else(|| lock(&self.default_scenario).clone())
    }

    pub(crate) fn find(&self, sid: &str) -> Option<Arc<CallEntry>> {
        lock(&self.calls)
            .iter()
            .find(|c| lock(&c.record).sid == sid)
            .cloned()
    }

    pub(crate) fn reset(&self) {
        lock(&self.scenarios).clear();
        *lock(&self.default_scenario) = Scenario::default_conversation();
        let calls = std::mem::take(&mut *lock(&self.calls));
        for call in calls {
            call.end_request
                .send_replace(Some(EndReason::SimulatorReset));
        }
    }
}

/// Library handle on the Twilio simulator (see also `/sim/twilio/...`).
#[derive(Debug, Clone)]
pub struct TwilioHandle {
    pub(crate) state: Arc<TwilioState>,
}

/// Why waiting for a call failed.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("no call with sid {0}")]
    UnknownCall(String),
    #[error("call {0} did not end within {1:?}")]
    Timeout(String, Duration),
}

impl WaitError {
    /// Stable code for the control API.
    pub fn code(&self) -> &'static str {
        match self {
            WaitError::UnknownCall(_) => "unknown_call",
            WaitError::Timeout(..) => "timeout",
        }
    }
}

impl TwilioHandle {
    /// The scenario for calls to `to` (E.164), from the next call on.
    pub fn set_scenario(&self, to: &str, scenario: Scenario) {
        lock(&self.state.scenarios).insert(to.to_owned(), scenario);
    }

    /// The scenario for numbers without their own.
    pub fn set_default_scenario(&self, scenario: Scenario) {
        *lock(&self.state.default_scenario) = scenario;
    }

    pub fn config(&self) -> TwilioConfig {
        self.state.config()
    }

    /// Changes the knobs (jitter buffer, speaking rate, delays) for calls started from now on.
    pub fn set_config(&self, config: TwilioConfig) {
        *lock(&self.state.config) = config;
    }

    /// All calls so far, oldest first.
    pub fn calls(&self) -> Vec<CallRecord> {
        let calls = lock(&self.state.calls).clone();
        calls.iter().map(|c| c.snapshot()).collect()
    }

    pub fn call(&self, sid: &str) -> Option<CallRecord> {
        self.state.find(sid).map(|c| c.snapshot())
    }

    /// Waits until the call ended and its final status callback was delivered.
    pub async fn wait_for_end(
        &self,
        sid: &str,
        timeout: Duration,
    ) -> Result<CallRecord, WaitError> {
        let entry = self
            .state
            .find(sid)
            .ok_or_else(|| WaitError::UnknownCall(sid.to_owned()))?;
        let mut ended = entry.ended.subscribe();
        match tokio::time::timeout(timeout, ended.wait_for(|e| *e)).await {
            Ok(_) => Ok(entry.snapshot()),
            Err(_) => Err(WaitError::Timeout(sid.to_owned(), timeout)),
        }
    }
}
