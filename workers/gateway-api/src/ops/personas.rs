//! Personas, users' relationships with them, and call scenario templates.
//!
//! Three scopes: `personas.*` (the public catalogue and its admin), `relationships.*` (one user's
//! customisation of a persona; the user id always comes from the verified session) and
//! `templates.*`. Update operations take `set_fields`, the names of the fields the client sent: a
//! nullable column listed there takes the parameter's value (so `null` clears it), one not listed
//! keeps its value.

use super::{OpSpec, ParamSpec, ParamType};

/// Active personas, public columns, newest first.
pub static LIST_ACTIVE: OpSpec = OpSpec::new("personas.list_active", &[]);

/// One active persona, public columns (`precondition_failed` when unknown or retired).
pub static GET_ACTIVE: OpSpec = OpSpec::new(
    "personas.get_active",
    &[ParamSpec::required("id", ParamType::Text)],
);

/// Every persona with every column, for the admin console.
pub static ADMIN_LIST: OpSpec = OpSpec::new("personas.admin_list", &[]);

/// Creates a persona (`conflict` when the id is taken).
pub static ADMIN_CREATE: OpSpec = OpSpec::new(
    "personas.admin_create",
    &[
        ParamSpec::required("id", ParamType::Text),
        ParamSpec::required("name", ParamType::Text),
        ParamSpec::optional("description", ParamType::Text),
        ParamSpec::optional("category", ParamType::Text),
        ParamSpec::optional("avatar_url", ParamType::Text),
        ParamSpec::optional("default_voice_id", ParamType::Text),
        ParamSpec::optional("default_voice_settings", ParamType::Jsonb),
        ParamSpec::optional("default_greeting", ParamType::Text),
        ParamSpec::required("core_system_prompt", ParamType::Text),
        ParamSpec::optional("llm_temperature", ParamType::Numeric),
        ParamSpec::optional("llm_max_tokens", ParamType::Int4),
        ParamSpec::optional("is_active", ParamType::Bool),
    ],
);

/// Changes the fields named in `set_fields` (`precondition_failed` when unknown).
pub static ADMIN_UPDATE: OpSpec = OpSpec::new(
    "personas.admin_update",
    &[
        ParamSpec::required("id", ParamType::Text),
        ParamSpec::required("set_fields", ParamType::TextArray),
        ParamSpec::optional("name", ParamType::Text),
        ParamSpec::optional("description", ParamType::Text),
        ParamSpec::optional("category", ParamType::Text),
        ParamSpec::optional("avatar_url", ParamType::Text),
        ParamSpec::optional("default_voice_id", ParamType::Text),
        ParamSpec::optional("default_voice_settings", ParamType::Jsonb),
        ParamSpec::optional("default_greeting", ParamType::Text),
        ParamSpec::optional("core_system_prompt", ParamType::Text),
        ParamSpec::optional("llm_temperature", ParamType::Numeric),
        ParamSpec::optional("llm_max_tokens", ParamType::Int4),
        ParamSpec::optional("is_active", ParamType::Bool),
    ],
);

/// Retires a persona (`precondition_failed` when unknown); repeating it is harmless.
pub static ADMIN_DEACTIVATE: OpSpec = OpSpec::new(
    "personas.admin_deactivate",
    &[ParamSpec::required("id", ParamType::Text)],
);

/// The user's relationships with active personas, joined with the personas' public columns.
pub static LIST_FOR_USER: OpSpec = OpSpec::new(
    "relationships.list_for_user",
    &[
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("favorites_only", ParamType::Bool),
        ParamSpec::required("include_archived", ParamType::Bool),
    ],
);

/// Creates or changes the user's relationship with an active persona (`precondition_failed` when
/// the persona is unknown or retired).
pub static UPSERT: OpSpec = OpSpec::new(
    "relationships.upsert",
    &[
        ParamSpec::required("id", ParamType::Text),
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("persona_id", ParamType::Text),
        ParamSpec::required("set_fields", ParamType::TextArray),
        ParamSpec::optional("relationship_type", ParamType::Text),
        ParamSpec::optional("custom_system_prompt", ParamType::Text),
        ParamSpec::optional("voice_id", ParamType::Text),
        ParamSpec::optional("voice_settings", ParamType::Jsonb),
        ParamSpec::optional("is_favorite", ParamType::Bool),
        ParamSpec::optional("is_archived", ParamType::Bool),
    ],
);

/// Active templates, public columns, in display order.
pub static TEMPLATES_LIST_ACTIVE: OpSpec = OpSpec::new("templates.list_active", &[]);

/// Every template with every column, for the admin console.
pub static TEMPLATES_ADMIN_LIST: OpSpec = OpSpec::new("templates.admin_list", &[]);

/// Creates a template (`conflict` when the id or name is taken, `foreign_key_violation` when
/// `persona_id` names no persona).
pub static TEMPLATES_ADMIN_CREATE: OpSpec = OpSpec::new(
    "templates.admin_create",
    &[
        ParamSpec::required("id", ParamType::Text),
        ParamSpec::required("name", ParamType::Text),
        ParamSpec::optional("description", ParamType::Text),
        ParamSpec::optional("category", ParamType::Text),
        ParamSpec::optional("persona_id", ParamType::Text),
        ParamSpec::required("system_prompt_addition", ParamType::Text),
        ParamSpec::optional("opening_line", ParamType::Text),
        ParamSpec::optional("suggested_duration_minutes", ParamType::Int4),
        ParamSpec::optional("sort_order", ParamType::Int4),
        ParamSpec::optional("is_active", ParamType::Bool),
    ],
);

/// Changes the fields named in `set_fields` (`precondition_failed` when unknown).
pub static TEMPLATES_ADMIN_UPDATE: OpSpec = OpSpec::new(
    "templates.admin_update",
    &[
        ParamSpec::required("id", ParamType::Text),
        ParamSpec::required("set_fields", ParamType::TextArray),
        ParamSpec::optional("name", ParamType::Text),
        ParamSpec::optional("description", ParamType::Text),
        ParamSpec::optional("category", ParamType::Text),
        ParamSpec::optional("persona_id", ParamType::Text),
        ParamSpec::optional("system_prompt_addition", ParamType::Text),
        ParamSpec::optional("opening_line", ParamType::Text),
        ParamSpec::optional("suggested_duration_minutes", ParamType::Int4),
        ParamSpec::optional("sort_order", ParamType::Int4),
        ParamSpec::optional("is_active", ParamType::Bool),
    ],
);

/// Retires a template (`precondition_failed` when unknown); repeating it is harmless.
pub static TEMPLATES_ADMIN_DEACTIVATE: OpSpec = OpSpec::new(
    "templates.admin_deactivate",
    &[ParamSpec::required("id", ParamType::Text)],
);
