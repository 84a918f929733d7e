//! A driver on the fake datapath and the in-memory store, with its plugin and API routers,
//! driven as dockerd and the CLI would (shared by the tests of the API socket and the
//! hostile-input tests), with dockerd's recorded calls to replay and snapshots of all state.
#![allow(dead_code)]

pub mod fixtures;
pub mod snapshot;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use cilium_rs::datapath::fake::FakeDatapath;
use cilium_rs::driver::{Driver, DriverConfig};
use cilium_rs::endpoint::ContainerRef;
use cilium_rs::health::ErrorRing;
use cilium_rs::identity::Identity;
use cilium_rs::ids::{EndpointId, NetworkId};
use cilium_rs::server::{api, plugin};
use cilium_rs::store::MemoryStore;

pub const NET: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

/// Endpoint ids whose first 11 digits (the interface name) differ.
pub fn endpoint(n: u32) -> String {
    format!("{n:02x}{}", "e".repeat(62))
}

pub struct Harness {
    pub driver: Arc<Driver>,
    pub plugin: Router,
    pub api: Router,
    pub store: Arc<MemoryStore>,
    pub kernel: Arc<FakeDatapath>,
    /// Where the driver's status finds the errors "logged".
    pub errors: ErrorRing,
}

pub async fn harness_with(store: Arc<MemoryStore>, kernel: Arc<FakeDatapath>) -> Harness {
    let errors = ErrorRing::default();
    let config = DriverConfig { errors: errors.clone(), ..DriverConfig::default() };
    let driver = Arc::new(Driver::start(config, kernel.clone(), store.clone()).await.expect("driver starts"));
    Harness { plugin: plugin::router(driver.clone()), api: api::router(driver.clone()), driver, store, kernel, errors }
}

pub async fn harness() -> Harness {
    harness_with(Arc::new(MemoryStore::new()), Arc::new(FakeDatapath::new())).await
}

pub async fn send(router: &Router, method: &str, uri: &str, body: impl Into<Body>) -> (StatusCode, Value) {
    let (status, bytes) = send_raw(router, method, uri, body).await;
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{uri}: not JSON ({e}): {bytes:?}"));
    (status, value)
}

/// The status and the body's bytes, whatever they are.
pub async fn send_raw(router: &Router, method: &str, uri: &str, body: impl Into<Body>) -> (StatusCode, Bytes) {
    let request = Request::builder().method(method).uri(uri).body(body.into()).expect("request");
    let response = router.clone().oneshot(request).await.expect("router answers");
    let status = response.status();
    (status, response.into_body().collect().await.expect("body").to_bytes())
}

impl Harness {
    pub async fn plugin_ok(&self, method: &str, body: Value) -> Value {
        let (status, value) = send(&self.plugin, "POST", &format!("/{method}"), format!("{body}\n")).await;
        assert_eq!(status, StatusCode::OK, "{method}: {value}");
        value
    }

    /// IPAM + CreateNetwork of network NET with an IPv4 pool; returns the pool.
    pub async fn network(&self) -> String {
        let v4 = self
            .plugin_ok("IpamDriver.RequestPool", json!({"AddressSpace": "CiliumRsLocal", "Pool": "", "V6": false}))
            .await;
        self.plugin_ok(
            "NetworkDriver.CreateNetwork",
            json!({"NetworkID": NET, "Options": {}, "IPv4Data": [{"AddressSpace": "CiliumRsLocal", "Pool": v4["Pool"]}]}),
        )
        .await;
        v4["PoolID"].as_str().expect("pool").to_owned()
    }

    /// RequestAddress + CreateEndpoint + Join, as `docker run` does.
    pub async fn start(&self, pool: &str, ep: &str) {
        let v4 = self.plugin_ok("IpamDriver.RequestAddress", json!({"PoolID": pool, "Address": ""})).await;
        self.plugin_ok(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": NET, "EndpointID": ep, "Interface": {"Address": v4["Address"]}}),
        )
        .await;
        self.plugin_ok("NetworkDriver.Join", json!({"NetworkID": NET, "EndpointID": ep, "SandboxKey": ""})).await;
    }

    pub async fn stop(&self, ep: &str) {
        self.plugin_ok("NetworkDriver.Leave", json!({"NetworkID": NET, "EndpointID": ep})).await;
        self.plugin_ok("NetworkDriver.DeleteEndpoint", json!({"NetworkID": NET, "EndpointID": ep})).await;
    }

    /// What the identity resolution does once Docker named the container (`box-<ep[..2]>`).
    pub async fn label(&self, ep: &str, labels: &[(&str, &str)]) -> Identity {
        self.label_as(ep, &format!("box-{}", &ep[..2]), labels).await
    }

    /// The same, for a container named `name` (its id is `c` + the endpoint id's tail).
    pub async fn label_as(&self, ep: &str, name: &str, labels: &[(&str, &str)]) -> Identity {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let container = ContainerRef { id: format!("c{}", &ep[1..]), name: name.to_owned() };
        self.driver
            .assign_identity(
                &NetworkId::parse(NET).expect("id"),
                &EndpointId::parse(ep).expect("id"),
                container,
                &labels,
                "net1",
            )
            .await
            .expect("assign identity")
    }

    pub async fn api(&self, method: &str, uri: &str, body: impl Into<Body>) -> (StatusCode, Value) {
        send(&self.api, method, uri, body).await
    }

    /// GET on the API socket, which must answer 200.
    pub async fn get(&self, uri: &str) -> Value {
        let (status, value) = self.api("GET", uri, Body::empty()).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {value}");
        value
    }

    pub async fn import(&self, policy: &str) -> Value {
        let (status, value) = self.api("PUT", api::POLICY, policy.to_owned()).await;
        assert_eq!(status, StatusCode::OK, "import: {value}");
        value
    }

    pub fn installed_identity(&self, ep: &str) -> Identity {
        let ifname = format!("lxc{}", &ep[..11]);
        self.kernel.kernel().installed[&ifname].identity
    }

    pub fn policy(&self) -> cilium_rs::datapath::PolicyDesired {
        self.kernel.kernel().policy.clone()
    }
}
