//! Pipelined single reads on a few shared connections.
//!
//! A pooled connection serves one request at a time: check out, send, wait for the answer,
//! give back. With many concurrent clients that means many busy Postgres backends, and one
//! socket round trip (and wake-up on both sides) per request. A single read needs none of
//! that exclusivity: it runs in no transaction (the default `statement_timeout` is a startup
//! parameter), and tokio-postgres sends each query with its own `Sync`, so every statement is
//! its own implicit transaction and an error in one cannot touch its neighbours. Reads of many
//! requests can therefore share a connection, and tokio-postgres pipelines them: queued
//! queries go out in one write, answers come back in one read, and one backend serves them
//! back to back.
//!
//! What may run here is decided by [`OpDef::is_pipelinable`]: a `Mode::Read` operation with
//! the default statement timeout, called on its own. Everything else keeps the pool, because
//! it needs the connection to itself:
//! - a batch or an operation with its own timeout runs in a transaction (`BEGIN … COMMIT`,
//!   `SET LOCAL`), which would swallow every other client's statement sent meanwhile;
//! - a write may wait on row locks, and a shared connection serves its queue in order, so one
//!   blocked write would stall every read queued behind it (a slow read does that too, which is
//!   why new reads go to the least loaded connection, see [`SharedReads::run`]).
//!
//! Shared connections start with `default_transaction_read_only=on` as well, so an operation
//! mislabelled `Read` that writes fails loudly here, as it does in a read-only batch.
//!
//! Each shared connection prepares every pipelinable operation once (at startup, or on first
//! use for the benchmark's operations, whose table may appear later) and keeps the statements
//! in a vector indexed like the registry, so a request does no lookup by SQL text.
//!
//! In-flight reads are bounded (`GATEWAY_PIPELINE_DEPTH` per connection); a read that finds no
//! slot within `GATEWAY_POOL_WAIT_MS` is shed with 503 `overloaded`, like a pool timeout. A
//! closed shared connection is replaced in the background with backoff, and until then its
//! reads use the pool; a read whose shared connection broke under it is retried once on the
//! pool, which is safe because it changed nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, Semaphore, watch};
use tokio_postgres::NoTls;

use crate::config::Config;
use crate::db::{OpOutput, PreparedRead, session_config};
use crate::error::ApiError;
use crate::ops::Registry;
use crate::statement::OpDef;
use crate::statement::params::BoundParam;

/// `application_name` of shared connections (unless `DATABASE_URL` sets one), which tells
/// them apart from pooled ones in `pg_stat_activity`.
pub const PIPELINE_APPLICATION_NAME: &str = "db-gateway-pipeline";
/// First wait before reconnecting a lost shared connection; doubled per failure.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a read on the shared connections came to.
#[derive(Debug)]
pub(crate) enum SharedRead {
    /// It ran (or failed in a way the pool would not change): this is the answer.
    Done(Result<OpOutput, ApiError>),
    /// No shared connection could run it; run it on the pool instead.
    UsePool,
}

/// Numbers for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStatus {
    /// Shared connections configured (`GATEWAY_PIPELINE_CONNECTIONS`).
    pub max_connections: usize,
    /// Shared connections open now.
    pub open_connections: usize,
    /// Reads sent on shared connections and not yet answered.
    pub in_flight: usize,
    /// Reads answered on shared connections.
    pub reads: u64,
    /// Reads that went to the pool because no shared connection could take them.
    pub fallbacks: u64,
    /// Shared connections opened to replace lost ones.
    pub reconnects: u64,
}

/// The shared connections and everything needed to replace them.
#[derive(Debug, Clone)]
pub(crate) struct SharedReads {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    database: tokio_postgres::Config,
    /// Indexed like the registry; `Some` for operations that may run here.
    ops: Box<[Option<&'static OpDef>]>,
    slots: Box<[Slot]>,
    permits: Semaphore,
    wait: Duration,
    stop: watch::Sender<bool>,
    reads: AtomicU64,
    fallbacks: AtomicU64,
    reconnects: AtomicU64,
}

#[derive(Debug, Default)]
struct Slot {
    connection: RwLock<Option<Arc<SharedConnection>>>,
    in_flight: AtomicUsize,
    /// A reconnect task is running for this slot.
    reconnecting: AtomicBool,
}

#[derive(Debug)]
struct SharedConnection {
    client: tokio_postgres::Client,
    /// Indexed like the registry; only pipelinable operations are ever initialised.
    statements: Box<[OnceCell<PreparedRead>]>,
}

/// Counts a read against its slot for as long as it is in flight (also when cancelled).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SharedReads {
    /// Opens `config.pipeline_connections` shared connections and prepares every pipelinable
    /// operation of `registry` on each. A connection that cannot be opened now is retried in
    /// the background (its reads use the pool meanwhile), so this never fails.
    pub(crate) async fn start(config: &Config, registry: &Registry) -> Self {
        let ops = registry
            .ops_by_index()
            .iter()
            .map(|op| op.is_pipelinable().then_some(*op))
            .collect();
        let connections = config.pipeline_connections;
        let inner = Arc::new(Inner {
            database: session_config(
                &config.database,
                PIPELINE_APPLICATION_NAME,
                "-c default_transaction_read_only=on",
            ),
            ops,
            slots: (0..connections).map(|_| Slot::default()).collect(),
            permits: Semaphore::new(
                connections
                    .saturating_mul(config.pipeline_depth)
                    .min(Semaphore::MAX_PERMITS),
            ),
            wait: config.pool_wait,
            stop: watch::channel(false).0,
            reads: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        });
        for index in 0..connections {
            match Inner::open(&inner, index).await {
                Ok(connection) => inner.install(index, connection),
                Err(error) => {
                    tracing::warn!(slot = index, %error, "cannot open a pipelined connection; retrying in the background");
                    Inner::reconnect_in_background(&inner, index);
                }
            }
        }
        Self { inner }
    }

