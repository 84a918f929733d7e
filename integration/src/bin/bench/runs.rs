//! `docker run` latency through cilium-rs and Docker's bridges, and how long labelled
//! containers wait after Join for their identity to reach the datapath.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};
use integration::{docker, run_container, Daemon, DOCKER, IMAGE, TEST_LABEL};

use super::{dual_stack_bridge, wait_identities, PLUGIN, PREFIX};

pub const DOCKER_RUNS: usize = 15;
const IDENTITY_RUNS: usize = 20;

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

pub struct RunLatency {
    pub cilium_rs: Vec<f64>,
    pub bridge: Vec<f64>,
    pub bridge_dual_stack: Vec<f64>,
    /// Microseconds from Join until the identity was in the datapath.
    pub identity_us: Vec<f64>,
}

/// `docker run --rm … true` on a cilium-rs network, on Docker's default bridge (IPv4 only), and
/// on a Docker bridge network with IPv6 as well (the same dual stack cilium-rs always gives);
/// then labelled containers, for how long their identities take after Join.
pub fn docker_runs(daemon: &Daemon) -> Result<RunLatency> {
    let net = format!("{PREFIX}run");
    let bridge6 = format!("{PREFIX}bridge6");
    docker(&["network", "create", "-d", PLUGIN, "--ipam-driver", PLUGIN, "--ipv6", &net])?;
    dual_stack_bridge(&bridge6, 0x94, 238, None)?;
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
