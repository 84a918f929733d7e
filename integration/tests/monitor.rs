//! End-to-end observability: `cilium-rs monitor` against a real dockerd — a denied connection
//! between named containers shows up as a drop with both names, identities, the port and the
//! reason; an allowed one as a verdict; a traced endpoint's packets as traces; and a flood of
//! drops is rate-limited in the kernel while the daemon stays responsive and small.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use integration::env::Env;
use integration::*;
use serde_json::Value;

const PLUGIN: &str = "crs-mon";
const PREFIX: &str = "crs-mon-";

/// Only app=api may reach app=web, on TCP 80.
const API_TO_WEB: &str = r#"[{"labels": [{"key": "name", "value": "web"}],
  "endpointSelector": {"matchLabels": {"app": "web"}},
  "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "api"}}],
               "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]"#;

/// A running `cilium-rs monitor --json`: its lines, each with the time it arrived.
struct Monitor {
    child: Child,
    lines: Receiver<(Instant, Value)>,
}

impl Monitor {
    fn start(env: &Env, args: &[&str]) -> Monitor {
        let mut child = Command::new(binary())
            .arg("--api-socket")
            .arg(&env.daemon.api_socket)
            .args(["monitor", "--json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cilium-rs monitor");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if tx.send((Instant::now(), value)).is_err() {
                    return;
                }
            }
        });
        Monitor { child, lines }
    }

    /// The first line that `wanted` accepts within `timeout` (others are skipped).
    fn find(&self, timeout: Duration, wanted: impl Fn(&Value) -> bool) -> Option<(Instant, Value)> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if wanted(&line) => return Some((at, line)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Every line that arrives within `period`.
    fn collect(&self, period: Duration) -> Vec<Value> {
        let deadline = Instant::now() + period;
        let mut all = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok((_, line)) => all.push(line),
                Err(_) => break,
            }
        }
        all
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is(line: &Value, kind: &str, from: &str, to: &str) -> bool {
    line["type"] == kind && line["source"]["container"] == from && line["destination"]["container"] == to
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Starts web (app=web, serving on 80), api and other, with API_TO_WEB imported.
fn stack(env: &Env, net: &str) -> (String, String, String) {
    env.network(net, &["--ipv6"]).expect("network");
    let (web, api, other) = (format!("{PREFIX}web"), format!("{PREFIX}api"), format!("{PREFIX}other"));
    run_container_with(&web, &["--network", net, "-l", "app=web"], &["sh", "-c", &http_servers("web", &[80])])
        .expect("web");
    run_container(&api, &["--network", net, "-l", "app=api"]).expect("api");
    run_container(&other, &["--network", net, "-l", "app=other"]).expect("other");
    env.wait_identities(&[&web, &api, &other]).expect("identities");
    env.import_policy(API_TO_WEB).expect("import");
    (web, api, other)
}

#[test]
fn drops_and_verdicts_name_both_containers_and_traces_follow_one_endpoint() {
    let env = Env::setup(PLUGIN, PREFIX, &[]);
    let net = format!("{PREFIX}net");
    let (web, api, other) = stack(&env, &net);
    let ids = env.wait_identities(&[&web, &api, &other]).expect("identities");
    let (web4, web6) = addresses(&web, &net).expect("addresses");
    let monitor = Monitor::start(&env, &[]);
    // The monitor is subscribed once it shows anything: keep refusing until it does.
    wait_until(Duration::from_secs(10), "the monitor's first line", || {
        let _ = http_get(&other, &web6, 80, 1);
        monitor.find(Duration::from_millis(300), |_| true).is_some()
    })
    .expect("the monitor shows events");
    let _ = monitor.collect(Duration::from_millis(500));

    for addr in [&web6, &web4] {
        let asked = Instant::now();
        let _ = http_get(&other, addr, 80, 1);
        let (at, drop) = monitor
            .find(Duration::from_secs(3), |l| is(l, "drop", &other, &web) && l["destination"]["address"] == **addr)
            .unwrap_or_else(|| panic!("no drop other -> web ({addr}) in the monitor"));
        assert!(at.duration_since(asked) < Duration::from_secs(1), "shown within 1 s: {:?}", at - asked);
        assert_eq!(drop["reason"], "POLICY_DENIED", "{drop}");
        assert_eq!(drop["direction"], "ingress", "{drop}");
        assert_eq!(drop["protocol"], "tcp", "{drop}");
        assert_eq!(drop["destination"]["port"], 80, "{drop}");
        assert_eq!(drop["source"]["identity"], ids[&other], "{drop}");
        assert_eq!(drop["destination"]["identity"], ids[&web], "{drop}");
        assert_eq!(drop["endpoint"], web.as_str(), "counted on web: {drop}");

        assert!(http_get(&api, addr, 80, 2).expect("exec").is_some(), "api reaches web");
        let (_, verdict) = monitor
            .find(Duration::from_secs(3), |l| is(l, "verdict", &api, &web) && l["destination"]["address"] == **addr)
            .unwrap_or_else(|| panic!("no verdict api -> web ({addr}) in the monitor"));
        assert_eq!(verdict["verdict"], "allowed", "{verdict}");
        assert_eq!(verdict["destination"]["port"], 80, "{verdict}");
        assert_eq!(verdict["source"]["identity"], ids[&api], "{verdict}");
    }

    // Filters: only what concerns api, and only drops.
    let related = Monitor::start(&env, &["--related-to", &api, "--type", "drop"]);
    std::thread::sleep(Duration::from_millis(500));
    let _ = http_get(&other, &web6, 80, 1);
    let _ = http_get(&api, &web6, 81, 1);
    let (_, line) = related.find(Duration::from_secs(3), |_| true).expect("api's refused port 81");
    assert!(is(&line, "drop", &api, &web) && line["destination"]["port"] == 81, "{line}");
    assert!(related.collect(Duration::from_millis(500)).iter().all(|l| l["source"]["container"] == api.as_str()));

    // A trace follows one endpoint's packets, both ways, while it runs.
    let trace = Monitor::start(&env, &["--type", "trace", "--endpoint", &web]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(http_get(&api, &web6, 80, 2).expect("exec").is_some(), "api reaches web");
    let lines = trace.collect(Duration::from_secs(1));
    let traced_in =
        lines.iter().any(|l| l["type"] == "trace" && l["endpoint"] == web.as_str() && is(l, "trace", &api, &web));
    let traced_out = lines.iter().any(|l| l["type"] == "trace" && is(l, "trace", &web, &api));
    assert!(traced_in && traced_out, "web's packets both ways: {lines:#?}");
    assert!(lines.iter().all(|l| l["type"] == "trace" || l["type"] == "suppressed"), "{lines:#?}");
    drop(trace);
    // Untraced once nobody watches: a new drop/verdict monitor sees no trace lines.
    std::thread::sleep(Duration::from_millis(300));
    let after = Monitor::start(&env, &["--type", "drop", "--type", "verdict", "--type", "trace", "--endpoint", &api]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(http_get(&api, &web6, 80, 2).expect("exec").is_some());
    let lines = after.collect(Duration::from_secs(1));
    assert!(!lines.iter().any(|l| l["type"] == "trace" && l["endpoint"] == web.as_str()), "web untraced: {lines:#?}");

    // The flow table has both: api -> web allowed, other -> web dropped, on port 80; the
    // allowed one counts its connections' packets both ways, from connection tracking.
    let mut flows: Vec<Value> = Vec::new();
    let counted = wait_until(Duration::from_secs(12), "the allowed flow's packets from conntrack", || {
        flows = serde_json::from_str(&env.daemon.cli(&["flows", "-o", "json"]).expect("flows")).expect("flows JSON");
        flows.iter().any(|f| {
            f["source"]["container"] == api.as_str() && f["verdict"] == "allowed" && f["packets"].as_u64() >= Some(6)
        })
    });
    let flow = |from: &str, verdict: &str| {
        flows.iter().find(|f| {
            f["source"]["container"] == from
                && f["destination"]["container"] == web.as_str()
                && f["port"] == 80
                && f["verdict"] == verdict
        })
    };
    let allowed = flow(&api, "allowed").unwrap_or_else(|| panic!("api -> web allowed: {flows:#?}"));
    assert!(counted.is_ok() && allowed["bytes"].as_u64() > Some(300), "{allowed}");
    let dropped = flow(&other, "dropped").unwrap_or_else(|| panic!("other -> web dropped: {flows:#?}"));
    assert!(dropped["packets"].as_u64() >= Some(2) && dropped["reason"] == "POLICY_DENIED", "{dropped}");
    let table = env.daemon.cli(&["flows", "--endpoint", &other]).expect("flows table");
    assert!(table.contains("dropped") && !table.contains("allowed"), "only other's flows:\n{table}");

    let err = env.daemon.cli(&["monitor", "--type", "trace"]).expect_err("trace without an endpoint");
    assert!(format!("{err:#}").contains("--endpoint"), "{err:#}");
    let err = env.daemon.cli(&["monitor", "--endpoint", "no-such-container"]).expect_err("unknown endpoint");
    assert!(format!("{err:#}").contains("no-such-container"), "{err:#}");
    drop((monitor, related, after));
    env.finish(&[&web, &api, &other], &[&net]);
}

#[test]
fn a_flood_of_drops_is_rate_limited_in_the_kernel_and_the_daemon_stays_responsive() {
    let metrics = integration::scrape::free_loopback();
    let address = metrics.to_string();
    let env = Env::setup(
        PLUGIN,
        PREFIX,
        &[
            ("CILIUM_RS_MONITOR_RATE", "1000"),
            ("CILIUM_RS_MONITOR_BURST", "100"),
            ("CILIUM_RS_METRICS_ADDRESS", &address),
        ],
    );
    let net = format!("{PREFIX}flood");
    let (web, api, other) = stack(&env, &net);
    let (web4, _) = addresses(&web, &net).expect("addresses");
    let monitor = Monitor::start(&env, &["--type", "drop"]);
    std::thread::sleep(Duration::from_millis(500));
    let pid = env.daemon.pid().expect("daemon pid");
    let rss_before = rss_kib(pid);
    let dropped_before = env.drops(&web, "POLICY_DENIED", "ingress");

    // 100,000 datagrams from the host to web: its ingress allows only api, so each is dropped.
    const FLOOD: u64 = 100_000;
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    let target: std::net::SocketAddr = format!("{web4}:9").parse().expect("address");
    let started = Instant::now();
    let mut sent = 0;
    while sent < FLOOD {
        if socket.send_to(b"flood", target).is_ok() {
            sent += 1;
        }
    }
    let flood_time = started.elapsed();
    // The daemon answers at once, during the aftermath of the flood.
    let asked = Instant::now();
    env.daemon.endpoints().expect("the daemon answers");
    assert!(asked.elapsed() < Duration::from_secs(2), "answered in {:?}", asked.elapsed());

    let lines = monitor.collect(Duration::from_secs(3));
    let drops = lines.iter().filter(|l| l["type"] == "drop").count() as u64;
    let suppressed: u64 = lines.iter().filter(|l| l["type"] == "suppressed").filter_map(|l| l["count"].as_u64()).sum();
    let dropped = env.drops(&web, "POLICY_DENIED", "ingress") - dropped_before;
    assert!(dropped >= FLOOD * 9 / 10, "the datapath dropped the flood: {dropped} of {FLOOD}");
    // Each CPU: a burst of 100, then 1,000 a second (drops and verdicts share the budget).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let budget = cpus * (100 + 1000 * (flood_time.as_millis() as u64 / 1000 + 2));
    assert!(drops > 0, "some drops are shown");
    assert!(drops <= budget, "{drops} drop lines over {flood_time:?} exceed the budget {budget}");
    assert!(suppressed >= dropped.saturating_sub(2 * budget), "suppressed {suppressed} of {dropped} dropped");
    // Metrics show the same: events read from the ring, and what the kernel held back.
    let scrape = integration::scrape::scrape(metrics).expect("scrape");
    let read = integration::scrape::must(&scrape, "cilium_rs_monitor_ring_events_total", &[]);
    let held = integration::scrape::must(&scrape, "cilium_rs_monitor_suppressed_events_total", &[]);
    assert!(read >= drops, "ring events {read} >= the {drops} drop lines");
    assert!(held >= suppressed, "suppressed in metrics {held} >= {suppressed} reported to the monitor");
    let rss_after = rss_kib(pid);
    assert!(rss_after < rss_before + 32 * 1024, "RSS {rss_before} KiB -> {rss_after} KiB");
    // The datapath never waited for the monitor: the flood left at the sender's pace.
    assert!(flood_time < Duration::from_secs(20), "{flood_time:?}");
    drop(monitor);
    env.finish(&[&web, &api, &other], &[&net]);
}

/// The page as headless Chromium renders it (its DOM after the script ran), and a screenshot.
fn render_page(url: &str, screenshot: &std::path::Path) -> String {
    let chromium = |extra: &[&str]| {
        Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"])
            .args(extra)
            .arg(url)
            .output()
            .expect("run chromium (scripts/setup.sh installs it)")
    };
    let shot = format!("--screenshot={}", screenshot.display());
    let out = chromium(&[&shot, "--window-size=1280,900"]);
    assert!(out.status.success(), "chromium --screenshot: {}", String::from_utf8_lossy(&out.stderr));
    let out = chromium(&["--dump-dom"]);
    assert!(out.status.success(), "chromium --dump-dom: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_service_map_page_shows_the_containers_and_an_allowed_and_a_dropped_edge() {
    let address = integration::scrape::free_loopback();
    let env = Env::setup(PLUGIN, PREFIX, &[("CILIUM_RS_UI_ADDRESS", &address.to_string())]);
    let net = format!("{PREFIX}map");
    let (web, api, other) = stack(&env, &net);
    let (_, web6) = addresses(&web, &net).expect("addresses");
    wait_until(Duration::from_secs(10), "both flows in the table", || {
        assert!(http_get(&api, &web6, 80, 2).expect("exec").is_some(), "api reaches web");
        let _ = http_get(&other, &web6, 80, 1);
        let flows = env.daemon.cli(&["flows", "-o", "json"]).unwrap_or_default();
        flows.contains("\"allowed\"") && flows.contains("\"dropped\"")
    })
    .expect("flows");

    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact directory");
    let screenshot = artifacts.join("service-map.png");
    let _ = std::fs::remove_file(&screenshot);
    let dom = render_page(&format!("http://{address}/"), &screenshot);
    for name in [&web, &api, &other] {
        assert!(dom.contains(&format!("class=\"node\" data-name=\"{name}\"")), "node {name} on the page:\n{dom}");
    }
    assert!(dom.contains(&format!("data-network=\"{net}\"")), "grouped by the network's name:\n{dom}");
    let edge = |verdict: &str, from: &str| {
        dom.lines().any(|l| {
            l.contains(&format!("class=\"edge {verdict}\""))
                && l.contains(&format!("data-source=\"{from}\""))
                && l.contains(&format!("data-target=\"{web}\""))
                && l.contains("data-label=\"80/tcp\"")
        }) || dom.split("<path").any(|p| {
            p.contains(&format!("class=\"edge {verdict}\""))
                && p.contains(&format!("data-source=\"{from}\""))
                && p.contains(&format!("data-target=\"{web}\""))
                && p.contains("data-label=\"80/tcp\"")
        })
    };
    assert!(edge("allowed", &api), "an allowed edge api -> web on 80/tcp:\n{dom}");
    assert!(edge("dropped", &other), "a dropped edge other -> web on 80/tcp:\n{dom}");
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot at {} ({size} bytes)", screenshot.display());
    env.finish(&[&web, &api, &other], &[&net]);
}
