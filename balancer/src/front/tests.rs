//! Tests of the front: raw HTTP/1.x written into an in-memory connection (or HTTP/2 from
//! hyper's client), answered by a balancer with no nodes or with one fake echoing node.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serve::Activity;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Balancer, Settings, upstreams};

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A fake node: answers `/stream` with a body of unknown length ("ab" then "cd"), `/slow`
/// once `release` is notified (saying so on `arrived`), and everything else with a JSON
/// echo of the method, path and body.
struct Node {
    address: SocketAddr,
    arrived: Arc<Notify>,
    release: Arc<Notify>,
}

impl Node {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let gates = (Arc::clone(&arrived), Arc::clone(&release));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let gates = gates.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let gates = gates.clone();
                    async move { Ok::<_, Infallible>(echo(request, &gates.0, &gates.1).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self {
            address,
            arrived,
            release,
        }
    }
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn echo(
    request: Request<Incoming>,
    arrived: &Notify,
    release: &Notify,
) -> Response<EchoBody> {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    if path == "/stream" {
        return Response::new(Pieces(VecDeque::from(["ab", "cd"])).boxed());
    }
    if path == "/slow" {
        arrived.notify_one();
        release.notified().await;
    }
    let body = request
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let echo = serde_json::json!({
        "method": method,
        "path": path,
        "body": String::from_utf8_lossy(&body),
    });
    let bytes = Bytes::from(serde_json::to_vec(&echo).expect("JSON"));
    Response::new(Full::new(bytes).boxed())
}

/// A body of these pieces, of unknown length: hyper sends it chunked.
struct Pieces(VecDeque<&'static str>);

impl Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let piece = self.get_mut().0.pop_front();
        Poll::Ready(piece.map(|piece| Ok(Frame::data(Bytes::from_static(piece.as_bytes())))))
    }
}

/// A balancer forwarding to `node` (to nowhere when `None`), with `adjust`ed settings.
async fn balancer(node: Option<&Node>, adjust: impl FnOnce(&mut Settings)) -> Balancer {
    let nodes = node.map_or_else(|| "127.0.0.1:1".to_owned(), |n| n.address.to_string());
    let mut settings = Settings {
        nodes: serde_json::from_value(serde_json::json!(nodes)).expect("node list"),
        ..Settings::default()
    };
    adjust(&mut settings);
    let balancer = Balancer::new(&settings);
    if node.is_some() {
        balancer.upstreams().refresh(upstreams::resolve_dns).await;
    }
    balancer
}

/// How long a test waits for the front before failing (a bound on a hang, not a speed).
const PATIENCE: Duration = Duration::from_secs(20);

/// The client's end of one in-memory connection the front serves.
struct Client {
    io: DuplexStream,
    /// Read from the front but not used yet.
    read: Vec<u8>,
    /// The connection's close token, as eviction or shutdown cancels it.
    close: CancellationToken,
    served: JoinHandle<()>,
}

/// One answer as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Asserts a JSON error from the balancer itself.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(self.json()["error"], code);
    }
}

fn connect(balancer: Balancer) -> Client {
    let (io, server) = tokio::io::duplex(1 << 20);
    let close = CancellationToken::new();
    let activity = Activity::standalone(close.clone());
    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    let served = tokio::spawn(async move {
        super::serve(server, peer, &balancer, &activity, HEADER_TIMEOUT).await;
    });
    Client {
        io,
        read: Vec::new(),
        close,
        served,
    }
}

impl Client {
    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.io.write_all(bytes.as_ref()).await.expect("write");
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(PATIENCE, self.io.read(&mut chunk)).await;
        let n = read.expect("the front answers in time").unwrap_or(0);
        self.read.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn fill_to(&mut self, len: usize) {
        while self.read.len() < len {
            assert!(self.fill().await, "closed in the middle of a response");
        }
    }

