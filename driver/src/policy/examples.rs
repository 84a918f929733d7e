//! Cilium's documented example policies (`examples/policies` of the Cilium repository and the
//! policy language docs): each parses and resolves to the documented behaviour, checked
//! through the datapath lookup.

use super::testkit::{build, cidr_identity, flow, ip_identity};
use super::trace::{lookup, Decision};
use super::{Direction, EnforcementMode, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use crate::identity::Identity;

const FRONTEND: Identity = Identity(300);
const BACKEND: Identity = Identity(301);
const OTHER: Identity = Identity(302);
const ENDPOINTS: [(u32, &str); 3] = [(300, "role=frontend"), (301, "role=backend"), (302, "role=other")];

#[test]
fn l3_label_based_ingress() {
    let r = build(
        EnforcementMode::Default,
        r#"[{"endpointSelector": {"matchLabels": {"role":"backend"}},
             "ingress": [{"fromEndpoints": [{"matchLabels":{"role":"frontend"}}]}]}]"#,
        &ENDPOINTS,
        &[],
    );
    assert!(flow(&r, FRONTEND, BACKEND, PROTO_TCP, 80));
    assert!(flow(&r, FRONTEND, BACKEND, PROTO_UDP, 53));
    assert!(!flow(&r, OTHER, BACKEND, PROTO_TCP, 80));
    assert!(!flow(&r, Identity::WORLD, BACKEND, PROTO_TCP, 80));
    assert!(!flow(&r, Identity::HOST, BACKEND, PROTO_TCP, 80));
    assert!(flow(&r, BACKEND, OTHER, PROTO_TCP, 80), "backend's egress is not restricted");
    assert!(flow(&r, OTHER, FRONTEND, PROTO_TCP, 80));
}

#[test]
fn l3_label_based_egress() {
    let r = build(
        EnforcementMode::Default,
        r#"[{"labels": [{"key": "name", "value": "l3-egress-rule"}],
             "endpointSelector": {"matchLabels": {"role":"frontend"}},
             "egress": [{"toEndpoints": [{"matchLabels":{"role":"backend"}}]}]}]"#,
        &ENDPOINTS,
        &[],
    );
    assert!(flow(&r, FRONTEND, BACKEND, PROTO_TCP, 80));
    assert!(!flow(&r, FRONTEND, OTHER, PROTO_TCP, 80));
    assert!(!flow(&r, FRONTEND, Identity::WORLD, PROTO_TCP, 443));
    assert!(flow(&r, OTHER, FRONTEND, PROTO_TCP, 80), "frontend's ingress is not restricted");
}

#[test]
fn ingress_and_egress_allow_all_endpoints() {
    let r = build(
        EnforcementMode::Default,
        r#"[{"endpointSelector": {"matchLabels": {"role":"backend"}},
             "ingress": [{"fromEndpoints": [{"matchLabels":{}}]}]},
            {"endpointSelector": {"matchLabels": {"role":"frontend"}},
             "egress": [{"toEndpoints": [{"matchLabels":{}}]}]}]"#,
        &ENDPOINTS,
        &[],
    );
    assert!(flow(&r, OTHER, BACKEND, PROTO_TCP, 1));
    assert!(flow(&r, FRONTEND, BACKEND, PROTO_UDP, 9));
    assert!(!flow(&r, Identity::WORLD, BACKEND, PROTO_TCP, 80), "{{}} selects endpoints, not the world");
    assert!(!flow(&r, Identity::INIT, BACKEND, PROTO_TCP, 80), "{{}} never selects init");
    assert!(flow(&r, FRONTEND, OTHER, PROTO_TCP, 80));
    assert!(!flow(&r, FRONTEND, Identity::WORLD, PROTO_TCP, 80));
}

#[test]
fn egress_default_deny() {
    let r = build(
        EnforcementMode::Default,
        r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "deny-all-egress"
spec:
  endpointSelector:
    matchLabels:
      role: restricted
  egress:
  - {}
"#,
        &[(300, "role=restricted"), (301, "role=other")],
        &[],
    );
    assert!(!flow(&r, Identity(300), Identity(301), PROTO_TCP, 80));
    assert!(!flow(&r, Identity(300), Identity::WORLD, PROTO_UDP, 53));
    assert!(flow(&r, Identity(301), Identity(300), PROTO_TCP, 80), "ingress stays open");
}

