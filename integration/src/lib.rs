//! Shared helpers for the end-to-end tests and the bench: dockerd, the cilium-rs daemon under
//! test, containers, and clean-up that also tolerates what an earlier run left behind.

pub mod dockerd;
pub mod env;
pub mod holder;
pub mod managed;
pub mod outside;
pub mod scrape;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Debian's docker client (a newer one on PATH would work too, but be exact).
pub const DOCKER: &str = "/usr/bin/docker";
/// The local image built by scripts/setup.sh.
pub const IMAGE: &str = "crs-busybox:latest";
/// Label on every container the tests start, for clean-up of leftovers.
pub const TEST_LABEL: &str = "io.cilium-rs.test";

/// Held while a test drives dockerd: one test at a time, across every test process on the
/// machine (the leak checks look at host-wide state).
pub struct Serial {
    _file: std::fs::File,
    _thread: MutexGuard<'static, ()>,
}

/// Where the machine-wide lock lives.
const SERIAL_LOCK: &str = "/run/cilium-rs-tests.lock";

/// Tests that drive dockerd run one at a time.
pub fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let thread = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(SERIAL_LOCK)
        .unwrap_or_else(|e| panic!("open {SERIAL_LOCK}: {e}"));
    file.lock().unwrap_or_else(|e| panic!("lock {SERIAL_LOCK}: {e}"));
    Serial { _file: file, _thread: thread }
}

/// Runs a command, returning its output whatever the exit status.
pub fn output(argv: &[&str]) -> Result<Output> {
    Command::new(argv[0]).args(&argv[1..]).output().with_context(|| format!("run {argv:?}"))
}

/// Runs a command and returns its stdout; fails with its stderr when it fails.
pub fn run(argv: &[&str]) -> Result<String> {
    let out = output(argv)?;
    if !out.status.success() {
        bail!(
            "{argv:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn docker(args: &[&str]) -> Result<String> {
    let mut argv = vec![DOCKER];
    argv.extend_from_slice(args);
    run(&argv)
}

/// Like `docker`, but returns the combined output of a command expected to fail.
pub fn docker_fails(args: &[&str]) -> Result<String> {
    let mut argv = vec![DOCKER];
    argv.extend_from_slice(args);
    let out = output(&argv)?;
    if out.status.success() {
        bail!("{argv:?} succeeded but should have failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

pub fn inspect(object: &str) -> Result<Value> {
    let text = docker(&["inspect", object])?;
    let mut list: Vec<Value> = serde_json::from_str(&text).context("parse docker inspect")?;
    list.pop().context("docker inspect returned nothing")
}

/// Fails loudly (never skips) when the machine cannot run these tests.
pub fn require_root_and_dockerd() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "end-to-end tests need root");
    let ok = output(&[DOCKER, "info"]).map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "end-to-end tests need a running dockerd: run them through `make test`, which starts one");
    let image = output(&[DOCKER, "image", "inspect", IMAGE]).map(|o| o.status.success()).unwrap_or(false);
    assert!(image, "image {IMAGE} missing: `make test` (scripts/setup.sh) builds it");
}

/// Connects to a plugin socket and sends `Plugin.Activate` as dockerd sends it (no
/// Content-Type, empty Host, empty body); returns the raw HTTP answer.
pub fn activate(socket: &Path) -> std::io::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(
        b"POST /Plugin.Activate HTTP/1.1\r\nHost: \r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// A cilium-rs daemon under test, with its own sockets, state and BPF root; killed and cleaned
/// on drop.
pub struct Daemon {
    pub name: String,
    pub plugin_socket: PathBuf,
    pub api_socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpf_root: PathBuf,
    pub log: PathBuf,
    /// Extra environment for the daemon process (e.g. another Docker socket).
    pub env: Vec<(String, String)>,
    /// The binary started from now on, when not [`binary()`] (an upgrade).
    pub program: Option<PathBuf>,
    child: Option<Child>,
    /// The socket holder that starts (and restarts) the daemon, when one does.
    holder: Option<holder::Holder>,
    _dir: tempfile::TempDir,
}

/// How to start a program: its arguments and environment, and the file that collects its output.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

impl Launch {
    /// The command that starts it.
    pub fn command(&self) -> Result<Command> {
        let mut command = Command::new(&self.program);
        self.configure(&mut command)?;
        Ok(command)
    }

    /// The command that starts it through `wrapper wrapper_args... program args...`.
    pub fn command_through(&self, wrapper: &Path, wrapper_args: &[&str]) -> Result<Command> {
        let mut command = Command::new(wrapper);
        command.args(wrapper_args).arg(&self.program);
        self.configure(&mut command)?;
        Ok(command)
    }

    fn configure(&self, command: &mut Command) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null());
        Ok(())
    }
}

/// The cilium-rs binary: $CILIUM_RS_BIN (set by the Makefile), else the workspace's debug build.
pub fn binary() -> PathBuf {
    match std::env::var_os("CILIUM_RS_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/cilium-rs"),
    }
}

