//! A small packet builder for the verdict tests: Ethernet, ARP, IPv4 (options, fragments),
//! IPv6 (extension headers, fragment header), TCP, UDP, ICMP and ICMPv6, with real checksums.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_HLEN: usize = 14;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

/// The Internet checksum (RFC 1071) of `data`: 0 when `data` already carries a valid one.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Where an L4 header keeps its checksum and what the checksum covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Csum {
    /// No checksum is filled in (a raw or truncated header, a later fragment).
    None,
    /// At this offset, over the L4 bytes only (ICMPv4).
    Plain(usize),
    /// At this offset, over the IP pseudo-header and the L4 bytes (TCP, UDP, ICMPv6).
    Pseudo(usize),
}

/// The part of an IP packet after the IP header(s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4 {
    pub proto: u8,
    pub bytes: Vec<u8>,
    pub csum: Csum,
}

impl L4 {
    /// A 20-byte TCP header with `flags` (`TCP_*`).
    pub fn tcp(sport: u16, dport: u16, flags: u8) -> Self {
        let mut b = Vec::with_capacity(20);
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b.extend_from_slice(&1000u32.to_be_bytes()); // sequence
        b.extend_from_slice(&(if flags & TCP_ACK != 0 { 2000u32 } else { 0 }).to_be_bytes());
        b.push(5 << 4); // data offset: 5 words
        b.push(flags);
        b.extend_from_slice(&65535u16.to_be_bytes()); // window
        b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        L4 { proto: IPPROTO_TCP, bytes: b, csum: Csum::Pseudo(16) }
    }

    pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Self {
        let mut b = Vec::with_capacity(8 + payload.len());
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b.extend_from_slice(&u16::try_from(8 + payload.len()).expect("UDP length").to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(payload);
        L4 { proto: IPPROTO_UDP, bytes: b, csum: Csum::Pseudo(6) }
    }

    /// An ICMPv4 message: type, code, the 4 bytes after the checksum, and the body.
    pub fn icmp4(ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Self {
        let mut b = vec![ty, code, 0, 0];
        b.extend_from_slice(&rest);
        b.extend_from_slice(body);
        L4 { proto: IPPROTO_ICMP, bytes: b, csum: Csum::Plain(2) }
    }

    /// An ICMPv6 message: type, code, the 4 bytes after the checksum, and the body.
    pub fn icmp6(ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Self {
        let mut b = vec![ty, code, 0, 0];
        b.extend_from_slice(&rest);
        b.extend_from_slice(body);
        L4 { proto: IPPROTO_ICMPV6, bytes: b, csum: Csum::Pseudo(2) }
    }

    /// An ICMPv4 echo request (type 8) or reply (type 0).
    pub fn echo4(request: bool, id: u16, seq: u16) -> Self {
        let [i0, i1] = id.to_be_bytes();
        let [s0, s1] = seq.to_be_bytes();
        Self::icmp4(if request { 8 } else { 0 }, 0, [i0, i1, s0, s1], b"crs-echo-payload")
    }

    /// An ICMPv6 echo request (type 128) or reply (type 129).
    pub fn echo6(request: bool, id: u16, seq: u16) -> Self {
        let [i0, i1] = id.to_be_bytes();
        let [s0, s1] = seq.to_be_bytes();
        Self::icmp6(if request { 128 } else { 129 }, 0, [i0, i1, s0, s1], b"crs-echo-payload")
    }

    /// Bytes of protocol `proto` with no checksum (e.g. a later fragment's payload).
    pub fn raw(proto: u8, bytes: &[u8]) -> Self {
        L4 { proto, bytes: bytes.to_vec(), csum: Csum::None }
    }

    /// The same header cut to its first `len` bytes.
    pub fn truncated(mut self, len: usize) -> Self {
        self.bytes.truncate(len);
        self.csum = Csum::None;
        self
    }

    fn fill_checksum(&mut self, pseudo: &[u8]) {
        let (offset, covered) = match self.csum {
            Csum::None => return,
            Csum::Plain(offset) => (offset, self.bytes.clone()),
            Csum::Pseudo(offset) => {
                let mut covered = pseudo.to_vec();
                covered.extend_from_slice(&self.bytes);
                (offset, covered)
            }
        };
        let sum = checksum(&covered);
        // UDP sends 0 as "no checksum": a computed 0 goes out as 0xffff.
        let sum = if sum == 0 && self.proto == IPPROTO_UDP { 0xffff } else { sum };
        self.bytes[offset..offset + 2].copy_from_slice(&sum.to_be_bytes());
    }
}

/// An IPv4 header; `packet` prepends it to an L4 part.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub id: u16,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    pub more_fragments: bool,
    /// Option bytes (padded to a multiple of 4 with end-of-options).
    pub options: Vec<u8>,
    /// Overrides the header length field (in 4-byte words) without changing the bytes.
    pub ihl: Option<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Ipv4 { src, dst, ttl: 64, id: 0x4242, frag_offset: 0, more_fragments: false, options: Vec::new(), ihl: None }
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        while !self.options.len().is_multiple_of(4) {
            self.options.push(0);
        }
        self
    }

    pub fn ihl(mut self, ihl: u8) -> Self {
        self.ihl = Some(ihl);
        self
    }

    /// A fragment of datagram `id` at `offset` 8-byte units, with more fragments to come or not.
    pub fn fragment(mut self, id: u16, offset: u16, more: bool) -> Self {
        self.id = id;
        self.frag_offset = offset;
        self.more_fragments = more;
        self
    }

    /// The IPv4 packet: this header (with its checksum) and `l4` (with its checksum).
    pub fn packet(&self, l4: &L4) -> Vec<u8> {
        let hlen = 20 + self.options.len();
        let total = u16::try_from(hlen + l4.bytes.len()).expect("IPv4 total length");
        let ihl = self.ihl.unwrap_or(u8::try_from(hlen / 4).expect("IPv4 header length"));
        let frag = (if self.more_fragments { 0x2000 } else { 0 }) | (self.frag_offset & 0x1fff);
        let mut h = Vec::with_capacity(hlen);
        h.push(0x40 | (ihl & 0x0f));
        h.push(0);
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&frag.to_be_bytes());
        h.push(self.ttl);
        h.push(l4.proto);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());

        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&self.dst.octets());
        pseudo.extend_from_slice(&[0, l4.proto]);
        pseudo.extend_from_slice(&u16::try_from(l4.bytes.len()).expect("L4 length").to_be_bytes());
        let mut l4 = l4.clone();
        l4.fill_checksum(&pseudo);
        h.extend_from_slice(&l4.bytes);
        h
    }
}

/// An IPv6 extension header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options of `8 * (units + 1)` bytes (padding only).
    HopByHop(u8),
    /// Hop-by-hop options with a router alert (MLD), 8 bytes.
    RouterAlert,
    /// Destination options of `8 * (units + 1)` bytes (padding only).
    DstOpts(u8),
    /// A routing header (type 253, experimental, no segments left) with one address, 24 bytes.
    Routing,
    /// An authentication header with a 12-byte ICV, 24 bytes.
    Ah,
    /// A fragment header: datagram `id`, `offset` in 8-byte units, more fragments or not.
    Fragment { id: u32, offset: u16, more: bool },
}

impl Ext {
    fn code(self) -> u8 {
        match self {
            Ext::HopByHop(_) | Ext::RouterAlert => 0,
            Ext::DstOpts(_) => 60,
            Ext::Routing => 43,
            Ext::Ah => 51,
            Ext::Fragment { .. } => 44,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop(units) | Ext::DstOpts(units) => {
                let len = 8 * (usize::from(units) + 1);
                // One PadN option fills everything after the two header bytes.
                let mut b = vec![next, units, 1, u8::try_from(len - 4).expect("PadN length")];
                b.resize(len, 0);
                b
            }
            Ext::RouterAlert => vec![next, 0, 5, 2, 0, 0, 1, 0],
            Ext::Routing => {
                let mut b = vec![next, 2, 253, 0, 0, 0, 0, 0];
                b.resize(24, 0);
                b
            }
            Ext::Ah => {
                let mut b = vec![next, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
                b.resize(24, 0);
                b
            }
            Ext::Fragment { id, offset, more } => {
                let field = (offset << 3) | u16::from(more);
                let mut b = vec![next, 0];
                b.extend_from_slice(&field.to_be_bytes());
                b.extend_from_slice(&id.to_be_bytes());
                b
            }
        }
    }
}

/// An IPv6 header and its extension headers; `packet` prepends them to an L4 part.
#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub ext: Vec<Ext>,
}

