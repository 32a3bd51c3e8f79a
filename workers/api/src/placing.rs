//! Placing a call: the one path shared by `POST /api/calls` and the scheduler.
//!
//! In order, each refusal with its own code:
//! 1. (API only) the caller's request budget per user and per address — atomic `take`s;
//! 2. one gateway read (`calls.prepare`, behind the session guard for API calls): persona,
//!    relationship, template, credits, tier, calls today, budget, this month's spend, and the
//!    call an `Idempotency-Key` already placed (returned as is);
//! 3. the rules, decided in [`decide`] (pure, tested natively): persona active
//!    (`persona_not_found` / `persona_inactive`), template, phone number (the user's own by
//!    default), the tier's calls per day (`daily_call_limit`), credits for one minute on paid
//!    tiers (`insufficient_credits`), the monthly budget (`budget_exhausted`);
//! 4. the phone number's rate limit — an atomic `take` in the number's `RateLimiter` object, keyed
//!    by its HMAC (`phone_rate_limited`, with `Retry-After` and `remaining: 0`);
//! 5. the call row, in a batch that locks the user and counts today's calls in the same
//!    statement as the insert, so concurrent requests cannot both take the last call of the day
//!    (and a reused idempotency key inserts nothing);
//! 6. the call's Durable Object, given the whole [`CallPlan`], so the call reads no database;
//! 7. Twilio's Calls API. A refusal marks the call `failed` with Twilio's reason, and the phone
//!    number's slot is given back (`release`): a call that never reached Twilio costs nothing —
//!    neither a rate-limit slot nor one of the day's calls (those do not count failed calls
//!    without a Twilio sid).

use callmeback_domain::calls::{VoicemailAction, phone_key};
use callmeback_domain::ids::{new_id, prefix};
use callmeback_domain::pricing::Cents;
use callmeback_domain::{BudgetSettings, CallRefusal, PhoneE164, Tier, can_start_call};
use callmeback_gateway_api::ops::calls as ops;
use callmeback_gateway_api::{OpCall, OpResult, codes};
use callmeback_media::CallPlan;
use callmeback_media::plan::{CallLimits, LlmSpec, VoiceSettings, VoiceSpec, VoicemailPlan};
use callmeback_media::prompt::{PromptParts, compose_system_prompt};
use callmeback_providers::twilio::rest::CreateCall;
use serde_json::{Map, Value, json};
use worker::Env;

use crate::call_session::{self, InitRequest, PlacedRequest};
use crate::config::{Config, TelephonyConfig, VoiceConfig};
use crate::ctx::RequestCtx;
use crate::error::ApiError;
use crate::gateway::{Gateway, GatewayError};
use crate::limits::{LimitKey, Limiter};
use crate::session::{Session, authed_call};
use crate::telephony;

/// What is asked for.
#[derive(Debug, Clone, Default)]
pub struct CallRequest {
    pub user_id: String,
    pub persona_id: String,
    /// `None`: the user's own number.
    pub phone: Option<PhoneE164>,
    pub template_id: Option<String>,
    pub custom_instructions: Option<String>,
    pub idempotency_key: Option<String>,
    pub scheduled_call_id: Option<String>,
}

/// Who asks.
#[derive(Debug)]
pub enum Requester<'a> {
    /// A signed-in user through the API (the session guard runs in the same gateway batch).
    User {
        ctx: &'a RequestCtx,
        session: &'a Session,
    },
    /// The scheduler, on the user's behalf.
    Scheduler,
}

/// The outcome of a request that was not refused.
#[derive(Debug)]
pub struct Placed {
    /// The call as the API shows it.
    pub call: Value,
    /// An earlier request with the same idempotency key placed it.
    pub replayed: bool,
}

/// Everything a placement needs from its surroundings.
#[derive(Debug)]
pub struct Placement<'a> {
    pub env: &'a Env,
    pub config: &'a Config,
    pub gateway: &'a Gateway,
    /// The Worker's public origin (`https://api.example.com`) for Twilio's callbacks.
    pub public_base_url: String,
    pub request_id: &'a str,
}

