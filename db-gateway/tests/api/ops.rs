//! Single operations: encoding of every type, parameter checking and error mapping.

use callmeback_gateway_api::{OpCall, OpResult, codes};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestOptions, error_of, spawn_app, spawn_app_with};

async fn ok_result(response: reqwest::Response) -> OpResult {
    let status = response.status();
    let text = response.text().await.expect("body readable");
    assert_eq!(status, StatusCode::OK, "unexpected answer: {text}");
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("not an OpResult ({error}): {text}"))
}

#[tokio::test]
async fn ping_answers_with_database_time_and_version() {
    let app = spawn_app().await;

    let response = app.call(&OpCall::new("system.ping")).await;

    let request_id = response
        .headers()
        .get("x-request-id")
        .expect("request id echoed")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(
        request_id.len(),
        32,
        "a generated id is 128 random bits in hex"
    );
    let result = ok_result(response).await;
    assert_eq!(result.row_count, 1);
    let row = result.first().expect("one row");
    assert_eq!(row["ok"], json!(true));
    let db_time = row["db_time"].as_str().expect("db_time is a string");
    assert!(
        db_time.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(db_time).is_ok(),
        "{db_time}"
    );
    assert!(
        row["server_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
}

#[tokio::test]
async fn a_callers_request_id_is_echoed() {
    let app = spawn_app().await;
    let body = serde_json::to_vec(&OpCall::new("system.ping")).unwrap();
    let signed = app.sign(
        &app.full_key,
        "/v1/op",
        &body,
        crate::helpers::unix_now(),
        &crate::helpers::fresh_nonce(),
    );
    let mut headers = crate::helpers::signed_header_list(&signed);
    headers.push(("x-request-id", "worker-req-42"));

    let response = app.post_with_headers("/v1/op", body, &headers).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "worker-req-42");
}

#[tokio::test]
async fn schema_version_reports_the_latest_migration() {
    let app = spawn_app().await;

    let result = ok_result(app.call(&OpCall::new("system.schema_version")).await).await;

    let row = result.first().expect("one row");
    assert_eq!(row["version"], json!("1"), "int8 crosses as a string");
    assert_eq!(row["name"], json!("test_items"));
    assert!(row["applied_at"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[tokio::test]
async fn every_param_type_round_trips() {
    let app = spawn_app().await;
    let call = OpCall::new("test.echo_types")
        .param("t", "héllo \"quoted\" ✓")
        .param("i4", -2_147_483_648i64)
        .param("i8", "9007199254740993")
        .param("n", "-123456789012345678901234567890.000000001")
        .param("b", false)
        .param("ts", "2026-11-22T12:00:00.123456+02:00")
        .param(
            "j",
            json!({"nested": [1, "two", null, {"x": 1.5}], "big": 12345678901234567890u64}),
        )
        .param("arr", json!(["a", null, "c"]));

    let result = ok_result(app.call(&call).await).await;

    let row = result.first().expect("one row");
    assert_eq!(row["t"], json!("héllo \"quoted\" ✓"));
    assert_eq!(row["i4"], json!(-2_147_483_648i64));
    assert_eq!(
        row["i8"],
        json!("9007199254740993"),
        "beyond 2^53 and still exact"
    );
    assert_eq!(row["n"], json!("-123456789012345678901234567890.000000001"));
    assert_eq!(row["b"], json!(false));
    assert_eq!(
        row["ts"],
        json!("2026-11-22T10:00:00.123456Z"),
        "normalised to UTC"
    );
    assert_eq!(
        row["j"],
        json!({"nested": [1, "two", null, {"x": 1.5}], "big": 12345678901234567890u64})
    );
    assert_eq!(row["arr"], json!(["a", null, "c"]));
    assert_eq!(
        row["maybe"],
        Value::Null,
        "an absent optional parameter binds NULL"
    );
}

#[tokio::test]
async fn int8_params_accept_json_integers_too() {
    let app = spawn_app().await;
    let call = OpCall::new("test.echo_types")
        .param("t", "")
        .param("i4", 0)
        .param("i8", -42)
        .param("n", "0")
        .param("b", true)
        .param("ts", "2026-01-01T00:00:00Z")
        .param("j", json!("a bare string"))
        .param("arr", json!([]))
        .param("maybe", "here");

    let row = ok_result(app.call(&call).await).await.rows.remove(0);

    assert_eq!(row["i8"], json!("-42"));
    assert_eq!(
        row["j"],
        json!("a bare string"),
        "any JSON value is a jsonb param"
    );
    assert_eq!(row["arr"], json!([]));
    assert_eq!(row["maybe"], json!("here"));
    assert_eq!(row["ts"], json!("2026-01-01T00:00:00.000000Z"));
}

#[tokio::test]
async fn numeric_values_match_postgres_text_output_exactly() {
    let app = spawn_app().await;
    let values = [
        "0",
        "-0.50",
        "12.50",
        "0.000001",
        "10000",
        "99990000.0001",
        "1.0000",
        "-9999.9999",
        "123456789012345678901234567890.123456789012345678901234567890",
        "007.10",
    ];
    for value in values {
        let row = ok_result(
            app.call(&OpCall::new("test.echo_numeric").param("n", value))
                .await,
        )
        .await
        .rows
        .remove(0);
        assert_eq!(
            row["n"], row["pg_text"],
            "binary decoding of {value} differs from Postgres' text"
        );
    }
}

#[tokio::test]
async fn result_types_beyond_params_are_encoded_per_the_contract() {
    let app = spawn_app().await;

    let row = ok_result(app.call(&OpCall::new("test.encodings")).await)
        .await
        .rows
        .remove(0);

    assert_eq!(row["i2"], json!(7));
    assert_eq!(row["f4"], json!(1.5));
    assert_eq!(row["f8_nan"], json!("NaN"));
    assert_eq!(row["f8_neg_inf"], json!("-Infinity"));
    assert_eq!(row["n_nan"], json!("NaN"));
    assert_eq!(row["n_zero"], json!("0.000"));
    assert_eq!(row["id"], json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
    assert_eq!(row["day"], json!("2026-11-22"));
    assert_eq!(row["forever"], json!("infinity"));
    assert_eq!(row["tags"], json!(["x", null]));
    assert_eq!(row["doc"], json!({"k": [1, "2"]}));
    assert_eq!(row["nothing"], Value::Null);
    assert_eq!(row["short"], json!("abc"));
}

#[tokio::test]
async fn invalid_params_name_the_parameter_but_never_the_value() {
    let app = spawn_app().await;
    let cases = [
        (
            OpCall::new("test.count_items").param("extra", "SECRET-1"),
            "`extra`",
        ),
        (OpCall::new("test.sleep"), "`ms`"),
        (OpCall::new("test.sleep").param("ms", Value::Null), "`ms`"),
        (OpCall::new("test.sleep").param("ms", "SECRET-2"), "`ms`"),
        (OpCall::new("test.echo_numeric").param("n", "1e5"), "`n`"),
        (OpCall::new("test.echo_numeric").param("n", 12.5), "`n`"),
        (
            OpCall::new("test.insert_item")
                .param("id", "x")
                .param("quantity", 3_000_000_000i64),
            "`quantity`",
        ),
    ];
    for (call, name) in cases {
        let (status, body) = error_of(app.call(&call).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{call:?}");
        assert_eq!(body.error.code, codes::INVALID_PARAMS);
        assert!(
            body.error.message.contains(name),
            "{:?} should name {name}",
            body.error.message
        );
        assert!(
            !body.error.message.contains("SECRET"),
            "{:?} leaks a value",
            body.error.message
        );
    }
}

#[tokio::test]
async fn unknown_operations_are_404() {
    let app = spawn_app().await;

    let (status, body) = error_of(app.call(&OpCall::new("users.drop_everything")).await).await;

    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body.error.code, codes::UNKNOWN_OPERATION);
    assert!(body.error.message.contains("users.drop_everything"));
}

#[tokio::test]
async fn bodies_that_are_not_op_calls_are_400_without_echoing_them() {
    let app = spawn_app().await;
    for body in [
        &b"{not json"[..],
        br#"{"op":"system.ping","sql":"DROP TABLE x"}"#,
        br#"{"op":"SECRET-3"#,
    ] {
        let response = app
            .post_signed(&app.full_key, "/v1/op", body.to_vec())
            .await;
        let (status, error) = error_of(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(error.error.code, codes::BAD_REQUEST);
        assert!(!error.error.message.contains("DROP") && !error.error.message.contains("SECRET"));
    }
}

#[tokio::test]
async fn unique_violation_is_409_conflict_without_sql_or_values() {
    let app = spawn_app().await;
    let insert = OpCall::new("test.insert_item")
        .param("id", "SECRET-ID-1")
        .param("quantity", 1);
    assert_eq!(app.call(&insert).await.status(), StatusCode::OK);

    let (status, body) = error_of(app.call(&insert).await).await;

    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body.error.code, codes::CONFLICT);
    assert!(
        body.error.message.contains("test_items_pkey"),
        "{}",
        body.error.message
    );
    for forbidden in [
        "SECRET-ID-1",
        "INSERT",
        "test_items (",
        "VALUES",
        "duplicate key value",
    ] {
        assert!(
            !body.error.message.contains(forbidden),
            "{} leaks {forbidden}",
            body.error.message
        );
    }
}

#[tokio::test]
async fn check_violation_is_422_and_update_counts_affected_rows() {
    let app = spawn_app().await;
    app.call(
        &OpCall::new("test.insert_item")
            .param("id", "a")
            .param("quantity", 1),
    )
    .await;

    let updated = ok_result(
        app.call(
            &OpCall::new("test.set_quantity")
                .param("id", "a")
                .param("quantity", 5),
        )
        .await,
    )
    .await;
    assert_eq!(
        updated.row_count, 1,
        "rows affected by a statement without RETURNING"
    );
    assert!(updated.rows.is_empty());
    let (status, body) = error_of(
        app.call(
            &OpCall::new("test.set_quantity")
                .param("id", "a")
                .param("quantity", -1),
        )
        .await,
    )
    .await;

    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body.error.code, codes::CONSTRAINT_VIOLATION);
    assert!(
        body.error
            .message
            .contains("test_items_quantity_non_negative")
    );
}

#[tokio::test]
async fn expect_one_turns_zero_rows_into_precondition_failed() {
    let app = spawn_app().await;
    app.call(
        &OpCall::new("test.insert_item")
            .param("id", "a")
            .param("quantity", 2),
    )
    .await;

    let taken = ok_result(
        app.call(
            &OpCall::new("test.take_item")
                .param("id", "a")
                .param("quantity", 2),
        )
        .await,
    )
    .await;
    assert_eq!(taken.first().unwrap()["quantity"], json!(0));
    let (status, body) = error_of(
        app.call(
            &OpCall::new("test.take_item")
                .param("id", "a")
                .param("quantity", 1),
        )
        .await,
    )
    .await;

    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body.error.code, codes::PRECONDITION_FAILED);
    assert_eq!(body.error.message, "not enough items");
}

#[tokio::test]
async fn an_operation_over_its_statement_timeout_is_504() {
    let app = spawn_app().await;

    let (status, body) = error_of(
        app.call(&OpCall::new("test.sleep_with_short_timeout").param("ms", 1000))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body.error.code, codes::TIMEOUT);

    // The override was SET LOCAL: the same pooled connection keeps the default afterwards.
    let within = app.call(&OpCall::new("test.sleep").param("ms", 300)).await;
    assert_eq!(within.status(), StatusCode::OK);
    let short_but_fast = app
        .call(&OpCall::new("test.sleep_with_short_timeout").param("ms", 1))
        .await;
    assert_eq!(short_but_fast.status(), StatusCode::OK);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let app = spawn_app_with(TestOptions {
        body_limit_bytes: 1024,
        ..TestOptions::default()
    })
    .await;
    let big = OpCall::new("test.echo_numeric").param("n", "1".repeat(2000));

    let (status, body) = error_of(app.call(&big).await).await;

    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body.error.code, codes::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn chunked_bodies_over_the_limit_are_413_too() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = spawn_app_with(TestOptions {
        body_limit_bytes: 1024,
        ..TestOptions::default()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(app.api_addr).await.unwrap();
    let chunk = "x".repeat(600);
    let request = format!(
        "POST /v1/op HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        app.api_addr,
        len = chunk.len()
    );

    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;

    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"));
}

#[tokio::test]
async fn the_bench_op_is_the_pgbench_select_and_only_exists_when_enabled() {
    let plain = spawn_app().await;
    let (status, _) = error_of(
        plain
            .call(&OpCall::new("bench.account_balance").param("aid", 1))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let app = spawn_app_with(TestOptions {
        bench_ops: true,
        ..TestOptions::default()
    })
    .await;
    // The shape `pgbench -i` creates; the gateway started before it existed.
    app.database
        .client()
        .await
        .batch_execute(
            "CREATE TABLE pgbench_accounts (aid int NOT NULL PRIMARY KEY, bid int, abalance int, filler char(84));
             INSERT INTO pgbench_accounts VALUES (1, 1, -42, ''), (2, 1, 7, '');",
        )
        .await
        .unwrap();

    let result = ok_result(
        app.call(&OpCall::new("bench.account_balance").param("aid", 1))
            .await,
    )
    .await;

    assert_eq!(
        result.rows,
        vec![json!({"abalance": -42}).as_object().unwrap().clone()]
    );
}
