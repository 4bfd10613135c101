//! The balancer binary in front of fake upstream nodes: round robin, skipping dead nodes,
//! the retry policy, header rules, its own endpoints, health checks and shutdown.

mod support;

use std::collections::HashMap;

use hyper::{Method, StatusCode};
use support::{
    BalancerProcess, HeaderText, Mode, PATIENCE, Upstream, assert_error, client, closed_port,
    dropper_and_good, events_answered, eventually, get, node_state, post_purchase, send,
};

#[tokio::test]
async fn requests_are_spread_evenly_round_robin() {
    let upstreams = [
        Upstream::start("n1").await,
        Upstream::start("n2").await,
        Upstream::start("n3").await,
    ];
    let nodes: Vec<String> = upstreams.iter().map(Upstream::node).collect();
    let balancer = BalancerProcess::start(&nodes, &[]).await;
    let client = client();

    let mut served_by: HashMap<String, usize> = HashMap::new();
    for reply in events_answered(&client, &balancer, 30, StatusCode::OK).await {
        let node = reply.header("x-node").expect("X-Node kept").to_owned();
        *served_by.entry(node).or_default() += 1;
    }
    assert_eq!(
        served_by,
        HashMap::from([("n1".into(), 10), ("n2".into(), 10), ("n3".into(), 10)])
    );
    for upstream in &upstreams {
        assert_eq!(upstream.count("GET"), 10, "{}", upstream.name);
    }
}

#[tokio::test]
async fn a_dead_address_is_skipped_without_client_errors() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let dead = format!("127.0.0.1:{}", closed_port());
    let balancer = BalancerProcess::start(&[a.node(), dead.clone(), b.node()], &[]).await;
    let client = client();

    events_answered(&client, &balancer, 10, StatusCode::OK).await;
    // A write is safe to move on too: a refused connection sent nothing.
    for _ in 0..4 {
        let reply = post_purchase(&client, &balancer, &[], "{}").await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    assert_eq!(a.count("GET") + b.count("GET"), 10);
    assert_eq!(a.count("POST") + b.count("POST"), 4);
    let state = node_state(&client, &balancer, &dead).await;
    assert_eq!(state["up"], false, "{state}");
    assert!(state["last_error"].is_string(), "{state}");
}

#[tokio::test]
async fn an_unkeyed_post_whose_node_drops_the_connection_gets_502_and_is_not_resent() {
    let (dropper, good, balancer) = dropper_and_good(&[]).await;
    let client = client();

    // Two requests in a row start on each node once.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let reply = post_purchase(&client, &balancer, &[], "{}").await;
        if reply.status == StatusCode::BAD_GATEWAY {
            let body = reply.json();
            assert_eq!(body["error"], "bad_gateway", "{body}");
            assert!(body["message"].is_string(), "{body}");
        }
        statuses.push(reply.status);
    }
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::BAD_GATEWAY]);
    assert_eq!(dropper.count("POST"), 1);
    assert_eq!(good.count("POST"), 1, "the failed POST was sent again");
}

