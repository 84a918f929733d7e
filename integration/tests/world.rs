//! End-to-end: containers reach a world outside the host — a namespace the test creates behind
//! a veth pair, with no route back to any container subnet — through the egress programs,
//! masqueraded to the host's addresses, over IPv4 and IPv6 (ICMP echo, TCP, UDP, and ICMP
//! errors translated back); `--internal` networks reach nothing there; the host's own and
//! Docker's traffic on the egress interface is left alone.

use std::time::Duration;

use integration::dockerd::{restart_dockerd, LiveRestore};
use integration::env::{map_entries, Env};
use integration::outside::*;
use integration::*;

const PLUGIN: &str = "crs-world";
const PREFIX: &str = "crs-world-";
const OUTSIDE_NS: &str = "crs-world-out";

/// The daemon (egress interface: the outside pair) and the outside world.
fn setup() -> (Env, Outside) {
    let env = Env::setup(PLUGIN, PREFIX, &[("CILIUM_RS_EGRESS_INTERFACE", OUTSIDE_IF)]);
    let outside = Outside::new(OUTSIDE_NS).expect("the outside namespace");
    (env, outside)
}

fn ping(from: &str, addr: &str) -> bool {
    exec(from, &["ping", "-c", "1", "-W", "2", addr]).expect("exec").0
}

/// The source address of a tcpdump summary line (`IP 198.51.100.1.61234 > …`).
fn source_of(line: &str) -> Option<String> {
    let mut words = line.split_whitespace().skip_while(|w| *w != "IP" && *w != "IP6");
    let family = words.next()?;
    let source = words.next()?;
    // tcpdump appends the port after a dot, for both families.
    let host = match (family, source.rsplit_once('.')) {
        ("IP", Some((addr, port))) if source.matches('.').count() == 4 && port.parse::<u16>().is_ok() => addr,
        ("IP6", Some((addr, port))) if port.parse::<u16>().is_ok() => addr,
        _ => source,
    };
    Some(host.trim_end_matches(':').to_owned())
}

/// Packets that are not the link's own business (neighbour discovery, multicast listener
/// reports: link-local sources; ARP).
fn is_traffic(line: &str) -> bool {
    source_of(line).is_some_and(|s| !s.starts_with("fe80:") && s != "::")
}

/// What the tests capture on the outside host: unicast IP of either family.
const UNICAST_IP: &str = "(ip or ip6) and not ip multicast and not ip6 multicast";

/// Whether both egress programs sit on the egress interface.
fn egress_programs_attached() -> bool {
    let programs = tc_programs(OUTSIDE_IF).expect("programs");
    programs.iter().any(|p| p == "crs_from_world") && programs.iter().any(|p| p == "crs_to_world")
}

#[test]
fn containers_reach_outside_masqueraded_on_both_families() {
    let (env, mut outside) = setup();
    outside.serve_http(&[80]).expect("http");
    let dns = std::path::Path::new(env!("CARGO_BIN_EXE_dns-stub"));
    outside.spawn(dns, &["198.51.100.77", "2001:db8:100::77", OUTSIDE4, OUTSIDE6]).expect("dns stub");
    let net = format!("{PREFIX}out");
    env.network(&net, &["--ipv6"]).expect("network");
    let c = format!("{PREFIX}c");
    run_container(&c, &["--network", &net]).expect("container");
    let (v4, v6) = addresses(&c, &net).expect("addresses");
    wait_until(Duration::from_secs(10), "the outside HTTP server", || {
        http_get(&c, OUTSIDE4, 80, 2).is_ok_and(|r| r.is_some())
    })
    .expect("the outside host answers HTTP through masquerading");

    let capture = outside.capture(UNICAST_IP).expect("capture");
    for addr in [OUTSIDE4, OUTSIDE6] {
        assert!(ping(&c, addr), "ping {addr}");
        let body = http_get(&c, addr, 80, 2).expect("exec");
        assert!(body.is_some_and(|b| b.contains("outside:80")), "HTTP to {addr}");
        let (ok, out) = exec(&c, &["nslookup", "outside.test", addr]).expect("exec");
        let answered = ok && out.contains("198.51.100.77") && out.contains("2001:db8:100::77");
        assert!(answered, "DNS over UDP to {addr}: {out}\n{:#?}", env.daemon.endpoints());
        // The probes are UDP; the last hop answers with port unreachable, an ICMP error about
        // the masqueraded probe, which only translation can bring back to the container.
        let trace = if addr.contains(':') { "traceroute6" } else { "traceroute" };
        let (_, out) = exec(&c, &[trace, "-n", "-m", "3", "-q", "1", "-w", "2", addr]).expect("exec");
        let last = out.lines().last().unwrap_or_default();
        assert!(last.contains(addr), "{trace} to {addr} ends at it (ICMP errors translated back):\n{out}");
    }
    let lines = capture.lines().expect("captured");
    let traffic: Vec<&String> = lines.iter().filter(|l| is_traffic(l)).collect();
    for (what, needle) in [
        ("ICMP echo", "ICMP echo request"),
        ("ICMPv6 echo", "ICMP6, echo request"),
        ("TCP to port 80", ".80: Flags [S]"),
        ("UDP to port 53", ".53: "),
    ] {
        assert!(traffic.iter().any(|l| l.contains(needle)), "the outside host saw no {what}:\n{lines:#?}");
    }
    for line in &traffic {
        let source = source_of(line).unwrap_or_default();
        assert!(source == HOST4 || source == HOST6, "a packet left with source {source}, not the host's: {line}");
        assert!(!line.contains(&v4) && !line.contains(&v6), "the container's address left the host: {line}");
    }

    let eps = env.daemon.endpoints().expect("endpoints");
    assert!(eps[0]["counters"]["drops"].as_object().is_some_and(|d| d.is_empty()), "no drops: {}", eps[0]);
    env.finish(&[&c], &[&net]);
}

