//! One Cilium policy rule: the typed model, its validation from a JSON value (field by field,
//! refusing what cilium-rs does not enforce), and its normalized Cilium JSON form.
//!
//! The JSON form ([`Rule::to_json`], also the `Serialize` impl) is what `policy get` prints and
//! what the daemon persists; it parses back through the same validation into an equal rule.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};

use super::selector::Selector;
use super::walk::{
    boolean, check_fields, child, fail, field, index, kind, list, object, string, FieldError, Refusal, Walk,
};
use super::{Direction, PROTO_ANY, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use crate::input::quoted;
use crate::labels::{Label, Labels, SOURCE_UNSPEC};

/// A policy rule: the endpoints it selects and what it allows or denies them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub endpoint_selector: Selector,
    pub ingress: Vec<Section>,
    pub ingress_deny: Vec<Section>,
    pub egress: Vec<Section>,
    pub egress_deny: Vec<Section>,
    pub labels: Labels,
    /// Empty when none was given.
    pub description: String,
    pub enable_default_deny: DefaultDeny,
}

/// `enableDefaultDeny`: unset = on for each direction the rule has sections for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultDeny {
    pub ingress: Option<bool>,
    pub egress: Option<bool>,
}

/// One item of `ingress`, `ingressDeny`, `egress` or `egressDeny`. The peer fields are named
/// `from…` in ingress sections and `to…` in egress sections; empty lists count as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section {
    pub endpoints: Vec<Selector>,
    pub entities: Vec<Entity>,
    pub cidr: Vec<IpNet>,
    pub cidr_set: Vec<CidrRule>,
    pub to_ports: Vec<PortRule>,
    pub icmps: Vec<IcmpRule>,
}

/// A `fromEntities` / `toEntities` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    Host,
    World,
    All,
    Init,
    Cluster,
    WorldIpv4,
    WorldIpv6,
}

/// Every supported entity, with its name.
pub const ENTITIES: [(Entity, &str); 7] = [
    (Entity::Host, "host"),
    (Entity::World, "world"),
    (Entity::All, "all"),
    (Entity::Init, "init"),
    (Entity::Cluster, "cluster"),
    (Entity::WorldIpv4, "world-ipv4"),
    (Entity::WorldIpv6, "world-ipv6"),
];

impl Entity {
    pub fn name(self) -> &'static str {
        ENTITIES.iter().find(|(e, _)| *e == self).map_or("", |(_, n)| n)
    }
}

/// A `fromCIDRSet` / `toCIDRSet` item (a plain `fromCIDR` entry has no exceptions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrRule {
    pub cidr: IpNet,
    /// Each inside `cidr`.
    pub except: Vec<IpNet>,
}

/// A `toPorts` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    /// Never empty.
    pub ports: Vec<PortProtocol>,
}

/// One `toPorts[].ports[]` item: `port` 0 = any port; `end_port` (> `port`) makes a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortProtocol {
    pub port: u16,
    pub end_port: Option<u16>,
    pub protocol: Protocol,
}

/// A `toPorts` protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
    Any,
}

const PROTOCOLS: [(Protocol, &str, u8); 6] = [
    (Protocol::Tcp, "TCP", PROTO_TCP),
    (Protocol::Udp, "UDP", PROTO_UDP),
    (Protocol::Sctp, "SCTP", PROTO_SCTP),
    (Protocol::Icmp, "ICMP", PROTO_ICMP),
    (Protocol::Icmpv6, "ICMPV6", PROTO_ICMPV6),
    (Protocol::Any, "ANY", PROTO_ANY),
];

impl Protocol {
    /// Cilium's spelling: `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPV6`, `ANY`.
    pub fn name(self) -> &'static str {
        PROTOCOLS.iter().find(|(p, _, _)| *p == self).map_or("", |(_, n, _)| n)
    }

    /// The IP protocol number (0 for `ANY`).
    pub fn number(self) -> u8 {
        PROTOCOLS.iter().find(|(p, _, _)| *p == self).map_or(PROTO_ANY, |(_, _, n)| *n)
    }

    /// Parses a protocol name in any case.
    pub fn parse(text: &str) -> Option<Protocol> {
        PROTOCOLS.iter().find(|(_, n, _)| n.eq_ignore_ascii_case(text)).map(|(p, _, _)| *p)
    }
}

