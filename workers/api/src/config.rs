//! The Worker's configuration: one typed [`Config`], read from its bindings once per isolate.
//!
//! Plain vars come from `wrangler.toml` `[vars]`; secrets from `wrangler secret put` in production
//! and `.dev.vars` locally. An isolate's bindings never change while it lives, so [`Config::get`]
//! reads and parses them on first use (the JWT keyring's base64 keys included) and hands every
//! later request the same `Rc<Config>`.
//!
//! Each section is read on its own and fails on its own ([`Section`]): a route needs only the
//! sections it uses, so a missing Stripe secret breaks the Stripe webhook and nothing else. A
//! missing or invalid binding is a deploy mistake: [`ConfigError`] has the stable code
//! `misconfigured` (HTTP 500 through `ApiError`) and names the binding in the log, never its
//! value. Nothing here depends on the HTTP layer, so a Durable Object reads the same `Config`
//! with `Config::get(&env)` and builds a gateway client from it (`Gateway::from_env`).
//!
//! # Adding a section
//! One struct that implements [`FromBindings`] and one field of type `Section<ThatStruct>` (plus
//! its line in [`Config::from_bindings`]); read it with `config.twilio.get()?`.

use std::cell::OnceCell;
use std::fmt;
use std::rc::Rc;

use callmeback_auth::Keyring;
use callmeback_domain::RateLimitPolicy;
use callmeback_signing::Key;
use worker::Env;

use crate::cors::CorsPolicy;

/// A binding that is missing or does not parse. Its `Display` names the binding and what is
/// wrong with it, never the value (which may be a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration binding {0} is missing")]
    Missing(&'static str),
    #[error("configuration binding {binding} is invalid: {reason}")]
    Invalid {
        binding: &'static str,
        reason: String,
    },
}

impl ConfigError {
    /// The stable code every configuration error answers with.
    pub const CODE: &'static str = "misconfigured";

    pub const fn code(&self) -> &'static str {
        Self::CODE
    }

    /// The binding at fault.
    pub const fn binding(&self) -> &'static str {
        match self {
            Self::Missing(binding) | Self::Invalid { binding, .. } => binding,
        }
    }

    fn invalid(binding: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            binding,
            reason: reason.into(),
        }
    }
}

/// Where configuration is read from: the Worker's [`Env`], or a map in tests.
pub trait Bindings {
    /// A plain var (`[vars]`), if set.
    fn var(&self, name: &str) -> Option<String>;
    /// A secret, if set.
    fn secret(&self, name: &str) -> Option<String>;
}

impl Bindings for Env {
    fn var(&self, name: &str) -> Option<String> {
        Env::var(self, name).ok().map(|value| value.to_string())
    }

    fn secret(&self, name: &str) -> Option<String> {
        Env::secret(self, name).ok().map(|value| value.to_string())
    }
}

/// A configuration section that can be read from the bindings.
pub trait FromBindings: Sized {
    fn from_bindings(bindings: &impl Bindings) -> Result<Self, ConfigError>;
}

/// One section of the configuration, or why the bindings do not make one.
#[derive(Debug)]
pub struct Section<T>(Result<T, ConfigError>);

impl<T: FromBindings> Section<T> {
    fn read(bindings: &impl Bindings) -> Self {
        Self(T::from_bindings(bindings))
    }
}

impl<T> Section<T> {
    /// The section, or the error its bindings gave (every time it is asked for, so each request
    /// that needs it logs and answers `misconfigured`).
    pub fn get(&self) -> Result<&T, ConfigError> {
        self.0.as_ref().map_err(Clone::clone)
    }
}

/// The Worker's whole configuration.
#[derive(Debug)]
pub struct Config {
    /// How to reach db-gateway.
    pub gateway: Section<GatewayConfig>,
    /// Session token keys (`JWT_SIGNING_KEYS`).
    pub jwt: Section<Keyring>,
    /// Frontend origins allowed by CORS (`CORS_ALLOWED_ORIGINS`); none when unset.
    pub cors: CorsPolicy,
    /// The login-failure limits, with the window override applied.
    pub login: LoginLimits,
    /// Stripe webhook signing secrets.
    pub stripe: Section<StripeConfig>,
    /// Twilio, the Worker's public address, and the rules for placing calls.
    pub telephony: Section<TelephonyConfig>,
    /// The conversation's providers (STT, LLM, TTS), the engine's tuning, and prices.
    pub voice: Section<VoiceConfig>,
}

