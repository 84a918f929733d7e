//! `make bench`: the same workloads through cilium-rs and through the baselines, side by side in
//! one run, as medians of interleaved rounds and ratios; the table goes to stdout and
//! target/bench/results.json.

mod monitor;
mod netns;
mod plugin;
mod policy;
mod stats;
mod world;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use integration::{
    addresses, docker, remove_docker_leftovers, run, run_container, wait_until, Daemon, DOCKER, IMAGE, TEST_LABEL,
};
use serde_json::json;

use netns::{crr, iperf, start_iperf_server, CrrServer, Ns, VethPair, IPERF_SECONDS};
use stats::{median, percentile};

const PLUGIN: &str = "crs-bench";
const PREFIX: &str = "crs-bench-";
const ROUNDS: usize = 5;
const DOCKER_RUNS: usize = 15;
const IDENTITY_RUNS: usize = 20;
const ONE_RULE_CHANGES: usize = 10;
/// Rules of the ip6tables baseline, as many as policy entries.
const IP6TABLES_RULES: usize = policy::RULES;

/// Samples by row name.
type Rows = BTreeMap<&'static str, Vec<f64>>;

/// A client and a server container.
struct Pair {
    client: Ns,
    server: Ns,
    server_v4: String,
    server_v6: String,
}

fn pair(server: &str, client: &str, network: &str) -> Result<Pair> {
    let (server_v4, server_v6) = addresses(server, network)?;
    Ok(Pair { client: Ns::container(client)?, server: Ns::container(server)?, server_v4, server_v6 })
}

/// Waits until every named container's endpoint carries an allocated identity.
fn wait_identities(daemon: &Daemon, containers: &[String]) -> Result<()> {
    wait_until(Duration::from_secs(30), "identities of the bench's containers", || {
        daemon.endpoints().is_ok_and(|eps| {
            containers.iter().all(|c| {
                eps.iter().any(|e| e["container_name"] == c.as_str() && e["identity"].as_u64().unwrap_or(0) >= 256)
            })
        })
    })
}

struct Datapaths {
    rows: Rows,
    import_ms: f64,
    one_rule_ms: Vec<f64>,
    entries: u64,
}

/// Throughput and connection rate: bare veth pairs (one behind ip6tables rules), Docker's
/// bridge, cilium-rs without policy and cilium-rs with the big policy, interleaved.
fn datapaths(daemon: &Daemon) -> Result<Datapaths> {
    let net = format!("{PREFIX}net");
    docker(&["network", "create", "-d", PLUGIN, "--ipam-driver", PLUGIN, "--ipv6", &net])?;
    let name = |n: &str| format!("{PREFIX}{n}");
    let crs = [("ns", "nserver"), ("nc", "nclient"), ("ps", "pserver"), ("pc", "pclient")];
    for (n, role) in crs {
        run_container(&name(n), &["--network", &net, "-l", &format!("role={role}")])?;
    }
    run_container(&name("bs"), &[])?;
    run_container(&name("bc"), &[])?;
    wait_identities(daemon, &crs.iter().map(|(n, _)| name(n)).collect::<Vec<_>>())?;

    let plain = pair(&name("ns"), &name("nc"), &net)?;
    let policed = pair(&name("ps"), &name("pc"), &net)?;
    let bridge = pair(&name("bs"), &name("bc"), "bridge")?;
    let veth = VethPair::create("crs-bench-veth", 9)?;
    let walled = VethPair::create("crs-bench-ip6t", 10)?;
    walled.add_ip6tables_rules(IP6TABLES_RULES)?;
    let (veth_client, veth_server) = (Ns::named(&veth.client), Ns::named(&veth.server));
    let (walled_client, walled_server) = (Ns::named(&walled.client), Ns::named(&walled.server));

    eprintln!("bench: importing {} rules", policy::RULES);
    let import_ms = policy::timed_import(daemon, &policy::big_policy("pserver", "pclient"))?;
    let entries = policy::entries(daemon)?;
    eprintln!("bench: {entries} policy entries after {import_ms:.0} ms; one-rule changes");
    let one_rule_ms = policy::one_rule_changes(daemon, "pserver", "pclient", ONE_RULE_CHANGES)?;

    for ns in [&plain.server, &policed.server, &bridge.server, &veth_server, &walled_server] {
        start_iperf_server(ns)?;
    }
    let _crr: Vec<CrrServer> =
        [&plain.server, &policed.server, &bridge.server].into_iter().map(CrrServer::start).collect::<Result<_>>()?;

    let mut rows = Rows::new();
    for round in 0..ROUNDS {
        eprintln!("bench: datapath round {}/{ROUNDS}", round + 1);
        let mut sample = |row: &'static str, value: Result<f64>| -> Result<()> {
            rows.entry(row).or_default().push(value?);
            Ok(())
        };
        sample("tcp_v4_veth", iperf(&veth_client, &veth.server_v4))?;
        sample("tcp_v4_bridge", iperf(&bridge.client, &bridge.server_v4))?;
        sample("tcp_v4_crs", iperf(&plain.client, &plain.server_v4))?;
        sample("tcp_v4_crs_policy", iperf(&policed.client, &policed.server_v4))?;
        sample("tcp_v6_veth", iperf(&veth_client, &veth.server_v6))?;
        sample("tcp_v6_ip6tables", iperf(&walled_client, &walled.server_v6))?;
        sample("tcp_v6_crs", iperf(&plain.client, &plain.server_v6))?;
        sample("tcp_v6_crs_policy", iperf(&policed.client, &policed.server_v6))?;
        sample("crr_v4_bridge", crr(&bridge.client, &bridge.server_v4))?;
        sample("crr_v4_crs", crr(&plain.client, &plain.server_v4))?;
        sample("crr_v4_crs_policy", crr(&policed.client, &policed.server_v4))?;
        sample("crr_v6_crs", crr(&plain.client, &plain.server_v6))?;
        sample("crr_v6_crs_policy", crr(&policed.client, &policed.server_v6))?;
    }
    let denied: u64 = daemon
        .endpoints()?
        .iter()
        .flat_map(|e| e["counters"]["drops"].as_object().cloned().unwrap_or_default())
        .filter(|(k, _)| k.starts_with("POLICY"))
        .map(|(_, v)| v["packets"].as_u64().unwrap_or(0))
        .sum();
    if denied > 0 {
        bail!("the bench's own flows were refused by policy ({denied} packets): the comparison is void");
    }
    let _ = run(&["pkill", "-f", "iperf3 -s -D"]);
    daemon.cli(&["policy", "delete", "--all"])?;
    for n in ["ns", "nc", "ps", "pc", "bs", "bc"] {
        let _ = docker(&["rm", "-f", &name(n)]);
    }
    docker(&["network", "rm", &net])?;
    Ok(Datapaths { rows, import_ms, one_rule_ms, entries })
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
    /// Microseconds from Join until the identity was in the datapath.
    identity_us: Vec<f64>,
}

