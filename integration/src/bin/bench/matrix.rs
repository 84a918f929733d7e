//! The performance matrix: every workload of [`ROWS`] through every path of [`COLUMNS`] —
//! loopback in one namespace (the limit), a bare veth pair, Docker's bridge, cilium-rs (the big
//! policy loaded), every veth path at cilium-rs's default MTU — in interleaved rounds, client
//! and server pinned to different CPUs (or both to one, for the rows that say so); and the
//! TCP IPv6 stream through a veth pair behind as many ip6tables rules as the policy has
//! entries. There is no netkit column: this machine's kernel is built without CONFIG_NETKIT.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use integration::{docker, run_container, Daemon};
use serde_json::{json, Value};

use super::netns::{Family, Loopback, Ns, Pair, VethPair};
use super::stats::median;
use super::workload::{Servers, Workload};
use super::{dual_stack_bridge, policy, wait_identities, PLUGIN, PREFIX};

/// Rounds of the matrix, and seconds of each measurement: about 100 s a round here, and a
/// median of five survives two disturbed rounds.
pub const ROUNDS: usize = 5;
pub const SECONDS: u32 = 2;
/// Seconds of the one measurement of every row and column before the rounds (the first round
/// used to run slow in every column: caches, TCP buffers, CPU frequency).
const WARM_UP_SECONDS: u32 = 1;
/// Where the client and the server of every column run (`taskset -c`).
pub const CLIENT_CPU: usize = 0;
pub const SERVER_CPU: usize = 1;
/// One-rule changes timed on top of the big policy.
const ONE_RULE_CHANGES: usize = 10;
/// Rules of the ip6tables baseline, as many as policy entries.
const IP6TABLES_RULES: usize = policy::RULES;

/// A path the workloads cross.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Loopback,
    Veth,
    Bridge,
    Crs,
}

pub const COLUMNS: [Column; 4] = [Column::Loopback, Column::Veth, Column::Bridge, Column::Crs];

impl Column {
    pub fn key(self) -> &'static str {
        match self {
            Column::Loopback => "loopback",
            Column::Veth => "veth",
            Column::Bridge => "bridge",
            Column::Crs => "crs",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Column::Loopback => "loopback",
            Column::Veth => "veth pair",
            Column::Bridge => "Docker bridge",
            Column::Crs => "cilium-rs",
        }
    }
}

/// What cilium-rs should reach, as ratios.
#[derive(Clone, Copy, Debug)]
pub struct Targets {
    pub vs_bridge: Option<f64>,
    pub vs_loopback: Option<f64>,
}

/// Where a row's client runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpus {
    /// Client on [`CLIENT_CPU`], server on [`SERVER_CPU`]: every request wakes the other CPU.
    Apart,
    /// Client and server both on [`SERVER_CPU`]: no cross-CPU wakeup (on this VM one costs about
    /// 60 µs, most of a request/response transaction), so the path's own cost shows.
    Shared,
}

/// A workload in one address family, and how it is shown.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub key: &'static str,
    pub title: &'static str,
    pub workload: Workload,
    pub family: Family,
    pub cpus: Cpus,
    /// Shown as value / `scale`, in the unit the title names.
    pub scale: f64,
    pub targets: Targets,
}

const STREAM: Targets = Targets { vs_bridge: Some(1.1), vs_loopback: Some(0.9) };
const RR: Targets = Targets { vs_bridge: Some(1.2), vs_loopback: None };
const CRR: Targets = Targets { vs_bridge: Some(1.0), vs_loopback: None };
const UDP: Targets = Targets { vs_bridge: Some(1.2), vs_loopback: None };

const fn row(
    key: &'static str,
    title: &'static str,
    workload: Workload,
    family: Family,
    scale: f64,
    targets: Targets,
) -> Row {
    Row { key, title, workload, family, cpus: Cpus::Apart, scale, targets }
}

/// The same row with client and server on one CPU.
const fn one_cpu(row: Row) -> Row {
    Row { cpus: Cpus::Shared, ..row }
}

