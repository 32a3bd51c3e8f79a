//! The operation registry: the only SQL the gateway will ever run.
//!
//! Clients never send SQL. They name an operation (`users.get_by_email`) and pass named
//! parameters; the gateway looks the name up here, checks every parameter against the declared
//! type, and binds it positionally to a fixed statement. Splicing a value into SQL text is
//! impossible by construction: an [`OpDef`] holds `&'static str` SQL and nothing else.
//!
//! # Adding an operation
//! Declare its name and parameters once, in `callmeback_gateway_api::ops` (the contract the
//! Worker builds its calls from, listed in `ops::ALL`), then add its SQL here as one static entry
//! of a domain module's `OPS` slice (e.g. `ops/billing.rs`):
//!
//! ```
//! use callmeback_gateway_api::ops::billing::CREDITS_DEDUCT;
//! use db_gateway::ops::{DEFAULT_STATEMENT_TIMEOUT_MS, Expect, Mode, OpDef};
//!
//! pub static OPS: &[OpDef] = &[OpDef {
//!     spec: &CREDITS_DEDUCT,
//!     sql: "UPDATE user_credits SET available_credits = available_credits - $2 \
//!           WHERE user_id = $1 AND available_credits >= $2 RETURNING available_credits",
//!     mode: Mode::Write,
//!     expect: Expect::One { message: "insufficient credits" },
//!     statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
//! }];
//! ```
//!
//! A new domain module is one `mod` line below plus one `.with(…)` line in
//! [`Registry::production`]; a test holds the production registry to `ops::ALL`, both ways. At
//! startup every operation is prepared against the migrated schema ([`Registry::verify`]), so a
//! typo in SQL, a declared parameter type that disagrees with the statement, or a result column
//! the wire format cannot carry stops the gateway before it serves.
//!
//! The operation's name is also its scope: a key with scope `credits.*` may call it.
//!
//! # Passwords and procedures
//! Password hashing is CPU- and memory-hard by design, so it runs here (natively, on a bounded
//! pool of blocking threads; see [`password`]) and never in the Worker. Two additions keep the
//! "no SQL on the wire" rule while doing so:
//! - a [`ParamType::NewPassword`] parameter arrives as plaintext and is replaced by its Argon2id
//!   hash before the statement runs, so an operation such as `accounts.create_user` stores a hash
//!   without the plaintext ever being bound;
//! - a [`ProcedureDef`] is an operation implemented in Rust around fixed, registered statements,
//!   for work SQL cannot do, such as `accounts.login` (load the hash, verify it, upgrade a legacy
//!   bcrypt hash). Procedures are called by name like operations but run on their own, never in a
//!   batch, and their statements are prepared at startup like every other operation's. Those
//!   statements are not operations of the contract (nobody may call them, some return a password
//!   hash), so their specs are private to the procedure's module.

pub mod accounts;
pub mod auth;
pub mod bench;
pub mod billing;
pub mod calls;
pub mod password;
pub mod personas;
pub mod schedules;
pub mod system;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use tokio_postgres::types::Type;

pub use crate::statement::{
    DEFAULT_STATEMENT_TIMEOUT_MS, Expect, Mode, OpDef, OpSpec, ParamSpec, ParamType,
};
use crate::statement::{PgParamType as _, encode, params};

/// What a procedure's future resolves to: its result, encoded like any operation's.
pub(crate) type ProcedureFuture<'a> =
    Pin<Box<dyn Future<Output = Result<crate::db::OpOutput, crate::error::ApiError>> + Send + 'a>>;

/// The body of a procedure: the pool (it checks connections out itself, so it can give one back
/// while it hashes) and its bound parameters in declaration order.
pub(crate) type ProcedureFn =
    for<'a> fn(&'a deadpool_postgres::Pool, &'a [params::BoundParam<'a>]) -> ProcedureFuture<'a>;

