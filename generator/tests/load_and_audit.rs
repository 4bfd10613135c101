//! `generator load` and `generator audit` run as real processes against the fake ticket
//! server of `common`, on 127.0.0.1 only.

mod common;

use common::{
    FakeServer, State, generator, generator_with_env, live_inventory, load_with_report, stderr,
    stdout,
};
use serde_json::Value;
use shared::api::{EventBody, PurchaseBody, PurchasedTicketBody, TicketBody, TicketStatus};

#[tokio::test]
async fn load_until_sold_out_stops_when_every_event_sold_out_and_reports_json() {
    let fake = FakeServer::start(live_inventory(15)).await;
    let (output, report) = load_with_report(
        &fake.url(),
        &[
            "--rate",
            "200",
            "--until-sold-out",
            "--arrivals",
            "poisson",
            "--seed",
            "5",
            "--no-progress",
        ],
    )
    .await;
    assert!(
        fake.tickets().iter().all(|t| t.sold),
        "the fake still has tickets"
    );
    assert!(
        stdout(&output).contains("every event sold out"),
        "{}",
        stdout(&output)
    );

    assert_eq!(report["stopped_because"], "sold_out");
    assert_eq!(report["tickets_sold"], 60);
    assert_eq!(report["errors_total"], 0);
    assert_eq!(report["arrivals"], "poisson");
    assert_eq!(report["seed"], 5);
    let mut sold_out: Vec<&str> = report["events_sold_out"]
        .as_array()
        .expect("a list of events")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    sold_out.sort_unstable();
    assert_eq!(
        sold_out,
        ["concert", "movie-premiere", "sports-game", "theater-show"]
    );
    let sent = report["sent"].as_u64().expect("sent is a count");
    let purchases = report["purchases"].as_u64().expect("purchases is a count");
    let sold_out_answers = report["sold_out"].as_u64().expect("sold_out is a count");
    assert_eq!(report["completed"].as_u64(), Some(sent));
    assert_eq!(purchases + sold_out_answers, sent);
    for field in ["count", "mean", "p50", "p90", "p99", "p999", "max"] {
        assert!(
            report["latency_ms"][field].is_number(),
            "latency_ms.{field} missing"
        );
    }
    for field in [
        "achieved_rate",
        "sending_seconds",
        "elapsed_seconds",
        "rate",
    ] {
        assert!(report[field].is_number(), "{field} missing");
    }
    let nodes = report["nodes"].as_object().expect("nodes is an object");
    assert!(
        nodes.contains_key("fake-a") && nodes.contains_key("fake-b"),
        "{nodes:?}"
    );
    assert_eq!(nodes.values().filter_map(Value::as_u64).sum::<u64>(), sent);
}

#[tokio::test]
async fn load_with_a_duration_stops_sending_when_it_elapses() {
    let fake = FakeServer::start(live_inventory(10_000)).await;
    let (_, report) = load_with_report(&fake.url(), &["--rate", "40", "--duration", "300ms"]).await;
    assert_eq!(report["stopped_because"], "duration");
    assert_eq!(report["arrivals"], "steady");
    assert!(report["sent"].as_u64().is_some_and(|n| n >= 1));
    let sold: usize = fake.tickets().iter().filter(|t| t.sold).count();
    assert_eq!(report["tickets_sold"].as_u64(), Some(sold as u64));
}

#[tokio::test]
async fn lost_answers_are_retried_with_the_same_idempotency_key() {
    // Every purchase sells on its first attempt but that answer is lost (503); only a
    // retry with the same key learns the outcome, and a new key would be lost again.
    let fake = FakeServer::start_losing_first_answers(live_inventory(10)).await;
    let (_, report) = load_with_report(
        &fake.url(),
        &["--rate", "100", "--until-sold-out", "--no-progress"],
    )
    .await;
    assert_eq!(report["errors_total"], 0, "{report}");
    assert_eq!(
        report["tickets_sold"], 40,
        "each sale counted once: {report}"
    );
    assert!(report["retries"].as_u64().is_some_and(|n| n >= 1));
}

