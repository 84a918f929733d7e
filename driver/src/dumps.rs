//! The kernel maps in readable form (`cilium-rs bpf endpoints|ipcache|policy|ct|nat list`):
//! the datapath's rows with identities resolved to labels and addresses to container names,
//! shared by the daemon and the CLI (no I/O).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use bpf_programs::abi;

use crate::datapath::{CtDump, EndpointRow, NatRow, NatSide, Peer};
use crate::endpoint::format_mac;
use crate::identity::Identity;
use crate::policy::{Direction, IdentityInfo, PolicyEntry, PolicyKey, PROTO_ANY};
use crate::policy::{PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use crate::state::State;

/// What names the daemon knows for numbers and addresses.
#[derive(Debug, Default)]
pub struct Names {
    /// Endpoint addresses (their container's name, else the endpoint's short id) and the
    /// host's own addresses (`host`).
    addresses: HashMap<IpAddr, String>,
    /// By endpoint number: endpoint id, host interface, container name, network name.
    endpoints: HashMap<u32, EndpointNames>,
    identities: BTreeMap<Identity, Vec<String>>,
    /// Names of the endpoints carrying each identity.
    carriers: BTreeMap<Identity, Vec<String>>,
}

#[derive(Debug, Clone, Default)]
struct EndpointNames {
    id: String,
    ifname: String,
    container: Option<String>,
    network: Option<String>,
}

impl Names {
    pub fn new(state: &State, identities: &BTreeMap<Identity, IdentityInfo>, host: &BTreeSet<IpAddr>) -> Names {
        let mut names = Names::default();
        for ip in host {
            names.addresses.insert(*ip, "host".to_owned());
        }
        for ep in state.endpoints.values() {
            let shown = ep.container.as_ref().map_or_else(|| ep.id.short().to_owned(), |c| c.name.clone());
            for ip in ep.addresses() {
                names.addresses.insert(ip, shown.clone());
            }
            names.carriers.entry(ep.identity).or_default().push(shown);
            names.endpoints.insert(
                ep.number,
                EndpointNames {
                    id: ep.id.to_string(),
                    ifname: ep.host_ifname(),
                    container: ep.container.as_ref().map(|c| c.name.clone()),
                    network: state.networks.get(&ep.network).and_then(|n| n.name.clone()),
                },
            );
        }
        for list in names.carriers.values_mut() {
            list.sort();
            list.dedup();
        }
        for (identity, info) in identities {
            names.identities.insert(*identity, info.labels.iter().map(ToString::to_string).collect());
        }
        names
    }

    /// The container (or `host`) an address belongs to.
    pub fn address(&self, ip: IpAddr) -> Option<String> {
        self.addresses.get(&ip).cloned()
    }

    pub fn labels(&self, identity: Identity) -> Vec<String> {
        self.identities.get(&identity).cloned().unwrap_or_default()
    }

    fn carriers(&self, identity: Identity) -> Vec<String> {
        self.carriers.get(&identity).cloned().unwrap_or_default()
    }

    fn peer(&self, (address, port): Peer) -> PeerView {
        PeerView { address: address.to_string(), port, name: self.address(address) }
    }
}

/// One side of a flow, with the container (or `host`) it is when known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub address: String,
    pub port: u16,
    pub name: Option<String>,
}

/// `tcp`, `udp`, `icmp`, … or the number.
pub fn proto_name(proto: u8) -> String {
    match proto {
        PROTO_TCP => "tcp".to_owned(),
        PROTO_UDP => "udp".to_owned(),
        PROTO_SCTP => "sctp".to_owned(),
        PROTO_ICMP => "icmp".to_owned(),
        PROTO_ICMPV6 => "icmpv6".to_owned(),
        other => other.to_string(),
    }
}

/// An entry of crs_endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfEndpointView {
    pub ifindex: u32,
    /// The endpoint number (key of its counters).
    pub number: u32,
    /// The daemon's endpoint with that number, if any.
    pub endpoint: Option<String>,
    pub host_ifname: Option<String>,
    pub container: Option<String>,
    pub network: Option<String>,
    pub sandbox: u32,
    pub identity: u32,
    pub identity_name: String,
    pub labels: Vec<String>,
    pub ipv6: Option<String>,
    pub ipv4: Option<String>,
    pub gateway_ipv4: Option<String>,
    pub mac: String,
    pub host_mac: String,
    /// `internal`, `routed` (not masqueraded), `published`.
    pub flags: Vec<String>,
}

