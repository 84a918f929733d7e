//! The Linux datapath: rtnetlink for links, routes and neighbours; aya for programs and maps.
//! It remembers what it applied for each endpoint, so that a change writes only the difference
//! and removing an endpoint touches only its own entries (no map scans but one at restore).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use bpf_programs::abi::{self, DropReason};
use ipnet::IpNet;

use super::bpf::{AttachMode, BpfDatapath};
use super::link::Netlink;
use super::{Counters, Datapath, DatapathError, EndpointDesired, HostLink, RestoreReport, Traffic, VethSpec};

/// MTU used when the host has no default route to copy it from.
const FALLBACK_MTU: u32 = 1500;

pub struct LinuxDatapath {
    netlink: Netlink,
    bpf: Mutex<BpfDatapath>,
    /// What was applied for each endpoint, by endpoint number.
    applied: Mutex<HashMap<u32, EndpointDesired>>,
}

impl std::fmt::Debug for LinuxDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinuxDatapath")
    }
}

fn guard<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LinuxDatapath {
    /// Opens netlink in the calling thread's network namespace and loads the programs once,
    /// with maps pinned under `bpf_root`.
    pub async fn new(bpf_root: &Path, mode: AttachMode) -> Result<Self, DatapathError> {
        let netlink = Netlink::connect()?;
        let mut bpf = BpfDatapath::load(bpf_root)?;
        if mode == AttachMode::Tcx && AttachMode::detect() != AttachMode::Tcx {
            return Err(DatapathError::Other("--attach-mode tcx needs Linux 6.6 or later".to_owned()));
        }
        bpf.set_attach_mode(mode);
        Ok(LinuxDatapath { netlink, bpf: Mutex::new(bpf), applied: Mutex::new(HashMap::new()) })
    }

    fn bpf(&self) -> MutexGuard<'_, BpfDatapath> {
        guard(&self.bpf)
    }

    /// Writes the map entries of `desired`, removing those of `old` it no longer has.
    fn apply_maps(&self, old: Option<&EndpointDesired>, desired: &EndpointDesired) -> Result<(), DatapathError> {
        let mut bpf = self.bpf();
        if old.is_none_or(|o| endpoint_info(o) != endpoint_info(desired) || o.host_ifindex != desired.host_ifindex) {
            bpf.set_endpoint(desired.host_ifindex, &endpoint_info(desired))?;
        }
        if let Some(old) = old.filter(|o| o.host_ifindex != desired.host_ifindex) {
            bpf.remove_endpoint(old.host_ifindex)?;
        }
        let local = abi::LocalIp::new(desired.host_ifindex, desired.number).in_sandbox(desired.sandbox);
        for ip in desired.delivered_addresses() {
            if bpf.local_ip(ip)? != Some(local) {
                bpf.set_local_ip(ip, &local)?;
            }
        }
        let kept: BTreeSet<IpAddr> = desired.delivered_addresses().into_iter().collect();
        for ip in old.map(EndpointDesired::delivered_addresses).unwrap_or_default() {
            if !kept.contains(&ip) {
                remove_own_local_ip(&mut bpf, ip, desired.number)?;
            }
        }
        Ok(())
    }

    /// Adds the routes of `desired` that `old` did not have, removes those it no longer has.
    async fn apply_routes(
        &self,
        old: Option<&EndpointDesired>,
        desired: &EndpointDesired,
    ) -> Result<(), DatapathError> {
        let same_link = old.is_some_and(|o| o.host_ifindex == desired.host_ifindex && o.mac == desired.mac);
        let had: BTreeSet<IpAddr> = if same_link {
            old.map(EndpointDesired::delivered_addresses).unwrap_or_default().into_iter().collect()
        } else {
            BTreeSet::new()
        };
        for ip in desired.delivered_addresses() {
            if !had.contains(&ip) {
                self.netlink.add_endpoint_route(desired.host_ifindex, ip, desired.mac).await?;
            }
        }
        if let Some(old) = old {
            let kept: BTreeSet<IpAddr> =
                if same_link { desired.delivered_addresses().into_iter().collect() } else { BTreeSet::new() };
            let mut errors = Vec::new();
            for ip in old.delivered_addresses().into_iter().filter(|ip| !kept.contains(ip)) {
                errors.extend(
                    self.netlink.remove_endpoint_route(old.host_ifindex, ip).await.err().map(DatapathError::from),
                );
            }
            DatapathError::collect(errors)?;
        }
        Ok(())
    }
}

