//! The small async key-value interface that state shared between hosts goes through (identities
//! first), and its embedded implementation on top of the daemon's [`Store`].
//!
//! # Semantics
//!
//! Keys are UTF-8 strings of 1 to [`MAX_KEY_LEN`] bytes, values at most [`MAX_VALUE_LEN`] bytes.
//! Every operation is atomic and linearizable: [`Kv::create`] and [`Kv::compare_and_swap`] are the
//! only conditional writes, and the only way to build allocation protocols on top (see
//! `identity_alloc`). [`Kv::watch`] reports every change under a prefix made after the call, in
//! commit order. Watchers read through a bounded channel; one that falls behind is told so with
//! [`KvEvent::Lagged`] and must resync with [`Kv::list`] (subscribe first, then list, then apply
//! events in order: the state converges even if some events repeat what the list showed).
//!
//! # The embedded backend
//!
//! [`EmbeddedKv`] keeps the whole key space in memory (a `BTreeMap`) and in the store's
//! [`Table::Kv`]. Operations are serialized by one mutex; each successful mutation is committed
//! to the store first, then applied to memory, then announced to watchers, all under that mutex,
//! so memory, disk and the event order never disagree. A failed commit changes nothing.
//!
//! # How an etcd backend maps onto this
//!
//! - `get` / `list`: a range read (`list` with the prefix's range end, sorted by key — etcd
//!   sorts by key already).
//! - `create`: a transaction `If(create_revision(key) == 0) Then(Put(key, value))`; the
//!   transaction's `succeeded` flag is the answer.
//! - `compare_and_swap`: `If(value(key) == expected) Then(Put | Delete)`, or with
//!   `create_revision(key) == 0` when `expected` is `None`. (Comparing `mod_revision` obtained
//!   from a previous read is the cheaper equivalent where the caller kept it.)
//! - `delete`: a plain `Delete(key)`, which is idempotent in etcd too.
//! - `watch`: an etcd watch on the prefix starting at the revision of the last read, its
//!   events fed into the same `broadcast` channel [`KvWatch`] reads; a compacted revision
//!   (`ErrCompacted`) is reported as [`KvEvent::Lagged`], exactly like a slow receiver here.
//! - leases: per-node references (`…/refs/<id>/<node>` attached to the node's lease) are what a
//!   distributed allocator needs so that a crashed host's references expire; they would be a
//!   `create_with_lease` / `keep_alive` addition to this trait. The embedded backend has one
//!   user, this host, and needs none.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use crate::store::{Change, Store, StoreError, Table};

/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// The largest value accepted, in bytes.
pub const MAX_VALUE_LEN: usize = 1024 * 1024;
/// How many events a watcher may fall behind before it is told it lagged.
pub const DEFAULT_WATCH_CAPACITY: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("key is empty")]
    EmptyKey,
    #[error("key {key}…: {len} bytes, more than {max} allowed", max = MAX_KEY_LEN)]
    KeyTooLong { key: String, len: usize },
    #[error("value of key {key}: {len} bytes, more than {max} allowed", max = MAX_VALUE_LEN)]
    ValueTooLarge { key: String, len: usize },
    #[error("load key-value table: {0}")]
    Load(#[source] StoreError),
    #[error("{op} key {key}: {source}")]
    Commit { op: &'static str, key: String, source: StoreError },
}

/// A change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// The watcher fell behind and `missed` events (under any prefix) were dropped: list the
    /// prefix again to resync. Events after this one follow without a gap.
    Lagged {
        missed: u64,
    },
}

impl KvEvent {
    /// The key changed (`None` for [`KvEvent::Lagged`]).
    pub fn key(&self) -> Option<&str> {
        match self {
            KvEvent::Put { key, .. } | KvEvent::Delete { key } => Some(key),
            KvEvent::Lagged { .. } => None,
        }
    }
}

/// A stream of the changes under one prefix.
pub struct KvWatch {
    prefix: String,
    events: broadcast::Receiver<KvEvent>,
}

