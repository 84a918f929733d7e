//! IP address management: pools, their link-local gateways and address allocation (no I/O).
//!
//! Pools are handed to dockerd (`RequestPool`) or taken by the driver itself (the IPv6 pool of a
//! network created without `--ipv6`). Endpoint addresses are host routes (/32 and /128), so every
//! address of a subnet but the network address (and the IPv4 broadcast address) is usable, and
//! gateways live outside the subnets, distinct per pool so a container on several networks gets
//! distinct on-link routes: one `fe80::<n>` (n in 1..=0xffff) per IPv6 pool, one `169.254.0.0/16`
//! address per IPv4 pool.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::input::quoted;

/// Address space reported to dockerd for local-scope networks.
pub const LOCAL_ADDRESS_SPACE: &str = "CiliumRsLocal";
/// Address space reported to dockerd for global-scope networks (unused by a local driver).
pub const GLOBAL_ADDRESS_SPACE: &str = "CiliumRsGlobal";
/// The first IPv6 gateway, and every endpoint's before gateways were per pool: link-local like
/// all of them (`fe80::<n>`, n in 1..=0xffff), answered by the datapath on each veth.
pub const GATEWAY_IPV6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Whether `addr` is a gateway as pools get them: `fe80::<n>` (n in 1..=0xffff) or an address of
/// 169.254.0.0/16.
pub fn is_link_local_gateway(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => {
            let s = a.segments();
            s[0] == 0xfe80 && s[1..7].iter().all(|x| *x == 0) && s[7] != 0
        }
    }
}

/// Cloud metadata address: never handed out as a gateway.
const METADATA_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Opaque pool identifier handed to dockerd: the subnet plus a serial that is never reused, so
/// a late, repeated release of an old pool can never free a newer pool with the same subnet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PoolId(pub String);

impl PoolId {
    /// A pool id as this daemon hands them out (`<subnet>@<serial>`); anything else never named
    /// one of its pools, and is refused before it reaches a lookup or a message.
    pub fn parse(text: &str) -> Result<PoolId, String> {
        let well_formed = text.rsplit_once('@').is_some_and(|(subnet, serial)| {
            (1..=20).contains(&serial.len())
                && serial.bytes().all(|b| b.is_ascii_digit())
                && subnet.parse::<IpNet>().is_ok()
        });
        if !well_formed {
            return Err(format!(
                "invalid pool id {}: expected <subnet>@<serial> as cilium-rs hands them out, e.g. 10.220.0.0/22@1",
                quoted(text)
            ));
        }
        Ok(PoolId(text.to_owned()))
    }
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where automatically chosen subnets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    pub ipv4_range: Ipv4Net,
    pub ipv4_prefix: u8,
    pub ipv6_range: Ipv6Net,
    pub ipv6_prefix: u8,
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            ipv4_range: Ipv4Net::new(Ipv4Addr::new(10, 220, 0, 0), 16).unwrap_or_default(),
            ipv4_prefix: 22,
            ipv6_range: Ipv6Net::new(Ipv6Addr::new(0xfdc1, 0x1a00, 0, 0, 0, 0, 0, 0), 48).unwrap_or_default(),
            ipv6_prefix: 64,
        }
    }
}

impl IpamConfig {
    /// Checks that the ranges can hold at least one subnet of the configured size.
    pub fn validate(&self) -> Result<(), IpamError> {
        if self.ipv4_prefix < self.ipv4_range.prefix_len() || self.ipv4_prefix > 30 {
            return Err(IpamError::BadConfig(format!(
                "--ipv4-pool-prefix {} must lie between the prefix of --ipv4-pool-range {} and 30",
                self.ipv4_prefix, self.ipv4_range
            )));
        }
        if self.ipv6_prefix < self.ipv6_range.prefix_len() || self.ipv6_prefix > 126 {
            return Err(IpamError::BadConfig(format!(
                "--ipv6-pool-prefix {} must lie between the prefix of --ipv6-pool-range {} and 126",
                self.ipv6_prefix, self.ipv6_range
            )));
        }
        Ok(())
    }
}