#[tokio::test]
async fn audit_passes_a_consistent_inventory_after_a_load() {
    let fake = FakeServer::start(live_inventory(8)).await;
    let load = generator(&[
        "load",
        "--target",
        &fake.url(),
        "--rate",
        "100",
        "--until-sold-out",
        "--no-progress",
    ])
    .await;
    assert!(load.status.success(), "load failed: {}", stderr(&load));
    // The target may also come from the environment.
    let output =
        generator_with_env(&["audit"], &[("TICKETS_GENERATOR__TARGET", &fake.url())]).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(
        stdout(&output).contains("no violations"),
        "{}",
        stdout(&output)
    );
}

fn ticket(id: u64, sold: bool) -> TicketBody {
    TicketBody {
        id,
        event: "concert".into(),
        price_cents: 1_000,
        sold,
        status: if sold {
            TicketStatus::Sold
        } else {
            TicketStatus::Available
        },
    }
}

fn purchase(id: &str, tickets: &[u64]) -> PurchaseBody {
    PurchaseBody {
        purchase_id: id.into(),
        event: "concert".into(),
        quantity: tickets.len() as u32,
        tickets: tickets
            .iter()
            .map(|&id| PurchasedTicketBody {
                id,
                price_cents: 1_000,
            })
            .collect(),
        total_cents: 1_000 * tickets.len() as u64,
        node: "fake-a".into(),
        created_at: "2024-01-01T00:00:00.000Z".into(),
        customer: None,
        hold_id: None,
        cancelled_at: None,
        secret: None,
    }
}

#[tokio::test]
async fn audit_reads_the_listings_a_page_at_a_time() {
    // 10,400 tickets: more than one page of 10,000.
    let fake = FakeServer::start(live_inventory(2_600)).await;
    let output = generator(&["audit", "--target", &fake.url()]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("10400 tickets"),
        "{}",
        stdout(&output)
    );
    let ticket_reads: Vec<String> = fake
        .gets()
        .into_iter()
        .filter(|g| g.starts_with("/tickets"))
        .collect();
    assert_eq!(
        ticket_reads,
        ["/tickets?limit=10000", "/tickets?limit=10000&after=10000"]
    );
    assert!(
        fake.gets()
            .iter()
            .filter(|g| g.starts_with("/purchases"))
            .all(|g| g == "/purchases?limit=10000"),
        "{:?}",
        fake.gets()
    );
}

#[tokio::test]
async fn audit_fails_when_a_ticket_is_in_two_purchases() {
    let fake = FakeServer::start(State::Fixed {
        tickets: vec![ticket(1, true), ticket(2, true), ticket(3, false)],
        events: vec![EventBody {
            event: "concert".into(),
            total: 3,
            available: 1,
            sold: 2,
            held: 0,
            min_price_cents: 1_000,
            max_price_cents: 1_000,
            max_per_customer: None,
        }],
        purchases: vec![purchase("p-1", &[1, 2]), purchase("p-2", &[2])],
    })
    .await;
    let output = generator(&["audit", "--target", &fake.url()]).await;
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let text = stdout(&output);
    assert!(text.contains("ticket 2 was sold more than once"), "{text}");
    assert!(text.contains("p-1, p-2"), "{text}");
}

#[tokio::test]
async fn audit_of_an_unreachable_target_is_an_error_not_a_verdict() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let output = generator(&[
        "audit",
        "--target",
        &format!("http://{closed}"),
        "--timeout",
        "2s",
    ])
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("cannot connect"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn the_target_can_come_from_a_config_file() {
    let fake = FakeServer::start(live_inventory(2)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("generator.toml");
    std::fs::write(
        &config,
        format!(
            "[generator]\ntarget = \"{}\"\nrequest_timeout = \"3s\"\n",
            fake.url()
        ),
    )
    .expect("config written");
    let config_arg = config.to_string_lossy().into_owned();
    let output = generator(&["audit", "--config", &config_arg]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains(&fake.url()), "{}", stdout(&output));
}
