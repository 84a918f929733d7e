//! `cilium-rs state recover`: rebuilds a lost or damaged state from what survives — the last
//! backup (rules, identities, networks and endpoints as they were), Docker's view of our
//! networks and their running containers, and the kernel's pinned endpoint entries — so that
//! running containers keep their addresses, endpoint numbers and connectivity, and nobody has
//! to delete containers to get a working host back. Pure: reading the survivors is
//! `survivors`' job, writing the file the command's.

pub mod check;
pub mod run;
pub mod survivors;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bpf_programs::abi::{PortKey, PortTarget, IP_FAMILY_V4, IP_FAMILY_V6};
use ipnet::{IpNet, Ipv6Net};

use crate::endpoint::{host_ifname, Endpoint, Joined};
use crate::identity::Identity;
use crate::ipam::{is_link_local_gateway, AllocationKind, IpamConfig, PoolId, PoolRequest};
use crate::network::Network;
use crate::ports::{Proto, PublishedPort};
use crate::state::{State, StateError};
use crate::store::{Records, Table};
use survivors::{SurvivingMember, SurvivingNetwork, Survivors};

/// What `state recover` found and did, for the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecoverReport {
    /// The backup could not be read (why), so nothing came from it.
    pub backup_unreadable: Option<String>,
    pub networks_from_backup: usize,
    pub endpoints_from_backup: usize,
    pub rules_from_backup: usize,
    /// Networks (by name) and endpoints (by container name) rebuilt from Docker and the kernel.
    pub networks_rebuilt: Vec<String>,
    pub endpoints_rebuilt: Vec<String>,
    /// Containers whose endpoint has no host-side link or entry in the kernel: recorded with
    /// their addresses, not joined (Docker's next Leave and DeleteEndpoint clean up).
    pub endpoints_without_kernel: Vec<String>,
    /// What could not be rebuilt, and why.
    pub problems: Vec<String>,
}

/// The records of a rebuilt state (the schema marker is the store's to write).
pub fn rebuild(survivors: &Survivors, config: &IpamConfig, now: u64) -> Result<(Records, RecoverReport), StateError> {
    let mut report = RecoverReport::default();
    let mut state = match State::decode(&survivors.backup) {
        Ok(state) => state,
        Err(e) => {
            report.backup_unreadable = Some(e.to_string());
            State::default()
        }
    };
    let rules = survivors.backup.get(&Table::Rules).map_or(0, |r| r.len());
    report.networks_from_backup = state.networks.len();
    report.endpoints_from_backup = state.endpoints.len();
    report.rules_from_backup = if report.backup_unreadable.is_some() { 0 } else { rules };
    for network in &survivors.networks {
        if !state.networks.contains_key(&network.id) {
            match rebuild_network(&mut state, network, survivors, config, now) {
                Ok(()) => report.networks_rebuilt.push(network.name.clone()),
                Err(e) => {
                    report.problems.push(format!("network {}: {e}", network.name));
                    continue;
                }
            }
        }
        for member in &network.members {
            if state.endpoints.contains_key(&member.endpoint) {
                continue;
            }
            match rebuild_endpoint(&mut state, network, member, survivors, now) {
                Ok(true) => report.endpoints_rebuilt.push(member.container.name.clone()),
                Ok(false) => report.endpoints_without_kernel.push(member.container.name.clone()),
                Err(e) => report.problems.push(format!("container {}: {e}", member.container.name)),
            }
        }
    }
    let mut records = state.records()?;
    if report.backup_unreadable.is_none() {
        for table in [Table::Kv, Table::Rules] {
            if let Some(rows) = survivors.backup.get(&table) {
                records.insert(table, rows.clone());
            }
        }
    }
    Ok((records, report))
}

