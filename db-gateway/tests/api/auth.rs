//! Every way a request can fail authentication or authorisation, and the ways it must not.

use callmeback_gateway_api::{BATCH_PATH, BatchRequest, OP_PATH, OpCall, codes};
use callmeback_signing::Key;
use reqwest::StatusCode;

use crate::helpers::{
    NARROW_KEY_ID, error_of, fresh_nonce, random_secret, signed_header_list, spawn_app, unix_now,
};

fn ping_body() -> Vec<u8> {
    serde_json::to_vec(&OpCall::new("system.ping")).unwrap()
}

async fn expect_401(response: reqwest::Response, code: &str) {
    let (status, body) = error_of(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "expected {code}");
    assert_eq!(body.error.code, code);
}

#[tokio::test]
async fn unknown_key_is_refused() {
    let app = spawn_app().await;
    let stranger = Key::new("stranger", random_secret());

    let response = app.post_signed(&stranger, OP_PATH, ping_body()).await;

    expect_401(response, "unknown_key").await;
}

#[tokio::test]
async fn a_known_key_id_with_the_wrong_secret_is_a_bad_signature() {
    let app = spawn_app().await;
    let impostor = Key::new(app.full_key.id(), random_secret());

    let response = app.post_signed(&impostor, OP_PATH, ping_body()).await;

    expect_401(response, "bad_signature").await;
}

#[tokio::test]
async fn each_missing_signature_header_is_refused() {
    let app = spawn_app().await;
    for missing in ["content-digest", "signature-input", "signature"] {
        let body = ping_body();
        let signed = app.sign(&app.full_key, OP_PATH, &body, unix_now(), &fresh_nonce());
        let headers: Vec<_> = signed_header_list(&signed)
            .into_iter()
            .filter(|(name, _)| *name != missing)
            .collect();

        let response = app.post_with_headers(OP_PATH, body, &headers).await;

        let (status, error) = error_of(response).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(error.error.code, "missing_header", "without {missing}");
        assert!(error.error.message.contains(missing));
    }
}

#[tokio::test]
async fn malformed_headers_are_refused() {
    let app = spawn_app().await;
    let body = ping_body();
    let signed = app.sign(&app.full_key, OP_PATH, &body, unix_now(), &fresh_nonce());
    let headers = [
        ("content-digest", signed.content_digest.as_str()),
        ("signature-input", "sig1=((( not a dictionary"),
        ("signature", signed.signature.as_str()),
    ];

    let response = app.post_with_headers(OP_PATH, body, &headers).await;

    expect_401(response, "malformed_header").await;
}

#[tokio::test]
async fn a_signature_not_covering_the_body_digest_is_refused() {
    let app = spawn_app().await;
    let body = ping_body();
    let signed = app.sign(&app.full_key, OP_PATH, &body, unix_now(), &fresh_nonce());
    let without_digest = signed.signature_input.replace(" \"content-digest\"", "");
    assert_ne!(
        without_digest, signed.signature_input,
        "the component list changed"
    );
    let headers = [
        ("content-digest", signed.content_digest.as_str()),
        ("signature-input", without_digest.as_str()),
        ("signature", signed.signature.as_str()),
    ];

    let response = app.post_with_headers(OP_PATH, body, &headers).await;

    expect_401(response, "missing_component").await;
}

#[tokio::test]
async fn a_swapped_body_is_a_digest_mismatch() {
    let app = spawn_app().await;
    let signed_body = ping_body();
    let signed = app.sign(
        &app.full_key,
        OP_PATH,
        &signed_body,
        unix_now(),
        &fresh_nonce(),
    );
    let other_body = serde_json::to_vec(&OpCall::new("system.schema_version")).unwrap();

    let response = app
        .post_with_headers(OP_PATH, other_body, &signed_header_list(&signed))
        .await;

    expect_401(response, "digest_mismatch").await;
}

