//! Endpoint identities resolved in the background: each joined endpoint is matched to its
//! container through dockerd's lock-free views — `GET /networks/{id}` lists the endpoint under
//! its container's id as soon as Join returned, `GET /containers/json` gives the labels — woken
//! by Join itself and by Docker's network events, and the driver is handed the labels. A plugin
//! request never waits for any of this (dockerd holds the container lock while it calls us).
//!
//! The match is by endpoint id, so it is never ambiguous: until dockerd lists the endpoint
//! under a container, the endpoint stays `init`.
//!
//! The same event follower names networks (dockerd never sends a driver their names) and
//! records how the Docker connection is for the status.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::docker::{self, NetworkView};
use crate::driver::Driver;
use crate::endpoint::ContainerRef;
use crate::health::DOCKER_PING;
use crate::ids::{EndpointId, NetworkId};

/// Delays between attempts for one endpoint: dockerd stores the endpoint right after Join
/// returns, so the first attempts come quickly.
const BACKOFF_MS: [u64; 10] = [1, 2, 5, 10, 20, 50, 100, 250, 500, 1000];
/// After this long an endpoint is retried only every `SLOW_RETRY` (nothing in dockerd claims
/// it, e.g. it was made by hand through the plugin socket).
const PATIENCE: Duration = Duration::from_secs(60);
const SLOW_RETRY: Duration = Duration::from_secs(10);
/// How long to wait for Docker's event stream before trying it again.
const EVENTS_RETRY: Duration = Duration::from_secs(2);

/// One endpoint waiting for its identity.
struct Pending {
    network: NetworkId,
    since: Instant,
    attempts: usize,
    next: Instant,
}

impl Pending {
    fn delay(&self) -> Duration {
        if self.since.elapsed() > PATIENCE {
            return SLOW_RETRY;
        }
        Duration::from_millis(BACKOFF_MS[self.attempts.min(BACKOFF_MS.len() - 1)])
    }
}

/// Resolves identities until the daemon stops.
pub async fn resolve_forever(driver: Arc<Driver>, docker: PathBuf) {
    let wake = Arc::new(Notify::new());
    let _events = AbortOnDrop(tokio::spawn(follow_events(driver.clone(), docker.clone(), wake.clone())));
    let mut pending: BTreeMap<EndpointId, Pending> = BTreeMap::new();
    let mut reachable = true;
    loop {
        let now = Instant::now();
        for (network, id) in driver.unresolved_endpoints() {
            pending.entry(id).or_insert(Pending { network, since: now, attempts: 0, next: now });
        }
        let live: BTreeSet<EndpointId> = driver.unresolved_endpoints().into_iter().map(|(_, id)| id).collect();
        pending.retain(|id, _| live.contains(id));

        let due: Vec<(EndpointId, NetworkId)> =
            pending.iter().filter(|(_, p)| p.next <= now).map(|(id, p)| (id.clone(), p.network.clone())).collect();
        if !due.is_empty() {
            match resolve(&driver, &docker, &due).await {
                Ok(resolved) => {
                    reachable = true;
                    for id in resolved {
                        pending.remove(&id);
                    }
                }
                Err(e) => {
                    if reachable {
                        warn!(error = %e, docker = %docker.display(), "docker API unreachable: identities wait");
                        reachable = false;
                    }
                }
            }
            let now = Instant::now();
            for (id, _) in &due {
                if let Some(p) = pending.get_mut(id) {
                    p.attempts += 1;
                    p.next = now + p.delay();
                }
            }
        }
        let sleep =
            pending.values().map(|p| p.next).min().map_or(SLOW_RETRY, |t| t.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = driver.endpoint_joined() => {}
            _ = wake.notified() => {
                // A connect event: whatever waits on that network is due now.
                let now = Instant::now();
                for p in pending.values_mut() {
                    p.next = p.next.min(now);
                }
            }
        }
    }
}

