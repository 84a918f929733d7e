//! The monitor: the datapath's events, named after the containers they concern, handed to
//! every subscriber (`cilium-rs monitor`, the flow table) through a broadcast channel. A slow
//! subscriber loses lines (and is told how many); it never slows the reader or the datapath.

pub mod event;
pub mod filter;
pub mod flows;
pub mod service_map;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bpf_programs::abi;
use futures::future::BoxFuture;
use tokio::sync::{broadcast, mpsc};

use crate::datapath::events::EventCounts;
use event::{describe, Directory, Kind, MonitorEvent};
use flows::{Flow, FlowTable};

/// Lines a subscriber may fall behind before it loses some.
pub const SUBSCRIBER_QUEUE: usize = 4096;

/// How old the directory may be when an event needs it.
const DIRECTORY_AGE: Duration = Duration::from_millis(250);

/// How often the kernel's counts are read (a `suppressed` line when they grew).
const COUNTS_PERIOD: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Monitor {
    lines: broadcast::Sender<Arc<MonitorEvent>>,
    counts: Mutex<EventCounts>,
    /// True once the daemon stops: subscribers end their streams.
    closing: tokio::sync::watch::Sender<bool>,
    flows: Mutex<FlowTable>,
}

/// How many flows the table keeps, and for how long since they were last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    pub capacity: usize,
    pub window: Duration,
}

impl Default for FlowLimits {
    fn default() -> Self {
        FlowLimits { capacity: 4096, window: Duration::from_secs(300) }
    }
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor::new()
    }
}

impl Monitor {
    pub fn new() -> Monitor {
        Monitor {
            lines: broadcast::channel(SUBSCRIBER_QUEUE).0,
            counts: Mutex::new(EventCounts::default()),
            closing: tokio::sync::watch::channel(false).0,
            flows: Mutex::new(FlowTable::new(FlowLimits::default().capacity, FlowLimits::default().window)),
        }
    }

    /// Every line from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<MonitorEvent>> {
        self.lines.subscribe()
    }

    /// Sizes the flow table (its flows so far are forgotten).
    pub fn set_flow_limits(&self, limits: FlowLimits) {
        *self.flow_table() = FlowTable::new(limits.capacity, limits.window);
    }

    fn flow_table(&self) -> std::sync::MutexGuard<'_, FlowTable> {
        self.flows.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The recent flows, most recent first.
    pub fn flows(&self) -> Vec<Flow> {
        let mut table = self.flow_table();
        table.expire(SystemTime::now());
        table.list()
    }

    /// Takes the allowed flows' packets and bytes from these tracked connections.
    pub fn account(&self, tracked: &[flows::Tracked]) {
        self.flow_table().account(tracked, SystemTime::now());
    }

    /// Tells every subscriber to finish (the daemon stops).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Monitor::close`] was called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            let _ = closing.wait_for(|closed| *closed).await;
        }
    }

    /// Hands a line to the subscribers (none is fine).
    pub fn publish(&self, line: MonitorEvent) {
        let _ = self.lines.send(Arc::new(line));
    }

    /// The event counts as last read.
    pub fn counts(&self) -> EventCounts {
        *self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_counts(&self, counts: EventCounts) -> EventCounts {
        std::mem::replace(&mut *self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner()), counts)
    }

    /// Turns the datapath's events into lines until `events` closes; `directory` names the
    /// ends of packets, `counts` reads the kernel's counts.
    pub async fn run(
        self: Arc<Self>,
        mut events: mpsc::Receiver<abi::Event>,
        directory: impl Fn() -> Directory + Send,
        counts: impl Fn() -> BoxFuture<'static, Option<EventCounts>> + Send,
    ) {
        let mut names = directory();
        let mut clock = Clock::now();
        let mut named_at = Instant::now();
        // The pinned counts go back to before this daemon: the first reading is the baseline.
        let mut baseline = false;
        let mut tick = tokio::time::interval(COUNTS_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { return };
                    if named_at.elapsed() > DIRECTORY_AGE {
                        names = directory();
                        clock = Clock::now();
                        named_at = Instant::now();
                    }
                    let at = clock.wall(event.time);
                    if let Some(line) = describe(&event, at, &names) {
                        self.flow_table().observe(&line, at);
                        self.publish(line);
                    }
                }
                _ = tick.tick() => {
                    self.flow_table().expire(SystemTime::now());
                    let Some(now) = counts().await else { continue };
                    let before = self.set_counts(now);
                    let suppressed = now.suppressed.saturating_sub(before.suppressed);
                    if suppressed > 0 && baseline {
                        self.publish(MonitorEvent::tally(Kind::Suppressed, suppressed, SystemTime::now()));
                    }
                    baseline = true;
                }
            }
        }
    }
}

