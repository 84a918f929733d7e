//! The programs' events as the daemon receives them: a task drains the `crs_events` ring buffer
//! into a bounded channel, and crs_event_rate holds each CPU's budget and counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::Ebpf;
use bpf_programs::abi::{Event, EventRate, MAP_EVENTS, MAP_EVENT_RATE};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::bpf::{take_map, BpfError};

/// Events waiting for the daemon between the ring and its consumer; more are counted as lost.
pub const EVENT_QUEUE: usize = 8192;

/// What the programs reported and what they kept back, summed over the CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EventCounts {
    /// Written to the ring by the programs.
    pub emitted: u64,
    /// Kept back in the kernel: over the rate limit, or the ring was full.
    pub suppressed: u64,
    /// Read from the ring but dropped in the daemon because its consumer fell behind.
    pub lost: u64,
}

/// The event budget of each CPU: a burst, then one event per interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRateLimit {
    /// Events per second and CPU once the burst is spent; 0 turns events off.
    pub per_second: u32,
    pub burst: u32,
}

impl EventRateLimit {
    /// The interval between events, in nanoseconds, as crs_config holds it (0: off).
    pub fn interval_ns(&self) -> u32 {
        if self.per_second == 0 {
            0
        } else {
            (1_000_000_000 / u64::from(self.per_second)).max(1) as u32
        }
    }
}

/// The ring buffer (until its reader takes it) and the per-CPU counters.
pub struct EventMaps {
    ring: Option<RingBuf<MapData>>,
    rate: PerCpuArray<MapData, EventRate>,
    lost: Arc<AtomicU64>,
}

impl std::fmt::Debug for EventMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventMaps")
    }
}

fn layout(map: &'static str) -> impl Fn(aya::maps::MapError) -> BpfError {
    move |error| BpfError::MapLayout { map, error: Box::new(error) }
}

impl EventMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(EventMaps {
            ring: Some(RingBuf::try_from(take_map(ebpf, MAP_EVENTS)?).map_err(layout(MAP_EVENTS))?),
            rate: PerCpuArray::try_from(take_map(ebpf, MAP_EVENT_RATE)?).map_err(layout(MAP_EVENT_RATE))?,
            lost: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The counts so far: the kernel's, summed over the CPUs, and the reader's losses.
    pub fn counts(&self) -> Result<EventCounts, BpfError> {
        let values =
            self.rate.get(&0, 0).map_err(|error| BpfError::MapRead { map: MAP_EVENT_RATE, error: Box::new(error) })?;
        let mut counts = EventCounts { lost: self.lost.load(Ordering::Relaxed), ..EventCounts::default() };
        for cpu in values.iter() {
            counts.emitted += cpu.emitted;
            counts.suppressed += cpu.suppressed;
        }
        Ok(counts)
    }

    /// The records in the ring now, read without waiting (before [`EventMaps::start_reader`]
    /// took the ring: empty after).
    pub fn drain_now(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some(ring) = self.ring.as_mut() {
            while let Some(record) = ring.next() {
                events.extend(Event::from_bytes(&record));
            }
        }
        events
    }

    /// Starts draining the ring into a channel (once; `None` after the first call). Must run
    /// inside a tokio runtime.
    pub fn start_reader(&mut self) -> Result<Option<mpsc::Receiver<Event>>, BpfError> {
        let Some(ring) = self.ring.take() else { return Ok(None) };
        // SAFETY: the ring buffer owns its map's file descriptor, which stays open and is not
        // replaced for as long as the AsyncFd owns the ring buffer.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|error| {
            BpfError::Io { op: "watch", path: MAP_EVENTS.into(), source: std::io::Error::from(error) }
        })?;
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        tokio::spawn(drain(ring, tx, Arc::clone(&self.lost)));
        Ok(Some(rx))
    }
}

/// How often the ring is drained without a wakeup: the programs wake the reader only when a
/// batch has piled up (`EVENT_WAKEUP_BYTES` in events.h), so this bounds how late an event is.
const DRAIN_PERIOD: std::time::Duration = std::time::Duration::from_millis(20);

/// Moves every record of the ring into `tx`, woken by the kernel for a batch or every
/// [`DRAIN_PERIOD`]; what does not fit is counted in `lost`. Ends when the receiver is gone.
async fn drain(mut ring: AsyncFd<RingBuf<MapData>>, tx: mpsc::Sender<Event>, lost: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(DRAIN_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = ring.readable_mut() => match ready {
                // Cleared before draining: what arrives meanwhile wakes the reader again.
                Ok(mut ready) => ready.clear_ready(),
                Err(e) => {
                    tracing::error!(error = %e, "event ring: poll failed; no more events");
                    return;
                }
            },
            _ = tick.tick() => {}
        }
        let buffer = ring.get_mut();
        while let Some(record) = buffer.next() {
            let Some(event) = Event::from_bytes(&record) else { continue };
            match tx.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_is_an_interval_in_nanoseconds_and_zero_turns_events_off() {
        assert_eq!(EventRateLimit { per_second: 1000, burst: 1 }.interval_ns(), 1_000_000);
        assert_eq!(EventRateLimit { per_second: 0, burst: 100 }.interval_ns(), 0);
        assert_eq!(EventRateLimit { per_second: u32::MAX, burst: 1 }.interval_ns(), 1);
    }
}
