//! The harness of the end-to-end tests: a daemon registered under its own plugin name, the
//! test's networks created with it, and a clean-up that checks nothing of them is left in the
//! daemon, the kernel or the pins.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use bpf_programs::abi::CRS_LAYOUT_VERSION;
use serde_json::{json, Value};

use crate::{
    docker, docker_fails, host_lxc_links, our_routes, remove_docker_leftovers, require_root_and_dockerd, run, serial,
    Daemon, Serial,
};

pub struct Env {
    pub daemon: Daemon,
    /// The plugin (driver and IPAM) name the daemon serves.
    pub plugin: &'static str,
    /// Veths and routes that existed before the test (another daemon's): not ours to judge.
    baseline_links: BTreeSet<String>,
    baseline_routes: BTreeSet<String>,
    /// Names of this test's containers and networks start with it.
    prefix: String,
    _serial: Serial,
}

impl Env {
    /// Starts a daemon as plugin `plugin` (with extra environment) after removing what an
    /// earlier run left under `prefix`.
    pub fn setup(plugin: &'static str, prefix: &str, env: &[(&str, &str)]) -> Env {
        Env::setup_daemon(plugin, prefix, || Daemon::start_with(plugin, env))
    }

    /// Like [`Env::setup`], with the daemon under a socket holder ([`Daemon::start_held`]).
    pub fn setup_held(plugin: &'static str, prefix: &str, env: &[(&str, &str)]) -> Env {
        Env::setup_daemon(plugin, prefix, || Daemon::start_held(plugin, env))
    }

    fn setup_daemon(plugin: &'static str, prefix: &str, start: impl FnOnce() -> Result<Daemon>) -> Env {
        require_root_and_dockerd();
        let serial = serial();
        let daemon = start().expect("start daemon");
        remove_docker_leftovers(prefix);
        Env {
            daemon,
            plugin,
            baseline_links: host_lxc_links().expect("links").into_iter().collect(),
            baseline_routes: our_routes().expect("routes").into_iter().collect(),
            prefix: prefix.to_owned(),
            _serial: serial,
        }
    }

    /// `docker network create -d <plugin> --ipam-driver <plugin> <args> <name>`.
    pub fn network(&self, name: &str, args: &[&str]) -> Result<String> {
        let mut argv = vec!["network", "create", "-d", self.plugin, "--ipam-driver", self.plugin];
        argv.extend_from_slice(args);
        argv.push(name);
        Ok(docker(&argv)?.trim().to_owned())
    }

