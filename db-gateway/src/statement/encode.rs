//! Result values → JSON, following the table in `callmeback-gateway-api`.
//!
//! Rows arrive in Postgres' binary format. 64-bit integers and decimals leave as strings so
//! JavaScript never rounds them; `numeric` is decoded here from its base-10000 digits to an exact
//! decimal string because no Rust decimal type is needed (or wanted) just to print it.

use std::error::Error as StdError;
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, SecondsFormat};
use serde_json::{Number, Value};
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Type};

type BoxError = Box<dyn StdError + Sync + Send>;

/// How one result column is turned into JSON; chosen once per statement from the column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnCodec {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Text,
    Timestamptz,
    Date,
    Json,
    Uuid,
    TextArray,
}

impl ColumnCodec {
    /// `None` for types the wire format does not define (the registry check refuses them).
    pub(crate) fn for_type(ty: &Type) -> Option<Self> {
        Some(match *ty {
            Type::BOOL => Self::Bool,
            Type::INT2 => Self::Int2,
            Type::INT4 => Self::Int4,
            Type::INT8 => Self::Int8,
            Type::FLOAT4 => Self::Float4,
            Type::FLOAT8 => Self::Float8,
            Type::NUMERIC => Self::Numeric,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => Self::Text,
            Type::TIMESTAMPTZ => Self::Timestamptz,
            Type::DATE => Self::Date,
            Type::JSON | Type::JSONB => Self::Json,
            Type::UUID => Self::Uuid,
            Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => Self::TextArray,
            _ => return None,
        })
    }

    /// Reads column `index` of `row` as JSON (`null` for SQL `NULL`).
    pub(crate) fn decode(self, row: &Row, index: usize) -> Result<Value, tokio_postgres::Error> {
        Ok(match self {
            Self::Bool => json_or_null(row.try_get::<_, Option<bool>>(index)?, Value::Bool),
            Self::Int2 => json_or_null(row.try_get::<_, Option<i16>>(index)?, Value::from),
            Self::Int4 => json_or_null(row.try_get::<_, Option<i32>>(index)?, Value::from),
            Self::Int8 => json_or_null(row.try_get::<_, Option<i64>>(index)?, |v| {
                Value::String(v.to_string())
            }),
            Self::Float4 => json_or_null(row.try_get::<_, Option<f32>>(index)?, |v| {
                float(f64::from(v))
            }),
            Self::Float8 => json_or_null(row.try_get::<_, Option<f64>>(index)?, float),
            Self::Numeric => json_or_null(row.try_get::<_, Option<PgNumeric>>(index)?, |v| {
                Value::String(v.0)
            }),
            Self::Text => json_or_null(row.try_get::<_, Option<String>>(index)?, Value::String),
            Self::Timestamptz => {
                json_or_null(row.try_get::<_, Option<PgTimestamptz>>(index)?, |v| {
                    Value::String(v.0)
                })
            }
            Self::Date => json_or_null(row.try_get::<_, Option<PgDate>>(index)?, |v| {
                Value::String(v.0)
            }),
            Self::Json => row
                .try_get::<_, Option<Value>>(index)?
                .unwrap_or(Value::Null),
            Self::Uuid => json_or_null(row.try_get::<_, Option<uuid::Uuid>>(index)?, |v| {
                Value::String(v.hyphenated().to_string())
            }),
            Self::TextArray => json_or_null(
                row.try_get::<_, Option<Vec<Option<String>>>>(index)?,
                |items| {
                    Value::Array(
                        items
                            .into_iter()
                            .map(|item| item.map_or(Value::Null, Value::String))
                            .collect(),
                    )
                },
            ),
        })
    }
}

fn json_or_null<T>(value: Option<T>, to_json: impl FnOnce(T) -> Value) -> Value {
    value.map_or(Value::Null, to_json)
}

/// Finite floats are numbers; NaN and ±Infinity have no JSON number, so they cross as the same
/// strings Postgres prints.
fn float(value: f64) -> Value {
    match Number::from_f64(value) {
        Some(number) => Value::Number(number),
        None if value.is_nan() => Value::String("NaN".to_owned()),
        None if value > 0.0 => Value::String("Infinity".to_owned()),
        None => Value::String("-Infinity".to_owned()),
    }
}