#[test]
fn host_and_docker_bridge_traffic_on_the_egress_interface_passes_untouched() {
    let (env, mut outside) = setup();
    outside.serve_http(&[80]).expect("http");
    let net = format!("{PREFIX}untouched");
    env.network(&net, &["--ipv6"]).expect("network");
    assert!(egress_programs_attached(), "the egress programs are attached while a network needs them");
    let capture = outside.capture(UNICAST_IP).expect("capture");
    for addr in [OUTSIDE4, OUTSIDE6] {
        run(&["ping", "-c", "1", "-W", "2", addr]).unwrap_or_else(|e| panic!("the host pings {addr}: {e}"));
    }
    wait_until(Duration::from_secs(10), "the outside HTTP server, from the host", || {
        run(&["sh", "-c", &format!("echo GET | busybox nc -w 2 {OUTSIDE4} 80")]).is_ok_and(|o| o.contains("200 OK"))
    })
    .expect("the host's own TCP");
    // A container on Docker's own bridge, masqueraded by netfilter, side by side.
    let bridged = format!("{PREFIX}bridged");
    let label = format!("{TEST_LABEL}=1");
    let out = docker(&[
        "run",
        "--rm",
        "--name",
        &bridged,
        "--label",
        &label,
        "--network",
        "bridge",
        IMAGE,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        OUTSIDE4,
    ]);
    assert!(out.is_ok(), "a Docker bridge container pings the outside host: {out:?}");
    let lines = capture.lines().expect("captured");
    assert!(lines.iter().filter(|l| l.contains("ICMP echo request")).count() >= 2, "{lines:#?}");
    for line in lines.iter().filter(|l| is_traffic(l)) {
        let source = source_of(line).unwrap_or_default();
        assert!(source == HOST4 || source == HOST6, "{line}");
    }
    for map in ["crs_nat_out", "crs_nat_in"] {
        let entries = map_entries(&env.daemon, map).expect("dump");
        assert!(entries.is_empty(), "{map} holds translations of traffic that is not an endpoint's: {entries:?}");
    }
    env.finish(&[], &[&net]);
    let programs = tc_programs(OUTSIDE_IF).expect("programs");
    assert!(programs.is_empty(), "no program stays on the egress interface once no network needs it: {programs:?}");
}

#[test]
fn internal_networks_reach_nothing_outside() {
    let (env, mut outside) = setup();
    outside.serve_http(&[80]).expect("http");
    let internal = format!("{PREFIX}internal");
    env.network(&internal, &["--ipv6", "--internal"]).expect("internal network");
    assert!(
        tc_programs(OUTSIDE_IF).expect("programs").is_empty(),
        "an internal network alone needs no program on the egress interface"
    );
    let open = format!("{PREFIX}open");
    env.network(&open, &["--ipv6"]).expect("network");
    let (inside, free) = (format!("{PREFIX}inside"), format!("{PREFIX}free"));
    run_container(&inside, &["--network", &internal]).expect("inside");
    run_container(&free, &["--network", &open]).expect("free");
    wait_until(Duration::from_secs(10), "the outside HTTP server", || {
        http_get(&free, OUTSIDE4, 80, 2).is_ok_and(|r| r.is_some())
    })
    .expect("a container of the other network reaches outside");
    for addr in [OUTSIDE4, OUTSIDE6] {
        assert!(!ping(&inside, addr), "an internal container pinged {addr}");
        assert!(http_get(&inside, addr, 80, 2).expect("exec").is_none(), "an internal container reached {addr}:80");
        assert!(ping(&free, addr), "the open network's container pings {addr}");
    }
    let eps = env.daemon.endpoints().expect("endpoints");
    let ep = eps.iter().find(|e| e["container_name"] == inside.as_str()).expect("listed");
    assert!(
        ep["counters"]["drops"]["INTERNAL_NETWORK/egress"]["packets"].as_u64().unwrap_or(0) >= 4,
        "counted as INTERNAL_NETWORK: {ep}"
    );
    // Containers of an internal network still reach each other and the host.
    let (v4, _) = addresses(&free, &open).expect("addresses");
    assert!(ping(&inside, &v4), "internal -> another network's container");
    env.finish(&[&inside, &free], &[&internal, &open]);
}

