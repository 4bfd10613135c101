//! HTTP/1.1 to the nodes, spoken inline by the task that forwards the request: the request
//! is encoded once (head and buffered body in one buffer, sent as is by every attempt),
//! the response head is parsed with `httparse` straight from the connection's read buffer
//! (header values share its bytes), and a body that has already arrived whole (the usual
//! small answer) is handed over as one chunk, with the connection back in its pool before
//! the client sees a byte. A longer body is streamed from the connection as the client
//! reads it. There is no connection task, channel or per-request timer: the forwarding
//! task owns the connection while it uses it.
//!
//! Response framing follows RFC 9112 § 6.3: no body for `HEAD` or 1xx/204/304, chunked,
//! `Content-Length`, or until the node closes. A connection goes back to its pool only
//! when its response was read exactly to its end and the node did not ask to close it.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{CONNECTION, CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Response, StatusCode, Version};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::headers::FEW_HEADERS;
use crate::node::InFlight;
use crate::pool;

/// The most headers a node's response may have.
const MAX_HEADERS: usize = 64;

/// A response head longer than this is refused.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How much more room a read asks for.
const READ_CHUNK: usize = 16 * 1024;

/// A request as it goes on the wire, encoded once for every attempt.
#[derive(Debug, Clone)]
pub struct Wire {
    /// A plain vector: the request is only borrowed by its attempts, never shared.
    bytes: Vec<u8>,
    /// A `HEAD` request: its answer has no body whatever its headers say.
    head: bool,
}

impl Wire {
    /// `METHOD PATH HTTP/1.1`, the headers as given, and the body.
    pub fn encode(method: &Method, path: &PathAndQuery, headers: &HeaderMap, body: &[u8]) -> Self {
        let size = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
            + method.as_str().len()
            + path.as_str().len()
            + body.len()
            + 16;
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(method.as_str().as_bytes());
        out.extend_from_slice(b" ");
        out.extend_from_slice(path.as_str().as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        Self {
            bytes: out,
            head: *method == Method::HEAD,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// One open connection to a node and what has been read from it but not used yet.
#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Reads more into the buffer; 0 at the end of the stream.
    async fn read_more(&mut self) -> io::Result<usize> {
        self.buf.reserve(READ_CHUNK);
        self.stream.read_buf(&mut self.buf).await
    }
}

/// How the rest of a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes still to come.
    Length(u64),
    /// Chunked, at this point of the chunk grammar.
    Chunked(Chunk),
    /// Until the node closes the connection.
    Close,
}

/// Where a chunked body's reader stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// A message is not HTTP this balancer can read.
pub(crate) fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads a response head from `conn` for a request that was just written, and makes the
/// response: its body whole when it is all here already (the connection then goes back to
/// `address`'s pool at once), else streamed from the connection. An error before any byte
/// of the response arrived says so ([`ReadError::Nothing`]).
pub async fn read_response(
    mut conn: Conn,
    address: std::net::SocketAddr,
    wire: &Wire,
) -> Result<Response<BodyStream>, ReadError> {
    let mut got_any = !conn.buf.is_empty();
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn, wire.head)? {
                Parsed::Interim => continue,
                Parsed::Head(response, framing, keep_alive) => {
                    return Ok(finish(conn, address, response, framing, keep_alive));
                }
                Parsed::Partial => {}
            }
            if conn.buf.len() > MAX_HEAD_BYTES {
                return Err(ReadError::Broken(bad("the response head is too long")));
            }
        }
        let n = conn.read_more().await.map_err(|err| {
            if got_any {
                ReadError::Broken(err)
            } else {
                ReadError::Nothing(err)
            }
        })?;
        if n == 0 {
            let err = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the node closed the connection before answering",
            );
            return Err(if got_any {
                ReadError::Broken(err)
            } else {
                ReadError::Nothing(err)
            });
        }
        got_any = true;
    }
}

/// Why no response could be read.
#[derive(Debug)]
pub enum ReadError {
    /// Not one byte of a response came back.
    Nothing(io::Error),
    /// The response came back broken or unreadable.
    Broken(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Nothing(err) | Self::Broken(err) => err.fmt(f),
        }
    }
}

enum Parsed {
    /// A whole final response head, taken from the buffer.
    Head(Response<()>, Framing, bool),
    /// A 1xx interim response, skipped.
    Interim,
    /// More bytes are needed.
    Partial,
}

