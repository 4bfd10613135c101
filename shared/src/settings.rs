//! Layered settings for every program, lowest to highest priority: built-in defaults (the
//! settings type's `Default`), an optional TOML file, `TICKETS_` environment variables
//! (`__` between levels, e.g. `TICKETS_NODE__LISTEN`), then command-line flags.
//!
//! The idiom every program follows: a settings struct is `#[serde(default,
//! deny_unknown_fields)]` with `impl Default`; durations are `Duration`s written as
//! humantime strings ("5s", "250ms") with no unit in their names; `Section::validate`
//! checks the values once after deserializing. Flags come as the program's clap struct,
//! serialised: its `None` fields are left out, the rest override everything else.

use std::collections::HashMap;
use std::path::Path;

use config::{Config, Environment, File, FileFormat, Map, Value};
use serde::Serialize;
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

/// A program's settings: one table of the TOML file, one `TICKETS_<SECTION>__` prefix.
pub trait Section: DeserializeOwned {
    /// The table's name: `node`, `balancer` or `generator`.
    const SECTION: &'static str;

    /// Checks the values together, after deserializing; errors name the key as
    /// `section.key`.
    fn validate(&self) -> Result<(), SettingsError>;

    /// Loads and validates the settings from their layers; `flags` is the program's clap
    /// struct of setting flags (any `Serialize` whose field names are the settings' keys).
    fn load(file: Option<&Path>, flags: &impl Serialize) -> Result<Self, SettingsError> {
        load_from(file, flags, Environment::with_prefix("TICKETS"))
    }

    /// As `load`, with the environment given instead of read from the process, so a test
    /// sees exactly the variables it sets and none of the developer's.
    fn load_with_env(
        file: Option<&Path>,
        flags: &impl Serialize,
        env: &[(&str, &str)],
    ) -> Result<Self, SettingsError> {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_from(
            file,
            flags,
            Environment::with_prefix("TICKETS").source(Some(map)),
        )
    }
}

/// Loads the `section` table into `T` from `(key, value)` flag pairs, without validation:
/// the form before `Section`, still used by the balancer until it moves to `Section`.
pub fn load<T: DeserializeOwned>(
    section: &str,
    file: Option<&Path>,
    flags: &[(&str, String)],
) -> Result<T, SettingsError> {
    let flags: serde_json::Map<String, serde_json::Value> = flags
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
        .collect();
    deserialize(section, file, &flags, Environment::with_prefix("TICKETS"))
}

fn load_from<T: Section>(
    file: Option<&Path>,
    flags: &impl Serialize,
    environment: Environment,
) -> Result<T, SettingsError> {
    let settings: T = deserialize(T::SECTION, file, flags, environment)?;
    settings.validate()?;
    Ok(settings)
}

fn deserialize<T: DeserializeOwned>(
    section: &str,
    file: Option<&Path>,
    flags: &impl Serialize,
    environment: Environment,
) -> Result<T, SettingsError> {
    let mut builder =
        Config::builder().set_default(section, Value::from(Map::<String, Value>::new()))?;
    if let Some(path) = file {
        builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
    }
    builder = builder.add_source(environment.prefix_separator("_").separator("__"));
    for (key, value) in overrides(flags)? {
        builder = builder.set_override(format!("{section}.{key}"), value)?;
    }
    let table = builder.build()?.get::<Value>(section)?;
    // Deserialising through serde_path_to_error names the offending key, where `config`
    // would only name the section.
    serde_path_to_error::deserialize(table).map_err(|e| {
        let key = format!("{section}.{}", e.path());
        SettingsError::invalid(key, e.into_inner().to_string())
    })
}

