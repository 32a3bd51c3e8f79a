//! The accounts operations (`accounts.*`) and the `accounts.login` procedure against the
//! project's real schema: Argon2id hashing of new passwords inside the gateway, login with one
//! answer for every failure, the bcrypt → Argon2id upgrade, revocation, role changes and the
//! audit rows each of them leaves.

use argon2::password_hash::PasswordHash;
use callmeback_gateway_api::ops::accounts;
use callmeback_gateway_api::{OpCall, codes};
use db_gateway::ops::password::{ARGON2_M_COST_KIB, ARGON2_P_COST, ARGON2_T_COST};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, call, fresh_nonce, ok, ok_batch, refused, spawn_app};

const PASSWORD: &str = "correct horse battery staple";
const IP: &str = "203.0.113.7";

fn new_user_id() -> String {
    format!("usr_{}", fresh_nonce())
}

/// The batch the Worker sends on registration (free tier, default budget).
pub(crate) fn registration(id: &str, email: &str, password: &str) -> Vec<OpCall> {
    vec![
        call(
            accounts::CREATE_USER.name,
            json!({"id": id, "email": email, "password": password, "name": "Ada", "phone": "+15551234567"}),
        ),
        call(
            accounts::CREATE_CREDITS.name,
            json!({"user_id": id, "tier": "free", "monthly_credit_allowance": 0,
                   "max_calls_per_day": 3, "max_call_duration_seconds": 300}),
        ),
        call(
            accounts::CREATE_BUDGET_SETTINGS.name,
            json!({"user_id": id, "max_cost_per_call_cents": 1000, "max_monthly_spend_cents": 10000,
                   "warn_at_percent_per_call": 75, "enable_auto_cutoff": true}),
        ),
        call(
            accounts::AUDIT.name,
            json!({"event_type": "register", "user_id": id, "ip": IP}),
        ),
    ]
}

async fn register(app: &TestApp, email: &str, password: &str) -> String {
    let id = new_user_id();
    ok_batch(app.batch(registration(&id, email, password)).await).await;
    id
}

pub(crate) fn login(email: &str, password: &str) -> OpCall {
    call(
        accounts::LOGIN.name,
        json!({"email": email, "password": password, "ip": IP}),
    )
}

async fn stored_hash(app: &TestApp, user_id: &str) -> String {
    app.database
        .client()
        .await
        .query_one("SELECT password_hash FROM users WHERE id = $1", &[&user_id])
        .await
        .expect("user exists")
        .get(0)
}

/// `(event_type, user_id, ip, details)` of every audit row, oldest first.
async fn audit_rows(app: &TestApp) -> Vec<(String, Option<String>, Option<String>, Value)> {
    app.database
        .client()
        .await
        .query(
            "SELECT event_type, user_id, ip, details FROM audit_log ORDER BY id",
            &[],
        )
        .await
        .expect("audit_log readable")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect()
}

fn assert_current_argon2id(hash: &str) {
    let parsed = PasswordHash::new(hash).expect("a PHC string");
    assert_eq!(parsed.algorithm.as_str(), "argon2id");
    assert_eq!(parsed.version, Some(0x13));
    let param = |name: &str| parsed.params.get_decimal(name);
    assert_eq!(param("m"), Some(ARGON2_M_COST_KIB));
    assert_eq!(param("t"), Some(ARGON2_T_COST));
    assert_eq!(param("p"), Some(ARGON2_P_COST));
    assert_eq!(
        (ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST),
        (19_456, 2, 1)
    );
    let mut salt = [0u8; 64];
    let salt_len = parsed
        .salt
        .expect("salted")
        .decode_b64(&mut salt)
        .unwrap()
        .len();
    assert_eq!(salt_len, 16, "16-byte salt");
    assert_eq!(parsed.hash.expect("has output").len(), 32, "32-byte tag");
}

