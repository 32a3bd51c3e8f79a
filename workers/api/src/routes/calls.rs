//! Phone calls: place one, list them, read one (costs, metrics, transcript), hang up; and a
//! number's rate-limit status.
//!
//! - `POST /api/calls` `{persona_id, phone_number?, template_id?, custom_instructions?}` → 202
//!   `{call}`. Every check and its code is in [`crate::placing`]. An `Idempotency-Key` header
//!   (1–255 printable characters) makes a retried request answer with the call the first one
//!   placed (`replayed: true`), never a second call. A call Twilio refused is still answered with
//!   202: `call.status` is `failed` and `call.error_message` says why.
//! - `GET /api/calls?limit=&cursor=`: the caller's calls, newest first (keyset pagination).
//! - `GET /api/calls/{id}`: one call with `costs`, `metrics` and `transcript` once it is over.
//! - `POST /api/calls/{id}/hangup`: ends a ringing or running call (202); 409 `call_ended` when
//!   it is already over.
//! - `GET /api/rate-limit?phone_number=`: how many calls the number may still receive this hour.

use callmeback_domain::calls::phone_key;
use callmeback_domain::{FieldErrors, PhoneE164, ValidationError, is_valid_id};
use callmeback_gateway_api::OpCall;
use callmeback_gateway_api::ops::calls as ops;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use worker::{Method, Response};

use super::{RouteDef, RouteRequest, Service, json_response};
use crate::call_session;
use crate::ctx::read_json;
use crate::error::ApiError;
use crate::limits::{LimitKey, Limiter};
use crate::pagination::{PageQuery, page};
use crate::placing::{self, CallRequest, Placement, Requester};
use crate::rows::into_first_row;
use crate::session::{Access, authed_call};

const CREATE_CALL: &str = "createCall";
const LIST_CALLS: &str = "listCalls";
const GET_CALL: &str = "getCall";
const HANG_UP_CALL: &str = "hangUpCall";
const GET_RATE_LIMIT: &str = "getPhoneRateLimit";

pub(super) const ROUTES: &[RouteDef] = &[
    RouteDef::new(
        Method::Post,
        "/api/calls",
        Access::User,
        Service::Calls,
        CREATE_CALL,
    ),
    RouteDef::new(
        Method::Get,
        "/api/calls",
        Access::User,
        Service::Calls,
        LIST_CALLS,
    ),
    RouteDef::new(
        Method::Get,
        "/api/calls/{id}",
        Access::User,
        Service::Calls,
        GET_CALL,
    ),
    RouteDef::new(
        Method::Post,
        "/api/calls/{id}/hangup",
        Access::User,
        Service::Calls,
        HANG_UP_CALL,
    ),
    RouteDef::new(
        Method::Get,
        "/api/rate-limit",
        Access::User,
        Service::Calls,
        GET_RATE_LIMIT,
    ),
];

pub(super) async fn handle(route: &RouteDef, request: RouteRequest) -> Result<Response, ApiError> {
    match route.name {
        CREATE_CALL => create(request).await,
        LIST_CALLS => list(request).await,
        GET_CALL => get(request).await,
        HANG_UP_CALL => hang_up(request).await,
        GET_RATE_LIMIT => rate_limit(request).await,
        _ => Err(ApiError::not_found()),
    }
}

/// `POST /api/calls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    persona_id: Option<String>,
    #[serde(default)]
    phone_number: Option<String>,
    #[serde(default)]
    template_id: Option<String>,
    #[serde(default)]
    custom_instructions: Option<String>,
}

const MAX_INSTRUCTIONS_CHARS: usize = 2000;

/// Checks the body field by field.
fn call_request(
    body: CreateBody,
    user_id: &str,
    idempotency_key: Option<String>,
) -> Result<CallRequest, ApiError> {
    let mut errors = FieldErrors::new();
    let persona_id = match body.persona_id.as_deref().map(str::trim) {
        Some(id) if is_slug(id) => Some(id.to_owned()),
        Some(_) => {
            errors.add(
                "persona_id",
                callmeback_domain::FieldError::new("invalid", "not a persona id"),
            );
            None
        }
        None => {
            errors.add("persona_id", ValidationError::Required);
            None
        }
    };
    let phone = match body
        .phone_number
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        Some(number) => errors.check("phone_number", PhoneE164::parse(number)),
        None => None,
    };
    let template_id = body
        .template_id
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty());
    if template_id.as_deref().is_some_and(|id| !is_slug(id)) {
        errors.add(
            "template_id",
            callmeback_domain::FieldError::new("invalid", "not a template id"),
        );
    }
    let custom_instructions = body
        .custom_instructions
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    if custom_instructions
        .as_deref()
        .is_some_and(|text| text.chars().count() > MAX_INSTRUCTIONS_CHARS || text.contains('\0'))
    {
        errors.add(
            "custom_instructions",
            ValidationError::TooLong {
                max: MAX_INSTRUCTIONS_CHARS,
            },
        );
    }
    if !errors.is_empty() {
        return Err(ApiError::validation_failed(errors));
    }
    Ok(CallRequest {
        user_id: user_id.to_owned(),
        persona_id: persona_id.unwrap_or_default(),
        phone,
        template_id,
        custom_instructions,
        idempotency_key,
        scheduled_call_id: None,
    })
}

