//! A harness that went through every recorded call before one, and that call as this daemon
//! must get it: the base every hostile variant of a request is made from.

use axum::http::StatusCode;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;

use crate::refusal;
use crate::routers::fixtures::{calls_with_payload, replay, scenarios, Call};
use crate::routers::snapshot::Snapshot;
use crate::routers::{harness, send_raw, Harness};

pub struct AtCall {
    pub h: Harness,
    pub call: &'static Call,
    /// The request as it succeeds here.
    pub valid: Value,
}

impl AtCall {
    /// At call `index` of [`calls_with_payload`].
    pub async fn new(index: usize) -> AtCall {
        let (s, c) = calls_with_payload()[index];
        let scenario = &scenarios()[s];
        let h = harness().await;
        let replay = replay(&h, scenario, c).await;
        let call = &scenario.calls[c];
        let valid = replay.translate(call).expect("a call with payload");
        AtCall { h, call, valid }
    }

    pub fn uri(&self) -> String {
        format!("/{}", self.call.method)
    }

    /// Sends `body` as this call: it must be refused with a clear message and change nothing,
    /// and the valid request must still succeed afterwards. Returns the message.
    pub async fn refused(&self, body: impl Into<Vec<u8>>) -> Result<String, TestCaseError> {
        let body = body.into();
        let before = Snapshot::of(&self.h).await;
        let (status, answer) = send_raw(&self.h.plugin, "POST", &self.uri(), body.clone()).await;
        let what = format!("{} sent as {}", self.call.name, excerpt(&body));
        let message = refusal(status, &answer, "Err", &what)?;
        let after = Snapshot::of(&self.h).await;
        prop_assert!(before == after, "{what} changed the state:\n{}", before.differences(&after));
        self.still_answers().await?;
        Ok(message)
    }

    /// The same for a JSON request.
    pub async fn refused_json(&self, request: &Value) -> Result<String, TestCaseError> {
        self.refused(format!("{request}\n")).await
    }

    /// The valid request still succeeds.
    pub async fn still_answers(&self) -> Result<(), TestCaseError> {
        let (status, answer) = send_raw(&self.h.plugin, "POST", &self.uri(), format!("{}\n", self.valid)).await;
        prop_assert_eq!(
            status,
            StatusCode::OK,
            "{} no longer succeeds: {}",
            self.call.name,
            String::from_utf8_lossy(&answer)
        );
        Ok(())
    }
}

/// The start of a body, readable.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.chars().count() <= 300 {
        return format!("{text:?}");
    }
    format!("{:?}… ({} bytes)", text.chars().take(300).collect::<String>(), body.len())
}

/// The places in [`calls_with_payload`] of the calls of `methods`.
pub fn calls_of(methods: &[&str]) -> Vec<usize> {
    calls_with_payload()
        .iter()
        .enumerate()
        .filter(|(_, (s, c))| methods.contains(&scenarios()[*s].calls[*c].method.as_str()))
        .map(|(i, _)| i)
        .collect()
}

/// A recorded call with a payload: first a method (each as likely), then one of its calls.
pub fn any_call() -> impl Strategy<Value = usize> {
    let mut methods: Vec<&'static str> =
        calls_with_payload().iter().map(|(s, c)| scenarios()[*s].calls[*c].method.as_str()).collect();
    methods.sort();
    methods.dedup();
    proptest::sample::select(methods).prop_flat_map(|method| call_of(&[method]))
}

/// A recorded call of one of `methods`.
pub fn call_of(methods: &[&str]) -> impl Strategy<Value = usize> {
    let places = calls_of(methods);
    assert!(!places.is_empty(), "no recorded call of {methods:?}");
    proptest::sample::select(places)
}

/// For each method, its recorded call that comes earliest in its scenario.
pub fn first_call_of_each_method() -> Vec<usize> {
    let mut first: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for (i, (s, c)) in calls_with_payload().iter().enumerate() {
        let method = scenarios()[*s].calls[*c].method.as_str();
        let earlier = first.get(method).is_some_and(|j| calls_with_payload()[*j].1 <= *c);
        if !earlier {
            first.insert(method, i);
        }
    }
    first.into_values().collect()
}
