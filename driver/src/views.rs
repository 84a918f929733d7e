//! What the API socket reports (endpoints, networks, status), shared by the daemon and the CLI,
//! and how the state turns into it (no I/O).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::datapath::Counters;
use crate::endpoint::{format_mac, Endpoint};
use crate::identity::Identity;
use crate::policy::IdentityInfo;
use crate::state::State;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub id: String,
    pub network: String,
    pub number: u32,
    pub ipv6: Option<String>,
    pub ipv4: Option<String>,
    pub mac: String,
    pub host_ifname: String,
    pub host_ifindex: Option<u32>,
    pub joined: bool,
    /// The security identity (5 = init while the labels are not known).
    pub identity: u32,
    /// `init`, `host`, … or the number.
    pub identity_name: String,
    /// The labels the identity stands for.
    pub labels: Vec<String>,
    /// The container's id and name, once known.
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    /// How long after Join the identity reached the datapath (this daemon's run only).
    #[serde(default)]
    pub identity_after_join_us: Option<u64>,
    /// Host ports published to it, as Docker prints them (`8080->80/tcp`).
    #[serde(default)]
    pub published: Vec<String>,
    pub counters: Counters,
}

/// One identity and who carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityView {
    pub id: u32,
    /// `reserved`, `endpoint` or `cidr`.
    pub kind: String,
    pub labels: Vec<String>,
    /// Names (or short ids) of the endpoints' containers carrying it.
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub id: String,
    pub subnet: String,
    pub ip_range: Option<String>,
    pub gateway: String,
    pub used: usize,
    pub taken_by_driver: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    pub id: String,
    pub ipv6_enabled: bool,
    pub internal: bool,
    pub mtu: Option<u32>,
    pub endpoints: usize,
    pub pools: Vec<PoolView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub networks: usize,
    pub endpoints: usize,
    pub pools: usize,
    /// The policy revision the datapath enforces.
    #[serde(default)]
    pub policy_revision: u64,
    #[serde(default)]
    pub policy_rules: usize,
    /// Entries of the policy map.
    #[serde(default)]
    pub policy_entries: usize,
    /// Identities policy knows (reserved, endpoint and CIDR ones).
    #[serde(default)]
    pub identities: usize,
}

/// An endpoint without its counters (the datapath adds them).
pub fn endpoint(ep: &Endpoint) -> EndpointView {
    EndpointView {
        id: ep.id.to_string(),
        network: ep.network.to_string(),
        number: ep.number,
        ipv6: ep.ipv6.map(|a| a.to_string()),
        ipv4: ep.ipv4.map(|a| a.to_string()),
        mac: format_mac(&ep.mac),
        host_ifname: ep.host_ifname(),
        host_ifindex: ep.joined.as_ref().map(|j| j.host_ifindex),
        joined: ep.joined.is_some(),
        identity: ep.identity.0,
        identity_name: ep.identity.name(),
        labels: ep.labels.iter().map(ToString::to_string).collect(),
        container_id: ep.container.as_ref().map(|c| c.id.clone()),
        container_name: ep.container.as_ref().map(|c| c.name.clone()),
        identity_after_join_us: None,
        published: ep.published.iter().map(ToString::to_string).collect(),
        counters: Counters::default(),
    }
}

/// Every identity policy knows, with the names of the endpoints carrying it.
pub fn identities(known: &BTreeMap<Identity, IdentityInfo>, endpoints: &[(Identity, String)]) -> Vec<IdentityView> {
    known
        .iter()
        .map(|(identity, info)| IdentityView {
            id: identity.0,
            kind: identity.kind().to_owned(),
            labels: info.labels.iter().map(ToString::to_string).collect(),
            endpoints: endpoints.iter().filter(|(id, _)| id == identity).map(|(_, name)| name.clone()).collect(),
        })
        .collect()
}

/// What EndpointOperInfo shows in `docker network inspect -v`.
pub fn endpoint_oper_info(ep: &Endpoint) -> BTreeMap<String, String> {
    let mut info =
        BTreeMap::from([("host_ifname".to_owned(), ep.host_ifname()), ("mac".to_owned(), format_mac(&ep.mac))]);
    if let Some(a) = ep.ipv6 {
        info.insert("ipv6".to_owned(), a.to_string());
    }
    if let Some(a) = ep.ipv4 {
        info.insert("ipv4".to_owned(), a.to_string());
    }
    info
}

pub fn networks(state: &State) -> Vec<NetworkView> {
    state
        .networks
        .values()
        .map(|n| NetworkView {
            id: n.id.to_string(),
            ipv6_enabled: n.ipv6_enabled,
            internal: n.internal,
            mtu: n.mtu,
            endpoints: state.endpoints.values().filter(|e| e.network == n.id).count(),
            pools: n
                .pools()
                .filter_map(|id| state.ipam.pools.get(id))
                .map(|p| PoolView {
                    id: p.id.to_string(),
                    subnet: p.subnet.to_string(),
                    ip_range: p.range.map(|r| r.to_string()),
                    gateway: p.gateway.to_string(),
                    used: p.used(),
                    taken_by_driver: p.internal,
                })
                .collect(),
        })
        .collect()
}

/// The state's part of the status; the driver adds the policy's.
pub fn status(state: &State) -> StatusView {
    StatusView {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        networks: state.networks.len(),
        endpoints: state.endpoints.len(),
        pools: state.ipam.pools.len(),
        policy_revision: 0,
        policy_rules: 0,
        policy_entries: 0,
        identities: 0,
    }
}
