//! Load shedding and graceful shutdown.

use std::time::{Duration, Instant};

use callmeback_gateway_api::{OpCall, codes};
use reqwest::StatusCode;

use crate::helpers::{TestOptions, error_of, spawn_app_with};

#[tokio::test]
async fn a_full_pool_sheds_load_quickly_with_retry_after() {
    let app = std::sync::Arc::new(
        spawn_app_with(TestOptions {
            pool_size: 1,
            pool_wait: Duration::from_millis(100),
            // Every read on the pool, so one slow read holds the only connection.
            pipeline_connections: 0,
            ..TestOptions::default()
        })
        .await,
    );
    let holder = {
        let app = app.clone();
        tokio::spawn(async move {
            app.call(&OpCall::new("test.sleep").param("ms", 1500))
                .await
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;

    let started = Instant::now();
    let shed = app.call(&OpCall::new("system.ping")).await;
    let waited = started.elapsed();

    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert!(
        waited < Duration::from_millis(1000),
        "shed after {waited:?}, not after the slow query"
    );
    let (_, body) = error_of(shed).await;
    assert_eq!(body.error.code, codes::OVERLOADED);
    assert_eq!(
        holder.await.unwrap(),
        StatusCode::OK,
        "the holder finishes normally"
    );
    assert_eq!(
        app.call(&OpCall::new("system.ping")).await.status(),
        StatusCode::OK
    );

    let metrics = app
        .http
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("gateway_load_shed_total 1"), "{metrics}");
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_request_then_stops_listening() {
    let mut app = spawn_app_with(TestOptions::default()).await;
    let slow = {
        let http = app.http.clone();
        let body = serde_json::to_vec(&OpCall::new("test.sleep").param("ms", 1200)).unwrap();
        let signed = app.sign(
            &app.full_key,
            "/v1/op",
            &body,
            crate::helpers::unix_now(),
            &crate::helpers::fresh_nonce(),
        );
        let url = app.api_url("/v1/op");
        tokio::spawn(async move {
            let mut request = http.post(url).body(body);
            for (name, value) in crate::helpers::signed_header_list(&signed) {
                request = request.header(name, value.to_owned());
            }
            request.send().await.map(|response| response.status())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let server = app.begin_shutdown();
    let stopped = tokio::time::timeout(Duration::from_secs(10), server).await;

    assert_eq!(
        slow.await.unwrap().unwrap(),
        StatusCode::OK,
        "the in-flight request completed"
    );
    assert!(
        stopped
            .expect("stops within the grace period")
            .unwrap()
            .is_ok()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "waited for the slow request"
    );
    let refused = tokio::net::TcpStream::connect(app.api_addr).await;
    assert!(refused.is_err(), "no longer accepting connections");
}

#[tokio::test]
async fn shutdown_gives_up_after_the_grace_period() {
    let mut app = spawn_app_with(TestOptions {
        shutdown_grace: Duration::from_millis(300),
        ..TestOptions::default()
    })
    .await;
    let app_http = app.http.clone();
    let body = serde_json::to_vec(&OpCall::new("test.sleep").param("ms", 4000)).unwrap();
    let signed = app.sign(
        &app.full_key,
        "/v1/op",
        &body,
        crate::helpers::unix_now(),
        &crate::helpers::fresh_nonce(),
    );
    let url = app.api_url("/v1/op");
    let _slow = tokio::spawn(async move {
        let mut request = app_http.post(url).body(body);
        for (name, value) in crate::helpers::signed_header_list(&signed) {
            request = request.header(name, value.to_owned());
        }
        request.send().await.map(|response| response.status())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let result = app.shutdown().await;

    assert!(result.is_ok());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the grace period"
    );
}
