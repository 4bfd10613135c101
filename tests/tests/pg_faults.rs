//! The fault suite of the store on PostgreSQL, against the real binaries and a real server:
//! the server killed (immediate shutdown) under load, nodes SIGKILLed mid-transaction, a
//! node frozen (SIGSTOP) while it holds the store's advisory lock. Each test checks the
//! clients' history (nothing acknowledged lost, nothing sold twice) and prints one
//! `fault-summary:` line.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::history::{
    self, FinalState, Outcome, PurchaseOp, ReadOp, Verdict, keyed_client, read_sold, reads_while,
};
use cluster::postgres::PgServer;
use cluster::{
    Answer, HttpClient, LocalCluster, Medium, read_final_state, report_summary, seed_medium,
    start_node_on,
};
use hyper::StatusCode;
use tokio::sync::Mutex;

const EVENTS: [&str; 3] = ["concert", "sports-game", "theater-show"];
const STOCK: [(&str, u64, u64); 4] = [
    ("concert", 4000, 1000),
    ("sports-game", 4000, 2000),
    ("theater-show", 1000, 5000),
    // Bought only by the probes, so a fast load that sells the others out cannot make a
    // probe's 409 look like a node that does not sell.
    (PROBE_EVENT, 2000, 500),
];

/// The event the probes buy from, which the load leaves alone.
const PROBE_EVENT: &str = "probes";

/// `node check-store --database URL` says the store is sound.
fn check_store(url: &str) -> (bool, String) {
    cluster::process::node_check_store(&["--database", url])
}

/// Clients buying with keys through `base` until `stop` is set, and a reader of the sold
/// counts; returns their histories.
struct Load {
    clients: tokio::task::JoinSet<Vec<PurchaseOp>>,
    reader: tokio::task::JoinHandle<Vec<ReadOp>>,
    stop: Arc<AtomicBool>,
}

impl Load {
    fn start(http: &HttpClient, bases: &[String], clients: u32, tag: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut set = tokio::task::JoinSet::new();
        for client in 0..clients {
            let (http, stop, tag) = (http.clone(), stop.clone(), tag.to_owned());
            let base = bases[client as usize % bases.len()].clone();
            set.spawn(async move {
                keyed_client(&http, &base, &EVENTS, client, &tag, || {
                    !stop.load(Ordering::Relaxed)
                })
                .await
            });
        }
        let reader = {
            let (http, stop, base) = (http.clone(), stop.clone(), bases[0].clone());
            tokio::spawn(async move {
                reads_while(&http, &base, || !stop.load(Ordering::Relaxed)).await
            })
        };
        Self {
            clients: set,
            reader,
            stop,
        }
    }

    async fn finish(self) -> (Vec<PurchaseOp>, Vec<ReadOp>) {
        self.stop.store(true, Ordering::Relaxed);
        let ops = history::join_all(self.clients).await;
        (ops, self.reader.await.expect("reader task"))
    }
}

/// 5xx answers other than 503 `store_unavailable` (and the balancer's own 502/503/504 for
/// a node it could not reach), seen by any client: these must never happen.
fn internal_errors(ops: &[PurchaseOp]) -> Vec<String> {
    ops.iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Unknown(why) if why.starts_with("500") => Some(why.clone()),
            Outcome::Refused { status, code } if *status >= 500 => Some(format!("{status} {code}")),
            _ => None,
        })
        .collect()
}

/// What the checks make of a run: the history's verdict, the 5xx answers no client may
/// see, and `check-store`'s view of the database.
struct Judgement {
    verdict: Verdict,
    internal: Vec<String>,
    sound: bool,
    report: String,
}

impl Judgement {
    /// Checks `ops` and `reads` against `state`, and the store at `url`.
    fn of(ops: &[PurchaseOp], reads: &[ReadOp], state: &FinalState, url: &str) -> Self {
        let (sound, report) = check_store(url);
        Self {
            verdict: history::check(ops, reads, state),
            internal: internal_errors(ops),
            sound,
            report,
        }
    }

