//! Accounts and sessions end to end: the Worker (workerd) → signed gateway calls → Postgres.
//!
//! Covers the whole session life (register → login → me → logout → refused), every kind of
//! forged token against real routes, legacy bcrypt users and their upgrade to Argon2id, login
//! failures that all look alike, brute-force limits reached and lifted, admin role changes, and
//! validation errors with field codes.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use callmeback_auth::{Keyring, Role, SessionClaims, TOKEN_TTL_SECS};
use callmeback_e2e::{Stack, field_code, unix_now};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Sha256, Sha512};

const PASSWORD: &str = "correct horse battery staple";

/// A finished request: status, `Retry-After` if any, and the parsed body (`Null` when empty).
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

/// Sends a request to the Worker. `authorization` is the raw header value, so tests can send
/// malformed ones; `ip` sets `CF-Connecting-IP`.
async fn send(
    stack: &Stack,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Option<Value>,
    ip: Option<&str>,
) -> Answer {
    let mut request = stack
        .http
        .request(method.clone(), format!("{}{path}", stack.worker_url));
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    if let Some(ip) = ip {
        request = request.header("cf-connecting-ip", ip);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request reaches the Worker");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    let text = response.text().await.expect("body readable");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| {
            panic!(
                "{method} {path} answered {status} with non-JSON: {text}\nworker log:\n{}",
                stack.worker_log()
            )
        })
    };
    Answer {
        status,
        retry_after,
        body,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn me(stack: &Stack, token: &str) -> Answer {
    send(
        stack,
        Method::GET,
        "/api/auth/me",
        Some(&bearer(token)),
        None,
        None,
    )
    .await
}

async fn register_as(stack: &Stack, body: Value, ip: Option<&str>) -> Answer {
    send(
        stack,
        Method::POST,
        "/api/auth/register",
        None,
        Some(body),
        ip,
    )
    .await
}

async fn login_from(stack: &Stack, email: &str, password: &str, ip: Option<&str>) -> Answer {
    send(
        stack,
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"email": email, "password": password})),
        ip,
    )
    .await
}

async fn login(stack: &Stack, email: &str) -> String {
    let answer = login_from(stack, email, PASSWORD, None).await;
    assert_eq!(answer.status, 200, "login: {}", answer.body);
    answer.body["token"].as_str().expect("token").to_owned()
}

/// `(event_type, user_id, ip, details as text)`, oldest first.
async fn audit_rows(stack: &Stack) -> Vec<(String, Option<String>, Option<String>, String)> {
    stack
        .db()
        .await
        .query(
            "SELECT event_type, user_id, ip, details::text FROM audit_log ORDER BY id",
            &[],
        )
        .await
        .expect("audit_log readable")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect()
}

async fn stored_hash(stack: &Stack, user_id: &str) -> String {
    stack
        .db()
        .await
        .query_one("SELECT password_hash FROM users WHERE id = $1", &[&user_id])
        .await
        .expect("user exists")
        .get(0)
}

// ---------------------------------------------------------------------------------------------
// Token forging
// ---------------------------------------------------------------------------------------------

/// The Worker's signing key id and secret, from the harness's `JWT_SIGNING_KEYS`.
fn signing_key(stack: &Stack) -> (String, Vec<u8>) {
    let first = stack.jwt_keys.split(',').next().expect("one key");
    let (kid, secret) = first.split_once(':').expect("kid:secret");
    (
        kid.to_owned(),
        STANDARD.decode(secret).expect("base64 secret"),
    )
}

fn b64(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(json.to_string())
}

