//! The cluster as a Docker Swarm stack (`docker-stack.yml`), from images built here, on a
//! one-host swarm the test creates when the engine is in none: the seeding, three nodes and
//! the balancer come up; `docker service scale` to five and then to two while keyed load
//! runs, and a replica's container SIGKILLed while it runs, fail no purchase; the audit finds
//! nothing sold twice. The same with the store in PostgreSQL (`docker-stack.postgres.yml`
//! and a PostgreSQL service built from the host's PostgreSQL 15): scaling and a killed
//! replica under load fail no purchase. The stack, its volumes and images are removed, and
//! a swarm the test created is left, whatever happens.
//!
//! Needs a Docker engine that can run a swarm, which the project machine always has.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::docker::{
    KeyedLoad, all_serving, audit, docker, ensure_clean, first_purchase, free_port, lines,
    nodes_serving, repo_root, summarise_load, up_count, wait_for_nodes,
};
use cluster::{HttpClient, report_summary};
use serde_json::Value;

/// The tests here run one after the other: each may create and leave the swarm.
static ONE_STACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The test's addition to docker-stack.postgres.yml: a PostgreSQL in the stack, from the
/// image `scripts/compose.sh --postgres build` makes of the host's PostgreSQL 15.
const POSTGRES_SERVICE: &str = r#"version: "3.8"
services:
  postgres:
    image: tickets-postgres:15
    environment: { POSTGRES_USER: tickets, POSTGRES_PASSWORD: tickets, POSTGRES_DB: tickets }
    volumes: ["postgres:/var/lib/postgresql/data"]
    deploy: { endpoint_mode: dnsrr }
volumes:
  postgres:
"#;

/// A stack of its own on a swarm; dropping it removes the stack, its volumes and its images,
/// then leaves the swarm if this test created it.
struct SwarmStack {
    name: String,
    /// Images are tagged with this, so no other build on the engine is deployed by mistake.
    tag: String,
    port: u16,
    created_swarm: bool,
    /// The stack files, `docker stack deploy -c` each.
    files: Vec<String>,
    /// With the store in PostgreSQL: the directory of the PostgreSQL service's stack file.
    postgres: Option<tempfile::TempDir>,
}

impl SwarmStack {
    /// Joins the engine's swarm, or creates a one-host swarm on loopback when it is in none.
    /// The stack is docker-stack.yml, or with `postgres` docker-stack.postgres.yml and a
    /// PostgreSQL service.
    fn on_a_swarm(postgres: bool) -> Self {
        let state =
            docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).expect("docker info");
        let variant = if postgres { "swarm-pg" } else { "swarm" };
        let mut stack = Self {
            name: format!("tickets-{variant}-{}", std::process::id()),
            tag: format!("{variant}-test-{}", std::process::id()),
            port: free_port().expect("a free port"),
            created_swarm: false,
            files: vec!["docker-stack.yml".to_owned()],
            postgres: None,
        };
        if postgres {
            let dir = tempfile::tempdir().expect("tempdir");
            let extra = dir.path().join("postgres-service.yml");
            std::fs::write(&extra, POSTGRES_SERVICE).expect("stack file written");
            stack.files = vec![
                "docker-stack.postgres.yml".to_owned(),
                extra.to_string_lossy().into_owned(),
            ];
            stack.postgres = Some(dir);
        }
        if state.trim() == "inactive" {
            docker(&[
                "swarm",
                "init",
                "--advertise-addr",
                "127.0.0.1",
                "--listen-addr",
                "127.0.0.1:2377",
            ])
            .expect("docker swarm init");
            stack.created_swarm = true;
        }
        stack
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("TICKETS_TAG", &self.tag)
            .env("TICKETS_PORT", self.port.to_string())
            .env("RUST_LOG", "warn")
            .current_dir(repo_root());
        if self.postgres.is_some() {
            let url = "postgres://tickets:tickets@postgres:5432/tickets";
            command.env("TICKETS_DATABASE", url);
        }
        command
    }

    fn run(&self, mut command: Command, what: &str) {
        let output = command.output().expect("command runs");
        assert!(
            output.status.success(),
            "{what} failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.diagnostics()
        );
    }

    /// Builds the images with the test's tag, as a person would: `scripts/compose.sh build`.
    fn build_images(&self) {
        let mut command = self.command(&repo_root().join("scripts/compose.sh").to_string_lossy());
        if self.postgres.is_some() {
            command.args(["--postgres", "build", "postgres"]);
        } else {
            command.arg("build");
        }
        command.args(["seed", "node", "balancer"]);
        self.run(command, "building the images");
    }

    /// `docker stack deploy` of docker-stack.yml, with the local images as they are.
    fn deploy(&self) {
        let mut command = self.command("docker");
        command.args(["stack", "deploy", "--resolve-image", "never"]);
        for file in &self.files {
            command.args(["-c", file]);
        }
        command.arg(&self.name);
        self.run(command, "docker stack deploy");
    }

    fn scale_nodes(&self, replicas: usize) {
        let mut command = self.command("docker");
        let target = format!("{}_node={replicas}", self.name);
        command.args(["service", "scale", "--detach", &target]);
        self.run(command, "docker service scale");
    }

    fn node_containers(&self) -> Vec<String> {
        let filter = format!("label=com.docker.swarm.service.name={}_node", self.name);
        lines(&docker(&["ps", "-q", "--filter", &filter]).unwrap_or_default())
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The stack's services and tasks, for a failure message.
    fn diagnostics(&self) -> String {
        let services = docker(&["stack", "services", &self.name]).unwrap_or_else(|e| e.to_string());
        let tasks =
            docker(&["stack", "ps", "--no-trunc", &self.name]).unwrap_or_else(|e| e.to_string());
        format!("{services}\n{tasks}")
    }

    /// Polls `done` every 250 ms until it holds or `limit` passes.
    fn poll(limit: Duration, done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    }
}