    /// The error of a `docker network create` with our driver that must fail.
    pub fn network_fails(&self, name: &str, args: &[&str]) -> String {
        let mut argv = vec!["network", "create", "-d", self.plugin, "--ipam-driver", self.plugin];
        argv.extend_from_slice(args);
        argv.push(name);
        docker_fails(&argv).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Writes a policy file for the CLI and imports it; returns the revision it printed.
    pub fn import_policy(&self, policy: &str) -> Result<u64> {
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), policy)?;
        let out = self.daemon.cli(&["policy", "import", &file.path().to_string_lossy(), "-o", "json"])?;
        let reply: Value = serde_json::from_str(&out).with_context(|| format!("import reply: {out}"))?;
        reply["revision"].as_u64().context("revision in the reply")
    }

    /// What a lost dockerd call leaves behind: a network and a joined endpoint dockerd never
    /// heard of, made through the plugin socket. Returns the network and endpoint ids, and the
    /// pool and address replies (to release them again).
    pub fn make_orphan(&self, network: &str, endpoint: &str) -> Result<(Value, Value)> {
        let d = &self.daemon;
        let pool = d.plugin_call(
            "IpamDriver.RequestPool",
            &json!({"AddressSpace": "CiliumRsLocal", "Pool": "", "V6": false}),
        )?;
        d.plugin_call(
            "NetworkDriver.CreateNetwork",
            &json!({"NetworkID": network, "Options": {}, "IPv4Data": [{"AddressSpace": "CiliumRsLocal", "Pool": pool["Pool"]}]}),
        )?;
        let addr = d.plugin_call("IpamDriver.RequestAddress", &json!({"PoolID": pool["PoolID"], "Address": ""}))?;
        d.plugin_call(
            "NetworkDriver.CreateEndpoint",
            &json!({"NetworkID": network, "EndpointID": endpoint, "Interface": {"Address": addr["Address"]}}),
        )?;
        d.plugin_call("NetworkDriver.Join", &json!({"NetworkID": network, "EndpointID": endpoint, "SandboxKey": ""}))?;
        Ok((pool, addr))
    }

    /// Waits until every named container's endpoint carries an allocated identity; returns
    /// the identities by container name.
    pub fn wait_identities(&self, containers: &[&str]) -> Result<BTreeMap<String, u64>> {
        let mut found = BTreeMap::new();
        crate::wait_until(std::time::Duration::from_secs(20), "identities of the containers", || {
            let Ok(endpoints) = self.daemon.endpoints() else { return false };
            found = endpoints
                .iter()
                .filter_map(|e| Some((e["container_name"].as_str()?.to_owned(), e["identity"].as_u64()?)))
                .filter(|(_, id)| *id >= 256)
                .collect();
            containers.iter().all(|c| found.contains_key(*c))
        })
        .with_context(|| format!("{found:?}\n{}", self.daemon.log_text()))?;
        Ok(found)
    }

    /// The packets of `reason` an endpoint (by container name) dropped in `dir` so far.
    pub fn drops(&self, container: &str, reason: &str, dir: &str) -> u64 {
        let endpoints = self.daemon.endpoints().expect("endpoints");
        let ep = endpoints.iter().find(|e| e["container_name"] == container).expect("endpoint listed");
        ep["counters"]["drops"][format!("{reason}/{dir}")]["packets"].as_u64().unwrap_or(0)
    }

    /// Removes containers and networks, then checks the daemon, the kernel and the pins hold
    /// nothing of them any more.
    pub fn finish(self, containers: &[&str], networks: &[&str]) {
        for c in containers {
            let _ = docker(&["rm", "-f", c]);
        }
        for n in networks {
            docker(&["network", "rm", n]).expect("network rm");
        }
        let daemon = &self.daemon;
        // Translations go in the background soon after their endpoints.
        let _ = crate::wait_until(std::time::Duration::from_secs(10), "the NAT sweep", || {
            ["crs_nat_out", "crs_nat_in"].iter().all(|m| map_entries(daemon, m).is_ok_and(|e| e.is_empty()))
        });
        let check = || -> Result<()> {
            let endpoints = daemon.endpoints()?;
            anyhow::ensure!(endpoints.is_empty(), "endpoints left: {endpoints:?}");
            let networks = daemon.networks()?;
            anyhow::ensure!(networks.is_empty(), "networks left: {networks:?}");
            let (_, status) = daemon.status()?;
            anyhow::ensure!(status["pools"] == 0, "pools left: {status}");
            // Endpoint links, and the egress interface's once no network needs it.
            let pins = pinned_links(daemon);
            anyhow::ensure!(pins.is_empty(), "pinned links left: {pins:?}");
            for map in ["crs_endpoints", "crs_local_ips", "crs_egress", "crs_nat_out", "crs_nat_in", "crs_ports"] {
                let n = map_entries(daemon, map)?.len();
                anyhow::ensure!(n == 0, "{map} still has {n} entries");
            }
            // Only the counters of unknown interfaces (endpoint 0) stay.
            let metrics = map_entries(daemon, "crs_metrics")?;
            anyhow::ensure!(metrics.len() == 1, "crs_metrics holds {} entries: {metrics:?}", metrics.len());
            // No address keeps an endpoint's identity (init, or allocated ones).
            let endpoint_ips: Vec<Value> =
                map_entries(daemon, "crs_ipcache")?.into_iter().filter(is_endpoint_identity).collect();
            anyhow::ensure!(endpoint_ips.is_empty(), "ipcache entries of endpoints left: {endpoint_ips:?}");
            let routes: Vec<String> = our_routes()?.into_iter().filter(|r| !self.baseline_routes.contains(r)).collect();
            anyhow::ensure!(routes.is_empty(), "routes left: {routes:?}");
            let links: Vec<String> =
                host_lxc_links()?.into_iter().filter(|l| !self.baseline_links.contains(l)).collect();
            anyhow::ensure!(links.is_empty(), "veths left: {links:?}");
            Ok(())
        };
        if let Err(e) = check() {
            panic!("leak after clean-up: {e:#}\ndaemon log:\n{}", daemon.log_text());
        }
    }
}

impl Drop for Env {
    /// A test that failed half-way removes its containers and networks while its daemon still
    /// runs, so their veths, routes and pins go with them instead of outliving the test.
    fn drop(&mut self) {
        if std::thread::panicking() {
            remove_docker_leftovers(&self.prefix);
        }
    }
}

pub fn pinned_links(daemon: &Daemon) -> Vec<String> {
    std::fs::read_dir(daemon.bpf_root.join(format!("v{CRS_LAYOUT_VERSION}/links")))
        .map(|dir| dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

pub fn map_entries(daemon: &Daemon, map: &str) -> Result<Vec<Value>> {
    let path = daemon.bpf_root.join(format!("v{CRS_LAYOUT_VERSION}/maps")).join(map);
    let text = run(&["bpftool", "-j", "map", "dump", "pinned", &path.to_string_lossy()])?;
    serde_json::from_str(&text).context("bpftool json")
}

/// Whether a bpftool row of crs_ipcache maps to init (5) or an allocated identity (>= 256).
pub fn is_endpoint_identity(row: &Value) -> bool {
    let bytes: Vec<u8> = row["value"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|b| b.as_str().and_then(|h| u8::from_str_radix(h.trim_start_matches("0x"), 16).ok()))
                .collect()
        })
        .unwrap_or_default();
    let identity = bytes.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
    identity == 5 || (256..1 << 24).contains(&identity)
}
