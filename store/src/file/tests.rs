//! The store on a real directory: visibility across handles, group commit, torn appends,
//! compaction, corruption and contention.

use std::fs;
use std::path::Path;
use std::time::Duration;

use shared::{IdempotencyKey, Inventory, PurchaseError, PurchaseOutcome};

use super::{COMPACTION_LOCK_FILE, DATA_FILE, FileMedium, JOURNAL_FILE, LOCK_FILE};
use crate::medium::{Medium, ReadSession, Since, WriteSession};
use crate::testing::{buy, inventory, racing_buyers, request, sold_count};
use crate::{PurchaseOrder, StoreError, TicketStore, format};

fn handle(dir: &Path) -> TicketStore {
    TicketStore::new(dir, Duration::from_secs(5))
}

fn seeded(dir: &Path, tickets: u64) -> TicketStore {
    let store = handle(dir);
    store
        .create(&inventory(tickets), false)
        .expect("fresh directory");
    store
}

/// Where a compaction starting now folds from: the snapshot's generation and its
/// journal's length.
/// A new directory holding a fresh store of `tickets` tickets, and a handle on it.
fn seeded_store(tickets: u64) -> (tempfile::TempDir, TicketStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded(dir.path(), tickets);
    (dir, store)
}

/// A store of 10 tickets after one purchase of 2, its state then, and the point a
/// compaction folding its journal then records.
fn sold_and_folded() -> (tempfile::TempDir, TicketStore, Inventory, format::Follows) {
    let (dir, store) = seeded_store(10);
    buy(&store, 2).expect("available");
    let state = store.read(Clone::clone).expect("readable");
    let follows = fold_point(dir.path());
    (dir, store, state, follows)
}

/// Appends `tail` to the journal in `dir` behind the store's back; the journal's path and
/// its length before.
fn append_to_journal(dir: &Path, tail: &[u8]) -> (std::path::PathBuf, usize) {
    let journal = dir.join(JOURNAL_FILE);
    let mut bytes = fs::read(&journal).expect("read");
    let whole = bytes.len();
    bytes.extend_from_slice(tail);
    fs::write(&journal, &bytes).expect("write");
    (journal, whole)
}

fn fold_point(dir: &Path) -> format::Follows {
    format::Follows {
        generation: handle(dir).check().expect("consistent").generation,
        journal_len: fs::metadata(dir.join(JOURNAL_FILE)).expect("journal").len(),
    }
}

/// A snapshot of `state` as generation `generation`, saying it was folded from `follows`.
fn folded(state: &Inventory, generation: u64, follows: format::Follows) -> Vec<u8> {
    let mut bytes = Vec::new();
    format::encode_folded(state, generation, follows, &mut bytes).expect("encode");
    bytes
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_write_is_seen_by_another_handle_with_its_own_cache() {
    let (dir, store) = seeded_store(5);
    let other = handle(dir.path());
    assert_eq!(sold_count(&other), 0);
    buy(&store, 2).expect("available");
    assert_eq!(sold_count(&other), 2);
    buy(&other, 1).expect("available");
    assert_eq!(sold_count(&store), 3);
}

#[test]
fn seeding_refuses_to_overwrite_unless_forced_and_a_reseed_is_noticed() {
    let (dir, store) = seeded_store(3);
    let reader = handle(dir.path());
    buy(&store, 1).expect("available");
    assert_eq!(sold_count(&reader), 1);
    let again = store.create(&Inventory::default(), false);
    assert!(matches!(again, Err(StoreError::AlreadyExists(_))));
    store
        .create(&Inventory::default(), true)
        .expect("forced overwrite");
    assert_eq!(reader.read(|inv| inv.tickets().len()).expect("readable"), 0);
}

#[test]
fn a_missing_store_is_reported_as_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = handle(dir.path());
    assert!(matches!(store.read(|_| ()), Err(StoreError::Missing(_))));
    let gone = handle(&dir.path().join("nowhere"));
    assert!(matches!(gone.read(|_| ()), Err(StoreError::Missing(_))));
}

#[test]
fn a_corrupt_snapshot_is_reported_and_left_alone() {
    let (dir, store) = seeded_store(1);
    for garbage in [&b"{not json"[..], b"", b"[]", b"{\"format\":1,"] {
        fs::write(dir.path().join(DATA_FILE), garbage).expect("write");
        let err = store.purchase(&request(1), None, "n").expect_err("corrupt");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert_eq!(fs::read(dir.path().join(DATA_FILE)).expect("read"), garbage);
    }
}

#[test]
fn a_corrupt_journal_line_is_reported_with_its_position() {
    let (dir, store) = seeded_store(3);
    buy(&store, 1).expect("available");
    append_to_journal(dir.path(), b"{\"garbage\":true}\n");
    let err = handle(dir.path()).read(|_| ()).expect_err("corrupt");
    assert!(err.to_string().contains("line at byte"), "{err}");
}

