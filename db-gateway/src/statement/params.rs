//! JSON parameters → typed, positional Postgres parameters.
//!
//! Values are borrowed from the parsed request wherever the wire type allows, so binding costs
//! no copies of strings or JSON documents. Every error names the parameter and the expected
//! type, never the value: values may be secrets, phone numbers or personal data.

use std::error::Error as StdError;

use bytes::BytesMut;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio_postgres::types::{IsNull, ToSql, Type};

use super::{OpDef, ParamSpec, ParamType};

/// Longest password (in bytes) the gateway hashes or verifies. The Worker's policy is far
/// stricter (10 to 128 characters); this bound only caps the work one request can ask for.
pub(crate) const MAX_PASSWORD_BYTES: usize = 1024;

/// A plaintext password on its way to the hasher. `Debug` never shows it, so a `{:?}` of the
/// bound parameters cannot leak it into a log.
#[derive(Clone, Copy)]
pub(crate) struct Plaintext<'a>(&'a str);

impl<'a> Plaintext<'a> {
    /// The password itself, for the hasher and verifier only.
    pub(crate) fn expose(self) -> &'a str {
        self.0
    }

    #[cfg(test)]
    pub(crate) fn for_test(text: &'a str) -> Self {
        Self(text)
    }
}

impl std::fmt::Debug for Plaintext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Plaintext(<redacted>)")
    }
}

/// A parameter ready to bind. `to_sql_checked` delegates to the inner type's own check, so a
/// registry entry whose declared type disagrees with the statement fails instead of sending
/// garbage (and startup verification catches that long before a request does).
#[derive(Debug)]
pub(crate) enum BoundParam<'a> {
    Null,
    Text(&'a str),
    Int4(i32),
    Int8(i64),
    Bool(bool),
    Timestamptz(DateTime<Utc>),
    Jsonb(&'a Value),
    TextArray(Vec<Option<&'a str>>),
    /// A [`ParamType::NewPassword`] before hashing; binding it is an error, so plaintext can
    /// never reach the database even if the hashing step were skipped.
    NewPassword(Plaintext<'a>),
    /// A [`ParamType::Password`]: read by procedures, never bound.
    Password(Plaintext<'a>),
    /// The Argon2id PHC string that replaced a `NewPassword`, bound as `text`.
    PasswordHash(String),
}

/// Why a plaintext variant refused to be bound.
const PLAINTEXT_REFUSED: &str = "a plaintext password is never bound to SQL";

impl ToSql for BoundParam<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            BoundParam::Null => Ok(IsNull::Yes),
            BoundParam::Text(v) => v.to_sql(ty, out),
            BoundParam::Int4(v) => v.to_sql(ty, out),
            BoundParam::Int8(v) => v.to_sql(ty, out),
            BoundParam::Bool(v) => v.to_sql(ty, out),
            BoundParam::Timestamptz(v) => v.to_sql(ty, out),
            BoundParam::Jsonb(v) => v.to_sql(ty, out),
            BoundParam::TextArray(v) => v.to_sql(ty, out),
            BoundParam::NewPassword(_) | BoundParam::Password(_) => Err(PLAINTEXT_REFUSED.into()),
            BoundParam::PasswordHash(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // The real check is per variant, in `to_sql_checked` below.
        true
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            BoundParam::Null => Ok(IsNull::Yes),
            BoundParam::Text(v) => v.to_sql_checked(ty, out),
            BoundParam::Int4(v) => v.to_sql_checked(ty, out),
            BoundParam::Int8(v) => v.to_sql_checked(ty, out),
            BoundParam::Bool(v) => v.to_sql_checked(ty, out),
            BoundParam::Timestamptz(v) => v.to_sql_checked(ty, out),
            BoundParam::Jsonb(v) => v.to_sql_checked(ty, out),
            BoundParam::TextArray(v) => v.to_sql_checked(ty, out),
            BoundParam::NewPassword(_) | BoundParam::Password(_) => Err(PLAINTEXT_REFUSED.into()),
            BoundParam::PasswordHash(v) => v.to_sql_checked(ty, out),
        }
    }
}

/// A parameter problem, reported as `invalid_params` with the parameter's name only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParamError {
    #[error("missing required parameter `{0}`")]
    Missing(&'static str),
    #[error("parameter `{name}` must be {expected}")]
    WrongType {
        name: &'static str,
        expected: &'static str,
    },
    #[error("unknown parameter `{0}`")]
    Unknown(String),
}

/// Longest unknown parameter name echoed back; anything longer is cut (it is client input).
const MAX_ECHOED_NAME: usize = 64;

/// Checks `params` against the operation's declaration and returns them in `$n` order.
pub(crate) fn bind<'a>(
    op: &OpDef,
    params: &'a Map<String, Value>,
) -> Result<Vec<BoundParam<'a>>, ParamError> {
    bind_declared(op.params(), params)
}