    /// Whether `op_index` may run here at all (pipelining on and the operation pipelinable).
    pub(crate) fn accepts(&self, op_index: usize) -> bool {
        !self.inner.slots.is_empty() && self.inner.ops.get(op_index).is_some_and(Option::is_some)
    }

    /// Runs registry operation `op_index` on the least loaded open shared connection, waiting
    /// for an in-flight slot up to the configured wait (then 503 `overloaded`).
    pub(crate) async fn run(&self, op_index: usize, params: &[BoundParam<'_>]) -> SharedRead {
        let inner = &*self.inner;
        let Some(op) = inner.ops.get(op_index).copied().flatten() else {
            return SharedRead::UsePool;
        };
        let _permit = match inner.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let started = Instant::now();
                match tokio::time::timeout(inner.wait, inner.permits.acquire()).await {
                    Ok(Ok(permit)) => permit,
                    // The semaphore is never closed; treat it like a full one anyway.
                    Ok(Err(_)) | Err(_) => {
                        return SharedRead::Done(Err(ApiError::Overloaded(format!(
                            "no pipelined read slot became free within {} ms",
                            started.elapsed().as_millis()
                        ))));
                    }
                }
            }
        };
        let Some((slot_index, connection)) = Inner::pick(&self.inner) else {
            inner.fallbacks.fetch_add(1, Ordering::Relaxed);
            return SharedRead::UsePool;
        };
        let slot = &inner.slots[slot_index];
        let _in_flight = InFlight::enter(&slot.in_flight);
        let result = match connection.statements[op_index]
            .get_or_try_init(|| PreparedRead::prepare(&connection.client, op))
            .await
        {
            Ok(prepared) => prepared.run(&connection.client, op, params).await,
            Err(error) => Err(error),
        };
        match result {
            // The connection broke under this read: nothing was changed (reads only, and the
            // session is read-only), so the pool may run it again.
            Err(ApiError::DatabaseUnavailable { detail }) => {
                tracing::debug!(slot = slot_index, detail = %detail, "pipelined read failed; retrying on the pool");
                if connection.client.is_closed() {
                    Inner::lost(&self.inner, slot_index, &connection);
                }
                inner.fallbacks.fetch_add(1, Ordering::Relaxed);
                SharedRead::UsePool
            }
            result => {
                inner.reads.fetch_add(1, Ordering::Relaxed);
                SharedRead::Done(result)
            }
        }
    }

    pub(crate) fn status(&self) -> PipelineStatus {
        let inner = &*self.inner;
        let open_connections = inner
            .slots
            .iter()
            .filter(|slot| {
                slot.current()
                    .is_some_and(|connection| !connection.client.is_closed())
            })
            .count();
        PipelineStatus {
            max_connections: inner.slots.len(),
            open_connections,
            in_flight: inner
                .slots
                .iter()
                .map(|slot| slot.in_flight.load(Ordering::Relaxed))
                .sum(),
            reads: inner.reads.load(Ordering::Relaxed),
            fallbacks: inner.fallbacks.load(Ordering::Relaxed),
            reconnects: inner.reconnects.load(Ordering::Relaxed),
        }
    }

    /// Closes the shared connections and stops reconnecting (shutdown).
    pub(crate) fn close(&self) {
        self.inner.stop.send_replace(true);
        for slot in &self.inner.slots {
            // Dropping the last client handle ends its connection.
            slot.replace(None);
        }
    }
}

