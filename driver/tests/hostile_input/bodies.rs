//! Plugin requests that are no request at all: truncated or random bytes, invalid UTF-8, JSON
//! of another kind than an object, trailing garbage, duplicate keys, deep nesting, 10 MB; and
//! the calls without payload, unknown methods, and HTTP methods dockerd never uses.

use axum::http::StatusCode;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Map, Value};

use crate::at_call::{any_call, first_call_of_each_method, AtCall};
use crate::hostile::bad_text;
use crate::routers::fixtures::calls_with_payload;
use crate::routers::snapshot::Snapshot;
use crate::routers::{harness, send_raw};
use crate::{block_on, message, refusal};

const NOT_JSON: &str = "malformed request body: ";
const NOT_AN_OBJECT: &str = "request body must be a JSON object, found ";
/// Byte sequences that are no UTF-8: a stray byte, a bad continuation, a surrogate, a five-byte
/// form, a truncated sequence.
const NOT_UTF8: [&[u8]; 5] = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"];
const CALLS_WITHOUT_PAYLOAD: [&str; 4] = [
    "Plugin.Activate",
    "NetworkDriver.GetCapabilities",
    "IpamDriver.GetCapabilities",
    "IpamDriver.GetDefaultAddressSpaces",
];

proptest! {
    #![proptest_config(crate::config(48))]

    #[test]
    fn truncated_requests_are_refused(call in any_call(), cut in any::<Index>()) {
        block_on(async {
            let at = AtCall::new(call).await;
            let text = at.valid.to_string();
            // Every strict prefix of an object's text lacks at least its closing brace.
            let cut = cut.index(text.len());
            let message = at.refused(&text.as_bytes()[..cut]).await?;
            let expected = if cut == 0 { "empty request body" } else { NOT_JSON };
            prop_assert!(message.starts_with(expected), "{message}");
            Ok(())
        })?;
    }

    #[test]
    fn random_bytes_are_refused(call in any_call(), bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        prop_assume!(serde_json::from_slice::<Map<String, Value>>(&bytes).is_err());
        block_on(async {
            let at = AtCall::new(call).await;
            let message = at.refused(bytes).await?;
            prop_assert!(
                [NOT_JSON, NOT_AN_OBJECT, "empty request body"].iter().any(|m| message.starts_with(m)),
                "{message}"
            );
            Ok(())
        })?;
    }

    #[test]
    fn invalid_utf8_is_refused(
        call in any_call(),
        at_quote in any::<Index>(),
        bad in select(&NOT_UTF8[..]),
    ) {
        block_on(async {
            let at = AtCall::new(call).await;
            let text = at.valid.to_string().into_bytes();
            let quotes: Vec<usize> = text.iter().enumerate().filter(|(_, b)| **b == b'"').map(|(i, _)| i).collect();
            let place = quotes[at_quote.index(quotes.len())] + 1;
            let body = [&text[..place], bad, &text[place..]].concat();
            let message = at.refused(body).await?;
            prop_assert!(message.starts_with(NOT_JSON), "{message}");
            Ok(())
        })?;
    }

    #[test]
    fn json_that_is_no_object_is_refused(
        call in any_call(),
        shape in 0usize..8,
        text in bad_text(),
        n in any::<i64>(),
    ) {
        block_on(async {
            let at = AtCall::new(call).await;
            let values: Vec<Value> = at.valid.as_object().expect("object").values().cloned().collect();
            let (body, kind) = match shape {
                // The probe: `[]` was taken as an empty object.
                0 => (json!([]), "an array"),
                1 => (json!([at.valid.clone()]), "an array"),
                2 => (Value::Array(values), "an array"),
                3 => (Value::Null, "null"),
                4 => (json!(n), "a number"),
                5 => (json!(1.5e300), "a number"),
                6 => (json!(text), "a string"),
                _ => (json!(n % 2 == 0), "a boolean"),
            };
            let message = at.refused_json(&body).await?;
            prop_assert_eq!(message, format!("{NOT_AN_OBJECT}{kind}"));
            Ok(())
        })?;
    }

    #[test]
    fn trailing_garbage_and_repeated_fields_are_refused(
        call in any_call(),
        garbage in 0usize..5,
        text in bad_text(),
    ) {
        block_on(async {
            let at = AtCall::new(call).await;
            let valid = at.valid.to_string();
            let (key, value) = at.valid.as_object().expect("object").iter().next().expect("a field");
            let body = match garbage {
                0 => format!("{valid}{valid}"),
                1 => format!("{valid} {}", json!(text)),
                2 => format!("{valid},"),
                3 => format!("{valid}\n\0"),
                // The same field twice (the second would win where a map is read).
                _ => format!("{},{}:{}}}", &valid[..valid.len() - 1], json!(key), value),
            };
            let message = at.refused(body).await?;
            prop_assert!(message.starts_with(NOT_JSON), "{message}");
            Ok(())
        })?;
    }

    #[test]
    fn calls_without_payload_ignore_what_they_are_sent(
        method in select(&CALLS_WITHOUT_PAYLOAD[..]),
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        block_on(async {
            let h = harness().await;
            let uri = format!("/{method}");
            let (_, expected) = send_raw(&h.plugin, "POST", &uri, Vec::new()).await;
            let before = Snapshot::of(&h).await;
            let (status, answer) = send_raw(&h.plugin, "POST", &uri, body).await;
            prop_assert_eq!(status, StatusCode::OK);
            prop_assert_eq!(answer, expected);
            let after = Snapshot::of(&h).await;
            prop_assert!(before == after, "{method} changed the state:\n{}", before.differences(&after));
            Ok(())
        })?;
    }

    #[test]
    fn unknown_methods_are_answered_404_naming_them(name in "[A-Za-z.]{0,30}|\\PC{0,40}", body in bad_text()) {
        prop_assume!(!is_a_method(&name));
        block_on(async {
            let h = harness().await;
            let before = Snapshot::of(&h).await;
            let uri = format!("/{}", cilium_rs::http_unix::percent_encode(&name));
            let (status, answer) = send_raw(&h.plugin, "POST", &uri, body).await;
            prop_assert_eq!(status, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&answer));
            let message = message(&answer, "Err", &uri)?;
            prop_assert!(message.starts_with("cilium-rs does not implement"), "{message}");
            let after = Snapshot::of(&h).await;
            prop_assert!(before == after, "{uri} changed the state:\n{}", before.differences(&after));
            Ok(())
        })?;
    }
}

