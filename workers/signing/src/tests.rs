//! Unit tests for signing and verification. The interop tests against an independent
//! implementation live in `tests/interop.rs`.

use super::*;

const NOW: i64 = 1_763_000_000;
const SKEW: i64 = 300;
const URI: &str = "https://gateway.internal:8443/v1/op?trace=1";
const BODY: &[u8] = br#"{"op":"system.ping","params":{}}"#;

fn key() -> Key {
    Key::new(
        "worker-2026-11",
        b"0123456789abcdef0123456789abcdef".to_vec(),
    )
}

/// Owns the header strings so `RequestParts` can borrow them, and lets a test change any one.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    target_uri: String,
    body: Vec<u8>,
    content_digest: Option<String>,
    signature_input: Option<String>,
    signature: Option<String>,
}

impl Request {
    fn signed_by(key: &Key) -> Self {
        let headers = sign_request(key, "POST", URI, BODY, NOW, "nonce-1");
        Self {
            method: "POST".to_owned(),
            target_uri: URI.to_owned(),
            body: BODY.to_vec(),
            content_digest: Some(headers.content_digest),
            signature_input: Some(headers.signature_input),
            signature: Some(headers.signature),
        }
    }

    /// Signs an arbitrary `Signature-Input` member (`<label>=<inner list>`) correctly, so a test
    /// can show that a specific rule rejects it rather than the HMAC comparison. Components are
    /// resolved the way the verifier resolves them.
    fn custom(key: &Key, label: &str, inner_list: &str) -> Self {
        let mut request = Self::signed_by(key);
        let dictionary =
            sfv::parse_dictionary(&format!("{label}={inner_list}")).expect("test input parses");
        let Some(Member::InnerList(input)) = sfv::member(&dictionary, label) else {
            panic!("test input must be an inner list");
        };
        let target = TargetUri::parse(URI).expect("test URI parses");
        let digest = content_digest(BODY);
        let values: Vec<(String, String)> = input
            .items
            .iter()
            .map(|item| {
                let BareItem::String(name) = &item.bare else {
                    panic!("test components are strings");
                };
                let value = match name.as_str() {
                    "@method" => "POST".to_owned(),
                    "@target-uri" => URI.to_owned(),
                    "@authority" => target.authority.clone(),
                    "@scheme" => target.scheme.clone(),
                    "@path" => target.path.clone(),
                    "@query" => target.query.clone(),
                    "content-digest" => digest.clone(),
                    _ => "unresolvable".to_owned(),
                };
                (name.clone(), value)
            })
            .collect();
        let borrowed: Vec<(&str, &str)> = values
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let base = signature_base(&borrowed, &sfv::serialize_inner_list(input));
        request.signature_input = Some(format!("{label}={inner_list}"));
        request.signature = Some(format!(
            "{label}=:{}:",
            BASE64.encode(key.mac(base.as_bytes()))
        ));
        request
    }

    fn parts(&self) -> RequestParts<'_> {
        RequestParts {
            method: &self.method,
            target_uri: &self.target_uri,
            body: &self.body,
            content_digest: self.content_digest.as_deref(),
            signature_input: self.signature_input.as_deref(),
            signature: self.signature.as_deref(),
        }
    }

    fn verify_at(&self, keys: &[Key], now: i64) -> Result<Verified, VerifyError> {
        verify_request(
            &self.parts(),
            |id| keys.iter().find(|key| key.id() == id),
            now,
            SKEW,
        )
    }

    fn verify(&self) -> Result<Verified, VerifyError> {
        self.verify_at(&[key()], NOW)
    }
}

/// A change applied to a signed request before verifying it.
type Tamper = fn(&mut Request);

fn params_without(missing: &str) -> String {
    [
        ("created", format!("created={NOW}")),
        ("keyid", "keyid=\"worker-2026-11\"".to_owned()),
        ("nonce", "nonce=\"n\"".to_owned()),
    ]
    .into_iter()
    .filter(|(name, _)| *name != missing)
    .map(|(_, param)| format!(";{param}"))
    .collect()
}

