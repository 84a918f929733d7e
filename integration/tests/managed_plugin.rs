//! The managed plugin end to end: scripts/plugin.sh (what `make plugin` runs) builds and
//! creates cilium-rs:latest, dockerd enables it, a network made with `-d cilium-rs:latest
//! --ipam-driver cilium-rs:latest` connects containers over IPv6 and IPv4 under policy imported
//! with the host's CLI, and `docker plugin disable -f` then `enable` keeps the network, the
//! addresses, the identities, the policy and the pins, with connectivity throughout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use integration::managed::{self, ManagedPlugin, NAME};
use integration::*;
use serde_json::{json, Value};

const PREFIX: &str = "crs-mp-";

/// Reconciliation every second, of records older than 3 s: a pass that did not recognise the
/// plugin's networks as its own (by their driver name) would remove them within the test.
const FAST_RECONCILE: [(&str, &str); 2] = [("CILIUM_RS_RECONCILE_INTERVAL", "1"), ("CILIUM_RS_RECONCILE_GRACE", "3")];
/// Long enough for a reconciliation pass to have seen everything the test made.
const RECONCILE_PASSES: Duration = Duration::from_secs(6);

const ONLY_CLIENT_TO_SERVER_80: &str = r#"[{"labels": [{"key": "name", "value": "mp-server"}],
  "endpointSelector": {"matchLabels": {"id": "mp-server"}},
  "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "mp-client"}}],
               "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]"#;

fn reaches(from: &str, addr: &str) -> bool {
    http_get(from, addr, 80, 2).expect("exec").is_some()
}

/// The server's IPv4 and IPv6 addresses.
fn targets(server: &str, net: &str) -> [String; 2] {
    let (v4, v6) = addresses(server, net).expect("server addresses");
    [v4, v6]
}

/// Waits until every named container's endpoint has an allocated identity; returns them.
fn wait_identities(plugin: &ManagedPlugin, containers: &[&str]) -> BTreeMap<String, u64> {
    let mut found = BTreeMap::new();
    let waited = wait_until(Duration::from_secs(20), "the containers' identities", || {
        let Ok(endpoints) = plugin.json(&["endpoint", "list"]) else { return false };
        found = endpoints
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["container_name"].as_str()?.to_owned(), e["identity"].as_u64()?)))
            .filter(|(_, id)| *id >= 256)
            .collect();
        containers.iter().all(|c| found.contains_key(*c))
    });
    if let Err(e) = waited {
        panic!("{e}: {found:?}\n{}", plugin.log());
    }
    found
}

/// Policy holds: the client reaches the server on both families, the other container does not.
fn policy_enforced(server: &str, client: &str, other: &str, net: &str, when: &str) {
    for addr in targets(server, net) {
        assert!(reaches(client, &addr), "{when}: {client} -> {addr}:80 is allowed");
        assert!(!reaches(other, &addr), "{when}: {other} -> {addr}:80 is refused");
    }
}

/// What the plugin must keep over a disable/enable: its networks, endpoints (addresses,
/// identities, interfaces), identities and rules, and the addresses Docker shows.
fn held(plugin: &ManagedPlugin, containers: &[&str], net: &str) -> Value {
    let mut endpoints: Vec<Value> = plugin
        .json(&["endpoint", "list"])
        .expect("endpoints")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            json!({
                "id": e["id"], "container": e["container_name"], "network": e["network"],
                "ipv4": e["ipv4"], "ipv6": e["ipv6"], "identity": e["identity"], "labels": e["labels"],
                "interface": e["host_ifname"], "joined": e["joined"],
            })
        })
        .collect();
    endpoints.sort_by_key(|e| e["container"].to_string());
    let docker_view: BTreeMap<&str, (String, String)> =
        containers.iter().map(|c| (*c, addresses(c, net).expect("addresses"))).collect();
    json!({
        "networks": plugin.json(&["network", "list"]).expect("networks"),
        "endpoints": endpoints,
        "identities": plugin.json(&["identity", "list"]).expect("identities"),
        "policy": plugin.json(&["policy", "get"]).expect("policy"),
        "docker": docker_view,
    })
}

