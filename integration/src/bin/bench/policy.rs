//! The bench's policies: 10,000 rules that put 10,000 entries between a server and a client
//! identity (the measured flows allowed among them), imported through the CLI and timed until
//! enforced; one-rule changes on top of them; and the check that none of the bench's own
//! packets met a policy drop.

use std::time::Instant;

use anyhow::{Context, Result};
use integration::Daemon;
use serde_json::{json, Value};

use super::workload::{CRR_PORT, IPERF_PORT, RR_PORT, UDP_PORT};

/// Rules (and policy entries) of the big policy.
pub const RULES: usize = 10_000;

/// The ports and protocols the bench's flows use: iperf3, and the `crr` tool's servers (the
/// UDP one with its TCP control channel).
const FLOW_PORTS: [(u16, &str); 5] =
    [(IPERF_PORT, "TCP"), (CRR_PORT, "TCP"), (RR_PORT, "TCP"), (UDP_PORT, "TCP"), (UDP_PORT, "UDP")];

/// `RULES` rules: `role=<server>` may be reached from `role=<client>` on one port each (the
/// measured ports among them).
pub fn big_policy(server: &str, client: &str) -> String {
    let rule = |port: u16, protocol: &str| {
        json!({
            "labels": [{"key": "bench", "value": "big"}],
            "endpointSelector": {"matchLabels": {"role": server}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"role": client}}],
                         "toPorts": [{"ports": [{"port": port.to_string(), "protocol": protocol}]}]}]
        })
    };
    let mut rules: Vec<Value> = FLOW_PORTS.iter().map(|(port, protocol)| rule(*port, protocol)).collect();
    rules.extend((0..RULES - FLOW_PORTS.len()).map(|i| rule(20_000 + i as u16, "TCP")));
    Value::Array(rules).to_string()
}

/// One rule, labelled so that importing it again replaces it.
fn one_rule(server: &str, client: &str, port: u16) -> String {
    json!([{
        "labels": [{"key": "name", "value": "bench-one"}],
        "endpointSelector": {"matchLabels": {"role": server}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"role": client}}],
                     "toPorts": [{"ports": [{"port": port.to_string(), "protocol": "TCP"}]}]}]
    }])
    .to_string()
}

/// Imports `policy` through the CLI; milliseconds until it returned (it returns once the
/// datapath enforces the new revision).
pub fn timed_import(daemon: &Daemon, policy: &str) -> Result<f64> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), policy)?;
    let started = Instant::now();
    daemon.cli(&["policy", "import", &file.path().to_string_lossy()]).context("policy import")?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Milliseconds of `rounds` one-rule changes (each replaces the previous one).
pub fn one_rule_changes(daemon: &Daemon, server: &str, client: &str, rounds: usize) -> Result<Vec<f64>> {
    (0..rounds).map(|i| timed_import(daemon, &one_rule(server, client, 30_000 + i as u16))).collect()
}

/// Entries of the policy map, from the daemon's status.
pub fn entries(daemon: &Daemon) -> Result<u64> {
    let (_, status) = daemon.status()?;
    status["policy_entries"].as_u64().context("policy_entries in the status")
}

/// Packets of the daemon's endpoints dropped by policy (any `POLICY…` reason): the bench's flows
/// are all allowed, so anything here voids the comparison.
pub fn denied_packets(daemon: &Daemon) -> Result<u64> {
    Ok(daemon
        .endpoints()?
        .iter()
        .flat_map(|e| e["counters"]["drops"].as_object().cloned().unwrap_or_default())
        .filter(|(k, _)| k.starts_with("POLICY"))
        .map(|(_, v)| v["packets"].as_u64().unwrap_or(0))
        .sum())
}
