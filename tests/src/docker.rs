//! What the tests of the cluster under Docker share, Compose and Swarm alike: the `docker`
//! command, a free host port, polling the balancer's node list, keyed purchase load from
//! the host with its JSON report, the summary lines and the audit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::process::output_of;
use crate::{HttpClient, binary, report_summary, run_generator};

/// The repository's root, where the compose and stack files are.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A TCP port free on the host's loopback now, for a published port.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding port 0")?;
    Ok(listener.local_addr()?.port())
}

/// Runs `docker` with `args` and returns its standard output; fails, with its standard
/// error, when it exits non-zero.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    output_of(
        Command::new("docker").args(args),
        &format!("docker {args:?}"),
    )
}

/// The non-empty lines of a command's output, e.g. the container ids of `docker ps -q`.
pub fn lines(output: &str) -> Vec<String> {
    output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Polls `/balancer/nodes` at `url` until `ready` holds for the node list, and says how long
/// that took; `None` when `limit` passed first.
pub async fn wait_for_nodes(
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

/// How many nodes of a `/balancer/nodes` list are up.
pub fn up_count(nodes: &[Value]) -> usize {
    nodes.iter().filter(|n| n["up"] == true).count()
}

/// Whether exactly `count` nodes are known, every one up and already given requests.
pub fn all_serving(nodes: &[Value], count: usize) -> bool {
    nodes.len() == count
        && nodes
            .iter()
            .all(|n| n["up"] == true && n["requests"].as_u64() > Some(0))
}

/// What a stack test drives from the host, Compose and Swarm alike: the balancer's URL, an
/// HTTP client, and a directory for the load runs' reports; `engine` labels the summary
/// lines (`compose`, `swarm postgres`).
pub struct StackClient {
    pub url: String,
    pub http: HttpClient,
    pub engine: String,
    reports: tempfile::TempDir,
}

impl StackClient {
    /// A client of the balancer published on the host's `port`.
    pub fn new(port: u16, engine: &str) -> Self {
        Self {
            url: format!("http://127.0.0.1:{port}"),
            http: HttpClient::new(),
            engine: engine.to_owned(),
            reports: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Where the load run `name` writes its report (and, for a stack that needs one, a
    /// file of its own).
    pub fn file(&self, name: &str) -> PathBuf {
        self.reports.path().join(name)
    }

    /// Polls the balancer's node list; see [`wait_for_nodes`].
    pub async fn wait_for_nodes(
        &self,
        limit: Duration,
        ready: impl Fn(&[Value]) -> bool,
    ) -> Option<Duration> {
        wait_for_nodes(&self.http, &self.url, limit, ready).await
    }

    /// The start of every stack test: waits up to `limit` for three healthy nodes, then up
    /// to `limit` again for a first successful purchase. Panics with `diagnostics()` when
    /// either does not come; returns how long the nodes took.
    pub async fn three_healthy_then_first_sale(
        &self,
        limit: Duration,
        diagnostics: impl Fn() -> String,
    ) -> Duration {
        let healthy = self.wait_for_nodes(limit, |n| up_count(n) == 3).await;
        let Some(healthy) = healthy else {
            panic!("three healthy nodes within {limit:?}:\n{}", diagnostics());
        };
        let key = format!("{}-first", self.engine.replace(' ', "-"));
        if let Err(err) = first_purchase(&self.http, &self.url, &key, limit).await {
            panic!("a first purchase: {err:#}\n{}", diagnostics());
        }
        healthy
    }

    /// Starts a keyed load run `name` of `seconds` and lets it go for `lead` before
    /// returning, so that what the test does next happens while purchases are in flight.
    pub async fn load_underway(&self, name: &str, seconds: u32, lead: Duration) -> KeyedLoad {
        let report = self.file(&format!("{name}.json"));
        let load = KeyedLoad::start(&self.url, seconds, &report).expect("load starts");
        tokio::time::sleep(lead).await;
        load
    }

    /// Waits for `load` to end, records its figures as `<engine> <phase>`, and panics
    /// unless it had no client error and no hung request. Returns the report.
    pub fn finish_clean(&self, load: KeyedLoad, phase: &str) -> Value {
        let report = load.finish().expect("load report");
        summarise_load(&self.engine, phase, &report);
        ensure_clean(&report).expect("no client error");
        report
    }

    /// A steady keyed load of a few seconds: clean, and every one of `replicas` nodes
    /// served some of it.
    pub async fn steady_load_reaches_every_replica(&self, replicas: usize) {
        let load = self.load_underway("steady", 6, Duration::ZERO).await;
        let steady = self.finish_clean(load, &format!("{replicas} nodes"));
        assert_eq!(
            nodes_serving(&steady),
            replicas,
            "every replica served: {}",
            steady["nodes"]
        );
    }

    /// The end of a scale-and-kill test: SIGKILLs `victim` (a node container) while `load`
    /// runs, then checks that the load saw no client error and reached all four replicas,
    /// and that the audit is clean (nothing sold twice, every acknowledged purchase
    /// present).
    pub fn sigkill_under_load_then_audit(&self, victim: Option<String>, load: KeyedLoad) {
        let victim = victim.expect("a node container");
        docker(&["kill", "--signal", "KILL", &victim]).expect("docker kill");
        let report = self.finish_clean(load, "scale 3->4, SIGKILL one");
        assert!(
            nodes_serving(&report) >= 4,
            "every replica served: {}",
            report["nodes"]
        );
        audit(&self.url).expect("a clean audit");
    }
}

/// Buys one ticket with the idempotency key `key` until it succeeds or `limit` passes.
pub async fn first_purchase(
    http: &HttpClient,
    url: &str,
    key: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match http.buy(url, "concert", 1, Some(key)).await {
            Ok(answer) if answer.status == 201 => return Ok(()),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    bail!("no purchase succeeded within {limit:?}")
}

/// A `generator load` run on the host against a cluster in Docker: keyed purchases at 60/s,
/// retried on another node when one fails, with a JSON report.
pub struct KeyedLoad {
    child: Child,
    report: PathBuf,
}

impl KeyedLoad {
    /// Starts a run of `seconds` against `url` that writes its report to `report`.
    pub fn start(url: &str, seconds: u32, report: &Path) -> anyhow::Result<Self> {
        let child = Command::new(binary("generator")?)
            .args([
                "load",
                "--target",
                url,
                "--rate",
                "60",
                "--max-quantity",
                "2",
            ])
            .args(["--no-progress", "--duration", &format!("{seconds}s")])
            .arg("--report")
            .arg(report)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting generator load")?;
        Ok(Self {
            child,
            report: report.to_path_buf(),
        })
    }

    /// Waits for the run to end and returns its report.
    pub fn finish(mut self) -> anyhow::Result<Value> {
        let status = self.child.wait().context("waiting for generator load")?;
        ensure!(status.success(), "generator load failed: {status}");
        let text = std::fs::read_to_string(&self.report).context("reading the load report")?;
        serde_json::from_str(&text).context("parsing the load report")
    }
}

impl Drop for KeyedLoad {
    fn drop(&mut self) {
        // Only a run abandoned by a failing test is still going.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records one load phase's figures as `<engine> <phase>: sent ... nodes {...}`.
pub fn summarise_load(engine: &str, phase: &str, report: &Value) {
    report_summary(&format!(
        "{engine} {phase}: sent {} purchases {} errors {} retries {} p99 {} ms max {} ms nodes {}",
        report["sent"],
        report["purchases"],
        report["errors_total"],
        report["retries"],
        report["latency_ms"]["p99"],
        report["latency_ms"]["max"],
        report["nodes"]
    ));
}

/// How many nodes served some of a load report's purchases.
pub fn nodes_serving(report: &Value) -> usize {
    report["nodes"].as_object().map_or(0, |n| n.len())
}

/// Fails unless a load run had no client error and no request took 10 s or more.
pub fn ensure_clean(report: &Value) -> anyhow::Result<()> {
    ensure!(report["errors_total"] == 0, "client errors: {report}");
    ensure!(
        report["latency_ms"]["max"].as_f64() < Some(10_000.0),
        "a request hung: {report}"
    );
    Ok(())
}

/// Runs `generator audit` against `url`: nothing sold twice, nothing lost.
pub fn audit(url: &str) -> anyhow::Result<()> {
    let (code, stdout, stderr) = run_generator(&["audit", "--target", url])?;
    println!("{stdout}");
    ensure!(code == 0, "audit failed:\n{stdout}\n{stderr}");
    Ok(())
}
