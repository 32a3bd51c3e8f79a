//! Personas, relationships and scenario templates end to end: Worker (workerd) → gateway →
//! Postgres with the seed migration's personas (Brad, Sarah, Alex) and templates.
//!
//! Users are registered and logged in through the auth routes; admins are made by promoting a
//! user in SQL and logging in again (the role is a claim of the session token, and the database
//! confirms it on every admin request).

use callmeback_e2e::{Stack, field_code};
use reqwest::Method;
use serde_json::{Value, json};

async fn get(stack: &Stack, path: &str, token: Option<&str>) -> (u16, Value) {
    stack.json(Method::GET, path, token, None).await
}

async fn put(stack: &Stack, path: &str, token: &str, body: Value) -> (u16, Value) {
    stack.json(Method::PUT, path, Some(token), Some(body)).await
}

fn ids(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|item| item[key].as_str().expect("string id").to_owned())
        .collect()
}

#[tokio::test]
async fn the_public_catalogue_shows_personas_and_templates_without_prompts() {
    let stack = Stack::start().await;

    let (status, body) = get(&stack, "/api/personas", None).await;
    assert_eq!(status, 200, "{body}");
    let mut listed = ids(&body["personas"], "id");
    listed.sort();
    assert_eq!(listed, ["alex", "brad", "sarah"]);
    let text = body.to_string();
    assert!(
        !text.contains("core_system_prompt") && !text.contains("You are Brad"),
        "{text}"
    );
    let brad = body["personas"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["id"] == "brad"))
        .expect("brad listed");
    assert_eq!(brad["name"], "Brad");
    assert!(brad["default_voice_settings"]["stability"].is_number());
    assert!(brad["default_greeting"].is_string());

    let (status, body) = get(&stack, "/api/personas/sarah", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["persona"]["name"], "Sarah");
    assert!(body["persona"].get("core_system_prompt").is_none());

    for unknown in ["/api/personas/nobody", "/api/personas/NOT%20A%20SLUG"] {
        let (status, body) = get(&stack, unknown, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{unknown}"
        );
    }

    let (status, body) = get(&stack, "/api/templates", None).await;
    assert_eq!(status, 200, "{body}");
    let templates = body["templates"].as_array().expect("list");
    assert_eq!(templates.len(), 6);
    assert_eq!(templates[0]["id"], "tpl_morning_motivation");
    assert_eq!(templates[0]["persona_id"], "brad");
    assert!(templates[0]["suggested_duration_minutes"].is_number());
    assert!(!body.to_string().contains("system_prompt_addition"));
}

