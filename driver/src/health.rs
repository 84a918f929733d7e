//! The daemon's view of its own health, kept in memory: when it started, the Docker connection
//! as the event follower sees it, and the last errors logged at the daemon's boundaries (a
//! bounded ring that a tracing layer fills, see `logging`). [`assess`] turns the subsystems'
//! states into the reasons the daemon is unhealthy. No I/O.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::datapath::DatapathInfo;
use crate::store::StoreHealth;

/// How many logged errors the ring keeps.
pub const ERROR_RING: usize = 10;
/// How often the event follower asks dockerd whether it is there while nothing happens.
pub const DOCKER_PING: Duration = Duration::from_secs(5);
/// Not heard from dockerd for this long while connected: it is not answering.
pub const DOCKER_STALE: Duration = Duration::from_secs(30);

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn guard<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An error the daemon logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedError {
    /// When, in milliseconds since the Unix epoch.
    pub at: u64,
    /// `ERROR` or `WARN`.
    pub level: String,
    /// The message and its fields, e.g. `failed: status=500 error=create veth lxc…: …`.
    pub message: String,
    /// The spans it happened in, e.g. `plugin{method=NetworkDriver.Join endpoint=0123456789ab}`.
    #[serde(default)]
    pub context: String,
}

#[derive(Debug, Default)]
struct Ring {
    last: VecDeque<LoggedError>,
    total: u64,
}

/// The last [`ERROR_RING`] errors logged, shared by the log layer that fills it and the status
/// that shows it.
#[derive(Debug, Clone, Default)]
pub struct ErrorRing(Arc<Mutex<Ring>>);

impl ErrorRing {
    pub fn push(&self, error: LoggedError) {
        let mut ring = guard(&self.0);
        if ring.last.len() == ERROR_RING {
            ring.last.pop_front();
        }
        ring.last.push_back(error);
        ring.total += 1;
    }

    /// The errors kept, oldest first, and how many were logged since the daemon started.
    pub fn recent(&self) -> (Vec<LoggedError>, u64) {
        let ring = guard(&self.0);
        (ring.last.iter().cloned().collect(), ring.total)
    }
}

/// The connection to dockerd's API, as the event follower sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DockerState {
    /// Not connected yet since the daemon started.
    Connecting,
    /// Following dockerd's events.
    Connected,
    /// The connection was lost; trying again.
    Reconnecting,
}

impl DockerState {
    pub fn name(self) -> &'static str {
        match self {
            DockerState::Connecting => "connecting",
            DockerState::Connected => "connected",
            DockerState::Reconnecting => "reconnecting",
        }
    }
}

/// The Docker connection for the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerView {
    pub socket: Option<String>,
    pub state: DockerState,
    /// How long it has been in this state.
    pub since_ms: u64,
    /// How long since the follower last heard from dockerd (an event, or the answer to its
    /// periodic ping); `None` before it ever did.
    pub events_lag_ms: Option<u64>,
    /// The last error talking to dockerd, and when (ms since the epoch).
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    /// How many times the follower connected.
    pub connects: u64,
}

#[derive(Debug)]
struct DockerLink {
    socket: Option<String>,
    state: DockerState,
    since: Instant,
    heard: Option<Instant>,
    last_error: Option<(String, u64)>,
    connects: u64,
}

/// What the daemon knows of its own health.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    started_at: u64,
    docker: Mutex<DockerLink>,
    errors: ErrorRing,
}

