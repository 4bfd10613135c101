//! The box office against the real binaries (the contract's "Seats, holds and
//! cancellations"): seats, customers and their limit, holds that expire, confirmations,
//! releases and cancellations, and who may change what, through nodes and the balancer.
//! The races send the two sides of each conflict through different nodes of one store and
//! check that nothing is sold twice and no limit is passed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cluster::{Answer, HttpClient, MediumKind, Process, TestMedium, start_node_on};
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};

/// The operator's token every node of these tests is given.
const TOKEN: &str = "box-office-operator-token-0001";

/// Nodes on one store with the operator's token set, and a balancer in front.
struct BoxOffice {
    _store: TestMedium,
    nodes: Vec<Process>,
    balancer: Process,
    http: HttpClient,
}

impl BoxOffice {
    /// `nodes` nodes over a store seeded with `events` (`(event, tickets, price)`), each
    /// event limited to `max_per_customer` tickets per customer when given.
    fn start(
        kind: MediumKind,
        nodes: usize,
        events: &[(&str, u64, u64)],
        max_per_customer: Option<u32>,
    ) -> Self {
        Self::with_clocks(kind, &vec![None; nodes], events, max_per_customer)
    }

    /// As `start`, one node per entry of `clocks`, each with its clock set that far ahead
    /// (`clock_ahead`) when given.
    fn with_clocks(
        kind: MediumKind,
        clocks: &[Option<&str>],
        events: &[(&str, u64, u64)],
        max_per_customer: Option<u32>,
    ) -> Self {
        let store = TestMedium::new(kind).expect("a place for the store");
        cluster::seed_medium_with_limit(&store.medium, events, max_per_customer).expect("seed");
        let nodes: Vec<Process> = clocks
            .iter()
            .enumerate()
            .map(|(i, ahead)| {
                let mut env = vec![("TICKETS_NODE__ADMIN_TOKEN", TOKEN)];
                if let Some(ahead) = ahead {
                    env.push(("TICKETS_NODE__CLOCK_AHEAD", ahead));
                }
                start_node_on(&format!("n{}", i + 1), &store.medium, "127.0.0.1:0", &env)
                    .expect("node starts")
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
        let args = [
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--nodes".to_owned(),
            addresses.join(","),
        ];
        let balancer = Process::start("balancer", "balancer", &args).expect("balancer starts");
        Self {
            _store: store,
            nodes,
            balancer,
            http: HttpClient::new(),
        }
    }

    /// Node `i`'s URL, round the nodes.
    fn node(&self, i: usize) -> String {
        self.nodes[i % self.nodes.len()].url()
    }

    /// Every way in: each node, then the balancer.
    fn every_url(&self) -> Vec<String> {
        let mut urls: Vec<String> = self.nodes.iter().map(Process::url).collect();
        urls.push(self.balancer.url());
        urls
    }

    async fn call(&self, call: Call<'_>) -> Answer {
        send(&self.http, call).await
    }

    /// Asks for the seats `tickets` of `event` at `url` (a node's purchases or holds).
    async fn take_seats(&self, url: String, event: &str, tickets: &[u64]) -> Answer {
        self.call(post(url, Some(seats_body(event, tickets)))).await
    }
}

/// How a request proves who it is.
#[derive(Debug, Clone, Copy)]
enum As<'a> {
    Nobody,
    Secret(&'a str),
    Token(&'a str),
}

/// One request: method, URL, JSON body, credentials, idempotency key.
#[derive(Debug, Clone)]
struct Call<'a> {
    method: Method,
    url: String,
    body: Option<Value>,
    who: As<'a>,
    key: Option<String>,
}

fn get(url: String) -> Call<'static> {
    Call {
        method: Method::GET,
        url,
        body: None,
        who: As::Nobody,
        key: None,
    }
}

/// A change without a body (a confirm, a release or a cancel) at `url`, by the holder of
/// `secret`, under the idempotency key `key`.
fn keyed_change<'a>(url: String, secret: &'a str, key: &str) -> Call<'a> {
    post(url, None).by(As::Secret(secret)).key(key)
}

fn post(url: String, body: Option<Value>) -> Call<'static> {
    Call {
        method: Method::POST,
        url,
        body,
        who: As::Nobody,
        key: None,
    }
}

impl<'a> Call<'a> {
    fn by(self, who: As<'a>) -> Self {
        Self { who, ..self }
    }

    fn key(self, key: &str) -> Self {
        Self {
            key: Some(key.to_owned()),
            ..self
        }
    }

    fn head(self) -> Self {
        Self {
            method: Method::HEAD,
            ..self
        }
    }
}

async fn send(http: &HttpClient, call: Call<'_>) -> Answer {
    let what = format!("{} {}", call.method, call.url);
    http.send(request(call))
        .await
        .unwrap_or_else(|err| panic!("{what}: no answer: {err:#}"))
}

fn request(call: Call<'_>) -> Request<Full<Bytes>> {
    let mut request = Request::builder()
        .method(call.method.clone())
        .uri(&call.url);
    match call.who {
        As::Nobody => {}
        As::Secret(secret) => request = request.header("x-ticket-secret", secret),
        As::Token(token) => request = request.header("authorization", format!("Bearer {token}")),
    }
    if let Some(key) = &call.key {
        request = request.header("idempotency-key", key);
    }
    let body = match &call.body {
        Some(value) => {
            request = request.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(value).expect("serialisable"))
        }
        None if call.method == Method::POST => {
            request = request.header("content-type", "application/json");
            Bytes::new()
        }
        None => Bytes::new(),
    };
    request.body(Full::new(body)).expect("a request")
}

/// Asserts `answer` is `status` and returns its body.
#[track_caller]
fn expect(answer: &Answer, status: u16) -> Value {
    let body = answer.json();
    assert_eq!(answer.status.as_u16(), status, "{body}");
    body
}

/// Asserts `answer` is the error `code` with `status`, and returns its body.
#[track_caller]
fn refused(answer: &Answer, status: u16, code: &str) -> Value {
    let body = expect(answer, status);
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

fn ids(body: &Value) -> Vec<u64> {
    body["tickets"]
        .as_array()
        .map(|ts| ts.iter().filter_map(|t| t["id"].as_u64()).collect())
        .unwrap_or_default()
}

fn text<'v>(body: &'v Value, field: &str) -> &'v str {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not text in {body}"))
}

fn parse_time(text: &str) -> SystemTime {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"));
    SystemTime::UNIX_EPOCH + Duration::from_nanos(at.unix_timestamp_nanos() as u64)
}

fn hold_body(event: &str, quantity: u32, customer: Option<&str>, ttl: Option<u64>) -> Value {
    let mut body = json!({"event": event, "quantity": quantity});
    if let Some(customer) = customer {
        body["customer"] = json!(customer);
    }
    if let Some(ttl) = ttl {
        body["ttl_seconds"] = json!(ttl);
    }
    body
}

fn seats_body(event: &str, tickets: &[u64]) -> Value {
    json!({"event": event, "tickets": tickets})
}

/// The summary of `event` read at `base`.
async fn event(office: &BoxOffice, base: &str, event: &str) -> Value {
    expect(
        &office.call(get(format!("{base}/events/{event}"))).await,
        200,
    )
}