#[tokio::test]
async fn relationships_upsert_partially_filter_favorites_and_validate() {
    let stack = Stack::start().await;
    let (token, _) = stack.register("rel@example.test").await;

    let (status, body) = get(&stack, "/api/me/personas", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = get(&stack, "/api/me/personas", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["relationships"], json!([]));

    let (status, body) = put(
        &stack,
        "/api/personas/brad/relationship",
        &token,
        json!({"relationship_type": "coach", "is_favorite": true, "voice_settings": {"speed": 1.2, "stability": 0.3}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let brad = &body["relationship"];
    assert!(
        brad["id"].as_str().is_some_and(|id| id.starts_with("rel_")),
        "{brad}"
    );
    assert_eq!(brad["persona_id"], "brad");
    assert_eq!(brad["persona"]["name"], "Brad");
    assert!(brad["persona"].get("core_system_prompt").is_none());
    assert_eq!(brad["relationship_type"], "coach");
    assert_eq!(brad["is_favorite"], true);
    assert_eq!(brad["is_archived"], false);
    assert_eq!(brad["custom_system_prompt"], Value::Null);
    assert_eq!(
        brad["voice_settings"],
        json!({"speed": 1.2, "stability": 0.3})
    );
    assert_eq!(brad["total_calls"], 0);
    assert_eq!(brad["total_duration_seconds"], 0);
    assert_eq!(brad["last_call_at"], Value::Null);
    let brad_id = brad["id"].clone();

    let (status, _) = put(
        &stack,
        "/api/personas/sarah/relationship",
        &token,
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = put(
        &stack,
        "/api/personas/alex/relationship",
        &token,
        json!({"is_archived": true}),
    )
    .await;
    assert_eq!(status, 200);

    let (_, body) = get(&stack, "/api/me/personas", Some(&token)).await;
    assert_eq!(
        ids(&body["relationships"], "persona_id"),
        ["brad", "sarah"],
        "archived hidden; no calls yet, so by name"
    );
    let (_, body) = get(&stack, "/api/me/personas?archived=true", Some(&token)).await;
    assert_eq!(
        ids(&body["relationships"], "persona_id"),
        ["alex", "brad", "sarah"]
    );
    let (_, body) = get(&stack, "/api/me/personas?favorite=true", Some(&token)).await;
    assert_eq!(ids(&body["relationships"], "persona_id"), ["brad"]);
    let (status, body) = get(&stack, "/api/me/personas?favorite=maybe", Some(&token)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("validation_failed"))
    );
    assert_eq!(field_code(&body, "favorite"), "invalid_type");

    // Ordered by the most recent call first.
    stack
        .db()
        .await
        .execute(
            "UPDATE user_persona_relationships SET last_call_at = now(), total_calls = 2, \
             total_duration_seconds = 300 WHERE persona_id = 'sarah'",
            &[],
        )
        .await
        .expect("record a call");
    let (_, body) = get(&stack, "/api/me/personas", Some(&token)).await;
    assert_eq!(ids(&body["relationships"], "persona_id"), ["sarah", "brad"]);
    assert_eq!(body["relationships"][0]["total_duration_seconds"], 300);
    assert!(body["relationships"][0]["last_call_at"].is_string());

    // Partial update: only the sent field changes; the row keeps its id.
    let (status, body) = put(
        &stack,
        "/api/personas/brad/relationship",
        &token,
        json!({"custom_system_prompt": "Remind me about my 5k."}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let brad = &body["relationship"];
    assert_eq!(brad["id"], brad_id);
    assert_eq!(brad["custom_system_prompt"], "Remind me about my 5k.");
    assert_eq!(brad["relationship_type"], "coach");
    assert_eq!(brad["is_favorite"], true);
    assert_eq!(
        brad["voice_settings"],
        json!({"speed": 1.2, "stability": 0.3})
    );

    // Explicit null clears an optional field and nothing else.
    let (status, body) = put(
        &stack,
        "/api/personas/brad/relationship",
        &token,
        json!({"voice_settings": null, "is_favorite": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let brad = &body["relationship"];
    assert_eq!(brad["voice_settings"], Value::Null);
    assert_eq!(brad["is_favorite"], false);
    assert_eq!(brad["custom_system_prompt"], "Remind me about my 5k.");
    let (_, body) = get(&stack, "/api/me/personas?favorite=true", Some(&token)).await;
    assert_eq!(body["relationships"], json!([]));

    // Validation: every bad field is reported with its code, and nothing changes.
    let (status, body) = put(
        &stack,
        "/api/personas/brad/relationship",
        &token,
        json!({
            "relationship_type": "x".repeat(51),
            "custom_system_prompt": "y".repeat(4001),
            "voice_id": "bad voice",
            "voice_settings": {"stability": 2, "speed": 0.1, "pitch": 1},
            "is_favorite": null,
            "is_archived": "yes",
        }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("validation_failed")),
        "{body}"
    );
    for (field, code) in [
        ("relationship_type", "too_long"),
        ("custom_system_prompt", "too_long"),
        ("voice_id", "invalid_characters"),
        ("voice_settings.stability", "out_of_range"),
        ("voice_settings.speed", "out_of_range"),
        ("voice_settings.pitch", "unknown_field"),
        ("is_favorite", "not_nullable"),
        ("is_archived", "invalid_type"),
    ] {
        assert_eq!(field_code(&body, field), code, "{field}");
    }
    let (_, body) = get(&stack, "/api/me/personas", Some(&token)).await;
    assert_eq!(
        body["relationships"][1]["relationship_type"], "coach",
        "unchanged"
    );

    let (status, body) = put(
        &stack,
        "/api/personas/brad/relationship",
        &token,
        json!({"user_id": "usr_someone_else"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_body")),
        "{body}"
    );
    let (status, body) = put(
        &stack,
        "/api/personas/nobody/relationship",
        &token,
        json!({"is_favorite": true}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
}

#[tokio::test]
async fn users_can_neither_read_nor_change_each_others_relationships() {
    let stack = Stack::start().await;
    let (alice, alice_id) = stack.register("alice@example.test").await;
    let (bob, bob_id) = stack.register("bob@example.test").await;

    let (status, body) = put(
        &stack,
        "/api/personas/brad/relationship",
        &alice,
        json!({"is_favorite": true, "relationship_type": "coach", "custom_system_prompt": "Alice's secret goals."}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let alice_relationship = body["relationship"].clone();

    for path in [
        "/api/me/personas",
        "/api/me/personas?favorite=true",
        "/api/me/personas?archived=true",
    ] {
        let (status, body) = get(&stack, path, Some(&bob)).await;
        assert_eq!(status, 200);
        assert_eq!(
            body["relationships"],
            json!([]),
            "{path}: Bob sees none of Alice's"
        );
    }

    // Bob's write to the same persona creates Bob's own row; Alice's stays as it was.
    let (status, body) = put(
        &stack,
        "/api/personas/brad/relationship",
        &bob,
        json!({"relationship_type": "rival", "is_favorite": false, "custom_system_prompt": null}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["relationship"]["id"], alice_relationship["id"]);
    assert_eq!(body["relationship"]["relationship_type"], "rival");

    let (_, body) = get(&stack, "/api/me/personas", Some(&alice)).await;
    assert_eq!(
        body["relationships"],
        json!([alice_relationship]),
        "Alice's row untouched"
    );
    let (_, body) = get(&stack, "/api/me/personas?favorite=true", Some(&bob)).await;
    assert_eq!(body["relationships"], json!([]));

    let rows = stack.db()
        .await
        .query(
            "SELECT user_id, relationship_type, is_favorite FROM user_persona_relationships ORDER BY user_id = $1 DESC",
            &[&alice_id],
        )
        .await
        .expect("rows");
    let rows: Vec<(String, String, bool)> = rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        rows,
        [
            (alice_id, "coach".to_owned(), true),
            (bob_id, "rival".to_owned(), false)
        ]
    );
}

#[tokio::test]
async fn admins_create_update_and_retire_personas() {
    let stack = Stack::start().await;
    let (user, _) = stack.register("plain@example.test").await;
    let persona = json!({
        "id": "coach-kim",
        "name": "Kim",
        "description": "Calm running coach.",
        "category": "fitness",
        "core_system_prompt": "You are Kim, a calm running coach.",
        "default_greeting": "Hi, Kim here. Ready to run?",
        "default_voice_id": "voiceKim01",
        "default_voice_settings": {"stability": 0.5, "speed": 1.0},
        "avatar_url": "https://cdn.example.test/kim.png",
        "llm_temperature": 0.6,
        "llm_max_tokens": 120,
    });

    for (method, path) in [
        (Method::GET, "/api/admin/personas"),
        (Method::POST, "/api/admin/personas"),
        (Method::PUT, "/api/admin/personas/brad"),
        (Method::DELETE, "/api/admin/personas/brad"),
    ] {
        let body = matches!(method, Method::POST | Method::PUT).then(|| persona.clone());
        let (status, body) = stack.json(method.clone(), path, Some(&user), body).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{method} {path}"
        );
    }
    let (status, _) = stack
        .json(
            Method::POST,
            "/api/admin/personas",
            None,
            Some(persona.clone()),
        )
        .await;
    assert_eq!(status, 401);

    let admin = stack.admin_token("admin@example.test").await;
    let (status, body) = stack
        .json(
            Method::POST,
            "/api/admin/personas",
            Some(&admin),
            Some(persona.clone()),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let kim = &body["persona"];
    assert_eq!(kim["id"], "coach-kim");
    assert_eq!(
        kim["core_system_prompt"], "You are Kim, a calm running coach.",
        "admins see prompts"
    );
    assert_eq!(kim["llm_temperature"], 0.6);
    assert_eq!(kim["llm_max_tokens"], 120);
    assert_eq!(kim["is_active"], true);

    let (status, body) = stack
        .json(
            Method::POST,
            "/api/admin/personas",
            Some(&admin),
            Some(persona.clone()),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );

    let (status, body) = stack.json(Method::POST,
        "/api/admin/personas",
        Some(&admin),
        Some(json!({"id": "Bad Id", "name": "", "avatar_url": "http://insecure.test/a.png", "llm_temperature": 3})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    for (field, code) in [
        ("id", "invalid_format"),
        ("name", "required"),
        ("core_system_prompt", "required"),
        ("avatar_url", "invalid_url"),
        ("llm_temperature", "out_of_range"),
    ] {
        assert_eq!(field_code(&body, field), code, "{field}");
    }

    let (_, body) = get(&stack, "/api/personas", None).await;
    assert!(ids(&body["personas"], "id").contains(&"coach-kim".to_owned()));
    assert!(
        !body.to_string().contains("calm running coach."),
        "no prompt in public list"
    );
    let (status, body) = get(&stack, "/api/personas/coach-kim", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["persona"]["default_greeting"],
        "Hi, Kim here. Ready to run?"
    );
    assert!(body["persona"].get("core_system_prompt").is_none());

    // Partial update: clear the avatar, rename; the rest stays.
    let (status, body) = put(
        &stack,
        "/api/admin/personas/coach-kim",
        &admin,
        json!({"name": "Coach Kim", "avatar_url": null}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["persona"]["name"], "Coach Kim");
    assert_eq!(body["persona"]["avatar_url"], Value::Null);
    assert_eq!(body["persona"]["category"], "fitness");
    let (status, body) = put(
        &stack,
        "/api/admin/personas/coach-kim",
        &admin,
        json!({"core_system_prompt": null}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(field_code(&body, "core_system_prompt"), "not_nullable");
    let (status, body) = put(
        &stack,
        "/api/admin/personas/nobody",
        &admin,
        json!({"name": "X"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // A user relates to the persona, then it is retired: gone from the catalogue and the user's
    // list, and no new relationship can be made with it.
    let (status, _) = put(
        &stack,
        "/api/personas/coach-kim/relationship",
        &user,
        json!({"is_favorite": true}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = stack
        .json(
            Method::DELETE,
            "/api/admin/personas/coach-kim",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!((status, &body), (204, &Value::Null));
    let (status, _) = stack
        .json(
            Method::DELETE,
            "/api/admin/personas/coach-kim",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 204, "retiring twice is harmless");
    let (status, _) = stack
        .json(
            Method::DELETE,
            "/api/admin/personas/nobody",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 404);

    let (_, body) = get(&stack, "/api/personas", None).await;
    assert!(!ids(&body["personas"], "id").contains(&"coach-kim".to_owned()));
    let (status, _) = get(&stack, "/api/personas/coach-kim", None).await;
    assert_eq!(status, 404);
    let (_, body) = get(&stack, "/api/me/personas?favorite=true", Some(&user)).await;
    assert_eq!(body["relationships"], json!([]));
    let (status, _) = put(
        &stack,
        "/api/personas/coach-kim/relationship",
        &user,
        json!({}),
    )
    .await;
    assert_eq!(status, 404);

    let (status, body) = get(&stack, "/api/admin/personas", Some(&admin)).await;
    assert_eq!(status, 200);
    let kim = body["personas"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["id"] == "coach-kim"))
        .expect("admins still see retired personas");
    assert_eq!(kim["is_active"], false);

    // The database has the last word on the role: a demoted admin's token stops working.
    stack
        .db()
        .await
        .execute(
            "UPDATE users SET role = 'user' WHERE email = 'admin@example.test'",
            &[],
        )
        .await
        .expect("demote");
    let (status, body) = get(&stack, "/api/admin/personas", Some(&admin)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
}

#[tokio::test]
async fn admins_create_update_and_retire_templates() {
    let stack = Stack::start().await;
    let (user, _) = stack.register("plain@example.test").await;
    let template = json!({
        "id": "tpl_focus",
        "name": "Deep focus",
        "description": "Plan one focused hour.",
        "category": "productivity",
        "persona_id": "alex",
        "system_prompt_addition": "Help them plan one focused hour.",
        "opening_line": "Ready to focus?",
        "suggested_duration_minutes": 10,
        "sort_order": 1,
    });

    for (method, path) in [
        (Method::GET, "/api/admin/templates"),
        (Method::POST, "/api/admin/templates"),
        (Method::PUT, "/api/admin/templates/tpl_morning_motivation"),
        (
            Method::DELETE,
            "/api/admin/templates/tpl_morning_motivation",
        ),
    ] {
        let body = matches!(method, Method::POST | Method::PUT).then(|| template.clone());
        let (status, _) = stack.json(method.clone(), path, Some(&user), body).await;
        assert_eq!(status, 403, "{method} {path}");
    }

    let admin = stack.admin_token("admin@example.test").await;
    let (status, body) = stack
        .json(
            Method::POST,
            "/api/admin/templates",
            Some(&admin),
            Some(template.clone()),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["template"]["system_prompt_addition"],
        "Help them plan one focused hour."
    );
    let (status, body) = stack
        .json(
            Method::POST,
            "/api/admin/templates",
            Some(&admin),
            Some(template.clone()),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    let (status, body) = stack.json(Method::POST,
        "/api/admin/templates",
        Some(&admin),
        Some(json!({"id": "tpl_ghost", "name": "Ghost", "persona_id": "nobody", "system_prompt_addition": "x"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(field_code(&body, "persona_id"), "unknown_persona");
    let (status, body) = stack.json(Method::POST,
        "/api/admin/templates",
        Some(&admin),
        Some(json!({"id": "tpl_x", "name": "X", "system_prompt_addition": "x", "suggested_duration_minutes": 0})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        field_code(&body, "suggested_duration_minutes"),
        "out_of_range"
    );

    let (_, body) = get(&stack, "/api/templates", None).await;
    let listed = ids(&body["templates"], "id");
    assert_eq!(
        listed[0], "tpl_focus",
        "sort order 1 comes before the seeds"
    );
    assert_eq!(listed.len(), 7);
    assert!(
        !body
            .to_string()
            .contains("Help them plan one focused hour.")
    );

    let (status, body) = put(
        &stack,
        "/api/admin/templates/tpl_focus",
        &admin,
        json!({"persona_id": null, "sort_order": 100}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["template"]["persona_id"], Value::Null);
    assert_eq!(body["template"]["sort_order"], 100);
    assert_eq!(body["template"]["name"], "Deep focus");
    let (status, _) = put(
        &stack,
        "/api/admin/templates/tpl_nobody",
        &admin,
        json!({"sort_order": 1}),
    )
    .await;
    assert_eq!(status, 404);

    let (status, _) = stack
        .json(
            Method::DELETE,
            "/api/admin/templates/tpl_focus",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, body) = get(&stack, "/api/templates", None).await;
    assert!(!ids(&body["templates"], "id").contains(&"tpl_focus".to_owned()));
    let (status, body) = get(&stack, "/api/admin/templates", Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["templates"].as_array().map(Vec::len),
        Some(7),
        "admins see retired ones"
    );
}
