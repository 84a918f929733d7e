//! Resolution tests: exact entries, precedence, entities, CIDRs, modes, incremental changes
//! against full rebuilds and the from-scratch oracle, and the scale timings.

use std::time::Instant;

use super::*;
use crate::policy::testkit::{add_cidr_identities, build, endpoint, flow, ip_identity, oracle, reserved, rules};
use crate::policy::trace::{lookup, Decision};
use crate::policy::{PROTO_ICMP, PROTO_ICMPV6};

fn entry(local: u32, remote: u32, direction: Direction, l4: L4, deny: bool, rule: RuleId) -> (PolicyKey, PolicyEntry) {
    (key((Identity(local), Identity(remote), direction), l4), PolicyEntry { deny, rule })
}

use Direction::{Egress as Out, Ingress as In};

#[test]
fn l3_l4_rule_resolves_to_exact_entries() {
    let r = build(
        EnforcementMode::Default,
        r#"[{"endpointSelector": {"matchLabels": {"role": "backend"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"role": "frontend"}}],
                          "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}, {"port": "8000", "endPort": 8003}]}]}]}]"#,
        &[(300, "role=frontend"), (301, "role=backend")],
        &[],
    );
    let want: BTreeMap<PolicyKey, PolicyEntry> = [
        // Frontend: no rule enforces it.
        entry(300, 0, In, L4_ANY, false, 0),
        entry(300, 0, Out, L4_ANY, false, 0),
        // Backend: egress open, ingress from frontend on tcp/80 and 8000-8003 of every protocol.
        entry(301, 0, Out, L4_ANY, false, 0),
        entry(301, 300, In, (PROTO_TCP, 80, 16), false, 1),
        entry(301, 300, In, (PROTO_TCP, 8000, 14), false, 1),
        entry(301, 300, In, (PROTO_UDP, 8000, 14), false, 1),
        entry(301, 300, In, (PROTO_SCTP, 8000, 14), false, 1),
    ]
    .into_iter()
    .collect();
    // Init is default-deny (rules are loaded) and gets no entries at all.
    assert_eq!(r.entries(), &want);
    assert_eq!(r.enforced(Identity(301)), (true, false));
    assert_eq!(r.enforced(Identity(300)), (false, false));
    assert_eq!(r.enforced(Identity::INIT), (true, true));
    assert_eq!(r.enforced(Identity::HOST), (false, false));
    assert_eq!(oracle(&r), want);
}

#[test]
fn modes() {
    let text = r#"[{"endpointSelector": {}, "ingress": [{"fromEntities": ["host"]}],
                    "egressDeny": [{"toEntities": ["world"]}]}]"#;
    let mut r = build(EnforcementMode::Default, text, &[(300, "a=b")], &[]);
    assert!(flow(&r, Identity::HOST, Identity(300), PROTO_TCP, 1));
    assert!(!flow(&r, Identity::WORLD, Identity(300), PROTO_TCP, 1));
    assert!(!flow(&r, Identity(300), Identity::WORLD, PROTO_TCP, 1));
    r.set_mode(EnforcementMode::Never);
    let only_allow_all: Vec<_> =
        r.entries().iter().map(|(k, e)| (k.local, k.remote, k.proto, e.deny, e.rule)).collect();
    assert_eq!(
        only_allow_all,
        [
            (Identity::INIT, Identity::ANY, PROTO_ANY, false, 0),
            (Identity::INIT, Identity::ANY, PROTO_ANY, false, 0),
            (Identity(300), Identity::ANY, PROTO_ANY, false, 0),
            (Identity(300), Identity::ANY, PROTO_ANY, false, 0)
        ]
    );
    assert!(flow(&r, Identity(300), Identity::WORLD, PROTO_TCP, 1), "deny rules are ignored too");
    assert_eq!(oracle(&r), *r.entries());
    r.set_mode(EnforcementMode::Always);
    r.add_identity(Identity(301), endpoint("other=1"));
    r.remove_rule(1);
    assert_eq!(r.enforced(Identity(301)), (true, true));
    assert!(!flow(&r, Identity(301), Identity(300), PROTO_TCP, 1));
    assert!(r.entries().is_empty());
    assert_eq!(oracle(&r), *r.entries());
}