/// An operation of the contract implemented in Rust around fixed statements. Its scope is its
/// name, like an [`OpDef`]'s. It runs alone (a batch refuses it), because it may commit work of
/// its own (an audit row for a failed login) and still answer with an error.
#[derive(Clone, Copy)]
pub(crate) struct ProcedureDef {
    pub(crate) spec: &'static OpSpec,
    /// Every statement `run` executes. They are prepared and checked at startup like registered
    /// operations, but are not callable by name (they may return what must not leave the
    /// gateway, such as a password hash).
    pub(crate) statements: &'static [OpDef],
    pub(crate) run: ProcedureFn,
}

impl ProcedureDef {
    pub(crate) const fn name(&self) -> &'static str {
        self.spec.name
    }

    pub(crate) const fn params(&self) -> &'static [ParamSpec] {
        self.spec.params
    }
}

impl fmt::Debug for ProcedureDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcedureDef")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Why a registry could not be built or does not match the database.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("operation `{0}` is registered twice")]
    Duplicate(&'static str),
    #[error("operation name `{0}` must look like `domain.action` (lower case, digits, `_`)")]
    BadName(&'static str),
    #[error("operation `{op}` declares parameter `{param}` twice")]
    DuplicateParam {
        op: &'static str,
        param: &'static str,
    },
    #[error("operation `{op}` does not prepare against the database: {reason}")]
    Prepare { op: &'static str, reason: String },
    #[error("operation `{op}` declares {declared} parameters but its SQL uses {actual}")]
    ParamCount {
        op: &'static str,
        declared: usize,
        actual: usize,
    },
    #[error(
        "operation `{op}` parameter `{param}` is declared {declared:?} (binds as {expected}) but the SQL infers {actual}"
    )]
    ParamType {
        op: &'static str,
        param: &'static str,
        declared: ParamType,
        expected: Type,
        actual: Type,
    },
    #[error(
        "operation `{op}` returns column `{column}` of type {ty}, which the wire format cannot carry (cast it)"
    )]
    ColumnType {
        op: &'static str,
        column: String,
        ty: Type,
    },
    #[error("operation `{op}` returns column `{column}` twice")]
    DuplicateColumn { op: &'static str, column: String },
    #[error(
        "operation `{op}` declares parameter `{param}` as a plaintext Password, which only procedures may read"
    )]
    PlaintextParam {
        op: &'static str,
        param: &'static str,
    },
}

/// All operations the gateway serves, by name.
#[derive(Clone, Default)]
pub struct Registry {
    ops: HashMap<&'static str, RegisteredOp>,
    /// Every operation at its [`RegisteredOp::index`], so per-operation state (such as the
    /// statements prepared on each pipelined connection) lives in plain vectors.
    by_index: Vec<&'static OpDef>,
    procedures: HashMap<&'static str, &'static ProcedureDef>,
}

/// An operation together with its dense position in the registry (`0..registry.ops_len()`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RegisteredOp {
    pub(crate) def: &'static OpDef,
    pub(crate) index: usize,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.ops.keys().collect();
        names.sort();
        let mut procedures: Vec<_> = self.procedures.keys().collect();
        procedures.sort();
        f.debug_struct("Registry")
            .field("ops", &names)
            .field("procedures", &procedures)
            .finish()
    }
}

impl Registry {
    /// An empty registry; add groups with [`Registry::with`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything production serves. `bench_ops` adds the benchmark-only statements
    /// (`GATEWAY_BENCH_OPS=1`).
    pub fn production(bench_ops: bool) -> Result<Self, RegistryError> {
        let registry = Self::new()
            .with(system::OPS)?
            .with(auth::OPS)?
            .with(accounts::OPS)?
            .with_procedures(accounts::PROCEDURES)?
            .with(personas::OPS)?
            .with(billing::OPS)?
            .with(calls::OPS)?
            .with(schedules::OPS)?;
        if bench_ops {
            registry.with(bench::OPS)
        } else {
            Ok(registry)
        }
    }

