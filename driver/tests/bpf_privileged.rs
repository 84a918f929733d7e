//! Privileged tests of the BPF datapath: the verifier accepts the programs, tcx links are pinned
//! and unpinned, and real packets between two fake containers get the verdicts of
//! docs/datapath.md. Each test has its own network namespaces and bpf root, removed even when it
//! fails; they fail, never skip, without root.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use aya::programs::{loaded_programs, SchedClassifier, TcAttachType};
use bpf_programs::abi::{
    Direction, DropReason, EndpointInfo, EndpointMetrics, LocalIp, MAP_NAMES, PROG_FROM_CONTAINER, PROG_FROM_WORLD,
    PROG_TO_CONTAINER, PROG_TO_WORLD,
};
use cilium_rs::datapath::bpf::{AttachMode, BpfDatapath};
use cilium_rs::datapath::policy_maps::PolicyMaps;
use cilium_rs::identity::Identity;
use cilium_rs::policy::{Direction as PolicyDirection, PolicyEntry, PolicyKey, PROTO_ANY};
use support::{in_netns, require_root, run, BpfRoot, Netns};

/// The kernel keeps 15 bytes of a program name.
fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or_else(|e| panic!("ifindex of {name}: {e}"))
}

/// Program ids attached with tcx to `ifname` in `direction`, in the calling thread's netns.
fn tcx_program_ids(ifname: &str, direction: TcAttachType) -> Vec<u32> {
    let (_, programs) = SchedClassifier::query_tcx(ifname, direction).expect("query tcx");
    programs.iter().map(|p| p.id()).collect()
}

fn our_ids(dp: &BpfDatapath) -> (u32, u32) {
    let ids = dp.program_ids().expect("program ids");
    assert_eq!(
        ids.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [PROG_FROM_CONTAINER, PROG_TO_CONTAINER, PROG_FROM_WORLD, PROG_TO_WORLD]
    );
    (ids[0].1, ids[1].1)
}

