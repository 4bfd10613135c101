//! A throwaway PostgreSQL server for the tests: Debian's PostgreSQL 15 (`initdb`, `pg_ctl`)
//! in a temporary directory, run as the `postgres` user, trust authentication on 127.0.0.1
//! and a free port; a fresh database per test; immediate shutdown and restart on the same
//! port for the fault tests; removed afterwards however the test process ends.
//!
//! Clean-up does not rely on destructors alone, because a test binary's statics are never
//! dropped and a killed run drops nothing: each server has a watchdog process that waits
//! for the test process to close a pipe (which the kernel does when it exits in any way),
//! then stops the server and removes its directory. A run that finds the directory of a
//! server whose test process is gone (the watchdog was killed too) removes it as well.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::process::output_of;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where Debian's `postgresql-15` puts the server programs.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// Overrides [`DEFAULT_BIN_DIR`] (another major version, another layout).
pub const BIN_DIR_ENV: &str = "TICKETS_TEST_PG_BIN";

/// Every test server lives in a directory under this one in the system's temp dir, so a
/// later run can find the leftovers of a killed one.
const CLUSTERS_DIR: &str = "tickets-test-pg";

/// The file in a server's directory naming the test process that owns it.
const OWNER_FILE: &str = "owner";

/// The superuser `initdb` creates; trust authentication lets it in without a password.
pub const SUPERUSER: &str = "postgres";

/// How long a start or a stop may take.
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// A PostgreSQL server of its own, on 127.0.0.1 and a free port.
#[derive(Debug)]
pub struct PgServer {
    /// The server's directory: `data/` (the cluster), `socket/`, `server.log`, `owner`.
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    /// The uid and gid the server runs as: `postgres` when the tests run as root (the
    /// server refuses to run as root), else whoever runs the tests.
    user: Option<(u32, u32)>,
    /// Extra `-c name=value` server settings, kept for restarts.
    settings: Vec<(String, String)>,
    /// The write end of the watchdog's pipe, and the watchdog; dropping them ends the
    /// server.
    watchdog: Mutex<Option<(ChildStdin, Child)>>,
    next_database: AtomicU32,
}

impl PgServer {
    /// Creates and starts a server with PostgreSQL's default settings.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Creates and starts a server with extra settings (`("idle_in_transaction_session_timeout",
    /// "2s")`), which it keeps across restarts.
    pub fn start_with(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let parent = std::env::temp_dir().join(CLUSTERS_DIR);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        remove_stale_servers(&parent);
        let dir = unique_dir(&parent)?;
        let user = server_user()?;
        let mut server = Self {
            dir,
            port: 0,
            bin,
            user,
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            watchdog: Mutex::new(None),
            next_database: AtomicU32::new(1),
        };
        // From here the watchdog owns the directory: any failure below still removes it.
        server.start_watchdog()?;
        std::fs::create_dir_all(server.dir.join("socket"))?;
        if let Some((uid, gid)) = user {
            for path in [server.dir.clone(), server.dir.join("socket")] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .with_context(|| format!("giving {} to postgres", path.display()))?;
            }
        }
        server.initdb()?;
        // A port that was free a moment ago may be taken by the time the server binds it;
        // try a few.
        let mut last_error = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.start_server() {
                Ok(()) => return Ok(server),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("the server did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub fn create_database(&self) -> anyhow::Result<String> {
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            self.next_database.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// Runs SQL with `psql` in `database` and returns what it printed, unaligned and
    /// without headers: one row a line, columns separated by `|`.
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let mut psql = Command::new(self.bin.join("psql"));
        psql.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, "-d", database, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10");
        Ok(output_of(&mut psql, &format!("psql {sql:?}"))?
            .trim()
            .to_owned())
    }

    /// Immediate shutdown (`pg_ctl stop -m immediate`): every backend dies at once without
    /// a checkpoint, as in a crash; the next start recovers from the WAL.
    pub fn kill(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop("immediate")
    }

    /// A clean shutdown (`-m fast`): open transactions are rolled back.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// Starts the server again, on the same port, and waits until it takes connections.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.start_server()
    }

