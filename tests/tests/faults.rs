//! The fault suite against the real binaries: nodes killed under load, a corrupted or
//! missing store, a lock held too long, a full disk, every node down. Each test is bounded
//! in time and prints one `fault-summary:` line.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster::history::{self, Outcome, PurchaseOp, keyed_client, keyed_purchase, reads_while};
use cluster::tmpfs::Tmpfs;
use cluster::{
    HttpClient, LOAD_EVENTS, LocalCluster, Medium, Process, load_events, read_final_state,
    report_summary, seed_store, start_node, start_node_on,
};
use hyper::StatusCode;
use store::{DATA_FILE, JOURNAL_FILE, LOCK_FILE};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_killed_again_and_again_under_load_lose_nothing_and_keyed_clients_see_no_error() {
    let (dir, cluster) =
        LocalCluster::seeded(3, &load_events([20000, 20000, 2000])).expect("cluster starts");
    let base = cluster.balancer_url();
    let mut nodes = cluster.nodes;
    let http = HttpClient::new();
    let run_for = Duration::from_secs(8);
    let started = Instant::now();

    let mut clients = tokio::task::JoinSet::new();
    for client in 0..6u32 {
        let (http, base) = (http.clone(), base.clone());
        clients.spawn(async move {
            keyed_client(&http, &base, &LOAD_EVENTS, client, "kill", || {
                started.elapsed() < run_for
            })
            .await
        });
    }
    let reader = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move { reads_while(&http, &base, || started.elapsed() < run_for).await })
    };
    let medium = Medium::Files(dir.path().into());
    let kills = cluster::kill_nodes_in_turn(&mut nodes, &medium, &[], started, run_for).await;

    let ops = history::join_all(clients).await;
    let reads = reader.await.expect("reader task");
    let state = read_final_state(&http, &base).await.expect("final state");
    let verdict = history::check(&ops, &reads, &state);
    let errors = history::client_errors(&ops);
    report_summary(&verdict.summary_line(&format!("{kills} SIGKILLs under load"), 0));
    println!("  {} reads checked for real-time order", reads.len());
    assert!(kills >= 4, "only {kills} kills happened");
    verdict.assert_clean_under_load(&errors, 50);
}

fn node_check_store(data: &Path) -> (bool, String) {
    cluster::process::node_check_store(&["--data", &data.to_string_lossy()])
}