    /// Adds a group of operations (one domain module's `OPS`).
    pub fn with(mut self, ops: &'static [OpDef]) -> Result<Self, RegistryError> {
        for def in ops {
            validate_definition(def)?;
            let registered = RegisteredOp {
                def,
                index: self.by_index.len(),
            };
            if self.procedures.contains_key(def.name())
                || self.ops.insert(def.name(), registered).is_some()
            {
                return Err(RegistryError::Duplicate(def.name()));
            }
            self.by_index.push(def);
        }
        Ok(self)
    }

    /// Adds a group of procedures. Their statements are checked like operations but not
    /// registered under their names.
    pub(crate) fn with_procedures(
        mut self,
        procedures: &'static [ProcedureDef],
    ) -> Result<Self, RegistryError> {
        for procedure in procedures {
            if !is_valid_op_name(procedure.name()) {
                return Err(RegistryError::BadName(procedure.name()));
            }
            check_unique_params(procedure.name(), procedure.params())?;
            for statement in procedure.statements {
                validate_definition(statement)?;
            }
            if self.ops.contains_key(procedure.name())
                || self
                    .procedures
                    .insert(procedure.name(), procedure)
                    .is_some()
            {
                return Err(RegistryError::Duplicate(procedure.name()));
            }
        }
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Option<&'static OpDef> {
        self.ops.get(name).map(|registered| registered.def)
    }

    /// Like [`Registry::get`], with the operation's index.
    pub(crate) fn resolve(&self, name: &str) -> Option<RegisteredOp> {
        self.ops.get(name).copied()
    }

    /// Every operation, at its index.
    pub(crate) fn ops_by_index(&self) -> &[&'static OpDef] {
        &self.by_index
    }

    pub(crate) fn procedure(&self, name: &str) -> Option<&'static ProcedureDef> {
        self.procedures.get(name).copied()
    }

    /// Whether `name` is a procedure (callable alone, not in a batch).
    pub fn is_procedure(&self, name: &str) -> bool {
        self.procedures.contains_key(name)
    }

    /// Callable names: operations plus procedures.
    pub fn len(&self) -> usize {
        self.ops.len() + self.procedures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.procedures.is_empty()
    }

    /// Operations in name order.
    pub fn iter(&self) -> impl Iterator<Item = &'static OpDef> + '_ {
        let mut ops = self.by_index.clone();
        ops.sort_by_key(|op| op.name());
        ops.into_iter()
    }

    /// Prepares every operation (and every procedure's statement) accepted by `include` and
    /// checks that the declared parameter types match what Postgres infers and that every result
    /// column is encodable. Run once at startup against the migrated schema; the statements are
    /// not cached (pooled connections prepare their own on first use).
    pub async fn verify(
        &self,
        client: &tokio_postgres::Client,
        include: impl Fn(&OpDef) -> bool,
    ) -> Result<(), RegistryError> {
        let mut procedures: Vec<_> = self.procedures.values().copied().collect();
        procedures.sort_by_key(|procedure| procedure.name());
        let statements = procedures
            .into_iter()
            .flat_map(|procedure| procedure.statements.iter());
        for op in self.iter().chain(statements).filter(|op| include(op)) {
            let statement =
                client
                    .prepare(op.sql)
                    .await
                    .map_err(|error| RegistryError::Prepare {
                        op: op.name(),
                        reason: describe_prepare_error(&error),
                    })?;
            check_statement_shape(op, &statement)?;
        }
        Ok(())
    }
}

