//! Verdicts of the endpoint programs on crafted frames (BPF_PROG_TEST_RUN), checked against
//! docs/datapath.md: policy lookup, local delivery, connection tracking, related ICMP errors,
//! the parser, anti-spoofing and the router's own answers. Every check compares the return code
//! and the exact counters the packet moved (endpoint, reason, direction). Each test has its own
//! network namespace and bpf root; they fail, never skip, without root.

mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{HashMap, Map, MapData};
use bpf_programs::abi::{
    CtEntry, CtKey, Direction as Dir, DropReason, EndpointInfo, EndpointMetrics, LocalIp, CT_F_CLOSING, CT_F_EGRESS_OK,
    CT_F_INGRESS_OK, CT_F_SEEN_REPLY, MAP_CT, PROG_FROM_CONTAINER, PROG_TO_CONTAINER,
};
use cilium_rs::datapath::bpf::BpfDatapath;
use cilium_rs::datapath::policy_maps::PolicyMaps;
use cilium_rs::identity::Identity;
use cilium_rs::policy::{
    Direction as PD, PolicyEntry, PolicyKey, PROTO_ANY, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};
use ipnet::IpNet;
use support::packets::{
    arp, eth, ip_packet, Ext, Ipv4, Ipv6, ARP_REPLY, ARP_REQUEST, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, L4,
    TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
};
use support::{in_netns, run, BpfRoot};
use DropReason::*;

/// TC_ACT_OK: to the host stack.
const PASS: u32 = 0;
/// TC_ACT_SHOT: dropped.
const DROP: u32 = 2;
/// TC_ACT_REDIRECT: bpf_redirect_peer (local delivery, or a reply built in place).
const REDIRECT: u32 = 7;

const NSEC: u64 = 1_000_000_000;

const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// A CIDR identity covering 2001:db8::/32 and 198.51.100.0/24.
const CID: Identity = Identity((1 << 24) | 1);
/// Another CIDR identity, covering 2001:db8:ff::/48 and 192.0.2.0/24.
const CID2: Identity = Identity((1 << 24) | 2);

/// One counter increment: (endpoint number, reason, direction).
type Counted = (u32, DropReason, Dir);

fn eg(endpoint: u32, reason: DropReason) -> Counted {
    (endpoint, reason, Dir::Egress)
}

fn ing(endpoint: u32, reason: DropReason) -> Counted {
    (endpoint, reason, Dir::Ingress)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fam {
    V6,
    V4,
}

const FAMILIES: [Fam; 2] = [Fam::V6, Fam::V4];

impl Fam {
    fn of(ip: IpAddr) -> Fam {
        if ip.is_ipv6() {
            Fam::V6
        } else {
            Fam::V4
        }
    }

    fn icmp(self) -> u8 {
        match self {
            Fam::V6 => PROTO_ICMPV6,
            Fam::V4 => PROTO_ICMP,
        }
    }

    fn echo_request(self) -> u8 {
        match self {
            Fam::V6 => 128,
            Fam::V4 => 8,
        }
    }

    fn echo_reply(self) -> u8 {
        match self {
            Fam::V6 => 129,
            Fam::V4 => 0,
        }
    }

    fn echo(self, request: bool, id: u16) -> L4 {
        match self {
            Fam::V6 => L4::echo6(request, id, 1),
            Fam::V4 => L4::echo4(request, id, 1),
        }
    }

    fn dest_unreach_type(self) -> u8 {
        match self {
            Fam::V6 => 1,
            Fam::V4 => 3,
        }
    }

    /// Destination unreachable (port unreachable) quoting `quoted`.
    fn dest_unreach(self, quoted: &[u8]) -> L4 {
        match self {
            Fam::V6 => L4::icmp6(1, 4, [0; 4], quoted),
            Fam::V4 => L4::icmp4(3, 3, [0; 4], quoted),
        }
    }

    /// Packet too big (IPv6), or fragmentation needed (IPv4), MTU 1280.
    fn too_big(self, quoted: &[u8]) -> L4 {
        match self {
            Fam::V6 => L4::icmp6(2, 0, 1280u32.to_be_bytes(), quoted),
            Fam::V4 => L4::icmp4(3, 4, [0, 0, 0x05, 0x00], quoted),
        }
    }

    fn time_exceeded(self, quoted: &[u8]) -> L4 {
        match self {
            Fam::V6 => L4::icmp6(3, 0, [0; 4], quoted),
            Fam::V4 => L4::icmp4(11, 0, [0; 4], quoted),
        }
    }

    /// An ICMP message that is neither echo nor error: node information query / timestamp.
    fn other_icmp(self) -> L4 {
        match self {
            Fam::V6 => L4::icmp6(139, 0, [0, 0, 0, 0], &[0; 8]),
            Fam::V4 => L4::icmp4(13, 0, [0, 7, 0, 1], &[0; 12]),
        }
    }
}

/// In the CIDR identity `CID`.
fn remote(fam: Fam) -> IpAddr {
    match fam {
        Fam::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10)),
        Fam::V4 => IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10)),
    }
}

/// Another address in `CID`.
fn remote2(fam: Fam) -> IpAddr {
    match fam {
        Fam::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20)),
        Fam::V4 => IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20)),
    }
}

/// In `CID2`.
fn remote3(fam: Fam) -> IpAddr {
    match fam {
        Fam::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x30)),
        Fam::V4 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 30)),
    }
}

/// Covered by nothing in the ipcache: world.
fn world(fam: Fam) -> IpAddr {
    match fam {
        Fam::V6 => IpAddr::V6(Ipv6Addr::new(0x2a00, 0x1450, 0, 0, 0, 0, 0, 5)),
        Fam::V4 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
    }
}

/// Another world address.
fn world2(fam: Fam) -> IpAddr {
    match fam {
        Fam::V6 => IpAddr::V6(Ipv6Addr::new(0x2a00, 0x1450, 0, 0, 0, 0, 0, 6)),
        Fam::V4 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 6)),
    }
}

/// One of the host's own addresses (identity host in the ipcache).
fn host_ip(fam: Fam) -> IpAddr {
    match fam {
        Fam::V6 => IpAddr::V6(Ipv6Addr::new(0xfdc1, 0x1a00, 1, 0, 0, 0, 0, 1)),
        Fam::V4 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
    }
}

fn ll(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, last)
}

/// What a policy key matches after the identities and the direction.
#[derive(Clone, Copy, Debug)]
enum M {
    Any,
    Proto(u8),
    Port(u8, u16),
    /// Protocol, port, and how many leading bits of the port must match.
    Range(u8, u16, u8),
}

fn policy_key(local: Identity, remote: Identity, direction: PD, m: M) -> PolicyKey {
    let (proto, port, port_prefix) = match m {
        M::Any => (PROTO_ANY, 0, 0),
        M::Proto(p) => (p, 0, 0),
        M::Port(p, port) => (p, port, 16),
        M::Range(p, port, bits) => (p, port, bits),
    };
    PolicyKey { local, remote, direction, proto, port, port_prefix }
}

/// An endpoint as the tests use it: a veth whose host side the programs run on.
#[derive(Clone, Copy, Debug)]
struct Ep {
    n: u32,
    ifindex: u32,
    mac: [u8; 6],
    host_mac: [u8; 6],
    ip6: Ipv6Addr,
    ip4: Ipv4Addr,
    id: Identity,
}

impl Ep {
    fn ip(&self, fam: Fam) -> IpAddr {
        match fam {
            Fam::V6 => IpAddr::V6(self.ip6),
            Fam::V4 => IpAddr::V4(self.ip4),
        }
    }

    /// The container's link-local address.
    fn ll(&self) -> Ipv6Addr {
        ll(0xc00 + u16::try_from(self.n).expect("small endpoint number"))
    }

    /// A frame the container sends (to the host side's MAC).
    fn tx_ip(&self, ethertype: u16, packet: &[u8]) -> Vec<u8> {
        eth(self.host_mac, self.mac, ethertype, packet)
    }

    /// A frame the container sends from its own address to `dst`.
    fn tx(&self, dst: IpAddr, l4: &L4) -> Vec<u8> {
        self.tx_from(self.ip(Fam::of(dst)), dst, l4)
    }

    fn tx_from(&self, src: IpAddr, dst: IpAddr, l4: &L4) -> Vec<u8> {
        let (ethertype, packet) = ip_packet(src, dst, l4);
        self.tx_ip(ethertype, &packet)
    }

    /// A frame the host stack sends to the container.
    fn rx_ip(&self, ethertype: u16, packet: &[u8]) -> Vec<u8> {
        eth(self.mac, self.host_mac, ethertype, packet)
    }

    /// A frame the host stack sends from `src` to the container's address.
    fn rx(&self, src: IpAddr, l4: &L4) -> Vec<u8> {
        let (ethertype, packet) = ip_packet(src, self.ip(Fam::of(src)), l4);
        self.rx_ip(ethertype, &packet)
    }
}

/// What one test run did.
#[derive(Debug)]
struct Outcome {
    program: &'static str,
    rc: u32,
    frame: Vec<u8>,
    counted: Vec<Counted>,
}

impl Outcome {
    /// Asserts the return code and exactly the counters the packet moved.
    #[track_caller]
    fn expect(self, rc: u32, counted: &[Counted], what: &str) -> Self {
        let mut want = counted.to_vec();
        want.sort();
        assert_eq!(
            (self.rc, &self.counted),
            (rc, &want),
            "{what}: {} returned {} and counted {:?}",
            self.program,
            self.rc,
            self.counted
        );
        self
    }
}

/// Per-test datapath: the loaded programs and their maps under a bpf root of their own.
struct Env {
    dp: BpfDatapath,
    maps: PolicyMaps,
    _root: BpfRoot,
}

impl Env {
    fn new(role: &str) -> Self {
        let root = BpfRoot::new(role);
        let mut dp = BpfDatapath::load(root.path()).expect("load the endpoint object");
        let mut maps = dp.take_policy_maps().expect("policy maps");
        for (net, identity) in
            [("2001:db8::/32", CID), ("198.51.100.0/24", CID), ("2001:db8:ff::/48", CID2), ("192.0.2.0/24", CID2)]
        {
            maps.set_ipcache(net.parse().expect("prefix"), identity).expect("set ipcache");
        }
        for fam in FAMILIES {
            maps.set_ipcache(IpNet::from(host_ip(fam)), Identity::HOST).expect("set ipcache");
        }
        Env { dp, maps, _root: root }
    }

    /// A local endpoint alone in its container: see `endpoint_with`.
    fn endpoint(&mut self, n: u8, identity: u32) -> Ep {
        self.endpoint_with(n, identity, u32::from(n), true)
    }

    /// An endpoint number `n` behind a new veth (`lxcv<n>`), with counters, its addresses in
    /// the ipcache, and — when `local` — in crs_local_ips (delivered by the sender's program).
    fn endpoint_with(&mut self, n: u8, identity: u32, sandbox: u32, local: bool) -> Ep {
        let ifindex = veth(n);
        let ep = Ep {
            n: u32::from(n),
            ifindex,
            mac: [0x02, 0xc1, 0x1a, 0, 0, n],
            host_mac: [0x02, 0x40, 0, 0, 0, n],
            ip6: Ipv6Addr::new(0xfdc1, 0x1a00, 0x99, 0, 0, 0, 0, u16::from(n)),
            ip4: Ipv4Addr::new(10, 250, 0, n),
            id: Identity(identity),
        };
        self.dp.ensure_metrics(ep.n).expect("create counters");
        let info = EndpointInfo::new(ep.n, ep.mac, ep.host_mac)
            .with_ipv6(ep.ip6)
            .with_ipv4(ep.ip4, GATEWAY_V4)
            .with_identity(identity)
            .in_sandbox(sandbox);
        self.dp.set_endpoint(ifindex, &info).expect("set endpoint");
        for fam in FAMILIES {
            self.maps.set_ipcache(IpNet::from(ep.ip(fam)), ep.id).expect("set ipcache");
            if local {
                self.dp
                    .set_local_ip(ep.ip(fam), &LocalIp::new(ifindex, ep.n).in_sandbox(sandbox))
                    .expect("set local ip");
            }
        }
        ep
    }

    fn counters(&self) -> Vec<(u32, EndpointMetrics)> {
        self.dp.all_metrics().expect("read counters")
    }

    fn run(&self, program: &'static str, ifindex: u32, frame: &[u8]) -> Outcome {
        let before = self.counters();
        let (rc, out) = self.dp.test_run(program, frame, ifindex).expect("BPF_PROG_TEST_RUN");
        let after = self.counters();
        Outcome { program, rc, frame: out, counted: counted(&before, &after) }
    }

    /// crs_from_container on the endpoint's veth: the container sends `frame`.
    fn send(&self, ep: &Ep, frame: &[u8]) -> Outcome {
        self.run(PROG_FROM_CONTAINER, ep.ifindex, frame)
    }

