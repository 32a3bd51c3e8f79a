//! The live channel: one `UserHub` Durable Object per user holds that user's app sockets.
//!
//! The app opens `GET /api/live` (a WebSocket; see `routes::live` for authentication) on every
//! device it runs on; the route checks the session and hands the upgrade to the user's hub, which
//! accepts it with the hibernation API, so an idle socket costs nothing. Call objects push events
//! to the hub (`POST /publish`): call statuses, transcript lines, budget warnings; the Worker
//! pushes `rate_limit_exceeded` when it refuses a call. Sockets can ask for a number's rate-limit
//! status (`rate_limit_check` → `rate_limit_status`).
//!
//! Each socket is tagged with its session's token id: logging out closes the sockets of that
//! session (`POST /revoke`), and a socket whose token has expired is closed at its next event.
//! Tickets (single-use, short-lived, for browsers) are accepted once: their nonces are kept until
//! they expire.

use std::cell::RefCell;
use std::collections::HashSet;
use std::time::Duration;

use callmeback_domain::calls::phone_key;
use callmeback_domain::{Decision, PhoneE164};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use worker::{
    DurableObject, Env, Method, Request, RequestInit, Response, Result, State, WebSocket,
    WebSocketIncomingMessage, WebSocketPair, durable_object,
};

use crate::config::Config;
use crate::limits::{LimitKey, Limiter};

/// Binding of the `UserHub` namespace.
pub const BINDING: &str = "USER_HUB";

/// Close code for a socket whose session ended (revoked or expired).
const SESSION_ENDED: u16 = 4001;

/// Who a socket belongs to (kept with the socket across hibernation).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Attachment {
    user_id: String,
    jti: String,
    /// Unix seconds: the session token's expiry.
    expires_at: i64,
}

/// What the Worker tells the hub about a new socket (internal protocol).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectInfo {
    pub user_id: String,
    pub jti: String,
    pub expires_at: i64,
    /// A ticket's nonce, which must not have been used before.
    pub ticket_nonce: Option<String>,
    pub ticket_expires_at: Option<i64>,
}

pub const CONNECT_INFO_HEADER: &str = "x-callmeback-connect";

#[allow(missing_debug_implementations)]
#[durable_object]
pub struct UserHub {
    state: State,
    env: Env,
    /// Ticket keys presented to this instance, claimed before any await (see `accept_socket`).
    claimed_tickets: RefCell<HashSet<String>>,
}

