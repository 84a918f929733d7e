//! Where the bench's workloads run: network namespaces (a container's, or a named one), iperf3
//! and the connection-rate tool inside them, and the bare veth pairs the datapaths are compared
//! with — one of them behind ip6tables rules.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use integration::{inspect, run};
use serde_json::Value;

/// Seconds of each iperf3 run.
pub const IPERF_SECONDS: &str = "3";
/// Seconds of each connection-rate run, and its client threads.
pub const CRR_SECONDS: &str = "2";
pub const CRR_THREADS: &str = "4";
pub const CRR_PORT: u16 = 7000;

/// A network namespace to run a workload in: a container's or a named one.
#[derive(Clone)]
pub struct Ns(pub String);

impl Ns {
    pub fn container(name: &str) -> Result<Ns> {
        let pid = inspect(name)?["State"]["Pid"].as_u64().context("no pid")?;
        Ok(Ns(format!("/proc/{pid}/ns/net")))
    }

    pub fn named(name: &str) -> Ns {
        Ns(format!("/run/netns/{name}"))
    }

    /// The host's own namespace.
    pub fn host() -> Ns {
        Ns("/proc/self/ns/net".to_owned())
    }

    pub fn cmd(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.0)).arg("--").args(argv);
        cmd
    }
}

/// iperf3's port.
pub const IPERF_PORT: u16 = 5201;

/// One iperf3 TCP run from `client` to `server_ip` (server already listening); Gbit/s.
pub fn iperf(client: &Ns, server_ip: &str) -> Result<f64> {
    iperf_to(client, server_ip, IPERF_PORT)
}

/// [`iperf`] to another port (a published one).
pub fn iperf_to(client: &Ns, server_ip: &str, port: u16) -> Result<f64> {
    let port = port.to_string();
    let out = client.cmd(&["iperf3", "-c", server_ip, "-p", &port, "-t", IPERF_SECONDS, "-J"]).output()?;
    let report: Value = serde_json::from_slice(&out.stdout).context("iperf3 json")?;
    if let Some(err) = report["error"].as_str() {
        bail!("iperf3 to {server_ip}: {err}");
    }
    let bps = report["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 result")?;
    Ok(bps / 1e9)
}

pub fn start_iperf_server(ns: &Ns) -> Result<()> {
    let status = ns.cmd(&["iperf3", "-s", "-D"]).status()?;
    if !status.success() {
        bail!("iperf3 -s failed in {}", ns.0);
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// The connection-rate tool next to the bench binary.
fn crr_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let tool = me.with_file_name("crr");
    if !tool.exists() {
        bail!("{} missing: build it with `cargo build --release -p integration`", tool.display());
    }
    Ok(tool)
}

/// Starts `crr server` in `ns`; killed on drop.
pub struct CrrServer(Child);

impl CrrServer {
    pub fn start(ns: &Ns) -> Result<CrrServer> {
        let tool = crr_binary()?;
        let child = ns
            .cmd(&[&tool.to_string_lossy(), "server", &CRR_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start crr server")?;
        std::thread::sleep(Duration::from_millis(200));
        Ok(CrrServer(child))
    }
}

impl Drop for CrrServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One connection-rate run from `client` to `server_ip`; connections per second.
pub fn crr(client: &Ns, server_ip: &str) -> Result<f64> {
    crr_to(client, server_ip, CRR_PORT)
}

/// [`crr`] to another port (a published one).
pub fn crr_to(client: &Ns, server_ip: &str, port: u16) -> Result<f64> {
    let tool = crr_binary()?;
    let out = client
        .cmd(&[&tool.to_string_lossy(), "client", server_ip, &port.to_string(), CRR_SECONDS, CRR_THREADS])
        .output()?;
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("crr output: {}", String::from_utf8_lossy(&out.stderr)))?;
    report["connections_per_second"].as_f64().context("crr result")
}

/// Two named namespaces joined by a veth pair, with an IPv4 and an IPv6 address each side.
pub struct VethPair {
    pub client: String,
    pub server: String,
    pub server_v4: String,
    pub server_v6: String,
}

impl VethPair {
    /// Namespaces `<name>-a` (client) and `<name>-b` (server) with `10.250.<n>.0/24` and
    /// `fdc1:1a00:<n>::/64`.
    pub fn create(name: &str, n: u8) -> Result<VethPair> {
        let pair = VethPair {
            client: format!("{name}-a"),
            server: format!("{name}-b"),
            server_v4: format!("10.250.{n}.2"),
            server_v6: format!("fdc1:1a00:{n:x}::2"),
        };
        pair.remove();
        run(&["ip", "netns", "add", &pair.client])?;
        run(&["ip", "netns", "add", &pair.server])?;
        let (dev_a, dev_b) = (format!("crsb{n}a"), format!("crsb{n}b"));
        run(&[
            "ip",
            "link",
            "add",
            &dev_a,
            "netns",
            &pair.client,
            "type",
            "veth",
            "peer",
            &dev_b,
            "netns",
            &pair.server,
        ])?;
        for (ns, dev, host) in [(&pair.client, &dev_a, 1), (&pair.server, &dev_b, 2)] {
            let net = format!("--net=/run/netns/{ns}");
            let v4 = format!("10.250.{n}.{host}/24");
            let v6 = format!("fdc1:1a00:{n:x}::{host}/64");
            run(&["nsenter", &net, "ip", "addr", "add", &v4, "dev", dev])?;
            run(&["nsenter", &net, "ip", "addr", "add", &v6, "dev", dev, "nodad"])?;
            run(&["nsenter", &net, "ip", "link", "set", dev, "up"])?;
            run(&["nsenter", &net, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// `rules` ip6tables rules in the server's INPUT chain that a TCP packet to port 5201 must
    /// walk before the last one accepts it (what a linear firewall with that many rules costs);
    /// neighbour discovery is accepted first.
    pub fn add_ip6tables_rules(&self, rules: usize) -> Result<()> {
        let mut script = String::from("*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
        script.push_str("-A INPUT -p ipv6-icmp -j ACCEPT\n");
        for i in 0..rules.saturating_sub(1) {
            script.push_str(&format!("-A INPUT -s fdc1:1a00:ff::{:x} -p tcp --dport {} -j ACCEPT\n", i + 1, 20000 + i));
        }
        script.push_str("-A INPUT -p tcp --dport 5201 -j ACCEPT\nCOMMIT\n");
        let mut child = Ns::named(&self.server)
            .cmd(&["ip6tables-restore"])
            .stdin(Stdio::piped())
            .spawn()
            .context("run ip6tables-restore")?;
        std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, script.as_bytes())?;
        let status = child.wait()?;
        if !status.success() {
            bail!("ip6tables-restore failed in {}", self.server);
        }
        Ok(())
    }

    fn remove(&self) {
        let _ = run(&["ip", "netns", "del", &self.client]);
        let _ = run(&["ip", "netns", "del", &self.server]);
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        self.remove();
    }
}
