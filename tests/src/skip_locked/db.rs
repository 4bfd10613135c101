//! The SKIP LOCKED baseline's SQL: a plain `tickets` table, one transaction per purchase
//! that locks `quantity` unsold rows with `FOR UPDATE SKIP LOCKED` and marks them sold,
//! and a `purchases` table whose unique `idempotency_key` makes repeats return the first
//! outcome.

use deadpool_postgres::{GenericClient, Pool};
use shared::Ticket;
use shared::api::{EventBody, PurchaseBody, PurchasedTicketBody};
use thiserror::Error;
use tokio_postgres::error::SqlState;

/// Why a purchase was not made.
#[derive(Debug, Error)]
pub enum BaselineError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no event named {0:?}")]
    UnknownEvent(String),
    #[error("only {available} tickets left")]
    SoldOut { available: u64 },
    #[error("this Idempotency-Key was used for a different purchase")]
    KeyReused,
    #[error("the database is unavailable: {0}")]
    Database(String),
}

impl From<tokio_postgres::Error> for BaselineError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Database(err.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for BaselineError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::Database(err.to_string())
    }
}

const SCHEMA: &str = "
    CREATE TABLE tickets (
        id bigint PRIMARY KEY,
        event text NOT NULL,
        price_cents bigint NOT NULL,
        sold boolean NOT NULL DEFAULT false,
        purchase_id text
    );
    CREATE INDEX tickets_unsold ON tickets (event, id) WHERE NOT sold;
    CREATE TABLE purchases (
        purchase_id text PRIMARY KEY,
        idempotency_key text UNIQUE,
        request text NOT NULL,
        body text NOT NULL
    );
";

/// Creates the tables and loads `tickets` into them.
pub async fn seed(
    client: &tokio_postgres::Client,
    tickets: &[Ticket],
) -> Result<(), BaselineError> {
    client.batch_execute(SCHEMA).await?;
    let insert = client
        .prepare(
            "INSERT INTO tickets (id, event, price_cents, sold)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::boolean[])",
        )
        .await?;
    for chunk in tickets.chunks(50_000) {
        let ids: Vec<i64> = chunk.iter().map(|t| t.id as i64).collect();
        let events: Vec<&str> = chunk.iter().map(|t| t.event.as_str()).collect();
        let prices: Vec<i64> = chunk.iter().map(|t| t.price_cents as i64).collect();
        let sold: Vec<bool> = chunk.iter().map(|t| t.sold).collect();
        client
            .execute(&insert, &[&ids, &events, &prices, &sold])
            .await?;
    }
    client.batch_execute("ANALYZE tickets").await?;
    Ok(())
}

/// Every event's counts, sorted by name.
pub async fn events(pool: &Pool) -> Result<Vec<EventBody>, BaselineError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT event, count(*), count(*) FILTER (WHERE sold), min(price_cents), max(price_cents)
             FROM tickets GROUP BY event ORDER BY event",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let (total, sold) = (row.get::<_, i64>(1) as u64, row.get::<_, i64>(2) as u64);
            EventBody {
                event: row.get(0),
                total,
                available: total - sold,
                sold,
                held: 0,
                min_price_cents: row.get::<_, i64>(3) as u64,
                max_price_cents: row.get::<_, i64>(4) as u64,
                max_per_customer: None,
            }
        })
        .collect())
}

/// Answers whether the database takes queries.
pub async fn ping(pool: &Pool) -> Result<(), BaselineError> {
    pool.get().await?.simple_query("SELECT 1").await?;
    Ok(())
}

/// One purchase as the handler asks for it.
#[derive(Debug, Clone)]
pub struct Order<'a> {
    pub event: &'a str,
    pub quantity: u32,
    pub key: Option<&'a str>,
    pub purchase_id: String,
    pub node: &'a str,
    pub created_at: String,
}

impl Order<'_> {
    /// What a repeat of the same key must match.
    fn request(&self) -> String {
        format!("{} {}", self.event, self.quantity)
    }
}

