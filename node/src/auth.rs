//! Who a request says it is ("who may change what"): the secret of one purchase or hold
//! in `X-Ticket-Secret`, and the operator's token in `Authorization: Bearer <token>`,
//! checked here in constant time against the node's `admin_token`. The secret is checked
//! against the stored hash by whoever holds the hash. Neither value is ever logged: the
//! types holding them hide them from `Debug`.

use hyper::header::{AUTHORIZATION, HeaderMap};
use shared::Proof;
use shared::api::SECRET_HEADER;
use shared::secret::Secret;

use crate::error::ApiError;
use crate::settings::AdminToken;

/// Reads what a request presents: the secret of `X-Ticket-Secret`, and whether
/// `Authorization: Bearer <token>` carries this node's `token` (never, when the node has
/// none). More than one of either header is refused (which one would count?); anything
/// else that is wrong is simply no credential, so the request is answered 403 where one
/// is needed. A secret that is not visible ASCII is kept as the empty text, which is no
/// secret, so it matches nothing.
pub fn proof(headers: &HeaderMap, token: Option<&AdminToken>) -> Result<Proof, ApiError> {
    let secret = single(headers, SECRET_HEADER)?.map(|value| {
        let text = value
            .to_str()
            .ok()
            .filter(|text| text.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or("");
        Secret::presented(text)
    });
    let bearer = single(headers, AUTHORIZATION.as_str())?
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    let operator = match (token, bearer) {
        (Some(token), Some(presented)) => token.matches(presented),
        _ => false,
    };
    Ok(Proof { secret, operator })
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a hyper::header::HeaderValue>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::BadRequest(format!(
            "send at most one {name} header"
        )));
    }
    Ok(first)
}

/// The token of `Bearer <token>` (the scheme's case does not matter, RFC 9110 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "operator-token-0123456789";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        map
    }

    fn read(pairs: &[(&str, &str)], token: Option<&str>) -> Proof {
        let token = token.map(AdminToken::new);
        proof(&headers(pairs), token.as_ref()).expect("readable")
    }

    #[test]
    fn the_operators_token_counts_only_as_a_bearer_token_equal_to_the_nodes() {
        let bearer = format!("Bearer {TOKEN}");
        assert!(read(&[("authorization", &bearer)], Some(TOKEN)).operator);
        let lower = format!("bearer {TOKEN}");
        assert!(read(&[("authorization", &lower)], Some(TOKEN)).operator);
        for wrong in [
            format!("Bearer {TOKEN}x"),
            format!("Basic {TOKEN}"),
            TOKEN.to_owned(),
            "Bearer ".to_owned(),
            "Bearer operator-token-012345678".to_owned(),
        ] {
            assert!(
                !read(&[("authorization", &wrong)], Some(TOKEN)).operator,
                "{wrong}"
            );
        }
        // A node without a token accepts none.
        assert!(!read(&[("authorization", &bearer)], None).operator);
    }

    #[test]
    fn the_secret_is_read_as_sent_and_repeated_headers_are_refused() {
        let secret = Secret::generate();
        let c = read(&[("x-ticket-secret", secret.as_str())], None);
        assert!(c.allows(Some(&secret.hash())));
        assert!(!c.operator);
        assert_eq!(read(&[], Some(TOKEN)), Proof::default());
        let unreadable = read(&[("x-ticket-secret", "two words")], None);
        assert!(!unreadable.allows(Some(&secret.hash())));
        for name in ["x-ticket-secret", "authorization"] {
            let twice = headers(&[(name, "a"), (name, "b")]);
            let err = proof(&twice, None).expect_err("twice");
            assert!(matches!(err, ApiError::BadRequest(_)), "{err:?}");
        }
    }

    #[test]
    fn debug_output_shows_neither_secret_nor_token() {
        let bearer = format!("Bearer {TOKEN}");
        let c = read(
            &[
                ("x-ticket-secret", "s3cr3t-value"),
                ("authorization", &bearer),
            ],
            Some(TOKEN),
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cr3t-value") && !shown.contains(TOKEN),
            "{shown}"
        );
    }
}