impl Ipv6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Ipv6 { src, dst, hop_limit: 64, ext: Vec::new() }
    }

    pub fn hop_limit(mut self, hop_limit: u8) -> Self {
        self.hop_limit = hop_limit;
        self
    }

    /// Appends an extension header (in order, before the L4 part).
    pub fn ext(mut self, ext: Ext) -> Self {
        self.ext.push(ext);
        self
    }

    /// The IPv6 packet: header, extension headers and `l4` (with its checksum).
    pub fn packet(&self, l4: &L4) -> Vec<u8> {
        let mut exts = Vec::new();
        for (i, ext) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(l4.proto, |e| e.code());
            exts.extend_from_slice(&ext.bytes(next));
        }
        let first = self.ext.first().map_or(l4.proto, |e| e.code());

        let mut pseudo = Vec::with_capacity(40);
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&self.dst.octets());
        pseudo.extend_from_slice(&u32::try_from(l4.bytes.len()).expect("L4 length").to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, l4.proto]);
        let mut l4 = l4.clone();
        l4.fill_checksum(&pseudo);

        let payload_len = u16::try_from(exts.len() + l4.bytes.len()).expect("IPv6 payload length");
        let mut p = Vec::with_capacity(40 + usize::from(payload_len));
        p.extend_from_slice(&0x6000_0000u32.to_be_bytes());
        p.extend_from_slice(&payload_len.to_be_bytes());
        p.push(first);
        p.push(self.hop_limit);
        p.extend_from_slice(&self.src.octets());
        p.extend_from_slice(&self.dst.octets());
        p.extend_from_slice(&exts);
        p.extend_from_slice(&l4.bytes);
        p
    }
}

/// An IPv4 or IPv6 packet (with default header fields) and its ethertype.
pub fn ip_packet(src: IpAddr, dst: IpAddr, l4: &L4) -> (u16, Vec<u8>) {
    match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => (ETH_P_IPV6, Ipv6::new(s, d).packet(l4)),
        (IpAddr::V4(s), IpAddr::V4(d)) => (ETH_P_IP, Ipv4::new(s, d).packet(l4)),
        _ => panic!("mixed address families {src} → {dst}"),
    }
}

/// An Ethernet frame.
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An ARP packet for IPv4 over Ethernet.
pub fn arp(op: u16, sha: [u8; 6], sip: Ipv4Addr, tha: [u8; 6], tip: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 0x08, 0x00, 6, 4];
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha);
    p.extend_from_slice(&sip.octets());
    p.extend_from_slice(&tha);
    p.extend_from_slice(&tip.octets());
    p
}

/// Whether the Internet checksum over `parts` (concatenated) is valid.
fn sums_to_zero(parts: &[&[u8]]) -> bool {
    checksum(&parts.concat()) == 0
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The IPv4 pseudo-header of an L4 part of `len` bytes.
fn pseudo4(ip: &[u8], proto: u8, len: usize) -> Vec<u8> {
    let mut p = ip[12..20].to_vec();
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&u16::try_from(len).expect("L4 length").to_be_bytes());
    p
}