impl DurableObject for UserHub {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            claimed_tickets: RefCell::new(HashSet::new()),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        match (req.method(), req.path().as_str()) {
            (Method::Get, "/connect") => self.accept_socket(&req).await,
            (Method::Post, "/publish") => {
                let event: Value = req.json().await?;
                let text = event.to_string();
                let now = now_secs();
                let mut delivered = 0;
                for socket in self.state.get_websockets() {
                    if self.still_valid(&socket, now) {
                        let _ = socket.send_with_str(&text);
                        delivered += 1;
                    }
                }
                Response::from_json(&json!({"delivered": delivered}))
            }
            (Method::Post, "/revoke") => {
                #[derive(Deserialize)]
                struct Revoke {
                    jti: String,
                }
                let Revoke { jti } = req.json().await?;
                let sockets = self.state.get_websockets_with_tag(&jti_tag(&jti));
                for socket in &sockets {
                    let _ = socket.close(Some(SESSION_ENDED), Some("session revoked"));
                }
                Response::from_json(&json!({"closed": sockets.len()}))
            }
            _ => Response::error("not found", 404),
        }
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        if !self.still_valid(&ws, now_secs()) {
            return Ok(());
        }
        let WebSocketIncomingMessage::String(text) = message else {
            return send(
                &ws,
                &error_message("binary_not_supported", "send JSON text messages"),
            );
        };
        let Ok(request) = serde_json::from_str::<Value>(&text) else {
            return send(
                &ws,
                &error_message("invalid_json", "the message is not JSON"),
            );
        };
        match request.get("type").and_then(Value::as_str) {
            Some("ping") => send(&ws, &json!({"type": "pong"})),
            Some("rate_limit_check") => {
                let number = request
                    .get("phone_number")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let reply = match PhoneE164::parse(number) {
                    Ok(phone) => self.rate_limit_status(&phone).await,
                    Err(_) => error_message(
                        "invalid_phone",
                        "phone_number must be E.164, e.g. +14155550123",
                    ),
                };
                send(&ws, &reply)
            }
            _ => send(
                &ws,
                &error_message("unknown_type", "known types: ping, rate_limit_check"),
            ),
        }
    }

    async fn websocket_close(
        &self,
        _ws: WebSocket,
        _code: usize,
        _reason: String,
        _clean: bool,
    ) -> Result<()> {
        Ok(())
    }

    async fn websocket_error(&self, _ws: WebSocket, _error: worker::Error) -> Result<()> {
        Ok(())
    }

    async fn alarm(&self) -> Result<Response> {
        // Forget ticket nonces that can no longer be presented.
        let storage = self.state.storage();
        let now = now_secs();
        self.claimed_tickets
            .borrow_mut()
            .retain(|key| ticket_expiry(key).is_some_and(|expiry| expiry >= now));
        let entries = storage.list().await?;
        let mut remaining = false;
        for key in js_sys::Object::keys(&entries)
            .iter()
            .filter_map(|k| k.as_string())
        {
            if let Some(expiry) = ticket_expiry(&key) {
                if expiry < now {
                    storage.delete(&key).await?;
                } else {
                    remaining = true;
                }
            }
        }
        if remaining {
            storage.set_alarm(Duration::from_secs(60)).await?;
        }
        Response::ok("cleaned")
    }
}

/// The expiry (unix seconds) of a stored ticket key, `ticket:{expires_at}:{nonce}`.
fn ticket_expiry(key: &str) -> Option<i64> {
    key.strip_prefix("ticket:")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(expiry, _)| expiry.parse().ok())
}

impl UserHub {
    async fn accept_socket(&self, req: &Request) -> Result<Response> {
        let Some(info) = req
            .headers()
            .get(CONNECT_INFO_HEADER)?
            .and_then(|header| serde_json::from_str::<ConnectInfo>(&header).ok())
        else {
            return Response::error("missing connect info", 400);
        };
        if let (Some(nonce), Some(expires_at)) = (&info.ticket_nonce, info.ticket_expires_at) {
            // Single use. Every presentation of one ticket reaches this one object; the claim in
            // memory is checked and recorded with no await in between, so of two concurrent
            // presentations only the first gets past it. Storage keeps the claim across evictions.
            let key = format!("ticket:{expires_at}:{nonce}");
            if !self.claimed_tickets.borrow_mut().insert(key.clone()) {
                return Response::error("ticket already used", 409);
            }
            let storage = self.state.storage();
            if storage.get::<bool>(&key).await?.is_some() {
                return Response::error("ticket already used", 409);
            }
            storage.put(&key, true).await?;
            if storage.get_alarm().await?.is_none() {
                storage.set_alarm(Duration::from_secs(60)).await?;
            }
        }
        let pair = WebSocketPair::new()?;
        let tag = jti_tag(&info.jti);
        self.state
            .accept_websocket_with_tags(&pair.server, &[tag.as_str()]);
        pair.server.serialize_attachment(Attachment {
            user_id: info.user_id,
            jti: info.jti,
            expires_at: info.expires_at,
        })?;
        let _ = pair
            .server
            .send_with_str(json!({"type": "ready"}).to_string());
        Response::from_websocket(pair.client)
    }

    /// Closes a socket whose session expired; returns whether it may still be used.
    fn still_valid(&self, socket: &WebSocket, now: i64) -> bool {
        match socket.deserialize_attachment::<Attachment>() {
            Ok(Some(attachment)) if attachment.expires_at > now => true,
            _ => {
                let _ = socket.close(Some(SESSION_ENDED), Some("session expired"));
                false
            }
        }
    }

