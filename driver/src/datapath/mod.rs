//! The kernel behind one trait: Linux (rtnetlink + aya) and a recording fake for tests.
//!
//! The driver calls these in a fixed order and registers an undo for each; every removal is
//! idempotent ("not found" is done), so a repeated or half-done teardown finishes cleanly.

pub mod fake;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use bpf_programs::abi::{Direction, DropReason};
use ipnet::IpNet;

use crate::identity::Identity;
use crate::policy::{PolicyEntry, PolicyKey};

/// The complete kernel state one endpoint should have, as pure code computes it from the
/// endpoint's record; the datapath applies the difference to what it applied before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointDesired {
    pub number: u32,
    /// Shared by all endpoints of one container: each accepts the others' addresses as sources.
    pub sandbox: u32,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub gateway_ipv4: Option<Ipv4Addr>,
    /// The endpoint's security identity (its addresses have it in the ipcache).
    pub identity: Identity,
    /// Its network is `--internal`: nothing reaches outside the host from it, or it from there.
    pub internal: bool,
    /// What it sends outside leaves with the egress interface's address (else with its own:
    /// the network is routed to the host).
    pub masquerade: bool,
    /// Host ports published to it (`-p`).
    pub published: Vec<crate::ports::PublishedPort>,
    /// Every packet it sends or receives is reported (a monitor asked for its trace).
    pub trace: bool,
    /// Traffic is delivered to the endpoint: host routes, neighbour entries and address
    /// entries exist. False once it left: only its own entry stays, so what its container still
    /// sends while dockerd moves the interface back is attributed to it.
    pub deliver: bool,
}

impl EndpointDesired {
    /// The endpoint's addresses, IPv6 first.
    pub fn addresses(&self) -> Vec<std::net::IpAddr> {
        self.ipv6.map(std::net::IpAddr::V6).into_iter().chain(self.ipv4.map(std::net::IpAddr::V4)).collect()
    }

    /// The addresses traffic is delivered to (none once it left).
    pub fn delivered_addresses(&self) -> Vec<std::net::IpAddr> {
        if self.deliver {
            self.addresses()
        } else {
            Vec::new()
        }
    }
}

/// What policy needs in the kernel besides the endpoints: the policy entries and the ipcache
/// entries of everything that is not an endpoint address (the host's addresses, CIDR
/// identities).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyDesired {
    pub entries: BTreeMap<PolicyKey, PolicyEntry>,
    pub ipcache: BTreeMap<IpNet, Identity>,
}

/// A [`PolicyDesired`] borrowed from whoever keeps it (the policy map can hold many entries:
/// it is not copied to be applied).
#[derive(Debug, Clone, Copy)]
pub struct PolicyView<'a> {
    pub entries: &'a BTreeMap<PolicyKey, PolicyEntry>,
    pub ipcache: &'a BTreeMap<IpNet, Identity>,
}

impl PolicyDesired {
    pub fn view(&self) -> PolicyView<'_> {
        PolicyView { entries: &self.entries, ipcache: &self.ipcache }
    }
}

/// An interface that leads outside: the egress programs are attached to it, and what
/// endpoints send through it leaves with its addresses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EgressDesired {
    pub ifname: String,
    pub ifindex: u32,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// The veth pair of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    pub host_ifname: String,
    pub peer_ifname: String,
    pub mtu: u32,
    pub peer_mac: [u8; 6],
}

/// The host side of a created veth pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLink {
    pub index: u32,
    pub mac: [u8; 6],
}

/// Packets and bytes one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

/// Counters of one endpoint: forwarded traffic each way and drops by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Sent by the container.
    pub egress: Traffic,
    /// Delivered to the container.
    pub ingress: Traffic,
    /// Dropped, by (reason name, direction "egress"/"ingress").
    pub drops: BTreeMap<String, Traffic>,
}

impl Counters {
    pub fn dropped_packets(&self) -> u64 {
        self.drops.values().map(|t| t.packets).sum()
    }