    /// The next response; its body read by its framing (none when `head`).
    async fn response(&mut self, head: bool) -> Answer {
        let mut answer = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut slots);
            if let Ok(httparse::Status::Complete(len)) = parsed.parse(&self.read) {
                let answer = Answer {
                    status: parsed.code.expect("a status"),
                    headers: parsed
                        .headers
                        .iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value).into_owned();
                            (h.name.to_ascii_lowercase(), value)
                        })
                        .collect(),
                    body: Vec::new(),
                };
                self.read.drain(..len);
                break answer;
            }
            assert!(self.fill().await, "closed before a whole response head");
        };
        if head || answer.status < 200 || answer.status == 204 || answer.status == 304 {
            return answer;
        }
        if let Some(length) = answer.header("content-length") {
            let length: usize = length.parse().expect("a length");
            self.fill_to(length).await;
            answer.body = self.read.drain(..length).collect();
        } else if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let line = loop {
                    if let Some(at) = self.read.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    assert!(self.fill().await, "closed in a chunk size");
                };
                let size = std::str::from_utf8(&self.read[..line]).expect("hex");
                let size = usize::from_str_radix(size, 16).expect("a chunk size");
                self.read.drain(..line + 2);
                self.fill_to(size + 2).await;
                answer.body.extend(self.read.drain(..size));
                assert_eq!(self.read.drain(..2).collect::<Vec<_>>(), b"\r\n");
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.fill().await {}
            answer.body = std::mem::take(&mut self.read);
        }
        answer
    }

    /// Asserts the front closed the connection with nothing more to say, and its task
    /// ended.
    async fn assert_closed(mut self) {
        assert!(!self.fill().await, "more after the end: {:?}", self.read);
        assert!(self.read.is_empty());
        tokio::time::timeout(PATIENCE, self.served)
            .await
            .expect("the connection's task ends")
            .expect("no panic");
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: balancer\r\n\r\n")
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let node = Node::start().await;
    let mut client = connect(balancer(Some(&node), |_| {}).await);
    client
        .send(get("/first") + &get("/second") + &get("/balancer/health"))
        .await;
    for path in ["/first", "/second"] {
        let answer = client.response(false).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()["path"], path);
        assert!(answer.header("date").is_some());
    }
    let answer = client.response(false).await;
    assert_eq!(answer.json()["nodes_total"], 1);
    assert!(answer.header("connection").is_none(), "kept alive");
}

#[tokio::test]
async fn a_content_length_body_reaches_the_node_whole_and_the_connection_stays_open() {
    let node = Node::start().await;
    let mut client = connect(balancer(Some(&node), |_| {}).await);
    client
        .send("POST /purchases HTTP/1.1\r\nHost: b\r\nContent-Length: 11\r\n\r\nhello")
        .await;
    client.send(" world").await;
    let answer = client.response(false).await;
    assert_eq!(answer.json()["body"], "hello world");
    client.send(get("/after")).await;
    assert_eq!(client.response(false).await.json()["path"], "/after");
}

#[tokio::test]
async fn a_chunked_body_is_decoded_with_its_trailers_skipped() {
    let node = Node::start().await;
    let mut client = connect(balancer(Some(&node), |_| {}).await);
    let chunked = "POST /purchases HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    client.send(chunked.to_owned() + &get("/after")).await;
    assert_eq!(client.response(false).await.json()["body"], "hello world");
    assert_eq!(client.response(false).await.json()["path"], "/after");
}

#[tokio::test]
async fn expect_100_continue_is_answered_when_the_body_is_read() {
    let node = Node::start().await;
    let mut client = connect(balancer(Some(&node), |_| {}).await);
    client
        .send(
            "POST /purchases HTTP/1.1\r\nHost: b\r\nExpect: 100-continue\r\n\
             Content-Length: 5\r\n\r\n",
        )
        .await;
    let interim = client.response(false).await;
    assert_eq!(interim.status, 100);
    client.send("hello").await;
    assert_eq!(client.response(false).await.json()["body"], "hello");
}

#[tokio::test]
async fn a_head_answer_keeps_its_content_length_and_has_no_body() {
    let node = Node::start().await;
    let mut client = connect(balancer(Some(&node), |_| {}).await);
    let head = |path: &str| format!("HEAD {path} HTTP/1.1\r\nHost: b\r\n\r\n");
    client
        .send(head("/events") + &head("/balancer/health") + &get("/after"))
        .await;
    for _ in 0..2 {
        let answer = client.response(true).await;
        assert_eq!(answer.status, 200);
        let length: usize = answer
            .header("content-length")
            .expect("a length")
            .parse()
            .expect("a number");
        assert!(length > 0);
    }
    // Had either sent a body, this would read it as a response head.
    assert_eq!(client.response(false).await.json()["path"], "/after");
}

#[tokio::test]
async fn a_streamed_answer_is_chunked_to_http11_and_close_delimited_to_http10() {
    let node = Node::start().await;
    let balancer = balancer(Some(&node), |_| {}).await;
    let mut client = connect(balancer.clone());
    client.send(get("/stream")).await;
    let answer = client.response(false).await;
    assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
    assert_eq!(answer.body, b"abcd");
    let mut client = connect(balancer);
    client.send("GET /stream HTTP/1.0\r\n\r\n").await;
    let answer = client.response(false).await;
    assert_eq!(answer.header("transfer-encoding"), None);
    assert_eq!(answer.body, b"abcd");
    client.assert_closed().await;
}

