//! The ElevenLabs simulator over a real WebSocket client.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use callmeback_simulators::codec::{SegmentDecoder, SegmentEvent};
use callmeback_simulators::{Simulators, TtsConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const MULTI: &str = "/v1/text-to-speech/voice123/multi-stream-input?model_id=eleven_flash_v2_5&output_format=ulaw_8000";

async fn connect(
    sims: &Simulators,
    path_and_query: &str,
    key: Option<&str>,
) -> Result<Ws, WsError> {
    let mut request = format!("{}{path_and_query}", sims.ws_base_url())
        .into_client_request()
        .expect("url");
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("xi-api-key", HeaderValue::from_str(key).expect("header"));
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string()))
        .await
        .expect("send");
}

/// Reads messages until `stop` says so, the server closes, or `limit` passes.
async fn read_until(
    ws: &mut Ws,
    limit: Duration,
    stop: impl Fn(&Value) -> bool,
) -> (Vec<Value>, Option<(u16, String)>) {
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let value: Value = serde_json::from_str(text.as_str()).expect("JSON");
                let done = stop(&value);
                messages.push(value);
                if done {
                    return (messages, None);
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                return (
                    messages,
                    frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                );
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) | Err(_) => return (messages, None),
        }
    }
}

fn is_final_for(context: &'static str) -> impl Fn(&Value) -> bool {
    move |m| m["isFinal"] == true && m["contextId"] == context
}