    /// crs_to_container on the endpoint's veth: the host stack sends `frame` to the container.
    fn recv(&self, ep: &Ep, frame: &[u8]) -> Outcome {
        self.run(PROG_TO_CONTAINER, ep.ifindex, frame)
    }

    fn entry(&mut self, deny: bool, local: Identity, remote: Identity, direction: PD, m: M) {
        let key = policy_key(local, remote, direction, m);
        self.maps.set_policy(&key, &PolicyEntry { deny, rule: if deny { 9 } else { 8 } }).expect("set policy");
    }

    fn allow(&mut self, local: Identity, remote: Identity, direction: PD, m: M) {
        self.entry(false, local, remote, direction, m);
    }

    fn deny(&mut self, local: Identity, remote: Identity, direction: PD, m: M) {
        self.entry(true, local, remote, direction, m);
    }

    fn unset(&mut self, local: Identity, remote: Identity, direction: PD, m: M) {
        self.maps.remove_policy(&policy_key(local, remote, direction, m)).expect("remove policy");
    }

    /// The allow-all entries of an endpoint no rule selects.
    fn allow_all(&mut self, local: Identity) {
        self.allow(local, Identity::ANY, PD::Egress, M::Any);
        self.allow(local, Identity::ANY, PD::Ingress, M::Any);
    }

    /// What the daemon does after every policy change: established flows are checked again.
    fn bump_revision(&mut self) -> u32 {
        let next = self.maps.revision().expect("revision") + 1;
        self.maps.set_revision(next).expect("set revision");
        next
    }

    /// The connection-tracking entry of the flow between (a, ap) and (b, bp), either way round.
    fn ct(&self, a: IpAddr, ap: u16, b: IpAddr, bp: u16, proto: u8) -> Option<(CtKey, CtEntry)> {
        let (a, b) = (addr16(a), addr16(b));
        let (ap, bp) = (ap.to_be_bytes(), bp.to_be_bytes());
        self.maps.ct_entries().expect("read crs_ct").into_iter().find(|(k, _)| {
            k.proto == proto
                && ((k.addr_lo == a && k.port_lo == ap && k.addr_hi == b && k.port_hi == bp)
                    || (k.addr_lo == b && k.port_lo == bp && k.addr_hi == a && k.port_hi == ap))
        })
    }

    #[track_caller]
    fn ct_expect(&self, a: IpAddr, ap: u16, b: IpAddr, bp: u16, proto: u8) -> (CtKey, CtEntry) {
        self.ct(a, ap, b, bp, proto).unwrap_or_else(|| panic!("no CT entry for {a}:{ap} ⇄ {b}:{bp}/{proto}"))
    }

    /// Overwrites a crs_ct entry through the pinned map.
    fn ct_write(&self, key: &CtKey, entry: &CtEntry) {
        let data = MapData::from_pin(self.dp.maps_dir().join(MAP_CT)).expect("open the pinned crs_ct");
        let mut ct: HashMap<MapData, CtKey, CtEntry> =
            HashMap::try_from(Map::from_map_data(data).expect("crs_ct")).expect("crs_ct layout");
        ct.insert(key, entry, 0).expect("write crs_ct");
    }

    /// Moves the flow's deadline one second into the past.
    fn expire(&self, a: IpAddr, ap: u16, b: IpAddr, bp: u16, proto: u8) {
        let (key, mut entry) = self.ct_expect(a, ap, b, bp, proto);
        entry.expires = coarse_now() - NSEC;
        self.ct_write(&key, &entry);
    }
}

/// Creates the veth `lxcv<n>` (peer `tmpv<n>`) and returns the host side's ifindex.
fn veth(n: u8) -> u32 {
    let host = format!("lxcv{n}");
    let peer = format!("tmpv{n}");
    run(&["ip", "link", "add", &host, "type", "veth", "peer", "name", &peer]);
    nix::net::if_::if_nametoindex(host.as_str()).unwrap_or_else(|e| panic!("ifindex of {host}: {e}"))
}

fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V6(v6) => v6.octets(),
        IpAddr::V4(v4) => {
            let mut a = [0; 16];
            a[..4].copy_from_slice(&v4.octets());
            a
        }
    }
}

/// CLOCK_MONOTONIC_COARSE, the clock of bpf_ktime_get_coarse_ns().
fn coarse_now() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a live, writable timespec; clock_gettime writes only into it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC_COARSE)");
    u64::try_from(ts.tv_sec).expect("seconds") * NSEC + u64::try_from(ts.tv_nsec).expect("nanoseconds")
}

/// The counter increments between two snapshots, one entry per packet, sorted.
fn counted(before: &[(u32, EndpointMetrics)], after: &[(u32, EndpointMetrics)]) -> Vec<Counted> {
    let mut out = Vec::new();
    for (id, now) in after {
        let was = before.iter().find(|(b, _)| b == id).map(|(_, m)| *m).unwrap_or_default();
        for dir in [Dir::Egress, Dir::Ingress] {
            for reason in DropReason::ALL {
                let delta = now.get(reason, dir).packets - was.get(reason, dir).packets;
                for _ in 0..delta {
                    out.push((*id, reason, dir));
                }
            }
        }
    }
    out.sort();
    out
}

/// Runs `test` in a network namespace of its own, with a freshly loaded datapath.
fn with_env(role: &'static str, test: impl FnOnce(&mut Env) + Send + 'static) {
    in_netns(move || async move {
        let mut env = Env::new(role);
        test(&mut env);
    });
}

// ---------------------------------------------------------------------------------------------
// Policy lookup
// ---------------------------------------------------------------------------------------------

#[test]
fn policy_exact_remote_entry_allows_that_remote_only() {
    with_env("exact", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, CID, PD::Egress, M::Port(PROTO_TCP, 80));
        env.allow(a.id, CID, PD::Ingress, M::Port(PROTO_TCP, 8443));
        for fam in FAMILIES {
            env.send(&a, &a.tx(remote(fam), &L4::tcp(40001, 80, TCP_SYN))).expect(
                PASS,
                &[eg(a.n, Forwarded)],
                "egress to the allowed identity and port",
            );
            env.send(&a, &a.tx(remote2(fam), &L4::tcp(40001, 80, TCP_SYN))).expect(
                PASS,
                &[eg(a.n, Forwarded)],
                "another address of the same identity",
            );
            env.send(&a, &a.tx(world(fam), &L4::tcp(40002, 80, TCP_SYN))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "same port, another identity",
            );
            env.send(&a, &a.tx(remote3(fam), &L4::tcp(40002, 80, TCP_SYN))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "same port, another CIDR identity",
            );
            env.send(&a, &a.tx(remote(fam), &L4::tcp(40003, 81, TCP_SYN))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "same identity, another port",
            );
            env.send(&a, &a.tx(remote(fam), &L4::udp(40004, 80, b"x"))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "same identity and port, another protocol",
            );
            env.recv(&a, &a.rx(remote(fam), &L4::tcp(40005, 8443, TCP_SYN))).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                "ingress from the allowed identity",
            );
            env.recv(&a, &a.rx(world(fam), &L4::tcp(40006, 8443, TCP_SYN))).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                "ingress from another identity",
            );
            env.recv(&a, &a.rx(host_ip(fam), &L4::tcp(40007, 8443, TCP_SYN))).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                "ingress from the host",
            );
            env.recv(&a, &a.rx(remote(fam), &L4::tcp(40008, 80, TCP_SYN))).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                "the egress entry does not allow ingress",
            );
        }
    });
}

#[test]
fn policy_any_remote_entry_allows_every_remote() {
    with_env("anyremote", |env| {
        let a = env.endpoint(1, 1001);
        let b = env.endpoint(2, 1002);
        env.allow(b.id, Identity::ANY, PD::Ingress, M::Any);
        env.allow(a.id, Identity::ANY, PD::Egress, M::Port(PROTO_UDP, 53));
        env.allow(a.id, Identity::ANY, PD::Ingress, M::Port(PROTO_TCP, 22));
        for fam in FAMILIES {
            for (i, dst) in [remote(fam), remote3(fam), world(fam), host_ip(fam)].into_iter().enumerate() {
                let sport = 41000 + u16::try_from(i).expect("small");
                env.send(&a, &a.tx(dst, &L4::udp(sport, 53, b"q"))).expect(
                    PASS,
                    &[eg(a.n, Forwarded)],
                    &format!("UDP 53 to {dst}"),
                );
                env.send(&a, &a.tx(dst, &L4::udp(sport, 54, b"q"))).expect(
                    DROP,
                    &[eg(a.n, PolicyDenied)],
                    &format!("UDP 54 to {dst}"),
                );
                env.recv(&a, &a.rx(dst, &L4::tcp(sport, 22, TCP_SYN))).expect(
                    PASS,
                    &[ing(a.n, Forwarded)],
                    &format!("TCP 22 from {dst}"),
                );
            }
            env.send(&a, &a.tx(b.ip(fam), &L4::udp(41100, 53, b"q"))).expect(
                REDIRECT,
                &[eg(a.n, Forwarded), ing(b.n, Forwarded)],
                "UDP 53 to a local endpoint",
            );
            env.send(&a, &a.tx(b.ip(fam), &L4::udp(41100, 54, b"q"))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "UDP 54 to a local endpoint",
            );
        }
    });
}

#[test]
fn policy_protocol_only_entry_allows_every_port_of_that_protocol() {
    with_env("protoonly", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, CID, PD::Egress, M::Proto(PROTO_TCP));
        for fam in FAMILIES {
            for port in [1, 80, 443, 8080, 65535] {
                env.send(&a, &a.tx(remote(fam), &L4::tcp(42000, port, TCP_SYN))).expect(
                    PASS,
                    &[eg(a.n, Forwarded)],
                    &format!("TCP port {port}"),
                );
            }
            env.send(&a, &a.tx(remote(fam), &L4::udp(42000, 80, b"x"))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "UDP is another protocol",
            );
            env.send(&a, &a.tx(remote(fam), &fam.echo(true, 42))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "ICMP is another protocol",
            );
            env.send(&a, &a.tx(world(fam), &L4::tcp(42000, 80, TCP_SYN))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "TCP to another identity",
            );
        }
    });
}

#[test]
fn policy_port_prefix_entry_allows_exactly_its_range_block() {
    with_env("portrange", |env| {
        let a = env.endpoint(1, 1001);
        // 8080-8087: the first 13 bits of 8080 (0x1f90).
        env.allow(a.id, CID, PD::Egress, M::Range(PROTO_TCP, 8080, 13));
        // 1024-2047: the first 6 bits of 1024 (0x0400).
        env.allow(a.id, CID, PD::Ingress, M::Range(PROTO_UDP, 1024, 6));
        for fam in FAMILIES {
            for (port, allowed) in [(8079, false), (8080, true), (8083, true), (8087, true), (8088, false)] {
                let out = env.send(&a, &a.tx(remote(fam), &L4::tcp(43000, port, TCP_SYN)));
                if allowed {
                    out.expect(PASS, &[eg(a.n, Forwarded)], &format!("TCP {port} is in 8080-8087"));
                } else {
                    out.expect(DROP, &[eg(a.n, PolicyDenied)], &format!("TCP {port} is outside 8080-8087"));
                }
            }
            for (port, allowed) in [(1023, false), (1024, true), (1500, true), (2047, true), (2048, false)] {
                let out = env.recv(&a, &a.rx(remote(fam), &L4::udp(43000, port, b"x")));
                if allowed {
                    out.expect(PASS, &[ing(a.n, Forwarded)], &format!("UDP {port} is in 1024-2047"));
                } else {
                    out.expect(DROP, &[ing(a.n, PolicyDenied)], &format!("UDP {port} is outside 1024-2047"));
                }
            }
        }
    });
}

#[test]
fn policy_icmp_type_entry_allows_that_type_only() {
    with_env("icmptype", |env| {
        let a = env.endpoint(1, 1001);
        for fam in FAMILIES {
            env.allow(a.id, CID, PD::Egress, M::Port(fam.icmp(), u16::from(fam.echo_request())));
            env.allow(a.id, CID, PD::Egress, M::Port(fam.icmp(), u16::from(fam.dest_unreach_type())));
        }
        for fam in FAMILIES {
            env.send(&a, &a.tx(remote(fam), &fam.echo(true, 0x100))).expect(
                PASS,
                &[eg(a.n, Forwarded)],
                "echo request (the allowed type)",
            );
            env.send(&a, &a.tx(world(fam), &fam.echo(true, 0x101))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "echo request to another identity",
            );
            // An error about a packet the container received from `remote` (not tracked).
            let (_, quoted) = ip_packet(remote(fam), a.ip(fam), &L4::udp(5000, 6000, b"x"));
            env.send(&a, &a.tx(remote(fam), &fam.dest_unreach(&quoted))).expect(
                PASS,
                &[eg(a.n, Forwarded)],
                "destination unreachable (the allowed type)",
            );
            // Other types to the same address right after an allowed one: each non-echo type
            // is a flow of its own, so the allowed one does not let the others through.
            env.send(&a, &a.tx(remote(fam), &fam.time_exceeded(&quoted))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "time exceeded (not allowed)",
            );
            env.send(&a, &a.tx(remote(fam), &fam.other_icmp())).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "an informational type (not allowed)",
            );
            env.send(&a, &a.tx(remote(fam), &L4::udp(5000, u16::from(fam.echo_request()), b"x"))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "UDP to the port numbered like the type",
            );
        }
    });
}

