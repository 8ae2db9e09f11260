//! Strict reading of query parameters: a parameter given twice is refused (never picked from
//! duplicates, `?ttl=1&ttl=2`), and an integer is read by the one integer reader and checked
//! against the wire format's range once.

use actix_web::HttpRequest;

use crate::input::{integer_from_text, InvalidParam, Within};

/// The parameter appeared more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeated;

/// The single value of `name`, if present. Percent-decoding is lossy, so malformed escapes
/// yield a value that then fails to parse as an integer.
pub fn single(req: &HttpRequest, name: &str) -> Result<Option<String>, Repeated> {
    single_in(req.query_string().as_bytes(), name)
}

/// Like `single`, in a query string given as bytes (another request's, as a proxy reports it).
pub fn single_in(query: &[u8], name: &str) -> Result<Option<String>, Repeated> {
    let mut found = None;
    for (key, value) in form_urlencoded::parse(query) {
        if key == name {
            if found.is_some() {
                return Err(Repeated);
            }
            found = Some(value.into_owned());
        }
    }
    Ok(found)
}

/// An optional integer parameter, named and bounded by `within`; a refusal names the
/// parameter and its rule.
pub fn integer<T>(req: &HttpRequest, within: &Within<T>) -> Result<Option<T>, InvalidParam> {
    let field = within.bounds().field;
    let raw = single(req, field).map_err(|Repeated| {
        InvalidParam::new(field, format!("{field} must be given at most once"))
    })?;
    let Some(raw) = raw else {
        return Ok(None);
    };
    // Not an integer at all gets the same rule as out of range.
    within
        .parse(integer_from_text(&raw).unwrap_or(i128::MIN))
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::params::ExpiresIn;
    use actix_web::test::TestRequest;

    const TTL: Within<ExpiresIn> = ExpiresIn::within("ttl", 1, 300);

    fn ttl(uri: &str) -> Result<Option<u32>, String> {
        let req = TestRequest::with_uri(uri).to_http_request();
        integer(&req, &TTL)
            .map(|value| value.map(ExpiresIn::get))
            .map_err(|e| e.message)
    }

    #[test]
    fn only_plain_integers_in_range_are_accepted() {
        assert_eq!(ttl("/t?ttl=1"), Ok(Some(1)));
        assert_eq!(ttl("/t?ttl=300"), Ok(Some(300)));
        for raw in [
            "0",
            "301",
            "-1",
            "99999999999999999999",
            "1.5",
            "1e3",
            "abc",
            "",
            "%205",
            "%2B5",
            "%2",
        ] {
            assert_eq!(
                ttl(&format!("/t?ttl={raw}")),
                Err("ttl must be an integer between 1 and 300".into()),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn a_repeated_parameter_is_refused_and_an_absent_one_is_none() {
        let req = TestRequest::with_uri("/t?ttl=1&ttl=2").to_http_request();
        assert_eq!(single(&req, "ttl"), Err(Repeated));
        assert_eq!(
            ttl("/t?ttl=1&ttl=2"),
            Err("ttl must be given at most once".into())
        );
        assert_eq!(ttl("/t?other=1"), Ok(None));
    }
}
