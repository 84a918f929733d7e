//! End-to-end: a real dockerd, the real daemon, real containers and packets.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use integration::env::Env;
use integration::*;

const PLUGIN: &str = "crs-e2e";
const PREFIX: &str = "crs-e2e-";

fn setup() -> Env {
    setup_with(&[])
}

fn setup_with(env: &[(&str, &str)]) -> Env {
    Env::setup(PLUGIN, PREFIX, env)
}

fn ping(from: &str, to: &str) -> Result<()> {
    let (ok, out) = exec(from, &["ping", "-c", "2", "-W", "2", to])?;
    anyhow::ensure!(ok, "{from} cannot ping {to}: {out}");
    Ok(())
}

#[test]
fn networks_are_created_inspected_and_removed() {
    let env = setup();
    let auto = format!("{PREFIX}auto");
    let fixed = format!("{PREFIX}fixed");
    let plain = format!("{PREFIX}plain");
    env.network(&auto, &["--ipv6"]).expect("network without --subnet");
    env.network(
        &fixed,
        &["--ipv6", "--subnet", "10.231.0.0/24", "--ip-range", "10.231.0.128/25", "--subnet", "fdc1:1a00:77::/64"],
    )
    .expect("network with --subnet");
    env.network(&plain, &[]).expect("network without --ipv6");

    let info = inspect(&auto).expect("inspect");
    let subnets: Vec<&str> =
        info["IPAM"]["Config"].as_array().expect("config").iter().filter_map(|c| c["Subnet"].as_str()).collect();
    assert_eq!(subnets.len(), 2, "{info}");
    assert!(subnets.iter().any(|s| s.starts_with("10.220.")), "{subnets:?}");
    assert!(subnets.iter().any(|s| s.starts_with("fdc1:1a00:")), "{subnets:?}");
    assert_eq!(env.daemon.networks().expect("list").len(), 3);

    // Explicit addresses (--ip/--ip6) and the dynamic range.
    let c1 = format!("{PREFIX}c1");
    let c2 = format!("{PREFIX}c2");
    run_container(&c1, &["--network", &fixed, "--ip", "10.231.0.10", "--ip6", "fdc1:1a00:77::10"]).expect("run --ip");
    run_container(&c2, &["--network", &fixed]).expect("run");
    assert_eq!(addresses(&c1, &fixed).expect("addrs"), ("10.231.0.10".to_owned(), "fdc1:1a00:77::10".to_owned()));
    let (v4, _) = addresses(&c2, &fixed).expect("addrs");
    assert_eq!(v4, "10.231.0.128", "--ip-range bounds dynamic addresses");

    // Refusals come back as messages a user can act on.
    let msg = env.network_fails(&format!("{PREFIX}dup"), &["--subnet", "10.231.0.0/16"]);
    assert!(msg.contains("overlaps 10.231.0.0/24"), "{msg}");
    let msg = docker_fails(&["network", "create", "-d", PLUGIN, &format!("{PREFIX}default-ipam")])
        .expect("default IPAM refused");
    assert!(msg.contains("--ipam-driver"), "{msg}");
    let msg = docker_fails(&["run", "--rm", "--network", &fixed, "--ip", "10.231.0.10", IMAGE, "true"])
        .expect("address in use");
    assert!(msg.contains("10.231.0.10 is already in use"), "{msg}");
    let msg = env.network_fails(&format!("{PREFIX}mtu"), &["-o", "mtu=9"]);
    assert!(msg.contains("invalid -o mtu=\"9\""), "{msg}");

    env.finish(&[&c1, &c2], &[&auto, &fixed, &plain]);
}

