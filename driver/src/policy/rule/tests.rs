//! Rule validation tests (every refusal names the rule and the field path), the model's
//! helpers, and the serialize → parse round trip.

use super::*;
use crate::policy::file::{parse_rule_value, parse_rules_str, PolicyError};

/// The error for rule text (a JSON array); asserts it names `rule` (1-based) of `total`.
fn refused(text: &str) -> PolicyError {
    parse_rules_str(text).expect_err("rule accepted")
}

/// Asserts the error names the rule (1-based of `total`), the exact field path, and contains
/// `reason`.
fn check(text: &str, rule: usize, total: usize, path: &str, reason: &str) {
    let err = refused(text);
    let shown = err.to_string();
    match &err {
        PolicyError::Rule { rule: r, total: t, path: p, reason: why } => {
            assert_eq!((*r + 1, *t), (rule, total), "{shown}");
            assert_eq!(p, path, "{shown}");
            assert!(why.contains(reason), "{shown}");
        }
        other => panic!("not a rule error: {other}"),
    }
    assert!(shown.starts_with(&format!("{path}: ")), "{shown}");
    assert!(shown.ends_with(&format!("(rule {rule} of {total})")), "{shown}");
}

const OK: &str = r#"{"endpointSelector": {}}"#;

/// `[OK, OK, bad]`: the bad rule is rule 3 of 3.
fn third(bad: &str) -> String {
    format!("[{OK}, {OK}, {bad}]")
}

