//! Runs an HTTP handler on an already-bound listener: HTTP/1.1 and HTTP/2, a cap on open
//! connections, a time limit on reading request headers, and graceful shutdown that lets
//! in-flight requests finish (within a drain limit). Also the programs' shared start-up:
//! tracing from `RUST_LOG` and the SIGTERM / Ctrl-C signal.

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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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
    /// Connections beyond this wait in the kernel's accept queue until one closes.
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

/// Serves `handler` on `listener` until `shutdown` completes, then stops accepting and
/// waits up to `limits.drain_timeout` for open requests to finish.
pub async fn run<H: Handler>(
    listener: TcpListener,
    handler: H,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
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
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let first_byte_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            // hyper times out headers only once they start arriving; a client that connects
            // and sends nothing would hold its slot for ever.
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(first_byte_timeout, stream.peek(&mut first)).await,
                Ok(Ok(1..))
            ) {
                debug!(%peer, "closing a connection that sent nothing");
                drop(permit);
                return;
            }
            let service = hyper::service::service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler.handle(request, peer).await) }
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(connection.into_owned()).await {
                debug!(cause = %err, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    info!("shutting down: draining open connections");
    tokio::select! {
        () = graceful.shutdown() => info!("all connections closed"),
        () = tokio::time::sleep(limits.drain_timeout) => {
            warn!(timeout = ?limits.drain_timeout, "drain time limit reached; closing anyway");
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
