//! Resolution: rules × identities → the complete desired content of the policy map, kept
//! up to date incrementally as rules, identities and the enforcement mode change.
//!
//! Every (rule, section, local identity, peer, port block) contributes to one key of the map;
//! contributions are counted per key, grouped by `(local, remote, direction)`. A change touches
//! only the keys it contributes to; those keys are merged again (deny if any contribution
//! denies; the lowest rule id of the winning kind) and an allow that a deny of its own group
//! fully covers is left out, because the datapath's longest-prefix match would otherwise pick
//! the longer allow. Precedence across groups (a deny for remote `ANY` against an allow for a
//! specific remote) is the datapath's job: it looks up both and lets a deny win.
//!
//! Local identities (those that get entries) are endpoint identities and `init`. An endpoint
//! that no rule enforces in a direction gets an allow-all entry for it (rule 0).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use thiserror::Error;

use super::ports::{block_range, mask, range_blocks};
use super::rule::{Entity, Protocol, Rule, Section};
use super::selector::Selector;
use super::{
    Direction, EnforcementMode, IdentityInfo, PolicyEntry, PolicyKey, RuleId, PROTO_ANY, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP,
};
use crate::identity::Identity;
use crate::labels::Labels;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResolveError {
    #[error("rule id 0 is reserved for entries no rule put there")]
    ZeroRuleId,
    #[error("rule id {0} is given twice")]
    DuplicateRuleId(RuleId),
}

/// Protocol, port, port prefix: the part of a key below `(local, remote, direction)`.
type L4 = (u8, u16, u8);
/// Any protocol, any port.
const L4_ANY: L4 = (PROTO_ANY, 0, 0);
/// `(local, remote, direction)`.
type Group = (Identity, Identity, Direction);

const DIRECTIONS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

