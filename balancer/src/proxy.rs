//! Forwarding one request: buffering its body (within its size and time limits) so it can
//! be sent again, claiming an in-flight slot on a node (or a short wait in its queue), and
//! the attempts themselves: a request that may be sent again gets a hedged second attempt
//! on another node when the first is slow or its node goes down, and a failed attempt
//! goes on to another node as the retry policy (`retry`) and its budget allow. A node that
//! fails repeatedly is ejected from rotation for a while, never more than half of them.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::CONTENT_LENGTH;
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::ResponseBody;
use crate::error::Error;
use crate::h1::Wire;
use crate::headers;
use crate::metrics::Metrics;
use crate::node::{InFlight, Node};
use crate::pool::{self, SendError};
use crate::retry::{self, Failure, RetryBudget, give_up, may_resend, may_try_next};
use crate::selection::Selector;
use crate::settings::Settings;
use crate::upstreams::Upstreams;

/// The most of a refused (too large) request body read and dropped before answering.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// A request still unanswered after this starts watching its node's down signal, so it
/// moves on at once if the node is marked down. Shorter requests never pay for watching.
const WATCH_AFTER: Duration = Duration::from_millis(20);

/// Forwards requests to the nodes.
#[derive(Debug)]
pub struct Proxy {
    settings: Settings,
    budget: Arc<RetryBudget>,
    /// Where each node's time to answer is recorded, when set.
    metrics: Option<Arc<Metrics>>,
}

/// A client request as it is sent, possibly more than once.
struct Outgoing {
    /// Encoded once, head and body, for every attempt.
    wire: Wire,
    /// Whether it may be sent again after a node may have acted on it.
    resend: bool,
}

/// One attempt under way.
type Attempt<'a> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Failure>> + Send + 'a>>;

/// An attempt and the node it went to.
struct Running<'a> {
    node: &'a Arc<Node>,
    /// The node's count of times marked down when the attempt started.
    downs: u64,
    attempt: Attempt<'a>,
}

/// Completes with the first of the running attempts to finish, taking it out.
async fn first_finished<'a>(
    running: &mut [Option<Running<'a>>; 2],
) -> (&'a Arc<Node>, Result<Response<ResponseBody>, Failure>) {
    poll_fn(|cx| {
        for slot in running.iter_mut() {
            if let Some(run) = slot
                && let Poll::Ready(result) = run.attempt.as_mut().poll(cx)
            {
                let node = run.node;
                *slot = None;
                return Poll::Ready((node, result));
            }
        }
        Poll::Pending
    })
    .await
}

/// Completes when `watch` (if any) does.
async fn fired(watch: &mut Option<Pin<Box<dyn Future<Output = ()> + Send>>>) {
    match watch {
        Some(watch) => watch.await,
        None => std::future::pending().await,
    }
}

impl Proxy {
    pub fn new(settings: Settings, budget: Arc<RetryBudget>) -> Self {
        Self {
            settings,
            budget,
            metrics: None,
        }
    }

