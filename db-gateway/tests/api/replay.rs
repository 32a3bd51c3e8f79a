//! Replay protection (`db_gateway::replay`): a replayed write never applies, whether it goes to
//! the same gateway, to one restarted since, or to a second gateway on the same database; a
//! replayed read is answered at most once per process; the memory never refuses for being
//! full; expired nonce rows are deleted and only those.
//!
//! Every gateway here is configured with the same `public_url`, as instances behind one load
//! balancer are, so one signature is valid on all of them and only the nonce stands between a
//! replay and the database.

use std::net::SocketAddr;
use std::time::Duration;

use callmeback_gateway_api::{BATCH_PATH, BatchRequest, OP_PATH, OpCall, codes};
use callmeback_signing::{SignedHeaders, sign_request};
use db_gateway::replay::{EXPIRY_MARGIN_SECS, delete_expired_nonces};
use reqwest::StatusCode;

use crate::accounts_ops::{login, registration};
use crate::helpers::{
    TestApp, TestOptions, error_of, fresh_nonce, ok, ok_batch, refused, signed_header_list,
    spawn_app_with, unix_now,
};

const PUBLIC_URL: &str = "https://gw.replay.test";

fn options() -> TestOptions {
    TestOptions {
        public_url: Some(PUBLIC_URL.to_owned()),
        ..TestOptions::default()
    }
}

/// A signed request that can be sent, and replayed, to any of the gateways.
struct Signed {
    path: &'static str,
    body: Vec<u8>,
    headers: SignedHeaders,
}

fn sign_at(app: &TestApp, path: &'static str, body: Vec<u8>, created: i64) -> Signed {
    let headers = sign_request(
        &app.full_key,
        "POST",
        &format!("{PUBLIC_URL}{path}"),
        &body,
        created,
        &fresh_nonce(),
    );
    Signed {
        path,
        body,
        headers,
    }
}

fn signed_op(app: &TestApp, call: &OpCall) -> Signed {
    sign_at(app, OP_PATH, serde_json::to_vec(call).unwrap(), unix_now())
}

fn signed_batch(app: &TestApp, ops: Vec<OpCall>) -> Signed {
    let body = serde_json::to_vec(&BatchRequest { ops }).unwrap();
    sign_at(app, BATCH_PATH, body, unix_now())
}

async fn send(app: &TestApp, to: SocketAddr, request: &Signed) -> reqwest::Response {
    let mut builder = app
        .http
        .post(format!("http://{to}{}", request.path))
        .body(request.body.clone());
    for (name, value) in signed_header_list(&request.headers) {
        builder = builder.header(name, value);
    }
    builder.send().await.expect("request reaches the gateway")
}

async fn expect_replayed(response: reqwest::Response, what: &str) {
    let (status, body) = error_of(response).await;
    assert_eq!(
        (status, body.error.code.as_str()),
        (StatusCode::UNAUTHORIZED, "replayed_nonce"),
        "{what}: {}",
        body.error.message
    );
}

fn insert(id: &str, quantity: i64) -> OpCall {
    OpCall::new("test.insert_item")
        .param("id", id)
        .param("quantity", quantity)
}

fn take(id: &str, quantity: i64) -> OpCall {
    OpCall::new("test.take_item")
        .param("id", id)
        .param("quantity", quantity)
}

