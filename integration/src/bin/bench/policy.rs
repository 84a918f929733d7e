//! The bench's policies: 10,000 rules that put 10,000 entries between a server and a client
//! identity (the measured flows allowed among them), imported through the CLI and timed until
//! enforced; and one-rule changes on top of them.

use std::time::Instant;

use anyhow::{Context, Result};
use integration::Daemon;
use serde_json::{json, Value};

/// Rules (and policy entries) of the big policy.
pub const RULES: usize = 10_000;

/// The ports the bench's flows use: iperf3 and the connection-rate tool.
const FLOW_PORTS: [u16; 2] = [5201, super::netns::CRR_PORT];

/// `RULES` rules: `role=<server>` may be reached from `role=<client>` on one port each (the
/// measured ports among them).
pub fn big_policy(server: &str, client: &str) -> String {
    let rule = |port: u16| {
        json!({
            "labels": [{"key": "bench", "value": "big"}],
            "endpointSelector": {"matchLabels": {"role": server}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"role": client}}],
                         "toPorts": [{"ports": [{"port": port.to_string(), "protocol": "TCP"}]}]}]
        })
    };
    let mut rules: Vec<Value> = FLOW_PORTS.iter().map(|p| rule(*p)).collect();
    rules.extend((0..RULES - FLOW_PORTS.len()).map(|i| rule(20_000 + i as u16)));
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
