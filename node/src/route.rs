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

impl Route {
    /// Parses `method` and `path`; `HEAD` routes as `GET` does.
    pub fn parse(method: &Method, path: &str) -> Result<Self, Unrouted> {
        let read = *method == Method::GET || *method == Method::HEAD;
        let post = *method == Method::POST;
        let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
        let first = segments.next().unwrap_or("");
        let second = segments.next();
        if segments.next().is_some() {
            return Err(Unrouted::NotFound);
        }
        let (route, allowed) = match (first, second) {
            ("health", None) => (Self::Health, GET),
            ("metrics", None) => (Self::Metrics, GET),
            ("events", None) => (Self::Events, GET),
            ("events", Some(name)) => (Self::Event(name.to_owned()), GET),
            ("tickets", None) => (Self::Tickets, GET),
            ("tickets", Some(id)) => (Self::Ticket(id.to_owned()), GET),
            ("purchases", None) if post => (Self::CreatePurchase, GET_POST),
            ("purchases", None) => (Self::ListPurchases, GET_POST),
            ("purchases", Some(id)) => (Self::Purchase(id.to_owned()), GET),
            _ => return Err(Unrouted::NotFound),
        };
        if read || (post && route == Self::CreatePurchase) {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn unknown_paths_are_not_found_and_wrong_methods_say_what_is_allowed() {
        for path in ["/", "/nowhere", "/events/a/b", "//events", "/tickets/1/"] {
            assert_eq!(
                Route::parse(&Method::GET, path),
                Err(Unrouted::NotFound),
                "{path}"
            );
        }
        assert_eq!(
            Route::parse(&Method::POST, "/events"),
            Err(Unrouted::MethodNotAllowed {
                name: "GET /events",
                allowed: "GET, HEAD"
            })
        );
        assert_eq!(
            Route::parse(&Method::DELETE, "/purchases"),
            Err(Unrouted::MethodNotAllowed {
                name: "GET /purchases",
                allowed: "GET, HEAD, POST"
            })
        );
    }
}
