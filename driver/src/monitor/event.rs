//! A datapath event as people and scripts read it: the packet's addresses, ports and protocol
//! decoded from the sample it carries, and both ends named — container, endpoint, identity —
//! from a [`Directory`] of what the daemon knows (no I/O).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::SystemTime;

use bpf_programs::abi::{
    self, Direction, DropReason, EVENT_DROP, EVENT_TRACE, EVENT_VERDICT, TRACE_FROM_ENDPOINT, VERDICT_EGRESS,
    VERDICT_INGRESS,
};
use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::identity::Identity;

/// What kind of record a monitor line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A dropped packet, with the reason.
    Drop,
    /// The policy verdict of a new flow (or of one checked again after a policy change).
    Verdict,
    /// A packet of a traced endpoint.
    Trace,
    /// Events this reader missed because it fell behind (`count`).
    Lost,
    /// Events the kernel kept back under its rate limit since the last such line (`count`).
    Suppressed,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Drop => "drop",
            Kind::Verdict => "verdict",
            Kind::Trace => "trace",
            Kind::Lost => "lost",
            Kind::Suppressed => "suppressed",
        }
    }
}

/// One end of a packet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The container's name, when the address is an endpoint's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The endpoint's short id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
}

impl Peer {
    /// The container name, else the address (what a table shows).
    pub fn label(&self) -> String {
        let address = self.address.map(|a| match (a, self.port) {
            (IpAddr::V6(v6), Some(port)) => format!("[{v6}]:{port}"),
            (a, Some(port)) => format!("{a}:{port}"),
            (a, None) => a.to_string(),
        });
        match (&self.container, address) {
            (Some(name), Some(address)) => format!("{name} ({address})"),
            (Some(name), None) => name.clone(),
            (None, Some(address)) => address,
            (None, None) => "?".to_owned(),
        }
    }

    /// Whether `who` names this end: its container name or (a prefix of) its endpoint id.
    pub fn is(&self, who: &str) -> bool {
        self.container.as_deref() == Some(who) || self.endpoint.as_deref().is_some_and(|id| names_id(id, who))
    }
}

/// Whether `who` is (a prefix of at least 4 hex digits of) endpoint id `id`.
pub fn names_id(id: &str, who: &str) -> bool {
    who.len() >= 4 && (id.starts_with(who) || who.starts_with(id))
}

/// One line of `cilium-rs monitor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorEvent {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Verdicts: "allowed" or "denied".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Drops, denied verdicts: the reason (`POLICY_DENIED`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The deny rule that decided (`POLICY_DENY_RULE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    /// "egress" (sent by the endpoint) or "ingress" (on its way to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Verdicts: the checks made ("egress" of the sender, "ingress" of the receiver).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    /// The endpoint the event is about (counted on, traced on), by container name or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Its short endpoint id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_id: Option<String>,
    /// "tcp", "udp", "icmp", "icmpv6", "arp", or the IP protocol number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Peer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Peer>,
    /// ICMP type, TCP flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
    /// The packet's length in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u32>,
    /// `lost`, `suppressed`: how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl MonitorEvent {
    /// A `lost` or `suppressed` line.
    pub fn tally(kind: Kind, count: u64, at: SystemTime) -> MonitorEvent {
        MonitorEvent {
            time: rfc3339(at),
            kind,
            verdict: None,
            reason: None,
            rule: None,
            direction: None,
            checks: Vec::new(),
            endpoint: None,
            endpoint_id: None,
            protocol: None,
            source: None,
            destination: None,
            info: None,
            length: None,
            count: Some(count),
        }
    }

    /// Whether `who` (container name or endpoint id) is either end of the packet.
    pub fn involves(&self, who: &str) -> bool {
        [&self.source, &self.destination].into_iter().flatten().any(|p| p.is(who))
    }

    /// One line for people: time, what happened, source → destination, protocol and port.
    pub fn line(&self) -> String {
        let time = self.time.get(11..23).unwrap_or(&self.time);
        let what = match self.kind {
            Kind::Drop => format!("DROP {}", self.reason.as_deref().unwrap_or("?")),
            Kind::Verdict => match (&self.verdict, &self.reason) {
                (Some(v), Some(r)) if v == "denied" => format!("VERDICT denied {r}"),
                (Some(v), _) => format!("VERDICT {v}"),
                _ => "VERDICT".to_owned(),
            },
            Kind::Trace => "TRACE".to_owned(),
            Kind::Lost => return format!("{time} LOST {} events (this monitor fell behind)", self.count.unwrap_or(0)),
            Kind::Suppressed => {
                return format!("{time} SUPPRESSED {} events (kernel rate limit)", self.count.unwrap_or(0))
            }
        };
        let mut line = format!("{time} {what}");
        if let Some(rule) = self.rule {
            line.push_str(&format!(" (rule {rule})"));
        }
        let end = |p: &Option<Peer>| {
            p.as_ref().map_or("?".to_owned(), |p| match p.identity {
                Some(id) => format!("{} id={id}", p.label()),
                None => p.label(),
            })
        };
        line.push_str(&format!(" {} -> {}", end(&self.source), end(&self.destination)));
        if let Some(protocol) = &self.protocol {
            line.push(' ');
            line.push_str(protocol);
        }
        if let Some(info) = &self.info {
            line.push(' ');
            line.push_str(info);
        }
        if let Some(direction) = &self.direction {
            line.push_str(&format!(" {direction}"));
        }
        if !self.checks.is_empty() {
            line.push_str(&format!(" checked={}", self.checks.join("+")));
        }
        if let Some(endpoint) = &self.endpoint {
            line.push_str(&format!(" at {endpoint}"));
        }
        line
    }
}

