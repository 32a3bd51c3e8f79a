//! `X-Twilio-Signature`: how Twilio signs every request it makes to an application.
//!
//! base64(HMAC-SHA1(auth_token, url + concat(sorted(name + value)))): the full URL Twilio
//! requested (scheme, host, port as written, path, query), then each form parameter as its name
//! immediately followed by its value, sorted by name, and for a repeated name by value. No
//! separators. This is the algorithm of Twilio's own validators (twilio-python
//! `RequestValidator.compute_signature`). A WebSocket handshake has no body: the signature covers
//! the URL only.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The signature Twilio would send for a request to `url` with form `params`.
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    sorted.sort_unstable();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Constant-time check of a received signature (what an application does; used by the tests).
pub fn verify(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    use subtle::ConstantTimeEq;
    compute(auth_token, url, params)
        .as_bytes()
        .ct_eq(signature.as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn twilio_documented_example() {
        // https://www.twilio.com/docs/usage/security (and twilio-python's test suite).
        let p = params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(compute("12345", url, &p), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(verify("12345", url, &p, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        assert!(!verify("12346", url, &p, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        assert!(!verify(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &p,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
    }

    #[test]
    fn order_of_params_does_not_matter_and_repeated_names_sort_by_value() {
        // python3: base64(hmac(b"tok", b"https://x.test/cb" + b"Ab" + b"Ba" + b"Bb" + b"Ca", sha1))
        let p = params(&[("B", "b"), ("A", "b"), ("B", "a"), ("C", "a")]);
        assert_eq!(
            compute("tok", "https://x.test/cb", &p),
            "cFMrBunUD6fVJylqAPebWjOy3ns="
        );
        let mut reversed = p.clone();
        reversed.reverse();
        assert_eq!(
            compute("tok", "https://x.test/cb", &reversed),
            "cFMrBunUD6fVJylqAPebWjOy3ns="
        );
    }

    #[test]
    fn websocket_handshake_signs_the_url_alone() {
        // python3: base64(hmac(b"secret", b"wss://app.example/media/abc", sha1))
        assert_eq!(
            compute("secret", "wss://app.example/media/abc", &[]),
            "QD3aEiN78C2rof8Qc56qZXNTf2U="
        );
    }
}
