//! Test support: fake upstream nodes (small hyper servers on 127.0.0.1 that answer with an
//! `X-Node` header and echo what they got), and the real balancer binary and an HTTP
//! client from the `cluster` harness the node's and the cluster's tests use too.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cluster::{Answer, HttpClient, Process};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// How long any single wait in a test may last before the test fails; generous, since it
/// only bounds a hang and asserts nothing about speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// One request as a fake upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
}

/// A fake node on 127.0.0.1. Every answer is 200 with `X-Node: <name>` and a JSON echo of
/// the request, except: `/slow` waits until [`Upstream::release_slow`], and with
/// `drop_posts` a POST is read in full and then the connection is dropped unanswered.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    release: Arc<Notify>,
    slow_arrivals: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    task: JoinHandle<()>,
}

/// How a fake node misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answers everything.
    Normal,
    /// Reads a POST in full, then drops the connection unanswered.
    DropPosts,
    /// Answers every request but `/health` with this status.
    Fail(u16),
    /// Answers `/health` with 503 (as a node does when the shared store is slow) and
    /// everything else normally.
    SickHealth,
}

#[derive(Clone)]
struct UpstreamState {
    name: String,
    mode: Mode,
    received: Arc<Mutex<Vec<Received>>>,
    release: Arc<Notify>,
    slow_arrived: mpsc::UnboundedSender<()>,
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        Self::start_on(name, 0, Mode::Normal).await
    }

    pub async fn start_dropping_posts(name: &str) -> Self {
        Self::start_on(name, 0, Mode::DropPosts).await
    }

    pub async fn start_in(name: &str, mode: Mode) -> Self {
        Self::start_on(name, 0, mode).await
    }

    /// Starts on a given port of 127.0.0.1 (0 for any free one).
    pub async fn start_on(name: &str, port: u16, mode: Mode) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind a fake upstream");
        let addr = listener.local_addr().expect("upstream address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let (slow_arrived, slow_arrivals) = mpsc::unbounded_channel();
        let state = UpstreamState {
            name: name.to_owned(),
            mode,
            received: Arc::clone(&received),
            release: Arc::clone(&release),
            slow_arrived,
        };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { answer(state, request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            name: name.to_owned(),
            addr,
            received,
            release,
            slow_arrivals: tokio::sync::Mutex::new(slow_arrivals),
            task,
        }
    }

    /// `127.0.0.1:PORT`, as the balancer's `--nodes` wants it.
    pub fn node(&self) -> String {
        self.addr.to_string()
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// How many requests with `method` to paths other than `/health` arrived here.
    pub fn count(&self, method: &str) -> usize {
        self.received()
            .iter()
            .filter(|r| r.method == method && r.path != "/health")
            .count()
    }

    /// Waits until a `/slow` request has arrived.
    pub async fn slow_request_arrived(&self) {
        let mut arrivals = self.slow_arrivals.lock().await;
        tokio::time::timeout(PATIENCE, arrivals.recv())
            .await
            .expect("a /slow request arrives")
            .expect("upstream running");
    }

    /// Starts a GET of `/slow` through `balancer` on a task of its own and waits until it
    /// has reached this node, where it stays until [`Upstream::release_slow`].
    pub async fn hold_slow_request(&self, balancer: &BalancerProcess) -> JoinHandle<Reply> {
        let url = balancer.url("/slow");
        let held = tokio::spawn(async move { get(&client(), &url).await });
        self.slow_request_arrived().await;
        held
    }

    /// Lets one waiting `/slow` request be answered.
    pub fn release_slow(&self) {
        self.release.notify_one();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    state: UpstreamState,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    state.received.lock().expect("lock").push(Received {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
    });
    if state.mode == Mode::DropPosts && method == "POST" {
        // An error from the service makes hyper close the connection without answering.
        return Err(std::io::Error::other("dropping the connection on purpose"));
    }
    if path == "/slow" {
        let _ = state.slow_arrived.send(());
        state.release.notified().await;
    }
    let echo = json!({
        "node": state.name,
        "method": method,
        "path": path,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut response = Response::new(Full::new(Bytes::from(echo.to_string())));
    match state.mode {
        Mode::Fail(status) if path != "/health" => {
            *response.status_mut() = hyper::StatusCode::from_u16(status).expect("a status");
        }
        Mode::SickHealth if path == "/health" => {
            *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
        }
        _ => {}
    }
    let h = response.headers_mut();
    h.insert("x-node", HeaderValue::from_str(&state.name).expect("name"));
    h.insert("content-type", HeaderValue::from_static("application/json"));
    // Hop-by-hop headers the balancer must not pass back to its client.
    h.insert("connection", HeaderValue::from_static("x-upstream-hop"));
    h.insert("x-upstream-hop", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert(
        "proxy-authenticate",
        HeaderValue::from_static("Basic realm=\"x\""),
    );
    Ok(response)
}

/// A node that hangs: it accepts connections (the kernel does, for a stopped process)
/// and never answers on them.
pub struct HungUpstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HungUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Self { addr, task }
    }

    pub fn node(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for HungUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound once, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The real balancer binary, started by the `cluster` harness and killed when dropped.
pub struct BalancerProcess {
    process: Process,
    pub addr: SocketAddr,
}

impl BalancerProcess {
    /// Starts `balancer --listen 127.0.0.1:0 --nodes NODES` with extra environment, and
    /// waits for its `listening on ADDR` line.
    pub async fn start(nodes: &[String], env: &[(&str, &str)]) -> Self {
        let args = [
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--nodes".to_owned(),
            nodes.join(","),
        ];
        let process = Process::start_with_env("balancer", "balancer", &args, env)
            .expect("start the balancer binary");
        let addr = process.addr;
        Self { process, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM, as `docker stop` does, without waiting.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.process.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the balancer to exit and returns its exit code.
    pub async fn wait(&mut self) -> Option<i32> {
        let process = &mut self.process;
        eventually("the balancer exits", || {
            let exited = process.has_exited();
            async move { exited }
        })
        .await;
        self.process.terminate().expect("the exit status")
    }
}

/// A balancer with extra `env` over two nodes: `dropper`, which drops the connection on
/// every POST, and then `good`. Returns them in that order, and the balancer.
pub async fn dropper_and_good(env: &[(&str, &str)]) -> (Upstream, Upstream, BalancerProcess) {
    let dropper = Upstream::start_dropping_posts("dropper").await;
    let good = Upstream::start("good").await;
    let balancer = BalancerProcess::start(&[dropper.node(), good.node()], env).await;
    (dropper, good, balancer)
}

/// A response, read in full.
pub type Reply = Answer;

/// A response header as text.
pub trait HeaderText {
    fn header(&self, name: &str) -> Option<&str>;
}

impl HeaderText for Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub type TestClient = HttpClient;

pub fn client() -> TestClient {
    HttpClient::new()
}

pub async fn send(
    client: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut request = Request::new(Full::new(Bytes::from(body.to_owned())));
    *request.method_mut() = method;
    *request.uri_mut() = url.parse().expect("url");
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    tokio::time::timeout(PATIENCE, client.send(request))
        .await
        .expect("the balancer answers")
        .expect("an HTTP response")
}

pub async fn get(client: &TestClient, url: &str) -> Reply {
    send(client, Method::GET, url, &[], "").await
}

/// Sends `GET /events` through the balancer `times` times, one after another, asserting
/// that each is answered `status`; the replies.
pub async fn events_answered(
    client: &TestClient,
    balancer: &BalancerProcess,
    times: usize,
    status: StatusCode,
) -> Vec<Reply> {
    let mut replies = Vec::with_capacity(times);
    for _ in 0..times {
        let reply = get(client, &balancer.url("/events")).await;
        assert_eq!(reply.status, status, "{:?}", reply.body);
        replies.push(reply);
    }
    replies
}

/// A POST of `body` with `headers` to the balancer's `/purchases`.
pub async fn post_purchase(
    client: &TestClient,
    balancer: &BalancerProcess,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    send(
        client,
        Method::POST,
        &balancer.url("/purchases"),
        headers,
        body,
    )
    .await
}

/// Asserts that `reply` is the balancer's JSON error `code`, answered with `status`.
#[track_caller]
pub fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(reply.json()["error"], code, "{:?}", reply.body);
}

/// Polls `condition` until it holds, failing the test after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The entry of `/balancer/nodes` for `addr`.
pub async fn node_state(client: &TestClient, balancer: &BalancerProcess, addr: &str) -> Value {
    let nodes = get(client, &balancer.url("/balancer/nodes")).await.json();
    nodes
        .as_array()
        .expect("an array")
        .iter()
        .find(|n| n["address"] == addr)
        .cloned()
        .unwrap_or(Value::Null)
}
