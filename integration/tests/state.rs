//! State that cannot be lost: a damaged or emptied state file is refused without costing the
//! running containers anything, and `cilium-rs state recover` rebuilds it from the backup,
//! Docker and the kernel — addresses, endpoint numbers, policy and connectivity intact.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use integration::env::Env;
use integration::*;
use serde_json::Value;

const PLUGIN: &str = "crs-state";
const PREFIX: &str = "crs-state-";

const APP2_TO_APP1_80: &str = r#"[{"labels": [{"key": "name", "value": "state-web"}],
  "endpointSelector": {"matchLabels": {"id": "app1"}},
  "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}],
               "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]"#;

fn reaches(from: &str, addr: &str, port: u16) -> bool {
    http_get(from, addr, port, 2).expect("exec").is_some()
}

/// Every endpoint as the daemon lists it, by container name, without what moves by itself
/// (counters, identity timings) and without the identity number (reallocated from labels).
fn endpoint_records(env: &Env) -> BTreeMap<String, Value> {
    let mut records = BTreeMap::new();
    for mut endpoint in env.daemon.endpoints().expect("endpoints") {
        let name = endpoint["container_name"].as_str().unwrap_or("?").to_owned();
        let object = endpoint.as_object_mut().expect("object");
        for volatile in ["counters", "identity_after_join_us", "identity", "identity_name"] {
            object.remove(volatile);
        }
        records.insert(name, endpoint);
    }
    records
}

fn state_recover(env: &Env) -> String {
    let daemon = &env.daemon;
    let out = run(&[
        binary().to_str().expect("path"),
        "state",
        "recover",
        "--plugin-socket",
        daemon.plugin_socket.to_str().expect("path"),
        "--state-dir",
        daemon.state_dir.to_str().expect("path"),
        "--bpf-root",
        daemon.bpf_root.to_str().expect("path"),
    ])
    .expect("state recover");
    out
}

