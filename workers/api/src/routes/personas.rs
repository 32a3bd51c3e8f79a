//! Personas, the caller's relationships with them, and call scenario templates.
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
//! of the API.

use callmeback_domain::ids::{new_id, prefix};
use callmeback_domain::{FieldError, FieldErrors, ValidationError, bounded_text};
use callmeback_gateway_api::{OpCall, OpResult};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};
use worker::{Method, Response};

use super::{Access, RouteDef, RouteRequest, Service, json_response, random_16};
use crate::ctx::read_json;
use crate::error::ApiError;
use crate::rows;
use crate::session::authed_call;

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
        LIST_PERSONAS => list_personas(request).await,
        GET_PERSONA => get_persona(request).await,
        LIST_MY_PERSONAS => list_my_personas(request).await,
        PUT_RELATIONSHIP => put_relationship(request).await,
        LIST_TEMPLATES => list_templates(request).await,
        ADMIN_LIST_PERSONAS => admin_list(request, "personas.admin_list", "personas").await,
        ADMIN_CREATE_PERSONA => admin_create_persona(request).await,
        ADMIN_UPDATE_PERSONA => admin_update_persona(request).await,
        ADMIN_DEACTIVATE_PERSONA => admin_deactivate(request, Catalogue::Persona).await,
        ADMIN_LIST_TEMPLATES => admin_list(request, "templates.admin_list", "templates").await,
        ADMIN_CREATE_TEMPLATE => admin_create_template(request).await,
        ADMIN_UPDATE_TEMPLATE => admin_update_template(request).await,
        ADMIN_DEACTIVATE_TEMPLATE => admin_deactivate(request, Catalogue::Template).await,
        _ => Err(ApiError::not_found()),
    }
}

// ---------------------------------------------------------------------------------------------
// Limits. Each is at most the database's own CHECK, so a value that passes here is stored.
// ---------------------------------------------------------------------------------------------

/// Free text the user names the relationship with ("coach", "workout buddy").
const RELATIONSHIP_TYPE_MAX_CHARS: usize = 50;
/// The user's addition to the persona's prompt. Kept well under the column's 8000 so the whole
/// prompt stays short enough for a phone-call model's context.
const CUSTOM_PROMPT_MAX_CHARS: usize = 4000;
const VOICE_ID_MAX_CHARS: usize = 100;
const NAME_MAX_CHARS: usize = 100;
const DESCRIPTION_MAX_CHARS: usize = 1000;
const CATEGORY_MAX_CHARS: usize = 100;
const CORE_PROMPT_MAX_CHARS: usize = 8000;
const GREETING_MAX_CHARS: usize = 500;
const AVATAR_URL_MAX_CHARS: usize = 2048;
const PROMPT_ADDITION_MAX_CHARS: usize = 8000;
const OPENING_LINE_MAX_CHARS: usize = 500;
const LLM_TEMPERATURE_RANGE: (f64, f64) = (0.0, 2.0);
const LLM_MAX_TOKENS_RANGE: (i64, i64) = (16, 4096);
const SUGGESTED_MINUTES_RANGE: (i64, i64) = (1, 60);
const SORT_ORDER_RANGE: (i64, i64) = (-1_000_000, 1_000_000);

// ---------------------------------------------------------------------------------------------
// Public catalogue
// ---------------------------------------------------------------------------------------------

async fn list_personas(request: RouteRequest) -> Result<Response, ApiError> {
    let result = request
        .ctx
        .gateway()?
        .call(&OpCall::new("personas.list_active"))
        .await?;
    json_response(200, &json!({ "personas": rows::into_values(result) }))
}

async fn get_persona(request: RouteRequest) -> Result<Response, ApiError> {
    let id = request.params.get("id");
    if !is_slug(id) {
        return Err(persona_not_found());
    }
    let op = OpCall::new("personas.get_active").param("id", id);
    let result = request
        .ctx
        .gateway()?
        .call(&op)
        .await
        .map_err(ApiError::from)
        .map_err(|error| {
            if is_precondition_failed(&error) {
                persona_not_found()
            } else {
                error
            }
        })?;
    let persona = single_row(result)?;
    json_response(200, &json!({ "persona": persona }))
}

async fn list_templates(request: RouteRequest) -> Result<Response, ApiError> {
    let result = request
        .ctx
        .gateway()?
        .call(&OpCall::new("templates.list_active"))
        .await?;
    json_response(200, &json!({ "templates": rows::into_values(result) }))
}

// ---------------------------------------------------------------------------------------------
// The caller's relationships
// ---------------------------------------------------------------------------------------------

