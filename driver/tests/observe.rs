//! What the daemon shows of itself, through the API socket's router on the fake datapath and
//! the in-memory store: the status and its verdict, names from Docker's API, one endpoint in
//! full, and the kernel maps with identities and addresses named.

mod routers;

use std::net::IpAddr;

use axum::body::Body;
use axum::http::StatusCode;
use serde_json::{json, Value};

use bpf_programs::abi;
use cilium_rs::datapath::{CtRow, NatRow, NatSide};
use cilium_rs::driver::{Driver, DriverConfig};
use cilium_rs::health::LoggedError;
use cilium_rs::server::api;

use routers::{endpoint, harness, send, Harness, NET};

impl Harness {
    /// A container named `name` with `labels` started on NET, its identity resolved.
    async fn container(&self, pool: &str, ep: &str, name: &str, labels: &[(&str, &str)]) {
        self.start(pool, ep).await;
        self.label_as(ep, name, labels).await;
    }

    async fn status(&self) -> Value {
        self.get(api::STATUS).await
    }
}

#[tokio::test]
async fn status_is_unhealthy_until_docker_connects_and_whenever_a_subsystem_fails() {
    let h = harness().await;
    let status = h.status().await;
    assert_eq!(status["healthy"], false, "{status}");
    assert!(status["problems"][0].as_str().is_some_and(|p| p.starts_with("docker: connecting")), "{status}");
    assert_eq!(status["datapath"]["kind"], "fake");
    assert_eq!(status["store"]["location"], "memory");

    h.driver.health().docker_connected();
    let status = h.status().await;
    assert_eq!(status["healthy"], true, "{status}");
    assert_eq!(status["docker"]["state"], "connected");
    assert!(status["docker"]["events_lag_ms"].as_u64().is_some_and(|lag| lag < 5_000), "{status}");
    assert_eq!((status["conntrack_entries"].as_u64(), status["pools"].as_u64()), (Some(0), Some(0)));

    // Docker goes away.
    h.driver.health().docker_lost("connect /var/run/docker.sock: connection refused");
    let status = h.status().await;
    assert_eq!((status["healthy"].as_bool(), status["docker"]["state"].as_str()), (Some(false), Some("reconnecting")));
    assert_eq!(status["docker"]["last_error"], "connect /var/run/docker.sock: connection refused");
    h.driver.health().docker_connected();

    // The store fails: the next commit says so, until one goes through.
    let pool = h.network().await;
    h.store.fail_commits(true);
    let (code, _) =
        send(&h.plugin, "POST", "/IpamDriver.RequestAddress", format!("{}\n", json!({"PoolID": pool, "Address": ""})))
            .await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    let status = h.status().await;
    assert_eq!(status["healthy"], false);
    assert!(status["problems"][0].as_str().is_some_and(|p| p.starts_with("store: commit state: ")), "{status}");
    h.store.fail_commits(false);
    h.plugin_ok("IpamDriver.RequestAddress", json!({"PoolID": pool, "Address": ""})).await;
    assert_eq!(h.status().await["healthy"], true);

    // Pins vanish; the programs are not loaded.
    h.kernel.kernel().missing_pins = vec!["crs_ct".into()];
    h.kernel.kernel().unloaded = true;
    let problems = h.status().await["problems"].clone();
    assert_eq!(problems, json!(["datapath: programs not loaded", "datapath: pinned maps missing: crs_ct"]));
    h.kernel.kernel().missing_pins.clear();
    h.kernel.kernel().unloaded = false;

    // Counts of what the programs track, and the errors the log layer kept.
    h.kernel.kernel().ct = vec![ct_row("10.220.0.1", "10.220.0.2")];
    h.errors.push(LoggedError {
        at: 1,
        level: "WARN".into(),
        message: "failed: error=boom".into(),
        context: String::new(),
    });
    let status = h.status().await;
    assert_eq!((status["conntrack_entries"].as_u64(), status["errors_total"].as_u64()), (Some(1), Some(1)));
    assert_eq!(status["errors"][0]["message"], "failed: error=boom");
    assert_eq!(status["networks"], 1);

    // The table says why, and --verbose shows the errors.
    let view: cilium_rs::views::StatusView = serde_json::from_value(status).expect("status view");
    let table = cilium_rs::table::status(&view, true);
    assert!(table.starts_with("cilium-rs ") && table.contains(": healthy, up "), "{table}");
    assert!(table.contains("failed: error=boom") && table.contains("1 conntrack entries"), "{table}");
}