impl Config {
    /// The isolate's configuration, read from `env` on first use.
    pub fn get(env: &Env) -> Rc<Config> {
        thread_local! {
            static CONFIG: OnceCell<Rc<Config>> = const { OnceCell::new() };
        }
        CONFIG.with(|config| Rc::clone(config.get_or_init(|| Rc::new(Self::from_bindings(env)))))
    }

    /// Reads every section.
    pub fn from_bindings(bindings: &impl Bindings) -> Self {
        Self {
            gateway: Section::read(bindings),
            jwt: Section::read(bindings),
            cors: CorsPolicy::from_list(&bindings.var("CORS_ALLOWED_ORIGINS").unwrap_or_default()),
            login: LoginLimits::from_bindings(bindings),
            stripe: Section::read(bindings),
            telephony: Section::read(bindings),
            voice: Section::read(bindings),
        }
    }
}

/// How the Worker reaches db-gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Base URL without trailing slash, e.g. `https://db.callmeback.example`.
    pub base_url: String,
    /// The signing key (id + secret) shared with the gateway.
    pub key: Key,
    /// Bound on one gateway round trip.
    pub timeout_ms: u32,
}

impl GatewayConfig {
    /// `GATEWAY_TIMEOUT_MS` when the var is not set.
    pub const DEFAULT_TIMEOUT_MS: u32 = 3000;
}

impl FromBindings for GatewayConfig {
    fn from_bindings(bindings: &impl Bindings) -> Result<Self, ConfigError> {
        let base_url = var(bindings, "GATEWAY_URL")?
            .trim_end_matches('/')
            .to_owned();
        let key_id = var(bindings, "GATEWAY_KEY_ID")?;
        let secret = decode_base64(&secret(bindings, "GATEWAY_KEY_SECRET")?)
            .ok_or_else(|| ConfigError::invalid("GATEWAY_KEY_SECRET", "not base64"))?;
        let timeout_ms = match bindings.var("GATEWAY_TIMEOUT_MS") {
            Some(raw) => raw.parse().map_err(|_| {
                ConfigError::invalid("GATEWAY_TIMEOUT_MS", "not a whole number of milliseconds")
            })?,
            None => Self::DEFAULT_TIMEOUT_MS,
        };
        Ok(Self {
            base_url,
            key: Key::new(key_id, secret),
            timeout_ms,
        })
    }
}

/// `JWT_SIGNING_KEYS`: `kid:base64,kid:base64`, the first one signs.
impl FromBindings for Keyring {
    fn from_bindings(bindings: &impl Bindings) -> Result<Self, ConfigError> {
        Keyring::parse(&secret(bindings, "JWT_SIGNING_KEYS")?)
            .map_err(|error| ConfigError::invalid("JWT_SIGNING_KEYS", error.to_string()))
    }
}

/// `STRIPE_WEBHOOK_SECRETS`: the endpoint's signing secret(s), comma-separated during rotation;
/// `STRIPE_LIVEMODE`: whether this deployment takes live-mode events (`true`) or test-mode ones
/// (`false`, the default); events of the other mode are ignored.
#[derive(Clone)]
pub struct StripeConfig {
    webhook_secrets: Vec<Vec<u8>>,
    pub livemode: bool,
}

impl StripeConfig {
    /// Every secret a webhook signature may match.
    pub fn webhook_secrets(&self) -> Vec<&[u8]> {
        self.webhook_secrets.iter().map(Vec::as_slice).collect()
    }
}

/// Counts the secrets, never shows them.
impl fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeConfig")
            .field("webhook_secrets", &self.webhook_secrets.len())
            .field("livemode", &self.livemode)
            .finish()
    }
}

impl FromBindings for StripeConfig {
    fn from_bindings(bindings: &impl Bindings) -> Result<Self, ConfigError> {
        let webhook_secrets: Vec<Vec<u8>> = secret(bindings, "STRIPE_WEBHOOK_SECRETS")?
            .split(',')
            .map(str::trim)
            .filter(|secret| !secret.is_empty())
            .map(|secret| secret.as_bytes().to_vec())
            .collect();
        if webhook_secrets.is_empty() {
            return Err(ConfigError::invalid(
                "STRIPE_WEBHOOK_SECRETS",
                "lists no secret",
            ));
        }
        let livemode = match bindings.var("STRIPE_LIVEMODE").as_deref().map(str::trim) {
            None | Some("" | "false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(ConfigError::invalid(
                    "STRIPE_LIVEMODE",
                    "must be true or false",
                ));
            }
        };
        Ok(Self {
            webhook_secrets,
            livemode,
        })
    }
}

