//! Session tokens for callmeback: JWTs signed with HMAC-SHA256, named by key id so secrets can be
//! rotated without logging everyone out, plus the [`Role`] a session carries.
//!
//! # Token format
//! A session token is a compact JWS (RFC 7515) carrying a JWT (RFC 7519):
//!
//! ```text
//! base64url(header) "." base64url(payload) "." base64url(HMAC-SHA256(secret[kid], header "." payload))
//!
//! header:  {"alg":"HS256","kid":"<key id>","typ":"JWT"}
//! payload: {"exp":<unix secs>,"iat":<unix secs>,"jti":"<token id>","sub":"<user id>",
//!           "email":"<address>","role":"user"|"admin"}
//! ```
//!
//! base64url is unpadded (RFC 7515 §2). Tokens live [`TOKEN_TTL_SECS`] (7 days): `exp = iat + TTL`.
//! `jti` names the token so the API can revoke a single session (it keeps the list; this crate is
//! pure and knows nothing about revocation).
//!
//! # What verification refuses
//! [`Keyring::verify`] accepts exactly what [`Keyring::issue`] produces and nothing looser:
//! - tokens longer than [`MAX_TOKEN_LEN`], before any parsing (bounds the work an attacker can buy);
//! - anything that is not three strict base64url parts with a JSON-object header;
//! - any `alg` other than exactly `HS256`, including `none` and the `RS256`/`HS256` confusion trick
//!   (the algorithm is fixed by us, never chosen by the token);
//! - headers with `crit` (we implement no JWS extensions, and RFC 7515 §4.1.11 says to refuse);
//! - a missing `kid`, a `kid` not in the ring, or a signature that does not verify with the key
//!   that `kid` names (keys are never tried one after another);
//! - missing, ill-typed or empty claims, unknown roles, `exp <= iat`, or a lifetime longer than
//!   [`TOKEN_TTL_SECS`] (so shortening the TTL also cuts existing tokens short);
//! - `exp` in the past, or `iat`/`nbf` in the future, each beyond [`CLOCK_SKEW_LEEWAY_SECS`].
//!
//! The signature is checked *before* the payload is parsed, so claim parsing only ever sees bytes
//! we signed. Every refusal is a [`TokenError`]; the HTTP layer answers all of them with the same
//! 401, and the variant exists for logs and tests only.
//!
//! # Key rotation
//! A [`Keyring`] is configured from one string, `"kid1:BASE64SECRET,kid2:BASE64SECRET"`. The first
//! key signs; every key verifies. To rotate:
//! 1. generate a secret (`openssl rand -base64 32`) under a fresh kid and put it *first*, keeping
//!    the old key second: new tokens use the new key, existing tokens still verify;
//! 2. after [`TOKEN_TTL_SECS`] (plus the leeway) every token signed with the old key has expired:
//!    remove the old key.
//!
//! To kill all sessions at once (a leaked secret), replace the ring instead: tokens whose kid is
//! gone fail with [`TokenError::UnknownKeyId`].
//!
//! # Other signed tokens
//! [`device`] holds the device tokens that mark a device which has signed in to an account
//! before (signed with this keyring, under a derived key). [`capability`] holds the short-lived
//! single-purpose tokens (media stream tokens, live-channel tickets) that are not sessions.
//!
//! # Purity
//! No clock, no randomness, no I/O: the crate runs inside the Worker (wasm32, where std's clock
//! panics), so callers pass `now` as unix seconds and mint `jti` themselves.

pub mod capability;
pub mod device;

pub use device::{DEVICE_TOKEN_TTL_SECS, DeviceToken, DeviceTokenError, account_ref};

use core::fmt;
use core::num::NonZeroUsize;
use core::str::FromStr;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use chrono::{DateTime, TimeDelta, Utc};
use jwt_compact::alg::{Hs256, Hs256Key, Hs256Signature};
use jwt_compact::{
    Algorithm as _, AlgorithmExt as _, AlgorithmSignature as _, Claims, Header, TimeOptions,
    UntrustedToken, ValidationError,
};
use serde::{Deserialize, Serialize};

