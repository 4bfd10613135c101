//! Active health checks: every interval each known node is asked `GET /health`; `rise`
//! passes (a 2xx) in a row bring a down node back, `fall` failures in a row take an up
//! node down. Each round also ends the ejections whose time is up.
//!
//! A node that answers 200 with `"store":"slow"` passes: it can serve, and its store reads
//! wait because the store they all share is busy (another process holds its lock), which
//! taking it out of rotation would not cure. The balancer notes it (`store_slow` in
//! `/balancer/nodes`, `balancer_node_store_slow`, the status page) and keeps routing to it;
//! only a node that cannot read the store at all answers 503 and fails.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use shared::api::{HealthBody, StoreHealth};

use crate::proxy::describe;
use crate::upstreams::Upstreams;

/// The pooled client the health checks use (forwarded requests use [`crate::pool`]).
pub type NodeClient = Client<HttpConnector, Full<Bytes>>;

/// Builds the health checks' client, with `connect_timeout` on opening a connection.
pub fn node_client(connect_timeout: Duration) -> NodeClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// How many checks in a row change a node's verdict.
#[derive(Debug, Clone, Copy)]
pub struct RiseFall {
    /// Passes in a row that bring a down node back.
    pub rise: u32,
    /// Failures in a row that take an up node down.
    pub fall: u32,
}

/// A passed health check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Passed {
    /// The node said the shared store is slow (`"store":"slow"` in its 200 body).
    pub store_slow: bool,
}

/// What a 2xx health answer's body says of the store: slow only when it says so in the
/// nodes' own terms (any other body, or none, is a plain pass).
fn passed(body: &[u8]) -> Passed {
    let said = serde_json::from_slice::<HealthBody>(body).ok();
    Passed {
        store_slow: said.and_then(|body| body.store) == Some(StoreHealth::Slow),
    }
}

/// Asks one node `GET /health` within `timeout`; Ok on a 2xx answer.
pub async fn check_http(
    client: NodeClient,
    address: SocketAddr,
    timeout: Duration,
) -> Result<Passed, String> {
    let uri: Uri = format!("http://{address}/health")
        .parse()
        .map_err(|err| format!("bad health URI: {err}"))?;
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = uri;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|err| format!("health check failed: {}", describe(&err)))?;
        let status = response.status();
        // Reading the (small) body lets the connection go back to the pool.
        let body = response.into_body().collect().await;
        if status.is_success() {
            Ok(body.map(|b| passed(&b.to_bytes())).unwrap_or_default())
        } else {
            Err(format!("health check answered {status}"))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("health check got no answer within {timeout:?}"))?
}

/// Checks every known node once, concurrently, and records the outcomes.
pub async fn check_all<C, F>(upstreams: &Upstreams, check: &C, counts: RiseFall)
where
    C: Fn(SocketAddr) -> F,
    F: Future<Output = Result<Passed, String>> + Send + 'static,
{
    let now = tokio::time::Instant::now();
    for node in upstreams.nodes().iter() {
        if node.end_ejection_if_due(now) {
            info!(node = %node.address, "ejection over: node back in rotation");
        }
    }
    let mut checks = JoinSet::new();
    for node in upstreams.nodes().iter() {
        let node = Arc::clone(node);
        let outcome = check(node.address);
        checks.spawn(async move { (node, outcome.await) });
    }
    while let Some(joined) = checks.join_next().await {
        let Ok((node, outcome)) = joined else {
            // A check task only ends early if it panicked; the next round checks again.
            continue;
        };
        if let Ok(pass) = &outcome
            && node.set_store_slow(pass.store_slow)
        {
            if pass.store_slow {
                warn!(node = %node.address, "node says the shared store is slow: kept in rotation");
            } else {
                info!(node = %node.address, "node says the shared store answers again");
            }
        }
        let passed = outcome.is_ok();
        let change = node.health_checked(passed, counts.rise, counts.fall);
        match (change, outcome) {
            (Some(true), _) => info!(node = %node.address, "node up: health checks passed"),
            (Some(false), Err(reason)) => {
                warn!(node = %node.address, cause = %reason, "node down: health checks failed");
                node.note_error(reason);
            }
            (_, Err(reason)) => node.note_error(reason),
            _ => {}
        }
    }
}

