//! Privileged tests of the rtnetlink datapath (veth pairs, endpoint routes and neighbours, route
//! queries), each in a throwaway network namespace. They fail, never skip, without root.

mod support;

use std::net::IpAddr;

use cilium_rs::datapath::link::{random_mac, HostLink, Netlink, Prefix, ROUTE_PROTOCOL};
use serde_json::Value;
use support::{in_netns, run};

const HOST: &str = "lxc1a2b3c4d5e6";
const PEER: &str = "tmp1a2b3c4d5e6";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// `ip -j -d link show dev <name>` as JSON.
fn link_json(name: &str) -> Value {
    let out = run(&["ip", "-j", "-d", "link", "show", "dev", name]);
    let mut links: Vec<Value> = serde_json::from_str(&out).expect("ip -j link output");
    assert_eq!(links.len(), 1, "{out}");
    links.remove(0)
}

fn link_exists(name: &str) -> bool {
    std::process::Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn flags(link: &Value) -> Vec<String> {
    link["flags"].as_array().expect("flags").iter().map(|f| f.as_str().expect("flag").to_string()).collect()
}

/// A stand-in for the host's uplink: `name`, up with carrier and `mtu`. This kernel has no
/// dummy driver, so it is one end of a veth pair whose other end (`<name>p`) is up too.
fn uplink(name: &str, mtu: u32) {
    let peer = format!("{name}p");
    let mtu = mtu.to_string();
    run(&["ip", "link", "add", name, "mtu", &mtu, "type", "veth", "peer", "name", &peer, "mtu", &mtu]);
    run(&["ip", "link", "set", &peer, "up"]);
    run(&["ip", "link", "set", name, "up"]);
}

fn connect() -> Netlink {
    Netlink::connect().expect("open netlink socket")
}

#[test]
fn create_veth_configures_both_ends() {
    in_netns(|| async {
        let nl = connect();
        let peer_mac = random_mac();
        let created = nl.create_veth(HOST, PEER, 1450, peer_mac).await.expect("create veth");

        let host = link_json(HOST);
        assert_eq!(host["ifindex"].as_u64(), Some(u64::from(created.index)));
        assert_eq!(host["mtu"].as_u64(), Some(1450));
        assert_eq!(host["address"].as_str(), Some(mac_text(created.mac).as_str()));
        assert_eq!(host["linkinfo"]["info_kind"].as_str(), Some("veth"));
        assert!(flags(&host).contains(&"UP".to_string()), "host side is up: {host}");

        let peer = link_json(PEER);
        assert_eq!(peer["mtu"].as_u64(), Some(1450));
        assert_eq!(peer["address"].as_str(), Some(mac_text(peer_mac).as_str()));
        assert_eq!(peer["linkinfo"]["info_kind"].as_str(), Some("veth"));
        assert!(!flags(&peer).contains(&"UP".to_string()), "peer stays down: {peer}");
        assert_eq!(peer["link"].as_str(), Some(HOST), "the peer is the host side's: {peer}");

        assert_eq!(nl.link_by_name(HOST).await.expect("lookup"), Some(created));
        let peer_link = nl.link_by_name(PEER).await.expect("lookup").expect("peer exists");
        assert_eq!(peer_link.mac, peer_mac);

        assert_eq!(nl.links_with_prefix("lxc").await.expect("scan"), vec![(HOST.to_string(), created.index)]);
        assert_eq!(nl.links_with_prefix("tmp1a2b").await.expect("scan"), vec![(PEER.to_string(), peer_link.index)]);
        assert!(nl.links_with_prefix("crs-none").await.expect("scan").is_empty());
    });
}

#[test]
fn create_veth_replaces_a_leftover() {
    in_netns(|| async {
        let nl = connect();
        let first = nl.create_veth(HOST, PEER, 1500, random_mac()).await.expect("first veth");

        // A crash left the pair behind: creating it again replaces it.
        let second = nl.create_veth(HOST, PEER, 1400, random_mac()).await.expect("recreate");
        assert_ne!(first.index, second.index, "the leftover was replaced");
        assert_eq!(link_json(HOST)["mtu"].as_u64(), Some(1400));
        assert_eq!(link_json(PEER)["mtu"].as_u64(), Some(1400));

        // Whatever kind of link holds the name, it gives way.
        assert!(nl.delete_link(HOST).await.expect("delete"));
        run(&["ip", "link", "add", HOST, "type", "bridge"]);
        let third = nl.create_veth(HOST, PEER, 1500, random_mac()).await.expect("over a bridge");
        assert_eq!(link_json(HOST)["linkinfo"]["info_kind"].as_str(), Some("veth"));
        assert_eq!(nl.link_by_name(HOST).await.expect("lookup"), Some(third));
    });
}

#[test]
fn failed_create_veth_leaves_nothing_behind() {
    in_netns(|| async {
        let nl = connect();
        run(&["ip", "link", "add", PEER, "type", "bridge"]);

        let err = nl.create_veth(HOST, PEER, 1500, random_mac()).await.expect_err("the peer name is taken");
        assert!(err.is_exists(), "{err}");
        assert_eq!(err.to_string(), format!("create veth {HOST}: file exists"));
        assert!(!link_exists(HOST), "no host side left behind");
        assert_eq!(link_json(PEER)["linkinfo"]["info_kind"].as_str(), Some("bridge"));

        let err = nl.create_veth("lxc-name-far-too-long", PEER, 1500, random_mac()).await.expect_err("name too long");
        assert!(err.to_string().contains("invalid interface name"), "{err}");
    });
}

#[test]
fn delete_link_is_idempotent() {
    in_netns(|| async {
        let nl = connect();
        nl.create_veth(HOST, PEER, 1500, random_mac()).await.expect("create veth");

        assert!(nl.delete_link(HOST).await.expect("first delete"));
        assert!(!link_exists(HOST));
        assert!(!link_exists(PEER), "deleting one end deletes the pair");
        assert!(!nl.delete_link(HOST).await.expect("second delete"));
        assert_eq!(nl.link_by_name(HOST).await.expect("lookup"), None);
        assert_eq!(nl.link_by_name("nosuchlink0").await.expect("lookup"), None);
    });
}

#[test]
fn endpoint_routes_and_neighbours() {
    in_netns(|| async {
        let nl = connect();
        let HostLink { index, .. } = nl.create_veth(HOST, PEER, 1500, random_mac()).await.expect("create veth");
        let v4 = ip("10.251.0.5");
        let v6 = ip("fdc1:1a00:98::5");
        let mac = random_mac();
        let proto = ROUTE_PROTOCOL.to_string();

        for _ in 0..2 {
            // The second round checks that adding again is harmless.
            nl.add_endpoint_route(index, v4, mac).await.expect("add ipv4");
            nl.add_endpoint_route(index, v6, mac).await.expect("add ipv6");
        }

        let routes4 = run(&["ip", "-4", "route", "show", "proto", &proto]);
        assert_eq!(routes4.lines().count(), 1, "{routes4}");
        // "linkdown" follows while the peer is down.
        assert!(routes4.starts_with(&format!("10.251.0.5 dev {HOST} scope link")), "{routes4}");
        let routes6 = run(&["ip", "-6", "route", "show", "proto", &proto]);
        assert_eq!(routes6.lines().count(), 1, "{routes6}");
        assert!(routes6.starts_with(&format!("fdc1:1a00:98::5 dev {HOST} ")), "{routes6}");

        let neigh4 = run(&["ip", "-4", "neigh", "show", "dev", HOST]);
        assert_eq!(neigh4.trim(), format!("10.251.0.5 lladdr {} PERMANENT", mac_text(mac)));
        let neigh6 = run(&["ip", "-6", "neigh", "show", "dev", HOST]);
        assert!(neigh6.contains(&format!("fdc1:1a00:98::5 lladdr {} PERMANENT", mac_text(mac))), "{neigh6}");

        // A new MAC for the same address replaces the neighbour entry.
        let other_mac = random_mac();
        nl.add_endpoint_route(index, v6, other_mac).await.expect("re-add ipv6");
        let neigh6 = run(&["ip", "-6", "neigh", "show", "dev", HOST]);
        assert!(neigh6.contains(&mac_text(other_mac)), "{neigh6}");
        assert!(!neigh6.contains(&mac_text(mac)), "{neigh6}");

        for _ in 0..2 {
            nl.remove_endpoint_route(index, v4).await.expect("remove ipv4");
            nl.remove_endpoint_route(index, v6).await.expect("remove ipv6");
        }
        assert_eq!(run(&["ip", "route", "show", "proto", &proto]).trim(), "");
        assert_eq!(run(&["ip", "-6", "route", "show", "proto", &proto]).trim(), "");
        assert_eq!(run(&["ip", "-4", "neigh", "show", "dev", HOST]).trim(), "");
        assert!(!run(&["ip", "-6", "neigh", "show", "dev", HOST]).contains("fdc1:1a00:98::5"));

        // Once the link is gone, removing is still fine.
        nl.add_endpoint_route(index, v4, mac).await.expect("add again");
        assert!(nl.delete_link(HOST).await.expect("delete veth"));
        nl.remove_endpoint_route(index, v4).await.expect("remove after the link is gone");
        nl.remove_endpoint_route(index, v6).await.expect("remove after the link is gone");
    });
}

#[test]
fn add_endpoint_route_on_a_missing_link_fails() {
    in_netns(|| async {
        let nl = connect();
        let err = nl.add_endpoint_route(4242, ip("10.251.0.9"), random_mac()).await.expect_err("no such link");
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().starts_with("add route 10.251.0.9/32"), "{err}");
    });
}