#[test]
fn a_damaged_state_file_is_refused_and_recovered_without_touching_running_containers() {
    let mut env = Env::setup(PLUGIN, PREFIX, &[]);
    let net = format!("{PREFIX}net");
    env.network(&net, &["--ipv6"]).expect("network");
    // The policy change backs the state up (once the changes pause): the network and the rule
    // are in the backup, the containers that follow only in Docker and the kernel.
    let backup = env.daemon.state_dir.join("state.redb.bak");
    let modified = || std::fs::metadata(&backup).and_then(|m| m.modified()).ok();
    let taken_at_start = modified();
    env.import_policy(APP2_TO_APP1_80).expect("import");
    wait_until(Duration::from_secs(10), "the backup after the policy change", || modified() != taken_at_start)
        .expect("backup");
    let (app1, app2, app3) = (format!("{PREFIX}app1"), format!("{PREFIX}app2"), format!("{PREFIX}app3"));
    run_container_with(
        &app1,
        &["--network", &net, "-l", "id=app1", "-p", "8095:80"],
        &["sh", "-c", &http_servers("app1", &[80])],
    )
    .expect("app1");
    run_container(&app2, &["--network", &net, "-l", "id=app2"]).expect("app2");
    run_container(&app3, &["--network", &net, "-l", "id=app3"]).expect("app3");
    env.wait_identities(&[&app1, &app2, &app3]).expect("identities");
    let (a4, a6) = addresses(&app1, &net).expect("addresses");
    let check = |when: &str| {
        for addr in [&a4, &a6] {
            assert!(reaches(&app2, addr, 80), "{when}: app2 -> app1 {addr}:80 allowed");
            assert!(!reaches(&app3, addr, 80), "{when}: app3 -> app1 {addr}:80 refused");
        }
    };
    check("before");
    let (agree, out) = env.daemon.state_check().expect("state check");
    assert!(agree && out.contains("agree: 1 networks, 3 endpoints, 3 kernel entries"), "{out}");
    let before = endpoint_records(&env);
    assert_eq!(before.len(), 3, "{before:?}");

    env.daemon.kill9().expect("kill -9");
    let file = env.daemon.state_dir.join("state.redb");
    let mut random = vec![0u8; 256 * 1024];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random)).expect("random bytes");
    for (what, bytes) in [("an emptied", Vec::new()), ("a random", random.clone())] {
        std::fs::write(&file, &bytes).expect("damage the state");
        let code = env.daemon.run_to_exit().expect("run");
        let log = env.daemon.log_text();
        assert_eq!(code, Some(3), "{what} state file is refused with exit status 3:\n{log}");
        assert!(!log.contains("panicked"), "no panic on {what} state file:\n{log}");
        let last = log.lines().rev().find(|l| l.contains("cilium-rs:")).unwrap_or_default().to_owned();
        assert!(last.contains(&file.display().to_string()) && last.contains("cilium-rs state recover"), "{last}");
        assert_eq!(std::fs::read(&file).expect("read"), bytes, "the refused file is left as it was");
        check(&format!("with {what} state file and the daemon refusing it"));
    }

    let out = state_recover(&env);
    for container in [&app1, &app2, &app3] {
        assert!(out.contains(container.as_str()), "{container} rebuilt:\n{out}");
    }
    let kept: Vec<_> = std::fs::read_dir(&env.daemon.state_dir)
        .expect("state dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("state.redb.replaced-"))
        .map(|e| std::fs::read(e.path()).expect("read"))
        .collect();
    assert!(kept.contains(&random), "the damaged file is kept:\n{out}");

    env.daemon.spawn().expect("start on the recovered state");
    env.wait_identities(&[&app1, &app2, &app3]).expect("identities after recovery");
    assert_eq!(endpoint_records(&env), before, "every endpoint as it was: addresses, numbers, links, ports");
    let rules: Value =
        serde_json::from_str(&env.daemon.cli(&["policy", "get", "-o", "json"]).expect("get")).expect("rules json");
    assert_eq!(rules["rules"].as_array().map(Vec::len), Some(1), "{rules}");
    check("after recovery");
    let (agree, out) = env.daemon.state_check().expect("state check");
    assert!(agree, "the recovered state agrees with the kernel and Docker:\n{out}");
    orphans_are_found_by_state_check(&env);
    let app4 = format!("{PREFIX}app4");
    run_container(&app4, &["--network", &net, "-l", "id=app2"]).expect("a new container");
    let (n4, n6) = addresses(&app4, &net).expect("addresses");
    let taken: Vec<&Value> = before.values().flat_map(|e| [&e["ipv4"], &e["ipv6"]]).collect();
    assert!(!taken.iter().any(|a| a.as_str() == Some(&n4) || a.as_str() == Some(&n6)), "{n4} {n6} handed out twice");
    assert!(reaches(&app4, &a6, 80), "the new container is policy's app2 too");
    env.daemon.cli(&["policy", "delete", "--all"]).expect("delete");
    env.finish(&[&app1, &app2, &app3, &app4], &[&net]);
}

/// What a lost dockerd call leaves (a network and a joined endpoint dockerd never heard of,
/// made through the plugin socket) is reported by `state check`, then removed again.
fn orphans_are_found_by_state_check(env: &Env) {
    let d = &env.daemon;
    let (net, ep) = ("0f".repeat(32), "0e".repeat(32));
    let call = |method: &str, body: Value| d.plugin_call(method, &body).unwrap_or_else(|e| panic!("{method}: {e}"));
    let (pool, addr) = env.make_orphan(&net, &ep).expect("orphans");
    let (agree, out) = d.state_check().expect("state check");
    assert!(!agree, "differences exit non-zero:\n{out}");
    assert!(out.contains("network 0f0f0f0f0f0f is in the state, not in Docker"), "{out}");
    assert!(out.contains("endpoint 0e0e0e0e0e0e is joined in the state, not running in Docker"), "{out}");
    call("NetworkDriver.Leave", serde_json::json!({"NetworkID": net, "EndpointID": ep}));
    call("NetworkDriver.DeleteEndpoint", serde_json::json!({"NetworkID": net, "EndpointID": ep}));
    call("NetworkDriver.DeleteNetwork", serde_json::json!({"NetworkID": net}));
    let bare = addr["Address"].as_str().and_then(|a| a.split('/').next()).unwrap_or_default().to_owned();
    call("IpamDriver.ReleaseAddress", serde_json::json!({"PoolID": pool["PoolID"], "Address": bare}));
    call("IpamDriver.ReleasePool", serde_json::json!({"PoolID": pool["PoolID"]}));
    let (agree, out) = d.state_check().expect("state check");
    assert!(agree, "{out}");
}
