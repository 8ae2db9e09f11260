//! The access log. It never contains a token or an API key: auth headers are not logged at all,
//! `token=`-like query values are replaced, and anything shaped like a JWT or one of our API keys
//! is masked wherever it appears in the logged URI.

use actix_web::dev::ServiceRequest;
use actix_web::middleware::Logger;

const REDACTED: &str = "[redacted]";
/// Query parameters that carry credentials in the wild.
const SECRET_PARAMS: [&str; 5] = ["token", "access_token", "api_key", "key", "xi-api-key"];

pub fn logger() -> Logger {
    Logger::new("%{request}xi %s %b %Dms")
        .custom_request_replace("request", |req: &ServiceRequest| {
            format!("{} {}", req.method(), redact_uri(&req.uri().to_string()))
        })
        .log_target("streamtoken::access")
}

pub fn redact_uri(uri: &str) -> String {
    let (path, query) = match uri.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (uri, None),
    };
    let mut out = mask_encoded(path);
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                // Names and values are judged decoded, as the routes read them: `%74oken=%65yJ…`
                // is a token too.
                if is_secret_param(&percent_decode(name)) || looks_secret(&percent_decode(value)) {
                    format!("{}={REDACTED}", mask_encoded(name))
                } else {
                    mask_encoded(pair)
                }
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

fn percent_decode(text: &str) -> String {
    form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

fn looks_secret(text: &str) -> bool {
    mask_secret_shapes(text) != text
}

/// Masks credential shapes in the text as written, or all of it when only its decoded form shows one.
fn mask_encoded(text: &str) -> String {
    let masked = mask_secret_shapes(text);
    if masked == text && looks_secret(&percent_decode(text)) {
        REDACTED.to_owned()
    } else {
        masked
    }
}

fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// Masks JWT-looking (`eyJ…`) and API-key-looking (`st_…`) runs, so a credential pasted into
/// the wrong place still stays out of the log.
pub fn mask_secret_shapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = ["eyJ", "st_"]
        .iter()
        .filter_map(|marker| rest.find(marker))
        .min()
    {
        out.push_str(&rest[..at]);
        let run = rest[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '%')))
            .unwrap_or(rest.len() - at);
        if run >= 16 {
            out.push_str(REDACTED);
        } else {
            out.push_str(&rest[at..at + run]);
        }
        rest = &rest[at + run..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_uri;

    #[test]
    fn token_query_values_are_redacted() {
        assert_eq!(
            redact_uri("/v1/stream?token=eyJhbGciOi.x.y&sample_rate=16000"),
            "/v1/stream?token=[redacted]&sample_rate=16000"
        );
        assert_eq!(redact_uri("/x?TOKEN=abc"), "/x?TOKEN=[redacted]");
        assert_eq!(redact_uri("/x?api_key=st_abc"), "/x?api_key=[redacted]");
    }

    #[test]
    fn credentials_in_unexpected_places_are_masked() {
        let key = format!("st_{}", "A".repeat(43));
        assert_eq!(
            redact_uri(&format!("/v1/tokens/{key}?t=eyJhbGciOiJIUzI1NiJ9.e30.abc")),
            "/v1/tokens/[redacted]?t=[redacted]"
        );
    }

    #[test]
    fn percent_encoded_names_and_values_are_judged_decoded() {
        let token = "%65yJhbGciOiJIUzI1NiJ9.%65yJzdWIiOiIxIn0.sig";
        assert_eq!(
            redact_uri(&format!("/v1/stream?%74oken={token}")),
            "/v1/stream?%74oken=[redacted]"
        );
        assert_eq!(redact_uri(&format!("/x?t={token}")), "/x?t=[redacted]");
        assert_eq!(redact_uri(&format!("/v1/tokens/{token}")), "[redacted]");
    }

    #[test]
    fn ordinary_paths_are_left_alone() {
        for uri in [
            "/v1/tokens",
            "/healthz",
            "/v3/token?expires_in_seconds=60",
            "/first_steps",
        ] {
            assert_eq!(redact_uri(uri), uri);
        }
    }
}