#[test]
fn enable_default_deny_false_only_adds() {
    let text = r#"[{"endpointSelector": {}, "enableDefaultDeny": {"ingress": false},
                    "ingress": [{"fromEntities": ["world"], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}],
                    "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "bad"}}]}]}]"#;
    let r = build(EnforcementMode::Default, text, &[(300, "app=web"), (301, "app=bad")], &[]);
    assert_eq!(r.enforced(Identity(300)), (false, false));
    assert!(flow(&r, Identity::WORLD, Identity(300), PROTO_TCP, 22), "still open");
    assert!(!flow(&r, Identity(301), Identity(300), PROTO_TCP, 80), "deny still applies");
    // With a second rule that enforces, the world gets port 80 only.
    let text = format!(
        "[{}, {}]",
        &text[1..text.len() - 1],
        r#"{"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]}"#
    );
    let r = build(EnforcementMode::Default, &text, &[(300, "app=web"), (301, "app=bad")], &[]);
    assert!(flow(&r, Identity::WORLD, Identity(300), PROTO_TCP, 80));
    assert!(!flow(&r, Identity::WORLD, Identity(300), PROTO_TCP, 22));
}

#[test]
fn deny_covering_an_allow_of_its_group_removes_it() {
    let text = r#"[{"endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "db"}}],
                     "toPorts": [{"ports": [{"port": "85", "protocol": "TCP"}, {"port": "1000", "endPort": 1999, "protocol": "TCP"}]}]},
                    {"fromEndpoints": [{"matchLabels": {"app": "db"}}], "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}]}],
        "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "db"}}],
                         "toPorts": [{"ports": [{"port": "80", "endPort": 95, "protocol": "TCP"}, {"port": "1500", "protocol": "TCP"}]}]}]}]"#;
    let r = build(EnforcementMode::Default, text, &[(300, "app=web"), (301, "app=db")], &[]);
    let group: Vec<(L4, bool)> = r
        .entries()
        .iter()
        .filter(|(k, _)| k.local == Identity(300) && k.remote == Identity(301))
        .map(|(k, e)| ((k.proto, k.port, k.port_prefix), e.deny))
        .collect();
    // tcp/85 is inside the denied 80-95 and is gone; the 1000-1999 blocks stay (1500 is only
    // part of one of them) and the deny on 1500 is longer, so the lookup picks it.
    assert!(!group.contains(&((PROTO_TCP, 85, 16), false)), "{group:?}");
    assert!(group.contains(&((PROTO_TCP, 80, 12), true)));
    assert!(group.contains(&((PROTO_TCP, 1500, 16), true)));
    assert!(group.contains(&((PROTO_UDP, 53, 16), false)));
    let (web, db) = (Identity(300), Identity(301));
    assert!(!flow(&r, db, web, PROTO_TCP, 85));
    assert!(!flow(&r, db, web, PROTO_TCP, 1500));
    assert!(flow(&r, db, web, PROTO_TCP, 1501));
    assert!(flow(&r, db, web, PROTO_UDP, 53));
    assert_eq!(oracle(&r), *r.entries());
}

#[test]
fn deny_any_protocol_hides_every_allow_of_the_group() {
    let text = r#"[{"endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEndpoints": [{}], "toPorts": [{"ports": [{"port": "80"}]}]}, {"fromEntities": ["host"]}],
        "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "db"}}]}]}]"#;
    let mut r = build(EnforcementMode::Default, text, &[(300, "app=web"), (301, "app=db"), (302, "app=x")], &[]);
    let group =
        |r: &Resolver| r.entries().keys().filter(|k| k.local == Identity(300) && k.remote == Identity(301)).count();
    assert_eq!(group(&r), 1, "only the deny remains");
    assert_eq!(lookup(r.entries(), Identity(300), Identity(301), In, PROTO_TCP, 80), Decision::DeniedBy(1));
    assert!(flow(&r, Identity(302), Identity(300), PROTO_TCP, 80));
    // Withdrawing the deny brings the allows back.
    let mut rule = r.rule(1).unwrap().clone();
    rule.ingress_deny.clear();
    r.add_rule(1, rule).unwrap();
    assert_eq!(group(&r), 3);
    assert!(flow(&r, Identity(301), Identity(300), PROTO_TCP, 80));
    assert_eq!(oracle(&r), *r.entries());
}

