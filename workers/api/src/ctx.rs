//! Per-request context: bindings, request id, client address, and helpers every handler needs.

use std::pin::pin;
use std::rc::Rc;

use callmeback_domain::{FieldError, FieldErrors};
use futures_util::{Stream, StreamExt as _};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use worker::{Env, Request};

use crate::config::Config;
use crate::error::ApiError;
use crate::gateway::Gateway;

/// Largest JSON body a route accepts; larger requests get 413 before anything is parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug)]
pub struct RequestCtx {
    pub env: Env,
    /// The isolate's configuration (read once, shared by every request).
    pub config: Rc<Config>,
    pub request_id: String,
    /// The client's address as Cloudflare reports it (`CF-Connecting-IP`), for rate limits and
    /// the audit log. Locally wrangler sets it to the loopback address.
    pub client_ip: String,
}

impl RequestCtx {
    pub fn new(env: Env, req: &Request, request_id: String) -> Self {
        let client_ip = req
            .headers()
            .get("cf-connecting-ip")
            .ok()
            .flatten()
            .filter(|ip| ip.len() <= 64)
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            config: Config::get(&env),
            env,
            request_id,
            client_ip,
        }
    }

    /// A gateway client for this request.
    pub fn gateway(&self) -> Result<Gateway, ApiError> {
        Ok(Gateway::new(
            self.config.gateway.get()?,
            self.request_id.clone(),
        ))
    }

    /// Unix time in seconds ([`crate::time::now_secs`]).
    pub fn now_secs(&self) -> i64 {
        crate::time::now_secs()
    }
}

/// Reads a JSON body: 415 unless JSON, 413 over [`MAX_BODY_BYTES`], 400 with a stable code when
/// the JSON does not parse or does not have the expected shape.
pub async fn read_json<T: DeserializeOwned>(req: &mut Request) -> Result<T, ApiError> {
    let content_type = req
        .headers()
        .get("content-type")
        .ok()
        .flatten()
        .unwrap_or_default();
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            "send the body as application/json",
        ));
    }
    parse_json(&read_body(req, MAX_BODY_BYTES).await?)
}

/// Reads a body of at most `max_bytes`: 413 `payload_too_large` when the declared length or the
/// body itself is larger, 400 `invalid_body` when it cannot be read.
///
/// The body is read as a stream and reading stops at the first chunk that would pass the limit,
/// so a body without `Content-Length` (chunked) costs at most `max_bytes` plus one chunk of
/// memory, never its whole size: an isolate has 128 MB, and a client could otherwise make it
/// buffer that much before the size was checked.
pub async fn read_body(req: &mut Request, max_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > max_bytes) {
        return Err(payload_too_large(max_bytes));
    }
    if req.inner().body().is_none() {
        return Ok(Vec::new());
    }
    let stream = req.stream().map_err(|_| unreadable_body())?;
    collect_bounded(stream, max_bytes).await
}

