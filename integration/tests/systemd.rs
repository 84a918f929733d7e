//! The systemd units (checked by systemd-analyze), socket activation (systemd-socket-activate,
//! or the harness's socket holder, hands the daemon its listening socket, as the socket unit
//! does), what the daemon refuses to inherit, its readiness notifications, and a crash under
//! load behind the held socket.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration::dockerd::DockerdFrozen;
use integration::env::Env;
use integration::holder::{activated_command, RESTART_DELAY};
use integration::{activate, addresses, binary, exec, run, run_container, serial, wait_until, Daemon, Launch};

fn units_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd")
}

#[test]
fn unit_files_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    for unit in ["cilium-rs.socket", "cilium-rs.service"] {
        let text = std::fs::read_to_string(units_dir().join(unit)).expect("unit");
        // Point ExecStart at the binary just built: verify checks that it is executable.
        let text = text.replace("/usr/local/sbin/cilium-rs", &binary().to_string_lossy());
        std::fs::write(dir.path().join(unit), text).expect("write");
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("cilium-rs.socket"))
        .arg(dir.path().join("cilium-rs.service"))
        .output()
        .expect("systemd-analyze (package systemd) must be installed");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // docker.service is only named for ordering; on a machine without it that is not an error.
    let problems: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !l.contains("docker.service")).collect();
    assert!(out.status.success() && problems.is_empty(), "systemd-analyze verify: {text}");

    let socket = std::fs::read_to_string(units_dir().join("cilium-rs.socket")).expect("unit");
    assert!(socket.contains("ListenStream=/run/docker/plugins/cilium-rs.sock"));
    assert!(socket.contains("Before=docker.service"));
    let service = std::fs::read_to_string(units_dir().join("cilium-rs.service")).expect("unit");
    assert!(service.contains("Requires=cilium-rs.socket") && !service.contains("After=docker.service"));
    for line in ["Type=notify", "NotifyAccess=main", "Restart=on-failure", "RestartPreventExitStatus=3"] {
        assert!(service.lines().any(|l| l == line), "the service unit lacks {line}");
    }
}

#[test]
fn socket_activation_serves_the_inherited_socket_and_leaves_it_in_place() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "socket activation test needs root (BPF, netlink)");
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("crs-activated.sock");
    let bpf_root = format!("/sys/fs/bpf/crs-activation-{}", std::process::id());
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(binary())
        .args([
            "daemon",
            "--docker-socket",
            "/nonexistent/docker.sock",
            "--egress-interface",
            "none",
            "--bpf-root",
            &bpf_root,
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--api-socket")
        .arg(dir.path().join("api.sock"))
        .arg("--plugin-socket")
        .arg(dir.path().join("unused.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (package systemd) must be installed");
    wait_until(Duration::from_secs(10), "the activation socket", || socket.exists()).expect("socket");

    // The first connection starts the daemon, which answers on the socket it was handed.
    let reply = activate(&socket).expect("activate");
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("\"Implements\":[\"NetworkDriver\",\"IpamDriver\"]"),
        "{reply}"
    );
    assert!(!dir.path().join("unused.sock").exists(), "bound its own socket despite being activated");

    run(&["kill", "-TERM", &child.id().to_string()]).expect("kill");
    let status = child.wait().expect("wait");
    let _ = std::fs::remove_dir_all(&bpf_root);
    let mut log = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut log);
    }
    assert!(status.success(), "daemon exit {status}: {log}");
    assert!(socket.exists(), "the daemon removed a socket that systemd owns");
}