/// How long a session token is valid: 7 days.
pub const TOKEN_TTL_SECS: i64 = 7 * 24 * 3600;

/// Clock skew tolerated when checking `exp`, `iat` and `nbf`. Workers run on Cloudflare's
/// NTP-synchronised clocks, so skew is small; 30 s covers it without meaningfully extending a
/// token's life.
pub const CLOCK_SKEW_LEEWAY_SECS: i64 = 30;

/// Longest token [`Keyring::verify`] will look at. Real tokens are a few hundred bytes; the cap
/// stops attackers from making us base64-decode and hash megabytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Shortest secret a [`Keyring`] accepts: 256 bits, the HMAC-SHA256 output size (RFC 7518 §3.2).
pub const MIN_SECRET_LEN: usize = 32;

/// Longest key id a [`Keyring`] accepts.
pub const MAX_KEY_ID_LEN: usize = 64;

/// The only JWS algorithm we sign with and accept.
const ALGORITHM: &str = "HS256";
/// The `typ` header of issued tokens.
const TOKEN_TYPE: &str = "JWT";

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A customer: their own account, calls and credits.
    User,
    /// An operator: everything, including other users' data.
    Admin,
}

impl Role {
    /// The wire name, as used in tokens and the database: `"user"` or `"admin"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The string was not one of the role names [`Role::as_str`] produces (matching is exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown role")]
pub struct UnknownRole;

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "user" => Ok(Self::User),
            "admin" => Ok(Self::Admin),
            _ => Err(UnknownRole),
        }
    }
}

/// The claims we put in a token, besides `iat`/`exp` which jwt-compact's `Claims` carries.
///
/// [`Keyring::verify`] refuses tokens whose `jti`, `sub` or `email` is empty, so do not issue
/// such claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// Token id, unique per issued token; the handle for revoking one session.
    pub jti: String,
    /// The user id.
    pub sub: String,
    /// The user's email address at issue time.
    pub email: String,
    /// What the session may do.
    pub role: Role,
}

/// A verified token: claims plus issue/expiry times (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSession {
    /// The authenticated claims.
    pub claims: SessionClaims,
    /// `iat`: when the token was issued.
    pub issued_at: i64,
    /// `exp`: when the token stops being accepted (plus [`CLOCK_SKEW_LEEWAY_SECS`]).
    pub expires_at: i64,
}

/// Why a token was refused. The HTTP layer maps every variant to the same 401; the distinction
/// is for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS we can read: empty, too long, not three parts, bad base64url, header not
    /// a JSON object, unsupported header (`crit`, `cty`).
    #[error("malformed token")]
    Malformed,
    /// The `kid` header names no key in the ring (e.g. a rotated-out key).
    #[error("unknown key id")]
    UnknownKeyId,
    /// The header has no `kid`.
    #[error("missing key id")]
    MissingKeyId,
    /// The `alg` header is not exactly `HS256` (this includes `none`).
    #[error("wrong algorithm")]
    WrongAlgorithm,
    /// The signature does not verify with the key `kid` names (wrong length, wrong key, tampered).
    #[error("bad signature")]
    BadSignature,
    /// `exp` is more than the leeway in the past.
    #[error("token expired")]
    Expired,
    /// `iat` or `nbf` is more than the leeway in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// A validly signed payload with missing, ill-typed or inconsistent claims.
    #[error("bad claims")]
    BadClaims,
}

impl TokenError {
    /// Stable snake_case code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownKeyId => "unknown_key_id",
            Self::MissingKeyId => "missing_key_id",
            Self::WrongAlgorithm => "wrong_algorithm",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadClaims => "bad_claims",
        }
    }
}