#[test]
fn a_torn_last_line_is_ignored_by_readers_and_cut_off_by_the_next_writer() {
    let (dir, store) = seeded_store(5);
    buy(&store, 1).expect("available");
    let (journal, whole) = append_to_journal(
        dir.path(),
        b"{\"purchase_id\":\"p-0000009\",\"event\":\"conc",
    );

    let reader = handle(dir.path());
    assert_eq!(sold_count(&reader), 1);
    buy(&reader, 2).expect("available");
    assert_eq!(sold_count(&store), 3);
    let after = fs::read(&journal).expect("read");
    assert!(!String::from_utf8_lossy(&after).contains("conc\""));
    assert!(after.len() > whole);
    assert!(after.ends_with(b"\n"));
}

#[test]
fn a_batch_is_decided_in_order_and_committed_with_one_append() {
    let (dir, store) = seeded_store(4);
    let key = IdempotencyKey::parse("same").expect("valid");
    let orders = vec![
        PurchaseOrder {
            request: request(2),
            key: Some(key.clone()),
        },
        PurchaseOrder {
            request: request(2),
            key: Some(key),
        },
        PurchaseOrder {
            request: request(2),
            key: None,
        },
        PurchaseOrder {
            request: request(1),
            key: None,
        },
    ];
    let outcomes = store
        .purchase_batch(&orders, "n1")
        .expect("store works")
        .outcomes;
    assert!(matches!(outcomes[0], Ok(PurchaseOutcome::Created(_))));
    assert!(matches!(outcomes[1], Ok(PurchaseOutcome::Replayed(_))));
    assert!(matches!(outcomes[2], Ok(PurchaseOutcome::Created(_))));
    assert!(matches!(
        outcomes[3],
        Err(PurchaseError::SoldOut { available: 0, .. })
    ));
    let summary = handle(dir.path()).check().expect("consistent");
    assert_eq!(
        (summary.sold, summary.purchases, summary.journal_entries),
        (4, 2, 2)
    );
}

#[test]
fn compaction_folds_the_journal_into_a_new_snapshot_that_every_handle_notices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded(dir.path(), 200).with_compaction_threshold(1);
    let reader = handle(dir.path());
    let first = reader.check().expect("consistent").generation;
    for _ in 0..60 {
        buy(&store, 3).expect("available");
        assert_eq!(
            sold_count(&reader),
            reader
                .read(|inv| inv.purchases().len() * 3)
                .expect("readable")
        );
    }
    store.wait_for_compaction();
    let summary = reader.check().expect("consistent");
    assert_ne!(summary.generation, first);
    assert_eq!((summary.sold, summary.purchases), (180, 60));
    assert!(summary.journal_entries < 60, "{summary:?}");
    assert!(store.stats().compactions >= 1, "{:?}", store.stats());
    assert_eq!(
        file_names(dir.path()),
        [COMPACTION_LOCK_FILE, JOURNAL_FILE, DATA_FILE, LOCK_FILE]
    );
}

#[test]
fn handles_at_the_end_of_the_log_follow_a_compaction_without_reading_the_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded(dir.path(), 100).with_compaction_threshold(1);
    let reader = handle(dir.path());
    let first = handle(dir.path()).check().expect("consistent").generation;
    assert_eq!(sold_count(&reader), 0);
    let mut generations = vec![first];
    for i in 0..80 {
        buy(&store, 1).expect("available");
        if i % 5 == 4 {
            // Let each compaction end, so several switches happen under the readers.
            store.wait_for_compaction();
        }
        assert_eq!(sold_count(&reader), i + 1);
        assert_eq!(sold_count(&store), i + 1);
        let generation = handle(dir.path()).check().expect("consistent").generation;
        if generations.last() != Some(&generation) {
            generations.push(generation);
        }
    }
    store.wait_for_compaction();
    assert!(
        generations.len() >= 3,
        "too few compactions: {generations:?}"
    );
    let compactions = store.stats().compactions;
    assert!(compactions >= 2, "{:?}", store.stats());
    assert_eq!(
        store.stats().snapshot_loads,
        1,
        "the writer, always at the end of the log, read a new snapshot"
    );
    // The reader is one sale behind whenever a compaction switches before it reads that
    // sale, which a small store allows: it may then load the snapshot, once per switch.
    assert!(reader.stats().snapshot_loads <= 1 + compactions);
    let summary = handle(dir.path()).check().expect("consistent");
    assert_eq!((summary.sold, summary.purchases), (80, 80));
}

