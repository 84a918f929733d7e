//! The rtnetlink side of the Linux datapath: endpoint veth pairs, their /32 and /128 routes and
//! permanent neighbour entries, and the read-only route queries IPAM uses to pick pools.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::stream::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use rand::Rng;
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

/// Routing protocol number stamped on every route cilium-rs installs (`ip route show proto 193`),
/// so that its routes are recognisable among the host's.
pub const ROUTE_PROTOCOL: u8 = 193;

/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
const MAX_IFNAME_LEN: usize = 15;

/// Failure of a netlink operation, naming the operation and the object it was applied to.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The netlink socket could not be opened.
    #[error("open netlink socket: {source}")]
    Connect {
        #[source]
        source: std::io::Error,
    },
    /// `connect` was called outside a tokio runtime.
    #[error("open netlink socket: no tokio runtime to run the connection on")]
    NoRuntime,
    /// The kernel refused the request with an errno.
    #[error("{op} {object}: {}", errno_text(*.errno))]
    Kernel {
        op: &'static str,
        object: String,
        /// Positive errno value (e.g. `libc::EEXIST`).
        errno: i32,
    },
    /// The request failed without a kernel errno (connection closed, unexpected reply).
    #[error("{op} {object}: {reason}")]
    Netlink { op: &'static str, object: String, reason: String },
    /// An interface name the kernel would reject.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A MAC address that cannot be given to an interface or a neighbour entry.
    #[error("invalid mac address {} for {object}: {reason}", format_mac(.mac))]
    InvalidMac { object: String, mac: [u8; 6], reason: &'static str },
    /// An address that cannot be routed to an endpoint.
    #[error("invalid endpoint address {addr}: {reason}")]
    InvalidAddress { addr: IpAddr, reason: &'static str },
    /// A link the kernel just confirmed creating could not be found afterwards.
    #[error("{op} {object}: link vanished right after it was created")]
    Vanished { op: &'static str, object: String },
}

impl LinkError {
    /// The kernel errno behind this error (positive, e.g. `libc::ENODEV`), if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            LinkError::Kernel { errno, .. } => Some(*errno),
            LinkError::Connect { source } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the kernel said the object already exists (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// True when the kernel said the object (or the device it hangs off) does not exist
    /// (`ENODEV`, `ENOENT` or `ESRCH`).
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ENODEV | libc::ENOENT | libc::ESRCH))
    }
}

/// The errno's description in the house style: "file exists", "no such device".
fn errno_text(errno: i32) -> String {
    let desc = nix::errno::Errno::from_raw(errno).desc();
    let mut chars = desc.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("errno {errno}"),
    }
}

fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Builds the mapper from an rtnetlink error to a [`LinkError`] for `op` on `object`.
fn fail(op: &'static str, object: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let object = object.into();
    move |err| match err {
        rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => {
            LinkError::Kernel { op, object, errno: msg.raw_code().saturating_abs() }
        }
        rtnetlink::Error::RequestFailed => {
            LinkError::Netlink { op, object, reason: "netlink connection closed".to_string() }
        }
        other => LinkError::Netlink { op, object, reason: other.to_string().to_lowercase() },
    }
}

/// The host side of an endpoint's veth (or any link looked up by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLink {
    pub index: u32,
    /// Hardware address; all zero for links without a 6-byte one (e.g. `lo` or a tun device).
    pub mac: [u8; 6],
}

/// A destination prefix of the main routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
    /// Output interface, when the route has one (blackhole or unreachable routes do not).
    pub ifindex: Option<u32>,
}

