//! Endpoints: the persisted record, interface naming, MAC handling and the Join plan (no I/O).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::datapath::EndpointDesired;
use crate::identity::Identity;
use crate::ids::{EndpointId, NetworkId};
use crate::input::quoted;
use crate::ipam::{PoolId, GATEWAY_IPV6};
use crate::labels::Labels;
use crate::ports::PublishedPort;

/// Host-side veth name prefix; the rest is the first 11 hex digits of the endpoint id.
pub const HOST_IFNAME_PREFIX: &str = "lxc";
/// Name of the container-side veth while it waits in the host namespace for dockerd to move it.
pub const PEER_IFNAME_PREFIX: &str = "tmp";
/// dockerd names the interface inside the container `eth<N>`.
pub const CONTAINER_IFNAME_PREFIX: &str = "eth";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: EndpointId,
    pub network: NetworkId,
    /// Daemon-assigned number: the key of the endpoint's counters in the datapath.
    pub number: u32,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// Set when the driver took the IPv6 address itself (dockerd did not ask for one); the
    /// driver releases it with the endpoint.
    pub ipv6_pool: Option<PoolId>,
    pub mac: [u8; 6],
    /// The link-local IPv4 gateway of the endpoint's pool.
    pub gateway_ipv4: Option<Ipv4Addr>,
    /// The link-local IPv6 gateway of the endpoint's pool; records from before gateways were
    /// per pool have none, theirs is `fe80::1` (see `ipv6_gateway`).
    #[serde(default)]
    pub gateway_ipv6: Option<Ipv6Addr>,
    pub created_at: u64,
    pub joined: Option<Joined>,
    /// The endpoint's security identity: init until its labels are known.
    #[serde(default = "init_identity")]
    pub identity: Identity,
    /// The container, once Docker told which one it is.
    #[serde(default)]
    pub container: Option<ContainerRef>,
    /// The labels `identity` was allocated for (empty while init).
    #[serde(default)]
    pub labels: Labels,
    /// From its network (fixed at creation): `--internal`, nothing to or from outside.
    #[serde(default)]
    pub internal: bool,
    /// From its network: what it sends outside leaves with the egress interface's address.
    #[serde(default = "masquerade_by_default")]
    pub masquerade: bool,
    /// Host ports published to it while it is joined (`-p`; the container's first endpoint on
    /// a network that is not internal holds them).
    #[serde(default)]
    pub published: Vec<PublishedPort>,
}

fn masquerade_by_default() -> bool {
    true
}

/// The container an endpoint belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    /// Docker's 64-hex container id.
    pub id: String,
    /// Its name, without Docker's leading `/`.
    pub name: String,
}

fn init_identity() -> Identity {
    Identity::INIT
}

/// What exists in the kernel while the endpoint is joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub sandbox_key: String,
    /// Number shared by all endpoints of one container (the sandbox): the first one's number.
    #[serde(default)]
    pub sandbox: u32,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub mtu: u32,
}

impl Endpoint {
    pub fn host_ifname(&self) -> String {
        host_ifname(&self.id)
    }

