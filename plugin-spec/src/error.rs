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
            DecodeError::Json(e) => write!(f, "malformed request body: {e}"),
        }
    }
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
    fn trailing_garbage_is_rejected() {
        let err = decode::<ReleasePoolRequest>(b"{\"PoolID\":\"p1\"} x").expect_err("garbage must fail");
        assert!(err.to_string().contains("trailing characters"), "{err}");
    }
}
