//! The wire contract between the Worker and `db-gateway`.
//!
//! Workers never send SQL. They call *named operations* from the gateway's registry, one at a time
//! (`POST /v1/op`) or several in one transaction (`POST /v1/batch`). Both directions are JSON and
//! every request is signed (see `callmeback-signing`).
//!
//! # How values cross JSON without loss
//! | Postgres type            | JSON in params and results                                   |
//! |--------------------------|--------------------------------------------------------------|
//! | `bool`                   | `true` / `false`                                             |
//! | `int2`, `int4`           | number                                                       |
//! | `int8`                   | **string** of decimal digits (`"9007199254740993"`); params also accept a JSON integer |
//! | `numeric`                | **string** in plain decimal notation (`"12.50"`), never a float |
//! | `float4`, `float8`       | number                                                       |
//! | `text`, `varchar`        | string                                                       |
//! | `timestamptz`            | RFC 3339 string in UTC (`"2026-11-22T10:00:00.123456Z"`)     |
//! | `jsonb`, `json`          | the JSON value itself                                        |
//! | `uuid`                   | string                                                       |
//! | `text[]`                 | array of strings                                             |
//! | SQL `NULL`               | `null`                                                       |
//!
//! JavaScript numbers lose integers past 2^53, which is why 64-bit integers and decimals cross as
//! strings: nothing is ever rounded through a float.
//!
//! # Operations
//! Every operation's name and parameters are declared once, in [`ops`]; the gateway serves
//! exactly [`ops::ALL`] and the Worker builds its calls from the same declarations.

pub mod ops;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ops::{OpSpec, SpecMismatch};

/// Path of the single-operation endpoint.
pub const OP_PATH: &str = "/v1/op";
/// Path of the batch (one transaction) endpoint.
pub const BATCH_PATH: &str = "/v1/batch";
/// Header carrying the caller's request id, logged by both sides.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// One call of a named operation with named parameters.
///
/// Build calls with [`OpCall::of`] from the operation's [`OpSpec`]: then [`param`](Self::param)
/// refuses (in debug builds) a name the operation does not declare, and
/// [`conforms`](Self::conforms) checks the whole call. [`OpCall::new`] builds an unchecked call
/// (for operations outside [`ops::ALL`], such as tests' own).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpCall {
    /// Registry name, e.g. `system.ping`, `users.get_by_email`.
    pub op: String,
    /// Parameters by name; each is checked against the operation's declared type.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// The declaration the call was built from; never on the wire.
    #[serde(skip)]
    spec: Option<&'static OpSpec>,
}

impl OpCall {
    /// A call of `spec` with no parameters yet.
    pub fn of(spec: &'static OpSpec) -> Self {
        Self {
            op: spec.name.to_owned(),
            params: Map::new(),
            spec: Some(spec),
        }
    }

    /// An unchecked call of any name, with no parameters yet.
    pub fn new(op: impl Into<String>) -> Self {
        Self {
            op: op.into(),
            params: Map::new(),
            spec: None,
        }
    }

    /// The declaration the call was built from ([`OpCall::of`]).
    pub fn spec(&self) -> Option<&'static OpSpec> {
        self.spec
    }

    /// Adds one parameter (builder style). For a call built with [`OpCall::of`], a name the
    /// operation does not declare is a bug: debug builds panic on it.
    #[must_use]
    pub fn param(mut self, name: &str, value: impl Into<Value>) -> Self {
        if let Some(spec) = self.spec {
            debug_assert!(
                spec.declares(name),
                "operation `{}` declares no parameter `{name}`",
                spec.name
            );
        }
        self.params.insert(name.to_owned(), value.into());
        self
    }

    /// Adds several parameters, each as [`param`](Self::param) does.
    #[must_use]
    pub fn with_params(self, params: Map<String, Value>) -> Self {
        params
            .into_iter()
            .fold(self, |call, (name, value)| call.param(&name, value))
    }

    /// Whether the call matches its spec: every parameter declared, every required one present
    /// and not `null`. Types are the gateway's to check.
    pub fn conforms(&self) -> Result<(), SpecMismatch> {
        let spec = self.spec.ok_or_else(|| SpecMismatch::NoSpec {
            op: self.op.clone(),
        })?;
        if let Some(name) = self.params.keys().find(|name| !spec.declares(name)) {
            return Err(SpecMismatch::Undeclared {
                op: spec.name,
                param: name.clone(),
            });
        }
        if let Some(missing) = spec
            .params
            .iter()
            .filter(|param| param.required)
            .find(|param| self.params.get(param.name).is_none_or(Value::is_null))
        {
            return Err(SpecMismatch::MissingRequired {
                op: spec.name,
                param: missing.name,
            });
        }
        Ok(())
    }
}

