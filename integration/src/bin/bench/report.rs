//! What the bench tells: the performance matrix with its ratios and targets and the table of
//! the other figures, as markdown on stdout, and everything (raw rounds included) as
//! target/bench/results.json.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::matrix::{self, Column, Matrix, COLUMNS};
use super::monitor::MonitorFigures;
use super::plugin::{self, PluginLatency};
use super::runs::{RunLatency, DOCKER_RUNS};
use super::stats::{median, percentile};
use super::table::{figure, markdown, ratio, Goal};
use super::workload::{CRR_SECONDS, CRR_THREADS, IPERF_SECONDS};
use super::{policy, Rows, ROUNDS};

/// Every section's figures.
pub struct Results {
    pub matrix: Matrix,
    pub world: Rows,
    pub monitored: MonitorFigures,
    pub runs: RunLatency,
    pub latency: PluginLatency,
    pub seconds: f64,
}

/// `ratio (≥ bound× ✓)`, or the bare ratio without a target.
fn ratio_with(value: f64, target: Option<f64>) -> String {
    match target {
        Some(bound) => format!("{} ({})", ratio(value), Goal::AtLeast(bound).show(value, "×")),
        None => ratio(value),
    }
}

fn matrix_table(m: &Matrix) -> String {
    let mut header: Vec<String> = vec!["workload".into()];
    header.extend(COLUMNS.iter().map(|c| c.title().to_owned()));
    header.extend(["cilium-rs/bridge (target)".into(), "cilium-rs/loopback (target)".into()]);
    let rows: Vec<Vec<String>> = m
        .rows
        .iter()
        .map(|row| {
            let [vs_bridge, vs_loopback] = m.ratios(row.key).map(|(_, r)| r);
            let mut cells = vec![row.title.to_owned()];
            cells.extend(COLUMNS.iter().map(|c| figure(m.median(row.key, *c) / row.scale)));
            cells.push(ratio_with(vs_bridge, row.targets.vs_bridge));
            cells.push(ratio_with(vs_loopback, row.targets.vs_loopback));
            cells
        })
        .collect();
    markdown(&header, &rows)
}

/// One line of the second table: what, its baseline (named) and the cilium-rs figure, their
/// ratio, and the target with whether it was met.
struct Line {
    metric: String,
    baseline: String,
    value: String,
    ratio: String,
    target: String,
}

fn line(metric: impl Into<String>, baseline: String, value: String, ratio: String, target: String) -> Line {
    Line { metric: metric.into(), baseline, value, ratio, target }
}

/// A comparison with a baseline: `crs / base`, held to `goal` (a ratio).
fn compared(metric: &str, base_name: &str, base: f64, crs: f64, goal: Option<Goal>) -> Line {
    let r = crs / base;
    line(
        metric,
        format!("{base_name} {}", figure(base)),
        figure(crs),
        ratio(r),
        goal.map(|g| g.show(r, "×")).unwrap_or_default(),
    )
}

/// Two figures of one kind (`p50 / p99`), the second held to `goal`.
fn pair(metric: &str, first: f64, second: f64, goal: Option<Goal>) -> Line {
    let target = goal.map(|g| g.show(second, "")).unwrap_or_default();
    line(metric, String::new(), format!("{} / {}", figure(first), figure(second)), String::new(), target)
}

fn single(metric: &str, value: f64, goal: Option<Goal>) -> Line {
    line(metric, String::new(), figure(value), String::new(), goal.map(|g| g.show(value, "")).unwrap_or_default())
}

fn med(rows: &Rows, key: &str) -> f64 {
    median(&mut rows.get(key).cloned().unwrap_or_default())
}

