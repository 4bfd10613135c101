//! The node's settings (section `node`): defaults, `--config` TOML `[node]`,
//! `TICKETS_NODE__*`, flags. Where the store is, who this node is, the operator's token,
//! and the limits that protect it from slow or too many clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use shared::settings::{Section, SettingsError, require_nonzero};

/// The operator's token (`admin_token`): presented as `Authorization: Bearer <token>`, it
/// may confirm, release and cancel anything and see customers. Its `Debug` hides it, so
/// logging the settings never shows it; there is no flag for it, since a command line is
/// visible to every user of the host (`ps`): the environment or the config file give it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// Whether `presented` is this token, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        shared::secret::token_matches(&self.0, presented)
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// The fewest characters an operator's token may have: a short one could be guessed.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// Names this node in `X-Node` and in the purchases it commits; the host name by default,
    /// which is unique per container under docker compose.
    pub id: String,
    pub listen: SocketAddr,
    /// The shared data directory holding the file store (`tickets.json`,
    /// `tickets.journal`, `tickets.lock`); `/data` when neither it nor `database` is given.
    pub data: Option<PathBuf>,
    /// The PostgreSQL store's URL, `postgres://USER[:PASS]@HOST[:PORT]/DB`, instead of a
    /// data directory, for nodes on more than one host.
    pub database: Option<String>,
    /// The operator's token; when unset, only a purchase's or hold's own secret may change
    /// it, and nobody may list by customer.
    pub admin_token: Option<AdminToken>,
    /// How long an operation waits for the store lock before answering 503.
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// Request bodies above this size are refused with 413.
    pub max_body_bytes: usize,
    /// A client that takes longer than this to send its body is answered 408.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A client that takes longer than this to send its headers is disconnected.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Open connections at most; past it the longest-idle keep-alive connection is closed
    /// to admit a new one, or the new one waits.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Sets this node's clock ahead of the host's by this much (0 by default): for drills
    /// and tests of nodes whose clocks differ. Decisions stay right whatever the clocks,
    /// since each uses the later of its node's clock and the latest time in the log.
    #[serde(with = "humantime_serde")]
    pub clock_ahead: Duration,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            id: default_id(),
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            data: None,
            database: None,
            admin_token: None,
            lock_timeout: Duration::from_secs(5),
            max_body_bytes: 16 * 1024,
            body_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            drain_timeout: Duration::from_secs(20),
            clock_ahead: Duration::ZERO,
        }
    }
}

fn default_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}

/// The data directory used when the settings name no store.
pub const DEFAULT_DATA: &str = "/data";

/// Which store the node serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Files(PathBuf),
    Database(String),
}

impl Section for NodeSettings {
    const SECTION: &'static str = "node";

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
        if let Some(AdminToken(token)) = &self.admin_token {
            let usable = (MIN_ADMIN_TOKEN_LEN..=256).contains(&token.len())
                && token.bytes().all(|b| b.is_ascii_graphic());
            if !usable {
                return Err(SettingsError::invalid(
                    "node.admin_token",
                    format!(
                        "must be {MIN_ADMIN_TOKEN_LEN} to 256 visible ASCII characters (it is \
                         sent as `Authorization: Bearer <token>`)"
                    ),
                ));
            }
        }
        require_nonzero(
            "node",
            &[
                ("lock_timeout", self.lock_timeout),
                ("body_timeout", self.body_timeout),
                ("header_timeout", self.header_timeout),
                ("drain_timeout", self.drain_timeout),
            ],
        )?;
        for (key, value) in [
            ("node.max_body_bytes", self.max_body_bytes),
            ("node.max_connections", self.max_connections),
        ] {
            if value == 0 {
                return Err(SettingsError::invalid(key, "must be greater than 0"));
            }
        }
        Ok(())
    }
}

impl NodeSettings {
    /// The store the settings name: `database`, else `data`, else `/data`.
    pub fn store_location(&self) -> StoreLocation {
        match (&self.database, &self.data) {
            (Some(url), _) => StoreLocation::Database(url.clone()),
            (None, Some(dir)) => StoreLocation::Files(dir.clone()),
            (None, None) => StoreLocation::Files(PathBuf::from(DEFAULT_DATA)),
        }
    }