impl fmt::Debug for KvWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvWatch").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl KvWatch {
    /// Filters a backend's event channel down to `prefix` (backends build their watches so).
    pub fn new(prefix: impl Into<String>, events: broadcast::Receiver<KvEvent>) -> Self {
        KvWatch { prefix: prefix.into(), events }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The next change under the prefix, or `None` once the backend is gone.
    pub async fn next(&mut self) -> Option<KvEvent> {
        loop {
            match self.events.recv().await {
                Ok(event) => {
                    if let Some(event) = self.filter(event) {
                        return Some(event);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => return Some(KvEvent::Lagged { missed }),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next change under the prefix if one is pending, without waiting.
    pub fn try_next(&mut self) -> Option<KvEvent> {
        loop {
            match self.events.try_recv() {
                Ok(event) => {
                    if let Some(event) = self.filter(event) {
                        return Some(event);
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(missed)) => return Some(KvEvent::Lagged { missed }),
                Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => return None,
            }
        }
    }

    fn filter(&self, event: KvEvent) -> Option<KvEvent> {
        match event.key() {
            Some(key) if !key.starts_with(&self.prefix) => None,
            _ => Some(event),
        }
    }
}

/// Shared key-value state: see the module documentation for the semantics.
#[async_trait::async_trait]
pub trait Kv: Send + Sync + 'static {
    /// The value of `key`, if it exists.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;

    /// Writes `key` only if it does not exist; `false` (and nothing written) if it does.
    async fn create(&self, key: &str, value: &[u8]) -> Result<bool, KvError>;

    /// Replaces the value of `key` by `new` (`None` deletes it) only if its current value is
    /// `expected` (`None`: the key must be absent); `false` (and nothing written) otherwise.
    async fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool, KvError>;

    /// Removes `key`; removing a missing key is done.
    async fn delete(&self, key: &str) -> Result<(), KvError>;

    /// Every key starting with `prefix` and its value, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, KvError>;

    /// The changes under `prefix` from now on.
    fn watch(&self, prefix: &str) -> KvWatch;
}

/// Checks a key against the interface's limits.
pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KvError::KeyTooLong { key: head(key, 64).to_owned(), len: key.len() });
    }
    Ok(())
}

/// Checks a value against the interface's limits.
pub fn check_value(key: &str, value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(KvError::ValueTooLarge { key: key.to_owned(), len: value.len() });
    }
    Ok(())
}

/// The first at most `max` bytes of `text`, cut at a character boundary.
fn head(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The embedded backend: the key space in memory, written through to the store's `kv` table.
pub struct EmbeddedKv {
    store: Arc<dyn Store>,
    entries: Mutex<BTreeMap<String, Vec<u8>>>,
    events: broadcast::Sender<KvEvent>,
}

impl fmt::Debug for EmbeddedKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedKv").field("keys", &self.lock().len()).finish_non_exhaustive()
    }
}

impl EmbeddedKv {
    /// Loads the `kv` table of `store` once; from then on memory is the source of reads.
    pub fn open(store: Arc<dyn Store>) -> Result<Self, KvError> {
        Self::open_with_watch_capacity(store, DEFAULT_WATCH_CAPACITY)
    }

