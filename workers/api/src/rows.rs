//! Reading the rows a gateway operation answered with.
//!
//! Values arrive as the gateway encodes them (see `callmeback_gateway_api`): `int4` as a JSON
//! number, `int8` as a string of digits, `numeric` as a decimal string. A row without the column
//! or value an operation promises is a bug on one side of the contract, not the caller's fault:
//! it is logged with the column's name and answered 500 `internal`.

use callmeback_gateway_api::OpResult;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// One row: column name → value.
pub type Row = Map<String, Value>;

/// The first row of an operation that promises one.
pub fn first_row(result: &OpResult) -> Result<&Row, ApiError> {
    result.first().ok_or_else(missing_row)
}

/// Like [`first_row`], taking the row out of the result.
pub fn into_first_row(result: OpResult) -> Result<Row, ApiError> {
    result.rows.into_iter().next().ok_or_else(missing_row)
}

/// Every row as a JSON object, in order.
pub fn into_values(result: OpResult) -> Vec<Value> {
    result.rows.into_iter().map(Value::Object).collect()
}

/// An integer column: `int4` arrives as a number, `int8` as a digit string.
pub fn int(row: &Row, field: &str) -> Result<i64, ApiError> {
    optional_int(row, field)?.ok_or_else(|| bad_row(field))
}

/// Like [`int`], for a nullable column (absent or `null` is `None`).
pub fn optional_int(row: &Row, field: &str) -> Result<Option<i64>, ApiError> {
    match row.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => int8(value).map(Some).ok_or_else(|| bad_row(field)),
    }
}

/// A text column.
pub fn text<'a>(row: &'a Row, field: &str) -> Result<&'a str, ApiError> {
    row.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| bad_row(field))
}

/// A 64-bit integer as the gateway sends it: a digit string (`int8`), or a number (`int4`).
pub fn int8(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64(),
        Value::String(digits) => digits.parse().ok(),
        _ => None,
    }
}

/// A row from a JSON object, for tests.
#[cfg(test)]
pub(crate) fn row(value: Value) -> Row {
    match value {
        Value::Object(map) => map,
        _ => panic!("test rows are objects"),
    }
}

fn missing_row() -> ApiError {
    worker::console_error!("an operation that promises a row answered none");
    ApiError::internal()
}

/// A column that is missing or holds what the operation does not promise.
pub fn bad_row(field: &str) -> ApiError {
    worker::console_error!("gateway row has an unexpected `{field}`");
    ApiError::internal()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn integers_cross_as_numbers_or_digit_strings() {
        let Value::Object(row) = json!({"a": 3, "b": "9007199254740993", "c": null}) else {
            unreachable!()
        };
        assert_eq!(int(&row, "a"), Ok(3));
        assert_eq!(int(&row, "b"), Ok(9_007_199_254_740_993));
        assert_eq!(optional_int(&row, "c"), Ok(None));
        assert_eq!(optional_int(&row, "missing"), Ok(None));
        assert_eq!(int8(&json!("12.5")), None);
        assert_eq!(int8(&json!(1.5)), None);
        assert_eq!(int8(&json!(true)), None);
    }
}