#[test]
fn policy_deny_of_the_exact_remote_beats_an_allow_of_any() {
    with_env("denyexact", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, Identity::ANY, PD::Egress, M::Any);
        env.deny(a.id, CID, PD::Egress, M::Port(PROTO_TCP, 443));
        env.allow(a.id, Identity::ANY, PD::Ingress, M::Any);
        env.deny(a.id, CID, PD::Ingress, M::Proto(PROTO_UDP));
        for fam in FAMILIES {
            env.send(&a, &a.tx(remote(fam), &L4::tcp(44000, 443, TCP_SYN))).expect(
                DROP,
                &[eg(a.n, PolicyDenyRule)],
                "TCP 443 to the denied identity",
            );
            env.send(&a, &a.tx(world(fam), &L4::tcp(44000, 443, TCP_SYN))).expect(
                PASS,
                &[eg(a.n, Forwarded)],
                "TCP 443 to another identity",
            );
            env.send(&a, &a.tx(remote(fam), &L4::tcp(44000, 444, TCP_SYN))).expect(
                PASS,
                &[eg(a.n, Forwarded)],
                "another port to the denied identity",
            );
            env.recv(&a, &a.rx(remote(fam), &L4::udp(44001, 53, b"x"))).expect(
                DROP,
                &[ing(a.n, PolicyDenyRule)],
                "UDP from the denied identity",
            );
            env.recv(&a, &a.rx(world(fam), &L4::udp(44001, 53, b"x"))).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                "UDP from another identity",
            );
        }
    });
}

#[test]
fn policy_deny_of_any_beats_an_allow_of_the_exact_remote() {
    with_env("denyany", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, CID, PD::Egress, M::Any);
        env.allow(a.id, CID, PD::Egress, M::Port(PROTO_TCP, 22));
        env.deny(a.id, Identity::ANY, PD::Egress, M::Port(PROTO_TCP, 22));
        env.allow(a.id, CID, PD::Ingress, M::Port(PROTO_UDP, 53));
        env.deny(a.id, Identity::ANY, PD::Ingress, M::Proto(PROTO_UDP));
        for fam in FAMILIES {
            env.send(&a, &a.tx(remote(fam), &L4::tcp(45000, 22, TCP_SYN))).expect(
                DROP,
                &[eg(a.n, PolicyDenyRule)],
                "TCP 22 to the explicitly allowed identity",
            );
            env.send(&a, &a.tx(world(fam), &L4::tcp(45000, 22, TCP_SYN))).expect(
                DROP,
                &[eg(a.n, PolicyDenyRule)],
                "TCP 22 to any other identity",
            );
            env.send(&a, &a.tx(remote(fam), &L4::tcp(45000, 23, TCP_SYN))).expect(
                PASS,
                &[eg(a.n, Forwarded)],
                "TCP 23 to the allowed identity",
            );
            env.send(&a, &a.tx(world(fam), &L4::tcp(45000, 23, TCP_SYN))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "TCP 23 to an identity nothing allows",
            );
            env.recv(&a, &a.rx(remote(fam), &L4::udp(45001, 53, b"x"))).expect(
                DROP,
                &[ing(a.n, PolicyDenyRule)],
                "UDP 53 from the explicitly allowed identity",
            );
        }
    });
}

#[test]
fn policy_without_a_matching_entry_is_denied_and_a_deny_entry_is_a_deny_rule() {
    with_env("defaultdeny", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, CID, PD::Egress, M::Port(PROTO_UDP, 53));
        env.deny(a.id, CID, PD::Egress, M::Port(PROTO_UDP, 54));
        env.deny(a.id, CID, PD::Ingress, M::Proto(PROTO_UDP));
        for fam in FAMILIES {
            env.send(&a, &a.tx(remote(fam), &L4::udp(46000, 53, b"x"))).expect(PASS, &[eg(a.n, Forwarded)], "allowed");
            env.send(&a, &a.tx(remote(fam), &L4::udp(46000, 55, b"x"))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "no entry: default deny",
            );
            env.send(&a, &a.tx(remote(fam), &L4::udp(46000, 54, b"x"))).expect(
                DROP,
                &[eg(a.n, PolicyDenyRule)],
                "deny entry",
            );
            env.recv(&a, &a.rx(remote(fam), &L4::udp(46001, 53, b"x"))).expect(
                DROP,
                &[ing(a.n, PolicyDenyRule)],
                "ingress deny entry",
            );
            env.recv(&a, &a.rx(remote(fam), &L4::tcp(46001, 53, TCP_SYN))).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                "ingress without entry",
            );
        }
    });
}

