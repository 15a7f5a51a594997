// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! The listening service
//!
//! A [Service] (listening service) responds to incoming requests on its endpoints.
//! Each [Service] can be configured with custom application logic (e.g. an `HTTPProxy`) and one or
//! more endpoints to listen to.

use crate::apps::ServerApp;
use crate::listeners::tls::TlsSettings;
#[cfg(feature = "connection_filter")]
use crate::listeners::AcceptAllFilter;
use crate::listeners::{
    ConnectionFilter, ListenerConfig, Listeners, ServerAddress, TcpSocketOptions, TransportStack,
    UninitializedStream,
};
use crate::protocols::Stream;
#[cfg(unix)]
use crate::server::ListenFds;
use crate::server::{RuntimeOpts, ShutdownWatch};
use crate::services::Service as ServiceTrait;

use async_trait::async_trait;
use log::{debug, error, info, warn};
use pingora_error::Result;
use pingora_runtime::current_handle;
use pingora_timeout::timeout;
use std::collections::{HashMap, VecDeque};
use std::fs::Permissions;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Override the runtime options used to run a listening service.
pub type RuntimeOptsOverride = Arc<dyn Fn(&RuntimeOpts) -> Option<RuntimeOpts> + Send + Sync>;

/// A cap on the connections that one or more listening services hold at once.
///
/// A connection accepted while `max` are open is closed at once, counted in
/// [`Self::refused()`] and logged at most once a second. A connection holds its place from
/// accept until its task ends, whatever the reason (handshake failure or timeout, error, panic).
/// Share one `Arc<ConnectionLimit>` between services for a common cap; read the getters to
/// export metrics.
///
/// With [`Self::shed_idle()`], a connection accepted at the limit first closes the connection
/// that has been idle longest (nginx frees idle keep-alive connections the same way), so
/// silent sockets cannot keep out clients that send requests. A connection is idle from accept
/// until its first complete request head (TLS handshake, protocol detection, HTTP/2 preface and
/// a head sent slowly all count as idle), between two HTTP/1 requests, and while an HTTP/2
/// connection has no open stream. A connection with a request in flight is never shed.
/// With [`Self::per_address()`] one peer address holds at most that many places (sheds its own
/// longest-idle connection first, then is refused).
#[derive(Debug)]
pub struct ConnectionLimit {
    max: usize,
    active: AtomicUsize,
    refused: AtomicU64,
    shed: AtomicU64,
    created: Instant,
    /// Seconds after `created`, plus one, of the last refusal logged (0: never).
    last_refusal_log: AtomicU64,
    shed_idle: bool,
    per_address: usize,
    /// Places held per peer address, when `per_address` is set.
    by_address: Mutex<HashMap<IpAddr, usize>>,
    /// Connections in the order they became idle, oldest first, each with the idle period it
    /// was queued for; entries of a connection that has since turned busy, idle again or ended
    /// are skipped (and dropped) when a connection must be shed.
    idle: Mutex<VecDeque<(Weak<Slot>, u64)>>,
    client_errors: [AtomicU64; ClientError::ALL.len()],
}

/// What a client did wrong, counted in [`ConnectionLimit::client_errors()`] and logged at debug
/// level only: any client can cause these at will, so they must not fill the error log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// The TLS handshake failed (not TLS, bad ClientHello, no shared cipher, ...).
    TlsHandshake,
    /// The TLS handshake, the h2c detection or the HTTP/2 preface missed its deadline.
    HandshakeTimeout,
    /// The HTTP/2 connection preface or first SETTINGS was invalid.
    H2Handshake,
    /// An idle connection closed to make room at the connection limit.
    IdleShed,
}

impl ClientError {
    /// Every kind, in index order.
    pub const ALL: [ClientError; 4] = [
        ClientError::TlsHandshake,
        ClientError::HandshakeTimeout,
        ClientError::H2Handshake,
        ClientError::IdleShed,
    ];

    /// A short snake_case name for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientError::TlsHandshake => "tls_handshake",
            ClientError::HandshakeTimeout => "handshake_timeout",
            ClientError::H2Handshake => "h2_handshake",
            ClientError::IdleShed => "idle_shed",
        }
    }
}

/// The state word of a [`Slot`]: the shed bit, the HTTP/1 request bit and the count of open
/// HTTP/2 streams. The connection is idle when the word is 0.
const SHED: u32 = 1 << 31;
const H1_REQUEST: u32 = 1 << 30;

/// One connection's entry in a [`ConnectionLimit`]: whether it is idle, and how to close it.
#[derive(Debug)]
pub(crate) struct Slot {
    state: AtomicU32,
    /// Bumped each time the connection turns idle: names the idle period a queue entry is for.
    idle_period: AtomicU64,
    shed: Notify,
    /// Whether the place was given back: when shed (its task ends a moment later) or dropped.
    released: AtomicBool,
    address: Option<IpAddr>,
    limit: Arc<ConnectionLimit>,
}

