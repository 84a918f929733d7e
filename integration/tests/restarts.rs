//! Boot order and dockerd restarts: dockerd restarted with and without live restore while
//! containers run, and dockerd bringing `restart=always` containers back while the daemon is
//! still starting behind its held socket. Afterwards every running container is connected,
//! every stopped one's resources are released, the daemon, the kernel and Docker agree, and
//! `docker network rm` works.

use std::time::Duration;

use integration::dockerd::{restart_dockerd, restart_dockerd_stopping_containers, DockerdStopped, LiveRestore};
use integration::env::Env;
use integration::*;

const PLUGIN: &str = "crs-restart";
const PREFIX: &str = "crs-restart-";

fn ping(from: &str, to: &str) {
    let (ok, out) = exec(from, &["ping", "-c", "1", "-W", "3", to]).expect("exec");
    assert!(ok, "{from} cannot ping {to}: {out}");
}

fn running(container: &str) -> bool {
    inspect(container).is_ok_and(|i| i["State"]["Running"] == true)
}

/// The views agree (within the time identities and reconciliation take).
fn agreeing(env: &Env, when: &str) {
    let mut last = String::new();
    wait_until(Duration::from_secs(30), "the daemon, the kernel and Docker to agree", || {
        let (agree, out) = env.daemon.state_check().expect("state check");
        last = out;
        agree
    })
    .unwrap_or_else(|e| panic!("{when}: {e}\n{last}\n{}", env.daemon.log_text()));
}

