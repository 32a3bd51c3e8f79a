//! The Worker's clock and its one way of writing timestamps.
//!
//! Workers have no system clock in Rust (`std::time::SystemTime::now()` and chrono's `Utc::now()`
//! panic on `wasm32-unknown-unknown`), so the time comes from JavaScript's `Date.now()`, here and
//! nowhere else. Timestamps are formatted by chrono from unix seconds, never from a clock.

use chrono::{DateTime, SecondsFormat};

/// Unix time in seconds, from the Workers runtime.
pub fn now_secs() -> i64 {
    (js_sys::Date::now() / 1000.0) as i64
}

/// Unix seconds as RFC 3339 UTC with whole seconds (`2026-11-22T10:00:00Z`), for years
/// 1970..=9999; `None` outside them.
pub fn rfc3339_secs(unix_secs: i64) -> Option<String> {
    rfc3339(unix_secs, SecondsFormat::Secs)
}

/// Unix seconds as RFC 3339 UTC with milliseconds (`2026-11-22T10:00:00.000Z`, the shape of
/// JavaScript's `toISOString`), for years 1970..=9999; `None` outside them.
pub fn rfc3339_millis(unix_secs: i64) -> Option<String> {
    rfc3339(unix_secs, SecondsFormat::Millis)
}

/// The last second of 9999-12-31: four-digit years only.
const MAX_UNIX_SECS: i64 = 253_402_300_799;

fn rfc3339(unix_secs: i64, precision: SecondsFormat) -> Option<String> {
    if !(0..=MAX_UNIX_SECS).contains(&unix_secs) {
        return None;
    }
    DateTime::from_timestamp(unix_secs, 0).map(|time| time.to_rfc3339_opts(precision, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_format_as_utc_dates() {
        assert_eq!(rfc3339_secs(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(
            rfc3339_secs(951_782_400).as_deref(),
            Some("2000-02-29T00:00:00Z")
        );
        assert_eq!(
            rfc3339_secs(1_763_806_245).as_deref(),
            Some("2025-11-22T10:10:45Z")
        );
        assert_eq!(
            rfc3339_secs(253_402_300_799).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
        assert_eq!(rfc3339_secs(-1), None);
        assert_eq!(rfc3339_secs(253_402_300_800), None);
    }

    #[test]
    fn session_expiries_keep_the_javascript_iso_shape() {
        assert_eq!(
            rfc3339_millis(1_763_806_245).as_deref(),
            Some("2025-11-22T10:10:45.000Z")
        );
    }
}
