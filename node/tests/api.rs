//! The node over HTTP: the ticket API, its error table, idempotency, HEAD, a missing store
//! and graceful shutdown. `node::run` serves in-process on port 0; the SIGTERM test starts
//! the binary, since the process is the point there.

use cluster::{
    Answer, HttpClient, Medium, MediumKind, TestMedium, seed_medium, seed_store, start_node,
};
use hyper::StatusCode;
use node::NodeSettings;
use serde_json::json;
use tokio::sync::oneshot;

/// A node serving in this test's runtime; it stops when the fixture is dropped.
struct Fixture {
    _store: TestMedium,
    url: String,
    http: HttpClient,
    _stop: oneshot::Sender<()>,
}

/// Serves the store in `medium` with `node::run` on a free loopback port, as node `n1`.
async fn serve(medium: &Medium) -> (String, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (data, database) = match medium {
        Medium::Files(dir) => (Some(dir.clone()), None),
        Medium::Postgres(url) => (None, Some(url.clone())),
    };
    let settings = NodeSettings {
        id: "n1".into(),
        data,
        database,
        ..NodeSettings::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        node::run(listener, settings, async {
            let _ = stopped.await;
        })
        .await
        .expect("node runs");
    });
    (url, stop)
}

impl Fixture {
    async fn get(&self, path: &str) -> Answer {
        let url = format!("{}{path}", self.url);
        self.http.get(&url).await.expect("answer")
    }

    /// A request with no body.
    async fn send(&self, method: hyper::Method, path: &str) -> Answer {
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        let answer = self
            .http
            .send(request.body(Default::default()).expect("request"))
            .await;
        answer.expect("answer")
    }

    /// POSTs `body` as JSON to /purchases, as it is.
    async fn post_purchase(&self, body: &str) -> Answer {
        let url = format!("{}/purchases", self.url);
        let body = body.as_bytes().to_vec();
        let answer = self
            .http
            .post_raw(&url, "application/json", body, None)
            .await;
        answer.expect("answer")
    }

    async fn buy(&self, event: &str, quantity: u32, key: Option<&str>) -> Answer {
        let answer = self.http.buy(&self.url, event, quantity, key).await;
        answer.expect("answer")
    }
}

/// The value of `field` in each item of a listing's JSON array.
fn field_of_each(list: &serde_json::Value, field: &str) -> Vec<serde_json::Value> {
    let items = list.as_array().expect("list");
    items.iter().map(|item| item[field].clone()).collect()
}

/// A node on a file store.
async fn start() -> Fixture {
    start_on(MediumKind::Files).await
}

/// A node on a store of `kind`, seeded with 5 concert and 2 theater tickets.
async fn start_on(kind: MediumKind) -> Fixture {
    let store =
        TestMedium::seeded(kind, &[("concert", 5, 1500), ("theater-show", 2, 4000)]).expect("seed");
    let (url, stop) = serve(&store.medium).await;
    Fixture {
        _store: store,
        url,
        http: HttpClient::new(),
        _stop: stop,
    }
}

#[tokio::test]
async fn a_purchase_is_committed_and_visible_everywhere_in_the_api() {
    for kind in [MediumKind::Files, MediumKind::Postgres] {
        let f = start_on(kind).await;
        let bought = f.buy("concert", 2, None).await;
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

        // Read back: the same purchase, without the secret, which only the 201 answers.
        let fetched = f.get(&format!("/purchases/{id}")).await;
        assert_eq!(fetched.status, StatusCode::OK);
        let mut public = body.clone();
        let secret = public
            .as_object_mut()
            .and_then(|fields| fields.remove("secret"));
        assert!(secret.is_some_and(|s| s.as_str().is_some_and(|s| s.len() == 32)));
        assert_eq!(fetched.json(), public);

        let ticket = f.get("/tickets/1").await;
        assert_eq!(
            ticket.json(),
            json!({"id": 1, "event": "concert", "price_cents": 1500, "sold": true, "status": "sold"})
        );

        let event = f.get("/events/concert").await;
        assert_eq!(
            event.json(),
            json!({"event": "concert", "total": 5, "available": 3, "sold": 2, "held": 0, "min_price_cents": 1500, "max_price_cents": 1500})
        );

        let events = f.get("/events").await;
        let names = field_of_each(&events.json(), "event");
        assert_eq!(names, [json!("concert"), json!("theater-show")]);

        let unsold = f.get("/tickets?event=concert&sold=false").await;
        let ids = field_of_each(&unsold.json(), "id");
        assert_eq!(ids, [json!(3), json!(4), json!(5)]);

        let purchases = f.get("/purchases?event=concert").await;
        assert_eq!(purchases.json(), json!([public]));
        let none = f.get("/purchases?event=theater-show").await;
        assert_eq!(none.json(), json!([]));
    }
}