pub async fn place_call(
    placement: &Placement<'_>,
    request: CallRequest,
    requester: Requester<'_>,
) -> Result<Placed, ApiError> {
    let telephony = placement.config.telephony.get()?;
    let voice = placement.config.voice.get()?;
    let limiter = Limiter::from_env(placement.env)?;

    // 1. Request budgets (API only).
    if let Requester::User { ctx, .. } = &requester {
        for (key, policy) in [
            (
                LimitKey::call_requests_user(&request.user_id),
                telephony.per_user_policy,
            ),
            (
                LimitKey::call_requests_ip(&ctx.client_ip),
                telephony.per_ip_policy,
            ),
        ] {
            if let callmeback_domain::Take::Limited { retry_after_secs } =
                limiter.take(&key, policy).await?
            {
                return Err(ApiError::new(
                    429,
                    "too_many_requests",
                    "too many call requests; try again later",
                )
                .with_retry_after(u32::try_from(retry_after_secs).unwrap_or(u32::MAX)));
            }
        }
    }

    // 2. Everything the decision needs, in one read.
    let prepare = OpCall::of(&ops::CALLS_PREPARE)
        .param("user_id", request.user_id.as_str())
        .param("persona_id", request.persona_id.as_str())
        .param("template_id", request.template_id.as_deref())
        .param("idempotency_key", request.idempotency_key.as_deref());
    let prepared = run_one(placement, &requester, prepare).await?;
    let row = prepared.first().ok_or_else(ApiError::internal)?;
    if row.get("existing_call_id").is_some_and(|id| !id.is_null()) {
        return replay(placement, &request).await;
    }

    // 3. The rules.
    let call_id = new_id(prefix::CALL, random_16()?);
    let decision = decide(row, &request, &call_id, voice)?;

    // 4. The number's rate limit (atomic: checked and recorded in one call of its object).
    let phone_limit = LimitKey::phone(&phone_key(&telephony.phone_hash_secret, &decision.phone));
    let slot = match limiter.take(&phone_limit, telephony.phone_policy).await? {
        callmeback_domain::Take::Taken { at, .. } => at,
        callmeback_domain::Take::Limited { retry_after_secs } => {
            let error = phone_rate_limited(retry_after_secs, &decision.phone, telephony);
            notify(placement.env, &request.user_id, &error.body()["error"]).await;
            return Err(error);
        }
    };
    let release_slot = || async {
        if let Err(error) = limiter
            .release(&phone_limit, telephony.phone_policy, slot)
            .await
        {
            worker::console_warn!(
                "request {}: phone slot not released: {error}",
                placement.request_id
            );
        }
    };

    // 5. The row: the daily limit and the idempotency key are decided by this one transaction.
    let create = vec![
        OpCall::of(&ops::CALLS_LOCK_USER).param("user_id", request.user_id.as_str()),
        OpCall::of(&ops::CALLS_CREATE)
            .param("id", call_id.as_str())
            .param("user_id", request.user_id.as_str())
            .param("persona_id", request.persona_id.as_str())
            .param("phone_number", decision.phone.as_str())
            .param("scenario_template_id", request.template_id.as_deref())
            .param(
                "custom_instructions",
                request.custom_instructions.as_deref(),
            )
            .param("scheduled_call_id", request.scheduled_call_id.as_deref())
            .param("payment_method", decision.payment_method)
            .param("idempotency_key", request.idempotency_key.as_deref())
            .param("daily_limit", decision.daily_limit),
    ];
    let call = match placement.gateway.batch(create).await {
        Ok(response) => response
            .results
            .into_iter()
            .nth(1)
            .and_then(|result| result.rows.into_iter().next())
            .ok_or_else(ApiError::internal)?,
        Err(GatewayError::Rejected {
            code,
            op_index: Some(1),
            ..
        }) if code == codes::PRECONDITION_FAILED => {
            release_slot().await;
            if request.idempotency_key.is_some()
                && let Ok(placed) = replay(placement, &request).await
            {
                return Ok(placed);
            }
            return Err(daily_limit_reached(decision.daily_limit));
        }
        Err(error) => {
            release_slot().await;
            return Err(error.into());
        }
    };

    // 6. The call's object gets everything the call needs.
    let namespace = placement.env.durable_object(call_session::BINDING)?;
    let init = call_session::send(
        &namespace,
        &call_id,
        "/init",
        &InitRequest {
            plan: decision.plan,
        },
    )
    .await;
    if !init
        .as_ref()
        .is_ok_and(|response| response.status_code() == 200)
    {
        release_slot().await;
        fail_call(placement, &call_id, "the call could not be prepared").await;
        worker::console_error!(
            "request {}: call object not initialised",
            placement.request_id
        );
        return Err(ApiError::internal());
    }

    // 7. Twilio.
    let base = &placement.public_base_url;
    let voice_url = format!("{base}/twilio/voice/{call_id}");
    let status_url = format!("{base}/twilio/status/{call_id}");
    let amd_url = format!("{base}/twilio/amd/{call_id}");
    let create_call = CreateCall {
        to: decision.phone.as_str(),
        from: &telephony.from_number,
        url: &voice_url,
        status_callback: &status_url,
        timeout_secs: telephony.ring_timeout_secs,
        time_limit_secs: decision.time_limit_secs,
        amd_callback: telephony
            .answering_machine_detection
            .then_some(amd_url.as_str()),
    };
    match telephony::create_call(telephony, &create_call).await {
        Ok(resource) => {
            let marked = placement
                .gateway
                .call(
                    &OpCall::of(&ops::CALLS_MARK_PLACED)
                        .param("call_id", call_id.as_str())
                        .param("twilio_call_sid", resource.sid.as_str()),
                )
                .await;
            match marked {
                Ok(result) => {
                    // Only announce `calling` if a fast callback has not already moved it on.
                    let status = result.first().and_then(|row| row.get("status")).cloned();
                    if status.as_ref().and_then(Value::as_str) == Some("calling") {
                        let event = json!({
                            "type": "call_status",
                            "call_id": call_id,
                            "status": "calling",
                        });
                        if let Err(error) =
                            crate::live::publish(placement.env, &request.user_id, &event).await
                        {
                            worker::console_warn!("call status not delivered: {error}");
                        }
                    }
                }
                // The call is ringing; its callbacks will bring the row up to date.
                Err(error) => worker::console_warn!(
                    "request {}: call sid not stored yet: {error:?}",
                    placement.request_id
                ),
            }
            let placed = call_session::send(
                &namespace,
                &call_id,
                "/placed",
                &PlacedRequest {
                    call_sid: resource.sid.clone(),
                },
            )
            .await;
            if placed.is_err() {
                worker::console_warn!(
                    "request {}: call object not told the sid",
                    placement.request_id
                );
            }
            let mut call = call;
            call.insert("twilio_call_sid".to_owned(), json!(resource.sid));
            if call.get("status").and_then(Value::as_str) == Some("initiating") {
                call.insert("status".to_owned(), json!("calling"));
            }
            Ok(Placed {
                call: Value::Object(call),
                replayed: false,
            })
        }
        Err(error) => {
            let reason = error.readable();
            worker::console_warn!(
                "request {}: Twilio refused call {call_id}: {reason}",
                placement.request_id
            );
            release_slot().await;
            fail_call(placement, &call_id, &reason).await;
            let mut call = call;
            call.insert("status".to_owned(), json!("failed"));
            call.insert("error_message".to_owned(), json!(reason));
            Ok(Placed {
                call: Value::Object(call),
                replayed: false,
            })
        }
    }
}