/// `(id, quantity)` of every item.
async fn items(app: &TestApp) -> Vec<(String, i32)> {
    app.database
        .client()
        .await
        .query("SELECT id, quantity FROM test_items ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

async fn nonce_rows(app: &TestApp) -> i64 {
    app.database
        .client()
        .await
        .query_one("SELECT count(*) FROM gateway_request_nonces", &[])
        .await
        .unwrap()
        .get(0)
}

/// Replays `request` to the gateway that answered it, to a second gateway on the same database,
/// and to the first one again after a restart; each must refuse it without touching `items`.
async fn replay_everywhere(app: &mut TestApp, request: &Signed, what: &str) {
    let before = items(app).await;

    expect_replayed(
        send(app, app.api_addr, request).await,
        &format!("{what}, same gateway"),
    )
    .await;

    let mut peer = app.spawn_peer().await;
    expect_replayed(
        send(app, peer.api_addr, request).await,
        &format!("{what}, second gateway"),
    )
    .await;
    peer.shutdown().await.unwrap();

    app.restart().await;
    expect_replayed(
        send(app, app.api_addr, request).await,
        &format!("{what}, after a restart"),
    )
    .await;

    assert_eq!(
        items(app).await,
        before,
        "{what}: no replay changed anything"
    );
}

#[tokio::test]
async fn a_replayed_write_batch_is_refused_everywhere_and_changes_nothing() {
    let mut app = spawn_app_with(options()).await;
    let batch = signed_batch(&app, vec![insert("a", 5), take("a", 2)]);

    ok_batch(send(&app, app.api_addr, &batch).await).await;
    assert_eq!(items(&app).await, [("a".to_owned(), 3)]);
    assert_eq!(nonce_rows(&app).await, 1, "the batch recorded its nonce");

    replay_everywhere(&mut app, &batch, "write batch").await;
    assert_eq!(nonce_rows(&app).await, 1);
}

#[tokio::test]
async fn a_replayed_single_write_is_refused_everywhere_and_changes_nothing() {
    let mut app = spawn_app_with(options()).await;
    ok(send(&app, app.api_addr, &signed_op(&app, &insert("a", 5))).await).await;
    let take_two = signed_op(&app, &take("a", 2));

    ok(send(&app, app.api_addr, &take_two).await).await;
    assert_eq!(items(&app).await, [("a".to_owned(), 3)]);

    replay_everywhere(&mut app, &take_two, "single write").await;
    assert_eq!(nonce_rows(&app).await, 2, "one row per write request");
}

#[tokio::test]
async fn one_write_sent_to_two_gateways_at_once_applies_once() {
    let app = spawn_app_with(options()).await;
    ok(send(&app, app.api_addr, &signed_op(&app, &insert("a", 100))).await).await;
    let peer = app.spawn_peer().await;

    for round in 0..10 {
        let request = signed_batch(&app, vec![take("a", 1)]);
        let (first, second) = tokio::join!(
            send(&app, app.api_addr, &request),
            send(&app, peer.api_addr, &request)
        );
        let mut statuses = [first.status(), second.status()];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::UNAUTHORIZED],
            "round {round}: exactly one of them applies"
        );
    }
    assert_eq!(items(&app).await, [("a".to_owned(), 90)]);
}

