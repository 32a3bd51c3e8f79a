//! Device tokens: "this device has signed in to this account before" (OWASP's device cookies).
//!
//! A successful login hands the client a device token naming the account and a random device
//! id; the client sends it back with later logins. A failed login that carries a valid token for
//! the account it tries counts against that device's own budget, not against the account-wide
//! budget that strangers share, so a third party hammering an account cannot lock its owner's
//! devices out (the Worker's `routes/auth.rs` has the whole design and what it costs an attacker).
//!
//! The account is named by [`account_ref`] (a SHA-256 of the normalised email), because the token
//! is checked before the password, when the email is all that is known; the email itself is never
//! in the token.
//!
//! # Format
//! ```text
//! "dt1." kid "." base64url(account "|" device_id "|" iat "|" exp) "." base64url(tag)
//! tag = HMAC-SHA256(device_key, "dt1." kid "." payload_b64)
//! device_key = HMAC-SHA256(secret[kid], "callmeback/device-token/v1")
//! ```
//! The keys are the session keyring's ([`Keyring`]), so device tokens rotate with session tokens
//! and need no secret of their own; the derived key keeps the two kinds of token apart (neither
//! verifies as the other). Verification is as strict as for sessions: bounded length before any
//! work, a known key id, the tag compared in constant time before the payload is read, then the
//! times (with [`CLOCK_SKEW_LEEWAY_SECS`]) and a lifetime no longer than [`DEVICE_TOKEN_TTL_SECS`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

use crate::{CLOCK_SKEW_LEEWAY_SECS, Keyring};

/// How long a device token is valid: 90 days. Every successful login on the device issues a
/// fresh one, so a device in use stays trusted; one unused for a season starts over.
pub const DEVICE_TOKEN_TTL_SECS: i64 = 90 * 24 * 3600;

/// Longest device token looked at. Real ones are about 200 bytes.
pub const MAX_DEVICE_TOKEN_LEN: usize = 512;

const PREFIX: &str = "dt1";
const KEY_LABEL: &[u8] = b"callmeback/device-token/v1";

/// A verified device token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceToken {
    /// [`account_ref`] of the account the device signed in to.
    pub account: String,
    /// The device's random id (`dev_…`), stable across the tokens re-issued to it.
    pub device_id: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Why a device token was refused. Callers treat every case alike (the device is untrusted);
/// the variant is for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeviceTokenError {
    #[error("malformed device token")]
    Malformed,
    #[error("unknown key id")]
    UnknownKeyId,
    #[error("bad signature")]
    BadSignature,
    #[error("device token expired")]
    Expired,
    #[error("device token not yet valid")]
    NotYetValid,
}

impl DeviceTokenError {
    /// Stable snake_case code for logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownKeyId => "unknown_key_id",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
        }
    }
}