/// Runs one operation, behind the session guard for a user's request.
async fn run_one(
    placement: &Placement<'_>,
    requester: &Requester<'_>,
    op: OpCall,
) -> Result<OpResult, ApiError> {
    match requester {
        Requester::User { ctx, session } => authed_call(ctx, session, op).await,
        Requester::Scheduler => match placement.gateway.call(&op).await {
            Ok(result) => Ok(result),
            Err(GatewayError::Rejected { code, .. }) if code == codes::PRECONDITION_FAILED => {
                Err(ApiError::new(
                    409,
                    "user_unavailable",
                    "the account is deactivated or gone",
                ))
            }
            Err(error) => Err(error.into()),
        },
    }
}

async fn replay(placement: &Placement<'_>, request: &CallRequest) -> Result<Placed, ApiError> {
    let key = request
        .idempotency_key
        .as_deref()
        .ok_or_else(ApiError::internal)?;
    let result = placement
        .gateway
        .call(
            &OpCall::of(&ops::CALLS_BY_IDEMPOTENCY_KEY)
                .param("user_id", request.user_id.as_str())
                .param("idempotency_key", key),
        )
        .await?;
    let call = result
        .rows
        .into_iter()
        .next()
        .ok_or_else(ApiError::internal)?;
    Ok(Placed {
        call: Value::Object(call),
        replayed: true,
    })
}

