//! `make bench`: the same workloads through cilium-rs and through the baselines, side by side in
//! one run, as medians of interleaved rounds and ratios; the tables go to stdout (markdown) and
//! everything, raw rounds included, to target/bench/results.json.

mod matrix;
mod monitor;
mod netns;
mod plugin;
mod policy;
mod report;
mod runs;
mod stats;
mod table;
mod workload;
mod world;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use integration::{docker, remove_docker_leftovers, wait_until, Daemon};

const PLUGIN: &str = "crs-bench";
const PREFIX: &str = "crs-bench-";
/// Rounds of the sections outside the matrix.
const ROUNDS: usize = 5;

/// Samples by row name.
type Rows = BTreeMap<&'static str, Vec<f64>>;

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

/// A Docker bridge network with IPv6 as well, `fdc1:1a00:<v6>::/64` and `10.<v4>.0.0/24`: the
/// dual stack cilium-rs always gives; its MTU `mtu`, or Docker's default.
fn dual_stack_bridge(name: &str, v6: u16, v4: u8, mtu: Option<u32>) -> Result<()> {
    let (subnet6, subnet4) = (format!("fdc1:1a00:{v6:x}::/64"), format!("10.{v4}.0.0/24"));
    let mut args = vec!["network", "create", "--ipv6", "--subnet", &subnet6, "--subnet", &subnet4];
    let mtu_option = mtu.map(|m| format!("com.docker.network.driver.mtu={m}"));
    if let Some(option) = &mtu_option {
        args.extend(["-o", option]);
    }
    args.push(name);
    docker(&args)?;
    Ok(())
}

/// Removes the bench's containers and networks when dropped, also after a failure (before the
/// daemon that serves those networks goes).
struct Leftovers;

impl Drop for Leftovers {
    fn drop(&mut self) {
        remove_docker_leftovers(PREFIX);
    }
}

fn main() -> Result<()> {
    integration::require_root_and_dockerd();
    let wanted = matrix::rows_wanted()?;
    // No test drives dockerd meanwhile (their leak checks, and the figures, would suffer).
    eprintln!("bench: waiting for /run/cilium-rs-tests.lock (held while tests drive dockerd)");
    let _serial = integration::serial();
    let outside = integration::outside::Outside::new(&format!("{PREFIX}out"))?;
    let daemon = Daemon::start_with(PLUGIN, &[("CILIUM_RS_EGRESS_INTERFACE", integration::outside::OUTSIDE_IF)])?;
    remove_docker_leftovers(PREFIX);
    let leftovers = Leftovers;
    let started = Instant::now();

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    if let Some(rows) = wanted {
        let matrix = matrix::run(&daemon, rows)?;
        report::print_matrix(&matrix);
        println!("\n{}", report::policy_summary(&matrix));
        println!("\n(only the rows {} names; took {:.0} s)", matrix::ROWS_VARIABLE, started.elapsed().as_secs_f64());
        let path = dir.join("results-rows.json");
        std::fs::write(&path, serde_json::to_string_pretty(&matrix.to_json())?)?;
        println!("results: {}", path.display());
        return Ok(());
    }
    let matrix = matrix::run(&daemon, matrix::ROWS.to_vec())?;
    let world = world::outside(&outside)?;
    let monitored = monitor::monitored()?;
    let runs = runs::docker_runs(&daemon)?;
    drop(leftovers);
    drop(daemon);
    let latency = plugin::plugin_latency()?;

    let results = report::Results { matrix, world, monitored, runs, latency, seconds: started.elapsed().as_secs_f64() };
    report::print(&results);
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&report::json(&results))?)?;
    println!("results: {}", dir.join("results.json").display());
    Ok(())
}
