//! Partial-update bodies, checked field by field.
//!
//! A `PUT` changes only the fields present in its body: an absent field keeps its value
//! ([`Change::Keep`]), a value replaces it ([`Change::Set`]), and an explicit `null` clears it
//! ([`Change::Clear`]), which is allowed only for optional fields; `null` for a field that always
//! has a value is refused with the code `not_nullable`. An empty or all-blank string for an
//! optional text field clears it like `null`.
//!
//! Body members are read as raw JSON values (see [`present`]) and checked one by one, so every
//! wrong field gets its own entry in [`FieldErrors`] (`invalid_type`, `too_long`,
//! `out_of_range`, …). What passes is collected in a [`Patch`]: the new values by storage name,
//! plus the names of the fields the request sent (`set_fields`).

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use crate::{FieldError, FieldErrors, ValidationError, bounded_text};

/// What a request does to one field.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<T> {
    /// Absent (or invalid, with an error recorded): leave the stored value alone.
    Keep,
    /// Explicit `null` (or a blank optional string): store NULL.
    Clear,
    Set(T),
}

impl<T> Change<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Change<U> {
        match self {
            Change::Keep => Change::Keep,
            Change::Clear => Change::Clear,
            Change::Set(value) => Change::Set(f(value)),
        }
    }
}

/// Gateway parameters being collected, plus the names of the fields the request sent.
#[derive(Debug, Default)]
pub struct Patch {
    params: Map<String, Value>,
    sent: Vec<&'static str>,
}

impl Patch {
    pub fn put(&mut self, field: &'static str, change: Change<Value>) {
        match change {
            Change::Keep => {}
            Change::Clear => {
                self.params.insert(field.to_owned(), Value::Null);
                self.sent.push(field);
            }
            Change::Set(value) => {
                self.params.insert(field.to_owned(), value);
                self.sent.push(field);
            }
        }
    }

    pub fn has(&self, field: &str) -> bool {
        self.params.get(field).is_some_and(|value| !value.is_null())
    }

    pub fn into_params(mut self, with_set_fields: bool) -> Map<String, Value> {
        if with_set_fields {
            self.params
                .insert("set_fields".to_owned(), json!(self.sent));
        }
        self.params
    }
}

/// Records `required` for each listed field that has neither a value nor an error yet.
pub fn require(errors: &mut FieldErrors, patch: &Patch, fields: &[&str]) {
    for field in fields {
        if !patch.has(field) && errors.get(field).is_none() {
            errors.add(field, ValidationError::Required);
        }
    }
}

/// Deserializes a member that is present (even as `null`) into `Some`, so `null` and "absent"
/// differ: absent stays `None` through `#[serde(default)]`.
pub fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

pub fn invalid_type(expected: &str) -> FieldError {
    FieldError::new("invalid_type", format!("must be {expected}"))
}

pub fn not_nullable() -> FieldError {
    FieldError::new(
        "not_nullable",
        "cannot be null; leave the field out to keep its value",
    )
}

/// A field that always has a value: absent keeps it, `null` is refused (`not_nullable`), anything
/// else is `check`ed.
fn never_null<T>(
    errors: &mut FieldErrors,
    field: &str,
    input: Option<Value>,
    check: impl FnOnce(Value) -> Result<T, FieldError>,
) -> Change<T> {
    match input {
        None => Change::Keep,
        Some(Value::Null) => {
            errors.add(field, not_nullable());
            Change::Keep
        }
        Some(value) => match check(value) {
            Ok(value) => Change::Set(value),
            Err(error) => {
                errors.add(field, error);
                Change::Keep
            }
        },
    }
}

/// A text field that always has a value: `null` and blank strings are refused.
pub fn required_text(
    errors: &mut FieldErrors,
    field: &str,
    input: Option<Value>,
    max_chars: usize,
) -> Change<String> {
    never_null(errors, field, input, |value| match value {
        Value::String(text) => bounded_text(&text, 1, max_chars).map_err(FieldError::from),
        _ => Err(invalid_type("a string")),
    })
}

/// A text field that may be empty: `null` and blank strings clear it.
pub fn optional_text(
    errors: &mut FieldErrors,
    field: &str,
    input: Option<Value>,
    max_chars: usize,
) -> Change<String> {
    match input {
        None => Change::Keep,
        Some(Value::Null) => Change::Clear,
        Some(Value::String(text)) => match bounded_text(&text, 0, max_chars) {
            Ok(text) if text.is_empty() => Change::Clear,
            Ok(text) => Change::Set(text),
            Err(error) => {
                errors.add(field, error);
                Change::Keep
            }
        },
        Some(_) => {
            errors.add(field, invalid_type("a string or null"));
            Change::Keep
        }
    }
}

/// `true` or `false`; `null` is refused.
pub fn boolean(errors: &mut FieldErrors, field: &str, input: Option<Value>) -> Change<bool> {
    never_null(errors, field, input, |value| {
        value.as_bool().ok_or_else(|| invalid_type("true or false"))
    })
}

/// A whole number in `range` (inclusive); `null` is refused.
pub fn integer(
    errors: &mut FieldErrors,
    field: &str,
    input: Option<Value>,
    range: (i64, i64),
) -> Change<i64> {
    never_null(errors, field, input, |value| match value.as_i64() {
        Some(n) if (range.0..=range.1).contains(&n) => Ok(n),
        Some(_) => Err(ValidationError::OutOfRange {
            min: range.0,
            max: range.1,
        }
        .into()),
        None => Err(invalid_type("a whole number")),
    })
}

/// A number in `range` (inclusive); `null` is refused.
pub fn number(
    errors: &mut FieldErrors,
    field: &str,
    input: Option<Value>,
    range: (f64, f64),
) -> Change<f64> {
    never_null(errors, field, input, |value| match value {
        Value::Number(number) => number
            .as_f64()
            .filter(|n| (range.0..=range.1).contains(n))
            .ok_or_else(|| out_of_range(range)),
        _ => Err(invalid_type("a number")),
    })
}

pub fn out_of_range((min, max): (f64, f64)) -> FieldError {
    FieldError::new(
        "out_of_range",
        format!("must be between {min:?} and {max:?}"),
    )
}

/// Ids of personas and templates: lower-case slugs that read well in URLs and logs.
pub fn is_slug(candidate: &str) -> bool {
    let bytes = candidate.as_bytes();
    (2..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A slug-valued field; `null` is refused (callers that allow it handle `null` first).
pub fn slug(errors: &mut FieldErrors, field: &str, input: Option<Value>) -> Change<String> {
    never_null(errors, field, input, |value| match value {
        Value::String(text) if is_slug(&text) => Ok(text),
        Value::String(_) => Err(FieldError::new(
            "invalid_format",
            "must be 2 to 63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit",
        )),
        _ => Err(invalid_type("a string")),
    })
}

pub fn parse_query_bool(value: &str) -> Option<bool> {
    match value {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for good in [
            "brad",
            "tpl_morning_motivation",
            "a1",
            "0-x",
            &"a".repeat(63),
        ] {
            assert!(is_slug(good), "{good}");
        }
        for bad in [
            "",
            "a",
            "-ab",
            "_ab",
            "Brad",
            "a b",
            "a/b",
            "é1",
            &"a".repeat(64),
        ] {
            assert!(!is_slug(bad), "{bad}");
        }
    }

    #[test]
    fn query_flags() {
        assert_eq!(parse_query_bool("true"), Some(true));
        assert_eq!(parse_query_bool("0"), Some(false));
        assert_eq!(parse_query_bool("yes"), None);
    }
}
