//! Outbound connections from the Worker and its Durable Objects: WebSockets with headers (the
//! providers authenticate the handshake), and bounded HTTP requests.
//!
//! workers-rs' `WebSocket::connect` cannot set headers, so sockets are opened the way the
//! Workers runtime documents: a `fetch` of the `http(s)` URL with `Upgrade: websocket`, whose
//! response carries the socket.

use std::time::Duration;

use futures_util::future::{Either, select};
use worker::{
    AbortController, Delay, Fetch, Headers, Method, Request, RequestInit, Response, WebSocket,
};

/// Why an outbound connection failed (for logs: never contains a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundError {
    /// Could not connect, or no answer in time.
    Unreachable(String),
    /// The server answered but did not upgrade (status).
    Refused(u16),
}

impl std::fmt::Display for OutboundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutboundError::Unreachable(reason) => write!(f, "unreachable: {reason}"),
            OutboundError::Refused(status) => write!(f, "refused with status {status}"),
        }
    }
}

/// `wss://` → `https://`, `ws://` → `http://` (fetch only speaks HTTP(S)).
pub fn http_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = url.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        url.to_owned()
    }
}

/// Opens and accepts a WebSocket to `url` with the given handshake headers, within `timeout_ms`.
pub async fn open_websocket(
    url: &str,
    headers: &[(&str, &str)],
    timeout_ms: u64,
) -> Result<WebSocket, OutboundError> {
    let request_headers = Headers::new();
    let set = |name: &str, value: &str| {
        request_headers
            .set(name, value)
            .map_err(|e| OutboundError::Unreachable(e.to_string()))
    };
    set("upgrade", "websocket")?;
    for (name, value) in headers {
        set(name, value)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(request_headers);
    let request = Request::new_with_init(&http_url(url), &init)
        .map_err(|e| OutboundError::Unreachable(e.to_string()))?;
    let response = send_bounded(request, timeout_ms).await?;
    let status = response.status_code();
    let socket = response.websocket().ok_or(OutboundError::Refused(status))?;
    socket
        .accept()
        .map_err(|e| OutboundError::Unreachable(e.to_string()))?;
    Ok(socket)
}

/// Sends a request and waits at most `timeout_ms` for the response head.
pub async fn send_bounded(request: Request, timeout_ms: u64) -> Result<Response, OutboundError> {
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(request);
    let send = fetch.send_with_signal(&signal);
    let timeout = Delay::from(Duration::from_millis(timeout_ms));
    match select(Box::pin(send), timeout).await {
        Either::Left((result, _)) => result.map_err(|e| OutboundError::Unreachable(e.to_string())),
        Either::Right(((), _)) => {
            controller.abort();
            Err(OutboundError::Unreachable(format!(
                "no answer within {timeout_ms} ms"
            )))
        }
    }
}

/// A POST with a body and headers.
pub fn post(url: &str, headers: &[(&str, &str)], body: String) -> Result<Request, OutboundError> {
    let request_headers = Headers::new();
    for (name, value) in headers {
        request_headers
            .set(name, value)
            .map_err(|e| OutboundError::Unreachable(e.to_string()))?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(request_headers)
        .with_body(Some(body.into()));
    Request::new_with_init(url, &init).map_err(|e| OutboundError::Unreachable(e.to_string()))
}

/// Milliseconds since the epoch (the Workers clock advances between I/O events).
pub fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}