    async fn rate_limit_status(&self, phone: &PhoneE164) -> Value {
        let config = Config::get(&self.env);
        let Ok(telephony) = config.telephony.get() else {
            return error_message("misconfigured", "the service is misconfigured");
        };
        let key = LimitKey::phone(&phone_key(&telephony.phone_hash_secret, phone));
        let policy = telephony.phone_policy;
        match Limiter::from_env(&self.env) {
            Ok(limiter) => match limiter.check(&key, policy).await {
                Ok(decision) => rate_limit_status_json(phone, policy, decision),
                Err(_) => {
                    error_message("dependency_unavailable", "the rate limiter did not answer")
                }
            },
            Err(_) => error_message("misconfigured", "the service is misconfigured"),
        }
    }
}

/// The `rate_limit_status` message (also the body of `GET /api/rate-limit`).
pub fn rate_limit_status_json(
    phone: &PhoneE164,
    policy: callmeback_domain::RateLimitPolicy,
    decision: Decision,
) -> Value {
    let (remaining, retry_after) = match decision {
        Decision::Allowed { remaining } => (remaining, None),
        Decision::Limited { retry_after_secs } => (0, Some(retry_after_secs)),
    };
    json!({
        "type": "rate_limit_status",
        "phone_number": phone.masked(),
        "limit": policy.max_events,
        "window_secs": policy.window_secs,
        "remaining": remaining,
        "allowed": decision.is_allowed(),
        "retry_after_secs": retry_after,
    })
}

fn jti_tag(jti: &str) -> String {
    format!("jti:{jti}")
}

fn error_message(code: &str, message: &str) -> Value {
    json!({"type": "error", "code": code, "message": message})
}

fn send(ws: &WebSocket, value: &Value) -> Result<()> {
    ws.send_with_str(value.to_string())
}

fn now_secs() -> i64 {
    (js_sys::Date::now() / 1000.0) as i64
}

async fn hub_request(env: &Env, user_id: &str, path: &str, body: &Value) -> Result<Response> {
    let stub = env
        .durable_object(BINDING)?
        .id_from_name(user_id)?
        .get_stub()?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(body.to_string().into()));
    let request = Request::new_with_init(&format!("https://hub.internal{path}"), &init)?;
    stub.fetch_with_request(request).await
}

/// Pushes an event to every open socket of a user.
pub async fn publish(env: &Env, user_id: &str, event: &Value) -> std::result::Result<(), String> {
    match hub_request(env, user_id, "/publish", event).await {
        Ok(response) if response.status_code() == 200 => Ok(()),
        Ok(response) => Err(format!("hub answered {}", response.status_code())),
        Err(error) => Err(error.to_string()),
    }
}

/// Closes the sockets of a revoked session.
pub async fn revoke(env: &Env, user_id: &str, jti: &str) -> std::result::Result<(), String> {
    match hub_request(env, user_id, "/revoke", &json!({"jti": jti})).await {
        Ok(response) if response.status_code() == 200 => Ok(()),
        Ok(response) => Err(format!("hub answered {}", response.status_code())),
        Err(error) => Err(error.to_string()),
    }
}

/// Hands an upgrade request to the user's hub.
pub async fn connect(env: &Env, req: Request, info: &ConnectInfo) -> Result<Response> {
    let stub = env
        .durable_object(BINDING)?
        .id_from_name(&info.user_id)?
        .get_stub()?;
    let mut forwarded = Request::new_with_init(
        "https://hub.internal/connect",
        RequestInit::new()
            .with_method(Method::Get)
            .with_headers(req.headers().clone()),
    )?;
    forwarded
        .headers_mut()?
        .set(CONNECT_INFO_HEADER, &serde_json::to_string(info)?)?;
    stub.fetch_with_request(forwarded).await
}
