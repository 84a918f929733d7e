//! End-to-end policy: a real dockerd, containers with labels, rules imported through the CLI,
//! and real connections allowed or refused by the programs, over IPv4 and IPv6.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration::env::Env;
use integration::*;
use serde_json::Value;

const PLUGIN: &str = "crs-pol";
const PREFIX: &str = "crs-pol-";

fn setup() -> Env {
    Env::setup(PLUGIN, PREFIX, &[])
}

/// The container's addresses on `network`, IPv4 and IPv6.
fn both(container: &str, network: &str) -> Vec<String> {
    let (v4, v6) = addresses(container, network).expect("addresses");
    vec![v4, v6]
}

fn reaches(from: &str, addr: &str, port: u16) -> bool {
    http_get(from, addr, port, 2).expect("exec").is_some()
}

const APP2_TO_APP1_80: &str = r#"[{"labels": [{"key": "name", "value": "app1-web"}],
  "endpointSelector": {"matchLabels": {"id": "app1"}},
  "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}],
               "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]"#;

#[test]
fn the_classic_app1_app2_app3_scenario_on_both_families() {
    let env = setup();
    let net = format!("{PREFIX}classic");
    env.network(&net, &["--ipv6"]).expect("network");
    let (app1, app2, app3) = (format!("{PREFIX}app1"), format!("{PREFIX}app2"), format!("{PREFIX}app3"));
    run_container_with(&app1, &["--network", &net, "-l", "id=app1"], &["sh", "-c", &http_servers("app1", &[80, 81])])
        .expect("app1");
    run_container_with(&app3, &["--network", &net, "-l", "id=app3"], &["sh", "-c", &http_servers("app3", &[80])])
        .expect("app3");
    run_container(&app2, &["--network", &net, "-l", "id=app2"]).expect("app2");
    let ids = env.wait_identities(&[&app1, &app2, &app3]).expect("identities");
    assert_eq!(ids.values().collect::<std::collections::BTreeSet<_>>().len(), 3, "three label sets: {ids:?}");

    // Without policy everybody reaches app1.
    for addr in both(&app1, &net) {
        assert!(reaches(&app2, &addr, 80), "app2 -> {addr}:80 without policy");
        assert!(reaches(&app3, &addr, 80), "app3 -> {addr}:80 without policy");
    }

    let revision = env.import_policy(APP2_TO_APP1_80).expect("import");
    assert!(revision >= 2, "{revision}");
    for addr in both(&app1, &net) {
        assert!(reaches(&app2, &addr, 80), "app2 -> {addr}:80 is allowed (and app1's replies flow)");
        assert!(!reaches(&app3, &addr, 80), "app3 -> {addr}:80 is refused");
        assert!(!reaches(&app2, &addr, 81), "app2 -> {addr}:81 is refused");
    }
    assert!(env.drops(&app1, "POLICY_DENIED", "ingress") > 0, "refusals are counted on app1's ingress");
    // app1's own egress stays open, and app3's ingress is not restricted.
    for addr in both(&app3, &net) {
        assert!(reaches(&app1, &addr, 80), "app1 -> app3 {addr}:80 (app1's egress is not selected)");
    }
    let (ok, out) = exec(&app1, &["ping", "-c", "1", "-W", "2", &both(&app2, &net)[1]]).expect("exec");
    assert!(ok, "app1 pings app2: {out}");

    // The trace agrees with the datapath.
    let trace = env
        .daemon
        .cli(&["policy", "trace", "--src", "id=app3", "--dst", "id=app1", "--dport", "80/tcp", "-o", "json"])
        .expect("trace");
    let trace: Value = serde_json::from_str(&trace).expect("trace json");
    assert_eq!(trace["allowed"], false, "{trace}");

    // Deleting the policy restores access.
    env.daemon.cli(&["policy", "delete", "name=app1-web"]).expect("delete");
    for addr in both(&app1, &net) {
        assert!(reaches(&app3, &addr, 80), "app3 -> {addr}:80 after the policy is gone");
        assert!(reaches(&app2, &addr, 81), "app2 -> {addr}:81 after the policy is gone");
    }
    env.finish(&[&app1, &app2, &app3], &[&net]);
}