/// A snapshot with `good`'s header line (so the journal beside it is still its own) and
/// `body` after it.
fn snapshot_with_header(good: &[u8], body: &str) -> Vec<u8> {
    let header = good.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut bytes = header.to_vec();
    bytes.push(b'\n');
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_or_missing_store_is_answered_503_never_rewritten_and_recovered_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    seed_store(data, &[("concert", 20, 1000)]).expect("seed");
    let node = start_node("n1", data).expect("node starts");
    let http = HttpClient::new();
    let base = node.url();
    for i in 0..3 {
        let answer = http
            .buy(&base, "concert", 2, Some(&format!("before-{i}")))
            .await
            .expect("answer");
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    let good_snapshot = fs::read(data.join(DATA_FILE)).expect("snapshot");
    let good_journal = fs::read(data.join(JOURNAL_FILE)).expect("journal");
    let truncated = good_snapshot[..good_snapshot.len() / 2].to_vec();
    let duplicate_ids = snapshot_with_header(
        &good_snapshot,
        "\"tickets\":[\n{\"id\":1,\"event\":\"concert\",\"price_cents\":1,\"sold\":false},\n{\"id\":1,\"event\":\"concert\",\"price_cents\":1,\"sold\":false}\n],\n\"purchases\":[]}\n",
    );
    let mut bad_journal = good_journal.clone();
    bad_journal.extend_from_slice(b"{\"this is\":\"not a purchase\"}\n");
    let cases: Vec<(&str, PathBuf, Option<Vec<u8>>, &str)> = vec![
        (
            "truncated snapshot",
            data.join(DATA_FILE),
            Some(truncated),
            "unreadable",
        ),
        (
            "snapshot not JSON",
            data.join(DATA_FILE),
            Some(b"hello, world\n".to_vec()),
            "unreadable",
        ),
        (
            "snapshot of the wrong shape",
            data.join(DATA_FILE),
            Some(b"{\"tickets\": 5}\n".to_vec()),
            "unreadable",
        ),
        (
            "duplicate ticket ids",
            data.join(DATA_FILE),
            Some(duplicate_ids),
            "appears more than once",
        ),
        (
            "journal line not a purchase",
            data.join(JOURNAL_FILE),
            Some(bad_journal),
            "line at byte",
        ),
        (
            "snapshot missing",
            data.join(DATA_FILE),
            None,
            "snapshot is missing",
        ),
    ];
    let mut tried = 0;
    let mut other_5xx = 0;
    for (name, path, contents, says) in &cases {
        match contents {
            Some(bytes) => fs::write(path, bytes).expect("corrupt"),
            None => fs::remove_file(path).expect("remove"),
        }
        for request in 0..3 {
            tried += 1;
            let answer = match request {
                0 => http.get(&format!("{base}/events")).await,
                1 => http.get(&format!("{base}/health")).await,
                _ => {
                    http.buy(
                        &base,
                        "concert",
                        1,
                        Some(&format!("during-{}", name.replace(' ', "-"))),
                    )
                    .await
                }
            }
            .expect("an answer");
            assert_eq!(
                answer.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{name}: {:?}",
                answer.json()
            );
            if answer.error_code().as_deref() != Some("store_unavailable") {
                other_5xx += 1;
            }
            let message = answer.json()["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                message.contains(says),
                "{name}: message {message:?} lacks {says:?}"
            );
        }
        match contents {
            Some(bytes) => assert_eq!(
                &fs::read(path).expect("still there"),
                bytes,
                "{name}: the node rewrote the file"
            ),
            None => assert!(!path.exists(), "{name}: the node recreated the store"),
        }
        let (sound, report) = node_check_store(data);
        assert!(
            !sound && report.contains(says),
            "{name}: check-store said {report:?}"
        );
        // The operator restores the store: service resumes with everything sold before.
        fs::write(data.join(DATA_FILE), &good_snapshot).expect("restore");
        fs::write(data.join(JOURNAL_FILE), &good_journal).expect("restore");
        let event = http
            .get(&format!("{base}/events/concert"))
            .await
            .expect("answer");
        assert_eq!(event.status, StatusCode::OK, "{name}: no recovery");
        assert_eq!(
            event.json()["sold"],
            6,
            "{name}: recovered a different state"
        );
    }
    let (sound, report) = node_check_store(data);
    assert!(sound, "{report}");
    report_summary(&format!(
        "fault-summary: corrupted or missing store ({} kinds): tried {tried}, acknowledged 0, lost 0, sold twice 0, 5xx to client mistakes 0 (503 store_unavailable {}, other 5xx {other_5xx})",
        cases.len(),
        tried - other_5xx
    ));
    assert_eq!(other_5xx, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_too_long_fails_requests_after_a_bounded_wait_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    seed_store(data, &[("concert", 10, 1000)]).expect("seed");
    let node = start_node_on(
        "n1",
        &Medium::Files(data.into()),
        "127.0.0.1:0",
        &[("TICKETS_NODE__LOCK_TIMEOUT", "300ms")],
    )
    .expect("node starts");
    let http = HttpClient::new();
    let base = node.url();
    let before = (
        fs::read(data.join(DATA_FILE)).expect("snapshot"),
        fs::read(data.join(JOURNAL_FILE)).expect("journal"),
    );

    // The node has read the store once (it reads it as it starts, after it listens).
    let first = http.get(&format!("{base}/events")).await.expect("answer");
    assert_eq!(first.status, StatusCode::OK);

    // A stuck process: holds the exclusive lock and never lets go.
    let stuck = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(data.join(LOCK_FILE))
        .expect("lock file");
    stuck.lock().expect("lock taken");
    let limit = Duration::from_secs(5);
    let refused_for_the_lock = |answer: cluster::Answer| {
        assert_eq!(answer.error_code().as_deref(), Some("store_unavailable"));
        assert!(
            answer.json()["message"]
                .as_str()
                .is_some_and(|m| m.contains("lock"))
        );
    };
    // Nothing was written yet: a read is answered from the state the node has, which the
    // journal shows is still the newest (no lock needed); a purchase waits, then 503.
    let (mut refused, mut read) = (0, 0);
    for request in 0..4 {
        if request % 2 == 0 {
            let answer = http.get(&format!("{base}/events")).await.expect("answer");
            assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.json());
            read += 1;
        } else {
            refused_for_the_lock(
                read_or_buy_is_refused_within(&http, &base, request, "stuck", limit).await,
            );
            refused += 1;
        }
    }
    let after = (
        fs::read(data.join(DATA_FILE)).expect("snapshot"),
        fs::read(data.join(JOURNAL_FILE)).expect("journal"),
    );
    assert!(
        before == after,
        "something was written while the lock was held elsewhere"
    );
    // The stuck process had begun an append (frozen half-way through a line): now a read
    // cannot know the state without the lock either, and is refused the same way.
    fs::OpenOptions::new()
        .append(true)
        .open(data.join(JOURNAL_FILE))
        .and_then(|mut journal| std::io::Write::write_all(&mut journal, b"{\"kind\":"))
        .expect("half a line");
    for request in 4..6 {
        refused_for_the_lock(
            read_or_buy_is_refused_within(&http, &base, request, "stuck", limit).await,
        );
        refused += 1;
    }
    let tried = read + refused;
    stuck.unlock().expect("unlock");
    drop(stuck);
    let answer = http
        .buy(&base, "concert", 1, Some("after"))
        .await
        .expect("answer");
    assert_eq!(answer.status, StatusCode::CREATED);
    report_summary(&format!(
        "fault-summary: lock held too long: tried {}, acknowledged 1, lost 0, sold twice 0, 5xx to client mistakes 0 (503 after a bounded wait {refused}; reads answered without the lock while nothing had changed {read})",
        tried + 1
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_purchases_cleanly_and_keeps_the_last_committed_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = Tmpfs::mount(dir.path().join("disk"), "256k");
    let data = disk.path.join("data");
    seed_store(&data, &[("concert", 300, 1000)]).expect("seed");
    let node = start_node("n1", &data).expect("node starts");
    let http = HttpClient::new();
    let base = node.url();
    let mut ops = Vec::new();
    for i in 0..5 {
        ops.push(keyed_purchase(&http, &base, "concert", 1, &format!("roomy-{i}")).await);
    }
    // Fill the disk to the last byte.
    let filler = disk.path.join("filler");
    {
        use std::io::Write;
        let mut file = fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        while file.write_all(&[0]).is_ok() {}
    }
    let mut refused_full = 0;
    let tried = ops.len() + 60;
    for i in 0..60 {
        let answer = http
            .buy(&base, "concert", 1, Some(&format!("full-{i}")))
            .await
            .expect("an answer");
        match answer.status {
            StatusCode::CREATED => ops.push(PurchaseOp {
                invoked: Instant::now(),
                completed: Instant::now(),
                event: "concert".into(),
                quantity: 1,
                outcome: Outcome::Acknowledged(
                    serde_json::from_slice(&answer.body).expect("purchase"),
                ),
            }),
            StatusCode::SERVICE_UNAVAILABLE
                if answer.error_code().as_deref() == Some("store_unavailable") =>
            {
                refused_full += 1
            }
            other => panic!("unexpected {other}: {:?}", answer.json()),
        }
    }
    assert!(refused_full > 0, "the disk never filled up");
    let state = read_final_state(&http, &base)
        .await
        .expect("the store still reads");
    let verdict = history::check(&ops, &[], &state);
    assert!(verdict.is_clean(), "{verdict}");
    assert_eq!(
        state.purchases.len(),
        verdict.acknowledged,
        "a refused purchase was committed"
    );

    fs::remove_file(&filler).expect("free space");
    let answer = http
        .buy(&base, "concert", 1, Some("after-space"))
        .await
        .expect("answer");
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.json());
    drop(node);
    report_summary(&format!(
        "fault-summary: full disk: tried {}, acknowledged {}, lost {}, sold twice {}, 5xx to client mistakes 0 (503 store_unavailable {refused_full})",
        tried + 1,
        verdict.acknowledged + 1,
        verdict.lost,
        verdict.sold_twice
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_node_down_the_balancer_answers_503_at_once_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed_store(dir.path(), &[("concert", 10, 1000)]).expect("seed");
    let mut cluster = LocalCluster::start(2, dir.path()).expect("cluster starts");
    let base = cluster.balancer_url();
    let http = HttpClient::new();
    let addresses: Vec<String> = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
    for node in &mut cluster.nodes {
        node.kill();
    }
    let mut tried = 0;
    for request in 0..6 {
        tried += 1;
        let limit = Duration::from_secs(3);
        let answer = read_or_buy_is_refused_within(&http, &base, request, "down", limit).await;
        assert!(answer.error_code().is_some(), "a JSON error body");
    }
    let revived: Vec<Process> = addresses
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            start_node_on(
                &format!("n{}", i + 1),
                &Medium::Files(dir.path().into()),
                addr,
                &[],
            )
            .expect("restart")
        })
        .collect();
    let started = Instant::now();
    let mut recovered = false;
    while started.elapsed() < Duration::from_secs(15) {
        if let Ok(answer) = http.buy(&base, "concert", 1, Some("back")).await
            && answer.status == StatusCode::CREATED
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "the balancer did not recover");
    report_summary(&format!(
        "fault-summary: every node down: tried {}, acknowledged 1, lost 0, sold twice 0, 5xx to client mistakes 0 (503 at once {tried}, recovered after {:.1?})",
        tried + 1,
        started.elapsed()
    ));
    drop(revived);
}

/// Sends request number `request` of a series (even: `GET /events`; odd: a purchase keyed
/// `<key_prefix>-<request>`) and checks that it is answered 503 within `limit`, not hung.
async fn read_or_buy_is_refused_within(
    http: &HttpClient,
    base: &str,
    request: u32,
    key_prefix: &str,
    limit: Duration,
) -> cluster::Answer {
    let started = Instant::now();
    let answer = if request.is_multiple_of(2) {
        http.get(&format!("{base}/events")).await
    } else {
        let key = format!("{key_prefix}-{request}");
        http.buy(base, "concert", 1, Some(&key)).await
    }
    .expect("an answer, not a hang");
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        answer.json()
    );
    let took = started.elapsed();
    assert!(took < limit, "took {took:?}");
    answer
}