#[test]
fn containers_reach_each_other_and_their_gateways() {
    let env = setup();
    let net = format!("{PREFIX}ping");
    let v4only = format!("{PREFIX}v4only");
    env.network(&net, &["--ipv6"]).expect("network");
    env.network(&v4only, &[]).expect("network without --ipv6");
    let (a, b, c) = (format!("{PREFIX}a"), format!("{PREFIX}b"), format!("{PREFIX}c"));
    run_container(&a, &["--network", &net]).expect("a");
    run_container(&b, &["--network", &net]).expect("b");
    run_container(&c, &["--network", &v4only]).expect("c");
    let (a4, a6) = addresses(&a, &net).expect("a addrs");
    let (b4, b6) = addresses(&b, &net).expect("b addrs");
    let (_, c6) = addresses(&c, &v4only).expect("c addrs");
    assert!(!c6.is_empty(), "a network without --ipv6 still gives an IPv6 address");

    ping(&a, &b6).expect("IPv6 a -> b");
    ping(&b, &a6).expect("IPv6 b -> a");
    ping(&a, &b4).expect("IPv4 a -> b");
    ping(&c, &a6).expect("IPv6 across networks (one L3 space)");

    // The gateways answer.
    let gw4 = inspect(&a).expect("inspect")["NetworkSettings"]["Networks"][&net]["Gateway"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(gw4.starts_with("169.254."), "{gw4}");
    ping(&a, &gw4).expect("IPv4 gateway");
    ping(&a, "fe80::1%eth0").expect("IPv6 gateway");

    // Host routes, no bridge: a /32 and a /128 on eth0, default routes via the link-local gateways.
    let (_, addr) = exec(&a, &["ip", "addr", "show", "eth0"]).expect("ip addr");
    assert!(addr.contains(&format!("{a4}/32")) && addr.contains(&format!("{a6}/128")), "{addr}");
    let (_, routes6) = exec(&a, &["ip", "-6", "route"]).expect("routes");
    assert!(routes6.contains("default via fe80::1 dev eth0"), "{routes6}");

    // The datapath counted it.
    let endpoints = env.daemon.endpoints().expect("endpoints");
    assert_eq!(endpoints.len(), 3);
    for ep in &endpoints {
        assert!(ep["joined"] == true, "{ep}");
        assert!(ep["host_ifname"].as_str().is_some_and(|n| n.starts_with("lxc")), "{ep}");
    }
    let a_ep = endpoints.iter().find(|e| e["ipv6"] == a6.as_str()).expect("a listed");
    assert!(a_ep["counters"]["egress"]["packets"].as_u64().unwrap_or(0) >= 6, "{a_ep}");
    assert!(a_ep["counters"]["ingress"]["packets"].as_u64().unwrap_or(0) >= 4, "{a_ep}");
    let table = env.daemon.cli(&["endpoint", "list"]).expect("table");
    assert!(table.starts_with("ENDPOINT") && table.contains(&a6), "{table}");

    env.finish(&[&a, &b, &c], &[&net, &v4only]);
}

#[test]
fn twenty_concurrent_containers_are_all_connected() {
    let env = setup();
    let net = format!("{PREFIX}many");
    env.network(&net, &["--ipv6"]).expect("network");
    let names: Vec<String> = (0..20).map(|i| format!("{PREFIX}m{i}")).collect();
    let started: Vec<_> = names
        .iter()
        .map(|name| {
            let (name, net) = (name.clone(), net.clone());
            std::thread::spawn(move || run_container(&name, &["--network", &net]))
        })
        .collect();
    for handle in started {
        handle.join().expect("thread").expect("docker run");
    }
    let mut seen = BTreeSet::new();
    for name in &names {
        let (v4, v6) = addresses(name, &net).expect("addresses");
        assert!(seen.insert(v4.clone()) && seen.insert(v6.clone()), "duplicate address {v4} {v6}");
    }
    let (_, first6) = addresses(&names[0], &net).expect("addresses");
    let pings: Vec<_> = names[1..]
        .iter()
        .map(|name| {
            let (name, first6) = (name.clone(), first6.clone());
            std::thread::spawn(move || ping(&name, &first6))
        })
        .collect();
    for handle in pings {
        handle.join().expect("thread").expect("ping");
    }
    assert_eq!(env.daemon.endpoints().expect("endpoints").len(), 20);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    env.finish(&refs, &[&net]);
}

/// Parses busybox ping's summary: (transmitted, received).
fn ping_summary(out: &str) -> Option<(u32, u32)> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers =
        line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse::<u32>().ok());
    Some((numbers.next()??, numbers.next()??))
}

