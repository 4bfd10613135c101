//! The balancer binary's kindness to its nodes, each behaviour against fake nodes that
//! misbehave in one way: hedging off a hung node, outlier ejection (capped at half), the
//! retry budget, the in-flight limit's fast 503, the panic threshold, and the HTTP
//! details (HEAD, a slow body's 408).

mod support;

use hyper::{Method, StatusCode};
use support::{
    BalancerProcess, HeaderText, HungUpstream, Mode, Upstream, assert_error, client,
    dropper_and_good, events_answered, eventually, get, node_state, post_purchase, send,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A metric's value (the first series whose line starts with `series`).
async fn metric(balancer: &BalancerProcess, series: &str) -> f64 {
    let text = get(&client(), &balancer.url("/balancer/metrics"))
        .await
        .body;
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test]
async fn a_read_sent_to_a_hung_node_is_hedged_to_another_and_answered() {
    let hung = HungUpstream::start().await;
    let good = Upstream::start("good").await;
    let balancer = BalancerProcess::start(
        &[hung.node(), good.node()],
        &[("TICKETS_BALANCER__HEDGE_DELAY", "100ms")],
    )
    .await;
    let client = client();
    for reply in events_answered(&client, &balancer, 4, StatusCode::OK).await {
        assert_eq!(reply.header("x-node"), Some("good"));
    }
    let state = node_state(&client, &balancer, &hung.node()).await;
    assert!(state["hedges"].as_u64() >= Some(1), "{state}");
    assert_eq!(good.count("GET"), 4);
}

#[tokio::test]
async fn an_unkeyed_post_is_never_hedged() {
    let hung = HungUpstream::start().await;
    let balancer = BalancerProcess::start(
        &[hung.node()],
        &[
            ("TICKETS_BALANCER__HEDGE_DELAY", "50ms"),
            ("TICKETS_BALANCER__CONNECT_TIMEOUT", "100ms"),
            ("TICKETS_BALANCER__RESPONSE_TIMEOUT", "300ms"),
        ],
    )
    .await;
    let reply = post_purchase(&client(), &balancer, &[], "{}").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    let state = node_state(&client(), &balancer, &hung.node()).await;
    assert_eq!(state["hedges"], 0, "{state}");
}

#[tokio::test]
async fn a_node_answering_500s_is_ejected_but_never_more_than_half_of_them() {
    let sick = Upstream::start_in("sick", Mode::Fail(500)).await;
    let also_sick = Upstream::start_in("also-sick", Mode::Fail(500)).await;
    let balancer = BalancerProcess::start(
        &[sick.node(), also_sick.node()],
        &[("TICKETS_BALANCER__EJECT_AFTER", "3")],
    )
    .await;
    let client = client();
    // The node's own answer goes back to the client: a 500 is not retried.
    events_answered(&client, &balancer, 12, StatusCode::INTERNAL_SERVER_ERROR).await;
    let states = [
        node_state(&client, &balancer, &sick.node()).await,
        node_state(&client, &balancer, &also_sick.node()).await,
    ];
    let ejected = states.iter().filter(|s| s["ejected"] == true).count();
    assert_eq!(ejected, 1, "one of two at most: {states:?}");
    assert_eq!(metric(&balancer, "balancer_nodes_total").await, 2.0);
}

#[tokio::test]
async fn an_ejected_node_leaves_rotation_for_the_ejection_time() {
    let sick = Upstream::start_in("sick", Mode::Fail(502)).await;
    let good = Upstream::start("good").await;
    let balancer = BalancerProcess::start(
        &[sick.node(), good.node()],
        &[
            ("TICKETS_BALANCER__EJECT_AFTER", "2"),
            ("TICKETS_BALANCER__EJECT_TIME", "1h"),
        ],
    )
    .await;
    let client = client();
    for _ in 0..4 {
        get(&client, &balancer.url("/events")).await;
    }
    let sent_to_sick = sick.count("GET");
    assert_eq!(sent_to_sick, 2, "ejected after two failures in a row");
    for _ in 0..6 {
        let reply = get(&client, &balancer.url("/events")).await;
        assert_eq!(reply.header("x-node"), Some("good"));
    }
    assert_eq!(sick.count("GET"), sent_to_sick);
    let state = node_state(&client, &balancer, &sick.node()).await;
    assert_eq!(
        (state["ejected"].clone(), state["ejections"].clone()),
        (true.into(), 1.into())
    );
    let line = format!("balancer_node_ejected{{node=\"{}\"}}", sick.node());
    assert_eq!(metric(&balancer, &line).await, 1.0);
}

#[tokio::test]
async fn with_the_retry_budget_spent_a_failed_keyed_post_is_not_retried() {
    let (_dropper, good, balancer) = dropper_and_good(&[
        ("TICKETS_BALANCER__RETRY_BUDGET", "0"),
        ("TICKETS_BALANCER__RETRY_MIN_PER_SECOND", "0"),
    ])
    .await;
    let client = client();
    let mut statuses = Vec::new();
    for key in ["k1", "k2"] {
        let reply = post_purchase(&client, &balancer, &[("Idempotency-Key", key)], "{}").await;
        statuses.push(reply.status);
    }
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::BAD_GATEWAY]);
    assert_eq!(good.count("POST"), 1, "the failed one went nowhere else");
    assert_eq!(
        metric(&balancer, "balancer_retries_refused_total").await,
        1.0
    );
}

