//! Tests build hostile tokens by hand (base64url JSON + an HMAC computed here with `hmac`/`sha2`,
//! independently of jwt-compact), each valid in every respect but the one under test, so every
//! refusal is traced to the check that should make it. `forged_valid_token_is_accepted` proves
//! the forging helpers themselves produce acceptable tokens.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha2::{Sha256, Sha384, Sha512};

use super::*;

const NOW: i64 = 1_750_000_000;
const LEEWAY: i64 = CLOCK_SKEW_LEEWAY_SECS;

fn secret(fill: u8) -> [u8; 32] {
    let mut bytes = [fill; 32];
    // Not a constant byte string, so a redaction test cannot pass by accident.
    bytes[0] = 0xA5;
    bytes[31] = fill.wrapping_mul(7);
    bytes
}

const CURRENT: u8 = 1;
const OLD: u8 = 2;
const FOREIGN: u8 = 3;

fn spec_item(kid: &str, fill: u8) -> String {
    format!("{kid}:{}", STANDARD.encode(secret(fill)))
}

/// Ring with "current" (signing) and "old".
fn ring() -> Keyring {
    let spec = format!(
        "{},{}",
        spec_item("current", CURRENT),
        spec_item("old", OLD)
    );
    Keyring::parse(&spec).expect("test ring parses")
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key size");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// `header.payload.signature` from raw JSON bytes and raw signature bytes.
fn assemble(header: &[u8], payload: &[u8], sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let signed = format!("{}.{}", b64url(header), b64url(payload));
    let signature = sign(signed.as_bytes());
    format!("{signed}.{}", b64url(&signature))
}

/// A token signed with HMAC-SHA256 under `fill`'s secret.
fn forge(header: &Value, payload: &Value, fill: u8) -> String {
    forge_raw(
        header.to_string().as_bytes(),
        payload.to_string().as_bytes(),
        fill,
    )
}

fn forge_raw(header: &[u8], payload: &[u8], fill: u8) -> String {
    assemble(header, payload, |signed| hmac_sha256(&secret(fill), signed))
}

fn header(kid: &str) -> Value {
    json!({"alg": "HS256", "typ": "JWT", "kid": kid})
}

fn payload() -> Value {
    json!({
        "iat": NOW,
        "exp": NOW + TOKEN_TTL_SECS,
        "jti": "tok-1",
        "sub": "user-42",
        "email": "ada@example.com",
        "role": "user",
    })
}

fn payload_with(field: &str, value: Value) -> Value {
    let mut payload = payload();
    payload[field] = value;
    payload
}

fn payload_without(field: &str) -> Value {
    let mut payload = payload();
    payload
        .as_object_mut()
        .expect("payload is an object")
        .remove(field)
        .expect("field was present");
    payload
}

fn claims() -> SessionClaims {
    SessionClaims {
        jti: "tok-1".to_owned(),
        sub: "user-42".to_owned(),
        email: "ada@example.com".to_owned(),
        role: Role::User,
    }
}

fn verify(token: &str) -> Result<VerifiedSession, TokenError> {
    ring().verify(token, NOW)
}

fn decode_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("part exists");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
}

// ---------------------------------------------------------------------------------------------
// Issue and verify

#[test]
fn issued_token_round_trips() {
    let ring = ring();
    let admin = SessionClaims {
        role: Role::Admin,
        ..claims()
    };
    let token = ring.issue(&admin, NOW);
    let session = ring.verify(&token, NOW).expect("fresh token verifies");
    assert_eq!(
        session,
        VerifiedSession {
            claims: admin,
            issued_at: NOW,
            expires_at: NOW + TOKEN_TTL_SECS,
        }
    );
}

#[test]
fn issued_token_has_the_documented_shape() {
    let token = ring().issue(&claims(), NOW);
    assert_eq!(token.split('.').count(), 3);
    assert!(!token.contains('='), "base64url is unpadded");
    assert_eq!(
        decode_part(&token, 0),
        json!({"alg": "HS256", "kid": "current", "typ": "JWT"})
    );
    assert_eq!(decode_part(&token, 1), payload());
    // The signature is plain HMAC-SHA256 over "header.payload" with the signing secret.
    let (signed, signature) = token.rsplit_once('.').expect("three parts");
    assert_eq!(
        URL_SAFE_NO_PAD.decode(signature).expect("base64url"),
        hmac_sha256(&secret(CURRENT), signed.as_bytes())
    );
}