#[tokio::test]
async fn http10_closes_after_its_answer_unless_it_asks_for_keep_alive() {
    let balancer = balancer(None, |_| {}).await;
    let mut client = connect(balancer.clone());
    client.send("GET /balancer/health HTTP/1.0\r\n\r\n").await;
    let answer = client.response(false).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    client.assert_closed().await;

    let mut client = connect(balancer);
    let kept = "GET /balancer/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    client.send(kept).await;
    assert_eq!(
        client.response(false).await.header("connection"),
        Some("keep-alive")
    );
    client.send(kept).await;
    assert_eq!(client.response(false).await.status, 200);
}

#[tokio::test]
async fn connection_close_closes_after_the_answer() {
    let mut client = connect(balancer(None, |_| {}).await);
    client
        .send("GET /balancer/health HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await;
    let answer = client.response(false).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    client.assert_closed().await;
}

#[tokio::test]
async fn malformed_heads_get_a_json_error_and_the_connection_closes() {
    let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024));
    let many = format!(
        "GET / HTTP/1.1\r\n{}\r\n",
        (0..101)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect::<String>()
    );
    let cases = [
        ("HELLO THERE\r\n\r\n".to_owned(), 400, "bad_request"),
        (
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_owned(),
            400,
            "bad_request",
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n".to_owned(),
            400,
            "bad_request",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".to_owned(),
            400,
            "bad_request",
        ),
        (big, 431, "headers_too_large"),
        (many, 431, "headers_too_large"),
        (
            "CONNECT node:443 HTTP/1.1\r\nHost: node:443\r\n\r\n".to_owned(),
            405,
            "method_not_allowed",
        ),
    ];
    let balancer = balancer(None, |_| {}).await;
    for (request, status, code) in cases {
        let mut client = connect(balancer.clone());
        client.send(request).await;
        let answer = client.response(false).await;
        answer.assert_error(status, code);
        assert_eq!(answer.header("connection"), Some("close"));
        client.assert_closed().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_head_stalled_half_way_is_cut_off_after_the_header_read_timeout() {
    let mut client = connect(balancer(None, |_| {}).await);
    let started = tokio::time::Instant::now();
    client.send("GET /balancer/health HTTP/1.1\r\nHost:").await;
    client.assert_closed().await;
    assert!(started.elapsed() >= HEADER_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_not_timed_out() {
    let mut client = connect(balancer(None, |_| {}).await);
    client.send(get("/balancer/health")).await;
    assert_eq!(client.response(false).await.status, 200);
    tokio::time::sleep(HEADER_TIMEOUT * 3).await;
    client.send(get("/balancer/health")).await;
    assert_eq!(client.response(false).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn a_body_slower_than_the_body_timeout_is_a_408_and_the_connection_closes() {
    let mut client = connect(balancer(None, |_| {}).await);
    client
        .send("POST /purchases HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        .await;
    client
        .response(false)
        .await
        .assert_error(408, "request_timeout");
    client.assert_closed().await;
}

#[tokio::test]
async fn an_idle_connection_closes_at_once_when_cancelled() {
    // After each number of answers: the close token is watched from the first idle wait
    // on, and polled again only when the connection wakes with nothing to read.
    for answers in 0..3 {
        let mut client = connect(balancer(None, |_| {}).await);
        for _ in 0..answers {
            client.send(get("/balancer/health")).await;
            assert_eq!(client.response(false).await.status, 200);
            // Lets the front reach its idle wait before the next step.
            tokio::task::yield_now().await;
        }
        client.close.cancel();
        client.assert_closed().await;
    }
}

#[tokio::test]
async fn a_cancelled_connection_finishes_its_request_in_flight_then_closes() {
    let node = Node::start().await;
    let mut client = connect(balancer(Some(&node), |_| {}).await);
    client.send(get("/slow")).await;
    node.arrived.notified().await;
    client.close.cancel();
    node.release.notify_one();
    let answer = client.response(false).await;
    assert_eq!(answer.json()["path"], "/slow");
    assert_eq!(answer.header("connection"), Some("close"));
    client.assert_closed().await;
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served_by_hyper() {
    let node = Node::start().await;
    let client = connect(balancer(Some(&node), |_| {}).await);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client.io))
            .await
            .expect("an HTTP/2 connection");
    tokio::spawn(connection);
    for path in ["/balancer/health", "/events"] {
        let request = Request::get(format!("http://balancer{path}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("an answer");
        assert_eq!(response.status(), 200, "{path}");
    }
}
