//! JSON answers: the one place a value becomes a JSON HTTP response, for the node and the
//! balancer alike. A body that cannot be serialised becomes a 500 with the JSON error shape,
//! never an empty success.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use shared::api::{ErrorBody, ErrorCode};
use tracing::error;

/// `value` as a JSON response with `status`; a 500 `internal_error` if it cannot be
/// serialised (a map with non-string keys, a failing `Serialize` impl).
pub fn response(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_status(status, Bytes::from(bytes)),
        Err(err) => {
            error!(cause = %err, "cannot serialise a response body");
            let body = ErrorBody::new(
                ErrorCode::InternalError,
                "the response could not be written; see the server's log",
            );
            // An `ErrorBody` is strings only, so this cannot fail in turn.
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            with_status(StatusCode::INTERNAL_SERVER_ERROR, Bytes::from(bytes))
        }
    }
}

/// The JSON error body `{"error": code, "message": message}` with the code's status.
pub fn error(body: &ErrorBody, code: ErrorCode) -> Response<Full<Bytes>> {
    response(status_of(code), body)
}

/// The status of `code` as hyper's type.
pub fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn with_status(status: StatusCode, bytes: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::HashMap;

    async fn body_of(response: Response<Full<Bytes>>) -> serde_json::Value {
        let body = response.into_body().collect().await.expect("body");
        serde_json::from_slice(&body.to_bytes()).expect("JSON")
    }

    #[tokio::test]
    async fn a_value_becomes_json_with_its_status() {
        let response = response(StatusCode::CREATED, &serde_json::json!({"a": 1}));
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(body_of(response).await, serde_json::json!({"a": 1}));
    }

    #[tokio::test]
    async fn a_body_that_cannot_be_serialised_is_a_500_json_error() {
        // JSON object keys must be strings; a map keyed by tuples cannot be written.
        let unserialisable: HashMap<(u8, u8), u8> = HashMap::from([((1, 2), 3)]);
        let response = response(StatusCode::OK, &unserialisable);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body_of(response).await["error"], "internal_error");
    }
}
