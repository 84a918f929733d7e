//! Test support for privileged tests: throwaway network namespaces that clean up after themselves.
#![allow(dead_code)]

pub mod packets;

use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Fails the test loudly when it cannot run privileged: these tests must never be skipped.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "privileged tests need root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN)");
}

/// Runs `f` on a new thread inside a fresh, empty network namespace, on a current-thread tokio
/// runtime, so that every socket it opens (netlink, ioctl, bpf link) belongs to that namespace.
/// The namespace disappears with the thread, taking its links and routes with it.
pub fn in_netns<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    require_root();
    let worker = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        run(&["ip", "link", "set", "lo", "up"]);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        runtime.block_on(f())
    });
    match worker.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs a command (in the calling thread's network namespace) and panics with its output when
/// it fails.
pub fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`) standing in for a container; deleted on drop.
/// Commands run inside it with `nsenter`, which (unlike `ip netns exec`) leaves /sys alone.
pub struct Netns {
    pub name: String,
}

static NEXT_NETNS: AtomicU32 = AtomicU32::new(0);

impl Netns {
    pub fn new(role: &str) -> Self {
        remove_stale_netns();
        let name = format!("crs-t-{}-{}-{role}", std::process::id(), NEXT_NETNS.fetch_add(1, Ordering::Relaxed));
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace and panics when it fails.
    pub fn exec(&self, argv: &[&str]) -> String {
        let net = format!("--net={}", self.path());
        let mut full = vec!["nsenter", net.as_str(), "--"];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// Runs a command inside the namespace and returns whether it succeeded.
    pub fn try_exec(&self, argv: &[&str]) -> bool {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .arg("--")
            .args(argv)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Deletes `crs-t-<pid>-…` namespaces left by test processes that no longer run.
fn remove_stale_netns() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("crs-t-") else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// A bpf root of one test, `/sys/fs/bpf/crs-test-<pid>-<n>-<role>`, removed with everything
/// pinned below it on drop. Roots left by test processes that no longer run are removed first.
pub struct BpfRoot {
    pub path: std::path::PathBuf,
}

static NEXT_BPF_ROOT: AtomicU32 = AtomicU32::new(0);

impl BpfRoot {
    pub fn new(role: &str) -> Self {
        remove_stale_bpf_roots();
        let n = NEXT_BPF_ROOT.fetch_add(1, Ordering::Relaxed);
        let path = std::path::PathBuf::from(format!("/sys/fs/bpf/crs-test-{}-{n}-{role}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        BpfRoot { path }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for BpfRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Deletes `/sys/fs/bpf/crs-test-<pid>-…` roots of test processes that no longer run.
fn remove_stale_bpf_roots() {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("crs-test-") else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