#[test]
fn routed_prefixes_lists_the_main_table_without_defaults() {
    in_netns(|| async {
        let nl = connect();
        uplink("crs0", 1500);
        run(&["ip", "route", "add", "10.251.0.0/24", "dev", "crs0"]);
        run(&["ip", "-6", "route", "add", "fdc1:1a00:98::/64", "dev", "crs0"]);
        run(&["ip", "route", "add", "default", "dev", "crs0"]);
        run(&["ip", "-6", "route", "add", "default", "dev", "crs0"]);
        run(&["ip", "route", "add", "unreachable", "10.251.9.0/24"]);
        run(&["ip", "route", "add", "10.251.7.0/24", "dev", "crs0", "table", "100"]);
        let crs0 = nl.link_by_name("crs0").await.expect("lookup").expect("crs0").index;

        let prefixes = nl.routed_prefixes().await.expect("routed prefixes");
        let want = [
            Prefix { addr: ip("10.251.0.0"), len: 24, ifindex: Some(crs0) },
            Prefix { addr: ip("fdc1:1a00:98::"), len: 64, ifindex: Some(crs0) },
            Prefix { addr: ip("10.251.9.0"), len: 24, ifindex: None },
        ];
        for prefix in &want {
            assert!(prefixes.contains(prefix), "{prefix:?} missing from {prefixes:?}");
        }
        assert!(prefixes.iter().all(|p| p.len > 0), "no default routes: {prefixes:?}");
        assert!(
            prefixes.iter().all(|p| !matches!(p.addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 || a.segments()[0] >> 8 == 0xff)),
            "no link-local or multicast prefixes: {prefixes:?}"
        );
        assert!(!prefixes.iter().any(|p| p.addr == ip("10.251.7.0")), "only the main table: {prefixes:?}");
        assert!(
            run(&["ip", "-6", "route", "show", "table", "main"]).contains("fe80::/64"),
            "the namespace does have a link-local route to skip"
        );
    });
}

