//! The balancer's settings: the raw layered form (defaults, TOML file, `TICKETS_BALANCER__*`
//! environment, flags) and the validated form the rest of the crate runs on.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use shared::settings::SettingsError;

/// The settings as they are written in the `[balancer]` table of a file, in
/// `TICKETS_BALANCER__<FIELD>` environment variables or given as flags; every field has a
/// default, and [`RawSettings::validate`] checks them once.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    /// The address the balancer listens on.
    pub listen: String,
    /// The nodes to balance over, `HOST:PORT` each; a comma-separated string or a list.
    pub nodes: NodeList,
    /// How often every node's `GET /health` is asked.
    pub health_interval_ms: u64,
    /// How long one health check may take before it counts as failed.
    pub health_timeout_ms: u64,
    /// How often the node names are resolved again, to follow nodes that come and go.
    pub resolve_interval_ms: u64,
    /// How long opening a connection to a node may take before the node counts as down.
    pub connect_timeout_ms: u64,
    /// How long a node may take to send its response headers once it has the request.
    pub response_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout_ms: u64,
    /// A client that has not sent its request headers by then is disconnected.
    pub header_read_timeout_ms: u64,
    /// Client connections beyond this wait in the accept queue.
    pub max_connections: usize,
    /// Request bodies are buffered (so they can be sent again); larger ones get a 413.
    pub max_body_bytes: usize,
}

impl Default for RawSettings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            nodes: NodeList::default(),
            health_interval_ms: 1_000,
            health_timeout_ms: 1_000,
            resolve_interval_ms: 2_000,
            connect_timeout_ms: 1_000,
            response_timeout_ms: 10_000,
            drain_timeout_ms: 20_000,
            header_read_timeout_ms: 10_000,
            max_connections: 1024,
            max_body_bytes: 16 * 1024,
        }
    }
}

/// The node list, accepted both as `"a:1,b:2"` (a flag or an environment variable) and as
/// a TOML array of strings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(from = "ListOrString")]
pub struct NodeList(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum ListOrString {
    List(Vec<String>),
    String(String),
}

impl From<ListOrString> for NodeList {
    fn from(value: ListOrString) -> Self {
        let items = match value {
            ListOrString::List(items) => items,
            ListOrString::String(joined) => joined.split(',').map(str::to_owned).collect(),
        };
        Self(
            items
                .into_iter()
                .map(|item| item.trim().to_owned())
                .filter(|item| !item.is_empty())
                .collect(),
        )
    }
}

/// A node as the user named it: a host name or IP address and a port. A name may resolve
/// to several addresses (a scaled compose service), each balanced as a node of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeName {
    pub host: String,
    pub port: u16,
}

impl FromStr for NodeName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not HOST:PORT (no port)"))?;
        // An IPv6 literal is written in brackets, `[::1]:8000`.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(format!("{s:?} is not HOST:PORT (no host)"));
        }
        if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{s:?} is not HOST:PORT (bad host)"));
        }
        if host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(format!("{s:?} is not HOST:PORT (bad host)"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?} is not HOST:PORT (port must be 1 to 65535)"))?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Validated settings, in the types the balancer runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where clients connect (`listen`).
    pub listen: SocketAddr,
    /// The names to balance over, each standing for every address it resolves to.
    pub nodes: Vec<NodeName>,
    /// Between two rounds of `GET /health` on every node.
    pub health_interval: Duration,
    /// One health check failing to answer within this marks the node down.
    pub health_timeout: Duration,
    /// Between two resolutions of the node names.
    pub resolve_interval: Duration,
    /// A node that cannot be connected to within this is marked down and skipped.
    pub connect_timeout: Duration,
    /// A node that sends no response headers within this has failed the attempt.
    pub response_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// Open client connections at most.
    pub max_connections: usize,
    /// Largest request body buffered for forwarding.
    pub max_body_bytes: usize,
}

impl Settings {
    /// Loads the `balancer` section from every layer, then validates it.
    pub fn load(file: Option<&Path>, flags: &[(&str, String)]) -> Result<Self, SettingsError> {
        shared::settings::load::<RawSettings>("balancer", file, flags)?.validate()
    }

    /// The limits handed to the shared server runner.
    pub fn server_limits(&self) -> serve::ServerLimits {
        serve::ServerLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            drain_timeout: self.drain_timeout,
        }
    }
}

