//! Clients' mistakes against the real binaries: malformed requests straight to a node and
//! through the balancer, random requests, slow clients and more connections than the
//! limit. None gets a 5xx, none takes the service down.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cluster::{HttpClient, LocalCluster, Medium, report_summary, seed_store, start_node_on};
use hyper::StatusCode;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// `(method, path, content type, body)` of requests a careless client sends.
fn mistakes() -> Vec<(&'static str, String, &'static str, Vec<u8>)> {
    let json = "application/json";
    let mut cases: Vec<(&str, String, &str, Vec<u8>)> = [
        "{",
        "",
        "null",
        "[]",
        "{\"event\":\"concert\"",
        "{\"event\":\"concert\",\"quantity\":0}",
        "{\"event\":\"concert\",\"quantity\":-3}",
        "{\"event\":\"concert\",\"quantity\":1.5}",
        "{\"event\":\"concert\",\"quantity\":99999999999999999999999}",
        "{\"event\":\"concert\",\"quantity\":\"2\"}",
        "{\"event\":7,\"quantity\":1}",
        "{\"event\":\"concert\",\"quantity\":1,\"seat\":\"A1\"}",
        "{\"event\":\"../../etc/passwd\",\"quantity\":1}",
        "{\"event\":\"a/b\",\"quantity\":1}",
        "{\"event\":\"\\u0000\",\"quantity\":1}",
        "{\"event\":\"konzert\u{e4}\",\"quantity\":1}",
        "{\"event\":\"nope\",\"quantity\":1}",
    ]
    .into_iter()
    .map(|body| {
        (
            "POST",
            "/purchases".to_string(),
            json,
            body.as_bytes().to_vec(),
        )
    })
    .collect();
    cases.push((
        "POST",
        "/purchases".into(),
        json,
        format!("{{\"event\":\"{}\",\"quantity\":1}}", "x".repeat(65)).into_bytes(),
    ));
    cases.push(("POST", "/purchases".into(), json, vec![b' '; 40_000]));
    cases.push((
        "POST",
        "/purchases".into(),
        "text/plain",
        b"{\"event\":\"concert\",\"quantity\":1}".to_vec(),
    ));
    cases.push((
        "POST",
        "/purchases".into(),
        "application/x-www-form-urlencoded",
        b"event=concert".to_vec(),
    ));
    for path in [
        "/tickets/abc",
        "/tickets/-1",
        "/tickets/18446744073709551616",
        "/tickets/0",
        "/tickets?sold=perhaps",
        "/tickets?event=..%2F..",
        "/tickets?limit=0",
        "/tickets?page=5",
        "/purchases?after=17",
        "/events/%00",
        "/events/..",
        "/purchases/%ff%fe",
        "/purchases?event=UPPER",
        "/no/such/route",
    ] {
        cases.push(("GET", path.to_string(), json, Vec::new()));
    }
    // The box office's bodies: seats, customers, times to live.
    for body in [
        "{\"event\":\"concert\",\"quantity\":1,\"tickets\":[1]}",
        "{\"event\":\"concert\",\"tickets\":[]}",
        "{\"event\":\"concert\",\"tickets\":[1,1]}",
        "{\"event\":\"concert\",\"tickets\":[0]}",
        "{\"event\":\"concert\",\"tickets\":[\"1\"]}",
        "{\"event\":\"concert\",\"tickets\":[1,2,3,4,5,6,7,8,9,10,11]}",
        "{\"event\":\"concert\",\"tickets\":[999999]}",
        "{\"event\":\"concert\",\"quantity\":1,\"customer\":\"no spaces\"}",
        "{\"event\":\"concert\",\"quantity\":1,\"customer\":\"\"}",
        "{\"event\":\"concert\",\"quantity\":1,\"customer\":\"a\",\"customer\":\"b\"}",
    ] {
        for path in ["/purchases", "/holds"] {
            cases.push(("POST", path.into(), json, body.as_bytes().to_vec()));
        }
    }
    for body in [
        "{\"event\":\"concert\",\"quantity\":1,\"ttl_seconds\":9}",
        "{\"event\":\"concert\",\"quantity\":1,\"ttl_seconds\":3601}",
        "{\"event\":\"concert\",\"quantity\":1,\"ttl_seconds\":\"60\"}",
    ] {
        cases.push(("POST", "/holds".into(), json, body.as_bytes().to_vec()));
    }
    cases.push((
        "POST",
        "/purchases".into(),
        json,
        b"{\"event\":\"concert\",\"quantity\":1,\"ttl_seconds\":60}".to_vec(),
    ));
    for (method, path) in [
        ("GET", "/holds/h-00000001"),
        ("GET", "/holds?customer=x"),
        ("GET", "/holds?after=p-1"),
        ("GET", "/purchases?customer=x"),
        ("POST", "/holds/h-00000001/confirm"),
        ("POST", "/holds/h-00000001/release"),
        ("POST", "/purchases/p-00000001/cancel"),
        ("GET", "/holds/h-00000001/confirm"),
        ("POST", "/holds/h-1/cancel"),
    ] {
        cases.push((method, path.to_string(), json, Vec::new()));
    }
    cases.push(("DELETE", "/tickets/1".into(), json, Vec::new()));
    cases.push(("PUT", "/purchases".into(), json, b"{}".to_vec()));
    cases
}

