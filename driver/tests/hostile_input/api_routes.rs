//! The API socket's routes with hostile and broken input, on a daemon that holds a running
//! container (replayed from dockerd's recording), its identity and a policy: broken policy files,
//! request bodies of the wrong shape, hostile labels, endpoint names and monitor filters, paths
//! that do not exist, HTTP methods a route does not take, 10 MB bodies.

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

use cilium_rs::endpoint::ContainerRef;
use cilium_rs::http_unix::percent_encode;
use cilium_rs::ids::{EndpointId, NetworkId};
use cilium_rs::server::api;
use cilium_rs::server::monitor::{FLOWS, MONITOR};

use crate::at_call::excerpt;
use crate::hostile::{any_json, bad_id, bad_text, other_kind, Kind};
use crate::places::{at, key, Place, Step};
use crate::routers::fixtures::{replay, scenarios};
use crate::routers::snapshot::Snapshot;
use crate::routers::{harness, send_raw, Harness};
use crate::{block_on, message};

/// The policy the daemon holds while it is being attacked.
const POLICY: &str = r#"[{"labels": [{"key": "name", "value": "web-from-client"}],
  "endpointSelector": {"matchLabels": {"app": "web"}},
  "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
               "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]"#;

/// Every GET route, which must still answer after each hostile request.
const GETS: [&str; 11] = [
    api::ENDPOINTS,
    api::NETWORKS,
    api::STATUS,
    api::IDENTITIES,
    api::POLICY,
    api::BPF_ENDPOINTS,
    api::BPF_IPCACHE,
    api::BPF_POLICY,
    api::BPF_CT,
    api::BPF_NAT,
    FLOWS,
];

/// The routes that take a JSON body (besides the policy file of import and validate).
const JSON_ROUTES: [(&str, &str); 3] =
    [("POST", api::POLICY_DELETE), ("POST", api::POLICY_WAIT), ("POST", api::POLICY_TRACE)];

/// A daemon with one container started as dockerd starts it (container-defaults, up to Join),
/// labelled `app=web`, and [`POLICY`] imported.
async fn attacked() -> Harness {
    let scenario = scenarios().iter().find(|s| s.name == "container-defaults").expect("scenario");
    let join = scenario.calls.iter().position(|c| c.method == "NetworkDriver.Join").expect("a Join");
    let h = harness().await;
    replay(&h, scenario, join + 1).await;
    let join = scenario.calls[join].request().expect("payload");
    let id = |field: &str| join[field].as_str().expect("id").to_owned();
    let container = ContainerRef { id: "c".repeat(64), name: "web".to_owned() };
    let labels = [("app".to_owned(), "web".to_owned())].into();
    let (network, endpoint) = (NetworkId::parse(&id("NetworkID")), EndpointId::parse(&id("EndpointID")));
    h.driver
        .assign_identity(&network.expect("id"), &endpoint.expect("id"), container, &labels, "net1")
        .await
        .expect("the container gets its identity");
    h.import(POLICY).await;
    h
}

/// Sends a request that must be refused (4xx, `error` a clear message) and change nothing, after
/// which every GET route still answers. `allowed` are the refusals this route may give.
async fn refused(
    h: &Harness,
    method: &str,
    uri: &str,
    body: impl Into<Body>,
    allowed: &[StatusCode],
) -> Result<String, TestCaseError> {
    let before = Snapshot::of(h).await;
    let (status, answer) = send_raw(&h.api, method, uri, body).await;
    let what = format!("{method} {uri}");
    prop_assert!(allowed.contains(&status), "{what}: answered {status} {}", excerpt(&answer));
    let message = message(&answer, "error", &what)?;
    let after = Snapshot::of(h).await;
    prop_assert!(before == after, "{what} changed the state:\n{}", before.differences(&after));
    still_answers(h).await?;
    Ok(message)
}

async fn still_answers(h: &Harness) -> Result<(), TestCaseError> {
    for uri in GETS {
        let (status, answer) = send_raw(&h.api, "GET", uri, Body::empty()).await;
        prop_assert_eq!(status, StatusCode::OK, "GET {} no longer answers: {}", uri, excerpt(&answer));
        prop_assert!(serde_json::from_slice::<Value>(&answer).is_ok(), "GET {uri}: {}", excerpt(&answer));
    }
    Ok(())
}

const BAD_REQUEST: [StatusCode; 1] = [StatusCode::BAD_REQUEST];
/// A label set that no rule carries is "not found" to `policy delete`.
const BAD_OR_NO_MATCH: [StatusCode; 2] = [StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND];

