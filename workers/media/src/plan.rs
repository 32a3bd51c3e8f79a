//! Everything one call needs, decided when the call is placed.
//!
//! The route that places a call reads the persona, the user's customisation, the template, the
//! tier and the budget in one gateway batch and hands the per-call Durable Object a [`CallPlan`].
//! From then on the call needs no database read: the conversation, the limits and the prices are
//! all here. The plan is stored with the object, so a restarted object picks up the same call.

use callmeback_domain::calls::VoicemailAction;
use callmeback_domain::pricing::RateCard;
use serde::{Deserialize, Serialize};

/// The call's fixed inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallPlan {
    pub call_id: String,
    pub user_id: String,
    pub persona_id: String,
    pub persona_name: String,
    /// The full system prompt (see [`crate::prompt::compose_system_prompt`]).
    pub system_prompt: String,
    /// What the persona says first when the callee picks up.
    pub greeting: String,
    /// What the persona remembered before this call (it is in the system prompt too); the
    /// post-call summary merges into it.
    #[serde(default)]
    pub previous_memory: Option<String>,
    pub voicemail: VoicemailPlan,
    pub voice: VoiceSpec,
    pub llm: LlmSpec,
    pub limits: CallLimits,
    /// Provider prices at the time the call was placed.
    pub rates: RateCard,
}

/// What to do when an answering machine picks up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoicemailPlan {
    pub action: VoicemailAction,
    /// The message left after the beep.
    pub message: String,
}

/// The voice the persona speaks with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoiceSpec {
    pub voice_id: String,
    pub settings: VoiceSettings,
}

/// ElevenLabs-style voice settings (the persona's defaults, overridden by the user's).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VoiceSettings {
    pub stability: f64,
    pub similarity_boost: f64,
    pub style: f64,
    pub speed: f64,
    pub use_speaker_boost: bool,
}

impl Default for VoiceSettings {
    fn default() -> Self {
        Self {
            stability: 0.5,
            similarity_boost: 0.75,
            style: 0.0,
            speed: 1.0,
            use_speaker_boost: true,
        }
    }
}

impl VoiceSettings {
    /// Reads a stored settings object (`personas.default_voice_settings`, a relationship's
    /// override): known members in range are taken, the rest keep `base`.
    pub fn merged(base: VoiceSettings, json: Option<&serde_json::Value>) -> VoiceSettings {
        let Some(object) = json.and_then(|value| value.as_object()) else {
            return base;
        };
        let number = |key: &str, min: f64, max: f64, fallback: f64| {
            object
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .filter(|value| (min..=max).contains(value))
                .unwrap_or(fallback)
        };
        VoiceSettings {
            stability: number("stability", 0.0, 1.0, base.stability),
            similarity_boost: number("similarity_boost", 0.0, 1.0, base.similarity_boost),
            style: number("style", 0.0, 1.0, base.style),
            speed: number("speed", 0.7, 1.2, base.speed),
            use_speaker_boost: object
                .get("use_speaker_boost")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(base.use_speaker_boost),
        }
    }
}

/// Model parameters of the persona.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LlmSpec {
    pub temperature: f64,
    pub max_tokens: u32,
}

/// The limits a call runs under (see [`crate::limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallLimits {
    /// The tier's longest call.
    pub max_duration_secs: u32,
    /// Credits the user had when the call started; `None` on tiers that do not spend credits.
    /// One credit pays for one started minute, so the call may last at most this many minutes.
    pub credits_at_start: Option<u32>,
    /// The user's per-call budget, whole cents.
    pub per_call_budget_cents: i64,
    /// What was left of the monthly budget when the call started, whole cents.
    pub monthly_remaining_cents: i64,
    /// Warn at this share of the tightest limit.
    pub warn_percent: u8,
    /// At 100 % of a *budget*, end the call (true) or only notify (false). Time limits (tier
    /// length, credits) always end the call: they are what the user has paid for.
    pub auto_cutoff: bool,
}