/// `GET /api/me/personas?favorite=true&archived=true`: `favorite=true` lists favourites only;
/// `archived=true` also lists archived relationships (hidden by default). `false` is the same as
/// leaving the parameter out. Other query parameters are ignored.
async fn list_my_personas(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let url = request.req.url()?;
    let mut errors = FieldErrors::new();
    let mut favorites_only = false;
    let mut include_archived = false;
    for (key, value) in url.query_pairs() {
        let target = match key.as_ref() {
            "favorite" => &mut favorites_only,
            "archived" => &mut include_archived,
            _ => continue,
        };
        match parse_query_bool(&value) {
            Some(flag) => *target = flag,
            None => errors.add(
                &key,
                FieldError::new("invalid_type", "must be true or false"),
            ),
        }
    }
    errors.into_result().map_err(ApiError::validation_failed)?;

    let op = OpCall::new("relationships.list_for_user")
        .param("user_id", session.user_id())
        .param("favorites_only", favorites_only)
        .param("include_archived", include_archived);
    let result = authed_call(&request.ctx, session, op).await?;
    let relationships = result
        .rows
        .iter()
        .map(relationship_json)
        .collect::<Result<Vec<_>, _>>()?;
    json_response(200, &json!({ "relationships": relationships }))
}

/// The body of `PUT /api/personas/{id}/relationship`; every member is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelationshipPatchBody {
    #[serde(default, deserialize_with = "present")]
    relationship_type: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    custom_system_prompt: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    voice_id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    voice_settings: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    is_favorite: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    is_archived: Option<Value>,
}

/// Validates a relationship patch into the gateway parameters of `relationships.upsert` (without
/// `id`, `user_id` and `persona_id`).
fn relationship_patch_params(
    body: RelationshipPatchBody,
) -> Result<Map<String, Value>, FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut patch = Patch::default();
    let relationship_type = required_text(
        &mut errors,
        "relationship_type",
        body.relationship_type,
        RELATIONSHIP_TYPE_MAX_CHARS,
    );
    patch.put("relationship_type", relationship_type.map(Value::String));
    let prompt = optional_text(
        &mut errors,
        "custom_system_prompt",
        body.custom_system_prompt,
        CUSTOM_PROMPT_MAX_CHARS,
    );
    patch.put("custom_system_prompt", prompt.map(Value::String));
    patch.put("voice_id", voice_id(&mut errors, "voice_id", body.voice_id));
    patch.put(
        "voice_settings",
        voice_settings(&mut errors, "voice_settings", body.voice_settings, true),
    );
    patch.put(
        "is_favorite",
        boolean(&mut errors, "is_favorite", body.is_favorite).map(Value::Bool),
    );
    patch.put(
        "is_archived",
        boolean(&mut errors, "is_archived", body.is_archived).map(Value::Bool),
    );
    errors.into_result()?;
    Ok(patch.into_params(true))
}

async fn put_relationship(mut request: RouteRequest) -> Result<Response, ApiError> {
    let persona_id = request.params.get("id").to_owned();
    let body: RelationshipPatchBody = read_json(&mut request.req).await?;
    if !is_slug(&persona_id) {
        return Err(persona_not_found());
    }
    let params = relationship_patch_params(body).map_err(ApiError::validation_failed)?;
    let session = request.session()?;
    let mut op = OpCall::new("relationships.upsert")
        .param("id", new_id(prefix::PERSONA_RELATIONSHIP, random_16()?))
        .param("user_id", session.user_id())
        .param("persona_id", persona_id);
    op.params.extend(params);
    let result = authed_call(&request.ctx, session, op)
        .await
        .map_err(|error| {
            if is_precondition_failed(&error) {
                persona_not_found()
            } else {
                error
            }
        })?;
    let row = rows::first_row(&result)?;
    json_response(200, &json!({ "relationship": relationship_json(row)? }))
}

/// A relationship row of the gateway as the API shows it: the persona's public fields nested
/// under `persona`, the total duration as a number (it is BIGINT, so it crosses the gateway as a
/// digit string; seconds of talk stay far below 2^53).
fn relationship_json(row: &Map<String, Value>) -> Result<Value, ApiError> {
    let mut persona = Map::new();
    persona.insert(
        "id".to_owned(),
        row.get("persona_id").cloned().unwrap_or(Value::Null),
    );
    let mut relationship = Map::new();
    for (key, value) in row {
        match key.strip_prefix("persona_") {
            Some("id") => {
                relationship.insert(key.clone(), value.clone());
            }
            Some(public_field) => {
                persona.insert(public_field.to_owned(), value.clone());
            }
            None if key == "total_duration_seconds" => {
                relationship.insert(key.clone(), json!(rows::int(row, key)?));
            }
            None => {
                relationship.insert(key.clone(), value.clone());
            }
        }
    }
    relationship.insert("persona".to_owned(), Value::Object(persona));
    Ok(Value::Object(relationship))
}