    /// [`EmbeddedKv::open`] with watchers allowed to fall `capacity` events behind.
    pub fn open_with_watch_capacity(store: Arc<dyn Store>, capacity: usize) -> Result<Self, KvError> {
        let mut records = store.load().map_err(KvError::Load)?;
        let entries = records.remove(&Table::Kv).unwrap_or_default();
        let (events, _) = broadcast::channel(capacity.max(1));
        Ok(EmbeddedKv { store, entries: Mutex::new(entries), events })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // Memory changes only after a successful commit, in steps that cannot panic halfway, so
        // a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits one change, then applies it to `entries` and tells the watchers; the caller
    /// holds the lock that `entries` came from.
    fn write(
        &self,
        entries: &mut BTreeMap<String, Vec<u8>>,
        op: &'static str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), KvError> {
        let change = Change { table: Table::Kv, key: key.to_owned(), value: value.map(<[u8]>::to_vec) };
        self.store.commit(std::slice::from_ref(&change)).map_err(|source| KvError::Commit {
            op,
            key: key.to_owned(),
            source,
        })?;
        let event = match change.value {
            Some(value) => {
                entries.insert(change.key.clone(), value.clone());
                KvEvent::Put { key: change.key, value }
            }
            None => {
                entries.remove(&change.key);
                KvEvent::Delete { key: change.key }
            }
        };
        // No receiver is not an error: nobody is watching.
        let _ = self.events.send(event);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Kv for EmbeddedKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        check_key(key)?;
        Ok(self.lock().get(key).cloned())
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<bool, KvError> {
        check_key(key)?;
        check_value(key, value)?;
        let mut entries = self.lock();
        if entries.contains_key(key) {
            return Ok(false);
        }
        self.write(&mut entries, "create", key, Some(value))?;
        Ok(true)
    }

    async fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool, KvError> {
        check_key(key)?;
        if let Some(new) = new {
            check_value(key, new)?;
        }
        let mut entries = self.lock();
        if entries.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        if expected.is_none() && new.is_none() {
            // "Delete it if it is absent": already true, nothing to write.
            return Ok(true);
        }
        self.write(&mut entries, if new.is_some() { "swap" } else { "swap-delete" }, key, new)?;
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        check_key(key)?;
        let mut entries = self.lock();
        if !entries.contains_key(key) {
            return Ok(());
        }
        self.write(&mut entries, "delete", key, None)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, KvError> {
        if prefix.len() > MAX_KEY_LEN {
            return Err(KvError::KeyTooLong { key: head(prefix, 64).to_owned(), len: prefix.len() });
        }
        let entries = self.lock();
        Ok(entries
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    fn watch(&self, prefix: &str) -> KvWatch {
        KvWatch::new(prefix, self.events.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::MemoryStore;

    fn open(store: &Arc<MemoryStore>) -> EmbeddedKv {
        EmbeddedKv::open(store.clone()).expect("open")
    }

    async fn next(watch: &mut KvWatch) -> KvEvent {
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("event in time").expect("open")
    }

    fn put(key: &str, value: &[u8]) -> KvEvent {
        KvEvent::Put { key: key.into(), value: value.to_vec() }
    }

    #[tokio::test]
    async fn create_writes_once_and_never_overwrites() {
        let kv = open(&Arc::new(MemoryStore::new()));
        assert!(kv.create("a", b"1").await.unwrap());
        assert!(!kv.create("a", b"2").await.unwrap(), "second create must fail");
        assert_eq!(kv.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(kv.get("b").await.unwrap(), None);
    }

    #[tokio::test]
    async fn compare_and_swap_checks_the_current_value() {
        let kv = open(&Arc::new(MemoryStore::new()));
        // Expected absent.
        assert!(kv.compare_and_swap("k", None, Some(b"1")).await.unwrap());
        assert!(!kv.compare_and_swap("k", None, Some(b"2")).await.unwrap());
        // Expected a value.
        assert!(!kv.compare_and_swap("k", Some(b"0"), Some(b"2")).await.unwrap());
        assert_eq!(kv.get("k").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert!(kv.compare_and_swap("k", Some(b"1"), Some(b"2")).await.unwrap());
        assert_eq!(kv.get("k").await.unwrap().as_deref(), Some(&b"2"[..]));
        // Delete.
        assert!(!kv.compare_and_swap("k", Some(b"1"), None).await.unwrap());
        assert!(kv.compare_and_swap("k", Some(b"2"), None).await.unwrap());
        assert_eq!(kv.get("k").await.unwrap(), None);
        // Absent and stays absent: true, nothing written.
        assert!(kv.compare_and_swap("k", None, None).await.unwrap());
        assert!(!kv.compare_and_swap("k", Some(b"2"), None).await.unwrap());
    }

    #[tokio::test]
    async fn delete_is_idempotent() {
        let kv = open(&Arc::new(MemoryStore::new()));
        kv.delete("missing").await.unwrap();
        kv.create("k", b"v").await.unwrap();
        kv.delete("k").await.unwrap();
        kv.delete("k").await.unwrap();
        assert_eq!(kv.get("k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn list_returns_the_prefix_sorted() {
        let kv = open(&Arc::new(MemoryStore::new()));
        for key in ["p/b", "p/a", "q/a", "p", "o/z", "p/c/d"] {
            kv.create(key, key.as_bytes()).await.unwrap();
        }
        let listed = kv.list("p/").await.unwrap();
        let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["p/a", "p/b", "p/c/d"]);
        assert_eq!(listed[0].1, b"p/a");
        assert_eq!(kv.list("").await.unwrap().len(), 6);
        assert!(kv.list("r").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn limits_are_enforced() {
        let kv = open(&Arc::new(MemoryStore::new()));
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let err = kv.create(&long, b"v").await.unwrap_err();
        assert!(matches!(err, KvError::KeyTooLong { len, .. } if len == MAX_KEY_LEN + 1), "{err}");
        assert!(kv.create(&"k".repeat(MAX_KEY_LEN), b"v").await.unwrap());
        assert!(matches!(kv.get("").await, Err(KvError::EmptyKey)));
        let big = vec![0u8; MAX_VALUE_LEN + 1];
        let err = kv.create("big", &big).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("value of key big: {} bytes, more than {MAX_VALUE_LEN} allowed", big.len())
        );
        assert!(kv.compare_and_swap("big", None, Some(&big)).await.is_err());
        assert!(kv.create("big", &big[..MAX_VALUE_LEN]).await.unwrap());
    }

    #[tokio::test]
    async fn watch_sees_changes_under_its_prefix_only() {
        let kv = open(&Arc::new(MemoryStore::new()));
        kv.create("ids/before", b"0").await.unwrap();
        let mut watch = kv.watch("ids/");
        kv.create("other/x", b"1").await.unwrap();
        kv.create("ids/1", b"a").await.unwrap();
        assert!(!kv.create("ids/1", b"b").await.unwrap());
        kv.compare_and_swap("ids/1", Some(b"a"), Some(b"c")).await.unwrap();
        kv.compare_and_swap("ids/1", Some(b"zz"), None).await.unwrap(); // fails: no event
        kv.delete("other/x").await.unwrap();
        kv.delete("ids/1").await.unwrap();
        kv.delete("ids/1").await.unwrap(); // already gone: no event
        kv.compare_and_swap("ids/before", Some(b"0"), None).await.unwrap();
        assert_eq!(next(&mut watch).await, put("ids/1", b"a"));
        assert_eq!(next(&mut watch).await, put("ids/1", b"c"));
        assert_eq!(next(&mut watch).await, KvEvent::Delete { key: "ids/1".into() });
        assert_eq!(next(&mut watch).await, KvEvent::Delete { key: "ids/before".into() });
        assert_eq!(watch.try_next(), None);
    }

    #[tokio::test]
    async fn a_lagging_watcher_is_told_to_resync() {
        let store = Arc::new(MemoryStore::new());
        let kv = EmbeddedKv::open_with_watch_capacity(store.clone(), 2).expect("open");
        let mut watch = kv.watch("k/");
        for i in 0..5 {
            kv.create(&format!("k/{i}"), b"v").await.unwrap();
        }
        assert_eq!(next(&mut watch).await, KvEvent::Lagged { missed: 3 });
        assert_eq!(next(&mut watch).await, put("k/3", b"v"));
        assert_eq!(next(&mut watch).await, put("k/4", b"v"));
        assert_eq!(KvEvent::Lagged { missed: 1 }.key(), None);
    }

    #[tokio::test]
    async fn a_watch_ends_when_the_backend_is_dropped() {
        let kv = open(&Arc::new(MemoryStore::new()));
        let mut watch = kv.watch("");
        drop(kv);
        assert_eq!(watch.next().await, None);
    }

    #[tokio::test]
    async fn a_failed_commit_changes_nothing() {
        let store = Arc::new(MemoryStore::new());
        let kv = open(&store);
        kv.create("k", b"1").await.unwrap();
        let mut watch = kv.watch("");
        store.fail_commits(true);
        let err = kv.create("new", b"x").await.unwrap_err();
        assert!(err.to_string().starts_with("create key new: commit state:"), "{err}");
        assert!(kv.compare_and_swap("k", Some(b"1"), Some(b"2")).await.is_err());
        assert!(kv.compare_and_swap("k", Some(b"1"), None).await.is_err());
        assert!(kv.delete("k").await.is_err());
        // Failures that need no write still answer.
        assert!(!kv.create("k", b"2").await.unwrap());
        kv.delete("missing").await.unwrap();
        store.fail_commits(false);
        assert_eq!(kv.get("k").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(kv.get("new").await.unwrap(), None);
        assert_eq!(watch.try_next(), None, "no event for a failed write");
        assert_eq!(open(&store).list("").await.unwrap(), [("k".to_owned(), b"1".to_vec())]);
    }

    #[tokio::test]
    async fn state_survives_reopen_on_the_same_store() {
        let store = Arc::new(MemoryStore::new());
        {
            let kv = open(&store);
            kv.create("a", b"1").await.unwrap();
            kv.create("b", b"2").await.unwrap();
            kv.compare_and_swap("a", Some(b"1"), Some(b"3")).await.unwrap();
            kv.delete("b").await.unwrap();
        }
        let kv = open(&store);
        assert_eq!(kv.list("").await.unwrap(), [("a".to_owned(), b"3".to_vec())]);
        // Only the kv table is touched.
        let records = store.load().unwrap();
        assert!(records.keys().all(|t| *t == Table::Kv));
    }

    #[tokio::test]
    async fn state_survives_reopen_on_redb() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = crate::store::RedbStore::open(dir.path()).expect("open redb");
            let kv = EmbeddedKv::open(Arc::new(store)).expect("open");
            kv.create("x/1", b"one").await.unwrap();
        }
        let store = crate::store::RedbStore::open(dir.path()).expect("reopen redb");
        let kv: Arc<dyn Kv> = Arc::new(EmbeddedKv::open(Arc::new(store)).expect("open"));
        assert_eq!(kv.get("x/1").await.unwrap().as_deref(), Some(&b"one"[..]));
    }
}
