//! The recent flows: who talked to whom on which port, allowed or dropped, with packets, bytes
//! and first/last seen — one row per source, destination, port, protocol and verdict, fed by
//! the monitor's lines and by connection tracking, bounded in size and age (no I/O).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::event::{rfc3339, Kind, MonitorEvent, Peer};

/// One row of `cilium-rs flows`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub source: Peer,
    pub destination: Peer,
    /// The destination port (none for ICMP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub protocol: String,
    /// "allowed" or "dropped".
    pub verdict: String,
    /// Why it was dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub first_seen: String,
    pub last_seen: String,
}

/// What a flow row is about: the ends (endpoint id, else address, without the source port).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FlowKey {
    source: String,
    destination: String,
    port: Option<u16>,
    protocol: String,
    allowed: bool,
}

#[derive(Debug, Clone)]
struct Row {
    flow: Flow,
    first: SystemTime,
    last: SystemTime,
    /// Allowed flows: packets and bytes of the tracked connections seen last.
    tracked: (u64, u64),
}

/// One tracked connection, as connection tracking counts it (both directions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub initiator: IpAddr,
    pub responder: IpAddr,
    pub port: Option<u16>,
    pub protocol: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug)]
pub struct FlowTable {
    rows: HashMap<FlowKey, Row>,
    capacity: usize,
    window: Duration,
}

fn end_key(peer: &Peer) -> String {
    peer.endpoint.clone().or_else(|| peer.address.map(|a| a.to_string())).unwrap_or_default()
}

impl FlowTable {
    pub fn new(capacity: usize, window: Duration) -> FlowTable {
        FlowTable { rows: HashMap::new(), capacity: capacity.max(1), window }
    }

    /// Counts a drop or a verdict line.
    pub fn observe(&mut self, line: &MonitorEvent, at: SystemTime) {
        let allowed = match (line.kind, line.verdict.as_deref()) {
            (Kind::Drop, _) => false,
            (Kind::Verdict, Some("allowed")) => true,
            // A denied verdict is followed by its drop, which counts the packet.
            _ => return,
        };
        let (Some(source), Some(destination)) = (&line.source, &line.destination) else { return };
        let protocol = line.protocol.clone().unwrap_or_else(|| "?".to_owned());
        let key = FlowKey {
            source: end_key(source),
            destination: end_key(destination),
            port: destination.port,
            protocol: protocol.clone(),
            allowed,
        };
        if !self.rows.contains_key(&key) && self.rows.len() >= self.capacity {
            self.evict_oldest();
        }
        let row = self.rows.entry(key).or_insert_with(|| Row {
            flow: Flow {
                source: Peer { port: None, ..source.clone() },
                destination: destination.clone(),
                port: destination.port,
                protocol,
                verdict: if allowed { "allowed" } else { "dropped" }.to_owned(),
                reason: None,
                packets: 0,
                bytes: 0,
                first_seen: rfc3339(at),
                last_seen: rfc3339(at),
            },
            first: at,
            last: at,
            tracked: (0, 0),
        });
        row.last = at;
        // Names arrive late (an identity resolved after the first packet): keep the latest.
        row.flow.source = Peer { port: None, ..source.clone() };
        row.flow.destination = destination.clone();
        if allowed {
            row.flow.packets = row.flow.packets.max(1);
        } else {
            row.flow.packets += 1;
            row.flow.bytes += u64::from(line.length.unwrap_or(0));
            row.flow.reason = line.reason.clone();
        }
    }