/// Why a keyring spec was refused. Errors name the offending item by its 1-based position and
/// never echo any part of the spec, since items hold secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// The spec is empty or only whitespace.
    #[error("keyring spec is empty")]
    Empty,
    /// An item between commas is empty (e.g. a trailing comma).
    #[error("keyring item {position} is empty")]
    EmptyItem {
        /// 1-based position of the item.
        position: usize,
    },
    /// An item has no `:` between key id and secret.
    #[error("keyring item {position} is not `kid:secret`")]
    MissingSeparator {
        /// 1-based position of the item.
        position: usize,
    },
    /// A key id is empty, longer than [`MAX_KEY_ID_LEN`], or uses characters outside
    /// `[A-Za-z0-9._-]`.
    #[error(
        "keyring item {position} has an invalid key id (1..={MAX_KEY_ID_LEN} chars of [A-Za-z0-9._-])"
    )]
    InvalidKeyId {
        /// 1-based position of the item.
        position: usize,
    },
    /// A secret is not valid base64 (standard or URL-safe alphabet, padding optional).
    #[error("keyring item {position} has a secret that is not valid base64")]
    InvalidSecretEncoding {
        /// 1-based position of the item.
        position: usize,
    },
    /// A secret decodes to fewer than [`MIN_SECRET_LEN`] bytes.
    #[error("keyring item {position} has a secret shorter than {MIN_SECRET_LEN} bytes")]
    SecretTooShort {
        /// 1-based position of the item.
        position: usize,
    },
    /// Two items use the same key id.
    #[error("keyring item {position} repeats the key id of item {first_position}")]
    DuplicateKeyId {
        /// 1-based position of the repeated item.
        position: usize,
        /// 1-based position of the item that first used the key id.
        first_position: usize,
    },
}

impl KeyringError {
    /// Stable snake_case code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::EmptyItem { .. } => "empty_item",
            Self::MissingSeparator { .. } => "missing_separator",
            Self::InvalidKeyId { .. } => "invalid_key_id",
            Self::InvalidSecretEncoding { .. } => "invalid_secret_encoding",
            Self::SecretTooShort { .. } => "secret_too_short",
            Self::DuplicateKeyId { .. } => "duplicate_key_id",
        }
    }
}

/// Operators paste secrets from `openssl rand -base64` (standard alphabet, padded) but sometimes
/// from tools that emit URL-safe or unpadded base64; the alphabets differ only in two symbols, so
/// accepting both costs nothing in strictness.
const SECRET_ENCODINGS: [GeneralPurpose; 2] = [
    GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    ),
    GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    ),
];

/// One named HMAC key. `Hs256Key` zeroizes its bytes on drop and redacts them in `Debug`.
#[derive(Clone)]
struct NamedKey {
    kid: String,
    key: Hs256Key,
}

/// HS256 keys by id. The first key signs; all verify (rotation: add a new key first in the list,
/// keep the old one until its tokens expire). `Debug` prints key ids only, never secrets.
#[derive(Clone)]
pub struct Keyring {
    /// Never empty: [`Keyring::parse`] refuses empty specs. `keys[0]` signs.
    keys: Vec<NamedKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key_ids: Vec<&str> = self.key_ids().collect();
        formatter
            .debug_struct("Keyring")
            .field("key_ids", &key_ids)
            .field("secrets", &"<redacted>")
            .finish()
    }
}

