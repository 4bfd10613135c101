//! The generator's layered settings (section `generator`): where to send traffic and how
//! patient to be with each request. Flags win over `TICKETS_GENERATOR__*` variables, which
//! win over the `--config` file, which wins over these defaults.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use shared::settings::SettingsError;

/// Settings shared by `load` and `audit`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The node or balancer to talk to, `http://HOST:PORT`.
    #[serde(default = "default_target")]
    pub target: String,
    /// Every request gives up after this long (humantime, e.g. `5s`).
    #[serde(default = "default_request_timeout")]
    pub request_timeout: String,
    /// Most purchases `load` keeps in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How often `load` repeats a purchase whose outcome is unknown, with the same key.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_target() -> String {
    "http://127.0.0.1:8080".into()
}

fn default_request_timeout() -> String {
    "5s".into()
}

fn default_concurrency() -> usize {
    256
}

fn default_retries() -> u32 {
    2
}

impl Settings {
    /// Loads the `generator` section; `flags` are the `(key, value)` pairs the user gave.
    pub fn load(config: Option<&Path>, flags: &[(&str, String)]) -> Result<Self, SettingsError> {
        let settings: Self = shared::settings::load("generator", config, flags)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        crate::client::Target::parse(&self.target)
            .map_err(|e| SettingsError::invalid("generator.target", e.to_string()))?;
        let timeout = self.request_timeout()?;
        if timeout.is_zero() {
            return Err(SettingsError::invalid(
                "generator.request_timeout",
                "must be longer than zero",
            ));
        }
        if self.concurrency == 0 {
            return Err(SettingsError::invalid(
                "generator.concurrency",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The per-request time limit.
    pub fn request_timeout(&self) -> Result<Duration, SettingsError> {
        humantime::parse_duration(&self.request_timeout).map_err(|e| {
            SettingsError::invalid(
                "generator.request_timeout",
                format!(
                    "{:?} is not a duration like 5s or 500ms: {e}",
                    self.request_timeout
                ),
            )
        })
    }
}
