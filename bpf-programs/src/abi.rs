//! Rust mirrors of every map key and value of the C datapath, with layout checks.
//!
//! The C side lives in `bpf/lib/*.h` (each map next to its key and value); the contract is
//! `docs/datapath.md`. Change both sides together and bump [`CRS_LAYOUT_VERSION`]
//! whenever a key or value layout changes.

use std::fmt;
use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Version of the pinned map layout; part of the pin path (`<bpf-root>/v<N>/`), so a daemon
/// never reuses maps pinned with another layout.
pub const CRS_LAYOUT_VERSION: u32 = 4;

/// `EndpointInfo::flags`: the endpoint has an IPv4 address.
pub const ENDPOINT_F_IPV4: u32 = 1;
/// `EndpointInfo::flags`: the endpoint has an IPv6 address.
pub const ENDPOINT_F_IPV6: u32 = 2;
/// `EndpointInfo::flags`: its network is `--internal`: nothing to or from outside the host.
pub const ENDPOINT_F_INTERNAL: u32 = 4;
/// `EndpointInfo::flags`: its network is routed: it reaches outside with its own address.
pub const ENDPOINT_F_NO_MASQUERADE: u32 = 8;
/// `EndpointInfo::flags`: ports of the host are published to it.
pub const ENDPOINT_F_PUBLISHED: u32 = 16;
/// Every packet the endpoint sends or receives is a trace event.
pub const ENDPOINT_F_TRACE: u32 = 32;

/// `IpKey::family` of an IPv4 address.
pub const IP_FAMILY_V4: u8 = 4;
/// `IpKey::family` of an IPv6 address.
pub const IP_FAMILY_V6: u8 = 6;

/// Direction: sent by the container.
pub const METRIC_EGRESS: u8 = 1;
/// Direction: delivered to the container.
pub const METRIC_INGRESS: u8 = 2;

/// Endpoint by host-side ifindex: `u32` → [`EndpointInfo`].
pub const MAP_ENDPOINTS: &str = "crs_endpoints";
/// Local endpoint addresses: [`IpKey`] → [`LocalIp`].
pub const MAP_LOCAL_IPS: &str = "crs_local_ips";
/// Per-CPU counters: endpoint number (`u32`) → [`EndpointMetrics`].
pub const MAP_METRICS: &str = "crs_metrics";
/// Address → identity, LPM trie: [`IpcacheKey`] → [`IpcacheValue`].
pub const MAP_IPCACHE: &str = "crs_ipcache";
/// Policy entries, LPM trie: [`PolicyKey`] → [`PolicyValue`].
pub const MAP_POLICY: &str = "crs_policy";
/// One [`DatapathConfig`] at index 0.
pub const MAP_CONFIG: &str = "crs_config";
/// Connection tracking, LRU: [`CtKey`] → [`CtEntry`].
pub const MAP_CT: &str = "crs_ct";
/// Ports of fragmented datagrams, LRU (the daemon never writes it).
pub const MAP_FRAGS: &str = "crs_frags";
/// Egress interfaces: ifindex (`u32`) → [`EgressIface`].
pub const MAP_EGRESS: &str = "crs_egress";
/// Translated flows as endpoints send them, LRU: [`NatKey`] → [`NatEntry`].
pub const MAP_NAT_OUT: &str = "crs_nat_out";
/// Translated flows as they arrive from outside, LRU: [`NatKey`] → [`NatEntry`].
pub const MAP_NAT_IN: &str = "crs_nat_in";
/// Published ports: [`PortKey`] → [`PortTarget`].
pub const MAP_PORTS: &str = "crs_ports";
/// What the socket programs translated, LRU: socket cookie (`u64`) → [`SockRev`].
pub const MAP_SOCK_REV: &str = "crs_sock_rev";
/// Drops, verdicts and traces for the daemon: a ring buffer of [`Event`]s (not pinned: each
/// loaded object has its own).
pub const MAP_EVENTS: &str = "crs_events";
/// Each CPU's event budget and counts: per-CPU array of one [`EventRate`].
pub const MAP_EVENT_RATE: &str = "crs_event_rate";
/// Every pinned map of the datapath object.
pub const MAP_NAMES: [&str; 14] = [
    MAP_ENDPOINTS,
    MAP_LOCAL_IPS,
    MAP_METRICS,
    MAP_IPCACHE,
    MAP_POLICY,
    MAP_CONFIG,
    MAP_CT,
    MAP_FRAGS,
    MAP_EGRESS,
    MAP_NAT_OUT,
    MAP_NAT_IN,
    MAP_PORTS,
    MAP_SOCK_REV,
    MAP_EVENT_RATE,
];