async fn fail_call(placement: &Placement<'_>, call_id: &str, reason: &str) {
    let marked = placement
        .gateway
        .call(
            &OpCall::of(&ops::CALLS_MARK_FAILED)
                .param("call_id", call_id)
                .param("error_message", reason),
        )
        .await;
    if let Err(error) = marked {
        worker::console_error!(
            "request {}: failed call not recorded: {error:?}",
            placement.request_id
        );
    }
}

async fn notify(env: &Env, user_id: &str, error: &Value) {
    let mut event = json!({"type": "rate_limit_exceeded"});
    if let (Some(target), Some(source)) = (event.as_object_mut(), error.as_object()) {
        for key in [
            "phone_number",
            "retry_after_secs",
            "limit",
            "window_secs",
            "remaining",
        ] {
            if let Some(value) = source.get(key) {
                target.insert(key.to_owned(), value.clone());
            }
        }
    }
    if let Err(error) = crate::live::publish(env, user_id, &event).await {
        worker::console_warn!("rate_limit_exceeded not delivered: {error}");
    }
}

fn phone_rate_limited(
    retry_after_secs: u64,
    phone: &PhoneE164,
    telephony: &TelephonyConfig,
) -> ApiError {
    ApiError::new(
        429,
        "phone_rate_limited",
        format!(
            "this number was called {} times in the last {} minutes; try again later",
            telephony.phone_policy.max_events,
            telephony.phone_policy.window_secs / 60
        ),
    )
    .with_extra("phone_number", json!(phone.masked()))
    .with_extra("limit", json!(telephony.phone_policy.max_events))
    .with_extra("window_secs", json!(telephony.phone_policy.window_secs))
    .with_extra("remaining", json!(0))
    .with_extra("retry_after_secs", json!(retry_after_secs))
    .with_retry_after(u32::try_from(retry_after_secs).unwrap_or(u32::MAX))
}

fn daily_limit_reached(limit: Option<u32>) -> ApiError {
    let refusal = CallRefusal::DailyCallLimit {
        limit: limit.unwrap_or(0),
    };
    ApiError::new(429, refusal.code(), refusal.to_string()).with_extra("limit", json!(limit))
}

fn random_16() -> Result<[u8; 16], ApiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| ApiError::internal())?;
    Ok(bytes)
}

/// What the rules decided for an accepted request.
#[derive(Debug)]
pub struct Decision {
    pub phone: PhoneE164,
    pub plan: CallPlan,
    pub daily_limit: Option<u32>,
    pub time_limit_secs: u32,
    pub payment_method: &'static str,
}

type Row = Map<String, Value>;

fn text<'a>(row: &'a Row, field: &str) -> Option<&'a str> {
    row.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

fn integer(row: &Row, field: &str) -> Option<i64> {
    row.get(field).and_then(crate::rows::int8)
}

