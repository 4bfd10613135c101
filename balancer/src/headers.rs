//! The header rules of forwarding: hop-by-hop headers stripped both ways, the body's
//! framing rewritten for a buffered body, `Host` kept, and `X-Forwarded-For` appended.

use std::net::IpAddr;

use hyper::Uri;
use hyper::header::{
    CONNECTION, CONTENT_LENGTH, EXPECT, HOST, HeaderMap, HeaderName, HeaderValue, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};

/// Headers that describe one connection rather than the message, so never forwarded.
static HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Whether `name` is hop-by-hop whatever `Connection` says: the fixed list or `Proxy-*`.
fn always_hop_by_hop(name: &HeaderName) -> bool {
    // By length first: most names are ruled out without comparing any bytes.
    let name = name.as_str();
    let listed = match name.len() {
        2 | 7 | 10 | 17 => HOP_BY_HOP.iter().any(|hop| hop.as_str() == name),
        _ => false,
    };
    listed || name.starts_with("proxy-")
}

/// Removes hop-by-hop headers: the fixed list, every `Proxy-*` header, and every header
/// named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // The usual case, with nothing to remove, costs one pass over the names and no
    // hashing. `Connection` is in the fixed list, so a message naming others is not.
    if !headers.keys().any(always_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in listed.iter().chain(&proxy).chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// An IPv4 address as dotted text, written without the formatting machinery.
fn ipv4_text(ip: std::net::Ipv4Addr, out: &mut [u8; 15]) -> &[u8] {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            out[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            out[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        out[len] = b'0' + octet % 10;
        len += 1;
    }
    &out[..len]
}

thread_local! {
    /// The last client address this thread wrote as a header value, and the value: a
    /// connection's requests all come from one address, so most requests reuse it.
    static LAST_CLIENT: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// The client's address as a header value (an IPv4-mapped IPv6 address as IPv4).
fn client_value(client: IpAddr) -> HeaderValue {
    LAST_CLIENT.with_borrow_mut(|last| match last {
        Some((ip, value)) if *ip == client => value.clone(),
        _ => {
            let value = client_text(client);
            *last = Some((client, value.clone()));
            value
        }
    })
}

fn client_text(client: IpAddr) -> HeaderValue {
    let text = match client.to_canonical() {
        IpAddr::V4(ip) => HeaderValue::from_bytes(ipv4_text(ip, &mut [0; 15])),
        IpAddr::V6(ip) => HeaderValue::from_str(&ip.to_string()),
    };
    text.unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Appends the client's address to `X-Forwarded-For`, after any addresses already there.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let client = client_value(client);
    // One lookup: the usual request has no earlier hops.
    let mut entry = match headers.entry(X_FORWARDED_FOR) {
        hyper::header::Entry::Vacant(vacant) => {
            vacant.insert(client);
            return;
        }
        hyper::header::Entry::Occupied(entry) => entry,
    };
    let earlier: Vec<&str> = entry
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let joined = format!(
        "{}, {}",
        earlier.join(", "),
        client.to_str().unwrap_or("unknown")
    );
    let value = HeaderValue::from_str(&joined).unwrap_or(client);
    entry.insert(value);
}

thread_local! {
    /// Header maps of answered requests, emptied, for the next ones: a map's two
    /// allocations are made once per thread rather than once per message.
    static SPARE_MAPS: std::cell::RefCell<Vec<HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// At most this many spare maps are kept per thread, none larger than `SPARE_CAPACITY`.
const SPARE_MAPS_KEPT: usize = 8;
const SPARE_CAPACITY: usize = 128;

/// An empty header map with room for `capacity` headers, reused when one is spare.
pub fn recycled_map(capacity: usize) -> HeaderMap {
    match SPARE_MAPS.with_borrow_mut(Vec::pop) {
        Some(mut map) => {
            map.reserve(capacity);
            map
        }
        None => HeaderMap::with_capacity(capacity),
    }
}

/// Empties `map` and keeps it for [`recycled_map`].
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() > SPARE_CAPACITY {
        return;
    }
    map.clear();
    SPARE_MAPS.with_borrow_mut(|spare| {
        if spare.len() < SPARE_MAPS_KEPT {
            spare.push(map);
        }
    });
}

/// A message with at most this many headers notes where they are on the stack.
pub const FEW_HEADERS: usize = 16;

/// Notes where each of `headers` (parsed by httparse from a buffer starting at address
/// `base`) is in that buffer, as `[name start, name end, value start, value end]` offsets,
/// so the head can be split off the buffer and the names and values sliced from it without
/// a copy: in `few` when it is enough, else in `many` grown to fit. A head is at most a
/// few hundred KiB, so offsets fit in `u32`.
pub fn places<'a>(
    base: usize,
    headers: &[httparse::Header<'_>],
    few: &'a mut [[u32; 4]; FEW_HEADERS],
    many: &'a mut Vec<[u32; 4]>,
) -> &'a mut [[u32; 4]] {
    let places = if headers.len() <= FEW_HEADERS {
        &mut few[..headers.len()]
    } else {
        many.resize(headers.len(), [0; 4]);
        many.as_mut_slice()
    };
    for (place, header) in places.iter_mut().zip(headers) {
        let name = (header.name.as_ptr() as usize - base) as u32;
        let value = (header.value.as_ptr() as usize - base) as u32;
        *place = [
            name,
            name + header.name.len() as u32,
            value,
            value + header.value.len() as u32,
        ];
    }
    places
}

/// Applies every rule to a client request's headers once, before its first attempt:
/// `body_len` is the buffered body's length and `uri` the request's target.
pub fn prepare_request(headers: &mut HeaderMap, uri: &Uri, body_len: usize, client: IpAddr) {
    // One pass over the (few) names instead of a hashed lookup for each rule.
    let (mut length, mut chunked, mut expect, mut host) = (false, false, false, false);
    for name in headers.keys() {
        length |= *name == CONTENT_LENGTH;
        chunked |= *name == TRANSFER_ENCODING;
        expect |= *name == EXPECT;
        host |= *name == HOST;
    }
    strip_hop_by_hop(headers);
    // The body is already here in full, so there is nothing left to wait for.
    if expect {
        headers.remove(EXPECT);
    }
    if length || chunked || body_len > 0 {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body_len));
    }
    // An HTTP/2 client names the host in the URI only; nodes still see a Host header.
    if !host
        && let Some(authority) = uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(HOST, value);
    }
    append_forwarded_for(headers, client);
}