/// Bounds for `LOGIN_FAILURE_WINDOW_SECS`.
const MIN_WINDOW_SECS: u64 = 1;
const MAX_WINDOW_SECS: u64 = 24 * 3600;

/// The failed-login limits: `RateLimitPolicy::LOGIN_FAILURES_PER_*`, with the window from the
/// optional `LOGIN_FAILURE_WINDOW_SECS` var (for operators, and for tests, which cannot wait 15
/// minutes to see a lock lift). An override outside 1 s..=24 h, or not a number, is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Per client network, for devices the account does not trust.
    pub per_ip: RateLimitPolicy,
    /// Per account, shared by every device it does not trust.
    pub per_account: RateLimitPolicy,
    /// Per (account, trusted device).
    pub per_device: RateLimitPolicy,
}

impl LoginLimits {
    fn from_bindings(bindings: &impl Bindings) -> Self {
        login_policies(bindings.var("LOGIN_FAILURE_WINDOW_SECS").as_deref())
    }
}

/// The login policies, with the window from `LOGIN_FAILURE_WINDOW_SECS` when it is set.
fn login_policies(window_override: Option<&str>) -> LoginLimits {
    let mut limits = LoginLimits {
        per_ip: RateLimitPolicy::LOGIN_FAILURES_PER_IP,
        per_account: RateLimitPolicy::LOGIN_FAILURES_PER_ACCOUNT,
        per_device: RateLimitPolicy::LOGIN_FAILURES_PER_DEVICE,
    };
    if let Some(window) = window_override
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|secs| (MIN_WINDOW_SECS..=MAX_WINDOW_SECS).contains(secs))
    {
        limits.per_ip.window_secs = window;
        limits.per_account.window_secs = window;
        limits.per_device.window_secs = window;
    }
    limits
}

/// Twilio and the rules for placing calls.
///
/// | binding | kind | default |
/// |---|---|---|
/// | `TWILIO_API_BASE_URL` | var | `https://api.twilio.com` (the simulator locally) |
/// | `TWILIO_ACCOUNT_SID` | var | required |
/// | `TWILIO_AUTH_TOKEN` | secret | required (REST auth and webhook signatures) |
/// | `TWILIO_FROM_NUMBER` | var | required, E.164 |
/// | `PUBLIC_BASE_URL` | var | the Worker's public origin for Twilio's callbacks; required by the scheduler |
/// | `MEDIA_STREAM_SECRET` | secret | required, base64: signs media stream tokens and live tickets |
/// | `PHONE_HASH_SECRET` | secret | required, base64: keys the per-number rate limit |
/// | `CALLS_PER_PHONE_PER_HOUR` | var | 2 (and `PHONE_LIMIT_WINDOW_SECS`, 3600) |
/// | `CALL_RING_TIMEOUT_SECS` | var | 25 |
/// | `ANSWERING_MACHINE_DETECTION` | var | `true` |
/// | `MAX_CALL_SECONDS` | var | unset: each tier's longest call; set (10 to 86400), no call lasts longer whatever its tier |
#[derive(Clone)]
pub struct TelephonyConfig {
    pub api_base: String,
    pub account_sid: String,
    pub auth_token: String,
    pub from_number: String,
    pub public_base_url: Option<String>,
    pub stream_secret: Vec<u8>,
    pub phone_hash_secret: Vec<u8>,
    /// Calls per destination number (default: 2 per rolling hour).
    pub phone_policy: RateLimitPolicy,
    /// Call requests per user and per client address.
    pub per_user_policy: RateLimitPolicy,
    pub per_ip_policy: RateLimitPolicy,
    pub ring_timeout_secs: u32,
    pub answering_machine_detection: bool,
    /// The operator's cap on any call's length (`MAX_CALL_SECONDS`), on top of the tier's; the
    /// call enforces the smaller of the two (warning, goodbye, hang-up) like any time limit.
    pub max_call_secs: Option<u32>,
}

impl fmt::Debug for TelephonyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelephonyConfig")
            .field("api_base", &self.api_base)
            .field("from_number", &"…")
            .finish_non_exhaustive()
    }
}

