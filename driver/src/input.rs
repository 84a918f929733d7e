//! Untrusted input in error messages: quoted (bounded, escaped, never the whole of a hostile
//! string) and named by kind.

/// Longest excerpt of an input echoed back in an error message.
const MAX_ECHO: usize = 64;

/// `text` as a quoted, escaped excerpt: `"fd5c::/129"`, or `"aaaa…" (10000 bytes)` when long.
pub fn quoted(text: &str) -> String {
    if text.chars().count() <= MAX_ECHO {
        return format!("{text:?}");
    }
    let head: String = text.chars().take(MAX_ECHO).collect();
    format!("{:?} ({} bytes)", format!("{head}…"), text.len())
}

/// What a JSON value is, for "expected X, found Y" messages.
pub fn kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_inputs_are_quoted_long_ones_cut() {
        assert_eq!(quoted("10.0.0.0/8"), "\"10.0.0.0/8\"");
        assert_eq!(quoted("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(10_000);
        let shown = quoted(&long);
        assert!(shown.len() < 100 && shown.ends_with("(10000 bytes)"), "{shown}");
    }
}