#[test]
fn entities_host_and_world() {
    let r = build(
        EnforcementMode::Default,
        r#"[{"endpointSelector": {"matchLabels": {"env":"dev"}}, "egress": [{"toEntities": ["host"]}]},
            {"endpointSelector": {"matchLabels": {"role":"public"}}, "ingress": [{"fromEntities": ["world"]}]}]"#,
        &[(300, "env=dev"), (301, "role=public")],
        &["198.51.100.0/24"],
    );
    assert!(flow(&r, Identity(300), Identity::HOST, PROTO_TCP, 22));
    assert!(!flow(&r, Identity(300), Identity(301), PROTO_TCP, 80));
    assert!(!flow(&r, Identity(300), Identity::WORLD, PROTO_TCP, 80));
    assert!(flow(&r, Identity::WORLD, Identity(301), PROTO_TCP, 80));
    assert!(flow(&r, ip_identity(&r, "198.51.100.7"), Identity(301), PROTO_TCP, 80), "CIDR identities are world");
    assert!(!flow(&r, Identity::HOST, Identity(301), PROTO_TCP, 80));
}

#[test]
fn external_lockdown_deny_world() {
    let r = build(
        EnforcementMode::Default,
        r#"apiVersion: "cilium.io/v2"
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: "external-lockdown"
spec:
  endpointSelector: {}
  ingressDeny:
  - fromEntities:
    - "world"
  ingress:
  - fromEntities:
    - "all"
"#,
        &ENDPOINTS,
        &["203.0.113.0/24"],
    );
    let entries = r.entries();
    assert_eq!(lookup(entries, BACKEND, Identity::WORLD, Direction::Ingress, PROTO_TCP, 80), Decision::DeniedBy(1));
    let cidr = ip_identity(&r, "203.0.113.9");
    assert_eq!(lookup(entries, BACKEND, cidr, Direction::Ingress, PROTO_TCP, 80), Decision::DeniedBy(1));
    assert!(flow(&r, FRONTEND, BACKEND, PROTO_TCP, 80));
    assert!(flow(&r, Identity::HOST, BACKEND, PROTO_TCP, 80));
    assert!(flow(&r, BACKEND, Identity::WORLD, PROTO_TCP, 443), "egress is not restricted");
}

#[test]
fn match_expressions_or_and_and() {
    let or = r#"[{"labels": [{"key": "name", "value": "or-statement-policy"}], "endpointSelector": {},
      "ingress": [{"fromEndpoints": [
        {"matchExpressions": [{"key": "k8s.io.kubernetes.pod.namespace", "operator": "In", "values": ["production"]}]},
        {"matchExpressions": [{"key": "k8s:cilium.example.com/policy", "operator": "In", "values": ["strict"]}]}]}]}]"#;
    let and = r#"[{"labels": [{"key": "name", "value": "and-statement-policy"}], "endpointSelector": {},
      "ingress": [{"fromEndpoints": [
        {"matchExpressions": [{"key": "k8s.io.kubernetes.pod.namespace", "operator": "In", "values": ["production"]},
                              {"key": "k8s:cilium.example.com/policy", "operator": "In", "values": ["strict"]}]}]}]}]"#;
    let endpoints = [
        (300, "k8s.io.kubernetes.pod.namespace=production"),
        (301, "k8s:cilium.example.com/policy=strict"),
        (302, "k8s.io.kubernetes.pod.namespace=production k8s:cilium.example.com/policy=strict"),
        (303, "container:cilium.example.com/policy=strict"),
        (304, "app=target"),
    ];
    let r = build(EnforcementMode::Default, or, &endpoints, &[]);
    let target = Identity(304);
    assert!(flow(&r, Identity(300), target, PROTO_TCP, 80));
    assert!(flow(&r, Identity(301), target, PROTO_TCP, 80));
    assert!(flow(&r, Identity(302), target, PROTO_TCP, 80));
    assert!(!flow(&r, Identity(303), target, PROTO_TCP, 80), "a k8s: key needs a k8s label");
    let r = build(EnforcementMode::Default, and, &endpoints, &[]);
    assert!(!flow(&r, Identity(300), target, PROTO_TCP, 80));
    assert!(!flow(&r, Identity(301), target, PROTO_TCP, 80));
    assert!(flow(&r, Identity(302), target, PROTO_TCP, 80));
}