/// An `icmps` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpRule {
    /// Never empty.
    pub fields: Vec<IcmpField>,
}

/// One ICMP type of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IcmpField {
    pub family: IcmpFamily,
    pub icmp_type: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IcmpFamily {
    V4,
    V6,
}

impl IcmpFamily {
    pub fn name(self) -> &'static str {
        match self {
            IcmpFamily::V4 => "IPv4",
            IcmpFamily::V6 => "IPv6",
        }
    }

    /// The IP protocol that carries this family's ICMP.
    pub fn protocol(self) -> u8 {
        match self {
            IcmpFamily::V4 => PROTO_ICMP,
            IcmpFamily::V6 => PROTO_ICMPV6,
        }
    }
}

/// Cilium's ICMPv4 type names.
pub const ICMPV4_TYPES: [(&str, u8); 14] = [
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];

/// Cilium's ICMPv6 type names.
pub const ICMPV6_TYPES: [(&str, u8); 27] = [
    ("DestinationUnreachable", 1),
    ("PacketTooBig", 2),
    ("TimeExceeded", 3),
    ("ParameterProblem", 4),
    ("EchoRequest", 128),
    ("EchoReply", 129),
    ("MulticastListenerQuery", 130),
    ("MulticastListenerReport", 131),
    ("MulticastListenerDone", 132),
    ("RouterSolicitation", 133),
    ("RouterAdvertisement", 134),
    ("NeighborSolicitation", 135),
    ("NeighborAdvertisement", 136),
    ("RedirectMessage", 137),
    ("RouterRenumbering", 138),
    ("ICMPNodeInformationQuery", 139),
    ("ICMPNodeInformationResponse", 140),
    ("InverseNeighborDiscoverySolicitation", 141),
    ("InverseNeighborDiscoveryAdvertisement", 142),
    ("HomeAgentAddressDiscoveryRequest", 144),
    ("HomeAgentAddressDiscoveryReply", 145),
    ("MobilePrefixSolicitation", 146),
    ("MobilePrefixAdvertisement", 147),
    ("DuplicateAddressRequestCodeSuffix", 157),
    ("DuplicateAddressConfirmationCodeSuffix", 158),
    ("ExtendedEchoRequest", 160),
    ("ExtendedEchoReply", 161),
];

impl Rule {
    /// The sections of one direction: `(deny, section)` pairs, allows first.
    pub fn sections(&self, direction: Direction) -> impl Iterator<Item = (bool, &Section)> {
        let (allow, deny) = match direction {
            Direction::Ingress => (&self.ingress, &self.ingress_deny),
            Direction::Egress => (&self.egress, &self.egress_deny),
        };
        allow.iter().map(|s| (false, s)).chain(deny.iter().map(|s| (true, s)))
    }

    /// Whether the rule puts the endpoints it selects into default deny for `direction`:
    /// `enableDefaultDeny` when given, else whether it has sections for that direction.
    pub fn enforces(&self, direction: Direction) -> bool {
        let (explicit, sections) = match direction {
            Direction::Ingress => (self.enable_default_deny.ingress, self.ingress.len() + self.ingress_deny.len()),
            Direction::Egress => (self.enable_default_deny.egress, self.egress.len() + self.egress_deny.len()),
        };
        explicit.unwrap_or(sections > 0)
    }

    /// Every prefix the rule refers to: CIDRs, CIDR-set prefixes and their exceptions, and
    /// `0.0.0.0/0` / `::/0` for `world-ipv4` / `world-ipv6`.
    pub fn cidrs(&self) -> BTreeSet<IpNet> {
        let mut out = BTreeSet::new();
        for direction in [Direction::Ingress, Direction::Egress] {
            for (_, section) in self.sections(direction) {
                out.extend(section.cidr.iter().copied());
                for set in &section.cidr_set {
                    out.insert(set.cidr);
                    out.extend(set.except.iter().copied());
                }
                for entity in &section.entities {
                    match entity {
                        Entity::WorldIpv4 => out.insert(IpNet::V4(Default::default())),
                        Entity::WorldIpv6 => out.insert(IpNet::V6(Default::default())),
                        _ => false,
                    };
                }
            }
        }
        out
    }

