//! `make bench`: the same workloads through cilium-rs and through the baselines, side by side in
//! one run, as medians and ratios; the table goes to stdout and target/bench/results.json.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use integration::{docker, inspect, remove_docker_leftovers, run, run_container, Daemon, DOCKER, IMAGE, TEST_LABEL};
use serde_json::{json, Value};

const PLUGIN: &str = "crs-bench";
const PREFIX: &str = "crs-bench-";
const ROUNDS: usize = 5;
const IPERF_SECONDS: &str = "3";
const DOCKER_RUNS: usize = 15;
const ENDPOINTS_PRESENT: usize = 500;
const ENDPOINTS_MEASURED: usize = 100;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    if values.is_empty() {
        return f64::NAN;
    }
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// PID of a container's init process, to enter its network namespace.
fn pid_of(container: &str) -> Result<String> {
    Ok(inspect(container)?["State"]["Pid"].as_u64().context("no pid")?.to_string())
}

/// A network namespace to run iperf3 in: a container's or a named one.
#[derive(Clone)]
struct Ns(String);

impl Ns {
    fn container(name: &str) -> Result<Ns> {
        Ok(Ns(format!("/proc/{}/ns/net", pid_of(name)?)))
    }

    fn named(name: &str) -> Ns {
        Ns(format!("/run/netns/{name}"))
    }

    fn cmd(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.0)).arg("--").args(argv);
        cmd
    }
}

/// One iperf3 TCP run from `client` to `server_ip` (server already listening); Gbit/s.
fn iperf(client: &Ns, server_ip: &str) -> Result<f64> {
    let out = client.cmd(&["iperf3", "-c", server_ip, "-t", IPERF_SECONDS, "-J"]).output()?;
    let report: Value = serde_json::from_slice(&out.stdout).context("iperf3 json")?;
    if let Some(err) = report["error"].as_str() {
        bail!("iperf3 to {server_ip}: {err}");
    }
    let bps = report["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 result")?;
    Ok(bps / 1e9)
}

