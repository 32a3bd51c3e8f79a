//! The admin console of both catalogues: list, create, change and retire personas and templates
//! (these routes, and only these, return system prompts).

use callmeback_domain::fields::is_slug;
use callmeback_domain::personas::{
    Intent, PersonaBody, TemplateBody, persona_params, template_params,
};
use callmeback_gateway_api::OpCall;
use serde_json::{Map, Value, json};
use worker::Response;

use super::{
    is_precondition_failed, persona_not_found, refine_conflict, refine_unknown_persona, single_row,
    template_not_found,
};
use crate::ctx::read_json;
use crate::error::ApiError;
use crate::routes::{RouteRequest, json_response};
use crate::rows;
use crate::session::authed_call;

pub(super) async fn create_persona(mut request: RouteRequest) -> Result<Response, ApiError> {
    let body: PersonaBody = read_json(&mut request.req).await?;
    let params = persona_params(body, Intent::Create).map_err(ApiError::validation_failed)?;
    let mut op = OpCall::new("personas.admin_create");
    op.params.extend(params);
    let result = authed_call(&request.ctx, request.session()?, op)
        .await
        .map_err(|error| refine_conflict(error, "a persona with this id already exists"))?;
    json_response(201, &json!({ "persona": single_row(result)? }))
}

pub(super) async fn update_persona(mut request: RouteRequest) -> Result<Response, ApiError> {
    let id = request.params.get("id").to_owned();
    let body: PersonaBody = read_json(&mut request.req).await?;
    if !is_slug(&id) {
        return Err(persona_not_found());
    }
    let params = persona_params(body, Intent::Update).map_err(ApiError::validation_failed)?;
    let mut op = OpCall::new("personas.admin_update").param("id", id);
    op.params.extend(params);
    let result = authed_call(&request.ctx, request.session()?, op)
        .await
        .map_err(|error| {
            if is_precondition_failed(&error) {
                persona_not_found()
            } else {
                error
            }
        })?;
    json_response(200, &json!({ "persona": single_row(result)? }))
}

pub(super) async fn create_template(mut request: RouteRequest) -> Result<Response, ApiError> {
    let body: TemplateBody = read_json(&mut request.req).await?;
    let params = template_params(body, Intent::Create).map_err(ApiError::validation_failed)?;
    let mut op = OpCall::new("templates.admin_create");
    op.params.extend(params);
    let result = authed_call(&request.ctx, request.session()?, op)
        .await
        .map_err(|error| {
            refine_unknown_persona(refine_conflict(
                error,
                "a template with this id or name already exists",
            ))
        })?;
    json_response(201, &json!({ "template": single_row(result)? }))
}

pub(super) async fn update_template(mut request: RouteRequest) -> Result<Response, ApiError> {
    let id = request.params.get("id").to_owned();
    let body: TemplateBody = read_json(&mut request.req).await?;
    if !is_slug(&id) {
        return Err(template_not_found());
    }
    let params = template_params(body, Intent::Update).map_err(ApiError::validation_failed)?;
    let mut op = OpCall::new("templates.admin_update").param("id", id);
    op.params.extend(params);
    let result = authed_call(&request.ctx, request.session()?, op)
        .await
        .map_err(|error| {
            if is_precondition_failed(&error) {
                template_not_found()
            } else {
                refine_unknown_persona(refine_conflict(
                    error,
                    "a template with this name already exists",
                ))
            }
        })?;
    json_response(200, &json!({ "template": single_row(result)? }))
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Catalogue {
    Persona,
    Template,
}

pub(super) async fn list(request: RouteRequest, op: &str, key: &str) -> Result<Response, ApiError> {
    let result = authed_call(&request.ctx, request.session()?, OpCall::new(op)).await?;
    let mut body = Map::new();
    body.insert(key.to_owned(), Value::Array(rows::into_values(result)));
    json_response(200, &Value::Object(body))
}

/// `DELETE` retires the item (`is_active = false`): calls keep referring to it, and an admin can
/// bring it back with `PUT {"is_active": true}`. Repeating it answers 204 again.
pub(super) async fn deactivate(
    request: RouteRequest,
    catalogue: Catalogue,
) -> Result<Response, ApiError> {
    let id = request.params.get("id");
    let (op, not_found): (&str, fn() -> ApiError) = match catalogue {
        Catalogue::Persona => ("personas.admin_deactivate", persona_not_found),
        Catalogue::Template => ("templates.admin_deactivate", template_not_found),
    };
    if !is_slug(id) {
        return Err(not_found());
    }
    authed_call(
        &request.ctx,
        request.session()?,
        OpCall::new(op).param("id", id),
    )
    .await
    .map_err(|error| {
        if is_precondition_failed(&error) {
            not_found()
        } else {
            error
        }
    })?;
    Ok(Response::empty()?.with_status(204))
}
