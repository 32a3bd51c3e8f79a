//! The cost meter: what each provider has been used for, priced as it happens.
//!
//! Every unit of provider usage is counted here — telephony seconds since the callee answered,
//! seconds of caller audio sent to speech-to-text, LLM input and output tokens, characters sent
//! to text-to-speech — and priced with the call's [`RateCard`] (exact integer micro-cents, see
//! `callmeback_domain::pricing`). The running total drives the budget checks during the call.
//!
//! Usage also becomes `call_cost_events` rows. They are produced here as plain values and written
//! by the Durable Object in batches (periodically and at the end), never per audio frame; each
//! has a sequence number, so the object derives stable ids and a retried write is absorbed.

use callmeback_domain::pricing::{Cents, CostBreakdown, RateCard, Usage};
use serde::{Deserialize, Serialize};

use crate::events::Millis;

/// One priced usage record, as `call_cost_events` stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostEvent {
    /// Per call, from 1; ids are derived from it.
    pub seq: u32,
    /// `twilio`, `deepgram`, `cerebras`, `elevenlabs` (the table's provider names).
    pub provider: String,
    pub kind: String,
    /// Decimal quantity in `unit`s (e.g. seconds with three decimals).
    pub quantity: String,
    pub unit: String,
    pub cost: Cents,
    pub at_ms: Millis,
}

/// Counts usage and prices it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meter {
    rates: RateCard,
    /// Usage other than telephony time (which is derived from the clock).
    usage: Usage,
    answered_at: Option<Millis>,
    ended_at: Option<Millis>,
    /// Telephony seconds as the provider billed them, once known (overrides the clock).
    billed_seconds: Option<u32>,
    /// STT audio already turned into cost events.
    stt_ms_reported: u64,
    next_seq: u32,
    pending: Vec<CostEvent>,
}

impl Meter {
    pub fn new(rates: RateCard) -> Self {
        Self {
            rates,
            usage: Usage::default(),
            answered_at: None,
            ended_at: None,
            billed_seconds: None,
            stt_ms_reported: 0,
            next_seq: 1,
            pending: Vec::new(),
        }
    }

    /// The callee answered: telephony time starts (the first call wins).
    pub fn answered(&mut self, now: Millis) {
        self.answered_at.get_or_insert(now);
    }

    pub fn answered_at(&self) -> Option<Millis> {
        self.answered_at
    }

    /// The call ended: telephony time stops (the first call wins).
    pub fn ended(&mut self, now: Millis) {
        self.ended_at.get_or_insert(now);
    }

    /// The provider's own figure for billed seconds (status callback `CallDuration`).
    pub fn set_billed_seconds(&mut self, seconds: u32) {
        self.billed_seconds = Some(seconds);
    }

    /// Caller audio sent to STT (the per-frame path: one addition).
    #[inline]
    pub fn add_stt_audio_ms(&mut self, ms: u64) {
        self.usage.deepgram_audio_ms = self.usage.deepgram_audio_ms.saturating_add(ms);
    }

    /// One LLM request's tokens.
    pub fn add_llm(&mut self, prompt_tokens: u64, completion_tokens: u64, now: Millis) {
        self.usage.llm_input_tokens += prompt_tokens;
        self.usage.llm_output_tokens += completion_tokens;
        let input = self.rates.llm_input_per_token.price(prompt_tokens);
        let output = self.rates.llm_output_per_token.price(completion_tokens);
        self.event(
            "cerebras",
            "llm_input_tokens",
            prompt_tokens.to_string(),
            "tokens",
            input,
            now,
        );
        self.event(
            "cerebras",
            "llm_output_tokens",
            completion_tokens.to_string(),
            "tokens",
            output,
            now,
        );
    }

    /// Characters sent to TTS (as the provider bills them).
    pub fn add_tts_chars(&mut self, chars: u64, now: Millis) {
        if chars == 0 {
            return;
        }
        self.usage.tts_characters += chars;
        let cost = self.rates.tts_per_character.price(chars);
        self.event(
            "elevenlabs",
            "tts_characters",
            chars.to_string(),
            "characters",
            cost,
            now,
        );
    }

    /// Telephony seconds at `now`: billed figure if known, else whole seconds since the answer
    /// (rounded up: a started second is a second).
    pub fn telephony_seconds(&self, now: Millis) -> u32 {
        if let Some(billed) = self.billed_seconds {
            return billed;
        }
        let Some(start) = self.answered_at else {
            return 0;
        };
        let end = self.ended_at.unwrap_or(now).max(start);
        u32::try_from((end - start).div_ceil(1000)).unwrap_or(u32::MAX)
    }