/// A line-per-100-ms TCP stream from `from` to `addr`:`port`; the receiver writes what it gets
/// to /tmp/recv in its container.
fn stream(from: &str, addr: &str, port: u16) -> Child {
    let script = format!("i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done | nc {addr} {port}");
    Command::new(DOCKER)
        .args(["exec", from, "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the stream")
}

fn received(container: &str) -> usize {
    exec(container, &["sh", "-c", "cat /tmp/recv 2>/dev/null | wc -l"])
        .ok()
        .and_then(|(_, out)| out.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn revoking_an_allow_cuts_an_established_connection_within_a_second() {
    let env = setup();
    let net = format!("{PREFIX}revoke");
    env.network(&net, &["--ipv6"]).expect("network");
    let (server, client) = (format!("{PREFIX}srv"), format!("{PREFIX}cli"));
    for family in 0..2 {
        // A stdin that stays open: busybox nc quits listening when its stdin ends.
        let listen = "sleep 3600 | nc -l -p 8080 > /tmp/recv";
        run_container_with(&server, &["--network", &net, "-l", "id=server"], &["sh", "-c", listen]).expect("server");
        run_container(&client, &["--network", &net, "-l", "id=client"]).expect("client");
        env.wait_identities(&[&server, &client]).expect("identities");
        let allow = r#"[{"labels": [{"key": "name", "value": "stream"}],
            "endpointSelector": {"matchLabels": {"id": "server"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "client"}}],
                         "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]}]"#;
        env.import_policy(allow).expect("allow");
        let addr = both(&server, &net)[family].clone();
        let mut sender = stream(&client, &addr, 8080);
        wait_until(Duration::from_secs(10), "data over the established connection", || received(&server) >= 5)
            .unwrap_or_else(|e| panic!("{addr}: {e}"));

        // The same rule, now allowing another port only: the established flow is revoked.
        let revoke = allow.replace("8080", "9090");
        env.import_policy(&revoke).expect("revoke");
        let revoked_at = Instant::now();
        let at_revocation = received(&server);
        std::thread::sleep(Duration::from_millis(1000).saturating_sub(revoked_at.elapsed()));
        let after_one_second = received(&server);
        std::thread::sleep(Duration::from_millis(1500));
        let later = received(&server);
        assert!(
            later == after_one_second && after_one_second <= at_revocation + 2,
            "{addr}: data still flows after the revocation: {at_revocation} -> {after_one_second} -> {later}"
        );
        assert!(env.drops(&server, "POLICY_DENIED", "ingress") > 0, "the cut packets are counted");
        let _ = sender.kill();
        let _ = sender.wait();
        env.daemon.cli(&["policy", "delete", "--all"]).expect("delete");
        for c in [&server, &client] {
            docker(&["rm", "-f", c]).expect("rm");
        }
    }
    env.finish(&[], &[&net]);
}

#[test]
fn a_deny_rule_overrides_an_allow() {
    let env = setup();
    let net = format!("{PREFIX}deny");
    env.network(&net, &["--ipv6"]).expect("network");
    let (web, good, bad) = (format!("{PREFIX}web"), format!("{PREFIX}good"), format!("{PREFIX}bad"));
    run_container_with(&web, &["--network", &net, "-l", "id=web"], &["sh", "-c", &http_servers("web", &[80])])
        .expect("web");
    run_container(&good, &["--network", &net, "-l", "id=good"]).expect("good");
    run_container(&bad, &["--network", &net, "-l", "id=bad"]).expect("bad");
    env.wait_identities(&[&web, &good, &bad]).expect("identities");
    let policy = r#"[{"endpointSelector": {"matchLabels": {"id": "web"}},
        "ingress": [{"fromEndpoints": [{}]}],
        "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"id": "bad"}}]}]}]"#;
    env.import_policy(policy).expect("import");
    for addr in both(&web, &net) {
        assert!(reaches(&good, &addr, 80), "good -> {addr}: allowed by the allow-all-endpoints rule");
        assert!(!reaches(&bad, &addr, 80), "bad -> {addr}: the deny wins");
    }
    assert!(env.drops(&web, "POLICY_DENY_RULE", "ingress") > 0, "counted as denied by a rule");
    env.daemon.cli(&["policy", "delete", "--all"]).expect("delete");
    env.finish(&[&web, &good, &bad], &[&net]);
}

#[test]
fn the_host_entity_admits_the_host_and_nobody_else() {
    let env = setup();
    let net = format!("{PREFIX}host");
    env.network(&net, &["--ipv6"]).expect("network");
    let (web, peer) = (format!("{PREFIX}hweb"), format!("{PREFIX}hpeer"));
    run_container_with(&web, &["--network", &net, "-l", "id=hweb"], &["sh", "-c", &http_servers("hweb", &[80])])
        .expect("web");
    run_container(&peer, &["--network", &net, "-l", "id=hpeer"]).expect("peer");
    env.wait_identities(&[&web, &peer]).expect("identities");
    env.import_policy(
        r#"[{"endpointSelector": {"matchLabels": {"id": "hweb"}}, "ingress": [{"fromEntities": ["host"]}]}]"#,
    )
    .expect("import");
    let (v4, _) = addresses(&web, &net).expect("addresses");
    // From the host's own namespace (its address is identity host).
    let host = Command::new("sh")
        .args(["-c", &format!("echo GET | busybox nc -w 2 {v4} 80")])
        .output()
        .expect("nc from the host");
    assert!(String::from_utf8_lossy(&host.stdout).contains("200 OK"), "the host reaches hweb: {host:?}");
    for addr in both(&web, &net) {
        assert!(!reaches(&peer, &addr, 80), "another container does not ({addr})");
    }
    env.daemon.cli(&["policy", "delete", "--all"]).expect("delete");
    env.finish(&[&web, &peer], &[&net]);
}

/// A test host outside the containers: a namespace behind a veth, with documentation
/// addresses, routing back to the containers through the host; removed on drop.
#[test]
fn egress_to_cidr_and_cidr_sets_with_except() {
    // Outside is reached through the egress programs, masqueraded.
    let env = Env::setup(PLUGIN, PREFIX, &[("CILIUM_RS_EGRESS_INTERFACE", outside::OUTSIDE_IF)]);
    let mut ext = outside::Outside::new(&format!("{PREFIX}out")).expect("outside");
    ext.serve_http(&[80, 81]).expect("serve");
    let net = format!("{PREFIX}cidr");
    env.network(&net, &["--ipv6"]).expect("network");
    let (limited, free) = (format!("{PREFIX}limited"), format!("{PREFIX}free"));
    run_container(&limited, &["--network", &net, "-l", "id=limited"]).expect("limited");
    run_container(&free, &["--network", &net, "-l", "id=free"]).expect("free");
    env.wait_identities(&[&limited, &free]).expect("identities");
    wait_until(Duration::from_secs(10), "the outside servers", || reaches(&free, outside::OUTSIDE4, 80))
        .expect("servers up, reachable without policy");

    let policy = r#"[{"endpointSelector": {"matchLabels": {"id": "limited"}},
        "egress": [{"toCIDR": ["198.51.100.2/32", "2001:db8:100::2/128"],
                    "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]"#;
    env.import_policy(policy).expect("import");
    for (addr, other) in [(outside::OUTSIDE4, outside::OTHER4), (outside::OUTSIDE6, outside::OTHER6)] {
        assert!(reaches(&limited, addr, 80), "limited -> {addr}:80 allowed by toCIDR");
        assert!(!reaches(&limited, addr, 81), "limited -> {addr}:81 refused");
        assert!(!reaches(&limited, other, 80), "limited -> {other}:80: another outside address, refused");
        assert!(reaches(&free, addr, 81), "free (no egress policy) -> {addr}:81");
        assert!(reaches(&free, other, 80), "free -> {other}:80");
    }
    assert!(env.drops(&limited, "POLICY_DENIED", "egress") > 0);

    // A CIDR set whose except covers the outside host: refused even on port 80.
    let except = r#"[{"endpointSelector": {"matchLabels": {"id": "limited"}},
        "egress": [{"toCIDRSet": [{"cidr": "198.51.100.0/24", "except": ["198.51.100.2/32"]},
                                  {"cidr": "2001:db8:100::/64", "except": ["2001:db8:100::2/128"]}]}]}]"#;
    env.daemon.cli(&["policy", "delete", "--all"]).expect("delete");
    env.import_policy(except).expect("import the except");
    for (addr, other) in [(outside::OUTSIDE4, outside::OTHER4), (outside::OUTSIDE6, outside::OTHER6)] {
        assert!(!reaches(&limited, addr, 80), "limited -> {addr}: excepted");
        assert!(reaches(&limited, other, 80), "limited -> {other}: in the set, not excepted");
    }
    let wider =
        except.replace("198.51.100.2/32", "198.51.100.128/25").replace("2001:db8:100::2/128", "2001:db8:100::8000/113");
    env.daemon.cli(&["policy", "delete", "--all"]).expect("delete");
    env.import_policy(&wider).expect("import another except");
    for addr in [outside::OUTSIDE4, outside::OUTSIDE6] {
        assert!(reaches(&limited, addr, 80), "limited -> {addr}: inside the set, outside its except");
    }
    // World entity: all of outside, and nothing else.
    let world = r#"[{"endpointSelector": {"matchLabels": {"id": "limited"}},
        "egress": [{"toEntities": ["world"]}]}]"#;
    env.daemon.cli(&["policy", "delete", "--all"]).expect("delete");
    env.import_policy(world).expect("import world");
    let (free_v4, _) = addresses(&free, &net).expect("addresses");
    for addr in [outside::OUTSIDE4, outside::OTHER6] {
        assert!(reaches(&limited, addr, 81), "limited -> {addr}: world");
    }
    let pings = |to: &str| exec(&limited, &["ping", "-c", "1", "-W", "2", to]).expect("exec").0;
    assert!(!pings(&free_v4), "world is not another container");
    assert!(pings(outside::OUTSIDE4), "but it is every outside address, any protocol");
    env.daemon.cli(&["policy", "delete", "--all"]).expect("delete");
    drop(ext);
    env.finish(&[&limited, &free], &[&net]);
}