tokio::task_local! {
    /// The slot of the connection whose task is running (unset without a connection limit).
    static CONNECTION: Arc<Slot>;
}

impl Slot {
    /// The slot of the current connection task, if its service has a connection limit.
    pub(crate) fn current() -> Option<Arc<Slot>> {
        CONNECTION.try_with(|s| s.clone()).ok()
    }

    /// An HTTP/1 request head was read: the connection is busy until [`Self::h1_request_ended`].
    /// `false` when the connection is being shed (it must not start the request).
    pub(crate) fn h1_request_started(&self) -> bool {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & SHED == 0).then_some(s | H1_REQUEST)
            })
            .is_ok()
    }

    /// The HTTP/1 request is done; the connection waits for the next one (idle).
    pub(crate) fn h1_request_ended(self: &Arc<Self>) {
        let before = self.state.fetch_and(!H1_REQUEST, Ordering::AcqRel);
        if before == H1_REQUEST {
            self.became_idle();
        }
    }

    /// An HTTP/2 stream was opened. `false` when the connection is being shed.
    pub(crate) fn h2_stream_started(&self) -> bool {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & SHED == 0).then_some(s + 1)
            })
            .is_ok()
    }

    /// An HTTP/2 stream ended (only after a `true` from [`Self::h2_stream_started`]).
    pub(crate) fn h2_stream_ended(self: &Arc<Self>) {
        if self.state.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.became_idle();
        }
    }

    /// Count a client error of this connection.
    pub(crate) fn client_error(&self, kind: ClientError) {
        self.limit.client_error(kind);
    }

    fn became_idle(self: &Arc<Self>) {
        let period = self.idle_period.fetch_add(1, Ordering::AcqRel) + 1;
        self.limit.queue_idle(self, period);
    }

    /// Give the place back (once): at shed time, so the new connection gets it exactly, or when
    /// the permit is dropped.
    fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        let limit = &self.limit;
        limit.active.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.address {
            let mut by = limit.lock_by_address();
            if let Some(n) = by.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    by.remove(&ip);
                }
            }
        }
    }

    /// Mark this connection shed if it is idle now and in the idle period `period`.
    fn try_shed(&self, period: u64) -> bool {
        self.idle_period.load(Ordering::Acquire) == period
            && self
                .state
                .compare_exchange(0, SHED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

impl ConnectionLimit {
    /// A limit of `max` connections open at once (0 refuses every connection).
    pub fn new(max: usize) -> Self {
        ConnectionLimit {
            max,
            active: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            created: Instant::now(),
            last_refusal_log: AtomicU64::new(0),
            shed_idle: false,
            per_address: 0,
            by_address: Mutex::new(HashMap::new()),
            idle: Mutex::new(VecDeque::new()),
            client_errors: Default::default(),
        }
    }

    /// At the limit, close the longest-idle connection to admit a new one (see the type's doc).
    pub fn shed_idle(mut self) -> Self {
        self.shed_idle = true;
        self
    }

    /// At most `n` connections from one peer address (0: no such limit).
    pub fn per_address(mut self, n: usize) -> Self {
        self.per_address = n;
        self
    }

    /// The most connections open at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections closed at accept because `max` were open, since this limit was created.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Idle connections closed to admit a new one, since this limit was created.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// Client errors of `kind` on connections under this limit, since it was created.
    pub fn client_errors(&self, kind: ClientError) -> u64 {
        self.client_errors[kind as usize].load(Ordering::Relaxed)
    }

    /// Count a client error of `kind`.
    pub fn client_error(&self, kind: ClientError) {
        self.client_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Take a place for a new connection, `None` when `max` are open. The place is given
    /// back when the returned permit is dropped.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnectionPermit> {
        self.try_acquire_from(None)
    }

    /// Take a place for a new connection from `address`, shedding an idle connection when that
    /// is allowed and needed; `None` when no place can be had.
    pub fn try_acquire_from(self: &Arc<Self>, address: Option<IpAddr>) -> Option<ConnectionPermit> {
        let address = address.filter(|_| self.per_address > 0);
        if let Some(ip) = address {
            let held = self.lock_by_address().get(&ip).copied().unwrap_or(0);
            if held >= self.per_address && !self.shed_one(Some(ip)) {
                return None;
            }
        }
        let took = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |active| {
                (active < self.max).then_some(active + 1)
            })
            .is_ok();
        if !took {
            // A shed connection gives its place back at once (its socket closes a moment
            // later, when its task sees it): the new connection takes that place.
            if self.max == 0 || !self.shed_one(None) {
                return None;
            }
            self.active.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(ip) = address {
            *self.lock_by_address().entry(ip).or_insert(0) += 1;
        }
        let slot = Arc::new(Slot {
            state: AtomicU32::new(0),
            idle_period: AtomicU64::new(0),
            shed: Notify::new(),
            released: AtomicBool::new(false),
            address,
            limit: self.clone(),
        });
        self.queue_idle(&slot, 0);
        Some(ConnectionPermit { slot })
    }

    fn lock_by_address(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.by_address.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, VecDeque<(Weak<Slot>, u64)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queue_idle(&self, slot: &Arc<Slot>, period: u64) {
        if !self.shed_idle && self.per_address == 0 {
            return;
        }
        let mut idle = self.lock_idle();
        idle.push_back((Arc::downgrade(slot), period));
        // Entries go stale as connections turn busy and end; keep the queue near the count of
        // connections so it cannot grow with requests.
        if idle.len() > 64 + 2 * self.active() {
            idle.retain(|(s, p)| {
                s.upgrade().is_some_and(|s| {
                    s.idle_period.load(Ordering::Acquire) == *p
                        && s.state.load(Ordering::Acquire) == 0
                })
            });
        }
    }

    /// Close the longest-idle connection (of `address` when given). Whether one was found.
    fn shed_one(&self, address: Option<IpAddr>) -> bool {
        if !self.shed_idle && address.is_none() {
            return false;
        }
        let victim = {
            let mut idle = self.lock_idle();
            let mut found = None;
            let mut i = 0;
            while i < idle.len() {
                let (weak, period) = &idle[i];
                let Some(slot) = weak.upgrade() else {
                    idle.remove(i);
                    continue;
                };
                if address.is_some() && slot.address != address {
                    i += 1;
                    continue;
                }
                let period = *period;
                idle.remove(i);
                if slot.try_shed(period) {
                    found = Some(slot);
                    break;
                }
            }
            found
        };
        match victim {
            Some(slot) => {
                slot.release();
                slot.shed.notify_one();
                self.shed.fetch_add(1, Ordering::Relaxed);
                self.client_error(ClientError::IdleShed);
                true
            }
            None => false,
        }
    }

    /// Count a refused connection; log it unless a refusal was logged less than 1 s ago.
    /// Returns whether it logged.
    fn refuse(&self, what: &str) -> bool {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.created.elapsed().as_secs() + 1;
        let last = self.last_refusal_log.load(Ordering::Relaxed);
        if now > last
            && self
                .last_refusal_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                "{what}: connection limit of {} reached, closing new connections ({refused} refused so far)",
                self.max
            );
            return true;
        }
        false
    }
}

/// A place held in a [`ConnectionLimit`] by one connection, given back on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    slot: Arc<Slot>,
}