#[tokio::test]
async fn a_purchase_is_all_or_nothing_and_sold_out_says_what_is_left() {
    for kind in [MediumKind::Files, MediumKind::Postgres] {
        let f = start_on(kind).await;
        let too_many = f.buy("theater-show", 3, None).await;
        assert_eq!(too_many.status, StatusCode::CONFLICT);
        assert_eq!(too_many.error_code().as_deref(), Some("sold_out"));
        assert_eq!(too_many.json()["available"], 2);
        let all = f.buy("theater-show", 2, None).await;
        assert_eq!(all.status, StatusCode::CREATED);
        let after = f.buy("theater-show", 1, None).await;
        assert_eq!(after.status, StatusCode::CONFLICT);
        assert_eq!(after.json()["available"], 0);
    }
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_purchase_and_sells_nothing_more() {
    for kind in [MediumKind::Files, MediumKind::Postgres] {
        let f = start_on(kind).await;
        let first = f.buy("concert", 1, Some("key-1")).await;
        let again = f.buy("concert", 1, Some("key-1")).await;
        assert_eq!(first.status, StatusCode::CREATED);
        assert_eq!(again.status, StatusCode::CREATED);
        assert_eq!(first.json(), again.json());
        let event = f.get("/events/concert").await;
        assert_eq!(event.json()["sold"], 1);

        let reused = f.buy("concert", 2, Some("key-1")).await;
        assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            reused.error_code().as_deref(),
            Some("idempotency_key_reused")
        );
    }
}

#[tokio::test]
async fn bad_input_gets_the_specified_status_and_code_and_never_a_5xx() {
    let f = start().await;
    let purchases = format!("{}/purchases", f.url);
    // Each is 400 bad_request, but for the last, a well-formed purchase of an unknown event.
    let bad_bodies = [
        "{",
        "",
        "[1,2]",
        r#"{"event":"concert"}"#,
        r#"{"quantity":1}"#,
        r#"{"event":"concert","quantity":0}"#,
        r#"{"event":"concert","quantity":-1}"#,
        r#"{"event":"concert","quantity":11}"#,
        r#"{"event":"concert","quantity":1.5}"#,
        r#"{"event":"concert","quantity":1e40}"#,
        r#"{"event":"concert","quantity":"2"}"#,
        r#"{"event":"concert","quantity":1,"vip":true}"#,
        r#"{"event":"concert","quantity":1,"quantity":2}"#,
        r#"{"event":"../etc","quantity":1}"#,
        r#"{"event":"a/b","quantity":1}"#,
        r#"{"event":"caf\u00e9","quantity":1}"#,
        r#"{"event":"tab\t","quantity":1}"#,
    ];
    let json_cases = bad_bodies
        .iter()
        .map(|body| (*body, StatusCode::BAD_REQUEST, "bad_request"))
        .chain([(
            r#"{"event":"opera","quantity":1}"#,
            StatusCode::NOT_FOUND,
            "unknown_event",
        )]);
    for (body, status, code) in json_cases {
        let answer = f.post_purchase(body).await;
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
    let answer = f.post_purchase(&long_name).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);

    let huge = format!(
        r#"{{"event":"concert","quantity":1,"pad":"{}"}}"#,
        "x".repeat(20_000)
    );
    let answer = f.post_purchase(&huge).await;
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
        let answer = f.get(&path).await;
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
    let event = f.get("/events/concert").await;
    assert_eq!(event.json()["sold"], 0);
}

