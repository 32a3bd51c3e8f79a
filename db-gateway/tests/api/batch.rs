//! `/v1/batch`: one transaction, in order, all or nothing.

use callmeback_gateway_api::{BatchResponse, OpCall, codes};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, error_of, spawn_app};

fn insert(id: &str, quantity: i64) -> OpCall {
    OpCall::new("test.insert_item")
        .param("id", id)
        .param("quantity", quantity)
}

async fn item_count(app: &TestApp) -> String {
    let response = app.call(&OpCall::new("test.count_items")).await;
    let result: callmeback_gateway_api::OpResult = response.json().await.unwrap();
    result.first().unwrap()["n"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_batch_runs_in_order_and_answers_one_result_per_op() {
    let app = spawn_app().await;

    let response = app
        .batch(vec![
            insert("a", 5),
            OpCall::new("test.take_item")
                .param("id", "a")
                .param("quantity", 2),
            OpCall::new("test.count_items"),
        ])
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: BatchResponse = response.json().await.unwrap();
    assert_eq!(body.results.len(), 3);
    assert_eq!(body.results[0].first().unwrap()["quantity"], json!(5));
    assert_eq!(body.results[1].first().unwrap()["quantity"], json!(3));
    assert_eq!(
        body.results[2].first().unwrap()["n"],
        json!("1"),
        "later ops see earlier writes"
    );
}

#[tokio::test]
async fn a_failing_op_rolls_back_the_ones_before_it() {
    let app = spawn_app().await;

    let (status, body) = error_of(
        app.batch(vec![insert("first", 1), insert("first", 2)])
            .await,
    )
    .await;

    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body.error.code, codes::CONFLICT);
    assert_eq!(body.error.op_index, Some(1));
    assert_eq!(
        item_count(&app).await,
        "0",
        "the first insert was rolled back"
    );
}

#[tokio::test]
async fn a_failed_precondition_rolls_back_the_batch() {
    let app = spawn_app().await;
    app.call(&insert("stock", 1)).await;

    let (status, body) = error_of(
        app.batch(vec![
            insert("other", 1),
            OpCall::new("test.take_item")
                .param("id", "stock")
                .param("quantity", 5),
        ])
        .await,
    )
    .await;

    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body.error.code, codes::PRECONDITION_FAILED);
    assert_eq!(body.error.message, "not enough items");
    assert_eq!(body.error.op_index, Some(1));
    assert_eq!(item_count(&app).await, "1");
}

#[tokio::test]
async fn a_batch_is_validated_completely_before_it_runs() {
    let app = spawn_app().await;

    let (status, body) = error_of(
        app.batch(vec![insert("a", 1), OpCall::new("test.nope")])
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body.error.code, codes::UNKNOWN_OPERATION);
    assert_eq!(body.error.op_index, Some(1));

    let (status, body) = error_of(
        app.batch(vec![
            insert("a", 1),
            OpCall::new("test.sleep").param("ms", "x"),
        ])
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body.error.code, codes::INVALID_PARAMS);
    assert_eq!(body.error.op_index, Some(1));

    assert_eq!(item_count(&app).await, "0");
}

#[tokio::test]
async fn empty_and_oversized_batches_are_400() {
    let app = spawn_app().await;

    let (status, body) = error_of(app.batch(vec![]).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body.error.code, codes::BAD_REQUEST);

    let too_many = (0..=db_gateway::MAX_BATCH_OPS)
        .map(|_| OpCall::new("system.ping"))
        .collect();
    let (status, body) = error_of(app.batch(too_many).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.error.message.contains("50"));

    let at_limit = (0..db_gateway::MAX_BATCH_OPS)
        .map(|_| OpCall::new("system.ping"))
        .collect();
    assert_eq!(app.batch(at_limit).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_batch_of_reads_runs_read_only() {
    let app = spawn_app().await;

    let (status, body) = error_of(
        app.batch(vec![
            OpCall::new("test.count_items"),
            OpCall::new("test.mislabelled_write").param("id", "sneaky"),
        ])
        .await,
    )
    .await;

    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "a mislabelled op is a gateway bug"
    );
    assert_eq!(body.error.code, codes::INTERNAL);
    assert_eq!(body.error.message, "internal error");
    assert_eq!(body.error.op_index, Some(1));
    assert_eq!(item_count(&app).await, "0");
    let mixed = app
        .batch(vec![insert("a", 1), OpCall::new("test.count_items")])
        .await;
    assert_eq!(
        mixed.status(),
        StatusCode::OK,
        "a batch with a write is read-write"
    );
}
