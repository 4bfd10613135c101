//! The generator's layered settings (section `generator`): where to send traffic and how
//! patient to be with each request. Flags win over `TICKETS_GENERATOR__*` variables, which
//! win over the `--config` file, which wins over these defaults.

use std::time::Duration;

use serde::Deserialize;
use shared::settings::{Section, SettingsError, require_nonzero};

/// Settings shared by `load` and `audit`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The node or balancer to talk to, `http://HOST:PORT`.
    pub target: String,
    /// Every request gives up after this long (humantime, e.g. `5s`).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most purchases `load` keeps in flight at once.
    pub concurrency: usize,
    /// How often `load` repeats a purchase whose outcome is unknown, with the same key.
    pub retries: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            target: "http://127.0.0.1:8080".into(),
            request_timeout: Duration::from_secs(5),
            concurrency: 256,
            retries: 2,
        }
    }
}

impl Section for Settings {
    const SECTION: &'static str = "generator";

    fn validate(&self) -> Result<(), SettingsError> {
        crate::client::Target::parse(&self.target)
            .map_err(|e| SettingsError::invalid("generator.target", e.to_string()))?;
        require_nonzero("generator", &[("request_timeout", self.request_timeout)])?;
        if self.concurrency == 0 {
            return Err(SettingsError::invalid(
                "generator.concurrency",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::settings::flag_pairs;

    #[test]
    fn flags_win_over_the_environment_and_timeouts_are_humantime() {
        let env = [
            ("TICKETS_GENERATOR__REQUEST_TIMEOUT", "250ms"),
            ("TICKETS_GENERATOR__TARGET", "http://127.0.0.1:1"),
        ];
        let flags = flag_pairs(&[("target", "http://127.0.0.1:2")]);
        let s = Settings::load_with_env(None, &flags, &env).expect("valid");
        assert_eq!(s.target, "http://127.0.0.1:2");
        assert_eq!(s.request_timeout, Duration::from_millis(250));
        assert_eq!(s.concurrency, 256);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (key, value) in [
            ("request_timeout", "0s"),
            ("request_timeout", "soon"),
            ("concurrency", "0"),
            ("target", "ftp://x"),
        ] {
            let flags = flag_pairs(&[(key, value)]);
            let err = Settings::load_with_env(None, &flags, &[]).expect_err("invalid");
            assert!(
                err.to_string().contains(&format!("generator.{key}")),
                "{err}"
            );
        }
    }
}