    /// Whether the rule carries every label of `wanted` (`policy delete LABEL…`). A wanted label
    /// without a source (`any`/`unspec`) matches any source; values compare exactly. An empty
    /// `wanted` matches every rule: callers deleting "everything" should ask for it explicitly.
    pub fn has_labels(&self, wanted: &Labels) -> bool {
        wanted.iter().all(|w| {
            self.labels
                .iter()
                .any(|l| l.key == w.key && l.value == w.value && (w.is_any_source() || l.source == w.source))
        })
    }

    /// Cilium's JSON form, normalized.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("endpointSelector".into(), self.endpoint_selector.to_json());
        let lists = [
            ("ingress", &self.ingress, Direction::Ingress),
            ("ingressDeny", &self.ingress_deny, Direction::Ingress),
            ("egress", &self.egress, Direction::Egress),
            ("egressDeny", &self.egress_deny, Direction::Egress),
        ];
        for (name, sections, direction) in lists {
            if !sections.is_empty() {
                map.insert(name.into(), sections.iter().map(|s| s.to_json(direction)).collect());
            }
        }
        let dd = self.enable_default_deny;
        if dd.ingress.is_some() || dd.egress.is_some() {
            let mut obj = Map::new();
            if let Some(b) = dd.ingress {
                obj.insert("ingress".into(), Value::Bool(b));
            }
            if let Some(b) = dd.egress {
                obj.insert("egress".into(), Value::Bool(b));
            }
            map.insert("enableDefaultDeny".into(), Value::Object(obj));
        }
        if !self.labels.is_empty() {
            let labels =
                self.labels.iter().map(|l| json!({"key": l.key, "value": l.value, "source": l.source})).collect();
            map.insert("labels".into(), Value::Array(labels));
        }
        if !self.description.is_empty() {
            map.insert("description".into(), Value::String(self.description.clone()));
        }
        Value::Object(map)
    }

    /// Parses and validates one rule found at `path`.
    pub(crate) fn parse(value: &Value, path: &str) -> Walk<Rule> {
        let map = object(value, path)?;
        check_fields(
            map,
            path,
            &[
                "endpointSelector",
                "ingress",
                "ingressDeny",
                "egress",
                "egressDeny",
                "labels",
                "description",
                "enableDefaultDeny",
            ],
            |key| match key {
                "nodeSelector" => Some(Refusal::Unsupported("host policies (nodeSelector) are not implemented")),
                "apiVersion" | "kind" | "metadata" | "spec" | "specs" => Some(Refusal::Misplaced(format!(
                    "{key} belongs to a Kubernetes object, which must be a document of its own or an item of a List"
                ))),
                _ => None,
            },
        )?;
        let selector_path = child(path, "endpointSelector");
        let Some(selector) = field(map, "endpointSelector") else {
            return fail(&selector_path, "required field is missing");
        };
        let mut rule = Rule { endpoint_selector: Selector::parse(selector, &selector_path)?, ..Rule::default() };
        rule.ingress = sections(map, "ingress", path, Direction::Ingress)?;
        rule.ingress_deny = sections(map, "ingressDeny", path, Direction::Ingress)?;
        rule.egress = sections(map, "egress", path, Direction::Egress)?;
        rule.egress_deny = sections(map, "egressDeny", path, Direction::Egress)?;
        let labels_path = child(path, "labels");
        for (i, item) in list(map, "labels", path)?.iter().enumerate() {
            rule.labels.insert(parse_label(item, &index(&labels_path, i))?);
        }
        if let Some(description) = field(map, "description") {
            rule.description = string(description, &child(path, "description"))?.to_owned();
        }
        if let Some(dd) = field(map, "enableDefaultDeny") {
            let dd_path = child(path, "enableDefaultDeny");
            let obj = object(dd, &dd_path)?;
            check_fields(obj, &dd_path, &["ingress", "egress"], |_| None)?;
            if let Some(b) = field(obj, "ingress") {
                rule.enable_default_deny.ingress = Some(boolean(b, &child(&dd_path, "ingress"))?);
            }
            if let Some(b) = field(obj, "egress") {
                rule.enable_default_deny.egress = Some(boolean(b, &child(&dd_path, "egress"))?);
            }
        }
        Ok(rule)
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

/// Field names of a section, by direction: endpoints, entities, CIDR, CIDR set.
fn peer_fields(direction: Direction) -> [&'static str; 4] {
    match direction {
        Direction::Ingress => ["fromEndpoints", "fromEntities", "fromCIDR", "fromCIDRSet"],
        Direction::Egress => ["toEndpoints", "toEntities", "toCIDR", "toCIDRSet"],
    }
}

impl Section {
    /// Whether the section names peers (an L3 field); without one it applies to every peer.
    pub fn has_peers(&self) -> bool {
        !(self.endpoints.is_empty() && self.entities.is_empty() && self.cidr.is_empty() && self.cidr_set.is_empty())
    }

    /// Whether the section restricts ports or ICMP types (an L4 field).
    pub fn has_ports(&self) -> bool {
        !(self.to_ports.is_empty() && self.icmps.is_empty())
    }

    /// Cilium's JSON form, with the field names of `direction`.
    pub fn to_json(&self, direction: Direction) -> Value {
        let [endpoints, entities, cidr, cidr_set] = peer_fields(direction);
        let mut map = Map::new();
        if !self.endpoints.is_empty() {
            map.insert(endpoints.into(), self.endpoints.iter().map(Selector::to_json).collect());
        }
        if !self.entities.is_empty() {
            map.insert(entities.into(), self.entities.iter().map(|e| json!(e.name())).collect());
        }
        if !self.cidr.is_empty() {
            map.insert(cidr.into(), self.cidr.iter().map(|c| json!(c.to_string())).collect());
        }
        if !self.cidr_set.is_empty() {
            let sets = self
                .cidr_set
                .iter()
                .map(|s| {
                    let mut item = json!({"cidr": s.cidr.to_string()});
                    if !s.except.is_empty() {
                        item["except"] = s.except.iter().map(|e| json!(e.to_string())).collect();
                    }
                    item
                })
                .collect();
            map.insert(cidr_set.into(), sets);
        }
        if !self.to_ports.is_empty() {
            let rules = self
                .to_ports
                .iter()
                .map(|r| {
                    let ports: Vec<Value> = r
                        .ports
                        .iter()
                        .map(|p| {
                            let mut item = Map::new();
                            if p.port != 0 {
                                item.insert("port".into(), json!(p.port.to_string()));
                            }
                            if let Some(end) = p.end_port {
                                item.insert("endPort".into(), json!(end));
                            }
                            item.insert("protocol".into(), json!(p.protocol.name()));
                            Value::Object(item)
                        })
                        .collect();
                    json!({ "ports": ports })
                })
                .collect();
            map.insert("toPorts".into(), rules);
        }
        if !self.icmps.is_empty() {
            let rules = self
                .icmps
                .iter()
                .map(|r| {
                    let fields: Vec<Value> =
                        r.fields.iter().map(|f| json!({"family": f.family.name(), "type": f.icmp_type})).collect();
                    json!({ "fields": fields })
                })
                .collect();
            map.insert("icmps".into(), rules);
        }
        Value::Object(map)
    }
}

fn sections(map: &Map<String, Value>, key: &str, path: &str, direction: Direction) -> Walk<Vec<Section>> {
    let list_path = child(path, key);
    list(map, key, path)?
        .iter()
        .enumerate()
        .map(|(i, item)| parse_section(item, &index(&list_path, i), direction))
        .collect()
}

fn section_refusal(key: &str, direction: Direction) -> Option<Refusal> {
    let why = match key {
        "fromRequires" | "toRequires" => "requirements (deprecated in Cilium) are not implemented",
        "toFQDNs" => "DNS-based policy needs a DNS proxy, which cilium-rs does not have",
        "toServices" => "service-based policy is not implemented; use toEndpoints or toCIDR",
        "toGroups" => "cloud provider groups are not implemented",
        "fromNodes" | "toNodes" => "node-based policy is not implemented",
        "authentication" => "mutual authentication is not implemented",
        _ => "",
    };
    if !why.is_empty() {
        return Some(Refusal::Unsupported(why));
    }
    let (here, there) = (peer_fields(direction), peer_fields(other(direction)));
    let position = there.iter().position(|f| *f == key)?;
    Some(Refusal::Misplaced(format!(
        "{key} is an {} field; {direction} sections use {}",
        other(direction),
        here[position]
    )))
}

fn other(direction: Direction) -> Direction {
    match direction {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    }
}

fn parse_section(value: &Value, path: &str, direction: Direction) -> Walk<Section> {
    let map = object(value, path)?;
    let [endpoints, entities, cidr, cidr_set] = peer_fields(direction);
    check_fields(map, path, &[endpoints, entities, cidr, cidr_set, "toPorts", "icmps"], |key| {
        section_refusal(key, direction)
    })?;
    let mut section = Section::default();
    let sub = |key: &str| child(path, key);
    for (i, item) in list(map, endpoints, path)?.iter().enumerate() {
        section.endpoints.push(Selector::parse(item, &index(&sub(endpoints), i))?);
    }
    for (i, item) in list(map, entities, path)?.iter().enumerate() {
        let entity = parse_entity(item, &index(&sub(entities), i))?;
        if !section.entities.contains(&entity) {
            section.entities.push(entity);
        }
    }
    for (i, item) in list(map, cidr, path)?.iter().enumerate() {
        section.cidr.push(parse_cidr(item, &index(&sub(cidr), i))?);
    }
    for (i, item) in list(map, cidr_set, path)?.iter().enumerate() {
        section.cidr_set.push(parse_cidr_set(item, &index(&sub(cidr_set), i))?);
    }
    for (i, item) in list(map, "toPorts", path)?.iter().enumerate() {
        section.to_ports.push(parse_port_rule(item, &index(&sub("toPorts"), i))?);
    }
    for (i, item) in list(map, "icmps", path)?.iter().enumerate() {
        section.icmps.push(parse_icmp_rule(item, &index(&sub("icmps"), i))?);
    }
    Ok(section)
}

fn parse_label(value: &Value, path: &str) -> Walk<Label> {
    let label = match value {
        Value::String(_) => {
            let text = string(value, path)?;
            Label::parse(text, SOURCE_UNSPEC).map_err(|reason| FieldError { path: path.to_owned(), reason })?
        }
        Value::Object(map) => {
            check_fields(map, path, &["key", "value", "source"], |_| None)?;
            let key_path = child(path, "key");
            let Some(key) = field(map, "key") else { return fail(&key_path, "required field is missing") };
            let key = string(key, &key_path)?;
            if key.is_empty() {
                return fail(&key_path, "label key is empty");
            }
            let value = match field(map, "value") {
                Some(v) => string(v, &child(path, "value"))?,
                None => "",
            };
            let source = match field(map, "source") {
                Some(v) => string(v, &child(path, "source"))?,
                None => "",
            };
            let source = if source.is_empty() { SOURCE_UNSPEC } else { source };
            Label::new(source, key, value)
        }
        other => return fail(path, format!("expected a label string or object, found {}", kind(other))),
    };
    Ok(label)
}

fn parse_entity(value: &Value, path: &str) -> Walk<Entity> {
    let name = string(value, path)?;
    match ENTITIES.iter().find(|(_, n)| *n == name) {
        Some((entity, _)) => Ok(*entity),
        None => {
            let supported: Vec<&str> = ENTITIES.iter().map(|(_, n)| *n).collect();
            fail(path, format!("entity {} is not supported; supported: {}", quoted(name), supported.join(", ")))
        }
    }
}

/// A CIDR or a bare address (a /32 or /128); host bits must be clear.
fn parse_cidr(value: &Value, path: &str) -> Walk<IpNet> {
    let text = string(value, path)?;
    let net =
        if text.contains('/') { IpNet::from_str(text).ok() } else { IpAddr::from_str(text).ok().map(IpNet::from) };
    let Some(net) = net else {
        return fail(path, format!("{} is not a CIDR or an IP address", quoted(text)));
    };
    if net.trunc() != net {
        return fail(path, format!("{} has host bits set; did you mean {}?", quoted(text), net.trunc()));
    }
    Ok(net)
}

fn parse_cidr_set(value: &Value, path: &str) -> Walk<CidrRule> {
    let map = object(value, path)?;
    check_fields(map, path, &["cidr", "except"], |key| match key {
        "cidrGroupRef" | "cidrGroupSelector" => Some(Refusal::Unsupported("CIDR groups are not implemented")),
        _ => None,
    })?;
    let cidr_path = child(path, "cidr");
    let Some(cidr) = field(map, "cidr") else { return fail(&cidr_path, "required field is missing") };
    let cidr = parse_cidr(cidr, &cidr_path)?;
    let except_path = child(path, "except");
    let mut except = Vec::new();
    for (i, item) in list(map, "except", path)?.iter().enumerate() {
        let item_path = index(&except_path, i);
        let net = parse_cidr(item, &item_path)?;
        if !cidr.contains(&net) {
            return fail(&item_path, format!("{net} is not inside {cidr}"));
        }
        if !except.contains(&net) {
            except.push(net);
        }
    }
    Ok(CidrRule { cidr, except })
}

fn parse_port_rule(value: &Value, path: &str) -> Walk<PortRule> {
    let map = object(value, path)?;
    check_fields(map, path, &["ports"], |key| match key {
        "rules" => Some(Refusal::Unsupported("L7 rules are not implemented; cilium-rs enforces L3 and L4 only")),
        "listener" => Some(Refusal::Unsupported("Envoy listeners are not implemented")),
        "originatingTLS" | "terminatingTLS" | "serverNames" => {
            Some(Refusal::Unsupported("TLS inspection is not implemented"))
        }
        _ => None,
    })?;
    let ports_path = child(path, "ports");
    let items = list(map, "ports", path)?;
    if items.is_empty() {
        return fail(&ports_path, "needs at least one port");
    }
    let ports =
        items.iter().enumerate().map(|(i, item)| parse_port(item, &index(&ports_path, i))).collect::<Walk<_>>()?;
    Ok(PortRule { ports })
}

/// A port number 0..=65535 from a JSON number or a decimal string.
fn port_number(value: &Value, path: &str) -> Walk<u16> {
    let out_of_range = |shown: String| fail(path, format!("port {shown} is out of range 1-65535"));
    match value {
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(v), _) => u16::try_from(v).or_else(|_| out_of_range(v.to_string())),
            (None, Some(v)) => out_of_range(v.to_string()),
            _ => fail(path, format!("port {n} is not an integer")),
        },
        Value::String(_) => {
            let text = string(value, path)?;
            if text.is_empty() {
                return Ok(0);
            }
            if text.bytes().all(|b| b.is_ascii_digit()) {
                return match text.parse::<u32>().ok().and_then(|v| u16::try_from(v).ok()) {
                    Some(v) => Ok(v),
                    None => out_of_range(quoted(text)),
                };
            }
            let is_name = text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && text.bytes().any(|b| b.is_ascii_alphabetic());
            if is_name {
                fail(path, format!("named port {} is not supported; use a port number", quoted(text)))
            } else {
                fail(path, format!("{} is not a port number", quoted(text)))
            }
        }
        other => fail(path, format!("expected a port number or string, found {}", kind(other))),
    }
}