/// The network and its pools as dockerd created them (the pool ids dockerd holds are lost:
/// releases find the pools by subnet).
fn rebuild_network(
    state: &mut State,
    network: &SurvivingNetwork,
    survivors: &Survivors,
    config: &IpamConfig,
    now: u64,
) -> Result<(), String> {
    let kernel_rows = || network.members.iter().filter_map(|m| survivors.kernel.get(&host_ifname(&m.endpoint)));
    let (mut ipv4_pools, mut ipv6_pools) = (Vec::new(), Vec::new());
    for pool in &network.pools {
        let v6 = pool.subnet.addr().is_ipv6();
        let request = PoolRequest { v6, subnet: Some(pool.subnet), range: pool.range, internal: false };
        let id = rebuilt_pool(state, config, &request, now)?;
        // The link-local gateway the endpoints route through: Docker's (the one RequestPool
        // gave, unless a --gateway inside the subnet replaced it), else for IPv4 the kernel's.
        let gateway = pool.gateway.filter(is_link_local_gateway).or_else(|| match v6 {
            true => None,
            false => kernel_rows().find_map(|k| k.row.gateway_ipv4.filter(|g| !g.is_unspecified()).map(IpAddr::V4)),
        });
        if let (Some(gateway), Some(p)) = (gateway, state.ipam.pools.get_mut(&id)) {
            p.gateway = gateway;
        }
        if v6 {
            ipv6_pools.push(id)
        } else {
            ipv4_pools.push(id)
        }
    }
    // Without --ipv6 the driver took a subnet itself: the one its endpoints' addresses are in.
    let driver_ipv6_pool = match ipv6_pools.is_empty() {
        false => None,
        true => match kernel_rows().find_map(|k| k.row.ipv6) {
            None => None,
            Some(addr) => {
                let subnet = Ipv6Net::new(addr, config.ipv6_prefix).map_err(|e| e.to_string())?.trunc();
                let request = PoolRequest { v6: true, subnet: Some(IpNet::V6(subnet)), range: None, internal: true };
                Some(rebuilt_pool(state, config, &request, now)?)
            }
        },
    };
    let options = &network.options;
    state.networks.insert(
        network.id.clone(),
        Network {
            id: network.id.clone(),
            ipv4_pools,
            ipv6_pools,
            driver_ipv6_pool,
            ipv6_enabled: options.ipv6_enabled,
            internal: options.internal,
            masquerade: options.masquerade,
            mtu: options.mtu,
            created_at: now,
            name: Some(network.name.clone()),
        },
    );
    Ok(())
}

/// A pool as dockerd asked for it, marked as rebuilt (dockerd holds another id for it).
fn rebuilt_pool(state: &mut State, config: &IpamConfig, request: &PoolRequest, now: u64) -> Result<PoolId, String> {
    let id = state.ipam.request_pool(config, request, &[], now).map_err(|e| e.to_string())?.id.clone();
    if let Some(pool) = state.ipam.pools.get_mut(&id) {
        pool.recovered = true;
    }
    Ok(id)
}

/// The endpoint of a running container, with the number, sandbox and link the kernel holds
/// for it (so the restarted daemon applies exactly what forwards its packets now). Returns
/// whether the kernel had it.
fn rebuild_endpoint(
    state: &mut State,
    network: &SurvivingNetwork,
    member: &SurvivingMember,
    survivors: &Survivors,
    now: u64,
) -> Result<bool, String> {
    let kernel = survivors.kernel.get(&host_ifname(&member.endpoint));
    let record = state.networks.get(&network.id).cloned().ok_or("its network was not rebuilt")?;
    let ipv4 = member.ipv4.or_else(|| kernel.and_then(|k| k.row.ipv4));
    let ipv6 = member.ipv6.or_else(|| kernel.and_then(|k| k.row.ipv6));
    let mac = member.mac.or_else(|| kernel.map(|k| k.row.mac)).ok_or("Docker and the kernel know no MAC address")?;
    let taken: BTreeSet<u32> = state.endpoints.values().map(|e| e.number).collect();
    let number = match kernel.map(|k| k.row.number).filter(|n| *n != 0 && !taken.contains(n)) {
        Some(number) => number,
        None => state.take_number(),
    };
    state.next_number = state.next_number.max(number);
    // The IPv6 address is the driver's own when dockerd gave the network no IPv6 pool.
    let ipv6_pool = match (ipv6, record.ipv6_pools.is_empty()) {
        (Some(_), true) => record.driver_ipv6_pool.clone(),
        _ => None,
    };
    let (mut gateway_ipv4, mut gateway_ipv6) = (kernel.and_then(|k| k.row.gateway_ipv4), None);
    for addr in ipv4.map(IpAddr::V4).into_iter().chain(ipv6.map(IpAddr::V6)) {
        let pool = state.ipam.pool_containing(addr).map(|p| (p.id.clone(), p.gateway));
        let Some((pool, gateway)) = pool else { return Err(format!("{addr} is in no pool of its network")) };
        match gateway {
            IpAddr::V4(g) if addr.is_ipv4() && gateway_ipv4.is_none() => gateway_ipv4 = Some(g),
            IpAddr::V6(g) if addr.is_ipv6() => gateway_ipv6 = Some(g),
            _ => {}
        }
        let kind = if Some(&pool) == ipv6_pool.as_ref() { AllocationKind::Driver } else { AllocationKind::Address };
        if !state.ipam.pool(&pool).map_err(|e| e.to_string())?.allocations.contains_key(&addr) {
            state.ipam.request_address(&pool, Some(addr), kind, now).map_err(|e| e.to_string())?;
        }
    }
    let joined = kernel.map(|k| Joined {
        sandbox_key: member.sandbox_key.clone(),
        sandbox: if k.row.sandbox == 0 { number } else { k.row.sandbox },
        host_ifindex: k.ifindex,
        host_mac: k.host_mac,
        mtu: k.mtu,
    });
    let published = kernel.map(|k| published_ports(&survivors.ports, k.row.number)).unwrap_or_default();
    state.endpoints.insert(
        member.endpoint.clone(),
        Endpoint {
            id: member.endpoint.clone(),
            network: network.id.clone(),
            number,
            ipv4,
            ipv6,
            ipv6_pool,
            mac,
            gateway_ipv4,
            gateway_ipv6,
            created_at: now,
            joined,
            // Matched to its container and resolved from its labels as soon as the daemon
            // runs again (what a fresh Join gets).
            identity: Identity::INIT,
            container: None,
            labels: Default::default(),
            internal: record.internal,
            masquerade: record.masquerade,
            published,
        },
    );
    Ok(kernel.is_some())
}