/// `max_entries` of the maps, as declared in the C definitions.
pub const ENDPOINTS_MAX_ENTRIES: u32 = 65_536;
/// `max_entries` of `crs_local_ips`.
pub const LOCAL_IPS_MAX_ENTRIES: u32 = 131_072;
/// `max_entries` of `crs_metrics`: every endpoint and endpoint 0.
pub const METRICS_MAX_ENTRIES: u32 = 65_537;
/// `max_entries` of `crs_ipcache`.
pub const IPCACHE_MAX_ENTRIES: u32 = 262_144;
/// `max_entries` of `crs_policy`.
pub const POLICY_MAX_ENTRIES: u32 = 524_288;
/// `max_entries` of `crs_ct`.
pub const CT_MAX_ENTRIES: u32 = 262_144;
/// `max_entries` of `crs_egress`.
pub const EGRESS_MAX_ENTRIES: u32 = 64;
/// `max_entries` of `crs_nat_out` and of `crs_nat_in`.
pub const NAT_MAX_ENTRIES: u32 = 262_144;
/// `max_entries` of `crs_ports`.
pub const PORTS_MAX_ENTRIES: u32 = 16_384;
/// Ports a new flow tries before it is dropped as `NAT_NO_PORT`.
pub const NAT_PORT_TRIES: u32 = 32;
/// Drop-reason slots per direction in [`EndpointMetrics`].
pub const METRICS_REASONS: usize = 32;

/// Reserved identities (as `bpf/lib/common.h`).
pub const IDENTITY_ANY: u32 = 0;
pub const IDENTITY_HOST: u32 = 1;
pub const IDENTITY_WORLD: u32 = 2;
pub const IDENTITY_INIT: u32 = 5;

/// Bits of a policy key's data that the identities and direction take.
pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
/// Bits of a policy key's data: identities, direction, protocol, port.
pub const POLICY_PREFIX_FULL: u32 = 96;
/// `PolicyValue::flags`: the entry denies.
pub const POLICY_F_DENY: u8 = 1;
/// Bits of an ipcache key's data before the address (family and padding).
pub const IPCACHE_PREFIX_HEAD: u32 = 32;

/// `CtEntry::flags` (see `bpf/lib/conntrack.h`).
pub const CT_F_INITIATOR_HI: u32 = 0x01;
pub const CT_F_EGRESS_OK: u32 = 0x02;
pub const CT_F_INGRESS_OK: u32 = 0x04;
pub const CT_F_SEEN_REPLY: u32 = 0x08;
pub const CT_F_CLOSING: u32 = 0x40;

/// `EgressIface::flags`: `ipv4` is set.
pub const EGRESS_F_IPV4: u32 = 1;
/// `EgressIface::flags`: `ipv6` is set.
pub const EGRESS_F_IPV6: u32 = 2;
/// `NatEntry::flags`: masquerading of a flow an endpoint opened.
pub const NAT_F_SNAT: u8 = 1;
/// `NatEntry::flags`: a connection to a published port.
pub const NAT_F_DNAT: u8 = 2;

/// Program attached to tc ingress of the host-side veth (packets the container sends).
pub const PROG_FROM_CONTAINER: &str = "crs_from_container";
/// Program attached to tc egress of the host-side veth (packets to the container).
pub const PROG_TO_CONTAINER: &str = "crs_to_container";
/// Program attached to tc ingress of an egress interface (packets from outside).
pub const PROG_FROM_WORLD: &str = "crs_from_world";
/// Program attached to tc egress of an egress interface (packets leaving the host).
pub const PROG_TO_WORLD: &str = "crs_to_world";
/// The socket programs, attached to the root cgroup: the host's own connections to published
/// ports (program name, and the name of its pin under `links/`).
pub const SOCK_PROGRAMS: [&str; 8] = [
    "crs_connect4",
    "crs_connect6",
    "crs_sendmsg4",
    "crs_sendmsg6",
    "crs_recvmsg4",
    "crs_recvmsg6",
    "crs_getpeername4",
    "crs_getpeername6",
];

/// Value of `crs_endpoints` (C `struct endpoint_info`, 48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    /// Daemon-assigned endpoint number; the key of `crs_metrics`.
    pub endpoint_id: u32,
    /// [`ENDPOINT_F_IPV4`] | [`ENDPOINT_F_IPV6`].
    pub flags: u32,
    /// The endpoint's IPv6 address (network order).
    pub ipv6: [u8; 16],
    /// The endpoint's IPv4 address (network order, C `__be32`).
    pub ipv4: [u8; 4],
    /// The endpoint's link-local IPv4 gateway (network order, C `__be32`).
    pub gateway_ipv4: [u8; 4],
    /// Container-side MAC.
    pub mac: [u8; 6],
    /// Host-side MAC.
    pub host_mac: [u8; 6],
    /// The container the endpoint belongs to; every endpoint of one container shares it.
    pub sandbox_id: u32,
    /// The endpoint's security identity.
    pub identity: u32,
    /// Always zero.
    pub pad: u32,
}

impl EndpointInfo {
    /// An endpoint without addresses; add them with [`Self::with_ipv6`] and [`Self::with_ipv4`].
    pub const fn new(endpoint_id: u32, mac: [u8; 6], host_mac: [u8; 6]) -> Self {
        Self {
            endpoint_id,
            flags: 0,
            ipv6: [0; 16],
            ipv4: [0; 4],
            gateway_ipv4: [0; 4],
            mac,
            host_mac,
            sandbox_id: endpoint_id,
            identity: IDENTITY_INIT,
            pad: 0,
        }
    }

    /// Sets the endpoint's security identity (it starts as init).
    pub const fn with_identity(mut self, identity: u32) -> Self {
        self.identity = identity;
        self
    }

    /// Puts the endpoint into a container with other endpoints (by default it is alone in one
    /// numbered like itself); the container's addresses are then valid sources on each of them.
    pub const fn in_sandbox(mut self, sandbox_id: u32) -> Self {
        self.sandbox_id = sandbox_id;
        self
    }

