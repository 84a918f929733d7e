//! The systemd units (checked by systemd-analyze) and socket activation (systemd-socket-activate
//! hands the daemon its listening socket, as the socket unit does).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use integration::{binary, run, wait_until};

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
}

fn activate(socket: &Path) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    // As dockerd sends it: no Content-Type, empty Host, empty body.
    stream.write_all(
        b"POST /Plugin.Activate HTTP/1.1\r\nHost: \r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
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