/// An endpoint as events name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// Short endpoint id.
    pub endpoint: String,
    pub container: Option<String>,
    pub identity: Identity,
}

/// What the daemon knows to name the ends of a packet.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub by_address: HashMap<IpAddr, Named>,
    pub by_number: HashMap<u32, Named>,
    pub host_addresses: Vec<IpAddr>,
    /// CIDR identities of policy (longest prefix wins).
    pub cidrs: Vec<(IpNet, Identity)>,
}

impl Directory {
    /// The identity of an address that is no endpoint's: host, a CIDR identity, or world.
    fn identity_outside(&self, address: IpAddr) -> Identity {
        if self.host_addresses.contains(&address) || address.is_loopback() {
            return Identity::HOST;
        }
        self.cidrs
            .iter()
            .filter(|(net, _)| net.contains(&address))
            .max_by_key(|(net, _)| net.prefix_len())
            .map_or(Identity::WORLD, |(_, id)| *id)
    }

    fn peer(&self, address: Option<IpAddr>, port: Option<u16>, identity: u32) -> Peer {
        let named = address.and_then(|a| self.by_address.get(&a));
        let identity = match (identity, named, address) {
            (id, _, _) if id != 0 => Some(id),
            (_, Some(n), _) => Some(n.identity.0),
            (_, None, Some(a)) => Some(self.identity_outside(a).0),
            _ => None,
        };
        Peer {
            address,
            port,
            container: named.and_then(|n| n.container.clone()),
            endpoint: named.map(|n| n.endpoint.clone()),
            identity,
        }
    }

    /// The name (container, else id) and id of endpoint `number`.
    fn endpoint_of(&self, number: u32) -> (Option<String>, Option<String>) {
        match self.by_number.get(&number) {
            Some(named) => {
                (Some(named.container.clone().unwrap_or_else(|| named.endpoint.clone())), Some(named.endpoint.clone()))
            }
            None => (None, None),
        }
    }
}

/// What the packet sample of an event says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PacketSummary {
    pub protocol: Option<String>,
    pub source: Option<IpAddr>,
    pub destination: Option<IpAddr>,
    pub source_port: Option<u16>,
    pub destination_port: Option<u16>,
    pub info: Option<String>,
}

