//! The cluster under Docker Compose, from images built here: three nodes come up healthy
//! and all serve; scaling to five while load runs brings the new replicas in within
//! seconds; scaling to two and SIGKILLing a node while load runs fail no keyed purchase;
//! the audit finds nothing sold twice. The same with the store in PostgreSQL
//! (`scripts/compose.sh --postgres`): scaling and a SIGKILLed node under load fail no
//! purchase. Each stack is torn down (`down -v`) whatever happens.
//!
//! Needs a Docker engine with Compose, which the project machine always has.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::docker::{
    KeyedLoad, all_serving, audit, docker, ensure_clean, first_purchase, free_port, lines,
    nodes_serving, repo_root, summarise_load, up_count, wait_for_nodes,
};
use cluster::{HttpClient, report_summary};

/// The tests here run one after the other: each builds the same images and loads the
/// machine on its own.
static ONE_STACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A compose project of its own, removed with its volumes when dropped.
struct Stack {
    project: String,
    port: u16,
    /// The store in PostgreSQL (`scripts/compose.sh --postgres`) instead of the data volume.
    postgres: bool,
}

impl Stack {
    fn new(name: &str, postgres: bool) -> Self {
        Self {
            project: format!("tickets-{name}-{}", std::process::id()),
            port: free_port().expect("a free port"),
            postgres,
        }
    }

    fn compose(&self, args: &[&str]) -> Command {
        let mut command = Command::new(repo_root().join("scripts/compose.sh"));
        if self.postgres {
            command.arg("--postgres");
        }
        command
            .args(["-p", &self.project])
            .args(args)
            .env("TICKETS_PORT", self.port.to_string())
            .env("RUST_LOG", "warn")
            .current_dir(repo_root());
        command
    }

