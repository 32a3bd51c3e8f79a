//! Per-segment instants for the latency benchmark (`GET /sim/timings`).
//!
//! The benchmark measures what the Worker adds: from the STT final result for a caller line
//! leaving the STT simulator to the first audio frame of the persona's reply reaching the
//! simulated callee. Each caller line is one codec segment with a process-unique id, so the phone
//! (which speaks it and hears the reply) and the STT simulator (which recognises it) record their
//! instants under the same key, all on the clock of [`crate::clock`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::sync::lock;

/// The instants of one caller line (microseconds since the simulator clock started).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentTiming {
    pub segment_id: u32,
    /// The call whose callee spoke it (`None`: audio the STT simulator heard from no known call).
    pub call_sid: Option<String>,
    /// Index of the script line (0-based).
    pub line_index: Option<usize>,
    pub text: Option<String>,
    /// First speech frame sent by the phone.
    pub speech_start_at: Option<u64>,
    /// Last speech frame sent by the phone.
    pub speech_end_at: Option<u64>,
    /// The final `Results` covering this segment was written to the STT socket.
    pub stt_final_sent_at: Option<u64>,
    /// The `UtteranceEnd` after this segment was written to the STT socket.
    pub utterance_end_sent_at: Option<u64>,
    /// The first media frame of the persona's reply after this line reached the phone.
    pub reply_first_frame_at: Option<u64>,
    /// `reply_first_frame_at - stt_final_sent_at`: the pipeline's own added latency.
    pub final_to_reply_us: Option<i64>,
    /// `reply_first_frame_at - speech_end_at`: what the callee experiences.
    pub speech_end_to_reply_us: Option<i64>,
}

impl SegmentTiming {
    fn derive(&mut self) {
        let diff = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => i64::try_from(a)
                .ok()
                .zip(i64::try_from(b).ok())
                .map(|(a, b)| a - b),
            _ => None,
        };
        self.final_to_reply_us = diff(self.reply_first_frame_at, self.stt_final_sent_at);
        self.speech_end_to_reply_us = diff(self.reply_first_frame_at, self.speech_end_at);
    }
}

/// The timings of one call, in segment order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallTimings {
    pub call_sid: String,
    pub segments: Vec<SegmentTiming>,
}

/// Everything recorded so far (`GET /sim/timings`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimingsReport {
    /// What the instants count: always "microseconds since simulator start".
    pub clock: String,
    pub calls: Vec<CallTimings>,
    /// Segments seen by the STT simulator that no call registered.
    pub unassigned: Vec<SegmentTiming>,
}

/// The shared store.
#[derive(Debug, Default)]
pub struct Timings {
    segments: Mutex<HashMap<u32, SegmentTiming>>,
}

impl Timings {
    fn with(&self, segment_id: u32, update: impl FnOnce(&mut SegmentTiming)) {
        let mut segments = lock(&self.segments);
        let entry = segments.entry(segment_id).or_insert_with(|| SegmentTiming {
            segment_id,
            ..SegmentTiming::default()
        });
        update(entry);
    }

    pub(crate) fn register_line(
        &self,
        segment_id: u32,
        call_sid: &str,
        line_index: usize,
        text: &str,
    ) {
        self.with(segment_id, |t| {
            t.call_sid = Some(call_sid.to_owned());
            t.line_index = Some(line_index);
            t.text = Some(text.to_owned());
        });
    }

    pub(crate) fn speech_start(&self, segment_id: u32, at_us: u64) {
        self.with(segment_id, |t| t.speech_start_at = Some(at_us));
    }

    pub(crate) fn speech_end(&self, segment_id: u32, at_us: u64) {
        self.with(segment_id, |t| t.speech_end_at = Some(at_us));
    }

    /// Keeps the first final only (a segment is finalised once).
    pub(crate) fn stt_final_sent(&self, segment_id: u32, at_us: u64) {
        self.with(segment_id, |t| {
            t.stt_final_sent_at.get_or_insert(at_us);
        });
    }

    pub(crate) fn utterance_end_sent(&self, segment_id: u32, at_us: u64) {
        self.with(segment_id, |t| {
            t.utterance_end_sent_at.get_or_insert(at_us);
        });
    }

    pub(crate) fn reply_first_frame(&self, segment_id: u32, at_us: u64) {
        self.with(segment_id, |t| {
            t.reply_first_frame_at.get_or_insert(at_us);
        });
    }

    pub fn report(&self) -> TimingsReport {
        let segments = lock(&self.segments);
        let mut calls: BTreeMap<String, Vec<SegmentTiming>> = BTreeMap::new();
        let mut unassigned = Vec::new();
        for timing in segments.values() {
            let mut timing = timing.clone();
            timing.derive();
            match timing.call_sid.clone() {
                Some(sid) => calls.entry(sid).or_default().push(timing),
                None => unassigned.push(timing),
            }
        }
        drop(segments);
        let mut calls: Vec<CallTimings> = calls
            .into_iter()
            .map(|(call_sid, mut segments)| {
                segments.sort_by_key(|s| (s.line_index, s.segment_id));
                CallTimings { call_sid, segments }
            })
            .collect();
        calls.sort_by_key(|c| c.segments.first().and_then(|s| s.speech_start_at));
        unassigned.sort_by_key(|s| s.segment_id);
        TimingsReport {
            clock: "microseconds since simulator start".to_owned(),
            calls,
            unassigned,
        }
    }

    pub(crate) fn clear(&self) {
        lock(&self.segments).clear();
    }
}