    /// The key of `drops` for `reason` in `dir`, e.g. `POLICY_DENIED/ingress`.
    pub fn drop_key(reason: DropReason, dir: Direction) -> String {
        format!("{}/{}", reason.name(), dir.name())
    }

    /// What was dropped for `reason` in `dir` (zero when nothing was).
    pub fn dropped(&self, reason: DropReason, dir: Direction) -> Traffic {
        self.drops.get(&Self::drop_key(reason, dir)).copied().unwrap_or_default()
    }
}

/// What metrics read from the kernel when they are scraped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatapathMetrics {
    /// Every endpoint's counters as [`Datapath::counters`] has them (since the endpoint was
    /// created), by endpoint number; 0 counts interfaces no endpoint owns.
    pub endpoints: BTreeMap<u32, Counters>,
    /// Summed over every endpoint, present or gone, since the daemon started; never lower than
    /// in an earlier reading while the daemon runs.
    pub totals: Counters,
    /// Entries of the conntrack map (crs_ct).
    pub conntrack_entries: u64,
    /// Entries of the NAT maps: crs_nat_out (by the endpoint's side of a flow) and crs_nat_in
    /// (by the translated side).
    pub nat_out_entries: u64,
    pub nat_in_entries: u64,
}

/// What the datapath is and what the kernel offers it, found once when it was loaded, and
/// whether it is still whole (its pinned maps are where they were).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatapathInfo {
    /// `linux`, or `fake` in tests.
    pub kind: String,
    /// How endpoint programs are attached: `tc` (clsact filters) or `tcx` (links).
    pub attach_mode: String,
    /// The running kernel's release, e.g. `6.18.44`.
    pub kernel: Option<String>,
    /// Kernel features probed at start (`btf`, `tcx`, `netkit`, `ringbuf`): found or not.
    pub features: BTreeMap<String, bool>,
    /// Where maps (and tcx links) are pinned.
    pub bpf_root: Option<std::path::PathBuf>,
    /// The programs are loaded (false: nothing enforces anything).
    pub loaded: bool,
    /// Maps whose pin is gone: the programs still use them, but a restarted daemon would not
    /// find them (connection tracking and counters would start afresh).
    pub missing_pins: Vec<String>,
}

/// Entries of the maps the programs fill themselves (the daemon knows its own maps' sizes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MapCounts {
    pub conntrack: u64,
    pub nat_out: u64,
    pub nat_in: u64,
}

/// One entry of crs_endpoints: the endpoint behind a host-side interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRow {
    pub ifindex: u32,
    pub number: u32,
    pub sandbox: u32,
    pub identity: Identity,
    pub ipv6: Option<Ipv6Addr>,
    pub ipv4: Option<Ipv4Addr>,
    pub gateway_ipv4: Option<Ipv4Addr>,
    pub mac: [u8; 6],
    pub host_mac: [u8; 6],
    pub internal: bool,
    pub masquerade: bool,
    pub published: bool,
}

/// One side of a flow: an address and a port (for ICMP echo the identifier, for other ICMP
/// messages the type; 0 for protocols without ports).
pub type Peer = (std::net::IpAddr, u16);

/// One entry of crs_ct: a tracked flow, oriented from its initiator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtRow {
    pub proto: u8,
    pub initiator: Peer,
    pub responder: Peer,
    /// `CT_F_*` of `bpf_programs::abi`.
    pub flags: u32,
    /// The datapath's policy revision the checks were made at.
    pub revision: u32,
    /// `[original, reply]`.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Milliseconds until the entry expires (negative: expired, not yet evicted).
    pub expires_in_ms: i64,
    /// Milliseconds since the flow was first seen.
    pub age_ms: u64,
}

/// The conntrack map and the revision the datapath enforces now (entries checked at another
/// one are checked again at their next packet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CtDump {
    pub revision: u32,
    pub rows: Vec<CtRow>,
}

/// Which of the NAT maps an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NatSide {
    /// crs_nat_out: the flow as the endpoint sends it; gives the source it leaves with.
    Out,
    /// crs_nat_in: the flow as it arrives from outside; gives the endpoint's address.
    In,
}

