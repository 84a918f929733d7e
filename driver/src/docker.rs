//! Docker Engine API client for background work only — never called while dockerd waits on a
//! plugin request (it may hold the container lock): dockerd's view of our networks for the
//! driver's reconciliation, and the lock-free calls and event stream that tell which container
//! an endpoint belongs to (`GET /networks/{id}`, `GET /containers/json`, `GET /events`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use tracing::{debug, info, warn};

use crate::driver::Driver;
use crate::http_unix::{get_json_within, percent_encode, HttpError};
use crate::ids::{EndpointId, NetworkId};
use crate::reconcile::{DockerNetwork, DockerSnapshot};
use crate::state::now;

/// API version spoken: the newest Docker 20.10 knows; later engines still accept it.
const API: &str = "/v1.41";
/// Longest wait for one answer of the Docker API.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

async fn get_json<T: serde::de::DeserializeOwned>(docker: &Path, uri: &str) -> Result<T, HttpError> {
    get_json_within(docker, uri, CALL_TIMEOUT).await
}

/// How long to wait between attempts while Docker does not answer.
const RETRY: Duration = Duration::from_secs(5);
/// After a new dockerd activated the plugin, wait this long (it replays its own clean-up
/// first, and serves its API only after its start-up) before reconciling.
const AFTER_ACTIVATION: Duration = Duration::from_secs(10);

/// The driver (and IPAM) name dockerd knows a legacy plugin by: the plugin socket's file name
/// without `.sock`. A managed plugin is known by its name with the tag (`cilium-rs:latest`),
/// which it has to be told (`--driver-name`).
pub fn plugin_name(socket: &Path) -> String {
    socket.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "cilium-rs".to_owned())
}

#[derive(Debug, Deserialize)]
struct NetworkSummary {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
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
    #[serde(rename = "Name", default)]
    name: String,
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

/// Whether `other` names the same plugin as `ours` under another tag, or with or without
/// one (`cilium-rs` and `cilium-rs:latest`): a sign the daemon was given the wrong name.
fn same_plugin_other_name(ours: &str, other: &str) -> bool {
    // A tag follows the last `:` and holds no `/` (`host:5000/cilium-rs` has none).
    let repository = |name: &str| match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo.to_owned(),
        _ => name.to_owned(),
    };
    other != ours && !other.is_empty() && repository(other) == repository(ours)
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
            if same_plugin_other_name(name, &summary.driver) {
                warn!(
                    network = %summary.name,
                    driver = %summary.driver,
                    ours = %name,
                    "a network's driver looks like ours under another name: if it is this daemon's, \
                     give it --driver-name {} (its records are reconciled away otherwise)",
                    summary.driver
                );
            }
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

/// Every network dockerd knows, as (id, name): what `network list` shows by name.
pub async fn network_names(docker: &Path) -> Result<Vec<(String, String)>, HttpError> {
    let all: Vec<NetworkSummary> = get_json(docker, &format!("{API}/networks")).await?;
    Ok(all.into_iter().map(|n| (n.id, n.name)).collect())
}

/// `GET /_ping`: whether dockerd answers at all.
pub async fn ping(docker: &Path) -> Result<(), HttpError> {
    let uri = format!("{API}/_ping");
    tokio::time::timeout(CALL_TIMEOUT, crate::http_unix::request(docker, hyper::Method::GET, &uri, None))
        .await
        .map_err(|_| HttpError::Timeout { uri, path: docker.to_owned(), after: CALL_TIMEOUT })??;
    Ok(())
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
    fn another_tag_of_our_plugin_is_told_apart_from_other_drivers() {
        assert!(same_plugin_other_name("cilium-rs", "cilium-rs:latest"));
        assert!(same_plugin_other_name("cilium-rs:latest", "cilium-rs"));
        assert!(same_plugin_other_name("cilium-rs:latest", "cilium-rs:v2"));
        assert!(!same_plugin_other_name("cilium-rs:latest", "cilium-rs:latest"));
        assert!(!same_plugin_other_name("cilium-rs", "bridge"));
        assert!(!same_plugin_other_name("cilium-rs", ""));
        assert!(!same_plugin_other_name("crs-e2e", "crs-pol"));
        assert!(same_plugin_other_name("host:5000/cilium-rs", "host:5000/cilium-rs:latest"));
    }

    #[test]
    fn addresses_parse_with_or_without_prefix() {
        assert_eq!(address_of("10.1.0.5/32"), Some("10.1.0.5".parse().expect("ip")));
        assert_eq!(address_of("fdc1::5"), Some("fdc1::5".parse().expect("ip")));
        assert_eq!(address_of(""), None);
    }
}

/// One endpoint of a network, as `GET /networks/{id}` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkMember {
    /// The container, once the endpoint is joined and stored (dockerd keys the others
    /// `ep-<endpoint id>`).
    pub container: Option<String>,
    pub endpoint: String,
    /// The endpoint's name: its container's name.
    pub name: String,
}

