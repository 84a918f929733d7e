//! Property tests of every plugin and API route with hostile and broken input, driven from the
//! requests a real dockerd 20.10 recorded: every bad request gets a 4xx with a clear message,
//! the daemon keeps answering and nothing changes (every record, the whole fake kernel); random
//! sequences of valid calls keep addresses, pools and the datapath consistent.

#[path = "../routers/mod.rs"]
mod routers;

mod api_routes;
mod at_call;
mod bodies;
mod fields;
mod hostile;
mod places;
mod sequences;

use std::future::Future;

use axum::body::Bytes;
use axum::http::StatusCode;
use proptest::test_runner::TestCaseError;
use serde_json::Value;

/// Longest error message accepted: long enough for two quoted inputs, short enough that a
/// hostile input is never echoed whole.
const MAX_MESSAGE: usize = 512;

/// `cases` cases per property (`PROPTEST_CASES` overrides it, for a longer run); a failing case
/// is printed (shrunk), not written to a file.
fn config(cases: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(cases);
    proptest::test_runner::Config { cases, failure_persistence: None, ..Default::default() }
}

/// Runs one case on a fresh runtime (proptest calls plain closures).
fn block_on<F: Future>(case: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(case)
}

/// A refusal as a client must get it: a 4xx other than 404 (dockerd reads 404 as "method
/// missing"), a JSON object whose `field` is a clear message. Returns the message.
fn refusal(status: StatusCode, body: &Bytes, field: &str, what: &str) -> Result<String, TestCaseError> {
    let text = String::from_utf8_lossy(body);
    proptest::prop_assert!(
        status.is_client_error() && status != StatusCode::NOT_FOUND,
        "{what}: answered {status} {text}"
    );
    message(body, field, what)
}

/// The clear, bounded message in `field` of a JSON error body.
fn message(body: &Bytes, field: &str, what: &str) -> Result<String, TestCaseError> {
    let text = String::from_utf8_lossy(body);
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| TestCaseError::fail(format!("{what}: error body is not JSON ({e}): {text}")))?;
    let Some(message) = value.get(field).and_then(Value::as_str) else {
        return Err(TestCaseError::fail(format!("{what}: no {field:?} string in {text}")));
    };
    proptest::prop_assert!(!message.trim().is_empty(), "{what}: empty message in {text}");
    proptest::prop_assert!(
        message.len() <= MAX_MESSAGE,
        "{what}: the message echoes too much ({} bytes): {}…",
        message.len(),
        message.chars().take(200).collect::<String>()
    );
    proptest::prop_assert!(
        !message.chars().any(char::is_control),
        "{what}: raw control characters in the message (hostile input is quoted): {message:?}"
    );
    Ok(message.to_owned())
}
