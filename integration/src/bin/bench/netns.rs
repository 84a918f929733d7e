//! Where the bench's workloads run: network namespaces (a container's, a named one, a fresh
//! one with only loopback), optionally pinned to a CPU, and the bare veth pairs the datapaths
//! are compared with — one of them behind ip6tables rules.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use integration::{addresses, inspect, run};

use super::workload::IPERF_PORT;

/// A network namespace to run a workload in (a container's or a named one), and the CPU its
/// programs are pinned to, if any.
#[derive(Clone)]
pub struct Ns {
    pub path: String,
    pub cpu: Option<usize>,
}

impl Ns {
    pub fn container(name: &str) -> Result<Ns> {
        let pid = inspect(name)?["State"]["Pid"].as_u64().context("no pid")?;
        Ok(Ns { path: format!("/proc/{pid}/ns/net"), cpu: None })
    }

    pub fn named(name: &str) -> Ns {
        Ns { path: format!("/run/netns/{name}"), cpu: None }
    }

    /// The host's own namespace.
    pub fn host() -> Ns {
        Ns { path: "/proc/self/ns/net".to_owned(), cpu: None }
    }

    /// The same namespace, its programs pinned to `cpu` (`taskset -c`).
    pub fn on_cpu(&self, cpu: usize) -> Ns {
        Ns { path: self.path.clone(), cpu: Some(cpu) }
    }

    /// The MTU of `dev` in this namespace.
    pub fn mtu(&self, dev: &str) -> Result<u32> {
        let out = self.cmd(&["ip", "-o", "link", "show", "dev", dev]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        words
            .find(|w| *w == "mtu")
            .and_then(|_| words.next())
            .and_then(|m| m.parse().ok())
            .with_context(|| format!("MTU of {dev} in {}: {text:?}", self.path))
    }

    pub fn cmd(&self, argv: &[&str]) -> Command {
        let mut cmd = match self.cpu {
            Some(cpu) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(cpu.to_string()).arg("nsenter");
                cmd
            }
            None => Command::new("nsenter"),
        };
        cmd.arg(format!("--net={}", self.path)).arg("--").args(argv);
        cmd
    }
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// A client and a server namespace, and the server's addresses.
pub struct Pair {
    pub client: Ns,
    pub server: Ns,
    pub server_v4: String,
    pub server_v6: String,
}

impl Pair {
    /// Two containers on `network`.
    pub fn containers(server: &str, client: &str, network: &str) -> Result<Pair> {
        let (server_v4, server_v6) = addresses(server, network)?;
        Ok(Pair { client: Ns::container(client)?, server: Ns::container(server)?, server_v4, server_v6 })
    }

    /// Both ends in one namespace, over `lo`.
    pub fn loopback(lo: &Loopback) -> Pair {
        Pair { client: lo.ns(), server: lo.ns(), server_v4: "127.0.0.1".to_owned(), server_v6: "::1".to_owned() }
    }

    /// The ends of a veth pair.
    pub fn veth(veth: &VethPair) -> Pair {
        Pair {
            client: Ns::named(&veth.client),
            server: Ns::named(&veth.server),
            server_v4: veth.server_v4.clone(),
            server_v6: veth.server_v6.clone(),
        }
    }

    /// The same pair, the client's programs on `client_cpu` and the server's on `server_cpu`.
    pub fn pinned(self, client_cpu: usize, server_cpu: usize) -> Pair {
        Pair { client: self.client.on_cpu(client_cpu), server: self.server.on_cpu(server_cpu), ..self }
    }

    pub fn server_ip(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.server_v4,
            Family::V6 => &self.server_v6,
        }
    }
}

/// A fresh named namespace with only `lo` up: both ends of the loopback baseline; removed on
/// drop.
pub struct Loopback {
    name: String,
}

impl Loopback {
    pub fn create(name: &str) -> Result<Loopback> {
        let _ = run(&["ip", "netns", "del", name]);
        run(&["ip", "netns", "add", name])?;
        let lo = Loopback { name: name.to_owned() };
        run(&["nsenter", &format!("--net=/run/netns/{name}"), "ip", "link", "set", "lo", "up"])?;
        Ok(lo)
    }

    pub fn ns(&self) -> Ns {
        Ns::named(&self.name)
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
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
    /// `fdc1:1a00:<n>::/64`, the veths at `mtu`.
    pub fn create(name: &str, n: u8, mtu: u32) -> Result<VethPair> {
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
            run(&["nsenter", &net, "ip", "link", "set", dev, "mtu", &mtu.to_string(), "up"])?;
            run(&["nsenter", &net, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// `rules` ip6tables rules in the server's INPUT chain that a TCP packet to iperf3's port must
    /// walk before the last one accepts it (what a linear firewall with that many rules costs);
    /// neighbour discovery is accepted first.
    pub fn add_ip6tables_rules(&self, rules: usize) -> Result<()> {
        let mut script = String::from("*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
        script.push_str("-A INPUT -p ipv6-icmp -j ACCEPT\n");
        for i in 0..rules.saturating_sub(1) {
            script.push_str(&format!("-A INPUT -s fdc1:1a00:ff::{:x} -p tcp --dport {} -j ACCEPT\n", i + 1, 20000 + i));
        }
        script.push_str(&format!("-A INPUT -p tcp --dport {IPERF_PORT} -j ACCEPT\nCOMMIT\n"));
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