pub const ROWS: [Row; 12] = [
    row("tcp1_v4", "TCP stream, 1 flow, IPv4 (Gbit/s)", Workload::Stream { flows: 1 }, Family::V4, 1.0, STREAM),
    row("tcp1_v6", "TCP stream, 1 flow, IPv6 (Gbit/s)", Workload::Stream { flows: 1 }, Family::V6, 1.0, STREAM),
    row("tcp4_v4", "TCP stream, 4 flows, IPv4 (Gbit/s)", Workload::Stream { flows: 4 }, Family::V4, 1.0, STREAM),
    row("tcp4_v6", "TCP stream, 4 flows, IPv6 (Gbit/s)", Workload::Stream { flows: 4 }, Family::V6, 1.0, STREAM),
    row("rr_v4", "TCP request/response 1 B, IPv4 (k trans/s)", Workload::RequestResponse, Family::V4, 1e3, RR),
    row("rr_v6", "TCP request/response 1 B, IPv6 (k trans/s)", Workload::RequestResponse, Family::V6, 1e3, RR),
    one_cpu(row(
        "rr1cpu_v4",
        "TCP request/response 1 B, one CPU, IPv4 (k trans/s)",
        Workload::RequestResponse,
        Family::V4,
        1e3,
        RR,
    )),
    one_cpu(row(
        "rr1cpu_v6",
        "TCP request/response 1 B, one CPU, IPv6 (k trans/s)",
        Workload::RequestResponse,
        Family::V6,
        1e3,
        RR,
    )),
    row("crr_v4", "TCP connect/request/close, IPv4 (k conn/s)", Workload::ConnectRequestClose, Family::V4, 1e3, CRR),
    row("crr_v6", "TCP connect/request/close, IPv6 (k conn/s)", Workload::ConnectRequestClose, Family::V6, 1e3, CRR),
    row("udp_v4", "UDP 64 B received, IPv4 (k packets/s)", Workload::UdpPackets, Family::V4, 1e3, UDP),
    row("udp_v6", "UDP 64 B received, IPv6 (k packets/s)", Workload::UdpPackets, Family::V6, 1e3, UDP),
];

/// The row the ip6tables baseline repeats.
pub const IP6TABLES_ROW: &str = "tcp1_v6";

/// The environment variable that narrows the matrix to some rows (keys, comma-separated), and
/// the bench to the matrix alone: for looking at one figure without the full run.
pub const ROWS_VARIABLE: &str = "CRS_BENCH_ROWS";

/// The rows [`ROWS_VARIABLE`] names, `None` when it is unset (every row).
pub fn rows_wanted() -> Result<Option<Vec<Row>>> {
    let Ok(keys) = std::env::var(ROWS_VARIABLE) else { return Ok(None) };
    let mut rows = Vec::new();
    for key in keys.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let Some(row) = ROWS.iter().find(|r| r.key == key) else {
            let known: Vec<&str> = ROWS.iter().map(|r| r.key).collect();
            bail!("{ROWS_VARIABLE}: no row {key:?} (rows: {})", known.join(", "));
        };
        rows.push(*row);
    }
    if rows.is_empty() {
        bail!("{ROWS_VARIABLE} is set but names no row");
    }
    Ok(Some(rows))
}

/// Samples by row, then column key.
pub type Samples = BTreeMap<&'static str, BTreeMap<&'static str, Vec<f64>>>;

pub struct Matrix {
    /// The rows measured: [`ROWS`], or those [`ROWS_VARIABLE`] names.
    pub rows: Vec<Row>,
    /// The MTU of every veth path (cilium-rs's default here).
    pub mtu: u32,
    pub samples: Samples,
    /// TCP IPv6, 1 flow, through the veth pair behind the ip6tables rules (Gbit/s).
    pub ip6tables: Vec<f64>,
    pub import_ms: f64,
    pub one_rule_ms: Vec<f64>,
    pub entries: u64,
}

