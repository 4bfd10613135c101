//! Group commit: orders (purchases, holds, confirmations, releases, cancellations) that
//! arrive at this node while a commit is under way wait in a queue, and the next commit
//! decides all of them in one store lock hold and makes them durable with one sync, so the
//! sale rate can exceed the disk's sync rate. Those that arrive while that commit waits for
//! the store's lock (other nodes' commits) join it once the lock is held.
//!
//! The commit thread is supervised: if a commit panics, the node reports itself unhealthy
//! (`running()` is false, so `GET /health` answers 503 and the balancer stops sending it
//! purchases), waits `restart_delay`, and runs the commit loop again on the same queue.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use shared::{DecisionError, Order, Outcome};
use store::{StoreError, TicketStore};
use tokio::sync::{mpsc, oneshot};
use tracing::error;

use crate::metrics::Metrics;

/// The most orders decided in one commit.
const MAX_BATCH: usize = 256;

/// How long the node stays unhealthy after its commit thread panicked, before it runs it
/// again: long enough for the balancer's health check to notice.
pub const RESTART_DELAY: Duration = Duration::from_secs(2);

/// One order's outcome; the store error is shared by every order of a failed batch.
pub type CommitResult = Result<Result<Outcome, DecisionError>, Arc<StoreError>>;

enum Job {
    Order {
        order: Order,
        reply: oneshot::Sender<CommitResult>,
    },
    /// Makes the commit thread panic, as a bug would: for the tests of its supervision.
    #[cfg(test)]
    Panic,
}

/// Whether the commit loop is running, and how often it was restarted.
#[derive(Debug, Default)]
struct Health {
    running: AtomicBool,
    restarts: AtomicU64,
}

/// The queue in front of this node's commit thread. The thread ends when the last clone of
/// the committer is dropped.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::UnboundedSender<Job>,
    health: Arc<Health>,
}

