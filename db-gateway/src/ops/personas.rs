//! Personas, users' relationships with them, and call scenario templates.
//!
//! Three scopes, so a key can be narrowed to exactly what it needs:
//! - `personas.*`: the public catalogue (active personas, public columns only: the core system
//!   prompt is the product's craft and never leaves through a public operation) and the admin
//!   operations that create, edit and retire personas (these do return the prompt);
//! - `relationships.*`: one user's customisation of a persona. Every operation takes the user id
//!   as a parameter that the Worker fills from the verified session, never from the request, so
//!   one user can neither read nor change another user's rows;
//! - `templates.*`: call scenario templates, public listing plus admin editing.
//!
//! # Partial updates
//! Update operations take `set_fields`, the names of the fields the client sent. A nullable
//! column listed there takes the parameter's value, so an explicit `null` clears it; a nullable
//! column not listed keeps its value. Columns that cannot be NULL use `COALESCE(param, column)`:
//! the Worker refuses `null` for them, so an absent parameter means "unchanged".
//!
//! Retiring is an `UPDATE … SET is_active = false`, never a `DELETE`: calls keep pointing at the
//! personas and templates they used.

use callmeback_gateway_api::ops::personas as spec;

use super::{DEFAULT_STATEMENT_TIMEOUT_MS, Expect, Mode, OpDef};

/// What anyone may see of a persona (alias `p`).
macro_rules! public_persona_columns {
    () => {
        "p.id, p.name, p.description, p.category, p.avatar_url, p.default_voice_id, \
         p.default_voice_settings, p.default_greeting"
    };
}

/// Everything an admin sees of a persona (no alias: also used in `RETURNING`).
macro_rules! admin_persona_columns {
    () => {
        "id, name, description, category, avatar_url, default_voice_id, default_voice_settings, \
         default_greeting, core_system_prompt, llm_temperature, llm_max_tokens, is_active, \
         is_system_persona, created_at, updated_at"
    };
}

/// Everything an admin sees of a template (no alias: also used in `RETURNING`).
macro_rules! admin_template_columns {
    () => {
        "id, name, description, category, persona_id, system_prompt_addition, opening_line, \
         suggested_duration_minutes, sort_order, is_active, created_at, updated_at"
    };
}

/// A relationship (alias `r`) with its persona's public columns (alias `p`). Persona columns
/// carry a `persona_` prefix so the relationship's own `id` stays unambiguous. The total duration
/// is BIGINT and therefore crosses the wire as a digit string.
macro_rules! relationship_columns {
    () => {
        "r.id, r.persona_id, r.relationship_type, r.custom_system_prompt, r.voice_id, \
         r.voice_settings, r.is_favorite, r.is_archived, r.total_calls, \
         r.total_duration_seconds, r.last_call_at, r.created_at, r.updated_at, \
         p.name AS persona_name, p.description AS persona_description, \
         p.category AS persona_category, p.avatar_url AS persona_avatar_url, \
         p.default_voice_id AS persona_default_voice_id, \
         p.default_voice_settings AS persona_default_voice_settings, \
         p.default_greeting AS persona_default_greeting"
    };
}