fn ct_row(initiator: &str, responder: &str) -> CtRow {
    CtRow {
        proto: 6,
        initiator: (initiator.parse().expect("ip"), 40000),
        responder: (responder.parse().expect("ip"), 80),
        flags: abi::CT_F_EGRESS_OK | abi::CT_F_INGRESS_OK,
        revision: 0,
        packets: [1, 1],
        bytes: [60, 60],
        expires_in_ms: 60_000,
        age_ms: 10,
    }
}

#[tokio::test]
async fn networks_and_endpoints_carry_the_names_docker_gave() {
    let h = harness().await;
    let pool = h.network().await;
    h.container(&pool, &endpoint(1), "web", &[("app", "web")]).await;
    assert_eq!(h.get(api::NETWORKS).await[0]["name"], Value::Null, "dockerd never sent it");

    let other = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let named = h.driver.name_networks(&[(NET.into(), "net1".into()), (other.into(), "bridge".into())]);
    assert_eq!(named, 1, "only our networks are named");
    assert_eq!(h.driver.name_networks(&[(NET.into(), "net1".into())]), 0, "nothing changes twice");
    assert_eq!(h.get(api::NETWORKS).await[0]["name"], "net1");
    let list = h.get(api::ENDPOINTS).await;
    assert_eq!((list[0]["container_name"].as_str(), list[0]["network_name"].as_str()), (Some("web"), Some("net1")));

    // The names are persisted: a restarted daemon knows them before Docker answers.
    let restarted = Driver::start(DriverConfig::default(), h.kernel.clone(), h.store.clone()).await.expect("restart");
    assert_eq!(restarted.networks().await[0].name.as_deref(), Some("net1"));

    let rows: Vec<cilium_rs::views::EndpointView> = serde_json::from_value(list).expect("views");
    let table = cilium_rs::table::endpoints(&rows);
    let line = table.lines().nth(1).expect("a row");
    assert!(line.contains(" web ") && line.contains(" net1 "), "{table}");
}