/// Persona and template ids: lowercase letters, digits, `-` and `_`, 1 to 100 characters.
fn is_slug(id: &str) -> bool {
    (1..=100).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The `Idempotency-Key` header: 1–255 visible ASCII characters.
fn idempotency_key(request: &RouteRequest) -> Result<Option<String>, ApiError> {
    let Some(key) = request.req.headers().get("idempotency-key").ok().flatten() else {
        return Ok(None);
    };
    if (1..=255).contains(&key.len()) && key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        Ok(Some(key))
    } else {
        Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ))
    }
}

async fn create(mut request: RouteRequest) -> Result<Response, ApiError> {
    let key = idempotency_key(&request)?;
    let body: CreateBody = read_json(&mut request.req).await?;
    let session = request.session()?;
    let call_request = call_request(body, session.user_id(), key)?;
    let ctx = &request.ctx;
    let telephony = ctx.config.telephony.get()?;
    let url = request.req.url().ok();
    let public_base_url =
        placing::public_base_url(telephony, url.as_ref()).ok_or_else(ApiError::internal)?;
    let gateway = ctx.gateway()?;
    let placement = Placement {
        env: &ctx.env,
        config: &ctx.config,
        gateway: &gateway,
        public_base_url,
        request_id: &ctx.request_id,
    };
    let placed =
        placing::place_call(&placement, call_request, Requester::User { ctx, session }).await?;
    json_response(
        202,
        &json!({"call": call_body(placed.call), "replayed": placed.replayed}),
    )
}

async fn list(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let query = PageQuery::parse(request.req.url()?.query_pairs())?;
    let op = query.apply(OpCall::of(&ops::CALLS_LIST).param("user_id", session.user_id()));
    let result = authed_call(&request.ctx, session, op).await?;
    let (calls, next_cursor) = page(result, query.limit, |row| {
        call_body(Value::Object(row.clone()))
    })?;
    json_response(200, &json!({"calls": calls, "next_cursor": next_cursor}))
}

fn call_id_param(request: &RouteRequest) -> Result<String, ApiError> {
    let id = request.params.get("id");
    if is_valid_id(callmeback_domain::ids::prefix::CALL, id) {
        Ok(id.to_owned())
    } else {
        Err(call_not_found())
    }
}

fn call_not_found() -> ApiError {
    ApiError::new(404, "call_not_found", "no such call")
}

async fn fetch_call(request: &RouteRequest) -> Result<Map<String, Value>, ApiError> {
    let session = request.session()?;
    let call_id = call_id_param(request)?;
    let op = OpCall::of(&ops::CALLS_GET)
        .param("user_id", session.user_id())
        .param("call_id", call_id.as_str());
    match authed_call(&request.ctx, session, op).await {
        Ok(result) => into_first_row(result),
        Err(error) if error.code == "precondition_failed" => Err(call_not_found()),
        Err(error) => Err(error),
    }
}

async fn get(request: RouteRequest) -> Result<Response, ApiError> {
    let row = fetch_call(&request).await?;
    json_response(200, &json!({"call": call_detail(row)}))
}

async fn hang_up(request: RouteRequest) -> Result<Response, ApiError> {
    let row = fetch_call(&request).await?;
    let finished = row.get("finalized_at").is_some_and(|at| !at.is_null());
    let status = row
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if finished
        || status
            .parse::<callmeback_domain::calls::CallStatus>()
            .is_ok_and(|s| s.is_final())
    {
        return Err(ApiError::new(409, "call_ended", "the call is already over"));
    }
    let call_id = call_id_param(&request)?;
    let namespace = request.ctx.env.durable_object(call_session::BINDING)?;
    let response = call_session::send(&namespace, &call_id, "/hangup", &json!({})).await?;
    if response.status_code() != 200 {
        worker::console_error!(
            "request {}: hang-up not accepted ({})",
            request.ctx.request_id,
            response.status_code()
        );
        return Err(ApiError::internal());
    }
    json_response(
        202,
        &json!({"call": call_detail(row), "hangup": "requested"}),
    )
}

async fn rate_limit(request: RouteRequest) -> Result<Response, ApiError> {
    let url = request.req.url()?;
    let number = url
        .query_pairs()
        .find(|(key, _)| key == "phone_number")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    let phone = PhoneE164::parse(number.trim()).map_err(|error| {
        let mut errors = FieldErrors::new();
        errors.add("phone_number", error);
        ApiError::validation_failed(errors)
    })?;
    let telephony = request.ctx.config.telephony.get()?;
    let key = LimitKey::phone(&phone_key(&telephony.phone_hash_secret, &phone));
    let decision = Limiter::from_env(&request.ctx.env)?
        .check(&key, telephony.phone_policy)
        .await?;
    let mut body = crate::live::rate_limit_status_json(&phone, telephony.phone_policy, decision);
    if let Some(object) = body.as_object_mut() {
        object.remove("type");
    }
    json_response(200, &body)
}

