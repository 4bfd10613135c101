//! A request's body, read from its connection's buffer (and socket) as the handler polls
//! it: `Content-Length` or chunked (trailers skipped), with `100 Continue` sent first when
//! the client asked for it. What the handler leaves unread stays noted in the connection,
//! which then closes after the response.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Conn;
use super::head::BodyLeft;
use crate::h1::Step;

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The body of the request being answered on a connection, borrowing the connection.
pub struct RequestBody<'a, S> {
    conn: &'a mut Conn<S>,
}

impl<'a, S> RequestBody<'a, S> {
    pub fn new(conn: &'a mut Conn<S>) -> Self {
        Self { conn }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Writes what is left of `100 Continue`, if owed.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(from) = self.continue_from {
            if from == CONTINUE.len() {
                self.continue_from = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &CONTINUE[from..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.continue_from = Some(from + n);
        }
        Poll::Ready(Ok(()))
    }

    /// The next piece of the request body, `None` at its end.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if self.continue_from.is_some() {
            if self.buf.is_empty() {
                ready!(self.poll_continue(cx))?;
            } else {
                // The body is on its way already: no need to ask for it.
                self.continue_from = None;
            }
        }
        loop {
            match self.body {
                BodyLeft::Done => return Poll::Ready(Ok(None)),
                BodyLeft::Length(left) if !self.buf.is_empty() => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    let left = left - take as u64;
                    self.body = if left == 0 {
                        BodyLeft::Done
                    } else {
                        BodyLeft::Length(left)
                    };
                    return Poll::Ready(Ok(Some(self.buf.split_to(take).freeze())));
                }
                BodyLeft::Chunked(ref mut state) if !self.buf.is_empty() => {
                    match state.step(&mut self.buf)? {
                        Step::Data(bytes) => return Poll::Ready(Ok(Some(bytes))),
                        Step::End => {
                            self.body = BodyLeft::Done;
                            return Poll::Ready(Ok(None));
                        }
                        Step::Again => continue,
                        Step::More => {}
                    }
                }
                _ => {}
            }
            if ready!(self.poll_read_more(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection in the middle of a body",
                )));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Body for RequestBody<'_, S> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let conn = &mut *self.get_mut().conn;
        match ready!(conn.poll_body(cx)) {
            Ok(Some(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Ok(None) => Poll::Ready(None),
            Err(err) => {
                // The rest of the body is lost: the connection cannot serve another request.
                conn.body = BodyLeft::Length(u64::MAX);
                Poll::Ready(Some(Err(err)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.body == BodyLeft::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.conn.body {
            BodyLeft::Done => SizeHint::with_exact(0),
            BodyLeft::Length(left) => SizeHint::with_exact(left),
            BodyLeft::Chunked(_) => SizeHint::default(),
        }
    }
}