#[tokio::test]
async fn registration_stores_an_argon2id_hash_and_creates_credits_budget_and_audit() {
    let app = spawn_app().await;
    let id = new_user_id();

    let batch = ok_batch(
        app.batch(registration(&id, "Ada@Example.COM", PASSWORD))
            .await,
    )
    .await;

    let user = batch.results[0].first().expect("user row");
    assert_eq!(user["id"], json!(id));
    assert_eq!(
        user["email"],
        json!("ada@example.com"),
        "stored lower-cased"
    );
    assert_eq!(user["role"], json!("user"));
    assert_eq!(user["name"], json!("Ada"));
    assert!(
        !user.contains_key("password_hash"),
        "the hash never leaves the gateway"
    );
    let credits = batch.results[1].first().expect("credits row");
    assert_eq!(credits["available_credits"], json!(0));
    assert_eq!(credits["subscription_tier"], json!("free"));
    assert_eq!(credits["max_calls_per_day"], json!(3));
    assert_eq!(credits["max_call_duration_seconds"], json!(300));
    let budget = batch.results[2].first().expect("budget row");
    assert_eq!(budget["max_cost_per_call_cents"], json!(1000));
    assert_eq!(budget["enable_auto_cutoff"], json!(true));

    let hash = stored_hash(&app, &id).await;
    assert_current_argon2id(&hash);
    assert!(!hash.contains(PASSWORD));
    let audit = audit_rows(&app).await;
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (
            audit[0].0.as_str(),
            audit[0].1.as_deref(),
            audit[0].2.as_deref()
        ),
        ("register", Some(id.as_str()), Some(IP))
    );
    assert_eq!(audit[0].3, json!({}));
}

#[tokio::test]
async fn a_duplicate_email_is_a_conflict_and_creates_nothing() {
    let app = spawn_app().await;
    register(&app, "ada@example.com", PASSWORD).await;

    let body = refused(
        app.batch(registration(
            &new_user_id(),
            "ADA@example.com",
            "another password",
        ))
        .await,
        StatusCode::CONFLICT,
        codes::CONFLICT,
    )
    .await;

    assert_eq!(body.error.op_index, Some(0));
    assert!(
        !body.error.message.contains("ada@"),
        "no value in the message"
    );
    let client = app.database.client().await;
    for table in ["users", "user_credits", "user_budget_settings"] {
        let count: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count, 1, "{table}: the failed batch left nothing behind");
    }
    assert_eq!(
        audit_rows(&app).await.len(),
        1,
        "only the first registration"
    );
}

#[tokio::test]
async fn new_passwords_are_checked_before_hashing_and_never_echoed() {
    let app = spawn_app().await;
    for bad in [json!(""), json!("x".repeat(1025)), json!(42)] {
        let body = refused(
            app.call(&call(
                accounts::CREATE_USER.name,
                json!({"id": new_user_id(), "email": "bad@example.com", "password": bad}),
            ))
            .await,
            StatusCode::BAD_REQUEST,
            codes::INVALID_PARAMS,
        )
        .await;
        assert!(body.error.message.contains("`password`"));
        assert!(!body.error.message.contains("xxx"));
    }
}

#[tokio::test]
async fn login_answers_the_user_and_records_the_success() {
    let app = spawn_app().await;
    let id = register(&app, "ada@example.com", PASSWORD).await;

    let result = ok(app.call(&login("  ADA@example.com", PASSWORD)).await).await;

    let user = result.first().expect("user row");
    assert_eq!(user["id"], json!(id));
    assert_eq!(user["email"], json!("ada@example.com"));
    assert_eq!(user["role"], json!("user"));
    assert_eq!(user["password_upgraded"], json!(false));
    assert!(user["last_login_at"].is_string(), "login is stamped");
    let mut columns: Vec<&str> = user.keys().map(String::as_str).collect();
    columns.sort_unstable();
    assert_eq!(
        columns,
        [
            "created_at",
            "email",
            "id",
            "last_login_at",
            "name",
            "password_upgraded",
            "phone",
            "role"
        ]
    );
    let audit = audit_rows(&app).await;
    let last = audit.last().expect("audited");
    assert_eq!(
        (last.0.as_str(), last.1.as_deref(), last.2.as_deref()),
        ("login_success", Some(id.as_str()), Some(IP))
    );
}

