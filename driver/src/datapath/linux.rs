//! The Linux datapath: rtnetlink for links, routes and neighbours; aya for programs and maps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use bpf_programs::abi::{self, DropReason};
use ipnet::IpNet;

use super::bpf::{AttachMode, BpfDatapath};
use super::link::Netlink;
use super::{Counters, Datapath, DatapathError, EndpointState, HostLink, RestoreReport, Traffic, VethSpec};

/// MTU used when the host has no default route to copy it from.
const FALLBACK_MTU: u32 = 1500;

pub struct LinuxDatapath {
    netlink: Netlink,
    bpf: Mutex<BpfDatapath>,
}

impl std::fmt::Debug for LinuxDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinuxDatapath")
    }
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
        Ok(LinuxDatapath { netlink, bpf: Mutex::new(bpf) })
    }

    fn bpf(&self) -> MutexGuard<'_, BpfDatapath> {
        self.bpf.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn uninstall_routes(&self, endpoint: &EndpointState, errors: &mut Vec<DatapathError>) {
        for ip in addresses(endpoint) {
            if let Err(e) = self.netlink.remove_endpoint_route(endpoint.host_ifindex, ip).await {
                errors.push(e.into());
            }
        }
    }
}

fn addresses(endpoint: &EndpointState) -> Vec<IpAddr> {
    endpoint.ipv6.map(IpAddr::V6).into_iter().chain(endpoint.ipv4.map(IpAddr::V4)).collect()
}

fn endpoint_info(endpoint: &EndpointState) -> abi::EndpointInfo {
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

    async fn install(&self, endpoint: &EndpointState) -> Result<(), DatapathError> {
        {
            let mut bpf = self.bpf();
            bpf.set_endpoint(endpoint.host_ifindex, &endpoint_info(endpoint))?;
            let local = abi::LocalIp::new(endpoint.host_ifindex, endpoint.number).in_sandbox(endpoint.sandbox);
            for ip in addresses(endpoint) {
                bpf.set_local_ip(ip, &local)?;
            }
        }
        for ip in addresses(endpoint) {
            self.netlink.add_endpoint_route(endpoint.host_ifindex, ip, endpoint.mac).await?;
        }
        Ok(())
    }

    async fn uninstall(&self, endpoint: &EndpointState) -> Result<(), DatapathError> {
        let mut errors = Vec::new();
        self.uninstall_routes(endpoint, &mut errors).await;
        let mut bpf = self.bpf();
        match bpf.local_ips() {
            Ok(all) => {
                // Only entries that still point at this endpoint: another may hold the address by now.
                for (ip, _) in
                    all.iter().filter(|(ip, v)| addresses(endpoint).contains(ip) && v.endpoint_id == endpoint.number)
                {
                    errors.extend(bpf.remove_local_ip(*ip).err().map(DatapathError::from));
                }
            }
            Err(e) => errors.push(e.into()),
        }
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

    async fn forget(&self, number: u32) -> Result<(), DatapathError> {
        let mut bpf = self.bpf();
        let mut errors = Vec::new();
        match bpf.endpoints() {
            Ok(all) => {
                for (ifindex, _) in all.iter().filter(|(_, info)| info.endpoint_id == number) {
                    errors.extend(bpf.remove_endpoint(*ifindex).err().map(DatapathError::from));
                }
            }
            Err(e) => errors.push(e.into()),
        }
        errors.extend(bpf.remove_metrics(number).err().map(DatapathError::from));
        DatapathError::collect(errors)
    }

    async fn restore(&self, joined: &[EndpointState]) -> Result<RestoreReport, DatapathError> {
        let mut report = RestoreReport::default();
        let mut live = Vec::new();
        for endpoint in joined {
            match self.netlink.link_by_name(&endpoint.host_ifname).await? {
                None => report.missing_links.push(endpoint.host_ifname.clone()),
                Some(link) => {
                    let mut endpoint = endpoint.clone();
                    endpoint.host_ifindex = link.index;
                    endpoint.host_mac = link.mac;
                    // Swaps this daemon's programs in (no gap), e.g. after an upgrade.
                    self.bpf().reattach(&endpoint.host_ifname)?;
                    report.reattached.push(endpoint.host_ifname.clone());
                    self.install(&endpoint).await?;
                    live.push(endpoint);
                }
            }
        }
        // Remove what belongs to no live endpoint: links that vanished, leftovers of crashes.
        let ifnames: BTreeSet<&str> = live.iter().map(|e| e.host_ifname.as_str()).collect();
        let ifindexes: BTreeSet<u32> = live.iter().map(|e| e.host_ifindex).collect();
        let ips: BTreeSet<IpAddr> = live.iter().flat_map(addresses).collect();
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
        Ok(report)
    }
}