const REQUIRED_LIST: &str = r#"("@method" "@target-uri" "content-digest")"#;

// ---------------------------------------------------------------------------------------------
// Signing

#[test]
fn round_trip_verifies_and_reports_signed_values() {
    let request = Request::signed_by(&key());
    assert_eq!(
        request.verify(),
        Ok(Verified {
            key_id: "worker-2026-11".to_owned(),
            created: NOW,
            nonce: "nonce-1".to_owned(),
        })
    );
}

#[test]
fn signed_headers_have_the_documented_shape() {
    let headers = sign_request(&key(), "post", URI, BODY, NOW, "abc");
    assert_eq!(headers.content_digest, content_digest(BODY));
    assert_eq!(
        headers.signature_input,
        format!(
            r#"sig1=("@method" "@target-uri" "content-digest");created={NOW};keyid="worker-2026-11";nonce="abc";alg="hmac-sha256""#
        )
    );
    let encoded = headers
        .signature
        .strip_prefix("sig1=:")
        .and_then(|rest| rest.strip_suffix(':'))
        .expect("signature is sig1=:<base64>:");
    assert_eq!(BASE64.decode(encoded).expect("valid base64").len(), 32);
}

#[test]
fn signature_is_the_hmac_of_the_rfc_signature_base() {
    // Recomputes the signature independently of `sign_request`'s internals, from the base text
    // RFC 9421 §2.5 prescribes, with the `hmac` crate directly.
    let headers = sign_request(&key(), "post", URI, BODY, NOW, "abc");
    let base = format!(
        "\"@method\": POST\n\"@target-uri\": {URI}\n\"content-digest\": {}\n\"@signature-params\": {}",
        headers.content_digest,
        headers
            .signature_input
            .strip_prefix("sig1=")
            .expect("label sig1")
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef0123456789abcdef")
        .expect("any key length");
    mac.update(base.as_bytes());
    let expected = BASE64.encode(mac.finalize().into_bytes());
    assert_eq!(headers.signature, format!("sig1=:{expected}:"));
}

#[test]
fn content_digest_matches_rfc_9530_examples() {
    // RFC 9530 §2: the body `{"hello": "world"}`.
    assert_eq!(
        content_digest(br#"{"hello": "world"}"#),
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    );
    assert_eq!(
        content_digest(b""),
        "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    );
}

#[test]
fn unrepresentable_nonce_characters_are_replaced_not_smuggled() {
    let headers = sign_request(&key(), "POST", URI, BODY, NOW, "a\"b\né");
    assert!(
        headers.signature_input.contains(r#";nonce="a\"b??";"#),
        "{}",
        headers.signature_input
    );
    let mut request = Request::signed_by(&key());
    request.signature_input = Some(headers.signature_input);
    request.signature = Some(headers.signature);
    assert_eq!(request.verify().map(|v| v.nonce), Ok("a\"b??".to_owned()));
}

#[test]
fn request_parts_debug_does_not_print_the_body() {
    let mut request = Request::signed_by(&key());
    request.body = b"+15551234567".to_vec();
    let debug = format!("{:?}", request.parts());
    assert!(debug.contains("body_len: 12"), "{debug}");
    assert!(!debug.contains("5551234567"), "{debug}");
    assert!(!debug.contains("49, 53, 53"), "{debug}");
}

#[test]
fn key_debug_does_not_print_the_secret() {
    let key = Key::new("k1", b"super-secret-bytes".to_vec());
    let debug = format!("{key:?}");
    assert!(debug.contains("k1"), "{debug}");
    assert!(!debug.contains("super-secret"), "{debug}");
    assert!(!debug.contains("115, 117, 112"), "{debug}");
}

/// RFC 9421 Appendix B.2.5 ("Signing a Request Using hmac-sha256") with the `test-shared-secret`
/// key of Appendix B.1.5. It covers `date` and `content-type`, which `verify_request` does not
/// support, so this test drives the same parser, serializer, base builder and HMAC directly.
#[test]
fn rfc_9421_appendix_b_2_5_test_vector() {
    const SHARED_SECRET_B64: &str =
        "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
    const SIGNATURE_INPUT: &str = r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#;
    const SIGNATURE: &str = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:";
    const EXPECTED_BASE: &str = "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\
        \"@authority\": example.com\n\
        \"content-type\": application/json\n\
        \"@signature-params\": (\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\"";

    let key = Key::new(
        "test-shared-secret",
        BASE64.decode(SHARED_SECRET_B64).expect("RFC key is base64"),
    );
    let inputs = sfv::parse_dictionary(SIGNATURE_INPUT).expect("RFC Signature-Input parses");
    let signatures = sfv::parse_dictionary(SIGNATURE).expect("RFC Signature parses");
    let (input, signature) = select_signature(&inputs, &signatures).expect("label sig-b25");

    // The RFC's request is `POST /foo?param=Value&Pet=dog` to `example.com`.
    let authority = TargetUri::parse("http://example.com/foo?param=Value&Pet=dog")
        .expect("RFC URI parses")
        .authority;
    let base = signature_base(
        &[
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("@authority", &authority),
            ("content-type", "application/json"),
        ],
        &sfv::serialize_inner_list(input),
    );
    assert_eq!(base, EXPECTED_BASE);
    assert_eq!(key.mac(base.as_bytes()).as_slice(), signature);
}

// ---------------------------------------------------------------------------------------------
// Accepted variations

#[test]
fn accepts_any_label_params_in_any_order_and_extra_whitespace() {
    let request = Request::custom(
        &key(),
        "client-7",
        r#"(  "content-digest"  "@method" "@target-uri" );alg="hmac-sha256";nonce="zz";keyid="worker-2026-11";tag="app";created=1763000001"#,
    );
    assert_eq!(
        request.verify(),
        Ok(Verified {
            key_id: "worker-2026-11".to_owned(),
            created: 1_763_000_001,
            nonce: "zz".to_owned(),
        })
    );
}

#[test]
fn accepts_derived_extra_components() {
    let request = Request::custom(
        &key(),
        "sig1",
        &format!(
            r#"("@method" "@authority" "@scheme" "@path" "@query" "@target-uri" "content-digest"){}"#,
            params_without("")
        ),
    );
    assert!(request.verify().is_ok(), "{:?}", request.verify());
}

#[test]
fn uses_the_first_label_present_in_both_headers() {
    let good = Request::signed_by(&key());
    let mut request = good.clone();
    let good_input = good.signature_input.as_deref().expect("signed");
    let good_signature = good.signature.as_deref().expect("signed");
    // `other` only appears in Signature-Input, `unrelated` only in Signature; both are skipped.
    request.signature_input = Some(format!(r#"other=("@method");created=1, {good_input}"#));
    request.signature = Some(format!("unrelated=:AAAA:, {good_signature}"));
    assert!(request.verify().is_ok(), "{:?}", request.verify());

    // When a bad signature comes first under a shared label, it is the one checked.
    request.signature_input = Some(format!(
        r#"bad={}, {good_input}"#,
        good_input.strip_prefix("sig1=").expect("label")
    ));
    request.signature = Some(format!("{good_signature}, bad=:AAAA:"));
    assert_eq!(request.verify(), Err(VerifyError::BadSignature));
}

#[test]
fn accepts_content_digest_with_several_algorithms() {
    let mut request = Request::signed_by(&key());
    // A client covering a multi-algorithm Content-Digest signs the whole field value.
    let multi = format!(
        "sha-512=:{}:, {}",
        BASE64.encode([7u8; 64]),
        content_digest(BODY)
    );
    request.content_digest = Some(multi.clone());
    let base = format!(
        "\"@method\": POST\n\"@target-uri\": {URI}\n\"content-digest\": {multi}\n\"@signature-params\": {REQUIRED_LIST}{}",
        params_without("")
    );
    request.signature_input = Some(format!("sig1={REQUIRED_LIST}{}", params_without("")));
    request.signature = Some(format!(
        "sig1=:{}:",
        BASE64.encode(key().mac(base.as_bytes()))
    ));
    assert!(request.verify().is_ok(), "{:?}", request.verify());
}

#[test]
fn method_case_and_unpadded_base64_do_not_matter() {
    let mut request = Request::signed_by(&key());
    request.method = "post".to_owned();
    let signature = request.signature.take().expect("signed");
    let unpadded = signature
        .strip_suffix("=:")
        .expect("a 32-byte MAC has one padding character");
    request.signature = Some(format!("{unpadded}:"));
    assert!(request.verify().is_ok(), "{:?}", request.verify());
}

#[test]
fn several_keys_can_be_active_during_rotation() {
    let old = Key::new("2026-10", b"old secret".to_vec());
    let new = Key::new("2026-11", b"new secret".to_vec());
    let keys = [old.clone(), new.clone()];
    for signer in [&old, &new] {
        let request = Request::signed_by(signer);
        assert_eq!(
            request.verify_at(&keys, NOW).map(|v| v.key_id),
            Ok(signer.id().to_owned())
        );
    }
    // Once the old key is removed, its signatures stop verifying.
    assert_eq!(
        Request::signed_by(&old).verify_at(&[new], NOW),
        Err(VerifyError::UnknownKey)
    );
}

#[test]
fn clock_skew_boundary_is_inclusive_in_both_directions() {
    let request = Request::signed_by(&key());
    let keys = [key()];
    assert!(request.verify_at(&keys, NOW + SKEW).is_ok());
    assert!(request.verify_at(&keys, NOW - SKEW).is_ok());
    assert_eq!(
        request.verify_at(&keys, NOW + SKEW + 1),
        Err(VerifyError::ClockSkew)
    );
    assert_eq!(
        request.verify_at(&keys, NOW - SKEW - 1),
        Err(VerifyError::ClockSkew)
    );
    // Extreme clocks must not overflow.
    assert_eq!(
        request.verify_at(&keys, i64::MIN),
        Err(VerifyError::ClockSkew)
    );
    assert_eq!(
        request.verify_at(&keys, i64::MAX),
        Err(VerifyError::ClockSkew)
    );
}

// ---------------------------------------------------------------------------------------------
// Every VerifyError variant

#[test]
fn missing_headers_are_reported_by_name() {
    let good = Request::signed_by(&key());
    let cases: [(Tamper, &str); 4] = [
        (|r| r.content_digest = None, "content-digest"),
        (|r| r.signature_input = None, "signature-input"),
        (|r| r.signature = None, "signature"),
        (|r| r.signature = Some(" \t".to_owned()), "signature"),
    ];
    for (remove, header) in cases {
        let mut request = good.clone();
        remove(&mut request);
        assert_eq!(request.verify(), Err(VerifyError::MissingHeader(header)));
    }
}

#[test]
fn malformed_headers_are_reported_by_name() {
    let good = Request::signed_by(&key());
    let sig_input = |value: &str| {
        let mut request = good.clone();
        request.signature_input = Some(value.to_owned());
        request
    };
    let signature = |value: &str| {
        let mut request = good.clone();
        request.signature = Some(value.to_owned());
        request
    };
    let digest = |value: String| {
        let mut request = good.clone();
        request.content_digest = Some(value);
        request
    };
    let full_params = params_without("");
    let cases = [
        (sig_input("sig1=(\"@method\""), "signature-input"),
        (sig_input("sig1=not a list"), "signature-input"),
        (sig_input("sig1=\"@method\""), "signature-input"),
        (
            sig_input(&format!(
                "sig1=(\"@method\" \"@target-uri\" content-digest){full_params}"
            )),
            "signature-input",
        ),
        (
            sig_input(&format!(
                "sig1=(\"@method\" \"@target-uri\" \"content-digest\" \"date\"){full_params}"
            )),
            "signature-input",
        ),
        (
            sig_input(&format!(
                "sig1=(\"@method\" \"@target-uri\" \"content-digest\";sf){full_params}"
            )),
            "signature-input",
        ),
        (
            sig_input(&format!(
                "sig1=(\"@method\" \"@method\" \"@target-uri\" \"content-digest\"){full_params}"
            )),
            "signature-input",
        ),
        (
            sig_input(&format!(
                "sig1=(\"@method\" \"@target-uri\" \"@signature-params\" \"content-digest\"){full_params}"
            )),
            "signature-input",
        ),
        (
            sig_input(&format!(
                "sig1={REQUIRED_LIST};created=\"{NOW}\";keyid=\"worker-2026-11\";nonce=\"n\""
            )),
            "signature-input",
        ),
        (
            sig_input(&format!(
                "sig1={REQUIRED_LIST};created={NOW};keyid=worker;nonce=\"n\""
            )),
            "signature-input",
        ),
        (
            sig_input(&format!("sig1={REQUIRED_LIST};created={NOW};created={NOW}")),
            "signature-input",
        ),
        (signature("sig1=:not base64!:"), "signature"),
        (signature("sig1=\"quoted\""), "signature"),
        (signature("sig1=(:AAAA:)"), "signature"),
        (signature("other=:AAAA:"), "signature"),
        (digest("sha-256=deadbeef".to_owned()), "content-digest"),
        (digest("sha-256=:AAAA:".to_owned()), "content-digest"),
        (
            digest(format!("sha-512=:{}:", BASE64.encode([0u8; 64]))),
            "content-digest",
        ),
        (digest("sha-256=:broken".to_owned()), "content-digest"),
    ];
    for (request, header) in cases {
        assert_eq!(
            request.verify(),
            Err(VerifyError::MalformedHeader(header)),
            "{request:?}"
        );
    }
}

#[test]
fn derived_component_on_unparseable_target_uri_is_malformed() {
    let mut request = Request::custom(
        &key(),
        "sig1",
        &format!(
            r#"("@method" "@path" "@target-uri" "content-digest"){}"#,
            params_without("")
        ),
    );
    request.target_uri = "/v1/op".to_owned();
    assert_eq!(
        request.verify(),
        Err(VerifyError::MalformedHeader("signature-input"))
    );
}

#[test]
fn each_required_component_must_be_covered() {
    for (list, missing) in [
        (r#"("@target-uri" "content-digest")"#, "@method"),
        (
            r#"("@method" "@path" "@query" "content-digest")"#,
            "@target-uri",
        ),
        (r#"("@method" "@target-uri")"#, "content-digest"),
    ] {
        let request = Request::custom(&key(), "sig1", &format!("{list}{}", params_without("")));
        assert_eq!(
            request.verify(),
            Err(VerifyError::MissingComponent(missing))
        );
    }
}

#[test]
fn each_required_parameter_must_be_present() {
    for missing in ["keyid", "created", "nonce"] {
        let request = Request::custom(
            &key(),
            "sig1",
            &format!("{REQUIRED_LIST}{}", params_without(missing)),
        );
        assert_eq!(
            request.verify(),
            Err(VerifyError::MissingParameter(missing))
        );
    }
    let empty_nonce = Request::custom(
        &key(),
        "sig1",
        &format!("{REQUIRED_LIST};created={NOW};keyid=\"worker-2026-11\";nonce=\"\""),
    );
    assert_eq!(
        empty_nonce.verify(),
        Err(VerifyError::MissingParameter("nonce"))
    );
}

#[test]
fn other_algorithms_are_unsupported_but_alg_may_be_omitted() {
    let rsa = Request::custom(
        &key(),
        "sig1",
        &format!(
            "{REQUIRED_LIST}{};alg=\"rsa-pss-sha512\"",
            params_without("")
        ),
    );
    assert_eq!(rsa.verify(), Err(VerifyError::UnsupportedAlgorithm));
    let omitted = Request::custom(
        &key(),
        "sig1",
        &format!("{REQUIRED_LIST}{}", params_without("")),
    );
    assert!(omitted.verify().is_ok(), "{:?}", omitted.verify());
}

#[test]
fn unknown_key_ids_are_rejected() {
    let request = Request::signed_by(&Key::new("retired", b"whatever".to_vec()));
    assert_eq!(request.verify(), Err(VerifyError::UnknownKey));
}

#[test]
fn past_expires_is_clock_skew() {
    let expired = Request::custom(
        &key(),
        "sig1",
        &format!(
            "{REQUIRED_LIST}{};expires={}",
            params_without(""),
            NOW - SKEW - 1
        ),
    );
    assert_eq!(expired.verify(), Err(VerifyError::ClockSkew));
    let valid = Request::custom(
        &key(),
        "sig1",
        &format!("{REQUIRED_LIST}{};expires={}", params_without(""), NOW + 60),
    );
    assert!(valid.verify().is_ok(), "{:?}", valid.verify());
}

#[test]
fn tampered_body_is_a_digest_mismatch() {
    let mut request = Request::signed_by(&key());
    request.body = br#"{"op":"system.drop_everything","params":{}}"#.to_vec();
    assert_eq!(request.verify(), Err(VerifyError::DigestMismatch));
}

#[test]
fn body_swapped_together_with_its_digest_is_a_bad_signature() {
    let mut request = Request::signed_by(&key());
    request.body = b"other body".to_vec();
    request.content_digest = Some(content_digest(b"other body"));
    assert_eq!(request.verify(), Err(VerifyError::BadSignature));
}

#[test]
fn any_change_to_covered_data_is_a_bad_signature() {
    let good = Request::signed_by(&key());
    let tamperings: [Tamper; 7] = [
        |r| r.method = "PUT".to_owned(),
        |r| r.target_uri = "https://gateway.internal:8443/v1/batch?trace=1".to_owned(),
        |r| r.target_uri = "https://gateway.internal:8443/v1/op?trace=2".to_owned(),
        |r| r.target_uri = "https://other.internal:8443/v1/op?trace=1".to_owned(),
        |r| {
            r.signature_input = r
                .signature_input
                .as_ref()
                .map(|s| s.replace("nonce-1", "nonce-2"));
        },
        |r| {
            r.signature_input = r
                .signature_input
                .as_ref()
                .map(|s| s.replace(&NOW.to_string(), &(NOW + 1).to_string()));
        },
        |r| r.signature = Some("sig1=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:".to_owned()),
    ];
    for tamper in tamperings {
        let mut request = good.clone();
        tamper(&mut request);
        assert_eq!(
            request.verify(),
            Err(VerifyError::BadSignature),
            "{request:?}"
        );
    }
    // Same key id, different secret.
    let impostor = Request::signed_by(&Key::new("worker-2026-11", b"guessed".to_vec()));
    assert_eq!(impostor.verify(), Err(VerifyError::BadSignature));
}

#[test]
fn newlines_in_covered_values_never_verify() {
    let mut request = Request::signed_by(&key());
    request.target_uri = format!("{URI}\n\"content-digest\": x");
    assert_eq!(request.verify(), Err(VerifyError::BadSignature));
}

#[test]
fn checks_run_in_the_documented_order() {
    // Each request is broken in two ways; the earlier check in the documented order must win.
    let mut request = Request::signed_by(&Key::new("unknown", b"k".to_vec()));
    request.body = b"tampered".to_vec();
    assert_eq!(request.verify(), Err(VerifyError::UnknownKey));

    let mut request = Request::signed_by(&key());
    request.body = b"tampered".to_vec();
    assert_eq!(
        request.verify_at(&[key()], NOW + 10_000),
        Err(VerifyError::ClockSkew)
    );

    let mut request = Request::custom(
        &key(),
        "sig1",
        &format!("{REQUIRED_LIST};created={NOW};nonce=\"n\";alg=\"ed25519\""),
    );
    assert_eq!(
        request.verify(),
        Err(VerifyError::MissingParameter("keyid"))
    );
    request.content_digest = None;
    assert_eq!(
        request.verify(),
        Err(VerifyError::MissingHeader("content-digest"))
    );

    let request = Request::custom(
        &Key::new("unknown", b"k".to_vec()),
        "sig1",
        &format!("{REQUIRED_LIST};created={NOW};keyid=\"unknown\";nonce=\"n\";alg=\"ed25519\""),
    );
    assert_eq!(request.verify(), Err(VerifyError::UnsupportedAlgorithm));
}

#[test]
fn error_codes_are_stable_and_distinct() {
    let all = [
        (VerifyError::MissingHeader("signature"), "missing_header"),
        (
            VerifyError::MalformedHeader("signature"),
            "malformed_header",
        ),
        (
            VerifyError::MissingComponent("@method"),
            "missing_component",
        ),
        (VerifyError::MissingParameter("nonce"), "missing_parameter"),
        (VerifyError::UnsupportedAlgorithm, "unsupported_algorithm"),
        (VerifyError::UnknownKey, "unknown_key"),
        (VerifyError::DigestMismatch, "digest_mismatch"),
        (VerifyError::ClockSkew, "clock_skew"),
        (VerifyError::BadSignature, "bad_signature"),
    ];
    for (error, code) in all {
        assert_eq!(error.code(), code);
        assert!(!error.to_string().is_empty());
    }
    assert_eq!(
        VerifyError::MissingHeader("signature-input").to_string(),
        "missing header `signature-input`"
    );
}

// ---------------------------------------------------------------------------------------------
// Garbage in, error out (never a panic)

/// Deterministic xorshift so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("below n")
    }
}

/// Characters that matter to the structured-field grammar, plus some that never should appear.
const ALPHABET: &[char] = &[
    'a', 'z', 'A', '0', '9', '-', '.', '*', '_', '=', ';', ',', ':', '(', ')', '"', '\\', ' ',
    '\t', '?', '1', '/', '+', '@', '\n', '\r', '\0', 'é', '€', '\u{7f}',
];

fn random_string(rng: &mut Rng) -> String {
    let len = rng.below(40);
    (0..len)
        .map(|_| ALPHABET[rng.below(ALPHABET.len())])
        .collect()
}

#[test]
fn random_garbage_headers_are_rejected_without_panicking() {
    let good = Request::signed_by(&key());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..5_000 {
        let mut request = good.clone();
        match rng.below(4) {
            0 => request.signature_input = Some(random_string(&mut rng)),
            1 => request.signature = Some(random_string(&mut rng)),
            2 => request.content_digest = Some(random_string(&mut rng)),
            _ => {
                request.method = random_string(&mut rng);
                request.target_uri = random_string(&mut rng);
            }
        }
        assert!(request.verify().is_err(), "{request:?}");
    }
}

#[test]
fn mutated_valid_headers_never_panic_and_never_change_the_result() {
    let good = Request::signed_by(&key());
    let expected = good.verify().expect("baseline verifies");
    let headers: [fn(&mut Request) -> &mut Option<String>; 3] = [
        |r| &mut r.content_digest,
        |r| &mut r.signature_input,
        |r| &mut r.signature,
    ];
    for header in headers {
        let original = header(&mut good.clone()).clone().expect("signed");
        let chars: Vec<char> = original.chars().collect();
        let mut variants = Vec::new();
        for cut in 0..chars.len() {
            variants.push(chars[..cut].iter().collect::<String>());
            variants.push(chars[cut..].iter().collect::<String>());
            for replacement in ALPHABET {
                let mut mutated = chars.clone();
                mutated[cut] = *replacement;
                variants.push(mutated.into_iter().collect());
            }
            let mut doubled = chars.clone();
            doubled.insert(cut, chars[cut]);
            variants.push(doubled.into_iter().collect());
        }
        for variant in variants {
            let mut request = good.clone();
            *header(&mut request) = Some(variant);
            // A mutation may be harmless (e.g. an extra space); then it must prove the same thing.
            if let Ok(verified) = request.verify() {
                assert_eq!(verified, expected, "{request:?}");
            }
        }
    }
}
