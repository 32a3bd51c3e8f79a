//! Provider cost of a call, in exact integer arithmetic.
//!
//! Every call is paid for four times: Twilio carries the audio, Deepgram transcribes it, Cerebras
//! writes the replies, and ElevenLabs speaks them. The per-call cost is written to
//! `call_cost_breakdowns`, which has `NUMERIC(10,2)` cent columns. Budgets are checked against
//! it while the call is still running.
//!
//! Floats would turn 1.30 ¢/min into 1.2999…, and the error grows every time a running total is
//! updated. So all amounts here are [`Cents`], an `i64` count of **micro-cents** (10⁻⁶ ¢). Each
//! price in the rate card is an exact integer in that unit. A usage amount is priced pro rata
//! with a single rounding (half up) to the nearest micro-cent, and the result is rounded to two
//! decimals only when it is shown or stored.
//!
//! Rates (2025; the design doc, §8.1):
//!
//! | provider   | price                          | metered by              |
//! |------------|--------------------------------|-------------------------|
//! | Twilio     | $0.0130 / min outbound         | call seconds, pro rata  |
//! | Deepgram   | $0.0043 / min of audio         | audio milliseconds      |
//! | Cerebras   | $0.10 / 1M input, $0.10 / 1M output tokens | tokens      |
//! | ElevenLabs | $0.15 / 1K characters          | characters              |
//!
//! Twilio bills per started minute. The design deliberately estimates its cost pro rata by the
//! second, so these figures are the cost of the audio actually used, not a copy of the invoice.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An amount of money in US cents, held exactly as an integer number of micro-cents.
///
/// Adding amounts saturates instead of wrapping. `i64::MAX` micro-cents is about $92 million,
/// which a single account never reaches, and a saturated figure is easier to debug than one
/// that has wrapped round to negative.
///
/// Serialised as the integer count of micro-cents (for storage between steps, not for APIs,
/// which show [`Cents::to_decimal_string`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Cents(i64);

/// Micro-cents in one cent.
pub const MICRO_CENTS_PER_CENT: i64 = 1_000_000;

impl Cents {
    pub const ZERO: Cents = Cents(0);

    pub const fn from_micro_cents(micro_cents: i64) -> Self {
        Cents(micro_cents)
    }

    /// Whole cents, e.g. the `INTEGER` cent columns of budgets.
    pub const fn from_whole_cents(cents: i64) -> Self {
        Cents(cents.saturating_mul(MICRO_CENTS_PER_CENT))
    }

    pub const fn micro_cents(self) -> i64 {
        self.0
    }

    /// Rounded to whole cents, half away from zero, for the `INTEGER` cent columns
    /// (`calls.actual_cost_cents`).
    pub fn round_to_whole_cents(self) -> i64 {
        let (negative, magnitude) = self.rounded_magnitude(0);
        let cents = i64::try_from(magnitude).expect("invariant: |i64| / 10^6 rounded fits in i64");
        if negative { -cents } else { cents }
    }

    /// Two-decimal string such as `"6.50"`, rounded half away from zero. It fits the
    /// `NUMERIC(10,2)` cost columns and what users see.
    pub fn to_decimal_string(self) -> String {
        self.to_decimal_places(2)
    }

    /// Four-decimal string such as `"0.0200"`, for internal reports where sub-cent LLM costs
    /// would otherwise show as zero.
    pub fn to_decimal_string_4(self) -> String {
        self.to_decimal_places(4)
    }

    fn to_decimal_places(self, places: u32) -> String {
        let (negative, magnitude) = self.rounded_magnitude(places);
        let scale = 10u64.pow(places);
        let sign = if negative && magnitude != 0 { "-" } else { "" };
        let whole = magnitude / scale;
        let fraction = magnitude % scale;
        let width = places as usize;
        format!("{sign}{whole}.{fraction:0width$}")
    }

    /// The absolute value in units of 10^-places cents, rounded half up, plus the sign.
    fn rounded_magnitude(self, places: u32) -> (bool, u64) {
        let unit = 10u64.pow(6 - places);
        let magnitude = self.0.unsigned_abs();
        let mut quotient = magnitude / unit;
        if (magnitude % unit) * 2 >= unit {
            quotient += 1;
        }
        (self.0 < 0, quotient)
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_decimal_string())
    }
}