// ---------------------------------------------------------------------------------------------
// Admin: personas
// ---------------------------------------------------------------------------------------------

/// The body of `POST /api/admin/personas` and `PUT /api/admin/personas/{id}`. On create, `id`,
/// `name` and `core_system_prompt` are required; on update `id` is not allowed (it is the path).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonaBody {
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    name: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    category: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    avatar_url: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    default_voice_id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    default_voice_settings: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    default_greeting: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    core_system_prompt: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    llm_temperature: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    llm_max_tokens: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    is_active: Option<Value>,
}

/// Whether a body creates a new item or changes an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Create,
    Update,
}

/// Validates an admin persona body into the parameters of `personas.admin_create` (with `id`) or
/// `personas.admin_update` (with `set_fields`, without `id`).
fn persona_params(body: PersonaBody, intent: Intent) -> Result<Map<String, Value>, FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut patch = Patch::default();
    match (intent, body.id) {
        (Intent::Create, id) => patch.put("id", slug(&mut errors, "id", id).map(Value::String)),
        (Intent::Update, Some(_)) => {
            errors.add(
                "id",
                FieldError::new("read_only", "is the path of the persona and cannot change"),
            );
        }
        (Intent::Update, None) => {}
    }
    let name = required_text(&mut errors, "name", body.name, NAME_MAX_CHARS);
    patch.put("name", name.map(Value::String));
    let description = optional_text(
        &mut errors,
        "description",
        body.description,
        DESCRIPTION_MAX_CHARS,
    );
    patch.put("description", description.map(Value::String));
    let category = optional_text(&mut errors, "category", body.category, CATEGORY_MAX_CHARS);
    patch.put("category", category.map(Value::String));
    patch.put(
        "avatar_url",
        avatar_url(&mut errors, "avatar_url", body.avatar_url).map(Value::String),
    );
    patch.put(
        "default_voice_id",
        voice_id(&mut errors, "default_voice_id", body.default_voice_id),
    );
    let settings = voice_settings(
        &mut errors,
        "default_voice_settings",
        body.default_voice_settings,
        false,
    );
    patch.put("default_voice_settings", settings);
    let greeting = optional_text(
        &mut errors,
        "default_greeting",
        body.default_greeting,
        GREETING_MAX_CHARS,
    );
    patch.put("default_greeting", greeting.map(Value::String));
    let prompt = required_text(
        &mut errors,
        "core_system_prompt",
        body.core_system_prompt,
        CORE_PROMPT_MAX_CHARS,
    );
    patch.put("core_system_prompt", prompt.map(Value::String));
    let temperature = number(
        &mut errors,
        "llm_temperature",
        body.llm_temperature,
        LLM_TEMPERATURE_RANGE,
    );
    // The gateway takes decimals as plain decimal strings; `Display` of an f64 never uses an
    // exponent, and the range check above rules out NaN and infinities.
    patch.put(
        "llm_temperature",
        temperature.map(|t| Value::String(t.to_string())),
    );
    let max_tokens = integer(
        &mut errors,
        "llm_max_tokens",
        body.llm_max_tokens,
        LLM_MAX_TOKENS_RANGE,
    );
    patch.put("llm_max_tokens", max_tokens.map(|n| json!(n)));
    patch.put(
        "is_active",
        boolean(&mut errors, "is_active", body.is_active).map(Value::Bool),
    );
    if intent == Intent::Create {
        require(&mut errors, &patch, &["id", "name", "core_system_prompt"]);
    }
    errors.into_result()?;
    Ok(patch.into_params(intent == Intent::Update))
}

async fn admin_create_persona(mut request: RouteRequest) -> Result<Response, ApiError> {
    let body: PersonaBody = read_json(&mut request.req).await?;
    let params = persona_params(body, Intent::Create).map_err(ApiError::validation_failed)?;
    let mut op = OpCall::new("personas.admin_create");
    op.params.extend(params);
    let result = authed_call(&request.ctx, request.session()?, op)
        .await
        .map_err(|error| refine_conflict(error, "a persona with this id already exists"))?;
    json_response(201, &json!({ "persona": single_row(result)? }))
}

async fn admin_update_persona(mut request: RouteRequest) -> Result<Response, ApiError> {
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

// ---------------------------------------------------------------------------------------------
// Admin: templates
// ---------------------------------------------------------------------------------------------

/// The body of `POST /api/admin/templates` and `PUT /api/admin/templates/{id}`. On create, `id`,
/// `name` and `system_prompt_addition` are required.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateBody {
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    name: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    category: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    persona_id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    system_prompt_addition: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    opening_line: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    suggested_duration_minutes: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    sort_order: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    is_active: Option<Value>,
}

