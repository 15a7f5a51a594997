//! The connection: to one Redis, the Sentinels' master or a Redis Cluster ([`Endpoint`]),
//! every call bounded, reconnected after an error; and the wait for a replica after the writes
//! a failover must not lose.
//!
//! Redis replicates asynchronously: a master that acknowledged a write and died before its
//! replica had it leaves a promoted replica without it. For the rollout that would matter for
//! two writes: the leader lease (a lease lost with the old master lets another replica take it
//! while the first still believes it leads) and a judged transition (lost, its window is judged
//! again on the new master). So on a master that has replicas (`ROLE`, learned at connect),
//! the store `WAIT`s for one replica after taking the lease and after each judged write, and a
//! leader judges only under a lease some replica has acknowledged with every judged write made
//! on this connection before it (see `RolloutStore::lead`). The fenced script (holder, epoch,
//! the state's id and version) does the rest on whichever master answers.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use redis::{ErrorKind, ServerErrorKind};

use super::RolloutStore;
use crate::rollout::CoordError;
use crate::store::{Connection, Endpoint};

/// The connection and where to re-open it.
pub(super) struct Link {
    pub(super) endpoint: Endpoint,
    pub(super) live: Option<Connection>,
    /// Replicas of the master holding the namespace, as `ROLE` said at the last connect.
    pub(super) replicas: usize,
}

impl RolloutStore {
    async fn connection(&self) -> Result<Connection, String> {
        let mut link = self.link.lock().await;
        if let Some(conn) = link.live.as_ref() {
            return Ok(conn.clone());
        }
        let mut conn = link
            .endpoint
            .connect(self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        // A Redis that refuses ROLE (a proxy in front of it) is taken as one without replicas.
        link.replicas = conn.replicas_of(&self.keys.rollout()).await.unwrap_or(0);
        link.live = Some(conn.clone());
        Ok(conn)
    }

    /// Run `f` on the connection within the timeout; after any failure the connection is
    /// dropped, so the next call reconnects.
    pub(super) async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, CoordError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let result = tokio::time::timeout(self.timeout, async {
            let conn = self.connection().await?;
            f(conn).await.map_err(|e| e.to_string())
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

    /// Whether every write made so far on this connection reached a replica: `WAIT 1` on the
    /// master holding the namespace, within half the call timeout. `true` at once when that
    /// master has no replica (nothing to lose it to but a restart, which the `ns:meta` marker
    /// catches), or when the server refuses `WAIT` (a managed service may): it is then logged
    /// once and not asked again on this connection.
    pub(super) async fn replicated(&self, what: &str) -> Result<bool, CoordError> {
        let replicas = self.link.lock().await.replicas;
        if replicas == 0 {
            return Ok(true);
        }
        let key = self.keys.rollout();
        let wait = self.timeout / 2;
        let refused = AtomicBool::new(false);
        let refused_ref = &refused;
        let acked = self
            .call(what, |mut conn| async move {
                match conn.wait_for_replicas(&key, 1, wait).await {
                    // `ERR unknown command` or a NOPERM: not a failure of this write.
                    Err(e) if refuses(&e) => {
                        refused_ref.store(true, Ordering::Relaxed);
                        log::warn!(
                            "rollout: the master of {key} refuses WAIT ({e}): judged writes are \
                             not checked on a replica"
                        );
                        Ok(1)
                    }
                    other => other,
                }
            })
            .await?;
        if refused.into_inner() {
            self.link.lock().await.replicas = 0;
        }
        Ok(acked >= 1)
    }
}

/// The server refused the command itself (unknown, or not allowed to this user).
fn refuses(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::NoPerm)
    )
}
