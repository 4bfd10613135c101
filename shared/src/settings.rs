//! Layered settings for every program, lowest to highest priority: built-in defaults (the
//! settings type's serde defaults), an optional TOML file, `TICKETS_` environment variables
//! (`__` between levels, e.g. `TICKETS_NODE__LISTEN`), then command-line flags.

use std::path::Path;

use config::{Config, Environment, File, FileFormat, Map, Value};
use serde::de::DeserializeOwned;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("cannot read settings: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid setting {key}: {message}")]
    Invalid { key: String, message: String },
}

impl SettingsError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Loads the `section` table (`node`, `balancer`, `generator`) into `T`.
///
/// `flags` are the command-line values the user gave, as `(key, value)` pairs inside the
/// section; they win over everything else.
pub fn load<T: DeserializeOwned>(
    section: &str,
    file: Option<&Path>,
    flags: &[(&str, String)],
) -> Result<T, SettingsError> {
    load_from(section, file, flags, Environment::with_prefix("TICKETS"))
}

fn load_from<T: DeserializeOwned>(
    section: &str,
    file: Option<&Path>,
    flags: &[(&str, String)],
    environment: Environment,
) -> Result<T, SettingsError> {
    let mut builder =
        Config::builder().set_default(section, Value::from(Map::<String, Value>::new()))?;
    if let Some(path) = file {
        builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
    }
    builder = builder.add_source(environment.prefix_separator("_").separator("__"));
    for (key, value) in flags {
        builder = builder.set_override(format!("{section}.{key}"), value.as_str())?;
    }
    let table = builder.build()?.get::<Value>(section)?;
    // Deserialising through serde_path_to_error names the offending key, where `config`
    // would only name the section.
    serde_path_to_error::deserialize(table).map_err(|e| {
        let key = format!("{section}.{}", e.path());
        SettingsError::invalid(key, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Sample {
        #[serde(default = "default_listen")]
        listen: String,
        #[serde(default)]
        timeout_ms: u64,
        #[serde(default)]
        id: String,
    }

    fn default_listen() -> String {
        "0.0.0.0:8000".into()
    }

    fn env(pairs: &[(&str, &str)]) -> Environment {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Environment::with_prefix("TICKETS").source(Some(map))
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let s: Sample = load_from("node", None, &[], env(&[])).expect("defaults");
        assert_eq!(s.listen, "0.0.0.0:8000");
        assert_eq!(s.timeout_ms, 0);
    }

    #[test]
    fn file_then_environment_then_flags_each_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[node]\nlisten = \"file:1\"\ntimeout_ms = 5\nid = \"from-file\"\n",
        )
        .expect("write");
        let environment = env(&[
            ("TICKETS_NODE__LISTEN", "env:2"),
            ("TICKETS_NODE__ID", "123"),
        ]);
        let flags = [("listen", "flag:3".to_string())];
        let s: Sample = load_from("node", Some(&path), &flags, environment).expect("layered");
        assert_eq!(
            s,
            Sample {
                listen: "flag:3".into(),
                timeout_ms: 5,
                id: "123".into()
            }
        );
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let environment = env(&[("TICKETS_NODE__TIMEOUT_MS", "soon")]);
        let err = load_from::<Sample>("node", None, &[], environment).expect_err("not a number");
        assert!(err.to_string().contains("timeout_ms"), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = load_from::<Sample>("node", Some(Path::new("/nonexistent.toml")), &[], env(&[]))
            .expect_err("missing file");
        assert!(err.to_string().contains("nonexistent"), "{err}");
    }
}