/// The published ports the kernel forwards to endpoint `number`. An entry without a host
/// address is a port published on every address of its family; one in both families is a
/// port published without a host address (`-p 8080:80`).
fn published_ports(ports: &[(PortKey, PortTarget)], number: u32) -> Vec<PublishedPort> {
    let mut published = Vec::new();
    let mut any_address: BTreeMap<(u8, u16, u16), BTreeSet<u8>> = BTreeMap::new();
    for (key, target) in ports.iter().filter(|(_, t)| t.endpoint_id == number) {
        let (host_port, port) = (u16::from_be_bytes(key.port), u16::from_be_bytes(target.port));
        match (proto_of(key.proto), ip_of(key.family, key.addr)) {
            (Some(proto), Some(ip)) if !ip.is_unspecified() => {
                published.push(PublishedPort { proto, host_ip: Some(ip), host_port, port });
            }
            (Some(_), Some(_)) => {
                any_address.entry((key.proto, host_port, port)).or_default().insert(key.family);
            }
            _ => {}
        }
    }
    for ((proto, host_port, port), families) in any_address {
        let Some(proto) = proto_of(proto) else { continue };
        let host_ip = match families.len() {
            2 => None,
            _ => families.first().map(|f| unspecified(*f)),
        };
        published.push(PublishedPort { proto, host_ip, host_port, port });
    }
    published
}

fn proto_of(number: u8) -> Option<Proto> {
    [Proto::Tcp, Proto::Udp].into_iter().find(|p| p.number() == number)
}

fn ip_of(family: u8, addr: [u8; 16]) -> Option<IpAddr> {
    match family {
        IP_FAMILY_V4 => Some(IpAddr::from([addr[0], addr[1], addr[2], addr[3]])),
        IP_FAMILY_V6 => Some(IpAddr::from(addr)),
        _ => None,
    }
}

