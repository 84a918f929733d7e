//! Verdicts of the endpoint programs on crafted frames (BPF_PROG_TEST_RUN), checked against
//! docs/datapath.md: policy lookup, local delivery, connection tracking, related ICMP errors,
//! the parser, anti-spoofing and the router's own answers; of the egress-interface programs:
//! masquerading, its reverse translation and ICMP errors, port allocation and takeover, and
//! forwarding to the outside world; and of published-port translation (DNAT): to the endpoint
//! from one host address or all of them, the endpoint's replies back from the published address
//! and port, removed and republished ports, ingress policy with the client's identity, hairpin
//! from other containers, fragments and ICMP errors. Every check compares the return code and
//! the exact counters the packet moved (endpoint, reason, direction). Each test has its own
//! network namespace and bpf root; they fail, never skip, without root.

mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{HashMap, Map, MapData};
use bpf_programs::abi::{
    CtEntry, CtKey, Direction as Dir, DropReason, EgressIface, EndpointInfo, EndpointMetrics, LocalIp, NatEntry,
    NatKey, PortKey, PortTarget, CT_F_CLOSING, CT_F_EGRESS_OK, CT_F_INGRESS_OK, CT_F_SEEN_REPLY, ENDPOINT_F_INTERNAL,
    ENDPOINT_F_NO_MASQUERADE, ENDPOINT_F_PUBLISHED, ENDPOINT_F_TRACE, EVENT_DROP, EVENT_SAMPLE, EVENT_TRACE,
    EVENT_VERDICT, IP_FAMILY_V4, IP_FAMILY_V6, MAP_CT, NAT_F_DNAT, NAT_F_SNAT, PROG_FROM_CONTAINER, PROG_FROM_WORLD,
    PROG_TO_CONTAINER, PROG_TO_WORLD, TRACE_FROM_ENDPOINT, VERDICT_EGRESS,
};
use cilium_rs::datapath::bpf::BpfDatapath;
use cilium_rs::datapath::policy_maps::PolicyMaps;
use cilium_rs::datapath::world_maps::WorldMaps;
use cilium_rs::identity::Identity;
use cilium_rs::policy::{
    Direction as PD, PolicyEntry, PolicyKey, PROTO_ANY, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};
use ipnet::IpNet;
use support::packets::{
    arp, checksum, eth, fragmented, ip_packet, reassemble, verify_checksums, Ext, Ipv4, Ipv6, ARP_REPLY, ARP_REQUEST,
    ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, L4, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
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

/// A link-local address as the kernel makes them (EUI-64: never a gateway `fe80::<n>`).
fn ll(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0x200, 0x5eff, 0xfe00, last)
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
    world: WorldMaps,
    /// The NAT port range last configured with `nat_ports`.
    nat_range: (u16, u16),
    _root: BpfRoot,
}

impl Env {
    fn new(role: &str) -> Self {
        let root = BpfRoot::new(role);
        let mut dp = BpfDatapath::load(root.path()).expect("load the endpoint object");
        let mut maps = dp.take_policy_maps().expect("policy maps");
        let world = dp.take_world_maps().expect("world maps");
        for (net, identity) in
            [("2001:db8::/32", CID), ("198.51.100.0/24", CID), ("2001:db8:ff::/48", CID2), ("192.0.2.0/24", CID2)]
        {
            maps.set_ipcache(net.parse().expect("prefix"), identity).expect("set ipcache");
        }
        for fam in FAMILIES {
            maps.set_ipcache(IpNet::from(host_ip(fam)), Identity::HOST).expect("set ipcache");
        }
        Env { dp, maps, world, nat_range: (0, 0), _root: root }
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
// Events (crs_events, crs_event_rate)
// ---------------------------------------------------------------------------------------------

#[test]
fn drops_verdicts_and_traces_are_events_within_each_cpus_budget() {
    with_env("events", |env| {
        // Budgets are per CPU: the test runs stay on one.
        let mut cpu = nix::sched::CpuSet::new();
        cpu.set(0).expect("cpu 0");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu).expect("pin to cpu 0");
        let mut events = env.dp.take_event_maps().expect("event maps");
        let a = env.endpoint(1, 1001);
        env.allow(a.id, CID, PD::Egress, M::Port(PROTO_TCP, 80));
        env.deny(a.id, CID, PD::Egress, M::Port(PROTO_TCP, 81));
        let fam = Fam::V6;
        let spoofed =
            a.tx_from(IpAddr::V6(Ipv6Addr::new(0xfdc1, 0x99, 0, 0, 0, 0, 0, 9)), remote(fam), &L4::udp(1, 53, b"x"));

        // Off until the daemon sets a budget: nothing is sent, nothing counted.
        env.send(&a, &spoofed).expect(DROP, &[eg(a.n, SpoofedSource)], "no budget");
        assert!(events.drain_now().is_empty(), "events are off with a zero interval");
        assert_eq!(events.counts().expect("counts").emitted, 0);

        // A burst of 3, then one a second: 5 drops at once are 3 events and 2 suppressed.
        env.maps.set_event_rate(1_000_000_000, 3).expect("rate");
        for _ in 0..5 {
            env.send(&a, &spoofed).expect(DROP, &[eg(a.n, SpoofedSource)], "spoofed");
        }
        let drops = events.drain_now();
        assert_eq!(drops.len(), 3, "{drops:?}");
        for event in &drops {
            assert_eq!((event.kind, event.reason, event.dir), (EVENT_DROP, SpoofedSource as u8, Dir::Egress as u8));
            assert_eq!((event.endpoint_id, event.ifindex, event.len as usize), (a.n, a.ifindex, spoofed.len()));
            assert_eq!(event.packet(), &spoofed[..spoofed.len().min(EVENT_SAMPLE)], "the packet's first bytes");
        }
        let counts = events.counts().expect("counts");
        assert_eq!((counts.emitted, counts.suppressed), (3, 2), "{counts:?}");

        // A new flow's verdict, once; its next packets are events no more.
        env.maps.set_event_rate(1_000, 100).expect("rate");
        let syn = a.tx(remote(fam), &L4::tcp(40000, 80, TCP_SYN));
        env.send(&a, &syn).expect(PASS, &[eg(a.n, Forwarded)], "allowed");
        env.send(&a, &a.tx(remote(fam), &L4::tcp(40000, 80, TCP_ACK))).expect(PASS, &[eg(a.n, Forwarded)], "next");
        let verdicts = events.drain_now();
        assert_eq!(verdicts.len(), 1, "one verdict for the flow: {verdicts:?}");
        let v = verdicts[0];
        assert_eq!((v.kind, v.reason, v.point, v.rule), (EVENT_VERDICT, Forwarded as u8, VERDICT_EGRESS, 0));
        assert_eq!((v.src_identity, v.dst_identity), (a.id.0, CID.0));
        // A deny rule: the verdict names it, and the drop follows.
        env.send(&a, &a.tx(remote(fam), &L4::tcp(40001, 81, TCP_SYN))).expect(
            DROP,
            &[eg(a.n, PolicyDenyRule)],
            "denied by rule 9",
        );
        let denied = events.drain_now();
        let kinds: Vec<(u8, u8)> = denied.iter().map(|e| (e.kind, e.reason)).collect();
        assert_eq!(kinds, [(EVENT_VERDICT, PolicyDenyRule as u8), (EVENT_DROP, PolicyDenyRule as u8)]);
        assert_eq!((denied[0].rule, denied[0].dir), (9, Dir::Egress as u8), "{:?}", denied[0]);

        // Traced: every packet it sends, whatever the verdict.
        env.set_flags(&a, ENDPOINT_F_TRACE);
        env.send(&a, &a.tx(remote(fam), &L4::tcp(40000, 80, TCP_ACK))).expect(PASS, &[eg(a.n, Forwarded)], "traced");
        let traced = events.drain_now();
        assert_eq!(traced.len(), 1, "{traced:?}");
        assert_eq!(
            (traced[0].kind, traced[0].point, traced[0].src_identity),
            (EVENT_TRACE, TRACE_FROM_ENDPOINT, a.id.0)
        );
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

/// The advertisement of the router `target` (target link-layer option `mac`).
fn advertisement(target: Ipv6Addr, flags: u8, mac: [u8; 6]) -> L4 {
    let mut body = target.octets().to_vec();
    body.extend_from_slice(&nd_option(2, mac));
    L4::icmp6(136, 0, [flags, 0, 0, 0], &body)
}

/// The solicited-node multicast address of `target` and its MAC.
fn solicited_node(target: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
    let [.., a, b, c] = target.octets();
    let addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(a), u16::from_be_bytes([b, c]));
    (addr, [0x33, 0x33, 0xff, a, b, c])
}

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Every pool has its own gateway `fe80::<n>`, n in 1..=0xffff: the first, one, the last.
const ROUTERS_V6: [Ipv6Addr; 3] =
    [ROUTER_V6, Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x2a), Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xffff)];
/// Link-local addresses that are no gateway: the container's neighbours, not answered for.
const NOT_ROUTERS_V6: [Ipv6Addr; 2] =
    [Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 1, 0), Ipv6Addr::new(0xfe80, 0, 0, 0, 0x200, 0x5eff, 0xfe00, 1)];

#[test]
fn neighbour_solicitation_for_the_router_is_answered() {
    with_env("ndisc", |env| {
        // No policy entries: the router's answers are not policed.
        let a = env.endpoint(1, 1001);
        for router in ROUTERS_V6 {
            let (group, mcast) = solicited_node(router);
            for (src, option) in [(a.ll(), true), (a.ll(), false), (a.ip6, true)] {
                let ns = Ipv6::new(src, group).hop_limit(255).packet(&solicitation(router, option.then_some(a.mac)));
                let out = env.send(&a, &eth(mcast, a.mac, ETH_P_IPV6, &ns)).expect(
                    REDIRECT,
                    &[eg(a.n, Forwarded)],
                    &format!("NS for {router} from {src} (source option {option})"),
                );
                let na = Ipv6::new(router, src).hop_limit(255).packet(&advertisement(router, 0xe0, a.host_mac));
                assert_eq!(out.frame, eth(a.mac, a.host_mac, ETH_P_IPV6, &na), "router + solicited + override");
            }
            // Duplicate address detection: to all nodes, without the solicited flag.
            let dad = Ipv6::new(Ipv6Addr::UNSPECIFIED, group).hop_limit(255).packet(&solicitation(router, None));
            let out = env.send(&a, &eth(mcast, a.mac, ETH_P_IPV6, &dad)).expect(
                REDIRECT,
                &[eg(a.n, Forwarded)],
                &format!("DAD solicitation of {router}"),
            );
            let na = Ipv6::new(router, ALL_NODES).hop_limit(255).packet(&advertisement(router, 0xa0, a.host_mac));
            assert_eq!(out.frame, eth([0x33, 0x33, 0, 0, 0, 1], a.host_mac, ETH_P_IPV6, &na), "to all nodes");
        }
        // Hop limit other than 255: not a valid solicitation, not answered (link control: passes).
        let (group, mcast) = solicited_node(ROUTER_V6);
        let ns = Ipv6::new(a.ll(), group).hop_limit(64).packet(&solicitation(ROUTER_V6, Some(a.mac)));
        let frame = eth(mcast, a.mac, ETH_P_IPV6, &ns);
        let out = env.send(&a, &frame).expect(PASS, &[eg(a.n, Forwarded)], "NS with hop limit 64");
        assert_eq!(out.frame, frame);
        // Any other link-local target is no router of ours: to the host side unanswered.
        for other in NOT_ROUTERS_V6 {
            let (group, mcast) = solicited_node(other);
            let ns = Ipv6::new(a.ll(), group).hop_limit(255).packet(&solicitation(other, Some(a.mac)));
            let frame = eth(mcast, a.mac, ETH_P_IPV6, &ns);
            let out = env.send(&a, &frame).expect(PASS, &[eg(a.n, Forwarded)], &format!("NS for {other}"));
            assert_eq!(out.frame, frame, "NS for {other} is not answered");
        }
    });
}