fn slot(direction: Direction) -> usize {
    match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// Whether an identity gets entries of its own (when it is in the universe).
pub fn is_local(identity: Identity) -> bool {
    identity.is_endpoint() || identity == Identity::INIT
}

fn key(group: Group, l4: L4) -> PolicyKey {
    let (local, remote, direction) = group;
    let (proto, port, port_prefix) = l4;
    PolicyKey { local, remote, direction, proto, port, port_prefix }
}

/// Who a section's peers are.
#[derive(Debug, Clone)]
enum Peers {
    /// No L3 field: every peer, i.e. the remote identity `ANY`.
    Any,
    Listed(PeerSpec),
}

#[derive(Debug, Clone, Default)]
struct PeerSpec {
    selectors: Vec<Selector>,
    host: bool,
    world: bool,
    all: bool,
    init: bool,
    cluster: bool,
    world_ipv4: bool,
    world_ipv6: bool,
    /// CIDRs with their exceptions (`fromCIDR` entries have none).
    cidrs: Vec<(IpNet, Vec<IpNet>)>,
}

impl PeerSpec {
    fn new(section: &Section) -> PeerSpec {
        let mut spec = PeerSpec { selectors: section.endpoints.clone(), ..PeerSpec::default() };
        for entity in &section.entities {
            match entity {
                Entity::Host => spec.host = true,
                Entity::World => spec.world = true,
                Entity::All => spec.all = true,
                Entity::Init => spec.init = true,
                Entity::Cluster => spec.cluster = true,
                Entity::WorldIpv4 => spec.world_ipv4 = true,
                Entity::WorldIpv6 => spec.world_ipv6 = true,
            }
        }
        spec.cidrs.extend(section.cidr.iter().map(|c| (*c, Vec::new())));
        spec.cidrs.extend(section.cidr_set.iter().map(|s| (s.cidr, s.except.clone())));
        spec
    }

    /// Peers that do not depend on the identity universe.
    fn fixed(&self, id: Identity) -> bool {
        (self.all && id == Identity::ANY)
            || ((self.host || self.cluster) && id == Identity::HOST)
            || (self.world && id == Identity::WORLD)
            || ((self.init || self.cluster) && id == Identity::INIT)
    }

    /// Peers found by looking at an identity of the universe.
    fn universe(&self, id: Identity, info: &IdentityInfo) -> bool {
        if self.cluster && id.is_endpoint() {
            return true;
        }
        if let (true, Some(net)) = (id.is_cidr(), info.cidr) {
            let inside =
                |(cidr, except): &(IpNet, Vec<IpNet>)| cidr.contains(&net) && !except.iter().any(|e| e.contains(&net));
            if self.world
                || (self.world_ipv4 && matches!(net, IpNet::V4(_)))
                || (self.world_ipv6 && matches!(net, IpNet::V6(_)))
                || self.cidrs.iter().any(inside)
            {
                return true;
            }
        }
        self.selectors.iter().any(|s| s.selects(id, &info.labels))
    }
}

/// Whether `id` (with `info` when it is in the universe) is a peer of a section.
fn is_peer(peers: &Peers, id: Identity, info: Option<&IdentityInfo>) -> bool {
    match peers {
        Peers::Any => id == Identity::ANY,
        Peers::Listed(spec) => spec.fixed(id) || info.is_some_and(|info| spec.universe(id, info)),
    }
}

/// The identities that are peers whatever the universe holds.
const FIXED_PEERS: [Identity; 4] = [Identity::ANY, Identity::HOST, Identity::WORLD, Identity::INIT];

/// A section prepared for resolution.
#[derive(Debug, Clone)]
struct Compiled {
    direction: Direction,
    deny: bool,
    peers: Peers,
    l4: Vec<L4>,
    /// The current peers: fixed ones and those of the universe.
    members: BTreeSet<Identity>,
}

/// The port blocks a section allows or denies.
fn l4_of(section: &Section) -> Vec<L4> {
    if !section.has_ports() {
        return vec![L4_ANY];
    }
    let mut out = BTreeSet::new();
    for port in section.to_ports.iter().flat_map(|r| &r.ports) {
        let protos: &[u8] = match port.protocol {
            Protocol::Any if port.port == 0 => {
                out.insert(L4_ANY);
                continue;
            }
            Protocol::Icmp | Protocol::Icmpv6 => {
                out.insert((port.protocol.number(), 0, 0));
                continue;
            }
            Protocol::Any => &[PROTO_TCP, PROTO_UDP, PROTO_SCTP],
            Protocol::Tcp | Protocol::Udp | Protocol::Sctp => &[port.protocol.number()],
        };
        for &proto in protos {
            if port.port == 0 {
                out.insert((proto, 0, 0));
            } else {
                let last = port.end_port.unwrap_or(port.port);
                out.extend(range_blocks(port.port, last).into_iter().map(|(p, prefix)| (proto, p, prefix)));
            }
        }
    }
    for field in section.icmps.iter().flat_map(|r| &r.fields) {
        out.insert((field.family.protocol(), u16::from(field.icmp_type), 16));
    }
    out.into_iter().collect()
}

/// A loaded rule and what resolution keeps about it.
#[derive(Debug, Clone)]
struct RuleState {
    rule: Rule,
    enforces: [bool; 2],
    sections: Vec<Compiled>,
    /// The local identities of the universe its endpoint selector selects.
    selects: BTreeSet<Identity>,
    cidrs: BTreeSet<IpNet>,
}

impl RuleState {
    fn new(rule: Rule) -> RuleState {
        let mut sections = Vec::new();
        for direction in DIRECTIONS {
            for (deny, section) in rule.sections(direction) {
                // `{}` only enforces.
                if !section.has_peers() && !section.has_ports() {
                    continue;
                }
                let peers = if section.has_peers() { Peers::Listed(PeerSpec::new(section)) } else { Peers::Any };
                sections.push(Compiled { direction, deny, peers, l4: l4_of(section), members: BTreeSet::new() });
            }
        }
        RuleState {
            enforces: DIRECTIONS.map(|d| rule.enforces(d)),
            cidrs: rule.cidrs(),
            rule,
            sections,
            selects: BTreeSet::new(),
        }
    }
}

/// The contributions to one key: rule ids with counts, sorted by rule id. Counts may dip below
/// zero while a batch of changes is applied in any order; between batches they are positive.
#[derive(Debug, Clone, Default)]
struct Contrib {
    allow: Vec<(RuleId, i32)>,
    deny: Vec<(RuleId, i32)>,
}

impl Contrib {
    fn change(&mut self, deny: bool, rule: RuleId, add: bool) {
        let list = if deny { &mut self.deny } else { &mut self.allow };
        let delta = if add { 1 } else { -1 };
        match list.binary_search_by_key(&rule, |(r, _)| *r) {
            Ok(i) => {
                list[i].1 += delta;
                if list[i].1 == 0 {
                    list.remove(i);
                }
            }
            Err(i) => list.insert(i, (rule, delta)),
        }
    }

    fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    fn merged(&self) -> Option<PolicyEntry> {
        let first = |list: &[(RuleId, i32)]| list.iter().find(|(_, n)| *n > 0).map(|(rule, _)| *rule);
        match (first(&self.deny), first(&self.allow)) {
            (Some(rule), _) => Some(PolicyEntry { deny: true, rule }),
            (None, Some(rule)) => Some(PolicyEntry { deny: false, rule }),
            (None, None) => None,
        }
    }
}

/// Whether a deny among `denies` (keys of one group) fully covers the allow at `l4`.
fn covered_by_deny(denies: &BTreeSet<L4>, l4: L4) -> bool {
    if denies.is_empty() {
        return false;
    }
    if denies.contains(&L4_ANY) {
        return true;
    }
    let (proto, port, prefix) = l4;
    proto != PROTO_ANY && (0..prefix).any(|p| denies.contains(&(proto, port & mask(p), p)))
}

/// Merges a group's contributions into the entries the map should hold for it.
fn materialize(keys: &BTreeMap<L4, Contrib>) -> BTreeMap<L4, PolicyEntry> {
    let merged: BTreeMap<L4, PolicyEntry> = keys.iter().filter_map(|(k, c)| c.merged().map(|e| (*k, e))).collect();
    let denies: BTreeSet<L4> = merged.iter().filter(|(_, e)| e.deny).map(|(k, _)| *k).collect();
    merged.into_iter().filter(|(k, e)| e.deny || !covered_by_deny(&denies, *k)).collect()
}

#[derive(Debug, Clone, Default)]
struct GroupState {
    keys: BTreeMap<L4, Contrib>,
    /// The keys whose merged entry is a deny.
    denies: BTreeSet<L4>,
}

/// One pending change of one contribution.
#[derive(Debug, Clone, Copy)]
struct Change {
    group: Group,
    l4: L4,
    deny: bool,
    rule: RuleId,
    add: bool,
}

/// Contributions and the map they produce, with the changes not yet applied.
#[derive(Debug, Clone, Default)]
struct Table {
    groups: BTreeMap<Group, GroupState>,
    entries: BTreeMap<PolicyKey, PolicyEntry>,
    /// Applied by `flush`, group by group and key by key.
    pending: Vec<Change>,
}

impl Table {
    fn change(&mut self, group: Group, l4: L4, deny: bool, rule: RuleId, add: bool) {
        self.pending.push(Change { group, l4, deny, rule, add });
    }

    /// Adds or removes what one section contributes for one local identity and one peer.
    fn section(&mut self, local: Identity, remote: Identity, section: &Compiled, rule: RuleId, add: bool) {
        let group = (local, remote, section.direction);
        self.pending.extend(section.l4.iter().map(|&l4| Change { group, l4, deny: section.deny, rule, add }));
    }

    /// Forgets everything of a local identity that left the universe.
    fn drop_local(&mut self, local: Identity) {
        self.pending.retain(|c| c.group.0 != local);
        let first = (local, Identity(0), Direction::Ingress);
        let last = (local, Identity(u32::MAX), Direction::Egress);
        let groups: Vec<Group> = self.groups.range(first..=last).map(|(g, _)| *g).collect();
        for group in groups {
            self.groups.remove(&group);
        }
        let first = key(first, (0, 0, 0));
        let last = key(last, (u8::MAX, u16::MAX, u8::MAX));
        let keys: Vec<PolicyKey> = self.entries.range(first..=last).map(|(k, _)| *k).collect();
        for k in keys {
            self.entries.remove(&k);
        }
    }

    fn clear(&mut self) {
        *self = Table::default();
    }

    /// Applies the pending changes and brings `entries` up to date, group by group.
    fn flush(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_unstable_by_key(|c| (c.group, c.l4));
        let mut writes: Vec<(L4, Option<PolicyEntry>)> = Vec::new();
        let mut cascade: Vec<L4> = Vec::new();
        for changes in pending.chunk_by(|a, b| a.group == b.group) {
            let group = changes[0].group;
            let state = self.groups.entry(group).or_default();
            writes.clear();
            cascade.clear();
            for same_key in changes.chunk_by(|a, b| a.l4 == b.l4) {
                let l4 = same_key[0].l4;
                let contrib = state.keys.entry(l4).or_default();
                for c in same_key {
                    contrib.change(c.deny, c.rule, c.add);
                }
                let merged = contrib.merged();
                if contrib.is_empty() {
                    state.keys.remove(&l4);
                }
                let is_deny = merged.is_some_and(|e| e.deny);
                if is_deny != state.denies.contains(&l4) {
                    if is_deny {
                        state.denies.insert(l4);
                    } else {
                        state.denies.remove(&l4);
                    }
                    // The allows this deny covers (or covered) may appear or disappear.
                    let (proto, port, prefix) = l4;
                    if proto == PROTO_ANY {
                        cascade.extend(state.keys.keys());
                    } else {
                        let (lo, hi) = block_range(port, prefix);
                        let inside = state.keys.range((proto, lo, 0)..=(proto, hi, u8::MAX)).map(|(k, _)| *k);
                        cascade.extend(inside.filter(|k| k.2 >= prefix));
                    }
                }
                writes.push((l4, merged));
            }
            cascade.sort_unstable();
            cascade.dedup();
            let rechecked = cascade.iter().map(|l4| (*l4, state.keys.get(l4).and_then(Contrib::merged)));
            for (l4, merged) in writes.iter().copied().chain(rechecked) {
                match merged.filter(|e| e.deny || !covered_by_deny(&state.denies, l4)) {
                    Some(entry) => self.entries.insert(key(group, l4), entry),
                    None => self.entries.remove(&key(group, l4)),
                };
            }
            if state.keys.is_empty() {
                self.groups.remove(&group);
            }
        }
        // Keep the allocation for the next batch.
        pending.clear();
        self.pending = pending;
    }
}

/// The live rules and identities and the policy map they resolve to, updated incrementally.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    mode: EnforcementMode,
    rules: BTreeMap<RuleId, RuleState>,
    identities: BTreeMap<Identity, IdentityInfo>,
    /// Per local identity: how many rules selecting it enforce ingress and egress.
    enforcing: BTreeMap<Identity, [u32; 2]>,
    /// The allow-all entries currently contributed (local identity, direction).
    allow_all: BTreeSet<(Identity, Direction)>,
    /// How many rules refer to each prefix.
    cidr_refs: BTreeMap<IpNet, usize>,
    table: Table,
}

