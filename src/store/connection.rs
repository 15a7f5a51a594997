//! Where the store is and the one connection type every caller uses: a single Redis (its URL),
//! the master a set of Sentinels names, or a Redis Cluster learned from seed nodes.
//!
//! [`Endpoint`] is built once from the settings (`discovery.url`, `discovery.cluster`,
//! `discovery.sentinel`, or `ctl --redis URL [--cluster]`) and asked for a [`Connection`] at
//! every (re)connect, so a Sentinel failover is followed by the next reconnect and a cluster
//! connection learns the slots afresh. [`Connection`] is one type over the multiplexed
//! connection of a single Redis and redis-rs's cluster connection (which follows `MOVED`/`ASK`
//! and refreshes its slot map after a node fails); it implements
//! [`redis::aio::ConnectionLike`], so the [`Store`](super::Store) and
//! [`RolloutStore`](super::RolloutStore) methods take it like any other.
//!
//! On a cluster every key of a namespace hashes to one slot (the namespace is a hash tag,
//! `keys.rs`), so each script and `MULTI`/`EXEC` runs on one node. Pub/sub needs no cluster
//! client: a classic `PUBLISH` on any node reaches the subscribers of every node, so
//! [`Endpoint::subscriber`] subscribes on one node, the next seed or known node each time.
//!
//! TLS (`rediss://`) and ACL credentials (`redis://user:password@host`) of the first URL apply
//! to every node of a cluster (redis-rs refuses seeds that disagree on them).

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, Pipeline, RedisFuture};
use redis::{IntoConnectionInfo, Value};

use crate::config::schema::{redact_url, SentinelConfig};

/// The connection to the store: one Redis (direct or the Sentinels' master) or a cluster.
/// Cheap to clone: both kinds multiplex every clone over the same sockets.
#[derive(Clone)]
pub enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

impl Connection {
    /// Send `cmd` to the master holding `key`'s slot (on a single Redis: to it).
    async fn on_master_of(&mut self, key: &str, cmd: Cmd) -> redis::RedisResult<Value> {
        match self {
            Connection::Single(c) => cmd.query_async(c).await,
            Connection::Cluster(c) => {
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await
            }
        }
    }

    /// How many replicas the master holding `key` has connected (`ROLE`): 0 on a Redis without
    /// replicas, where waiting for one would only cost the timeout.
    pub async fn replicas_of(&mut self, key: &str) -> redis::RedisResult<usize> {
        let reply = self.on_master_of(key, redis::cmd("ROLE")).await?;
        // ["master", offset, [[ip, port, offset], ...]]; a replica answers ["slave", ...].
        Ok(match reply {
            Value::Array(parts) => match parts.get(2) {
                Some(Value::Array(replicas)) => replicas.len(),
                _ => 0,
            },
            _ => 0,
        })
    }

    /// `WAIT replicas timeout` on the master holding `key`, on this connection (the one that
    /// wrote): how many replicas acknowledged every write made on it so far.
    pub async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: usize,
        timeout: Duration,
    ) -> redis::RedisResult<usize> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        let reply = self.on_master_of(key, cmd).await?;
        Ok(match reply {
            Value::Int(n) => usize::try_from(n).unwrap_or(0),
            _ => 0,
        })
    }
}

/// Why no connection was made. The message is the cause alone (callers add the URL).
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The cause is in the message, not a `#[source]`, so a chain printer shows it once.
    #[error("sentinel master `{master_name}`: {error}")]
    Sentinel {
        master_name: String,
        error: Box<EndpointError>,
    },
}

/// Where the store is (see the module documentation).
pub struct Endpoint {
    kind: Kind,
    /// The URLs as given, password hidden, for logs and messages.
    redacted: String,
    /// Cluster: the seeds and then the nodes learned at the last connect; the subscriber
    /// tries them in turn, starting after the one it used last.
    nodes: Vec<ConnectionInfo>,
    seeds: usize,
    next_node: usize,
}

enum Kind {
    Direct(redis::Client),
    Sentinel {
        sentinel: Box<redis::sentinel::Sentinel>,
        master_name: String,
        /// Database and credentials of the URL, used on the master.
        node: redis::sentinel::SentinelNodeConnectionInfo,
    },
    Cluster(Box<ClusterClient>),
}

