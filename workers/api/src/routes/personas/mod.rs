//! Personas, the caller's relationships with them, and call scenario templates: the public
//! catalogue ([`catalogue`]), the caller's relationships ([`relationships`]) and the admin
//! console for both catalogues ([`admin`]); the route table and what they share are here.
//!
//! The catalogue (`GET /api/personas`, `GET /api/templates`) is public: a visitor picks a persona
//! before signing up. It never contains a system prompt, which is the product's craft and also
//! what a prompt-injection attacker would most like to read; only admin routes return prompts.
//!
//! A relationship is one user's customisation of a persona. Its owner is always the session's
//! user: no route takes a user id from the path or the body, so nobody can read or change someone
//! else's relationships.
//!
//! # Partial updates (`PUT` bodies)
//! A `PUT` changes only the fields present in the body: an absent field keeps its value, a value
//! replaces it, and an explicit `null` clears it, which is allowed only for optional fields
//! (`custom_system_prompt`, `voice_id`, `voice_settings`, `description`, …). `null` for a field
//! that always has a value (`relationship_type`, `is_favorite`, `name`, …) is refused with the
//! field code `not_nullable`. An empty or all-blank string for an optional text field clears it
//! like `null`. The gateway receives the names of the sent fields as `set_fields`.
//!
//! Body members are read as raw JSON values and checked one by one, so every wrong field gets its
//! own entry in `fields` (`invalid_type`, `too_long`, `out_of_range`, `unknown_field` inside
//! `voice_settings`, …). Unknown top-level members are refused as `invalid_body`, like every body
//! of the API. Those rules are `callmeback_domain::personas` (and `callmeback_domain::fields`).

mod admin;
mod catalogue;
mod relationships;

use callmeback_domain::{FieldError, FieldErrors};
use callmeback_gateway_api::OpResult;
use serde_json::Value;
use worker::{Method, Response};

use super::{Access, RouteDef, RouteRequest, Service};
use crate::error::ApiError;
use crate::rows;

const LIST_PERSONAS: &str = "listPersonas";
const GET_PERSONA: &str = "getPersona";
const LIST_MY_PERSONAS: &str = "listMyPersonas";
const PUT_RELATIONSHIP: &str = "putPersonaRelationship";
const LIST_TEMPLATES: &str = "listTemplates";
const ADMIN_LIST_PERSONAS: &str = "adminListPersonas";
const ADMIN_CREATE_PERSONA: &str = "adminCreatePersona";
const ADMIN_UPDATE_PERSONA: &str = "adminUpdatePersona";
const ADMIN_DEACTIVATE_PERSONA: &str = "adminDeactivatePersona";
const ADMIN_LIST_TEMPLATES: &str = "adminListTemplates";
const ADMIN_CREATE_TEMPLATE: &str = "adminCreateTemplate";
const ADMIN_UPDATE_TEMPLATE: &str = "adminUpdateTemplate";
const ADMIN_DEACTIVATE_TEMPLATE: &str = "adminDeactivateTemplate";

