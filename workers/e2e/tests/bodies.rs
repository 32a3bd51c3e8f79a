//! Request bodies end to end: size limits that hold for bodies without `Content-Length`, and
//! errors about bad bodies that name the field without repeating what was sent.

use std::time::{Duration, Instant};

use callmeback_e2e::{Stack, raw_http};
use reqwest::Method;
use serde_json::{Value, json};

/// `count` chunks of `size` spaces in HTTP/1.1 chunked framing (never the final empty chunk).
fn chunked(count: usize, size: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|_| {
            let mut chunk = format!("{size:x}\r\n").into_bytes();
            chunk.extend(std::iter::repeat_n(b' ', size));
            chunk.extend_from_slice(b"\r\n");
            chunk
        })
        .collect()
}

/// [`raw_http`], sent again while wrangler's dev proxy answers its own 503 "Your worker restarted
/// mid-request": after the Worker answers a request without reading all of its body (as a 413
/// must), the proxy's pooled connection to workerd is spent and the *next* request through it
/// fails at once with that message (it tells the client to retry; there is no such proxy in
/// production). Only that answer is retried.
async fn raw_http_through_dev_proxy(
    stack: &Stack,
    head: &[u8],
    chunks: &[Vec<u8>],
    wait: Duration,
) -> callmeback_e2e::RawAnswer {
    for _ in 0..3 {
        let answer = raw_http(stack, head, chunks, wait).await;
        if !(answer.status == Some(503) && answer.body.contains("restarted mid-request")) {
            return answer;
        }
    }
    panic!("wrangler's dev proxy kept answering 503")
}

#[tokio::test]
async fn chunked_bodies_are_refused_at_the_limit_without_reading_the_rest() {
    let stack = Stack::start().await;
    // A JSON route (64 KiB) and the Stripe webhook (256 KiB), each sent a chunked body larger
    // than its limit that never ends. The Worker used to read a body whole before checking its
    // size: it waited here for ever (and buffered tens of MB when they came).
    for (path, extra_headers, chunks) in [
        ("/api/auth/login", "", 12),
        (
            "/api/webhooks/stripe",
            "Stripe-Signature: t=1,v1=00\r\n",
            40,
        ),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n{extra_headers}\r\n"
        );
        let started = Instant::now();
        let answer = raw_http_through_dev_proxy(
            &stack,
            head.as_bytes(),
            &chunked(chunks, 8 * 1024),
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(
            answer.status,
            Some(413),
            "{path}: {answer:?}\n{}",
            stack.worker_log()
        );
        let body: Value = serde_json::from_str(&answer.body).expect("JSON");
        assert_eq!(body["error"]["code"], "payload_too_large", "{path}");
        assert!(started.elapsed() < Duration::from_secs(10), "{path}");
    }

    // Under the limit, a chunked body is read as before.
    let head = "POST /api/auth/login HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let body = br#"{"email": "nobody@example.com", "password": "x"}"#;
    let mut framed = format!("{:x}\r\n", body.len()).into_bytes();
    framed.extend_from_slice(body);
    framed.extend_from_slice(b"\r\n0\r\n\r\n");
    let answer =
        raw_http_through_dev_proxy(&stack, head.as_bytes(), &[framed], Duration::from_secs(15))
            .await;
    assert_eq!(answer.status, Some(401), "{answer:?}");

    // A declared length over the limit is refused before anything is read.
    let (status, body) = stack
        .json(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": "a@b.co", "password": "p".repeat(70 * 1024)})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
}

#[tokio::test]
async fn shape_errors_name_the_field_and_never_echo_what_was_sent() {
    let stack = Stack::start().await;
    let (status, body) = stack
        .json(
            Method::POST,
            "/api/auth/register",
            None,
            Some(json!({"email": "ada@example.com", "password": "correct horse", "phone": 14_155_550_123u64})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_body"))
    );
    assert_eq!(body["error"]["field"], "phone");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("must be a string"), "{message}");
    // It used to say `invalid type: integer `14155550123``.
    assert!(!body.to_string().contains("14155550123"), "{body}");

    // A 10 KB member name comes back as a bounded label, not whole.
    let name = format!("z{}", "Q".repeat(10 * 1024));
    let mut sent = json!({"email": "ada@example.com", "password": "correct horse"});
    sent[&name] = json!(1);
    let (status, body) = stack
        .json(Method::POST, "/api/auth/login", None, Some(sent))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_body"))
    );
    let field = body["error"]["field"].as_str().expect("field");
    assert!(field.starts_with("zQQQ") && field.ends_with('…'), "{field}");
    assert!(
        body.to_string().len() < 512,
        "{} bytes: {body}",
        body.to_string().len()
    );
}

#[tokio::test]
async fn a_nul_character_is_a_validation_error_not_a_crash() {
    let stack = Stack::start().await;
    stack.register("ada@example.com").await;
    for (path, sent) in [
        // Login used to pass the email to the gateway, whose database cannot store U+0000: 500.
        (
            "/api/auth/login",
            json!({"email": "ada\u{0}@example.com", "password": "correct horse battery staple"}),
        ),
        (
            "/api/auth/register",
            json!({"email": "bob\u{0}@example.com", "password": "correct horse battery staple"}),
        ),
    ] {
        let (status, body) = stack.json(Method::POST, path, None, Some(sent)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("validation_failed")),
            "{path}: {body}"
        );
        assert_eq!(
            body["error"]["fields"]["email"]["code"], "invalid_characters",
            "{path}"
        );
    }
    let token = stack.login("ada@example.com").await;
    let (status, body) = stack
        .json(
            Method::PUT,
            "/api/personas/brad/relationship",
            Some(&token),
            Some(json!({"custom_system_prompt": "be nice\u{0}"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["fields"]["custom_system_prompt"]["code"],
        "invalid_characters"
    );
}
