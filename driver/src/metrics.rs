//! Prometheus metrics: what the daemon counts as it goes (plugin request latency, identity
//! resolution latency, the monitor's ring-buffer events) and the families read at scrape time
//! from a [`Snapshot`] of the state and the kernel, encoded with `prometheus-client` in the
//! Prometheus text format (no I/O here).
//!
//! Label values come from bounded sets only (plugin methods, drop reasons, directions, states,
//! identity kinds, map names); per-endpoint series, labelled with the endpoint and its
//! container, exist only when asked for (`--metrics-per-endpoint`).
//!
//! # Feeding the monitor's counters
//!
//! The monitor owns the ring buffer; it reports through [`Metrics::add_ring_events`] (events it
//! read) and [`Metrics::set_suppressed_events`] (the kernel's running total of events its rate
//! limit suppressed). Both families exist from the start, at 0.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bpf_programs::abi::{Direction, DropReason};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::datapath::{Counters, DatapathMetrics, Traffic};

/// The `Content-Type` of what [`Metrics::encode`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every metric's name starts with `cilium_rs_`.
pub const PREFIX: &str = "cilium_rs";

/// Plugin requests take about a millisecond; a slow kernel step or a policy change may take
/// far longer (seconds).
const REQUEST_BUCKETS: [f64; 15] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Join → identity takes a few milliseconds while dockerd answers quickly; the resolution
/// backs off up to a second between attempts, and waits longer while Docker is unreachable.
const RESOLUTION_BUCKETS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

const DIRECTIONS: [Direction; 2] = [Direction::Egress, Direction::Ingress];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("encode metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

type MethodLabel = [(&'static str, &'static str); 1];

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// What the daemon counts itself; the rest is read at scrape time.
#[derive(Debug)]
pub struct Metrics {
    plugin_requests: Family<MethodLabel, Histogram, fn() -> Histogram>,
    plugin_errors: Family<MethodLabel, Counter>,
    identity_resolution: Histogram,
    ring_events: Counter,
    suppressed_events: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Where an endpoint is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EndpointState {
    /// Created, not joined (or left).
    Created,
    /// Joined; its labels are not known yet, so it is `init`.
    WaitingForIdentity,
    /// Joined with the identity of its labels.
    Ready,
}

impl EndpointState {
    pub const ALL: [EndpointState; 3] = [Self::Created, Self::WaitingForIdentity, Self::Ready];

    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::WaitingForIdentity => "waiting-for-identity",
            Self::Ready => "ready",
        }
    }
}

/// One endpoint as metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSample {
    /// Its number: the key of its counters.
    pub number: u32,
    /// The short endpoint id (12 hex digits).
    pub id: String,
    /// Its container's name, once known.
    pub container: Option<String>,
    pub state: EndpointState,
}

/// Identity kinds as [`crate::identity::Identity::kind`] names them.
pub const IDENTITY_KINDS: [&str; 3] = ["reserved", "endpoint", "cidr"];

