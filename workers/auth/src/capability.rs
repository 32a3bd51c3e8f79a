//! Short-lived signed capabilities: small tokens that let their holder do one thing for a minute
//! or two, without a database look-up.
//!
//! Two are in use:
//! - the **media stream token**: the TwiML handed to Twilio carries it as a `<Parameter>`, Twilio
//!   passes it back in the stream's `start` message, and the call's Durable Object accepts the
//!   media only with a valid one for its own call;
//! - the **live-channel ticket**: browsers cannot set headers on a WebSocket, so the app first
//!   trades its session token for a ticket (`POST /api/live/ticket`) and opens the socket with
//!   `?ticket=…`. The ticket names the session (user and token id, so revoking the session also
//!   ends the socket) and a random nonce, which the user's live-channel object accepts once.
//!
//! Format: `base64url(payload) "." base64url(HMAC-SHA256(secret, purpose "\n" payload))`, where the
//! payload is `field|field|…|exp`. The purpose is part of the MAC, so a token minted for one use
//! never verifies for another. Comparison is in constant time; expiry is checked after the MAC.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What a capability is for; part of its MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    MediaStream,
    LiveTicket,
}

impl Purpose {
    const fn label(self) -> &'static str {
        match self {
            Purpose::MediaStream => "callmeback/media-stream/v1",
            Purpose::LiveTicket => "callmeback/live-ticket/v1",
        }
    }
}

/// Why a capability was refused (for logs; callers answer every case the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    #[error("malformed")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
}

/// Longest token accepted before any work is done.
const MAX_LEN: usize = 1024;

/// Signs `fields` (which must not contain `|`) valid until `expires_at` (unix seconds).
pub fn sign(secret: &[u8], purpose: Purpose, fields: &[&str], expires_at: i64) -> String {
    debug_assert!(fields.iter().all(|f| !f.contains('|')));
    let mut payload = fields.join("|");
    payload.push('|');
    payload.push_str(&expires_at.to_string());
    let tag = mac(secret, purpose, payload.as_bytes());
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload.as_bytes()),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// Verifies a token and returns its fields (without the expiry).
pub fn verify(
    secret: &[u8],
    purpose: Purpose,
    token: &str,
    now: i64,
) -> Result<Vec<String>, CapabilityError> {
    if token.len() > MAX_LEN {
        return Err(CapabilityError::Malformed);
    }
    let (payload_b64, tag_b64) = token.split_once('.').ok_or(CapabilityError::Malformed)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| CapabilityError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag_b64)
        .map_err(|_| CapabilityError::Malformed)?;
    let mut check =
        Hmac::<Sha256>::new_from_slice(secret).expect("invariant: HMAC accepts keys of any length");
    check.update(purpose.label().as_bytes());
    check.update(b"\n");
    check.update(&payload);
    check
        .verify_slice(&tag)
        .map_err(|_| CapabilityError::BadSignature)?;
    let payload = String::from_utf8(payload).map_err(|_| CapabilityError::Malformed)?;
    let mut fields: Vec<String> = payload.split('|').map(str::to_owned).collect();
    let expires_at: i64 = fields
        .pop()
        .and_then(|exp| exp.parse().ok())
        .ok_or(CapabilityError::Malformed)?;
    if now >= expires_at {
        return Err(CapabilityError::Expired);
    }
    Ok(fields)
}

fn mac(secret: &[u8], purpose: Purpose, payload: &[u8]) -> Vec<u8> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret).expect("invariant: HMAC accepts keys of any length");
    mac.update(purpose.label().as_bytes());
    mac.update(b"\n");
    mac.update(payload);
    mac.finalize().into_bytes().to_vec()
}

/// Lifetime of a media stream token: Twilio opens the stream within seconds of fetching the TwiML.
pub const MEDIA_STREAM_TTL_SECS: i64 = 120;
/// Lifetime of a live-channel ticket.
pub const LIVE_TICKET_TTL_SECS: i64 = 60;

/// The media stream token of a call.
pub fn media_stream_token(secret: &[u8], call_id: &str, now: i64) -> String {
    sign(
        secret,
        Purpose::MediaStream,
        &[call_id],
        now + MEDIA_STREAM_TTL_SECS,
    )
}

/// Whether `token` is a valid media stream token for `call_id`.
pub fn verify_media_stream_token(
    secret: &[u8],
    call_id: &str,
    token: &str,
    now: i64,
) -> Result<(), CapabilityError> {
    let fields = verify(secret, Purpose::MediaStream, token, now)?;
    match fields.as_slice() {
        [id] if id == call_id => Ok(()),
        _ => Err(CapabilityError::BadSignature),
    }
}

