//! What the daemon shows of itself: endpoints and networks with their names, one endpoint in
//! full, the status (health of every subsystem and what it holds) and the kernel maps with
//! identities and addresses named. It reads; the only change it makes is `flush_ct` and the
//! network names Docker's API tells.

use std::collections::BTreeSet;
use std::net::IpAddr;

use tracing::{debug, info, warn};

use super::{Driver, DriverError};
use crate::dumps::{self, BpfEndpointView, CtList, IpcacheView, Names, NatView, PolicyEntryView};
use crate::health::{self, Health};
use crate::ids::{EndpointId, NetworkId};
use crate::state::Txn;
use crate::views::{self, EndpointDetail, EndpointView, FindError, NetworkView, StatusCounts, StatusView};

impl Driver {
    /// Uptime, the Docker connection, the last errors logged.
    pub fn health(&self) -> &Health {
        &self.health
    }

    pub async fn endpoints(&self) -> Result<Vec<EndpointView>, DriverError> {
        let mut views: Vec<EndpointView> = {
            let state = self.state();
            state
                .endpoints
                .values()
                .map(|e| views::endpoint(e, state.networks.get(&e.network).and_then(|n| n.name.as_deref())))
                .collect()
        };
        {
            let timing = self.timing();
            for v in &mut views {
                let after = EndpointId::parse(&v.id).ok().and_then(|id| timing.resolved_after.get(&id).copied());
                v.identity_after_join_us = after.map(|d| d.as_micros() as u64);
            }
        }
        let mut counters = self.datapath.counters().await?;
        Ok(views
            .into_iter()
            .map(|mut v| {
                v.counters = counters.remove(&v.number).unwrap_or_default();
                v
            })
            .collect())
    }

    pub async fn networks(&self) -> Vec<NetworkView> {
        views::networks(&self.state())
    }

    /// One endpoint in full: `query` is a container name, an endpoint id or a unique prefix
    /// of an endpoint or container id.
    pub async fn endpoint_detail(&self, query: &str) -> Result<EndpointDetail, DriverError> {
        let (mut detail, identity, labels, number, ifindex) = {
            let state = self.state();
            let ep = views::find_endpoint(&state, query).map_err(|e| match e {
                FindError::NotFound(_) => DriverError::UnknownEndpoint(e.to_string()),
                FindError::Ambiguous { .. } => DriverError::Conflict(e.to_string()),
            })?;
            let ifindex = ep.joined.as_ref().map(|j| j.host_ifindex);
            (views::endpoint_detail(&state, ep), ep.identity, ep.labels.clone(), ep.number, ifindex)
        };
        let (ingress, egress, selected_by) = self.policy.enforcement(identity, &labels).await;
        detail.policy.ingress_enforced = ingress;
        detail.policy.egress_enforced = egress;
        detail.policy.selected_by = selected_by;
        detail.policy.mode = self.policy.mode().await;
        if let Ok(id) = EndpointId::parse(&detail.endpoint.id) {
            let after = self.timing().resolved_after.get(&id).copied();
            detail.endpoint.identity_after_join_us = after.map(|d| d.as_micros() as u64);
        }
        detail.endpoint.counters = self.datapath.counters().await?.remove(&number).unwrap_or_default();
        detail.datapath_identity = match ifindex {
            Some(ifindex) => self
                .datapath
                .dump_endpoints()
                .await?
                .into_iter()
                .find(|row| row.ifindex == ifindex && row.number == number)
                .map(|row| row.identity.0),
            None => None,
        };
        Ok(detail)
    }

