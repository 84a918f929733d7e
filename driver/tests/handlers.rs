//! Handler tests: full Docker call sequences through the plugin router, on the fake datapath
//! and the in-memory store, with the JSON shapes dockerd 20.10 sends.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use cilium_rs::datapath::fake::FakeDatapath;
use cilium_rs::driver::{Driver, DriverConfig};
use cilium_rs::ids::{EndpointId, NetworkId};
use cilium_rs::reconcile::{DockerNetwork, DockerSnapshot};
use cilium_rs::server::plugin;
use cilium_rs::store::{MemoryStore, Store, Table};

const NET: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
const EP: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Harness {
    driver: Arc<Driver>,
    router: Router,
    store: Arc<MemoryStore>,
    kernel: Arc<FakeDatapath>,
}

async fn harness_with(store: Arc<MemoryStore>, kernel: Arc<FakeDatapath>) -> Harness {
    harness_configured(DriverConfig::default(), store, kernel).await
}

async fn harness_configured(config: DriverConfig, store: Arc<MemoryStore>, kernel: Arc<FakeDatapath>) -> Harness {
    let driver = Arc::new(Driver::start(config, kernel.clone(), store.clone()).await.expect("driver starts"));
    Harness { router: plugin::router(driver.clone()), driver, store, kernel }
}

/// A daemon known to dockerd by another driver name (a managed plugin's `cilium-rs:latest`).
async fn harness_named(driver_name: &str) -> Harness {
    let config = DriverConfig { driver_name: driver_name.to_owned(), ..DriverConfig::default() };
    harness_configured(config, Arc::new(MemoryStore::new()), Arc::new(FakeDatapath::new())).await
}

async fn harness() -> Harness {
    harness_with(Arc::new(MemoryStore::new()), Arc::new(FakeDatapath::new())).await
}

impl Harness {
    async fn raw(&self, method: &str, body: impl Into<Body>) -> (StatusCode, Value) {
        // dockerd sends no Content-Type, an Accept header, and a body ending in a newline.
        let request = Request::post(format!("/{method}"))
            .header("accept", "application/vnd.docker.plugins.v1.2+json")
            .body(body.into())
            .expect("request");
        let response = self.router.clone().oneshot(request).await.expect("router answers");
        let status = response.status();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{method}: reply is not JSON ({e}): {bytes:?}"));
        (status, value)
    }

    async fn call(&self, method: &str, body: Value) -> (StatusCode, Value) {
        self.raw(method, format!("{body}\n")).await
    }

    async fn ok(&self, method: &str, body: Value) -> Value {
        let (status, value) = self.call(method, body).await;
        assert_eq!(status, StatusCode::OK, "{method} failed: {value}");
        value
    }

    async fn err(&self, method: &str, body: Value) -> (StatusCode, String) {
        let (status, value) = self.call(method, body).await;
        assert!(!status.is_success(), "{method} should fail but answered {value}");
        assert_ne!(status, StatusCode::NOT_FOUND, "404 means 'method missing' to dockerd");
        (status, value["Err"].as_str().expect("Err field").to_owned())
    }

    fn fake(&self) -> &FakeDatapath {
        &self.kernel
    }

    /// IPAM + CreateNetwork as `docker network create [--ipv6]` does it.
    async fn create_network(&self, id: &str, ipv6: bool, v4_subnet: &str, v6_subnet: &str) -> (String, Option<String>) {
        let v4 = self
            .ok("IpamDriver.RequestPool", json!({"AddressSpace": "CiliumRsLocal", "Pool": v4_subnet, "SubPool": "", "Options": null, "V6": false}))
            .await;
        let v4_id = v4["PoolID"].as_str().expect("PoolID").to_owned();
        let v4_gw = v4["Data"]["com.docker.network.gateway"].as_str().expect("gateway").to_owned();
        let mut ipv6_data = json!([]);
        let mut v6_id = None;
        if ipv6 {
            let v6 = self
                .ok("IpamDriver.RequestPool", json!({"AddressSpace": "CiliumRsLocal", "Pool": v6_subnet, "SubPool": "", "Options": {}, "V6": true}))
                .await;
            v6_id = Some(v6["PoolID"].as_str().expect("PoolID").to_owned());
            ipv6_data = json!([{"AddressSpace": "CiliumRsLocal", "Pool": v6["Pool"], "Gateway": v6["Data"]["com.docker.network.gateway"]}]);
        }
        self.ok(
            "NetworkDriver.CreateNetwork",
            json!({
                "NetworkID": id,
                "Options": {"com.docker.network.enable_ipv6": ipv6, "com.docker.network.generic": {}},
                "IPv4Data": [{"AddressSpace": "CiliumRsLocal", "Pool": v4["Pool"], "Gateway": v4_gw}],
                "IPv6Data": ipv6_data
            }),
        )
        .await;
        (v4_id, v6_id)
    }