#[test]
fn echo_requests_to_the_gateways_are_answered() {
    with_env("gwecho", |env| {
        let a = env.endpoint(1, 1001);
        for (router, src) in ROUTERS_V6.into_iter().flat_map(|r| [(r, a.ip6), (r, a.ll())]) {
            let request = Ipv6::new(src, router).hop_limit(17).packet(&L4::echo6(true, 0x77, 3));
            let out = env.send(&a, &a.tx_ip(ETH_P_IPV6, &request)).expect(
                REDIRECT,
                &[eg(a.n, Forwarded)],
                &format!("echo request from {src} to {router}"),
            );
            let reply = Ipv6::new(router, src).hop_limit(64).packet(&L4::echo6(false, 0x77, 3));
            assert_eq!(out.frame, eth(a.mac, a.host_mac, ETH_P_IPV6, &reply), "echo reply from {router}");
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
            (
                Ipv6::new(ROUTER_V6, a.ll()).hop_limit(255),
                advertisement(ROUTER_V6, 0xe0, a.host_mac),
                "NA from the router",
            ),
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
// The outside world: masquerading on egress interfaces (crs_to_world, crs_from_world) and
// crs_from_container's forwarding to them
// ---------------------------------------------------------------------------------------------

/// The masquerading addresses of the tests' egress interfaces.
const EGRESS_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const EGRESS_V6: Ipv6Addr = Ipv6Addr::new(0xfdc1, 0xe9, 0, 0, 0, 0, 0, 1);
/// The next hop's MAC, as frames on an egress interface carry it.
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0xfe];
/// The NAT port range most tests configure.
const NAT_MIN: u16 = 20000;
const NAT_MAX: u16 = 20999;

fn egress_addr(fam: Fam) -> IpAddr {
    match fam {
        Fam::V6 => IpAddr::V6(EGRESS_V6),
        Fam::V4 => IpAddr::V4(EGRESS_V4),
    }
}

/// An egress interface: a veth (`egv<n>`, peer `egp<n>`, both up) listed in crs_egress.
#[derive(Clone, Copy, Debug)]
struct Egress {
    ifindex: u32,
    mac: [u8; 6],
    ip4: Option<Ipv4Addr>,
    ip6: Option<Ipv6Addr>,
}

impl Egress {
    /// Its masquerading address of the family.
    fn ip(&self, fam: Fam) -> IpAddr {
        match fam {
            Fam::V6 => IpAddr::V6(self.ip6.expect("an IPv6 egress address")),
            Fam::V4 => IpAddr::V4(self.ip4.expect("an IPv4 egress address")),
        }
    }

    /// A frame leaving through the interface (as crs_to_world sees it).
    fn out(&self, src: IpAddr, dst: IpAddr, l4: &L4) -> Vec<u8> {
        let (ethertype, packet) = ip_packet(src, dst, l4);
        self.out_ip(ethertype, &packet)
    }

    fn out_ip(&self, ethertype: u16, packet: &[u8]) -> Vec<u8> {
        eth(NEXT_HOP_MAC, self.mac, ethertype, packet)
    }

    /// A frame arriving on the interface (as crs_from_world sees it).
    fn inbound(&self, src: IpAddr, dst: IpAddr, l4: &L4) -> Vec<u8> {
        let (ethertype, packet) = ip_packet(src, dst, l4);
        self.inbound_ip(ethertype, &packet)
    }

    fn inbound_ip(&self, ethertype: u16, packet: &[u8]) -> Vec<u8> {
        eth(self.mac, NEXT_HOP_MAC, ethertype, packet)
    }
}

/// Creates the veth `<prefix>v<n>` (peer `<prefix>p<n>`), both ends up; returns the ifindex
/// of the first.
fn up_link(prefix: &str, n: u8) -> u32 {
    let name = format!("{prefix}v{n}");
    let peer = format!("{prefix}p{n}");
    run(&["ip", "link", "add", &name, "type", "veth", "peer", "name", &peer]);
    run(&["ip", "link", "set", &peer, "up"]);
    run(&["ip", "link", "set", &name, "up"]);
    nix::net::if_::if_nametoindex(name.as_str()).unwrap_or_else(|e| panic!("ifindex of {name}: {e}"))
}

/// Writes a sysctl of the calling thread's network namespace (`net/ipv4/...`).
fn sysctl(path: &str, value: &str) {
    std::fs::write(format!("/proc/sys/{path}"), value).unwrap_or_else(|e| panic!("sysctl {path}={value}: {e}"));
}

fn is_icmp(proto: u8) -> bool {
    proto == PROTO_ICMP || proto == PROTO_ICMPV6
}

/// Where the ports (TCP, UDP) or the echo identifier (ICMP, for both) sit in an L4 header.
fn port_offsets(proto: u8) -> (usize, usize) {
    if is_icmp(proto) {
        (4, 4)
    } else {
        (0, 2)
    }
}

/// The source and destination ports of an L4 part (an echo's identifier, twice).
fn l4_ports(l4: &L4) -> (u16, u16) {
    let (s, d) = port_offsets(l4.proto);
    (u16::from_be_bytes([l4.bytes[s], l4.bytes[s + 1]]), u16::from_be_bytes([l4.bytes[d], l4.bytes[d + 1]]))
}

/// `l4` with its source port (an echo: its identifier) set to `port`.
fn with_sport(l4: &L4, port: u16) -> L4 {
    let mut l4 = l4.clone();
    let (s, _) = port_offsets(l4.proto);
    l4.bytes[s..s + 2].copy_from_slice(&port.to_be_bytes());
    l4
}

/// `l4` with its destination port (an echo: its identifier) set to `port`.
fn with_dport(l4: &L4, port: u16) -> L4 {
    let mut l4 = l4.clone();
    let (_, d) = port_offsets(l4.proto);
    l4.bytes[d..d + 2].copy_from_slice(&port.to_be_bytes());
    l4
}

/// Offset of the L4 header in a frame built here (IPv4 options, an IPv6 fragment header).
fn l4_offset(frame: &[u8]) -> usize {
    if u16::from_be_bytes([frame[12], frame[13]]) == ETH_P_IP {
        ETH_HLEN + usize::from(frame[ETH_HLEN] & 0x0f) * 4
    } else if frame[ETH_HLEN + 6] == 44 {
        ETH_HLEN + 48
    } else {
        ETH_HLEN + 40
    }
}

/// The source port (an echo: its identifier) of the L4 header of a frame.
fn frame_sport(frame: &[u8], proto: u8) -> u16 {
    let at = l4_offset(frame) + port_offsets(proto).0;
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

fn family_code(ip: IpAddr) -> u8 {
    if ip.is_ipv6() {
        IP_FAMILY_V6
    } else {
        IP_FAMILY_V4
    }
}

/// The crs_nat_out / crs_nat_in key of the packets from (src, sport) to (dst, dport).
fn nat_key(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> NatKey {
    NatKey {
        saddr: addr16(src),
        daddr: addr16(dst),
        sport: sport.to_be_bytes(),
        dport: dport.to_be_bytes(),
        family: family_code(src),
        proto,
        pad: 0,
    }
}

/// The checksums `verify_checksums` must find valid in an unfragmented packet of `proto`.
fn checksums_of(fam: Fam, proto: u8) -> Vec<&'static str> {
    let l4 = match proto {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        PROTO_ICMP => "ICMP",
        PROTO_ICMPV6 => "ICMPv6",
        other => panic!("no checksum known for protocol {other}"),
    };
    match fam {
        Fam::V6 => vec![l4],
        Fam::V4 => vec!["IPv4 header", l4],
    }
}

/// Recomputes every checksum of `frame` and asserts exactly `want` were there and valid.
#[track_caller]
fn assert_checksums(frame: &[u8], want: &[&str], what: &str) {
    assert_eq!(verify_checksums(frame), Ok(want.to_vec()), "{what}: checksums of the output frame");
}

/// `packet` (IPv4 without options, or IPv6 without extension headers) with its source address
/// and source port (an echo: identifier) replaced and its IPv4 header checksum recomputed; the
/// L4 checksum stays as it was (what an ICMP error quotes after translation).
fn with_source(packet: &[u8], src: IpAddr, port: u16, proto: u8) -> Vec<u8> {
    let mut p = packet.to_vec();
    let l4 = match src {
        IpAddr::V4(s) => {
            p[12..16].copy_from_slice(&s.octets());
            p[10..12].copy_from_slice(&[0, 0]);
            let sum = checksum(&p[..20]);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            20
        }
        IpAddr::V6(s) => {
            p[8..24].copy_from_slice(&s.octets());
            40
        }
    };
    let at = l4 + port_offsets(proto).0;
    p[at..at + 2].copy_from_slice(&port.to_be_bytes());
    p
}

/// The frame of an endpoint's packet that the host forwarded (hop limit / TTL `hops`).
fn sent_with_hops(ep: &Ep, dst: IpAddr, hops: u8, l4: &L4) -> Vec<u8> {
    match (ep.ip(Fam::of(dst)), dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => ep.tx_ip(ETH_P_IPV6, &Ipv6::new(s, d).hop_limit(hops).packet(l4)),
        (IpAddr::V4(s), IpAddr::V4(d)) => ep.tx_ip(ETH_P_IP, &Ipv4::new(s, d).ttl(hops).packet(l4)),
        _ => unreachable!("one family"),
    }
}

/// Cuts the datagram of `l4` from `src` to `dst` (hop limit / TTL `hops`) after 40 L4 bytes.
fn datagram(src: IpAddr, dst: IpAddr, id: u16, hops: u8, l4: &L4) -> [Vec<u8>; 2] {
    let id = match src {
        IpAddr::V6(_) => 0xf000_0000 | u32::from(id),
        IpAddr::V4(_) => u32::from(id),
    };
    fragmented(src, dst, id, l4, 40).map(|mut packet| {
        match src {
            IpAddr::V6(_) => packet[7] = hops,
            IpAddr::V4(_) => {
                packet[8] = hops;
                packet[10..12].copy_from_slice(&[0, 0]);
                let sum = checksum(&packet[..20]);
                packet[10..12].copy_from_slice(&sum.to_be_bytes());
            }
        }
        packet
    })
}

impl Env {
    /// An egress interface number `n` with the masquerading addresses of the families asked for.
    fn egress(&mut self, n: u8, v4: bool, v6: bool) -> Egress {
        let ifindex = up_link("eg", n);
        let ext = Egress {
            ifindex,
            mac: [0x02, 0xee, 0, 0, 0, n],
            ip4: v4.then_some(EGRESS_V4),
            ip6: v6.then_some(EGRESS_V6),
        };
        self.world.set_egress(ifindex, &EgressIface::new(ext.ip4, ext.ip6)).expect("set egress interface");
        ext
    }

    fn nat_ports(&mut self, min: u16, max: u16) {
        self.maps.set_nat_ports(min, max).expect("set the NAT port range");
        self.nat_range = (min, max);
    }

    /// Adds ENDPOINT_F_* flags to an endpoint's crs_endpoints entry.
    fn set_flags(&mut self, ep: &Ep, flags: u32) {
        let mut info = self.dp.endpoint(ep.ifindex).expect("read crs_endpoints").expect("the endpoint's entry");
        info.flags |= flags;
        self.dp.set_endpoint(ep.ifindex, &info).expect("set endpoint");
    }

    /// crs_to_world on the egress interface: the host sends `frame` out.
    fn world_tx(&self, ext: &Egress, frame: &[u8]) -> Outcome {
        self.run(PROG_TO_WORLD, ext.ifindex, frame)
    }

    /// crs_from_world on the egress interface: `frame` arrives from outside.
    fn world_rx(&self, ext: &Egress, frame: &[u8]) -> Outcome {
        self.run(PROG_FROM_WORLD, ext.ifindex, frame)
    }

    fn nat_out(&self, key: &NatKey) -> Option<NatEntry> {
        self.world.nat_out().expect("read crs_nat_out").into_iter().find(|(k, _)| k == key).map(|(_, e)| e)
    }

    fn nat_in(&self, key: &NatKey) -> Option<NatEntry> {
        self.world.nat_in().expect("read crs_nat_in").into_iter().find(|(k, _)| k == key).map(|(_, e)| e)
    }

    #[track_caller]
    fn assert_no_translations(&self, what: &str) {
        let (out, inn) = (self.world.nat_out().expect("crs_nat_out"), self.world.nat_in().expect("crs_nat_in"));
        assert!(out.is_empty() && inn.is_empty(), "{what}: translations {out:?} / {inn:?}");
    }

    /// An endpoint's packet on its way out, as the host handles it: crs_from_container (which
    /// tracks the flow and, without a route through an egress interface, hands it to the host
    /// stack), then crs_to_world on the egress interface. Asserts that it left from the egress
    /// address and a port of the range with nothing else changed and every checksum valid, and
    /// returns that port (an echo: identifier).
    #[track_caller]
    fn masquerade(&self, ep: &Ep, ext: &Egress, dst: IpAddr, l4: &L4, what: &str) -> u16 {
        let fam = Fam::of(dst);
        self.send(ep, &ep.tx(dst, l4)).expect(PASS, &[eg(ep.n, Forwarded)], &format!("{what}: from the container"));
        let out = self.world_tx(ext, &ext.out(ep.ip(fam), dst, l4)).expect(PASS, &[], &format!("{what}: masqueraded"));
        let port = frame_sport(&out.frame, l4.proto);
        let (min, max) = self.nat_range;
        assert!((min..=max).contains(&port), "{what}: port {port} outside the NAT range {min}-{max}");
        assert_eq!(
            out.frame,
            ext.out(ext.ip(fam), dst, &with_sport(l4, port)),
            "{what}: only the source address and port change"
        );
        assert_checksums(&out.frame, &checksums_of(fam, l4.proto), what);
        port
    }
}

#[test]
fn masquerading_rewrites_the_source_to_the_egress_address_and_a_port_of_the_range() {
    with_env("snat", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, Identity::WORLD, PD::Egress, M::Any);
        env.nat_ports(NAT_MIN, NAT_MAX);
        let ext = env.egress(1, true, true);
        for fam in FAMILIES {
            let (me, x) = (a.ip(fam), world(fam));
            let echo = |id, seq| match fam {
                Fam::V6 => L4::echo6(true, id, seq),
                Fam::V4 => L4::echo4(true, id, seq),
            };
            // (first packet, next packet of the same flow, another flow to the same remote)
            let flows = [
                (L4::tcp(40000, 80, TCP_SYN), L4::tcp(40000, 80, TCP_ACK), L4::tcp(40001, 80, TCP_SYN)),
                (L4::udp(40000, 53, b"query"), L4::udp(40000, 53, b"again"), L4::udp(40001, 53, b"query")),
                (echo(0x4000, 1), echo(0x4000, 2), echo(0x4001, 1)),
            ];
            for (first, next, other) in flows {
                let what = format!("{fam:?} protocol {}", first.proto);
                let port = env.masquerade(&a, &ext, x, &first, &what);
                let (sport, dport) = l4_ports(&first);
                let out = env.nat_out(&nat_key(me, sport, x, dport, first.proto)).expect("a crs_nat_out entry");
                assert_eq!(
                    (out.addr, out.port, out.flags, out.ifindex),
                    (addr16(ext.ip(fam)), port.to_be_bytes(), NAT_F_SNAT, ext.ifindex),
                    "{what}: the out entry names the source the flow leaves with"
                );
                let reply_sport = if is_icmp(first.proto) { port } else { dport };
                let inn = env
                    .nat_in(&nat_key(x, reply_sport, ext.ip(fam), port, first.proto))
                    .expect("a crs_nat_in entry for the replies");
                assert_eq!(
                    (inn.addr, inn.port, inn.flags, inn.ifindex),
                    (addr16(me), sport.to_be_bytes(), NAT_F_SNAT, ext.ifindex),
                    "{what}: the in entry names the endpoint's address and port"
                );
                assert_eq!(env.masquerade(&a, &ext, x, &next, &what), port, "{what}: the flow keeps its port");
                let other_port = env.masquerade(&a, &ext, x, &other, &what);
                assert_ne!(other_port, port, "{what}: another flow to the same remote gets another port");
            }
        }
        // IPv4 UDP without a checksum keeps none.
        let x = Ipv4Addr::new(203, 0, 113, 5);
        let mut packet = Ipv4::new(a.ip4, x).packet(&L4::udp(40002, 53, b"no checksum"));
        packet[26..28].copy_from_slice(&[0, 0]);
        env.send(&a, &a.tx_ip(ETH_P_IP, &packet)).expect(PASS, &[eg(a.n, Forwarded)], "UDP without checksum");
        let out = env.world_tx(&ext, &ext.out_ip(ETH_P_IP, &packet)).expect(PASS, &[], "UDP without checksum");
        let port = frame_sport(&out.frame, PROTO_UDP);
        let mut want = Ipv4::new(EGRESS_V4, x).packet(&L4::udp(port, 53, b"no checksum"));
        want[26..28].copy_from_slice(&[0, 0]);
        assert_eq!(out.frame, ext.out_ip(ETH_P_IP, &want), "translated, still without a UDP checksum");
        assert_checksums(&out.frame, &["IPv4 header", "UDP (none)"], "UDP without checksum");
    });
}

#[test]
fn replies_to_masqueraded_flows_are_translated_back_and_delivered() {
    with_env("unsnat", |env| {
        let a = env.endpoint(1, 1001);
        // Egress only: the replies pass on the flow's connection-tracking entry alone.
        env.allow(a.id, Identity::WORLD, PD::Egress, M::Any);
        env.nat_ports(NAT_MIN, NAT_MAX);
        let ext = env.egress(1, true, true);
        for fam in FAMILIES {
            let (me, x, outside) = (a.ip(fam), world(fam), ext.ip(fam));
            let flows = [
                (L4::tcp(40100, 443, TCP_SYN), L4::tcp(443, 40100, TCP_SYN | TCP_ACK)),
                (L4::udp(40100, 53, b"query"), L4::udp(53, 40100, b"answer")),
                (fam.echo(true, 0x4100), fam.echo(false, 0x4100)),
            ];
            for (request, reply) in flows {
                let what = format!("{fam:?} protocol {}", request.proto);
                let port = env.masquerade(&a, &ext, x, &request, &what);
                let arriving = if is_icmp(reply.proto) { with_sport(&reply, port) } else { with_dport(&reply, port) };
                let out = env.world_rx(&ext, &ext.inbound(x, outside, &arriving)).expect(
                    REDIRECT,
                    &[ing(a.n, Forwarded)],
                    &format!("{what}: reply"),
                );
                assert_eq!(out.frame, delivered(x, &a, 63, &reply), "{what}: back to the endpoint's address and port");
                assert_checksums(&out.frame, &checksums_of(fam, reply.proto), &what);
                let (sport, dport) = l4_ports(&request);
                let (_, ct) = env.ct_expect(me, sport, x, dport, request.proto);
                assert_eq!(ct.packets, [1, 1], "{what}: the reply is the flow's");
                assert_ne!(ct.flags & CT_F_SEEN_REPLY, 0, "{what}: seen reply");

                // Close to the mapping, but not it: the host's business, untouched.
                let (rs, _) = l4_ports(&arriving);
                let mut misses = vec![(world2(fam), arriving.clone(), "from another remote address")];
                if is_icmp(reply.proto) {
                    misses.push((x, fam.echo(true, port), "an echo request with the mapped id"));
                    misses.push((x, fam.echo(false, port + 1000), "an echo reply with another id"));
                } else {
                    misses.push((x, with_dport(&arriving, port + 1000), "to another port"));
                    misses.push((x, with_sport(&arriving, rs + 1), "from another remote port"));
                }
                for (src, l4, miss) in misses {
                    let frame = ext.inbound(src, outside, &l4);
                    let out = env.world_rx(&ext, &frame).expect(PASS, &[], &format!("{what}: {miss}"));
                    assert_eq!(out.frame, frame, "{what}: {miss}: untouched");
                }
            }
            // Nothing was mapped for this port.
            let frame = ext.inbound(x, outside, &L4::tcp(443, 30000, TCP_SYN | TCP_ACK));
            let out = env.world_rx(&ext, &frame).expect(PASS, &[], "no mapping");
            assert_eq!(out.frame, frame, "no mapping: untouched");
        }
    });
}

#[test]
fn icmp_errors_about_masqueraded_flows_are_translated_back_and_delivered() {
    with_env("snaticmp", |env| {
        let a = env.endpoint(1, 1001);
        // Egress only: the errors pass as related to the flow, or not at all.
        env.allow(a.id, Identity::WORLD, PD::Egress, M::Any);
        env.nat_ports(NAT_MIN, NAT_MAX);
        let ext = env.egress(1, true, true);
        for fam in FAMILIES {
            let (me, x, outside) = (a.ip(fam), world(fam), ext.ip(fam));
            // An error from the remote itself, and one from a router on the way.
            let router = world2(fam);
            for request in [L4::udp(40200, 53, b"a query"), L4::tcp(40201, 443, TCP_SYN), fam.echo(true, 0x4200)] {
                let what = format!("{fam:?} protocol {}", request.proto);
                let port = env.masquerade(&a, &ext, x, &request, &what);
                let (sport, _) = l4_ports(&request);
                // The packet as it left, which the error quotes; and as the endpoint sent it:
                // its own address and port, the quoted IPv4 header checksum recomputed, the
                // quoted L4 checksum as it was.
                let (_, left) = ip_packet(outside, x, &with_sport(&request, port));
                let sent = with_source(&left, me, sport, request.proto);
                let errors = [
                    (x, fam.dest_unreach(&left), fam.dest_unreach(&sent), "destination unreachable"),
                    (router, fam.too_big(&left), fam.too_big(&sent), "packet too big / fragmentation needed"),
                    (router, fam.time_exceeded(&left), fam.time_exceeded(&sent), "time exceeded"),
                ];
                for (from, error, back, kind) in errors {
                    let out = env.world_rx(&ext, &ext.inbound(from, outside, &error)).expect(
                        REDIRECT,
                        &[ing(a.n, Forwarded)],
                        &format!("{what}: {kind}"),
                    );
                    assert_eq!(out.frame, delivered(from, &a, 63, &back), "{what}: {kind} translated back");
                    let want: &[&str] = match fam {
                        Fam::V6 => &["ICMPv6"],
                        Fam::V4 => &["IPv4 header", "ICMP", "quoted IPv4 header"],
                    };
                    assert_checksums(&out.frame, want, &format!("{what}: {kind}"));
                }
            }
            // Errors quoting what this host sent but nothing translated: the host's.
            let unmapped = [
                ip_packet(outside, x, &L4::udp(30000, 53, b"not mapped")).1,
                ip_packet(host_ip(fam), x, &L4::udp(40200, 53, b"another source")).1,
                ip_packet(outside, world2(fam), &L4::udp(40200, 53, b"another remote")).1,
            ];
            for quoted in unmapped {
                let frame = ext.inbound(x, outside, &fam.dest_unreach(&quoted));
                let out = env.world_rx(&ext, &frame).expect(PASS, &[], "an error about an unknown flow");
                assert_eq!(out.frame, frame, "an error about an unknown flow: untouched");
            }
        }
    });
}

#[test]
fn a_nat_port_is_taken_over_once_the_flow_holding_it_has_expired() {
    with_env("snatexpire", |env| {
        let a = env.endpoint(1, 1001);
        let b = env.endpoint(2, 1002);
        for ep in [a, b] {
            env.allow(ep.id, Identity::WORLD, PD::Egress, M::Any);
        }
        let ext = env.egress(1, true, true);
        // No range configured: no port to hand out.
        for fam in FAMILIES {
            let l4 = L4::udp(41000, 5300, b"early");
            env.send(&a, &a.tx(world(fam), &l4)).expect(PASS, &[eg(a.n, Forwarded)], "before the range is set");
            env.world_tx(&ext, &ext.out(a.ip(fam), world(fam), &l4)).expect(
                DROP,
                &[eg(a.n, NatNoPort)],
                "no NAT port range configured",
            );
        }
        env.assert_no_translations("without a range");

        env.nat_ports(NAT_MIN, NAT_MIN);
        for fam in FAMILIES {
            let (me, x, outside) = (a.ip(fam), world(fam), ext.ip(fam));
            let first = L4::udp(41000, 53, b"first");
            let second = L4::udp(41001, 53, b"second");
            assert_eq!(env.masquerade(&a, &ext, x, &first, "the first flow"), NAT_MIN);
            env.send(&a, &a.tx(x, &second)).expect(PASS, &[eg(a.n, Forwarded)], "the second flow");
            env.world_tx(&ext, &ext.out(me, x, &second)).expect(
                DROP,
                &[eg(a.n, NatNoPort)],
                "the only port is held by a live flow to the same remote address, port and protocol",
            );
            env.send(&b, &b.tx(x, &first)).expect(PASS, &[eg(b.n, Forwarded)], "another endpoint");
            env.world_tx(&ext, &ext.out(b.ip(fam), x, &first)).expect(
                DROP,
                &[eg(b.n, NatNoPort)],
                "counted on the endpoint that found no port",
            );
            // The port is free for any other remote address, port or protocol.
            let elsewhere = [
                (x, L4::udp(41001, 54, b"other port")),
                (world2(fam), second.clone()),
                (x, L4::tcp(41001, 53, TCP_SYN)),
            ];
            for (dst, l4) in elsewhere {
                assert_eq!(env.masquerade(&a, &ext, dst, &l4, "another remote"), NAT_MIN, "{fam:?}: {dst} {l4:?}");
            }

            // The first flow's conntrack entry runs out: its port is taken over.
            env.expire(me, 41000, x, 53, PROTO_UDP);
            let out = env.world_tx(&ext, &ext.out(me, x, &second)).expect(PASS, &[], "the first flow expired");
            assert_eq!(out.frame, ext.out(outside, x, &with_sport(&second, NAT_MIN)), "the second flow leaves");
            let inn = env.nat_in(&nat_key(x, 53, outside, NAT_MIN, PROTO_UDP)).expect("the in entry of the port");
            assert_eq!((inn.addr, inn.port), (addr16(me), 41001u16.to_be_bytes()), "names the second flow now");
            let out = env.world_rx(&ext, &ext.inbound(x, outside, &L4::udp(53, NAT_MIN, b"answer"))).expect(
                REDIRECT,
                &[ing(a.n, Forwarded)],
                "a reply on the port",
            );
            assert_eq!(out.frame, delivered(x, &a, 63, &L4::udp(53, 41001, b"answer")), "goes to the second flow");
            // The first flow's out entry lost its port: it gets none while the second lives.
            env.send(&a, &a.tx(x, &first)).expect(PASS, &[eg(a.n, Forwarded)], "the first flow again");
            env.world_tx(&ext, &ext.out(me, x, &first)).expect(
                DROP,
                &[eg(a.n, NatNoPort)],
                "the first flow's old mapping is not used",
            );

            // Echo identifiers likewise.
            assert_eq!(env.masquerade(&a, &ext, x, &fam.echo(true, 0x7001), "echo 1"), NAT_MIN);
            env.send(&a, &a.tx(x, &fam.echo(true, 0x7002))).expect(PASS, &[eg(a.n, Forwarded)], "echo 2");
            env.world_tx(&ext, &ext.out(me, x, &fam.echo(true, 0x7002))).expect(
                DROP,
                &[eg(a.n, NatNoPort)],
                "echo 2 while echo 1 lives",
            );
            env.expire(me, 0x7001, x, 0x7001, fam.icmp());
            assert_eq!(env.masquerade(&a, &ext, x, &fam.echo(true, 0x7002), "echo 2"), NAT_MIN);
        }

        // Two ports: two flows to one remote get one each, a third none.
        env.nat_ports(NAT_MIN, NAT_MIN + 1);
        for fam in FAMILIES {
            let x = world(fam);
            let p1 = env.masquerade(&a, &ext, x, &L4::udp(42000, 5353, b"1"), "flow 1 of 3");
            let p2 = env.masquerade(&a, &ext, x, &L4::udp(42001, 5353, b"2"), "flow 2 of 3");
            assert_eq!(BTreeSet::from([p1, p2]), BTreeSet::from([NAT_MIN, NAT_MIN + 1]), "{fam:?}: both ports");
            let third = L4::udp(42002, 5353, b"3");
            env.send(&a, &a.tx(x, &third)).expect(PASS, &[eg(a.n, Forwarded)], "flow 3 of 3");
            env.world_tx(&ext, &ext.out(a.ip(fam), x, &third)).expect(DROP, &[eg(a.n, NatNoPort)], "flow 3 of 3");
        }
    });
}

#[test]
fn an_egress_interface_without_an_address_of_the_family_is_nat_no_address() {
    with_env("snatnoaddr", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, Identity::WORLD, PD::Egress, M::Any);
        env.nat_ports(NAT_MIN, NAT_MAX);
        let only4 = env.egress(1, true, false);
        let only6 = env.egress(2, false, true);
        for (ext, missing, have, sport) in [(only4, Fam::V6, Fam::V4, 43000), (only6, Fam::V4, Fam::V6, 43001)] {
            let l4 = L4::udp(sport, 53, b"q");
            env.send(&a, &a.tx(world(missing), &l4)).expect(PASS, &[eg(a.n, Forwarded)], "from the container");
            env.world_tx(&ext, &ext.out(a.ip(missing), world(missing), &l4)).expect(
                DROP,
                &[eg(a.n, NatNoAddress)],
                &format!("{missing:?} through an interface without a {missing:?} address"),
            );
            env.masquerade(&a, &ext, world(have), &l4, &format!("{have:?} through it"));
            // Arriving in that family, to the address another interface has: not for this one.
            let frame = ext.inbound(world(missing), egress_addr(missing), &L4::udp(53, NAT_MIN, b"a"));
            let out = env.world_rx(&ext, &frame).expect(PASS, &[], "nothing to translate to");
            assert_eq!(out.frame, frame);
        }
        for (_, entry) in env.world.nat_out().expect("crs_nat_out") {
            assert!(entry.addr == addr16(IpAddr::V4(EGRESS_V4)) || entry.addr == addr16(IpAddr::V6(EGRESS_V6)));
        }
        assert_eq!(env.world.nat_out().expect("crs_nat_out").len(), 2, "one mapping per family, no more");
    });
}

