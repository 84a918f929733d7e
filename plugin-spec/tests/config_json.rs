//! Checks the managed plugin's `config.json` against what dockerd and the daemon need: both
//! interfaces on one socket, the host network, the least capabilities that load the datapath,
//! and mounts that agree with the daemon's paths and with the tmpfiles.d entries that make
//! their sources at boot.

use std::path::Path;

use serde_json::Value;

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config.json");
const TMPFILES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib/tmpfiles.d/cilium-rs.conf");

fn config() -> Value {
    let text = std::fs::read_to_string(CONFIG).expect("read config.json");
    serde_json::from_str(&text).expect("config.json is JSON")
}

/// The value the plugin's environment gives `name`.
fn env<'a>(config: &'a Value, name: &str) -> Option<&'a str> {
    config["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

fn mount<'a>(config: &'a Value, name: &str) -> &'a Value {
    let mounts = config["mounts"].as_array().expect("mounts");
    mounts.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("mount {name} missing"))
}

#[test]
fn dockerd_finds_both_drivers_on_the_socket_the_daemon_binds() {
    let c = config();
    assert_eq!(c["interface"]["types"], serde_json::json!(["docker.networkdriver/1.0", "docker.ipamdriver/1.0"]));
    let socket = c["interface"]["socket"].as_str().expect("socket");
    let bound = env(&c, "CILIUM_RS_PLUGIN_SOCKET").expect("plugin socket");
    assert_eq!(Path::new(bound), Path::new("/run/docker/plugins").join(socket), "dockerd looks in its plugin dir");
    assert_eq!(env(&c, "CILIUM_RS_DRIVER_NAME"), Some("cilium-rs:latest"), "networks carry the name with the tag");
    assert_eq!(c["entrypoint"], serde_json::json!(["/usr/bin/cilium-rs", "daemon"]));
    // Veths and routes are made in the host's namespace, where dockerd moves them from.
    assert_eq!(c["network"]["type"], "host");
}

#[test]
fn only_the_capabilities_the_datapath_needs() {
    // NET_ADMIN: links, routes, tc; BPF: programs and maps; PERFMON: the verifier refuses the
    // programs' pointer arithmetic without it. Nothing needs SYS_ADMIN.
    let c = config();
    assert_eq!(c["linux"]["capabilities"], serde_json::json!(["CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON"]));
    assert!(c["linux"]["allowAllDevices"].is_null() && c["pidhost"].is_null() && c["ipchost"].is_null());
}

#[test]
fn mounts_agree_with_the_daemons_paths() {
    let c = config();
    let under = |path: &str, mount: &str| Path::new(path).starts_with(mount);
    let state = mount(&c, "state");
    assert_eq!(env(&c, "CILIUM_RS_STATE_DIR"), state["destination"].as_str());
    let api = mount(&c, "api");
    assert!(under(env(&c, "CILIUM_RS_API_SOCKET").expect("api"), api["destination"].as_str().expect("dest")));
    // The host's CLI finds the socket where it looks by default.
    assert_eq!(api["source"], "/run/cilium-rs");
    let bpffs = mount(&c, "bpffs");
    assert!(under(env(&c, "CILIUM_RS_BPF_ROOT").expect("bpf root"), bpffs["destination"].as_str().expect("dest")));
    assert_eq!(mount(&c, "docker")["destination"].as_str(), env(&c, "CILIUM_RS_DOCKER_SOCKET"));
    assert_eq!(mount(&c, "cgroup")["options"], serde_json::json!(["rbind", "ro"]));
    for m in c["mounts"].as_array().expect("mounts") {
        assert_eq!(m["type"], "bind", "{m}");
        assert!(m["source"].as_str().is_some_and(|s| s.starts_with('/')), "a bind mount needs a source: {m}");
    }
}

#[test]
fn tmpfiles_makes_the_mount_sources_that_may_be_missing_at_boot() {
    let c = config();
    let text = std::fs::read_to_string(TMPFILES).expect("read tmpfiles.d entry");
    let made: Vec<&str> =
        text.lines().filter(|l| !l.trim_start().starts_with('#')).filter_map(|l| l.split_whitespace().nth(1)).collect();
    for name in ["state", "api"] {
        let source = mount(&c, name)["source"].as_str().expect("source");
        assert!(made.contains(&source), "{source} ({name}) is not made by {TMPFILES}");
    }
}
