//! `generator audit`: reads the whole inventory, every purchase and every hold through the
//! public API, a page at a time, and checks that nothing was sold twice, that no ticket is
//! both held and sold, that cancelled purchases gave their tickets back, and that every
//! count agrees ([`check`]).

pub mod check;

use std::fmt;
use std::time::Duration;

use shared::MAX_PAGE_LIMIT;
use thiserror::Error;
use tracing::info;

use crate::client::{ApiClient, ClientError, Target};
use crate::wire::{Event, Hold, Purchase, Ticket};
pub use check::{Listed, Totals, Violation};

/// How many times the audit reads everything again when purchases or holds changed while
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
        "purchases or holds kept changing while the audit read the inventory ({0} attempts); \
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
            "  {} tickets over {} events: {} sold, {} held, {} available",
            t.tickets,
            t.events,
            t.sold,
            t.held,
            t.tickets.saturating_sub(t.sold + t.held)
        )?;
        writeln!(
            f,
            "  {} purchases ({} cancelled), the live ones holding {} tickets, ${}.{:02}",
            t.purchases,
            t.cancelled,
            t.tickets_in_purchases,
            t.revenue_cents / 100,
            t.revenue_cents % 100
        )?;
        writeln!(f, "  {} holds, {} of them live", t.holds, t.live_holds)?;
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
    let listed = snapshot(&client).await?;
    info!(
        tickets = listed.tickets.len(),
        events = listed.events.len(),
        purchases = listed.purchases.len(),
        holds = listed.holds.len(),
        "read the inventory"
    );
    let (violations, totals) = check::check(&listed);
    Ok(AuditReport {
        target: target.to_string(),
        totals,
        violations,
    })
}

/// Every purchase and every hold, each read a page at a time so no answer is the whole
/// store.
async fn orders(client: &ApiClient) -> Result<(Vec<Purchase>, Vec<Hold>), ClientError> {
    let purchases = client
        .get_all_pages::<Purchase, String>("/purchases", MAX_PAGE_LIMIT)
        .await?;
    let holds = client
        .get_all_pages::<Hold, String>("/holds", MAX_PAGE_LIMIT)
        .await?;
    Ok((purchases, holds))
}

/// What changes when anything is decided: every purchase with whether it is cancelled,
/// every hold with its status (a hold expiring changes it too).
fn fingerprint(purchases: &[Purchase], holds: &[Hold]) -> Vec<(String, String)> {
    purchases
        .iter()
        .map(|p| {
            (
                p.purchase_id.clone(),
                p.cancelled_at.clone().unwrap_or_default(),
            )
        })
        .chain(
            holds
                .iter()
                .map(|h| (h.hold_id.clone(), format!("{:?}", h.status))),
        )
        .collect()
}

/// Reads tickets, events, purchases and holds so that nothing was decided in between:
/// the same purchases and holds, in the same states, before and after means nothing was.
async fn snapshot(client: &ApiClient) -> Result<Listed, AuditError> {
    for attempt in 1..=SNAPSHOT_ATTEMPTS {
        let (before_purchases, before_holds) = orders(client).await?;
        let tickets: Vec<Ticket> = client
            .get_all_pages::<Ticket, u64>("/tickets", MAX_PAGE_LIMIT)
            .await?;
        let events: Vec<Event> = client.get_json("/events").await?;
        let (purchases, holds) = orders(client).await?;
        let before = fingerprint(&before_purchases, &before_holds);
        let after = fingerprint(&purchases, &holds);
        if before == after {
            return Ok(Listed {
                tickets,
                events,
                purchases,
                holds,
            });
        }
        info!(
            attempt,
            before = before.len(),
            after = after.len(),
            "purchases or holds changed while reading; reading again"
        );
        tokio::time::sleep(SNAPSHOT_PAUSE).await;
    }
    Err(AuditError::Unsettled(SNAPSHOT_ATTEMPTS))
}
