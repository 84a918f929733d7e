//! Label-based policy: Cilium's rule JSON/YAML parsed and validated (`file`, `rule`), selectors
//! matched against label sets (`selector`), rules × identities resolved into the entries of the
//! policy map (`resolve`, with port ranges as prefix blocks in `ports` and the labels of CIDR
//! identities in `cidr`), and the datapath's lookup emulated to explain a verdict (`trace`).
//! No I/O.
//!
//! The policy map is an LPM trie. Its key, in order of significance, is
//! `local identity (32) · remote identity (32) · direction (8) · protocol (8) · port (16)`;
//! a key matches the first `72 + 8 + port_prefix` bits, or only the first 72 when the protocol
//! is "any". The datapath decides a new flow at one endpoint like this (see [`trace::lookup`]):
//!
//! 1. `e1` = longest match of `(local, remote, dir, proto, port)`,
//!    `e2` = longest match of `(local, ANY, dir, proto, port)`;
//! 2. a deny in `e1` or `e2` → denied (by that rule);
//! 3. else an allow in either → allowed;
//! 4. else denied (default deny).

pub mod cidr;
pub mod file;
pub mod ports;
pub mod resolve;
pub mod rule;
pub mod selector;
pub mod trace;
mod walk;

#[cfg(test)]
mod examples;
#[cfg(test)]
mod testkit;

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::labels::Labels;

pub use cidr::{cidr_identity_labels, cidr_labels};
pub use file::{parse_rule_value, parse_rules, parse_rules_str, PolicyError};
pub use resolve::{ResolveError, Resolver};
pub use rule::{Entity, Protocol, Rule, Section};
pub use selector::Selector;
pub use trace::{lookup, trace, Decision, Trace};
pub use walk::MAX_STRING;

/// Which way a packet crosses the endpoint, seen from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards the endpoint (`ingress`, `ingressDeny`).
    Ingress,
    /// From the endpoint (`egress`, `egressDeny`).
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// IP protocol numbers used in policy keys; 0 means any protocol.
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// Number of a rule in the live rule set (stable while it is loaded); 0 = no rule (the
/// allow-all of an endpoint no rule selects).
pub type RuleId = u64;

/// One key of the policy map.
///
/// `proto == PROTO_ANY` means any protocol and port (then `port` and `port_prefix` are 0).
/// Otherwise the first `port_prefix` bits (0..=16, most significant first) of `port` must
/// match: 16 = exactly `port`, 0 = any port. For ICMP/ICMPv6 `port` is the ICMP type (with
/// prefix 16, or 0 for every type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyKey {
    pub local: Identity,
    /// `Identity::ANY` = every remote identity.
    pub remote: Identity,
    pub direction: Direction,
    pub proto: u8,
    pub port: u16,
    pub port_prefix: u8,
}

/// What a key decides, and the rule that put it there (the lowest contributing rule id of the
/// winning kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    pub deny: bool,
    pub rule: RuleId,
}

/// What an identity stands for, as resolution sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityInfo {
    pub labels: Labels,
    /// Set for CIDR identities: the prefix whose addresses carry this identity.
    pub cidr: Option<IpNet>,
}

/// `--enable-policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnforcementMode {
    /// An endpoint is default-deny in a direction once a rule selects it for that direction.
    #[default]
    Default,
    /// Every endpoint is default-deny in both directions.
    Always,
    /// No enforcement: everything is allowed, deny rules included.
    Never,
}
