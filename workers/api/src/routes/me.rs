//! What the app shows and lets the user change about their calls:
//! - `GET /api/me/preferences`, `PUT /api/me/preferences` `{voicemail_action}`: what the persona
//!   does when an answering machine picks up (`leave_message`, the default, or `hang_up`);
//! - `GET /api/personas/{id}/memory`, `DELETE /api/personas/{id}/memory`: what a persona remembers
//!   of the user from earlier calls (a few sentences it wrote after the last call, given to it at
//!   the next one; never payment or phone details), and forgetting it.

use callmeback_domain::calls::VoicemailAction;
use callmeback_domain::{FieldError, FieldErrors};
use callmeback_gateway_api::OpCall;
use callmeback_gateway_api::ops::calls as ops;
use serde::Deserialize;
use serde_json::{Value, json};
use worker::{Method, Response};

use super::{RouteDef, RouteRequest, Service, json_response};
use crate::ctx::read_json;
use crate::error::ApiError;
use crate::rows::into_first_row;
use crate::session::{Access, authed_call};

const GET_PREFERENCES: &str = "getPreferences";
const PUT_PREFERENCES: &str = "putPreferences";
const GET_MEMORY: &str = "getPersonaMemory";
const DELETE_MEMORY: &str = "deletePersonaMemory";

pub(super) const ROUTES: &[RouteDef] = &[
    RouteDef::new(
        Method::Get,
        "/api/me/preferences",
        Access::User,
        Service::Me,
        GET_PREFERENCES,
    ),
    RouteDef::new(
        Method::Put,
        "/api/me/preferences",
        Access::User,
        Service::Me,
        PUT_PREFERENCES,
    ),
    RouteDef::new(
        Method::Get,
        "/api/personas/{id}/memory",
        Access::User,
        Service::Me,
        GET_MEMORY,
    ),
    RouteDef::new(
        Method::Delete,
        "/api/personas/{id}/memory",
        Access::User,
        Service::Me,
        DELETE_MEMORY,
    ),
];

pub(super) async fn handle(route: &RouteDef, request: RouteRequest) -> Result<Response, ApiError> {
    match route.name {
        GET_PREFERENCES => get_preferences(request).await,
        PUT_PREFERENCES => put_preferences(request).await,
        GET_MEMORY => get_memory(request).await,
        DELETE_MEMORY => delete_memory(request).await,
        _ => Err(ApiError::not_found()),
    }
}

async fn get_preferences(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let op = OpCall::of(&ops::PREFERENCES_GET).param("user_id", session.user_id());
    let row = into_first_row(authed_call(&request.ctx, session, op).await?)?;
    json_response(
        200,
        &json!({"voicemail_action": row.get("voicemail_action").cloned().unwrap_or(Value::Null)}),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreferencesBody {
    #[serde(default)]
    voicemail_action: Option<String>,
}

async fn put_preferences(mut request: RouteRequest) -> Result<Response, ApiError> {
    let body: PreferencesBody = read_json(&mut request.req).await?;
    let action = body
        .voicemail_action
        .as_deref()
        .and_then(|action| action.parse::<VoicemailAction>().ok())
        .ok_or_else(|| {
            let mut errors = FieldErrors::new();
            errors.add(
                "voicemail_action",
                FieldError::new("invalid", "leave_message or hang_up"),
            );
            ApiError::validation_failed(errors)
        })?;
    let session = request.session()?;
    let op = OpCall::of(&ops::PREFERENCES_SET)
        .param("user_id", session.user_id())
        .param("voicemail_action", action.as_str());
    let row = into_first_row(authed_call(&request.ctx, session, op).await?)?;
    json_response(
        200,
        &json!({"voicemail_action": row.get("voicemail_action").cloned().unwrap_or(Value::Null)}),
    )
}

fn persona_id(request: &RouteRequest) -> Result<&str, ApiError> {
    let id = request.params.get("id");
    let valid = (1..=100).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if valid {
        Ok(id)
    } else {
        Err(persona_not_found())
    }
}

fn persona_not_found() -> ApiError {
    ApiError::new(404, "persona_not_found", "no such persona")
}

async fn get_memory(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let op = OpCall::of(&ops::MEMORY_GET)
        .param("user_id", session.user_id())
        .param("persona_id", persona_id(&request)?);
    let row = match authed_call(&request.ctx, session, op).await {
        Ok(result) => into_first_row(result)?,
        Err(error) if error.code == "precondition_failed" => return Err(persona_not_found()),
        Err(error) => return Err(error),
    };
    json_response(
        200,
        &json!({
            "persona_id": row.get("persona_id").cloned().unwrap_or(Value::Null),
            "summary": row.get("memory_summary").cloned().unwrap_or(Value::Null),
            "updated_at": row.get("memory_updated_at").cloned().unwrap_or(Value::Null),
        }),
    )
}

async fn delete_memory(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let op = OpCall::of(&ops::MEMORY_CLEAR)
        .param("user_id", session.user_id())
        .param("persona_id", persona_id(&request)?);
    authed_call(&request.ctx, session, op).await?;
    Ok(Response::empty()?.with_status(204))
}
