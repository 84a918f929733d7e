//! cilium-rs: the plugin daemon (`cilium-rs daemon`) and the CLI that talks to it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use ipnet::{Ipv4Net, Ipv6Net};

use cilium_rs::cli::{self, BpfMap, Output};
use cilium_rs::datapath::bpf::AttachMode;
use cilium_rs::datapath::events::EventRateLimit;
use cilium_rs::datapath::linux::LinuxDatapath;
use cilium_rs::driver::{Driver, DriverConfig, DriverError};
use cilium_rs::egress::{self, EgressChoice, PortRange};
use cilium_rs::health::ErrorRing;
use cilium_rs::ipam::IpamConfig;
use cilium_rs::labels::LabelFilter;
use cilium_rs::monitor::event::Kind;
use cilium_rs::monitor::filter::Filter;
use cilium_rs::monitor::FlowLimits;
use cilium_rs::notify::Notifier;
use cilium_rs::policy::EnforcementMode;
use cilium_rs::recover::{self, run::RecoverOptions};
use cilium_rs::server::api::TraceRequest;
use cilium_rs::server::metrics::MetricsListener;
use cilium_rs::server::ui::UiListener;
use cilium_rs::server::{self, Socket};
use cilium_rs::state::StateError;
use cilium_rs::state_file;
use cilium_rs::store::RedbStore;
use cilium_rs::{docker, identity_watch, logging};