#[test]
fn policy_an_identity_without_entries_is_denied_everything() {
    with_env("failclosed", |env| {
        let open = env.endpoint(1, 1001);
        env.allow_all(open.id);
        let closed = env.endpoint(2, 1002);
        let init = env.endpoint(3, Identity::INIT.0);
        for fam in FAMILIES {
            for ep in [closed, init] {
                for (i, dst) in [remote(fam), world(fam), host_ip(fam)].into_iter().enumerate() {
                    let sport = 47000 + u16::try_from(i).expect("small");
                    for l4 in [L4::tcp(sport, 80, TCP_SYN), L4::udp(sport, 53, b"x"), fam.echo(true, sport)] {
                        env.send(&ep, &ep.tx(dst, &l4)).expect(
                            DROP,
                            &[eg(ep.n, PolicyDenied)],
                            &format!("endpoint {} egress to {dst}", ep.n),
                        );
                        env.recv(&ep, &ep.rx(dst, &l4)).expect(
                            DROP,
                            &[ing(ep.n, PolicyDenied)],
                            &format!("endpoint {} ingress from {dst}", ep.n),
                        );
                    }
                }
                env.send(&open, &open.tx(ep.ip(fam), &L4::tcp(47100, 80, TCP_SYN))).expect(
                    DROP,
                    &[ing(ep.n, PolicyDenied)],
                    "local delivery to an identity without entries",
                );
            }
            env.send(&open, &open.tx(remote(fam), &L4::tcp(47200, 80, TCP_SYN))).expect(
                PASS,
                &[eg(open.n, Forwarded)],
                "the allow-all endpoint is not affected",
            );
            env.recv(&open, &open.rx(remote(fam), &L4::tcp(47201, 80, TCP_SYN))).expect(
                PASS,
                &[ing(open.n, Forwarded)],
                "the allow-all endpoint is not affected",
            );
        }
        assert!(
            env.ct(open.ip(Fam::V6), 47100, closed.ip(Fam::V6), 80, PROTO_TCP).is_none(),
            "a refused flow left a CT entry"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Local delivery
// ---------------------------------------------------------------------------------------------

/// The frame a local delivery puts into `dst`'s container: MACs of `dst`'s pair, hop limit or
/// TTL one less (IPv4 header checksum updated).
fn delivered(src: IpAddr, dst: &Ep, hops: u8, l4: &L4) -> Vec<u8> {
    match (src, dst.ip(Fam::of(src))) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            eth(dst.mac, dst.host_mac, ETH_P_IPV6, &Ipv6::new(s, d).hop_limit(hops).packet(l4))
        }
        (IpAddr::V4(s), IpAddr::V4(d)) => eth(dst.mac, dst.host_mac, ETH_P_IP, &Ipv4::new(s, d).ttl(hops).packet(l4)),
        _ => unreachable!("one family"),
    }
}

#[test]
fn local_delivery_allowed_rewrites_macs_and_decrements_the_hop_limit() {
    with_env("localok", |env| {
        let a = env.endpoint(1, 1001);
        let b = env.endpoint(2, 1002);
        env.allow(a.id, b.id, PD::Egress, M::Port(PROTO_TCP, 80));
        env.allow(b.id, a.id, PD::Ingress, M::Port(PROTO_TCP, 80));
        for fam in FAMILIES {
            let syn = L4::tcp(48000, 80, TCP_SYN);
            let out = env.send(&a, &a.tx(b.ip(fam), &syn)).expect(
                REDIRECT,
                &[eg(a.n, Forwarded), ing(b.n, Forwarded)],
                "allowed both ways: delivered into b",
            );
            assert_eq!(out.frame, delivered(a.ip(fam), &b, 63, &syn), "{fam:?}: the delivered frame");
            let (_, ct) = env.ct_expect(a.ip(fam), 48000, b.ip(fam), 80, PROTO_TCP);
            assert_eq!(ct.flags & (CT_F_EGRESS_OK | CT_F_INGRESS_OK), CT_F_EGRESS_OK | CT_F_INGRESS_OK);

            // Hop limit / TTL 1: not delivered locally; the host stack answers (time exceeded).
            let (ethertype, packet) = match fam {
                Fam::V6 => (ETH_P_IPV6, Ipv6::new(a.ip6, b.ip6).hop_limit(1).packet(&L4::tcp(48001, 80, TCP_SYN))),
                Fam::V4 => (ETH_P_IP, Ipv4::new(a.ip4, b.ip4).ttl(1).packet(&L4::tcp(48001, 80, TCP_SYN))),
            };
            let frame = a.tx_ip(ethertype, &packet);
            let out = env.send(&a, &frame).expect(PASS, &[eg(a.n, Forwarded)], "hop limit 1 goes to the host");
            assert_eq!(out.frame, frame, "unchanged");
        }
    });
}

#[test]
fn local_delivery_receiver_ingress_denial_is_an_ingress_drop_of_the_receiver() {
    with_env("localrecv", |env| {
        let a = env.endpoint(1, 1001);
        let b = env.endpoint(2, 1002);
        env.allow(a.id, Identity::ANY, PD::Egress, M::Any);
        env.allow(b.id, a.id, PD::Ingress, M::Port(PROTO_TCP, 80));
        env.deny(b.id, a.id, PD::Ingress, M::Proto(PROTO_UDP));
        for fam in FAMILIES {
            env.send(&a, &a.tx(b.ip(fam), &L4::tcp(49000, 81, TCP_SYN))).expect(
                DROP,
                &[ing(b.n, PolicyDenied)],
                "b's ingress has no entry for TCP 81",
            );
            env.send(&a, &a.tx(b.ip(fam), &L4::udp(49000, 53, b"x"))).expect(
                DROP,
                &[ing(b.n, PolicyDenyRule)],
                "b's ingress denies UDP",
            );
            env.send(&a, &a.tx(b.ip(fam), &L4::tcp(49000, 80, TCP_SYN))).expect(
                REDIRECT,
                &[eg(a.n, Forwarded), ing(b.n, Forwarded)],
                "TCP 80 is allowed both ways",
            );
            assert!(env.ct(a.ip(fam), 49000, b.ip(fam), 81, PROTO_TCP).is_none(), "refused flows are not tracked");
        }
    });
}

#[test]
fn local_delivery_sender_egress_denial_is_an_egress_drop_of_the_sender() {
    with_env("localsend", |env| {
        let a = env.endpoint(1, 1001);
        let b = env.endpoint(2, 1002);
        env.allow(b.id, Identity::ANY, PD::Ingress, M::Any);
        env.allow(a.id, b.id, PD::Egress, M::Port(PROTO_TCP, 80));
        env.deny(a.id, Identity::ANY, PD::Egress, M::Proto(PROTO_UDP));
        for fam in FAMILIES {
            env.send(&a, &a.tx(b.ip(fam), &L4::tcp(50000, 81, TCP_SYN))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "a's egress has no entry for TCP 81",
            );
            env.send(&a, &a.tx(b.ip(fam), &L4::udp(50000, 53, b"x"))).expect(
                DROP,
                &[eg(a.n, PolicyDenyRule)],
                "a's egress denies UDP",
            );
            env.send(&a, &a.tx(b.ip(fam), &L4::tcp(50000, 80, TCP_SYN))).expect(
                REDIRECT,
                &[eg(a.n, Forwarded), ing(b.n, Forwarded)],
                "TCP 80 is allowed both ways",
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// crs_to_container and the programs' other entry checks
// ---------------------------------------------------------------------------------------------

#[test]
fn to_container_takes_the_source_identity_from_the_ipcache() {
    with_env("srcidentity", |env| {
        let a = env.endpoint(1, 1001);
        let b = env.endpoint(2, 1002);
        env.allow(a.id, Identity::HOST, PD::Ingress, M::Port(PROTO_TCP, 1001));
        env.allow(a.id, CID, PD::Ingress, M::Port(PROTO_TCP, 1002));
        env.allow(a.id, b.id, PD::Ingress, M::Port(PROTO_TCP, 1003));
        env.allow(a.id, Identity::WORLD, PD::Ingress, M::Port(PROTO_TCP, 1004));
        for fam in FAMILIES {
            let sources = [(host_ip(fam), 1001), (remote(fam), 1002), (b.ip(fam), 1003), (world(fam), 1004)];
            for (src, allowed) in sources {
                for port in 1001..=1004 {
                    let out = env.recv(&a, &a.rx(src, &L4::tcp(51000 + port, port, TCP_SYN)));
                    if port == allowed {
                        out.expect(PASS, &[ing(a.n, Forwarded)], &format!("{src} → port {port}"));
                    } else {
                        out.expect(DROP, &[ing(a.n, PolicyDenied)], &format!("{src} → port {port}"));
                    }
                }
            }
        }
    });
}

#[test]
fn to_container_link_local_ipv6_sources_are_the_host() {
    with_env("llhost", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, Identity::HOST, PD::Ingress, M::Port(PROTO_TCP, 1001));
        env.allow(a.id, Identity::WORLD, PD::Ingress, M::Port(PROTO_TCP, 1004));
        for src in [ROUTER_V6, ll(0xabcd), Ipv6Addr::UNSPECIFIED] {
            let src = IpAddr::V6(src);
            env.recv(&a, &a.rx(src, &L4::tcp(52000, 1001, TCP_SYN))).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                &format!("{src} is the host"),
            );
            env.recv(&a, &a.rx(src, &L4::tcp(52000, 1004, TCP_SYN))).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                &format!("{src} is not world"),
            );
        }
        env.recv(&a, &a.rx(world(Fam::V6), &L4::tcp(52000, 1004, TCP_SYN))).expect(
            PASS,
            &[ing(a.n, Forwarded)],
            "a global source without ipcache entry is world",
        );
    });
}

#[test]
fn to_container_passes_arp() {
    with_env("arpin", |env| {
        // No policy entries at all: ARP is not policed.
        let a = env.endpoint(1, 1001);
        let host = Ipv4Addr::new(10, 250, 0, 254);
        for frame in [
            eth(BROADCAST_MAC, a.host_mac, ETH_P_ARP, &arp(ARP_REQUEST, a.host_mac, host, [0; 6], a.ip4)),
            eth(a.mac, a.host_mac, ETH_P_ARP, &arp(ARP_REPLY, a.host_mac, GATEWAY_V4, a.mac, a.ip4)),
        ] {
            let out = env.recv(&a, &frame).expect(PASS, &[ing(a.n, Forwarded)], "ARP to the container");
            assert_eq!(out.frame, frame);
        }
    });
}

#[test]
fn unknown_interfaces_drop_everything_under_endpoint_0() {
    with_env("unknown", |env| {
        let a = env.endpoint(1, 1001);
        env.allow_all(a.id);
        let stranger = Ep { ifindex: veth(9), ..a };
        let gone = env.endpoint(3, 1001);
        env.allow_all(gone.id);
        env.dp.remove_endpoint(gone.ifindex).expect("remove endpoint");
        let frames = [
            a.tx(remote(Fam::V6), &L4::tcp(53000, 80, TCP_SYN)),
            a.tx(remote(Fam::V4), &L4::udp(53000, 53, b"x")),
            eth(BROADCAST_MAC, a.mac, ETH_P_ARP, &arp(ARP_REQUEST, a.mac, a.ip4, [0; 6], GATEWAY_V4)),
            eth(a.host_mac, a.mac, 0x88b5, &[0; 46]),
        ];
        for ep in [stranger, gone] {
            for frame in &frames {
                env.send(&ep, frame).expect(DROP, &[eg(0, UnknownEndpoint)], "crs_from_container");
                env.recv(&ep, frame).expect(DROP, &[ing(0, UnknownEndpoint)], "crs_to_container");
            }
        }
        env.send(&a, &frames[0]).expect(PASS, &[eg(a.n, Forwarded)], "the known interface");
    });
}

#[test]
fn other_ethertypes_are_unsupported_protocols() {
    with_env("ethertype", |env| {
        let a = env.endpoint(1, 1001);
        env.allow_all(a.id);
        for ethertype in [0x88b5, 0x8100, 0x8847, 0x88cc] {
            let frame = eth(a.host_mac, a.mac, ethertype, &[0; 46]);
            env.send(&a, &frame).expect(
                DROP,
                &[eg(a.n, UnsupportedProtocol)],
                &format!("ethertype {ethertype:#06x} from the container"),
            );
            env.recv(&a, &frame).expect(
                DROP,
                &[ing(a.n, UnsupportedProtocol)],
                &format!("ethertype {ethertype:#06x} to the container"),
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Connection tracking
// ---------------------------------------------------------------------------------------------

#[test]
fn ct_replies_pass_where_a_new_flow_would_be_denied() {
    with_env("ctreply", |env| {
        let a = env.endpoint(1, 1001);
        let b = env.endpoint(2, 1002);
        // a may open TCP 80 to b and b accepts it; nothing else in either direction.
        env.allow(a.id, b.id, PD::Egress, M::Port(PROTO_TCP, 80));
        env.allow(b.id, a.id, PD::Ingress, M::Port(PROTO_TCP, 80));
        for fam in FAMILIES {
            env.send(&b, &b.tx(a.ip(fam), &L4::tcp(54000, 80, TCP_SYN))).expect(
                DROP,
                &[eg(b.n, PolicyDenied)],
                "b may not open a flow to a",
            );
            env.send(&a, &a.tx(b.ip(fam), &L4::tcp(54000, 80, TCP_SYN))).expect(
                REDIRECT,
                &[eg(a.n, Forwarded), ing(b.n, Forwarded)],
                "SYN a → b",
            );
            let synack = L4::tcp(80, 54000, TCP_SYN | TCP_ACK);
            let out = env.send(&b, &b.tx(a.ip(fam), &synack)).expect(
                REDIRECT,
                &[eg(b.n, Forwarded), ing(a.n, Forwarded)],
                "SYN-ACK b → a is the flow's reply",
            );
            assert_eq!(out.frame, delivered(b.ip(fam), &a, 63, &synack), "delivered into a");
            env.send(&a, &a.tx(b.ip(fam), &L4::tcp(54000, 80, TCP_ACK))).expect(
                REDIRECT,
                &[eg(a.n, Forwarded), ing(b.n, Forwarded)],
                "ACK a → b",
            );
            env.send(&b, &b.tx(a.ip(fam), &L4::tcp(80, 54000, TCP_ACK | TCP_PSH))).expect(
                REDIRECT,
                &[eg(b.n, Forwarded), ing(a.n, Forwarded)],
                "data b → a",
            );
            let (_, ct) = env.ct_expect(a.ip(fam), 54000, b.ip(fam), 80, PROTO_TCP);
            assert_eq!(ct.packets, [2, 2], "{fam:?}: packets each way");
            assert_ne!(ct.flags & CT_F_SEEN_REPLY, 0, "{fam:?}: the reply was seen");
            env.send(&b, &b.tx(a.ip(fam), &L4::tcp(80, 54001, TCP_SYN | TCP_ACK))).expect(
                DROP,
                &[eg(b.n, PolicyDenied)],
                "a SYN-ACK of no tracked flow is a new flow of b's",
            );
        }
    });
}

#[test]
fn ct_each_enforcement_point_checks_its_own_endpoint() {
    with_env("ctpoints", |env| {
        // Neither endpoint is delivered locally: packets go through the host stack, so the
        // sender's crs_from_container and the receiver's crs_to_container both run.
        let a = env.endpoint_with(1, 1001, 1, false);
        let b = env.endpoint_with(2, 1002, 2, false);
        env.allow(a.id, b.id, PD::Egress, M::Proto(PROTO_TCP));
        env.allow(b.id, a.id, PD::Ingress, M::Port(PROTO_TCP, 80));
        for fam in FAMILIES {
            let syn = a.tx(b.ip(fam), &L4::tcp(55000, 80, TCP_SYN));
            env.send(&a, &syn).expect(PASS, &[eg(a.n, Forwarded)], "SYN leaves a to the host");
            let (_, ct) = env.ct_expect(a.ip(fam), 55000, b.ip(fam), 80, PROTO_TCP);
            assert_eq!(ct.flags & (CT_F_EGRESS_OK | CT_F_INGRESS_OK), CT_F_EGRESS_OK, "only a's check so far");
            env.recv(&b, &syn).expect(PASS, &[ing(b.n, Forwarded)], "SYN arrives at b");
            let (_, ct) = env.ct_expect(a.ip(fam), 55000, b.ip(fam), 80, PROTO_TCP);
            assert_eq!(ct.flags & (CT_F_EGRESS_OK | CT_F_INGRESS_OK), CT_F_EGRESS_OK | CT_F_INGRESS_OK);
            let synack = b.tx(a.ip(fam), &L4::tcp(80, 55000, TCP_SYN | TCP_ACK));
            env.send(&b, &synack).expect(PASS, &[eg(b.n, Forwarded)], "SYN-ACK leaves b");
            env.recv(&a, &synack).expect(PASS, &[ing(a.n, Forwarded)], "SYN-ACK arrives at a");

            // a's egress allows TCP 81, b's ingress never did.
            let syn = a.tx(b.ip(fam), &L4::tcp(55001, 81, TCP_SYN));
            env.send(&a, &syn).expect(PASS, &[eg(a.n, Forwarded)], "SYN to 81 leaves a");
            env.recv(&b, &syn).expect(DROP, &[ing(b.n, PolicyDenied)], "b never allowed TCP 81");
            assert!(env.ct(a.ip(fam), 55001, b.ip(fam), 81, PROTO_TCP).is_none(), "the refused flow is deleted");
            env.recv(&b, &a.tx(b.ip(fam), &L4::tcp(55001, 81, TCP_ACK))).expect(
                DROP,
                &[ing(b.n, PolicyDenied)],
                "nor any later packet of it",
            );
            // A mid-flow packet nobody tracked is a new flow too.
            env.recv(&a, &a.rx(remote(fam), &L4::tcp(443, 55002, TCP_ACK))).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                "an ACK of an unknown flow from outside",
            );
        }
    });
}

#[test]
fn ct_revision_bump_revokes_and_restores_established_flows() {
    with_env("ctrevision", |env| {
        let a = env.endpoint(1, 1001);
        let http = M::Port(PROTO_TCP, 80);
        env.allow(a.id, CID, PD::Egress, http);
        for fam in FAMILIES {
            let x = remote(fam);
            let out_ack = a.tx(x, &L4::tcp(56000, 80, TCP_ACK));
            let in_ack = a.rx(x, &L4::tcp(80, 56000, TCP_ACK));
            env.send(&a, &a.tx(x, &L4::tcp(56000, 80, TCP_SYN))).expect(PASS, &[eg(a.n, Forwarded)], "SYN");
            env.recv(&a, &a.rx(x, &L4::tcp(80, 56000, TCP_SYN | TCP_ACK))).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                "SYN-ACK",
            );

            // A policy change alone does not touch established flows …
            env.deny(a.id, CID, PD::Egress, http);
            env.send(&a, &out_ack).expect(PASS, &[eg(a.n, Forwarded)], "before the revision bump");
            // … the revision bump makes their next packet be checked again.
            env.bump_revision();
            env.send(&a, &out_ack).expect(DROP, &[eg(a.n, PolicyDenyRule)], "revoked");
            assert!(env.ct(a.ip(fam), 56000, x, 80, PROTO_TCP).is_none(), "{fam:?}: the revoked flow is deleted");
            env.recv(&a, &in_ack).expect(DROP, &[ing(a.n, PolicyDenied)], "the reply is no flow any more");

            env.allow(a.id, CID, PD::Egress, http);
            let revision = env.bump_revision();
            env.send(&a, &out_ack).expect(PASS, &[eg(a.n, Forwarded)], "allowed again");
            let (_, ct) = env.ct_expect(a.ip(fam), 56000, x, 80, PROTO_TCP);
            assert_eq!(ct.revision, revision);
            env.recv(&a, &in_ack).expect(PASS, &[ing(a.n, Forwarded)], "the reply passes again");

            // A bump with the allow still there: checked again, still allowed, and re-stamped.
            let revision = env.bump_revision();
            env.recv(&a, &in_ack).expect(PASS, &[ing(a.n, Forwarded)], "re-checked in the original orientation");
            let (_, ct) = env.ct_expect(a.ip(fam), 56000, x, 80, PROTO_TCP);
            assert_eq!(ct.revision, revision);
            assert_ne!(ct.flags & CT_F_EGRESS_OK, 0);

            // Revoked with the reply as the next packet: it is checked as a's egress to x:80.
            env.deny(a.id, CID, PD::Egress, http);
            env.bump_revision();
            env.recv(&a, &in_ack).expect(DROP, &[ing(a.n, PolicyDenyRule)], "the reply of a revoked flow");
            assert!(env.ct(a.ip(fam), 56000, x, 80, PROTO_TCP).is_none(), "{fam:?}: the revoked flow is deleted");
            env.allow(a.id, CID, PD::Egress, http);
            env.bump_revision();
        }
    });
}

#[test]
fn ct_an_expired_entry_is_a_new_flow() {
    with_env("ctexpired", |env| {
        let a = env.endpoint(1, 1001);
        let dns = M::Port(PROTO_UDP, 53);
        env.allow(a.id, CID, PD::Egress, dns);
        for fam in FAMILIES {
            let x = remote(fam);
            let query = a.tx(x, &L4::udp(57000, 53, b"query"));
            let answer = a.rx(x, &L4::udp(53, 57000, b"answer"));
            env.send(&a, &query).expect(PASS, &[eg(a.n, Forwarded)], "first query");
            env.unset(a.id, CID, PD::Egress, dns);
            env.send(&a, &query).expect(PASS, &[eg(a.n, Forwarded)], "the entry is in force (same revision)");
            env.expire(a.ip(fam), 57000, x, 53, PROTO_UDP);
            env.send(&a, &query).expect(DROP, &[eg(a.n, PolicyDenied)], "expired: checked as a new flow");

            env.allow(a.id, CID, PD::Egress, dns);
            let t0 = coarse_now();
            env.send(&a, &query).expect(PASS, &[eg(a.n, Forwarded)], "expired, allowed as a new flow");
            let (_, ct) = env.ct_expect(a.ip(fam), 57000, x, 53, PROTO_UDP);
            assert_eq!(ct.packets, [1, 0], "{fam:?}: a fresh entry");
            assert!(ct.created >= t0 && ct.expires >= t0 + 60 * NSEC, "{fam:?}: {ct:?}");
            env.recv(&a, &answer).expect(PASS, &[ing(a.n, Forwarded)], "the answer is a reply");
            env.expire(a.ip(fam), 57000, x, 53, PROTO_UDP);
            env.recv(&a, &answer).expect(DROP, &[ing(a.n, PolicyDenied)], "an answer after expiry is a new flow");
        }
    });
}

#[test]
fn ct_rst_closes_the_entry_and_a_syn_on_a_closing_entry_is_a_new_flow() {
    with_env("ctrst", |env| {
        let a = env.endpoint(1, 1001);
        let http = M::Port(PROTO_TCP, 80);
        env.allow(a.id, CID, PD::Egress, http);
        for fam in FAMILIES {
            let x = remote(fam);
            let syn = a.tx(x, &L4::tcp(58000, 80, TCP_SYN));
            let t0 = coarse_now();
            env.send(&a, &syn).expect(PASS, &[eg(a.n, Forwarded)], "SYN");
            let t1 = coarse_now();
            let (_, ct) = env.ct_expect(a.ip(fam), 58000, x, 80, PROTO_TCP);
            assert!((t0 + 60 * NSEC..=t1 + 60 * NSEC).contains(&ct.expires), "{fam:?}: 60 s until a reply");
            let t0 = coarse_now();
            env.recv(&a, &a.rx(x, &L4::tcp(80, 58000, TCP_SYN | TCP_ACK))).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                "SYN-ACK",
            );
            let t1 = coarse_now();
            let (_, ct) = env.ct_expect(a.ip(fam), 58000, x, 80, PROTO_TCP);
            assert!((t0 + 21600 * NSEC..=t1 + 21600 * NSEC).contains(&ct.expires), "{fam:?}: 6 h established");
            assert_eq!(ct.flags & CT_F_CLOSING, 0);

            let t0 = coarse_now();
            env.send(&a, &a.tx(x, &L4::tcp(58000, 80, TCP_RST | TCP_ACK))).expect(PASS, &[eg(a.n, Forwarded)], "RST");
            let t1 = coarse_now();
            let (_, ct) = env.ct_expect(a.ip(fam), 58000, x, 80, PROTO_TCP);
            assert_ne!(ct.flags & CT_F_CLOSING, 0, "{fam:?}: RST marks the entry closing");
            assert!((t0 + 10 * NSEC..=t1 + 10 * NSEC).contains(&ct.expires), "{fam:?}: 10 s once closing");

            env.unset(a.id, CID, PD::Egress, http);
            env.recv(&a, &a.rx(x, &L4::tcp(80, 58000, TCP_ACK))).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                "a straggler of the closing flow",
            );
            env.send(&a, &syn).expect(DROP, &[eg(a.n, PolicyDenied)], "a SYN on a closing entry is a new flow");
            env.allow(a.id, CID, PD::Egress, http);
            env.send(&a, &syn).expect(PASS, &[eg(a.n, Forwarded)], "the new flow, allowed");
            let (_, ct) = env.ct_expect(a.ip(fam), 58000, x, 80, PROTO_TCP);
            assert_eq!(ct.flags & CT_F_CLOSING, 0, "{fam:?}: a fresh entry");
            assert_eq!(ct.packets, [1, 0], "{fam:?}: a fresh entry");

            // The peer's RST closes too, and so do FINs both ways.
            env.recv(&a, &a.rx(x, &L4::tcp(80, 58000, TCP_RST))).expect(PASS, &[ing(a.n, Forwarded)], "peer RST");
            let (_, ct) = env.ct_expect(a.ip(fam), 58000, x, 80, PROTO_TCP);
            assert_ne!(ct.flags & CT_F_CLOSING, 0, "{fam:?}: the peer's RST marks the entry closing");
            env.send(&a, &a.tx(x, &L4::tcp(58001, 80, TCP_SYN))).expect(PASS, &[eg(a.n, Forwarded)], "SYN");
            env.recv(&a, &a.rx(x, &L4::tcp(80, 58001, TCP_SYN | TCP_ACK))).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                "SYN-ACK",
            );
            env.send(&a, &a.tx(x, &L4::tcp(58001, 80, TCP_FIN | TCP_ACK))).expect(PASS, &[eg(a.n, Forwarded)], "FIN");
            let (_, ct) = env.ct_expect(a.ip(fam), 58001, x, 80, PROTO_TCP);
            assert_eq!(ct.flags & CT_F_CLOSING, 0, "{fam:?}: one FIN does not close");
            let t0 = coarse_now();
            env.recv(&a, &a.rx(x, &L4::tcp(80, 58001, TCP_FIN | TCP_ACK))).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                "FIN back",
            );
            let t1 = coarse_now();
            let (_, ct) = env.ct_expect(a.ip(fam), 58001, x, 80, PROTO_TCP);
            assert_ne!(ct.flags & CT_F_CLOSING, 0, "{fam:?}: FIN both ways closes");
            assert!((t0 + 10 * NSEC..=t1 + 10 * NSEC).contains(&ct.expires), "{fam:?}: 10 s once closing");
        }
    });
}

#[test]
fn ct_udp_replies_pass() {
    with_env("ctudp", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, CID, PD::Egress, M::Port(PROTO_UDP, 53));
        for fam in FAMILIES {
            let x = remote(fam);
            env.send(&a, &a.tx(x, &L4::udp(59000, 53, b"query"))).expect(PASS, &[eg(a.n, Forwarded)], "query");
            env.recv(&a, &a.rx(x, &L4::udp(53, 59000, b"answer"))).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                "the answer is the flow's reply",
            );
            env.recv(&a, &a.rx(x, &L4::udp(53, 59001, b"answer"))).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                "to another port: no flow",
            );
            env.recv(&a, &a.rx(remote2(fam), &L4::udp(53, 59000, b"answer"))).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                "from another address: no flow",
            );
            env.recv(&a, &a.rx(x, &L4::tcp(53, 59000, TCP_SYN | TCP_ACK))).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                "another protocol: no flow",
            );
            let (_, ct) = env.ct_expect(a.ip(fam), 59000, x, 53, PROTO_UDP);
            assert_eq!(ct.packets, [1, 1], "{fam:?}");
            assert_ne!(ct.flags & CT_F_SEEN_REPLY, 0, "{fam:?}");
        }
    });
}

