//! One suite over both media of `store::TicketStore`: every test runs on a file store in a
//! temporary directory and on a PostgreSQL store in a fresh database of a real, throwaway
//! server (`cluster::postgres`). What only one medium has (torn journal lines, temporary
//! files) is tested beside that medium's code.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shared::{DecisionError, IdempotencyKey, Inventory, Outcome, PurchaseError, PurchaseOutcome};
use store::testing::{buy, inventory, racing_buyers, request, sold_count};
use store::{PgOptions, PurchaseOrder, StoreError, TicketStore};

/// Where one test's store lives.
enum Medium {
    Files(tempfile::TempDir),
    Postgres(String),
}

impl Medium {
    fn both() -> [Medium; 2] {
        [
            Medium::Files(tempfile::tempdir().expect("tempdir")),
            Medium::Postgres(cluster::postgres::fresh_database().expect("a test database")),
        ]
    }

    fn name(&self) -> &'static str {
        match self {
            Medium::Files(_) => "files",
            Medium::Postgres(_) => "postgres",
        }
    }

    /// A new handle with a cache of its own, as another process would have.
    fn handle(&self) -> TicketStore {
        match self {
            Medium::Files(dir) => TicketStore::new(dir.path(), Duration::from_secs(5)),
            Medium::Postgres(url) => {
                TicketStore::postgres(url, PgOptions::new(Duration::from_secs(5)))
                    .expect("a valid URL")
            }
        }
    }

    /// Fails the test, naming this medium, unless `store` sees `sold` tickets sold.
    fn assert_sold(&self, store: &TicketStore, sold: usize) {
        assert_eq!(sold_count(store), sold, "{}", self.name());
    }

    /// Buys `tickets` tickets through `buyer`, then asserts that `reader` sees `sold` sold.
    fn sells(&self, buyer: &TicketStore, tickets: u32, reader: &TicketStore, sold: usize) {
        buy(buyer, tickets).expect("available");
        self.assert_sold(reader, sold);
    }

    fn seeded(&self, tickets: u64) -> TicketStore {
        let store = self.handle();
        store
            .create(&inventory(tickets), false)
            .expect("a fresh store");
        store
    }
}

/// The purchase ids a handle sees, as numbers (`p-00000007` is 7).
fn purchase_numbers(store: &TicketStore) -> Result<Vec<u64>, StoreError> {
    store.read(|inv| {
        inv.purchases()
            .iter()
            .filter_map(|p| p.purchase_id.trim_start_matches("p-").parse().ok())
            .collect()
    })
}

#[test]
fn a_write_is_seen_by_another_handle_with_its_own_cache() {
    for medium in Medium::both() {
        let store = medium.seeded(5);
        let other = medium.handle();
        medium.assert_sold(&other, 0);
        medium.sells(&store, 2, &other, 2);
        medium.sells(&other, 1, &store, 3);
    }
}

#[test]
fn seeding_refuses_to_overwrite_unless_forced_and_a_reseed_is_noticed() {
    for medium in Medium::both() {
        let store = medium.seeded(3);
        let reader = medium.handle();
        medium.sells(&store, 1, &reader, 1);
        let again = store.create(&Inventory::default(), false);
        assert!(
            matches!(
                again,
                Err(StoreError::AlreadyExists(_) | StoreError::DatabaseExists(_))
            ),
            "{}: {again:?}",
            medium.name()
        );
        store.create(&inventory(2), true).expect("forced overwrite");
        assert_eq!(
            reader.read(|inv| inv.tickets().len()).expect("readable"),
            2,
            "{}",
            medium.name()
        );
        medium.assert_sold(&reader, 0);
        medium.sells(&reader, 2, &store, 2);
    }
}