/// What a live-channel ticket names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTicket {
    pub user_id: String,
    /// The session token's id (revoking the session ends the socket).
    pub jti: String,
    /// When the session token expires (unix seconds): the socket lives no longer.
    pub session_expires_at: i64,
    /// Single-use nonce.
    pub nonce: String,
    /// When the ticket itself expires (unix seconds).
    pub expires_at: i64,
}

/// Mints a ticket for a session.
pub fn live_ticket(
    secret: &[u8],
    user_id: &str,
    jti: &str,
    session_expires_at: i64,
    nonce: &str,
    now: i64,
) -> String {
    sign(
        secret,
        Purpose::LiveTicket,
        &[user_id, jti, &session_expires_at.to_string(), nonce],
        now + LIVE_TICKET_TTL_SECS,
    )
}

/// Reads a ticket.
pub fn verify_live_ticket(
    secret: &[u8],
    token: &str,
    now: i64,
) -> Result<LiveTicket, CapabilityError> {
    let fields = verify(secret, Purpose::LiveTicket, token, now)?;
    let expires_at = token_expiry(token).ok_or(CapabilityError::Malformed)?;
    match <[String; 4]>::try_from(fields) {
        Ok([user_id, jti, session_expires_at, nonce]) => Ok(LiveTicket {
            user_id,
            jti,
            session_expires_at: session_expires_at
                .parse()
                .map_err(|_| CapabilityError::Malformed)?,
            nonce,
            expires_at,
        }),
        Err(_) => Err(CapabilityError::Malformed),
    }
}

fn token_expiry(token: &str) -> Option<i64> {
    let payload = URL_SAFE_NO_PAD.decode(token.split_once('.')?.0).ok()?;
    String::from_utf8(payload)
        .ok()?
        .rsplit('|')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn media_tokens_are_bound_to_their_call_and_expire() {
        let token = media_stream_token(SECRET, "call_1", 1000);
        assert_eq!(
            verify_media_stream_token(SECRET, "call_1", &token, 1000),
            Ok(())
        );
        assert_eq!(
            verify_media_stream_token(SECRET, "call_2", &token, 1000),
            Err(CapabilityError::BadSignature)
        );
        assert_eq!(
            verify_media_stream_token(SECRET, "call_1", &token, 1000 + MEDIA_STREAM_TTL_SECS),
            Err(CapabilityError::Expired)
        );
        assert_eq!(
            verify_media_stream_token(b"other secret", "call_1", &token, 1000),
            Err(CapabilityError::BadSignature)
        );
    }

    #[test]
    fn a_token_for_one_purpose_never_verifies_for_another() {
        let ticket = sign(SECRET, Purpose::LiveTicket, &["call_1"], 5000);
        assert_eq!(
            verify(SECRET, Purpose::MediaStream, &ticket, 1000),
            Err(CapabilityError::BadSignature)
        );
    }

    #[test]
    fn tickets_carry_session_and_nonce() {
        let ticket = live_ticket(SECRET, "usr_1", "jti_1", 9999, "n1", 100);
        let read = verify_live_ticket(SECRET, &ticket, 120).unwrap();
        assert_eq!(read.user_id, "usr_1");
        assert_eq!(read.jti, "jti_1");
        assert_eq!(read.session_expires_at, 9999);
        assert_eq!(read.nonce, "n1");
        assert_eq!(read.expires_at, 100 + LIVE_TICKET_TTL_SECS);
        assert_eq!(
            verify_live_ticket(SECRET, &ticket, 161),
            Err(CapabilityError::Expired)
        );
    }

    #[test]
    fn tampering_and_garbage_are_refused() {
        let token = media_stream_token(SECRET, "call_1", 1000);
        let (payload, tag) = token.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(b"call_1|99999999999");
        assert_eq!(
            verify(
                SECRET,
                Purpose::MediaStream,
                &format!("{forged_payload}.{tag}"),
                1000
            ),
            Err(CapabilityError::BadSignature)
        );
        for garbage in [
            "",
            ".",
            "abc",
            "a.b.c",
            &format!("{payload}."),
            &"x".repeat(5000),
        ] {
            assert!(
                verify(SECRET, Purpose::MediaStream, garbage, 1000).is_err(),
                "{garbage}"
            );
        }
    }
}
