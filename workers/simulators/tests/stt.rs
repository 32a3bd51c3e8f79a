//! The Deepgram simulator over a real WebSocket client.

mod common;

use std::time::{Duration, Instant};

use callmeback_simulators::codec::{self, SILENCE};
use callmeback_simulators::{Simulators, SttConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const QUERY: &str = "model=nova-3&encoding=mulaw&sample_rate=8000&channels=1&interim_results=true&endpointing=300&utterance_end_ms=1000&vad_events=true&smart_format=true";

async fn connect(sims: &Simulators, query: &str, key: &str) -> Result<Ws, WsError> {
    let mut request = format!("{}/v1/listen?{query}", sims.ws_base_url())
        .into_client_request()
        .expect("valid URL");
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Token {key}")).expect("header"),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

fn silence(ms: usize) -> Vec<u8> {
    vec![SILENCE; ms * 8]
}

fn speech(text: &str) -> (u32, Vec<u8>) {
    let id = codec::next_segment_id();
    (
        id,
        codec::encode_segment(id, text, codec::duration_for(text, 65)),
    )
}

async fn send_audio(ws: &mut Ws, audio: &[u8]) {
    for chunk in audio.chunks(160) {
        ws.send(Message::binary(chunk.to_vec()))
            .await
            .expect("send audio");
    }
}

/// Collects JSON messages until the server closes; returns them and the close frame.
async fn collect(ws: &mut Ws, limit: Duration) -> (Vec<Value>, Option<(u16, String)>) {
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                messages.push(serde_json::from_str(text.as_str()).expect("JSON"))
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

fn of_type<'a>(messages: &'a [Value], kind: &str) -> Vec<&'a Value> {
    messages.iter().filter(|m| m["type"] == kind).collect()
}

#[tokio::test]
async fn recognises_codec_speech_with_interims_endpointing_and_utterance_end() {
    let sims = common::start_sims().await;
    let mut ws = connect(&sims, QUERY, "sim-deepgram-key")
        .await
        .expect("handshake");
    let (first_id, first) = speech("Hello there, how are you today?");
    let (second_id, second) = speech("I am fine.");
    let mut audio = silence(200);
    audio.extend(&first);
    audio.extend(silence(600));
    audio.extend(&second);
    audio.extend(silence(1500));
    send_audio(&mut ws, &audio).await;
    ws.send(Message::text(r#"{"type":"CloseStream"}"#))
        .await
        .expect("send");
    let (messages, close) = collect(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(close.map(|c| c.0), Some(1000));

    let started = of_type(&messages, "SpeechStarted");
    assert_eq!(started.len(), 2);
    assert!((started[0]["timestamp"].as_f64().expect("timestamp") - 0.2).abs() < 0.021);
    assert_eq!(started[0]["channel"], serde_json::json!([0, 1]));

    let results = of_type(&messages, "Results");
    let finals: Vec<&&Value> = results.iter().filter(|r| r["is_final"] == true).collect();
    assert_eq!(finals.len(), 2, "{results:#?}");
    let transcript = |r: &Value| {
        r["channel"]["alternatives"][0]["transcript"]
            .as_str()
            .expect("transcript")
            .to_owned()
    };
    assert_eq!(transcript(finals[0]), "Hello there, how are you today?");
    assert_eq!(transcript(finals[1]), "I am fine.");
    assert!(
        finals
            .iter()
            .all(|f| f["speech_final"] == true && f["from_finalize"] == false)
    );
    let words = finals[0]["channel"]["alternatives"][0]["words"]
        .as_array()
        .expect("words");
    assert_eq!(words.len(), 6);
    assert_eq!(words[0]["word"], "hello");
    assert_eq!(words[1]["punctuated_word"], "there,");
    assert!((words[0]["start"].as_f64().expect("start") - 0.2).abs() < 1e-6);
    for key in ["channel_index", "duration", "start", "metadata"] {
        assert!(!finals[0][key].is_null(), "Results lacks {key}");
    }
    assert_eq!(finals[0]["metadata"]["model_info"]["name"], "nova-3");

    // Interims grow word by word and come before their final.
    let interims: Vec<String> = results
        .iter()
        .filter(|r| r["is_final"] == false)
        .map(|r| transcript(r))
        .collect();
    assert!(interims.len() >= 4, "{interims:?}");
    assert!(interims[0].len() < interims[1].len() || interims[0] != interims[1]);
    assert!("Hello there, how are you today?".starts_with(&interims[0]));

    // 600 ms between the lines is less than utterance_end_ms: one UtteranceEnd, at the end.
    let ends = of_type(&messages, "UtteranceEnd");
    assert_eq!(ends.len(), 1);
    let last_word_end = ends[0]["last_word_end"].as_f64().expect("last_word_end");
    let expected_end = (200 + first.len() / 8 + 600 + second.len() / 8) as f64 / 1000.0;
    assert!(
        (last_word_end - expected_end).abs() < 0.01,
        "{last_word_end} vs {expected_end}"
    );

    let metadata = of_type(&messages, "Metadata");
    assert_eq!(metadata.len(), 1);
    assert!(
        (metadata[0]["duration"].as_f64().expect("duration") - audio.len() as f64 / 8000.0).abs()
            < 1e-9
    );
    assert_eq!(metadata[0]["channels"], 1);
    assert_eq!(metadata[0]["sha256"].as_str().map(str::len), Some(64));

    // Final order: a final's timestamp leads its UtteranceEnd; both recorded under the segment ids.
    let timings = sims.timings();
    let by_id = |id: u32| {
        timings
            .unassigned
            .iter()
            .find(|t| t.segment_id == id)
            .cloned()
            .expect("timing")
    };
    let (a, b) = (by_id(first_id), by_id(second_id));
    assert!(a.stt_final_sent_at.is_some() && b.stt_final_sent_at.is_some());
    assert!(a.stt_final_sent_at < b.stt_final_sent_at);
    assert_eq!(a.utterance_end_sent_at, b.utterance_end_sent_at);
    assert!(b.utterance_end_sent_at > b.stt_final_sent_at);

    let records = sims.stt().records();
    assert_eq!(records.len(), 1);
    assert!(records[0].auth_ok);
    assert_eq!(records[0].audio_bytes, audio.len() as u64);
    assert_eq!(records[0].closed_by.as_deref(), Some("server"));
    assert_eq!(
        records[0].query.get("model").map(String::as_str),
        Some("nova-3")
    );
}

#[tokio::test]
async fn handshake_auth_and_parameters() {
    let sims = common::start_sims().await;
    match connect(&sims, QUERY, "wrong").await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    match connect(
        &sims,
        "encoding=linear16&sample_rate=16000",
        "sim-deepgram-key",
    )
    .await
    {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("expected 400, got {:?}", other.map(|_| ())),
    }
    // Browser-style auth through Sec-WebSocket-Protocol.
    let mut request = format!("{}/v1/listen?{QUERY}", sims.ws_base_url())
        .into_client_request()
        .expect("url");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("token, sim-deepgram-key"),
    );
    let (_ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("subprotocol auth accepted");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("token")
    );

    // Injected refusal, then normal again.
    sims.stt().set_config(SttConfig {
        refuse_handshakes: 1,
        ..sims.stt().config()
    });
    match connect(&sims, QUERY, "sim-deepgram-key").await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    assert!(connect(&sims, QUERY, "sim-deepgram-key").await.is_ok());
    let refused: Vec<Option<u16>> = sims.stt().records().iter().map(|r| r.refused).collect();
    assert_eq!(refused, vec![Some(401), Some(400), None, Some(503), None]);
}

#[tokio::test]
async fn finalize_flushes_and_punctuation_follows_the_query() {
    let sims = common::start_sims().await;
    let mut ws = connect(
        &sims,
        "encoding=mulaw&sample_rate=8000&endpointing=false",
        "sim-deepgram-key",
    )
    .await
    .expect("handshake");
    let (_, line) = speech("Well, Hello THERE!");
    send_audio(&mut ws, &line).await;
    ws.send(Message::text(r#"{"type":"Finalize"}"#))
        .await
        .expect("send");
    ws.send(Message::text(r#"{"type":"CloseStream"}"#))
        .await
        .expect("send");
    let (messages, _) = collect(&mut ws, Duration::from_secs(5)).await;
    let finals: Vec<&Value> = of_type(&messages, "Results")
        .into_iter()
        .filter(|r| r["is_final"] == true)
        .collect();
    assert_eq!(finals.len(), 1, "{messages:#?}");
    assert_eq!(finals[0]["from_finalize"], true);
    assert_eq!(finals[0]["speech_final"], false);
    // No punctuate/smart_format: lower case, no punctuation.
    assert_eq!(
        finals[0]["channel"]["alternatives"][0]["transcript"],
        "well hello there"
    );
    // No interim_results, no vad_events: none of those.
    assert!(of_type(&messages, "SpeechStarted").is_empty());
    assert_eq!(sims.stt().records()[0].finalizes, 1);
}

#[tokio::test]
async fn idle_sockets_close_with_net_0001_and_bad_messages_with_1008() {
    let sims = common::start_sims().await;
    sims.stt().set_config(SttConfig {
        idle_timeout_ms: 300,
        ..sims.stt().config()
    });
    let mut ws = connect(&sims, QUERY, "sim-deepgram-key")
        .await
        .expect("handshake");
    let started = Instant::now();
    ws.send(Message::text(r#"{"type":"KeepAlive"}"#))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws.send(Message::text(r#"{"type":"KeepAlive"}"#))
        .await
        .expect("send");
    let (_, close) = collect(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(close, Some((1011, "NET-0001".to_owned())));
    assert!(
        started.elapsed() >= Duration::from_millis(480),
        "KeepAlive resets the idle timer"
    );
    assert_eq!(sims.stt().records()[0].keepalives, 2);

    let mut ws = connect(&sims, QUERY, "sim-deepgram-key")
        .await
        .expect("handshake");
    ws.send(Message::text("not json")).await.expect("send");
    let (_, close) = collect(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(close.map(|c| c.0), Some(1008));
}

#[tokio::test]
async fn injected_drop_and_latency() {
    let sims = common::start_sims().await;
    sims.stt().set_config(SttConfig {
        drop_after_speech_ms: Some(200),
        ..sims.stt().config()
    });
    let mut ws = connect(&sims, QUERY, "sim-deepgram-key")
        .await
        .expect("handshake");
    let (_, line) = speech("This line is long enough to be cut off by the failure injection.");
    for chunk in line.chunks(160) {
        if ws.send(Message::binary(chunk.to_vec())).await.is_err() {
            break;
        }
    }
    let (messages, close) = collect(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(close, None, "dropped without a close frame");
    assert!(of_type(&messages, "Metadata").is_empty());
    let record = &sims.stt().records()[0];
    assert_eq!(record.closed_by.as_deref(), Some("dropped"));
    // Only the next connection is affected.
    assert_eq!(sims.stt().config().drop_after_speech_ms, None);

    sims.stt().set_config(SttConfig {
        latency_ms: 300,
        ..sims.stt().config()
    });
    let mut ws = connect(&sims, QUERY, "sim-deepgram-key")
        .await
        .expect("handshake");
    let (_, line) = speech("Short line.");
    let mut audio = line;
    audio.extend(silence(400));
    let sent = Instant::now();
    send_audio(&mut ws, &audio).await;
    let first_final = loop {
        match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let v: Value = serde_json::from_str(text.as_str()).expect("json");
                if v["is_final"] == true {
                    break sent.elapsed();
                }
            }
            other => panic!("no final: {other:?}"),
        }
    };
    assert!(first_final >= Duration::from_millis(300), "{first_final:?}");
}
