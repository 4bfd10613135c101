//! Group commit: purchases that arrive at this node while a commit is under way wait in a
//! queue, and the next commit decides all of them in one store lock hold and makes them
//! durable with one sync, so the sale rate can exceed the disk's sync rate.

use std::sync::Arc;

use shared::{PurchaseError, PurchaseOutcome};
use store::PurchaseOrder;
use store::{StoreError, TicketStore};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// The most purchases decided in one commit.
const MAX_BATCH: usize = 256;

/// One order's outcome; the store error is shared by every order of a failed batch.
pub type CommitResult = Result<Result<PurchaseOutcome, PurchaseError>, Arc<StoreError>>;

struct Job {
    order: PurchaseOrder,
    reply: oneshot::Sender<CommitResult>,
}

/// The queue in front of this node's commit thread. The thread ends when the last clone of
/// the committer is dropped.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::UnboundedSender<Job>,
}

impl Committer {
    pub fn start(store: TicketStore, node: Arc<str>, metrics: Arc<Metrics>) -> Self {
        let (queue, jobs) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || commit_loop(&store, &node, &metrics, jobs))
            .map(|_| ())
            .unwrap_or_else(|err| tracing::error!(cause = %err, "cannot start the commit thread"));
        Self { queue }
    }

    /// Queues `order` for the next commit and waits for its outcome. `None` when the commit
    /// thread is gone.
    pub async fn commit(&self, order: PurchaseOrder) -> Option<CommitResult> {
        let (reply, outcome) = oneshot::channel();
        self.queue.send(Job { order, reply }).ok()?;
        outcome.await.ok()
    }
}

fn commit_loop(
    store: &TicketStore,
    node: &str,
    metrics: &Metrics,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let orders: Vec<PurchaseOrder> = batch.iter().map(|j| j.order.clone()).collect();
        let started = std::time::Instant::now();
        let decided = store.purchase_batch(&orders, node);
        metrics.commit_observed(orders.len(), started.elapsed(), decided.is_ok());
        match decided {
            Ok(committed) => {
                metrics.store_timings(committed.lock_wait, committed.append_and_sync);
                for (job, outcome) in batch.drain(..).zip(committed.outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(err) => {
                let err = Arc::new(err);
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(Arc::clone(&err)));
                }
            }
        }
    }
}