/// The rules of placing a call, on the `calls.prepare` row (pure).
pub fn decide(
    row: &Row,
    request: &CallRequest,
    call_id: &str,
    voice: &VoiceConfig,
) -> Result<Decision, ApiError> {
    // The persona.
    if row.get("persona_id").is_none_or(Value::is_null) {
        return Err(ApiError::new(404, "persona_not_found", "no such persona"));
    }
    if row.get("persona_active") != Some(&Value::Bool(true)) {
        return Err(ApiError::new(
            409,
            "persona_inactive",
            "this persona is no longer available",
        ));
    }
    // The template.
    if request.template_id.is_some() {
        if row.get("template_id").is_none_or(Value::is_null) {
            return Err(ApiError::new(
                404,
                "template_not_found",
                "no such scenario template",
            ));
        }
        if row.get("template_active") != Some(&Value::Bool(true)) {
            return Err(ApiError::new(
                409,
                "template_inactive",
                "this scenario template is no longer available",
            ));
        }
    }
    // The number: the request's, else the user's own.
    let phone = match &request.phone {
        Some(phone) => phone.clone(),
        None => text(row, "user_phone")
            .and_then(|phone| PhoneE164::parse(phone).ok())
            .ok_or_else(|| {
                let mut errors = callmeback_domain::FieldErrors::new();
                errors.add(
                    "phone_number",
                    callmeback_domain::FieldError::new(
                        "required",
                        "give a phone number, or add one to your account",
                    ),
                );
                ApiError::validation_failed(errors)
            })?,
    };
    // Tier, calls today, credits.
    let tier: Tier = text(row, "subscription_tier")
        .and_then(|name| name.parse().ok())
        .unwrap_or_default();
    let credits = integer(row, "available_credits").unwrap_or(0);
    let calls_today = u32::try_from(integer(row, "calls_today").unwrap_or(0)).unwrap_or(u32::MAX);
    let limits = tier.limits();
    if let Err(refusal) = can_start_call(tier, credits, calls_today) {
        return Err(match refusal {
            CallRefusal::DailyCallLimit { limit } => daily_limit_reached(Some(limit)),
            CallRefusal::InsufficientCredits { .. } => ApiError::new(
                402,
                refusal.code(),
                "not enough credits for a one-minute call; buy credits to call",
            ),
        });
    }
    // The budget.
    let defaults = BudgetSettings::default();
    let budget = BudgetSettings {
        max_cost_per_call_cents: integer(row, "max_cost_per_call_cents")
            .unwrap_or(defaults.max_cost_per_call_cents),
        max_monthly_spend_cents: integer(row, "max_monthly_spend_cents")
            .unwrap_or(defaults.max_monthly_spend_cents),
        warn_at_percent: integer(row, "warn_at_percent_per_call")
            .unwrap_or(defaults.warn_at_percent),
        auto_cutoff: row
            .get("enable_auto_cutoff")
            .and_then(Value::as_bool)
            .unwrap_or(defaults.auto_cutoff),
    };
    let spent: Cents = text(row, "month_spent_cents")
        .and_then(|amount| amount.parse().ok())
        .unwrap_or(Cents::ZERO);
    let monthly_left =
        Cents::from_whole_cents(budget.max_monthly_spend_cents).micro_cents() - spent.micro_cents();
    if monthly_left <= 0 {
        return Err(ApiError::new(
            402,
            "budget_exhausted",
            "this month's spending limit is reached; raise it in your budget settings",
        ));
    }
    // The conversation.
    let persona_name = text(row, "persona_name")
        .unwrap_or("your caller")
        .to_owned();
    let user_name = text(row, "user_name");
    let memory = text(row, "memory_summary");
    let system_prompt = compose_system_prompt(&PromptParts {
        persona_name: &persona_name,
        core_prompt: text(row, "core_system_prompt").unwrap_or(""),
        relationship_type: text(row, "relationship_type"),
        custom_prompt: text(row, "custom_system_prompt"),
        template_addition: text(row, "system_prompt_addition"),
        custom_instructions: request.custom_instructions.as_deref(),
        memory,
        caller_name: user_name,
    });
    let first_name = user_name.and_then(|name| name.split_whitespace().next());
    let greeting = text(row, "opening_line")
        .or_else(|| text(row, "default_greeting"))
        .map(str::to_owned)
        .unwrap_or_else(|| match first_name {
            Some(name) => format!("Hi {name}, it's {persona_name}! How are you doing?"),
            None => format!("Hi, it's {persona_name}! How are you doing?"),
        });
    let hello = first_name
        .map(|name| format!("Hi {name}"))
        .unwrap_or_else(|| "Hi".to_owned());
    let voicemail_message = match text(row, "template_name") {
        Some(template) => format!(
            "{hello}, it's {persona_name}. I called for our {} call and missed you. I'll try again soon. Bye for now!",
            template.to_lowercase()
        ),
        None => format!(
            "{hello}, it's {persona_name}. Sorry I missed you. I'll call again soon. Bye for now!"
        ),
    };
    let voicemail_action = text(row, "voicemail_action")
        .and_then(|action| action.parse::<VoicemailAction>().ok())
        .unwrap_or_default();
    let base_voice =
        VoiceSettings::merged(VoiceSettings::default(), row.get("default_voice_settings"));
    let voice_settings = VoiceSettings::merged(base_voice, row.get("custom_voice_settings"));
    let voice_id = text(row, "custom_voice_id")
        .or_else(|| text(row, "default_voice_id"))
        .unwrap_or(&voice.default_voice_id)
        .to_owned();
    let credits_at_start = limits
        .needs_credits
        .then(|| u32::try_from(credits.max(0)).unwrap_or(u32::MAX));
    let plan = CallPlan {
        call_id: call_id.to_owned(),
        user_id: request.user_id.clone(),
        persona_id: request.persona_id.clone(),
        persona_name,
        system_prompt,
        greeting,
        previous_memory: memory.map(str::to_owned),
        voicemail: VoicemailPlan {
            action: voicemail_action,
            message: voicemail_message,
        },
        voice: VoiceSpec {
            voice_id,
            settings: voice_settings,
        },
        llm: LlmSpec {
            temperature: row
                .get("llm_temperature")
                .and_then(Value::as_f64)
                .unwrap_or(0.7),
            max_tokens: integer(row, "llm_max_tokens")
                .and_then(|tokens| u32::try_from(tokens).ok())
                .unwrap_or(150),
        },
        limits: CallLimits {
            max_duration_secs: limits.max_call_seconds,
            credits_at_start,
            per_call_budget_cents: budget.max_cost_per_call_cents,
            monthly_remaining_cents: monthly_left.div_euclid(1_000_000),
            warn_percent: u8::try_from(budget.warn_at_percent.clamp(1, 100)).unwrap_or(75),
            auto_cutoff: budget.auto_cutoff,
        },
        rates: voice.rates,
    };
    Ok(Decision {
        phone,
        plan,
        daily_limit: limits.calls_per_day,
        time_limit_secs: limits.max_call_seconds,
        payment_method: if limits.needs_credits {
            "credit"
        } else {
            "subscription"
        },
    })
}