/// Parses a response head at the start of `conn.buf`, taking it out when it is whole.
fn parse_head(conn: &mut Conn, head_request: bool) -> Result<Parsed, ReadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let parsing = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        &conn.buf,
        &mut slots,
    );
    let len = match parsing {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(err) => {
            return Err(ReadError::Broken(bad(format!(
                "unreadable response head: {err}"
            ))));
        }
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| ReadError::Broken(bad(format!("bad status {code}"))))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Names and values are taken from the head's bytes once it is out of the buffer:
    // note where each one is (offsets, so the buffer is free to move).
    let base = conn.buf.as_ptr() as usize;
    // Within a head of at most MAX_HEAD_BYTES plus one read.
    let (mut few, mut many) = ([[0u32; 4]; FEW_HEADERS], Vec::new());
    let places = crate::headers::places(base, parsed.headers, &mut few, &mut many);
    let head = conn.buf.split_to(len).freeze();
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ReadError::Broken(bad("the node switched protocols")));
        }
        return Ok(Parsed::Interim);
    }
    let mut headers = crate::headers::recycled_map(places.len());
    // The framing headers, noted on the way so the usual answer needs no lookups after.
    let mut seen = Seen::default();
    for &mut [name_start, name_end, value_start, value_end] in places {
        let (name_start, name_end) = (name_start as usize, name_end as usize);
        let (value_start, value_end) = (value_start as usize, value_end as usize);
        let name = header_name(&head[name_start..name_end])
            .map_err(|_| ReadError::Broken(bad("bad header name in the response")))?;
        // Shares the head's bytes rather than copying them.
        let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
            .map_err(|_| ReadError::Broken(bad("bad header value in the response")))?;
        if name == CONTENT_LENGTH {
            let length = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ReadError::Broken(bad("bad Content-Length in the response")))?;
            if seen.length.is_some_and(|l| l != length) {
                return Err(ReadError::Broken(bad(
                    "conflicting Content-Length in the response",
                )));
            }
            seen.length = Some(length);
        } else if name == hyper::header::TRANSFER_ENCODING {
            seen.transfer_encoding = true;
        } else if name == CONNECTION {
            seen.connection = true;
        }
        headers.append(name, value);
    }
    let framing = framing(&headers, &seen, status, head_request);
    let keep_alive = (if seen.connection {
        keeps_alive(&headers, version)
    } else {
        version == Version::HTTP_11
    }) && framing != Framing::Close;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Parsed::Head(response, framing, keep_alive))
}

/// The node's own header, named once rather than copied out of every response.
const NODE: HeaderName = HeaderName::from_static(shared::api::NODE_HEADER);

/// A header name as `HeaderName::from_bytes` makes it, without its allocation for the
/// node's own (non-standard) header.
pub(crate) fn header_name(bytes: &[u8]) -> Result<HeaderName, hyper::header::InvalidHeaderName> {
    if bytes.eq_ignore_ascii_case(NODE.as_str().as_bytes()) {
        return Ok(NODE);
    }
    HeaderName::from_bytes(bytes)
}

/// What the header loop noted of a response's framing headers.
#[derive(Debug, Default)]
struct Seen {
    /// Its `Content-Length` (every one of them agreeing).
    length: Option<u64>,
    transfer_encoding: bool,
    connection: bool,
}

/// How the body of a response with `headers` and `status` is delimited (RFC 9112 § 6.3).
fn framing(headers: &HeaderMap, seen: &Seen, status: StatusCode, head_request: bool) -> Framing {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Framing::Length(0);
    }
    if seen.transfer_encoding
        && let Some(last) = headers
            .get_all(hyper::header::TRANSFER_ENCODING)
            .iter()
            .next_back()
    {
        let chunked = last
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        return if chunked {
            Framing::Chunked(Chunk::START)
        } else {
            Framing::Close
        };
    }
    seen.length.map_or(Framing::Close, Framing::Length)
}

