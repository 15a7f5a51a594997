//! The Redis connection: direct or via Sentinel, every call bounded, reconnected after an error.

use std::future::Future;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use super::RolloutStore;
use crate::rollout::CoordError;

/// Where the Redis master is: a URL, or whatever the Sentinels name at each (re)connect.
pub(super) enum Source {
    Direct(redis::Client),
    Sentinel {
        sentinel: Box<redis::sentinel::Sentinel>,
        master_name: String,
        node: redis::sentinel::SentinelNodeConnectionInfo,
    },
}

/// The connection and where to re-open it.
pub(super) struct Link {
    pub(super) source: Source,
    pub(super) live: Option<MultiplexedConnection>,
}

impl RolloutStore {
    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut link = self.link.lock().await;
        if let Some(conn) = link.live.as_ref() {
            return Ok(conn.clone());
        }
        let client = match &mut link.source {
            Source::Direct(client) => client.clone(),
            Source::Sentinel {
                sentinel,
                master_name,
                node,
            } => sentinel.async_master_for(master_name, Some(node)).await?,
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        link.live = Some(conn.clone());
        Ok(conn)
    }

    /// Run `f` on the connection within the timeout; after any failure the connection is
    /// dropped, so the next call reconnects.
    pub(super) async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, CoordError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let result = tokio::time::timeout(self.timeout, async {
            let conn = self.connection().await?;
            f(conn).await
        })
        .await;
        let error = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => format!("{what}: redis: {e}"),
            Err(_) => format!(
                "{what}: no answer from redis within {}",
                humantime::format_duration(self.timeout)
            ),
        };
        self.link.lock().await.live = None;
        Err(CoordError(error))
    }
}
