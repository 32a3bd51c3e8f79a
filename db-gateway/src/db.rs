//! Running registry operations on pooled connections.
//!
//! Cost model of a single operation with the default timeout: one pool checkout, a
//! prepared-statement cache hit (each pooled connection prepares a statement once), and one
//! Bind/Execute round trip. The default `statement_timeout` is a connection startup parameter,
//! so it costs nothing per request; only operations that override it, and batches, pay for a
//! transaction. Single reads usually skip the pool altogether and run pipelined on shared
//! connections (`crate::pipeline`, through [`PreparedRead`]); this module is their fallback.
//! Writes (single or batched) run in a transaction whose first statement claims the request's
//! nonce (`crate::replay`): `BEGIN`, then the claim, a savepoint and the first statement in
//! one round trip, then `COMMIT`.
//!
//! Connections are recycled with deadpool's `Fast` method (no health query per checkout): a
//! broken connection shows up as `is_closed()` and is dropped by the pool. A request abandoned
//! mid-transaction (client went away) drops its `Transaction`, which queues a `ROLLBACK` before
//! the connection can be reused.

use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde::ser::{SerializeMap as _, SerializeStruct as _};
use serde::{Serialize, Serializer};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row, Statement};

use crate::config::Config;
use crate::error::ApiError;
use crate::replay::{self, NonceClaim};
use crate::statement::encode::ColumnCodec;
use crate::statement::params::BoundParam;
use crate::statement::{DEFAULT_STATEMENT_TIMEOUT_MS, Expect, Mode, OpDef};

/// A transaction left open this long (a stuck client of ours) is ended by Postgres.
const IDLE_IN_TRANSACTION_TIMEOUT_MS: u32 = 30_000;
/// Connecting to a local Postgres takes milliseconds; longer means it is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `application_name` of pooled connections (unless `DATABASE_URL` sets one).
pub const POOL_APPLICATION_NAME: &str = "db-gateway";

/// `database` with the session defaults every gateway connection starts with: startup
/// parameters cost no round trip, so the hot path needs no `SET`. `extra_options` adds more
/// `-c name=value` settings; `application_name` applies unless the URL set one.
pub(crate) fn session_config(
    database: &tokio_postgres::Config,
    application_name: &str,
    extra_options: &str,
) -> tokio_postgres::Config {
    let mut database = database.clone();
    let mut options = database.get_options().unwrap_or_default().to_owned();
    options.push_str(&format!(
        " -c statement_timeout={DEFAULT_STATEMENT_TIMEOUT_MS} -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS} {extra_options}"
    ));
    database.options(options.trim());
    if database.get_application_name().is_none() {
        database.application_name(application_name);
    }
    if database.get_connect_timeout().is_none() {
        database.connect_timeout(CONNECT_TIMEOUT);
    }
    database
}

/// The connection pool, with the session defaults every connection starts with.
pub fn build_pool(config: &Config) -> Result<Pool, deadpool_postgres::BuildError> {
    let database = session_config(&config.database, POOL_APPLICATION_NAME, "");
    let manager = Manager::from_config(
        database,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size)
        // Load shedding: beyond this wait the request is answered 503 instead of queueing.
        .wait_timeout(Some(config.pool_wait))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .runtime(Runtime::Tokio1)
        .build()
}

/// A checked-out connection, or a load-shedding / unavailability error.
pub(crate) async fn checkout(pool: &Pool) -> Result<deadpool_postgres::Client, ApiError> {
    let started = Instant::now();
    pool.get()
        .await
        .map_err(|error| ApiError::from_pool(&error, started.elapsed()))
}

/// What one operation produced. Serialises exactly like `callmeback_gateway_api::OpResult`
/// (`{"rows":[{column: value}], "row_count": n}`) without building a map per row.
#[derive(Debug)]
pub(crate) struct OpOutput {
    statement: Option<Statement>,
    rows: Vec<Vec<Value>>,
    row_count: u64,
}

impl OpOutput {
    /// Rows returned, or rows affected by a statement without result columns.
    pub(crate) fn row_count(&self) -> u64 {
        self.row_count
    }

    /// Column `name` of row `row`, for procedures that act on what a statement returned.
    pub(crate) fn value(&self, row: usize, name: &str) -> Option<&Value> {
        let index = self
            .statement
            .as_ref()?
            .columns()
            .iter()
            .position(|column| column.name() == name)?;
        self.rows.get(row)?.get(index)
    }
}

impl Serialize for OpOutput {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut result = serializer.serialize_struct("OpResult", 2)?;
        result.serialize_field("rows", &RowsAsObjects(self))?;
        result.serialize_field("row_count", &self.row_count)?;
        result.end()
    }
}

struct RowsAsObjects<'a>(&'a OpOutput);

impl Serialize for RowsAsObjects<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let columns = self
            .0
            .statement
            .as_ref()
            .map(Statement::columns)
            .unwrap_or_default();
        serializer.collect_seq(
            self.0
                .rows
                .iter()
                .map(|values| RowObject { columns, values }),
        )
    }
}

struct RowObject<'a> {
    columns: &'a [tokio_postgres::Column],
    values: &'a [Value],
}