pub fn endpoints(rows: &[EndpointRow], names: &Names) -> Vec<BpfEndpointView> {
    rows.iter()
        .map(|row| {
            let known = names.endpoints.get(&row.number).cloned().unwrap_or_default();
            let flags = [(row.internal, "internal"), (!row.masquerade, "routed"), (row.published, "published")]
                .into_iter()
                .filter(|(set, _)| *set)
                .map(|(_, flag)| flag.to_owned())
                .collect();
            BpfEndpointView {
                ifindex: row.ifindex,
                number: row.number,
                endpoint: Some(known.id).filter(|id| !id.is_empty()),
                host_ifname: Some(known.ifname).filter(|n| !n.is_empty()),
                container: known.container,
                network: known.network,
                sandbox: row.sandbox,
                identity: row.identity.0,
                identity_name: row.identity.name(),
                labels: names.labels(row.identity),
                ipv6: row.ipv6.map(|a| a.to_string()),
                ipv4: row.ipv4.map(|a| a.to_string()),
                gateway_ipv4: row.gateway_ipv4.map(|a| a.to_string()),
                mac: format_mac(&row.mac),
                host_mac: format_mac(&row.host_mac),
                flags,
            }
        })
        .collect()
}

/// An entry of crs_ipcache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcacheView {
    pub prefix: String,
    pub identity: u32,
    pub identity_name: String,
    pub labels: Vec<String>,
    /// The container (or `host`) of a single address.
    pub name: Option<String>,
}

pub fn ipcache(rows: &[(IpNet, Identity)], names: &Names) -> Vec<IpcacheView> {
    rows.iter()
        .map(|(net, identity)| IpcacheView {
            prefix: net.to_string(),
            identity: identity.0,
            identity_name: identity.name(),
            labels: names.labels(*identity),
            name: (net.prefix_len() == net.max_prefix_len()).then(|| names.address(net.addr())).flatten(),
        })
        .collect()
}

/// An entry of crs_policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntryView {
    pub local: u32,
    pub local_name: String,
    pub local_labels: Vec<String>,
    /// Containers carrying the local identity.
    pub local_endpoints: Vec<String>,
    /// 0: any remote identity.
    pub remote: u32,
    pub remote_name: String,
    pub remote_labels: Vec<String>,
    pub remote_endpoints: Vec<String>,
    pub direction: Direction,
    /// `any`, `tcp`, …
    pub proto: String,
    /// `*`, `80`, or a range such as `1024-1087` (for ICMP: the type).
    pub port: String,
    /// `allow` or `deny`.
    pub verdict: String,
    /// The rule that put it there; 0: the endpoint is not enforced (allow-all).
    pub rule: u64,
}

/// The ports a key's prefix covers.
pub fn port_range(key: &PolicyKey) -> String {
    if key.proto == PROTO_ANY || key.port_prefix == 0 {
        return "*".to_owned();
    }
    let bits = u32::from(key.port_prefix.min(16));
    let mask: u16 = if bits == 16 { u16::MAX } else { !(u16::MAX >> bits) };
    let (first, last) = (key.port & mask, key.port | !mask);
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

pub fn policy(rows: &[(PolicyKey, PolicyEntry)], names: &Names) -> Vec<PolicyEntryView> {
    rows.iter()
        .map(|(key, entry)| PolicyEntryView {
            local: key.local.0,
            local_name: key.local.name(),
            local_labels: names.labels(key.local),
            local_endpoints: names.carriers(key.local),
            remote: key.remote.0,
            remote_name: if key.remote == Identity::ANY { "any".to_owned() } else { key.remote.name() },
            remote_labels: names.labels(key.remote),
            remote_endpoints: names.carriers(key.remote),
            direction: key.direction,
            proto: if key.proto == PROTO_ANY { "any".to_owned() } else { proto_name(key.proto) },
            port: port_range(key),
            verdict: if entry.deny { "deny" } else { "allow" }.to_owned(),
            rule: entry.rule,
        })
        .collect()
}

/// An entry of crs_ct, from the flow's initiator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtView {
    pub proto: String,
    pub initiator: PeerView,
    pub responder: PeerView,
    /// The checks it passed: `egress` (the initiator's), `ingress` (the responder's).
    pub allowed: Vec<String>,
    /// `reply-seen`, `closing`.
    pub state: Vec<String>,
    pub revision: u32,
    /// Checked at another revision than the datapath's: checked again at its next packet.
    pub stale: bool,
    /// `[original, reply]`.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub expires_in_ms: i64,
    pub age_ms: u64,
}