/// A netlink route socket bound to the network namespace it was opened in.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    /// The kernel runs one dump per netlink socket at a time (a second one gets EBUSY):
    /// dumps of concurrent calls take turns.
    dumps: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace and spawns its
    /// connection task on the current tokio runtime.
    ///
    /// The socket stays in that namespace whichever thread later polls it, so open it on the
    /// thread that is in the wanted namespace; never switch a tokio worker's namespace for it.
    pub fn connect() -> Result<Self, LinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| LinkError::NoRuntime)?;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|source| LinkError::Connect { source })?;
        runtime.spawn(connection);
        Ok(Netlink { handle, dumps: std::sync::Arc::new(tokio::sync::Mutex::new(())) })
    }

    /// Creates the veth pair `host` <-> `peer` in this namespace: both with `mtu`, the peer with
    /// MAC `peer_mac`, the host side brought up (the peer is left down and unconfigured: dockerd
    /// moves it into the container). A leftover link named `host` (from a crash) is deleted
    /// first. Returns the host side's index and MAC. On failure nothing is left behind.
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        mtu: u32,
        peer_mac: [u8; 6],
    ) -> Result<HostLink, LinkError> {
        validate_ifname(host)?;
        validate_ifname(peer)?;
        if host == peer {
            return Err(LinkError::InvalidName {
                name: peer.to_string(),
                reason: "the peer must not have the host side's name",
            });
        }
        if peer_mac[0] & 0x01 != 0 || peer_mac == [0; 6] {
            return Err(LinkError::InvalidMac {
                object: format!("veth peer {peer}"),
                mac: peer_mac,
                reason: "must be a non-zero unicast address",
            });
        }

        if self.delete_link(host).await? {
            tracing::debug!(link = host, "deleted leftover host-side veth");
        }

        let object = format!("veth {host}");
        let peer_message = LinkUnspec::new_with_name(peer).mtu(mtu).address(peer_mac.to_vec()).build();
        let message =
            LinkVeth::new(host, peer).mtu(mtu).up().set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message))).build();
        self.handle.link().add(message).execute().await.map_err(fail("create", object.clone()))?;

        // The pair exists from here on: remove it again if it cannot be reported.
        let found = match self.link_by_name(host).await {
            Ok(Some(link)) => return Ok(link),
            Ok(None) => Err(LinkError::Vanished { op: "create", object }),
            Err(err) => Err(err),
        };
        if let Err(undo) = self.delete_link(host).await {
            tracing::warn!(link = host, error = %undo, "cannot remove half-created veth");
        }
        found
    }

    /// Deletes a link by name; `Ok(false)` when it did not exist (idempotent). Deleting either
    /// end of a veth pair deletes both.
    pub async fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
        validate_ifname(name)?;
        let message = LinkUnspec::new_with_name(name).build();
        match self
            .handle
            .link()
            .del_with_message(message)
            .execute()
            .await
            .map_err(fail("delete", format!("link {name}")))
        {
            Ok(()) => Ok(true),
            Err(err) if err.is_not_found() => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Looks a link up by name; `Ok(None)` when there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<HostLink>, LinkError> {
        validate_ifname(name)?;
        let mut replies = self.handle.link().get().match_name(name).execute();
        match replies.try_next().await.map_err(fail("get", format!("link {name}"))) {
            Ok(Some(message)) => Ok(Some(host_link(&message))),
            Ok(None) => Ok(None),
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// All links whose name starts with `prefix`, with their index, sorted by name (for
    /// leftover scans).
    pub async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<(String, u32)>, LinkError> {
        let _turn = self.dumps.lock().await;
        let messages: Vec<LinkMessage> =
            self.handle.link().get().execute().try_collect().await.map_err(fail("dump", "links"))?;
        let mut links: Vec<(String, u32)> = messages
            .iter()
            .filter_map(|message| {
                let name = link_name(message)?;
                name.starts_with(prefix).then(|| (name.to_string(), message.header.index))
            })
            .collect();
        links.sort();
        Ok(links)
    }

    /// Routes `ip`/32 (or /128) to `ifindex` (scope link, protocol [`ROUTE_PROTOCOL`]) and adds
    /// a permanent neighbour entry `ip` -> `mac` on it. Idempotent: both are replaced when they
    /// exist. If it fails half-way, [`Netlink::remove_endpoint_route`] removes what was added.
    pub async fn add_endpoint_route(&self, ifindex: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), LinkError> {
        validate_endpoint_ip(ip)?;
        if mac[0] & 0x01 != 0 || mac == [0; 6] {
            return Err(LinkError::InvalidMac {
                object: format!("neighbour {ip}"),
                mac,
                reason: "must be a non-zero unicast address",
            });
        }

        let route = endpoint_route(ifindex, ip);
        self.handle.route().add(route).replace().execute().await.map_err(fail("add", route_object(ifindex, ip)))?;

        self.handle
            .neighbours()
            .add(ifindex, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(fail("add", neighbour_object(ifindex, ip)))
    }

    /// Removes the route and neighbour entry [`Netlink::add_endpoint_route`] installed. Either
    /// being absent, or the link being gone, is fine. Both removals are attempted; the first
    /// error is returned.
    pub async fn remove_endpoint_route(&self, ifindex: u32, ip: IpAddr) -> Result<(), LinkError> {
        let route = self
            .handle
            .route()
            .del(endpoint_route(ifindex, ip))
            .execute()
            .await
            .map_err(fail("remove", route_object(ifindex, ip)));

        let mut neighbour = NeighbourMessage::default();
        neighbour.header.family = family_of(ip);
        neighbour.header.ifindex = ifindex;
        neighbour.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
        let neighbour = self
            .handle
            .neighbours()
            .del(neighbour)
            .execute()
            .await
            .map_err(fail("remove", neighbour_object(ifindex, ip)));

        for result in [route, neighbour] {
            match result {
                Err(err) if !err.is_not_found() => return Err(err),
                _ => {}
            }
        }
        Ok(())
    }

    /// Every address configured on the host's interfaces, both families (the host's own
    /// addresses: identity host in policy).
    pub async fn host_addresses(&self) -> Result<Vec<IpAddr>, LinkError> {
        let _turn = self.dumps.lock().await;
        let messages: Vec<AddressMessage> =
            self.handle.address().get().execute().try_collect().await.map_err(fail("dump", "addresses"))?;
        let mut addresses: Vec<IpAddr> = messages
            .iter()
            .flat_map(|m| m.attributes.iter())
            .filter_map(|attr| match attr {
                AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            })
            .collect();
        addresses.sort();
        addresses.dedup();
        Ok(addresses)
    }

    /// Every route of the main table, both families, except default routes (`0.0.0.0/0`,
    /// `::/0`) and link-local or multicast ones (`fe80::/10`, `ff00::/8`, `169.254.0.0/16`,
    /// `224.0.0.0/4`): the prefixes a new pool must not overlap.
    pub async fn routed_prefixes(&self) -> Result<Vec<Prefix>, LinkError> {
        let mut prefixes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for route in self.main_routes(family).await? {
                let Some(addr) = destination(&route) else {
                    continue;
                };
                let len = route.header.destination_prefix_length;
                if len == 0 || is_link_local_or_multicast(addr, len) {
                    continue;
                }
                prefixes.push(Prefix { addr, len, ifindex: output_interface(&route) });
            }
        }
        Ok(prefixes)
    }

    /// MTU of the interface carrying the IPv4 default route (else the IPv6 one), lowered to the
    /// route's own `mtu` metric when it has a smaller one. Among several default routes, the one
    /// with the lowest metric counts. `None` when there is no default route through an interface.
    pub async fn default_route_mtu(&self) -> Result<Option<u32>, LinkError> {
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut defaults: Vec<(u32, u32, Option<u32>)> = self
                .main_routes(family)
                .await?
                .iter()
                .filter(|route| route.header.destination_prefix_length == 0 && route.header.kind == RouteType::Unicast)
                .filter_map(|route| {
                    let ifindex = output_interface(route)?;
                    Some((priority(route), ifindex, route_mtu(route)))
                })
                .collect();
            defaults.sort();
            for (_, ifindex, route_mtu) in defaults {
                let Some(link_mtu) = self.link_mtu(ifindex).await? else {
                    continue;
                };
                return Ok(Some(route_mtu.map_or(link_mtu, |m| m.min(link_mtu))));
            }
        }
        Ok(None)
    }

    /// The interfaces that hold a default route (either family), by index, lowest metric
    /// first.
    pub async fn default_route_links(&self) -> Result<Vec<u32>, LinkError> {
        let mut defaults: Vec<(u32, u32)> = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            defaults.extend(
                self.main_routes(family)
                    .await?
                    .iter()
                    .filter(|r| r.header.destination_prefix_length == 0 && r.header.kind == RouteType::Unicast)
                    .filter_map(|r| Some((priority(r), output_interface(r)?))),
            );
        }
        defaults.sort();
        let mut links: Vec<u32> = Vec::new();
        for (_, index) in defaults {
            if !links.contains(&index) {
                links.push(index);
            }
        }
        Ok(links)
    }

    /// The name of the link with that index; `None` when there is none.
    pub async fn link_name_of(&self, index: u32) -> Result<Option<String>, LinkError> {
        let mut replies = self.handle.link().get().match_index(index).execute();
        match replies.try_next().await.map_err(fail("get", format!("link with index {index}"))) {
            Ok(Some(message)) => Ok(link_name(&message).map(str::to_owned)),
            Ok(None) => Ok(None),
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The first global, usable (not tentative, deprecated or failed) IPv4 and IPv6 address
    /// of a link: what traffic leaving through it is masqueraded to.
    pub async fn link_addresses(&self, index: u32) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), LinkError> {
        let _turn = self.dumps.lock().await;
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(fail("dump", format!("addresses of link {index}")))?;
        let unusable = AddressHeaderFlags::Tentative | AddressHeaderFlags::Deprecated | AddressHeaderFlags::Dadfailed;
        let mut ipv4 = None;
        let mut ipv6 = None;
        for message in messages.iter().filter(|m| m.header.index == index && m.header.scope == AddressScope::Universe) {
            if message.header.flags.intersects(unusable) {
                continue;
            }
            for attr in &message.attributes {
                match attr {
                    AddressAttribute::Local(IpAddr::V4(a)) => {
                        ipv4.get_or_insert(*a);
                    }
                    AddressAttribute::Address(IpAddr::V6(a)) => {
                        ipv6.get_or_insert(*a);
                    }
                    _ => {}
                }
            }
        }
        Ok((ipv4, ipv6))
    }

    /// The routes of the main table of one family.
    async fn main_routes(&self, family: AddressFamily) -> Result<Vec<RouteMessage>, LinkError> {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        let what = if family == AddressFamily::Inet { "ipv4 routes" } else { "ipv6 routes" };
        let _turn = self.dumps.lock().await;
        let routes: Vec<RouteMessage> =
            self.handle.route().get(request).execute().try_collect().await.map_err(fail("dump", what))?;
        Ok(routes.into_iter().filter(|route| table(route) == u32::from(RouteHeader::RT_TABLE_MAIN)).collect())
    }

    /// MTU of the link with that index; `None` when it has gone.
    async fn link_mtu(&self, index: u32) -> Result<Option<u32>, LinkError> {
        let mut replies = self.handle.link().get().match_index(index).execute();
        let message = match replies.try_next().await.map_err(fail("get", format!("link with index {index}"))) {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(None),
            Err(err) if err.is_not_found() => return Ok(None),
            Err(err) => return Err(err),
        };
        Ok(message.attributes.iter().find_map(|attr| match attr {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        }))
    }
}

/// A locally administered unicast MAC address (first byte `xxxxxx10`), random otherwise.
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    rand::rng().fill(&mut mac[..]);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// Rejects names the kernel would refuse (see `dev_valid_name`), before any kernel call.
fn validate_ifname(name: &str) -> Result<(), LinkError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved name")
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0') {
        Some("contains '/', ':', a NUL or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(LinkError::InvalidName { name: name.to_string(), reason }),
        None => Ok(()),
    }
}

