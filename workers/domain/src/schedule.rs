//! Scheduled and recurring calls: "call me every weekday at 07:30 Berlin time".
//!
//! A schedule is a local time of day in an IANA time zone plus a rule saying on which local
//! dates it fires. The scheduler stores the next firing as an instant (`next_run_at`); after each
//! run it asks [`next_occurrence`] for the following one. Keeping the *local* time as the anchor
//! (not the UTC instant of the first run) is what makes "07:30" stay 07:30 across daylight-saving
//! changes.
//!
//! Two local times need a rule, and the rule is the one RFC 5545 and ECMAScript Temporal call
//! "compatible":
//! - a time that does not exist (clocks jump from 02:00 to 03:00, the schedule says 02:30) fires
//!   at the same distance after the jump, 03:30 — late rather than skipped;
//! - a time that happens twice (clocks fall back from 03:00 to 02:00, the schedule says 02:30)
//!   fires once, at the first of the two.
//!
//! Time zones come from `chrono-tz` (the IANA database compiled in), so the Worker needs no
//! lookup and tests need no system zoneinfo.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc,
    Weekday,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::validate::ValidationError;

/// On which local dates a recurring schedule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recurrence {
    /// Every day.
    Daily,
    /// Monday to Friday.
    Weekdays,
    /// The chosen days of the week.
    Days(DaySet),
}

impl Recurrence {
    /// Whether the schedule fires on `date`.
    pub fn fires_on(self, date: NaiveDate) -> bool {
        match self {
            Recurrence::Daily => true,
            Recurrence::Weekdays => !matches!(date.weekday(), Weekday::Sat | Weekday::Sun),
            Recurrence::Days(days) => days.contains(date.weekday()),
        }
    }

    /// The `scheduled_calls.recurrence_rule` value.
    pub const fn rule_name(self) -> &'static str {
        match self {
            Recurrence::Daily => "daily",
            Recurrence::Weekdays => "weekdays",
            Recurrence::Days(_) => "weekly",
        }
    }

    /// Rebuilds a recurrence from its stored form (rule name and, for `weekly`, the day mask).
    pub fn from_stored(rule: &str, days_mask: Option<i64>) -> Option<Recurrence> {
        match rule {
            "daily" => Some(Recurrence::Daily),
            "weekdays" => Some(Recurrence::Weekdays),
            "weekly" => {
                let mask = u8::try_from(days_mask?).ok()?;
                DaySet::from_mask(mask).map(Recurrence::Days)
            }
            _ => None,
        }
    }
}

/// A non-empty set of weekdays, stored as a bit mask (Monday = bit 0 … Sunday = bit 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaySet(u8);

impl DaySet {
    /// `None` for an empty set or bits beyond Sunday.
    pub fn from_mask(mask: u8) -> Option<DaySet> {
        (mask != 0 && mask < 0x80).then_some(DaySet(mask))
    }

    /// From day names (`mon`, `tuesday`, …; case-insensitive), or the offending name.
    pub fn from_names<'a>(
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<DaySet, ValidationError> {
        let mut mask = 0u8;
        for name in names {
            let day: Weekday = name
                .trim()
                .parse()
                .map_err(|_| ValidationError::InvalidDay)?;
            mask |= 1 << day.num_days_from_monday();
        }
        DaySet::from_mask(mask).ok_or(ValidationError::Required)
    }

    pub const fn mask(self) -> u8 {
        self.0
    }

    pub fn contains(self, day: Weekday) -> bool {
        self.0 & (1 << day.num_days_from_monday()) != 0
    }

    /// Three-letter lower-case names, Monday first (`["mon", "wed"]`), for API responses.
    pub fn names(self) -> Vec<&'static str> {
        const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        (0..7)
            .filter(|bit| self.0 & (1 << bit) != 0)
            .map(|bit| NAMES[bit])
            .collect()
    }
}

/// A validated IANA time zone name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZoneName(Tz);

impl TimeZoneName {
    /// Accepts exact IANA names such as `Europe/Berlin` or `UTC`.
    pub fn parse(name: &str) -> Result<TimeZoneName, ValidationError> {
        name.parse::<Tz>()
            .map(TimeZoneName)
            .map_err(|_| ValidationError::InvalidTimeZone)
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    pub fn tz(self) -> Tz {
        self.0
    }
}

impl fmt::Display for TimeZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TimeZoneName {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TimeZoneName::parse(s)
    }
}

