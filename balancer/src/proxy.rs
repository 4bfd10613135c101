//! Forwarding one request: buffering its body so it can be sent again, the header rules
//! (hop-by-hop headers stripped both ways, `X-Forwarded-For` appended), the timeouts, and
//! the retry policy that decides whether a failed request may go on to the next node.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{
    CONNECTION, CONTENT_LENGTH, EXPECT, HOST, HeaderMap, HeaderName, HeaderValue, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use hyper::http::uri::{PathAndQuery, Scheme};
use hyper::{Method, Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use shared::api::IDEMPOTENCY_HEADER;
use tracing::{debug, warn};

use crate::ResponseBody;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::selection::RoundRobin;
use crate::upstreams::{Node, Upstreams};

/// The most of a refused (too large) request body read and dropped before answering.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// The pooled HTTP client to the nodes. The pool is keyed by the URI's authority, and
/// requests are addressed to the resolved `IP:PORT`, so each address has a pool of its own.
pub type NodeClient = Client<HttpConnector, Full<Bytes>>;

/// Builds the pooled client to the nodes, with `connect_timeout` on opening a connection.
pub fn node_client(connect_timeout: Duration) -> NodeClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Headers that describe one connection rather than the message, so never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
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
    HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-")
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
    for name in listed.iter().chain(&proxy).chain(&HOP_BY_HOP) {
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

/// The client's address as a header value (an IPv4-mapped IPv6 address as IPv4).
fn client_value(client: IpAddr) -> HeaderValue {
    let text = match client.to_canonical() {
        IpAddr::V4(ip) => HeaderValue::from_bytes(ipv4_text(ip, &mut [0; 15])),
        IpAddr::V6(ip) => HeaderValue::from_str(&ip.to_string()),
    };
    text.unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Appends the client's address to `X-Forwarded-For`, after any addresses already there.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let client = client_value(client);
    let earlier: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    if earlier.is_empty() {
        headers.insert(X_FORWARDED_FOR, client);
        return;
    }
    let joined = format!(
        "{}, {}",
        earlier.join(", "),
        client.to_str().unwrap_or("unknown")
    );
    let value = HeaderValue::from_str(&joined).unwrap_or(client);
    headers.insert(X_FORWARDED_FOR, value);
}

/// Whether a request that a node may already have acted on can be sent to another node:
/// reads are safe to repeat, and a write with an `Idempotency-Key` is made safe by the node.
pub fn may_resend(method: &Method, headers: &HeaderMap) -> bool {
    *method == Method::GET || *method == Method::HEAD || headers.contains_key(IDEMPOTENCY_HEADER)
}

/// How one forwarding attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// No connection could be opened: nothing was sent, so trying elsewhere is always safe.
    Connect,
    /// The connection broke after the request was (possibly) sent.
    Sent,
    /// The node had the request but sent no response headers in time.
    Timeout,
}

/// Whether a request that failed this way may go on to the next node.
pub fn may_try_next(failure: Failure, resend_allowed: bool) -> bool {
    failure == Failure::Connect || resend_allowed
}

/// The error a client gets when its request goes no further; `worst` is the most telling
/// failure among its attempts (a timeout over a broken connection over a refused one).
pub fn give_up(worst: Failure, resend_allowed: bool, response_timeout: Duration) -> Error {
    match worst {
        Failure::Connect => Error::NoHealthyNodes,
        Failure::Sent if resend_allowed => {
            Error::BadGateway("every node tried failed before answering")
        }
        Failure::Sent => Error::BadGateway(
            "the node failed after receiving the request, which was not sent again because \
             that could repeat it; only GET, HEAD and requests with an Idempotency-Key header \
             are retried",
        ),
        Failure::Timeout => Error::UpstreamTimeout(response_timeout),
    }
}

/// Forwards requests to the nodes.
#[derive(Debug, Clone)]
pub struct Proxy {
    client: NodeClient,
    response_timeout: Duration,
    max_body_bytes: usize,
    /// Where each node's time to answer is recorded, when set.
    metrics: Option<Arc<Metrics>>,
}

/// The parts of a client request kept to send it, possibly more than once.
struct Outgoing {
    method: Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    body: Bytes,
}

impl Proxy {
    pub fn new(client: NodeClient, response_timeout: Duration, max_body_bytes: usize) -> Self {
        Self {
            client,
            response_timeout,
            max_body_bytes,
            metrics: None,
        }
    }

    /// Records each node's time to answer in `metrics`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        Self {
            metrics: Some(metrics),
            ..self
        }
    }

    /// Sends `request` to the next healthy node, going on to others as the retry policy
    /// allows, and streams back the first response.
    pub async fn forward<B>(
        &self,
        upstreams: &Upstreams,
        selector: &RoundRobin,
        request: Request<B>,
        peer: SocketAddr,
    ) -> Result<Response<ResponseBody>, Error>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let outgoing = self.prepare(request, peer).await?;
        let resend_allowed = may_resend(&outgoing.method, &outgoing.headers);
        let order = selector.order(&upstreams.healthy());
        let mut worst: Option<Failure> = None;
        let attempts = order.len();
        for (attempt, node) in order.into_iter().enumerate() {
            let failure = match self.attempt(&node, &outgoing).await {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            worst = worst.max(Some(failure));
            if !may_try_next(failure, resend_allowed) {
                return Err(give_up(failure, resend_allowed, self.response_timeout));
            }
            if attempt + 1 < attempts {
                node.record_retry();
                debug!(node = %node.address, ?failure, "trying the next node");
            }
        }
        Err(match worst {
            Some(worst) => give_up(worst, resend_allowed, self.response_timeout),
            None => Error::NoHealthyNodes,
        })
    }

    /// Buffers the body (within the limit) and applies the header rules once.
    async fn prepare<B>(&self, request: Request<B>, peer: SocketAddr) -> Result<Outgoing, Error>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limit = self.max_body_bytes;
        if declared.is_some_and(|length| length > limit as u64) {
            // Read and drop what the client is still sending (within reason), so it gets
            // the 413 rather than a broken pipe.
            let drain = Limited::new(body, DRAIN_LIMIT).collect();
            let _ = tokio::time::timeout(self.response_timeout, drain).await;
            return Err(Error::PayloadTooLarge { limit });
        }
        let collected =
            tokio::time::timeout(self.response_timeout, Limited::new(body, limit).collect()).await;
        let body = match collected {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(Error::PayloadTooLarge { limit });
            }
            Ok(Err(err)) => {
                debug!(cause = %err, "cannot read a request body");
                return Err(Error::BodyUnreadable);
            }
            Err(_) => {
                debug!("a request body did not arrive in time");
                return Err(Error::BodyUnreadable);
            }
        };

        let had_body_framing = parts.headers.contains_key(CONTENT_LENGTH)
            || parts.headers.contains_key(TRANSFER_ENCODING);
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        // The body is already here in full, so there is nothing left to wait for.
        headers.remove(EXPECT);
        headers.remove(CONTENT_LENGTH);
        if had_body_framing || !body.is_empty() {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        // An HTTP/2 client names the host in the URI only; nodes still see a Host header.
        if !headers.contains_key(HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(value) = HeaderValue::from_str(authority.as_str())
        {
            headers.insert(HOST, value);
        }
        append_forwarded_for(&mut headers, peer.ip());
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Ok(Outgoing {
            method: parts.method,
            path_and_query,
            headers,
            body,
        })
    }

    /// One attempt on one node.
    async fn attempt(
        &self,
        node: &Arc<Node>,
        outgoing: &Outgoing,
    ) -> Result<Response<ResponseBody>, Failure> {
        let mut uri = hyper::http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(node.authority().clone());
        uri.path_and_query = Some(outgoing.path_and_query.clone());
        let uri = match Uri::from_parts(uri) {
            Ok(uri) => uri,
            Err(err) => {
                // Scheme, authority and path are each valid already, so this cannot really
                // happen; counting it as a refused connection moves the request along.
                warn!(cause = %err, node = %node.address, "cannot build the node's URI");
                return Err(Failure::Connect);
            }
        };
        let mut request = Request::new(Full::new(outgoing.body.clone()));
        *request.method_mut() = outgoing.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = outgoing.headers.clone();

        let in_flight = node.start_request();
        let sent = std::time::Instant::now();
        let failure =
            match tokio::time::timeout(self.response_timeout, self.client.request(request)).await {
                Ok(Ok(response)) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.upstream_answered(node, sent.elapsed());
                    }
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    // The guard travels with the body, so the request counts as in flight until
                    // its response has been streamed back (or the client went away).
                    let body = body
                        .map_frame(move |frame| {
                            let _ = &in_flight;
                            frame
                        })
                        .boxed_unsync();
                    return Ok(Response::from_parts(parts, body));
                }
                Ok(Err(err)) if err.is_connect() => {
                    let reason = describe(&err);
                    if node.mark_down(reason.clone()) {
                        warn!(node = %node.address, cause = %reason, "node down: cannot connect");
                    }
                    node.record_failure(reason);
                    Failure::Connect
                }
                Ok(Err(err)) => {
                    let reason = describe(&err);
                    warn!(node = %node.address, cause = %reason, "node failed during a request");
                    node.record_failure(reason);
                    Failure::Sent
                }
                Err(_) => {
                    let reason = format!("no response within {:?}", self.response_timeout);
                    warn!(node = %node.address, cause = %reason, "node too slow");
                    node.record_failure(reason);
                    Failure::Timeout
                }
            };
        Err(failure)
    }
}