/// Why an address is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocationKind {
    /// Reserved as the network's gateway (`--gateway`); never handed to an endpoint.
    Gateway,
    /// Requested by dockerd for an endpoint or an auxiliary address.
    Address,
    /// Taken by the driver itself for an endpoint (IPv6 without `--ipv6`).
    Driver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub kind: AllocationKind,
    /// Unix seconds, used by reconciliation to leave fresh allocations alone.
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub id: PoolId,
    pub subnet: IpNet,
    /// `--ip-range`: where addresses without a preference come from.
    pub range: Option<IpNet>,
    /// Link-local gateway of the endpoints using this pool.
    pub gateway: IpAddr,
    /// The user chose the subnet (`--subnet`).
    pub explicit: bool,
    /// Taken by the driver itself rather than by dockerd.
    pub internal: bool,
    pub created_at: u64,
    pub allocations: BTreeMap<IpAddr, Allocation>,
    /// Offset of the next address to try, so released addresses are not reused at once.
    pub cursor: u128,
    /// Rebuilt by `state recover` under a new id: dockerd's calls, which carry the id it was
    /// created under, find it by its subnet.
    #[serde(default)]
    pub recovered: bool,
}

/// What dockerd (or the driver) asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolRequest {
    pub v6: bool,
    pub subnet: Option<IpNet>,
    pub range: Option<IpNet>,
    pub internal: bool,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("invalid configuration: {0}")]
    BadConfig(String),
    #[error("--subnet {subnet} is an IPv{} subnet but dockerd asked for an IPv{} pool", family(.subnet), if *.v6 { 6 } else { 4 })]
    FamilyMismatch { subnet: IpNet, v6: bool },
    #[error("--subnet {subnet} is too small: endpoints need at least a /{max} (IPv4) or /126 (IPv6)", max = 30)]
    SubnetTooSmall { subnet: IpNet },
    #[error("--subnet {subnet} overlaps {existing}, which is already in use")]
    SubnetInUse { subnet: IpNet, existing: IpNet },
    #[error("--ip-range {range} needs a --subnet")]
    RangeWithoutSubnet { range: IpNet },
    #[error("--ip-range {range} is not inside --subnet {subnet}")]
    RangeOutsideSubnet { range: IpNet, subnet: IpNet },
    #[error(
        "no free IPv{family} subnet left in {range} (/{prefix} each): pass --subnet or widen the daemon's pool range"
    )]
    NoFreeSubnet { family: u8, range: IpNet, prefix: u8 },
    #[error("no free link-local {} gateway left", if *v6 { "IPv6 (fe80::1 to fe80::ffff)" } else { "IPv4 (169.254.0.0/16)" })]
    NoFreeGateway { v6: bool },
    #[error("unknown pool {0}")]
    UnknownPool(PoolId),
    #[error("address {addr} is outside pool {subnet}")]
    OutsidePool { addr: IpAddr, subnet: IpNet },
    #[error("address {addr} is the {what} of pool {subnet} and cannot be assigned")]
    Reserved { addr: IpAddr, subnet: IpNet, what: &'static str },
    #[error("address {addr} is already in use in pool {subnet}")]
    InUse { addr: IpAddr, subnet: IpNet },
    #[error("pool {subnet} has no free addresses left")]
    Exhausted { subnet: IpNet },
}

fn family(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => 4,
        IpNet::V6(_) => 6,
    }
}

/// All pools and their allocations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ipam {
    pub pools: BTreeMap<PoolId, Pool>,
    pub next_serial: u64,
}