    /// RequestAddress (IPv4) + CreateEndpoint with it, as dockerd does before Join.
    async fn create_endpoint(&self, net: &str, ep: &str, v4_pool: &str) -> Value {
        let v4 = self.ok("IpamDriver.RequestAddress", json!({"PoolID": v4_pool, "Address": "", "Options": null})).await;
        self.ok(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": net, "EndpointID": ep, "Interface": {"Address": v4["Address"], "AddressIPv6": "", "MacAddress": ""}, "Options": {}}),
        )
        .await;
        v4
    }

    /// RequestAddress (v4, then v6) + CreateEndpoint + Join + EndpointOperInfo, as `docker run`.
    async fn start_container(
        &self,
        net: &str,
        ep: &str,
        v4_pool: &str,
        v6_pool: Option<&str>,
    ) -> (Value, Value, Value) {
        let v4 = self.ok("IpamDriver.RequestAddress", json!({"PoolID": v4_pool, "Address": "", "Options": null})).await;
        let v6 = match v6_pool {
            Some(pool) => {
                self.ok("IpamDriver.RequestAddress", json!({"PoolID": pool, "Address": "", "Options": null})).await
            }
            None => json!({"Address": ""}),
        };
        let created = self
            .ok(
                "NetworkDriver.CreateEndpoint",
                json!({
                    "NetworkID": net, "EndpointID": ep,
                    "Interface": {"Address": v4["Address"], "AddressIPv6": v6["Address"], "MacAddress": ""},
                    "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}
                }),
            )
            .await;
        let joined = self
            .ok(
                "NetworkDriver.Join",
                json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": "/var/run/docker/netns/3f2a1b4c5d6e", "Options": {}}),
            )
            .await;
        self.ok("NetworkDriver.EndpointOperInfo", json!({"NetworkID": net, "EndpointID": ep})).await;
        (json!({"v4": v4["Address"], "v6": v6["Address"]}), created, joined)
    }

    async fn stop_container(&self, net: &str, ep: &str, v4_pool: &str, addrs: &Value, v6_pool: Option<&str>) {
        self.ok("NetworkDriver.Leave", json!({"NetworkID": net, "EndpointID": ep})).await;
        self.ok("NetworkDriver.DeleteEndpoint", json!({"NetworkID": net, "EndpointID": ep})).await;
        let bare = |v: &Value| v.as_str().expect("addr").split('/').next().expect("ip").to_owned();
        self.ok("IpamDriver.ReleaseAddress", json!({"PoolID": v4_pool, "Address": bare(&addrs["v4"])})).await;
        if let Some(pool) = v6_pool {
            self.ok("IpamDriver.ReleaseAddress", json!({"PoolID": pool, "Address": bare(&addrs["v6"])})).await;
        }
    }
}

fn endpoint(n: u32) -> String {
    format!("{n:08x}{}", &EP[8..])
}

#[tokio::test]
async fn activation_and_capabilities() {
    let h = harness().await;
    // Calls without a payload arrive with an empty body.
    let (status, v) = h.raw("Plugin.Activate", Body::empty()).await;
    assert_eq!((status, v), (StatusCode::OK, json!({"Implements": ["NetworkDriver", "IpamDriver"]})));
    let (_, v) = h.raw("NetworkDriver.GetCapabilities", Body::empty()).await;
    assert_eq!(v["Scope"], "local");
    let (_, v) = h.raw("IpamDriver.GetCapabilities", Body::empty()).await;
    assert_eq!(v, json!({"RequiresMACAddress": false, "RequiresRequestReplay": false}));
    let (_, v) = h.raw("IpamDriver.GetDefaultAddressSpaces", Body::empty()).await;
    assert_eq!(v, json!({"LocalDefaultAddressSpace": "CiliumRsLocal", "GlobalDefaultAddressSpace": "CiliumRsGlobal"}));
}

