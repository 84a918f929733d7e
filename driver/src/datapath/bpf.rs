//! The aya side of the Linux datapath: loads the endpoint programs once, pins their maps and
//! tcx links under the bpf root, attaches them to endpoint veths and reads and writes the maps.
//!
//! Layout on the bpf filesystem (docs/datapath.md, "Pins"):
//!
//! ```text
//! <bpf-root>/v<CRS_LAYOUT_VERSION>/maps/crs_endpoints, crs_local_ips, crs_metrics, crs_ipcache,
//!                                       crs_policy, crs_config, crs_ct, crs_frags
//! <bpf-root>/v<CRS_LAYOUT_VERSION>/links/<host ifname>_ingress   crs_from_container
//! <bpf-root>/v<CRS_LAYOUT_VERSION>/links/<host ifname>_egress    crs_to_container
//! ```
//!
//! bpffs refuses names containing a dot (reserved for its own files), hence `_ingress` rather
//! than `.ingress`, and interfaces whose name contains a dot cannot be attached with tcx.
//!
//! Pinned maps and links keep the datapath working while the daemon is down; a restarted daemon
//! reuses the maps as they are and swaps its freshly loaded programs into the pinned links.
//!
//! On kernels before 6.6 (no tcx) the programs are attached as direct-action filters of a
//! `clsact` qdisc instead. Such filters belong to the interface, not to a file: they stay attached
//! while the daemon is down (each filter holds its program) and disappear with the interface.
//! They are found again by program name, so `attach` first removes filters carrying our program
//! names and then adds fresh ones, and `detach` removes them by name. No link pins exist in that
//! mode, so [`BpfDatapath::is_attached`] is false and [`BpfDatapath::pinned_links`] lists
//! nothing; the daemon re-attaches every endpoint on restore, which is idempotent.

use std::fmt;
use std::io;
use std::mem::size_of;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{HashMap, MapData, MapError, PerCpuHashMap, PerCpuValues};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{
    qdisc_add_clsact, qdisc_detach_program, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle,
};
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, LinkOrder, MultiProgLink, ProgramError, SchedClassifier, TcAttachType, TcError,
};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfError, EbpfLoader};
use bpf_programs::abi::{
    EndpointInfo, EndpointMetrics, IpKey, LocalIp, CRS_LAYOUT_VERSION, MAP_ENDPOINTS, MAP_LOCAL_IPS, MAP_METRICS,
    PROG_FROM_CONTAINER, PROG_FROM_WORLD, PROG_TO_CONTAINER, PROG_TO_WORLD, SOCK_PROGRAMS,
};
use bpf_programs::DATAPATH_OBJECT;

use super::events::EventMaps;
use super::policy_maps::PolicyMaps;
use super::world_maps::WorldMaps;

/// Where the bpf filesystem is mounted when the system has not mounted it.
pub const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";

/// The daemon's default bpf root.
pub const DEFAULT_BPF_ROOT: &str = "/sys/fs/bpf/cilium-rs";

/// Priority and handle of our filters in clsact mode: fixed, so attaching again replaces them in
/// place instead of adding a second filter.
const TC_PRIORITY: u16 = 1;
const TC_HANDLE: TcHandle = TcHandle::new(0, 1);

/// The operation named in attach errors.
const ATTACH: &str = "attach programs to";

/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
const MAX_IFNAME_LEN: usize = 15;

/// Kernel ABI values not in libc (include/uapi/linux/bpf.h).
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_TCX: u32 = 11;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// Map update flag: create only.
const BPF_NOEXIST: u64 = 1;

/// Serialises the "is bpffs mounted? mount it" check within this process.
static MOUNT_LOCK: Mutex<()> = Mutex::new(());

