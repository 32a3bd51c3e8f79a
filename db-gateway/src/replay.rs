//! Replay protection that holds across restarts, across instances and at any request rate.
//!
//! A signed request can be replayed by whoever sees it (a log, a proxy, a compromised hop)
//! for as long as its signature verifies: `created` ± `GATEWAY_MAX_SKEW_SECS`. Two layers stop
//! that:
//!
//! 1. **Writes: the database.** Every request that can write — a batch with a `Write`
//!    operation, a single `Write` operation, a procedure with a writing statement — inserts its
//!    `(key id, nonce)` into `gateway_request_nonces` (primary key on the pair), so a replay fails
//!    the key and changes nothing, whichever instance it reaches and however often the gateways
//!    restarted. For batches and single writes the insert is the first statement of the
//!    write's own transaction, pipelined with the work (no extra round trip), followed by a
//!    savepoint: if the work then fails (a precondition, a conflict, a timeout), only the work
//!    is rolled back and the nonce row still commits, so a failed write cannot be replayed later
//!    either (for instance after the client retried it with a fresh signature). A concurrent
//!    replay waits on the original's uncommitted row and then fails; it takes no other lock
//!    first, so it cannot deadlock with the original. Procedures commit statements of their own
//!    (`accounts.login` commits an audit row and then answers an error), so no one transaction
//!    holds them all: they claim the nonce in its own committed insert *before* they run, which
//!    also spares a replayed login its password hash.
//! 2. **Everything: the per-process memory** ([`crate::nonce`]), checked before any database
//!    work. It refuses a replay seen by this process, reads included, at the cost of a hash
//!    lookup, and its size is bounded (`GATEWAY_REPLAY_CACHE_ENTRIES`): when full it forgets its
//!    oldest seconds and refuses *reads* signed before what it still remembers; writes below
//!    that line are left to the database.
//!
//! A replayed read changes nothing; what it can do is read the same rows again (fresher data
//! than the attacker already saw) and cost a query. Reads are therefore protected by memory
//! only: at most one answer per signed read per process. After a restart, or on another
//! instance, the same signed read can be answered once more within its window. Refusing every
//! signature created before the process started would close that, but it would also fail every
//! read that was in flight during a deploy (Caddy holds requests while the gateway restarts),
//! and it would protect nothing with several instances, where a replay can simply go to
//! another one. Recording reads in the database would cost a write per read.
//!
//! Rows are needed only while their signature could verify: each gateway deletes rows whose
//! `expires_at` (`created` + max skew) is more than [`EXPIRY_MARGIN_SECS`] in the past, every
//! [`CLEANUP_INTERVAL`], in batches of `FOR UPDATE SKIP LOCKED` rows, so several instances
//! cleaning at once neither block nor deadlock one another and each row is deleted once. The
//! margin covers clock differences between the gateways and Postgres; every instance must use
//! the same `GATEWAY_MAX_SKEW_SECS` (a row's expiry is computed by the instance that wrote it).

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::error::{ApiError, REPLAYED_NONCE};

/// Records a request's nonce; fails on the primary key if it was recorded before.
pub const CLAIM_SQL: &str = "INSERT INTO gateway_request_nonces (key_id, nonce, expires_at) \
                             VALUES ($1, $2, to_timestamp($3::int8))";

/// Deletes up to `$2` rows that expired more than `$1` seconds ago, oldest first, skipping rows
/// another cleaner holds.
pub const DELETE_EXPIRED_SQL: &str = "DELETE FROM gateway_request_nonces AS n \
     USING (SELECT key_id, nonce FROM gateway_request_nonces \
            WHERE expires_at < now() - $1::int8 * interval '1 second' \
            ORDER BY expires_at LIMIT $2::int8 FOR UPDATE SKIP LOCKED) AS expired \
     WHERE n.key_id = expired.key_id AND n.nonce = expired.nonce";

/// A row is kept this long past its signature's expiry, so a gateway whose clock lags the
/// database's by less than this never meets a deleted nonce it would still accept.
pub const EXPIRY_MARGIN_SECS: i64 = 60;
/// How often each gateway deletes expired rows.
pub const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);
/// Rows per `DELETE`: short statements, short locks.
pub const CLEANUP_BATCH: i64 = 5_000;

/// Undone when the work after the claim fails, so the claim itself still commits.
const SAVEPOINT: &str = "SAVEPOINT gateway_request";
const ROLLBACK_TO_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT gateway_request";

/// What a request that writes records about itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NonceClaim<'a> {
    pub(crate) key_id: &'a str,
    pub(crate) nonce: &'a str,
    /// Unix seconds after which no gateway accepts the signature (`created` + max skew).
    pub(crate) expires_at: i64,
}

/// The answer to a replay, from memory or from the database.
pub(crate) fn replayed() -> ApiError {
    ApiError::Unauthorized {
        code: REPLAYED_NONCE,
        message: "this nonce was already used within the signature window".to_owned(),
    }
}

