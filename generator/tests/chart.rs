//! `generator load --chart FILE` as a real process against the fake ticket server of
//! `common` (127.0.0.1 only): the file is a well-formed SVG with the run's series.

mod common;

use common::{FakeServer, live_inventory, load_with_report, stdout};

#[tokio::test]
async fn load_with_chart_writes_an_svg_of_latency_and_rate_per_second() {
    let fake = FakeServer::start(live_inventory(500)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let chart_path = dir.path().join("run.svg");
    let chart_arg = chart_path.to_string_lossy().into_owned();
    let (output, report) = load_with_report(
        &fake.url(),
        &[
            "--rate",
            "100",
            "--duration",
            "2500ms",
            "--seed",
            "9",
            "--chart",
            &chart_arg,
            "--no-progress",
        ],
    )
    .await;
    assert!(
        stdout(&output).contains("chart written to"),
        "{}",
        stdout(&output)
    );

    let text = std::fs::read_to_string(&chart_path).expect("chart written");
    let svg = roxmltree::Document::parse(&text).expect("the chart is well-formed XML");
    let root = svg.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    let labels: Vec<&str> = svg
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    for series in ["p50", "p99", "sent (achieved rate)", "answered"] {
        assert!(
            labels.contains(&series),
            "no legend {series:?} in {labels:?}"
        );
    }
    // A series with at least one point per second of the run is drawn as a polyline.
    let series_lines = svg
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .filter(|n| {
            n.attribute("points")
                .is_some_and(|p| p.split_whitespace().count() >= 3)
        })
        .count();
    assert!(series_lines >= 4, "{series_lines} series lines in {text}");

    // The same seconds are in the JSON report, and they add up to the run.
    let seconds = report["per_second"].as_array().expect("per_second list");
    assert!(seconds.len() >= 3, "{seconds:?}");
    let sent: u64 = seconds.iter().filter_map(|s| s["sent"].as_u64()).sum();
    assert_eq!(Some(sent), report["sent"].as_u64());
    assert!(
        seconds
            .iter()
            .all(|s| s["p99_ms"].as_f64() >= s["p50_ms"].as_f64())
    );
}
