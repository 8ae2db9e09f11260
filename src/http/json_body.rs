//! Reads a JSON request body with one set of rules for every JSON route: a size limit checked
//! while reading, JSON (or no) content type, an empty body meaning "all defaults", and errors in
//! the route's envelope rather than actix's plain-text ones.

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::http::access_log;
use crate::http::error::ApiError;

pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// JSON, any `+json` type, or no type at all. `curl -d` labels bodies as a form by default, so
/// that label is accepted too and the body is still parsed as JSON; anything else is refused.
fn is_acceptable_content_type(essence: &str) -> bool {
    // Compared without lower-casing a copy: this runs on every JSON request.
    let has_prefix = |prefix: &str| {
        essence
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    let has_suffix = |suffix: &str| {
        essence
            .len()
            .checked_sub(suffix.len())
            .and_then(|start| essence.get(start..))
            .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
    };
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
        || (has_prefix("application/") && has_suffix("+json"))
}

pub async fn read_json<T: DeserializeOwned + Default>(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<T, ApiError> {
    if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
        let essence = content_type
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        if !is_acceptable_content_type(essence) {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES));
    }
    // Sized from the declared length (at most MAX_BODY_BYTES here), so it is allocated once.
    let mut body = web::BytesMut::with_capacity(declared.map_or(0, |len| len as usize));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::InvalidRequest(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES));
        }
        body.extend_from_slice(&chunk);
    }
    let Some(first) = body.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Ok(T::default());
    };
    // serde would also read a struct from a JSON array; our bodies are objects only.
    if *first != b'{' {
        return Err(ApiError::InvalidRequest(
            "the body must be a JSON object".into(),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        // serde quotes the offending value, which may be a token pasted into the wrong field:
        // mask credential-shaped text before it reaches the client or the debug log.
        ApiError::InvalidRequest(format!(
            "invalid JSON body: {}",
            access_log::mask_secret_shapes(&e.to_string())
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::is_acceptable_content_type;

    #[test]
    fn json_and_curls_default_are_accepted_and_other_types_refused() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/merge-patch+json",
            "APPLICATION/Problem+JSON",
            "application/x-www-form-urlencoded",
        ] {
            assert!(is_acceptable_content_type(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "multipart/form-data",
            "application/xml",
            "",
            "+json",
            "application/",
            "text/x+json",
            "é/+json",
        ] {
            assert!(!is_acceptable_content_type(bad), "{bad}");
        }
    }
}
