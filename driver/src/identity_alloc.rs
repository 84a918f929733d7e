//! Allocation of security identities for label sets through the shared key-value interface
//! ([`Kv`]), with this host's reference counts; and the local CIDR identities.
//!
//! # Keys
//!
//! - `cilium-rs/identities/id/<n>` → the label set of identity `n` (JSON of [`Labels`]);
//! - `cilium-rs/identities/value/<canonical labels>` → `n` in decimal, the reverse index.
//!
//! [`Labels::canonical`] is not injective (a value may contain `;`, a key `=`: the sets
//! `{x=a;container:y=b}` and `{x=a, y=b}` print alike) and may exceed the key limit. So a label
//! set whose canonical form does not parse back to itself, or is too long for a key, is indexed
//! under `cilium-rs/identities/value-sha256/<hex SHA-256 of its JSON>` instead. Either way a
//! lookup trusts a reverse-index entry only after reading the id key it names and finding the
//! same labels there; a stale entry (no id key, unreadable) is removed, a real clash is an error.
//!
//! # Protocol
//!
//! Allocation looks the reverse index up first; if the labels have no identity yet it creates
//! the id key of the lowest free number with a compare-and-swap create (another writer that got
//! there first just moves it to the next number), then creates the reverse-index key the same
//! way. If someone else indexed the same labels meanwhile, it deletes its own id key and uses
//! theirs. Freeing deletes the reverse-index key only if it still names the number, then the id
//! key only if it still holds the labels. Readers therefore never see a reverse-index entry
//! without its id key, except for a stale one, which they heal.
//!
//! # References
//!
//! Reference counts are this host's, in memory: one per [`IdentityAllocator::allocate`], dropped
//! by [`IdentityAllocator::release`]; at zero the identity is freed in the store. After a
//! restart [`IdentityAllocator::restore`] rebuilds them from the endpoints and frees every
//! identity that nothing references — right for the embedded backend, where this host is the
//! only user. With a backend shared between hosts (etcd) an identity is free only when no host
//! references it: each host would keep `cilium-rs/identities/refs/<n>/<node>` keys attached to
//! its lease (so a dead host's references expire), free on the last one, and restore would
//! garbage-collect only its own references.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::identity::Identity;
use crate::kv::{Kv, KvError, MAX_KEY_LEN};
use crate::labels::{Label, Labels};

/// Every key this module writes starts so.
pub const PREFIX: &str = "cilium-rs/identities/";
/// `…/id/<n>` → the JSON label set of identity `n`.
pub const ID_PREFIX: &str = "cilium-rs/identities/id/";
/// `…/value/<canonical labels>` → `n`.
pub const VALUE_PREFIX: &str = "cilium-rs/identities/value/";
/// `…/value-sha256/<hex>` → `n`, for label sets whose canonical form cannot be a key.
pub const VALUE_HASH_PREFIX: &str = "cilium-rs/identities/value-sha256/";

/// How often one allocation starts over after losing a race before it gives up.
const MAX_ATTEMPTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("{context}: {source}")]
    Kv { context: String, source: KvError },
    #[error("allocate identity for labels {labels}: no free identity left between {min} and {max}",
        min = Identity::MIN_ALLOCATED, max = Identity::MAX_ALLOCATED)]
    Exhausted { labels: String },
    #[error("allocate identity for labels {labels}: key {key} names identity {identity}, which has other labels ({existing})")]
    Collision { labels: String, key: String, identity: Identity, existing: String },
    #[error("allocate identity for labels {labels}: gave up after {attempts} attempts lost to other writers")]
    Contended { labels: String, attempts: usize },
    #[error("encode labels {labels}: {source}")]
    Encode { labels: String, source: serde_json::Error },
}

/// The key of identity `identity`'s label set.
pub fn id_key(identity: Identity) -> String {
    format!("{ID_PREFIX}{}", identity.0)
}

/// The reverse-index key of a label set (see the module documentation).
pub fn value_key(labels: &Labels) -> String {
    let canonical = labels.canonical();
    if VALUE_PREFIX.len() + canonical.len() <= MAX_KEY_LEN && decode_canonical(&canonical).as_ref() == Some(labels) {
        return format!("{VALUE_PREFIX}{canonical}");
    }
    // Serializing a set of string triples cannot fail; were it to, the canonical form still
    // identifies the set well enough for a hash that is verified on every lookup.
    let json = serde_json::to_vec(labels).unwrap_or_else(|_| canonical.into_bytes());
    let mut key = String::with_capacity(VALUE_HASH_PREFIX.len() + 64);
    key.push_str(VALUE_HASH_PREFIX);
    for byte in Sha256::digest(&json) {
        let _ = write!(key, "{byte:02x}");
    }
    key
}

/// Parses a canonical label string back (the inverse of [`Labels::canonical`] where it has one).
fn decode_canonical(text: &str) -> Option<Labels> {
    let mut labels = Labels::new();
    if text.is_empty() {
        return Some(labels);
    }
    for part in text.split(';') {
        let (source, rest) = part.split_once(':')?;
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        labels.insert(Label::new(source, key, value));
    }
    Some(labels)
}