/// Every route, for the HTTP methods it does not take.
const ROUTES: [&str; 13] = [
    api::ENDPOINTS,
    api::NETWORKS,
    api::STATUS,
    api::IDENTITIES,
    api::POLICY,
    api::POLICY_DELETE,
    api::POLICY_VALIDATE,
    api::POLICY_WAIT,
    api::POLICY_TRACE,
    api::BPF_CT,
    api::BPF_CT_FLUSH,
    MONITOR,
    FLOWS,
];

/// A valid body of a JSON route, and its fields with their kinds.
fn valid_body(uri: &str) -> (Value, &'static [(&'static str, Kind)]) {
    match uri {
        api::POLICY_DELETE => {
            (json!({"all": false, "labels": ["name=web-from-client"]}), &[("all", Kind::Bool), ("labels", Kind::Array)])
        }
        api::POLICY_WAIT => {
            (json!({"revision": 1, "timeout_ms": 10}), &[("revision", Kind::Number), ("timeout_ms", Kind::Number)])
        }
        _ => (
            json!({"src": "app=client", "dst": "app=web", "dport": "80/tcp"}),
            &[("src", Kind::String), ("dst", Kind::String), ("dport", Kind::String)],
        ),
    }
}

/// Places of [`POLICY`]'s rule whose kind the policy language fixes, with the kinds each takes.
fn rule_places() -> Vec<(Place, Vec<Kind>)> {
    let rule = |rest: &[Step]| [vec![Step::Index(0)], rest.to_vec()].concat();
    let ingress = || vec![key("ingress"), Step::Index(0)];
    let ports = || [ingress(), vec![key("toPorts"), Step::Index(0), key("ports")]].concat();
    vec![
        (vec![], vec![Kind::Array, Kind::Object]),
        (rule(&[]), vec![Kind::Object]),
        (rule(&[key("endpointSelector")]), vec![Kind::Object]),
        (rule(&[key("endpointSelector"), key("matchLabels")]), vec![Kind::Object]),
        (rule(&[key("endpointSelector"), key("matchLabels"), key("app")]), vec![Kind::String]),
        (rule(&[key("ingress")]), vec![Kind::Array]),
        (rule(&ingress()), vec![Kind::Object]),
        (rule(&[ingress(), vec![key("fromEndpoints")]].concat()), vec![Kind::Array]),
        (rule(&[ingress(), vec![key("fromEndpoints"), Step::Index(0)]].concat()), vec![Kind::Object]),
        (rule(&[ingress(), vec![key("toPorts")]].concat()), vec![Kind::Array]),
        (rule(&ports()), vec![Kind::Array]),
        (rule(&[ports(), vec![Step::Index(0)]].concat()), vec![Kind::Object]),
        (rule(&[ports(), vec![Step::Index(0), key("port")]].concat()), vec![Kind::String, Kind::Number]),
        (rule(&[ports(), vec![Step::Index(0), key("protocol")]].concat()), vec![Kind::String]),
        (rule(&[key("labels")]), vec![Kind::Array]),
        // A label is an object or its text form (`source:key=value`), as in Cilium.
        (rule(&[key("labels"), Step::Index(0)]), vec![Kind::Object, Kind::String]),
        (rule(&[key("labels"), Step::Index(0), key("key")]), vec![Kind::String]),
    ]
}

fn policy() -> Value {
    serde_json::from_str(POLICY).expect("policy")
}