#[tokio::test]
async fn signatures_too_old_or_too_far_in_the_future_are_refused() {
    let app = spawn_app().await;
    for created in [unix_now() - 301 - 5, unix_now() + 301 + 5] {
        let body = ping_body();
        let signed = app.sign(&app.full_key, OP_PATH, &body, created, &fresh_nonce());

        let response = app
            .post_with_headers(OP_PATH, body, &signed_header_list(&signed))
            .await;

        expect_401(response, "clock_skew").await;
    }
    // Inside the window in both directions is fine.
    for created in [unix_now() - 250, unix_now() + 250] {
        let body = ping_body();
        let signed = app.sign(&app.full_key, OP_PATH, &body, created, &fresh_nonce());
        let response = app
            .post_with_headers(OP_PATH, body, &signed_header_list(&signed))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_replayed_request_is_refused() {
    let app = spawn_app().await;
    let body = ping_body();
    let signed = app.sign(&app.full_key, OP_PATH, &body, unix_now(), &fresh_nonce());

    let first = app
        .post_with_headers(OP_PATH, body.clone(), &signed_header_list(&signed))
        .await;
    let replay = app
        .post_with_headers(OP_PATH, body, &signed_header_list(&signed))
        .await;

    assert_eq!(first.status(), StatusCode::OK);
    expect_401(replay, "replayed_nonce").await;
}

#[tokio::test]
async fn a_signature_for_another_path_does_not_verify() {
    let app = spawn_app().await;
    let body = ping_body();
    let signed = app.sign(&app.full_key, BATCH_PATH, &body, unix_now(), &fresh_nonce());

    let response = app
        .post_with_headers(OP_PATH, body, &signed_header_list(&signed))
        .await;

    expect_401(response, "bad_signature").await;
}

#[tokio::test]
async fn a_narrow_key_may_ping_and_call_its_scope_but_nothing_else() {
    let app = spawn_app().await;

    let ping = app
        .call_as(&app.narrow_key, &OpCall::new("system.ping"))
        .await;
    assert_eq!(ping.status(), StatusCode::OK, "every valid key may ping");
    let count = app
        .call_as(&app.narrow_key, &OpCall::new("test.count_items"))
        .await;
    assert_eq!(count.status(), StatusCode::OK, "exact-name scope");

    let insert = OpCall::new("test.insert_item")
        .param("id", "x")
        .param("quantity", 1);
    let (status, body) = error_of(app.call_as(&app.narrow_key, &insert).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body.error.code, codes::FORBIDDEN);
    assert!(
        body.error.message.contains(NARROW_KEY_ID)
            && body.error.message.contains("test.insert_item")
    );

    let batch = BatchRequest {
        ops: vec![OpCall::new("test.count_items"), insert],
    };
    let response = app
        .post_signed(
            &app.narrow_key,
            BATCH_PATH,
            serde_json::to_vec(&batch).unwrap(),
        )
        .await;
    let (status, body) = error_of(response).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body.error.op_index, Some(1));
}

#[tokio::test]
async fn unsigned_requests_and_other_paths_are_refused() {
    let app = spawn_app().await;

    let unsigned = app
        .http
        .post(app.api_url(OP_PATH))
        .body(ping_body())
        .send()
        .await
        .unwrap();
    expect_401(unsigned, "missing_header").await;

    let get = app.http.get(app.api_url(OP_PATH)).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);

    let (status, body) =
        error_of(app.http.post(app.api_url("/v1/sql")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body.error.code, "not_found");
}

#[tokio::test]
async fn behind_a_proxy_clients_sign_the_public_url() {
    let app = crate::helpers::spawn_app_with(crate::helpers::TestOptions {
        public_url: Some("https://gw.example.test".to_owned()),
        ..crate::helpers::TestOptions::default()
    })
    .await;
    let body = ping_body();

    let public = callmeback_signing::sign_request(
        &app.full_key,
        "POST",
        "https://gw.example.test/v1/op",
        &body,
        unix_now(),
        &fresh_nonce(),
    );
    let response = app
        .post_with_headers(OP_PATH, body.clone(), &signed_header_list(&public))
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let direct = app.sign(&app.full_key, OP_PATH, &body, unix_now(), &fresh_nonce());
    let response = app
        .post_with_headers(OP_PATH, body, &signed_header_list(&direct))
        .await;
    expect_401(response, "bad_signature").await;
}