fn decoded_texts(messages: &[Value]) -> Vec<String> {
    let mut decoder = SegmentDecoder::new();
    let mut events = Vec::new();
    for m in messages {
        if let Some(audio) = m["audio"].as_str() {
            decoder.feed(&STANDARD.decode(audio).expect("base64"), &mut events);
        }
    }
    events
        .into_iter()
        .filter_map(|e| match e {
            SegmentEvent::Started { info, .. } => Some(info.text),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn multi_context_generates_sentences_flushes_and_bills_characters() {
    let sims = common::start_sims().await;
    let mut ws = connect(&sims, MULTI, Some("sim-elevenlabs-key"))
        .await
        .expect("handshake");
    send(
        &mut ws,
        json!({"text": " ", "context_id": "c1", "voice_settings": {"stability": 0.5, "similarity_boost": 0.8, "speed": 1.1}, "generation_config": {"chunk_length_schedule": [200, 250]}}),
    )
    .await;
    send(
        &mut ws,
        json!({"text": "Hello there. How are", "context_id": "c1"}),
    )
    .await;
    let (first, _) = read_until(&mut ws, Duration::from_secs(2), |m| m["audio"].is_string()).await;
    send(
        &mut ws,
        json!({"text": " you? ", "context_id": "c1", "flush": true}),
    )
    .await;
    let (rest, _) = read_until(&mut ws, Duration::from_secs(2), is_final_for("c1")).await;
    let messages: Vec<Value> = first.into_iter().chain(rest).collect();
    assert_eq!(
        decoded_texts(&messages),
        vec!["Hello there.", "How are you?"]
    );
    let audio: Vec<&Value> = messages.iter().filter(|m| m["audio"].is_string()).collect();
    for m in &audio {
        assert_eq!(m["contextId"], "c1");
        assert_eq!(m["isFinal"], Value::Null);
        assert!(
            m["alignment"]["chars"].is_array() && m["alignment"]["charStartTimesMs"].is_array()
        );
    }
    // 250 ms of μ-law per message by default; "Hello there." is 12 chars → 780 ms + 120 ms pause.
    let first_len = STANDARD
        .decode(audio[0]["audio"].as_str().expect("audio"))
        .expect("b64")
        .len();
    assert_eq!(first_len, 2000);
    assert_eq!(audio[0]["alignment"]["chars"][0], "H");
    let last = messages.last().expect("final");
    assert_eq!(last, &json!({"isFinal": true, "contextId": "c1"}));

    let record = sims.tts().records().remove(0);
    assert_eq!(record.auth_ok, Some(true));
    assert_eq!(record.characters_billed, 1 + 20 + 6);
    let context = &record.contexts[0];
    assert_eq!(context.text, " Hello there. How are you? ");
    assert_eq!(
        context.voice_settings.as_ref().map(|v| v["speed"].clone()),
        Some(json!(1.1))
    );
    assert_eq!(
        context
            .segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>(),
        vec!["Hello there.", "How are you?"]
    );
    assert!(
        context
            .segments
            .iter()
            .all(|s| s.first_audio_at.is_some() && s.audio_messages > 0)
    );
    assert!(context.final_sent_at.is_some());
}

#[tokio::test]
async fn close_context_drops_unsent_audio_and_answers_is_final() {
    let sims = common::start_sims().await;
    sims.tts().set_config(TtsConfig {
        time_to_first_byte_ms: 300,
        ..sims.tts().config()
    });
    let mut ws = connect(&sims, MULTI, Some("sim-elevenlabs-key"))
        .await
        .expect("handshake");
    send(
        &mut ws,
        json!({"text": "A reply that will be interrupted. ", "context_id": "old", "flush": true}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    send(&mut ws, json!({"context_id": "old", "close_context": true})).await;
    send(
        &mut ws,
        json!({"text": "New answer. ", "context_id": "new", "flush": true}),
    )
    .await;
    let (messages, _) = read_until(&mut ws, Duration::from_secs(3), is_final_for("new")).await;
    assert_eq!(messages[0], json!({"isFinal": true, "contextId": "old"}));
    assert!(
        messages
            .iter()
            .all(|m| m["contextId"] != "old" || m["audio"].is_null())
    );
    assert_eq!(decoded_texts(&messages), vec!["New answer."]);
    let record = sims.tts().records().remove(0);
    assert!(record.contexts[0].closed);
    assert!(record.contexts[0].segments[0].truncated);
    assert_eq!(record.contexts[0].segments[0].first_audio_at, None);
    // Messages to a closed context are ignored and noted.
    send(
        &mut ws,
        json!({"text": "Too late. ", "context_id": "old", "flush": true}),
    )
    .await;
    send(&mut ws, json!({"text": "", "context_id": "new"})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        sims.tts().records()[0]
            .violations
            .iter()
            .any(|v| v.contains("closed context"))
    );
}

#[tokio::test]
async fn auto_mode_generates_every_message_and_ttfb_is_honoured() {
    let sims = common::start_sims().await;
    sims.tts().set_config(TtsConfig {
        time_to_first_byte_ms: 150,
        ..sims.tts().config()
    });
    let mut ws = connect(
        &sims,
        &format!("{MULTI}&auto_mode=true"),
        Some("sim-elevenlabs-key"),
    )
    .await
    .expect("handshake");
    let sent = Instant::now();
    send(
        &mut ws,
        json!({"text": "no sentence end here", "context_id": "a"}),
    )
    .await;
    let (messages, _) =
        read_until(&mut ws, Duration::from_secs(2), |m| m["audio"].is_string()).await;
    assert!(sent.elapsed() >= Duration::from_millis(150));
    assert_eq!(decoded_texts(&messages), vec!["no sentence end here"]);
}

#[tokio::test]
async fn strict_about_format_keys_and_voice_settings() {
    let sims = common::start_sims().await;
    let wrong_format = "/v1/text-to-speech/v/multi-stream-input?output_format=mp3_44100_128";
    let mut ws = connect(&sims, wrong_format, Some("sim-elevenlabs-key"))
        .await
        .expect("handshake");
    let (_, close) = read_until(&mut ws, Duration::from_secs(2), |_| false).await;
    let (code, reason) = close.expect("closed");
    assert_eq!(code, 1008);
    assert!(reason.contains("unsupported output format"), "{reason}");

    let mut ws = connect(&sims, MULTI, Some("wrong-key"))
        .await
        .expect("handshake");
    let (_, close) = read_until(&mut ws, Duration::from_secs(2), |_| false).await;
    assert_eq!(close.map(|c| c.0), Some(1008));

    // Key in the first message instead of the header.
    let mut ws = connect(&sims, MULTI, None).await.expect("handshake");
    send(&mut ws, json!({"text": "Hi. ", "context_id": "c", "xi_api_key": "sim-elevenlabs-key", "flush": true})).await;
    let (messages, close) = read_until(&mut ws, Duration::from_secs(2), is_final_for("c")).await;
    assert_eq!(close, None);
    assert_eq!(decoded_texts(&messages), vec!["Hi."]);

    // Key as the `authorization` query parameter.
    let mut ws = connect(
        &sims,
        &format!("{MULTI}&authorization=sim-elevenlabs-key"),
        None,
    )
    .await
    .expect("handshake");
    send(
        &mut ws,
        json!({"text": "Hey. ", "context_id": "q", "flush": true}),
    )
    .await;
    let (messages, _) = read_until(&mut ws, Duration::from_secs(2), is_final_for("q")).await;
    assert_eq!(decoded_texts(&messages), vec!["Hey."]);

    let mut ws = connect(&sims, MULTI, Some("sim-elevenlabs-key"))
        .await
        .expect("handshake");
    send(
        &mut ws,
        json!({"text": " ", "context_id": "c", "voice_settings": {"speed": 1.5}}),
    )
    .await;
    let (_, close) = read_until(&mut ws, Duration::from_secs(2), |_| false).await;
    let (code, reason) = close.expect("closed");
    assert_eq!(code, 1008);
    assert!(reason.contains("speed"), "{reason}");

    let auth: Vec<Option<bool>> = sims.tts().records().iter().map(|r| r.auth_ok).collect();
    assert_eq!(
        auth,
        vec![None, Some(false), Some(true), Some(true), Some(true)]
    );
}

#[tokio::test]
async fn single_context_stream_input_closes_on_empty_text() {
    let sims = common::start_sims().await;
    let path = "/v1/text-to-speech/voice123/stream-input?model_id=eleven_flash_v2_5&output_format=ulaw_8000&inactivity_timeout=30";
    let mut ws = connect(&sims, path, Some("sim-elevenlabs-key"))
        .await
        .expect("handshake");
    send(
        &mut ws,
        json!({"text": " ", "voice_settings": {"stability": 0.4}}),
    )
    .await;
    send(&mut ws, json!({"text": "One sentence. And a tail"})).await;
    send(&mut ws, json!({"text": ""})).await;
    let (messages, close) = read_until(&mut ws, Duration::from_secs(2), |_| false).await;
    assert_eq!(close.map(|c| c.0), Some(1000));
    assert_eq!(
        decoded_texts(&messages),
        vec!["One sentence.", "And a tail"]
    );
    assert!(messages.iter().all(|m| m.get("contextId").is_none()));
    assert_eq!(messages.last(), Some(&json!({"isFinal": true})));
}

#[tokio::test]
async fn injected_failures_and_inactivity() {
    let sims = common::start_sims().await;
    sims.tts().set_config(TtsConfig {
        refuse_handshakes: 1,
        silent_generations: 1,
        ..sims.tts().config()
    });
    match connect(&sims, MULTI, Some("sim-elevenlabs-key")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    let mut ws = connect(&sims, MULTI, Some("sim-elevenlabs-key"))
        .await
        .expect("handshake");
    send(
        &mut ws,
        json!({"text": "Silent one. ", "context_id": "s", "flush": true}),
    )
    .await;
    let (messages, _) = read_until(&mut ws, Duration::from_secs(2), is_final_for("s")).await;
    assert_eq!(messages, vec![json!({"isFinal": true, "contextId": "s"})]);
    assert!(sims.tts().records()[1].contexts[0].segments[0].silent);

    sims.tts().set_config(TtsConfig {
        close_after_messages: Some(2),
        ..sims.tts().config()
    });
    let mut ws = connect(&sims, MULTI, Some("sim-elevenlabs-key"))
        .await
        .expect("handshake");
    send(&mut ws, json!({"text": " ", "context_id": "d"})).await;
    send(
        &mut ws,
        json!({"text": "Never spoken. ", "context_id": "d", "flush": true}),
    )
    .await;
    let (messages, close) = read_until(&mut ws, Duration::from_secs(2), |_| false).await;
    assert!(messages.is_empty());
    assert_eq!(close, None, "dropped without a close frame");
    assert_eq!(
        sims.tts().records()[2].closed_by.as_deref(),
        Some("dropped")
    );

    let mut ws = connect(
        &sims,
        &format!("{MULTI}&inactivity_timeout=1"),
        Some("sim-elevenlabs-key"),
    )
    .await
    .expect("handshake");
    let started = Instant::now();
    let (_, close) = read_until(&mut ws, Duration::from_secs(3), |_| false).await;
    assert_eq!(close.map(|c| c.0), Some(1008));
    assert!(started.elapsed() >= Duration::from_millis(950));
}