#[tokio::test]
async fn a_keyed_post_whose_node_drops_the_connection_is_retried_and_succeeds() {
    let (dropper, good, balancer) = dropper_and_good(&[]).await;
    let client = client();

    for key in ["k1", "k2"] {
        let reply = post_purchase(
            &client,
            &balancer,
            &[("Idempotency-Key", key)],
            r#"{"event":"concert","quantity":1}"#,
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.header("x-node"), Some("good"));
        assert_eq!(reply.json()["body"], r#"{"event":"concert","quantity":1}"#);
    }
    assert_eq!(
        dropper.count("POST"),
        1,
        "one of the two started on the dropper"
    );
    assert_eq!(good.count("POST"), 2);
}

#[tokio::test]
async fn with_every_node_down_clients_get_a_503_json_error() {
    let nodes = [
        format!("127.0.0.1:{}", closed_port()),
        format!("127.0.0.1:{}", closed_port()),
    ];
    let balancer = BalancerProcess::start(&nodes, &[]).await;
    let client = client();

    for method in [Method::GET, Method::POST, Method::GET] {
        let reply = send(&client, method, &balancer.url("/events"), &[], "").await;
        assert_error(&reply, StatusCode::SERVICE_UNAVAILABLE, "no_healthy_nodes");
    }
    let health = get(&client, &balancer.url("/balancer/health")).await.json();
    assert_eq!(health["nodes_up"], 0, "{health}");
    assert_eq!(health["nodes_total"], 2, "{health}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways_and_forwarded_for_is_appended() {
    let upstream = Upstream::start("echo").await;
    let balancer = BalancerProcess::start(&[upstream.node()], &[]).await;
    let client = client();

    let reply = send(
        &client,
        Method::GET,
        &balancer.url("/events?x=1"),
        &[
            ("Connection", "keep-alive, X-Custom-Hop"),
            ("X-Custom-Hop", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic abc"),
            ("TE", "trailers"),
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-End-To-End", "kept"),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let echo = reply.json();
    assert_eq!(echo["path"], "/events");
    let got = echo["headers"].as_object().expect("headers");
    for hop in ["x-custom-hop", "keep-alive", "proxy-authorization", "te"] {
        assert!(!got.contains_key(hop), "{hop} reached the node: {echo}");
    }
    let connection = got.get("connection").and_then(|v| v.as_str()).unwrap_or("");
    assert!(
        !connection.to_ascii_lowercase().contains("x-custom-hop"),
        "{echo}"
    );
    assert_eq!(got["x-end-to-end"], "kept");
    assert_eq!(got["x-forwarded-for"], "203.0.113.7, 127.0.0.1");

    // And on the way back.
    assert_eq!(reply.header("x-node"), Some("echo"));
    for hop in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
        assert!(reply.headers.get(hop).is_none(), "{hop} reached the client");
    }
}

#[tokio::test]
async fn the_balancer_endpoints_report_health_nodes_and_metrics_without_forwarding() {
    let upstream = Upstream::start("n1").await;
    let dead = format!("127.0.0.1:{}", closed_port());
    let balancer = BalancerProcess::start(&[upstream.node(), dead.clone()], &[]).await;
    let client = client();
    // A request that finds the dead node marks it down.
    events_answered(&client, &balancer, 2, StatusCode::OK).await;

    let health = get(&client, &balancer.url("/balancer/health")).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(
        health.json(),
        serde_json::json!({"status": "ok", "nodes_up": 1, "nodes_total": 2})
    );

    let nodes = get(&client, &balancer.url("/balancer/nodes")).await;
    assert_eq!(nodes.status, StatusCode::OK);
    let nodes = nodes.json();
    let nodes = nodes.as_array().expect("array");
    assert_eq!(nodes.len(), 2);
    for node in nodes {
        let mut keys: Vec<&str> = node
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        // The contract's fields, and the balancer's own after them.
        for field in [
            "address",
            "up",
            "in_flight",
            "requests",
            "failures",
            "last_error",
            "ejected",
            "weight",
            "queued",
            "hedges",
            "ejections",
            "rejected",
        ] {
            assert!(keys.contains(&field), "{field} missing: {keys:?}");
        }
    }
    let live = node_state(&client, &balancer, &upstream.node()).await;
    assert_eq!(live["up"], true);
    assert_eq!(live["requests"], 2);
    assert_eq!(live["in_flight"], 0);
    assert!(live["last_error"].is_null());
    let down = node_state(&client, &balancer, &dead).await;
    assert_eq!(down["up"], false);
    // Marked down by a refused request or by a health check, whichever came first.
    assert!(down["last_error"].is_string(), "{down}");

    let metrics = get(&client, &balancer.url("/balancer/metrics")).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&metrics.body);
    let live_line = format!(
        "balancer_node_requests_total{{node=\"{}\"}} 2",
        upstream.node()
    );
    assert!(text.contains(&live_line), "{text}");
    assert!(
        text.contains(&format!("balancer_node_up{{node=\"{dead}\"}} 0")),
        "{text}"
    );

    let unknown = get(&client, &balancer.url("/balancer/nope")).await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found");
    assert!(
        upstream
            .received()
            .iter()
            .all(|r| !r.path.starts_with("/balancer")),
        "a balancer endpoint was forwarded"
    );
}

#[tokio::test]
async fn a_node_that_comes_back_is_brought_back_by_health_checks() {
    let a = Upstream::start("a").await;
    let port = closed_port();
    let returning = format!("127.0.0.1:{port}");
    let balancer = BalancerProcess::start(
        &[a.node(), returning.clone()],
        // Without slow start, so that the node is back to a full share at once.
        &[
            ("TICKETS_BALANCER__HEALTH_INTERVAL", "100ms"),
            ("TICKETS_BALANCER__SLOW_START", "0s"),
        ],
    )
    .await;
    let client = client();
    eventually("the missing node is marked down", || async {
        node_state(&client, &balancer, &returning).await["up"] == false
    })
    .await;

    let b = Upstream::start_on("b", port, Mode::Normal).await;
    eventually("the node is brought back", || async {
        node_state(&client, &balancer, &returning).await["up"] == true
    })
    .await;
    events_answered(&client, &balancer, 4, StatusCode::OK).await;
    assert_eq!(a.count("GET"), 2);
    assert_eq!(b.count("GET"), 2);
}

#[tokio::test]
async fn a_body_over_16_kib_gets_a_413_json_error_and_reaches_no_node() {
    let upstream = Upstream::start("n1").await;
    let balancer = BalancerProcess::start(&[upstream.node()], &[]).await;
    let client = client();
    let big = "x".repeat(16 * 1024 + 1);
    let reply = post_purchase(&client, &balancer, &[], &big).await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(upstream.count("POST"), 0);
}

#[tokio::test]
async fn a_node_too_slow_for_an_unkeyed_post_gets_a_504_json_error() {
    let slow = Upstream::start("slow").await;
    let balancer = BalancerProcess::start(
        &[slow.node()],
        &[
            ("TICKETS_BALANCER__CONNECT_TIMEOUT", "100ms"),
            ("TICKETS_BALANCER__RESPONSE_TIMEOUT", "200ms"),
        ],
    )
    .await;
    let client = client();
    let reply = send(&client, Method::POST, &balancer.url("/slow"), &[], "{}").await;
    assert_error(&reply, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    assert_eq!(slow.count("POST"), 1);
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let slow = Upstream::start("slow").await;
    let mut balancer = BalancerProcess::start(&[slow.node()], &[]).await;
    let in_flight = slow.hold_slow_request(&balancer).await;

    balancer.terminate();
    // Once the balancer stops accepting, shutdown has begun with the request still open.
    let addr = balancer.addr;
    eventually("the balancer stops accepting connections", || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    slow.release_slow();

    let reply = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the in-flight request ends")
        .expect("request task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-node"), Some("slow"));
    let code = balancer.wait().await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn the_probe_subcommand_passes_on_a_running_balancer_and_fails_on_a_closed_port() {
    let upstream = Upstream::start("n1").await;
    let balancer = BalancerProcess::start(&[upstream.node()], &[]).await;
    let url = balancer.url("/balancer/health");
    let probe = |url: String| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_balancer"))
            .args(["probe", "--url", &url])
            .output()
            .await
            .expect("run balancer probe")
    };
    let ok = probe(url).await;
    assert!(ok.status.success(), "{ok:?}");
    let closed = probe(format!(
        "http://127.0.0.1:{}/balancer/health",
        closed_port()
    ))
    .await;
    assert_eq!(closed.status.code(), Some(1));
    assert!(!closed.stderr.is_empty());
}

#[tokio::test]
async fn bad_settings_stop_the_balancer_with_a_message() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_balancer"))
        .args(["--listen", "127.0.0.1:0", "--nodes", "127.0.0.1:notaport"])
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .expect("the balancer exits")
        .expect("run the balancer");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("balancer.nodes"), "{stderr}");
}
