//! Outbound audio: paced to real time, marked, and able to say what the caller has heard.
//!
//! Twilio plays what it receives as it arrives. Dumping a whole reply at once would leave
//! seconds of audio in Twilio's buffer, which a `clear` then has to discard and which makes
//! "what has the caller heard?" unanswerable. So the playout keeps at most [`lead_ms`] of audio
//! ahead of the caller's ear: it sends a frame, follows it with a mark, and sends the next when
//! the buffer has room. Twilio echoes each mark once the audio before it has played, which
//! re-anchors the model of where playback is.
//!
//! The first frame of a reply never waits: whatever audio exists is sent at once, because
//! time-to-first-sound is what the caller notices.
//!
//! [`lead_ms`]: crate::config::EngineConfig::lead_ms

use std::collections::VecDeque;

use crate::config::BYTES_PER_MS;
use crate::events::{Action, Millis};

/// The pacing and mark bookkeeping of one call's outbound audio.
#[derive(Debug, Clone)]
pub struct Playout {
    frame_bytes: usize,
    lead_ms: u64,
    /// Audio received from TTS, not yet sent.
    queue: VecDeque<u8>,
    /// Bytes of the current utterance sent so far.
    sent: u64,
    /// When the telephony side will have played everything sent so far.
    buffer_end: Millis,
    /// Marks sent and not yet echoed: (sequence number, utterance byte offset it follows).
    marks: VecDeque<(u32, u64)>,
    next_mark: u32,
    /// Utterance byte offset confirmed played by a mark echo.
    confirmed: u64,
    first_sent_at: Option<Millis>,
}

impl Playout {
    pub fn new(frame_bytes: usize, lead_ms: u64) -> Self {
        Self {
            frame_bytes: frame_bytes.max(160),
            lead_ms,
            queue: VecDeque::new(),
            sent: 0,
            buffer_end: 0,
            marks: VecDeque::new(),
            next_mark: 1,
            confirmed: 0,
            first_sent_at: None,
        }
    }

    /// Starts a new utterance: offsets and "first sent" restart; marks of the previous one that
    /// are still outstanding keep counting as played when they echo.
    pub fn begin_utterance(&mut self) {
        self.queue.clear();
        self.sent = 0;
        self.confirmed = 0;
        self.first_sent_at = None;
    }

    /// Adds synthesised audio to the queue.
    pub fn push(&mut self, audio: &[u8]) {
        self.queue.extend(audio);
    }

    /// Sends as much as the lead allows. Returns the time it next needs to run, if audio is left.
    pub fn pump(&mut self, now: Millis, out: &mut Vec<Action>) -> Option<Millis> {
        while !self.queue.is_empty() {
            let take = self.queue.len().min(self.frame_bytes);
            let duration = take as u64 / BYTES_PER_MS;
            let buffered = self.buffered_ms(now);
            // Never more than the lead ahead of the ear, except that an empty buffer always
            // takes a frame (a frame longer than the lead must still go).
            if buffered > 0 && buffered + duration > self.lead_ms {
                break;
            }
            let audio: Vec<u8> = self.queue.drain(..take).collect();
            self.buffer_end = self.buffer_end.max(now) + duration;
            self.sent += take as u64;
            let seq = self.next_mark;
            self.next_mark = self.next_mark.wrapping_add(1);
            self.marks.push_back((seq, self.sent));
            self.first_sent_at.get_or_insert(now);
            out.push(Action::PlayAudio {
                audio,
                mark: mark_name(seq),
            });
        }
        (!self.queue.is_empty()).then(|| {
            // Wake when a whole frame fits under the lead again.
            let frame_ms = (self.queue.len().min(self.frame_bytes)) as u64 / BYTES_PER_MS;
            (self.buffer_end + frame_ms)
                .saturating_sub(self.lead_ms)
                .max(now + 5)
        })
    }

    /// A mark echoed. Returns false for a mark that is not ours or no longer outstanding.
    pub fn on_mark(&mut self, name: &str, now: Millis) -> bool {
        let Some(seq) = parse_mark(name) else {
            return false;
        };
        let Some(position) = self.marks.iter().position(|&(s, _)| s == seq) else {
            return false;
        };
        let (_, offset) = self.marks[position];
        self.marks.drain(..=position);
        if offset <= self.sent {
            self.confirmed = self.confirmed.max(offset);
            // Everything up to `offset` has played by now: the rest plays after it.
            let unplayed_ms = (self.sent - offset) / BYTES_PER_MS;
            self.buffer_end = now + unplayed_ms;
        }
        true
    }

