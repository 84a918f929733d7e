//! The Linux datapath: rtnetlink for links, routes and neighbours; aya for programs and maps.
//! It remembers what it applied for each endpoint and for policy, so that a change writes only
//! the difference and removing an endpoint touches only its own entries (no map scans but the
//! ones at restore). Endpoint maps and policy maps sit behind separate locks: a policy change
//! writing many entries never holds up a Join; what is only read (counters, map sizes) goes
//! through handles of its own and takes neither.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bpf_programs::abi::{self, Direction, DropReason};
use ipnet::IpNet;

use super::bpf::{AttachMode, BpfDatapath};
use super::events::{EventCounts, EventMaps, EventRateLimit};
use super::features;
use super::host;
use super::layouts;
use super::ledger::CounterLedger;
use super::link::Netlink;
use super::policy_maps::PolicyMaps;
use super::readers::MapReaders;
use super::rows::{self, monotonic_coarse_ns};
use super::world_maps::WorldMaps;
use super::{
    Counters, CtDump, Datapath, DatapathError, DatapathInfo, DatapathMetrics, EgressDesired, EndpointDesired,
    EndpointRow, HostLink, MapCounts, NatRow, NatSide, PolicyDesired, PolicyView, RestoreReport, Traffic, VethSpec,
};
use crate::identity::Identity;
use crate::policy::{PolicyEntry, PolicyKey};

/// MTU used when the host has no default route to copy it from.
const FALLBACK_MTU: u32 = 1500;

/// The policy maps and what was applied to them.
struct PolicyState {
    maps: PolicyMaps,
    /// Policy entries and non-endpoint ipcache entries as applied.
    applied: PolicyDesired,
    /// The endpoint holding each endpoint-address ipcache entry.
    endpoint_ips: HashMap<IpNet, u32>,
    revision: u32,
}

impl PolicyState {
    /// Tells established flows to be checked again.
    fn bump_revision(&mut self) -> Result<(), DatapathError> {
        self.revision = self.revision.wrapping_add(1);
        self.maps.set_revision(self.revision)?;
        Ok(())
    }
}

/// The maps of the outside world, the egress interfaces applied to them (by name), and the
/// socket programs (attached while any port is published).
struct WorldState {
    maps: WorldMaps,
    applied: BTreeMap<String, EgressDesired>,
    /// The cgroup v2 root the socket programs attach to.
    cgroup: std::path::PathBuf,
    sockets_attached: bool,
}