impl Keyring {
    /// Parses `"kid1:BASE64SECRET,kid2:BASE64SECRET"` (whitespace around items allowed). Each
    /// secret must decode to at least [`MIN_SECRET_LEN`] bytes; kids are 1..=[`MAX_KEY_ID_LEN`]
    /// chars of `[A-Za-z0-9._-]`; no duplicate kids. The first key signs.
    pub fn parse(spec: &str) -> Result<Keyring, KeyringError> {
        if spec.trim().is_empty() {
            return Err(KeyringError::Empty);
        }
        let mut keys: Vec<NamedKey> = Vec::new();
        for (index, item) in spec.split(',').enumerate() {
            let position = index + 1;
            let item = item.trim();
            if item.is_empty() {
                return Err(KeyringError::EmptyItem { position });
            }
            // Base64 never contains ':', so the first one separates kid from secret.
            let Some((kid, encoded_secret)) = item.split_once(':') else {
                return Err(KeyringError::MissingSeparator { position });
            };
            if !is_valid_key_id(kid) {
                return Err(KeyringError::InvalidKeyId { position });
            }
            let secret = decode_secret(encoded_secret)
                .ok_or(KeyringError::InvalidSecretEncoding { position })?;
            if secret.len() < MIN_SECRET_LEN {
                return Err(KeyringError::SecretTooShort { position });
            }
            if let Some(first_index) = keys.iter().position(|named| named.kid == kid) {
                return Err(KeyringError::DuplicateKeyId {
                    position,
                    first_position: first_index + 1,
                });
            }
            keys.push(NamedKey {
                kid: kid.to_owned(),
                key: Hs256Key::new(&secret),
            });
        }
        Ok(Keyring { keys })
    }

    /// The key id new tokens are signed with (the first in the spec).
    pub fn signing_kid(&self) -> &str {
        &self.signing_key().kid
    }

    /// All key ids in spec order, signing key first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.keys.iter().map(|named| named.kid.as_str())
    }

    /// Issues a token (header `alg` HS256, `typ` JWT, `kid` = [`Self::signing_kid`]) with
    /// `iat = now_secs` and `exp = now_secs + TOKEN_TTL_SECS`.
    ///
    /// # Panics
    /// If `now_secs + TOKEN_TTL_SECS` is outside chrono's range (about ±262,000 years from
    /// 1970), which no real clock produces.
    pub fn issue(&self, claims: &SessionClaims, now_secs: i64) -> String {
        let signing_key = self.signing_key();
        let issued_at = DateTime::from_timestamp(now_secs, 0)
            .expect("invariant: now_secs is a real clock reading within chrono's range");
        let clock = TimeOptions::new(TimeDelta::zero(), move || issued_at);
        let token_claims = Claims::new(claims)
            .set_duration_and_issuance(&clock, TimeDelta::seconds(TOKEN_TTL_SECS));
        let header = Header::empty()
            .with_key_id(signing_key.kid.as_str())
            .with_token_type(TOKEN_TYPE);
        Hs256
            .token(&header, &token_claims, &signing_key.key)
            .expect("invariant: plain structs of strings and integers always serialize to JSON")
    }

    /// Verifies a token against the ring at time `now_secs` (unix seconds). See the crate docs
    /// for everything that is refused.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<VerifiedSession, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let untrusted = UntrustedToken::<'_, HeaderExtensions>::try_from(token)
            .map_err(|_| TokenError::Malformed)?;

        // The algorithm is ours to choose, not the token's: compare the header against the one
        // algorithm we use instead of dispatching on it.
        if untrusted.algorithm() != ALGORITHM {
            return Err(TokenError::WrongAlgorithm);
        }
        let header = untrusted.header();
        if header.other_fields.critical.is_some() {
            return Err(TokenError::Malformed);
        }
        let kid = header.key_id.as_deref().ok_or(TokenError::MissingKeyId)?;
        let named_key = self
            .keys
            .iter()
            .find(|named| named.kid == kid)
            .ok_or(TokenError::UnknownKeyId)?;

        // Authenticate before interpreting the payload (jwt-compact's validator parses claims
        // first), so claim parsing only ever sees bytes we signed.
        let signature_bytes = untrusted.signature_bytes();
        // `try_from_slice` panics on a wrong length, so check it first.
        if Some(signature_bytes.len()) != Hs256Signature::LENGTH.map(NonZeroUsize::get) {
            return Err(TokenError::BadSignature);
        }
        let signature = Hs256Signature::try_from_slice(signature_bytes)
            .map_err(|_| TokenError::BadSignature)?;
        // What was signed is everything before the last '.', exactly as jwt-compact computes it.
        let (signed_data, _) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        // Hs256Signature compares in constant time (`hmac::digest::CtOutput`).
        if !Hs256.verify_signature(&signature, &named_key.key, signed_data.as_bytes()) {
            return Err(TokenError::BadSignature);
        }

        let claims: Claims<SessionClaims> = untrusted
            .deserialize_claims_unchecked()
            .map_err(|_| TokenError::BadClaims)?;
        let (Some(issued_at), Some(expires_at)) = (claims.issued_at, claims.expiration) else {
            return Err(TokenError::BadClaims);
        };
        check_claims(&claims.custom, issued_at, expires_at)?;
        check_times(&claims, issued_at, now_secs)?;

        Ok(VerifiedSession {
            issued_at: issued_at.timestamp(),
            expires_at: expires_at.timestamp(),
            claims: claims.custom,
        })
    }

    fn signing_key(&self) -> &NamedKey {
        self.keys
            .first()
            .expect("invariant: Keyring::parse never builds an empty ring")
    }
}

