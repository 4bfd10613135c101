//! A node that hangs rather than dies (SIGSTOP: its connections stay open and nothing is
//! answered) under keyed purchase load through the balancer: no client gets an error or
//! waits anywhere near as long as the stop (the balancer hedges to another node), and when
//! the node wakes with the old requests in hand nothing is sold twice (the store's
//! idempotency keys), checked against every purchase and ticket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::history::{self, Outcome, PurchaseOp};
use cluster::{HttpClient, LocalCluster, read_final_state, report_summary, seed_store};
use hyper::StatusCode;
use shared::api::PurchaseBody;
use tokio::sync::RwLock;

const EVENTS: [&str; 3] = ["concert", "sports-game", "theater-show"];

/// One keyed purchase, sent once (no client-side retry: the balancer must cope).
async fn buy_once(http: &HttpClient, base: &str, event: &str, key: &str) -> PurchaseOp {
    let invoked = Instant::now();
    let outcome = match http.buy(base, event, 1, Some(key)).await {
        Ok(answer) if answer.status == StatusCode::CREATED => {
            match serde_json::from_slice::<PurchaseBody>(&answer.body) {
                Ok(body) => Outcome::Acknowledged(body),
                Err(_) => Outcome::Unknown("unreadable 201".into()),
            }
        }
        Ok(answer) if answer.status.is_server_error() => {
            Outcome::Unknown(format!("{} {:?}", answer.status, answer.error_code()))
        }
        Ok(answer) => Outcome::Refused {
            status: answer.status.as_u16(),
            code: answer.error_code().unwrap_or_default(),
        },
        Err(err) => Outcome::Unknown(format!("{err:#}")),
    };
    PurchaseOp {
        invoked,
        completed: Instant::now(),
        event: event.to_owned(),
        quantity: 1,
        outcome,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_node_costs_no_client_an_error_or_its_stop_and_wakes_without_selling_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed_store(
        dir.path(),
        &[
            (EVENTS[0], 5000, 1000),
            (EVENTS[1], 5000, 2000),
            (EVENTS[2], 5000, 5000),
        ],
    )
    .expect("seed");
    let cluster = LocalCluster::start(3, dir.path()).expect("cluster starts");
    let base = cluster.balancer_url();
    let http = HttpClient::new();
    let stop_for = Duration::from_secs(4);
    let done = Arc::new(AtomicBool::new(false));
    // Clients hold this for reading around each purchase; taking it for writing waits
    // until no purchase is in flight, so the node is not stopped holding the store's lock
    // (a file lock held by a hung process stalls every node: the store's limit, not the
    // balancer's).
    let gate = Arc::new(RwLock::new(()));

    let mut clients = tokio::task::JoinSet::new();
    for client in 0..6u32 {
        let (http, base, done, gate) = (
            http.clone(),
            base.clone(),
            Arc::clone(&done),
            Arc::clone(&gate),
        );
        clients.spawn(async move {
            let mut ops = Vec::new();
            let mut i = 0u32;
            while !done.load(Ordering::SeqCst) {
                let event = EVENTS[((client + i) % 3) as usize];
                let key = format!("hung-{client}-{i}");
                let _open = gate.read().await;
                ops.push(buy_once(&http, &base, event, &key).await);
                i += 1;
            }
            ops
        });
    }

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

    let mut ops = Vec::new();
    while let Some(client_ops) = clients.join_next().await {
        ops.extend(client_ops.expect("client task"));
    }
    let nodes = http
        .get(&format!("{base}/balancer/nodes"))
        .await
        .expect("node list")
        .json();
    let victim_state = nodes
        .as_array()
        .and_then(|nodes| {
            nodes
                .iter()
                .find(|n| n["address"] == victim.addr.to_string())
        })
        .cloned()
        .unwrap_or_default();
    let state = read_final_state(&http, &base).await.expect("final state");
    let verdict = history::check(&ops, &[], &state);
    let errors: Vec<String> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Unknown(why) => Some(why.clone()),
            Outcome::Refused { code, .. } if code != "sold_out" => Some(code.clone()),
            _ => None,
        })
        .collect();
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
    assert!(verdict.is_clean(), "{verdict}");
    assert!(errors.is_empty(), "clients saw errors: {errors:?}");
    assert!(
        verdict.acknowledged > 50,
        "too little load to mean anything: {}",
        verdict.acknowledged
    );
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