/// How device tokens (and login limits) name an account: lowercase hex SHA-256 of the normalised
/// (trimmed, lower-cased) email.
pub fn account_ref(normalised_email: &str) -> String {
    Sha256::digest(normalised_email.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl Keyring {
    /// Issues a device token for `account` ([`account_ref`]) and `device_id`, valid for
    /// [`DEVICE_TOKEN_TTL_SECS`] from `now_secs`. Neither may contain `|` or `.`.
    pub fn issue_device_token(&self, account: &str, device_id: &str, now_secs: i64) -> String {
        debug_assert!(is_plain_field(account) && is_plain_field(device_id));
        let key = self.signing_key();
        let payload = format!(
            "{account}|{device_id}|{now_secs}|{}",
            now_secs.saturating_add(DEVICE_TOKEN_TTL_SECS)
        );
        let signed = format!(
            "{PREFIX}.{}.{}",
            key.kid,
            URL_SAFE_NO_PAD.encode(payload.as_bytes())
        );
        let tag = device_mac(key.key.as_ref(), signed.as_bytes()).finalize();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.into_bytes()))
    }

    /// Verifies a device token at `now_secs`.
    pub fn verify_device_token(
        &self,
        token: &str,
        now_secs: i64,
    ) -> Result<DeviceToken, DeviceTokenError> {
        if token.is_empty() || token.len() > MAX_DEVICE_TOKEN_LEN {
            return Err(DeviceTokenError::Malformed);
        }
        let (signed, tag_b64) = token.rsplit_once('.').ok_or(DeviceTokenError::Malformed)?;
        let mut parts = signed.split('.');
        let (Some(PREFIX), Some(kid), Some(payload_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(DeviceTokenError::Malformed);
        };
        let key = self
            .keys
            .iter()
            .find(|named| named.kid == kid)
            .ok_or(DeviceTokenError::UnknownKeyId)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| DeviceTokenError::Malformed)?;
        device_mac(key.key.as_ref(), signed.as_bytes())
            .verify_slice(&tag)
            .map_err(|_| DeviceTokenError::BadSignature)?;

        // Only bytes we signed are read from here on.
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or(DeviceTokenError::Malformed)?;
        let fields: Vec<&str> = payload.split('|').collect();
        let [account, device_id, issued_at, expires_at] = fields.as_slice() else {
            return Err(DeviceTokenError::Malformed);
        };
        let (Ok(issued_at), Ok(expires_at)) = (issued_at.parse::<i64>(), expires_at.parse::<i64>())
        else {
            return Err(DeviceTokenError::Malformed);
        };
        let lifetime = expires_at.saturating_sub(issued_at);
        if !is_plain_field(account)
            || !is_plain_field(device_id)
            || lifetime <= 0
            || lifetime > DEVICE_TOKEN_TTL_SECS
        {
            return Err(DeviceTokenError::Malformed);
        }
        if now_secs.saturating_add(CLOCK_SKEW_LEEWAY_SECS) < issued_at {
            return Err(DeviceTokenError::NotYetValid);
        }
        if now_secs >= expires_at {
            return Err(DeviceTokenError::Expired);
        }
        Ok(DeviceToken {
            account: (*account).to_owned(),
            device_id: (*device_id).to_owned(),
            issued_at,
            expires_at,
        })
    }
}

/// The MAC over `signed`, keyed by the device-token key derived from a keyring secret.
fn device_mac(secret: &[u8], signed: &[u8]) -> Hmac<Sha256> {
    let mut derive =
        Hmac::<Sha256>::new_from_slice(secret).expect("invariant: HMAC accepts keys of any length");
    derive.update(KEY_LABEL);
    let device_key = derive.finalize().into_bytes();
    let mut mac = Hmac::<Sha256>::new_from_slice(&device_key)
        .expect("invariant: HMAC accepts keys of any length");
    mac.update(signed);
    mac
}