/// A label set for a message: its text, cut short.
fn short(labels: &Labels) -> String {
    const MAX: usize = 200;
    let mut text = labels.to_string();
    if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn encode(labels: &Labels) -> Result<Vec<u8>, AllocError> {
    serde_json::to_vec(labels).map_err(|source| AllocError::Encode { labels: short(labels), source })
}

fn decode(bytes: &[u8]) -> Option<Labels> {
    serde_json::from_slice(bytes).ok()
}

/// An allocated identity number, from a key suffix or a reverse-index value.
fn parse_number(text: &[u8]) -> Option<Identity> {
    let n: u32 = std::str::from_utf8(text).ok()?.parse().ok()?;
    Some(Identity(n)).filter(|id| id.is_endpoint())
}

fn number_bytes(identity: Identity) -> Vec<u8> {
    identity.0.to_string().into_bytes()
}

/// What the reverse index says about a label set.
enum Lookup {
    Missing,
    Found(Identity),
    /// An entry that names no readable id key: safe to remove (with these exact bytes).
    Stale(Vec<u8>),
    /// An entry whose id key holds other labels.
    Other(Identity, Labels),
}

#[derive(Debug)]
struct Entry {
    labels: Labels,
    refs: usize,
}

#[derive(Debug, Default)]
struct Local {
    by_id: BTreeMap<Identity, Entry>,
    /// One identity per label set (a restore may find a set under two numbers; one is listed).
    by_labels: HashMap<Labels, Identity>,
}

impl Local {
    fn add(&mut self, identity: Identity, labels: &Labels, refs: usize) {
        self.by_id.entry(identity).or_insert_with(|| Entry { labels: labels.clone(), refs: 0 }).refs += refs;
        self.by_labels.entry(labels.clone()).or_insert(identity);
    }

    /// Forgets `identity`; returns its labels and another local identity with the same labels.
    fn remove(&mut self, identity: Identity) -> Option<(Labels, Option<Identity>)> {
        let entry = self.by_id.remove(&identity)?;
        let heir = self.by_id.iter().find(|(_, e)| e.labels == entry.labels).map(|(id, _)| *id);
        match heir {
            Some(heir) => self.by_labels.insert(entry.labels.clone(), heir),
            None => self.by_labels.remove(&entry.labels),
        };
        Some((entry.labels, heir))
    }
}

/// What [`IdentityAllocator::restore`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Identities referenced again, with the number of references taken.
    pub restored: Vec<(Identity, usize)>,
    /// Restored identities some of whose keys were missing and have been written again.
    pub recreated: Vec<Identity>,
    /// Entries that cannot keep their identity: allocate again for them.
    pub conflicts: Vec<RestoreConflict>,
    /// Identities removed from the store because nothing references them.
    pub freed: Vec<Identity>,
    /// Entries skipped because their identity is not an allocated one (reserved, init, CIDR).
    pub ignored: usize,
}

/// Entries whose identity number now belongs to another label set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreConflict {
    pub identity: Identity,
    /// The labels the entries have.
    pub labels: Labels,
    /// How many entries of the input had this identity and these labels.
    pub entries: usize,
    /// The labels the number stands for: the store's record, or the other entries' labels
    /// when the store had none (`None`: the store's record is unreadable).
    pub existing: Option<Labels>,
}

/// Allocates identities for label sets and counts this host's references to them.
pub struct IdentityAllocator {
    kv: Arc<dyn Kv>,
    local: Mutex<Local>,
}

impl std::fmt::Debug for IdentityAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityAllocator").finish_non_exhaustive()
    }
}