/// One entry of crs_nat_out or crs_nat_in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatRow {
    pub side: NatSide,
    pub proto: u8,
    pub source: Peer,
    pub destination: Peer,
    /// Out: the source the flow leaves with; in: the endpoint's address and port.
    pub translated: Peer,
    /// A published-port connection (`NAT_F_DNAT`) rather than masquerading.
    pub published: bool,
    /// The egress interface of the mapping.
    pub ifindex: u32,
    pub age_ms: u64,
}

/// What a restore found and fixed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Endpoints whose host link no longer exists (their container is gone).
    pub missing_links: Vec<String>,
    /// Endpoints whose programs had to be attached again.
    pub reattached: Vec<String>,
    /// Stale datapath entries (maps, pins) removed because no endpoint owns them.
    pub stale_removed: usize,
    /// The host links found, by name (their index or MAC may differ from the records').
    pub links: BTreeMap<String, HostLink>,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error(transparent)]
    Bpf(#[from] bpf::BpfError),
    #[error("{0}")]
    Other(String),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Many(Vec<DatapathError>),
}

impl DatapathError {
    /// Folds the errors of a teardown that went on past failures.
    pub fn collect(errors: Vec<DatapathError>) -> Result<(), DatapathError> {
        let mut errors = errors;
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(DatapathError::Many(errors)),
        }
    }
}

pub mod bpf;
pub mod events;
pub mod features;
pub mod host;
pub mod layouts;
pub mod ledger;
pub mod link;
pub mod linux;
pub mod policy_maps;
pub mod readers;
pub mod rows;
pub mod world_maps;