#[tokio::test]
async fn one_endpoint_is_found_by_name_id_or_prefix_and_shown_in_full() {
    let h = harness().await;
    let pool = h.network().await;
    h.driver.name_networks(&[(NET.into(), "net1".into())]);
    h.container(&pool, &endpoint(1), "web", &[("app", "web")]).await;
    h.container(&pool, &endpoint(2), "api", &[("app", "api")]).await;
    h.import(
        r#"[{"endpointSelector": {"matchLabels": {"app": "web"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "api"}}]}]}]"#,
    )
    .await;

    let web = h.get(&api::endpoint_path("web")).await;
    assert_eq!(web["id"], endpoint(1));
    assert_eq!(web["network_name"], "net1");
    assert_eq!(web["policy"]["ingress_enforced"], true, "{web}");
    assert_eq!(web["policy"]["egress_enforced"], false, "{web}");
    assert_eq!(web["policy"]["selected_by"], json!([1]));
    assert_eq!(web["datapath_identity"], web["identity"], "the kernel's entry carries its identity");
    assert!(web["labels"].as_array().is_some_and(|l| l.contains(&json!("container:app=web"))), "{web}");
    assert_eq!(h.get(&api::endpoint_path("api")).await["policy"]["ingress_enforced"], false);
    assert_eq!(h.get(&api::endpoint_path(&endpoint(2))).await["container_name"], "api", "by endpoint id");
    assert_eq!(h.get(&api::endpoint_path("01ee")).await["container_name"], "web", "by endpoint id prefix");
    assert_eq!(h.get(&api::endpoint_path("c1e")).await["container_name"], "web", "by container id prefix");

    let (status, value) = send(&h.api, "GET", &api::endpoint_path("0"), Body::empty()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{value}");
    assert!(value["error"].as_str().is_some_and(|e| e.contains("ambiguous") && e.contains("01eeeeeeeeee")), "{value}");
    let (status, value) = send(&h.api, "GET", &api::endpoint_path("no such/thing"), Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{value}");
    assert!(value["error"].as_str().is_some_and(|e| e.contains("\"no such/thing\"")), "{value}");

    // Counters by drop reason, in the table too.
    let number = web["number"].as_u64().expect("number") as u32;
    h.kernel
        .kernel()
        .counters
        .entry(number)
        .or_default()
        .drops
        .insert("POLICY_DENIED/ingress".into(), cilium_rs::datapath::Traffic { packets: 3, bytes: 180 });
    let detail: cilium_rs::views::EndpointDetail =
        serde_json::from_value(h.get(&api::endpoint_path("web")).await).expect("detail");
    let table = cilium_rs::table::endpoint_detail(&detail);
    assert!(table.contains("ingress enforced, egress not enforced"), "{table}");
    assert!(
        table.lines().any(|l| l.contains("POLICY_DENIED") && l.contains("ingress") && l.contains(" 3 ")),
        "{table}"
    );
}

#[tokio::test]
async fn map_dumps_name_identities_and_addresses_and_ct_flush_empties_conntrack() {
    let h = harness().await;
    let pool = h.network().await;
    h.driver.name_networks(&[(NET.into(), "net1".into())]);
    h.container(&pool, &endpoint(1), "web", &[("app", "web")]).await;
    h.container(&pool, &endpoint(2), "api", &[("app", "api")]).await;
    let endpoints = h.get(api::ENDPOINTS).await;
    let addr = |name: &str| -> String {
        let ep = endpoints.as_array().expect("list").iter().find(|e| e["container_name"] == name).expect("listed");
        ep["ipv4"].as_str().expect("ipv4").to_owned()
    };
    let (web, api_addr) = (addr("web"), addr("api"));

    let rows = h.get(api::BPF_ENDPOINTS).await;
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "{rows}");
    let web_row = rows.as_array().expect("rows").iter().find(|r| r["container"] == "web").expect("web's entry");
    assert_eq!(web_row["network"], "net1");
    assert!(web_row["labels"].as_array().is_some_and(|l| l.contains(&json!("container:app=web"))), "{web_row}");

    let ipcache = h.get(api::BPF_IPCACHE).await;
    let entry = ipcache.as_array().expect("rows").iter().find(|r| r["prefix"] == format!("{web}/32")).expect("web");
    assert_eq!(entry["name"], "web", "{entry}");

    let policy = h.get(api::BPF_POLICY).await;
    assert!(
        policy
            .as_array()
            .expect("rows")
            .iter()
            .any(|r| r["local_endpoints"] == json!(["web"]) && r["verdict"] == "allow"),
        "{policy}"
    );

    h.kernel.kernel().ct = vec![ct_row(&api_addr, &web), ct_row(&web, "198.51.100.7")];
    h.kernel.kernel().nat = vec![NatRow {
        side: NatSide::Out,
        proto: 17,
        source: (web.parse::<IpAddr>().expect("ip"), 5000),
        destination: ("198.51.100.7".parse().expect("ip"), 53),
        translated: ("203.0.113.1".parse().expect("ip"), 61001),
        published: false,
        ifindex: 2,
        age_ms: 10,
    }];
    let ct = h.get(api::BPF_CT).await;
    let flows = ct["entries"].as_array().expect("entries");
    assert_eq!(flows.len(), 2, "{ct}");
    assert!(flows.iter().any(|f| f["initiator"]["name"] == "api" && f["responder"]["name"] == "web"), "{ct}");
    let nat = h.get(api::BPF_NAT).await;
    assert_eq!((nat[0]["source"]["name"].as_str(), nat[0]["kind"].as_str()), (Some("web"), Some("masquerade")));

    let (status, flushed) = send(&h.api, "POST", api::BPF_CT_FLUSH, Body::empty()).await;
    assert_eq!((status, flushed["removed"].as_u64()), (StatusCode::OK, Some(2)));
    assert_eq!(h.get(api::BPF_CT).await["entries"], json!([]));
    assert_eq!(h.status().await["conntrack_entries"], 0);
}
