//! A writer killed at every step of a write (torn append, appended but not synced, synced
//! but not answered, and each step of compaction) leaves a store that opens, holds every
//! purchase it acknowledged, and sells on from there; likewise for every other kind of log
//! entry (holds, confirms, releases, expiries, cancellations).

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cluster::{report_summary, seed_store};
use store::TicketStore;
use store::fault::{ABORT_AT_ENV, ABORT_SKIP_ENV, FINISH_SWITCH_POINT, POINTS, UPGRADE_POINTS};

/// Runs `command` (a store-writer), set to abort at `abort_at` when given: at a journal
/// point other than `first_journal_point` after skipping `journal_skip` passes, elsewhere
/// at the first pass. Returns whether it aborted, and its output; any other failure fails
/// the test.
fn run_writer(
    mut command: Command,
    abort_at: Option<&str>,
    first_journal_point: &str,
    journal_skip: usize,
) -> (bool, String) {
    if let Some(point) = abort_at {
        let skip = if point.starts_with("journal-") && point != first_journal_point {
            journal_skip
        } else {
            0
        };
        command
            .env(ABORT_AT_ENV, point)
            .env(ABORT_SKIP_ENV, skip.to_string());
    }
    let output = command.output().expect("store-writer runs");
    let aborted = output.status.signal() == Some(6);
    assert!(
        aborted || output.status.success(),
        "store-writer failed: {:?}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    (
        aborted,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// A store-writer command for the store in `dir`: `count` purchases (or orders, with
/// `--box-office` among `mode`) of two tickets, compacting as often as it can.
fn writer(dir: &Path, mode: &[&str], count: usize) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_store-writer"));
    command
        .args(["--data", &dir.to_string_lossy(), "--quantity", "2"])
        .args(mode)
        .args(["--purchases", &count.to_string(), "--compact-bytes", "1"]);
    command
}

/// Runs store-writer and returns whether it aborted, and the purchases it acknowledged.
fn write(dir: &Path, purchases: usize, abort_at: Option<&str>) -> (bool, HashMap<String, String>) {
    let command = writer(dir, &[], purchases);
    // Journal points die a few sales in; compaction points at the first compaction.
    let (aborted, stdout) = run_writer(command, abort_at, FINISH_SWITCH_POINT, 7);
    let acked = stdout
        .lines()
        .filter_map(|line| {
            let mut parts = line.strip_prefix("committed ")?.split(' ');
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect();
    (aborted, acked)
}

/// The store's purchases as id -> comma-separated ticket ids, after a full check.
fn stored(dir: &Path) -> HashMap<String, String> {
    read_checked(dir, |inv| {
        inv.purchases()
            .iter()
            .map(|p| (p.purchase_id.clone(), id_list(&p.tickets)))
            .collect()
    })
}

/// Checks the store in `dir` in full, then reads it with `f`.
fn read_checked<T>(dir: &Path, f: impl FnOnce(&shared::Inventory) -> T) -> T {
    let store = TicketStore::new(dir, Duration::from_secs(5));
    store.check().expect("the store opens and is consistent");
    store.read(f).expect("readable")
}

/// Ticket ids, comma-separated, as store-writer prints them.
fn id_list(tickets: &[shared::SoldTicket]) -> String {
    let ids: Vec<String> = tickets.iter().map(|t| t.id.to_string()).collect();
    ids.join(",")
}

/// A new directory holding a fresh store of 400 concert tickets.
fn seeded_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    seed_store(dir.path(), &[("concert", 400, 1000)]).expect("seed");
    dir
}

/// A fresh store whose writer, run by `write` on it, was killed at `point`; what the
/// writer acknowledged before.
fn killed_at<A>(point: &str, write: impl FnOnce(&Path) -> (bool, A)) -> (tempfile::TempDir, A) {
    let dir = seeded_dir();
    let (aborted, acked) = write(dir.path());
    assert!(aborted, "the writer never reached {point}");
    (dir, acked)
}

/// What a writer that was not killed acknowledged (counted by `len`): all it was `asked`
/// for, the store going on after the crash `context` names.
fn went_on<A>((aborted, acked): (bool, A), len: fn(&A) -> usize, asked: usize, context: &str) -> A {
    assert!(!aborted);
    assert_eq!(
        len(&acked),
        asked,
        "{context}: the store goes on after the crash"
    );
    acked
}

#[test]
fn a_writer_killed_at_any_step_of_a_write_loses_no_acknowledged_purchase() {
    for point in POINTS {
        let (dir, acked) = killed_at(point, |dir| write(dir, 120, Some(point)));

        let after_crash = stored(dir.path());
        for (id, tickets) in &acked {
            assert_eq!(
                after_crash.get(id),
                Some(tickets),
                "{point}: acknowledged {id} lost"
            );
        }
        // At most the one purchase in flight when the writer died is in the store unacknowledged.
        let unacknowledged = after_crash.len() - acked.len();
        assert!(
            unacknowledged <= 1,
            "{point}: {unacknowledged} purchases nobody was told of"
        );

        let more = went_on(write(dir.path(), 10, None), HashMap::len, 10, point);
        let finally = stored(dir.path());
        assert_eq!(finally.len(), after_crash.len() + 10);
        report_summary(&format!(
            "fault-summary: crash at {point}: tried {}, acknowledged {}, lost 0, sold twice 0, 5xx to client mistakes 0",
            acked.len() + 1 + 10,
            acked.len() + more.len()
        ));
    }
}

/// The snapshot's header line.
fn snapshot_header(dir: &Path) -> String {
    let bytes = std::fs::read(dir.join(store::DATA_FILE)).expect("snapshot");
    String::from_utf8_lossy(bytes.split(|&b| b == b'\n').next().unwrap_or_default()).into_owned()
}

/// The generation the journal's header names.
fn journal_generation(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join(store::JOURNAL_FILE)).expect("journal");
    let header: serde_json::Value =
        serde_json::from_str(text.lines().next().unwrap_or_default()).expect("a header");
    header["generation"].to_string()
}

#[test]
fn a_writer_killed_between_a_compactions_renames_and_then_while_finishing_it_loses_nothing() {
    let dir = seeded_dir();
    // The compaction stops between the snapshot's rename and the journal's, while the
    // writer's sales go on into the old journal.
    let (aborted, acked) = write(dir.path(), 120, Some("compaction-after-snapshot-rename"));
    assert!(aborted, "the writer never reached the snapshot's rename");
    let header = snapshot_header(dir.path());
    assert!(header.contains("\"follows\":{"), "{header}");
    let folded = journal_generation(dir.path());
    assert!(
        header.contains(&format!("\"follows\":{{\"generation\":{folded},")),
        "the old journal is still in place: {header}"
    );
    let after_crash = stored(dir.path());
    for (id, tickets) in &acked {
        assert_eq!(after_crash.get(id), Some(tickets), "acknowledged {id} lost");
    }
    assert!(after_crash.len() - acked.len() <= 1);

    // The next writer starts the new snapshot's journal first, and dies doing it.
    let (aborted, none) = write(dir.path(), 5, Some(FINISH_SWITCH_POINT));
    assert!(
        aborted && none.is_empty(),
        "the writer sold before finishing the switch"
    );
    assert_eq!(
        stored(dir.path()),
        after_crash,
        "the crash changed the purchases"
    );
    assert_eq!(
        journal_generation(dir.path()),
        folded,
        "the switch was not finished"
    );

    // And the one after that finishes it and sells on.
    let (aborted, more) = write(dir.path(), 10, None);
    assert!(!aborted && more.len() == 10);
    assert_ne!(
        journal_generation(dir.path()),
        folded,
        "the switch was finished"
    );
    let finally = stored(dir.path());
    assert_eq!(finally.len(), after_crash.len() + 10);
    for (id, tickets) in after_crash.iter().chain(&more) {
        assert_eq!(finally.get(id), Some(tickets), "{id} lost");
    }
    report_summary(&format!(
        "fault-summary: crash between a compaction's renames, then while starting its journal: tried {}, acknowledged {}, lost 0, sold twice 0, 5xx to client mistakes 0",
        acked.len() + 1 + 5 + 10,
        acked.len() + more.len()
    ));
}

/// Runs store-writer `--box-office` for `orders` orders and returns whether it aborted and
/// the orders it acknowledged: `[kind, id, ticket ids, hold id]`.
fn write_box_office(dir: &Path, orders: usize, abort_at: Option<&str>) -> (bool, Vec<Vec<String>>) {
    let command = writer(dir, &["--box-office"], orders);
    // Journal points die a few orders in, after an entry of every kind; compaction points
    // at the first compaction, which folds entries of every kind.
    let (aborted, stdout) = run_writer(command, abort_at, "journal-create-after-temp", 9);
    assert!(!stdout.contains("refused"), "every order fits:\n{stdout}");
    let acked = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("box "))
        .map(|line| line.split(' ').map(str::to_owned).collect())
        .collect();
    (aborted, acked)
}