#[test]
fn the_managed_plugin_serves_networks_and_policy_and_keeps_them_over_disable_and_enable() {
    require_root_and_dockerd();
    let _serial = serial();
    let started = Instant::now();
    // What an earlier run left: its containers (while its plugin may still serve them), then
    // the plugin and its directories; its networks once the new plugin answers for them.
    remove_docker_leftovers(PREFIX);
    managed::remove_leftovers();
    let baseline_links = host_lxc_links().expect("links");
    let baseline_routes = our_routes().expect("routes");

    let plugin = ManagedPlugin::create(PREFIX, &FAST_RECONCILE).unwrap_or_else(|e| panic!("create: {e:#}"));
    plugin.enable().unwrap_or_else(|e| panic!("enable: {e:#}"));
    remove_docker_leftovers(PREFIX);
    let status = plugin.json(&["status"]).expect("status");
    assert_eq!(status["driver"], NAME, "the daemon knows its driver name: {status}");
    assert_eq!(status["healthy"], true, "{status}\n{}", plugin.log());

    let net = format!("{PREFIX}net");
    docker(&["network", "create", "-d", NAME, "--ipam-driver", NAME, "--ipv6", &net]).expect("network create");
    let info = inspect(&net).expect("inspect network");
    assert_eq!(info["Driver"], NAME, "{info}");
    assert_eq!(info["IPAM"]["Driver"], NAME, "{info}");
    let (server, client, other) = (format!("{PREFIX}server"), format!("{PREFIX}client"), format!("{PREFIX}other"));
    run_container_with(
        &server,
        &["--network", &net, "-l", "id=mp-server"],
        &["sh", "-c", &http_servers("server", &[80])],
    )
    .expect("server");
    run_container(&client, &["--network", &net, "-l", "id=mp-client"]).expect("client");
    run_container(&other, &["--network", &net, "-l", "id=mp-other"]).expect("other");
    let identities = wait_identities(&plugin, &[&server, &client, &other]);

    for addr in targets(&server, &net) {
        assert!(reaches(&client, &addr), "{client} -> {addr}:80 without policy\n{}", plugin.log());
        assert!(reaches(&other, &addr), "{other} -> {addr}:80 without policy");
    }
    let revision = plugin.import_policy(ONLY_CLIENT_TO_SERVER_80).expect("policy import");
    assert!(revision >= 2, "revision {revision}");
    policy_enforced(&server, &client, &other, &net, "after the import");

    // Reconciliation passes leave alone what dockerd lists under cilium-rs:latest.
    std::thread::sleep(RECONCILE_PASSES);
    let containers = [server.as_str(), client.as_str(), other.as_str()];
    let before = held(&plugin, &containers, &net);
    assert_eq!(before["endpoints"].as_array().map(Vec::len), Some(3), "{before}\n{}", plugin.log());
    assert_eq!(before["networks"].as_array().map(Vec::len), Some(1), "{before}");
    // Maps are pinned (programs stay attached to the veths as tc filters, and pinned links
    // hold the socket programs and tcx attachments when there are any).
    let maps_before = plugin.pins("maps");
    let links_before = plugin.pins("links");
    assert!(maps_before.iter().any(|m| m == "crs_endpoints"), "pinned maps: {maps_before:?}");

    // Networks use the plugin: a plain disable is refused; -f stops it under them.
    let (ok, text) = plugin.disable(false).expect("disable");
    assert!(!ok && text.contains("in use"), "disable without -f: {text}");
    let (ok, text) = plugin.disable(true).expect("disable -f");
    assert!(ok, "disable -f: {text}");
    assert!(!plugin.enabled(), "disabled");
    // While it is down, the pins keep the datapath forwarding and enforcing.
    assert_eq!(plugin.pins("maps"), maps_before, "pinned maps while disabled");
    assert_eq!(plugin.pins("links"), links_before, "pinned links while disabled");
    assert!(plugin.state_dir.join("state.redb").exists(), "the state file stays on the host");
    policy_enforced(&server, &client, &other, &net, "while the plugin is disabled");
    let late = format!("{PREFIX}late");
    let refused = docker_fails(&["run", "-d", "--name", &late, "--network", &net, IMAGE, "true"]);
    let _ = docker(&["rm", "-f", &late]);
    assert!(refused.is_ok(), "a container cannot join while the plugin is disabled: {refused:?}");

    plugin.enable().unwrap_or_else(|e| panic!("enable again: {e:#}"));
    wait_identities(&plugin, &containers);
    assert_eq!(held(&plugin, &containers, &net), before, "state after disable/enable\n{}", plugin.log());
    assert_eq!(plugin.pins("maps"), maps_before, "pinned maps after enable");
    policy_enforced(&server, &client, &other, &net, "after enable");

    // It serves new containers again; the same labels get the same identity.
    let client2 = format!("{PREFIX}client2");
    run_container(&client2, &["--network", &net, "-l", "id=mp-client"]).expect("client2");
    let again = wait_identities(&plugin, &[&client2]);
    assert_eq!(again[&client2], identities[&client], "same labels, same identity: {again:?} {identities:?}");
    for addr in targets(&server, &net) {
        assert!(reaches(&client2, &addr), "{client2} -> {addr}:80 after enable");
    }
    std::thread::sleep(RECONCILE_PASSES);
    let endpoints = plugin.json(&["endpoint", "list"]).expect("endpoints");
    assert_eq!(endpoints.as_array().map(Vec::len), Some(4), "reconciliation kept them: {endpoints}\n{}", plugin.log());

    // An upgrade (`FORCE=1 make plugin`) removes and re-creates the plugin under the network:
    // the state and pins are the host's, so the new plugin takes over where the old one was.
    let containers = [server.as_str(), client.as_str(), other.as_str(), client2.as_str()];
    let before = held(&plugin, &containers, &net);
    plugin.replace().unwrap_or_else(|e| panic!("replace: {e:#}"));
    policy_enforced(&server, &client, &other, &net, "while the plugin is replaced");
    plugin.enable().unwrap_or_else(|e| panic!("enable the new plugin: {e:#}"));
    wait_identities(&plugin, &containers);
    assert_eq!(held(&plugin, &containers, &net), before, "state after the upgrade\n{}", plugin.log());
    policy_enforced(&server, &client, &other, &net, "after the upgrade");

    // Clean-up through the plugin leaves nothing in it or in the kernel.
    for c in [&server, &client, &other, &client2] {
        docker(&["rm", "-f", c]).expect("rm");
    }
    docker(&["network", "rm", &net]).expect("network rm");
    plugin.cli(&["policy", "delete", "--all"]).expect("policy delete");
    let endpoints = plugin.json(&["endpoint", "list"]).expect("endpoints");
    assert_eq!(endpoints, json!([]), "endpoints left");
    let networks = plugin.json(&["network", "list"]).expect("networks");
    assert_eq!(networks, json!([]), "networks left");
    let links: Vec<String> =
        host_lxc_links().expect("links").into_iter().filter(|l| !baseline_links.contains(l)).collect();
    assert!(links.is_empty(), "veths left: {links:?}");
    let routes: Vec<String> =
        our_routes().expect("routes").into_iter().filter(|r| !baseline_routes.contains(r)).collect();
    assert!(routes.is_empty(), "routes left: {routes:?}");
    assert_eq!(plugin.pins("links"), Vec::<String>::new(), "pinned links left");

    let bpf_root = plugin.bpf_root.clone();
    drop(plugin);
    assert!(output(&[DOCKER, "plugin", "inspect", NAME]).is_ok_and(|o| !o.status.success()), "plugin removed");
    assert!(!bpf_root.exists(), "its pins removed");
    eprintln!("managed plugin: {:.1} s", started.elapsed().as_secs_f64());
}