/// 1..=128 bytes of `[A-Za-z0-9_-]`: no separator can hide in a field.
fn is_plain_field(text: &str) -> bool {
    (1..=128).contains(&text.len())
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Role, SessionClaims};

    const NOW: i64 = 1_800_000_000;
    const RING: &str = "new:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=,old:YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXphYmNkZWY=";

    fn ring() -> Keyring {
        Keyring::parse(RING).unwrap()
    }

    fn account() -> String {
        account_ref("ada@example.com")
    }

    #[test]
    fn a_token_names_its_account_and_device_until_it_expires() {
        let token = ring().issue_device_token(&account(), "dev_1", NOW);
        assert!(token.starts_with("dt1.new."), "{token}");
        assert!(!token.contains("ada"));
        let device = ring().verify_device_token(&token, NOW).expect("valid");
        assert_eq!(
            device,
            DeviceToken {
                account: account(),
                device_id: "dev_1".to_owned(),
                issued_at: NOW,
                expires_at: NOW + DEVICE_TOKEN_TTL_SECS,
            }
        );
        assert!(
            ring()
                .verify_device_token(&token, NOW + DEVICE_TOKEN_TTL_SECS - 1)
                .is_ok()
        );
        assert_eq!(
            ring().verify_device_token(&token, NOW + DEVICE_TOKEN_TTL_SECS),
            Err(DeviceTokenError::Expired)
        );
        assert_eq!(
            ring().verify_device_token(&token, NOW - CLOCK_SKEW_LEEWAY_SECS - 1),
            Err(DeviceTokenError::NotYetValid)
        );
    }

    #[test]
    fn account_refs_are_hashes_of_the_normalised_email() {
        let reference = account_ref("ada@example.com");
        assert_eq!(reference.len(), 64);
        assert!(reference.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(reference, account_ref("bob@example.com"));
        assert_eq!(reference, account());
    }

    #[test]
    fn rotated_keys_still_verify_and_removed_keys_do_not() {
        let old_first = Keyring::parse("old:YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXphYmNkZWY=").unwrap();
        let token = old_first.issue_device_token(&account(), "dev_1", NOW);
        assert!(ring().verify_device_token(&token, NOW).is_ok());
        let only_new = Keyring::parse("new:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=").unwrap();
        assert_eq!(
            only_new.verify_device_token(&token, NOW),
            Err(DeviceTokenError::UnknownKeyId)
        );
    }

    #[test]
    fn forgeries_and_confusions_are_refused() {
        let ring = ring();
        let token = ring.issue_device_token(&account(), "dev_1", NOW);
        let (signed, tag) = token.rsplit_once('.').unwrap();
        let parts: Vec<&str> = signed.split('.').collect();

        // Another account or device in the payload, the original tag.
        let forged_payload = URL_SAFE_NO_PAD.encode(format!(
            "{}|dev_1|{NOW}|{}",
            account_ref("bob@example.com"),
            NOW + 10
        ));
        let forged = format!("dt1.new.{forged_payload}.{tag}");
        assert_eq!(
            ring.verify_device_token(&forged, NOW),
            Err(DeviceTokenError::BadSignature)
        );
        // The tag moved to the other key id.
        let moved = format!("dt1.old.{}.{tag}", parts[2]);
        assert_eq!(
            ring.verify_device_token(&moved, NOW),
            Err(DeviceTokenError::BadSignature)
        );
        // A session token is not a device token, and a device token is not a session token.
        let session = ring.issue(
            &SessionClaims {
                jti: "tok_1".into(),
                sub: "usr_1".into(),
                email: "ada@example.com".into(),
                role: Role::User,
            },
            NOW,
        );
        assert!(ring.verify_device_token(&session, NOW).is_err());
        assert!(ring.verify(&token, NOW).is_err());

        for garbage in [
            String::new(),
            "dt1".to_owned(),
            "dt1.new.x".to_owned(),
            format!("dt2.{}", &token[4..]),
            format!("{token}.extra"),
            format!("{signed}.***"),
            "a".repeat(MAX_DEVICE_TOKEN_LEN + 1),
        ] {
            assert!(
                ring.verify_device_token(&garbage, NOW).is_err(),
                "{garbage}"
            );
        }
    }

    #[test]
    fn a_signed_payload_must_still_be_well_formed() {
        // Signed with the real key but carrying what issue never produces.
        let ring = ring();
        let key = ring.signing_key();
        let sign = |payload: &str| {
            let signed = format!("dt1.new.{}", URL_SAFE_NO_PAD.encode(payload));
            let tag = device_mac(key.key.as_ref(), signed.as_bytes()).finalize();
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.into_bytes()))
        };
        let too_long = NOW + DEVICE_TOKEN_TTL_SECS + 1;
        for payload in [
            format!("{}|dev_1|{NOW}|{too_long}", account()),
            format!("{}|dev_1|{NOW}|{NOW}", account()),
            format!("{}|dev 1|{NOW}|{}", account(), NOW + 10),
            format!("|dev_1|{NOW}|{}", NOW + 10),
            format!("{}|dev_1|{NOW}", account()),
            format!("{}|dev_1|soon|{}", account(), NOW + 10),
        ] {
            assert_eq!(
                ring.verify_device_token(&sign(&payload), NOW),
                Err(DeviceTokenError::Malformed),
                "{payload}"
            );
        }
        assert!(
            ring.verify_device_token(
                &sign(&format!("{}|dev_1|{NOW}|{}", account(), NOW + 10)),
                NOW
            )
            .is_ok()
        );
    }
}