impl Daemon {
    /// Starts a daemon registered with dockerd as plugin `name`.
    pub fn start(name: &str) -> Result<Daemon> {
        Daemon::start_with(name, &[])
    }

    /// Starts a daemon with extra environment variables.
    pub fn start_with(name: &str, env: &[(&str, &str)]) -> Result<Daemon> {
        let mut daemon = Daemon::prepare(name, env)?;
        daemon.spawn()?;
        Ok(daemon)
    }

    /// Starts a daemon under a socket holder (as systemd's socket unit holds the socket):
    /// the holder binds the plugin socket and passes it to the daemon, and starts the daemon
    /// again shortly after it dies (see [`Daemon::crash`]). Returns once it said `READY=1`.
    pub fn start_held(name: &str, env: &[(&str, &str)]) -> Result<Daemon> {
        let mut daemon = Daemon::prepare(name, env)?;
        let holder = holder::Holder::start(&daemon.plugin_socket, daemon.launch())?;
        let ready = holder.wait_ready(1, Duration::from_secs(20));
        daemon.holder = Some(holder);
        if let Err(e) = ready {
            bail!("{e}; daemon log:\n{}", daemon.log_text());
        }
        Ok(daemon)
    }

    /// The daemon's directories and settings; nothing started yet.
    fn prepare(name: &str, env: &[(&str, &str)]) -> Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("crs-e2e-").tempdir()?;
        let daemon = Daemon {
            name: name.to_owned(),
            plugin_socket: PathBuf::from(format!("/run/docker/plugins/{name}.sock")),
            api_socket: dir.path().join("api.sock"),
            state_dir: dir.path().join("state"),
            bpf_root: PathBuf::from(format!("/sys/fs/bpf/{name}")),
            log: dir.path().join("daemon.log"),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            program: None,
            child: None,
            holder: None,
            _dir: dir,
        };
        // A previous run may have left pins behind.
        let _ = std::fs::remove_dir_all(&daemon.bpf_root);
        let bin = binary();
        if !bin.exists() {
            bail!("{} missing: build it first (`cargo build -p cilium-rs`)", bin.display());
        }
        Ok(daemon)
    }

    /// How the daemon process is started.
    fn launch(&self) -> Launch {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let mut env: Vec<(String, String)> = vec![
            ("CILIUM_RS_PLUGIN_SOCKET".into(), path(&self.plugin_socket)),
            ("CILIUM_RS_API_SOCKET".into(), path(&self.api_socket)),
            ("CILIUM_RS_STATE_DIR".into(), path(&self.state_dir)),
            ("CILIUM_RS_BPF_ROOT".into(), path(&self.bpf_root)),
            // Tests never attach to the machine's real uplink; those of the outside world name
            // the interface of the namespace they create.
            ("CILIUM_RS_EGRESS_INTERFACE".into(), "none".into()),
        ];
        env.extend(self.env.iter().cloned());
        Launch {
            program: self.program.clone().unwrap_or_else(binary),
            args: ["daemon", "--log", "info,cilium_rs=debug"].map(str::to_owned).to_vec(),
            env,
            log: self.log.clone(),
        }
    }

    /// (Re)starts the process on the same state.
    pub fn spawn(&mut self) -> Result<()> {
        let launch = self.launch();
        let child = launch.command()?.spawn().with_context(|| format!("start {}", launch.program.display()))?;
        self.child = Some(child);
        let api = self.api_socket.clone();
        let plugin = self.plugin_socket.clone();
        let up = wait_until(Duration::from_secs(20), "the daemon's sockets", || {
            std::os::unix::net::UnixStream::connect(&api).is_ok()
                && std::os::unix::net::UnixStream::connect(&plugin).is_ok()
        });
        if let Err(e) = up {
            bail!("{e}; daemon log:\n{}", self.log_text());
        }
        Ok(())
    }

    /// Starts the process expecting it to refuse to run: its exit status, within 20 s.
    pub fn run_to_exit(&mut self) -> Result<Option<i32>> {
        let launch = self.launch();
        let mut child = launch.command()?.spawn().with_context(|| format!("start {}", launch.program.display()))?;
        match exit_within(&mut child, Duration::from_secs(20))? {
            Some(code) => Ok(code),
            None => bail!("the daemon did not exit within 20 s; log:\n{}", self.log_text()),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match &self.holder {
            Some(holder) => holder.pid(),
            None => self.child.as_ref().map(Child::id),
        }
    }

    /// The socket holder of a daemon started with [`Daemon::start_held`].
    pub fn holder(&self) -> Option<&holder::Holder> {
        self.holder.as_ref()
    }

    /// SIGKILL to a held daemon; returns once it is gone. Its holder starts it again after
    /// [`holder::RESTART_DELAY`].
    pub fn crash(&self) -> Result<()> {
        self.holder.as_ref().context("only a held daemon is started again after a crash")?.kill9()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) -> Result<()> {
        if self.holder.is_some() {
            bail!("a held daemon is killed with crash() (and started again by its holder)");
        }
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Result<Option<i32>> {
        if let Some(holder) = &mut self.holder {
            return holder.stop();
        }
        let Some(mut child) = self.child.take() else { return Ok(None) };
        run(&["kill", "-TERM", &child.id().to_string()])?;
        match exit_within(&mut child, Duration::from_secs(20))? {
            Some(code) => Ok(code),
            None => bail!("daemon ignored SIGTERM for 20s"),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The command line of the CLI against this daemon.
    fn cli_argv(&self, args: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = vec![binary().to_string_lossy().into_owned()];
        argv.push("--api-socket".into());
        argv.push(self.api_socket.to_string_lossy().into_owned());
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let argv = self.cli_argv(args);
        run(&argv.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Calls the plugin socket directly, as dockerd would (for what dockerd must not know).
    pub fn plugin_call(&self, method: &str, body: &Value) -> Result<Value> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let bytes = runtime.block_on(cilium_rs::http_unix::request(
            &self.plugin_socket,
            hyper::Method::POST,
            &format!("/{method}"),
            Some(format!("{body}\n").into_bytes()),
        ))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub fn endpoints(&self) -> Result<Vec<Value>> {
        Ok(serde_json::from_str(&self.cli(&["endpoint", "list", "-o", "json"])?)?)
    }

    /// `status -o json`, and whether it exited 0 (it does not when the daemon is unhealthy).
    pub fn status(&self) -> Result<(bool, Value)> {
        let argv = self.cli_argv(&["status", "-o", "json"]);
        let out = output(&argv.iter().map(String::as_str).collect::<Vec<_>>())?;
        let text = String::from_utf8_lossy(&out.stdout);
        let status = serde_json::from_str(&text)
            .with_context(|| format!("status: {text}{}", String::from_utf8_lossy(&out.stderr)))?;
        Ok((out.status.success(), status))
    }

    pub fn networks(&self) -> Result<Vec<Value>> {
        Ok(serde_json::from_str(&self.cli(&["network", "list", "-o", "json"])?)?)
    }

    /// `state check` against this daemon: whether it exited 0 (no difference), and its output.
    pub fn state_check(&self) -> Result<(bool, String)> {
        let plugin = self.plugin_socket.to_string_lossy().into_owned();
        let argv = self.cli_argv(&["state", "check", "--plugin-socket", &plugin]);
        let out = output(&argv.iter().map(String::as_str).collect::<Vec<_>>())?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }
}

/// The exit code of `child` once it exits (`None` inside: a signal ended it), or `None` after
/// `within` — when it is killed (and reaped).
fn exit_within(child: &mut Child, within: Duration) -> Result<Option<Option<i32>>> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status.code()));
        }
        if start.elapsed() > within {
            child.kill()?;
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.terminate();
        let _ = std::fs::remove_dir_all(&self.bpf_root);
        let _ = std::fs::remove_file(&self.plugin_socket);
    }
}

/// Removes what tests (this run's or an earlier one's) left in dockerd: containers carrying the
/// test label or named `prefix…` (compose projects), and networks named `prefix…`.
pub fn remove_docker_leftovers(prefix: &str) {
    let mut ids: Vec<String> = Vec::new();
    for filter in [format!("label={TEST_LABEL}"), format!("name=^{prefix}")] {
        if let Ok(found) = docker(&["ps", "-aq", "--filter", &filter]) {
            ids.extend(found.split_whitespace().map(str::to_owned));
        }
    }
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids.iter().map(String::as_str));
        let _ = docker(&args);
    }
    if let Ok(names) = docker(&["network", "ls", "--format", "{{.Name}}"]) {
        for name in names.lines().filter(|n| n.starts_with(prefix)) {
            let _ = docker(&["network", "rm", name]);
        }
    }
}