    /// Health of every subsystem and what the daemon holds.
    pub async fn status(&self) -> StatusView {
        let mut counts: StatusCounts = views::counts(&self.state());
        let (revision, rules, entries, identities) = self.policy.summary().await;
        counts.policy_revision = revision;
        counts.policy_rules = rules;
        counts.policy_entries = entries;
        counts.identities = identities;
        let datapath = self.datapath.info().await;
        let store = self.store.health();
        let docker = self.health.docker();
        let mut problems = health::assess(&datapath, &store, &docker);
        match self.datapath.map_counts().await {
            Ok(maps) => {
                counts.conntrack_entries = Some(maps.conntrack);
                counts.nat_out_entries = Some(maps.nat_out);
                counts.nat_in_entries = Some(maps.nat_in);
            }
            Err(e) => problems.push(format!("datapath: read the conntrack and NAT maps: {e}")),
        }
        let (errors, errors_total) = self.health.errors().recent();
        StatusView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            driver: self.config.driver_name.clone(),
            healthy: problems.is_empty(),
            problems,
            uptime_ms: u64::try_from(self.health.uptime().as_millis()).unwrap_or(u64::MAX),
            started_at: self.health.started_at(),
            datapath,
            store: Some(store),
            docker: Some(docker),
            counts,
            enforcement: self.policy.mode().await,
            errors,
            errors_total,
        }
    }

    /// Who is who: container names of addresses and endpoint numbers, labels of identities.
    async fn names(&self) -> Names {
        let identities = self.policy.identities().await;
        let host: BTreeSet<IpAddr> = self.policy.host_addresses().await;
        Names::new(&self.state(), &identities, &host)
    }

    pub async fn bpf_endpoints(&self) -> Result<Vec<BpfEndpointView>, DriverError> {
        let rows = self.datapath.dump_endpoints().await?;
        Ok(dumps::endpoints(&rows, &self.names().await))
    }

    pub async fn bpf_ipcache(&self) -> Result<Vec<IpcacheView>, DriverError> {
        let rows = self.datapath.dump_ipcache().await?;
        Ok(dumps::ipcache(&rows, &self.names().await))
    }

    pub async fn bpf_policy(&self) -> Result<Vec<PolicyEntryView>, DriverError> {
        let rows = self.datapath.dump_policy().await?;
        Ok(dumps::policy(&rows, &self.names().await))
    }

    pub async fn bpf_ct(&self) -> Result<CtList, DriverError> {
        let dump = self.datapath.dump_ct().await?;
        Ok(dumps::conntrack(&dump, &self.names().await))
    }

    pub async fn bpf_nat(&self) -> Result<Vec<NatView>, DriverError> {
        let rows = self.datapath.dump_nat().await?;
        Ok(dumps::nat(&rows, &self.names().await))
    }

    /// Removes every conntrack entry: each flow's next packet is checked by policy again.
    pub async fn flush_ct(&self) -> Result<usize, DriverError> {
        let removed = self.datapath.flush_ct().await?;
        info!(removed, "conntrack flushed");
        Ok(removed)
    }

    /// Records the names Docker gives networks (`(id, name)`, as Docker's API lists them);
    /// networks that are not ours are ignored. Returns how many names changed.
    pub fn name_networks(&self, names: &[(String, String)]) -> usize {
        let mut state = self.state();
        let changed: Vec<(NetworkId, String)> = names
            .iter()
            .filter(|(_, name)| !name.is_empty())
            .filter_map(|(id, name)| Some((NetworkId::parse(id).ok()?, name)))
            .filter(|(id, name)| state.networks.get(id).is_some_and(|n| n.name.as_ref() != Some(*name)))
            .map(|(id, name)| (id, name.clone()))
            .collect();
        if changed.is_empty() {
            return 0;
        }
        let mut txn = Txn::new(&mut state);
        for (id, name) in &changed {
            if let Some(network) = txn.touch_network(id).get_mut(id) {
                network.name = Some(name.clone());
            }
            debug!(network = id.short(), %name, "network named");
        }
        if let Err(e) = txn.commit(self.store.as_ref()) {
            warn!(error = %e, "record network names");
            return 0;
        }
        changed.len()
    }

    /// Whether the network is one of ours (a Docker event names it).
    pub fn has_network(&self, id: &str) -> bool {
        NetworkId::parse(id).is_ok_and(|id| self.state().networks.contains_key(&id))
    }
}
