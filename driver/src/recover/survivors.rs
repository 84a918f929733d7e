//! What survives a lost state, read with the daemon down: the last backup, Docker's view of
//! the networks of our driver and the containers on them, and the kernel's pinned endpoint
//! entries and host-side links.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use bpf_programs::abi::{EndpointInfo, PortKey, PortTarget};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::datapath::link::Netlink;
use crate::datapath::{readers, rows, EndpointRow};
use crate::endpoint::{host_ifname, ContainerRef};
use crate::http_unix::{get_json_within, HttpError};
use crate::ids::{EndpointId, NetworkId};
use crate::network::{parse_options, NetworkOptions};
use crate::store::Records;

const API: &str = "/v1.41";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `state recover` rebuilds from.
#[derive(Debug, Clone, Default)]
pub struct Survivors {
    /// The last backup's records (empty when there is none or it cannot be read).
    pub backup: Records,
    pub networks: Vec<SurvivingNetwork>,
    /// Host-side interface name -> what the kernel holds for the endpoint behind it.
    pub kernel: BTreeMap<String, KernelEndpoint>,
    /// The published ports the kernel forwards, by endpoint number.
    pub ports: Vec<(PortKey, PortTarget)>,
}

/// A network of our driver as Docker shows it.
#[derive(Debug, Clone)]
pub struct SurvivingNetwork {
    pub id: NetworkId,
    pub name: String,
    pub options: NetworkOptions,
    pub pools: Vec<SurvivingPool>,
    pub members: Vec<SurvivingMember>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SurvivingPool {
    pub subnet: IpNet,
    pub range: Option<IpNet>,
    pub gateway: Option<IpAddr>,
}

/// A running container's endpoint on one of those networks.
#[derive(Debug, Clone)]
pub struct SurvivingMember {
    pub endpoint: EndpointId,
    pub container: ContainerRef,
    pub mac: Option<[u8; 6]>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub sandbox_key: String,
}

/// An endpoint's host-side link and its entry in the pinned endpoint map.
#[derive(Debug, Clone)]
pub struct KernelEndpoint {
    pub ifindex: u32,
    pub host_mac: [u8; 6],
    pub mtu: u32,
    pub row: EndpointRow,
}

#[derive(Debug, Deserialize)]
struct NetworkSummary {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Driver", default)]
    driver: String,
}

#[derive(Debug, Deserialize)]
struct NetworkDetail {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "EnableIPv6", default)]
    ipv6: bool,
    #[serde(rename = "Internal", default)]
    internal: bool,
    #[serde(rename = "Options", default)]
    options: Option<Map<String, Value>>,
    #[serde(rename = "IPAM", default)]
    ipam: IpamDetail,
    #[serde(rename = "Containers", default)]
    containers: Option<BTreeMap<String, MemberDetail>>,
}

#[derive(Debug, Default, Deserialize)]
struct IpamDetail {
    #[serde(rename = "Config", default)]
    config: Option<Vec<PoolDetail>>,
}

#[derive(Debug, Deserialize)]
struct PoolDetail {
    #[serde(rename = "Subnet", default)]
    subnet: String,
    #[serde(rename = "IPRange", default)]
    range: String,
    #[serde(rename = "Gateway", default)]
    gateway: String,
}

#[derive(Debug, Deserialize)]
struct MemberDetail {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "EndpointID", default)]
    endpoint: String,
    #[serde(rename = "MacAddress", default)]
    mac: String,
    #[serde(rename = "IPv4Address", default)]
    ipv4: String,
    #[serde(rename = "IPv6Address", default)]
    ipv6: String,
}

#[derive(Debug, Deserialize)]
struct ContainerDetail {
    #[serde(rename = "NetworkSettings", default)]
    settings: Option<Settings>,
}

#[derive(Debug, Deserialize)]
struct Settings {
    #[serde(rename = "SandboxKey", default)]
    sandbox_key: String,
}

fn address(text: &str) -> Option<IpAddr> {
    text.split('/').next().and_then(|a| a.parse().ok())
}

fn mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text.split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
    bytes.try_into().ok()
}