/// What is read at scrape time: the state's part (taken under its lock, without kernel calls)
/// and the kernel's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub networks: usize,
    pub endpoints: Vec<EndpointSample>,
    /// Identities policy knows, by kind.
    pub identities: BTreeMap<&'static str, usize>,
    pub policy_revision: u64,
    pub policy_rules: usize,
    pub policy_entries: usize,
    pub datapath: DatapathMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            plugin_requests: Family::new_with_constructor(request_histogram as fn() -> Histogram),
            plugin_errors: Family::default(),
            identity_resolution: Histogram::new(RESOLUTION_BUCKETS),
            ring_events: Counter::default(),
            suppressed_events: Counter::default(),
        }
    }

    /// One plugin request `method` (e.g. `NetworkDriver.Join`, a name from the protocol, never
    /// from the request) took `elapsed`; `failed` when dockerd got an error.
    pub fn observe_plugin_request(&self, method: &'static str, elapsed: Duration, failed: bool) {
        let label = [("method", method)];
        self.plugin_requests.get_or_create(&label).observe(elapsed.as_secs_f64());
        if failed {
            self.plugin_errors.get_or_create(&label).inc();
        }
    }

    /// An endpoint's identity reached the datapath `after` its Join returned.
    pub fn observe_identity_resolution(&self, after: Duration) {
        self.identity_resolution.observe(after.as_secs_f64());
    }

    /// The monitor read `n` more events from the ring buffer
    /// (`cilium_rs_monitor_ring_events_total`).
    pub fn add_ring_events(&self, n: u64) {
        self.ring_events.inc_by(n);
    }

    /// The kernel's rate limit has suppressed `total` events so far, summed over CPUs: a
    /// running total read from the datapath, not an increment
    /// (`cilium_rs_monitor_suppressed_events_total`).
    pub fn set_suppressed_events(&self, total: u64) {
        self.suppressed_events.inner().store(total, Ordering::Relaxed);
    }

    /// The whole exposition: the daemon's own metrics and those of `snapshot`, with the
    /// per-endpoint series when `per_endpoint`.
    pub fn encode(&self, snapshot: &Snapshot, per_endpoint: bool) -> Result<String, MetricsError> {
        let mut registry = Registry::with_prefix(PREFIX);
        self.register_own(&mut registry);
        register_snapshot(&mut registry, snapshot);
        if per_endpoint {
            register_endpoints(&mut registry, snapshot);
        }
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry)?;
        Ok(text)
    }

    fn register_own(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "plugin_request_duration",
            "Time to answer a Docker plugin request, by method",
            Unit::Seconds,
            self.plugin_requests.clone(),
        );
        registry.register(
            "plugin_request_errors",
            "Docker plugin requests answered with an error, by method",
            self.plugin_errors.clone(),
        );
        registry.register_with_unit(
            "identity_resolution_duration",
            "Time from an endpoint's Join until its identity is in the datapath (endpoints joined since the daemon \
             started)",
            Unit::Seconds,
            self.identity_resolution.clone(),
        );
        registry.register(
            "monitor_ring_events",
            "Events the daemon read from the datapath's ring buffer",
            self.ring_events.clone(),
        );
        registry.register(
            "monitor_suppressed_events",
            "Events the datapath's rate limit suppressed instead of writing them to the ring buffer",
            self.suppressed_events.clone(),
        );
    }
}

/// A family of gauges from `(labels, value)` rows.
fn gauges<S>(registry: &mut Registry, name: &str, help: &str, rows: impl IntoIterator<Item = (S, usize)>)
where
    S: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<S, Gauge>::default();
    for (labels, value) in rows {
        family.get_or_create(&labels).set(i64::try_from(value).unwrap_or(i64::MAX));
    }
    registry.register(name, help, family);
}

/// One gauge without labels.
fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let gauge = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, gauge);
}

/// A family of counters holding values read elsewhere (the kernel's), from `(labels, value)`.
fn counters<S>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    rows: impl IntoIterator<Item = (S, u64)>,
) where
    S: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<S, Counter<u64, AtomicU64>>::default();
    for (labels, value) in rows {
        family.get_or_create(&labels).inc_by(value);
    }
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family),
        None => registry.register(name, help, family),
    }
}

/// Forwarded traffic of `counters` in `dir`.
fn forwarded(counters: &Counters, dir: Direction) -> Traffic {
    match dir {
        Direction::Egress => counters.egress,
        Direction::Ingress => counters.ingress,
    }
}

/// Every drop reason and direction with its count in `counters` (zeros included).
fn drops(counters: &Counters) -> impl Iterator<Item = (DropReason, Direction, Traffic)> + '_ {
    DropReason::ALL
        .into_iter()
        .filter(|r| r.is_drop())
        .flat_map(move |reason| DIRECTIONS.into_iter().map(move |dir| (reason, dir, counters.dropped(reason, dir))))
}

