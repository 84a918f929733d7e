//! The monitor in the bench: the same container pair workloads through a daemon whose programs
//! send no events and through one that sends a verdict for every new flow (no rate limit to
//! speak of) while `cilium-rs monitor --json` reads every line; and how many events a second
//! the daemon read meanwhile, with what it lost.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use integration::{binary, docker, run_container, Daemon};

use super::netns::Pair;
use super::workload::{crr, iperf, Servers, CRR_PORT, CRR_SECONDS, IPERF_PORT, IPERF_SECONDS};
use super::{Rows, PREFIX, ROUNDS};

/// Daemons of their own: events off, and events unlimited.
const QUIET: &str = "crs-bench-quiet";
const LOUD: &str = "crs-bench-loud";

/// A monitor reading every line of the loud daemon, counting them.
struct Watcher {
    child: Child,
    lines: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
}

impl Watcher {
    fn start(daemon: &Daemon) -> Result<Watcher> {
        let mut child = Command::new(binary())
            .arg("--api-socket")
            .arg(&daemon.api_socket)
            .args(["monitor", "--json", "--type", "drop", "--type", "verdict"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start cilium-rs monitor")?;
        let stdout = child.stdout.take().context("monitor stdout")?;
        let (lines, lost) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (l, x) = (lines.clone(), lost.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                l.fetch_add(1, Ordering::Relaxed);
                if line.contains("\"type\":\"lost\"") || line.contains("\"type\":\"suppressed\"") {
                    let count = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v["count"].as_u64())
                        .unwrap_or(0);
                    x.fetch_add(count, Ordering::Relaxed);
                }
            }
        });
        Ok(Watcher { child, lines, lost })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The figures of this part of the bench.
pub struct MonitorFigures {
    pub rows: Rows,
    /// Lines the monitor read per second during the connection-rate rounds, and what it was
    /// told was lost or suppressed over the whole part.
    pub lines_per_second: Vec<f64>,
    pub lost: u64,
}

pub fn monitored() -> Result<MonitorFigures> {
    let quiet = Daemon::start_with(QUIET, &[("CILIUM_RS_MONITOR_RATE", "0")])?;
    let loud =
        Daemon::start_with(LOUD, &[("CILIUM_RS_MONITOR_RATE", "10000000"), ("CILIUM_RS_MONITOR_BURST", "100000")])?;
    let name = |n: &str| format!("{PREFIX}{n}");
    let mut pairs = Vec::new();
    for (plugin, tag) in [(QUIET, "q"), (LOUD, "l")] {
        let net = name(&format!("mon{tag}"));
        docker(&["network", "create", "-d", plugin, "--ipam-driver", plugin, "--ipv6", &net])?;
        let (server, client) = (name(&format!("m{tag}s")), name(&format!("m{tag}c")));
        run_container(&server, &["--network", &net])?;
        run_container(&client, &["--network", &net])?;
        pairs.push((net.clone(), server.clone(), client.clone(), Pair::containers(&server, &client, &net)?));
    }
    let (quiet_pair, loud_pair) = (&pairs[0].3, &pairs[1].3);
    let servers = [Servers::start(&quiet_pair.server)?, Servers::start(&loud_pair.server)?];
    let watcher = Watcher::start(&loud)?;
    std::thread::sleep(std::time::Duration::from_millis(500));

    let mut rows = Rows::new();
    let mut lines_per_second = Vec::new();
    for round in 0..ROUNDS {
        eprintln!("bench: monitor round {}/{ROUNDS}", round + 1);
        let mut sample = |row: &'static str, value: Result<f64>| -> Result<()> {
            rows.entry(row).or_default().push(value?);
            Ok(())
        };
        let stream = |p: &Pair| iperf(&p.client, &p.server_v4, IPERF_PORT, 1, IPERF_SECONDS);
        let connections = |p: &Pair| crr(&p.client, &p.server_v4, CRR_PORT, CRR_SECONDS);
        sample("tcp_v4_events_off", stream(quiet_pair))?;
        sample("tcp_v4_monitored", stream(loud_pair))?;
        sample("crr_v4_events_off", connections(quiet_pair))?;
        let (before, started) = (watcher.lines.load(Ordering::Relaxed), Instant::now());
        sample("crr_v4_monitored", connections(loud_pair))?;
        let read = watcher.lines.load(Ordering::Relaxed) - before;
        lines_per_second.push(read as f64 / started.elapsed().as_secs_f64());
    }
    let lost = watcher.lost.load(Ordering::Relaxed);
    drop((watcher, servers));
    for (net, server, client, _) in &pairs {
        let _ = docker(&["rm", "-f", server, client]);
        docker(&["network", "rm", net])?;
    }
    drop((quiet, loud));
    Ok(MonitorFigures { rows, lines_per_second, lost })
}
