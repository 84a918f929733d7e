//! The managed (v2) plugin under test: built by scripts/plugin.sh from the binary under test,
//! given its own state, API and BPF directories (never the host defaults another daemon may
//! use), enabled and disabled through dockerd, and removed with everything it kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{binary, docker, output, remove_docker_leftovers, run, wait_until, DOCKER};

/// The name `make plugin` gives it, with the tag dockerd adds: the driver name networks use.
pub const NAME: &str = "cilium-rs:latest";
/// Where its bind mounts' sources live on the host during the test.
const HOST_DIR: &str = "/run/crs-e2e-managed";
/// Its pins (CILIUM_RS_BPF_ROOT), apart from every other daemon's.
const BPF_ROOT: &str = "/sys/fs/bpf/crs-e2e-managed";
/// Where dockerd writes its log (and the plugin's) when scripts/setup.sh started it.
const DOCKERD_LOG: &str = "/var/log/dockerd.log";

pub struct ManagedPlugin {
    /// Names of the test's containers and networks start with it.
    prefix: String,
    pub api_socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpf_root: PathBuf,
    /// `docker plugin set` arguments of the test, after the directories.
    settings: Vec<String>,
    /// The plugin directory (rootfs + config.json) handed to `docker plugin create`.
    build_dir: tempfile::TempDir,
}

/// The repository's root (scripts/, plugin-spec/).
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether dockerd holds a plugin called `NAME`, and whether it is enabled.
fn installed() -> Option<bool> {
    let out = output(&[DOCKER, "plugin", "inspect", "-f", "{{.Enabled}}", NAME]).ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim() == "true")
}

/// Removes the plugin (forcibly: networks may still name it) and every directory it kept.
pub fn remove_leftovers() {
    if installed() == Some(true) {
        let _ = docker(&["plugin", "disable", "-f", NAME]);
    }
    if installed().is_some() {
        let _ = docker(&["plugin", "rm", "-f", NAME]);
    }
    let _ = std::fs::remove_dir_all(BPF_ROOT);
    let _ = std::fs::remove_dir_all(HOST_DIR);
}

impl ManagedPlugin {
    /// Builds the plugin from the binary under test with scripts/plugin.sh (what `make plugin`
    /// runs on the release build), and points its mounts and settings at the test's own
    /// directories. It is left disabled.
    pub fn create(prefix: &str, settings: &[(&str, &str)]) -> Result<ManagedPlugin> {
        let plugin = ManagedPlugin {
            prefix: prefix.to_owned(),
            api_socket: Path::new(HOST_DIR).join("api/api.sock"),
            state_dir: Path::new(HOST_DIR).join("state"),
            bpf_root: PathBuf::from(BPF_ROOT),
            settings: settings.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            build_dir: tempfile::Builder::new().prefix("crs-plugin-").tempdir()?,
        };
        plugin.build(false)?;
        Ok(plugin)
    }

    /// Builds and creates it again over the existing one, as `FORCE=1 make plugin` does to
    /// upgrade a plugin that networks use; left disabled.
    pub fn replace(&self) -> Result<()> {
        self.build(true)
    }

