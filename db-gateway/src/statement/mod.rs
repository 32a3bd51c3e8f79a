//! A registered statement, the layer below both the registry ([`crate::ops`]) and the code that
//! runs statements ([`crate::db`], [`crate::pipeline`]): what an operation is ([`OpDef`]), how its
//! JSON parameters bind ([`params`]) and how its result columns become JSON ([`encode`]).
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

/// How a JSON parameter is checked and bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// JSON string, bound as `text`.
    Text,
    /// JSON integer within `i32`, bound as `int4`.
    Int4,
    /// JSON integer or a string of decimal digits (64-bit values cannot cross JavaScript numbers
    /// safely), bound as `int8`.
    Int8,
    /// A plain decimal string (`"-12.50"`), bound as `text`; the SQL casts it with
    /// `$n::text::numeric` so no float ever touches the value.
    Numeric,
    /// JSON boolean, bound as `bool`.
    Bool,
    /// RFC 3339 string with an offset, bound as `timestamptz`.
    Timestamptz,
    /// Any JSON value, bound as `jsonb`.
    Jsonb,
    /// JSON array of strings (or nulls), bound as `text[]`.
    TextArray,
    /// A new password in plaintext (1 to 1024 bytes); the gateway binds its Argon2id PHC string
    /// (`$argon2id$…`) as `text` instead. The plaintext is never bound, stored or logged.
    NewPassword,
    /// A password to verify, in plaintext. Only procedures may declare it (they verify it in
    /// Rust); it is never bound to SQL, and the registry refuses it in an [`OpDef`].
    Password,
}

impl ParamType {
    /// The Postgres type the statement must infer for this parameter.
    pub(crate) fn pg_type(self) -> Type {
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

    /// Words used in `invalid_params` messages.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            ParamType::Text => "a string",
            ParamType::Int4 => "a 32-bit integer",
            ParamType::Int8 => "a 64-bit integer (number or digit string)",
            ParamType::Numeric => "a plain decimal string such as \"12.50\"",
            ParamType::Bool => "a boolean",
            ParamType::Timestamptz => "an RFC 3339 timestamp string with offset",
            ParamType::Jsonb => "a JSON value",
            ParamType::TextArray => "an array of strings",
            ParamType::NewPassword | ParamType::Password => "a password of 1 to 1024 bytes",
        }
    }
}

/// One declared parameter; its position in [`OpDef::params`] is its `$n` in the SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    pub name: &'static str,
    pub ty: ParamType,
    /// Required parameters must be present and non-null; optional ones bind SQL `NULL` when
    /// absent or `null`.
    pub required: bool,
}

impl Param {
    pub const fn required(name: &'static str, ty: ParamType) -> Self {
        Self {
            name,
            ty,
            required: true,
        }
    }

    pub const fn optional(name: &'static str, ty: ParamType) -> Self {
        Self {
            name,
            ty,
            required: false,
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

/// A named, parameterised statement. Its scope is its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpDef {
    /// `domain.action`, lower case; also the scope a key needs.
    pub name: &'static str,
    pub sql: &'static str,
    pub params: &'static [Param],
    pub mode: Mode,
    pub expect: Expect,
    /// Per-statement budget; use [`DEFAULT_STATEMENT_TIMEOUT_MS`] unless the operation is known
    /// to need more (or deserves less).
    pub statement_timeout_ms: u32,
}

impl OpDef {
    /// Whether a single call may run on a shared, pipelined connection (see `crate::pipeline`):
    /// a read needs no transaction as long as it keeps the connection's default statement
    /// timeout, so interleaving it with other clients' statements changes nothing.
    pub(crate) fn is_pipelinable(&self) -> bool {
        self.mode == Mode::Read && self.statement_timeout_ms == DEFAULT_STATEMENT_TIMEOUT_MS
    }
}