impl IdentityAllocator {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        IdentityAllocator { kv, local: Mutex::new(Local::default()) }
    }

    /// The identity of `labels`, allocated if it has none; takes one reference.
    pub async fn allocate(&self, labels: &Labels) -> Result<Identity, AllocError> {
        // Held across the store calls: allocations on this host are serialized, so they never
        // race each other, only other hosts' writers, which the compare-and-swaps handle.
        let mut local = self.local.lock().await;
        if let Some(identity) = local.by_labels.get(labels).copied() {
            if let Some(entry) = local.by_id.get_mut(&identity) {
                entry.refs += 1;
                return Ok(identity);
            }
        }
        let identity = self.allocate_in_kv(labels, &local).await?;
        local.add(identity, labels, 1);
        Ok(identity)
    }

    async fn allocate_in_kv(&self, labels: &Labels, local: &Local) -> Result<Identity, AllocError> {
        let context = || format!("allocate identity for labels {}", short(labels));
        let kv_err = |source| AllocError::Kv { context: context(), source };
        let value_key = value_key(labels);
        let encoded = encode(labels)?;
        for _ in 0..MAX_ATTEMPTS {
            match self.lookup(&value_key, labels).await.map_err(kv_err)? {
                Lookup::Found(identity) => {
                    debug!(%identity, labels = %short(labels), "identity found");
                    return Ok(identity);
                }
                Lookup::Other(identity, existing) => {
                    return Err(AllocError::Collision {
                        labels: short(labels),
                        key: value_key,
                        identity,
                        existing: short(&existing),
                    });
                }
                Lookup::Stale(bytes) => {
                    warn!(key = %value_key, "removing a stale identity index entry");
                    self.kv.compare_and_swap(&value_key, Some(&bytes), None).await.map_err(kv_err)?;
                    continue;
                }
                Lookup::Missing => {}
            }
            let identity = self.claim_number(labels, &encoded, local).await?;
            match self.kv.create(&value_key, &number_bytes(identity)).await {
                Ok(true) => {
                    debug!(%identity, labels = %short(labels), "identity allocated");
                    return Ok(identity);
                }
                Ok(false) => {
                    // Someone indexed these labels meanwhile: give our number back, use theirs.
                    self.kv.compare_and_swap(&id_key(identity), Some(&encoded), None).await.map_err(kv_err)?;
                }
                Err(source) => {
                    if let Err(undo) = self.kv.compare_and_swap(&id_key(identity), Some(&encoded), None).await {
                        warn!(%identity, error = %undo, "cannot give back an identity number; restore collects it");
                    }
                    return Err(kv_err(source));
                }
            }
        }
        Err(AllocError::Contended { labels: short(labels), attempts: MAX_ATTEMPTS })
    }

    /// Reads the reverse index for `labels` and checks it against the id key it names.
    async fn lookup(&self, value_key: &str, labels: &Labels) -> Result<Lookup, KvError> {
        let Some(bytes) = self.kv.get(value_key).await? else {
            return Ok(Lookup::Missing);
        };
        let Some(identity) = parse_number(&bytes) else {
            return Ok(Lookup::Stale(bytes));
        };
        Ok(match self.kv.get(&id_key(identity)).await?.as_deref().map(decode) {
            Some(Some(existing)) if existing == *labels => Lookup::Found(identity),
            Some(Some(existing)) => Lookup::Other(identity, existing),
            Some(None) | None => Lookup::Stale(bytes),
        })
    }

    /// Creates the id key of the lowest free number; returns that number.
    async fn claim_number(&self, labels: &Labels, encoded: &[u8], local: &Local) -> Result<Identity, AllocError> {
        let kv_err =
            |source| AllocError::Kv { context: format!("allocate identity for labels {}", short(labels)), source };
        let mut used: BTreeSet<u32> = self
            .kv
            .list(ID_PREFIX)
            .await
            .map_err(kv_err)?
            .iter()
            .filter_map(|(key, _)| key.strip_prefix(ID_PREFIX).and_then(|n| n.parse().ok()))
            .collect();
        // Numbers this host holds stay taken even if their keys went missing.
        used.extend(local.by_id.keys().map(|id| id.0));
        let mut candidate = Identity::MIN_ALLOCATED;
        loop {
            while used.contains(&candidate) {
                candidate += 1;
            }
            if candidate > Identity::MAX_ALLOCATED {
                return Err(AllocError::Exhausted { labels: short(labels) });
            }
            let identity = Identity(candidate);
            if self.kv.create(&id_key(identity), encoded).await.map_err(kv_err)? {
                return Ok(identity);
            }
            // Taken since the listing: try the next one.
            used.insert(candidate);
        }
    }

    /// Drops one reference; at zero the identity is freed and its number can be reused.
    /// Returns whether it was freed. Releasing an identity this host holds no reference to is
    /// done (`false`). The reference is dropped even when freeing fails: what the error left in
    /// the store is reused by the next allocation of the same labels or collected by restore.
    pub async fn release(&self, identity: Identity) -> Result<bool, AllocError> {
        let mut local = self.local.lock().await;
        let Some(entry) = local.by_id.get_mut(&identity) else {
            debug!(%identity, "release of an identity this host holds no reference to");
            return Ok(false);
        };
        entry.refs = entry.refs.saturating_sub(1);
        if entry.refs > 0 {
            return Ok(false);
        }
        let Some((labels, heir)) = local.remove(identity) else {
            return Ok(false);
        };
        self.free_in_kv(identity, &labels, heir).await?;
        debug!(%identity, labels = %short(&labels), "identity freed");
        Ok(true)
    }

    /// Removes the keys of `identity` that still say what they said for it; if `heir` has the
    /// same labels, the reverse index moves to it instead. Tries every step, returns the first
    /// error.
    async fn free_in_kv(&self, identity: Identity, labels: &Labels, heir: Option<Identity>) -> Result<(), AllocError> {
        let kv_err = |source| AllocError::Kv { context: format!("free identity {identity}"), source };
        let heir = heir.map(number_bytes);
        let index = self
            .kv
            .compare_and_swap(&value_key(labels), Some(&number_bytes(identity)), heir.as_deref())
            .await
            .map(|_| ());
        let key = id_key(identity);
        let record = async {
            match self.kv.get(&key).await? {
                Some(bytes) if decode(&bytes).as_ref() == Some(labels) => {
                    self.kv.compare_and_swap(&key, Some(&bytes), None).await.map(|_| ())
                }
                _ => Ok(()),
            }
        }
        .await;
        index.and(record).map_err(kv_err)
    }

    /// The labels of an identity this host holds a reference to.
    pub async fn labels(&self, identity: Identity) -> Option<Labels> {
        self.local.lock().await.by_id.get(&identity).map(|e| e.labels.clone())
    }

    /// This host's references to `identity`.
    pub async fn refs(&self, identity: Identity) -> usize {
        self.local.lock().await.by_id.get(&identity).map_or(0, |e| e.refs)
    }

    /// Every identity this host references, with its labels and references, by identity.
    pub async fn list(&self) -> Vec<(Identity, Labels, usize)> {
        self.local.lock().await.by_id.iter().map(|(id, e)| (*id, e.labels.clone(), e.refs)).collect()
    }

    /// After a restart: takes one reference per entry of `in_use` (the endpoints' identities),
    /// writes missing keys back so each keeps its number, reports the entries whose number now
    /// belongs to other labels, and frees every identity in the store that nothing references
    /// (this host is the only user of the embedded backend; see the module documentation).
    /// References taken before (by `allocate`) are kept. On error no reference is taken and the
    /// call can be repeated.
    pub async fn restore(&self, in_use: Vec<(Identity, Labels)>) -> Result<RestoreReport, AllocError> {
        let mut local = self.local.lock().await;
        let mut report = RestoreReport::default();
        let mut claims: BTreeMap<Identity, BTreeMap<Labels, usize>> = BTreeMap::new();
        for (identity, labels) in in_use {
            if identity.is_endpoint() {
                *claims.entry(identity).or_default().entry(labels).or_default() += 1;
            } else {
                report.ignored += 1;
            }
        }

        let mut restored: BTreeMap<Identity, (Labels, usize)> = BTreeMap::new();
        for (identity, mut by_labels) in claims {
            let kv_err = |source| AllocError::Kv { context: format!("restore identity {identity}"), source };
            let key = id_key(identity);
            // Who holds the number: a local reference, else the store, else the entries' majority.
            let holder = match local.by_id.get(&identity) {
                Some(entry) => Some(Some(entry.labels.clone())),
                None => self.kv.get(&key).await.map_err(kv_err)?.map(|bytes| decode(&bytes)),
            };
            let winner = match &holder {
                Some(Some(labels)) => by_labels.remove_entry(labels),
                Some(None) => None,
                None => {
                    let majority = by_labels.iter().max_by_key(|(_, n)| **n).map(|(l, _)| l.clone());
                    majority.and_then(|labels| by_labels.remove_entry(&labels))
                }
            };
            // What the number stands for from now on, as the losing entries are told.
            let existing = match &holder {
                Some(held) => held.clone(),
                None => winner.as_ref().map(|(labels, _)| labels.clone()),
            };
            for (labels, entries) in by_labels {
                report.conflicts.push(RestoreConflict { identity, labels, entries, existing: existing.clone() });
            }
            let Some((labels, entries)) = winner else {
                continue;
            };
            let mut recreated = false;
            if holder.is_none() {
                if !self.kv.create(&key, &encode(&labels)?).await.map_err(kv_err)? {
                    // Written since we looked: only possible with another writer on the store.
                    let existing = self.kv.get(&key).await.map_err(kv_err)?.and_then(|b| decode(&b));
                    if existing.as_ref() != Some(&labels) {
                        report.conflicts.push(RestoreConflict { identity, labels, entries, existing });
                        continue;
                    }
                }
                recreated = true;
            }
            recreated |= self.restore_index(identity, &labels).await.map_err(kv_err)?;
            if recreated {
                report.recreated.push(identity);
            }
            report.restored.push((identity, entries));
            restored.insert(identity, (labels, entries));
        }

        // Everything referenced from now on: what was before, and what was just restored.
        let mut referenced: BTreeMap<Identity, &Labels> = local.by_id.iter().map(|(id, e)| (*id, &e.labels)).collect();
        referenced.extend(restored.iter().map(|(id, (labels, _))| (*id, labels)));
        report.freed = self.collect_garbage(&referenced).await?;

        for (identity, (labels, entries)) in restored {
            local.add(identity, &labels, entries);
        }
        Ok(report)
    }

    /// Makes the reverse index of `labels` name `identity` unless it names another live
    /// identity; returns whether it wrote.
    async fn restore_index(&self, identity: Identity, labels: &Labels) -> Result<bool, KvError> {
        let key = value_key(labels);
        match self.lookup(&key, labels).await? {
            Lookup::Found(found) if found == identity => Ok(false),
            // The labels live on under another number too; allocations go there.
            Lookup::Found(_) => Ok(false),
            Lookup::Other(other, _) => {
                warn!(key = %key, %identity, %other, "identity index entry names another label set; left alone");
                Ok(false)
            }
            Lookup::Missing => self.kv.create(&key, &number_bytes(identity)).await,
            Lookup::Stale(bytes) => self.kv.compare_and_swap(&key, Some(&bytes), Some(&number_bytes(identity))).await,
        }
    }

    /// Removes every identity key that `referenced` does not account for; returns the
    /// identities freed.
    async fn collect_garbage(&self, referenced: &BTreeMap<Identity, &Labels>) -> Result<Vec<Identity>, AllocError> {
        let kv_err = |source| AllocError::Kv { context: "collect unreferenced identities".to_owned(), source };
        // The reverse index first, so that no entry ever names a missing id key.
        for prefix in [VALUE_PREFIX, VALUE_HASH_PREFIX] {
            for (key, bytes) in self.kv.list(prefix).await.map_err(kv_err)? {
                let live = parse_number(&bytes).and_then(|id| referenced.get(&id)).is_some_and(|l| value_key(l) == key);
                if !live {
                    debug!(key = %key, "removing an unreferenced identity index entry");
                    self.kv.compare_and_swap(&key, Some(&bytes), None).await.map_err(kv_err)?;
                }
            }
        }
        let mut freed = Vec::new();
        for (key, bytes) in self.kv.list(ID_PREFIX).await.map_err(kv_err)? {
            let identity = key.strip_prefix(ID_PREFIX).and_then(|n| parse_number(n.as_bytes()));
            let live = identity.and_then(|id| referenced.get(&id)).is_some_and(|l| decode(&bytes).as_ref() == Some(*l));
            if live {
                continue;
            }
            debug!(key = %key, "freeing an unreferenced identity");
            if self.kv.compare_and_swap(&key, Some(&bytes), None).await.map_err(kv_err)? {
                if let Some(identity) = identity {
                    freed.push(identity);
                }
            }
        }
        Ok(freed)
    }
}