/// Claims the nonce as the first statement of `transaction`, then runs `work` after a
/// savepoint. Everything is sent at once (the claim, the savepoint, and the first statement of
/// `work` travel together), so the claim costs no round trip of its own.
///
/// The outer error means the claim failed (a replay: 401 `replayed_nonce`); the transaction
/// must then be dropped, which rolls it back. The inner result is the work's: on `Ok` commit
/// the transaction, on `Err` call [`commit_claim_only`].
pub(crate) async fn claim_then<T>(
    transaction: &Transaction<'_>,
    claim: NonceClaim<'_>,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<Result<T, ApiError>, ApiError> {
    // Prepared (or found in the connection's cache) first: a prepared statement is sent on the
    // first poll, which is what keeps the three in order below.
    let statement = transaction
        .prepare_cached(CLAIM_SQL)
        .await
        .map_err(|error| claim_error(&error))?;
    let params: [&(dyn ToSql + Sync); 3] = [&claim.key_id, &claim.nonce, &claim.expires_at];
    let insert = transaction.execute(&statement, &params);
    let savepoint = transaction.batch_execute(SAVEPOINT);
    // `biased`: polled in this order, so the claim reaches Postgres before the savepoint and
    // the savepoint before the work. After a failed claim the other two fail (the transaction
    // is aborted) without having changed anything.
    let (inserted, saved, result) = tokio::join!(biased; insert, savepoint, work);
    inserted.map_err(|error| claim_error(&error))?;
    saved.map_err(|error| ApiError::from_postgres(&error, "replay claim"))?;
    Ok(result)
}

/// After the work of [`claim_then`] failed: undoes the work, keeps the claim and commits it, so
/// a replay of a failed write is refused too. Best effort: if this fails (the connection broke),
/// the transaction rolls back and only the process memory remembers the nonce.
pub(crate) async fn commit_claim_only(transaction: Transaction<'_>) {
    let kept = async {
        transaction.batch_execute(ROLLBACK_TO_SAVEPOINT).await?;
        transaction.commit().await
    };
    if let Err(error) = kept.await {
        tracing::warn!(%error, "could not keep the nonce of a failed write");
    }
}

/// Claims the nonce in a statement of its own, committed before anything else runs (for
/// procedures; see the module docs).
pub(crate) async fn claim_alone(pool: &Pool, claim: NonceClaim<'_>) -> Result<(), ApiError> {
    let client = crate::db::checkout(pool).await?;
    let statement = client
        .prepare_cached(CLAIM_SQL)
        .await
        .map_err(|error| claim_error(&error))?;
    client
        .execute(
            &statement,
            &[&claim.key_id, &claim.nonce, &claim.expires_at],
        )
        .await
        .map_err(|error| claim_error(&error))?;
    Ok(())
}

fn claim_error(error: &tokio_postgres::Error) -> ApiError {
    let is_replay = error
        .as_db_error()
        .is_some_and(|db| *db.code() == SqlState::UNIQUE_VIOLATION);
    if is_replay {
        replayed()
    } else {
        ApiError::from_postgres(error, "replay claim")
    }
}

/// Deletes every row that expired more than `margin_secs` ago, `batch` rows per statement, and
/// returns how many it deleted. Safe to run from several gateways at once.
pub async fn delete_expired_nonces(
    client: &tokio_postgres::Client,
    margin_secs: i64,
    batch: i64,
) -> Result<u64, tokio_postgres::Error> {
    let statement = client.prepare(DELETE_EXPIRED_SQL).await?;
    let mut deleted = 0;
    loop {
        let removed = client.execute(&statement, &[&margin_secs, &batch]).await?;
        deleted += removed;
        if removed < u64::try_from(batch).unwrap_or(u64::MAX) {
            return Ok(deleted);
        }
    }
}

/// Checks at startup that the table exists with the expected columns (both statements prepare).
pub(crate) async fn verify_schema(client: &tokio_postgres::Client) -> Result<(), String> {
    for sql in [CLAIM_SQL, DELETE_EXPIRED_SQL] {
        client
            .prepare(sql)
            .await
            .map_err(|error| match error.as_db_error() {
                Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
                None => error.to_string(),
            })?;
    }
    Ok(())
}

/// Runs [`delete_expired_nonces`] every [`CLEANUP_INTERVAL`], the first time right away,
/// until the task is dropped. `on_round` hears how many rows each round deleted (`None`: it
/// failed; it is logged and retried at the next tick).
pub(crate) async fn cleanup_loop(pool: Pool, on_round: impl Fn(Option<u64>)) {
    let mut ticks = tokio::time::interval(CLEANUP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let round = async {
            let client = pool.get().await.map_err(|error| error.to_string())?;
            delete_expired_nonces(&client, EXPIRY_MARGIN_SECS, CLEANUP_BATCH)
                .await
                .map_err(|error| error.to_string())
        };
        match round.await {
            Ok(deleted) => {
                if deleted > 0 {
                    tracing::debug!(deleted, "deleted expired request nonces");
                }
                on_round(Some(deleted));
            }
            Err(error) => {
                tracing::warn!(%error, "could not delete expired request nonces");
                on_round(None);
            }
        }
    }
}