#[tokio::test]
async fn a_missing_store_answers_503_until_it_is_seeded() {
    for kind in [MediumKind::Files, MediumKind::Postgres] {
        let store = TestMedium::new(kind).expect("an empty place");
        let (url, _stop) = serve(&store.medium).await;
        let http = HttpClient::new();
        let health = http.get(&format!("{url}/health")).await.expect("answer");
        assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE, "{kind:?}");
        assert_eq!(health.error_code().as_deref(), Some("store_unavailable"));
        let buy = http.buy(&url, "concert", 1, None).await.expect("answer");
        assert_eq!(buy.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            buy.json()["message"]
                .as_str()
                .is_some_and(|m| m.contains("seed")),
            "{kind:?}: {:?}",
            buy.json()
        );

        seed_medium(&store.medium, &[("concert", 1, 100)]).expect("seed");
        let health = http.get(&format!("{url}/health")).await.expect("answer");
        assert_eq!(health.status, StatusCode::OK, "{kind:?}");
        assert_eq!(health.json(), json!({"status": "ok", "node": "n1"}));
    }
}

#[tokio::test]
async fn metrics_count_requests_in_prometheus_text() {
    let f = start().await;
    f.get("/events").await;
    f.buy("concert", 1, None).await;
    let metrics = f.get("/metrics").await;
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
async fn sigterm_stops_the_node_process_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed_store(dir.path(), &[("concert", 1, 100)]).expect("seed");
    let mut node = start_node("n1", dir.path()).expect("node starts");
    let health = HttpClient::new()
        .get(&format!("{}/health", node.url()))
        .await
        .expect("answer");
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(node.terminate().expect("terminates"), Some(0));
}

#[tokio::test]
async fn head_answers_every_get_route_with_its_status_and_headers_and_no_body() {
    let f = start().await;
    let bought = f.buy("concert", 1, None).await;
    let id = bought.json()["purchase_id"]
        .as_str()
        .expect("purchase id")
        .to_owned();
    let paths = [
        "/health".to_owned(),
        "/metrics".to_owned(),
        "/events".to_owned(),
        "/events/concert".to_owned(),
        "/events/opera".to_owned(),
        "/tickets?event=concert".to_owned(),
        "/tickets?sold=maybe".to_owned(),
        "/tickets/1".to_owned(),
        "/purchases".to_owned(),
        format!("/purchases/{id}"),
        "/nowhere".to_owned(),
    ];
    for path in paths {
        let url = format!("{}{path}", f.url);
        let get = f.http.get(&url).await.expect("GET answer");
        let head = f.http.head(&url).await.expect("HEAD answer");
        assert_eq!(head.status, get.status, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} sent a body");
        for name in ["content-type", "x-node"] {
            assert_eq!(
                head.headers.get(name),
                get.headers.get(name),
                "{name} of HEAD {path}"
            );
        }
        // /metrics changes between the two calls (it counts them), and a 404 names the
        // method; the rest must not change.
        if path != "/metrics" && path != "/nowhere" {
            assert_eq!(
                head.headers.get("content-length"),
                get.headers.get("content-length"),
                "content-length of HEAD {path}"
            );
        }
    }
    let head_purchases = f.send(hyper::Method::HEAD, "/purchases").await;
    assert_eq!(head_purchases.status, StatusCode::OK);
    let delete = f.send(hyper::Method::DELETE, "/purchases").await;
    assert_eq!(delete.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(delete.headers["allow"], "GET, HEAD, POST");
}

#[tokio::test]
async fn a_body_naming_a_field_twice_is_refused_and_sells_nothing() {
    let f = start().await;
    for body in [
        r#"{"event":"concert","quantity":1,"quantity":5}"#,
        r#"{"event":"theater-show","event":"concert","quantity":1}"#,
    ] {
        let answer = f.post_purchase(body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.error_code().as_deref(), Some("bad_request"));
        let message = answer.json()["message"].as_str().unwrap_or("").to_owned();
        assert!(message.contains("duplicate field"), "{message}");
    }
    let duplicated_query = f
        .http
        .get(&format!(
            "{}/tickets?event=concert&event=theater-show",
            f.url
        ))
        .await
        .expect("answer");
    assert_eq!(duplicated_query.status, StatusCode::BAD_REQUEST);
    let events = f.get("/events").await;
    assert!(
        events
            .json()
            .as_array()
            .expect("list")
            .iter()
            .all(|e| e["sold"] == 0)
    );
}