impl ConnectionPermit {
    /// Run `work` (the connection's whole life) as this connection: code below can mark it
    /// busy or idle, and it ends early (dropping the connection) when the limit sheds it.
    async fn run<F: std::future::Future<Output = ()>>(&self, work: F) {
        let slot = self.slot.clone();
        CONNECTION
            .scope(slot.clone(), async move {
                tokio::select! {
                    biased;
                    _ = slot.shed.notified() => debug!("idle connection closed at the connection limit"),
                    _ = work => {}
                }
            })
            .await
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.slot.release();
    }
}

/// Whether an accept() error means the process or the system ran out of a resource (file
/// descriptors, socket buffers, memory). accept() then fails again at once until some is
/// released, so the accept loop must back off instead of spinning.
fn is_resource_exhaustion(errno: i32) -> bool {
    #[cfg(unix)]
    {
        matches!(
            errno,
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
        )
    }
    #[cfg(not(unix))]
    {
        // 24: too many open files
        errno == 24
    }
}

/// Whether `e` is the error Tokio returns for I/O on a resource whose runtime is shutting down
/// (its I/O driver is gone): an `Other` error without an OS error code, with Tokio's message.
fn is_runtime_shutdown(e: &std::io::Error) -> bool {
    /// Tokio 1.x's `RUNTIME_SHUTTING_DOWN_ERROR` (not exported; `tests` checks it still is).
    const TOKIO_SHUTTING_DOWN: &str = "A Tokio 1.x context was found, but it is being shutdown.";
    e.raw_os_error().is_none()
        && e.kind() == std::io::ErrorKind::Other
        && e.to_string() == TOKIO_SHUTTING_DOWN
}

/// The type of service that is associated with a list of listening endpoints and a particular application
pub struct Service<A> {
    name: String,
    listeners: Listeners,
    app_logic: Option<A>,
    /// The number of preferred threads. `None` to follow global setting.
    pub threads: Option<usize>,
    runtime_opts_override: Option<RuntimeOptsOverride>,
    connection_limit: Option<Arc<ConnectionLimit>>,
    handshake_timeout: Duration,
    #[cfg(feature = "connection_filter")]
    connection_filter: Arc<dyn ConnectionFilter>,
}