/// What [`CidrIdentities::sync`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrChanges {
    pub added: Vec<(IpNet, Identity)>,
    pub removed: Vec<(IpNet, Identity)>,
}

impl CidrChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Local identities for the CIDR prefixes policy names, numbered from [`Identity::MIN_CIDR`];
/// never shared (each host numbers its own, as Cilium does). Prefixes are kept truncated to
/// their network address.
#[derive(Debug, Clone)]
pub struct CidrIdentities {
    by_prefix: BTreeMap<IpNet, Identity>,
    /// Numbers below `next` that are not in use, reused lowest first.
    free: BTreeSet<u32>,
    /// The lowest number never handed out (`None`: all of them have been).
    next: Option<u32>,
}

impl Default for CidrIdentities {
    fn default() -> Self {
        CidrIdentities { by_prefix: BTreeMap::new(), free: BTreeSet::new(), next: Some(Identity::MIN_CIDR) }
    }
}

impl CidrIdentities {
    pub fn new() -> Self {
        CidrIdentities::default()
    }

    /// Makes the set of prefixes with an identity equal `wanted`: a prefix keeps its identity
    /// while it stays wanted. Numbers freed by one call are reused from the next call on, so one
    /// diff never gives a number two meanings.
    pub fn sync(&mut self, wanted: &BTreeSet<IpNet>) -> CidrChanges {
        let wanted: BTreeSet<IpNet> = wanted.iter().map(IpNet::trunc).collect();
        let mut changes = CidrChanges::default();
        for net in &wanted {
            if self.by_prefix.contains_key(net) {
                continue;
            }
            match self.take() {
                Some(identity) => {
                    self.by_prefix.insert(*net, identity);
                    changes.added.push((*net, identity));
                }
                None => warn!(prefix = %net, "no CIDR identity left; prefix not given one"),
            }
        }
        let gone: Vec<IpNet> = self.by_prefix.keys().filter(|net| !wanted.contains(net)).copied().collect();
        for net in gone {
            if let Some(identity) = self.by_prefix.remove(&net) {
                self.free.insert(identity.0);
                changes.removed.push((net, identity));
            }
        }
        changes
    }