#[test]
fn ct_icmp_echo_policy_is_the_request_type_and_replies_pass() {
    with_env("ctecho", |env| {
        let a = env.endpoint(1, 1001);
        for fam in FAMILIES {
            env.allow(a.id, CID, PD::Egress, M::Port(fam.icmp(), u16::from(fam.echo_request())));
            // An entry for the reply type allows no requests.
            env.allow(a.id, Identity::WORLD, PD::Egress, M::Port(fam.icmp(), u16::from(fam.echo_reply())));
        }
        for fam in FAMILIES {
            let x = remote(fam);
            env.send(&a, &a.tx(x, &fam.echo(true, 0x1111))).expect(PASS, &[eg(a.n, Forwarded)], "echo request");
            let reply = a.rx(x, &fam.echo(false, 0x1111));
            env.recv(&a, &reply).expect(PASS, &[ing(a.n, Forwarded)], "echo reply of the tracked request");
            env.recv(&a, &a.rx(x, &fam.echo(false, 0x2222))).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                "echo reply with another identifier",
            );
            env.send(&a, &a.tx(world(fam), &fam.echo(true, 0x3333))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "requests are checked against the request type",
            );
            let (_, ct) = env.ct_expect(a.ip(fam), 0x1111, x, 0x1111, fam.icmp());
            assert_eq!(ct.packets, [1, 1], "{fam:?}");

            // Checked again after a bump: against the request type, in the original orientation.
            env.bump_revision();
            env.recv(&a, &reply).expect(PASS, &[ing(a.n, Forwarded)], "re-checked reply");
            env.unset(a.id, CID, PD::Egress, M::Port(fam.icmp(), u16::from(fam.echo_request())));
            env.bump_revision();
            env.recv(&a, &reply).expect(DROP, &[ing(a.n, PolicyDenied)], "the request type is revoked");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Related ICMP errors
// ---------------------------------------------------------------------------------------------

#[test]
fn icmp_errors_quoting_a_tracked_flow_pass_as_related() {
    with_env("related", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, CID, PD::Egress, M::Port(PROTO_UDP, 53));
        env.allow(a.id, CID, PD::Egress, M::Port(PROTO_TCP, 80));
        env.allow(a.id, CID, PD::Egress, M::Port(Fam::V6.icmp(), 128));
        env.allow(a.id, CID, PD::Egress, M::Port(Fam::V4.icmp(), 8));
        // a's ingress denies everything from the routers' identity.
        env.deny(a.id, CID, PD::Ingress, M::Any);
        for fam in FAMILIES {
            let (x, router) = (remote(fam), remote2(fam));
            let udp = L4::udp(60000, 53, b"query");
            env.send(&a, &a.tx(x, &udp)).expect(PASS, &[eg(a.n, Forwarded)], "UDP query");
            let (_, quoted) = ip_packet(a.ip(fam), x, &udp);
            for error in [fam.dest_unreach(&quoted), fam.too_big(&quoted), fam.time_exceeded(&quoted)] {
                env.recv(&a, &a.rx(router, &error)).expect(
                    PASS,
                    &[ing(a.n, Forwarded)],
                    &format!("ICMP type {} about the UDP flow", error.bytes[0]),
                );
                env.recv(&a, &a.rx(x, &error)).expect(
                    PASS,
                    &[ing(a.n, Forwarded)],
                    &format!("ICMP type {} from the peer itself", error.bytes[0]),
                );
            }
            let syn = L4::tcp(60001, 80, TCP_SYN);
            env.send(&a, &a.tx(x, &syn)).expect(PASS, &[eg(a.n, Forwarded)], "TCP SYN");
            let (_, quoted) = ip_packet(a.ip(fam), x, &syn);
            env.recv(&a, &a.rx(router, &fam.too_big(&quoted))).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                "packet too big about the TCP flow",
            );
            let ping = fam.echo(true, 0x6002);
            env.send(&a, &a.tx(x, &ping)).expect(PASS, &[eg(a.n, Forwarded)], "echo request");
            let (_, quoted) = ip_packet(a.ip(fam), x, &ping);
            env.recv(&a, &a.rx(router, &fam.time_exceeded(&quoted))).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                "time exceeded about the echo request",
            );
            // Control: the same router's other traffic is denied.
            env.recv(&a, &a.rx(router, &L4::udp(53, 60000, b"x"))).expect(
                DROP,
                &[ing(a.n, PolicyDenyRule)],
                "the router itself is denied",
            );
        }
    });
}

