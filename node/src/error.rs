//! Every way a request can fail, and the one place where a failure becomes an HTTP status
//! and a JSON error body.

use std::sync::Arc;

use hyper::StatusCode;
use shared::PurchaseError;
use shared::api::ErrorBody;
use store::StoreError;
use thiserror::Error;
use tracing::{error, warn};

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("{method} is not allowed on {path}; use {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    #[error("no event named {0:?}")]
    UnknownEvent(String),
    #[error("no ticket with id {0}")]
    UnknownTicket(u64),
    #[error("no purchase with id {0:?}")]
    UnknownPurchase(String),
    #[error(transparent)]
    Purchase(#[from] PurchaseError),
    #[error("the request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("the ticket store is unavailable: {0}")]
    Store(Arc<StoreError>),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        Self::Store(Arc::new(err))
    }
}

impl From<Arc<StoreError>> for ApiError {
    fn from(err: Arc<StoreError>) -> Self {
        Self::Store(err)
    }
}

impl ApiError {
    /// The status and body a client sees. Store failures say what is wrong, so an operator
    /// reading a client's report can act; internal errors stay generic.
    pub fn to_response_parts(&self) -> (StatusCode, ErrorBody) {
        let (status, code) = match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::UnknownEvent(_) | Self::Purchase(PurchaseError::UnknownEvent(_)) => {
                (StatusCode::NOT_FOUND, "unknown_event")
            }
            Self::UnknownTicket(_) => (StatusCode::NOT_FOUND, "unknown_ticket"),
            Self::UnknownPurchase(_) => (StatusCode::NOT_FOUND, "unknown_purchase"),
            Self::Purchase(PurchaseError::SoldOut { .. }) => (StatusCode::CONFLICT, "sold_out"),
            Self::Purchase(PurchaseError::KeyReused { .. }) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        };
        let mut body = ErrorBody::new(code, self.to_string());
        match self {
            Self::Purchase(PurchaseError::SoldOut { available, .. }) => {
                body.available = Some(*available);
            }
            Self::Store(err) => warn!(cause = %err, "store unavailable"),
            Self::Internal(detail) => {
                error!(%detail, "internal error");
                body.message = "internal error; see the node's log".to_owned();
            }
            _ => {}
        }
        (status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::EventName;

    #[test]
    fn sold_out_carries_the_available_count() {
        let err = ApiError::Purchase(PurchaseError::SoldOut {
            event: EventName::parse("concert").expect("valid"),
            requested: 4,
            available: 3,
        });
        let (status, body) = err.to_response_parts();
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body.error, "sold_out");
        assert_eq!(body.available, Some(3));
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let (status, body) = ApiError::Internal("secret path /x".into()).to_response_parts();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body.message.contains("secret"));
    }
}