    /// Whether the server is running (its postmaster answers `pg_ctl status`).
    pub fn is_running(&self) -> bool {
        self.pg_ctl()
            .args(["status", "-D"])
            .arg(self.data_dir())
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The server's log so far (for a failing test's message).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A command for a server program, run as the server's user.
    fn as_server_user(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        // The server's own process group: a Ctrl-C meant for the test run does not reach
        // it half-way; the watchdog ends it.
        command
            .process_group(0)
            .env("LC_ALL", "C")
            .current_dir(&self.dir);
        command
    }

    fn pg_ctl(&self) -> Command {
        self.as_server_user("pg_ctl")
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let mut initdb = self.as_server_user("initdb");
        initdb
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .arg("--no-sync");
        output_of(&mut initdb, "initdb").map(drop)
    }

    fn start_server(&self) -> anyhow::Result<()> {
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c max_connections=300",
            self.port,
            self.dir.join("socket").display()
        );
        for (name, value) in &self.settings {
            options.push_str(&format!(" -c {name}='{value}'"));
        }
        let mut pg_ctl = self.pg_ctl();
        pg_ctl
            .arg("start")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-o", &options])
            // pg_ctl leaves the server running with its standard streams: do not let it
            // hold the test's pipes open.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        output_of(&mut pg_ctl, "pg_ctl start")
            .map(drop)
            .with_context(|| format!("the server's log:\n{}", self.log_tail(20)))
    }

    fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        let mut pg_ctl = self.pg_ctl();
        pg_ctl.arg("stop").arg("-D").arg(self.data_dir()).args([
            "-m",
            mode,
            "-w",
            "-t",
            PG_CTL_TIMEOUT_SECS,
        ]);
        output_of(&mut pg_ctl, "pg_ctl stop").map(drop)
    }

    /// Starts the process that stops the server and removes its directory once the test
    /// process closes the pipe: on drop, on exit, or when it is killed.
    fn start_watchdog(&mut self) -> anyhow::Result<()> {
        let owner = format!(
            "{} {}\n",
            std::process::id(),
            start_time(std::process::id())?
        );
        std::fs::write(self.dir.join(OWNER_FILE), owner)?;
        let script = r#"
            cat >/dev/null
            pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null)
            if [ -n "$pid" ] && [ "$(cat /proc/$pid/comm 2>/dev/null)" = postgres ]; then
                kill -QUIT "$pid" 2>/dev/null
                for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -KILL "$pid" 2>/dev/null
            fi
            rm -rf "$1"
        "#;
        let mut child = Command::new("sh")
            .args(["-c", script, "pg-test-watchdog"])
            .arg(&self.dir)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the server's watchdog")?;
        let stdin = child.stdin.take().context("the watchdog has no stdin")?;
        *self.watchdog.get_mut().unwrap_or_else(|e| e.into_inner()) = Some((stdin, child));
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let watchdog = self
            .watchdog
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((stdin, mut child)) = watchdog {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// The server shared by every test of this test binary, started on first use and removed
/// when the binary exits.
pub fn shared() -> anyhow::Result<&'static PgServer> {
    static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| PgServer::start().map_err(|err| format!("{err:#}")))
        .as_ref()
        .map_err(|err| anyhow::anyhow!("the shared test PostgreSQL server: {err}"))
}

/// A fresh database on the shared server, as a `postgres://` URL.
pub fn fresh_database() -> anyhow::Result<String> {
    shared()?.create_database()
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    let bin = std::env::var_os(BIN_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN_DIR));
    for program in ["initdb", "pg_ctl", "psql", "postgres"] {
        if !bin.join(program).exists() {
            bail!(
                "PostgreSQL's server programs are missing ({} not found): run the tests with \
                 scripts/test.sh, which installs Debian's `postgresql`, or `apt-get install \
                 postgresql` (or set {BIN_DIR_ENV} to another PostgreSQL's bin directory)",
                bin.join(program).display()
            );
        }
    }
    Ok(bin)
}

