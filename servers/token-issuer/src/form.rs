//! A strict `application/x-www-form-urlencoded` parser for OAuth request bodies.
//!
//! Stricter than the WHATWG algorithm browsers use (which passes a malformed `%` escape through as text): a `%` not
//! followed by two hex digits, a name or value that is not UTF-8 after decoding, a repeated parameter (RFC 6749
//! §3.2, except `resource`, which RFC 8707 §2 allows several times) and more than [`MAX_FORM_PARAMS`] parameters are
//! all refused, and the caller answers `invalid_request`. Values without escapes are borrowed from the body, not
//! copied. A parameter with an empty value counts as absent (RFC 6749 §3.1).

use std::borrow::Cow;

/// Most parameters in one form body (no OAuth request needs more than a dozen).
pub const MAX_FORM_PARAMS: usize = 32;

/// Most `resource` parameters in one request (RFC 8707 allows several; each becomes an `aud` value).
pub const MAX_RESOURCE_PARAMS: usize = 4;

/// The parameter RFC 8707 allows more than once.
const REPEATABLE: &str = "resource";

/// Why a form body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// A `%` not followed by two hexadecimal digits.
    #[error("malformed percent-encoding at byte {at} of the body")]
    BadPercent {
        /// Offset of the `%` in the body.
        at: usize,
    },
    /// A name or value is not UTF-8 once decoded.
    #[error("parameter at byte {at} of the body is not UTF-8 once decoded")]
    NotUtf8 {
        /// Offset of the name or value in the body.
        at: usize,
    },
    /// A parameter appears more than once (RFC 6749 §3.2).
    #[error("parameter {0:?} is repeated")]
    Repeated(String),
    /// More than [`MAX_FORM_PARAMS`] parameters, or more than [`MAX_RESOURCE_PARAMS`] `resource` parameters.
    #[error(
        "too many parameters (at most {MAX_FORM_PARAMS}, of which {MAX_RESOURCE_PARAMS} `resource`)"
    )]
    TooMany,
}

/// A parsed form body.
#[derive(Debug, Default)]
pub struct Form<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Form<'a> {
    /// Parses `body` (see the module docs for what is refused).
    pub fn parse(body: &'a [u8]) -> Result<Form<'a>, FormError> {
        let mut pairs: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::with_capacity(8);
        let mut resources = 0usize;
        let mut offset = 0usize;
        for segment in body.split(|&b| b == b'&') {
            let start = offset;
            offset += segment.len() + 1;
            if segment.is_empty() {
                continue; // "a=1&&b=2": an empty segment carries nothing (as in the WHATWG algorithm)
            }
            let (name, value, value_at) = match segment.iter().position(|&b| b == b'=') {
                Some(i) => (&segment[..i], &segment[i + 1..], start + i + 1),
                None => (segment, &segment[segment.len()..], start + segment.len()),
            };
            let name = decode(name, start)?;
            let value = decode(value, value_at)?;
            if pairs.len() == MAX_FORM_PARAMS {
                return Err(FormError::TooMany);
            }
            if name == REPEATABLE {
                resources += 1;
                if resources > MAX_RESOURCE_PARAMS {
                    return Err(FormError::TooMany);
                }
            } else if pairs.iter().any(|(n, _)| *n == name) {
                return Err(FormError::Repeated(name.into_owned()));
            }
            pairs.push((name, value));
        }
        Ok(Form { pairs })
    }

    /// The value of `name`; `None` when absent or empty (RFC 6749 §3.1: "parameters sent without a value MUST be
    /// treated as if they were omitted").
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
            .filter(|v| !v.is_empty())
    }

    /// Every non-empty value of `name` (only `resource` can have more than one).
    pub fn get_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.pairs
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
            .filter(|v| !v.is_empty())
    }

    /// Whether `name` is present with a value.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one name or value: `+` is a space, `%XX` a byte; borrowed when there is nothing to decode.
fn decode(raw: &[u8], at: usize) -> Result<Cow<'_, str>, FormError> {
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| FormError::NotUtf8 { at });
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = raw.get(i + 1).copied().and_then(hex);
                let lo = raw.get(i + 2).copied().and_then(hex);
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(FormError::BadPercent { at: at + i }),
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| FormError::NotUtf8 { at })
}

/// Decodes a form-urlencoded component outside a body (the client id and secret inside HTTP Basic, RFC 6749
/// §2.3.1).
pub fn decode_component(raw: &str) -> Result<Cow<'_, str>, FormError> {
    decode(raw.as_bytes(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_decodes() {
        let f =
            Form::parse(b"grant_type=client_credentials&scope=read+write&x=%41%c3%a9&empty=&&flag")
                .unwrap();
        assert_eq!(f.get("grant_type"), Some("client_credentials"));
        assert!(matches!(f.pairs[0].1, Cow::Borrowed(_)));
        assert_eq!(f.get("scope"), Some("read write"));
        assert_eq!(f.get("x"), Some("Aé"));
        assert_eq!(f.get("empty"), None);
        assert_eq!(f.get("flag"), None);
        assert_eq!(f.get("missing"), None);
        assert!(Form::parse(b"").unwrap().pairs.is_empty());
    }

    #[test]
    fn refuses_malformed_escapes_and_non_utf8() {
        assert_eq!(
            Form::parse(b"a=1&scope=%zz").unwrap_err(),
            FormError::BadPercent { at: 10 }
        );
        assert!(matches!(
            Form::parse(b"a=%4"),
            Err(FormError::BadPercent { .. })
        ));
        assert!(matches!(
            Form::parse(b"a=%"),
            Err(FormError::BadPercent { .. })
        ));
        assert!(matches!(
            Form::parse(b"%g1=x"),
            Err(FormError::BadPercent { .. })
        ));
        assert!(matches!(
            Form::parse(b"a=%ff"),
            Err(FormError::NotUtf8 { .. })
        ));
        assert!(matches!(
            Form::parse(b"a=\xff"),
            Err(FormError::NotUtf8 { .. })
        ));
    }

    #[test]
    fn refuses_repeats_but_allows_several_resources() {
        assert_eq!(
            Form::parse(b"scope=a&scope=b").unwrap_err(),
            FormError::Repeated("scope".into())
        );
        // A repeat counts even when one of them is empty, and when spelled with an escape.
        assert!(Form::parse(b"scope=&scope=b").is_err());
        assert!(Form::parse(b"scope=a&sc%6fpe=b").is_err());
        let f = Form::parse(b"resource=https%3A%2F%2Fa&resource=https://b").unwrap();
        assert_eq!(
            f.get_all("resource").collect::<Vec<_>>(),
            ["https://a", "https://b"]
        );
        assert_eq!(
            Form::parse(b"resource=a&resource=b&resource=c&resource=d&resource=e").unwrap_err(),
            FormError::TooMany
        );
    }

    #[test]
    fn bounds_the_parameter_count() {
        let body: Vec<String> = (0..=MAX_FORM_PARAMS).map(|i| format!("p{i}=1")).collect();
        assert_eq!(
            Form::parse(body.join("&").as_bytes()).unwrap_err(),
            FormError::TooMany
        );
        let body: Vec<String> = (0..MAX_FORM_PARAMS).map(|i| format!("p{i}=1")).collect();
        assert!(Form::parse(body.join("&").as_bytes()).is_ok());
    }

    #[test]
    fn component_decoding_for_basic_auth() {
        assert_eq!(decode_component("my%3Aclient").unwrap(), "my:client");
        assert_eq!(decode_component("a+b").unwrap(), "a b");
        assert!(decode_component("%").is_err());
    }
}