#[tokio::test]
async fn every_failed_login_gets_the_same_answer_and_an_audit_row_without_the_email() {
    let app = spawn_app().await;
    let id = register(&app, "ada@example.com", PASSWORD).await;
    let inactive = register(&app, "gone@example.com", PASSWORD).await;
    app.database
        .client()
        .await
        .execute(
            "UPDATE users SET is_active = false WHERE id = $1",
            &[&inactive],
        )
        .await
        .unwrap();

    let mut messages = Vec::new();
    for attempt in [
        login("ada@example.com", "wrong password!"),
        login("nobody@example.com", PASSWORD),
        login("not an email at all", PASSWORD),
        login("gone@example.com", PASSWORD),
    ] {
        let body = refused(
            app.call(&attempt).await,
            StatusCode::CONFLICT,
            codes::PRECONDITION_FAILED,
        )
        .await;
        messages.push(body.error.message);
    }

    assert!(
        messages
            .iter()
            .all(|m| m == db_gateway::ops::accounts::INVALID_CREDENTIALS)
    );
    let failures: Vec<_> = audit_rows(&app)
        .await
        .into_iter()
        .filter(|row| row.0 == "login_failure")
        .collect();
    let summary: Vec<(Option<&str>, &Value)> = failures
        .iter()
        .map(|row| (row.1.as_deref(), &row.3["reason"]))
        .collect();
    assert_eq!(
        summary,
        [
            (Some(id.as_str()), &json!("wrong_password")),
            (None, &json!("unknown_account")),
            (None, &json!("unknown_account")),
            (Some(inactive.as_str()), &json!("inactive_account")),
        ]
    );
    for row in &failures {
        assert_eq!(row.2.as_deref(), Some(IP));
        let details = row.3.to_string();
        assert!(!details.contains('@') && !details.contains("password!"));
    }
    let last_login: Option<chrono::DateTime<chrono::Utc>> = app
        .database
        .client()
        .await
        .query_one("SELECT last_login_at FROM users WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(last_login.is_none(), "a failed login stamps nothing");
}

#[tokio::test]
async fn a_legacy_bcrypt_hash_logs_in_and_is_upgraded_to_argon2id_once() {
    let app = spawn_app().await;
    let client = app.database.client().await;
    let mut legacy = Vec::new();
    for (index, version) in [
        bcrypt::Version::TwoB,
        bcrypt::Version::TwoA,
        bcrypt::Version::TwoY,
    ]
    .into_iter()
    .enumerate()
    {
        let id = new_user_id();
        let email = format!("legacy{index}@example.com");
        // The replaced system's cost: 12 rounds.
        let hash = bcrypt::hash_with_result(PASSWORD, 12)
            .unwrap()
            .format_for_version(version);
        client
            .execute(
                "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)",
                &[&id, &email, &hash],
            )
            .await
            .unwrap();
        legacy.push((id, email, hash));
    }

    for (id, email, bcrypt_hash) in &legacy {
        // A wrong password neither logs in nor touches the legacy hash.
        refused(
            app.call(&login(email, "not the password")).await,
            StatusCode::CONFLICT,
            codes::PRECONDITION_FAILED,
        )
        .await;
        assert_eq!(&stored_hash(&app, id).await, bcrypt_hash);

        let first = ok(app.call(&login(email, PASSWORD)).await).await;
        assert_eq!(first.first().unwrap()["password_upgraded"], json!(true));
        let upgraded = stored_hash(&app, id).await;
        assert_current_argon2id(&upgraded);

        let second = ok(app.call(&login(email, PASSWORD)).await).await;
        assert_eq!(second.first().unwrap()["password_upgraded"], json!(false));
        assert_eq!(stored_hash(&app, id).await, upgraded, "upgraded only once");
    }

    let upgrades: Vec<_> = audit_rows(&app)
        .await
        .into_iter()
        .filter(|row| row.0 == "password_upgrade")
        .collect();
    assert_eq!(upgrades.len(), legacy.len());
    for (row, (id, _, _)) in upgrades.iter().zip(&legacy) {
        assert_eq!(row.1.as_deref(), Some(id.as_str()));
        assert_eq!(row.3, json!({"from": "bcrypt", "to": "argon2id"}));
    }
}

#[tokio::test]
async fn login_runs_alone_and_checks_its_parameters() {
    let app = spawn_app().await;
    register(&app, "ada@example.com", PASSWORD).await;

    let body = refused(
        app.batch(vec![
            call("system.ping", json!({})),
            login("ada@example.com", PASSWORD),
        ])
        .await,
        StatusCode::BAD_REQUEST,
        codes::BAD_REQUEST,
    )
    .await;
    assert_eq!(body.error.op_index, Some(1));

    for params in [
        json!({"email": "ada@example.com"}),
        json!({"email": "ada@example.com", "password": ""}),
        json!({"email": "ada@example.com", "password": PASSWORD, "role": "admin"}),
    ] {
        let body = refused(
            app.call(&call(accounts::LOGIN.name, params)).await,
            StatusCode::BAD_REQUEST,
            codes::INVALID_PARAMS,
        )
        .await;
        assert!(!body.error.message.contains(PASSWORD));
    }
    // None of the refused calls reached the database.
    assert!(
        audit_rows(&app)
            .await
            .iter()
            .all(|row| !row.0.starts_with("login"))
    );
}

#[tokio::test]
async fn get_user_answers_the_profile_with_its_credit_summary() {
    let app = spawn_app().await;
    let id = register(&app, "ada@example.com", PASSWORD).await;

    let result = ok(app
        .call(&call(accounts::GET_USER.name, json!({"user_id": id})))
        .await)
    .await;

    let user = result.first().expect("one row");
    assert_eq!(user["email"], json!("ada@example.com"));
    assert_eq!(user["phone"], json!("+15551234567"));
    assert_eq!(user["subscription_tier"], json!("free"));
    assert_eq!(user["available_credits"], json!(0));
    assert!(!user.contains_key("password_hash"));

    refused(
        app.call(&call(
            accounts::GET_USER.name,
            json!({"user_id": "usr_nobody"}),
        ))
        .await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;
}

#[tokio::test]
async fn a_revoked_token_fails_the_session_check_until_the_purge() {
    let app = spawn_app().await;
    let id = register(&app, "ada@example.com", PASSWORD).await;
    let session_check = |jti: &str| {
        call(
            "auth.session_check",
            json!({"user_id": id.clone(), "jti": jti}),
        )
    };
    let expires_at = chrono::Utc::now().timestamp() + 3600;
    ok(app.call(&session_check("jti_live")).await).await;

    let revoke = call(
        accounts::REVOKE_TOKEN.name,
        json!({"jti": "jti_live", "user_id": id, "expires_at_unix": expires_at}),
    );
    let batch = ok_batch(
        app.batch(vec![
            session_check("jti_live"),
            revoke,
            call(
                accounts::AUDIT.name,
                json!({"event_type": "logout", "user_id": id, "ip": IP}),
            ),
        ])
        .await,
    )
    .await;
    assert_eq!(batch.results[1].row_count, 1);

    refused(
        app.call(&session_check("jti_live")).await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;
    ok(app.call(&session_check("jti_other")).await).await;
    let stored: chrono::DateTime<chrono::Utc> = app
        .database
        .client()
        .await
        .query_one(
            "SELECT expires_at FROM token_blacklist WHERE token_id = 'jti_live'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.timestamp(), expires_at);

    // Revoking again changes nothing.
    let again = ok(app
        .call(&call(
            accounts::REVOKE_TOKEN.name,
            json!({"jti": "jti_live", "user_id": id, "expires_at_unix": expires_at + 99}),
        ))
        .await)
    .await;
    assert_eq!(again.row_count, 0);
    // A revocation whose time has passed still revokes until the purge removes it (it used to
    // stop matching at its `expires_at`, while the verifier accepts a token 30 s past `exp`).
    ok(app
        .call(&call(
            accounts::REVOKE_TOKEN.name,
            json!({"jti": "jti_old", "user_id": id, "expires_at_unix": expires_at - 7200}),
        ))
        .await)
    .await;
    refused(
        app.call(&session_check("jti_old")).await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;
    // The purge (an hour past `expires_at`) removes the old row only.
    ok(app
        .call(&call("maintenance.purge_blacklist", json!({})))
        .await)
    .await;
    ok(app.call(&session_check("jti_old")).await).await;
    refused(
        app.call(&session_check("jti_live")).await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;
    assert_eq!(audit_rows(&app).await.last().unwrap().0, "logout");
}

#[tokio::test]
async fn set_role_changes_the_role_and_audits_real_changes_only() {
    let app = spawn_app().await;
    let admin = register(&app, "root@example.com", PASSWORD).await;
    let target = register(&app, "ada@example.com", PASSWORD).await;
    let set_role = |role: &str| {
        call(
            accounts::SET_ROLE.name,
            json!({"user_id": target.clone(), "role": role, "actor_user_id": admin.clone(), "ip": IP}),
        )
    };

    let promoted = ok(app.call(&set_role("admin")).await).await;
    let row = promoted.first().expect("user row");
    assert_eq!(
        (&row["role"], &row["previous_role"]),
        (&json!("admin"), &json!("user"))
    );
    assert!(!row.contains_key("password_hash"));
    ok(app.call(&set_role("admin")).await).await;
    ok(app.call(&set_role("user")).await).await;

    let changes: Vec<_> = audit_rows(&app)
        .await
        .into_iter()
        .filter(|row| row.0 == "role_change")
        .collect();
    assert_eq!(changes.len(), 2, "the no-op change is not an event");
    assert_eq!(changes[0].1.as_deref(), Some(target.as_str()));
    assert_eq!(changes[0].2.as_deref(), Some(IP));
    assert_eq!(
        changes[0].3,
        json!({"actor_user_id": admin, "from": "user", "to": "admin"})
    );
    assert_eq!(changes[1].3["to"], json!("user"));

    refused(
        app.call(&set_role("root")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        codes::CONSTRAINT_VIOLATION,
    )
    .await;
    refused(
        app.call(&call(
            accounts::SET_ROLE.name,
            json!({"user_id": "usr_nobody", "role": "admin", "actor_user_id": admin}),
        ))
        .await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;
}

#[tokio::test]
async fn audit_events_need_a_well_formed_type_and_an_object() {
    let app = spawn_app().await;
    let id = register(&app, "ada@example.com", PASSWORD).await;

    let result = ok(app
        .call(&call(
            accounts::AUDIT.name,
            json!({"event_type": "logout", "user_id": id, "details": {"k": 1}}),
        ))
        .await)
    .await;
    assert!(
        result.first().unwrap()["id"].is_string(),
        "bigserial as string"
    );

    for params in [
        json!({"event_type": "Not An Event"}),
        json!({"event_type": "logout", "details": [1, 2]}),
    ] {
        refused(
            app.call(&call(accounts::AUDIT.name, params)).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::CONSTRAINT_VIOLATION,
        )
        .await;
    }
}

#[tokio::test]
async fn no_accounts_operation_can_return_a_password_hash() {
    let app = spawn_app().await;
    let client = app.database.client().await;
    for op in db_gateway::ops::accounts::OPS {
        let statement = client.prepare(op.sql).await.expect("prepares");
        assert!(
            statement
                .columns()
                .iter()
                .all(|column| column.name() != "password_hash"),
            "{} returns password_hash",
            op.name()
        );
    }
}