/// The methods the plugin socket serves.
fn is_a_method(name: &str) -> bool {
    CALLS_WITHOUT_PAYLOAD.contains(&name)
        || crate::routers::fixtures::scenarios().iter().flat_map(|s| &s.calls).any(|c| c.method == name)
}

#[test]
fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
    block_on(async {
        let deep = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        for (i, method) in methods_with_payload() {
            let at = AtCall::new(i).await;
            let message = at.refused(deep(500_000)).await.unwrap_or_else(|e| panic!("{method}: {e}"));
            assert!(message.starts_with(NOT_JSON), "{method}: {message}");
            // In a field the request reads as any JSON (an option, or for the calls without
            // options an unknown field, skipped): refused or ignored, never a crash.
            let mut request = at.valid.clone();
            request["Options"] = json!({"x": "DEEP"});
            let body = request.to_string().replace("\"DEEP\"", &deep(500_000));
            let (status, answer) = send_raw(&at.h.plugin, "POST", &at.uri(), body).await;
            assert!(status == StatusCode::OK || status == StatusCode::BAD_REQUEST, "{method}: {status}");
            message_or_ok(status, &answer, method);
        }
    });
}

/// A 200's body is a JSON object; any other status carries a clear message.
fn message_or_ok(status: StatusCode, answer: &axum::body::Bytes, what: &str) {
    if status == StatusCode::OK {
        let value: Value = serde_json::from_slice(answer).expect("a JSON answer");
        assert!(value.is_object(), "{what}: {value}");
    } else {
        message(answer, "Err", what).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn ten_megabyte_requests_are_refused() {
    block_on(async {
        for (i, method) in methods_with_payload() {
            let mut huge = AtCall::new(i).await.valid;
            let key = huge.as_object().expect("object").keys().next().expect("a field").clone();
            huge[&key] = json!("a".repeat(10 << 20));
            for body in [format!("{huge}\n").into_bytes(), vec![b' '; 10 << 20], vec![0xff; 10 << 20]] {
                let at = AtCall::new(i).await;
                let before = Snapshot::of(&at.h).await;
                let (status, answer) = send_raw(&at.h.plugin, "POST", &at.uri(), body).await;
                assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{method}: {}", String::from_utf8_lossy(&answer));
                let message = refusal(status, &answer, "Err", method).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(message, "request body over 1048576 bytes");
                let after = Snapshot::of(&at.h).await;
                assert!(before == after, "{method} changed the state:\n{}", before.differences(&after));
                at.still_answers().await.unwrap_or_else(|e| panic!("{e}"));
            }
        }
    });
}

#[test]
fn http_methods_dockerd_never_uses_are_refused_with_a_json_error() {
    block_on(async {
        let h = harness().await;
        let mut methods: Vec<String> = CALLS_WITHOUT_PAYLOAD.iter().map(|m| m.to_string()).collect();
        methods.extend(methods_with_payload().into_iter().map(|(_, m)| m.to_owned()));
        for method in methods {
            for verb in ["GET", "PUT", "DELETE", "PATCH"] {
                let (status, answer) = send_raw(&h.plugin, verb, &format!("/{method}"), "{}").await;
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{verb} /{method}");
                let message = message(&answer, "Err", &method).unwrap_or_else(|e| panic!("{verb} /{method}: {e}"));
                assert!(message.contains(verb) && message.contains("POST"), "{message}");
            }
        }
    });
}

/// One recorded call of each method with a payload (the earliest in its scenario), and the
/// method.
fn methods_with_payload() -> Vec<(usize, &'static str)> {
    let (places, scenarios) = (calls_with_payload(), crate::routers::fixtures::scenarios());
    first_call_of_each_method()
        .into_iter()
        .map(|i| (i, scenarios[places[i].0].calls[places[i].1].method.as_str()))
        .collect()
}
