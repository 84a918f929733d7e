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
    /// The body is not valid JSON for the expected type; the message names the expected type
    /// and the line/column.
    Json(serde_json::Error),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::EmptyBody => f.write_str("empty request body"),
            DecodeError::Json(e) => write!(f, "malformed request body: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::EmptyBody => None,
            DecodeError::Json(e) => Some(e),
        }
    }
}

/// Decodes a request body as dockerd sends it (compact JSON plus a trailing newline).
/// An empty or whitespace-only body is [`DecodeError::EmptyBody`].
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::EmptyBody);
    }
    serde_json::from_slice(body).map_err(DecodeError::Json)
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
