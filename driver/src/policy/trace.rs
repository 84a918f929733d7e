//! Explaining verdicts: the datapath's policy lookup emulated on a policy map ([`lookup`]), and
//! `policy trace` ([`trace`]): what a new flow from one label set to another meets at the
//! source's egress and the destination's ingress, and which rules decide it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::ports::block_holds;
use super::resolve::{is_local, Resolver};
use super::{
    Direction, EnforcementMode, IdentityInfo, PolicyEntry, PolicyKey, RuleId, PROTO_ANY, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};
use crate::identity::{reserved_labels, Identity, RESERVED};
use crate::input::quoted;
use crate::labels::{Labels, SOURCE_CIDR, SOURCE_RESERVED};

/// What the datapath decides for a new flow at one endpoint, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "rule", rename_all = "kebab-case")]
pub enum Decision {
    /// Allowed by an allow entry of this rule; rule 0 = the endpoint is not enforced.
    AllowedBy(RuleId),
    /// Denied by a deny entry of this rule.
    DeniedBy(RuleId),
    /// No entry matched: default deny.
    DefaultDeny,
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::AllowedBy(_))
    }
}

/// The longest-prefix match of `(local, remote, direction, proto, port)` in the map, as the
/// kernel's LPM trie finds it: a key of protocol "any" matches on its first 72 bits, any other
/// key on `80 + port_prefix` bits.
pub fn longest_match(
    entries: &BTreeMap<PolicyKey, PolicyEntry>,
    local: Identity,
    remote: Identity,
    direction: Direction,
    proto: u8,
    port: u16,
) -> Option<(PolicyKey, PolicyEntry)> {
    let first = PolicyKey { local, remote, direction, proto: 0, port: 0, port_prefix: 0 };
    let last = PolicyKey { local, remote, direction, proto: u8::MAX, port: u16::MAX, port_prefix: u8::MAX };
    let mut best: Option<(u32, PolicyKey, PolicyEntry)> = None;
    for (k, e) in entries.range(first..=last) {
        let bits = if k.proto == PROTO_ANY {
            72
        } else if k.proto == proto && k.port_prefix <= 16 && block_holds(k.port, k.port_prefix, port) {
            80 + u32::from(k.port_prefix)
        } else {
            continue;
        };
        if best.is_none_or(|(b, _, _)| bits > b) {
            best = Some((bits, *k, *e));
        }
    }
    best.map(|(_, k, e)| (k, e))
}

/// The datapath's decision for a new flow at `local`: the longest matches for the remote
/// identity and for `ANY`; a deny in either wins, then an allow in either, else default deny.
pub fn lookup(
    entries: &BTreeMap<PolicyKey, PolicyEntry>,
    local: Identity,
    remote: Identity,
    direction: Direction,
    proto: u8,
    port: u16,
) -> Decision {
    let specific = longest_match(entries, local, remote, direction, proto, port).map(|(_, e)| e);
    let wildcard = longest_match(entries, local, Identity::ANY, direction, proto, port).map(|(_, e)| e);
    let found = [specific, wildcard];
    if let Some(e) = found.iter().flatten().find(|e| e.deny) {
        return Decision::DeniedBy(e.rule);
    }
    match found.iter().flatten().next() {
        Some(e) => Decision::AllowedBy(e.rule),
        None => Decision::DefaultDeny,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TraceError {
    #[error("port {0} is not PORT[/PROTOCOL] (such as 80/tcp, 53/udp, 8/icmp, 128/icmpv6)")]
    BadPort(String),
}

/// Parses `--dport PORT[/PROTOCOL]`: TCP when no protocol is given; for ICMP the "port" is the
/// ICMP type. Returns `(protocol number, port)`.
pub fn parse_dport(text: &str) -> Result<(u8, u16), TraceError> {
    let bad = || TraceError::BadPort(quoted(text));
    let (port, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => PROTO_TCP,
        "udp" => PROTO_UDP,
        "sctp" => PROTO_SCTP,
        "icmp" => PROTO_ICMP,
        "icmpv6" => PROTO_ICMPV6,
        _ => return Err(bad()),
    };
    // Digits only: parse alone would take a sign ("+80").
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if (proto == PROTO_ICMP || proto == PROTO_ICMPV6) && port > 255 {
        return Err(bad());
    }
    Ok((proto, port))
}

/// `tcp/80`, `icmp type 8`.
pub fn flow_name(proto: u8, port: u16) -> String {
    match proto {
        PROTO_TCP => format!("tcp/{port}"),
        PROTO_UDP => format!("udp/{port}"),
        PROTO_SCTP => format!("sctp/{port}"),
        PROTO_ICMP => format!("icmp type {port}"),
        PROTO_ICMPV6 => format!("icmpv6 type {port}"),
        other => format!("protocol {other} port {port}"),
    }
}

/// One end of a traced flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub identity: Identity,
    pub labels: Labels,
    /// In the universe; otherwise resolved as a temporary identity.
    pub known: bool,
}

/// The decision at one end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub direction: Direction,
    pub decision: Decision,
    /// Default-deny in this direction.
    pub enforced: bool,
    /// The rules whose endpoint selector selects this end.
    pub selected_by: Vec<RuleId>,
}