#[test]
fn a_missing_store_is_reported_as_missing() {
    for medium in Medium::both() {
        let store = medium.handle();
        assert!(!store.exists(), "{}", medium.name());
        let err = store.read(|_| ()).expect_err("nothing seeded");
        assert!(
            matches!(err, StoreError::Missing(_) | StoreError::DatabaseMissing(_)),
            "{}: {err:?}",
            medium.name()
        );
        let err = store
            .purchase(&request(1), None, "n")
            .expect_err("nothing seeded");
        assert!(
            err.to_string().contains("seed one"),
            "{}: {err}",
            medium.name()
        );
        medium.seeded(1);
        assert!(store.exists(), "{}", medium.name());
    }
}

#[test]
fn a_batch_is_decided_in_order_with_idempotency_and_committed_in_one_step() {
    for medium in Medium::both() {
        let store = medium.seeded(4);
        let key = IdempotencyKey::parse("same").expect("valid");
        let order = |quantity, key: Option<&IdempotencyKey>| PurchaseOrder {
            request: request(quantity),
            key: key.cloned(),
        };
        let orders = [
            order(2, Some(&key)),
            order(2, Some(&key)),
            order(2, None),
            order(1, None),
        ];
        let outcomes = store
            .purchase_batch(&orders, "n1")
            .expect("store works")
            .outcomes;
        let name = medium.name();
        assert!(
            matches!(outcomes[0], Ok(PurchaseOutcome::Created(_))),
            "{name}"
        );
        assert!(
            matches!(outcomes[1], Ok(PurchaseOutcome::Replayed(_))),
            "{name}"
        );
        assert!(
            matches!(outcomes[2], Ok(PurchaseOutcome::Created(_))),
            "{name}"
        );
        assert!(
            matches!(
                outcomes[3],
                Err(PurchaseError::SoldOut { available: 0, .. })
            ),
            "{name}"
        );
        let summary = medium.handle().check().expect("consistent");
        assert_eq!(
            (summary.sold, summary.purchases, summary.journal_entries),
            (4, 2, 2),
            "{name}"
        );
    }
}

#[test]
fn orders_joining_a_batch_under_the_lock_are_decided_after_it_in_the_same_commit() {
    for medium in Medium::both() {
        let store = medium.seeded(4);
        let other = medium.handle();
        let order = |quantity| {
            PurchaseOrder {
                request: request(quantity),
                key: None,
            }
            .to_order()
        };
        let mut calls = 0;
        let committed = store
            .commit_batch_joining(
                &[order(2)],
                &mut || {
                    calls += 1;
                    vec![order(2), order(1)]
                },
                "n1",
            )
            .expect("store works");
        let name = medium.name();
        assert_eq!(calls, 1, "{name}");
        let outcomes = committed.outcomes;
        assert_eq!(outcomes.len(), 3, "{name}");
        for sold in &outcomes[..2] {
            assert!(
                matches!(sold, Ok(Outcome::Purchase(d)) if d.changed),
                "{name}: {sold:?}"
            );
        }
        assert!(
            matches!(
                outcomes[2],
                Err(DecisionError::SoldOut { available: 0, .. })
            ),
            "{name}: {:?}",
            outcomes[2]
        );
        assert_eq!(sold_count(&other), 4, "{name}: another handle sees both");
    }
}

#[test]
fn a_key_retried_on_another_handle_returns_the_first_outcome() {
    for medium in Medium::both() {
        let first = medium.seeded(10);
        let second = medium.handle();
        let key = IdempotencyKey::parse("retry-me").expect("valid");
        let Ok(Ok(PurchaseOutcome::Created(bought))) =
            first.purchase(&request(3), Some(&key), "n1")
        else {
            panic!("{}: the first purchase is created", medium.name());
        };
        let again = second
            .purchase(&request(3), Some(&key), "n2")
            .expect("store works");
        let Ok(PurchaseOutcome::Replayed(replayed)) = again else {
            panic!("{}: the retry is a replay, got {again:?}", medium.name());
        };
        assert_eq!(replayed, bought, "{}", medium.name());
        medium.assert_sold(&second, 3);
    }
}