/// A header map from name and value pairs, for the balancer's unit tests.
#[cfg(test)]
pub(crate) fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    map
}

#[cfg(test)]
mod tests {
    use super::header_map as headers;
    use super::*;

    #[test]
    fn a_buffered_body_gets_a_content_length_and_no_expect() {
        let mut map = headers(&[("transfer-encoding", "chunked"), ("expect", "100-continue")]);
        let uri: Uri = "http://example.test/purchases".parse().expect("uri");
        prepare_request(&mut map, &uri, 12, "10.0.0.1".parse().expect("ip"));
        assert_eq!(map[CONTENT_LENGTH], "12");
        assert_eq!(map[HOST], "example.test");
        assert!(map.get(EXPECT).is_none() && map.get(TRANSFER_ENCODING).is_none());
        let mut map = HeaderMap::new();
        prepare_request(
            &mut map,
            &"/events".parse().expect("uri"),
            0,
            "10.0.0.1".parse().expect("ip"),
        );
        assert!(map.get(CONTENT_LENGTH).is_none(), "a GET gets no framing");
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_stripped() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Custom-Hop"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-custom-hop", "1"),
            ("x-other", "2"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-node", "node-1"),
            ("idempotency-key", "k1"),
            ("content-type", "application/json"),
        ]);
        strip_hop_by_hop(&mut map);
        let mut left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "idempotency-key", "x-node"]);
    }

    #[test]
    fn the_fast_path_strips_nothing_from_an_ordinary_message() {
        let mut map = headers(&[("host", "a"), ("x-node", "node-1"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut map);
        assert_eq!(map.len(), 3);
        let mut map = headers(&[("host", "a"), ("proxy-authorization", "x")]);
        strip_hop_by_hop(&mut map);
        assert_eq!(
            map.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["host"]
        );
    }

    #[test]
    fn client_addresses_are_written_as_text() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.100.255.9",
            "192.168.1.10",
            "::1",
            "fe80::1",
        ] {
            let value = client_value(ip.parse().expect("ip"));
            assert_eq!(value, ip);
        }
        assert_eq!(
            client_value("::ffff:10.0.0.1".parse().expect("ip")),
            "10.0.0.1"
        );
    }

    #[test]
    fn forwarded_for_is_appended_after_earlier_hops() {
        let mut map = HeaderMap::new();
        append_forwarded_for(&mut map, "10.0.0.1".parse().expect("ip"));
        assert_eq!(map[&X_FORWARDED_FOR], "10.0.0.1");

        let mut map = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        append_forwarded_for(&mut map, "::ffff:127.0.0.1".parse().expect("ip"));
        assert_eq!(map[&X_FORWARDED_FOR], "1.2.3.4, 5.6.7.8, 127.0.0.1");
        assert_eq!(map.get_all(&X_FORWARDED_FOR).iter().count(), 1);
    }
}
