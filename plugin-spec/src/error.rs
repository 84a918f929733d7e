//! Decoding a request body into a wire type, with the two ways it can fail kept apart.

use std::fmt;

use serde::de::DeserializeOwned;

/// Why a request body could not be decoded.
#[derive(Debug)]
pub enum DecodeError {
    /// The body was empty or only whitespace. dockerd never sends that for a method with a
    /// payload, except when it retried a request whose body a failed attempt had consumed, so
    /// it must not be read as "all fields default".
    EmptyBody,
    /// The body is JSON but not an object, which every request of the protocol is (serde
    /// would otherwise read an array positionally into the fields).
    NotAnObject(&'static str),
    /// The body is not valid JSON for the expected type; the message names the expected type
    /// and the line/column.
    Json(serde_json::Error),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::EmptyBody => f.write_str("empty request body"),
            DecodeError::NotAnObject(found) => write!(f, "request body must be a JSON object, found {found}"),
            DecodeError::Json(e) => write!(f, "malformed request body: {}", shorten_quoted(&e.to_string())),
        }
    }
}

/// Longest part of a quoted string of the input that an error message keeps.
const MAX_ECHO: usize = 64;

/// serde quotes an offending string whole (`invalid type: string "…", expected a boolean`):
/// keeps the first [`MAX_ECHO`] characters of each quoted string and says how many were left
/// out, so a hostile input is never echoed whole. The strings are already escaped (serde
/// quotes them with `{:?}`). For any serde message shown to a client.
pub fn shorten_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(4 * MAX_ECHO));
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' {
            continue;
        }
        let (mut kept, mut left_out, mut escaped) = (0, 0usize, false);
        for c in chars.by_ref() {
            if c == '"' && !escaped {
                if left_out > 0 {
                    out.push('…');
                }
                out.push('"');
                if left_out > 0 {
                    out.push_str(&format!(" ({left_out} more characters)"));
                }
                break;
            }
            // An escape begun before the cut is kept whole.
            if kept < MAX_ECHO || (escaped && left_out == 0) {
                out.push(c);
                kept += 1;
            } else {
                left_out += 1;
            }
            escaped = c == '\\' && !escaped;
        }
    }
    out
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::EmptyBody | DecodeError::NotAnObject(_) => None,
            DecodeError::Json(e) => Some(e),
        }
    }
}

/// Decodes a request body as dockerd sends it (compact JSON plus a trailing newline).
/// An empty or whitespace-only body is [`DecodeError::EmptyBody`]; JSON that is not an object
/// is [`DecodeError::NotAnObject`].
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    let Some(first) = body.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Err(DecodeError::EmptyBody);
    };
    if *first == b'{' {
        return serde_json::from_slice(body).map_err(DecodeError::Json);
    }
    // Valid JSON of another kind is named; anything else is serde's error, with its position.
    let found = match serde_json::from_slice::<serde_json::Value>(body).map_err(DecodeError::Json)? {
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::Object(_) => "an object",
    };
    Err(DecodeError::NotAnObject(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeleteNetworkRequest, ReleasePoolRequest};

    #[test]
    fn empty_and_blank_bodies_are_rejected() {
        for body in [&b""[..], b"\n", b"  \r\n"] {
            let err = decode::<DeleteNetworkRequest>(body).expect_err("empty body must fail");
            assert!(matches!(err, DecodeError::EmptyBody), "{body:?}: {err:?}");
            assert_eq!(err.to_string(), "empty request body");
        }
    }

    #[test]
    fn json_that_is_no_object_is_refused_by_what_it_is() {
        for (body, found) in [
            (&b"[]"[..], "an array"),
            (b" [\"p1\"]\n", "an array"),
            (b"null", "null"),
            (b"42", "a number"),
            (b"-1", "a number"),
            (b"\"PoolID\"", "a string"),
            (b"true", "a boolean"),
        ] {
            let err = decode::<ReleasePoolRequest>(body).expect_err("not an object");
            assert!(matches!(err, DecodeError::NotAnObject(f) if f == found), "{body:?}: {err:?}");
            assert_eq!(err.to_string(), format!("request body must be a JSON object, found {found}"));
        }
        assert!(matches!(decode::<ReleasePoolRequest>(b"nope"), Err(DecodeError::Json(_))));
    }

    #[test]
    fn trailing_newline_is_accepted() {
        let r: ReleasePoolRequest = decode(b"{\"PoolID\":\"p1\"}\n").expect("decode");
        assert_eq!(r.pool_id, "p1");
    }

    #[test]
    fn malformed_json_is_a_json_error_with_position() {
        let err = decode::<ReleasePoolRequest>(b"{\"PoolID\":").expect_err("truncated body must fail");
        assert!(matches!(err, DecodeError::Json(_)));
        let text = err.to_string();
        assert!(text.starts_with("malformed request body: "), "{text}");
        assert!(text.contains("line 1 column"), "{text}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn long_strings_of_the_input_are_not_echoed_whole() {
        let body = format!("{{\"PoolID\":[\"{}\\\"\\n\"]}}", "a".repeat(10_000));
        let err = decode::<ReleasePoolRequest>(body.as_bytes()).expect_err("an array for a string").to_string();
        assert!(err.len() < 200, "{err}");
        let body = format!("{{\"PoolID\":7,\"x\":\"{}\"}}", "b".repeat(10_000));
        let err = decode::<ReleasePoolRequest>(body.as_bytes()).expect_err("a number for a string").to_string();
        assert!(err.contains("invalid type: integer `7`, expected a string"), "{err}");
        let err = decode::<crate::RequestPoolRequest>(format!("{{\"V6\":\"{}\"}}", "c\\\"".repeat(5_000)).as_bytes())
            .expect_err("a string for a boolean")
            .to_string();
        assert!(err.starts_with("malformed request body: invalid type: string \"c\\\"c") && err.len() < 250, "{err}");
        assert!(err.contains("more characters), expected a boolean at line 1 column"), "{err}");
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        let err = decode::<ReleasePoolRequest>(b"{\"PoolID\":\"p1\"} x").expect_err("garbage must fail");
        assert!(err.to_string().contains("trailing characters"), "{err}");
    }
}