impl Slot {
    fn current(&self) -> Option<Arc<SharedConnection>> {
        self.connection
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn replace(&self, connection: Option<Arc<SharedConnection>>) {
        *self
            .connection
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = connection;
    }
}

impl Inner {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// The open slot with the fewest reads in flight (ties: the lowest index, which keeps a
    /// light load on one connection, where pipelining gains most). A slot found closed is
    /// handed to the reconnect task and skipped.
    fn pick(this: &Arc<Self>) -> Option<(usize, Arc<SharedConnection>)> {
        // At most 64 slots (the configuration's bound), one bit each.
        let mut skipped = 0u64;
        loop {
            let (index, slot) = this
                .slots
                .iter()
                .enumerate()
                .filter(|(index, _)| skipped & (1 << index) == 0)
                .min_by_key(|(_, slot)| slot.in_flight.load(Ordering::Relaxed))?;
            match slot.current() {
                Some(connection) if !connection.client.is_closed() => {
                    return Some((index, connection));
                }
                Some(connection) => Self::lost(this, index, &connection),
                None => {}
            }
            skipped |= 1 << index;
        }
    }

    /// Opens one shared connection and prepares what it can. A statement that does not
    /// prepare now (the benchmark table may not exist yet) is prepared on first use.
    async fn open(this: &Arc<Self>, slot: usize) -> Result<Arc<SharedConnection>, String> {
        let (client, connection) = this
            .database
            .connect(NoTls)
            .await
            .map_err(|error| error.to_string())?;
        let shared = Arc::new(SharedConnection {
            client,
            statements: this.ops.iter().map(|_| OnceCell::new()).collect(),
        });
        // The driver ends when the server closes the connection or the last client handle is
        // dropped; only a connection still installed is then replaced.
        let weak_inner = Arc::downgrade(this);
        let weak_shared = Arc::downgrade(&shared);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(slot, %error, "pipelined connection ended");
            }
            if let (Some(inner), Some(shared)) = (weak_inner.upgrade(), weak_shared.upgrade()) {
                Self::lost(&inner, slot, &shared);
            }
        });
        for (index, op) in this.ops.iter().enumerate() {
            let Some(op) = op else { continue };
            match PreparedRead::prepare(&shared.client, op).await {
                Ok(prepared) => {
                    // A fresh cell: nobody else can have filled it.
                    let _ = shared.statements[index].set(prepared);
                }
                Err(error) => {
                    tracing::debug!(op = op.name(), %error, "statement not prepared yet; preparing on first use");
                }
            }
        }
        Ok(shared)
    }

    fn install(&self, slot: usize, connection: Arc<SharedConnection>) {
        if self.stopped() {
            return;
        }
        self.slots[slot].replace(Some(connection));
        tracing::debug!(slot, "pipelined connection open");
    }

    /// Takes `connection` out of `slot` (if it is still the one installed) and starts
    /// replacing it.
    fn lost(this: &Arc<Self>, slot: usize, connection: &Arc<SharedConnection>) {
        {
            let mut installed = this.slots[slot]
                .connection
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match &*installed {
                Some(current) if Arc::ptr_eq(current, connection) => *installed = None,
                _ => return,
            }
        }
        if !this.stopped() {
            tracing::warn!(
                slot,
                "pipelined connection lost; reads use the pool until it is replaced"
            );
            Self::reconnect_in_background(this, slot);
        }
    }

    fn reconnect_in_background(this: &Arc<Self>, slot: usize) {
        if this.slots[slot].reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(this);
        let mut stop = this.stop.subscribe();
        tokio::spawn(async move {
            let mut backoff = RECONNECT_BACKOFF_MIN;
            loop {
                if stopped_or_gone(&weak, &mut stop, backoff).await {
                    return;
                }
                let Some(inner) = weak.upgrade() else { return };
                match Self::open(&inner, slot).await {
                    Ok(connection) => {
                        inner.reconnects.fetch_add(1, Ordering::Relaxed);
                        inner.install(slot, connection);
                        inner.slots[slot]
                            .reconnecting
                            .store(false, Ordering::Release);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(slot, %error, retry_in_ms = backoff.as_millis() as u64, "cannot reopen a pipelined connection");
                        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                    }
                }
            }
        });
    }
}

/// Sleeps `delay`; true if the gateway stopped (or is gone) meanwhile.
async fn stopped_or_gone(
    inner: &Weak<Inner>,
    stop: &mut watch::Receiver<bool>,
    delay: Duration,
) -> bool {
    tokio::select! {
        _ = stop.wait_for(|stopped| *stopped) => true,
        () = tokio::time::sleep(delay) => inner.strong_count() == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_until_dropped() {
        let counter = AtomicUsize::new(0);
        {
            let _first = InFlight::enter(&counter);
            let _second = InFlight::enter(&counter);
            assert_eq!(counter.load(Ordering::Relaxed), 2);
        }
        assert_eq!(counter.load(Ordering::Relaxed), 0);
    }
}