/// An HTTP GET from the outside host; the answer's body when there is one.
fn outside_get(outside: &Outside, addr: &str, port: u16) -> Option<String> {
    outside.sh(&format!("echo GET | busybox nc -w 2 {addr} {port}")).ok().filter(|out| out.contains("200 OK"))
}

/// An HTTP GET from the host itself (its own sockets).
fn host_get(addr: &str, port: u16) -> Option<String> {
    run(&["sh", "-c", &format!("echo GET | busybox nc -w 2 {addr} {port}")]).ok().filter(|out| out.contains("200 OK"))
}

/// The host ports published to a container, as the endpoint list shows them.
fn published(env: &Env, container: &str) -> Vec<String> {
    let eps = env.daemon.endpoints().expect("endpoints");
    let ep = eps.iter().find(|e| e["container_name"] == container).unwrap_or_else(|| panic!("{container} listed"));
    ep["published"].as_array().into_iter().flatten().filter_map(|p| p.as_str().map(str::to_owned)).collect()
}

/// Runs the DNS stub in a container's network namespace (the image has no UDP server).
fn serve_dns_in(container: &str, network: &str) -> std::process::Child {
    let pid = inspect(container).expect("inspect")["State"]["Pid"].as_u64().expect("pid");
    let (v4, v6) = addresses(container, network).expect("addresses");
    std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg(env!("CARGO_BIN_EXE_dns-stub"))
        .args(["198.51.100.77", "2001:db8:100::77", &v4, &v6])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("dns stub in the container")
}

