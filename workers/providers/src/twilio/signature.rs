//! `X-Twilio-Signature`: how Twilio signs every request it makes to us.
//!
//! The signature is base64(HMAC-SHA1(auth token, URL + each POST parameter's name and value,
//! sorted by name)). Twilio's own validator (twilio-python `RequestValidator`) accepts the URL
//! both with and without an explicit port, "since sig generation on back end is inconsistent";
//! so do we. For the media stream's WebSocket handshake the URL is the `wss://` one from the
//! TwiML; which scheme Twilio signs is not documented, so the `https://` spelling is accepted
//! too. Comparison is in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq as _;

/// The signature Twilio would send for `url` and form `params`.
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // By name, then (for repeated names) by value, as Twilio does.
    sorted.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("invariant: HMAC accepts keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `header` is Twilio's signature of this request, trying the URL spellings Twilio may
/// have signed.
pub fn is_valid(auth_token: &str, url: &str, params: &[(String, String)], header: &str) -> bool {
    if auth_token.is_empty() || header.is_empty() {
        return false;
    }
    let mut valid = false;
    for candidate in url_variants(url) {
        let expected = compute(auth_token, &candidate, params);
        // No early exit: every variant costs the same whether or not one matched.
        valid |= bool::from(expected.as_bytes().ct_eq(header.as_bytes()));
    }
    valid
}

/// The URL as given, with its port added or removed, and (for WebSocket URLs) the same with the
/// HTTP scheme.
pub fn url_variants(url: &str) -> Vec<String> {
    let mut bases = vec![url.to_owned()];
    if let Some(rest) = url.strip_prefix("wss://") {
        bases.push(format!("https://{rest}"));
    } else if let Some(rest) = url.strip_prefix("ws://") {
        bases.push(format!("http://{rest}"));
    } else if let Some(rest) = url.strip_prefix("https://") {
        bases.push(format!("wss://{rest}"));
    } else if let Some(rest) = url.strip_prefix("http://") {
        bases.push(format!("ws://{rest}"));
    }
    let mut out = Vec::with_capacity(bases.len() * 2);
    for base in bases {
        let toggled = toggle_port(&base);
        out.push(base);
        if let Some(toggled) = toggled {
            out.push(toggled);
        }
    }
    out
}

/// The URL with its explicit port removed, or the scheme's default port added.
fn toggle_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme {
        "https" | "wss" => "443",
        "http" | "ws" => "80",
        _ => return None,
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, authority),
    };
    // The port is after the last ':' unless that ':' is inside an IPv6 literal.
    let (host, port) = match host_port.rfind(':') {
        Some(colon) if !host_port[colon..].contains(']') => {
            (&host_port[..colon], Some(&host_port[colon + 1..]))
        }
        _ => (host_port, None),
    };
    let prefix = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    Some(match port {
        Some(_) => format!("{scheme}://{prefix}{host}{tail}"),
        None => format!("{scheme}://{prefix}{host}:{default_port}{tail}"),
    })
}

/// Parses an `application/x-www-form-urlencoded` body into ordered pairs.
pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Twilio's documented example (https://www.twilio.com/docs/usage/security).
    #[test]
    fn matches_twilios_documented_example() {
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            compute("12345", url, &params),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        assert!(is_valid(
            "12345",
            url,
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
    }

    #[test]
    fn order_of_parameters_does_not_matter_but_every_byte_does() {
        let params = pairs(&[("To", "+1"), ("CallStatus", "ringing"), ("CallSid", "CA1")]);
        let mut shuffled = params.clone();
        shuffled.reverse();
        let url = "https://api.callmeback.example/twilio/status/call_1";
        let signature = compute("token", url, &params);
        assert!(is_valid("token", url, &shuffled, &signature));
        let mut tampered = params.clone();
        tampered[1].1 = "completed".to_owned();
        assert!(!is_valid("token", url, &tampered, &signature));
        assert!(!is_valid(
            "token",
            "https://api.callmeback.example/twilio/status/call_2",
            &params,
            &signature
        ));
        assert!(!is_valid("other", url, &params, &signature));
        assert!(!is_valid("token", url, &params, ""));
    }

    #[test]
    fn ports_and_websocket_schemes_are_tolerated() {
        let params = Vec::new();
        let signed_with_port = compute("t", "https://example.com:443/twilio/voice/c1", &params);
        assert!(is_valid(
            "t",
            "https://example.com/twilio/voice/c1",
            &params,
            &signed_with_port
        ));
        let signed_without = compute("t", "http://127.0.0.1/x", &params);
        assert!(is_valid(
            "t",
            "http://127.0.0.1:80/x",
            &params,
            &signed_without
        ));
        let signed_wss = compute("t", "wss://example.com/twilio/media/c1", &params);
        assert!(is_valid(
            "t",
            "https://example.com/twilio/media/c1",
            &params,
            &signed_wss
        ));
        assert!(is_valid(
            "t",
            "https://example.com:443/twilio/media/c1",
            &params,
            &signed_wss
        ));
        assert_eq!(
            toggle_port("http://[::1]:8787/p").as_deref(),
            Some("http://[::1]/p")
        );
        assert_eq!(
            toggle_port("http://[::1]/p").as_deref(),
            Some("http://[::1]:80/p")
        );
    }

    #[test]
    fn form_bodies_decode() {
        assert_eq!(
            parse_form(b"CallSid=CA1&To=%2B15551234567&Note=a+b"),
            pairs(&[("CallSid", "CA1"), ("To", "+15551234567"), ("Note", "a b")])
        );
    }
}