/// `docker run --rm … true` on a cilium-rs network, on Docker's default bridge (IPv4 only), and
/// on a Docker bridge network with IPv6 as well (the same dual stack cilium-rs always gives);
/// then labelled containers, for how long their identities take after Join.
fn docker_runs(daemon: &Daemon) -> Result<RunLatency> {
    let net = format!("{PREFIX}run");
    let bridge6 = format!("{PREFIX}bridge6");
    docker(&["network", "create", "-d", PLUGIN, "--ipam-driver", PLUGIN, "--ipv6", &net])?;
    docker(&["network", "create", "--ipv6", "--subnet", "fdc1:1a00:94::/64", "--subnet", "10.238.0.0/24", &bridge6])?;
    let mut runs = RunLatency {
        cilium_rs: Vec::new(),
        bridge: Vec::new(),
        bridge_dual_stack: Vec::new(),
        identity_us: Vec::new(),
    };
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
    eprintln!("bench: {IDENTITY_RUNS} labelled containers for Join → identity");
    let names: Vec<String> = (0..IDENTITY_RUNS).map(|i| format!("{PREFIX}id{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        run_container(name, &["--network", &net, "-l", &format!("role=ident{i}")])?;
    }
    wait_identities(daemon, &names)?;
    for e in daemon.endpoints()? {
        if let Some(us) = e["identity_after_join_us"].as_u64() {
            runs.identity_us.push(us as f64);
        }
    }
    for name in &names {
        let _ = docker(&["rm", "-f", name]);
    }
    docker(&["network", "rm", &net])?;
    docker(&["network", "rm", &bridge6])?;
    Ok(runs)
}

fn main() -> Result<()> {
    integration::require_root_and_dockerd();
    // No test drives dockerd meanwhile (their leak checks, and the figures, would suffer).
    let _serial = integration::serial();
    let outside = integration::outside::Outside::new(&format!("{PREFIX}out"))?;
    let daemon = Daemon::start_with(PLUGIN, &[("CILIUM_RS_EGRESS_INTERFACE", integration::outside::OUTSIDE_IF)])?;
    remove_docker_leftovers(PREFIX);
    let started = Instant::now();

    let dp = datapaths(&daemon)?;
    let world = world::outside(&outside)?;
    let monitored = monitor::monitored()?;
    let runs = docker_runs(&daemon)?;
    drop(daemon);
    let latency = plugin::plugin_latency()?;

    let med = |key: &str| median(&mut dp.rows.get(key).cloned().unwrap_or_default());
    let run_crs = median(&mut runs.cilium_rs.clone());
    let run_bridge = median(&mut runs.bridge.clone());
    let run_bridge6 = median(&mut runs.bridge_dual_stack.clone());
    let id_p50 = percentile(&mut runs.identity_us.clone(), 50.0) / 1000.0;
    let id_p99 = percentile(&mut runs.identity_us.clone(), 99.0) / 1000.0;
    let p50 = percentile(&mut latency.create_join_ms.clone(), 50.0);
    let p99 = percentile(&mut latency.create_join_ms.clone(), 99.0);
    let one_rule = median(&mut dp.one_rule_ms.clone());
    let one_rule_max = dp.one_rule_ms.iter().copied().fold(0.0, f64::max);
    let rss_mb = latency.rss_kib as f64 / 1024.0;

    println!();
    println!(
        "cilium-rs bench — medians of {ROUNDS} interleaved rounds (iperf3 {IPERF_SECONDS} s, crr {} s × {} threads), \
         {DOCKER_RUNS} docker runs, {} endpoints after {}, {} policy entries",
        netns::CRR_SECONDS,
        netns::CRR_THREADS,
        plugin::ENDPOINTS_MEASURED,
        plugin::ENDPOINTS_PRESENT,
        dp.entries
    );
    println!();
    let header = ["metric", "veth", "veth+ip6t", "bridge", "crs", "crs+policy", "ratio", "target"];
    println!(
        "{:<42} {:>9} {:>10} {:>9} {:>9} {:>11} {:>22} {:>7}",
        header[0], header[1], header[2], header[3], header[4], header[5], header[6], header[7]
    );
    let cell = |v: f64| if v.is_nan() { "".to_owned() } else { format!("{v:.2}") };
    let row = |metric: &str, values: [f64; 5], ratio: String, target: &str| {
        println!(
            "{:<42} {:>9} {:>10} {:>9} {:>9} {:>11} {:>22} {:>7}",
            metric,
            cell(values[0]),
            cell(values[1]),
            cell(values[2]),
            cell(values[3]),
            cell(values[4]),
            ratio,
            target
        );
    };
    let nan = f64::NAN;
    let (t4v, t4b, t4c, t4p) = (med("tcp_v4_veth"), med("tcp_v4_bridge"), med("tcp_v4_crs"), med("tcp_v4_crs_policy"));
    let (t6v, t6i, t6c, t6p) =
        (med("tcp_v6_veth"), med("tcp_v6_ip6tables"), med("tcp_v6_crs"), med("tcp_v6_crs_policy"));
    let (c4b, c4c, c4p) = (med("crr_v4_bridge"), med("crr_v4_crs"), med("crr_v4_crs_policy"));
    let (c6c, c6p) = (med("crr_v6_crs"), med("crr_v6_crs_policy"));
    row(
        "TCP IPv4 (Gbit/s)",
        [t4v, nan, t4b, t4c, t4p],
        format!("{:.2}× bridge, {:.2}× no pol", t4c / t4b, t4p / t4c),
        "≥ 0.95×",
    );
    row(
        "TCP IPv6 (Gbit/s)",
        [t6v, t6i, nan, t6c, t6p],
        format!("{:.2}× no pol, {:.1}× ip6t", t6p / t6c, t6p / t6i),
        "≥ 10×",
    );
    row(
        "new connections/s IPv4 (k)",
        [nan, nan, c4b / 1e3, c4c / 1e3, c4p / 1e3],
        format!("{:.2}× no pol, {:.2}× bridge", c4p / c4c, c4p / c4b),
        "≥ 0.9×",
    );
    row(
        "new connections/s IPv6 (k)",
        [nan, nan, nan, c6c / 1e3, c6p / 1e3],
        format!("{:.2}× no policy", c6p / c6c),
        "≥ 0.9×",
    );
    row(
        "docker run --rm … true, IPv4 bridge (ms)",
        [nan, nan, run_bridge, run_crs, nan],
        format!("{:.2}× bridge", run_crs / run_bridge),
        "≤ 1.2×",
    );
    row(
        "docker run --rm … true, dual stack (ms)",
        [nan, nan, run_bridge6, run_crs, nan],
        format!("{:.2}× bridge", run_crs / run_bridge6),
        "≤ 1.2×",
    );
    row("Join → identity in datapath p50 / p99 (ms)", [nan, nan, nan, id_p50, id_p99], String::new(), "");
    row(
        &format!("policy import of {} rules (ms)", policy::RULES),
        [nan, nan, nan, nan, dp.import_ms],
        String::new(),
        "≤ 2000",
    );
    row("one-rule change median / max (ms)", [nan, nan, nan, one_rule, one_rule_max], String::new(), "≤ 20");
    row(
        "CreateEndpoint+Join p50 / p99 (ms)",
        [nan, nan, nan, p50, p99],
        format!("{} rules loaded", policy::RULES),
        "≤ 20",
    );
    row(
        &format!("daemon RSS at {} endpoints (MB)", plugin::ENDPOINTS_PRESENT),
        [nan, nan, nan, nan, rss_mb],
        String::new(),
        "≤ 64",
    );
    let wmed = |key: &str| median(&mut world.get(key).cloned().unwrap_or_default());
    let (eb, ec) = (wmed("egress_tcp_bridge"), wmed("egress_tcp_crs"));
    row("TCP container → outside (Gbit/s)", [nan, nan, eb, ec, nan], format!("{:.2}× bridge", ec / eb), "≥ 1.0×");
    let (pb, pc) = (wmed("published_tcp_bridge"), wmed("published_tcp_crs"));
    row("TCP outside → published port (Gbit/s)", [nan, nan, pb, pc, nan], format!("{:.2}× bridge", pc / pb), "≥ 1.0×");
    let (rb, rc) = (wmed("published_crr_bridge"), wmed("published_crr_crs"));
    row(
        "new conn/s outside → published port (k)",
        [nan, nan, rb / 1e3, rc / 1e3, nan],
        format!("{:.2}× bridge", rc / rb),
        "≥ 1.0×",
    );
    let (lb, lc) = (wmed("localhost_crr_bridge"), wmed("localhost_crr_crs"));
    row(
        "new conn/s host → localhost:PORT (k)",
        [nan, nan, lb / 1e3, lc / 1e3, nan],
        format!("{:.2}× docker-proxy", lc / lb),
        "≥ 2×",
    );
    let mmed = |key: &str| median(&mut monitored.rows.get(key).cloned().unwrap_or_default());
    let (toff, tmon) = (mmed("tcp_v4_events_off"), mmed("tcp_v4_monitored"));
    row(
        "TCP IPv4, events off | monitor (Gbit/s)",
        [nan, nan, nan, toff, tmon],
        format!("{:.2}× events off", tmon / toff),
        "≥ 0.97×",
    );
    let (coff, cmon) = (mmed("crr_v4_events_off"), mmed("crr_v4_monitored"));
    row(
        "new conn/s IPv4, events off | monitor (k)",
        [nan, nan, nan, coff / 1e3, cmon / 1e3],
        format!("{:.2}× events off", cmon / coff),
        "≥ 0.97×",
    );
    let lps = median(&mut monitored.lines_per_second.clone());
    row(
        "monitor lines read per second (k)",
        [nan, nan, nan, nan, lps / 1e3],
        format!("{} lost/suppressed", monitored.lost),
        "",
    );
    println!();
    println!("(took {:.0} s)", started.elapsed().as_secs_f64());

    let results = json!({
        "rounds": dp.rows,
        "medians": dp.rows.keys().map(|k| (k.to_string(), med(k))).collect::<BTreeMap<_, _>>(),
        "policy": {"rules": policy::RULES, "entries": dp.entries, "import_ms": dp.import_ms, "one_rule_change_ms": dp.one_rule_ms},
        "docker_run_ms": {"docker_bridge": run_bridge, "docker_bridge_dual_stack": run_bridge6, "cilium_rs": run_crs,
                          "runs_cilium_rs": runs.cilium_rs, "runs_bridge": runs.bridge, "runs_bridge_dual_stack": runs.bridge_dual_stack},
        "join_to_identity_ms": {"p50": id_p50, "p99": id_p99, "samples_us": runs.identity_us},
        "create_endpoint_join_ms": {"p50": p50, "p99": p99, "endpoints_present": plugin::ENDPOINTS_PRESENT,
                                    "rules_loaded": policy::RULES, "samples": latency.create_join_ms},
        "daemon_rss_mb": rss_mb,
        "monitor": {"rounds": monitored.rows, "lines_per_second": monitored.lines_per_second, "lost": monitored.lost},
        "outside_world": {"rounds": world, "medians": world.keys().map(|k| (k.to_string(), wmed(k))).collect::<BTreeMap<_, _>>()},
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    println!("results: {}", dir.join("results.json").display());
    Ok(())
}