/// A network as `GET /networks/{id}` shows it (no container lock is taken).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkView {
    pub name: String,
    pub members: Vec<NetworkMember>,
}

/// `GET /networks/{id}`; `None` when dockerd does not know the network.
pub async fn inspect_network(docker: &Path, id: &NetworkId) -> Result<Option<NetworkView>, HttpError> {
    let detail: NetworkDetail = match get_json(docker, &format!("{API}/networks/{id}")).await {
        Ok(detail) => detail,
        Err(e) if e.status() == Some(hyper::StatusCode::NOT_FOUND) => return Ok(None),
        Err(e) => return Err(e),
    };
    let members = detail
        .containers
        .into_iter()
        .flatten()
        .map(|(key, entry)| NetworkMember {
            container: (!key.starts_with("ep-")).then_some(key),
            endpoint: entry.endpoint_id,
            name: entry.name,
        })
        .collect();
    Ok(Some(NetworkView { name: detail.name, members }))
}

#[derive(Debug, Deserialize)]
struct ContainerSummary {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names", default)]
    names: Vec<String>,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

/// A container's name and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// `GET /containers/json?all=1&filters={"id":[id]}` (an in-memory snapshot in dockerd: no
/// container lock); `None` when dockerd does not know the container.
pub async fn container(docker: &Path, id: &str) -> Result<Option<ContainerInfo>, HttpError> {
    let filters = serde_json::json!({ "id": [id] }).to_string();
    let uri = format!("{API}/containers/json?all=1&filters={}", percent_encode(&filters));
    let list: Vec<ContainerSummary> = get_json(docker, &uri).await?;
    Ok(list.into_iter().find(|c| c.id == id).map(|c| ContainerInfo {
        id: c.id,
        name: c.names.first().map(|n| n.trim_start_matches('/').to_owned()).unwrap_or_default(),
        labels: c.labels.unwrap_or_default(),
    }))
}

/// One Docker event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DockerEvent {
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(rename = "Action", default)]
    pub action: String,
    #[serde(rename = "Actor", default)]
    pub actor: EventActor,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EventActor {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(rename = "Attributes", default)]
    pub attributes: BTreeMap<String, String>,
}

/// Docker's event stream (`GET /events`), one event at a time.
pub struct EventStream {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStream")
    }
}

/// Largest event accepted (Docker's are a few hundred bytes plus labels).
const MAX_EVENT: usize = 1 << 20;

/// Subscribes to network create/destroy/connect/disconnect and container rename/destroy
/// events.
pub async fn events(docker: &Path) -> Result<EventStream, HttpError> {
    let filters = serde_json::json!({
        "type": ["network", "container"],
        "event": ["create", "connect", "disconnect", "rename", "destroy"],
    })
    .to_string();
    let body =
        crate::http_unix::get_streaming(docker, &format!("{API}/events?filters={}", percent_encode(&filters))).await?;
    Ok(EventStream { body, buffer: Vec::new() })
}

impl EventStream {
    /// The next event; `None` when dockerd closed the stream (it restarted, say).
    pub async fn next(&mut self) -> Option<DockerEvent> {
        use http_body_util::BodyExt;
        loop {
            while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                match serde_json::from_slice::<DockerEvent>(&line) {
                    Ok(event) => return Some(event),
                    Err(e) if line.iter().all(u8::is_ascii_whitespace) => drop(e),
                    Err(e) => warn!(error = %e, "undecodable docker event skipped"),
                }
            }
            if self.buffer.len() > MAX_EVENT {
                warn!(bytes = self.buffer.len(), "docker event too large: skipped");
                self.buffer.clear();
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
            }
        }
    }
}