fn describe_prepare_error(error: &tokio_postgres::Error) -> String {
    // Our own SQL, so the server's message is safe to show (it never contains request values).
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

fn check_statement_shape(
    op: &'static OpDef,
    statement: &tokio_postgres::Statement,
) -> Result<(), RegistryError> {
    if statement.params().len() != op.params().len() {
        return Err(RegistryError::ParamCount {
            op: op.name(),
            declared: op.params().len(),
            actual: statement.params().len(),
        });
    }
    for (param, actual) in op.params().iter().zip(statement.params()) {
        let expected = param.ty.pg_type();
        if *actual != expected {
            return Err(RegistryError::ParamType {
                op: op.name(),
                param: param.name,
                declared: param.ty,
                expected,
                actual: actual.clone(),
            });
        }
    }
    let columns = statement.columns();
    for (index, column) in columns.iter().enumerate() {
        if encode::ColumnCodec::for_type(column.type_()).is_none() {
            return Err(RegistryError::ColumnType {
                op: op.name(),
                column: column.name().to_owned(),
                ty: column.type_().clone(),
            });
        }
        if columns[..index]
            .iter()
            .any(|earlier| earlier.name() == column.name())
        {
            return Err(RegistryError::DuplicateColumn {
                op: op.name(),
                column: column.name().to_owned(),
            });
        }
    }
    Ok(())
}

fn validate_definition(op: &'static OpDef) -> Result<(), RegistryError> {
    if !is_valid_op_name(op.name()) {
        return Err(RegistryError::BadName(op.name()));
    }
    check_unique_params(op.name(), op.params())?;
    if let Some(param) = op.params().iter().find(|p| p.ty == ParamType::Password) {
        return Err(RegistryError::PlaintextParam {
            op: op.name(),
            param: param.name,
        });
    }
    Ok(())
}

fn check_unique_params(
    op: &'static str,
    params: &'static [ParamSpec],
) -> Result<(), RegistryError> {
    for (index, param) in params.iter().enumerate() {
        if params[..index]
            .iter()
            .any(|earlier| earlier.name == param.name)
        {
            return Err(RegistryError::DuplicateParam {
                op,
                param: param.name,
            });
        }
    }
    Ok(())
}

/// `domain.action` with at least two non-empty dot-separated segments of `[a-z0-9_]`.
pub(crate) fn is_valid_op_name(name: &str) -> bool {
    let mut segments = 0;
    for segment in name.split('.') {
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return false;
        }
        segments += 1;
    }
    segments >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    static GOOD: &[OpDef] = &[OpDef {
        spec: &OpSpec::new("things.get", &[ParamSpec::required("id", ParamType::Text)]),
        sql: "SELECT $1::text AS id",
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    }];

    static BAD_NAME: &[OpDef] = &[OpDef {
        spec: &OpSpec::new("Things", GOOD[0].spec.params),
        ..GOOD[0]
    }];

    static DUP_PARAM: &[OpDef] = &[OpDef {
        spec: &OpSpec::new(
            "things.dup",
            &[
                ParamSpec::required("id", ParamType::Text),
                ParamSpec::optional("id", ParamType::Int4),
            ],
        ),
        ..GOOD[0]
    }];

    static READS_PLAINTEXT: &[OpDef] = &[OpDef {
        spec: &OpSpec::new(
            "things.check_password",
            &[ParamSpec::required("password", ParamType::Password)],
        ),
        ..GOOD[0]
    }];

    fn no_op<'a>(
        _: &'a deadpool_postgres::Pool,
        _: &'a [params::BoundParam<'a>],
    ) -> ProcedureFuture<'a> {
        Box::pin(async { Err(crate::error::ApiError::NotFound) })
    }

    static CLASHING_PROCEDURE: &[ProcedureDef] = &[ProcedureDef {
        spec: &OpSpec::new("things.get", &[]),
        statements: &[],
        run: no_op,
    }];

    static PROCEDURE_WITH_BAD_STATEMENT: &[ProcedureDef] = &[ProcedureDef {
        spec: &OpSpec::new(
            "things.verify",
            &[ParamSpec::required("password", ParamType::Password)],
        ),
        statements: &[OpDef {
            spec: &OpSpec::new(
                "things.verify_load",
                &[ParamSpec::required("password", ParamType::Password)],
            ),
            ..GOOD[0]
        }],
        run: no_op,
    }];

    #[test]
    fn plaintext_passwords_are_for_procedures_only() {
        assert!(matches!(
            Registry::new().with(READS_PLAINTEXT),
            Err(RegistryError::PlaintextParam {
                param: "password",
                ..
            })
        ));
        assert!(matches!(
            Registry::new().with_procedures(PROCEDURE_WITH_BAD_STATEMENT),
            Err(RegistryError::PlaintextParam {
                op: "things.verify_load",
                ..
            })
        ));
    }

    #[test]
    fn procedures_and_operations_share_one_namespace() {
        let registry = Registry::new().with(GOOD).expect("valid group");
        assert!(matches!(
            registry.clone().with_procedures(CLASHING_PROCEDURE),
            Err(RegistryError::Duplicate("things.get"))
        ));
        let with_procedure = Registry::new()
            .with_procedures(CLASHING_PROCEDURE)
            .expect("valid procedure");
        assert!(with_procedure.is_procedure("things.get"));
        assert_eq!(with_procedure.len(), 1);
        assert!(matches!(
            with_procedure.with(GOOD),
            Err(RegistryError::Duplicate("things.get"))
        ));
    }

    #[test]
    fn op_names_need_a_domain_and_an_action() {
        assert!(is_valid_op_name("system.ping"));
        assert!(is_valid_op_name("credits.debit_v2"));
        assert!(!is_valid_op_name("ping"));
        assert!(!is_valid_op_name("system."));
        assert!(!is_valid_op_name(".ping"));
        assert!(!is_valid_op_name("System.Ping"));
        assert!(!is_valid_op_name("system.*"));
    }

    #[test]
    fn registry_refuses_duplicates_bad_names_and_repeated_params() {
        let registry = Registry::new().with(GOOD).expect("valid group");
        assert!(registry.get("things.get").is_some());
        assert!(matches!(
            registry.with(GOOD),
            Err(RegistryError::Duplicate("things.get"))
        ));
        assert!(matches!(
            Registry::new().with(BAD_NAME),
            Err(RegistryError::BadName("Things"))
        ));
        assert!(matches!(
            Registry::new().with(DUP_PARAM),
            Err(RegistryError::DuplicateParam { param: "id", .. })
        ));
    }

    #[test]
    fn production_registry_has_system_ops_and_bench_only_on_request() {
        use callmeback_gateway_api::ops::{bench, system};

        let plain = Registry::production(false).expect("production registry is valid");
        assert!(plain.get(system::PING.name).is_some());
        assert!(plain.get(system::SCHEMA_VERSION.name).is_some());
        assert!(plain.get(bench::ACCOUNT_BALANCE.name).is_none());
        let with_bench = Registry::production(true).expect("bench registry is valid");
        assert!(with_bench.get(bench::ACCOUNT_BALANCE.name).is_some());
    }

    /// The contract (`callmeback_gateway_api::ops::ALL`) and the registry name the same
    /// operations and procedures, with the same declarations: nothing served that the contract
    /// does not declare, nothing declared that is not served.
    #[test]
    fn the_production_registry_serves_exactly_the_contract() {
        use std::collections::BTreeMap;

        use callmeback_gateway_api::ops::ALL;

        let registry = Registry::production(false).expect("production registry is valid");
        let mut served: BTreeMap<&str, &OpSpec> =
            registry.iter().map(|op| (op.name(), op.spec)).collect();
        for name in registry.procedures.keys() {
            let procedure = registry.procedure(name).expect("listed procedure");
            served.insert(procedure.name(), procedure.spec);
        }
        let declared: BTreeMap<&str, &OpSpec> = ALL.iter().map(|spec| (spec.name, *spec)).collect();
        assert_eq!(
            declared.len(),
            ALL.len(),
            "ops::ALL names an operation twice"
        );

        let unserved: Vec<_> = declared
            .keys()
            .filter(|name| !served.contains_key(*name))
            .collect();
        let undeclared: Vec<_> = served
            .keys()
            .filter(|name| !declared.contains_key(*name))
            .collect();
        assert!(
            unserved.is_empty(),
            "declared in ops::ALL but not served: {unserved:?}"
        );
        assert!(
            undeclared.is_empty(),
            "served but not in ops::ALL: {undeclared:?}"
        );
        assert_eq!(served, declared);
    }
}
