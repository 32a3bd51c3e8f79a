//! Single reads pipelined on shared connections (`db_gateway::pipeline`): same answers as the
//! pool, many at once, survival of a lost connection, load shedding, and what stays on the pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use callmeback_gateway_api::{OpCall, OpResult, codes};
use db_gateway::pipeline::PIPELINE_APPLICATION_NAME;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestOptions, error_of, spawn_app, spawn_app_with};

async fn ok_result(response: reqwest::Response) -> OpResult {
    let status = response.status();
    let text = response.text().await.expect("body readable");
    assert_eq!(status, StatusCode::OK, "unexpected answer: {text}");
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("not an OpResult ({error}): {text}"))
}

/// The value of an unlabelled metric (`name value`), or of the first sample starting `name{`.
async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app
        .http
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn echo(text: &str, number: i64) -> OpCall {
    OpCall::new("test.echo_types")
        .param("t", text)
        .param("i4", number)
        .param("i8", "9007199254740993")
        .param("n", "-12.500")
        .param("b", number % 2 == 0)
        .param("ts", "2026-11-22T12:00:00.123456+02:00")
        .param("j", json!({"nested": [1, "two", null], "n": number}))
        .param("arr", json!(["a", null, text]))
}

fn insert(id: &str, quantity: i64) -> OpCall {
    OpCall::new("test.insert_item")
        .param("id", id)
        .param("quantity", quantity)
}