#[test]
fn unknown_fields() {
    check(&third(r#"{"endpointSelector": {}, "ingres": []}"#), 3, 3, "rules[2]", "unknown field \"ingres\"");
    check(
        &third(r#"{"endpointSelector": {}, "ingress": [{"fromEndpoint": [{}]}]}"#),
        3,
        3,
        "rules[2].ingress[0]",
        "unknown field \"fromEndpoint\"",
    );
    check(
        &third(r#"{"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": "80", "proto": "TCP"}]}]}]}"#),
        3,
        3,
        "rules[2].egress[0].toPorts[0].ports[0]",
        "unknown field \"proto\"",
    );
}

#[test]
fn unsupported_fields_are_named() {
    check(
        &third(r#"{"endpointSelector": {}, "egress": [{"toFQDNs": [{"matchName": "example.com"}]}]}"#),
        3,
        3,
        "rules[2].egress[0].toFQDNs",
        "toFQDNs is not supported",
    );
    check(
        &third(
            r#"{"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80"}],
                "rules": {"http": [{"method": "GET"}]}}]}]}"#,
        ),
        3,
        3,
        "rules[2].ingress[0].toPorts[0].rules",
        "rules is not supported: L7 rules",
    );
    check(
        &third(r#"{"endpointSelector": {}, "ingress": [{"fromRequires": [{"matchLabels": {"env": "prod"}}]}]}"#),
        3,
        3,
        "rules[2].ingress[0].fromRequires",
        "fromRequires is not supported",
    );
    check(r#"[{"nodeSelector": {}}]"#, 1, 1, "rules[0].nodeSelector", "nodeSelector is not supported");
    for (field, place) in [
        ("toServices", "egress"),
        ("toGroups", "egress"),
        ("fromNodes", "ingress"),
        ("toNodes", "egress"),
        ("authentication", "ingress"),
        ("toRequires", "egress"),
    ] {
        let text = format!(r#"[{{"endpointSelector": {{}}, "{place}": [{{"{field}": []}}]}}]"#);
        check(&text, 1, 1, &format!("rules[0].{place}[0].{field}"), &format!("{field} is not supported"));
    }
    for field in ["listener", "originatingTLS", "terminatingTLS", "serverNames"] {
        let text = format!(
            r#"[{{"endpointSelector": {{}}, "egress": [{{"toPorts": [{{"ports": [{{"port": "443"}}], "{field}": {{}}}}]}}]}}]"#
        );
        check(&text, 1, 1, &format!("rules[0].egress[0].toPorts[0].{field}"), "is not supported");
    }
    for field in ["cidrGroupRef", "cidrGroupSelector"] {
        let text = format!(r#"[{{"endpointSelector": {{}}, "egress": [{{"toCIDRSet": [{{"{field}": "x"}}]}}]}}]"#);
        check(&text, 1, 1, &format!("rules[0].egress[0].toCIDRSet[0].{field}"), "CIDR groups");
    }
}

#[test]
fn fields_of_the_other_direction_get_a_hint() {
    check(
        r#"[{"endpointSelector": {}, "egress": [{"fromEndpoints": [{}]}]}]"#,
        1,
        1,
        "rules[0].egress[0].fromEndpoints",
        "fromEndpoints is an ingress field; egress sections use toEndpoints",
    );
    check(
        r#"[{"endpointSelector": {}, "ingressDeny": [{"toCIDR": ["10.0.0.0/8"]}]}]"#,
        1,
        1,
        "rules[0].ingressDeny[0].toCIDR",
        "toCIDR is an egress field; ingress sections use fromCIDR",
    );
}

#[test]
fn wrong_types() {
    check(r#"[{"endpointSelector": []}]"#, 1, 1, "rules[0].endpointSelector", "expected an object, found an array");
    check(
        r#"[{"endpointSelector": {}, "ingress": {}}]"#,
        1,
        1,
        "rules[0].ingress",
        "expected an array, found an object",
    );
    check(
        r#"[{"endpointSelector": {}, "egress": [{"toEntities": [1]}]}]"#,
        1,
        1,
        "rules[0].egress[0].toEntities[0]",
        "expected a string, found a number",
    );
    check(
        r#"[{"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": true}]}]}]}]"#,
        1,
        1,
        "rules[0].egress[0].toPorts[0].ports[0].port",
        "found a boolean",
    );
    check(
        r#"[{"endpointSelector": {}, "enableDefaultDeny": {"ingress": "no"}}]"#,
        1,
        1,
        "rules[0].enableDefaultDeny.ingress",
        "expected true or false",
    );
    check(
        r#"[{"endpointSelector": {}, "labels": [3]}]"#,
        1,
        1,
        "rules[0].labels[0]",
        "expected a label string or object",
    );
    check(r#"[{"ingress": []}]"#, 1, 1, "rules[0].endpointSelector", "required field is missing");
    check(r#"[3]"#, 1, 1, "rules[0]", "expected an object, found a number");
}

#[test]
fn ports() {
    let port = |p: &str| {
        format!(
            r#"[{OK}, {{"endpointSelector": {{}}, "ingress": [{{"toPorts": [{{"ports": [{{"port": "1"}}, {p}]}}]}}]}}]"#
        )
    };
    let path = "rules[1].ingress[0].toPorts[0].ports[1]";
    check(&port(r#"{"port": "http"}"#), 2, 2, &format!("{path}.port"), "named port \"http\" is not supported");
    check(&port(r#"{"port": "70000"}"#), 2, 2, &format!("{path}.port"), "out of range");
    check(&port(r#"{"port": -1}"#), 2, 2, &format!("{path}.port"), "out of range");
    check(&port(r#"{"port": "8 0"}"#), 2, 2, &format!("{path}.port"), "is not a port number");
    check(&port(r#"{"port": 80, "endPort": 79}"#), 2, 2, &format!("{path}.endPort"), "endPort 79 is below port 80");
    check(&port(r#"{"endPort": 90}"#), 2, 2, &format!("{path}.endPort"), "needs a non-zero port");
    check(&port(r#"{"port": 1, "endPort": 65536}"#), 2, 2, &format!("{path}.endPort"), "out of range");
    check(&port(r#"{"port": "80", "protocol": "GRE"}"#), 2, 2, &format!("{path}.protocol"), "protocol \"GRE\"");
    check(&port(r#"{"port": "8", "protocol": "ICMP"}"#), 2, 2, &format!("{path}.port"), "use icmps");
    let ok = |p: &str| parse_rules_str(&port(p)).unwrap()[1].ingress[0].to_ports[0].ports[1];
    assert_eq!(ok(r#"{"port": 80}"#), PortProtocol { port: 80, end_port: None, protocol: Protocol::Any });
    assert_eq!(ok(r#"{"port": "0", "protocol": "udp"}"#).port, 0);
    assert_eq!(ok(r#"{"port": ""}"#).port, 0);
    assert_eq!(ok(r#"{"protocol": "ICMPv6"}"#).protocol, Protocol::Icmpv6);
    assert_eq!(ok(r#"{"port": "80", "endPort": 80}"#).end_port, None);
    assert_eq!(ok(r#"{"port": "80", "endPort": 0}"#).end_port, None, "endPort 0 means no range, as in Cilium");
    assert_eq!(ok(r#"{"port": "80", "endPort": 90, "protocol": "Tcp"}"#).end_port, Some(90));
    check(
        r#"[{"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": []}]}]}]"#,
        1,
        1,
        "rules[0].ingress[0].toPorts[0].ports",
        "at least one port",
    );
}

#[test]
fn cidrs() {
    let cidr = |c: &str| format!(r#"[{{"endpointSelector": {{}}, "egress": [{{"toCIDR": ["{c}"]}}]}}]"#);
    check(
        &cidr("10.1.2.3/8"),
        1,
        1,
        "rules[0].egress[0].toCIDR[0]",
        "\"10.1.2.3/8\" has host bits set; did you mean 10.0.0.0/8?",
    );
    check(&cidr("10.0.0.0/33"), 1, 1, "rules[0].egress[0].toCIDR[0]", "is not a CIDR or an IP address");
    check(&cidr("example.com"), 1, 1, "rules[0].egress[0].toCIDR[0]", "is not a CIDR");
    let parsed = |c: &str| parse_rules_str(&cidr(c)).unwrap()[0].egress[0].cidr[0];
    assert_eq!(parsed("10.1.2.3").to_string(), "10.1.2.3/32");
    assert_eq!(parsed("fd00:1::1").to_string(), "fd00:1::1/128");
    assert_eq!(parsed("fd00:1::/64").to_string(), "fd00:1::/64");
    let set = |except: &str| {
        format!(
            r#"[{{"endpointSelector": {{}}, "ingress": [{{"fromCIDRSet": [{{"cidr": "10.0.0.0/8", "except": [{except}]}}]}}]}}]"#
        )
    };
    check(
        &set(r#""10.96.0.0/12", "11.0.0.0/8""#),
        1,
        1,
        "rules[0].ingress[0].fromCIDRSet[0].except[1]",
        "11.0.0.0/8 is not inside 10.0.0.0/8",
    );
    check(&set(r#""fd00::/8""#), 1, 1, "rules[0].ingress[0].fromCIDRSet[0].except[0]", "is not inside");
    check(
        r#"[{"endpointSelector": {}, "ingress": [{"fromCIDRSet": [{"except": []}]}]}]"#,
        1,
        1,
        "rules[0].ingress[0].fromCIDRSet[0].cidr",
        "required field is missing",
    );
    assert_eq!(parse_rules_str(&set(r#""10.96.0.0/12""#)).unwrap()[0].ingress[0].cidr_set[0].except.len(), 1);
}

#[test]
fn entities() {
    check(
        r#"[{"endpointSelector": {}, "ingress": [{"fromEntities": ["world", "remote-node"]}]}]"#,
        1,
        1,
        "rules[0].ingress[0].fromEntities[1]",
        "entity \"remote-node\" is not supported; supported: host, world, all, init, cluster, world-ipv4, world-ipv6",
    );
    check(
        r#"[{"endpointSelector": {}, "ingress": [{"fromEntities": ["World"]}]}]"#,
        1,
        1,
        "rules[0].ingress[0].fromEntities[0]",
        "not supported",
    );
    for (entity, name) in ENTITIES {
        let text = format!(r#"[{{"endpointSelector": {{}}, "egress": [{{"toEntities": ["{name}"]}}]}}]"#);
        assert_eq!(parse_rules_str(&text).unwrap()[0].egress[0].entities, vec![entity]);
    }
}

#[test]
fn icmp_types_by_name_and_number() {
    let icmp = |fields: &str| {
        format!(r#"[{{"endpointSelector": {{}}, "egress": [{{"icmps": [{{"fields": [{fields}]}}]}}]}}]"#)
    };
    let parsed = |fields: &str| parse_rules_str(&icmp(fields)).unwrap()[0].egress[0].icmps[0].fields.clone();
    let v4 = |t| IcmpField { family: IcmpFamily::V4, icmp_type: t };
    let v6 = |t| IcmpField { family: IcmpFamily::V6, icmp_type: t };
    assert_eq!(parsed(r#"{"type": 8}"#), vec![v4(8)]);
    assert_eq!(parsed(r#"{"type": "8"}"#), vec![v4(8)]);
    assert_eq!(parsed(r#"{"type": "EchoRequest"}"#), vec![v4(8)]);
    assert_eq!(parsed(r#"{"type": "Echo", "family": "IPv4"}"#), vec![v4(8)]);
    assert_eq!(parsed(r#"{"type": "EchoRequest", "family": "IPv6"}"#), vec![v6(128)]);
    assert_eq!(parsed(r#"{"type": "NeighborSolicitation", "family": "IPv6"}"#), vec![v6(135)]);
    assert_eq!(parsed(r#"{"type": "ExtendedEchoReply", "family": "IPv6"}"#), vec![v6(161)]);
    assert_eq!(parsed(r#"{"type": 255, "family": "ipv6"}"#), vec![v6(255)]);
    for (name, t) in ICMPV4_TYPES {
        assert_eq!(parsed(&format!(r#"{{"type": "{name}"}}"#)), vec![v4(t)]);
    }
    for (name, t) in ICMPV6_TYPES {
        assert_eq!(parsed(&format!(r#"{{"type": "{name}", "family": "IPv6"}}"#)), vec![v6(t)]);
    }
    let path = "rules[0].egress[0].icmps[0].fields[0]";
    check(&icmp(r#"{"type": 256}"#), 1, 1, &format!("{path}.type"), "out of range 0-255");
    check(&icmp(r#"{"type": "NeighborSolicitation"}"#), 1, 1, &format!("{path}.type"), "known IPv4 type name");
    check(&icmp(r#"{"type": 8, "family": "IPv5"}"#), 1, 1, &format!("{path}.family"), "family \"IPv5\"");
    check(&icmp(r#"{"family": "IPv4"}"#), 1, 1, &format!("{path}.type"), "required field is missing");
    check(&icmp(r#"{"type": 8, "code": 0}"#), 1, 1, path, "unknown field \"code\"");
}

#[test]
fn labels_strings_and_objects() {
    let rule = &parse_rules_str(
        r#"[{"endpointSelector": {}, "labels": ["a=b", "k8s:io.x=y", {"key": "name", "value": "n"},
            {"key": "flag", "source": "container"}], "description": "d"}]"#,
    )
    .unwrap()[0];
    let want: Labels = [
        Label::new("unspec", "a", "b"),
        Label::new("k8s", "io.x", "y"),
        Label::new("unspec", "name", "n"),
        Label::new("container", "flag", ""),
    ]
    .into_iter()
    .collect();
    assert_eq!(rule.labels, want);
    assert_eq!(rule.description, "d");
    // `policy delete LABEL…`: every given label; no source = any source; values exact.
    let wanted = |text: &str| Labels::parse_list(text, "any").unwrap();
    assert!(rule.has_labels(&wanted("name=n")));
    assert!(rule.has_labels(&wanted("unspec:name=n a=b")));
    assert!(rule.has_labels(&wanted("k8s:io.x=y")));
    assert!(!rule.has_labels(&wanted("container:io.x=y")));
    assert!(!rule.has_labels(&wanted("name=N")));
    assert!(!rule.has_labels(&wanted("name=n missing=1")));
    assert!(rule.has_labels(&wanted("container:flag")));
}

#[test]
fn enforcement_follows_sections_and_enable_default_deny() {
    let rule = |text: &str| parse_rules_str(text).unwrap().remove(0);
    let r = rule(r#"{"endpointSelector": {}, "ingress": [{}]}"#);
    assert!(r.enforces(Direction::Ingress) && !r.enforces(Direction::Egress));
    let r = rule(r#"{"endpointSelector": {}, "ingress": [], "egressDeny": [{}]}"#);
    assert!(!r.enforces(Direction::Ingress) && r.enforces(Direction::Egress), "empty lists count as absent");
    let r = rule(r#"{"endpointSelector": {}, "ingress": [{}], "enableDefaultDeny": {"ingress": false}}"#);
    assert!(!r.enforces(Direction::Ingress));
    let r = rule(r#"{"endpointSelector": {}, "enableDefaultDeny": {"egress": true}}"#);
    assert!(r.enforces(Direction::Egress), "an explicit true enables default deny, as in Cilium");
}

#[test]
fn serialized_rules_parse_back_equal() {
    let text = r#"[
      {"endpointSelector": {"matchLabels": {"app": "web", "container:tier": "front"},
                            "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]},
       "ingress": [{"fromEndpoints": [{}, {"matchLabels": {"reserved:init": ""}}],
                    "toPorts": [{"ports": [{"port": 80, "protocol": "tcp"}, {"port": "8000", "endPort": 8080},
                                           {"protocol": "ICMPv6"}, {"port": "53", "protocol": "UDP"}]}]},
                   {"fromEntities": ["world", "cluster", "world-ipv6"]},
                   {"fromCIDR": ["10.1.2.3", "fd00:1::/64"],
                    "fromCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}]},
                   {"icmps": [{"fields": [{"type": "EchoRequest", "family": "IPv6"}, {"type": 0}]}]},
                   {}],
       "ingressDeny": [{"fromEntities": ["world"], "toPorts": [{"ports": [{"port": "22", "protocol": "SCTP"}]}]}],
       "egress": [{"toEndpoints": [{"matchExpressions": [{"key": "a", "operator": "Exists"}]}],
                   "toEntities": ["host", "init", "all", "world-ipv4"]}],
       "egressDeny": [{"toCIDRSet": [{"cidr": "fd00::/8"}]}],
       "labels": ["k8s:io.cilium.k8s.policy.name=x", {"key": "n", "value": "v"}],
       "description": "every field",
       "enableDefaultDeny": {"ingress": true, "egress": false}}
    ]"#;
    let rule = parse_rules_str(text).unwrap().remove(0);
    let json = serde_json::to_value(&rule).unwrap();
    assert_eq!(parse_rule_value(&json).unwrap(), rule);
    let printed = serde_json::to_string(&vec![&rule]).unwrap();
    assert_eq!(parse_rules_str(&printed).unwrap(), vec![rule.clone()]);
    // The normalized form, as `policy get` prints it.
    assert_eq!(json["ingress"][0]["toPorts"][0]["ports"][0], serde_json::json!({"port": "80", "protocol": "TCP"}));
    assert_eq!(
        json["ingress"][0]["toPorts"][0]["ports"][1],
        serde_json::json!({"port": "8000", "endPort": 8080, "protocol": "ANY"})
    );
    assert_eq!(json["ingress"][2]["fromCIDR"][0], "10.1.2.3/32");
    assert_eq!(json["ingress"][3]["icmps"][0]["fields"][0], serde_json::json!({"family": "IPv6", "type": 128}));
    assert_eq!(json["egress"][0]["toEntities"], serde_json::json!(["host", "init", "all", "world-ipv4"]));
    assert_eq!(
        json["labels"][0],
        serde_json::json!({"key": "io.cilium.k8s.policy.name", "value": "x", "source": "k8s"})
    );
    assert_eq!(json["ingress"][4], serde_json::json!({}));
    // Minimal rules stay minimal.
    let minimal = parse_rules_str(OK).unwrap().remove(0);
    assert_eq!(serde_json::to_value(&minimal).unwrap(), serde_json::json!({"endpointSelector": {}}));
}

#[test]
fn cidrs_referenced() {
    let rule = parse_rules_str(
        r#"{"endpointSelector": {}, "egress": [{"toCIDR": ["20.1.1.1"], "toEntities": ["world-ipv4", "world-ipv6"],
            "toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}]}]}"#,
    )
    .unwrap()
    .remove(0);
    let cidrs: Vec<String> = rule.cidrs().iter().map(ToString::to_string).collect();
    assert_eq!(cidrs, ["0.0.0.0/0", "10.0.0.0/8", "10.96.0.0/12", "20.1.1.1/32", "::/0"]);
}

#[test]
fn hostile_strings_are_quoted_and_bounded() {
    let key = format!("evil\n{}", "k".repeat(200));
    let text = format!(r#"[{{"endpointSelector": {{}}, "{}": 1}}]"#, key.replace('\n', "\\n"));
    let shown = refused(&text).to_string();
    assert!(!shown.contains('\n') && shown.len() < 300, "{shown}");
}