/// The `status` of every ticket of `event`, by id.
async fn statuses(office: &BoxOffice, base: &str, event: &str) -> BTreeMap<u64, String> {
    let list = expect(
        &office
            .call(get(format!("{base}/tickets?event={event}")))
            .await,
        200,
    );
    list.as_array()
        .expect("a list")
        .iter()
        .map(|t| {
            let status = text(t, "status").to_owned();
            assert_eq!(t["sold"], status == "sold", "{t}");
            (t["id"].as_u64().expect("an id"), status)
        })
        .collect()
}

/// Checks the event's counts against its tickets' statuses, on every way in.
async fn assert_counts_agree(office: &BoxOffice, name: &str) {
    for base in office.every_url() {
        let summary = event(office, &base, name).await;
        let statuses = statuses(office, &base, name).await;
        let count = |s: &str| statuses.values().filter(|v| *v == s).count() as u64;
        assert_eq!(summary["sold"], count("sold"), "{base}: {summary}");
        assert_eq!(summary["held"], count("held"), "{base}: {summary}");
        assert_eq!(
            summary["available"],
            count("available"),
            "{base}: {summary}"
        );
        assert_eq!(summary["total"], statuses.len() as u64, "{base}: {summary}");
    }
}

/// Runs `generator audit` through the balancer: the whole
/// state checked from outside against the contract's invariants.
fn audit(office: &BoxOffice) {
    let target = office.balancer.url();
    let (code, stdout, stderr) =
        cluster::run_generator(&["audit", "--target", &target]).expect("audit runs");
    assert_eq!(code, 0, "audit failed:\n{stdout}\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_is_made_read_confirmed_and_its_purchase_cancelled_through_different_nodes() {
    for kind in [MediumKind::Files, MediumKind::Postgres] {
        hold_confirm_cancel(kind).await;
    }
}

async fn hold_confirm_cancel(kind: MediumKind) {
    let office = BoxOffice::start(kind, 2, &[("concert", 10, 2500)], None);
    let (n1, n2, lb) = (office.node(0), office.node(1), office.balancer.url());

    let made = office
        .call(post(
            format!("{n1}/holds"),
            Some(hold_body("concert", 2, Some("ada@example.org"), Some(120))),
        ))
        .await;
    let hold = expect(&made, 201);
    let hold_id = text(&hold, "hold_id").to_owned();
    assert!(hold_id.starts_with("h-"), "{hold}");
    assert_eq!(hold["status"], "held");
    assert_eq!(hold["event"], "concert");
    assert_eq!(hold["quantity"], 2);
    assert_eq!(hold["total_cents"], 5000);
    assert_eq!(hold["customer"], "ada@example.org");
    assert_eq!(hold["node"], "n1");
    let secret = text(&hold, "secret").to_owned();
    assert!(
        secret.len() >= 32 && secret.bytes().all(|b| b.is_ascii_graphic()),
        "at least 128 bits: {secret}"
    );
    let lasts = parse_time(text(&hold, "expires_at"))
        .duration_since(parse_time(text(&hold, "created_at")))
        .expect("expires after it is made");
    assert_eq!(lasts, Duration::from_secs(120));
    let held = ids(&hold);

    // Held: counted as held on every node, each ticket's status says so.
    let summary = event(&office, &n2, "concert").await;
    assert_eq!(
        (summary["held"].as_u64(), summary["available"].as_u64()),
        (Some(2), Some(8))
    );
    let status = statuses(&office, &lb, "concert").await;
    for id in &held {
        assert_eq!(status[id], "held");
    }
    assert_counts_agree(&office, "concert").await;

    // Read back anywhere: no secret ever, the customer only with the secret or the token.
    let plain = expect(
        &office.call(get(format!("{n2}/holds/{hold_id}"))).await,
        200,
    );
    assert_eq!(plain["status"], "held");
    assert_eq!(ids(&plain), held);
    assert_eq!(plain["expires_at"], hold["expires_at"]);
    assert!(plain.get("customer").is_none_or(Value::is_null), "{plain}");
    assert!(plain.get("secret").is_none_or(Value::is_null), "{plain}");
    for who in [As::Secret(&secret), As::Token(TOKEN)] {
        let shown = expect(
            &office
                .call(get(format!("{lb}/holds/{hold_id}")).by(who))
                .await,
            200,
        );
        assert_eq!(shown["customer"], "ada@example.org", "{who:?}");
        assert!(shown.get("secret").is_none_or(Value::is_null), "{shown}");
    }
    let head = office
        .call(get(format!("{n1}/holds/{hold_id}")).head())
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());

    // Confirmed on the other node: a purchase of exactly the held tickets.
    let confirm = post(format!("{n2}/holds/{hold_id}/confirm"), None).by(As::Secret(&secret));
    let purchase = expect(&office.call(confirm.clone()).await, 201);
    let purchase_id = text(&purchase, "purchase_id").to_owned();
    assert_eq!(purchase["hold_id"], hold_id.as_str());
    assert_eq!(ids(&purchase), held);
    assert_eq!(purchase["total_cents"], 5000);
    // A repeat answers the same purchase.
    let again = expect(&office.call(confirm).await, 201);
    assert_eq!(again["purchase_id"], purchase_id.as_str());
    assert_eq!(ids(&again), held);
    let read = expect(
        &office.call(get(format!("{n1}/holds/{hold_id}"))).await,
        200,
    );
    assert_eq!(read["status"], "confirmed");
    assert_eq!(read["purchase_id"], purchase_id.as_str());
    let summary = event(&office, &n1, "concert").await;
    assert_eq!(
        (summary["held"].as_u64(), summary["sold"].as_u64()),
        (Some(0), Some(2))
    );
    assert_counts_agree(&office, "concert").await;
    // Confirmed, the hold can no longer be released.
    let release = post(format!("{n1}/holds/{hold_id}/release"), None).by(As::Token(TOKEN));
    refused(&office.call(release).await, 409, "hold_confirmed");

    // Cancelled through the balancer: its tickets are on sale at once, and it stays readable.
    let cancel = post(format!("{lb}/purchases/{purchase_id}/cancel"), None).by(As::Token(TOKEN));
    let cancelled = expect(&office.call(cancel.clone()).await, 200);
    assert_eq!(cancelled["purchase_id"], purchase_id.as_str());
    let at = text(&cancelled, "cancelled_at").to_owned();
    parse_time(&at);
    let repeat = expect(&office.call(cancel).await, 200);
    assert_eq!(repeat["cancelled_at"], at.as_str());
    let read = expect(
        &office
            .call(get(format!("{n2}/purchases/{purchase_id}")))
            .await,
        200,
    );
    assert_eq!(read["cancelled_at"], at.as_str());
    assert_eq!(read["hold_id"], hold_id.as_str());
    let status = statuses(&office, &n1, "concert").await;
    for id in &held {
        assert_eq!(status[id], "available");
    }
    let resold = office
        .take_seats(format!("{n1}/purchases"), "concert", &held)
        .await;
    assert_eq!(ids(&expect(&resold, 201)), held);
    assert_counts_agree(&office, "concert").await;

    // Holds page as purchases do: pages of two, put together, are the whole list.
    for _ in 0..4 {
        let url = format!("{n2}/holds");
        expect(
            &office
                .call(post(url, Some(hold_body("concert", 1, None, None))))
                .await,
            201,
        );
    }
    let whole = expect(&office.call(get(format!("{lb}/holds"))).await, 200);
    let whole: Vec<&str> = whole
        .as_array()
        .expect("a list")
        .iter()
        .map(|h| text(h, "hold_id"))
        .collect();
    assert_eq!(whole.len(), 5);
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = after
            .as_ref()
            .map_or(String::new(), |a| format!("&after={a}"));
        let page = expect(
            &office.call(get(format!("{lb}/holds?limit=2{query}"))).await,
            200,
        );
        paged.extend(
            page["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|h| text(h, "hold_id").to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, whole);
    let head = office.call(get(format!("{lb}/holds?limit=2")).head()).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    audit(&office);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seats_are_sold_and_held_all_or_nothing_and_a_released_hold_frees_them_at_once() {
    let office = BoxOffice::start(
        MediumKind::Files,
        2,
        &[("concert", 6, 1000), ("theater-show", 4, 700)],
        None,
    );
    let (n1, n2) = (office.node(0), office.node(1));
    let bought = office
        .take_seats(format!("{n1}/purchases"), "concert", &[2, 3])
        .await;
    let bought = expect(&bought, 201);
    assert_eq!(ids(&bought), [2, 3]);
    assert_eq!(bought["quantity"], 2);
    assert!(bought["secret"].as_str().is_some(), "{bought}");

    // One taken seat refuses the whole request and names the taken ones.
    let taken = office
        .take_seats(format!("{n2}/purchases"), "concert", &[1, 3, 2])
        .await;
    let body = refused(&taken, 409, "tickets_unavailable");
    let mut unavailable: Vec<u64> =
        serde_json::from_value(body["unavailable"].clone()).expect("a list of ids");
    unavailable.sort_unstable();
    assert_eq!(unavailable, [2, 3]);
    assert_eq!(statuses(&office, &n1, "concert").await[&1], "available");

    // Held seats are unavailable to others until released.
    let hold = office
        .take_seats(format!("{n2}/holds"), "concert", &[4, 5])
        .await;
    let hold = expect(&hold, 201);
    let (hold_id, secret) = (text(&hold, "hold_id"), text(&hold, "secret"));
    assert_eq!(ids(&hold), [4, 5]);
    let over = office
        .take_seats(format!("{n1}/holds"), "concert", &[5, 6])
        .await;
    assert_eq!(
        refused(&over, 409, "tickets_unavailable")["unavailable"],
        json!([5])
    );
    let release = post(format!("{n1}/holds/{hold_id}/release"), None).by(As::Secret(secret));
    let released = expect(&office.call(release.clone()).await, 200);
    assert_eq!(released["status"], "released");
    assert_eq!(
        expect(&office.call(release).await, 200)["status"],
        "released"
    );
    let confirm = post(format!("{n2}/holds/{hold_id}/confirm"), None).by(As::Secret(secret));
    refused(&office.call(confirm).await, 409, "hold_released");
    let now = office
        .take_seats(format!("{n2}/purchases"), "concert", &[5, 6])
        .await;
    assert_eq!(ids(&expect(&now, 201)), [5, 6]);

    // A seat of another event, or no ticket at all, is the client's mistake.
    for seats in [&[1u64, 7][..], &[99][..]] {
        for route in ["purchases", "holds"] {
            let wrong = office
                .take_seats(format!("{n1}/{route}"), "concert", seats)
                .await;
            refused(&wrong, 400, "bad_request");
        }
    }
    // By count, a hold takes what is left and no more.
    let rest = office
        .call(post(
            format!("{n1}/holds"),
            Some(hold_body("concert", 3, None, None)),
        ))
        .await;
    let body = refused(&rest, 409, "sold_out");
    assert_eq!(body["available"], 2, "tickets 1 and 4");
    assert_counts_agree(&office, "concert").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_secret_or_the_operators_token_changes_a_hold_or_purchase_or_shows_a_customer() {
    let office = BoxOffice::start(MediumKind::Files, 2, &[("concert", 20, 1000)], None);
    let (n1, n2, lb) = (office.node(0), office.node(1), office.balancer.url());
    let make = |path: &str, customer: &str| {
        let url = format!("{n1}/{path}");
        let body = hold_body("concert", 1, Some(customer), None);
        let office = &office;
        async move { expect(&office.call(post(url, Some(body))).await, 201) }
    };
    let hold = make("holds", "ada").await;
    let other = make("holds", "bob").await;
    let purchase = make("purchases", "ada").await;
    assert_eq!(purchase["customer"], "ada");
    let (hold_id, secret) = (text(&hold, "hold_id"), text(&hold, "secret"));
    let purchase_id = text(&purchase, "purchase_id");
    let purchase_secret = text(&purchase, "secret");
    assert_ne!(secret, purchase_secret);

    // Every change refused without the right credential, on every way in, changing nothing.
    let wrong_token = format!("{TOKEN}x");
    let wrongs = [
        As::Nobody,
        As::Secret("0123456789abcdef0123456789abcdef"),
        As::Secret(""),
        As::Secret(text(&other, "secret")),
        As::Token(&wrong_token),
        As::Token(secret),
    ];
    for base in office.every_url() {
        for who in wrongs {
            for path in [
                format!("holds/{hold_id}/confirm"),
                format!("holds/{hold_id}/release"),
            ] {
                let answer = office
                    .call(post(format!("{base}/{path}"), None).by(who))
                    .await;
                refused(&answer, 403, "forbidden");
            }
            let cancel = post(format!("{base}/purchases/{purchase_id}/cancel"), None).by(who);
            refused(&office.call(cancel).await, 403, "forbidden");
        }
        // A purchase's secret is not its hold's, nor the other way round.
        let cancel = post(format!("{base}/purchases/{purchase_id}/cancel"), None);
        refused(
            &office.call(cancel.by(As::Secret(secret))).await,
            403,
            "forbidden",
        );
        let confirm = post(format!("{base}/holds/{hold_id}/confirm"), None);
        let answer = office.call(confirm.by(As::Secret(purchase_secret))).await;
        refused(&answer, 403, "forbidden");
        // Listing by customer needs the token itself.
        for list in ["purchases", "holds"] {
            for who in [As::Nobody, As::Secret(secret), As::Token(&wrong_token)] {
                let url = format!("{base}/{list}?customer=ada");
                refused(&office.call(get(url).by(who)).await, 403, "forbidden");
            }
        }
    }
    assert_eq!(
        expect(
            &office.call(get(format!("{n2}/holds/{hold_id}"))).await,
            200
        )["status"],
        "held"
    );
    assert!(
        expect(
            &office
                .call(get(format!("{n2}/purchases/{purchase_id}")))
                .await,
            200
        )
        .get("cancelled_at")
        .is_none_or(Value::is_null)
    );

    // Customers are hidden from reads and lists without a credential, shown with one.
    let read = |url: String, who| {
        let office = &office;
        async move { expect(&office.call(get(url).by(who)).await, 200) }
    };
    for (url, right) in [
        (format!("{lb}/purchases/{purchase_id}"), purchase_secret),
        (format!("{lb}/holds/{hold_id}"), secret),
    ] {
        for who in wrongs {
            let body = read(url.clone(), who).await;
            assert!(
                body.get("customer").is_none_or(Value::is_null),
                "{who:?}: {body}"
            );
        }
        for who in [As::Secret(right), As::Token(TOKEN)] {
            assert_eq!(read(url.clone(), who).await["customer"], "ada", "{who:?}");
        }
    }
    for list in ["purchases", "holds"] {
        let all = read(format!("{n1}/{list}"), As::Nobody).await;
        for item in all.as_array().expect("a list") {
            assert!(item.get("customer").is_none_or(Value::is_null), "{item}");
            assert!(item.get("secret").is_none_or(Value::is_null), "{item}");
        }
        let paged = read(format!("{n1}/{list}?limit=10"), As::Nobody).await;
        for item in paged["items"].as_array().expect("a page") {
            assert!(item.get("customer").is_none_or(Value::is_null), "{item}");
        }
        let adas = read(format!("{n2}/{list}?customer=ada"), As::Token(TOKEN)).await;
        let adas = adas.as_array().expect("a list");
        assert_eq!(adas.len(), 1, "{list}: {adas:?}");
        assert_eq!(adas[0]["customer"], "ada");
        let page = read(
            format!("{n2}/{list}?customer=bob&limit=1"),
            As::Token(TOKEN),
        )
        .await;
        let expected = usize::from(list == "holds");
        assert_eq!(
            page["items"].as_array().map(Vec::len),
            Some(expected),
            "{page}"
        );
        assert!(page["next"].is_null(), "{page}");
        let nobody = read(format!("{n2}/{list}?customer=zed"), As::Token(TOKEN)).await;
        assert_eq!(nobody, json!([]));
    }

    // The operator's token changes anything; a node without a token takes none.
    let release = post(format!("{n2}/holds/{hold_id}/release"), None).by(As::Token(TOKEN));
    assert_eq!(
        expect(&office.call(release).await, 200)["status"],
        "released"
    );
    let cancel = post(format!("{n1}/purchases/{purchase_id}/cancel"), None);
    let cancelled = expect(
        &office.call(cancel.by(As::Secret(purchase_secret))).await,
        200,
    );
    assert!(cancelled["cancelled_at"].is_string(), "{cancelled}");
    let no_token =
        start_node_on("n9", &office._store.medium, "127.0.0.1:0", &[]).expect("node starts");
    let other_id = text(&other, "hold_id");
    let confirm = post(format!("{}/holds/{other_id}/confirm", no_token.url()), None);
    refused(
        &office.call(confirm.clone().by(As::Token(TOKEN))).await,
        403,
        "forbidden",
    );
    let url = format!("{}/holds?customer=bob", no_token.url());
    refused(
        &office.call(get(url).by(As::Token(TOKEN))).await,
        403,
        "forbidden",
    );
    let confirmed = office
        .call(confirm.by(As::Secret(text(&other, "secret"))))
        .await;
    assert_eq!(expect(&confirmed, 201)["hold_id"], other_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_bad_bodies_wrong_methods_and_reused_keys_are_refused_as_the_contract_says() {
    let office = BoxOffice::start(MediumKind::Files, 1, &[("concert", 10, 1000)], Some(3));
    let n1 = office.node(0);
    let lb = office.balancer.url();
    for base in [&n1, &lb] {
        for (call, code) in [
            (get(format!("{base}/holds/h-00000099")), "unknown_hold"),
            (get(format!("{base}/holds/nonsense")), "unknown_hold"),
            (
                post(format!("{base}/holds/h-00000099/confirm"), None),
                "unknown_hold",
            ),
            (
                post(format!("{base}/holds/h-00000099/release"), None),
                "unknown_hold",
            ),
            (
                post(format!("{base}/purchases/p-00000099/cancel"), None),
                "unknown_purchase",
            ),
            (
                post(format!("{base}/holds/{}/confirm", "x".repeat(300)), None),
                "unknown_hold",
            ),
            (
                post(format!("{base}/holds/p-00000001/release"), None),
                "unknown_hold",
            ),
            (
                post(format!("{base}/purchases/h-00000001/cancel"), None),
                "unknown_purchase",
            ),
        ] {
            refused(
                &office.call(call.clone().by(As::Token(TOKEN))).await,
                404,
                code,
            );
            // An unknown id is unknown whoever asks.
            refused(&office.call(call).await, 404, code);
        }
        let head = office
            .call(get(format!("{base}/holds/h-00000099")).head())
            .await;
        assert_eq!(head.status, StatusCode::NOT_FOUND);
        for (method, path, allow) in [
            (Method::GET, "/holds/h-1/confirm", "POST"),
            (Method::DELETE, "/holds/h-1/release", "POST"),
            (Method::GET, "/purchases/p-1/cancel", "POST"),
            (Method::PUT, "/holds", "GET, HEAD, POST"),
            (Method::POST, "/holds/h-1", "GET, HEAD"),
        ] {
            let mut call = get(format!("{base}{path}"));
            call.method = method.clone();
            let answer = office.call(call).await;
            refused(&answer, 405, "method_not_allowed");
            assert_eq!(answer.headers["allow"], allow, "{method} {path}");
        }
        let bodies = [
            json!({"event": "concert", "quantity": 1}),
            json!({"event": "concert", "quantity": 1, "tickets": [1], "customer": "c"}),
            json!({"event": "concert", "customer": "c"}),
            json!({"event": "concert", "tickets": [], "customer": "c"}),
            json!({"event": "concert", "tickets": [1, 1], "customer": "c"}),
            json!({"event": "concert", "tickets": [1,2,3,4,5,6,7,8,9,10,11], "customer": "c"}),
            json!({"event": "concert", "tickets": [0], "customer": "c"}),
            json!({"event": "concert", "tickets": [11], "customer": "c"}),
            json!({"event": "concert", "quantity": 1, "customer": "has space"}),
            json!({"event": "concert", "quantity": 1, "customer": ""}),
            json!({"event": "concert", "quantity": 1, "customer": "x".repeat(65)}),
        ];
        for path in ["purchases", "holds"] {
            for body in &bodies {
                let answer = office
                    .call(post(format!("{base}/{path}"), Some(body.clone())))
                    .await;
                let refusal = refused(&answer, 400, "bad_request");
                assert!(!refusal["message"].as_str().unwrap_or("").is_empty());
            }
        }
        for ttl in [json!(9), json!(3601), json!(10.5), json!("60"), json!(-1)] {
            let body =
                json!({"event": "concert", "quantity": 1, "customer": "c", "ttl_seconds": ttl});
            let answer = office.call(post(format!("{base}/holds"), Some(body))).await;
            let message = refused(&answer, 400, "bad_request")["message"].to_string();
            assert!(message.contains("ttl_seconds"), "{ttl}: {message}");
        }
        let body = json!({"event": "concert", "quantity": 1, "customer": "c", "ttl_seconds": 60});
        refused(
            &office
                .call(post(format!("{base}/purchases"), Some(body)))
                .await,
            400,
            "bad_request",
        );
        for query in [
            "customer=a%20b",
            "customer=",
            "after=p-1",
            "limit=0",
            "colour=red",
        ] {
            let url = format!("{base}/holds?{query}");
            refused(
                &office.call(get(url).by(As::Token(TOKEN))).await,
                400,
                "bad_request",
            );
        }
    }
    // The raw bytes of a body naming a field twice.
    for raw in [
        r#"{"event":"concert","quantity":1,"customer":"a","customer":"b"}"#,
        r#"{"event":"concert","tickets":[1],"tickets":[2],"customer":"a"}"#,
        r#"{"event":"concert","quantity":1,"customer":"a","ttl_seconds":10,"ttl_seconds":20}"#,
    ] {
        let answer = office
            .http
            .post_raw(&format!("{n1}/holds"), "application/json", raw.into(), None)
            .await
            .expect("an answer");
        refused(&answer, 400, "bad_request");
    }

    // A key is bound to the whole request: kind, event, count or seats, customer, ttl.
    let first = json!({"event": "concert", "quantity": 1, "customer": "ada", "ttl_seconds": 60});
    let made = office
        .call(post(format!("{n1}/holds"), Some(first.clone())).key("hold-key-1"))
        .await;
    let made = expect(&made, 201);
    let repeat = office
        .call(post(format!("{lb}/holds"), Some(first.clone())).key("hold-key-1"))
        .await;
    let repeat = expect(&repeat, 201);
    for field in ["hold_id", "secret", "expires_at", "customer", "tickets"] {
        assert_eq!(repeat[field], made[field], "{field}");
    }
    for changed in [
        json!({"event": "concert", "quantity": 2, "customer": "ada", "ttl_seconds": 60}),
        json!({"event": "concert", "quantity": 1, "customer": "bob", "ttl_seconds": 60}),
        json!({"event": "concert", "quantity": 1, "customer": "ada", "ttl_seconds": 61}),
        json!({"event": "concert", "tickets": ids(&made), "customer": "ada", "ttl_seconds": 60}),
    ] {
        let answer = office
            .call(post(format!("{n1}/holds"), Some(changed)).key("hold-key-1"))
            .await;
        refused(&answer, 422, "idempotency_key_reused");
    }
    let as_purchase = json!({"event": "concert", "quantity": 1, "customer": "ada"});
    let answer = office
        .call(post(format!("{n1}/purchases"), Some(as_purchase)).key("hold-key-1"))
        .await;
    refused(&answer, 422, "idempotency_key_reused");
    let bought = json!({"event": "concert", "tickets": [9], "customer": "bob"});
    let made = office
        .call(post(format!("{n1}/purchases"), Some(bought.clone())).key("buy-key-1"))
        .await;
    let made = expect(&made, 201);
    let repeat = office
        .call(post(format!("{lb}/purchases"), Some(bought)).key("buy-key-1"))
        .await;
    let repeat = expect(&repeat, 201);
    assert_eq!(
        (&repeat["purchase_id"], &repeat["secret"]),
        (&made["purchase_id"], &made["secret"])
    );
    let other_seat = json!({"event": "concert", "tickets": [8], "customer": "bob"});
    let answer = office
        .call(post(format!("{n1}/purchases"), Some(other_seat)).key("buy-key-1"))
        .await;
    refused(&answer, 422, "idempotency_key_reused");

    // A change is keyed too: a repeat answers the same, the key is then taken.
    let hold = office
        .call(post(
            format!("{n1}/holds"),
            Some(hold_body("concert", 1, Some("cy"), None)),
        ))
        .await;
    let hold = expect(&hold, 201);
    let confirm = keyed_change(
        format!("{n1}/holds/{}/confirm", text(&hold, "hold_id")),
        text(&hold, "secret"),
        "confirm-key-1",
    );
    let purchase = expect(&office.call(confirm.clone()).await, 201);
    let repeat = expect(
        &office
            .call(Call {
                url: confirm.url.replace(&n1, &lb),
                ..confirm
            })
            .await,
        201,
    );
    assert_eq!(repeat["purchase_id"], purchase["purchase_id"]);
    let cancel = keyed_change(
        format!("{lb}/purchases/{}/cancel", text(&purchase, "purchase_id")),
        text(&hold, "secret"),
        "cancel-key-1",
    );
    let cancelled = expect(&office.call(cancel.clone()).await, 200);
    assert_eq!(
        expect(&office.call(cancel).await, 200)["cancelled_at"],
        cancelled["cancelled_at"]
    );
    let reuse = json!({"event": "concert", "quantity": 1, "customer": "cy"});
    for key in ["confirm-key-1", "cancel-key-1"] {
        let answer = office
            .call(post(format!("{n1}/purchases"), Some(reuse.clone())).key(key))
            .await;
        refused(&answer, 422, "idempotency_key_reused");
    }

    // On a limited event a purchase or hold names its customer; the limit counts both.
    for path in ["purchases", "holds"] {
        let anonymous = json!({"event": "concert", "quantity": 1});
        let answer = office
            .call(post(format!("{n1}/{path}"), Some(anonymous)))
            .await;
        let message = refused(&answer, 400, "bad_request")["message"].to_string();
        assert!(message.contains("customer"), "{message}");
    }
    let summary = event(&office, &n1, "concert").await;
    assert_eq!(summary["max_per_customer"], 3);
    // ada holds 1 of 3: two more, then the limit says how many are left.
    let two = json!({"event": "concert", "quantity": 2, "customer": "ada"});
    expect(
        &office
            .call(post(format!("{n1}/purchases"), Some(two.clone())))
            .await,
        201,
    );
    let over = office.call(post(format!("{lb}/holds"), Some(two))).await;
    assert_eq!(refused(&over, 409, "customer_limit")["allowed"], 0);
    let bob = json!({"event": "concert", "quantity": 3, "customer": "bob"});
    let over = office
        .call(post(format!("{lb}/purchases"), Some(bob)))
        .await;
    assert_eq!(refused(&over, 409, "customer_limit")["allowed"], 2);
}

/// How long the expiry test's holds last: the contract's shortest.
const SHORT_TTL: u64 = 10;

/// Sleeps until the wall-clock time `at` (the nodes run on this host, so their clock).
async fn until(at: SystemTime) {
    if let Ok(left) = at.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
}

/// The one test that waits for holds to expire (the contract's shortest time to live, 10
/// s, once): at the moment of expiry, with no sweeper, the counts and statuses are right,
/// the tickets are on sale, the customer's limit counts the hold no more, and no node
/// confirms it. Meanwhile confirms race each hold's expiry through different nodes: every
/// answer for one hold is the same kind (all the purchase, or all `hold_expired`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_expire_strictly_on_every_node_at_their_time_and_confirms_racing_expiry_agree() {
    let office = BoxOffice::start(
        MediumKind::Files,
        3,
        &[("concert", 10, 1000), ("sports-game", 40, 500)],
        Some(2),
    );
    let urls = office.every_url();
    let n1 = office.node(0);
    let make = |body: Value| {
        let office = &office;
        let url = format!("{n1}/holds");
        async move { expect(&office.call(post(url, Some(body))).await, 201) }
    };
    let ttl = Some(SHORT_TTL);
    let mut seats = seats_body("concert", &[5, 6]);
    seats["customer"] = json!("bob");
    seats["ttl_seconds"] = json!(SHORT_TTL);
    let seated = make(seats).await;
    let counted = make(hold_body("concert", 2, Some("ada"), ttl)).await;
    let lasting = make(hold_body("concert", 1, Some("cy"), Some(600))).await;
    // ada is at the limit while her hold lives.
    let more = post(
        format!("{n1}/purchases"),
        Some(hold_body("concert", 1, Some("ada"), None)),
    );
    assert_eq!(
        refused(&office.call(more).await, 409, "customer_limit")["allowed"],
        0
    );

    // The racers: each hold's confirms start at a different offset around its expiry, two
    // at a time through different ways in, until a while after it.
    let mut racing = Vec::new();
    for i in 0..12 {
        racing.push(make(hold_body("sports-game", 1, Some(&format!("r{i}")), ttl)).await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, hold) in racing.iter().enumerate() {
        let expires = parse_time(text(hold, "expires_at"));
        let start = expires - Duration::from_millis(1500) + Duration::from_millis(250 * i as u64);
        for lane in 0..2 {
            let http = office.http.clone();
            let url = format!(
                "{}/holds/{}/confirm",
                urls[(i + lane) % urls.len()],
                text(hold, "hold_id")
            );
            let secret = text(hold, "secret").to_owned();
            tasks.spawn(async move {
                until(start).await;
                let mut answers = Vec::new();
                while SystemTime::now() < expires + Duration::from_millis(1500)
                    && answers.len() < 50
                {
                    let answer = send(&http, post(url.clone(), None).by(As::Secret(&secret))).await;
                    answers.push((answer.status.as_u16(), answer.json()));
                }
                (i, answers)
            });
        }
    }

    // At the moment the first holds expire, with no sweeper, everything says so at once.
    let expiry =
        parse_time(text(&counted, "expires_at")).max(parse_time(text(&seated, "expires_at")));
    until(expiry + Duration::from_millis(20)).await;
    for base in &urls {
        for hold in [&counted, &seated] {
            let url = format!("{base}/holds/{}", text(hold, "hold_id"));
            assert_eq!(
                expect(&office.call(get(url)).await, 200)["status"],
                "expired",
                "{base}"
            );
        }
        let summary = event(&office, base, "concert").await;
        assert_eq!(
            summary["held"], 1,
            "{base}: only the lasting hold: {summary}"
        );
        assert_eq!(summary["available"], 9, "{base}: {summary}");
        let status = statuses(&office, base, "concert").await;
        for id in ids(&counted).iter().chain(&[5, 6]) {
            assert_eq!(status[id], "available", "{base}: ticket {id}");
        }
        assert_eq!(status[&ids(&lasting)[0]], "held");
    }
    for (i, base) in urls.iter().enumerate() {
        for hold in [&counted, &seated] {
            let confirm = post(
                format!("{base}/holds/{}/confirm", text(hold, "hold_id")),
                None,
            );
            let who = if i % 2 == 0 {
                As::Secret(text(hold, "secret"))
            } else {
                As::Token(TOKEN)
            };
            refused(&office.call(confirm.by(who)).await, 409, "hold_expired");
        }
    }
    // Its seats sell to another; the expired hold stays expired; its customer may buy again.
    let mut bought = seats_body("concert", &[5, 6]);
    bought["customer"] = json!("dee");
    let bought = office
        .call(post(format!("{}/purchases", urls[2]), Some(bought)))
        .await;
    assert_eq!(ids(&expect(&bought, 201)), [5, 6]);
    let again = post(
        format!("{n1}/purchases"),
        Some(hold_body("concert", 2, Some("ada"), None)),
    );
    expect(&office.call(again).await, 201);
    let confirm = post(
        format!("{}/holds/{}/confirm", urls[1], text(&seated, "hold_id")),
        None,
    );
    refused(
        &office.call(confirm.by(As::Token(TOKEN))).await,
        409,
        "hold_expired",
    );
    assert_counts_agree(&office, "concert").await;

    // The racers: per hold, one kind of answer, and the final state agrees with it.
    let mut by_hold: BTreeMap<usize, Vec<(u16, Value)>> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (i, answers) = done.expect("a racer did not panic");
        by_hold.entry(i).or_default().extend(answers);
    }
    let (mut confirmed, mut expired) = (0, 0);
    for (i, answers) in &by_hold {
        let hold = &racing[*i];
        let read = expect(
            &office
                .call(get(format!("{n1}/holds/{}", text(hold, "hold_id"))))
                .await,
            200,
        );
        assert!(
            !answers.is_empty(),
            "hold {i} was never confirmed or refused"
        );
        if answers[0].0 == 201 {
            confirmed += 1;
            let purchase = &answers[0].1["purchase_id"];
            for (status, body) in answers {
                assert_eq!(
                    (*status, &body["purchase_id"]),
                    (201, purchase),
                    "hold {i}: {answers:?}"
                );
            }
            assert_eq!(read["status"], "confirmed", "{read}");
            assert_eq!(&read["purchase_id"], purchase);
        } else {
            expired += 1;
            for (status, body) in answers {
                assert_eq!(
                    (*status, &body["error"]),
                    (409, &json!("hold_expired")),
                    "hold {i}: {answers:?}"
                );
            }
            assert_eq!(read["status"], "expired", "{read}");
        }
    }
    assert!(
        confirmed > 0 && expired > 0,
        "the race had both sides: {confirmed} confirmed, {expired} expired"
    );
    let summary = event(&office, &n1, "sports-game").await;
    assert_eq!(
        (summary["sold"].as_u64(), summary["held"].as_u64()),
        (Some(confirmed), Some(0))
    );
    assert_counts_agree(&office, "sports-game").await;
    audit(&office);
}

/// Clocks that differ between nodes, without waiting: n3's clock is two hours ahead, past
/// any hold's time to live. Before any decision, n3 reads a hold as expired (and counts
/// its tickets available, with no sweeper) while n1 still reads it held; once n3 has
/// treated it as expired, by refusing its confirmation or selling one of its tickets, no
/// node confirms it, and n1's later decisions take the log's time, never going back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_node_whose_clock_is_ahead_treats_a_hold_as_expired_no_node_confirms_it() {
    for kind in [MediumKind::Files, MediumKind::Postgres] {
        let office = BoxOffice::with_clocks(
            kind,
            &[None, None, Some("2h")],
            &[("concert", 10, 1000)],
            None,
        );
        let (n1, n2, ahead) = (office.node(0), office.node(1), office.node(2));
        let make = |body: Value| {
            let office = &office;
            let url = format!("{n1}/holds");
            async move { expect(&office.call(post(url, Some(body))).await, 201) }
        };
        let refused_hold = make(seats_body("concert", &[1, 2])).await;
        let sold_hold = make(seats_body("concert", &[3])).await;
        let late_hold = make(hold_body("concert", 1, None, Some(3600))).await;
        let id = |hold: &Value| text(hold, "hold_id").to_owned();

        // Reads at each node's clock: expired ahead, held here, with no entry logged.
        let read = |base: &str, hold: &Value| {
            let url = format!("{base}/holds/{}", id(hold));
            let office = &office;
            async move { expect(&office.call(get(url)).await, 200)["status"].clone() }
        };
        assert_eq!(read(&ahead, &refused_hold).await, "expired", "{kind:?}");
        assert_eq!(read(&n1, &refused_hold).await, "held", "{kind:?}");
        let summary = event(&office, &ahead, "concert").await;
        assert_eq!(
            (summary["held"].as_u64(), summary["available"].as_u64()),
            (Some(0), Some(10))
        );
        assert_eq!(statuses(&office, &ahead, "concert").await[&1], "available");
        assert_eq!(event(&office, &n1, "concert").await["held"], 4, "{kind:?}");

        // Refused as expired ahead: then no node confirms it, with its secret or the token.
        let confirm =
            |base: &str, hold: &Value| post(format!("{base}/holds/{}/confirm", id(hold)), None);
        let secret = text(&refused_hold, "secret");
        let answer = office
            .call(confirm(&ahead, &refused_hold).by(As::Secret(secret)))
            .await;
        refused(&answer, 409, "hold_expired");
        for base in [&n1, &n2] {
            let answer = office
                .call(confirm(base, &refused_hold).by(As::Secret(secret)))
                .await;
            refused(&answer, 409, "hold_expired");
            let answer = office
                .call(confirm(base, &refused_hold).by(As::Token(TOKEN)))
                .await;
            refused(&answer, 409, "hold_expired");
            assert_eq!(
                read(base, &refused_hold).await,
                "expired",
                "{kind:?} {base}"
            );
        }

        // Its ticket sold ahead to another: the hold is expired everywhere.
        let bought = office
            .take_seats(format!("{ahead}/purchases"), "concert", &[3])
            .await;
        assert_eq!(ids(&expect(&bought, 201)), [3]);
        let answer = office
            .call(confirm(&n1, &sold_hold).by(As::Secret(text(&sold_hold, "secret"))))
            .await;
        refused(&answer, 409, "hold_expired");
        assert_eq!(read(&n2, &sold_hold).await, "expired");

        // n1's clock is two hours behind the log now: its decisions take the log's time,
        // so the hour-long hold is past its time for it too, and a new hold starts then.
        let answer = office
            .call(confirm(&n1, &late_hold).by(As::Token(TOKEN)))
            .await;
        refused(&answer, 409, "hold_expired");
        let fresh = make(hold_body("concert", 1, None, Some(60))).await;
        let log_time = parse_time(text(&expect(&bought, 201), "created_at"));
        assert!(
            parse_time(text(&fresh, "created_at")) >= log_time,
            "{fresh}"
        );
        let confirmed = office.call(confirm(&n2, &fresh).by(As::Token(TOKEN))).await;
        assert_eq!(expect(&confirmed, 201)["hold_id"], id(&fresh).as_str());
        assert_counts_agree(&office, "concert").await;
        audit(&office);
    }
}

/// Sends every call at once, each through its own task, and returns the answers in order.
async fn all_at_once(office: &BoxOffice, calls: Vec<Call<'_>>) -> Vec<(u16, Value)> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, call) in calls.into_iter().enumerate() {
        let http = office.http.clone();
        let request = request(call);
        tasks.spawn(async move {
            let answer = http.send(request).await.expect("an answer");
            (i, answer.status.as_u16(), answer.json())
        });
    }
    let mut answers = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (i, status, body) = done.expect("a task did not panic");
        answers.insert(i, (status, body));
    }
    answers.into_values().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_and_release_of_one_hold_racing_through_different_nodes_have_one_winner() {
    for kind in [MediumKind::Files, MediumKind::Postgres] {
        let office = BoxOffice::start(kind, 3, &[("concert", 30, 1000)], None);
        let mut holds = Vec::new();
        for i in 0..20 {
            let url = format!("{}/holds", office.node(i));
            let body = hold_body("concert", 1, None, None);
            holds.push(expect(&office.call(post(url, Some(body))).await, 201));
        }
        let mut calls = Vec::new();
        for (i, hold) in holds.iter().enumerate() {
            let id = text(hold, "hold_id");
            let secret = As::Secret(text(hold, "secret"));
            // Confirm and release through different nodes, the credentials swapped by turns.
            let (confirm_by, release_by) = if i % 2 == 0 {
                (secret, As::Token(TOKEN))
            } else {
                (As::Token(TOKEN), secret)
            };
            let confirm = post(format!("{}/holds/{id}/confirm", office.node(i)), None);
            let release = post(format!("{}/holds/{id}/release", office.node(i + 1)), None);
            calls.push(confirm.by(confirm_by));
            calls.push(release.by(release_by));
        }
        let answers = all_at_once(&office, calls).await;
        let base = office.node(2);
        let status = statuses(&office, &base, "concert").await;
        let mut sold = 0;
        for (hold, pair) in holds.iter().zip(answers.chunks(2)) {
            let ((confirmed, purchase), (released, release)) = (&pair[0], &pair[1]);
            let read = expect(
                &office
                    .call(get(format!("{base}/holds/{}", text(hold, "hold_id"))))
                    .await,
                200,
            );
            let ticket = ids(hold)[0];
            match (*confirmed, *released) {
                (201, 409) => {
                    assert_eq!(release["error"], "hold_confirmed", "{release}");
                    assert_eq!(ids(purchase), ids(hold));
                    assert_eq!(read["status"], "confirmed");
                    assert_eq!(read["purchase_id"], purchase["purchase_id"]);
                    assert_eq!(status[&ticket], "sold");
                    sold += 1;
                }
                (409, 200) => {
                    assert_eq!(purchase["error"], "hold_released", "{purchase}");
                    assert_eq!(release["status"], "released");
                    assert_eq!(read["status"], "released");
                    assert_eq!(status[&ticket], "available");
                }
                other => panic!("{kind:?}: both or neither won: {other:?}: {purchase} {release}"),
            }
        }
        let purchases = expect(&office.call(get(format!("{base}/purchases"))).await, 200);
        assert_eq!(purchases.as_array().map(Vec::len), Some(sold), "{kind:?}");
        assert_counts_agree(&office, "concert").await;
        audit(&office);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_holds_and_seat_purchases_on_few_seats_through_every_node_sell_each_seat_once() {
    for kind in [MediumKind::Files, MediumKind::Postgres] {
        let office = BoxOffice::start(kind, 3, &[("concert", 8, 1000)], None);
        let urls = office.every_url();
        let mut calls = Vec::new();
        for i in 0..60u64 {
            let url = &urls[i as usize % urls.len()];
            let seat = i % 8 + 1;
            let pair = [seat, seat % 8 + 1];
            calls.push(match i % 3 {
                0 => post(
                    format!("{url}/holds"),
                    Some(hold_body("concert", 1, None, None)),
                ),
                1 => post(format!("{url}/holds"), Some(seats_body("concert", &pair))),
                _ => post(
                    format!("{url}/purchases"),
                    Some(seats_body("concert", &pair)),
                ),
            });
        }
        let answers = all_at_once(&office, calls).await;
        let mut taken: HashMap<u64, String> = HashMap::new();
        for (status, body) in &answers {
            match status {
                201 => {
                    let owner = body["hold_id"]
                        .as_str()
                        .or(body["purchase_id"].as_str())
                        .unwrap_or("?");
                    for id in ids(body) {
                        if let Some(first) = taken.insert(id, owner.to_owned()) {
                            panic!("{kind:?}: seat {id} went to {first} and to {owner}");
                        }
                    }
                }
                409 => assert!(
                    ["sold_out", "tickets_unavailable"]
                        .contains(&body["error"].as_str().unwrap_or("")),
                    "{body}"
                ),
                other => panic!("{kind:?}: {other}: {body}"),
            }
        }
        let status = statuses(&office, &urls[0], "concert").await;
        let gone: BTreeSet<u64> = status
            .iter()
            .filter(|(_, s)| *s != "available")
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(
            gone,
            taken.keys().copied().collect::<BTreeSet<_>>(),
            "{kind:?}"
        );
        assert!(gone.len() >= 7, "{kind:?}: the seats sell out: {status:?}");
        assert_counts_agree(&office, "concert").await;
        audit(&office);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_customer_buying_and_holding_in_parallel_through_every_node_stops_at_the_limit() {
    const LIMIT: u64 = 4;
    for kind in [MediumKind::Files, MediumKind::Postgres] {
        let office = BoxOffice::start(kind, 3, &[("concert", 60, 1000)], Some(LIMIT as u32));
        let urls = office.every_url();
        let burst = |n: usize, offset: u64| {
            (0..n)
                .map(|i| {
                    let url = &urls[i % urls.len()];
                    // Seats from the top: the counted orders take the lowest free ones, so
                    // a seat order is refused for the limit, never for its seat.
                    let seat = 60 - offset - i as u64;
                    let mut seats = seats_body("concert", &[seat]);
                    seats["customer"] = json!("scalper");
                    match i % 3 {
                        0 => post(
                            format!("{url}/purchases"),
                            Some(hold_body("concert", 1, Some("scalper"), None)),
                        ),
                        1 => post(
                            format!("{url}/holds"),
                            Some(hold_body("concert", 1, Some("scalper"), None)),
                        ),
                        _ => post(format!("{url}/purchases"), Some(seats)),
                    }
                })
                .collect::<Vec<_>>()
        };
        let check = |answers: &[(u16, Value)], expected: u64| {
            let won: Vec<&Value> = answers
                .iter()
                .filter(|(s, _)| *s == 201)
                .map(|(_, b)| b)
                .collect();
            for (status, body) in answers.iter().filter(|(s, _)| *s != 201) {
                assert_eq!(
                    (*status, &body["error"]),
                    (409, &json!("customer_limit")),
                    "{kind:?}: {body}"
                );
                assert_eq!(body["allowed"], 0, "{body}");
            }
            let tickets: u64 = won.iter().map(|b| ids(b).len() as u64).sum();
            assert_eq!(
                tickets, expected,
                "{kind:?}: the limit let through {tickets}"
            );
            won.into_iter().cloned().collect::<Vec<_>>()
        };
        let first = check(&all_at_once(&office, burst(30, 0)).await, LIMIT);

        // Listed by customer (with the token), the live purchases and holds are the limit.
        let live = |list: &'static str| {
            let office = &office;
            async move {
                let url = format!("{}/{list}?customer=scalper", office.node(1));
                let all = expect(&office.call(get(url).by(As::Token(TOKEN))).await, 200);
                all.as_array().expect("a list").len()
            }
        };
        assert_eq!(
            (live("purchases").await + live("holds").await) as u64,
            LIMIT,
            "{kind:?}"
        );

        // Giving one back lets exactly one more through.
        let back = &first[0];
        let undo = match back["hold_id"].as_str() {
            Some(id) if back.get("purchase_id").is_none_or(Value::is_null) => {
                post(format!("{}/holds/{id}/release", office.node(0)), None)
            }
            _ => post(
                format!(
                    "{}/purchases/{}/cancel",
                    office.node(0),
                    text(back, "purchase_id")
                ),
                None,
            ),
        };
        expect(
            &office.call(undo.by(As::Secret(text(back, "secret")))).await,
            200,
        );
        check(&all_at_once(&office, burst(12, 30)).await, 1);
        let summary = event(&office, &urls[3], "concert").await;
        assert_eq!(
            summary["sold"].as_u64().unwrap_or(0) + summary["held"].as_u64().unwrap_or(0),
            LIMIT,
            "{summary}"
        );
        assert_counts_agree(&office, "concert").await;
        audit(&office);
    }
}

/// A program started with its log at `trace` going to a file, killed when dropped.
struct Logged {
    child: std::process::Child,
    url: String,
}

impl Logged {
    fn start(program: &str, args: &[&str], env: &[(&str, &str)], log: &std::path::Path) -> Self {
        use std::io::BufRead;
        let file = std::fs::File::create(log).expect("a log file");
        let mut child = std::process::Command::new(cluster::binary(program).expect("built"))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "trace")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(file)
            .spawn()
            .expect("starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        std::thread::spawn(move || lines.for_each(drop));
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{program} printed {first:?}"))
            .trim()
            .to_owned();
        Self {
            child,
            url: format!("http://{addr}"),
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// "Never logged": with every log at `trace`, a node and the balancer in front of it take
/// secrets and tokens, right and wrong, in every route that reads them, and neither log
/// shows any of them, nor the idempotency keys (a keyed repeat's secret is derived from
/// its key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_tokens_never_appear_in_the_node_or_balancer_log_even_at_trace() {
    let store = TestMedium::new(MediumKind::Files).expect("a place for the store");
    cluster::seed_medium(&store.medium, &[("concert", 10, 1000)]).expect("seed");
    let logs = tempfile::tempdir().expect("a log directory");
    let (node_log, balancer_log) = (logs.path().join("node.log"), logs.path().join("lb.log"));
    let medium = store.medium.node_args();
    let node = Logged::start(
        "node",
        &[
            "--id",
            "n1",
            "--listen",
            "127.0.0.1:0",
            &medium[0],
            &medium[1],
        ],
        &[("TICKETS_NODE__ADMIN_TOKEN", TOKEN)],
        &node_log,
    );
    let node_addr = node.url.trim_start_matches("http://").to_owned();
    let balancer = Logged::start(
        "balancer",
        &["--listen", "127.0.0.1:0", "--nodes", &node_addr],
        &[],
        &balancer_log,
    );
    let http = HttpClient::new();
    let wrong_token = "not-the-operator-token-but-long";
    let wrong_secret = "ffffffffffffffffffffffffffffffff";
    let mut secrets = Vec::new();
    for base in [&node.url, &balancer.url] {
        for path in ["purchases", "holds"] {
            let made = send(
                &http,
                post(
                    format!("{base}/{path}"),
                    Some(hold_body("concert", 1, Some("ada"), None)),
                )
                .key(&format!("log-key-{path}-{}", secrets.len())),
            )
            .await;
            let made = expect(&made, 201);
            let id = made["hold_id"]
                .as_str()
                .or(made["purchase_id"].as_str())
                .expect("an id")
                .to_owned();
            let secret = text(&made, "secret").to_owned();
            let change = match path {
                "holds" => format!("{base}/holds/{id}/confirm"),
                _ => format!("{base}/purchases/{id}/cancel"),
            };
            for who in [As::Secret(wrong_secret), As::Token(wrong_token)] {
                refused(
                    &send(&http, post(change.clone(), None).by(who)).await,
                    403,
                    "forbidden",
                );
            }
            let read = format!("{base}/{path}/{id}");
            expect(
                &send(&http, get(read.clone()).by(As::Secret(&secret))).await,
                200,
            );
            expect(&send(&http, get(read).by(As::Token(TOKEN))).await, 200);
            let list = format!("{base}/{path}?customer=ada");
            expect(
                &send(&http, get(list.clone()).by(As::Token(TOKEN))).await,
                200,
            );
            refused(
                &send(&http, get(list).by(As::Token(wrong_token))).await,
                403,
                "forbidden",
            );
            expect(
                &send(&http, post(change, None).by(As::Secret(&secret))).await,
                if path == "holds" { 201 } else { 200 },
            );
            secrets.push(secret);
        }
    }
    drop(balancer);
    drop(node);
    for log in [&node_log, &balancer_log] {
        let text = std::fs::read_to_string(log).expect("the log");
        assert!(text.lines().count() > 10, "trace logs something: {text}");
        for needle in
            secrets
                .iter()
                .map(String::as_str)
                .chain([TOKEN, wrong_token, wrong_secret, "log-key-"])
        {
            assert!(!text.contains(needle), "{} shows {needle:?}", log.display());
        }
    }
}