    /// Sets the endpoint's IPv6 address (its gateway, `fe80::<n>`, is answered by pattern).
    pub const fn with_ipv6(mut self, addr: Ipv6Addr) -> Self {
        self.ipv6 = addr.octets();
        self.flags |= ENDPOINT_F_IPV6;
        self
    }

    /// Sets the endpoint's IPv4 address and its link-local gateway.
    pub const fn with_ipv4(mut self, addr: Ipv4Addr, gateway: Ipv4Addr) -> Self {
        self.ipv4 = addr.octets();
        self.gateway_ipv4 = gateway.octets();
        self.flags |= ENDPOINT_F_IPV4;
        self
    }

    /// The IPv6 address, when the endpoint has one.
    pub const fn ipv6_addr(&self) -> Option<Ipv6Addr> {
        if self.flags & ENDPOINT_F_IPV6 != 0 {
            Some(Ipv6Addr::from_octets(self.ipv6))
        } else {
            None
        }
    }

    /// The IPv4 address and gateway, when the endpoint has them.
    pub const fn ipv4_addr(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        if self.flags & ENDPOINT_F_IPV4 != 0 {
            Some((Ipv4Addr::from_octets(self.ipv4), Ipv4Addr::from_octets(self.gateway_ipv4)))
        } else {
            None
        }
    }
}

/// Key of `crs_local_ips` (C `struct ip_key`, 20 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpKey {
    /// [`IP_FAMILY_V4`] or [`IP_FAMILY_V6`].
    pub family: u8,
    /// Always zero.
    pub pad: [u8; 3],
    /// The address in network order; IPv4 in the first 4 bytes, the rest zero.
    pub addr: [u8; 16],
}

impl IpKey {
    /// The address this key stands for; `None` for an unknown family.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.family {
            IP_FAMILY_V4 => {
                let [a, b, c, d, ..] = self.addr;
                Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
            }
            IP_FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(self.addr))),
            _ => None,
        }
    }
}

impl From<Ipv4Addr> for IpKey {
    fn from(ip: Ipv4Addr) -> Self {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&ip.octets());
        Self { family: IP_FAMILY_V4, pad: [0; 3], addr }
    }
}

impl From<Ipv6Addr> for IpKey {
    fn from(ip: Ipv6Addr) -> Self {
        Self { family: IP_FAMILY_V6, pad: [0; 3], addr: ip.octets() }
    }
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => v4.into(),
            IpAddr::V6(v6) => v6.into(),
        }
    }
}

/// Value of `crs_local_ips` (C `struct local_ip`, 12 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocalIp {
    /// Host-side ifindex of the endpoint holding the address.
    pub ifindex: u32,
    /// The endpoint holding the address.
    pub endpoint_id: u32,
    /// The container holding the address.
    pub sandbox_id: u32,
}

impl LocalIp {
    /// The address belongs to endpoint `endpoint_id` behind host-side interface `ifindex`.
    pub const fn new(ifindex: u32, endpoint_id: u32) -> Self {
        Self { ifindex, endpoint_id, sandbox_id: endpoint_id }
    }

    /// The endpoint belongs to container `sandbox_id` (see [`EndpointInfo::in_sandbox`]).
    pub const fn in_sandbox(mut self, sandbox_id: u32) -> Self {
        self.sandbox_id = sandbox_id;
        self
    }
}

/// Packets and bytes (C `struct traffic`, 16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Traffic {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted (whole frames, as the program saw them).
    pub bytes: u64,
}

impl std::ops::AddAssign for Traffic {
    fn add_assign(&mut self, other: Self) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

/// Value of `crs_metrics`, per CPU, keyed by endpoint number (C `struct endpoint_metrics`,
/// 1056 bytes): forwarded and dropped traffic of one endpoint each way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointMetrics {
    /// `[dir - 1]`: forwarded egress, forwarded ingress.
    pub forwarded: [Traffic; 2],
    /// `[dir - 1][reason]`: dropped, by [`DropReason`].
    pub dropped: [[Traffic; METRICS_REASONS]; 2],
}

impl EndpointMetrics {
    /// The counter of `reason` (forwarded when `Forwarded`) in direction `dir`.
    pub fn get(&self, reason: DropReason, dir: Direction) -> Traffic {
        let d = dir as usize - 1;
        match reason {
            DropReason::Forwarded => self.forwarded[d],
            reason => self.dropped[d][reason as usize],
        }
    }

    /// Adds another CPU's counters.
    pub fn add(&mut self, other: &Self) {
        for (mine, theirs) in self.forwarded.iter_mut().zip(other.forwarded) {
            *mine += theirs;
        }
        for (mine, theirs) in self.dropped.iter_mut().zip(other.dropped) {
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m += t;
            }
        }
    }
}

/// Data of a `crs_ipcache` key (C `struct ipcache_key` without its leading `prefixlen`; aya's
/// [`aya::maps::lpm_trie::Key`] adds it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpcacheData {
    /// [`IP_FAMILY_V4`] or [`IP_FAMILY_V6`].
    pub family: u8,
    /// Always zero.
    pub pad: [u8; 3],
    /// The address in network order; IPv4 in the first 4 bytes, the rest zero.
    pub addr: [u8; 16],
}

