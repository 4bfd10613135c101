//! A small fake ticket server for the generator's integration tests: hyper on
//! 127.0.0.1:0 serving /events, /tickets, /purchases (and an empty /holds) from an in-memory
//! `shared::Inventory` (or from fixed, hand-made bodies), with an `X-Node` header that
//! alternates between two names, and a helper that runs the real `generator` binary.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use shared::api::{
    ErrorBody, ErrorCode, EventBody, IDEMPOTENCY_HEADER, NODE_HEADER, PurchaseBody,
    PurchaseRequestBody, TicketBody,
};
use shared::{
    EventName, IdempotencyKey, Inventory, PurchaseError, PurchaseRequest, Quantity, Ticket,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// What the fake serves.
// One value per fake server: the inventory's size is no concern.
#[allow(clippy::large_enum_variant)]
pub enum State {
    /// A working inventory that sells tickets.
    Live(Mutex<Inventory>),
    /// Fixed listings (for the audit); purchases are refused.
    Fixed {
        tickets: Vec<TicketBody>,
        events: Vec<EventBody>,
        purchases: Vec<PurchaseBody>,
    },
}

#[derive(Clone)]
struct Fake {
    state: Arc<State>,
    answers: Arc<AtomicUsize>,
    /// When set, the first attempt of each Idempotency-Key sells but is answered 503,
    /// as if the answer were lost on its way back.
    lose_first_answer: bool,
    keys_seen: Arc<Mutex<HashSet<String>>>,
    /// Every GET's path and query, in order of arrival.
    gets: Arc<Mutex<Vec<String>>>,
}

/// A running fake; stops when dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    gets: Arc<Mutex<Vec<String>>>,
    _stop: oneshot::Sender<()>,
}

impl FakeServer {
    pub async fn start(state: State) -> Self {
        Self::start_with(state, false).await
    }

    /// A fake whose first answer to every purchase is lost (503 after selling).
    pub async fn start_losing_first_answers(state: State) -> Self {
        Self::start_with(state, true).await
    }

    async fn start_with(state: State, lose_first_answer: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(state);
        let fake = Fake {
            state: state.clone(),
            answers: Arc::new(AtomicUsize::new(0)),
            lose_first_answer,
            keys_seen: Arc::new(Mutex::new(HashSet::new())),
            gets: Arc::new(Mutex::new(Vec::new())),
        };
        let gets = fake.gets.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve::run(
            listener,
            fake,
            serve::ServerLimits::default(),
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            state,
            gets,
            _stop: stop,
        }
    }

    /// Every GET the fake answered so far: its path and query.
    pub fn gets(&self) -> Vec<String> {
        self.gets.lock().expect("lock").clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The live inventory's tickets.
    pub fn tickets(&self) -> Vec<Ticket> {
        match &*self.state {
            State::Live(inventory) => inventory.lock().expect("lock").tickets().to_vec(),
            State::Fixed { .. } => Vec::new(),
        }
    }
}

/// A live inventory of `per_event` tickets for each of the four original events.
pub fn live_inventory(per_event: u64) -> State {
    let mut tickets = Vec::new();
    for (i, name) in shared::domain::ORIGINAL_EVENTS.iter().enumerate() {
        for n in 0..per_event {
            tickets.push(Ticket {
                id: i as u64 * per_event + n + 1,
                event: EventName::parse(name).expect("original names are valid"),
                price_cents: 1_000 + 250 * n,
                sold: false,
            });
        }
    }
    State::Live(Mutex::new(
        Inventory::from_tickets(tickets).expect("consistent"),
    ))
}

fn json(status: StatusCode, node: &str, body: &impl Serialize) -> Response<Full<Bytes>> {
    let mut response = serve::json::response(status, body);
    response
        .headers_mut()
        .insert(NODE_HEADER, node.parse().expect("a valid header value"));
    response
}

/// A listing as a node answers it: the whole list, or with `after` or `limit` in the query
/// one page `{"items", "next"}`, items ordered by `key`.
fn listing<T: Serialize>(
    node: &str,
    query: Option<&str>,
    items: &[T],
    key: impl Fn(&T) -> Option<u64>,
    next_of: impl Fn(&T) -> serde_json::Value,
) -> Response<Full<Bytes>> {
    let (mut after, mut limit) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("after", v)) => after = Some(v.to_owned()),
            Some(("limit", v)) => limit = v.parse::<usize>().ok(),
            _ => return error(node, ErrorCode::BadRequest, None),
        }
    }
    if after.is_none() && limit.is_none() {
        return json(StatusCode::OK, node, &items);
    }
    let after = match after.as_deref() {
        None => 0,
        Some(text) => match text.parse().ok().or_else(|| shared::purchase_number(text)) {
            Some(number) => number,
            None => return error(node, ErrorCode::BadRequest, None),
        },
    };
    let limit = limit.unwrap_or(shared::MAX_PAGE_LIMIT);
    let mut page: Vec<&T> = items
        .iter()
        .filter(|item| key(item).is_some_and(|k| k > after))
        .take(limit + 1)
        .collect();
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|item| next_of(item))
    } else {
        None
    };
    json(
        StatusCode::OK,
        node,
        &serde_json::json!({"items": page, "next": next}),
    )
}

fn purchase_key(p: &PurchaseBody) -> Option<u64> {
    shared::purchase_number(&p.purchase_id)
}

fn purchase_next(p: &PurchaseBody) -> serde_json::Value {
    p.purchase_id.clone().into()
}