/// An SCTP common header (the checksum, CRC32c, is not the Internet checksum: left zero).
fn sctp(sport: u16, dport: u16) -> L4 {
    let mut b = Vec::new();
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&dport.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    L4::raw(132, &b)
}

#[test]
fn what_masquerading_cannot_translate_never_leaves_with_the_endpoints_address() {
    with_env("snatunsup", |env| {
        let a = env.endpoint(1, 1001);
        env.allow_all(a.id);
        env.nat_ports(NAT_MIN, NAT_MAX);
        let ext = env.egress(1, true, true);
        for fam in FAMILIES {
            let (me, x) = (a.ip(fam), world(fam));
            let unsupported = [
                (sctp(44000, 9899), "SCTP"),
                (L4::raw(47, &[0, 0, 0x08, 0x00, 0x45, 0, 0, 0]), "GRE"),
                (fam.other_icmp(), "ICMP neither echo nor error"),
            ];
            for (l4, what) in unsupported {
                env.send(&a, &a.tx(x, &l4)).expect(PASS, &[eg(a.n, Forwarded)], &format!("{what}: from the container"));
                env.world_tx(&ext, &ext.out(me, x, &l4)).expect(
                    DROP,
                    &[eg(a.n, NatUnsupported)],
                    &format!("{fam:?} {what}"),
                );
            }
            // What the parser refuses from an endpoint's address is dropped, not passed on
            // with that address.
            env.world_tx(&ext, &ext.out(me, x, &L4::tcp(44001, 80, TCP_SYN).truncated(10))).expect(
                DROP,
                &[eg(a.n, Malformed)],
                &format!("{fam:?}: TCP cut short"),
            );
            if fam == Fam::V6 {
                let deep = (0..9).fold(Ipv6::new(a.ip6, EGRESS_V6), |ip, _| ip.ext(Ext::DstOpts(0)));
                env.world_tx(&ext, &ext.out_ip(ETH_P_IPV6, &deep.packet(&L4::udp(44002, 53, b"")))).expect(
                    DROP,
                    &[eg(a.n, ExtHeaders)],
                    "9 extension headers",
                );
            }
        }
        env.assert_no_translations("nothing translatable was sent");
    });
}

