//! The balancer's HTTP/1.1 server front: each connection is read into one buffer, request
//! heads are parsed with `httparse` ([`head`]), the request goes to [`Balancer::respond`]
//! with a body read from the same connection ([`body`]), and the response is written
//! inline ([`write`]). HTTP/2 with prior knowledge is handed to hyper ([`replay`]). The
//! accept loop, connection cap with eviction, first-byte timeout and graceful drain are
//! `serve`'s, shared with the node.
//!
//! Hand-written, as the node client in `h1` is, because a measurement justified it: under
//! callgrind a proxied `GET /events/concert` cost 25,172 user-space instructions through
//! hyper's server (its dispatcher, encoder, buffers and per-request header timer were
//! about 9,000 of them) against nginx's ~17,800. This front keeps hyper's behaviour that
//! the balancer relies on: pipelining, keep-alive per RFC 9112, `Content-Length` and
//! chunked bodies both ways, `Expect: 100-continue`, a header read timeout (a deadline
//! armed only when a head arrives in pieces), and a graceful close when asked.

mod body;
mod head;
mod replay;
mod write;

#[cfg(test)]
mod tests;

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use hyper::{Method, Version};
use serve::{Activity, ServerLimits};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFuture;
use tracing::debug;

use crate::Balancer;
use body::RequestBody;
use head::{BodyLeft, Head};
use write::{Asked, write_response};

/// How much more room a read asks for when the buffer is nearly full.
const READ_CHUNK: usize = 16 * 1024;

/// What an HTTP/2 client with prior knowledge sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One client connection and what has been read from it but not used yet.
pub struct Conn<S> {
    io: S,
    buf: BytesMut,
    /// What is left of the body of the request being answered.
    body: BodyLeft,
    /// How much of `100 Continue` has been written, while one is owed.
    continue_from: Option<usize>,
}

impl<S: AsyncRead + Unpin> Conn<S> {
    /// Reads more into the buffer; 0 at the end of the stream.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// Serves `balancer` on `listener` with this front until `shutdown` completes, then lets
/// the open requests finish (see [`serve::run_connections`]).
pub async fn run(
    listener: TcpListener,
    balancer: Balancer,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let header_timeout = limits.header_read_timeout;
    serve::run_connections(listener, limits, shutdown, move |stream, peer, activity| {
        let balancer = balancer.clone();
        async move { serve(stream, peer, &balancer, &activity, header_timeout).await }
    })
    .await;
}

/// Why the connection serves no further HTTP/1.x request.
enum Ending {
    /// A refused head: answered with this error, then the connection closes.
    Refuse(crate::Error),
    /// An HTTP/2 connection: hyper serves it.
    Http2,
    /// Closed, timed out or asked to close while idle.
    Close,
}

/// Serves the requests of one connection from `peer` in order until it closes, a request
/// asks it to, or `activity.close` is cancelled (at once when idle, else after the
/// request being answered). A head that has started arriving but is not whole within
/// `header_timeout` closes the connection.
pub async fn serve<S>(
    io: S,
    peer: SocketAddr,
    balancer: &Balancer,
    activity: &Arc<Activity>,
    header_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = Conn {
        io,
        buf: BytesMut::new(),
        body: BodyLeft::Done,
        continue_from: None,
    };
    let mut out = BytesMut::with_capacity(1024);
    let cancelled = activity.close.cancelled();
    tokio::pin!(cancelled);
    // Whether `cancelled` has been polled: from then on it holds this task's waker.
    let mut armed = false;
    let mut first = true;
    loop {
        let close = (cancelled.as_mut(), &mut armed);
        let next = next_head(&mut conn, close, header_timeout, first).await;
        first = false;
        let Head {
            request,
            body,
            keep_alive,
            expects_continue,
        } = match next {
            Ok(head) => head,
            Err(Ending::Close) => return,
            Err(Ending::Http2) => {
                let io = replay::Replay::new(conn.buf, conn.io);
                let hyper = serve::Hyper::new(balancer.clone(), header_timeout);
                return hyper.serve(io, peer, activity).await;
            }
            Err(Ending::Refuse(err)) => {
                debug!(%peer, cause = %err, "refused a request head");
                let asked = Asked {
                    head: false,
                    http10: false,
                };
                let response = err.into_response();
                let _ = write_response(&mut conn.io, &mut out, response, asked, &mut false).await;
                return;
            }
        };
        activity.begin();
        let asked = Asked {
            head: request.method() == Method::HEAD,
            http10: request.version() == Version::HTTP_10,
        };
        conn.body = body;
        conn.continue_from = expects_continue.then_some(0);
        let request = request.map(|()| RequestBody::new(&mut conn));
        let response = balancer.respond(request, peer).await;
        conn.continue_from = None;
        // A body the handler left unread cannot be told from the next request; a
        // connection asked to close says so in its last answer.
        let mut keep_alive =
            keep_alive && conn.body == BodyLeft::Done && !activity.close.is_cancelled();
        let written = write_response(&mut conn.io, &mut out, response, asked, &mut keep_alive);
        let written = written.await;
        activity.end();
        if let Err(err) = written {
            debug!(%peer, cause = %err, "cannot write a response");
            return;
        }
        if !keep_alive {
            return;
        }
    }
}

/// Reads until a whole request head is in the buffer and takes it out.
async fn next_head<S: AsyncRead + Unpin>(
    conn: &mut Conn<S>,
    (mut cancelled, armed): (Pin<&mut WaitForCancellationFuture<'_>>, &mut bool),
    header_timeout: Duration,
    first: bool,
) -> Result<Head, Ending> {
    let mut deadline = None;
    loop {
        if !conn.buf.is_empty() {
            let seen = conn.buf.len().min(PREFACE.len());
            let maybe_http2 = first && conn.buf[..seen] == PREFACE[..seen];
            if maybe_http2 && seen == PREFACE.len() {
                return Err(Ending::Http2);
            }
            if !maybe_http2 {
                match head::parse(&mut conn.buf) {
                    Ok(Some(head)) => return Ok(head),
                    Ok(None) => {}
                    Err(err) => return Err(Ending::Refuse(err)),
                }
            }
        }
        let read = if conn.buf.is_empty() {
            // Idle between requests: wait for the next one, or close at once when asked.
            let mut polls = 0;
            poll_fn(|cx| {
                if let Poll::Ready(read) = conn.poll_read_more(cx) {
                    return Poll::Ready(Some(read));
                }
                // Once polled, the close token's future keeps this task's waker (the same
                // for the connection's life), and a cancellation wakes the task: it needs
                // polling again only when the task wakes with nothing to read.
                polls += 1;
                if *armed && polls == 1 {
                    return Poll::Pending;
                }
                *armed = true;
                cancelled.as_mut().poll(cx).map(|()| None)
            })
            .await
        } else {
            // A head in pieces: it has until its deadline to be whole.
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + header_timeout);
            let read = poll_fn(|cx| conn.poll_read_more(cx));
            tokio::time::timeout_at(deadline, read).await.ok()
        };
        match read {
            Some(Ok(1..)) => {}
            _ => return Err(Ending::Close),
        }
    }
}
