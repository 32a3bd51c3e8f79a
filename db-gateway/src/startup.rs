//! Wiring: builds the state, binds both listeners, serves until told to stop, then drains.

use std::future::{Future, IntoFuture as _};
use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::ListenerExt as _;
use callmeback_gateway_api::ops::bench;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::db;
use crate::http::{AppState, SharedState, admin_router, api_router};
use crate::keys::{KeyFileError, KeyRing};
use crate::metrics::GatewayMetrics;
use crate::migrate::{self, MigrateError, MigrationReport, Migrator};
use crate::nonce::NonceCache;
use crate::ops::{Registry, RegistryError};
use crate::pipeline::SharedReads;
use crate::replay;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("GATEWAY_KEYS_FILE is required to serve")]
    MissingKeysFile,
    #[error(transparent)]
    Keys(#[from] KeyFileError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
    #[error("cannot reach Postgres to verify the operation registry: {0}")]
    Database(String),
    #[error(
        "the replay-protection table gateway_request_nonces does not match (apply the migrations): {0}"
    )]
    ReplayTable(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Applies pending migrations from `config.migrations_dir` (what `serve` does first).
pub async fn migrate_database(config: &Config) -> Result<MigrationReport, MigrateError> {
    let migrator = Migrator::from_dir(&config.migrations_dir)?;
    let mut client = migrate::connect(&config.database).await?;
    migrator.run(&mut client).await
}

/// A gateway with both listeners bound, ready to [`run_until`](Application::run_until).
#[derive(Debug)]
pub struct Application {
    api_listener: TcpListener,
    admin_listener: TcpListener,
    api_addr: SocketAddr,
    admin_addr: SocketAddr,
    state: AppState,
    shutdown_grace: Duration,
}

impl Application {
    /// Builds the production registry (plus bench operations if configured), loads the keys,
    /// verifies every operation against the database and binds both listeners. Migrations must
    /// already be applied (see [`migrate_database`]).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let registry = Registry::production(config.bench_ops)?;
        Self::build_with_registry(config, registry).await
    }

    /// Like [`Application::build`] with a caller-chosen registry (tests add test-only
    /// operations this way).
    pub async fn build_with_registry(
        config: Config,
        registry: Registry,
    ) -> Result<Self, StartupError> {
        let keys_file = config
            .keys_file
            .as_deref()
            .ok_or(StartupError::MissingKeysFile)?;
        let keys = KeyRing::load(keys_file)?;
        let pool =
            db::build_pool(&config).map_err(|error| StartupError::Pool(error.to_string()))?;
        {
            let client = pool
                .get()
                .await
                .map_err(|error| StartupError::Database(error.to_string()))?;
            // Benchmark tables only exist after `pgbench -i`, which may run after startup.
            registry
                .verify(&client, |op| !bench::ALL.contains(&op.spec))
                .await?;
            replay::verify_schema(&client)
                .await
                .map_err(StartupError::ReplayTable)?;
        }

        let reads = SharedReads::start(&config, &registry).await;

        let api_listener = bind(config.api_listen).await?;
        let admin_listener = bind(config.admin_listen).await?;
        let api_addr = local_addr(&api_listener, config.api_listen)?;
        let admin_addr = local_addr(&admin_listener, config.admin_listen)?;

        tracing::info!(
            ops = registry.len(),
            keys = keys.len(),
            pool_size = config.pool_size,
            pipeline_connections = config.pipeline_connections,
            %api_addr,
            %admin_addr,
            "gateway ready"
        );
        let state = AppState::new(SharedState {
            registry,
            keys,
            nonces: NonceCache::new(config.max_skew_secs, config.replay_cache_entries),
            pool,
            reads,
            metrics: GatewayMetrics::new(),
            public_url: config.public_url,
            body_limit_bytes: config.body_limit_bytes,
            max_skew_secs: config.max_skew_secs,
        });
        Ok(Self {
            api_listener,
            admin_listener,
            api_addr,
            admin_addr,
            state,
            shutdown_grace: config.shutdown_grace,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves until `shutdown` completes, then stops accepting connections and lets in-flight
    /// requests finish for up to the configured grace period before returning.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let wait_for_stop = |mut stopped: watch::Receiver<bool>| async move {
            // An error means the sender is gone, which also means "stop".
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        // Responses are small and latency matters more than packet count: no Nagle delay.
        let api_listener = self.api_listener.tap_io(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        let api = axum::serve(api_listener, api_router(self.state.clone()))
            .with_graceful_shutdown(wait_for_stop(stopped.clone()));
        let admin = axum::serve(self.admin_listener, admin_router(self.state.clone()))
            .with_graceful_shutdown(wait_for_stop(stopped));
        let mut servers = tokio::spawn(async move {
            tokio::try_join!(api.into_future(), admin.into_future()).map(|_| ())
        });
        // Housekeeping while the gateway serves: expired nonce rows go (`crate::replay`) and
        // histogram samples are folded into their buckets even if nobody scrapes `/metrics`.
        // Neither holds state worth draining; dropping the set stops both.
        let mut housekeeping = JoinSet::new();
        {
            let metrics = self.state.metrics.clone();
            housekeeping.spawn(replay::cleanup_loop(
                self.state.pool.clone(),
                move |deleted| metrics.record_nonce_cleanup(deleted),
            ));
        }
        housekeeping.spawn(self.state.metrics.clone().upkeep_loop());

        tokio::select! {
            finished = &mut servers => {
                housekeeping.abort_all();
                return flatten(finished);
            }
            () = shutdown => {}
        }
        tracing::info!(
            grace_secs = self.shutdown_grace.as_secs(),
            "shutdown requested; draining in-flight requests"
        );
        // Both receivers live inside `servers`, so sending cannot fail while it runs.
        let _ = stop.send(true);
        let drained = tokio::time::timeout(self.shutdown_grace, &mut servers).await;
        let result = match drained {
            Ok(finished) => flatten(finished),
            Err(_) => {
                tracing::warn!("grace period elapsed; abandoning the remaining requests");
                servers.abort();
                Ok(())
            }
        };
        housekeeping.abort_all();
        self.state.reads.close();
        self.state.pool.close();
        tracing::info!("gateway stopped");
        result
    }
}

fn flatten(finished: Result<std::io::Result<()>, tokio::task::JoinError>) -> std::io::Result<()> {
    finished.map_err(std::io::Error::other)?
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, requested: SocketAddr) -> Result<SocketAddr, StartupError> {
    listener.local_addr().map_err(|source| StartupError::Bind {
        addr: requested,
        source,
    })
}