#[test]
fn egress_deny_beats_allow_all() {
    let r = build(
        EnforcementMode::Default,
        r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "deny-egress-example"
spec:
  endpointSelector:
    matchLabels:
      role: frontend
  egress:
  - toEntities:
    - all
  egressDeny:
  - toEndpoints:
    - matchLabels:
        role: backend
"#,
        &ENDPOINTS,
        &[],
    );
    assert_eq!(lookup(r.entries(), FRONTEND, BACKEND, Direction::Egress, PROTO_TCP, 80), Decision::DeniedBy(1));
    assert!(flow(&r, FRONTEND, OTHER, PROTO_TCP, 80));
    assert!(flow(&r, FRONTEND, Identity::WORLD, PROTO_TCP, 443));
}

#[test]
fn cidr_with_except() {
    let r = build(
        EnforcementMode::Default,
        r#"[{"endpointSelector": {"matchLabels":{"app":"myService"}},
             "egress": [{"toCIDR": ["20.1.1.1/32"],
                         "toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}]}]}]"#,
        &[(300, "app=myService")],
        &[],
    );
    let svc = Identity(300);
    assert!(flow(&r, svc, ip_identity(&r, "20.1.1.1"), PROTO_TCP, 443));
    assert!(!flow(&r, svc, ip_identity(&r, "20.1.1.2"), PROTO_TCP, 443));
    assert!(flow(&r, svc, ip_identity(&r, "10.1.2.3"), PROTO_UDP, 53));
    assert!(!flow(&r, svc, ip_identity(&r, "10.97.0.1"), PROTO_TCP, 443), "inside the exception");
    assert!(flow(&r, svc, ip_identity(&r, "10.112.0.1"), PROTO_TCP, 443), "past the exception");
    assert!(!flow(&r, svc, Identity::WORLD, PROTO_TCP, 443));
    assert_eq!(ip_identity(&r, "10.97.0.1"), cidr_identity(&r, "10.96.0.0/12"));
}

#[test]
fn l4_examples() {
    let r = build(
        EnforcementMode::Default,
        r#"[{"labels": [{"key": "name", "value": "l4-rule"}], "endpointSelector": {"matchLabels":{"app":"myService"}},
             "egress": [{"toPorts": [{"ports":[{"port": "80", "protocol": "TCP"}]}]}]},
            {"endpointSelector": {"matchLabels":{"role":"backend"}},
             "ingress": [{"fromEndpoints": [{"matchLabels":{"role":"frontend"}}],
                          "toPorts": [{"ports":[{"port": "80", "protocol": "TCP"}]}]}]}]"#,
        &[(300, "app=myService"), (301, "role=backend"), (302, "role=frontend")],
        &[],
    );
    let svc = Identity(300);
    assert!(flow(&r, svc, Identity::WORLD, PROTO_TCP, 80));
    assert!(!flow(&r, svc, Identity::WORLD, PROTO_TCP, 443));
    assert!(!flow(&r, svc, Identity::WORLD, PROTO_UDP, 80));
    assert!(flow(&r, Identity(302), Identity(301), PROTO_TCP, 80));
    assert!(!flow(&r, Identity(302), Identity(301), PROTO_TCP, 81));
    assert!(!flow(&r, Identity(302), Identity(301), PROTO_UDP, 80));
    assert!(!flow(&r, svc, Identity(301), PROTO_TCP, 80), "only frontend may reach backend");
}