#[test]
fn a_compaction_hands_over_to_handles_past_its_fold_and_reloads_only_those_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded(dir.path(), 20).with_compaction_threshold(u64::MAX);
    let behind = handle(dir.path());
    let reader = handle(dir.path());
    buy(&store, 1).expect("available");
    assert_eq!(sold_count(&behind), 1);
    buy(&store, 1).expect("available");
    assert_eq!(sold_count(&reader), 2);
    // The fold point: the end of the log now.
    let medium = FileMedium::new(dir.path().to_owned(), Duration::from_secs(5));
    let fold = {
        let mut session = medium.begin_read().expect("readable");
        let (_, loaded) = session.load_snapshot().expect("snapshot");
        match session.read_since(&loaded).expect("journal") {
            Since::Entries { end, .. } => end,
            Since::Reload => panic!("the snapshot did not move"),
        }
    };
    // A sale after the fold point, before the switch: it goes to the new journal.
    buy(&store, 2).expect("available");
    let loads = |h: &TicketStore| h.stats().snapshot_loads;
    let before = (loads(&store), loads(&reader), loads(&behind));
    assert_eq!(
        super::compact::compact(&medium, &fold).expect("compacted"),
        crate::medium::Compacted::Switched
    );
    assert_eq!(file_names(dir.path()).len(), 4, "no temporary file is left");
    for h in [&store, &reader, &behind] {
        assert_eq!(sold_count(h), 4);
    }
    assert_eq!(
        (loads(&store), loads(&reader), loads(&behind)),
        (before.0, before.1, before.2 + 1),
        "only the handle behind the fold point read the new snapshot"
    );
    buy(&reader, 1).expect("available");
    assert_eq!(sold_count(&store), 5);
    let summary = handle(dir.path()).check().expect("consistent");
    assert_eq!(
        (summary.sold, summary.purchases, summary.journal_entries),
        (5, 4, 2),
        "the new journal holds the sale after the fold and the one after the switch"
    );
    // A compaction from a position whose snapshot was replaced changes nothing.
    assert_eq!(
        super::compact::compact(&medium, &fold).expect("no failure"),
        crate::medium::Compacted::Superseded
    );
    assert_eq!(handle(dir.path()).check().expect("consistent"), summary);
}

#[test]
fn a_snapshot_folded_from_part_of_its_journal_is_followed_by_the_rest() {
    // The state of a compaction that folded the journal after one purchase and stopped
    // between the snapshot's rename and its new journal's, while a second purchase was
    // appended to the old journal.
    let (dir, store, state, follows) = sold_and_folded();
    let old = follows.generation;
    let behind = handle(dir.path());
    assert_eq!(sold_count(&behind), 2);
    buy(&store, 3).expect("available");
    fs::write(dir.path().join(DATA_FILE), folded(&state, old + 1, follows)).expect("write");

    let fresh = handle(dir.path());
    assert_eq!(
        sold_count(&fresh),
        5,
        "a new handle applies the lines after the fold"
    );
    let loads = store.stats().snapshot_loads;
    assert_eq!(sold_count(&store), 5);
    assert_eq!(sold_count(&behind), 5);
    assert_eq!(
        store.stats().snapshot_loads,
        loads,
        "the writer handed over"
    );
    buy(&behind, 1).expect("available");
    for h in [&store, &fresh, &behind] {
        assert_eq!(sold_count(h), 6);
    }
    let summary = handle(dir.path()).check().expect("consistent");
    assert_eq!(
        (summary.generation, summary.sold, summary.journal_entries),
        (old + 1, 6, 2),
        "the next writer started the new journal with the line after the fold"
    );
    let journal = fs::read_to_string(dir.path().join(JOURNAL_FILE)).expect("journal");
    assert!(
        journal.starts_with(&format!("{{\"journal\":1,\"generation\":{}}}", old + 1)),
        "{journal}"
    );
}

#[test]
fn a_compaction_interrupted_before_the_new_journal_loses_nothing() {
    // Simulate a crash between the snapshot's rename and the new journal's: a newer
    // snapshot holding everything, beside the old generation's journal.
    let (dir, store, state, follows) = sold_and_folded();
    let generation = follows.generation + 1;
    // A snapshot that names another length of the journal was not folded from this one.
    let longer = format::Follows {
        journal_len: follows.journal_len + 1,
        ..follows
    };
    fs::write(
        dir.path().join(DATA_FILE),
        folded(&state, generation, longer),
    )
    .expect("write");
    let err = handle(dir.path())
        .read(|_| ())
        .expect_err("not provably folded");
    assert!(
        err.to_string().contains("not the one that follows"),
        "{err}"
    );
    fs::write(
        dir.path().join(DATA_FILE),
        folded(&state, generation, follows),
    )
    .expect("write");

    let fresh = handle(dir.path());
    assert_eq!(sold_count(&fresh), 2);
    assert_eq!(sold_count(&store), 2);
    buy(&fresh, 3).expect("available");
    assert_eq!(sold_count(&store), 5);
    let summary = handle(dir.path()).check().expect("consistent");
    assert_eq!(
        (summary.generation, summary.sold, summary.journal_entries),
        (generation, 5, 1)
    );
}

