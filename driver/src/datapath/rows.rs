//! The maps' raw entries turned into the rows the daemon shows (`cilium-rs bpf … list`): pure
//! conversions from the `abi` structs, and the kernel clock their timestamps are read against.

use std::net::IpAddr;

use bpf_programs::abi::{self, CtEntry, CtKey, EndpointInfo, NatEntry, NatKey};

use super::{CtRow, EndpointRow, NatRow, NatSide, Peer};
use crate::identity::Identity;

/// One entry of crs_endpoints.
pub fn endpoint_row(ifindex: u32, info: &EndpointInfo) -> EndpointRow {
    let ipv4 = info.ipv4_addr();
    EndpointRow {
        ifindex,
        number: info.endpoint_id,
        sandbox: info.sandbox_id,
        identity: Identity(info.identity),
        ipv6: info.ipv6_addr(),
        ipv4: ipv4.map(|(addr, _)| addr),
        gateway_ipv4: ipv4.map(|(_, gateway)| gateway),
        mac: info.mac,
        host_mac: info.host_mac,
        internal: info.flags & abi::ENDPOINT_F_INTERNAL != 0,
        masquerade: info.flags & abi::ENDPOINT_F_NO_MASQUERADE == 0,
        published: info.flags & abi::ENDPOINT_F_PUBLISHED != 0,
    }
}

fn ip(family: u8, addr: [u8; 16]) -> Option<IpAddr> {
    abi::IpKey { family, pad: [0; 3], addr }.ip()
}

fn millis(ns: u64) -> u64 {
    ns / 1_000_000
}

/// One entry of crs_ct, oriented from the flow's initiator; `None` for an unknown family.
/// `now_ns` is the kernel's coarse monotonic clock ([`monotonic_coarse_ns`]).
pub fn ct_row(key: &CtKey, entry: &CtEntry, now_ns: u64) -> Option<CtRow> {
    let lo: Peer = (ip(key.family, key.addr_lo)?, u16::from_be_bytes(key.port_lo));
    let hi: Peer = (ip(key.family, key.addr_hi)?, u16::from_be_bytes(key.port_hi));
    let (initiator, responder) = if entry.flags & abi::CT_F_INITIATOR_HI != 0 { (hi, lo) } else { (lo, hi) };
    let expires_in_ms = if entry.expires >= now_ns {
        i64::try_from(millis(entry.expires - now_ns)).unwrap_or(i64::MAX)
    } else {
        -i64::try_from(millis(now_ns - entry.expires)).unwrap_or(i64::MAX)
    };
    Some(CtRow {
        proto: key.proto,
        initiator,
        responder,
        flags: entry.flags,
        revision: entry.revision,
        packets: entry.packets,
        bytes: entry.bytes,
        expires_in_ms,
        age_ms: millis(now_ns.saturating_sub(entry.created)),
    })
}