/// Failure of a BPF operation, naming the operation and the object it was applied to.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// A file-system operation on the bpf root failed.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// bpffs could not be mounted.
    #[error("mount bpf filesystem at {}: {source}", .path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// The bpf root is not on a bpf filesystem, and it is not below /sys/fs/bpf where we would
    /// mount one.
    #[error("bpf root {}: not on a bpf filesystem (mount one with `mount -t bpf bpf <dir>`)", .path.display())]
    NotBpffs { path: PathBuf },
    /// Parsing or creating the maps of the endpoint object failed.
    #[error("load endpoint object (maps pinned in {}): {}", .maps_dir.display(), chain(.error))]
    Load { maps_dir: PathBuf, error: Box<EbpfError> },
    /// The embedded object lacks a program or map this code expects.
    #[error("endpoint object has no {kind} {name}")]
    Missing { kind: &'static str, name: &'static str },
    /// The object's map does not have the layout `abi.rs` describes.
    #[error("open map {map}: {}", chain(.error))]
    MapLayout { map: &'static str, error: Box<MapError> },
    /// A program operation (load, attach, replace) failed.
    #[error("{op} {program}{object}: {}", chain(.error))]
    Program {
        op: &'static str,
        program: &'static str,
        /// " to lxc…", or empty.
        object: String,
        error: Box<ProgramError>,
    },
    /// A link could not be opened, converted, pinned or unpinned.
    #[error("{op} {}: {detail}", .path.display())]
    Link { op: &'static str, path: PathBuf, detail: String },
    /// The legacy tc (clsact + netlink) attachment failed.
    #[error("{op} {ifname}: {}", chain(.error))]
    Tc { op: &'static str, ifname: String, error: Box<TcError> },
    /// An interface name that the kernel would reject, that cannot be pinned, or that does not
    /// exist in the calling thread's network namespace.
    #[error("{op} {ifname}: {reason}")]
    Interface { op: &'static str, ifname: String, reason: String },
    /// A map read or write failed.
    #[error("{op} {map} entry {key}: {}", chain(.error))]
    Map { op: &'static str, map: &'static str, key: String, error: Box<MapError> },
    /// Reading the map failed mid-way.
    #[error("read {map}: {}", chain(.error))]
    MapRead { map: &'static str, error: Box<MapError> },
}

/// `err: cause: cause…`, so that one line says everything.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// How programs are attached to interfaces.
///
/// Both keep the programs attached while the daemon is down. tcx links are owned by pins
/// (nobody else can detach them by accident), but creating one waits for an RCU grace period
/// in the kernel: 10–40 ms per link measured on this machine's 6.18 kernel, two per endpoint,
/// which alone breaks the 20 ms Join budget. A clsact filter is added in about 0.15 ms, so it
/// is the daemon's default (`--attach-mode tc`); `--attach-mode tcx` chooses links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// tcx links, pinned under `links/` (kernel >= 6.6).
    Tcx,
    /// `clsact` qdisc + direct-action filters over netlink; no pins.
    Netlink,
}

impl AttachMode {
    /// tcx when the running kernel has it (6.6 and later), else netlink.
    pub fn detect() -> Self {
        match KernelVersion::current() {
            Ok(v) if v >= KernelVersion::new(6, 6, 0) => AttachMode::Tcx,
            Ok(_) => AttachMode::Netlink,
            // Unknown version: try the modern interface; attach errors say what failed.
            Err(_) => AttachMode::Tcx,
        }
    }
}

/// One hook of an endpoint veth: which program, where, and the suffix of its pin.
#[derive(Clone, Copy)]
struct Hook {
    program: &'static str,
    attach_type: TcAttachType,
    tcx_attach_type: u32,
    suffix: &'static str,
}

/// The hooks of an endpoint veth.
const ENDPOINT_HOOKS: [Hook; 2] = [
    Hook {
        program: PROG_FROM_CONTAINER,
        attach_type: TcAttachType::Ingress,
        tcx_attach_type: BPF_TCX_INGRESS,
        suffix: "ingress",
    },
    Hook {
        program: PROG_TO_CONTAINER,
        attach_type: TcAttachType::Egress,
        tcx_attach_type: BPF_TCX_EGRESS,
        suffix: "egress",
    },
];

/// The hooks of an egress interface.
const EGRESS_HOOKS: [Hook; 2] = [
    Hook {
        program: PROG_FROM_WORLD,
        attach_type: TcAttachType::Ingress,
        tcx_attach_type: BPF_TCX_INGRESS,
        suffix: "fromworld",
    },
    Hook {
        program: PROG_TO_WORLD,
        attach_type: TcAttachType::Egress,
        tcx_attach_type: BPF_TCX_EGRESS,
        suffix: "toworld",
    },
];

/// Every program of the object.
const ALL_HOOKS: [Hook; 4] = [ENDPOINT_HOOKS[0], ENDPOINT_HOOKS[1], EGRESS_HOOKS[0], EGRESS_HOOKS[1]];

/// The loaded endpoint programs and their pinned maps.
pub struct BpfDatapath {
    maps_dir: PathBuf,
    links_dir: PathBuf,
    mode: AttachMode,
    ebpf: Ebpf,
    endpoints: HashMap<MapData, u32, EndpointInfo>,
    local_ips: HashMap<MapData, IpKey, LocalIp>,
    metrics: PerCpuHashMap<MapData, u32, EndpointMetrics>,
    /// The maps policy lives in, until the Linux datapath takes them behind their own lock.
    policy_maps: Option<PolicyMaps>,
    /// The maps of the outside world, likewise.
    world_maps: Option<WorldMaps>,
    /// The event ring and counters, likewise.
    event_maps: Option<EventMaps>,
}

impl fmt::Debug for BpfDatapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BpfDatapath")
            .field("maps_dir", &self.maps_dir)
            .field("links_dir", &self.links_dir)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

// The daemon moves the datapath between threads (it is used from short-lived threads that
// entered the right network namespace).
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<BpfDatapath>();
};

impl BpfDatapath {
    /// Ensures `bpf_root` is on a bpf filesystem (mounting one at /sys/fs/bpf when `bpf_root`
    /// is below it and nothing is mounted there), creates `<bpf_root>/v<N>/{maps,links}`, loads
    /// the endpoint object once with its maps pinned (or reused) under `maps/`, and loads both
    /// programs into the kernel.
    pub fn load(bpf_root: &Path) -> Result<Self, BpfError> {
        ensure_bpffs(bpf_root)?;
        let versioned = bpf_root.join(format!("v{CRS_LAYOUT_VERSION}"));
        let maps_dir = versioned.join("maps");
        let links_dir = versioned.join("links");
        for dir in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(dir).map_err(|source| BpfError::Io {
                op: "create directory",
                path: dir.clone(),
                source,
            })?;
        }

        // One loader, one parse of the kernel BTF.
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(DATAPATH_OBJECT)
            .map_err(|error| BpfError::Load { maps_dir: maps_dir.clone(), error: Box::new(error) })?;
        for hook in ALL_HOOKS {
            program_mut(&mut ebpf, hook.program)?.load().map_err(|error| BpfError::Program {
                op: "load",
                program: hook.program,
                object: String::new(),
                error: Box::new(error),
            })?;
        }
        for program in SOCK_PROGRAMS {
            sock_program_mut(&mut ebpf, program)?.load().map_err(|error| BpfError::Program {
                op: "load",
                program,
                object: String::new(),
                error: Box::new(error),
            })?;
        }

        let endpoints = HashMap::try_from(take_map(&mut ebpf, MAP_ENDPOINTS)?)
            .map_err(|error| BpfError::MapLayout { map: MAP_ENDPOINTS, error: Box::new(error) })?;
        let local_ips = HashMap::try_from(take_map(&mut ebpf, MAP_LOCAL_IPS)?)
            .map_err(|error| BpfError::MapLayout { map: MAP_LOCAL_IPS, error: Box::new(error) })?;
        let metrics = PerCpuHashMap::try_from(take_map(&mut ebpf, MAP_METRICS)?)
            .map_err(|error| BpfError::MapLayout { map: MAP_METRICS, error: Box::new(error) })?;
        let policy_maps = Some(PolicyMaps::take(&mut ebpf)?);
        let world_maps = Some(WorldMaps::take(&mut ebpf)?);
        let event_maps = Some(EventMaps::take(&mut ebpf)?);

        let mut loaded = Self {
            maps_dir,
            links_dir,
            mode: AttachMode::detect(),
            ebpf,
            endpoints,
            local_ips,
            metrics,
            policy_maps,
            world_maps,
            event_maps,
        };
        // What unknown interfaces see is counted under endpoint 0.
        loaded.ensure_metrics(0)?;
        Ok(loaded)
    }

    /// The event ring and counters (crs_events, crs_event_rate), once.
    pub fn take_event_maps(&mut self) -> Result<EventMaps, BpfError> {
        self.event_maps.take().ok_or(BpfError::Missing { kind: "map set", name: "event maps (already taken)" })
    }

    /// The maps policy lives in (crs_policy, crs_ipcache, crs_config, crs_ct), once.
    pub fn take_policy_maps(&mut self) -> Result<PolicyMaps, BpfError> {
        self.policy_maps.take().ok_or(BpfError::Missing { kind: "map set", name: "policy maps (already taken)" })
    }

    /// The maps of the outside world (crs_egress, crs_nat_out, crs_nat_in), once.
    pub fn take_world_maps(&mut self) -> Result<WorldMaps, BpfError> {
        self.world_maps.take().ok_or(BpfError::Missing { kind: "map set", name: "world maps (already taken)" })
    }

    /// How [`Self::attach`] attaches programs on this kernel.
    pub fn attach_mode(&self) -> AttachMode {
        self.mode
    }

    /// Overrides the detected attach mode (tests exercise the pre-6.6 path with it).
    pub fn set_attach_mode(&mut self, mode: AttachMode) {
        self.mode = mode;
    }

    /// The bpf root: the parent of this layout's version directory.
    pub fn bpf_root(&self) -> &Path {
        self.maps_dir.parent().and_then(Path::parent).unwrap_or(&self.maps_dir)
    }

    /// Directory holding the pinned maps (`<bpf_root>/v<N>/maps`).
    pub fn maps_dir(&self) -> &Path {
        &self.maps_dir
    }

    /// Directory holding the pinned links (`<bpf_root>/v<N>/links`).
    pub fn links_dir(&self) -> &Path {
        &self.links_dir
    }

    /// Runs one of the programs on `frame` with `BPF_PROG_TEST_RUN`, as if it arrived on the
    /// interface `ifindex` (which must exist in the calling thread's namespace): the program's
    /// return code and the frame as it left the program. Maps are the live ones.
    pub fn test_run(&self, program: &'static str, frame: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>), BpfError> {
        use aya::programs::{TestRun, TestRunOptions};
        let prog: &SchedClassifier = self
            .ebpf
            .program(program)
            .and_then(|p| p.try_into().ok())
            .ok_or(BpfError::Missing { kind: "program", name: program })?;
        // `struct __sk_buff` (192 bytes): only `ifindex` (offset 40) is set.
        let mut skb = [0u8; 192];
        skb[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&skb),
                ..TestRunOptions::default()
            })
            .map_err(|error| BpfError::Program {
                op: "test run",
                program,
                object: String::new(),
                error: Box::new(error),
            })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Kernel ids of the loaded programs, by program name.
    pub fn program_ids(&self) -> Result<Vec<(&'static str, u32)>, BpfError> {
        ALL_HOOKS
            .iter()
            .map(|hook| {
                let prog: &SchedClassifier = self
                    .ebpf
                    .program(hook.program)
                    .and_then(|p| p.try_into().ok())
                    .ok_or(BpfError::Missing { kind: "program", name: hook.program })?;
                let info = prog.info().map_err(|error| BpfError::Program {
                    op: "query",
                    program: hook.program,
                    object: String::new(),
                    error: Box::new(error),
                })?;
                Ok((hook.program, info.id()))
            })
            .collect()
    }

    /// Attaches `crs_from_container` to tc ingress and `crs_to_container` to tc egress of
    /// `ifname` (resolved in the calling thread's network namespace) and pins the tcx links at
    /// `links/<ifname>_ingress` and `_egress`.
    ///
    /// Attaching again swaps the program inside the existing links (no gap, no duplicate). A
    /// pin of the same name whose link is not on this interface (left by an earlier interface
    /// with that name) is replaced. Before 6.6, see the module documentation.
    pub fn attach(&mut self, ifname: &str) -> Result<(), BpfError> {
        self.attach_hooks(ifname, &ENDPOINT_HOOKS)
    }

    /// Attaches `crs_from_world` and `crs_to_world` to an egress interface, as [`Self::attach`]
    /// does for an endpoint (pins `links/<ifname>_fromworld` and `_toworld`).
    pub fn attach_egress(&mut self, ifname: &str) -> Result<(), BpfError> {
        self.attach_hooks(ifname, &EGRESS_HOOKS)?;
        self.remove_other_mode(ifname, &EGRESS_HOOKS)
    }

    /// Detaches the egress programs from `ifname`; absent is fine.
    pub fn detach_egress(&mut self, ifname: &str) -> Result<(), BpfError> {
        self.detach_hooks(ifname, &EGRESS_HOOKS)
    }

    fn attach_hooks(&mut self, ifname: &str, hooks: &[Hook]) -> Result<(), BpfError> {
        validate_ifname(ATTACH, ifname)?;
        let ifindex = ifindex(ATTACH, ifname)?;
        match self.mode {
            AttachMode::Tcx => self.attach_tcx(ifname, ifindex, hooks),
            AttachMode::Netlink => self.attach_netlink(ifname, hooks),
        }
    }

    fn attach_tcx(&mut self, ifname: &str, ifindex: u32, hooks: &[Hook]) -> Result<(), BpfError> {
        if !pinnable(ifname) {
            return Err(BpfError::Interface {
                op: ATTACH,
                ifname: ifname.into(),
                reason: "contains '.', which bpffs does not allow in the name of a link pin".into(),
            });
        }
        let mut created: Vec<PathBuf> = Vec::new();
        for &hook in hooks {
            let pin = self.link_pin(ifname, hook);
            match self.attach_tcx_hook(ifname, ifindex, hook, &pin) {
                Ok(true) => created.push(pin),
                Ok(false) => {}
                Err(err) => {
                    // Undo the links this call created; replaced ones keep working.
                    for pin in created {
                        let _ = unpin_link(&pin);
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Attaches one hook; true when a new link was created and pinned, false when an existing
    /// pinned link was updated in place.
    fn attach_tcx_hook(&mut self, ifname: &str, ifindex: u32, hook: Hook, pin: &Path) -> Result<bool, BpfError> {
        let object = format!(" to {ifname}");
        let prog = program_mut(&mut self.ebpf, hook.program)?;
        let prog_error = |op: &'static str, error: ProgramError| BpfError::Program {
            op,
            program: hook.program,
            object: object.clone(),
            error: Box::new(error),
        };

        if let Some(link) = open_pinned_link(pin)? {
            let target = link
                .fd()
                .map_err(|e| link_error("inspect link", pin, &e))
                .and_then(|fd| tcx_link_target(fd).map_err(|e| link_error("inspect link", pin, &e)));
            match target {
                Ok((idx, attach_type)) if idx == ifindex && attach_type == hook.tcx_attach_type => {
                    // Our interface: swap the program in atomically.
                    let id = prog.attach_to_link(link).map_err(|e| prog_error("replace program in link", e))?;
                    // The pin keeps the link; drop our handle to it.
                    drop(prog.take_link(id).map_err(|e| prog_error("attach", e))?);
                    return Ok(false);
                }
                _ => {
                    // A link of an interface that is gone (or renamed): replace the pin. Unpin
                    // while holding the link so that closing it releases the link right away.
                    remove_pin(pin)?;
                    drop(link);
                }
            }
        }

        let id = prog
            .attach_with_options(ifname, hook.attach_type, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(|e| prog_error("attach", e))?;
        let link = prog.take_link(id).map_err(|e| prog_error("attach", e))?;
        let link = FdLink::try_from(link).map_err(|e| link_error("pin link", pin, &e))?;
        // Dropping the unpinned link on failure detaches it again.
        link.pin(pin).map_err(|e| link_error("pin link", pin, &e))?;
        Ok(true)
    }

    fn attach_netlink(&mut self, ifname: &str, hooks: &[Hook]) -> Result<(), BpfError> {
        if let Err(error) = qdisc_add_clsact(ifname) {
            if !tc_error_is(&error, libc::EEXIST) && !matches!(error, TcError::AlreadyAttached) {
                return Err(BpfError::Tc { op: "add clsact qdisc to", ifname: ifname.into(), error: Box::new(error) });
            }
        }
        for &hook in hooks {
            let prog = program_mut(&mut self.ebpf, hook.program)?;
            let prog_error = |error: ProgramError| BpfError::Program {
                op: "attach",
                program: hook.program,
                object: format!(" to {ifname}"),
                error: Box::new(error),
            };
            let options = NlOptions { priority: TC_PRIORITY, handle: TC_HANDLE, classid: None };
            let id = match prog.attach_with_options(ifname, hook.attach_type, TcAttachOptions::Netlink(options)) {
                Ok(id) => id,
                Err(ProgramError::TcError(error)) if tc_error_is(&error, libc::EEXIST) => {
                    // Our filter from an earlier attach (or an earlier daemon): swap the program
                    // inside it, so there is never a moment without one.
                    let existing =
                        SchedClassifierLink::attached(ifname, hook.attach_type, TC_PRIORITY, TC_HANDLE, None)
                            .map_err(|e| prog_error(ProgramError::TcError(TcError::IoError(e))))?;
                    prog.attach_to_link(existing).map_err(prog_error)?
                }
                Err(error) => return Err(prog_error(error)),
            };
            let link = prog.take_link(id).map_err(prog_error)?;
            // Dropping the link would remove the filter; the filter is meant to outlive us.
            // It holds no file descriptor, so forgetting it leaks nothing.
            std::mem::forget(link);
        }
        Ok(())
    }

    /// Attaches (swapping the current programs into existing attachments) and removes what an
    /// earlier daemon may have attached in the other mode, so exactly one attachment remains.
    pub fn reattach(&mut self, ifname: &str) -> Result<(), BpfError> {
        self.attach(ifname)?;
        self.remove_other_mode(ifname, &ENDPOINT_HOOKS)
    }

    /// Removes the attachments of `hooks` that the mode not in use would have made.
    fn remove_other_mode(&mut self, ifname: &str, hooks: &[Hook]) -> Result<(), BpfError> {
        for &hook in hooks {
            match self.mode {
                AttachMode::Netlink if pinnable(ifname) => unpin_link(&self.link_pin(ifname, hook))?,
                AttachMode::Netlink => {}
                AttachMode::Tcx => remove_tc_filters(ifname, hook)?,
            }
        }
        Ok(())
    }

    /// Unpins both links of `ifname`, which detaches the programs if the interface still
    /// exists. Absent pins are fine. Before 6.6 removes the filters by program name instead.
    pub fn detach(&mut self, ifname: &str) -> Result<(), BpfError> {
        self.detach_hooks(ifname, &ENDPOINT_HOOKS)
    }

    fn detach_hooks(&mut self, ifname: &str, hooks: &[Hook]) -> Result<(), BpfError> {
        validate_ifname("detach programs from", ifname)?;
        let mut first_error = None;
        for &hook in hooks {
            // A name that cannot be pinned has no pins to remove.
            if pinnable(ifname) {
                if let Err(err) = unpin_link(&self.link_pin(ifname, hook)) {
                    first_error.get_or_insert(err);
                }
            }
            if self.mode == AttachMode::Netlink {
                if let Err(err) = remove_tc_filters(ifname, hook) {
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether both link pins of `ifname` exist.
    pub fn is_attached(&self, ifname: &str) -> bool {
        validate_ifname("check", ifname).is_ok()
            && ENDPOINT_HOOKS.iter().all(|hook| self.link_pin(ifname, *hook).symlink_metadata().is_ok())
    }

    /// Endpoint interface names that have at least one link pin (for cleaning up leftovers).
    pub fn pinned_links(&self) -> Result<Vec<String>, BpfError> {
        self.pinned(&ENDPOINT_HOOKS)
    }

    /// Egress interface names that have at least one link pin.
    pub fn pinned_egress_links(&self) -> Result<Vec<String>, BpfError> {
        self.pinned(&EGRESS_HOOKS)
    }

    fn pinned(&self, hooks: &[Hook]) -> Result<Vec<String>, BpfError> {
        let entries = std::fs::read_dir(&self.links_dir).map_err(|source| BpfError::Io {
            op: "list",
            path: self.links_dir.clone(),
            source,
        })?;
        let mut names = std::collections::BTreeSet::new();
        for entry in entries {
            let entry = entry.map_err(|source| BpfError::Io { op: "list", path: self.links_dir.clone(), source })?;
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            if let Some((ifname, suffix)) = file.rsplit_once('_') {
                if hooks.iter().any(|h| h.suffix == suffix) {
                    names.insert(ifname.to_string());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Sets the `crs_endpoints` entry of host-side interface `ifindex`.
    pub fn set_endpoint(&mut self, ifindex: u32, info: &EndpointInfo) -> Result<(), BpfError> {
        self.endpoints.insert(ifindex, *info, 0).map_err(|error| BpfError::Map {
            op: "update",
            map: MAP_ENDPOINTS,
            key: ifindex.to_string(),
            error: Box::new(error),
        })
    }

    /// Removes the `crs_endpoints` entry of `ifindex`; absent is fine.
    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<(), BpfError> {
        match self.endpoints.remove(&ifindex) {
            Err(error) if !is_not_found(&error) => Err(BpfError::Map {
                op: "delete",
                map: MAP_ENDPOINTS,
                key: ifindex.to_string(),
                error: Box::new(error),
            }),
            _ => Ok(()),
        }
    }

    /// Sets the `crs_local_ips` entry of `ip`.
    pub fn set_local_ip(&mut self, ip: IpAddr, value: &LocalIp) -> Result<(), BpfError> {
        self.local_ips.insert(IpKey::from(ip), *value, 0).map_err(|error| BpfError::Map {
            op: "update",
            map: MAP_LOCAL_IPS,
            key: ip.to_string(),
            error: Box::new(error),
        })
    }

    /// Removes the `crs_local_ips` entry of `ip`; absent is fine.
    pub fn remove_local_ip(&mut self, ip: IpAddr) -> Result<(), BpfError> {
        match self.local_ips.remove(&IpKey::from(ip)) {
            Err(error) if !is_not_found(&error) => {
                Err(BpfError::Map { op: "delete", map: MAP_LOCAL_IPS, key: ip.to_string(), error: Box::new(error) })
            }
            _ => Ok(()),
        }
    }

    /// The `crs_endpoints` entry of `ifindex`, if any.
    pub fn endpoint(&self, ifindex: u32) -> Result<Option<EndpointInfo>, BpfError> {
        match self.endpoints.get(&ifindex, 0) {
            Ok(value) => Ok(Some(value)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(BpfError::Map {
                op: "look up",
                map: MAP_ENDPOINTS,
                key: ifindex.to_string(),
                error: Box::new(error),
            }),
        }
    }

    /// The `crs_local_ips` entry of `ip`, if any.
    pub fn local_ip(&self, ip: IpAddr) -> Result<Option<LocalIp>, BpfError> {
        match self.local_ips.get(&IpKey::from(ip), 0) {
            Ok(value) => Ok(Some(value)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => {
                Err(BpfError::Map { op: "look up", map: MAP_LOCAL_IPS, key: ip.to_string(), error: Box::new(error) })
            }
        }
    }

    /// Every `crs_endpoints` entry, by ifindex.
    pub fn endpoints(&self) -> Result<Vec<(u32, EndpointInfo)>, BpfError> {
        let mut entries = self
            .endpoints
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| BpfError::MapRead { map: MAP_ENDPOINTS, error: Box::new(error) })?;
        entries.sort_by_key(|(ifindex, _)| *ifindex);
        Ok(entries)
    }

    /// Every `crs_local_ips` entry, by address (entries with an unknown family are skipped).
    pub fn local_ips(&self) -> Result<Vec<(IpAddr, LocalIp)>, BpfError> {
        let mut entries = Vec::new();
        for entry in self.local_ips.iter() {
            let (key, value) =
                entry.map_err(|error| BpfError::MapRead { map: MAP_LOCAL_IPS, error: Box::new(error) })?;
            if let Some(ip) = key.ip() {
                entries.push((ip, value));
            }
        }
        entries.sort_by_key(|(ip, _)| *ip);
        Ok(entries)
    }

    /// Creates the (zero) counters of `endpoint_id` unless they exist: the programs count only
    /// into existing entries, so nothing they count outlives its endpoint.
    pub fn ensure_metrics(&mut self, endpoint_id: u32) -> Result<(), BpfError> {
        let map_error = |op, error| BpfError::Map { op, map: MAP_METRICS, key: endpoint_id.to_string(), error };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| map_error("count CPUs for", Box::new(MapError::from(e))))?;
        let zeros = PerCpuValues::try_from(vec![EndpointMetrics::default(); cpus])
            .map_err(|e| map_error("create", Box::new(MapError::from(e))))?;
        match self.metrics.insert(endpoint_id, zeros, BPF_NOEXIST) {
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(error) => Err(map_error("create", Box::new(error))),
            Ok(()) => Ok(()),
        }
    }

    /// Counters of one endpoint, summed over CPUs; `None` when it has none.
    pub fn metrics(&self, endpoint_id: u32) -> Result<Option<EndpointMetrics>, BpfError> {
        match self.metrics.get(&endpoint_id, 0) {
            Ok(per_cpu) => {
                let mut sum = EndpointMetrics::default();
                for value in per_cpu.iter() {
                    sum.add(value);
                }
                Ok(Some(sum))
            }
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(BpfError::Map {
                op: "look up",
                map: MAP_METRICS,
                key: endpoint_id.to_string(),
                error: Box::new(error),
            }),
        }
    }

    /// Counters of every endpoint (and of endpoint 0, unknown interfaces), summed over CPUs.
    pub fn all_metrics(&self) -> Result<Vec<(u32, EndpointMetrics)>, BpfError> {
        all_metrics(&self.metrics)
    }

    /// Deletes the counters of `endpoint_id`; absent is fine.
    pub fn remove_metrics(&mut self, endpoint_id: u32) -> Result<(), BpfError> {
        match self.metrics.remove(&endpoint_id) {
            Err(error) if !is_not_found(&error) => Err(BpfError::Map {
                op: "delete",
                map: MAP_METRICS,
                key: endpoint_id.to_string(),
                error: Box::new(error),
            }),
            _ => Ok(()),
        }
    }

    fn link_pin(&self, ifname: &str, hook: Hook) -> PathBuf {
        self.links_dir.join(format!("{ifname}_{}", hook.suffix))
    }

    /// Attaches the socket programs to the cgroup v2 directory `cgroup` (the root: every
    /// socket of the host) and pins their links at `links/<program>`. Attaching again puts this
    /// daemon's programs in place of the pinned ones, the new link first: never a moment
    /// without one.
    pub fn attach_sockets(&mut self, cgroup: &Path) -> Result<(), BpfError> {
        let dir = std::fs::File::open(cgroup).map_err(|source| BpfError::Io {
            op: "open cgroup",
            path: cgroup.to_path_buf(),
            source,
        })?;
        for program in SOCK_PROGRAMS {
            let pin = self.links_dir.join(program);
            let prog = sock_program_mut(&mut self.ebpf, program)?;
            let prog_error = |error: ProgramError| BpfError::Program {
                op: "attach",
                program,
                object: format!(" to cgroup {}", cgroup.display()),
                error: Box::new(error),
            };
            // A BPF link (Linux >= 5.7) takes no flags and always lets other programs run too.
            let id = prog.attach(&dir, CgroupAttachMode::Single).map_err(prog_error)?;
            let link = prog.take_link(id).map_err(prog_error)?;
            let link = FdLink::try_from(link).map_err(|e| link_error("pin link", &pin, &e))?;
            unpin_link(&pin)?;
            link.pin(&pin).map_err(|e| link_error("pin link", &pin, &e))?;
        }
        Ok(())
    }

    /// Detaches the socket programs (unpins their links); absent is fine.
    pub fn detach_sockets(&mut self) -> Result<(), BpfError> {
        for program in SOCK_PROGRAMS {
            unpin_link(&self.links_dir.join(program))?;
        }
        Ok(())
    }

    /// Whether the socket programs' links are pinned.
    pub fn sockets_attached(&self) -> bool {
        SOCK_PROGRAMS.iter().all(|p| self.links_dir.join(p).symlink_metadata().is_ok())
    }
}

/// Every entry of a crs_metrics handle, summed over CPUs, by endpoint number.
pub(crate) fn all_metrics(
    map: &PerCpuHashMap<MapData, u32, EndpointMetrics>,
) -> Result<Vec<(u32, EndpointMetrics)>, BpfError> {
    let mut rows = Vec::new();
    for entry in map.iter() {
        let (endpoint_id, per_cpu) =
            entry.map_err(|error| BpfError::MapRead { map: MAP_METRICS, error: Box::new(error) })?;
        let mut sum = EndpointMetrics::default();
        for value in per_cpu.iter() {
            sum.add(value);
        }
        rows.push((endpoint_id, sum));
    }
    rows.sort_by_key(|(id, _)| *id);
    Ok(rows)
}

fn sock_program_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr, BpfError> {
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(BpfError::Missing { kind: "program", name })
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, BpfError> {
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(BpfError::Missing { kind: "program", name })
}

pub(crate) fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, BpfError> {
    ebpf.take_map(name).ok_or(BpfError::Missing { kind: "map", name })
}

fn link_error(op: &'static str, path: &Path, err: &dyn std::error::Error) -> BpfError {
    BpfError::Link { op, path: path.to_path_buf(), detail: chain(err) }
}

/// Opens a pinned tcx link; `None` when nothing is pinned there. A pin that is not a tcx link
/// (e.g. of an older layout) is removed.
fn open_pinned_link(pin: &Path) -> Result<Option<SchedClassifierLink>, BpfError> {
    let pinned = match PinnedLink::from_pin(pin) {
        Ok(pinned) => pinned,
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(link_error("open pinned link", pin, &e)),
    };
    match SchedClassifierLink::try_from(FdLink::from(pinned)) {
        Ok(link) => Ok(Some(link)),
        Err(LinkError::InvalidLink) => {
            remove_pin(pin)?;
            Ok(None)
        }
        Err(e) => Err(link_error("open pinned link", pin, &e)),
    }
}

/// Removes a link pin and releases the link (detaching its program) before returning; absent
/// is fine. The pin is unlinked while we hold the link open, so the last reference goes with
/// our close, which releases the link synchronously; dropping the last reference through the
/// pin's inode would release it from a kernel work queue, a moment later.
pub(crate) fn unpin_link(pin: &Path) -> Result<(), BpfError> {
    let held = PinnedLink::from_pin(pin).ok();
    remove_pin(pin)?;
    drop(held);
    Ok(())
}

/// Removes a pin; absent is fine.
fn remove_pin(pin: &Path) -> Result<(), BpfError> {
    match std::fs::remove_file(pin) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(BpfError::Io { op: "unpin", path: pin.to_path_buf(), source: e })
        }
        _ => Ok(()),
    }
}

/// Removes the clsact filters carrying `hook`'s program; none (or no interface) is fine.
fn remove_tc_filters(ifname: &str, hook: Hook) -> Result<(), BpfError> {
    match qdisc_detach_program(ifname, hook.attach_type, hook.program) {
        Ok(()) => Ok(()),
        Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV) => {
            Ok(())
        }
        Err(error) if tc_error_is(&error, libc::ENOENT) || tc_error_is(&error, libc::EINVAL) => {
            // No clsact qdisc on the interface: nothing is attached.
            Ok(())
        }
        Err(error) => Err(BpfError::Tc { op: "remove filters from", ifname: ifname.into(), error: Box::new(error) }),
    }
}

fn tc_error_is(error: &TcError, errno: i32) -> bool {
    match error {
        TcError::NetlinkError(e) => e.raw_os_error() == Some(errno),
        TcError::IoError(e) => e.raw_os_error() == Some(errno),
        _ => false,
    }
}

pub(crate) fn is_not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// The checks of the kernel's `dev_valid_name`, so that a name is also a safe file name.
fn validate_ifname(op: &'static str, ifname: &str) -> Result<(), BpfError> {
    let reason = if ifname.is_empty() {
        "empty"
    } else if ifname.len() > MAX_IFNAME_LEN {
        "longer than 15 bytes"
    } else if ifname == "." || ifname == ".." {
        "not a valid name"
    } else if ifname.chars().any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace()) {
        "contains '/', ':', NUL or whitespace"
    } else {
        return Ok(());
    };
    Err(BpfError::Interface { op, ifname: ifname.into(), reason: reason.into() })
}

/// bpffs reserves names with a dot for itself (`bpf_lookup` fails with EPERM).
fn pinnable(ifname: &str) -> bool {
    !ifname.contains('.')
}

/// Index of `ifname` in the calling thread's network namespace.
fn ifindex(op: &'static str, ifname: &str) -> Result<u32, BpfError> {
    nix::net::if_::if_nametoindex(ifname).map_err(|e| BpfError::Interface {
        op,
        ifname: ifname.into(),
        reason: e.desc().to_lowercase(),
    })
}

/// Interface index and attach type of a tcx link (`BPF_OBJ_GET_INFO_BY_FD`); the index is 0
/// once the interface is gone.
fn tcx_link_target(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    /// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    /// The head of `struct bpf_link_info` and its `tcx` member.
    #[repr(C)]
    #[derive(Default)]
    struct TcxLinkInfo {
        link_type: u32,
        id: u32,
        prog_id: u32,
        _union_align: u32,
        ifindex: u32,
        attach_type: u32,
    }

    let mut info = TcxLinkInfo::default();
    let attr = InfoAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        info_len: size_of::<TcxLinkInfo>() as u32,
        info: std::ptr::addr_of_mut!(info) as u64,
    };
    // SAFETY: `attr` is a complete `bpf_attr` prefix for BPF_OBJ_GET_INFO_BY_FD and is passed
    // with its exact size; the kernel writes at most `info_len` bytes to `info`, a live local
    // of that size, and keeps no pointer after the call returns.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, std::ptr::addr_of!(attr), size_of::<InfoAttr>())
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if info.link_type != BPF_LINK_TYPE_TCX {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("link type {} is not tcx", info.link_type)));
    }
    Ok((info.ifindex, info.attach_type))
}

/// Makes sure `bpf_root` will be created on a bpf filesystem, mounting bpffs at /sys/fs/bpf
/// when `bpf_root` is below it and nothing is mounted there yet.
fn ensure_bpffs(bpf_root: &Path) -> Result<(), BpfError> {
    // Two loads racing here must not mount bpffs twice.
    let _guard = MOUNT_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if on_bpffs(bpf_root)? {
        return Ok(());
    }
    let mount_point = Path::new(BPFFS_MOUNT_POINT);
    if bpf_root.starts_with(mount_point) && !on_bpffs(mount_point)? {
        nix::mount::mount(
            Some("bpf"),
            mount_point,
            Some("bpf"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .map_err(|source| BpfError::Mount { path: mount_point.to_path_buf(), source })?;
        tracing::info!(path = BPFFS_MOUNT_POINT, "mounted bpf filesystem");
        if on_bpffs(bpf_root)? {
            return Ok(());
        }
    }
    Err(BpfError::NotBpffs { path: bpf_root.to_path_buf() })
}

/// Whether `path`, or its nearest existing ancestor, is on a bpf filesystem.
fn on_bpffs(path: &Path) -> Result<bool, BpfError> {
    let Some(existing) = path.ancestors().find(|p| p.exists()) else {
        return Ok(false);
    };
    let stat = nix::sys::statfs::statfs(existing).map_err(|e| BpfError::Io {
        op: "statfs",
        path: existing.to_path_buf(),
        source: io::Error::from(e),
    })?;
    Ok(stat.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_like_the_kernel_does() {
        assert!(validate_ifname(ATTACH, "lxc1a2b3c4d5e6").is_ok());
        assert!(validate_ifname(ATTACH, "eth0").is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "lxc1a2b3c4d5e6ff"] {
            assert!(validate_ifname(ATTACH, bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn errors_name_the_object_and_the_cause() {
        let err = BpfError::Io {
            op: "unpin",
            path: PathBuf::from("/sys/fs/bpf/cilium-rs/v2/links/lxc1_ingress"),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(err.to_string().starts_with("unpin /sys/fs/bpf/cilium-rs/v2/links/lxc1_ingress: "));
        let err = ifindex(ATTACH, "lxcnosuchdev0").expect_err("no such interface");
        assert_eq!(err.to_string(), "attach programs to lxcnosuchdev0: no such device");
    }
}