impl Resolver {
    pub fn new(mode: EnforcementMode) -> Resolver {
        Resolver { mode, ..Resolver::default() }
    }

    pub fn mode(&self) -> EnforcementMode {
        self.mode
    }

    /// Switches the enforcement mode (re-resolves everything).
    pub fn set_mode(&mut self, mode: EnforcementMode) {
        if mode != self.mode {
            self.mode = mode;
            self.rebuild();
        }
    }

    /// The complete desired content of the policy map.
    pub fn entries(&self) -> &BTreeMap<PolicyKey, PolicyEntry> {
        &self.table.entries
    }

    /// The loaded rules, by id.
    pub fn rules(&self) -> impl Iterator<Item = (RuleId, &Rule)> {
        self.rules.iter().map(|(id, state)| (*id, &state.rule))
    }

    pub fn rule(&self, id: RuleId) -> Option<&Rule> {
        self.rules.get(&id).map(|state| &state.rule)
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The identity universe.
    pub fn identities(&self) -> &BTreeMap<Identity, IdentityInfo> {
        &self.identities
    }

    /// Every prefix the loaded rules refer to (the daemon creates CIDR identities for them).
    pub fn cidrs(&self) -> BTreeSet<IpNet> {
        self.cidr_refs.keys().copied().collect()
    }

    /// Whether a local identity of the universe is default-deny (ingress, egress); identities
    /// that are not local, or not in the universe, have no policy: `(false, false)`.
    pub fn enforced(&self, identity: Identity) -> (bool, bool) {
        if !is_local(identity) || !self.identities.contains_key(&identity) {
            return (false, false);
        }
        let counts = self.enforcing.get(&identity).copied().unwrap_or_default();
        let [ingress, egress] = DIRECTIONS.map(|d| self.enforced_by(identity, counts[slot(d)]));
        (ingress, egress)
    }

    /// Whether `identity` is default-deny in `direction` given how many rules enforce it there.
    fn enforced_by(&self, identity: Identity, enforcing: u32) -> bool {
        match self.mode {
            EnforcementMode::Never => false,
            EnforcementMode::Always => true,
            EnforcementMode::Default => enforcing > 0 || (identity == Identity::INIT && !self.rules.is_empty()),
        }
    }

    /// The rules whose endpoint selector selects a local identity with these labels (whether
    /// or not it is in the universe).
    pub fn selecting(&self, identity: Identity, labels: &Labels) -> Vec<RuleId> {
        if !is_local(identity) {
            return Vec::new();
        }
        self.rules
            .iter()
            .filter(|(_, s)| s.rule.endpoint_selector.selects(identity, labels))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Loads a rule under `id`, replacing (and returning) the rule loaded under it before.
    pub fn add_rule(&mut self, id: RuleId, rule: Rule) -> Result<Option<Rule>, ResolveError> {
        if id == 0 {
            return Err(ResolveError::ZeroRuleId);
        }
        let old = self.detach(id);
        self.attach(id, RuleState::new(rule));
        self.table.flush();
        Ok(old)
    }

    /// Unloads a rule; `None` when no rule has this id.
    pub fn remove_rule(&mut self, id: RuleId) -> Option<Rule> {
        let old = self.detach(id);
        self.table.flush();
        old
    }

    /// Replaces every rule at once (one full resolution).
    pub fn replace_rules(&mut self, rules: Vec<(RuleId, Rule)>) -> Result<(), ResolveError> {
        let mut states = BTreeMap::new();
        for (id, rule) in rules {
            if id == 0 {
                return Err(ResolveError::ZeroRuleId);
            }
            if states.insert(id, RuleState::new(rule)).is_some() {
                return Err(ResolveError::DuplicateRuleId(id));
            }
        }
        self.rules = states;
        self.rebuild();
        Ok(())
    }

    /// Adds an identity to the universe, or updates it (its labels or prefix changed).
    pub fn add_identity(&mut self, identity: Identity, info: IdentityInfo) {
        if self.identities.get(&identity) == Some(&info) {
            return;
        }
        self.detach_identity(identity);
        let contributing = self.mode != EnforcementMode::Never;
        let local = is_local(identity);
        for (rule_id, state) in &mut self.rules {
            let RuleState { rule, enforces, sections, selects, .. } = state;
            for section in sections.iter_mut() {
                if !section.members.contains(&identity) && is_peer(&section.peers, identity, Some(&info)) {
                    section.members.insert(identity);
                    if contributing {
                        for &l in selects.iter() {
                            self.table.section(l, identity, section, *rule_id, true);
                        }
                    }
                }
            }
            if local && rule.endpoint_selector.selects(identity, &info.labels) {
                selects.insert(identity);
                let counts = self.enforcing.entry(identity).or_default();
                for d in DIRECTIONS {
                    counts[slot(d)] += u32::from(enforces[slot(d)]);
                }
                if contributing {
                    for section in sections.iter() {
                        for &peer in &section.members {
                            self.table.section(identity, peer, section, *rule_id, true);
                        }
                    }
                }
            }
        }
        self.identities.insert(identity, info);
        self.sync_allow_all(identity);
        self.table.flush();
    }

    /// Removes an identity from the universe; returns what it stood for.
    pub fn remove_identity(&mut self, identity: Identity) -> Option<IdentityInfo> {
        let info = self.detach_identity(identity);
        self.table.flush();
        info
    }

    /// Takes an identity out of the universe, leaving the table to flush.
    fn detach_identity(&mut self, identity: Identity) -> Option<IdentityInfo> {
        let info = self.identities.remove(&identity)?;
        let contributing = self.mode != EnforcementMode::Never;
        for (rule_id, state) in &mut self.rules {
            let RuleState { sections, selects, .. } = state;
            // Its own groups go as a whole below.
            selects.remove(&identity);
            for section in sections.iter_mut() {
                if section.members.contains(&identity) && !is_peer(&section.peers, identity, None) {
                    section.members.remove(&identity);
                    if contributing {
                        for &l in selects.iter() {
                            self.table.section(l, identity, section, *rule_id, false);
                        }
                    }
                }
            }
        }
        self.enforcing.remove(&identity);
        for d in DIRECTIONS {
            self.allow_all.remove(&(identity, d));
        }
        self.table.drop_local(identity);
        Some(info)
    }

    /// Resolves a rule against the universe and adds its contributions (the table is left to
    /// flush).
    fn attach(&mut self, id: RuleId, mut state: RuleState) {
        for section in &mut state.sections {
            let candidates = FIXED_PEERS.iter().chain(self.identities.keys());
            section.members =
                candidates.copied().filter(|x| is_peer(&section.peers, *x, self.identities.get(x))).collect();
        }
        state.selects = self
            .identities
            .iter()
            .filter(|(x, info)| is_local(**x) && state.rule.endpoint_selector.selects(**x, &info.labels))
            .map(|(x, _)| *x)
            .collect();
        for &local in &state.selects {
            let counts = self.enforcing.entry(local).or_default();
            for d in DIRECTIONS {
                counts[slot(d)] += u32::from(state.enforces[slot(d)]);
            }
        }
        if self.mode != EnforcementMode::Never {
            for &local in &state.selects {
                for section in &state.sections {
                    for &peer in &section.members {
                        self.table.section(local, peer, section, id, true);
                    }
                }
            }
        }
        for net in &state.cidrs {
            *self.cidr_refs.entry(*net).or_default() += 1;
        }
        let first = self.rules.is_empty();
        let selects: Vec<Identity> = state.selects.iter().copied().collect();
        self.rules.insert(id, state);
        if first {
            self.sync_allow_all(Identity::INIT);
        }
        for local in selects {
            self.sync_allow_all(local);
        }
    }

    /// Unloads a rule and withdraws its contributions (the table is left to flush).
    fn detach(&mut self, id: RuleId) -> Option<Rule> {
        let state = self.rules.remove(&id)?;
        if self.mode != EnforcementMode::Never {
            for &local in &state.selects {
                for section in &state.sections {
                    for &peer in &section.members {
                        self.table.section(local, peer, section, id, false);
                    }
                }
            }
        }
        for &local in &state.selects {
            if let Some(counts) = self.enforcing.get_mut(&local) {
                for d in DIRECTIONS {
                    counts[slot(d)] = counts[slot(d)].saturating_sub(u32::from(state.enforces[slot(d)]));
                }
            }
        }
        for net in &state.cidrs {
            if let Some(count) = self.cidr_refs.get_mut(net) {
                *count -= 1;
                if *count == 0 {
                    self.cidr_refs.remove(net);
                }
            }
        }
        if self.rules.is_empty() {
            self.sync_allow_all(Identity::INIT);
        }
        for &local in &state.selects {
            self.sync_allow_all(local);
        }
        Some(state.rule)
    }

    /// Adds or withdraws the allow-all entries of an identity to match its enforcement.
    fn sync_allow_all(&mut self, identity: Identity) {
        let present = is_local(identity) && self.identities.contains_key(&identity);
        let (ingress, egress) = self.enforced(identity);
        for (d, enforced) in [(Direction::Ingress, ingress), (Direction::Egress, egress)] {
            let want = present && !enforced;
            if want != self.allow_all.contains(&(identity, d)) {
                self.table.change((identity, Identity::ANY, d), L4_ANY, false, 0, want);
                if want {
                    self.allow_all.insert((identity, d));
                } else {
                    self.allow_all.remove(&(identity, d));
                }
            }
        }
    }

    /// Resolves everything again from the rules and the universe.
    fn rebuild(&mut self) {
        self.table.clear();
        self.enforcing.clear();
        self.allow_all.clear();
        self.cidr_refs.clear();
        let rules = std::mem::take(&mut self.rules);
        for (id, state) in rules {
            self.attach(id, state);
        }
        let locals: Vec<Identity> = self.identities.keys().copied().filter(|x| is_local(*x)).collect();
        for local in locals {
            self.sync_allow_all(local);
        }
        self.table.flush();
    }

    /// Resolves one group from scratch, without the incremental state: the entries the map
    /// holds (or would hold) for `local` (with `local_info`) towards `remote` in `direction`,
    /// whether or not either identity is in the universe. `remote_info` is `None` for an
    /// identity that is not in the universe and stands for nothing but its number (`ANY`).
    pub fn evaluate(
        &self,
        local: Identity,
        local_info: &IdentityInfo,
        remote: Identity,
        remote_info: Option<&IdentityInfo>,
        direction: Direction,
    ) -> BTreeMap<PolicyKey, PolicyEntry> {
        if !is_local(local) {
            return BTreeMap::new();
        }
        let mut keys: BTreeMap<L4, Contrib> = BTreeMap::new();
        let mut enforcing = 0;
        for (id, state) in &self.rules {
            if !state.rule.endpoint_selector.selects(local, &local_info.labels) {
                continue;
            }
            enforcing += u32::from(state.enforces[slot(direction)]);
            if self.mode == EnforcementMode::Never {
                continue;
            }
            for section in state.sections.iter().filter(|s| s.direction == direction) {
                if is_peer(&section.peers, remote, remote_info) {
                    for &l4 in &section.l4 {
                        keys.entry(l4).or_default().change(section.deny, *id, true);
                    }
                }
            }
        }
        if remote == Identity::ANY && !self.enforced_by(local, enforcing) {
            keys.entry(L4_ANY).or_default().change(false, 0, true);
        }
        let group = (local, remote, direction);
        materialize(&keys).into_iter().map(|(l4, entry)| (key(group, l4), entry)).collect()
    }

    /// Whether a local identity with these labels would be default-deny (ingress, egress).
    pub fn evaluate_enforced(&self, local: Identity, local_info: &IdentityInfo) -> (bool, bool) {
        if !is_local(local) {
            return (false, false);
        }
        let [ingress, egress] = DIRECTIONS.map(|d| {
            let enforcing = self
                .rules
                .values()
                .filter(|s| s.enforces[slot(d)] && s.rule.endpoint_selector.selects(local, &local_info.labels))
                .count();
            self.enforced_by(local, u32::try_from(enforcing).unwrap_or(u32::MAX))
        });
        (ingress, egress)
    }
}

#[cfg(test)]
mod tests;