impl Drop for SwarmStack {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("docker")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet(&["stack", "rm", &self.name]);
        // The stack's containers go away asynchronously; the volume can go only after them.
        let label = format!("label=com.docker.stack.namespace={}", self.name);
        let gone = Self::poll(Duration::from_secs(60), || {
            docker(&["ps", "-aq", "--filter", &label]).is_ok_and(|out| lines(&out).is_empty())
        });
        if !gone {
            eprintln!("the stack's containers were still there after 60 s");
        }
        // Volumes can be removed only once no container uses them: retry until none is left.
        Self::poll(Duration::from_secs(20), || {
            let volumes = docker(&["volume", "ls", "-q", "--filter", &label]);
            let volumes = volumes.map(|out| lines(&out)).unwrap_or_default();
            for volume in &volumes {
                let _ = docker(&["volume", "rm", "-f", volume]);
            }
            volumes.is_empty()
        });
        for program in ["generator", "node", "balancer"] {
            quiet(&["image", "rm", &format!("tickets-{program}:{}", self.tag)]);
        }
        if self.created_swarm {
            // Leave only a swarm nobody else has deployed to meanwhile.
            let others = docker(&["stack", "ls", "--format", "{{.Name}}"]).map(|out| lines(&out));
            match others {
                Ok(others) if others.is_empty() => quiet(&["swarm", "leave", "--force"]),
                _ => eprintln!("not leaving the swarm: other stacks are deployed on it"),
            }
        }
    }
}

/// The addresses the balancer knows, as `/balancer/nodes` lists them.
async fn addresses(http: &HttpClient, url: &str) -> BTreeSet<String> {
    let answer = http.get(&format!("{url}/balancer/nodes")).await;
    let nodes = answer.map(|a| a.json()).unwrap_or_default();
    address_set(nodes.as_array().map_or(&[], Vec::as_slice))
}