#[test]
fn internal_endpoints_exchange_nothing_with_the_outside() {
    with_env("internal", |env| {
        let i = env.endpoint(1, 1001);
        env.set_flags(&i, ENDPOINT_F_INTERNAL);
        let b = env.endpoint(2, 1002);
        for ep in [i, b] {
            env.allow_all(ep.id);
        }
        env.nat_ports(NAT_MIN, NAT_MAX);
        let ext = env.egress(1, true, true);
        for fam in FAMILIES {
            let l4 = L4::tcp(45000, 443, TCP_SYN);
            for dst in [world(fam), remote(fam), remote3(fam)] {
                env.send(&i, &i.tx(dst, &l4)).expect(DROP, &[eg(i.n, InternalNetwork)], &format!("to {dst}"));
            }
            env.send(&i, &i.tx(host_ip(fam), &l4)).expect(PASS, &[eg(i.n, Forwarded)], "the host is not outside");
            env.send(&i, &i.tx(b.ip(fam), &l4)).expect(
                REDIRECT,
                &[eg(i.n, Forwarded), ing(b.n, Forwarded)],
                "a local endpoint is not outside",
            );
            // What reaches an egress interface from it anyway (through the host stack).
            env.world_tx(&ext, &ext.out(i.ip(fam), world(fam), &l4)).expect(
                DROP,
                &[eg(i.n, InternalNetwork)],
                "crs_to_world",
            );
            // A masqueraded network's address is not published; an internal one neither.
            env.world_rx(&ext, &ext.inbound(world(fam), i.ip(fam), &L4::tcp(443, 45000, TCP_SYN))).expect(
                DROP,
                &[ing(i.n, NotPublished)],
                "to the address of an internal masqueraded endpoint",
            );
        }
        env.set_flags(&i, ENDPOINT_F_NO_MASQUERADE);
        for fam in FAMILIES {
            env.world_rx(&ext, &ext.inbound(world(fam), i.ip(fam), &L4::tcp(443, 45000, TCP_SYN))).expect(
                DROP,
                &[ing(i.n, InternalNetwork)],
                "to the address of an internal routed endpoint",
            );
            env.world_tx(&ext, &ext.out(i.ip(fam), world(fam), &L4::tcp(45000, 443, TCP_SYN))).expect(
                DROP,
                &[eg(i.n, InternalNetwork)],
                "from an internal routed endpoint",
            );
        }
        env.assert_no_translations("internal endpoints");
    });
}

