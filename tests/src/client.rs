//! A small HTTP client for tests: JSON in, status, headers and JSON out.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use shared::api::{IDEMPOTENCY_HEADER, NODE_HEADER};

/// One answer, with its body parsed as JSON when it is JSON.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The node that served this, from `X-Node`.
    pub fn node(&self) -> Option<String> {
        self.headers
            .get(NODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    pub fn error_code(&self) -> Option<String> {
        self.json()["error"].as_str().map(str::to_owned)
    }
}

/// The body of a purchase of `quantity` tickets of `event`.
pub fn purchase_body(event: &str, quantity: u32) -> Value {
    serde_json::json!({"event": event, "quantity": quantity})
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> anyhow::Result<Answer> {
        let uri = request.uri().clone();
        let response = tokio::time::timeout(Duration::from_secs(30), self.inner.request(request))
            .await
            .with_context(|| format!("{uri} timed out"))?
            .with_context(|| format!("requesting {uri}"))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&self, url: &str) -> anyhow::Result<Answer> {
        self.get_as(url, None).await
    }

    /// A GET with the operator's token as `Authorization: Bearer`, when given.
    pub async fn get_as(&self, url: &str, admin_token: Option<&str>) -> anyhow::Result<Answer> {
        let mut request = Request::get(url);
        if let Some(token) = admin_token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        self.send(request.body(Full::default())?).await
    }

    /// POSTs `body` as JSON (or nothing) with the given extra headers.
    pub async fn post_with(
        &self,
        url: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut request = Request::builder().method(Method::POST).uri(url);
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let bytes = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body)?),
            None => Bytes::new(),
        };
        self.send(request.body(Full::new(bytes))?).await
    }

    pub async fn head(&self, url: &str) -> anyhow::Result<Answer> {
        let request = Request::head(url).body(Full::default())?;
        self.send(request).await
    }

    /// POSTs `body` as JSON, with an `Idempotency-Key` if given.
    pub async fn post_json(
        &self,
        url: &str,
        body: &Value,
        key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        self.post_raw(url, "application/json", serde_json::to_vec(body)?, key)
            .await
    }

    pub async fn post_raw(
        &self,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
        key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(CONTENT_TYPE, content_type);
        if let Some(key) = key {
            request = request.header(IDEMPOTENCY_HEADER, key);
        }
        self.send(request.body(Full::new(Bytes::from(body)))?).await
    }

    /// A purchase of `quantity` tickets of `event`.
    pub async fn buy(
        &self,
        base: &str,
        event: &str,
        quantity: u32,
        key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        self.post_json(
            &format!("{base}/purchases"),
            &purchase_body(event, quantity),
            key,
        )
        .await
    }
}
