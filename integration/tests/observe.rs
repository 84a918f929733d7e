//! End-to-end: what the daemon shows of itself with a real dockerd — container and network
//! names, one endpoint in full, the kernel maps with names, a conntrack flush, and the status
//! while dockerd is stopped and after it is back.

use std::time::Duration;

use anyhow::{Context, Result};
use integration::dockerd::{DockerdStopped, LiveRestore};
use integration::env::Env;
use integration::*;
use serde_json::Value;

const PLUGIN: &str = "crs-obs";
const PREFIX: &str = "crs-obs-";

fn json(daemon: &Daemon, args: &[&str]) -> Value {
    let mut argv = args.to_vec();
    argv.extend(["-o", "json"]);
    let text = daemon.cli(&argv).unwrap_or_else(|e| panic!("{e:#}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
}

fn rows(value: &Value) -> &Vec<Value> {
    value.as_array().unwrap_or_else(|| panic!("not a list: {value}"))
}

/// The conntrack entries between two containers (by name), either way.
fn flows_between(daemon: &Daemon, a: &str, b: &str) -> Vec<Value> {
    let ct = json(daemon, &["bpf", "ct", "list"]);
    let names = |f: &Value| (f["initiator"]["name"].clone(), f["responder"]["name"].clone());
    rows(&ct["entries"])
        .iter()
        .filter(|f| {
            let (i, r) = names(f);
            (i == a && r == b) || (i == b && r == a)
        })
        .cloned()
        .collect()
}

/// The status once `check` holds for it (within `timeout`), with the CLI's exit status.
fn status_when(daemon: &Daemon, timeout: Duration, what: &str, check: impl Fn(bool, &Value) -> bool) -> (bool, Value) {
    let mut last: Result<(bool, Value)> = Err(anyhow::anyhow!("never asked"));
    let found = wait_until(timeout, what, || {
        last = daemon.status();
        last.as_ref().is_ok_and(|(ok, status)| check(*ok, status))
    });
    match (found, last) {
        (Ok(()), Ok(status)) => status,
        (_, last) => panic!("{what}: last status {last:?}\ndaemon log:\n{}", daemon.log_text()),
    }
}

#[test]
fn names_dumps_flush_and_status_through_a_dockerd_restart() {
    let env = Env::setup(PLUGIN, PREFIX, &[]);
    let daemon = &env.daemon;
    let net = format!("{PREFIX}net");
    let (web, api) = (format!("{PREFIX}web"), format!("{PREFIX}api"));
    let net_id = env.network(&net, &["--ipv6"]).expect("network");
    run_container_with(&web, &["--network", &net, "-l", "app=web"], &["sh", "-c", &http_servers("web", &[80])])
        .expect("web");
    run_container(&api, &["--network", &net, "-l", "app=api"]).expect("api");
    let (web4, web6) = addresses(&web, &net).expect("web's addresses");

    // Names everywhere: containers and networks, which dockerd never sends the driver.
    wait_until(Duration::from_secs(10), "both endpoints named, with identities", || {
        daemon.endpoints().is_ok_and(|list| {
            list.len() == 2
                && list.iter().all(|e| e["network_name"] == net.as_str() && e["identity_name"] != "init")
                && [&web, &api].iter().all(|n| list.iter().any(|e| e["container_name"] == n.as_str()))
        })
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", daemon.endpoints(), daemon.log_text()));
    let networks = daemon.networks().expect("networks");
    assert_eq!((networks[0]["id"].as_str(), networks[0]["name"].as_str()), (Some(net_id.as_str()), Some(net.as_str())));
    let table = daemon.cli(&["network", "list"]).expect("network list");
    assert!(table.lines().nth(1).is_some_and(|l| l.contains(&net)), "{table}");
    let table = daemon.cli(&["endpoint", "list"]).expect("endpoint list");
    assert!(table.lines().any(|l| l.contains(&web) && l.contains(&net)), "{table}");

    // One endpoint in full, by container name.
    let detail = json(daemon, &["endpoint", "get", &web]);
    assert_eq!(detail["container_name"], web.as_str(), "{detail}");
    assert_eq!((detail["ipv4"].as_str(), detail["ipv6"].as_str()), (Some(web4.as_str()), Some(web6.as_str())));
    assert_eq!(detail["network_name"], net.as_str());
    assert_eq!(detail["datapath_identity"], detail["identity"], "{detail}");
    assert!(detail["labels"].as_array().is_some_and(|l| l.contains(&Value::from("container:app=web"))), "{detail}");
    assert_eq!(detail["policy"]["ingress_enforced"], false, "no rule selects it");
    let table = daemon.cli(&["endpoint", "get", &web]).expect("endpoint get");
    assert!(table.contains(&web4) && table.contains("ingress not enforced"), "{table}");
    let short: String = detail["id"].as_str().expect("id").chars().take(8).collect();
    assert_eq!(json(daemon, &["endpoint", "get", &short])["container_name"], web.as_str(), "by id prefix");

    // A flow between the two, then the maps with its entries named.
    assert!(http_get(&api, &web6, 80, 3).expect("exec").is_some(), "api reaches web");
    let endpoints = json(daemon, &["bpf", "endpoints", "list"]);
    let entry = rows(&endpoints).iter().find(|e| e["container"] == web.as_str()).expect("web in crs_endpoints");
    assert_eq!((entry["network"].as_str(), entry["ipv6"].as_str()), (Some(net.as_str()), Some(web6.as_str())));
    let ipcache = json(daemon, &["bpf", "ipcache", "list"]);
    let entry = rows(&ipcache).iter().find(|e| e["prefix"] == format!("{web6}/128")).expect("web in crs_ipcache");
    assert_eq!(entry["name"], web.as_str(), "{entry}");
    let policy = json(daemon, &["bpf", "policy", "list"]);
    assert!(
        rows(&policy)
            .iter()
            .any(|p| p["local_endpoints"].as_array().is_some_and(|l| l.contains(&Value::from(web.as_str())))),
        "{policy}"
    );
    let flows = flows_between(daemon, &api, &web);
    assert!(flows.iter().any(|f| f["initiator"]["name"] == api.as_str() && f["responder"]["port"] == 80), "{flows:?}");
    assert!(json(daemon, &["bpf", "nat", "list"]).is_array());
    for map in ["endpoints", "ipcache", "policy", "ct", "nat"] {
        let table = daemon.cli(&["bpf", map, "list"]).unwrap_or_else(|e| panic!("bpf {map} list: {e:#}"));
        assert!(!table.is_empty(), "bpf {map} list prints a table");
    }
    assert!(daemon.cli(&["bpf", "ct", "list"]).expect("ct table").contains(&web), "the table names containers");

    // The flush empties conntrack; the next connection is checked as new and tracked again.
    let flushed = json(daemon, &["bpf", "ct", "flush"]);
    assert!(flushed["removed"].as_u64().is_some_and(|n| n >= 1), "{flushed}");
    let ct = json(daemon, &["bpf", "ct", "list"]);
    assert_eq!(ct["entries"], Value::Array(Vec::new()), "conntrack is empty after the flush");
    assert!(http_get(&api, &web6, 80, 3).expect("exec").is_some(), "connections still work after the flush");
    assert!(!flows_between(daemon, &api, &web).is_empty(), "and are tracked again");

    let (ok, status) = daemon.status().expect("status");
    assert!(ok && status["healthy"] == true, "{status}");
    assert_eq!(status["docker"]["state"], "connected");
    assert!(status["conntrack_entries"].as_u64().is_some_and(|n| n >= 1), "{status}");

    {
        // dockerd goes away (live restore keeps the containers) and comes back; stopping it is
        // undone by the guard even if an assertion fails in between.
        let _live = LiveRestore::enable();
        let api_pid = inspect(&api).expect("inspect")["State"]["Pid"].as_u64().expect("api's pid").to_string();
        let stopped = DockerdStopped::stop();
        let (ok, status) = status_when(daemon, Duration::from_secs(15), "the Docker connection down", |_, s| {
            s["docker"]["state"] == "reconnecting"
        });
        assert!(!ok, "status exits non-zero while dockerd is down: {status}");
        assert_eq!(status["healthy"], false);
        let problems = status["problems"].to_string();
        assert!(problems.contains("docker: reconnecting"), "{problems}");
        assert!(status["docker"]["last_error"].is_string(), "{status}");
        let table = daemon.cli(&["status"]).expect_err("unhealthy: non-zero exit");
        assert!(format!("{table:#}").contains("UNHEALTHY"), "{table:#}");
        // The datapath keeps going meanwhile (no `docker exec` without dockerd: enter api's
        // namespaces directly).
        let script = format!("echo GET | nc -w 3 {web6} 80");
        let answer = run(&["nsenter", "-t", &api_pid, "-m", "-u", "-i", "-n", "-p", "--", "sh", "-c", &script]);
        assert!(answer.as_ref().is_ok_and(|a| a.contains("200 OK")), "traffic flows with dockerd down: {answer:?}");
        stopped.start();
        let (ok, status) = status_when(daemon, Duration::from_secs(30), "the Docker connection back", |ok, s| {
            ok && s["docker"]["state"] == "connected"
        });
        assert_eq!(status["healthy"], true, "{status}");
        assert!(status["docker"]["connects"].as_u64().is_some_and(|n| n >= 2), "{status}");
        assert!(ok);
    }
    let list = daemon.endpoints().expect("endpoints");
    assert!(list.iter().any(|e| e["container_name"] == web.as_str() && e["network_name"] == net.as_str()), "{list:?}");
    let errors: Vec<String> = status_errors(daemon).expect("errors");
    assert!(errors.iter().any(|e| e.contains("docker connection lost")), "the outage was logged: {errors:?}");

    env.finish(&[&web, &api], &[&net]);
}

/// The messages of the errors the daemon kept.
fn status_errors(daemon: &Daemon) -> Result<Vec<String>> {
    let (_, status) = daemon.status()?;
    let errors = status["errors"].as_array().context("errors")?;
    Ok(errors.iter().map(|e| e["message"].as_str().unwrap_or_default().to_owned()).collect())
}
