//! A crash between any two steps of CreateEndpoint, Join, Leave, DeleteEndpoint, a policy
//! import or a reconciliation pass leaves a state the next start repairs: the daemon aborts at
//! each crash point once (`CILIUM_RS_CRASH_AT`), its socket holder starts it again, and then the
//! daemon, the kernel and Docker agree, new containers connect, policy in the kernel is the
//! policy on record, and nothing is left behind.

use std::path::Path;
use std::time::Duration;

use integration::env::Env;
use integration::*;
use serde_json::Value;

const PLUGIN: &str = "crs-crash";
const PREFIX: &str = "crs-crash-";

const APP2_TO_APP1_80: &str = r#"[{"labels": [{"key": "name", "value": "crash-web"}],
  "endpointSelector": {"matchLabels": {"id": "app1"}},
  "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}],
               "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]"#;

/// A held daemon armed to crash once at `point`. It reconciles as by default (records younger
/// than a minute are left alone: dockerd's retries of a call the crash cut come within 30 s).
fn armed(point: &str, marker: &Path) -> Env {
    armed_with(point, marker, &[])
}

fn armed_with(point: &str, marker: &Path, extra: &[(&str, &str)]) -> Env {
    let marker = marker.to_str().expect("path");
    let mut env = vec![("CILIUM_RS_CRASH_AT", point), ("CILIUM_RS_CRASH_MARKER", marker)];
    env.extend_from_slice(extra);
    Env::setup_held(PLUGIN, PREFIX, &env)
}

/// The daemon crashed at `point` and its successor is serving.
fn crashed_and_back(env: &Env, point: &str, marker: &Path) {
    wait_until(Duration::from_secs(20), "the crash", || marker.exists())
        .unwrap_or_else(|e| panic!("{point} was never reached: {e}\n{}", env.daemon.log_text()));
    let holder = env.daemon.holder().expect("held");
    holder.wait_ready(2, Duration::from_secs(30)).expect("the daemon started again");
    let log = env.daemon.log_text();
    let said = log.lines().any(|l| l.contains("crash point reached") && l.contains(point));
    assert!(said, "the daemon said where it crashed:\n{log}");
}

fn agreeing(env: &Env, point: &str) {
    let mut last = String::new();
    wait_until(Duration::from_secs(30), "the daemon, the kernel and Docker to agree", || {
        let (agree, out) = env.daemon.state_check().expect("state check");
        last = out;
        agree
    })
    .unwrap_or_else(|e| panic!("after a crash at {point}: {e}\n{last}\n{}", env.daemon.log_text()));
}

fn ping(from: &str, to: &str) {
    let (ok, out) = exec(from, &["ping", "-c", "1", "-W", "3", to]).expect("exec");
    assert!(ok, "{from} cannot ping {to}: {out}");
}

/// After the crash: two new containers connect to each other on both families.
fn new_containers_connect(env: &Env, net: &str, point: &str) -> [String; 2] {
    let (x, y) = (format!("{PREFIX}x"), format!("{PREFIX}y"));
    run_container(&x, &["--network", net]).unwrap_or_else(|e| panic!("after a crash at {point}: {e}"));
    run_container(&y, &["--network", net]).unwrap_or_else(|e| panic!("after a crash at {point}: {e}"));
    let (y4, y6) = addresses(&y, net).expect("addresses");
    ping(&x, &y4);
    ping(&x, &y6);
    agreeing(env, point);
    [x, y]
}

#[test]
fn crashes_while_a_container_starts_are_repaired() {
    for point in ["create_endpoint.committed", "join.applied", "join.committed"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("crashed");
        let env = armed(point, &marker);
        let net = format!("{PREFIX}start");
        env.network(&net, &["--ipv6"]).expect("network");
        let first = format!("{PREFIX}first");
        // dockerd retries the call the crash left unanswered with an empty body; the daemon
        // after the crash answers it from its journal of calls in flight: the run succeeds.
        let started = run_container(&first, &["--network", &net]);
        crashed_and_back(&env, point, &marker);
        started.unwrap_or_else(|e| panic!("docker run across a crash at {point}: {e}\n{}", env.daemon.log_text()));
        let [x, y] = new_containers_connect(&env, &net, point);
        let (_, f6) = addresses(&first, &net).expect("addresses");
        ping(&x, &f6);
        env.finish(&[&first, &x, &y], &[&net]);
    }
}