/// A `numeric` rendered exactly as Postgres' text output would (`"12.50"`, `"NaN"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgNumeric(pub(crate) String);

impl<'a> FromSql<'a> for PgNumeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        decode_numeric(raw).map(PgNumeric)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

const NUMERIC_POSITIVE: u16 = 0x0000;
const NUMERIC_NEGATIVE: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PLUS_INFINITY: u16 = 0xD000;
const NUMERIC_MINUS_INFINITY: u16 = 0xF000;

/// Decodes the binary `numeric` layout: `ndigits`, `weight`, `sign`, `dscale` (all 16-bit,
/// big-endian), then `ndigits` base-10000 digits. The value is
/// `Σ digit[i] · 10000^(weight − i)`, printed with exactly `dscale` fractional digits.
fn decode_numeric(raw: &[u8]) -> Result<String, BoxError> {
    let header = |at: usize| -> Result<u16, BoxError> {
        raw.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "numeric value is truncated".into())
    };
    let ndigits = usize::from(header(0)?);
    let weight = i32::from(header(2)? as i16);
    let sign = header(4)?;
    let dscale = usize::from(header(6)?);
    if raw.len() != 8 + 2 * ndigits {
        return Err("numeric value has the wrong length".into());
    }
    match sign {
        NUMERIC_POSITIVE | NUMERIC_NEGATIVE => {}
        NUMERIC_NAN => return Ok("NaN".to_owned()),
        NUMERIC_PLUS_INFINITY => return Ok("Infinity".to_owned()),
        NUMERIC_MINUS_INFINITY => return Ok("-Infinity".to_owned()),
        _ => return Err("numeric value has an unknown sign".into()),
    }
    let mut digits = Vec::with_capacity(ndigits);
    for index in 0..ndigits {
        let digit = header(8 + 2 * index)?;
        if digit > 9999 {
            return Err("numeric digit out of range".into());
        }
        digits.push(digit);
    }
    // Digit `i` carries 10000^(weight − i); positions past the stored digits are zero.
    let digit_at = |position: i32| -> u16 {
        usize::try_from(position)
            .ok()
            .and_then(|p| digits.get(p).copied())
            .unwrap_or(0)
    };

    let mut text = String::with_capacity(8 + 4 * (ndigits + 1) + dscale);
    if sign == NUMERIC_NEGATIVE {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        write!(text, "{}", digit_at(0)).expect("invariant: writing to a String cannot fail");
        for position in 1..=weight {
            write!(text, "{:04}", digit_at(position))
                .expect("invariant: writing to a String cannot fail");
        }
    }
    if dscale > 0 {
        text.push('.');
        let fraction_start = text.len();
        let mut position = weight + 1;
        while text.len() - fraction_start < dscale {
            write!(text, "{:04}", digit_at(position))
                .expect("invariant: writing to a String cannot fail");
            position += 1;
        }
        text.truncate(fraction_start + dscale);
    }
    Ok(text)
}

/// Microseconds between the Unix epoch and Postgres' epoch (2000-01-01 UTC).
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A `timestamptz` as RFC 3339 in UTC with microseconds (`2026-11-22T10:00:00.123456Z`);
/// Postgres' `infinity`/`-infinity` keep their names instead of failing the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgTimestamptz(pub(crate) String);

impl<'a> FromSql<'a> for PgTimestamptz {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let bytes: [u8; 8] = raw
            .try_into()
            .map_err(|_| "timestamptz value has the wrong length")?;
        let micros = i64::from_be_bytes(bytes);
        let text = match micros {
            i64::MAX => "infinity".to_owned(),
            i64::MIN => "-infinity".to_owned(),
            _ => {
                let unix_micros = micros
                    .checked_add(POSTGRES_EPOCH_UNIX_MICROS)
                    .ok_or("timestamptz value out of range")?;
                DateTime::from_timestamp_micros(unix_micros)
                    .ok_or("timestamptz value out of range")?
                    .to_rfc3339_opts(SecondsFormat::Micros, true)
            }
        };
        Ok(PgTimestamptz(text))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
}

/// A `date` as `YYYY-MM-DD` (`infinity`/`-infinity` by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgDate(pub(crate) String);

