//! The store on a real directory: visibility across handles, group commit, torn appends,
//! compaction, corruption and contention.

use std::fs;
use std::path::Path;
use std::time::Duration;

use shared::{IdempotencyKey, Inventory, PurchaseError, PurchaseOutcome};

use super::{DATA_FILE, FileMedium, JOURNAL_FILE, LOCK_FILE};
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
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded(dir.path(), 5);
    let other = handle(dir.path());
    assert_eq!(sold_count(&other), 0);
    buy(&store, 2).expect("available");
    assert_eq!(sold_count(&other), 2);
    buy(&other, 1).expect("available");
    assert_eq!(sold_count(&store), 3);
}

#[test]
fn seeding_refuses_to_overwrite_unless_forced_and_a_reseed_is_noticed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded(dir.path(), 3);
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
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded(dir.path(), 1);
    for garbage in [&b"{not json"[..], b"", b"[]", b"{\"format\":1,"] {
        fs::write(dir.path().join(DATA_FILE), garbage).expect("write");
        let err = store.purchase(&request(1), None, "n").expect_err("corrupt");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert_eq!(fs::read(dir.path().join(DATA_FILE)).expect("read"), garbage);
    }
}

#[test]
fn a_corrupt_journal_line_is_reported_with_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded(dir.path(), 3);
    buy(&store, 1).expect("available");
    let journal = dir.path().join(JOURNAL_FILE);
    let mut bytes = fs::read(&journal).expect("read");
    bytes.extend_from_slice(b"{\"garbage\":true}\n");
    fs::write(&journal, &bytes).expect("write");
    let err = handle(dir.path()).read(|_| ()).expect_err("corrupt");
    assert!(err.to_string().contains("line at byte"), "{err}");
}

#[test]
fn a_torn_last_line_is_ignored_by_readers_and_cut_off_by_the_next_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded(dir.path(), 5);
    buy(&store, 1).expect("available");
    let journal = dir.path().join(JOURNAL_FILE);
    let mut bytes = fs::read(&journal).expect("read");
    let whole = bytes.len();
    bytes.extend_from_slice(b"{\"purchase_id\":\"p-0000009\",\"event\":\"conc");
    fs::write(&journal, &bytes).expect("write");

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
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded(dir.path(), 4);
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
    let summary = reader.check().expect("consistent");
    assert_ne!(summary.generation, first);
    assert_eq!((summary.sold, summary.purchases), (180, 60));
    assert!(summary.journal_entries < 60, "{summary:?}");
    assert_eq!(file_names(dir.path()), [JOURNAL_FILE, DATA_FILE, LOCK_FILE]);
}

#[test]
fn a_compaction_interrupted_before_the_new_journal_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded(dir.path(), 10);
    buy(&store, 2).expect("available");
    // Simulate a crash between the snapshot's rename and the new journal's: a newer
    // snapshot holding everything, beside the old generation's journal.
    let state = store.read(Clone::clone).expect("readable");
    let old = store.check().expect("consistent").generation;
    let generation = old + 1;
    let journal_len = fs::metadata(dir.path().join(JOURNAL_FILE))
        .expect("journal")
        .len();
    let folded = |journal_len| {
        let follows = format::Follows {
            generation: old,
            journal_len,
        };
        let mut bytes = Vec::new();
        format::encode_folded(&state, generation, follows, &mut bytes).expect("encode");
        bytes
    };
    // A snapshot that names another length of the journal was not folded from this one.
    fs::write(dir.path().join(DATA_FILE), folded(journal_len + 1)).expect("write");
    let err = handle(dir.path())
        .read(|_| ())
        .expect_err("not provably folded");
    assert!(
        err.to_string().contains("not the one that follows"),
        "{err}"
    );
    fs::write(dir.path().join(DATA_FILE), folded(journal_len)).expect("write");

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
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded(dir.path(), 3);
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
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded(dir.path(), 3);
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
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded(dir.path(), 5);
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
    let dir = tempfile::tempdir().expect("tempdir");
    let store = seeded(dir.path(), 5);
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
