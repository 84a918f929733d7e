//! cilium-rs: the plugin daemon (`cilium-rs daemon`) and the CLI that talks to it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use ipnet::{Ipv4Net, Ipv6Net};

use cilium_rs::datapath::bpf::AttachMode;
use cilium_rs::datapath::linux::LinuxDatapath;
use cilium_rs::driver::{Driver, DriverConfig};
use cilium_rs::http_unix::get_json;
use cilium_rs::ipam::IpamConfig;
use cilium_rs::server::{self, api, Socket};
use cilium_rs::store::RedbStore;
use cilium_rs::views::{EndpointView, NetworkView, StatusView};
use cilium_rs::{docker, table};

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
    Daemon(DaemonArgs),
    /// Container endpoints: addresses, interfaces, counters.
    Endpoint {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Networks and their pools.
    Network {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Whether the daemon runs, and what it holds.
    Status {
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    /// A table for people.
    Table,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AttachModeArg {
    Tc,
    Tcx,
}

#[derive(Debug, clap::Args)]
struct DaemonArgs {
    /// Where dockerd finds the plugin; the file name (without .sock) is the driver name.
    #[arg(long, env = "CILIUM_RS_PLUGIN_SOCKET", default_value = "/run/docker/plugins/cilium-rs.sock")]
    plugin_socket: PathBuf,
    /// Persisted state (networks, pools, endpoints).
    #[arg(long, env = "CILIUM_RS_STATE_DIR", default_value = "/var/lib/cilium-rs")]
    state_dir: PathBuf,
    /// Pinned BPF maps and links.
    #[arg(long, env = "CILIUM_RS_BPF_ROOT", default_value = "/sys/fs/bpf/cilium-rs")]
    bpf_root: PathBuf,
    /// Docker Engine API socket, used in the background to reconcile state.
    #[arg(long, env = "CILIUM_RS_DOCKER_SOCKET", default_value = "/var/run/docker.sock")]
    docker_socket: PathBuf,
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
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "cilium_rs=debug".
    #[arg(long, env = "CILIUM_RS_LOG", default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cilium-rs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start tokio runtime")?;
    match cli.command {
        Command::Daemon(args) => {
            let api_socket = cli.api_socket;
            runtime.block_on(run_daemon(args, api_socket))
        }
        Command::Endpoint { command: ListCommand::List { output } } => runtime.block_on(async {
            let list: Vec<EndpointView> = get_json(&cli.api_socket, api::ENDPOINTS).await.map_err(no_daemon)?;
            print(output, list.as_slice(), table::endpoints)
        }),
        Command::Network { command: ListCommand::List { output } } => runtime.block_on(async {
            let list: Vec<NetworkView> = get_json(&cli.api_socket, api::NETWORKS).await.map_err(no_daemon)?;
            print(output, list.as_slice(), table::networks)
        }),
        Command::Status { output } => runtime.block_on(async {
            let status: StatusView = get_json(&cli.api_socket, api::STATUS).await.map_err(no_daemon)?;
            print(output, &status, table::status)
        }),
    }
}

fn no_daemon(e: cilium_rs::http_unix::HttpError) -> anyhow::Error {
    match e {
        cilium_rs::http_unix::HttpError::Connect { path, source } => anyhow::anyhow!(
            "cannot reach the cilium-rs daemon at {}: {source} (is `cilium-rs daemon` running?)",
            path.display()
        ),
        other => other.into(),
    }
}

fn print<T: serde::Serialize + ?Sized>(output: Output, value: &T, render: fn(&T) -> String) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Table => print!("{}", render(value)),
    }
    Ok(())
}

async fn run_daemon(args: DaemonArgs, api_socket: PathBuf) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?)
        .with_target(false)
        .with_writer(std::io::stderr)
        // Colours for a terminal only, not for journald or log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = DriverConfig {
        ipam: IpamConfig {
            ipv4_range: args.ipv4_pool_range,
            ipv4_prefix: args.ipv4_pool_prefix,
            ipv6_range: args.ipv6_pool_range,
            ipv6_prefix: args.ipv6_pool_prefix,
        },
        mtu: args.mtu,
        reconcile_grace_secs: args.reconcile_grace,
    };
    config.ipam.validate()?;
    // Sockets first: a second daemon stops here, before touching state or the kernel. dockerd's
    // calls queue in the backlog until the state is restored.
    let plugin = match Socket::from_systemd(&args.plugin_socket)? {
        Some(socket) => socket,
        None => Socket::bind(&args.plugin_socket)?,
    };
    let api = Socket::bind(&api_socket)?;
    let store = RedbStore::open(&args.state_dir)?;
    let mode = match args.attach_mode {
        AttachModeArg::Tc => AttachMode::Netlink,
        AttachModeArg::Tcx => AttachMode::Tcx,
    };
    let datapath = LinuxDatapath::new(&args.bpf_root, mode).await?;
    let driver = Arc::new(Driver::start(config, Arc::new(datapath), Arc::new(store)).await?);
    let plugin_name = docker::plugin_name(&plugin.file.path);
    let reconciler = tokio::spawn(docker::reconcile_forever(
        driver.clone(),
        args.docker_socket.clone(),
        plugin_name,
        std::time::Duration::from_secs(args.reconcile_interval),
    ));
    server::serve(driver, plugin, api, shutdown_signal()).await?;
    reconciler.abort();
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight requests"),
        _ = int.recv() => tracing::info!("SIGINT: finishing in-flight requests"),
    }
}