/// Checks every node every `interval`, for as long as the task runs; the first round is
/// at once.
pub async fn keep_checking<C, F>(
    upstreams: Arc<Upstreams>,
    interval: Duration,
    counts: RiseFall,
    check: C,
) where
    C: Fn(SocketAddr) -> F,
    F: Future<Output = Result<Passed, String>> + Send + 'static,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        check_all(&upstreams, &check, counts).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstreams::tests::of_each;
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// One result flips a node, to test the checks apart from rise/fall.
    const ONCE: RiseFall = RiseFall { rise: 1, fall: 1 };

    fn upstreams_of(ports: &[u16]) -> Arc<Upstreams> {
        let names = ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}").parse().expect("name"))
            .collect();
        Arc::new(Upstreams::new(names))
    }

    async fn resolved(ports: &[u16]) -> Arc<Upstreams> {
        let upstreams = upstreams_of(ports);
        upstreams
            .refresh(|n: crate::settings::NodeName| async move {
                Ok(vec![SocketAddr::from(([127, 0, 0, 1], n.port))])
            })
            .await;
        upstreams
    }

    /// A check that fails with `error` for each address `fails` picks, and passes the rest.
    fn failing_when(
        error: &'static str,
        fails: impl Fn(SocketAddr) -> bool,
    ) -> impl Fn(SocketAddr) -> std::future::Ready<Result<Passed, String>> {
        move |address| {
            std::future::ready(if fails(address) {
                Err(error.to_owned())
            } else {
                Ok(Passed::default())
            })
        }
    }

    /// Runs `check` over `upstreams` every second, with `counts`, on a task of its own.
    fn check_every_second<C, F>(
        upstreams: &Arc<Upstreams>,
        counts: RiseFall,
        check: C,
    ) -> tokio::task::JoinHandle<()>
    where
        C: Fn(SocketAddr) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Passed, String>> + Send + 'static,
    {
        tokio::spawn(keep_checking(
            Arc::clone(upstreams),
            Duration::from_secs(1),
            counts,
            check,
        ))
    }

    fn up_ports(upstreams: &Upstreams) -> Vec<u16> {
        of_each(&upstreams.healthy(), |n| n.address.port())
    }

    #[tokio::test]
    async fn a_failing_check_marks_down_and_a_passing_one_brings_back() {
        let upstreams = resolved(&[1, 2]).await;
        let failing: Arc<Mutex<HashSet<u16>>> = Arc::new(Mutex::new(HashSet::from([2])));
        let check = {
            let failing = Arc::clone(&failing);
            failing_when("health check answered 503", move |address| {
                failing.lock().expect("lock").contains(&address.port())
            })
        };
        check_all(&upstreams, &check, ONCE).await;
        assert_eq!(up_ports(&upstreams), [1]);
        let down = &upstreams.nodes()[1];
        assert_eq!(
            down.snapshot(Duration::ZERO).last_error.as_deref(),
            Some("health check answered 503")
        );

        failing.lock().expect("lock").clear();
        check_all(&upstreams, &check, ONCE).await;
        assert_eq!(up_ports(&upstreams), [1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn checks_run_at_once_and_then_every_interval() {
        let upstreams = resolved(&[1]).await;
        let rounds = Arc::new(AtomicUsize::new(0));
        let check = {
            let rounds = Arc::clone(&rounds);
            move |_: SocketAddr| {
                rounds.fetch_add(1, Ordering::SeqCst);
                async { Err::<Passed, _>("refused".to_owned()) }
            }
        };
        let task = check_every_second(&upstreams, ONCE, check);
        // Under paused time these sleeps only move the virtual clock: the checks at 0 s,
        // 1 s, 2 s and 3 s have all run by 3.5 s, and none other.
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 4);
        assert!(up_ports(&upstreams).is_empty());
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_goes_down_after_three_failed_rounds_and_back_after_two_passes() {
        let upstreams = resolved(&[1]).await;
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let check = {
            let failing = Arc::clone(&failing);
            failing_when("timed out", move |_| failing.load(Ordering::SeqCst))
        };
        let task = check_every_second(&upstreams, RiseFall { rise: 2, fall: 3 }, check);
        // Rounds at 0 s and 1 s have failed: still up.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(up_ports(&upstreams), [1]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(up_ports(&upstreams).is_empty(), "down after the third");
        failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(up_ports(&upstreams).is_empty(), "one pass is not enough");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(up_ports(&upstreams), [1], "back after the second");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_node_returns_at_the_first_round_after_its_time() {
        let upstreams = resolved(&[1, 2]).await;
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        assert!(upstreams.nodes()[0].eject(until));
        let pass = |_: SocketAddr| async { Ok::<Passed, String>(Passed::default()) };
        check_all(&upstreams, &pass, ONCE).await;
        assert_eq!(up_ports(&upstreams), [2]);
        tokio::time::advance(Duration::from_secs(5)).await;
        check_all(&upstreams, &pass, ONCE).await;
        assert_eq!(up_ports(&upstreams), [1, 2]);
    }

    #[tokio::test]
    async fn a_node_saying_its_store_is_slow_passes_and_is_noted() {
        let upstreams = resolved(&[1, 2]).await;
        let slow = |address: SocketAddr| async move {
            Ok::<Passed, String>(Passed {
                store_slow: address.port() == 2,
            })
        };
        check_all(&upstreams, &slow, ONCE).await;
        assert_eq!(up_ports(&upstreams), [1, 2], "both stay in rotation");
        let said: Vec<bool> = upstreams.nodes().iter().map(|n| n.store_slow()).collect();
        assert_eq!(said, [false, true]);
        let pass = |_: SocketAddr| async { Ok::<Passed, String>(Passed::default()) };
        check_all(&upstreams, &pass, ONCE).await;
        assert!(
            !upstreams.nodes()[1].store_slow(),
            "cleared by a plain pass"
        );
    }

    #[test]
    fn only_the_nodes_own_words_say_the_store_is_slow() {
        assert!(passed(br#"{"status":"ok","node":"n1","store":"slow"}"#).store_slow);
        assert!(!passed(br#"{"status":"ok","node":"n1"}"#).store_slow);
        assert!(!passed(b"OK").store_slow);
        assert!(!passed(b"").store_slow);
    }

    #[tokio::test]
    async fn a_closed_port_fails_the_http_check() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let client = node_client(Duration::from_secs(1));
        let outcome = check_http(
            client,
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2),
        )
        .await;
        assert!(outcome.is_err());
    }
}
