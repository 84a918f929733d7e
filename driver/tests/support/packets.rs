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