    /// Records each node's time to answer in `metrics`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        Self {
            metrics: Some(metrics),
            ..self
        }
    }

    /// Sends `request` to the next node in rotation, hedging and going on to others as the
    /// retry policy allows, and streams back the first response.
    pub async fn forward<B>(
        &self,
        upstreams: &Upstreams,
        selector: &Selector,
        request: Request<B>,
        peer: SocketAddr,
    ) -> Result<Response<ResponseBody>, Error>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // A request without a body (the usual read) needs no waiting to be made ready,
        // and so no body-reading future is made for it at all.
        let outgoing = if request.body().is_end_stream() {
            let (parts, _) = request.into_parts();
            self.outgoing(parts, &Bytes::new(), peer)
        } else {
            self.prepare(request, peer).await?
        };
        let resend = outgoing.resend;
        self.budget.deposit();
        let nodes = upstreams.local_nodes();
        let mut order = selector.order(&nodes);
        if order.is_empty() {
            return Err(Error::NoHealthyNodes);
        }
        let timeout = self.settings.response_timeout;
        let started = Instant::now();
        let deadline = started + timeout;
        let mut next = 0;
        let (node, slot) = match self.claim_free(&mut order, &mut next) {
            Some(claimed) => claimed,
            None => self.claim(&mut order, &mut next, true).await?,
        };
        let mut running: [Option<Running<'_>>; 2] = [
            Some(Running {
                downs: node.downs(),
                node,
                attempt: Box::pin(self.attempt(upstreams, node, slot, &outgoing)),
            }),
            None,
        ];
        // A request that may be sent again watches for a slow or downed node (a hedge).
        let mut watch_at = resend.then(|| started + WATCH_AFTER);
        let mut hedge_at = resend.then(|| started + self.settings.hedge_delay);
        let mut watch: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
        let mut worst: Option<Failure> = None;
        let mut retries = 0u32;
        let timer = tokio::time::sleep_until(watch_at.unwrap_or(deadline));
        tokio::pin!(timer);
        loop {
            let mut hedge_now = false;
            tokio::select! {
                biased;
                (node, result) = first_finished(&mut running) => {
                    let failure = match result {
                        Ok(response) => {
                            // A hedged-over attempt still running was too slow: say so.
                            for other in running.iter_mut().filter_map(Option::take) {
                                self.failed(upstreams, other.node, "slower than a hedged attempt elsewhere".into());
                            }
                            return Ok(response);
                        }
                        Err(failure) => failure,
                    };
                    worst = worst.max(Some(failure));
                    watch = None;
                    if running.iter().any(Option::is_some) {
                        // The other attempt may still answer.
                        continue;
                    }
                    if !may_try_next(failure, resend) {
                        return Err(give_up(failure, resend, timeout));
                    }
                    if next >= order.len() {
                        return Err(give_up(worst.unwrap_or(failure), resend, timeout));
                    }
                    if failure != Failure::Connect {
                        if !self.budget.withdraw() {
                            return Err(give_up(worst.unwrap_or(failure), resend, timeout));
                        }
                        retries += 1;
                        let wait = retry::backoff(self.settings.retry_backoff, retries);
                        tokio::time::sleep_until((Instant::now() + wait).min(deadline)).await;
                    }
                    node.record_retry();
                    debug!(node = %node.address, ?failure, "trying the next node");
                    let (node, slot) = self.claim(&mut order, &mut next, true).await?;
                    running[0] = Some(Running {
                        downs: node.downs(),
                        node,
                        attempt: Box::pin(self.attempt(upstreams, node, slot, &outgoing)),
                    });
                    if resend {
                        let now = Instant::now();
                        watch_at = Some(now + WATCH_AFTER);
                        hedge_at = hedge_at.map(|_| now + self.settings.hedge_delay);
                    }
                }
                () = fired(&mut watch) => {
                    // The node of the attempt under way was marked down.
                    watch = None;
                    hedge_now = true;
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if now >= deadline {
                        for other in running.iter_mut().filter_map(Option::take) {
                            let reason = format!("no response within {timeout:?}");
                            warn!(node = %other.node.address, cause = %reason, "node too slow");
                            self.failed(upstreams, other.node, reason);
                        }
                        return Err(give_up(Failure::Timeout, resend, timeout));
                    }
                    if watch_at.is_some_and(|at| now >= at) {
                        watch_at = None;
                        if let Some(run) = running.iter().flatten().next() {
                            // Marked down since the attempt started: move on now. (A node
                            // that was down already is in rotation only in panic mode.)
                            // Subscribed before looking, so a mark-down in between is seen.
                            let went_down = run.node.went_down();
                            if run.node.downs() == run.downs {
                                watch = Some(Box::pin(went_down));
                            } else {
                                hedge_now = true;
                            }
                        }
                    }
                    if hedge_at.is_some_and(|at| now >= at) {
                        hedge_now = true;
                    }
                }
            }
            if hedge_now && hedge_at.is_some() {
                hedge_at = None;
                let alone = running.iter().flatten().count() == 1;
                if alone && next < order.len() && self.budget.withdraw() {
                    // A hedge only goes where a slot is free: it must not queue.
                    if let Ok((node, slot)) = self.claim(&mut order, &mut next, false).await {
                        if let Some(run) = running.iter().flatten().next() {
                            run.node.record_hedge();
                        }
                        let free = if running[0].is_none() { 0 } else { 1 };
                        running[free] = Some(Running {
                            downs: node.downs(),
                            node,
                            attempt: Box::pin(self.attempt(upstreams, node, slot, &outgoing)),
                        });
                    }
                }
            }
            let wake = [watch_at, hedge_at, Some(deadline)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(deadline);
            timer.as_mut().reset(wake);
        }
    }

    /// Takes an in-flight slot on the first node of `order[*next..]` that has one free,
    /// moving it to `order[*next]`, if any has.
    fn claim_free<'a>(
        &self,
        order: &mut [&'a Arc<Node>],
        next: &mut usize,
    ) -> Option<(&'a Arc<Node>, InFlight)> {
        let limit = self.settings.max_in_flight;
        for i in *next..order.len() {
            if let Some(slot) = order[i].try_start_request(limit) {
                order.swap(i, *next);
                let node = order[*next];
                *next += 1;
                return Some((node, slot));
            }
        }
        None
    }

    /// Takes an in-flight slot on the first node of `order[*next..]` that has one free,
    /// moving it to `order[*next]`; with every node full, waits in the first one's queue
    /// (when `queue`), or fails with a fast 503.
    async fn claim<'a>(
        &self,
        order: &mut [&'a Arc<Node>],
        next: &mut usize,
        queue: bool,
    ) -> Result<(&'a Arc<Node>, InFlight), Error> {
        if let Some(claimed) = self.claim_free(order, next) {
            return Ok(claimed);
        }
        let limit = self.settings.max_in_flight;
        let Some(node) = order.get(*next).copied() else {
            return Err(Error::NodesBusy);
        };
        *next += 1;
        if !queue {
            return Err(Error::NodesBusy);
        }
        let queued = node
            .queue_for_slot(limit, self.settings.queue_size, self.settings.queue_timeout)
            .await;
        match queued {
            Some(slot) => Ok((node, slot)),
            None => {
                node.record_rejected();
                Err(Error::NodesBusy)
            }
        }
    }

    /// Counts a failed attempt on `node`, and ejects the node after `eject_after` in a row
    /// unless half the nodes are out already.
    fn failed(&self, upstreams: &Upstreams, node: &Node, reason: String) {
        let in_a_row = node.record_failure(reason);
        if in_a_row < self.settings.eject_after || node.is_ejected() {
            return;
        }
        let nodes = upstreams.nodes();
        let ejected = nodes.iter().filter(|n| n.is_ejected()).count();
        if (ejected + 1) * 2 > nodes.len() {
            return;
        }
        if node.eject(Instant::now() + self.settings.eject_time) {
            warn!(node = %node.address, failures = in_a_row, "node ejected after failing repeatedly");
        }
    }

    /// Buffers the body (within its size and time limits) and applies the header rules once.
    async fn prepare<B>(&self, request: Request<B>, peer: SocketAddr) -> Result<Outgoing, Error>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limit = self.settings.max_body_bytes;
        let body_timeout = self.settings.body_timeout;
        if declared.is_some_and(|length| length > limit as u64) {
            // Read and drop what the client is still sending (within reason), so it gets
            // the 413 rather than a broken pipe.
            let drain = Limited::new(body, DRAIN_LIMIT).collect();
            let _ = tokio::time::timeout(body_timeout, drain).await;
            return Err(Error::PayloadTooLarge { limit });
        }
        let body = if declared == Some(0) || body.is_end_stream() {
            Bytes::new()
        } else {
            match tokio::time::timeout(body_timeout, Limited::new(body, limit).collect()).await {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
                    return Err(Error::PayloadTooLarge { limit });
                }
                Ok(Err(err)) => {
                    debug!(cause = %err, "cannot read a request body");
                    return Err(Error::BodyUnreadable);
                }
                Err(_) => {
                    debug!("a request body did not arrive in time");
                    return Err(Error::BodyTimeout(body_timeout));
                }
            }
        };
        Ok(self.outgoing(parts, &body, peer))
    }

    /// The request as it is sent: the header rules applied once, and encoded with `body`.
    fn outgoing(
        &self,
        parts: hyper::http::request::Parts,
        body: &Bytes,
        peer: SocketAddr,
    ) -> Outgoing {
        let mut headers = parts.headers;
        headers::prepare_request(&mut headers, &parts.uri, body.len(), peer.ip());
        let root = PathAndQuery::from_static("/");
        let path_and_query = parts.uri.path_and_query().unwrap_or(&root);
        let outgoing = Outgoing {
            wire: Wire::encode(&parts.method, path_and_query, &headers, body),
            resend: may_resend(&parts.method, &headers),
        };
        headers::recycle(headers);
        outgoing
    }

    /// One attempt on one node, holding one of its in-flight slots.
    async fn attempt(
        &self,
        upstreams: &Upstreams,
        node: &Node,
        slot: InFlight,
        outgoing: &Outgoing,
    ) -> Result<Response<ResponseBody>, Failure> {
        let sent = std::time::Instant::now();
        match pool::send(node.address, self.settings.connect_timeout, &outgoing.wire).await {
            Ok(response) => {
                if let Some(metrics) = &self.metrics {
                    metrics.upstream_answered(node, sent.elapsed());
                }
                let (mut parts, body) = response.into_parts();
                // A 503 is the node saying it cannot serve now (the shared store, most
                // likely), which its health check reports; other 5xx are its own failure.
                if parts.status.is_server_error() && parts.status != StatusCode::SERVICE_UNAVAILABLE
                {
                    self.failed(upstreams, node, format!("answered {}", parts.status));
                } else {
                    node.record_success();
                }
                headers::strip_hop_by_hop(&mut parts.headers);
                // The slot travels with the body, so the request counts as in flight until
                // its response has been streamed back (or the client went away).
                Ok(Response::from_parts(parts, body.holding(slot)))
            }
            Err(SendError::Connect(reason)) => {
                if node.mark_down(reason.clone()) {
                    warn!(node = %node.address, cause = %reason, "node down: cannot connect");
                }
                self.failed(upstreams, node, reason);
                Err(Failure::Connect)
            }
            Err(SendError::Sent(reason)) => {
                warn!(node = %node.address, cause = %reason, "node failed during a request");
                self.failed(upstreams, node, reason);
                Err(Failure::Sent)
            }
        }
    }
}