/// How many times a purchase that found too few unlocked rows, while enough are unsold,
/// is tried again (the others may roll back).
const CONTENDED_RETRIES: usize = 20;

/// Sells `order.quantity` tickets in one transaction, or answers the first outcome of the
/// same idempotency key.
pub async fn purchase(pool: &Pool, order: &Order<'_>) -> Result<PurchaseBody, BaselineError> {
    let mut client = pool.get().await?;
    for _ in 0..CONTENDED_RETRIES {
        if let Some(key) = order.key
            && let Some(first) = first_outcome(&client, key, &order.request()).await?
        {
            return Ok(first);
        }
        let tx = client.transaction().await?;
        let pick = tx
            .prepare_cached(
                "SELECT id, price_cents FROM tickets WHERE event = $1 AND NOT sold
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
            )
            .await?;
        let rows = tx
            .query(&pick, &[&order.event, &i64::from(order.quantity)])
            .await?;
        if rows.len() < order.quantity as usize {
            let count = tx
                .prepare_cached("SELECT count(*) FROM tickets WHERE event = $1 AND NOT sold")
                .await?;
            let available = tx
                .query_one(&count, &[&order.event])
                .await?
                .get::<_, i64>(0) as u64;
            tx.rollback().await?;
            if available < u64::from(order.quantity) {
                return Err(BaselineError::SoldOut { available });
            }
            // Enough are unsold but locked by purchases in flight: try again.
            tokio::task::yield_now().await;
            continue;
        }
        let tickets: Vec<PurchasedTicketBody> = rows
            .iter()
            .map(|row| PurchasedTicketBody {
                id: row.get::<_, i64>(0) as u64,
                price_cents: row.get::<_, i64>(1) as u64,
            })
            .collect();
        let ids: Vec<i64> = tickets.iter().map(|t| t.id as i64).collect();
        let body = PurchaseBody {
            purchase_id: order.purchase_id.clone(),
            event: order.event.to_owned(),
            quantity: order.quantity,
            total_cents: tickets.iter().map(|t| t.price_cents).sum(),
            tickets,
            node: order.node.to_owned(),
            created_at: order.created_at.clone(),
            customer: None,
            hold_id: None,
            cancelled_at: None,
            secret: None,
        };
        let text =
            serde_json::to_string(&body).map_err(|err| BaselineError::Database(err.to_string()))?;
        let mark = tx
            .prepare_cached("UPDATE tickets SET sold = true, purchase_id = $1 WHERE id = ANY($2)")
            .await?;
        tx.execute(&mark, &[&order.purchase_id, &ids]).await?;
        let record = tx
            .prepare_cached(
                "INSERT INTO purchases (purchase_id, idempotency_key, request, body)
                 VALUES ($1, $2, $3, $4)",
            )
            .await?;
        let inserted = tx
            .execute(
                &record,
                &[&order.purchase_id, &order.key, &order.request(), &text],
            )
            .await;
        match inserted {
            Ok(_) => {}
            // The same key committed by another request meanwhile: answer its outcome.
            Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                tx.rollback().await?;
                continue;
            }
            Err(err) => return Err(err.into()),
        }
        tx.commit().await?;
        return Ok(body);
    }
    Err(BaselineError::Database(
        "too much contention: no tickets could be locked".into(),
    ))
}

/// The purchase an earlier request with `key` made, if any.
async fn first_outcome(
    client: &impl GenericClient,
    key: &str,
    request: &str,
) -> Result<Option<PurchaseBody>, BaselineError> {
    let find = client
        .prepare_cached("SELECT request, body FROM purchases WHERE idempotency_key = $1")
        .await?;
    let Some(row) = client.query_opt(&find, &[&key]).await? else {
        return Ok(None);
    };
    if row.get::<_, &str>(0) != request {
        return Err(BaselineError::KeyReused);
    }
    serde_json::from_str(row.get(1))
        .map(Some)
        .map_err(|err| BaselineError::Database(err.to_string()))
}