impl RawSettings {
    /// Checks every field once, naming the first bad one.
    pub fn validate(self) -> Result<Settings, SettingsError> {
        let listen = self.listen.parse::<SocketAddr>().map_err(|_| {
            SettingsError::invalid(
                "balancer.listen",
                format!("{:?} is not an IP:PORT address", self.listen),
            )
        })?;
        if self.nodes.0.is_empty() {
            return Err(SettingsError::invalid(
                "balancer.nodes",
                "no nodes given: pass --nodes HOST:PORT[,HOST:PORT...] or set TICKETS_BALANCER__NODES",
            ));
        }
        let mut nodes = Vec::with_capacity(self.nodes.0.len());
        for item in &self.nodes.0 {
            let name = item
                .parse::<NodeName>()
                .map_err(|message| SettingsError::invalid("balancer.nodes", message))?;
            if !nodes.contains(&name) {
                nodes.push(name);
            }
        }
        let millis = |key: &str, value: u64| {
            if value == 0 {
                Err(SettingsError::invalid(
                    format!("balancer.{key}"),
                    "must be more than 0 milliseconds",
                ))
            } else {
                Ok(Duration::from_millis(value))
            }
        };
        let positive = |key: &str, value: usize| {
            if value == 0 {
                Err(SettingsError::invalid(
                    format!("balancer.{key}"),
                    "must be more than 0",
                ))
            } else {
                Ok(value)
            }
        };
        // A connection attempt must end (and count as "nothing sent") before the response
        // timeout could end it as "sent, maybe acted on".
        if self.connect_timeout_ms >= self.response_timeout_ms {
            return Err(SettingsError::invalid(
                "balancer.connect_timeout_ms",
                format!(
                    "must be shorter than response_timeout_ms ({} ms)",
                    self.response_timeout_ms
                ),
            ));
        }
        Ok(Settings {
            listen,
            nodes,
            health_interval: millis("health_interval_ms", self.health_interval_ms)?,
            health_timeout: millis("health_timeout_ms", self.health_timeout_ms)?,
            resolve_interval: millis("resolve_interval_ms", self.resolve_interval_ms)?,
            connect_timeout: millis("connect_timeout_ms", self.connect_timeout_ms)?,
            response_timeout: millis("response_timeout_ms", self.response_timeout_ms)?,
            drain_timeout: millis("drain_timeout_ms", self.drain_timeout_ms)?,
            header_read_timeout: millis("header_read_timeout_ms", self.header_read_timeout_ms)?,
            max_connections: positive("max_connections", self.max_connections)?,
            max_body_bytes: positive("max_body_bytes", self.max_body_bytes)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_nodes(nodes: &str) -> RawSettings {
        RawSettings {
            nodes: NodeList::from(ListOrString::String(nodes.into())),
            ..RawSettings::default()
        }
    }

    #[test]
    fn defaults_with_nodes_are_valid() {
        let s = with_nodes("node:8000, 10.0.0.2:8001,")
            .validate()
            .expect("valid");
        assert_eq!(s.listen, "0.0.0.0:8080".parse().expect("addr"));
        assert_eq!(
            s.nodes,
            vec![
                NodeName {
                    host: "node".into(),
                    port: 8000
                },
                NodeName {
                    host: "10.0.0.2".into(),
                    port: 8001
                },
            ]
        );
        assert_eq!(s.health_interval, Duration::from_secs(1));
        assert_eq!(s.max_body_bytes, 16 * 1024);
    }

    #[test]
    fn an_empty_node_list_is_refused_with_a_hint() {
        let err = with_nodes(" , ").validate().expect_err("no nodes");
        let text = err.to_string();
        assert!(
            text.contains("balancer.nodes") && text.contains("--nodes"),
            "{text}"
        );
    }

    #[test]
    fn an_unparsable_node_is_named() {
        for bad in [
            "node",
            "node:",
            ":8000",
            "node:http",
            "node:0",
            "node:70000",
            "a b:1",
        ] {
            let err = with_nodes(bad).validate().expect_err(bad);
            let text = err.to_string();
            assert!(text.contains("balancer.nodes"), "{bad}: {text}");
        }
    }

    #[test]
    fn ipv6_nodes_are_written_in_brackets() {
        let name: NodeName = "[::1]:8000".parse().expect("ipv6");
        assert_eq!(name.host, "::1");
        assert_eq!(name.to_string(), "[::1]:8000");
    }

    #[test]
    fn duplicate_nodes_are_kept_once() {
        let s = with_nodes("a:1,a:1,b:2").validate().expect("valid");
        assert_eq!(s.nodes.len(), 2);
    }

    #[test]
    fn a_bad_listen_address_or_zero_interval_is_refused() {
        let mut raw = with_nodes("a:1");
        raw.listen = "localhost".into();
        assert!(
            raw.validate()
                .expect_err("listen")
                .to_string()
                .contains("balancer.listen")
        );
        let mut raw = with_nodes("a:1");
        raw.health_interval_ms = 0;
        let text = raw.validate().expect_err("zero").to_string();
        assert!(text.contains("health_interval_ms"), "{text}");
        let mut raw = with_nodes("a:1");
        raw.max_body_bytes = 0;
        assert!(raw.validate().is_err());
        let mut raw = with_nodes("a:1");
        raw.connect_timeout_ms = 10_000;
        let text = raw.validate().expect_err("connect too long").to_string();
        assert!(text.contains("connect_timeout_ms"), "{text}");
    }

    #[test]
    fn nodes_may_be_a_toml_list_or_a_comma_separated_string() {
        let list: RawSettings = serde_json::from_str(r#"{"nodes":["a:1","b:2"]}"#).expect("list");
        let joined: RawSettings = serde_json::from_str(r#"{"nodes":"a:1,b:2"}"#).expect("string");
        assert_eq!(list, joined);
        assert_eq!(list.nodes.0, vec!["a:1".to_string(), "b:2".to_string()]);
    }

    #[test]
    fn an_unknown_setting_is_refused() {
        let err = serde_json::from_str::<RawSettings>(r#"{"health_interval":5}"#)
            .expect_err("unknown field");
        assert!(err.to_string().contains("health_interval"), "{err}");
    }
}
