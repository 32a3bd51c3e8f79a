//! The callee's playback queue: what Twilio does with the audio the app sends.
//!
//! Received audio is appended to a queue that plays at real time (8 bytes per ms) from the
//! moment it arrives, plus an optional jitter-buffer delay. Marks sit in the queue between audio
//! and are reached when the audio before them has played. `clear` drops everything queued at once
//! and returns the pending marks (Twilio echoes them immediately).
//!
//! Pure logic on explicit instants (microseconds), so it is unit-tested without sleeping. Audio is
//! tracked as positions in the stream of received bytes: `played <= received`.

use std::collections::VecDeque;

/// One byte of 8 kHz μ-law lasts 125 µs.
const US_PER_BYTE: u64 = 125;

#[derive(Debug)]
enum Entry {
    /// Audio up to stream position `end`, playable from `available_us`.
    Audio {
        end: u64,
        available_us: u64,
    },
    Mark(String),
}

/// What happened while playback advanced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayEvent {
    /// Playback reached a mark.
    Mark { name: String, at_us: u64 },
    /// The queue ran empty at `at_us`, after playing up to `position`.
    Idle { at_us: u64, position: u64 },
    /// Audio started playing again at `at_us` from `position`.
    Resumed { at_us: u64, position: u64 },
}

/// The playback queue.
#[derive(Debug)]
pub struct Playback {
    jitter_us: u64,
    received: u64,
    played: u64,
    /// Playback has been simulated up to this instant.
    clock_us: u64,
    idle: bool,
    idle_since_us: u64,
    queue: VecDeque<Entry>,
}

impl Playback {
    pub fn new(start_us: u64, jitter_ms: u64) -> Self {
        Self {
            jitter_us: jitter_ms * 1000,
            received: 0,
            played: 0,
            clock_us: start_us,
            idle: true,
            idle_since_us: start_us,
            queue: VecDeque::new(),
        }
    }

    /// Bytes received so far (the stream position the next audio starts at).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes played (or dropped by `clear`) so far.
    pub fn played(&self) -> u64 {
        self.played
    }

    /// Nothing left to play (as of the last [`advance`](Self::advance)).
    pub fn is_idle(&self) -> bool {
        self.idle
    }

    /// When the queue last ran empty (meaningful while idle).
    pub fn idle_since_us(&self) -> u64 {
        self.idle_since_us
    }

    /// Queues `len` bytes that arrived at `now_us`. Call [`advance`](Self::advance) to `now_us` first.
    pub fn push_audio(&mut self, len: usize, now_us: u64) {
        if len == 0 {
            return;
        }
        self.received += len as u64;
        self.queue.push_back(Entry::Audio {
            end: self.received,
            available_us: now_us + self.jitter_us,
        });
    }

    /// Queues a mark after the audio queued so far.
    pub fn push_mark(&mut self, name: String) {
        self.queue.push_back(Entry::Mark(name));
    }

    /// Drops all queued audio; returns the marks that were pending, in order, and the stream
    /// position playback had reached (everything after it was dropped unheard).
    pub fn clear(&mut self, now_us: u64, events: &mut Vec<PlayEvent>) -> (Vec<String>, u64) {
        self.advance(now_us, events);
        let heard_up_to = self.played;
        let marks = self
            .queue
            .drain(..)
            .filter_map(|e| match e {
                Entry::Mark(name) => Some(name),
                Entry::Audio { .. } => None,
            })
            .collect();
        self.played = self.received;
        self.clock_us = self.clock_us.max(now_us);
        if !self.idle {
            self.idle = true;
            self.idle_since_us = now_us;
        }
        (marks, heard_up_to)
    }

    /// When the next queued mark will be reached if audio keeps playing (for timers).
    pub fn next_mark_due_us(&self) -> Option<u64> {
        let mut at = self.clock_us;
        let mut position = self.played;
        for entry in &self.queue {
            match entry {
                Entry::Mark(_) => return Some(at),
                Entry::Audio { end, available_us } => {
                    at = at.max(*available_us) + (end - position) * US_PER_BYTE;
                    position = *end;
                }
            }
        }
        None
    }

