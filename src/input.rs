//! How values from outside become numbers: one integer reader for query strings, JSON bodies and
//! the environment, ranges with a field name, and the error that states the field's rule.
//!
//! A value is a plain integer in range or it is refused — never silently truncated (`1.5`),
//! reinterpreted (`1e3` in text), or wrapped (`99999999999999999999`).

use std::marker::PhantomData;

/// Why a request value was refused; the message names the field and its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidParam {
    /// The field or parameter as the client named it (`ttl`, `expires_in_seconds`, `ctx`).
    pub field: &'static str,
    pub message: String,
}

impl InvalidParam {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        InvalidParam {
            field,
            message: message.into(),
        }
    }
}

/// A plain decimal integer written as text: an optional `-`, then digits. Anything else
/// (` 5`, `+5`, `1.5`, `1e3`, ``) is not an integer. Digits beyond `i128` saturate, so they
/// read as out of range rather than as garbage.
pub fn integer_from_text(raw: &str) -> Option<i128> {
    let (negative, digits) = match raw.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, raw),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        raw.parse()
            .unwrap_or(if negative { i128::MIN } else { i128::MAX }),
    )
}

/// A JSON number that is an integer. As in JSON Schema, a number with no fractional part is
/// one (`60.0`, `6e1`); any other number is not.
pub fn integer_from_json(number: &serde_json::Number) -> Option<i128> {
    number
        .as_i64()
        .map(i128::from)
        .or_else(|| number.as_u64().map(i128::from))
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e18)
                .map(|f| f as i128)
        })
}

/// Whether `value` is 1 to `max_len` bytes, each allowed by `allowed`: the shape of every name
/// that ends up in a token, a file name or a label (org, token type, key id).
pub fn is_name(value: &str, max_len: usize, allowed: impl Fn(u8) -> bool) -> bool {
    !value.is_empty() && value.len() <= max_len && value.bytes().all(allowed)
}

/// An inclusive integer range under the name a client knows it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub field: &'static str,
    pub min: u32,
    pub max: u32,
}

impl Bounds {
    /// The refusal every out-of-range or non-integer value of this field gets.
    pub fn refusal(&self) -> InvalidParam {
        InvalidParam::new(
            self.field,
            format!(
                "{} must be an integer between {} and {}",
                self.field, self.min, self.max
            ),
        )
    }

    pub fn check(&self, value: i128) -> Result<u32, InvalidParam> {
        if (i128::from(self.min)..=i128::from(self.max)).contains(&value) {
            Ok(value as u32)
        } else {
            Err(self.refusal())
        }
    }
}

/// A bounded type's range as one wire format narrows and names it (`ttl`, 1–300, for a type
/// whose own range is 1–3600). Parsing through it checks the narrower range once and yields
/// the type itself, so an adapter never checks a value twice.
#[derive(Debug, Clone, Copy)]
pub struct Within<T> {
    bounds: Bounds,
    build: fn(u32) -> T,
    _type: PhantomData<T>,
}

impl<T> Within<T> {
    /// Used by the bounded types themselves; `bounds` must lie inside the type's own range.
    pub(crate) const fn new(bounds: Bounds, build: fn(u32) -> T) -> Self {
        Within {
            bounds,
            build,
            _type: PhantomData,
        }
    }

    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    pub fn parse(&self, value: i128) -> Result<T, InvalidParam> {
        self.bounds.check(value).map(self.build)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_decimal_text_is_an_integer() {
        assert_eq!(integer_from_text("1"), Some(1));
        assert_eq!(integer_from_text("-1"), Some(-1));
        assert_eq!(integer_from_text("0300"), Some(300));
        assert_eq!(
            integer_from_text("99999999999999999999"),
            Some(99_999_999_999_999_999_999)
        );
        assert_eq!(integer_from_text(&"9".repeat(60)), Some(i128::MAX));
        assert_eq!(
            integer_from_text(&format!("-{}", "9".repeat(60))),
            Some(i128::MIN)
        );
        for bad in ["", "-", "1.5", "1e3", "abc", " 5", "5 ", "+5", "0x10", "٣"] {
            assert_eq!(integer_from_text(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn integral_json_numbers_are_integers_as_in_json_schema() {
        let number = |text: &str| serde_json::from_str::<serde_json::Number>(text).unwrap();
        for (text, expected) in [("60", 60), ("60.0", 60), ("6e1", 60), ("-1", -1)] {
            assert_eq!(integer_from_json(&number(text)), Some(expected), "{text}");
        }
        assert_eq!(
            integer_from_json(&number("18446744073709551615")),
            Some(i128::from(u64::MAX))
        );
        for text in ["1.5", "1e300", "-0.5"] {
            assert_eq!(integer_from_json(&number(text)), None, "{text}");
        }
    }

    #[test]
    fn a_value_outside_its_bounds_is_refused_with_the_fields_rule() {
        let ttl = Bounds {
            field: "ttl",
            min: 1,
            max: 300,
        };
        assert_eq!(ttl.check(1), Ok(1));
        assert_eq!(ttl.check(300), Ok(300));
        for bad in [0, -1, 301, i128::MAX] {
            let err = ttl.check(bad).unwrap_err();
            assert_eq!(err.field, "ttl");
            assert_eq!(err.message, "ttl must be an integer between 1 and 300");
        }
    }
}
