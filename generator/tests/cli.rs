//! The `generator` binary's flags and `seed`, run as a real process.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn generator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_generator"))
        .args(args)
        .env_remove("TICKETS_GENERATOR__TARGET")
        .output()
        .expect("generator starts")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts that the run succeeded, showing what it wrote to stderr if not.
fn assert_succeeded(output: &Output) {
    assert!(output.status.success(), "{}", stderr(output));
}

/// Asserts that the run printed `text` on stdout, showing all of stdout if not.
fn assert_stdout_has(output: &Output, text: &str) {
    assert!(stdout(output).contains(text), "{}", stdout(output));
}

/// Asserts that the run was refused as a usage error (exit status 2) saying `text` on
/// stderr.
fn assert_refused(output: &Output, text: &str) {
    assert_eq!(output.status.code(), Some(2), "{}", stderr(output));
    assert_stderr_has(output, text);
}

/// Asserts that the run printed `text` on stderr, showing all of stderr if not.
fn assert_stderr_has(output: &Output, text: &str) {
    assert!(stderr(output).contains(text), "{}", stderr(output));
}

/// The store under `data`, as the tests read what the CLI wrote there.
fn store_at(data: &Path) -> store::TicketStore {
    store::TicketStore::new(data, Duration::from_secs(5))
}

/// Seeds a fresh temporary `data` folder with `extra` flags and checks that it succeeded.
/// The folder lasts as long as the returned directory.
fn seed_fresh(extra: &[&str]) -> (tempfile::TempDir, PathBuf, Output) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let output = seed(&data, extra);
    assert_succeeded(&output);
    (dir, data, output)
}

fn seed(dir: &Path, extra: &[&str]) -> Output {
    let data = dir.to_string_lossy().into_owned();
    let mut args = vec![
        "seed",
        "--data",
        data.as_str(),
        "--events",
        "6",
        "--tickets",
        "120",
    ];
    args.extend_from_slice(extra);
    generator(&args)
}

#[test]
fn seed_writes_a_store_and_refuses_to_overwrite_it_without_force() {
    let (_dir, data, first) = seed_fresh(&["--seed", "1"]);
    assert_stdout_has(&first, "wrote 120 tickets over 6 events");
    assert!(store_at(&data).exists());

    let again = seed(&data, &["--seed", "2"]);
    assert_refused(&again, "pass --force");

    let forced = seed(&data, &["--seed", "2", "--force"]);
    assert_succeeded(&forced);
}

#[test]
fn seed_with_keep_existing_leaves_a_store_alone_and_succeeds() {
    let (_dir, data, _) = seed_fresh(&["--seed", "1", "--keep-existing"]);
    let snapshot = std::fs::read(data.join(store::DATA_FILE)).expect("store written");

    let again = seed(&data, &["--seed", "2", "--keep-existing"]);
    assert_succeeded(&again);
    assert_stdout_has(&again, "left as it is");
    let after = std::fs::read(data.join(store::DATA_FILE)).expect("store kept");
    assert_eq!(snapshot, after);

    let both = seed(&data, &["--keep-existing", "--force"]);
    assert_eq!(both.status.code(), Some(2), "the two flags conflict");
}

#[test]
fn seed_with_the_same_seed_writes_the_same_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["a", "b", "c"] {
        let seed_value = if name == "c" { "8" } else { "7" };
        let out = seed(&dir.path().join(name), &["--seed", seed_value]);
        assert_succeeded(&out);
    }
    // Compared through the store, not byte for byte: the file also holds a random
    // generation number.
    let read = |name: &str| {
        store_at(&dir.path().join(name))
            .read(|inventory| inventory.tickets().to_vec())
            .expect("store readable")
    };
    assert_eq!(read("a"), read("b"));
    assert_ne!(read("a"), read("c"));
}

#[test]
fn seed_without_a_seed_prints_the_one_it_picked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = seed(&dir.path().join("d"), &[]);
    assert_succeeded(&out);
    assert_stdout_has(&out, "repeat this inventory with --seed ");
}

