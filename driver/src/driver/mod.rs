//! The orchestrator and one owner of state, facing Docker: each IPAM and network-driver call is
//! checked, planned with the pure modules (ipam, network, endpoint, reconcile), applied through
//! the datapath in a fixed order with an undo for every step, and its records persisted in one
//! commit before the answer.
//!
//! Locking: the state lock is only ever held for short, synchronous sections (checks, record
//! changes, the commit); kernel calls run outside it, under a per-endpoint lock, so one slow
//! endpoint (or a policy change) never stalls the plugin calls of others.

mod locks;
mod monitor;
mod observe;
pub mod policy;

pub use monitor::TraceGuard;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use std::sync::{Mutex, MutexGuard};

use ipnet::IpNet;
use tracing::{debug, info, warn};

use crate::datapath::{Datapath, DatapathError, EndpointDesired, VethSpec};
use crate::egress::{EgressChoice, PortRange, DEFAULT_NAT_PORTS};
use crate::endpoint::{host_ifname, ContainerRef, Endpoint, JoinPlan, Joined};
use crate::health::{ErrorRing, Health};
use crate::identity::Identity;
use crate::identity_alloc::{AllocError, IdentityAllocator};
use crate::ids::{BadId, EndpointId, NetworkId};
use crate::input::quoted;
use crate::ipam::{self, AllocationKind, IpamConfig, IpamError, PoolId, PoolRequest};
use crate::kv::{EmbeddedKv, KvError};
use crate::labels::{LabelFilter, Labels};
use crate::metrics::{EndpointSample, EndpointState, Metrics, Snapshot};
use crate::network::{Network, NetworkOptions};
use crate::policy::EnforcementMode;
use crate::ports::{self, PortHold, PortRequest};
use crate::reconcile::{self, DockerSnapshot, ReconcileReport};
use crate::state::{now, State, StateError, Txn};
use crate::store::{Store, WatchedStore};
use crate::views::{self, IdentityView};

pub use policy::{DeleteWhich, Deleted, Imported, PolicyEngine, PolicyEngineError};

/// Settings that do not change while the daemon runs.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The driver and IPAM driver name networks carry in Docker (`cilium-rs`, or a managed
    /// plugin's `cilium-rs:latest`).
    pub driver_name: String,
    pub ipam: IpamConfig,
    /// Endpoint MTU when a network has no `-o mtu`; `None` = the host's default-route MTU.
    pub mtu: Option<u32>,
    /// Records younger than this (seconds) are never reconciled away.
    pub reconcile_grace_secs: u64,
    /// `--enable-policy`.
    pub enforcement: EnforcementMode,
    /// Which container labels count for identity.
    pub labels: LabelFilter,
    /// `--egress-interface`.
    pub egress: EgressChoice,
    /// `--nat-port-range`.
    pub nat_ports: PortRange,
    /// Where the log layer keeps the errors the daemon logged (the status shows them).
    pub errors: ErrorRing,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            driver_name: DEFAULT_DRIVER_NAME.to_owned(),
            ipam: IpamConfig::default(),
            mtu: None,
            reconcile_grace_secs: RECONCILE_GRACE_SECS,
            enforcement: EnforcementMode::Default,
            labels: LabelFilter::default(),
            egress: EgressChoice::default(),
            nat_ports: DEFAULT_NAT_PORTS,
            errors: ErrorRing::default(),
        }
    }
}

/// Default of `DriverConfig::driver_name`: the legacy plugin's socket `cilium-rs.sock`.
pub const DEFAULT_DRIVER_NAME: &str = "cilium-rs";

/// Default of `DriverConfig::reconcile_grace_secs`: dockerd stores an endpoint only after
/// CreateEndpoint returned, and a container start takes well under a minute.
pub const RECONCILE_GRACE_SECS: u64 = 60;