/// Parses a local time of day `HH:MM` (24-hour clock; seconds are not accepted).
pub fn parse_local_time(text: &str) -> Result<NaiveTime, ValidationError> {
    let invalid = ValidationError::InvalidTimeOfDay;
    let (hours, minutes) = text.trim().split_once(':').ok_or(invalid)?;
    if hours.len() != 2 || minutes.len() != 2 {
        return Err(invalid);
    }
    let hours: u32 = hours.parse().map_err(|_| invalid)?;
    let minutes: u32 = minutes.parse().map_err(|_| invalid)?;
    NaiveTime::from_hms_opt(hours, minutes, 0).ok_or(invalid)
}

/// The instant at which local `date` + `time` in `tz` happens, with the "compatible" rule for
/// times that do not exist or exist twice (see the module docs).
pub fn resolve_local(tz: Tz, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let local = NaiveDateTime::new(date, time);
    match tz.from_local_datetime(&local) {
        LocalResult::Single(instant) => instant.with_timezone(&Utc),
        LocalResult::Ambiguous(earliest, _) => earliest.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: read the wall time with the offset in force just before the gap, which
            // lands as far after the jump as the wall time was after its start.
            let before = NaiveDateTime::new(date, time) - chrono::Duration::hours(24);
            let offset_before = match tz.from_local_datetime(&before) {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.offset().fix(),
                LocalResult::None => {
                    chrono::FixedOffset::east_opt(0).expect("zero offset is valid")
                }
            };
            let utc = local - offset_before;
            DateTime::<Utc>::from_naive_utc_and_offset(utc, Utc)
        }
    }
}

use chrono::Offset as _;

/// The first firing of a recurring schedule strictly after `after`.
///
/// Walks local dates from the one `after` falls on; at most eight are looked at, since every
/// recurrence fires at least once a week.
pub fn next_occurrence(
    recurrence: Recurrence,
    local_time: NaiveTime,
    tz: Tz,
    after: DateTime<Utc>,
) -> DateTime<Utc> {
    let mut date = after.with_timezone(&tz).date_naive();
    // The day before too: a time late in the evening in a zone behind UTC can fall on the
    // previous local date of `after`'s UTC date; starting one day early costs one comparison.
    date = date.pred_opt().unwrap_or(date);
    for _ in 0..10 {
        if recurrence.fires_on(date) {
            let candidate = resolve_local(tz, date, local_time);
            if candidate > after {
                return candidate;
            }
        }
        date = date
            .checked_add_days(Days::new(1))
            .expect("dates far from the end of time");
    }
    unreachable!("every recurrence fires at least once in eight consecutive days")
}