    pub fn peer_ifname(&self) -> String {
        peer_ifname(&self.id)
    }

    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ipv6.map(IpAddr::V6).into_iter().chain(self.ipv4.map(IpAddr::V4)).collect()
    }

    /// What the kernel must hold for the endpoint while it is joined (`deliver`) or once it
    /// left; `None` before its veth exists.
    pub fn desired(&self, deliver: bool) -> Option<EndpointDesired> {
        let joined = self.joined.as_ref()?;
        Some(EndpointDesired {
            number: self.number,
            sandbox: joined.sandbox,
            host_ifname: self.host_ifname(),
            host_ifindex: joined.host_ifindex,
            host_mac: joined.host_mac,
            mac: self.mac,
            ipv4: self.ipv4,
            ipv6: self.ipv6,
            gateway_ipv4: self.gateway_ipv4,
            identity: self.identity,
            internal: self.internal,
            masquerade: self.masquerade,
            published: self.published.clone(),
            trace: false,
            deliver,
        })
    }

    /// The IPv6 gateway the endpoint routes through, if it has an IPv6 address.
    pub fn ipv6_gateway(&self) -> Option<Ipv6Addr> {
        self.ipv6.map(|_| self.gateway_ipv6.unwrap_or(GATEWAY_IPV6))
    }

    /// What dockerd must be told at Join: the interface to move, the gateways, the on-link
    /// routes that make them reachable, and a route to each of `subnets` (those of the
    /// endpoint's pools) through its family's gateway, so that the container reaches the
    /// network's other members through this interface whichever network has its default route
    /// (dockerd moves that as networks come and go). `ipv6_gateway_routed` says another
    /// interface of the container has this IPv6 gateway's route already (only networks from
    /// before per-pool gateways share one, `fe80::1`): a second route to the same address
    /// would be refused, and a route through it could land on the other interface.
    pub fn join_plan(&self, ipv6_gateway_routed: bool, subnets: &[IpNet]) -> JoinPlan {
        let gateway_ipv4 = self.ipv4.and(self.gateway_ipv4);
        let gateway_ipv6 = self.ipv6_gateway().filter(|_| !ipv6_gateway_routed);
        JoinPlan {
            src_name: self.peer_ifname(),
            gateway_ipv4,
            gateway_ipv6: self.ipv6_gateway(),
            // Both gateways on-link from the start, each through its own interface: dockerd
            // looks a gateway's route up before it sets the default route, and the kernel adds
            // fe80::/64 only once the interface's operational state is up (linkwatch, late on a
            // busy host) and on every interface alike, so the lookup could pick another network's.
            connected_routes: gateway_ipv4
                .map(IpAddr::V4)
                .into_iter()
                .chain(gateway_ipv6.map(IpAddr::V6))
                .map(IpNet::from)
                .collect(),
            subnet_routes: subnets
                .iter()
                .filter_map(|subnet| match subnet {
                    IpNet::V4(_) => gateway_ipv4.map(|gw| (*subnet, IpAddr::V4(gw))),
                    IpNet::V6(_) => gateway_ipv6.map(|gw| (*subnet, IpAddr::V6(gw))),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinPlan {
    pub src_name: String,
    pub gateway_ipv4: Option<Ipv4Addr>,
    pub gateway_ipv6: Option<Ipv6Addr>,
    /// Routes installed on the container interface with scope link.
    pub connected_routes: Vec<IpNet>,
    /// Routes to the endpoint's subnets, each through a gateway (after `connected_routes`,
    /// which make the gateways reachable).
    pub subnet_routes: Vec<(IpNet, IpAddr)>,
}

pub fn host_ifname(id: &EndpointId) -> String {
    format!("{HOST_IFNAME_PREFIX}{}", &id.as_str()[..11])
}

pub fn peer_ifname(id: &EndpointId) -> String {
    format!("{PEER_IFNAME_PREFIX}{}", &id.as_str()[..11])
}

/// Formats a MAC as dockerd prints it: `02:42:0a:14:00:05`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let mut out = String::with_capacity(17);
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with dashes); refuses multicast MACs and the all-zero one,
/// which cannot be an interface address.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split([':', '-']).collect();
    let bad = || format!("invalid MAC address {}: expected six hex bytes like 02:42:0a:14:00:05", quoted(text));
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(parts) {
        // Two hex digits exactly: from_str_radix alone would take a sign ("+2").
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 == 1 {
        return Err(format!("invalid MAC address {text}: multicast addresses cannot name an interface"));
    }
    if mac == [0; 6] {
        return Err(format!("invalid MAC address {text}: the all-zero address cannot name an interface"));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint {
            id: EndpointId::parse("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").expect("id"),
            network: NetworkId::parse("fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210").expect("id"),
            number: 7,
            ipv4: Some(Ipv4Addr::new(10, 1, 0, 5)),
            ipv6: Some("fdc1:1a00::5".parse().expect("ip")),
            ipv6_pool: None,
            mac: [2, 0x42, 10, 1, 0, 5],
            gateway_ipv4: Some(Ipv4Addr::new(169, 254, 1, 1)),
            gateway_ipv6: Some("fe80::3".parse().expect("ip")),
            created_at: 0,
            joined: None,
            identity: Identity::INIT,
            container: None,
            labels: Labels::new(),
            internal: false,
            masquerade: true,
            published: Vec::new(),
        }
    }

    #[test]
    fn interface_names_fit_ifnamsiz() {
        let ep = endpoint();
        assert_eq!(ep.host_ifname(), "lxc0123456789a");
        assert_eq!(ep.peer_ifname(), "tmp0123456789a");
        assert!(ep.host_ifname().len() <= 15);
    }

    #[test]
    fn join_plan_gives_link_local_gateways_and_the_on_link_route() {
        let nets = |nets: &[&str]| nets.iter().map(|n| n.parse::<IpNet>().expect("net")).collect::<Vec<_>>();
        let subnets = nets(&["10.1.0.0/22", "fdc1:1a00::/64"]);
        let plan = endpoint().join_plan(false, &subnets);
        assert_eq!(plan.gateway_ipv4, Some(Ipv4Addr::new(169, 254, 1, 1)));
        assert_eq!(plan.gateway_ipv6, Some("fe80::3".parse().expect("ip")));
        assert_eq!(plan.connected_routes, nets(&["169.254.1.1/32", "fe80::3/128"]));
        let via = |gw: &str| gw.parse::<IpAddr>().expect("ip");
        assert_eq!(plan.subnet_routes, [(subnets[0], via("169.254.1.1")), (subnets[1], via("fe80::3"))]);
        let mut v6_only = endpoint();
        v6_only.ipv4 = None;
        let plan = v6_only.join_plan(false, &subnets[1..]);
        assert_eq!((plan.gateway_ipv4, plan.connected_routes), (None, nets(&["fe80::3/128"])));
        assert_eq!(plan.subnet_routes, [(subnets[1], via("fe80::3"))]);
        // A record from before per-pool gateways: fe80::1, routed already through another
        // interface of the container; no route through it from here.
        let mut legacy = endpoint();
        legacy.gateway_ipv6 = None;
        let plan = legacy.join_plan(true, &subnets);
        assert_eq!((plan.gateway_ipv6, plan.connected_routes), (Some(GATEWAY_IPV6), nets(&["169.254.1.1/32"])));
        assert_eq!(plan.subnet_routes, [(subnets[0], via("169.254.1.1"))]);
        let mut v4_only = endpoint();
        v4_only.ipv6 = None;
        assert_eq!(v4_only.join_plan(false, &subnets).gateway_ipv6, None);
    }

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let mac = parse_mac("02:42:0A:14:00:05").expect("mac");
        assert_eq!(format_mac(&mac), "02:42:0a:14:00:05");
        assert!(parse_mac("02:42:0a:14:00").is_err());
        assert!(parse_mac("zz:42:0a:14:00:05").is_err());
        assert!(parse_mac("01:00:5e:00:00:01").expect_err("must fail").contains("multicast"));
        assert!(parse_mac("+2:42:0a:14:00:05").is_err(), "a sign is no hex digit");
        assert!(parse_mac("00:00:00:00:00:00").expect_err("must fail").contains("all-zero"));
    }
}
