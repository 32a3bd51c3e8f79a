//! The admin listener: liveness, readiness and metrics.

use callmeback_gateway_api::{OpCall, codes};
use callmeback_signing::Key;
use reqwest::StatusCode;

use crate::helpers::{error_of, random_secret, spawn_app};

#[tokio::test]
async fn live_and_ready_answer_200_with_a_reachable_database() {
    let app = spawn_app().await;

    let live = app.http.get(app.admin_url("/live")).send().await.unwrap();
    let ready = app.http.get(app.admin_url("/ready")).send().await.unwrap();

    assert_eq!(live.status(), StatusCode::OK);
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn ready_turns_503_when_the_database_goes_away() {
    let app = spawn_app().await;
    assert_eq!(
        app.call(&OpCall::new("system.ping")).await.status(),
        StatusCode::OK
    );
    let admin = app.database.admin_client().await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
            name = app.database.name
        ))
        .await
        .unwrap();
    // Give the closed connections a moment to be noticed by their client tasks.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let ready = app.http.get(app.admin_url("/ready")).send().await.unwrap();
    let (status, body) = error_of(ready).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body.error.code, codes::DATABASE_UNAVAILABLE);

    let (status, body) = error_of(app.call(&OpCall::new("system.ping")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body.error.code, codes::DATABASE_UNAVAILABLE);

    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
            app.database.name
        ))
        .await
        .unwrap();
    let ready = app.http.get(app.admin_url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "recovers without a restart");
}

#[tokio::test]
async fn metrics_count_requests_auth_failures_and_pool_state() {
    let app = spawn_app().await;
    assert_eq!(
        app.call(&OpCall::new("system.ping")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.call(&OpCall::new("system.ping")).await.status(),
        StatusCode::OK
    );
    let stranger = Key::new("stranger", random_secret());
    let refused = app.call_as(&stranger, &OpCall::new("system.ping")).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    app.batch(vec![OpCall::new("system.ping")]).await;

    let response = app
        .http
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();

    for expected in [
        r#"gateway_requests_total{op="system.ping",status="200"} 2"#,
        r#"gateway_requests_total{op="unknown",status="401"} 1"#,
        r#"gateway_requests_total{op="batch",status="200"} 1"#,
        r#"gateway_request_duration_seconds_bucket{op="system.ping",status="200",le="0.005"}"#,
        r#"gateway_request_duration_seconds_count{op="system.ping",status="200"} 2"#,
        r#"gateway_auth_failures_total{reason="unknown_key"} 1"#,
        "gateway_load_shed_total 0",
        "gateway_pool_size ",
        "gateway_pool_max_size 4",
        "gateway_pool_in_use 0",
        "gateway_pool_waiting 0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