/// The outcome of `policy trace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    pub src: Peer,
    pub dst: Peer,
    pub proto: u8,
    pub port: u16,
    /// The source's egress check; `None` when the source has no policy of its own (host, world).
    pub egress: Option<Check>,
    /// The destination's ingress check; `None` when it has no policy of its own.
    pub ingress: Option<Check>,
    pub allowed: bool,
    /// For people: one line per step.
    pub explanation: Vec<String>,
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.explanation {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Text from labels or rules, safe for a terminal: control characters escaped, length bounded.
fn shown(text: &str) -> String {
    const MAX: usize = 512;
    let mut out = String::new();
    for c in text.chars() {
        if out.len() >= MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The identity a label set stands for: the identity of the universe with exactly these labels;
/// else a new temporary CIDR identity when it carries `cidr:<prefix>` labels (for the longest
/// prefix); else the reserved identity it names (`reserved:host`, …); else a new temporary
/// endpoint identity. Temporary numbers are free in the universe and differ from `taken`.
fn identify(resolver: &Resolver, labels: &Labels, taken: Option<Identity>) -> (Identity, IdentityInfo, bool) {
    let universe = resolver.identities();
    if let Some((id, info)) = universe.iter().find(|(_, info)| info.labels == *labels) {
        return (*id, info.clone(), true);
    }
    let cidr = labels
        .iter()
        .filter(|l| l.source == SOURCE_CIDR)
        .filter_map(|l| l.key.parse::<ipnet::IpNet>().ok())
        .max_by_key(|net| net.prefix_len());
    if cidr.is_none() {
        for (id, name) in RESERVED {
            if labels.has(SOURCE_RESERVED, name, "") {
                let info = universe
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| IdentityInfo { labels: reserved_labels(id).unwrap_or_default(), cidr: None });
                return (id, info, universe.contains_key(&id));
            }
        }
    }
    let first = if cidr.is_some() { Identity::MIN_CIDR } else { Identity::MIN_ALLOCATED };
    let free = (first..=u32::MAX)
        .map(Identity)
        .find(|id| !universe.contains_key(id) && Some(*id) != taken)
        .unwrap_or(Identity(u32::MAX));
    (free, IdentityInfo { labels: labels.clone(), cidr }, false)
}

fn rule_name(resolver: &Resolver, id: RuleId) -> String {
    let Some(rule) = resolver.rule(id) else { return format!("rule {id}") };
    let mut name = format!("rule {id}");
    if !rule.labels.is_empty() {
        name.push_str(&format!(" [{}]", shown(&rule.labels.to_string())));
    }
    if !rule.description.is_empty() {
        name.push_str(&format!(" {}", quoted(&rule.description)));
    }
    name
}

fn rule_list(ids: &[RuleId]) -> String {
    ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Traces a new flow from the label set `src` to `dst` (protocol number and port; ICMP type for
/// ICMP) against the resolver's rules and universe, without changing them.
pub fn trace(resolver: &Resolver, src: &Labels, dst: &Labels, proto: u8, port: u16) -> Trace {
    let (src_id, src_info, src_known) = identify(resolver, src, None);
    let (dst_id, dst_info, dst_known) =
        if src == dst { (src_id, src_info.clone(), src_known) } else { identify(resolver, dst, Some(src_id)) };
    let describe = |id: Identity, info: &IdentityInfo, known: bool| {
        let what = if known { "identity" } else { "temporary identity" };
        format!("{what} {} ({})", id.name(), shown(&info.labels.to_string()))
    };
    let mut explanation = vec![format!(
        "{} from {} to {}",
        flow_name(proto, port),
        describe(src_id, &src_info, src_known),
        describe(dst_id, &dst_info, dst_known)
    )];
    let universe = resolver.identities();
    let check = |local: Identity, local_info: &IdentityInfo, remote: Identity, remote_info: &IdentityInfo, d| {
        let entries = if src_known && dst_known {
            lookup(resolver.entries(), local, remote, d, proto, port)
        } else {
            let remote_info = universe.get(&remote).or(Some(remote_info));
            let mut map = resolver.evaluate(local, local_info, remote, remote_info, d);
            map.extend(resolver.evaluate(local, local_info, Identity::ANY, None, d));
            lookup(&map, local, remote, d, proto, port)
        };
        let (ingress, egress) = resolver.evaluate_enforced(local, local_info);
        let enforced = if d == Direction::Ingress { ingress } else { egress };
        Check { direction: d, decision: entries, enforced, selected_by: resolver.selecting(local, &local_info.labels) }
    };
    let egress = is_local(src_id).then(|| check(src_id, &src_info, dst_id, &dst_info, Direction::Egress));
    let ingress = is_local(dst_id).then(|| check(dst_id, &dst_info, src_id, &src_info, Direction::Ingress));
    for (end, id, check, other) in [("source", src_id, &egress, dst_id), ("destination", dst_id, &ingress, src_id)] {
        let Some(check) = check else {
            let direction = if end == "source" { "egress" } else { "ingress" };
            explanation
                .push(format!("{direction}: {end} {} is not an endpoint; it has no {direction} policy", id.name()));
            continue;
        };
        let d = check.direction;
        let line = match check.decision {
            Decision::AllowedBy(0) => {
                format!("{d}: allowed: {} is not enforced at {d} ({})", id.name(), why_not_enforced(resolver, d))
            }
            Decision::AllowedBy(rule) => format!("{d}: allowed by {}", rule_name(resolver, rule)),
            Decision::DeniedBy(rule) => format!("{d}: denied by {}", rule_name(resolver, rule)),
            Decision::DefaultDeny => {
                let selected = if check.selected_by.is_empty() {
                    String::new()
                } else {
                    let rules = if check.selected_by.len() == 1 { "rule" } else { "rules" };
                    format!("; selected by {rules} {}", rule_list(&check.selected_by))
                };
                format!(
                    "{d}: denied by default: {} is default-deny at {d}{}{selected}, and no rule allows {} {} {}",
                    id.name(),
                    why_enforced(resolver, id, &check.selected_by),
                    flow_name(proto, port),
                    if d == Direction::Egress { "to" } else { "from" },
                    other.name()
                )
            }
        };
        explanation.push(line);
    }
    let allowed = [&egress, &ingress].iter().all(|c| c.as_ref().is_none_or(|c| c.decision.is_allowed()));
    explanation.push(format!("verdict: {}", if allowed { "allowed" } else { "denied" }));
    Trace {
        src: Peer { identity: src_id, labels: src_info.labels.clone(), known: src_known },
        dst: Peer { identity: dst_id, labels: dst_info.labels.clone(), known: dst_known },
        proto,
        port,
        egress,
        ingress,
        allowed,
        explanation,
    }
}

fn why_not_enforced(resolver: &Resolver, d: Direction) -> String {
    match resolver.mode() {
        EnforcementMode::Never => "policy enforcement is off".to_owned(),
        _ => format!("no rule selecting it enforces {d}"),
    }
}

fn why_enforced(resolver: &Resolver, id: Identity, selected_by: &[RuleId]) -> String {
    match resolver.mode() {
        EnforcementMode::Always => " (enforcement mode always)".to_owned(),
        _ if id == Identity::INIT && selected_by.is_empty() => {
            " (init is default-deny while rules are loaded)".to_owned()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (local, remote, direction, proto, port, prefix).
    type Key = (u32, u32, Direction, u8, u16, u8);

    fn map(entries: &[(Key, bool, RuleId)]) -> BTreeMap<PolicyKey, PolicyEntry> {
        entries
            .iter()
            .map(|&((local, remote, direction, proto, port, port_prefix), deny, rule)| {
                (
                    PolicyKey { local: Identity(local), remote: Identity(remote), direction, proto, port, port_prefix },
                    PolicyEntry { deny, rule },
                )
            })
            .collect()
    }

    #[test]
    fn lookup_follows_the_datapath() {
        use Direction::Ingress as In;
        let m = map(&[
            ((300, 0, In, PROTO_ANY, 0, 0), false, 1),
            ((300, 301, In, PROTO_TCP, 80, 16), false, 2),
            ((300, 0, In, PROTO_TCP, 1024, 6), true, 3),
            ((300, 302, In, PROTO_TCP, 0, 0), false, 4),
            ((300, 302, In, PROTO_TCP, 8080, 16), true, 5),
        ]);
        assert_eq!(lookup(&m, Identity(300), Identity(301), In, PROTO_TCP, 80), Decision::AllowedBy(2));
        assert_eq!(lookup(&m, Identity(300), Identity(301), In, PROTO_UDP, 53), Decision::AllowedBy(1));
        // A deny for any remote beats an allow for a specific one.
        assert_eq!(lookup(&m, Identity(300), Identity(301), In, PROTO_TCP, 1500), Decision::DeniedBy(3));
        assert_eq!(lookup(&m, Identity(300), Identity(302), In, PROTO_TCP, 8080), Decision::DeniedBy(5));
        assert_eq!(lookup(&m, Identity(300), Identity(302), In, PROTO_TCP, 8081), Decision::AllowedBy(4));
        assert_eq!(lookup(&m, Identity(300), Identity(302), Direction::Egress, PROTO_TCP, 80), Decision::DefaultDeny);
        assert_eq!(lookup(&m, Identity(999), Identity(301), In, PROTO_TCP, 80), Decision::DefaultDeny);
        let (k, _) = longest_match(&m, Identity(300), Identity(0), In, PROTO_TCP, 2047).unwrap();
        assert_eq!((k.port, k.port_prefix), (1024, 6));
    }

    use crate::policy::testkit::{build, endpoint, flow, labels};
    use crate::policy::EnforcementMode;

    const RULES: &str = r#"[
        {"endpointSelector": {"matchLabels": {"role": "backend"}}, "description": "backend ingress",
         "labels": ["k8s:io.cilium.k8s.policy.name=backend"],
         "ingress": [{"fromEndpoints": [{"matchLabels": {"role": "frontend"}}], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]},
                     {"fromCIDR": ["10.0.0.0/8"]}]},
        {"endpointSelector": {"matchLabels": {"role": "frontend"}},
         "egress": [{"toEndpoints": [{"matchLabels": {"role": "backend"}}]}],
         "egressDeny": [{"toEntities": ["world"]}]}]"#;

    fn resolver() -> Resolver {
        build(
            EnforcementMode::Default,
            RULES,
            &[(300, "role=frontend"), (301, "role=backend"), (302, "role=other")],
            &[],
        )
    }

    #[test]
    fn trace_of_known_identities_names_the_rules() {
        let r = resolver();
        let t = trace(&r, &labels("role=frontend"), &labels("role=backend"), PROTO_TCP, 80);
        assert!(t.allowed && t.src.known && t.dst.known, "{t}");
        assert_eq!((t.src.identity, t.dst.identity), (Identity(300), Identity(301)));
        assert_eq!(t.egress.as_ref().unwrap().decision, Decision::AllowedBy(2));
        assert_eq!(t.ingress.as_ref().unwrap().decision, Decision::AllowedBy(1));
        let text = t.to_string();
        assert!(
            text.contains("ingress: allowed by rule 1 [k8s:io.cilium.k8s.policy.name=backend] \"backend ingress\""),
            "{text}"
        );
        assert!(text.ends_with("verdict: allowed\n"), "{text}");

        let t = trace(&r, &labels("role=other"), &labels("role=backend"), PROTO_TCP, 80);
        assert!(!t.allowed);
        assert_eq!(t.egress.as_ref().unwrap().decision, Decision::AllowedBy(0));
        let ingress = t.ingress.as_ref().unwrap();
        assert_eq!(
            (ingress.decision, ingress.enforced, ingress.selected_by.clone()),
            (Decision::DefaultDeny, true, vec![1])
        );
        let text = t.to_string();
        assert!(text.contains("egress: allowed: 302 is not enforced at egress"), "{text}");
        assert!(text.contains("ingress: denied by default: 301 is default-deny at ingress; selected by rule 1, and no rule allows tcp/80 from 302"), "{text}");

        let t = trace(
            &r,
            &labels("role=frontend"),
            &crate::identity::reserved_labels(Identity::WORLD).unwrap(),
            PROTO_TCP,
            443,
        );
        assert_eq!(t.egress.as_ref().unwrap().decision, Decision::DeniedBy(2));
        assert!(t.ingress.is_none() && !t.allowed);
        assert!(t.to_string().contains("ingress: destination world is not an endpoint"), "{t}");
    }

    #[test]
    fn trace_of_new_label_sets_leaves_the_resolver_alone() {
        let r = resolver();
        let before = r.entries().clone();
        // Not the labels of any identity (no network label): a temporary endpoint identity.
        let src = Labels::parse_list("role=frontend", "container").unwrap();
        let t = trace(&r, &src, &labels("role=backend"), PROTO_TCP, 80);
        assert!(!t.src.known && t.src.identity.is_endpoint() && t.src.identity != Identity(300));
        assert!(t.allowed, "{t}");
        assert!(t.to_string().contains("temporary identity"));
        let t = trace(&r, &src, &labels("role=backend"), PROTO_TCP, 81);
        assert!(!t.allowed);
        // A CIDR label set inside a referenced prefix.
        let outside = Labels::parse_list("cidr:10.1.0.0/16 reserved:world", "cidr").unwrap();
        let t =
            trace(&r, &Labels::parse_list("cidr:10.1.0.0/16", "cidr").unwrap(), &labels("role=backend"), PROTO_UDP, 5);
        assert!(t.src.identity.is_cidr() && t.allowed && t.egress.is_none(), "{t}");
        assert!(trace(&r, &outside, &labels("role=backend"), PROTO_UDP, 5).src.identity.is_cidr());
        let world = Labels::parse_list("reserved:world", "container").unwrap();
        assert_eq!(trace(&r, &world, &labels("role=backend"), PROTO_UDP, 5).src.identity, Identity::WORLD);
        // The same label set on both ends.
        let t = trace(&r, &labels("role=new"), &labels("role=new"), PROTO_TCP, 1);
        assert_eq!(t.src.identity, t.dst.identity);
        assert!(t.allowed);
        assert_eq!(*r.entries(), before);
    }

    #[test]
    fn trace_agrees_with_the_live_map() {
        let r = resolver();
        let all: Vec<(Identity, Labels)> = r.identities().iter().map(|(id, info)| (*id, info.labels.clone())).collect();
        let fresh = [labels("role=frontend x=1"), labels("role=backend x=1"), labels("role=zzz")];
        for (proto, port) in [(PROTO_TCP, 80), (PROTO_TCP, 81), (PROTO_UDP, 53)] {
            for (src, src_labels) in &all {
                for (dst, dst_labels) in &all {
                    let t = trace(&r, src_labels, dst_labels, proto, port);
                    assert_eq!(t.allowed, flow(&r, *src, *dst, proto, port), "{t}");
                }
            }
            // Temporary identities decide as they would once added for real.
            for new in &fresh {
                for (other, other_labels) in &all {
                    let mut real = r.clone();
                    real.add_identity(Identity(900), endpoint(""));
                    real.add_identity(Identity(900), crate::policy::IdentityInfo { labels: new.clone(), cidr: None });
                    assert_eq!(
                        trace(&r, new, other_labels, proto, port).allowed,
                        flow(&real, Identity(900), *other, proto, port)
                    );
                    assert_eq!(
                        trace(&r, other_labels, new, proto, port).allowed,
                        flow(&real, *other, Identity(900), proto, port)
                    );
                }
            }
        }
    }

    #[test]
    fn dport_parses() {
        assert_eq!(parse_dport("80/tcp").unwrap(), (PROTO_TCP, 80));
        assert_eq!(parse_dport("80").unwrap(), (PROTO_TCP, 80));
        assert_eq!(parse_dport("53/UDP").unwrap(), (PROTO_UDP, 53));
        assert_eq!(parse_dport("128/icmpv6").unwrap(), (PROTO_ICMPV6, 128));
        assert!(parse_dport("300/icmp").is_err());
        assert!(parse_dport("http/tcp").is_err());
        assert!(parse_dport("80/gre").is_err());
        assert!(parse_dport("+80/tcp").is_err(), "a sign is no digit");
        assert!(shown("a\u{1b}[31m").contains("\\u{1b}"));
    }
}