impl Add for Cents {
    type Output = Cents;

    fn add(self, rhs: Cents) -> Cents {
        Cents(self.0.saturating_add(rhs.0))
    }
}

impl AddAssign for Cents {
    fn add_assign(&mut self, rhs: Cents) {
        *self = *self + rhs;
    }
}

impl Sum for Cents {
    fn sum<I: Iterator<Item = Cents>>(iter: I) -> Cents {
        iter.fold(Cents::ZERO, Add::add)
    }
}

/// A decimal cent string could not be read as [`Cents`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a decimal amount of cents with at most 6 decimals")]
pub struct ParseCentsError;

impl ParseCentsError {
    pub const fn code(&self) -> &'static str {
        "invalid_amount"
    }
}

/// Reads decimal strings such as `"13.17"`, `"-0.5"` or `"42"`, which is how `NUMERIC` columns
/// come back over the wire. It is exact up to 6 decimals; anything finer is refused, because
/// rounding it would silently change the stored value.
impl FromStr for Cents {
    type Err = ParseCentsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (negative, unsigned) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || fraction.len() > 6 {
            return Err(ParseCentsError);
        }
        if unsigned.ends_with('.') {
            return Err(ParseCentsError);
        }
        let whole: i64 = whole.parse().map_err(|_| ParseCentsError)?;
        let fraction_micro: i64 = if fraction.is_empty() {
            0
        } else {
            let digits: i64 = fraction.parse().map_err(|_| ParseCentsError)?;
            let padding = u32::try_from(6 - fraction.len()).expect("invariant: at most 6 digits");
            digits * 10i64.pow(padding)
        };
        let magnitude = whole
            .checked_mul(MICRO_CENTS_PER_CENT)
            .and_then(|micro| micro.checked_add(fraction_micro))
            .ok_or(ParseCentsError)?;
        Ok(Cents(if negative { -magnitude } else { magnitude }))
    }
}

/// Metered usage of one call (or part of one, during a running budget check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Seconds the Twilio leg was connected.
    pub twilio_seconds: u64,
    /// Audio sent to Deepgram, in milliseconds. Audio is streamed in 20 ms frames, so whole
    /// seconds would be too coarse.
    pub deepgram_audio_ms: u64,
    pub llm_input_tokens: u64,
    pub llm_output_tokens: u64,
    /// Characters sent to ElevenLabs for synthesis.
    pub tts_characters: u64,
}

impl Add for Usage {
    type Output = Usage;

    fn add(self, rhs: Usage) -> Usage {
        Usage {
            twilio_seconds: self.twilio_seconds.saturating_add(rhs.twilio_seconds),
            deepgram_audio_ms: self.deepgram_audio_ms.saturating_add(rhs.deepgram_audio_ms),
            llm_input_tokens: self.llm_input_tokens.saturating_add(rhs.llm_input_tokens),
            llm_output_tokens: self.llm_output_tokens.saturating_add(rhs.llm_output_tokens),
            tts_characters: self.tts_characters.saturating_add(rhs.tts_characters),
        }
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, rhs: Usage) {
        *self = *self + rhs;
    }
}

/// A price of `micro_cents` for every `per_units` units of some meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub micro_cents: i64,
    pub per_units: u64,
}

impl Rate {
    /// Price of `quantity` units, pro rata, rounded half up to the nearest micro-cent.
    pub fn price(self, quantity: u64) -> Cents {
        // u128 cannot overflow: u64 × i64 fits in 127 bits.
        let numerator = u128::from(quantity) * u128::from(self.micro_cents.unsigned_abs());
        let per_units = u128::from(self.per_units.max(1));
        let rounded = (numerator + per_units / 2) / per_units;
        let magnitude = i64::try_from(rounded).unwrap_or(i64::MAX);
        Cents(if self.micro_cents < 0 {
            -magnitude
        } else {
            magnitude
        })
    }
}

