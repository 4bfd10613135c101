//! Every way a request can fail, and the one place where a failure becomes an HTTP status
//! and a JSON error body.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{ALLOW, HeaderValue};
use shared::DecisionError;
use shared::api::{ErrorBody, ErrorCode};
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
    /// The store refused an order (sold out, taken seats, the customer's limit, a hold's
    /// state, a missing credential, a reused key, ...).
    #[error(transparent)]
    Decision(#[from] DecisionError),
    #[error("no hold with id {0:?}")]
    UnknownHold(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("the ticket store is unavailable: {0}")]
    Store(Arc<StoreError>),
    #[error("this node's commit thread is not running; it restarts shortly")]
    CommitterDown,
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
    /// This error's code in the API's table, which fixes its status.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::NotFound { .. } => ErrorCode::NotFound,
            Self::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            Self::UnknownEvent(_) => ErrorCode::UnknownEvent,
            Self::UnknownTicket(_) => ErrorCode::UnknownTicket,
            Self::UnknownPurchase(_) => ErrorCode::UnknownPurchase,
            Self::Decision(err) => err.code(),
            Self::UnknownHold(_) => ErrorCode::UnknownHold,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            Self::BodyTimeout => ErrorCode::RequestTimeout,
            Self::Store(_) | Self::CommitterDown => ErrorCode::StoreUnavailable,
            Self::Internal(_) => ErrorCode::InternalError,
        }
    }

    /// The body a client sees. Store failures say what is wrong, so an operator reading a
    /// client's report can act; internal errors stay generic.
    pub fn to_body(&self) -> ErrorBody {
        let mut body = ErrorBody::new(self.code(), self.to_string());
        match self {
            Self::Decision(err) => body = ErrorBody::for_decision(err),
            Self::Store(err) => warn!(cause = %err, "store unavailable"),
            Self::CommitterDown => warn!("a purchase found the commit thread down"),
            Self::Internal(detail) => {
                error!(%detail, "internal error");
                body.message = "internal error; see the node's log".to_owned();
            }
            _ => {}
        }
        body
    }

    /// The JSON response a client gets, with `Allow` on a 405.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = serve::json::error(&self.to_body(), self.code());
        if let Self::MethodNotAllowed { allowed, .. } = self {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::EventName;

    fn concert() -> EventName {
        EventName::parse("concert").expect("valid")
    }

    #[test]
    fn sold_out_carries_the_available_count() {
        let err = ApiError::Decision(DecisionError::SoldOut {
            event: concert(),
            requested: 4,
            available: 3,
        });
        assert_eq!(err.code(), ErrorCode::SoldOut);
        let body = err.to_body();
        assert_eq!(body.error, "sold_out");
        assert_eq!(body.available, Some(3));
    }

    #[test]
    fn box_office_refusals_carry_their_codes_and_extra_fields() {
        let taken = ApiError::Decision(DecisionError::TicketsUnavailable {
            event: concert(),
            unavailable: vec![3, 4],
        });
        let body = taken.to_body();
        assert_eq!(
            (body.error.as_str(), body.unavailable),
            ("tickets_unavailable", Some(vec![3, 4]))
        );
        let limit = ApiError::Decision(DecisionError::CustomerLimit {
            event: concert(),
            limit: 4,
            allowed: 1,
        });
        assert_eq!(limit.code().status(), 409);
        assert_eq!(limit.to_body().allowed, Some(1));
        for (err, status) in [
            (ApiError::Decision(DecisionError::Forbidden), 403),
            (
                ApiError::Forbidden("listing by customer needs the operator's token"),
                403,
            ),
            (ApiError::UnknownHold("h-1".into()), 404),
            (
                ApiError::Decision(DecisionError::HoldExpired("h-1".into())),
                409,
            ),
            (
                ApiError::Decision(DecisionError::CustomerRequired { event: concert() }),
                400,
            ),
        ] {
            assert_eq!(err.code().status(), status, "{err}");
            assert_eq!(err.into_response().status().as_u16(), status);
        }
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let body = ApiError::Internal("secret path /x".into()).to_body();
        assert_eq!(body.error, "internal_error");
        assert!(!body.message.contains("secret"));
    }
}