/// Checks that the store holds what each acknowledged order did, and returns how many
/// holds found expired the log records.
fn holds_what_was_acknowledged(dir: &Path, acked: &[Vec<String>], context: &str) -> usize {
    use shared::HoldState;
    read_checked(dir, |inv| {
        let tickets = id_list;
        for order in acked {
            let (kind, id, ids) = (order[0].as_str(), order[1].as_str(), order[2].as_str());
            let hold = inv.holds().iter().find(|h| h.hold_id == id);
            let purchase = inv.purchase(id);
            let held = hold.map(|h| tickets(&h.tickets));
            let bought = purchase.map(|p| tickets(&p.tickets));
            match kind {
                "hold" => assert_eq!(held.as_deref(), Some(ids), "{context}: {order:?}"),
                "release" => assert!(
                    hold.is_some_and(|h| matches!(h.state, HoldState::Released(_))),
                    "{context}: {order:?} is not released"
                ),
                "purchase" => assert_eq!(bought.as_deref(), Some(ids), "{context}: {order:?}"),
                "cancel" => assert!(
                    purchase.is_some_and(|p| !p.is_live()),
                    "{context}: {order:?} is not cancelled"
                ),
                _ => {
                    let confirmed = inv.holds().iter().find(|h| h.hold_id == order[3]);
                    assert_eq!(bought.as_deref(), Some(ids), "{context}: {order:?}");
                    assert!(
                        confirmed.is_some_and(|h| matches!(&h.state,
                                HoldState::Confirmed { purchase_id, .. } if purchase_id == id)),
                        "{context}: {order:?} is not confirmed"
                    );
                }
            }
        }
        inv.holds()
            .iter()
            .filter(|h| matches!(h.state, HoldState::Expired { .. }))
            .count()
    })
}

