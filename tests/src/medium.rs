//! Where the nodes under test keep their store: JSON files in a directory or a PostgreSQL
//! database, so one test can run over both media.

use std::path::PathBuf;
use std::time::Duration;

use store::{PgOptions, TicketStore};

use crate::postgres;

/// How long the tests' own store handles wait for the store's lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// A store's place, and so the flag a node is given.
#[derive(Debug, Clone)]
pub enum Medium {
    /// `--data DIR`: the JSON files under an advisory file lock.
    Files(PathBuf),
    /// `--database URL`: PostgreSQL.
    Postgres(String),
}

/// Which medium a test runs over, before it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediumKind {
    Files,
    Postgres,
}

impl Medium {
    /// The node's flag and its value.
    pub fn node_args(&self) -> [String; 2] {
        match self {
            Self::Files(dir) => ["--data".into(), dir.to_string_lossy().into_owned()],
            Self::Postgres(url) => ["--database".into(), url.clone()],
        }
    }

    /// A handle on the store, for a test to seed or read it directly. The PostgreSQL
    /// store blocks on a runtime of its own: use it off the test's async threads.
    pub fn store(&self) -> anyhow::Result<TicketStore> {
        Ok(match self {
            Self::Files(dir) => TicketStore::new(dir, LOCK_TIMEOUT),
            Self::Postgres(url) => TicketStore::postgres(url, PgOptions::new(LOCK_TIMEOUT))?,
        })
    }
}

/// A fresh, empty place for a store: a temporary directory (removed when this is dropped),
/// or a new database on the test binary's shared PostgreSQL server.
#[derive(Debug)]
pub struct TestMedium {
    pub medium: Medium,
    _dir: Option<tempfile::TempDir>,
}

impl TestMedium {
    pub fn new(kind: MediumKind) -> anyhow::Result<Self> {
        Ok(match kind {
            MediumKind::Files => {
                let dir = tempfile::tempdir()?;
                Self {
                    medium: Medium::Files(dir.path().to_owned()),
                    _dir: Some(dir),
                }
            }
            MediumKind::Postgres => Self {
                medium: Medium::Postgres(postgres::fresh_database()?),
                _dir: None,
            },
        })
    }

    /// A new place with a store seeded as [`crate::seed_medium`] does.
    pub fn seeded(kind: MediumKind, events: &[(&str, u64, u64)]) -> anyhow::Result<Self> {
        let this = Self::new(kind)?;
        crate::seed_medium(&this.medium, events)?;
        Ok(this)
    }
}