/// How long a new connection may take to finish its TLS handshake unless
/// [`Service::set_handshake_timeout`] says otherwise.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

impl<A> Service<A> {
    /// Create a new [`Service`] with the given application (see [`crate::apps`]).
    pub fn new(name: String, app_logic: A) -> Self {
        Service {
            name,
            listeners: Listeners::new(),
            app_logic: Some(app_logic),
            threads: None,
            runtime_opts_override: None,
            connection_limit: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            #[cfg(feature = "connection_filter")]
            connection_filter: Arc::new(AcceptAllFilter),
        }
    }

    /// Create a new [`Service`] with the given application (see [`crate::apps`]) and the given
    /// [`Listeners`].
    pub fn with_listeners(name: String, listeners: Listeners, app_logic: A) -> Self {
        Service {
            name,
            listeners,
            app_logic: Some(app_logic),
            threads: None,
            runtime_opts_override: None,
            connection_limit: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            #[cfg(feature = "connection_filter")]
            connection_filter: Arc::new(AcceptAllFilter),
        }
    }

    /// Set a runtime options override for this service.
    ///
    /// Returning [`None`] from the override uses the global runtime options.
    pub fn set_runtime_opts_override(&mut self, override_fn: RuntimeOptsOverride) {
        self.runtime_opts_override = Some(override_fn);
    }

    /// Cap the connections this service holds at once, across all its endpoints; see
    /// [`ConnectionLimit`]. Has no effect once the service started.
    pub fn set_connection_limit(&mut self, limit: Arc<ConnectionLimit>) {
        self.connection_limit = Some(limit);
    }

    /// The deadline for a new connection's TLS handshake, from accept (default 60 s). Has no
    /// effect once the service started.
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    /// Set a custom connection filter for this service.
    ///
    /// The connection filter will be applied to all incoming connections
    /// on all endpoints of this service. Connections that don't pass the
    /// filter will be dropped immediately at the TCP level, before TLS
    /// handshake or any HTTP processing.
    ///
    /// # Feature Flag
    ///
    /// This method requires the `connection_filter` feature to be enabled.
    /// When the feature is disabled, this method is a no-op.
    ///
    /// # Example
    ///
    /// ```rust,no_run
    /// # use std::sync::Arc;
    /// # use pingora_core::listeners::{ConnectionFilter, AcceptAllFilter};
    /// # struct MyService;
    /// # impl MyService {
    /// #   fn new() -> Self { MyService }
    /// # }
    /// let mut service = MyService::new();
    /// let filter = Arc::new(AcceptAllFilter);
    /// service.set_connection_filter(filter);
    /// ```
    #[cfg(feature = "connection_filter")]
    pub fn set_connection_filter(&mut self, filter: Arc<dyn ConnectionFilter>) {
        self.connection_filter = filter.clone();
        self.listeners.set_connection_filter(filter);
    }

    #[cfg(not(feature = "connection_filter"))]
    pub fn set_connection_filter(&mut self, _filter: Arc<dyn ConnectionFilter>) {}

    /// Get the [`Listeners`], mostly to add more endpoints.
    pub fn endpoints(&mut self) -> &mut Listeners {
        &mut self.listeners
    }

    // the follow add* function has no effect if the server is already started

    /// Add a TCP listening endpoint with the given address (e.g., `127.0.0.1:8000`).
    pub fn add_tcp(&mut self, addr: &str) {
        self.listeners.add_tcp(addr);
    }

    /// Add a listening endpoint configured by a [`ListenerConfig`].
    pub fn add_listener(&mut self, endpoint: ListenerConfig) {
        self.listeners.add_listener(endpoint);
    }

    /// Add a TCP listening endpoint with the given [`TcpSocketOptions`].
    pub fn add_tcp_with_settings(&mut self, addr: &str, sock_opt: TcpSocketOptions) {
        self.listeners.add_tcp_with_settings(addr, sock_opt);
    }

    /// Add a Unix domain socket listening endpoint with the given path.
    ///
    /// Optionally take a permission of the socket file. The default is read and write access for
    /// everyone (0o666).
    #[cfg(unix)]
    pub fn add_uds(&mut self, addr: &str, perm: Option<Permissions>) {
        self.listeners.add_uds(addr, perm);
    }

    /// Add a TLS listening endpoint with the given certificate and key paths.
    pub fn add_tls(&mut self, addr: &str, cert_path: &str, key_path: &str) -> Result<()> {
        self.listeners.add_tls(addr, cert_path, key_path)
    }