fn other_lines(r: &Results) -> Vec<Line> {
    let m = &r.matrix;
    let runs = &r.runs;
    let (run_crs, run_bridge, run_bridge6) = (
        median(&mut runs.cilium_rs.clone()),
        median(&mut runs.bridge.clone()),
        median(&mut runs.bridge_dual_stack.clone()),
    );
    let ip6t = median(&mut m.ip6tables.clone());
    let crs_v6 = m.median(matrix::IP6TABLES_ROW, Column::Crs);
    let mut lines = vec![
        compared(
            &format!("TCP stream 1 flow IPv6, {} rules (Gbit/s)", policy::RULES),
            "veth + ip6tables",
            ip6t,
            crs_v6,
            Some(Goal::AtLeast(10.0)),
        ),
        compared("docker run --rm … true, IPv4 (ms)", "default bridge", run_bridge, run_crs, Some(Goal::AtMost(1.2))),
        compared(
            "docker run --rm … true, dual stack (ms)",
            "dual-stack bridge",
            run_bridge6,
            run_crs,
            Some(Goal::AtMost(1.2)),
        ),
        pair(
            "Join → identity in datapath p50 / p99 (ms)",
            percentile(&mut runs.identity_us.clone(), 50.0) / 1000.0,
            percentile(&mut runs.identity_us.clone(), 99.0) / 1000.0,
            None,
        ),
        single(&format!("policy import of {} rules (ms)", policy::RULES), m.import_ms, Some(Goal::AtMost(2000.0))),
        pair(
            &format!("one-rule change on {} entries, median / max (ms)", m.entries),
            median(&mut m.one_rule_ms.clone()),
            m.one_rule_ms.iter().copied().fold(f64::NAN, f64::max),
            Some(Goal::AtMost(20.0)),
        ),
    ];
    let mut samples = r.latency.create_join_ms.clone();
    lines.push(pair(
        "CreateEndpoint+Join p50 / p99 (ms)",
        percentile(&mut samples, 50.0),
        percentile(&mut samples, 99.0),
        Some(Goal::AtMost(20.0)),
    ));
    lines.push(single(
        &format!("daemon RSS at {} endpoints (MB)", plugin::ENDPOINTS_PRESENT),
        r.latency.rss_kib as f64 / 1024.0,
        Some(Goal::AtMost(64.0)),
    ));
    let w = |key: &str| med(&r.world, key);
    let at_least = |bound| Some(Goal::AtLeast(bound));
    lines.extend([
        compared(
            "TCP container → outside (Gbit/s)",
            "bridge",
            w("egress_tcp_bridge"),
            w("egress_tcp_crs"),
            at_least(1.0),
        ),
        compared(
            "TCP outside → published port (Gbit/s)",
            "bridge",
            w("published_tcp_bridge"),
            w("published_tcp_crs"),
            at_least(1.0),
        ),
        compared(
            "new conn/s outside → published port (k)",
            "bridge",
            w("published_crr_bridge") / 1e3,
            w("published_crr_crs") / 1e3,
            at_least(1.0),
        ),
        compared(
            "new conn/s host → localhost:PORT (k)",
            "docker-proxy",
            w("localhost_crr_bridge") / 1e3,
            w("localhost_crr_crs") / 1e3,
            at_least(2.0),
        ),
    ]);
    let mon = &r.monitored;
    let mm = |key: &str| med(&mon.rows, key);
    lines.extend([
        compared(
            "TCP IPv4 under the monitor (Gbit/s)",
            "events off",
            mm("tcp_v4_events_off"),
            mm("tcp_v4_monitored"),
            at_least(0.97),
        ),
        compared(
            "new conn/s IPv4 under the monitor (k)",
            "events off",
            mm("crr_v4_events_off") / 1e3,
            mm("crr_v4_monitored") / 1e3,
            at_least(0.97),
        ),
        line(
            "monitor lines read per second (k)",
            String::new(),
            figure(median(&mut mon.lines_per_second.clone()) / 1e3),
            String::new(),
            format!("{} lost/suppressed", mon.lost),
        ),
    ]);
    lines
}