#[tokio::test]
async fn a_failed_write_uses_up_its_nonce_too() {
    let mut app = spawn_app_with(options()).await;
    ok(send(&app, app.api_addr, &signed_op(&app, &insert("a", 1))).await).await;
    let too_much = signed_batch(&app, vec![insert("b", 1), take("a", 5)]);

    refused(
        send(&app, app.api_addr, &too_much).await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;
    assert_eq!(
        items(&app).await,
        [("a".to_owned(), 1)],
        "the failed batch rolled back"
    );

    // Now the batch could succeed; a replay (for instance after the client retried with a
    // fresh signature) still must not apply it.
    ok(send(
        &app,
        app.api_addr,
        &signed_op(
            &app,
            &OpCall::new("test.set_quantity")
                .param("id", "a")
                .param("quantity", 10),
        ),
    )
    .await)
    .await;
    replay_everywhere(&mut app, &too_much, "failed write batch").await;
    assert_eq!(items(&app).await, [("a".to_owned(), 10)]);
}

#[tokio::test]
async fn a_replayed_login_is_refused_and_records_nothing() {
    let mut app = spawn_app_with(options()).await;
    let user = format!("usr_{}", fresh_nonce());
    ok_batch(
        send(
            &app,
            app.api_addr,
            &signed_batch(
                &app,
                registration(&user, "ada@example.com", "correct horse battery"),
            ),
        )
        .await,
    )
    .await;
    let success = signed_op(&app, &login("ada@example.com", "correct horse battery"));
    let failure = signed_op(&app, &login("ada@example.com", "wrong horse"));

    ok(send(&app, app.api_addr, &success).await).await;
    refused(
        send(&app, app.api_addr, &failure).await,
        StatusCode::CONFLICT,
        codes::PRECONDITION_FAILED,
    )
    .await;

    let peer = app.spawn_peer().await;
    expect_replayed(
        send(&app, peer.api_addr, &success).await,
        "login, second gateway",
    )
    .await;
    expect_replayed(
        send(&app, peer.api_addr, &failure).await,
        "failed login, second gateway",
    )
    .await;
    app.restart().await;
    expect_replayed(
        send(&app, app.api_addr, &success).await,
        "login, after a restart",
    )
    .await;

    let events: Vec<String> = app
        .database
        .client()
        .await
        .query(
            "SELECT event_type FROM audit_log WHERE event_type LIKE 'login%' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        events,
        ["login_success", "login_failure"],
        "one row per real login"
    );
}

#[tokio::test]
async fn a_replayed_read_is_answered_at_most_once_per_gateway_process() {
    let mut app = spawn_app_with(options()).await;
    let read = signed_op(&app, &OpCall::new("test.count_items"));
    let batch_of_reads = signed_batch(&app, vec![OpCall::new("test.count_items")]);

    for request in [&read, &batch_of_reads] {
        assert_eq!(
            send(&app, app.api_addr, request).await.status(),
            StatusCode::OK
        );
        expect_replayed(
            send(&app, app.api_addr, request).await,
            "read, same gateway",
        )
        .await;
    }

    // By design (see db_gateway::replay), reads are remembered per process only: another
    // instance, or this one after a restart, answers the same signed read once more, and then
    // refuses it too. A replayed read changes nothing.
    let peer = app.spawn_peer().await;
    for request in [&read, &batch_of_reads] {
        assert_eq!(
            send(&app, peer.api_addr, request).await.status(),
            StatusCode::OK
        );
        expect_replayed(
            send(&app, peer.api_addr, request).await,
            "read, second gateway",
        )
        .await;
    }
    app.restart().await;
    for request in [&read, &batch_of_reads] {
        assert_eq!(
            send(&app, app.api_addr, request).await.status(),
            StatusCode::OK
        );
        expect_replayed(
            send(&app, app.api_addr, request).await,
            "read, after a restart",
        )
        .await;
    }
    assert_eq!(
        nonce_rows(&app).await,
        0,
        "reads write nothing, not even a nonce"
    );
}

#[tokio::test]
async fn a_burst_far_beyond_the_replay_memory_is_never_refused_for_it() {
    const CAP: usize = 256;
    const CLIENTS: usize = 8;
    const REQUESTS_PER_CLIENT: usize = 400;
    let app = spawn_app_with(TestOptions {
        replay_cache_entries: Some(CAP),
        pool_size: 8,
        ..options()
    })
    .await;

    // 3,200 requests, 12.5 times what the memory holds (the old cache answered 503 to everything
    // once it was full): one write batch in four, the rest reads.
    let clients = (0..CLIENTS).map(|client| {
        let app = &app;
        async move {
            let mut statuses = Vec::with_capacity(REQUESTS_PER_CLIENT);
            for index in 0..REQUESTS_PER_CLIENT {
                let request = if index % 4 == 0 {
                    signed_batch(app, vec![insert(&format!("c{client}-{index}"), 1)])
                } else {
                    signed_op(app, &OpCall::new("system.ping"))
                };
                statuses.push(send(app, app.api_addr, &request).await.status());
            }
            statuses
        }
    });
    let statuses: Vec<StatusCode> = futures_util::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect();

    let refused: Vec<_> = statuses
        .iter()
        .filter(|status| !status.is_success())
        .collect();
    assert!(
        refused.is_empty(),
        "every request answered 200, got {refused:?}"
    );
    let writes = (CLIENTS * REQUESTS_PER_CLIENT / 4) as i64;
    assert_eq!(items(&app).await.len() as i64, writes);
    assert_eq!(nonce_rows(&app).await, writes);

    let metrics = app
        .http
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
    };
    assert!(
        value("gateway_replay_cache_entries") <= CAP as f64,
        "{metrics}"
    );
    assert_eq!(value("gateway_replay_cache_max_entries"), CAP as f64);
    assert!(
        value("gateway_replay_cache_evicted_total")
            + value("gateway_replay_cache_unremembered_total")
            > 0.0,
        "the memory overflowed and coped: {metrics}"
    );
    assert!(!metrics.contains("status=\"503\""), "{metrics}");
}