#[test]
fn cross_group_deny_wins_in_the_lookup() {
    let text = r#"[{"endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "db"}}], "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}],
        "ingressDeny": [{"toPorts": [{"ports": [{"port": "0", "protocol": "TCP"}]}]}]}]"#;
    let r = build(EnforcementMode::Default, text, &[(300, "app=web"), (301, "app=db")], &[]);
    // The allow stays in its group (the deny is for remote ANY); the datapath's second lookup
    // finds the deny.
    assert!(r.entries().contains_key(&key((Identity(300), Identity(301), In), (PROTO_TCP, 22, 16))));
    assert_eq!(lookup(r.entries(), Identity(300), Identity(301), In, PROTO_TCP, 22), Decision::DeniedBy(1));
    assert!(!flow(&r, Identity(301), Identity(300), PROTO_UDP, 22), "still default deny");
}

#[test]
fn merging_picks_the_lowest_rule_of_the_winning_kind() {
    let text = r#"[
        {"endpointSelector": {}, "ingress": [{"fromEntities": ["world"]}]},
        {"endpointSelector": {}, "ingressDeny": [{"fromEntities": ["world"]}]},
        {"endpointSelector": {}, "ingressDeny": [{"fromEntities": ["world"]}]},
        {"endpointSelector": {}, "ingress": [{"fromEntities": ["world"]}]}]"#;
    let r = build(EnforcementMode::Default, text, &[(300, "a=b")], &[]);
    let found = r.entries()[&key((Identity(300), Identity::WORLD, In), L4_ANY)];
    assert_eq!(found, PolicyEntry { deny: true, rule: 2 });
}

#[test]
fn entities_resolve_to_identities() {
    let text = r#"[{"endpointSelector": {"matchLabels": {"app": "a"}},
        "egress": [{"toEntities": ["cluster"], "toPorts": [{"ports": [{"port": "1", "protocol": "TCP"}]}]},
                   {"toEntities": ["world"], "toPorts": [{"ports": [{"port": "2", "protocol": "TCP"}]}]},
                   {"toEntities": ["world-ipv4"], "toPorts": [{"ports": [{"port": "3", "protocol": "TCP"}]}]},
                   {"toEntities": ["world-ipv6"], "toPorts": [{"ports": [{"port": "4", "protocol": "TCP"}]}]},
                   {"toEntities": ["host", "init"], "toPorts": [{"ports": [{"port": "5", "protocol": "TCP"}]}]},
                   {"toEntities": ["all"], "toPorts": [{"ports": [{"port": "6", "protocol": "TCP"}]}]}]}]"#;
    let r = build(EnforcementMode::Default, text, &[(300, "app=a"), (301, "app=b")], &["10.0.0.0/8", "fd00:5::/64"]);
    let a = Identity(300);
    let (v4, v6, net4, net6) = (
        ip_identity(&r, "1.1.1.1"),
        ip_identity(&r, "2001:db8::1"),
        ip_identity(&r, "10.1.1.1"),
        ip_identity(&r, "fd00:5::1"),
    );
    assert!(v4 != Identity::WORLD && v6 != Identity::WORLD, "world-ipv4/6 create 0.0.0.0/0 and ::/0 identities");
    let reach = |to: Identity| {
        (1..=6).filter(|p| lookup(r.entries(), a, to, Out, PROTO_TCP, *p).is_allowed()).collect::<Vec<u16>>()
    };
    assert_eq!(reach(Identity(301)), [1, 6]);
    assert_eq!(reach(a), [1, 6]);
    assert_eq!(reach(Identity::HOST), [1, 5, 6]);
    assert_eq!(reach(Identity::INIT), [1, 5, 6]);
    assert_eq!(reach(Identity::WORLD), [2, 6]);
    assert_eq!(reach(v4), [2, 3, 6]);
    assert_eq!(reach(net4), [2, 3, 6], "a more specific IPv4 prefix is still world-ipv4");
    assert_eq!(reach(v6), [2, 4, 6]);
    assert_eq!(reach(net6), [2, 4, 6]);
}

#[test]
fn icmp_and_protocol_any_ports() {
    let text = r#"[{"endpointSelector": {}, "ingress": [
        {"icmps": [{"fields": [{"type": "EchoRequest"}, {"type": "EchoRequest", "family": "IPv6"}]}],
         "toPorts": [{"ports": [{"protocol": "ICMP"}, {"port": "7"}]}]}]}]"#;
    let r = build(EnforcementMode::Default, text, &[(300, "a=b")], &[]);
    let at = |proto, port| flow(&r, Identity::WORLD, Identity(300), proto, port);
    assert!(at(PROTO_ICMP, 8) && at(PROTO_ICMP, 0), "toPorts ICMP = every ICMP type");
    assert!(at(PROTO_ICMPV6, 128) && !at(PROTO_ICMPV6, 129));
    assert!(at(PROTO_TCP, 7) && at(PROTO_UDP, 7) && at(PROTO_SCTP, 7) && !at(PROTO_TCP, 8));
}