#[test]
fn forged_valid_token_is_accepted() {
    // Baseline for every refusal test below: the helpers build a token the verifier accepts.
    let session = verify(&forge(&header("current"), &payload(), CURRENT)).expect("valid");
    assert_eq!(session.claims, claims());
    assert_eq!(session.issued_at, NOW);
    assert_eq!(session.expires_at, NOW + TOKEN_TTL_SECS);
}

#[test]
fn header_without_typ_is_accepted() {
    let header = json!({"alg": "HS256", "kid": "current"});
    assert!(verify(&forge(&header, &payload(), CURRENT)).is_ok());
}

#[test]
fn issued_token_is_valid_until_expiry_plus_leeway() {
    let ring = ring();
    let token = ring.issue(&claims(), NOW);
    let expiry = NOW + TOKEN_TTL_SECS;
    assert!(ring.verify(&token, expiry).is_ok());
    assert!(ring.verify(&token, expiry + LEEWAY).is_ok());
    assert_eq!(
        ring.verify(&token, expiry + LEEWAY + 1),
        Err(TokenError::Expired)
    );
}

#[test]
fn documented_lifetime_and_leeway_hold_in_absolute_times() {
    // Pins the policy in literal numbers (the other tests are written against the constants):
    // 7 days of validity, then 30 s of tolerated clock skew.
    let ring = ring();
    let token = ring.issue(&claims(), 1_750_000_000);
    assert_eq!(
        ring.verify(&token, 1_750_000_000)
            .map(|session| session.expires_at),
        Ok(1_750_604_800)
    );
    assert!(ring.verify(&token, 1_750_604_830).is_ok());
    assert_eq!(ring.verify(&token, 1_750_604_831), Err(TokenError::Expired));
    assert!(ring.verify(&token, 1_749_999_970).is_ok());
    assert_eq!(
        ring.verify(&token, 1_749_999_969),
        Err(TokenError::NotYetValid)
    );
}

// ---------------------------------------------------------------------------------------------
// Algorithm

#[test]
fn alg_none_with_empty_signature_is_refused() {
    for alg in ["none", "None", "NONE"] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": "current"});
        let token = assemble(
            header.to_string().as_bytes(),
            payload().to_string().as_bytes(),
            |_| Vec::new(),
        );
        assert!(token.ends_with('.'), "empty signature part");
        assert_eq!(verify(&token), Err(TokenError::WrongAlgorithm), "{alg}");
    }
}

#[test]
fn alg_none_is_refused_even_with_a_valid_hmac() {
    let header = json!({"alg": "none", "kid": "current"});
    assert_eq!(
        verify(&forge(&header, &payload(), CURRENT)),
        Err(TokenError::WrongAlgorithm)
    );
}

#[test]
fn other_hmac_algorithms_are_refused() {
    fn hmac_with<M: hmac::Mac + hmac::digest::KeyInit>(message: &[u8]) -> Vec<u8> {
        let mut mac =
            <M as hmac::digest::KeyInit>::new_from_slice(&secret(CURRENT)).expect("any key size");
        mac.update(message);
        mac.finalize().into_bytes().to_vec()
    }
    let payload = payload().to_string();
    for (alg, sign) in [
        ("HS384", hmac_with::<Hmac<Sha384>> as fn(&[u8]) -> Vec<u8>),
        ("HS512", hmac_with::<Hmac<Sha512>>),
    ] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": "current"}).to_string();
        let token = assemble(header.as_bytes(), payload.as_bytes(), sign);
        assert_eq!(verify(&token), Err(TokenError::WrongAlgorithm), "{alg}");
    }
}

