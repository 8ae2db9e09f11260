//! The identity headers a proxy hands the upstream after a token is admitted, so an upstream
//! that knows nothing of tokens learns whose session it serves.

use chrono::SecondsFormat;

use crate::admission::redeem::Redemption;

/// `X-Streamtoken-Org`, `-Token-Type`, `-Jti`, `-Session-Expires-At` (RFC 3339) and `-Ctx`
/// (compact JSON, non-ASCII escaped as `\uXXXX`): names and values of printable ASCII only, valid
/// header values whatever the ctx holds, for any HTTP library.
pub fn identity_headers(redemption: &Redemption) -> [(&'static str, String); 5] {
    let claims = &redemption.claims;
    let ctx = ascii_json(&serde_json::to_string(&claims.ctx).unwrap_or_else(|_| "{}".into()));
    [
        ("x-streamtoken-org", claims.org.clone()),
        ("x-streamtoken-token-type", claims.token_type.clone()),
        ("x-streamtoken-jti", claims.jti.to_string()),
        (
            "x-streamtoken-session-expires-at",
            redemption
                .session_expires_at
                .to_rfc3339_opts(SecondsFormat::Secs, true),
        ),
        ("x-streamtoken-ctx", ctx),
    ]
}

/// JSON with every non-ASCII character written as a `\uXXXX` escape (still the same JSON), and
/// control characters already escaped by serde_json: printable ASCII only.
pub fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_ctx_becomes_a_header_value_that_parses_back_to_the_same_json() {
        let json = serde_json::json!({"name": "Zoë 🎙", "line": "a\nb\"c"}).to_string();
        let escaped = ascii_json(&json);
        assert!(
            actix_web::http::header::HeaderValue::from_str(&escaped).is_ok(),
            "{escaped}"
        );
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back["name"], "Zoë 🎙");
        assert_eq!(back["line"], "a\nb\"c");
    }
}