/// Removes the `crs_local_ips` entry of `ip` if it still belongs to endpoint `number` (another
/// endpoint may hold the address by now).
fn remove_own_local_ip(bpf: &mut BpfDatapath, ip: IpAddr, number: u32) -> Result<(), DatapathError> {
    if bpf.local_ip(ip)?.is_some_and(|v| v.endpoint_id == number) {
        bpf.remove_local_ip(ip)?;
    }
    Ok(())
}

fn endpoint_info(endpoint: &EndpointDesired) -> abi::EndpointInfo {
    let mut info =
        abi::EndpointInfo::new(endpoint.number, endpoint.mac, endpoint.host_mac).in_sandbox(endpoint.sandbox);
    if let Some(v6) = endpoint.ipv6 {
        info = info.with_ipv6(v6);
    }
    if let (Some(v4), Some(gw)) = (endpoint.ipv4, endpoint.gateway_ipv4) {
        info = info.with_ipv4(v4, gw);
    }
    info
}

/// Nameservers from /etc/resolv.conf: pools must not shadow them.
fn nameservers() -> Vec<IpNet> {
    let Ok(text) = std::fs::read_to_string("/etc/resolv.conf") else { return Vec::new() };
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next().and_then(|a| a.parse::<IpAddr>().ok()))
        .map(IpNet::from)
        .collect()
}

#[async_trait::async_trait]
impl Datapath for LinuxDatapath {
    async fn host_prefixes(&self) -> Result<Vec<IpNet>, DatapathError> {
        let mut prefixes: Vec<IpNet> =
            self.netlink.routed_prefixes().await?.into_iter().filter_map(|p| IpNet::new(p.addr, p.len).ok()).collect();
        prefixes.extend(nameservers());
        Ok(prefixes)
    }

    async fn default_mtu(&self) -> Result<u32, DatapathError> {
        Ok(self.netlink.default_route_mtu().await?.unwrap_or(FALLBACK_MTU))
    }

    async fn create_veth(&self, spec: &VethSpec) -> Result<HostLink, DatapathError> {
        let link = self.netlink.create_veth(&spec.host_ifname, &spec.peer_ifname, spec.mtu, spec.peer_mac).await?;
        Ok(HostLink { index: link.index, mac: link.mac })
    }

    async fn delete_veth(&self, host_ifname: &str) -> Result<(), DatapathError> {
        self.netlink.delete_link(host_ifname).await?;
        Ok(())
    }

    async fn attach(&self, host_ifname: &str) -> Result<(), DatapathError> {
        Ok(self.bpf().attach(host_ifname)?)
    }

    async fn detach(&self, host_ifname: &str) -> Result<(), DatapathError> {
        Ok(self.bpf().detach(host_ifname)?)
    }

    async fn apply_endpoint(&self, desired: &EndpointDesired) -> Result<(), DatapathError> {
        let old = guard(&self.applied).get(&desired.number).cloned();
        if old.as_ref() == Some(desired) {
            return Ok(());
        }
        // Forget the old record first: if a step fails, the next apply writes everything again.
        guard(&self.applied).remove(&desired.number);
        // Stop delivering before the map entries go, deliver only once the map entries exist.
        if desired.deliver {
            self.apply_maps(old.as_ref(), desired)?;
            self.apply_routes(old.as_ref(), desired).await?;
        } else {
            self.apply_routes(old.as_ref(), desired).await?;
            self.apply_maps(old.as_ref(), desired)?;
        }
        guard(&self.applied).insert(desired.number, desired.clone());
        Ok(())
    }