impl FromBindings for TelephonyConfig {
    fn from_bindings(bindings: &impl Bindings) -> Result<Self, ConfigError> {
        let from_number = var(bindings, "TWILIO_FROM_NUMBER")?;
        callmeback_domain::PhoneE164::parse(&from_number)
            .map_err(|_| ConfigError::invalid("TWILIO_FROM_NUMBER", "not an E.164 number"))?;
        let phone_window = number(bindings, "PHONE_LIMIT_WINDOW_SECS", 3600u64, 1..=7 * 86_400)?;
        Ok(Self {
            api_base: bindings
                .var("TWILIO_API_BASE_URL")
                .unwrap_or_else(|| "https://api.twilio.com".to_owned())
                .trim_end_matches('/')
                .to_owned(),
            account_sid: var(bindings, "TWILIO_ACCOUNT_SID")?,
            auth_token: secret(bindings, "TWILIO_AUTH_TOKEN")?,
            from_number,
            public_base_url: bindings
                .var("PUBLIC_BASE_URL")
                .map(|url| url.trim_end_matches('/').to_owned())
                .filter(|url| !url.is_empty()),
            stream_secret: decode_base64(&secret(bindings, "MEDIA_STREAM_SECRET")?)
                .filter(|key| key.len() >= 16)
                .ok_or_else(|| {
                    ConfigError::invalid("MEDIA_STREAM_SECRET", "not base64 of 16+ bytes")
                })?,
            phone_hash_secret: decode_base64(&secret(bindings, "PHONE_HASH_SECRET")?)
                .filter(|key| key.len() >= 16)
                .ok_or_else(|| {
                    ConfigError::invalid("PHONE_HASH_SECRET", "not base64 of 16+ bytes")
                })?,
            phone_policy: RateLimitPolicy {
                max_events: number(bindings, "CALLS_PER_PHONE_PER_HOUR", 2u32, 1..=1000)?,
                window_secs: phone_window,
            },
            per_user_policy: RateLimitPolicy::CALL_REQUESTS_PER_USER,
            per_ip_policy: RateLimitPolicy::CALL_REQUESTS_PER_IP,
            ring_timeout_secs: number(bindings, "CALL_RING_TIMEOUT_SECS", 25u32, 5..=600)?,
            answering_machine_detection: bindings
                .var("ANSWERING_MACHINE_DETECTION")
                .is_none_or(|value| value.trim() != "false"),
            max_call_secs: match bindings.var("MAX_CALL_SECONDS") {
                Some(_) => Some(number(bindings, "MAX_CALL_SECONDS", 0u32, 10..=86_400)?),
                None => None,
            },
        })
    }
}

/// The conversation's providers and the engine's tuning.
///
/// | binding | kind | default |
/// |---|---|---|
/// | `DEEPGRAM_URL` | var | `wss://api.deepgram.com/v1/listen` |
/// | `DEEPGRAM_API_KEY` | secret | required |
/// | `DEEPGRAM_MODEL` | var | `nova-3` |
/// | `STT_ENDPOINTING_MS`, `STT_UTTERANCE_END_MS` | var | 300, 1000 |
/// | `LLM_BASE_URL` | var | `https://api.cerebras.ai/v1` |
/// | `LLM_API_KEY` | secret | required |
/// | `LLM_MODEL` | var | `llama3.1-8b` |
/// | `ELEVENLABS_URL` | var | `wss://api.elevenlabs.io` |
/// | `ELEVENLABS_API_KEY` | secret | required |
/// | `ELEVENLABS_MODEL` | var | `eleven_flash_v2_5` |
/// | `ELEVENLABS_DEFAULT_VOICE_ID` | var | a stock voice, for personas without one |
/// | `VOICE_FRAME_MS`, `VOICE_LEAD_MS` | var | 160, 320 (outbound pacing) |
/// | `STT_BATCH_MS` | var | 40 (caller audio per message to STT) |
/// | `BARGE_IN_MIN_WORDS` | var | 2 |
/// | `LLM_FIRST_TOKEN_TIMEOUT_MS`, `TTS_TIMEOUT_MS` | var | 4000, 5000 |
/// | `IDLE_PROMPT_MS`, `IDLE_HANGUP_MS` | var | 20000, 15000 |
/// | `RATE_TWILIO_CENTS_PER_MINUTE` | var | `1.30` |
/// | `RATE_DEEPGRAM_CENTS_PER_MINUTE` | var | `0.43` |
/// | `RATE_LLM_INPUT_CENTS_PER_MILLION_TOKENS`, `RATE_LLM_OUTPUT_CENTS_PER_MILLION_TOKENS` | var | `10`, `10` |
/// | `RATE_TTS_CENTS_PER_THOUSAND_CHARS` | var | `15` |
#[derive(Clone)]
pub struct VoiceConfig {
    pub stt_url: String,
    pub stt_key: String,
    pub stt: callmeback_providers::deepgram::SttSettings,
    pub llm_url: String,
    pub llm_key: String,
    pub llm: callmeback_providers::openai::LlmSettings,
    pub tts_url: String,
    pub tts_key: String,
    pub tts: callmeback_providers::elevenlabs::TtsSettings,
    pub default_voice_id: String,
    pub engine: callmeback_media::EngineConfig,
    pub rates: callmeback_domain::pricing::RateCard,
}

