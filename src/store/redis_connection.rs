//! One handle over a standalone Redis or a Redis Cluster, so the store's commands are written
//! once. Both open lazily: the service starts, and keeps minting, while Redis is down.

use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, TlsCertificates, Value};

use crate::settings::{RedisSettings, RedisTarget};

#[derive(Clone)]
pub enum RedisConnection {
    /// Reconnects by itself after a failure.
    Standalone(ConnectionManager),
    Cluster(LazyCluster),
}

/// A cluster connection opened on first use; a failed open is retried by the next call. Once
/// open, the client follows MOVED/ASK redirections and reconnects to nodes by itself.
#[derive(Clone)]
pub struct LazyCluster {
    client: Arc<ClusterClient>,
    open: Arc<tokio::sync::OnceCell<ClusterConnection>>,
}

/// What opening a connection needs (client, certificates, timeouts), read once. Each
/// connection it opens is driven by the runtime it is opened in.
#[derive(Clone)]
pub enum RedisConnector {
    Standalone(Box<(redis::Client, ConnectionManagerConfig)>),
    Cluster(Arc<ClusterClient>),
}

impl RedisConnector {
    pub fn new(settings: &RedisSettings) -> anyhow::Result<Self> {
        let certificates = || -> anyhow::Result<TlsCertificates> {
            let root_cert = match &settings.tls_ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!(
                        "reading STREAMTOKEN_REDIS_TLS_CA_FILE {}: {e}",
                        path.display()
                    )
                })?),
                None => None,
            };
            Ok(TlsCertificates {
                client_tls: None,
                root_cert,
            })
        };
        if settings.target.uses_tls() {
            crate::crypto_provider::installed();
        }
        let timeout = settings.timeout;
        Ok(match &settings.target {
            RedisTarget::Standalone(url) => {
                let client = if settings.target.uses_tls() {
                    redis::Client::build_with_tls(url.expose(), certificates()?)?
                } else {
                    redis::Client::open(url.expose())?
                };
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(timeout);
                RedisConnector::Standalone(Box::new((client, config)))
            }
            RedisTarget::Cluster(seeds) => {
                let mut builder =
                    ClusterClient::builder(seeds.iter().map(|url| url.expose().to_owned()))
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        // Redirections and a failover's TRYAGAIN are retried briefly; the store
                        // timeout bounds the whole call anyway.
                        .retries(4)
                        .min_retry_wait(10)
                        .max_retry_wait(200);
                if settings.target.uses_tls() {
                    builder = builder.certs(certificates()?);
                }
                RedisConnector::Cluster(Arc::new(builder.build()?))
            }
        })
    }

    /// A new connection, not opened yet. Must run inside the runtime that will drive it (the
    /// manager spawns its helpers there, and the connection its driver on first use).
    pub fn open_lazily(&self) -> RedisResult<RedisConnection> {
        Ok(match self {
            RedisConnector::Standalone(client_and_config) => {
                let (client, config) = &**client_and_config;
                RedisConnection::Standalone(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    config.clone(),
                )?)
            }
            RedisConnector::Cluster(client) => RedisConnection::Cluster(LazyCluster {
                client: client.clone(),
                open: Arc::new(tokio::sync::OnceCell::new()),
            }),
        })
    }
}

impl RedisConnection {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }

    /// `cmd` on one node given by address (cluster only; a standalone Redis is the one node).
    pub async fn on_node(&mut self, host: &str, port: u16, cmd: Cmd) -> RedisResult<Value> {
        match self {
            RedisConnection::Standalone(conn) => cmd.query_async(conn).await,
            RedisConnection::Cluster(cluster) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_owned(),
                    port,
                });
                cluster.get().await?.route_command(cmd, routing).await
            }
        }
    }
}

impl LazyCluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        self.open
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Standalone(conn) => conn.req_packed_command(cmd),
            RedisConnection::Cluster(cluster) => {
                Box::pin(async move { cluster.get().await?.req_packed_command(cmd).await })
            }
        }
    }

    /// A cluster pipeline goes to the node owning its first key, so every command in it must
    /// use that key's slot (keyless ones like `WAIT` ride along).
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Standalone(conn) => conn.req_packed_commands(cmd, offset, count),
            RedisConnection::Cluster(cluster) => Box::pin(async move {
                cluster
                    .get()
                    .await?
                    .req_packed_commands(cmd, offset, count)
                    .await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Standalone(conn) => conn.get_db(),
            RedisConnection::Cluster(_) => 0,
        }
    }
}
