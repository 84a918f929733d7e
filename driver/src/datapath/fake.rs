//! A recording fake of the datapath for unit and handler tests: it keeps the would-be kernel
//! state in memory, logs every call, and fails any operation on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use ipnet::IpNet;

use super::ledger::CounterLedger;
use super::{
    Counters, CtDump, CtRow, Datapath, DatapathError, DatapathInfo, DatapathMetrics, EgressDesired, EndpointDesired,
    EndpointRow, HostLink, MapCounts, NatRow, NatSide, PolicyDesired, PolicyView, RestoreReport, VethSpec,
};
use crate::identity::Identity;
use crate::policy::{PolicyEntry, PolicyKey};

#[derive(Debug, Default)]
pub struct FakeKernel {
    /// Every call, as "operation argument".
    pub calls: Vec<String>,
    /// Host-side veths by name (peers are implied).
    pub links: BTreeMap<String, HostLink>,
    pub attached: BTreeSet<String>,
    /// Applied endpoints by host ifname.
    pub installed: BTreeMap<String, EndpointDesired>,
    pub counters: BTreeMap<u32, Counters>,
    /// The totals metrics show (as the Linux datapath keeps them).
    pub ledger: CounterLedger,
    /// What `metrics` reports for crs_ct, crs_nat_out and crs_nat_in.
    pub conntrack_entries: u64,
    pub nat_out_entries: u64,
    pub nat_in_entries: u64,
    /// Operations that fail until cleared, e.g. "attach".
    pub failing: BTreeSet<String>,
    pub host_prefixes: Vec<IpNet>,
    pub host_addresses: Vec<std::net::IpAddr>,
    pub next_index: u32,
    /// The policy as last applied.
    pub policy: PolicyDesired,
    /// Bumped whenever the applied policy changed.
    pub policy_revision: u32,
    /// Interfaces `egress_links` finds: those with a default route, and the others.
    pub default_routes: Vec<EgressDesired>,
    pub other_links: Vec<EgressDesired>,
    /// The egress interfaces as last applied.
    pub egress: Vec<EgressDesired>,
    pub nat_ports: Option<(u16, u16)>,
    /// The event budget as last set.
    pub event_rate: Option<super::events::EventRateLimit>,
    /// What `event_counts` answers.
    pub event_counts: super::events::EventCounts,
    /// Where `start_events` hands its events from (tests send through `events_tx`).
    pub events_rx: Option<tokio::sync::mpsc::Receiver<bpf_programs::abi::Event>>,
    pub events_tx: Option<tokio::sync::mpsc::Sender<bpf_programs::abi::Event>>,
    /// What `dump_ct` and `dump_nat` find (the programs would have written them).
    pub ct: Vec<CtRow>,
    pub nat: Vec<NatRow>,
    /// The programs are not loaded (`info` says so).
    pub unloaded: bool,
    /// Pins `info` reports missing.
    pub missing_pins: Vec<String>,
}

#[derive(Debug, Default)]
pub struct FakeDatapath {
    kernel: Mutex<FakeKernel>,
    /// Operations that wait for a permit before they run (see [`FakeDatapath::hold`]).
    gates: Mutex<BTreeMap<String, std::sync::Arc<tokio::sync::Semaphore>>>,
}

impl FakeDatapath {
    pub fn new() -> Self {
        FakeDatapath::default()
    }

    pub fn kernel(&self) -> MutexGuard<'_, FakeKernel> {
        self.kernel.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes `operation` fail until `heal` is called.
    pub fn fail(&self, operation: &str) {
        self.kernel().failing.insert(operation.to_owned());
    }

    pub fn heal(&self) {
        self.kernel().failing.clear();
    }

    /// Makes every later call of `operation` wait until the returned semaphore gets a permit
    /// (one per call): a kernel step that takes as long as the test wants.
    pub fn hold(&self, operation: &str) -> std::sync::Arc<tokio::sync::Semaphore> {
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        self.gates.lock().unwrap_or_else(|p| p.into_inner()).insert(operation.to_owned(), gate.clone());
        gate
    }