impl Endpoint {
    /// The store at `urls` (one URL unless `cluster`; a cluster's seed nodes otherwise), or at
    /// the master `sentinel` names. Nothing is connected yet.
    pub fn open(
        urls: &[String],
        cluster: bool,
        sentinel: Option<&SentinelConfig>,
    ) -> redis::RedisResult<Endpoint> {
        let redacted = urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(",");
        let first = urls.first().ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no Redis URL"))
        })?;
        let kind = if cluster {
            let infos = urls
                .iter()
                .map(|u| u.as_str().into_connection_info())
                .collect::<redis::RedisResult<Vec<_>>>()?;
            let client = ClusterClient::builder(infos.clone()).build()?;
            return Ok(Endpoint {
                kind: Kind::Cluster(Box::new(client)),
                redacted,
                seeds: infos.len(),
                nodes: infos,
                next_node: 0,
            });
        } else if urls.len() > 1 {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "several URLs are seed nodes of a Redis Cluster: set cluster",
            )));
        } else {
            let client = redis::Client::open(first.as_str())?;
            match sentinel {
                None => Kind::Direct(client),
                Some(s) => Kind::Sentinel {
                    sentinel: Box::new(redis::sentinel::Sentinel::build(s.nodes.clone())?),
                    master_name: s.master_name.clone(),
                    node: redis::sentinel::SentinelNodeConnectionInfo::default()
                        .set_redis_connection_info(
                            client.get_connection_info().redis_settings().clone(),
                        ),
                },
            }
        };
        Ok(Endpoint {
            kind,
            redacted,
            nodes: Vec::new(),
            seeds: 0,
            next_node: 0,
        })
    }

    /// A single Redis at `client`.
    pub fn direct(client: redis::Client) -> Endpoint {
        let redacted = redact_url(&client.get_connection_info().addr().to_string());
        Endpoint {
            kind: Kind::Direct(client),
            redacted,
            nodes: Vec::new(),
            seeds: 0,
            next_node: 0,
        }
    }

    /// The URLs, passwords hidden.
    pub fn describe(&self) -> &str {
        &self.redacted
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster(_))
    }

    /// A connection whose every call is bounded by `timeout` (connecting included).
    pub async fn connect(&mut self, timeout: Duration) -> Result<Connection, EndpointError> {
        if let Kind::Cluster(client) = &self.kind {
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout);
            let mut conn = bounded(timeout, client.get_async_connection_with_config(config))
                .await
                .map(Connection::Cluster)?;
            self.learn_nodes(&mut conn, timeout).await;
            return Ok(conn);
        }
        let client = self.single_client(timeout).await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        bounded(
            timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map(Connection::Single)
    }

    /// A pub/sub connection: to the Redis (or the Sentinels' master), or to one node of a
    /// cluster, which hears every node's `PUBLISH`.
    pub async fn subscriber(&mut self, timeout: Duration) -> Result<PubSub, EndpointError> {
        if !matches!(self.kind, Kind::Cluster(_)) {
            let client = self.single_client(timeout).await?;
            return bounded(timeout, client.get_async_pubsub()).await;
        }
        let mut last = None;
        for _ in 0..self.nodes.len() {
            let i = self.next_node % self.nodes.len();
            self.next_node = i + 1;
            let attempt = async {
                let client = redis::Client::open(self.nodes[i].clone())?;
                bounded(timeout, client.get_async_pubsub()).await
            };
            match attempt.await {
                Ok(pubsub) => return Ok(pubsub),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(EndpointError::Timeout(timeout)))
    }

    async fn single_client(&mut self, timeout: Duration) -> Result<redis::Client, EndpointError> {
        match &mut self.kind {
            Kind::Direct(client) => Ok(client.clone()),
            Kind::Sentinel {
                sentinel,
                master_name,
                node,
            } => bounded(timeout, sentinel.async_master_for(master_name, Some(node)))
                .await
                .map_err(|e| EndpointError::Sentinel {
                    master_name: master_name.clone(),
                    error: Box::new(e),
                }),
            Kind::Cluster(_) => Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a cluster has no single client",
            ))
            .into()),
        }
    }

    /// Remember the cluster's live nodes (`CLUSTER NODES`) beside the seeds, so the subscriber
    /// can move on to a node that joined after start. Best effort: the seeds stay.
    async fn learn_nodes(&mut self, conn: &mut Connection, timeout: Duration) {
        let Some(template) = self.nodes.first().cloned() else {
            return;
        };
        let reply: Result<Result<String, _>, _> = tokio::time::timeout(
            timeout,
            redis::cmd("CLUSTER").arg("NODES").query_async(conn),
        )
        .await;
        let Ok(Ok(text)) = reply else { return };
        let mut nodes: Vec<ConnectionInfo> = self.nodes[..self.seeds].to_vec();
        for (host, port) in live_nodes(&text) {
            let addr = match template.addr() {
                ConnectionAddr::TcpTls {
                    insecure,
                    tls_params,
                    ..
                } => ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: *insecure,
                    tls_params: tls_params.clone(),
                },
                _ => ConnectionAddr::Tcp(host, port),
            };
            if !nodes.iter().any(|n| *n.addr() == addr) {
                nodes.push(template.clone().set_addr(addr));
            }
        }
        self.nodes = nodes;
    }
}

/// `host:port` of every node of a `CLUSTER NODES` reply not flagged failing or address-less.
fn live_nodes(text: &str) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_id), Some(addr), Some(flags)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if flags
            .split(',')
            .any(|f| matches!(f, "fail" | "fail?" | "noaddr" | "handshake"))
        {
            continue;
        }
        // ip:port@cport[,hostname]
        let hostport = addr.split('@').next().unwrap_or("");
        let Some((host, port)) = hostport.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        if host.is_empty() || port == 0 {
            continue;
        }
        out.push((host.to_string(), port));
    }
    out
}

/// Await `fut` at most `timeout`.
async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, EndpointError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map_err(EndpointError::Redis),
        Err(_) => Err(EndpointError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_nodes_skips_failed_and_addressless() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,host-b master,fail - 0 0 2 connected
c3 :0@0 master,noaddr - 0 0 3 disconnected
d4 10.0.0.4:7003@17003 slave a1 0 0 1 connected
";
        assert_eq!(
            live_nodes(text),
            vec![
                ("127.0.0.1".to_string(), 7000),
                ("10.0.0.4".to_string(), 7003)
            ]
        );
    }

    #[test]
    fn several_urls_need_cluster() {
        let urls = vec!["redis://a:1".to_string(), "redis://b:2".to_string()];
        assert!(Endpoint::open(&urls, false, None).is_err());
        let e = Endpoint::open(&urls, true, None).expect("cluster");
        assert!(e.is_cluster());
        assert_eq!(e.describe(), "redis://a:1,redis://b:2");
    }

    #[test]
    fn seeds_must_agree_on_credentials() {
        let urls = vec![
            "redis://u:p1@a:1".to_string(),
            "redis://u:p2@b:2".to_string(),
        ];
        assert!(Endpoint::open(&urls, true, None).is_err());
    }
}