#[test]
fn a_container_that_connects_at_once_on_start_succeeds_at_the_first_try() {
    let env = setup();
    let net = format!("{PREFIX}first");
    env.network(&net, &["--ipv6"]).expect("network");
    let web = format!("{PREFIX}fweb");
    run_container_with(&web, &["--network", &net, "-l", "id=fweb"], &["sh", "-c", &http_servers("fweb", &[80])])
        .expect("web");
    env.wait_identities(&[&web]).expect("identity");
    env.import_policy(
        r#"[{"endpointSelector": {"matchLabels": {"id": "fweb"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "fclient"}}]}]}]"#,
    )
    .expect("import");
    let (v4, v6) = addresses(&web, &net).expect("addresses");
    for (round, addr) in [v4, v6].iter().cycle().take(6).enumerate() {
        let name = format!("{PREFIX}fclient{round}");
        // `nc -w 1`: a first SYN lost to a late identity would need a retransmission after 1 s.
        let script = format!("echo GET | nc -w 1 {addr} 80");
        let label = format!("{TEST_LABEL}=1");
        let out = docker(&[
            "run",
            "--name",
            &name,
            "--label",
            &label,
            "-l",
            "id=fclient",
            "--network",
            &net,
            IMAGE,
            "sh",
            "-c",
            &script,
        ])
        .unwrap_or_else(|e| panic!("round {round}: {e:#}\n{}", env.daemon.log_text()));
        assert!(out.contains("200 OK"), "round {round}: {addr}: {out}");
        docker(&["rm", "-f", &name]).expect("rm");
    }
    assert_eq!(env.drops(&web, "POLICY_DENIED", "ingress"), 0, "no packet of a starting client was refused");
    env.daemon.cli(&["policy", "delete", "--all"]).expect("delete");
    env.finish(&[&web], &[&net]);
}

