//! A bounded background load: a few threads send GETs through one or more proxies, each
//! request as one of `users` user ids (the user cookie), and record what each user saw.
//!
//! The rollout tests use it to put both pools under traffic and to check stickiness: every
//! answer is kept as (user, pool, status, time), so a test can ask "did any user go canary ->
//! production -> canary" or "which users were in canary before the rollback".
//! It stops on drop, on [`Load::stop`], or by itself after `max_run`, whichever comes first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the load sends; [`LoadSpec::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Proxy base URLs (`http://127.0.0.1:PORT`); threads take them in turn.
    pub bases: Vec<String>,
    /// The path requested (e.g. `/` or `/slow?ms=5`).
    pub path: String,
    /// Distinct user ids, `u-0` .. `u-{users-1}`, sent in the `cookie` cookie.
    pub users: usize,
    /// The user cookie's name (`routing.user_cookie`, `canary_uid` by default).
    pub cookie: String,
    pub threads: usize,
    /// Pause after each request of a thread: bounds the rate at about threads / pause.
    pub pause: Duration,
    /// The load stops by itself after this long.
    pub max_run: Duration,
    /// Send each user as its own client address (`X-Forwarded-For: 10.x.y.z`), for a proxy
    /// that trusts 127.0.0.1 (`trusted_proxies`): the rollout counts per client.
    pub forwarded_for: bool,
}

impl LoadSpec {
    pub fn new(bases: Vec<String>) -> LoadSpec {
        LoadSpec {
            bases,
            path: "/".to_string(),
            users: 2000,
            cookie: "canary_uid".to_string(),
            threads: 4,
            pause: Duration::from_millis(5),
            max_run: Duration::from_secs(120),
            forwarded_for: false,
        }
    }
}

/// One answer the load got.
#[derive(Debug, Clone)]
pub struct Seen {
    pub user: usize,
    /// `X-Canary-Pool` of the answer, `None` for a transport error or no header.
    pub pool: Option<String>,
    /// 0 for a transport error.
    pub status: u16,
    /// Since the load started.
    pub at: Duration,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Load {
    pub fn start(spec: LoadSpec) -> Load {
        assert!(!spec.bases.is_empty() && spec.users > 0 && spec.threads > 0);
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let next_user = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let threads = (0..spec.threads)
            .map(|t| {
                let (spec, stop, seen, next_user) =
                    (spec.clone(), stop.clone(), seen.clone(), next_user.clone());
                std::thread::spawn(move || {
                    let base = &spec.bases[t % spec.bases.len()];
                    let url = format!("{base}{}", spec.path);
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < spec.max_run {
                        let user = next_user.fetch_add(1, Ordering::Relaxed) % spec.users;
                        let cookie = format!("{}=u-{user}", spec.cookie);
                        let xff =
                            format!("10.{}.{}.{}", user >> 16 & 255, user >> 8 & 255, user & 255);
                        let mut headers = vec![("cookie", cookie.as_str())];
                        if spec.forwarded_for {
                            headers.push(("x-forwarded-for", xff.as_str()));
                        }
                        let (status, pool) = match super::try_get(&url, &headers) {
                            Ok(r) => (r.status, r.pool().map(str::to_string)),
                            Err(_) => (0, None),
                        };
                        let at = started.elapsed();
                        if let Ok(mut s) = seen.lock() {
                            s.push(Seen {
                                user,
                                pool,
                                status,
                                at,
                            });
                        }
                        std::thread::sleep(spec.pause);
                    }
                })
            })
            .collect();
        Load {
            stop,
            seen,
            threads,
            started,
        }
    }

    /// Time since the load started (the clock of [`Seen::at`]).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Everything seen so far, in the order recorded.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Answers seen so far by pool (`X-Canary-Pool`) and in all.
    pub fn count(&self, pool: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.pool.as_deref() == Some(pool))
            .count()
    }

    /// Users whose answers went canary, then production, then canary again: a ramp must never
    /// produce one (each step only adds users).
    pub fn flip_flops(&self) -> Vec<usize> {
        let mut by_user: HashMap<usize, Vec<&str>> = HashMap::new();
        let seen = self.seen();
        for s in &seen {
            if let Some(p) = s.pool.as_deref() {
                let v = by_user.entry(s.user).or_default();
                if v.last() != Some(&p) {
                    v.push(p);
                }
            }
        }
        let mut out: Vec<usize> = by_user
            .into_iter()
            .filter(|(_, v)| {
                v.windows(3)
                    .any(|w| w == ["canary", "production", "canary"])
            })
            .map(|(u, _)| u)
            .collect();
        out.sort_unstable();
        out
    }

    /// Stop the threads and wait for them (at most one request each).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}