/// CLOCK_MONOTONIC (the programs' clock) against the wall clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    wall: SystemTime,
    monotonic_ns: u64,
}

impl Clock {
    fn now() -> Clock {
        Clock { wall: SystemTime::now(), monotonic_ns: monotonic_ns() }
    }

    /// The wall-clock time of a `bpf_ktime_get_ns()` reading.
    fn wall(&self, monotonic_ns: u64) -> SystemTime {
        if monotonic_ns >= self.monotonic_ns {
            self.wall + Duration::from_nanos(monotonic_ns - self.monotonic_ns)
        } else {
            self.wall - Duration::from_nanos(self.monotonic_ns - monotonic_ns)
        }
    }
}

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_times_map_onto_the_wall_clock() {
        let clock = Clock { wall: SystemTime::UNIX_EPOCH + Duration::from_secs(100), monotonic_ns: 5_000_000_000 };
        assert_eq!(clock.wall(6_500_000_000), SystemTime::UNIX_EPOCH + Duration::from_millis(101_500));
        assert_eq!(clock.wall(4_000_000_000), SystemTime::UNIX_EPOCH + Duration::from_secs(99));
        let a = monotonic_ns();
        assert!(monotonic_ns() >= a);
    }

    #[tokio::test]
    async fn events_become_named_lines_and_suppression_is_reported() {
        let monitor = Arc::new(Monitor::new());
        let mut lines = monitor.subscribe();
        let (tx, rx) = mpsc::channel(4);
        let counts = Arc::new(Mutex::new(vec![
            EventCounts { emitted: 1, suppressed: 10, lost: 0 },
            EventCounts { emitted: 2, suppressed: 25, lost: 0 },
        ]));
        let source = counts.clone();
        let task = tokio::spawn(monitor.clone().run(rx, Directory::default, move || {
            let next = {
                let mut queue = source.lock().expect("counts");
                if queue.len() > 1 {
                    Some(queue.remove(0))
                } else {
                    queue.first().copied()
                }
            };
            Box::pin(async move { next })
        }));
        let mut raw = abi::Event {
            time: monotonic_ns(),
            kind: abi::EVENT_DROP,
            reason: abi::DropReason::SpoofedSource as u8,
            dir: abi::Direction::Egress as u8,
            point: 0,
            endpoint_id: 0,
            src_identity: 0,
            dst_identity: 0,
            rule: 0,
            ifindex: 1,
            len: 0,
            sample_len: 0,
            pad: 0,
            sample: [0; abi::EVENT_SAMPLE],
        };
        tx.send(raw).await.expect("send");
        raw.kind = 77;
        tx.send(raw).await.expect("send an unknown kind");
        let first = lines.recv().await.expect("a line");
        assert_eq!((first.kind, first.reason.as_deref()), (Kind::Drop, Some("SPOOFED_SOURCE")));
        let age = SystemTime::now().duration_since(humantime::parse_rfc3339(&first.time).expect("time")).expect("past");
        assert!(age < Duration::from_secs(2), "stamped with the event's time: {age:?}");
        // The first reading only sets the baseline; the second shows 15 more suppressed.
        let tally = tokio::time::timeout(Duration::from_secs(5), lines.recv()).await.expect("in time").expect("line");
        assert_eq!((tally.kind, tally.count), (Kind::Suppressed, Some(15)));
        assert_eq!(monitor.counts().suppressed, 25);
        drop(tx);
        task.await.expect("ends when the events end");
    }
}
