//! Verification of Stripe webhook signatures.
//!
//! A Stripe webhook moves money into an account (credit purchases, subscription refills). So
//! the request must be proved to come from Stripe before anything in it is believed. Stripe
//! sends a `Stripe-Signature` header like
//!
//! ```text
//! t=1492774577,v1=5257a869…,v1=…,v0=6ffbb59b…
//! ```
//!
//! The check runs HMAC-SHA256 over `"{t}.{raw body}"`, keyed with the endpoint's signing secret.
//! A match against any `v1` entry passes. `v0` is Stripe's legacy test-mode scheme and is
//! ignored. Several secrets may be configured at once, which lets a secret be rotated without
//! dropping events: Stripe signs with both during the overlap. A fresh timestamp (within the
//! tolerance, 300 s by default, the same as Stripe's own libraries) stops an old, validly signed
//! event from being replayed.
//!
//! The function is pure: the caller passes in the current time, and the raw body exactly as it
//! arrived. A body that has been re-serialised will not verify.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

type HmacSha256 = Hmac<Sha256>;

/// Stripe's default and recommended tolerance between the signed timestamp and now.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// A real header is about 150 bytes. The cap limits the parsing and hashing work that an
/// unauthenticated request can cause.
const MAX_HEADER_LEN: usize = 4096;

/// Why a webhook was rejected. All of these should answer 400 and never be retried by us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StripeSigError {
    #[error("signature header has no timestamp")]
    MissingTimestamp,
    #[error("signature header has no v1 signature")]
    NoSignatures,
    #[error("signature timestamp is outside the tolerance")]
    Stale,
    #[error("no signature matches the payload")]
    BadSignature,
    #[error("signature header is malformed")]
    Malformed,
}

impl StripeSigError {
    /// Stable error code for responses and metrics.
    pub const fn code(&self) -> &'static str {
        match self {
            StripeSigError::MissingTimestamp => "missing_timestamp",
            StripeSigError::NoSignatures => "no_signatures",
            StripeSigError::Stale => "stale",
            StripeSigError::BadSignature => "bad_signature",
            StripeSigError::Malformed => "malformed",
        }
    }
}

struct ParsedHeader<'a> {
    /// The timestamp exactly as sent. The signature covers these bytes, not a re-formatted
    /// number.
    timestamp_text: &'a str,
    timestamp: i64,
    v1_signatures: Vec<&'a str>,
}

fn parse_header(header: &str) -> Result<ParsedHeader<'_>, StripeSigError> {
    if header.len() > MAX_HEADER_LEN {
        return Err(StripeSigError::Malformed);
    }
    let mut timestamp: Option<(&str, i64)> = None;
    let mut v1_signatures = Vec::new();
    for item in header.split(',') {
        let item = item.trim();
        let (key, value) = item.split_once('=').ok_or(StripeSigError::Malformed)?;
        match key {
            "t" => {
                // Two timestamps would leave it ambiguous which one the signature covers.
                if timestamp.is_some()
                    || value.is_empty()
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(StripeSigError::Malformed);
                }
                let parsed: i64 = value.parse().map_err(|_| StripeSigError::Malformed)?;
                timestamp = Some((value, parsed));
            }
            "v1" => v1_signatures.push(value),
            // v0 (legacy test mode) and any scheme added later are not ours to trust.
            _ => {}
        }
    }
    let (timestamp_text, timestamp) = timestamp.ok_or(StripeSigError::MissingTimestamp)?;
    if v1_signatures.is_empty() {
        return Err(StripeSigError::NoSignatures);
    }
    Ok(ParsedHeader {
        timestamp_text,
        timestamp,
        v1_signatures,
    })
}