/// The rates of all four providers. Provider prices change, so the rates are data, not literals
/// spread through the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateCard {
    pub twilio_per_second: Rate,
    pub deepgram_per_ms: Rate,
    pub llm_input_per_token: Rate,
    pub llm_output_per_token: Rate,
    pub tts_per_character: Rate,
}

/// The 2025 rates from the design document.
pub const RATES_2025: RateCard = RateCard {
    // $0.0130/min = 1.30 ¢ per 60 s.
    twilio_per_second: Rate {
        micro_cents: 1_300_000,
        per_units: 60,
    },
    // $0.0043/min = 0.43 ¢ per 60 000 ms.
    deepgram_per_ms: Rate {
        micro_cents: 430_000,
        per_units: 60_000,
    },
    // $0.10 per 1M tokens = 10 ¢ per 1 000 000 tokens.
    llm_input_per_token: Rate {
        micro_cents: 10_000_000,
        per_units: 1_000_000,
    },
    llm_output_per_token: Rate {
        micro_cents: 10_000_000,
        per_units: 1_000_000,
    },
    // $0.15 per 1K characters = 15 ¢ per 1 000 characters.
    tts_per_character: Rate {
        micro_cents: 15_000_000,
        per_units: 1_000,
    },
};

/// Cost of a call split by provider, as stored in `call_cost_breakdowns`.
///
/// `total` is the exact sum of the exact parts. Once each figure is rounded to two decimals for
/// storage, the stored total can differ from the sum of the stored parts by up to 2 ¢ (half a
/// cent per part). That is expected, and the stored total is the right one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CostBreakdown {
    pub twilio: Cents,
    pub deepgram: Cents,
    /// Input and output tokens together; the table has one LLM column.
    pub cerebras: Cents,
    pub elevenlabs: Cents,
    pub total: Cents,
}

impl CostBreakdown {
    /// Cost of `usage` at the current rates.
    pub fn from_usage(usage: &Usage) -> Self {
        Self::from_usage_at(usage, &RATES_2025)
    }

