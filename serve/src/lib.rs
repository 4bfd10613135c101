//! Runs an HTTP handler on an already-bound listener: HTTP/1.1 and HTTP/2 with hyper (or
//! any other per-connection server, see [`run_connections`]), a cap on open
//! connections (evicting the longest-idle keep-alive connection when it is reached), a time
//! limit on reading request headers, and graceful shutdown that lets in-flight requests
//! finish (within a drain limit). Also the programs' shared start-up:
//! tracing from `RUST_LOG` and the SIGTERM / Ctrl-C signal.

mod connections;
pub mod json;
pub mod probe;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use connections::Activity;
use connections::{Connections, Registered};
use tracing::{debug, info, warn};

/// Answers one request. Implemented by the node's and the balancer's services.
pub trait Handler: Clone + Send + Sync + 'static {
    type Body: Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static;

    fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// Limits that protect a server from slow or too many clients.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Open connections at most. A new one past it closes the longest-idle keep-alive
    /// connection, or waits for a slot when every connection has a request in flight.
    pub max_connections: usize,
    /// A client that has not sent its request headers by then is disconnected.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for in-flight requests before closing anyway.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// Binds `addr` and prints `listening on ADDR` (the real port when 0 was asked for) as
/// the first line of standard output, so tests and scripts can find the server.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!("listening on {local}");
    info!(address = %local, "listening");
    Ok(listener)
}

/// Serves `handler` on `listener` with hyper (HTTP/1.1 and HTTP/2) until `shutdown`
/// completes, then stops accepting and waits up to `limits.drain_timeout` for open
/// requests to finish. See [`run_connections`] for the connection cap.
pub async fn run<H: Handler>(
    listener: TcpListener,
    handler: H,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let hyper = Hyper::new(handler, limits.header_read_timeout);
    run_connections(listener, limits, shutdown, move |stream, peer, activity| {
        let hyper = hyper.clone();
        async move { hyper.serve(stream, peer, &activity).await }
    })
    .await;
}

/// Accepts connections on `listener` until `shutdown` completes and hands each one that
/// sends a first byte within `limits.header_read_timeout` to `serve_one`, with its peer and
/// its [`Activity`]: `serve_one` marks each request with [`Activity::begin`] and
/// [`Activity::end`], and closes the connection gracefully (after the request in flight,
/// if any) once `activity.close` is cancelled. Then stops accepting and waits up to
/// `limits.drain_timeout` for the connections to finish.
///
/// At most `limits.max_connections` connections are open; when all are, the one idle the
/// longest (a keep-alive connection with no request in flight) is closed to admit the new
/// one, and only when every one is busy does the new one wait for a slot.
pub async fn run_connections<F, Fut>(
    listener: TcpListener,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
    serve_one: F,
) where
    F: Fn(TcpStream, SocketAddr, Arc<Activity>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Cancelled once `shutdown` completes; every connection's close token is a child.
    let stopping = CancellationToken::new();
    let tasks = TaskTracker::new();
    let connections = Connections::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Running out of file descriptors is the usual cause; pausing lets
                    // connections close instead of spinning on the error.
                    warn!(cause = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Every slot is taken: close the longest-idle connection, or wait until a
                // connection closes or goes idle (and then close that one).
                connections.set_waiting(true);
                let permit = loop {
                    if connections.evict_longest_idle() {
                        debug!(%peer, "every connection slot taken: closing the longest-idle one");
                    }
                    tokio::select! {
                        permit = Arc::clone(&slots).acquire_owned() => break permit.ok(),
                        () = connections.became_idle() => {}
                        () = &mut shutdown => break None,
                    }
                };
                connections.set_waiting(false);
                match permit {
                    Some(permit) => permit,
                    None => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let registered = connections.add(&stopping);
        tasks.spawn(after_first_byte(
            stream,
            peer,
            limits.header_read_timeout,
            registered,
            permit,
            serve_one.clone(),
        ));
    }
    drop(listener);
    info!("shutting down: draining open connections");
    stopping.cancel();
    tasks.close();
    tokio::select! {
        () = tasks.wait() => info!("all connections closed"),
        () = tokio::time::sleep(limits.drain_timeout) => {
            warn!(timeout = ?limits.drain_timeout, "drain time limit reached; closing anyway");
        }
    }
}

/// Hands `stream` to `serve_one` once its client has sent a byte, and holds the
/// connection's slot and registration until it ends. A client that connects and sends
/// nothing within `first_byte_timeout` (or before its close token is cancelled) is dropped
/// unserved: header timeouts only start once a head starts arriving, and such a client
/// would otherwise hold its slot for ever.
async fn after_first_byte<F, Fut>(
    stream: TcpStream,
    peer: SocketAddr,
    first_byte_timeout: Duration,
    registered: Registered,
    _permit: OwnedSemaphorePermit,
    serve_one: F,
) where
    F: Fn(TcpStream, SocketAddr, Arc<Activity>) -> Fut,
    Fut: Future<Output = ()>,
{
    let activity = Arc::clone(&registered.activity);
    let mut first = [0u8; 1];
    let sent = tokio::select! {
        peeked = tokio::time::timeout(first_byte_timeout, stream.peek(&mut first)) => {
            matches!(peeked, Ok(Ok(1..)))
        }
        () = activity.close.cancelled() => false,
    };
    if !sent {
        debug!(%peer, "closing a connection that sent nothing");
        return;
    }
    serve_one(stream, peer, activity).await;
    drop(registered);
}

/// Serves connections with hyper's HTTP/1.1 and HTTP/2 servers and a [`Handler`].
#[derive(Clone)]
pub struct Hyper<H> {
    handler: H,
    builder: auto::Builder<TokioExecutor>,
}

impl<H: Handler> Hyper<H> {
    /// A server for `handler` that closes an HTTP/1.1 connection whose request head has
    /// started but not ended within `header_read_timeout`.
    pub fn new(handler: H, header_read_timeout: Duration) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .keep_alive(true);
        Self { handler, builder }
    }

    /// Serves one connection from `peer` until it ends, or closes it gracefully (after the
    /// request in flight, if any) once `activity.close` is cancelled: evicted, or the
    /// server stopping.
    pub async fn serve<I>(&self, io: I, peer: SocketAddr, activity: &Arc<Activity>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let counted = Arc::clone(activity);
        let handler = self.handler.clone();
        let service = hyper::service::service_fn(move |request| {
            let handler = handler.clone();
            let activity = Arc::clone(&counted);
            activity.begin();
            async move {
                let response = handler.handle(request, peer).await;
                activity.end();
                Ok::<_, Infallible>(response)
            }
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            () = activity.close.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(err) = ended {
            debug!(cause = %err, %peer, "connection ended with an error");
        }
    }
}

/// Completes on SIGTERM (what `docker stop` sends) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            warn!(cause = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                warn!(cause = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("Ctrl-C received"),
        () = terminate => info!("SIGTERM received"),
    }
}

/// Logs to standard error, filtered by `RUST_LOG` (default `info`); JSON lines when
/// `TICKETS_LOG_FORMAT=json`, human-readable otherwise.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("TICKETS_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}