    async fn gate(&self, operation: &str) {
        let gate = self.gates.lock().unwrap_or_else(|p| p.into_inner()).get(operation).cloned();
        if let Some(gate) = gate {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
        }
    }

    /// Number of calls made of `operation`.
    pub fn count(&self, operation: &str) -> usize {
        self.kernel().calls.iter().filter(|c| c.split(' ').next() == Some(operation)).count()
    }

    fn enter(&self, operation: &str, argument: &str) -> Result<MutexGuard<'_, FakeKernel>, DatapathError> {
        let mut kernel = self.kernel();
        kernel.calls.push(format!("{operation} {argument}"));
        if kernel.failing.contains(operation) {
            return Err(DatapathError::Other(format!("{operation} {argument}: injected failure")));
        }
        Ok(kernel)
    }
}

#[async_trait::async_trait]
impl Datapath for FakeDatapath {
    async fn host_prefixes(&self) -> Result<Vec<IpNet>, DatapathError> {
        Ok(self.enter("host_prefixes", "")?.host_prefixes.clone())
    }

    async fn host_addresses(&self) -> Result<Vec<std::net::IpAddr>, DatapathError> {
        Ok(self.enter("host_addresses", "")?.host_addresses.clone())
    }

    async fn default_mtu(&self) -> Result<u32, DatapathError> {
        drop(self.enter("default_mtu", "")?);
        Ok(1500)
    }

    async fn create_veth(&self, spec: &VethSpec) -> Result<HostLink, DatapathError> {
        drop(self.enter("create_veth", &spec.host_ifname)?);
        self.gate("create_veth").await;
        let mut kernel = self.kernel();
        kernel.next_index += 1;
        let index = 100 + kernel.next_index;
        let link = HostLink { index, mac: [0x02, 0xfe, 0, 0, (index >> 8) as u8, index as u8] };
        kernel.links.insert(spec.host_ifname.clone(), link);
        Ok(link)
    }

    async fn delete_veth(&self, host_ifname: &str) -> Result<(), DatapathError> {
        let mut kernel = self.enter("delete_veth", host_ifname)?;
        kernel.links.remove(host_ifname);
        kernel.attached.remove(host_ifname);
        Ok(())
    }

    async fn attach(&self, host_ifname: &str) -> Result<(), DatapathError> {
        let mut kernel = self.enter("attach", host_ifname)?;
        if !kernel.links.contains_key(host_ifname) {
            return Err(DatapathError::Other(format!("attach {host_ifname}: no such device")));
        }
        kernel.attached.insert(host_ifname.to_owned());
        Ok(())
    }

    async fn detach(&self, host_ifname: &str) -> Result<(), DatapathError> {
        self.enter("detach", host_ifname)?.attached.remove(host_ifname);
        Ok(())
    }

    async fn apply_endpoint(&self, desired: &EndpointDesired) -> Result<(), DatapathError> {
        let mut kernel = self.enter("apply_endpoint", &desired.host_ifname)?;
        kernel.installed.retain(|_, e| e.number != desired.number);
        kernel.installed.insert(desired.host_ifname.clone(), desired.clone());
        kernel.counters.entry(desired.number).or_default();
        Ok(())
    }

    async fn forget_orphan(&self, host_ifname: &str) -> Result<(), DatapathError> {
        let mut kernel = self.enter("forget_orphan", host_ifname)?;
        let orphans: Vec<u32> =
            kernel.installed.values().filter(|e| e.host_ifname == host_ifname).map(|e| e.number).collect();
        kernel.installed.retain(|_, e| e.host_ifname != host_ifname);
        for number in orphans {
            let last = kernel.counters.remove(&number);
            kernel.ledger.removed(number, last.as_ref());
        }
        Ok(())
    }

