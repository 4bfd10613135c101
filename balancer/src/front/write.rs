//! Response writing: the status line, the handler's headers as given, a `Date` (formatted
//! at most once a second per thread) and the framing: `Content-Length` when the body's
//! size is known, else chunked (HTTP/1.1) or until close (HTTP/1.0). A body that is here
//! already goes out with the head in one write; a streamed one is written as it comes.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::Poll;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame};
use hyper::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::ResponseBody;

/// A body at most this long is copied behind the head, for one plain write.
const COPY_LIMIT: usize = 4096;

/// What the request said about how its response is written.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    /// A `HEAD` request: headers as for `GET`, no body.
    pub head: bool,
    /// An HTTP/1.0 client: no chunked framing, keep-alive only when asked for.
    pub http10: bool,
}

/// How the body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length,
    Chunked,
    Close,
}

/// Writes `response` to `io`, building its head in `out`. `keep_alive` says whether the
/// connection may be used again and comes back false when the framing needs a close.
/// An error leaves the connection unusable (a body that failed half-way, a write error).
pub async fn write_response<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut BytesMut,
    response: Response<ResponseBody>,
    asked: Asked,
    keep_alive: &mut bool,
) -> io::Result<()> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut dated, mut given_length) = (false, false);
    for (name, value) in &parts.headers {
        if *name == TRANSFER_ENCODING || *name == CONNECTION {
            continue;
        }
        dated |= *name == DATE;
        given_length |= *name == CONTENT_LENGTH;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let exact = body.size_hint().exact();
    let framing = if bodiless || asked.head {
        Framing::None
    } else if exact.is_some() || given_length {
        Framing::Length
    } else if asked.http10 {
        Framing::Close
    } else {
        Framing::Chunked
    };
    if framing == Framing::Close {
        *keep_alive = false;
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        extend_date(out);
        out.extend_from_slice(b"\r\n");
    }
    // A `HEAD` answer says the length a `GET` would have, when it is known.
    if !given_length
        && !bodiless
        && let Some(length) = exact
        && !(asked.head && length == 0)
    {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa(length, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !*keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if asked.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    crate::headers::recycle(parts.headers);
    if framing == Framing::None {
        return io.write_all(out).await;
    }
    // The first piece of the body, if it is here already, goes with the head.
    let mut first = Some(poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await);
    let mut head_sent = false;
    loop {
        let frame = match first.take() {
            Some(ready) => match ready {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // Nothing yet: the client gets the head meanwhile.
                    io.write_all(out).await?;
                    head_sent = true;
                    body_frame(&mut body).await
                }
            },
            None => body_frame(&mut body).await,
        };
        let data = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers are not forwarded.
                Err(_) => continue,
            },
            Some(Err(err)) => return Err(io::Error::other(err)),
            None => break,
        };
        if data.is_empty() {
            continue;
        }
        if head_sent {
            out.clear();
        }
        head_sent = true;
        write_data(io, out, data, framing == Framing::Chunked).await?;
    }
    match (head_sent, framing == Framing::Chunked) {
        (false, true) => {
            out.extend_from_slice(b"0\r\n\r\n");
            io.write_all(out).await
        }
        (false, false) => io.write_all(out).await,
        (true, true) => io.write_all(b"0\r\n\r\n").await,
        (true, false) => Ok(()),
    }
}

async fn body_frame(body: &mut ResponseBody) -> Option<Result<Frame<Bytes>, io::Error>> {
    poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
}

/// Writes `out` (the head, or nothing) and one piece of the body, in its chunk framing
/// if `chunked`: copied behind the head when small, else in one vectored write.
async fn write_data<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut BytesMut,
    data: Bytes,
    chunked: bool,
) -> io::Result<()> {
    let mut size = [0u8; 18];
    let prefix: &[u8] = if chunked {
        let len = hex(data.len(), &mut size);
        size[len..len + 2].copy_from_slice(b"\r\n");
        &size[..len + 2]
    } else {
        &[]
    };
    let suffix: &[u8] = if chunked { b"\r\n" } else { &[] };
    if data.len() <= COPY_LIMIT {
        out.extend_from_slice(prefix);
        out.extend_from_slice(&data);
        out.extend_from_slice(suffix);
        return io.write_all(out).await;
    }
    write_all_vectored(io, [out, prefix, &data, suffix]).await
}

/// Writes every byte of `parts`, in as few vectored writes as the stream takes.
async fn write_all_vectored<S: AsyncWrite + Unpin>(
    io: &mut S,
    mut parts: [&[u8]; 4],
) -> io::Result<()> {
    loop {
        let slices = parts.map(IoSlice::new);
        if slices.iter().all(|s| s.is_empty()) {
            return Ok(());
        }
        let mut n = io.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        for part in &mut parts {
            let used = n.min(part.len());
            *part = &part[used..];
            n -= used;
        }
    }
}

/// `n` in decimal, without the formatting machinery.
fn itoa(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut at = out.len();
    loop {
        at -= 1;
        out[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &out[at..];
        }
    }
}

/// `n` in hexadecimal at the start of `out`; its length.
fn hex(n: usize, out: &mut [u8; 18]) -> usize {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, digit) in out.iter_mut().take(digits).enumerate() {
        let nibble = (n >> (4 * (digits - 1 - i))) & 0xf;
        *digit = b"0123456789abcdef"[nibble];
    }
    digits
}

thread_local! {
    /// The second last formatted as an HTTP date on this thread, and its text.
    static DATE_TEXT: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
}

/// Appends the current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn extend_date(out: &mut BytesMut) {
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE_TEXT.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *cached = second;
            }
        }
        out.extend_from_slice(text);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal_and_hex() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(112, &mut [0; 20]), b"112");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
        let mut out = [0; 18];
        let len = hex(0, &mut out);
        assert_eq!(&out[..len], b"0");
        let len = hex(0x1f3a, &mut out);
        assert_eq!(&out[..len], b"1f3a");
    }

    #[test]
    fn the_date_is_an_http_date() {
        let mut out = BytesMut::new();
        extend_date(&mut out);
        let text = std::str::from_utf8(&out).expect("ASCII");
        assert!(httpdate::parse_http_date(text).is_ok(), "{text}");
    }
}
