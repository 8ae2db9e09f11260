//! Small JSON objects written field by field, for the hot paths: the claims a token signs and
//! the mint and redeem success bodies.
//!
//! serde_json escapes a string one byte at a time, which for a ~350-character token was most of
//! the cost of rendering a mint response. A token (base64url and `.`) never needs escaping; this
//! checks that in a branch-free pass and copies the string whole, and falls back to serde_json
//! for any string that does need escaping. The bytes are what serde_json's compact output of the
//! equivalent `#[derive(Serialize)]` struct would be (tested below).

use actix_web::http::header::ContentType;
use actix_web::HttpResponse;

/// A JSON object under construction: `{` + fields in call order + `}`.
pub struct JsonObject {
    out: String,
    first: bool,
}

impl JsonObject {
    /// `capacity`: the expected body length, so the buffer is allocated once.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut out = String::with_capacity(capacity);
        out.push('{');
        JsonObject { out, first: true }
    }

    fn name(&mut self, name: &'static str) {
        // Field names are our own identifiers: nothing to escape.
        debug_assert!(!needs_escape(name));
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(name);
        self.out.push_str("\":");
    }

    pub fn string(mut self, name: &'static str, value: &str) -> Self {
        self.name(name);
        push_string(&mut self.out, value);
        self
    }

    pub fn integer(mut self, name: &'static str, value: impl itoa::Integer) -> Self {
        self.name(name);
        self.out.push_str(itoa::Buffer::new().format(value));
        self
    }

    /// A map of strings, in its own order (a `BTreeMap`'s is serde_json's too).
    pub fn string_map<'a>(
        mut self,
        name: &'static str,
        entries: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Self {
        self.name(name);
        self.out.push('{');
        for (i, (key, value)) in entries.into_iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            push_string(&mut self.out, key);
            self.out.push(':');
            push_string(&mut self.out, value);
        }
        self.out.push('}');
        self
    }

    pub fn boolean(mut self, name: &'static str, value: bool) -> Self {
        self.name(name);
        self.out.push_str(if value { "true" } else { "false" });
        self
    }

    pub fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }

    /// `200 OK` with this object as an `application/json` body (as `HttpResponse::json` sets).
    pub fn ok(self) -> HttpResponse {
        HttpResponse::Ok()
            .content_type(ContentType::json())
            .body(self.finish())
    }
}

/// What serde_json escapes in a string: `"`, `\` and the control characters below 0x20. Written
/// without an early exit so the compiler checks many bytes per instruction.
fn needs_escape(value: &str) -> bool {
    value.bytes().fold(false, |found, b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// `value` as a JSON string, byte for byte as serde_json writes it.
fn push_string(out: &mut String, value: &str) {
    if !needs_escape(value) {
        out.push('"');
        out.push_str(value);
        out.push('"');
        return;
    }
    // Serialising a `str` cannot fail; `Value`'s `Display` is serde_json's compact writer.
    out.push_str(&serde_json::Value::from(value).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::BTreeMap;

    #[derive(Serialize)]
    struct Reference<'a> {
        token: &'a str,
        text: &'a str,
        expires_in_seconds: i64,
        uses: u32,
        success: bool,
        ctx: BTreeMap<String, String>,
    }

    #[test]
    fn the_bytes_are_serde_jsons() {
        for text in [
            "",
            "abc.DEF-_123",
            "quote \" backslash \\ slash /",
            "controls \u{0} \u{1f} \n \r \t \u{8} \u{c} del \u{7f}",
            "ünïcödé ✓ 🎉",
            "</script>",
        ] {
            let reference = Reference {
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
                text,
                expires_in_seconds: -60,
                uses: u32::MAX,
                success: true,
                ctx: BTreeMap::from([
                    ("b".to_owned(), text.to_owned()),
                    (text.to_owned(), "a".to_owned()),
                ]),
            };
            let written = JsonObject::with_capacity(16)
                .string("token", reference.token)
                .string("text", text)
                .integer("expires_in_seconds", reference.expires_in_seconds)
                .integer("uses", reference.uses)
                .boolean("success", reference.success)
                .string_map("ctx", &reference.ctx)
                .finish();
            assert_eq!(
                written,
                serde_json::to_string(&reference).unwrap(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn an_empty_object_is_braces() {
        assert_eq!(JsonObject::with_capacity(2).finish(), "{}");
        let empty = BTreeMap::new();
        assert_eq!(
            JsonObject::with_capacity(2)
                .string_map("ctx", &empty)
                .finish(),
            r#"{"ctx":{}}"#
        );
    }
}
