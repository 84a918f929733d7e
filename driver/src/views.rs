//! What the API socket reports (endpoints, networks, status), shared by the daemon and the CLI,
//! and how the state turns into it (no I/O).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::datapath::{Counters, DatapathInfo};
use crate::endpoint::{format_mac, Endpoint};
use crate::health::{DockerView, LoggedError};
use crate::identity::Identity;
use crate::policy::{EnforcementMode, IdentityInfo, RuleId};
use crate::state::State;
use crate::store::StoreHealth;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub id: String,
    pub network: String,
    /// The network's name, once Docker told it.
    #[serde(default)]
    pub network_name: Option<String>,
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
    /// Its name, once Docker told it.
    #[serde(default)]
    pub name: Option<String>,
    pub ipv6_enabled: bool,
    pub internal: bool,
    pub mtu: Option<u32>,
    pub endpoints: usize,
    pub pools: Vec<PoolView>,
}

/// How much the daemon holds (the top level of the status' JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
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
    /// Entries of crs_ct, crs_nat_out and crs_nat_in (`None`: they could not be read).
    #[serde(default)]
    pub conntrack_entries: Option<u64>,
    #[serde(default)]
    pub nat_out_entries: Option<u64>,
    #[serde(default)]
    pub nat_in_entries: Option<u64>,
}

/// `cilium-rs status`: what runs, how it is, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    /// The driver name networks carry in Docker (`--driver-name`).
    #[serde(default)]
    pub driver: String,
    /// False when any subsystem fails: `problems` says which and why.
    #[serde(default)]
    pub healthy: bool,
    #[serde(default)]
    pub problems: Vec<String>,
    #[serde(default)]
    pub uptime_ms: u64,
    /// When the daemon started, in ms since the epoch.
    #[serde(default)]
    pub started_at: u64,
    #[serde(default)]
    pub datapath: DatapathInfo,
    pub store: Option<StoreHealth>,
    pub docker: Option<DockerView>,
    #[serde(flatten)]
    pub counts: StatusCounts,
    /// `--enable-policy`.
    #[serde(default)]
    pub enforcement: EnforcementMode,
    /// The last errors the daemon logged, oldest first, and how many it logged since it
    /// started.
    #[serde(default)]
    pub errors: Vec<LoggedError>,
    #[serde(default)]
    pub errors_total: u64,
}

/// The policy an endpoint is under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPolicy {
    /// Default-deny in that direction: only what rules allow passes.
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    /// The rules whose endpoint selector selects it.
    pub selected_by: Vec<RuleId>,
    pub mode: EnforcementMode,
}

/// `cilium-rs endpoint get`: one endpoint in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDetail {
    #[serde(flatten)]
    pub endpoint: EndpointView,
    /// The number its container's endpoints share.
    pub sandbox: Option<u32>,
    pub sandbox_key: Option<String>,
    pub gateway_ipv6: Option<String>,
    pub gateway_ipv4: Option<String>,
    pub mtu: Option<u32>,
    pub internal: bool,
    pub masquerade: bool,
    pub policy: EndpointPolicy,
    /// The identity its crs_endpoints entry carries (`None`: no entry, e.g. not joined).
    pub datapath_identity: Option<u32>,
}

/// Why `endpoint get` found no single endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindError {
    #[error("no endpoint is {0} (give a container name, an endpoint id or a unique id prefix)")]
    NotFound(String),
    #[error("{query} is ambiguous: it matches endpoints {}", .candidates.join(", "))]
    Ambiguous { query: String, candidates: Vec<String> },
}

/// The endpoint `query` names: an endpoint id, a container name or id, or a prefix of one
/// endpoint or container id; exact matches first.
pub fn find_endpoint<'a>(state: &'a State, query: &str) -> Result<&'a Endpoint, FindError> {
    let query = query.trim();
    let all: Vec<&Endpoint> = state.endpoints.values().collect();
    fn container_id(e: &Endpoint) -> Option<&str> {
        e.container.as_ref().map(|c| c.id.as_str())
    }
    let passes: [&dyn Fn(&Endpoint) -> bool; 3] = [
        &|e| e.id.as_str() == query || container_id(e) == Some(query),
        &|e| e.container.as_ref().is_some_and(|c| c.name == query),
        &|e| {
            !query.is_empty()
                && (e.id.as_str().starts_with(query) || container_id(e).is_some_and(|c| c.starts_with(query)))
        },
    ];
    for matches in passes {
        let found: Vec<&Endpoint> = all.iter().copied().filter(|e| matches(e)).collect();
        match found.as_slice() {
            [] => continue,
            [one] => return Ok(one),
            many => {
                let candidates = many
                    .iter()
                    .map(|e| {
                        let network = state.networks.get(&e.network).and_then(|n| n.name.clone());
                        format!(
                            "{} (network {})",
                            e.id.short(),
                            network.unwrap_or_else(|| e.network.short().to_owned())
                        )
                    })
                    .collect();
                return Err(FindError::Ambiguous { query: crate::input::quoted(query), candidates });
            }
        }
    }
    Err(FindError::NotFound(crate::input::quoted(query)))
}

/// The endpoint in full, less what policy and the datapath add (its policy, counters, the
/// identity in its map entry).
pub fn endpoint_detail(state: &State, ep: &Endpoint) -> EndpointDetail {
    let network = state.networks.get(&ep.network);
    EndpointDetail {
        endpoint: endpoint(ep, network.and_then(|n| n.name.as_deref())),
        sandbox: ep.joined.as_ref().map(|j| j.sandbox),
        sandbox_key: ep.joined.as_ref().map(|j| j.sandbox_key.clone()).filter(|k| !k.is_empty()),
        gateway_ipv6: ep.ipv6_gateway().map(|g| g.to_string()),
        gateway_ipv4: ep.gateway_ipv4.map(|g| g.to_string()),
        mtu: ep.joined.as_ref().map(|j| j.mtu),
        internal: ep.internal,
        masquerade: ep.masquerade,
        policy: EndpointPolicy {
            ingress_enforced: false,
            egress_enforced: false,
            selected_by: Vec::new(),
            mode: EnforcementMode::default(),
        },
        datapath_identity: None,
    }
}

/// An endpoint without its counters (the datapath adds them).
pub fn endpoint(ep: &Endpoint, network_name: Option<&str>) -> EndpointView {
    EndpointView {
        id: ep.id.to_string(),
        network: ep.network.to_string(),
        network_name: network_name.map(str::to_owned),
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
            name: n.name.clone(),
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

/// The state's counts; the driver adds the policy's and the datapath's.
pub fn counts(state: &State) -> StatusCounts {
    StatusCounts {
        networks: state.networks.len(),
        endpoints: state.endpoints.len(),
        pools: state.ipam.pools.len(),
        ..StatusCounts::default()
    }
}
