//! The orchestrator and one owner of state: it plans with the pure modules (ipam, network,
//! endpoint), applies through the datapath in a fixed order with an undo for every step, and
//! persists each call's changes in one atomic commit before answering.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::datapath::{Datapath, DatapathError, EndpointState, VethSpec};
use crate::docker::DockerSnapshot;
use crate::endpoint::{host_ifname, Endpoint, JoinPlan, Joined};
use crate::ids::{BadId, EndpointId, NetworkId};
use crate::input::quoted;
use crate::ipam::{self, AllocationKind, Ipam, IpamConfig, IpamError, PoolId, PoolRequest};
use crate::network::{Network, NetworkOptions};
use crate::store::{Change, Records, Store, StoreError, Table};
use crate::views::{EndpointView, NetworkView, PoolView, StatusView};

/// Settings that do not change while the daemon runs.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub ipam: IpamConfig,
    /// Endpoint MTU when a network has no `-o mtu`; `None` = the host's default-route MTU.
    pub mtu: Option<u32>,
    /// Records younger than this (seconds) are never reconciled away.
    pub reconcile_grace_secs: u64,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig { ipam: IpamConfig::default(), mtu: None, reconcile_grace_secs: RECONCILE_GRACE_SECS }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    BadId(#[from] BadId),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("unknown network {0}")]
    UnknownNetwork(String),
    #[error("unknown endpoint {0}")]
    UnknownEndpoint(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("persist state: {0}")]
    Store(#[from] StoreError),
    #[error("corrupt state record {table}/{key}: {reason}")]
    CorruptState { table: &'static str, key: String, reason: String },
}

impl DriverError {
    /// HTTP status for the plugin protocol (never 404: dockerd reads 404 as "method missing").
    pub fn status(&self) -> u16 {
        match self {
            DriverError::BadRequest(_)
            | DriverError::BadId(_)
            | DriverError::UnknownNetwork(_)
            | DriverError::UnknownEndpoint(_) => 400,
            DriverError::Ipam(e) => match e {
                IpamError::SubnetInUse { .. }
                | IpamError::InUse { .. }
                | IpamError::Exhausted { .. }
                | IpamError::NoFreeSubnet { .. }
                | IpamError::NoFreeGateway => 409,
                _ => 400,
            },
            DriverError::Conflict(_) => 409,
            DriverError::Datapath(_) | DriverError::Store(_) | DriverError::CorruptState { .. } => 500,
        }
    }
}

/// What RequestPool hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolGrant {
    pub id: PoolId,
    pub subnet: IpNet,
    /// The pool's link-local gateway, as a CIDR for dockerd.
    pub gateway: IpNet,
}

/// One entry of CreateNetwork's IPv4Data/IPv6Data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolData {
    pub address_space: String,
    pub pool: IpNet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateNetwork {
    pub id: NetworkId,
    pub options: NetworkOptions,
    pub ipv4: Vec<PoolData>,
    pub ipv6: Vec<PoolData>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateEndpoint {
    pub network: NetworkId,
    pub endpoint: EndpointId,
    pub ipv4: Option<IpNet>,
    pub ipv6: Option<IpNet>,
    pub mac: Option<[u8; 6]>,
}

/// What CreateEndpoint fills in that dockerd left empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointGrant {
    pub mac: Option<[u8; 6]>,
    pub ipv6: Option<IpNet>,
}

/// Everything the daemon must not forget.
#[derive(Debug, Clone, Default, PartialEq)]
struct State {
    ipam: Ipam,
    networks: BTreeMap<NetworkId, Network>,
    endpoints: BTreeMap<EndpointId, Endpoint>,
    next_number: u32,
}

/// The records a call touched, written in one commit.
#[derive(Debug, Default)]
struct Dirty {
    pools: BTreeSet<PoolId>,
    networks: BTreeSet<NetworkId>,
    endpoints: BTreeSet<EndpointId>,
    meta: bool,
}

/// A kernel step already applied, undone in reverse order if a later step fails.
#[derive(Debug)]
enum Undo {
    Forget(u32),
    DeleteVeth(String),
    Detach(String),
    Uninstall(EndpointState),
}

/// Default of `DriverConfig::reconcile_grace_secs`: dockerd stores an endpoint only after
/// CreateEndpoint returned, and a container start takes well under a minute.
pub const RECONCILE_GRACE_SECS: u64 = 60;

/// What a reconciliation removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub endpoints_removed: usize,
    pub networks_removed: usize,
    pub pools_released: usize,
    pub addresses_released: usize,
}

impl ReconcileReport {
    pub fn is_empty(&self) -> bool {
        *self == ReconcileReport::default()
    }
}

const META_IPAM_SERIAL: &str = "ipam.next_serial";
const META_NEXT_NUMBER: &str = "endpoints.next_number";

