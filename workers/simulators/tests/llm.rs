//! The OpenAI-compatible LLM simulator over HTTP.

mod common;

use std::time::{Duration, Instant};

use callmeback_simulators::llm::{LlmFailure, LlmMode, UsageStyle};
use callmeback_simulators::{LlmConfig, Simulators};
use serde_json::{Value, json};

fn url(sims: &Simulators) -> String {
    format!("{}/v1/chat/completions", sims.base_url())
}

async fn post(sims: &Simulators, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url(sims))
        .bearer_auth("sim-llm-key")
        .json(&body)
        .send()
        .await
        .expect("answers")
}

/// Reads an SSE body into its `data:` payloads.
async fn events(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.expect("body");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data: prefix").to_owned())
        .collect()
}

fn request(stream: bool, usage: bool) -> Value {
    let mut body = json!({
        "model": "llama-3.3-70b",
        "messages": [
            {"role": "system", "content": "You are Brad, a friendly coach."},
            {"role": "user", "content": "I ran five kilometres today!"}
        ],
        "stream": stream,
        "temperature": 0.7,
    });
    if usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

#[tokio::test]
async fn streams_tokens_with_usage_on_the_last_chunk_like_cerebras() {
    let sims = common::start_sims().await;
    let payloads = events(post(&sims, request(true, true)).await).await;
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).expect("chunk JSON"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let id = chunks[0]["id"].clone();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["model"], "llama-3.3-70b");
        assert!(chunk["created"].is_i64() && chunk["system_fingerprint"].is_string());
    }
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        "I heard you say: I ran five kilometres today. Tell me more about that."
    );
    let content_chunks = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    let last = chunks.last().expect("last chunk");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    // prompt: ceil((31 + 28) / 4) + 3 * 2 = 21
    assert_eq!(last["usage"]["prompt_tokens"], 21);
    assert_eq!(last["usage"]["completion_tokens"], content_chunks);
    assert_eq!(last["usage"]["total_tokens"], 21 + content_chunks);
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c.get("usage").is_none())
    );

    let records = sims.llm().requests();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, "completed");
    assert_eq!(records[0].tokens_sent, content_chunks as u64);
    assert_eq!(
        records[0].messages()[1]["content"],
        "I ran five kilometres today!"
    );
}

#[tokio::test]
async fn openai_usage_style_non_streaming_and_max_tokens() {
    let sims = common::start_sims().await;
    sims.llm().set_config(LlmConfig {
        usage_style: UsageStyle::Openai,
        ..sims.llm().config()
    });
    let payloads = events(post(&sims, request(true, true)).await).await;
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).expect("json"))
        .collect();
    let usage_chunk = chunks.last().expect("usage chunk");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 21);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(chunks[chunks.len() - 2].get("usage").is_none());

    // Without include_usage: no usage anywhere.
    let payloads = events(post(&sims, request(true, false)).await).await;
    assert!(payloads.iter().all(|p| !p.contains("\"usage\"")));

    let response = post(&sims, request(false, false)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["usage"]["prompt_tokens"], 21);

    let mut limited = request(true, true);
    limited["max_tokens"] = json!(3);
    let payloads = events(post(&sims, limited).await).await;
    let last: Value = serde_json::from_str(&payloads[payloads.len() - 3]).expect("json");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    let usage: Value = serde_json::from_str(&payloads[payloads.len() - 2]).expect("json");
    assert_eq!(usage["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn auth_and_validation_errors_are_openai_shaped() {
    let sims = common::start_sims().await;
    let response = reqwest::Client::new()
        .post(url(&sims))
        .bearer_auth("wrong")
        .json(&request(true, false))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"].is_string());

    let response = post(&sims, json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}})).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["param"], "stream_options");
    assert_eq!(post(&sims, json!({"model": "m"})).await.status(), 400);
    let outcomes: Vec<String> = sims
        .llm()
        .requests()
        .into_iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(outcomes, vec!["unauthorized", "invalid", "invalid"]);
}

#[tokio::test]
async fn scripted_replies_summaries_and_injected_failures() {
    let sims = common::start_sims().await;
    sims.llm().set_config(LlmConfig {
        mode: LlmMode::Scripted,
        failures: [
            LlmFailure::Http500,
            LlmFailure::Empty,
            LlmFailure::SlowFirstToken { ms: 300 },
        ]
        .into(),
        ..sims.llm().config()
    });
    sims.llm()
        .push_replies(["First scripted reply.".to_owned()]);

    let response = post(&sims, request(true, false)).await;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "server_error");

    let payloads = events(post(&sims, request(true, true)).await).await;
    let content: String = payloads
        .iter()
        .filter(|p| *p != "[DONE]")
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, "");
    assert!(
        payloads
            .iter()
            .any(|p| p.contains("\"completion_tokens\":0"))
    );

    let started = Instant::now();
    let payloads = events(post(&sims, request(true, false)).await).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    let content: String = payloads
        .iter()
        .filter(|p| *p != "[DONE]")
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, "First scripted reply.");

    // Queue empty: echo. A summary request gets a summary.
    let mut summary = request(false, false);
    summary["messages"][0]["content"] = json!("Summarize this call in one sentence.");
    let body: Value = post(&sims, summary).await.json().await.expect("json");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Summary: the caller talked about I ran five kilometres today."
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_cancels_generation() {
    let sims = common::start_sims().await;
    sims.llm().set_config(LlmConfig {
        tokens_per_second: 20,
        ..sims.llm().config()
    });
    let mut response = post(&sims, request(true, true)).await;
    let mut received = 0;
    while let Some(chunk) = response.chunk().await.expect("bytes") {
        received += String::from_utf8_lossy(&chunk)
            .matches("\"content\"")
            .count();
        if received >= 4 {
            break;
        }
    }
    drop(response);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let record = &sims.llm().requests()[0];
    assert_eq!(record.outcome, "cancelled", "{record:?}");
    assert!(
        record.tokens_sent >= 3 && record.tokens_sent <= 8,
        "{}",
        record.tokens_sent
    );

    // Time to first token and rate are honoured.
    sims.llm().set_config(LlmConfig {
        time_to_first_token_ms: 200,
        tokens_per_second: 50,
        ..sims.llm().config()
    });
    let started = Instant::now();
    let _ = events(post(&sims, request(true, false)).await).await;
    let record = sims.llm().requests()[1].clone();
    let first = record.first_token_at.expect("first token") - record.at;
    let total = record.finished_at.expect("finished") - record.at;
    assert!(first >= 200_000, "first token after {first} µs");
    // 15 tokens at 50/s: about 280 ms after the first.
    assert!(total >= first + 250_000, "total {total} µs");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn hang_accepts_and_never_answers() {
    let sims = common::start_sims().await;
    sims.llm().set_config(LlmConfig {
        failures: [LlmFailure::Hang].into(),
        ..sims.llm().config()
    });
    let result = reqwest::Client::new()
        .post(url(&sims))
        .bearer_auth("sim-llm-key")
        .timeout(Duration::from_millis(400))
        .json(&request(true, false))
        .send()
        .await;
    assert!(result.is_err_and(|e| e.is_timeout()));
    assert_eq!(sims.llm().requests()[0].outcome, "hang");
    // The next request is normal again.
    assert_eq!(post(&sims, request(false, false)).await.status(), 200);
}