/// The daemon, started with `fd` as its fd 3 (LISTEN_FDS=1 and its own LISTEN_PID) and the
/// variables in `env`: how it exits and what it printed. It must stop before binding a socket
/// of its own or touching state.
fn start_with_inherited(fd: std::os::fd::RawFd, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("daemon.log");
    let launch = Launch {
        program: binary(),
        args: ["daemon", "--egress-interface", "none", "--docker-socket", "/nonexistent/docker.sock"]
            .map(str::to_owned)
            .to_vec(),
        env: vec![
            ("CILIUM_RS_PLUGIN_SOCKET".into(), dir.path().join("own.sock").to_string_lossy().into_owned()),
            ("CILIUM_RS_API_SOCKET".into(), dir.path().join("api.sock").to_string_lossy().into_owned()),
            ("CILIUM_RS_STATE_DIR".into(), dir.path().join("state").to_string_lossy().into_owned()),
            ("CILIUM_RS_BPF_ROOT".into(), dir.path().join("bpf").to_string_lossy().into_owned()),
        ],
        log: log.clone(),
    };
    let mut command = activated_command(&launch, fd).expect("command");
    command.envs(env.iter().copied());
    let mut child = command.spawn().expect("start the daemon");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!(
                "the daemon did not refuse what it inherited: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&log).expect("log");
    for (file, what) in [("own.sock", "its own plugin socket"), ("api.sock", "the API socket"), ("state", "state")] {
        assert!(!dir.path().join(file).exists(), "created {what} before refusing: {text}");
    }
    (status, text)
}

#[test]
fn the_daemon_refuses_inherited_descriptors_that_are_not_one_listening_unix_socket() {
    let udp = std::net::UdpSocket::bind(("127.0.0.1", 0)).expect("udp");
    let (status, text) = start_with_inherited(udp.as_raw_fd(), &[]);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("the passed descriptor 3 is a UDP/IPv4 socket, not a listening unix stream socket"),
        "{text}"
    );

    let (connection, _peer) = UnixStream::pair().expect("socketpair");
    let (status, text) = start_with_inherited(connection.as_raw_fd(), &[]);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("descriptor 3 is a unix stream socket that is not listening"), "{text}");

    let dir = tempfile::tempdir().expect("tempdir");
    let listener = std::os::unix::net::UnixListener::bind(dir.path().join("l.sock")).expect("bind");
    let (status, text) =
        start_with_inherited(listener.as_raw_fd(), &[("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "plugin:extra")]);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("2 sockets were passed (LISTEN_FDS=2, LISTEN_FDNAMES=plugin:extra)"), "{text}");
    let (status, text) = start_with_inherited(listener.as_raw_fd(), &[("LISTEN_FDS", "two")]);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains(r#"LISTEN_FDS="two" is not a number"#), "{text}");
    let (status, text) = start_with_inherited(listener.as_raw_fd(), &[("NOTIFY_SOCKET", "relative/notify")]);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("is neither an absolute path nor an abstract socket name"), "{text}");
}

#[test]
fn a_held_daemon_says_ready_once_it_serves_and_stopping_on_sigterm() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the held daemon needs root (BPF, netlink)");
    let _serial = serial();
    let mut daemon = Daemon::start_held("crs-notify", &[]).expect("start held daemon");
    let holder = daemon.holder().expect("held");
    // READY=1 means serving: both sockets answer at once.
    assert_eq!(holder.notifications(), ["READY=1"]);
    let reply = activate(&daemon.plugin_socket).expect("activate through the held socket");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(daemon.endpoints().expect("API answers").is_empty());

    let code = daemon.terminate().expect("terminate");
    assert_eq!(code, Some(0), "{}", daemon.log_text());
    let holder = daemon.holder().expect("held");
    assert_eq!(holder.notifications(), ["READY=1", "STOPPING=1"]);
    assert_eq!(holder.starts(), 1, "a clean stop is not followed by a restart");
    assert!(daemon.plugin_socket.exists(), "the daemon removed the socket its holder owns");
}

fn ping(from: &str, to: &str) -> anyhow::Result<()> {
    let (ok, out) = exec(from, &["ping", "-c", "2", "-W", "2", to])?;
    anyhow::ensure!(ok, "{from} cannot ping {to}: {out}");
    Ok(())
}

/// Until the daemon has written its log for `quiet` without a pause (every plugin call it
/// answers is logged), at most `timeout`.
fn wait_quiet(daemon: &Daemon, quiet: Duration, timeout: Duration) {
    let start = Instant::now();
    let (mut len, mut since) = (daemon.log_text().len(), Instant::now());
    while since.elapsed() < quiet {
        assert!(start.elapsed() < timeout, "the daemon kept logging for {timeout:?} with dockerd frozen");
        std::thread::sleep(Duration::from_millis(20));
        let now = daemon.log_text().len();
        if now != len {
            (len, since) = (now, Instant::now());
        }
    }
}

/// The daemon dies (kill -9) while 20 `docker run`s are on their way through its plugin calls
/// and is started again by its holder ~1.5 s later; dockerd's calls wait in the held socket's
/// backlog meanwhile, so every run succeeds and nothing stale stays.
///
/// The kill is timed while no call is in the daemon's hands: dockerd is frozen from before the
/// kill, once the daemon has answered everything it had, until the daemon is gone (so no call
/// is written into a connection of a dying daemon). A call the daemon has read but not answered
/// when it dies is retried by dockerd 20.10 with an empty body (its retry re-reads a drained
/// buffer): the next daemon answers it from its journal of calls in flight when it is certain
/// which call it is (crashes.rs proves it at each crash point), and refuses it ("empty
/// request body") when two different calls of one method were cut, e.g. two Joins (seen in
/// this test without the freeze in about half of the runs).
#[test]
fn a_held_daemon_killed_during_twenty_docker_runs_loses_none_of_them() {
    const PREFIX: &str = "crs-held-";
    let env = Env::setup_held("crs-held", PREFIX, &[]);
    let net = format!("{PREFIX}net");
    env.network(&net, &["--ipv6"]).expect("network");
    let names: Vec<String> = (0..20).map(|i| format!("{PREFIX}c{i}")).collect();
    let started = Instant::now();
    let runs: Vec<_> = names
        .iter()
        .map(|name| {
            let (name, net) = (name.clone(), net.clone());
            std::thread::spawn(move || run_container(&name, &["--network", &net]).map(|_| started.elapsed()))
        })
        .collect();
    // Kill it once the first endpoints exist: the other runs are somewhere in their plugin calls.
    wait_until(Duration::from_secs(60), "the first endpoints", || env.daemon.endpoints().is_ok_and(|e| e.len() >= 2))
        .expect("docker runs reach the daemon");
    let frozen = DockerdFrozen::freeze();
    wait_quiet(&env.daemon, Duration::from_millis(500), Duration::from_secs(10));
    let before = env.daemon.endpoints().expect("endpoints").len();
    assert!(before < 20, "every endpoint was created before the kill: it came too late");
    let killed_at = started.elapsed();
    env.daemon.crash().expect("kill -9");
    drop(frozen);
    let holder = env.daemon.holder().expect("held");
    holder.wait_ready(2, Duration::from_secs(30)).expect("restarted by the holder");
    let ready_at = started.elapsed();
    assert!(ready_at - killed_at >= RESTART_DELAY, "restarted after {:?}", ready_at - killed_at);

    let mut failures = Vec::new();
    let mut after_the_kill = 0;
    for (name, run) in names.iter().zip(runs) {
        match run.join().expect("thread") {
            Ok(done) if done > killed_at => after_the_kill += 1,
            Ok(_) => {}
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }
    assert!(
        failures.is_empty(),
        "docker runs failed across the crash:\n{}\n{}",
        failures.join("\n"),
        env.daemon.log_text()
    );
    assert!(
        after_the_kill >= 5,
        "only {after_the_kill} runs were still in flight at the kill: the crash came too late"
    );
    eprintln!(
        "killed at {killed_at:?} with {before} endpoints, ready again at {ready_at:?}; {after_the_kill} of 20 runs \
         finished after the kill, the last at {:?}",
        started.elapsed()
    );
    assert_eq!(holder.starts(), 2, "exits {:?}", holder.exits());

    let mut seen = BTreeSet::new();
    for name in &names {
        let (v4, v6) = addresses(name, &net).expect("addresses");
        assert!(seen.insert(v4.clone()) && seen.insert(v6.clone()), "duplicate address {v4} {v6}");
    }
    let (_, first6) = addresses(&names[0], &net).expect("addresses");
    let (first4, _) = addresses(&names[19], &net).expect("addresses");
    let pings: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let target = if i == 0 { first4.clone() } else { first6.clone() };
            let name = name.clone();
            std::thread::spawn(move || ping(&name, &target))
        })
        .collect();
    for handle in pings {
        handle.join().expect("thread").expect("ping");
    }
    assert_eq!(env.daemon.endpoints().expect("endpoints").len(), 20);
    // Nothing stale in Docker: the network goes (finish removes it), the daemon holds nothing.
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    env.finish(&refs, &[&net]);
}