#[test]
fn l4_port_range() {
    let r = build(
        EnforcementMode::Default,
        r#"[{"labels": [{"key": "name", "value": "l4-rule"}], "endpointSelector": {"matchLabels":{"app":"myService"}},
             "egress": [{"toPorts": [{"ports":[{"port": "80", "endPort": 444, "protocol": "TCP"}]}]}]}]"#,
        &[(300, "app=myService")],
        &[],
    );
    for port in [80, 81, 200, 443, 444] {
        assert!(flow(&r, Identity(300), Identity::WORLD, PROTO_TCP, port), "{port}");
    }
    for port in [79, 445, 8080] {
        assert!(!flow(&r, Identity(300), Identity::WORLD, PROTO_TCP, port), "{port}");
    }
    assert!(!flow(&r, Identity(300), Identity::WORLD, PROTO_UDP, 100));
}

#[test]
fn multi_rule_l3_or_l4() {
    let r = build(
        EnforcementMode::Default,
        r#"[{"endpointSelector": {"matchLabels":{"role":"backend"}},
             "ingress": [{"fromEndpoints": [{"matchLabels":{"role":"frontend"}}]},
                         {"toPorts": [{"ports":[{"port": "80", "protocol": "TCP"}]}]}]}]"#,
        &ENDPOINTS,
        &[],
    );
    assert!(flow(&r, FRONTEND, BACKEND, PROTO_TCP, 9999));
    assert!(flow(&r, OTHER, BACKEND, PROTO_TCP, 80));
    assert!(flow(&r, Identity::WORLD, BACKEND, PROTO_TCP, 80));
    assert!(!flow(&r, OTHER, BACKEND, PROTO_TCP, 81));
}

#[test]
fn cidr_and_l4_combined() {
    let r = build(
        EnforcementMode::Default,
        r#"[{"labels": [{"key": "name", "value": "cidr-l4-rule"}],
             "endpointSelector": {"matchLabels":{"role":"crawler"}},
             "egress": [{"toCIDR": ["192.0.2.0/24"], "toPorts": [{"ports":[{"port": "80", "protocol": "TCP"}]}]}]}]"#,
        &[(300, "role=crawler")],
        &[],
    );
    assert!(flow(&r, Identity(300), ip_identity(&r, "192.0.2.10"), PROTO_TCP, 80));
    assert!(!flow(&r, Identity(300), ip_identity(&r, "192.0.2.10"), PROTO_TCP, 443));
    assert!(!flow(&r, Identity(300), ip_identity(&r, "198.51.100.1"), PROTO_TCP, 80));
}

#[test]
fn init_identity_policies() {
    let r = build(
        EnforcementMode::Default,
        r#"[{"labels": [{"key": "name", "value": "init"}], "endpointSelector": {"matchLabels":{"reserved:init":""}},
             "ingress": [{"fromEntities": ["host"]}],
             "egress": [{"toEntities": ["all"], "toPorts": [{"ports":[{"port": "53", "protocol": "UDP"}]}]}]},
            {"labels": [{"key": "name", "value": "from-init"}], "endpointSelector": {"matchLabels":{"app":"myService"}},
             "ingress": [{"fromEntities": ["init"], "toPorts": [{"ports":[{"port": "53", "protocol": "UDP"}]}]}]}]"#,
        &[(300, "app=myService"), (301, "app=other")],
        &[],
    );
    let init = Identity::INIT;
    assert!(flow(&r, Identity::HOST, init, PROTO_TCP, 8080));
    assert!(!flow(&r, Identity(301), init, PROTO_TCP, 8080));
    assert!(flow(&r, init, Identity::WORLD, PROTO_UDP, 53));
    assert!(!flow(&r, init, Identity::WORLD, PROTO_TCP, 80));
    assert!(flow(&r, init, Identity(300), PROTO_UDP, 53));
    let ingress = |src, proto, port| lookup(r.entries(), Identity(300), src, Direction::Ingress, proto, port);
    assert_eq!(ingress(init, PROTO_UDP, 53), Decision::AllowedBy(2));
    assert_eq!(ingress(init, PROTO_TCP, 53), Decision::DefaultDeny);
    assert_eq!(ingress(Identity(301), PROTO_UDP, 53), Decision::DefaultDeny);
}