    pub fn from_usage_at(usage: &Usage, rates: &RateCard) -> Self {
        let twilio = rates.twilio_per_second.price(usage.twilio_seconds);
        let deepgram = rates.deepgram_per_ms.price(usage.deepgram_audio_ms);
        let cerebras = rates.llm_input_per_token.price(usage.llm_input_tokens)
            + rates.llm_output_per_token.price(usage.llm_output_tokens);
        let elevenlabs = rates.tts_per_character.price(usage.tts_characters);
        CostBreakdown {
            twilio,
            deepgram,
            cerebras,
            elevenlabs,
            total: twilio + deepgram + cerebras + elevenlabs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cents(s: &str) -> Cents {
        s.parse().expect("test literal is a valid amount")
    }

    #[test]
    fn design_doc_example_call() {
        // §8.1: a 5-minute call, 800 input + 1200 output tokens, 300 characters spoken.
        let usage = Usage {
            twilio_seconds: 300,
            deepgram_audio_ms: 300_000,
            llm_input_tokens: 800,
            llm_output_tokens: 1200,
            tts_characters: 300,
        };
        let cost = CostBreakdown::from_usage(&usage);
        assert_eq!(cost.twilio.to_decimal_string(), "6.50");
        assert_eq!(cost.deepgram.to_decimal_string(), "2.15");
        assert_eq!(cost.elevenlabs.to_decimal_string(), "4.50");
        // The doc's INSERT says 0.08 ¢ for Cerebras and 13.23 ¢ in total, but its own formula
        // ((800 + 1200) / 1e6 × 10 ¢) gives 0.02 ¢. 0.08 ¢ would mean $0.40 per 1M tokens. We
        // follow the stated rate.
        assert_eq!(cost.cerebras.to_decimal_string_4(), "0.0200");
        assert_eq!(cost.cerebras.to_decimal_string(), "0.02");
        assert_eq!(cost.total.to_decimal_string(), "13.17");
        assert_eq!(cost.total.micro_cents(), 13_170_000);
    }

    #[test]
    fn empty_usage_costs_nothing() {
        assert_eq!(
            CostBreakdown::from_usage(&Usage::default()),
            CostBreakdown::default()
        );
    }

    #[test]
    fn twilio_is_pro_rata_by_the_second() {
        let one_second = RATES_2025.twilio_per_second.price(1);
        // 1.30 ¢ / 60 = 0.021666… ¢, rounded half up to the micro-cent.
        assert_eq!(one_second.micro_cents(), 21_667);
        assert_eq!(
            RATES_2025.twilio_per_second.price(60),
            Cents::from_micro_cents(1_300_000)
        );
        assert_eq!(
            RATES_2025.twilio_per_second.price(90).to_decimal_string(),
            "1.95"
        );
    }

    #[test]
    fn pricing_a_total_matches_whole_minutes_for_every_minute_count() {
        // Pricing the whole quantity at once keeps the error to a single rounding, whatever the
        // length, so whole minutes come out exact.
        for minutes in 0..=600u64 {
            let expected = Cents::from_micro_cents(1_300_000 * minutes as i64);
            assert_eq!(RATES_2025.twilio_per_second.price(minutes * 60), expected);
            let expected = Cents::from_micro_cents(430_000 * minutes as i64);
            assert_eq!(RATES_2025.deepgram_per_ms.price(minutes * 60_000), expected);
        }
    }

    #[test]
    fn price_is_monotonic_and_within_half_a_micro_cent() {
        let rate = RATES_2025.twilio_per_second;
        let mut previous = Cents::ZERO;
        for seconds in 0..=5000u64 {
            let price = rate.price(seconds);
            assert!(price >= previous, "{seconds}s");
            // |price × 60 − seconds × 1 300 000| ≤ 30, i.e. at most half a micro-cent off.
            let error = (price.micro_cents() * 60 - seconds as i64 * 1_300_000).abs();
            assert!(error <= 30, "{seconds}s off by {error}/60 micro-cents");
            previous = price;
        }
    }

    #[test]
    fn token_and_character_prices_are_exact() {
        assert_eq!(RATES_2025.llm_input_per_token.price(1).micro_cents(), 10);
        assert_eq!(
            RATES_2025.llm_output_per_token.price(1_000_000),
            cents("10")
        );
        assert_eq!(RATES_2025.tts_per_character.price(1).micro_cents(), 15_000);
        assert_eq!(RATES_2025.tts_per_character.price(1000), cents("15"));
    }

    #[test]
    fn huge_usage_saturates_instead_of_wrapping() {
        let usage = Usage {
            twilio_seconds: u64::MAX,
            deepgram_audio_ms: u64::MAX,
            llm_input_tokens: u64::MAX,
            llm_output_tokens: u64::MAX,
            tts_characters: u64::MAX,
        };
        let cost = CostBreakdown::from_usage(&usage);
        assert_eq!(cost.total.micro_cents(), i64::MAX);
        assert!(cost.twilio > Cents::ZERO);
    }

    #[test]
    fn usage_adds_up_field_by_field() {
        let chunk = Usage {
            twilio_seconds: 30,
            deepgram_audio_ms: 30_000,
            llm_input_tokens: 80,
            llm_output_tokens: 120,
            tts_characters: 30,
        };
        let mut total = Usage::default();
        for _ in 0..10 {
            total += chunk;
        }
        assert_eq!(total.twilio_seconds, 300);
        assert_eq!(total.deepgram_audio_ms, 300_000);
        assert_eq!(total.llm_input_tokens, 800);
        assert_eq!(total.llm_output_tokens, 1200);
        assert_eq!(total.tts_characters, 300);
        let json = serde_json::to_value(total).expect("serialize usage");
        assert_eq!(json["deepgram_audio_ms"], 300_000);
        let back: Usage = serde_json::from_value(json).expect("deserialize usage");
        assert_eq!(back, total);
    }

    #[test]
    fn decimal_strings_round_half_up() {
        let cases = [
            (0, "0.00", "0.0000"),
            (4_999, "0.00", "0.0050"),
            (5_000, "0.01", "0.0050"),
            (49, "0.00", "0.0000"),
            (50, "0.00", "0.0001"),
            (1_234_567, "1.23", "1.2346"),
            (1_235_000, "1.24", "1.2350"),
            (99_995_000, "100.00", "99.9950"),
            (-5_000, "-0.01", "-0.0050"),
            (-4_999, "0.00", "-0.0050"),
            (-1_234_567, "-1.23", "-1.2346"),
        ];
        for (micro, two, four) in cases {
            let amount = Cents::from_micro_cents(micro);
            assert_eq!(amount.to_decimal_string(), two, "{micro}");
            assert_eq!(amount.to_decimal_string_4(), four, "{micro}");
        }
        assert_eq!(Cents::from_micro_cents(6_500_000).to_string(), "6.50");
    }

    #[test]
    fn decimal_strings_handle_the_extremes() {
        assert_eq!(
            Cents::from_micro_cents(i64::MAX).to_decimal_string(),
            "9223372036854.78"
        );
        assert_eq!(
            Cents::from_micro_cents(i64::MIN).to_decimal_string(),
            "-9223372036854.78"
        );
        assert_eq!(
            Cents::from_micro_cents(i64::MIN).round_to_whole_cents(),
            -9_223_372_036_855
        );
    }

    #[test]
    fn whole_cent_rounding() {
        assert_eq!(
            Cents::from_micro_cents(487_000_000).round_to_whole_cents(),
            487
        );
        assert_eq!(
            Cents::from_micro_cents(13_170_000).round_to_whole_cents(),
            13
        );
        assert_eq!(
            Cents::from_micro_cents(13_500_000).round_to_whole_cents(),
            14
        );
        assert_eq!(
            Cents::from_micro_cents(13_499_999).round_to_whole_cents(),
            13
        );
        assert_eq!(
            Cents::from_micro_cents(-13_500_000).round_to_whole_cents(),
            -14
        );
        assert_eq!(Cents::from_whole_cents(1000).micro_cents(), 1_000_000_000);
        assert_eq!(Cents::from_whole_cents(i64::MAX).micro_cents(), i64::MAX);
    }

    #[test]
    fn parsing_decimal_strings() {
        assert_eq!(cents("13.17").micro_cents(), 13_170_000);
        assert_eq!(cents("0.08").micro_cents(), 80_000);
        assert_eq!(cents("42").micro_cents(), 42_000_000);
        assert_eq!(cents("+1.5").micro_cents(), 1_500_000);
        assert_eq!(cents("-0.000001").micro_cents(), -1);
        assert_eq!(cents("0.123456").micro_cents(), 123_456);
        for bad in [
            "",
            ".",
            "1.",
            ".5",
            "-",
            "1.2.3",
            "1,50",
            "abc",
            "1.1234567",
            " 1",
            "--1",
            "1e3",
        ] {
            assert_eq!(bad.parse::<Cents>(), Err(ParseCentsError), "{bad:?}");
        }
        assert!("9223372036855".parse::<Cents>().is_err());
        assert_eq!(ParseCentsError.code(), "invalid_amount");
    }

    #[test]
    fn two_and_four_decimal_strings_parse_back() {
        for micro in (-3_000_000..3_000_000).step_by(7_919) {
            let amount = Cents::from_micro_cents(micro);
            let two = cents(&amount.to_decimal_string());
            let four = cents(&amount.to_decimal_string_4());
            assert!((two.micro_cents() - micro).abs() <= 5_000, "{micro}");
            assert!((four.micro_cents() - micro).abs() <= 50, "{micro}");
        }
    }

    #[test]
    fn sums_saturate() {
        let parts = [
            Cents::from_micro_cents(i64::MAX),
            Cents::from_micro_cents(1),
        ];
        assert_eq!(parts.into_iter().sum::<Cents>().micro_cents(), i64::MAX);
        let mut running = Cents::ZERO;
        running += Cents::from_whole_cents(5);
        running += Cents::from_micro_cents(250_000);
        assert_eq!(running.to_decimal_string(), "5.25");
    }
}