    /// Add a TLS listening endpoint with the given [`TlsSettings`] and [`TcpSocketOptions`].
    pub fn add_tls_with_settings(
        &mut self,
        addr: &str,
        sock_opt: Option<TcpSocketOptions>,
        settings: TlsSettings,
    ) {
        self.listeners
            .add_tls_with_settings(addr, sock_opt, settings)
    }

    /// Add an endpoint according to the given [`ServerAddress`]
    pub fn add_address(&mut self, addr: ServerAddress) {
        self.listeners.add_address(addr);
    }

    /// Get a reference to the application inside this service
    pub fn app_logic(&self) -> Option<&A> {
        self.app_logic.as_ref()
    }

    /// Get a mutable reference to the application inside this service
    pub fn app_logic_mut(&mut self) -> Option<&mut A> {
        self.app_logic.as_mut()
    }
}

impl<A: ServerApp + Send + Sync + 'static> Service<A> {
    pub async fn handle_event(event: Stream, app_logic: Arc<A>, shutdown: ShutdownWatch) {
        debug!("new event!");
        let mut reuse_event = app_logic.process_new(event, &shutdown).await;
        while let Some(event) = reuse_event {
            // TODO: with no steal runtime, consider spawn() the next event on
            // another thread for more evenly load balancing
            debug!("new reusable event!");
            reuse_event = app_logic.process_new(event, &shutdown).await;
        }
    }

    /// One accepted connection: its handshake within `handshake_timeout`, then the app.
    async fn serve_connection(
        io: UninitializedStream,
        app: Arc<A>,
        shutdown: ShutdownWatch,
        handshake_timeout: Duration,
        peer_addr: Option<crate::protocols::l4::socket::SocketAddr>,
    ) {
        match timeout(handshake_timeout, io.handshake()).await {
            Ok(Ok(io)) => Self::handle_event(io, app, shutdown).await,
            // Any client can fail a handshake at will: debug, and counted when a connection
            // limit is set, never one error line each.
            Ok(Err(e)) => {
                if let Some(slot) = Slot::current() {
                    slot.client_error(ClientError::TlsHandshake);
                }
                match peer_addr {
                    Some(addr) => debug!("Downstream handshake error from {addr}: {e}"),
                    None => debug!("Downstream handshake error: {e}"),
                }
            }
            Err(_) => {
                if let Some(slot) = Slot::current() {
                    slot.client_error(ClientError::HandshakeTimeout);
                }
                debug!("Downstream handshake timeout");
            }
        }
    }

    async fn run_endpoint(
        app_logic: Arc<A>,
        mut stack: TransportStack,
        mut shutdown: ShutdownWatch,
        connection_limit: Option<Arc<ConnectionLimit>>,
        handshake_timeout: Duration,
    ) {
        // the accept loop, until the system is shutting down
        loop {
            let new_io = tokio::select! { // TODO: consider biased for perf reason?
                new_io = stack.accept() => new_io,
                shutdown_signal = shutdown.changed() => {
                    match shutdown_signal {
                        Ok(()) => {
                            if !*shutdown.borrow() {
                                // happen in the initial read
                                continue;
                            }
                            info!("Shutting down {}", stack.as_str());
                            break;
                        }
                        Err(e) => {
                            error!("shutdown_signal error {e}");
                            break;
                        }
                    }
                }
            };
            match new_io {
                Ok(io) => {
                    let peer_addr = io.peer_addr();
                    let permit = match &connection_limit {
                        None => None,
                        Some(limit) => match limit.try_acquire_from(
                            peer_addr.as_ref().and_then(|a| a.as_inet()).map(|a| a.ip()),
                        ) {
                            Some(permit) => Some(permit),
                            None => {
                                let _logged = limit.refuse(stack.as_str());
                                drop(io); // closes the connection
                                continue;
                            }
                        },
                    };
                    let app = app_logic.clone();
                    let shutdown = shutdown.clone();
                    let work =
                        Self::serve_connection(io, app, shutdown, handshake_timeout, peer_addr);
                    match permit {
                        // The task holds the connection's place until it ends, even by a panic.
                        // The connection's future is boxed: moved into the wrappers that mark
                        // it idle or shed it, it would otherwise take its (large) size again in
                        // each of them. Without a limit it is spawned as it is.
                        Some(permit) => {
                            let work = Box::pin(work);
                            current_handle().spawn(async move { permit.run(work).await });
                        }
                        None => {
                            current_handle().spawn(work);
                        }
                    }
                }
                Err(e) => {
                    let io_error = e.root_cause().downcast_ref::<std::io::Error>();
                    if io_error.is_some_and(is_runtime_shutdown) {
                        // The runtime whose I/O driver holds this listener is shutting down
                        // (with one runtime per thread, a listener may belong to another
                        // thread's runtime). accept() fails at once from now on, forever and
                        // without ever yielding, so this thread's runtime could never drop
                        // the task and its shutdown would wait for it without end.
                        info!(
                            "Stopping accept loop on {}: runtime shutting down",
                            stack.as_str()
                        );
                        break;
                    }
                    error!("Accept() failed {e}");
                    match io_error.and_then(|e| e.raw_os_error()) {
                        // Out of descriptors (EMFILE, ENFILE), socket buffers or memory: accept()
                        // would fail again at once and spin, using up the resources needed to
                        // recover. Sleep to let other tasks release some; pending connections
                        // wait in the listen backlog meanwhile.
                        Some(errno) if is_resource_exhaustion(errno) => {
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                        // Any other error may also repeat at once: give the runtime a turn
                        // before the next accept(), so it can run other tasks and, when it is
                        // shutting down, drop this one.
                        _ => tokio::task::yield_now().await,
                    }
                }
            }
        }

        stack.cleanup();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServiceTrait for Service<A> {
    async fn start_service(
        &mut self,
        #[cfg(unix)] fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let runtime = current_handle();
        let endpoints = self
            .listeners
            .build(
                #[cfg(unix)]
                fds,
            )
            .await
            .expect("Failed to build listeners");

        let app_logic = self
            .app_logic
            .take()
            .expect("can only start_service() once");
        let app_logic = Arc::new(app_logic);

        let mut handlers = Vec::new();

        endpoints.into_iter().for_each(|endpoint| {
            for _ in 0..listeners_per_fd {
                let shutdown = shutdown.clone();
                let my_app_logic = app_logic.clone();
                let endpoint = endpoint.clone();
                let connection_limit = self.connection_limit.clone();
                let handshake_timeout = self.handshake_timeout;

                let jh = runtime.spawn(async move {
                    Self::run_endpoint(
                        my_app_logic,
                        endpoint,
                        shutdown,
                        connection_limit,
                        handshake_timeout,
                    )
                    .await;
                });

                handlers.push(jh);
            }
        });

        futures::future::join_all(handlers).await;
        self.listeners.cleanup();
        app_logic.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        self.threads
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.runtime_opts_override
            .as_ref()
            .and_then(|override_fn| override_fn(global))
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.listeners.addresses())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;
    use tokio::sync::watch;

    const GUARD: Duration = Duration::from_secs(10);

    /// Poll `cond` every 10 ms until it holds; panic after `GUARD`.
    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + GUARD;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Holds every connection until `release` turns true; panics instead when `panic` is set.
    struct Hold {
        release: watch::Receiver<bool>,
        panic: bool,
        started: AtomicUsize,
    }

    #[async_trait]
    impl ServerApp for Hold {
        async fn process_new(
            self: &Arc<Self>,
            stream: Stream,
            _shutdown: &ShutdownWatch,
        ) -> Option<Stream> {
            self.started.fetch_add(1, Ordering::SeqCst);
            let mut release = self.release.clone();
            let _ = release.wait_for(|released| *released).await;
            drop(stream);
            assert!(!self.panic, "connection task panics on purpose");
            None
        }
    }

    struct Endpoint {
        addr: std::net::SocketAddr,
        app: Arc<Hold>,
        release: watch::Sender<bool>,
        shutdown: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    /// An accept loop on 127.0.0.1 with an OS-picked port, limited by `limit`.
    async fn endpoint(limit: Arc<ConnectionLimit>, panic: bool) -> Endpoint {
        let stack = Listeners::tcp("127.0.0.1:0")
            .build(
                #[cfg(unix)]
                None,
            )
            .await
            .unwrap()
            .pop()
            .unwrap();
        let addr = stack.local_addr().unwrap();
        let (release, release_rx) = watch::channel(false);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let app = Arc::new(Hold {
            release: release_rx,
            panic,
            started: AtomicUsize::new(0),
        });
        let task = tokio::spawn(Service::<Hold>::run_endpoint(
            app.clone(),
            stack,
            shutdown_rx,
            Some(limit),
            DEFAULT_HANDSHAKE_TIMEOUT,
        ));
        Endpoint {
            addr,
            app,
            release,
            shutdown,
            task,
        }
    }

    impl Endpoint {
        async fn stop(self) {
            self.shutdown.send(true).unwrap();
            tokio::time::timeout(GUARD, self.task)
                .await
                .expect("accept loop stopped")
                .unwrap();
        }
    }

    #[test]
    fn permits_count_up_to_max_and_are_given_back_on_drop() {
        let limit = Arc::new(ConnectionLimit::new(2));
        let a = limit.try_acquire().expect("first place");
        let b = limit.try_acquire().expect("second place");
        assert!(limit.try_acquire().is_none());
        assert_eq!((limit.max(), limit.active()), (2, 2));
        drop(a);
        assert_eq!(limit.active(), 1);
        let c = limit.try_acquire().expect("place given back");
        drop((b, c));
        assert_eq!(limit.active(), 0);

        assert!(Arc::new(ConnectionLimit::new(0)).try_acquire().is_none());
        assert_eq!(limit.refused(), 0);
        limit.refuse("test");
        limit.refuse("test");
        assert_eq!(limit.refused(), 2);
    }

    fn is_shed(p: &ConnectionPermit) -> bool {
        p.slot.state.load(Ordering::Acquire) & SHED != 0
    }

    #[test]
    fn at_the_limit_the_longest_idle_connection_is_shed_and_a_busy_one_never() {
        let limit = Arc::new(ConnectionLimit::new(2).shed_idle());
        let a = limit.try_acquire().expect("first");
        let b = limit.try_acquire().expect("second");
        // a busy, b idle: the third place is b's.
        assert!(a.slot.h1_request_started());
        let c = limit.try_acquire().expect("third, by shedding b");
        assert!(is_shed(&b) && !is_shed(&a));
        assert_eq!((limit.active(), limit.shed()), (2, 1));
        assert_eq!(limit.client_errors(ClientError::IdleShed), 1);
        // A shed connection cannot start a request, and its drop gives nothing back twice.
        assert!(!b.slot.h1_request_started());
        drop(b);
        assert_eq!(limit.active(), 2);
        // a busy, c busy with an HTTP/2 stream: nothing to shed.
        assert!(c.slot.h2_stream_started());
        assert!(limit.try_acquire().is_none());
        // a's request ends: idle again, so it goes next.
        a.slot.h1_request_ended();
        let d = limit.try_acquire().expect("fourth, by shedding a");
        assert!(is_shed(&a) && !is_shed(&c));
        // c's stream ends: c is idle now, but d has been idle longer (since its accept).
        c.slot.h2_stream_ended();
        let _e = limit.try_acquire().expect("fifth");
        assert!(is_shed(&d) && !is_shed(&c));
        // Without shed_idle, the limit refuses as before.
        let plain = Arc::new(ConnectionLimit::new(1));
        let _x = plain.try_acquire().expect("one");
        assert!(plain.try_acquire().is_none());
    }

    #[test]
    fn one_address_holds_at_most_its_share() {
        let limit = Arc::new(ConnectionLimit::new(10).per_address(2));
        let (one, two): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a = limit.try_acquire_from(Some(one)).expect("a");
        let b = limit.try_acquire_from(Some(one)).expect("b");
        let other = limit.try_acquire_from(Some(two)).expect("another address");
        // A third from `one` sheds `one`'s longest-idle connection, not the other address's.
        let c = limit.try_acquire_from(Some(one)).expect("c");
        assert!(is_shed(&a) && !is_shed(&b) && !is_shed(&other));
        // With both of `one`'s connections busy, `one` is refused; `two` is not.
        assert!(b.slot.h1_request_started() && c.slot.h1_request_started());
        assert!(limit.try_acquire_from(Some(one)).is_none());
        let _d = limit.try_acquire_from(Some(two)).expect("two's second");
        // a gave its place back when it was shed: b, c, other and d hold one each.
        assert_eq!(limit.active(), 4);
    }

    #[test]
    fn the_idle_queue_stays_near_the_count_of_connections() {
        let limit = Arc::new(ConnectionLimit::new(4).shed_idle());
        let a = limit.try_acquire().expect("a");
        for _ in 0..10_000 {
            assert!(a.slot.h1_request_started());
            a.slot.h1_request_ended();
        }
        assert!(limit.lock_idle().len() <= 64 + 2 * 4 + 1);
    }

    #[test]
    fn accept_errors_that_mean_exhaustion_back_off() {
        assert!(is_resource_exhaustion(24)); // EMFILE
        #[cfg(unix)]
        {
            for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
                assert!(is_resource_exhaustion(errno), "{errno}");
            }
            for errno in [libc::ECONNABORTED, libc::EINTR, libc::EPERM, libc::EPROTO] {
                assert!(!is_resource_exhaustion(errno), "{errno}");
            }
        }
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_at_once() {
        let limit = Arc::new(ConnectionLimit::new(2));
        let ep = endpoint(limit.clone(), false).await;

        let _held: Vec<TcpStream> = vec![
            TcpStream::connect(ep.addr).await.unwrap(),
            TcpStream::connect(ep.addr).await.unwrap(),
        ];
        wait_until("two connections are held", || {
            ep.app.started.load(Ordering::SeqCst) == 2
        })
        .await;
        assert_eq!(limit.active(), 2);

        // The third is closed without reaching the app.
        let mut third = TcpStream::connect(ep.addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(GUARD, third.read(&mut buf))
            .await
            .expect("refused connection closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(limit.refused(), 1);
        assert_eq!(limit.active(), 2);
        assert_eq!(ep.app.started.load(Ordering::SeqCst), 2);

        // Their places come back when the connections end, and new ones are served.
        ep.release.send(true).unwrap();
        wait_until("places given back", || limit.active() == 0).await;
        let _fourth = TcpStream::connect(ep.addr).await.unwrap();
        wait_until("fourth connection served", || {
            ep.app.started.load(Ordering::SeqCst) == 3
        })
        .await;
        assert_eq!(limit.refused(), 1);
        ep.stop().await;
    }

    #[tokio::test]
    async fn place_is_given_back_when_the_connection_task_panics() {
        let limit = Arc::new(ConnectionLimit::new(1));
        let ep = endpoint(limit.clone(), true).await;
        let _conn = TcpStream::connect(ep.addr).await.unwrap();
        wait_until("connection held", || limit.active() == 1).await;
        ep.release.send(true).unwrap(); // the task panics now
        wait_until("place given back after the panic", || limit.active() == 0).await;

        let _next = TcpStream::connect(ep.addr).await.unwrap();
        wait_until("next connection served", || {
            ep.app.started.load(Ordering::SeqCst) == 2
        })
        .await;
        assert_eq!(limit.refused(), 0);
        ep.stop().await;
    }

    /// As with Pingora's one runtime per thread (`work_stealing: false`): a listener built on
    /// one runtime, its accept loop on another runtime's thread, and a fast shutdown (the
    /// shutdown watch is never sent). When the listener's runtime goes first, accept() fails
    /// at once from then on; the loop must end rather than spin, or the other thread never
    /// gets back to its runtime's shutdown.
    #[test]
    fn accept_loop_ends_when_the_listeners_runtime_shuts_down() {
        let current_thread = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let owner = current_thread();
        let stack = owner.block_on(async {
            Listeners::tcp("127.0.0.1:0")
                .build(
                    #[cfg(unix)]
                    None,
                )
                .await
                .unwrap()
                .pop()
                .unwrap()
        });
        let (_release, release_rx) = watch::channel(false);
        let app = Arc::new(Hold {
            release: release_rx,
            panic: false,
            started: AtomicUsize::new(0),
        });
        let (_shutdown, shutdown_rx) = watch::channel(false);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<Duration>();
        let (polled_tx, polled_rx) = std::sync::mpsc::channel();
        let (exited_tx, exited_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = current_thread();
            let accept_loop = rt.spawn(Service::<Hold>::run_endpoint(
                app,
                stack,
                shutdown_rx,
                None,
                DEFAULT_HANDSHAKE_TIMEOUT,
            ));
            // Tasks run in order: once this one runs, the loop waits in accept().
            rt.spawn(async move { polled_tx.send(accept_loop).unwrap() });
            // What `pingora_runtime::NoStealRuntime` does on each thread.
            if let Ok(timeout) = rt.block_on(stop_rx) {
                rt.shutdown_timeout(timeout);
            }
            let _ = exited_tx.send(());
        });
        let accept_loop = polled_rx.recv_timeout(GUARD).expect("accept loop polled");

        drop(owner); // the listener's I/O driver shuts down
        let deadline = Instant::now() + GUARD;
        while !accept_loop.is_finished() {
            assert!(Instant::now() < deadline, "the accept loop did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.send(Duration::ZERO).unwrap();
        exited_rx
            .recv_timeout(GUARD)
            .expect("the other runtime shut down");
    }

    /// The error `is_runtime_shutdown` recognises is the one Tokio returns (its text is not
    /// exported, so a Tokio upgrade that changes it fails here).
    #[test]
    fn tokio_shutdown_error_is_recognised() {
        let owner = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener =
            owner.block_on(async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() });
        drop(owner);
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = other.block_on(listener.accept()).expect_err("driver gone");
        assert!(is_runtime_shutdown(&e), "{e:?}");

        assert!(!is_runtime_shutdown(&std::io::Error::other("other")));
        #[cfg(unix)]
        assert!(!is_runtime_shutdown(&std::io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_second() {
        let limit = ConnectionLimit::new(0);
        let started = Instant::now();
        assert!(limit.refuse("test"), "the first refusal is logged");
        let logged = 1 + (0..10_000).filter(|_| limit.refuse("test")).count();
        let seconds = started.elapsed().as_secs() as usize;
        // One line for each second boundary crossed at most, not one per refusal.
        assert!(logged <= 1 + seconds + 1, "{logged} lines in {seconds} s");
        assert_eq!(limit.refused(), 10_001);
    }
}