/// A balancer over one node named `slow` that lets one request at a time reach it, with
/// one more setting.
async fn one_slow_node_taking_one_at_a_time(setting: (&str, &str)) -> (Upstream, BalancerProcess) {
    let slow = Upstream::start("slow").await;
    let balancer = BalancerProcess::start(
        &[slow.node()],
        &[("TICKETS_BALANCER__MAX_IN_FLIGHT", "1"), setting],
    )
    .await;
    (slow, balancer)
}

#[tokio::test]
async fn beyond_a_nodes_in_flight_limit_and_queue_the_answer_is_a_fast_503_with_retry_after() {
    let (slow, balancer) =
        one_slow_node_taking_one_at_a_time(("TICKETS_BALANCER__QUEUE_SIZE", "0")).await;
    let holding = slow.hold_slow_request(&balancer).await;

    let reply = get(&client(), &balancer.url("/events")).await;
    assert_error(&reply, StatusCode::SERVICE_UNAVAILABLE, "nodes_busy");
    assert_eq!(reply.header("retry-after"), Some("1"));
    let state = node_state(&client(), &balancer, &slow.node()).await;
    assert_eq!(state["rejected"], 1, "{state}");

    slow.release_slow();
    assert_eq!(holding.await.expect("request").status, StatusCode::OK);
    assert_eq!(
        get(&client(), &balancer.url("/events")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_request_beyond_the_limit_waits_in_the_queue_for_a_free_slot() {
    let (slow, balancer) =
        one_slow_node_taking_one_at_a_time(("TICKETS_BALANCER__QUEUE_TIMEOUT", "20s")).await;
    let holding = slow.hold_slow_request(&balancer).await;
    let url = balancer.url("/events");
    let queued = tokio::spawn(async move { get(&client(), &url).await });
    eventually("the second request is queued", || async {
        node_state(&client(), &balancer, &slow.node()).await["queued"] == 1
    })
    .await;
    slow.release_slow();
    assert_eq!(holding.await.expect("first").status, StatusCode::OK);
    assert_eq!(queued.await.expect("queued").status, StatusCode::OK);
}

#[tokio::test]
async fn when_most_nodes_fail_their_health_checks_every_node_stays_in_rotation() {
    // Two of three nodes say on /health that they cannot serve (a slow shared store, say),
    // yet answer requests: beyond half, the balancer keeps sending to all of them.
    let nodes = [
        Upstream::start("n1").await,
        Upstream::start_in("n2", Mode::SickHealth).await,
        Upstream::start_in("n3", Mode::SickHealth).await,
    ];
    let addresses: Vec<String> = nodes.iter().map(Upstream::node).collect();
    let balancer = BalancerProcess::start(
        &addresses,
        &[
            ("TICKETS_BALANCER__HEALTH_INTERVAL", "50ms"),
            ("TICKETS_BALANCER__HEALTH_FALL", "2"),
        ],
    )
    .await;
    let client = client();
    eventually("two nodes are marked down", || async {
        let health = get(&client, &balancer.url("/balancer/health")).await.json();
        health["nodes_up"] == 1
    })
    .await;
    assert_eq!(metric(&balancer, "balancer_panic_mode").await, 1.0);
    events_answered(&client, &balancer, 9, StatusCode::OK).await;
    for node in &nodes {
        assert_eq!(node.count("GET"), 3, "{}", node.name);
    }
}

#[tokio::test]
async fn head_is_answered_on_the_balancers_own_get_routes_and_forwarded_on_the_rest() {
    let upstream = Upstream::start("n1").await;
    let balancer = BalancerProcess::start(&[upstream.node()], &[]).await;
    let client = client();
    for path in [
        "/balancer/health",
        "/balancer/nodes",
        "/balancer/metrics",
        "/balancer/",
    ] {
        let got = get(&client, &balancer.url(path)).await;
        let head = send(&client, Method::HEAD, &balancer.url(path), &[], "").await;
        assert_eq!(head.status, got.status, "{path}");
        assert!(head.body.is_empty(), "{path}");
        assert_eq!(
            head.header("content-type"),
            got.header("content-type"),
            "{path}"
        );
    }
    let head = send(&client, Method::HEAD, &balancer.url("/events"), &[], "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header("x-node"), Some("n1"));
    assert_eq!(upstream.count("HEAD"), 1);
}

#[tokio::test]
async fn a_body_that_arrives_too_slowly_is_a_408_timed_by_the_body_timeout() {
    let upstream = Upstream::start("n1").await;
    let balancer = BalancerProcess::start(
        &[upstream.node()],
        &[("TICKETS_BALANCER__BODY_TIMEOUT", "200ms")],
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(balancer.addr)
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /purchases HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 40\r\n\r\n{\"event\":",
        )
        .await
        .expect("send the start");
    // Read until the error code has arrived or the connection ends.
    let mut answer = Vec::new();
    let read = async {
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&answer).contains("request_timeout") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(support::PATIENCE, read)
        .await
        .expect("an answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert_eq!(upstream.count("POST"), 0);
}