#[test]
fn policy_survives_kill_9_and_a_restart() {
    let mut env = setup();
    let net = format!("{PREFIX}restart");
    env.network(&net, &["--ipv6"]).expect("network");
    let (app1, app2, app3) = (format!("{PREFIX}rapp1"), format!("{PREFIX}rapp2"), format!("{PREFIX}rapp3"));
    run_container_with(&app1, &["--network", &net, "-l", "id=app1"], &["sh", "-c", &http_servers("app1", &[80])])
        .expect("app1");
    run_container(&app2, &["--network", &net, "-l", "id=app2"]).expect("app2");
    run_container(&app3, &["--network", &net, "-l", "id=app3"]).expect("app3");
    let before = env.wait_identities(&[&app1, &app2, &app3]).expect("identities");
    env.import_policy(APP2_TO_APP1_80).expect("import");
    let check = |when: &str| {
        for addr in both(&app1, &net) {
            assert!(reaches(&app2, &addr, 80), "{when}: app2 -> {addr} allowed");
            assert!(!reaches(&app3, &addr, 80), "{when}: app3 -> {addr} refused");
        }
    };
    check("with the daemon running");
    env.daemon.kill9().expect("kill -9");
    check("with the daemon down (pinned maps enforce)");
    env.daemon.spawn().expect("restart");
    let rules: Value =
        serde_json::from_str(&env.daemon.cli(&["policy", "get", "-o", "json"]).expect("get")).expect("rules json");
    assert_eq!(rules["rules"].as_array().map(Vec::len), Some(1), "{rules}");
    let after = env.wait_identities(&[&app1, &app2, &app3]).expect("identities after restart");
    assert_eq!(before, after, "the endpoints keep their identities");
    check("after the restart");
    env.daemon.cli(&["policy", "delete", "--all"]).expect("delete");
    env.finish(&[&app1, &app2, &app3], &[&net]);
}