/// The matrix, with what it was measured under.
pub fn print_matrix(m: &Matrix) {
    println!();
    println!("## cilium-rs bench: the matrix");
    println!();
    println!(
        "- medians of {} interleaved rounds, {} s a measurement: each workload visits every column in turn, each \
         round starting at another column",
        matrix::ROUNDS,
        matrix::SECONDS
    );
    println!(
        "- client pinned to CPU {} and server to CPU {} (`taskset -c`), in every column alike; the \"one CPU\" rows \
         run both on CPU {}",
        matrix::CLIENT_CPU,
        matrix::SERVER_CPU,
        matrix::SERVER_CPU
    );
    println!("- the cilium-rs column with {} rules loaded ({} policy entries)", policy::RULES, m.entries);
    println!(
        "- every veth path (veth pair, Docker bridge, cilium-rs) at MTU {}, cilium-rs's default here (its \
         default-route interface's), after one warm-up measurement of each",
        m.mtu
    );
    println!("- no netkit column: this kernel is built without CONFIG_NETKIT");
    println!("- connect/request/close from {CRR_THREADS} client threads; UDP: the rate the server received");
    println!();
    println!("{}", matrix_table(m));
}

/// The policy figures of the matrix's setup, in one line.
pub fn policy_summary(m: &Matrix) -> String {
    format!(
        "policy import of {} rules: {:.0} ms; one-rule change on {} entries: median {:.1} ms, max {:.1} ms",
        policy::RULES,
        m.import_ms,
        m.entries,
        median(&mut m.one_rule_ms.clone()),
        m.one_rule_ms.iter().copied().fold(f64::NAN, f64::max)
    )
}

/// Both tables, with what they were measured under.
pub fn print(r: &Results) {
    print_matrix(&r.matrix);
    println!();
    println!(
        "## the rest: medians of {ROUNDS} rounds (iperf3 {IPERF_SECONDS} s, connection rate {CRR_SECONDS} s, not \
         pinned), {DOCKER_RUNS} docker runs, CreateEndpoint+Join of {} endpoints after {}",
        plugin::ENDPOINTS_MEASURED,
        plugin::ENDPOINTS_PRESENT,
    );
    println!();
    let header = ["metric", "baseline", "cilium-rs", "ratio", "target"].map(str::to_owned);
    let rows: Vec<Vec<String>> =
        other_lines(r).into_iter().map(|l| vec![l.metric, l.baseline, l.value, l.ratio, l.target]).collect();
    println!("{}", markdown(&header, &rows));
    println!();
    println!("(took {:.0} s)", r.seconds);
}

/// Everything, raw rounds included.
pub fn json(r: &Results) -> Value {
    let runs = &r.runs;
    let medians = |rows: &Rows| rows.keys().map(|k| (k.to_string(), med(rows, k))).collect::<BTreeMap<_, _>>();
    let mut samples = r.latency.create_join_ms.clone();
    let latency = json!({"p50": percentile(&mut samples, 50.0), "p99": percentile(&mut samples, 99.0),
                         "samples": r.latency.create_join_ms, "rss_mb": r.latency.rss_kib as f64 / 1024.0});
    json!({
        "matrix": r.matrix.to_json(),
        "policy": {"rules": policy::RULES, "entries": r.matrix.entries, "import_ms": r.matrix.import_ms,
                   "one_rule_change_ms": r.matrix.one_rule_ms},
        "docker_run_ms": {"docker_bridge": median(&mut runs.bridge.clone()),
                          "docker_bridge_dual_stack": median(&mut runs.bridge_dual_stack.clone()),
                          "cilium_rs": median(&mut runs.cilium_rs.clone()),
                          "runs_cilium_rs": runs.cilium_rs, "runs_bridge": runs.bridge,
                          "runs_bridge_dual_stack": runs.bridge_dual_stack},
        "join_to_identity_ms": {"p50": percentile(&mut runs.identity_us.clone(), 50.0) / 1000.0,
                                "p99": percentile(&mut runs.identity_us.clone(), 99.0) / 1000.0,
                                "samples_us": runs.identity_us},
        "create_endpoint_join_ms": {"endpoints_present": plugin::ENDPOINTS_PRESENT, "rules_loaded": policy::RULES,
                                    "latency": latency},
        "monitor": {"rounds": r.monitored.rows, "medians": medians(&r.monitored.rows),
                    "lines_per_second": r.monitored.lines_per_second, "lost": r.monitored.lost},
        "outside_world": {"rounds": r.world, "medians": medians(&r.world)},
        "seconds": r.seconds,
    })
}
