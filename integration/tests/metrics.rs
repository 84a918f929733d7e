//! End-to-end metrics: a daemon with `--metrics-address` on a loopback port, two containers, a
//! policy that denies one flow, and the exposition — parsed by a Prometheus text-format parser
//! — checked against what was dropped and against the CLI's views. Without the flag the
//! daemon listens on no TCP port at all.

use std::collections::BTreeMap;
use std::time::Duration;

use integration::env::{map_entries, Env};
use integration::scrape::{free_loopback, must, scrape, value};
use integration::*;
use serde_json::Value;

const PLUGIN: &str = "crs-met";
const PREFIX: &str = "crs-met-";

/// Echo requests sent to each of the server's addresses (IPv4 and IPv6), all denied.
const PINGS: u64 = 10;

/// The TCP ports process `pid` listens on (its sockets, matched in /proc/net/tcp{,6}).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's file descriptors")
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            target.to_str().and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_else(|e| panic!("{table}: {e}"));
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A = LISTEN), …, inode.
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            if *state == "0A" && inodes.iter().any(|i| i == inode) {
                let port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports.sort_unstable();
    ports
}

/// The packets of `key` (`REASON/direction`) every endpoint listed dropped, summed.
fn listed_drops(env: &Env, key: &str) -> u64 {
    env.daemon
        .endpoints()
        .expect("endpoint list")
        .iter()
        .map(|e| e["counters"]["drops"][key]["packets"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn metrics_count_what_policy_dropped_and_agree_with_the_cli() {
    let address = free_loopback();
    let env = Env::setup(PLUGIN, PREFIX, &[("CILIUM_RS_METRICS_ADDRESS", &address.to_string())]);
    let pid = env.daemon.pid().expect("daemon pid");
    let first = scrape(address).expect("scrape an idle daemon");
    assert_eq!(listening_ports(pid), vec![address.port()], "the daemon listens on the metrics address only");
    for family in ["cilium_rs_monitor_ring_events_total", "cilium_rs_monitor_suppressed_events_total"] {
        assert_eq!(value(&first, family, &[]), Some(0.0), "{family} is there from the start");
    }

    let net = format!("{PREFIX}net");
    env.network(&net, &["--ipv6"]).expect("network");
    let (web, client) = (format!("{PREFIX}web"), format!("{PREFIX}client"));
    run_container_with(&web, &["--network", &net, "-l", "app=web"], &["sh", "-c", &http_servers("web", &[80])])
        .expect("web");
    run_container(&client, &["--network", &net, "-l", "app=client"]).expect("client");
    env.wait_identities(&[&web, &client]).expect("identities");

    // client may reach web on TCP 80 only: its pings are denied at web's ingress.
    let policy = r#"[{"labels": [{"key": "name", "value": "web-80"}],
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                     "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]"#;
    let revision = env.import_policy(policy).expect("import");
    let (v4, v6) = addresses(&web, &net).expect("web's addresses");
    assert!(http_get(&client, &v4, 80, 2).expect("exec").is_some(), "the allowed flow passes");

    let denied = [("reason", "POLICY_DENIED"), ("direction", "ingress")];
    let before = must(&scrape(address).expect("scrape"), "cilium_rs_drop_count_total", &denied);
    for addr in [&v4, &v6] {
        let count = PINGS.to_string();
        let (ok, out) = exec(&client, &["ping", "-c", &count, "-i", "0.1", "-W", "1", addr]).expect("exec ping");
        assert!(!ok && out.contains(&format!("{PINGS} packets transmitted, 0 packets received")), "{addr}: {out}");
    }
    let s = scrape(address).expect("scrape");
    let after = must(&s, "cilium_rs_drop_count_total", &denied);
    assert!(after >= before + 2 * PINGS, "POLICY_DENIED/ingress went from {before} to {after}: fewer than the pings");
    assert!(must(&s, "cilium_rs_drop_bytes_total", &denied) >= after * 64, "a dropped echo request is >= 64 bytes");
    assert_eq!(must(&s, "cilium_rs_drop_count_total", &[("reason", "POLICY_DENIED"), ("direction", "egress")]), 0);
    assert!(must(&s, "cilium_rs_forward_count_total", &[("direction", "egress")]) > 0, "{s:?}");
    assert!(must(&s, "cilium_rs_forward_bytes_total", &[("direction", "ingress")]) > 0);

    // The totals are the sum of the endpoints' counters (nothing was removed meanwhile): read
    // the list on both sides of a scrape until nothing moved in between.
    let key = "POLICY_DENIED/ingress";
    let mut agreed = None;
    for _ in 0..10 {
        let listed = listed_drops(&env, key);
        let scraped = must(&scrape(address).expect("scrape"), "cilium_rs_drop_count_total", &denied);
        if listed_drops(&env, key) == listed {
            agreed = Some((listed, scraped));
            break;
        }
    }
    let (listed, scraped) = agreed.expect("the counters settle");
    assert_eq!(scraped, listed, "metrics and endpoint list disagree on {key}");

    // Gauges against the CLI's views.
    let s = scrape(address).expect("scrape");
    let endpoints = env.daemon.endpoints().expect("endpoint list");
    let states: u64 = ["created", "waiting-for-identity", "ready"]
        .iter()
        .map(|state| must(&s, "cilium_rs_endpoints", &[("state", state)]))
        .sum();
    assert_eq!(states, endpoints.len() as u64);
    assert_eq!(must(&s, "cilium_rs_endpoints", &[("state", "ready")]), 2);
    let identities: Vec<Value> =
        serde_json::from_str(&env.daemon.cli(&["identity", "list", "-o", "json"]).expect("identity list"))
            .expect("identities json");
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for identity in &identities {
        *kinds.entry(identity["kind"].as_str().expect("kind").to_owned()).or_default() += 1;
    }
    for kind in ["reserved", "endpoint", "cidr"] {
        let listed = kinds.get(kind).copied().unwrap_or(0);
        assert_eq!(must(&s, "cilium_rs_identities", &[("kind", kind)]), listed, "identities of kind {kind}");
    }
    assert_eq!(kinds.get("endpoint"), Some(&2), "{identities:?}");
    assert_eq!(must(&s, "cilium_rs_networks", &[]), env.daemon.networks().expect("network list").len() as u64);
    let rules: Value =
        serde_json::from_str(&env.daemon.cli(&["policy", "get", "-o", "json"]).expect("policy get")).expect("json");
    assert_eq!(must(&s, "cilium_rs_policy_revision", &[]), revision);
    assert_eq!(must(&s, "cilium_rs_policy_rules", &[]), rules["rules"].as_array().expect("rules").len() as u64);

    // Plugin latency by method, and identity resolution for both containers.
    for method in ["NetworkDriver.CreateEndpoint", "NetworkDriver.Join"] {
        let count = must(&s, "cilium_rs_plugin_request_duration_seconds_count", &[("method", method)]);
        assert!(count >= 2, "{method}: {count} requests timed");
        let histogram = s
            .samples
            .iter()
            .find(|x| x.metric == "cilium_rs_plugin_request_duration_seconds" && x.labels.get("method") == Some(method))
            .unwrap_or_else(|| panic!("{method}: no histogram"));
        let prometheus_parse::Value::Histogram(buckets) = &histogram.value else { panic!("{histogram:?}") };
        assert_eq!(buckets.last().map(|b| b.count), Some(count as f64), "{method}: +Inf bucket");
    }
    assert!(must(&s, "cilium_rs_identity_resolution_duration_seconds_count", &[]) >= 2);

    // Map sizes: the gauges count what bpftool sees (read on both sides until stable).
    for (gauge, labels, map) in [
        ("cilium_rs_conntrack_entries", &[][..], "crs_ct"),
        ("cilium_rs_nat_entries", &[("map", "crs_nat_out")][..], "crs_nat_out"),
        ("cilium_rs_nat_entries", &[("map", "crs_nat_in")][..], "crs_nat_in"),
    ] {
        let count = || map_entries(&env.daemon, map).expect("bpftool").len() as u64;
        let mut agreed = None;
        for _ in 0..10 {
            let seen = count();
            let scraped = must(&scrape(address).expect("scrape"), gauge, labels);
            if count() == seen {
                agreed = Some((seen, scraped));
                break;
            }
        }
        let (seen, scraped) = agreed.unwrap_or_else(|| panic!("{map} never settled"));
        assert_eq!(scraped, seen, "{gauge}{labels:?} vs bpftool's {map}");
    }
    assert!(must(&s, "cilium_rs_conntrack_entries", &[]) >= 1, "the allowed connection is tracked");
    // Per-endpoint series are opt-in.
    assert!(s.samples.iter().all(|x| !x.metric.starts_with("cilium_rs_endpoint_")), "no per-endpoint series");

    // Totals keep what removed endpoints counted.
    docker(&["rm", "-f", &web, &client]).expect("remove the containers");
    wait_until(Duration::from_secs(20), "the endpoints to go", || {
        env.daemon.endpoints().is_ok_and(|eps| eps.is_empty())
    })
    .expect("endpoints removed");
    let s = scrape(address).expect("scrape after the containers went");
    assert!(must(&s, "cilium_rs_drop_count_total", &denied) >= after, "the totals never go down");
    assert_eq!(must(&s, "cilium_rs_endpoints", &[("state", "ready")]), 0);
    env.finish(&[&web, &client], &[&net]);
}

#[test]
fn per_endpoint_series_carry_the_container_name_when_asked() {
    let address = free_loopback();
    let env = Env::setup(
        PLUGIN,
        PREFIX,
        &[("CILIUM_RS_METRICS_ADDRESS", &address.to_string()), ("CILIUM_RS_METRICS_PER_ENDPOINT", "true")],
    );
    let net = format!("{PREFIX}per");
    env.network(&net, &["--ipv6"]).expect("network");
    let (a, b) = (format!("{PREFIX}a"), format!("{PREFIX}b"));
    run_container(&a, &["--network", &net, "-l", "app=a"]).expect("a");
    run_container(&b, &["--network", &net, "-l", "app=b"]).expect("b");
    env.wait_identities(&[&a, &b]).expect("identities");
    let (_, v6) = addresses(&b, &net).expect("b's addresses");
    let (ok, out) = exec(&a, &["ping", "-c", "3", "-i", "0.1", "-W", "1", &v6]).expect("exec ping");
    assert!(ok, "a pings b: {out}");

    let s = scrape(address).expect("scrape");
    let endpoints = env.daemon.endpoints().expect("endpoint list");
    for container in [&a, &b] {
        let ep = endpoints.iter().find(|e| e["container_name"] == **container).expect("listed");
        let id = &ep["id"].as_str().expect("id")[..12];
        for (dir, listed) in [("egress", &ep["counters"]["egress"]), ("ingress", &ep["counters"]["ingress"])] {
            let labels = [("endpoint", id), ("container", container.as_str()), ("direction", dir)];
            let scraped = must(&s, "cilium_rs_endpoint_forward_count_total", &labels);
            assert!(scraped >= 3, "{container} {dir}: {scraped}");
            // The list was read after the scrape: it can only have counted more.
            assert!(scraped <= listed["packets"].as_u64().expect("packets"), "{container} {dir}");
        }
    }
    env.finish(&[&a, &b], &[&net]);
}

#[test]
fn without_the_flag_the_daemon_listens_on_no_tcp_port() {
    let env = Env::setup(PLUGIN, PREFIX, &[]);
    let pid = env.daemon.pid().expect("daemon pid");
    wait_until(Duration::from_secs(20), "the daemon to serve", || env.daemon.log_text().contains("serving"))
        .unwrap_or_else(|e| panic!("{e}\n{}", env.daemon.log_text()));
    assert_eq!(listening_ports(pid), Vec::<u16>::new(), "no metrics address without --metrics-address");
    assert!(!env.daemon.log_text().contains("serving metrics"), "{}", env.daemon.log_text());
    env.finish(&[], &[]);
}