/// An error and its chain of causes, as one line.
pub(crate) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn proxy(max_body_bytes: usize) -> Proxy {
        let settings = Settings {
            max_body_bytes,
            body_timeout: Duration::from_millis(100),
            ..Settings::default()
        };
        Proxy::new(settings, Arc::new(RetryBudget::new(0.2, 10)))
    }

    /// The error that forwarding `request` with a body limit of `max_body_bytes` ends in
    /// when no node is known, so that no request here can succeed.
    async fn refusal<B>(max_body_bytes: usize, request: Request<B>) -> Error
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let peer = SocketAddr::from(([127, 0, 0, 1], 5000));
        proxy(max_body_bytes)
            .forward(
                &Upstreams::new(Vec::new()),
                &Selector::default(),
                request,
                peer,
            )
            .await
            .expect_err("refused")
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_before_any_node_is_asked() {
        let request = Request::post("/purchases")
            .body(Full::new(Bytes::from_static(b"0123456789")))
            .expect("request");
        let err = refusal(8, request).await;
        assert_eq!(err.code(), "payload_too_large");
    }

    /// A request body that never sends anything.
    struct Stalled;

    impl Body for Stalled {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_slower_than_the_body_timeout_is_a_408() {
        let request = Request::post("/purchases").body(Stalled).expect("request");
        let err = refusal(1024, request).await;
        assert_eq!(err.code(), "request_timeout");
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test]
    async fn with_no_nodes_up_the_answer_is_no_healthy_nodes() {
        let request = Request::get("/events")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let err = refusal(8, request).await;
        assert_eq!(err.code(), "no_healthy_nodes");
    }
}