    async fn remove_endpoint(&self, number: u32) -> Result<(), DatapathError> {
        let mut kernel = self.enter("remove_endpoint", &number.to_string())?;
        kernel.installed.retain(|_, e| e.number != number);
        let last = kernel.counters.remove(&number);
        kernel.ledger.removed(number, last.as_ref());
        Ok(())
    }

    async fn apply_policy(&self, desired: PolicyView<'_>) -> Result<(), DatapathError> {
        drop(self.enter("apply_policy", &desired.entries.len().to_string())?);
        self.gate("apply_policy").await;
        let mut kernel = self.kernel();
        let desired = PolicyDesired { entries: desired.entries.clone(), ipcache: desired.ipcache.clone() };
        if kernel.policy != desired {
            kernel.policy = desired;
            kernel.policy_revision += 1;
        }
        Ok(())
    }

    async fn egress_links(&self, names: Option<&[String]>) -> Result<Vec<EgressDesired>, DatapathError> {
        let kernel = self.enter("egress_links", &names.map(|n| n.join(",")).unwrap_or_default())?;
        Ok(match names {
            None => kernel.default_routes.clone(),
            Some(names) => names
                .iter()
                .filter_map(|n| kernel.default_routes.iter().chain(&kernel.other_links).find(|l| &l.ifname == n))
                .cloned()
                .collect(),
        })
    }

    async fn apply_egress(&self, desired: &[EgressDesired]) -> Result<(), DatapathError> {
        let names: Vec<&str> = desired.iter().map(|d| d.ifname.as_str()).collect();
        self.enter("apply_egress", &names.join(","))?.egress = desired.to_vec();
        Ok(())
    }

    async fn set_nat_ports(&self, min: u16, max: u16) -> Result<(), DatapathError> {
        self.enter("set_nat_ports", &format!("{min}-{max}"))?.nat_ports = Some((min, max));
        Ok(())
    }

    async fn sweep_nat(&self) -> Result<usize, DatapathError> {
        drop(self.enter("sweep_nat", "")?);
        Ok(0)
    }

    async fn set_event_rate(&self, limit: super::events::EventRateLimit) -> Result<(), DatapathError> {
        self.enter("set_event_rate", &format!("{}/s burst {}", limit.per_second, limit.burst))?.event_rate =
            Some(limit);
        Ok(())
    }

