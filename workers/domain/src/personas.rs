//! Input rules for personas, users' relationships with them, and call scenario templates.
//!
//! Each body is read as raw JSON members (see [`crate::fields`]) and validated into the
//! parameters of its gateway operation: `relationships.upsert` (without `id`, `user_id` and
//! `persona_id`, which come from the route), `personas.admin_create` / `admin_update` and
//! `templates.admin_create` / `admin_update`. Updates are partial and carry `set_fields`; creates
//! need their required fields. Every limit is at most the database's own CHECK, so a value that
//! passes here is stored.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::fields::{
    Change, Patch, boolean, integer, invalid_type, not_nullable, number, optional_text,
    out_of_range, present, require, required_text, slug,
};
use crate::{FieldError, FieldErrors, ValidationError};

/// Free text the user names the relationship with ("coach", "workout buddy").
pub const RELATIONSHIP_TYPE_MAX_CHARS: usize = 50;
/// The user's addition to the persona's prompt. Kept well under the column's 8000 so the whole
/// prompt stays short enough for a phone-call model's context.
pub const CUSTOM_PROMPT_MAX_CHARS: usize = 4000;
pub const VOICE_ID_MAX_CHARS: usize = 100;
pub const NAME_MAX_CHARS: usize = 100;
pub const DESCRIPTION_MAX_CHARS: usize = 1000;
pub const CATEGORY_MAX_CHARS: usize = 100;
pub const CORE_PROMPT_MAX_CHARS: usize = 8000;
pub const GREETING_MAX_CHARS: usize = 500;
pub const AVATAR_URL_MAX_CHARS: usize = 2048;
pub const PROMPT_ADDITION_MAX_CHARS: usize = 8000;
pub const OPENING_LINE_MAX_CHARS: usize = 500;
pub const LLM_TEMPERATURE_RANGE: (f64, f64) = (0.0, 2.0);
pub const LLM_MAX_TOKENS_RANGE: (i64, i64) = (16, 4096);
pub const SUGGESTED_MINUTES_RANGE: (i64, i64) = (1, 60);
pub const SORT_ORDER_RANGE: (i64, i64) = (-1_000_000, 1_000_000);

/// The body of `PUT /api/personas/{id}/relationship`; every member is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelationshipPatchBody {
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
pub fn relationship_patch_params(
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

/// The body of `POST /api/admin/personas` and `PUT /api/admin/personas/{id}`. On create, `id`,
/// `name` and `core_system_prompt` are required; on update `id` is not allowed (it is the path).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonaBody {
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
pub enum Intent {
    Create,
    Update,
}

/// Validates an admin persona body into the parameters of `personas.admin_create` (with `id`) or
/// `personas.admin_update` (with `set_fields`, without `id`).
pub fn persona_params(
    body: PersonaBody,
    intent: Intent,
) -> Result<Map<String, Value>, FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut patch = Patch::default();
    id_field(&mut errors, &mut patch, intent, body.id, "persona");
    listing_fields(
        &mut errors,
        &mut patch,
        body.name,
        body.description,
        body.category,
    );
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
    finish(errors, patch, intent, &["id", "name", "core_system_prompt"])
}

/// The body of `POST /api/admin/templates` and `PUT /api/admin/templates/{id}`. On create, `id`,
/// `name` and `system_prompt_addition` are required.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateBody {
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
pub fn template_params(
    body: TemplateBody,
    intent: Intent,
) -> Result<Map<String, Value>, FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut patch = Patch::default();
    id_field(&mut errors, &mut patch, intent, body.id, "template");
    listing_fields(
        &mut errors,
        &mut patch,
        body.name,
        body.description,
        body.category,
    );
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
    finish(
        errors,
        patch,
        intent,
        &["id", "name", "system_prompt_addition"],
    )
}

/// The `id` of a persona or template (`item`): a slug on create; on update the path names the
/// item, so an `id` in the body is refused.
fn id_field(
    errors: &mut FieldErrors,
    patch: &mut Patch,
    intent: Intent,
    id: Option<Value>,
    item: &str,
) {
    match (intent, id) {
        (Intent::Create, id) => patch.put("id", slug(errors, "id", id).map(Value::String)),
        (Intent::Update, Some(_)) => errors.add(
            "id",
            FieldError::new(
                "read_only",
                format!("is the path of the {item} and cannot change"),
            ),
        ),
        (Intent::Update, None) => {}
    }
}

/// `name`, `description` and `category`, which personas and templates share.
fn listing_fields(
    errors: &mut FieldErrors,
    patch: &mut Patch,
    name: Option<Value>,
    description: Option<Value>,
    category: Option<Value>,
) {
    let name = required_text(errors, "name", name, NAME_MAX_CHARS);
    patch.put("name", name.map(Value::String));
    let description = optional_text(errors, "description", description, DESCRIPTION_MAX_CHARS);
    patch.put("description", description.map(Value::String));
    let category = optional_text(errors, "category", category, CATEGORY_MAX_CHARS);
    patch.put("category", category.map(Value::String));
}

/// The parameters, or every error: a create needs its `required` fields, an update carries
/// `set_fields`.
fn finish(
    mut errors: FieldErrors,
    patch: Patch,
    intent: Intent,
    required: &[&str],
) -> Result<Map<String, Value>, FieldErrors> {
    if intent == Intent::Create {
        require(&mut errors, &patch, required);
    }
    errors.into_result()?;
    Ok(patch.into_params(intent == Intent::Update))
}

/// An ElevenLabs voice id: it becomes part of a provider URL, so only URL-safe characters.
pub fn voice_id(errors: &mut FieldErrors, field: &str, input: Option<Value>) -> Change<Value> {
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
pub fn avatar_url(errors: &mut FieldErrors, field: &str, input: Option<Value>) -> Change<String> {
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
pub fn voice_settings(
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
}