    /// Usage so far, telephony time included.
    pub fn usage(&self, now: Millis) -> Usage {
        Usage {
            twilio_seconds: u64::from(self.telephony_seconds(now)),
            ..self.usage
        }
    }

    /// Cost so far, by provider.
    pub fn breakdown(&self, now: Millis) -> CostBreakdown {
        CostBreakdown::from_usage_at(&self.usage(now), &self.rates)
    }

    pub fn total(&self, now: Millis) -> Cents {
        self.breakdown(now).total
    }

    /// Cost events not yet written: everything recorded since the last drain, plus the STT audio
    /// counted since then. Telephony time is one event, at the end ([`Self::final_events`]).
    pub fn drain_events(&mut self, now: Millis) -> Vec<CostEvent> {
        let stt_ms = self.usage.deepgram_audio_ms - self.stt_ms_reported;
        if stt_ms > 0 {
            let cost = self.rates.deepgram_per_ms.price(stt_ms);
            self.stt_ms_reported = self.usage.deepgram_audio_ms;
            self.event(
                "deepgram",
                "stt_audio",
                millis_as_seconds(stt_ms),
                "seconds",
                cost,
                now,
            );
        }
        std::mem::take(&mut self.pending)
    }

    /// The last events of the call: pending ones and the telephony time.
    pub fn final_events(&mut self, now: Millis) -> Vec<CostEvent> {
        let seconds = self.telephony_seconds(now);
        if seconds > 0 {
            let cost = self.rates.twilio_per_second.price(u64::from(seconds));
            self.event(
                "twilio",
                "call_seconds",
                seconds.to_string(),
                "seconds",
                cost,
                now,
            );
        }
        self.drain_events(now)
    }

    /// The next sequence number (so a restored meter continues where it stopped).
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    fn event(
        &mut self,
        provider: &'static str,
        kind: &'static str,
        quantity: String,
        unit: &'static str,
        cost: Cents,
        now: Millis,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push(CostEvent {
            seq,
            provider: provider.to_owned(),
            kind: kind.to_owned(),
            quantity,
            unit: unit.to_owned(),
            cost,
            at_ms: now,
        });
    }
}

/// `1234` ms → `"1.234"`.
fn millis_as_seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

#[cfg(test)]
mod tests {
    use callmeback_domain::pricing::RATES_2025;

    use super::*;

    #[test]
    fn telephony_time_runs_from_answer_to_end_and_billing_wins() {
        let mut meter = Meter::new(RATES_2025);
        assert_eq!(meter.telephony_seconds(5_000), 0);
        meter.answered(10_000);
        meter.answered(11_000);
        assert_eq!(
            meter.telephony_seconds(10_001),
            1,
            "a started second counts"
        );
        assert_eq!(meter.telephony_seconds(70_000), 60);
        meter.ended(100_000);
        assert_eq!(meter.telephony_seconds(500_000), 90);
        meter.set_billed_seconds(91);
        assert_eq!(meter.telephony_seconds(500_000), 91);
    }

    #[test]
    fn running_total_prices_every_component() {
        let mut meter = Meter::new(RATES_2025);
        meter.answered(0);
        for _ in 0..3000 {
            meter.add_stt_audio_ms(20); // one minute of frames
        }
        meter.add_llm(800, 1200, 1000);
        meter.add_tts_chars(300, 1000);
        let breakdown = meter.breakdown(300_000);
        assert_eq!(breakdown.twilio.to_decimal_string(), "6.50");
        assert_eq!(breakdown.deepgram.to_decimal_string(), "0.43");
        assert_eq!(breakdown.cerebras.to_decimal_string_4(), "0.0200");
        assert_eq!(breakdown.elevenlabs.to_decimal_string(), "4.50");
        assert_eq!(meter.total(300_000), breakdown.total);
    }

    #[test]
    fn events_are_batched_numbered_and_add_up_to_the_total() {
        let mut meter = Meter::new(RATES_2025);
        meter.answered(0);
        meter.add_stt_audio_ms(1500);
        meter.add_llm(10, 20, 100);
        let first = meter.drain_events(2000);
        assert_eq!(first.len(), 3);
        assert_eq!(
            first.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(first[2].kind, "stt_audio");
        assert_eq!(first[2].quantity, "1.500");
        assert!(
            meter.drain_events(2500).is_empty(),
            "nothing new, nothing written"
        );
        meter.add_stt_audio_ms(500);
        meter.add_tts_chars(42, 3000);
        meter.ended(61_000);
        let last = meter.final_events(61_000);
        let kinds: Vec<_> = last.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, vec!["tts_characters", "call_seconds", "stt_audio"]);
        let sum: Cents = first.iter().chain(&last).map(|e| e.cost).sum();
        assert_eq!(sum, meter.total(61_000));
    }
}