fn register_snapshot(registry: &mut Registry, snapshot: &Snapshot) {
    let mut states: BTreeMap<EndpointState, usize> = EndpointState::ALL.into_iter().map(|s| (s, 0)).collect();
    for ep in &snapshot.endpoints {
        *states.entry(ep.state).or_default() += 1;
    }
    gauges(
        registry,
        "endpoints",
        "Endpoints, by state: created (not joined), waiting-for-identity (joined, still init), ready",
        states.into_iter().map(|(state, n)| ([("state", state.name())], n)),
    );
    gauges(
        registry,
        "identities",
        "Security identities policy knows, by kind: reserved, endpoint (allocated for a label set), cidr",
        IDENTITY_KINDS.into_iter().map(|kind| ([("kind", kind)], snapshot.identities.get(kind).copied().unwrap_or(0))),
    );
    gauge(registry, "networks", "Networks of this driver", snapshot.networks as u64);
    gauge(registry, "policy_revision", "The policy revision", snapshot.policy_revision);
    gauge(registry, "policy_rules", "Policy rules imported", snapshot.policy_rules as u64);
    gauge(registry, "policy_map_entries", "Entries of the policy map (crs_policy)", snapshot.policy_entries as u64);

    let totals = &snapshot.datapath.totals;
    let drop_rows = || drops(totals).map(|(r, d, t)| (([("reason", r.name()), ("direction", d.name())]), t));
    counters(
        registry,
        "drop_count",
        "Packets the datapath dropped since the daemon started, by reason and direction (of the endpoint)",
        None,
        drop_rows().map(|(l, t)| (l, t.packets)),
    );
    counters(
        registry,
        "drop",
        "Bytes of the packets the datapath dropped since the daemon started, by reason and direction",
        Some(Unit::Bytes),
        drop_rows().map(|(l, t)| (l, t.bytes)),
    );
    let forward_rows = || DIRECTIONS.into_iter().map(|d| ([("direction", d.name())], forwarded(totals, d)));
    counters(
        registry,
        "forward_count",
        "Packets the datapath passed since the daemon started, by direction (egress: sent by an endpoint)",
        None,
        forward_rows().map(|(l, t)| (l, t.packets)),
    );
    counters(
        registry,
        "forward",
        "Bytes of the packets the datapath passed since the daemon started, by direction",
        Some(Unit::Bytes),
        forward_rows().map(|(l, t)| (l, t.bytes)),
    );
    gauge(
        registry,
        "conntrack_entries",
        "Entries of the conntrack map (crs_ct), counted when scraped",
        snapshot.datapath.conntrack_entries,
    );
    gauges(
        registry,
        "nat_entries",
        "Entries of the NAT maps, counted when scraped: crs_nat_out (by the endpoint's side of a flow) and \
         crs_nat_in (by the translated side)",
        [
            ([("map", "crs_nat_out")], snapshot.datapath.nat_out_entries as usize),
            ([("map", "crs_nat_in")], snapshot.datapath.nat_in_entries as usize),
        ],
    );
}