fn endpoint_names(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = env
        .daemon
        .endpoints()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["container_name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[test]
fn dockerd_restarts_with_and_without_live_restore_keep_running_containers_and_release_stopped_ones() {
    // Reconciliation every second: what dockerd forgets while it is down is found quickly.
    let env =
        Env::setup_held(PLUGIN, PREFIX, &[("CILIUM_RS_RECONCILE_INTERVAL", "1"), ("CILIUM_RS_RECONCILE_GRACE", "2")]);
    let net = format!("{PREFIX}net");
    env.network(&net, &["--ipv6"]).expect("network");
    let (a, b, c) = (format!("{PREFIX}a"), format!("{PREFIX}b"), format!("{PREFIX}c"));
    run_container(&a, &["--network", &net, "--restart", "always"]).expect("a");
    run_container(&b, &["--network", &net, "--restart", "always"]).expect("b");
    run_container(&c, &["--network", &net]).expect("c");
    agreeing(&env, "before");

    {
        let _live = LiveRestore::enable();
        restart_dockerd();
        for container in [&a, &b, &c] {
            assert!(running(container), "{container} outlives a dockerd restart with live restore");
        }
        let (_, b6) = addresses(&b, &net).expect("b");
        let (c4, _) = addresses(&c, &net).expect("c");
        ping(&a, &b6);
        ping(&a, &c4);
        agreeing(&env, "after a dockerd restart with live restore");
    }

    // Without live restore dockerd stops every container with it; `restart=always` ones come
    // back (new endpoints), the other one stays stopped and keeps nothing.
    restart_dockerd_stopping_containers();
    wait_until(Duration::from_secs(60), "a and b back", || running(&a) && running(&b)).expect("restart=always");
    assert!(!running(&c), "c has no restart policy");
    agreeing(&env, "after a dockerd restart without live restore");
    assert_eq!(endpoint_names(&env), [a.clone(), b.clone()], "c's endpoint is released");
    let (_, b6) = addresses(&b, &net).expect("b");
    ping(&a, &b6);
    env.finish(&[&a, &b, &c], &[&net]);
}

#[test]
fn restart_always_containers_come_back_connected_while_the_daemon_starts_behind_its_socket() {
    let env = Env::setup_held(PLUGIN, PREFIX, &[]);
    let net = format!("{PREFIX}boot");
    env.network(&net, &["--ipv6"]).expect("network");
    let names: Vec<String> = (0..4).map(|i| format!("{PREFIX}boot{i}")).collect();
    for name in &names {
        run_container(name, &["--network", &net, "--restart", "always"]).expect("run");
    }
    agreeing(&env, "before");
    // A reboot, as the units order it: dockerd stops every container with it, the daemon dies,
    // the socket stays held; dockerd comes up while the daemon is down or still starting, and
    // its calls for the `restart=always` containers wait in the socket's backlog.
    let holder = env.daemon.holder().expect("held");
    let stopped = DockerdStopped::stop_with_containers();
    let starts = holder.starts();
    env.daemon.crash().expect("kill -9 the daemon");
    stopped.start();
    holder.wait_ready(starts as usize + 1, Duration::from_secs(30)).expect("the daemon back");
    wait_until(Duration::from_secs(90), "every container back", || names.iter().all(|n| running(n)))
        .unwrap_or_else(|e| panic!("{e}\n{}", env.daemon.log_text()));
    agreeing(&env, "after the boot");
    let (_, first6) = addresses(&names[0], &net).expect("addresses");
    for name in &names[1..] {
        ping(name, &first6);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    env.finish(&refs, &[&net]);
}

/// The ids of the programs on one hook of a host-side veth, as `tc` shows them.
fn tc_programs(link: &str, hook: &str) -> Vec<String> {
    let text = run(&["tc", "filter", "show", "dev", link, hook]).expect("tc");
    text.lines()
        .filter(|l| l.contains("direct-action"))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.iter().position(|w| *w == "id").and_then(|i| words.get(i + 1)).map(|id| (*id).to_owned())
        })
        .collect()
}

/// Lines the stream's receiver got so far.
fn received(container: &str) -> usize {
    let (_, out) = exec(container, &["sh", "-c", "wc -l < /tmp/recv"]).expect("exec");
    out.trim().parse().unwrap_or(0)
}

fn still_flowing(container: &str) -> bool {
    let before = received(container);
    wait_until(Duration::from_secs(3), "more lines", || received(container) > before).is_ok()
}

#[test]
fn an_upgraded_binary_takes_over_without_dropping_established_flows() {
    let mut env = Env::setup(PLUGIN, PREFIX, &[]);
    let net = format!("{PREFIX}upgrade");
    env.network(&net, &["--ipv6"]).expect("network");
    let (server, client) = (format!("{PREFIX}server"), format!("{PREFIX}client"));
    run_container_with(&server, &["--network", &net], &["sh", "-c", "sleep 3600 | nc -l -p 8080 > /tmp/recv"])
        .expect("server");
    run_container(&client, &["--network", &net]).expect("client");
    let (_, s6) = addresses(&server, &net).expect("addresses");
    let stream = format!("while true; do echo tick; sleep 0.1; done | nc {s6} 8080");
    docker(&["exec", "-d", &client, "sh", "-c", &stream]).expect("stream");
    assert!(still_flowing(&server), "the stream flows");
    let link = env
        .daemon
        .endpoints()
        .expect("endpoints")
        .iter()
        .find(|e| e["container_name"] == client.as_str())
        .and_then(|e| e["host_ifname"].as_str().map(str::to_owned))
        .expect("the client's veth");
    let before = (tc_programs(&link, "ingress"), tc_programs(&link, "egress"));
    assert_eq!((before.0.len(), before.1.len()), (1, 1), "one program per hook: {before:?}");

    // The new build: another file, started in place of the old daemon (stopped cleanly).
    let dir = tempfile::tempdir().expect("tempdir");
    let next = dir.path().join("cilium-rs-next");
    std::fs::copy(binary(), &next).expect("copy the binary");
    assert_eq!(env.daemon.terminate().expect("stop the old daemon"), Some(0));
    assert!(still_flowing(&server), "the stream flows with no daemon");
    env.daemon.program = Some(next.clone());
    env.daemon.spawn().expect("start the new binary");
    let pid = env.daemon.pid().expect("pid");
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe"), next, "the new binary runs");
    // It answers once its sockets are bound and restores the datapath right after.
    let mut after = before.clone();
    wait_until(Duration::from_secs(10), "the new daemon's programs on the veth", || {
        after = (tc_programs(&link, "ingress"), tc_programs(&link, "egress"));
        after.0 != before.0 && after.1 != before.1
    })
    .unwrap_or_else(|e| panic!("{e}: {before:?} -> {after:?}\n{}", env.daemon.log_text()));
    assert_eq!((after.0.len(), after.1.len()), (1, 1), "still one program per hook: {after:?}");
    assert!(still_flowing(&server), "the stream flows under the new daemon");
    let (agree, out) = env.daemon.state_check().expect("state check");
    assert!(agree, "{out}");
    env.finish(&[&server, &client], &[&net]);
}
