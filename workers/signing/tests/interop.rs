//! Interoperability with an independent RFC 9421 implementation: the PyPI package
//! `http-message-signatures`, driven through `tests/interop.py` over stdin/stdout JSON.
//!
//! Both directions are checked (Rust signs → Python verifies, Python signs → Rust verifies), plus
//! tampered requests that must fail on the other side. Agreeing with ourselves proves little;
//! agreeing with code written by someone else from the same RFC catches misreadings of it.
//!
//! The interpreter is `$CALLMEBACK_PYTHON`, else the project venv `.local/venv/bin/python` (the
//! project's scripts install `scripts/requirements-test.txt` there), else `python3`. A missing
//! package FAILS these tests: silently skipping would let the interop guarantee rot.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use callmeback_signing::{
    Key, RequestParts, Verified, VerifyError, content_digest, sign_request, verify_request,
};
use serde_json::{Value, json};

const SECRET: &[u8] = b"interop shared secret, 32+ bytes long";
const KEY_ID: &str = "interop-key";
const MAX_SKEW: i64 = 300;

fn python() -> PathBuf {
    if let Some(explicit) = std::env::var_os("CALLMEBACK_PYTHON") {
        return PathBuf::from(explicit);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.local/venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Runs `interop.py` on a batch of requests and returns its answers, one per request.
fn run_python(requests: &[Value]) -> Vec<Value> {
    let interpreter = python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop.py");
    let mut child = Command::new(&interpreter)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", interpreter.display()));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(Value::Array(requests.to_vec()).to_string().as_bytes())
        .expect("write requests to interop.py");
    let output = child.wait_with_output().expect("wait for interop.py");
    assert!(
        output.status.success(),
        "interop.py failed with {} using {} (is http-message-signatures installed? \
         `.local/venv/bin/pip install -r scripts/requirements-test.txt`):\n{}",
        output.status,
        interpreter.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<Value> =
        serde_json::from_slice(&output.stdout).expect("interop.py prints a JSON array");
    assert_eq!(answers.len(), requests.len(), "one answer per request");
    answers
}

fn now() -> i64 {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(seconds).expect("seconds fit in i64")
}

fn key() -> Key {
    Key::new(KEY_ID, SECRET.to_vec())
}

/// A request as it travels: what was signed, and the headers that came with it.
struct Sample {
    method: &'static str,
    url: &'static str,
    body: &'static [u8],
}

const SAMPLES: [Sample; 3] = [
    Sample {
        method: "POST",
        url: "https://gateway.internal:8443/v1/op",
        body: br#"{"op":"users.get_by_email","params":{"email":"a@example.com"}}"#,
    },
    Sample {
        method: "POST",
        url: "https://gateway.internal/v1/batch?request_id=abc-123&dry=1",
        body: br#"{"ops":[{"op":"system.ping","params":{}}]}"#,
    },
    Sample {
        method: "GET",
        url: "http://127.0.0.1:8787/v1/health",
        body: b"",
    },
];

fn python_verify(method: &str, url: &str, body: &[u8], headers: &Value) -> Value {
    json!({
        "op": "verify",
        "key_id": KEY_ID,
        "secret_b64": BASE64.encode(SECRET),
        "method": method,
        "url": url,
        "body_b64": BASE64.encode(body),
        "headers": headers,
    })
}

fn headers_json(signed: &callmeback_signing::SignedHeaders) -> Value {
    json!({
        "Content-Digest": signed.content_digest,
        "Signature-Input": signed.signature_input,
        "Signature": signed.signature,
    })
}

#[test]
fn python_verifies_rust_signatures() {
    let created = now();
    let signed: Vec<_> = SAMPLES
        .iter()
        .enumerate()
        .map(|(index, sample)| {
            let nonce = format!("rust-nonce-{index}");
            let headers = sign_request(
                &key(),
                sample.method,
                sample.url,
                sample.body,
                created,
                &nonce,
            );
            (nonce, headers)
        })
        .collect();
    let requests: Vec<Value> = SAMPLES
        .iter()
        .zip(&signed)
        .map(|(sample, (_, headers))| {
            python_verify(
                sample.method,
                sample.url,
                sample.body,
                &headers_json(headers),
            )
        })
        .collect();

    for ((answer, (nonce, _)), sample) in run_python(&requests).iter().zip(&signed).zip(&SAMPLES) {
        assert_eq!(
            answer["ok"],
            json!(true),
            "{} {}: {answer}",
            sample.method,
            sample.url
        );
        assert_eq!(answer["label"], json!("sig1"));
        assert_eq!(
            answer["covered"],
            json!(["\"@method\"", "\"@target-uri\"", "\"content-digest\""])
        );
        assert_eq!(
            answer["parameters"],
            json!({"created": created, "keyid": KEY_ID, "nonce": nonce, "alg": "hmac-sha256"})
        );
    }
}

#[test]
fn python_rejects_rust_signatures_over_tampered_requests() {
    let sample = &SAMPLES[0];
    let headers = headers_json(&sign_request(
        &key(),
        sample.method,
        sample.url,
        sample.body,
        now(),
        "n-1",
    ));
    let tampered_body: &[u8] = br#"{"op":"users.delete_all","params":{}}"#;
    let requests = [
        // Control: the untampered request verifies, so the failures below are the tampering.
        python_verify(sample.method, sample.url, sample.body, &headers),
        python_verify(sample.method, sample.url, tampered_body, &headers),
        python_verify("PUT", sample.url, sample.body, &headers),
        python_verify(
            sample.method,
            "https://gateway.internal:8443/v1/batch",
            sample.body,
            &headers,
        ),
    ];
    let answers = run_python(&requests);
    assert_eq!(answers[0]["ok"], json!(true), "control: {}", answers[0]);
    for (answer, what) in answers[1..].iter().zip(["body", "method", "target uri"]) {
        assert_eq!(answer["ok"], json!(false), "tampered {what}: {answer}");
        assert_eq!(answer["error_type"], json!("InvalidSignature"), "{answer}");
    }
    assert!(
        answers[1]["error"]
            .as_str()
            .is_some_and(|message| message.contains("Content-Digest")),
        "a tampered body must fail on its digest: {}",
        answers[1]
    );
}

struct PythonSigned {
    method: &'static str,
    url: &'static str,
    body: &'static [u8],
    content_digest: String,
    signature_input: String,
    signature: String,
}

impl PythonSigned {
    fn verify(&self, method: &str, body: &[u8], now: i64) -> Result<Verified, VerifyError> {
        let key = key();
        verify_request(
            &RequestParts {
                method,
                target_uri: self.url,
                body,
                content_digest: Some(&self.content_digest),
                signature_input: Some(&self.signature_input),
                signature: Some(&self.signature),
            },
            |id| (id == key.id()).then_some(&key),
            now,
            MAX_SKEW,
        )
    }
}

/// Python signs every sample under several profiles a real client might use.
fn python_signatures(created: i64) -> Vec<(PythonSigned, &'static str, &'static str)> {
    let profiles: [(&str, &[&str], bool); 3] = [
        // Minimal profile, Python's own parameter order (created, keyid, alg, nonce).
        ("py", &["@method", "@target-uri"], true),
        // Extra derived components, Python's default label, no `alg`.
        (
            "pyhms",
            &[
                "@method",
                "@authority",
                "@scheme",
                "@path",
                "@query",
                "@target-uri",
            ],
            false,
        ),
        // Digest listed first, before the derived components.
        (
            "client-1",
            &["content-digest", "@target-uri", "@method"],
            true,
        ),
    ];
    let mut cases = Vec::new();
    let mut requests = Vec::new();
    for (label, components, include_alg) in profiles {
        for (index, sample) in SAMPLES.iter().enumerate() {
            let nonce = format!("py-{label}-{index}");
            requests.push(json!({
                "op": "sign",
                "key_id": KEY_ID,
                "secret_b64": BASE64.encode(SECRET),
                "method": sample.method,
                "url": sample.url,
                "body_b64": BASE64.encode(sample.body),
                "nonce": nonce,
                "label": label,
                "components": components,
                "include_alg": include_alg,
                "created": created,
            }));
            cases.push((sample, label));
        }
    }
    let answers = run_python(&requests);
    cases
        .into_iter()
        .zip(answers)
        .map(|((sample, label), answer)| {
            let header = |name: &str| {
                answer["headers"][name]
                    .as_str()
                    .unwrap_or_else(|| panic!("python answer lacks {name}: {answer}"))
                    .to_owned()
            };
            let signed = PythonSigned {
                method: sample.method,
                url: sample.url,
                body: sample.body,
                content_digest: header("Content-Digest"),
                signature_input: header("Signature-Input"),
                signature: header("Signature"),
            };
            (signed, label, sample.url)
        })
        .collect()
}

#[test]
fn rust_verifies_python_signatures() {
    let created = now();
    for (signed, label, url) in python_signatures(created) {
        assert!(
            signed.signature_input.starts_with(&format!("{label}=")),
            "{}",
            signed.signature_input
        );
        // Same body, so the Python digest must equal ours byte for byte.
        assert_eq!(signed.content_digest, content_digest(signed.body));
        let verified = signed.verify(signed.method, signed.body, created);
        let nonce = signed
            .signature_input
            .split("nonce=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("python signs with a nonce")
            .to_owned();
        assert_eq!(
            verified,
            Ok(Verified {
                key_id: KEY_ID.to_owned(),
                created,
                nonce,
            }),
            "{label} {url}: {}",
            signed.signature_input
        );
    }
}

#[test]
fn rust_rejects_tampered_python_signatures() {
    let created = now();
    for (signed, label, url) in python_signatures(created) {
        assert!(signed.verify(signed.method, signed.body, created).is_ok());
        assert_eq!(
            signed.verify("DELETE", signed.body, created),
            Err(VerifyError::BadSignature),
            "{label} {url}"
        );
        assert_eq!(
            signed.verify(signed.method, b"tampered", created),
            Err(VerifyError::DigestMismatch),
            "{label} {url}"
        );
        assert_eq!(
            signed.verify(signed.method, signed.body, created + MAX_SKEW + 1),
            Err(VerifyError::ClockSkew),
            "{label} {url}"
        );
    }
}