#[test]
fn published_ports_are_reachable_from_outside_the_host_and_other_containers() {
    let (env, outside) = setup();
    let net = format!("{PREFIX}pub");
    env.network(&net, &["--ipv6"]).expect("network");
    let (web, web2, client) = (format!("{PREFIX}web"), format!("{PREFIX}web2"), format!("{PREFIX}client"));
    let serve = http_servers("web", &[80, 82]);
    let ports = ["-p", "8080:80", "-p", "[::]:8081:80", "-p", "5353:53/udp", "-p", "9000-9001:82"];
    let mut args = vec!["--network", net.as_str()];
    args.extend(ports);
    run_container_with(&web, &args, &["sh", "-c", &serve]).expect("web");
    run_container_with(&web2, &["--network", &net, "-p", "9000-9001:82"], &["sh", "-c", &http_servers("web2", &[82])])
        .expect("web2");
    run_container(&client, &["--network", &net]).expect("client");
    let mut dns = serve_dns_in(&web, &net);
    let mut ports = published(&env, &web);
    ports.sort();
    assert_eq!(ports, ["5353->53/udp", "8080->80/tcp", "9000->82/tcp", "[::]:8081->80/tcp"]);
    assert_eq!(published(&env, &web2), ["9001->82/tcp"], "the next free port of the range");
    wait_until(Duration::from_secs(10), "web's servers", || outside_get(&outside, HOST4, 8080).is_some())
        .expect("published port reachable from outside");

    for host in [HOST4, HOST6] {
        let body = outside_get(&outside, host, 8080).unwrap_or_default();
        assert!(body.contains("web:80"), "outside -> {host}:8080: {body:?}");
        assert!(outside_get(&outside, host, 9000).is_some_and(|b| b.contains("web:82")), "{host}:9000 -> web");
        assert!(outside_get(&outside, host, 9001).is_some_and(|b| b.contains("web2:82")), "{host}:9001 -> web2");
        // Hairpin: another container through the host's address.
        let body = http_get(&client, host, 8080, 2).expect("exec").unwrap_or_default();
        assert!(body.contains("web:80"), "client -> {host}:8080: {body:?}");
        let (ok, out) = exec(&client, &["nslookup", "outside.test", &format!("{}:5353", bracket(host))]).expect("exec");
        assert!(ok && out.contains("198.51.100.77"), "client -> {host}:5353/udp: {out}");
        let out = outside.sh(&format!("busybox nslookup outside.test {}:5353", bracket(host))).unwrap_or_default();
        assert!(out.contains("198.51.100.77"), "outside -> {host}:5353/udp: {out}");
    }
    assert!(outside_get(&outside, HOST6, 8081).is_some(), "[::]:8081 is published on IPv6");
    assert!(outside_get(&outside, HOST4, 8081).is_none(), "[::]:8081 is not published on IPv4");
    // The host's own connections: loopback and its addresses, both families.
    for addr in ["127.0.0.1", "::1", HOST4, HOST6] {
        assert!(host_get(addr, 8080).is_some_and(|b| b.contains("web:80")), "host -> {addr}:8080");
    }
    let out = run(&["busybox", "nslookup", "outside.test", "127.0.0.1:5353"]).unwrap_or_default();
    assert!(out.contains("198.51.100.77"), "host -> 127.0.0.1:5353/udp: {out}");

    // Taken: by a container, and for host processes.
    let taken = format!("{PREFIX}taken");
    let label = format!("{TEST_LABEL}=1");
    let err = docker_fails(&[
        "run",
        "-d",
        "--name",
        &taken,
        "--label",
        &label,
        "--network",
        &net,
        "-p",
        "8080:81",
        IMAGE,
        "sleep",
        "60",
    ])
    .expect("a second container on the same host port is refused");
    assert!(err.contains("Bind for *:8080/tcp failed: port is already allocated"), "{err}");
    let _ = docker(&["rm", "-f", &taken]);
    assert!(std::net::TcpListener::bind(("0.0.0.0", 8080)).is_err(), "a host process cannot take a published port");
    assert!(std::net::UdpSocket::bind(("::", 5353)).is_err(), "nor a published UDP port");

    let _ = dns.kill();
    let _ = dns.wait();
    docker(&["rm", "-f", &web]).expect("rm web");
    assert!(std::net::TcpListener::bind(("0.0.0.0", 8080)).is_ok(), "free again once the container is gone");
    assert!(outside_get(&outside, HOST4, 8080).is_none(), "and no longer forwarded");
    env.finish(&[&web2, &client], &[&net]);
}

#[test]
fn publish_all_exposed_ports_picks_free_host_ports() {
    let (env, outside) = setup();
    let net = format!("{PREFIX}pall");
    env.network(&net, &["--ipv6"]).expect("network");
    let web = format!("{PREFIX}pweb");
    run_container_with(&web, &["--network", &net, "--expose", "80", "-P"], &["sh", "-c", &http_servers("pweb", &[80])])
        .expect("web");
    let ports = published(&env, &web);
    let host_port: u16 = ports
        .first()
        .and_then(|p| p.strip_suffix("->80/tcp"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("one host port for 80/tcp: {ports:?}"));
    let ephemeral = cilium_rs::egress::host_ephemeral_ports().expect("ephemeral ports");
    assert!(ephemeral.contains(host_port), "{host_port} comes from the host's ephemeral ports {ephemeral}");
    wait_until(Duration::from_secs(10), "the picked port", || outside_get(&outside, HOST4, host_port).is_some())
        .expect("reachable from outside on the picked port");
    env.finish(&[&web], &[&net]);
}

#[test]
fn a_published_port_obeys_ingress_policy_world_refused_host_allowed() {
    let (env, outside) = setup();
    let net = format!("{PREFIX}ppol");
    env.network(&net, &["--ipv6"]).expect("network");
    let web = format!("{PREFIX}polweb");
    run_container_with(
        &web,
        &["--network", &net, "-l", "id=polweb", "-p", "8090:80"],
        &["sh", "-c", &http_servers("polweb", &[80])],
    )
    .expect("web");
    wait_until(Duration::from_secs(20), "web's identity", || {
        env.daemon.endpoints().is_ok_and(|eps| eps.iter().any(|e| e["identity"].as_u64().unwrap_or(0) >= 256))
    })
    .expect("identity");
    wait_until(Duration::from_secs(10), "web", || outside_get(&outside, HOST4, 8090).is_some())
        .expect("reachable without policy");
    env.import_policy(
        r#"[{"endpointSelector": {"matchLabels": {"id": "polweb"}},
             "ingress": [{"fromEntities": ["host"]}]}]"#,
    )
    .expect("import");
    for host in [HOST4, HOST6] {
        assert!(outside_get(&outside, host, 8090).is_none(), "outside (world) -> {host}:8090 refused");
        assert!(host_get(host, 8090).is_some(), "the host -> {host}:8090 allowed");
    }
    assert!(env.drops(&web, "POLICY_DENIED", "ingress") > 0, "world's attempts counted on web");
    // A CIDR rule lets exactly that outside address in.
    env.daemon.cli(&["policy", "delete", "--all"]).expect("delete");
    env.import_policy(
        r#"[{"endpointSelector": {"matchLabels": {"id": "polweb"}},
             "ingress": [{"fromCIDR": ["198.51.100.0/24", "2001:db8:100::/64"]}]}]"#,
    )
    .expect("import cidr");
    for host in [HOST4, HOST6] {
        assert!(outside_get(&outside, host, 8090).is_some(), "outside's CIDR -> {host}:8090 allowed");
    }
    env.daemon.cli(&["policy", "delete", "--all"]).expect("delete");
    env.finish(&[&web], &[&net]);
}