/// [`bind`] against a bare parameter list (procedures declare parameters without an `OpDef`).
pub(crate) fn bind_declared<'a>(
    declared_params: &[ParamSpec],
    params: &'a Map<String, Value>,
) -> Result<Vec<BoundParam<'a>>, ParamError> {
    let mut bound = Vec::with_capacity(declared_params.len());
    let mut matched = 0;
    for declared in declared_params {
        let value = params.get(declared.name);
        if value.is_some() {
            matched += 1;
        }
        match value {
            None | Some(Value::Null) if declared.required => {
                return Err(ParamError::Missing(declared.name));
            }
            None | Some(Value::Null) => bound.push(BoundParam::Null),
            Some(value) => {
                bound.push(convert(declared.ty, value).ok_or(ParamError::WrongType {
                    name: declared.name,
                    expected: declared.ty.describe(),
                })?)
            }
        }
    }
    if matched != params.len() {
        let unknown = params
            .keys()
            .find(|name| {
                !declared_params
                    .iter()
                    .any(|declared| declared.name == name.as_str())
            })
            .map(|name| truncate_name(name))
            .unwrap_or_default();
        return Err(ParamError::Unknown(unknown));
    }
    Ok(bound)
}

fn truncate_name(name: &str) -> String {
    match name.char_indices().nth(MAX_ECHOED_NAME) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.to_owned(),
    }
}

fn convert(ty: ParamType, value: &Value) -> Option<BoundParam<'_>> {
    Some(match ty {
        ParamType::Text => BoundParam::Text(value.as_str()?),
        ParamType::Int4 => BoundParam::Int4(i32::try_from(value.as_i64()?).ok()?),
        ParamType::Int8 => BoundParam::Int8(match value {
            Value::Number(number) => number.as_i64()?,
            Value::String(digits) if is_integer_literal(digits) => digits.parse().ok()?,
            _ => return None,
        }),
        ParamType::Numeric => {
            let text = value.as_str()?;
            if !is_decimal_literal(text) {
                return None;
            }
            BoundParam::Text(text)
        }
        ParamType::Bool => BoundParam::Bool(value.as_bool()?),
        ParamType::Timestamptz => BoundParam::Timestamptz(
            DateTime::parse_from_rfc3339(value.as_str()?)
                .ok()?
                .with_timezone(&Utc),
        ),
        ParamType::Jsonb => BoundParam::Jsonb(value),
        ParamType::TextArray => BoundParam::TextArray(
            value
                .as_array()?
                .iter()
                .map(|item| match item {
                    Value::String(text) => Some(Some(text.as_str())),
                    Value::Null => Some(None),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?,
        ),
        ParamType::NewPassword => BoundParam::NewPassword(password_text(value)?),
        ParamType::Password => BoundParam::Password(password_text(value)?),
    })
}

fn password_text(value: &Value) -> Option<Plaintext<'_>> {
    let text = value.as_str()?;
    (!text.is_empty() && text.len() <= MAX_PASSWORD_BYTES).then_some(Plaintext(text))
}