fn hs256(key: &[u8], signing_input: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(signing_input.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

fn hs512(key: &[u8], signing_input: &str) -> String {
    let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("any key length");
    mac.update(signing_input.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// `header.payload.signature` with an HS256 signature by `key`.
fn mint(header: &Value, payload: &Value, key: &[u8]) -> String {
    let signing_input = format!("{}.{}", b64(header), b64(payload));
    let signature = hs256(key, &signing_input);
    format!("{signing_input}.{signature}")
}

fn decode_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn register_login_me_logout_then_the_token_is_refused() {
    let stack = Stack::start().await;

    let registered = register_as(
        &stack,
        json!({"email": "Ada@Example.com", "password": PASSWORD, "name": "Ada", "phone": "+1 555 123 4567"}),
        None,
    )
    .await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    let body = &registered.body;
    assert_eq!(body["token_type"], "Bearer");
    assert!(
        body["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let user = &body["user"];
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["name"], "Ada");
    assert_eq!(user["phone"], "+15551234567");
    assert_eq!(user["role"], "user");
    assert!(!body.to_string().contains("password"), "{body}");
    let user_id = user["id"].as_str().expect("id").to_owned();
    let register_token = body["token"].as_str().expect("token").to_owned();
    let claims = decode_part(&register_token, 1);
    assert_eq!(claims["sub"], json!(user_id));
    assert_eq!(claims["role"], "user");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        TOKEN_TTL_SECS
    );
    assert_eq!(decode_part(&register_token, 0)["alg"], "HS256");

    // The account exists with a hash made in the gateway, a free-tier credits row and a budget.
    assert!(
        stored_hash(&stack, &user_id)
            .await
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
    );
    let client = stack.db().await;
    let tier: String = client
        .query_one(
            "SELECT subscription_tier FROM user_credits WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .expect("credits row")
        .get(0);
    assert_eq!(tier, "free");
    client
        .query_one(
            "SELECT 1 FROM user_budget_settings WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .expect("budget row");

    let profile = me(&stack, &register_token).await;
    assert_eq!(profile.status, 200, "{}", profile.body);
    assert_eq!(profile.body["user"]["id"], json!(user_id));
    assert_eq!(profile.body["credits"]["subscription_tier"], "free");
    assert_eq!(profile.body["credits"]["available_credits"], 0);

    let login_token = login(&stack, "  ADA@example.com ").await;
    assert_ne!(login_token, register_token);
    let profile = me(&stack, &login_token).await;
    assert_eq!(profile.status, 200);
    assert!(profile.body["user"]["last_login_at"].is_string());

    let logout = send(
        &stack,
        Method::POST,
        "/api/auth/logout",
        Some(&bearer(&login_token)),
        None,
        None,
    )
    .await;
    assert_eq!(logout.status, 204, "{}", logout.body);
    assert_eq!(logout.body, Value::Null);

    // Refused on the very next request, with the same body as no token at all.
    let refused = me(&stack, &login_token).await;
    assert_eq!(refused.status, 401);
    let anonymous = send(&stack, Method::GET, "/api/auth/me", None, None, None).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(refused.body, anonymous.body);
    let again = send(
        &stack,
        Method::POST,
        "/api/auth/logout",
        Some(&bearer(&login_token)),
        None,
        None,
    )
    .await;
    assert_eq!(again.status, 401);
    // Only that session ended.
    assert_eq!(me(&stack, &register_token).await.status, 200);

    let revoked: i64 = client
        .query_one(
            "SELECT count(*) FROM token_blacklist WHERE token_id = $1 AND user_id = $2",
            &[
                &decode_part(&login_token, 1)["jti"].as_str().unwrap(),
                &user_id,
            ],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(revoked, 1);
    let events: Vec<String> = audit_rows(&stack)
        .await
        .into_iter()
        .map(|(event, user, _, details)| {
            assert_eq!(user.as_deref(), Some(user_id.as_str()));
            assert!(!details.contains("ada@") && !details.contains(PASSWORD));
            event
        })
        .collect();
    assert_eq!(events, ["register", "login_success", "logout"]);
}

#[tokio::test]
async fn every_forged_token_gets_the_same_401() {
    let stack = Stack::start().await;
    let (token, _) = stack.register("ada@example.com").await;
    let (kid, key) = signing_key(&stack);
    let header = decode_part(&token, 0);
    let claims = decode_part(&token, 1);
    let signing_input = token.rsplit_once('.').expect("three parts").0;

    // Our minting is right: a hand-made token with the real key and kid is accepted, so every
    // refusal below is for the reason its case names.
    let genuine = mint(&header, &claims, &key);
    assert_eq!(me(&stack, &genuine).await.status, 200);

    let expired = {
        let keyring = Keyring::parse(&stack.jwt_keys).expect("the harness's keyring");
        let claims = SessionClaims {
            jti: "jti_expired".to_owned(),
            sub: claims["sub"].as_str().unwrap().to_owned(),
            email: "ada@example.com".to_owned(),
            role: Role::User,
        };
        keyring.issue(&claims, unix_now() - TOKEN_TTL_SECS - 3600)
    };
    let mut admin_claims = claims.clone();
    admin_claims["role"] = json!("admin");
    let mut long_lived = claims.clone();
    long_lived["exp"] = json!(claims["iat"].as_i64().unwrap() + 10 * TOKEN_TTL_SECS);
    let without = |name: &str| {
        let mut header = header.clone();
        header.as_object_mut().unwrap().remove(name);
        header
    };
    let with_alg = |alg: &str| {
        let mut header = header.clone();
        header["alg"] = json!(alg);
        header
    };
    let with_kid = |kid: &str| {
        let mut header = header.clone();
        header["kid"] = json!(kid);
        header
    };
    let mut random_key = key.clone();
    random_key.reverse();

    let cases: Vec<(&str, Option<String>)> = vec![
        ("no authorization header", None),
        ("no Bearer scheme", Some(token.clone())),
        ("Basic scheme", Some(format!("Basic {token}"))),
        ("empty bearer", Some("Bearer ".to_owned())),
        ("garbage", Some(bearer("not-a-token"))),
        (
            "alg none without signature",
            Some(bearer(&format!(
                "{}.{}.",
                b64(&with_alg("none")),
                b64(&claims)
            ))),
        ),
        (
            "alg none with the real signature",
            Some(bearer(&format!(
                "{}.{}.{}",
                b64(&with_alg("none")),
                b64(&claims),
                token.rsplit('.').next().unwrap()
            ))),
        ),
        ("HS512 with the real key", {
            let input = format!("{}.{}", b64(&with_alg("HS512")), b64(&claims));
            Some(bearer(&format!("{input}.{}", hs512(&key, &input))))
        }),
        (
            "RS256 header, HMAC signature (key confusion)",
            Some(bearer(&mint(&with_alg("RS256"), &claims, &key))),
        ),
        (
            "wrong key",
            Some(bearer(&mint(&header, &claims, &random_key))),
        ),
        (
            "unknown kid",
            Some(bearer(&mint(&with_kid("retired-key"), &claims, &key))),
        ),
        (
            "missing kid",
            Some(bearer(&mint(&without("kid"), &claims, &key))),
        ),
        ("expired but validly signed", Some(bearer(&expired))),
        (
            "lifetime longer than the TTL",
            Some(bearer(&mint(&header, &long_lived, &key))),
        ),
        (
            "tampered payload (role admin), original signature",
            Some(bearer(&format!(
                "{}.{}.{}",
                b64(&header),
                b64(&admin_claims),
                token.rsplit('.').next().unwrap()
            ))),
        ),
        (
            "signature of another token",
            Some(bearer(&format!(
                "{signing_input}.{}",
                hs256(&random_key, signing_input)
            ))),
        ),
        ("two parts", Some(bearer(signing_input))),
        ("four parts", Some(bearer(&format!("{token}.{kid}")))),
        (
            "not base64url",
            Some(bearer(&format!("{signing_input}.***"))),
        ),
        (
            "header not JSON",
            Some(bearer(&format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode("not json"),
                b64(&claims),
                hs256(&key, "x")
            ))),
        ),
        ("oversized", Some(bearer(&"a".repeat(9000)))),
    ];

    let reference = send(&stack, Method::GET, "/api/auth/me", None, None, None).await;
    assert_eq!(reference.status, 401);
    assert_eq!(reference.body["error"]["code"], "unauthorized");
    for (case, authorization) in &cases {
        for (method, path) in [
            (Method::GET, "/api/auth/me"),
            (Method::POST, "/api/auth/logout"),
            (Method::PUT, "/api/admin/users/usr_x/role"),
        ] {
            let answer = send(
                &stack,
                method.clone(),
                path,
                authorization.as_deref(),
                Some(json!({"role": "admin"})),
                None,
            )
            .await;
            assert_eq!(
                (answer.status, &answer.body),
                (401, &reference.body),
                "{case} on {method} {path}"
            );
        }
    }
    // The session the forgeries started from still works.
    assert_eq!(me(&stack, &token).await.status, 200);
}

#[tokio::test]
async fn a_legacy_bcrypt_user_logs_in_and_is_upgraded_to_argon2id() {
    let stack = Stack::start().await;
    let client = stack.db().await;
    let user_id = "usr_legacy0000000000000000001";
    // The replaced system's hashes: bcrypt, 12 rounds.
    let legacy_hash = bcrypt::hash(PASSWORD, 12).expect("bcrypt hash");
    assert!(legacy_hash.starts_with("$2b$12$"));
    client
        .execute(
            "INSERT INTO users (id, email, password_hash, name) VALUES ($1, 'old@example.com', $2, 'Old Timer')",
            &[&user_id, &legacy_hash],
        )
        .await
        .expect("legacy user");

    let wrong = login_from(&stack, "old@example.com", "not the password", None).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(stored_hash(&stack, user_id).await, legacy_hash);

    let token = login(&stack, "old@example.com").await;
    let upgraded = stored_hash(&stack, user_id).await;
    assert!(
        upgraded.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{upgraded}"
    );
    let profile = me(&stack, &token).await;
    assert_eq!(profile.status, 200);
    assert_eq!(profile.body["user"]["name"], "Old Timer");

    // The same password keeps working against the new hash, which is not replaced again.
    login(&stack, "old@example.com").await;
    assert_eq!(stored_hash(&stack, user_id).await, upgraded);
    let events: Vec<(String, String)> = audit_rows(&stack)
        .await
        .into_iter()
        .map(|(event, _, _, details)| (event, details))
        .collect();
    // The upgrade and its login are one statement, so their relative order is not defined.
    let mut kinds: Vec<&str> = events.iter().map(|(event, _)| event.as_str()).collect();
    kinds[1..3].sort_unstable();
    assert_eq!(
        kinds,
        [
            "login_failure",
            "login_success",
            "password_upgrade",
            "login_success"
        ]
    );
    let upgrade = events
        .iter()
        .find(|(event, _)| event == "password_upgrade")
        .map(|(_, details)| serde_json::from_str::<Value>(details).unwrap());
    assert_eq!(upgrade, Some(json!({"from": "bcrypt", "to": "argon2id"})));
}

#[tokio::test]
async fn wrong_password_and_unknown_email_are_indistinguishable() {
    let stack = Stack::start().await;
    let (_, user_id) = stack.register("ada@example.com").await;
    stack.db()
        .await
        .execute(
            "INSERT INTO users (id, email, password_hash, is_active) VALUES ('usr_gone', 'gone@example.com', $1, false)",
            &[&stored_hash(&stack, &user_id).await],
        )
        .await
        .expect("deactivated user");

    let mut answers = Vec::new();
    for (email, password) in [
        ("ada@example.com", "wrong password!"),
        ("nobody@example.com", PASSWORD),
        ("not an email", PASSWORD),
        ("gone@example.com", PASSWORD),
    ] {
        let answer = login_from(&stack, email, password, None).await;
        answers.push((email, answer.status, answer.body));
    }
    for (email, status, body) in &answers {
        assert_eq!(
            (*status, body),
            (401, &answers[0].2),
            "{email} answered differently"
        );
    }
    assert_eq!(answers[0].2["error"]["code"], "invalid_credentials");
    let failures: Vec<(Option<String>, String)> = audit_rows(&stack)
        .await
        .into_iter()
        .filter(|(event, ..)| event == "login_failure")
        .map(|(_, user, _, details)| (user, details))
        .collect();
    assert_eq!(failures.len(), 4);
    assert_eq!(failures[0].0.as_deref(), Some(user_id.as_str()));
    assert_eq!(failures[1].0, None, "no account, no email stored");
    assert!(failures.iter().all(|(_, details)| !details.contains('@')));
}

#[tokio::test]
async fn brute_force_is_limited_then_lifts_after_the_window() {
    // A short window so the lock can be seen lifting; the limit itself is production's (10).
    let stack = Stack::start_with_vars(&[("LOGIN_FAILURE_WINDOW_SECS", "12")]).await;
    stack.register("ada@example.com").await;

    for attempt in 1..=10 {
        let answer = login_from(&stack, "ada@example.com", "wrong password!", None).await;
        assert_eq!(answer.status, 401, "attempt {attempt}: {}", answer.body);
    }
    let blocked = login_from(&stack, "ada@example.com", PASSWORD, None).await;
    assert_eq!(
        blocked.status, 429,
        "the right password is refused too: {}",
        blocked.body
    );
    assert_eq!(blocked.body["error"]["code"], "too_many_attempts");
    let wait = blocked.retry_after.expect("Retry-After");
    assert!((1..=12).contains(&wait), "Retry-After {wait}");

    tokio::time::sleep(Duration::from_secs(wait + 1)).await;
    let recovered = login_from(&stack, "ada@example.com", PASSWORD, None).await;
    assert_eq!(recovered.status, 200, "{}", recovered.body);
}

#[tokio::test]
async fn limits_are_per_account_and_per_ip_and_a_success_gives_back_only_its_own_slot() {
    let stack = Stack::start().await;
    stack.register("ada@example.com").await;
    stack.register("bob@example.com").await;

    // Per account: failures from ten addresses lock Ada's account from an eleventh.
    for attempt in 1..=10 {
        let ip = format!("198.51.100.{attempt}");
        let answer = login_from(&stack, "ada@example.com", "wrong password!", Some(&ip)).await;
        assert_eq!(answer.status, 401, "attempt {attempt}");
    }
    let locked = login_from(&stack, "ada@example.com", PASSWORD, Some("198.51.100.99")).await;
    assert_eq!(locked.status, 429, "{}", locked.body);
    assert!(locked.retry_after.is_some());
    // ...but not Bob's, from any of those addresses.
    assert_eq!(
        login_from(&stack, "bob@example.com", PASSWORD, Some("198.51.100.1"))
            .await
            .status,
        200
    );

    // Per IP: one address failing against many accounts (unknown ones included) is locked out,
    // even for an account it has never tried; other addresses are not.
    for attempt in 1..=10 {
        let email = format!("guess{attempt}@example.com");
        let answer = login_from(&stack, &email, "whatever it is", Some("203.0.113.5")).await;
        assert_eq!(answer.status, 401, "attempt {attempt}");
    }
    let by_ip = login_from(&stack, "bob@example.com", PASSWORD, Some("203.0.113.5")).await;
    assert_eq!(by_ip.status, 429, "{}", by_ip.body);
    assert_eq!(
        login_from(&stack, "bob@example.com", PASSWORD, Some("203.0.113.6"))
            .await
            .status,
        200
    );

    // Without a device token, a success gives back its own slot but not the failures others
    // made (it used to reset them, handing an attacker a fresh budget whenever the owner signed
    // in): 9 failures, a success, one more failure, and the account's untrusted budget is spent.
    // A device that signed in before keeps a budget of its own (see the device-token test).
    for attempt in 1..=9 {
        let ip = format!("192.0.2.{attempt}");
        let answer = login_from(&stack, "bob@example.com", "wrong password!", Some(&ip)).await;
        assert_eq!(answer.status, 401, "attempt {attempt}");
    }
    let answer = login_from(&stack, "bob@example.com", PASSWORD, Some("192.0.2.200")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = login_from(
        &stack,
        "bob@example.com",
        "wrong password!",
        Some("192.0.2.10"),
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    let answer = login_from(&stack, "bob@example.com", PASSWORD, Some("192.0.2.201")).await;
    assert_eq!(answer.status, 429, "{}", answer.body);
}

#[tokio::test]
async fn admins_change_roles_and_nobody_else_can() {
    let stack = Stack::start().await;
    let (_, admin_id) = stack.register("root@example.com").await;
    let (bob_user_token, bob_id) = stack.register("bob@example.com").await;
    let (carol_token, carol_id) = stack.register("carol@example.com").await;
    stack
        .db()
        .await
        .execute(
            "UPDATE users SET role = 'admin' WHERE id = $1",
            &[&admin_id],
        )
        .await
        .expect("promote the first admin");
    let admin_token = login(&stack, "root@example.com").await;
    let set_role = |token: String, user_id: String, body: Value| {
        let stack = &stack;
        async move {
            send(
                stack,
                Method::PUT,
                &format!("/api/admin/users/{user_id}/role"),
                Some(&bearer(&token)),
                Some(body),
                None,
            )
            .await
        }
    };

    let denied = set_role(
        carol_token.clone(),
        bob_id.clone(),
        json!({"role": "admin"}),
    )
    .await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert_eq!(denied.body["error"]["code"], "forbidden");

    let promoted = set_role(
        admin_token.clone(),
        bob_id.clone(),
        json!({"role": "admin"}),
    )
    .await;
    assert_eq!(promoted.status, 200, "{}", promoted.body);
    assert_eq!(promoted.body["user"]["id"], json!(bob_id));
    assert_eq!(promoted.body["user"]["role"], "admin");
    // Bob's old token claims "user": he signs in again for an admin session.
    assert_eq!(
        set_role(bob_user_token, carol_id.clone(), json!({"role": "user"}))
            .await
            .status,
        403
    );
    let bob_admin_token = login(&stack, "bob@example.com").await;
    assert_eq!(
        set_role(
            bob_admin_token.clone(),
            carol_id.clone(),
            json!({"role": "user"})
        )
        .await
        .status,
        200
    );

    // Demoted in the database, Bob's admin token stops working at once.
    let demoted = set_role(admin_token.clone(), bob_id.clone(), json!({"role": "user"})).await;
    assert_eq!(demoted.status, 200);
    let stale = set_role(bob_admin_token, carol_id.clone(), json!({"role": "admin"})).await;
    assert_eq!(stale.status, 403, "{}", stale.body);

    let own = set_role(
        admin_token.clone(),
        admin_id.clone(),
        json!({"role": "user"}),
    )
    .await;
    assert_eq!(
        (own.status, own.body["error"]["code"].as_str()),
        (409, Some("cannot_change_own_role"))
    );
    let invalid = set_role(admin_token.clone(), bob_id.clone(), json!({"role": "root"})).await;
    assert_eq!(invalid.status, 400);
    assert_eq!(field_code(&invalid.body, "role"), "invalid_choice");
    let missing = set_role(admin_token.clone(), bob_id.clone(), json!({})).await;
    assert_eq!(field_code(&missing.body, "role"), "required");
    let unknown = set_role(
        admin_token.clone(),
        "usr_nobody".to_owned(),
        json!({"role": "admin"}),
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.body["error"]["code"].as_str()),
        (404, Some("user_not_found"))
    );

    let changes: Vec<(Option<String>, Value)> = audit_rows(&stack)
        .await
        .into_iter()
        .filter(|(event, ..)| event == "role_change")
        .map(|(_, user, _, details)| (user, serde_json::from_str(&details).unwrap()))
        .collect();
    // Carol's change from "user" to "user" changed nothing and is not an event.
    assert_eq!(
        changes,
        [
            (
                Some(bob_id.clone()),
                json!({"actor_user_id": admin_id, "from": "user", "to": "admin"})
            ),
            (
                Some(bob_id.clone()),
                json!({"actor_user_id": admin_id, "from": "admin", "to": "user"})
            ),
        ]
    );
    let anonymous = send(
        &stack,
        Method::PUT,
        &format!("/api/admin/users/{bob_id}/role"),
        None,
        Some(json!({"role": "admin"})),
        None,
    )
    .await;
    assert_eq!(anonymous.status, 401);
}

#[tokio::test]
async fn registration_validates_every_field_and_hides_why_it_failed() {
    let stack = Stack::start().await;

    let invalid = register_as(
        &stack,
        json!({"email": "not-an-email", "password": "s3cr3t!", "name": "x".repeat(101), "phone": "555-1234"}),
        None,
    )
    .await;
    assert_eq!(invalid.status, 400, "{}", invalid.body);
    assert_eq!(invalid.body["error"]["code"], "validation_failed");
    assert_eq!(field_code(&invalid.body, "email"), "invalid_email");
    assert_eq!(field_code(&invalid.body, "password"), "password_too_short");
    assert_eq!(field_code(&invalid.body, "name"), "too_long");
    assert_eq!(field_code(&invalid.body, "phone"), "invalid_phone");
    let echoed = invalid.body.to_string();
    assert!(
        !echoed.contains("s3cr3t") && !echoed.contains("555-1234"),
        "no values echoed: {echoed}"
    );

    let missing = register_as(&stack, json!({}), None).await;
    assert_eq!(field_code(&missing.body, "email"), "required");
    assert_eq!(field_code(&missing.body, "password"), "required");
    let too_long = register_as(
        &stack,
        json!({"email": "a@example.com", "password": "p".repeat(129)}),
        None,
    )
    .await;
    assert_eq!(field_code(&too_long.body, "password"), "password_too_long");
    let unknown_field = register_as(
        &stack,
        json!({"email": "a@example.com", "password": PASSWORD, "role": "admin"}),
        None,
    )
    .await;
    assert_eq!(
        (
            unknown_field.status,
            unknown_field.body["error"]["code"].as_str()
        ),
        (400, Some("invalid_body"))
    );
    let login_missing = send(
        &stack,
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"email": "a@example.com"})),
        None,
    )
    .await;
    assert_eq!(login_missing.status, 400);
    assert_eq!(field_code(&login_missing.body, "password"), "required");
    let not_json = stack
        .http
        .post(format!("{}/api/auth/register", stack.worker_url))
        .body("email=a@example.com")
        .send()
        .await
        .expect("request reaches the Worker");
    assert_eq!(not_json.status().as_u16(), 415);

    // A taken email (in any case) is refused without saying so, and creates nothing.
    let (_, first_id) = stack.register("ada@example.com").await;
    let duplicate = register_as(
        &stack,
        json!({"email": "ADA@example.com", "password": "a different password"}),
        None,
    )
    .await;
    assert_eq!(duplicate.status, 409, "{}", duplicate.body);
    assert_eq!(duplicate.body["error"]["code"], "registration_failed");
    let message = duplicate.body["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("exist") && !message.contains("taken"),
        "{message}"
    );
    let users: i64 = stack
        .db()
        .await
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(users, 1);
    assert!(
        stored_hash(&stack, &first_id)
            .await
            .starts_with("$argon2id$")
    );
    login(&stack, "ada@example.com").await;
}

#[tokio::test]
async fn registrations_are_limited_per_ip() {
    let stack = Stack::start().await;
    let ip = Some("198.51.100.77");
    // 20 per hour per address, duplicates (probing for accounts) included.
    stack.register("first@example.com").await;
    for attempt in 1..=20 {
        let body = if attempt % 2 == 0 {
            json!({"email": format!("user{attempt}@example.com"), "password": PASSWORD})
        } else {
            json!({"email": "first@example.com", "password": PASSWORD})
        };
        let answer = register_as(&stack, body, ip).await;
        let expected = if attempt % 2 == 0 { 201 } else { 409 };
        assert_eq!(
            answer.status, expected,
            "attempt {attempt}: {}",
            answer.body
        );
    }
    let limited = register_as(
        &stack,
        json!({"email": "late@example.com", "password": PASSWORD}),
        ip,
    )
    .await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(limited.body["error"]["code"], "too_many_attempts");
    assert!(limited.retry_after.is_some_and(|secs| secs > 0));
    let elsewhere = register_as(
        &stack,
        json!({"email": "late@example.com", "password": PASSWORD}),
        Some("198.51.100.78"),
    )
    .await;
    assert_eq!(elsewhere.status, 201, "{}", elsewhere.body);
}

// ---------------------------------------------------------------------------------------------
// Limits under concurrency, device tokens, IPv6 networks
// ---------------------------------------------------------------------------------------------

/// A login with an optional `X-Device-Token`.
async fn login_with_device(
    stack: &Stack,
    email: &str,
    password: &str,
    ip: &str,
    device_token: Option<&str>,
) -> Answer {
    let mut request = stack
        .http
        .post(format!("{}/api/auth/login", stack.worker_url))
        .header("cf-connecting-ip", ip)
        .json(&json!({"email": email, "password": password}));
    if let Some(token) = device_token {
        request = request.header("x-device-token", token);
    }
    let response = request.send().await.expect("request reaches the Worker");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        body,
    }
}

async fn count_audit(stack: &Stack, event: &str) -> i64 {
    stack
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM audit_log WHERE event_type = $1",
            &[&event],
        )
        .await
        .expect("audit_log readable")
        .get(0)
}

#[tokio::test]
async fn thirty_concurrent_wrong_passwords_reach_the_password_check_exactly_ten_times() {
    let stack = Stack::start().await;
    stack.register("ada@example.com").await;

    let attempts = (0..30).map(|_| {
        login_with_device(
            &stack,
            "ada@example.com",
            "wrong password!",
            "198.51.100.30",
            None,
        )
    });
    let answers = futures_util::future::join_all(attempts).await;
    let mut statuses: Vec<u16> = answers.iter().map(|answer| answer.status).collect();
    statuses.sort_unstable();
    let expected: Vec<u16> = [vec![401; 10], vec![429; 20]].concat();
    assert_eq!(
        statuses,
        expected,
        "{:?}",
        answers.iter().map(|a| &a.body).collect::<Vec<_>>()
    );
    // The gateway checked the password exactly ten times: one audit row per check.
    assert_eq!(count_audit(&stack, "login_failure").await, 10);
    // The right password is refused too now (this address and this account are spent)...
    let blocked =
        login_with_device(&stack, "ada@example.com", PASSWORD, "198.51.100.31", None).await;
    assert_eq!(blocked.status, 429, "{}", blocked.body);
    assert_eq!(count_audit(&stack, "login_failure").await, 10);
}

#[tokio::test]
async fn twenty_four_concurrent_registrations_from_one_ipv6_64_create_twenty() {
    let stack = Stack::start().await;
    // Every request from another interface id of the same /64: one subscriber, one budget.
    let stack = &stack;
    let attempts = (0..24u32).map(|index| {
        let ip = format!("2001:db8:42:7:{:x}::{:x}", index + 1, index * 7 + 3);
        async move {
            send(
                stack,
                Method::POST,
                "/api/auth/register",
                None,
                Some(json!({"email": format!("burst{index}@example.com"), "password": PASSWORD})),
                Some(&ip),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(attempts).await;
    let created = answers.iter().filter(|answer| answer.status == 201).count();
    let limited = answers.iter().filter(|answer| answer.status == 429).count();
    assert_eq!(
        (created, limited),
        (20, 4),
        "{:?}",
        answers.iter().map(|a| &a.body).collect::<Vec<_>>()
    );
    let users: i64 = stack
        .db()
        .await
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(users, 20);
    // Another /64 of the same /48 is another subscriber.
    let elsewhere = send(
        stack,
        Method::POST,
        "/api/auth/register",
        None,
        Some(json!({"email": "late@example.com", "password": PASSWORD})),
        Some("2001:db8:42:8::1"),
    )
    .await;
    assert_eq!(elsewhere.status, 201, "{}", elsewhere.body);
}

#[tokio::test]
async fn login_failures_are_counted_per_ipv6_64_and_mapped_ipv4_is_ipv4() {
    let stack = Stack::start().await;
    stack.register("ada@example.com").await;

    // Ten failures from ten addresses of one /64 (against unknown accounts, so no account limit).
    for index in 1..=10 {
        let ip = format!("2001:db8:abcd:12:{index:x}::1");
        let answer = login_with_device(
            &stack,
            &format!("guess{index}@example.com"),
            "whatever it is",
            &ip,
            None,
        )
        .await;
        assert_eq!(answer.status, 401, "attempt {index}: {}", answer.body);
    }
    // An eleventh address of that /64, spelled differently, is the same client.
    for ip in [
        "2001:DB8:ABCD:12:ffff:ffff:ffff:fffe",
        "[2001:db8:abcd:12::9]",
    ] {
        let answer = login_with_device(&stack, "ada@example.com", PASSWORD, ip, None).await;
        assert_eq!(answer.status, 429, "{ip}: {}", answer.body);
    }
    // The next /64 is not.
    let next = login_with_device(
        &stack,
        "ada@example.com",
        PASSWORD,
        "2001:db8:abcd:13::1",
        None,
    )
    .await;
    assert_eq!(next.status, 200, "{}", next.body);

    // An IPv4 address and its IPv6-mapped form share one budget.
    for index in 1..=10 {
        let ip = if index % 2 == 0 {
            "203.0.113.77"
        } else {
            "::ffff:203.0.113.77"
        };
        let answer = login_with_device(
            &stack,
            &format!("v4guess{index}@example.com"),
            "whatever it is",
            ip,
            None,
        )
        .await;
        assert_eq!(answer.status, 401, "attempt {index}");
    }
    let mapped = login_with_device(&stack, "ada@example.com", PASSWORD, "203.0.113.77", None).await;
    assert_eq!(mapped.status, 429, "{}", mapped.body);
}

#[tokio::test]
async fn a_stranger_cannot_lock_the_owner_out_of_a_device_that_signed_in_before() {
    let stack = Stack::start().await;
    let registered = register_as(
        &stack,
        json!({"email": "ada@example.com", "password": PASSWORD}),
        Some("192.0.2.10"),
    )
    .await;
    assert_eq!(registered.status, 201);
    let phone = registered.body["device_token"]
        .as_str()
        .expect("register answers a device token")
        .to_owned();
    let laptop_login =
        login_with_device(&stack, "ada@example.com", PASSWORD, "192.0.2.11", None).await;
    assert_eq!(laptop_login.status, 200, "{}", laptop_login.body);
    let laptop = laptop_login.body["device_token"]
        .as_str()
        .expect("login answers a device token")
        .to_owned();
    assert_ne!(phone, laptop);
    let (_, bob_body) = {
        let answer = register_as(
            &stack,
            json!({"email": "bob@example.com", "password": PASSWORD}),
            Some("192.0.2.12"),
        )
        .await;
        (answer.status, answer.body)
    };
    let bobs_device = bob_body["device_token"].as_str().unwrap().to_owned();

    // A stranger spends the account's untrusted budget from ten addresses.
    for index in 1..=10 {
        let ip = format!("198.51.100.{index}");
        let answer =
            login_with_device(&stack, "ada@example.com", "wrong password!", &ip, None).await;
        assert_eq!(answer.status, 401, "attempt {index}");
    }
    // Untrusted devices are locked out, the owner's right password included; so is a device
    // presenting another account's token, or a forged one.
    for token in [
        None,
        Some(bobs_device.as_str()),
        Some("dt1.e2e-1.Zm9v.YmFy"),
        Some("garbage"),
    ] {
        let answer =
            login_with_device(&stack, "ada@example.com", PASSWORD, "192.0.2.50", token).await;
        assert_eq!(answer.status, 429, "{token:?}: {}", answer.body);
    }
    // The owner's phone is not: its own budget is untouched.
    let from_phone = login_with_device(
        &stack,
        "ada@example.com",
        PASSWORD,
        "192.0.2.50",
        Some(&phone),
    )
    .await;
    assert_eq!(from_phone.status, 200, "{}", from_phone.body);
    let renewed = from_phone.body["device_token"]
        .as_str()
        .expect("renewed")
        .to_owned();
    // The renewed token names the same device: it still works after the old one is dropped.
    assert_eq!(
        login_with_device(
            &stack,
            "ada@example.com",
            PASSWORD,
            "192.0.2.50",
            Some(&renewed)
        )
        .await
        .status,
        200
    );

    // A device's own failures lock that device only: the laptop spends its budget...
    for attempt in 1..=10 {
        let answer = login_with_device(
            &stack,
            "ada@example.com",
            "wrong again!",
            "192.0.2.51",
            Some(&laptop),
        )
        .await;
        assert_eq!(
            answer.status, 401,
            "laptop attempt {attempt}: {}",
            answer.body
        );
    }
    let laptop_locked = login_with_device(
        &stack,
        "ada@example.com",
        PASSWORD,
        "192.0.2.51",
        Some(&laptop),
    )
    .await;
    assert_eq!(laptop_locked.status, 429, "{}", laptop_locked.body);
    assert!(laptop_locked.retry_after.is_some());
    // ...and the phone still signs in, from the very same address.
    let phone_again = login_with_device(
        &stack,
        "ada@example.com",
        PASSWORD,
        "192.0.2.51",
        Some(&renewed),
    )
    .await;
    assert_eq!(phone_again.status, 200, "{}", phone_again.body);

    // On a trusted device a success forgives its own typos: 9 failures, a success, 9 more.
    for round in 0..2 {
        for attempt in 1..=9 {
            let answer = login_with_device(
                &stack,
                "ada@example.com",
                "typo typo!",
                "192.0.2.52",
                Some(&renewed),
            )
            .await;
            assert_eq!(answer.status, 401, "round {round} attempt {attempt}");
        }
        let answer = login_with_device(
            &stack,
            "ada@example.com",
            PASSWORD,
            "192.0.2.52",
            Some(&renewed),
        )
        .await;
        assert_eq!(answer.status, 200, "round {round}: {}", answer.body);
    }
    // Bob, whose account nobody attacked, is unaffected throughout.
    assert_eq!(
        login_with_device(&stack, "bob@example.com", PASSWORD, "192.0.2.53", None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_logged_out_token_stays_refused_through_the_verifiers_leeway() {
    let stack = Stack::start().await;
    let (_, user_id) = stack.register("ada@example.com").await;
    // A token that expires three seconds from now, minted with the Worker's own keys.
    let keyring = Keyring::parse(&stack.jwt_keys).expect("the harness's keyring");
    let expires_at = unix_now() + 3;
    let claims = SessionClaims {
        jti: "jti_boundary".to_owned(),
        sub: user_id,
        email: "ada@example.com".to_owned(),
        role: Role::User,
    };
    let token = keyring.issue(&claims, expires_at - TOKEN_TTL_SECS);
    assert_eq!(me(&stack, &token).await.status, 200);
    let logout = send(
        &stack,
        Method::POST,
        "/api/auth/logout",
        Some(&bearer(&token)),
        None,
        None,
    )
    .await;
    assert_eq!(logout.status, 204, "{}", logout.body);
    assert_eq!(me(&stack, &token).await.status, 401);

    // Past `exp`, but inside the 30 s the verifier still grants for clock skew: the signature
    // and times pass, so only the revocation stands between this token and the account. It used
    // to stop matching at `exp` (the row's `expires_at`), and this request answered 200.
    while unix_now() <= expires_at + 1 {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(unix_now() < expires_at + callmeback_auth::CLOCK_SKEW_LEEWAY_SECS - 5);
    let late = me(&stack, &token).await;
    assert_eq!(late.status, 401, "{}", late.body);
    let stored: i64 = stack
        .db()
        .await
        .query_one(
            "SELECT extract(epoch FROM expires_at)::int8 FROM token_blacklist WHERE token_id = 'jti_boundary'",
            &[],
        )
        .await
        .expect("revocation row")
        .get(0);
    assert_eq!(stored, expires_at + callmeback_auth::CLOCK_SKEW_LEEWAY_SECS);
}