#[tokio::test]
async fn network_and_container_lifecycle_with_ipv6() {
    let h = harness().await;
    let (v4_pool, v6_pool) = h.create_network(NET, true, "", "").await;
    let v6_pool = v6_pool.expect("v6 pool");
    let (addrs, created, joined) = h.start_container(NET, EP, &v4_pool, Some(&v6_pool)).await;

    assert!(addrs["v4"].as_str().expect("v4").ends_with("/32"), "{addrs}");
    assert!(addrs["v6"].as_str().expect("v6").ends_with("/128"), "{addrs}");
    // Only the MAC was empty in the request, so only the MAC comes back.
    assert_eq!(created, json!({"Interface": {"MacAddress": "02:01:23:45:67:89"}}));
    assert_eq!(joined["InterfaceName"], json!({"SrcName": "tmp0123456789a", "DstPrefix": "eth"}));
    assert_eq!(joined["Gateway"], "169.254.1.1");
    assert_eq!(joined["GatewayIPv6"], "fe80::1");
    assert_eq!(
        joined["StaticRoutes"],
        json!([
            {"Destination": "169.254.1.1/32", "RouteType": 1},
            {"Destination": "fe80::1/128", "RouteType": 1},
            {"Destination": "fdc1:1a00::/64", "RouteType": 0, "NextHop": "fe80::1"},
            {"Destination": "10.220.0.0/22", "RouteType": 0, "NextHop": "169.254.1.1"}
        ]),
        "the gateways on-link, then the network's subnets through them"
    );
    assert_eq!(joined["DisableGatewayService"], true);
    {
        let k = h.fake().kernel();
        assert!(k.links.contains_key("lxc0123456789a"));
        assert!(k.attached.contains("lxc0123456789a"));
        let installed = &k.installed["lxc0123456789a"];
        assert_eq!(installed.gateway_ipv4, Some("169.254.1.1".parse().expect("ip")));
        assert_eq!(installed.mac, [2, 1, 0x23, 0x45, 0x67, 0x89]);
    }

    h.stop_container(NET, EP, &v4_pool, &addrs, Some(&v6_pool)).await;
    {
        let k = h.fake().kernel();
        assert!(k.links.is_empty() && k.attached.is_empty() && k.installed.is_empty(), "{k:?}");
        assert!(k.counters.is_empty());
    }
    // Releases arrive twice on dockerd's clean-up paths: still fine.
    h.ok(
        "IpamDriver.ReleaseAddress",
        json!({"PoolID": v4_pool, "Address": addrs["v4"].as_str().expect("a").split('/').next()}),
    )
    .await;
    h.ok("NetworkDriver.DeleteEndpoint", json!({"NetworkID": NET, "EndpointID": EP})).await;
    h.ok("NetworkDriver.Leave", json!({"NetworkID": NET, "EndpointID": EP})).await;

    // dockerd also releases the gateway it got in RequestPool's Data (recorded from 20.10).
    h.ok("IpamDriver.ReleaseAddress", json!({"PoolID": v4_pool, "Address": "169.254.1.1"})).await;
    h.ok("IpamDriver.ReleaseAddress", json!({"PoolID": v6_pool, "Address": "fe80::1"})).await;
    h.ok("IpamDriver.ReleasePool", json!({"PoolID": v4_pool})).await;
    h.ok("IpamDriver.ReleasePool", json!({"PoolID": v6_pool})).await;
    h.ok("IpamDriver.ReleasePool", json!({"PoolID": v6_pool})).await;
    h.ok("NetworkDriver.DeleteNetwork", json!({"NetworkID": NET})).await;
    h.ok("NetworkDriver.DeleteNetwork", json!({"NetworkID": NET})).await;
    let records = h.store.load().expect("load");
    for table in [Table::Networks, Table::Pools, Table::Endpoints] {
        assert!(records.get(&table).is_none_or(|rows| rows.is_empty()), "{table:?} left: {records:?}");
    }
}

#[tokio::test]
async fn network_without_ipv6_still_gives_ipv6_and_takes_it_back() {
    let h = harness().await;
    let (v4_pool, _) = h.create_network(NET, false, "10.77.0.0/24", "").await;
    let (addrs, created, joined) = h.start_container(NET, EP, &v4_pool, None).await;
    assert_eq!(addrs["v4"], "10.77.0.1/32");
    let v6 = created["Interface"]["AddressIPv6"].as_str().expect("driver filled AddressIPv6");
    assert!(v6.starts_with("fdc1:1a00:") && v6.ends_with("/128"), "{v6}");
    assert!(created["Interface"].get("Address").is_none(), "Address was given, must not be echoed: {created}");
    assert_eq!(joined["GatewayIPv6"], "fe80::1");
    let networks = h.driver.networks().await;
    assert_eq!(networks[0].pools.iter().filter(|p| p.taken_by_driver).count(), 1);
    assert_eq!(networks[0].pools.iter().find(|p| p.taken_by_driver).expect("pool").used, 1);
    h.stop_container(NET, EP, &v4_pool, &addrs, None).await;
    let networks = h.driver.networks().await;
    assert_eq!(networks[0].pools.iter().find(|p| p.taken_by_driver).expect("pool").used, 0);
    h.ok("IpamDriver.ReleasePool", json!({"PoolID": v4_pool})).await;
    h.ok("NetworkDriver.DeleteNetwork", json!({"NetworkID": NET})).await;
    assert_eq!(h.driver.status().await.counts.pools, 0, "the driver's own IPv6 pool goes with the network");
}

