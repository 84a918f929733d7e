//! Policy orchestration: the live rules and their revision (persisted), the resolver kept in
//! step with rules, identities, CIDR identities and the host's addresses, and every change
//! applied to the datapath before it counts. A change that cannot be applied or persisted is
//! undone whole: the live revision stays as it was.
//!
//! It has its own lock: a policy change, however many entries it writes, never holds up the
//! plugin calls (Join needs nothing from here: an endpoint starts as `init`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bpf_programs::abi::POLICY_MAX_ENTRIES;
use ipnet::IpNet;
use tokio::sync::{watch, Mutex, MutexGuard};
use tracing::{info, warn};

use crate::datapath::{Datapath, DatapathError, PolicyView};
use crate::identity::{reserved_labels, Identity, RESERVED};
use crate::identity_alloc::CidrIdentities;
use crate::labels::Labels;
use crate::policy::{
    cidr_identity_labels, parse_rule_value, trace, EnforcementMode, IdentityInfo, PolicyError, Resolver, Rule, RuleId,
    Trace,
};
use crate::store::{Change, Records, Store, StoreError, Table};

/// Meta key of the live policy revision.
const META_REVISION: &str = "policy.revision";
/// Meta key of the last rule id handed out.
const META_NEXT_RULE: &str = "policy.next_rule";

#[derive(Debug, thiserror::Error)]
pub enum PolicyEngineError {
    #[error("corrupt state record rules/{key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    #[error(
        "the policy would need {needed} policy map entries; the datapath holds at most {max}: \
         use fewer rules × identities (e.g. select peers with fewer, broader selectors)"
    )]
    TooManyEntries { needed: usize, max: u32 },
    #[error("persist policy: {0}")]
    Store(#[from] StoreError),
    #[error("apply policy: {0}")]
    Datapath(#[from] DatapathError),
    #[error("timed out after {waited:?} waiting for revision {wanted}; the datapath enforces revision {enforced}")]
    Timeout { wanted: u64, enforced: u64, waited: Duration },
    #[error("no rules match labels {0}")]
    NoMatch(String),
}

/// What an import changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Imported {
    pub revision: u64,
    /// Ids of the imported rules, in file order.
    pub added: Vec<RuleId>,
    /// Ids of the rules they replaced (same labels).
    pub replaced: Vec<RuleId>,
}

/// What a delete removed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deleted {
    pub revision: u64,
    pub deleted: Vec<RuleId>,
}

/// Which rules to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteWhich {
    All,
    /// Rules carrying every one of these labels.
    Labels(Labels),
}

struct Inner {
    resolver: Resolver,
    revision: u64,
    next_rule: RuleId,
    cidrs: CidrIdentities,
    /// The host's own addresses (identity host).
    host: BTreeSet<IpAddr>,
    /// Non-endpoint ipcache entries: host addresses and CIDR prefixes.
    ipcache: BTreeMap<IpNet, Identity>,
}

/// Held while the datapath is restored from the policy (the start of the daemon).
pub struct PolicyGuard<'a>(MutexGuard<'a, Inner>);

impl PolicyGuard<'_> {
    pub fn view(&self) -> PolicyView<'_> {
        PolicyView { entries: self.0.resolver.entries(), ipcache: &self.0.ipcache }
    }
}

pub struct PolicyEngine {
    datapath: Arc<dyn Datapath>,
    store: Arc<dyn Store>,
    inner: Mutex<Inner>,
    /// The revision the datapath enforces.
    enforced: watch::Sender<u64>,
    /// The non-endpoint ipcache entries as last seen by [`PolicyEngine::ipcache_snapshot`].
    ipcache_seen: std::sync::Mutex<Vec<(IpNet, Identity)>>,
}

fn rule_key(id: RuleId) -> String {
    format!("{id:020}")
}

fn meta(key: &str, value: u64) -> Change {
    Change { table: Table::Meta, key: key.to_owned(), value: Some(value.to_string().into_bytes()) }
}

fn corrupt(key: &str, reason: impl std::fmt::Display) -> PolicyEngineError {
    PolicyEngineError::Corrupt { key: key.to_owned(), reason: reason.to_string() }
}

impl Inner {
    /// Keeps one CIDR identity per prefix the rules reference, with its labels, and the
    /// non-endpoint ipcache in step.
    fn sync_cidrs(&mut self) {
        let wanted = self.resolver.cidrs();
        let changes = self.cidrs.sync(&wanted);
        for (_, identity) in &changes.removed {
            self.resolver.remove_identity(*identity);
        }
        let labels = cidr_identity_labels(&wanted);
        for (net, identity) in self.cidrs.iter() {
            let info = IdentityInfo { labels: labels.get(&net).cloned().unwrap_or_default(), cidr: Some(net) };
            if self.resolver.identities().get(&identity) != Some(&info) {
                self.resolver.add_identity(identity, info);
            }
        }
        self.rebuild_ipcache();
    }