    /// The one `fault-summary` line for the fault `class`.
    fn summary_line(&self, class: &str) -> String {
        self.verdict.summary_line(class, self.internal.len())
    }

    /// Fails the test unless the history is clean, no client saw an internal error and the
    /// store checks out.
    fn assert_sound(&self) {
        let Self {
            verdict,
            internal,
            sound,
            report,
        } = self;
        assert!(verdict.is_clean(), "{verdict}");
        assert!(
            internal.is_empty(),
            "clients saw internal errors: {internal:?}"
        );
        assert!(sound, "check-store: {report}");
    }
}

/// Purchases a test makes besides the load (probes while the server is down, checks that
/// service is back), recorded in the history like the load's: a purchase nobody recorded
/// would be a phantom to the checker.
#[derive(Default)]
struct Probes(std::sync::Mutex<Vec<PurchaseOp>>);

impl Probes {
    /// One unretried purchase of one concert ticket on `base` with `key`.
    async fn buy(&self, http: &HttpClient, base: &str, key: &str) -> anyhow::Result<Answer> {
        let invoked = Instant::now();
        let answer = http.buy(base, PROBE_EVENT, 1, Some(key)).await;
        // A 503 may come from a commit whose outcome is unknown.
        let outcome = history::outcome_of(&answer);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(PurchaseOp {
                invoked,
                completed: Instant::now(),
                event: PROBE_EVENT.into(),
                quantity: 1,
                outcome,
            });
        answer
    }

