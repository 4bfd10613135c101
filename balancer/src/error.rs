//! Everything the balancer itself can answer with an error, and the one place where an
//! error becomes an HTTP status and a JSON `{"error","message"}` body.

use std::time::Duration;

use bytes::Bytes;

#[cfg(test)]
use hyper::header::CONTENT_TYPE;
use hyper::header::{ALLOW, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use shared::api::{ErrorBody, ErrorCode};
use thiserror::Error;
use tracing::error;

use crate::ResponseBody;

/// Why the balancer answered a request itself instead of with a node's response.
#[derive(Debug, Error)]
pub enum Error {
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body could not be read")]
    BodyUnreadable,
    /// The request is not HTTP/1.1 the balancer can read: the reason.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("the request head is larger than the limit of {limit} bytes or {headers} headers")]
    HeadTooLarge { limit: usize, headers: usize },
    /// The request asks for a method the balancer does not serve (CONNECT): a client's
    /// error, answered 405 like any other method a route does not take, never a 5xx.
    #[error("the balancer does not support {0}")]
    Unsupported(&'static str),
    #[error("the request body did not arrive within {}", humanize(*.0))]
    BodyTimeout(Duration),
    /// Every node that could take the request is at its in-flight limit, with a full queue.
    #[error("every node is at its limit of requests in flight; try again in a second")]
    NodesBusy,
    #[error("no node is up to answer the request; try again shortly")]
    NoHealthyNodes,
    /// A node failed after it got the request, and sending it again is not known to be
    /// safe (or every node tried failed that way).
    #[error("{0}")]
    BadGateway(&'static str),
    #[error("no node answered within {}", humanize(*.0))]
    UpstreamTimeout(Duration),
    #[error("the balancer has no endpoint {0}")]
    NotFound(String),
    #[error("the balancer's own endpoints only answer GET")]
    MethodNotAllowed,
    /// Something that should not happen; logged in full, answered generically.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The status this error is answered with, from the API's table of codes.
    pub fn status(&self) -> StatusCode {
        serve::json::status_of(self.code())
    }

    /// The stable machine-readable code of the JSON body.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Self::BodyUnreadable | Self::Malformed(_) => ErrorCode::BadRequest,
            Self::HeadTooLarge { .. } => ErrorCode::HeadersTooLarge,
            Self::Unsupported(_) => ErrorCode::MethodNotAllowed,
            Self::BodyTimeout(_) => ErrorCode::RequestTimeout,
            Self::NodesBusy => ErrorCode::NodesBusy,
            Self::NoHealthyNodes => ErrorCode::NoHealthyNodes,
            Self::BadGateway(_) => ErrorCode::BadGateway,
            Self::UpstreamTimeout(_) => ErrorCode::UpstreamTimeout,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Self::Internal(_) => ErrorCode::InternalError,
        }
    }

    /// The response a client gets for this error.
    pub fn into_response(self) -> Response<ResponseBody> {
        let message = match &self {
            Self::Internal(detail) => {
                error!(cause = %detail, "internal error");
                "the balancer failed unexpectedly".to_owned()
            }
            other => other.to_string(),
        };
        let status = self.status();
        let body = ErrorBody::new(self.code(), message);
        let mut response = json_response(status, &body);
        if matches!(self, Self::MethodNotAllowed) {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        if matches!(self, Self::NodesBusy) {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A JSON response with `status` (a 500 JSON error if `value` cannot be serialised), in
/// the balancer's body type.
pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<ResponseBody> {
    serve::json::response(status, value).map(ResponseBody::own)
}

/// A complete in-memory body in the balancer's response body type.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    ResponseBody::whole(bytes)
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response<ResponseBody>) -> ErrorBody {
        let bytes = crate::body_bytes(response).await;
        serde_json::from_slice(&bytes).expect("JSON error body")
    }

    #[tokio::test]
    async fn every_error_is_a_json_body_with_its_code() {
        let cases = [
            (
                Error::PayloadTooLarge { limit: 16 },
                413,
                "payload_too_large",
            ),
            (Error::NoHealthyNodes, 503, "no_healthy_nodes"),
            (
                Error::BodyTimeout(Duration::from_secs(1)),
                408,
                "request_timeout",
            ),
            (Error::NodesBusy, 503, "nodes_busy"),
            (Error::BadGateway("node failed"), 502, "bad_gateway"),
            (
                Error::UpstreamTimeout(Duration::from_secs(10)),
                504,
                "upstream_timeout",
            ),
            (Error::MethodNotAllowed, 405, "method_not_allowed"),
        ];
        for (err, status, code) in cases {
            let response = err.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(
                response.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()),
                Some(&b"application/json"[..])
            );
            let body = body_of(response).await;
            assert_eq!(body.error, code);
            assert!(!body.message.is_empty());
        }
    }

    #[tokio::test]
    async fn internal_errors_do_not_leak_their_detail() {
        let response = Error::Internal("secret path /etc/x".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_of(response).await;
        assert_eq!(body.error, "internal_error");
        assert!(!body.message.contains("secret"));
    }

    #[test]
    fn timeouts_read_naturally() {
        assert_eq!(
            Error::UpstreamTimeout(Duration::from_secs(10)).to_string(),
            "no node answered within 10 s"
        );
        assert_eq!(
            Error::UpstreamTimeout(Duration::from_millis(250)).to_string(),
            "no node answered within 250 ms"
        );
    }
}