fn address_set(nodes: &[Value]) -> BTreeSet<String> {
    let address = |n: &Value| n["address"].as_str().map(str::to_owned);
    nodes.iter().filter_map(address).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swarm_stack_scales_survives_a_killed_replica_and_sells_nothing_twice() {
    let _alone = ONE_STACK_AT_A_TIME.lock().await;
    let stack = SwarmStack::on_a_swarm(false);
    let http = HttpClient::new();
    let url = stack.url();
    let reports = tempfile::tempdir().expect("tempdir");
    let report = |name: &str| reports.path().join(format!("{name}.json"));

    // 1. Build the images, deploy, wait for three healthy nodes and a first sale.
    let started = Instant::now();
    stack.build_images();
    let built = started.elapsed();
    let deployed = Instant::now();
    stack.deploy();
    let healthy = wait_for_nodes(&http, &url, Duration::from_secs(90), |n| up_count(n) == 3).await;
    assert!(
        healthy.is_some(),
        "three healthy nodes within 90 s of the deploy:\n{}",
        stack.diagnostics()
    );
    first_purchase(&http, &url, "swarm-first", Duration::from_secs(30))
        .await
        .expect("a first purchase succeeds");
    report_summary(&format!(
        "swarm: images built in {built:.1?}; after stack deploy, three nodes healthy behind the balancer in {:.1?}, first successful purchase {:.1?}",
        healthy.unwrap_or_default(),
        deployed.elapsed()
    ));

    // 2. Load through the balancer: every replica serves.
    let steady = KeyedLoad::start(&url, 6, &report("steady")).expect("load starts");
    let steady = steady.finish().expect("load report");
    summarise_load("swarm", "3 nodes", &steady);
    ensure_clean(&steady).expect("no client error");
    assert_eq!(
        nodes_serving(&steady),
        3,
        "every replica served: {}",
        steady["nodes"]
    );

    // 3a. `docker service scale` to five while load runs: the balancer follows.
    let load = KeyedLoad::start(&url, 15, &report("scale-up")).expect("load starts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = Instant::now();
    stack.scale_nodes(5);
    let serving = wait_for_nodes(&http, &url, Duration::from_secs(40), |n| all_serving(n, 5)).await;
    assert!(
        serving.is_some(),
        "five replicas serving within 40 s:\n{}",
        stack.diagnostics()
    );
    report_summary(&format!(
        "swarm scale 3->5: all five serving {:.1?} after docker service scale",
        asked.elapsed()
    ));
    let scaled_up = load.finish().expect("load report");
    summarise_load("swarm", "scale 3->5", &scaled_up);
    ensure_clean(&scaled_up).expect("no client error");

    // 3b. Scale to two while load runs: no keyed purchase fails, none hangs.
    let load = KeyedLoad::start(&url, 15, &report("scale-down")).expect("load starts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.scale_nodes(2);
    let scaled_down = load.finish().expect("load report");
    summarise_load("swarm", "scale 5->2", &scaled_down);
    ensure_clean(&scaled_down).expect("no client error");
    let two = wait_for_nodes(&http, &url, Duration::from_secs(30), |n| {
        n.len() == 2 && up_count(n) == 2
    });
    assert!(two.await.is_some(), "the balancer follows the scale-down");

    // 4. SIGKILL a replica's container while load runs: same; Swarm replaces it.
    let load = KeyedLoad::start(&url, 12, &report("kill")).expect("load starts");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim = stack.node_containers().into_iter().next();
    let victim = victim.expect("a node container");
    let before = addresses(&http, &url).await;
    let killed_at = Instant::now();
    docker(&["kill", "--signal", "KILL", &victim]).expect("docker kill");
    // Replaced: two nodes up, none down, and not the same two as before.
    let replaced = wait_for_nodes(&http, &url, Duration::from_secs(40), |n| {
        up_count(n) == 2 && n.len() == 2 && address_set(n) != before
    })
    .await;
    let killed = load.finish().expect("load report");
    summarise_load("swarm", "SIGKILL one of 2", &killed);
    ensure_clean(&killed).expect("no client error");
    report_summary(&match replaced {
        Some(took) => {
            format!("swarm SIGKILL: Swarm's replacement serving {took:.1?} after the kill")
        }
        None => format!(
            "swarm SIGKILL: no new replica serving within {:.1?} of the kill",
            killed_at.elapsed()
        ),
    });

    // 5. Audit: no ticket sold twice, every acknowledged purchase present.
    audit(&url).expect("a clean audit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swarm_stack_on_postgres_scales_survives_a_killed_replica_and_sells_nothing_twice() {
    let _alone = ONE_STACK_AT_A_TIME.lock().await;
    let stack = SwarmStack::on_a_swarm(true);
    let http = HttpClient::new();
    let url = stack.url();
    let reports = tempfile::tempdir().expect("tempdir");

    // 1. Build the images (PostgreSQL's too), deploy, wait for three healthy nodes.
    stack.build_images();
    let deployed = Instant::now();
    stack.deploy();
    let healthy = wait_for_nodes(&http, &url, Duration::from_secs(120), |n| up_count(n) == 3).await;
    assert!(
        healthy.is_some(),
        "three healthy nodes within 120 s of the deploy:\n{}",
        stack.diagnostics()
    );
    first_purchase(&http, &url, "swarm-pg-first", Duration::from_secs(30))
        .await
        .expect("a first purchase succeeds");
    report_summary(&format!(
        "swarm postgres: after stack deploy (PostgreSQL initialised in it), three nodes healthy in {:.1?}, first successful purchase {:.1?}",
        healthy.unwrap_or_default(),
        deployed.elapsed()
    ));

    // 2. While keyed load runs: scale to four, then SIGKILL a replica's container.
    let load = KeyedLoad::start(&url, 15, &reports.path().join("pg.json")).expect("load starts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.scale_nodes(4);
    let serving = wait_for_nodes(&http, &url, Duration::from_secs(40), |n| up_count(n) == 4).await;
    assert!(
        serving.is_some(),
        "four replicas up within 40 s:\n{}",
        stack.diagnostics()
    );
    let victim = stack.node_containers().into_iter().next();
    docker(&[
        "kill",
        "--signal",
        "KILL",
        &victim.expect("a node container"),
    ])
    .expect("docker kill");
    let report = load.finish().expect("load report");
    summarise_load("swarm postgres", "scale 3->4, SIGKILL one", &report);
    ensure_clean(&report).expect("no client error");
    assert!(
        nodes_serving(&report) >= 4,
        "every replica served: {}",
        report["nodes"]
    );

    // 3. Audit: no ticket sold twice, every acknowledged purchase present.
    audit(&url).expect("a clean audit");
}