/// Decodes the start of a frame (Ethernet, then IPv4/IPv6 or ARP, then TCP/UDP/ICMP), as far
/// as the bytes go.
pub fn summarize(frame: &[u8]) -> PacketSummary {
    let mut summary = PacketSummary::default();
    let Ok(packet) = LaxSlicedPacket::from_ethernet(frame) else { return summary };
    let ip_number = match &packet.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let header = ip.header();
            summary.source = Some(IpAddr::V4(header.source_addr()));
            summary.destination = Some(IpAddr::V4(header.destination_addr()));
            ip.payload().ip_number.0
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let header = ip.header();
            summary.source = Some(IpAddr::V6(header.source_addr()));
            summary.destination = Some(IpAddr::V6(header.destination_addr()));
            ip.payload().ip_number.0
        }
        Some(LaxNetSlice::Arp(arp)) => {
            summary.protocol = Some("arp".to_owned());
            let ipv4 = |bytes: &[u8]| <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from);
            summary.source = ipv4(arp.sender_protocol_addr());
            summary.destination = ipv4(arp.target_protocol_addr());
            return summary;
        }
        None => return summary,
    };
    summary.protocol = Some(protocol_name(ip_number));
    match &packet.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            summary.source_port = Some(tcp.source_port());
            summary.destination_port = Some(tcp.destination_port());
            let flags: String =
                [(tcp.syn(), 'S'), (tcp.ack(), '.'), (tcp.fin(), 'F'), (tcp.rst(), 'R'), (tcp.psh(), 'P')]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, c)| *c)
                    .collect();
            summary.info = Some(format!("[{flags}]"));
        }
        Some(TransportSlice::Udp(udp)) => {
            summary.source_port = Some(udp.source_port());
            summary.destination_port = Some(udp.destination_port());
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            summary.info = Some(format!("type {} code {}", icmp.type_u8(), icmp.code_u8()));
        }
        Some(TransportSlice::Icmpv6(icmp)) => {
            summary.info = Some(format!("type {} code {}", icmp.type_u8(), icmp.code_u8()));
        }
        _ => {}
    }
    summary
}

/// How lines name an IP protocol: "tcp", "udp", "icmp", "icmpv6", else its number.
pub fn protocol_name(number: u8) -> String {
    match number {
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        1 => "icmp".to_owned(),
        58 => "icmpv6".to_owned(),
        n => n.to_string(),
    }
}

