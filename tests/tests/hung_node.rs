//! A node that hangs rather than dies (SIGSTOP: its connections stay open and nothing is
//! answered) under keyed purchase load through the balancer: no client gets an error or
//! waits anywhere near as long as the stop (the balancer hedges to another node), and when
//! the node wakes with the old requests in hand nothing is sold twice (the store's
//! idempotency keys), checked against every purchase and ticket. And a node frozen while
//! it holds the store's lock: every node's store waits, but the others tell the balancer
//! the store is slow rather than failing their health checks, so they stay in rotation
//! and no client is told that no node is healthy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::history::{self, Outcome, PurchaseOp};
use cluster::{
    HttpClient, LOAD_EVENTS, LocalCluster, load_events, read_final_state, report_summary,
};
use tokio::sync::RwLock;

/// Seeds 5000 tickets of each load event in a new directory and starts three nodes and a
/// balancer on it; the directory lives as long as the returned guard. With a client and the
/// balancer's URL, which the clients and the checks go through.
fn seeded_cluster() -> (tempfile::TempDir, LocalCluster, HttpClient, String) {
    let (dir, cluster) = LocalCluster::seeded(3, &load_events([5000; 3])).expect("cluster starts");
    let base = cluster.balancer_url();
    (dir, cluster, HttpClient::new(), base)
}

/// The balancer's view of its nodes, from `/balancer/nodes`.
async fn balancer_nodes(http: &HttpClient, base: &str) -> serde_json::Value {
    http.get(&format!("{base}/balancer/nodes"))
        .await
        .expect("node list")
        .json()
}

/// `node`'s entry in the balancer's view `nodes` (null when it is not listed).
fn node_state(nodes: &serde_json::Value, node: &cluster::Process) -> serde_json::Value {
    nodes
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["address"] == node.addr.to_string()))
        .cloned()
        .unwrap_or_default()
}

/// One keyed purchase, sent once (no client-side retry: the balancer must cope).
async fn buy_once(http: &HttpClient, base: &str, event: &str, key: &str) -> PurchaseOp {
    let invoked = Instant::now();
    let outcome = history::outcome_of(&http.buy(base, event, 1, Some(key)).await);
    PurchaseOp {
        invoked,
        completed: Instant::now(),
        event: event.to_owned(),
        quantity: 1,
        outcome,
    }
}

