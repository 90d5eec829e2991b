//! The server loop behind [`serve`](crate::serve): accepts connections up to a limit (in all
//! and per client address), serves each with hyper's HTTP/1 connection under a header-read
//! timeout that also bounds idle keep-alive connections, and on shutdown lets accepted
//! requests finish until a deadline, after which the stalled connections are cut.
//!
//! hyper's own HTTP/1 builder is used, not `axum::serve` (which sets no timeout) nor
//! hyper-util's automatic HTTP/1-or-2 builder (which has no timer while it reads the first
//! bytes to pick the protocol, so a client that sends nothing would be held forever).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// How long a client may take to send a request's headers, and how long a keep-alive
/// connection may sit idle between requests.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; past it a new connection is closed at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4_096;
/// Connections one client address may hold at once; past it its new connections are closed
/// at once, while other addresses are still served.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 1_024;
/// How long shutdown waits for accepted requests before cutting the connections left.
pub const DEFAULT_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
/// hyper's buffer per connection for reading a request head and queueing response bytes:
/// also the largest request head hyper itself reads (larger ones get hyper's bare 431; the
/// API answers 414 and 431 with its JSON body below this size, see `crate::guard`).
pub const CONNECTION_BUFFER_BYTES: usize = 128 * 1024;

/// The server's connection limits and timeouts (the defaults are the constants above).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// [`DEFAULT_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// [`DEFAULT_MAX_CONNECTIONS_PER_CLIENT`].
    pub max_connections_per_client: usize,
    /// [`DEFAULT_SHUTDOWN_DEADLINE`].
    pub shutdown_deadline: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            shutdown_deadline: DEFAULT_SHUTDOWN_DEADLINE,
        }
    }
}

/// A connection's switch to cut it: the event stream of a subscriber that stopped reading pulls
/// it (the request's extensions carry it), so the socket and hyper's buffers are freed at once.
#[derive(Clone, Default)]
pub(crate) struct CutConnection(Arc<Notify>);

impl CutConnection {
    pub(crate) fn cut(&self) {
        self.0.notify_one();
    }
}

/// Open connections, in all and per client address (at most `max_connections` entries).
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// Admits connections within the limits; each admitted one holds a [`Slot`].
struct Admission {
    open: Mutex<Open>,
    max: usize,
    max_per_client: usize,
    metrics: Arc<Metrics>,
}

/// Why a connection was closed unserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Past `max_connections`.
    Full,
    /// Past `max_connections_per_client` for its address.
    ClientFull,
}

impl Admission {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Slot, Refusal> {
        let mut open = self.lock();
        if open.total >= self.max {
            return Err(Refusal::Full);
        }
        let held = open.per_client.get(&client).copied().unwrap_or(0);
        if held >= self.max_per_client {
            return Err(Refusal::ClientFull);
        }
        open.total += 1;
        open.per_client.insert(client, held + 1);
        self.metrics.connections_open(open.total);
        Ok(Slot {
            admission: Arc::clone(self),
            client,
        })
    }
}

/// An admitted connection's place, given back when the connection ends.
struct Slot {
    admission: Arc<Admission>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.admission.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(held) = open.per_client.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                open.per_client.remove(&self.client);
            }
        }
        self.admission.metrics.connections_open(open.total);
    }
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, asks every
/// connection to finish its request in flight and close, and after `config.shutdown_deadline`
/// cuts those still open. Returns when every connection is gone.
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    config: &ServeConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let admission = Arc::new(Admission {
        open: Mutex::new(Open {
            total: 0,
            per_client: HashMap::new(),
        }),
        max: config.max_connections,
        max_per_client: config.max_connections_per_client,
        metrics: Arc::clone(&metrics),
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(CONNECTION_BUFFER_BYTES);
    let (closing, closing_seen) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
            // Reap finished connections so the set holds only open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors (EMFILE) and the like: back off briefly instead of
                // spinning; connections that end free descriptors.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match admission.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                metrics.connection_refused(refusal);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let cut = CutConnection::default();
        // The router as hyper's service: each request carries the client's address
        // (`ConnectInfo`) and the connection's switch.
        let (app, request_cut) = (app.clone(), cut.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(request_cut.clone());
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let mut closing = closing_seen.clone();
        connections.spawn(async move {
            let _slot = slot;
            tokio::pin!(connection);
            let mut asked = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%error, %peer, "connection ended with an error");
                        }
                        break;
                    }
                    changed = closing.changed(), if !asked => {
                        asked = true;
                        if changed.is_ok() {
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                    () = cut.0.notified() => break,
                }
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let open = connections.len();
    if open > 0 {
        tracing::info!(
            open,
            "waiting for open connections to finish their requests"
        );
    }
    let drained = tokio::time::timeout(config.shutdown_deadline, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            deadline_s = config.shutdown_deadline.as_secs_f64(),
            "shutdown deadline passed: cutting the connections still open"
        );
        connections.shutdown().await;
    }
}
