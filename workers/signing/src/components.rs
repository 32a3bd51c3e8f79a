//! Covered components and the signature base (RFC 9421 §2).
//!
//! The verifier only knows the method, the target URI, the body and three headers of a request,
//! so it supports exactly the components derivable from those. Anything else a client covers is
//! refused: verifying a signature over a value we cannot see would be meaningless.

/// The components this crate can supply, in the spelling used in `Signature-Input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Component {
    Method,
    TargetUri,
    Authority,
    Scheme,
    Path,
    Query,
    ContentDigest,
}

impl Component {
    /// Components every accepted signature must cover: together they bind the operation
    /// (method and full URI) and the body (through its digest).
    pub(crate) const REQUIRED: [Component; 3] = [
        Component::Method,
        Component::TargetUri,
        Component::ContentDigest,
    ];

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "@method" => Self::Method,
            "@target-uri" => Self::TargetUri,
            "@authority" => Self::Authority,
            "@scheme" => Self::Scheme,
            "@path" => Self::Path,
            "@query" => Self::Query,
            "content-digest" => Self::ContentDigest,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Method => "@method",
            Self::TargetUri => "@target-uri",
            Self::Authority => "@authority",
            Self::Scheme => "@scheme",
            Self::Path => "@path",
            Self::Query => "@query",
            Self::ContentDigest => "content-digest",
        }
    }
}

/// The pieces of an absolute target URI that derived components need (RFC 9421 §2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TargetUri {
    /// Lowercased scheme.
    pub(crate) scheme: String,
    /// Host (lowercased) and port, the default port of the scheme omitted, userinfo dropped.
    pub(crate) authority: String,
    /// Absolute path; `/` when the URI has none.
    pub(crate) path: String,
    /// `?` followed by the query, or just `?` when there is none (RFC 9421 §2.2.7).
    pub(crate) query: String,
}

impl TargetUri {
    /// Splits `scheme://authority/path?query#fragment`. Returns `None` for anything that is not an
    /// absolute URI with a non-empty host; the fragment is dropped as it is never sent.
    pub(crate) fn parse(uri: &str) -> Option<Self> {
        let (scheme, rest) = uri.split_once("://")?;
        let mut scheme_chars = scheme.chars();
        let scheme_is_valid = scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !scheme_is_valid {
            return None;
        }
        let scheme = scheme.to_ascii_lowercase();
        let rest = rest.split('#').next().unwrap_or_default();
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(authority_end);
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        Some(Self {
            authority: normalize_authority(&scheme, authority)?,
            scheme,
            path: if path.is_empty() {
                "/".to_owned()
            } else {
                path.to_owned()
            },
            query: format!("?{}", query.unwrap_or_default()),
        })
    }
}

/// RFC 9110 §4.2.3 normalization, which RFC 9421 §2.2.3 requires for `@authority`.
fn normalize_authority(scheme: &str, authority: &str) -> Option<String> {
    let host_and_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_userinfo, host)| host);
    let (host, port) = if host_and_port.starts_with('[') {
        // IPv6 literal: the port, if any, follows the closing bracket.
        let close = host_and_port.find(']')?;
        let (host, after) = host_and_port.split_at(close + 1);
        match after {
            "" => (host, ""),
            _ => (host, after.strip_prefix(':')?),
        }
    } else {
        host_and_port
            .rsplit_once(':')
            .unwrap_or((host_and_port, ""))
    };
    if host.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let default_port = match scheme {
        "http" => Some("80"),
        "https" => Some("443"),
        _ => None,
    };
    let host = host.to_ascii_lowercase();
    if port.is_empty() || Some(port.trim_start_matches('0')) == default_port {
        Some(host)
    } else {
        Some(format!("{host}:{port}"))
    }
}

/// Builds the signature base of RFC 9421 §2.5: one `"<name>": <value>` line per covered
/// component, then the `@signature-params` line, without a trailing newline.
///
/// `components` holds pairs of component name (without quotes) and value. The caller guarantees
/// the names are distinct and valid sf-strings; values are taken verbatim.
pub(crate) fn signature_base(components: &[(&str, &str)], signature_params: &str) -> String {
    let mut base = String::new();
    for (name, value) in components {
        base.push('"');
        base.push_str(name);
        base.push_str("\": ");
        base.push_str(value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(signature_params);
    base
}

/// A value containing CR or LF could shift text between lines of the signature base and so make
/// two different requests share one base. RFC 9421 §2.5 makes such a base invalid.
pub(crate) fn fits_in_signature_base(value: &str) -> bool {
    !value.contains(['\r', '\n'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(uri: &str) -> (String, String, String, String) {
        let target = TargetUri::parse(uri).expect("valid URI");
        (target.scheme, target.authority, target.path, target.query)
    }

    #[test]
    fn derives_components_like_rfc_9421_examples() {
        assert_eq!(
            parsed("https://www.example.com/path?param=value"),
            (
                "https".to_owned(),
                "www.example.com".to_owned(),
                "/path".to_owned(),
                "?param=value".to_owned()
            )
        );
        assert_eq!(
            parsed("HTTP://User:pw@Example.COM:80"),
            (
                "http".to_owned(),
                "example.com".to_owned(),
                "/".to_owned(),
                "?".to_owned()
            )
        );
        assert_eq!(
            parsed("https://gw.internal:8443/v1/op?#frag"),
            (
                "https".to_owned(),
                "gw.internal:8443".to_owned(),
                "/v1/op".to_owned(),
                "?".to_owned()
            )
        );
        assert_eq!(parsed("https://[::1]:443/x").1, "[::1]");
        assert_eq!(parsed("http://[::1]:8080?a=b").1, "[::1]:8080");
    }

    #[test]
    fn rejects_uris_without_scheme_or_host() {
        for uri in [
            "/v1/op",
            "://host/",
            "1http://host/",
            "https:///path",
            "https://host:port/",
            "https://[::1/",
            "https://[::1]x/",
            "",
        ] {
            assert!(TargetUri::parse(uri).is_none(), "{uri:?} must be rejected");
        }
    }

    #[test]
    fn signature_base_has_no_trailing_newline() {
        assert_eq!(
            signature_base(&[("@method", "POST")], "(\"@method\")"),
            "\"@method\": POST\n\"@signature-params\": (\"@method\")"
        );
    }
}