/// The IPv6 pseudo-header of an L4 part of `len` bytes.
fn pseudo6(ip: &[u8], proto: u8, len: usize) -> Vec<u8> {
    let mut p = ip[8..40].to_vec();
    p.extend_from_slice(&u32::try_from(len).expect("L4 length").to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    p
}

/// Recomputes every checksum of an Ethernet frame carrying IPv4 or IPv6: the IPv4 header,
/// the TCP, UDP, ICMP or ICMPv6 checksum (with the pseudo-header where the protocol has one)
/// of an unfragmented packet, and the quoted IPv4 header of an ICMPv4 error. Returns the names
/// of the checksums found valid, in order ("IPv4 header", "TCP", "UDP", "UDP (none)", "ICMP",
/// "ICMPv6", "quoted IPv4 header"), or what is wrong. A fragment's L4 checksum covers the
/// whole datagram: check it on `reassemble`d fragments.
pub fn verify_checksums(frame: &[u8]) -> Result<Vec<&'static str>, String> {
    let mut valid = Vec::new();
    if frame.len() < ETH_HLEN {
        return Err(format!("{} bytes: no Ethernet header", frame.len()));
    }
    let ip = &frame[ETH_HLEN..];
    let (proto, l4, pseudo) = match be16(frame, 12) {
        ETH_P_IP => {
            if ip.len() < 20 || ip[0] >> 4 != 4 {
                return Err("not an IPv4 header".into());
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(be16(ip, 2));
            if ihl < 20 || total < ihl || total > ip.len() {
                return Err(format!("IPv4 header length {ihl}, total length {total} of {}", ip.len()));
            }
            if !sums_to_zero(&[&ip[..ihl]]) {
                return Err(format!("IPv4 header checksum {:#06x} is wrong", be16(ip, 10)));
            }
            valid.push("IPv4 header");
            if be16(ip, 6) & 0x3fff != 0 {
                return Ok(valid);
            }
            let l4 = &ip[ihl..total];
            (ip[9], l4, pseudo4(ip, ip[9], l4.len()))
        }
        ETH_P_IPV6 => {
            if ip.len() < 40 || ip[0] >> 4 != 6 {
                return Err("not an IPv6 header".into());
            }
            let end = 40 + usize::from(be16(ip, 4));
            if end > ip.len() {
                return Err(format!("IPv6 payload length {} of {}", end - 40, ip.len() - 40));
            }
            let (mut next, mut off) = (ip[6], 40);
            loop {
                match next {
                    44 => {
                        if be16(ip, off + 2) & 0xfff9 != 0 {
                            return Ok(valid);
                        }
                        next = ip[off];
                        off += 8;
                    }
                    51 => {
                        next = ip[off];
                        off += (usize::from(ip[off + 1]) + 2) * 4;
                    }
                    0 | 43 | 60 => {
                        next = ip[off];
                        off += (usize::from(ip[off + 1]) + 1) * 8;
                    }
                    _ => break,
                }
            }
            let l4 = &ip[off..end];
            (next, l4, pseudo6(ip, next, l4.len()))
        }
        other => return Err(format!("ethertype {other:#06x}")),
    };
    let v4 = be16(frame, 12) == ETH_P_IP;
    match proto {
        IPPROTO_TCP => {
            if l4.len() < 20 || !sums_to_zero(&[&pseudo, l4]) {
                return Err(format!("TCP checksum of {} bytes is wrong", l4.len()));
            }
            valid.push("TCP");
        }
        IPPROTO_UDP => {
            if l4.len() < 8 {
                return Err("UDP header cut short".into());
            }
            if v4 && be16(l4, 6) == 0 {
                valid.push("UDP (none)");
            } else if sums_to_zero(&[&pseudo, l4]) {
                valid.push("UDP");
            } else {
                return Err(format!("UDP checksum {:#06x} is wrong", be16(l4, 6)));
            }
        }
        IPPROTO_ICMP if v4 => {
            if l4.len() < 8 || !sums_to_zero(&[l4]) {
                return Err(format!("ICMP checksum of {} bytes is wrong", l4.len()));
            }
            valid.push("ICMP");
            if matches!(l4[0], 3 | 11 | 12) && l4.len() >= 28 {
                let inner = &l4[8..];
                let ihl = usize::from(inner[0] & 0x0f) * 4;
                if ihl < 20 || ihl > inner.len() || !sums_to_zero(&[&inner[..ihl]]) {
                    return Err("quoted IPv4 header checksum is wrong".into());
                }
                valid.push("quoted IPv4 header");
            }
        }
        IPPROTO_ICMPV6 if !v4 => {
            if l4.len() < 8 || !sums_to_zero(&[&pseudo, l4]) {
                return Err(format!("ICMPv6 checksum of {} bytes is wrong", l4.len()));
            }
            valid.push("ICMPv6");
        }
        _ => {}
    }
    Ok(valid)
}

/// The IP packet `l4` would be in, cut into two fragments after the first `split` bytes of
/// the L4 part (a multiple of 8): the L4 checksum covers the whole datagram, as a sender
/// computes it before fragmenting. IPv4 datagrams use `id` as is (it must fit 16 bits).
pub fn fragmented(src: IpAddr, dst: IpAddr, id: u32, l4: &L4, split: usize) -> [Vec<u8>; 2] {
    assert!(split.is_multiple_of(8) && split < l4.bytes.len(), "split at {split} of {}", l4.bytes.len());
    let offset = u16::try_from(split / 8).expect("fragment offset");
    let (_, whole) = ip_packet(src, dst, l4);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let id = u16::try_from(id).expect("IPv4 fragment id");
            let full = &whole[20..];
            [
                Ipv4::new(s, d).fragment(id, 0, true).packet(&L4::raw(l4.proto, &full[..split])),
                Ipv4::new(s, d).fragment(id, offset, false).packet(&L4::raw(l4.proto, &full[split..])),
            ]
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let full = &whole[40..];
            [
                Ipv6::new(s, d)
                    .ext(Ext::Fragment { id, offset: 0, more: true })
                    .packet(&L4::raw(l4.proto, &full[..split])),
                Ipv6::new(s, d)
                    .ext(Ext::Fragment { id, offset, more: false })
                    .packet(&L4::raw(l4.proto, &full[split..])),
            ]
        }
        _ => panic!("mixed address families {src} → {dst}"),
    }
}

