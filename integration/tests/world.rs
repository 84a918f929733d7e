//! End-to-end: containers reach a world outside the host — a namespace the test creates behind
//! a veth pair, with no route back to any container subnet — through the egress programs,
//! masqueraded to the host's addresses, over IPv4 and IPv6 (ICMP echo, TCP, UDP, and ICMP
//! errors translated back); `--internal` networks reach nothing there; the host's own and
//! Docker's traffic on the egress interface is left alone.

use std::time::Duration;

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