/// The flags given, as `(key, value)` pairs: every field of the serialised clap struct
/// that is not `None`, as text (the settings type parses it, as it parses the environment).
fn overrides(flags: &impl Serialize) -> Result<Vec<(String, String)>, SettingsError> {
    let value =
        serde_json::to_value(flags).map_err(|e| SettingsError::invalid("flags", e.to_string()))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(SettingsError::invalid("flags", "not a struct of flags"));
    };
    Ok(fields
        .into_iter()
        .filter_map(|(key, value)| match value {
            serde_json::Value::Null => None,
            serde_json::Value::String(text) => Some((key, text)),
            other => Some((key, other.to_string())),
        })
        .collect())
}

/// Flags as `(key, value)` pairs, in the form `Section::load` takes: for tests.
pub fn flag_pairs<'a>(
    pairs: &[(&'a str, &'a str)],
) -> std::collections::BTreeMap<&'a str, &'a str> {
    pairs.iter().copied().collect()
}

/// Refuses a zero duration: used for every timeout and interval, so that "zero" never
/// silently means "at once" or "never".
pub fn require_nonzero(
    section: &str,
    entries: &[(&str, std::time::Duration)],
) -> Result<(), SettingsError> {
    match entries.iter().find(|(_, value)| value.is_zero()) {
        Some((key, _)) => Err(SettingsError::invalid(
            format!("{section}.{key}"),
            "must be longer than zero",
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::time::Duration;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        listen: String,
        #[serde(with = "humantime_serde")]
        timeout: Duration,
        id: String,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                listen: "0.0.0.0:8000".into(),
                timeout: Duration::from_secs(5),
                id: String::new(),
            }
        }
    }

    impl Section for Sample {
        const SECTION: &'static str = "node";
        fn validate(&self) -> Result<(), SettingsError> {
            require_nonzero("node", &[("timeout", self.timeout)])
        }
    }

    #[derive(Serialize, Default)]
    struct Flags {
        listen: Option<String>,
        #[serde(rename = "timeout")]
        wait: Option<String>,
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let s: Sample = Sample::load_with_env(None, &Flags::default(), &[]).expect("defaults");
        assert_eq!(s, Sample::default());
    }

    #[test]
    fn file_then_environment_then_flags_each_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[node]\nlisten = \"file:1\"\ntimeout = \"250ms\"\nid = \"from-file\"\n",
        )
        .expect("write");
        let env = [
            ("TICKETS_NODE__LISTEN", "env:2"),
            ("TICKETS_NODE__ID", "123"),
        ];
        let flags = Flags {
            listen: Some("flag:3".into()),
            wait: None,
        };
        let s: Sample = Sample::load_with_env(Some(&path), &flags, &env).expect("layered");
        assert_eq!(
            s,
            Sample {
                listen: "flag:3".into(),
                timeout: Duration::from_millis(250),
                id: "123".into()
            }
        );
        let flags = Flags {
            listen: None,
            wait: Some("2s".into()),
        };
        let s: Sample = Sample::load_with_env(Some(&path), &flags, &env).expect("layered");
        assert_eq!(s.timeout, Duration::from_secs(2));
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let env = [("TICKETS_NODE__TIMEOUT", "soon")];
        let err = Sample::load_with_env(None, &Flags::default(), &env).expect_err("not a duration");
        assert!(err.to_string().contains("node.timeout"), "{err}");
        let env = [("TICKETS_NODE__TIMEOUT_MS", "5")];
        let err = Sample::load_with_env(None, &Flags::default(), &env).expect_err("unknown");
        assert!(err.to_string().contains("timeout_ms"), "{err}");
    }

    #[test]
    fn a_zero_duration_is_refused() {
        let env = [("TICKETS_NODE__TIMEOUT", "0s")];
        let err = Sample::load_with_env(None, &Flags::default(), &env).expect_err("zero");
        assert!(err.to_string().contains("node.timeout"), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err =
            Sample::load_with_env(Some(Path::new("/nonexistent.toml")), &Flags::default(), &[])
                .expect_err("missing file");
        assert!(err.to_string().contains("nonexistent"), "{err}");
    }
}
