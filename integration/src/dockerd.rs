//! dockerd itself, for tests that take it away and bring it back: live restore switched on for
//! a while (so containers outlive dockerd), a restart, and a stop or a freeze that is undone
//! when its guard goes, even when the test fails.

use std::path::Path;
use std::time::Duration;

use crate::{docker, run, wait_until};

const DAEMON_JSON: &str = "/etc/docker/daemon.json";

/// `live-restore` in /etc/docker/daemon.json (reloaded with SIGHUP) until dropped, when the
/// file is put back as it was.
pub struct LiveRestore {
    before: Option<String>,
}

impl LiveRestore {
    pub fn enable() -> LiveRestore {
        let before = std::fs::read_to_string(DAEMON_JSON).ok();
        let mut config: serde_json::Value =
            before.as_deref().map_or(serde_json::json!({}), |t| serde_json::from_str(t).expect("daemon.json is JSON"));
        config["live-restore"] = serde_json::Value::Bool(true);
        std::fs::create_dir_all("/etc/docker").expect("mkdir /etc/docker");
        std::fs::write(DAEMON_JSON, config.to_string()).expect("write daemon.json");
        reload_dockerd();
        LiveRestore { before }
    }
}

impl Drop for LiveRestore {
    fn drop(&mut self) {
        // A reload only changes what the file sets: set it back before the file goes back.
        let mut config: serde_json::Value =
            self.before.as_deref().and_then(|t| serde_json::from_str(t).ok()).unwrap_or(serde_json::json!({}));
        if config.get("live-restore").is_none() {
            config["live-restore"] = serde_json::Value::Bool(false);
        }
        let _ = std::fs::write(DAEMON_JSON, config.to_string());
        reload_dockerd();
        match &self.before {
            Some(text) => {
                let _ = std::fs::write(DAEMON_JSON, text);
            }
            None => {
                let _ = std::fs::remove_file(DAEMON_JSON);
            }
        }
    }
}

pub fn dockerd_pid() -> String {
    run(&["pidof", "dockerd"]).expect("dockerd runs").split_whitespace().next().expect("a pid").to_owned()
}

fn reload_dockerd() {
    run(&["kill", "-HUP", &dockerd_pid()]).expect("SIGHUP dockerd");
    wait_until(Duration::from_secs(10), "dockerd's live restore setting", || {
        docker(&["info", "-f", "{{.LiveRestoreEnabled}}"]).is_ok()
    })
    .expect("dockerd answers");
}

/// Stops dockerd (SIGTERM) and waits until it is gone. Live restore must be on, or every
/// container on the machine would stop with it.
fn stop_dockerd() {
    let live = docker(&["info", "-f", "{{.LiveRestoreEnabled}}"]).expect("info");
    assert_eq!(live.trim(), "true", "live restore is on before dockerd stops");
    stop_dockerd_and_containers();
}

/// Stops dockerd (SIGTERM), and every container with it unless live restore is on; waits
/// until it is gone. Only for tests that hold the machine-wide lock: no other test's
/// containers run meanwhile.
fn stop_dockerd_and_containers() {
    let pid = dockerd_pid();
    run(&["kill", "-TERM", &pid]).expect("stop dockerd");
    wait_until(Duration::from_secs(30), "dockerd to exit", || !Path::new(&format!("/proc/{pid}")).exists())
        .expect("dockerd stopped");
}

/// Starts dockerd as `make test` does (scripts/setup.sh) and waits until it answers.
fn start_dockerd() {
    run(&["sh", "-c", "setsid nohup dockerd >>/var/log/dockerd.log 2>&1 </dev/null &"]).expect("start dockerd");
    wait_until(Duration::from_secs(60), "dockerd to answer", || docker(&["info"]).is_ok()).expect("dockerd back");
}

/// Stops dockerd and starts it again.
pub fn restart_dockerd() {
    stop_dockerd();
    start_dockerd();
}

/// Stops dockerd with live restore off — every container stops with it, as on a reboot — and
/// starts it again (it starts `restart=always` containers again).
pub fn restart_dockerd_stopping_containers() {
    let live = docker(&["info", "-f", "{{.LiveRestoreEnabled}}"]).expect("info");
    assert_eq!(live.trim(), "false", "live restore is off");
    stop_dockerd_and_containers();
    start_dockerd();
}

/// dockerd stopped until this is dropped (or [`DockerdStopped::start`]ed): it is started again
/// whatever happens to the test meanwhile.
pub struct DockerdStopped {
    started: bool,
}

impl DockerdStopped {
    pub fn stop() -> DockerdStopped {
        stop_dockerd();
        DockerdStopped { started: false }
    }

    /// Stops dockerd and, live restore being off, every container with it (a reboot).
    pub fn stop_with_containers() -> DockerdStopped {
        let live = docker(&["info", "-f", "{{.LiveRestoreEnabled}}"]).expect("info");
        assert_eq!(live.trim(), "false", "live restore is off");
        stop_dockerd_and_containers();
        DockerdStopped { started: false }
    }

    /// Starts dockerd again and waits until it answers.
    pub fn start(mut self) {
        self.started = true;
        start_dockerd();
    }
}

impl Drop for DockerdStopped {
    fn drop(&mut self) {
        let running = run(&["pidof", "dockerd"]).is_ok();
        if !self.started && !running {
            start_dockerd();
        }
    }
}

/// dockerd frozen (SIGSTOP: it sends no plugin call and reads no answer) until this is dropped,
/// when it is thawed (SIGCONT) whatever happens to the test meanwhile. Its containers run on.
pub struct DockerdFrozen {
    pid: String,
}

impl DockerdFrozen {
    pub fn freeze() -> DockerdFrozen {
        let pid = dockerd_pid();
        run(&["kill", "-STOP", &pid]).expect("freeze dockerd");
        DockerdFrozen { pid }
    }
}

impl Drop for DockerdFrozen {
    fn drop(&mut self) {
        let _ = run(&["kill", "-CONT", &self.pid]);
    }
}