    fn run(&self, args: &[&str]) {
        let output = self.compose(args).output().expect("compose runs");
        assert!(
            output.status.success(),
            "compose {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn node_containers(&self) -> Vec<String> {
        let output = self
            .compose(&["ps", "-q", "node"])
            .output()
            .expect("compose runs");
        lines(&String::from_utf8_lossy(&output.stdout))
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self
            .compose(&["down", "-v", "--remove-orphans", "-t", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_scales_survives_a_killed_node_and_sells_nothing_twice() {
    let _alone = ONE_STACK_AT_A_TIME.lock().await;
    let stack = Stack::new("test", false);
    let http = HttpClient::new();
    let url = stack.url();
    let reports = tempfile::tempdir().expect("tempdir");
    let report = |name: &str| reports.path().join(format!("{name}.json"));

    // 1. Build and start with three nodes; wait for health.
    let started = Instant::now();
    stack.run(&["up", "--build", "-d"]);
    let up_returned = started.elapsed();
    let healthy = wait_for_nodes(&http, &url, Duration::from_secs(120), |n| up_count(n) == 3).await;
    assert!(healthy.is_some(), "three healthy nodes within 120 s");
    first_purchase(&http, &url, "compose-first", Duration::from_secs(60))
        .await
        .expect("a first purchase succeeds");
    let first_sale = started.elapsed();
    report_summary(&format!(
        "compose: up --build returned after {up_returned:.1?} (static binaries and images built in it); first successful purchase {first_sale:.1?} after up was issued"
    ));

    // 2. Load through the balancer: every replica serves.
    let steady = KeyedLoad::start(&url, 6, &report("steady")).expect("load starts");
    let steady = steady.finish().expect("load report");
    summarise_load("compose", "3 nodes", &steady);
    ensure_clean(&steady).expect("no client error");
    assert_eq!(
        nodes_serving(&steady),
        3,
        "every replica served: {}",
        steady["nodes"]
    );

    // 3a. Scale to five while load runs: the new replicas serve within seconds.
    let load = KeyedLoad::start(&url, 15, &report("scale-up")).expect("load starts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = Instant::now();
    stack.run(&["up", "-d", "--no-recreate", "--scale", "node=5"]);
    let compose_took = asked.elapsed();
    let serving = wait_for_nodes(&http, &url, Duration::from_secs(30), |n| all_serving(n, 5)).await;
    let serving = serving.expect("five replicas serving within 30 s");
    report_summary(&format!(
        "compose scale 3->5: compose returned after {compose_took:.1?}, all five serving {serving:.1?} later"
    ));
    let scaled_up = load.finish().expect("load report");
    summarise_load("compose", "scale 3->5", &scaled_up);
    ensure_clean(&scaled_up).expect("no client error");

    // 3b. Scale down to two while load runs: no keyed purchase fails, none hangs.
    let load = KeyedLoad::start(&url, 15, &report("scale-down")).expect("load starts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.run(&["up", "-d", "--no-recreate", "--scale", "node=2"]);
    let scaled_down = load.finish().expect("load report");
    summarise_load("compose", "scale 5->2", &scaled_down);
    ensure_clean(&scaled_down).expect("no client error");

    // 4. SIGKILL a node while load runs: same.
    let load = KeyedLoad::start(&url, 12, &report("kill")).expect("load starts");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim = stack.node_containers().into_iter().next();
    let victim = victim.expect("a node container");
    docker(&["kill", "--signal", "KILL", &victim]).expect("docker kill");
    let killed = load.finish().expect("load report");
    summarise_load("compose", "SIGKILL one of 2", &killed);
    ensure_clean(&killed).expect("no client error");

    // 5. Audit: no ticket sold twice, every acknowledged purchase present.
    audit(&url).expect("a clean audit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_on_postgres_scales_survives_a_killed_node_and_sells_nothing_twice() {
    let _alone = ONE_STACK_AT_A_TIME.lock().await;
    let stack = Stack::new("pg", true);
    let http = HttpClient::new();
    let url = stack.url();
    let reports = tempfile::tempdir().expect("tempdir");

    // 1. Build (the local PostgreSQL image too) and start: PostgreSQL, seeding, three nodes.
    let started = Instant::now();
    stack.run(&["up", "--build", "-d"]);
    let up_returned = started.elapsed();
    let healthy = wait_for_nodes(&http, &url, Duration::from_secs(120), |n| up_count(n) == 3).await;
    assert!(healthy.is_some(), "three healthy nodes within 120 s");
    first_purchase(&http, &url, "compose-pg-first", Duration::from_secs(60))
        .await
        .expect("a first purchase succeeds");
    report_summary(&format!(
        "compose postgres: up --build returned after {up_returned:.1?}; first successful purchase {:.1?} after up was issued",
        started.elapsed()
    ));

    // 2. While keyed load runs: scale to four, then SIGKILL a node. `up --scale` itself
    // takes about 12 s here, so the load lasts long enough to reach the new replica after.
    let load = KeyedLoad::start(&url, 25, &reports.path().join("pg.json")).expect("load starts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.run(&["up", "-d", "--no-recreate", "--scale", "node=4"]);
    let four_up = wait_for_nodes(&http, &url, Duration::from_secs(30), |n| up_count(n) == 4).await;
    let nodes = http
        .get(&format!("{url}/balancer/nodes"))
        .await
        .map(|a| a.json());
    assert!(four_up.is_some(), "four replicas up within 30 s: {nodes:?}");
    let victim = stack.node_containers().into_iter().next();
    docker(&[
        "kill",
        "--signal",
        "KILL",
        &victim.expect("a node container"),
    ])
    .expect("docker kill");
    let report = load.finish().expect("load report");
    summarise_load("compose postgres", "scale 3->4, SIGKILL one", &report);
    ensure_clean(&report).expect("no client error");
    assert!(
        nodes_serving(&report) >= 4,
        "every replica served: {}",
        report["nodes"]
    );

    // 3. Audit: no ticket sold twice, every acknowledged purchase present.
    audit(&url).expect("a clean audit");
}
