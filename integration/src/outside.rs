//! An outside world for the tests: a network namespace joined to the host by a veth pair the
//! test creates, with documentation addresses. It has no route to any container subnet, so a
//! reply reaches a container only if the datapath translated the flow. The host side of the
//! pair is the daemon's egress interface in these tests (never the machine's real uplink).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{http_servers, run};

/// The host side of the pair: the egress interface the tests give the daemon.
pub const OUTSIDE_IF: &str = "crsout0";
/// The host's addresses on it: what masquerading must turn container sources into.
pub const HOST4: &str = "198.51.100.1";
pub const HOST6: &str = "2001:db8:100::1";
/// The outside host's addresses.
pub const OUTSIDE4: &str = "198.51.100.2";
pub const OUTSIDE6: &str = "2001:db8:100::2";
/// A second address of the outside host (policy tests allow one and not the other).
pub const OTHER4: &str = "198.51.100.3";
pub const OTHER6: &str = "2001:db8:100::3";

pub struct Outside {
    ns: String,
    servers: Vec<Child>,
}

impl Outside {
    /// Creates the namespace `ns` and the pair (after removing what an earlier run left).
    pub fn new(ns: &str) -> Result<Outside> {
        let _ = run(&["ip", "netns", "del", ns]);
        let _ = run(&["ip", "link", "del", OUTSIDE_IF]);
        run(&["ip", "netns", "add", ns])?;
        let outside = Outside { ns: ns.to_owned(), servers: Vec::new() };
        let sh = |cmd: &str| run(&["sh", "-c", cmd]);
        sh(&format!("ip link add {OUTSIDE_IF} type veth peer name eth0 netns {ns}"))?;
        // No duplicate address detection on either side, link-local addresses included: while
        // the host's link-local address is tentative the kernel sends no neighbour
        // solicitation for a forwarded packet (its source is not the host's), so a container's
        // first IPv6 packets would find no next hop.
        sh(&format!("sysctl -qw net.ipv6.conf.{OUTSIDE_IF}.accept_dad=0"))?;
        outside.sh("sysctl -qw net.ipv6.conf.eth0.accept_dad=0")?;
        sh(&format!(
            "ip addr add {HOST4}/24 dev {OUTSIDE_IF} && ip addr add {HOST6}/64 dev {OUTSIDE_IF} nodad && \
             ip link set {OUTSIDE_IF} up"
        ))?;
        outside.sh(&format!(
            "ip link set lo up && ip link set eth0 up && \
             ip addr add {OUTSIDE4}/24 dev eth0 && ip addr add {OTHER4}/24 dev eth0 && \
             ip addr add {OUTSIDE6}/64 dev eth0 nodad && ip addr add {OTHER6}/64 dev eth0 nodad"
        ))?;
        Ok(outside)
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Runs a shell command inside the namespace.
    pub fn sh(&self, cmd: &str) -> Result<String> {
        run(&["ip", "netns", "exec", &self.ns, "sh", "-c", cmd])
    }

    /// Serves HTTP on `ports` (both families, every address) until dropped.
    pub fn serve_http(&mut self, ports: &[u16]) -> Result<()> {
        let script = http_servers("outside", ports);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "busybox", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start the outside host's HTTP servers")?;
        self.servers.push(child);
        Ok(())
    }

    /// Runs `program` (with `args`) inside the namespace until dropped.
    pub fn spawn(&mut self, program: &std::path::Path, args: &[&str]) -> Result<()> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {} in {}", program.display(), self.ns))?;
        self.servers.push(child);
        Ok(())
    }

    /// Starts capturing, on the outside host's interface, the packets matching `filter`
    /// (tcpdump syntax) that arrive there.
    pub fn capture(&self, filter: &str) -> Result<Capture> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "tcpdump", "-l", "-n", "-Q", "in", "-i", "eth0", filter])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start tcpdump (package tcpdump)")?;
        let mut capture = Capture { child: Some(child) };
        // tcpdump says "listening on eth0" once it captures.
        let ready = capture.wait_listening();
        if let Err(e) = ready {
            bail!("tcpdump did not start: {e}");
        }
        Ok(capture)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        if let Ok(pids) = run(&["ip", "netns", "pids", &self.ns]) {
            for pid in pids.split_whitespace() {
                let _ = run(&["kill", "-9", pid]);
            }
        }
        let _ = run(&["ip", "link", "del", OUTSIDE_IF]);
        let _ = run(&["ip", "netns", "del", &self.ns]);
    }
}

/// Names of the tc programs attached to `ifname` (clsact filters and tcx links alike).
pub fn tc_programs(ifname: &str) -> Result<Vec<String>> {
    let text = run(&["bpftool", "-j", "net", "show", "dev", ifname])?;
    let json: serde_json::Value = serde_json::from_str(&text).context("bpftool json")?;
    Ok(json
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|entry| entry["tc"].as_array().cloned().unwrap_or_default())
        .filter_map(|prog| prog["name"].as_str().map(str::to_owned))
        .collect())
}

/// A running tcpdump; [`Capture::lines`] stops it and returns one line per packet.
pub struct Capture {
    child: Option<Child>,
}

impl Capture {
    fn wait_listening(&mut self) -> Result<()> {
        use std::io::{BufRead, BufReader};
        let stderr = self.child.as_mut().and_then(|c| c.stderr.take()).context("tcpdump stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10)).context("no 'listening on' from tcpdump within 10 s")
    }

    /// Stops the capture and returns the packets it saw (tcpdump's one-line summaries).
    pub fn lines(mut self) -> Result<Vec<String>> {
        let child = self.child.take().context("capture already read")?;
        // Let the last packets be printed, then stop tcpdump politely so it flushes.
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().context("wait for tcpdump")?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
