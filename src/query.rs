//! Strict reading of query-string integers for the compatibility routes: a value is a plain
//! decimal integer in range or it is refused — never silently truncated (`1.5`), reinterpreted
//! (`1e3`), wrapped (`99999999999999999999`) or picked from duplicates (`?ttl=1&ttl=2`).

use actix_web::HttpRequest;

use crate::error::ApiError;

/// Why a query parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadParam {
    Repeated,
    NotAnInteger,
    OutOfRange,
}

/// The single value of `name`, if present. Percent-decoding is lossy, so malformed escapes
/// yield a value that then fails to parse as an integer.
pub fn single(req: &HttpRequest, name: &str) -> Result<Option<String>, BadParam> {
    let mut found = None;
    for (key, value) in form_urlencoded::parse(req.query_string().as_bytes()) {
        if key == name {
            if found.is_some() {
                return Err(BadParam::Repeated);
            }
            found = Some(value.into_owned());
        }
    }
    Ok(found)
}

/// An optional integer parameter in `min..=max`; a refusal names the parameter and its rule.
pub fn integer(
    req: &HttpRequest,
    name: &'static str,
    min: u32,
    max: u32,
) -> Result<Option<u32>, ApiError> {
    let refuse = |why: BadParam| ApiError::InvalidParam {
        param: name,
        message: match why {
            BadParam::Repeated => format!("{name} must be given at most once"),
            BadParam::NotAnInteger | BadParam::OutOfRange => {
                format!("{name} must be an integer between {min} and {max}")
            }
        },
    };
    let Some(raw) = single(req, name).map_err(refuse)? else {
        return Ok(None);
    };
    parse_integer(&raw, min, max).map(Some).map_err(refuse)
}

pub fn parse_integer(raw: &str, min: u32, max: u32) -> Result<u32, BadParam> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadParam::NotAnInteger);
    }
    match raw.parse::<i64>() {
        Ok(n) if (i64::from(min)..=i64::from(max)).contains(&n) => Ok(n as u32),
        _ => Err(BadParam::OutOfRange),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn only_plain_integers_in_range_are_accepted() {
        assert_eq!(parse_integer("1", 1, 300), Ok(1));
        assert_eq!(parse_integer("300", 1, 300), Ok(300));
        for (raw, why) in [
            ("0", BadParam::OutOfRange),
            ("301", BadParam::OutOfRange),
            ("-1", BadParam::OutOfRange),
            ("99999999999999999999", BadParam::OutOfRange),
            ("1.5", BadParam::NotAnInteger),
            ("1e3", BadParam::NotAnInteger),
            ("abc", BadParam::NotAnInteger),
            ("", BadParam::NotAnInteger),
            (" 5", BadParam::NotAnInteger),
            ("+5", BadParam::NotAnInteger),
        ] {
            assert_eq!(parse_integer(raw, 1, 300), Err(why), "{raw:?}");
        }
    }

    #[test]
    fn a_repeated_parameter_is_refused() {
        let req = TestRequest::with_uri("/t?ttl=1&ttl=2").to_http_request();
        assert_eq!(single(&req, "ttl"), Err(BadParam::Repeated));
        let err = integer(&req, "ttl", 1, 300).unwrap_err();
        assert_eq!(err.to_string(), "ttl must be given at most once");
        let req = TestRequest::with_uri("/t?other=1").to_http_request();
        assert!(matches!(integer(&req, "ttl", 1, 300), Ok(None)));
        let req = TestRequest::with_uri("/t?ttl=%2").to_http_request();
        let err = integer(&req, "ttl", 1, 300).unwrap_err();
        assert_eq!(err.to_string(), "ttl must be an integer between 1 and 300");
    }
}