impl Health {
    pub fn new(errors: ErrorRing) -> Self {
        let now = Instant::now();
        Health {
            started: now,
            started_at: unix_ms(),
            docker: Mutex::new(DockerLink {
                socket: None,
                state: DockerState::Connecting,
                since: now,
                heard: None,
                last_error: None,
                connects: 0,
            }),
            errors,
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// When the daemon started, in ms since the epoch.
    pub fn started_at(&self) -> u64 {
        self.started_at
    }

    pub fn errors(&self) -> &ErrorRing {
        &self.errors
    }

    /// The socket the follower talks to.
    pub fn docker_socket(&self, socket: &std::path::Path) {
        guard(&self.docker).socket = Some(socket.display().to_string());
    }

    /// The follower subscribed to dockerd's events.
    pub fn docker_connected(&self) {
        let mut link = guard(&self.docker);
        let now = Instant::now();
        link.state = DockerState::Connected;
        link.since = now;
        link.heard = Some(now);
        link.connects += 1;
    }

    /// dockerd answered or sent an event.
    pub fn docker_heard(&self) {
        guard(&self.docker).heard = Some(Instant::now());
    }

    /// A call to dockerd failed; the connection may still stand (its events still come).
    pub fn docker_error(&self, error: &str) {
        guard(&self.docker).last_error = Some((error.to_owned(), unix_ms()));
    }

    /// The connection is gone (or could not be made): the follower tries again.
    pub fn docker_lost(&self, error: &str) {
        let mut link = guard(&self.docker);
        if link.state == DockerState::Connected {
            link.state = DockerState::Reconnecting;
            link.since = Instant::now();
        }
        link.last_error = Some((error.to_owned(), unix_ms()));
    }

    pub fn docker(&self) -> DockerView {
        let link = guard(&self.docker);
        DockerView {
            socket: link.socket.clone(),
            state: link.state,
            since_ms: millis(link.since.elapsed()),
            events_lag_ms: link.heard.map(|t| millis(t.elapsed())),
            last_error: link.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_at: link.last_error.as_ref().map(|(_, at)| *at),
            connects: link.connects,
        }
    }
}

/// Why the daemon is unhealthy (nothing when it is healthy): the datapath is not loaded or
/// lost pins, the store fails, or dockerd is not connected or does not answer.
pub fn assess(datapath: &DatapathInfo, store: &StoreHealth, docker: &DockerView) -> Vec<String> {
    let mut problems = Vec::new();
    if !datapath.loaded {
        problems.push("datapath: programs not loaded".to_owned());
    }
    if !datapath.missing_pins.is_empty() {
        problems.push(format!("datapath: pinned maps missing: {}", datapath.missing_pins.join(", ")));
    }
    if let Some(error) = store.error.as_ref().filter(|_| !store.ok) {
        problems.push(format!("store: {error}"));
    }
    let why = docker.last_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
    match docker.state {
        DockerState::Connected => {
            if let Some(lag) = docker.events_lag_ms.filter(|lag| *lag > millis(DOCKER_STALE)) {
                problems.push(format!("docker: no answer from dockerd for {}{why}", human_ms(lag)));
            }
        }
        state => problems.push(format!("docker: {} for {}{why}", state.name(), human_ms(docker.since_ms))),
    }
    problems
}

/// `850ms`, `12s`, `3m20s`, `5h02m`, `2d03h`.
pub fn human_ms(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms}ms"),
        1..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(n: u64) -> LoggedError {
        LoggedError { at: n, level: "WARN".into(), message: format!("error {n}"), context: String::new() }
    }

    #[test]
    fn the_ring_keeps_the_last_errors_and_counts_all() {
        let ring = ErrorRing::default();
        for n in 0..25 {
            ring.push(logged(n));
        }
        let (kept, total) = ring.recent();
        assert_eq!(total, 25);
        assert_eq!(kept.iter().map(|e| e.at).collect::<Vec<_>>(), (15..25).collect::<Vec<_>>());
    }

    fn healthy_datapath() -> DatapathInfo {
        DatapathInfo { loaded: true, ..DatapathInfo::default() }
    }

    #[test]
    fn docker_states_decide_health() {
        let health = Health::new(ErrorRing::default());
        let store = StoreHealth { location: "memory".into(), ok: true, error: None, error_at: None };
        let problems = assess(&healthy_datapath(), &store, &health.docker());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("docker: connecting for "), "{problems:?}");

        health.docker_connected();
        assert!(assess(&healthy_datapath(), &store, &health.docker()).is_empty());
        assert_eq!(health.docker().connects, 1);

        health.docker_error("GET /_ping: timed out");
        assert!(assess(&healthy_datapath(), &store, &health.docker()).is_empty(), "one failed ping is no outage");

        health.docker_lost("connect /var/run/docker.sock: connection refused");
        let view = health.docker();
        assert_eq!(view.state, DockerState::Reconnecting);
        let problems = assess(&healthy_datapath(), &store, &view);
        assert!(problems[0].contains("reconnecting") && problems[0].contains("connection refused"), "{problems:?}");

        let stale = DockerView { events_lag_ms: Some(millis(DOCKER_STALE) + 1), ..health.docker() };
        let stale = DockerView { state: DockerState::Connected, ..stale };
        assert!(assess(&healthy_datapath(), &store, &stale)[0].contains("no answer from dockerd for 30s"));
    }

    #[test]
    fn datapath_and_store_problems_are_named() {
        let health = Health::new(ErrorRing::default());
        health.docker_connected();
        let datapath = DatapathInfo { loaded: false, missing_pins: vec!["crs_ct".into()], ..DatapathInfo::default() };
        let store = StoreHealth {
            location: "x".into(),
            ok: false,
            error: Some("commit state: disk full".into()),
            error_at: Some(1),
        };
        let problems = assess(&datapath, &store, &health.docker());
        assert_eq!(
            problems,
            [
                "datapath: programs not loaded",
                "datapath: pinned maps missing: crs_ct",
                "store: commit state: disk full",
            ]
        );
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(12_400), "12s");
        assert_eq!(human_ms(200_000), "3m20s");
        assert_eq!(human_ms(5 * 3_600_000 + 120_000), "5h02m");
        assert_eq!(human_ms(2 * 86_400_000 + 3 * 3_600_000), "2d03h");
    }
}
