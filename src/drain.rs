//! The requests in flight, and a wait for none to be left: what a SIGTERM drain needs.
//!
//! The request path counts with two atomic operations and never takes a lock. Once a drain has
//! begun ([`InFlight::wait_idle`]), the request that brings the count to zero also wakes the
//! waiter, so the drain ends the moment the last request has finished (its access-log line
//! queued), not at the next poll.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::SeqCst};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Requests between `request_filter` and the end of `logging`.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicI64,
    /// Set by the first [`InFlight::wait_idle`]; from then on the last request to leave takes
    /// the lock and wakes the waiter.
    draining: AtomicBool,
    lock: Mutex<()>,
    idle: Condvar,
}

impl InFlight {
    pub fn new() -> InFlight {
        InFlight::default()
    }

    /// A request began.
    pub fn enter(&self) {
        self.count.fetch_add(1, SeqCst);
    }

    /// A request ended (after everything it leaves behind, its log line included, is done).
    pub fn leave(&self) {
        // SeqCst on both sides: either this sees `draining`, or the waiter sees the new count.
        if self.count.fetch_sub(1, SeqCst) == 1 && self.draining.load(SeqCst) {
            let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.idle.notify_all();
        }
    }

    /// The requests in flight now.
    pub fn get(&self) -> i64 {
        self.count.load(SeqCst)
    }

    /// Wait until no request is in flight or `timeout` has passed; true when idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.draining.store(true, SeqCst);
        let mut held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.count.load(SeqCst) <= 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            held = match self.idle.wait_timeout(held, left) {
                Ok((held, _)) => held,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn idle_at_once_when_nothing_is_in_flight() {
        let f = InFlight::new();
        f.enter();
        f.leave();
        assert!(f.wait_idle(Duration::ZERO));
    }

    #[test]
    fn times_out_while_a_request_stays() {
        let f = InFlight::new();
        f.enter();
        assert!(!f.wait_idle(Duration::from_millis(30)));
        assert_eq!(f.get(), 1);
    }

    #[test]
    fn the_last_request_to_leave_wakes_the_waiter() {
        let f = Arc::new(InFlight::new());
        for _ in 0..3 {
            f.enter();
        }
        let waiter = {
            let f = f.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                (f.wait_idle(Duration::from_secs(60)), start.elapsed())
            })
        };
        // Bounded: the waiter must not be woken before the last leave, whatever the timing.
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(20));
            assert!(!waiter.is_finished() || f.get() == 0);
            f.leave();
        }
        let (idle, waited) = waiter.join().expect("waiter thread");
        assert!(idle);
        // Woken by the leave, not by the 60 s timeout.
        assert!(waited < Duration::from_secs(30), "{waited:?}");
    }
}
