//! The media socket driven by hand, as a (misbehaving) Twilio would: the handshake's signature,
//! the stream token, and every kind of malformed message. The simulated callee never answers
//! (its call keeps ringing), so the test's own client is the call's only media stream.

mod conv_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use callmeback_domain::ids::{new_id, prefix};
use callmeback_e2e::{Stack, unix_now};
use callmeback_simulators::codec;
use callmeback_simulators::twilio::{Outcome, Scenario};
use conv_support::*;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A stack whose calls to `phone` ring for two minutes and are never answered by the simulator.
async fn ringing_stack(phone: &str) -> Stack {
    let stack = Stack::start_with_vars(&[("CALL_RING_TIMEOUT_SECS", "600")]).await;
    fast_speech(&stack);
    stack.sims.twilio().set_scenario(
        phone,
        Scenario {
            outcome: Outcome::NoAnswer,
            ring_ms: 120_000,
            ..Scenario::default()
        },
    );
    stack
}

fn media_url(stack: &Stack, call_id: &str) -> String {
    format!(
        "{}/twilio/media/{call_id}",
        stack.worker_url.replacen("http", "ws", 1)
    )
}

/// What Twilio signs a stream handshake with: the URL alone.
fn twilio_signature(url: &str) -> String {
    let token = callmeback_simulators::SimConfig::default()
        .twilio
        .auth_token;
    callmeback_simulators::twilio::signature::compute(&token, url, &[])
}

async fn connect(url: &str, signature: Option<&str>) -> Result<Ws, WsError> {
    let mut request = url.into_client_request().expect("a WebSocket URL");
    if let Some(signature) = signature {
        request.headers_mut().insert(
            "X-Twilio-Signature",
            HeaderValue::from_str(signature).expect("header"),
        );
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

fn refused_with(result: Result<Ws, WsError>) -> u16 {
    match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("refused, but not with an HTTP status: {other}"),
        Ok(_) => panic!("the handshake was accepted"),
    }
}

fn start_message(stream_sid: &str, call_sid: &str, token: Option<&str>) -> String {
    let parameters = match token {
        Some(token) => json!({"token": token}),
        None => json!({}),
    };
    json!({
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": callmeback_simulators::SimConfig::default().twilio.account_sid,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "customParameters": parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": stream_sid,
    })
    .to_string()
}

fn media_message(stream_sid: &str, audio: &[u8]) -> String {
    json!({
        "event": "media",
        "streamSid": stream_sid,
        "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": STANDARD.encode(audio)},
    })
    .to_string()
}

/// What the server sent on a socket: its JSON messages, and the close code if it closed it.
#[derive(Debug, Clone, Default)]
struct Received {
    messages: Arc<Mutex<Vec<Value>>>,
    close: Arc<Mutex<Option<u16>>>,
}

impl Received {
    fn media_count(&self) -> usize {
        self.messages
            .lock()
            .expect("messages")
            .iter()
            .filter(|m| m["event"] == "media")
            .count()
    }
}

/// Splits a socket: a task records what arrives; the sink is returned for sending.
fn drive(ws: Ws) -> (futures_util::stream::SplitSink<Ws, Message>, Received) {
    let (sink, mut stream) = ws.split();
    let received = Received::default();
    let record = received.clone();
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Text(text) => {
                    if let Ok(value) = serde_json::from_str(text.as_str()) {
                        record.messages.lock().expect("messages").push(value);
                    }
                }
                Message::Close(frame) => {
                    *record.close.lock().expect("close") =
                        Some(frame.map_or(1005, |f| u16::from(f.code)));
                }
                _ => {}
            }
        }
    });
    (sink, received)
}

async fn wait_until(stack: &Stack, what: &str, mut done: impl FnMut() -> bool) {
    eventually(stack, what, Duration::from_secs(20), async || {
        done().then_some(())
    })
    .await;
}

/// Sends 20 ms media frames in real time: `text` as simulated speech, then `silence_ms` of silence.
async fn speak(
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
    stream_sid: &str,
    text: &str,
    silence_ms: u64,
) {
    let speech = codec::encode_segment(
        codec::next_segment_id(),
        text,
        codec::duration_for(text, 15),
    );
    let silence = vec![codec::SILENCE; (silence_ms * codec::BYTES_PER_MS) as usize];
    let start = Instant::now();
    for (n, frame) in speech
        .chunks(codec::FRAME_BYTES)
        .chain(silence.chunks(codec::FRAME_BYTES))
        .enumerate()
    {
        let due = start + Duration::from_millis(20 * n as u64);
        tokio::time::sleep_until(due.into()).await;
        sink.send(Message::text(media_message(stream_sid, frame)))
            .await
            .expect("the call's socket stays open");
    }
}