impl fmt::Debug for VoiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VoiceConfig")
            .field("stt_url", &self.stt_url)
            .field("llm_url", &self.llm_url)
            .field("tts_url", &self.tts_url)
            .finish_non_exhaustive()
    }
}

impl FromBindings for VoiceConfig {
    fn from_bindings(bindings: &impl Bindings) -> Result<Self, ConfigError> {
        use callmeback_domain::pricing::{RATES_2025, Rate, RateCard};
        let or = |name: &str, default: &str| {
            bindings
                .var(name)
                .filter(|value| !value.trim().is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let mut stt = callmeback_providers::deepgram::SttSettings {
            model: or("DEEPGRAM_MODEL", "nova-3"),
            ..Default::default()
        };
        stt.endpointing_ms = number(
            bindings,
            "STT_ENDPOINTING_MS",
            stt.endpointing_ms,
            10..=5000,
        )?;
        stt.utterance_end_ms = number(
            bindings,
            "STT_UTTERANCE_END_MS",
            stt.utterance_end_ms,
            1000..=5000,
        )?;
        let mut engine = callmeback_media::EngineConfig::default();
        engine.frame_ms = number(bindings, "VOICE_FRAME_MS", engine.frame_ms, 20..=1000)?;
        engine.lead_ms = number(bindings, "VOICE_LEAD_MS", engine.lead_ms, 0..=2000)?;
        engine.stt_batch_ms = number(bindings, "STT_BATCH_MS", engine.stt_batch_ms, 20..=200)?;
        engine.barge_in_min_words = number(
            bindings,
            "BARGE_IN_MIN_WORDS",
            engine.barge_in_min_words,
            1..=20,
        )?;
        engine.llm_first_token_timeout_ms = number(
            bindings,
            "LLM_FIRST_TOKEN_TIMEOUT_MS",
            engine.llm_first_token_timeout_ms,
            200..=60_000,
        )?;
        engine.tts_timeout_ms = number(
            bindings,
            "TTS_TIMEOUT_MS",
            engine.tts_timeout_ms,
            200..=60_000,
        )?;
        engine.idle_prompt_ms = number(
            bindings,
            "IDLE_PROMPT_MS",
            engine.idle_prompt_ms,
            1000..=600_000,
        )?;
        engine.idle_hangup_ms = number(
            bindings,
            "IDLE_HANGUP_MS",
            engine.idle_hangup_ms,
            1000..=600_000,
        )?;
        let rate =
            |name: &'static str, default: Rate, per_units: u64| -> Result<Rate, ConfigError> {
                match bindings.var(name) {
                    None => Ok(default),
                    Some(text) => text
                        .trim()
                        .parse::<callmeback_domain::pricing::Cents>()
                        .ok()
                        .filter(|cents| cents.micro_cents() >= 0)
                        .map(|cents| Rate {
                            micro_cents: cents.micro_cents(),
                            per_units,
                        })
                        .ok_or_else(|| ConfigError::invalid(name, "not a decimal amount of cents")),
                }
            };
        let rates = RateCard {
            twilio_per_second: rate(
                "RATE_TWILIO_CENTS_PER_MINUTE",
                RATES_2025.twilio_per_second,
                60,
            )?,
            deepgram_per_ms: rate(
                "RATE_DEEPGRAM_CENTS_PER_MINUTE",
                RATES_2025.deepgram_per_ms,
                60_000,
            )?,
            llm_input_per_token: rate(
                "RATE_LLM_INPUT_CENTS_PER_MILLION_TOKENS",
                RATES_2025.llm_input_per_token,
                1_000_000,
            )?,
            llm_output_per_token: rate(
                "RATE_LLM_OUTPUT_CENTS_PER_MILLION_TOKENS",
                RATES_2025.llm_output_per_token,
                1_000_000,
            )?,
            tts_per_character: rate(
                "RATE_TTS_CENTS_PER_THOUSAND_CHARS",
                RATES_2025.tts_per_character,
                1000,
            )?,
        };
        Ok(Self {
            stt_url: or("DEEPGRAM_URL", "wss://api.deepgram.com/v1/listen"),
            stt_key: secret(bindings, "DEEPGRAM_API_KEY")?,
            stt,
            llm_url: or("LLM_BASE_URL", "https://api.cerebras.ai/v1")
                .trim_end_matches('/')
                .to_owned(),
            llm_key: secret(bindings, "LLM_API_KEY")?,
            llm: callmeback_providers::openai::LlmSettings {
                model: or("LLM_MODEL", "llama3.1-8b"),
            },
            tts_url: or("ELEVENLABS_URL", "wss://api.elevenlabs.io")
                .trim_end_matches('/')
                .to_owned(),
            tts_key: secret(bindings, "ELEVENLABS_API_KEY")?,
            tts: callmeback_providers::elevenlabs::TtsSettings {
                model_id: or("ELEVENLABS_MODEL", "eleven_flash_v2_5"),
            },
            default_voice_id: or("ELEVENLABS_DEFAULT_VOICE_ID", "21m00Tcm4TlvDq8ikWAM"),
            engine,
            rates,
        })
    }
}

/// An optional numeric var within `range`, else `default`.
fn number<T>(
    bindings: &impl Bindings,
    name: &'static str,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + Copy + fmt::Display,
{
    match bindings.var(name) {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse::<T>()
            .ok()
            .filter(|value| range.contains(value))
            .ok_or_else(|| {
                ConfigError::invalid(
                    name,
                    format!("not a number from {} to {}", range.start(), range.end()),
                )
            }),
    }
}

fn var(bindings: &impl Bindings, name: &'static str) -> Result<String, ConfigError> {
    bindings.var(name).ok_or(ConfigError::Missing(name))
}

fn secret(bindings: &impl Bindings, name: &'static str) -> Result<String, ConfigError> {
    bindings.secret(name).ok_or(ConfigError::Missing(name))
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Vars and secrets alike, as in `.dev.vars`.
    struct Map(HashMap<&'static str, &'static str>);

    impl Bindings for Map {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|value| (*value).to_owned())
        }

        fn secret(&self, name: &str) -> Option<String> {
            self.var(name)
        }
    }