#[test]
fn init_is_default_deny_once_rules_exist() {
    let r = build(
        EnforcementMode::Default,
        r#"[{"endpointSelector": {"matchLabels":{"app":"x"}}, "ingress": [{}]}]"#,
        &[(300, "app=y")],
        &[],
    );
    assert_eq!(r.enforced(Identity::INIT), (true, true));
    assert!(!flow(&r, Identity::INIT, Identity(300), PROTO_TCP, 80));
    assert!(!flow(&r, Identity(300), Identity::INIT, PROTO_TCP, 80));
    let r = build(EnforcementMode::Default, "[]", &[(300, "app=y")], &[]);
    assert_eq!(r.enforced(Identity::INIT), (false, false));
    assert!(flow(&r, Identity::INIT, Identity(300), PROTO_TCP, 80));
}

#[test]
fn icmp_types() {
    let r = build(
        EnforcementMode::Default,
        r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "icmp-rule"
spec:
  endpointSelector:
    matchLabels:
      app: myService
  egress:
  - icmps:
    - fields:
      - type: 8
        family: IPv4
      - type: EchoRequest
        family: IPv6
"#,
        &[(300, "app=myService")],
        &[],
    );
    let svc = Identity(300);
    assert!(flow(&r, svc, Identity::WORLD, PROTO_ICMP, 8));
    assert!(flow(&r, svc, Identity::WORLD, PROTO_ICMPV6, 128));
    assert!(!flow(&r, svc, Identity::WORLD, PROTO_ICMP, 0));
    assert!(!flow(&r, svc, Identity::WORLD, PROTO_ICMPV6, 8));
    assert!(!flow(&r, svc, Identity::WORLD, PROTO_TCP, 80));
}

/// The deny documentation's table: allows on 80/TCP, 81/TCP and L3 from the client, with a
/// deny on 80/TCP (second column) or on 80/TCP plus L3 from the client (fourth column).
#[test]
fn deny_table() {
    let allows = r#"{"endpointSelector": {"matchLabels": {"app": "server"}},
        "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]},
                    {"toPorts": [{"ports": [{"port": "81", "protocol": "TCP"}]}]},
                    {"fromEndpoints": [{"matchLabels": {"app": "client"}}]}]}"#;
    let deny_l4 = r#"{"endpointSelector": {"matchLabels": {"app": "server"}},
        "ingressDeny": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}"#;
    let deny_l3 = r#"{"endpointSelector": {"matchLabels": {"app": "server"}},
        "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}]}"#;
    let endpoints = [(300, "app=client"), (301, "app=server")];
    let (client, server) = (Identity(300), Identity(301));
    let r = build(EnforcementMode::Default, &format!("[{allows}, {deny_l4}]"), &endpoints, &[]);
    assert!(flow(&r, client, server, PROTO_TCP, 81));
    assert!(!flow(&r, client, server, PROTO_TCP, 80));
    assert!(flow(&r, client, server, PROTO_ICMP, 8));
    let r = build(EnforcementMode::Default, &format!("[{allows}, {deny_l4}, {deny_l3}]"), &endpoints, &[]);
    assert!(!flow(&r, client, server, PROTO_TCP, 81));
    assert!(!flow(&r, client, server, PROTO_TCP, 80));
    assert!(!flow(&r, client, server, PROTO_ICMP, 8));
}

#[test]
fn unsupported_examples_are_refused() {
    for text in [
        r#"[{"endpointSelector": {"matchLabels": {"env":"prod"}}, "ingress": [{"fromRequires": [{"matchLabels":{"env":"prod"}}]}]}]"#,
        r#"[{"endpointSelector": {"matchLabels": {"app":"test-app"}},
             "egress": [{"toEndpoints": [{"matchLabels": {"app-type": "dns"}}]}, {"toFQDNs": [{"matchName": "my-remote-service.com"}]}]}]"#,
        r#"[{"endpointSelector": {"matchLabels": {"id": "app2"}},
             "egress": [{"toServices": [{"k8sService": {"serviceName": "myservice", "namespace": "default"}}]}]}]"#,
        r#"[{"endpointSelector": {"matchLabels": {"app": "service"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"env": "prod"}}]},
                         {"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"HTTP": [{"method": "GET", "path": "/public"}]}}]}]}]"#,
    ] {
        let err = super::parse_rules_str(text).unwrap_err().to_string();
        assert!(err.contains("is not supported"), "{err}");
    }
}