pub struct LinuxDatapath {
    netlink: Netlink,
    bpf: Mutex<BpfDatapath>,
    policy: Mutex<PolicyState>,
    world: Mutex<WorldState>,
    /// What was applied for each endpoint, by endpoint number.
    applied: Mutex<HashMap<u32, EndpointDesired>>,
    events: Mutex<EventMaps>,
    /// Handles of their own on the maps that are only read (no lock: each read is one walk).
    readers: Arc<MapReaders>,
    /// The counters' totals since the start, for metrics (never held across a kernel call).
    ledger: Mutex<CounterLedger>,
    /// Kernel features probed at load, and the kernel's release.
    features: BTreeMap<String, bool>,
    kernel: Option<String>,
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
        let mut maps = bpf.take_policy_maps()?;
        let revision = maps.revision()?;
        let cookie = host::netns_cookie().map_err(|e| DatapathError::Other(format!("host netns cookie: {e}")))?;
        maps.set_host_netns(cookie)?;
        let policy = PolicyState { maps, applied: PolicyDesired::default(), endpoint_ips: HashMap::new(), revision };
        let cgroup = host::cgroup2_root().map_err(|e| DatapathError::Other(format!("find cgroup v2: {e}")))?;
        let sockets_attached = bpf.sockets_attached();
        let world = WorldState { maps: bpf.take_world_maps()?, applied: BTreeMap::new(), cgroup, sockets_attached };
        let events = Mutex::new(bpf.take_event_maps()?);
        let readers = Arc::new(MapReaders::open(bpf.maps_dir())?);
        Ok(LinuxDatapath {
            netlink,
            bpf: Mutex::new(bpf),
            policy: Mutex::new(policy),
            world: Mutex::new(world),
            applied: Mutex::new(HashMap::new()),
            events,
            readers,
            ledger: Mutex::new(CounterLedger::default()),
            features: features::probe(),
            kernel: features::kernel_release(),
        })
    }

    fn bpf(&self) -> MutexGuard<'_, BpfDatapath> {
        guard(&self.bpf)
    }

    fn policy(&self) -> MutexGuard<'_, PolicyState> {
        guard(&self.policy)
    }

    fn world(&self) -> MutexGuard<'_, WorldState> {
        guard(&self.world)
    }

    /// Every endpoint's counters, through the readers, on a blocking thread.
    async fn read_counters(&self) -> Result<BTreeMap<u32, Counters>, DatapathError> {
        let readers = self.readers.clone();
        let rows = tokio::task::spawn_blocking(move || readers.metrics())
            .await
            .map_err(|e| DatapathError::Other(format!("read crs_metrics: {e}")))??;
        Ok(rows.into_iter().map(|(id, m)| (id, counters_of(&m))).collect())
    }

    /// Writes the map entries of `desired`, removing those of `old` it no longer has. A changed
    /// identity moves the policy revision, so established flows are checked with the new one.
    fn apply_maps(
        &self,
        old: Option<&EndpointDesired>,
        desired: &EndpointDesired,
        bump: bool,
    ) -> Result<(), DatapathError> {
        let kept: BTreeSet<IpAddr> = desired.delivered_addresses().into_iter().collect();
        let gone: Vec<IpAddr> = old
            .map(EndpointDesired::delivered_addresses)
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| !kept.contains(ip))
            .collect();
        {
            let mut bpf = self.bpf();
            bpf.ensure_metrics(desired.number)?;
            if old.is_none_or(|o| endpoint_info(o) != endpoint_info(desired) || o.host_ifindex != desired.host_ifindex)
            {
                bpf.set_endpoint(desired.host_ifindex, &endpoint_info(desired))?;
            }
            if let Some(old) = old.filter(|o| o.host_ifindex != desired.host_ifindex) {
                if bpf.endpoint(old.host_ifindex)?.is_some_and(|info| info.endpoint_id == desired.number) {
                    bpf.remove_endpoint(old.host_ifindex)?;
                }
            }
            let local = abi::LocalIp::new(desired.host_ifindex, desired.number).in_sandbox(desired.sandbox);
            for ip in &kept {
                if bpf.local_ip(*ip)? != Some(local) {
                    bpf.set_local_ip(*ip, &local)?;
                }
            }
            for ip in &gone {
                remove_own_local_ip(&mut bpf, *ip, desired.number)?;
            }
        }
        let mut policy = self.policy();
        for ip in &kept {
            let net = IpNet::from(*ip);
            let changed = old.is_none_or(|o| o.identity != desired.identity || !o.delivered_addresses().contains(ip));
            if changed || policy.endpoint_ips.get(&net) != Some(&desired.number) {
                policy.maps.set_ipcache(net, desired.identity)?;
                policy.endpoint_ips.insert(net, desired.number);
            }
        }
        for ip in &gone {
            remove_own_ipcache(&mut policy, IpNet::from(*ip), desired.number)?;
        }
        if bump && old.is_some_and(|o| o.identity != desired.identity) {
            policy.bump_revision()?;
        }
        drop(policy);
        let (had, wanted) = (old.map(port_entries).unwrap_or_default(), port_entries(desired));
        if had != wanted {
            let mut world = self.world();
            for (key, target) in &wanted {
                if had.get(key) != Some(target) {
                    world.maps.set_port(key, target)?;
                }
            }
            for key in had.keys().filter(|k| !wanted.contains_key(*k)) {
                remove_own_port(&mut world, key, desired.number)?;
            }
        }
        Ok(())
    }

    /// Attaches the socket programs while any endpoint has published ports, detaches them once
    /// none has; `again` also puts this daemon's programs in place of attached ones (restore).
    fn refresh_sockets(&self, again: bool) -> Result<(), DatapathError> {
        let wanted = guard(&self.applied).values().any(|e| e.deliver && !e.published.is_empty());
        let mut world = self.world();
        if again || wanted != world.sockets_attached {
            let mut bpf = self.bpf();
            if wanted {
                bpf.attach_sockets(&world.cgroup)?;
            } else {
                bpf.detach_sockets()?;
            }
            world.sockets_attached = wanted;
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

    async fn apply_endpoint_with(&self, desired: &EndpointDesired, bump: bool) -> Result<(), DatapathError> {
        let old = guard(&self.applied).get(&desired.number).cloned();
        if old.as_ref() == Some(desired) {
            return Ok(());
        }
        // Forget the old record first: if a step fails, the next apply writes everything again.
        guard(&self.applied).remove(&desired.number);
        // Stop delivering before the map entries go, deliver only once the map entries exist.
        if desired.deliver {
            self.apply_maps(old.as_ref(), desired, bump)?;
            self.apply_routes(old.as_ref(), desired).await?;
        } else {
            self.apply_routes(old.as_ref(), desired).await?;
            self.apply_maps(old.as_ref(), desired, bump)?;
        }
        guard(&self.applied).insert(desired.number, desired.clone());
        self.refresh_sockets(false)
    }
}

/// The crs_ports entries of an endpoint: each published port for each family it applies to
/// (every address of the host: all-zero key address), while it is delivered to.
fn port_entries(endpoint: &EndpointDesired) -> BTreeMap<abi::PortKey, abi::PortTarget> {
    let mut entries = BTreeMap::new();
    if !endpoint.deliver {
        return entries;
    }
    let v4 = endpoint.ipv4.map(IpAddr::V4);
    let v6 = endpoint.ipv6.map(IpAddr::V6);
    for port in &endpoint.published {
        let targets: Vec<(Option<IpAddr>, Option<IpAddr>)> = match port.host_ip {
            None => vec![(None, v4), (None, v6)],
            Some(ip) if ip.is_unspecified() => vec![(None, if ip.is_ipv4() { v4 } else { v6 })],
            Some(ip) => vec![(Some(ip), if ip.is_ipv4() { v4 } else { v6 })],
        };
        for (published_on, target) in targets {
            let Some(target) = target else { continue };
            let family = abi::IpKey::from(target).family;
            let key = abi::PortKey {
                family,
                proto: port.proto.number(),
                port: port.host_port.to_be_bytes(),
                addr: published_on.map_or([0; 16], |ip| abi::IpKey::from(ip).addr),
            };
            let value = abi::PortTarget {
                addr: abi::IpKey::from(target).addr,
                port: port.port.to_be_bytes(),
                pad: 0,
                endpoint_id: endpoint.number,
            };
            entries.insert(key, value);
        }
    }
    entries
}

/// Removes a crs_ports entry if it still belongs to endpoint `number`.
fn remove_own_port(world: &mut WorldState, key: &abi::PortKey, number: u32) -> Result<(), DatapathError> {
    if world.maps.port_entries()?.iter().any(|(k, t)| k == key && t.endpoint_id == number) {
        world.maps.remove_port(key)?;
    }
    Ok(())
}

/// Removes the `crs_local_ips` entry of `ip` if it still belongs to endpoint `number` (another
/// endpoint may hold the address by now).
fn remove_own_local_ip(bpf: &mut BpfDatapath, ip: IpAddr, number: u32) -> Result<(), DatapathError> {
    if bpf.local_ip(ip)?.is_some_and(|v| v.endpoint_id == number) {
        bpf.remove_local_ip(ip)?;
    }
    Ok(())
}

/// Removes the ipcache entry of an endpoint address if it still belongs to endpoint `number`.
fn remove_own_ipcache(policy: &mut PolicyState, net: IpNet, number: u32) -> Result<(), DatapathError> {
    if policy.endpoint_ips.get(&net) == Some(&number) {
        policy.endpoint_ips.remove(&net);
        match policy.applied.ipcache.get(&net).copied() {
            // A policy prefix of the same address takes over.
            Some(identity) => policy.maps.set_ipcache(net, identity)?,
            None => policy.maps.remove_ipcache(net)?,
        }
    }
    Ok(())
}

fn endpoint_info(endpoint: &EndpointDesired) -> abi::EndpointInfo {
    let mut info = abi::EndpointInfo::new(endpoint.number, endpoint.mac, endpoint.host_mac)
        .in_sandbox(endpoint.sandbox)
        .with_identity(endpoint.identity.0);
    if let Some(v6) = endpoint.ipv6 {
        info = info.with_ipv6(v6);
    }
    if let (Some(v4), Some(gw)) = (endpoint.ipv4, endpoint.gateway_ipv4) {
        info = info.with_ipv4(v4, gw);
    }
    if endpoint.internal {
        info.flags |= abi::ENDPOINT_F_INTERNAL;
    }
    if !endpoint.masquerade {
        info.flags |= abi::ENDPOINT_F_NO_MASQUERADE;
    }
    if !endpoint.published.is_empty() {
        info.flags |= abi::ENDPOINT_F_PUBLISHED;
    }
    if endpoint.trace {
        info.flags |= abi::ENDPOINT_F_TRACE;
    }
    info
}

/// Makes the policy maps hold `desired` (entries, and ipcache entries not held by endpoints),
/// diffing against `policy.applied`; returns whether anything changed. Allows and denies are
/// written before stale entries go, so a replaced rule never leaves a gap.
fn apply_policy_maps(policy: &mut PolicyState, desired: PolicyView<'_>) -> Result<bool, DatapathError> {
    let mut changed = false;
    for (key, entry) in desired.entries {
        if policy.applied.entries.get(key) != Some(entry) {
            policy.maps.set_policy(key, entry)?;
            policy.applied.entries.insert(*key, *entry);
            changed = true;
        }
    }
    let stale: Vec<_> = policy.applied.entries.keys().filter(|k| !desired.entries.contains_key(*k)).copied().collect();
    for key in stale {
        policy.maps.remove_policy(&key)?;
        policy.applied.entries.remove(&key);
        changed = true;
    }
    for (net, identity) in desired.ipcache {
        if policy.applied.ipcache.get(net) != Some(identity) {
            if !policy.endpoint_ips.contains_key(net) {
                policy.maps.set_ipcache(*net, *identity)?;
            }
            policy.applied.ipcache.insert(*net, *identity);
            changed = true;
        }
    }
    let stale: Vec<IpNet> =
        policy.applied.ipcache.keys().filter(|n| !desired.ipcache.contains_key(*n)).copied().collect();
    for net in stale {
        if !policy.endpoint_ips.contains_key(&net) {
            policy.maps.remove_ipcache(net)?;
        }
        policy.applied.ipcache.remove(&net);
        changed = true;
    }
    Ok(changed)
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

/// The per-endpoint view of the summed counters.
fn counters_of(metrics: &abi::EndpointMetrics) -> Counters {
    let traffic = |t: abi::Traffic| Traffic { packets: t.packets, bytes: t.bytes };
    let mut counters = Counters {
        egress: traffic(metrics.get(DropReason::Forwarded, Direction::Egress)),
        ingress: traffic(metrics.get(DropReason::Forwarded, Direction::Ingress)),
        drops: BTreeMap::new(),
    };
    for reason in DropReason::ALL.into_iter().filter(|r| r.is_drop()) {
        for dir in [Direction::Egress, Direction::Ingress] {
            let t = metrics.get(reason, dir);
            if t.packets > 0 {
                counters.drops.insert(Counters::drop_key(reason, dir), traffic(t));
            }
        }
    }
    counters
}

#[async_trait::async_trait]
impl Datapath for LinuxDatapath {
    async fn host_prefixes(&self) -> Result<Vec<IpNet>, DatapathError> {
        let mut prefixes: Vec<IpNet> =
            self.netlink.routed_prefixes().await?.into_iter().filter_map(|p| IpNet::new(p.addr, p.len).ok()).collect();
        prefixes.extend(nameservers());
        Ok(prefixes)
    }

    async fn host_addresses(&self) -> Result<Vec<IpAddr>, DatapathError> {
        Ok(self.netlink.host_addresses().await?)
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
        self.apply_endpoint_with(desired, true).await
    }

    async fn forget_orphan(&self, host_ifname: &str) -> Result<(), DatapathError> {
        let Some(link) = self.netlink.link_by_name(host_ifname).await? else { return Ok(()) };
        let Some(info) = self.bpf().endpoint(link.index)? else { return Ok(()) };
        let row = rows::endpoint_row(link.index, &info);
        let (live_interface, live_number) = {
            let applied = guard(&self.applied);
            (applied.values().any(|e| e.host_ifindex == link.index), applied.contains_key(&row.number))
        };
        if live_interface {
            return Ok(());
        }
        let mut errors = Vec::new();
        let mut bpf = self.bpf();
        errors.extend(bpf.remove_endpoint(link.index).err().map(DatapathError::from));
        // A number a live endpoint holds again (handed out after the state was lost) keeps
        // its entries and counters.
        if live_number {
            return DatapathError::collect(errors);
        }
        let addresses: Vec<IpAddr> = row.ipv6.map(IpAddr::V6).into_iter().chain(row.ipv4.map(IpAddr::V4)).collect();
        for &ip in &addresses {
            errors.extend(remove_own_local_ip(&mut bpf, ip, row.number).err());
        }
        errors.extend(bpf.remove_metrics(row.number).err().map(DatapathError::from));
        drop(bpf);
        {
            let mut policy = self.policy();
            for &ip in &addresses {
                let net = IpNet::from(ip);
                let held = policy.endpoint_ips.contains_key(&net);
                let owned = policy.maps.ipcache_entries()?.iter().any(|(n, id)| *n == net && *id == row.identity);
                if owned && !held {
                    let result = match policy.applied.ipcache.get(&net).copied() {
                        Some(identity) => policy.maps.set_ipcache(net, identity),
                        None => policy.maps.remove_ipcache(net),
                    };
                    errors.extend(result.err().map(DatapathError::from));
                }
            }
        }
        let mut world = self.world();
        let ports: Vec<abi::PortKey> = world
            .maps
            .port_entries()?
            .into_iter()
            .filter(|(_, t)| t.endpoint_id == row.number)
            .map(|(k, _)| k)
            .collect();
        for key in ports {
            errors.extend(world.maps.remove_port(&key).err().map(DatapathError::from));
        }
        DatapathError::collect(errors)
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
        {
            let mut bpf = self.bpf();
            if let Some(old) = &old {
                for ip in old.delivered_addresses() {
                    errors.extend(remove_own_local_ip(&mut bpf, ip, number).err());
                }
                match bpf.endpoint(old.host_ifindex) {
                    Ok(Some(info)) if info.endpoint_id == number => {
                        errors.extend(bpf.remove_endpoint(old.host_ifindex).err().map(DatapathError::from));
                    }
                    Ok(_) => {}
                    Err(e) => errors.push(e.into()),
                }
            }
            // What it counted stays in the totals.
            let last = bpf.metrics(number);
            errors.extend(bpf.remove_metrics(number).err().map(DatapathError::from));
            match last {
                Ok(last) => guard(&self.ledger).removed(number, last.map(|m| counters_of(&m)).as_ref()),
                Err(e) => errors.push(e.into()),
            }
        }
        if let Some(old) = &old {
            let mut policy = self.policy();
            for ip in old.delivered_addresses() {
                errors.extend(remove_own_ipcache(&mut policy, IpNet::from(ip), number).err());
            }
            drop(policy);
            let mut world = self.world();
            for key in port_entries(old).keys() {
                errors.extend(remove_own_port(&mut world, key, number).err());
            }
        }
        errors.extend(self.refresh_sockets(false).err());
        DatapathError::collect(errors)
    }

    async fn apply_policy(&self, desired: PolicyView<'_>) -> Result<(), DatapathError> {
        let mut policy = self.policy();
        if apply_policy_maps(&mut policy, desired)? {
            policy.bump_revision()?;
        }
        Ok(())
    }

    async fn egress_links(&self, names: Option<&[String]>) -> Result<Vec<EgressDesired>, DatapathError> {
        let mut links: Vec<(String, u32)> = Vec::new();
        match names {
            None => {
                for index in self.netlink.default_route_links().await? {
                    if let Some(name) = self.netlink.link_name_of(index).await? {
                        links.push((name, index));
                    }
                }
            }
            Some(names) => {
                for name in names {
                    if let Some(link) = self.netlink.link_by_name(name).await? {
                        links.push((name.clone(), link.index));
                    }
                }
            }
        }
        let mut desired = Vec::new();
        for (ifname, ifindex) in links {
            let (ipv4, ipv6) = self.netlink.link_addresses(ifindex).await?;
            desired.push(EgressDesired { ifname, ifindex, ipv4, ipv6 });
        }
        Ok(desired)
    }

    async fn apply_egress(&self, desired: &[EgressDesired]) -> Result<(), DatapathError> {
        let mut world = self.world();
        let wanted: BTreeMap<&str, &EgressDesired> = desired.iter().map(|d| (d.ifname.as_str(), d)).collect();
        // Entries go before the programs do, and come after them: crs_from_container never
        // sends a packet to an interface that would not masquerade it.
        let stale: Vec<EgressDesired> =
            world.applied.values().filter(|a| wanted.get(a.ifname.as_str()) != Some(a)).cloned().collect();
        for old in stale {
            if wanted.get(old.ifname.as_str()).is_none_or(|d| d.ifindex != old.ifindex) {
                world.maps.remove_egress(old.ifindex)?;
            }
            if !wanted.contains_key(old.ifname.as_str()) {
                self.bpf().detach_egress(&old.ifname)?;
                tracing::info!(ifname = %old.ifname, "egress interface removed");
            }
            world.applied.remove(&old.ifname);
        }
        for d in desired {
            if world.applied.get(&d.ifname) == Some(d) {
                continue;
            }
            self.bpf().attach_egress(&d.ifname)?;
            world.maps.set_egress(d.ifindex, &abi::EgressIface::new(d.ipv4, d.ipv6))?;
            tracing::info!(ifname = %d.ifname, ipv4 = ?d.ipv4, ipv6 = ?d.ipv6, "egress interface");
            world.applied.insert(d.ifname.clone(), d.clone());
        }
        // What an earlier daemon attached or wrote for interfaces no longer wanted.
        let indexes: BTreeSet<u32> = desired.iter().map(|d| d.ifindex).collect();
        for (ifindex, _) in world.maps.egress_entries()? {
            if !indexes.contains(&ifindex) {
                world.maps.remove_egress(ifindex)?;
            }
        }
        let mut bpf = self.bpf();
        for name in bpf.pinned_egress_links()? {
            if !wanted.contains_key(name.as_str()) {
                bpf.detach_egress(&name)?;
            }
        }
        Ok(())
    }

    async fn set_nat_ports(&self, min: u16, max: u16) -> Result<(), DatapathError> {
        Ok(self.policy().maps.set_nat_ports(min, max)?)
    }

    async fn set_event_rate(&self, limit: EventRateLimit) -> Result<(), DatapathError> {
        Ok(self.policy().maps.set_event_rate(limit.interval_ns(), limit.burst)?)
    }

    async fn start_events(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<bpf_programs::abi::Event>>, DatapathError> {
        Ok(guard(&self.events).start_reader()?)
    }

    async fn event_counts(&self) -> Result<EventCounts, DatapathError> {
        Ok(guard(&self.events).counts()?)
    }

    async fn sweep_nat(&self) -> Result<usize, DatapathError> {
        let live: BTreeSet<IpAddr> =
            guard(&self.applied).values().flat_map(EndpointDesired::delivered_addresses).collect();
        Ok(self.world().maps.sweep(&live)?)
    }

    async fn counters(&self) -> Result<BTreeMap<u32, Counters>, DatapathError> {
        self.read_counters().await
    }

    async fn metrics(&self) -> Result<DatapathMetrics, DatapathError> {
        // The ledger before the counters: an endpoint removed in between is in neither.
        let snapshot = guard(&self.ledger).snapshot();
        let endpoints = self.read_counters().await?;
        let totals = guard(&self.ledger).totals(&snapshot, &endpoints);
        let sizes = self.map_counts().await?;
        Ok(DatapathMetrics {
            endpoints,
            totals,
            conntrack_entries: sizes.conntrack,
            nat_out_entries: sizes.nat_out,
            nat_in_entries: sizes.nat_in,
        })
    }

    async fn info(&self) -> DatapathInfo {
        let (mode, root, maps_dir) = {
            let bpf = self.bpf();
            (bpf.attach_mode(), bpf.bpf_root().to_path_buf(), bpf.maps_dir().to_path_buf())
        };
        let missing_pins = abi::MAP_NAMES
            .iter()
            .filter(|map| maps_dir.join(map).symlink_metadata().is_err())
            .map(|map| (*map).to_owned())
            .collect();
        DatapathInfo {
            kind: "linux".to_owned(),
            attach_mode: match mode {
                AttachMode::Tcx => "tcx",
                AttachMode::Netlink => "tc",
            }
            .to_owned(),
            kernel: self.kernel.clone(),
            features: self.features.clone(),
            bpf_root: Some(root),
            loaded: true,
            missing_pins,
        }
    }

    async fn map_counts(&self) -> Result<MapCounts, DatapathError> {
        // Through the read-only handles, on a blocking thread: no lock the other calls take.
        let readers = self.readers.clone();
        let sizes = tokio::task::spawn_blocking(move || readers.sizes())
            .await
            .map_err(|e| DatapathError::Other(format!("count conntrack and NAT entries: {e}")))??;
        Ok(MapCounts { conntrack: sizes.conntrack, nat_out: sizes.nat_out, nat_in: sizes.nat_in })
    }

    async fn dump_endpoints(&self) -> Result<Vec<EndpointRow>, DatapathError> {
        Ok(self.bpf().endpoints()?.iter().map(|(ifindex, info)| rows::endpoint_row(*ifindex, info)).collect())
    }

    async fn dump_ipcache(&self) -> Result<Vec<(IpNet, Identity)>, DatapathError> {
        Ok(self.policy().maps.ipcache_entries()?)
    }

    async fn dump_policy(&self) -> Result<Vec<(PolicyKey, PolicyEntry)>, DatapathError> {
        let mut entries: Vec<(PolicyKey, PolicyEntry)> = self
            .policy()
            .maps
            .policy_entries()?
            .into_iter()
            .filter_map(|(key, entry)| Some((key.ok()?, entry)))
            .collect();
        entries.sort_by_key(|(key, _)| *key);
        Ok(entries)
    }

    async fn dump_ct(&self) -> Result<CtDump, DatapathError> {
        let now = monotonic_coarse_ns();
        let policy = self.policy();
        let rows = policy.maps.ct_entries()?.iter().filter_map(|(key, entry)| rows::ct_row(key, entry, now)).collect();
        Ok(CtDump { revision: policy.revision, rows })
    }

    async fn dump_nat(&self) -> Result<Vec<NatRow>, DatapathError> {
        let now = monotonic_coarse_ns();
        let world = self.world();
        let out = world.maps.nat_out()?;
        let inn = world.maps.nat_in()?;
        drop(world);
        let sides = out.iter().map(|row| (NatSide::Out, row)).chain(inn.iter().map(|row| (NatSide::In, row)));
        Ok(sides.filter_map(|(side, (key, entry))| rows::nat_row(side, key, entry, now)).collect())
    }

    async fn flush_ct(&self) -> Result<usize, DatapathError> {
        Ok(self.policy().maps.flush_ct()?)
    }

    async fn restore(
        &self,
        joined: &[EndpointDesired],
        policy_desired: PolicyView<'_>,
    ) -> Result<RestoreReport, DatapathError> {
        let mut report = RestoreReport::default();
        // What the pinned maps hold: applied as far as policy is concerned, so that only
        // differences are written and the revision moves only when a verdict may change.
        {
            let mut policy = self.policy();
            let mut raw_stale = Vec::new();
            for (key, entry) in policy.maps.policy_entries()? {
                match key {
                    Ok(key) => {
                        policy.applied.entries.insert(key, entry);
                    }
                    Err(raw) => raw_stale.push(raw),
                }
            }
            for raw in raw_stale {
                policy.maps.remove_raw_policy(&raw)?;
                report.stale_removed += 1;
            }
            policy.applied.ipcache = policy.maps.ipcache_entries()?.into_iter().collect();
        }
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
                    self.apply_endpoint_with(&endpoint, false).await?;
                    live.push(endpoint);
                }
            }
        }
        {
            let mut policy = self.policy();
            // Endpoint addresses were in `applied.ipcache` only as what the map held.
            let endpoint_nets: Vec<IpNet> = policy.endpoint_ips.keys().copied().collect();
            for net in endpoint_nets {
                if !policy_desired.ipcache.contains_key(&net) {
                    policy.applied.ipcache.remove(&net);
                }
            }
            if apply_policy_maps(&mut policy, policy_desired)? {
                policy.bump_revision()?;
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
        for (number, _) in bpf.all_metrics()? {
            if number != 0 && !numbers.contains(&number) {
                bpf.remove_metrics(number)?;
                report.stale_removed += 1;
            }
        }
        drop(bpf);
        {
            let wanted: BTreeMap<abi::PortKey, abi::PortTarget> = live.iter().flat_map(port_entries).collect();
            let mut world = self.world();
            for (key, target) in world.maps.port_entries()? {
                if wanted.get(&key) != Some(&target) {
                    world.maps.remove_port(&key)?;
                    report.stale_removed += 1;
                }
            }
        }
        // A restarted daemon puts its own socket programs in place of the pinned ones.
        self.refresh_sockets(true)?;
        // Metrics count from here: what the pinned counters hold was counted by earlier runs.
        let current = self.readers.metrics()?.into_iter().map(|(id, m)| (id, counters_of(&m))).collect();
        *guard(&self.ledger) = CounterLedger::start(current);
        let bpf = self.bpf();
        // This layout's programs are attached everywhere now: earlier layouts can go.
        for tree in layouts::other_layouts(bpf.bpf_root())? {
            let pins = layouts::remove_layout(&tree)?;
            tracing::info!(tree = %tree.display(), pins, "removed the pins of another layout version");
            report.stale_removed += pins;
        }
        Ok(report)
    }
}

/// The identity the datapath gives an address right now (for tests and views).
impl LinuxDatapath {
    pub fn identity_of(&self, ip: IpAddr) -> Result<Identity, DatapathError> {
        Ok(self.policy().maps.identity_of(ip)?)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::ports::{Proto, PublishedPort};

    fn endpoint(published: Vec<PublishedPort>, deliver: bool) -> EndpointDesired {
        EndpointDesired {
            number: 7,
            sandbox: 7,
            host_ifname: "lxc0".into(),
            host_ifindex: 70,
            host_mac: [2, 0, 0, 0, 0, 1],
            mac: [2, 0, 0, 0, 0, 2],
            ipv4: Some(Ipv4Addr::new(10, 220, 0, 7)),
            ipv6: Some("fdc1:1a00::7".parse().expect("v6")),
            gateway_ipv4: None,
            identity: Identity::INIT,
            internal: false,
            masquerade: true,
            published,
            trace: false,
            deliver,
        }
    }

    fn port(host_ip: Option<IpAddr>) -> PublishedPort {
        PublishedPort { proto: Proto::Tcp, host_ip, host_port: 8080, port: 80 }
    }

    #[test]
    fn published_ports_become_one_entry_per_family_they_apply_to() {
        let all = port_entries(&endpoint(vec![port(None)], true));
        let families: Vec<(u8, [u8; 16], [u8; 16])> = all.iter().map(|(k, t)| (k.family, k.addr, t.addr)).collect();
        assert_eq!(
            families,
            [
                (abi::IP_FAMILY_V4, [0; 16], abi::IpKey::from(IpAddr::V4(Ipv4Addr::new(10, 220, 0, 7))).addr),
                (abi::IP_FAMILY_V6, [0; 16], "fdc1:1a00::7".parse::<Ipv6Addr>().expect("v6").octets()),
            ]
        );
        let (key, target) = all.iter().next().expect("an entry");
        assert_eq!(
            (key.proto, key.port, target.port, target.endpoint_id),
            (6, 8080u16.to_be_bytes(), 80u16.to_be_bytes(), 7)
        );

        let v6_only = port_entries(&endpoint(vec![port(Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)))], true));
        assert_eq!(v6_only.keys().map(|k| (k.family, k.addr)).collect::<Vec<_>>(), [(abi::IP_FAMILY_V6, [0; 16])]);
        let loopback = port_entries(&endpoint(vec![port(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)))], true));
        assert_eq!(
            loopback.keys().map(|k| (k.family, k.addr)).collect::<Vec<_>>(),
            [(abi::IP_FAMILY_V4, abi::IpKey::from(IpAddr::V4(Ipv4Addr::LOCALHOST)).addr)]
        );
        assert!(port_entries(&endpoint(vec![port(None)], false)).is_empty(), "nothing once it left");
        let mut v4_only = endpoint(vec![port(Some(IpAddr::V6(Ipv6Addr::LOCALHOST)))], true);
        v4_only.ipv6 = None;
        assert!(port_entries(&v4_only).is_empty(), "an IPv6 host address needs an IPv6 endpoint");
    }
}
