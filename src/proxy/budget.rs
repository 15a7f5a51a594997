//! Upstream budgets for HTTP/2: what one client connection, and all of them together, may hold.
//!
//! An HTTP/1 connection carries one request at a time, so `client.max_connections` bounds its
//! upstream work. An HTTP/2 connection carries up to `client.h2_max_concurrent_streams`
//! requests at once, and a client that never opens its flow-control window keeps each of them
//! holding an upstream connection and a buffered response until `client.send_timeout`. So each
//! HTTP/2 stream takes a [`Place`] before any upstream work: one of
//! `client.max_upstream_per_connection` places of its own connection, then one of
//! `client.max_upstream_connections` places of the whole process. A stream that finds no place
//! within `client.upstream_queue_timeout` is answered 503; the places are handed out in arrival
//! order (Tokio's semaphores are fair), so waiting streams are served as earlier ones end.
//!
//! "One connection" is the pair of socket addresses (client, listener), unique among live TCP
//! connections. Its entry exists only while a stream of that connection holds or waits for a
//! place (a count of users, removed at 0), so entries cannot outlive their connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::metrics::BudgetLabel;

/// Which connection a stream belongs to: (client address, listener address).
pub type ConnKey = (Option<SocketAddr>, Option<SocketAddr>);

/// A cheap-clone handle on the budgets shared by every listener of the process.
#[derive(Clone)]
pub struct UpstreamBudget {
    shared: Arc<Shared>,
}

struct Shared {
    per_connection: usize,
    total: Arc<Semaphore>,
    conns: Mutex<HashMap<ConnKey, ConnEntry>>,
    in_flight: IntGauge,
}

struct ConnEntry {
    places: Arc<Semaphore>,
    /// Streams of this connection holding or waiting for a place.
    users: usize,
}

/// A stream's place in both budgets; given back when dropped (the request's context ends).
pub struct Place {
    _conn: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
    _user: ConnUser,
    in_flight: IntGauge,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

/// One stream counted in its connection's entry; the last one out removes the entry.
struct ConnUser {
    shared: Arc<Shared>,
    key: ConnKey,
}

impl Drop for ConnUser {
    fn drop(&mut self) {
        let mut conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = conns.get_mut(&self.key) {
            entry.users -= 1;
            if entry.users == 0 {
                conns.remove(&self.key);
            }
        }
    }
}

impl UpstreamBudget {
    /// `in_flight` is set to the number of places taken.
    pub fn new(per_connection: usize, total: usize, in_flight: IntGauge) -> UpstreamBudget {
        UpstreamBudget {
            shared: Arc::new(Shared {
                per_connection: per_connection.max(1),
                total: Arc::new(Semaphore::new(total.max(1))),
                conns: Mutex::new(HashMap::new()),
                in_flight,
            }),
        }
    }

    /// Waits up to `wait` for a place of connection `key` and one of the process; `Err` names
    /// the budget that had none in time.
    pub async fn acquire(&self, key: ConnKey, wait: Duration) -> Result<Place, BudgetLabel> {
        let deadline = Instant::now() + wait;
        let (places, user) = self.join(key);
        let conn = tokio::time::timeout_at(deadline, places.acquire_owned())
            .await
            .map_err(|_| BudgetLabel::Connection)?
            // Never closed: only a closed semaphore fails.
            .map_err(|_| BudgetLabel::Connection)?;
        let total = tokio::time::timeout_at(deadline, self.shared.total.clone().acquire_owned())
            .await
            .map_err(|_| BudgetLabel::Total)?
            .map_err(|_| BudgetLabel::Total)?;
        self.shared.in_flight.inc();
        Ok(Place {
            _conn: conn,
            _total: total,
            _user: user,
            in_flight: self.shared.in_flight.clone(),
        })
    }

    fn join(&self, key: ConnKey) -> (Arc<Semaphore>, ConnUser) {
        let mut conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        let entry = conns.entry(key).or_insert_with(|| ConnEntry {
            places: Arc::new(Semaphore::new(self.shared.per_connection)),
            users: 0,
        });
        entry.users += 1;
        let places = entry.places.clone();
        drop(conns);
        let user = ConnUser {
            shared: self.shared.clone(),
            key,
        };
        (places, user)
    }

    /// Connections with a stream holding or waiting for a place.
    pub fn connections(&self) -> usize {
        self.shared
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> ConnKey {
        (Some(SocketAddr::from(([127, 0, 0, 1], port))), None)
    }

    fn budget(per_conn: usize, total: usize) -> UpstreamBudget {
        let gauge = IntGauge::new("g", "g").expect("gauge");
        UpstreamBudget::new(per_conn, total, gauge)
    }

    #[tokio::test]
    async fn a_connection_gets_its_places_then_waits_then_is_refused() {
        let b = budget(2, 10);
        let wait = Duration::from_millis(50);
        let p1 = b.acquire(key(1), wait).await.expect("first");
        let _p2 = b.acquire(key(1), wait).await.expect("second");
        assert_eq!(
            b.acquire(key(1), wait).await.err(),
            Some(BudgetLabel::Connection)
        );
        // Another connection is not affected.
        let _other = b.acquire(key(2), wait).await.expect("other connection");
        drop(p1);
        let _p3 = b.acquire(key(1), wait).await.expect("a place freed");
        assert_eq!(b.shared.in_flight.get(), 3);
    }

    #[tokio::test]
    async fn the_total_bounds_all_connections() {
        let b = budget(4, 3);
        let wait = Duration::from_millis(50);
        let held: Vec<_> = [1, 2, 3].into_iter().map(key).collect();
        let mut places = Vec::new();
        for k in held {
            places.push(b.acquire(k, wait).await.expect("place"));
        }
        assert_eq!(
            b.acquire(key(4), wait).await.err(),
            Some(BudgetLabel::Total)
        );
    }

    #[tokio::test]
    async fn entries_leave_with_their_last_stream() {
        let b = budget(1, 10);
        let wait = Duration::from_millis(20);
        let p = b.acquire(key(1), wait).await.expect("place");
        // A waiter that gives up leaves no entry of its own.
        assert!(b.acquire(key(1), wait).await.is_err());
        assert_eq!(b.connections(), 1);
        drop(p);
        assert_eq!(b.connections(), 0);
        let refused = budget(1, 1);
        let _hold = refused.acquire(key(1), wait).await.expect("place");
        assert!(refused.acquire(key(2), wait).await.is_err());
        assert_eq!(
            refused.connections(),
            1,
            "the refused connection's entry is gone"
        );
    }
}