/// Fields of a call row the API shows.
const CALL_FIELDS: &[&str] = &[
    "id",
    "persona_id",
    "persona_name",
    "status",
    "phone_number",
    "scenario_template_id",
    "custom_instructions",
    "scheduled_call_id",
    "duration_seconds",
    "credits_used",
    "actual_cost_cents",
    "error_message",
    "answered_at",
    "answered_by",
    "ended_at",
    "created_at",
    "updated_at",
];

fn call_body(row: Value) -> Value {
    let Value::Object(row) = row else {
        return row;
    };
    Value::Object(
        CALL_FIELDS
            .iter()
            .filter_map(|field| {
                row.get(*field)
                    .map(|value| ((*field).to_owned(), value.clone()))
            })
            .collect(),
    )
}

/// A call with its costs, metrics and transcript (null until the call is over).
fn call_detail(row: Map<String, Value>) -> Value {
    let get = |field: &str| row.get(field).cloned().unwrap_or(Value::Null);
    let mut body = call_body(Value::Object(row.clone()));
    let has_costs = row.get("total_cost_cents").is_some_and(|v| !v.is_null());
    let costs = has_costs.then(|| {
        json!({
            "twilio_cents": get("twilio_cost_cents"),
            "deepgram_cents": get("deepgram_cost_cents"),
            "llm_cents": get("cerebras_cost_cents"),
            "elevenlabs_cents": get("elevenlabs_cost_cents"),
            "total_cents": get("total_cost_cents"),
            "usage": {
                "call_seconds": get("twilio_duration_seconds"),
                "stt_audio_seconds": get("deepgram_audio_seconds"),
                "llm_input_tokens": get("cerebras_input_tokens"),
                "llm_output_tokens": get("cerebras_output_tokens"),
                "tts_characters": get("elevenlabs_characters"),
            },
        })
    });
    let has_log = row.get("turn_count").is_some_and(|v| !v.is_null());
    let metrics = has_log.then(|| {
        json!({
            "turn_count": get("turn_count"),
            "interrupt_count": get("interrupt_count"),
            "avg_response_time_ms": get("avg_response_time_ms"),
            "response_times_ms": get("response_times_ms"),
            "end_reason": get("end_reason"),
            "failures": get("failures"),
        })
    });
    if let Some(object) = body.as_object_mut() {
        object.insert("costs".to_owned(), costs.unwrap_or(Value::Null));
        object.insert("metrics".to_owned(), metrics.unwrap_or(Value::Null));
        object.insert("transcript".to_owned(), get("transcript"));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> CreateBody {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn bodies_are_checked_field_by_field() {
        let ok = call_request(
            body(json!({"persona_id": "brad", "phone_number": "+14155550123"})),
            "usr_1",
            None,
        )
        .unwrap();
        assert_eq!(ok.persona_id, "brad");
        assert_eq!(ok.phone.unwrap().as_str(), "+14155550123");
        let error = call_request(
            body(json!({"phone_number": "12345", "template_id": "Bad Id"})),
            "usr_1",
            None,
        )
        .unwrap_err();
        let fields = error.fields.unwrap();
        assert_eq!(fields["persona_id"]["code"], "required");
        assert_eq!(fields["phone_number"]["code"], "invalid_phone");
        assert_eq!(fields["template_id"]["code"], "invalid");
        assert!(
            serde_json::from_value::<CreateBody>(json!({"persona_id": "brad", "extra": 1}))
                .is_err()
        );
    }

    #[test]
    fn call_bodies_show_only_public_fields() {
        let shown = call_body(
            json!({"id": "call_1", "status": "calling", "twilio_call_sid": "CA1", "idempotency_key": "k"}),
        );
        assert_eq!(shown, json!({"id": "call_1", "status": "calling"}));
        let detail = call_detail(json!({"id": "call_1", "status": "completed", "total_cost_cents": "1.2000", "turn_count": 3, "transcript": []}).as_object().unwrap().clone());
        assert_eq!(detail["costs"]["total_cents"], "1.2000");
        assert_eq!(detail["metrics"]["turn_count"], 3);
        assert_eq!(detail["transcript"], json!([]));
    }

    #[test]
    fn every_gateway_call_matches_its_spec() {
        let query = PageQuery::parse(std::iter::empty()).unwrap();
        for call in [
            query.apply(OpCall::of(&ops::CALLS_LIST).param("user_id", "usr_1")),
            OpCall::of(&ops::CALLS_GET)
                .param("user_id", "usr_1")
                .param("call_id", "call_1"),
        ] {
            assert_eq!(call.conforms(), Ok(()), "{}", call.op);
        }
    }
}
