//! Connections to the nodes, pooled per worker thread: each thread keeps, per node address,
//! the idle HTTP/1.1 connections it opened, and the task forwarding a request takes one,
//! speaks HTTP/1.1 on it itself (see [`crate::h1`]) and puts it back once the response has
//! been read to its end, so a forwarded request takes no lock, crosses no thread and
//! wakes no other task. The most recently returned connection is reused first.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::Response;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::h1::{self, BodyStream, Conn, ReadError, Wire};

/// At most this many connections per node are kept by one thread; more are closed after
/// their request.
const MAX_POOLED: usize = 512;

/// A connection unused for this long is closed rather than reused: well within the
/// nodes' own idle limit (their header timeout, 10 s by default), so a request is not
/// written into a connection the node is closing at that moment.
const MAX_IDLE: Duration = Duration::from_secs(4);

/// An idle connection and when it was handed back.
struct Pooled {
    conn: Conn,
    returned: Instant,
}

thread_local! {
    /// This thread's idle connections, by node address (a handful of nodes: a list).
    static POOLS: RefCell<Vec<(SocketAddr, Vec<Pooled>)>> = const { RefCell::new(Vec::new()) };
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

/// Whether an idle connection has something to read: the node closed it (or, against the
/// protocol, sent something unasked). Asks the runtime's readiness, not the socket: the
/// last read of a response leaves the socket drained and its readiness cleared.
fn has_news(conn: &Conn) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    matches!(conn.stream.poll_read_ready(&mut cx), Poll::Ready(_))
}

/// An idle connection to `address`, most recently returned first, dropping on the way
/// those that are closed or have been idle too long.
fn checkout(address: SocketAddr) -> Option<Conn> {
    POOLS.with_borrow_mut(|pools| {
        let (_, pool) = pools.iter_mut().find(|(a, _)| *a == address)?;
        let now = Instant::now();
        while let Some(pooled) = pool.pop() {
            if now.duration_since(pooled.returned) > MAX_IDLE {
                // The rest were returned earlier still.
                pool.clear();
                return None;
            }
            if !has_news(&pooled.conn) {
                return Some(pooled.conn);
            }
        }
        None
    })
}

/// Returns an idle connection (its last response read to the end) to its pool.
pub(crate) fn checkin(address: SocketAddr, conn: Conn) {
    POOLS.with_borrow_mut(|pools| {
        let pool = match pools.iter().position(|(a, _)| *a == address) {
            Some(i) => &mut pools[i].1,
            None => {
                pools.push((address, Vec::new()));
                &mut pools.last_mut().expect("just pushed").1
            }
        };
        if pool.len() < MAX_POOLED {
            pool.push(Pooled {
                conn,
                returned: Instant::now(),
            });
        }
    });
}

/// Forgets this thread's connections to `address` (a node that went away).
pub fn forget(address: SocketAddr) {
    POOLS.with_borrow_mut(|pools| pools.retain(|(a, _)| *a != address));
}

/// Connections to `address` this thread keeps now.
pub fn pooled(address: SocketAddr) -> usize {
    POOLS.with_borrow(|pools| {
        pools
            .iter()
            .find(|(a, _)| *a == address)
            .map_or(0, |(_, pool)| pool.len())
    })
}

async fn connect(address: SocketAddr, timeout: Duration) -> Result<Conn, SendError> {
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
    Ok(Conn::new(stream))
}

/// Sends `wire` to `address` on a pooled connection or a new one, and reads the response
/// head. A pooled connection that turns out to be closed (the write fails, or it closes
/// without a byte of answer before the request could have been read) is replaced by a new
/// one once.
pub async fn send(
    address: SocketAddr,
    connect_timeout: Duration,
    wire: &Wire,
) -> Result<Response<BodyStream>, SendError> {
    let mut reused = checkout(address);
    loop {
        let fresh = reused.is_none();
        let mut conn = match reused.take() {
            Some(conn) => conn,
            None => connect(address, connect_timeout).await?,
        };
        if let Err(err) = conn.stream.write_all(wire.bytes()).await {
            // Refused before the node could read a whole request: nothing was acted on.
            if fresh {
                return Err(SendError::Connect(err.to_string()));
            }
            continue;
        }
        match h1::read_response(conn, address, wire).await {
            Ok(response) => return Ok(response),
            Err(err @ (ReadError::Nothing(_) | ReadError::Broken(_))) => {
                return Err(SendError::Sent(err.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::Response;
    use hyper_util::rt::TokioIo;
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

    fn get() -> Wire {
        Wire::encode(
            &hyper::Method::GET,
            &hyper::http::uri::PathAndQuery::from_static("/"),
            &hyper::HeaderMap::new(),
            b"",
        )
    }

    #[tokio::test]
    async fn requests_in_a_row_reuse_one_connection() {
        let (address, accepted) = server().await;
        for _ in 0..5 {
            let response = send(address, Duration::from_secs(1), &get())
                .await
                .expect("answer");
            let body = response.into_body().collect().await.expect("body");
            assert_eq!(body.to_bytes(), "ok");
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
        let err = send(address, Duration::from_secs(1), &get())
            .await
            .expect_err("refused");
        assert!(matches!(err, SendError::Connect(_)), "{err}");
    }
}