/// Collects a stream of chunks into one body of at most `max_bytes`, without polling the stream
/// again once a chunk would take it past the limit.
pub async fn collect_bounded<S, E>(stream: S, max_bytes: usize) -> Result<Vec<u8>, ApiError>
where
    S: Stream<Item = Result<Vec<u8>, E>>,
{
    let mut stream = pin!(stream);
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| unreadable_body())?;
        if chunk.len() > max_bytes.saturating_sub(body.len()) {
            return Err(payload_too_large(max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn unreadable_body() -> ApiError {
    ApiError::bad_request("invalid_body", "the request body could not be read")
}

/// Parses JSON bytes with the API's error codes (split out so it is testable natively).
///
/// - not JSON: 400 `invalid_json`;
/// - a string (value or member name) containing U+0000 anywhere: 400 `validation_failed` naming
///   the field (`invalid_characters`); no column can store it, so it must never reach the gateway;
/// - JSON of the wrong shape: 400 `invalid_body` whose message and `field` member name the field
///   (bounded, see [`field_label`]) and what was expected, and never repeat a submitted value:
///   serde's own messages do (`invalid type: integer `14155550123``), and an unknown member name is
///   whatever the client sent, 10 KB of it included.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|_| ApiError::bad_request("invalid_json", "the body is not valid JSON"))?;
    if let Some(field) = find_nul(&value, "") {
        let mut errors = FieldErrors::new();
        errors.add(
            &field,
            FieldError::new("invalid_characters", "must not contain NUL characters"),
        );
        return Err(ApiError::validation_failed(errors));
    }
    serde_path_to_error::deserialize(value).map_err(|error| {
        let (field, problem) = describe_shape_error(&error);
        ApiError::bad_request(
            "invalid_body",
            format!("the body does not have the expected shape: {problem}"),
        )
        .with_extra("field", json!(field))
    })
}

/// The path of the first string (or member name) containing U+0000, as a bounded label.
fn find_nul(value: &Value, path: &str) -> Option<String> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::String(text) if text.contains('\0') => {
            Some(field_label(if path.is_empty() { "." } else { path }))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| find_nul(item, &format!("{path}[{index}]"))),
        Value::Object(members) => members.iter().find_map(|(key, member)| {
            if key.contains('\0') {
                Some(field_label(&join(key)))
            } else {
                find_nul(member, &join(key))
            }
        }),
        _ => None,
    }
}

/// Longest field label an error carries (characters).
pub const MAX_FIELD_LABEL_CHARS: usize = 64;

/// A field path or member name as an error may show it: control characters replaced, at most
/// [`MAX_FIELD_LABEL_CHARS`] characters (then `…`).
pub fn field_label(raw: &str) -> String {
    let mut label: String = raw
        .chars()
        .take(MAX_FIELD_LABEL_CHARS)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if raw.chars().nth(MAX_FIELD_LABEL_CHARS).is_some() {
        label.push('…');
    }
    label
}

/// Which field a shape error is about, and what is wrong with it, from serde's error with every
/// submitted value left out. serde's messages have a fixed form (`serde::de::Error`'s provided
/// methods); anything else (a type's own message) is reported as "invalid value" without it.
fn describe_shape_error(error: &serde_path_to_error::Error<serde_json::Error>) -> (String, String) {
    let path = error.path().to_string();
    let field = field_label(&path);
    let inner = error.inner().to_string();
    // serde_json appends a position for errors it raises while reading text; from a `Value` there
    // is none, but strip it in case.
    let message = inner
        .rsplit_once(" at line ")
        .map_or(inner.as_str(), |(message, _)| message);
    let expected = |rest: &str| {
        rest.split_once(", expected ")
            .map(|(found, expected)| (kind_of(found), bounded(expected)))
    };
    let problem = if let Some(rest) = message.strip_prefix("invalid type: ") {
        match expected(rest) {
            Some((found, expected)) => format!("`{field}` must be {expected}, not {found}"),
            None => format!("`{field}` has the wrong type"),
        }
    } else if let Some(rest) = message.strip_prefix("invalid value: ") {
        match expected(rest) {
            Some((_, expected)) => format!("`{field}` must be {expected}"),
            None => format!("`{field}` has an invalid value"),
        }
    } else if let Some(rest) = message.strip_prefix("invalid length ") {
        match rest.split_once(", expected ") {
            Some((_, expected)) => format!("`{field}` must be {}", bounded(expected)),
            None => format!("`{field}` has the wrong length"),
        }
    } else if let Some(rest) = message.strip_prefix("unknown variant ") {
        match rest.split_once(", expected ") {
            Some((_, expected)) => format!("`{field}` must be {}", bounded(expected)),
            None => format!("`{field}` is not one of the accepted values"),
        }
    } else if let Some(rest) = message.strip_prefix("unknown field `") {
        // The name is the client's: bounded, and it names the field of this error.
        let name = rest.rsplit_once("`, ").map_or(rest, |(name, _)| name);
        let name = name.strip_suffix('`').unwrap_or(name);
        // serde_path_to_error's path already ends with the unknown member.
        let unknown = field_label(if path == "." { name } else { &path });
        return (unknown.clone(), format!("unknown field `{unknown}`"));
    } else if let Some(rest) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        // The name is ours (a field of the target type).
        let missing = field_label(&if path == "." {
            rest.to_owned()
        } else {
            format!("{path}.{rest}")
        });
        return (missing.clone(), format!("`{missing}` is required"));
    } else if message.starts_with("duplicate field `") {
        format!("`{field}` has a member twice")
    } else {
        format!("`{field}` has an invalid value")
    };
    (field, problem)
}

