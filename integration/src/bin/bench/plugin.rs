//! CreateEndpoint+Join latency measured on the plugin socket itself (no dockerd in between),
//! with many endpoints present and a big policy loaded, and the daemon's memory.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use integration::Daemon;
use serde_json::{json, Value};

use super::policy;

pub const ENDPOINTS_PRESENT: usize = 500;
pub const ENDPOINTS_MEASURED: usize = 100;

/// Drives the plugin socket directly, as dockerd would, without dockerd.
struct Plugin<'a> {
    socket: &'a Path,
    runtime: tokio::runtime::Runtime,
}

impl Plugin<'_> {
    /// One call; an answer carrying `Err` fails it.
    fn call(&self, method: &str, body: Value) -> Result<Value> {
        let bytes = self.runtime.block_on(cilium_rs::http_unix::request(
            self.socket,
            hyper::Method::POST,
            &format!("/{method}"),
            Some(format!("{body}\n").into_bytes()),
        ))?;
        let answer: Value = serde_json::from_slice(&bytes)?;
        if let Some(err) = answer.get("Err").and_then(Value::as_str).filter(|e| !e.is_empty()) {
            bail!("{method}: {err}");
        }
        Ok(answer)
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

pub struct PluginLatency {
    pub create_join_ms: Vec<f64>,
    pub rss_kib: u64,
}

/// CreateEndpoint+Join latency with `ENDPOINTS_PRESENT` endpoints and the big policy loaded (a
/// daemon of its own).
pub fn plugin_latency() -> Result<PluginLatency> {
    // A second daemon that no dockerd knows: reconciliation is off (no Docker socket), so the
    // endpoints created here through the socket are left alone.
    let daemon = Daemon::start_with("crs-bench-plugin", &[("CILIUM_RS_DOCKER_SOCKET", "/nonexistent/docker.sock")])?;
    policy::timed_import(&daemon, &policy::big_policy("pserver", "pclient"))?;
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
        json!({"NetworkID": network, "Options": {"com.docker.network.enable_ipv6": true},
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
            plugin.call(
                "NetworkDriver.Join",
                json!({"NetworkID": network, "EndpointID": endpoint, "SandboxKey": "", "Options": {}}),
            )?;
            let elapsed = start.elapsed().as_secs_f64() * 1000.0;
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