fn start_iperf_server(ns: &Ns) -> Result<()> {
    let status = ns.cmd(&["iperf3", "-s", "-D"]).status()?;
    if !status.success() {
        bail!("iperf3 -s failed in {}", ns.0);
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

struct VethPair;

impl VethPair {
    fn create() -> Result<VethPair> {
        let _ = VethPair::remove();
        run(&["ip", "netns", "add", "crs-bench-a"])?;
        run(&["ip", "netns", "add", "crs-bench-b"])?;
        run(&[
            "ip",
            "link",
            "add",
            "crsbench0",
            "netns",
            "crs-bench-a",
            "type",
            "veth",
            "peer",
            "crsbench1",
            "netns",
            "crs-bench-b",
        ])?;
        for (ns, dev, v4, v6) in [
            ("crs-bench-a", "crsbench0", "10.250.9.1/24", "fdc1:1a00:96::1/64"),
            ("crs-bench-b", "crsbench1", "10.250.9.2/24", "fdc1:1a00:96::2/64"),
        ] {
            let net = format!("--net=/run/netns/{ns}");
            run(&["nsenter", &net, "ip", "addr", "add", v4, "dev", dev])?;
            run(&["nsenter", &net, "ip", "addr", "add", v6, "dev", dev, "nodad"])?;
            run(&["nsenter", &net, "ip", "link", "set", dev, "up"])?;
            run(&["nsenter", &net, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(VethPair)
    }

    fn remove() -> Result<()> {
        let _ = run(&["ip", "netns", "del", "crs-bench-a"]);
        let _ = run(&["ip", "netns", "del", "crs-bench-b"]);
        Ok(())
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = VethPair::remove();
    }
}

struct Throughput {
    rows: BTreeMap<&'static str, Vec<f64>>,
}

fn throughput(daemon: &Daemon) -> Result<Throughput> {
    let net = format!("{PREFIX}net");
    docker(&["network", "create", "-d", PLUGIN, "--ipam-driver", PLUGIN, "--ipv6", &net])?;
    let names = [format!("{PREFIX}crs-s"), format!("{PREFIX}crs-c"), format!("{PREFIX}br-s"), format!("{PREFIX}br-c")];
    run_container(&names[0], &["--network", &net])?;
    run_container(&names[1], &["--network", &net])?;
    run_container(&names[2], &[])?;
    run_container(&names[3], &[])?;
    let _veth = VethPair::create()?;
    let crs_server = Ns::container(&names[0])?;
    let crs_client = Ns::container(&names[1])?;
    let br_server = Ns::container(&names[2])?;
    let br_client = Ns::container(&names[3])?;
    let veth_server = Ns::named("crs-bench-b");
    let veth_client = Ns::named("crs-bench-a");
    for ns in [&crs_server, &br_server, &veth_server] {
        start_iperf_server(ns)?;
    }
    let crs = &inspect(&names[0])?["NetworkSettings"]["Networks"][&net];
    let crs4 = crs["IPAddress"].as_str().context("crs v4")?.to_owned();
    let crs6 = crs["GlobalIPv6Address"].as_str().context("crs v6")?.to_owned();
    let br4 = inspect(&names[2])?["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        .as_str()
        .context("bridge v4")?
        .to_owned();

    let mut rows: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for round in 0..ROUNDS {
        eprintln!("bench: throughput round {}/{ROUNDS}", round + 1);
        rows.entry("veth_v4").or_default().push(iperf(&veth_client, "10.250.9.2")?);
        rows.entry("bridge_v4").or_default().push(iperf(&br_client, &br4)?);
        rows.entry("cilium_v4").or_default().push(iperf(&crs_client, &crs4)?);
        rows.entry("veth_v6").or_default().push(iperf(&veth_client, "fdc1:1a00:96::2")?);
        rows.entry("cilium_v6").or_default().push(iperf(&crs_client, &crs6)?);
    }
    let endpoints = daemon.endpoints()?;
    let forwarded: u64 = endpoints.iter().map(|e| e["counters"]["egress"]["packets"].as_u64().unwrap_or(0)).sum();
    eprintln!("bench: cilium-rs endpoints forwarded {forwarded} packets");
    for ns in [&crs_server, &br_server, &veth_server] {
        let _ = ns.cmd(&["pkill", "-f", "iperf3 -s -D"]).status();
    }
    let _ = run(&["pkill", "-f", "iperf3 -s -D"]);
    for name in &names {
        let _ = docker(&["rm", "-f", name]);
    }
    docker(&["network", "rm", &net])?;
    Ok(Throughput { rows })
}

fn time_docker_run(network_args: &[&str]) -> Result<f64> {
    let label = format!("{TEST_LABEL}=1");
    let mut argv = vec!["run", "--rm", "--label", label.as_str()];
    argv.extend_from_slice(network_args);
    argv.extend_from_slice(&[IMAGE, "true"]);
    let start = Instant::now();
    let out = Command::new(DOCKER).args(&argv).output()?;
    let elapsed = start.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!("docker {argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(elapsed)
}

struct RunLatency {
    cilium_rs: Vec<f64>,
    bridge: Vec<f64>,
    bridge_dual_stack: Vec<f64>,
}

/// `docker run --rm … true` on a cilium-rs network, on Docker's default bridge (IPv4 only), and
/// on a Docker bridge network with IPv6 as well (the same dual stack cilium-rs always gives).
fn docker_run_latency() -> Result<RunLatency> {
    let net = format!("{PREFIX}run");
    let bridge6 = format!("{PREFIX}bridge6");
    docker(&["network", "create", "-d", PLUGIN, "--ipam-driver", PLUGIN, "--ipv6", &net])?;
    docker(&["network", "create", "--ipv6", "--subnet", "fdc1:1a00:94::/64", "--subnet", "10.238.0.0/24", &bridge6])?;
    let mut runs = RunLatency { cilium_rs: Vec::new(), bridge: Vec::new(), bridge_dual_stack: Vec::new() };
    // One warm-up each, then interleaved.
    time_docker_run(&["--network", &net])?;
    time_docker_run(&[])?;
    time_docker_run(&["--network", &bridge6])?;
    for i in 0..DOCKER_RUNS {
        if i.is_multiple_of(5) {
            eprintln!("bench: docker run {}/{DOCKER_RUNS}", i + 1);
        }
        runs.cilium_rs.push(time_docker_run(&["--network", &net])?);
        runs.bridge.push(time_docker_run(&[])?);
        runs.bridge_dual_stack.push(time_docker_run(&["--network", &bridge6])?);
    }
    docker(&["network", "rm", &net])?;
    docker(&["network", "rm", &bridge6])?;
    Ok(runs)
}

/// Drives the plugin socket directly, as dockerd would, without dockerd.
struct Plugin<'a> {
    socket: &'a Path,
    runtime: tokio::runtime::Runtime,
}

impl Plugin<'_> {
    fn call(&self, method: &str, body: Value) -> Result<Value> {
        let bytes = self.runtime.block_on(cilium_rs::http_unix::request(
            self.socket,
            hyper::Method::POST,
            &format!("/{method}"),
            Some(format!("{body}\n").into_bytes()),
        ))?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// A Docker-style id; `n` leads, since interface names come from the first 11 digits.
fn hex_id(prefix: u32, n: usize) -> String {
    format!("{n:011x}{prefix:08x}{:045x}", 0)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS")?;
    line.split_whitespace().nth(1).context("VmRSS value")?.parse().context("VmRSS number")
}

struct PluginLatency {
    create_join_ms: Vec<f64>,
    rss_kib: u64,
}

fn plugin_latency() -> Result<PluginLatency> {
    // A second daemon that no dockerd knows: reconciliation is off (no Docker socket), so the
    // endpoints created here through the socket are left alone.
    let daemon = Daemon::start_with("crs-bench-plugin", &[("CILIUM_RS_DOCKER_SOCKET", "/nonexistent/docker.sock")])?;
    let plugin = Plugin {
        socket: &daemon.plugin_socket,
        runtime: tokio::runtime::Builder::new_current_thread().enable_all().build()?,
    };
    let network = hex_id(0xbe4c0000, 1);
    let v4 = plugin.call(
        "IpamDriver.RequestPool",
        json!({"AddressSpace": "CiliumRsLocal", "Pool": "10.239.0.0/20", "V6": false}),
    )?;
    let v6 = plugin.call(
        "IpamDriver.RequestPool",
        json!({"AddressSpace": "CiliumRsLocal", "Pool": "fdc1:1a00:95::/64", "V6": true}),
    )?;
    plugin.call(
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": network, "Options": {"com.docker.network.enable_ipv6": true, "com.docker.network.generic": {}},
               "IPv4Data": [{"AddressSpace": "CiliumRsLocal", "Pool": v4["Pool"], "Gateway": v4["Data"]["com.docker.network.gateway"]}],
               "IPv6Data": [{"AddressSpace": "CiliumRsLocal", "Pool": v6["Pool"], "Gateway": v6["Data"]["com.docker.network.gateway"]}]}),
    )?;
    let total = ENDPOINTS_PRESENT + ENDPOINTS_MEASURED;
    let mut created = Vec::new();
    let mut samples = Vec::new();
    let mut rss = 0;
    let result = (|| -> Result<()> {
        for n in 0..total {
            if n == ENDPOINTS_PRESENT {
                rss = rss_kib(daemon.pid().context("daemon pid")?)?;
            }
            if n.is_multiple_of(100) {
                eprintln!("bench: endpoints {n}/{total}");
            }
            let endpoint = hex_id(0xe0000000, n);
            let a4 = plugin.call("IpamDriver.RequestAddress", json!({"PoolID": v4["PoolID"], "Address": ""}))?;
            let a6 = plugin.call("IpamDriver.RequestAddress", json!({"PoolID": v6["PoolID"], "Address": ""}))?;
            let start = Instant::now();
            plugin.call(
                "NetworkDriver.CreateEndpoint",
                json!({"NetworkID": network, "EndpointID": endpoint, "Interface": {"Address": a4["Address"], "AddressIPv6": a6["Address"], "MacAddress": ""}, "Options": {}}),
            )?;
            let join = plugin.call(
                "NetworkDriver.Join",
                json!({"NetworkID": network, "EndpointID": endpoint, "SandboxKey": "", "Options": {}}),
            )?;
            let elapsed = start.elapsed().as_secs_f64() * 1000.0;
            if join.get("Err").is_some() {
                bail!("join failed: {join}");
            }
            created.push((endpoint, a4, a6));
            if n >= ENDPOINTS_PRESENT {
                samples.push(elapsed);
            }
        }
        Ok(())
    })();
    eprintln!("bench: removing {} endpoints", created.len());
    let bare = |v: &Value| v["Address"].as_str().unwrap_or_default().split('/').next().unwrap_or_default().to_owned();
    for (endpoint, a4, a6) in &created {
        let ids = json!({"NetworkID": network, "EndpointID": endpoint});
        plugin.call("NetworkDriver.Leave", ids.clone())?;
        plugin.call("NetworkDriver.DeleteEndpoint", ids)?;
        plugin.call("IpamDriver.ReleaseAddress", json!({"PoolID": v4["PoolID"], "Address": bare(a4)}))?;
        plugin.call("IpamDriver.ReleaseAddress", json!({"PoolID": v6["PoolID"], "Address": bare(a6)}))?;
    }
    plugin.call("IpamDriver.ReleasePool", json!({"PoolID": v4["PoolID"]}))?;
    plugin.call("IpamDriver.ReleasePool", json!({"PoolID": v6["PoolID"]}))?;
    plugin.call("NetworkDriver.DeleteNetwork", json!({"NetworkID": network}))?;
    result?;
    Ok(PluginLatency { create_join_ms: samples, rss_kib: rss })
}

fn main() -> Result<()> {
    integration::require_root_and_dockerd();
    let daemon = Daemon::start(PLUGIN)?;
    remove_docker_leftovers(PREFIX);
    let started = Instant::now();

    let tp = throughput(&daemon)?;
    let runs = docker_run_latency()?;
    drop(daemon);
    let latency = plugin_latency()?;

    let med = |key: &str| median(&mut tp.rows.get(key).cloned().unwrap_or_default());
    let (veth4, bridge4, crs4, veth6, crs6) =
        (med("veth_v4"), med("bridge_v4"), med("cilium_v4"), med("veth_v6"), med("cilium_v6"));
    let run_crs_med = median(&mut runs.cilium_rs.clone());
    let run_bridge_med = median(&mut runs.bridge.clone());
    let run_bridge6_med = median(&mut runs.bridge_dual_stack.clone());
    let p50 = percentile(&mut latency.create_join_ms.clone(), 50.0);
    let p99 = percentile(&mut latency.create_join_ms.clone(), 99.0);
    let rss_mb = latency.rss_kib as f64 / 1024.0;

    println!();
    println!("cilium-rs bench — medians of {ROUNDS} × {IPERF_SECONDS} s iperf3 runs, {DOCKER_RUNS} docker runs, {ENDPOINTS_MEASURED} endpoints after {ENDPOINTS_PRESENT}");
    println!();
    println!(
        "{:<44} {:>12} {:>12} {:>12} {:>18} {:>8}",
        "metric", "bare veth", "docker bridge", "cilium-rs", "ratio", "target"
    );
    println!(
        "{:<44} {:>12.2} {:>12.2} {:>12.2} {:>18} {:>8}",
        "TCP throughput IPv4 (Gbit/s)",
        veth4,
        bridge4,
        crs4,
        format!("{:.2}× bridge", crs4 / bridge4),
        "≥ 1.0×"
    );
    println!(
        "{:<44} {:>12.2} {:>12} {:>12.2} {:>18} {:>8}",
        "TCP throughput IPv6 (Gbit/s)",
        veth6,
        "n/a",
        crs6,
        format!("{:.2}× veth", crs6 / veth6),
        ""
    );
    println!(
        "{:<44} {:>12} {:>12.0} {:>12.0} {:>18} {:>8}",
        "docker run --rm … true, IPv4 bridge (ms)",
        "",
        run_bridge_med,
        run_crs_med,
        format!("{:.2}× bridge", run_crs_med / run_bridge_med),
        "≤ 1.2×"
    );
    println!(
        "{:<44} {:>12} {:>12.0} {:>12.0} {:>18} {:>8}",
        "docker run --rm … true, dual-stack bridge (ms)",
        "",
        run_bridge6_med,
        run_crs_med,
        format!("{:.2}× bridge", run_crs_med / run_bridge6_med),
        "≤ 1.2×"
    );
    println!(
        "{:<44} {:>12} {:>12} {:>12.2} {:>18} {:>8}",
        "CreateEndpoint+Join p50 (ms), 500 present", "", "", p50, "", ""
    );
    println!(
        "{:<44} {:>12} {:>12} {:>12.2} {:>18} {:>8}",
        "CreateEndpoint+Join p99 (ms), 500 present", "", "", p99, "", "≤ 20"
    );
    println!(
        "{:<44} {:>12} {:>12} {:>12.1} {:>18} {:>8}",
        "daemon RSS at 500 endpoints (MB)", "", "", rss_mb, "", "≤ 64"
    );
    println!();
    println!("(took {:.0} s)", started.elapsed().as_secs_f64());

    let results = json!({
        "throughput_gbps": {
            "ipv4": {"veth": veth4, "docker_bridge": bridge4, "cilium_rs": crs4, "ratio_vs_bridge": crs4 / bridge4, "runs": tp.rows},
            "ipv6": {"veth": veth6, "cilium_rs": crs6, "ratio_vs_veth": crs6 / veth6},
        },
        "docker_run_ms": {"docker_bridge": run_bridge_med, "docker_bridge_dual_stack": run_bridge6_med, "cilium_rs": run_crs_med,
                          "ratio_vs_bridge": run_crs_med / run_bridge_med, "ratio_vs_dual_stack_bridge": run_crs_med / run_bridge6_med,
                          "runs_cilium_rs": runs.cilium_rs, "runs_bridge": runs.bridge, "runs_bridge_dual_stack": runs.bridge_dual_stack},
        "create_endpoint_join_ms": {"p50": p50, "p99": p99, "endpoints_present": ENDPOINTS_PRESENT, "samples": latency.create_join_ms},
        "daemon_rss_mb_at_500_endpoints": rss_mb,
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    println!("results: {}", dir.join("results.json").display());
    Ok(())
}