/// What kind of JSON value serde found (`integer`, `string`, `map`, …), without the value itself.
fn kind_of(found: &str) -> String {
    let kind = found.split(['`', '"']).next().unwrap_or(found).trim();
    let kind = match kind {
        "map" => "an object",
        "sequence" => "an array",
        "string" => "a string",
        "integer" => "a number",
        "floating point" => "a number",
        "boolean" => "a boolean",
        "unit value" | "null" => "null",
        _ => "another kind of value",
    };
    kind.to_owned()
}

/// An expectation (always our own type's text) bounded all the same.
fn bounded(text: &str) -> String {
    let limit = 120;
    if text.chars().count() > limit {
        format!("{}…", text.chars().take(limit).collect::<String>())
    } else {
        text.to_owned()
    }
}

fn payload_too_large(max_bytes: usize) -> ApiError {
    ApiError::new(
        413,
        "payload_too_large",
        format!("the body is larger than {max_bytes} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        email: String,
    }

    fn chunks(sizes: &[usize]) -> impl Stream<Item = Result<Vec<u8>, ()>> {
        futures_util::stream::iter(
            sizes
                .iter()
                .map(|&size| Ok(vec![b'x'; size]))
                .collect::<Vec<_>>(),
        )
    }

    /// Runs a future whose streams are always ready (no executor needed).
    fn collect(
        stream: impl Stream<Item = Result<Vec<u8>, ()>>,
        max: usize,
    ) -> Result<Vec<u8>, ApiError> {
        let mut future = pin!(collect_bounded(stream, max));
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
        }
    }

    #[test]
    fn bodies_are_collected_up_to_the_limit_and_no_further() {
        assert_eq!(collect(chunks(&[]), 10).unwrap(), Vec::<u8>::new());
        assert_eq!(collect(chunks(&[4, 6]), 10).unwrap().len(), 10);
        let over = collect(chunks(&[4, 6, 1]), 10).unwrap_err();
        assert_eq!((over.status, over.code), (413, "payload_too_large"));
        assert_eq!(collect(chunks(&[11]), 10).unwrap_err().status, 413);
        assert_eq!(
            collect(futures_util::stream::iter([Ok(vec![1]), Err(())]), 10)
                .unwrap_err()
                .code,
            "invalid_body"
        );

        // Once past the limit the stream is not polled again: an endless body ends at once.
        let polled = std::cell::Cell::new(0usize);
        let endless = futures_util::stream::repeat_with(|| {
            polled.set(polled.get() + 1);
            Ok::<_, ()>(vec![0u8; 1000])
        });
        assert_eq!(collect(endless, 64 * 1024).unwrap_err().status, 413);
        assert_eq!(
            polled.get(),
            66,
            "65 chunks fit; the 66th is refused, nothing after it is read"
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Nested {
        phone: Option<String>,
        settings: Option<Settings>,
        kind: Option<Kind>,
        count: Option<u8>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Settings {
        stability: f64,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Kind {
        Coach,
        Friend,
    }

    fn shape_error(body: &str) -> (String, Value) {
        let error = parse_json::<Nested>(body.as_bytes()).unwrap_err();
        assert_eq!((error.status, error.code), (400, "invalid_body"), "{body}");
        (error.message, error.extra["field"].clone())
    }

    #[test]
    fn shape_errors_name_the_field_and_type_and_never_echo_values() {
        let (message, field) = shape_error(r#"{"phone": 14155550123}"#);
        assert_eq!(field, "phone");
        assert!(
            message.contains("`phone` must be a string, not a number"),
            "{message}"
        );
        assert!(!message.contains("14155550123"), "{message}");

        let (message, field) = shape_error(r#"{"settings": {"stability": "very-secret"}}"#);
        assert_eq!(field, "settings.stability");
        assert!(message.contains("must be f64, not a string"), "{message}");
        assert!(!message.contains("very-secret"), "{message}");

        let (message, field) = shape_error(r#"{"kind": "s3cr3t-variant"}"#);
        assert_eq!(field, "kind");
        assert!(message.contains("`coach`"), "{message}");
        assert!(!message.contains("s3cr3t"), "{message}");

        let (message, field) = shape_error(r#"{"count": 300}"#);
        assert_eq!(field, "count");
        assert!(!message.contains("300"), "{message}");

        let (message, field) = shape_error(r#"{"settings": {}}"#);
        assert_eq!(field, "settings.stability");
        assert!(message.contains("is required"), "{message}");

        let (message, field) = shape_error(r#"{"settings": true}"#);
        assert_eq!(field, "settings");
        assert!(message.contains("not a boolean"), "{message}");
        assert!(!message.contains("true"), "{message}");
    }

    #[test]
    fn an_unknown_member_name_comes_back_bounded() {
        let name = format!("x{}", "A".repeat(10 * 1024));
        let (message, field) = shape_error(&format!(r#"{{"{name}": 1}}"#));
        let field = field.as_str().unwrap();
        assert_eq!(field.chars().count(), MAX_FIELD_LABEL_CHARS + 1);
        assert!(field.ends_with('…'));
        assert!(message.len() < 300, "{} bytes", message.len());
        let (_, nested) = shape_error(r#"{"settings": {"stability": 1, "extra\u0007": 2}}"#);
        assert_eq!(nested, "settings.extra\u{fffd}");
    }

    #[test]
    fn nul_characters_are_a_validation_error_naming_the_field() {
        for (body, field) in [
            (r#"{"email": "a\u0000@b.co"}"#, "email"),
            (
                r#"{"settings": {"stability": 1, "no\u0000te": 1}}"#,
                "settings.no\u{fffd}te",
            ),
            (r#"{"list": ["ok", "bad\u0000"]}"#, "list[1]"),
            (r#""\u0000""#, "."),
        ] {
            let error = parse_json::<Value>(body.as_bytes()).unwrap_err();
            assert_eq!(
                (error.status, error.code),
                (400, "validation_failed"),
                "{body}"
            );
            let fields = error.fields.expect("fields");
            assert_eq!(
                fields[field]["code"], "invalid_characters",
                "{body}: {fields}"
            );
        }
        assert!(parse_json::<Value>(br#"{"email": "a@b.co"}"#).is_ok());
    }

    #[test]
    fn field_labels_are_bounded_and_printable() {
        assert_eq!(field_label("phone"), "phone");
        assert_eq!(field_label("a\nb"), "a\u{fffd}b");
        assert_eq!(
            field_label(&"é".repeat(100)).chars().count(),
            MAX_FIELD_LABEL_CHARS + 1
        );
    }

    #[test]
    fn json_errors_have_stable_codes() {
        assert_eq!(parse_json::<Body>(b"{").unwrap_err().code, "invalid_json");
        assert_eq!(
            parse_json::<Body>(b"{\"email\": 3}").unwrap_err().code,
            "invalid_body"
        );
        assert_eq!(
            parse_json::<Body>(b"{\"email\": \"a\", \"x\": 1}")
                .unwrap_err()
                .code,
            "invalid_body"
        );
        assert!(parse_json::<Body>(b"{\"email\": \"a@b.co\"}").is_ok());
    }
}