/// The unfragmented frame two fragment frames (as `fragmented` cuts them: the first fragment,
/// then the rest; IPv6 with the fragment header first) make up, with the first one's headers.
pub fn reassemble(first: &[u8], later: &[u8]) -> Vec<u8> {
    let (a, b) = (&first[ETH_HLEN..], &later[ETH_HLEN..]);
    let mut frame = first[..ETH_HLEN].to_vec();
    match be16(first, 12) {
        ETH_P_IP => {
            let (ihl_a, ihl_b) = (usize::from(a[0] & 0x0f) * 4, usize::from(b[0] & 0x0f) * 4);
            let (pa, pb) = (&a[ihl_a..usize::from(be16(a, 2))], &b[ihl_b..usize::from(be16(b, 2))]);
            assert_eq!(usize::from(be16(b, 6) & 0x1fff) * 8, pa.len(), "the later fragment follows the first");
            let mut h = a[..ihl_a].to_vec();
            h[2..4].copy_from_slice(&u16::try_from(ihl_a + pa.len() + pb.len()).expect("length").to_be_bytes());
            h[6..8].copy_from_slice(&[0, 0]);
            h[10..12].copy_from_slice(&[0, 0]);
            let sum = checksum(&h);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            frame.extend_from_slice(&h);
            frame.extend_from_slice(pa);
            frame.extend_from_slice(pb);
        }
        ETH_P_IPV6 => {
            assert!(a[6] == 44 && b[6] == 44, "fragment header first");
            let (pa, pb) = (&a[48..40 + usize::from(be16(a, 4))], &b[48..40 + usize::from(be16(b, 4))]);
            assert_eq!(usize::from(be16(b, 42) >> 3) * 8, pa.len(), "the later fragment follows the first");
            let mut h = a[..40].to_vec();
            h[4..6].copy_from_slice(&u16::try_from(pa.len() + pb.len()).expect("length").to_be_bytes());
            h[6] = a[40];
            frame.extend_from_slice(&h);
            frame.extend_from_slice(pa);
            frame.extend_from_slice(pb);
        }
        other => panic!("ethertype {other:#06x}"),
    }
    frame
}