#[test]
fn compaction_folds_the_log_into_a_new_snapshot_that_every_handle_notices() {
    for medium in Medium::both() {
        let name = medium.name();
        let store = medium.seeded(400).with_compaction_threshold(1);
        let reader = medium.handle();
        // A handle that reads once now and then not until the end: by then the entries
        // after its position are gone, and it must reload rather than miss them.
        let sleeper = medium.handle();
        assert_eq!(sold_count(&sleeper), 0, "{name}");
        let first = reader.check().expect("consistent").generation;
        for _ in 0..250 {
            buy(&store, 1).expect("available");
            assert_eq!(
                sold_count(&reader),
                reader.read(|inv| inv.purchases().len()).expect("readable"),
                "{name}"
            );
        }
        let summary = reader.check().expect("consistent");
        assert_ne!(summary.generation, first, "{name}");
        assert_eq!((summary.sold, summary.purchases), (250, 250), "{name}");
        assert!(summary.journal_entries < 250, "{name}: {summary:?}");
        if let Medium::Postgres(url) = &medium {
            let oldest = psql(url, "SELECT min(seq) FROM tickets_log");
            assert_ne!(
                oldest, "1",
                "the log was pruned past the sleeper's position"
            );
        }
        assert_eq!(sold_count(&sleeper), 250, "{name}");
        assert_eq!(
            purchase_numbers(&sleeper).expect("readable"),
            (1..=250).collect::<Vec<_>>(),
            "{name}"
        );
    }
}

/// Runs SQL in the test database at `url` (on the shared test server).
fn psql(url: &str, sql: &str) -> String {
    let database = url.rsplit('/').next().expect("a database name");
    cluster::postgres::shared()
        .expect("the test server")
        .psql(database, sql)
        .expect("psql")
}

#[test]
fn threads_with_separate_handles_racing_for_a_small_inventory_never_sell_a_ticket_twice() {
    for medium in Medium::both() {
        medium.seeded(50);
        let sold = racing_buyers(|| medium.handle().with_compaction_threshold(2_000));
        let summary = medium.handle().check().expect("consistent");
        let purchased: usize = medium
            .handle()
            .read(|inv| inv.purchases().iter().map(|p| p.tickets.len()).sum())
            .expect("readable");
        assert_eq!(
            sold.iter().sum::<u32>() as usize,
            purchased,
            "{}",
            medium.name()
        );
        assert_eq!(summary.sold, purchased, "{}", medium.name());
    }
}

