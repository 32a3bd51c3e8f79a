//! Request signing between the Worker and `db-gateway`: RFC 9421 HTTP Message Signatures with
//! `hmac-sha256`, and RFC 9530 `Content-Digest`.
//!
//! # The scheme
//! Every request the Worker sends to the gateway carries three headers:
//!
//! ```text
//! Content-Digest:  sha-256=:<base64 SHA-256 of the body>:
//! Signature-Input: sig1=("@method" "@target-uri" "content-digest");created=<unix secs>;keyid="<id>";nonce="<random>";alg="hmac-sha256"
//! Signature:       sig1=:<base64 HMAC-SHA256 of the signature base>:
//! ```
//!
//! - `@method` and `@target-uri` bind the *operation*: a signature for `POST https://gw/v1/op`
//!   cannot be replayed against another path, host, query or method.
//! - `content-digest` binds the *body*: the digest is covered by the signature and the verifier
//!   recomputes it from the bytes it received, so the body cannot be swapped.
//! - `created` and `nonce` stop *replays*: [`verify_request`] rejects signatures created more than
//!   `max_skew_secs` away from its clock (either direction), and the gateway refuses a nonce it
//!   has already seen, remembering each one until `created + max_skew_secs` has passed (after
//!   that the skew check alone rejects a replay). Nonce bookkeeping is state, so it lives in the
//!   gateway; this crate only insists that a nonce is present.
//!
//! # Key rotation
//! Keys are named by `keyid`, and the verifier receives a lookup function rather than one key, so
//! several keys can be active at once. To rotate: deploy the new key to the gateway next to the
//! old one, switch the Worker to sign with the new id, then remove the old key from the gateway.
//! Requests in flight during the switch verify with whichever key signed them.
//!
//! # Interoperability
//! Signing produces exactly the headers above. Verification accepts what other RFC 9421
//! implementations send: any label (the first one present in both headers is used), parameters
//! in any order, and extra covered components as long as this crate can derive them (`@path`,
//! `@authority`, `@scheme`, `@query`). `tests/interop.rs` checks both directions against the
//! independent Python package `http-message-signatures`.
//!
//! This crate is pure (no I/O, no clock, no randomness) so that it compiles for
//! `wasm32-unknown-unknown`: callers pass the current time and a fresh nonce.

mod components;
mod sfv;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::components::{Component, TargetUri, fits_in_signature_base, signature_base};
use crate::sfv::{BareItem, InnerList, Item, Member, Parameters};

/// The only signature algorithm this crate produces and accepts.
pub const ALGORITHM: &str = "hmac-sha256";
/// Label under which [`sign_request`] puts its signature.
pub const SIGNATURE_LABEL: &str = "sig1";
/// Header carrying [`content_digest`]; names are lowercase as HTTP/2 and the `worker` crate use
/// them, and they are the names [`VerifyError::MissingHeader`] reports.
pub const CONTENT_DIGEST_HEADER: &str = "content-digest";
/// Header carrying the covered components and parameters ([`SignedHeaders::signature_input`]).
pub const SIGNATURE_INPUT_HEADER: &str = "signature-input";
/// Header carrying the HMAC ([`SignedHeaders::signature`]).
pub const SIGNATURE_HEADER: &str = "signature";

/// The RFC 9530 name of the one digest algorithm this crate produces and requires.
const SHA256_DIGEST_KEY: &str = "sha-256";

/// A shared HMAC key with its id.
#[derive(Clone)]
pub struct Key {
    id: String,
    secret: Vec<u8>,
}