fn parse_port(value: &Value, path: &str) -> Walk<PortProtocol> {
    let map = object(value, path)?;
    check_fields(map, path, &["port", "endPort", "protocol"], |_| None)?;
    let port_path = child(path, "port");
    let port = match field(map, "port") {
        Some(v) => port_number(v, &port_path)?,
        None => 0,
    };
    let protocol_path = child(path, "protocol");
    let protocol = match field(map, "protocol") {
        Some(v) => {
            let text = string(v, &protocol_path)?;
            Protocol::parse(text).map_or_else(
                || {
                    fail(
                        &protocol_path,
                        format!(
                            "protocol {} is not supported; expected TCP, UDP, SCTP, ICMP, ICMPV6 or ANY",
                            quoted(text)
                        ),
                    )
                },
                Ok,
            )?
        }
        None => Protocol::Any,
    };
    let end_path = child(path, "endPort");
    // Like Cilium, `endPort: 0` means no range.
    let end_port = match field(map, "endPort") {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => None,
            Some(v) => match u16::try_from(v) {
                Ok(v) => Some(v),
                Err(_) => return fail(&end_path, format!("endPort {v} is out of range 1-65535")),
            },
            None => return fail(&end_path, format!("endPort {n} is not a positive integer")),
        },
        Some(other) => return fail(&end_path, format!("expected a number, found {}", kind(other))),
        None => None,
    };
    if matches!(protocol, Protocol::Icmp | Protocol::Icmpv6) && (port != 0 || end_port.is_some()) {
        return fail(&port_path, format!("protocol {} takes no port; use icmps to select ICMP types", protocol.name()));
    }
    let end_port = match end_port {
        Some(_) if port == 0 => return fail(&end_path, "endPort needs a non-zero port"),
        Some(end) if end < port => return fail(&end_path, format!("endPort {end} is below port {port}")),
        Some(end) if end == port => None,
        other => other,
    };
    Ok(PortProtocol { port, end_port, protocol })
}

