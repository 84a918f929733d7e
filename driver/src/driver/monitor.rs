//! The driver's side of the monitor: starting the event reader, naming what events refer to
//! (the directory), and tracing an endpoint while someone watches it.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::{Driver, DriverError};
use crate::datapath::events::EventRateLimit;
use crate::datapath::EndpointDesired;
use crate::endpoint::Endpoint;
use crate::ids::EndpointId;
use crate::monitor::event::{protocol_name, Directory, Named};
use crate::monitor::flows::Tracked;
use crate::monitor::service_map::{self, MapEndpoint, ServiceMap};

/// How many monitors trace each endpoint (in memory only: a restart traces nothing).
#[derive(Debug, Default)]
pub(super) struct Traced(HashMap<EndpointId, usize>);

/// Traces an endpoint until dropped.
#[derive(Debug)]
pub struct TraceGuard {
    driver: Weak<Driver>,
    endpoint: EndpointId,
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        let Some(driver) = self.driver.upgrade() else { return };
        let endpoint = self.endpoint.clone();
        let untraced = {
            let mut traced = driver.traced();
            match traced.0.get_mut(&endpoint) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    traced.0.remove(&endpoint);
                    true
                }
                None => false,
            }
        };
        if untraced {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = driver.reapply(&endpoint).await {
                        tracing::warn!(endpoint = endpoint.short(), error = %e, "stop tracing");
                    }
                });
            }
        }
    }
}

impl Driver {
    fn traced(&self) -> std::sync::MutexGuard<'_, Traced> {
        self.traced.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the kernel must hold for `endpoint` (see [`Endpoint::desired`]), traced or not.
    pub(super) fn desired_of(&self, endpoint: &Endpoint, deliver: bool) -> Option<EndpointDesired> {
        let mut desired = endpoint.desired(deliver)?;
        desired.trace = self.traced().0.contains_key(&endpoint.id);
        Some(desired)
    }

    /// Applies an endpoint's desired state again (after a change of what is not persisted).
    async fn reapply(&self, id: &EndpointId) -> Result<(), DriverError> {
        let _held = self.endpoint_locks.lock(id).await;
        let endpoint = self.state().endpoints.get(id).cloned();
        if let Some(desired) = endpoint.as_ref().and_then(|e| self.desired_of(e, true)) {
            self.datapath.apply_endpoint(&desired).await?;
        }
        Ok(())
    }

    /// The endpoint `who` names: its container's name, an endpoint id or a unique prefix of an
    /// endpoint or container id.
    pub fn find_endpoint(&self, who: &str) -> Result<EndpointId, DriverError> {
        match crate::views::find_endpoint(&self.state(), who) {
            Ok(endpoint) => Ok(endpoint.id.clone()),
            Err(e @ crate::views::FindError::NotFound(_)) => Err(DriverError::UnknownEndpoint(e.to_string())),
            Err(e) => Err(DriverError::BadRequest(e.to_string())),
        }
    }

    /// Makes every packet of endpoint `who` an event until the guard is dropped.
    pub async fn trace(self: &Arc<Self>, who: &str) -> Result<TraceGuard, DriverError> {
        let id = self.find_endpoint(who)?;
        let first = {
            let mut traced = self.traced();
            let n = traced.0.entry(id.clone()).or_insert(0);
            *n += 1;
            *n == 1
        };
        let guard = TraceGuard { driver: Arc::downgrade(self), endpoint: id.clone() };
        if first {
            self.reapply(&id).await?;
        }
        Ok(guard)
    }

    /// Starts turning the programs' events into monitor lines (once; later calls do nothing).
    pub async fn start_monitor(self: &Arc<Self>, limit: EventRateLimit) -> Result<(), DriverError> {
        self.datapath.set_event_rate(limit).await?;
        let Some(events) = self.datapath.start_events().await? else { return Ok(()) };
        let (for_names, for_counts) = (Arc::downgrade(self), Arc::downgrade(self));
        let directory = move || for_names.upgrade().map(|d| d.directory()).unwrap_or_default();
        // The pinned counts go back to before this daemon: metrics count from the first reading.
        let emitted_before = Arc::new(std::sync::Mutex::new(None::<u64>));
        let counts = move || -> futures::future::BoxFuture<'static, _> {
            let (driver, emitted_before) = (for_counts.upgrade(), emitted_before.clone());
            Box::pin(async move {
                let driver = driver?;
                let counts = driver.datapath.event_counts().await.ok()?;
                let before = emitted_before.lock().unwrap_or_else(|p| p.into_inner()).replace(counts.emitted);
                if let Some(before) = before {
                    driver.metrics().add_ring_events(counts.emitted.saturating_sub(before));
                }
                driver.metrics().set_suppressed_events(counts.suppressed);
                Some(counts)
            })
        };
        tokio::spawn(self.monitor.clone().run(events, directory, counts));
        tokio::spawn(account_flows(Arc::downgrade(self)));
        Ok(())
    }

    /// The monitor's lines.
    pub fn monitor(&self) -> &Arc<crate::monitor::Monitor> {
        &self.monitor
    }

    /// What names the ends of packets now: endpoint addresses and numbers, and the non-endpoint
    /// identities of policy (host addresses, CIDRs; the previous ones while policy is busy).
    pub fn directory(&self) -> Directory {
        let mut directory = Directory { cidrs: self.policy.ipcache_snapshot(), ..Directory::default() };
        let state = self.state();
        for endpoint in state.endpoints.values() {
            let named = Named {
                endpoint: endpoint.id.short().to_owned(),
                container: endpoint.container.as_ref().map(|c| c.name.clone()),
                identity: endpoint.identity,
            };
            for address in endpoint.addresses() {
                directory.by_address.insert(address, named.clone());
            }
            directory.by_number.insert(endpoint.number, named);
        }
        directory
    }

    /// The service map: every endpoint (named, grouped by network) and the recent flows.
    pub fn service_map(&self) -> ServiceMap {
        let endpoints: Vec<MapEndpoint> = {
            let state = self.state();
            state
                .endpoints
                .values()
                .map(|e| MapEndpoint {
                    id: e.id.short().to_owned(),
                    name: e.container.as_ref().map_or_else(|| e.id.short().to_owned(), |c| c.name.clone()),
                    network: state
                        .networks
                        .get(&e.network)
                        .and_then(|n| n.name.clone())
                        .unwrap_or_else(|| e.network.short().to_owned()),
                    identity: e.identity,
                })
                .collect()
        };
        service_map::build(&endpoints, &self.monitor.flows())
    }
}

/// How often the allowed flows' packets and bytes are taken from connection tracking.
const ACCOUNT_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes the allowed flows' packets and bytes from connection tracking, every few seconds
/// while the driver lives (one scan of crs_ct each time).
async fn account_flows(driver: Weak<Driver>) {
    loop {
        tokio::time::sleep(ACCOUNT_PERIOD).await;
        let Some(driver) = driver.upgrade() else { return };
        let Ok(ct) = driver.datapath.dump_ct().await else { continue };
        let tracked: Vec<Tracked> = ct
            .rows
            .iter()
            .map(|row| Tracked {
                initiator: row.initiator.0,
                responder: row.responder.0,
                port: (row.proto == 6 || row.proto == 17).then_some(row.responder.1),
                protocol: protocol_name(row.proto),
                packets: row.packets[0] + row.packets[1],
                bytes: row.bytes[0] + row.bytes[1],
            })
            .collect();
        driver.monitor.account(&tracked);
    }
}
