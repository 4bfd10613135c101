//! Store integrity against the real binaries: a store the node cannot prove whole is
//! refused with the reason and left untouched, and stores written by earlier versions
//! open and sell on. Each test prints one `store integrity:` summary line.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cluster::{HttpClient, binary, report_summary, seed_store, start_node};
use hyper::StatusCode;
use store::{DATA_FILE, JOURNAL_FILE};

/// Runs `node check-store` on `data`: whether it called the store sound, and what it said.
fn check_store(data: &Path) -> (bool, String) {
    let output = Command::new(binary("node").expect("node built"))
        .args(["check-store", "--data", &data.to_string_lossy()])
        .output()
        .expect("node check-store runs");
    (output.status.success(), output_text(&output))
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Sells `purchases` purchases of two concert tickets straight through the store, folding
/// the journal into the snapshot after every sale when `compact`; the store's files after.
fn store_writer(data: &Path, purchases: usize, compact: bool) -> StoreFiles {
    let mut command = Command::new(env!("CARGO_BIN_EXE_store-writer"));
    command.args([
        "--data",
        &data.to_string_lossy(),
        "--quantity",
        "2",
        "--purchases",
        &purchases.to_string(),
    ]);
    if compact {
        command.args(["--compact-bytes", "1"]);
    }
    let output = command.output().expect("store-writer runs");
    assert!(output.status.success(), "{}", output_text(&output));
    store_files(data)
}

/// The bytes of the snapshot and the journal (`None` for a missing file).
type StoreFiles = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The store's files as they are now.
fn store_files(data: &Path) -> StoreFiles {
    (
        fs::read(data.join(DATA_FILE)).ok(),
        fs::read(data.join(JOURNAL_FILE)).ok(),
    )
}

fn first_line(file: &Option<Vec<u8>>) -> String {
    let text = String::from_utf8_lossy(file.as_deref().unwrap_or_default()).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

fn put(data: &Path, name: &str, contents: &Option<Vec<u8>>) {
    let path = data.join(name);
    match contents {
        Some(bytes) => fs::write(&path, bytes).expect("write"),
        None => {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Asks a node for the events, its health and a purchase, and checks each is refused 503
/// `store_unavailable` with a message that contains `says`. Returns how many were asked.
async fn assert_refused(http: &HttpClient, base: &str, case: &str, says: &str) -> usize {
    let answers = [
        http.get(&format!("{base}/events")).await,
        http.get(&format!("{base}/health")).await,
        http.buy(
            base,
            "concert",
            1,
            Some(&format!("during-{}", case.replace(' ', "-"))),
        )
        .await,
    ];
    for answer in &answers {
        let answer = answer.as_ref().expect("an answer");
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{case}: {:?}",
            answer.json()
        );
        assert_eq!(answer.error_code().as_deref(), Some("store_unavailable"));
        let message = answer.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains(says), "{case}: {message:?} lacks {says:?}");
    }
    answers.len()
}

async fn sold(http: &HttpClient, base: &str) -> serde_json::Value {
    let answer = http
        .get(&format!("{base}/events/concert"))
        .await
        .expect("answer");
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.json());
    answer.json()["sold"].clone()
}

/// A new directory holding a fresh store of `tickets` concert tickets.
fn concert_store(tickets: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    seed_store(dir.path(), &[("concert", tickets, 1000)]).expect("seed");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_missing_or_not_the_one_following_the_snapshot_is_refused_and_left_untouched() {
    let dir = concert_store(20);
    let data = dir.path();
    let before_compaction = store_writer(data, 2, false);
    let good = store_writer(data, 3, true);
    assert_ne!(
        first_line(&good.0),
        first_line(&before_compaction.0),
        "no compaction happened"
    );
    let warm = start_node("warm", data).expect("node starts");
    let http = HttpClient::new();
    assert_eq!(sold(&http, &warm.url()).await, 10);

    // (what, snapshot, journal, what the refusal says)
    let cases = [
        ("journal deleted", good.0.clone(), None, "journal"),
        (
            "older snapshot restored after a compaction",
            before_compaction.0.clone(),
            good.1.clone(),
            "generation",
        ),
        (
            "older journal restored beside a newer snapshot",
            good.0.clone(),
            before_compaction.1.clone(),
            "generation",
        ),
    ];
    let mut asked = 0;
    for (case, snapshot, journal, says) in &cases {
        put(data, DATA_FILE, snapshot);
        put(data, JOURNAL_FILE, journal);
        let fresh = start_node("fresh", data).expect("node starts");
        asked += assert_refused(&http, &fresh.url(), case, says).await;
        asked += assert_refused(&http, &warm.url(), case, says).await;
        assert!(
            store_files(data) == (snapshot.clone(), journal.clone()),
            "{case}: a node changed the store's files"
        );
        let (sound, report) = check_store(data);
        assert!(
            !sound && report.contains(says),
            "{case}: check-store said {report:?}"
        );

        // The operator restores both files: service resumes with everything sold.
        put(data, DATA_FILE, &good.0);
        put(data, JOURNAL_FILE, &good.1);
        assert_eq!(sold(&http, &fresh.url()).await, 10, "{case}");
        assert_eq!(sold(&http, &warm.url()).await, 10, "{case}");
    }
    assert!(check_store(data).0);
    report_summary(&format!(
        "store integrity: journal missing or not following the snapshot ({} kinds): asked {asked}, 503 store_unavailable {asked}, files changed 0, check-store refused {}",
        cases.len(),
        cases.len()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_purchase_seq_edited_downward_is_refused_and_left_untouched() {
    let dir = concert_store(16);
    let data = dir.path();
    // Sales folded into the snapshot as they happen, so it holds purchases below its
    // next_purchase_seq.
    let good = store_writer(data, 6, true);
    let text = String::from_utf8(good.0.clone().expect("snapshot")).expect("utf-8");
    let header = text.lines().next().unwrap_or_default();
    let next: u64 = header
        .split("\"next_purchase_seq\":")
        .nth(1)
        .and_then(|rest| rest.trim_end_matches(',').parse().ok())
        .expect("a snapshot header with next_purchase_seq");
    assert!(next >= 3, "too few purchases in the snapshot: {header}");
    let edited = Some(
        text.replacen(
            &format!("\"next_purchase_seq\":{next},"),
            &format!("\"next_purchase_seq\":{},", next - 2),
            1,
        )
        .into_bytes(),
    );
    put(data, DATA_FILE, &edited);

    let node = start_node("n1", data).expect("node starts");
    let http = HttpClient::new();
    let asked = assert_refused(&http, &node.url(), "next_purchase_seq", "next_purchase_seq").await;
    assert!(
        store_files(data) == (edited, good.1.clone()),
        "the node changed the store"
    );
    let (sound, report) = check_store(data);
    assert!(
        !sound && report.contains("reuse an id"),
        "check-store said {report:?}"
    );
    put(data, DATA_FILE, &good.0);
    assert_eq!(sold(&http, &node.url()).await, 12);
    report_summary(&format!(
        "store integrity: next_purchase_seq edited downward: asked {asked}, 503 store_unavailable {asked}, files changed 0, check-store refused 1"
    ));
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/store")
        .join(name)
}

fn copy_store(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("fixture") {
        let entry = entry.expect("entry");
        if entry.file_name().to_string_lossy().starts_with("tickets.") {
            fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

async fn purchase_ids(http: &HttpClient, base: &str) -> Vec<String> {
    let answer = http
        .get(&format!("{base}/purchases"))
        .await
        .expect("answer");
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.json());
    answer
        .json()
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| p["purchase_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_written_by_earlier_versions_open_and_sell_on() {
    let http = HttpClient::new();
    // (fixture, purchases it holds)
    let fixtures = [
        ("v1-before-journal", 2),
        ("v1-journal", 2),
        ("v1-compaction-interrupted", 3),
    ];
    for (name, held) in fixtures {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        copy_store(&fixture(name), &data);
        let (sound, report) = check_store(&data);
        assert!(sound, "{name}: {report}");

        let node = start_node("n1", &data).expect("node starts");
        let base = node.url();
        let ids: Vec<String> = (1..=held).map(|i| format!("p-{i:08}")).collect();
        assert_eq!(purchase_ids(&http, &base).await, ids, "{name}");
        let answer = http
            .buy(&base, "concert", 1, Some("after-upgrade"))
            .await
            .expect("answer");
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{name}: {:?}",
            answer.json()
        );
        assert_eq!(
            answer.json()["purchase_id"],
            format!("p-{:08}", held + 1),
            "{name}"
        );
        if name == "v1-before-journal" {
            // A retry of a purchase the old version acknowledged is still recognised.
            let retry = http
                .buy(&base, "concert", 2, Some("fixture-key-1"))
                .await
                .expect("answer");
            assert_eq!(retry.status, StatusCode::CREATED);
            assert_eq!(retry.json()["purchase_id"], "p-00000001");
        }
        drop(node);

        let (sound, report) = check_store(&data);
        assert!(sound, "{name} after a sale: {report}");
        let again = start_node("n2", &data).expect("node starts");
        assert_eq!(
            purchase_ids(&http, &again.url()).await.len(),
            held + 1,
            "{name}"
        );
    }
    report_summary(&format!(
        "store integrity: stores of earlier versions ({} fixtures): opened {}, sold on {}, refused 0",
        fixtures.len(),
        fixtures.len(),
        fixtures.len()
    ));
}

/// Runs store-writer with keys on `data`, failing the I/O steps `fail` names, and returns
/// its output lines.
fn store_writer_failing(data: &Path, purchases: usize, fail: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_store-writer"))
        .args([
            "--data",
            &data.to_string_lossy(),
            "--keys",
            "w-",
            "--purchases",
        ])
        .arg(purchases.to_string())
        .env(store::fault::FAIL_ENV, fail)
        .output()
        .expect("store-writer runs");
    assert!(output.status.success(), "{}", output_text(&output));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The ids of the purchases in the store, after a full check.
fn stored_ids(data: &Path) -> Vec<String> {
    let store = store::TicketStore::new(data, std::time::Duration::from_secs(5));
    store.check().expect("the store is consistent");
    store
        .read(|inv| {
            inv.purchases()
                .iter()
                .map(|p| p.purchase_id.clone())
                .collect()
        })
        .expect("readable")
}

#[test]
fn a_failed_sync_is_answered_failed_only_when_the_batch_is_provably_not_in_the_journal() {
    // (what fails, what the writer must be told about purchase w-3)
    let cases = [
        ("journal-sync@3", "failed"),
        ("journal-sync@3,journal-rollback@0", "unknown"),
    ];
    for (fail, told) in cases {
        let dir = concert_store(40);
        let data = dir.path();
        let lines = store_writer_failing(data, 6, fail);
        let errors: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("failed") || l.starts_with("unknown"))
            .collect();
        assert_eq!(errors.len(), 1, "{fail}: {lines:?}");
        assert!(
            errors[0].starts_with(&format!("{told} w-3")),
            "{fail}: {lines:?}"
        );
        // The retry with the same key finds the first outcome, or sells anew: either way
        // one purchase per key, numbered without a gap, and every answer true.
        let committed: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("committed ")?.split(' ').next())
            .collect();
        let ids: Vec<String> = (1..=6).map(|i| format!("p-{i:08}")).collect();
        assert_eq!(committed, ids, "{fail}: {lines:?}");
        assert_eq!(stored_ids(data), ids, "{fail}");
        report_summary(&format!(
            "store integrity: sync failure ({fail}): told {told} 1, committed 6 of 6 keys, lost 0, sold twice 0"
        ));
    }
}

#[test]
fn a_compaction_that_keeps_failing_backs_off_and_never_reloads_the_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = cluster::tmpfs::Tmpfs::mount(dir.path().join("disk"), "1m");
    let data = disk.path.join("data");
    // A long event name makes tickets and purchases large, so the journal outgrows half
    // the snapshot within a few hundred sales.
    let event = "a-very-long-event-name-for-large-lines-in-the-snapshot-and-journ";
    seed_store(&data, &[(event, 1000, 1000)]).expect("seed");
    // Leave room for 150 KB of journal but for no new snapshot (over 180 KB by then).
    let filler = disk.path.join("filler");
    {
        use std::io::Write;
        let mut file = fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
    }
    let full = fs::metadata(&filler).expect("filler").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .and_then(|f| f.set_len(full.saturating_sub(150 * 1024)))
        .expect("make room");

    let purchases = 400;
    let output = Command::new(env!("CARGO_BIN_EXE_store-writer"))
        .args([
            "--data",
            &data.to_string_lossy(),
            "--event",
            event,
            "--stats",
        ])
        .args([
            "--compact-bytes",
            "1",
            "--purchases",
            &purchases.to_string(),
        ])
        .output()
        .expect("store-writer runs");
    let text = output_text(&output);
    assert!(output.status.success(), "{text}");
    assert_eq!(text.matches("committed ").count(), purchases, "{text}");
    let stats = text
        .lines()
        .find_map(|l| l.strip_prefix("stats "))
        .expect("a stats line");
    let count = |name: &str| -> u64 {
        stats
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    let (loads, failed) = (count("loads"), count("failed"));
    assert_eq!(
        count("compactions"),
        0,
        "the disk had room for a snapshot: {stats}"
    );
    assert!(failed >= 1, "compaction was never tried: {stats}");
    assert!(
        failed <= 2,
        "compaction retried without backing off: {stats}"
    );
    assert_eq!(
        loads, 1,
        "a failed compaction made the writer reload the snapshot: {stats}"
    );
    assert_eq!(stored_ids(&data).len(), purchases);
    report_summary(&format!(
        "store integrity: compaction failing on a full disk: {purchases} sales committed, compaction tried {failed} times, snapshot loaded {loads} time(s)"
    ));
}

#[test]
fn seeding_beside_a_journal_without_its_snapshot_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    seed_store(&data, &[("concert", 20, 1000)]).expect("seed");
    store_writer(&data, 2, false);
    fs::remove_file(data.join(DATA_FILE)).expect("lose the snapshot");
    let journal = fs::read(data.join(JOURNAL_FILE)).expect("journal");
    let data_arg = data.to_string_lossy().into_owned();
    let seed = |extra: &str| {
        cluster::run_generator(&[
            "seed",
            "--data",
            &data_arg,
            "--events",
            "4",
            "--tickets",
            "40",
            extra,
        ])
        .expect("generator runs")
    };
    let (kept, out, _) = seed("--keep-existing");
    assert_eq!(kept, 0, "{out}");
    assert!(out.contains("left as it is"), "{out}");
    let (refused, _, err) = seed("--seed=1");
    assert_eq!(refused, 2, "{err}");
    assert_eq!(fs::read(data.join(JOURNAL_FILE)).expect("journal"), journal);
    assert!(!data.join(DATA_FILE).exists());
    let (sound, report) = check_store(&data);
    assert!(!sound && report.contains("snapshot is missing"), "{report}");
    report_summary(
        "store integrity: seeding beside a journal without its snapshot: --keep-existing left it, plain seed refused, files changed 0",
    );
}
