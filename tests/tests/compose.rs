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
    StackClient, all_serving, audit, docker, free_port, lines, repo_root, up_count,
};
use cluster::report_summary;

/// The tests here run one after the other: each builds the same images and loads the
/// machine on its own.
static ONE_STACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a load runs before the step it is meant to overlap.
const LEAD: Duration = Duration::from_secs(2);

/// A compose project of its own, removed with its volumes when dropped.
struct Stack {
    project: String,
    port: u16,
    /// The store in PostgreSQL (`scripts/compose.sh --postgres`) instead of the data volume.
    postgres: bool,
    client: StackClient,
    /// Keeps the other stack tests waiting until this stack is down (dropped after it).
    _alone: tokio::sync::MutexGuard<'static, ()>,
}

impl Stack {
    /// Waits for the other stack tests, then builds and starts a stack (`up --build -d`)
    /// and waits for three healthy nodes and a first sale, recording how long that took as
    /// `<engine>: ...` in the summary.
    async fn up(name: &str, postgres: bool, engine: &str) -> Self {
        let port = free_port().expect("a free port");
        let stack = Self {
            _alone: ONE_STACK_AT_A_TIME.lock().await,
            project: format!("tickets-{name}-{}", std::process::id()),
            port,
            postgres,
            client: StackClient::new(port, engine),
        };
        let started = Instant::now();
        stack.run(&["up", "--build", "-d"]);
        let up_returned = started.elapsed();
        let limit = Duration::from_secs(120);
        stack
            .client
            .three_healthy_then_first_sale(limit, String::new)
            .await;
        report_summary(&format!(
            "{engine}: up --build returned after {up_returned:.1?} (static binaries and images built in it); first successful purchase {:.1?} after up was issued",
            started.elapsed()
        ));
        stack
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
    // 1. Build and start with three nodes; wait for health and a first sale.
    let stack = Stack::up("test", false, "compose").await;
    let client = &stack.client;

    // 2. Load through the balancer: every replica serves.
    client.steady_load_reaches_every_replica(3).await;

    // 3a. Scale to five while load runs: the new replicas serve within seconds.
    let load = client.load_underway("scale-up", 15, LEAD).await;
    let asked = Instant::now();
    stack.run(&["up", "-d", "--no-recreate", "--scale", "node=5"]);
    let compose_took = asked.elapsed();
    let serving = client.wait_for_nodes(Duration::from_secs(30), |n| all_serving(n, 5));
    let serving = serving.await.expect("five replicas serving within 30 s");
    report_summary(&format!(
        "compose scale 3->5: compose returned after {compose_took:.1?}, all five serving {serving:.1?} later"
    ));
    client.finish_clean(load, "scale 3->5");

    // 3b. Scale down to two while load runs: no keyed purchase fails, none hangs.
    let load = client.load_underway("scale-down", 15, LEAD).await;
    stack.run(&["up", "-d", "--no-recreate", "--scale", "node=2"]);
    client.finish_clean(load, "scale 5->2");

    // 4. SIGKILL a node while load runs: same.
    let load = client
        .load_underway("kill", 12, Duration::from_secs(3))
        .await;
    let victim = stack.node_containers().into_iter().next();
    docker(&[
        "kill",
        "--signal",
        "KILL",
        &victim.expect("a node container"),
    ])
    .expect("docker kill");
    client.finish_clean(load, "SIGKILL one of 2");

    // 5. Audit: no ticket sold twice, every acknowledged purchase present.
    audit(&client.url).expect("a clean audit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_on_postgres_scales_survives_a_killed_node_and_sells_nothing_twice() {
    // 1. Build (the local PostgreSQL image too) and start: PostgreSQL, seeding, three nodes.
    let stack = Stack::up("pg", true, "compose postgres").await;
    let client = &stack.client;

    // 2. While keyed load runs: scale to four, then SIGKILL a node. `up --scale` itself
    // takes about 12 s here, so the load lasts long enough to reach the new replica after.
    let load = client.load_underway("pg", 25, LEAD).await;
    stack.run(&["up", "-d", "--no-recreate", "--scale", "node=4"]);
    let four_up = client.wait_for_nodes(Duration::from_secs(30), |n| up_count(n) == 4);
    let four_up = four_up.await;
    let nodes = client
        .http
        .get(&format!("{}/balancer/nodes", client.url))
        .await;
    assert!(
        four_up.is_some(),
        "four replicas up within 30 s: {:?}",
        nodes.map(|a| a.json())
    );
    client.sigkill_under_load_then_audit(stack.node_containers().into_iter().next(), load);
}
