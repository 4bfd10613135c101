//! The cluster under Docker Compose, from images built here: three nodes come up healthy
//! and all serve; scaling to five while load runs brings the new replicas in within
//! seconds; scaling to two and SIGKILLing a node while load runs fail no keyed purchase;
//! the audit finds nothing sold twice. The stack is torn down (`down -v`) whatever happens.
//!
//! Needs a Docker engine with Compose, which the project machine always has.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{HttpClient, binary, report_summary, run_generator};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A compose project of its own, removed with its volume when dropped.
struct Stack {
    project: String,
    port: u16,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> Command {
        let mut command = Command::new(repo_root().join("scripts/compose.sh"));
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
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `/balancer/nodes` until `ready` holds for the node list, or `limit` passes.
async fn wait_for_nodes(
    http: &HttpClient,
    url: &str,
    limit: Duration,
    ready: impl Fn(&[Value]) -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(answer) = http.get(&format!("{url}/balancer/nodes")).await
            && let Some(nodes) = answer.json().as_array()
            && ready(nodes)
        {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

fn up_count(nodes: &[Value]) -> usize {
    nodes.iter().filter(|n| n["up"] == true).count()
}

/// Starts `generator load` on the host against the stack, writing its JSON report.
fn start_load(url: &str, seconds: u32, report: &Path) -> Child {
    Command::new(binary("generator").expect("generator built"))
        .args([
            "load",
            "--target",
            url,
            "--rate",
            "60",
            "--max-quantity",
            "2",
            "--no-progress",
        ])
        .args(["--duration", &format!("{seconds}s")])
        .args(["--report", &report.to_string_lossy()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("generator starts")
}

fn finish_load(mut load: Child, report: &Path) -> Value {
    let status = load.wait().expect("generator exits");
    assert!(status.success(), "generator load failed: {status}");
    let text = std::fs::read_to_string(report).expect("report written");
    serde_json::from_str(&text).expect("report is JSON")
}

fn summarise(phase: &str, report: &Value) {
    report_summary(&format!(
        "compose {phase}: sent {} purchases {} errors {} retries {} p99 {} ms max {} ms nodes {}",
        report["sent"],
        report["purchases"],
        report["errors_total"],
        report["retries"],
        report["latency_ms"]["p99"],
        report["latency_ms"]["max"],
        report["nodes"]
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_scales_survives_a_killed_node_and_sells_nothing_twice() {
    let stack = Stack {
        project: format!("tickets-test-{}", std::process::id()),
        port: free_port(),
    };
    let http = HttpClient::new();
    let url = stack.url();
    let reports = tempfile::tempdir().expect("tempdir");

    // 1. Build and start with three nodes; wait for health.
    let started = Instant::now();
    stack.run(&["up", "--build", "-d"]);
    let up_returned = started.elapsed();
    let healthy = wait_for_nodes(&http, &url, Duration::from_secs(120), |n| up_count(n) == 3).await;
    assert!(healthy.is_some(), "three healthy nodes within 120 s");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first_sale = None;
    while first_sale.is_none() && Instant::now() < deadline {
        match http.buy(&url, "concert", 1, Some("compose-first")).await {
            Ok(answer) if answer.status == 201 => first_sale = Some(started.elapsed()),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let first_sale = first_sale.expect("a first purchase succeeds");
    report_summary(&format!(
        "compose: up --build returned after {up_returned:.1?} (static binaries and images built in it); first successful purchase {first_sale:.1?} after up was issued"
    ));

    // 2. Load through the balancer: every replica serves.
    let report_path = reports.path().join("steady.json");
    let report = finish_load(start_load(&url, 6, &report_path), &report_path);
    summarise("3 nodes", &report);
    assert_eq!(report["errors_total"], 0);
    let serving = report["nodes"].as_object().map_or(0, |n| n.len());
    assert_eq!(serving, 3, "every replica served: {}", report["nodes"]);

    // 3a. Scale to five while load runs: the new replicas serve within seconds.
    let report_path = reports.path().join("scale-up.json");
    let load = start_load(&url, 15, &report_path);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = Instant::now();
    stack.run(&["up", "-d", "--no-recreate", "--scale", "node=5"]);
    let compose_took = asked.elapsed();
    let serving = wait_for_nodes(&http, &url, Duration::from_secs(30), |nodes| {
        nodes.len() == 5
            && nodes
                .iter()
                .all(|n| n["up"] == true && n["requests"].as_u64() > Some(0))
    })
    .await;
    let serving = serving.expect("five replicas serving within 30 s");
    report_summary(&format!(
        "compose scale 3->5: compose returned after {compose_took:.1?}, all five serving {serving:.1?} later"
    ));
    let report = finish_load(load, &report_path);
    summarise("scale 3->5", &report);
    assert_eq!(report["errors_total"], 0, "{report}");

    // 3b. Scale down to two while load runs: no keyed purchase fails, none hangs.
    let report_path = reports.path().join("scale-down.json");
    let load = start_load(&url, 15, &report_path);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.run(&["up", "-d", "--no-recreate", "--scale", "node=2"]);
    let report = finish_load(load, &report_path);
    summarise("scale 5->2", &report);
    assert_eq!(report["errors_total"], 0, "{report}");
    assert!(
        report["latency_ms"]["max"].as_f64() < Some(10_000.0),
        "a request hung: {report}"
    );

    // 4. SIGKILL a node while load runs: same.
    let report_path = reports.path().join("kill.json");
    let load = start_load(&url, 12, &report_path);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim = stack
        .node_containers()
        .into_iter()
        .next()
        .expect("a node container");
    let killed = Command::new("docker")
        .args(["kill", "--signal", "KILL", &victim])
        .output()
        .expect("docker kill runs");
    assert!(killed.status.success(), "docker kill failed");
    let report = finish_load(load, &report_path);
    summarise("SIGKILL one of 2", &report);
    assert_eq!(report["errors_total"], 0, "{report}");
    assert!(
        report["latency_ms"]["max"].as_f64() < Some(10_000.0),
        "a request hung: {report}"
    );

    // 5. Audit: no ticket sold twice, every acknowledged purchase present.
    let (code, stdout, stderr) = run_generator(&["audit", "--target", &url]).expect("audit runs");
    println!("{stdout}");
    assert_eq!(code, 0, "audit failed:\n{stdout}\n{stderr}");
}