#[test]
fn icmp_errors_quoting_an_untracked_flow_are_checked_like_any_packet() {
    with_env("unrelated", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, CID, PD::Egress, M::Port(PROTO_UDP, 53));
        env.deny(a.id, CID, PD::Ingress, M::Any);
        for fam in FAMILIES {
            env.allow(a.id, Identity::WORLD, PD::Ingress, M::Port(fam.icmp(), u16::from(fam.dest_unreach_type())));
        }
        for fam in FAMILIES {
            let (x, router) = (remote(fam), remote2(fam));
            let udp = L4::udp(61000, 53, b"query");
            env.send(&a, &a.tx(x, &udp)).expect(PASS, &[eg(a.n, Forwarded)], "UDP query");

            let (_, never_sent) = ip_packet(a.ip(fam), x, &L4::udp(61001, 53, b"query"));
            env.recv(&a, &a.rx(router, &fam.dest_unreach(&never_sent))).expect(
                DROP,
                &[ing(a.n, PolicyDenyRule)],
                "quoting a flow that is not tracked",
            );
            // The tracked flow, but quoting a packet a did not send (its reply direction).
            let (_, not_ours) = ip_packet(x, a.ip(fam), &L4::udp(53, 61000, b"answer"));
            env.recv(&a, &a.rx(router, &fam.dest_unreach(&not_ours))).expect(
                DROP,
                &[ing(a.n, PolicyDenyRule)],
                "quoting a packet the receiver did not send",
            );
            let (_, quoted) = ip_packet(a.ip(fam), x, &udp);
            env.recv(&a, &a.rx(router, &fam.dest_unreach(&quoted[..quoted.len().min(24)]))).expect(
                DROP,
                &[ing(a.n, PolicyDenyRule)],
                "quoting too little to find the flow",
            );
            // Untracked errors from world are checked with their type as the port.
            env.recv(&a, &a.rx(world(fam), &fam.dest_unreach(&never_sent))).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                "destination unreachable from world is allowed by type",
            );
            env.recv(&a, &a.rx(world2(fam), &fam.time_exceeded(&never_sent))).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                "time exceeded from world is not",
            );
            // A stale revision: the tracked flow is no longer "allowed at the current revision".
            env.recv(&a, &a.rx(router, &fam.dest_unreach(&quoted))).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                "related at the current revision",
            );
            env.bump_revision();
            env.recv(&a, &a.rx(router, &fam.dest_unreach(&quoted))).expect(
                DROP,
                &[ing(a.n, PolicyDenyRule)],
                "related only to a flow checked at an older revision",
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The parser
// ---------------------------------------------------------------------------------------------

#[test]
fn parser_skips_ipv4_options() {
    with_env("ipv4opts", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, CID, PD::Egress, M::Port(PROTO_TCP, 80));
        env.allow(a.id, CID, PD::Ingress, M::Port(PROTO_UDP, 5353));
        let x = Ipv4Addr::new(198, 51, 100, 10);
        // ihl 6 (four NOPs) and ihl 8 (record route): read as ports, neither would be allowed.
        let options: [&[u8]; 2] = [&[1, 1, 1, 1], &[7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0]];
        for (i, opts) in options.into_iter().enumerate() {
            let sport = 62000 + u16::try_from(i).expect("small");
            let ip = Ipv4::new(a.ip4, x).options(opts);
            env.send(&a, &a.tx_ip(ETH_P_IP, &ip.packet(&L4::tcp(sport, 80, TCP_SYN)))).expect(
                PASS,
                &[eg(a.n, Forwarded)],
                &format!("TCP 80 behind {} option bytes", opts.len()),
            );
            env.send(&a, &a.tx_ip(ETH_P_IP, &ip.packet(&L4::tcp(sport, 81, TCP_SYN)))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                &format!("TCP 81 behind {} option bytes", opts.len()),
            );
            let ip = Ipv4::new(x, a.ip4).options(opts);
            env.recv(&a, &a.rx_ip(ETH_P_IP, &ip.packet(&L4::udp(sport, 5353, b"x")))).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                &format!("UDP 5353 behind {} option bytes", opts.len()),
            );
            env.recv(&a, &a.rx_ip(ETH_P_IP, &ip.packet(&L4::udp(sport, 5354, b"x")))).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                &format!("UDP 5354 behind {} option bytes", opts.len()),
            );
        }
    });
}

#[test]
fn parser_follows_ipv6_extension_headers() {
    with_env("ipv6ext", |env| {
        let a = env.endpoint(1, 1001);
        let x = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
        env.allow(a.id, CID, PD::Egress, M::Port(PROTO_UDP, 53));
        env.allow(a.id, CID, PD::Egress, M::Proto(50));
        env.allow(a.id, CID, PD::Ingress, M::Port(PROTO_TCP, 80));
        let chains: [&[Ext]; 3] = [
            &[Ext::HopByHop(0), Ext::DstOpts(1), Ext::Routing],
            &[Ext::HopByHop(1), Ext::Routing, Ext::Ah, Ext::DstOpts(0)],
            &[Ext::DstOpts(3)],
        ];
        for (i, chain) in chains.into_iter().enumerate() {
            let sport = 63000 + u16::try_from(i).expect("small");
            let ip = chain.iter().fold(Ipv6::new(a.ip6, x), |ip, ext| ip.ext(*ext));
            env.send(&a, &a.tx_ip(ETH_P_IPV6, &ip.packet(&L4::udp(sport, 53, b"q")))).expect(
                PASS,
                &[eg(a.n, Forwarded)],
                &format!("UDP 53 behind {chain:?}"),
            );
            env.send(&a, &a.tx_ip(ETH_P_IPV6, &ip.packet(&L4::udp(sport, 54, b"q")))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                &format!("UDP 54 behind {chain:?}"),
            );
            env.send(&a, &a.tx_ip(ETH_P_IPV6, &ip.packet(&L4::raw(50, &[0, 0, 1, 0, 0, 0, 0, 1])))).expect(
                PASS,
                &[eg(a.n, Forwarded)],
                &format!("ESP behind {chain:?}"),
            );
            env.send(&a, &a.tx_ip(ETH_P_IPV6, &ip.packet(&L4::raw(59, &[])))).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                &format!("no next header behind {chain:?}"),
            );
            let ip = chain.iter().fold(Ipv6::new(x, a.ip6), |ip, ext| ip.ext(*ext));
            env.recv(&a, &a.rx_ip(ETH_P_IPV6, &ip.packet(&L4::tcp(sport, 80, TCP_SYN)))).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                &format!("TCP 80 behind {chain:?}"),
            );
            env.recv(&a, &a.rx_ip(ETH_P_IPV6, &ip.packet(&L4::tcp(sport, 81, TCP_SYN)))).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                &format!("TCP 81 behind {chain:?}"),
            );
        }
    });
}

#[test]
fn parser_follows_8_extension_headers_and_drops_more() {
    with_env("ext9", |env| {
        let a = env.endpoint(1, 1001);
        let x = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
        env.allow(a.id, CID, PD::Egress, M::Port(PROTO_UDP, 53));
        env.allow(a.id, CID, PD::Ingress, M::Port(PROTO_UDP, 53));
        let chain = |n: usize, ip: Ipv6| {
            (0..n).fold(ip, |ip, i| ip.ext(if i == 0 { Ext::HopByHop(0) } else { Ext::DstOpts(0) }))
        };
        for n in [7, 8] {
            let out = chain(n, Ipv6::new(a.ip6, x)).packet(&L4::udp(64000, 53, b"q"));
            env.send(&a, &a.tx_ip(ETH_P_IPV6, &out)).expect(
                PASS,
                &[eg(a.n, Forwarded)],
                &format!("{n} extension headers are followed"),
            );
            let out = chain(n, Ipv6::new(a.ip6, x)).packet(&L4::udp(64000, 54, b"q"));
            env.send(&a, &a.tx_ip(ETH_P_IPV6, &out)).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                &format!("{n} extension headers, another port"),
            );
            let inbound = chain(n, Ipv6::new(x, a.ip6)).packet(&L4::udp(64001, 53, b"q"));
            env.recv(&a, &a.rx_ip(ETH_P_IPV6, &inbound)).expect(
                PASS,
                &[ing(a.n, Forwarded)],
                &format!("{n} extension headers inbound"),
            );
        }
        for n in [9, 12] {
            let out = chain(n, Ipv6::new(a.ip6, x)).packet(&L4::udp(64002, 53, b"q"));
            env.send(&a, &a.tx_ip(ETH_P_IPV6, &out)).expect(
                DROP,
                &[eg(a.n, ExtHeaders)],
                &format!("{n} extension headers are too many"),
            );
            let inbound = chain(n, Ipv6::new(x, a.ip6)).packet(&L4::udp(64003, 53, b"q"));
            env.recv(&a, &a.rx_ip(ETH_P_IPV6, &inbound)).expect(
                DROP,
                &[ing(a.n, ExtHeaders)],
                &format!("{n} extension headers inbound"),
            );
        }
    });
}

#[test]
fn parser_truncated_headers_are_malformed() {
    with_env("truncated", |env| {
        let a = env.endpoint(1, 1001);
        env.allow_all(a.id);
        for fam in FAMILIES {
            let x = remote(fam);
            for (l4, what) in [
                (L4::tcp(1, 80, TCP_SYN).truncated(10), "TCP header of 10 bytes"),
                (L4::udp(1, 53, b"").truncated(3), "UDP header of 3 bytes"),
                (fam.echo(true, 7).truncated(6), "ICMP header of 6 bytes"),
            ] {
                env.send(&a, &a.tx(x, &l4)).expect(DROP, &[eg(a.n, Malformed)], what);
                env.recv(&a, &a.rx(x, &l4)).expect(DROP, &[ing(a.n, Malformed)], what);
            }
            // A complete header of each passes (allow-all): the drops above are the truncation.
            env.send(&a, &a.tx(x, &L4::tcp(1, 80, TCP_SYN))).expect(PASS, &[eg(a.n, Forwarded)], "full TCP");
        }
        // An extension header that runs past the packet.
        let x = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
        let frame = a.tx_ip(ETH_P_IPV6, &Ipv6::new(a.ip6, x).packet(&L4::raw(60, &[17])));
        env.send(&a, &frame).expect(DROP, &[eg(a.n, Malformed)], "truncated destination options");
        // (IP headers cut short cannot be tried: BPF_PROG_TEST_RUN refuses a frame whose IPv4 or
        // IPv6 header is incomplete with EINVAL before the program runs.)
        // IPv4 options that run past the packet.
        let long = Ipv4::new(a.ip4, Ipv4Addr::new(198, 51, 100, 10)).ihl(15).packet(&L4::udp(1, 53, b""));
        env.send(&a, &a.tx_ip(ETH_P_IP, &long)).expect(DROP, &[eg(a.n, Malformed)], "ihl beyond the packet");
    });
}

#[test]
fn parser_ipv4_ihl_below_5_is_malformed() {
    with_env("ihl", |env| {
        let a = env.endpoint(1, 1001);
        env.allow_all(a.id);
        let x = Ipv4Addr::new(198, 51, 100, 10);
        for ihl in [0, 4] {
            let out = Ipv4::new(a.ip4, x).ihl(ihl).packet(&L4::tcp(1, 80, TCP_SYN));
            env.send(&a, &a.tx_ip(ETH_P_IP, &out)).expect(DROP, &[eg(a.n, Malformed)], &format!("ihl {ihl} out"));
            let inbound = Ipv4::new(x, a.ip4).ihl(ihl).packet(&L4::tcp(1, 80, TCP_SYN));
            env.recv(&a, &a.rx_ip(ETH_P_IP, &inbound)).expect(DROP, &[ing(a.n, Malformed)], &format!("ihl {ihl} in"));
        }
        let out = Ipv4::new(a.ip4, x).ihl(5).packet(&L4::tcp(1, 80, TCP_SYN));
        env.send(&a, &a.tx_ip(ETH_P_IP, &out)).expect(PASS, &[eg(a.n, Forwarded)], "ihl 5");
    });
}

/// The first fragment of a UDP datagram and a later one (no UDP header; its first bytes are
/// `later`), as IPv4 fragments or behind IPv6 fragment headers.
fn fragments(fam: Fam, src: IpAddr, dst: IpAddr, id: u16, sport: u16, dport: u16, later: [u8; 4]) -> [Vec<u8>; 2] {
    let first = L4::udp(sport, dport, &[0x55; 32]);
    let mut rest = later.to_vec();
    rest.resize(24, 0x66);
    let rest = L4::raw(IPPROTO_UDP, &rest);
    match (fam, src, dst) {
        (Fam::V4, IpAddr::V4(s), IpAddr::V4(d)) => {
            [Ipv4::new(s, d).fragment(id, 0, true).packet(&first), Ipv4::new(s, d).fragment(id, 5, false).packet(&rest)]
        }
        (Fam::V6, IpAddr::V6(s), IpAddr::V6(d)) => {
            let id = 0xf000_0000 | u32::from(id);
            [
                Ipv6::new(s, d).ext(Ext::Fragment { id, offset: 0, more: true }).packet(&first),
                Ipv6::new(s, d).ext(Ext::Fragment { id, offset: 5, more: false }).packet(&rest),
            ]
        }
        _ => unreachable!("one family"),
    }
}

fn ethertype(fam: Fam) -> u16 {
    match fam {
        Fam::V6 => ETH_P_IPV6,
        Fam::V4 => ETH_P_IP,
    }
}

