//! A program of the cluster started as a real child process on a free port, found through
//! the `listening on ADDR` line it prints first, and killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

/// Runs `command` to its end and returns its standard output; fails, with its standard
/// error, when it exits non-zero. `what` names it in the error.
pub fn output_of(command: &mut Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        bail!("{what} failed ({}): {}", output.status, text.trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// How long a program may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The path of a workspace binary (`node`, `balancer`, `generator`) in the same target
/// directory as the running executable; `cargo test --workspace` and `cargo build` put
/// them there.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    // Test executables live in target/<profile>/deps; binaries one level up.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it first (`cargo build --workspace --bins`, or run the tests \
             with `cargo test --workspace`)",
            path.display()
        );
    }
    Ok(path)
}

/// Sends SIGTERM to `pid`, as `docker stop` does: the one way the tests stop a program
/// gracefully.
pub fn sigterm(pid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -TERM {pid} failed");
    }
    Ok(())
}

/// A running program. Dropping it kills the process.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
}

impl Process {
    /// Starts `program` with `args` and waits for its `listening on ADDR` line.
    pub fn start(name: &str, program: &str, args: &[String]) -> anyhow::Result<Self> {
        Self::start_with_env(name, program, args, &[])
    }

    /// As `start`, with extra environment variables (settings such as
    /// `TICKETS_NODE__LOCK_TIMEOUT`).
    pub fn start_with_env(
        name: &str,
        program: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let path = binary(program)?;
        let mut child = Command::new(&path)
            .args(args)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        let stdout = child.stdout.take().context("child has no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let status = child.wait().ok();
                bail!("{name} did not print its address: {other:?} (exit: {status:?})");
            }
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .with_context(|| format!("{name} printed {line:?}, not `listening on ADDR`"))?;
        Ok(Self {
            name: name.to_owned(),
            addr,
            child,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process dies at once, wherever it is.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit and returns its exit code.
    pub fn terminate(&mut self) -> anyhow::Result<Option<i32>> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status.code());
        }
        if let Err(err) = sigterm(self.child.id())
            && self.child.try_wait()?.is_none()
        {
            return Err(err);
        }
        Ok(self.child.wait()?.code())
    }

    /// SIGSTOP: the process hangs where it is, its sockets left open.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// SIGCONT: a stopped process carries on.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill {signal} {} failed", self.child.id());
        }
        Ok(())
    }

    /// Whether the process has exited, without waiting.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `node check-store` with `args` (`--data DIR` or `--database URL`): whether it found
/// the store sound, and all it printed.
pub fn node_check_store(args: &[&str]) -> (bool, String) {
    let output = Command::new(binary("node").expect("node built"))
        .arg("check-store")
        .args(args)
        .output()
        .expect("node check-store runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
