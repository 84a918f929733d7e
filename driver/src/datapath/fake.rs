//! A recording fake of the datapath for unit and handler tests: it keeps the would-be kernel
//! state in memory, logs every call, and fails any operation on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use ipnet::IpNet;

use super::{Counters, Datapath, DatapathError, EndpointState, HostLink, RestoreReport, VethSpec};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FakeKernel {
    /// Every call, as "operation argument".
    pub calls: Vec<String>,
    /// Host-side veths by name (peers are implied).
    pub links: BTreeMap<String, HostLink>,
    pub attached: BTreeSet<String>,
    /// Installed endpoints by host ifname.
    pub installed: BTreeMap<String, EndpointState>,
    pub counters: BTreeMap<u32, Counters>,
    /// Operations that fail until cleared, e.g. "attach".
    pub failing: BTreeSet<String>,
    pub host_prefixes: Vec<IpNet>,
    pub next_index: u32,
}

#[derive(Debug, Default)]
pub struct FakeDatapath {
    kernel: Mutex<FakeKernel>,
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

    async fn default_mtu(&self) -> Result<u32, DatapathError> {
        drop(self.enter("default_mtu", "")?);
        Ok(1500)
    }

    async fn create_veth(&self, spec: &VethSpec) -> Result<HostLink, DatapathError> {
        let mut kernel = self.enter("create_veth", &spec.host_ifname)?;
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

    async fn install(&self, endpoint: &EndpointState) -> Result<(), DatapathError> {
        let mut kernel = self.enter("install", &endpoint.host_ifname)?;
        kernel.installed.insert(endpoint.host_ifname.clone(), endpoint.clone());
        kernel.counters.entry(endpoint.number).or_default();
        Ok(())
    }

    async fn uninstall(&self, endpoint: &EndpointState) -> Result<(), DatapathError> {
        self.enter("uninstall", &endpoint.host_ifname)?.installed.remove(&endpoint.host_ifname);
        Ok(())
    }

    async fn counters(&self) -> Result<BTreeMap<u32, Counters>, DatapathError> {
        Ok(self.enter("counters", "")?.counters.clone())
    }

    async fn forget(&self, number: u32) -> Result<(), DatapathError> {
        self.enter("forget", &number.to_string())?.counters.remove(&number);
        Ok(())
    }

    async fn restore(&self, joined: &[EndpointState]) -> Result<RestoreReport, DatapathError> {
        let mut kernel = self.enter("restore", &joined.len().to_string())?;
        let mut report = RestoreReport::default();
        for ep in joined {
            if !kernel.links.contains_key(&ep.host_ifname) {
                report.missing_links.push(ep.host_ifname.clone());
                continue;
            }
            if kernel.attached.insert(ep.host_ifname.clone()) {
                report.reattached.push(ep.host_ifname.clone());
            }
            kernel.installed.insert(ep.host_ifname.clone(), ep.clone());
        }
        let wanted: BTreeSet<&String> = joined.iter().map(|e| &e.host_ifname).collect();
        let before = kernel.installed.len();
        kernel.installed.retain(|name, _| wanted.contains(name));
        report.stale_removed = before - kernel.installed.len();
        Ok(report)
    }
}