impl Committer {
    /// Starts the commit thread; fails only if the thread cannot be created.
    pub fn start(
        store: TicketStore,
        node: Arc<str>,
        metrics: Arc<Metrics>,
        restart_delay: Duration,
    ) -> std::io::Result<Self> {
        let (queue, mut jobs) = mpsc::unbounded_channel();
        let health = Arc::new(Health::default());
        health.running.store(true, Ordering::SeqCst);
        let shared = Arc::clone(&health);
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                loop {
                    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        commit_loop(&store, &node, &metrics, &mut jobs)
                    }));
                    if run.is_ok() {
                        // The queue closed: the node is shutting down.
                        break;
                    }
                    shared.running.store(false, Ordering::SeqCst);
                    error!(delay = ?restart_delay, "the commit thread panicked; restarting it");
                    std::thread::sleep(restart_delay);
                    shared.restarts.fetch_add(1, Ordering::SeqCst);
                    shared.running.store(true, Ordering::SeqCst);
                }
            })?;
        Ok(Self { queue, health })
    }

    /// Whether orders are being committed: false from a panic of the commit thread
    /// until it runs again.
    pub fn running(&self) -> bool {
        self.health.running.load(Ordering::SeqCst)
    }

    /// How often the commit thread was restarted after a panic.
    #[cfg(test)]
    pub fn restarts(&self) -> u64 {
        self.health.restarts.load(Ordering::SeqCst)
    }

    /// Queues `order` for the next commit and waits for its outcome. `None` when the
    /// commit thread stopped before answering (it panicked, or the node is stopping): the
    /// order may or may not have been committed.
    pub async fn commit(&self, order: Order) -> Option<CommitResult> {
        let (reply, outcome) = oneshot::channel();
        self.queue.send(Job::Order { order, reply }).ok()?;
        outcome.await.ok()
    }

    /// Makes the commit thread panic and waits until its supervisor has seen it (it is
    /// down, or already restarted).
    #[cfg(test)]
    pub async fn kill_for_test(&self) {
        let restarts = self.restarts();
        let _ = self.queue.send(Job::Panic);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.running() && self.restarts() == restarts {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the commit thread did not stop"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn commit_loop(
    store: &TicketStore,
    node: &str,
    metrics: &Metrics,
    jobs: &mut mpsc::UnboundedReceiver<Job>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = jobs.blocking_recv() {
        let mut killed = false;
        let mut orders = Vec::new();
        take(&mut batch, &mut orders, &mut killed, first);
        orders.extend(drain(&mut batch, jobs, &mut killed));
        if !batch.is_empty() {
            let started = std::time::Instant::now();
            // Orders that arrive while the commit waits for the store's lock (other nodes'
            // commits) join it once the lock is held, rather than waiting for the next.
            let decided = store.commit_batch_joining(
                &orders,
                &mut || drain(&mut batch, jobs, &mut killed),
                node,
            );
            metrics.commit_observed(batch.len(), started.elapsed(), decided.is_ok());
            match decided {
                Ok(committed) => {
                    metrics.store_timings(committed.lock_wait, committed.append_and_sync);
                    for ((_, reply), outcome) in batch.drain(..).zip(committed.outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(err) => {
                    let err = Arc::new(err);
                    for (_, reply) in batch.drain(..) {
                        let _ = reply.send(Err(Arc::clone(&err)));
                    }
                }
            }
        }
        // Outside the store call, which would catch it: the supervisor must see it.
        if killed {
            panic!("commit thread killed by a test");
        }
    }
}

/// An order waiting for its commit, and where its outcome goes.
type Pending = (Order, oneshot::Sender<CommitResult>);

/// Moves queued orders into `batch` until it holds `MAX_BATCH` or the queue is empty (or a
/// test's kill job comes), and returns them.
fn drain(
    batch: &mut Vec<Pending>,
    jobs: &mut mpsc::UnboundedReceiver<Job>,
    killed: &mut bool,
) -> Vec<Order> {
    let mut orders = Vec::new();
    while batch.len() < MAX_BATCH && !*killed {
        match jobs.try_recv() {
            Ok(job) => take(batch, &mut orders, killed, job),
            Err(_) => break,
        }
    }
    orders
}

/// Adds an order to the batch; a test's kill job sets `killed` instead.
#[cfg_attr(not(test), allow(unused_variables))]
fn take(batch: &mut Vec<Pending>, orders: &mut Vec<Order>, killed: &mut bool, job: Job) {
    match job {
        Job::Order { order, reply } => {
            orders.push(order.clone());
            batch.push((order, reply));
        }
        #[cfg(test)]
        Job::Panic => *killed = true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::{Command, EventName, Quantity, SaleRequest, Selection};

    fn order() -> Order {
        Order::new(Command::Purchase(SaleRequest {
            event: EventName::parse("concert").expect("valid"),
            selection: Selection::Quantity(Quantity::new(1).expect("valid")),
            customer: None,
        }))
    }

    fn committer(dir: &std::path::Path, restart_delay: Duration) -> Committer {
        cluster::seed_store(dir, &[("concert", 5, 100)]).expect("seed");
        let store = TicketStore::new(dir, Duration::from_secs(5));
        let metrics = Arc::new(Metrics::new("n1"));
        Committer::start(store, Arc::from("n1"), metrics, restart_delay).expect("starts")
    }

    #[tokio::test]
    async fn a_panicked_commit_thread_is_restarted_and_commits_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let committer = committer(dir.path(), Duration::ZERO);
        assert!(matches!(committer.commit(order()).await, Some(Ok(Ok(_)))));
        committer.kill_for_test().await;
        // The order queued behind the panic waits for the restarted loop.
        let after = committer.commit(order()).await;
        assert!(matches!(after, Some(Ok(Ok(_)))), "{after:?}");
        assert!(committer.running());
        assert_eq!(committer.restarts(), 1);
    }

    #[tokio::test]
    async fn holds_confirms_releases_and_purchases_queued_together_each_get_their_own_outcome() {
        let dir = tempfile::tempdir().expect("tempdir");
        let committer = committer(dir.path(), Duration::ZERO);
        let hold = |seat: u64| {
            let sale = SaleRequest {
                event: EventName::parse("concert").expect("valid"),
                selection: Selection::Seats(shared::Seats::new(vec![seat]).expect("valid")),
                customer: None,
            };
            Order::new(Command::Hold(shared::HoldRequest {
                sale,
                ttl: shared::Ttl::default(),
            }))
        };
        let mut held = Vec::new();
        for seat in 1..=2 {
            match committer.commit(hold(seat)).await {
                Some(Ok(Ok(Outcome::Hold(decided)))) => held.push(decided.item.hold.hold_id),
                other => panic!("{other:?}"),
            }
        }
        // In flight at once: confirm one hold, release the other, buy two more seats, and
        // hold a seat that is held already.
        let operator = shared::Proof::operator();
        let confirm = Order::new(Command::Confirm {
            hold_id: held[0].clone(),
        })
        .with_proof(operator.clone());
        let release = Order::new(Command::Release {
            hold_id: held[1].clone(),
        })
        .with_proof(operator);
        let (a, b, c, d, e) = tokio::join!(
            committer.commit(confirm),
            committer.commit(release),
            committer.commit(order()),
            committer.commit(order()),
            committer.commit(hold(1)),
        );
        let mut answers = [a, b, c, d, e]
            .into_iter()
            .map(|a| a.expect("answered").expect("committed"));
        match answers.next() {
            Some(Ok(Outcome::Purchase(p))) => assert_eq!(p.item.hold_id.as_ref(), Some(&held[0])),
            other => panic!("confirm: {other:?}"),
        }
        match answers.next() {
            Some(Ok(Outcome::Hold(h))) => assert_eq!(h.item.status.as_str(), "released"),
            other => panic!("release: {other:?}"),
        }
        for _ in 0..2 {
            assert!(matches!(answers.next(), Some(Ok(Outcome::Purchase(_)))));
        }
        assert!(
            matches!(
                answers.next(),
                Some(Err(DecisionError::TicketsUnavailable { .. }))
            ),
            "seat 1 is sold by the confirmation"
        );
    }

    #[tokio::test]
    async fn a_commit_thread_waiting_to_restart_reports_not_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let committer = committer(dir.path(), Duration::from_secs(3600));
        committer.kill_for_test().await;
        assert!(!committer.running());
        assert_eq!(committer.restarts(), 0);
    }
}