#[test]
fn asymmetric_and_misspelled_algorithms_are_refused() {
    // RS256/ES256 with an HMAC signature is the classic key-confusion attack; "hs256" checks
    // that the comparison is exact.
    for alg in ["RS256", "ES256", "EdDSA", "PS256", "hs256", "HS256 ", ""] {
        let header = json!({"alg": alg, "kid": "current"});
        assert_eq!(
            verify(&forge(&header, &payload(), CURRENT)),
            Err(TokenError::WrongAlgorithm),
            "{alg:?}"
        );
    }
}

#[test]
fn missing_or_ill_typed_alg_is_malformed() {
    for header in [
        json!({"kid": "current", "typ": "JWT"}),
        json!({"alg": 256, "kid": "current"}),
        json!({"alg": null, "kid": "current"}),
    ] {
        assert_eq!(
            verify(&forge(&header, &payload(), CURRENT)),
            Err(TokenError::Malformed),
            "{header}"
        );
    }
}

#[test]
fn duplicate_alg_header_is_malformed() {
    let header = br#"{"alg":"none","alg":"HS256","kid":"current"}"#;
    let token = forge_raw(header, payload().to_string().as_bytes(), CURRENT);
    assert_eq!(verify(&token), Err(TokenError::Malformed));
}

// ---------------------------------------------------------------------------------------------
// Key id and signature

#[test]
fn missing_kid_is_refused() {
    let header = json!({"alg": "HS256", "typ": "JWT"});
    assert_eq!(
        verify(&forge(&header, &payload(), CURRENT)),
        Err(TokenError::MissingKeyId)
    );
}

#[test]
fn unknown_kid_is_refused() {
    for kid in ["retired", "", "CURRENT", "current "] {
        assert_eq!(
            verify(&forge(&header(kid), &payload(), CURRENT)),
            Err(TokenError::UnknownKeyId),
            "{kid:?}"
        );
    }
}

#[test]
fn ill_typed_kid_is_malformed() {
    let header = json!({"alg": "HS256", "kid": 1});
    assert_eq!(
        verify(&forge(&header, &payload(), CURRENT)),
        Err(TokenError::Malformed)
    );
}

#[test]
fn key_outside_the_ring_is_refused_even_under_a_known_kid() {
    for kid in ["current", "old"] {
        assert_eq!(
            verify(&forge(&header(kid), &payload(), FOREIGN)),
            Err(TokenError::BadSignature),
            "{kid}"
        );
    }
}