/// An error answer from the API's table of codes: the status comes with the code.
fn error(node: &str, code: ErrorCode, available: Option<u64>) -> Response<Full<Bytes>> {
    let mut body = ErrorBody::new(code, code.as_str().replace('_', " "));
    body.available = available;
    let status = StatusCode::from_u16(code.status()).expect("a valid status");
    json(status, node, &body)
}

impl serve::Handler for Fake {
    type Body = Full<Bytes>;

    async fn handle(&self, request: Request<Incoming>, _peer: SocketAddr) -> Response<Full<Bytes>> {
        let node = if self
            .answers
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(2)
        {
            "fake-a"
        } else {
            "fake-b"
        };
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().map(str::to_owned);
        let query = query.as_deref();
        if method == Method::GET {
            let seen = format!("{path}?{}", query.unwrap_or(""));
            self.gets.lock().expect("lock").push(seen);
        }
        let key = request
            .headers()
            .get(IDEMPOTENCY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match request.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return error(node, ErrorCode::BadRequest, None),
        };
        let live;
        let (tickets, events, purchases) = match &*self.state {
            State::Fixed {
                tickets,
                events,
                purchases,
            } => (tickets, events, purchases),
            State::Live(inv) => {
                if method == Method::POST && path == "/purchases" {
                    return self.purchase(inv, node, key, &body);
                }
                live = listings_of(&inv.lock().expect("lock"));
                (&live.0, &live.1, &live.2)
            }
        };
        match (&method, path.as_str()) {
            (&Method::GET, "/events") => json(StatusCode::OK, node, events),
            (&Method::GET, "/tickets") => {
                listing(node, query, tickets, |t| Some(t.id), |t| t.id.into())
            }
            (&Method::GET, "/purchases") => {
                listing(node, query, purchases, purchase_key, purchase_next)
            }
            // The fake makes no holds: its list of them is empty, paged or not.
            (&Method::GET, "/holds") => {
                listing::<serde_json::Value>(node, query, &[], |_| None, |_| 0.into())
            }
            _ => error(node, ErrorCode::NotFound, None),
        }
    }
}

/// A live inventory's tickets, events and purchases as the API shows them now: what the
/// fixed state holds ready.
fn listings_of(inventory: &Inventory) -> (Vec<TicketBody>, Vec<EventBody>, Vec<PurchaseBody>) {
    (
        inventory.tickets().iter().map(TicketBody::from).collect(),
        inventory.events().iter().map(EventBody::from).collect(),
        inventory
            .purchases()
            .iter()
            .map(PurchaseBody::from)
            .collect(),
    )
}

impl Fake {
    fn purchase(
        &self,
        inventory: &Mutex<Inventory>,
        node: &str,
        key: Option<String>,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        let Ok(asked) = serde_json::from_slice::<PurchaseRequestBody>(body) else {
            return error(node, ErrorCode::BadRequest, None);
        };
        let (Ok(event), Ok(quantity)) = (
            EventName::parse(&asked.event),
            Quantity::new(asked.quantity),
        ) else {
            return error(node, ErrorCode::BadRequest, None);
        };
        let key = key.and_then(|k| IdempotencyKey::parse(&k).ok());
        let outcome = inventory.lock().expect("lock").purchase_tickets(
            &PurchaseRequest::new(event, quantity),
            key.as_ref(),
            node,
        );
        let first_attempt = key.as_ref().is_some_and(|k| {
            self.keys_seen
                .lock()
                .expect("lock")
                .insert(k.as_str().to_owned())
        });
        match outcome {
            Ok(_) if self.lose_first_answer && first_attempt => {
                error(node, ErrorCode::StoreUnavailable, None)
            }
            Ok(outcome) => json(
                StatusCode::CREATED,
                node,
                &PurchaseBody::from(outcome.purchase()),
            ),
            Err(PurchaseError::SoldOut { available, .. }) => {
                error(node, ErrorCode::SoldOut, Some(available))
            }
            Err(PurchaseError::UnknownEvent(_)) => error(node, ErrorCode::UnknownEvent, None),
            Err(err) => error(node, err.code(), None),
        }
    }
}

/// Runs the real `generator` binary with `args` and waits for it, killing it if it has
/// not finished after a generous safety limit (a hang, not a speed check).
pub async fn generator(args: &[&str]) -> Output {
    generator_with_env(args, &[]).await
}

/// Like [`generator`], with extra environment variables.
pub async fn generator_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_generator"));
    command
        .args(args)
        .env_remove("TICKETS_GENERATOR__TARGET")
        .env_remove("TICKETS_GENERATOR__REQUEST_TIMEOUT")
        .env_remove("TICKETS_GENERATOR__CONCURRENCY")
        .env_remove("TICKETS_GENERATOR__RETRIES")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let child = command.output();
    tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("generator hung for two minutes")
        .expect("generator starts")
}

/// Runs `generator load --target URL ARGS --report <temp file>`, checks that it succeeded,
/// and returns its output and the report it wrote.
pub async fn load_with_report(url: &str, args: &[&str]) -> (Output, serde_json::Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let report_path = dir.path().join("report.json");
    let report_arg = report_path.to_string_lossy().into_owned();
    let mut full = vec!["load", "--target", url];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--report", &report_arg]);
    let output = generator(&full).await;
    assert!(output.status.success(), "load failed: {}", stderr(&output));
    let text = std::fs::read_to_string(&report_path).expect("report written");
    let report = serde_json::from_str(&text).expect("report is valid JSON");
    (output, report)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