impl IpcacheData {
    /// The LPM key of a prefix of `net`.
    pub fn key(net: ipnet::IpNet) -> aya::maps::lpm_trie::Key<IpcacheData> {
        let IpKey { family, addr, .. } = IpKey::from(net.network());
        aya::maps::lpm_trie::Key::new(
            IPCACHE_PREFIX_HEAD + u32::from(net.prefix_len()),
            IpcacheData { family, pad: [0; 3], addr },
        )
    }
}

/// Value of `crs_ipcache` (C `struct ipcache_value`, 8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheValue {
    /// The security identity of the addresses under the prefix.
    pub identity: u32,
    /// Always zero.
    pub flags: u32,
}

/// Data of a `crs_policy` key (C `struct policy_key` without its leading `prefixlen`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyData {
    /// The local endpoint's identity.
    pub local_identity: u32,
    /// The peer's identity; [`IDENTITY_ANY`] matches every peer.
    pub remote_identity: u32,
    /// [`METRIC_EGRESS`] or [`METRIC_INGRESS`].
    pub dir: u8,
    /// IP protocol number; any protocol with a prefix of [`POLICY_PREFIX_ANY_PROTO`] bits.
    pub proto: u8,
    /// Destination port (or ICMP type) in network order, matched by the prefix.
    pub port: [u8; 2],
}

/// Value of `crs_policy` (C `struct policy_value`, 8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// [`POLICY_F_DENY`].
    pub flags: u8,
    /// Always zero.
    pub pad: [u8; 3],
    /// The rule that put the entry there (0 = no rule: the endpoint is not enforced).
    pub rule: u32,
}

/// Value of `crs_config` at index 0 (C `struct datapath_config`, 32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DatapathConfig {
    /// Connection-tracking entries checked at another revision are checked again.
    pub policy_revision: u32,
    /// Always zero.
    pub flags: u32,
    /// First source port (and ICMP echo id) masquerading hands out; 0 until configured.
    pub nat_port_min: u16,
    /// Last one, inclusive.
    pub nat_port_max: u16,
    /// Always zero.
    pub pad: u32,
    /// The host's network namespace (`SO_NETNS_COOKIE`): the socket programs translate only
    /// its sockets. 0 until configured.
    pub host_netns_cookie: u64,
    /// Per CPU, one event every `event_interval_ns` after a burst of `event_burst`; 0: none.
    pub event_interval_ns: u32,
    pub event_burst: u32,
}

/// [`Event::kind`]: a dropped packet.
pub const EVENT_DROP: u8 = 1;
/// [`Event::kind`]: the policy verdict of a flow's check (its first packet, or the first one
/// after a change of policy).
pub const EVENT_VERDICT: u8 = 2;
/// [`Event::kind`]: a packet of a traced endpoint ([`ENDPOINT_F_TRACE`]).
pub const EVENT_TRACE: u8 = 3;
/// [`Event::point`] of a trace: sent by the endpoint.
pub const TRACE_FROM_ENDPOINT: u8 = 1;
/// [`Event::point`] of a trace: on its way into the endpoint.
pub const TRACE_TO_ENDPOINT: u8 = 2;
/// [`Event::point`] bits of a verdict: the sender's egress policy was checked.
pub const VERDICT_EGRESS: u8 = 1;
/// [`Event::point`] bits of a verdict: the receiver's ingress policy was checked.
pub const VERDICT_INGRESS: u8 = 2;
/// Bytes of the packet an event carries at most (from its Ethernet header).
pub const EVENT_SAMPLE: usize = 128;

/// One record of `crs_events` (C `struct event`, 168 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub time: u64,
    /// `EVENT_*`.
    pub kind: u8,
    /// Drop reason ([`DropReason`]); a verdict's: `Forwarded` or the policy drop reason.
    pub reason: u8,
    /// [`Direction`] as a number; 0 when not known.
    pub dir: u8,
    /// Trace: `TRACE_*`; verdict: `VERDICT_*` bits.
    pub point: u8,
    /// 0 when not known.
    pub endpoint_id: u32,
    /// 0 when not known.
    pub src_identity: u32,
    pub dst_identity: u32,
    /// The deny rule of a `PolicyDenyRule` verdict.
    pub rule: u32,
    /// The interface the program ran on.
    pub ifindex: u32,
    /// The packet's length.
    pub len: u32,
    /// Bytes of `sample` that hold the start of the packet.
    pub sample_len: u16,
    pub pad: u16,
    pub sample: [u8; EVENT_SAMPLE],
}

impl Event {
    /// Reads a ring-buffer record; `None` when it is not one (too short).
    pub fn from_bytes(bytes: &[u8]) -> Option<Event> {
        if bytes.len() < size_of::<Event>() {
            return None;
        }
        // SAFETY: `Event` is `repr(C)` plain old data for which every bit pattern is valid,
        // and `bytes` holds at least `size_of::<Event>()` bytes; the read is unaligned.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
    }

    /// The packet bytes the event carries.
    pub fn packet(&self) -> &[u8] {
        &self.sample[..usize::from(self.sample_len).min(EVENT_SAMPLE)]
    }
}