#[test]
fn connectivity_survives_kill_9_and_state_is_recovered() {
    let mut env = setup();
    let net = format!("{PREFIX}restart");
    env.network(&net, &["--ipv6"]).expect("network");
    let (a, b) = (format!("{PREFIX}ra"), format!("{PREFIX}rb"));
    run_container(&a, &["--network", &net]).expect("a");
    run_container(&b, &["--network", &net]).expect("b");
    let (a4, a6) = addresses(&a, &net).expect("addrs");
    let (b4, b6) = addresses(&b, &net).expect("addrs");

    // 80 pings, 100 ms apart, while the daemon is killed and restarted.
    let pinger = Command::new(DOCKER).args(["exec", &a, "ping", "-c", "80", "-i", "0.1", "-W", "1", &b6]).output();
    let pinger = std::thread::spawn(move || pinger);
    std::thread::sleep(Duration::from_secs(2));
    env.daemon.kill9().expect("kill -9");
    std::thread::sleep(Duration::from_secs(2));
    ping(&b, &a4).expect("IPv4 while the daemon is down");
    env.daemon.spawn().expect("restart");
    let out = pinger.join().expect("thread").expect("ping ran");
    let text = String::from_utf8_lossy(&out.stdout);
    let (sent, received) = ping_summary(&text).unwrap_or_else(|| panic!("no ping summary: {text}"));
    assert!(sent >= 80 && received + 2 >= sent, "lost {} of {sent} pings across the restart:\n{text}", sent - received);

    // The daemon recovered its state: both endpoints, joined, and their addresses stay taken.
    let endpoints = env.daemon.endpoints().expect("endpoints");
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    assert!(endpoints.iter().all(|e| e["joined"] == true));
    let c = format!("{PREFIX}rc");
    run_container(&c, &["--network", &net]).expect("new container after restart");
    let (c4, c6) = addresses(&c, &net).expect("addrs");
    assert!(![&a4, &b4].contains(&&c4) && ![&a6, &b6].contains(&&c6), "address handed out twice");
    ping(&c, &a6).expect("new container reaches an old one");

    // A clean stop: SIGTERM exits 0 and removes the socket it created.
    let code = env.daemon.terminate().expect("terminate");
    assert_eq!(code, Some(0));
    assert!(!env.daemon.plugin_socket.exists(), "plugin socket left behind");
    ping(&a, &b6).expect("datapath keeps forwarding with the daemon stopped");
    env.daemon.spawn().expect("start again");
    env.finish(&[&a, &b, &c], &[&net]);
}

#[test]
fn connect_disconnect_and_two_networks() {
    let env = setup();
    let (n1, n2) = (format!("{PREFIX}n1"), format!("{PREFIX}n2"));
    env.network(&n1, &["--ipv6"]).expect("n1");
    env.network(&n2, &["--ipv6"]).expect("n2");
    let (a, b, both) = (format!("{PREFIX}ca"), format!("{PREFIX}cb"), format!("{PREFIX}both"));
    run_container(&a, &["--network", &n1]).expect("a");
    run_container(&b, &["--network", &n2]).expect("b");
    let (_, b6) = addresses(&b, &n2).expect("b");

    docker(&["network", "connect", &n2, &a]).expect("connect a to n2");
    // b reaches a at its n2 address; a's replies leave through eth0 (its only default route)
    // with that source, which the datapath accepts as the container's own.
    let (_, a6_on_n2) = addresses(&a, &n2).expect("a on n2");
    ping(&b, &a6_on_n2).expect("b -> a's address on the second network");
    let (_, links) = exec(&a, &["ip", "-o", "link"]).expect("links");
    assert!(links.contains("eth0") && links.contains("eth1"), "{links}");
    let (_, routes) = exec(&a, &["ip", "route"]).expect("routes");
    assert_eq!(routes.matches("default").count(), 1, "one IPv4 default route:\n{routes}");
    let (_, routes6) = exec(&a, &["ip", "-6", "route"]).expect("routes");
    assert_eq!(routes6.matches("default").count(), 1, "one IPv6 default route:\n{routes6}");
    ping(&a, &b6).expect("a reaches b");
    assert_eq!(env.daemon.endpoints().expect("endpoints").len(), 3);

    docker(&["network", "disconnect", &n2, &a]).expect("disconnect");
    let (_, links) = exec(&a, &["ip", "-o", "link"]).expect("links");
    assert!(!links.contains("eth1"), "{links}");
    assert_eq!(env.daemon.endpoints().expect("endpoints").len(), 2);
    ping(&a, &b6).expect("still routed through eth0");

    // The other way round: b joins n1, then leaves n2, its first network. Each network has its
    // own IPv6 gateway, on-link through its own interface, so dockerd's default route is on the
    // interface of the network it chose and survives the other one going.
    docker(&["network", "connect", &n1, &b]).expect("connect b to n1");
    let (_, routes6) = exec(&b, &["ip", "-6", "route"]).expect("routes");
    // Host routes print without their /128: one per interface, to distinct gateways.
    let gateways: Vec<&str> =
        routes6.lines().filter(|l| l.starts_with("fe80::") && !l.starts_with("fe80::/")).collect();
    assert_eq!(gateways.len(), 2, "one on-link gateway route per interface:\n{routes6}");
    docker(&["network", "disconnect", &n2, &b]).expect("disconnect b from its first network");
    let (_, routes6) = exec(&b, &["ip", "-6", "route"]).expect("routes");
    assert!(routes6.lines().any(|l| l.starts_with("default via fe80::") && l.contains("dev eth1")), "{routes6}");
    let (a4, a6) = addresses(&a, &n1).expect("a on n1");
    ping(&b, &a6).expect("b reaches a over IPv6 through its remaining network");
    ping(&b, &a4).expect("and over IPv4");
    let (_, b6) = addresses(&b, &n1).expect("b on n1");

    // Attached to both networks from the start.
    let label = format!("{TEST_LABEL}=1");
    docker(&["create", "--name", &both, "--label", &label, "--network", &n1, IMAGE, "sleep", "3600"]).expect("create");
    docker(&["network", "connect", &n2, &both]).expect("connect before start");
    docker(&["start", &both]).expect("start on two networks");
    let (_, routes) = exec(&both, &["ip", "route"]).expect("routes");
    assert_eq!(routes.matches("default").count(), 1, "{routes}");
    ping(&both, &b6).expect("reaches b");
    docker(&["restart", "-t", "1", &both]).expect("restart on two networks");
    ping(&both, &b6).expect("reaches b after restart");

    env.finish(&[&a, &b, &both], &[&n1, &n2]);
}