#[derive(Debug, Parser)]
#[command(name = "cilium-rs", version, about = "Docker network + IPAM plugin with a routed IPv6 eBPF datapath")]
struct Cli {
    /// The daemon's API socket (used by every command but `daemon`).
    #[arg(long, global = true, env = "CILIUM_RS_API_SOCKET", default_value = "/run/cilium-rs/api.sock")]
    api_socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the plugin daemon in the foreground.
    Daemon(Box<DaemonArgs>),
    /// Container endpoints: container, identity, addresses, interfaces, counters.
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// Networks and their pools.
    Network {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Security identities: their labels and the endpoints carrying them.
    Identity {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Label-based policy (Cilium's rule JSON or YAML).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Live events: drops, policy verdicts and (for one endpoint) traces, with container names.
    Monitor {
        /// One JSON object per line, for scripts.
        #[arg(long)]
        json: bool,
        /// Which events (repeat for several); default: drop and verdict. `trace` needs
        /// `--endpoint`, and traces that endpoint while the monitor runs.
        #[arg(long = "type", value_enum)]
        types: Vec<MonitorType>,
        /// Only events about this endpoint (counted or traced on it): container name or id.
        #[arg(long)]
        endpoint: Option<String>,
        /// Only events with this endpoint at either end: container name or id.
        #[arg(long)]
        related_to: Option<String>,
    },
    /// Recent flows: who talked to whom on which port, allowed or dropped, packets and bytes.
    Flows {
        /// Only flows with this endpoint at either end: container name or id.
        #[arg(long)]
        endpoint: Option<String>,
        /// Likewise (both must match when both are given).
        #[arg(long)]
        related_to: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Whether the daemon is healthy (exit status 1 when not, or when it cannot be reached),
    /// and what it holds.
    Status {
        /// Every subsystem's detail and the last errors logged.
        #[arg(short, long)]
        verbose: bool,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The kernel maps in readable form.
    Bpf {
        #[command(subcommand)]
        map: BpfCommand,
    },
    /// The daemon's state file.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Compare the daemon's state with the kernel's endpoint entries and Docker's networks
    /// and running containers; prints every difference (exit status 1 when there is one).
    Check {
        #[command(flatten)]
        docker: DockerSide,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Rebuild a damaged, emptied or removed state file (the daemon must be down) from its
    /// backup, Docker's networks and containers, and the kernel's pinned endpoint entries:
    /// running containers keep their addresses and connectivity. The file replaced is kept.
    Recover {
        #[command(flatten)]
        docker: DockerSide,
        #[command(flatten)]
        paths: StatePaths,
        /// Prefix length of the IPv6 subnets the daemon takes for networks without --ipv6.
        #[arg(long, env = "CILIUM_RS_IPV6_POOL_PREFIX", default_value_t = 64)]
        ipv6_pool_prefix: u8,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum EndpointCommand {
    /// List them.
    #[command(alias = "ls")]
    List {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// One endpoint in full: addresses, interface, identity and labels, policy, counters.
    Get {
        /// A container name, an endpoint id, or a unique prefix of an endpoint or container id.
        endpoint: String,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum BpfCommand {
    /// crs_endpoints: the endpoint behind each host-side interface.
    Endpoints {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// crs_ipcache: the identity of each address and prefix.
    Ipcache {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// crs_policy: the entries rules resolved into.
    Policy {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// crs_ct: tracked flows.
    Ct {
        #[command(subcommand)]
        command: CtCommand,
    },
    /// crs_nat_out and crs_nat_in: translated flows.
    Nat {
        #[command(subcommand)]
        command: ListCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CtCommand {
    /// List them.
    #[command(alias = "ls")]
    List {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Remove every entry: each flow's next packet is checked by policy as a new flow's.
    Flush {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum ListCommand {
    /// List them.
    #[command(alias = "ls")]
    List {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Add the rules of a file (`-` for standard input); rules with the labels of live rules
    /// replace them. Returns once the datapath enforces the new revision.
    Import {
        file: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The live rules and the revision.
    Get {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Delete every rule, or the rules carrying all the given labels.
    Delete {
        #[arg(long, conflicts_with = "labels")]
        all: bool,
        /// Labels such as `name=web-policy` (as in the rules' `labels`).
        #[arg(required_unless_present = "all")]
        labels: Vec<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Check a policy file without applying anything (no daemon needed).
    Validate { file: PathBuf },
    /// Wait until the datapath enforces a revision.
    Wait {
        revision: u64,
        /// Seconds to wait at most.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// The verdict for a flow between two label sets, and the rule that decides it.
    Trace {
        /// Labels of the source, e.g. `id=app2` (or `reserved:host`, `reserved:world`).
        #[arg(long)]
        src: String,
        /// Labels of the destination.
        #[arg(long)]
        dst: String,
        /// Destination port and protocol, e.g. `80/tcp`, `53/udp`, `8/icmp` (echo request).
        #[arg(long)]
        dport: String,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MonitorType {
    Drop,
    Verdict,
    Trace,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AttachModeArg {
    Tc,
    Tcx,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EnforcementArg {
    Default,
    Always,
    Never,
}

/// How the daemon meets Docker; the daemon, `state check` and `state recover` share these.
#[derive(Debug, clap::Args)]
struct DockerSide {
    /// Where dockerd finds the plugin; the file name (without .sock) is the driver name unless
    /// --driver-name says otherwise.
    #[arg(long, env = "CILIUM_RS_PLUGIN_SOCKET", default_value = "/run/docker/plugins/cilium-rs.sock")]
    plugin_socket: PathBuf,
    /// The driver (and IPAM driver) name networks carry in Docker, which reconciliation looks
    /// for: by default the plugin socket's file name without .sock; a managed plugin's is its
    /// name with the tag, e.g. `cilium-rs:latest`.
    #[arg(long, env = "CILIUM_RS_DRIVER_NAME", value_parser = parse_driver_name)]
    driver_name: Option<String>,
    /// Docker Engine API socket, used in the background to reconcile state.
    #[arg(long, env = "CILIUM_RS_DOCKER_SOCKET", default_value = "/var/run/docker.sock")]
    docker_socket: PathBuf,
}

impl DockerSide {
    /// The driver name: `--driver-name`, else the plugin socket's file name.
    fn driver(&self) -> String {
        self.driver_name.clone().unwrap_or_else(|| docker::plugin_name(&self.plugin_socket))
    }
}

/// Where the daemon keeps what outlives it; the daemon and `state recover` share these.
#[derive(Debug, clap::Args)]
struct StatePaths {
    /// Persisted state (networks, pools, endpoints).
    #[arg(long, env = "CILIUM_RS_STATE_DIR", default_value = "/var/lib/cilium-rs")]
    state_dir: PathBuf,
    /// Pinned BPF maps and links.
    #[arg(long, env = "CILIUM_RS_BPF_ROOT", default_value = "/sys/fs/bpf/cilium-rs")]
    bpf_root: PathBuf,
}

#[derive(Debug, clap::Args)]
struct DaemonArgs {
    #[command(flatten)]
    docker: DockerSide,
    #[command(flatten)]
    paths: StatePaths,
    /// IPv4 subnets for networks created without --subnet are carved from here.
    #[arg(long, env = "CILIUM_RS_IPV4_POOL_RANGE", default_value = "10.220.0.0/16")]
    ipv4_pool_range: Ipv4Net,
    /// Prefix length of those IPv4 subnets.
    #[arg(long, env = "CILIUM_RS_IPV4_POOL_PREFIX", default_value_t = 22)]
    ipv4_pool_prefix: u8,
    /// IPv6 subnets for networks created without an IPv6 --subnet are carved from here (ULA).
    #[arg(long, env = "CILIUM_RS_IPV6_POOL_RANGE", default_value = "fdc1:1a00::/48")]
    ipv6_pool_range: Ipv6Net,
    /// Prefix length of those IPv6 subnets.
    #[arg(long, env = "CILIUM_RS_IPV6_POOL_PREFIX", default_value_t = 64)]
    ipv6_pool_prefix: u8,
    /// Endpoint MTU for networks without -o mtu (default: the MTU of the host's default-route interface).
    #[arg(long, env = "CILIUM_RS_MTU", value_parser = clap::value_parser!(u32).range(1280..=65535))]
    mtu: Option<u32>,
    /// How programs are attached to endpoint veths: `tc` (clsact filters, ~0.15 ms) or `tcx`
    /// (pinned links, Linux >= 6.6; each waits for an RCU grace period, 10-40 ms).
    #[arg(long, env = "CILIUM_RS_ATTACH_MODE", value_enum, default_value_t = AttachModeArg::Tc)]
    attach_mode: AttachModeArg,
    /// Seconds between reconciliations with Docker (what dockerd forgot while we were down).
    #[arg(long, env = "CILIUM_RS_RECONCILE_INTERVAL", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    reconcile_interval: u64,
    /// Records younger than this many seconds are never reconciled away.
    #[arg(long, env = "CILIUM_RS_RECONCILE_GRACE", default_value_t = cilium_rs::driver::RECONCILE_GRACE_SECS)]
    reconcile_grace: u64,
    /// Policy enforcement: `default` (an endpoint is default-deny in a direction once a rule
    /// selects it there), `always` (every endpoint default-deny), `never` (nothing enforced).
    #[arg(long, env = "CILIUM_RS_ENABLE_POLICY", value_enum, default_value_t = EnforcementArg::Default)]
    enable_policy: EnforcementArg,
    /// Only container labels whose key starts with one of these count for identity
    /// (comma-separated or repeated; default: all but compose's bookkeeping labels).
    #[arg(long, env = "CILIUM_RS_LABEL_INCLUDE", value_delimiter = ',')]
    label_include: Vec<String>,
    /// Container labels whose key starts with one of these do not count for identity.
    #[arg(long, env = "CILIUM_RS_LABEL_EXCLUDE", value_delimiter = ',')]
    label_exclude: Vec<String>,
    /// Events (drops, verdicts, traces) each CPU may send the daemon per second once its burst
    /// is spent; what is over is counted as suppressed. 0 turns events off.
    #[arg(long, env = "CILIUM_RS_MONITOR_RATE", default_value_t = 2000)]
    monitor_rate: u32,
    /// Events each CPU may send at once.
    #[arg(long, env = "CILIUM_RS_MONITOR_BURST", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    monitor_burst: u32,
    /// Flows the daemon keeps for `cilium-rs flows` at most.
    #[arg(long, env = "CILIUM_RS_FLOW_CAPACITY", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    flow_capacity: u64,
    /// Seconds a flow stays listed after it was last seen.
    #[arg(long, env = "CILIUM_RS_FLOW_WINDOW", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    flow_window: u64,
    /// Seconds between reads of the host's addresses (identity host).
    #[arg(long, env = "CILIUM_RS_HOST_ADDRESS_INTERVAL", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    host_address_interval: u64,
    /// Interfaces that lead outside: `auto` (those holding a default route, followed as they
    /// change), `none`, or names separated by commas. Endpoints reach outside through them,
    /// masqueraded to their addresses.
    #[arg(long, env = "CILIUM_RS_EGRESS_INTERFACE", default_value = "auto", value_parser = str::parse::<EgressChoice>)]
    egress_interface: EgressChoice,
    /// Source ports masquerading hands out (FIRST-LAST); must lie outside the host's
    /// ephemeral ports (net.ipv4.ip_local_port_range).
    #[arg(long, env = "CILIUM_RS_NAT_PORT_RANGE", default_value = "61000-65535", value_parser = str::parse::<PortRange>)]
    nat_port_range: PortRange,
    /// Serve the service map page at http://ADDRESS/, e.g. 127.0.0.1:9963 (off unless given;
    /// anyone who reaches the address sees the containers and their flows).
    #[arg(long, env = "CILIUM_RS_UI_ADDRESS")]
    ui_address: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics at http://ADDRESS/metrics, e.g. 127.0.0.1:9962 (off unless
    /// given; anyone who reaches the address can read them).
    #[arg(long, env = "CILIUM_RS_METRICS_ADDRESS")]
    metrics_address: Option<std::net::SocketAddr>,
    /// Also show series per endpoint (labelled with its id and container name): one set per
    /// endpoint, so off by default.
    #[arg(long, env = "CILIUM_RS_METRICS_PER_ENDPOINT")]
    metrics_per_endpoint: bool,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "cilium_rs=debug". When neither
    /// this nor CILIUM_RS_LOG is given, RUST_LOG is used, else "info".
    #[arg(long, env = "CILIUM_RS_LOG")]
    log: Option<String>,
}

/// Exit status of a daemon that refuses its state file: restarting cannot help, so the
/// service unit does not (`RestartPreventExitStatus=`).
const EXIT_STATE_REFUSED: u8 = 3;

/// The daemon will not start on its state file; the message says why and what to run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StateRefused(String);

/// A driver name as Docker spells plugin references: no blanks, nothing empty.
fn parse_driver_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{text:?} is not a driver name (empty, or holds blanks)"));
    }
    Ok(text.to_owned())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cilium-rs: {e:#}");
            if e.downcast_ref::<StateRefused>().is_some() {
                ExitCode::from(EXIT_STATE_REFUSED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start tokio runtime")?;
    let api = cli.api_socket.as_path();
    if let Command::Status { verbose, output } = cli.command {
        let healthy = runtime.block_on(cli::status(api, output, verbose))?;
        return Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    if let Command::State { command: StateCommand::Check { docker, output } } = &cli.command {
        let agree = runtime.block_on(cli::state_check(api, &docker.docker_socket, &docker.driver(), *output))?;
        return Ok(if agree { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    runtime.block_on(run_command(cli))?;
    Ok(ExitCode::SUCCESS)
}

async fn run_command(cli: Cli) -> anyhow::Result<()> {
    let api = cli.api_socket.as_path();
    match cli.command {
        Command::Flows { endpoint, related_to, output } => {
            cli::flows(api, Filter { kinds: Vec::new(), endpoint, related_to }, output).await
        }
        Command::Monitor { json, types, endpoint, related_to } => {
            let kinds = types
                .iter()
                .map(|t| match t {
                    MonitorType::Drop => Kind::Drop,
                    MonitorType::Verdict => Kind::Verdict,
                    MonitorType::Trace => Kind::Trace,
                })
                .collect();
            cli::monitor(api, Filter { kinds, endpoint, related_to }, json).await
        }
        Command::Daemon(args) => run_daemon(*args, cli.api_socket.clone()).await,
        Command::Endpoint { command: EndpointCommand::List { output } } => cli::endpoints(api, output).await,
        Command::Endpoint { command: EndpointCommand::Get { endpoint, output } } => {
            cli::endpoint_get(api, &endpoint, output).await
        }
        Command::Network { command: ListCommand::List { output } } => cli::networks(api, output).await,
        Command::Identity { command: ListCommand::List { output } } => cli::identities(api, output).await,
        Command::Status { verbose, output } => cli::status(api, output, verbose).await.map(drop),
        Command::State { command: StateCommand::Check { docker, output } } => {
            cli::state_check(api, &docker.docker_socket, &docker.driver(), output).await.map(drop)
        }
        Command::State { command: StateCommand::Recover { docker, paths, ipv6_pool_prefix, output } } => {
            let options = RecoverOptions {
                plugin: docker.driver(),
                state_dir: paths.state_dir,
                bpf_root: paths.bpf_root,
                docker_socket: docker.docker_socket,
                ipam: IpamConfig { ipv6_prefix: ipv6_pool_prefix, ..IpamConfig::default() },
            };
            let recovered = recover::run::recover(&options).await.map_err(anyhow::Error::msg)?;
            cli::print_recovered(output, &recovered)
        }
        Command::Bpf { map } => {
            let (map, output) = match map {
                BpfCommand::Ct { command: CtCommand::Flush { output } } => return cli::bpf_ct_flush(api, output).await,
                BpfCommand::Ct { command: CtCommand::List { output } } => (BpfMap::Ct, output),
                BpfCommand::Endpoints { command: ListCommand::List { output } } => (BpfMap::Endpoints, output),
                BpfCommand::Ipcache { command: ListCommand::List { output } } => (BpfMap::Ipcache, output),
                BpfCommand::Policy { command: ListCommand::List { output } } => (BpfMap::Policy, output),
                BpfCommand::Nat { command: ListCommand::List { output } } => (BpfMap::Nat, output),
            };
            cli::bpf_list(api, map, output).await
        }
        Command::Policy { command } => match command {
            PolicyCommand::Import { file, output } => cli::policy_import(api, &file, output).await,
            PolicyCommand::Get { output } => cli::policy_get(api, output).await,
            PolicyCommand::Delete { all, labels, output } => cli::policy_delete(api, all, labels, output).await,
            PolicyCommand::Validate { file } => cli::policy_validate(&file),
            PolicyCommand::Wait { revision, timeout } => cli::policy_wait(api, revision, timeout).await,
            PolicyCommand::Trace { src, dst, dport, output } => {
                cli::policy_trace(api, TraceRequest { src, dst, dport }, output).await
            }
        },
    }
}

async fn run_daemon(args: DaemonArgs, api_socket: PathBuf) -> anyhow::Result<()> {
    let errors = ErrorRing::default();
    logging::init(args.log.as_deref(), errors.clone())?;
    let config = DriverConfig {
        ipam: IpamConfig {
            ipv4_range: args.ipv4_pool_range,
            ipv4_prefix: args.ipv4_pool_prefix,
            ipv6_range: args.ipv6_pool_range,
            ipv6_prefix: args.ipv6_pool_prefix,
        },
        mtu: args.mtu,
        reconcile_grace_secs: args.reconcile_grace,
        enforcement: match args.enable_policy {
            EnforcementArg::Default => EnforcementMode::Default,
            EnforcementArg::Always => EnforcementMode::Always,
            EnforcementArg::Never => EnforcementMode::Never,
        },
        labels: LabelFilter::new(&args.label_include, &args.label_exclude),
        egress: args.egress_interface.clone(),
        nat_ports: args.nat_port_range,
        errors,
        ..DriverConfig::default()
    };
    config.ipam.validate()?;
    egress::check_nat_ports(args.nat_port_range, egress::host_ephemeral_ports().map_err(anyhow::Error::msg)?)
        .map_err(anyhow::Error::msg)?;
    let notifier = Notifier::from_env()?;
    // Sockets first: a second daemon stops here, before touching state or the kernel. dockerd's
    // calls queue in the backlog until the state is restored.
    let plugin = match Socket::from_systemd(&args.docker.plugin_socket)? {
        Some(socket) => socket,
        None => Socket::bind(&args.docker.plugin_socket, server::PLUGIN_SOCKET_MODE)?,
    };
    let api = Socket::bind(&api_socket, server::API_SOCKET_MODE)?;
    let driver_name = args.docker.driver_name.clone().unwrap_or_else(|| docker::plugin_name(&plugin.file.path));
    let config = DriverConfig { driver_name: driver_name.clone(), ..config };
    let page = match args.ui_address {
        Some(address) => Some(UiListener::bind(address).await?),
        None => None,
    };
    let metrics = match args.metrics_address {
        Some(address) => Some(MetricsListener::bind(address, args.metrics_per_endpoint).await?),
        None => None,
    };
    let store = Arc::new(RedbStore::open(&args.paths.state_dir).map_err(|e| match e.needs_recovery() {
        true => anyhow::Error::new(StateRefused(e.to_string())),
        false => e.into(),
    })?);
    let mode = match args.attach_mode {
        AttachModeArg::Tc => AttachMode::Netlink,
        AttachModeArg::Tcx => AttachMode::Tcx,
    };
    if args.egress_interface != EgressChoice::None {
        for switch in egress::enable_forwarding().map_err(anyhow::Error::msg)? {
            tracing::info!(%switch, "turned on forwarding: endpoints reach outside through the host");
        }
    }
    let datapath = LinuxDatapath::new(&args.paths.bpf_root, mode).await?;
    let driver = Driver::start(config, Arc::new(datapath), store.clone()).await.map_err(|e| match e {
        DriverError::State(StateError::Corrupt { .. }) => anyhow::Error::new(StateRefused(format!(
            "{e} in {}. The daemon does not start on it, so that no running container loses its addresses \
             or policy (the datapath keeps forwarding). Rebuild the state with `cilium-rs state recover \
             --state-dir {}`",
            store.path().display(),
            args.paths.state_dir.display()
        ))),
        e => e.into(),
    })?;
    let driver = Arc::new(driver);
    // dockerd's retries of what a crash left unanswered come with an empty body.
    let journal = cilium_rs::inflight::InFlight::open(&args.paths.state_dir.join("inflight"))
        .with_context(|| format!("open the journal of calls in flight in {}", args.paths.state_dir.display()))?;
    driver.keep_calls_in_flight(journal);
    // The state the daemon started on is the last good one.
    let backup = state_file::backup_path(store.path());
    if let Err(e) = store.back_up(&backup) {
        tracing::warn!(error = %e, "back up the state");
    }
    // The host's addresses are policy's `host` before the first request is served.
    if let Err(e) = driver.refresh_host_addresses().await {
        tracing::warn!(error = %e, "read the host's addresses");
    }
    driver.monitor().set_flow_limits(FlowLimits {
        capacity: args.flow_capacity as usize,
        window: Duration::from_secs(args.flow_window),
    });
    driver.start_monitor(EventRateLimit { per_second: args.monitor_rate, burst: args.monitor_burst }).await?;
    tracing::info!(driver = %driver_name, "networks of this driver are ours");
    let tasks = [
        tokio::spawn(docker::reconcile_forever(
            driver.clone(),
            args.docker.docker_socket.clone(),
            driver_name,
            Duration::from_secs(args.reconcile_interval),
        )),
        tokio::spawn(identity_watch::resolve_forever(driver.clone(), args.docker.docker_socket.clone())),
        tokio::spawn(refresh_host_addresses(driver.clone(), Duration::from_secs(args.host_address_interval))),
        tokio::spawn(sweep_nat(driver.clone())),
    ];
    // State restored, datapath ready: the service manager may start what waits for us.
    if let Err(e) = notifier.ready() {
        tracing::warn!(error = %e, "tell the service manager the daemon is ready");
    }
    server::serve(driver, plugin, api, metrics, page, shutdown_signal(notifier)).await?;
    for task in tasks {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Keeps the host's own addresses (identity host) in policy, and the egress interfaces with
/// their addresses in the datapath, as they change.
async fn refresh_host_addresses(driver: Arc<Driver>, period: Duration) {
    let mut failing = [false, false];
    loop {
        tokio::time::sleep(period).await;
        let results = [
            ("read the host's addresses", driver.refresh_host_addresses().await),
            ("egress interfaces", driver.refresh_egress().await),
        ];
        for ((what, result), failing) in results.into_iter().zip(&mut failing) {
            match result {
                Ok(()) => *failing = false,
                Err(e) if !*failing => {
                    tracing::warn!(error = %e, "{what}");
                    *failing = true;
                }
                Err(_) => {}
            }
        }
    }
}

/// How often translations of endpoints that went are looked for without being asked.
const NAT_SWEEP_PERIOD: Duration = Duration::from_secs(60);

/// Removes the translations of endpoints that went (soon after one goes, and periodically).
async fn sweep_nat(driver: Arc<Driver>) {
    loop {
        tokio::select! {
            _ = driver.endpoint_removed() => {}
            _ = tokio::time::sleep(NAT_SWEEP_PERIOD) => {}
        }
        match driver.sweep_nat().await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "NAT entries of removed endpoints swept"),
            Err(e) => tracing::warn!(error = %e, "sweep NAT entries"),
        }
    }
}

async fn shutdown_signal(notifier: Notifier) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight requests"),
        _ = int.recv() => tracing::info!("SIGINT: finishing in-flight requests"),
    }
    if let Err(e) = notifier.stopping() {
        tracing::warn!(error = %e, "tell the service manager the daemon is stopping");
    }
}
