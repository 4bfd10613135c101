//! Request heads: parsed with `httparse` straight from the connection's read buffer into a
//! `hyper::Request` whose header values share the head's bytes, with the body's framing
//! (RFC 9112 § 6), the connection's keep-alive and `Expect: 100-continue` noted on the way.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use hyper::header::{
    CONNECTION, CONTENT_LENGTH, EXPECT, HeaderMap, HeaderName, HeaderValue, TRANSFER_ENCODING,
};
use hyper::{Method, Request, Uri, Version};

use crate::error::Error;
use crate::h1::Chunk;
use crate::headers::FEW_HEADERS;

/// The most headers a request may have.
pub const MAX_HEADERS: usize = 100;

/// A request head longer than this is refused with a 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How the rest of a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLeft {
    /// This many bytes still to come.
    Length(u64),
    /// Chunked, at this point of the chunk grammar.
    Chunked(Chunk),
    /// Read to its end (or there was none).
    Done,
}

/// A whole request head, out of the buffer.
pub struct Head {
    pub request: Request<()>,
    pub body: BodyLeft,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before sending its body.
    pub expects_continue: bool,
}

/// Parses a request head at the start of `buf`, taking it out when it is whole; `None`
/// when more bytes are needed.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
        Err(_) => return Err(Error::Malformed("the request head is not HTTP/1.x")),
    };
    if len > MAX_HEAD_BYTES {
        return Err(too_large());
    }
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| Error::Malformed("bad method"))?;
    if method == Method::CONNECT {
        return Err(Error::Unsupported("CONNECT"));
    }
    // Names, values and the target are taken from the head's bytes once it is out of the
    // buffer: note where each one is (offsets, so the buffer is free to move).
    let base = buf.as_ptr() as usize;
    let target = parsed.path.unwrap_or_default();
    let target = (target.as_ptr() as usize - base, target.len());
    let count = parsed.headers.len();
    let (mut few, mut many) = ([[0u32; 4]; FEW_HEADERS], Vec::new());
    let places = crate::headers::places(base, parsed.headers, &mut few, &mut many);
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| Error::Malformed("bad request target"))?;
    // Room for the two headers forwarding adds (Content-Length, X-Forwarded-For), so the
    // map is not grown per request.
    let mut headers = crate::headers::recycled_map(count + 2);
    let mut seen = Seen::default();
    for &mut [name_start, name_end, value_start, value_end] in places {
        let name = HeaderName::from_bytes(&head[name_start as usize..name_end as usize])
            .map_err(|_| Error::Malformed("bad header name"))?;
        let value = value_of(&head, value_start as usize, value_end as usize)?;
        seen.note(&name, &value)?;
        headers.append(name, value);
    }
    let body = framing(&headers, &seen, version)?;
    let says = |token| seen.connection && says(&headers, token);
    let keep_alive = if version == Version::HTTP_10 {
        says("keep-alive")
    } else {
        // A message with both framings may be an attack on an intermediary: answer it,
        // then close (RFC 9112 § 6.1).
        !(says("close") || seen.transfer_encoding && seen.length.is_some())
    };
    let expects_continue = seen.expect
        && version == Version::HTTP_11
        && body != BodyLeft::Done
        && headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        body,
        keep_alive,
        expects_continue,
    }))
}

fn too_large() -> Error {
    Error::HeadTooLarge {
        limit: MAX_HEAD_BYTES,
        headers: MAX_HEADERS,
    }
}

/// A header value sharing the head's bytes.
fn value_of(head: &Bytes, start: usize, end: usize) -> Result<HeaderValue, Error> {
    HeaderValue::from_maybe_shared(head.slice(start..end))
        .map_err(|_| Error::Malformed("bad header value"))
}

/// What the header loop noted of a request's framing and connection headers.
#[derive(Debug, Default)]
struct Seen {
    /// Its `Content-Length` (every one of them agreeing).
    length: Option<u64>,
    transfer_encoding: bool,
    connection: bool,
    expect: bool,
}

impl Seen {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), Error> {
        if *name == CONTENT_LENGTH {
            let length =
                parse_length(value.as_bytes()).ok_or(Error::Malformed("bad Content-Length"))?;
            if self.length.is_some_and(|l| l != length) {
                return Err(Error::Malformed("conflicting Content-Length headers"));
            }
            self.length = Some(length);
        } else if *name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if *name == CONNECTION {
            self.connection = true;
        } else if *name == EXPECT {
            self.expect = true;
        }
        Ok(())
    }
}

/// A `Content-Length` value: digits only (a list of equal values, as some clients send,
/// is accepted as one).
fn parse_length(value: &[u8]) -> Option<u64> {
    let mut agreed = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let length = std::str::from_utf8(part).ok()?.parse::<u64>().ok()?;
        if agreed.is_some_and(|a| a != length) {
            return None;
        }
        agreed = Some(length);
    }
    agreed
}

/// How the body of a request with `headers` is delimited (RFC 9112 § 6.3).
fn framing(headers: &HeaderMap, seen: &Seen, version: Version) -> Result<BodyLeft, Error> {
    if seen.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(Error::Malformed("Transfer-Encoding in an HTTP/1.0 request"));
        }
        let chunked = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|last| last.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        return if chunked {
            Ok(BodyLeft::Chunked(Chunk::START))
        } else {
            Err(Error::Malformed(
                "a Transfer-Encoding that does not end in chunked",
            ))
        };
    }
    Ok(match seen.length {
        Some(0) | None => BodyLeft::Done,
        Some(length) => BodyLeft::Length(length),
    })
}

/// Whether a `Connection` header of `headers` lists `token`.
fn says(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}