#[test]
fn crashes_while_a_container_goes_are_repaired() {
    for point in ["leave.applied", "leave.committed", "delete_endpoint.kernel", "delete_endpoint.committed"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("crashed");
        let env = armed(point, &marker);
        let net = format!("{PREFIX}stop");
        env.network(&net, &["--ipv6"]).expect("network");
        let going = format!("{PREFIX}going");
        run_container(&going, &["--network", &net]).expect("run");
        let removed = docker(&["rm", "-f", &going]);
        crashed_and_back(&env, point, &marker);
        removed.unwrap_or_else(|e| panic!("docker rm across a crash at {point}: {e}\n{}", env.daemon.log_text()));
        assert!(inspect(&going).is_err(), "{going} is gone");
        let [x, y] = new_containers_connect(&env, &net, point);
        env.finish(&[&x, &y], &[&net]);
    }
}

#[test]
fn a_crash_during_a_policy_import_leaves_the_kernel_enforcing_the_policy_on_record() {
    for point in ["policy.applied", "policy.committed"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("crashed");
        let env = armed(point, &marker);
        let net = format!("{PREFIX}policy");
        env.network(&net, &["--ipv6"]).expect("network");
        let (app1, app2, app3) = (format!("{PREFIX}app1"), format!("{PREFIX}app2"), format!("{PREFIX}app3"));
        run_container_with(&app1, &["--network", &net, "-l", "id=app1"], &["sh", "-c", &http_servers("app1", &[80])])
            .expect("app1");
        run_container(&app2, &["--network", &net, "-l", "id=app2"]).expect("app2");
        run_container(&app3, &["--network", &net, "-l", "id=app3"]).expect("app3");
        env.wait_identities(&[&app1, &app2, &app3]).expect("identities");
        let _ = env.import_policy(APP2_TO_APP1_80);
        crashed_and_back(&env, point, &marker);
        env.wait_identities(&[&app1, &app2, &app3]).expect("identities after the crash");
        let rules: Value =
            serde_json::from_str(&env.daemon.cli(&["policy", "get", "-o", "json"]).expect("get")).expect("json");
        let on_record = rules["rules"].as_array().map_or(0, Vec::len);
        // Applied but not committed: the import did not happen. Committed: it did.
        assert_eq!(on_record, usize::from(point == "policy.committed"), "{point}: {rules}");
        let (a4, a6) = addresses(&app1, &net).expect("addresses");
        for addr in [&a4, &a6] {
            assert!(http_get(&app2, addr, 80, 2).expect("exec").is_some(), "{point}: app2 -> {addr}:80");
            let app3_reaches = http_get(&app3, addr, 80, 2).expect("exec").is_some();
            assert_eq!(app3_reaches, on_record == 0, "{point}: app3 -> {addr}:80 as the policy on record says");
        }
        agreeing(&env, point);
        env.daemon.cli(&["policy", "delete", "--all"]).expect("delete");
        env.finish(&[&app1, &app2, &app3], &[&net]);
    }
}

#[test]
fn a_crash_during_a_reconciliation_pass_is_repaired_by_the_next_one() {
    let point = "reconcile.endpoints";
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("crashed");
    // A pass every second, on anything older than 2 s.
    let env = armed_with(point, &marker, &[("CILIUM_RS_RECONCILE_INTERVAL", "1"), ("CILIUM_RS_RECONCILE_GRACE", "2")]);
    let net = format!("{PREFIX}recon");
    env.network(&net, &["--ipv6"]).expect("network");
    let (orphan_net, orphan_ep) = ("0d".repeat(32), "0c".repeat(32));
    env.make_orphan(&orphan_net, &orphan_ep).expect("orphans");
    crashed_and_back(&env, point, &marker);
    wait_until(Duration::from_secs(20), "the orphan network to be reconciled away", || {
        env.daemon.networks().is_ok_and(|n| n.len() == 1)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", env.daemon.log_text()));
    let [x, y] = new_containers_connect(&env, &net, point);
    env.finish(&[&x, &y], &[&net]);
}