/// Starts a long-running test container and returns its id.
pub fn run_container(name: &str, args: &[&str]) -> Result<String> {
    run_container_with(name, args, &["sleep", "3600"])
}

/// Starts a test container running `cmd` and returns its id.
pub fn run_container_with(name: &str, args: &[&str], cmd: &[&str]) -> Result<String> {
    let label = format!("{TEST_LABEL}=1");
    let mut argv = vec!["run", "-d", "--name", name, "--label", label.as_str()];
    argv.extend_from_slice(args);
    argv.push(IMAGE);
    argv.extend_from_slice(cmd);
    Ok(docker(&argv)?.trim().to_owned())
}

/// A persistent HTTP server on each port in `ports` with a body naming `name`: busybox `nc -ll`
/// forks a responder for every connection, so back-to-back requests never meet a closed port.
/// The responder reads the request line first, so closing never resets unread data.
pub fn http_servers(name: &str, ports: &[u16]) -> String {
    let servers: Vec<String> = ports
        .iter()
        .map(|p| format!(r#"nc -ll -p {p} -e sh -c 'read request; printf "HTTP/1.0 200 OK\r\n\r\n{name}:{p}\n"' &"#))
        .collect();
    format!("{} wait", servers.join(" "))
}

/// Whether `from` gets an HTTP answer from `addr`:`port` within `timeout_secs` (busybox `nc`
/// gives up connecting after that long); the answer's body when it does.
pub fn http_get(from: &str, addr: &str, port: u16, timeout_secs: u32) -> Result<Option<String>> {
    let script = format!("echo GET | nc -w {timeout_secs} {addr} {port}");
    let (ok, out) = exec(from, &["sh", "-c", &script])?;
    Ok((ok && out.contains("200 OK")).then_some(out))
}

/// Runs a command in a container; returns whether it succeeded and its output.
pub fn exec(container: &str, cmd: &[&str]) -> Result<(bool, String)> {
    let mut argv = vec![DOCKER, "exec", container];
    argv.extend_from_slice(cmd);
    let out = output(&argv)?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// The container's addresses on `network`: (IPv4, IPv6), without prefix lengths.
pub fn addresses(container: &str, network: &str) -> Result<(String, String)> {
    let info = inspect(container)?;
    let net = &info["NetworkSettings"]["Networks"][network];
    let v4 = net["IPAddress"].as_str().unwrap_or_default().to_owned();
    let v6 = net["GlobalIPv6Address"].as_str().unwrap_or_default().to_owned();
    if v4.is_empty() && v6.is_empty() {
        bail!("{container} has no address on {network}: {net}");
    }
    Ok((v4, v6))
}

/// Host-side interfaces whose name starts with `lxc`.
pub fn host_lxc_links() -> Result<Vec<String>> {
    let text = run(&["ip", "-o", "link", "show"])?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n.starts_with("lxc"))
        .collect())
}

/// Routes cilium-rs installed (protocol 193), both families.
pub fn our_routes() -> Result<Vec<String>> {
    let mut routes: Vec<String> =
        run(&["ip", "-4", "route", "show", "proto", "193"])?.lines().map(str::to_owned).collect();
    routes.extend(run(&["ip", "-6", "route", "show", "proto", "193"])?.lines().map(str::to_owned));
    Ok(routes)
}