#[test]
fn empty_sections_and_lists() {
    // `{}` enforces and allows nothing; `fromEndpoints: []` is absent, so toPorts applies to all.
    let text = r#"[{"endpointSelector": {}, "ingress": [{}, {"fromEndpoints": [], "toPorts": [{"ports": [{"port": "9", "protocol": "UDP"}]}]}]}]"#;
    let r = build(EnforcementMode::Default, text, &[(300, "a=b"), (301, "c=d")], &[]);
    assert!(flow(&r, Identity(301), Identity(300), PROTO_UDP, 9));
    assert!(!flow(&r, Identity(301), Identity(300), PROTO_UDP, 10));
    // A selector that matches nobody yet allows nothing (it is not "every peer").
    let text = r#"[{"endpointSelector": {}, "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "none"}}], "toPorts": [{"ports": [{"port": "9"}]}]}]}]"#;
    let mut r = build(EnforcementMode::Default, text, &[(300, "a=b")], &[]);
    assert!(!flow(&r, Identity::WORLD, Identity(300), PROTO_UDP, 9));
    r.add_identity(Identity(302), endpoint("app=none"));
    assert!(flow(&r, Identity(302), Identity(300), PROTO_UDP, 9));
}

#[test]
fn cidr_identities_and_except() {
    let text = r#"[{"endpointSelector": {}, "ingress": [{"fromCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}]},
                                                         {"fromCIDR": ["fd00:7::/48"]}]}]"#;
    let mut r = build(EnforcementMode::Default, text, &[(300, "a=b")], &["10.96.1.0/24", "10.1.0.0/16", "11.0.0.0/8"]);
    let from = |r: &Resolver, addr: &str| flow(r, ip_identity(r, addr), Identity(300), PROTO_TCP, 80);
    assert!(from(&r, "10.1.2.3") && from(&r, "10.200.0.1"));
    assert!(!from(&r, "10.96.1.1") && !from(&r, "10.97.0.1"), "inside the exception, however specific");
    assert!(!from(&r, "11.0.0.1") && !from(&r, "12.0.0.1"));
    assert!(from(&r, "fd00:7::1") && !from(&r, "fd00:8::1"));
    assert_eq!(
        r.cidrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["10.0.0.0/8", "10.96.0.0/12", "fd00:7::/48"]
    );
    // Endpoint selectors never select CIDR identities, even `{}`.
    r.add_rule(2, rules(r#"{"endpointSelector": {}, "ingress": [{"fromEndpoints": [{}]}]}"#).remove(0)).unwrap();
    assert!(!from(&r, "11.0.0.1"));
    assert_eq!(oracle(&r), *r.entries());
}

#[test]
fn rule_ids_are_checked() {
    let mut r = Resolver::new(EnforcementMode::Default);
    let rule = rules(r#"{"endpointSelector": {}}"#).remove(0);
    assert_eq!(r.add_rule(0, rule.clone()), Err(ResolveError::ZeroRuleId));
    assert_eq!(r.replace_rules(vec![(1, rule.clone()), (1, rule.clone())]), Err(ResolveError::DuplicateRuleId(1)));
    assert_eq!(r.add_rule(1, rule.clone()), Ok(None));
    assert_eq!(r.add_rule(1, rule.clone()), Ok(Some(rule.clone())));
    assert_eq!(r.remove_rule(1), Some(rule));
    assert_eq!(r.remove_rule(1), None);
    assert_eq!(r.rule_count(), 0);
}

/// A fixed-seed xorshift generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

const POOL: [&str; 9] = [
    r#"{"endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "db"}}], "toPorts": [{"ports": [{"port": "80", "endPort": 90, "protocol": "TCP"}]}]}],
        "egress": [{"toEntities": ["world"]}]}"#,
    r#"{"endpointSelector": {}, "ingressDeny": [{"fromEntities": ["world"]}], "ingress": [{"fromEntities": ["all"]}]}"#,
    r#"{"endpointSelector": {"matchLabels": {"app": "db"}},
        "egress": [{"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}], "toPorts": [{"ports": [{"port": "443"}]}]}],
        "egressDeny": [{"toCIDR": ["10.1.0.0/16"]}]}"#,
    r#"{"endpointSelector": {"matchLabels": {"reserved:init": ""}},
        "egress": [{"toEntities": ["all"], "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}]}],
        "ingress": [{"fromEntities": ["host"]}]}"#,
    r#"{"endpointSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["back"]}]},
        "enableDefaultDeny": {"ingress": false},
        "ingress": [{"icmps": [{"fields": [{"type": 8}, {"type": "EchoRequest", "family": "IPv6"}]}]}],
        "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}], "toPorts": [{"ports": [{"port": "1000", "endPort": 2000}]}]}]}"#,
    r#"{"endpointSelector": {"matchLabels": {"app": "web"}},
        "egress": [{"toEntities": ["cluster", "world-ipv4"]}],
        "egressDeny": [{"toEndpoints": [{"matchLabels": {"app": "db"}}], "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP"}]}]}]}"#,
    r#"{"endpointSelector": {"matchLabels": {"app": "db"}}, "ingress": [{}]}"#,
    r#"{"endpointSelector": {}, "egress": [{"toEntities": ["world-ipv6", "init"]}, {"toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}],
        "ingressDeny": [{"fromCIDR": ["0.0.0.0/0"]}]}"#,
    r#"{"endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "db"}}], "toPorts": [{"ports": [{"port": "85", "protocol": "TCP"}]}]}],
        "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "db"}}], "toPorts": [{"ports": [{"port": "80", "endPort": 95, "protocol": "TCP"}]}]}]}"#,
];