/// Whether no tcx program is attached to `ifname` within a second.
fn detached_soon(ifname: &str) -> bool {
    (0..100).any(|_| {
        let empty = tcx_program_ids(ifname, TcAttachType::Ingress).is_empty()
            && tcx_program_ids(ifname, TcAttachType::Egress).is_empty();
        if !empty {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        empty
    })
}

fn veth(name: &str, peer: &str) {
    run(&["ip", "link", "add", name, "type", "veth", "peer", "name", peer]);
    run(&["ip", "link", "set", name, "up"]);
    run(&["ip", "link", "set", peer, "up"]);
}

fn pin_exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

#[test]
fn verifier_accepts_both_programs_and_maps_are_pinned() {
    require_root();
    let root = BpfRoot::new("verifier");
    let mut dp = BpfDatapath::load(root.path()).expect("load the endpoint object");

    our_ids(&dp);
    let loaded: Vec<_> = loaded_programs().collect::<Result<_, _>>().expect("list loaded programs");
    for (name, id) in dp.program_ids().expect("program ids") {
        let info = loaded.iter().find(|p| p.id() == id).unwrap_or_else(|| panic!("{name} (id {id}) not loaded"));
        assert_eq!(format!("{:?}", info.program_type()), "BPF_PROG_TYPE_SCHED_CLS");
        assert_eq!(info.name_as_str(), Some(kernel_name(name)));
    }

    let versioned = root.path().join(format!("v{}", bpf_programs::abi::CRS_LAYOUT_VERSION));
    assert_eq!(dp.maps_dir(), versioned.join("maps"));
    for map in MAP_NAMES {
        assert!(pin_exists(&dp.maps_dir().join(map)), "{map} is not pinned");
    }
    assert!(dp.links_dir().is_dir());

    // A second load (a restarted daemon) reuses the pinned maps.
    let info = EndpointInfo::new(42, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .with_ipv6("fdc1:1a00:99::42".parse().expect("address"))
        .with_ipv4(Ipv4Addr::new(10, 250, 0, 42), Ipv4Addr::new(169, 254, 1, 1));
    dp.set_endpoint(4242, &info).expect("set endpoint");
    dp.set_local_ip(IpAddr::V4(Ipv4Addr::new(10, 250, 0, 42)), &LocalIp::new(4242, 42)).expect("set local ip");
    let mut again = BpfDatapath::load(root.path()).expect("load again");
    assert_eq!(again.endpoints().expect("endpoints"), vec![(4242, info)]);
    assert_eq!(
        again.local_ips().expect("local ips"),
        vec![(IpAddr::V4(Ipv4Addr::new(10, 250, 0, 42)), LocalIp::new(4242, 42))]
    );
    again.remove_endpoint(4242).expect("remove endpoint");
    again.remove_endpoint(4242).expect("remove an absent endpoint");
    again.remove_local_ip(IpAddr::V4(Ipv4Addr::new(10, 250, 0, 42))).expect("remove local ip");
    again.remove_local_ip(IpAddr::V4(Ipv4Addr::new(10, 250, 0, 42))).expect("remove an absent local ip");
    assert!(dp.endpoints().expect("endpoints").is_empty());
    assert!(dp.local_ips().expect("local ips").is_empty());
    again.remove_metrics(42).expect("remove absent metrics");
}

fn is_bpffs(path: &str) -> bool {
    nix::sys::statfs::statfs(path).expect("statfs").filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC
}

#[test]
fn load_mounts_bpffs_at_sys_fs_bpf_when_missing() {
    require_root();
    // A thread with a private mount namespace of its own, so the host's mounts stay as they are.
    let worker = std::thread::spawn(|| {
        use nix::mount::{mount, umount2, MntFlags, MsFlags};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .expect("make / private");
        while umount2("/sys/fs/bpf", MntFlags::MNT_DETACH).is_ok() {}
        assert!(!is_bpffs("/sys/fs/bpf"), "bpffs is still mounted in the private namespace");

        let root = BpfRoot::new("mount");
        let dp = BpfDatapath::load(root.path()).expect("load mounts bpffs");
        assert!(is_bpffs("/sys/fs/bpf"));
        assert!(pin_exists(&dp.maps_dir().join(MAP_NAMES[0])));
        // A second load finds it mounted and does not stack another mount.
        let again = BpfDatapath::load(root.path()).expect("load again");
        drop((dp, again));
        let mounts = std::fs::read_to_string("/proc/thread-self/mounts").expect("mounts");
        assert_eq!(mounts.lines().filter(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf")).count(), 1, "{mounts}");
    });
    if let Err(panic) = worker.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn load_rejects_a_root_outside_bpffs() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let err = BpfDatapath::load(&dir.path().join("root")).expect_err("a tmp dir is not bpffs");
    assert!(err.to_string().contains("not on a bpf filesystem"), "{err}");
}

#[test]
fn attach_pins_tcx_links_and_detach_removes_them() {
    in_netns(|| async {
        let root = BpfRoot::new("attach");
        let mut dp = BpfDatapath::load(root.path()).expect("load");
        assert_eq!(dp.attach_mode(), AttachMode::Tcx, "this kernel has tcx");
        let (from, to) = our_ids(&dp);
        let ingress_pin = dp.links_dir().join("lxcattach0_ingress");
        let egress_pin = dp.links_dir().join("lxcattach0_egress");

        veth("lxcattach0", "tmpattach0");
        assert!(!dp.is_attached("lxcattach0"));
        dp.attach("lxcattach0").expect("attach");
        assert!(dp.is_attached("lxcattach0"));
        assert!(pin_exists(&ingress_pin) && pin_exists(&egress_pin));
        assert_eq!(dp.pinned_links().expect("pinned links"), ["lxcattach0"]);
        assert_eq!(tcx_program_ids("lxcattach0", TcAttachType::Ingress), [from]);
        assert_eq!(tcx_program_ids("lxcattach0", TcAttachType::Egress), [to]);

        // Attaching again replaces in place: still one program per direction.
        dp.attach("lxcattach0").expect("attach again");
        assert_eq!(tcx_program_ids("lxcattach0", TcAttachType::Ingress), [from]);
        assert_eq!(tcx_program_ids("lxcattach0", TcAttachType::Egress), [to]);

        // A restarted daemon (new programs) swaps its programs into the pinned links.
        let mut restarted = BpfDatapath::load(root.path()).expect("load again");
        let (from2, to2) = our_ids(&restarted);
        assert_ne!(from, from2);
        restarted.attach("lxcattach0").expect("attach from a restarted daemon");
        assert_eq!(tcx_program_ids("lxcattach0", TcAttachType::Ingress), [from2]);
        assert_eq!(tcx_program_ids("lxcattach0", TcAttachType::Egress), [to2]);
        drop(restarted);
        // The pinned links keep the programs attached after the daemon is gone.
        assert_eq!(tcx_program_ids("lxcattach0", TcAttachType::Ingress), [from2]);

        // An interface re-created with the same name: the stale pins are replaced.
        run(&["ip", "link", "del", "lxcattach0"]);
        assert!(dp.is_attached("lxcattach0"), "pins outlive the interface");
        veth("lxcattach0", "tmpattach0");
        dp.attach("lxcattach0").expect("attach to the re-created interface");
        assert_eq!(tcx_program_ids("lxcattach0", TcAttachType::Ingress), [from]);
        assert_eq!(tcx_program_ids("lxcattach0", TcAttachType::Egress), [to]);

        dp.detach("lxcattach0").expect("detach");
        assert!(!dp.is_attached("lxcattach0"));
        assert!(!pin_exists(&ingress_pin) && !pin_exists(&egress_pin));
        // A process another test forks at that moment may hold the link a moment longer.
        assert!(detached_soon("lxcattach0"), "programs still attached after detach");
        assert!(dp.pinned_links().expect("pinned links").is_empty());

        dp.detach("lxcattach0").expect("detach twice");
        dp.detach("lxcnothere0").expect("detach an interface that never existed");
        assert!(dp.attach("lxcnothere0").is_err(), "attach to a missing interface fails");
        assert!(dp.attach("../evil").is_err(), "invalid names are rejected");
        veth("lxc.dot0", "tmpdot0");
        let err = dp.attach("lxc.dot0").expect_err("bpffs refuses dots in pin names");
        assert!(err.to_string().contains("'.'"), "{err}");
        dp.detach("lxc.dot0").expect("detach a name that cannot have pins");
        assert!(!dp.is_attached("lxc.dot0"));
        run(&["ip", "link", "del", "lxcattach0"]);
    });
}

#[test]
fn netlink_fallback_attaches_and_detaches_filters() {
    in_netns(|| async {
        let root = BpfRoot::new("netlink");
        let mut dp = BpfDatapath::load(root.path()).expect("load");
        dp.set_attach_mode(AttachMode::Netlink);
        veth("lxcnl0", "tmpnl0");

        let filters = |dir: &str| -> usize {
            run(&["tc", "filter", "show", "dev", "lxcnl0", dir]).matches("direct-action").count()
        };
        dp.attach("lxcnl0").expect("attach with netlink");
        assert_eq!((filters("ingress"), filters("egress")), (1, 1));
        assert!(run(&["tc", "filter", "show", "dev", "lxcnl0", "ingress"]).contains(PROG_FROM_CONTAINER));
        assert!(run(&["tc", "filter", "show", "dev", "lxcnl0", "egress"]).contains(PROG_TO_CONTAINER));
        assert!(!dp.is_attached("lxcnl0"), "netlink attachments have no pins");

        dp.attach("lxcnl0").expect("attach again");
        assert_eq!((filters("ingress"), filters("egress")), (1, 1), "no duplicate filters");
        drop(dp);
        // The filters outlive the loader.
        assert_eq!((filters("ingress"), filters("egress")), (1, 1));

        let mut dp = BpfDatapath::load(root.path()).expect("load again");
        dp.set_attach_mode(AttachMode::Netlink);
        dp.detach("lxcnl0").expect("detach");
        assert_eq!((filters("ingress"), filters("egress")), (0, 0));
        dp.detach("lxcnl0").expect("detach twice");
        dp.detach("lxcnothere0").expect("detach from a missing interface");
    });
}

#[test]
fn reattach_swaps_programs_in_place_and_switches_modes() {
    in_netns(|| async {
        let root = BpfRoot::new("reattach");
        veth("lxcra0", "tmpra0");
        let filters = |dir: &str| run(&["tc", "filter", "show", "dev", "lxcra0", dir]);
        let prog_id =
            |text: &str| text.split(" id ").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_owned);

        // A daemon attached with tcx; the next one runs in tc (clsact) mode.
        let mut first = BpfDatapath::load(root.path()).expect("load");
        first.set_attach_mode(AttachMode::Tcx);
        first.attach("lxcra0").expect("tcx attach");
        assert!(first.is_attached("lxcra0"));
        drop(first);

        let mut second = BpfDatapath::load(root.path()).expect("load again");
        second.set_attach_mode(AttachMode::Netlink);
        second.reattach("lxcra0").expect("reattach with tc");
        assert!(!second.is_attached("lxcra0"), "the tcx pins of the earlier daemon are gone");
        let before = filters("ingress");
        assert_eq!(before.matches("direct-action").count(), 1, "{before}");
        assert!(before.contains("pref 1 ") && before.contains("handle 0x1 "), "{before}");
        drop(second);

        // A third daemon swaps its own program into the same filter (same pref and handle).
        let mut third = BpfDatapath::load(root.path()).expect("load a third time");
        third.set_attach_mode(AttachMode::Netlink);
        third.reattach("lxcra0").expect("reattach again");
        let after = filters("ingress");
        assert_eq!(after.matches("direct-action").count(), 1, "{after}");
        assert!(after.contains("pref 1 ") && after.contains("handle 0x1 "), "{after}");
        assert_ne!(prog_id(&before), prog_id(&after), "the new program replaced the old one:\n{before}\n{after}");
        assert_eq!(filters("egress").matches("direct-action").count(), 1);

        // And back to tcx: the filters go, the pins come.
        third.set_attach_mode(AttachMode::Tcx);
        third.reattach("lxcra0").expect("reattach with tcx");
        assert!(third.is_attached("lxcra0"));
        assert_eq!(filters("ingress").matches("direct-action").count(), 0);
        third.detach("lxcra0").expect("detach");
    });
}

/// One fake container: a named netns whose eth0 is the peer of host-side `lxc`.
struct Container {
    ns: Netns,
    lxc: String,
    endpoint_id: u32,
    ipv6: Ipv6Addr,
    ipv4: Ipv4Addr,
    mac: [u8; 6],
}

const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn link_mac(ifname: &str) -> [u8; 6] {
    let out = run(&["ip", "-o", "link", "show", "dev", ifname]);
    let text = out
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no mac in {out}"));
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("mac byte");
    }
    mac
}

/// Builds one endpoint exactly like the daemon does: veth pair, container side renamed to eth0
/// in its namespace with a /128 and a /32 and link-local gateways; host side up with host
/// routes and permanent neighbours. Runs in the host (the calling thread's) namespace.
fn container(role: &str, n: u8, endpoint_id: u32) -> Container {
    let ns = Netns::new(role);
    let lxc = format!("lxc{role}");
    let tmp = format!("tmp{role}");
    let ipv6: Ipv6Addr = format!("fdc1:1a00:99::{n}").parse().expect("address");
    let ipv4 = Ipv4Addr::new(10, 250, 0, n);
    let mac = [0x02, 0xc1, 0x1a, 0, 0, n];

    run(&["ip", "link", "add", &lxc, "type", "veth", "peer", "name", &tmp]);
    run(&["ip", "link", "set", &tmp, "netns", &ns.name]);
    ns.exec(&["ip", "link", "set", &tmp, "name", "eth0"]);
    ns.exec(&["ip", "link", "set", "eth0", "address", &mac_text(mac)]);
    ns.exec(&["ip", "link", "set", "eth0", "up"]);
    ns.exec(&["ip", "addr", "add", &format!("{ipv6}/128"), "dev", "eth0", "nodad"]);
    ns.exec(&["ip", "addr", "add", &format!("{ipv4}/32"), "dev", "eth0"]);
    ns.exec(&["ip", "route", "add", &format!("{GATEWAY_V4}/32"), "dev", "eth0", "scope", "link"]);
    ns.exec(&["ip", "route", "add", "default", "via", &GATEWAY_V4.to_string(), "dev", "eth0"]);
    ns.exec(&["ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"]);

    run(&["ip", "link", "set", &lxc, "up"]);
    run(&["ip", "route", "add", &format!("{ipv4}/32"), "dev", &lxc]);
    run(&["ip", "-6", "route", "add", &format!("{ipv6}/128"), "dev", &lxc]);
    run(&["ip", "neigh", "add", &ipv4.to_string(), "lladdr", &mac_text(mac), "dev", &lxc, "nud", "permanent"]);
    run(&["ip", "-6", "neigh", "add", &ipv6.to_string(), "lladdr", &mac_text(mac), "dev", &lxc, "nud", "permanent"]);
    Container { ns, lxc, endpoint_id, ipv6, ipv4, mac }
}

/// Fills `crs_endpoints` for the container (and `crs_local_ips` when `local`).
fn install(dp: &mut BpfDatapath, c: &Container, local: bool) {
    let ifindex = ifindex(&c.lxc);
    dp.ensure_metrics(c.endpoint_id).expect("create counters");
    let info =
        EndpointInfo::new(c.endpoint_id, c.mac, link_mac(&c.lxc)).with_ipv6(c.ipv6).with_ipv4(c.ipv4, GATEWAY_V4);
    dp.set_endpoint(ifindex, &info).expect("set endpoint");
    if local {
        for ip in [IpAddr::V6(c.ipv6), IpAddr::V4(c.ipv4)] {
            dp.set_local_ip(ip, &LocalIp::new(ifindex, c.endpoint_id)).expect("set local ip");
        }
    }
}

/// `ping` from iputils, or busybox's when iputils is not installed.
fn ping_argv<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let iputils = std::process::Command::new("ping").arg("-V").output().is_ok_and(|o| o.status.success());
    let mut argv = if iputils { vec!["ping"] } else { vec!["busybox", "ping"] };
    argv.extend_from_slice(args);
    argv
}

fn ping_ok(c: &Container, args: &[&str]) {
    c.ns.exec(&ping_argv(args));
}

fn ping_fails(c: &Container, args: &[&str]) -> bool {
    !c.ns.try_exec(&ping_argv(args))
}

/// `Ip: ForwDatagrams` and `Ip6OutForwDatagrams` of the calling thread's network namespace.
fn forwarded_by_host() -> (u64, u64) {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("snmp");
    let mut ip_lines = snmp.lines().filter(|l| l.starts_with("Ip: "));
    let (names, values) = (ip_lines.next().expect("Ip header"), ip_lines.next().expect("Ip values"));
    let v4 = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ForwDatagrams")
        .and_then(|(_, v)| v.parse().ok())
        .expect("ForwDatagrams");
    let snmp6 = std::fs::read_to_string("/proc/thread-self/net/snmp6").expect("snmp6");
    let v6 = snmp6
        .lines()
        .find_map(|l| l.strip_prefix("Ip6OutForwDatagrams"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Ip6OutForwDatagrams");
    (v4, v6)
}

fn counter(metrics: &EndpointMetrics, reason: DropReason, dir: Direction) -> u64 {
    metrics.get(reason, dir).packets
}

fn metrics(dp: &BpfDatapath, c: &Container) -> EndpointMetrics {
    let one = dp.metrics(c.endpoint_id).expect("metrics").expect("the endpoint has counters");
    // The same as its row of the full dump.
    let all = dp.all_metrics().expect("all metrics");
    assert_eq!(all.iter().find(|(id, _)| *id == c.endpoint_id).map(|(_, m)| *m), Some(one));
    one
}

/// Lets `identity` send and receive anything, as the daemon does while no rule selects it.
fn allow_all(maps: &mut PolicyMaps, identity: Identity) {
    for direction in [PolicyDirection::Ingress, PolicyDirection::Egress] {
        let key =
            PolicyKey { local: identity, remote: Identity::ANY, direction, proto: PROTO_ANY, port: 0, port_prefix: 0 };
        maps.set_policy(&key, &PolicyEntry { deny: false, rule: 0 }).expect("set policy");
    }
}

#[test]
fn packets_between_containers_take_the_bpf_path() {
    in_netns(|| async {
        let root = BpfRoot::new("packets");
        run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let a = container("pa", 2, 701);
        let b = container("pb", 3, 702);
        let mut dp = BpfDatapath::load(root.path()).expect("load");
        let mut policy = dp.take_policy_maps().expect("policy maps");
        allow_all(&mut policy, Identity::INIT);
        for c in [&a, &b] {
            install(&mut dp, c, false);
            dp.attach(&c.lxc).expect("attach");
        }
        let b6 = b.ipv6.to_string();
        let b4 = b.ipv4.to_string();

        // Without crs_local_ips entries the host stack routes between the containers: this
        // shows that the forwarding counters below do see host-routed traffic.
        let host_before = forwarded_by_host();
        ping_ok(&a, &["-c", "1", "-W", "2", &b6]);
        ping_ok(&a, &["-c", "1", "-W", "2", &b4]);
        let host_after = forwarded_by_host();
        assert!(host_after.0 >= host_before.0 + 2, "host forwarded IPv4: {host_before:?} -> {host_after:?}");
        assert!(host_after.1 >= host_before.1 + 2, "host forwarded IPv6: {host_before:?} -> {host_after:?}");

        // With them, the programs deliver with bpf_redirect_peer and the host forwards nothing.
        for c in [&a, &b] {
            install(&mut dp, c, true);
        }
        let (a0, b0) = (metrics(&dp, &a), metrics(&dp, &b));
        let host_before = forwarded_by_host();
        ping_ok(&a, &["-c", "3", "-i", "0.2", "-W", "2", &b6]);
        ping_ok(&a, &["-c", "3", "-i", "0.2", "-W", "2", &b4]);
        ping_ok(&b, &["-c", "1", "-W", "2", &a.ipv6.to_string()]);
        ping_ok(&b, &["-c", "1", "-W", "2", &a.ipv4.to_string()]);
        assert_eq!(forwarded_by_host(), host_before, "the host stack forwarded container traffic");
        let (a1, b1) = (metrics(&dp, &a), metrics(&dp, &b));
        // 6 requests + 2 replies each way at least (neighbour discovery may add some).
        for (name, before, after) in [("a", &a0, &a1), ("b", &b0, &b1)] {
            let egress = counter(after, DropReason::Forwarded, Direction::Egress)
                - counter(before, DropReason::Forwarded, Direction::Egress);
            let ingress = counter(after, DropReason::Forwarded, Direction::Ingress)
                - counter(before, DropReason::Forwarded, Direction::Ingress);
            assert!(egress >= 8 && ingress >= 8, "{name}: egress +{egress}, ingress +{ingress}: {after:?}");
        }

        // The gateways are answered by the programs: the host has neither address.
        ping_ok(&a, &["-c", "2", "-i", "0.2", "-W", "2", "-I", "eth0", "fe80::1"]);
        ping_ok(&a, &["-c", "2", "-i", "0.2", "-W", "2", &GATEWAY_V4.to_string()]);
        ping_ok(&b, &["-c", "1", "-W", "2", &GATEWAY_V4.to_string()]);
        let neigh = a.ns.exec(&["ip", "-6", "neigh", "show", "fe80::1", "dev", "eth0"]);
        assert!(neigh.contains(&mac_text(link_mac(&a.lxc))) && neigh.contains("router"), "{neigh}");
        let neigh = a.ns.exec(&["ip", "neigh", "show", &GATEWAY_V4.to_string(), "dev", "eth0"]);
        assert!(neigh.contains(&mac_text(link_mac(&a.lxc))), "{neigh}");

        // Spoofed sources are dropped and counted as SPOOFED_SOURCE of the sender.
        let spoofed = |m: &EndpointMetrics| counter(m, DropReason::SpoofedSource, Direction::Egress);
        let before = spoofed(&metrics(&dp, &a));
        a.ns.exec(&["ip", "addr", "add", "fdc1:1a00:99::99/128", "dev", "eth0", "nodad"]);
        assert!(ping_fails(&a, &["-c", "1", "-W", "1", "-I", "fdc1:1a00:99::99", &b6]));
        let after_v6 = spoofed(&metrics(&dp, &a));
        assert!(after_v6 > before, "spoofed IPv6 source not counted: {before} -> {after_v6}");
        a.ns.exec(&["ip", "addr", "add", "10.250.0.99/32", "dev", "eth0"]);
        assert!(ping_fails(&a, &["-c", "1", "-W", "1", "-I", "10.250.0.99", &b4]));
        let after_v4 = spoofed(&metrics(&dp, &a));
        assert!(after_v4 > after_v6, "spoofed IPv4 source not counted: {after_v6} -> {after_v4}");
        assert_eq!(spoofed(&metrics(&dp, &b)), 0);

        // An address of another endpoint of the same container (sandbox) is the container's
        // own: a multi-homed container replies through its default route with it.
        let sibling = |dp: &mut BpfDatapath, sandbox: u32| {
            let local = LocalIp::new(ifindex(&a.lxc), 799).in_sandbox(sandbox);
            dp.set_local_ip("fdc1:1a00:99::99".parse().expect("ip"), &local).expect("set local ip");
            dp.set_local_ip("10.250.0.99".parse().expect("ip"), &local).expect("set local ip");
        };
        sibling(&mut dp, 701);
        ping_ok(&a, &["-c", "1", "-W", "2", "-I", "fdc1:1a00:99::99", &b6]);
        ping_ok(&a, &["-c", "1", "-W", "2", "-I", "10.250.0.99", &b4]);
        assert_eq!(spoofed(&metrics(&dp, &a)), after_v4, "a sibling's address counted as spoofed");
        // Held by another container (b's sandbox): spoofed again.
        sibling(&mut dp, 702);
        assert!(ping_fails(&a, &["-c", "1", "-W", "1", "-I", "10.250.0.99", &b4]));
        assert!(spoofed(&metrics(&dp, &a)) > after_v4, "another container's address accepted");
        dp.remove_local_ip("fdc1:1a00:99::99".parse().expect("ip")).expect("remove");
        dp.remove_local_ip("10.250.0.99".parse().expect("ip")).expect("remove");
        a.ns.exec(&["ip", "addr", "del", "fdc1:1a00:99::99/128", "dev", "eth0"]);
        a.ns.exec(&["ip", "addr", "del", "10.250.0.99/32", "dev", "eth0"]);

        // A solicitation without a source link-layer option, from the unspecified address (DAD
        // of fe80::1 in the container), is answered to all nodes: the container sees fe80::1
        // taken.
        b.ns.exec(&["sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=1"]);
        b.ns.exec(&["ip", "addr", "add", "fe80::1/64", "dev", "eth0"]);
        let mut dad_failed = false;
        for _ in 0..50 {
            if b.ns.exec(&["ip", "-6", "addr", "show", "dev", "eth0"]).contains("dadfailed") {
                dad_failed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(dad_failed, "no advertisement for the DAD probe of fe80::1");
        b.ns.exec(&["ip", "addr", "del", "fe80::1/64", "dev", "eth0"]);

        for c in [&a, &b] {
            dp.detach(&c.lxc).expect("detach");
            dp.remove_local_ip(IpAddr::V6(c.ipv6)).expect("remove local ip");
            dp.remove_local_ip(IpAddr::V4(c.ipv4)).expect("remove local ip");
            dp.remove_endpoint(ifindex(&c.lxc)).expect("remove endpoint");
            dp.remove_metrics(c.endpoint_id).expect("remove metrics");
            assert!(dp.metrics(c.endpoint_id).expect("metrics").is_none());
        }
    });
}

#[test]
fn unknown_interfaces_drop_everything() {
    in_netns(|| async {
        let root = BpfRoot::new("unknown");
        let c = container("pu", 4, 703);
        let mut dp = BpfDatapath::load(root.path()).expect("load");
        dp.attach(&c.lxc).expect("attach");
        // No crs_endpoints entry: the gateway stays unreachable and drops count under endpoint 0.
        assert!(ping_fails(&c, &["-c", "1", "-W", "1", &GATEWAY_V4.to_string()]));
        let unknown = dp.metrics(0).expect("metrics of endpoint 0").expect("endpoint 0 always has counters");
        assert!(counter(&unknown, DropReason::UnknownEndpoint, Direction::Egress) >= 1, "{unknown:?}");
        dp.detach(&c.lxc).expect("detach");
    });
}

#[test]
fn a_restart_after_a_layout_bump_leaves_one_attachment_and_no_old_pins() {
    in_netns(|| async {
        let root = BpfRoot::new("layouts");
        veth("lxclay0", "tmplay0");
        // A daemon of an older layout: its links and maps pinned under v<N-1>/.
        let mut old = BpfDatapath::load(root.path()).expect("load");
        old.set_attach_mode(AttachMode::Tcx);
        old.attach("lxclay0").expect("attach");
        let (old_from, _) = our_ids(&old);
        drop(old);
        let current = root.path().join(format!("v{}", bpf_programs::abi::CRS_LAYOUT_VERSION));
        let older = root.path().join(format!("v{}", bpf_programs::abi::CRS_LAYOUT_VERSION - 1));
        std::fs::rename(&current, &older).expect("make it the older layout's tree");
        assert!(pin_exists(&older.join("links/lxclay0_ingress")));

        // The upgraded daemon attaches its programs, then removes the old tree.
        let mut new = BpfDatapath::load(root.path()).expect("load the new layout");
        new.set_attach_mode(AttachMode::Tcx);
        new.reattach("lxclay0").expect("attach the new programs");
        let (new_from, new_to) = our_ids(&new);
        assert_eq!(tcx_program_ids("lxclay0", TcAttachType::Ingress), [old_from, new_from], "both, old first");
        let others = cilium_rs::datapath::layouts::other_layouts(root.path()).expect("list layouts");
        assert_eq!(others, std::slice::from_ref(&older));
        let removed = cilium_rs::datapath::layouts::remove_layout(&others[0]).expect("remove the old tree");
        assert_eq!(removed, 2 + MAP_NAMES.len(), "both links and every map unpinned");
        assert!(!older.exists(), "the old tree is gone");
        assert_eq!(tcx_program_ids("lxclay0", TcAttachType::Ingress), [new_from], "exactly one attachment");
        assert_eq!(tcx_program_ids("lxclay0", TcAttachType::Egress), [new_to]);
        assert!(cilium_rs::datapath::layouts::other_layouts(root.path()).expect("list").is_empty());
        new.detach("lxclay0").expect("detach");
        run(&["ip", "link", "del", "lxclay0"]);
    });
}