/// Whether the node lets the connection be used again after this response.
fn keeps_alive(headers: &HeaderMap, version: Version) -> bool {
    let says = |token: &str| {
        headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if version == Version::HTTP_10 {
        says("keep-alive")
    } else {
        !says("close")
    }
}

/// Makes the response: whole when its body is here already, else streaming.
fn finish(
    mut conn: Conn,
    address: std::net::SocketAddr,
    response: Response<()>,
    framing: Framing,
    keep_alive: bool,
) -> Response<BodyStream> {
    if let Framing::Length(length) = framing
        && let Ok(length) = usize::try_from(length)
        && conn.buf.len() >= length
    {
        let body = conn.buf.split_to(length).freeze();
        // Anything after the body is a node speaking out of turn: the connection goes.
        if keep_alive && conn.buf.is_empty() {
            pool::checkin(address, conn);
        }
        return response.map(|()| BodyStream::whole(body));
    }
    let stream = Streaming {
        conn,
        address,
        framing,
        keep_alive,
    };
    response.map(|()| BodyStream {
        inner: Inner::Streaming(Box::new(stream)),
        slot: None,
    })
}

/// A response body: whole, or streamed from a node's connection. Holds the request's
/// in-flight slot on its node, if given, until it is read to the end or dropped.
#[derive(Debug)]
pub struct BodyStream {
    inner: Inner,
    slot: Option<InFlight>,
}

#[derive(Debug)]
enum Inner {
    /// The balancer's own answer.
    Own(http_body_util::Full<Bytes>),
    Whole(Option<Bytes>),
    Streaming(Box<Streaming>),
    Done,
}

#[derive(Debug)]
struct Streaming {
    conn: Conn,
    address: std::net::SocketAddr,
    framing: Framing,
    keep_alive: bool,
}

impl BodyStream {
    /// A body of these bytes.
    pub fn whole(bytes: impl Into<Bytes>) -> Self {
        let bytes: Bytes = bytes.into();
        Self {
            inner: Inner::Whole((!bytes.is_empty()).then_some(bytes)),
            slot: None,
        }
    }

    /// A body the balancer made itself.
    pub fn own(body: http_body_util::Full<Bytes>) -> Self {
        Self {
            inner: Inner::Own(body),
            slot: None,
        }
    }

    /// Keeps `slot` until the body is read to its end (or dropped).
    pub fn holding(mut self, slot: InFlight) -> Self {
        if matches!(self.inner, Inner::Whole(Some(_)) | Inner::Streaming(_)) {
            self.slot = Some(slot);
        }
        self
    }
}

impl Streaming {
    /// The next piece of the body, `None` at its end.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            match self.framing {
                Framing::Length(0) => return Poll::Ready(Ok(None)),
                Framing::Length(left) if !self.conn.buf.is_empty() => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.conn.buf.len());
                    self.framing = Framing::Length(left - take as u64);
                    return Poll::Ready(Ok(Some(self.conn.buf.split_to(take).freeze())));
                }
                Framing::Close if !self.conn.buf.is_empty() => {
                    return Poll::Ready(Ok(Some(self.conn.buf.split().freeze())));
                }
                Framing::Chunked(ref mut state) if !self.conn.buf.is_empty() => {
                    match state.step(&mut self.conn.buf)? {
                        Step::Data(bytes) => return Poll::Ready(Ok(Some(bytes))),
                        Step::End => {
                            self.framing = Framing::Length(0);
                            return Poll::Ready(Ok(None));
                        }
                        Step::Again => continue,
                        Step::More => {}
                    }
                }
                _ => {}
            }
            self.conn.buf.reserve(READ_CHUNK);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.conn.stream),
                cx,
                &mut self.conn.buf
            ))?;
            if read == 0 {
                if self.framing == Framing::Close {
                    return Poll::Ready(Ok(None));
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the node closed the connection in the middle of a body",
                )));
            }
        }
    }
}

impl Chunk {
    /// The state a chunked body starts in.
    pub(crate) const START: Self = Self::Size;

    /// One step of the chunked grammar over the buffered bytes (a request's body or a
    /// response's): after [`Step::End`] the body is over and its trailers skipped.
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> io::Result<Step> {
        match *self {
            Chunk::Size => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    *self = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                    Ok(Step::Again)
                }
                Ok(httparse::Status::Partial) => Ok(Step::More),
                Err(_) => Err(bad("bad chunk size")),
            },
            Chunk::Data(left) => {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let left = left - take as u64;
                *self = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                };
                Ok(Step::Data(buf.split_to(take).freeze()))
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(bad("a chunk does not end with CRLF"));
                }
                buf.advance(2);
                *self = Chunk::Size;
                Ok(Step::Again)
            }
            Chunk::Trailers => match buf.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    buf.advance(2);
                    Ok(Step::End)
                }
                // A trailer line: not forwarded (the head has gone already).
                Some(end) => {
                    buf.advance(end + 2);
                    Ok(Step::Again)
                }
                None => Ok(Step::More),
            },
        }
    }
}

/// What one step of the chunked grammar found.
pub(crate) enum Step {
    Data(Bytes),
    End,
    Again,
    More,
}

