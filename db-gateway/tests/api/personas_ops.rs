//! The persona operations (`personas.*`, `relationships.*`, `templates.*`) against the project's
//! real schema and seed data: public columns only in public operations, partial updates with
//! `set_fields`, per-user isolation of relationships, and retiring instead of deleting.

use callmeback_gateway_api::{OpCall, OpResult, codes};
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use crate::helpers::{TestApp, call, fresh_nonce, ok, refused, spawn_app};

const PUBLIC_PERSONA_COLUMNS: [&str; 8] = [
    "id",
    "name",
    "description",
    "category",
    "avatar_url",
    "default_voice_id",
    "default_voice_settings",
    "default_greeting",
];

fn ids(result: &OpResult, column: &str) -> Vec<String> {
    result
        .rows
        .iter()
        .map(|row| row[column].as_str().expect("text id").to_owned())
        .collect()
}

fn column_names(row: &Map<String, Value>) -> Vec<&str> {
    let mut names: Vec<&str> = row.keys().map(String::as_str).collect();
    names.sort_unstable();
    names
}

/// A user row straight in SQL (the accounts operations are another slice's).
async fn create_user(app: &TestApp) -> String {
    let id = format!("usr_{}", fresh_nonce());
    app.database
        .client()
        .await
        .execute(
            "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, '$argon2id$v=19$test')",
            &[&id, &format!("{id}@example.test")],
        )
        .await
        .expect("insert user");
    id
}

async fn sql(app: &TestApp, statement: &str) {
    app.database
        .client()
        .await
        .batch_execute(statement)
        .await
        .unwrap_or_else(|error| panic!("{statement}: {error}"));
}

fn upsert(user_id: &str, persona_id: &str, fields: Value) -> OpCall {
    let Value::Object(fields) = fields else {
        panic!("fields must be an object")
    };
    let set_fields: Vec<&String> = fields.keys().collect();
    let mut op = call(
        "relationships.upsert",
        json!({
            "id": format!("rel_{}", fresh_nonce()),
            "user_id": user_id,
            "persona_id": persona_id,
            "set_fields": set_fields,
        }),
    );
    op.params.extend(fields);
    op
}

fn list_for(user_id: &str, favorites_only: bool, include_archived: bool) -> OpCall {
    call(
        "relationships.list_for_user",
        json!({"user_id": user_id, "favorites_only": favorites_only, "include_archived": include_archived}),
    )
}

