//! `GET /health` end to end: Worker (workerd) → signed call → db-gateway → Postgres.

use std::time::{Duration, Instant};

use callmeback_e2e::{Stack, raw_http};
use serde_json::Value;

#[tokio::test]
async fn health_reports_gateway_and_database_then_503_when_gateway_is_down() {
    let mut stack = Stack::start().await;

    let response = stack.get("/health").await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("health answers JSON");
    assert_eq!(
        status,
        200,
        "body: {body}\nworker log:\n{}\ngateway log:\n{}",
        stack.worker_log(),
        stack.gateway_log()
    );
    assert_eq!(body["status"], "ok");
    assert_eq!(body["gateway"]["status"], "ok");
    // Statuses and the round trip's latency, nothing about the database server: the version and
    // clock it used to show (this test asserted the version) tell an anonymous caller which
    // PostgreSQL release to aim at.
    assert_eq!(body["database"], serde_json::json!({"status": "ok"}));
    assert!(body["gateway"]["latency_ms"].is_u64(), "{body}");
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(3),
        "status, gateway, database only: {body}"
    );

    stack.stop_gateway();
    let started = Instant::now();
    let response = stack.get("/health").await;
    let elapsed = started.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().get("retry-after").is_some());
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "JSON, not an HTML error page"
    );
    let body: Value = response.json().await.expect("503 body is JSON");
    assert_eq!(body["error"]["code"], "dependency_unavailable");
    assert_eq!(body["error"]["dependency"], "gateway");
    // A stopped gateway refuses connections at once: the Worker must not wait out its timeout.
    assert!(elapsed < Duration::from_secs(5), "503 took {elapsed:?}");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let stack = Stack::start().await;
    let response = stack.get("/nope").await;
    assert_eq!(response.status().as_u16(), 404);
    let body: Value = response.json().await.expect("404 is JSON");
    assert_eq!(body["error"]["code"], "not_found");

    let response = stack
        .http
        .post(format!("{}/health", stack.worker_url))
        .send()
        .await
        .expect("reach Worker");
    assert_eq!(response.status().as_u16(), 405);
    let body: Value = response.json().await.expect("405 is JSON");
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn methods_the_api_does_not_route_answer_json_405_or_404() {
    let stack = Stack::start().await;
    // workers-rs maps a method it does not know to GET: PROPFIND /api/personas used to answer 200
    // with the catalogue, PROPFIND /api/auth/me ran `me`.
    for (method, path, status, code) in [
        ("PROPFIND", "/api/personas", 405, "method_not_allowed"),
        ("PROPFIND", "/api/auth/me", 405, "method_not_allowed"),
        ("TRACE", "/api/personas", 405, "method_not_allowed"),
        ("PURGE", "/health", 405, "method_not_allowed"),
        ("PROPFIND", "/nope", 404, "not_found"),
    ] {
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n");
        let answer = raw_http(&stack, request.as_bytes(), &[], Duration::from_secs(10)).await;
        assert_eq!(answer.status, Some(status), "{method} {path}: {answer:?}");
        let body: Value = serde_json::from_str(&answer.body)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {answer:?}"));
        assert_eq!(body["error"]["code"], code, "{method} {path}");
        assert!(answer.head.to_ascii_lowercase().contains("x-request-id"));
    }
    // CONNECT never reaches a Worker: workerd refuses an incoming CONNECT itself ("Incoming
    // CONNECT on a worker not supported") before any fetch handler runs, so no code of ours can
    // answer it (locally wrangler's entry worker answers a bare 500; Cloudflare's edge does not
    // route CONNECT to Workers). What the test holds: it is refused, and nothing of ours ran.
    let connect = raw_http(
        &stack,
        b"CONNECT /api/personas HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert!(
        connect.status.is_some_and(|status| status >= 400),
        "{connect:?}"
    );
    assert!(
        !connect.head.to_ascii_lowercase().contains("x-request-id"),
        "the Worker did not run: {connect:?}"
    );
}
