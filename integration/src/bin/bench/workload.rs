//! The bench's workloads inside its namespaces: iperf3 (TCP stream, one or several flows) and
//! the `crr` tool's modes (connect/request/close, request/response, UDP packet rate) — servers
//! that run until dropped, and client runs that each return one figure.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::netns::Ns;

/// iperf3's port.
pub const IPERF_PORT: u16 = 5201;
/// The connect/request/close server's port.
pub const CRR_PORT: u16 = 7000;
/// The request/response server's port.
pub const RR_PORT: u16 = 7001;
/// The UDP server's port: datagrams, and (TCP) the control channel of each run.
pub const UDP_PORT: u16 = 7002;
/// Seconds of an iperf3 run and of a connect/request/close run outside the matrix.
pub const IPERF_SECONDS: u32 = 3;
pub const CRR_SECONDS: u32 = 2;
/// Client threads of a connect/request/close run.
pub const CRR_THREADS: usize = 4;

/// What a client run measures.
#[derive(Clone, Copy, Debug)]
pub enum Workload {
    /// iperf3 TCP with `flows` parallel streams (`-P`): Gbit/s received.
    Stream { flows: u32 },
    /// One TCP connection, one byte each way per transaction: transactions/s.
    RequestResponse,
    /// Connect, one byte each way, close, from [`CRR_THREADS`] threads: connections/s.
    ConnectRequestClose,
    /// 64-byte UDP datagrams as fast as the client can send: packets/s the server received.
    UdpPackets,
}

impl Workload {
    /// One run of `seconds` from `client` to `server_ip`, whose servers are listening.
    pub fn run(self, client: &Ns, server_ip: &str, seconds: u32) -> Result<f64> {
        let secs = seconds.to_string();
        match self {
            Workload::Stream { flows } => iperf(client, server_ip, IPERF_PORT, flows, seconds),
            Workload::ConnectRequestClose => crr(client, server_ip, CRR_PORT, seconds),
            Workload::RequestResponse => {
                tool(client, &["rr-client", server_ip, &RR_PORT.to_string(), &secs], "transactions_per_second")
            }
            Workload::UdpPackets => {
                tool(client, &["udp-client", server_ip, &UDP_PORT.to_string(), &secs], "packets_per_second")
            }
        }
    }
}

/// An iperf3 TCP run from `client` to `server_ip`:`port` with `flows` streams; Gbit/s.
pub fn iperf(client: &Ns, server_ip: &str, port: u16, flows: u32, seconds: u32) -> Result<f64> {
    let (port, flows, seconds) = (port.to_string(), flows.to_string(), seconds.to_string());
    let out = client.cmd(&["iperf3", "-c", server_ip, "-p", &port, "-P", &flows, "-t", &seconds, "-J"]).output()?;
    let report: Value = serde_json::from_slice(&out.stdout).context("iperf3 json")?;
    if let Some(err) = report["error"].as_str() {
        bail!("iperf3 to {server_ip}: {err}");
    }
    let bps = report["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 result")?;
    Ok(bps / 1e9)
}

/// A connect/request/close run from `client` to `server_ip`:`port`; connections per second.
pub fn crr(client: &Ns, server_ip: &str, port: u16, seconds: u32) -> Result<f64> {
    let args = ["client", server_ip, &port.to_string(), &seconds.to_string(), &CRR_THREADS.to_string()];
    tool(client, &args, "connections_per_second")
}

/// The `crr` tool next to the bench binary.
fn crr_binary() -> Result<PathBuf> {
    let tool = std::env::current_exe()?.with_file_name("crr");
    if !tool.exists() {
        bail!("{} missing: build it with `cargo build --release -p integration`", tool.display());
    }
    Ok(tool)
}

/// Runs `crr args…` in `ns` and returns the figure `key` of its JSON line.
fn tool(ns: &Ns, args: &[&str], key: &str) -> Result<f64> {
    let tool = crr_binary()?;
    let mut argv = vec![tool.to_str().context("crr path")?];
    argv.extend_from_slice(args);
    let out = ns.cmd(&argv).output()?;
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("crr {args:?}: {}", String::from_utf8_lossy(&out.stderr)))?;
    report[key].as_f64().with_context(|| format!("{key} in crr's report {report}"))
}

/// The servers of every workload in one namespace: killed on drop.
pub struct Servers(Vec<Child>);

impl Servers {
    /// Starts iperf3 and the `crr` tool's three servers in `ns` (on its CPU, if pinned).
    pub fn start(ns: &Ns) -> Result<Servers> {
        let tool = crr_binary()?;
        let tool = tool.to_str().context("crr path")?;
        let [iperf, crr, rr, udp] = [IPERF_PORT, CRR_PORT, RR_PORT, UDP_PORT].map(|p| p.to_string());
        let commands: [&[&str]; 4] = [
            &["iperf3", "-s", "-p", &iperf],
            &[tool, "server", &crr],
            &[tool, "rr-server", &rr],
            &[tool, "udp-server", &udp],
        ];
        let mut servers = Servers(Vec::new());
        for argv in commands {
            let child = ns
                .cmd(argv)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("start {argv:?} in {}", ns.path))?;
            servers.0.push(child);
        }
        std::thread::sleep(Duration::from_millis(300));
        for child in &mut servers.0 {
            if let Some(status) = child.try_wait()? {
                bail!("a server in {} exited at once ({status}): is its port taken?", ns.path);
            }
        }
        Ok(servers)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
