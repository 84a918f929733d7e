//! Persisted state: a small key-value trait with an embedded transactional backend (redb) and
//! an in-memory one for tests. Every change of one plugin call commits atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

/// The kinds of records the daemon keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Networks,
    Pools,
    Endpoints,
    Meta,
    /// The embedded key-value store shared interfaces use (identities).
    Kv,
    /// Policy rules, by rule id.
    Rules,
}

impl Table {
    pub const ALL: [Table; 6] = [Table::Networks, Table::Pools, Table::Endpoints, Table::Meta, Table::Kv, Table::Rules];

    pub fn name(self) -> &'static str {
        match self {
            Table::Networks => "networks",
            Table::Pools => "pools",
            Table::Endpoints => "endpoints",
            Table::Meta => "meta",
            Table::Kv => "kv",
            Table::Rules => "rules",
        }
    }

    fn definition(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// One record written (`Some`) or removed (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub table: Table,
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// Every record, by table and key.
pub type Records = BTreeMap<Table, BTreeMap<String, Vec<u8>>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open state database {path}: {source}")]
    Open { path: PathBuf, source: Box<redb::Error> },
    #[error("create state directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("restrict {path} to its owner: {source}")]
    Permissions { path: PathBuf, source: std::io::Error },
    #[error("read state: {0}")]
    Read(Box<redb::Error>),
    #[error("commit state: {0}")]
    Commit(Box<redb::Error>),
}

fn boxed<E: Into<redb::Error>>(e: E) -> Box<redb::Error> {
    Box::new(e.into())
}

/// Where the daemon keeps what it must not forget.
pub trait Store: Send + Sync + 'static {
    fn load(&self) -> Result<Records, StoreError>;
    /// Applies all changes or none.
    fn commit(&self, changes: &[Change]) -> Result<(), StoreError>;
    /// Where the records are, for people (a path, or `memory`).
    fn location(&self) -> String {
        "memory".to_owned()
    }
    /// A cheap check that the store can still be read.
    fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl<S: Store> Store for std::sync::Arc<S> {
    fn load(&self) -> Result<Records, StoreError> {
        (**self).load()
    }

    fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        (**self).commit(changes)
    }

    fn location(&self) -> String {
        (**self).location()
    }

    fn check(&self) -> Result<(), StoreError> {
        (**self).check()
    }
}

/// The store for the status: where it is, and whether it works (it can be read, and its last
/// commit went through).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreHealth {
    pub location: String,
    pub ok: bool,
    /// The error that makes it fail, and when it happened (ms since the epoch).
    pub error: Option<String>,
    pub error_at: Option<u64>,
}

/// A store that remembers how its last commit went.
pub struct WatchedStore {
    inner: std::sync::Arc<dyn Store>,
    /// The last commit's failure (cleared by a commit that succeeds).
    failed: Mutex<Option<(String, u64)>>,
}

impl std::fmt::Debug for WatchedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedStore").field("location", &self.inner.location()).finish_non_exhaustive()
    }
}

impl WatchedStore {
    pub fn new(inner: std::sync::Arc<dyn Store>) -> Self {
        WatchedStore { inner, failed: Mutex::new(None) }
    }

    fn failed(&self) -> std::sync::MutexGuard<'_, Option<(String, u64)>> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn health(&self) -> StoreHealth {
        let failure = match self.inner.check() {
            Err(e) => Some((e.to_string(), crate::health::unix_ms())),
            Ok(()) => self.failed().clone(),
        };
        StoreHealth {
            location: self.inner.location(),
            ok: failure.is_none(),
            error: failure.as_ref().map(|(e, _)| e.clone()),
            error_at: failure.map(|(_, at)| at),
        }
    }
}

impl Store for WatchedStore {
    fn load(&self) -> Result<Records, StoreError> {
        self.inner.load()
    }

    fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        let result = self.inner.commit(changes);
        *self.failed() = result.as_ref().err().map(|e| (e.to_string(), crate::health::unix_ms()));
        result
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn check(&self) -> Result<(), StoreError> {
        self.inner.check()
    }
}

/// The embedded default: one redb file under the state directory, durable on every commit.
pub struct RedbStore {
    db: redb::Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbStore")
    }
}