impl Key {
    /// `id` travels in the clear as `keyid`; it should be printable ASCII (see [`sign_request`]).
    pub fn new(id: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            id: id.into(),
            secret: secret.into(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac(&self, message: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret)
            .expect("invariant: HMAC accepts keys of any length");
        mac.update(message);
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for Key {
    // The secret must never reach logs, even through `{:?}` of a struct that holds a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// RFC 9530 value for a body: `sha-256=:<base64 of SHA-256(body)>:`.
pub fn content_digest(body: &[u8]) -> String {
    format!(
        "{SHA256_DIGEST_KEY}=:{}:",
        BASE64.encode(Sha256::digest(body))
    )
}

/// Headers to add to a signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub content_digest: String,
    pub signature_input: String,
    pub signature: String,
}

/// Signs with label `sig1`, covered components `("@method" "@target-uri" "content-digest")` and
/// parameters `;created=<created>;keyid="<id>";nonce="<nonce>";alg="hmac-sha256"`.
///
/// - `method` is uppercased (RFC 9421 `@method` values are uppercase method names).
/// - `target_uri` is the full absolute URI (`scheme://authority/path?query`), used verbatim; the
///   verifier must see the same string.
/// - `created` is unix seconds; `nonce` must be fresh per request (the Worker uses random hex).
///
/// Signing cannot fail. Structured-field strings carry only printable ASCII, so any other
/// character in the key id or nonce is sent as `?`; the verifier then reports that altered
/// value (and normally `UnknownKey` for a key id). Use ASCII ids and nonces.
pub fn sign_request(
    key: &Key,
    method: &str,
    target_uri: &str,
    body: &[u8],
    created: i64,
    nonce: &str,
) -> SignedHeaders {
    let content_digest = content_digest(body);
    let signature_params = sfv::serialize_inner_list(&InnerList {
        items: Component::REQUIRED
            .iter()
            .map(|component| Item {
                bare: BareItem::String(component.name().to_owned()),
                params: Parameters::new(),
            })
            .collect(),
        params: vec![
            ("created".to_owned(), BareItem::Integer(created)),
            ("keyid".to_owned(), BareItem::String(key.id.clone())),
            ("nonce".to_owned(), BareItem::String(nonce.to_owned())),
            ("alg".to_owned(), BareItem::String(ALGORITHM.to_owned())),
        ],
    });
    let method = method.to_ascii_uppercase();
    let base = signature_base(
        &[
            (Component::Method.name(), &method),
            (Component::TargetUri.name(), target_uri),
            (Component::ContentDigest.name(), &content_digest),
        ],
        &signature_params,
    );
    let signature = BASE64.encode(key.mac(base.as_bytes()));
    SignedHeaders {
        content_digest,
        signature_input: format!("{SIGNATURE_LABEL}={signature_params}"),
        signature: format!("{SIGNATURE_LABEL}=:{signature}:"),
    }
}

/// What the verifier sees of a request.
#[derive(Clone, Copy)]
pub struct RequestParts<'a> {
    /// Method as received; compared uppercased.
    pub method: &'a str,
    /// The full absolute URI the client addressed, reconstructed exactly as the signer saw it.
    pub target_uri: &'a str,
    pub body: &'a [u8],
    pub content_digest: Option<&'a str>,
    pub signature_input: Option<&'a str>,
    pub signature: Option<&'a str>,
}

impl std::fmt::Debug for RequestParts<'_> {
    // Bodies carry user data (phone numbers, emails) that must not reach logs; the length is
    // enough to debug a digest mismatch.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestParts")
            .field("method", &self.method)
            .field("target_uri", &self.target_uri)
            .field("body_len", &self.body.len())
            .field("content_digest", &self.content_digest)
            .field("signature_input", &self.signature_input)
            .field("signature", &self.signature)
            .finish()
    }
}

/// What a successful verification proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key_id: String,
    pub created: i64,
    /// Not checked for replay here: the gateway must reject a nonce it has already seen, and
    /// keep it until `created + max_skew_secs` has passed.
    pub nonce: String,
}

/// Why a request's signature was rejected. [`VerifyError::code`] is stable: the gateway sends it
/// in its 401 body and uses it as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A header is absent or empty: `content-digest`, `signature-input` or `signature`.
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    /// A header is not a valid structured field, no label appears in both signature headers, a
    /// value has the wrong type, or a covered component is one this verifier cannot supply.
    #[error("malformed header `{0}`")]
    MalformedHeader(&'static str),
    /// The signature does not cover `@method`, `@target-uri` or `content-digest`.
    #[error("signature does not cover `{0}`")]
    MissingComponent(&'static str),
    /// `keyid`, `created` or `nonce` is absent (an empty nonce counts as absent).
    #[error("signature parameter `{0}` is missing")]
    MissingParameter(&'static str),
    /// `alg` is present and is not `hmac-sha256`.
    #[error("unsupported signature algorithm")]
    UnsupportedAlgorithm,
    #[error("unknown key id")]
    UnknownKey,
    #[error("content-digest does not match the body")]
    DigestMismatch,
    /// `created` (or a past `expires`) is more than `max_skew_secs` away from now.
    #[error("signature time is outside the allowed clock skew")]
    ClockSkew,
    #[error("signature does not verify")]
    BadSignature,
}

impl VerifyError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_header",
            Self::MalformedHeader(_) => "malformed_header",
            Self::MissingComponent(_) => "missing_component",
            Self::MissingParameter(_) => "missing_parameter",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::UnknownKey => "unknown_key",
            Self::DigestMismatch => "digest_mismatch",
            Self::ClockSkew => "clock_skew",
            Self::BadSignature => "bad_signature",
        }
    }
}

