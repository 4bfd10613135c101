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
    StackClient, all_serving, audit, docker, free_port, lines, repo_root, up_count,
};
use cluster::report_summary;
use serde_json::Value;

/// The tests here run one after the other: each may create and leave the swarm.
static ONE_STACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a load runs before the step it is meant to overlap.
const LEAD: Duration = Duration::from_secs(2);

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
    /// The balancer's client; its directory also holds the PostgreSQL service's stack file.
    client: StackClient,
    /// The store in PostgreSQL: docker-stack.postgres.yml and a PostgreSQL service.
    postgres: bool,
    /// Keeps the other stack tests waiting until this stack is gone (dropped after it).
    _alone: tokio::sync::MutexGuard<'static, ()>,
}

impl SwarmStack {
    /// Waits for the other stack tests, then joins the engine's swarm, or creates a one-host
    /// swarm on loopback when it is in none, and deploys the stack (see
    /// [`SwarmStack::deploy_until_first_sale`]). The stack is docker-stack.yml, or with
    /// `postgres` docker-stack.postgres.yml and a PostgreSQL service.
    async fn deployed(postgres: bool, engine: &str) -> Self {
        let alone = ONE_STACK_AT_A_TIME.lock().await;
        let state =
            docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).expect("docker info");
        let variant = if postgres { "swarm-pg" } else { "swarm" };
        let port = free_port().expect("a free port");
        let mut stack = Self {
            name: format!("tickets-{variant}-{}", std::process::id()),
            tag: format!("{variant}-test-{}", std::process::id()),
            port,
            created_swarm: false,
            files: vec!["docker-stack.yml".to_owned()],
            client: StackClient::new(port, engine),
            postgres,
            _alone: alone,
        };
        if postgres {
            let extra = stack.client.file("postgres-service.yml");
            std::fs::write(&extra, POSTGRES_SERVICE).expect("stack file written");
            stack.files = vec![
                "docker-stack.postgres.yml".to_owned(),
                extra.to_string_lossy().into_owned(),
            ];
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
        stack.deploy_until_first_sale(engine).await;
        stack
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("TICKETS_TAG", &self.tag)
            .env("TICKETS_PORT", self.port.to_string())
            .env("RUST_LOG", "warn")
            .current_dir(repo_root());
        if self.postgres {
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
        if self.postgres {
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

    /// Builds the images, deploys, then waits for three healthy nodes and a first sale;
    /// records how long each took as `<engine>: ...` in the summary.
    async fn deploy_until_first_sale(&self, engine: &str) {
        let started = Instant::now();
        self.build_images();
        let built = started.elapsed();
        let deployed = Instant::now();
        self.deploy();
        let limit = Duration::from_secs(120);
        let diagnostics = || self.diagnostics();
        let healthy = self
            .client
            .three_healthy_then_first_sale(limit, diagnostics);
        let healthy = healthy.await;
        report_summary(&format!(
            "{engine}: images built in {built:.1?}; after stack deploy, three nodes healthy behind the balancer in {healthy:.1?}, first successful purchase {:.1?}",
            deployed.elapsed()
        ));
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
async fn addresses(client: &StackClient) -> BTreeSet<String> {
    let answer = client
        .http
        .get(&format!("{}/balancer/nodes", client.url))
        .await;
    let nodes = answer.map(|a| a.json()).unwrap_or_default();
    address_set(nodes.as_array().map_or(&[], Vec::as_slice))
}

fn address_set(nodes: &[Value]) -> BTreeSet<String> {
    let address = |n: &Value| n["address"].as_str().map(str::to_owned);
    nodes.iter().filter_map(address).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swarm_stack_scales_survives_a_killed_replica_and_sells_nothing_twice() {
    // 1. Build the images, deploy, wait for three healthy nodes and a first sale.
    let stack = SwarmStack::deployed(false, "swarm").await;
    let client = &stack.client;

    // 2. Load through the balancer: every replica serves.
    client.steady_load_reaches_every_replica(3).await;

    // 3a. `docker service scale` to five while load runs: the balancer follows.
    let load = client.load_underway("scale-up", 15, LEAD).await;
    let asked = Instant::now();
    stack.scale_nodes(5);
    let serving = client.wait_for_nodes(Duration::from_secs(40), |n| all_serving(n, 5));
    let diagnostics = stack.diagnostics();
    assert!(
        serving.await.is_some(),
        "five replicas serving within 40 s:\n{diagnostics}"
    );
    report_summary(&format!(
        "swarm scale 3->5: all five serving {:.1?} after docker service scale",
        asked.elapsed()
    ));
    client.finish_clean(load, "scale 3->5");

    // 3b. Scale to two while load runs: no keyed purchase fails, none hangs.
    let load = client.load_underway("scale-down", 15, LEAD).await;
    stack.scale_nodes(2);
    client.finish_clean(load, "scale 5->2");
    let two = client.wait_for_nodes(Duration::from_secs(30), |n| {
        n.len() == 2 && up_count(n) == 2
    });
    assert!(two.await.is_some(), "the balancer follows the scale-down");

    // 4. SIGKILL a replica's container while load runs: same; Swarm replaces it.
    let load = client
        .load_underway("kill", 12, Duration::from_secs(3))
        .await;
    let victim = stack.node_containers().into_iter().next();
    let victim = victim.expect("a node container");
    let before = addresses(client).await;
    let killed_at = Instant::now();
    docker(&["kill", "--signal", "KILL", &victim]).expect("docker kill");
    // Replaced: two nodes up, none down, and not the same two as before.
    let replaced = client.wait_for_nodes(Duration::from_secs(40), |n| {
        up_count(n) == 2 && n.len() == 2 && address_set(n) != before
    });
    let replaced = replaced.await;
    client.finish_clean(load, "SIGKILL one of 2");
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
    audit(&client.url).expect("a clean audit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swarm_stack_on_postgres_scales_survives_a_killed_replica_and_sells_nothing_twice() {
    // 1. Build the images (PostgreSQL's too), deploy, wait for three healthy nodes.
    let stack = SwarmStack::deployed(true, "swarm postgres").await;
    let client = &stack.client;

    // 2. While keyed load runs: scale to four, then SIGKILL a replica's container.
    let load = client.load_underway("pg", 15, LEAD).await;
    stack.scale_nodes(4);
    let serving = client.wait_for_nodes(Duration::from_secs(40), |n| up_count(n) == 4);
    let diagnostics = stack.diagnostics();
    assert!(
        serving.await.is_some(),
        "four replicas up within 40 s:\n{diagnostics}"
    );
    client.sigkill_under_load_then_audit(stack.node_containers().into_iter().next(), load);
}
