//! The box office end to end on a real cluster of three nodes and a balancer: clients on
//! different nodes hold, confirm, release, buy and cancel a few contended seats and the
//! history checker judges what they saw against the final state (read with the operator's
//! token, customers included); then `generator load` runs the box-office mix through the
//! balancer on a store seeded with a per-customer limit, and `generator audit` and the
//! checker (limits included) find the result consistent; and box-office clients through
//! the balancer while nodes are killed and restarted leave a history the checker passes.

use std::path::Path;
use std::time::{Duration, Instant};

use cluster::history::{self, BoxOutcome};
use cluster::{
    HttpClient, LocalCluster, Medium, Process, read_final_state_as, run_generator, seed_store,
};

/// The operator's token of the test cluster's nodes.
const ADMIN_TOKEN: &str = "box-office-test-operator-token";

/// Three nodes with the operator's token over `data`, and a balancer in front of them.
fn start_cluster(data: &Path) -> (Vec<Process>, Process) {
    let LocalCluster { nodes, balancer } = LocalCluster::start_on_with_node_env(
        3,
        &Medium::Files(data.into()),
        &[("TICKETS_NODE__ADMIN_TOKEN", ADMIN_TOKEN)],
    )
    .expect("cluster starts");
    (nodes, balancer.expect("a balancer"))
}