/// One entry of crs_nat_out or crs_nat_in; `None` for an unknown family.
pub fn nat_row(side: NatSide, key: &NatKey, entry: &NatEntry, now_ns: u64) -> Option<NatRow> {
    let ((saddr, sport), (daddr, dport)) = key.endpoints()?;
    Some(NatRow {
        side,
        proto: key.proto,
        source: (saddr, sport),
        destination: (daddr, dport),
        translated: (ip(key.family, entry.addr)?, u16::from_be_bytes(entry.port)),
        published: entry.flags & abi::NAT_F_DNAT != 0,
        ifindex: entry.ifindex,
        age_ms: millis(now_ns.saturating_sub(entry.created)),
    })
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock of `bpf_ktime_get_coarse_ns()`, which
/// the programs stamp conntrack and NAT entries with.
pub fn monotonic_coarse_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call, and
    // CLOCK_MONOTONIC_COARSE exists on every Linux this daemon runs on (2.6.32 and later).
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    if ret != 0 {
        return 0;
    }
    u64::try_from(now.tv_sec).unwrap_or(0).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn v6(text: &str) -> [u8; 16] {
        text.parse::<Ipv6Addr>().expect("v6").octets()
    }

    #[test]
    fn conntrack_rows_start_at_the_initiator() {
        let key = CtKey {
            addr_lo: v6("fdc1::1"),
            addr_hi: v6("fdc1::2"),
            port_lo: 80u16.to_be_bytes(),
            port_hi: 40000u16.to_be_bytes(),
            family: abi::IP_FAMILY_V6,
            proto: 6,
            pad: 0,
        };
        let entry = CtEntry {
            expires: 100 * SECOND,
            created: 40 * SECOND,
            packets: [3, 2],
            bytes: [300, 200],
            revision: 7,
            flags: abi::CT_F_INITIATOR_HI | abi::CT_F_EGRESS_OK | abi::CT_F_INGRESS_OK,
        };
        let row = ct_row(&key, &entry, 50 * SECOND).expect("a row");
        assert_eq!(row.initiator, ("fdc1::2".parse().expect("ip"), 40000));
        assert_eq!(row.responder, ("fdc1::1".parse().expect("ip"), 80));
        assert_eq!((row.expires_in_ms, row.age_ms, row.revision), (50_000, 10_000, 7));

        let lo_first = CtEntry { flags: abi::CT_F_EGRESS_OK, ..entry };
        let row = ct_row(&key, &lo_first, 101 * SECOND).expect("a row");
        assert_eq!(row.initiator.1, 80, "the lo side initiated");
        assert_eq!(row.expires_in_ms, -1000, "expired a second ago, not evicted yet");
        assert!(ct_row(&CtKey { family: 9, ..key }, &entry, 0).is_none(), "unknown family");
    }

    #[test]
    fn nat_rows_read_ipv4_from_the_first_bytes() {
        let v4 = |a, b, c, d| abi::IpKey::from(Ipv4Addr::new(a, b, c, d)).addr;
        let key = NatKey {
            saddr: v4(10, 220, 0, 5),
            daddr: v4(198, 51, 100, 7),
            sport: 5000u16.to_be_bytes(),
            dport: 53u16.to_be_bytes(),
            family: abi::IP_FAMILY_V4,
            proto: 17,
            pad: 0,
        };
        let entry = NatEntry {
            addr: v4(203, 0, 113, 1),
            port: 61001u16.to_be_bytes(),
            flags: abi::NAT_F_SNAT,
            pad: 0,
            ifindex: 2,
            created: SECOND,
        };
        let row = nat_row(NatSide::Out, &key, &entry, 3 * SECOND).expect("a row");
        assert_eq!(row.source, (IpAddr::V4(Ipv4Addr::new(10, 220, 0, 5)), 5000));
        assert_eq!(row.destination, (IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 53));
        assert_eq!(row.translated, (IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), 61001));
        assert!(!row.published);
        assert_eq!((row.ifindex, row.age_ms), (2, 2000));
    }

    #[test]
    fn endpoint_rows_read_flags() {
        let info = EndpointInfo::new(7, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .with_identity(300)
            .with_ipv4(Ipv4Addr::new(10, 220, 0, 7), Ipv4Addr::new(169, 254, 0, 1));
        let mut info = info;
        info.flags |= abi::ENDPOINT_F_NO_MASQUERADE;
        let row = endpoint_row(42, &info);
        assert_eq!((row.ifindex, row.number, row.identity), (42, 7, Identity(300)));
        assert_eq!(row.ipv4, Some(Ipv4Addr::new(10, 220, 0, 7)));
        assert_eq!(row.gateway_ipv4, Some(Ipv4Addr::new(169, 254, 0, 1)));
        assert_eq!(row.ipv6, None);
        assert!(!row.masquerade && !row.internal && !row.published);
        assert!(monotonic_coarse_ns() > 0);
    }
}