/// Value of `crs_event_rate` (C `struct event_rate`, 24 bytes), one per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventRate {
    /// When this CPU's next event is due (CLOCK_MONOTONIC ns).
    pub next: u64,
    /// Events written to the ring.
    pub emitted: u64,
    /// Events the rate limit or a full ring kept back.
    pub suppressed: u64,
}

/// Key of `crs_ports` (C `struct port_key`, 20 bytes): a published address (all zero: any
/// address of the host), protocol and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub family: u8,
    pub proto: u8,
    /// Network order.
    pub port: [u8; 2],
    pub addr: [u8; 16],
}

/// Value of `crs_ports` (C `struct port_target`, 24 bytes): the endpoint behind a published
/// port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortTarget {
    /// The endpoint's address of the key's family (as in [`IpKey`]).
    pub addr: [u8; 16],
    /// Network order.
    pub port: [u8; 2],
    pub pad: u16,
    pub endpoint_id: u32,
}

/// Value of `crs_sock_rev` (C `struct sock_rev`, 40 bytes): what the socket programs turned a
/// socket's destination from and into.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRev {
    pub published: [u8; 16],
    pub target: [u8; 16],
    pub published_port: [u8; 2],
    pub target_port: [u8; 2],
    pub family: u8,
    pub pad: [u8; 3],
}

/// Value of `crs_egress` (C `struct egress_iface`, 24 bytes): the addresses endpoints leave an
/// egress interface with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EgressIface {
    /// [`EGRESS_F_IPV4`] | [`EGRESS_F_IPV6`]: which addresses are set.
    pub flags: u32,
    /// Network order (C `__be32`).
    pub ipv4: [u8; 4],
    pub ipv6: [u8; 16],
}

impl EgressIface {
    pub fn new(ipv4: Option<Ipv4Addr>, ipv6: Option<Ipv6Addr>) -> Self {
        Self {
            flags: ipv4.map_or(0, |_| EGRESS_F_IPV4) | ipv6.map_or(0, |_| EGRESS_F_IPV6),
            ipv4: ipv4.map_or([0; 4], |a| a.octets()),
            ipv6: ipv6.map_or([0; 16], |a| a.octets()),
        }
    }

    pub fn ipv4_addr(&self) -> Option<Ipv4Addr> {
        (self.flags & EGRESS_F_IPV4 != 0).then(|| Ipv4Addr::from(self.ipv4))
    }

    pub fn ipv6_addr(&self) -> Option<Ipv6Addr> {
        (self.flags & EGRESS_F_IPV6 != 0).then(|| Ipv6Addr::from(self.ipv6))
    }
}

/// Key of `crs_nat_out` and `crs_nat_in` (C `struct nat_key`, 40 bytes): one direction of a
/// translated flow. Addresses as in [`IpKey`]; ports in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NatKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub family: u8,
    pub proto: u8,
    pub pad: u16,
}

impl NatKey {
    /// Source address, port, destination address, port (`None` for an unknown family).
    pub fn endpoints(&self) -> Option<((IpAddr, u16), (IpAddr, u16))> {
        let ip = |addr: &[u8; 16]| IpKey { family: self.family, pad: [0; 3], addr: *addr }.ip();
        Some(((ip(&self.saddr)?, u16::from_be_bytes(self.sport)), (ip(&self.daddr)?, u16::from_be_bytes(self.dport))))
    }
}

/// Value of `crs_nat_out` and `crs_nat_in` (C `struct nat_entry`, 32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatEntry {
    /// Out: the source the flow leaves with; in: the endpoint's address (as in [`IpKey`]).
    pub addr: [u8; 16],
    /// Network order.
    pub port: [u8; 2],
    /// `NAT_F_*`.
    pub flags: u8,
    pub pad: u8,
    /// The egress interface of the mapping.
    pub ifindex: u32,
    /// `bpf_ktime_get_coarse_ns()` at creation.
    pub created: u64,
}

/// Key of `crs_ct` (C `struct ct_key`, 40 bytes): a flow's addresses and ports in canonical
/// order, the same for both directions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub addr_lo: [u8; 16],
    pub addr_hi: [u8; 16],
    /// Network order.
    pub port_lo: [u8; 2],
    /// Network order.
    pub port_hi: [u8; 2],
    pub family: u8,
    pub proto: u8,
    pub pad: u16,
}

/// Value of `crs_ct` (C `struct ct_entry`, 56 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtEntry {
    /// Deadline in `CLOCK_MONOTONIC` (coarse) nanoseconds.
    pub expires: u64,
    pub created: u64,
    /// `[original, reply]`.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// The policy revision the flags were checked at.
    pub revision: u32,
    /// `CT_F_*`.
    pub flags: u32,
}

/// Direction of a counter or a policy key, seen from the container.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Sent by the container ([`METRIC_EGRESS`]).
    Egress = METRIC_EGRESS,
    /// Delivered to the container ([`METRIC_INGRESS`]).
    Ingress = METRIC_INGRESS,
}