    async fn remove_endpoint(&self, number: u32) -> Result<(), DatapathError> {
        let old = guard(&self.applied).remove(&number);
        let mut errors = Vec::new();
        if let Some(old) = &old {
            for ip in old.delivered_addresses() {
                errors.extend(
                    self.netlink.remove_endpoint_route(old.host_ifindex, ip).await.err().map(DatapathError::from),
                );
            }
        }
        let mut bpf = self.bpf();
        if let Some(old) = &old {
            for ip in old.delivered_addresses() {
                errors.extend(remove_own_local_ip(&mut bpf, ip, number).err());
            }
            if bpf.endpoint(old.host_ifindex)?.is_some_and(|info| info.endpoint_id == number) {
                errors.extend(bpf.remove_endpoint(old.host_ifindex).err().map(DatapathError::from));
            }
        }
        errors.extend(bpf.remove_metrics(number).err().map(DatapathError::from));
        DatapathError::collect(errors)
    }

    async fn counters(&self) -> Result<BTreeMap<u32, Counters>, DatapathError> {
        let rows = self.bpf().all_metrics()?;
        let mut counters: BTreeMap<u32, Counters> = BTreeMap::new();
        for (key, value) in rows {
            let entry = counters.entry(key.endpoint_id).or_default();
            let traffic = Traffic { packets: value.packets, bytes: value.bytes };
            let dir = if key.dir == abi::METRIC_INGRESS { "ingress" } else { "egress" };
            match DropReason::from_u8(key.reason) {
                Some(DropReason::Forwarded) => {
                    let slot = if key.dir == abi::METRIC_INGRESS { &mut entry.ingress } else { &mut entry.egress };
                    slot.packets += traffic.packets;
                    slot.bytes += traffic.bytes;
                }
                reason => {
                    let name = reason.map(|r| r.name().to_owned()).unwrap_or_else(|| format!("REASON_{}", key.reason));
                    let slot = entry.drops.entry(format!("{name}/{dir}")).or_default();
                    slot.packets += traffic.packets;
                    slot.bytes += traffic.bytes;
                }
            }
        }
        Ok(counters)
    }

    async fn restore(&self, joined: &[EndpointDesired]) -> Result<RestoreReport, DatapathError> {
        let mut report = RestoreReport::default();
        let mut live = Vec::new();
        for endpoint in joined {
            match self.netlink.link_by_name(&endpoint.host_ifname).await? {
                None => report.missing_links.push(endpoint.host_ifname.clone()),
                Some(link) => {
                    let mut endpoint = endpoint.clone();
                    endpoint.host_ifindex = link.index;
                    endpoint.host_mac = link.mac;
                    report.links.insert(endpoint.host_ifname.clone(), HostLink { index: link.index, mac: link.mac });
                    // Swaps this daemon's programs in (no gap), e.g. after an upgrade.
                    self.bpf().reattach(&endpoint.host_ifname)?;
                    report.reattached.push(endpoint.host_ifname.clone());
                    self.apply_endpoint(&endpoint).await?;
                    live.push(endpoint);
                }
            }
        }
        // Remove what belongs to no live endpoint: links that vanished, leftovers of crashes.
        let ifnames: BTreeSet<&str> = live.iter().map(|e| e.host_ifname.as_str()).collect();
        let ifindexes: BTreeSet<u32> = live.iter().map(|e| e.host_ifindex).collect();
        let ips: BTreeSet<IpAddr> = live.iter().flat_map(EndpointDesired::delivered_addresses).collect();
        let numbers: BTreeSet<u32> = live.iter().map(|e| e.number).collect();
        let mut bpf = self.bpf();
        for name in bpf.pinned_links()? {
            if !ifnames.contains(name.as_str()) {
                bpf.detach(&name)?;
                report.stale_removed += 1;
            }
        }
        for (ifindex, _) in bpf.endpoints()? {
            if !ifindexes.contains(&ifindex) {
                bpf.remove_endpoint(ifindex)?;
                report.stale_removed += 1;
            }
        }
        for (ip, _) in bpf.local_ips()? {
            if !ips.contains(&ip) {
                bpf.remove_local_ip(ip)?;
                report.stale_removed += 1;
            }
        }
        let stale_counters: BTreeSet<u32> =
            bpf.all_metrics()?.iter().map(|(k, _)| k.endpoint_id).filter(|n| *n != 0 && !numbers.contains(n)).collect();
        for number in stale_counters {
            bpf.remove_metrics(number)?;
            report.stale_removed += 1;
        }
        Ok(report)
    }
}