/// The Worker's public origin: the configured one, else the request's own.
pub fn public_base_url(
    config: &TelephonyConfig,
    request_url: Option<&worker::Url>,
) -> Option<String> {
    config.public_base_url.clone().or_else(|| {
        request_url.map(|url| {
            let origin = url.origin().ascii_serialization();
            origin.trim_end_matches('/').to_owned()
        })
    })
}

#[cfg(test)]
mod tests {
    use callmeback_domain::pricing::RATES_2025;

    use super::*;

    fn voice() -> VoiceConfig {
        let bindings = std::collections::HashMap::from([
            ("DEEPGRAM_API_KEY", "k"),
            ("LLM_API_KEY", "k"),
            ("ELEVENLABS_API_KEY", "k"),
        ]);
        struct Map(std::collections::HashMap<&'static str, &'static str>);
        impl crate::config::Bindings for Map {
            fn var(&self, name: &str) -> Option<String> {
                self.0.get(name).map(|v| (*v).to_owned())
            }
            fn secret(&self, name: &str) -> Option<String> {
                self.var(name)
            }
        }
        <VoiceConfig as crate::config::FromBindings>::from_bindings(&Map(bindings)).unwrap()
    }

    fn row(extra: Value) -> Row {
        let mut base = json!({
            "user_id": "usr_1", "user_name": "Ada Lovelace", "user_phone": "+14155550123",
            "voicemail_action": "leave_message",
            "persona_id": "brad", "persona_name": "Brad", "persona_active": true,
            "core_system_prompt": "You are Brad.", "default_greeting": null,
            "default_voice_id": "voice-brad", "default_voice_settings": {"stability": 0.4},
            "llm_temperature": 0.6, "llm_max_tokens": 120,
            "relationship_type": "coach", "custom_system_prompt": null, "custom_voice_id": null,
            "custom_voice_settings": {"speed": 1.1}, "memory_summary": "Runs on Mondays.",
            "template_id": null, "template_active": null, "system_prompt_addition": null,
            "opening_line": null, "template_name": null,
            "available_credits": 5, "subscription_tier": "basic", "calls_today": 0,
            "max_cost_per_call_cents": null, "max_monthly_spend_cents": null,
            "warn_at_percent_per_call": null, "enable_auto_cutoff": null,
            "month_spent_cents": "0", "existing_call_id": null
        });
        for (key, value) in extra.as_object().unwrap() {
            base[key] = value.clone();
        }
        base.as_object().unwrap().clone()
    }