impl Matrix {
    pub fn median(&self, row: &str, column: Column) -> f64 {
        median(&mut self.samples.get(row).and_then(|c| c.get(column.key())).cloned().unwrap_or_default())
    }

    /// The ratios beside the figures: cilium-rs against the bridge and against loopback.
    pub fn ratios(&self, row: &str) -> [(&'static str, f64); 2] {
        let at = |column: Column| self.median(row, column);
        let crs = at(Column::Crs);
        [("crs_vs_bridge", crs / at(Column::Bridge)), ("crs_vs_loopback", crs / at(Column::Loopback))]
    }

    pub fn to_json(&self) -> Value {
        let medians: BTreeMap<&str, BTreeMap<&str, f64>> = self
            .rows
            .iter()
            .map(|r| (r.key, COLUMNS.iter().map(|c| (c.key(), self.median(r.key, *c))).collect()))
            .collect();
        let ratios: BTreeMap<&str, BTreeMap<&str, f64>> =
            self.rows.iter().map(|r| (r.key, self.ratios(r.key).into_iter().collect())).collect();
        json!({
            "rounds": self.samples,
            "medians": medians,
            "ratios": ratios,
            "ip6tables_tcp1_v6": {"rules": IP6TABLES_RULES, "rounds": self.ip6tables, "median": median(&mut self.ip6tables.clone())},
            "rounds_count": ROUNDS,
            "seconds_per_measurement": SECONDS,
            "pinned": {"client_cpu": CLIENT_CPU, "server_cpu": SERVER_CPU},
            "mtu": self.mtu,
        })
    }
}

/// The paths of the matrix, with what keeps them alive (namespaces, servers).
struct Paths {
    pairs: Vec<(Column, Pair)>,
    /// The MTU of every veth path.
    mtu: u32,
    walled: Pair,
    _servers: Vec<Servers>,
    _namespaces: (Loopback, VethPair, VethPair),
}

fn name(n: &str) -> String {
    format!("{PREFIX}{n}")
}

/// The Docker networks of the matrix: a cilium-rs network, a dual-stack bridge.
fn networks() -> [(Column, String); 2] {
    [(Column::Crs, name("crs")), (Column::Bridge, name("bridge"))]
}

/// The client and server container names of a column on a Docker network.
fn containers(column: Column) -> (String, String) {
    let tag = if column == Column::Crs { "c" } else { "b" };
    (name(&format!("{tag}s")), name(&format!("{tag}c")))
}

/// Starts a column's server and client containers on its network (labelled for the policy in
/// cilium-rs's).
fn start_containers(column: Column, network: &str, labelled: &mut Vec<String>) -> Result<()> {
    let (server, client) = containers(column);
    for (container, role) in [(&server, "role=pserver"), (&client, "role=pclient")] {
        let mut args = vec!["--network", network];
        if column == Column::Crs {
            args.extend(["-l", role]);
            labelled.push(container.clone());
        }
        run_container(container, &args)?;
    }
    Ok(())
}

fn create(daemon: &Daemon) -> Result<Paths> {
    let mut labelled = Vec::new();
    docker(&["network", "create", "-d", PLUGIN, "--ipam-driver", PLUGIN, "--ipv6", &name("crs")])?;
    start_containers(Column::Crs, &name("crs"), &mut labelled)?;
    // Every veth path at cilium-rs's default MTU: the kernel's TCP throughput with several
    // flows depends on the segment size (docs/performance.md), which would otherwise decide the
    // comparison.
    let mtu = Ns::container(&containers(Column::Crs).0)?.mtu("eth0")?;
    dual_stack_bridge(&name("bridge"), 0x96, 236, Some(mtu))?;
    start_containers(Column::Bridge, &name("bridge"), &mut labelled)?;
    wait_identities(daemon, &labelled)?;

    let lo = Loopback::create(&name("lo"))?;
    let veth = VethPair::create("crs-bench-veth", 9, mtu)?;
    let walled = VethPair::create("crs-bench-ip6t", 10, mtu)?;
    walled.add_ip6tables_rules(IP6TABLES_RULES)?;
    let mut pairs = vec![(Column::Loopback, Pair::loopback(&lo)), (Column::Veth, Pair::veth(&veth))];
    for (column, network) in networks() {
        let (server, client) = containers(column);
        pairs.push((column, Pair::containers(&server, &client, &network)?));
    }
    let pairs: Vec<(Column, Pair)> = pairs.into_iter().map(|(c, p)| (c, p.pinned(CLIENT_CPU, SERVER_CPU))).collect();
    let walled_pair = Pair::veth(&walled).pinned(CLIENT_CPU, SERVER_CPU);
    let mut servers = Vec::new();
    for (_, pair) in &pairs {
        servers.push(Servers::start(&pair.server)?);
    }
    servers.push(Servers::start(&walled_pair.server)?);
    Ok(Paths { pairs, mtu, walled: walled_pair, _servers: servers, _namespaces: (lo, veth, walled) })
}

fn remove() {
    for (column, network) in networks() {
        let (server, client) = containers(column);
        let _ = docker(&["rm", "-f", &server, &client]);
        let _ = docker(&["network", "rm", &network]);
    }
}

/// Sets the matrix up, imports the big policy (timed, with one-rule changes), runs the rounds
/// of `rows` and takes it all down again.
pub fn run(daemon: &Daemon, rows: Vec<Row>) -> Result<Matrix> {
    let paths = create(daemon);
    let result = paths.and_then(|paths| measure(daemon, &paths, rows));
    remove();
    let _ = daemon.cli(&["policy", "delete", "--all"]);
    result
}

/// Where `row` runs the client of `pair`.
fn row_client(row: &Row, pair: &Pair) -> Ns {
    match row.cpus {
        Cpus::Apart => pair.client.clone(),
        Cpus::Shared => pair.client.on_cpu(SERVER_CPU),
    }
}

fn measure(daemon: &Daemon, paths: &Paths, rows: Vec<Row>) -> Result<Matrix> {
    eprintln!("bench: importing {} rules", policy::RULES);
    let import_ms = policy::timed_import(daemon, &policy::big_policy("pserver", "pclient"))?;
    let entries = policy::entries(daemon)?;
    eprintln!("bench: {entries} policy entries after {import_ms:.0} ms; one-rule changes");
    let one_rule_ms = policy::one_rule_changes(daemon, "pserver", "pclient", ONE_RULE_CHANGES)?;

    eprintln!("bench: matrix warm-up ({WARM_UP_SECONDS} s a measurement, not counted)");
    for row in &rows {
        for (_, pair) in &paths.pairs {
            row.workload.run(&row_client(row, pair), pair.server_ip(row.family), WARM_UP_SECONDS)?;
        }
    }
    let mut samples = Samples::new();
    let mut ip6tables = Vec::new();
    for round in 0..ROUNDS {
        eprintln!("bench: matrix round {}/{ROUNDS}", round + 1);
        for row in &rows {
            // Each round starts the columns at another one, so that no column always follows
            // the same neighbour.
            for i in 0..paths.pairs.len() {
                let (column, pair) = &paths.pairs[(i + round) % paths.pairs.len()];
                let value = row.workload.run(&row_client(row, pair), pair.server_ip(row.family), SECONDS)?;
                samples.entry(row.key).or_default().entry(column.key()).or_default().push(value);
            }
            if row.key == IP6TABLES_ROW {
                let walled = &paths.walled;
                ip6tables.push(row.workload.run(&walled.client, walled.server_ip(row.family), SECONDS)?);
            }
        }
    }
    let denied = policy::denied_packets(daemon)?;
    if denied > 0 {
        bail!("the bench's own flows were refused by policy ({denied} packets): the comparison is void");
    }
    Ok(Matrix { rows, mtu: paths.mtu, samples, ip6tables, import_ms, one_rule_ms, entries })
}