    fn build(&self, force: bool) -> Result<()> {
        let bin = binary();
        if !bin.exists() {
            bail!("{} missing: build it first (`cargo build -p cilium-rs`)", bin.display());
        }
        let script = repository().join("scripts/plugin.sh");
        let out = std::process::Command::new(&script)
            .arg(&bin)
            .env("PLUGIN", NAME)
            .env("PLUGIN_DIR", self.build_dir.path().join("plugin"))
            .env("FORCE", if force { "1" } else { "0" })
            .output()
            .with_context(|| format!("run {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed: {}{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let api_dir = self.api_socket.parent().context("api dir")?;
        std::fs::create_dir_all(api_dir)?;
        std::fs::create_dir_all(&self.state_dir)?;
        let mut args = vec![
            format!("api.source={}", api_dir.display()),
            format!("state.source={}", self.state_dir.display()),
            format!("CILIUM_RS_BPF_ROOT={BPF_ROOT}"),
            // Never the machine's real uplink.
            "CILIUM_RS_EGRESS_INTERFACE=none".to_owned(),
            "CILIUM_RS_LOG=info,cilium_rs=debug".to_owned(),
        ];
        args.extend(self.settings.iter().cloned());
        let mut argv = vec!["plugin", "set", NAME];
        argv.extend(args.iter().map(String::as_str));
        docker(&argv)?;
        Ok(())
    }

    /// `docker plugin enable`, then waits until the daemon inside answers on its API socket.
    pub fn enable(&self) -> Result<()> {
        docker(&["plugin", "enable", "--timeout", "30", NAME]).with_context(|| self.log())?;
        wait_until(Duration::from_secs(20), "the plugin's API socket", || self.cli(&["status", "-o", "json"]).is_ok())
            .with_context(|| self.log())?;
        if installed() != Some(true) {
            bail!("{NAME} is not enabled after `docker plugin enable`:\n{}", self.log());
        }
        Ok(())
    }

    /// `docker plugin disable [-f]`: the combined output and whether it succeeded.
    pub fn disable(&self, force: bool) -> Result<(bool, String)> {
        let mut argv = vec![DOCKER, "plugin", "disable"];
        if force {
            argv.push("-f");
        }
        argv.push(NAME);
        let out = output(&argv)?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }

    pub fn enabled(&self) -> bool {
        installed() == Some(true)
    }

    /// The host's CLI against the plugin's API socket (through the api mount).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let bin = binary();
        let mut argv = vec![bin.to_str().context("binary path")?, "--api-socket"];
        argv.push(self.api_socket.to_str().context("api socket path")?);
        argv.extend_from_slice(args);
        run(&argv)
    }

    /// A CLI listing as JSON (`endpoint list -o json`, …).
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut argv = args.to_vec();
        argv.extend(["-o", "json"]);
        let text = self.cli(&argv)?;
        serde_json::from_str(&text).with_context(|| format!("{args:?}: {text}"))
    }

    /// Writes a policy file for the host's CLI and imports it; returns the revision.
    pub fn import_policy(&self, policy: &str) -> Result<u64> {
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), policy)?;
        let reply = self.json(&["policy", "import", file.path().to_str().context("policy path")?])?;
        reply["revision"].as_u64().context("revision in the reply")
    }

    /// Files pinned under `dir` (`maps`, `links`) of the current layout.
    pub fn pins(&self, dir: &str) -> Vec<String> {
        let path = self.bpf_root.join(format!("v{}", bpf_programs::abi::CRS_LAYOUT_VERSION)).join(dir);
        let mut names: Vec<String> = std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// What the plugin logged (dockerd relays its output into its own log), for failures.
    pub fn log(&self) -> String {
        let id = docker(&["plugin", "inspect", "-f", "{{.Id}}", NAME]).unwrap_or_default();
        let id = id.trim();
        match std::fs::read_to_string(DOCKERD_LOG) {
            Ok(text) if !id.is_empty() => {
                let lines: Vec<&str> = text.lines().filter(|l| l.contains(id)).collect();
                format!(
                    "plugin {id}, its lines of {DOCKERD_LOG}:\n{}",
                    lines[lines.len().saturating_sub(80)..].join("\n")
                )
            }
            Ok(_) => format!("no plugin {NAME} in dockerd"),
            Err(e) => format!("read {DOCKERD_LOG}: {e} (dockerd logs elsewhere: look for plugin={id})"),
        }
    }
}

impl Drop for ManagedPlugin {
    /// A test that failed half-way removes its containers and networks while the plugin still
    /// serves them (their veths and pins go with them), then the plugin and its directories.
    fn drop(&mut self) {
        if std::thread::panicking() {
            if !self.enabled() {
                let _ = docker(&["plugin", "enable", NAME]);
            }
            remove_docker_leftovers(&self.prefix);
        }
        remove_leftovers();
    }
}