#[tokio::test]
async fn user_chosen_addresses_mac_and_gateway() {
    let h = harness().await;
    let v4 = h
        .ok("IpamDriver.RequestPool", json!({"AddressSpace": "CiliumRsLocal", "Pool": "10.78.0.0/24", "SubPool": "10.78.0.128/25", "Options": null, "V6": false}))
        .await;
    let pool = v4["PoolID"].as_str().expect("id");
    // `--gateway` is requested explicitly and keeps the subnet's prefix.
    let gw = h
        .ok("IpamDriver.RequestAddress", json!({"PoolID": pool, "Address": "10.78.0.1", "Options": {"RequestAddressType": "com.docker.network.gateway"}}))
        .await;
    assert_eq!(gw["Address"], "10.78.0.1/24");
    let ip = h.ok("IpamDriver.RequestAddress", json!({"PoolID": pool, "Address": "10.78.0.9", "Options": null})).await;
    assert_eq!(ip["Address"], "10.78.0.9/32");
    let (status, msg) =
        h.err("IpamDriver.RequestAddress", json!({"PoolID": pool, "Address": "10.78.0.9", "Options": null})).await;
    assert_eq!(
        (status, msg.as_str()),
        (StatusCode::CONFLICT, "address 10.78.0.9 is already in use in pool 10.78.0.0/24")
    );
    let dynamic = h.ok("IpamDriver.RequestAddress", json!({"PoolID": pool, "Address": "", "Options": null})).await;
    assert_eq!(dynamic["Address"], "10.78.0.128/32", "--ip-range bounds dynamic addresses");

    h.ok(
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET, "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {"mtu": "1400"}},
               "IPv4Data": [{"AddressSpace": "CiliumRsLocal", "Pool": "10.78.0.0/24", "Gateway": "10.78.0.1/24"}], "IPv6Data": []}),
    )
    .await;
    let created = h
        .ok(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.78.0.9/32", "AddressIPv6": "", "MacAddress": "02:42:0a:4e:00:09"}, "Options": null}),
        )
        .await;
    assert!(created["Interface"].get("MacAddress").is_none(), "a given MAC is never echoed: {created}");
    let joined = h
        .ok("NetworkDriver.Join", json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "", "Options": null}))
        .await;
    // The routed gateway stays link-local whatever --gateway reserved.
    assert_eq!(joined["Gateway"], "169.254.1.1");
    let k = h.fake().kernel();
    assert_eq!(k.installed["lxc0123456789a"].mac, [0x02, 0x42, 0x0a, 0x4e, 0x00, 0x09]);
}

#[tokio::test]
async fn failed_join_rolls_back_every_step_and_can_be_retried() {
    for failing in ["attach", "apply_endpoint"] {
        let h = harness().await;
        let (v4_pool, _) = h.create_network(NET, false, "", "").await;
        h.create_endpoint(NET, EP, &v4_pool).await;
        h.fake().fail(failing);
        let join = json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/x", "Options": {}});
        let (status, msg) = h.err("NetworkDriver.Join", join.clone()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(msg.contains("injected failure"), "{msg}");
        {
            let k = h.fake().kernel();
            assert!(k.links.is_empty(), "{failing}: veth left behind: {k:?}");
            assert!(k.attached.is_empty() && k.installed.is_empty(), "{failing}: {k:?}");
        }
        assert!(!h.driver.endpoints().await.expect("list")[0].joined);
        h.fake().heal();
        h.ok("NetworkDriver.Join", join).await;
        assert!(h.driver.endpoints().await.expect("list")[0].joined);
    }
}

#[tokio::test]
async fn failed_commit_rolls_back_the_kernel_and_the_state() {
    let h = harness().await;
    let (v4_pool, _) = h.create_network(NET, false, "", "").await;
    let v4 = h.create_endpoint(NET, EP, &v4_pool).await;
    h.store.fail_commits(true);
    let (status, msg) =
        h.err("NetworkDriver.Join", json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "", "Options": {}})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(msg.starts_with("persist state"), "{msg}");
    assert!(h.fake().kernel().links.is_empty());
    let before = h.driver.status().await.counts;
    let (_, _) = h.err("IpamDriver.RequestAddress", json!({"PoolID": v4_pool, "Address": "", "Options": null})).await;
    assert_eq!(h.driver.status().await.counts, before);
    h.store.fail_commits(false);
    let again = h.ok("IpamDriver.RequestAddress", json!({"PoolID": v4_pool, "Address": "", "Options": null})).await;
    assert_ne!(again["Address"], v4["Address"]);
}