/// The kernel operations the driver needs; the driver holds it as `Arc<dyn Datapath>`.
#[async_trait::async_trait]
pub trait Datapath: Send + Sync + 'static {
    /// Prefixes routed on the host, which automatically chosen pools must avoid.
    async fn host_prefixes(&self) -> Result<Vec<IpNet>, DatapathError>;

    /// The host's own addresses (identity host), both families.
    async fn host_addresses(&self) -> Result<Vec<std::net::IpAddr>, DatapathError>;

    /// MTU of the host's default-route interface (the default endpoint MTU).
    async fn default_mtu(&self) -> Result<u32, DatapathError>;

    /// Creates the veth pair (host side up, peer left for dockerd to move).
    async fn create_veth(&self, spec: &VethSpec) -> Result<HostLink, DatapathError>;

    /// Deletes the veth pair by its host-side name; absent is fine.
    async fn delete_veth(&self, host_ifname: &str) -> Result<(), DatapathError>;

    /// Attaches the endpoint programs to the host side (pinned, so they outlive the daemon).
    async fn attach(&self, host_ifname: &str) -> Result<(), DatapathError>;

    /// Detaches them; absent is fine.
    async fn detach(&self, host_ifname: &str) -> Result<(), DatapathError>;

    /// Makes the kernel hold exactly `desired` for endpoint `desired.number` (map entries,
    /// host routes, neighbours, counters), changing only what differs from what it applied for
    /// that endpoint before. Entries another endpoint holds by now are left alone.
    async fn apply_endpoint(&self, desired: &EndpointDesired) -> Result<(), DatapathError>;

    /// Removes everything applied for endpoint `number` (its entries, routes and counters),
    /// going on past errors and reporting them all; an unknown endpoint is fine.
    async fn remove_endpoint(&self, number: u32) -> Result<(), DatapathError>;

    /// Removes what the kernel still holds for the endpoint behind host interface
    /// `host_ifname` when the driver has no record of it (its state was lost): its entry, the
    /// address entries and published ports that still point at it, its counters (its routes
    /// go with the interface). Anything a live endpoint holds is left alone.
    async fn forget_orphan(&self, host_ifname: &str) -> Result<(), DatapathError>;

    /// Makes the policy entries and the non-endpoint ipcache entries exactly `desired`,
    /// writing only the difference (new allows and denies first, then removals), and then
    /// bumps the policy revision if anything changed, so that established flows are checked
    /// again at their next packet.
    async fn apply_policy(&self, desired: PolicyView<'_>) -> Result<(), DatapathError>;

    /// The interfaces named `names`, or those holding a default route when `names` is `None`,
    /// with the addresses masquerading would use on them. Named interfaces that do not exist
    /// are left out.
    async fn egress_links(&self, names: Option<&[String]>) -> Result<Vec<EgressDesired>, DatapathError>;

    /// Makes the egress programs and crs_egress hold exactly `desired`: attaches to new
    /// interfaces, updates changed addresses, detaches from interfaces no longer wanted.
    async fn apply_egress(&self, desired: &[EgressDesired]) -> Result<(), DatapathError>;

    /// The source ports (and ICMP echo ids) masquerading hands out, inclusive.
    async fn set_nat_ports(&self, min: u16, max: u16) -> Result<(), DatapathError>;

    /// Removes the translations of endpoint addresses that no endpoint holds any more (a full
    /// scan of the NAT maps, run in the background); returns how many entries went.
    async fn sweep_nat(&self) -> Result<usize, DatapathError>;

    /// Each CPU's budget of events (drops, verdicts, traces) to the daemon.
    async fn set_event_rate(&self, limit: events::EventRateLimit) -> Result<(), DatapathError>;

    /// Starts receiving the programs' events (once: `None` after the first call).
    async fn start_events(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<bpf_programs::abi::Event>>, DatapathError>;

    /// How many events the programs sent, and how many they and the reader kept back.
    async fn event_counts(&self) -> Result<events::EventCounts, DatapathError>;

    /// Counters of every endpoint, by endpoint number.
    async fn counters(&self) -> Result<BTreeMap<u32, Counters>, DatapathError>;

    /// The counters and map sizes metrics show, read without taking any lock that the other
    /// operations take (a scan of crs_metrics, and of the keys of crs_ct, crs_nat_out and
    /// crs_nat_in: one system call per entry).
    async fn metrics(&self) -> Result<DatapathMetrics, DatapathError>;
    /// What the datapath is, the kernel features found when it was loaded, and whether its
    /// pins are all there.
    async fn info(&self) -> DatapathInfo;

    /// Entries of crs_ct, crs_nat_out and crs_nat_in (a scan of their keys).
    async fn map_counts(&self) -> Result<MapCounts, DatapathError>;

    /// Every entry of crs_endpoints, by ifindex.
    async fn dump_endpoints(&self) -> Result<Vec<EndpointRow>, DatapathError>;

    /// Every entry of crs_ipcache, by prefix.
    async fn dump_ipcache(&self) -> Result<Vec<(IpNet, Identity)>, DatapathError>;

    /// Every entry of crs_policy this daemon can read back (others are removed at restore).
    async fn dump_policy(&self) -> Result<Vec<(PolicyKey, PolicyEntry)>, DatapathError>;

    /// Every entry of crs_ct, with the revision the datapath enforces.
    async fn dump_ct(&self) -> Result<CtDump, DatapathError>;

    /// Every entry of crs_nat_out and crs_nat_in.
    async fn dump_nat(&self) -> Result<Vec<NatRow>, DatapathError>;

    /// Removes every entry of crs_ct there is when it starts; returns how many went. The next
    /// packet of each flow is checked by policy as a new flow's.
    async fn flush_ct(&self) -> Result<usize, DatapathError>;

    /// At start (once): attaches this daemon's programs to the joined endpoints, applies their
    /// desired state and the policy, and removes what belongs to none of them (the only full
    /// scans of the maps). `host_ifindex` and `host_mac` of `joined` may be stale: the links
    /// are looked up by name. What the pinned maps already hold is kept as it is, so a restart
    /// changes no verdict.
    async fn restore(&self, joined: &[EndpointDesired], policy: PolicyView<'_>)
        -> Result<RestoreReport, DatapathError>;
}