#[tokio::test]
async fn the_public_catalogue_lists_active_personas_without_their_prompts() {
    let app = spawn_app().await;

    let listed = ok(app.call(&call("personas.list_active", json!({}))).await).await;

    let mut listed_ids = ids(&listed, "id");
    listed_ids.sort();
    assert_eq!(listed_ids, ["alex", "brad", "sarah"]);
    let mut expected_columns = PUBLIC_PERSONA_COLUMNS.to_vec();
    expected_columns.sort_unstable();
    for row in &listed.rows {
        assert_eq!(column_names(row), expected_columns, "public columns only");
        assert!(row["default_voice_settings"].is_object());
    }

    let brad = ok(app
        .call(&call("personas.get_active", json!({"id": "brad"})))
        .await)
    .await;
    assert_eq!(brad.rows.len(), 1);
    assert_eq!(brad.rows[0]["name"], json!("Brad"));
    assert_eq!(column_names(&brad.rows[0]), expected_columns);
    refused(
        app.call(&call("personas.get_active", json!({"id": "nobody"})))
            .await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;

    sql(
        &app,
        "UPDATE personas SET is_active = false WHERE id = 'sarah'",
    )
    .await;
    let listed = ok(app.call(&call("personas.list_active", json!({}))).await).await;
    assert!(!ids(&listed, "id").contains(&"sarah".to_owned()));
    refused(
        app.call(&call("personas.get_active", json!({"id": "sarah"})))
            .await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;
}

#[tokio::test]
async fn admin_creates_updates_and_retires_personas() {
    let app = spawn_app().await;

    let created = ok(app
        .call(&call(
            "personas.admin_create",
            json!({
                "id": "coach-kim",
                "name": "Kim",
                "description": "Calm running coach.",
                "category": "fitness",
                "core_system_prompt": "You are Kim, a calm running coach.",
            }),
        ))
        .await)
    .await;
    let kim = &created.rows[0];
    assert_eq!(kim["id"], json!("coach-kim"));
    assert_eq!(
        kim["core_system_prompt"],
        json!("You are Kim, a calm running coach.")
    );
    assert_eq!(kim["is_active"], json!(true));
    assert_eq!(kim["is_system_persona"], json!(false));

    // The operation's fallbacks must equal the schema's column defaults.
    sql(
        &app,
        "INSERT INTO personas (id, name, core_system_prompt) VALUES ('defaults-probe', 'Probe', 'p')",
    )
    .await;
    let reference = app
        .database
        .client()
        .await
        .query_one(
            "SELECT default_voice_settings, llm_temperature, llm_max_tokens, is_active \
             FROM personas WHERE id = 'defaults-probe'",
            &[],
        )
        .await
        .expect("probe row");
    assert_eq!(kim["default_voice_settings"], reference.get::<_, Value>(0));
    assert_eq!(kim["llm_temperature"], json!(reference.get::<_, f64>(1)));
    assert_eq!(kim["llm_max_tokens"], json!(reference.get::<_, i32>(2)));
    assert_eq!(kim["is_active"], json!(reference.get::<_, bool>(3)));

    refused(
        app.call(&call(
            "personas.admin_create",
            json!({"id": "coach-kim", "name": "Kim 2", "core_system_prompt": "x"}),
        ))
        .await,
        StatusCode::CONFLICT,
        codes::CONFLICT,
    )
    .await;

    // Partial update: `name` changes, `description` is cleared (listed, null), `category` is not
    // listed and keeps its value, temperature arrives as a decimal string.
    let updated = ok(app
        .call(&call(
            "personas.admin_update",
            json!({
                "id": "coach-kim",
                "set_fields": ["name", "description", "llm_temperature", "default_voice_settings"],
                "name": "Coach Kim",
                "description": null,
                "llm_temperature": "1.25",
                "default_voice_settings": {"speed": 1.1},
            }),
        ))
        .await)
    .await;
    let kim = &updated.rows[0];
    assert_eq!(kim["name"], json!("Coach Kim"));
    assert_eq!(kim["description"], Value::Null);
    assert_eq!(kim["category"], json!("fitness"));
    assert_eq!(kim["llm_temperature"], json!(1.25));
    assert_eq!(kim["default_voice_settings"], json!({"speed": 1.1}));
    assert_eq!(
        kim["core_system_prompt"],
        json!("You are Kim, a calm running coach.")
    );

    // A nullable field sent as null but not listed in set_fields is left alone.
    let unchanged = ok(app
        .call(&call(
            "personas.admin_update",
            json!({"id": "coach-kim", "set_fields": [], "category": null}),
        ))
        .await)
    .await;
    assert_eq!(unchanged.rows[0]["category"], json!("fitness"));

    refused(
        app.call(&call(
            "personas.admin_update",
            json!({"id": "nobody", "set_fields": ["name"], "name": "X"}),
        ))
        .await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;

    let listed = ok(app.call(&call("personas.list_active", json!({}))).await).await;
    assert!(ids(&listed, "id").contains(&"coach-kim".to_owned()));

    for _ in 0..2 {
        let retired = ok(app
            .call(&call(
                "personas.admin_deactivate",
                json!({"id": "coach-kim"}),
            ))
            .await)
        .await;
        assert_eq!(retired.rows[0]["is_active"], json!(false), "repeatable");
    }
    refused(
        app.call(&call("personas.admin_deactivate", json!({"id": "nobody"})))
            .await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;
    let listed = ok(app.call(&call("personas.list_active", json!({}))).await).await;
    assert!(!ids(&listed, "id").contains(&"coach-kim".to_owned()));

    // The admin list still has it, with its prompt, after the active ones.
    let all = ok(app.call(&call("personas.admin_list", json!({}))).await).await;
    let all_ids = ids(&all, "id");
    assert_eq!(all_ids.len(), 5);
    let retired_at = all_ids
        .iter()
        .position(|id| id == "coach-kim")
        .expect("listed");
    assert!(
        all.rows[retired_at..]
            .iter()
            .all(|row| row["is_active"] == json!(false))
    );
    assert!(
        all.rows
            .iter()
            .all(|row| row["core_system_prompt"].is_string())
    );
}

#[tokio::test]
async fn relationships_are_upserted_partially_per_user() {
    let app = spawn_app().await;
    let (alice, bob) = (create_user(&app).await, create_user(&app).await);

    // First write creates the row with defaults for everything not sent.
    let created = ok(app
        .call(&upsert(&alice, "brad", json!({"is_favorite": true})))
        .await)
    .await;
    let row = &created.rows[0];
    let relationship_id = row["id"].as_str().expect("id").to_owned();
    assert_eq!(row["persona_id"], json!("brad"));
    assert_eq!(row["relationship_type"], json!("friend"));
    assert_eq!(row["is_favorite"], json!(true));
    assert_eq!(row["is_archived"], json!(false));
    assert_eq!(row["voice_settings"], Value::Null);
    assert_eq!(row["total_calls"], json!(0));
    assert_eq!(
        row["total_duration_seconds"],
        json!("0"),
        "BIGINT crosses as a string"
    );
    assert_eq!(row["persona_name"], json!("Brad"));
    assert!(row["persona_default_voice_settings"].is_object());
    assert!(row.get("core_system_prompt").is_none());
    assert!(
        row.get("user_id").is_none(),
        "the owner is implied by the session"
    );

    // Second write changes only what it names; the new id is ignored.
    let updated = ok(app
        .call(&upsert(
            &alice,
            "brad",
            json!({
                "relationship_type": "workout buddy",
                "custom_system_prompt": "Push me on squats.",
                "voice_settings": {"speed": 1.2},
            }),
        ))
        .await)
    .await;
    let row = &updated.rows[0];
    assert_eq!(row["id"], json!(relationship_id));
    assert_eq!(row["relationship_type"], json!("workout buddy"));
    assert_eq!(row["custom_system_prompt"], json!("Push me on squats."));
    assert_eq!(row["voice_settings"], json!({"speed": 1.2}));
    assert_eq!(row["is_favorite"], json!(true), "not sent, so kept");

    // An explicit null clears a nullable field; unsent fields stay.
    let cleared = ok(app
        .call(&upsert(
            &alice,
            "brad",
            json!({"custom_system_prompt": null}),
        ))
        .await)
    .await;
    let row = &cleared.rows[0];
    assert_eq!(row["custom_system_prompt"], Value::Null);
    assert_eq!(row["voice_settings"], json!({"speed": 1.2}));
    assert_eq!(row["relationship_type"], json!("workout buddy"));

    // Bob sees nothing of Alice's, and his write creates his own row.
    let bobs = ok(app.call(&list_for(&bob, false, true)).await).await;
    assert!(bobs.rows.is_empty());
    let bobs_row = ok(app
        .call(&upsert(
            &bob,
            "brad",
            json!({"is_favorite": false, "relationship_type": "rival"}),
        ))
        .await)
    .await;
    assert_ne!(bobs_row.rows[0]["id"], json!(relationship_id));
    let alices = ok(app.call(&list_for(&alice, false, false)).await).await;
    assert_eq!(alices.rows.len(), 1);
    assert_eq!(alices.rows[0]["relationship_type"], json!("workout buddy"));
    assert_eq!(alices.rows[0]["is_favorite"], json!(true));
    let stored: i64 = app
        .database
        .client()
        .await
        .query_one("SELECT count(*) FROM user_persona_relationships", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 2);

    // Unknown and retired personas get no relationship.
    refused(
        app.call(&upsert(&alice, "nobody", json!({}))).await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;
    sql(
        &app,
        "UPDATE personas SET is_active = false WHERE id = 'alex'",
    )
    .await;
    refused(
        app.call(&upsert(&alice, "alex", json!({"is_favorite": true})))
            .await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;
}

#[tokio::test]
async fn relationship_lists_filter_and_order_by_last_call() {
    let app = spawn_app().await;
    let user = create_user(&app).await;
    for (persona, fields) in [
        ("brad", json!({"is_favorite": true})),
        ("sarah", json!({})),
        ("alex", json!({"is_favorite": true, "is_archived": true})),
    ] {
        ok(app.call(&upsert(&user, persona, fields)).await).await;
    }
    sql(
        &app,
        &format!(
            "UPDATE user_persona_relationships SET last_call_at = now() - interval '1 day', \
             total_duration_seconds = 9007199254740993 WHERE user_id = '{user}' AND persona_id = 'sarah'"
        ),
    )
    .await;

    let default_view = ok(app.call(&list_for(&user, false, false)).await).await;
    assert_eq!(
        ids(&default_view, "persona_id"),
        ["sarah", "brad"],
        "called first, then never-called by name; archived hidden"
    );
    assert_eq!(
        default_view.rows[0]["total_duration_seconds"],
        json!("9007199254740993"),
        "no precision lost"
    );
    let everything = ok(app.call(&list_for(&user, false, true)).await).await;
    assert_eq!(ids(&everything, "persona_id"), ["sarah", "alex", "brad"]);
    let favorites = ok(app.call(&list_for(&user, true, false)).await).await;
    assert_eq!(ids(&favorites, "persona_id"), ["brad"]);
    let all_favorites = ok(app.call(&list_for(&user, true, true)).await).await;
    assert_eq!(ids(&all_favorites, "persona_id"), ["alex", "brad"]);

    // A retired persona's relationship is kept but no longer listed.
    sql(
        &app,
        "UPDATE personas SET is_active = false WHERE id = 'brad'",
    )
    .await;
    let after = ok(app.call(&list_for(&user, false, true)).await).await;
    assert_eq!(ids(&after, "persona_id"), ["sarah", "alex"]);
}

#[tokio::test]
async fn templates_list_publicly_without_prompts_and_admins_edit_them() {
    let app = spawn_app().await;

    let listed = ok(app.call(&call("templates.list_active", json!({}))).await).await;
    assert_eq!(listed.rows.len(), 6);
    let orders: Vec<i64> = listed
        .rows
        .iter()
        .map(|row| row["sort_order"].as_i64().expect("int4"))
        .collect();
    assert!(
        orders.windows(2).all(|pair| pair[0] <= pair[1]),
        "{orders:?}"
    );
    for row in &listed.rows {
        assert!(
            row.get("system_prompt_addition").is_none(),
            "prompt stays private"
        );
        assert!(row.get("is_active").is_none());
    }
    let morning = &listed.rows[0];
    assert_eq!(morning["id"], json!("tpl_morning_motivation"));
    assert_eq!(morning["persona_id"], json!("brad"));

    // A retired persona is not suggested any more.
    sql(
        &app,
        "UPDATE personas SET is_active = false WHERE id = 'brad'",
    )
    .await;
    let listed = ok(app.call(&call("templates.list_active", json!({}))).await).await;
    assert_eq!(listed.rows[0]["persona_id"], Value::Null);

    let created = ok(app
        .call(&call(
            "templates.admin_create",
            json!({
                "id": "tpl_focus",
                "name": "Deep focus",
                "persona_id": "alex",
                "system_prompt_addition": "Help them plan one focused hour.",
            }),
        ))
        .await)
    .await;
    let focus = &created.rows[0];
    assert_eq!(
        focus["system_prompt_addition"],
        json!("Help them plan one focused hour.")
    );
    sql(
        &app,
        "INSERT INTO call_scenario_templates (id, name, system_prompt_addition) \
         VALUES ('tpl_probe', 'Probe', 'p')",
    )
    .await;
    let reference = app
        .database
        .client()
        .await
        .query_one(
            "SELECT suggested_duration_minutes, sort_order, is_active \
             FROM call_scenario_templates WHERE id = 'tpl_probe'",
            &[],
        )
        .await
        .expect("probe row");
    assert_eq!(
        focus["suggested_duration_minutes"],
        json!(reference.get::<_, i32>(0))
    );
    assert_eq!(focus["sort_order"], json!(reference.get::<_, i32>(1)));
    assert_eq!(focus["is_active"], json!(reference.get::<_, bool>(2)));

    refused(
        app.call(&call(
            "templates.admin_create",
            json!({"id": "tpl_other", "name": "Deep focus", "system_prompt_addition": "x"}),
        ))
        .await,
        StatusCode::CONFLICT,
        codes::CONFLICT,
    )
    .await;
    refused(
        app.call(&call(
            "templates.admin_create",
            json!({"id": "tpl_ghost", "name": "Ghost", "persona_id": "nobody", "system_prompt_addition": "x"}),
        ))
        .await,
        StatusCode::CONFLICT,
        codes::FOREIGN_KEY_VIOLATION,
    )
    .await;

    let updated = ok(app
        .call(&call(
            "templates.admin_update",
            json!({
                "id": "tpl_focus",
                "set_fields": ["persona_id", "sort_order", "opening_line"],
                "persona_id": null,
                "sort_order": 5,
                "opening_line": "Ready to focus?",
            }),
        ))
        .await)
    .await;
    let focus = &updated.rows[0];
    assert_eq!(focus["persona_id"], Value::Null);
    assert_eq!(focus["sort_order"], json!(5));
    assert_eq!(focus["opening_line"], json!("Ready to focus?"));
    assert_eq!(focus["name"], json!("Deep focus"));
    refused(
        app.call(&call(
            "templates.admin_update",
            json!({"id": "tpl_nobody", "set_fields": []}),
        ))
        .await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;

    let listed = ok(app.call(&call("templates.list_active", json!({}))).await).await;
    assert_eq!(
        ids(&listed, "id")[..2],
        ["tpl_probe", "tpl_focus"],
        "sort orders 0 and 5 come before the seeds' 10 and up"
    );
    ok(app
        .call(&call(
            "templates.admin_deactivate",
            json!({"id": "tpl_focus"}),
        ))
        .await)
    .await;
    refused(
        app.call(&call(
            "templates.admin_deactivate",
            json!({"id": "tpl_nobody"}),
        ))
        .await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;
    let listed = ok(app.call(&call("templates.list_active", json!({}))).await).await;
    assert!(!ids(&listed, "id").contains(&"tpl_focus".to_owned()));
    let all = ok(app.call(&call("templates.admin_list", json!({}))).await).await;
    assert_eq!(all.rows.len(), 8);
    assert_eq!(all.rows.last().expect("rows")["is_active"], json!(false));
    assert!(
        all.rows
            .iter()
            .all(|row| row["system_prompt_addition"].is_string())
    );
}