impl Body for BodyStream {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let next = match &mut this.inner {
            Inner::Own(body) => {
                return match ready!(Pin::new(body).poll_frame(cx)) {
                    Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
                    Some(Err(never)) => match never {},
                    None => Poll::Ready(None),
                };
            }
            Inner::Whole(bytes) => Ok(bytes.take()),
            Inner::Streaming(stream) => ready!(stream.poll_next(cx)),
            Inner::Done => Ok(None),
        };
        match next {
            Ok(Some(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Ok(None) => {
                // The end: a connection read exactly to it goes back to its pool.
                if let Inner::Streaming(stream) = std::mem::replace(&mut this.inner, Inner::Done)
                    && stream.keep_alive
                    && stream.conn.buf.is_empty()
                {
                    pool::checkin(stream.address, stream.conn);
                }
                this.slot = None;
                Poll::Ready(None)
            }
            Err(err) => {
                this.inner = Inner::Done;
                this.slot = None;
                Poll::Ready(Some(Err(err)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Own(body) => body.is_end_stream(),
            Inner::Whole(bytes) => bytes.is_none(),
            Inner::Streaming(_) => false,
            Inner::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Own(body) => body.size_hint(),
            Inner::Whole(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Inner::Whole(None) | Inner::Done => SizeHint::with_exact(0),
            Inner::Streaming(stream) => match stream.framing {
                Framing::Length(left) => SizeHint::with_exact(left),
                _ => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A node that answers each request it reads (up to its blank line) with the next of
    /// `answers`, written in pieces split at `|` so bodies arrive across reads.
    async fn node(answers: Vec<&'static str>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut seen = Vec::new();
            for answer in answers {
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 1024];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.clear();
                for piece in answer.split('|') {
                    if stream.write_all(piece.as_bytes()).await.is_err() {
                        return;
                    }
                    let _ = stream.flush().await;
                    tokio::task::yield_now().await;
                }
            }
        });
        address
    }

    fn wire(method: Method) -> Wire {
        Wire::encode(
            &method,
            &PathAndQuery::from_static("/events?x=1"),
            &HeaderMap::new(),
            b"",
        )
    }

    /// Sends `method /events?x=1` through the pool to the node at `address`.
    async fn send(
        address: std::net::SocketAddr,
        method: Method,
    ) -> Result<Response<BodyStream>, pool::SendError> {
        pool::send(address, std::time::Duration::from_secs(1), &wire(method)).await
    }

    async fn ask(address: std::net::SocketAddr, method: Method) -> (u16, HeaderMap, Bytes) {
        let response = send(address, method).await.expect("an answer");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("whole body").to_bytes();
        (parts.status.as_u16(), parts.headers, body)
    }

    #[test]
    fn a_request_is_encoded_once_with_its_headers_and_body() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("2"));
        headers.insert("x-node", HeaderValue::from_static("n1"));
        let wire = Wire::encode(
            &Method::POST,
            &PathAndQuery::from_static("/purchases"),
            &headers,
            b"{}",
        );
        assert_eq!(
            wire.bytes(),
            b"POST /purchases HTTP/1.1\r\ncontent-length: 2\r\nx-node: n1\r\n\r\n{}"
        );
        assert!(
            !wire.head
                && Wire::encode(
                    &Method::HEAD,
                    &PathAndQuery::from_static("/"),
                    &HeaderMap::new(),
                    b""
                )
                .head
        );
    }

    #[tokio::test]
    async fn bodies_of_every_framing_arrive_whole_and_the_connection_is_reused() {
        let address = node(vec![
            "HTTP/1.1 100 Continue\r\n\r\n|HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Node: n1\r\n\r\nhe|llo",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc|\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil| the end",
        ])
        .await;
        let (status, headers, body) = ask(address, Method::GET).await;
        assert_eq!(
            (status, &body[..]),
            (200, &b"hello"[..]),
            "the 100 is skipped"
        );
        assert_eq!(headers["x-node"], "n1");
        assert_eq!(pool::pooled(address), 1, "back in the pool at its end");
        let (status, _, body) = ask(address, Method::GET).await;
        assert_eq!((status, &body[..]), (200, &b"abcde"[..]), "chunked");
        let (status, _, body) = ask(address, Method::GET).await;
        assert_eq!((status, body.len()), (204, 0));
        let (status, headers, body) = ask(address, Method::HEAD).await;
        assert_eq!((status, body.len()), (200, 0), "no body after HEAD");
        assert_eq!(headers[CONTENT_LENGTH], "7");
        let (status, _, body) = ask(address, Method::GET).await;
        assert_eq!((status, &body[..]), (200, &b"until the end"[..]));
        assert_eq!(pool::pooled(address), 0, "a closed connection is not kept");
        pool::forget(address);
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_its_connection_is_dropped() {
        let address = node(vec!["HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"]).await;
        let response = send(address, Method::GET).await.expect("a head");
        assert!(response.into_body().collect().await.is_err());
        assert_eq!(pool::pooled(address), 0);
    }

    #[tokio::test]
    async fn garbage_or_silence_is_a_failed_send() {
        for answer in [
            "NOT HTTP AT ALL\r\n\r\n",
            "",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab",
            "HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\nab",
        ] {
            let address = node(vec![answer]).await;
            let err = send(address, Method::GET).await.expect_err("no response");
            assert!(matches!(err, pool::SendError::Sent(_)), "{err}");
        }
    }
}
