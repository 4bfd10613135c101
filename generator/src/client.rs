//! The small HTTP client `load` and `audit` talk to the cluster with: a pooled keep-alive
//! hyper client, a time limit on every request (headers and body), and JSON helpers.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared::api::{ErrorBody, NODE_HEADER, PageBody};
use thiserror::Error;

/// Why a request produced no usable answer.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("bad target {target:?}: {reason}")]
    BadTarget { target: String, reason: String },
    #[error("{method} {path}: no answer within {after:?}")]
    Timeout {
        method: Method,
        path: String,
        after: Duration,
    },
    #[error("{method} {path}: cannot connect")]
    Connect {
        method: Method,
        path: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{method} {path}: the request failed")]
    Transport {
        method: Method,
        path: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{method} {path}: reading the answer failed")]
    Body {
        method: Method,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{method} {path} answered {status}: {message}")]
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("{path}: the answer is not the JSON expected")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot build a request for {path}: {reason}")]
    Request { path: String, reason: String },
}

impl ClientError {
    /// Whether the request may have reached the server without its answer reaching us.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. }
                | Self::Connect { .. }
                | Self::Transport { .. }
                | Self::Body { .. }
        )
    }

    /// A short stable name for counting errors by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadTarget { .. } | Self::Request { .. } => "bad_request_built",
            Self::Timeout { .. } => "timeout",
            Self::Connect { .. } => "connect",
            Self::Transport { .. } | Self::Body { .. } => "transport",
            Self::Status { .. } => "status",
            Self::Decode { .. } => "bad_response",
        }
    }
}

/// A validated `http://HOST:PORT[/PREFIX]` base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Scheme and authority with the path prefix, without a trailing slash.
    base: String,
}

impl Target {
    pub fn parse(target: &str) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::BadTarget {
            target: target.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = target
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(bad("only http:// targets are supported")),
            None => return Err(bad("give a URL like http://127.0.0.1:8080")),
        }
        let authority = uri.authority().ok_or_else(|| bad("the URL has no host"))?;
        if uri.query().is_some() {
            return Err(bad("the URL must not have a query"));
        }
        let prefix = uri.path().trim_end_matches('/');
        Ok(Self {
            base: format!("http://{authority}{prefix}"),
        })
    }

    fn uri(&self, path: &str) -> Result<Uri, ClientError> {
        format!("{}{path}", self.base)
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| ClientError::Request {
                path: path.to_owned(),
                reason: e.to_string(),
            })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

/// One complete answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    /// The `X-Node` header: which node served the request.
    pub node: Option<String>,
    pub body: Bytes,
}

impl Answer {
    /// The error body, when the answer is one.
    pub fn error_body(&self) -> Option<ErrorBody> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A cheap-to-clone client bound to one target.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: Client<HttpConnector, Full<Bytes>>,
    target: Target,
    /// Every request, headers and body, must complete within this.
    timeout: Duration,
}

impl ApiClient {
    /// A pooled keep-alive client that keeps up to `idle_per_host` idle connections.
    pub fn new(target: Target, timeout: Duration, idle_per_host: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(idle_per_host)
            .build(connector);
        Self {
            http,
            target,
            timeout,
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// GETs `path` and returns the answer whatever its status.
    pub async fn get(&self, path: &str) -> Result<Answer, ClientError> {
        self.send(Method::GET, path, None, &[]).await
    }

    /// POSTs `body` as JSON with extra `headers` and returns the answer whatever its status.
    pub async fn post_json(
        &self,
        path: &str,
        body: &impl Serialize,
        headers: &[(&'static str, &str)],
    ) -> Result<Answer, ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Request {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        self.send(Method::POST, path, Some(Bytes::from(json)), headers)
            .await
    }

    /// POSTs with no body (a confirm, a release, a cancel) with extra `headers`, and
    /// returns the answer whatever its status.
    pub async fn post_empty(
        &self,
        path: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Answer, ClientError> {
        self.send(Method::POST, path, None, headers).await
    }

    /// GETs `path`, requires a 2xx, and decodes the JSON body.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let answer = self.get(path).await?;
        if !answer.status.is_success() {
            let message = match answer.error_body() {
                Some(e) => format!("{}: {}", e.error, e.message),
                None => String::from_utf8_lossy(&answer.body)
                    .chars()
                    .take(200)
                    .collect(),
            };
            return Err(ClientError::Status {
                method: Method::GET,
                path: path.to_owned(),
                status: answer.status,
                message,
            });
        }
        serde_json::from_slice(&answer.body).map_err(|source| ClientError::Decode {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads a whole listing (`/tickets`, `/purchases`) a page of `limit` at a time,
    /// following each page's `next` until the last.
    pub async fn get_all_pages<T, K>(&self, path: &str, limit: usize) -> Result<Vec<T>, ClientError>
    where
        T: DeserializeOwned,
        K: DeserializeOwned + fmt::Display,
    {
        let mut items = Vec::new();
        let mut after: Option<K> = None;
        loop {
            let paged = match &after {
                Some(key) => format!("{path}?limit={limit}&after={key}"),
                None => format!("{path}?limit={limit}"),
            };
            let page: PageBody<T, K> = self.get_json(&paged).await?;
            items.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(items),
            }
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        headers: &[(&'static str, &str)],
    ) -> Result<Answer, ClientError> {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(self.target.uri(path)?);
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| ClientError::Request {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|source| {
                if source.is_connect() {
                    ClientError::Connect {
                        method: method.clone(),
                        path: path.to_owned(),
                        source,
                    }
                } else {
                    ClientError::Transport {
                        method: method.clone(),
                        path: path.to_owned(),
                        source,
                    }
                }
            })?;
            let status = response.status();
            let node = response
                .headers()
                .get(NODE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|source| ClientError::Body {
                    method: method.clone(),
                    path: path.to_owned(),
                    source,
                })?
                .to_bytes();
            Ok(Answer { status, node, body })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Timeout {
                    method: method.clone(),
                    path: path.to_owned(),
                    after: self.timeout,
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_http_urls_with_a_host() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8080/")
                .map(|t| t.to_string())
                .ok(),
            Some("http://127.0.0.1:8080".into())
        );
        assert_eq!(
            Target::parse("http://lb:80/api/")
                .map(|t| t.to_string())
                .ok(),
            Some("http://lb:80/api".into())
        );
        for bad in [
            "127.0.0.1:8080",
            "https://x",
            "http://",
            "not a url",
            "http://h/?q=1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