/// Refusal of what cilium-rs does not implement reaches the user through the CLI.
#[test]
fn unsupported_fields_are_refused_by_name() {
    let env = setup();
    let file = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(
        file.path(),
        r#"[{"endpointSelector": {}, "egress": [{"toFQDNs": [{"matchName": "example.com"}]}]}]"#,
    )
    .expect("write");
    let out = output(&[
        &binary().to_string_lossy(),
        "--api-socket",
        &env.daemon.api_socket.to_string_lossy(),
        "policy",
        "import",
        &file.path().to_string_lossy(),
    ])
    .expect("run the cli");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unsupported field was accepted: {text}");
    assert!(text.contains("rules[0].egress[0].toFQDNs") && text.contains("not supported"), "{text}");
    let rules: Value =
        serde_json::from_str(&env.daemon.cli(&["policy", "get", "-o", "json"]).expect("get")).expect("json");
    assert_eq!(rules["rules"].as_array().map(Vec::len), Some(0));
    env.finish(&[], &[]);
}

/// Fifty `docker run`s at once while rules are imported and deleted in a loop: every
/// container connected with addresses of its own, and identities that follow labels.
#[test]
fn fifty_containers_started_in_parallel_while_policies_are_imported() {
    let env = setup();
    let net = format!("{PREFIX}fifty");
    env.network(&net, &["--ipv6"]).expect("network");
    let names: Vec<String> = (0..50).map(|i| format!("{PREFIX}f{i}")).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let importer = {
        let (stop, socket) = (stop.clone(), env.daemon.api_socket.clone());
        std::thread::spawn(move || {
            let file = tempfile::NamedTempFile::new().expect("policy file");
            std::fs::write(file.path(), APP2_TO_APP1_80).expect("write");
            let cli = |args: &[&str]| {
                let mut argv = vec![binary().to_string_lossy().into_owned(), "--api-socket".into()];
                argv.push(socket.to_string_lossy().into_owned());
                argv.extend(args.iter().map(|a| a.to_string()));
                run(&argv.iter().map(String::as_str).collect::<Vec<_>>()).expect("policy command")
            };
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                cli(&["policy", "import", &file.path().to_string_lossy()]);
                cli(&["policy", "delete", "--all"]);
                rounds += 1;
            }
            rounds
        })
    };
    let started: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (name, net, label) = (name.clone(), net.clone(), format!("id=app{}", i % 5));
            std::thread::spawn(move || run_container(&name, &["--network", &net, "-l", &label]))
        })
        .collect();
    for handle in started {
        handle.join().expect("thread").expect("docker run");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = importer.join().expect("importer");
    assert!(rounds > 0, "policies were imported while the containers started");

    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let identities = env.wait_identities(&refs).expect("identities");
    let mut seen = std::collections::BTreeSet::new();
    for name in &names {
        for addr in both(name, &net) {
            assert!(seen.insert(addr.clone()), "{addr} handed out twice");
        }
    }
    for (i, name) in names.iter().enumerate() {
        let twin = &names[(i + 5) % 50];
        assert_eq!(identities[name], identities[twin], "{name} and {twin} carry the same labels");
    }
    let distinct: std::collections::BTreeSet<_> = identities.values().collect();
    assert_eq!(distinct.len(), 5, "five label sets, five identities: {identities:?}");
    // Every container is connected: each reaches the first one over IPv6.
    let first6 = both(&names[0], &net)[1].clone();
    let pings: Vec<_> = names[1..]
        .iter()
        .map(|name| {
            let (name, first6) = (name.clone(), first6.clone());
            std::thread::spawn(move || exec(&name, &["ping", "-c", "1", "-W", "3", &first6]))
        })
        .collect();
    for (handle, name) in pings.into_iter().zip(&names[1..]) {
        let (ok, out) = handle.join().expect("thread").expect("exec");
        assert!(ok, "{name} cannot reach {first6}: {out}");
    }
    env.finish(&refs, &[&net]);
}
