//! The identity headers a gateway hands the upstream after a token is admitted (forward-auth
//! answers with them, the proxy routes send them), so an upstream that knows nothing of tokens
//! learns whose session it serves.

use chrono::SecondsFormat;

use crate::admission::redeem::Redemption;

pub const ORG_HEADER: &str = "x-streamtoken-org";
pub const TOKEN_TYPE_HEADER: &str = "x-streamtoken-token-type";
pub const JTI_HEADER: &str = "x-streamtoken-jti";
pub const SESSION_EXPIRES_AT_HEADER: &str = "x-streamtoken-session-expires-at";
pub const CTX_HEADER: &str = "x-streamtoken-ctx";
pub const RESUMED_HEADER: &str = "x-streamtoken-resumed";

/// Org, token type, jti, the session deadline (RFC 3339), ctx (compact JSON) and whether the
/// session was re-opened within its reconnect grace (`true`/`false`), each of printable ASCII
/// only: a legal header value whatever the ctx holds, for any HTTP library.
pub fn identity_headers(redemption: &Redemption) -> [(&'static str, String); 6] {
    let claims = &redemption.claims;
    let ctx = serde_json::to_string(&claims.ctx).unwrap_or_else(|_| "{}".into());
    let expires_at = redemption
        .session_expires_at
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    [
        (ORG_HEADER, claims.org.clone()),
        (TOKEN_TYPE_HEADER, claims.token_type.clone()),
        (JTI_HEADER, claims.jti.to_string()),
        (SESSION_EXPIRES_AT_HEADER, expires_at),
        (CTX_HEADER, ctx),
        (RESUMED_HEADER, redemption.resumed.to_string()),
    ]
    .map(|(name, value)| (name, ascii_escaped(&value)))
}

/// `text` with every character outside printable ASCII written as a JSON `\uXXXX` escape
/// (UTF-16, as JSON escapes astral characters), so any header value is legal and a client's
/// `ctx` can never break a header or smuggle another. Applied to compact JSON (whose control
/// characters serde_json already escapes) it is still the same JSON: non-ASCII characters only
/// occur inside its strings, where the escape means the same character.
pub fn ascii_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == ' ' || c.is_ascii_graphic() {
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
    use std::collections::BTreeMap;

    use actix_web::http::header::HeaderValue;

    #[test]
    fn an_escaped_ctx_is_a_legal_header_and_reads_back_as_the_same_json() {
        let ctx: BTreeMap<String, String> = BTreeMap::from([
            ("plain".into(), "s-1".into()),
            ("lines".into(), "a\r\nX-Injected: 1\n".into()),
            ("controls".into(), "\u{0}\u{1f}\u{7f}\t".into()),
            ("accents".into(), "réaltime — ünïcode".into()),
            ("astral".into(), "🎙️ 𝄞".into()),
            ("quotes".into(), r#"a "quoted" \ back"#.into()),
            ("  spaced  ".into(), "  ".into()),
        ]);
        let json = serde_json::to_string(&ctx).unwrap();

        let escaped = ascii_escaped(&json);

        assert!(
            escaped.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "{escaped}"
        );
        assert!(HeaderValue::from_str(&escaped).is_ok());
        let back: BTreeMap<String, String> = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back, ctx);
        assert!(
            escaped.contains(r"\ud83c\udf99"),
            "astral as a surrogate pair: {escaped}"
        );
    }

    #[test]
    fn printable_ascii_is_left_as_it_is() {
        for text in ["dev", "realtime", "2026-11-23T04:46:44Z", r#"{"a":"b c"}"#] {
            assert_eq!(ascii_escaped(text), text);
        }
    }
}