impl RedbStore {
    pub const FILE: &'static str = "state.redb";

    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|source| StoreError::CreateDir { path: state_dir.to_owned(), source })?;
        // Only root reads the state, whoever created the directory and whatever the umask.
        restrict(state_dir, 0o700)?;
        let path = state_dir.join(Self::FILE);
        let db =
            redb::Database::create(&path).map_err(|e| StoreError::Open { path: path.clone(), source: boxed(e) })?;
        restrict(&path, 0o600)?;
        // Create the tables up front so reads never meet a missing table.
        let txn = db.begin_write().map_err(|e| StoreError::Open { path: path.clone(), source: boxed(e) })?;
        for table in Table::ALL {
            txn.open_table(table.definition())
                .map_err(|e| StoreError::Open { path: path.clone(), source: boxed(e) })?;
        }
        txn.commit().map_err(|e| StoreError::Open { path: path.clone(), source: boxed(e) })?;
        Ok(RedbStore { db, path })
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Records, StoreError> {
        let txn = self.db.begin_read().map_err(|e| StoreError::Read(boxed(e)))?;
        let mut records = Records::new();
        for table in Table::ALL {
            let handle = txn.open_table(table.definition()).map_err(|e| StoreError::Read(boxed(e)))?;
            let rows = records.entry(table).or_default();
            for row in handle.iter().map_err(|e| StoreError::Read(boxed(e)))? {
                let (key, value) = row.map_err(|e| StoreError::Read(boxed(e)))?;
                rows.insert(key.value().to_owned(), value.value().to_vec());
            }
        }
        Ok(records)
    }

    fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| StoreError::Commit(boxed(e)))?;
        for table in Table::ALL {
            let mut handle = txn.open_table(table.definition()).map_err(|e| StoreError::Commit(boxed(e)))?;
            for change in changes.iter().filter(|c| c.table == table) {
                match &change.value {
                    Some(value) => handle.insert(change.key.as_str(), value.as_slice()).map(|_| ()),
                    None => handle.remove(change.key.as_str()).map(|_| ()),
                }
                .map_err(|e| StoreError::Commit(boxed(e)))?;
            }
        }
        txn.commit().map_err(|e| StoreError::Commit(boxed(e)))
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn check(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(|e| StoreError::Read(boxed(e)))?;
        txn.open_table(Table::Meta.definition()).map_err(|e| StoreError::Read(boxed(e)))?;
        Ok(())
    }
}

/// In-memory store for tests; can be told to fail commits.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<Records>,
    fail_commits: Mutex<bool>,
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    pub fn fail_commits(&self, fail: bool) {
        *self.fail_commits.lock().unwrap_or_else(|p| p.into_inner()) = fail;
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Records, StoreError> {
        Ok(self.records.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        if *self.fail_commits.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(StoreError::Commit(Box::new(redb::Error::Io(std::io::Error::other("injected failure")))));
        }
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        for change in changes {
            let rows = records.entry(change.table).or_default();
            match &change.value {
                Some(value) => rows.insert(change.key.clone(), value.clone()),
                None => rows.remove(&change.key),
            };
        }
        Ok(())
    }
}

/// Sets the permission bits of `path` to `mode`.
fn restrict(path: &Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| StoreError::Permissions { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("a/state");
        std::fs::create_dir_all(&state).expect("mkdir");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        RedbStore::open(&state).expect("open");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700, "an existing directory is tightened");
        assert_eq!(mode(&state.join(RedbStore::FILE)), 0o600);
        std::fs::set_permissions(state.join(RedbStore::FILE), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        RedbStore::open(&state).expect("open again");
        assert_eq!(mode(&state.join(RedbStore::FILE)), 0o600, "and so is an existing file");
    }

    fn put(table: Table, key: &str, value: &str) -> Change {
        Change { table, key: key.into(), value: Some(value.as_bytes().to_vec()) }
    }

    #[test]
    fn redb_commits_survive_reopen_and_deletes_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = RedbStore::open(dir.path()).expect("open");
            store
                .commit(&[
                    put(Table::Networks, "n1", "a"),
                    put(Table::Pools, "p1", "b"),
                    put(Table::Endpoints, "e1", "c"),
                ])
                .expect("commit");
            store.commit(&[Change { table: Table::Endpoints, key: "e1".into(), value: None }]).expect("delete");
        }
        let store = RedbStore::open(dir.path()).expect("reopen");
        let records = store.load().expect("load");
        assert_eq!(records[&Table::Networks]["n1"], b"a");
        assert_eq!(records[&Table::Pools]["p1"], b"b");
        assert!(records[&Table::Endpoints].is_empty());
    }

    #[test]
    fn a_watched_store_reports_its_last_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let redb = RedbStore::open(dir.path()).expect("open");
        assert!(redb.check().is_ok());
        assert!(redb.location().ends_with("state.redb"), "{}", redb.location());

        let memory = std::sync::Arc::new(MemoryStore::new());
        let watched = WatchedStore::new(memory.clone());
        assert!(watched.health().ok);
        memory.fail_commits(true);
        assert!(watched.commit(&[put(Table::Meta, "k", "v")]).is_err());
        let health = watched.health();
        assert!(!health.ok && health.error.as_deref().is_some_and(|e| e.contains("injected failure")), "{health:?}");
        memory.fail_commits(false);
        watched.commit(&[put(Table::Meta, "k", "v")]).expect("commit");
        assert_eq!(watched.health(), StoreHealth { location: "memory".into(), ok: true, error: None, error_at: None });
    }

    #[test]
    fn memory_store_can_fail_without_applying_anything() {
        let store = MemoryStore::new();
        store.fail_commits(true);
        assert!(store.commit(&[put(Table::Meta, "k", "v")]).is_err());
        store.fail_commits(false);
        assert!(store.load().expect("load").is_empty());
    }
}