fn unspecified(family: u8) -> IpAddr {
    match family {
        IP_FAMILY_V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        _ => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::EndpointRow;
    use crate::ids::{EndpointId, NetworkId};
    use crate::network::NetworkOptions;
    use survivors::{KernelEndpoint, SurvivingPool};

    fn id(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn member(c: char, ipv4: &str, ipv6: &str) -> SurvivingMember {
        SurvivingMember {
            endpoint: EndpointId::parse(&id(c)).expect("id"),
            container: crate::endpoint::ContainerRef { id: id('c'), name: format!("app-{c}") },
            mac: Some([2, 0, 0, 0, 0, c as u8]),
            ipv4: Some(ipv4.parse().expect("ip")),
            ipv6: Some(ipv6.parse().expect("ip")),
            sandbox_key: format!("/var/run/docker/netns/{c}"),
        }
    }

    fn port(family: u8, number: u32) -> (PortKey, PortTarget) {
        let key = PortKey { family, proto: 6, port: 8080u16.to_be_bytes(), addr: [0; 16] };
        (key, PortTarget { addr: [0; 16], port: 80u16.to_be_bytes(), pad: 0, endpoint_id: number })
    }

    #[test]
    fn running_containers_are_rebuilt_with_what_the_kernel_holds_for_them() {
        let network = SurvivingNetwork {
            id: NetworkId::parse(&id('f')).expect("id"),
            name: "web".into(),
            options: NetworkOptions { ipv6_enabled: true, ..NetworkOptions::default() },
            pools: vec![
                SurvivingPool { subnet: "10.9.0.0/24".parse().expect("net"), range: None, gateway: None },
                SurvivingPool {
                    subnet: "fdc1:9::/64".parse().expect("net"),
                    range: None,
                    gateway: Some("fe80::7".parse().expect("ip")),
                },
            ],
            members: vec![member('a', "10.9.0.5", "fdc1:9::5"), member('b', "10.9.0.6", "fdc1:9::6")],
        };
        let row = EndpointRow {
            ifindex: 40,
            number: 7,
            sandbox: 7,
            identity: Identity(300),
            ipv6: Some("fdc1:9::5".parse().expect("ip")),
            ipv4: Some("10.9.0.5".parse().expect("ip")),
            gateway_ipv4: Some("169.254.9.1".parse().expect("ip")),
            mac: [2, 0, 0, 0, 0, b'a'],
            host_mac: [2, 1, 1, 1, 1, 1],
            internal: false,
            masquerade: true,
            published: true,
        };
        let kernel = KernelEndpoint { ifindex: 40, host_mac: [2, 1, 1, 1, 1, 1], mtu: 1400, row };
        let backup = Records::from([(Table::Rules, BTreeMap::from([("r1".to_owned(), b"{}".to_vec())]))]);
        let survivors = Survivors {
            backup,
            kernel: BTreeMap::from([(host_ifname(&network.members[0].endpoint), kernel)]),
            networks: vec![network.clone()],
            ports: vec![port(IP_FAMILY_V4, 7), port(IP_FAMILY_V6, 7), port(IP_FAMILY_V4, 9)],
        };
        let (records, report) = rebuild(&survivors, &IpamConfig::default(), 100).expect("rebuild");
        assert_eq!(report.networks_rebuilt, ["web"]);
        assert_eq!(report.endpoints_rebuilt, ["app-a"]);
        assert_eq!(report.endpoints_without_kernel, ["app-b"]);
        assert_eq!(report.rules_from_backup, 1);
        assert_eq!(records[&Table::Rules]["r1"], b"{}", "the rules come from the backup");

        let state = State::decode(&records).expect("the records decode");
        let a = &state.endpoints[&network.members[0].endpoint];
        assert_eq!((a.number, a.identity, a.container.clone()), (7, Identity::INIT, None), "resolved again at start");
        let joined = a.joined.as_ref().expect("joined");
        assert_eq!((joined.sandbox, joined.host_ifindex, joined.mtu), (7, 40, 1400));
        assert_eq!(a.gateway_ipv4, Some("169.254.9.1".parse().expect("ip")));
        assert_eq!(a.gateway_ipv6, Some("fe80::7".parse().expect("ip")), "Docker's gateway of the pool");
        assert_eq!(a.published, [PublishedPort { proto: Proto::Tcp, host_ip: None, host_port: 8080, port: 80 }]);
        let b = &state.endpoints[&network.members[1].endpoint];
        assert!(b.joined.is_none() && b.number != 7 && b.number != 0, "{b:?}");
        for addr in ["10.9.0.5", "10.9.0.6", "fdc1:9::5", "fdc1:9::6"] {
            let addr: IpAddr = addr.parse().expect("ip");
            let pool = state.ipam.pool_containing(addr).expect("a pool");
            assert!(pool.recovered && pool.allocations.contains_key(&addr), "{addr} is taken");
        }
        assert!(state.next_number >= 7, "numbers handed out later skip the kernel's");
    }
}
