//! The SKIP LOCKED baseline the benchmark compares the PostgreSQL store with: it must be
//! correct for the comparison to mean anything (every ticket sold once, keys honoured).

use std::collections::HashSet;

use cluster::{HttpClient, Process, binary, postgres, seed_store};
use hyper::StatusCode;

/// Seeds a fresh database from a file store of `events` and starts `count` baseline
/// servers on it.
fn start_baselines(events: &[(&str, u64, u64)], count: usize) -> Vec<Process> {
    let dir = tempfile::tempdir().expect("tempdir");
    seed_store(dir.path(), events).expect("seed the file store");
    let database = postgres::fresh_database().expect("a database");
    let output = std::process::Command::new(binary("skip-locked").expect("built"))
        .args(["seed", "--database", &database, "--from"])
        .arg(dir.path())
        .output()
        .expect("seed runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (1..=count)
        .map(|i| {
            let args = ["serve", "--id", &format!("b{i}"), "--database", &database];
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            Process::start(&format!("b{i}"), "skip-locked", &args).expect("baseline starts")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_baseline_sells_every_ticket_once_across_three_servers_and_honours_keys() {
    let servers = start_baselines(&[("concert", 100, 1500), ("sports-game", 5, 900)], 3);
    let urls: Vec<String> = servers.iter().map(Process::url).collect();
    let http = HttpClient::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..160 {
        let (http, url) = (http.clone(), urls[i % 3].clone());
        tasks.spawn(async move {
            let key = format!("k-{i}");
            let answer = http
                .buy(&url, "concert", 1, Some(&key))
                .await
                .expect("answer");
            (key, url, answer)
        });
    }
    let mut sold = HashSet::new();
    let mut sold_out = 0;
    let mut acknowledged = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (key, url, answer) = done.expect("task");
        match answer.status {
            StatusCode::CREATED => {
                let body = answer.json();
                let id = body["tickets"][0]["id"].as_u64().expect("a ticket");
                assert!(sold.insert(id), "ticket {id} sold twice");
                acknowledged.push((key, url, body));
            }
            StatusCode::CONFLICT => {
                assert_eq!(answer.error_code().as_deref(), Some("sold_out"));
                sold_out += 1;
            }
            other => panic!("unexpected {other}: {:?}", answer.json()),
        }
    }
    assert_eq!((sold.len(), sold_out), (100, 60));

    // A repeat with the same key, on another server, answers the first outcome.
    let (key, url, first) = &acknowledged[0];
    let other = urls.iter().find(|u| *u != url).expect("another server");
    let again = http
        .buy(other, "concert", 1, Some(key))
        .await
        .expect("answer");
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(&again.json(), first);
    let reused = http
        .buy(other, "concert", 2, Some(key))
        .await
        .expect("answer");
    assert_eq!(
        reused.error_code().as_deref(),
        Some("idempotency_key_reused")
    );

    let events = http
        .get(&format!("{}/events", urls[2]))
        .await
        .expect("answer")
        .json();
    assert_eq!(events[0]["event"], "concert");
    assert_eq!(
        (events[0]["sold"].as_u64(), events[0]["available"].as_u64()),
        (Some(100), Some(0))
    );
    assert_eq!(events[1]["available"], 5);
    let unknown = http.buy(&urls[0], "opera", 1, None).await.expect("answer");
    assert_eq!(unknown.error_code().as_deref(), Some("unknown_event"));
    let health = http
        .get(&format!("{}/health", urls[1]))
        .await
        .expect("answer");
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.node().as_deref(), Some("b2"));
}