#[test]
fn fragments_get_the_verdict_of_their_first_fragment() {
    with_env("frags", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, CID, PD::Egress, M::Port(PROTO_UDP, 53));
        env.allow(a.id, CID, PD::Ingress, M::Port(PROTO_UDP, 5353));
        for fam in FAMILIES {
            let (me, x, t) = (a.ip(fam), remote(fam), ethertype(fam));
            // Read as ports, the later fragment's first bytes would be 0xdead → 0xbeef (denied).
            let [first, later] = fragments(fam, me, x, 0x1001, 65000, 53, [0xde, 0xad, 0xbe, 0xef]);
            env.send(&a, &a.tx_ip(t, &first)).expect(PASS, &[eg(a.n, Forwarded)], "first fragment to 53");
            env.send(&a, &a.tx_ip(t, &later)).expect(PASS, &[eg(a.n, Forwarded)], "its later fragment");
            let (_, ct) = env.ct_expect(me, 65000, x, 53, PROTO_UDP);
            assert_eq!(ct.packets, [2, 0], "{fam:?}: both fragments are the flow's");

            // Read as ports, this later fragment's first bytes would be 65001 → 53 (allowed).
            let [first, later] = fragments(fam, me, x, 0x1002, 65001, 54, [0xfd, 0xe9, 0x00, 0x35]);
            env.send(&a, &a.tx_ip(t, &first)).expect(DROP, &[eg(a.n, PolicyDenied)], "first fragment to 54");
            env.send(&a, &a.tx_ip(t, &later)).expect(
                DROP,
                &[eg(a.n, PolicyDenied)],
                "its later fragment: port 54 as recorded",
            );

            let [first, later] = fragments(fam, x, me, 0x1003, 65002, 5353, [0xde, 0xad, 0xbe, 0xef]);
            env.recv(&a, &a.rx_ip(t, &first)).expect(PASS, &[ing(a.n, Forwarded)], "inbound first fragment");
            env.recv(&a, &a.rx_ip(t, &later)).expect(PASS, &[ing(a.n, Forwarded)], "inbound later fragment");
            let [first, later] = fragments(fam, x, me, 0x1004, 65003, 5354, [0xfd, 0xeb, 0x14, 0xe9]);
            env.recv(&a, &a.rx_ip(t, &first)).expect(DROP, &[ing(a.n, PolicyDenied)], "inbound first, denied");
            env.recv(&a, &a.rx_ip(t, &later)).expect(DROP, &[ing(a.n, PolicyDenied)], "inbound later, denied");
        }
    });
}

#[test]
fn ipv6_later_fragments_are_not_parsed_past_their_fragment_header() {
    with_env("fragext", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, CID, PD::Egress, M::Port(PROTO_UDP, 53));
        let (me, x) = match (a.ip(Fam::V6), remote(Fam::V6)) {
            (IpAddr::V6(me), IpAddr::V6(x)) => (me, x),
            _ => unreachable!("IPv6 addresses"),
        };
        for (id, dport, verdict, counted) in [(0x3001, 53, PASS, Forwarded), (0x3002, 54, DROP, PolicyDenied)] {
            // Destination options after the fragment header: in the first fragment they lead
            // to the UDP header; in a later one the same next-header value is followed by the
            // middle of the datagram (here bytes that would read as port 53 → allowed).
            let first = Ipv6::new(me, x)
                .ext(Ext::Fragment { id, offset: 0, more: true })
                .ext(Ext::DstOpts(0))
                .packet(&L4::udp(65000, dport, &[0x55; 32]));
            let mut middle = vec![0xfd, 0xe8, 0x00, 0x35];
            middle.resize(24, 0x66);
            let later =
                Ipv6::new(me, x).ext(Ext::Fragment { id, offset: 6, more: false }).packet(&L4::raw(60, &middle));
            let what = format!("to port {dport}");
            env.send(&a, &a.tx_ip(ETH_P_IPV6, &first)).expect(verdict, &[eg(a.n, counted)], &format!("first, {what}"));
            env.send(&a, &a.tx_ip(ETH_P_IPV6, &later)).expect(
                verdict,
                &[eg(a.n, counted)],
                &format!("its later fragment, the first's verdict ({what})"),
            );
        }
    });
}

