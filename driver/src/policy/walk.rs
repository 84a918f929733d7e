//! Walking untrusted JSON values by hand: typed access whose errors name the exact field path.
//!
//! Paths are built from fixed field names and indices only; user-supplied keys and values reach
//! a message only through [`quoted`], bounded and escaped.

use serde_json::{Map, Value};

use crate::input::quoted;

/// Longest string accepted anywhere in a policy file (keys, values, names, descriptions).
pub const MAX_STRING: usize = 4096;

/// A field that failed validation: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub path: String,
    pub reason: String,
}

pub(crate) type Walk<T> = Result<T, FieldError>;

pub(crate) fn fail<T>(path: &str, reason: impl Into<String>) -> Walk<T> {
    Err(FieldError { path: path.to_owned(), reason: reason.into() })
}

/// `path.key`.
pub(crate) fn child(path: &str, key: &str) -> String {
    format!("{path}.{key}")
}

/// `path[i]`.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

pub(crate) use crate::input::kind;

fn expected<T>(path: &str, what: &str, value: &Value) -> Walk<T> {
    fail(path, format!("expected {what}, found {}", kind(value)))
}

pub(crate) fn object<'a>(value: &'a Value, path: &str) -> Walk<&'a Map<String, Value>> {
    match value {
        Value::Object(map) => Ok(map),
        other => expected(path, "an object", other),
    }
}

pub(crate) fn array<'a>(value: &'a Value, path: &str) -> Walk<&'a [Value]> {
    match value {
        Value::Array(items) => Ok(items),
        other => expected(path, "an array", other),
    }
}

/// A string of at most [`MAX_STRING`] bytes.
pub(crate) fn string<'a>(value: &'a Value, path: &str) -> Walk<&'a str> {
    match value {
        Value::String(text) => bounded(text, path),
        other => expected(path, "a string", other),
    }
}

/// Checks the length of a string taken from the input (values and keys alike).
pub(crate) fn bounded<'a>(text: &'a str, path: &str) -> Walk<&'a str> {
    if text.len() > MAX_STRING {
        return fail(path, format!("{} is longer than {MAX_STRING} bytes", quoted(text)));
    }
    Ok(text)
}

pub(crate) fn boolean(value: &Value, path: &str) -> Walk<bool> {
    match value {
        Value::Bool(b) => Ok(*b),
        other => expected(path, "true or false", other),
    }
}

/// A field's value; `null` counts as absent (as Go's JSON decoding and YAML's `key:` do).
pub(crate) fn field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

/// A list field: absent, `null` and `[]` all give an empty slice.
pub(crate) fn list<'a>(map: &'a Map<String, Value>, key: &str, path: &str) -> Walk<&'a [Value]> {
    match field(map, key) {
        Some(value) => array(value, &child(path, key)),
        None => Ok(&[]),
    }
}

/// What to say about a field the object does not allow.
pub(crate) enum Refusal {
    /// A Cilium field cilium-rs does not implement: the reason.
    Unsupported(&'static str),
    /// A field of the other direction or another place: the hint.
    Misplaced(String),
}

/// Refuses every field of `map` not in `allowed`; `refusal` explains known fields.
pub(crate) fn check_fields(
    map: &Map<String, Value>,
    path: &str,
    allowed: &[&str],
    refusal: impl Fn(&str) -> Option<Refusal>,
) -> Walk<()> {
    for key in map.keys() {
        if allowed.contains(&key.as_str()) {
            continue;
        }
        return match refusal(key) {
            // Known names only: safe to put in the path unquoted.
            Some(Refusal::Unsupported(why)) => fail(&child(path, key), format!("{key} is not supported: {why}")),
            Some(Refusal::Misplaced(hint)) => fail(&child(path, key), hint),
            None => fail(path, format!("unknown field {}; expected one of {}", quoted(key), allowed.join(", "))),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_path_and_types() {
        let value = json!({"a": [1], "b": null, "c": "x"});
        let map = object(&value, "r").unwrap();
        assert!(field(map, "b").is_none());
        assert_eq!(list(map, "b", "r").unwrap().len(), 0);
        let err = string(&map["a"], "r.a").unwrap_err();
        assert_eq!(err, FieldError { path: "r.a".into(), reason: "expected a string, found an array".into() });
        let err = check_fields(map, "r", &["a", "b"], |_| None).unwrap_err();
        assert_eq!(err.path, "r");
        assert!(err.reason.starts_with("unknown field \"c\""), "{}", err.reason);
        let long = Value::String("x".repeat(MAX_STRING + 1));
        assert!(string(&long, "r").is_err());
    }
}