/// Header fields jwt-compact does not model but we must look at.
#[derive(Debug, Clone, Default, Deserialize)]
struct HeaderExtensions {
    /// RFC 7515 §4.1.11: extensions the recipient must understand. We understand none.
    #[serde(default, rename = "crit")]
    critical: Option<serde::de::IgnoredAny>,
}

/// Structural checks on authenticated claims (time checks are separate).
fn check_claims(
    session: &SessionClaims,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<(), TokenError> {
    if session.jti.is_empty() || session.sub.is_empty() || session.email.is_empty() {
        return Err(TokenError::BadClaims);
    }
    let lifetime = expires_at.signed_duration_since(issued_at);
    if lifetime <= TimeDelta::zero() || lifetime > TimeDelta::seconds(TOKEN_TTL_SECS) {
        return Err(TokenError::BadClaims);
    }
    Ok(())
}

/// `exp`, `iat` and `nbf` against the caller's clock, each with [`CLOCK_SKEW_LEEWAY_SECS`].
fn check_times(
    claims: &Claims<SessionClaims>,
    issued_at: DateTime<Utc>,
    now_secs: i64,
) -> Result<(), TokenError> {
    // A clock outside chrono's range is a caller bug; clamping fails closed (far future: all
    // tokens expired; far past: none valid yet) instead of panicking inside the Worker.
    let now = DateTime::from_timestamp(now_secs, 0).unwrap_or(if now_secs > 0 {
        DateTime::<Utc>::MAX_UTC
    } else {
        DateTime::<Utc>::MIN_UTC
    });
    let leeway = TimeDelta::seconds(CLOCK_SKEW_LEEWAY_SECS);
    let clock = TimeOptions::new(leeway, move || now);

    claims
        .validate_expiration(&clock)
        .map_err(|error| match error {
            ValidationError::Expired => TokenError::Expired,
            _ => TokenError::BadClaims,
        })?;
    if claims.not_before.is_some() {
        claims
            .validate_maturity(&clock)
            .map_err(|error| match error {
                ValidationError::NotMature => TokenError::NotYetValid,
                _ => TokenError::BadClaims,
            })?;
    }
    // jwt-compact has no check for `iat`; a token from the future means a forged or
    // mis-clocked issuer.
    let earliest_accepted_issue = issued_at
        .checked_sub_signed(leeway)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    if now < earliest_accepted_issue {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

fn is_valid_key_id(kid: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&kid.len())
        && kid
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
}

fn decode_secret(encoded: &str) -> Option<Vec<u8>> {
    SECRET_ENCODINGS
        .iter()
        .find_map(|engine| engine.decode(encoded).ok())
}

#[cfg(test)]
mod tests;