#[test]
fn a_failed_commit_leaves_the_cache_consistent_with_the_disk() {
    let (dir, store) = seeded_store(3);
    buy(&store, 1).expect("available");
    fs::write(dir.path().join(JOURNAL_FILE), b"not a journal").expect("write");
    assert!(store.purchase(&request(1), None, "n").is_err());
    assert!(
        store.read(|_| ()).is_err(),
        "the broken journal is reported, not hidden by the cache"
    );
}

#[test]
fn writes_leave_no_temporary_files() {
    let (dir, store) = seeded_store(3);
    buy(&store, 1).expect("available");
    assert_eq!(file_names(dir.path()), [JOURNAL_FILE, DATA_FILE, LOCK_FILE]);
}

#[test]
fn threads_with_separate_handles_racing_for_a_small_inventory_never_sell_a_ticket_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    seeded(dir.path(), 50);
    let sold = racing_buyers(|| handle(dir.path()).with_compaction_threshold(2_000));
    let summary = handle(dir.path()).check().expect("consistent");
    let purchased: usize = handle(dir.path())
        .read(|inv| inv.purchases().iter().map(|p| p.tickets.len()).sum())
        .expect("readable");
    assert_eq!(sold.iter().sum::<u32>() as usize, purchased);
    assert_eq!(summary.sold, purchased);
}

#[test]
fn a_last_line_that_is_a_whole_purchase_without_its_newline_is_refused_not_cut() {
    let (dir, store) = seeded_store(5);
    buy(&store, 1).expect("available");
    buy(&store, 1).expect("available");
    let journal = dir.path().join(JOURNAL_FILE);
    let mut bytes = fs::read(&journal).expect("read");
    // Damage takes the last acknowledged purchase's line end.
    bytes.pop();
    fs::write(&journal, &bytes).expect("write");

    for attempt in [
        handle(dir.path()).read(|_| ()).map(|_| ()),
        handle(dir.path())
            .purchase(&request(1), None, "n")
            .map(|_| ()),
    ] {
        let err = attempt.expect_err("damage is refused");
        assert!(err.to_string().contains("without its line end"), "{err}");
    }
    assert_eq!(
        fs::read(&journal).expect("read"),
        bytes,
        "the writer cut it"
    );
}

#[test]
fn a_writer_whose_lock_file_was_replaced_writes_nothing() {
    let (dir, store) = seeded_store(5);
    buy(&store, 1).expect("available");
    let journal = fs::read(dir.path().join(JOURNAL_FILE)).expect("journal");
    let medium = FileMedium::new(dir.path().to_owned(), Duration::from_secs(5));
    let mut session = medium.begin_write().expect("locked");
    let (inventory, position) = session.load_snapshot().expect("snapshot");
    let Since::Entries { end, .. } = session.read_since(&position).expect("journal") else {
        panic!("the snapshot did not move");
    };
    // The operator deletes the lock file, and another process locks a new one.
    fs::remove_file(dir.path().join(LOCK_FILE)).expect("delete");
    let mut inventory = inventory;
    let sold = inventory
        .purchase_tickets(&request(1), None, "n")
        .expect("available")
        .into_purchase();
    let err = session
        .append(&end, &[shared::LogEntry::Purchase(sold)])
        .expect_err("the lock is lost");
    assert!(err.to_string().contains("deleted or replaced"), "{err}");
    assert_eq!(
        fs::read(dir.path().join(JOURNAL_FILE)).expect("journal"),
        journal
    );
}

#[test]
fn a_large_snapshot_is_loaded_with_the_lock_released_and_the_state_is_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Over `UNLOCKED_LOAD_BYTES`.
    let store = seeded(dir.path(), 20_000).with_compaction_threshold(u64::MAX);
    assert!(
        fs::metadata(dir.path().join(DATA_FILE))
            .expect("snapshot")
            .len()
            >= super::UNLOCKED_LOAD_BYTES
    );
    buy(&store, 3).expect("available");
    let reader = handle(dir.path());
    assert_eq!(sold_count(&reader), 3);
    let writer = handle(dir.path());
    buy(&writer, 2).expect("available");
    assert_eq!(sold_count(&store), 5);
    assert_eq!(sold_count(&reader), 5);
    // The writer loaded under its exclusive lock's second hold, and decided on the whole state.
    let summary = handle(dir.path()).check().expect("consistent");
    assert_eq!((summary.sold, summary.purchases), (5, 2));
}