#[test]
fn kid_selects_the_key_and_keys_are_not_tried_in_turn() {
    // Signed with the "old" secret but labelled "current": a verifier that tried every key
    // would accept this.
    assert_eq!(
        verify(&forge(&header("current"), &payload(), OLD)),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn tampered_payload_is_refused() {
    let token = ring().issue(&claims(), NOW);
    let parts: Vec<&str> = token.split('.').collect();
    let escalated = b64url(payload_with("role", json!("admin")).to_string().as_bytes());
    let tampered = format!("{}.{escalated}.{}", parts[0], parts[2]);
    assert_eq!(verify(&tampered), Err(TokenError::BadSignature));
}

#[test]
fn tampered_header_is_refused() {
    let token = ring().issue(&claims(), NOW);
    let parts: Vec<&str> = token.split('.').collect();
    let swapped = b64url(json!({"alg": "HS256", "kid": "old"}).to_string().as_bytes());
    let tampered = format!("{swapped}.{}.{}", parts[1], parts[2]);
    assert_eq!(verify(&tampered), Err(TokenError::BadSignature));
}

#[test]
fn flipped_signature_bit_is_refused() {
    let header = header("current").to_string();
    let payload = payload().to_string();
    let token = assemble(header.as_bytes(), payload.as_bytes(), |signed| {
        let mut signature = hmac_sha256(&secret(CURRENT), signed);
        signature[31] ^= 1;
        signature
    });
    assert_eq!(verify(&token), Err(TokenError::BadSignature));
}

#[test]
fn signature_of_wrong_length_is_refused() {
    let header = header("current").to_string();
    let payload = payload().to_string();
    let truncated = assemble(header.as_bytes(), payload.as_bytes(), |signed| {
        hmac_sha256(&secret(CURRENT), signed)[..31].to_vec()
    });
    let extended = assemble(header.as_bytes(), payload.as_bytes(), |signed| {
        let mut signature = hmac_sha256(&secret(CURRENT), signed);
        signature.push(0);
        signature
    });
    let empty = assemble(header.as_bytes(), payload.as_bytes(), |_| Vec::new());
    for token in [truncated, extended, empty] {
        assert_eq!(verify(&token), Err(TokenError::BadSignature), "{token}");
    }
}

#[test]
fn bad_signature_wins_over_bad_claims() {
    // The signature is checked before the payload is parsed: an unsigned garbage payload is a
    // signature failure, not a claims failure.
    let token = assemble(
        header("current").to_string().as_bytes(),
        br#"{"exp":"soon"}"#,
        |_| vec![0; 32],
    );
    assert_eq!(verify(&token), Err(TokenError::BadSignature));
}

// ---------------------------------------------------------------------------------------------
// Rotation

#[test]
fn token_from_a_rotated_out_signing_key_verifies_while_the_key_is_kept() {
    let before = Keyring::parse(&spec_item("old", OLD)).expect("parses");
    let token = before.issue(&claims(), NOW);

    let during = ring();
    assert_eq!(during.signing_kid(), "current");
    assert_eq!(
        during.verify(&token, NOW + 60),
        Ok(before.verify(&token, NOW).expect("ok"))
    );
    let fresh = during.issue(&claims(), NOW);
    assert_eq!(decode_part(&fresh, 0)["kid"], "current");
    assert!(during.verify(&fresh, NOW).is_ok());

    let after = Keyring::parse(&spec_item("current", CURRENT)).expect("parses");
    assert_eq!(
        after.verify(&token, NOW + 60),
        Err(TokenError::UnknownKeyId)
    );
    assert!(after.verify(&fresh, NOW).is_ok());
}

#[test]
fn replacing_a_key_under_the_same_kid_invalidates_its_tokens() {
    let token = ring().issue(&claims(), NOW);
    let replaced = Keyring::parse(&spec_item("current", FOREIGN)).expect("parses");
    assert_eq!(replaced.verify(&token, NOW), Err(TokenError::BadSignature));
}

// ---------------------------------------------------------------------------------------------
// Time

#[test]
fn expired_token_is_refused_beyond_the_leeway() {
    let at = |exp: i64| {
        let payload = json!({
            "iat": exp - TOKEN_TTL_SECS, "exp": exp,
            "jti": "tok-1", "sub": "user-42", "email": "ada@example.com", "role": "user",
        });
        verify(&forge(&header("current"), &payload, CURRENT))
    };
    assert!(at(NOW).is_ok());
    assert!(at(NOW - LEEWAY).is_ok());
    assert_eq!(at(NOW - LEEWAY - 1), Err(TokenError::Expired));
    assert_eq!(at(NOW - 86_400), Err(TokenError::Expired));
}

#[test]
fn token_issued_in_the_future_is_refused_beyond_the_leeway() {
    let at = |iat: i64| {
        let payload = json!({
            "iat": iat, "exp": iat + TOKEN_TTL_SECS,
            "jti": "tok-1", "sub": "user-42", "email": "ada@example.com", "role": "user",
        });
        verify(&forge(&header("current"), &payload, CURRENT))
    };
    assert!(at(NOW + LEEWAY).is_ok());
    assert_eq!(at(NOW + LEEWAY + 1), Err(TokenError::NotYetValid));
    assert_eq!(at(NOW + 86_400), Err(TokenError::NotYetValid));
}

#[test]
fn not_before_in_the_future_is_refused_beyond_the_leeway() {
    let with_nbf = |nbf: i64| payload_with("nbf", json!(nbf));
    assert!(verify(&forge(&header("current"), &with_nbf(NOW + LEEWAY), CURRENT)).is_ok());
    assert_eq!(
        verify(&forge(
            &header("current"),
            &with_nbf(NOW + LEEWAY + 1),
            CURRENT
        )),
        Err(TokenError::NotYetValid)
    );
}

#[test]
fn clock_outside_chronos_range_fails_closed() {
    let token = ring().issue(&claims(), NOW);
    assert_eq!(ring().verify(&token, i64::MAX), Err(TokenError::Expired));
    assert_eq!(
        ring().verify(&token, i64::MIN),
        Err(TokenError::NotYetValid)
    );
}

#[test]
fn missing_exp_or_iat_is_refused() {
    for field in ["exp", "iat"] {
        assert_eq!(
            verify(&forge(&header("current"), &payload_without(field), CURRENT)),
            Err(TokenError::BadClaims),
            "{field}"
        );
    }
}

#[test]
fn ill_typed_times_are_refused() {
    for (field, value) in [
        ("exp", json!("1750604800")),
        ("exp", json!(null)),
        ("iat", json!(true)),
        ("iat", json!({"secs": NOW})),
        ("nbf", json!("now")),
        ("exp", json!(1e300)),
    ] {
        assert_eq!(
            verify(&forge(
                &header("current"),
                &payload_with(field, value.clone()),
                CURRENT
            )),
            Err(TokenError::BadClaims),
            "{field}: {value}"
        );
    }
}

#[test]
fn exp_not_after_iat_is_refused() {
    for exp in [NOW, NOW - 1] {
        assert_eq!(
            verify(&forge(
                &header("current"),
                &payload_with("exp", json!(exp)),
                CURRENT
            )),
            Err(TokenError::BadClaims),
            "{exp}"
        );
    }
}

#[test]
fn lifetime_longer_than_the_ttl_is_refused() {
    let payload = payload_with("exp", json!(NOW + TOKEN_TTL_SECS + 1));
    assert_eq!(
        verify(&forge(&header("current"), &payload, CURRENT)),
        Err(TokenError::BadClaims)
    );
}

// ---------------------------------------------------------------------------------------------
// Claims

#[test]
fn missing_session_claims_are_refused() {
    for field in ["jti", "sub", "email", "role"] {
        assert_eq!(
            verify(&forge(&header("current"), &payload_without(field), CURRENT)),
            Err(TokenError::BadClaims),
            "{field}"
        );
    }
}

#[test]
fn ill_typed_session_claims_are_refused() {
    for (field, value) in [
        ("jti", json!(["tok-1"])),
        ("sub", json!(42)),
        ("email", json!(null)),
        ("role", json!(1)),
        ("role", json!({"user": true})),
    ] {
        assert_eq!(
            verify(&forge(
                &header("current"),
                &payload_with(field, value.clone()),
                CURRENT
            )),
            Err(TokenError::BadClaims),
            "{field}: {value}"
        );
    }
}

#[test]
fn empty_session_claims_are_refused() {
    for field in ["jti", "sub", "email"] {
        assert_eq!(
            verify(&forge(
                &header("current"),
                &payload_with(field, json!("")),
                CURRENT
            )),
            Err(TokenError::BadClaims),
            "{field}"
        );
    }
}

#[test]
fn unknown_roles_are_refused() {
    for role in ["superadmin", "Admin", "USER", "", "owner"] {
        assert_eq!(
            verify(&forge(
                &header("current"),
                &payload_with("role", json!(role)),
                CURRENT
            )),
            Err(TokenError::BadClaims),
            "{role:?}"
        );
    }
}

#[test]
fn duplicate_claims_are_refused() {
    // Two parsers disagreeing on which duplicate wins is a classic privilege escalation.
    let payload = format!(
        r#"{{"iat":{NOW},"exp":{},"jti":"t","sub":"u","email":"e@x","role":"user","role":"admin"}}"#,
        NOW + TOKEN_TTL_SECS
    );
    let token = forge_raw(
        header("current").to_string().as_bytes(),
        payload.as_bytes(),
        CURRENT,
    );
    assert_eq!(verify(&token), Err(TokenError::BadClaims));

    let payload = format!(
        r#"{{"iat":{NOW},"exp":{},"exp":{},"jti":"t","sub":"u","email":"e@x","role":"user"}}"#,
        NOW + TOKEN_TTL_SECS,
        NOW + 10 * TOKEN_TTL_SECS
    );
    let token = forge_raw(
        header("current").to_string().as_bytes(),
        payload.as_bytes(),
        CURRENT,
    );
    assert_eq!(verify(&token), Err(TokenError::BadClaims));
}

#[test]
fn signed_payload_that_is_not_a_json_object_is_refused() {
    for payload in [
        &b"not json"[..],
        b"[1,2,3]",
        b"\"claims\"",
        b"",
        b"{\"exp\":",
    ] {
        let token = forge_raw(header("current").to_string().as_bytes(), payload, CURRENT);
        assert_eq!(
            verify(&token),
            Err(TokenError::BadClaims),
            "{}",
            String::from_utf8_lossy(payload)
        );
    }
}

#[test]
fn extra_claims_are_ignored() {
    let payload = payload_with("iss", json!("someone"));
    assert!(verify(&forge(&header("current"), &payload, CURRENT)).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Shape

#[test]
fn malformed_shapes_are_refused() {
    let valid = ring().issue(&claims(), NOW);
    let parts: Vec<&str> = valid.split('.').collect();
    let candidates = [
        String::new(),
        "abc".to_owned(),
        "..".to_owned(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{valid}."),
        format!("{valid}.{}", parts[2]),
        format!(" {valid}"),
        format!("{valid}\n"),
        format!("Bearer {valid}"),
        // Standard-alphabet and padded base64 are not base64url.
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}", parts[0].replace('J', "+"), parts[1], parts[2]),
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            parts[2].replacen(|_| true, "/", 1)
        ),
        format!("{}.{}.é{}", parts[0], parts[1], parts[2]),
    ];
    for token in candidates {
        assert_eq!(verify(&token), Err(TokenError::Malformed), "{token:?}");
    }
}

#[test]
fn non_canonical_base64_is_refused() {
    // base64url of an odd-length part with non-zero trailing bits decodes "loosely" to the same
    // bytes in lax decoders; strict decoding keeps one token string per token.
    let valid = ring().issue(&claims(), NOW);
    let (rest, signature) = valid.rsplit_once('.').expect("three parts");
    // A 32-byte signature is 43 chars; the last char carries 2 padding bits that must be zero.
    let last = signature.chars().last().expect("non-empty");
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let index = alphabet.find(last).expect("base64url char");
    assert_eq!(index % 4, 0, "canonical encoding has zero trailing bits");
    let sloppy_last = alphabet.chars().nth(index + 1).expect("in range");
    let sloppy = format!("{rest}.{}{sloppy_last}", &signature[..signature.len() - 1]);
    assert_eq!(verify(&sloppy), Err(TokenError::Malformed));
}

#[test]
fn header_that_is_not_a_json_object_is_refused() {
    for header in [&b"not json"[..], b"[\"HS256\"]", b"", b"null"] {
        let token = forge_raw(header, payload().to_string().as_bytes(), CURRENT);
        assert_eq!(
            verify(&token),
            Err(TokenError::Malformed),
            "{}",
            String::from_utf8_lossy(header)
        );
    }
}

#[test]
fn critical_header_extensions_are_refused() {
    let mut header = header("current");
    header["crit"] = json!(["b64"]);
    header["b64"] = json!(false);
    assert_eq!(
        verify(&forge(&header, &payload(), CURRENT)),
        Err(TokenError::Malformed)
    );
}

#[test]
fn non_json_content_types_are_refused() {
    for cty in ["CBOR", "text/plain"] {
        let mut header = header("current");
        header["cty"] = json!(cty);
        assert_eq!(
            verify(&forge(&header, &payload(), CURRENT)),
            Err(TokenError::Malformed),
            "{cty}"
        );
    }
}

#[test]
fn oversized_tokens_are_refused_before_parsing() {
    // Pad a validly signed token with an ignored claim: just under the cap it verifies, so
    // the refusal above the cap can only come from the size check.
    let sized = |filler: usize| {
        forge(
            &header("current"),
            &payload_with("filler", json!("x".repeat(filler))),
            CURRENT,
        )
    };
    let mut filler = 0;
    while sized(filler + 1).len() <= MAX_TOKEN_LEN {
        filler += 1;
    }
    let largest_accepted = sized(filler);
    assert!(
        MAX_TOKEN_LEN - largest_accepted.len() < 4,
        "close to the cap"
    );
    assert!(verify(&largest_accepted).is_ok());

    let too_large = sized(filler + 1);
    assert!(too_large.len() > MAX_TOKEN_LEN);
    assert_eq!(verify(&too_large), Err(TokenError::Malformed));
    assert_eq!(verify(&"a".repeat(1 << 20)), Err(TokenError::Malformed));
}

// ---------------------------------------------------------------------------------------------
// Keyring parsing

#[test]
fn keyring_parses_items_with_surrounding_whitespace() {
    let spec = format!(
        "  {} ,\n\t{}  ",
        spec_item("k-2025.06_a", CURRENT),
        spec_item("old", OLD)
    );
    let ring = Keyring::parse(&spec).expect("parses");
    assert_eq!(ring.signing_kid(), "k-2025.06_a");
    assert_eq!(ring.key_ids().collect::<Vec<_>>(), ["k-2025.06_a", "old"]);
}

#[test]
fn keyring_accepts_url_safe_and_unpadded_secrets() {
    // 0xFB bytes encode to '+'/'/' in standard base64 and '-'/'_' in URL-safe.
    let bytes = [0xFB_u8; 33];
    let url_safe = URL_SAFE.encode(bytes);
    assert!(url_safe.contains('-') || url_safe.contains('_'));
    let standard_unpadded = STANDARD.encode([0xFB_u8; 32]);
    assert!(standard_unpadded.ends_with('='));
    let standard_unpadded = standard_unpadded.trim_end_matches('=');

    let ring = Keyring::parse(&format!("a:{url_safe},b:{standard_unpadded}")).expect("parses");
    let token = ring.issue(&claims(), NOW);
    let (signed, signature) = token.rsplit_once('.').expect("three parts");
    assert_eq!(
        URL_SAFE_NO_PAD.decode(signature).expect("base64url"),
        hmac_sha256(&bytes, signed.as_bytes()),
        "the decoded secret is what signs"
    );
}

#[test]
fn keyring_refuses_bad_specs() {
    let good = STANDARD.encode(secret(CURRENT));
    let short = STANDARD.encode([7_u8; MIN_SECRET_LEN - 1]);
    let long_kid = "k".repeat(MAX_KEY_ID_LEN + 1);
    let cases = [
        (String::new(), KeyringError::Empty),
        ("  \n ".to_owned(), KeyringError::Empty),
        (
            format!("a:{good},"),
            KeyringError::EmptyItem { position: 2 },
        ),
        (
            format!(",a:{good}"),
            KeyringError::EmptyItem { position: 1 },
        ),
        (good.clone(), KeyringError::MissingSeparator { position: 1 }),
        (
            format!(":{good}"),
            KeyringError::InvalidKeyId { position: 1 },
        ),
        (
            format!("a b:{good}"),
            KeyringError::InvalidKeyId { position: 1 },
        ),
        (
            format!("a:{good},k/1:{good}"),
            KeyringError::InvalidKeyId { position: 2 },
        ),
        (
            format!("ключ:{good}"),
            KeyringError::InvalidKeyId { position: 1 },
        ),
        (
            format!("{long_kid}:{good}"),
            KeyringError::InvalidKeyId { position: 1 },
        ),
        (
            format!("a: {good}"),
            KeyringError::InvalidSecretEncoding { position: 1 },
        ),
        (
            "a:not base64!".to_owned(),
            KeyringError::InvalidSecretEncoding { position: 1 },
        ),
        (
            format!("a:{good}:x"),
            KeyringError::InvalidSecretEncoding { position: 1 },
        ),
        (
            "a:".to_owned(),
            KeyringError::SecretTooShort { position: 1 },
        ),
        (
            format!("a:{short}"),
            KeyringError::SecretTooShort { position: 1 },
        ),
        (
            format!("a:{good},b:{good},a:{good}"),
            KeyringError::DuplicateKeyId {
                position: 3,
                first_position: 1,
            },
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(
            Keyring::parse(&spec).map(|_| ()),
            Err(expected.clone()),
            "{spec:?}"
        );
    }
}

#[test]
fn keyring_length_limits_are_inclusive() {
    let kid = "k".repeat(MAX_KEY_ID_LEN);
    let secret = STANDARD.encode([7_u8; MIN_SECRET_LEN]);
    assert!(Keyring::parse(&format!("{kid}:{secret}")).is_ok());
}

#[test]
fn keyring_errors_never_echo_the_spec() {
    let secret = STANDARD.encode(secret(CURRENT));
    let short = STANDARD.encode([9_u8; 20]);
    for spec in [
        secret.clone(),
        format!("{secret}:{secret}"),
        format!("a:{short}"),
        format!("a:{secret}x!"),
        format!("a:{secret},a:{secret}"),
    ] {
        let error = Keyring::parse(&spec).expect_err("refused");
        for rendered in [error.to_string(), format!("{error:?}")] {
            assert!(!rendered.contains(&secret), "{rendered}");
            assert!(!rendered.contains(&short), "{rendered}");
            assert!(!rendered.contains(&secret[..12]), "{rendered}");
        }
    }
}

#[test]
fn keyring_debug_shows_key_ids_but_not_secrets() {
    let ring = ring();
    let rendered = format!("{ring:?}");
    let pretty = format!("{ring:#?}");
    assert!(
        rendered.contains("current") && rendered.contains("old"),
        "{rendered}"
    );
    for fill in [CURRENT, OLD] {
        let bytes = secret(fill);
        for text in [&rendered, &pretty] {
            assert!(!text.contains(&STANDARD.encode(bytes)), "{text}");
            assert!(!text.contains(&URL_SAFE_NO_PAD.encode(bytes)), "{text}");
            // Byte-array and hex renderings.
            assert!(!text.contains(&format!("{:?}", &bytes[..4])), "{text}");
            assert!(!text.contains("165"), "decimal 0xA5 leaked: {text}");
            assert!(
                !text.to_lowercase().contains("a5"),
                "hex 0xA5 leaked: {text}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Codes and roles

#[test]
fn token_error_codes_are_stable_snake_case() {
    let all = [
        (TokenError::Malformed, "malformed"),
        (TokenError::UnknownKeyId, "unknown_key_id"),
        (TokenError::MissingKeyId, "missing_key_id"),
        (TokenError::WrongAlgorithm, "wrong_algorithm"),
        (TokenError::BadSignature, "bad_signature"),
        (TokenError::Expired, "expired"),
        (TokenError::NotYetValid, "not_yet_valid"),
        (TokenError::BadClaims, "bad_claims"),
    ];
    for (error, code) in all {
        assert_eq!(error.code(), code);
        assert!(!error.to_string().is_empty());
    }
}

#[test]
fn keyring_error_codes_are_stable_snake_case() {
    let all = [
        (KeyringError::Empty, "empty"),
        (KeyringError::EmptyItem { position: 1 }, "empty_item"),
        (
            KeyringError::MissingSeparator { position: 1 },
            "missing_separator",
        ),
        (KeyringError::InvalidKeyId { position: 1 }, "invalid_key_id"),
        (
            KeyringError::InvalidSecretEncoding { position: 1 },
            "invalid_secret_encoding",
        ),
        (
            KeyringError::SecretTooShort { position: 1 },
            "secret_too_short",
        ),
        (
            KeyringError::DuplicateKeyId {
                position: 2,
                first_position: 1,
            },
            "duplicate_key_id",
        ),
    ];
    for (error, code) in all {
        assert_eq!(error.code(), code);
    }
}

#[test]
fn roles_round_trip_through_strings_and_serde() {
    for (role, name) in [(Role::User, "user"), (Role::Admin, "admin")] {
        assert_eq!(role.as_str(), name);
        assert_eq!(role.to_string(), name);
        assert_eq!(name.parse::<Role>(), Ok(role));
        assert_eq!(serde_json::to_value(role).expect("serializes"), json!(name));
        assert_eq!(
            serde_json::from_value::<Role>(json!(name)).expect("parses"),
            role
        );
    }
    for name in ["Admin", "USER", "", "root", " user"] {
        assert_eq!(name.parse::<Role>(), Err(UnknownRole), "{name:?}");
    }
}
