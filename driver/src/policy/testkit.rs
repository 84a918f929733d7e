//! Test helpers: identity universes, resolvers built from rule text, flows checked through the
//! datapath lookup, and the from-scratch oracle the incremental resolver must agree with.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::cidr::cidr_identity_labels;
use super::resolve::{is_local, Resolver};
use super::trace::lookup;
use super::{parse_rules_str, Direction, EnforcementMode, IdentityInfo, PolicyEntry, PolicyKey, Rule};
use crate::identity::{reserved_labels, Identity, RESERVED};
use crate::labels::{Label, Labels, SOURCE_DOCKER};

/// Container labels `k=v ...` (a `source:` prefix is kept), plus `docker:network=net1`.
pub fn labels(text: &str) -> Labels {
    let mut labels = Labels::parse_list(text, "container").unwrap();
    labels.insert(Label::new(SOURCE_DOCKER, "network", "net1"));
    labels
}

pub fn endpoint(text: &str) -> IdentityInfo {
    IdentityInfo { labels: labels(text), cidr: None }
}

pub fn reserved(identity: Identity) -> IdentityInfo {
    IdentityInfo { labels: reserved_labels(identity).unwrap(), cidr: None }
}

pub fn rules(text: &str) -> Vec<Rule> {
    parse_rules_str(text).unwrap_or_else(|e| panic!("{e}"))
}

/// CIDR identities are numbered from here in the order of their prefixes.
pub fn add_cidr_identities(resolver: &mut Resolver, extra: &[&str]) {
    let mut prefixes = resolver.cidrs();
    prefixes.extend(extra.iter().map(|p| p.parse::<IpNet>().unwrap()));
    for (i, (net, labels)) in cidr_identity_labels(&prefixes).into_iter().enumerate() {
        let id = Identity(Identity::MIN_CIDR + u32::try_from(i).unwrap());
        resolver.add_identity(id, IdentityInfo { labels, cidr: Some(net) });
    }
}

/// A resolver with host, world and init, the given endpoints, the rules of `text` (ids from 1)
/// and a CIDR identity for every prefix the rules refer to (and `extra_cidrs`).
pub fn build(mode: EnforcementMode, text: &str, endpoints: &[(u32, &str)], extra_cidrs: &[&str]) -> Resolver {
    let mut resolver = Resolver::new(mode);
    for (id, _) in RESERVED {
        resolver.add_identity(id, reserved(id));
    }
    for (id, text) in endpoints {
        resolver.add_identity(Identity(*id), endpoint(text));
    }
    let list = rules(text).into_iter().enumerate().map(|(i, r)| (i as u64 + 1, r)).collect();
    resolver.replace_rules(list).unwrap();
    add_cidr_identities(&mut resolver, extra_cidrs);
    resolver
}

/// The identity the ipcache would give an outside address: the CIDR identity of the longest
/// prefix holding it, else world.
pub fn ip_identity(resolver: &Resolver, addr: &str) -> Identity {
    let addr: IpAddr = addr.parse().unwrap();
    resolver
        .identities()
        .iter()
        .filter_map(|(id, info)| info.cidr.filter(|net| net.contains(&addr)).map(|net| (net.prefix_len(), *id)))
        .max()
        .map_or(Identity::WORLD, |(_, id)| id)
}

/// The CIDR identity of exactly this prefix.
pub fn cidr_identity(resolver: &Resolver, net: &str) -> Identity {
    let net: IpNet = net.parse().unwrap();
    *resolver.identities().iter().find(|(_, info)| info.cidr == Some(net)).unwrap().0
}

/// Whether the datapath lets a new flow from `src` to `dst` through: the source's egress
/// (when it is local) and the destination's ingress (when it is local).
pub fn flow(resolver: &Resolver, src: Identity, dst: Identity, proto: u8, port: u16) -> bool {
    let entries = resolver.entries();
    let egress = !is_local(src) || lookup(entries, src, dst, Direction::Egress, proto, port).is_allowed();
    let ingress = !is_local(dst) || lookup(entries, dst, src, Direction::Ingress, proto, port).is_allowed();
    egress && ingress
}

/// The whole map resolved from scratch, group by group, without the incremental state.
pub fn oracle(resolver: &Resolver) -> BTreeMap<PolicyKey, PolicyEntry> {
    let universe = resolver.identities();
    let mut remotes: Vec<Identity> = vec![Identity::ANY, Identity::HOST, Identity::WORLD, Identity::INIT];
    remotes.extend(universe.keys().copied());
    remotes.sort();
    remotes.dedup();
    let mut out = BTreeMap::new();
    for (local, info) in universe.iter().filter(|(id, _)| is_local(**id)) {
        for d in [Direction::Ingress, Direction::Egress] {
            for remote in &remotes {
                out.extend(resolver.evaluate(*local, info, *remote, universe.get(remote), d));
            }
        }
    }
    out
}