fn parse_icmp_rule(value: &Value, path: &str) -> Walk<IcmpRule> {
    let map = object(value, path)?;
    check_fields(map, path, &["fields"], |_| None)?;
    let fields_path = child(path, "fields");
    let items = list(map, "fields", path)?;
    if items.is_empty() {
        return fail(&fields_path, "needs at least one ICMP field");
    }
    let fields = items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_icmp_field(item, &index(&fields_path, i)))
        .collect::<Walk<_>>()?;
    Ok(IcmpRule { fields })
}

fn parse_icmp_field(value: &Value, path: &str) -> Walk<IcmpField> {
    let map = object(value, path)?;
    check_fields(map, path, &["type", "family"], |_| None)?;
    let family_path = child(path, "family");
    let family = match field(map, "family") {
        Some(v) => {
            let text = string(v, &family_path)?;
            if text.eq_ignore_ascii_case("IPv4") {
                IcmpFamily::V4
            } else if text.eq_ignore_ascii_case("IPv6") {
                IcmpFamily::V6
            } else {
                return fail(&family_path, format!("family {} is not supported; expected IPv4 or IPv6", quoted(text)));
            }
        }
        None => IcmpFamily::V4,
    };
    let type_path = child(path, "type");
    let Some(icmp_type) = field(map, "type") else { return fail(&type_path, "required field is missing") };
    let number = |v: u64| u8::try_from(v).ok();
    let icmp_type = match icmp_type {
        Value::Number(n) => match n.as_u64().and_then(number) {
            Some(t) => t,
            None => return fail(&type_path, format!("ICMP type {n} is out of range 0-255")),
        },
        Value::String(_) => {
            let text = string(icmp_type, &type_path)?;
            let table: &[(&str, u8)] = match family {
                IcmpFamily::V4 => &ICMPV4_TYPES,
                IcmpFamily::V6 => &ICMPV6_TYPES,
            };
            if let Some((_, t)) = table.iter().find(|(name, _)| *name == text) {
                *t
            } else if let Some(t) = text.parse::<u64>().ok().and_then(number) {
                t
            } else {
                return fail(
                    &type_path,
                    format!(
                        "ICMP type {} is not a number 0-255 or a known {} type name (such as {})",
                        quoted(text),
                        family.name(),
                        table.iter().take(4).map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
        other => return fail(&type_path, format!("expected an ICMP type number or name, found {}", kind(other))),
    };
    Ok(IcmpField { family, icmp_type })
}

#[cfg(test)]
mod tests;
