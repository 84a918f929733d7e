//! Reconciliation planning (no I/O): what of our state dockerd no longer knows — endpoints and
//! networks whose calls were lost while the daemon was down, pools no network uses, addresses
//! nobody holds — given a snapshot of dockerd's view.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::ids::{EndpointId, NetworkId};
use crate::ipam::PoolId;
use crate::state::State;

/// dockerd's view of the networks that use our driver or our IPAM, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerSnapshot {
    /// Unix seconds when the snapshot was started: anything of ours created later (or a grace
    /// period before) is left alone.
    pub taken_at: u64,
    /// Networks driven by us, by id.
    pub networks: BTreeMap<NetworkId, DockerNetwork>,
    /// Subnets of every network whose IPAM is ours (whatever its driver).
    pub subnets: Vec<IpNet>,
    /// Addresses dockerd believes allocated from our IPAM: endpoints, gateways, aux addresses.
    pub addresses: BTreeSet<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerNetwork {
    pub name: String,
    pub endpoints: BTreeSet<EndpointId>,
}

/// What to remove, in this order: endpoints (with their kernel objects), networks (with their
/// pools), pools no network uses, leaked addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcilePlan {
    pub endpoints: Vec<EndpointId>,
    pub networks: Vec<NetworkId>,
    /// Pools of the removed networks.
    pub network_pools: Vec<PoolId>,
    pub orphan_pools: Vec<PoolId>,
    pub leaked_addresses: Vec<(PoolId, IpAddr)>,
}

/// What a reconciliation removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub endpoints_removed: usize,
    pub networks_removed: usize,
    pub pools_released: usize,
    pub addresses_released: usize,
}

impl ReconcileReport {
    pub fn is_empty(&self) -> bool {
        *self == ReconcileReport::default()
    }
}

impl ReconcilePlan {
    pub fn is_empty(&self) -> bool {
        *self == ReconcilePlan::default()
    }

    pub fn report(&self) -> ReconcileReport {
        ReconcileReport {
            endpoints_removed: self.endpoints.len(),
            networks_removed: self.networks.len(),
            pools_released: self.network_pools.len() + self.orphan_pools.len(),
            addresses_released: self.leaked_addresses.len(),
        }
    }
}