/// Stops the event follower with the resolution.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Tries to resolve `due`; returns the endpoints that got their identity.
async fn resolve(
    driver: &Driver,
    docker: &std::path::Path,
    due: &[(EndpointId, NetworkId)],
) -> Result<Vec<EndpointId>, crate::http_unix::HttpError> {
    let mut views: BTreeMap<NetworkId, Option<NetworkView>> = BTreeMap::new();
    let mut resolved = Vec::new();
    for (id, network) in due {
        if !views.contains_key(network) {
            views.insert(network.clone(), docker::inspect_network(docker, network).await?);
        }
        let Some(Some(view)) = views.get(network) else { continue };
        let Some(member) = view.members.iter().find(|m| m.endpoint == id.as_str()) else { continue };
        let Some(container_id) = &member.container else { continue };
        let Some(container) = docker::container(docker, container_id).await? else {
            debug!(endpoint = id.short(), container = %container_id, "container not listed yet");
            continue;
        };
        let reference = ContainerRef { id: container.id.clone(), name: container.name.clone() };
        match driver.assign_identity(network, id, reference, &container.labels, &view.name).await {
            Ok(_) => resolved.push(id.clone()),
            Err(e) => warn!(endpoint = id.short(), error = %e, "assign identity"),
        }
    }
    Ok(resolved)
}

/// Follows Docker's events and keeps the connection's health: at each (re)connect the network
/// names are read again; a network create names a network, a connect (sent right after Join)
/// wakes the resolution, a rename updates the endpoints' container names, and a network of ours
/// destroyed behind our back asks for a reconciliation. While nothing happens dockerd is
/// pinged, so the status knows how long ago it last answered.
async fn follow_events(driver: Arc<Driver>, docker: PathBuf, wake: Arc<Notify>) {
    let health = driver.health();
    health.docker_socket(&docker);
    loop {
        match docker::events(&docker).await {
            Ok(mut stream) => {
                if health.docker().connects > 0 {
                    info!(docker = %docker.display(), "docker connection back");
                }
                health.docker_connected();
                debug!("following docker events");
                match docker::network_names(&docker).await {
                    Ok(names) => {
                        driver.name_networks(&names);
                    }
                    Err(e) => health.docker_error(&format!("list networks: {e}")),
                }
                // Whatever happened while we were not listening.
                wake.notify_one();
                let mut ping = tokio::time::interval(DOCKER_PING);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let ended = loop {
                    tokio::select! {
                        event = stream.next() => match event {
                            Some(event) => {
                                health.docker_heard();
                                handle_event(&driver, &event, &wake);
                            }
                            None => break "dockerd closed the event stream".to_owned(),
                        },
                        _ = ping.tick() => match docker::ping(&docker).await {
                            Ok(()) => health.docker_heard(),
                            Err(e) => health.docker_error(&format!("ping: {e}")),
                        },
                    }
                };
                warn!(docker = %docker.display(), error = %ended, "docker connection lost; reconnecting");
                health.docker_lost(&ended);
            }
            Err(e) => {
                debug!(error = %e, "docker events unavailable");
                health.docker_lost(&e.to_string());
            }
        }
        tokio::time::sleep(EVENTS_RETRY).await;
    }
}

fn handle_event(driver: &Driver, event: &docker::DockerEvent, wake: &Notify) {
    let name = || event.actor.attributes.get("name").map(|n| n.trim_start_matches('/').to_owned());
    match (event.kind.as_str(), event.action.as_str()) {
        ("network", "connect") => wake.notify_one(),
        ("network", "create") => {
            if let Some(name) = name() {
                driver.name_networks(&[(event.actor.id.clone(), name)]);
            }
        }
        ("network", "destroy") if driver.has_network(&event.actor.id) => {
            info!(network = %event.actor.id, "docker removed a network of ours without telling us: reconciling");
            driver.request_reconcile();
        }
        ("container", "rename") => {
            if let Some(name) = name() {
                info!(container = %event.actor.id, %name, "container renamed");
                driver.container_renamed(&event.actor.id, &name);
            }
        }
        _ => {}
    }
}