pub struct Driver<D> {
    config: DriverConfig,
    datapath: D,
    store: Box<dyn Store>,
    state: Mutex<State>,
    /// Wakes the background reconciliation early (a new dockerd started talking to us).
    reconcile_soon: tokio::sync::Notify,
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn cidr(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

impl<D: Datapath> Driver<D> {
    /// Loads the persisted state and makes the kernel match it (pinned programs and maps keep
    /// running meanwhile).
    pub async fn start(config: DriverConfig, datapath: D, store: Box<dyn Store>) -> Result<Self, DriverError> {
        config.ipam.validate()?;
        let state = decode_state(store.load()?)?;
        let driver =
            Driver { config, datapath, store, state: Mutex::new(state), reconcile_soon: tokio::sync::Notify::new() };
        driver.restore().await?;
        Ok(driver)
    }

    pub fn datapath(&self) -> &D {
        &self.datapath
    }

    async fn restore(&self) -> Result<(), DriverError> {
        let mut state = self.state.lock().await;
        let joined: Vec<EndpointState> = state.endpoints.values().filter_map(datapath_state).collect();
        let report = self.datapath.restore(&joined).await?;
        info!(
            networks = state.networks.len(),
            endpoints = state.endpoints.len(),
            reattached = report.reattached.len(),
            stale_removed = report.stale_removed,
            "state restored"
        );
        if report.missing_links.is_empty() {
            return Ok(());
        }
        let mut next = state.clone();
        let mut dirty = Dirty::default();
        for ep in next.endpoints.values_mut() {
            if report.missing_links.contains(&ep.host_ifname()) {
                warn!(endpoint = ep.id.short(), ifname = %ep.host_ifname(), "veth vanished while the daemon was down");
                ep.joined = None;
                dirty.endpoints.insert(ep.id.clone());
            }
        }
        self.commit(&next, &dirty)?;
        *state = next;
        Ok(())
    }

    // ---- IPAM ----

    pub async fn request_pool(
        &self,
        request: PoolRequest,
        address_space: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<PoolGrant, DriverError> {
        if !address_space.is_empty()
            && address_space != ipam::LOCAL_ADDRESS_SPACE
            && address_space != ipam::GLOBAL_ADDRESS_SPACE
        {
            return Err(DriverError::BadRequest(format!(
                "unknown address space {}: cilium-rs serves {} and {}",
                quoted(address_space),
                ipam::LOCAL_ADDRESS_SPACE,
                ipam::GLOBAL_ADDRESS_SPACE
            )));
        }
        if let Some(key) = options.keys().next() {
            return Err(DriverError::BadRequest(format!(
                "unknown --ipam-opt {}: cilium-rs IPAM takes no options",
                quoted(key)
            )));
        }
        let avoid = if request.subnet.is_none() { self.datapath.host_prefixes().await? } else { Vec::new() };
        let mut state = self.state.lock().await;
        let mut next = state.clone();
        let pool = next.ipam.request_pool(&self.config.ipam, &request, &avoid, now())?;
        let grant = PoolGrant {
            id: pool.id.clone(),
            subnet: pool.subnet,
            gateway: match pool.gateway {
                IpAddr::V4(gw) => IpNet::from(IpAddr::V4(gw)),
                IpAddr::V6(gw) => IpNet::new(IpAddr::V6(gw), 64).unwrap_or(cidr(IpAddr::V6(gw))),
            },
        };
        let dirty = Dirty { pools: BTreeSet::from([grant.id.clone()]), meta: true, ..Dirty::default() };
        self.commit(&next, &dirty)?;
        *state = next;
        info!(pool = %grant.id, "pool created");
        Ok(grant)
    }

    pub async fn release_pool(&self, id: &PoolId) -> Result<(), DriverError> {
        let mut state = self.state.lock().await;
        let mut next = state.clone();
        if next.ipam.release_pool(id).is_none() {
            return Ok(());
        }
        let dirty = Dirty { pools: BTreeSet::from([id.clone()]), ..Dirty::default() };
        self.commit(&next, &dirty)?;
        *state = next;
        info!(pool = %id, "pool released");
        Ok(())
    }

    /// Takes an address; endpoint addresses are host routes (/32, /128), a gateway keeps the
    /// pool's prefix so `docker network inspect` shows it as usual.
    pub async fn request_address(
        &self,
        pool: &PoolId,
        preferred: Option<IpAddr>,
        gateway: bool,
    ) -> Result<IpNet, DriverError> {
        let mut state = self.state.lock().await;
        let mut next = state.clone();
        let kind = if gateway { AllocationKind::Gateway } else { AllocationKind::Address };
        let addr = next.ipam.request_address(pool, preferred, kind, now())?;
        let prefix = if gateway { next.ipam.pool(pool)?.subnet.prefix_len() } else { cidr(addr).prefix_len() };
        let dirty = Dirty { pools: BTreeSet::from([pool.clone()]), ..Dirty::default() };
        self.commit(&next, &dirty)?;
        *state = next;
        IpNet::new(addr, prefix).map_err(|e| DriverError::BadRequest(e.to_string()))
    }

    pub async fn release_address(&self, pool: &PoolId, addr: IpAddr) -> Result<(), DriverError> {
        let mut state = self.state.lock().await;
        let mut next = state.clone();
        if let Some(holder) = next.endpoints.values().find(|e| e.addresses().contains(&addr)) {
            // dockerd releases after DeleteEndpoint; an earlier release would hand out a live
            // address twice.
            return Err(DriverError::Conflict(format!(
                "address {addr} is still used by endpoint {}",
                holder.id.short()
            )));
        }
        if !next.ipam.release_address(pool, addr)? {
            return Ok(());
        }
        let dirty = Dirty { pools: BTreeSet::from([pool.clone()]), ..Dirty::default() };
        self.commit(&next, &dirty)?;
        *state = next;
        Ok(())
    }

    // ---- networks ----

    pub async fn create_network(&self, request: CreateNetwork) -> Result<(), DriverError> {
        let mut state = self.state.lock().await;
        if state.networks.contains_key(&request.id) {
            return Err(DriverError::Conflict(format!("network {} already exists", request.id.short())));
        }
        let mut next = state.clone();
        let mut dirty = Dirty::default();
        let ipv4_pools = own_pools(&next, &request.ipv4)?;
        let ipv6_pools = own_pools(&next, &request.ipv6)?;
        let driver_ipv6_pool = if ipv6_pools.is_empty() {
            // IPv6 always: take a pool for the network ourselves.
            let avoid = self.datapath.host_prefixes().await?;
            let request = PoolRequest { v6: true, internal: true, ..PoolRequest::default() };
            let id = next.ipam.request_pool(&self.config.ipam, &request, &avoid, now())?.id.clone();
            dirty.pools.insert(id.clone());
            dirty.meta = true;
            Some(id)
        } else {
            None
        };
        let network = Network {
            id: request.id.clone(),
            ipv4_pools,
            ipv6_pools,
            driver_ipv6_pool,
            ipv6_enabled: request.options.ipv6_enabled,
            internal: request.options.internal,
            mtu: request.options.mtu,
            created_at: now(),
        };
        next.networks.insert(request.id.clone(), network);
        dirty.networks.insert(request.id.clone());
        self.commit(&next, &dirty)?;
        *state = next;
        info!(network = request.id.short(), "network created");
        Ok(())
    }

    /// Removes a network; its remaining endpoints (if dockerd lost track of them) are torn
    /// down and its pools released. Unknown networks are fine.
    pub async fn delete_network(&self, id: &NetworkId) -> Result<(), DriverError> {
        let mut state = self.state.lock().await;
        let Some(network) = state.networks.get(id).cloned() else { return Ok(()) };
        let mut next = state.clone();
        let mut dirty = Dirty::default();
        let mut errors = Vec::new();
        let orphans: Vec<EndpointId> =
            next.endpoints.values().filter(|e| &e.network == id).map(|e| e.id.clone()).collect();
        for ep in orphans {
            if let Err(e) = self.teardown_endpoint(&mut next, &mut dirty, &ep).await {
                errors.push(e);
            }
        }
        for pool in network.pools() {
            if next.ipam.release_pool(pool).is_some() {
                dirty.pools.insert(pool.clone());
            }
        }
        next.networks.remove(id);
        dirty.networks.insert(id.clone());
        self.commit(&next, &dirty)?;
        *state = next;
        info!(network = id.short(), "network deleted");
        DatapathError::collect(errors).map_err(DriverError::from)
    }

    // ---- endpoints ----

    pub async fn create_endpoint(&self, request: CreateEndpoint) -> Result<EndpointGrant, DriverError> {
        let mut state = self.state.lock().await;
        if let Some(existing) = state.endpoints.get(&request.endpoint) {
            // dockerd repeats a call whose connection broke (e.g. the daemon restarted mid-call).
            return repeated_create(existing, &request);
        }
        if let Some(other) = state.endpoints.values().find(|e| e.host_ifname() == host_ifname(&request.endpoint)) {
            // Interface names take the first 11 digits of the id: never let two endpoints share one.
            return Err(DriverError::Conflict(format!(
                "endpoint {} would share interface {} with endpoint {}",
                request.endpoint.short(),
                other.host_ifname(),
                other.id.short()
            )));
        }
        let network = state
            .networks
            .get(&request.network)
            .cloned()
            .ok_or_else(|| DriverError::UnknownNetwork(request.network.short().to_owned()))?;
        let mut next = state.clone();
        let mut dirty = Dirty::default();
        let now = now();

        let ipv4 = match request.ipv4 {
            Some(net) => Some(claim(&mut next, &mut dirty, &network.ipv4_pools, net.addr(), now)?),
            None => None,
        };
        let mut grant = EndpointGrant { mac: None, ipv6: None };
        let mut ipv6_pool = None;
        let ipv6 = match request.ipv6 {
            Some(net) => Some(claim(&mut next, &mut dirty, &network.ipv6_pools, net.addr(), now)?),
            None => match network.fallback_ipv6_pool() {
                Some(pool) => {
                    let addr = next.ipam.request_address(pool, None, AllocationKind::Driver, now)?;
                    dirty.pools.insert(pool.clone());
                    ipv6_pool = Some(pool.clone());
                    grant.ipv6 = Some(cidr(addr));
                    Some(addr)
                }
                None => None,
            },
        };
        let mac = match request.mac {
            Some(mac) => mac,
            None => {
                let mac = mac_for(&request.endpoint);
                grant.mac = Some(mac);
                mac
            }
        };
        // The gateway of the pool holding the address (`claim` checked it is the network's).
        let gateway_ipv4 = ipv4.and_then(|addr| match next.ipam.pool_containing(addr)?.gateway {
            IpAddr::V4(gw) => Some(gw),
            IpAddr::V6(_) => None,
        });
        let number = next_number(&mut next);
        let endpoint = Endpoint {
            id: request.endpoint.clone(),
            network: request.network.clone(),
            number,
            ipv4: ipv4.and_then(|a| match a {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            }),
            ipv6: ipv6.and_then(|a| match a {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            }),
            ipv6_pool,
            mac,
            gateway_ipv4,
            created_at: now,
            joined: None,
        };
        next.endpoints.insert(request.endpoint.clone(), endpoint);
        dirty.endpoints.insert(request.endpoint.clone());
        dirty.meta = true;
        self.commit(&next, &dirty)?;
        *state = next;
        info!(network = request.network.short(), endpoint = request.endpoint.short(), "endpoint created");
        Ok(grant)
    }

    /// Creates the veth pair, attaches the programs and installs routes and map entries.
    pub async fn join(&self, network: &NetworkId, id: &EndpointId, sandbox_key: &str) -> Result<JoinPlan, DriverError> {
        let mut state = self.state.lock().await;
        let endpoint = lookup(&state, network, id)?.clone();
        if endpoint.joined.is_some() {
            return Ok(endpoint.join_plan());
        }
        let mtu = match state.networks.get(network).and_then(|n| n.mtu).or(self.config.mtu) {
            Some(mtu) => mtu,
            None => self.datapath.default_mtu().await?,
        };
        // All endpoints of one container share the sandbox key dockerd sends (its netns path).
        let sandbox = state
            .endpoints
            .values()
            .filter_map(|e| e.joined.as_ref())
            .find(|j| !sandbox_key.is_empty() && j.sandbox_key == sandbox_key)
            .map_or(endpoint.number, |j| j.sandbox);
        let mut undo = Vec::new();
        let applied = self.apply_join(&endpoint, mtu, sandbox, &mut undo).await;
        let joined = match applied {
            Ok(joined) => joined,
            Err(e) => {
                self.rollback(undo).await;
                return Err(e.into());
            }
        };
        let mut next = state.clone();
        if let Some(ep) = next.endpoints.get_mut(id) {
            ep.joined = Some(Joined { sandbox_key: sandbox_key.to_owned(), ..joined });
        }
        let dirty = Dirty { endpoints: BTreeSet::from([id.clone()]), ..Dirty::default() };
        if let Err(e) = self.commit(&next, &dirty) {
            self.rollback(undo).await;
            return Err(e);
        }
        *state = next;
        info!(network = network.short(), endpoint = id.short(), ifname = %endpoint.host_ifname(), "endpoint joined");
        Ok(endpoint.join_plan())
    }

    async fn apply_join(
        &self,
        endpoint: &Endpoint,
        mtu: u32,
        sandbox: u32,
        undo: &mut Vec<Undo>,
    ) -> Result<Joined, DatapathError> {
        let host_ifname = endpoint.host_ifname();
        let spec = VethSpec {
            host_ifname: host_ifname.clone(),
            peer_ifname: endpoint.peer_ifname(),
            mtu,
            peer_mac: endpoint.mac,
        };
        let started = std::time::Instant::now();
        undo.push(Undo::Forget(endpoint.number));
        let link = self.datapath.create_veth(&spec).await?;
        undo.push(Undo::DeleteVeth(host_ifname.clone()));
        let veth_us = started.elapsed().as_micros() as u64;
        self.datapath.attach(&host_ifname).await?;
        undo.push(Undo::Detach(host_ifname.clone()));
        let attach_us = started.elapsed().as_micros() as u64 - veth_us;
        let joined = Joined { sandbox_key: String::new(), sandbox, host_ifindex: link.index, host_mac: link.mac, mtu };
        let mut with_link = endpoint.clone();
        with_link.joined = Some(joined.clone());
        if let Some(ep_state) = datapath_state(&with_link) {
            self.datapath.install(&ep_state).await?;
            undo.push(Undo::Uninstall(ep_state));
        }
        let install_us = started.elapsed().as_micros() as u64 - veth_us - attach_us;
        debug!(veth_us, attach_us, install_us, "join applied");
        Ok(joined)
    }

    async fn rollback(&self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            let result = match &step {
                Undo::Uninstall(ep) => self.datapath.uninstall(ep).await,
                Undo::Forget(number) => self.datapath.forget(*number).await,
                Undo::Detach(name) => self.datapath.detach(name).await,
                Undo::DeleteVeth(name) => self.datapath.delete_veth(name).await,
            };
            if let Err(e) = result {
                warn!(step = ?step, error = %e, "rollback step failed");
            }
        }
    }

    /// Stops delivering to the endpoint; dockerd moves the interface back afterwards, and the
    /// veth goes at DeleteEndpoint. Unknown or already-left endpoints are fine.
    pub async fn leave(&self, network: &NetworkId, id: &EndpointId) -> Result<(), DriverError> {
        let mut state = self.state.lock().await;
        let Some(endpoint) = state.endpoints.get(id).filter(|e| &e.network == network).cloned() else {
            return Ok(());
        };
        let Some(ep_state) = datapath_state(&endpoint) else { return Ok(()) };
        self.datapath.uninstall(&ep_state).await?;
        let mut next = state.clone();
        if let Some(ep) = next.endpoints.get_mut(id) {
            ep.joined = None;
        }
        let dirty = Dirty { endpoints: BTreeSet::from([id.clone()]), ..Dirty::default() };
        self.commit(&next, &dirty)?;
        *state = next;
        info!(network = network.short(), endpoint = id.short(), "endpoint left");
        Ok(())
    }

    /// Removes everything of the endpoint, going on past errors; unknown endpoints are fine.
    pub async fn delete_endpoint(&self, network: &NetworkId, id: &EndpointId) -> Result<(), DriverError> {
        let mut state = self.state.lock().await;
        if state.endpoints.get(id).is_none_or(|e| &e.network != network) {
            // Not ours any more (state lost, or a repeated call): the veth is still named after
            // the endpoint id, so remove it and its pins if they exist.
            let host_ifname = host_ifname(id);
            if state.endpoints.values().any(|e| e.host_ifname() == host_ifname) {
                return Ok(());
            }
            let errors: Vec<DatapathError> =
                [self.datapath.detach(&host_ifname).await.err(), self.datapath.delete_veth(&host_ifname).await.err()]
                    .into_iter()
                    .flatten()
                    .collect();
            return DatapathError::collect(errors).map_err(DriverError::from);
        }
        let mut next = state.clone();
        let mut dirty = Dirty::default();
        let result = self.teardown_endpoint(&mut next, &mut dirty, id).await;
        self.commit(&next, &dirty)?;
        *state = next;
        info!(network = network.short(), endpoint = id.short(), "endpoint deleted");
        result.map_err(DriverError::from)
    }

    async fn teardown_endpoint(
        &self,
        next: &mut State,
        dirty: &mut Dirty,
        id: &EndpointId,
    ) -> Result<(), DatapathError> {
        let Some(endpoint) = next.endpoints.remove(id) else { return Ok(()) };
        dirty.endpoints.insert(id.clone());
        let host_ifname = endpoint.host_ifname();
        let mut errors = Vec::new();
        if let Some(ep_state) = datapath_state(&endpoint) {
            errors.extend(self.datapath.uninstall(&ep_state).await.err());
        }
        errors.extend(self.datapath.detach(&host_ifname).await.err());
        errors.extend(self.datapath.delete_veth(&host_ifname).await.err());
        errors.extend(self.datapath.forget(endpoint.number).await.err());
        if let (Some(pool), Some(addr)) = (&endpoint.ipv6_pool, endpoint.ipv6) {
            if let Err(e) = next.ipam.release_address(pool, IpAddr::V6(addr)) {
                errors.push(DatapathError::Other(e.to_string()));
            }
            dirty.pools.insert(pool.clone());
        }
        DatapathError::collect(errors)
    }

    pub async fn endpoint_info(
        &self,
        network: &NetworkId,
        id: &EndpointId,
    ) -> Result<BTreeMap<String, String>, DriverError> {
        let state = self.state.lock().await;
        let ep = lookup(&state, network, id)?;
        let mut info = BTreeMap::from([
            ("host_ifname".to_owned(), ep.host_ifname()),
            ("mac".to_owned(), crate::endpoint::format_mac(&ep.mac)),
        ]);
        if let Some(a) = ep.ipv6 {
            info.insert("ipv6".to_owned(), a.to_string());
        }
        if let Some(a) = ep.ipv4 {
            info.insert("ipv4".to_owned(), a.to_string());
        }
        Ok(info)
    }

    // ---- reconciliation ----

    /// Asks the background reconciliation to run soon (it never runs inside a plugin request).
    pub fn request_reconcile(&self) {
        self.reconcile_soon.notify_one();
    }

    /// Resolves when a reconciliation was requested.
    pub async fn reconcile_requested(&self) {
        self.reconcile_soon.notified().await;
    }

    /// Drops what dockerd no longer knows: endpoints and networks it forgot (their calls were
    /// lost while this daemon was down), pools no network uses, addresses nobody holds. Records
    /// younger than the grace period before the snapshot are left alone, since dockerd
    /// stores endpoints only after CreateEndpoint returns.
    pub async fn reconcile(&self, snap: &DockerSnapshot) -> Result<ReconcileReport, DriverError> {
        let settled = |at: u64| at.saturating_add(self.config.reconcile_grace_secs) <= snap.taken_at;
        let mut state = self.state.lock().await;
        let mut next = state.clone();
        let mut dirty = Dirty::default();
        let mut report = ReconcileReport::default();
        let mut errors = Vec::new();

        let gone_endpoints: Vec<EndpointId> = next
            .endpoints
            .values()
            .filter(|e| settled(e.created_at))
            .filter(|e| !snap.networks.get(&e.network).is_some_and(|n| n.endpoints.contains(&e.id)))
            .map(|e| e.id.clone())
            .collect();
        for id in gone_endpoints {
            warn!(endpoint = id.short(), "dockerd no longer knows this endpoint: removing it");
            errors.extend(self.teardown_endpoint(&mut next, &mut dirty, &id).await.err());
            report.endpoints_removed += 1;
        }

        let gone_networks: Vec<NetworkId> = next
            .networks
            .values()
            .filter(|n| settled(n.created_at) && !snap.networks.contains_key(&n.id))
            .map(|n| n.id.clone())
            .collect();
        for id in gone_networks {
            warn!(network = id.short(), "dockerd no longer knows this network: removing it");
            if let Some(network) = next.networks.remove(&id) {
                for pool in network.pools() {
                    if next.ipam.release_pool(pool).is_some() {
                        dirty.pools.insert(pool.clone());
                        report.pools_released += 1;
                    }
                }
            }
            dirty.networks.insert(id);
            report.networks_removed += 1;
        }

        let used_pools: BTreeSet<PoolId> = next.networks.values().flat_map(|n| n.pools().cloned()).collect();
        let orphan_pools: Vec<PoolId> = next
            .ipam
            .pools
            .values()
            .filter(|p| settled(p.created_at) && !used_pools.contains(&p.id))
            .filter(|p| !snap.subnets.iter().any(|s| s.trunc() == p.subnet))
            .map(|p| p.id.clone())
            .collect();
        for id in orphan_pools {
            warn!(pool = %id, "no network uses this pool: releasing it");
            next.ipam.release_pool(&id);
            dirty.pools.insert(id);
            report.pools_released += 1;
        }

        let held: BTreeSet<IpAddr> = next.endpoints.values().flat_map(Endpoint::addresses).collect();
        for pool in next.ipam.pools.values_mut() {
            let leaked: Vec<IpAddr> = pool
                .allocations
                .iter()
                .filter(|(addr, a)| settled(a.at) && !held.contains(*addr) && !snap.addresses.contains(*addr))
                .map(|(addr, _)| *addr)
                .collect();
            for addr in leaked {
                warn!(pool = %pool.id, %addr, "address held by nobody: releasing it");
                pool.allocations.remove(&addr);
                dirty.pools.insert(pool.id.clone());
                report.addresses_released += 1;
            }
        }

        self.commit(&next, &dirty)?;
        *state = next;
        DatapathError::collect(errors)?;
        Ok(report)
    }

    // ---- views ----

    pub async fn endpoints(&self) -> Result<Vec<EndpointView>, DriverError> {
        let views: Vec<EndpointView> = {
            let state = self.state.lock().await;
            state.endpoints.values().map(endpoint_view).collect()
        };
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
        let state = self.state.lock().await;
        state
            .networks
            .values()
            .map(|n| NetworkView {
                id: n.id.to_string(),
                ipv6_enabled: n.ipv6_enabled,
                internal: n.internal,
                mtu: n.mtu,
                endpoints: state.endpoints.values().filter(|e| e.network == n.id).count(),
                pools: n
                    .pools()
                    .filter_map(|id| state.ipam.pools.get(id))
                    .map(|p| PoolView {
                        id: p.id.to_string(),
                        subnet: p.subnet.to_string(),
                        ip_range: p.range.map(|r| r.to_string()),
                        gateway: p.gateway.to_string(),
                        used: p.used(),
                        taken_by_driver: p.internal,
                    })
                    .collect(),
            })
            .collect()
    }

    pub async fn status(&self) -> StatusView {
        let state = self.state.lock().await;
        StatusView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            networks: state.networks.len(),
            endpoints: state.endpoints.len(),
            pools: state.ipam.pools.len(),
        }
    }

    // ---- persistence ----

    fn commit(&self, next: &State, dirty: &Dirty) -> Result<(), DriverError> {
        let mut changes = Vec::new();
        for id in &dirty.pools {
            changes.push(change(Table::Pools, &id.0, next.ipam.pools.get(id))?);
        }
        for id in &dirty.networks {
            changes.push(change(Table::Networks, id.as_str(), next.networks.get(id))?);
        }
        for id in &dirty.endpoints {
            changes.push(change(Table::Endpoints, id.as_str(), next.endpoints.get(id))?);
        }
        if dirty.meta {
            changes.push(change(Table::Meta, META_IPAM_SERIAL, Some(&next.ipam.next_serial))?);
            changes.push(change(Table::Meta, META_NEXT_NUMBER, Some(&next.next_number))?);
        }
        let started = std::time::Instant::now();
        let result = self.store.commit(&changes).map_err(DriverError::from);
        debug!(records = changes.len(), commit_us = started.elapsed().as_micros() as u64, "state committed");
        result
    }
}

fn change<T: Serialize>(table: Table, key: &str, value: Option<&T>) -> Result<Change, DriverError> {
    let value = match value {
        Some(v) => Some(serde_json::to_vec(v).map_err(|e| DriverError::CorruptState {
            table: table_name(table),
            key: key.to_owned(),
            reason: e.to_string(),
        })?),
        None => None,
    };
    Ok(Change { table, key: key.to_owned(), value })
}

fn table_name(table: Table) -> &'static str {
    table.name()
}

