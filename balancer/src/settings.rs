//! The balancer's settings, read in layers (defaults, TOML file, `TICKETS_BALANCER__*`
//! environment, flags) into one struct and checked once by [`Settings::validate`].
//! Durations are written as humantime strings ("5s", "250ms").

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use shared::settings::SettingsError;

/// Every setting of the balancer, as the `[balancer]` table of a file, as
/// `TICKETS_BALANCER__<FIELD>` environment variables or as flags; every field has a
/// default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The address the balancer listens on.
    pub listen: SocketAddr,
    /// The nodes to balance over, `HOST:PORT` each; a comma-separated string or a list.
    /// A name stands for every address it resolves to.
    pub nodes: NodeList,
    /// How often every node's `GET /health` is asked.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// How long one health check may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
    /// Passing health checks in a row that bring a down node back.
    pub health_rise: u32,
    /// Failing health checks in a row that take a node down.
    pub health_fall: u32,
    /// How often the node names are resolved again, to follow nodes that come and go.
    #[serde(with = "humantime_serde")]
    pub resolve_interval: Duration,
    /// How long opening a connection to a node may take before the node counts as down.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a request may wait for response headers, over all its attempts.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// A request that may be sent again and has no answer after this gets a second,
    /// hedged attempt on another node; the first answer wins.
    #[serde(with = "humantime_serde")]
    pub hedge_delay: Duration,
    /// The wait before the first retry of a request that reached a node (doubling after).
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Retries and hedges are capped at this share of requests (over about 10 s)...
    pub retry_budget: f64,
    /// ... plus this many per second.
    pub retry_min_per_second: u32,
    /// A node that appears or comes back takes a share of its turns growing from a tenth
    /// to all of them over this ("0s" turns slow start off).
    #[serde(with = "humantime_serde")]
    pub slow_start: Duration,
    /// Failed attempts in a row (no connection, broken, timed out, or a 5xx other than
    /// 503) that take a node out of rotation; never more than half the nodes are out.
    pub eject_after: u32,
    /// How long an ejected node stays out.
    #[serde(with = "humantime_serde")]
    pub eject_time: Duration,
    /// Requests in flight per node at most; more wait in the node's queue.
    pub max_in_flight: u64,
    /// Requests waiting per node at most; beyond, a fast 503 with `Retry-After`.
    pub queue_size: u64,
    /// The longest a request waits in a queue before its 503.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// A client that has not sent its request headers by then is disconnected.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request body that has not arrived in full by then is answered 408.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Client connections beyond this wait in the accept queue.
    pub max_connections: usize,
    /// Request bodies are buffered (so they can be sent again); larger ones get a 413.
    pub max_body_bytes: usize,
    /// Worker threads, each with its own runtime, accept loop and connection pools; 0 is
    /// one per CPU core.
    pub workers: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            nodes: NodeList::default(),
            health_interval: Duration::from_secs(1),
            health_timeout: Duration::from_secs(1),
            health_rise: 2,
            health_fall: 3,
            resolve_interval: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(10),
            hedge_delay: Duration::from_millis(500),
            retry_backoff: Duration::from_millis(10),
            retry_budget: 0.2,
            retry_min_per_second: 10,
            slow_start: Duration::from_secs(5),
            eject_after: 5,
            eject_time: Duration::from_secs(10),
            max_in_flight: 256,
            queue_size: 128,
            queue_timeout: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(20),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_body_bytes: 16 * 1024,
            workers: 0,
        }
    }
}

/// The node list, accepted both as `"a:1,b:2"` (a flag or an environment variable) and as
/// a TOML array of strings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(from = "ListOrString")]
pub struct NodeList(pub Vec<String>);

impl NodeList {
    /// The names, each parsed; the first bad one is the error.
    pub fn names(&self) -> Result<Vec<NodeName>, String> {
        let mut names: Vec<NodeName> = Vec::with_capacity(self.0.len());
        for item in &self.0 {
            let name = item.parse::<NodeName>()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(names)
    }
}

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

impl Settings {
    /// Loads the `balancer` section from every layer, then validates it.
    pub fn load(file: Option<&Path>, flags: &[(&str, String)]) -> Result<Self, SettingsError> {
        let settings = shared::settings::load::<Self>("balancer", file, flags)?;
        settings.validate()?;
        Ok(settings)
    }

    /// The node names, parsed (valid once [`Settings::validate`] passed).
    pub fn node_names(&self) -> Vec<NodeName> {
        self.nodes.names().unwrap_or_default()
    }

    /// The limits handed to the shared server runner.
    pub fn server_limits(&self) -> serve::ServerLimits {
        serve::ServerLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_timeout,
            drain_timeout: self.drain_timeout,
        }
    }