    /// Plays audio up to `now_us`, appending what happened to `events`.
    pub fn advance(&mut self, now_us: u64, events: &mut Vec<PlayEvent>) {
        if now_us < self.clock_us {
            return;
        }
        loop {
            match self.queue.front() {
                None => {
                    self.go_idle(events);
                    self.clock_us = now_us;
                    return;
                }
                Some(Entry::Mark(_)) => {
                    let Some(Entry::Mark(name)) = self.queue.pop_front() else {
                        unreachable!("front was a mark");
                    };
                    events.push(PlayEvent::Mark {
                        name,
                        at_us: self.clock_us,
                    });
                }
                Some(&Entry::Audio { end, available_us }) => {
                    if self.clock_us < available_us {
                        self.go_idle(events);
                        if available_us > now_us {
                            self.clock_us = now_us;
                            return;
                        }
                        self.clock_us = available_us;
                    }
                    if self.idle {
                        self.idle = false;
                        events.push(PlayEvent::Resumed {
                            at_us: self.clock_us,
                            position: self.played,
                        });
                    }
                    let playable = (now_us - self.clock_us) / US_PER_BYTE;
                    let n = playable.min(end - self.played);
                    self.played += n;
                    self.clock_us += n * US_PER_BYTE;
                    if self.played == end {
                        self.queue.pop_front();
                    } else {
                        return;
                    }
                }
            }
        }
    }

    fn go_idle(&mut self, events: &mut Vec<PlayEvent>) {
        if !self.idle {
            self.idle = true;
            self.idle_since_us = self.clock_us;
            events.push(PlayEvent::Idle {
                at_us: self.clock_us,
                position: self.played,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plays_in_real_time_and_reaches_marks_in_order() {
        let mut p = Playback::new(0, 0);
        let mut ev = Vec::new();
        p.push_audio(800, 0); // 100 ms
        p.push_mark("a".to_owned());
        p.push_audio(800, 0);
        p.push_mark("b".to_owned());
        assert_eq!(p.next_mark_due_us(), Some(100_000));
        p.advance(50_000, &mut ev);
        assert_eq!(p.played(), 400);
        assert_eq!(
            ev,
            vec![PlayEvent::Resumed {
                at_us: 0,
                position: 0
            }]
        );
        ev.clear();
        p.advance(150_000, &mut ev);
        assert_eq!(
            ev,
            vec![PlayEvent::Mark {
                name: "a".to_owned(),
                at_us: 100_000
            }]
        );
        ev.clear();
        p.advance(400_000, &mut ev);
        assert_eq!(
            ev,
            vec![
                PlayEvent::Mark {
                    name: "b".to_owned(),
                    at_us: 200_000
                },
                PlayEvent::Idle {
                    at_us: 200_000,
                    position: 1600
                }
            ]
        );
        assert!(p.is_idle());
        assert_eq!(p.idle_since_us(), 200_000);
    }

    #[test]
    fn late_audio_leaves_a_gap_then_resumes() {
        let mut p = Playback::new(0, 0);
        let mut ev = Vec::new();
        p.push_audio(160, 0); // 20 ms
        p.advance(30_000, &mut ev);
        p.push_audio(160, 30_000);
        p.advance(60_000, &mut ev);
        assert_eq!(
            ev,
            vec![
                PlayEvent::Resumed {
                    at_us: 0,
                    position: 0
                },
                PlayEvent::Idle {
                    at_us: 20_000,
                    position: 160
                },
                PlayEvent::Resumed {
                    at_us: 30_000,
                    position: 160
                },
                PlayEvent::Idle {
                    at_us: 50_000,
                    position: 320
                },
            ]
        );
    }

    #[test]
    fn jitter_buffer_delays_the_start() {
        let mut p = Playback::new(0, 60);
        let mut ev = Vec::new();
        p.push_audio(160, 0);
        p.advance(50_000, &mut ev);
        assert_eq!(p.played(), 0);
        p.advance(70_000, &mut ev);
        assert_eq!(p.played(), 80);
        assert_eq!(
            ev,
            vec![PlayEvent::Resumed {
                at_us: 60_000,
                position: 0
            }]
        );
    }

    #[test]
    fn clear_drops_audio_and_returns_pending_marks() {
        let mut p = Playback::new(0, 0);
        let mut ev = Vec::new();
        p.push_audio(8000, 0); // 1 s
        p.push_mark("m1".to_owned());
        p.push_audio(800, 0);
        p.push_mark("m2".to_owned());
        let (marks, heard) = p.clear(250_000, &mut ev);
        assert_eq!(marks, vec!["m1".to_owned(), "m2".to_owned()]);
        assert_eq!(heard, 2000);
        assert_eq!(p.played(), p.received());
        assert!(p.is_idle());
        ev.clear();
        // New audio after a clear plays from its arrival.
        p.push_audio(80, 300_000);
        p.advance(320_000, &mut ev);
        assert_eq!(
            ev[0],
            PlayEvent::Resumed {
                at_us: 300_000,
                position: 8800
            }
        );
    }
}