/// Backends of the shared connections of `app`'s database.
async fn pipelined_backends(app: &TestApp) -> i64 {
    let admin = app.database.admin_client().await;
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            &[&app.database.name, &PIPELINE_APPLICATION_NAME],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn pipelined_reads_answer_exactly_what_the_pool_answers() {
    let pipelined = spawn_app().await;
    let pooled = spawn_app_with(TestOptions {
        pipeline_connections: 0,
        ..TestOptions::default()
    })
    .await;
    assert_eq!(pipelined_backends(&pipelined).await, 2);
    assert_eq!(pipelined_backends(&pooled).await, 0);
    for app in [&pipelined, &pooled] {
        for (id, quantity) in [("a", 1), ("b", 2)] {
            assert_eq!(
                app.call(&insert(id, quantity)).await.status(),
                StatusCode::OK
            );
        }
    }

    let calls = [
        echo("héllo \"quoted\" ✓", 7),
        OpCall::new("test.encodings"),
        OpCall::new("test.count_items"),
        OpCall::new("test.echo_numeric").param("n", "0.000001"),
    ];
    for call in &calls {
        let from_pipeline = ok_result(pipelined.call(call).await).await;
        let from_pool = ok_result(pooled.call(call).await).await;
        assert_eq!(
            serde_json::to_value(&from_pipeline).unwrap(),
            serde_json::to_value(&from_pool).unwrap(),
            "{}",
            call.op
        );
    }
    // Errors map the same way too: a database error, and an `Expect::One` read with no row.
    for app in [&pipelined, &pooled] {
        let too_precise = format!("0.{}", "1".repeat(17_000));
        let (status, body) = error_of(
            app.call(&OpCall::new("test.echo_numeric").param("n", too_precise))
                .await,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{}", body.error.message);
        assert_eq!(body.error.code, codes::INVALID_PARAMS);
    }
    for app in [&pipelined, &pooled] {
        let (status, body) = error_of(
            app.call(&OpCall::new("accounts.get_user").param("user_id", "nobody"))
                .await,
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body.error.code, codes::PRECONDITION_FAILED);
        assert_eq!(body.error.message, "user not found");
    }

    assert!(metric(&pipelined, "gateway_pipeline_reads_total").await >= 5.0);
    assert_eq!(metric(&pooled, "gateway_pipeline_reads_total").await, 0.0);
    assert_eq!(
        metric(&pipelined, "gateway_pipeline_connections").await,
        2.0
    );
    assert_eq!(
        metric(&pipelined, "gateway_pipeline_fallbacks_total").await,
        0.0
    );
}

#[tokio::test]
async fn many_concurrent_reads_each_get_their_own_answer() {
    let app = spawn_app().await;

    let answers = join_all((0..200).map(|index| {
        let app = &app;
        async move {
            let text = format!("request-{index}");
            let result = ok_result(app.call(&echo(&text, index)).await).await;
            (index, text, result)
        }
    }))
    .await;

    for (index, text, result) in answers {
        let row = result.first().expect("one row");
        assert_eq!(row["t"], json!(text));
        assert_eq!(row["i4"], json!(index));
        assert_eq!(row["j"]["n"], json!(index));
        assert_eq!(row["arr"], json!(["a", null, text]));
    }
    assert_eq!(metric(&app, "gateway_pipeline_reads_total").await, 200.0);
    assert_eq!(metric(&app, "gateway_pipeline_fallbacks_total").await, 0.0);
    assert_eq!(metric(&app, "gateway_pipeline_in_flight").await, 0.0);
}

#[tokio::test]
async fn reads_survive_a_terminated_shared_connection_and_it_is_replaced() {
    let app = spawn_app().await;
    assert_eq!(
        app.call(&OpCall::new("system.ping")).await.status(),
        StatusCode::OK
    );
    let admin = app.database.admin_client().await;
    let kill = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        admin
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = $2) AS killed",
                &[&app.database.name, &PIPELINE_APPLICATION_NAME],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    // Reads keep coming while the connections die: whether a read finds its connection already
    // closed or is sent on it as it dies, it is answered (by the pool).
    let load = join_all((0..8).map(|worker| {
        let app = &app;
        async move {
            for index in 0..40 {
                let number = worker * 1_000 + index;
                let row = ok_result(app.call(&echo("during", number)).await)
                    .await
                    .rows
                    .remove(0);
                assert_eq!(row["i4"], json!(number));
            }
        }
    }));
    let (terminated, _) = tokio::join!(kill, load);
    assert_eq!(terminated, 2, "both shared connections were killed");
    assert!(metric(&app, "gateway_pipeline_fallbacks_total").await >= 1.0);

    // Replaced in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&app, "gateway_pipeline_connections").await < 2.0 {
        assert!(
            Instant::now() < deadline,
            "shared connections never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&app, "gateway_pipeline_reconnects_total").await, 2.0);
    assert_eq!(pipelined_backends(&app).await, 2);
    let reads_before = metric(&app, "gateway_pipeline_reads_total").await;
    assert_eq!(
        app.call(&OpCall::new("system.ping")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        metric(&app, "gateway_pipeline_reads_total").await,
        reads_before + 1.0,
        "reads are pipelined again"
    );
}

#[tokio::test]
async fn a_full_pipeline_sheds_load_but_writes_still_use_the_pool() {
    let app = Arc::new(
        spawn_app_with(TestOptions {
            pool_wait: Duration::from_millis(100),
            pipeline_connections: 1,
            pipeline_depth: 1,
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
        "shed after {waited:?}"
    );
    let (_, body) = error_of(shed).await;
    assert_eq!(body.error.code, codes::OVERLOADED);

    // Writes and batches never wait for the shared connection.
    assert_eq!(app.call(&insert("w", 1)).await.status(), StatusCode::OK);
    assert_eq!(
        app.batch(vec![OpCall::new("test.count_items")])
            .await
            .status(),
        StatusCode::OK
    );

    assert_eq!(holder.await.unwrap(), StatusCode::OK);
    assert_eq!(
        app.call(&OpCall::new("system.ping")).await.status(),
        StatusCode::OK
    );
    assert_eq!(metric(&app, "gateway_load_shed_total").await, 1.0);
}

#[tokio::test]
async fn a_slow_read_does_not_hold_up_reads_on_the_other_connection() {
    let app = Arc::new(spawn_app().await);
    let slow = {
        let app = app.clone();
        tokio::spawn(async move {
            app.call(&OpCall::new("test.sleep").param("ms", 1500))
                .await
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(
            app.call(&OpCall::new("system.ping")).await.status(),
            StatusCode::OK
        );
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(800),
        "reads went to the least loaded connection, not behind the sleeper ({waited:?})"
    );
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn shared_connections_are_read_only() {
    let app = spawn_app().await;

    let (status, body) = error_of(
        app.call(&OpCall::new("test.mislabelled_write").param("id", "sneaky"))
            .await,
    )
    .await;

    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "a write labelled Read is a gateway bug, refused like in a read-only batch"
    );
    assert_eq!(body.error.code, codes::INTERNAL);
    let count = ok_result(app.call(&OpCall::new("test.count_items")).await).await;
    assert_eq!(count.first().unwrap()["n"], Value::from("0"));
}

#[tokio::test]
async fn reads_with_their_own_timeout_run_on_the_pool() {
    let app = spawn_app().await;

    let (status, body) = error_of(
        app.call(&OpCall::new("test.sleep_with_short_timeout").param("ms", 1000))
            .await,
    )
    .await;

    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body.error.code, codes::TIMEOUT);
    assert_eq!(metric(&app, "gateway_pipeline_reads_total").await, 0.0);
}