fn v1_tag(secret: &[u8], timestamp_text: &str, payload: &[u8]) -> [u8; 32] {
    let mut mac =
        HmacSha256::new_from_slice(secret).expect("invariant: HMAC accepts keys of any length");
    mac.update(timestamp_text.as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac.finalize().into_bytes().into()
}

/// Verifies a `Stripe-Signature` header and returns the signed timestamp (unix seconds).
///
/// `secrets` are the endpoint signing secrets (`whsec_…`), used verbatim as HMAC keys; pass the
/// old and new one during rotation. An empty list, or empty secrets, verify nothing. `now` is the
/// current unix time. A timestamp more than `tolerance_secs` away from it in either direction is
/// `stale`. A negative tolerance accepts only an exact match.
///
/// The signature is checked before freshness, so `stale` is reported only for genuine (old)
/// events. Forged requests are always reported as `bad_signature`.
pub fn verify_stripe_signature(
    header: &str,
    payload: &[u8],
    secrets: &[&[u8]],
    now: i64,
    tolerance_secs: i64,
) -> Result<i64, StripeSigError> {
    let parsed = parse_header(header)?;

    let candidates: Vec<[u8; 32]> = parsed
        .v1_signatures
        .iter()
        .filter_map(|signature| {
            let mut decoded = [0u8; 32];
            // An entry that is not 64 hex digits cannot match. It is skipped rather than failing
            // the header, so that one odd entry cannot block a valid one beside it.
            hex::decode_to_slice(signature, &mut decoded).ok()?;
            Some(decoded)
        })
        .collect();

    // Every secret is compared against every signature without stopping early, so the timing
    // does not show which pair matched.
    let mut matched = Choice::from(0);
    // An empty secret is a missing configuration value, not a key: anyone could sign with it.
    for secret in secrets.iter().filter(|secret| !secret.is_empty()) {
        let expected = v1_tag(secret, parsed.timestamp_text, payload);
        for candidate in &candidates {
            matched |= expected.ct_eq(candidate);
        }
    }
    if !bool::from(matched) {
        return Err(StripeSigError::BadSignature);
    }

    let tolerance = u64::try_from(tolerance_secs).unwrap_or(0);
    if now.abs_diff(parsed.timestamp) > tolerance {
        return Err(StripeSigError::Stale);
    }
    Ok(parsed.timestamp)
}

/// Builds a `Stripe-Signature` header value (`t=…,v1=…`) for `payload`, signed the way Stripe
/// signs it. It is used by tests and by the local Stripe simulator.
pub fn sign_stripe_payload(secret: &[u8], timestamp: i64, payload: &[u8]) -> String {
    let timestamp_text = timestamp.to_string();
    let tag = v1_tag(secret, &timestamp_text, payload);
    format!("t={timestamp_text},v1={}", hex::encode(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test_secret";
    const OTHER_SECRET: &[u8] = b"whsec_rotated_secret";
    const PAYLOAD: &[u8] = br#"{"id":"evt_1","type":"checkout.session.completed"}"#;
    const T: i64 = 1_700_000_000;

    fn verify(header: &str, secrets: &[&[u8]], now: i64) -> Result<i64, StripeSigError> {
        verify_stripe_signature(header, PAYLOAD, secrets, now, DEFAULT_TOLERANCE_SECS)
    }

    #[test]
    fn signature_matches_an_independent_hmac() {
        // Computed with Python's hmac module:
        // hmac.new(b"whsec_test_secret", b"1700000000." + payload, sha256).hexdigest()
        let expected =
            "t=1700000000,v1=a13d4b1f9003bc2fb6c06224e878b6056185eaa50d40e1e7dc05517f8af41d7b";
        assert_eq!(sign_stripe_payload(SECRET, T, PAYLOAD), expected);
        assert_eq!(verify(expected, &[SECRET], T), Ok(T));
    }

    #[test]
    fn round_trip_with_stripe_style_extras() {
        let signed = sign_stripe_payload(SECRET, T, PAYLOAD);
        let header =
            format!("{signed},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39");
        assert_eq!(verify(&header, &[SECRET], T + 10), Ok(T));
        let spaced = signed.replace(',', " , ");
        assert_eq!(verify(&spaced, &[SECRET], T), Ok(T));
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let good = sign_stripe_payload(SECRET, T, PAYLOAD);
        let good_sig = good.split_once(",v1=").expect("header has v1").1;
        let junk = "00".repeat(32);
        let header = format!("t={T},v1={junk},v1=not-hex,v1={good_sig},v1=abc");
        assert_eq!(verify(&header, &[SECRET], T), Ok(T));
    }

    #[test]
    fn any_of_several_secrets_may_match() {
        let header = sign_stripe_payload(OTHER_SECRET, T, PAYLOAD);
        assert_eq!(verify(&header, &[SECRET, OTHER_SECRET], T), Ok(T));
        assert_eq!(verify(&header, &[OTHER_SECRET, SECRET], T), Ok(T));
        assert_eq!(
            verify(&header, &[SECRET], T),
            Err(StripeSigError::BadSignature)
        );
        assert_eq!(verify(&header, &[], T), Err(StripeSigError::BadSignature));
    }

    #[test]
    fn an_empty_secret_never_verifies() {
        let forged = sign_stripe_payload(b"", T, PAYLOAD);
        assert_eq!(
            verify(&forged, &[b""], T),
            Err(StripeSigError::BadSignature)
        );
        assert_eq!(
            verify(&forged, &[b"", SECRET], T),
            Err(StripeSigError::BadSignature)
        );
    }

    #[test]
    fn tampering_is_detected() {
        let header = sign_stripe_payload(SECRET, T, PAYLOAD);
        let tampered_body = br#"{"id":"evt_1","type":"checkout.session.completed "}"#;
        assert_eq!(
            verify_stripe_signature(&header, tampered_body, &[SECRET], T, 300),
            Err(StripeSigError::BadSignature)
        );
        // Moving the timestamp invalidates the signature too.
        let shifted = header.replacen(&format!("t={T}"), &format!("t={}", T + 1), 1);
        assert_eq!(
            verify(&shifted, &[SECRET], T),
            Err(StripeSigError::BadSignature)
        );
        // The signature covers the timestamp text, so a zero-padded t does not verify.
        let padded = header.replacen("t=", "t=0", 1);
        assert_eq!(
            verify(&padded, &[SECRET], T),
            Err(StripeSigError::BadSignature)
        );
    }

    #[test]
    fn every_single_bit_flip_in_the_signature_is_rejected() {
        let header = sign_stripe_payload(SECRET, T, PAYLOAD);
        let sig_hex = header.split_once(",v1=").expect("header has v1").1;
        let sig = hex::decode(sig_hex).expect("hex signature");
        for byte in 0..sig.len() {
            for bit in 0..8 {
                let mut flipped = sig.clone();
                flipped[byte] ^= 1 << bit;
                let header = format!("t={T},v1={}", hex::encode(&flipped));
                assert_eq!(
                    verify(&header, &[SECRET], T),
                    Err(StripeSigError::BadSignature),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let header = sign_stripe_payload(SECRET, T, PAYLOAD);
        let (t, sig) = header.split_once(",v1=").expect("header has v1");
        let upper = format!("{t},v1={}", sig.to_ascii_uppercase());
        assert_eq!(verify(&upper, &[SECRET], T), Ok(T));
    }

    #[test]
    fn tolerance_window_is_inclusive_and_two_sided() {
        let header = sign_stripe_payload(SECRET, T, PAYLOAD);
        for offset in -400i64..=400 {
            let result = verify(&header, &[SECRET], T + offset);
            if offset.abs() <= 300 {
                assert_eq!(result, Ok(T), "offset {offset}");
            } else {
                assert_eq!(result, Err(StripeSigError::Stale), "offset {offset}");
            }
        }
        assert_eq!(
            verify_stripe_signature(&header, PAYLOAD, &[SECRET], T, -1),
            Ok(T)
        );
        assert_eq!(
            verify_stripe_signature(&header, PAYLOAD, &[SECRET], T + 1, -1),
            Err(StripeSigError::Stale)
        );
        assert_eq!(
            verify_stripe_signature(&header, PAYLOAD, &[SECRET], i64::MIN, 300),
            Err(StripeSigError::Stale)
        );
    }

    #[test]
    fn forged_old_events_report_bad_signature_not_stale() {
        let header = sign_stripe_payload(b"attacker", T, PAYLOAD);
        assert_eq!(
            verify(&header, &[SECRET], T + 10_000),
            Err(StripeSigError::BadSignature)
        );
    }

    #[test]
    fn header_shape_errors() {
        let sig = "ab".repeat(32);
        let cases = [
            ("", StripeSigError::Malformed),
            ("garbage", StripeSigError::Malformed),
            (&format!("t={T},v1={sig},"), StripeSigError::Malformed),
            (&format!("t={T};v1={sig}"), StripeSigError::Malformed),
            (&format!("t=abc,v1={sig}"), StripeSigError::Malformed),
            (&format!("t=-5,v1={sig}"), StripeSigError::Malformed),
            (&format!("t=+5,v1={sig}"), StripeSigError::Malformed),
            (&format!("t=,v1={sig}"), StripeSigError::Malformed),
            (
                &format!("t=99999999999999999999,v1={sig}"),
                StripeSigError::Malformed,
            ),
            (&format!("t={T},t={T},v1={sig}"), StripeSigError::Malformed),
            (&format!("v1={sig}"), StripeSigError::MissingTimestamp),
            (
                &format!("v0={sig},v1={sig}"),
                StripeSigError::MissingTimestamp,
            ),
            (&format!("t={T}"), StripeSigError::NoSignatures),
            (&format!("t={T},v0={sig}"), StripeSigError::NoSignatures),
            (&format!("t={T},V1={sig}"), StripeSigError::NoSignatures),
        ];
        for (header, expected) in cases {
            assert_eq!(verify(header, &[SECRET], T), Err(expected), "{header:?}");
        }
        let huge = format!("t={T},{}", "v1=00,".repeat(1000));
        assert_eq!(verify(&huge, &[SECRET], T), Err(StripeSigError::Malformed));
    }

    #[test]
    fn error_codes_are_stable() {
        assert_eq!(StripeSigError::MissingTimestamp.code(), "missing_timestamp");
        assert_eq!(StripeSigError::NoSignatures.code(), "no_signatures");
        assert_eq!(StripeSigError::Stale.code(), "stale");
        assert_eq!(StripeSigError::BadSignature.code(), "bad_signature");
        assert_eq!(StripeSigError::Malformed.code(), "malformed");
    }

    #[test]
    fn signing_many_payloads_round_trips() {
        for length in 0..200usize {
            let payload: Vec<u8> = (0..length).map(|i| (i * 31 % 256) as u8).collect();
            let header = sign_stripe_payload(SECRET, T + length as i64, &payload);
            assert_eq!(
                verify_stripe_signature(&header, &payload, &[SECRET], T + length as i64, 300),
                Ok(T + length as i64)
            );
            if !payload.is_empty() {
                let mut altered = payload.clone();
                altered[length / 2] ^= 0x01;
                assert_eq!(
                    verify_stripe_signature(&header, &altered, &[SECRET], T + length as i64, 300),
                    Err(StripeSigError::BadSignature)
                );
            }
        }
    }
}
