//! The box office end to end on a real cluster of three nodes and a balancer: clients on
//! different nodes hold, confirm, release, buy and cancel a few contended seats and the
//! history checker judges what they saw against the final state (read with the operator's
//! token, customers included); then `generator load` runs the box-office mix through the
//! balancer on a store seeded with a per-customer limit, and `generator audit` and the
//! checker (limits included) find the result consistent.

use std::path::Path;

use cluster::history::{self, BoxOutcome};
use cluster::{
    HttpClient, Medium, Process, read_final_state_as, run_generator, seed_store, start_node_on,
};

/// The operator's token of the test cluster's nodes.
const ADMIN_TOKEN: &str = "box-office-test-operator-token";

/// Three nodes with the operator's token over `data`, and a balancer in front of them.
fn start_cluster(data: &Path) -> (Vec<Process>, Process) {
    let nodes: Vec<Process> = (1..=3)
        .map(|i| {
            start_node_on(
                &format!("n{i}"),
                &Medium::Files(data.into()),
                "127.0.0.1:0",
                &[("TICKETS_NODE__ADMIN_TOKEN", ADMIN_TOKEN)],
            )
            .expect("node starts")
        })
        .collect();
    let addresses: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let balancer = Process::start(
        "balancer",
        "balancer",
        &[
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--nodes".to_owned(),
            addresses.join(","),
        ],
    )
    .expect("balancer starts");
    (nodes, balancer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contended_holds_confirms_releases_and_cancels_across_nodes_keep_every_promise() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Six concert seats for four clients: holds and purchases race for them.
    seed_store(
        dir.path(),
        &[("concert", 6, 4500), ("sports-game", 20, 2000)],
    )
    .expect("seed");
    let (nodes, _balancer) = start_cluster(dir.path());
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
