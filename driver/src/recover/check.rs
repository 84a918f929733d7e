//! `cilium-rs state check`: the differences between the daemon's state, the kernel's endpoint
//! entries and Docker's view of our networks and their running containers. Pure: the command
//! fetches the three views.

use std::collections::{BTreeMap, BTreeSet};

use crate::dumps::BpfEndpointView;
use crate::views::{EndpointView, NetworkView};

use super::survivors::SurvivingNetwork;

/// Every difference, one sentence each (empty: the three agree).
pub fn differences(
    networks: &[NetworkView],
    endpoints: &[EndpointView],
    kernel: &[BpfEndpointView],
    docker: &[SurvivingNetwork],
) -> Vec<String> {
    let mut found = Vec::new();
    let ours: BTreeSet<&str> = networks.iter().map(|n| n.id.as_str()).collect();
    let theirs: BTreeSet<&str> = docker.iter().map(|n| n.id.as_str()).collect();
    for network in docker.iter().filter(|n| !ours.contains(n.id.as_str())) {
        found.push(format!(
            "network {} ({}) is Docker's, missing from the state",
            network.name,
            short(network.id.as_str())
        ));
    }
    for network in networks.iter().filter(|n| !theirs.contains(n.id.as_str())) {
        found.push(format!("network {} is in the state, not in Docker", short(&network.id)));
    }
    let by_id: BTreeMap<&str, &EndpointView> = endpoints.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut in_docker = BTreeSet::new();
    for (network, member) in docker.iter().flat_map(|n| n.members.iter().map(move |m| (n, m))) {
        in_docker.insert(member.endpoint.as_str());
        let who = format!("container {} on {}", member.container.name, network.name);
        let Some(endpoint) = by_id.get(member.endpoint.as_str()) else {
            found.push(format!(
                "{who}: endpoint {} is Docker's, missing from the state",
                short(member.endpoint.as_str())
            ));
            continue;
        };
        let docker_v4 = member.ipv4.map(|a| a.to_string());
        let docker_v6 = member.ipv6.map(|a| a.to_string());
        if docker_v4.is_some() && docker_v4 != endpoint.ipv4 {
            found.push(format!("{who}: Docker says IPv4 {docker_v4:?}, the state {:?}", endpoint.ipv4));
        }
        if docker_v6.is_some() && docker_v6 != endpoint.ipv6 {
            found.push(format!("{who}: Docker says IPv6 {docker_v6:?}, the state {:?}", endpoint.ipv6));
        }
        if !endpoint.joined {
            found.push(format!("{who}: running, but its endpoint is not joined in the state"));
        }
    }
    for endpoint in endpoints.iter().filter(|e| !in_docker.contains(e.id.as_str()) && e.joined) {
        found.push(format!("endpoint {} is joined in the state, not running in Docker", short(&endpoint.id)));
    }
    let by_ifindex: BTreeMap<u32, &BpfEndpointView> = kernel.iter().map(|k| (k.ifindex, k)).collect();
    for endpoint in endpoints.iter().filter(|e| e.joined) {
        let who = format!("endpoint {}", short(&endpoint.id));
        match endpoint.host_ifindex.and_then(|i| by_ifindex.get(&i)) {
            None => found.push(format!("{who}: joined, but the kernel has no entry for {}", endpoint.host_ifname)),
            Some(k) if k.number != endpoint.number => {
                found.push(format!("{who}: number {} in the state, {} in the kernel", endpoint.number, k.number));
            }
            Some(k) if k.ipv4 != endpoint.ipv4 || k.ipv6 != endpoint.ipv6 => found.push(format!(
                "{who}: addresses {:?}/{:?} in the state, {:?}/{:?} in the kernel",
                endpoint.ipv4, endpoint.ipv6, k.ipv4, k.ipv6
            )),
            Some(_) => {}
        }
    }
    let joined: BTreeSet<u32> = endpoints.iter().filter(|e| e.joined).filter_map(|e| e.host_ifindex).collect();
    for entry in kernel.iter().filter(|k| !joined.contains(&k.ifindex)) {
        found.push(format!(
            "the kernel has an entry for interface {} (endpoint number {}) that no joined endpoint of the state has",
            entry.host_ifname.clone().unwrap_or_else(|| entry.ifindex.to_string()),
            entry.number
        ));
    }
    found
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