fn stream_sid() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("MZ{hex}")
}

#[tokio::test]
async fn the_media_socket_needs_twilio_s_signature_and_the_call_s_own_token() {
    let phone = "+14155550121";
    let stack = ringing_stack(phone).await;
    let user = user(&stack, "sig@example.com", phone, "basic", 10).await;
    let call_id = place_call(&stack, &user).await;
    let ringing = sim_call(&stack, phone).await;
    let url = media_url(&stack, &call_id);

    // The handshake: Twilio's signature of this URL, nothing else.
    assert_eq!(refused_with(connect(&url, None).await), 403);
    let forged = callmeback_simulators::twilio::signature::compute("not-the-token", &url, &[]);
    assert_eq!(refused_with(connect(&url, Some(&forged)).await), 403);
    let elsewhere = format!("{url}x");
    assert_eq!(
        refused_with(connect(&url, Some(&twilio_signature(&elsewhere))).await),
        403
    );
    let unknown = media_url(&stack, &new_id(prefix::CALL, [3; 16]));
    assert_eq!(
        refused_with(connect(&unknown, Some(&twilio_signature(&unknown))).await),
        404
    );

    // A signed handshake, but a start without this call's valid token: closed (policy).
    let secret = &stack.media_stream_secret;
    let other_call = new_id(prefix::CALL, [5; 16]);
    let bad_tokens = [
        None,
        Some(callmeback_auth::capability::media_stream_token(
            secret,
            &other_call,
            unix_now(),
        )),
        Some(callmeback_auth::capability::media_stream_token(
            secret,
            &call_id,
            unix_now() - 3600,
        )),
        Some(callmeback_auth::capability::media_stream_token(
            b"another secret of 32 bytes......",
            &call_id,
            unix_now(),
        )),
    ];
    for token in &bad_tokens {
        let ws = connect(&url, Some(&twilio_signature(&url)))
            .await
            .unwrap_or_else(|e| panic!("signed handshake refused: {e}\n{}", stack.worker_log()));
        let (mut sink, received) = drive(ws);
        let sid = stream_sid();
        sink.send(Message::text(start_message(
            &sid,
            &ringing.sid,
            token.as_deref(),
        )))
        .await
        .expect("send start");
        wait_until(&stack, "the socket is closed", || {
            received.close.lock().expect("close").is_some()
        })
        .await;
        assert_eq!(
            *received.close.lock().expect("close"),
            Some(u16::from(CloseCode::Policy)),
            "{token:?}"
        );
        assert_eq!(
            received.media_count(),
            0,
            "nothing is played to a refused stream"
        );
    }

    // The refused sockets did not take the call's place: Twilio's real stream still gets in and
    // hears the greeting.
    let ws = connect(&url, Some(&twilio_signature(&url)))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the call's own stream was refused: {e}\n{}",
                stack.worker_log()
            )
        });
    let (mut sink, received) = drive(ws);
    let sid = stream_sid();
    let token = callmeback_auth::capability::media_stream_token(secret, &call_id, unix_now());
    sink.send(Message::text(start_message(
        &sid,
        &ringing.sid,
        Some(&token),
    )))
    .await
    .expect("send start");
    wait_until(&stack, "the greeting is played", || {
        received.media_count() > 0
    })
    .await;
    // A second stream while this one runs is refused.
    assert_eq!(
        refused_with(connect(&url, Some(&twilio_signature(&url))).await),
        409
    );
    sink.send(Message::text(
        json!({"event": "stop", "streamSid": sid, "stop": {"accountSid": "AC", "callSid": ringing.sid}})
            .to_string(),
    ))
    .await
    .expect("send stop");
    let call = outcome(&stack, &user, &call_id).await;
    assert_eq!(call["status"], "completed", "{call}");
    let refused: u64 = failures(&call)
        .iter()
        .filter(|(_, kind, _)| kind == "dropped_frames:invalid_stream_token")
        .map(|(_, _, count)| count)
        .sum();
    assert_eq!(refused, bad_tokens.len() as u64, "{call}");
}

