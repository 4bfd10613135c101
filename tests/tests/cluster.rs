//! The real binaries together: three nodes on one store behind the balancer. The tests
//! whose outcome depends on the store run on both media: a data directory and a fresh
//! database on a throwaway PostgreSQL server.

use std::collections::{BTreeMap, HashSet};

use cluster::{HttpClient, LocalCluster, MediumKind, TestMedium, run_generator, seed_store};
use hyper::StatusCode;
use serde_json::Value;

fn ticket_ids(purchase: &Value) -> Vec<u64> {
    purchase["tickets"]
        .as_array()
        .map(|ts| ts.iter().filter_map(|t| t["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// Fires `requests` purchases of one ticket each at `urls` in turn, `parallel` at a time.
async fn buy_concurrently(
    urls: &[String],
    event: &str,
    requests: usize,
    keyed: bool,
) -> Vec<(StatusCode, Value)> {
    let http = HttpClient::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..requests {
        let http = http.clone();
        let url = urls[i % urls.len()].clone();
        let event = event.to_owned();
        tasks.spawn(async move {
            let key = keyed.then(|| format!("test-{i}"));
            let answer = http
                .buy(&url, &event, 1, key.as_deref())
                .await
                .expect("an answer");
            (answer.status, answer.json())
        });
    }
    let mut answers = Vec::with_capacity(requests);
    while let Some(answer) = tasks.join_next().await {
        answers.push(answer.expect("task did not panic"));
    }
    answers
}

fn assert_each_ticket_sold_once(answers: &[(StatusCode, Value)], inventory: usize) {
    let mut sold = HashSet::new();
    let mut sold_out = 0;
    for (status, body) in answers {
        match *status {
            StatusCode::CREATED => {
                for id in ticket_ids(body) {
                    assert!(sold.insert(id), "ticket {id} sold twice");
                }
            }
            StatusCode::CONFLICT => {
                assert_eq!(body["error"], "sold_out");
                sold_out += 1;
            }
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
    assert_eq!(sold.len(), inventory, "every ticket sold");
    assert_eq!(
        sold_out,
        answers.len() - inventory,
        "the rest answered sold_out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversubscribed_purchases_through_the_balancer_sell_every_ticket_exactly_once() {
    for kind in [MediumKind::Files, MediumKind::Postgres] {
        let store = TestMedium::seeded(kind, &[("concert", 150, 2500), ("sports-game", 10, 900)])
            .expect("seed");
        let cluster = LocalCluster::start_on(3, &store.medium).expect("cluster starts");
        let answers = buy_concurrently(&[cluster.balancer_url()], "concert", 250, true).await;
        assert_each_ticket_sold_once(&answers, 150);

        let (code, stdout, stderr) =
            run_generator(&["audit", "--target", &cluster.balancer_url()]).expect("audit runs");
        assert_eq!(code, 0, "{kind:?}: audit failed:\n{stdout}\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_processes_racing_directly_on_one_store_never_sell_a_ticket_twice() {
    for kind in [MediumKind::Files, MediumKind::Postgres] {
        let store = TestMedium::seeded(kind, &[("concert", 120, 1000)]).expect("seed");
        let cluster = LocalCluster::start_on(3, &store.medium).expect("cluster starts");
        let answers = buy_concurrently(&cluster.node_urls(), "concert", 200, false).await;
        assert_each_ticket_sold_once(&answers, 120);

        let http = HttpClient::new();
        let purchases = http
            .get(&format!("{}/purchases", cluster.node_urls()[0]))
            .await
            .expect("answer")
            .json();
        let committed: usize = purchases
            .as_array()
            .expect("list")
            .iter()
            .map(|p| ticket_ids(p).len())
            .sum();
        assert_eq!(
            committed, 120,
            "{kind:?}: sold count equals the sum of purchased quantities"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_acknowledged_by_one_node_is_visible_at_once_on_every_other() {
    for kind in [MediumKind::Files, MediumKind::Postgres] {
        let store = TestMedium::seeded(kind, &[("concert", 30, 1000)]).expect("seed");
        let cluster = LocalCluster::start_on(3, &store.medium).expect("cluster starts");
        let urls = cluster.node_urls();
        let http = HttpClient::new();
        for round in 0..6 {
            let writer = &urls[round % 3];
            let bought = http.buy(writer, "concert", 2, None).await.expect("answer");
            assert_eq!(bought.status, StatusCode::CREATED);
            let mut body = bought.json();
            let id = body["purchase_id"].as_str().expect("id").to_owned();
            // The secret is in the 201 answer only.
            let secret = body.as_object_mut().and_then(|b| b.remove("secret"));
            assert!(secret.is_some_and(|s| s.is_string()), "{body}");
            for reader in urls.iter().filter(|u| *u != writer) {
                let seen = http
                    .get(&format!("{reader}/purchases/{id}"))
                    .await
                    .expect("answer");
                assert_eq!(seen.status, StatusCode::OK, "{id} missing on {reader}");
                assert_eq!(seen.json(), body);
                for ticket in ticket_ids(&body) {
                    let t = http
                        .get(&format!("{reader}/tickets/{ticket}"))
                        .await
                        .expect("answer");
                    assert_eq!(t.json()["sold"], true);
                }
                let event = http
                    .get(&format!("{reader}/events/concert"))
                    .await
                    .expect("answer");
                assert_eq!(event.json()["sold"], 2 * (round as u64 + 1));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_spreads_requests_evenly_over_the_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed_store(dir.path(), &[("concert", 5, 1000)]).expect("seed");
    let cluster = LocalCluster::start(3, dir.path()).expect("cluster starts");
    let http = HttpClient::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..90 {
        let answer = http
            .get(&format!("{}/events", cluster.balancer_url()))
            .await
            .expect("answer");
        assert_eq!(answer.status, StatusCode::OK);
        *per_node
            .entry(answer.node().expect("X-Node kept"))
            .or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    for (node, count) in &per_node {
        assert!(
            (25..=35).contains(count),
            "{node} served {count} of 90: {per_node:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_is_skipped_without_client_errors_on_gets_and_keyed_posts() {
    for kind in [MediumKind::Files, MediumKind::Postgres] {
        let store = TestMedium::seeded(kind, &[("concert", 100, 1000)]).expect("seed");
        let mut cluster = LocalCluster::start_on(3, &store.medium).expect("cluster starts");
        let http = HttpClient::new();
        let base = cluster.balancer_url();
        // Warm the balancer's connections to every node, then kill one.
        for _ in 0..6 {
            http.get(&format!("{base}/events")).await.expect("answer");
        }
        cluster.nodes[1].kill();
        let mut served_by = HashSet::new();
        for i in 0..30 {
            let get = http.get(&format!("{base}/events")).await.expect("answer");
            assert_eq!(
                get.status,
                StatusCode::OK,
                "GET {i} failed: {:?}",
                get.json()
            );
            let key = format!("after-kill-{i}");
            let post = http
                .buy(&base, "concert", 1, Some(&key))
                .await
                .expect("answer");
            assert_eq!(
                post.status,
                StatusCode::CREATED,
                "POST {i} failed: {:?}",
                post.json()
            );
            served_by.insert(post.node().expect("X-Node"));
        }
        assert!(
            !served_by.contains("n2"),
            "the dead node served {served_by:?}"
        );
        let (code, stdout, stderr) =
            run_generator(&["audit", "--target", &base]).expect("audit runs");
        assert_eq!(code, 0, "audit failed:\n{stdout}\n{stderr}");
    }
}
