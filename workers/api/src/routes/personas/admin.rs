//! The admin console of both catalogues: list, create, change and retire personas and templates
//! (these routes, and only these, return system prompts).

use callmeback_domain::fields::is_slug;
use callmeback_domain::personas::{
    Intent, PersonaBody, TemplateBody, persona_params, template_params,
};
use callmeback_gateway_api::OpCall;
use callmeback_gateway_api::ops::personas;
use serde_json::{Map, Value, json};
use worker::Response;

use super::{
    persona_not_found, refine_conflict, refine_not_found, refine_unknown_persona, single_row,
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
    let op = Catalogue::Persona.create_op(params);
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
    let op = Catalogue::Persona.update_op(&id, params);
    let result = authed_call(&request.ctx, request.session()?, op)
        .await
        .map_err(|error| refine_not_found(error, persona_not_found))?;
    json_response(200, &json!({ "persona": single_row(result)? }))
}

pub(super) async fn create_template(mut request: RouteRequest) -> Result<Response, ApiError> {
    let body: TemplateBody = read_json(&mut request.req).await?;
    let params = template_params(body, Intent::Create).map_err(ApiError::validation_failed)?;
    let op = Catalogue::Template.create_op(params);
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
    let op = Catalogue::Template.update_op(&id, params);
    let result = authed_call(&request.ctx, request.session()?, op)
        .await
        .map_err(|error| {
            let error = refine_not_found(error, template_not_found);
            refine_unknown_persona(refine_conflict(
                error,
                "a template with this name already exists",
            ))
        })?;
    json_response(200, &json!({ "template": single_row(result)? }))
}

/// Which of the two catalogues an admin route manages.
#[derive(Debug, Clone, Copy)]
pub(super) enum Catalogue {
    Persona,
    Template,
}

impl Catalogue {
    /// The member the list answers under.
    fn key(self) -> &'static str {
        match self {
            Catalogue::Persona => "personas",
            Catalogue::Template => "templates",
        }
    }

    fn not_found(self) -> ApiError {
        match self {
            Catalogue::Persona => persona_not_found(),
            Catalogue::Template => template_not_found(),
        }
    }

    fn list_op(self) -> OpCall {
        OpCall::of(match self {
            Catalogue::Persona => &personas::ADMIN_LIST,
            Catalogue::Template => &personas::TEMPLATES_ADMIN_LIST,
        })
    }

    /// `params` as `persona_params` / `template_params` validated them (with `id`).
    fn create_op(self, params: Map<String, Value>) -> OpCall {
        OpCall::of(match self {
            Catalogue::Persona => &personas::ADMIN_CREATE,
            Catalogue::Template => &personas::TEMPLATES_ADMIN_CREATE,
        })
        .with_params(params)
    }

    /// `params` as `persona_params` / `template_params` validated them (with `set_fields`).
    fn update_op(self, id: &str, params: Map<String, Value>) -> OpCall {
        OpCall::of(match self {
            Catalogue::Persona => &personas::ADMIN_UPDATE,
            Catalogue::Template => &personas::TEMPLATES_ADMIN_UPDATE,
        })
        .param("id", id)
        .with_params(params)
    }

    fn deactivate_op(self, id: &str) -> OpCall {
        OpCall::of(match self {
            Catalogue::Persona => &personas::ADMIN_DEACTIVATE,
            Catalogue::Template => &personas::TEMPLATES_ADMIN_DEACTIVATE,
        })
        .param("id", id)
    }
}

pub(super) async fn list(
    request: RouteRequest,
    catalogue: Catalogue,
) -> Result<Response, ApiError> {
    let result = authed_call(&request.ctx, request.session()?, catalogue.list_op()).await?;
    let mut body = Map::new();
    body.insert(
        catalogue.key().to_owned(),
        Value::Array(rows::into_values(result)),
    );
    json_response(200, &Value::Object(body))
}

/// `DELETE` retires the item (`is_active = false`): calls keep referring to it, and an admin can
/// bring it back with `PUT {"is_active": true}`. Repeating it answers 204 again.
pub(super) async fn deactivate(
    request: RouteRequest,
    catalogue: Catalogue,
) -> Result<Response, ApiError> {
    let id = request.params.get("id");
    if !is_slug(id) {
        return Err(catalogue.not_found());
    }
    authed_call(
        &request.ctx,
        request.session()?,
        catalogue.deactivate_op(id),
    )
    .await
    .map_err(|error| refine_not_found(error, || catalogue.not_found()))?;
    Ok(Response::empty()?.with_status(204))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gateway_call_matches_its_spec() {
        let persona = |intent| {
            let body: PersonaBody = serde_json::from_value(json!({
                "id": "coach-kim", "name": "Kim", "core_system_prompt": "You are Kim."
            }))
            .unwrap();
            persona_params(body, intent).expect("valid")
        };
        let template = |intent| {
            let body: TemplateBody = serde_json::from_value(json!({
                "id": "tpl_focus", "name": "Focus", "system_prompt_addition": "Help them focus."
            }))
            .unwrap();
            template_params(body, intent).expect("valid")
        };
        let update: PersonaBody = serde_json::from_value(json!({"name": "Kim"})).unwrap();
        let persona_update = persona_params(update, Intent::Update).expect("valid");
        let update: TemplateBody = serde_json::from_value(json!({"opening_line": null})).unwrap();
        let template_update = template_params(update, Intent::Update).expect("valid");
        let mut calls = vec![
            Catalogue::Persona.create_op(persona(Intent::Create)),
            Catalogue::Persona.update_op("coach-kim", persona_update),
            Catalogue::Template.create_op(template(Intent::Create)),
            Catalogue::Template.update_op("tpl_focus", template_update),
        ];
        for catalogue in [Catalogue::Persona, Catalogue::Template] {
            calls.push(catalogue.list_op());
            calls.push(catalogue.deactivate_op("x1"));
        }
        for call in calls {
            assert_eq!(call.conforms(), Ok(()), "{}", call.op);
        }
    }
}