/// Six clients buying one ticket at a time with [`buy_once`] through `base` until `done`,
/// cycling through the events, with the keys `<tag>-<client>-<i>`; with a `gate`, each
/// holds it for reading around each purchase.
fn spawn_clients(
    http: &HttpClient,
    base: &str,
    tag: &'static str,
    done: &Arc<AtomicBool>,
    gate: Option<&Arc<RwLock<()>>>,
) -> tokio::task::JoinSet<Vec<PurchaseOp>> {
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..6u32 {
        let (http, base, done) = (http.clone(), base.to_owned(), Arc::clone(done));
        let gate = gate.cloned();
        clients.spawn(async move {
            let mut ops = Vec::new();
            let mut i = 0u32;
            while !done.load(Ordering::SeqCst) {
                let event = LOAD_EVENTS[((client + i) % 3) as usize];
                let key = format!("{tag}-{client}-{i}");
                let _open = match &gate {
                    Some(gate) => Some(gate.read().await),
                    None => None,
                };
                ops.push(buy_once(&http, &base, event, &key).await);
                i += 1;
            }
            ops
        });
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_node_costs_no_client_an_error_or_its_stop_and_wakes_without_selling_twice() {
    let (_dir, cluster, http, base) = seeded_cluster();
    let stop_for = Duration::from_secs(4);
    let done = Arc::new(AtomicBool::new(false));
    // Clients hold this for reading around each purchase; taking it for writing waits
    // until no purchase is in flight, so the node is not stopped holding the store's lock
    // (a file lock held by a hung process stalls every node: the store's limit, not the
    // balancer's).
    let gate = Arc::new(RwLock::new(()));

    let clients = spawn_clients(&http, &base, "hung", &done, Some(&gate));

    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = &cluster.nodes[1];
    {
        let _closed = gate.write().await;
        victim.stop().expect("SIGSTOP");
    }
    let stopped_at = Instant::now();
    tokio::time::sleep(stop_for).await;
    victim.resume().expect("SIGCONT");
    let stopped_for = stopped_at.elapsed();
    // Load goes on while the node wakes and acts on the requests it was holding.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    done.store(true, Ordering::SeqCst);

    let ops = history::join_all(clients).await;
    let nodes = balancer_nodes(&http, &base).await;
    let victim_state = node_state(&nodes, victim);
    let state = read_final_state(&http, &base).await.expect("final state");
    let verdict = history::check(&ops, &[], &state);
    let errors = history::client_errors(&ops);
    let slowest = ops
        .iter()
        .map(|op| op.completed - op.invoked)
        .max()
        .unwrap_or_default();
    report_summary(&format!(
        "{} slowest purchase {slowest:.2?}, hedges off the hung node {}",
        verdict.summary_line(
            &format!("a node hung {stopped_for:.1?} under keyed load"),
            0
        ),
        victim_state["hedges"]
    ));
    verdict.assert_clean_under_load(&errors, 50);
    assert!(
        victim_state["hedges"].as_u64() > Some(0),
        "no request was hedged off the hung node: {victim_state}"
    );
    // Without hedging a purchase sent to the hung node waits for the whole stop; with it,
    // about the hedge delay (500 ms). Half the stop tells the two apart with room to spare
    // on a busy machine.
    assert!(
        slowest < stop_for / 2,
        "a purchase waited {slowest:?} while a node hung for {stopped_for:?}"
    );
}

/// Whether the kernel's lock table shows process `pid` holding an exclusive `flock` on the
/// file with inode `inode` (waiters, marked `->`, are not holders).
fn holds_write_lock(pid: u32, inode: u64) -> bool {
    let table = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    table.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // `N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE START END`
        fields.len() >= 6
            && !fields.contains(&"->")
            && fields[1] == "FLOCK"
            && fields[3] == "WRITE"
            && fields[4] == pid.to_string()
            && fields[5].rsplit(':').next() == Some(&inode.to_string())
    })
}

/// Whether process `pid` is stopped (state `T` in `/proc/PID/stat`).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1;
            after_name
                .split_whitespace()
                .next()
                .map(|state| state == "T")
        })
        .unwrap_or(false)
}

/// Stops `node` at a moment it holds the store's exclusive lock, as issue 12's stall
/// begins: stops it, and unless the kernel's lock table shows it holding the lock, lets it
/// run again and tries once more. Returns how many tries it took.
async fn freeze_holding_lock(node: &cluster::Process, lock: &std::path::Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    for tries in 1..=2000 {
        let inode = std::fs::metadata(lock).expect("lock file").ino();
        node.stop().expect("SIGSTOP");
        while !is_stopped(node.pid()) {
            tokio::task::yield_now().await;
        }
        if holds_write_lock(node.pid(), inode) {
            return tries;
        }
        node.resume().expect("SIGCONT");
        // Let it run a varying while, so the stops do not fall in step with its commits.
        tokio::time::sleep(Duration::from_millis(1 + tries as u64 % 7)).await;
    }
    panic!("the node never held the store's lock when stopped");
}