    /// Checks every field once, naming the first bad one.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |key: &str, message: String| {
            Err(SettingsError::invalid(format!("balancer.{key}"), message))
        };
        if self.nodes.0.is_empty() {
            return invalid(
                "nodes",
                "no nodes given: pass --nodes HOST:PORT[,HOST:PORT...] or set \
                 TICKETS_BALANCER__NODES"
                    .into(),
            );
        }
        if let Err(message) = self.nodes.names() {
            return invalid("nodes", message);
        }
        let durations = [
            ("health_interval", self.health_interval),
            ("health_timeout", self.health_timeout),
            ("resolve_interval", self.resolve_interval),
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
            ("hedge_delay", self.hedge_delay),
            ("eject_time", self.eject_time),
            ("queue_timeout", self.queue_timeout),
            ("drain_timeout", self.drain_timeout),
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
        ];
        for (key, value) in durations {
            if value.is_zero() {
                return invalid(key, "must be more than 0".into());
            }
        }
        let counts = [
            ("health_rise", u64::from(self.health_rise)),
            ("health_fall", u64::from(self.health_fall)),
            ("eject_after", u64::from(self.eject_after)),
            ("max_in_flight", self.max_in_flight),
            ("max_connections", self.max_connections as u64),
            ("max_body_bytes", self.max_body_bytes as u64),
        ];
        for (key, value) in counts {
            if value == 0 {
                return invalid(key, "must be more than 0".into());
            }
        }
        if !(0.0..=10.0).contains(&self.retry_budget) {
            return invalid("retry_budget", "must be a share from 0 to 10".into());
        }
        // A connection attempt must end (and count as "nothing sent") before the response
        // timeout could end it as "sent, maybe acted on".
        if self.connect_timeout >= self.response_timeout {
            return invalid(
                "connect_timeout",
                format!(
                    "must be shorter than response_timeout ({})",
                    humantime_serde::re::humantime::format_duration(self.response_timeout)
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_nodes(nodes: &str) -> Settings {
        Settings {
            nodes: NodeList::from(ListOrString::String(nodes.into())),
            ..Settings::default()
        }
    }

    #[test]
    fn defaults_with_nodes_are_valid() {
        let s = with_nodes("node:8000, 10.0.0.2:8001,");
        s.validate().expect("valid");
        assert_eq!(s.listen, "0.0.0.0:8080".parse().expect("addr"));
        assert_eq!(
            s.node_names(),
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
        let s = with_nodes("a:1,a:1,b:2");
        s.validate().expect("valid");
        assert_eq!(s.node_names().len(), 2);
    }

    #[test]
    fn a_bad_listen_address_or_zero_interval_is_refused() {
        let err =
            serde_json::from_str::<Settings>(r#"{"listen":"localhost"}"#).expect_err("listen");
        assert!(err.to_string().contains("socket address"), "{err}");
        let mut raw = with_nodes("a:1");
        raw.health_interval = Duration::ZERO;
        let text = raw.validate().expect_err("zero").to_string();
        assert!(text.contains("health_interval"), "{text}");
        let mut raw = with_nodes("a:1");
        raw.drain_timeout = Duration::ZERO;
        let text = raw.validate().expect_err("zero").to_string();
        assert!(text.contains("drain_timeout"), "{text}");
        let mut raw = with_nodes("a:1");
        raw.max_body_bytes = 0;
        assert!(raw.validate().is_err());
        let mut raw = with_nodes("a:1");
        raw.connect_timeout = Duration::from_secs(10);
        let text = raw.validate().expect_err("connect too long").to_string();
        assert!(text.contains("connect_timeout"), "{text}");
    }

    #[test]
    fn durations_are_written_as_humantime_strings() {
        let s: Settings = serde_json::from_str(
            r#"{"health_interval":"250ms","body_timeout":"3s","slow_start":"0s"}"#,
        )
        .expect("humantime durations");
        assert_eq!(s.health_interval, Duration::from_millis(250));
        assert_eq!(s.body_timeout, Duration::from_secs(3));
        assert_eq!(s.slow_start, Duration::ZERO);
        assert!(serde_json::from_str::<Settings>(r#"{"health_interval":250}"#).is_err());
    }

    #[test]
    fn nodes_may_be_a_toml_list_or_a_comma_separated_string() {
        let list: Settings = serde_json::from_str(r#"{"nodes":["a:1","b:2"]}"#).expect("list");
        let joined: Settings = serde_json::from_str(r#"{"nodes":"a:1,b:2"}"#).expect("string");
        assert_eq!(list, joined);
        assert_eq!(list.nodes.0, vec!["a:1".to_string(), "b:2".to_string()]);
    }

    #[test]
    fn an_unknown_setting_is_refused() {
        let err = serde_json::from_str::<Settings>(r#"{"health_interval_ms":5}"#)
            .expect_err("unknown field");
        assert!(err.to_string().contains("health_interval_ms"), "{err}");
    }
}