    fn into_ops(self) -> Vec<PurchaseOp> {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads the final state through `base`, trying again for a while if the store answers
/// 503 (a pooled connection to a restarted server fails once); returns it and how many
/// tries failed.
async fn final_state(http: &HttpClient, base: &str) -> (history::FinalState, usize) {
    let started = Instant::now();
    let mut failed = 0;
    loop {
        match read_final_state(http, base).await {
            Ok(state) => return (state, failed),
            Err(err) if started.elapsed() < Duration::from_secs(20) => {
                failed += 1;
                eprintln!("reading the final state: {err:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("the final state could not be read for 20 s: {err:#}"),
        }
    }
}

/// Polls `f` until it returns true or `limit` passes; returns how long it took.
async fn poll_until<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if f().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_database_server_gives_quick_503s_then_service_returns_and_nothing_acknowledged_is_lost()
 {
    let server = PgServer::start().expect("server starts");
    let url = server.create_database().expect("database");
    let medium = Medium::Postgres(url.clone());
    seed_medium(&medium, &STOCK).expect("seed");
    let cluster = LocalCluster::start_on(3, &medium).expect("cluster starts");
    let base = cluster.balancer_url();
    let nodes = cluster.node_urls();
    let http = HttpClient::new();
    let probes = Probes::default();

    let load = Load::start(&http, std::slice::from_ref(&base), 6, "crash");
    poll_until(Duration::from_secs(20), || async {
        read_sold(&http, &base)
            .await
            .is_some_and(|r| r.sold.values().sum::<u64>() > 100)
    })
    .await
    .expect("sales under way before the crash");

    let server_down = Instant::now();
    server.kill().expect("immediate shutdown");
    // While it is down every node answers at once, and says why.
    let mut while_down = 0;
    let mut slowest_503 = Duration::ZERO;
    let mut wrong = Vec::new();
    for round in 0..2 {
        for (i, node) in nodes.iter().enumerate() {
            let asked = Instant::now();
            let answers = [
                http.get(&format!("{node}/events")).await,
                probes.buy(&http, node, &format!("down-{round}-{i}")).await,
            ];
            for answer in answers {
                let answer = answer.expect("an answer, not a hang");
                while_down += 1;
                slowest_503 = slowest_503.max(asked.elapsed());
                if answer.status != StatusCode::SERVICE_UNAVAILABLE
                    || answer.error_code().as_deref() != Some("store_unavailable")
                {
                    wrong.push(format!("{} {:?}", answer.status, answer.json()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "while the server was down: {wrong:?}");
    let down_for = server_down.elapsed();

    server.restart().expect("server restarts");
    let restarted = Instant::now();
    let recovered_after = poll_until(Duration::from_secs(30), || async {
        let mut all = true;
        for (i, node) in nodes.iter().enumerate() {
            let key = format!("back-{i}-{}", restarted.elapsed().as_millis());
            all &= probes
                .buy(&http, node, &key)
                .await
                .is_ok_and(|a| a.status == StatusCode::CREATED);
        }
        all
    })
    .await
    .expect("every node sells again within 30 s of the restart");

    // Some more load after the recovery, then the verdict.
    let more = Instant::now();
    poll_until(Duration::from_secs(20), || async {
        more.elapsed() > Duration::from_secs(2)
    })
    .await;
    let (mut ops, reads) = load.finish().await;
    ops.extend(probes.into_ops());
    let (state, failed_reads) = final_state(&http, &base).await;
    let judged = Judgement::of(&ops, &reads, &state, &url);
    report_summary(&format!(
        "{} (503 store_unavailable while down {while_down}, slowest {slowest_503:.1?}; down {down_for:.1?}; every node sells {recovered_after:.1?} after the restart; final reads refused after that {failed_reads})",
        judged.summary_line("PostgreSQL server killed (immediate shutdown) under load")
    ));
    judged.assert_sound();
    assert!(
        slowest_503 < Duration::from_secs(10),
        "a 503 took {slowest_503:?}: a hang, not a quick refusal"
    );
    assert!(
        judged.verdict.acknowledged > 50,
        "too little load: {}",
        judged.verdict
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_sigkilled_mid_transaction_leave_no_half_written_purchase() {
    let server = cluster::postgres::shared().expect("server");
    let url = server.create_database().expect("database");
    let medium = Medium::Postgres(url.clone());
    seed_medium(&medium, &STOCK).expect("seed");
    let cluster = LocalCluster::start_on(3, &medium).expect("cluster starts");
    let base = cluster.balancer_url();
    let addresses: Vec<String> = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
    let nodes = Arc::new(Mutex::new(cluster.nodes));
    let http = HttpClient::new();

    let load = Load::start(&http, std::slice::from_ref(&base), 6, "kill");
    // Kill a node every second of load and bring it back on the same port.
    let kills = 4;
    for victim in (0..3).cycle().take(kills) {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        nodes.lock().await[victim].kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let restarted = start_node_on(
            &format!("n{}", victim + 1),
            &medium,
            &addresses[victim],
            &[],
        )
        .expect("node restarts");
        nodes.lock().await[victim] = restarted;
    }
    let (ops, reads) = load.finish().await;
    let (state, _) = final_state(&http, &base).await;
    let judged = Judgement::of(&ops, &reads, &state, &url);
    report_summary(&format!(
        "{} (node check-store: {})",
        judged.summary_line(&format!(
            "{kills} node SIGKILLs mid-transaction (PostgreSQL store)"
        )),
        if judged.sound { "sound" } else { "UNSOUND" }
    ));
    judged.assert_sound();
    assert!(
        judged.verdict.acknowledged > 20,
        "too little load: {}",
        judged.verdict
    );
}

/// How long the frozen node stays frozen once it is caught holding the lock.
const FROZEN_FOR: Duration = Duration::from_secs(6);

/// The pid of a server process (a backend) that holds the store's advisory lock while its
/// client is not talking to it: a node frozen in the middle of a commit.
fn frozen_lock_holder(server: &PgServer, db: &str) -> Option<String> {
    let sql = "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
               WHERE l.locktype = 'advisory' AND l.granted
                 AND a.state = 'idle in transaction'
                 AND a.state_change < now() - interval '200 milliseconds'";
    server.psql(db, sql).ok().filter(|pid| !pid.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_frozen_holding_the_lock_stops_the_others_only_briefly_and_sells_nothing_twice() {
    let server = cluster::postgres::shared().expect("server");
    let url = server.create_database().expect("database");
    let db = url.rsplit('/').next().expect("database name").to_owned();
    let medium = Medium::Postgres(url.clone());
    seed_medium(&medium, &STOCK).expect("seed");
    let cluster = LocalCluster::start_on(3, &medium).expect("cluster starts");
    let nodes = cluster.node_urls();
    let frozen = cluster.nodes[0].pid().to_string();
    let http = HttpClient::new();
    let probes = Probes::default();

    // Load on every node directly, the frozen one included, so it is mid-commit often.
    let load = Load::start(&http, &nodes, 6, "freeze");
    let mut holder = None;
    let mut tries = 0;
    while holder.is_none() && tries < 100 {
        tries += 1;
        signal("-STOP", &frozen);
        holder = poll_until(Duration::from_millis(600), || async {
            frozen_lock_holder(server, &db).is_some()
        })
        .await
        .and(frozen_lock_holder(server, &db));
        if holder.is_none() {
            signal("-CONT", &frozen);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let holder = holder.expect("node 1 was never caught holding the lock");
    // While node 1 stays frozen, the others sell: the server ends the frozen node's
    // transaction (idle_in_transaction_session_timeout), and any of its connections that
    // were queued for the lock time out (lock_timeout) or are ended the same way. The
    // longest stretch without a sale on the others is what the freeze costs them.
    let frozen_at = Instant::now();
    let mut last_sale = frozen_at;
    let mut longest_stall = Duration::ZERO;
    let mut first_sale = None;
    let mut i = 0;
    while frozen_at.elapsed() < FROZEN_FOR {
        i += 1;
        let node = &nodes[1 + i % 2];
        let sold = probes
            .buy(&http, node, &format!("other-{i}"))
            .await
            .is_ok_and(|a| a.status == StatusCode::CREATED);
        if sold {
            longest_stall = longest_stall.max(last_sale.elapsed());
            last_sale = Instant::now();
            first_sale.get_or_insert(frozen_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    longest_stall = longest_stall.max(last_sale.elapsed());
    let others_sell_after = first_sale.expect("the other nodes sell while node 1 is frozen");
    signal("-CONT", &frozen);
    let woke = Instant::now();
    let node1_sells_after = poll_until(Duration::from_secs(30), || async {
        probes
            .buy(
                &http,
                &nodes[0],
                &format!("woke-{}", woke.elapsed().as_millis()),
            )
            .await
            .is_ok_and(|a| a.status == StatusCode::CREATED)
    })
    .await
    .expect("node 1 sells again after waking");
    poll_until(Duration::from_secs(10), || async {
        woke.elapsed() > Duration::from_secs(1)
    })
    .await;
    let (mut ops, reads) = load.finish().await;
    ops.extend(probes.into_ops());
    let (state, _) = final_state(&http, &nodes[2]).await;
    let judged = Judgement::of(&ops, &reads, &state, &url);
    report_summary(&format!(
        "{} (backend {holder} held the lock when frozen; the others sold again {others_sell_after:.1?} later, longest stall {longest_stall:.1?} in {FROZEN_FOR:?} frozen; node 1 sold {node1_sells_after:.1?} after waking)",
        judged.summary_line("node frozen (SIGSTOP) holding the advisory lock")
    ));
    // The server ends the frozen session after `idle_in_transaction_session_timeout`
    // (0.5 s); the lock wait (`lock_timeout`, 5 s) must not be what frees the others.
    assert!(
        longest_stall < Duration::from_secs(2),
        "the others sold nothing for {longest_stall:?} of the {FROZEN_FOR:?} node 1 was frozen"
    );
    judged.assert_sound();
}

fn signal(which: &str, pid: &str) {
    let status = Command::new("kill")
        .args([which, pid])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {which} {pid}");
}
