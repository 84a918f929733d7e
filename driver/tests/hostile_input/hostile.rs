//! Hostile and broken values: ids and names with path traversal and shell metacharacters,
//! addresses with zone ids or outside their pool, malformed MACs, JSON of the wrong kind.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Value};

/// Whole values a hostile client sends where an id or a name belongs.
const WHOLE: &[&str] = &[
    "",
    " ",
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "/etc/passwd",
    "; rm -rf /",
    "$(reboot)",
    "`reboot`",
    "${IFS}cat${IFS}/etc/shadow",
    "| nc 127.0.0.1 4444",
    "a && b",
    "x > /dev/sda",
    "line\nbreak",
    "carriage\r\nX-Injected: 1",
    "nul\0byte",
    "%00",
    "'\"",
    "\\x00",
    "\u{202e}gnp.exe",
    "ｆｅｄｃｂａ",
    "eth0",
    "lo",
    "-o",
    "--help",
    "*",
    "{{.ID}}",
];

/// Pieces spliced into an otherwise well-formed id; each holds a character no id may contain.
const FRAGMENTS: &[&str] = &[
    "../", ";", "$(", ")", "`", "\n", "\0", "|", "&", ">", " ", "%", "'", "\"", "\\", "*", "?", "\r\n", "\t", "é", "G",
    "-", "_", "+", "x",
];

/// Text that is neither a Docker id (12 to 64 lowercase hex digits) nor a pool id this daemon
/// hands out: it holds a character neither may contain, or has a length no id has.
pub fn bad_id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(WHOLE).prop_map(str::to_owned),
        5 => (select(FRAGMENTS), "[0-9a-f]{0,64}", any::<Index>()).prop_map(|(fragment, hex, at)| {
            let at = at.index(hex.len() + 1);
            format!("{}{fragment}{}", &hex[..at], &hex[at..])
        }),
        1 => prop_oneof![Just(11usize), Just(65), Just(10_000)].prop_map(|n| "a".repeat(n)),
        1 => "[0-9A-F]{12,64}".prop_filter("an uppercase digit", |s| s.bytes().any(|b| b.is_ascii_uppercase())),
        1 => "\\PC{1,24}".prop_filter("a character no id has", |s| !s.bytes().all(|b| b.is_ascii_hexdigit())),
    ]
}

/// Hostile text that is not empty (where an empty string would mean "not set").
pub fn bad_text() -> impl Strategy<Value = String> {
    bad_id().prop_filter("not empty", |s| !s.trim().is_empty())
}

/// Hostile text that is no IP address, no CIDR and not empty.
pub fn not_an_address() -> impl Strategy<Value = String> {
    bad_text().prop_filter("not an address", |s| s.parse::<IpAddr>().is_err() && s.parse::<IpNet>().is_err())
}

/// Zone ids (`%eth0`, the URL-escaped `%25lo`, hostile ones).
fn zone() -> impl Strategy<Value = String> {
    prop_oneof![
        select(&["%eth0", "%25lo", "%lo", "%1", "%", "%eth0;reboot", "%../../x"][..]).prop_map(str::to_owned),
        bad_text().prop_map(|z| format!("%{z}")),
    ]
}

/// An address that the pool of `subnet` must refuse, in the form of a bare address
/// (RequestAddress, ReleaseAddress) or a CIDR (CreateEndpoint's `Interface`).
#[derive(Debug, Clone)]
pub enum BadAddress {
    /// An address of the pool with a zone id (`fe80::1%eth0`, `fdc1::5%25lo`).
    Zoned { seed: u128, zone: String },
    /// An address of the pool's family outside it.
    Outside { seed: u128 },
    /// An address of the other family (IPv4-mapped IPv6 for an IPv4 pool).
    OtherFamily { seed: u128 },
    /// A prefix length where none belongs, or one too long for the family.
    Prefix { seed: u128, len: u8 },
    /// Not an address at all.
    Garbage(String),
}