/// Two calls are equal when they name the same operation with the same parameters (how they
/// were built does not matter).
impl PartialEq for OpCall {
    fn eq(&self, other: &Self) -> bool {
        self.op == other.op && self.params == other.params
    }
}

/// Several operations run in order inside one transaction: all commit or none do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub ops: Vec<OpCall>,
}

/// The rows one operation returned (or affected, for statements without `RETURNING`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpResult {
    pub rows: Vec<Map<String, Value>>,
    /// Rows returned, or rows affected for a statement that returns none.
    pub row_count: u64,
}

impl OpResult {
    /// The first row, if any.
    pub fn first(&self) -> Option<&Map<String, Value>> {
        self.rows.first()
    }
}

/// Answer to a batch: one result per operation, in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResponse {
    pub results: Vec<OpResult>,
}

/// Every gateway error body: `{"error": {"code", "message", "op_index"?}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable code from [`codes`]; clients branch on this, never on `message`.
    pub code: String,
    /// Human-readable; never contains SQL text or parameter values.
    pub message: String,
    /// In a batch, the index of the operation that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_index: Option<usize>,
}

/// Stable error codes the gateway answers with, and their HTTP status.
pub mod codes {
    /// 400: body is not valid JSON of the expected shape.
    pub const BAD_REQUEST: &str = "bad_request";
    /// 404: no operation of that name in the registry.
    pub const UNKNOWN_OPERATION: &str = "unknown_operation";
    /// 400: a parameter is missing, extra, or of the wrong type.
    pub const INVALID_PARAMS: &str = "invalid_params";
    /// 409: a unique constraint was violated.
    pub const CONFLICT: &str = "conflict";
    /// 409: a foreign key points at a row that does not exist (or is still referenced).
    pub const FOREIGN_KEY_VIOLATION: &str = "foreign_key_violation";
    /// 422: a CHECK or NOT NULL constraint refused the values (e.g. a balance would go negative).
    pub const CONSTRAINT_VIOLATION: &str = "constraint_violation";
    /// 409: an operation declared "must affect a row" affected none (e.g. insufficient credits).
    pub const PRECONDITION_FAILED: &str = "precondition_failed";
    /// 409: serialization failure or deadlock; safe to retry.
    pub const RETRY: &str = "retry";
    /// 504: the operation exceeded its statement timeout.
    pub const TIMEOUT: &str = "timeout";
    /// 503: no pool connection within the wait budget (see `Retry-After`).
    pub const OVERLOADED: &str = "overloaded";
    /// 503: the database cannot be reached.
    pub const DATABASE_UNAVAILABLE: &str = "database_unavailable";
    /// 413: request body over the limit.
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// 403: the key is valid but its scopes do not include the operation.
    pub const FORBIDDEN: &str = "forbidden";
    /// 500: anything else; details are only in the gateway's log.
    pub const INTERNAL: &str = "internal";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_call_round_trips_and_rejects_unknown_fields() {
        let call = OpCall::new("users.get").param("id", "u1").param("n", 3);
        let json = serde_json::to_string(&call).unwrap();
        assert_eq!(serde_json::from_str::<OpCall>(&json).unwrap(), call);
        assert!(serde_json::from_str::<OpCall>(r#"{"op":"x","sql":"drop table"}"#).is_err());
    }

    #[test]
    fn calls_built_from_a_spec_are_checked_against_it() {
        use crate::ops::billing::CREDITS_DEDUCT;

        let call = OpCall::of(&CREDITS_DEDUCT)
            .param("user_id", "usr_1")
            .param("amount", 3);
        assert_eq!(
            call.conforms(),
            Err(SpecMismatch::MissingRequired {
                op: "credits.deduct",
                param: "transaction_id"
            })
        );
        let call = call
            .param("transaction_id", "txn_1")
            .param("call_id", None::<&str>);
        assert_eq!(call.conforms(), Ok(()));
        let json = serde_json::to_string(&call).unwrap();
        assert_eq!(serde_json::from_str::<OpCall>(&json).unwrap(), call);

        let mut extra = call.clone();
        extra.params.insert("bogus".to_owned(), Value::Null);
        assert!(matches!(
            extra.conforms(),
            Err(SpecMismatch::Undeclared { ref param, .. }) if param == "bogus"
        ));
        assert!(matches!(
            OpCall::new("credits.deduct").conforms(),
            Err(SpecMismatch::NoSpec { .. })
        ));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "declares no parameter `bogus`")]
    fn an_undeclared_parameter_is_refused_in_debug_builds() {
        let _ = OpCall::of(&crate::ops::system::PING).param("bogus", 1);
    }

    #[test]
    fn error_body_omits_absent_index() {
        let body = ErrorBody {
            error: ErrorDetail {
                code: codes::CONFLICT.to_owned(),
                message: "already exists".to_owned(),
                op_index: None,
            },
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"error": {"code": "conflict", "message": "already exists"}})
        );
    }
}