impl Direction {
    /// The direction with this numeric value.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            METRIC_EGRESS => Some(Self::Egress),
            METRIC_INGRESS => Some(Self::Ingress),
            _ => None,
        }
    }

    /// "egress" or "ingress".
    pub const fn name(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a packet was counted (C `enum drop_reason` in `bpf/lib/drop.h`); 0 is not a drop.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Not a drop: the packet was passed or delivered.
    Forwarded = 0,
    /// Truncated or invalid headers.
    Malformed = 1,
    /// IP source address is not the endpoint's.
    SpoofedSource = 2,
    /// ARP sender address is not the endpoint's.
    SpoofedArp = 3,
    /// Ethertype other than IPv4, IPv6 or ARP.
    UnsupportedProtocol = 4,
    /// The program ran on an interface the daemon does not know.
    UnknownEndpoint = 5,
    /// No rule allows the flow (default deny).
    PolicyDenied = 6,
    /// A deny rule matches the flow.
    PolicyDenyRule = 7,
    /// A non-first fragment whose first fragment was not seen.
    FragmentUnknown = 8,
    /// More IPv6 extension headers than the datapath parses.
    ExtHeaders = 9,
    /// To or from outside the host, on an `--internal` network.
    InternalNetwork = 10,
    /// Every port of the NAT range is taken for this remote address, port and protocol.
    NatNoPort = 11,
    /// The egress interface has no address of the packet's family to masquerade to.
    NatNoAddress = 12,
    /// A protocol masquerading cannot translate (not TCP, UDP or ICMP echo).
    NatUnsupported = 13,
    /// From outside to a masqueraded endpoint's own address: only replies and published
    /// ports reach it.
    NotPublished = 14,
}

impl DropReason {
    /// Every reason, in numeric order.
    pub const ALL: [Self; 15] = [
        Self::Forwarded,
        Self::Malformed,
        Self::SpoofedSource,
        Self::SpoofedArp,
        Self::UnsupportedProtocol,
        Self::UnknownEndpoint,
        Self::PolicyDenied,
        Self::PolicyDenyRule,
        Self::FragmentUnknown,
        Self::ExtHeaders,
        Self::InternalNetwork,
        Self::NatNoPort,
        Self::NatNoAddress,
        Self::NatUnsupported,
        Self::NotPublished,
    ];