/// Validates an admin template body into the parameters of `templates.admin_create` or
/// `templates.admin_update`.
fn template_params(body: TemplateBody, intent: Intent) -> Result<Map<String, Value>, FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut patch = Patch::default();
    match (intent, body.id) {
        (Intent::Create, id) => patch.put("id", slug(&mut errors, "id", id).map(Value::String)),
        (Intent::Update, Some(_)) => {
            errors.add(
                "id",
                FieldError::new("read_only", "is the path of the template and cannot change"),
            );
        }
        (Intent::Update, None) => {}
    }
    patch.put(
        "name",
        required_text(&mut errors, "name", body.name, NAME_MAX_CHARS).map(Value::String),
    );
    let description = optional_text(
        &mut errors,
        "description",
        body.description,
        DESCRIPTION_MAX_CHARS,
    );
    patch.put("description", description.map(Value::String));
    let category = optional_text(&mut errors, "category", body.category, CATEGORY_MAX_CHARS);
    patch.put("category", category.map(Value::String));
    let persona_id = match body.persona_id {
        Some(Value::Null) => Change::Clear,
        other => slug(&mut errors, "persona_id", other),
    };
    patch.put("persona_id", persona_id.map(Value::String));
    let addition = required_text(
        &mut errors,
        "system_prompt_addition",
        body.system_prompt_addition,
        PROMPT_ADDITION_MAX_CHARS,
    );
    patch.put("system_prompt_addition", addition.map(Value::String));
    let opening_line = optional_text(
        &mut errors,
        "opening_line",
        body.opening_line,
        OPENING_LINE_MAX_CHARS,
    );
    patch.put("opening_line", opening_line.map(Value::String));
    let minutes = integer(
        &mut errors,
        "suggested_duration_minutes",
        body.suggested_duration_minutes,
        SUGGESTED_MINUTES_RANGE,
    );
    patch.put("suggested_duration_minutes", minutes.map(|n| json!(n)));
    patch.put(
        "sort_order",
        integer(&mut errors, "sort_order", body.sort_order, SORT_ORDER_RANGE).map(|n| json!(n)),
    );
    patch.put(
        "is_active",
        boolean(&mut errors, "is_active", body.is_active).map(Value::Bool),
    );
    if intent == Intent::Create {
        require(
            &mut errors,
            &patch,
            &["id", "name", "system_prompt_addition"],
        );
    }
    errors.into_result()?;
    Ok(patch.into_params(intent == Intent::Update))
}

