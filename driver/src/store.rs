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
}

impl<S: Store> Store for std::sync::Arc<S> {
    fn load(&self) -> Result<Records, StoreError> {
        (**self).load()
    }

    fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        (**self).commit(changes)
    }
}

/// The embedded default: one redb file under the state directory, durable on every commit.
pub struct RedbStore {
    db: redb::Database,
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
        let path = state_dir.join(Self::FILE);
        let db =
            redb::Database::create(&path).map_err(|e| StoreError::Open { path: path.clone(), source: boxed(e) })?;
        // Create the tables up front so reads never meet a missing table.
        let txn = db.begin_write().map_err(|e| StoreError::Open { path: path.clone(), source: boxed(e) })?;
        for table in Table::ALL {
            txn.open_table(table.definition())
                .map_err(|e| StoreError::Open { path: path.clone(), source: boxed(e) })?;
        }
        txn.commit().map_err(|e| StoreError::Open { path, source: boxed(e) })?;
        Ok(RedbStore { db })
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn memory_store_can_fail_without_applying_anything() {
        let store = MemoryStore::new();
        store.fail_commits(true);
        assert!(store.commit(&[put(Table::Meta, "k", "v")]).is_err());
        store.fail_commits(false);
        assert!(store.load().expect("load").is_empty());
    }
}