/// `[v6]` or `v4`, for `addr:port` arguments.
fn bracket(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    }
}

/// Lines the outside host has received on a long-lived connection so far.
fn ticks(file: &std::path::Path) -> usize {
    std::fs::read_to_string(file).map(|t| t.lines().count()).unwrap_or(0)
}

/// Whether the long-lived connection still carries data: more lines within 3 s.
fn still_flowing(file: &std::path::Path) -> bool {
    let before = ticks(file);
    wait_until(Duration::from_secs(3), "more ticks", || ticks(file) > before).is_ok()
}

#[test]
fn translations_survive_a_daemon_kill_9_and_a_dockerd_restart() {
    let (mut env, mut outside) = setup();
    let net = format!("{PREFIX}restart");
    env.network(&net, &["--ipv6"]).expect("network");
    let (c, web) = (format!("{PREFIX}talker"), format!("{PREFIX}rweb"));
    run_container(&c, &["--network", &net]).expect("talker");
    run_container_with(&web, &["--network", &net, "-p", "8070:80"], &["sh", "-c", &http_servers("rweb", &[80])])
        .expect("web");
    // A long-lived masqueraded connection: the container sends a line every 200 ms.
    let file = std::env::temp_dir().join(format!("crs-world-ticks-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    outside
        // busybox nc hangs up when its input ends: give it one that does not.
        .spawn(
            std::path::Path::new("/bin/sh"),
            &["-c", &format!("sleep 3600 | busybox nc -l -p 7000 > {}", file.display())],
        )
        .expect("listener");
    wait_until(Duration::from_secs(5), "the listener", || {
        outside.sh("busybox netstat -ltn").is_ok_and(|o| o.contains(":7000"))
    })
    .expect("listening");
    docker(&["exec", "-d", &c, "sh", "-c", &format!("while true; do echo tick; sleep 0.2; done | nc {OUTSIDE4} 7000")])
        .expect("start talking");
    assert!(
        still_flowing(&file),
        "the connection carries data: {:?} {:?}",
        std::fs::read_to_string(&file),
        outside.sh("busybox netstat -tn")
    );
    wait_until(Duration::from_secs(10), "web", || outside_get(&outside, HOST4, 8070).is_some()).expect("published");
    let mapped = map_entries(&env.daemon, "crs_nat_in").expect("dump").len();
    assert!(mapped > 0, "the connection is masqueraded");

    env.daemon.kill9().expect("kill -9");
    assert!(still_flowing(&file), "with the daemon down, the pinned translations keep it going");
    assert!(outside_get(&outside, HOST6, 8070).is_some(), "the published port works with the daemon down");
    assert!(host_get("127.0.0.1", 8070).is_some(), "and so do the host's own connections to it");
    env.daemon.spawn().expect("restart");
    assert!(still_flowing(&file), "after the restart");
    assert!(outside_get(&outside, HOST4, 8070).is_some(), "published after the restart");
    // The daemon answers once its sockets are bound; it restores its state right after.
    wait_until(Duration::from_secs(10), "the port to be held again", || {
        std::net::TcpListener::bind(("0.0.0.0", 8070)).is_err()
    })
    .unwrap_or_else(|e| panic!("the restarted daemon holds the port again: {e}\n{}", env.daemon.log_text()));

    {
        // dockerd restarts with live restore: containers keep running, its iptables rules
        // are rewritten; none of it is on our path.
        let _live = LiveRestore::enable();
        restart_dockerd();
        assert!(still_flowing(&file), "after a dockerd restart");
        assert!(outside_get(&outside, HOST4, 8070).is_some(), "published after a dockerd restart");
    }
    let _ = std::fs::remove_file(&file);
    env.finish(&[&c, &web], &[&net]);
}