    async fn start_events(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<bpf_programs::abi::Event>>, DatapathError> {
        let mut kernel = self.enter("start_events", "")?;
        if kernel.events_tx.is_none() && kernel.events_rx.is_none() {
            let (tx, rx) = tokio::sync::mpsc::channel(super::events::EVENT_QUEUE);
            kernel.events_tx = Some(tx);
            return Ok(Some(rx));
        }
        Ok(kernel.events_rx.take())
    }

    async fn event_counts(&self) -> Result<super::events::EventCounts, DatapathError> {
        Ok(self.enter("event_counts", "")?.event_counts)
    }

    async fn counters(&self) -> Result<BTreeMap<u32, Counters>, DatapathError> {
        Ok(self.enter("counters", "")?.counters.clone())
    }

    async fn metrics(&self) -> Result<DatapathMetrics, DatapathError> {
        let mut kernel = self.enter("metrics", "")?;
        let snapshot = kernel.ledger.snapshot();
        let endpoints = kernel.counters.clone();
        let totals = kernel.ledger.totals(&snapshot, &endpoints);
        Ok(DatapathMetrics {
            endpoints,
            totals,
            conntrack_entries: kernel.conntrack_entries,
            nat_out_entries: kernel.nat_out_entries,
            nat_in_entries: kernel.nat_in_entries,
        })
    }

    async fn info(&self) -> DatapathInfo {
        let kernel = self.kernel();
        DatapathInfo {
            kind: "fake".to_owned(),
            attach_mode: "tc".to_owned(),
            kernel: None,
            features: BTreeMap::new(),
            bpf_root: None,
            loaded: !kernel.unloaded,
            missing_pins: kernel.missing_pins.clone(),
        }
    }

    async fn map_counts(&self) -> Result<MapCounts, DatapathError> {
        let kernel = self.enter("map_counts", "")?;
        let side = |side| kernel.nat.iter().filter(|n| n.side == side).count() as u64;
        Ok(MapCounts { conntrack: kernel.ct.len() as u64, nat_out: side(NatSide::Out), nat_in: side(NatSide::In) })
    }

    async fn dump_endpoints(&self) -> Result<Vec<EndpointRow>, DatapathError> {
        let kernel = self.enter("dump_endpoints", "")?;
        let mut rows: Vec<EndpointRow> = kernel
            .installed
            .values()
            .map(|e| EndpointRow {
                ifindex: e.host_ifindex,
                number: e.number,
                sandbox: e.sandbox,
                identity: e.identity,
                ipv6: e.ipv6,
                ipv4: e.ipv4,
                gateway_ipv4: e.gateway_ipv4,
                mac: e.mac,
                host_mac: e.host_mac,
                internal: e.internal,
                masquerade: e.masquerade,
                published: !e.published.is_empty(),
            })
            .collect();
        rows.sort_by_key(|r| r.ifindex);
        Ok(rows)
    }

    async fn dump_ipcache(&self) -> Result<Vec<(IpNet, Identity)>, DatapathError> {
        let kernel = self.enter("dump_ipcache", "")?;
        let mut entries = kernel.policy.ipcache.clone();
        for e in kernel.installed.values() {
            for ip in e.delivered_addresses() {
                entries.insert(IpNet::from(ip), e.identity);
            }
        }
        Ok(entries.into_iter().collect())
    }

    async fn dump_policy(&self) -> Result<Vec<(PolicyKey, PolicyEntry)>, DatapathError> {
        Ok(self.enter("dump_policy", "")?.policy.entries.iter().map(|(k, e)| (*k, *e)).collect())
    }

    async fn dump_ct(&self) -> Result<CtDump, DatapathError> {
        let kernel = self.enter("dump_ct", "")?;
        Ok(CtDump { revision: kernel.policy_revision, rows: kernel.ct.clone() })
    }

    async fn dump_nat(&self) -> Result<Vec<NatRow>, DatapathError> {
        Ok(self.enter("dump_nat", "")?.nat.clone())
    }

    async fn flush_ct(&self) -> Result<usize, DatapathError> {
        let mut kernel = self.enter("flush_ct", "")?;
        Ok(std::mem::take(&mut kernel.ct).len())
    }

    async fn restore(
        &self,
        joined: &[EndpointDesired],
        policy: PolicyView<'_>,
    ) -> Result<RestoreReport, DatapathError> {
        let mut kernel = self.enter("restore", &joined.len().to_string())?;
        kernel.ledger = CounterLedger::start(kernel.counters.clone());
        let policy = PolicyDesired { entries: policy.entries.clone(), ipcache: policy.ipcache.clone() };
        if kernel.policy != policy {
            kernel.policy = policy;
            kernel.policy_revision += 1;
        }
        let mut report = RestoreReport::default();
        for ep in joined {
            let Some(link) = kernel.links.get(&ep.host_ifname).copied() else {
                report.missing_links.push(ep.host_ifname.clone());
                continue;
            };
            report.links.insert(ep.host_ifname.clone(), link);
            if kernel.attached.insert(ep.host_ifname.clone()) {
                report.reattached.push(ep.host_ifname.clone());
            }
            let applied = EndpointDesired { host_ifindex: link.index, host_mac: link.mac, ..ep.clone() };
            kernel.installed.insert(ep.host_ifname.clone(), applied);
        }
        let wanted: BTreeSet<&String> =
            joined.iter().map(|e| &e.host_ifname).filter(|n| kernel.links.contains_key(*n)).collect();
        let before = kernel.installed.len();
        kernel.installed.retain(|name, _| wanted.contains(name));
        report.stale_removed = before - kernel.installed.len();
        Ok(report)
    }
}