/// A node frozen while it holds the store's lock stalls every node's store (the file
/// store's limit: issue 12). The other nodes still answer their health checks, saying
/// `"store":"slow"`, so the balancer keeps them in rotation: no client is told that no node
/// is healthy, and when the frozen node wakes nothing is sold twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_frozen_holding_the_store_lock_takes_no_other_node_out_of_rotation() {
    let (dir, cluster, http, base) = seeded_cluster();
    // Longer than the balancer needs to take a node down (3 failed checks, 1 s apart, of
    // 1 s each) and than the nodes' lock wait (5 s).
    let freeze_for = Duration::from_secs(6);
    let done = Arc::new(AtomicBool::new(false));

    let clients = spawn_clients(&http, &base, "frozen", &done, None);
    // Readers too: their answers name the error a client would get.
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (http, base, done) = (http.clone(), base.clone(), Arc::clone(&done));
        readers.spawn(async move {
            let mut codes = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let answer = http.get(&format!("{base}/events")).await;
                codes.push(match answer {
                    Ok(answer) if answer.status.is_success() => "ok".to_owned(),
                    Ok(answer) => answer.error_code().unwrap_or_default(),
                    Err(err) => format!("{err:#}"),
                });
            }
            codes
        });
    }

    // Wait until purchases are flowing, so the victim commits and takes the lock.
    let started = Instant::now();
    while state_sold(&http, &base).await < 20 {
        assert!(started.elapsed() < Duration::from_secs(30), "no purchases");
        tokio::task::yield_now().await;
    }
    let victim = &cluster.nodes[1];
    let tries = freeze_holding_lock(victim, &dir.path().join(store::LOCK_FILE)).await;
    let frozen_at = Instant::now();
    let others: Vec<&cluster::Process> = [&cluster.nodes[0], &cluster.nodes[2]].into();
    let mut samples = 0;
    let mut out_of_rotation = Vec::new();
    let mut said_slow = 0;
    while frozen_at.elapsed() < freeze_for {
        let nodes = balancer_nodes(&http, &base).await;
        for other in &others {
            let state = node_state(&nodes, other);
            if state["up"] != true || state["ejected"] != false {
                out_of_rotation.push(format!("{:.1?}: {state}", frozen_at.elapsed()));
            }
            let health = http
                .get(&format!("{}/health", other.url()))
                .await
                .expect("a health answer");
            assert_eq!(health.status, 200, "{:?}", health.json());
            if health.json()["store"] == "slow" {
                said_slow += 1;
            }
        }
        samples += 1;
        // The pace of the sampling, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    victim.resume().expect("SIGCONT");
    let frozen = frozen_at.elapsed();
    // Load goes on while the node wakes and finishes what it held.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    done.store(true, Ordering::SeqCst);

    let ops = history::join_all(clients).await;
    let read_codes = history::join_all(readers).await;
    let state = read_final_state(&http, &base).await.expect("final state");
    let verdict = history::check(&ops, &[], &state);
    let purchase_codes: Vec<String> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Unknown(why) => Some(why.clone()),
            Outcome::Refused { code, .. } => Some(code.clone()),
            Outcome::Acknowledged(_) => None,
        })
        .collect();
    let no_healthy = purchase_codes
        .iter()
        .chain(read_codes.iter().filter(|code| *code != "ok"))
        .filter(|code| code.contains("no_healthy_nodes"))
        .count();
    let store_waits = purchase_codes
        .iter()
        .filter(|code| code.contains("store_unavailable"))
        .count();
    report_summary(&format!(
        "{} no_healthy_nodes {no_healthy}, store_unavailable (lock wait) {store_waits}, \
         other nodes out of rotation in {} of {samples} samples, said store slow {said_slow} \
         times (frozen holding the lock after {tries} tries)",
        verdict.summary_line(
            &format!("a node frozen {frozen:.1?} holding the store lock"),
            0
        ),
        out_of_rotation.len(),
    ));
    assert!(verdict.is_clean(), "{verdict}");
    assert_eq!(no_healthy, 0, "clients were told no node is healthy");
    assert!(
        out_of_rotation.is_empty(),
        "the nodes that were not frozen left rotation: {out_of_rotation:?}"
    );
    assert!(
        said_slow > 0,
        "the other nodes never said the store was slow: was the lock held?"
    );
    assert!(
        verdict.acknowledged > 20,
        "too little load to mean anything: {}",
        verdict.acknowledged
    );
}

/// Tickets sold so far, over every event (0 when the answer is not a good one).
async fn state_sold(http: &HttpClient, base: &str) -> u64 {
    let Ok(answer) = http.get(&format!("{base}/events")).await else {
        return 0;
    };
    answer
        .json()
        .as_array()
        .map(|events| events.iter().filter_map(|e| e["sold"].as_u64()).sum())
        .unwrap_or(0)
}