#[test]
fn seed_with_a_per_customer_limit_stores_it_for_every_event_and_refuses_zero() {
    let (_dir, data, seeded) = seed_fresh(&["--max-per-customer", "3"]);
    assert_stdout_has(&seeded, "3 tickets per event");
    let limits = store_at(&data)
        .read(|inv| {
            inv.events()
                .iter()
                .map(|e| e.max_per_customer)
                .collect::<Vec<_>>()
        })
        .expect("readable");
    assert_eq!(limits, vec![Some(3); 6]);

    let zero = seed(&data, &["--max-per-customer", "0", "--force"]);
    assert_refused(&zero, "--max-per-customer");
}

#[test]
fn seed_refuses_too_few_events_or_tickets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_string_lossy().into_owned();
    let few_events = generator(&["seed", "--data", &data, "--events", "3", "--tickets", "10"]);
    assert_refused(&few_events, "--events must be at least 4");
    let few_tickets = generator(&["seed", "--data", &data, "--events", "5", "--tickets", "4"]);
    assert_refused(&few_tickets, "--tickets must be at least --events");
    assert!(!store_at(dir.path()).exists());
}

#[test]
fn load_refuses_bad_flags_with_a_clear_message() {
    // None of these sends anything: flags are checked before the target is contacted.
    let cases: [(&[&str], &str); 6] = [
        (
            &["load", "--rate", "0", "--duration", "1s"],
            "--rate must be a number above 0",
        ),
        (&["load", "--rate", "-3", "--duration", "1s"], "--rate"),
        (&["load", "--duration", "1s"], "--rate"),
        (
            &[
                "load",
                "--rate",
                "5",
                "--duration",
                "1s",
                "--until-sold-out",
            ],
            "cannot be used with",
        ),
        (
            &["load", "--rate", "5", "--duration", "soon"],
            "write a duration like 30s",
        ),
        (&["load", "--rate", "5", "--arrivals", "bursty"], "steady"),
    ];
    for (args, expected) in cases {
        let out = generator(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn a_target_that_is_not_an_http_url_is_refused() {
    let out = generator(&["audit", "--target", "ftp://127.0.0.1:1"]);
    assert_refused(&out, "only http://");
}

#[test]
fn max_quantity_above_ten_is_refused() {
    let out = generator(&[
        "load",
        "--rate",
        "5",
        "--duration",
        "1s",
        "--max-quantity",
        "11",
    ]);
    assert_refused(&out, "--max-quantity must be from 1 to 10");
}

#[test]
fn seed_refuses_when_any_store_file_exists_and_keep_existing_changes_nothing() {
    let (_dir, data, _) = seed_fresh(&["--seed", "1"]);
    let store = store_at(&data);
    let request = shared::PurchaseRequest::new(
        shared::EventName::parse("concert").expect("valid"),
        shared::Quantity::new(2).expect("valid"),
    );
    for _ in 0..2 {
        store
            .purchase(&request, None, "test")
            .expect("store works")
            .expect("tickets left");
    }
    // The snapshot is lost; the journal of acknowledged purchases is not.
    std::fs::remove_file(data.join(store::DATA_FILE)).expect("remove snapshot");
    let journal_path = data.join(store::JOURNAL_FILE);
    let journal = std::fs::read(&journal_path).expect("journal");

    let kept = seed(&data, &["--seed", "2", "--keep-existing"]);
    assert_succeeded(&kept);
    assert_stdout_has(&kept, "left as it is");
    let refused = seed(&data, &["--seed", "2"]);
    assert_refused(&refused, "pass --force");

    assert_eq!(std::fs::read(&journal_path).expect("journal kept"), journal);
    assert!(
        !data.join(store::DATA_FILE).exists(),
        "seeding wrote a snapshot beside a journal it did not write"
    );
}

#[test]
fn box_office_shares_out_of_range_or_past_one_and_short_holds_are_refused() {
    // Refused before any request: the target is never reached.
    let target = "http://127.0.0.1:9";
    for (flags, expected) in [
        (
            &["--cancel-share", "1.5"][..],
            "--cancel-share must be a fraction from 0 to 1",
        ),
        (
            &["--hold-confirm-share", "0.6", "--hold-abandon-share", "0.6"][..],
            "add up to 1.2",
        ),
        (&["--hold-ttl", "5s"][..], "--hold-ttl must be from 10 s"),
    ] {
        let mut args = vec![
            "load",
            "--target",
            target,
            "--rate",
            "10",
            "--duration",
            "1s",
        ];
        args.extend_from_slice(flags);
        let output = generator(&args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{flags:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{flags:?}: {}",
            stderr(&output)
        );
    }
}