/// `postgres`'s uid and gid when the tests run as root, `None` otherwise.
fn server_user() -> anyhow::Result<Option<(u32, u32)>> {
    let me = std::fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid();
    if me != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 3 && fields[0] == "postgres")
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .map(Some)
        .context(
            "the tests run as root but there is no `postgres` user to run the server as: \
             run scripts/test.sh, which installs Debian's `postgresql` (it creates the user)",
        )
}

fn unique_dir(parent: &Path) -> anyhow::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let dir = parent.join(format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err).with_context(|| format!("creating {}", dir.display())),
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`): with
/// the pid, it names one process even after the pid is reused.
fn start_time(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The name (field 2) may hold spaces: count from the parenthesis that closes it.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    after_name
        .split_whitespace()
        .nth(19)
        .and_then(|t| t.parse().ok())
        .context("reading a process's start time")
}

/// Removes the servers of test processes that are gone (killed along with their
/// watchdogs): stops their postmaster and deletes their directory.
fn remove_stale_servers(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).unwrap_or_default();
        let mut fields = owner.split_whitespace().map(|f| f.parse::<u64>().ok());
        let alive = match (fields.next().flatten(), fields.next().flatten()) {
            (Some(pid), Some(started)) => start_time(pid as u32).is_ok_and(|now| now == started),
            // A directory being set up this very moment has no owner file yet: leave
            // young ones alone.
            _ => entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(60)),
        };
        if alive {
            continue;
        }
        let postmaster = std::fs::read_to_string(dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        if let Some(pid) = postmaster {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "postgres" {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(5);
                while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_starts_hands_out_fresh_databases_and_comes_back_after_a_crash() {
        let server = PgServer::start().expect("server starts");
        let first = server.create_database().expect("database");
        let second = server.create_database().expect("database");
        assert_ne!(first, second);
        assert!(first.starts_with(&format!("postgres://postgres@127.0.0.1:{}/", server.port())));
        let db = first.rsplit('/').next().expect("name");
        server
            .psql(db, "CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2)")
            .expect("write");

        server.kill().expect("immediate shutdown");
        assert!(!server.is_running());
        assert!(server.psql(db, "SELECT 1").is_err(), "answers while down");
        server.restart().expect("restart");
        assert_eq!(server.psql(db, "SELECT sum(n) FROM t").expect("read"), "3");
    }

    #[test]
    fn a_dropped_server_is_stopped_and_its_directory_removed() {
        let server = PgServer::start().expect("server starts");
        let dir = server.dir.clone();
        let port = server.port();
        assert!(dir.join("data/PG_VERSION").exists());
        drop(server);
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the server still listens"
        );
    }

    #[test]
    fn the_shared_server_is_one_server_for_the_whole_test_binary() {
        let a = shared().expect("shared server");
        let b = shared().expect("shared server");
        assert_eq!(a.port(), b.port());
        let url = fresh_database().expect("database");
        let db = url.rsplit('/').next().expect("name");
        assert_eq!(a.psql(db, "SELECT current_database()").expect("read"), db);
    }

    #[test]
    fn the_leftovers_of_a_killed_run_are_removed() {
        let parent = std::env::temp_dir().join(CLUSTERS_DIR);
        std::fs::create_dir_all(&parent).expect("parent");
        let stale = unique_dir(&parent).expect("dir");
        // A pid that does not exist with this start time: a test process long gone.
        std::fs::write(stale.join(OWNER_FILE), "999999999 1\n").expect("owner");
        remove_stale_servers(&parent);
        assert!(!stale.exists());
    }
}