#[test]
fn replies_leave_by_the_default_route_of_another_network() {
    let env = setup();
    let (n1, n2) = (format!("{PREFIX}r1"), format!("{PREFIX}r2"));
    env.network(&n1, &["--ipv6"]).expect("r1");
    env.network(&n2, &["--ipv6"]).expect("r2");
    let (a, b) = (format!("{PREFIX}ra"), format!("{PREFIX}rb"));
    run_container(&a, &["--network", &n2]).expect("a");
    run_container(&b, &["--network", &n2]).expect("b");
    // dockerd moves b's default routes to r1, which sorts first; r2's subnets stay routed
    // through r2's interface (eth0), so b answers a at once, while eth1's link-local address is
    // still tentative (duplicate address detection) and could not resolve r1's gateway yet.
    docker(&["network", "connect", &n1, &b]).expect("connect b to r1");
    let (b4, b6) = addresses(&b, &n2).expect("b on r2");
    for (to, what) in [(&b6, "IPv6"), (&b4, "IPv4")] {
        let (ok, out) = exec(&a, &["ping", "-c", "1", "-W", "1", to]).expect("exec");
        assert!(ok, "the first ping over {what} right after the connect is answered: {out}");
    }
    let (_, routes6) = exec(&b, &["ip", "-6", "route"]).expect("routes");
    let (_, routes4) = exec(&b, &["ip", "route"]).expect("routes");
    assert!(routes6.lines().any(|l| l.starts_with("default via fe80::") && l.contains("dev eth1")), "{routes6}");
    for routes in [&routes6, &routes4] {
        let subnet_routes = routes.lines().filter(|l| !l.starts_with("default") && l.contains(" via ")).count();
        assert_eq!(subnet_routes, 2, "each network's subnet through its own gateway:\n{routes}");
    }
    let (a4, a6) = addresses(&a, &n2).expect("a on r2");
    ping(&b, &a6).unwrap_or_else(|e| panic!("b reaches a over IPv6: {e}\n{routes6}"));
    ping(&b, &a4).expect("and over IPv4");
    env.finish(&[&a, &b], &[&n1, &n2]);
}

