//! The three paths to the same row, and one client connection over each.
//!
//! Every path runs the statement `pgbench -S` runs, so the figures compare transports rather
//! than queries:
//! - **direct**: tokio-postgres straight to Postgres with a statement prepared once per
//!   connection, the best a Rust service holding its own connections can do;
//! - **pgbouncer**: tokio-postgres through PgBouncer in transaction mode. PgBouncer 1.18 cannot
//!   follow named prepared statements across server connections in that mode, so each lookup is
//!   `query_typed`: Parse/Bind/Execute/Sync of the *unnamed* statement in one round trip, with
//!   the parameter type given so no Describe is needed;
//! - **gateway**: db-gateway's `POST /v1/op` over one keep-alive HTTP/1.1 connection, every
//!   request signed afresh (new nonce, current time), as the Worker sends them.

use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, Statement};

use crate::config::Config;
use crate::gateway_client::{GatewayConnection, GatewayTarget};

/// The lookup every path performs.
pub(crate) const LOOKUP_SQL: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathKind {
    Direct,
    PgBouncer,
    Gateway,
}

impl PathKind {
    pub(crate) const ALL: [PathKind; 3] = [Self::Direct, Self::PgBouncer, Self::Gateway];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::PgBouncer => "pgbouncer",
            Self::Gateway => "gateway",
        }
    }

    /// How the path issues the lookup, printed with the results.
    pub(crate) fn method(self) -> &'static str {
        match self {
            Self::Direct => "tokio-postgres, named statement prepared once per connection",
            Self::PgBouncer => {
                "tokio-postgres query_typed (unnamed statement, extended protocol, one round \
                 trip); transaction pooling"
            }
            Self::Gateway => {
                "POST /v1/op bench.account_balance, HTTP/1.1 keep-alive, RFC 9421 signature + \
                 fresh nonce per request"
            }
        }
    }
}

/// Where and how to open connections for one path.
#[derive(Debug)]
pub(crate) enum Target {
    Direct(tokio_postgres::Config),
    PgBouncer(tokio_postgres::Config),
    Gateway(GatewayTarget),
}

impl Target {
    pub(crate) fn for_path(path: PathKind, config: &Config) -> anyhow::Result<Arc<Self>> {
        let missing = || anyhow!("path `{}` is not configured", path.name());
        let target = match path {
            PathKind::Direct => Self::Direct(config.direct.clone().ok_or_else(missing)?),
            PathKind::PgBouncer => Self::PgBouncer(config.pgbouncer.clone().ok_or_else(missing)?),
            PathKind::Gateway => Self::Gateway(GatewayTarget::load(
                config.gateway.as_ref().ok_or_else(missing)?,
            )?),
        };
        Ok(Arc::new(target))
    }

    pub(crate) async fn connect(self: &Arc<Self>) -> anyhow::Result<Connection> {
        match &**self {
            Self::Direct(config) => {
                let client = connect_postgres(config).await?;
                let statement = client
                    .prepare_typed(LOOKUP_SQL, &[Type::INT4])
                    .await
                    .context("preparing the lookup")?;
                Ok(Connection::Prepared { client, statement })
            }
            Self::PgBouncer(config) => Ok(Connection::Unnamed {
                client: connect_postgres(config).await?,
            }),
            Self::Gateway(_) => Ok(Connection::Gateway(
                GatewayConnection::open(Arc::clone(self)).await?,
            )),
        }
    }

    pub(crate) fn gateway(&self) -> Option<&GatewayTarget> {
        match self {
            Self::Gateway(target) => Some(target),
            Self::Direct(_) | Self::PgBouncer(_) => None,
        }
    }
}

pub(crate) async fn connect_postgres(
    config: &tokio_postgres::Config,
) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .context("connecting to Postgres")?;
    // The connection task ends by itself once the client is dropped.
    tokio::spawn(async move {
        // An I/O error here also fails the client's pending and next queries, which is where
        // it is counted; nothing more to do with it.
        let _ = connection.await;
    });
    Ok(client)
}

/// One client's connection over one path.
pub(crate) enum Connection {
    Prepared {
        client: tokio_postgres::Client,
        statement: Statement,
    },
    Unnamed {
        client: tokio_postgres::Client,
    },
    Gateway(GatewayConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Prepared { .. } => "Prepared",
            Self::Unnamed { .. } => "Unnamed",
            Self::Gateway(_) => "Gateway",
        };
        f.debug_struct("Connection").field("kind", &kind).finish()
    }
}

impl Connection {
    /// Looks up `abalance` of account `aid`; exactly one row must come back.
    pub(crate) async fn balance(&mut self, aid: i32) -> anyhow::Result<i32> {
        let rows = match self {
            Self::Prepared { client, statement } => client.query(&*statement, &[&aid]).await?,
            Self::Unnamed { client } => {
                client
                    .query_typed(LOOKUP_SQL, &[(&aid, Type::INT4)])
                    .await?
            }
            Self::Gateway(connection) => return connection.balance(aid).await,
        };
        match rows.as_slice() {
            [row] => Ok(row.try_get::<_, i32>(0)?),
            other => bail!("expected 1 row for aid {aid}, got {}", other.len()),
        }
    }

    /// Whether the connection can no longer be used and must be replaced.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Self::Prepared { client, .. } | Self::Unnamed { client } => client.is_closed(),
            Self::Gateway(connection) => connection.is_closed(),
        }
    }
}