#[test]
fn only_unmasqueraded_endpoints_are_reachable_at_their_own_address() {
    with_env("nomasq", |env| {
        let a = env.endpoint(1, 1001);
        let r = env.endpoint(2, 1002);
        env.set_flags(&r, ENDPOINT_F_NO_MASQUERADE);
        for ep in [a, r] {
            env.allow(ep.id, Identity::WORLD, PD::Egress, M::Any);
            env.allow(ep.id, Identity::WORLD, PD::Ingress, M::Port(PROTO_TCP, 8080));
        }
        env.nat_ports(NAT_MIN, NAT_MAX);
        let ext = env.egress(1, true, true);
        for fam in FAMILIES {
            let x = world(fam);
            let query = L4::udp(46000, 53, b"q");
            let answer = L4::udp(53, 46000, b"a");
            // Masqueraded: never at its own address, not even for a reply of its own flow or
            // a port its policy opens.
            env.send(&a, &a.tx(x, &query)).expect(PASS, &[eg(a.n, Forwarded)], "a's flow");
            for l4 in [&answer, &L4::tcp(46001, 8080, TCP_SYN)] {
                env.world_rx(&ext, &ext.inbound(x, a.ip(fam), l4)).expect(
                    DROP,
                    &[ing(a.n, NotPublished)],
                    "to a masqueraded endpoint's own address",
                );
            }
            // Not masqueraded: leaves with its own address, untouched.
            env.send(&r, &r.tx(x, &query)).expect(PASS, &[eg(r.n, Forwarded)], "r's flow");
            let frame = ext.out(r.ip(fam), x, &query);
            let out = env.world_tx(&ext, &frame).expect(PASS, &[], "r leaves");
            assert_eq!(out.frame, frame, "r's packet is not translated");
            // Its replies and what its policy allows arrive at its address, straight into it.
            for (l4, what) in [(&answer, "a reply"), (&L4::tcp(46002, 8080, TCP_SYN), "a connection to 8080")] {
                let out =
                    env.world_rx(&ext, &ext.inbound(x, r.ip(fam), l4)).expect(REDIRECT, &[ing(r.n, Forwarded)], what);
                assert_eq!(out.frame, delivered(x, &r, 63, l4), "{what}: delivered, hop limit one less");
            }
            env.world_rx(&ext, &ext.inbound(x, r.ip(fam), &L4::tcp(46003, 8081, TCP_SYN))).expect(
                DROP,
                &[ing(r.n, PolicyDenied)],
                "a port its policy does not open",
            );
        }
        env.assert_no_translations("nothing was masqueraded");
    });
}

#[test]
fn traffic_that_is_not_an_endpoints_passes_the_egress_interface_untouched() {
    with_env("hostnat", |env| {
        let a = env.endpoint(1, 1001);
        env.allow_all(a.id);
        env.nat_ports(NAT_MIN, NAT_MAX);
        let ext = env.egress(1, true, true);
        // An interface that is not an egress interface.
        let plain = Egress { ifindex: up_link("pl", 1), ..ext };
        for fam in FAMILIES {
            let (x, h, outside) = (world(fam), host_ip(fam), ext.ip(fam));
            let (_, quoted) = ip_packet(x, outside, &L4::udp(53, 20500, b"x"));
            let l4s = [
                L4::tcp(40500, 80, TCP_SYN),
                L4::udp(40500, 53, b"q"),
                fam.echo(true, 0x4500),
                fam.dest_unreach(&quoted),
            ];
            for l4 in &l4s {
                let what = format!("{fam:?} protocol {}", l4.proto);
                // The host's own traffic, from any of its addresses, the egress one included.
                for src in [h, outside] {
                    let frame = ext.out(src, x, l4);
                    let out = env.world_tx(&ext, &frame).expect(PASS, &[], &format!("{what} from {src}"));
                    assert_eq!(out.frame, frame, "{what} from {src}: untouched");
                }
                // To an address that is neither an endpoint's nor the egress address, or to the
                // egress address without a mapping.
                for dst in [h, world2(fam), outside] {
                    let frame = ext.inbound(x, dst, l4);
                    let out = env.world_rx(&ext, &frame).expect(PASS, &[], &format!("{what} to {dst}"));
                    assert_eq!(out.frame, frame, "{what} to {dst}: untouched");
                }
                // An endpoint's packets on an interface that is not an egress interface.
                let frame = plain.out(a.ip(fam), x, l4);
                let out = env.world_tx(&plain, &frame).expect(PASS, &[], &format!("{what}: not an egress interface"));
                assert_eq!(out.frame, frame);
                let frame = plain.inbound(x, a.ip(fam), l4);
                let out = env.world_rx(&plain, &frame).expect(PASS, &[], &format!("{what}: not an egress interface"));
                assert_eq!(out.frame, frame);
            }
        }
        // Frames that are not IP, or cannot be parsed.
        let h4 = Ipv4Addr::new(10, 0, 0, 1);
        let x4 = Ipv4Addr::new(203, 0, 113, 5);
        let h6 = Ipv6Addr::new(0xfdc1, 0x1a00, 1, 0, 0, 0, 0, 1);
        let x6 = Ipv6Addr::new(0x2a00, 0x1450, 0, 0, 0, 0, 0, 5);
        // (IP headers cut short cannot be tried: BPF_PROG_TEST_RUN refuses them with EINVAL.)
        let packets: [(u16, Vec<u8>, &str); 8] = [
            (ETH_P_ARP, arp(ARP_REQUEST, ext.mac, h4, [0; 6], x4), "ARP"),
            (0x88b5, vec![0; 46], "another ethertype"),
            (ETH_P_IP, Ipv6::new(h6, x6).packet(&L4::udp(1, 2, b"")), "IPv6 under the IPv4 ethertype"),
            (ETH_P_IP, Ipv4::new(h4, x4).ihl(3).packet(&L4::udp(1, 2, b"")), "IPv4 header length 3"),
            (ETH_P_IP, Ipv4::new(h4, x4).ihl(15).packet(&L4::udp(1, 2, b"")), "IPv4 options past the packet"),
            (ETH_P_IP, Ipv4::new(h4, x4).packet(&L4::tcp(1, 2, TCP_SYN).truncated(8)), "TCP cut short"),
            (
                ETH_P_IPV6,
                (0..9).fold(Ipv6::new(h6, x6), |ip, _| ip.ext(Ext::DstOpts(0))).packet(&L4::udp(1, 2, b"")),
                "9 extension headers",
            ),
            (ETH_P_IPV6, Ipv6::new(h6, x6).packet(&L4::raw(60, &[17])), "destination options past the packet"),
        ];
        for (ethertype, packet, what) in packets {
            for frame in [ext.out_ip(ethertype, &packet), ext.inbound_ip(ethertype, &packet)] {
                let out = env.world_tx(&ext, &frame).expect(PASS, &[], &format!("crs_to_world: {what}"));
                assert_eq!(out.frame, frame, "crs_to_world: {what}: untouched");
                let out = env.world_rx(&ext, &frame).expect(PASS, &[], &format!("crs_from_world: {what}"));
                assert_eq!(out.frame, frame, "crs_from_world: {what}: untouched");
            }
        }
        env.assert_no_translations("host traffic");
    });
}

#[test]
fn fragments_are_masqueraded_with_their_first_fragment() {
    with_env("snatfrag", |env| {
        let a = env.endpoint(1, 1001);
        // Egress only: the reply's fragments pass on the flow's entry.
        env.allow(a.id, Identity::WORLD, PD::Egress, M::Any);
        env.nat_ports(NAT_MIN, NAT_MAX);
        let ext = env.egress(1, true, true);
        for fam in FAMILIES {
            let (me, x, outside, t) = (a.ip(fam), world(fam), ext.ip(fam), ethertype(fam));
            let query = L4::udp(40300, 53, &[0x5a; 56]);
            let [first, later] = datagram(me, x, 0x3300, 64, &query);
            env.send(&a, &a.tx_ip(t, &first)).expect(PASS, &[eg(a.n, Forwarded)], "first fragment from the container");
            env.send(&a, &a.tx_ip(t, &later)).expect(PASS, &[eg(a.n, Forwarded)], "later fragment from the container");
            let out1 = env.world_tx(&ext, &ext.out_ip(t, &first)).expect(PASS, &[], "first fragment");
            let port = frame_sport(&out1.frame, PROTO_UDP);
            assert!((NAT_MIN..=NAT_MAX).contains(&port), "port {port}");
            let out2 = env.world_tx(&ext, &ext.out_ip(t, &later)).expect(PASS, &[], "later fragment");
            let [want1, want2] = datagram(outside, x, 0x3300, 64, &with_sport(&query, port));
            assert_eq!(out1.frame, ext.out_ip(t, &want1), "{fam:?}: the first fragment's address and port");
            assert_eq!(out2.frame, ext.out_ip(t, &want2), "{fam:?}: the later fragment's address");
            let header: &[&str] = if fam == Fam::V4 { &["IPv4 header"] } else { &[] };
            assert_checksums(&out1.frame, header, "first fragment");
            assert_checksums(&out2.frame, header, "later fragment");
            assert_checksums(&reassemble(&out1.frame, &out2.frame), &checksums_of(fam, PROTO_UDP), "the datagram");

            // The reply, fragmented too.
            let answer = L4::udp(53, 40300, &[0xa5; 56]);
            let [r1, r2] = datagram(x, outside, 0x3301, 64, &with_dport(&answer, port));
            let [w1, w2] = datagram(x, me, 0x3301, 63, &answer);
            for (fragment, want, what) in [(r1, w1, "first reply fragment"), (r2, w2, "later reply fragment")] {
                let out = env.world_rx(&ext, &ext.inbound_ip(t, &fragment)).expect(
                    REDIRECT,
                    &[ing(a.n, Forwarded)],
                    &format!("{fam:?} {what}"),
                );
                assert_eq!(out.frame, a.rx_ip(t, &want), "{fam:?} {what}: back to the endpoint");
                assert_checksums(&out.frame, header, what);
            }
            let (_, ct) = env.ct_expect(me, 40300, x, 53, PROTO_UDP);
            assert_eq!(ct.packets, [2, 2], "{fam:?}: all four fragments are the flow's");
        }
    });
}

#[test]
fn a_later_fragment_without_its_first_is_never_masqueraded() {
    with_env("snatorphan", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, Identity::WORLD, PD::Egress, M::Any);
        env.nat_ports(NAT_MIN, NAT_MAX);
        let ext = env.egress(1, true, true);
        for fam in FAMILIES {
            let (me, x, outside, t) = (a.ip(fam), world(fam), ext.ip(fam), ethertype(fam));
            let query = L4::udp(40301, 53, &[0x5a; 56]);
            // No first fragment anywhere.
            let [_, orphan] = datagram(me, x, 0x3400, 64, &query);
            env.world_tx(&ext, &ext.out_ip(t, &orphan)).expect(
                DROP,
                &[eg(a.n, FragmentUnknown)],
                &format!("{fam:?}: a later fragment nobody saw the first of"),
            );
            // The first fragment went through crs_from_container, never through crs_to_world.
            let [first, later] = datagram(me, x, 0x3401, 64, &query);
            env.send(&a, &a.tx_ip(t, &first)).expect(PASS, &[eg(a.n, Forwarded)], "first fragment");
            env.world_tx(&ext, &ext.out_ip(t, &later)).expect(
                DROP,
                &[eg(a.n, FragmentUnknown)],
                &format!("{fam:?}: a later fragment whose first was not masqueraded"),
            );
            // From outside to the egress address: the host's (it reassembles, or not).
            let [_, orphan] = datagram(x, outside, 0x3402, 64, &L4::udp(53, NAT_MIN, &[0xa5; 56]));
            let frame = ext.inbound_ip(t, &orphan);
            let out = env.world_rx(&ext, &frame).expect(PASS, &[], &format!("{fam:?}: inbound orphan"));
            assert_eq!(out.frame, frame, "untouched");
        }
        env.assert_no_translations("no first fragment was masqueraded");
    });
}