    fn request() -> CallRequest {
        CallRequest {
            user_id: "usr_1".to_owned(),
            persona_id: "brad".to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn an_acceptable_request_gets_a_complete_plan() {
        let decision = decide(&row(json!({})), &request(), "call_1", &voice()).unwrap();
        assert_eq!(
            decision.phone.as_str(),
            "+14155550123",
            "the user's own number by default"
        );
        assert_eq!(decision.daily_limit, Some(10));
        assert_eq!(decision.time_limit_secs, 600);
        let plan = decision.plan;
        assert_eq!(plan.limits.credits_at_start, Some(5));
        assert_eq!(plan.limits.monthly_remaining_cents, 10_000);
        assert!(
            plan.system_prompt.contains("You are Brad.")
                && plan.system_prompt.contains("Runs on Mondays.")
        );
        assert_eq!(plan.greeting, "Hi Ada, it's Brad! How are you doing?");
        assert_eq!(plan.voice.voice_id, "voice-brad");
        assert_eq!(plan.voice.settings.stability, 0.4);
        assert_eq!(plan.voice.settings.speed, 1.1);
        assert_eq!(plan.llm.max_tokens, 120);
        assert_eq!(plan.rates, RATES_2025);
    }

    #[test]
    fn each_refusal_has_its_own_code() {
        let cases = [
            (json!({"persona_id": null}), "persona_not_found"),
            (json!({"persona_active": false}), "persona_inactive"),
            (json!({"user_phone": null}), "validation_failed"),
            (json!({"calls_today": 10}), "daily_call_limit"),
            (json!({"available_credits": 0}), "insufficient_credits"),
            (
                json!({"month_spent_cents": "10000.0000"}),
                "budget_exhausted",
            ),
        ];
        for (change, code) in cases {
            let error = decide(&row(change.clone()), &request(), "call_1", &voice()).unwrap_err();
            assert_eq!(error.code, code, "{change}");
        }
        let mut with_template = request();
        with_template.template_id = Some("missing".to_owned());
        assert_eq!(
            decide(&row(json!({})), &with_template, "c", &voice())
                .unwrap_err()
                .code,
            "template_not_found"
        );
        let inactive = row(json!({"template_id": "t1", "template_active": false}));
        assert_eq!(
            decide(&inactive, &with_template, "c", &voice())
                .unwrap_err()
                .code,
            "template_inactive"
        );
    }

    #[test]
    fn free_calls_need_no_credits_and_templates_shape_the_call() {
        let free = row(json!({
            "subscription_tier": "free", "available_credits": 0, "template_id": "t1",
            "template_active": true, "opening_line": "Rise and shine!", "template_name": "Morning Motivation"
        }));
        let mut with_template = request();
        with_template.template_id = Some("t1".to_owned());
        let decision = decide(&free, &with_template, "c", &voice()).unwrap();
        assert_eq!(decision.plan.limits.credits_at_start, None);
        assert_eq!(decision.time_limit_secs, 300);
        assert_eq!(decision.plan.greeting, "Rise and shine!");
        assert!(
            decision
                .plan
                .voicemail
                .message
                .contains("morning motivation call")
        );
    }
}