#[test]
fn default_route_mtu_follows_the_default_route() {
    in_netns(|| async {
        let nl = connect();
        assert_eq!(nl.default_route_mtu().await.expect("no default route"), None);

        uplink("crs0", 1400);
        uplink("crs1", 1300);

        // IPv6 only.
        run(&["ip", "-6", "route", "add", "default", "dev", "crs1"]);
        assert_eq!(nl.default_route_mtu().await.expect("ipv6 default"), Some(1300));

        // IPv4 wins over IPv6.
        run(&["ip", "route", "add", "default", "dev", "crs0"]);
        assert_eq!(nl.default_route_mtu().await.expect("ipv4 default"), Some(1400));

        // A smaller MTU on the route itself counts.
        run(&["ip", "route", "replace", "default", "dev", "crs0", "mtu", "1280"]);
        assert_eq!(nl.default_route_mtu().await.expect("route mtu"), Some(1280));

        run(&["ip", "route", "del", "default"]);
        run(&["ip", "-6", "route", "del", "default"]);
        assert_eq!(nl.default_route_mtu().await.expect("defaults removed"), None);
    });
}

#[test]
fn connect_outside_a_runtime_is_an_error() {
    support::require_root();
    let err = Netlink::connect().expect_err("no runtime");
    assert!(err.to_string().contains("no tokio runtime"), "{err}");
}

#[test]
fn concurrent_dumps_take_turns_instead_of_failing() {
    in_netns(|| async {
        uplink("crsup0", 1400);
        run(&["ip", "addr", "add", "10.99.0.1/24", "dev", "crsup0"]);
        let netlink = std::sync::Arc::new(connect());
        // One netlink socket runs one dump at a time; dozens of calls at once must all work
        // (concurrent Joins and the host address refresh share the socket).
        let mut tasks = Vec::new();
        for i in 0..30 {
            let netlink = netlink.clone();
            tasks.push(tokio::spawn(async move {
                match i % 3 {
                    0 => netlink.routed_prefixes().await.map(|p| p.len()),
                    1 => netlink.host_addresses().await.map(|a| a.len()),
                    _ => netlink.default_route_mtu().await.map(|m| m.map_or(0, |m| m as usize)),
                }
            }));
        }
        for task in tasks {
            task.await.expect("task").expect("a dump that overlapped another");
        }
        assert!(netlink.host_addresses().await.expect("addresses").contains(&ip("10.99.0.1")));
    });
}
