//! Who may talk to the daemon and read its state: the plugin socket is 0660 root:root (dockerd
//! runs as root), the API socket 0600, the state directory 0700 with `state.redb` 0600. Checked
//! with a real unprivileged user, who can neither read nor change policy, endpoints or state.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration::env::Env;
use integration::{binary, run};

const PLUGIN: &str = "crs-perm";
const PREFIX: &str = "crs-perm-";
/// The unprivileged system user the test runs commands as (created when missing, left in place).
const USER: &str = "crs-nobody";

const POLICY: &str = r#"[{"labels": [{"key": "name", "value": "perm-test"}],
  "endpointSelector": {"matchLabels": {"id": "perm-server"}},
  "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "perm-client"}}]}]}]"#;

/// The user's uid and gid; the user is created (a system user without home) if missing.
fn unprivileged_user() -> (u32, u32) {
    if integration::output(&["id", "-u", USER]).map(|o| !o.status.success()).unwrap_or(true) {
        // Another run may create it at the same time: only the user's existence counts.
        let _ = integration::output(&["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER]);
    }
    let id = |flag: &str| -> u32 {
        let text = run(&["id", flag, USER]).unwrap_or_else(|e| panic!("user {USER} could not be created: {e:#}"));
        text.trim().parse().expect("a number")
    };
    let (uid, gid) = (id("-u"), id("-g"));
    assert!(uid != 0 && gid != 0, "{USER} is not unprivileged ({uid}:{gid})");
    (uid, gid)
}

/// `program` under `dir` (0755), so that the user can run it whatever the permissions of the
/// directories the build lives in: a hard link, or a copy across file systems.
fn runnable(dir: &Path, program: &Path) -> PathBuf {
    let target = dir.join(program.file_name().expect("a file name"));
    if std::fs::hard_link(program, &target).is_err() {
        std::fs::copy(program, &target).unwrap_or_else(|e| panic!("copy {}: {e}", program.display()));
    }
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    target
}

/// Runs `argv` as `uid`:`gid` with no supplementary groups.
fn as_user<S: AsRef<OsStr>>((uid, gid): (u32, u32), argv: &[S]) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--")
        .args(argv)
        .output()
        .expect("setpriv (util-linux) must be installed")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs `argv` as the user, checks it was refused for want of permission; returns its output.
fn refused<S: AsRef<OsStr> + std::fmt::Debug>(user: (u32, u32), argv: &[S]) -> String {
    let out = as_user(user, argv);
    let text = text(&out);
    assert!(!out.status.success() && text.contains("Permission denied"), "{argv:?} as {USER}: {}: {text}", out.status);
    text
}

fn mode_and_owner(path: &Path) -> (u32, u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (meta.mode() & 0o7777, meta.uid(), meta.gid())
}

#[test]
fn an_unprivileged_user_can_neither_read_nor_change_policy_endpoints_or_state() {
    let env = Env::setup(PLUGIN, PREFIX, &[]);
    let daemon = &env.daemon;
    let user = unprivileged_user();

    assert_eq!(mode_and_owner(&daemon.plugin_socket), (0o660, 0, 0), "plugin socket");
    assert_eq!(mode_and_owner(&daemon.api_socket), (0o600, 0, 0), "API socket");
    assert_eq!(mode_and_owner(&daemon.state_dir), (0o700, 0, 0), "state directory");
    let store = daemon.state_dir.join("state.redb");
    assert_eq!(mode_and_owner(&store), (0o600, 0, 0), "state file");
    // Only the sockets' and the state's own modes may stand in the way: their directories are
    // open to all, as /run/docker/plugins and /run/cilium-rs are.
    let api_dir = daemon.api_socket.parent().expect("a directory");
    std::fs::set_permissions(api_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // dockerd keeps /run/docker/plugins 0700; a link to the plugin socket in a directory open
    // to all (on the same file system) leaves the socket's own mode alone in the way.
    let links = tempfile::Builder::new().prefix("crs-perm-").tempdir_in("/run").expect("tempdir in /run");
    std::fs::set_permissions(links.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let plugin_link = links.path().join(format!("{PLUGIN}.sock"));
    std::fs::hard_link(&daemon.plugin_socket, &plugin_link).expect("link the plugin socket");

    let tools = tempfile::Builder::new().prefix("crs-perm-tools-").tempdir().expect("tempdir");
    std::fs::set_permissions(tools.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cli = runnable(tools.path(), &binary());
    let activate = runnable(tools.path(), Path::new(env!("CARGO_BIN_EXE_plugin-activate")));
    let policy = tools.path().join("policy.json");
    std::fs::write(&policy, POLICY).expect("write");
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let api = daemon.api_socket.as_path();
    let cli_argv = |args: &[&str]| -> Vec<PathBuf> {
        let mut argv = vec![cli.clone(), "--api-socket".into(), api.to_owned()];
        argv.extend(args.iter().map(PathBuf::from));
        argv
    };

    // The user can run the tools and read the policy file: what is refused below is the daemon's.
    let validate = cli_argv(&["policy", "validate", &policy.to_string_lossy()]);
    let out = as_user(user, &validate);
    assert!(out.status.success(), "{USER} cannot run the CLI at all: {}", text(&out));

    // Root reads and changes.
    let as_root = |argv: &[PathBuf]| -> String {
        let out = Command::new(&argv[0]).args(&argv[1..]).output().expect("run");
        assert!(out.status.success(), "{argv:?} as root: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let import = cli_argv(&["policy", "import", &policy.to_string_lossy(), "-o", "json"]);
    let imported: serde_json::Value = serde_json::from_str(&as_root(&import)).expect("json");
    let revision = imported["revision"].as_u64().expect("a revision");
    let get = cli_argv(&["policy", "get", "-o", "json"]);
    let list = cli_argv(&["endpoint", "list", "-o", "json"]);
    let rules: serde_json::Value = serde_json::from_str(&as_root(&get)).expect("json");
    assert_eq!(rules["rules"].as_array().map(Vec::len), Some(1), "{rules}");
    as_root(&list);
    for socket in [&daemon.plugin_socket, &plugin_link] {
        let reply = as_root(&[activate.clone(), socket.clone()]);
        assert!(reply.starts_with("HTTP/1.1 200") && reply.contains("NetworkDriver"), "{socket:?} as root: {reply}");
    }

    // The unprivileged user can do none of it.
    for argv in [&list, &get, &import] {
        let text = refused(user, argv);
        assert!(text.contains("run the command as root"), "{text}");
    }
    refused(user, &[activate.as_path(), &daemon.plugin_socket]);
    refused(user, &[activate.as_path(), &plugin_link]);
    refused(user, &[Path::new("/bin/cat"), &store]);
    refused(user, &[Path::new("/bin/ls"), &daemon.state_dir]);

    // Nothing changed meanwhile.
    let rules: serde_json::Value =
        serde_json::from_str(&daemon.cli(&["policy", "get", "-o", "json"]).expect("get")).expect("json");
    assert_eq!(rules["revision"].as_u64(), Some(revision), "{rules}");
    env.finish(&[], &[]);
}