/// `-?[0-9]+`: what `"9007199254740993"` looks like; no signs, spaces or exponents beyond that.
fn is_integer_literal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `-?[0-9]+(\.[0-9]+)?`: plain decimal notation only, so no client can smuggle `NaN`,
/// `Infinity` or `1e400` into a money column.
fn is_decimal_literal(text: &str) -> bool {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    all_digits(whole) && fraction.is_none_or(all_digits)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::statement::{DEFAULT_STATEMENT_TIMEOUT_MS, Expect, Mode, OpSpec, ParamSpec};

    static EVERY_TYPE: OpDef = OpDef {
        spec: &OpSpec::new(
            "test.every_type",
            &[
                ParamSpec::required("t", ParamType::Text),
                ParamSpec::required("i4", ParamType::Int4),
                ParamSpec::required("i8", ParamType::Int8),
                ParamSpec::required("n", ParamType::Numeric),
                ParamSpec::required("b", ParamType::Bool),
                ParamSpec::required("ts", ParamType::Timestamptz),
                ParamSpec::required("j", ParamType::Jsonb),
                ParamSpec::required("arr", ParamType::TextArray),
                ParamSpec::optional("note", ParamType::Text),
            ],
        ),
        sql: "",
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    };

    fn params(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("test params must be an object"),
        }
    }

    fn valid() -> Map<String, Value> {
        params(json!({
            "t": "hello", "i4": 7, "i8": "9007199254740993", "n": "-12.50", "b": true,
            "ts": "2026-11-22T10:00:00.5+02:00", "j": {"a": [1, null]}, "arr": ["x", null]
        }))
    }

    #[test]
    fn binds_every_type_in_declaration_order() {
        let input = valid();
        let bound = bind(&EVERY_TYPE, &input).expect("valid params bind");
        assert_eq!(bound.len(), 9);
        assert!(matches!(bound[0], BoundParam::Text("hello")));
        assert!(matches!(bound[1], BoundParam::Int4(7)));
        assert!(matches!(bound[2], BoundParam::Int8(9_007_199_254_740_993)));
        assert!(matches!(bound[3], BoundParam::Text("-12.50")));
        assert!(matches!(bound[4], BoundParam::Bool(true)));
        match &bound[5] {
            BoundParam::Timestamptz(ts) => {
                assert_eq!(ts.to_rfc3339(), "2026-11-22T08:00:00.500+00:00")
            }
            other => panic!("expected a timestamp, got {other:?}"),
        }
        assert!(
            matches!(bound[7], BoundParam::TextArray(ref items) if items == &[Some("x"), None])
        );
        assert!(matches!(bound[8], BoundParam::Null));
    }

    #[test]
    fn int8_accepts_numbers_and_digit_strings_only() {
        let mut input = valid();
        input.insert("i8".into(), json!(-42));
        assert!(bind(&EVERY_TYPE, &input).is_ok());
        for bad in [
            json!("1.5"),
            json!(" 1"),
            json!("+1"),
            json!("99999999999999999999"),
            json!(1.5),
        ] {
            input.insert("i8".into(), bad);
            assert_eq!(
                bind(&EVERY_TYPE, &input).unwrap_err(),
                ParamError::WrongType {
                    name: "i8",
                    expected: ParamType::Int8.describe()
                }
            );
        }
    }

    #[test]
    fn numeric_accepts_plain_decimals_only() {
        for good in [
            "0",
            "-0.5",
            "12.50",
            "123456789012345678901234567890.000001",
        ] {
            assert!(is_decimal_literal(good), "{good}");
        }
        for bad in [
            "", "-", ".5", "5.", "1e5", "NaN", "Infinity", "+1", "1,5", " 1",
        ] {
            assert!(!is_decimal_literal(bad), "{bad}");
        }
        let mut input = valid();
        input.insert("n".into(), json!(12.5));
        assert!(matches!(
            bind(&EVERY_TYPE, &input),
            Err(ParamError::WrongType { name: "n", .. })
        ));
    }

    #[test]
    fn int4_rejects_out_of_range() {
        let mut input = valid();
        input.insert("i4".into(), json!(i64::from(i32::MAX) + 1));
        assert!(matches!(
            bind(&EVERY_TYPE, &input),
            Err(ParamError::WrongType { name: "i4", .. })
        ));
    }

    #[test]
    fn missing_null_and_unknown_params_are_named() {
        let mut input = valid();
        input.remove("b");
        assert_eq!(
            bind(&EVERY_TYPE, &input).unwrap_err(),
            ParamError::Missing("b")
        );
        input.insert("b".into(), Value::Null);
        assert_eq!(
            bind(&EVERY_TYPE, &input).unwrap_err(),
            ParamError::Missing("b")
        );
        let mut input = valid();
        input.insert("drop_table".into(), json!("x"));
        assert_eq!(
            bind(&EVERY_TYPE, &input).unwrap_err(),
            ParamError::Unknown("drop_table".into())
        );
    }

    #[test]
    fn error_messages_never_contain_values() {
        let mut input = valid();
        input.insert("t".into(), json!(12345));
        let message = bind(&EVERY_TYPE, &input).unwrap_err().to_string();
        assert!(message.contains("`t`"));
        assert!(!message.contains("12345"));
    }

    static PASSWORDS: OpDef = OpDef {
        spec: &OpSpec::new(
            "test.passwords",
            &[
                ParamSpec::required("new", ParamType::NewPassword),
                ParamSpec::required("attempt", ParamType::Password),
            ],
        ),
        sql: "",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    };

    #[test]
    fn passwords_bind_as_redacted_plaintext_that_refuses_to_reach_sql() {
        let input = params(json!({"new": "hunter2hunter2", "attempt": "swordfish!!"}));
        let bound = bind(&PASSWORDS, &input).expect("passwords bind");
        let debug = format!("{bound:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("swordfish"),
            "{debug}"
        );
        for param in &bound {
            let mut out = BytesMut::new();
            assert!(param.to_sql_checked(&Type::TEXT, &mut out).is_err());
            assert!(out.is_empty(), "nothing was written");
        }
        let mut out = BytesMut::new();
        assert!(
            BoundParam::PasswordHash("$argon2id$x".to_owned())
                .to_sql_checked(&Type::TEXT, &mut out)
                .is_ok()
        );
    }

    #[test]
    fn passwords_must_be_non_empty_bounded_strings() {
        for bad in [
            json!(""),
            json!("x".repeat(MAX_PASSWORD_BYTES + 1)),
            json!(12345678901u64),
        ] {
            let input = params(json!({"new": bad, "attempt": "fine"}));
            assert!(matches!(
                bind(&PASSWORDS, &input),
                Err(ParamError::WrongType { name: "new", .. })
            ));
        }
        let input = params(json!({"new": "x".repeat(MAX_PASSWORD_BYTES), "attempt": "fine"}));
        assert!(bind(&PASSWORDS, &input).is_ok());
    }

    #[test]
    fn long_unknown_names_are_truncated() {
        let mut input = valid();
        input.insert("x".repeat(500), json!(1));
        let ParamError::Unknown(name) = bind(&EVERY_TYPE, &input).unwrap_err() else {
            panic!("expected an unknown-parameter error");
        };
        assert!(name.chars().count() <= MAX_ECHOED_NAME + 1);
    }
}
