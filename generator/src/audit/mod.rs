//! `generator audit`: reads the whole inventory and every purchase through the public API,
//! a page at a time, and checks that nothing was sold twice and that every count agrees
//! ([`check`]).

pub mod check;

use std::fmt;
use std::time::Duration;

use shared::MAX_PAGE_LIMIT;
use shared::api::{EventBody, PurchaseBody, TicketBody};
use thiserror::Error;
use tracing::info;

use crate::client::{ApiClient, ClientError, Target};
pub use check::{Totals, Violation};

/// How many times the audit reads everything again when purchases were committed while
/// it was reading.
const SNAPSHOT_ATTEMPTS: u32 = 5;
/// The pause between two such attempts.
const SNAPSHOT_PAUSE: Duration = Duration::from_millis(500);
/// How many violations the summary lists before saying how many more there are.
const LISTED_VIOLATIONS: usize = 50;

/// Why the audit could not judge the cluster (as opposed to finding violations).
#[derive(Debug, Error)]
pub enum AuditError {
    #[error(transparent)]
    Fetch(#[from] ClientError),
    #[error(
        "purchases kept being committed while the audit read the inventory ({0} attempts); \
         audit a cluster that is not under load"
    )]
    Unsettled(u32),
}

/// What the audit found.
#[derive(Debug, Clone)]
pub struct AuditReport {
    pub target: String,
    pub totals: Totals,
    /// Empty when the cluster kept every promise.
    pub violations: Vec<Violation>,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.totals;
        writeln!(f, "audit of {}", self.target)?;
        writeln!(
            f,
            "  {} tickets over {} events: {} sold, {} available",
            t.tickets,
            t.events,
            t.sold,
            t.tickets - t.sold.min(t.tickets)
        )?;
        writeln!(
            f,
            "  {} purchases holding {} tickets, ${}.{:02}",
            t.purchases,
            t.tickets_in_purchases,
            t.revenue_cents / 100,
            t.revenue_cents % 100
        )?;
        if self.is_clean() {
            return writeln!(f, "  OK: no violations");
        }
        writeln!(f, "  {} VIOLATIONS:", self.violations.len())?;
        for v in self.violations.iter().take(LISTED_VIOLATIONS) {
            writeln!(f, "    {v}")?;
        }
        if self.violations.len() > LISTED_VIOLATIONS {
            writeln!(
                f,
                "    ... and {} more",
                self.violations.len() - LISTED_VIOLATIONS
            )?;
        }
        Ok(())
    }
}

/// Reads everything from `target` and checks it.
pub async fn audit(target: Target, request_timeout: Duration) -> Result<AuditReport, AuditError> {
    let client = ApiClient::new(target.clone(), request_timeout, 4);
    let (tickets, events, purchases) = snapshot(&client).await?;
    info!(
        tickets = tickets.len(),
        events = events.len(),
        purchases = purchases.len(),
        "read the inventory"
    );
    let (violations, totals) = check::check(&tickets, &events, &purchases);
    Ok(AuditReport {
        target: target.to_string(),
        totals,
        violations,
    })
}

/// Every purchase, read a page at a time so no answer is the whole store.
async fn purchases(client: &ApiClient) -> Result<Vec<PurchaseBody>, ClientError> {
    client
        .get_all_pages::<PurchaseBody, String>("/purchases", MAX_PAGE_LIMIT)
        .await
}

type Snapshot = (Vec<TicketBody>, Vec<EventBody>, Vec<PurchaseBody>);

/// Reads tickets, events and purchases so that no purchase was committed in between:
/// purchases are only ever added, so the same count before and after means none was.
async fn snapshot(client: &ApiClient) -> Result<Snapshot, AuditError> {
    for attempt in 1..=SNAPSHOT_ATTEMPTS {
        let before = purchases(client).await?;
        let tickets = client
            .get_all_pages::<TicketBody, u64>("/tickets", MAX_PAGE_LIMIT)
            .await?;
        let events: Vec<EventBody> = client.get_json("/events").await?;
        let after = purchases(client).await?;
        if before.len() == after.len() {
            return Ok((tickets, events, after));
        }
        info!(
            attempt,
            before = before.len(),
            after = after.len(),
            "purchases changed while reading; reading again"
        );
        tokio::time::sleep(SNAPSHOT_PAUSE).await;
    }
    Err(AuditError::Unsettled(SNAPSHOT_ATTEMPTS))
}