proptest! {
    #![proptest_config(crate::config(32))]

    #[test]
    fn broken_policy_files_are_refused(
        shape in 0usize..6,
        bytes in proptest::collection::vec(any::<u8>(), 1..300),
        cut in any::<Index>(),
        which in any::<Index>(),
        other in other_kind(),
    ) {
        block_on(async {
            let h = attacked().await;
            let text = policy().to_string();
            let body: Vec<u8> = match shape {
                0 => [&text.as_bytes()[..10], b"\xff", &text.as_bytes()[10..]].concat(),
                1 => text.as_bytes()[..1 + cut.index(text.len() - 1)].to_vec(),
                // (`null`, `[]` and an empty file are valid: no rules.)
                2 => [json!(true), json!(42), json!("rules")][cut.index(3)].to_string().into_bytes(),
                3 => json!(["x", 7]).to_string().into_bytes(),
                4 => {
                    let places = rule_places();
                    let (place, accepted) = &places[which.index(places.len())];
                    let mut broken = policy();
                    *at(&mut broken, place) = other.value(accepted, at(&mut policy(), place));
                    broken.to_string().into_bytes()
                }
                _ => bytes,
            };
            // Random bytes can be a (useless) YAML document; everything else is no policy.
            let before = Snapshot::of(&h).await;
            let (status, answer) = send_raw(&h.api, "POST", api::POLICY_VALIDATE, body.clone()).await;
            if shape == 5 && status == StatusCode::OK {
                return Ok(());
            }
            prop_assert_eq!(status, StatusCode::BAD_REQUEST, "validate {}: {}", excerpt(&body), excerpt(&answer));
            message(&answer, "error", "validate")?;
            prop_assert!(before == Snapshot::of(&h).await, "validate changed the state");
            refused(&h, "PUT", api::POLICY, body, &BAD_REQUEST).await?;
            Ok(())
        })?;
    }

    #[test]
    fn request_bodies_of_the_wrong_shape_are_refused(
        route in select(&JSON_ROUTES[..]),
        shape in 0usize..5,
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        value in any_json(),
        field in any::<Index>(),
        other in other_kind(),
    ) {
        block_on(async {
            let h = attacked().await;
            let (method, uri) = route;
            let (valid, fields) = valid_body(uri);
            let body = match shape {
                0 => bytes.clone(),
                1 => {
                    let text = valid.to_string();
                    text.as_bytes()[..text.len() - 1].to_vec()
                }
                2 if !value.is_object() => value.to_string().into_bytes(),
                3 => {
                    let mut broken = valid.clone();
                    let (name, kind) = fields[field.index(fields.len())];
                    broken[name] = other.value(&[kind], &broken[name].clone());
                    broken.to_string().into_bytes()
                }
                _ => {
                    // A label that is no string; for wait and trace, a required field as null.
                    let mut broken = valid.clone();
                    if uri == api::POLICY_DELETE {
                        broken["labels"] = json!([value]);
                    } else {
                        broken[fields[0].0] = json!(null);
                    }
                    broken.to_string().into_bytes()
                }
            };
            if uri == api::POLICY_DELETE && shape == 4 && value.is_string() {
                return Ok::<(), TestCaseError>(());
            }
            refused(&h, method, uri, body, &BAD_REQUEST).await?;
            Ok(())
        })?;
    }

    #[test]
    fn hostile_labels_and_ports_change_nothing(
        labels in proptest::collection::vec(bad_text(), 1..4),
        dport in bad_text(),
        flip in any::<bool>(),
    ) {
        block_on(async {
            let h = attacked().await;
            refused(&h, "POST", api::POLICY_DELETE, json!({"labels": labels}).to_string(), &BAD_OR_NO_MATCH).await?;
            let trace = json!({"src": "app=client", "dst": "app=web", "dport": dport});
            let refusal = refused(&h, "POST", api::POLICY_TRACE, trace.to_string(), &BAD_REQUEST).await?;
            prop_assert!(refusal.starts_with("--dport: "), "{refusal}");
            // A trace between hostile label sets is a question like any other: answered or
            // refused, never a change.
            let (src, dst) = match flip {
                true => (labels.join(","), "app=web".to_owned()),
                false => ("app=client".to_owned(), labels.join(" ")),
            };
            let before = Snapshot::of(&h).await;
            let trace = json!({"src": src, "dst": dst, "dport": "80/tcp"});
            let (status, answer) = send_raw(&h.api, "POST", api::POLICY_TRACE, trace.to_string()).await;
            prop_assert!(
                status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
                "{status} {}",
                excerpt(&answer)
            );
            if status != StatusCode::OK {
                message(&answer, "error", "trace")?;
            }
            prop_assert!(before == Snapshot::of(&h).await, "trace changed the state");
            Ok(())
        })?;
    }

    #[test]
    fn hostile_endpoint_names_and_monitor_filters_are_refused(
        name in bad_id(),
        raw in select(&["%ff", "%c3%28", "%zz", "%", "%e2%82", "..%2f..%2fetc%2fpasswd", "%00"][..]),
        parameter in "[a-z_]{1,12}|\\PC{1,8}|[a-z]{600}",
        kinds in "[a-z,]{1,20}",
    ) {
        block_on(async {
            let h = attacked().await;
            let not_found = [StatusCode::NOT_FOUND, StatusCode::BAD_REQUEST];
            refused(&h, "GET", &api::endpoint_path(&name), Body::empty(), &not_found).await?;
            refused(&h, "GET", &format!("{}/{raw}", api::ENDPOINTS), Body::empty(), &not_found).await?;
            let who = percent_encode(&name);
            let queries = [
                format!("endpoint={who}"),
                format!("types=trace&endpoint={who}"),
                format!("related_to={who}&endpoint={who}"),
            ];
            for query in queries {
                refused(&h, "GET", &format!("{MONITOR}?{query}"), Body::empty(), &not_found).await?;
            }
            prop_assume!(!["types", "endpoint", "related_to"].contains(&parameter.as_str()));
            let unknown = percent_encode(&parameter);
            let queries =
                [format!("{unknown}=1"), format!("types={raw}"), "types=trace".to_owned(), "endpoint=".to_owned()];
            for query in queries {
                for route in [MONITOR, FLOWS] {
                    refused(&h, "GET", &format!("{route}?{query}"), Body::empty(), &BAD_REQUEST).await?;
                }
            }
            // An endpoint filter that decodes is a name nobody has: the monitor refuses it, the
            // flows of nobody are none.
            refused(&h, "GET", &format!("{MONITOR}?endpoint={raw}"), Body::empty(), &not_found).await?;
            let types: Vec<&str> = kinds.split(',').filter(|k| !k.is_empty()).collect();
            if types.iter().any(|k| !["drop", "verdict", "trace"].contains(k)) {
                refused(&h, "GET", &format!("{MONITOR}?types={kinds}"), Body::empty(), &BAD_REQUEST).await?;
            }
            // Flows of an endpoint nobody knows: none.
            if !name.is_empty() {
                let (status, answer) = send_raw(&h.api, "GET", &format!("{FLOWS}?endpoint={who}"), Body::empty()).await;
                prop_assert_eq!((status, answer), (StatusCode::OK, Bytes::from_static(b"[]")));
            }
            Ok(())
        })?;
    }

    #[test]
    fn paths_and_methods_the_api_does_not_serve_are_refused_with_a_json_error(
        path in "(/[a-z0-9._-]{0,12}){0,3}",
        hostile in bad_id(),
        verb in select(&["GET", "PUT", "POST", "DELETE", "PATCH"][..]),
        route in select(&ROUTES[..]),
    ) {
        block_on(async {
            let h = attacked().await;
            // None of these is a route: `x-` starts no route's name.
            let hostile = percent_encode(&hostile);
            let uris = [
                format!("/v1/x-{path}"),
                format!("/v1/x-{hostile}"),
                format!("/v1/../../etc/passwd{path}"),
                format!("/{hostile}"),
            ];
            for uri in uris {
                let refusals = [StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED];
                let message = refused(&h, verb, &uri, Body::empty(), &refusals).await?;
                prop_assert!(message.contains("no such API path") || message.contains("is not served on"), "{message}");
            }
            let posts =
                [api::POLICY_DELETE, api::POLICY_VALIDATE, api::POLICY_WAIT, api::POLICY_TRACE, api::BPF_CT_FLUSH];
            let serves = |verb: &str| match route {
                api::POLICY => verb == "GET" || verb == "PUT",
                _ if posts.contains(&route) => verb == "POST",
                _ => verb == "GET",
            };
            if !serves(verb) {
                let message = refused(&h, verb, route, "{}", &[StatusCode::METHOD_NOT_ALLOWED]).await?;
                prop_assert!(message.starts_with(&format!("{verb} is not served on")), "{message}");
            }
            Ok(())
        })?;
    }
}

