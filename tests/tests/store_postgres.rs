//! What only the PostgreSQL store has, on a real throwaway server: a gap or a bad row in
//! the log is reported rather than skipped, the advisory lock's wait is bounded while
//! reads go on, and a killed server gives prompt errors and service again after its
//! restart, with nothing acknowledged lost.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cluster::postgres::{PgServer, SUPERUSER};
use shared::PurchaseOutcome;
use store::medium::{Medium, ReadSession, Since};
use store::pg::sql::LOCK_KEY;
use store::testing::{inventory, request};
use store::{PgMedium, PgOptions, StoreError, TicketStore};

fn handle(url: &str, lock_timeout: Duration) -> TicketStore {
    TicketStore::postgres(url, PgOptions::new(lock_timeout)).expect("a valid URL")
}

/// A fresh database on `server` holding a seeded store, its URL and its name.
fn seeded(server: &PgServer, tickets: u64) -> (String, String) {
    let url = server.create_database().expect("a test database");
    handle(&url, Duration::from_secs(5))
        .create(&inventory(tickets), false)
        .expect("a fresh store");
    let name = url.rsplit('/').next().expect("a name").to_owned();
    (url, name)
}

fn buy(store: &TicketStore) -> Result<Result<PurchaseOutcome, shared::PurchaseError>, StoreError> {
    store.purchase(&request(1), None, "test")
}

/// Runs `op` on another thread and waits for it at most `limit`: a hang fails the test
/// instead of stalling it.
fn within<T: Send + 'static>(limit: Duration, op: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(op());
    });
    outcome
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the store call did not return within {limit:?}"))
}

/// A store of 10 tickets after `purchases` purchases and then `sql` on its log, from
/// outside the store: the error a fresh handle's read gives, the URL and the database's name.
fn read_after_tampering(purchases: usize, sql: &str) -> (StoreError, String, String) {
    let server = cluster::postgres::shared().expect("the test server");
    let (url, name) = seeded(server, 10);
    let store = handle(&url, Duration::from_secs(5));
    for _ in 0..purchases {
        buy(&store).expect("store works").expect("available");
    }
    server.psql(&name, sql).expect("psql");
    let err = handle(&url, Duration::from_secs(5))
        .read(|_| ())
        .expect_err("a tampered log");
    (err, url, name)
}