pub fn bad_address() -> impl Strategy<Value = BadAddress> {
    prop_oneof![
        (any::<u128>(), zone()).prop_map(|(seed, zone)| BadAddress::Zoned { seed, zone }),
        any::<u128>().prop_map(|seed| BadAddress::Outside { seed }),
        any::<u128>().prop_map(|seed| BadAddress::OtherFamily { seed }),
        (any::<u128>(), any::<u8>()).prop_map(|(seed, len)| BadAddress::Prefix { seed, len }),
        not_an_address().prop_map(BadAddress::Garbage),
    ]
}

impl BadAddress {
    /// As a bare address (where dockerd sends `10.1.0.5`).
    pub fn bare(&self, subnet: IpNet) -> String {
        match self {
            BadAddress::Zoned { seed, zone } => format!("{}{zone}", inside(subnet, *seed)),
            BadAddress::Outside { seed } => outside(subnet, *seed).to_string(),
            BadAddress::OtherFamily { seed } => other_family(subnet, *seed).to_string(),
            BadAddress::Prefix { seed, len } => format!("{}/{len}", inside(subnet, *seed)),
            BadAddress::Garbage(text) => text.clone(),
        }
    }

    /// As a CIDR (where dockerd sends `10.1.0.5/32`).
    pub fn cidr(&self, subnet: IpNet) -> String {
        let max = if subnet.addr().is_ipv4() { 32 } else { 128 };
        match self {
            BadAddress::Zoned { seed, zone } => format!("{}{zone}/{max}", inside(subnet, *seed)),
            BadAddress::Outside { seed } => format!("{}/{max}", outside(subnet, *seed)),
            BadAddress::OtherFamily { seed } => IpNet::from(other_family(subnet, *seed)).to_string(),
            BadAddress::Prefix { seed, len } => {
                let len = if *len as u16 <= max { max as u8 + 1 + len % 8 } else { *len };
                format!("{}/{len}", inside(subnet, *seed))
            }
            BadAddress::Garbage(text) => text.clone(),
        }
    }
}

/// An address of `subnet` (not its network address).
fn inside(subnet: IpNet, seed: u128) -> IpAddr {
    let hosts = match subnet {
        IpNet::V4(n) => 1u128 << (32 - n.prefix_len()),
        IpNet::V6(n) => 1u128.checked_shl(128 - n.prefix_len() as u32).unwrap_or(u128::MAX),
    };
    let offset = 1 + seed % (hosts.saturating_sub(2).max(1));
    from_number(subnet.network(), number(subnet.network()) + offset)
}

/// An address of `subnet`'s family outside it.
fn outside(subnet: IpNet, seed: u128) -> IpAddr {
    let bits = if subnet.addr().is_ipv4() { 32 } else { 128 };
    let mut candidate = from_number(subnet.network(), seed & mask(bits));
    if subnet.contains(&candidate) {
        // Flipping the top bit leaves every subnet longer than /0.
        candidate = from_number(subnet.network(), number(candidate) ^ (1u128 << (bits - 1)));
    }
    candidate
}

fn other_family(subnet: IpNet, seed: u128) -> IpAddr {
    match subnet {
        IpNet::V4(_) => match inside(subnet, seed) {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => v6,
        },
        IpNet::V6(_) => IpAddr::V4(Ipv4Addr::from((seed as u32) | 0x0a00_0000)),
    }
}