#[test]
fn from_container_redirects_outside_traffic_routed_through_an_egress_interface() {
    with_env("fibfwd", |env| {
        let a = env.endpoint(1, 1001);
        env.allow_all(a.id);
        let ext = env.egress(1, true, true);
        // bpf_fib_lookup answers only where the packet arrives with forwarding on.
        sysctl("net/ipv4/conf/all/forwarding", "1");
        sysctl("net/ipv6/conf/all/forwarding", "1");
        // World addresses are routed through the egress interface, the CIDR prefixes through
        // another one.
        up_link("ot", 1);
        for cmd in [
            "ip addr add 100.64.0.1/24 dev egv1",
            "ip -6 addr add fdc1:e9::1/64 dev egv1 nodad",
            "ip route add 203.0.113.0/24 via 100.64.0.254",
            "ip -6 route add 2a00:1450::/32 via fdc1:e9::fe",
            "ip addr add 100.65.0.1/24 dev otv1",
            "ip -6 addr add fdc1:e8::1/64 dev otv1 nodad",
            "ip route add 198.51.100.0/24 via 100.65.0.254",
            "ip -6 route add 2001:db8::/32 via fdc1:e8::fe",
        ] {
            run(&cmd.split(' ').collect::<Vec<_>>());
        }
        let unrouted = |fam| match fam {
            Fam::V6 => IpAddr::V6(Ipv6Addr::new(0x2a02, 0, 0, 0, 0, 0, 0, 9)),
            Fam::V4 => IpAddr::V4(Ipv4Addr::new(100, 66, 0, 9)),
        };
        for fam in FAMILIES {
            let l4 = L4::tcp(40400, 443, TCP_SYN);
            let out = env.send(&a, &a.tx(world(fam), &l4)).expect(
                REDIRECT,
                &[eg(a.n, Forwarded)],
                &format!("{fam:?}: routed through the egress interface"),
            );
            assert_eq!(out.frame, sent_with_hops(&a, world(fam), 63, &l4), "{fam:?}: hop limit one less");
            assert_checksums(&out.frame, &checksums_of(fam, PROTO_TCP), "forwarded");
            // Routed elsewhere, not routed at all, or about to expire: the host stack's.
            let expiring = sent_with_hops(&a, world(fam), 1, &l4);
            for (frame, what) in [
                (a.tx(remote(fam), &l4), "routed through another interface"),
                (a.tx(unrouted(fam), &l4), "without a route"),
                (expiring, "hop limit 1"),
            ] {
                let out = env.send(&a, &frame).expect(PASS, &[eg(a.n, Forwarded)], &format!("{fam:?}: {what}"));
                assert_eq!(out.frame, frame, "{fam:?}: {what}: to the stack untouched");
            }
        }
        // Once the interface is no egress interface any more, the stack routes it.
        env.world.remove_egress(ext.ifindex).expect("remove egress interface");
        for fam in FAMILIES {
            let frame = a.tx(world(fam), &L4::tcp(40401, 443, TCP_SYN));
            let out = env.send(&a, &frame).expect(PASS, &[eg(a.n, Forwarded)], "no egress interface");
            assert_eq!(out.frame, frame);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Published ports: crs_from_world's translation to the endpoint (crs_nat_in_translate), the
// endpoint's replies (crs_dnat_reply), hairpin from other containers, policy and ICMP errors
// ---------------------------------------------------------------------------------------------

/// The crs_ports key of `port` of `proto` published on `on` (None: every address of the host)
/// in the family `fam`.
fn port_key(fam: Fam, proto: u8, port: u16, on: Option<IpAddr>) -> PortKey {
    let family = match fam {
        Fam::V6 => IP_FAMILY_V6,
        Fam::V4 => IP_FAMILY_V4,
    };
    PortKey { family, proto, port: port.to_be_bytes(), addr: on.map_or([0; 16], addr16) }
}

impl Env {
    /// Publishes `port` of `proto` on `on` (None: every address of the host) in the family
    /// `fam` to `ep`'s address of the family and its port `to`, as the daemon does for `-p`,
    /// and marks `ep` as publishing (ENDPOINT_F_PUBLISHED). Returns the crs_ports key.
    fn publish(&mut self, fam: Fam, on: Option<IpAddr>, proto: u8, port: u16, ep: &Ep, to: u16) -> PortKey {
        let key = port_key(fam, proto, port, on);
        let target = PortTarget { addr: addr16(ep.ip(fam)), port: to.to_be_bytes(), pad: 0, endpoint_id: ep.n };
        self.world.set_port(&key, &target).expect("set crs_ports");
        self.set_flags(ep, ENDPOINT_F_PUBLISHED);
        key
    }

    /// Asserts the two entries of a connection from `client` to the published address and
    /// port `published`, translated to `target`: the in entry (the client's direction) names
    /// the target, the out entry (the target's replies) the published address and port; both
    /// NAT_F_DNAT, for the interface `ifindex` the connection came in on.
    #[track_caller]
    fn assert_dnat(
        &self,
        client: (IpAddr, u16),
        published: (IpAddr, u16),
        target: (IpAddr, u16),
        proto: u8,
        ifindex: u32,
        what: &str,
    ) {
        let inn = self
            .nat_in(&nat_key(client.0, client.1, published.0, published.1, proto))
            .unwrap_or_else(|| panic!("{what}: no crs_nat_in entry for the client's direction"));
        assert_eq!(
            (inn.addr, inn.port, inn.flags, inn.ifindex),
            (addr16(target.0), target.1.to_be_bytes(), NAT_F_DNAT, ifindex),
            "{what}: the in entry names the endpoint's address and port"
        );
        let out = self
            .nat_out(&nat_key(target.0, target.1, client.0, client.1, proto))
            .unwrap_or_else(|| panic!("{what}: no crs_nat_out entry for the endpoint's replies"));
        assert_eq!(
            (out.addr, out.port, out.flags, out.ifindex),
            (addr16(published.0), published.1.to_be_bytes(), NAT_F_DNAT, ifindex),
            "{what}: the out entry names the published address and port"
        );
    }
}

#[test]
fn published_ports_are_translated_to_their_endpoint_and_delivered() {
    with_env("dnat", |env| {
        let a = env.endpoint(1, 1001);
        // Ingress on the container's ports only: the published ones are not what policy sees.
        env.allow(a.id, Identity::WORLD, PD::Ingress, M::Port(PROTO_TCP, 80));
        env.allow(a.id, Identity::WORLD, PD::Ingress, M::Port(PROTO_TCP, 443));
        env.allow(a.id, Identity::WORLD, PD::Ingress, M::Port(PROTO_UDP, 53));
        let ext = env.egress(1, true, true);
        for fam in FAMILIES {
            let (me, x, outside, h) = (a.ip(fam), world(fam), ext.ip(fam), host_ip(fam));
            env.publish(fam, Some(outside), PROTO_TCP, 8080, &a, 80);
            env.publish(fam, None, PROTO_UDP, 5353, &a, 53);
            env.publish(fam, None, PROTO_TCP, 8443, &a, 443);
            // (the address it is sent to, the client's first packet, its next one, the
            // endpoint's port)
            let cases = [
                (
                    outside,
                    L4::tcp(40000, 8080, TCP_SYN),
                    L4::tcp(40000, 8080, TCP_ACK),
                    80,
                    "TCP on the egress address",
                ),
                (outside, L4::udp(40000, 5353, b"query"), L4::udp(40000, 5353, b"again"), 53, "UDP on every address"),
                (h, L4::udp(40001, 5353, b"query"), L4::udp(40001, 5353, b"again"), 53, "UDP to another host address"),
                (h, L4::tcp(40001, 8443, TCP_SYN), L4::tcp(40001, 8443, TCP_ACK), 443, "TCP to another host address"),
            ];
            for (dst, first, next, port, kind) in cases {
                let what = format!("{fam:?} {kind}");
                let (sport, published) = l4_ports(&first);
                let proto = first.proto;
                for (i, l4) in [first, next].iter().enumerate() {
                    let out = env.world_rx(&ext, &ext.inbound(x, dst, l4)).expect(
                        REDIRECT,
                        &[ing(a.n, Forwarded)],
                        &format!("{what}: packet {}", i + 1),
                    );
                    assert_eq!(
                        out.frame,
                        delivered(x, &a, 63, &with_dport(l4, port)),
                        "{what}: packet {}: only the destination address and port change",
                        i + 1
                    );
                    assert_checksums(&out.frame, &checksums_of(fam, l4.proto), &what);
                }
                env.assert_dnat((x, sport), (dst, published), (me, port), proto, ext.ifindex, &what);
                let (_, ct) = env.ct_expect(x, sport, me, port, proto);
                assert_eq!(ct.packets, [2, 0], "{what}: both packets are the connection's, as the endpoint sees it");
                assert_ne!(ct.flags & CT_F_INGRESS_OK, 0, "{what}: checked against the endpoint's ingress");
            }
            // An expiring hop limit / TTL: translated, then the host stack's, which answers it.
            let expiring = |dst: IpAddr, l4: &L4| match (x, dst) {
                (IpAddr::V6(s), IpAddr::V6(d)) => ext.inbound_ip(ETH_P_IPV6, &Ipv6::new(s, d).hop_limit(1).packet(l4)),
                (IpAddr::V4(s), IpAddr::V4(d)) => ext.inbound_ip(ETH_P_IP, &Ipv4::new(s, d).ttl(1).packet(l4)),
                _ => unreachable!("one family"),
            };
            let l4 = L4::udp(40002, 5353, b"expiring");
            let out = env.world_rx(&ext, &expiring(outside, &l4)).expect(PASS, &[], &format!("{fam:?}: hop limit 1"));
            assert_eq!(out.frame, expiring(me, &with_dport(&l4, 53)), "{fam:?}: hop limit 1: to the stack translated");
            assert_checksums(&out.frame, &checksums_of(fam, PROTO_UDP), "hop limit 1");
        }
    });
}

#[test]
fn replies_on_published_ports_leave_from_the_published_address_and_port() {
    with_env("dnatreply", |env| {
        let a = env.endpoint(1, 1001);
        // Its egress allows the CIDR identity only: replies to world pass on the connection's
        // tracking entry alone.
        env.allow(a.id, Identity::WORLD, PD::Ingress, M::Any);
        env.allow(a.id, CID, PD::Egress, M::Any);
        // A range, so that crs_to_world could masquerade what it took for the endpoint's.
        env.nat_ports(NAT_MIN, NAT_MAX);
        let ext = env.egress(1, true, true);
        for fam in FAMILIES {
            let (me, x, outside, h) = (a.ip(fam), world(fam), ext.ip(fam), host_ip(fam));
            env.publish(fam, Some(outside), PROTO_TCP, 8080, &a, 80);
            env.publish(fam, None, PROTO_UDP, 5353, &a, 53);
            let cases = [
                (outside, L4::tcp(40100, 8080, TCP_SYN), L4::tcp(80, 40100, TCP_SYN | TCP_ACK)),
                (outside, L4::udp(40100, 5353, b"query"), L4::udp(53, 40100, b"answer")),
                (h, L4::udp(40101, 5353, b"query"), L4::udp(53, 40101, b"answer")),
            ];
            for (dst, request, reply) in cases {
                let what = format!("{fam:?} protocol {} to {dst}", request.proto);
                let (sport, published) = l4_ports(&request);
                let (port, _) = l4_ports(&reply);
                env.world_rx(&ext, &ext.inbound(x, dst, &request)).expect(
                    REDIRECT,
                    &[ing(a.n, Forwarded)],
                    &format!("{what}: the client's request"),
                );
                let out = env.send(&a, &a.tx(x, &reply)).expect(
                    PASS,
                    &[eg(a.n, Forwarded)],
                    &format!("{what}: the endpoint's reply, to the host stack"),
                );
                let left = with_sport(&reply, published);
                assert_eq!(out.frame, a.tx_from(dst, x, &left), "{what}: from the address and port the client used");
                assert_checksums(&out.frame, &checksums_of(fam, reply.proto), &what);
                let (_, ct) = env.ct_expect(x, sport, me, port, reply.proto);
                assert_eq!(ct.packets, [1, 1], "{what}: the reply is the connection's");
                assert_ne!(ct.flags & CT_F_SEEN_REPLY, 0, "{what}: seen reply");
                // No longer from an endpoint's address: crs_to_world does not masquerade it too.
                let frame = ext.out(dst, x, &left);
                let out = env.world_tx(&ext, &frame).expect(PASS, &[], &format!("{what}: leaving"));
                assert_eq!(out.frame, frame, "{what}: leaves untouched");

                // The same port to another client is no connection to the published port.
                let frame = a.tx(remote(fam), &reply);
                let out = env.send(&a, &frame).expect(PASS, &[eg(a.n, Forwarded)], &format!("{what}: another flow"));
                assert_eq!(out.frame, frame, "{what}: another flow from the same port is not translated");
                // And a's own new flow to the client is a's egress business.
                env.send(&a, &a.tx(x, &with_dport(&reply, sport + 50))).expect(
                    DROP,
                    &[eg(a.n, PolicyDenied)],
                    &format!("{what}: a new flow of the endpoint's to world"),
                );
            }
        }
        for (_, entry) in env.world.nat_out().expect("crs_nat_out").into_iter().chain(env.world.nat_in().expect("in")) {
            assert_eq!(entry.flags, NAT_F_DNAT, "only published-port translations: {entry:?}");
        }
    });
}

#[test]
fn unpublished_and_removed_ports_are_the_hosts() {
    with_env("dnatnone", |env| {
        let a = env.endpoint(1, 1001);
        env.allow_all(a.id);
        let ext = env.egress(1, true, true);
        let mut keys = Vec::new();
        for fam in FAMILIES {
            let (x, outside, h) = (world(fam), ext.ip(fam), host_ip(fam));
            keys.push((fam, env.publish(fam, Some(outside), PROTO_TCP, 8080, &a, 80)));
            keys.push((fam, env.publish(fam, None, PROTO_UDP, 5353, &a, 53)));
            let misses = [
                (outside, L4::tcp(40200, 8081, TCP_SYN), "another port"),
                (outside, L4::udp(40200, 8080, b"q"), "the published port of another protocol"),
                (h, L4::tcp(40200, 8080, TCP_SYN), "a port published on the egress address, to another host address"),
                (world2(fam), L4::udp(40200, 5353, b"q"), "a port published on every host address, to another address"),
                (outside, fam.echo(true, 5353), "an echo request with the port as its identifier"),
                (outside, sctp(40200, 8080), "SCTP to the port"),
            ];
            for (dst, l4, miss) in misses {
                let frame = ext.inbound(x, dst, &l4);
                let out = env.world_rx(&ext, &frame).expect(PASS, &[], &format!("{fam:?}: {miss}"));
                assert_eq!(out.frame, frame, "{fam:?}: {miss}: untouched");
            }
        }
        env.assert_no_translations("nothing was sent to a published port");
        let mut published: Vec<PortKey> =
            env.world.port_entries().expect("crs_ports").into_iter().map(|(k, _)| k).collect();
        published.sort();
        let mut want: Vec<PortKey> = keys.iter().map(|(_, k)| *k).collect();
        want.sort();
        assert_eq!(published, want, "crs_ports holds what was published");

        for fam in FAMILIES {
            let (x, outside, h) = (world(fam), ext.ip(fam), host_ip(fam));
            let tcp = L4::tcp(40201, 8080, TCP_SYN);
            let udp = L4::udp(40201, 5353, b"query");
            for (dst, l4) in [(outside, &tcp), (h, &udp)] {
                env.world_rx(&ext, &ext.inbound(x, dst, l4)).expect(
                    REDIRECT,
                    &[ing(a.n, Forwarded)],
                    &format!("{fam:?}: a connection while published"),
                );
            }
            for (f, key) in &keys {
                if *f == fam {
                    env.world.remove_port(key).expect("remove the published port");
                }
            }
            // New connections, and the next packets of the ones made while it was published.
            let after = [
                (outside, L4::tcp(40202, 8080, TCP_SYN), "a new connection"),
                (outside, L4::tcp(40201, 8080, TCP_ACK), "the TCP connection's next packet"),
                (h, L4::udp(40202, 5353, b"query"), "a new UDP flow"),
                (h, L4::udp(40201, 5353, b"again"), "the UDP flow's next packet"),
            ];
            for (dst, l4, what) in after {
                let frame = ext.inbound(x, dst, &l4);
                let out = env.world_rx(&ext, &frame).expect(PASS, &[], &format!("{fam:?} after removal: {what}"));
                assert_eq!(out.frame, frame, "{fam:?} after removal: {what}: the host's, untouched");
            }
        }
        assert!(env.world.port_entries().expect("crs_ports").is_empty(), "every port was removed");
        env.world.remove_port(&keys[0].1).expect("removing an absent port is fine");
    });
}

#[test]
fn a_port_published_again_goes_to_its_new_endpoint() {
    with_env("dnatagain", |env| {
        let a = env.endpoint(1, 1001);
        let b = env.endpoint(2, 1002);
        for ep in [a, b] {
            env.allow(ep.id, Identity::WORLD, PD::Ingress, M::Any);
        }
        let ext = env.egress(1, true, true);
        for fam in FAMILIES {
            let (x, outside) = (world(fam), ext.ip(fam));
            env.publish(fam, None, PROTO_TCP, 8080, &a, 80);
            let out = env.world_rx(&ext, &ext.inbound(x, outside, &L4::tcp(40300, 8080, TCP_SYN))).expect(
                REDIRECT,
                &[ing(a.n, Forwarded)],
                "to a while a publishes the port",
            );
            assert_eq!(out.frame, delivered(x, &a, 63, &L4::tcp(40300, 80, TCP_SYN)));

            env.publish(fam, None, PROTO_TCP, 8080, &b, 8000);
            let ack = L4::tcp(40300, 8080, TCP_ACK);
            let out = env.world_rx(&ext, &ext.inbound(x, outside, &ack)).expect(
                REDIRECT,
                &[ing(b.n, Forwarded)],
                "the connection's next packet, once b publishes the port",
            );
            assert_eq!(out.frame, delivered(x, &b, 63, &with_dport(&ack, 8000)), "{fam:?}: to b's address and port");
            assert_checksums(&out.frame, &checksums_of(fam, PROTO_TCP), "to b");
            env.assert_dnat((x, 40300), (outside, 8080), (b.ip(fam), 8000), PROTO_TCP, ext.ifindex, "republished");

            let reply = L4::tcp(8000, 40300, TCP_ACK | TCP_PSH);
            let out = env.send(&b, &b.tx(x, &reply)).expect(PASS, &[eg(b.n, Forwarded)], "b's reply");
            assert_eq!(out.frame, b.tx_from(outside, x, &with_sport(&reply, 8080)), "{fam:?}: b's reply translated");
            // a's late reply of its old mapping: the port is b's now.
            let late = a.tx(x, &L4::tcp(80, 40300, TCP_SYN | TCP_ACK));
            let out = env.send(&a, &late).expect(PASS, &[eg(a.n, Forwarded)], "a's late reply");
            assert_eq!(out.frame, late, "{fam:?}: a's late reply is not translated to b's port");
        }
    });
}

#[test]
fn published_port_connections_meet_the_endpoints_ingress_policy_with_the_clients_identity() {
    with_env("dnatpolicy", |env| {
        let a = env.endpoint(1, 1001);
        // a's ingress: TCP 80 from CID, not from CID2; nothing from world but the published
        // port, which is not what policy sees.
        env.allow(a.id, CID, PD::Ingress, M::Port(PROTO_TCP, 80));
        env.deny(a.id, CID2, PD::Ingress, M::Port(PROTO_TCP, 80));
        env.allow(a.id, Identity::WORLD, PD::Ingress, M::Port(PROTO_TCP, 8080));
        let ext = env.egress(1, true, true);
        for fam in FAMILIES {
            let (me, outside) = (a.ip(fam), ext.ip(fam));
            env.publish(fam, None, PROTO_TCP, 8080, &a, 80);
            env.publish(fam, None, PROTO_UDP, 5353, &a, 53);
            let syn = L4::tcp(40400, 8080, TCP_SYN);
            env.world_rx(&ext, &ext.inbound(world(fam), outside, &syn)).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                &format!("{fam:?}: from world, which only the published port's number allows"),
            );
            assert!(env.ct(world(fam), 40400, me, 80, PROTO_TCP).is_none(), "{fam:?}: the refused flow is not tracked");
            env.world_rx(&ext, &ext.inbound(remote3(fam), outside, &syn)).expect(
                DROP,
                &[ing(a.n, PolicyDenyRule)],
                &format!("{fam:?}: from CID2, which a's ingress denies"),
            );
            env.world_rx(&ext, &ext.inbound(remote(fam), outside, &L4::udp(40400, 5353, b"q"))).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                &format!("{fam:?}: UDP from CID, which a's ingress does not allow"),
            );
            for (client, port, proto) in
                [(world(fam), 8080, PROTO_TCP), (remote3(fam), 8080, PROTO_TCP), (remote(fam), 5353, PROTO_UDP)]
            {
                let (request, reply) =
                    (nat_key(client, 40400, outside, port, proto), nat_key(me, 0, client, 40400, proto));
                assert!(env.nat_in(&request).is_none(), "{fam:?}: refused {client} keeps no translation");
                let replies = env.world.nat_out().expect("crs_nat_out");
                assert!(
                    !replies.iter().any(|(k, _)| k.daddr == reply.daddr && k.proto == proto),
                    "{fam:?}: nor one for replies to {client}: {replies:?}"
                );
            }
            let out = env.world_rx(&ext, &ext.inbound(remote(fam), outside, &syn)).expect(
                REDIRECT,
                &[ing(a.n, Forwarded)],
                &format!("{fam:?}: from CID, which a's ingress allows"),
            );
            assert_eq!(out.frame, delivered(remote(fam), &a, 63, &L4::tcp(40400, 80, TCP_SYN)), "{fam:?}: delivered");
            let (_, ct) = env.ct_expect(remote(fam), 40400, me, 80, PROTO_TCP);
            assert_ne!(ct.flags & CT_F_INGRESS_OK, 0, "{fam:?}: checked against a's ingress");
        }
    });
}

#[test]
fn containers_reach_published_ports_through_a_host_address() {
    with_env("hairpin", |env| {
        let a = env.endpoint(1, 1001);
        let b = env.endpoint(2, 1002);
        let c = env.endpoint(3, 1003);
        let d = env.endpoint(4, 1004);
        // Both policies apply, to the connection as it is delivered (a's port 80), with the
        // client's own identity.
        env.allow(a.id, b.id, PD::Ingress, M::Port(PROTO_TCP, 80));
        env.allow(a.id, c.id, PD::Ingress, M::Port(PROTO_TCP, 80));
        env.allow(b.id, a.id, PD::Egress, M::Port(PROTO_TCP, 80));
        env.allow(c.id, Identity::HOST, PD::Egress, M::Port(PROTO_TCP, 8080));
        env.allow(d.id, Identity::ANY, PD::Egress, M::Any);
        for fam in FAMILIES {
            let (me, h) = (a.ip(fam), host_ip(fam));
            env.publish(fam, None, PROTO_TCP, 8080, &a, 80);
            let syn = L4::tcp(40500, 8080, TCP_SYN);
            let out = env.send(&b, &b.tx(h, &syn)).expect(
                REDIRECT,
                &[eg(b.n, Forwarded), ing(a.n, Forwarded)],
                &format!("{fam:?}: b to the published port: delivered into a"),
            );
            assert_eq!(
                out.frame,
                delivered(b.ip(fam), &a, 63, &with_dport(&syn, 80)),
                "{fam:?}: to a's address and port"
            );
            assert_checksums(&out.frame, &checksums_of(fam, PROTO_TCP), "hairpin");
            env.assert_dnat((b.ip(fam), 40500), (h, 8080), (me, 80), PROTO_TCP, b.ifindex, "hairpin");
            let (_, ct) = env.ct_expect(b.ip(fam), 40500, me, 80, PROTO_TCP);
            assert_eq!(ct.flags & (CT_F_EGRESS_OK | CT_F_INGRESS_OK), CT_F_EGRESS_OK | CT_F_INGRESS_OK);

            let synack = L4::tcp(80, 40500, TCP_SYN | TCP_ACK);
            let out = env.send(&a, &a.tx(b.ip(fam), &synack)).expect(
                REDIRECT,
                &[eg(a.n, Forwarded), ing(b.n, Forwarded)],
                &format!("{fam:?}: a's reply, delivered into b"),
            );
            assert_eq!(out.frame, delivered(h, &b, 63, &with_sport(&synack, 8080)), "{fam:?}: from the published port");
            assert_checksums(&out.frame, &checksums_of(fam, PROTO_TCP), "hairpin reply");

            env.send(&c, &c.tx(h, &L4::tcp(40501, 8080, TCP_SYN))).expect(
                DROP,
                &[eg(c.n, PolicyDenied)],
                &format!("{fam:?}: c's egress allows the host's port 8080, not a's port 80"),
            );
            env.send(&d, &d.tx(h, &L4::tcp(40502, 8080, TCP_SYN))).expect(
                DROP,
                &[ing(a.n, PolicyDenied)],
                &format!("{fam:?}: a's ingress does not allow d"),
            );
            for (client, port) in [(c.ip(fam), 40501), (d.ip(fam), 40502)] {
                let (request, reply) =
                    (nat_key(client, port, h, 8080, PROTO_TCP), nat_key(me, 80, client, port, PROTO_TCP));
                assert!(env.nat_in(&request).is_none(), "{fam:?}: refused {client}:{port} keeps no translation");
                assert!(env.nat_out(&reply).is_none(), "{fam:?}: nor one for replies to {client}:{port}");
            }
            let frame = d.tx(h, &L4::tcp(40503, 8081, TCP_SYN));
            let out = env.send(&d, &frame).expect(PASS, &[eg(d.n, Forwarded)], "a port nobody published");
            assert_eq!(out.frame, frame, "{fam:?}: to the host, untouched");
        }
    });
}

#[test]
fn icmp_errors_about_published_port_connections_are_translated_back_and_delivered() {
    with_env("dnaticmp", |env| {
        let a = env.endpoint(1, 1001);
        // No ICMP allowed: the errors pass as related to the connection, or not at all.
        env.allow(a.id, Identity::WORLD, PD::Ingress, M::Port(PROTO_TCP, 80));
        env.allow(a.id, Identity::WORLD, PD::Ingress, M::Port(PROTO_UDP, 53));
        let ext = env.egress(1, true, true);
        for fam in FAMILIES {
            let (me, x, outside, router) = (a.ip(fam), world(fam), ext.ip(fam), world2(fam));
            env.publish(fam, None, PROTO_TCP, 8080, &a, 80);
            env.publish(fam, None, PROTO_UDP, 5353, &a, 53);
            let flows = [
                (L4::tcp(40600, 8080, TCP_SYN), L4::tcp(80, 40600, TCP_SYN | TCP_ACK)),
                (L4::udp(40600, 5353, b"query"), L4::udp(53, 40600, b"a long answer")),
            ];
            for (request, reply) in flows {
                let what = format!("{fam:?} protocol {}", request.proto);
                let (_, published) = l4_ports(&request);
                let (port, _) = l4_ports(&reply);
                env.world_rx(&ext, &ext.inbound(x, outside, &request)).expect(
                    REDIRECT,
                    &[ing(a.n, Forwarded)],
                    &format!("{what}: the request"),
                );
                env.send(&a, &a.tx(x, &reply)).expect(PASS, &[eg(a.n, Forwarded)], &format!("{what}: the reply"));
                // The reply as it left, which the errors quote; and as the endpoint sent it.
                let (_, left) = ip_packet(outside, x, &with_sport(&reply, published));
                let sent = with_source(&left, me, port, reply.proto);
                let errors = [
                    (x, fam.dest_unreach(&left), fam.dest_unreach(&sent), "destination unreachable"),
                    (router, fam.too_big(&left), fam.too_big(&sent), "packet too big / fragmentation needed"),
                    (router, fam.time_exceeded(&left), fam.time_exceeded(&sent), "time exceeded"),
                ];
                for (from, error, back, kind) in errors {
                    let out = env.world_rx(&ext, &ext.inbound(from, outside, &error)).expect(
                        REDIRECT,
                        &[ing(a.n, Forwarded)],
                        &format!("{what}: {kind}"),
                    );
                    assert_eq!(out.frame, delivered(from, &a, 63, &back), "{what}: {kind} translated back");
                    let want: &[&str] = match fam {
                        Fam::V6 => &["ICMPv6"],
                        Fam::V4 => &["IPv4 header", "ICMP", "quoted IPv4 header"],
                    };
                    assert_checksums(&out.frame, want, &format!("{what}: {kind}"));
                }
            }
            // The endpoint's own error about the client's datagram passes as related, but
            // crs_dnat_reply translates TCP and UDP only: the error keeps the endpoint's address
            // and crs_to_world refuses it rather than let that address out.
            let (_, received) = ip_packet(x, me, &L4::udp(40600, 53, b"query"));
            let error = fam.dest_unreach(&received);
            env.send(&a, &a.tx(x, &error)).expect(PASS, &[eg(a.n, Forwarded)], "the endpoint's port unreachable");
            env.world_tx(&ext, &ext.out(me, x, &error)).expect(
                DROP,
                &[eg(a.n, NatUnsupported)],
                &format!("{fam:?}: the endpoint's error never leaves with its address"),
            );
            // An error quoting a packet of no connection to the published port: the host's.
            let (_, quoted) = ip_packet(outside, x, &L4::udp(5353, 40699, b"not a connection"));
            let frame = ext.inbound(x, outside, &fam.dest_unreach(&quoted));
            let out = env.world_rx(&ext, &frame).expect(PASS, &[], "an error about an unknown flow");
            assert_eq!(out.frame, frame, "an error about an unknown flow: untouched");
        }
    });
}

#[test]
fn fragments_on_published_ports_follow_their_first_fragment() {
    with_env("dnatfrag", |env| {
        let a = env.endpoint(1, 1001);
        env.allow(a.id, Identity::WORLD, PD::Ingress, M::Port(PROTO_UDP, 53));
        let ext = env.egress(1, true, true);
        for fam in FAMILIES {
            let (me, x, outside, t) = (a.ip(fam), world(fam), ext.ip(fam), ethertype(fam));
            env.publish(fam, None, PROTO_UDP, 5353, &a, 53);
            let header: &[&str] = if fam == Fam::V4 { &["IPv4 header"] } else { &[] };
            // The client's datagram: the first fragment is translated in full, the later one
            // (no UDP header) in its address, by the mapping the first one made.
            let query = L4::udp(40800, 5353, &[0x5a; 56]);
            let [f1, f2] = datagram(x, outside, 0x3500, 64, &query);
            let [w1, w2] = datagram(x, me, 0x3500, 63, &with_dport(&query, 53));
            let mut arrived = Vec::new();
            for (fragment, want, what) in [(f1, w1, "first fragment"), (f2, w2, "later fragment")] {
                let out = env.world_rx(&ext, &ext.inbound_ip(t, &fragment)).expect(
                    REDIRECT,
                    &[ing(a.n, Forwarded)],
                    &format!("{fam:?} {what}"),
                );
                assert_eq!(out.frame, a.rx_ip(t, &want), "{fam:?} {what}: to the endpoint's address and port");
                assert_checksums(&out.frame, header, what);
                arrived.push(out.frame);
            }
            assert_checksums(&reassemble(&arrived[0], &arrived[1]), &checksums_of(fam, PROTO_UDP), "the datagram");

            // The endpoint's answer, fragmented too, leaves from the published address and port.
            let answer = L4::udp(53, 40800, &[0xa5; 56]);
            let [r1, r2] = datagram(me, x, 0x3501, 64, &answer);
            let [l1, l2] = datagram(outside, x, 0x3501, 64, &with_sport(&answer, 5353));
            let mut left = Vec::new();
            for (fragment, want, what) in [(r1, l1, "first answer fragment"), (r2, l2, "later answer fragment")] {
                let out = env.send(&a, &a.tx_ip(t, &fragment)).expect(
                    PASS,
                    &[eg(a.n, Forwarded)],
                    &format!("{fam:?} {what}"),
                );
                assert_eq!(out.frame, a.tx_ip(t, &want), "{fam:?} {what}: from the published address");
                assert_checksums(&out.frame, header, what);
                left.push(out.frame);
            }
            assert_checksums(&reassemble(&left[0], &left[1]), &checksums_of(fam, PROTO_UDP), "the answer");
            let (_, ct) = env.ct_expect(x, 40800, me, 53, PROTO_UDP);
            assert_eq!(ct.packets, [2, 2], "{fam:?}: all four fragments are the connection's");
        }
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
        let i = env.endpoint(3, 1003);
        env.set_flags(&i, ENDPOINT_F_INTERNAL);
        env.allow_all(i.id);
        env.allow(a.id, CID, PD::Egress, M::Port(PROTO_UDP, 53));
        env.deny(a.id, CID, PD::Egress, M::Port(PROTO_UDP, 54));
        env.allow(a.id, Identity::WORLD, PD::Egress, M::Any);
        // One port, and an egress interface with an IPv4 address only.
        env.nat_ports(NAT_MIN, NAT_MIN);
        let ext = env.egress(1, true, false);
        let (x4, x6) = (world(Fam::V4), world(Fam::V6));
        env.masquerade(&a, &ext, x4, &L4::udp(1000, 53, b""), "the flow holding the port");
        env.send(&a, &a.tx(x4, &L4::udp(1001, 53, b""))).expect(PASS, &[eg(a.n, Forwarded)], "a second flow");

        let x6cid = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
        let stranger = Ep { ifindex: veth(9), ..a };
        let nine = (0..9).fold(Ipv6::new(a.ip6, x6cid), |ip, _| ip.ext(Ext::DstOpts(0)));
        let [_, later] = fragments(Fam::V4, a.ip(Fam::V4), remote(Fam::V4), 0x3001, 1000, 53, [0; 4]);
        let from_a = |frame: Vec<u8>, reason| (PROG_FROM_CONTAINER, a.ifindex, frame, eg(a.n, reason));
        let cases: [(&str, u32, Vec<u8>, Counted); 14] = [
            from_a(a.tx(remote(Fam::V6), &L4::tcp(1, 2, TCP_SYN).truncated(8)), Malformed),
            from_a(a.tx_from(b.ip(Fam::V4), remote(Fam::V4), &L4::udp(1, 53, b"")), SpoofedSource),
            from_a(
                eth(BROADCAST_MAC, a.mac, ETH_P_ARP, &arp(ARP_REQUEST, a.mac, b.ip4, [0; 6], GATEWAY_V4)),
                SpoofedArp,
            ),
            from_a(eth(a.host_mac, a.mac, 0x88b5, &[0; 46]), UnsupportedProtocol),
            (
                PROG_FROM_CONTAINER,
                stranger.ifindex,
                a.tx(remote(Fam::V6), &L4::udp(1, 53, b"")),
                eg(0, UnknownEndpoint),
            ),
            from_a(a.tx(remote(Fam::V6), &L4::udp(1, 55, b"")), PolicyDenied),
            from_a(a.tx(remote(Fam::V6), &L4::udp(1, 54, b"")), PolicyDenyRule),
            from_a(a.tx_ip(ETH_P_IP, &later), FragmentUnknown),
            from_a(a.tx_ip(ETH_P_IPV6, &nine.packet(&L4::udp(1, 53, b""))), ExtHeaders),
            (PROG_FROM_CONTAINER, i.ifindex, i.tx(x4, &L4::udp(1, 53, b"")), eg(i.n, InternalNetwork)),
            (PROG_TO_WORLD, ext.ifindex, ext.out(a.ip(Fam::V4), x4, &L4::udp(1001, 53, b"")), eg(a.n, NatNoPort)),
            (PROG_TO_WORLD, ext.ifindex, ext.out(a.ip(Fam::V6), x6, &L4::udp(1, 53, b"")), eg(a.n, NatNoAddress)),
            (PROG_TO_WORLD, ext.ifindex, ext.out(a.ip(Fam::V4), x4, &sctp(1, 2)), eg(a.n, NatUnsupported)),
            (
                PROG_FROM_WORLD,
                ext.ifindex,
                ext.inbound(x4, a.ip(Fam::V4), &L4::udp(53, 1000, b"")),
                ing(a.n, NotPublished),
            ),
        ];
        let mut produced = BTreeSet::new();
        for (program, ifindex, frame, counted) in cases {
            let reason = counted.1;
            let out = env.run(program, ifindex, &frame).expect(DROP, &[counted], reason.name());
            produced.extend(out.counted.iter().map(|(_, r, _)| *r));
        }
        let every: BTreeSet<_> = DropReason::ALL.into_iter().filter(|r| r.is_drop()).collect();
        assert_eq!(produced, every, "every drop reason but FORWARDED");
    });
}