/// The strict-consistency contract under concurrency: two handles commit as fast as they
/// can while readers check every read they make. A read must see a gapless prefix of the
/// log (purchases 1..=k, never k+1 without k, which catches entries that become visible
/// out of order), and must hold every purchase acknowledged before the read began.
#[test]
fn concurrent_reads_see_a_gapless_prefix_holding_every_acknowledged_write() {
    for medium in Medium::both() {
        let name = medium.name();
        medium.seeded(3_000);
        let acknowledged = Mutex::new(BTreeSet::new());
        let writing = AtomicBool::new(true);
        let reads = std::thread::scope(|s| {
            let writers: Vec<_> = (0..2)
                .map(|w| {
                    // Small batches from several threads per handle, so commits interleave.
                    let store = medium.handle();
                    let acknowledged = &acknowledged;
                    s.spawn(move || {
                        let threads: Vec<_> = (0..3)
                            .map(|_| {
                                let store = store.clone();
                                std::thread::spawn(move || {
                                    let mut mine = Vec::new();
                                    for _ in 0..60 {
                                        let outcome = store
                                            .purchase(&request(1), None, &format!("w{w}"))
                                            .expect("store works");
                                        if let Ok(PurchaseOutcome::Created(p)) = outcome {
                                            mine.push(p.purchase_id);
                                        }
                                    }
                                    mine
                                })
                            })
                            .collect();
                        for thread in threads {
                            for id in thread.join().expect("no panic") {
                                let number: u64 =
                                    id.trim_start_matches("p-").parse().expect("numbered");
                                acknowledged.lock().expect("lock").insert(number);
                            }
                        }
                    })
                })
                .collect();
            let readers: Vec<_> = (0..2)
                .map(|r| {
                    let acknowledged = &acknowledged;
                    let writing = &writing;
                    let medium = &medium;
                    s.spawn(move || {
                        // Reader 0 keeps one handle (reads entries since its position);
                        // reader 1 starts from the snapshot every time.
                        let kept = medium.handle();
                        let mut reads = 0;
                        while writing.load(Ordering::Relaxed) || reads < 5 {
                            let before: BTreeSet<u64> = acknowledged.lock().expect("lock").clone();
                            let store = if r == 0 {
                                kept.clone()
                            } else {
                                medium.handle()
                            };
                            let seen = purchase_numbers(&store).expect("a read never fails");
                            let expected: Vec<u64> = (1..=seen.len() as u64).collect();
                            assert_eq!(seen, expected, "{name}: a read saw a gap");
                            let seen: BTreeSet<u64> = seen.into_iter().collect();
                            let missing: Vec<_> = before.difference(&seen).collect();
                            assert!(
                                missing.is_empty(),
                                "{name}: a read missed acknowledged purchases {missing:?}"
                            );
                            reads += 1;
                        }
                        reads
                    })
                })
                .collect();
            for writer in writers {
                writer.join().expect("no panic");
            }
            writing.store(false, Ordering::Relaxed);
            readers
                .into_iter()
                .map(|r| r.join().expect("no panic"))
                .sum::<usize>()
        });
        let all = acknowledged.into_inner().expect("lock");
        assert_eq!(all.len(), 360, "{name}");
        assert_eq!(
            purchase_numbers(&medium.handle()).expect("readable"),
            all.into_iter().collect::<Vec<_>>(),
            "{name}"
        );
        assert!(reads >= 10, "{name}: only {reads} reads");
    }
}

/// What a handle sees of the box office: every ticket, purchase and hold and the events'
/// counts, compared whole.
fn box_office_state(store: &TicketStore) -> String {
    store
        .read(|inv| {
            format!(
                "{:?}\n{:?}\n{:?}\n{:?}",
                inv.tickets(),
                inv.purchases(),
                inv.holds(),
                inv.events()
            )
        })
        .expect("readable")
}