pub static OPS: &[OpDef] = &[
    OpDef {
        spec: &spec::LIST_ACTIVE,
        sql: concat!(
            "SELECT ",
            public_persona_columns!(),
            " FROM personas p WHERE p.is_active ORDER BY p.created_at DESC, p.name, p.id"
        ),
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::GET_ACTIVE,
        sql: concat!(
            "SELECT ",
            public_persona_columns!(),
            " FROM personas p WHERE p.id = $1 AND p.is_active"
        ),
        mode: Mode::Read,
        expect: Expect::One {
            message: "persona not found",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::ADMIN_LIST,
        sql: concat!(
            "SELECT ",
            admin_persona_columns!(),
            " FROM personas ORDER BY is_active DESC, created_at DESC, name, id"
        ),
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::ADMIN_CREATE,
        // INSERT cannot say "DEFAULT when the parameter is NULL", so the COALESCE fallbacks repeat
        // the column defaults of 001_core.sql; a test compares them with the catalogue.
        sql: concat!(
            "INSERT INTO personas (id, name, description, category, avatar_url, default_voice_id, \
             default_voice_settings, default_greeting, core_system_prompt, llm_temperature, \
             llm_max_tokens, is_active) \
             VALUES ($1, $2, $3, $4, $5, $6, \
             COALESCE($7::jsonb, '{\"stability\": 0.5, \"similarity_boost\": 0.75, \"speed\": 1.0, \"style\": 0.0}'::jsonb), \
             $8, $9, COALESCE($10::text::float8, 0.7), COALESCE($11::int4, 150), \
             COALESCE($12::bool, true)) \
             RETURNING ",
            admin_persona_columns!()
        ),
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::ADMIN_UPDATE,
        sql: concat!(
            "UPDATE personas SET \
             name = COALESCE($3::text, name), \
             description = CASE WHEN 'description' = ANY($2::text[]) THEN $4::text ELSE description END, \
             category = CASE WHEN 'category' = ANY($2::text[]) THEN $5::text ELSE category END, \
             avatar_url = CASE WHEN 'avatar_url' = ANY($2::text[]) THEN $6::text ELSE avatar_url END, \
             default_voice_id = CASE WHEN 'default_voice_id' = ANY($2::text[]) THEN $7::text ELSE default_voice_id END, \
             default_voice_settings = COALESCE($8::jsonb, default_voice_settings), \
             default_greeting = CASE WHEN 'default_greeting' = ANY($2::text[]) THEN $9::text ELSE default_greeting END, \
             core_system_prompt = COALESCE($10::text, core_system_prompt), \
             llm_temperature = COALESCE($11::text::float8, llm_temperature), \
             llm_max_tokens = COALESCE($12::int4, llm_max_tokens), \
             is_active = COALESCE($13::bool, is_active) \
             WHERE id = $1 RETURNING ",
            admin_persona_columns!()
        ),
        mode: Mode::Write,
        expect: Expect::One {
            message: "persona not found",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::ADMIN_DEACTIVATE,
        sql: "UPDATE personas SET is_active = false WHERE id = $1 RETURNING id, is_active",
        mode: Mode::Write,
        expect: Expect::One {
            message: "persona not found",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::LIST_FOR_USER,
        // Relationships with retired personas stay stored (their statistics are history) but are
        // not listed: nothing can be done with them.
        sql: concat!(
            "SELECT ",
            relationship_columns!(),
            " FROM user_persona_relationships r JOIN personas p ON p.id = r.persona_id \
             WHERE r.user_id = $1 AND p.is_active \
               AND ($2::bool IS NOT TRUE OR r.is_favorite) \
               AND ($3::bool IS TRUE OR NOT r.is_archived) \
             ORDER BY r.last_call_at DESC NULLS LAST, p.name, p.id"
        ),
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::UPSERT,
        // The INSERT selects from `personas`, so an unknown or retired persona inserts and updates
        // nothing and returns no row. `id` is only used when the row is new.
        sql: concat!(
            "WITH upserted AS ( \
               INSERT INTO user_persona_relationships AS r \
                 (id, user_id, persona_id, relationship_type, custom_system_prompt, voice_id, \
                  voice_settings, is_favorite, is_archived) \
               SELECT $1, $2, p.id, COALESCE($5::text, 'friend'), $6::text, $7::text, $8::jsonb, \
                      COALESCE($9::bool, false), COALESCE($10::bool, false) \
               FROM personas p WHERE p.id = $3 AND p.is_active \
               ON CONFLICT (user_id, persona_id) DO UPDATE SET \
                 relationship_type = COALESCE($5::text, r.relationship_type), \
                 custom_system_prompt = CASE WHEN 'custom_system_prompt' = ANY($4::text[]) \
                                             THEN $6::text ELSE r.custom_system_prompt END, \
                 voice_id = CASE WHEN 'voice_id' = ANY($4::text[]) THEN $7::text ELSE r.voice_id END, \
                 voice_settings = CASE WHEN 'voice_settings' = ANY($4::text[]) \
                                       THEN $8::jsonb ELSE r.voice_settings END, \
                 is_favorite = COALESCE($9::bool, r.is_favorite), \
                 is_archived = COALESCE($10::bool, r.is_archived) \
               RETURNING * \
             ) SELECT ",
            relationship_columns!(),
            " FROM upserted r JOIN personas p ON p.id = r.persona_id"
        ),
        mode: Mode::Write,
        expect: Expect::One {
            message: "persona not found",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::TEMPLATES_LIST_ACTIVE,
        // The prompt addition stays private like the personas' prompts. A suggested persona that
        // was retired is not suggested any more.
        sql: "SELECT t.id, t.name, t.description, t.category, \
                     CASE WHEN p.is_active THEN t.persona_id END AS persona_id, \
                     t.opening_line, t.suggested_duration_minutes, t.sort_order \
              FROM call_scenario_templates t LEFT JOIN personas p ON p.id = t.persona_id \
              WHERE t.is_active ORDER BY t.sort_order, t.name, t.id",
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::TEMPLATES_ADMIN_LIST,
        sql: concat!(
            "SELECT ",
            admin_template_columns!(),
            " FROM call_scenario_templates ORDER BY is_active DESC, sort_order, name, id"
        ),
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::TEMPLATES_ADMIN_CREATE,
        // The COALESCE fallbacks repeat the column defaults of 002_calls.sql (see ADMIN_CREATE).
        sql: concat!(
            "INSERT INTO call_scenario_templates (id, name, description, category, persona_id, \
             system_prompt_addition, opening_line, suggested_duration_minutes, sort_order, is_active) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, COALESCE($8::int4, 5), COALESCE($9::int4, 0), \
             COALESCE($10::bool, true)) \
             RETURNING ",
            admin_template_columns!()
        ),
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::TEMPLATES_ADMIN_UPDATE,
        sql: concat!(
            "UPDATE call_scenario_templates SET \
             name = COALESCE($3::text, name), \
             description = CASE WHEN 'description' = ANY($2::text[]) THEN $4::text ELSE description END, \
             category = CASE WHEN 'category' = ANY($2::text[]) THEN $5::text ELSE category END, \
             persona_id = CASE WHEN 'persona_id' = ANY($2::text[]) THEN $6::text ELSE persona_id END, \
             system_prompt_addition = COALESCE($7::text, system_prompt_addition), \
             opening_line = CASE WHEN 'opening_line' = ANY($2::text[]) THEN $8::text ELSE opening_line END, \
             suggested_duration_minutes = COALESCE($9::int4, suggested_duration_minutes), \
             sort_order = COALESCE($10::int4, sort_order), \
             is_active = COALESCE($11::bool, is_active) \
             WHERE id = $1 RETURNING ",
            admin_template_columns!()
        ),
        mode: Mode::Write,
        expect: Expect::One {
            message: "template not found",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::TEMPLATES_ADMIN_DEACTIVATE,
        sql: "UPDATE call_scenario_templates SET is_active = false WHERE id = $1 \
              RETURNING id, is_active",
        mode: Mode::Write,
        expect: Expect::One {
            message: "template not found",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
];