impl<'a> FromSql<'a> for PgDate {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let bytes: [u8; 4] = raw
            .try_into()
            .map_err(|_| "date value has the wrong length")?;
        let days = i32::from_be_bytes(bytes);
        let text = match days {
            i32::MAX => "infinity".to_owned(),
            i32::MIN => "-infinity".to_owned(),
            _ => {
                let epoch =
                    NaiveDate::from_ymd_opt(2000, 1, 1).expect("invariant: 2000-01-01 exists");
                epoch
                    .checked_add_signed(chrono::Duration::days(i64::from(days)))
                    .ok_or("date value out of range")?
                    .format("%Y-%m-%d")
                    .to_string()
            }
        };
        Ok(PgDate(text))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits_weight_sign_dscale: [u16; 4], digits: &[u16]) -> Vec<u8> {
        let mut raw = Vec::new();
        for field in ndigits_weight_sign_dscale {
            raw.extend_from_slice(&field.to_be_bytes());
        }
        for digit in digits {
            raw.extend_from_slice(&digit.to_be_bytes());
        }
        raw
    }

    #[test]
    fn numeric_decodes_integer_fraction_and_sign() {
        // 12.50 = 12 · 10000^0 + 5000 · 10000^-1, dscale 2
        assert_eq!(
            decode_numeric(&numeric([2, 0, 0, 2], &[12, 5000])).unwrap(),
            "12.50"
        );
        // -123456789.0001 = 1·10000^2 + 2345·10000 + 6789 + 1·10000^-1
        assert_eq!(
            decode_numeric(&numeric([4, 2, 0x4000, 4], &[1, 2345, 6789, 1])).unwrap(),
            "-123456789.0001"
        );
        // 0.000001: weight -2 (first digit is 10000^-2 = 0.00000001 scale group), dscale 6
        assert_eq!(
            decode_numeric(&numeric([1, (-2i16) as u16, 0, 6], &[100])).unwrap(),
            "0.000001"
        );
        // 10000 stored as one digit of weight 1 with trailing zero groups omitted
        assert_eq!(
            decode_numeric(&numeric([1, 1, 0, 0], &[1])).unwrap(),
            "10000"
        );
        // zero with scale
        assert_eq!(
            decode_numeric(&numeric([0, 0, 0, 3], &[])).unwrap(),
            "0.000"
        );
        assert_eq!(decode_numeric(&numeric([0, 0, 0, 0], &[])).unwrap(), "0");
    }

    #[test]
    fn numeric_special_values_keep_their_names() {
        assert_eq!(
            decode_numeric(&numeric([0, 0, 0xC000, 0], &[])).unwrap(),
            "NaN"
        );
        assert_eq!(
            decode_numeric(&numeric([0, 0, 0xD000, 0], &[])).unwrap(),
            "Infinity"
        );
        assert_eq!(
            decode_numeric(&numeric([0, 0, 0xF000, 0], &[])).unwrap(),
            "-Infinity"
        );
    }

    #[test]
    fn numeric_rejects_malformed_input() {
        assert!(decode_numeric(&[0, 1]).is_err());
        assert!(decode_numeric(&numeric([2, 0, 0, 0], &[1])).is_err());
        assert!(decode_numeric(&numeric([1, 0, 0, 0], &[10000])).is_err());
        assert!(decode_numeric(&numeric([1, 0, 0x1234, 0], &[1])).is_err());
    }

    #[test]
    fn timestamptz_is_rfc3339_utc_with_micros() {
        let raw = 1_234_567i64.to_be_bytes();
        let value = PgTimestamptz::from_sql(&Type::TIMESTAMPTZ, &raw).unwrap();
        assert_eq!(value.0, "2000-01-01T00:00:01.234567Z");
        let infinite =
            PgTimestamptz::from_sql(&Type::TIMESTAMPTZ, &i64::MAX.to_be_bytes()).unwrap();
        assert_eq!(infinite.0, "infinity");
    }

    #[test]
    fn floats_without_json_numbers_become_strings() {
        assert_eq!(float(1.5), Value::from(1.5));
        assert_eq!(float(f64::NAN), Value::from("NaN"));
        assert_eq!(float(f64::INFINITY), Value::from("Infinity"));
        assert_eq!(float(f64::NEG_INFINITY), Value::from("-Infinity"));
    }
}