#[test]
fn every_kind_of_entry_is_seen_by_another_handle_and_survives_compaction() {
    use shared::{
        Command, CustomerId, EventName, HoldRequest, HoldState, Order, Outcome, Proof, Quantity,
        SaleRequest, Selection, Ttl,
    };
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::time::SystemTime;

    for medium in Medium::both() {
        let name = medium.name();
        let seconds = Arc::new(AtomicU64::new(0));
        let clock = {
            let seconds = Arc::clone(&seconds);
            store::Clock::from_fn(move || {
                SystemTime::now() + Duration::from_secs(seconds.load(Ordering::Relaxed))
            })
        };
        let writer = medium.seeded(10).with_clock(clock.clone());
        let sale = |n| SaleRequest {
            event: EventName::parse("concert").expect("valid"),
            selection: Selection::Quantity(Quantity::new(n).expect("valid")),
            customer: Some(CustomerId::parse("ann").expect("valid")),
        };
        let hold = |n, ttl| {
            Order::new(Command::Hold(HoldRequest {
                sale: sale(n),
                ttl: Ttl::new(ttl).expect("valid"),
            }))
        };
        let key = Some(IdempotencyKey::parse("hold-1").expect("valid"));
        let operator = |command| Order::new(command).with_proof(Proof::operator());
        let orders = [
            hold(2, 600).with_key(key.clone()),
            hold(2, 600),
            Order::new(Command::Purchase(sale(2))),
            operator(Command::Confirm {
                hold_id: "h-00000001".into(),
            }),
            operator(Command::Release {
                hold_id: "h-00000002".into(),
            }),
            operator(Command::Cancel {
                purchase_id: "p-00000001".into(),
            }),
            hold(1, 10),
        ];
        let batch = writer.commit_batch(&orders, "n1").expect("committed");
        let first_secret = match &batch.outcomes[0] {
            Ok(Outcome::Hold(decided)) => decided.secret.clone(),
            other => panic!("{name}: {other:?}"),
        };
        assert!(
            batch.outcomes.iter().all(Result::is_ok),
            "{name}: {:?}",
            batch.outcomes
        );
        // The last hold expires; the next decision logs it.
        seconds.store(11, Ordering::Relaxed);
        writer
            .commit(&Order::new(Command::Purchase(sale(1))), "n1")
            .expect("committed")
            .expect("available");

        let reader = medium.handle().with_clock(clock.clone());
        assert_eq!(
            box_office_state(&reader),
            box_office_state(&writer),
            "{name}"
        );
        let states: Vec<HoldState> = reader
            .read(|inv| inv.holds().iter().map(|h| h.state.clone()).collect())
            .expect("readable");
        assert!(
            matches!(
                states.as_slice(),
                [
                    HoldState::Confirmed { .. },
                    HoldState::Released(_),
                    HoldState::Expired { .. }
                ]
            ),
            "{name}: {states:?}"
        );
        // A keyed repeat on another handle answers the first hold and its secret.
        let again = reader
            .commit(&hold(2, 600).with_key(key.clone()), "n2")
            .expect("committed");
        match again {
            Ok(Outcome::Hold(decided)) => {
                assert!(!decided.changed, "{name}");
                assert_eq!(decided.item.hold.hold_id, "h-00000001", "{name}");
                assert_eq!(decided.secret, first_secret, "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }

        // Folded into a snapshot, it all reads the same.
        let compacting = medium
            .handle()
            .with_clock(clock.clone())
            .with_compaction_threshold(1);
        compacting
            .commit(&Order::new(Command::Purchase(sale(1))), "n3")
            .expect("committed")
            .expect("available");
        // Compaction runs in the background.
        compacting.wait_for_compaction();
        assert!(compacting.stats().compactions >= 1, "{name}");
        let fresh = medium.handle();
        assert_eq!(
            box_office_state(&fresh),
            box_office_state(&compacting),
            "{name}"
        );
        let summary = fresh.check().expect("consistent");
        assert_eq!((summary.holds, summary.purchases), (3, 4), "{name}");
    }
}

#[test]
fn a_hold_one_handle_found_expired_is_confirmed_by_no_handle_whatever_its_clock() {
    use shared::{
        Command, DecisionError, EventName, HoldRequest, Order, Proof, Quantity, SaleRequest,
        Selection, Ttl,
    };
    use store::Clock;

    for medium in Medium::both() {
        let name = medium.name();
        let behind = medium.seeded(4);
        let ahead = medium
            .handle()
            .with_clock(Clock::ahead(Duration::from_secs(60)));
        let hold = Order::new(Command::Hold(HoldRequest {
            sale: SaleRequest {
                event: EventName::parse("concert").expect("valid"),
                selection: Selection::Quantity(Quantity::new(2).expect("valid")),
                customer: None,
            },
            ttl: Ttl::new(10).expect("valid"),
        }));
        behind
            .commit(&hold, "slow")
            .expect("committed")
            .expect("held");
        let confirm = Order::new(Command::Confirm {
            hold_id: "h-00000001".into(),
        })
        .with_proof(Proof::operator());
        let expired = Err(DecisionError::HoldExpired("h-00000001".into()));
        let refused = ahead.commit_batch(std::slice::from_ref(&confirm), "fast");
        let refused = refused.expect("committed");
        assert_eq!(refused.outcomes, std::slice::from_ref(&expired), "{name}");
        assert!(
            refused.append_and_sync > Duration::ZERO,
            "{name}: the expiry was logged"
        );
        // The slow handle's clock says the hold has 10 s left; the log says otherwise.
        assert_eq!(
            behind.commit(&confirm, "slow").expect("committed"),
            expired,
            "{name}"
        );
        let available = behind
            .read(|inv| inv.events_at(std::time::SystemTime::now())[0].available)
            .expect("readable");
        assert_eq!(available, 4, "{name}");
    }
}