    fn bindings(pairs: &[(&'static str, &'static str)]) -> Map {
        Map(pairs.iter().copied().collect())
    }

    const JWT: &str = "k1:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";

    #[test]
    fn sections_fail_on_their_own_and_name_the_binding_not_the_value() {
        let config = Config::from_bindings(&bindings(&[
            ("GATEWAY_URL", "https://gw.example/"),
            ("GATEWAY_KEY_ID", "worker-1"),
            ("GATEWAY_KEY_SECRET", "c2VjcmV0LXNlY3JldC1zZWNyZXQ="),
            ("JWT_SIGNING_KEYS", "k1:not base64!"),
            ("CORS_ALLOWED_ORIGINS", "https://app.example"),
        ]));
        let gateway = config.gateway.get().expect("complete gateway section");
        assert_eq!(gateway.base_url, "https://gw.example");
        assert_eq!(gateway.timeout_ms, GatewayConfig::DEFAULT_TIMEOUT_MS);

        let jwt = config.jwt.get().expect_err("invalid keyring");
        assert_eq!(
            (jwt.code(), jwt.binding()),
            ("misconfigured", "JWT_SIGNING_KEYS")
        );
        assert!(!jwt.to_string().contains("not base64!"));
        assert_eq!(
            config.stripe.get().expect_err("missing"),
            ConfigError::Missing("STRIPE_WEBHOOK_SECRETS")
        );
        assert!(config.cors.allows("https://app.example"));
        assert_eq!(config.login.per_ip, RateLimitPolicy::LOGIN_FAILURES_PER_IP);
    }

