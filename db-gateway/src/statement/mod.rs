//! A registered statement, the layer below both the registry ([`crate::ops`]) and the code that
//! runs statements ([`crate::db`], [`crate::pipeline`]): what an operation is ([`OpDef`]), how its
//! JSON parameters bind (`params`) and how its result columns become JSON (`encode`).
//!
//! Nothing here runs SQL or knows the registry, so `db` can depend on it without depending on
//! `ops`, and `ops` (whose procedures run statements through `db`) sits above both.

pub(crate) mod encode;
pub(crate) mod params;

use tokio_postgres::types::Type;

/// Statement timeout every pooled connection starts with (set as a startup parameter, so it
/// costs no round trip). Operations declaring a different value pay for a transaction with
/// `SET LOCAL statement_timeout`.
pub const DEFAULT_STATEMENT_TIMEOUT_MS: u32 = 5_000;

pub use callmeback_gateway_api::ops::{OpSpec, ParamSpec, ParamType};

/// The Postgres side of a [`ParamType`], which the shared contract crate does not know about.
pub trait PgParamType {
    /// The Postgres type the statement must infer for this parameter.
    fn pg_type(self) -> Type;
}

impl PgParamType for ParamType {
    fn pg_type(self) -> Type {
        match self {
            ParamType::Text | ParamType::Numeric | ParamType::NewPassword | ParamType::Password => {
                Type::TEXT
            }
            ParamType::Int4 => Type::INT4,
            ParamType::Int8 => Type::INT8,
            ParamType::Bool => Type::BOOL,
            ParamType::Timestamptz => Type::TIMESTAMPTZ,
            ParamType::Jsonb => Type::JSONB,
            ParamType::TextArray => Type::TEXT_ARRAY,
        }
    }
}

/// Whether an operation changes data. Batches made only of reads run `READ ONLY`, so a
/// mislabelled write fails loudly instead of slipping through a reporting key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Read,
    Write,
}

/// What the operation promises about its row count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Zero or more rows are all fine.
    Any,
    /// Zero rows means a business precondition failed (`precondition_failed`, HTTP 409) with
    /// this message, e.g. "insufficient credits". Write such SQL so that "no row returned" also
    /// means "nothing changed" (`UPDATE … WHERE balance >= $2 RETURNING …`).
    One { message: &'static str },
}

/// An operation of the contract ([`OpSpec`]: its name and parameters, declared in
/// `callmeback_gateway_api::ops`) with the SQL that implements it. Its scope is its name; each
/// parameter's position in the spec is its `$n` in the SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpDef {
    pub spec: &'static OpSpec,
    pub sql: &'static str,
    pub mode: Mode,
    pub expect: Expect,
    /// Per-statement budget; use [`DEFAULT_STATEMENT_TIMEOUT_MS`] unless the operation is known
    /// to need more (or deserves less).
    pub statement_timeout_ms: u32,
}

impl OpDef {
    /// `domain.action`, lower case; also the scope a key needs.
    pub const fn name(&self) -> &'static str {
        self.spec.name
    }

    /// The parameters, in `$n` order.
    pub const fn params(&self) -> &'static [ParamSpec] {
        self.spec.params
    }

    /// Whether a single call may run on a shared, pipelined connection (see `crate::pipeline`):
    /// a read needs no transaction as long as it keeps the connection's default statement
    /// timeout, so interleaving it with other clients' statements changes nothing.
    pub(crate) fn is_pipelinable(&self) -> bool {
        self.mode == Mode::Read && self.statement_timeout_ms == DEFAULT_STATEMENT_TIMEOUT_MS
    }
}