pub(super) const ROUTES: &[RouteDef] = &[
    RouteDef::new(
        Method::Get,
        "/api/personas",
        Access::Public,
        Service::Personas,
        LIST_PERSONAS,
    ),
    RouteDef::new(
        Method::Get,
        "/api/personas/{id}",
        Access::Public,
        Service::Personas,
        GET_PERSONA,
    ),
    RouteDef::new(
        Method::Put,
        "/api/personas/{id}/relationship",
        Access::User,
        Service::Personas,
        PUT_RELATIONSHIP,
    ),
    RouteDef::new(
        Method::Get,
        "/api/me/personas",
        Access::User,
        Service::Personas,
        LIST_MY_PERSONAS,
    ),
    RouteDef::new(
        Method::Get,
        "/api/templates",
        Access::Public,
        Service::Personas,
        LIST_TEMPLATES,
    ),
    RouteDef::new(
        Method::Get,
        "/api/admin/personas",
        Access::Admin,
        Service::Personas,
        ADMIN_LIST_PERSONAS,
    ),
    RouteDef::new(
        Method::Post,
        "/api/admin/personas",
        Access::Admin,
        Service::Personas,
        ADMIN_CREATE_PERSONA,
    ),
    RouteDef::new(
        Method::Put,
        "/api/admin/personas/{id}",
        Access::Admin,
        Service::Personas,
        ADMIN_UPDATE_PERSONA,
    ),
    RouteDef::new(
        Method::Delete,
        "/api/admin/personas/{id}",
        Access::Admin,
        Service::Personas,
        ADMIN_DEACTIVATE_PERSONA,
    ),
    RouteDef::new(
        Method::Get,
        "/api/admin/templates",
        Access::Admin,
        Service::Personas,
        ADMIN_LIST_TEMPLATES,
    ),
    RouteDef::new(
        Method::Post,
        "/api/admin/templates",
        Access::Admin,
        Service::Personas,
        ADMIN_CREATE_TEMPLATE,
    ),
    RouteDef::new(
        Method::Put,
        "/api/admin/templates/{id}",
        Access::Admin,
        Service::Personas,
        ADMIN_UPDATE_TEMPLATE,
    ),
    RouteDef::new(
        Method::Delete,
        "/api/admin/templates/{id}",
        Access::Admin,
        Service::Personas,
        ADMIN_DEACTIVATE_TEMPLATE,
    ),
];

pub(super) async fn handle(route: &RouteDef, request: RouteRequest) -> Result<Response, ApiError> {
    match route.name {
        LIST_PERSONAS => catalogue::list_personas(request).await,
        GET_PERSONA => catalogue::get_persona(request).await,
        LIST_MY_PERSONAS => relationships::list_mine(request).await,
        PUT_RELATIONSHIP => relationships::put(request).await,
        LIST_TEMPLATES => catalogue::list_templates(request).await,
        ADMIN_LIST_PERSONAS => admin::list(request, admin::Catalogue::Persona).await,
        ADMIN_CREATE_PERSONA => admin::create_persona(request).await,
        ADMIN_UPDATE_PERSONA => admin::update_persona(request).await,
        ADMIN_DEACTIVATE_PERSONA => admin::deactivate(request, admin::Catalogue::Persona).await,
        ADMIN_LIST_TEMPLATES => admin::list(request, admin::Catalogue::Template).await,
        ADMIN_CREATE_TEMPLATE => admin::create_template(request).await,
        ADMIN_UPDATE_TEMPLATE => admin::update_template(request).await,
        ADMIN_DEACTIVATE_TEMPLATE => admin::deactivate(request, admin::Catalogue::Template).await,
        _ => Err(ApiError::not_found()),
    }
}

fn single_row(result: OpResult) -> Result<Value, ApiError> {
    rows::into_first_row(result).map(Value::Object)
}

fn persona_not_found() -> ApiError {
    ApiError::new(404, "not_found", "no such persona")
}

fn template_not_found() -> ApiError {
    ApiError::new(404, "not_found", "no such template")
}

/// The session guards turn their own failures into 401/403, so a `precondition_failed` that
/// reaches a route came from the route's operation: its row was not there.
fn refine_not_found(error: ApiError, not_found: impl FnOnce() -> ApiError) -> ApiError {
    if error.code == "precondition_failed" {
        not_found()
    } else {
        error
    }
}

fn refine_conflict(error: ApiError, message: &str) -> ApiError {
    if error.code == "conflict" {
        ApiError::new(409, "conflict", message)
    } else {
        error
    }
}

/// The only foreign key a template write can break is `persona_id`.
fn refine_unknown_persona(error: ApiError) -> ApiError {
    if error.code != "reference_not_found" {
        return error;
    }
    let mut errors = FieldErrors::new();
    errors.add(
        "persona_id",
        FieldError::new("unknown_persona", "names no persona"),
    );
    ApiError::validation_failed(errors)
}