fn decode<T: DeserializeOwned>(table: Table, key: &str, bytes: &[u8]) -> Result<T, DriverError> {
    serde_json::from_slice(bytes).map_err(|e| DriverError::CorruptState {
        table: table_name(table),
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn decode_state(records: Records) -> Result<State, DriverError> {
    let mut state = State::default();
    for (table, rows) in records {
        for (key, bytes) in rows {
            match table {
                Table::Pools => {
                    let pool: ipam::Pool = decode(table, &key, &bytes)?;
                    state.ipam.pools.insert(pool.id.clone(), pool);
                }
                Table::Networks => {
                    let network: Network = decode(table, &key, &bytes)?;
                    state.networks.insert(network.id.clone(), network);
                }
                Table::Endpoints => {
                    let mut endpoint: Endpoint = decode(table, &key, &bytes)?;
                    if let Some(joined) = endpoint.joined.as_mut().filter(|j| j.sandbox == 0) {
                        // Recorded before sandboxes were: alone in its own.
                        joined.sandbox = endpoint.number;
                    }
                    state.endpoints.insert(endpoint.id.clone(), endpoint);
                }
                Table::Meta => match key.as_str() {
                    META_IPAM_SERIAL => state.ipam.next_serial = decode(table, &key, &bytes)?,
                    META_NEXT_NUMBER => state.next_number = decode(table, &key, &bytes)?,
                    _ => {}
                },
                Table::Kv | Table::Rules => {}
            }
        }
    }
    Ok(state)
}

/// The pools of CreateNetwork's IPAM data, which must be ours and not yet used by a network.
fn own_pools(state: &State, data: &[PoolData]) -> Result<Vec<PoolId>, DriverError> {
    let mut ids = Vec::new();
    for entry in data {
        if entry.address_space != ipam::LOCAL_ADDRESS_SPACE && entry.address_space != ipam::GLOBAL_ADDRESS_SPACE {
            return Err(DriverError::BadRequest(format!(
                "cilium-rs networks need the cilium-rs IPAM driver: create the network with --ipam-driver cilium-rs \
                 (pool {} comes from address space {:?})",
                entry.pool, entry.address_space
            )));
        }
        let pool = state.ipam.pool_by_subnet(&entry.pool).ok_or_else(|| {
            DriverError::BadRequest(format!("pool {} was not handed out by this cilium-rs daemon", entry.pool))
        })?;
        if let Some(owner) = state.networks.values().find(|n| n.pools().any(|p| p == &pool.id)) {
            return Err(DriverError::Conflict(format!(
                "pool {} already belongs to network {}",
                entry.pool,
                owner.id.short()
            )));
        }
        ids.push(pool.id.clone());
    }
    Ok(ids)
}

/// Marks an address that dockerd got from RequestAddress as the endpoint's, checking that it
/// belongs to the network and is not another endpoint's.
fn claim(
    state: &mut State,
    dirty: &mut Dirty,
    pools: &[PoolId],
    addr: IpAddr,
    now: u64,
) -> Result<IpAddr, DriverError> {
    let Some(pool) = pools.iter().find(|id| state.ipam.pools.get(*id).is_some_and(|p| p.subnet.contains(&addr))) else {
        return Err(DriverError::BadRequest(format!("address {addr} is not in any pool of this network")));
    };
    if let Some(holder) = state.endpoints.values().find(|e| e.addresses().contains(&addr)) {
        return Err(DriverError::Conflict(format!("address {addr} is already used by endpoint {}", holder.id.short())));
    }
    let held = state.ipam.pool(pool)?.allocations.contains_key(&addr);
    if !held {
        // dockerd owns this address but our record of it was lost: take it now.
        state.ipam.request_address(pool, Some(addr), AllocationKind::Address, now)?;
        dirty.pools.insert(pool.clone());
    }
    Ok(addr)
}

/// The answer to a CreateEndpoint that was already carried out, if it asks for the same thing.
fn repeated_create(existing: &Endpoint, request: &CreateEndpoint) -> Result<EndpointGrant, DriverError> {
    let same = existing.network == request.network
        && request.ipv4.map(|n| n.addr()) == existing.ipv4.map(IpAddr::V4)
        && request.ipv6.is_none_or(|n| Some(n.addr()) == existing.ipv6.map(IpAddr::V6))
        && request.mac.is_none_or(|m| m == existing.mac);
    if !same {
        return Err(DriverError::Conflict(format!("endpoint {} already exists", request.endpoint.short())));
    }
    Ok(EndpointGrant {
        mac: request.mac.is_none().then_some(existing.mac),
        ipv6: match (request.ipv6, existing.ipv6) {
            (None, Some(addr)) => Some(cidr(IpAddr::V6(addr))),
            _ => None,
        },
    })
}

fn lookup<'a>(state: &'a State, network: &NetworkId, id: &EndpointId) -> Result<&'a Endpoint, DriverError> {
    state
        .endpoints
        .get(id)
        .filter(|e| &e.network == network)
        .ok_or_else(|| DriverError::UnknownEndpoint(id.short().to_owned()))
}

/// A locally administered unicast MAC derived from the endpoint id (each veth is its own
/// point-to-point link, so MACs need not be unique across endpoints).
fn mac_for(id: &EndpointId) -> [u8; 6] {
    let hex = id.as_str().as_bytes();
    let mut mac = [0x02, 0, 0, 0, 0, 0];
    for (i, slot) in mac.iter_mut().enumerate().skip(1) {
        let pair = std::str::from_utf8(&hex[(i - 1) * 2..i * 2]).unwrap_or("00");
        *slot = u8::from_str_radix(pair, 16).unwrap_or(0);
    }
    mac
}

fn next_number(state: &mut State) -> u32 {
    let used: BTreeSet<u32> = state.endpoints.values().map(|e| e.number).collect();
    loop {
        state.next_number = state.next_number.wrapping_add(1);
        if state.next_number != 0 && !used.contains(&state.next_number) {
            return state.next_number;
        }
    }
}

fn datapath_state(ep: &Endpoint) -> Option<EndpointState> {
    let joined = ep.joined.as_ref()?;
    Some(EndpointState {
        number: ep.number,
        sandbox: joined.sandbox,
        host_ifname: ep.host_ifname(),
        host_ifindex: joined.host_ifindex,
        host_mac: joined.host_mac,
        mac: ep.mac,
        ipv4: ep.ipv4,
        ipv6: ep.ipv6,
        gateway_ipv4: ep.gateway_ipv4,
    })
}

fn endpoint_view(ep: &Endpoint) -> EndpointView {
    EndpointView {
        id: ep.id.to_string(),
        network: ep.network.to_string(),
        number: ep.number,
        ipv6: ep.ipv6.map(|a: Ipv6Addr| a.to_string()),
        ipv4: ep.ipv4.map(|a: Ipv4Addr| a.to_string()),
        mac: crate::endpoint::format_mac(&ep.mac),
        host_ifname: ep.host_ifname(),
        host_ifindex: ep.joined.as_ref().map(|j| j.host_ifindex),
        joined: ep.joined.is_some(),
        counters: Default::default(),
    }
}