/// A one-off firing at a local date and time: its instant.
pub fn one_off(date: NaiveDate, local_time: NaiveTime, tz: Tz) -> DateTime<Utc> {
    resolve_local(tz, date, local_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn tz(name: &str) -> Tz {
        TimeZoneName::parse(name).unwrap().tz()
    }

    fn time(text: &str) -> NaiveTime {
        parse_local_time(text).unwrap()
    }

    #[test]
    fn weekdays_at_0730_berlin_skip_the_weekend() {
        // Friday 2026-11-27 08:00 Berlin (07:00 UTC): next is Monday 07:30 Berlin = 06:30 UTC.
        let next = next_occurrence(
            Recurrence::Weekdays,
            time("07:30"),
            tz("Europe/Berlin"),
            utc("2026-11-27T07:00:00Z"),
        );
        assert_eq!(next, utc("2026-11-30T06:30:00Z"));
        // Just before the Friday firing: the Friday firing.
        let next = next_occurrence(
            Recurrence::Weekdays,
            time("07:30"),
            tz("Europe/Berlin"),
            utc("2026-11-27T06:00:00Z"),
        );
        assert_eq!(next, utc("2026-11-27T06:30:00Z"));
    }

    #[test]
    fn local_time_stays_put_across_a_daylight_saving_change() {
        // Berlin leaves summer time on 2026-10-25: 07:30 is 05:30 UTC before, 06:30 UTC after.
        let berlin = tz("Europe/Berlin");
        let first = next_occurrence(
            Recurrence::Daily,
            time("07:30"),
            berlin,
            utc("2026-10-24T00:00:00Z"),
        );
        assert_eq!(first, utc("2026-10-24T05:30:00Z"));
        let second = next_occurrence(Recurrence::Daily, time("07:30"), berlin, first);
        assert_eq!(second, utc("2026-10-25T06:30:00Z"));
        // New York moves a week later; its 07:30 is 11:30 UTC before and 12:30 UTC after.
        let new_york = tz("America/New_York");
        let before = next_occurrence(
            Recurrence::Daily,
            time("07:30"),
            new_york,
            utc("2026-10-31T12:00:00Z"),
        );
        assert_eq!(before, utc("2026-11-01T12:30:00Z"));
        let earlier = next_occurrence(
            Recurrence::Daily,
            time("07:30"),
            new_york,
            utc("2026-10-30T12:00:00Z"),
        );
        assert_eq!(earlier, utc("2026-10-31T11:30:00Z"));
    }

    #[test]
    fn a_time_in_the_spring_gap_fires_after_the_jump() {
        // 2027-03-28 Berlin: 02:00 → 03:00. 02:30 does not exist; it fires at 03:30 CEST = 01:30 UTC.
        let next = next_occurrence(
            Recurrence::Daily,
            time("02:30"),
            tz("Europe/Berlin"),
            utc("2027-03-27T12:00:00Z"),
        );
        assert_eq!(next, utc("2027-03-28T01:30:00Z"));
        // The day after, 02:30 CEST = 00:30 UTC as usual.
        let after = next_occurrence(Recurrence::Daily, time("02:30"), tz("Europe/Berlin"), next);
        assert_eq!(after, utc("2027-03-29T00:30:00Z"));
    }

    #[test]
    fn a_time_that_happens_twice_fires_once() {
        // 2026-11-01 New York: 02:00 EDT → 01:00 EST, so 01:30 happens at 05:30 and 06:30 UTC.
        let ny = tz("America/New_York");
        let first = next_occurrence(
            Recurrence::Daily,
            time("01:30"),
            ny,
            utc("2026-10-31T12:00:00Z"),
        );
        assert_eq!(first, utc("2026-11-01T05:30:00Z"));
        let next = next_occurrence(Recurrence::Daily, time("01:30"), ny, first);
        assert_eq!(
            next,
            utc("2026-11-02T06:30:00Z"),
            "the second 01:30 is skipped"
        );
    }

    #[test]
    fn chosen_days_and_zones_behind_utc() {
        let days = DaySet::from_names(["mon", "Thursday"]).unwrap();
        assert_eq!(days.names(), vec!["mon", "thu"]);
        // Los Angeles, Thursday 2026-11-26 22:00 local = Friday 06:00 UTC; a 23:00 firing on
        // Thursdays is still today in Los Angeles.
        let next = next_occurrence(
            Recurrence::Days(days),
            time("23:00"),
            tz("America/Los_Angeles"),
            utc("2026-11-27T06:00:00Z"),
        );
        assert_eq!(next, utc("2026-11-27T07:00:00Z"));
        let then = next_occurrence(
            Recurrence::Days(days),
            time("23:00"),
            tz("America/Los_Angeles"),
            next,
        );
        assert_eq!(then, utc("2026-12-01T07:00:00Z"), "Monday 23:00 PST");
    }

    #[test]
    fn input_validation() {
        assert!(TimeZoneName::parse("Europe/Berlin").is_ok());
        assert!(TimeZoneName::parse("Mars/Olympus").is_err());
        assert!(TimeZoneName::parse("XYZ+3").is_err());
        assert!(parse_local_time("7:30").is_err());
        assert!(parse_local_time("24:00").is_err());
        assert!(parse_local_time("07:60").is_err());
        assert_eq!(
            parse_local_time("23:59").unwrap(),
            NaiveTime::from_hms_opt(23, 59, 0).unwrap()
        );
        assert!(DaySet::from_names(["funday"]).is_err());
        assert!(DaySet::from_names([]).is_err());
        assert_eq!(
            Recurrence::from_stored("weekly", Some(0b101)),
            Some(Recurrence::Days(DaySet(0b101)))
        );
        assert_eq!(Recurrence::from_stored("weekly", None), None);
        assert_eq!(Recurrence::from_stored("hourly", None), None);
    }
}
