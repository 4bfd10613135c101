//! The retry policy: which failed requests may go on to another node, the error a client
//! gets when one goes no further, the retry budget that caps retries and hedges at a share
//! of the requests, and the backoff between retries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::Method;
use hyper::header::HeaderMap;
use shared::api::IDEMPOTENCY_HEADER;

use crate::error::Error;

/// Whether a request that a node may already have acted on can be sent to another node:
/// reads are safe to repeat, and a write with an `Idempotency-Key` is made safe by the node.
pub fn may_resend(method: &Method, headers: &HeaderMap) -> bool {
    *method == Method::GET || *method == Method::HEAD || headers.contains_key(IDEMPOTENCY_HEADER)
}

/// How one forwarding attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// No connection could be opened: nothing was sent, so trying elsewhere is always safe.
    Connect,
    /// The connection broke after the request was (possibly) sent.
    Sent,
    /// The node had the request but sent no response headers in time.
    Timeout,
}

/// Whether a request that failed this way may go on to the next node.
pub fn may_try_next(failure: Failure, resend_allowed: bool) -> bool {
    failure == Failure::Connect || resend_allowed
}

/// The error a client gets when its request goes no further; `worst` is the most telling
/// failure among its attempts (a timeout over a broken connection over a refused one).
pub fn give_up(worst: Failure, resend_allowed: bool, response_timeout: Duration) -> Error {
    match worst {
        Failure::Connect => Error::NoHealthyNodes,
        Failure::Sent if resend_allowed => {
            Error::BadGateway("every node tried failed before answering")
        }
        Failure::Sent => Error::BadGateway(
            "the node failed after receiving the request, which was not sent again because \
             that could repeat it; only GET, HEAD and requests with an Idempotency-Key header \
             are retried",
        ),
        Failure::Timeout => Error::UpstreamTimeout(response_timeout),
    }
}

/// The wait before the `retry`-th retry (1 for the first) of a request whose attempt
/// reached a node: `base` doubled each time, at most 8 x `base`.
pub fn backoff(base: Duration, retry: u32) -> Duration {
    base.saturating_mul(1 << retry.saturating_sub(1).min(3))
}

/// Caps retries and hedged attempts at `ratio` of the requests plus `min_per_second`, over
/// a window of about ten seconds (the counts decay by a tenth each second), so a sick
/// cluster is not sent twice its load. Refused connections are not counted: nothing was
/// sent, and the node is marked down at once.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u64,
    /// Requests in the window (decaying).
    requests: AtomicU64,
    /// Retries and hedges in the window (decaying).
    spent: AtomicU64,
    /// Retries and hedges refused for want of budget, ever.
    exhausted: AtomicU64,
    /// Retries and hedges allowed, ever.
    allowed: AtomicU64,
}

/// The window the budget's counts cover, in decay steps of one second.
const BUDGET_WINDOW_SECONDS: u64 = 10;

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        Self {
            ratio,
            min_per_second: u64::from(min_per_second),
            requests: AtomicU64::new(0),
            spent: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
            allowed: AtomicU64::new(0),
        }
    }

    /// Counts one request towards the budget.
    pub fn deposit(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry or hedge from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let requests = self.requests.load(Ordering::Relaxed) as f64;
        let cap = (self.min_per_second * BUDGET_WINDOW_SECONDS) as f64 + self.ratio * requests;
        if (self.spent.load(Ordering::Relaxed) as f64) < cap {
            self.spent.fetch_add(1, Ordering::Relaxed);
            self.allowed.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.exhausted.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// One second passes: the window's counts lose a tenth.
    pub fn decay(&self) {
        for count in [&self.requests, &self.spent] {
            let now = count.load(Ordering::Relaxed);
            count.fetch_sub(now / BUDGET_WINDOW_SECONDS, Ordering::Relaxed);
        }
    }

    /// Retries and hedges allowed so far.
    pub fn allowed(&self) -> u64 {
        self.allowed.load(Ordering::Relaxed)
    }

    /// Retries and hedges refused so far for want of budget.
    pub fn exhausted(&self) -> u64 {
        self.exhausted.load(Ordering::Relaxed)
    }
}

/// Decays `budget` every second, for as long as the task runs.
pub async fn keep_decaying(budget: std::sync::Arc<RetryBudget>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    loop {
        ticks.tick().await;
        budget.decay();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::header_map as headers;

    #[test]
    fn only_reads_and_keyed_writes_may_be_sent_again() {
        let none = HeaderMap::new();
        let keyed = headers(&[("Idempotency-Key", "abc")]);
        assert!(may_resend(&Method::GET, &none));
        assert!(may_resend(&Method::HEAD, &none));
        assert!(!may_resend(&Method::POST, &none));
        assert!(!may_resend(&Method::DELETE, &none));
        assert!(may_resend(&Method::POST, &keyed));
    }

    #[test]
    fn a_refused_connection_always_moves_on_but_a_sent_write_does_not() {
        assert!(may_try_next(Failure::Connect, false));
        assert!(may_try_next(Failure::Connect, true));
        assert!(!may_try_next(Failure::Sent, false));
        assert!(may_try_next(Failure::Sent, true));
        assert!(!may_try_next(Failure::Timeout, false));
        assert!(may_try_next(Failure::Timeout, true));
    }

    #[test]
    fn giving_up_names_the_most_telling_failure() {
        let timeout = Duration::from_secs(10);
        assert_eq!(
            give_up(Failure::Connect, false, timeout).code(),
            "no_healthy_nodes"
        );
        let unsafe_write = give_up(Failure::Sent, false, timeout);
        assert_eq!(unsafe_write.code(), "bad_gateway");
        assert!(unsafe_write.to_string().contains("Idempotency-Key"));
        assert_eq!(give_up(Failure::Sent, true, timeout).code(), "bad_gateway");
        assert_eq!(
            give_up(Failure::Timeout, true, timeout).code(),
            "upstream_timeout"
        );
        assert!(Failure::Timeout > Failure::Sent && Failure::Sent > Failure::Connect);
    }

    #[test]
    fn retries_take_at_most_the_budgets_share_of_requests() {
        let budget = RetryBudget::new(0.2, 0);
        for _ in 0..100 {
            budget.deposit();
        }
        let allowed = (0..50).filter(|_| budget.withdraw()).count();
        assert_eq!(allowed, 20, "a fifth of 100 requests");
        assert_eq!(budget.exhausted(), 30);
        // With no new requests the window empties and so does the allowance.
        for _ in 0..60 {
            budget.decay();
        }
        assert!(!budget.withdraw());
    }

    #[test]
    fn a_quiet_balancer_still_has_its_minimum_of_retries() {
        let budget = RetryBudget::new(0.2, 1);
        let allowed = (0..20).filter(|_| budget.withdraw()).count();
        assert_eq!(allowed, 10, "one a second over the ten-second window");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_decays_every_second() {
        let budget = std::sync::Arc::new(RetryBudget::new(0.5, 0));
        for _ in 0..100 {
            budget.deposit();
        }
        let task = tokio::spawn(keep_decaying(std::sync::Arc::clone(&budget)));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(budget.requests.load(Ordering::Relaxed), 90);
        task.abort();
    }

    #[test]
    fn backoff_doubles_up_to_eight_times_its_base() {
        let base = Duration::from_millis(10);
        let waits: Vec<u128> = (1..=6).map(|n| backoff(base, n).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 80, 80]);
    }
}