/// Verifies a request signed by [`sign_request`] or by any RFC 9421 client following the same
/// profile (see the crate docs).
///
/// `keys` looks a key id up; `now` is unix seconds; `max_skew_secs` is 300 in production. Nonce
/// replay is NOT checked here (the gateway keeps that state) but a nonce parameter is required.
///
/// Checks run in this order, and the first failure is returned: headers present → parse →
/// required components and parameters → `alg` → key lookup → clock skew → digest → signature.
/// Cheap, key-independent checks come first so that garbage is rejected before any HMAC work.
pub fn verify_request<'k>(
    parts: &RequestParts<'_>,
    keys: impl Fn(&str) -> Option<&'k Key>,
    now: i64,
    max_skew_secs: i64,
) -> Result<Verified, VerifyError> {
    let content_digest_header = present(parts.content_digest, CONTENT_DIGEST_HEADER)?;
    let signature_input_header = present(parts.signature_input, SIGNATURE_INPUT_HEADER)?;
    let signature_header = present(parts.signature, SIGNATURE_HEADER)?;

    let inputs = sfv::parse_dictionary(signature_input_header)
        .map_err(|_| VerifyError::MalformedHeader(SIGNATURE_INPUT_HEADER))?;
    let signatures = sfv::parse_dictionary(signature_header)
        .map_err(|_| VerifyError::MalformedHeader(SIGNATURE_HEADER))?;
    let claimed_digest = parse_sha256_digest(content_digest_header)?;
    let (input, signature) = select_signature(&inputs, &signatures)?;
    let covered = covered_components(input)?;
    let params = SignatureParams::from_parameters(&input.params)?;

    if let Some(missing) = Component::REQUIRED
        .into_iter()
        .find(|required| !covered.contains(required))
    {
        return Err(VerifyError::MissingComponent(missing.name()));
    }
    let key_id = params
        .key_id
        .ok_or(VerifyError::MissingParameter("keyid"))?;
    let created = params
        .created
        .ok_or(VerifyError::MissingParameter("created"))?;
    let nonce = params
        .nonce
        .filter(|nonce| !nonce.is_empty())
        .ok_or(VerifyError::MissingParameter("nonce"))?;

    if params.alg.is_some_and(|alg| alg != ALGORITHM) {
        return Err(VerifyError::UnsupportedAlgorithm);
    }

    let key = keys(key_id).ok_or(VerifyError::UnknownKey)?;

    let max_skew = max_skew_secs.max(0).unsigned_abs();
    if now.abs_diff(created) > max_skew {
        return Err(VerifyError::ClockSkew);
    }
    // `expires` is optional in RFC 9421; when a client sets it, honour it with the same tolerance.
    if params
        .expires
        .is_some_and(|expires| now > expires && now.abs_diff(expires) > max_skew)
    {
        return Err(VerifyError::ClockSkew);
    }

    let actual_digest = Sha256::digest(parts.body);
    if !bool::from(actual_digest.as_slice().ct_eq(&claimed_digest)) {
        return Err(VerifyError::DigestMismatch);
    }

    let base = rebuild_signature_base(parts, content_digest_header, &covered, input)?;
    let expected = key.mac(base.as_bytes());
    if !bool::from(expected.as_slice().ct_eq(signature)) {
        return Err(VerifyError::BadSignature);
    }

    Ok(Verified {
        key_id: key_id.to_owned(),
        created,
        nonce: nonce.to_owned(),
    })
}

/// An empty field line is the same as an absent one (RFC 8941 §4.2), so both are "missing".
fn present<'a>(value: Option<&'a str>, header: &'static str) -> Result<&'a str, VerifyError> {
    value
        .map(trim_ows)
        .filter(|value| !value.is_empty())
        .ok_or(VerifyError::MissingHeader(header))
}

/// HTTP field values exclude leading and trailing SP/HTAB (RFC 9110 §5.5, RFC 9421 §2.1).
fn trim_ows(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
}

/// Extracts the 32-byte SHA-256 member from a Content-Digest dictionary that may list several
/// algorithms. Other members are ignored: SHA-256 is the one this deployment agrees on.
fn parse_sha256_digest(header: &str) -> Result<Vec<u8>, VerifyError> {
    let malformed = VerifyError::MalformedHeader(CONTENT_DIGEST_HEADER);
    let digests = sfv::parse_dictionary(header).map_err(|_| malformed)?;
    match sfv::member(&digests, SHA256_DIGEST_KEY) {
        Some(Member::Item(Item {
            bare: BareItem::ByteSeq(bytes),
            ..
        })) if bytes.len() == 32 => Ok(bytes.clone()),
        _ => Err(malformed),
    }
}