impl Serialize for RowObject<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = serializer.serialize_map(Some(self.values.len()))?;
        for (column, value) in self.columns.iter().zip(self.values) {
            object.serialize_entry(column.name(), value)?;
        }
        object.end()
    }
}

/// `{"results":[…]}`, like `callmeback_gateway_api::BatchResponse`.
#[derive(Debug, Serialize)]
pub(crate) struct BatchOutput {
    pub(crate) results: Vec<OpOutput>,
}

/// A pooled connection, an open transaction, or a shared pipelined connection. Pooled ones
/// prepare through deadpool's per-connection cache; shared ones hold their statements
/// themselves (see [`PreparedRead`]).
pub(crate) enum Conn<'c, 't> {
    Plain(&'c deadpool_postgres::Client),
    Tx(&'c deadpool_postgres::Transaction<'t>),
    Shared(&'c tokio_postgres::Client),
}

impl Conn<'_, '_> {
    async fn prepare_cached(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        match self {
            Conn::Plain(client) => client.prepare_cached(sql).await,
            Conn::Tx(transaction) => transaction.prepare_cached(sql).await,
            Conn::Shared(client) => client.prepare(sql).await,
        }
    }

    async fn query(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        match self {
            Conn::Plain(client) => client.query(statement, params).await,
            Conn::Tx(transaction) => transaction.query(statement, params).await,
            Conn::Shared(client) => client.query(statement, params).await,
        }
    }

    async fn execute(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        match self {
            Conn::Plain(client) => client.execute(statement, params).await,
            Conn::Tx(transaction) => transaction.execute(statement, params).await,
            Conn::Shared(client) => client.execute(statement, params).await,
        }
    }
}

/// A statement prepared on one connection, with the codecs of its result columns chosen once.
#[derive(Debug)]
pub(crate) struct PreparedRead {
    statement: Statement,
    codecs: Box<[ColumnCodec]>,
}

impl PreparedRead {
    /// Prepares `op` on `client` (one round trip).
    pub(crate) async fn prepare(
        client: &tokio_postgres::Client,
        op: &'static OpDef,
    ) -> Result<Self, ApiError> {
        let statement = Conn::Shared(client)
            .prepare_cached(op.sql)
            .await
            .map_err(|error| ApiError::from_postgres(&error, op.name()))?;
        let codecs = column_codecs(op, &statement)?;
        Ok(Self { statement, codecs })
    }

    /// Runs the statement on `client`, which must be the connection it was prepared on.
    pub(crate) async fn run(
        &self,
        client: &tokio_postgres::Client,
        op: &'static OpDef,
        params: &[BoundParam<'_>],
    ) -> Result<OpOutput, ApiError> {
        execute(
            &Conn::Shared(client),
            op,
            &self.statement,
            &self.codecs,
            params,
        )
        .await
    }
}

/// Runs one operation. Only a read with its own statement timeout (`SET LOCAL` needs a
/// transaction) and a write pay for a transaction; a write claims the request's nonce in it
/// (see `crate::replay`).
pub(crate) async fn run_single(
    pool: &Pool,
    op: &'static OpDef,
    params: &[BoundParam<'_>],
    claim: NonceClaim<'_>,
) -> Result<OpOutput, ApiError> {
    let mut client = checkout(pool).await?;
    let writes = op.mode == Mode::Write;
    if !writes && op.statement_timeout_ms == DEFAULT_STATEMENT_TIMEOUT_MS {
        return run_op(&Conn::Plain(&client), op, params).await;
    }
    let transaction = client
        .build_transaction()
        .read_only(!writes)
        .start()
        .await
        .map_err(|error| ApiError::from_postgres(&error, op.name()))?;
    let work = async {
        if op.statement_timeout_ms != DEFAULT_STATEMENT_TIMEOUT_MS {
            set_local_timeout(&transaction, op).await?;
        }
        run_op(&Conn::Tx(&transaction), op, params).await
    };
    if writes {
        let result = replay::claim_then(&transaction, claim, work).await?;
        return finish_claimed(transaction, result, op.name()).await;
    }
    let output = work.await?;
    transaction
        .commit()
        .await
        .map_err(|error| ApiError::from_postgres(&error, op.name()))?;
    Ok(output)
}

/// Runs one operation on a connection a procedure checked out itself, outside any transaction
/// (a single statement is atomic on its own). Only statements with the default timeout may run
/// this way, since changing it would need a transaction.
pub(crate) async fn run_on_client(
    client: &deadpool_postgres::Client,
    op: &'static OpDef,
    params: &[BoundParam<'_>],
) -> Result<OpOutput, ApiError> {
    if op.statement_timeout_ms != DEFAULT_STATEMENT_TIMEOUT_MS {
        return Err(ApiError::Internal(format!(
            "procedure statement `{}` needs the default statement timeout",
            op.name()
        )));
    }
    run_op(&Conn::Plain(client), op, params).await
}

/// Runs every operation in order in one transaction; the first failure rolls everything back
/// and carries its index. A batch of reads only runs `READ ONLY`; any other batch claims the
/// request's nonce in its transaction (see `crate::replay`).
pub(crate) async fn run_batch(
    pool: &Pool,
    calls: &[(&'static OpDef, Vec<BoundParam<'_>>)],
    claim: NonceClaim<'_>,
) -> Result<BatchOutput, ApiError> {
    let mut client = checkout(pool).await?;
    let read_only = calls.iter().all(|(op, _)| op.mode == Mode::Read);
    let transaction = client
        .build_transaction()
        .read_only(read_only)
        .start()
        .await
        .map_err(|error| ApiError::from_postgres(&error, "batch"))?;
    let work = async {
        let mut results = Vec::with_capacity(calls.len());
        let mut timeout_ms = DEFAULT_STATEMENT_TIMEOUT_MS;
        for (index, (op, params)) in calls.iter().enumerate() {
            if op.statement_timeout_ms != timeout_ms {
                set_local_timeout(&transaction, op)
                    .await
                    .map_err(|error| error.at(index))?;
                timeout_ms = op.statement_timeout_ms;
            }
            // An error ends the batch: the transaction rolls back (a write batch's only to
            // the savepoint after its nonce claim, see `finish_claimed`).
            let output = run_op(&Conn::Tx(&transaction), op, params)
                .await
                .map_err(|error| error.at(index))?;
            results.push(output);
        }
        Ok(BatchOutput { results })
    };
    if !read_only {
        let result = replay::claim_then(&transaction, claim, work).await?;
        return finish_claimed(transaction, result, "batch").await;
    }
    let output = work.await?;
    transaction
        .commit()
        .await
        .map_err(|error| ApiError::from_postgres(&error, "batch"))?;
    Ok(output)
}

/// Commits a claimed write that succeeded; after a failed one keeps only the claim.
async fn finish_claimed<T>(
    transaction: deadpool_postgres::Transaction<'_>,
    result: Result<T, ApiError>,
    label: &str,
) -> Result<T, ApiError> {
    match result {
        Ok(output) => {
            transaction
                .commit()
                .await
                .map_err(|error| ApiError::from_postgres(&error, label))?;
            Ok(output)
        }
        Err(error) => {
            replay::commit_claim_only(transaction).await;
            Err(error)
        }
    }
}

async fn set_local_timeout(
    transaction: &deadpool_postgres::Transaction<'_>,
    op: &OpDef,
) -> Result<(), ApiError> {
    // The value is a `u32` from a static definition, never request data.
    transaction
        .batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            op.statement_timeout_ms
        ))
        .await
        .map_err(|error| ApiError::from_postgres(&error, op.name()))
}

async fn run_op(
    conn: &Conn<'_, '_>,
    op: &'static OpDef,
    params: &[BoundParam<'_>],
) -> Result<OpOutput, ApiError> {
    let statement = conn
        .prepare_cached(op.sql)
        .await
        .map_err(|error| ApiError::from_postgres(&error, op.name()))?;
    let codecs = column_codecs(op, &statement)?;
    execute(conn, op, &statement, &codecs, params).await
}

/// How each result column of `statement` becomes JSON.
fn column_codecs(op: &OpDef, statement: &Statement) -> Result<Box<[ColumnCodec]>, ApiError> {
    statement
        .columns()
        .iter()
        .map(|column| {
            ColumnCodec::for_type(column.type_()).ok_or_else(|| {
                ApiError::Internal(format!(
                    "operation `{}` column `{}` has unsupported type {}",
                    op.name(),
                    column.name(),
                    column.type_()
                ))
            })
        })
        .collect()
}

/// Runs an already prepared statement and decodes its rows; `codecs` come from
/// [`column_codecs`] for the same statement.
async fn execute(
    conn: &Conn<'_, '_>,
    op: &'static OpDef,
    statement: &Statement,
    codecs: &[ColumnCodec],
    params: &[BoundParam<'_>],
) -> Result<OpOutput, ApiError> {
    let pg_error = |error: tokio_postgres::Error| ApiError::from_postgres(&error, op.name());
    let params: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|param| param as &(dyn ToSql + Sync))
        .collect();

    let output = if statement.columns().is_empty() {
        let affected = conn.execute(statement, &params).await.map_err(pg_error)?;
        OpOutput {
            statement: None,
            rows: Vec::new(),
            row_count: affected,
        }
    } else {
        let rows = conn.query(statement, &params).await.map_err(pg_error)?;
        let decoded = rows
            .iter()
            .map(|row| {
                codecs
                    .iter()
                    .enumerate()
                    .map(|(index, codec)| codec.decode(row, index))
                    .collect()
            })
            .collect::<Result<Vec<Vec<Value>>, _>>()
            .map_err(|error| {
                ApiError::Internal(format!(
                    "operation `{}` returned an undecodable value: {error}",
                    op.name()
                ))
            })?;
        OpOutput {
            row_count: decoded.len() as u64,
            statement: Some(statement.clone()),
            rows: decoded,
        }
    };

    match op.expect {
        Expect::One { message } if output.row_count == 0 => {
            Err(ApiError::PreconditionFailed(message))
        }
        _ => Ok(output),
    }
}
