//! The node's settings: defaults, `--config` TOML `[node]`, `TICKETS_NODE__*`, flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shared::settings::{self, SettingsError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// Names this node in `X-Node` and in the purchases it commits; the host name by default,
    /// which is unique per container under docker compose.
    #[serde(default = "default_id")]
    pub id: String,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The shared data directory holding the file store (`tickets.json`,
    /// `tickets.journal`, `tickets.lock`); `/data` when neither it nor `database` is given.
    #[serde(default)]
    pub data: Option<PathBuf>,
    /// The PostgreSQL store's URL, `postgres://USER[:PASS]@HOST[:PORT]/DB`, instead of a
    /// data directory, for nodes on more than one host.
    #[serde(default)]
    pub database: Option<String>,
    /// How long an operation waits for the store lock before answering 503.
    #[serde(default = "default_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
    /// Request bodies above this size are refused with 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// A client that takes longer than this to send its body is answered 408.
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// A client that takes longer than this to send its headers is disconnected.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

fn default_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8000))
}

/// The data directory used when the settings name no store.
pub const DEFAULT_DATA: &str = "/data";

/// Which store the node serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Files(PathBuf),
    Database(String),
}

fn default_lock_timeout_ms() -> u64 {
    5_000
}

fn default_max_body_bytes() -> usize {
    16 * 1024
}

fn default_body_timeout_ms() -> u64 {
    10_000
}

fn default_header_timeout_ms() -> u64 {
    10_000
}

fn default_max_connections() -> usize {
    1024
}

fn default_drain_timeout_ms() -> u64 {
    20_000
}

impl NodeSettings {
    /// Loads and validates the layered settings; `flags` are the command-line values given.
    pub fn load(file: Option<&Path>, flags: &[(&str, String)]) -> Result<Self, SettingsError> {
        let settings: Self = settings::load("node", file, flags)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let id_ok = (1..=64).contains(&self.id.len())
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !id_ok {
            return Err(SettingsError::invalid(
                "node.id",
                "must be 1 to 64 characters from [A-Za-z0-9-_.]",
            ));
        }
        if self.data.is_some() && self.database.is_some() {
            return Err(SettingsError::invalid(
                "node.database",
                "node.data and node.database exclude each other: give the data directory of a \
                 file store or the URL of a PostgreSQL store, not both",
            ));
        }
        for (key, value) in [
            ("node.lock_timeout_ms", self.lock_timeout_ms),
            ("node.body_timeout_ms", self.body_timeout_ms),
            ("node.header_timeout_ms", self.header_timeout_ms),
            ("node.max_body_bytes", self.max_body_bytes as u64),
            ("node.max_connections", self.max_connections as u64),
        ] {
            if value == 0 {
                return Err(SettingsError::invalid(key, "must be greater than 0"));
            }
        }
        Ok(())
    }

    /// The store the settings name: `database`, else `data`, else `/data`.
    pub fn store_location(&self) -> StoreLocation {
        match (&self.database, &self.data) {
            (Some(url), _) => StoreLocation::Database(url.clone()),
            (None, Some(dir)) => StoreLocation::Files(dir.clone()),
            (None, None) => StoreLocation::Files(PathBuf::from(DEFAULT_DATA)),
        }
    }

    /// Opens a handle on the store the settings name (connects to nothing yet).
    pub fn open_store(&self) -> Result<store::TicketStore, store::StoreError> {
        match self.store_location() {
            StoreLocation::Files(dir) => Ok(store::TicketStore::new(dir, self.lock_timeout())),
            StoreLocation::Database(url) => {
                store::TicketStore::postgres(&url, store::PgOptions::new(self.lock_timeout()))
            }
        }
    }

    pub fn lock_timeout(&self) -> Duration {
        Duration::from_millis(self.lock_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    pub fn server_limits(&self) -> serve::ServerLimits {
        serve::ServerLimits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_millis(self.header_timeout_ms),
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_defaults_and_are_validated() {
        let flags = [
            ("id", "n1".to_string()),
            ("listen", "127.0.0.1:0".to_string()),
            ("data", "/tmp/x".to_string()),
        ];
        let s = NodeSettings::load(None, &flags).expect("valid");
        assert_eq!(s.id, "n1");
        assert_eq!(s.listen.port(), 0);
        assert_eq!(s.max_body_bytes, 16 * 1024);

        assert_eq!(
            s.store_location(),
            StoreLocation::Files(PathBuf::from("/tmp/x"))
        );

        let both = [
            ("data", "/tmp/x".to_string()),
            ("database", "postgres://u@127.0.0.1/db".to_string()),
        ];
        let err = NodeSettings::load(None, &both).expect_err("both stores");
        assert!(err.to_string().contains("exclude each other"), "{err}");

        let bad = [("id", "has space".to_string())];
        let err = NodeSettings::load(None, &bad).expect_err("bad id");
        assert!(err.to_string().contains("node.id"), "{err}");

        let bad = [("listen", "nowhere".to_string())];
        let err = NodeSettings::load(None, &bad).expect_err("bad address");
        assert!(err.to_string().contains("listen"), "{err}");
    }
}
