//! Connections to PostgreSQL: the pool (r2d2 over the sync `postgres` client), the
//! session settings that bound every wait, the statements each connection prepares once,
//! and how a driver error becomes a `StoreError`.

use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};
use r2d2::{Pool, PooledConnection};
use r2d2_postgres::PostgresConnectionManager;

use super::sql;
use crate::StoreError;

pub type Manager = PostgresConnectionManager<NoTls>;
pub type Conn = PooledConnection<Manager>;

/// How the PostgreSQL store connects and how long it waits.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The longest wait for the store's advisory lock (`lock_timeout` on every session),
    /// after which the operation fails with `LockTimeout` (a 503).
    pub lock_timeout: Duration,
    /// The longest wait to open a connection, and for a free one from the pool.
    pub connect_timeout: Duration,
    /// Connections kept per process.
    pub pool_size: u32,
    /// A session that sits inside a transaction for this long (a node frozen or cut off
    /// while holding the advisory lock) is ended by the server, which rolls its
    /// transaction back and frees the lock (`idle_in_transaction_session_timeout`), so a
    /// frozen node stops the others' sales for about this long. The store's own write
    /// transactions are idle only between their two round trips, while the node applies
    /// the entries it read and decides its batch; the snapshot is loaded outside them.
    pub idle_in_transaction_timeout: Duration,
}

impl PgOptions {
    pub fn new(lock_timeout: Duration) -> Self {
        Self {
            lock_timeout,
            connect_timeout: Duration::from_secs(2),
            pool_size: 16,
            idle_in_transaction_timeout: Duration::from_millis(500),
        }
    }

    /// Any one statement is cancelled by the server after this long, so nothing waits on
    /// the database forever: long enough for the lock wait and for writing a large
    /// snapshot.
    fn statement_timeout(&self) -> Duration {
        self.lock_timeout + Duration::from_secs(30)
    }
}

/// Builds the pool. Connects to nothing yet: a node may start before the database.
///
/// Every session runs with `jit = off`: the store's statements are index lookups of a few
/// rows, and a misestimate (a table not analysed yet) once made PostgreSQL JIT-compile the
/// read under the advisory lock, ~200 ms of compilation per commit while every other node
/// waited.
pub fn pool(mut config: postgres::Config, options: &PgOptions) -> Pool<Manager> {
    let session = format!(
        "-c lock_timeout={} -c statement_timeout={} -c idle_in_transaction_session_timeout={} \
         -c standard_conforming_strings=on -c jit=off",
        options.lock_timeout.as_millis().max(1),
        options.statement_timeout().as_millis(),
        options.idle_in_transaction_timeout.as_millis().max(1),
    );
    let session = match config.get_options() {
        Some(given) => format!("{given} {session}"),
        None => session,
    };
    config
        .options(&session)
        .connect_timeout(options.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        // Data sent to a server that stopped answering is given up on after this long.
        .tcp_user_timeout(options.connect_timeout + options.statement_timeout());
    if config.get_application_name().is_none() {
        config.application_name("tickets");
    }
    Pool::builder()
        .max_size(options.pool_size.max(1))
        .min_idle(Some(0))
        .connection_timeout(options.connect_timeout)
        // A checkout is not tested with a round trip; a connection found dead by its first
        // statement is replaced (see `is_connection_lost`).
        .test_on_check_out(false)
        .error_handler(Box::new(r2d2::NopErrorHandler))
        .build_unchecked(Manager::new(config, NoTls))
}

/// Where the store is, for messages: host, port and database, never the password.
pub fn describe(config: &postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

/// The store's statements, prepared once per connection and kept with it.
#[derive(Clone)]
pub struct Statements {
    pub read_since: Statement,
    pub load_snapshot: Statement,
}

/// Whether `err` means the connection is gone (the server restarted or was killed, the
/// network broke), as opposed to an answer from a working server.
pub fn is_connection_lost(err: &postgres::Error) -> bool {
    let io = std::error::Error::source(err).is_some_and(|cause| cause.is::<std::io::Error>());
    err.is_closed()
        || io
        || err.code().is_some_and(|code| {
            *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || code.code().starts_with("08")
        })
}

/// Maps a driver error to the store's: a lock wait that timed out is `LockTimeout`, a
/// missing table means no store was created.
pub fn store_error(
    err: postgres::Error,
    action: &'static str,
    database: &str,
    lock_timeout: Duration,
) -> StoreError {
    match err.code() {
        Some(code) if *code == SqlState::LOCK_NOT_AVAILABLE => {
            StoreError::LockTimeout(lock_timeout)
        }
        Some(code) if *code == SqlState::UNDEFINED_TABLE => {
            StoreError::DatabaseMissing(database.to_owned())
        }
        _ => StoreError::Database {
            action,
            database: database.to_owned(),
            source: err,
        },
    }
}

/// The connection's prepared statements, preparing them on first use (clones share them).
pub fn statements(conn: &mut Conn) -> Result<Statements, postgres::Error> {
    if let Some(prepared) = PooledConnection::extensions(conn).get::<Statements>() {
        return Ok(prepared.clone());
    }
    let client: &mut Client = conn;
    let prepared = Statements {
        read_since: client.prepare(sql::READ_SINCE)?,
        load_snapshot: client.prepare(sql::LOAD_SNAPSHOT)?,
    };
    PooledConnection::extensions_mut(conn).insert(prepared.clone());
    Ok(prepared)
}