    /// The reason with this numeric value.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Forwarded),
            1 => Some(Self::Malformed),
            2 => Some(Self::SpoofedSource),
            3 => Some(Self::SpoofedArp),
            4 => Some(Self::UnsupportedProtocol),
            5 => Some(Self::UnknownEndpoint),
            6 => Some(Self::PolicyDenied),
            7 => Some(Self::PolicyDenyRule),
            8 => Some(Self::FragmentUnknown),
            9 => Some(Self::ExtHeaders),
            10 => Some(Self::InternalNetwork),
            11 => Some(Self::NatNoPort),
            12 => Some(Self::NatNoAddress),
            13 => Some(Self::NatUnsupported),
            14 => Some(Self::NotPublished),
            _ => None,
        }
    }

    /// The name used in docs/datapath.md and printed by the CLI, e.g. `SPOOFED_SOURCE`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Forwarded => "FORWARDED",
            Self::Malformed => "MALFORMED",
            Self::SpoofedSource => "SPOOFED_SOURCE",
            Self::SpoofedArp => "SPOOFED_ARP",
            Self::UnsupportedProtocol => "UNSUPPORTED_PROTOCOL",
            Self::UnknownEndpoint => "UNKNOWN_ENDPOINT",
            Self::PolicyDenied => "POLICY_DENIED",
            Self::PolicyDenyRule => "POLICY_DENY_RULE",
            Self::FragmentUnknown => "FRAGMENT_UNKNOWN",
            Self::ExtHeaders => "EXT_HEADERS",
            Self::InternalNetwork => "INTERNAL_NETWORK",
            Self::NatNoPort => "NAT_NO_PORT",
            Self::NatNoAddress => "NAT_NO_ADDRESS",
            Self::NatUnsupported => "NAT_UNSUPPORTED",
            Self::NotPublished => "NOT_PUBLISHED",
        }
    }

    /// Whether the packet was dropped (every reason but [`DropReason::Forwarded`]).
    pub const fn is_drop(self) -> bool {
        !matches!(self, Self::Forwarded)
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// SAFETY: `repr(C)` with only integer and byte-array fields and no implicit padding (size and
// offsets asserted below), so every bit pattern is a valid value and no byte is uninitialised.
unsafe impl aya::Pod for EndpointInfo {}
// SAFETY: as above: `repr(C)`, integer fields only, explicit `pad`, layout asserted below.
unsafe impl aya::Pod for IpKey {}
// SAFETY: as above: `repr(C)`, three `u32`s, layout asserted below.
unsafe impl aya::Pod for LocalIp {}
// SAFETY: as above: `repr(C)`, arrays of pairs of `u64`s, layout asserted below.
unsafe impl aya::Pod for EndpointMetrics {}
// SAFETY: as above: `repr(C)`, integer fields only, explicit `pad`, layout asserted below.
unsafe impl aya::Pod for IpcacheData {}
// SAFETY: as above: `repr(C)`, two `u32`s, layout asserted below.
unsafe impl aya::Pod for IpcacheValue {}
// SAFETY: as above: `repr(C)`, integer fields only, no implicit padding, layout asserted below.
unsafe impl aya::Pod for PolicyData {}
// SAFETY: as above: `repr(C)`, integer fields only, explicit `pad`, layout asserted below.
unsafe impl aya::Pod for PolicyValue {}
// SAFETY: as above: `repr(C)`, integer fields only, explicit `pad`, layout asserted below.
unsafe impl aya::Pod for DatapathConfig {}
// SAFETY: as above: `repr(C)`, a `u32` and byte arrays, layout asserted below.
unsafe impl aya::Pod for EgressIface {}
// SAFETY: as above: `repr(C)`, byte arrays and integers, explicit `pad`, layout asserted below.
unsafe impl aya::Pod for NatKey {}
// SAFETY: as above: `repr(C)`, byte arrays and integers, explicit `pad`, layout asserted below.
unsafe impl aya::Pod for NatEntry {}
// SAFETY: as above: `repr(C)`, bytes and byte arrays, layout asserted below.
unsafe impl aya::Pod for PortKey {}
// SAFETY: as above: `repr(C)`, byte arrays and integers, explicit `pad`, layout asserted below.
unsafe impl aya::Pod for PortTarget {}
// SAFETY: as above: `repr(C)`, byte arrays, explicit `pad`, layout asserted below.
unsafe impl aya::Pod for SockRev {}
// SAFETY: as above: `repr(C)`, byte arrays and integers, explicit `pad`, layout asserted below.
unsafe impl aya::Pod for CtKey {}
// SAFETY: as above: `repr(C)`, `u64`s then two `u32`s, layout asserted below.
unsafe impl aya::Pod for CtEntry {}
// SAFETY: as above: `repr(C)`, three `u64`s, layout asserted below.
unsafe impl aya::Pod for EventRate {}

// The C layout, field by field (docs/datapath.md, "Maps").
const _: () = assert!(size_of::<EndpointInfo>() == 56);
const _: () = assert!(offset_of!(EndpointInfo, endpoint_id) == 0);
const _: () = assert!(offset_of!(EndpointInfo, flags) == 4);
const _: () = assert!(offset_of!(EndpointInfo, ipv6) == 8);
const _: () = assert!(offset_of!(EndpointInfo, ipv4) == 24);
const _: () = assert!(offset_of!(EndpointInfo, gateway_ipv4) == 28);
const _: () = assert!(offset_of!(EndpointInfo, mac) == 32);
const _: () = assert!(offset_of!(EndpointInfo, host_mac) == 38);
const _: () = assert!(offset_of!(EndpointInfo, sandbox_id) == 44);
const _: () = assert!(offset_of!(EndpointInfo, identity) == 48);

const _: () = assert!(size_of::<IpKey>() == 20);
const _: () = assert!(offset_of!(IpKey, family) == 0);
const _: () = assert!(offset_of!(IpKey, pad) == 1);
const _: () = assert!(offset_of!(IpKey, addr) == 4);

const _: () = assert!(size_of::<LocalIp>() == 12);
const _: () = assert!(offset_of!(LocalIp, ifindex) == 0);
const _: () = assert!(offset_of!(LocalIp, endpoint_id) == 4);
const _: () = assert!(offset_of!(LocalIp, sandbox_id) == 8);

const _: () = assert!(size_of::<EndpointMetrics>() == 1056);
const _: () = assert!(offset_of!(EndpointMetrics, dropped) == 32);

const _: () = assert!(size_of::<aya::maps::lpm_trie::Key<IpcacheData>>() == 24);
const _: () = assert!(offset_of!(IpcacheData, addr) == 4);
const _: () = assert!(size_of::<IpcacheValue>() == 8);

const _: () = assert!(size_of::<aya::maps::lpm_trie::Key<PolicyData>>() == 16);
const _: () = assert!(offset_of!(PolicyData, remote_identity) == 4);
const _: () = assert!(offset_of!(PolicyData, dir) == 8);
const _: () = assert!(offset_of!(PolicyData, proto) == 9);
const _: () = assert!(offset_of!(PolicyData, port) == 10);
const _: () = assert!(size_of::<PolicyValue>() == 8);
const _: () = assert!(offset_of!(PolicyValue, rule) == 4);

const _: () = assert!(size_of::<DatapathConfig>() == 32);
const _: () = assert!(offset_of!(DatapathConfig, host_netns_cookie) == 16);
const _: () = assert!(offset_of!(DatapathConfig, event_interval_ns) == 24);
const _: () = assert!(offset_of!(DatapathConfig, event_burst) == 28);

const _: () = assert!(size_of::<Event>() == 168);
const _: () = assert!(offset_of!(Event, kind) == 8);
const _: () = assert!(offset_of!(Event, endpoint_id) == 12);
const _: () = assert!(offset_of!(Event, src_identity) == 16);
const _: () = assert!(offset_of!(Event, rule) == 24);
const _: () = assert!(offset_of!(Event, ifindex) == 28);
const _: () = assert!(offset_of!(Event, len) == 32);
const _: () = assert!(offset_of!(Event, sample_len) == 36);
const _: () = assert!(offset_of!(Event, sample) == 40);
const _: () = assert!(size_of::<EventRate>() == 24);
const _: () = assert!(offset_of!(EventRate, suppressed) == 16);

const _: () = assert!(size_of::<PortKey>() == 20);
const _: () = assert!(offset_of!(PortKey, port) == 2);
const _: () = assert!(offset_of!(PortKey, addr) == 4);
const _: () = assert!(size_of::<PortTarget>() == 24);
const _: () = assert!(offset_of!(PortTarget, port) == 16);
const _: () = assert!(offset_of!(PortTarget, endpoint_id) == 20);
const _: () = assert!(size_of::<SockRev>() == 40);
const _: () = assert!(offset_of!(SockRev, published_port) == 32);
const _: () = assert!(offset_of!(SockRev, family) == 36);
const _: () = assert!(offset_of!(DatapathConfig, nat_port_min) == 8);
const _: () = assert!(offset_of!(DatapathConfig, nat_port_max) == 10);

const _: () = assert!(size_of::<EgressIface>() == 24);
const _: () = assert!(offset_of!(EgressIface, ipv4) == 4);
const _: () = assert!(offset_of!(EgressIface, ipv6) == 8);

const _: () = assert!(size_of::<NatKey>() == 40);
const _: () = assert!(offset_of!(NatKey, sport) == 32);
const _: () = assert!(offset_of!(NatKey, dport) == 34);
const _: () = assert!(offset_of!(NatKey, family) == 36);
const _: () = assert!(offset_of!(NatKey, proto) == 37);
const _: () = assert!(size_of::<NatEntry>() == 32);
const _: () = assert!(offset_of!(NatEntry, port) == 16);
const _: () = assert!(offset_of!(NatEntry, flags) == 18);
const _: () = assert!(offset_of!(NatEntry, ifindex) == 20);
const _: () = assert!(offset_of!(NatEntry, created) == 24);

const _: () = assert!(size_of::<CtKey>() == 40);
const _: () = assert!(offset_of!(CtKey, port_lo) == 32);
const _: () = assert!(offset_of!(CtKey, family) == 36);
const _: () = assert!(size_of::<CtEntry>() == 56);
const _: () = assert!(offset_of!(CtEntry, revision) == 48);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_round_trip_with_their_numbers_and_names() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as u8 as usize, i);
            assert_eq!(DropReason::from_u8(i as u8), Some(*reason));
            assert_eq!(reason.to_string(), reason.name());
        }
        assert_eq!(DropReason::from_u8(15), None);
        assert_eq!(DropReason::SpoofedSource.name(), "SPOOFED_SOURCE");
        assert!(!DropReason::Forwarded.is_drop());
        assert!(DropReason::UnknownEndpoint.is_drop());
    }

    #[test]
    fn ip_keys_put_ipv4_in_the_first_four_bytes() {
        let v4: IpKey = IpAddr::from(Ipv4Addr::new(10, 250, 0, 2)).into();
        assert_eq!(v4.family, IP_FAMILY_V4);
        assert_eq!(v4.addr, [10, 250, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(v4.ip(), Some(IpAddr::V4(Ipv4Addr::new(10, 250, 0, 2))));

        let addr: Ipv6Addr = "fdc1:1a00:99::2".parse().expect("valid address");
        let v6 = IpKey::from(IpAddr::V6(addr));
        assert_eq!(v6.family, IP_FAMILY_V6);
        assert_eq!(v6.addr, addr.octets());
        assert_eq!(v6.ip(), Some(IpAddr::V6(addr)));
        assert_eq!(IpKey::default().ip(), None);
    }

    #[test]
    fn endpoint_info_sets_flags_with_addresses() {
        let v6: Ipv6Addr = "fdc1:1a00:99::2".parse().expect("valid address");
        let info = EndpointInfo::new(7, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        assert_eq!(info.flags, 0);
        assert_eq!(info.ipv6_addr(), None);
        let info = info.with_ipv6(v6).with_ipv4(Ipv4Addr::new(10, 250, 0, 2), Ipv4Addr::new(169, 254, 1, 1));
        assert_eq!(info.flags, ENDPOINT_F_IPV4 | ENDPOINT_F_IPV6);
        assert_eq!(info.ipv6_addr(), Some(v6));
        assert_eq!(info.ipv4_addr(), Some((Ipv4Addr::new(10, 250, 0, 2), Ipv4Addr::new(169, 254, 1, 1))));
        assert_eq!(info.ipv4, [10, 250, 0, 2]);
    }

    #[test]
    fn endpoint_metrics_sum_and_index_by_reason_and_direction() {
        let mut one = EndpointMetrics::default();
        one.forwarded[0] = Traffic { packets: 1, bytes: 100 };
        one.dropped[1][DropReason::PolicyDenied as usize] = Traffic { packets: 2, bytes: 50 };
        let mut sum = one;
        sum.add(&one);
        assert_eq!(sum.get(DropReason::Forwarded, Direction::Egress), Traffic { packets: 2, bytes: 200 });
        assert_eq!(sum.get(DropReason::PolicyDenied, Direction::Ingress), Traffic { packets: 4, bytes: 100 });
        assert_eq!(sum.get(DropReason::PolicyDenied, Direction::Egress), Traffic::default());
        assert!(DropReason::ALL.iter().all(|r| (*r as usize) < METRICS_REASONS));
    }

    #[test]
    fn ipcache_keys_count_the_family_head() {
        let key = IpcacheData::key("10.1.0.0/16".parse().expect("net"));
        assert_eq!(key.prefix_len(), 48);
        assert_eq!(key.data().family, IP_FAMILY_V4);
        assert_eq!(key.data().addr[..4], [10, 1, 0, 0]);
        let key = IpcacheData::key("fdc1::5/128".parse().expect("net"));
        assert_eq!((key.prefix_len(), key.data().family), (160, IP_FAMILY_V6));
    }
}
