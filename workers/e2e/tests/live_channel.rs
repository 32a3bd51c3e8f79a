//! The app's live channel end to end: `GET /api/live` (a WebSocket) opened with the bearer token
//! or a single-use ticket; a call's `call_status` events in order; `rate_limit_check` →
//! `rate_limit_status` and the `rate_limit_exceeded` push; logging out closes the session's
//! sockets and only those.

mod call_support;

use std::time::{Duration, Instant};

use call_support::{fast_twilio, place, post_call, short_conversation, unanswered};
use callmeback_e2e::Stack;
use callmeback_simulators::twilio::Outcome;
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(60);

fn live_url(stack: &Stack, query: &str) -> String {
    format!(
        "{}/api/live{query}",
        stack.worker_url.replacen("http://", "ws://", 1)
    )
}

/// Opens the live channel (with a bearer token, or by `?ticket=`); the HTTP status on refusal.
async fn connect(stack: &Stack, token: Option<&str>, query: &str) -> Result<Socket, u16> {
    let mut request = live_url(stack, query)
        .into_client_request()
        .expect("a WebSocket request");
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header value"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut socket, _)) => {
            let ready = next_message(&mut socket, WAIT).await;
            assert_eq!(
                ready,
                json!({"type": "ready"}),
                "the hub greets a new socket"
            );
            Ok(socket)
        }
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(error) => panic!("live channel handshake failed: {error}"),
    }
}

/// The next JSON message (fails the test on close or timeout).
async fn next_message(socket: &mut Socket, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no live message within {timeout:?}"))
            .expect("the socket is open")
            .expect("a readable frame");
        match message {
            Message::Text(text) => {
                return serde_json::from_str(text.as_str()).expect("live messages are JSON");
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected live frame: {other:?}"),
        }
    }
}

/// The next message of type `kind`, skipping others (transcript lines, other calls' events).
async fn next_of_type(socket: &mut Socket, kind: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let message =
            next_message(socket, deadline.saturating_duration_since(Instant::now())).await;
        if message["type"] == kind {
            return message;
        }
    }
}

/// `call_status` events of one call until a final one.
async fn call_statuses(socket: &mut Socket, call_id: &str) -> Vec<String> {
    let mut statuses = Vec::new();
    loop {
        let event = next_of_type(socket, "call_status").await;
        if event["call_id"] != call_id {
            continue;
        }
        let status = event["status"].as_str().expect("status").to_owned();
        let last = matches!(
            status.as_str(),
            "completed" | "failed" | "busy" | "no_answer" | "canceled" | "voicemail"
        );
        statuses.push(status);
        if last {
            return statuses;
        }
    }
}

/// Waits for the server to close the socket; returns the close code.
async fn closed_with(socket: &mut Socket) -> u16 {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.next()).await {
            Err(_) => panic!("the socket was not closed within {WAIT:?}"),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return frame.map_or(1005, |f| u16::from(f.code));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(error))) => panic!("socket error instead of a close: {error}"),
            Ok(None) => panic!("the socket ended without a close frame"),
        }
    }
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .expect("send on the live socket");
}

#[tokio::test]
async fn the_live_channel_follows_calls_and_limits_and_closes_with_its_session() {
    let stack = Stack::start().await;
    fast_twilio(&stack);
    let email = "live@example.com";
    let (token, user_id) = stack.register_with_phone(email, "+14155550200").await;
    stack.set_tier(&user_id, "basic", 10).await;

    // Who may open it.
    assert_eq!(connect(&stack, None, "").await.err(), Some(401));
    assert_eq!(
        connect(&stack, Some("not-a-token"), "").await.err(),
        Some(401)
    );
    let mut phone = connect(&stack, Some(&token), "")
        .await
        .expect("bearer socket");
    let (status, ticket) = stack
        .json(Method::POST, "/api/live/ticket", Some(&token), None)
        .await;
    assert_eq!(status, 201, "{ticket}");
    let ticket_url = ticket["url"].as_str().expect("ticket url");
    let query = ticket_url.trim_start_matches("/api/live");
    let mut browser = connect(&stack, None, query).await.expect("ticket socket");
    assert_eq!(
        connect(&stack, None, query).await.err(),
        Some(401),
        "a ticket opens one socket"
    );
    assert_eq!(
        connect(&stack, None, "?ticket=forged.ticket").await.err(),
        Some(401)
    );
    // Another session of the same user (another device), which outlives the first one's logout.
    let other_token = stack.login(email).await;
    let mut tablet = connect(&stack, Some(&other_token), "")
        .await
        .expect("second session socket");

    // A call's statuses, in order, on every socket of the user.
    let number = "+14155550201";
    stack
        .sims
        .twilio()
        .set_scenario(number, short_conversation());
    let call_id = place(&stack, &token, number).await;
    let expected = ["calling", "connected", "in_progress", "completed"];
    for (device, socket) in [
        ("phone", &mut phone),
        ("browser", &mut browser),
        ("tablet", &mut tablet),
    ] {
        let statuses = call_statuses(socket, &call_id).await;
        assert_eq!(statuses, expected, "{device}\n{}", stack.worker_log());
    }

    // Asking for a number's status; an invalid number gets an error message.
    send(
        &mut phone,
        json!({"type": "rate_limit_check", "phone_number": number}),
    )
    .await;
    let status = next_of_type(&mut phone, "rate_limit_status").await;
    assert_eq!(status["remaining"], 1, "{status}");
    assert_eq!(status["limit"], 2, "{status}");
    assert_eq!(status["allowed"], true, "{status}");
    assert!(
        !status.to_string().contains("5550201"),
        "masked number: {status}"
    );
    send(
        &mut phone,
        json!({"type": "rate_limit_check", "phone_number": "12345"}),
    )
    .await;
    let error = next_of_type(&mut phone, "error").await;
    assert_eq!(error["code"], "invalid_phone", "{error}");

    // A refusal is pushed to the user's sockets.
    stack
        .sims
        .twilio()
        .set_scenario(number, unanswered(Outcome::Busy));
    let second = place(&stack, &token, number).await;
    let statuses = call_statuses(&mut phone, &second).await;
    assert_eq!(statuses, ["calling", "busy"]);
    let refused = post_call(
        &stack,
        Some(&token),
        json!({"persona_id": "brad", "phone_number": number}),
        None,
    )
    .await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    let pushed = next_of_type(&mut phone, "rate_limit_exceeded").await;
    assert_eq!(pushed["limit"], 2, "{pushed}");
    assert!(
        pushed["retry_after_secs"].as_u64().is_some_and(|s| s > 0),
        "{pushed}"
    );
    assert_eq!(pushed["remaining"], 0, "{pushed}");
    send(
        &mut browser,
        json!({"type": "rate_limit_check", "phone_number": number}),
    )
    .await;
    let status = next_of_type(&mut browser, "rate_limit_status").await;
    assert_eq!(
        (&status["remaining"], &status["allowed"]),
        (&json!(0), &json!(false)),
        "{status}"
    );

    // Logging out closes the session's sockets (header and ticket alike), not the other
    // session's.
    let (status, body) = stack
        .json(Method::POST, "/api/auth/logout", Some(&token), None)
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(closed_with(&mut phone).await, 4001);
    assert_eq!(closed_with(&mut browser).await, 4001);
    assert_eq!(
        connect(&stack, Some(&token), "").await.err(),
        Some(401),
        "a logged-out token opens nothing"
    );
    send(&mut tablet, json!({"type": "ping"})).await;
    assert_eq!(
        next_of_type(&mut tablet, "pong").await,
        json!({"type": "pong"})
    );
}
