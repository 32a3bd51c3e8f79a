//! One process-wide monotonic clock, so instants recorded by different simulators compare.
//!
//! Every record and timing carries microseconds since this clock started (the first
//! [`crate::Simulators::start`] of the process, or the first reading, whichever came first). The
//! latency benchmark subtracts instants taken by the STT simulator from instants taken by the
//! Twilio phone, so they must come from the same clock.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The instant the clock reads zero.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`].
pub fn now_us() -> u64 {
    at_us(Instant::now())
}

/// `instant` as microseconds since [`epoch`] (0 for instants before it).
pub fn at_us(instant: Instant) -> u64 {
    u64::try_from(instant.saturating_duration_since(epoch()).as_micros()).unwrap_or(u64::MAX)
}

/// The instant `us` microseconds after [`epoch`].
pub fn instant_at(us: u64) -> Instant {
    epoch() + Duration::from_micros(us)
}