/// crs_ct and the revision the datapath enforces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtList {
    pub revision: u32,
    pub entries: Vec<CtView>,
}

fn flags(flags: u32, known: &[(u32, &str)]) -> Vec<String> {
    known.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, name)| (*name).to_owned()).collect()
}

pub fn conntrack(dump: &CtDump, names: &Names) -> CtList {
    let mut entries: Vec<CtView> = dump
        .rows
        .iter()
        .map(|row| CtView {
            proto: proto_name(row.proto),
            initiator: names.peer(row.initiator),
            responder: names.peer(row.responder),
            allowed: flags(row.flags, &[(abi::CT_F_EGRESS_OK, "egress"), (abi::CT_F_INGRESS_OK, "ingress")]),
            state: flags(row.flags, &[(abi::CT_F_SEEN_REPLY, "reply-seen"), (abi::CT_F_CLOSING, "closing")]),
            revision: row.revision,
            stale: row.revision != dump.revision,
            packets: row.packets,
            bytes: row.bytes,
            expires_in_ms: row.expires_in_ms,
            age_ms: row.age_ms,
        })
        .collect();
    entries.sort_by(|a, b| (&a.initiator.address, a.initiator.port).cmp(&(&b.initiator.address, b.initiator.port)));
    CtList { revision: dump.revision, entries }
}

/// An entry of crs_nat_out or crs_nat_in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatView {
    /// `out` (the flow as the endpoint sends it) or `in` (as it arrives from outside).
    pub map: String,
    /// `masquerade` or `published` (a connection to a published port).
    pub kind: String,
    pub proto: String,
    pub source: PeerView,
    pub destination: PeerView,
    /// Out: the source it leaves with; in: the endpoint it goes to.
    pub translated: PeerView,
    pub ifindex: u32,
    pub age_ms: u64,
}

pub fn nat(rows: &[NatRow], names: &Names) -> Vec<NatView> {
    let mut rows: Vec<&NatRow> = rows.iter().collect();
    rows.sort_by_key(|r| (r.side, r.source, r.destination));
    rows.into_iter()
        .map(|row| NatView {
            map: match row.side {
                NatSide::Out => "out",
                NatSide::In => "in",
            }
            .to_owned(),
            kind: if row.published { "published" } else { "masquerade" }.to_owned(),
            proto: proto_name(row.proto),
            source: names.peer(row.source),
            destination: names.peer(row.destination),
            translated: names.peer(row.translated),
            ifindex: row.ifindex,
            age_ms: row.age_ms,
        })
        .collect()
}