fn mask(bits: u32) -> u128 {
    if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

fn number(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_number(family: IpAddr, n: u128) -> IpAddr {
    match family {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// Text that is no MAC address an interface can have: the wrong shape, a character that is no
/// hex digit, a multicast, broadcast or all-zero address, other notations, stray whitespace.
pub fn bad_mac() -> impl Strategy<Value = String> {
    let byte = || "[0-9a-f]{2}";
    prop_oneof![
        // Five or seven groups.
        proptest::collection::vec(byte(), 5..=5).prop_map(|g| g.join(":")),
        proptest::collection::vec(byte(), 7..=7).prop_map(|g| g.join(":")),
        // A group that is not two hex digits.
        (
            proptest::collection::vec(byte(), 6..=6),
            any::<Index>(),
            select(&["g0", "0", "000", "+2", "-1", " 2", "2 ", "0x", "é", ""][..])
        )
            .prop_map(|(mut g, at, bad)| {
                let at = at.index(6);
                g[at] = bad.to_owned();
                g.join(":")
            }),
        // Multicast (and broadcast): the low bit of the first byte set.
        (0u8..128, proptest::collection::vec(byte(), 5..=5)).prop_map(|(first, rest)| format!(
            "{:02x}:{}",
            first * 2 + 1,
            rest.join(":")
        )),
        Just("00:00:00:00:00:00".to_owned()),
        Just("ff:ff:ff:ff:ff:ff".to_owned()),
        // Other notations and stray characters around a good one.
        select(
            &[
                "0242.0a4e.0009",
                "02420a4e0009",
                "AkIK/G4K",
                "02:42:0a:4e:00:09\n",
                " 02:42:0a:4e:00:09",
                "02:42:0a:4e:00:09%eth0",
                "02::42:0a:4e:00:09"
            ][..]
        )
        .prop_map(str::to_owned),
        bad_text().prop_filter("no MAC", |s| s.split([':', '-']).count() != 6),
    ]
}

/// The kinds of JSON value (`null` is left out: it means "the default" on the plugin socket, as
/// in Go's `encoding/json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Number,
    String,
    Array,
    Object,
}

pub const KINDS: [Kind; 5] = [Kind::Bool, Kind::Number, Kind::String, Kind::Array, Kind::Object];

/// The ingredients of a value of some other kind.
#[derive(Debug, Clone)]
pub struct OtherKind {
    pick: Index,
    variant: Index,
    text: String,
}

pub fn other_kind() -> impl Strategy<Value = OtherKind> {
    (any::<Index>(), any::<Index>(), bad_text()).prop_map(|(pick, variant, text)| OtherKind { pick, variant, text })
}

impl OtherKind {
    /// A value of none of the `accepted` kinds, in place of `original`.
    pub fn value(&self, accepted: &[Kind], original: &Value) -> Value {
        let kinds = other_kinds(accepted);
        let choices = values_of_kind(kinds[self.pick.index(kinds.len())], original, &self.text);
        choices[self.variant.index(choices.len())].clone()
    }
}

/// The kinds other than `accepted`.
pub fn other_kinds(accepted: &[Kind]) -> Vec<Kind> {
    KINDS.into_iter().filter(|k| !accepted.contains(k)).collect()
}

/// Values of `kind` to put in place of `original`, the most treacherous first: an object's own
/// values as an array (which serde would read into a struct field by field), a number where a
/// small one is a valid port or protocol, a string where `"true"` would be a valid flag (strings
/// `"true"`/`"false"` are left out: some boolean options take them).
pub fn values_of_kind(kind: Kind, original: &Value, text: &str) -> Vec<Value> {
    match kind {
        Kind::Bool => vec![json!(true), json!(false)],
        Kind::Number => vec![json!(6), json!(0), json!(-1), json!(1.5), json!(1e300), json!(u64::MAX)],
        Kind::String => vec![json!("0"), json!(text), json!("1400")],
        Kind::Array => {
            let mut arrays = vec![json!([]), json!([text]), json!([1, {}]), json!(["", "", ""])];
            if let Some(fields) = original.as_object() {
                arrays.insert(0, Value::Array(fields.values().cloned().collect()));
            }
            arrays
        }
        Kind::Object => vec![json!({"Address": ""}), json!({}), json!({ "k": text })],
    }
}

/// Any JSON value, hostile strings included, nested a little.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        bad_id().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(bad_id(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
