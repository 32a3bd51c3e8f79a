//! Keyset pagination for lists that grow at the front (ledgers, call histories).
//!
//! A page is asked for with `?limit=&cursor=`; the answer carries `next_cursor` when there is
//! more. The cursor is opaque to clients: base64url of `created_at|id` of the last row of the
//! previous page, decoded and fully checked here so nothing the gateway would refuse reaches it.
//! The gateway operation gets one row more than the page, whose presence says whether there is a
//! next page.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use callmeback_domain::{FieldErrors, ValidationError};
use callmeback_gateway_api::{OpCall, OpResult};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::rows::text;

/// Page size when `limit` is absent.
const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page a client may ask for.
const MAX_PAGE_SIZE: u32 = 100;

/// `?limit=&cursor=` of a list route.
#[derive(Debug, PartialEq, Eq)]
pub struct PageQuery {
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

impl PageQuery {
    /// Reads `limit` and `cursor`; other query parameters are ignored (cache busters and the
    /// like are common in frontends).
    pub fn parse<'a>(
        pairs: impl Iterator<Item = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>,
    ) -> Result<Self, ApiError> {
        let mut query = PageQuery {
            limit: DEFAULT_PAGE_SIZE,
            cursor: None,
        };
        for (key, value) in pairs {
            match key.as_ref() {
                "limit" => {
                    query.limit = value
                        .parse::<u32>()
                        .ok()
                        .filter(|limit| (1..=MAX_PAGE_SIZE).contains(limit))
                        .ok_or_else(|| {
                            let mut errors = FieldErrors::new();
                            errors.add(
                                "limit",
                                ValidationError::OutOfRange {
                                    min: 1,
                                    max: i64::from(MAX_PAGE_SIZE),
                                },
                            );
                            ApiError::validation_failed(errors)
                        })?;
                }
                "cursor" => query.cursor = Some(Cursor::decode(&value)?),
                _ => {}
            }
        }
        Ok(query)
    }

    /// Adds `limit` (one more than the page) and the cursor to a list operation that takes
    /// `limit`, `before_created_at` and `before_id`.
    pub fn apply(&self, op: OpCall) -> OpCall {
        let op = op.param("limit", self.limit + 1);
        match &self.cursor {
            Some(cursor) => op
                .param("before_created_at", cursor.created_at.as_str())
                .param("before_id", cursor.id.as_str()),
            None => op,
        }
    }
}

/// Where the previous page ended: the `(created_at, id)` of its last row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Exactly as the gateway encodes timestamps: `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    pub created_at: String,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}|{}", self.created_at, self.id))
    }

    /// Decodes and fully checks a cursor, so that nothing the gateway would refuse reaches it.
    pub fn decode(text: &str) -> Result<Cursor, ApiError> {
        let invalid = || ApiError::bad_request("invalid_cursor", "the cursor is not valid");
        if text.len() > 512 {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
        let decoded = String::from_utf8(bytes).map_err(|_| invalid())?;
        let (created_at, id) = decoded.split_once('|').ok_or_else(invalid)?;
        let id_ok = (1..=255).contains(&id.len()) && !id.chars().any(char::is_control);
        if !is_gateway_timestamp(created_at) || !id_ok {
            return Err(invalid());
        }
        Ok(Cursor {
            created_at: created_at.to_owned(),
            id: id.to_owned(),
        })
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` with a real calendar date: the one shape the gateway emits for
/// `timestamptz`, and one it will parse back.
fn is_gateway_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() != 27 {
        return false;
    }
    let shape_ok = bytes.iter().enumerate().all(|(index, &byte)| match index {
        4 | 7 => byte == b'-',
        10 => byte == b'T',
        13 | 16 => byte == b':',
        19 => byte == b'.',
        26 => byte == b'Z',
        _ => byte.is_ascii_digit(),
    });
    if !shape_ok {
        return false;
    }
    let number = |range: std::ops::Range<usize>| -> u32 {
        text[range]
            .parse()
            .expect("invariant: the shape check admitted only digits here")
    };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    let (hour, minute, second) = (number(11..13), number(14..16), number(17..19));
    let year = i32::try_from(year).expect("invariant: four digits fit in i32");
    chrono::NaiveDate::from_ymd_opt(year, month, day).is_some()
        && hour < 24
        && minute < 60
        && second < 60
}

/// One page of rows (the operation returned one row more than `limit` if there is more): the
/// rows as the API shows them, and the cursor of the next page.
pub fn page(
    result: OpResult,
    limit: u32,
    show: impl Fn(&Map<String, Value>) -> Value,
) -> Result<(Vec<Value>, Option<String>), ApiError> {
    let page_size = usize::try_from(limit).unwrap_or(usize::MAX);
    let has_more = result.rows.len() > page_size;
    let rows = &result.rows[..result.rows.len().min(page_size)];
    let next_cursor = match rows.last() {
        Some(last) if has_more => Some(
            Cursor {
                created_at: text(last, "created_at")?.to_owned(),
                id: text(last, "id")?.to_owned(),
            }
            .encode(),
        ),
        _ => None,
    };
    Ok((rows.iter().map(show).collect(), next_cursor))
}

/// Only the listed fields of a row (absent ones as `null`).
pub fn public_fields(row: &Map<String, Value>, fields: &[&str]) -> Value {
    Value::Object(
        fields
            .iter()
            .map(|field| {
                (
                    (*field).to_owned(),
                    row.get(*field).cloned().unwrap_or(Value::Null),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Result<PageQuery, ApiError> {
        PageQuery::parse(pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())))
    }

    #[test]
    fn limit_defaults_to_20_and_must_be_1_to_100() {
        assert_eq!(query(&[]).expect("no query").limit, 20);
        assert_eq!(
            query(&[("limit", "100"), ("x", "y")]).expect("max").limit,
            100
        );
        for bad in ["0", "101", "-1", "ten", ""] {
            let error = query(&[("limit", bad)]).expect_err(bad);
            assert_eq!(error.code, "validation_failed");
            assert_eq!(
                error.fields.expect("fields")["limit"]["code"],
                "out_of_range"
            );
        }
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = Cursor {
            created_at: "2026-11-22T10:00:00.123456Z".to_owned(),
            id: "txn_abc".to_owned(),
        };
        let encoded = cursor.encode();
        assert!(
            encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(
            query(&[("cursor", &encoded)]).expect("valid").cursor,
            Some(cursor)
        );

        let encode = |raw: &str| URL_SAFE_NO_PAD.encode(raw);
        for bad in [
            "!!!".to_owned(),
            "".to_owned(),
            encode("no separator"),
            encode("2026-11-22T10:00:00.123456Z|"),
            encode("2026-11-22 10:00:00|txn_1"),
            encode("2026-02-30T10:00:00.000000Z|txn_1"),
            encode("2026-11-22T24:00:00.000000Z|txn_1"),
            encode("2026-11-22T10:00:00.000000+01:00|txn_1"),
            encode("2026-11-22T10:00:00.000000Z|txn\n1"),
            "A".repeat(600),
        ] {
            let error = query(&[("cursor", &bad)]).expect_err(&bad);
            assert_eq!(error.code, "invalid_cursor", "{bad}");
            assert_eq!(error.status, 400);
        }
        assert!(is_gateway_timestamp("2024-02-29T23:59:59.999999Z"));
        assert!(!is_gateway_timestamp("2023-02-29T00:00:00.000000Z"));
        assert!(!is_gateway_timestamp("1900-02-29T00:00:00.000000Z"));
        assert!(is_gateway_timestamp("2000-02-29T00:00:00.000000Z"));
    }
}