/// An error and its chain of causes, as one line.
pub(crate) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
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

    #[test]
    fn only_reads_and_keyed_writes_may_be_sent_again() {
        let none = HeaderMap::new();
        let keyed = headers(&[("Idempotency-Key", "abc")]);
        assert!(may_resend(&Method::GET, &none));
        assert!(may_resend(&Method::HEAD, &none));
        assert!(!may_resend(&Method::POST, &none));
        assert!(!may_resend(&Method::DELETE, &none));
        assert!(may_resend(&Method::POST, &keyed));
    }

    #[test]
    fn a_refused_connection_always_moves_on_but_a_sent_write_does_not() {
        assert!(may_try_next(Failure::Connect, false));
        assert!(may_try_next(Failure::Connect, true));
        assert!(!may_try_next(Failure::Sent, false));
        assert!(may_try_next(Failure::Sent, true));
        assert!(!may_try_next(Failure::Timeout, false));
        assert!(may_try_next(Failure::Timeout, true));
    }

    #[test]
    fn giving_up_names_the_most_telling_failure() {
        let timeout = Duration::from_secs(10);
        assert_eq!(
            give_up(Failure::Connect, false, timeout).code(),
            "no_healthy_nodes"
        );
        let unsafe_write = give_up(Failure::Sent, false, timeout);
        assert_eq!(unsafe_write.code(), "bad_gateway");
        assert!(unsafe_write.to_string().contains("Idempotency-Key"));
        assert_eq!(give_up(Failure::Sent, true, timeout).code(), "bad_gateway");
        assert_eq!(
            give_up(Failure::Timeout, true, timeout).code(),
            "upstream_timeout"
        );
        assert!(Failure::Timeout > Failure::Sent && Failure::Sent > Failure::Connect);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_before_any_node_is_asked() {
        let proxy = Proxy::new(
            node_client(Duration::from_secs(1)),
            Duration::from_secs(1),
            8,
        );
        let upstreams = Upstreams::new(Vec::new());
        let request = Request::post("/purchases")
            .body(Full::new(Bytes::from_static(b"0123456789")))
            .expect("request");
        let peer = SocketAddr::from(([127, 0, 0, 1], 5000));
        let err = proxy
            .forward(&upstreams, &RoundRobin::new(), request, peer)
            .await
            .expect_err("too large");
        assert_eq!(err.code(), "payload_too_large");
    }

    #[tokio::test]
    async fn with_no_nodes_up_the_answer_is_no_healthy_nodes() {
        let proxy = Proxy::new(
            node_client(Duration::from_secs(1)),
            Duration::from_secs(1),
            8,
        );
        let upstreams = Upstreams::new(Vec::new());
        let request = Request::get("/events")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let peer = SocketAddr::from(([127, 0, 0, 1], 5000));
        let err = proxy
            .forward(&upstreams, &RoundRobin::new(), request, peer)
            .await
            .expect_err("no nodes");
        assert_eq!(err.code(), "no_healthy_nodes");
    }
}