#[test]
fn a_writer_killed_at_any_step_of_a_box_office_write_loses_no_acknowledged_change() {
    for point in POINTS {
        let (dir, acked) = killed_at(point, |dir| write_box_office(dir, 60, Some(point)));
        let kinds: std::collections::BTreeSet<&str> = acked.iter().map(|o| o[0].as_str()).collect();
        let context = format!("crash at {point}");
        holds_what_was_acknowledged(dir.path(), &acked, &context);

        // A fresh writer goes on from the log's time: its abandoned holds expire too.
        let more = went_on(
            write_box_office(dir.path(), 21, None),
            Vec::len,
            21,
            &context,
        );
        let expired = holds_what_was_acknowledged(dir.path(), &more, &context);
        assert!(expired >= 2, "{context}: {expired} expiries logged");
        report_summary(&format!(
            "fault-summary: crash at {point} among holds, confirms, releases, cancels and expiries ({} kinds acknowledged): acknowledged {}, lost 0",
            kinds.len(),
            acked.len() + more.len()
        ));
    }
}

/// A copy of the store in `tests/fixtures/store/NAME`.
fn fixture_copy(name: &str, dir: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/store")
        .join(name);
    for entry in std::fs::read_dir(from).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn a_writer_killed_while_upgrading_a_store_from_before_the_journal_loses_nothing() {
    for point in UPGRADE_POINTS {
        let dir = tempfile::tempdir().expect("tempdir");
        fixture_copy("v1-before-journal", dir.path());
        let before = stored(dir.path());
        assert_eq!(before.len(), 2);
        let output = Command::new(env!("CARGO_BIN_EXE_store-writer"))
            .args(["--data", &dir.path().to_string_lossy(), "--purchases", "1"])
            .env(ABORT_AT_ENV, point)
            .env(ABORT_SKIP_ENV, "0")
            .output()
            .expect("store-writer runs");
        assert_eq!(output.status.signal(), Some(6), "{point}: never reached");

        let after_crash = stored(dir.path());
        assert_eq!(
            after_crash, before,
            "{point}: the crash changed the purchases"
        );
        // The fixture has 4 concert tickets left: two purchases of two.
        let (aborted, more) = write(dir.path(), 2, None);
        assert!(!aborted && more.len() == 2, "{point}: the store sells on");
        assert_eq!(stored(dir.path()).len(), 4, "{point}");
        report_summary(&format!(
            "fault-summary: crash at {point} while upgrading a store from before the journal: tried 3, acknowledged 2, lost 0, sold twice 0, 5xx to client mistakes 0"
        ));
    }
}
