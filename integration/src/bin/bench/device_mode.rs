//! cilium-rs's device modes in the bench: the network option that picks one
//! (`-o cilium-rs.device-mode=`), and which one a network gets without it — the kind of the
//! interface a container on it was given.

use std::fmt;

use anyhow::{bail, Context, Result};
use integration::{docker, run_container};
use serde_json::Value;

use super::netns::Ns;
use super::{PLUGIN, PREFIX};

/// The driver option, per network.
pub const OPTION: &str = "cilium-rs.device-mode";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceMode {
    Veth,
    Netkit,
}

pub const MODES: [DeviceMode; 2] = [DeviceMode::Veth, DeviceMode::Netkit];

impl DeviceMode {
    pub fn name(self) -> &'static str {
        match self {
            DeviceMode::Veth => "veth",
            DeviceMode::Netkit => "netkit",
        }
    }

    /// `cilium-rs.device-mode=<mode>`: the argument of `docker network create -o`.
    pub fn option(self) -> String {
        format!("{OPTION}={}", self.name())
    }

    /// Creates the cilium-rs network `name` (dual stack) in this mode; fails loudly when the
    /// daemon refuses the option.
    pub fn create_network(self, name: &str) -> Result<()> {
        let option = self.option();
        docker(&["network", "create", "-d", PLUGIN, "--ipam-driver", PLUGIN, "--ipv6", "-o", &option, name])
            .with_context(|| format!("cilium-rs network in {} mode (-o {option})", self.name()))?;
        Ok(())
    }
}

impl fmt::Display for DeviceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The mode of a network created without the option: what cilium-rs does by default.
pub fn default_mode() -> Result<DeviceMode> {
    let (net, probe) = (format!("{PREFIX}default"), format!("{PREFIX}probe"));
    docker(&["network", "create", "-d", PLUGIN, "--ipam-driver", PLUGIN, "--ipv6", &net])?;
    let kind = run_container(&probe, &["--network", &net]).and_then(|_| {
        let out = Ns::container(&probe)?.cmd(&["ip", "-d", "-j", "link", "show", "eth0"]).output()?;
        let links: Value = serde_json::from_slice(&out.stdout).context("ip -j link")?;
        Ok(links[0]["linkinfo"]["info_kind"].as_str().unwrap_or_default().to_owned())
    });
    let _ = docker(&["rm", "-f", &probe]);
    docker(&["network", "rm", &net])?;
    match kind?.as_str() {
        "veth" => Ok(DeviceMode::Veth),
        "netkit" => Ok(DeviceMode::Netkit),
        other => bail!("a container on a default cilium-rs network got an eth0 of kind {other:?}"),
    }
}