/// Docker's networks of driver `plugin` with their running containers' endpoints.
pub async fn docker_networks(docker: &Path, plugin: &str) -> Result<Vec<SurvivingNetwork>, String> {
    let get = |uri: String| async move {
        get_json_within::<Value>(docker, &uri, CALL_TIMEOUT).await.map_err(|e: HttpError| format!("docker {uri}: {e}"))
    };
    let summaries: Vec<NetworkSummary> =
        serde_json::from_value(get(format!("{API}/networks")).await?).map_err(|e| format!("docker networks: {e}"))?;
    let mut networks = Vec::new();
    for summary in summaries.into_iter().filter(|s| s.driver == plugin) {
        let Ok(id) = NetworkId::parse(&summary.id) else { continue };
        let detail: NetworkDetail = serde_json::from_value(get(format!("{API}/networks/{id}")).await?)
            .map_err(|e| format!("docker network {id}: {e}"))?;
        let options = json!({
            plugin_spec::OPTION_ENABLE_IPV6: detail.ipv6,
            plugin_spec::OPTION_INTERNAL: detail.internal,
            plugin_spec::OPTION_GENERIC: detail.options.unwrap_or_default(),
        });
        let options = parse_options(options.as_object().unwrap_or(&Map::new()))
            .map_err(|e| format!("network {}: {e}", detail.name))?;
        let pools = detail
            .ipam
            .config
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some(SurvivingPool {
                    subnet: p.subnet.parse().ok()?,
                    range: p.range.parse().ok(),
                    gateway: address(&p.gateway),
                })
            })
            .collect();
        let mut members = Vec::new();
        for (container, member) in detail.containers.into_iter().flatten() {
            let Ok(endpoint) = EndpointId::parse(&member.endpoint) else { continue };
            if container.starts_with("ep-") {
                continue; // not joined to a container
            }
            let inspected: ContainerDetail =
                serde_json::from_value(get(format!("{API}/containers/{container}/json")).await?)
                    .map_err(|e| format!("docker container {container}: {e}"))?;
            members.push(SurvivingMember {
                endpoint,
                container: ContainerRef { id: container, name: member.name },
                mac: mac(&member.mac),
                ipv4: address(&member.ipv4).and_then(|a| match a {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                }),
                ipv6: address(&member.ipv6).and_then(|a| match a {
                    IpAddr::V6(a) => Some(a),
                    IpAddr::V4(_) => None,
                }),
                sandbox_key: inspected.settings.map(|s| s.sandbox_key).unwrap_or_default(),
            });
        }
        networks.push(SurvivingNetwork { id, name: detail.name, options, pools, members });
    }
    Ok(networks)
}

/// The pinned endpoint entries of the endpoints whose host-side links still exist, by link
/// name, and the pinned published ports.
pub async fn kernel_endpoints(
    bpf_root: &Path,
    networks: &[SurvivingNetwork],
) -> Result<(BTreeMap<String, KernelEndpoint>, Vec<(PortKey, PortTarget)>), String> {
    let (entries, ports) = readers::pinned_endpoints(bpf_root).map_err(|e| e.to_string())?;
    let by_ifindex: BTreeMap<u32, EndpointInfo> = entries.into_iter().collect();
    let netlink = Netlink::connect().map_err(|e| e.to_string())?;
    let mut kernel = BTreeMap::new();
    for member in networks.iter().flat_map(|n| &n.members) {
        let name = host_ifname(&member.endpoint);
        let Some(link) = netlink.link_by_name(&name).await.map_err(|e| e.to_string())? else { continue };
        let Some(info) = by_ifindex.get(&link.index) else { continue };
        let mtu = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
            .ok()
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(1500);
        kernel.insert(
            name,
            KernelEndpoint { ifindex: link.index, host_mac: link.mac, mtu, row: rows::endpoint_row(link.index, info) },
        );
    }
    Ok((kernel, ports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_addresses_and_macs_parse() {
        assert_eq!(address("10.1.0.5/22"), Some("10.1.0.5".parse().expect("ip")));
        assert_eq!(address(""), None);
        assert_eq!(mac("02:42:0a:01:00:05"), Some([2, 0x42, 10, 1, 0, 5]));
        assert_eq!(mac("02:42"), None);
        assert_eq!(mac(""), None);
    }
}