/// The per-endpoint series: forwarded traffic each way, and the drop reasons it has counted.
fn register_endpoints(registry: &mut Registry, snapshot: &Snapshot) {
    let rows: Vec<(&EndpointSample, &Counters)> = snapshot
        .endpoints
        .iter()
        .filter_map(|ep| snapshot.datapath.endpoints.get(&ep.number).map(|c| (ep, c)))
        .collect();
    let label = |ep: &EndpointSample, dir: Direction| {
        [
            ("endpoint", ep.id.clone()),
            ("container", ep.container.clone().unwrap_or_default()),
            ("direction", dir.name().to_owned()),
        ]
    };
    let forward_rows =
        || rows.iter().flat_map(|(ep, c)| DIRECTIONS.into_iter().map(move |d| (label(ep, d), forwarded(c, d))));
    counters(
        registry,
        "endpoint_forward_count",
        "Packets the datapath passed for one endpoint since it was created, by direction",
        None,
        forward_rows().map(|(l, t)| (l, t.packets)),
    );
    counters(
        registry,
        "endpoint_forward",
        "Bytes the datapath passed for one endpoint since it was created, by direction",
        Some(Unit::Bytes),
        forward_rows().map(|(l, t)| (l, t.bytes)),
    );
    let drop_rows = || {
        rows.iter().flat_map(|(ep, c)| {
            drops(c).filter(|(_, _, t)| t.packets > 0).map(move |(reason, dir, t)| {
                let [endpoint, container, direction] = label(ep, dir);
                ([endpoint, container, ("reason", reason.name().to_owned()), direction], t)
            })
        })
    };
    counters(
        registry,
        "endpoint_drop_count",
        "Packets the datapath dropped for one endpoint since it was created, by reason and direction (reasons it \
         counted only)",
        None,
        drop_rows().map(|(l, t)| (l, t.packets)),
    );
    counters(
        registry,
        "endpoint_drop",
        "Bytes of the packets the datapath dropped for one endpoint since it was created, by reason and direction",
        Some(Unit::Bytes),
        drop_rows().map(|(l, t)| (l, t.bytes)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition, parsed by a Prometheus text-format parser.
    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
    }

    /// The value of the sample `name` whose labels include `labels`.
    fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))?;
        match &sample.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => Some(*v),
            prometheus_parse::Value::Untyped(v) => Some(*v),
            _ => None,
        }
    }

    fn traffic(packets: u64) -> Traffic {
        Traffic { packets, bytes: packets * 100 }
    }

    fn endpoint_counters(forwarded: u64, denied: u64) -> Counters {
        let mut c = Counters { egress: traffic(forwarded), ingress: traffic(forwarded * 2), ..Counters::default() };
        c.drops.insert(Counters::drop_key(DropReason::PolicyDenied, Direction::Ingress), traffic(denied));
        c
    }

    /// Two endpoints (one known by its container, one still waiting), and what the kernel read.
    fn snapshot() -> Snapshot {
        let endpoints =
            BTreeMap::from([(0, Counters::default()), (1, endpoint_counters(3, 4)), (2, endpoint_counters(5, 6))]);
        let mut totals = Counters::default();
        for c in endpoints.values() {
            totals.add(c);
        }
        Snapshot {
            networks: 2,
            endpoints: vec![
                EndpointSample {
                    number: 1,
                    id: "0123456789ab".into(),
                    container: Some("web".into()),
                    state: EndpointState::Ready,
                },
                EndpointSample {
                    number: 2,
                    id: "ba9876543210".into(),
                    container: None,
                    state: EndpointState::WaitingForIdentity,
                },
                EndpointSample { number: 3, id: "cccccccccccc".into(), container: None, state: EndpointState::Created },
            ],
            identities: BTreeMap::from([("reserved", 3), ("endpoint", 1)]),
            policy_revision: 7,
            policy_rules: 2,
            policy_entries: 9,
            datapath: DatapathMetrics {
                endpoints,
                totals,
                conntrack_entries: 11,
                nat_out_entries: 12,
                nat_in_entries: 13,
            },
        }
    }

    /// Metrics that have seen a request of each kind and an identity resolution.
    fn busy_metrics() -> Metrics {
        let metrics = Metrics::new();
        metrics.observe_plugin_request("NetworkDriver.Join", Duration::from_micros(1500), false);
        metrics.observe_plugin_request("NetworkDriver.Join", Duration::from_millis(30), true);
        metrics.observe_plugin_request("NetworkDriver.CreateEndpoint", Duration::from_micros(800), false);
        metrics.observe_identity_resolution(Duration::from_millis(4));
        metrics
    }

    #[test]
    fn the_exposition_parses_and_has_every_family_from_the_start() {
        let metrics = Metrics::new();
        let text = metrics.encode(&Snapshot::default(), false).expect("encode");
        let scrape = parse(&text);
        for (name, labels) in [
            ("cilium_rs_endpoints", vec![("state", "ready")]),
            ("cilium_rs_endpoints", vec![("state", "created")]),
            ("cilium_rs_identities", vec![("kind", "cidr")]),
            ("cilium_rs_networks", vec![]),
            ("cilium_rs_policy_revision", vec![]),
            ("cilium_rs_policy_rules", vec![]),
            ("cilium_rs_drop_count_total", vec![("reason", "POLICY_DENIED"), ("direction", "ingress")]),
            ("cilium_rs_drop_bytes_total", vec![("reason", "SPOOFED_SOURCE"), ("direction", "egress")]),
            ("cilium_rs_forward_count_total", vec![("direction", "egress")]),
            ("cilium_rs_forward_bytes_total", vec![("direction", "ingress")]),
            ("cilium_rs_conntrack_entries", vec![]),
            ("cilium_rs_nat_entries", vec![("map", "crs_nat_out")]),
            ("cilium_rs_monitor_ring_events_total", vec![]),
            ("cilium_rs_monitor_suppressed_events_total", vec![]),
            ("cilium_rs_identity_resolution_duration_seconds_count", vec![]),
        ] {
            assert_eq!(value(&scrape, name, &labels), Some(0.0), "{name} {labels:?} at 0 in:\n{text}");
        }
        // Counter samples are typed as counters.
        let drop = scrape.samples.iter().find(|s| s.metric == "cilium_rs_drop_count_total").expect("drops");
        assert!(matches!(drop.value, prometheus_parse::Value::Counter(_)), "{drop:?}");
        // Every drop reason, both directions; nothing per endpoint.
        let reasons = scrape.samples.iter().filter(|s| s.metric == "cilium_rs_drop_count_total").count();
        assert_eq!(reasons, 2 * (DropReason::ALL.len() - 1));
        assert!(!text.contains("cilium_rs_endpoint_"), "{text}");
        assert!(text.contains(&format!("# HELP {PREFIX}_networks ")), "{text}");
    }

    #[test]
    fn totals_states_and_sizes_come_from_the_snapshot() {
        let text = busy_metrics().encode(&snapshot(), false).expect("encode");
        let scrape = parse(&text);
        let v = |name: &str, labels: &[(&str, &str)]| value(&scrape, name, labels).unwrap_or(-1.0);
        assert_eq!(v("cilium_rs_endpoints", &[("state", "ready")]), 1.0);
        assert_eq!(v("cilium_rs_endpoints", &[("state", "waiting-for-identity")]), 1.0);
        assert_eq!(v("cilium_rs_endpoints", &[("state", "created")]), 1.0);
        assert_eq!(v("cilium_rs_identities", &[("kind", "reserved")]), 3.0);
        assert_eq!(v("cilium_rs_identities", &[("kind", "endpoint")]), 1.0);
        assert_eq!(v("cilium_rs_identities", &[("kind", "cidr")]), 0.0);
        assert_eq!(v("cilium_rs_networks", &[]), 2.0);
        assert_eq!(v("cilium_rs_policy_revision", &[]), 7.0);
        assert_eq!(v("cilium_rs_policy_rules", &[]), 2.0);
        assert_eq!(v("cilium_rs_policy_map_entries", &[]), 9.0);
        let denied = [("reason", "POLICY_DENIED"), ("direction", "ingress")];
        assert_eq!(v("cilium_rs_drop_count_total", &denied), 10.0);
        assert_eq!(v("cilium_rs_drop_bytes_total", &denied), 1000.0);
        assert_eq!(v("cilium_rs_drop_count_total", &[("reason", "POLICY_DENIED"), ("direction", "egress")]), 0.0);
        assert_eq!(v("cilium_rs_forward_count_total", &[("direction", "egress")]), 8.0);
        assert_eq!(v("cilium_rs_forward_bytes_total", &[("direction", "ingress")]), 1600.0);
        assert_eq!(v("cilium_rs_conntrack_entries", &[]), 11.0);
        assert_eq!(v("cilium_rs_nat_entries", &[("map", "crs_nat_out")]), 12.0);
        assert_eq!(v("cilium_rs_nat_entries", &[("map", "crs_nat_in")]), 13.0);
    }

    #[test]
    fn request_and_resolution_latencies_are_histograms() {
        let text = busy_metrics().encode(&Snapshot::default(), false).expect("encode");
        let scrape = parse(&text);
        let join = [("method", "NetworkDriver.Join")];
        assert_eq!(value(&scrape, "cilium_rs_plugin_request_duration_seconds_count", &join), Some(2.0));
        let sum = value(&scrape, "cilium_rs_plugin_request_duration_seconds_sum", &join).expect("sum");
        assert!((sum - 0.0315).abs() < 1e-9, "{sum}");
        assert_eq!(value(&scrape, "cilium_rs_plugin_request_errors_total", &join), Some(1.0));
        let create = [("method", "NetworkDriver.CreateEndpoint")];
        assert_eq!(value(&scrape, "cilium_rs_plugin_request_duration_seconds_count", &create), Some(1.0));
        let histogram = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "cilium_rs_plugin_request_duration_seconds" && s.labels.get("method") == join[0].1.into()
            })
            .expect("join histogram");
        let prometheus_parse::Value::Histogram(buckets) = &histogram.value else { panic!("{histogram:?}") };
        let at = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
        assert_eq!(at(0.001), Some(0.0));
        assert_eq!(at(0.0025), Some(1.0));
        assert_eq!(at(f64::INFINITY), Some(2.0));
        assert_eq!(value(&scrape, "cilium_rs_identity_resolution_duration_seconds_count", &[]), Some(1.0));
    }

    #[test]
    fn the_monitor_adds_ring_events_and_sets_the_suppressed_total() {
        let metrics = Metrics::new();
        metrics.add_ring_events(5);
        metrics.add_ring_events(2);
        metrics.set_suppressed_events(40);
        metrics.set_suppressed_events(100);
        let scrape = parse(&metrics.encode(&Snapshot::default(), false).expect("encode"));
        assert_eq!(value(&scrape, "cilium_rs_monitor_ring_events_total", &[]), Some(7.0));
        assert_eq!(value(&scrape, "cilium_rs_monitor_suppressed_events_total", &[]), Some(100.0));
    }

    #[test]
    fn per_endpoint_series_only_when_asked_with_id_and_container() {
        let metrics = Metrics::new();
        let off = metrics.encode(&snapshot(), false).expect("encode");
        assert!(!off.contains("cilium_rs_endpoint_"), "{off}");
        let text = metrics.encode(&snapshot(), true).expect("encode");
        let scrape = parse(&text);
        let web = [("endpoint", "0123456789ab"), ("container", "web")];
        let with = |extra: &[(&'static str, &'static str)]| [&web[..], extra].concat();
        assert_eq!(
            value(&scrape, "cilium_rs_endpoint_forward_count_total", &with(&[("direction", "egress")])),
            Some(3.0)
        );
        assert_eq!(
            value(&scrape, "cilium_rs_endpoint_forward_bytes_total", &with(&[("direction", "ingress")])),
            Some(600.0)
        );
        let denied = with(&[("reason", "POLICY_DENIED"), ("direction", "ingress")]);
        assert_eq!(value(&scrape, "cilium_rs_endpoint_drop_count_total", &denied), Some(4.0));
        assert_eq!(value(&scrape, "cilium_rs_endpoint_drop_bytes_total", &denied), Some(400.0));
        // The unnamed endpoint has an empty container label; only reasons it counted appear;
        // the endpoint without counters (and endpoint 0) have no series.
        let unnamed = [("endpoint", "ba9876543210"), ("container", ""), ("direction", "egress")];
        assert_eq!(value(&scrape, "cilium_rs_endpoint_forward_count_total", &unnamed), Some(5.0));
        let drops = scrape.samples.iter().filter(|s| s.metric == "cilium_rs_endpoint_drop_count_total").count();
        assert_eq!(drops, 2, "{text}");
        let endpoints: std::collections::BTreeSet<&str> = scrape
            .samples
            .iter()
            .filter(|s| s.metric.starts_with("cilium_rs_endpoint_"))
            .filter_map(|s| s.labels.get("endpoint"))
            .collect();
        assert_eq!(endpoints, ["0123456789ab", "ba9876543210"].into());
    }

    /// Every `cilium_rs_…` name in a PromQL expression.
    fn metric_names(expr: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = expr;
        while let Some(at) = rest.find("cilium_rs_") {
            let tail = &rest[at..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            names.push(tail[..end].to_owned());
            rest = &tail[end..];
        }
        names
    }

    #[test]
    fn the_grafana_dashboard_is_valid_and_shows_only_metrics_that_exist() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../contrib/grafana/cilium-rs.json")).expect("dashboard JSON");
        assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()), "a title");
        assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()), "a uid");
        assert!(dashboard["schemaVersion"].as_u64().is_some(), "a schemaVersion");
        let panels: Vec<&serde_json::Value> = dashboard["panels"]
            .as_array()
            .expect("panels")
            .iter()
            .flat_map(|p| std::iter::once(p).chain(p["panels"].as_array().into_iter().flatten()))
            .collect();

        let text = busy_metrics().encode(&snapshot(), true).expect("encode");
        let scrape = parse(&text);
        // Every series name the exposition has (histograms by their _bucket/_sum/_count).
        let mut exposed: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for sample in &scrape.samples {
            match sample.value {
                prometheus_parse::Value::Histogram(_) => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        exposed.insert(format!("{}{suffix}", sample.metric));
                    }
                }
                _ => {
                    exposed.insert(sample.metric.clone());
                }
            }
        }
        let mut referenced = std::collections::BTreeSet::new();
        for panel in panels.iter().filter(|p| p["type"] != "row") {
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(!title.is_empty(), "every panel has a title: {panel}");
            assert!(panel["gridPos"]["w"].as_u64().is_some(), "{title}: gridPos");
            let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title}: targets"));
            assert!(!targets.is_empty(), "{title}: no query");
            for target in targets {
                let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{title}: expr"));
                let names = metric_names(expr);
                assert!(!names.is_empty(), "{title}: {expr} shows no cilium-rs metric");
                for name in names {
                    assert!(exposed.contains(&name), "{title}: {name} is not in the exposition:\n{text}");
                    referenced.insert(name);
                }
            }
        }
        // And every family has a panel.
        for family in scrape.docs.keys() {
            let shown = referenced.iter().any(|r| {
                r == family
                    || r.strip_prefix(family.as_str()).is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
            });
            assert!(shown, "no panel shows {family}");
        }
    }
}
