//! The node's routes as one value: a request's method and path parsed by one `match` into a
//! `Route`, which carries its name for metrics and logs and the methods it allows (for 405
//! and its `Allow` header). `HEAD` is allowed wherever `GET` is.

use hyper::Method;

/// Every route of the ticket API; path parameters are still percent-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    Events,
    Event(String),
    Tickets,
    Ticket(String),
    ListPurchases,
    CreatePurchase,
    Purchase(String),
    CancelPurchase(String),
    ListHolds,
    CreateHold,
    Hold(String),
    ConfirmHold(String),
    ReleaseHold(String),
}

/// Why a request matched no route it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unrouted {
    /// No route has this path.
    NotFound,
    /// The path exists, but not for this method.
    MethodNotAllowed {
        name: &'static str,
        allowed: &'static str,
    },
}

const GET: &str = "GET, HEAD";
const GET_POST: &str = "GET, HEAD, POST";
const POST: &str = "POST";

impl Route {
    /// Parses `method` and `path`; `HEAD` routes as `GET` does.
    pub fn parse(method: &Method, path: &str) -> Result<Self, Unrouted> {
        let read = *method == Method::GET || *method == Method::HEAD;
        let post = *method == Method::POST;
        let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
        let first = segments.next().unwrap_or("");
        let second = segments.next();
        let third = segments.next();
        if segments.next().is_some() {
            return Err(Unrouted::NotFound);
        }
        let (route, allowed) = match (first, second, third) {
            ("health", None, None) => (Self::Health, GET),
            ("metrics", None, None) => (Self::Metrics, GET),
            ("events", None, None) => (Self::Events, GET),
            ("events", Some(name), None) => (Self::Event(name.to_owned()), GET),
            ("tickets", None, None) => (Self::Tickets, GET),
            ("tickets", Some(id), None) => (Self::Ticket(id.to_owned()), GET),
            ("purchases", None, None) if post => (Self::CreatePurchase, GET_POST),
            ("purchases", None, None) => (Self::ListPurchases, GET_POST),
            ("purchases", Some(id), None) => (Self::Purchase(id.to_owned()), GET),
            ("purchases", Some(id), Some("cancel")) => (Self::CancelPurchase(id.to_owned()), POST),
            ("holds", None, None) if post => (Self::CreateHold, GET_POST),
            ("holds", None, None) => (Self::ListHolds, GET_POST),
            ("holds", Some(id), None) => (Self::Hold(id.to_owned()), GET),
            ("holds", Some(id), Some("confirm")) => (Self::ConfirmHold(id.to_owned()), POST),
            ("holds", Some(id), Some("release")) => (Self::ReleaseHold(id.to_owned()), POST),
            _ => return Err(Unrouted::NotFound),
        };
        let may = if allowed == POST {
            post
        } else {
            read || (post && allowed == GET_POST)
        };
        if may {
            Ok(route)
        } else {
            Err(Unrouted::MethodNotAllowed {
                name: route.name(),
                allowed,
            })
        }
    }

    /// The route's name in metrics and logs: its method and path pattern.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Health => "GET /health",
            Self::Metrics => "GET /metrics",
            Self::Events => "GET /events",
            Self::Event(_) => "GET /events/{event}",
            Self::Tickets => "GET /tickets",
            Self::Ticket(_) => "GET /tickets/{id}",
            Self::ListPurchases => "GET /purchases",
            Self::CreatePurchase => "POST /purchases",
            Self::Purchase(_) => "GET /purchases/{id}",
            Self::CancelPurchase(_) => "POST /purchases/{id}/cancel",
            Self::ListHolds => "GET /holds",
            Self::CreateHold => "POST /holds",
            Self::Hold(_) => "GET /holds/{id}",
            Self::ConfirmHold(_) => "POST /holds/{id}/confirm",
            Self::ReleaseHold(_) => "POST /holds/{id}/release",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that `method` finds no route on any of `paths`.
    fn assert_not_found<const N: usize>(method: Method, paths: [&str; N]) {
        for path in paths {
            assert_eq!(
                Route::parse(&method, path),
                Err(Unrouted::NotFound),
                "{method} {path}"
            );
        }
    }

    /// Asserts that `method` on `path` is refused, naming the route and what it allows.
    fn assert_not_allowed(method: Method, path: &str, name: &'static str, allowed: &'static str) {
        assert_eq!(
            Route::parse(&method, path),
            Err(Unrouted::MethodNotAllowed { name, allowed }),
            "{method} {path}"
        );
    }

    #[test]
    fn every_path_parses_to_its_route_for_get_and_head() {
        for method in [Method::GET, Method::HEAD] {
            assert_eq!(Route::parse(&method, "/health"), Ok(Route::Health));
            assert_eq!(
                Route::parse(&method, "/events/concert"),
                Ok(Route::Event("concert".into()))
            );
            assert_eq!(
                Route::parse(&method, "/purchases"),
                Ok(Route::ListPurchases)
            );
        }
        assert_eq!(
            Route::parse(&Method::POST, "/purchases"),
            Ok(Route::CreatePurchase)
        );
        for method in [Method::GET, Method::HEAD] {
            assert_eq!(Route::parse(&method, "/holds"), Ok(Route::ListHolds));
            assert_eq!(
                Route::parse(&method, "/holds/h-00000001"),
                Ok(Route::Hold("h-00000001".into()))
            );
        }
        let post = |path| Route::parse(&Method::POST, path);
        assert_eq!(post("/holds"), Ok(Route::CreateHold));
        assert_eq!(
            post("/holds/h-1/confirm"),
            Ok(Route::ConfirmHold("h-1".into()))
        );
        assert_eq!(
            post("/holds/h-1/release"),
            Ok(Route::ReleaseHold("h-1".into()))
        );
        assert_eq!(
            post("/purchases/p-1/cancel"),
            Ok(Route::CancelPurchase("p-1".into()))
        );
    }

    #[test]
    fn changes_of_holds_and_purchases_are_post_only_and_say_so() {
        for (path, name) in [
            ("/holds/h-1/confirm", "POST /holds/{id}/confirm"),
            ("/holds/h-1/release", "POST /holds/{id}/release"),
            ("/purchases/p-1/cancel", "POST /purchases/{id}/cancel"),
        ] {
            for method in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
                assert_not_allowed(method, path, name, "POST");
            }
        }
        assert_not_allowed(Method::POST, "/holds/h-1", "GET /holds/{id}", "GET, HEAD");
        assert_not_allowed(Method::DELETE, "/holds", "GET /holds", "GET, HEAD, POST");
        assert_not_found(
            Method::POST,
            [
                "/holds/h-1/cancel",
                "/purchases/p-1/confirm",
                "/holds/h-1/confirm/x",
                "/events/concert/x",
                "/holds/h-1/",
            ],
        );
    }

    #[test]
    fn unknown_paths_are_not_found_and_wrong_methods_say_what_is_allowed() {
        assert_not_found(
            Method::GET,
            [
                "/",
                "/nowhere",
                "/events/a/b",
                "//events",
                "/tickets/1/",
                "/tickets/1/x/y",
            ],
        );
        assert_not_allowed(Method::POST, "/events", "GET /events", "GET, HEAD");
        assert_not_allowed(
            Method::DELETE,
            "/purchases",
            "GET /purchases",
            "GET, HEAD, POST",
        );
    }
}
