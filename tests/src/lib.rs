//! Starts the real `node`, `balancer` and `generator` binaries as a local cluster on free
//! ports: the harness of the integration tests and of `cargo run -p cluster`.

pub mod client;
pub mod docker;
pub mod history;
pub mod medium;
pub mod postgres;
pub mod process;
pub mod skip_locked;
pub mod tmpfs;

use std::path::Path;

use anyhow::Context;
use shared::{EventName, Inventory, Ticket};

pub use client::{Answer, HttpClient, purchase_body};
pub use medium::{Medium, MediumKind, TestMedium};
pub use process::{Process, binary, sigterm};

/// The three events the load tests buy from.
pub const LOAD_EVENTS: [&str; 3] = ["concert", "sports-game", "theater-show"];

/// [`LOAD_EVENTS`] with so many `tickets` each, at 1000, 2000 and 5000 cents: what the load
/// tests seed.
pub fn load_events(tickets: [u64; 3]) -> [(&'static str, u64, u64); 3] {
    let [concert, sports, theater] = tickets;
    [
        (LOAD_EVENTS[0], concert, 1000),
        (LOAD_EVENTS[1], sports, 2000),
        (LOAD_EVENTS[2], theater, 5000),
    ]
}

/// Writes a fresh store in `dir` holding, for each `(event, count, price_cents)`, that
/// many unsold tickets, numbered from 1 in order.
pub fn seed_store(dir: &Path, events: &[(&str, u64, u64)]) -> anyhow::Result<()> {
    seed_medium(&Medium::Files(dir.to_owned()), events)
}

/// As `seed_store`, on either medium.
pub fn seed_medium(medium: &Medium, events: &[(&str, u64, u64)]) -> anyhow::Result<()> {
    seed_medium_with_limit(medium, events, None)
}

/// As `seed_medium`, every event limited to `max_per_customer` tickets per customer when
/// given (as `generator seed --max-per-customer N` does).
pub fn seed_medium_with_limit(
    medium: &Medium,
    events: &[(&str, u64, u64)],
    max_per_customer: Option<u32>,
) -> anyhow::Result<()> {
    let mut tickets = Vec::new();
    for &(name, count, price_cents) in events {
        let event = EventName::parse(name)?;
        for _ in 0..count {
            tickets.push(Ticket {
                id: tickets.len() as u64 + 1,
                event: event.clone(),
                price_cents,
                sold: false,
            });
        }
    }
    let mut inventory = Inventory::from_tickets(tickets)?;
    if let Some(limit) = max_per_customer {
        for &(name, _, _) in events {
            inventory.set_max_per_customer(&EventName::parse(name)?, Some(limit));
        }
    }
    // The PostgreSQL store's client blocks on a runtime of its own, which cannot run on a
    // thread of the test's runtime: the store is made, used and dropped on a thread apart.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                medium
                    .store()?
                    .create(&inventory, true)
                    .map_err(anyhow::Error::from)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("seeding panicked"))?
    })
    .context("writing the test store")
}

/// Nodes over one data directory, and optionally a balancer in front of them.
#[derive(Debug)]
pub struct LocalCluster {
    pub nodes: Vec<Process>,
    pub balancer: Option<Process>,
}

impl LocalCluster {
    /// Starts `nodes` nodes (ids `n1`, `n2`, ...) on `data`, and a balancer over them.
    pub fn start(nodes: usize, data: &Path) -> anyhow::Result<Self> {
        Self::start_on(nodes, &Medium::Files(data.to_owned()))
    }

    /// Seeds a store in a new temporary directory (see `seed_store`) and starts `nodes`
    /// nodes and a balancer on it; the directory lives as long as the returned guard.
    pub fn seeded(
        nodes: usize,
        events: &[(&str, u64, u64)],
    ) -> anyhow::Result<(tempfile::TempDir, Self)> {
        let dir = tempfile::tempdir().context("creating the data directory")?;
        seed_store(dir.path(), events)?;
        let cluster = Self::start(nodes, dir.path())?;
        Ok((dir, cluster))
    }

    /// As `start`, on either medium.
    pub fn start_on(nodes: usize, medium: &Medium) -> anyhow::Result<Self> {
        Self::start_on_with(nodes, medium, "127.0.0.1:0", &[])
    }

    /// As `start_on`, with the balancer on `balancer_listen` and extra balancer flags.
    pub fn start_on_with(
        nodes: usize,
        medium: &Medium,
        balancer_listen: &str,
        balancer_flags: &[&str],
    ) -> anyhow::Result<Self> {
        Self::launch(nodes, medium, &[], balancer_listen, balancer_flags)
    }

    /// As `start_on`, every node with the extra environment variables `node_env`.
    pub fn start_on_with_node_env(
        nodes: usize,
        medium: &Medium,
        node_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::launch(nodes, medium, node_env, "127.0.0.1:0", &[])
    }