fn validate_endpoint_ip(ip: IpAddr) -> Result<(), LinkError> {
    let reason = if ip.is_unspecified() {
        Some("unspecified address")
    } else if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("not a unicast address")
    } else if ip.is_loopback() {
        Some("loopback address")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(LinkError::InvalidAddress { addr: ip, reason }),
        None => Ok(()),
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn host_prefix_len(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn route_object(ifindex: u32, ip: IpAddr) -> String {
    format!("route {ip}/{} on ifindex {ifindex}", host_prefix_len(ip))
}

fn neighbour_object(ifindex: u32, ip: IpAddr) -> String {
    format!("neighbour {ip} on ifindex {ifindex}")
}

/// The host route of one endpoint address, as added and as matched for removal.
fn endpoint_route(ifindex: u32, ip: IpAddr) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .output_interface(ifindex)
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
        .scope(RouteScope::Link);
    // The builder sets the family and the prefix only; it cannot fail for a host prefix.
    let header = &mut builder.get_mut().header;
    header.address_family = family_of(ip);
    header.destination_prefix_length = host_prefix_len(ip);
    let mut message = builder.build();
    message.attributes.push(RouteAttribute::Destination(ip.into()));
    message
}

fn link_name(message: &LinkMessage) -> Option<&str> {
    message.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

fn host_link(message: &LinkMessage) -> HostLink {
    let mac = message
        .attributes
        .iter()
        .find_map(|attr| match attr {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        })
        .unwrap_or([0; 6]);
    HostLink { index: message.header.index, mac }
}

/// The route's table: the `RTA_TABLE` attribute when present (tables above 255), else the
/// header's.
fn table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|attr| match attr {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

fn destination(route: &RouteMessage) -> Option<IpAddr> {
    let from_attr = route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Destination(netlink_packet_route::route::RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(netlink_packet_route::route::RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    });
    // Default routes carry no destination attribute.
    from_attr.or(match route.header.address_family {
        AddressFamily::Inet => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        AddressFamily::Inet6 => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        _ => None,
    })
}

/// The route's output interface, or the first one of a multipath route.
fn output_interface(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Oif(index) => Some(*index),
        RouteAttribute::MultiPath(hops) => hops.iter().map(|hop| hop.interface_index).find(|index| *index != 0),
        _ => None,
    })
}

fn priority(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|attr| match attr {
            RouteAttribute::Priority(priority) => Some(*priority),
            _ => None,
        })
        .unwrap_or(0)
}