/// Identities the random walk adds and removes: (number, info); some numbers come twice with
/// different labels.
fn identity_pool() -> Vec<(Identity, IdentityInfo)> {
    let mut pool = vec![
        (Identity(300), endpoint("app=web")),
        (Identity(301), endpoint("app=db tier=back")),
        (Identity(302), endpoint("app=web tier=front")),
        (Identity(303), endpoint("app=cache")),
        (Identity(300), endpoint("app=db")),
        (Identity::INIT, reserved(Identity::INIT)),
        (Identity::HOST, reserved(Identity::HOST)),
        (Identity::WORLD, reserved(Identity::WORLD)),
    ];
    let mut prefixes = BTreeSet::new();
    for text in POOL {
        prefixes.extend(rules(text).remove(0).cidrs());
    }
    prefixes.insert("10.1.2.0/24".parse().unwrap());
    for (i, (net, labels)) in crate::policy::cidr_identity_labels(&prefixes).into_iter().enumerate() {
        pool.push((Identity(Identity::MIN_CIDR + i as u32), IdentityInfo { labels, cidr: Some(net) }));
    }
    pool
}

/// The same state resolved in one go, identities first or rules first.
fn fresh(r: &Resolver, rules_first: bool) -> Resolver {
    let mut f = Resolver::new(r.mode());
    let list: Vec<(RuleId, Rule)> = r.rules().map(|(id, rule)| (id, rule.clone())).collect();
    if rules_first {
        f.replace_rules(list.clone()).unwrap();
    }
    for (id, info) in r.identities().iter().rev() {
        f.add_identity(*id, info.clone());
    }
    if !rules_first {
        f.replace_rules(list).unwrap();
    }
    f
}

#[test]
fn incremental_changes_equal_a_full_rebuild() {
    let pool: Vec<Rule> = POOL.iter().map(|t| rules(t).remove(0)).collect();
    let identities = identity_pool();
    let modes = [EnforcementMode::Default, EnforcementMode::Default, EnforcementMode::Always, EnforcementMode::Never];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut r = Resolver::new(EnforcementMode::Default);
    for step in 0..600 {
        match rng.below(10) {
            0..=2 => {
                let id = rng.below(7) as RuleId + 1;
                r.add_rule(id, pool[rng.below(pool.len())].clone()).unwrap();
            }
            3 | 4 => {
                r.remove_rule(rng.below(7) as RuleId + 1);
            }
            5..=7 => {
                let (id, info) = identities[rng.below(identities.len())].clone();
                r.add_identity(id, info);
            }
            8 => {
                let (id, _) = identities[rng.below(identities.len())].clone();
                r.remove_identity(id);
            }
            _ => {
                if rng.below(4) == 0 {
                    r.set_mode(modes[rng.below(modes.len())]);
                }
            }
        }
        let want = oracle(&r);
        assert_eq!(*r.entries(), want, "step {step}: incremental state differs from the oracle");
        assert_eq!(*fresh(&r, true).entries(), want, "step {step}: rules-first rebuild differs");
        assert_eq!(*fresh(&r, false).entries(), want, "step {step}: identities-first rebuild differs");
        for (id, info) in r.identities() {
            assert_eq!(r.enforced(*id), r.evaluate_enforced(*id, info), "step {step}: enforcement of {id}");
        }
        let cidrs: BTreeSet<IpNet> = r.rules().flat_map(|(_, rule)| rule.cidrs()).collect();
        assert_eq!(r.cidrs(), cidrs);
    }
    // Unloading everything leaves only the allow-all entries of the remaining locals.
    for id in 1..=7 {
        r.remove_rule(id);
    }
    r.set_mode(EnforcementMode::Default);
    assert!(r.entries().values().all(|e| !e.deny && e.rule == 0));
}