    fn take(&mut self) -> Option<Identity> {
        if let Some(n) = self.free.pop_first() {
            return Some(Identity(n));
        }
        let n = self.next?;
        self.next = n.checked_add(1);
        Some(Identity(n))
    }

    /// The identity of `prefix` (truncated to its network address first).
    pub fn get(&self, prefix: &IpNet) -> Option<Identity> {
        self.by_prefix.get(&prefix.trunc()).copied()
    }

    /// Every prefix and its identity, by prefix.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, Identity)> + '_ {
        self.by_prefix.iter().map(|(net, id)| (*net, *id))
    }

    pub fn len(&self) -> usize {
        self.by_prefix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::kv::{EmbeddedKv, KvWatch};
    use crate::labels::SOURCE_DOCKER;
    use crate::store::MemoryStore;

    fn labels(text: &str) -> Labels {
        Labels::parse_list(text, crate::labels::SOURCE_CONTAINER).unwrap()
    }

    fn kv_on(store: &Arc<MemoryStore>) -> Arc<EmbeddedKv> {
        Arc::new(EmbeddedKv::open(store.clone()).unwrap())
    }

    fn allocator() -> (IdentityAllocator, Arc<EmbeddedKv>) {
        let kv = kv_on(&Arc::new(MemoryStore::new()));
        (IdentityAllocator::new(kv.clone()), kv)
    }

    async fn keys(kv: &EmbeddedKv) -> Vec<String> {
        kv.list(PREFIX).await.unwrap().into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn value_keys_are_canonical_unless_ambiguous_or_long() {
        let web = labels("app=web");
        assert_eq!(value_key(&web), "cilium-rs/identities/value/container:app=web");
        // `x=a;container:y=b` prints like {x=a, y=b}: such a set is hashed, the plain one is not.
        let tricky: Labels = [Label::container("x", "a;container:y=b")].into_iter().collect();
        let plain = labels("x=a,y=b");
        assert_eq!(tricky.canonical(), plain.canonical());
        assert!(value_key(&tricky).starts_with(VALUE_HASH_PREFIX));
        assert_eq!(value_key(&plain), format!("{VALUE_PREFIX}{}", plain.canonical()));
        let long: Labels = [Label::container("big", &"v".repeat(2000))].into_iter().collect();
        let key = value_key(&long);
        assert!(key.starts_with(VALUE_HASH_PREFIX) && key.len() == VALUE_HASH_PREFIX.len() + 64, "{key}");
        assert_eq!(value_key(&Labels::new()), VALUE_PREFIX);
    }

    #[tokio::test]
    async fn same_labels_same_identity_distinct_labels_distinct_ones_from_256() {
        let (alloc, kv) = allocator();
        let web = labels("app=web");
        assert_eq!(alloc.allocate(&web).await.unwrap(), Identity(256));
        assert_eq!(alloc.allocate(&web).await.unwrap(), Identity(256));
        assert_eq!(alloc.allocate(&labels("app=db")).await.unwrap(), Identity(257));
        let mut net = labels("app=web");
        net.insert(Label::new(SOURCE_DOCKER, "network", "n1"));
        assert_eq!(alloc.allocate(&net).await.unwrap(), Identity(258));
        assert_eq!(alloc.refs(Identity(256)).await, 2);
        assert_eq!(alloc.labels(Identity(257)).await, Some(labels("app=db")));
        assert_eq!(alloc.labels(Identity(259)).await, None);
        let listed: Vec<(u32, usize)> = alloc.list().await.into_iter().map(|(id, _, refs)| (id.0, refs)).collect();
        assert_eq!(listed, [(256, 2), (257, 1), (258, 1)]);
        // The store holds both directions.
        let id_record = kv.get("cilium-rs/identities/id/256").await.unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<Labels>(&id_record).unwrap(), web);
        let index = kv.get("cilium-rs/identities/value/container:app=web").await.unwrap().unwrap();
        assert_eq!(index, b"256");
        // Another allocator on the same store (a restarted daemon) finds the same numbers.
        let again = IdentityAllocator::new(kv.clone());
        assert_eq!(again.allocate(&labels("app=db")).await.unwrap(), Identity(257));
        assert_eq!(again.allocate(&labels("app=new")).await.unwrap(), Identity(259));
    }

    #[tokio::test]
    async fn release_frees_at_zero_references_and_the_number_is_reused() {
        let (alloc, kv) = allocator();
        let web = labels("app=web");
        let id = alloc.allocate(&web).await.unwrap();
        alloc.allocate(&web).await.unwrap();
        let db = alloc.allocate(&labels("app=db")).await.unwrap();
        assert!(!alloc.release(id).await.unwrap(), "one reference left");
        assert_eq!(alloc.refs(id).await, 1);
        assert!(alloc.release(id).await.unwrap(), "last reference frees");
        assert_eq!(alloc.labels(id).await, None);
        assert_eq!(keys(&kv).await, ["cilium-rs/identities/id/257", "cilium-rs/identities/value/container:app=db"]);
        // Idempotent teardown: unknown, reserved and already freed identities are no-ops.
        assert!(!alloc.release(id).await.unwrap());
        assert!(!alloc.release(Identity(999)).await.unwrap());
        assert!(!alloc.release(Identity::INIT).await.unwrap());
        assert_eq!(alloc.allocate(&labels("app=cache")).await.unwrap(), Identity(256), "lowest free number reused");
        assert_eq!(alloc.allocate(&web).await.unwrap(), Identity(258), "freed labels get a new number");
        assert_eq!(alloc.refs(db).await, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_allocations_agree() {
        let (alloc, _kv) = allocator();
        let alloc = Arc::new(alloc);
        let web = labels("app=web");
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (alloc, web) = (alloc.clone(), web.clone());
                tokio::spawn(async move { alloc.allocate(&web).await.unwrap() })
            })
            .collect();
        let mut ids = BTreeSet::new();
        for task in tasks {
            ids.insert(task.await.unwrap());
        }
        assert_eq!(ids.len(), 1, "{ids:?}");
        let id = *ids.first().unwrap();
        assert_eq!(alloc.refs(id).await, 50);

        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let alloc = alloc.clone();
                tokio::spawn(async move { alloc.allocate(&labels(&format!("app=svc{i}"))).await.unwrap() })
            })
            .collect();
        let mut ids = BTreeSet::new();
        for task in tasks {
            ids.insert(task.await.unwrap().0);
        }
        assert_eq!(ids.len(), 50);
        assert_eq!(ids, (257..307).collect::<BTreeSet<u32>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_allocators_on_one_store_agree() {
        // Two hosts' allocators share one store: only the compare-and-swaps keep them apart.
        let kv = kv_on(&Arc::new(MemoryStore::new()));
        let hosts = [Arc::new(IdentityAllocator::new(kv.clone())), Arc::new(IdentityAllocator::new(kv.clone()))];
        let mut tasks = Vec::new();
        for i in 0..40 {
            let alloc = hosts[i % 2].clone();
            tasks.push(tokio::spawn(async move {
                let shared = alloc.allocate(&labels("app=web")).await.unwrap();
                let own = alloc.allocate(&labels(&format!("app=svc{i}"))).await.unwrap();
                (shared, own)
            }));
        }
        let mut shared = BTreeSet::new();
        let mut own = BTreeSet::new();
        for task in tasks {
            let (s, o) = task.await.unwrap();
            shared.insert(s);
            own.insert(o);
        }
        assert_eq!(shared.len(), 1);
        assert_eq!(own.len(), 40);
        assert!(own.is_disjoint(&shared));
        assert_eq!(kv.list(ID_PREFIX).await.unwrap().len(), 41, "no number leaked by a lost race");
    }

    /// Keys and values "another host" writes.
    type Writes = Vec<(String, Vec<u8>)>;

    /// A store that lets "another host" write just before a chosen `create`.
    struct RacingKv {
        inner: EmbeddedKv,
        injections: StdMutex<Vec<(String, Writes)>>,
    }

    #[async_trait::async_trait]
    impl Kv for RacingKv {
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
            self.inner.get(key).await
        }
        async fn create(&self, key: &str, value: &[u8]) -> Result<bool, KvError> {
            let writes = {
                let mut injections = self.injections.lock().unwrap();
                injections.iter().position(|(trigger, _)| trigger == key).map(|i| injections.remove(i).1)
            };
            for (k, v) in writes.unwrap_or_default() {
                assert!(self.inner.create(&k, &v).await.unwrap());
            }
            self.inner.create(key, value).await
        }
        async fn compare_and_swap(
            &self,
            key: &str,
            expected: Option<&[u8]>,
            new: Option<&[u8]>,
        ) -> Result<bool, KvError> {
            self.inner.compare_and_swap(key, expected, new).await
        }
        async fn delete(&self, key: &str) -> Result<(), KvError> {
            self.inner.delete(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, KvError> {
            self.inner.list(prefix).await
        }
        fn watch(&self, prefix: &str) -> KvWatch {
            self.inner.watch(prefix)
        }
    }

    fn racing(trigger: &str, writes: Writes) -> Arc<RacingKv> {
        let inner = EmbeddedKv::open(Arc::new(MemoryStore::new())).unwrap();
        Arc::new(RacingKv { inner, injections: StdMutex::new(vec![(trigger.to_owned(), writes)]) })
    }

    #[tokio::test]
    async fn a_number_taken_meanwhile_moves_on_to_the_next() {
        let other = labels("app=other");
        let kv = racing(
            "cilium-rs/identities/id/256",
            vec![(id_key(Identity(256)), encode(&other).unwrap()), (value_key(&other), b"256".to_vec())],
        );
        let alloc = IdentityAllocator::new(kv.clone());
        assert_eq!(alloc.allocate(&labels("app=web")).await.unwrap(), Identity(257));
        assert_eq!(alloc.allocate(&other).await.unwrap(), Identity(256), "the other writer's identity is found");
    }

    #[tokio::test]
    async fn labels_indexed_meanwhile_use_the_other_writers_identity() {
        let web = labels("app=web");
        let kv = racing(
            &value_key(&web),
            vec![(id_key(Identity(300)), encode(&web).unwrap()), (value_key(&web), b"300".to_vec())],
        );
        let alloc = IdentityAllocator::new(kv.clone());
        assert_eq!(alloc.allocate(&web).await.unwrap(), Identity(300));
        assert_eq!(kv.get(&id_key(Identity(256))).await.unwrap(), None, "our number given back");
        assert_eq!(alloc.refs(Identity(300)).await, 1);
    }

    #[tokio::test]
    async fn a_failing_store_leaves_nothing_behind() {
        let store = Arc::new(MemoryStore::new());
        let kv = kv_on(&store);
        let alloc = IdentityAllocator::new(kv.clone());
        let web = labels("app=web");
        store.fail_commits(true);
        let err = alloc.allocate(&web).await.unwrap_err();
        assert!(
            err.to_string().starts_with(
                "allocate identity for labels container:app=web: create key cilium-rs/identities/id/256: commit state:"
            ),
            "{err}"
        );
        assert!(alloc.list().await.is_empty());
        store.fail_commits(false);
        let id = alloc.allocate(&web).await.unwrap();
        assert_eq!(id, Identity(256));
        // A failed free still drops the reference; the keys left are found again.
        store.fail_commits(true);
        let err = alloc.release(id).await.unwrap_err();
        assert!(err.to_string().starts_with("free identity 256: "), "{err}");
        assert!(alloc.list().await.is_empty());
        store.fail_commits(false);
        assert_eq!(alloc.allocate(&web).await.unwrap(), id);
    }

    #[tokio::test]
    async fn stale_and_colliding_index_entries() {
        let (alloc, kv) = allocator();
        let web = labels("app=web");
        // An index entry naming a missing id key is healed.
        kv.create(&value_key(&web), b"400").await.unwrap();
        assert_eq!(alloc.allocate(&web).await.unwrap(), Identity(256));
        assert_eq!(kv.get(&value_key(&web)).await.unwrap().unwrap(), b"256");
        // One naming another label set is refused, not followed.
        let db = labels("app=db");
        kv.create(&value_key(&db), b"256").await.unwrap();
        let err = alloc.allocate(&db).await.unwrap_err();
        assert!(matches!(err, AllocError::Collision { identity: Identity(256), .. }), "{err}");
    }

    #[tokio::test]
    async fn hashed_index_keys_work_like_plain_ones() {
        let (alloc, kv) = allocator();
        let tricky: Labels = [Label::container("x", "a;container:y=b")].into_iter().collect();
        let plain = labels("x=a,y=b");
        let long: Labels = [Label::container("big", &"v".repeat(5000))].into_iter().collect();
        let a = alloc.allocate(&tricky).await.unwrap();
        let b = alloc.allocate(&plain).await.unwrap();
        let c = alloc.allocate(&long).await.unwrap();
        assert_ne!(a, b, "look-alike label sets must not share an identity");
        let fresh = IdentityAllocator::new(kv.clone());
        assert_eq!(fresh.allocate(&tricky).await.unwrap(), a);
        assert_eq!(fresh.allocate(&long).await.unwrap(), c);
        assert_eq!(kv.list(VALUE_HASH_PREFIX).await.unwrap().len(), 2);
        drop(fresh);
        for id in [a, b, c] {
            assert!(alloc.release(id).await.unwrap());
        }
        assert!(keys(&kv).await.is_empty());
    }

    #[tokio::test]
    async fn restore_rebuilds_references_recreates_keys_and_collects_the_rest() {
        let store = Arc::new(MemoryStore::new());
        let kv = kv_on(&store);
        let (l1, l2, l3, l4, l5) =
            (labels("app=a"), labels("app=b"), labels("app=c"), labels("app=d"), labels("app=e"));
        {
            // The daemon before the restart.
            let old = IdentityAllocator::new(kv.clone());
            for l in [&l1, &l2, &l3] {
                old.allocate(l).await.unwrap();
            }
        }
        // Damage: l3's index entry lost, garbage under the prefix.
        kv.delete(&value_key(&l3)).await.unwrap();
        kv.create("cilium-rs/identities/id/999", b"not json").await.unwrap();
        kv.create("cilium-rs/identities/value/container:app=gone", b"998").await.unwrap();
        kv.create("unrelated/key", b"kept").await.unwrap();

        let kv = kv_on(&store); // reopen: the restart
        let alloc = IdentityAllocator::new(kv.clone());
        let report = alloc
            .restore(vec![
                (Identity(256), l1.clone()),
                (Identity(256), l1.clone()),
                (Identity(258), l3.clone()),
                (Identity(259), l4.clone()), // missing from the store: written back
                (Identity(257), l5.clone()), // 257 is l2's: conflict
                (Identity::INIT, Labels::new()),
            ])
            .await
            .unwrap();
        assert_eq!(report.restored, [(Identity(256), 2), (Identity(258), 1), (Identity(259), 1)]);
        assert_eq!(report.recreated, [Identity(258), Identity(259)]);
        assert_eq!(
            report.conflicts,
            [RestoreConflict { identity: Identity(257), labels: l5.clone(), entries: 1, existing: Some(l2.clone()) }]
        );
        assert_eq!(report.freed, [Identity(257), Identity(999)], "l2 has no endpoint left; 999 was unreadable");
        assert_eq!(report.ignored, 1);

        let listed: Vec<(Identity, Labels, usize)> = alloc.list().await;
        assert_eq!(
            listed,
            [(Identity(256), l1.clone(), 2), (Identity(258), l3.clone(), 1), (Identity(259), l4.clone(), 1)]
        );
        let mut expected = vec![
            id_key(Identity(256)),
            id_key(Identity(258)),
            id_key(Identity(259)),
            value_key(&l1),
            value_key(&l3),
            value_key(&l4),
        ];
        expected.sort();
        assert_eq!(keys(&kv).await, expected);
        assert_eq!(kv.get("unrelated/key").await.unwrap().unwrap(), b"kept");

        // Allocation goes on from the rebuilt state.
        assert_eq!(alloc.allocate(&l1).await.unwrap(), Identity(256));
        assert_eq!(alloc.refs(Identity(256)).await, 3);
        assert_eq!(alloc.allocate(&l5).await.unwrap(), Identity(257), "the conflicting endpoint allocates again");
        assert_eq!(alloc.allocate(&l4).await.unwrap(), Identity(259));
        assert!(alloc.release(Identity(258)).await.unwrap());
        assert_eq!(kv.get(&id_key(Identity(258))).await.unwrap(), None);
    }

    #[tokio::test]
    async fn restore_settles_disagreeing_entries_and_keeps_earlier_references() {
        let (alloc, kv) = allocator();
        let (l1, l2, l3) = (labels("app=a"), labels("app=b"), labels("app=c"));
        // Allocated before restore ran: kept, and not collected.
        assert_eq!(alloc.allocate(&l3).await.unwrap(), Identity(256));
        let report = alloc
            .restore(vec![
                // Two label sets claim 300, which the store does not know: the majority keeps it.
                (Identity(300), l1.clone()),
                (Identity(300), l2.clone()),
                (Identity(300), l1.clone()),
                // 256 is held locally by l3.
                (Identity(256), l1.clone()),
                (Identity(256), l3.clone()),
            ])
            .await
            .unwrap();
        assert_eq!(report.restored, [(Identity(256), 1), (Identity(300), 2)]);
        assert_eq!(report.recreated, [Identity(300)]);
        assert_eq!(
            report.conflicts,
            [
                RestoreConflict { identity: Identity(256), labels: l1.clone(), entries: 1, existing: Some(l3.clone()) },
                RestoreConflict { identity: Identity(300), labels: l2.clone(), entries: 1, existing: Some(l1.clone()) },
            ]
        );
        assert!(report.freed.is_empty());
        assert_eq!(alloc.refs(Identity(256)).await, 2);
        assert_eq!(alloc.allocate(&l1).await.unwrap(), Identity(300));
        assert_eq!(alloc.allocate(&l2).await.unwrap(), Identity(257));
        assert_eq!(kv.list(ID_PREFIX).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_failed_restore_takes_no_reference_and_can_be_repeated() {
        let store = Arc::new(MemoryStore::new());
        let kv = kv_on(&store);
        let alloc = IdentityAllocator::new(kv.clone());
        let entries = vec![(Identity(256), labels("app=a"))];
        store.fail_commits(true);
        let err = alloc.restore(entries.clone()).await.unwrap_err();
        assert!(err.to_string().starts_with("restore identity 256: create key cilium-rs/identities/id/256"), "{err}");
        assert!(alloc.list().await.is_empty());
        store.fail_commits(false);
        let report = alloc.restore(entries).await.unwrap();
        assert_eq!(report.restored, [(Identity(256), 1)]);
        assert_eq!(alloc.refs(Identity(256)).await, 1);
    }

    fn nets(list: &[&str]) -> BTreeSet<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn cidr_identities_are_stable_while_wanted_and_reused_after() {
        const BASE: u32 = Identity::MIN_CIDR;
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let mut cidrs = CidrIdentities::new();
        assert!(cidrs.is_empty());
        let changes = cidrs.sync(&nets(&["10.0.0.0/8", "2001:db8::/32"]));
        assert_eq!(changes.added, [(net("10.0.0.0/8"), Identity(BASE)), (net("2001:db8::/32"), Identity(BASE + 1))]);
        assert!(changes.removed.is_empty());
        assert!(cidrs.sync(&nets(&["10.0.0.0/8", "2001:db8::/32"])).is_empty(), "nothing to do");
        let changes = cidrs.sync(&nets(&["10.0.0.0/8", "2001:db8::/32", "192.168.0.0/16"]));
        assert_eq!(changes.added, [(net("192.168.0.0/16"), Identity(BASE + 2))]);
        assert_eq!(cidrs.get(&net("10.0.0.0/8")), Some(Identity(BASE)), "stable while wanted");
        let changes = cidrs.sync(&nets(&["10.0.0.0/8", "192.168.0.0/16"]));
        assert_eq!(changes.removed, [(net("2001:db8::/32"), Identity(BASE + 1))]);
        assert!(changes.added.is_empty());
        assert_eq!(cidrs.get(&net("2001:db8::/32")), None);
        // A freed number is reused by a later call…
        let changes = cidrs.sync(&nets(&["10.0.0.0/8", "192.168.0.0/16", "172.16.0.0/12"]));
        assert_eq!(changes.added, [(net("172.16.0.0/12"), Identity(BASE + 1))]);
        // …but never within the call that frees it.
        let changes = cidrs.sync(&nets(&["10.0.0.0/8", "fe80::/10"]));
        assert_eq!(changes.added, [(net("fe80::/10"), Identity(BASE + 3))]);
        assert_eq!(
            changes.removed,
            [(net("172.16.0.0/12"), Identity(BASE + 1)), (net("192.168.0.0/16"), Identity(BASE + 2))]
        );
        // Host bits are ignored.
        assert_eq!(cidrs.get(&net("10.1.2.3/8")), Some(Identity(BASE)));
        assert!(cidrs.sync(&nets(&["10.9.9.9/8", "fe80::/10"])).is_empty());
        let all: Vec<(IpNet, Identity)> = cidrs.iter().collect();
        assert_eq!(all, [(net("10.0.0.0/8"), Identity(BASE)), (net("fe80::/10"), Identity(BASE + 3))]);
        assert_eq!(cidrs.len(), 2);
        assert!(cidrs.iter().all(|(_, id)| id.is_cidr()));
    }
}