/// The route's own `mtu` metric, if set.
fn route_mtu(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Metrics(metrics) => metrics.iter().find_map(|metric| match metric {
            RouteMetric::Mtu(mtu) if *mtu > 0 => Some(*mtu),
            _ => None,
        }),
        _ => None,
    })
}

/// True when the prefix lies inside a link-local or multicast range of its family.
fn is_link_local_or_multicast(addr: IpAddr, len: u8) -> bool {
    let within = |outer: IpAddr, outer_len: u8| len >= outer_len && prefix_contains(outer, outer_len, addr);
    match addr {
        IpAddr::V4(_) => {
            within(IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16) || within(IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 4)
        }
        IpAddr::V6(_) => {
            within(IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10)
                || within(IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)), 8)
        }
    }
}

/// True when `addr` lies in `net`/`len` (same family only).
fn prefix_contains(net: IpAddr, len: u8, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(net), IpAddr::V4(addr)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
            u32::from(net) & mask == u32::from(addr) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(addr)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0);
            u128::from(net) & mask == u128::from(addr) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_mac_is_locally_administered_unicast() {
        for _ in 0..1000 {
            let mac = random_mac();
            assert_eq!(mac[0] & 0x01, 0, "unicast: {mac:02x?}");
            assert_eq!(mac[0] & 0x02, 0x02, "locally administered: {mac:02x?}");
        }
    }

    #[test]
    fn random_mac_is_random() {
        let macs: std::collections::HashSet<[u8; 6]> = (0..100).map(|_| random_mac()).collect();
        assert!(macs.len() > 95, "only {} distinct addresses in 100", macs.len());
    }

    #[test]
    fn netlink_is_shareable() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        fn sendable<T: Send + Sync + 'static>() {}
        shareable::<Netlink>();
        sendable::<LinkError>();
    }

    #[test]
    fn kernel_errors_read_like_the_house_style() {
        let err = fail("create", "veth lxc1a2b3c4d5e6")(rtnetlink::Error::NetlinkError({
            let mut msg = rtnetlink::packet_core::ErrorMessage::default();
            msg.code = std::num::NonZeroI32::new(-libc::EEXIST);
            msg
        }));
        assert_eq!(err.to_string(), "create veth lxc1a2b3c4d5e6: file exists");
        assert!(err.is_exists());
        assert!(!err.is_not_found());
        assert_eq!(err.errno(), Some(libc::EEXIST));

        let gone = LinkError::Kernel { op: "delete", object: "link lxc0".into(), errno: libc::ENODEV };
        assert_eq!(gone.to_string(), "delete link lxc0: no such device");
        assert!(gone.is_not_found());
    }

    #[test]
    fn interface_names_are_validated() {
        for good in ["lxc1a2b3c4d5e6", "a", "tmp1234567890ab", "eth0.100"] {
            assert!(validate_ifname(good).is_ok(), "{good}");
        }
        for bad in ["", "lxc1a2b3c4d5e6f7", ".", "..", "a/b", "a:b", "a b", "a\tb"] {
            assert!(matches!(validate_ifname(bad), Err(LinkError::InvalidName { .. })), "{bad:?}");
        }
    }

    #[test]
    fn endpoint_addresses_are_validated() {
        for good in ["10.251.0.5", "fdc1:1a00:98::5"] {
            assert!(validate_endpoint_ip(good.parse().expect("address")).is_ok(), "{good}");
        }
        for bad in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "127.0.0.1", "::1", "255.255.255.255"] {
            assert!(validate_endpoint_ip(bad.parse().expect("address")).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_routes_are_host_routes_of_our_protocol() {
        let v4 = endpoint_route(7, "10.251.0.5".parse().expect("address"));
        assert_eq!(v4.header.address_family, AddressFamily::Inet);
        assert_eq!(v4.header.destination_prefix_length, 32);
        assert_eq!(v4.header.protocol, RouteProtocol::Other(ROUTE_PROTOCOL));
        assert_eq!(v4.header.scope, RouteScope::Link);
        assert_eq!(v4.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(output_interface(&v4), Some(7));
        assert_eq!(destination(&v4), Some("10.251.0.5".parse().expect("address")));

        let v6 = endpoint_route(9, "fdc1:1a00:98::5".parse().expect("address"));
        assert_eq!(v6.header.address_family, AddressFamily::Inet6);
        assert_eq!(v6.header.destination_prefix_length, 128);
        assert_eq!(output_interface(&v6), Some(9));
    }

    #[test]
    fn link_local_and_multicast_prefixes_are_recognised() {
        let check = |s: &str, len: u8| is_link_local_or_multicast(s.parse().expect("address"), len);
        assert!(check("fe80::", 64));
        assert!(check("ff00::", 8));
        assert!(check("ff02::1", 128));
        assert!(check("169.254.0.0", 16));
        assert!(check("169.254.3.1", 32));
        assert!(check("224.0.0.0", 4));
        assert!(!check("fdc1:1a00:98::", 64));
        assert!(!check("fe00::", 7));
        assert!(!check("10.251.0.0", 24));
        assert!(!check("169.0.0.0", 8));
    }

    #[test]
    fn prefix_containment() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        assert!(prefix_contains(ip("10.0.0.0"), 8, ip("10.1.2.3")));
        assert!(!prefix_contains(ip("10.0.0.0"), 8, ip("11.1.2.3")));
        assert!(prefix_contains(ip("0.0.0.0"), 0, ip("11.1.2.3")));
        assert!(prefix_contains(ip("::"), 0, ip("fdc1::1")));
        assert!(!prefix_contains(ip("::"), 0, ip("10.0.0.1")));
        assert!(prefix_contains(ip("fdc1:1a00:98::"), 64, ip("fdc1:1a00:98::7")));
    }
}