/// Picks the first `Signature-Input` member whose label also appears in `Signature`.
fn select_signature<'d>(
    inputs: &'d sfv::Dictionary,
    signatures: &'d sfv::Dictionary,
) -> Result<(&'d InnerList, &'d [u8]), VerifyError> {
    let (input, signature) = inputs
        .iter()
        .find_map(|(label, input)| {
            sfv::member(signatures, label).map(|signature| (input, signature))
        })
        .ok_or(VerifyError::MalformedHeader(SIGNATURE_HEADER))?;
    let Member::InnerList(input) = input else {
        return Err(VerifyError::MalformedHeader(SIGNATURE_INPUT_HEADER));
    };
    let Member::Item(Item {
        bare: BareItem::ByteSeq(signature),
        ..
    }) = signature
    else {
        return Err(VerifyError::MalformedHeader(SIGNATURE_HEADER));
    };
    Ok((input, signature))
}

/// The covered components in the signer's order. Component parameters (`;sf`, `;key`, `;req`,
/// ...) select other values than the plain field, which this verifier does not implement, so
/// they are refused like unknown components. Duplicates are invalid per RFC 9421 §2.5.
fn covered_components(input: &InnerList) -> Result<Vec<Component>, VerifyError> {
    let malformed = VerifyError::MalformedHeader(SIGNATURE_INPUT_HEADER);
    let mut covered = Vec::with_capacity(input.items.len());
    for item in &input.items {
        let BareItem::String(name) = &item.bare else {
            return Err(malformed);
        };
        if !item.params.is_empty() {
            return Err(malformed);
        }
        let component = Component::from_name(name).ok_or(malformed)?;
        if covered.contains(&component) {
            return Err(malformed);
        }
        covered.push(component);
    }
    Ok(covered)
}

/// The signature parameters this crate interprets; others (e.g. `tag`) are still covered by the
/// signature through the `@signature-params` line but otherwise ignored.
struct SignatureParams<'p> {
    key_id: Option<&'p str>,
    created: Option<i64>,
    nonce: Option<&'p str>,
    alg: Option<&'p str>,
    expires: Option<i64>,
}

impl<'p> SignatureParams<'p> {
    /// A parameter of the wrong type (e.g. `created="123"`) is malformed rather than missing.
    fn from_parameters(params: &'p Parameters) -> Result<Self, VerifyError> {
        let malformed = VerifyError::MalformedHeader(SIGNATURE_INPUT_HEADER);
        let string = |name: &str| match sfv::param(params, name) {
            None => Ok(None),
            Some(BareItem::String(value)) => Ok(Some(value.as_str())),
            Some(_) => Err(malformed),
        };
        let integer = |name: &str| match sfv::param(params, name) {
            None => Ok(None),
            Some(BareItem::Integer(value)) => Ok(Some(*value)),
            Some(_) => Err(malformed),
        };
        Ok(Self {
            key_id: string("keyid")?,
            created: integer("created")?,
            nonce: string("nonce")?,
            alg: string("alg")?,
            expires: integer("expires")?,
        })
    }
}

/// Recreates the signature base from what the verifier itself observed (RFC 9421 §3.2), with
/// the `@signature-params` line re-serialized from the parsed input.
fn rebuild_signature_base(
    parts: &RequestParts<'_>,
    content_digest_header: &str,
    covered: &[Component],
    input: &InnerList,
) -> Result<String, VerifyError> {
    let needs_parsed_uri = covered.iter().any(|component| {
        matches!(
            component,
            Component::Authority | Component::Scheme | Component::Path | Component::Query
        )
    });
    let target = if needs_parsed_uri {
        // Covering a derived component we cannot compute is the same failure as covering an
        // unknown one.
        Some(
            TargetUri::parse(parts.target_uri)
                .ok_or(VerifyError::MalformedHeader(SIGNATURE_INPUT_HEADER))?,
        )
    } else {
        None
    };
    let method = parts.method.to_ascii_uppercase();
    let mut values: Vec<(&str, &str)> = Vec::with_capacity(covered.len());
    for component in covered {
        let value = match (component, &target) {
            (Component::Method, _) => method.as_str(),
            (Component::TargetUri, _) => parts.target_uri,
            (Component::ContentDigest, _) => content_digest_header,
            (Component::Authority, Some(target)) => target.authority.as_str(),
            (Component::Scheme, Some(target)) => target.scheme.as_str(),
            (Component::Path, Some(target)) => target.path.as_str(),
            (Component::Query, Some(target)) => target.query.as_str(),
            (
                Component::Authority | Component::Scheme | Component::Path | Component::Query,
                None,
            ) => {
                return Err(VerifyError::MalformedHeader(SIGNATURE_INPUT_HEADER));
            }
        };
        if !fits_in_signature_base(value) {
            // No honest signer can have produced a base from this value.
            return Err(VerifyError::BadSignature);
        }
        values.push((component.name(), value));
    }
    Ok(signature_base(&values, &sfv::serialize_inner_list(input)))
}

#[cfg(test)]
mod tests;