#[tokio::test]
async fn bad_input_gets_a_precise_error_and_changes_nothing() {
    let h = harness().await;
    let (v4_pool, _) = h.create_network(NET, false, "", "").await;
    let before = h.driver.status().await.counts;
    let cases: Vec<(&str, Body, &str)> = vec![
        ("NetworkDriver.CreateNetwork", Body::from("{\"NetworkID\": "), "malformed request body"),
        ("NetworkDriver.CreateNetwork", Body::empty(), "empty request body"),
        ("IpamDriver.RequestPool", Body::from("[]"), "request body must be a JSON object, found an array"),
        ("NetworkDriver.DeleteNetwork", Body::from("null"), "request body must be a JSON object, found null"),
        ("NetworkDriver.Leave", Body::from("[\"a\", \"b\"]"), "request body must be a JSON object, found an array"),
        ("NetworkDriver.Join", Body::from("{\"NetworkID\": 5}"), "malformed request body: invalid type: integer `5`"),
        ("NetworkDriver.Join", Body::from(json!({"NetworkID": NET, "EndpointID": EP}).to_string()), "unknown endpoint 0123456789ab"),
        (
            "NetworkDriver.CreateEndpoint",
            Body::from(json!({"NetworkID": "0000000000000000000000000000000000000000000000000000000000000000", "EndpointID": EP, "Interface": {"Address": "10.220.0.5/32"}}).to_string()),
            "unknown network 000000000000",
        ),
        (
            "NetworkDriver.CreateEndpoint",
            Body::from(json!({"NetworkID": "../../etc/passwd", "EndpointID": EP}).to_string()),
            "invalid network id \"../../etc/passwd\"",
        ),
        (
            "NetworkDriver.CreateEndpoint",
            Body::from(json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.99.0.5/32"}}).to_string()),
            "address 10.99.0.5 is not in any pool of this network",
        ),
        (
            "IpamDriver.RequestPool",
            Body::from(json!({"AddressSpace": "CiliumRsLocal", "Pool": "fd5c::/129", "V6": true}).to_string()),
            "invalid --subnet fd5c::/129: prefix length over 128",
        ),
        (
            "IpamDriver.RequestPool",
            Body::from(json!({"AddressSpace": "CiliumRsLocal", "Pool": "", "V6": false, "Options": {"foo": "bar"}}).to_string()),
            "unknown --ipam-opt \"foo\": cilium-rs IPAM takes no options",
        ),
        (
            "IpamDriver.RequestAddress",
            Body::from(json!({"PoolID": v4_pool, "Address": "not-an-ip"}).to_string()),
            "invalid address \"not-an-ip\": not an IP address",
        ),
        (
            "NetworkDriver.CreateNetwork",
            Body::from(json!({"NetworkID": endpoint(9), "Options": {"com.docker.network.generic": {"mtu": "abc"}}, "IPv4Data": []}).to_string()),
            "invalid -o mtu=\"abc\": not a number",
        ),
    ];
    for (method, body, want) in cases {
        let (status, value) = h.raw(method, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method}: {value}");
        let msg = value["Err"].as_str().expect("Err");
        assert!(msg.starts_with(want), "{method}: got {msg:?}, want {want:?}");
    }
    // A hostile string is quoted back as a bounded excerpt, never whole.
    let (status, value) = h
        .raw(
            "IpamDriver.RequestPool",
            Body::from(
                json!({"AddressSpace": "CiliumRsLocal", "Pool": "\u{1b}[31m".repeat(20_000), "V6": false}).to_string(),
            ),
        )
        .await;
    let msg = value["Err"].as_str().expect("Err");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(msg.len() < 300 && msg.starts_with("invalid --subnet") && !msg.contains('\u{1b}'), "{msg}");
    let huge = format!("{{\"NetworkID\": \"{}\"}}", "a".repeat(2 << 20));
    let (status, value) = h.raw("NetworkDriver.DeleteNetwork", Body::from(huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{value}");
    let (status, value) = h.raw("NetworkDriver.NoSuchMethod", Body::from("{}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(value["Err"].as_str().expect("Err").contains("NoSuchMethod"));
    assert_eq!(h.driver.status().await.counts, before, "state changed by bad input");
}

#[tokio::test]
async fn default_ipam_is_refused_with_a_pointer_to_ours() {
    let h = harness().await;
    let (status, msg) = h
        .err(
            "NetworkDriver.CreateNetwork",
            json!({"NetworkID": NET, "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {}},
                   "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16", "Gateway": "172.18.0.1/16"}], "IPv6Data": []}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(msg.contains("--ipam-driver cilium-rs "), "{msg}");

    // A managed plugin is known by its name with the tag, and says so.
    let h = harness_named("cilium-rs:latest").await;
    let (status, msg) = h
        .err(
            "NetworkDriver.CreateNetwork",
            json!({"NetworkID": NET, "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {}},
                   "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16", "Gateway": "172.18.0.1/16"}], "IPv6Data": []}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(msg.contains("--ipam-driver cilium-rs:latest "), "{msg}");
    assert_eq!(h.driver.status().await.driver, "cilium-rs:latest");
}

#[tokio::test]
async fn two_networks_get_distinct_gateways_and_a_container_joins_both() {
    let h = harness().await;
    let (pool_a, _) = h.create_network(NET, false, "", "").await;
    let net_b = endpoint(0xb);
    let (pool_b, _) = h.create_network(&net_b, false, "", "").await;
    let (_, _, joined_a) = h.start_container(NET, EP, &pool_a, None).await;
    let (_, _, joined_b) = h.start_container(&net_b, &endpoint(2), &pool_b, None).await;
    assert_ne!(joined_a["Gateway"], joined_b["Gateway"], "same on-link route on two interfaces = 'file exists'");
    assert_ne!(joined_a["StaticRoutes"], joined_b["StaticRoutes"]);
}

#[tokio::test]
async fn concurrent_container_starts_get_distinct_addresses() {
    let h = Arc::new(harness().await);
    let (v4_pool, v6_pool) = h.create_network(NET, true, "", "").await;
    let v6_pool = v6_pool.expect("v6");
    let mut tasks = Vec::new();
    for n in 0..20 {
        let (h, v4_pool, v6_pool) = (h.clone(), v4_pool.clone(), v6_pool.clone());
        tasks.push(tokio::spawn(async move { h.start_container(NET, &endpoint(n), &v4_pool, Some(&v6_pool)).await.0 }));
    }
    let mut seen = std::collections::BTreeSet::new();
    for task in tasks {
        let addrs = task.await.expect("task");
        assert!(seen.insert(addrs["v4"].to_string()), "duplicate {addrs}");
        assert!(seen.insert(addrs["v6"].to_string()), "duplicate {addrs}");
    }
    assert_eq!(h.fake().kernel().links.len(), 20);
}

#[tokio::test]
async fn a_restarted_daemon_remembers_everything() {
    let store = Arc::new(MemoryStore::new());
    let kernel = Arc::new(FakeDatapath::new());
    let (v4_pool, held) = {
        let h = harness_with(store.clone(), kernel.clone()).await;
        let (v4_pool, _) = h.create_network(NET, false, "", "").await;
        let (addrs, _, _) = h.start_container(NET, EP, &v4_pool, None).await;
        (v4_pool, addrs["v4"].clone())
    };
    let h = harness_with(store, kernel).await;
    let endpoints = h.driver.endpoints().await.expect("list");
    assert_eq!(endpoints.len(), 1);
    assert!(endpoints[0].joined);
    assert_eq!(h.fake().count("restore"), 2, "each start restores");
    let next = h.ok("IpamDriver.RequestAddress", json!({"PoolID": v4_pool, "Address": "", "Options": null})).await;
    assert_ne!(next["Address"], held, "an address a live container holds was handed out again");
    // The old container can still be removed completely.
    h.ok("NetworkDriver.Leave", json!({"NetworkID": NET, "EndpointID": EP})).await;
    h.ok("NetworkDriver.DeleteEndpoint", json!({"NetworkID": NET, "EndpointID": EP})).await;
    assert!(h.driver.endpoints().await.expect("list").is_empty());
}

#[tokio::test]
async fn optional_methods_answer_empty_objects() {
    let h = harness().await;
    let ids = json!({"NetworkID": NET, "EndpointID": EP, "Options": {}});
    assert_eq!(h.ok("NetworkDriver.ProgramExternalConnectivity", ids.clone()).await, json!({}));
    assert_eq!(h.ok("NetworkDriver.RevokeExternalConnectivity", ids).await, json!({}));
    let discovery =
        json!({"DiscoveryType": 1, "DiscoveryData": {"Address": "10.0.0.1", "BindAddress": "", "Self": true}});
    assert_eq!(h.ok("NetworkDriver.DiscoverNew", discovery.clone()).await, json!({}));
    assert_eq!(h.ok("NetworkDriver.DiscoverDelete", discovery).await, json!({}));
}

fn snapshot_at(taken_at: u64) -> DockerSnapshot {
    DockerSnapshot { taken_at, ..DockerSnapshot::default() }
}

fn later() -> u64 {
    cilium_rs::state::now() + cilium_rs::driver::RECONCILE_GRACE_SECS + 5
}

#[tokio::test]
async fn reconcile_removes_what_dockerd_forgot_and_keeps_the_rest() {
    let h = harness().await;
    let (v4_pool, _) = h.create_network(NET, false, "", "").await;
    h.start_container(NET, EP, &v4_pool, None).await;
    // An address dockerd asked for but never used (it crashed, or our reply was lost).
    let leaked = h.ok("IpamDriver.RequestAddress", json!({"PoolID": v4_pool, "Address": "", "Options": null})).await;
    // A pool no network took (CreateNetwork never came).
    h.ok("IpamDriver.RequestPool", json!({"AddressSpace": "CiliumRsLocal", "Pool": "10.90.0.0/24", "V6": false})).await;

    // dockerd knows everything: nothing goes.
    let network = NetworkId::parse(NET).expect("id");
    let mut known = snapshot_at(later());
    known.networks.insert(
        network.clone(),
        DockerNetwork { name: "n".into(), endpoints: [EndpointId::parse(EP).expect("id")].into_iter().collect() },
    );
    known.subnets.push("10.90.0.0/24".parse().expect("net"));
    known.addresses.insert(leaked["Address"].as_str().expect("a").split('/').next().expect("ip").parse().expect("ip"));
    assert!(h.driver.reconcile(&known).await.expect("reconcile").is_empty());

    // Too young to judge: nothing goes either.
    assert!(h.driver.reconcile(&snapshot_at(cilium_rs::state::now())).await.expect("reconcile").is_empty());

    // The address and the pool are nobody's any more.
    let mut forgot_leftovers = known.clone();
    forgot_leftovers.addresses.clear();
    forgot_leftovers.subnets.clear();
    let report = h.driver.reconcile(&forgot_leftovers).await.expect("reconcile");
    assert_eq!((report.addresses_released, report.pools_released, report.endpoints_removed), (1, 1, 0), "{report:?}");
    assert_eq!(h.driver.endpoints().await.expect("list").len(), 1, "the live endpoint stays");

    // dockerd forgot the network and its container (calls lost while we were down).
    let report = h.driver.reconcile(&snapshot_at(later())).await.expect("reconcile");
    assert_eq!((report.endpoints_removed, report.networks_removed), (1, 1), "{report:?}");
    assert!(h.driver.endpoints().await.expect("list").is_empty());
    assert_eq!(h.driver.status().await.counts.pools, 0);
    let k = h.fake().kernel();
    assert!(k.links.is_empty() && k.attached.is_empty() && k.installed.is_empty(), "{k:?}");
}

#[tokio::test]
async fn a_repeated_create_endpoint_gets_the_same_answer() {
    let h = harness().await;
    let (v4_pool, _) = h.create_network(NET, false, "", "").await;
    let v4 = h.ok("IpamDriver.RequestAddress", json!({"PoolID": v4_pool, "Address": "", "Options": null})).await;
    let request = json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": v4["Address"], "AddressIPv6": "", "MacAddress": ""}, "Options": {}});
    let first = h.ok("NetworkDriver.CreateEndpoint", request.clone()).await;
    let again = h.ok("NetworkDriver.CreateEndpoint", request).await;
    assert_eq!(first, again);
    let other = json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.220.0.77/32", "AddressIPv6": "", "MacAddress": ""}, "Options": {}});
    let (status, msg) = h.err("NetworkDriver.CreateEndpoint", other).await;
    assert_eq!((status, msg.as_str()), (StatusCode::CONFLICT, "endpoint 0123456789ab already exists"));
}

#[tokio::test]
async fn endpoints_whose_ids_share_an_interface_name_are_refused() {
    let h = harness().await;
    let (v4_pool, _) = h.create_network(NET, false, "", "").await;
    h.start_container(NET, EP, &v4_pool, None).await;
    let twin = format!("{}{}", &EP[..11], "f".repeat(53));
    let v4 = h.ok("IpamDriver.RequestAddress", json!({"PoolID": v4_pool, "Address": "", "Options": null})).await;
    let (status, msg) = h
        .err(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": NET, "EndpointID": twin, "Interface": {"Address": v4["Address"]}, "Options": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(msg.contains("would share interface lxc0123456789a"), "{msg}");
    assert!(h.fake().kernel().links.contains_key("lxc0123456789a"), "the live veth must survive");
}

#[tokio::test]
async fn endpoints_of_one_container_share_a_sandbox_number() {
    let h = harness().await;
    let (pool_a, _) = h.create_network(NET, false, "", "").await;
    let net_b = endpoint(0xb);
    let (pool_b, _) = h.create_network(&net_b, false, "", "").await;
    let join = |net: &str, ep: &str, pool: &str, key: &str| {
        let (net, ep, pool, key) = (net.to_owned(), ep.to_owned(), pool.to_owned(), key.to_owned());
        let h = &h;
        async move {
            let v4 = h.ok("IpamDriver.RequestAddress", json!({"PoolID": pool, "Address": ""})).await;
            h.ok(
                "NetworkDriver.CreateEndpoint",
                json!({"NetworkID": net, "EndpointID": ep, "Interface": {"Address": v4["Address"]}}),
            )
            .await;
            h.ok("NetworkDriver.Join", json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": key})).await;
        }
    };
    join(NET, &endpoint(1), &pool_a, "/var/run/docker/netns/aaaaaaaaaaaa").await;
    join(&net_b, &endpoint(2), &pool_b, "/var/run/docker/netns/aaaaaaaaaaaa").await;
    join(&net_b, &endpoint(3), &pool_b, "/var/run/docker/netns/bbbbbbbbbbbb").await;
    let k = h.fake().kernel();
    let sandbox = |n: u32| k.installed[&format!("lxc{}", &endpoint(n)[..11])].sandbox;
    assert_eq!(sandbox(1), sandbox(2), "same container, same sandbox");
    assert_ne!(sandbox(1), sandbox(3), "another container, another sandbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_kernel_step_of_one_endpoint_does_not_stall_the_others() {
    let h = Arc::new(harness().await);
    let (v4_pool, _) = h.create_network(NET, false, "", "").await;
    h.create_endpoint(NET, EP, &v4_pool).await;
    // The veth of EP takes as long as the test wants.
    let gate = h.fake().hold("create_veth");
    let slow = {
        let h = h.clone();
        tokio::spawn(async move {
            h.ok("NetworkDriver.Join", json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "", "Options": {}}))
                .await
        })
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while h.fake().count("create_veth") == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the join reaches create_veth");
    // Meanwhile another endpoint is created and the views answer.
    let other = endpoint(2);
    let started = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let v4 = h.ok("IpamDriver.RequestAddress", json!({"PoolID": v4_pool, "Address": ""})).await;
        h.ok(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": NET, "EndpointID": other, "Interface": {"Address": v4["Address"]}}),
        )
        .await;
        h.driver.status().await
    })
    .await
    .expect("the state lock is not held across another endpoint's kernel call");
    assert_eq!(started.counts.endpoints, 2);
    assert!(!slow.is_finished(), "EP's join is still waiting for its veth");
    gate.add_permits(1);
    slow.await.expect("join task");
    assert!(h.fake().kernel().links.contains_key("lxc0123456789a"));
}

/// `GET /metrics` on the metrics router, parsed by a Prometheus text-format parser.
async fn scrape(driver: &Arc<Driver>, per_endpoint: bool) -> prometheus_parse::Scrape {
    let router = cilium_rs::server::metrics::router(driver.clone(), per_endpoint);
    let request = Request::get(cilium_rs::server::metrics::PATH).body(Body::empty()).expect("request");
    let response = router.oneshot(request).await.expect("router answers");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], cilium_rs::metrics::CONTENT_TYPE);
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

/// The value of the sample `name` with (at least) `labels`, if there is one.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(
        |s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        },
    )
}

#[tokio::test]
async fn metrics_show_requests_endpoints_and_what_removed_endpoints_dropped() {
    let h = harness().await;
    let (v4_pool, _) = h.create_network(NET, false, "", "").await;
    let (addrs, _, _) = h.start_container(NET, EP, &v4_pool, None).await;
    h.err("NetworkDriver.Join", json!({"NetworkID": NET, "EndpointID": endpoint(9), "SandboxKey": ""})).await;
    let number = h.fake().kernel().installed["lxc0123456789a"].number;
    let denied = "POLICY_DENIED/ingress".to_owned();
    h.fake()
        .kernel()
        .counters
        .get_mut(&number)
        .expect("counters")
        .drops
        .insert(denied.clone(), cilium_rs::datapath::Traffic { packets: 5, bytes: 300 });
    h.fake().kernel().conntrack_entries = 3;

    let s = scrape(&h.driver, false).await;
    let join = [("method", "NetworkDriver.Join")];
    assert_eq!(sample(&s, "cilium_rs_plugin_request_duration_seconds_count", &join), Some(2.0));
    assert_eq!(sample(&s, "cilium_rs_plugin_request_errors_total", &join), Some(1.0));
    let create = [("method", "NetworkDriver.CreateEndpoint")];
    assert_eq!(sample(&s, "cilium_rs_plugin_request_duration_seconds_count", &create), Some(1.0));
    assert_eq!(sample(&s, "cilium_rs_endpoints", &[("state", "waiting-for-identity")]), Some(1.0));
    assert_eq!(sample(&s, "cilium_rs_networks", &[]), Some(1.0));
    assert_eq!(sample(&s, "cilium_rs_conntrack_entries", &[]), Some(3.0));
    let policy_drops = [("reason", "POLICY_DENIED"), ("direction", "ingress")];
    assert_eq!(sample(&s, "cilium_rs_drop_count_total", &policy_drops), Some(5.0));
    assert_eq!(sample(&s, "cilium_rs_identity_resolution_duration_seconds_count", &[]), Some(0.0));
    assert!(s.samples.iter().all(|s| !s.metric.starts_with("cilium_rs_endpoint_")), "per endpoint is opt-in");

    // The identity arrives: the endpoint is ready and the resolution is timed.
    let container = cilium_rs::endpoint::ContainerRef { id: "c".repeat(64), name: "web".into() };
    h.driver
        .assign_identity(
            &NetworkId::parse(NET).expect("id"),
            &EndpointId::parse(EP).expect("id"),
            container,
            &[("app".to_owned(), "web".to_owned())].into(),
            "net1",
        )
        .await
        .expect("assign identity");
    let s = scrape(&h.driver, true).await;
    assert_eq!(sample(&s, "cilium_rs_endpoints", &[("state", "ready")]), Some(1.0));
    assert_eq!(sample(&s, "cilium_rs_identities", &[("kind", "endpoint")]), Some(1.0));
    assert_eq!(sample(&s, "cilium_rs_identity_resolution_duration_seconds_count", &[]), Some(1.0));
    let web = [("endpoint", &EP[..12]), ("container", "web"), ("reason", "POLICY_DENIED"), ("direction", "ingress")];
    assert_eq!(sample(&s, "cilium_rs_endpoint_drop_count_total", &web), Some(5.0));

    // The container goes with its counters; the totals keep what it dropped.
    h.stop_container(NET, EP, &v4_pool, &addrs, None).await;
    assert!(!h.fake().kernel().counters.contains_key(&number));
    let s = scrape(&h.driver, true).await;
    assert_eq!(sample(&s, "cilium_rs_drop_count_total", &policy_drops), Some(5.0));
    assert_eq!(sample(&s, "cilium_rs_endpoints", &[("state", "ready")]), Some(0.0));
    assert!(sample(&s, "cilium_rs_endpoint_drop_count_total", &web).is_none());
}
