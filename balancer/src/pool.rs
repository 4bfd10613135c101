//! Connections to the nodes, pooled per worker thread: each thread keeps, per node address,
//! the HTTP/1.1 connections it opened (hyper's `SendRequest` handles, whose connection
//! tasks run on the same thread), so a forwarded request takes no lock and crosses no
//! thread. A connection goes back to its pool as soon as the response headers arrive and
//! is taken again once it is ready (its last response read to the end).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

/// A connection to a node that takes whole in-memory request bodies.
type Sender = SendRequest<Full<Bytes>>;

/// At most this many connections per node are kept by one thread; more are closed after
/// their request.
const MAX_POOLED: usize = 512;

/// A connection unused for this long is closed rather than reused: well within the
/// nodes' own idle limit (their header timeout, 10 s by default), so a request is not
/// written into a connection the node is closing at that moment.
const MAX_IDLE: Duration = Duration::from_secs(4);

/// A pooled connection and when it was last handed back.
struct Pooled {
    sender: Sender,
    returned: Instant,
}

thread_local! {
    /// This thread's connections, by node address.
    static POOLS: RefCell<HashMap<SocketAddr, Vec<Pooled>>> = RefCell::new(HashMap::new());
}

/// How sending a request failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened: the request was not sent.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection broke after the request was (possibly) sent.
    #[error("{0}")]
    Sent(String),
}

/// A ready pooled connection to `address`, dropping closed ones on the way.
fn checkout(address: SocketAddr) -> Option<Sender> {
    POOLS.with_borrow_mut(|pools| {
        let pool = pools.get_mut(&address)?;
        let now = Instant::now();
        // The most recently returned connections are at the end, and the likeliest to be
        // still busy streaming their last response, so look from the front.
        let mut i = 0;
        while i < pool.len() {
            let pooled = &pool[i];
            if pooled.sender.is_closed() || now.duration_since(pooled.returned) > MAX_IDLE {
                pool.swap_remove(i);
            } else if pooled.sender.is_ready() {
                return Some(pool.swap_remove(i).sender);
            } else {
                i += 1;
            }
        }
        None
    })
}

/// Returns a connection to its pool.
fn checkin(address: SocketAddr, sender: Sender) {
    POOLS.with_borrow_mut(|pools| {
        let pool = pools.entry(address).or_default();
        if pool.len() < MAX_POOLED {
            pool.push(Pooled {
                sender,
                returned: Instant::now(),
            });
        }
    });
}

/// Forgets this thread's connections to `address` (a node that went away).
pub fn forget(address: SocketAddr) {
    POOLS.with_borrow_mut(|pools| pools.remove(&address));
}

/// Connections to `address` this thread keeps now.
pub fn pooled(address: SocketAddr) -> usize {
    POOLS.with_borrow(|pools| pools.get(&address).map_or(0, Vec::len))
}

async fn connect(address: SocketAddr, timeout: Duration) -> Result<Sender, SendError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(SendError::Connect(err.to_string())),
        Err(_) => {
            return Err(SendError::Connect(format!(
                "no connection within {timeout:?}"
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| SendError::Connect(crate::proxy::describe(&err)))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            debug!(cause = %err, node = %address, "node connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sends `request` to `address` on a pooled connection or a new one. A pooled connection
/// that turns out to be closed before the request left is replaced by a new one.
pub async fn send(
    address: SocketAddr,
    connect_timeout: Duration,
    mut request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, SendError> {
    let mut reused = checkout(address);
    loop {
        let fresh = reused.is_none();
        let mut sender = match reused.take() {
            Some(sender) => sender,
            None => connect(address, connect_timeout).await?,
        };
        match sender.try_send_request(request).await {
            Ok(response) => {
                checkin(address, sender);
                return Ok(response);
            }
            Err(mut err) => {
                let error = crate::proxy::describe(err.error());
                match err.take_message() {
                    // Not sent: a pooled connection the node had closed. Once more on a
                    // new connection; a new one failing this way is the node's fault.
                    Some(unsent) if !fresh => request = unsent,
                    Some(_) => return Err(SendError::Connect(error)),
                    None => return Err(SendError::Sent(error)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A tiny HTTP/1.1 server counting the connections it accepted.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (address, accepted)
    }

    fn get() -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = "/".parse().expect("uri");
        request
    }

    #[tokio::test]
    async fn requests_in_a_row_reuse_one_connection() {
        let (address, accepted) = server().await;
        for _ in 0..5 {
            let response = send(address, Duration::from_secs(1), get())
                .await
                .expect("answer");
            let body = response.into_body().collect().await.expect("body");
            assert_eq!(body.to_bytes(), "ok");
            // Let the connection task see the end of the response.
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pooled(address), 1);
        forget(address);
        assert_eq!(pooled(address), 0);
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_failure() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let err = send(address, Duration::from_secs(1), get())
            .await
            .expect_err("refused");
        assert!(matches!(err, SendError::Connect(_)), "{err}");
    }
}