/// What `bpf ct flush` removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flushed {
    pub removed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::CtRow;
    use crate::endpoint::{ContainerRef, Endpoint};
    use crate::ids::{EndpointId, NetworkId};
    use crate::labels::Labels;

    const NET: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    fn state() -> State {
        let mut state = State::default();
        let network = NetworkId::parse(NET).expect("id");
        state.networks.insert(
            network.clone(),
            crate::network::Network {
                id: network.clone(),
                ipv4_pools: vec![],
                ipv6_pools: vec![],
                driver_ipv6_pool: None,
                ipv6_enabled: true,
                internal: false,
                masquerade: true,
                mtu: None,
                created_at: 0,
                name: Some("net1".into()),
            },
        );
        for (n, name) in [(1u32, Some("web")), (2, None)] {
            let id = EndpointId::parse(&format!("{n:02x}{}", "e".repeat(62))).expect("id");
            state.endpoints.insert(
                id.clone(),
                Endpoint {
                    id,
                    network: network.clone(),
                    number: n,
                    ipv4: Some(std::net::Ipv4Addr::new(10, 220, 0, n as u8)),
                    ipv6: Some(format!("fdc1::{n}").parse().expect("v6")),
                    ipv6_pool: None,
                    mac: [2, 0, 0, 0, 0, n as u8],
                    gateway_ipv4: None,
                    gateway_ipv6: None,
                    created_at: 0,
                    joined: None,
                    identity: Identity(255 + n),
                    container: name.map(|name| ContainerRef { id: format!("c{n}"), name: name.into() }),
                    labels: Labels::new(),
                    internal: false,
                    masquerade: true,
                    published: vec![],
                },
            );
        }
        state
    }

    fn names() -> Names {
        let labels: Labels = Labels::parse_list("app=web", "container").expect("labels");
        let identities = BTreeMap::from([(Identity(256), IdentityInfo { labels, cidr: None })]);
        Names::new(&state(), &identities, &BTreeSet::from(["192.168.1.5".parse().expect("ip")]))
    }

    #[test]
    fn addresses_resolve_to_containers_endpoints_and_the_host() {
        let names = names();
        assert_eq!(names.address("fdc1::1".parse().expect("ip")).as_deref(), Some("web"));
        assert_eq!(names.address("10.220.0.2".parse().expect("ip")).as_deref(), Some("02eeeeeeeeee"));
        assert_eq!(names.address("192.168.1.5".parse().expect("ip")).as_deref(), Some("host"));
        assert_eq!(names.address("198.51.100.1".parse().expect("ip")), None);

        let rows = [
            ("fdc1::1/128".parse().expect("net"), Identity(256)),
            ("10.0.0.0/8".parse().expect("net"), Identity(1 << 24)),
        ];
        let views = ipcache(&rows, &names);
        assert_eq!(views[0].name.as_deref(), Some("web"));
        assert_eq!(views[0].labels, ["container:app=web"]);
        assert_eq!(views[1].name, None, "a prefix names nobody");
    }

    #[test]
    fn policy_ports_show_the_range_their_prefix_covers() {
        let key = |proto, port, port_prefix| PolicyKey {
            local: Identity(256),
            remote: Identity::ANY,
            direction: Direction::Ingress,
            proto,
            port,
            port_prefix,
        };
        assert_eq!(port_range(&key(PROTO_ANY, 0, 0)), "*");
        assert_eq!(port_range(&key(PROTO_TCP, 80, 16)), "80");
        assert_eq!(port_range(&key(PROTO_TCP, 1024, 10)), "1024-1087");
        assert_eq!(port_range(&key(PROTO_UDP, 0, 0)), "*");
        let views = policy(&[(key(PROTO_TCP, 80, 16), PolicyEntry { deny: true, rule: 3 })], &names());
        let v = &views[0];
        assert_eq!((v.remote_name.as_str(), v.proto.as_str(), v.verdict.as_str(), v.rule), ("any", "tcp", "deny", 3));
        assert_eq!(v.local_endpoints, ["web"]);
    }

    #[test]
    fn conntrack_entries_name_both_sides_and_flag_stale_checks() {
        let row = CtRow {
            proto: PROTO_TCP,
            initiator: ("fdc1::2".parse().expect("ip"), 40000),
            responder: ("fdc1::1".parse().expect("ip"), 80),
            flags: abi::CT_F_EGRESS_OK | abi::CT_F_INGRESS_OK | abi::CT_F_SEEN_REPLY,
            revision: 3,
            packets: [2, 1],
            bytes: [120, 60],
            expires_in_ms: 1000,
            age_ms: 5,
        };
        let list = conntrack(&CtDump { revision: 4, rows: vec![row] }, &names());
        let entry = &list.entries[0];
        assert_eq!(entry.initiator.name.as_deref(), Some("02eeeeeeeeee"));
        assert_eq!(entry.responder.name.as_deref(), Some("web"));
        assert_eq!(entry.allowed, ["egress", "ingress"]);
        assert_eq!(entry.state, ["reply-seen"]);
        assert!(entry.stale);
    }

    #[test]
    fn endpoint_rows_name_their_endpoint() {
        let row = EndpointRow {
            ifindex: 40,
            number: 1,
            sandbox: 1,
            identity: Identity(256),
            ipv6: Some("fdc1::1".parse().expect("v6")),
            ipv4: None,
            gateway_ipv4: None,
            mac: [2, 0, 0, 0, 0, 1],
            host_mac: [2, 0, 0, 0, 0, 2],
            internal: true,
            masquerade: false,
            published: false,
        };
        let views = endpoints(&[row.clone(), EndpointRow { number: 99, ..row }], &names());
        assert_eq!(views[0].container.as_deref(), Some("web"));
        assert_eq!(views[0].network.as_deref(), Some("net1"));
        assert_eq!(views[0].host_ifname.as_deref(), Some("lxc01eeeeeeeee"));
        assert_eq!(views[0].flags, ["internal", "routed"]);
        assert_eq!((views[1].endpoint.as_ref(), views[1].container.as_ref()), (None, None), "a number nobody holds");
    }
}