impl Ipam {
    /// Creates a pool: the requested subnet, or the first free one of the configured range that
    /// overlaps neither another pool nor anything in `avoid` (host routes, nameservers).
    pub fn request_pool(
        &mut self,
        config: &IpamConfig,
        request: &PoolRequest,
        avoid: &[IpNet],
        now: u64,
    ) -> Result<&Pool, IpamError> {
        let (subnet, explicit) = match request.subnet {
            Some(subnet) => {
                let subnet = subnet.trunc();
                if matches!(subnet, IpNet::V6(_)) != request.v6 {
                    return Err(IpamError::FamilyMismatch { subnet, v6: request.v6 });
                }
                let too_small = match subnet {
                    IpNet::V4(n) => n.prefix_len() > 30,
                    IpNet::V6(n) => n.prefix_len() > 126,
                };
                if too_small {
                    return Err(IpamError::SubnetTooSmall { subnet });
                }
                if let Some(existing) = self.pools.values().find(|p| overlaps(&p.subnet, &subnet)) {
                    return Err(IpamError::SubnetInUse { subnet, existing: existing.subnet });
                }
                (subnet, true)
            }
            None => (self.free_subnet(config, request.v6, avoid)?, false),
        };
        let range = match request.range {
            None => None,
            Some(range) if !explicit => return Err(IpamError::RangeWithoutSubnet { range }),
            Some(range) => {
                let range = range.trunc();
                if !subnet.contains(&range.network()) || range.prefix_len() < subnet.prefix_len() {
                    return Err(IpamError::RangeOutsideSubnet { range, subnet });
                }
                Some(range)
            }
        };
        let gateway = self.free_gateway(request.v6)?;
        self.next_serial += 1;
        let id = PoolId(format!("{subnet}@{}", self.next_serial));
        let pool = Pool {
            id: id.clone(),
            subnet,
            range,
            gateway,
            explicit,
            internal: request.internal,
            created_at: now,
            allocations: BTreeMap::new(),
            cursor: 0,
            recovered: false,
        };
        Ok(self.pools.entry(id).or_insert(pool))
    }

    /// The live pool dockerd means by `id`: that pool, or the pool `state recover` rebuilt
    /// under a new id for the same subnet (`<subnet>@<serial>`). Only rebuilt pools are found by
    /// subnet: a late release of an old id never frees the pool of a newer network.
    fn resolve(&self, id: &PoolId) -> Option<PoolId> {
        if self.pools.contains_key(id) {
            return Some(id.clone());
        }
        let subnet = id.0.split_once('@')?.0;
        let rebuilt = |p: &&Pool| p.recovered && p.id.0.split_once('@').is_some_and(|(s, _)| s == subnet);
        self.pools.values().find(rebuilt).map(|p| p.id.clone())
    }

    /// Removes a pool. Unknown pools are fine: dockerd repeats releases.
    pub fn release_pool(&mut self, id: &PoolId) -> Option<Pool> {
        let id = self.resolve(id)?;
        self.pools.remove(&id)
    }

    pub fn pool(&self, id: &PoolId) -> Result<&Pool, IpamError> {
        self.resolve(id).and_then(|id| self.pools.get(&id)).ok_or_else(|| IpamError::UnknownPool(id.clone()))
    }

    /// The live pool with exactly this subnet (subnets of live pools never overlap).
    pub fn pool_by_subnet(&self, subnet: &IpNet) -> Option<&Pool> {
        let subnet = subnet.trunc();
        self.pools.values().find(|p| p.subnet == subnet)
    }

    /// The pool holding `addr`, if any.
    pub fn pool_containing(&self, addr: IpAddr) -> Option<&Pool> {
        self.pools.values().find(|p| p.subnet.contains(&addr))
    }