#[tokio::test]
async fn what_a_full_memory_forgot_is_refused_for_reads_and_left_to_the_database_for_writes() {
    // One entry per shard: every shard forgets its older seconds as soon as it sees a newer one.
    let app = spawn_app_with(TestOptions {
        replay_cache_entries: Some(16),
        ..options()
    })
    .await;
    let now = unix_now();
    let long_ago = now - 120;
    // 400 writes signed over the last two minutes, oldest first, fill every shard many times
    // over. (Writes, because a read the memory forgot would be refused: two signed in the same
    // second and landing in the same shard leave room for only one.)
    for index in 0..400 {
        let created = long_ago + 1 + index * 117 / 400;
        let write = serde_json::to_vec(&insert(&format!("filler-{index}"), 1)).unwrap();
        let response = send(&app, app.api_addr, &sign_at(&app, OP_PATH, write, created)).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    let old_read = sign_at(
        &app,
        OP_PATH,
        serde_json::to_vec(&OpCall::new("test.count_items")).unwrap(),
        long_ago,
    );
    expect_replayed(
        send(&app, app.api_addr, &old_read).await,
        "a forgotten read",
    )
    .await;

    let old_write = sign_at(
        &app,
        OP_PATH,
        serde_json::to_vec(&insert("late", 1)).unwrap(),
        long_ago,
    );
    ok(send(&app, app.api_addr, &old_write).await).await;
    expect_replayed(send(&app, app.api_addr, &old_write).await, "its replay").await;
    let items = items(&app).await;
    assert_eq!(items.len(), 401);
    assert!(items.contains(&("late".to_owned(), 1)));
}

#[tokio::test]
async fn an_overlong_nonce_is_refused_before_it_reaches_the_database() {
    let app = spawn_app_with(options()).await;
    let body = serde_json::to_vec(&insert("a", 1)).unwrap();
    let headers = sign_request(
        &app.full_key,
        "POST",
        &format!("{PUBLIC_URL}{OP_PATH}"),
        &body,
        unix_now(),
        &"n".repeat(129),
    );
    let request = Signed {
        path: OP_PATH,
        body,
        headers,
    };

    refused(
        send(&app, app.api_addr, &request).await,
        StatusCode::UNAUTHORIZED,
        "malformed_header",
    )
    .await;
    assert!(items(&app).await.is_empty());
}

/// Waits (up to 10 s) until the admin listener at `admin` reports a metric line starting with
/// `line`; returns the metrics text.
async fn wait_for_metric(app: &TestApp, admin: SocketAddr, line: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = app
            .http
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.lines().any(|candidate| candidate.starts_with(line)) {
            return metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{line}` in:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_cleanup_deletes_expired_nonces_only_and_instances_can_run_it_together() {
    let app = spawn_app_with(options()).await;
    // The gateway cleans once right after it starts; let that pass so it does not race us.
    wait_for_metric(
        &app,
        app.admin_addr,
        "gateway_replay_cleanup_runs_total{outcome=\"ok\"} 1",
    )
    .await;
    let client = app.database.client().await;
    // 2,000 long expired, 10 expired within the margin (a lagging gateway clock might still
    // accept them), 10 live.
    client
        .batch_execute(&format!(
            "INSERT INTO gateway_request_nonces (key_id, nonce, expires_at)
                 SELECT 'k', 'old-' || n, now() - interval '1 hour' + n * interval '1 ms'
                 FROM generate_series(1, 2000) n;
             INSERT INTO gateway_request_nonces (key_id, nonce, expires_at)
                 SELECT 'k', 'margin-' || n, now() - interval '{} seconds'
                 FROM generate_series(1, 10) n;
             INSERT INTO gateway_request_nonces (key_id, nonce, expires_at)
                 SELECT 'k', 'live-' || n, now() + interval '5 minutes'
                 FROM generate_series(1, 10) n;",
            EXPIRY_MARGIN_SECS - 20
        ))
        .await
        .unwrap();

    // Two cleaners at once, as two gateways would be, in small batches so they overlap.
    let other = app.database.client().await;
    let (first, second) = tokio::join!(
        delete_expired_nonces(&client, EXPIRY_MARGIN_SECS, 100),
        delete_expired_nonces(&other, EXPIRY_MARGIN_SECS, 100)
    );
    assert_eq!(
        first.unwrap() + second.unwrap(),
        2000,
        "each expired row deleted once"
    );
    let kinds = || async {
        let rows = client
            .query(
                "SELECT split_part(nonce, '-', 1) FROM gateway_request_nonces ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|row| row.get(0)).collect::<Vec<String>>()
    };
    let mut expected = vec!["live".to_owned(); 10];
    expected.extend(vec!["margin".to_owned(); 10]);
    assert_eq!(
        kinds().await,
        expected,
        "the live and in-margin rows are kept"
    );

    // A gateway runs the cleanup by itself, first right after it starts.
    client
        .batch_execute(
            "INSERT INTO gateway_request_nonces (key_id, nonce, expires_at)
                 VALUES ('k', 'stale', now() - interval '1 day')",
        )
        .await
        .unwrap();
    let mut peer = app.spawn_peer().await;
    wait_for_metric(
        &app,
        peer.admin_addr,
        "gateway_replay_nonces_deleted_total 1",
    )
    .await;
    peer.shutdown().await.unwrap();
    assert_eq!(kinds().await, expected, "only the stale row went");
}