    fn rebuild_ipcache(&mut self) {
        let mut ipcache: BTreeMap<IpNet, Identity> = self.cidrs.iter().collect();
        for addr in &self.host {
            ipcache.insert(IpNet::from(*addr), Identity::HOST);
        }
        self.ipcache = ipcache;
    }

    fn check_size(&self) -> Result<(), PolicyEngineError> {
        let needed = self.resolver.entries().len();
        if needed > POLICY_MAX_ENTRIES as usize {
            return Err(PolicyEngineError::TooManyEntries { needed, max: POLICY_MAX_ENTRIES });
        }
        Ok(())
    }

    fn view(&self) -> PolicyView<'_> {
        PolicyView { entries: self.resolver.entries(), ipcache: &self.ipcache }
    }
}

impl PolicyEngine {
    /// The persisted rules (each parsed again through the validating parser) and revision.
    pub fn load(
        records: &Records,
        mode: EnforcementMode,
        datapath: Arc<dyn Datapath>,
        store: Arc<dyn Store>,
    ) -> Result<Self, PolicyEngineError> {
        let mut resolver = Resolver::new(mode);
        for (identity, _) in RESERVED {
            if let Some(labels) = reserved_labels(identity) {
                resolver.add_identity(identity, IdentityInfo { labels, cidr: None });
            }
        }
        let mut rules = Vec::new();
        for (key, bytes) in records.get(&Table::Rules).into_iter().flatten() {
            let id: RuleId = key.parse().map_err(|e| corrupt(key, format!("key is not a rule id: {e}")))?;
            let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))?;
            rules.push((id, parse_rule_value(&value).map_err(|e| corrupt(key, e))?));
        }
        let meta_number = |key: &str| -> Result<u64, PolicyEngineError> {
            match records.get(&Table::Meta).and_then(|rows| rows.get(key)) {
                None => Ok(0),
                Some(bytes) => std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| corrupt(key, "not a number")),
            }
        };
        let revision = meta_number(META_REVISION)?.max(1);
        let next_rule = meta_number(META_NEXT_RULE)?.max(rules.iter().map(|(id, _)| *id).max().unwrap_or(0));
        resolver.replace_rules(rules).map_err(|e| corrupt("*", e))?;
        let mut inner = Inner {
            resolver,
            revision,
            next_rule,
            cidrs: CidrIdentities::default(),
            host: BTreeSet::new(),
            ipcache: BTreeMap::new(),
        };
        inner.sync_cidrs();
        let (enforced, _) = watch::channel(revision);
        Ok(PolicyEngine {
            datapath,
            store,
            inner: Mutex::new(inner),
            enforced,
            ipcache_seen: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Holds the policy while the daemon restores the datapath from it.
    pub async fn lock(&self) -> PolicyGuard<'_> {
        PolicyGuard(self.inner.lock().await)
    }

    /// The revision the datapath enforces.
    pub fn revision(&self) -> u64 {
        *self.enforced.borrow()
    }

    pub async fn mode(&self) -> EnforcementMode {
        self.inner.lock().await.resolver.mode()
    }

    /// Revision, rules, policy map entries and identities, for the status.
    pub async fn summary(&self) -> (u64, usize, usize, usize) {
        let inner = self.inner.lock().await;
        (inner.revision, inner.resolver.rule_count(), inner.resolver.entries().len(), inner.resolver.identities().len())
    }

    /// The live rules and the revision.
    pub async fn rules(&self) -> (u64, Vec<(RuleId, Rule)>) {
        let inner = self.inner.lock().await;
        (inner.revision, inner.resolver.rules().map(|(id, r)| (id, r.clone())).collect())
    }

    /// Adds rules; a rule with the same (non-empty) labels as a live one replaces it, as
    /// Cilium's import does. Returns once the datapath enforces the new revision.
    pub async fn import(&self, rules: Vec<Rule>) -> Result<Imported, PolicyEngineError> {
        let mut inner = self.inner.lock().await;
        let mut replaced: Vec<(RuleId, Rule)> = Vec::new();
        for rule in rules.iter().filter(|r| !r.labels.is_empty()) {
            let same: Vec<RuleId> = inner
                .resolver
                .rules()
                .filter(|(id, live)| live.labels == rule.labels && !replaced.iter().any(|(r, _)| r == id))
                .map(|(id, _)| id)
                .collect();
            for id in same {
                if let Some(old) = inner.resolver.remove_rule(id) {
                    replaced.push((id, old));
                }
            }
        }
        let first = inner.next_rule + 1;
        let added: Vec<(RuleId, Rule)> = rules.into_iter().enumerate().map(|(i, r)| (first + i as u64, r)).collect();
        for (id, rule) in &added {
            // Fresh ids, never 0: cannot fail.
            if let Err(e) = inner.resolver.add_rule(*id, rule.clone()) {
                warn!(error = %e, "add rule");
            }
        }
        let next_rule = first + added.len() as u64 - 1;
        let revision = inner.revision + 1;
        let mut changes: Vec<Change> = Vec::new();
        for (id, rule) in &added {
            let json = serde_json::to_vec(&rule.to_json()).map_err(|e| corrupt(&rule_key(*id), e))?;
            changes.push(Change { table: Table::Rules, key: rule_key(*id), value: Some(json) });
        }
        for (id, _) in &replaced {
            changes.push(Change { table: Table::Rules, key: rule_key(*id), value: None });
        }
        changes.push(meta(META_REVISION, revision));
        changes.push(meta(META_NEXT_RULE, next_rule));
        let undo = |inner: &mut Inner| {
            for (id, _) in &added {
                inner.resolver.remove_rule(*id);
            }
            for (id, rule) in &replaced {
                let _ = inner.resolver.add_rule(*id, rule.clone());
            }
        };
        self.commit(&mut inner, &changes, undo).await?;
        inner.revision = revision;
        inner.next_rule = next_rule;
        self.enforced.send_replace(revision);
        let imported = Imported {
            revision,
            added: added.iter().map(|(id, _)| *id).collect(),
            replaced: replaced.iter().map(|(id, _)| *id).collect(),
        };
        info!(revision, added = imported.added.len(), replaced = imported.replaced.len(), "policy imported");
        Ok(imported)
    }

    /// Deletes all rules, or those carrying the given labels.
    pub async fn delete(&self, which: DeleteWhich) -> Result<Deleted, PolicyEngineError> {
        let mut inner = self.inner.lock().await;
        let ids: Vec<RuleId> = inner
            .resolver
            .rules()
            .filter(|(_, rule)| match &which {
                DeleteWhich::All => true,
                DeleteWhich::Labels(labels) => rule.has_labels(labels),
            })
            .map(|(id, _)| id)
            .collect();
        if ids.is_empty() {
            if let DeleteWhich::Labels(labels) = which {
                return Err(PolicyEngineError::NoMatch(crate::input::quoted(&labels.to_string())));
            }
            return Ok(Deleted { revision: inner.revision, deleted: Vec::new() });
        }
        let removed: Vec<(RuleId, Rule)> =
            ids.iter().filter_map(|id| inner.resolver.remove_rule(*id).map(|r| (*id, r))).collect();
        let revision = inner.revision + 1;
        let mut changes: Vec<Change> =
            ids.iter().map(|id| Change { table: Table::Rules, key: rule_key(*id), value: None }).collect();
        changes.push(meta(META_REVISION, revision));
        let undo = |inner: &mut Inner| {
            for (id, rule) in &removed {
                let _ = inner.resolver.add_rule(*id, rule.clone());
            }
        };
        self.commit(&mut inner, &changes, undo).await?;
        inner.revision = revision;
        self.enforced.send_replace(revision);
        info!(revision, deleted = ids.len(), "policy rules deleted");
        Ok(Deleted { revision, deleted: ids })
    }

    /// Applies the resolver's new state and persists `changes`; on any failure runs `undo`
    /// and puts the datapath back as it was.
    async fn commit(
        &self,
        inner: &mut Inner,
        changes: &[Change],
        undo: impl Fn(&mut Inner),
    ) -> Result<(), PolicyEngineError> {
        inner.sync_cidrs();
        let result = async {
            inner.check_size()?;
            self.datapath.apply_policy(inner.view()).await?;
            crate::crash::point("policy.applied");
            self.store.commit(changes)?;
            crate::crash::point("policy.committed");
            Ok::<(), PolicyEngineError>(())
        }
        .await;
        if let Err(e) = result {
            undo(inner);
            inner.sync_cidrs();
            if let Err(back) = self.datapath.apply_policy(inner.view()).await {
                warn!(error = %back, "putting the previous policy back into the datapath failed");
            }
            return Err(e);
        }
        Ok(())
    }

    /// At start, before the datapath is restored: the identities endpoints carry (nothing is
    /// applied here; the restore applies the whole policy once).
    pub async fn restore_identities(&self, identities: Vec<(Identity, Labels)>) {
        let mut inner = self.inner.lock().await;
        for (identity, labels) in identities {
            inner.resolver.add_identity(identity, IdentityInfo { labels, cidr: None });
        }
    }

    /// Makes `identity` known to policy (its entries are in the datapath when this returns);
    /// adding a known identity again is a no-op.
    pub async fn add_identity(&self, identity: Identity, labels: &Labels) -> Result<(), PolicyEngineError> {
        let mut inner = self.inner.lock().await;
        let info = IdentityInfo { labels: labels.clone(), cidr: None };
        if inner.resolver.identities().get(&identity) == Some(&info) {
            return Ok(());
        }
        let before = inner.resolver.identities().get(&identity).cloned();
        inner.resolver.add_identity(identity, info);
        let applied = async {
            inner.check_size()?;
            self.datapath.apply_policy(inner.view()).await?;
            Ok::<(), PolicyEngineError>(())
        }
        .await;
        if let Err(e) = applied {
            match before {
                Some(info) => inner.resolver.add_identity(identity, info),
                None => {
                    inner.resolver.remove_identity(identity);
                }
            }
            if let Err(back) = self.datapath.apply_policy(inner.view()).await {
                warn!(error = %back, "putting the previous policy back into the datapath failed");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Forgets a freed identity if it still stands for `labels` (its number may already have
    /// been handed to another label set, whose entries stay).
    pub async fn remove_identity(&self, identity: Identity, labels: &Labels) -> Result<(), PolicyEngineError> {
        let mut inner = self.inner.lock().await;
        if inner.resolver.identities().get(&identity).is_none_or(|info| &info.labels != labels) {
            return Ok(());
        }
        if inner.resolver.remove_identity(identity).is_some() {
            self.datapath.apply_policy(inner.view()).await?;
        }
        Ok(())
    }

    /// The host's own addresses: identity host in the ipcache.
    pub async fn set_host_addresses(&self, addresses: BTreeSet<IpAddr>) -> Result<(), PolicyEngineError> {
        let mut inner = self.inner.lock().await;
        if inner.host == addresses {
            return Ok(());
        }
        inner.host = addresses;
        inner.rebuild_ipcache();
        self.datapath.apply_policy(inner.view()).await?;
        Ok(())
    }

    /// The host's addresses and CIDR prefixes with their identities, without waiting: while
    /// policy is being changed, the ones seen last.
    pub fn ipcache_snapshot(&self) -> Vec<(IpNet, Identity)> {
        let mut seen = self.ipcache_seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Ok(inner) = self.inner.try_lock() {
            *seen = inner.ipcache.iter().map(|(net, id)| (*net, *id)).collect();
        }
        seen.clone()
    }

    /// Waits until the datapath enforces `revision` (or a later one).
    pub async fn wait(&self, revision: u64, timeout: Duration) -> Result<u64, PolicyEngineError> {
        let mut rx = self.enforced.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await;
        match waited {
            Ok(Ok(r)) => Ok(*r),
            _ => Err(PolicyEngineError::Timeout { wanted: revision, enforced: self.revision(), waited: timeout }),
        }
    }

    /// The verdict for a flow between two label sets, and the rules that decide it. A label
    /// set that exactly one known identity carries (with more labels, say its network) stands
    /// for that identity.
    pub async fn trace(&self, src: &Labels, dst: &Labels, proto: u8, port: u16) -> Trace {
        let inner = self.inner.lock().await;
        let known = |given: &Labels| -> Labels {
            let mut carrying = inner
                .resolver
                .identities()
                .values()
                .filter(|info| info.cidr.is_none() && given.iter().all(|l| info.labels.contains(l)));
            match (carrying.next(), carrying.next()) {
                (Some(one), None) => one.labels.clone(),
                _ => given.clone(),
            }
        };
        trace(&inner.resolver, &known(src), &known(dst), proto, port)
    }

    /// Whether an endpoint with this identity and these labels is default-deny at ingress and
    /// at egress, and the rules whose endpoint selector selects it.
    pub async fn enforcement(&self, identity: Identity, labels: &Labels) -> (bool, bool, Vec<RuleId>) {
        let inner = self.inner.lock().await;
        let (ingress, egress) = inner.resolver.enforced(identity);
        (ingress, egress, inner.resolver.selecting(identity, labels))
    }

    /// The host's own addresses (identity host).
    pub async fn host_addresses(&self) -> BTreeSet<IpAddr> {
        self.inner.lock().await.host.clone()
    }

    /// Identity → labels of every identity policy knows (reserved, endpoint and CIDR ones).
    /// How many identities policy knows, by [`Identity::kind`].
    pub async fn identity_kinds(&self) -> BTreeMap<&'static str, usize> {
        let mut kinds = BTreeMap::new();
        for identity in self.inner.lock().await.resolver.identities().keys() {
            *kinds.entry(identity.kind()).or_default() += 1;
        }
        kinds
    }

    pub async fn identities(&self) -> BTreeMap<Identity, IdentityInfo> {
        self.inner.lock().await.resolver.identities().clone()
    }
}