    /// Opens a handle on the store the settings name (connects to nothing yet), on this
    /// node's clock.
    pub fn open_store(&self) -> Result<store::TicketStore, store::StoreError> {
        let store = match self.store_location() {
            StoreLocation::Files(dir) => store::TicketStore::new(dir, self.lock_timeout),
            StoreLocation::Database(url) => {
                store::TicketStore::postgres(&url, store::PgOptions::new(self.lock_timeout))?
            }
        };
        Ok(if self.clock_ahead.is_zero() {
            store
        } else {
            store.with_clock(store::Clock::ahead(self.clock_ahead))
        })
    }

    pub fn server_limits(&self) -> serve::ServerLimits {
        serve::ServerLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_timeout,
            drain_timeout: self.drain_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(flags: &[(&str, &str)], env: &[(&str, &str)]) -> Result<NodeSettings, SettingsError> {
        NodeSettings::load_with_env(None, &shared::settings::flag_pairs(flags), env)
    }

    #[test]
    fn flags_override_defaults_and_are_validated() {
        let s = load(
            &[("id", "n1"), ("listen", "127.0.0.1:0"), ("data", "/tmp/x")],
            &[],
        )
        .expect("valid");
        assert_eq!(s.id, "n1");
        assert_eq!(s.listen.port(), 0);
        assert_eq!(s.max_body_bytes, 16 * 1024);
        assert_eq!(s.lock_timeout, Duration::from_secs(5));
        assert_eq!(
            s.store_location(),
            StoreLocation::Files(PathBuf::from("/tmp/x"))
        );

        let both = [
            ("data", "/tmp/x"),
            ("database", "postgres://u@127.0.0.1/db"),
        ];
        let err = load(&both, &[]).expect_err("both stores");
        assert!(err.to_string().contains("exclude each other"), "{err}");

        let err = load(&[("id", "has space")], &[]).expect_err("bad id");
        assert!(err.to_string().contains("node.id"), "{err}");

        let err = load(&[("listen", "nowhere")], &[]).expect_err("bad address");
        assert!(err.to_string().contains("listen"), "{err}");
    }

    #[test]
    fn the_admin_token_comes_from_the_environment_is_checked_and_never_shown() {
        let s = load(&[("id", "n1")], &[]).expect("valid");
        assert_eq!(s.admin_token, None);
        let token = "operator-token-0123456789";
        let s = load(&[("id", "n1")], &[("TICKETS_NODE__ADMIN_TOKEN", token)]).expect("valid");
        let parsed = s.admin_token.as_ref().expect("set");
        assert!(parsed.matches(token));
        assert!(!parsed.matches("operator-token-012345678"));
        assert!(!format!("{s:?}").contains(token), "Debug shows the token");
        for bad in ["", "short", "has a space in it here", &"t".repeat(257)] {
            let err = load(&[("id", "n1")], &[("TICKETS_NODE__ADMIN_TOKEN", bad)])
                .expect_err("unusable token");
            assert!(err.to_string().contains("admin_token"), "{bad:?}: {err}");
            assert!(bad.is_empty() || !err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn durations_are_humantime_and_zero_is_refused() {
        let env = [
            ("TICKETS_NODE__LOCK_TIMEOUT", "300ms"),
            ("TICKETS_NODE__ID", "n1"),
        ];
        let s = load(&[], &env).expect("valid");
        assert_eq!(s.lock_timeout, Duration::from_millis(300));
        assert_eq!(s.clock_ahead, Duration::ZERO);
        let ahead = load(&[("id", "n1")], &[("TICKETS_NODE__CLOCK_AHEAD", "2h")]).expect("valid");
        assert_eq!(ahead.clock_ahead, Duration::from_secs(7200));
        for key in [
            "LOCK_TIMEOUT",
            "BODY_TIMEOUT",
            "HEADER_TIMEOUT",
            "DRAIN_TIMEOUT",
        ] {
            let var = format!("TICKETS_NODE__{key}");
            let err = load(&[("id", "n1")], &[(&var, "0s")]).expect_err("zero");
            assert!(
                err.to_string().contains(&key.to_lowercase()),
                "{key}: {err}"
            );
        }
    }
}
