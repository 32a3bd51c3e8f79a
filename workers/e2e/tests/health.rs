//! `GET /health` end to end: Worker (workerd) → signed call → db-gateway → Postgres.

use std::time::{Duration, Instant};

use callmeback_e2e::Stack;
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
    assert_eq!(body["database"]["status"], "ok");
    assert!(
        body["database"]["version"].is_string(),
        "database version reported: {body}"
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
