//! Identities and policy through the driver and the API socket's router, on the fake datapath
//! and the in-memory store: allocation and release, import/get/delete/wait/trace, refusals
//! that change nothing, rollback of failed applies and commits, persistence across restarts.

mod routers;

use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use serde_json::json;

use cilium_rs::datapath::fake::FakeDatapath;
use cilium_rs::identity::Identity;
use cilium_rs::policy::{Direction, PolicyKey, PROTO_ANY, PROTO_TCP};
use cilium_rs::server::api;
use cilium_rs::store::MemoryStore;

use routers::{endpoint, harness, harness_with, Harness};

const APP1_FROM_APP2: &str = r#"[{"labels": [{"key": "name", "value": "app1"}],
  "endpointSelector": {"matchLabels": {"id": "app1"}},
  "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}],
               "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]"#;

fn allow_all(local: Identity, direction: Direction) -> PolicyKey {
    PolicyKey { local, remote: Identity::ANY, direction, proto: PROTO_ANY, port: 0, port_prefix: 0 }
}

#[tokio::test]
async fn identities_follow_label_sets_and_are_freed_with_their_last_endpoint() {
    let h = harness().await;
    let pool = h.network().await;
    for n in 1..=3 {
        h.start(&pool, &endpoint(n)).await;
        assert_eq!(h.installed_identity(&endpoint(n)), Identity::INIT, "an endpoint starts as init");
    }
    let web1 = h.label(&endpoint(1), &[("app", "web"), ("com.docker.compose.config-hash", "a")]).await;
    let web2 = h.label(&endpoint(2), &[("app", "web"), ("com.docker.compose.config-hash", "b")]).await;
    let db = h.label(&endpoint(3), &[("app", "db")]).await;
    assert!(web1.is_endpoint() && db.is_endpoint(), "{web1} {db}");
    assert_eq!(web1, web2, "same labels (bookkeeping labels excluded): same identity");
    assert_ne!(web1, db);
    // In the datapath, with its policy entries (no rules: allowed everything).
    assert_eq!(h.installed_identity(&endpoint(1)), web1);
    let policy = h.policy();
    for id in [web1, db] {
        for direction in [Direction::Ingress, Direction::Egress] {
            assert!(policy.entries.contains_key(&allow_all(id, direction)), "{id} {direction}: {policy:?}");
        }
    }
    // The views show it.
    let views = h.driver.endpoints().await.expect("endpoints");
    let one = views.iter().find(|v| v.id == endpoint(1)).expect("listed");
    assert_eq!((one.identity, one.container_name.as_deref()), (web1.0, Some("box-01")));
    assert!(one.labels.contains(&"container:app=web".to_owned()) && one.labels.contains(&"docker:network=net1".into()));
    let (status, identities) = h.api("GET", api::IDENTITIES, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    let web_row = identities.as_array().expect("list").iter().find(|i| i["id"] == web1.0).expect("web listed");
    assert_eq!(web_row["endpoints"].as_array().map(Vec::len), Some(2), "{web_row}");

    // The last endpoint of an identity takes it (and its entries) away.
    h.stop(&endpoint(1)).await;
    assert!(h.policy().entries.contains_key(&allow_all(web1, Direction::Ingress)), "endpoint 2 still has it");
    h.stop(&endpoint(2)).await;
    assert!(!h.policy().entries.keys().any(|k| k.local == web1 || k.remote == web1), "{:?}", h.policy());
    let (_, identities) = h.api("GET", api::IDENTITIES, Body::empty()).await;
    assert!(!identities.as_array().expect("list").iter().any(|i| i["id"] == web1.0));
    // Its number is free again for the next label set.
    h.start(&pool, &endpoint(4)).await;
    assert_eq!(h.label(&endpoint(4), &[("app", "cache")]).await, web1);
}

#[tokio::test]
async fn import_get_delete_and_trace_through_the_api() {
    let h = harness().await;
    let pool = h.network().await;
    h.start(&pool, &endpoint(1)).await;
    h.start(&pool, &endpoint(2)).await;
    let app1 = h.label(&endpoint(1), &[("id", "app1")]).await;
    let app2 = h.label(&endpoint(2), &[("id", "app2")]).await;

    let imported = h.import(APP1_FROM_APP2).await;
    assert_eq!(imported["revision"], 2);
    assert_eq!(imported["added"], json!([1]));
    let policy = h.policy();
    let allow = PolicyKey {
        local: app1,
        remote: app2,
        direction: Direction::Ingress,
        proto: PROTO_TCP,
        port: 80,
        port_prefix: 16,
    };
    assert_eq!(policy.entries.get(&allow).map(|e| e.deny), Some(false), "{policy:?}");
    assert!(!policy.entries.contains_key(&allow_all(app1, Direction::Ingress)), "app1 is default-deny at ingress");
    assert!(policy.entries.contains_key(&allow_all(app1, Direction::Egress)), "its egress stays open");

    let (_, live) = h.api("GET", api::POLICY, Body::empty()).await;
    assert_eq!(live["revision"], 2);
    assert_eq!(live["rules"][0]["rule"]["endpointSelector"], json!({"matchLabels": {"id": "app1"}}));

    let trace =
        |src: &str, dport: &str| json!({"src": src, "dst": "id=app1,docker:network=net1", "dport": dport}).to_string();
    let (status, t) = h.api("POST", api::POLICY_TRACE, trace("id=app2,docker:network=net1", "80/tcp")).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["allowed"], true, "{t}");
    let (_, t) = h.api("POST", api::POLICY_TRACE, trace("id=app2,docker:network=net1", "81/tcp")).await;
    assert_eq!(t["allowed"], false, "{t}");
    let (_, t) = h.api("POST", api::POLICY_TRACE, trace("id=app3", "80/tcp")).await;
    assert_eq!(t["allowed"], false, "{t}");
    assert_eq!(t["src"]["known"], false, "no identity carries id=app3: {t}");
    // Labels that one live identity carries stand for it.
    let short = json!({"src": "id=app2", "dst": "id=app1", "dport": "80/tcp"}).to_string();
    let (_, t) = h.api("POST", api::POLICY_TRACE, short).await;
    assert_eq!((t["allowed"].clone(), t["src"]["identity"].as_u64()), (json!(true), Some(u64::from(app2.0))), "{t}");
    assert_eq!(t["dst"]["identity"].as_u64(), Some(u64::from(app1.0)), "{t}");

    // Importing a rule with the same labels replaces it.
    let again = h.import(APP1_FROM_APP2).await;
    assert_eq!((again["revision"].as_u64(), again["replaced"].clone()), (Some(3), json!([1])));
    let (_, live) = h.api("GET", api::POLICY, Body::empty()).await;
    assert_eq!(live["rules"].as_array().map(Vec::len), Some(1));

    // Delete by labels: unknown ones are an error, known ones restore the allow-all.
    let (status, msg) = h.api("POST", api::POLICY_DELETE, json!({"labels": ["name=nope"]}).to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{msg}");
    let (status, deleted) = h.api("POST", api::POLICY_DELETE, json!({"labels": ["name=app1"]}).to_string()).await;
    assert_eq!((status, deleted["revision"].as_u64()), (StatusCode::OK, Some(4)), "{deleted}");
    assert!(h.policy().entries.contains_key(&allow_all(app1, Direction::Ingress)));
    let (status, _) = h.api("POST", api::POLICY_DELETE, json!({"all": true}).to_string()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_bad_rule_is_refused_whole_with_its_index_and_field_and_changes_nothing() {
    let h = harness().await;
    h.import(APP1_FROM_APP2).await;
    let before = (h.policy(), h.api("GET", api::POLICY, Body::empty()).await.1);
    let cases = [
        (
            r#"[{"endpointSelector": {}}, {"endpointSelector": {}, "ingress": [{"toFQDNs": []}]}]"#,
            "rules[1].ingress[0].toFQDNs",
        ),
        (
            r#"[{"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "http"}]}]}]}]"#,
            "rules[0].ingress[0].toPorts[0].ports[0].port",
        ),
        (r#"[{"endpointSelector": {}, "egress": [{"toCIDR": ["10.1.2.3/8"]}]}]"#, "rules[0].egress[0].toCIDR[0]"),
        (r#"{"endpointSelector": []}"#, "endpointSelector"),
        (
            r#"[{"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80"}], "rules": {"http": []}}]}]}]"#,
            "rules",
        ),
        ("not json {", "expected a rule"),
    ];
    for (policy, mentions) in cases {
        let (status, reply) = h.api("PUT", api::POLICY, policy.to_owned()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{policy}: {reply}");
        let message = reply["error"].as_str().expect("error message");
        assert!(message.contains(mentions), "{policy}: {message}");
        let (status, _) = h.api("POST", api::POLICY_VALIDATE, policy.to_owned()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "validate refuses it too");
    }
    assert_eq!((h.policy(), h.api("GET", api::POLICY, Body::empty()).await.1), before, "nothing half-applied");
    let (status, ok) = h.api("POST", api::POLICY_VALIDATE, APP1_FROM_APP2.to_owned()).await;
    assert_eq!((status, ok["rules"].as_u64()), (StatusCode::OK, Some(1)));
    assert_eq!(h.policy(), before.0, "validate applies nothing");
}

#[tokio::test]
async fn a_failed_apply_or_commit_leaves_the_revision_and_the_datapath_as_they_were() {
    let h = harness().await;
    let pool = h.network().await;
    h.start(&pool, &endpoint(1)).await;
    h.label(&endpoint(1), &[("id", "app1")]).await;
    let before = (h.policy(), h.api("GET", api::POLICY, Body::empty()).await.1);

    h.kernel.fail("apply_policy");
    let (status, reply) = h.api("PUT", api::POLICY, APP1_FROM_APP2.to_owned()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{reply}");
    h.kernel.heal();
    assert_eq!((h.policy(), h.api("GET", api::POLICY, Body::empty()).await.1), before);

    h.store.fail_commits(true);
    let (status, reply) = h.api("PUT", api::POLICY, APP1_FROM_APP2.to_owned()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{reply}");
    assert!(reply["error"].as_str().is_some_and(|m| m.starts_with("persist policy")), "{reply}");
    h.store.fail_commits(false);
    assert_eq!((h.policy(), h.api("GET", api::POLICY, Body::empty()).await.1), before, "datapath put back");
}

#[tokio::test]
async fn rules_and_identities_survive_a_restart_without_a_verdict_change() {
    let store = Arc::new(MemoryStore::new());
    let kernel = Arc::new(FakeDatapath::new());
    let (app1, policy, revision) = {
        let h = harness_with(store.clone(), kernel.clone()).await;
        let pool = h.network().await;
        h.start(&pool, &endpoint(1)).await;
        let app1 = h.label(&endpoint(1), &[("id", "app1")]).await;
        h.import(APP1_FROM_APP2).await;
        (app1, h.policy(), kernel.kernel().policy_revision)
    };
    let h = harness_with(store, kernel.clone()).await;
    assert_eq!(h.installed_identity(&endpoint(1)), app1, "the endpoint keeps its identity");
    assert_eq!(h.policy(), policy, "the same policy");
    assert_eq!(kernel.kernel().policy_revision, revision, "restoring changed no verdict");
    let (_, live) = h.api("GET", api::POLICY, Body::empty()).await;
    assert_eq!((live["revision"].as_u64(), live["rules"].as_array().map(Vec::len)), (Some(2), Some(1)));
    // Allocation goes on after the persisted identities.
    h.start(&h.network_pool().await, &endpoint(2)).await;
    assert_ne!(h.label(&endpoint(2), &[("id", "app2")]).await, app1);
}

impl Harness {
    /// The IPv4 pool of the network (after a restart).
    async fn network_pool(&self) -> String {
        self.driver.networks().await[0].pools[0].id.clone()
    }
}

#[tokio::test]
async fn wait_returns_at_once_for_an_enforced_revision_and_times_out_for_a_future_one() {
    let h = harness().await;
    h.import(APP1_FROM_APP2).await;
    let (status, reply) = h.api("POST", api::POLICY_WAIT, json!({"revision": 2, "timeout_ms": 10}).to_string()).await;
    assert_eq!((status, reply["revision"].as_u64()), (StatusCode::OK, Some(2)));
    let (status, reply) = h.api("POST", api::POLICY_WAIT, json!({"revision": 9, "timeout_ms": 10}).to_string()).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_policy_change_does_not_stall_a_container_start() {
    let h = Arc::new(harness().await);
    let pool = h.network().await;
    let gate = h.kernel.hold("apply_policy");
    let import = {
        let h = h.clone();
        tokio::spawn(async move { h.api("PUT", api::POLICY, APP1_FROM_APP2.to_owned()).await })
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while h.kernel.count("apply_policy") == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the import reaches the datapath");
    tokio::time::timeout(std::time::Duration::from_secs(10), h.start(&pool, &endpoint(1)))
        .await
        .expect("a container start goes through while the policy is being applied");
    assert!(!import.is_finished());
    gate.add_permits(1);
    let (status, _) = import.await.expect("import task");
    assert_eq!(status, StatusCode::OK);
}