#[test]
fn a_later_fragment_without_its_first_is_fragment_unknown() {
    with_env("fragunknown", |env| {
        let a = env.endpoint(1, 1001);
        env.allow_all(a.id);
        for fam in FAMILIES {
            let (me, x, t) = (a.ip(fam), remote(fam), ethertype(fam));
            let [_, later] = fragments(fam, me, x, 0x2001, 65100, 53, [0, 0, 0, 53]);
            env.send(&a, &a.tx_ip(t, &later)).expect(DROP, &[eg(a.n, FragmentUnknown)], "first never seen");
            let [_, later] = fragments(fam, x, me, 0x2002, 65101, 53, [0, 0, 0, 53]);
            env.recv(&a, &a.rx_ip(t, &later)).expect(DROP, &[ing(a.n, FragmentUnknown)], "inbound, first never seen");
            // Out of order: the later fragment before the first is unknown; after it, known.
            let [first, later] = fragments(fam, me, x, 0x2003, 65102, 53, [0, 0, 0, 53]);
            env.send(&a, &a.tx_ip(t, &later)).expect(DROP, &[eg(a.n, FragmentUnknown)], "later before first");
            env.send(&a, &a.tx_ip(t, &first)).expect(PASS, &[eg(a.n, Forwarded)], "the first");
            env.send(&a, &a.tx_ip(t, &later)).expect(PASS, &[eg(a.n, Forwarded)], "the later, after the first");
            // The same fragment id towards another address is another datagram.
            let [_, other] = fragments(fam, me, world(fam), 0x2003, 65102, 53, [0, 0, 0, 53]);
            env.send(&a, &a.tx_ip(t, &other)).expect(DROP, &[eg(a.n, FragmentUnknown)], "same id, other address");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Anti-spoofing
// ---------------------------------------------------------------------------------------------

#[test]
fn spoofed_ipv6_and_ipv4_sources_are_dropped() {
    with_env("spoof", |env| {
        let a = env.endpoint(1, 1001);
        let b = env.endpoint(2, 1002);
        env.allow_all(a.id);
        env.allow_all(b.id);
        let udp = L4::udp(1000, 53, b"x");
        for fam in FAMILIES {
            let x = remote(fam);
            let stranger = match fam {
                Fam::V6 => IpAddr::V6(Ipv6Addr::new(0xfdc1, 0x1a00, 0x99, 0, 0, 0, 0, 0x99)),
                Fam::V4 => IpAddr::V4(Ipv4Addr::new(10, 250, 0, 99)),
            };
            let unspecified = match fam {
                Fam::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                Fam::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            };
            for src in [stranger, b.ip(fam), unspecified, x] {
                env.send(&a, &a.tx_from(src, x, &udp)).expect(
                    DROP,
                    &[eg(a.n, SpoofedSource)],
                    &format!("{src} is not a's"),
                );
            }
            env.send(&a, &a.tx(x, &udp)).expect(PASS, &[eg(a.n, Forwarded)], "a's own address");
        }
        // IPv6 link-local and unspecified sources: only towards link-local or multicast.
        let x = remote(Fam::V6);
        for src in [a.ll(), Ipv6Addr::UNSPECIFIED] {
            env.send(&a, &a.tx_from(IpAddr::V6(src), x, &udp)).expect(
                DROP,
                &[eg(a.n, SpoofedSource)],
                &format!("{src} towards a global address"),
            );
            for dst in [ll(5), Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb)] {
                env.send(&a, &a.tx_from(IpAddr::V6(src), IpAddr::V6(dst), &udp)).expect(
                    PASS,
                    &[eg(a.n, Forwarded)],
                    &format!("{src} towards {dst}"),
                );
            }
        }
        // Broadcast DHCP from 0.0.0.0 is not the container's address either.
        env.send(&a, &a.tx_from(IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V4(Ipv4Addr::BROADCAST), &udp)).expect(
            DROP,
            &[eg(a.n, SpoofedSource)],
            "0.0.0.0",
        );
    });
}

#[test]
fn spoofed_arp_is_dropped() {
    with_env("spoofarp", |env| {
        let a = env.endpoint(1, 1001);
        let b = env.endpoint(2, 1002);
        let target = Ipv4Addr::new(10, 250, 0, 77);
        let request = |sip| eth(BROADCAST_MAC, a.mac, ETH_P_ARP, &arp(ARP_REQUEST, a.mac, sip, [0; 6], target));
        for sip in [Ipv4Addr::new(10, 250, 0, 99), b.ip4, GATEWAY_V4] {
            env.send(&a, &request(sip)).expect(DROP, &[eg(a.n, SpoofedArp)], &format!("sender {sip}"));
        }
        for sip in [a.ip4, Ipv4Addr::UNSPECIFIED] {
            let frame = request(sip);
            let out = env.send(&a, &frame).expect(PASS, &[eg(a.n, Forwarded)], &format!("sender {sip}"));
            assert_eq!(out.frame, frame, "to the host stack unchanged");
        }
        let gratuitous = eth(BROADCAST_MAC, a.mac, ETH_P_ARP, &arp(ARP_REPLY, a.mac, a.ip4, BROADCAST_MAC, a.ip4));
        env.send(&a, &gratuitous).expect(PASS, &[eg(a.n, Forwarded)], "gratuitous ARP");
        // Not IPv4 over Ethernet, or cut short.
        let mut bad = arp(ARP_REQUEST, a.mac, a.ip4, [0; 6], target);
        bad[4] = 8;
        env.send(&a, &eth(BROADCAST_MAC, a.mac, ETH_P_ARP, &bad)).expect(DROP, &[eg(a.n, Malformed)], "hln 8");
        let short = arp(ARP_REQUEST, a.mac, a.ip4, [0; 6], target);
        env.send(&a, &eth(BROADCAST_MAC, a.mac, ETH_P_ARP, &short[..20])).expect(
            DROP,
            &[eg(a.n, Malformed)],
            "ARP of 20 bytes",
        );
    });
}

#[test]
fn sibling_endpoint_addresses_of_the_same_sandbox_are_valid_sources() {
    with_env("sibling", |env| {
        let a1 = env.endpoint_with(1, 1001, 70, true);
        let a2 = env.endpoint_with(3, 1001, 70, true);
        let c = env.endpoint_with(4, 1004, 80, true);
        for ep in [a1, a2, c] {
            env.allow_all(ep.id);
        }
        for fam in FAMILIES {
            let x = remote(fam);
            env.send(&a1, &a1.tx_from(a2.ip(fam), x, &L4::tcp(1100, 80, TCP_SYN))).expect(
                PASS,
                &[eg(a1.n, Forwarded)],
                "a1 answers for a2's address (same container)",
            );
            env.send(&c, &c.tx_from(a2.ip(fam), x, &L4::tcp(1101, 80, TCP_SYN))).expect(
                DROP,
                &[eg(c.n, SpoofedSource)],
                "c is another container",
            );
        }
        let arp_from =
            |ep: &Ep, sip| eth(BROADCAST_MAC, ep.mac, ETH_P_ARP, &arp(ARP_REQUEST, ep.mac, sip, [0; 6], c.ip4));
        env.send(&a1, &arp_from(&a1, a2.ip4)).expect(PASS, &[eg(a1.n, Forwarded)], "ARP for a sibling's address");
        env.send(&c, &arp_from(&c, a2.ip4)).expect(DROP, &[eg(c.n, SpoofedArp)], "ARP for another container's");
    });
}

// ---------------------------------------------------------------------------------------------
// The router's own answers and link control, never policed
// ---------------------------------------------------------------------------------------------

fn nd_option(kind: u8, mac: [u8; 6]) -> [u8; 8] {
    [kind, 1, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]]
}

/// A neighbour solicitation for `target`, with or without a source link-layer option.
fn solicitation(target: Ipv6Addr, mac: Option<[u8; 6]>) -> L4 {
    let mut body = target.octets().to_vec();
    if let Some(mac) = mac {
        body.extend_from_slice(&nd_option(1, mac));
    }
    L4::icmp6(135, 0, [0; 4], &body)
}

/// The router's advertisement for fe80::1 (target link-layer option `mac`).
fn advertisement(flags: u8, mac: [u8; 6]) -> L4 {
    let mut body = ROUTER_V6.octets().to_vec();
    body.extend_from_slice(&nd_option(2, mac));
    L4::icmp6(136, 0, [flags, 0, 0, 0], &body)
}

const SOLICITED_NODE_ROUTER: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

#[test]
fn neighbour_solicitation_for_the_router_is_answered() {
    with_env("ndisc", |env| {
        // No policy entries: the router's answers are not policed.
        let a = env.endpoint(1, 1001);
        let mcast = [0x33, 0x33, 0xff, 0, 0, 1];
        for (src, option) in [(a.ll(), true), (a.ll(), false), (a.ip6, true)] {
            let ns = Ipv6::new(src, SOLICITED_NODE_ROUTER)
                .hop_limit(255)
                .packet(&solicitation(ROUTER_V6, option.then_some(a.mac)));
            let out = env.send(&a, &eth(mcast, a.mac, ETH_P_IPV6, &ns)).expect(
                REDIRECT,
                &[eg(a.n, Forwarded)],
                &format!("NS from {src} (source option {option})"),
            );
            let na = Ipv6::new(ROUTER_V6, src).hop_limit(255).packet(&advertisement(0xe0, a.host_mac));
            assert_eq!(out.frame, eth(a.mac, a.host_mac, ETH_P_IPV6, &na), "router + solicited + override");
        }
        // Duplicate address detection: to all nodes, without the solicited flag.
        let dad = Ipv6::new(Ipv6Addr::UNSPECIFIED, SOLICITED_NODE_ROUTER)
            .hop_limit(255)
            .packet(&solicitation(ROUTER_V6, None));
        let out = env.send(&a, &eth(mcast, a.mac, ETH_P_IPV6, &dad)).expect(
            REDIRECT,
            &[eg(a.n, Forwarded)],
            "DAD solicitation",
        );
        let na = Ipv6::new(ROUTER_V6, ALL_NODES).hop_limit(255).packet(&advertisement(0xa0, a.host_mac));
        assert_eq!(out.frame, eth([0x33, 0x33, 0, 0, 0, 1], a.host_mac, ETH_P_IPV6, &na), "to all nodes");
        // Hop limit other than 255: not a valid solicitation, not answered (link control: passes).
        let ns = Ipv6::new(a.ll(), SOLICITED_NODE_ROUTER).hop_limit(64).packet(&solicitation(ROUTER_V6, Some(a.mac)));
        let frame = eth(mcast, a.mac, ETH_P_IPV6, &ns);
        let out = env.send(&a, &frame).expect(PASS, &[eg(a.n, Forwarded)], "NS with hop limit 64");
        assert_eq!(out.frame, frame);
    });
}

#[test]
fn echo_requests_to_the_gateways_are_answered() {
    with_env("gwecho", |env| {
        let a = env.endpoint(1, 1001);
        for src in [a.ip6, a.ll()] {
            let request = Ipv6::new(src, ROUTER_V6).hop_limit(17).packet(&L4::echo6(true, 0x77, 3));
            let out = env.send(&a, &a.tx_ip(ETH_P_IPV6, &request)).expect(
                REDIRECT,
                &[eg(a.n, Forwarded)],
                &format!("echo request from {src} to fe80::1"),
            );
            let reply = Ipv6::new(ROUTER_V6, src).hop_limit(64).packet(&L4::echo6(false, 0x77, 3));
            assert_eq!(out.frame, eth(a.mac, a.host_mac, ETH_P_IPV6, &reply), "echo reply from fe80::1");
        }
        let request = Ipv4::new(a.ip4, GATEWAY_V4).ttl(17).packet(&L4::echo4(true, 0x77, 3));
        let out = env.send(&a, &a.tx_ip(ETH_P_IP, &request)).expect(
            REDIRECT,
            &[eg(a.n, Forwarded)],
            "echo request to the IPv4 gateway",
        );
        let reply = Ipv4::new(GATEWAY_V4, a.ip4).ttl(64).packet(&L4::echo4(false, 0x77, 3));
        assert_eq!(out.frame, eth(a.mac, a.host_mac, ETH_P_IP, &reply), "echo reply from the gateway");

        // With IP options or fragmented: not answered, to the host stack (host identity).
        env.allow(a.id, Identity::HOST, PD::Egress, M::Port(PROTO_ICMP, 8));
        for request in [
            Ipv4::new(a.ip4, GATEWAY_V4).options(&[1, 1, 1, 1]).packet(&L4::echo4(true, 0x78, 1)),
            Ipv4::new(a.ip4, GATEWAY_V4).fragment(0x99, 0, true).packet(&L4::echo4(true, 0x79, 1)),
        ] {
            let frame = a.tx_ip(ETH_P_IP, &request);
            let out = env.send(&a, &frame).expect(PASS, &[eg(a.n, Forwarded)], "not answered in place");
            assert_eq!(out.frame, frame);
        }
        env.unset(a.id, Identity::HOST, PD::Egress, M::Port(PROTO_ICMP, 8));
        let frame = a.tx_ip(ETH_P_IP, &Ipv4::new(a.ip4, GATEWAY_V4).options(&[1]).packet(&L4::echo4(true, 0x7a, 1)));
        env.send(&a, &frame).expect(DROP, &[eg(a.n, PolicyDenied)], "which polices it as traffic to the host");
    });
}

#[test]
fn arp_request_for_the_gateway_is_answered() {
    with_env("gwarp", |env| {
        let a = env.endpoint(1, 1001);
        let request = eth(BROADCAST_MAC, a.mac, ETH_P_ARP, &arp(ARP_REQUEST, a.mac, a.ip4, [0; 6], GATEWAY_V4));
        let out = env.send(&a, &request).expect(REDIRECT, &[eg(a.n, Forwarded)], "ARP request for the gateway");
        let reply = eth(a.mac, a.host_mac, ETH_P_ARP, &arp(ARP_REPLY, a.host_mac, GATEWAY_V4, a.mac, a.ip4));
        assert_eq!(out.frame, reply, "the gateway is at the host side's MAC");

        let other = eth(BROADCAST_MAC, a.mac, ETH_P_ARP, &arp(ARP_REQUEST, a.mac, a.ip4, [0; 6], a.ip4));
        let out = env.send(&a, &other).expect(PASS, &[eg(a.n, Forwarded)], "ARP for another address");
        assert_eq!(out.frame, other);

        // An endpoint without IPv4 has no gateway to answer for.
        let ifindex = veth(5);
        env.dp.ensure_metrics(5).expect("counters");
        let v6only =
            EndpointInfo::new(5, a.mac, a.host_mac).with_ipv6(Ipv6Addr::new(0xfdc1, 0x1a00, 0x99, 0, 0, 0, 0, 5));
        env.dp.set_endpoint(ifindex, &v6only).expect("set endpoint");
        let probe =
            eth(BROADCAST_MAC, a.mac, ETH_P_ARP, &arp(ARP_REQUEST, a.mac, Ipv4Addr::UNSPECIFIED, [0; 6], GATEWAY_V4));
        let out = env.run(PROG_FROM_CONTAINER, ifindex, &probe).expect(PASS, &[eg(5, Forwarded)], "IPv6-only");
        assert_eq!(out.frame, probe);
    });
}

#[test]
fn neighbour_discovery_and_mld_pass_unpoliced() {
    with_env("linkctl", |env| {
        // No policy entries: default deny for everything else.
        let a = env.endpoint(1, 1001);
        let mld_record = {
            let mut r = vec![4, 0, 0, 0];
            r.extend_from_slice(&Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0xc01).octets());
            r
        };
        let out: [(Ipv6, L4, &str); 7] = [
            (
                Ipv6::new(a.ll(), Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2)).hop_limit(255),
                L4::icmp6(133, 0, [0; 4], &nd_option(1, a.mac)),
                "router solicitation",
            ),
            (Ipv6::new(a.ll(), ll(5)).hop_limit(255), solicitation(ll(5), Some(a.mac)), "NS for another address"),
            (
                Ipv6::new(a.ip6, Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 9)).hop_limit(255),
                solicitation(a.ip6, None),
                "NS from the global address",
            ),
            (
                Ipv6::new(a.ll(), ALL_NODES).hop_limit(255),
                L4::icmp6(136, 0, [0x20, 0, 0, 0], &a.ll().octets()),
                "unsolicited NA",
            ),
            (
                Ipv6::new(a.ll(), Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16)).hop_limit(1).ext(Ext::RouterAlert),
                L4::icmp6(143, 0, [0, 0, 0, 1], &mld_record),
                "MLDv2 report",
            ),
            (
                Ipv6::new(a.ll(), Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0xc01))
                    .hop_limit(1)
                    .ext(Ext::RouterAlert),
                L4::icmp6(131, 0, [0; 4], &Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0xc01).octets()),
                "MLDv1 report",
            ),
            (
                Ipv6::new(a.ll(), Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2)).hop_limit(1).ext(Ext::RouterAlert),
                L4::icmp6(132, 0, [0; 4], &Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0xc01).octets()),
                "MLD done",
            ),
        ];
        for (ip, l4, what) in out {
            let frame = a.tx_ip(ETH_P_IPV6, &ip.packet(&l4));
            let result = env.send(&a, &frame).expect(PASS, &[eg(a.n, Forwarded)], what);
            assert_eq!(result.frame, frame, "{what}: unchanged");
        }
        env.send(&a, &a.tx_ip(ETH_P_IPV6, &Ipv6::new(a.ll(), ALL_NODES).packet(&L4::echo6(true, 1, 1)))).expect(
            DROP,
            &[eg(a.n, PolicyDenied)],
            "an echo request to all nodes is policed",
        );

        let inbound: [(Ipv6, L4, &str); 4] = [
            (Ipv6::new(ROUTER_V6, a.ip6).hop_limit(255), solicitation(a.ip6, Some(a.host_mac)), "NS from the router"),
            (
                Ipv6::new(ROUTER_V6, ALL_NODES).hop_limit(255),
                L4::icmp6(134, 0, [64, 0, 0, 0], &[0; 8]),
                "router advertisement",
            ),
            (Ipv6::new(ROUTER_V6, a.ll()).hop_limit(255), advertisement(0xe0, a.host_mac), "NA from the router"),
            (
                Ipv6::new(ROUTER_V6, ALL_NODES).hop_limit(1).ext(Ext::RouterAlert),
                L4::icmp6(130, 0, [0x03, 0xe8, 0, 0], &[0; 16]),
                "MLD query",
            ),
        ];
        for (ip, l4, what) in inbound {
            let frame = a.rx_ip(ETH_P_IPV6, &ip.packet(&l4));
            env.recv(&a, &frame).expect(PASS, &[ing(a.n, Forwarded)], what);
        }
        env.recv(&a, &a.rx(IpAddr::V6(ROUTER_V6), &L4::echo6(true, 1, 1))).expect(
            DROP,
            &[ing(a.n, PolicyDenied)],
            "an echo request from the router is policed",
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Coverage of the drop reasons
// ---------------------------------------------------------------------------------------------

#[test]
fn every_drop_reason_is_produced() {
    with_env("reasons", |env| {
        let a = env.endpoint(1, 1001);
        let b = env.endpoint(2, 1002);
        env.allow(a.id, CID, PD::Egress, M::Port(PROTO_UDP, 53));
        env.deny(a.id, CID, PD::Egress, M::Port(PROTO_UDP, 54));
        let x6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
        let stranger = Ep { ifindex: veth(9), ..a };
        let nine = (0..9).fold(Ipv6::new(a.ip6, x6), |ip, _| ip.ext(Ext::DstOpts(0)));
        let [_, later] = fragments(Fam::V4, a.ip(Fam::V4), remote(Fam::V4), 0x3001, 1000, 53, [0; 4]);
        let cases: [(&Ep, Vec<u8>, DropReason); 9] = [
            (&a, a.tx(remote(Fam::V6), &L4::tcp(1, 2, TCP_SYN).truncated(8)), Malformed),
            (&a, a.tx_from(b.ip(Fam::V4), remote(Fam::V4), &L4::udp(1, 53, b"")), SpoofedSource),
            (&a, eth(BROADCAST_MAC, a.mac, ETH_P_ARP, &arp(ARP_REQUEST, a.mac, b.ip4, [0; 6], GATEWAY_V4)), SpoofedArp),
            (&a, eth(a.host_mac, a.mac, 0x88b5, &[0; 46]), UnsupportedProtocol),
            (&stranger, a.tx(remote(Fam::V6), &L4::udp(1, 53, b"")), UnknownEndpoint),
            (&a, a.tx(remote(Fam::V6), &L4::udp(1, 55, b"")), PolicyDenied),
            (&a, a.tx(remote(Fam::V6), &L4::udp(1, 54, b"")), PolicyDenyRule),
            (&a, a.tx_ip(ETH_P_IP, &later), FragmentUnknown),
            (&a, a.tx_ip(ETH_P_IPV6, &nine.packet(&L4::udp(1, 53, b""))), ExtHeaders),
        ];
        let mut produced = BTreeSet::new();
        for (ep, frame, reason) in cases {
            let owner = if reason == UnknownEndpoint { 0 } else { ep.n };
            let out = env.send(ep, &frame).expect(DROP, &[eg(owner, reason)], reason.name());
            produced.extend(out.counted.iter().map(|(_, r, _)| *r));
        }
        let every: BTreeSet<_> = DropReason::ALL.into_iter().filter(|r| r.is_drop()).collect();
        assert_eq!(produced, every, "every drop reason but FORWARDED");
    });
}
