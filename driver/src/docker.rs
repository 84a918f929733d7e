//! Docker Engine API client for background work only — never called while dockerd waits on a
//! plugin request (it may hold the container lock): reads dockerd's view of our networks and
//! feeds it to the driver's reconciliation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use tracing::{debug, info, warn};

use crate::driver::Driver;
use crate::http_unix::{get_json, HttpError};
use crate::ids::{EndpointId, NetworkId};
use crate::reconcile::{DockerNetwork, DockerSnapshot};
use crate::state::now;

/// API version spoken: the newest Docker 20.10 knows; later engines still accept it.
const API: &str = "/v1.41";
/// How long to wait between attempts while Docker does not answer.
const RETRY: Duration = Duration::from_secs(5);
/// After a new dockerd activated the plugin, wait this long (it replays its own clean-up
/// first, and serves its API only after its start-up) before reconciling.
const AFTER_ACTIVATION: Duration = Duration::from_secs(10);

/// The driver (and IPAM) name dockerd knows us by: the plugin socket's file name without `.sock`.
pub fn plugin_name(socket: &Path) -> String {
    socket.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "cilium-rs".to_owned())
}

#[derive(Debug, Deserialize)]
struct NetworkSummary {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Driver", default)]
    driver: String,
    #[serde(rename = "IPAM", default)]
    ipam: Ipam,
}

#[derive(Debug, Default, Deserialize)]
struct Ipam {
    #[serde(rename = "Driver", default)]
    driver: String,
    #[serde(rename = "Config", default)]
    config: Option<Vec<IpamConfig>>,
}

#[derive(Debug, Default, Deserialize)]
struct IpamConfig {
    #[serde(rename = "Subnet", default)]
    subnet: String,
    #[serde(rename = "Gateway", default)]
    gateway: String,
    #[serde(rename = "AuxiliaryAddresses", default)]
    aux: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct NetworkDetail {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Containers", default)]
    containers: Option<BTreeMap<String, ContainerEntry>>,
}

#[derive(Debug, Deserialize)]
struct ContainerEntry {
    #[serde(rename = "EndpointID", default)]
    endpoint_id: String,
    #[serde(rename = "IPv4Address", default)]
    ipv4: String,
    #[serde(rename = "IPv6Address", default)]
    ipv6: String,
}

fn address_of(text: &str) -> Option<IpAddr> {
    let bare = text.split('/').next().unwrap_or(text);
    bare.parse().ok()
}

/// Reads dockerd's networks, endpoints and IPAM reservations that concern `name`.
pub async fn snapshot(docker: &Path, name: &str) -> Result<DockerSnapshot, HttpError> {
    let taken_at = now();
    let all: Vec<NetworkSummary> = get_json(docker, &format!("{API}/networks")).await?;
    let mut snap = DockerSnapshot { taken_at, ..DockerSnapshot::default() };
    for summary in all {
        let ours_driver = summary.driver == name;
        let ours_ipam = summary.ipam.driver == name;
        if !ours_driver && !ours_ipam {
            continue;
        }
        for config in summary.ipam.config.iter().flatten() {
            snap.subnets.extend(config.subnet.parse::<IpNet>().ok());
            snap.addresses.extend(address_of(&config.gateway));
            snap.addresses.extend(config.aux.iter().flatten().filter_map(|(_, a)| address_of(a)));
        }
        let detail: NetworkDetail = match get_json(docker, &format!("{API}/networks/{}", summary.id)).await {
            Ok(detail) => detail,
            // Removed between the list and the inspect.
            Err(e) if e.status() == Some(hyper::StatusCode::NOT_FOUND) => continue,
            Err(e) => return Err(e),
        };
        let mut network = DockerNetwork { name: detail.name, endpoints: BTreeSet::new() };
        for entry in detail.containers.iter().flat_map(|c| c.values()) {
            snap.addresses.extend(address_of(&entry.ipv4));
            snap.addresses.extend(address_of(&entry.ipv6));
            if let Ok(id) = EndpointId::parse(&entry.endpoint_id) {
                network.endpoints.insert(id);
            }
        }
        if ours_driver {
            if let Ok(id) = NetworkId::parse(&summary.id) {
                snap.networks.insert(id, network);
            }
        }
    }
    Ok(snap)
}

/// Reconciles at start (as soon as Docker answers) and then periodically, in the background.
pub async fn reconcile_forever(driver: Arc<Driver>, docker: PathBuf, name: String, period: Duration) {
    let mut reachable = true;
    loop {
        match snapshot(&docker, &name).await {
            Ok(snap) => {
                reachable = true;
                debug!(networks = snap.networks.len(), "docker snapshot");
                match driver.reconcile(&snap).await {
                    Ok(report) if report.is_empty() => {}
                    Ok(report) => info!(?report, "reconciled with docker"),
                    Err(e) => warn!(error = %e, "reconcile with docker"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = driver.reconcile_requested() => {
                        debug!("plugin activated by dockerd: reconciling shortly");
                        tokio::time::sleep(AFTER_ACTIVATION).await;
                    }
                }
            }
            Err(e) => {
                if reachable {
                    warn!(error = %e, docker = %docker.display(), "docker API unreachable; will retry");
                    reachable = false;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_name_is_the_socket_stem() {
        assert_eq!(plugin_name(Path::new("/run/docker/plugins/cilium-rs.sock")), "cilium-rs");
        assert_eq!(plugin_name(Path::new("/run/docker/plugins/crs-e2e.sock")), "crs-e2e");
    }

    #[test]
    fn addresses_parse_with_or_without_prefix() {
        assert_eq!(address_of("10.1.0.5/32"), Some("10.1.0.5".parse().expect("ip")));
        assert_eq!(address_of("fdc1::5"), Some("fdc1::5".parse().expect("ip")));
        assert_eq!(address_of(""), None);
    }
}