#[test]
fn compose_stack_up_down_up() {
    let env = setup();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/compose/docker-compose.yml");
    let project = format!("{PREFIX}compose");
    let compose = |args: &[&str]| -> Result<String> {
        let out = Command::new("docker-compose")
            .args(["-f", &file.to_string_lossy(), "-p", &project])
            .args(args)
            .env("CILIUM_RS_DRIVER", PLUGIN)
            .env("DOCKER_HOST", "unix:///var/run/docker.sock")
            .output()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        anyhow::ensure!(out.status.success(), "docker-compose {args:?}: {text}");
        Ok(text)
    };
    for round in 0..2 {
        compose(&["up", "-d"]).unwrap_or_else(|e| panic!("round {round}: {e:#}\n{}", env.daemon.log_text()));
        let client = format!("{project}_client_1");
        let web = format!("{project}_web_1");
        let network = format!("{project}_default");
        let (_, web6) = addresses(&web, &network).expect("web address");
        // By service name, over IPv6, through Docker's embedded DNS.
        let (ok, out) = exec(&client, &["ping", "-6", "-c", "2", "-W", "2", "web"]).expect("exec");
        assert!(ok && out.contains(&web6), "round {round}: ping -6 web: {out}");
        let (ok, page) = exec(&client, &["wget", "-q", "-O", "-", &format!("http://[{web6}]/")]).expect("exec");
        assert!(ok && page.contains("cilium-rs"), "round {round}: http over IPv6: {page}");
        // `ports:` — published on the host, reached from it through the socket programs.
        let page =
            run(&["sh", "-c", "printf 'GET / HTTP/1.0\r\n\r\n' | busybox nc -w 2 127.0.0.1 18080"]).unwrap_or_default();
        assert!(page.contains("cilium-rs"), "round {round}: localhost:18080 -> web:80: {page}");
        compose(&["down"]).expect("down");
    }
    env.finish(&[], &[]);
}

#[test]
fn reconciliation_drops_what_dockerd_does_not_know_and_keeps_the_rest() {
    // Reconcile every second; anything older than 2 s that dockerd does not know goes.
    let env = setup_with(&[("CILIUM_RS_RECONCILE_INTERVAL", "1"), ("CILIUM_RS_RECONCILE_GRACE", "2")]);
    let net = format!("{PREFIX}recon");
    env.network(&net, &["--ipv6"]).expect("network");
    let (a, b) = (format!("{PREFIX}rca"), format!("{PREFIX}rcb"));
    run_container(&a, &["--network", &net]).expect("a");
    run_container(&b, &["--network", &net]).expect("b");

    // What a lost dockerd call leaves behind: a network and a joined endpoint dockerd never
    // heard of (made here through the plugin socket directly).
    let d = &env.daemon;
    let orphan_net = "0f".repeat(32);
    let orphan_ep = "0e".repeat(32);
    let v4 = d
        .plugin_call(
            "IpamDriver.RequestPool",
            &serde_json::json!({"AddressSpace": "CiliumRsLocal", "Pool": "", "V6": false}),
        )
        .expect("pool");
    d.plugin_call(
        "NetworkDriver.CreateNetwork",
        &serde_json::json!({"NetworkID": orphan_net, "Options": {}, "IPv4Data": [{"AddressSpace": "CiliumRsLocal", "Pool": v4["Pool"]}]}),
    )
    .expect("network");
    let addr = d
        .plugin_call("IpamDriver.RequestAddress", &serde_json::json!({"PoolID": v4["PoolID"], "Address": ""}))
        .expect("address");
    d.plugin_call(
        "NetworkDriver.CreateEndpoint",
        &serde_json::json!({"NetworkID": orphan_net, "EndpointID": orphan_ep, "Interface": {"Address": addr["Address"]}}),
    )
    .expect("endpoint");
    d.plugin_call(
        "NetworkDriver.Join",
        &serde_json::json!({"NetworkID": orphan_net, "EndpointID": orphan_ep, "SandboxKey": ""}),
    )
    .expect("join");
    let orphan_link = format!("lxc{}", &orphan_ep[..11]);
    assert!(host_lxc_links().expect("links").contains(&orphan_link));
    assert_eq!(d.endpoints().expect("endpoints").len(), 3);

    wait_until(Duration::from_secs(20), "the orphans to be reconciled away", || {
        d.endpoints().map(|e| e.len() == 2).unwrap_or(false) && d.networks().map(|n| n.len() == 1).unwrap_or(false)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    assert!(!host_lxc_links().expect("links").contains(&orphan_link), "the orphan's veth is gone");
    // What dockerd knows stays, and works.
    let (_, b6) = addresses(&b, &net).expect("b");
    ping(&a, &b6).expect("live containers untouched");
    assert!(d.log_text().contains("dockerd no longer knows this endpoint"));

    env.finish(&[&a, &b], &[&net]);
}