    /// Takes `preferred`, or the next free address of the pool's range (or subnet).
    pub fn request_address(
        &mut self,
        id: &PoolId,
        preferred: Option<IpAddr>,
        kind: AllocationKind,
        now: u64,
    ) -> Result<IpAddr, IpamError> {
        let pool = self.resolve(id).and_then(|id| self.pools.get_mut(&id));
        let pool = pool.ok_or_else(|| IpamError::UnknownPool(id.clone()))?;
        let addr = match preferred {
            Some(addr) => {
                pool.check_assignable(addr)?;
                if pool.allocations.contains_key(&addr) {
                    return Err(IpamError::InUse { addr, subnet: pool.subnet });
                }
                addr
            }
            None => pool.next_free()?,
        };
        pool.allocations.insert(addr, Allocation { kind, at: now });
        Ok(addr)
    }

    /// Frees an address. Unknown pools and free addresses are fine (dockerd repeats releases);
    /// an address outside the pool is an error. Returns whether something was freed.
    pub fn release_address(&mut self, id: &PoolId, addr: IpAddr) -> Result<bool, IpamError> {
        let Some(pool) = self.resolve(id).and_then(|id| self.pools.get_mut(&id)) else { return Ok(false) };
        if addr == pool.gateway {
            // dockerd releases the gateway it got from RequestPool's Data too; it is not held.
            return Ok(false);
        }
        if !pool.subnet.contains(&addr) {
            return Err(IpamError::OutsidePool { addr, subnet: pool.subnet });
        }
        Ok(pool.allocations.remove(&addr).is_some())
    }

    fn free_subnet(&self, config: &IpamConfig, v6: bool, avoid: &[IpNet]) -> Result<IpNet, IpamError> {
        let taken = |candidate: &IpNet| {
            self.pools.values().any(|p| overlaps(&p.subnet, candidate)) || avoid.iter().any(|a| overlaps(a, candidate))
        };
        let (range, prefix) = if v6 {
            (IpNet::V6(config.ipv6_range), config.ipv6_prefix)
        } else {
            (IpNet::V4(config.ipv4_range), config.ipv4_prefix)
        };
        let none_free = IpamError::NoFreeSubnet { family: family(&range), range, prefix };
        let mut candidates = range.subnets(prefix).map_err(|_| none_free.clone())?;
        candidates.find(|c| !taken(c)).ok_or(none_free)
    }

    /// The lowest gateway no pool uses: `fe80::<n>` (n in 1..=0xffff, the datapath answers
    /// for each) for IPv6, 169.254.x.y (x, y in 1..=254) for IPv4.
    pub fn free_gateway(&self, v6: bool) -> Result<IpAddr, IpamError> {
        let used: std::collections::BTreeSet<IpAddr> = self.pools.values().map(|p| p.gateway).collect();
        let mut candidates: Box<dyn Iterator<Item = IpAddr>> = if v6 {
            Box::new((1..=0xffffu16).map(|n| IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n))))
        } else {
            Box::new(
                (1..=254u8)
                    .flat_map(|x| (1..=254u8).map(move |y| Ipv4Addr::new(169, 254, x, y)))
                    .filter(|gw| *gw != METADATA_IPV4)
                    .map(IpAddr::V4),
            )
        };
        candidates.find(|gw| !used.contains(gw)).ok_or(IpamError::NoFreeGateway { v6 })
    }
}

impl Pool {
    pub fn is_v6(&self) -> bool {
        matches!(self.subnet, IpNet::V6(_))
    }

    /// Number of addresses held.
    pub fn used(&self) -> usize {
        self.allocations.len()
    }

    fn check_assignable(&self, addr: IpAddr) -> Result<(), IpamError> {
        if !self.subnet.contains(&addr) {
            return Err(IpamError::OutsidePool { addr, subnet: self.subnet });
        }
        let offset = offset_in(&self.subnet, addr);
        if offset == 0 {
            return Err(IpamError::Reserved { addr, subnet: self.subnet, what: "network address" });
        }
        if !self.is_v6() && offset == size_of(&self.subnet) - 1 {
            return Err(IpamError::Reserved { addr, subnet: self.subnet, what: "broadcast address" });
        }
        Ok(())
    }