    /// Takes the allowed flows' packets and bytes from the tracked connections (summed per
    /// row; a row never counts less than it did).
    pub fn account(&mut self, tracked: &[Tracked], at: SystemTime) {
        let mut sums: HashMap<&FlowKey, (u64, u64)> = HashMap::new();
        let by_ends: HashMap<(IpAddr, IpAddr, Option<u16>, &str), &FlowKey> = self
            .rows
            .iter()
            .filter(|(k, _)| k.allowed)
            .filter_map(|(k, r)| {
                Some(((r.flow.source.address?, r.flow.destination.address?, k.port, k.protocol.as_str()), k))
            })
            .collect();
        for t in tracked {
            if let Some(key) = by_ends.get(&(t.initiator, t.responder, t.port, t.protocol.as_str())) {
                let sum = sums.entry(key).or_default();
                sum.0 += t.packets;
                sum.1 += t.bytes;
            }
        }
        let sums: Vec<(FlowKey, (u64, u64))> = sums.into_iter().map(|(k, v)| (k.clone(), v)).collect();
        for (key, (packets, bytes)) in sums {
            if let Some(row) = self.rows.get_mut(&key) {
                if (packets, bytes) != row.tracked {
                    row.last = at;
                }
                row.tracked = (packets, bytes);
                row.flow.packets = row.flow.packets.max(packets);
                row.flow.bytes = row.flow.bytes.max(bytes);
            }
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(oldest) = self.rows.iter().min_by_key(|(_, r)| r.last).map(|(k, _)| k.clone()) {
            self.rows.remove(&oldest);
        }
    }

    /// Forgets the flows not seen within the window.
    pub fn expire(&mut self, now: SystemTime) {
        let window = self.window;
        self.rows.retain(|_, r| now.duration_since(r.last).map_or(true, |age| age <= window));
    }

    /// The flows, most recent first.
    pub fn list(&self) -> Vec<Flow> {
        let mut rows: Vec<&Row> = self.rows.values().collect();
        rows.sort_by(|a, b| b.last.cmp(&a.last).then_with(|| a.first.cmp(&b.first)));
        rows.into_iter()
            .map(|r| Flow { last_seen: rfc3339(r.last), first_seen: rfc3339(r.first), ..r.flow.clone() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, address: &str, port: Option<u16>) -> Peer {
        Peer {
            address: Some(address.parse().expect("address")),
            port,
            container: Some(name.to_owned()),
            endpoint: Some(format!("{name}-endpoint")),
            identity: Some(256),
        }
    }

    fn line(kind: Kind, verdict: Option<&str>, from: Peer, to: Peer) -> MonitorEvent {
        MonitorEvent {
            verdict: verdict.map(str::to_owned),
            reason: (kind == Kind::Drop).then(|| "POLICY_DENIED".to_owned()),
            protocol: Some("tcp".to_owned()),
            source: Some(from),
            destination: Some(to),
            length: Some(74),
            count: None,
            ..MonitorEvent::tally(kind, 0, SystemTime::UNIX_EPOCH)
        }
    }

    #[test]
    fn connections_aggregate_per_port_and_verdict_and_drops_count_packets_and_bytes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut table = FlowTable::new(100, Duration::from_secs(300));
        for sport in [40000, 40001] {
            let allowed = line(
                Kind::Verdict,
                Some("allowed"),
                peer("api", "fd00::2", Some(sport)),
                peer("web", "fd00::1", Some(80)),
            );
            table.observe(&allowed, t0);
        }
        for _ in 0..3 {
            table.observe(
                &line(Kind::Drop, None, peer("other", "fd00::3", Some(5)), peer("web", "fd00::1", Some(80))),
                t0,
            );
        }
        table.observe(
            &line(Kind::Verdict, Some("denied"), peer("other", "fd00::3", Some(5)), peer("web", "fd00::1", Some(80))),
            t0,
        );
        let flows = table.list();
        assert_eq!(flows.len(), 2, "{flows:#?}");
        let allowed = flows.iter().find(|f| f.verdict == "allowed").expect("allowed");
        assert_eq!(
            (allowed.source.container.as_deref(), allowed.port, allowed.source.port),
            (Some("api"), Some(80), None)
        );
        let dropped = flows.iter().find(|f| f.verdict == "dropped").expect("dropped");
        assert_eq!((dropped.packets, dropped.bytes, dropped.reason.as_deref()), (3, 222, Some("POLICY_DENIED")));

        let tracked = |packets| Tracked {
            initiator: "fd00::2".parse().expect("ip"),
            responder: "fd00::1".parse().expect("ip"),
            port: Some(80),
            protocol: "tcp".into(),
            packets,
            bytes: packets * 100,
        };
        table.account(&[tracked(5), tracked(7)], t0 + Duration::from_secs(10));
        let allowed = table.list().into_iter().find(|f| f.verdict == "allowed").expect("allowed");
        assert_eq!((allowed.packets, allowed.bytes), (12, 1200), "summed over its connections");
        assert_eq!(allowed.last_seen, rfc3339(t0 + Duration::from_secs(10)));
        table.account(&[tracked(2)], t0 + Duration::from_secs(20));
        let allowed = table.list().into_iter().find(|f| f.verdict == "allowed").expect("allowed");
        assert_eq!(allowed.packets, 12, "never less than it counted");
        assert_eq!(table.list()[0].verdict, "allowed", "most recent first");
    }

    #[test]
    fn the_table_is_bounded_in_rows_and_age() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut table = FlowTable::new(2, Duration::from_secs(60));
        for (i, port) in [1u16, 2, 3].into_iter().enumerate() {
            let drop = line(Kind::Drop, None, peer("a", "fd00::2", None), peer("b", "fd00::1", Some(port)));
            table.observe(&drop, t0 + Duration::from_secs(i as u64));
        }
        let ports: Vec<Option<u16>> = table.list().iter().map(|f| f.port).collect();
        assert_eq!(ports, [Some(3), Some(2)], "the oldest went");
        table.expire(t0 + Duration::from_secs(62));
        let ports: Vec<Option<u16>> = table.list().iter().map(|f| f.port).collect();
        assert_eq!(ports, [Some(3)], "older than the window");
        table.observe(&MonitorEvent::tally(Kind::Lost, 5, t0), t0);
        assert_eq!(table.list().len(), 1, "tallies are no flows");
    }
}