/// As `start_cluster`, over a store of `events` seeded in a new directory, which lives as
/// long as the returned guard.
fn seeded_cluster(events: &[(&str, u64, u64)]) -> (tempfile::TempDir, Vec<Process>, Process) {
    let dir = tempfile::tempdir().expect("tempdir");
    seed_store(dir.path(), events).expect("seed");
    let (nodes, balancer) = start_cluster(dir.path());
    (dir, nodes, balancer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contended_holds_confirms_releases_and_cancels_across_nodes_keep_every_promise() {
    // Six concert seats for four clients: holds and purchases race for them.
    let (_dir, nodes, _balancer) =
        seeded_cluster(&[("concert", 6, 4500), ("sports-game", 20, 2000)]);
    let http = HttpClient::new();
    let clients = (0..4u32).map(|client| {
        let http = http.clone();
        let base = nodes[client as usize % nodes.len()].url();
        async move { history::box_client(&http, &base, "concert", None, (client, "race"), 9).await }
    });
    let ops: Vec<history::BoxOp> = futures_join(clients).await.into_iter().flatten().collect();
    let state = read_final_state_as(&http, &nodes[0].url(), Some(ADMIN_TOKEN))
        .await
        .expect("final state");
    let verdict = history::check_box_office(&ops, &state);
    assert!(verdict.is_clean(), "{verdict}");
    assert_eq!(verdict.unknown, 0, "every answer came: {verdict:?}");
    cluster::report_summary(&format!(
        "box-office contention: {} requests, {} acknowledged, {} refused, {} unknown, clean",
        verdict.tried, verdict.acknowledged, verdict.refused, verdict.unknown
    ));
    let count = |kind: &str| {
        ops.iter()
            .filter(|op| match (&op.action, &op.outcome) {
                (history::Action::Confirm { .. }, BoxOutcome::Purchase(_)) => kind == "confirmed",
                (history::Action::Release { .. }, BoxOutcome::Hold(_)) => kind == "released",
                (history::Action::Cancel { .. }, BoxOutcome::Purchase(_)) => kind == "cancelled",
                (history::Action::Hold { .. }, BoxOutcome::Hold(_)) => kind == "held",
                _ => false,
            })
            .count()
    };
    for kind in ["held", "confirmed", "released", "cancelled"] {
        assert!(count(kind) > 0, "no {kind} in {ops:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_load_with_the_box_office_mix_then_audit_finds_no_violation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (code, stdout, stderr) = run_generator(&[
        "seed",
        "--data",
        &data.to_string_lossy(),
        "--events",
        "4",
        "--tickets",
        "1200",
        "--seed",
        "2",
        "--max-per-customer",
        "6",
    ])
    .expect("generator runs");
    assert_eq!(code, 0, "seed failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("each customer may hold or buy 6 tickets per event"),
        "{stdout}"
    );
    let (nodes, balancer) = start_cluster(&data);
    let report_dir = tempfile::tempdir().expect("tempdir");
    let report_path = report_dir.path().join("report.json");
    let target = balancer.url();
    let (code, stdout, stderr) = run_generator(&[
        "load",
        "--target",
        &target,
        "--rate",
        "150",
        "--duration",
        "3s",
        "--max-quantity",
        "3",
        "--seed",
        "14",
        "--seats-share",
        "0.3",
        "--hold-confirm-share",
        "0.3",
        "--hold-abandon-share",
        "0.15",
        "--hold-release-share",
        "0.15",
        "--cancel-share",
        "0.15",
        "--customers",
        "20",
        "--hold-ttl",
        "60s",
        "--no-progress",
        "--report",
        &report_path.to_string_lossy(),
    ])
    .expect("generator runs");
    assert_eq!(code, 0, "load failed:\n{stdout}\n{stderr}");
    println!("{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).expect("report written"))
            .expect("report is JSON");
    let outcomes = &report["outcomes"];
    for name in [
        "purchased",
        "held",
        "confirmed",
        "released",
        "cancelled",
        "abandoned",
    ] {
        assert!(
            outcomes[name].as_u64().is_some_and(|n| n > 0),
            "no {name} in {outcomes}\n{stdout}"
        );
    }
    assert_eq!(report["errors_total"], 0, "{stdout}");
    for step in ["pick", "confirm", "release", "cancel"] {
        assert!(
            report["step_latency_ms"][step]["count"]
                .as_u64()
                .is_some_and(|n| n > 0),
            "no {step} latency in {}",
            report["step_latency_ms"]
        );
    }
    for shown in ["confirmed", "abandoned", "step (ms)"] {
        assert!(
            stdout.contains(shown),
            "the summary lacks {shown}:\n{stdout}"
        );
    }

    let (code, stdout, stderr) =
        run_generator(&["audit", "--target", &target]).expect("generator runs");
    assert_eq!(code, 0, "audit failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("OK: no violations"), "{stdout}");
    assert!(stdout.contains("holds"), "{stdout}");

    // The checker on the final state alone, customers included.
    let http = HttpClient::new();
    let state = read_final_state_as(&http, &nodes[1].url(), Some(ADMIN_TOKEN))
        .await
        .expect("final state");
    assert!(!state.holds.is_empty(), "the load made no holds");
    let verdict = history::check_box_office(&[], &state);
    assert!(verdict.is_clean(), "{verdict}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn box_office_clients_while_nodes_are_killed_lose_no_hold_confirm_release_or_cancel() {
    let (dir, mut nodes, balancer) =
        seeded_cluster(&[("concert", 400, 4500), ("sports-game", 400, 2000)]);
    let base = balancer.url();
    let http = HttpClient::new();
    let run_for = Duration::from_secs(6);
    let started = Instant::now();
    let (client_http, client_base) = (http.clone(), base.clone());
    let clients = (0..4u32).map(move |client| {
        let (http, base) = (client_http.clone(), client_base.clone());
        let event = ["concert", "sports-game"][client as usize % 2];
        async move {
            let mut ops = Vec::new();
            let mut batch = 0;
            while started.elapsed() < run_for {
                let tag = format!("kill{batch}");
                ops.extend(history::box_client(&http, &base, event, None, (client, &tag), 3).await);
                batch += 1;
            }
            ops
        }
    });
    let clients = tokio::spawn(futures_join(clients.collect::<Vec<_>>()));
    let medium = Medium::Files(dir.path().into());
    let env = [("TICKETS_NODE__ADMIN_TOKEN", ADMIN_TOKEN)];
    let kills = cluster::kill_nodes_in_turn(&mut nodes, &medium, &env, started, run_for).await;
    let ops: Vec<history::BoxOp> = clients
        .await
        .expect("clients")
        .into_iter()
        .flatten()
        .collect();
    let state = read_final_state_as(&http, &base, Some(ADMIN_TOKEN))
        .await
        .expect("final state");
    let verdict = history::check_box_office(&ops, &state);
    cluster::report_summary(&format!(
        "box-office under node kills: {kills} kills, {} requests, {} acknowledged, {} refused, {} unknown, {} violations",
        verdict.tried,
        verdict.acknowledged,
        verdict.refused,
        verdict.unknown,
        verdict.violations.len()
    ));
    assert!(verdict.is_clean(), "{verdict}");
    assert!(kills >= 3, "only {kills} kills");
    assert!(verdict.acknowledged > 20, "{verdict:?}");
}

/// Runs the futures at once and returns their results in order.
async fn futures_join<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("a client panicked"));
    }
    out
}