    /// Starts `nodes` nodes with the extra environment `node_env`, and a balancer over them
    /// on `balancer_listen` with `balancer_flags`.
    fn launch(
        nodes: usize,
        medium: &Medium,
        node_env: &[(&str, &str)],
        balancer_listen: &str,
        balancer_flags: &[&str],
    ) -> anyhow::Result<Self> {
        let nodes = (1..=nodes)
            .map(|i| start_node_on(&format!("n{i}"), medium, "127.0.0.1:0", node_env))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let addresses: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
        let mut args = vec![
            "--listen".to_owned(),
            balancer_listen.to_owned(),
            "--nodes".to_owned(),
            addresses.join(","),
        ];
        args.extend(balancer_flags.iter().map(|f| f.to_string()));
        let balancer = Process::start("balancer", "balancer", &args)?;
        Ok(Self {
            nodes,
            balancer: Some(balancer),
        })
    }

    pub fn balancer_url(&self) -> String {
        self.balancer.as_ref().map(Process::url).unwrap_or_default()
    }

    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(Process::url).collect()
    }
}

/// Starts one node with id `id` on a free loopback port, serving `data`.
pub fn start_node(id: &str, data: &Path) -> anyhow::Result<Process> {
    start_node_on(id, &Medium::Files(data.to_owned()), "127.0.0.1:0", &[])
}

/// Starts one node on either medium, listening on `listen`, with extra environment
/// variables.
pub fn start_node_on(
    id: &str,
    medium: &Medium,
    listen: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Process> {
    let mut args = vec![
        "--id".to_owned(),
        id.to_owned(),
        "--listen".to_owned(),
        listen.to_owned(),
    ];
    args.extend(medium.node_args());
    Process::start_with_env(id, "node", &args, env)
}

/// Kills the nodes in turn under load, one every 1.2 s until a second before `run_for` has
/// passed since `started`, and brings each back on its own port on `medium`, with the
/// extra environment `env`, half a second after its kill. Returns how many kills it made.
pub async fn kill_nodes_in_turn(
    nodes: &mut [Process],
    medium: &Medium,
    env: &[(&str, &str)],
    started: std::time::Instant,
    run_for: std::time::Duration,
) -> usize {
    use std::time::Duration;
    let addresses: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let mut kills = 0;
    while started.elapsed() < run_for - Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let victim = kills % nodes.len();
        nodes[victim].kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        nodes[victim] = start_node_on(&format!("n{}", victim + 1), medium, &addresses[victim], env)
            .expect("node restarts");
    }
    kills
}

/// Reads every ticket, event, purchase and hold through the API at `base`.
pub async fn read_final_state(
    http: &HttpClient,
    base: &str,
) -> anyhow::Result<history::FinalState> {
    read_final_state_as(http, base, None).await
}

/// As `read_final_state`, with the operator's token when given, so purchases and holds
/// show their customers.
pub async fn read_final_state_as(
    http: &HttpClient,
    base: &str,
    admin_token: Option<&str>,
) -> anyhow::Result<history::FinalState> {
    async fn get<T: serde::de::DeserializeOwned>(
        http: &HttpClient,
        url: String,
        admin_token: Option<&str>,
    ) -> anyhow::Result<T> {
        let answer = http.get_as(&url, admin_token).await?;
        anyhow::ensure!(answer.status == 200, "GET {url} answered {}", answer.status);
        Ok(serde_json::from_slice(&answer.body)?)
    }
    Ok(history::FinalState {
        tickets: get(http, format!("{base}/tickets"), admin_token).await?,
        events: get(http, format!("{base}/events"), admin_token).await?,
        purchases: get(http, format!("{base}/purchases"), admin_token).await?,
        holds: get(http, format!("{base}/holds"), admin_token).await?,
    })
}

/// Where tests leave files for a person or CI to look at: `<target>/test-artifacts`.
pub fn artifacts_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .find(|dir| dir.ends_with("deps"))
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
        .join("test-artifacts")
}

/// Prints a test's one-line summary (a fault class's figures, a compose step's timing) and
/// appends it to `<target>/test-artifacts/summary.txt`, which CI prints after the tests
/// (cargo hides a passing test's output).
pub fn report_summary(line: &str) {
    use std::io::Write;
    println!("{line}");
    let dir = artifacts_dir();
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("summary.txt"))?;
        writeln!(file, "{line}")
    });
    if let Err(err) = written {
        eprintln!("cannot record the summary: {err}");
    }
}

/// Runs `generator` with `args` to completion and returns its exit code and output.
pub fn run_generator(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let output = std::process::Command::new(binary("generator")?)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .context("running generator")?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}