/// Plans the removal of what dockerd does not know. Records younger than `grace` seconds
/// before the snapshot are left alone, since dockerd stores endpoints only after
/// CreateEndpoint returned.
pub fn plan(state: &State, snap: &DockerSnapshot, grace: u64) -> ReconcilePlan {
    let settled = |at: u64| at.saturating_add(grace) <= snap.taken_at;
    let endpoints: Vec<EndpointId> = state
        .endpoints
        .values()
        .filter(|e| settled(e.created_at))
        .filter(|e| !snap.networks.get(&e.network).is_some_and(|n| n.endpoints.contains(&e.id)))
        .map(|e| e.id.clone())
        .collect();
    let gone_endpoints: BTreeSet<&EndpointId> = endpoints.iter().collect();

    let networks: Vec<NetworkId> = state
        .networks
        .values()
        .filter(|n| settled(n.created_at) && !snap.networks.contains_key(&n.id))
        .map(|n| n.id.clone())
        .collect();
    let gone_networks: BTreeSet<&NetworkId> = networks.iter().collect();
    let network_pools: Vec<PoolId> = state
        .networks
        .values()
        .filter(|n| gone_networks.contains(&n.id))
        .flat_map(|n| n.pools().cloned())
        .filter(|p| state.ipam.pools.contains_key(p))
        .collect();

    let used_pools: BTreeSet<&PoolId> =
        state.networks.values().filter(|n| !gone_networks.contains(&n.id)).flat_map(|n| n.pools()).collect();
    let released: BTreeSet<&PoolId> = network_pools.iter().collect();
    let orphan_pools: Vec<PoolId> = state
        .ipam
        .pools
        .values()
        .filter(|p| settled(p.created_at) && !used_pools.contains(&p.id) && !released.contains(&p.id))
        .filter(|p| !snap.subnets.iter().any(|s| s.trunc() == p.subnet))
        .map(|p| p.id.clone())
        .collect();

    let held: BTreeSet<IpAddr> =
        state.endpoints.values().filter(|e| !gone_endpoints.contains(&e.id)).flat_map(|e| e.addresses()).collect();
    let dropped: BTreeSet<&PoolId> = released.iter().copied().chain(&orphan_pools).collect();
    let mut leaked_addresses = Vec::new();
    for pool in state.ipam.pools.values().filter(|p| !dropped.contains(&p.id)) {
        leaked_addresses.extend(
            pool.allocations
                .iter()
                .filter(|(addr, a)| settled(a.at) && !held.contains(*addr) && !snap.addresses.contains(*addr))
                .map(|(addr, _)| (pool.id.clone(), *addr)),
        );
    }
    ReconcilePlan { endpoints, networks, network_pools, orphan_pools, leaked_addresses }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;
    use crate::ipam::{AllocationKind, IpamConfig, PoolRequest};
    use crate::network::Network;

    const NET: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const EP: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A network with one pool, one endpoint holding one address, and one leaked address.
    fn state() -> (State, PoolId) {
        let mut state = State::default();
        let request = PoolRequest { subnet: Some("10.5.0.0/24".parse().unwrap()), ..PoolRequest::default() };
        let pool = state.ipam.request_pool(&IpamConfig::default(), &request, &[], 0).unwrap().id.clone();
        let held = state.ipam.request_address(&pool, None, AllocationKind::Address, 0).unwrap();
        state.ipam.request_address(&pool, None, AllocationKind::Address, 0).unwrap();
        let network = NetworkId::parse(NET).unwrap();
        state.networks.insert(
            network.clone(),
            Network {
                id: network.clone(),
                ipv4_pools: vec![pool.clone()],
                ipv6_pools: vec![],
                driver_ipv6_pool: None,
                ipv6_enabled: false,
                internal: false,
                masquerade: true,
                mtu: None,
                name: None,
                created_at: 0,
            },
        );
        let id = EndpointId::parse(EP).unwrap();
        state.endpoints.insert(
            id.clone(),
            Endpoint {
                id,
                network,
                number: 1,
                ipv4: match held {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                },
                ipv6: None,
                ipv6_pool: None,
                mac: [2, 0, 0, 0, 0, 1],
                gateway_ipv4: None,
                gateway_ipv6: None,
                created_at: 0,
                joined: None,
                identity: crate::identity::Identity::INIT,
                container: None,
                labels: crate::labels::Labels::new(),
                internal: false,
                masquerade: true,
                published: Vec::new(),
            },
        );
        (state, pool)
    }

    #[test]
    fn what_dockerd_knows_stays_and_the_rest_goes() {
        let (state, pool) = state();
        let mut known = DockerSnapshot { taken_at: 1000, ..DockerSnapshot::default() };
        known.networks.insert(
            NetworkId::parse(NET).unwrap(),
            DockerNetwork { name: "n".into(), endpoints: [EndpointId::parse(EP).unwrap()].into_iter().collect() },
        );
        let plan = plan(&state, &known, 60);
        assert_eq!(plan.leaked_addresses, vec![(pool.clone(), "10.5.0.2".parse().unwrap())]);
        assert!(plan.endpoints.is_empty() && plan.networks.is_empty() && plan.orphan_pools.is_empty());

        let forgot = DockerSnapshot { taken_at: 1000, ..DockerSnapshot::default() };
        let plan = super::plan(&state, &forgot, 60);
        assert_eq!(plan.endpoints.len(), 1);
        assert_eq!(plan.networks.len(), 1);
        assert_eq!(plan.network_pools, vec![pool]);
        assert!(plan.orphan_pools.is_empty() && plan.leaked_addresses.is_empty(), "released with the network");
        assert_eq!(plan.report().pools_released, 1);
    }

    #[test]
    fn young_records_are_left_alone() {
        let (state, _) = state();
        let too_soon = DockerSnapshot { taken_at: 30, ..DockerSnapshot::default() };
        assert!(plan(&state, &too_soon, 60).is_empty());
    }
}