#[tokio::test]
async fn malformed_messages_are_dropped_and_counted_and_the_call_goes_on() {
    let phone = "+14155550122";
    let stack = ringing_stack(phone).await;
    let user = user(&stack, "frames@example.com", phone, "basic", 10).await;
    let call_id = place_call(&stack, &user).await;
    let ringing = sim_call(&stack, phone).await;
    let url = media_url(&stack, &call_id);
    let ws = connect(&url, Some(&twilio_signature(&url)))
        .await
        .unwrap_or_else(|e| panic!("signed handshake refused: {e}\n{}", stack.worker_log()));
    let (mut sink, received) = drive(ws);
    let sid = stream_sid();
    let token = callmeback_auth::capability::media_stream_token(
        &stack.media_stream_secret,
        &call_id,
        unix_now(),
    );
    let silence = [codec::SILENCE; codec::FRAME_BYTES];
    let send = async |sink: &mut futures_util::stream::SplitSink<Ws, Message>, message: Message| {
        sink.send(message).await.expect("the socket stays open");
    };

    send(
        &mut sink,
        Message::text(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#),
    )
    .await;
    // Out of order: media and a mark before the stream started.
    send(&mut sink, Message::text(media_message(&sid, &silence))).await;
    send(
        &mut sink,
        Message::text(
            json!({"event": "mark", "streamSid": sid, "mark": {"name": "m1"}}).to_string(),
        ),
    )
    .await;
    send(
        &mut sink,
        Message::text(start_message(&sid, &ringing.sid, Some(&token))),
    )
    .await;
    wait_until(&stack, "the greeting starts", || received.media_count() > 0).await;

    // Everything Twilio would never send, mixed with good audio.
    let oversized = vec![codec::SILENCE; 9000];
    let malformed = [
        Message::text("{not json"),
        Message::text(
            json!({"event": "media", "streamSid": sid, "media": {"payload": "!!!not base64!!!"}})
                .to_string(),
        ),
        Message::text(media_message(&sid, &oversized)),
        Message::text(media_message(
            "MZ00000000000000000000000000000000",
            &silence,
        )),
        Message::binary(silence.to_vec()),
        Message::text(start_message(&sid, &ringing.sid, Some(&token))),
        Message::text(json!({"event": "bogus", "streamSid": sid}).to_string()),
    ];
    for message in malformed {
        send(&mut sink, message).await;
        send(&mut sink, Message::text(media_message(&sid, &silence))).await;
    }

    // The call goes on: the caller speaks and the persona answers.
    let line = "Hello Brad, this is a test call.";
    speak(&mut sink, &sid, line, 400).await;
    let heard_before = received.media_count();
    eventually(
        &stack,
        "the persona answers the caller",
        Duration::from_secs(20),
        async || {
            let asked = stack.sims.llm().requests().iter().any(|r| {
                r.messages().iter().any(|m| {
                    m["content"]
                        .as_str()
                        .is_some_and(|c| c.contains("test call"))
                })
            });
            // Keep the line open like Twilio does: silence every 20 ms.
            sink.send(Message::text(media_message(&sid, &silence)))
                .await
                .ok()?;
            (asked && received.media_count() > heard_before + 3).then_some(())
        },
    )
    .await;
    sink.send(Message::text(
        json!({"event": "stop", "streamSid": sid, "stop": {"accountSid": "AC", "callSid": ringing.sid}})
            .to_string(),
    ))
    .await
    .expect("send stop");

    let call = outcome(&stack, &user, &call_id).await;
    assert_eq!(call["status"], "completed", "{call}");
    let transcript = lines(&call);
    assert_eq!(transcript[0].0, "assistant", "{call}");
    assert!(
        transcript
            .iter()
            .any(|(role, text, _)| role == "user" && text == line),
        "{call}"
    );
    let dropped = failures(&call);
    for (kind, count) in [
        ("media_before_start", 1),
        ("event_before_start", 1),
        ("invalid_json", 1),
        ("invalid_base64", 1),
        ("payload_too_large", 1),
        ("wrong_stream_sid", 1),
        ("binary_frame", 1),
        ("duplicate_start", 1),
        ("unknown_event", 1),
    ] {
        let kind = format!("dropped_frames:{kind}");
        assert!(
            dropped
                .iter()
                .any(|(provider, k, c)| provider == "telephony" && *k == kind && *c == count),
            "{kind} × {count} missing from {dropped:?}"
        );
    }
    // The same counts are in the call log row.
    let stored: Value = stack
        .db()
        .await
        .query_one(
            "SELECT failures FROM call_logs WHERE call_id = $1",
            &[&call_id],
        )
        .await
        .expect("log")
        .get(0);
    assert_eq!(stored, call["metrics"]["failures"]);
}