async fn send(
    http: &HttpClient,
    base: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value) {
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", content_type)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("a request");
    let answer = http
        .send(request)
        .await
        .unwrap_or_else(|err| panic!("{method} {path}: no answer: {err:#}"));
    (answer.status, answer.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_mistake_gets_a_4xx_json_error_from_a_node_and_through_the_balancer() {
    let (_dir, cluster) = LocalCluster::seeded(2, &[("concert", 5, 1000)]).expect("cluster starts");
    let http = HttpClient::new();
    let mut tried = 0;
    let mut server_errors = Vec::new();
    for base in [cluster.node_urls()[0].clone(), cluster.balancer_url()] {
        for (method, path, content_type, body) in mistakes() {
            tried += 1;
            let (status, json) = send(&http, &base, method, &path, content_type, body).await;
            if !status.is_client_error() {
                server_errors.push(format!("{method} {path} via {base}: {status} {json}"));
            }
            assert!(
                json["error"].is_string() && json["message"].is_string(),
                "{method} {path}: not a JSON error: {json}"
            );
        }
    }
    let sold = http
        .get(&format!("{}/events/concert", cluster.balancer_url()))
        .await
        .expect("answer");
    assert_eq!(sold.json()["sold"], 0, "a mistaken request sold something");
    report_summary(&format!(
        "fault-summary: bad input ({} kinds, node and balancer): tried {tried}, acknowledged 0, lost 0, sold twice 0, 5xx to client mistakes {}",
        tried / 2,
        server_errors.len()
    ));
    assert!(server_errors.is_empty(), "{server_errors:#?}");
}

#[test]
fn random_requests_never_get_a_5xx() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed_store(dir.path(), &[("concert", 50, 1000)]).expect("seed");
    let node = start_node_on("n1", &Medium::Files(dir.path().into()), "127.0.0.1:0", &[])
        .expect("node starts");
    let base = node.url();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let http = HttpClient::new();
    let strategy = (
        prop_oneof!["GET", "POST", "PUT", "DELETE", "PATCH"],
        prop_oneof![
            Just("/purchases".to_string()),
            "/(events|tickets|purchases|holds)/[a-z0-9%./-]{0,20}",
            "/(holds|purchases)/[hp]-[0-9]{0,9}/(confirm|release|cancel)",
            "/(holds|purchases)\\?(customer|after|limit)=[A-Za-z0-9%-]{0,10}",
            "/tickets\\?(event|sold|x)=[A-Za-z0-9%-]{0,10}",
            "/[a-z]{0,12}",
        ],
        prop_oneof![
            "application/json",
            "text/plain",
            "application/json; charset=utf-8"
        ],
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            "\\{\"event\":\"[a-z-]{0,10}\",\"quantity\":-?[0-9]{1,3}(\\.[0-9])?\\}"
                .prop_map(String::into_bytes),
        ],
    );
    let mut runner = TestRunner::new(Config {
        cases: 300,
        ..Config::default()
    });
    let tried = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&strategy, |(method, path, content_type, body)| {
        tried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (status, json) =
            runtime.block_on(send(&http, &base, &method, &path, &content_type, body));
        prop_assert!(
            !status.is_server_error(),
            "{method} {path}: {status} {json}"
        );
        if !status.is_success() {
            prop_assert!(
                json["error"].is_string(),
                "{method} {path}: {status} without a JSON error"
            );
        }
        Ok(())
    });
    report_summary(&format!(
        "fault-summary: random requests: tried {}, acknowledged -, lost 0, sold twice 0, 5xx to client mistakes {}",
        tried.into_inner(),
        usize::from(result.is_err())
    ));
    result.expect("no random request gets a 5xx");
}

/// Reads from `stream` until the server answers or closes; the answer's text.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    stream.set_read_timeout(Some(limit)).expect("timeout");
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// On a blocking thread, connects to `addr`, sends `unfinished` (a request cut short) and
/// reads until the server answers or closes: how long that took, and the answer's text.
fn send_unfinished(
    addr: std::net::SocketAddr,
    unfinished: &'static [u8],
) -> tokio::task::JoinHandle<(Duration, String)> {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.write_all(unfinished).expect("write");
        let started = Instant::now();
        let answer = read_until_closed(&mut stream, Duration::from_secs(10));
        (started.elapsed(), answer)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_extra_connections_wait_without_harm() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed_store(dir.path(), &[("concert", 5, 1000)]).expect("seed");
    let env = [
        ("TICKETS_NODE__HEADER_TIMEOUT", "500ms"),
        ("TICKETS_NODE__BODY_TIMEOUT", "500ms"),
        ("TICKETS_NODE__MAX_CONNECTIONS", "8"),
    ];
    let node = start_node_on("n1", &Medium::Files(dir.path().into()), "127.0.0.1:0", &env)
        .expect("node starts");
    let addr = node.addr;
    let http = HttpClient::new();

    // Headers that never finish: the connection is closed after the header timeout.
    let slow_headers = send_unfinished(addr, b"GET /events HTTP/1.1\r\nHost: x\r\n");
    // A body that never finishes: 408 after the body timeout.
    let slow_body = send_unfinished(
        addr,
        b"POST /purchases HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"event\":",
    );
    let (headers_took, _) = slow_headers.await.expect("task");
    assert!(
        headers_took < Duration::from_secs(5),
        "slow headers held the connection {headers_took:?}"
    );
    let (body_took, answer) = slow_body.await.expect("task");
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "slow body got {answer:?}"
    );
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(
        body_took < Duration::from_secs(5),
        "slow body held the connection {body_took:?}"
    );

    // Twice the connection limit, idle: a real client is still served once they time out.
    let idle: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let started = Instant::now();
    let answer = http
        .get(&format!("http://{addr}/events"))
        .await
        .expect("served eventually");
    assert_eq!(answer.status, StatusCode::OK);
    report_summary(&format!(
        "fault-summary: slow clients and 16 idle connections over a limit of 8: tried 19, acknowledged 0, lost 0, sold twice 0, 5xx to client mistakes 0 (slow headers cut after {headers_took:.1?}, slow body 408 after {body_took:.1?}, a real request waited {:.1?})",
        started.elapsed()
    ));
    drop(idle);
}