#[test]
fn ten_megabyte_api_bodies_are_refused() {
    block_on(async {
        let h = attacked().await;
        let huge = "a".repeat(10 << 20);
        let bodies: [(&str, &str, Vec<u8>, &[StatusCode]); 6] = [
            ("PUT", api::POLICY, huge.clone().into_bytes(), &BAD_REQUEST),
            ("PUT", api::POLICY, vec![0xff; 10 << 20], &BAD_REQUEST),
            (
                "PUT",
                api::POLICY,
                json!([{"endpointSelector": {"matchLabels": {"app": huge}}, "ingress": "x"}]).to_string().into_bytes(),
                &BAD_REQUEST,
            ),
            ("POST", api::POLICY_DELETE, json!({"labels": [huge]}).to_string().into_bytes(), &BAD_OR_NO_MATCH),
            ("POST", api::POLICY_WAIT, json!({"revision": huge}).to_string().into_bytes(), &BAD_REQUEST),
            (
                "POST",
                api::POLICY_TRACE,
                json!({"src": huge, "dst": "app=web", "dport": huge}).to_string().into_bytes(),
                &BAD_REQUEST,
            ),
        ];
        for (method, uri, body, allowed) in bodies {
            refused(&h, method, uri, body, allowed).await.unwrap_or_else(|e| panic!("{e}"));
        }
    });
}