async fn admin_create_template(mut request: RouteRequest) -> Result<Response, ApiError> {
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

async fn admin_update_template(mut request: RouteRequest) -> Result<Response, ApiError> {
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

// ---------------------------------------------------------------------------------------------
// Admin: shared
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Catalogue {
    Persona,
    Template,
}

async fn admin_list(request: RouteRequest, op: &str, key: &str) -> Result<Response, ApiError> {
    let result = authed_call(&request.ctx, request.session()?, OpCall::new(op)).await?;
    let mut body = Map::new();
    body.insert(key.to_owned(), Value::Array(rows::into_values(result)));
    json_response(200, &Value::Object(body))
}

/// `DELETE` retires the item (`is_active = false`): calls keep referring to it, and an admin can
/// bring it back with `PUT {"is_active": true}`. Repeating it answers 204 again.
async fn admin_deactivate(
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

// ---------------------------------------------------------------------------------------------
// Field validation
// ---------------------------------------------------------------------------------------------

/// What a request does to one field.
#[derive(Debug, Clone, PartialEq)]
enum Change<T> {
    /// Absent (or invalid, with an error recorded): leave the stored value alone.
    Keep,
    /// Explicit `null` (or a blank optional string): store NULL.
    Clear,
    Set(T),
}

impl<T> Change<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Change<U> {
        match self {
            Change::Keep => Change::Keep,
            Change::Clear => Change::Clear,
            Change::Set(value) => Change::Set(f(value)),
        }
    }
}

/// Gateway parameters being collected, plus the names of the fields the request sent.
#[derive(Debug, Default)]
struct Patch {
    params: Map<String, Value>,
    sent: Vec<&'static str>,
}

impl Patch {
    fn put(&mut self, field: &'static str, change: Change<Value>) {
        match change {
            Change::Keep => {}
            Change::Clear => {
                self.params.insert(field.to_owned(), Value::Null);
                self.sent.push(field);
            }
            Change::Set(value) => {
                self.params.insert(field.to_owned(), value);
                self.sent.push(field);
            }
        }
    }

    fn has(&self, field: &str) -> bool {
        self.params.get(field).is_some_and(|value| !value.is_null())
    }

    fn into_params(mut self, with_set_fields: bool) -> Map<String, Value> {
        if with_set_fields {
            self.params
                .insert("set_fields".to_owned(), json!(self.sent));
        }
        self.params
    }
}

/// Records `required` for each listed field that has neither a value nor an error yet.
fn require(errors: &mut FieldErrors, patch: &Patch, fields: &[&str]) {
    for field in fields {
        if !patch.has(field) && errors.get(field).is_none() {
            errors.add(field, ValidationError::Required);
        }
    }
}

/// Deserializes a member that is present (even as `null`) into `Some`, so `null` and "absent"
/// differ: absent stays `None` through `#[serde(default)]`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

fn invalid_type(expected: &str) -> FieldError {
    FieldError::new("invalid_type", format!("must be {expected}"))
}

fn not_nullable() -> FieldError {
    FieldError::new(
        "not_nullable",
        "cannot be null; leave the field out to keep its value",
    )
}

/// A text field that always has a value: `null` and blank strings are refused.
fn required_text(
    errors: &mut FieldErrors,
    field: &str,
    input: Option<Value>,
    max_chars: usize,
) -> Change<String> {
    match input {
        None => Change::Keep,
        Some(Value::Null) => {
            errors.add(field, not_nullable());
            Change::Keep
        }
        Some(Value::String(text)) => match bounded_text(&text, 1, max_chars) {
            Ok(text) => Change::Set(text),
            Err(error) => {
                errors.add(field, error);
                Change::Keep
            }
        },
        Some(_) => {
            errors.add(field, invalid_type("a string"));
            Change::Keep
        }
    }
}

/// A text field that may be empty: `null` and blank strings clear it.
fn optional_text(
    errors: &mut FieldErrors,
    field: &str,
    input: Option<Value>,
    max_chars: usize,
) -> Change<String> {
    match input {
        None => Change::Keep,
        Some(Value::Null) => Change::Clear,
        Some(Value::String(text)) => match bounded_text(&text, 0, max_chars) {
            Ok(text) if text.is_empty() => Change::Clear,
            Ok(text) => Change::Set(text),
            Err(error) => {
                errors.add(field, error);
                Change::Keep
            }
        },
        Some(_) => {
            errors.add(field, invalid_type("a string or null"));
            Change::Keep
        }
    }
}

fn boolean(errors: &mut FieldErrors, field: &str, input: Option<Value>) -> Change<bool> {
    match input {
        None => Change::Keep,
        Some(Value::Bool(flag)) => Change::Set(flag),
        Some(Value::Null) => {
            errors.add(field, not_nullable());
            Change::Keep
        }
        Some(_) => {
            errors.add(field, invalid_type("true or false"));
            Change::Keep
        }
    }
}

/// A whole number in `range` (inclusive); `null` is refused.
fn integer(
    errors: &mut FieldErrors,
    field: &str,
    input: Option<Value>,
    range: (i64, i64),
) -> Change<i64> {
    match input {
        None => Change::Keep,
        Some(Value::Null) => {
            errors.add(field, not_nullable());
            Change::Keep
        }
        Some(Value::Number(number)) => match number.as_i64() {
            Some(n) if (range.0..=range.1).contains(&n) => Change::Set(n),
            Some(_) => {
                errors.add(
                    field,
                    ValidationError::OutOfRange {
                        min: range.0,
                        max: range.1,
                    },
                );
                Change::Keep
            }
            None => {
                errors.add(field, invalid_type("a whole number"));
                Change::Keep
            }
        },
        Some(_) => {
            errors.add(field, invalid_type("a whole number"));
            Change::Keep
        }
    }
}

/// A number in `range` (inclusive); `null` is refused.
fn number(
    errors: &mut FieldErrors,
    field: &str,
    input: Option<Value>,
    range: (f64, f64),
) -> Change<f64> {
    match input {
        None => Change::Keep,
        Some(Value::Null) => {
            errors.add(field, not_nullable());
            Change::Keep
        }
        Some(Value::Number(number)) => match number.as_f64() {
            Some(n) if (range.0..=range.1).contains(&n) => Change::Set(n),
            _ => {
                errors.add(field, out_of_range(range));
                Change::Keep
            }
        },
        Some(_) => {
            errors.add(field, invalid_type("a number"));
            Change::Keep
        }
    }
}

fn out_of_range((min, max): (f64, f64)) -> FieldError {
    FieldError::new(
        "out_of_range",
        format!("must be between {min:?} and {max:?}"),
    )
}

/// Ids of personas and templates: lower-case slugs that read well in URLs and logs.
fn is_slug(candidate: &str) -> bool {
    let bytes = candidate.as_bytes();
    (2..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A slug-valued field; `null` is refused (callers that allow it handle `null` first).
fn slug(errors: &mut FieldErrors, field: &str, input: Option<Value>) -> Change<String> {
    match input {
        None => Change::Keep,
        Some(Value::String(text)) if is_slug(&text) => Change::Set(text),
        Some(Value::String(_)) => {
            errors.add(
                field,
                FieldError::new(
                    "invalid_format",
                    "must be 2 to 63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit",
                ),
            );
            Change::Keep
        }
        Some(Value::Null) => {
            errors.add(field, not_nullable());
            Change::Keep
        }
        Some(_) => {
            errors.add(field, invalid_type("a string"));
            Change::Keep
        }
    }
}

/// An ElevenLabs voice id: it becomes part of a provider URL, so only URL-safe characters.
fn voice_id(errors: &mut FieldErrors, field: &str, input: Option<Value>) -> Change<Value> {
    match optional_text(errors, field, input, VOICE_ID_MAX_CHARS) {
        Change::Set(id)
            if !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            errors.add(field, ValidationError::InvalidCharacters);
            Change::Keep
        }
        other => other.map(Value::String),
    }
}

/// An avatar picture shown by browsers and apps: an `https` URL without spaces or control
/// characters (plain `http` would be mixed content on the HTTPS frontend).
fn avatar_url(errors: &mut FieldErrors, field: &str, input: Option<Value>) -> Change<String> {
    match optional_text(errors, field, input, AVATAR_URL_MAX_CHARS) {
        Change::Set(url) => {
            let host = url
                .strip_prefix("https://")
                .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
            let clean = !url.chars().any(|c| c.is_whitespace() || c.is_control());
            if host.is_some_and(|host| !host.is_empty()) && clean {
                Change::Set(url)
            } else {
                errors.add(
                    field,
                    FieldError::new("invalid_url", "must be an https:// URL"),
                );
                Change::Keep
            }
        }
        other => other,
    }
}

/// ElevenLabs voice settings: an object with any of `stability`, `similarity_boost`, `style`
/// (numbers in 0..=1), `speed` (0.5..=2.0) and `use_speaker_boost` (boolean; the seed personas use
/// it). Unknown keys are refused so a typo cannot silently fall back to a default. Problems are
/// reported per key, as `voice_settings.speed`. `nullable` says whether `null` clears the field.
fn voice_settings(
    errors: &mut FieldErrors,
    field: &str,
    input: Option<Value>,
    nullable: bool,
) -> Change<Value> {
    const UNIT: (f64, f64) = (0.0, 1.0);
    const SPEED: (f64, f64) = (0.5, 2.0);
    let settings = match input {
        None => return Change::Keep,
        Some(Value::Null) if nullable => return Change::Clear,
        Some(Value::Null) => {
            errors.add(field, not_nullable());
            return Change::Keep;
        }
        Some(Value::Object(settings)) => settings,
        Some(_) => {
            errors.add(field, invalid_type("an object"));
            return Change::Keep;
        }
    };
    let before = errors.len();
    for (key, value) in &settings {
        let path = format!("{field}.{key}");
        match key.as_str() {
            "stability" | "similarity_boost" | "style" => check_number_in(errors, &path, value, UNIT),
            "speed" => check_number_in(errors, &path, value, SPEED),
            "use_speaker_boost" if !value.is_boolean() => errors.add(&path, invalid_type("true or false")),
            "use_speaker_boost" => {}
            _ => errors.add(
                &path,
                FieldError::new(
                    "unknown_field",
                    "is not a voice setting (stability, similarity_boost, style, speed, use_speaker_boost)",
                ),
            ),
        }
    }
    if errors.len() == before {
        Change::Set(Value::Object(settings))
    } else {
        Change::Keep
    }
}

fn check_number_in(errors: &mut FieldErrors, path: &str, value: &Value, range: (f64, f64)) {
    match value.as_f64() {
        Some(n) if (range.0..=range.1).contains(&n) => {}
        Some(_) => errors.add(path, out_of_range(range)),
        None => errors.add(path, invalid_type("a number")),
    }
}

fn parse_query_bool(value: &str) -> Option<bool> {
    match value {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Responses and errors
// ---------------------------------------------------------------------------------------------

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
fn is_precondition_failed(error: &ApiError) -> bool {
    error.code == "precondition_failed"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn relationship_body(value: Value) -> RelationshipPatchBody {
        serde_json::from_value(value).expect("a well-shaped body")
    }

    fn codes(errors: &FieldErrors) -> Vec<(String, String)> {
        errors
            .iter()
            .map(|(field, error)| (field.to_owned(), error.code.to_string()))
            .collect()
    }

    #[test]
    fn absent_fields_are_left_out_and_null_clears_optional_ones() {
        let params = relationship_patch_params(relationship_body(json!({
            "is_favorite": true,
            "custom_system_prompt": null,
            "voice_id": "   ",
        })))
        .expect("valid");
        assert_eq!(params["is_favorite"], json!(true));
        assert_eq!(params["custom_system_prompt"], Value::Null);
        assert_eq!(
            params["voice_id"],
            Value::Null,
            "a blank optional string clears like null"
        );
        assert!(!params.contains_key("relationship_type"));
        assert!(!params.contains_key("voice_settings"));
        assert_eq!(
            params["set_fields"],
            json!(["custom_system_prompt", "voice_id", "is_favorite"])
        );
    }

    #[test]
    fn null_is_refused_for_fields_that_always_have_a_value() {
        let errors = relationship_patch_params(relationship_body(json!({
            "relationship_type": null,
            "is_favorite": null,
        })))
        .unwrap_err();
        assert_eq!(
            codes(&errors),
            [
                ("is_favorite".into(), "not_nullable".into()),
                ("relationship_type".into(), "not_nullable".into())
            ]
        );
    }

    #[test]
    fn every_bad_relationship_field_is_reported_with_its_code() {
        let errors = relationship_patch_params(relationship_body(json!({
            "relationship_type": "x".repeat(RELATIONSHIP_TYPE_MAX_CHARS + 1),
            "custom_system_prompt": "y".repeat(CUSTOM_PROMPT_MAX_CHARS + 1),
            "voice_id": "has space",
            "voice_settings": {"stability": 1.5, "speed": 0.4, "style": "high", "pitch": 1, "use_speaker_boost": 1},
            "is_archived": "yes",
        })))
        .unwrap_err();
        assert_eq!(
            codes(&errors),
            [
                ("custom_system_prompt".into(), "too_long".into()),
                ("is_archived".into(), "invalid_type".into()),
                ("relationship_type".into(), "too_long".into()),
                ("voice_id".into(), "invalid_characters".into()),
                ("voice_settings.pitch".into(), "unknown_field".into()),
                ("voice_settings.speed".into(), "out_of_range".into()),
                ("voice_settings.stability".into(), "out_of_range".into()),
                ("voice_settings.style".into(), "invalid_type".into()),
                (
                    "voice_settings.use_speaker_boost".into(),
                    "invalid_type".into()
                ),
            ]
        );
    }

    #[test]
    fn limits_are_inclusive_and_text_is_trimmed() {
        let params = relationship_patch_params(relationship_body(json!({
            "relationship_type": format!("  {}  ", "c".repeat(RELATIONSHIP_TYPE_MAX_CHARS)),
            "custom_system_prompt": "é".repeat(CUSTOM_PROMPT_MAX_CHARS),
            "voice_settings": {"stability": 0, "similarity_boost": 1, "style": 0.5, "speed": 2.0, "use_speaker_boost": false},
        })))
        .expect("values at the limits are accepted");
        assert_eq!(
            params["relationship_type"],
            json!("c".repeat(RELATIONSHIP_TYPE_MAX_CHARS))
        );
        assert_eq!(params["voice_settings"]["speed"], json!(2.0));
        let errors = relationship_patch_params(relationship_body(json!({"voice_settings": [1]})))
            .unwrap_err();
        assert_eq!(
            codes(&errors),
            [("voice_settings".into(), "invalid_type".into())]
        );
        let errors =
            relationship_patch_params(relationship_body(json!({"relationship_type": " "})))
                .unwrap_err();
        assert_eq!(
            codes(&errors),
            [("relationship_type".into(), "required".into())]
        );
    }

    #[test]
    fn unknown_top_level_members_do_not_deserialize() {
        assert!(
            serde_json::from_value::<RelationshipPatchBody>(json!({"user_id": "usr_x"})).is_err()
        );
        assert!(serde_json::from_value::<PersonaBody>(json!({"core_prompt": "x"})).is_err());
    }

    #[test]
    fn persona_create_needs_id_name_and_prompt() {
        let body: PersonaBody = serde_json::from_value(json!({"description": "d"})).unwrap();
        let errors = persona_params(body, Intent::Create).unwrap_err();
        assert_eq!(
            codes(&errors),
            [
                ("core_system_prompt".into(), "required".into()),
                ("id".into(), "required".into()),
                ("name".into(), "required".into()),
            ]
        );
        let body: PersonaBody = serde_json::from_value(json!({
            "id": "coach-kim", "name": "Kim", "core_system_prompt": "You are Kim.",
            "llm_temperature": 0.9, "llm_max_tokens": 200, "avatar_url": "https://cdn.example.com/kim.png",
            "default_voice_settings": {"speed": 1.1},
        }))
        .unwrap();
        let params = persona_params(body, Intent::Create).expect("valid");
        assert_eq!(params["llm_temperature"], json!("0.9"));
        assert_eq!(params["llm_max_tokens"], json!(200));
        assert!(
            !params.contains_key("set_fields"),
            "create takes no set_fields"
        );
    }

    #[test]
    fn persona_fields_are_checked() {
        let body: PersonaBody = serde_json::from_value(json!({
            "id": "Bad Id", "name": "", "core_system_prompt": 5, "avatar_url": "http://x.test/a.png",
            "llm_temperature": 2.5, "llm_max_tokens": 8, "default_voice_settings": null, "is_active": null,
        }))
        .unwrap();
        let errors = persona_params(body, Intent::Create).unwrap_err();
        assert_eq!(
            codes(&errors),
            [
                ("avatar_url".into(), "invalid_url".into()),
                ("core_system_prompt".into(), "invalid_type".into()),
                ("default_voice_settings".into(), "not_nullable".into()),
                ("id".into(), "invalid_format".into()),
                ("is_active".into(), "not_nullable".into()),
                ("llm_max_tokens".into(), "out_of_range".into()),
                ("llm_temperature".into(), "out_of_range".into()),
                ("name".into(), "required".into()),
            ]
        );
    }

    #[test]
    fn persona_update_is_partial_and_refuses_an_id_in_the_body() {
        let body: PersonaBody =
            serde_json::from_value(json!({"description": null, "is_active": false})).unwrap();
        let params = persona_params(body, Intent::Update).expect("valid");
        assert_eq!(params["set_fields"], json!(["description", "is_active"]));
        assert_eq!(params["description"], Value::Null);
        assert!(!params.contains_key("name"));
        let body: PersonaBody = serde_json::from_value(json!({"id": "other"})).unwrap();
        let errors = persona_params(body, Intent::Update).unwrap_err();
        assert_eq!(codes(&errors), [("id".into(), "read_only".into())]);
    }

    #[test]
    fn template_fields_are_checked() {
        let body: TemplateBody = serde_json::from_value(json!({
            "id": "tpl_focus", "name": "Focus", "system_prompt_addition": "Help them focus.",
            "persona_id": null, "suggested_duration_minutes": 61, "sort_order": 1.5,
        }))
        .unwrap();
        let errors = template_params(body, Intent::Create).unwrap_err();
        assert_eq!(
            codes(&errors),
            [
                ("sort_order".into(), "invalid_type".into()),
                ("suggested_duration_minutes".into(), "out_of_range".into()),
            ]
        );
        let body: TemplateBody =
            serde_json::from_value(json!({"persona_id": null, "opening_line": "Hi!"})).unwrap();
        let params = template_params(body, Intent::Update).expect("valid");
        assert_eq!(params["set_fields"], json!(["persona_id", "opening_line"]));
        assert_eq!(params["persona_id"], Value::Null);
    }

    #[test]
    fn slugs() {
        for good in [
            "brad",
            "tpl_morning_motivation",
            "a1",
            "0-x",
            &"a".repeat(63),
        ] {
            assert!(is_slug(good), "{good}");
        }
        for bad in [
            "",
            "a",
            "-ab",
            "_ab",
            "Brad",
            "a b",
            "a/b",
            "é1",
            &"a".repeat(64),
        ] {
            assert!(!is_slug(bad), "{bad}");
        }
    }

    #[test]
    fn relationship_rows_nest_the_persona_and_count_seconds_as_numbers() {
        let row = json!({
            "id": "rel_1", "persona_id": "brad", "relationship_type": "coach",
            "total_calls": 3, "total_duration_seconds": "9007199254740",
            "persona_name": "Brad", "persona_default_voice_settings": {"speed": 1.0},
        });
        let Value::Object(row) = row else {
            unreachable!()
        };
        let shaped = relationship_json(&row).expect("well-formed");
        assert_eq!(
            shaped["total_duration_seconds"],
            json!(9_007_199_254_740_i64)
        );
        assert_eq!(
            shaped["persona"],
            json!({"id": "brad", "name": "Brad", "default_voice_settings": {"speed": 1.0}})
        );
        assert_eq!(shaped["persona_id"], json!("brad"));
        assert!(shaped.get("persona_name").is_none());
    }

    #[test]
    fn query_flags() {
        assert_eq!(parse_query_bool("true"), Some(true));
        assert_eq!(parse_query_bool("0"), Some(false));
        assert_eq!(parse_query_bool("yes"), None);
    }
}