    #[test]
    fn values_are_parsed_once_into_typed_sections() {
        let config = Config::from_bindings(&bindings(&[
            ("GATEWAY_URL", "https://gw.example"),
            ("GATEWAY_KEY_ID", "worker-1"),
            ("GATEWAY_KEY_SECRET", "not base64!"),
            ("JWT_SIGNING_KEYS", JWT),
            ("STRIPE_WEBHOOK_SECRETS", " whsec_a, ,whsec_b "),
            ("LOGIN_FAILURE_WINDOW_SECS", "12"),
        ]));
        assert_eq!(
            config.gateway.get().expect_err("bad secret").binding(),
            "GATEWAY_KEY_SECRET"
        );
        assert!(config.jwt.get().is_ok());
        let stripe = config.stripe.get().expect("two secrets");
        assert_eq!(stripe.webhook_secrets(), [&b"whsec_a"[..], b"whsec_b"]);
        assert!(!format!("{stripe:?}").contains("whsec"));
        assert!(!stripe.livemode, "test mode unless told otherwise");
        let live = bindings(&[
            ("STRIPE_WEBHOOK_SECRETS", "whsec_a"),
            ("STRIPE_LIVEMODE", "true"),
        ]);
        assert!(StripeConfig::from_bindings(&live).unwrap().livemode);
        let unclear = bindings(&[
            ("STRIPE_WEBHOOK_SECRETS", "whsec_a"),
            ("STRIPE_LIVEMODE", "yes"),
        ]);
        assert_eq!(
            StripeConfig::from_bindings(&unclear).unwrap_err().binding(),
            "STRIPE_LIVEMODE"
        );
        assert_eq!(config.login.per_account.window_secs, 12);

        let empty = bindings(&[("STRIPE_WEBHOOK_SECRETS", " , ")]);
        assert_eq!(
            StripeConfig::from_bindings(&empty)
                .expect_err("no secret")
                .binding(),
            "STRIPE_WEBHOOK_SECRETS"
        );
        let slow = bindings(&[
            ("GATEWAY_URL", "https://gw.example"),
            ("GATEWAY_KEY_ID", "worker-1"),
            ("GATEWAY_KEY_SECRET", "c2VjcmV0"),
            ("GATEWAY_TIMEOUT_MS", "soon"),
        ]);
        assert_eq!(
            GatewayConfig::from_bindings(&slow)
                .expect_err("bad timeout")
                .binding(),
            "GATEWAY_TIMEOUT_MS"
        );
    }

    #[test]
    fn the_operator_cap_on_call_length_is_optional_and_bounded() {
        const SECRET: &str = "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";
        let telephony = |cap: Option<&'static str>| {
            let mut pairs = vec![
                ("TWILIO_ACCOUNT_SID", "AC1"),
                ("TWILIO_AUTH_TOKEN", "token"),
                ("TWILIO_FROM_NUMBER", "+15005550006"),
                ("MEDIA_STREAM_SECRET", SECRET),
                ("PHONE_HASH_SECRET", SECRET),
            ];
            if let Some(cap) = cap {
                pairs.push(("MAX_CALL_SECONDS", cap));
            }
            TelephonyConfig::from_bindings(&bindings(&pairs))
        };
        assert_eq!(telephony(None).expect("valid").max_call_secs, None);
        assert_eq!(
            telephony(Some("30")).expect("valid").max_call_secs,
            Some(30)
        );
        for bad in ["0", "9", "86401", "soon"] {
            assert_eq!(
                telephony(Some(bad)).expect_err(bad).binding(),
                "MAX_CALL_SECONDS"
            );
        }
    }

    #[test]
    fn the_window_override_is_bounded() {
        let default = login_policies(None);
        assert_eq!(default.per_ip, RateLimitPolicy::LOGIN_FAILURES_PER_IP);
        assert_eq!(
            default.per_account,
            RateLimitPolicy::LOGIN_FAILURES_PER_ACCOUNT
        );
        assert_eq!(
            default.per_device,
            RateLimitPolicy::LOGIN_FAILURES_PER_DEVICE
        );
        let short = login_policies(Some("3"));
        assert_eq!(
            (
                short.per_ip.window_secs,
                short.per_account.window_secs,
                short.per_device.window_secs
            ),
            (3, 3, 3)
        );
        assert_eq!(short.per_ip.max_events, 10);
        for bad in ["0", "-1", "abc", "86401"] {
            assert_eq!(login_policies(Some(bad)), default, "{bad}");
        }
    }
}