/// RFC 3339 in UTC with milliseconds.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Turns a raw event into a monitor line; `None` for a record of no known kind.
pub fn describe(event: &abi::Event, at: SystemTime, directory: &Directory) -> Option<MonitorEvent> {
    let kind = match event.kind {
        EVENT_DROP => Kind::Drop,
        EVENT_VERDICT => Kind::Verdict,
        EVENT_TRACE => Kind::Trace,
        _ => return None,
    };
    let packet = summarize(event.packet());
    let source = directory.peer(packet.source, packet.source_port, event.src_identity);
    let destination = directory.peer(packet.destination, packet.destination_port, event.dst_identity);
    let reason = DropReason::from_u8(event.reason);
    let direction = Direction::from_u8(event.dir);
    let mut line = MonitorEvent {
        time: rfc3339(at),
        kind,
        verdict: None,
        reason: None,
        rule: None,
        direction: direction.map(|d| d.name().to_owned()),
        checks: Vec::new(),
        endpoint: None,
        endpoint_id: None,
        protocol: packet.protocol,
        source: Some(source),
        destination: Some(destination),
        info: packet.info,
        length: Some(event.len),
        count: None,
    };
    let reason_name = || Some(reason.map_or_else(|| format!("REASON_{}", event.reason), |r| r.name().to_owned()));
    match kind {
        Kind::Drop => {
            line.reason = reason_name();
            (line.endpoint, line.endpoint_id) = directory.endpoint_of(event.endpoint_id);
        }
        Kind::Verdict => {
            let allowed = reason == Some(DropReason::Forwarded);
            line.verdict = Some(if allowed { "allowed" } else { "denied" }.to_owned());
            if !allowed {
                line.reason = reason_name();
            }
            if reason == Some(DropReason::PolicyDenyRule) {
                line.rule = Some(event.rule);
            }
            for (bit, name) in [(VERDICT_EGRESS, "egress"), (VERDICT_INGRESS, "ingress")] {
                if event.point & bit != 0 {
                    line.checks.push(name.to_owned());
                }
            }
            // The endpoint whose check decided: the receiver's ingress, else the sender.
            let at_receiver = direction == Some(Direction::Ingress) || (allowed && line.checks == ["ingress"]);
            let decided = if at_receiver { &line.destination } else { &line.source };
            line.endpoint_id = decided.as_ref().and_then(|p| p.endpoint.clone());
            line.endpoint = decided.as_ref().and_then(|p| p.container.clone().or_else(|| p.endpoint.clone()));
        }
        Kind::Trace => {
            line.info = Some(
                match event.point {
                    TRACE_FROM_ENDPOINT => "from-endpoint",
                    _ => "to-endpoint",
                }
                .to_owned()
                    + &line.info.as_ref().map(|i| format!(" {i}")).unwrap_or_default(),
            );
            (line.endpoint, line.endpoint_id) = directory.endpoint_of(event.endpoint_id);
        }
        Kind::Lost | Kind::Suppressed => {}
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    use bpf_programs::abi::EVENT_SAMPLE;

    use super::*;

    const WEB6: Ipv6Addr = Ipv6Addr::new(0xfdc1, 0x1a00, 0, 0, 0, 0, 0, 1);
    const API6: Ipv6Addr = Ipv6Addr::new(0xfdc1, 0x1a00, 0, 0, 0, 0, 0, 2);

    fn frame_v6_tcp(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(src.octets(), dst.octets(), 64)
            .tcp(sport, dport, 1, 65535)
            .syn();
        let mut frame = Vec::new();
        builder.write(&mut frame, &[0u8; 300]).expect("build");
        frame
    }

    fn frame_v4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src.octets(), dst.octets(), 64)
            .udp(sport, dport);
        let mut frame = Vec::new();
        builder.write(&mut frame, b"query").expect("build");
        frame
    }

    fn raw(kind: u8, reason: DropReason, dir: Direction, frame: &[u8]) -> abi::Event {
        let mut sample = [0u8; EVENT_SAMPLE];
        let n = frame.len().min(EVENT_SAMPLE);
        sample[..n].copy_from_slice(&frame[..n]);
        abi::Event {
            time: 0,
            kind,
            reason: reason as u8,
            dir: dir as u8,
            point: 0,
            endpoint_id: 1,
            src_identity: 0,
            dst_identity: 0,
            rule: 0,
            ifindex: 7,
            len: frame.len() as u32,
            sample_len: n as u16,
            pad: 0,
            sample,
        }
    }

    fn directory() -> Directory {
        let web = Named { endpoint: "c4f74bcca3b0".into(), container: Some("web".into()), identity: Identity(256) };
        let api = Named { endpoint: "009377b1a830".into(), container: Some("api".into()), identity: Identity(257) };
        Directory {
            by_address: [(IpAddr::V6(WEB6), web.clone()), (IpAddr::V6(API6), api)].into_iter().collect(),
            by_number: [(1, web)].into_iter().collect(),
            host_addresses: vec!["198.51.100.1".parse().expect("ip")],
            cidrs: vec![("198.51.100.0/24".parse().expect("net"), Identity((1 << 24) | 1))],
        }
    }

    #[test]
    fn a_policy_drop_names_both_containers_their_identities_and_the_port() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let event = raw(EVENT_DROP, DropReason::PolicyDenied, Direction::Ingress, &frame_v6_tcp(API6, WEB6, 40000, 80));
        let line = describe(&event, at, &directory()).expect("a drop");
        assert_eq!(line.kind, Kind::Drop);
        assert_eq!(line.reason.as_deref(), Some("POLICY_DENIED"));
        assert_eq!(line.direction.as_deref(), Some("ingress"));
        assert_eq!(line.endpoint.as_deref(), Some("web"));
        assert_eq!(line.protocol.as_deref(), Some("tcp"));
        let (src, dst) = (line.source.clone().expect("src"), line.destination.clone().expect("dst"));
        assert_eq!((src.container.as_deref(), src.identity, src.port), (Some("api"), Some(257), Some(40000)));
        assert_eq!((dst.container.as_deref(), dst.identity, dst.port), (Some("web"), Some(256), Some(80)));
        assert_eq!(line.time, "2023-11-14T22:13:20.123Z");
        assert!(line.involves("api") && line.involves("c4f74bcc") && !line.involves("db"));
        let text = line.line();
        assert!(text.starts_with("22:13:20.123 DROP POLICY_DENIED api ([fdc1:1a00::2]:40000) id=257 -> web"), "{text}");
        let json: MonitorEvent = serde_json::from_str(&serde_json::to_string(&line).expect("json")).expect("back");
        assert_eq!(json, line);
    }

    #[test]
    fn verdicts_say_allowed_or_denied_by_which_rule_and_outside_addresses_get_their_identity() {
        let frame = frame_v4_udp(Ipv4Addr::new(198, 51, 100, 7), Ipv4Addr::new(10, 0, 0, 9), 5353, 53);
        let mut event = raw(EVENT_VERDICT, DropReason::PolicyDenyRule, Direction::Ingress, &frame);
        event.rule = 42;
        event.point = VERDICT_INGRESS;
        let line = describe(&event, SystemTime::UNIX_EPOCH, &directory()).expect("a verdict");
        assert_eq!(line.verdict.as_deref(), Some("denied"));
        assert_eq!((line.reason.as_deref(), line.rule), (Some("POLICY_DENY_RULE"), Some(42)));
        assert_eq!(line.checks, ["ingress"]);
        let src = line.source.expect("src");
        assert_eq!(src.identity, Some((1 << 24) | 1), "the CIDR identity of 198.51.100.0/24");
        assert_eq!(line.destination.expect("dst").identity, Some(Identity::WORLD.0));

        let mut allowed =
            raw(EVENT_VERDICT, DropReason::Forwarded, Direction::Egress, &frame_v6_tcp(API6, WEB6, 40001, 80));
        allowed.dir = 0;
        allowed.point = VERDICT_EGRESS | VERDICT_INGRESS;
        allowed.src_identity = 257;
        allowed.dst_identity = 256;
        let line = describe(&allowed, SystemTime::UNIX_EPOCH, &directory()).expect("a verdict");
        assert_eq!((line.verdict.as_deref(), line.reason, line.rule), (Some("allowed"), None, None));
        assert_eq!(line.checks, ["egress", "ingress"]);
        assert_eq!(line.endpoint.as_deref(), Some("api"), "decided by the sender");
    }

    #[test]
    fn truncated_and_foreign_samples_decode_as_far_as_they_go() {
        let frame = frame_v6_tcp(API6, WEB6, 1, 2);
        let half = summarize(&frame[..14 + 40 + 4]);
        assert_eq!((half.source, half.destination), (Some(IpAddr::V6(API6)), Some(IpAddr::V6(WEB6))));
        assert_eq!(summarize(&[]), PacketSummary::default());
        assert_eq!(summarize(&[0xff; 20]).source, None);
        let mut unknown = raw(9, DropReason::Malformed, Direction::Egress, &frame);
        assert!(describe(&unknown, SystemTime::UNIX_EPOCH, &directory()).is_none());
        unknown.kind = EVENT_DROP;
        unknown.reason = 200;
        unknown.sample_len = 1000;
        let line = describe(&unknown, SystemTime::UNIX_EPOCH, &directory()).expect("a drop");
        assert_eq!(line.reason.as_deref(), Some("REASON_200"));
    }

    #[test]
    fn ids_are_named_by_prefixes_of_four_digits_or_more() {
        assert!(names_id("c4f74bcca3b0", "c4f7"));
        assert!(names_id("c4f74bcca3b0", "c4f74bcca3b0deadbeef"));
        assert!(!names_id("c4f74bcca3b0", "c4f"));
        assert!(!names_id("c4f74bcca3b0", "d4f7"));
    }
}
