//! Connection slots: with every slot held by an idle keep-alive connection, a new client is
//! served at once, because the longest-idle connection is closed to make room.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, oneshot};

/// Answers "ok"; `GET /slow` first says it has started and waits to be released.
#[derive(Clone)]
struct Gate {
    entered: Arc<Notify>,
    release: Arc<Semaphore>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            entered: Arc::default(),
            release: Arc::new(Semaphore::new(0)),
        }
    }
}

impl serve::Handler for Gate {
    type Body = Full<Bytes>;

    async fn handle(&self, request: Request<Incoming>, _peer: SocketAddr) -> Response<Self::Body> {
        if request.uri().path() == "/slow" {
            self.entered.notify_one();
            if let Ok(permit) = self.release.acquire().await {
                permit.forget();
            }
        }
        Response::new(Full::new(Bytes::from_static(b"ok")))
    }
}

/// Far longer than any deadline below: a client waiting for an idle connection to time out
/// would miss them all.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A safety limit on each step, so a broken server fails the test instead of hanging it.
const STEP_LIMIT: Duration = Duration::from_secs(20);

async fn start(max_connections: usize, gate: Gate) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let limits = serve::ServerLimits {
        max_connections,
        header_read_timeout: IDLE_TIMEOUT,
        drain_timeout: Duration::from_secs(1),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve::run(listener, gate, limits, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Sends one keep-alive request on `stream` and reads its whole answer.
async fn request(stream: &mut TcpStream) -> String {
    request_path(stream, "/").await
}

async fn request_path(stream: &mut TcpStream, path: &str) -> String {
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(STEP_LIMIT, stream.read(&mut buf))
            .await
            .expect("an answer before the step limit")
            .expect("read");
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

async fn connect_and_request(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let answer = request(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_is_admitted_by_closing_the_longest_idle_keep_alive_connection() {
    let (addr, _stop) = start(2, Gate::default()).await;
    let mut oldest = connect_and_request(addr).await;
    let mut newer = connect_and_request(addr).await;
    // Both slots are now held by idle keep-alive connections; `newer` was used last.
    request(&mut newer).await;

    let mut third = connect_and_request(addr).await;

    // The oldest idle connection was closed to make room: it reads end-of-stream.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(STEP_LIMIT, oldest.read(&mut buf))
        .await
        .expect("closed before the step limit");
    assert!(matches!(read, Ok(0) | Err(_)), "still open: {read:?}");
    // The other two go on serving; a fourth client now evicts `newer`, idle the longest.
    request(&mut third).await;
    let _fourth = connect_and_request(addr).await;
    request(&mut third).await;
    let read = tokio::time::timeout(STEP_LIMIT, newer.read(&mut buf))
        .await
        .expect("closed before the step limit");
    assert!(matches!(read, Ok(0) | Err(_)), "still open: {read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_for_a_slot_gets_it_when_the_busy_connection_goes_idle() {
    let gate = Gate::default();
    let (addr, _stop) = start(1, gate.clone()).await;
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    let slow = tokio::spawn(async move {
        let answer = request_path(&mut busy, "/slow").await;
        (busy, answer)
    });
    gate.entered.notified().await;
    // The only slot has a request in flight: nothing can be evicted, so the newcomer waits.
    let newcomer = tokio::spawn(async move { connect_and_request(addr).await });
    gate.release.add_permits(1);
    let (mut busy, answer) = tokio::time::timeout(STEP_LIMIT, slow)
        .await
        .expect("the slow request ends before the step limit")
        .expect("slow task");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Once idle, the busy connection is closed for the newcomer, which is served long before
    // an idle connection would time out.
    tokio::time::timeout(STEP_LIMIT, newcomer)
        .await
        .expect("the newcomer is served before the step limit")
        .expect("newcomer task");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(STEP_LIMIT, busy.read(&mut buf))
        .await
        .expect("closed before the step limit");
    assert!(matches!(read, Ok(0) | Err(_)), "still open: {read:?}");
}