    /// Offsets (inclusive) that dynamic allocation may use.
    fn dynamic_bounds(&self) -> (u128, u128) {
        let size = size_of(&self.subnet);
        let (mut lo, mut hi) = (1, if self.is_v6() { size - 1 } else { size - 2 });
        if let Some(range) = self.range {
            let start = offset_in(&self.subnet, range.network());
            lo = lo.max(start);
            hi = hi.min(start + size_of(&range) - 1);
        }
        (lo, hi)
    }

    fn next_free(&mut self) -> Result<IpAddr, IpamError> {
        let (lo, hi) = self.dynamic_bounds();
        let exhausted = IpamError::Exhausted { subnet: self.subnet };
        if lo > hi {
            return Err(exhausted);
        }
        let held = self.allocations.range(addr_at(&self.subnet, lo)..=addr_at(&self.subnet, hi)).count() as u128;
        if held > hi - lo {
            return Err(exhausted);
        }
        let mut offset = if (lo..=hi).contains(&self.cursor) { self.cursor } else { lo };
        // Among held + 1 consecutive candidates at least one is free.
        for _ in 0..=held {
            let addr = addr_at(&self.subnet, offset);
            offset = if offset == hi { lo } else { offset + 1 };
            if !self.allocations.contains_key(&addr) {
                self.cursor = offset;
                return Ok(addr);
            }
        }
        Err(exhausted)
    }
}

/// Whether two prefixes share any address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn size_of(net: &IpNet) -> u128 {
    1u128 << (net.max_prefix_len() - net.prefix_len())
}

fn offset_in(net: &IpNet, addr: IpAddr) -> u128 {
    to_u128(addr).wrapping_sub(to_u128(net.network()))
}

fn addr_at(net: &IpNet, offset: u128) -> IpAddr {
    match net {
        IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from((u32::from(n.network()) as u128 + offset) as u32)),
        IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + offset)),
    }
}

fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Parses a CIDR the way users type it, with messages that say what is wrong
/// ("invalid --subnet fd5c::/129: prefix length over 128").
pub fn parse_cidr(text: &str, what: &str) -> Result<IpNet, String> {
    let shown = quoted(text);
    let Some((addr, len)) = text.split_once('/') else {
        return Err(format!("invalid {what} {shown}: expected address/prefix-length"));
    };
    let addr: IpAddr =
        addr.parse().map_err(|_| format!("invalid {what} {shown}: {} is not an IP address", quoted(addr)))?;
    let len: u8 = len.parse().map_err(|_| format!("invalid {what} {shown}: {} is not a prefix length", quoted(len)))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("invalid {what} {text}: prefix length over {max}"));
    }
    IpNet::new(addr, len).map_err(|e| format!("invalid {what} {text}: {e}"))
}

