//! The node binary over HTTP: the ticket API, its error table, idempotency, a missing
//! store and graceful shutdown.

use cluster::{HttpClient, Process, seed_store, start_node};
use hyper::StatusCode;
use serde_json::json;

struct Fixture {
    _dir: tempfile::TempDir,
    node: Process,
    url: String,
    http: HttpClient,
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    seed_store(
        dir.path(),
        &[("concert", 5, 1500), ("theater-show", 2, 4000)],
    )
    .expect("seed");
    let node = start_node("n1", dir.path()).expect("node starts");
    let url = node.url();
    Fixture {
        _dir: dir,
        node,
        url,
        http: HttpClient::new(),
    }
}

#[tokio::test]
async fn a_purchase_is_committed_and_visible_everywhere_in_the_api() {
    let f = start();
    let bought = f
        .http
        .buy(&f.url, "concert", 2, None)
        .await
        .expect("answer");
    assert_eq!(bought.status, StatusCode::CREATED, "{:?}", bought.json());
    let body = bought.json();
    assert_eq!(body["event"], "concert");
    assert_eq!(body["quantity"], 2);
    assert_eq!(body["total_cents"], 3000);
    assert_eq!(body["node"], "n1");
    assert_eq!(
        body["tickets"],
        json!([{"id": 1, "price_cents": 1500}, {"id": 2, "price_cents": 1500}])
    );
    assert!(
        body["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let id = body["purchase_id"].as_str().expect("purchase id");

    let fetched = f
        .http
        .get(&format!("{}/purchases/{id}", f.url))
        .await
        .expect("answer");
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.json(), body);

    let ticket = f
        .http
        .get(&format!("{}/tickets/1", f.url))
        .await
        .expect("answer");
    assert_eq!(
        ticket.json(),
        json!({"id": 1, "event": "concert", "price_cents": 1500, "sold": true, "status": "sold"})
    );

    let event = f
        .http
        .get(&format!("{}/events/concert", f.url))
        .await
        .expect("answer");
    assert_eq!(
        event.json(),
        json!({"event": "concert", "total": 5, "available": 3, "sold": 2, "held": 0, "min_price_cents": 1500, "max_price_cents": 1500})
    );

    let events = f
        .http
        .get(&format!("{}/events", f.url))
        .await
        .expect("answer");
    let names: Vec<_> = events
        .json()
        .as_array()
        .expect("list")
        .iter()
        .map(|e| e["event"].clone())
        .collect();
    assert_eq!(names, [json!("concert"), json!("theater-show")]);

    let unsold = f
        .http
        .get(&format!("{}/tickets?event=concert&sold=false", f.url))
        .await
        .expect("answer");
    let ids: Vec<_> = unsold
        .json()
        .as_array()
        .expect("list")
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    assert_eq!(ids, [json!(3), json!(4), json!(5)]);

    let purchases = f
        .http
        .get(&format!("{}/purchases?event=concert", f.url))
        .await
        .expect("answer");
    assert_eq!(purchases.json(), json!([body]));
    let none = f
        .http
        .get(&format!("{}/purchases?event=theater-show", f.url))
        .await
        .expect("answer");
    assert_eq!(none.json(), json!([]));
}

#[tokio::test]
async fn a_purchase_is_all_or_nothing_and_sold_out_says_what_is_left() {
    let f = start();
    let too_many = f
        .http
        .buy(&f.url, "theater-show", 3, None)
        .await
        .expect("answer");
    assert_eq!(too_many.status, StatusCode::CONFLICT);
    assert_eq!(too_many.error_code().as_deref(), Some("sold_out"));
    assert_eq!(too_many.json()["available"], 2);
    let all = f
        .http
        .buy(&f.url, "theater-show", 2, None)
        .await
        .expect("answer");
    assert_eq!(all.status, StatusCode::CREATED);
    let after = f
        .http
        .buy(&f.url, "theater-show", 1, None)
        .await
        .expect("answer");
    assert_eq!(after.status, StatusCode::CONFLICT);
    assert_eq!(after.json()["available"], 0);
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_purchase_and_sells_nothing_more() {
    let f = start();
    let first = f
        .http
        .buy(&f.url, "concert", 1, Some("key-1"))
        .await
        .expect("answer");
    let again = f
        .http
        .buy(&f.url, "concert", 1, Some("key-1"))
        .await
        .expect("answer");
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(first.json(), again.json());
    let event = f
        .http
        .get(&format!("{}/events/concert", f.url))
        .await
        .expect("answer");
    assert_eq!(event.json()["sold"], 1);

    let reused = f
        .http
        .buy(&f.url, "concert", 2, Some("key-1"))
        .await
        .expect("answer");
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reused.error_code().as_deref(),
        Some("idempotency_key_reused")
    );
}

#[tokio::test]
async fn bad_input_gets_the_specified_status_and_code_and_never_a_5xx() {
    let f = start();
    let purchases = format!("{}/purchases", f.url);
    let json_cases: Vec<(&str, StatusCode, &str)> = vec![
        ("{", StatusCode::BAD_REQUEST, "bad_request"),
        ("", StatusCode::BAD_REQUEST, "bad_request"),
        ("[1,2]", StatusCode::BAD_REQUEST, "bad_request"),
        (
            r#"{"event":"concert"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (r#"{"quantity":1}"#, StatusCode::BAD_REQUEST, "bad_request"),
        (
            r#"{"event":"concert","quantity":0}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"event":"concert","quantity":-1}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"event":"concert","quantity":11}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"event":"concert","quantity":1.5}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"event":"concert","quantity":1e40}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"event":"concert","quantity":"2"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"event":"concert","quantity":1,"vip":true}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"event":"../etc","quantity":1}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"event":"a/b","quantity":1}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"event":"caf\u00e9","quantity":1}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"event":"tab\t","quantity":1}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"event":"opera","quantity":1}"#,
            StatusCode::NOT_FOUND,
            "unknown_event",
        ),
    ];
    for (body, status, code) in json_cases {
        let answer = f
            .http
            .post_raw(
                &purchases,
                "application/json",
                body.as_bytes().to_vec(),
                None,
            )
            .await
            .expect("answer");
        assert_eq!(
            (answer.status, answer.error_code().as_deref()),
            (status, Some(code)),
            "body {body:?}"
        );
        assert!(
            answer.json()["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let long_name = format!(r#"{{"event":"{}","quantity":1}}"#, "a".repeat(65));
    let answer = f
        .http
        .post_raw(&purchases, "application/json", long_name.into_bytes(), None)
        .await
        .expect("answer");
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);

    let huge = format!(
        r#"{{"event":"concert","quantity":1,"pad":"{}"}}"#,
        "x".repeat(20_000)
    );
    let answer = f
        .http
        .post_raw(&purchases, "application/json", huge.into_bytes(), None)
        .await
        .expect("answer");
    assert_eq!(
        (answer.status, answer.error_code().as_deref()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );

    let body = br#"{"event":"concert","quantity":1}"#.to_vec();
    let answer = f
        .http
        .post_raw(&purchases, "text/plain", body.clone(), None)
        .await
        .expect("answer");
    assert_eq!(
        (answer.status, answer.error_code().as_deref()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );

    let long_key = "k".repeat(129);
    let answer = f
        .http
        .post_raw(
            &purchases,
            "application/json",
            body.clone(),
            Some(&long_key),
        )
        .await
        .expect("answer");
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);

    let get_cases: Vec<(String, StatusCode, &str)> = vec![
        (
            "/tickets/abc".into(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("/tickets/-1".into(), StatusCode::BAD_REQUEST, "bad_request"),
        (
            "/tickets/99999999999999999999999".into(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/tickets/999".into(),
            StatusCode::NOT_FOUND,
            "unknown_ticket",
        ),
        (
            "/tickets?sold=maybe".into(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/tickets?event=NOPE".into(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/events/opera".into(),
            StatusCode::NOT_FOUND,
            "unknown_event",
        ),
        (
            "/events/%2e%2e".into(),
            StatusCode::NOT_FOUND,
            "unknown_event",
        ),
        (
            "/purchases/p-nope".into(),
            StatusCode::NOT_FOUND,
            "unknown_purchase",
        ),
        ("/nowhere".into(), StatusCode::NOT_FOUND, "not_found"),
    ];
    for (path, status, code) in get_cases {
        let answer = f
            .http
            .get(&format!("{}{path}", f.url))
            .await
            .expect("answer");
        assert_eq!(
            (answer.status, answer.error_code().as_deref()),
            (status, Some(code)),
            "GET {path}"
        );
        assert_eq!(answer.node().as_deref(), Some("n1"), "X-Node on GET {path}");
    }

    let answer = f
        .http
        .post_raw(
            &format!("{}/events", f.url),
            "application/json",
            b"{}".to_vec(),
            None,
        )
        .await
        .expect("answer");
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(answer.headers.contains_key("allow"));

    // After all that, nothing was sold.
    let event = f
        .http
        .get(&format!("{}/events/concert", f.url))
        .await
        .expect("answer");
    assert_eq!(event.json()["sold"], 0);
}

#[tokio::test]
async fn a_missing_store_answers_503_until_it_is_seeded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node("n1", dir.path()).expect("node starts without a store");
    let http = HttpClient::new();
    let health = http
        .get(&format!("{}/health", node.url()))
        .await
        .expect("answer");
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.error_code().as_deref(), Some("store_unavailable"));
    let buy = http
        .buy(&node.url(), "concert", 1, None)
        .await
        .expect("answer");
    assert_eq!(buy.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        buy.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("seed"))
    );

    seed_store(dir.path(), &[("concert", 1, 100)]).expect("seed");
    let health = http
        .get(&format!("{}/health", node.url()))
        .await
        .expect("answer");
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json(), json!({"status": "ok", "node": "n1"}));
}

#[tokio::test]
async fn metrics_count_requests_in_prometheus_text() {
    let f = start();
    f.http
        .get(&format!("{}/events", f.url))
        .await
        .expect("answer");
    f.http
        .buy(&f.url, "concert", 1, None)
        .await
        .expect("answer");
    let metrics = f
        .http
        .get(&format!("{}/metrics", f.url))
        .await
        .expect("answer");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(
            "tickets_http_requests_total{node=\"n1\",route=\"GET /events\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("tickets_purchases_committed_total{node=\"n1\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn sigterm_stops_the_node_cleanly() {
    let mut f = start();
    f.http
        .get(&format!("{}/health", f.url))
        .await
        .expect("answer");
    let code = f.node.terminate().expect("terminates");
    assert_eq!(code, Some(0));
}