    /// Bytes of the current utterance the caller has heard by `now` (never less than a mark
    /// confirmed, never more than was sent).
    pub fn heard_bytes(&self, now: Millis) -> u64 {
        let unplayed = self.buffered_ms(now) * BYTES_PER_MS;
        self.sent
            .saturating_sub(unplayed)
            .max(self.confirmed)
            .min(self.sent)
    }

    /// Barge-in: forget the queue and outstanding marks. Returns the bytes heard.
    pub fn clear(&mut self, now: Millis) -> u64 {
        let heard = self.heard_bytes(now);
        self.queue.clear();
        self.marks.clear();
        self.buffer_end = now;
        heard
    }

    /// Milliseconds of sent audio not yet played at `now`.
    pub fn buffered_ms(&self, now: Millis) -> u64 {
        self.buffer_end.saturating_sub(now)
    }

    /// When the last audio sent will have finished playing.
    pub fn playback_end(&self) -> Millis {
        self.buffer_end
    }

    /// Nothing queued and nothing left playing.
    pub fn is_idle(&self, now: Millis) -> bool {
        self.queue.is_empty() && self.buffer_end <= now
    }

    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    pub fn sent_bytes(&self) -> u64 {
        self.sent
    }

    pub fn first_sent_at(&self) -> Option<Millis> {
        self.first_sent_at
    }
}

fn mark_name(seq: u32) -> String {
    format!("m{seq}")
}

fn parse_mark(name: &str) -> Option<u32> {
    name.strip_prefix('m')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent_ms(out: &[Action]) -> Vec<u64> {
        out.iter()
            .filter_map(|action| match action {
                Action::PlayAudio { audio, .. } => Some(audio.len() as u64 / BYTES_PER_MS),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn sends_up_to_the_lead_then_paces_in_real_time() {
        let mut playout = Playout::new(800, 200);
        playout.push(&[0x10; 8 * 1000]); // one second
        let mut out = Vec::new();
        let wake = playout.pump(1000, &mut out);
        assert_eq!(
            sent_ms(&out),
            vec![100, 100],
            "200 ms lead in 100 ms frames"
        );
        assert_eq!(
            wake,
            Some(1100),
            "room for the next frame opens after one frame played"
        );
        out.clear();
        assert_eq!(playout.pump(1050, &mut out), Some(1100));
        assert!(
            sent_ms(&out).is_empty(),
            "150 ms still buffered at t=1050? {out:?}"
        );
        // At t=1100 one frame has played: one more goes.
        out.clear();
        playout.pump(1100, &mut out);
        assert_eq!(sent_ms(&out), vec![100]);
        // Run the clock: everything is sent by the time it is needed, never early.
        let mut t = 1100;
        let mut total = 300;
        while let Some(next) = playout.pump(t, &mut out) {
            assert!(playout.buffered_ms(t) <= 200);
            t = next;
        }
        total += sent_ms(&out).iter().sum::<u64>() - 100;
        assert_eq!(total, 1000);
        assert_eq!(playout.playback_end(), 2000);
    }

    #[test]
    fn the_first_frame_goes_at_once_even_if_short() {
        let mut playout = Playout::new(800, 200);
        playout.push(&[0x10; 160]); // 20 ms
        let mut out = Vec::new();
        assert_eq!(playout.pump(500, &mut out), None);
        assert_eq!(sent_ms(&out), vec![20]);
        assert_eq!(playout.first_sent_at(), Some(500));
    }

    #[test]
    fn marks_reanchor_playback_and_bound_what_was_heard() {
        let mut playout = Playout::new(800, 300);
        playout.push(&[0x10; 8 * 300]);
        let mut out = Vec::new();
        playout.pump(0, &mut out);
        let marks: Vec<String> = out
            .iter()
            .filter_map(|a| match a {
                Action::PlayAudio { mark, .. } => Some(mark.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(marks, vec!["m1", "m2", "m3"]);
        // Estimated: at t=150, 150 ms heard.
        assert_eq!(playout.heard_bytes(150), 150 * 8);
        // Network delay: mark 1 echoes late at t=180 (only 100 ms played by then).
        assert!(playout.on_mark("m1", 180));
        assert_eq!(playout.heard_bytes(180), 100 * 8);
        assert_eq!(playout.playback_end(), 380);
        assert!(!playout.on_mark("m1", 190), "echoed twice");
        assert!(!playout.on_mark("x", 190));
        // Barge-in at t=230: 150 ms heard.
        assert_eq!(playout.clear(230), 150 * 8);
        assert!(playout.is_idle(230));
        assert!(!playout.on_mark("m2", 240), "cleared marks no longer count");
    }
}