/// Parses a bare address ("10.1.0.5", no mask).
pub fn parse_addr(text: &str, what: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|_| format!("invalid {what} {}: not an IP address", quoted(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test cidr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    fn v4(subnet: Option<&str>, range: Option<&str>) -> PoolRequest {
        PoolRequest { v6: false, subnet: subnet.map(net), range: range.map(net), internal: false }
    }

    fn v6(subnet: Option<&str>) -> PoolRequest {
        PoolRequest { v6: true, subnet: subnet.map(net), range: None, internal: false }
    }

    #[test]
    fn pool_ids_are_what_request_pool_hands_out() {
        for id in ["10.220.0.0/22@1", "fdc1:1a00::/64@18446744073709551615", "10.78.0.0/24@12"] {
            assert_eq!(PoolId::parse(id).expect(id).0, id);
        }
        for bad in [
            "",
            "nope",
            "10.0.0.0/24",
            "10.0.0.0/24@",
            "10.0.0.0/24@x",
            "../../etc/passwd@1",
            "10.0.0.0/33@1",
            "a@1",
            "10.0.0.0/24@1;rm -rf /",
            "10.0.0.0/24@+1",
        ] {
            let err = PoolId::parse(bad).expect_err(bad);
            assert!(err.starts_with("invalid pool id "), "{err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn auto_pools_skip_host_routes_existing_pools_and_differ_on_re_request() {
        let cfg = IpamConfig::default();
        let mut ipam = Ipam::default();
        let avoid = [net("10.220.0.0/23"), net("10.220.4.1/32")];
        let first = ipam.request_pool(&cfg, &v4(None, None), &avoid, 1).expect("pool").subnet;
        assert_eq!(first, net("10.220.8.0/22"));
        // dockerd's overlap loop re-requests while holding the first: it must get another one.
        let second = ipam.request_pool(&cfg, &v4(None, None), &avoid, 1).expect("pool").subnet;
        assert_eq!(second, net("10.220.12.0/22"));
        let six = ipam.request_pool(&cfg, &v6(None), &[net("fdc1:1a00::/64")], 1).expect("pool").subnet;
        assert_eq!(six, net("fdc1:1a00:0:1::/64"));
    }

    #[test]
    fn explicit_subnets_are_canonical_checked_and_never_overlap() {
        let cfg = IpamConfig::default();
        let mut ipam = Ipam::default();
        let pool = ipam.request_pool(&cfg, &v4(Some("10.1.2.3/24"), None), &[], 1).expect("pool");
        assert_eq!(pool.subnet, net("10.1.2.0/24"));
        assert!(pool.explicit);
        let err = ipam.request_pool(&cfg, &v4(Some("10.1.0.0/16"), None), &[], 1).expect_err("must fail");
        assert_eq!(err.to_string(), "--subnet 10.1.0.0/16 overlaps 10.1.2.0/24, which is already in use");
        let err = ipam.request_pool(&cfg, &v4(Some("10.9.0.0/31"), None), &[], 1).expect_err("must fail");
        assert!(matches!(err, IpamError::SubnetTooSmall { .. }), "{err}");
        let err = ipam.request_pool(&cfg, &v6(Some("10.9.0.0/24")), &[], 1).expect_err("must fail");
        assert!(matches!(err, IpamError::FamilyMismatch { .. }), "{err}");
        let err = ipam.request_pool(&cfg, &v4(None, Some("10.9.0.0/24")), &[], 1).expect_err("must fail");
        assert!(matches!(err, IpamError::RangeWithoutSubnet { .. }), "{err}");
        let err =
            ipam.request_pool(&cfg, &v4(Some("10.9.0.0/24"), Some("10.8.0.0/25")), &[], 1).expect_err("must fail");
        assert_eq!(err.to_string(), "--ip-range 10.8.0.0/25 is not inside --subnet 10.9.0.0/24");
        assert_eq!(ipam.pools.len(), 1, "failed requests leave nothing behind");
    }

    #[test]
    fn pools_get_distinct_link_local_gateways_per_family() {
        let cfg = IpamConfig::default();
        let mut ipam = Ipam::default();
        let a = ipam.request_pool(&cfg, &v4(None, None), &[], 1).expect("pool").gateway;
        let b = ipam.request_pool(&cfg, &v4(None, None), &[], 1).expect("pool").gateway;
        let c = ipam.request_pool(&cfg, &v6(None), &[], 1).expect("pool").id.clone();
        let d = ipam.request_pool(&cfg, &v6(None), &[], 1).expect("pool").gateway;
        assert_eq!(a, ip("169.254.1.1"));
        assert_eq!(b, ip("169.254.1.2"));
        let c_gateway = ipam.pools[&c].gateway;
        assert_eq!((c_gateway, d), (ip("fe80::1"), ip("fe80::2")));
        // A released pool's gateway is the next one handed out.
        assert!(ipam.release_pool(&c).is_some());
        assert_eq!(ipam.request_pool(&cfg, &v6(None), &[], 1).expect("pool").gateway, ip("fe80::1"));
        for gateway in [a, b, c_gateway, d] {
            assert!(is_link_local_gateway(&gateway), "{gateway}");
        }
        for other in ["fe80::1:0", "fe80::", "fe81::1", "10.0.0.1", "fdc1::1"] {
            assert!(!is_link_local_gateway(&ip(other)), "{other}");
        }
    }

    #[test]
    fn addresses_skip_network_and_broadcast_and_are_not_reused_at_once() {
        let cfg = IpamConfig::default();
        let mut ipam = Ipam::default();
        let id = ipam.request_pool(&cfg, &v4(Some("10.3.0.0/30"), None), &[], 1).expect("pool").id.clone();
        let a = ipam.request_address(&id, None, AllocationKind::Address, 1).expect("addr");
        let b = ipam.request_address(&id, None, AllocationKind::Address, 1).expect("addr");
        assert_eq!((a, b), (ip("10.3.0.1"), ip("10.3.0.2")));
        let err = ipam.request_address(&id, None, AllocationKind::Address, 1).expect_err("must fail");
        assert_eq!(err.to_string(), "pool 10.3.0.0/30 has no free addresses left");
        assert!(ipam.release_address(&id, a).expect("release"));
        assert!(!ipam.release_address(&id, a).expect("double release is fine"));
        assert_eq!(ipam.request_address(&id, None, AllocationKind::Address, 1).expect("addr"), a);
    }

    #[test]
    fn cursor_moves_past_released_addresses() {
        let cfg = IpamConfig::default();
        let mut ipam = Ipam::default();
        let id = ipam.request_pool(&cfg, &v4(Some("10.3.0.0/24"), None), &[], 1).expect("pool").id.clone();
        let a = ipam.request_address(&id, None, AllocationKind::Address, 1).expect("addr");
        ipam.release_address(&id, a).expect("release");
        let b = ipam.request_address(&id, None, AllocationKind::Address, 1).expect("addr");
        assert_ne!(a, b, "a just-released address is not handed out again at once");
    }

    #[test]
    fn preferred_addresses_are_checked() {
        let cfg = IpamConfig::default();
        let mut ipam = Ipam::default();
        let id = ipam.request_pool(&cfg, &v6(Some("fdc1:1a00:5::/64")), &[], 1).expect("pool").id.clone();
        let want = ip("fdc1:1a00:5::42");
        assert_eq!(ipam.request_address(&id, Some(want), AllocationKind::Address, 1), Ok(want));
        assert!(matches!(
            ipam.request_address(&id, Some(want), AllocationKind::Address, 1),
            Err(IpamError::InUse { .. })
        ));
        assert!(matches!(
            ipam.request_address(&id, Some(ip("fdc1:1a00:6::1")), AllocationKind::Address, 1),
            Err(IpamError::OutsidePool { .. })
        ));
        assert!(matches!(
            ipam.request_address(&id, Some(ip("fdc1:1a00:5::")), AllocationKind::Address, 1),
            Err(IpamError::Reserved { .. })
        ));
        assert!(matches!(ipam.release_address(&id, ip("10.0.0.1")), Err(IpamError::OutsidePool { .. })));
        let unknown = PoolId("nope".into());
        assert_eq!(ipam.release_address(&unknown, want), Ok(false));
        assert!(matches!(
            ipam.request_address(&unknown, None, AllocationKind::Address, 1),
            Err(IpamError::UnknownPool(_))
        ));
    }

    #[test]
    fn ip_range_limits_dynamic_allocation_only() {
        let cfg = IpamConfig::default();
        let mut ipam = Ipam::default();
        let id =
            ipam.request_pool(&cfg, &v4(Some("10.4.0.0/24"), Some("10.4.0.128/30")), &[], 1).expect("pool").id.clone();
        let got: Vec<IpAddr> =
            (0..4).map(|_| ipam.request_address(&id, None, AllocationKind::Address, 1).expect("addr")).collect();
        assert_eq!(got, vec![ip("10.4.0.128"), ip("10.4.0.129"), ip("10.4.0.130"), ip("10.4.0.131")]);
        assert!(ipam.request_address(&id, None, AllocationKind::Address, 1).is_err());
        assert_eq!(ipam.request_address(&id, Some(ip("10.4.0.7")), AllocationKind::Address, 1), Ok(ip("10.4.0.7")));
    }

    #[test]
    fn pool_ids_are_never_reused() {
        let cfg = IpamConfig::default();
        let mut ipam = Ipam::default();
        let a = ipam.request_pool(&cfg, &v4(Some("10.5.0.0/24"), None), &[], 1).expect("pool").id.clone();
        ipam.release_pool(&a);
        let b = ipam.request_pool(&cfg, &v4(Some("10.5.0.0/24"), None), &[], 1).expect("pool").id.clone();
        assert_ne!(a, b);
        assert!(ipam.release_pool(&a).is_none(), "a late release of the old id frees nothing");
        assert!(ipam.pools.contains_key(&b));
    }

    #[test]
    fn a_rebuilt_pool_answers_to_the_id_dockerd_holds() {
        let cfg = IpamConfig::default();
        let mut ipam = Ipam::default();
        let rebuilt = ipam.request_pool(&cfg, &v4(Some("10.5.0.0/24"), None), &[], 1).expect("pool").id.clone();
        let held = PoolId("10.5.0.0/24@41".into());
        assert!(ipam.pool(&held).is_err(), "only rebuilt pools are found by subnet");
        ipam.pools.get_mut(&rebuilt).expect("pool").recovered = true;
        let addr = ipam.request_address(&held, None, AllocationKind::Address, 2).expect("address");
        assert!(ipam.pool(&rebuilt).expect("pool").allocations.contains_key(&addr));
        assert!(ipam.release_address(&held, addr).expect("release"));
        assert!(ipam.pool(&PoolId("10.6.0.0/24@41".into())).is_err(), "another subnet is another pool");
        assert_eq!(ipam.release_pool(&held).map(|p| p.id), Some(rebuilt));
    }

    #[test]
    fn exhausting_auto_subnets_is_a_clear_error() {
        let cfg =
            IpamConfig { ipv4_range: "10.6.0.0/23".parse().expect("net"), ipv4_prefix: 24, ..IpamConfig::default() };
        let mut ipam = Ipam::default();
        ipam.request_pool(&cfg, &v4(None, None), &[], 1).expect("first");
        ipam.request_pool(&cfg, &v4(None, None), &[], 1).expect("second");
        let err = ipam.request_pool(&cfg, &v4(None, None), &[], 1).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "no free IPv4 subnet left in 10.6.0.0/23 (/24 each): pass --subnet or widen the daemon's pool range"
        );
    }

    #[test]
    fn cidr_parsing_says_what_is_wrong() {
        assert_eq!(
            parse_cidr("fd5c::/129", "--subnet").expect_err("must fail"),
            "invalid --subnet fd5c::/129: prefix length over 128"
        );
        assert!(parse_cidr("10.0.0.0", "--subnet").expect_err("must fail").contains("expected address/prefix-length"));
        assert!(parse_cidr("10.0.0.300/24", "--subnet").expect_err("must fail").contains("is not an IP address"));
        assert_eq!(parse_cidr("10.0.0.0/8", "--subnet"), Ok(net("10.0.0.0/8")));
    }

    #[test]
    fn large_ipv6_pools_allocate_quickly_and_state_round_trips() {
        let cfg = IpamConfig::default();
        let mut ipam = Ipam::default();
        let id = ipam.request_pool(&cfg, &v6(None), &[], 1).expect("pool").id.clone();
        for _ in 0..2000 {
            ipam.request_address(&id, None, AllocationKind::Address, 1).expect("addr");
        }
        let json = serde_json::to_string(&ipam).expect("serialize");
        let back: Ipam = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, ipam);
    }
}