/// Sizes from the performance targets (10,000 rules, about 30 identities; a tenth in debug
/// builds); prints timings (run with `--release -- --nocapture`), asserts only correctness.
#[test]
fn scale_timings() {
    let rules_n = if cfg!(debug_assertions) { 1_000 } else { 10_000 };
    let mut list = Vec::new();
    for i in 0..rules_n {
        let text = match i % 4 {
            0 => format!(
                r#"{{"endpointSelector": {{"matchLabels": {{"app": "svc{}"}}}},
                    "ingress": [{{"fromEndpoints": [{{"matchLabels": {{"app": "svc{}"}}}}], "toPorts": [{{"ports": [{{"port": "{}", "protocol": "TCP"}}]}}]}}]}}"#,
                i % 30,
                (i + 1) % 30,
                1000 + i
            ),
            1 => format!(
                r#"{{"endpointSelector": {{}}, "ingress": [{{"toPorts": [{{"ports": [{{"port": "{}", "endPort": {}, "protocol": "TCP"}}]}}]}}]}}"#,
                20000 + i,
                20010 + i
            ),
            2 => format!(
                r#"{{"endpointSelector": {{"matchLabels": {{"tier": "t{}"}}}},
                    "egress": [{{"toCIDR": ["10.{}.0.0/16"], "toPorts": [{{"ports": [{{"port": "{}"}}]}}]}}]}}"#,
                i % 3,
                (i / 4) % 4,
                1 + i % 1000
            ),
            _ => format!(
                r#"{{"endpointSelector": {{"matchLabels": {{"app": "svc{}"}}}},
                    "ingressDeny": [{{"fromEntities": ["world"], "toPorts": [{{"ports": [{{"port": "{}", "protocol": "UDP"}}]}}]}}]}}"#,
                i % 30,
                30000 + i % 5000
            ),
        };
        list.push((i as RuleId + 1, rules(&text).remove(0)));
    }
    let mut r = Resolver::new(EnforcementMode::Default);
    r.add_identity(Identity::HOST, reserved(Identity::HOST));
    r.add_identity(Identity::WORLD, reserved(Identity::WORLD));
    r.add_identity(Identity::INIT, reserved(Identity::INIT));
    for i in 0..27u32 {
        r.add_identity(Identity(300 + i), endpoint(&format!("app=svc{i} tier=t{}", i % 3)));
    }
    let start = Instant::now();
    r.replace_rules(list).unwrap();
    let build = start.elapsed();
    let start = Instant::now();
    add_cidr_identities(&mut r, &[]);
    let cidrs = start.elapsed();
    let count = r.entries().len();

    let extra = rules(r#"{"endpointSelector": {}, "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "svc1"}}], "toPorts": [{"ports": [{"port": "9999", "protocol": "TCP"}]}]}]}"#).remove(0);
    let start = Instant::now();
    r.add_rule(rules_n as RuleId + 1, extra).unwrap();
    let add_rule = start.elapsed();
    let start = Instant::now();
    r.remove_rule(rules_n as RuleId + 1);
    let remove_rule = start.elapsed();
    assert_eq!(r.entries().len(), count);
    let start = Instant::now();
    r.add_identity(Identity(400), endpoint("app=svc5 tier=t1"));
    let added = r.entries().len() - count;
    let add_identity = start.elapsed();
    let start = Instant::now();
    r.remove_identity(Identity(400));
    let remove_identity = start.elapsed();
    assert_eq!(r.entries().len(), count);
    println!(
        "policy scale: {rules_n} rules, {} identities, {count} entries: build {build:?}, \
         {} CIDR identities {cidrs:?}, add_rule {add_rule:?}, remove_rule {remove_rule:?}, \
         add_identity {add_identity:?} ({added} entries), remove_identity {remove_identity:?}",
        r.identities().len(),
        r.cidrs().len()
    );
}