/// Why a call failed. The server decides what each kind means on its socket.
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
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Policy(#[from] PolicyEngineError),
    #[error("identity store: {0}")]
    Kv(#[from] KvError),
    #[error(transparent)]
    Identity(#[from] AllocError),
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

/// A kernel step already applied, undone in reverse order if a later step fails.
#[derive(Debug)]
enum Undo {
    RemoveEndpoint(u32),
    DeleteVeth(String),
    Detach(String),
}

pub struct Driver {
    config: DriverConfig,
    datapath: Arc<dyn Datapath>,
    /// Remembers how its last commit went, for the status.
    store: Arc<WatchedStore>,
    state: Mutex<State>,
    /// Uptime, the Docker connection, the last errors logged.
    health: Health,
    /// Serialises the calls of one endpoint (their kernel steps run outside the state lock).
    endpoint_locks: locks::KeyedLocks<EndpointId>,
    /// Wakes the background reconciliation early (a new dockerd started talking to us).
    reconcile_soon: tokio::sync::Notify,
    policy: PolicyEngine,
    identities: IdentityAllocator,
    /// Allocation and its policy entries, and release and their removal, each happen as one
    /// step: a number freed and handed out again in between must not lose its entries.
    identity_turns: tokio::sync::Mutex<()>,
    /// Wakes the identity resolution: an endpoint joined and waits for its labels.
    joined: tokio::sync::Notify,
    /// When each endpoint still waiting for its identity joined, and how long the identity
    /// took to reach the datapath after Join for those that got one (in memory only).
    identity_timing: Mutex<IdentityTiming>,
    /// One egress refresh at a time (network changes and the periodic one).
    egress_turn: tokio::sync::Mutex<()>,
    /// Wakes the NAT sweep: an endpoint went, its translations can go too.
    nat_sweep: tokio::sync::Notify,
    /// The sockets holding each joined endpoint's published host ports.
    port_holds: Mutex<std::collections::HashMap<EndpointId, PortHold>>,
    /// The datapath's events as monitor lines.
    monitor: Arc<crate::monitor::Monitor>,
    /// Endpoints some monitor traces.
    traced: Mutex<monitor::Traced>,
    /// What the daemon counts for Prometheus (the plugin server records its requests here).
    metrics: Arc<Metrics>,
    /// The plugin calls in flight, written down for the daemon after a crash (none in tests).
    inflight: std::sync::OnceLock<crate::inflight::InFlight>,
}

#[derive(Debug, Default)]
struct IdentityTiming {
    joined_at: std::collections::HashMap<EndpointId, std::time::Instant>,
    resolved_after: std::collections::HashMap<EndpointId, std::time::Duration>,
}

fn cidr(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

impl Driver {
    /// Loads the persisted state (networks, endpoints, identities, rules) and makes the kernel
    /// match it (pinned programs and maps keep running meanwhile).
    pub async fn start(
        config: DriverConfig,
        datapath: Arc<dyn Datapath>,
        store: Arc<dyn Store>,
    ) -> Result<Self, DriverError> {
        config.ipam.validate()?;
        let store = Arc::new(WatchedStore::new(store));
        let records = store.load().map_err(StateError::from)?;
        let state = State::decode(&records)?;
        let policy = PolicyEngine::load(&records, config.enforcement, datapath.clone(), store.clone())?;
        let identities = IdentityAllocator::new(Arc::new(EmbeddedKv::open(store.clone())?));
        let health = Health::new(config.errors.clone());
        let driver = Driver {
            config,
            datapath,
            store,
            state: Mutex::new(state),
            health,
            endpoint_locks: locks::KeyedLocks::default(),
            reconcile_soon: tokio::sync::Notify::new(),
            policy,
            identities,
            identity_turns: tokio::sync::Mutex::new(()),
            joined: tokio::sync::Notify::new(),
            identity_timing: Mutex::new(IdentityTiming::default()),
            egress_turn: tokio::sync::Mutex::new(()),
            nat_sweep: tokio::sync::Notify::new(),
            port_holds: Mutex::new(std::collections::HashMap::new()),
            monitor: Arc::new(crate::monitor::Monitor::new()),
            traced: Mutex::new(monitor::Traced::default()),
            metrics: Arc::new(Metrics::new()),
            inflight: std::sync::OnceLock::new(),
        };
        driver.restore_identities().await?;
        driver.restore().await?;
        let ports = driver.config.nat_ports;
        driver.datapath.set_nat_ports(ports.min, ports.max).await?;
        driver.refresh_egress().await?;
        Ok(driver)
    }

    /// Takes a reference on every endpoint's identity again; an endpoint whose number now
    /// stands for other labels goes back to init (its identity is resolved again).
    async fn restore_identities(&self) -> Result<(), DriverError> {
        let in_use: Vec<(EndpointId, Identity, Labels)> = self
            .state()
            .endpoints
            .values()
            .filter(|e| e.identity.is_endpoint())
            .map(|e| (e.id.clone(), e.identity, e.labels.clone()))
            .collect();
        let report =
            self.identities.restore(in_use.iter().map(|(_, id, labels)| (*id, labels.clone())).collect()).await?;
        let conflicts: BTreeSet<Identity> = report.conflicts.iter().map(|c| c.identity).collect();
        let mut known = Vec::new();
        {
            let mut state = self.state();
            let mut txn = Txn::new(&mut state);
            for (id, identity, labels) in &in_use {
                if conflicts.contains(identity) {
                    warn!(endpoint = id.short(), %identity, "identity taken by other labels: resolving it again");
                    if let Some(ep) = txn.touch_endpoint(id).get_mut(id) {
                        ep.identity = Identity::INIT;
                        ep.labels = Labels::new();
                        ep.container = None;
                    }
                } else {
                    known.push((*identity, labels.clone()));
                }
            }
            if !txn.is_empty() {
                txn.commit(self.store.as_ref())?;
            }
        }
        self.policy.restore_identities(known).await;
        Ok(())
    }

    /// Holds the host ports of the joined endpoints again (a restarted daemon); a port some
    /// host process took while the daemon was down stays published, with a warning.
    fn hold_published_again(&self) {
        let published: Vec<(EndpointId, Vec<ports::PublishedPort>)> = self
            .state()
            .endpoints
            .values()
            .filter(|e| e.joined.is_some() && !e.published.is_empty())
            .map(|e| (e.id.clone(), e.published.clone()))
            .collect();
        for (id, ports) in published {
            let (hold, errors) = ports::hold_again(&ports);
            for error in errors {
                warn!(endpoint = id.short(), %error, "a published port is taken on the host");
            }
            self.holds().insert(id, hold);
        }
    }

    fn holds(&self) -> MutexGuard<'_, std::collections::HashMap<EndpointId, PortHold>> {
        self.port_holds.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn timing(&self) -> MutexGuard<'_, IdentityTiming> {
        self.identity_timing.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The state, for a short synchronous section (never held across an await).
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn restore(&self) -> Result<(), DriverError> {
        let (joined, networks, endpoints): (Vec<EndpointDesired>, usize, usize) = {
            let state = self.state();
            let joined = state.endpoints.values().filter_map(|e| self.desired_of(e, true)).collect();
            (joined, state.networks.len(), state.endpoints.len())
        };
        self.hold_published_again();
        let report = {
            let policy = self.policy.lock().await;
            self.datapath.restore(&joined, policy.view()).await?
        };
        info!(
            networks,
            endpoints,
            reattached = report.reattached.len(),
            stale_removed = report.stale_removed,
            "state restored"
        );
        let mut state = self.state();
        let changed: Vec<EndpointId> = state
            .endpoints
            .values()
            .filter(|e| {
                e.joined.as_ref().is_some_and(|j| match report.links.get(&e.host_ifname()) {
                    None => report.missing_links.contains(&e.host_ifname()),
                    Some(link) => link.index != j.host_ifindex || link.mac != j.host_mac,
                })
            })
            .map(|e| e.id.clone())
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let mut txn = Txn::new(&mut state);
        for id in changed {
            let Some(ep) = txn.touch_endpoint(&id).get_mut(&id) else { continue };
            let ifname = ep.host_ifname();
            match (report.links.get(&ifname), ep.joined.as_mut()) {
                (Some(link), Some(joined)) => {
                    joined.host_ifindex = link.index;
                    joined.host_mac = link.mac;
                }
                _ => {
                    warn!(endpoint = ep.id.short(), %ifname, "veth vanished while the daemon was down");
                    ep.joined = None;
                }
            }
        }
        txn.commit(self.store.as_ref())?;
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
        let mut state = self.state();
        let mut txn = Txn::new(&mut state);
        let config = &self.config.ipam;
        let id = txn.create_pool(|ipam| Ok(ipam.request_pool(config, &request, &avoid, now())?.id.clone()))?;
        let pool = txn.state().ipam.pool(&id)?;
        let grant = PoolGrant {
            id: pool.id.clone(),
            subnet: pool.subnet,
            gateway: match pool.gateway {
                IpAddr::V4(gw) => IpNet::from(IpAddr::V4(gw)),
                IpAddr::V6(gw) => IpNet::new(IpAddr::V6(gw), 64).unwrap_or(cidr(IpAddr::V6(gw))),
            },
        };
        txn.commit(self.store.as_ref())?;
        info!(pool = %grant.id, "pool created");
        Ok(grant)
    }

    /// Releases a pool; unknown pools are fine (dockerd repeats releases). A pool an endpoint
    /// still takes an address from is refused: its subnet could be handed out again (to the
    /// next network) while that endpoint still uses the address. It goes with its network.
    pub async fn release_pool(&self, id: &PoolId) -> Result<(), DriverError> {
        let mut state = self.state();
        let Some(pool) = state.ipam.pools.get(id) else { return Ok(()) };
        let in_use = state
            .endpoints
            .values()
            .find_map(|e| e.addresses().into_iter().find(|a| pool.subnet.contains(a)).map(|a| (e, a)));
        if let Some((holder, addr)) = in_use {
            return Err(DriverError::Conflict(format!(
                "pool {} is still in use: endpoint {} holds {addr}; delete the endpoint (or the network) first",
                pool.subnet,
                holder.id.short()
            )));
        }
        let mut txn = Txn::new(&mut state);
        txn.touch_pool(id).release_pool(id);
        txn.commit(self.store.as_ref())?;
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
        let mut state = self.state();
        let mut txn = Txn::new(&mut state);
        let kind = if gateway { AllocationKind::Gateway } else { AllocationKind::Address };
        let addr = txn.touch_pool(pool).request_address(pool, preferred, kind, now())?;
        let prefix = if gateway { txn.state().ipam.pool(pool)?.subnet.prefix_len() } else { cidr(addr).prefix_len() };
        let address = IpNet::new(addr, prefix).map_err(|e| DriverError::BadRequest(e.to_string()))?;
        txn.commit(self.store.as_ref())?;
        Ok(address)
    }

    pub async fn release_address(&self, pool: &PoolId, addr: IpAddr) -> Result<(), DriverError> {
        let mut state = self.state();
        if let Some(holder) = state.endpoints.values().find(|e| e.addresses().contains(&addr)) {
            // dockerd releases after DeleteEndpoint; an earlier release would hand out a live
            // address twice.
            return Err(DriverError::Conflict(format!(
                "address {addr} is still used by endpoint {}",
                holder.id.short()
            )));
        }
        let mut txn = Txn::new(&mut state);
        if !txn.touch_pool(pool).release_address(pool, addr)? {
            return Ok(());
        }
        txn.commit(self.store.as_ref())?;
        Ok(())
    }

    // ---- networks ----

    pub async fn create_network(&self, request: CreateNetwork) -> Result<(), DriverError> {
        // IPv6 always: without an IPv6 pool from dockerd the driver takes one for the network.
        let avoid = if request.ipv6.is_empty() { self.datapath.host_prefixes().await? } else { Vec::new() };
        self.add_network(request, &avoid)?;
        self.refresh_egress_logged().await;
        Ok(())
    }

    fn add_network(&self, request: CreateNetwork, avoid: &[IpNet]) -> Result<(), DriverError> {
        let mut state = self.state();
        if state.networks.contains_key(&request.id) {
            return Err(DriverError::Conflict(format!("network {} already exists", request.id.short())));
        }
        let name = &self.config.driver_name;
        let ipv4_pools = own_pools(&state, &request.ipv4, name)?;
        let ipv6_pools = own_pools(&state, &request.ipv6, name)?;
        let mut txn = Txn::new(&mut state);
        let driver_ipv6_pool = if ipv6_pools.is_empty() {
            let request = PoolRequest { v6: true, internal: true, ..PoolRequest::default() };
            let config = &self.config.ipam;
            Some(txn.create_pool(|ipam| Ok(ipam.request_pool(config, &request, avoid, now())?.id.clone()))?)
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
            masquerade: request.options.masquerade,
            mtu: request.options.mtu,
            created_at: now(),
            name: None,
        };
        txn.touch_network(&request.id).insert(request.id.clone(), network);
        txn.commit(self.store.as_ref())?;
        info!(network = request.id.short(), "network created");
        Ok(())
    }

    /// Removes a network; its remaining endpoints (if dockerd lost track of them) are torn
    /// down and its pools released. Unknown networks are fine.
    pub async fn delete_network(&self, id: &NetworkId) -> Result<(), DriverError> {
        let orphans: Vec<EndpointId> = {
            let state = self.state();
            if !state.networks.contains_key(id) {
                return Ok(());
            }
            state.endpoints.values().filter(|e| &e.network == id).map(|e| e.id.clone()).collect()
        };
        let mut errors = Vec::new();
        for ep in orphans {
            errors.extend(self.teardown_endpoint(&ep).await.err());
        }
        if self.remove_network(id)? {
            info!(network = id.short(), "network deleted");
            self.refresh_egress_logged().await;
        }
        DriverError::collect(errors)
    }

    /// Removes the record of a network and releases its pools; false when it was gone.
    fn remove_network(&self, id: &NetworkId) -> Result<bool, DriverError> {
        let mut state = self.state();
        let Some(network) = state.networks.get(id).cloned() else { return Ok(false) };
        let mut txn = Txn::new(&mut state);
        for pool in network.pools() {
            txn.touch_pool(pool).release_pool(pool);
        }
        txn.touch_network(id).remove(id);
        txn.commit(self.store.as_ref())?;
        Ok(true)
    }

    // ---- endpoints ----

    pub async fn create_endpoint(&self, request: CreateEndpoint) -> Result<EndpointGrant, DriverError> {
        let _held = self.endpoint_locks.lock(&request.endpoint).await;
        let mut state = self.state();
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
        let mut txn = Txn::new(&mut state);
        let now = now();

        let ipv4 = match request.ipv4 {
            Some(net) => Some(claim(&mut txn, &network.ipv4_pools, net.addr(), now)?),
            None => None,
        };
        let mut grant = EndpointGrant { mac: None, ipv6: None };
        let mut ipv6_pool = None;
        let ipv6 = match request.ipv6 {
            Some(net) => Some(claim(&mut txn, &network.ipv6_pools, net.addr(), now)?),
            None => match network.fallback_ipv6_pool() {
                Some(pool) => {
                    let addr = txn.touch_pool(pool).request_address(pool, None, AllocationKind::Driver, now)?;
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
        let gateway_ipv4 = ipv4.and_then(|addr| match txn.state().ipam.pool_containing(addr)?.gateway {
            IpAddr::V4(gw) => Some(gw),
            IpAddr::V6(_) => None,
        });
        let gateway_ipv6 = ipv6.and_then(|addr| match txn.state().ipam.pool_containing(addr)?.gateway {
            IpAddr::V6(gw) => Some(gw),
            IpAddr::V4(_) => None,
        });
        let number = txn.state_mut().take_number();
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
            gateway_ipv6,
            created_at: now,
            joined: None,
            identity: Identity::INIT,
            container: None,
            labels: Labels::new(),
            internal: network.internal,
            masquerade: network.masquerade,
            published: Vec::new(),
        };
        txn.touch_endpoint(&request.endpoint).insert(request.endpoint.clone(), endpoint);
        txn.commit(self.store.as_ref())?;
        crate::crash::point("create_endpoint.committed");
        info!(network = request.network.short(), endpoint = request.endpoint.short(), "endpoint created");
        Ok(grant)
    }

    /// Creates the veth pair, attaches the programs and applies the endpoint's desired state.
    /// Joins an endpoint: its veth, programs and datapath state, and the container's published
    /// ports (`ports`, dockerd's sandbox-wide port map) when it is the container's first
    /// endpoint on a network that is not internal. A host port that is taken refuses the Join.
    pub async fn join(
        &self,
        network: &NetworkId,
        id: &EndpointId,
        sandbox_key: &str,
        ports: &[PortRequest],
    ) -> Result<JoinPlan, DriverError> {
        let _held = self.endpoint_locks.lock(id).await;
        let (mut endpoint, mtu, sandbox, publish, ipv6_gateway_routed, subnets) = {
            let state = self.state();
            let endpoint = lookup(&state, network, id)?.clone();
            if let Some(joined) = &endpoint.joined {
                let routed = ipv6_gateway_routed(&state, &endpoint, &joined.sandbox_key);
                return Ok(endpoint.join_plan(routed, &subnets_of(&state, &endpoint)));
            }
            let mtu = state.networks.get(network).and_then(|n| n.mtu).or(self.config.mtu);
            // All endpoints of one container share the sandbox key dockerd sends (its netns
            // path); dockerd joins one sandbox's endpoints one at a time.
            let same_sandbox: Vec<&Endpoint> = state
                .endpoints
                .values()
                .filter(|e| e.joined.as_ref().is_some_and(|j| !sandbox_key.is_empty() && j.sandbox_key == sandbox_key))
                .collect();
            let sandbox = same_sandbox.first().and_then(|e| e.joined.as_ref()).map_or(endpoint.number, |j| j.sandbox);
            let published_elsewhere = same_sandbox.iter().any(|e| !e.published.is_empty());
            if !ports.is_empty() && endpoint.internal {
                info!(endpoint = id.short(), "ports are not published on an internal network");
            }
            let publish = !ports.is_empty() && !endpoint.internal && !published_elsewhere;
            let routed = ipv6_gateway_routed(&state, &endpoint, sandbox_key);
            let subnets = subnets_of(&state, &endpoint);
            (endpoint, mtu, sandbox, publish, routed, subnets)
        };
        let hold = if publish {
            let (mut published, hold) = ports::hold(ports, self.config.nat_ports).map_err(DriverError::Conflict)?;
            published.sort();
            endpoint.published = published;
            Some(hold)
        } else {
            None
        };
        let mtu = match mtu {
            Some(mtu) => mtu,
            None => self.datapath.default_mtu().await?,
        };
        let mut undo = Vec::new();
        let joined = match self.apply_join(&endpoint, mtu, sandbox, sandbox_key, &mut undo).await {
            Ok(joined) => joined,
            Err(e) => {
                self.rollback(undo).await;
                return Err(e.into());
            }
        };
        crate::crash::point("join.applied");
        let committed = {
            let mut state = self.state();
            let mut txn = Txn::new(&mut state);
            endpoint.joined = Some(joined.clone());
            if let Some(ep) = txn.touch_endpoint(id).get_mut(id) {
                ep.joined = Some(joined);
                ep.published = endpoint.published.clone();
            }
            txn.commit(self.store.as_ref())
        };
        if let Err(e) = committed {
            self.rollback(undo).await;
            return Err(e.into());
        }
        crate::crash::point("join.committed");
        if let Some(hold) = hold {
            self.holds().insert(id.clone(), hold);
            let published: Vec<String> = endpoint.published.iter().map(ToString::to_string).collect();
            info!(endpoint = id.short(), ports = %published.join(","), "ports published");
        }
        info!(network = network.short(), endpoint = id.short(), ifname = %endpoint.host_ifname(), "endpoint joined");
        // Its identity is resolved in the background, from Docker's view of the container.
        self.timing().joined_at.insert(id.clone(), std::time::Instant::now());
        self.joined.notify_one();
        Ok(endpoint.join_plan(ipv6_gateway_routed, &subnets))
    }

    async fn apply_join(
        &self,
        endpoint: &Endpoint,
        mtu: u32,
        sandbox: u32,
        sandbox_key: &str,
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
        let link = self.datapath.create_veth(&spec).await?;
        undo.push(Undo::DeleteVeth(host_ifname.clone()));
        let veth_us = started.elapsed().as_micros() as u64;
        self.datapath.attach(&host_ifname).await?;
        undo.push(Undo::Detach(host_ifname.clone()));
        let attach_us = started.elapsed().as_micros() as u64 - veth_us;
        let joined =
            Joined { sandbox_key: sandbox_key.to_owned(), sandbox, host_ifindex: link.index, host_mac: link.mac, mtu };
        let with_link = Endpoint { joined: Some(joined.clone()), ..endpoint.clone() };
        if let Some(desired) = self.desired_of(&with_link, true) {
            undo.push(Undo::RemoveEndpoint(endpoint.number));
            self.datapath.apply_endpoint(&desired).await?;
        }
        let apply_us = started.elapsed().as_micros() as u64 - veth_us - attach_us;
        debug!(veth_us, attach_us, apply_us, "join applied");
        Ok(joined)
    }

    async fn rollback(&self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            let result = match &step {
                Undo::RemoveEndpoint(number) => self.datapath.remove_endpoint(*number).await,
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
        let _held = self.endpoint_locks.lock(id).await;
        let Some(endpoint) = self.state().endpoints.get(id).filter(|e| &e.network == network).cloned() else {
            return Ok(());
        };
        // Its published ports go with it: they are free once the container stopped.
        let unpublished = Endpoint { published: Vec::new(), ..endpoint.clone() };
        let (Some(left), Some(joined)) = (self.desired_of(&unpublished, false), self.desired_of(&endpoint, true))
        else {
            return Ok(());
        };
        self.datapath.apply_endpoint(&left).await?;
        crate::crash::point("leave.applied");
        let committed = {
            let mut state = self.state();
            let mut txn = Txn::new(&mut state);
            if let Some(ep) = txn.touch_endpoint(id).get_mut(id) {
                ep.joined = None;
                ep.published = Vec::new();
            }
            txn.commit(self.store.as_ref())
        };
        if let Err(e) = committed {
            // Still joined on record: deliver again.
            if let Err(undo) = self.datapath.apply_endpoint(&joined).await {
                warn!(error = %undo, "rollback of leave failed");
            }
            return Err(e.into());
        }
        crate::crash::point("leave.committed");
        self.holds().remove(id);
        info!(network = network.short(), endpoint = id.short(), "endpoint left");
        Ok(())
    }

    /// Removes everything of the endpoint, going on past errors; unknown endpoints are fine.
    pub async fn delete_endpoint(&self, network: &NetworkId, id: &EndpointId) -> Result<(), DriverError> {
        let (ours, name_taken) = {
            let state = self.state();
            let ours = state.endpoints.get(id).is_some_and(|e| &e.network == network);
            (ours, state.endpoints.values().any(|e| e.host_ifname() == host_ifname(id)))
        };
        if ours {
            self.teardown_endpoint(id).await?;
            info!(network = network.short(), endpoint = id.short(), "endpoint deleted");
            return Ok(());
        }
        if name_taken {
            // The interface name belongs to another live endpoint: nothing of ours to remove.
            return Ok(());
        }
        // Not ours any more (state lost, or a repeated call): the veth is still named after the
        // endpoint id, so remove its entries, its pins and it, if they exist.
        let _held = self.endpoint_locks.lock(id).await;
        let host_ifname = host_ifname(id);
        let errors: Vec<DatapathError> = [
            self.datapath.forget_orphan(&host_ifname).await.err(),
            self.datapath.detach(&host_ifname).await.err(),
            self.datapath.delete_veth(&host_ifname).await.err(),
        ]
        .into_iter()
        .flatten()
        .collect();
        DatapathError::collect(errors).map_err(DriverError::from)
    }

    /// Removes the endpoint's kernel objects, then its record, giving back the IPv6 address the
    /// driver took for it; goes on past kernel errors and reports them after the commit.
    async fn teardown_endpoint(&self, id: &EndpointId) -> Result<(), DriverError> {
        let _held = self.endpoint_locks.lock(id).await;
        let Some(endpoint) = self.state().endpoints.get(id).cloned() else { return Ok(()) };
        let host_ifname = endpoint.host_ifname();
        let mut errors = Vec::new();
        errors.extend(self.datapath.remove_endpoint(endpoint.number).await.err());
        errors.extend(self.datapath.detach(&host_ifname).await.err());
        errors.extend(self.datapath.delete_veth(&host_ifname).await.err());
        crate::crash::point("delete_endpoint.kernel");
        {
            let mut state = self.state();
            let mut txn = Txn::new(&mut state);
            txn.touch_endpoint(id).remove(id);
            if let (Some(pool), Some(addr)) = (&endpoint.ipv6_pool, endpoint.ipv6) {
                if let Err(e) = txn.touch_pool(pool).release_address(pool, IpAddr::V6(addr)) {
                    errors.push(DatapathError::Other(e.to_string()));
                }
            }
            txn.commit(self.store.as_ref())?;
        }
        crate::crash::point("delete_endpoint.committed");
        self.holds().remove(id);
        {
            let mut timing = self.timing();
            timing.joined_at.remove(id);
            timing.resolved_after.remove(id);
        }
        if let Err(e) = self.release_identity(endpoint.identity, &endpoint.labels).await {
            warn!(endpoint = id.short(), error = %e, "release identity");
        }
        self.nat_sweep.notify_one();
        DatapathError::collect(errors).map_err(DriverError::from)
    }

    /// Drops one reference on an allocated identity (of `labels`); the last one takes it out
    /// of policy.
    async fn release_identity(&self, identity: Identity, labels: &Labels) -> Result<(), DriverError> {
        if !identity.is_endpoint() {
            return Ok(());
        }
        let _turn = self.identity_turns.lock().await;
        if self.identities.release(identity).await? {
            self.policy.remove_identity(identity, labels).await?;
            debug!(%identity, "identity freed");
        }
        Ok(())
    }

    // ---- identities ----

    /// Gives an endpoint the identity of its container's labels (filtered by the configured
    /// prefixes, plus `docker:network=<network>`): allocated (or shared), made known to
    /// policy, then written to the endpoint's datapath state. Returns the identity; unknown
    /// endpoints are an error, a repeated call with the same labels changes nothing.
    pub async fn assign_identity(
        &self,
        network: &NetworkId,
        id: &EndpointId,
        container: ContainerRef,
        container_labels: &BTreeMap<String, String>,
        network_name: &str,
    ) -> Result<Identity, DriverError> {
        let labels = self
            .config
            .labels
            .endpoint_labels(container_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())), network_name);
        let _held = self.endpoint_locks.lock(id).await;
        let endpoint = lookup(&self.state(), network, id)?.clone();
        if endpoint.identity.is_endpoint() && endpoint.labels == labels {
            if endpoint.container.as_ref() != Some(&container) {
                self.update_endpoint(id, |ep| ep.container = Some(container.clone()))?;
            }
            return Ok(endpoint.identity);
        }
        let turn = self.identity_turns.lock().await;
        let identity = self.identities.allocate(&labels).await?;
        // Its policy entries exist before any packet carries the identity.
        let known = self.policy.add_identity(identity, &labels).await;
        drop(turn);
        let assigned = async {
            known?;
            let updated =
                Endpoint { identity, labels: labels.clone(), container: Some(container.clone()), ..endpoint.clone() };
            if let Some(desired) = self.desired_of(&updated, true) {
                self.datapath.apply_endpoint(&desired).await?;
            }
            let committed = self.update_endpoint(id, |ep| {
                ep.identity = identity;
                ep.labels = labels.clone();
                ep.container = Some(container.clone());
            });
            if let Err(e) = committed {
                if let Some(before) = self.desired_of(&endpoint, true) {
                    let _ = self.datapath.apply_endpoint(&before).await;
                }
                return Err(e);
            }
            Ok(())
        }
        .await;
        if let Err(e) = assigned {
            self.release_identity(identity, &labels).await?;
            return Err(e);
        }
        let after = {
            let mut timing = self.timing();
            let after = timing.joined_at.remove(id).map(|at| at.elapsed());
            if let Some(after) = after {
                timing.resolved_after.insert(id.clone(), after);
            }
            after
        };
        if let Some(after) = after {
            self.metrics.observe_identity_resolution(after);
        }
        self.release_identity(endpoint.identity, &endpoint.labels).await?;
        info!(
            endpoint = id.short(),
            container = %container.name,
            %identity,
            labels = %labels,
            after_join_us = after.map(|d| d.as_micros() as u64),
            "endpoint identity resolved"
        );
        Ok(identity)
    }

    /// Changes one endpoint record and commits it.
    fn update_endpoint(&self, id: &EndpointId, change: impl FnOnce(&mut Endpoint)) -> Result<(), DriverError> {
        let mut state = self.state();
        let mut txn = Txn::new(&mut state);
        let Some(ep) = txn.touch_endpoint(id).get_mut(id) else {
            return Err(DriverError::UnknownEndpoint(id.short().to_owned()));
        };
        change(ep);
        txn.commit(self.store.as_ref())?;
        Ok(())
    }

    /// Docker renamed a container: its endpoints show the new name.
    pub fn container_renamed(&self, container_id: &str, name: &str) {
        let ids: Vec<EndpointId> = self
            .state()
            .endpoints
            .values()
            .filter(|e| e.container.as_ref().is_some_and(|c| c.id == container_id && c.name != name))
            .map(|e| e.id.clone())
            .collect();
        for id in ids {
            if let Err(e) = self.update_endpoint(&id, |ep| {
                if let Some(c) = ep.container.as_mut() {
                    c.name = name.to_owned();
                }
            }) {
                warn!(endpoint = id.short(), error = %e, "record the container's new name");
            }
        }
    }

    /// Joined endpoints whose container is not known yet (still init), with their network.
    pub fn unresolved_endpoints(&self) -> Vec<(NetworkId, EndpointId)> {
        self.state()
            .endpoints
            .values()
            .filter(|e| e.joined.is_some() && e.container.is_none())
            .map(|e| (e.network.clone(), e.id.clone()))
            .collect()
    }

    /// Resolves when an endpoint joined (its identity is wanted).
    pub async fn endpoint_joined(&self) {
        self.joined.notified().await;
    }

    /// Makes the egress programs sit on the interfaces that lead outside (as configured, with
    /// their current addresses) while any network may reach outside, and on none otherwise.
    pub async fn refresh_egress(&self) -> Result<(), DriverError> {
        let _turn = self.egress_turn.lock().await;
        let needed = self.state().networks.values().any(|n| !n.internal);
        let desired = match (&self.config.egress, needed) {
            (EgressChoice::None, _) | (_, false) => Vec::new(),
            (EgressChoice::Auto, true) => self.datapath.egress_links(None).await?,
            (EgressChoice::Named(names), true) => self.datapath.egress_links(Some(names)).await?,
        };
        self.datapath.apply_egress(&desired).await?;
        Ok(())
    }

    /// [`Self::refresh_egress`] for a network change, which it never fails: the network works
    /// on the host either way, and the periodic refresh tries again.
    async fn refresh_egress_logged(&self) {
        if let Err(e) = self.refresh_egress().await {
            warn!(error = %e, "egress interfaces");
        }
    }

    /// Removes the translations of endpoints that are gone; returns how many entries went.
    pub async fn sweep_nat(&self) -> Result<usize, DriverError> {
        Ok(self.datapath.sweep_nat().await?)
    }

    /// Resolves when an endpoint went (its translations may be swept).
    pub async fn endpoint_removed(&self) {
        self.nat_sweep.notified().await;
    }

    /// Reads the host's addresses and gives them identity host in policy.
    pub async fn refresh_host_addresses(&self) -> Result<(), DriverError> {
        let addresses = self.datapath.host_addresses().await?.into_iter().collect();
        self.policy.set_host_addresses(addresses).await?;
        Ok(())
    }

    /// The policy engine (rules, revision, trace).
    pub fn policy(&self) -> &PolicyEngine {
        &self.policy
    }

    /// Every identity policy knows, with the endpoints that carry it.
    pub async fn identity_views(&self) -> Vec<IdentityView> {
        let known = self.policy.identities().await;
        let endpoints: Vec<(Identity, String)> = self
            .state()
            .endpoints
            .values()
            .map(|e| (e.identity, e.container.as_ref().map_or_else(|| e.id.short().to_owned(), |c| c.name.clone())))
            .collect();
        views::identities(&known, &endpoints)
    }

    pub async fn endpoint_info(
        &self,
        network: &NetworkId,
        id: &EndpointId,
    ) -> Result<BTreeMap<String, String>, DriverError> {
        let state = self.state();
        Ok(views::endpoint_oper_info(lookup(&state, network, id)?))
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

    /// Drops what dockerd no longer knows (see `reconcile::plan`): first the endpoints, each
    /// with its kernel objects, then — planned again on the state as it is by then — networks,
    /// pools and addresses, in one commit.
    pub async fn reconcile(&self, snap: &DockerSnapshot) -> Result<ReconcileReport, DriverError> {
        let grace = self.config.reconcile_grace_secs;
        let gone = reconcile::plan(&self.state(), snap, grace).endpoints;
        let mut errors = Vec::new();
        for id in &gone {
            warn!(endpoint = id.short(), "dockerd no longer knows this endpoint: removing it");
            errors.extend(self.teardown_endpoint(id).await.err());
        }
        if !gone.is_empty() {
            crate::crash::point("reconcile.endpoints");
        }
        let plan = {
            let mut state = self.state();
            let plan = reconcile::plan(&state, snap, grace);
            let mut txn = Txn::new(&mut state);
            for id in &plan.networks {
                warn!(network = id.short(), "dockerd no longer knows this network: removing it");
                txn.touch_network(id).remove(id);
            }
            for id in &plan.network_pools {
                txn.touch_pool(id).release_pool(id);
            }
            for id in &plan.orphan_pools {
                warn!(pool = %id, "no network uses this pool: releasing it");
                txn.touch_pool(id).release_pool(id);
            }
            for (pool, addr) in &plan.leaked_addresses {
                warn!(pool = %pool, %addr, "address held by nobody: releasing it");
                if let Some(p) = txn.touch_pool(pool).pools.get_mut(pool) {
                    p.allocations.remove(addr);
                }
            }
            txn.commit(self.store.as_ref())?;
            plan
        };
        DriverError::collect(errors)?;
        Ok(ReconcileReport { endpoints_removed: gone.len(), ..plan.report() })
    }

    /// The registry of what the daemon counts (request and resolution latencies, the
    /// monitor's events).
    /// Writes the plugin calls in flight down in `journal` from now on.
    pub fn keep_calls_in_flight(&self, journal: crate::inflight::InFlight) {
        let _ = self.inflight.set(journal);
    }

    pub fn inflight(&self) -> Option<&crate::inflight::InFlight> {
        self.inflight.get()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What metrics show, read when they are scraped: the state's counts under its lock, then
    /// the policy's, then the kernel's (no lock of the driver held meanwhile).
    pub async fn metrics_snapshot(&self) -> Result<Snapshot, DriverError> {
        let (networks, endpoints) = {
            let state = self.state();
            let endpoints = state
                .endpoints
                .values()
                .map(|e| EndpointSample {
                    number: e.number,
                    id: e.id.short().to_owned(),
                    container: e.container.as_ref().map(|c| c.name.clone()),
                    state: match (&e.joined, e.identity) {
                        (None, _) => EndpointState::Created,
                        (Some(_), Identity::INIT) => EndpointState::WaitingForIdentity,
                        (Some(_), _) => EndpointState::Ready,
                    },
                })
                .collect();
            (state.networks.len(), endpoints)
        };
        let (policy_revision, policy_rules, policy_entries, _) = self.policy.summary().await;
        let identities = self.policy.identity_kinds().await;
        let datapath = self.datapath.metrics().await?;
        Ok(Snapshot { networks, endpoints, identities, policy_revision, policy_rules, policy_entries, datapath })
    }
}

impl DriverError {
    /// Folds the errors of a teardown that went on past failures.
    fn collect(errors: Vec<DriverError>) -> Result<(), DriverError> {
        let mut errors = errors;
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(DriverError::Datapath(DatapathError::Other(
                errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            ))),
        }
    }
}

/// The pools of CreateNetwork's IPAM data, which must be ours and not yet used by a network.
/// `driver_name` is ours, for the message that names the IPAM driver to use.
fn own_pools(state: &State, data: &[PoolData], driver_name: &str) -> Result<Vec<PoolId>, DriverError> {
    let mut ids = Vec::new();
    for entry in data {
        if entry.address_space != ipam::LOCAL_ADDRESS_SPACE && entry.address_space != ipam::GLOBAL_ADDRESS_SPACE {
            return Err(DriverError::BadRequest(format!(
                "cilium-rs networks need the cilium-rs IPAM driver: create the network with --ipam-driver {driver_name} \
                 (pool {} comes from address space {})",
                entry.pool,
                quoted(&entry.address_space)
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
fn claim(txn: &mut Txn<'_>, pools: &[PoolId], addr: IpAddr, now: u64) -> Result<IpAddr, DriverError> {
    let state = txn.state();
    let Some(pool) = pools.iter().find(|id| state.ipam.pools.get(*id).is_some_and(|p| p.subnet.contains(&addr))) else {
        return Err(DriverError::BadRequest(format!("address {addr} is not in any pool of this network")));
    };
    if let Some(holder) = state.endpoints.values().find(|e| e.addresses().contains(&addr)) {
        return Err(DriverError::Conflict(format!("address {addr} is already used by endpoint {}", holder.id.short())));
    }
    let pool = pool.clone();
    if !state.ipam.pool(&pool)?.allocations.contains_key(&addr) {
        // dockerd owns this address but our record of it was lost: take it now.
        txn.touch_pool(&pool).request_address(&pool, Some(addr), AllocationKind::Address, now)?;
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

/// The subnets of the pools holding the endpoint's addresses.
fn subnets_of(state: &State, endpoint: &Endpoint) -> Vec<IpNet> {
    endpoint.addresses().into_iter().filter_map(|addr| Some(state.ipam.pool_containing(addr)?.subnet)).collect()
}

/// Whether another endpoint joined to the sandbox `sandbox_key` has the same IPv6 gateway as
/// `endpoint`, so its on-link route is in the container already (networks from before per-pool
/// gateways all have `fe80::1`).
fn ipv6_gateway_routed(state: &State, endpoint: &Endpoint, sandbox_key: &str) -> bool {
    endpoint.ipv6_gateway().is_some_and(|gateway| {
        state.endpoints.values().any(|e| {
            e.id != endpoint.id
                && e.ipv6_gateway() == Some(gateway)
                && e.joined.as_ref().is_some_and(|j| !sandbox_key.is_empty() && j.sandbox_key == sandbox_key)
        })
    })
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
