//! Every daemon option reaches a managed plugin: `plugin-spec/config.json` declares the
//! environment variable of each one (settable unless the plugin's layout fixes it).

use std::collections::BTreeSet;
use std::process::Command;

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-spec/config.json");
/// Fixed by the plugin's mounts and socket: declared with a value, not settable.
const FIXED: [&str; 4] =
    ["CILIUM_RS_PLUGIN_SOCKET", "CILIUM_RS_API_SOCKET", "CILIUM_RS_STATE_DIR", "CILIUM_RS_DOCKER_SOCKET"];

/// The `[env: NAME=]` names in `cilium-rs daemon --help`.
fn daemon_env_names() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_cilium-rs")).args(["daemon", "--help"]).output().expect("run --help");
    let help = String::from_utf8_lossy(&out.stdout);
    help.split("[env: ").skip(1).filter_map(|rest| rest.split('=').next()).map(str::to_owned).collect()
}

#[test]
fn config_json_declares_every_daemon_option() {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(CONFIG).expect("read config.json")).expect("json");
    let declared = config["env"].as_array().expect("env");
    let names = daemon_env_names();
    assert!(names.len() > 20 && names.contains("CILIUM_RS_DRIVER_NAME"), "{names:?}");
    for name in &names {
        let entry = declared.iter().find(|e| e["name"] == name.as_str());
        let entry = entry.unwrap_or_else(|| panic!("config.json does not declare {name}"));
        let settable = entry["settable"] == serde_json::json!(["value"]);
        assert_eq!(settable, !FIXED.contains(&name.as_str()), "{name} settable: {entry}");
    }
    for entry in declared {
        let name = entry["name"].as_str().expect("name");
        assert!(names.contains(name), "config.json declares {name}, which the daemon does not read");
    }
}