#[test]
fn a_gap_in_the_log_is_reported_not_skipped() {
    let (err, _, _) = read_after_tampering(3, "DELETE FROM tickets_log WHERE seq = 2");
    assert!(matches!(err, StoreError::DatabaseCorrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains("skips from entry 1 to entry 3"),
        "{err}"
    );
}

#[test]
fn a_bad_log_entry_is_reported_with_its_sequence_number() {
    let (err, url, name) = read_after_tampering(
        2,
        r#"UPDATE tickets_log SET entry = '{"garbage": true}' WHERE seq = 2"#,
    );
    assert!(err.to_string().contains("log entry 2"), "{err}");
    // A purchase on the broken store is refused too, and writes nothing.
    assert!(buy(&handle(&url, Duration::from_secs(5))).is_err());
    let server = cluster::postgres::shared().expect("the test server");
    assert_eq!(
        server
            .psql(&name, "SELECT count(*) FROM tickets_log")
            .expect("psql"),
        "2"
    );
}

/// A `psql` session that took the store's advisory lock and sits in its transaction, as
/// a stuck node would.
struct LockHolder(Child);

impl LockHolder {
    fn start(server: &PgServer, database: &str) -> Self {
        let mut child =
            Command::new(std::path::Path::new(cluster::postgres::DEFAULT_BIN_DIR).join("psql"))
                .args([
                    "-X",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &server.port().to_string(),
                ])
                .args(["-U", SUPERUSER, "-d", database])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("psql starts");
        let stdin = child.stdin.as_mut().expect("piped");
        writeln!(stdin, "BEGIN; SELECT pg_advisory_xact_lock({LOCK_KEY});").expect("write");
        stdin.flush().expect("flush");
        let deadline = Instant::now() + Duration::from_secs(20);
        while server
            .psql(
                database,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
            )
            .expect("psql")
            != "1"
        {
            assert!(Instant::now() < deadline, "psql never took the lock");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_stuck_lock_holder_times_writes_out_while_reads_go_on() {
    let server = cluster::postgres::shared().expect("the test server");
    let (url, name) = seeded(server, 10);
    let store = handle(&url, Duration::from_millis(300));
    buy(&store).expect("store works").expect("available");
    let holder = LockHolder::start(server, &name);
    let blocked = {
        let store = store.clone();
        within(Duration::from_secs(30), move || buy(&store))
    };
    assert!(
        matches!(blocked, Err(StoreError::LockTimeout(_))),
        "{blocked:?}"
    );
    // Reads take no lock: a fresh handle still sees the committed purchase.
    let sold = handle(&url, Duration::from_millis(300))
        .read(|inv| inv.tickets().iter().filter(|t| t.sold).count())
        .expect("reads go on");
    assert_eq!(sold, 1);
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match buy(&store) {
            Ok(outcome) => {
                outcome.expect("available");
                break;
            }
            Err(err) => assert!(Instant::now() < deadline, "never recovered: {err}"),
        }
    }
}

/// How many advisory locks are held in `database`, by any session.
fn advisory_locks_held(server: &PgServer, database: &str) -> String {
    server
        .psql(
            database,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .expect("psql")
}

#[test]
fn a_writer_that_must_load_the_snapshot_does_it_without_holding_the_lock() {
    let server = cluster::postgres::shared().expect("the test server");
    let (url, name) = seeded(server, 10);
    let medium = PgMedium::new(&url, PgOptions::new(Duration::from_secs(5))).expect("a URL");
    let mut writer = medium.begin_write().expect("a session");
    let (_, position) = writer.load_snapshot().expect("the snapshot");
    assert_eq!(
        advisory_locks_held(server, &name),
        "0",
        "loading took the lock"
    );
    // The read after it takes the lock, ready to append.
    assert!(matches!(
        writer.read_since(&position).expect("the log"),
        Since::Entries { .. }
    ));
    assert_eq!(advisory_locks_held(server, &name), "1");
    // A reload under the lock (the log was pruned past this session) gives it up again
    // while the snapshot is parsed.
    writer.load_snapshot().expect("the snapshot again");
    assert_eq!(
        advisory_locks_held(server, &name),
        "0",
        "reloading kept the lock"
    );
}

#[test]
fn a_killed_server_gives_prompt_errors_and_service_returns_after_its_restart() {
    let server = PgServer::start().expect("a server of its own");
    let (url, _) = seeded(&server, 100);
    let store = handle(&url, Duration::from_secs(2));
    // Warm the pool: several connections, so the restart leaves several dead ones behind.
    std::thread::scope(|s| {
        for _ in 0..4 {
            let store = store.clone();
            s.spawn(move || buy(&store).expect("store works").expect("available"));
        }
    });
    server.kill().expect("immediate shutdown");
    for _ in 0..3 {
        let writer = store.clone();
        let write = within(Duration::from_secs(30), move || buy(&writer));
        assert!(write.is_err(), "a write with the server down: {write:?}");
        let reader = store.clone();
        let read = within(Duration::from_secs(30), move || reader.read(|_| ()));
        assert!(read.is_err(), "a read with the server down");
    }
    server.restart().expect("restart");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let store = store.clone();
        match within(Duration::from_secs(30), move || buy(&store)) {
            Ok(outcome) => {
                outcome.expect("available");
                break;
            }
            Err(err) => assert!(Instant::now() < deadline, "never recovered: {err}"),
        }
    }
    let summary = handle(&url, Duration::from_secs(2))
        .check()
        .expect("consistent");
    assert_eq!((summary.sold, summary.purchases), (5, 5), "{summary:?}");
}

#[test]
fn generator_seed_and_node_check_store_work_on_a_database() {
    let url = cluster::postgres::fresh_database().expect("a test database");
    let seed = |extra: &[&str]| {
        let mut args = vec!["seed", "--database", &url, "--tickets", "40", "--seed", "3"];
        args.extend_from_slice(extra);
        cluster::run_generator(&args).expect("generator runs")
    };
    let (code, stdout, stderr) = seed(&[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("wrote 40 tickets"), "{stdout}");

    let (code, _, stderr) = seed(&[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("pass --force"), "{stderr}");
    let (code, stdout, _) = seed(&["--keep-existing"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("left as it is"), "{stdout}");

    let store = handle(&url, Duration::from_secs(5));
    buy(&store).expect("store works").expect("available");
    let check = || {
        let output = Command::new(cluster::binary("node").expect("node built"))
            .args(["check-store", "--database", &url])
            .output()
            .expect("node check-store runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    };
    let (sound, report) = check();
    assert!(sound, "{report}");
    assert!(
        report.contains("40 tickets, 1 sold, 1 purchases"),
        "{report}"
    );

    let (code, stdout, stderr) = seed(&["--force"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (sound, report) = check();
    assert!(sound, "{report}");
    assert!(
        report.contains("40 tickets, 0 sold, 0 purchases"),
        "{report}"
    );

    let both = Command::new(cluster::binary("node").expect("node built"))
        .args(["--data", "/tmp/unused", "--database", &url])
        .output()
        .expect("node runs");
    assert!(!both.status.success());
    assert!(
        String::from_utf8_lossy(&both.stderr).contains("cannot be used with"),
        "{both:?}"
    );
}
