//! Persisted state: a small key-value trait with an embedded transactional backend (redb) and
//! an in-memory one for tests. Every change of one plugin call commits atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::state_file;

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
    #[error(
        "the state file {path} {problem}. The daemon does not start on it, so that no running container \
         loses its addresses or policy (the datapath keeps forwarding). Rebuild it from its backup, the \
         kernel and Docker with `cilium-rs state recover --state-dir {}` (the damaged file is kept)",
        state_dir(path)
    )]
    Damaged { path: PathBuf, problem: String },
    #[error(
        "the state file {path} is missing but its backup {backup} is there: the state was removed. Rebuild it \
         with `cilium-rs state recover --state-dir {}`, or remove the backup too to start with no state",
        state_dir(path)
    )]
    Missing { path: PathBuf, backup: PathBuf },
    #[error("the state file {path} is open in another process: is another cilium-rs daemon running?")]
    InUse { path: PathBuf },
    #[error("inspect {path}: {source}")]
    Inspect { path: PathBuf, source: std::io::Error },
    #[error("back up the state to {path}: {source}")]
    Backup { path: PathBuf, source: Box<redb::Error> },
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

impl StoreError {
    pub fn damaged(path: &Path, problem: String) -> StoreError {
        StoreError::Damaged { path: path.to_owned(), problem }
    }

    /// Whether the state file itself is the trouble (the operator must recover it).
    pub fn needs_recovery(&self) -> bool {
        matches!(self, StoreError::Damaged { .. } | StoreError::Missing { .. })
    }
}

fn state_dir(state_file: &Path) -> String {
    state_file.parent().unwrap_or(Path::new(".")).display().to_string()
}

/// An error of the store library while opening `path`: the file's fault or the host's.
fn opening_error(path: &Path, error: impl Into<redb::Error>) -> StoreError {
    match error.into() {
        redb::Error::DatabaseAlreadyOpen => StoreError::InUse { path: path.to_owned() },
        redb::Error::Io(e)
            if !matches!(e.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof) =>
        {
            StoreError::Open { path: path.to_owned(), source: Box::new(redb::Error::Io(e)) }
        }
        other => StoreError::damaged(path, format!("is damaged: {other}")),
    }
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
    db: Arc<redb::Database>,
    path: PathBuf,
    /// Copies the state aside after policy changes, off the caller's path (see `commit`).
    backups: OnceLock<Backups>,
}

/// A thread that writes `state.redb.bak` whenever asked: once a burst of requests has been
/// quiet for [`BACKUP_QUIET`] (or has gone on for [`BACKUP_LATEST`]), once for all of them, at a
/// lower CPU priority than the daemon's calls. A full copy takes tens of milliseconds with
/// 10,000 rules; written while the next change of a burst ran, it slowed that change down.
/// Dropping it writes the last requested copy at once.
struct Backups {
    requests: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long the policy must stay unchanged before its backup is written.
const BACKUP_QUIET: Duration = Duration::from_millis(250);
/// How long a backup waits at most, however long the changes go on.
const BACKUP_LATEST: Duration = Duration::from_secs(2);
/// The backup thread's nice value (the daemon's threads keep 0).
const BACKUP_NICE: libc::c_int = 10;

impl Backups {
    fn start(db: Arc<redb::Database>, to: PathBuf) -> Backups {
        let (requests, pending) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("state-backup".to_owned())
            .spawn(move || {
                // SAFETY: setpriority has no memory effects; on Linux it takes a thread's id.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, BACKUP_NICE) };
                while pending.recv().is_ok() {
                    let first = Instant::now();
                    while first.elapsed() < BACKUP_LATEST && pending.recv_timeout(BACKUP_QUIET).is_ok() {}
                    if let Err(e) = load_records(&db).and_then(|records| write_records(&to, &records)) {
                        tracing::warn!(error = %e, "back up the state after a policy change");
                    }
                }
            })
            .ok();
        Backups { requests: Some(requests), thread }
    }

    fn request(&self) {
        if let Some(requests) = &self.requests {
            let _ = requests.send(());
        }
    }
}

impl Drop for Backups {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbStore")
    }
}

/// Meta key of the records' schema version (absent: 0, before the key existed).
const META_SCHEMA: &str = "store.schema";
/// The records' schema this build writes.
pub const SCHEMA: u32 = 1;

impl RedbStore {
    pub const FILE: &'static str = "state.redb";

    /// Opens the state under `state_dir` (creating it on a new host), refusing a damaged,
    /// empty or vanished file with the way out; every record is read once here, so damage
    /// shows now and not in the middle of a plugin call. Before the schema moves on, the old
    /// file is copied aside.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|source| StoreError::CreateDir { path: state_dir.to_owned(), source })?;
        // Only root reads the state, whoever created the directory and whatever the umask.
        restrict(state_dir, 0o700)?;
        let path = state_dir.join(Self::FILE);
        let existed = state_file::precheck(&path)?;
        let store = state_file::contained(&path, || {
            let db = redb::Database::create(&path).map_err(|e| opening_error(&path, e))?;
            let store = RedbStore { db: Arc::new(db), path: path.clone(), backups: OnceLock::new() };
            store.create_tables()?;
            let schema = store.load().map_err(|e| StoreError::damaged(&path, format!("cannot be read: {e}")))?;
            Ok((store, schema_of(&schema)))
        });
        let (store, schema) = store?;
        restrict(&path, 0o600)?;
        if schema != Some(SCHEMA) {
            if existed {
                store.back_up(&state_file::migration_backup_path(&path, schema.unwrap_or(0)))?;
            }
            let version = serde_json::to_vec(&SCHEMA).unwrap_or_default();
            store.commit(&[Change { table: Table::Meta, key: META_SCHEMA.to_owned(), value: Some(version) }])?;
        }
        Ok(store)
    }

    /// Creates the tables up front so reads never meet a missing table.
    fn create_tables(&self) -> Result<(), StoreError> {
        let open_error = |e| opening_error(&self.path, e);
        let txn = self.db.begin_write().map_err(open_error)?;
        for table in Table::ALL {
            txn.open_table(table.definition()).map_err(|e| opening_error(&self.path, e))?;
        }
        txn.commit().map_err(|e| opening_error(&self.path, e))
    }

    /// The last good state: a copy of every record at `to` (written aside, synced, then
    /// renamed over the previous copy), readable by its owner only.
    pub fn back_up(&self, to: &Path) -> Result<(), StoreError> {
        write_records(to, &self.load()?)
    }

    /// The file the records live in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    #[cfg(test)]
    fn open_at(path: &Path) -> RedbStore {
        RedbStore {
            db: Arc::new(redb::Database::open(path).expect("open")),
            path: path.to_owned(),
            backups: OnceLock::new(),
        }
    }
}

/// Every record of the state file at `path` (a backup, say), never writing to it; `None` when
/// there is no such file.
pub fn read_file(path: &Path) -> Result<Option<Records>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    state_file::contained(path, || {
        let db = redb::Database::open(path).map_err(|e| opening_error(path, e))?;
        load_records(&db).map(Some).map_err(|e| StoreError::damaged(path, format!("cannot be read: {e}")))
    })
}

/// The schema version the records carry (`None`: a file that never had one written).
fn schema_of(records: &Records) -> Option<u32> {
    let bytes = records.get(&Table::Meta)?.get(META_SCHEMA)?;
    serde_json::from_slice(bytes).ok()
}

/// Every record of an open state file.
fn load_records(db: &redb::Database) -> Result<Records, StoreError> {
    let txn = db.begin_read().map_err(|e| StoreError::Read(boxed(e)))?;
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

/// Writes `records` as a new state file at `to`, replacing what is there only once the new
/// file is complete on disk.
pub fn write_records(to: &Path, records: &Records) -> Result<(), StoreError> {
    // One writer at a time: the backup thread and a copy made at start share the partial file.
    static WRITING: Mutex<()> = Mutex::new(());
    let _writing = WRITING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let backup_error = |source: redb::Error| StoreError::Backup { path: to.to_owned(), source: Box::new(source) };
    let io_error = |e: std::io::Error| backup_error(redb::Error::Io(e));
    let partial = to.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    {
        let db = redb::Database::create(&partial).map_err(|e| backup_error(e.into()))?;
        let mut txn = db.begin_write().map_err(|e| backup_error(e.into()))?;
        txn.set_durability(redb::Durability::Immediate).map_err(|e| backup_error(e.into()))?;
        for table in Table::ALL {
            let mut handle = txn.open_table(table.definition()).map_err(|e| backup_error(e.into()))?;
            for (key, value) in records.get(&table).into_iter().flatten() {
                handle.insert(key.as_str(), value.as_slice()).map_err(|e| backup_error(e.into()))?;
            }
        }
        txn.commit().map_err(|e| backup_error(e.into()))?;
    }
    restrict(&partial, 0o600)?;
    std::fs::rename(&partial, to).map_err(io_error)?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_error)?;
    }
    Ok(())
}

impl Store for RedbStore {
    fn load(&self) -> Result<Records, StoreError> {
        load_records(&self.db)
    }

    fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(|e| StoreError::Commit(boxed(e)))?;
        // Durable before the call answers: fsync on commit.
        txn.set_durability(redb::Durability::Immediate).map_err(|e| StoreError::Commit(boxed(e)))?;
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
        txn.commit().map_err(|e| StoreError::Commit(boxed(e)))?;
        // Rules exist nowhere else (Docker and the kernel cannot give them back): the backup
        // follows every change of them, written by a thread of its own once the changes pause
        // (the change is durable already).
        if changes.iter().any(|c| c.table == Table::Rules) {
            let backup = || Backups::start(self.db.clone(), state_file::backup_path(&self.path));
            self.backups.get_or_init(backup).request();
        }
        Ok(())
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

    /// Every record but the schema marker.
    fn user_records(store: &RedbStore) -> Records {
        let mut records = store.load().expect("load");
        records.get_mut(&Table::Meta).expect("meta").remove(META_SCHEMA);
        records
    }

    #[test]
    fn random_bytes_are_refused_as_damaged_never_a_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(RedbStore::FILE);
        for size in [1, 17, 512, 4096, 65_536, 262_144] {
            let mut bytes = vec![0u8; size];
            rng.fill(bytes.as_mut_slice());
            std::fs::write(&file, &bytes).expect("write");
            let err = RedbStore::open(dir.path()).expect_err("random bytes are no state");
            assert!(err.needs_recovery(), "{size} random bytes: {err}");
            assert!(err.to_string().contains(&file.display().to_string()), "{err}");
            assert_eq!(std::fs::read(&file).expect("read"), bytes, "the damaged file is left as it was");
        }
    }

    #[test]
    fn damaged_pages_never_crash_the_opener() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let good = tempfile::tempdir().expect("tempdir");
        {
            let store = RedbStore::open(good.path()).expect("open");
            let changes: Vec<Change> =
                (0..200).map(|i| put(Table::Endpoints, &format!("e{i}"), &"x".repeat(i * 7))).collect();
            store.commit(&changes).expect("commit");
        }
        let pristine = std::fs::read(good.path().join(RedbStore::FILE)).expect("read");
        let (mut refused, mut opened) = (0, 0);
        for _ in 0..60 {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut bytes = pristine.clone();
            let at = rng.random_range(0..bytes.len() - 64);
            rng.fill(&mut bytes[at..at + 64]);
            std::fs::write(dir.path().join(RedbStore::FILE), &bytes).expect("write");
            match RedbStore::open(dir.path()) {
                Ok(_) => opened += 1,
                Err(e) if e.needs_recovery() => refused += 1,
                Err(e) => panic!("a damaged file is reported as damaged, not as {e}"),
            }
        }
        assert_eq!(refused + opened, 60, "{refused} refused, {opened} opened");
    }

    #[test]
    fn backups_hold_every_record_and_a_schema_change_keeps_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(RedbStore::FILE);
        // A file from before the schema marker, as earlier builds wrote it.
        write_records(&file, &Records::from([(Table::Networks, BTreeMap::from([("n1".to_owned(), b"a".to_vec())]))]))
            .expect("old file");
        let store = RedbStore::open(dir.path()).expect("open");
        let old = RedbStore::open_at(&state_file::migration_backup_path(&file, 0));
        assert_eq!(user_records(&old), user_records(&store), "the pre-migration copy holds what the file held");
        assert_eq!(schema_of(&store.load().expect("load")), Some(SCHEMA));

        store.commit(&[put(Table::Rules, "r1", "{}"), put(Table::Kv, "k", "v")]).expect("commit");
        let backup = state_file::backup_path(&file);
        store.back_up(&backup).expect("back up");
        assert_eq!(RedbStore::open_at(&backup).load().expect("load"), store.load().expect("load"), "full records");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&backup).expect("stat").permissions()) & 0o777,
            0o600
        );
        drop((store, old));
        std::fs::remove_file(state_file::migration_backup_path(&file, 0)).expect("rm");
        RedbStore::open(dir.path()).expect("reopen");
        assert!(!state_file::migration_backup_path(&file, 0).exists(), "no migration, no copy");
    }

    #[test]
    fn a_policy_change_is_backed_up_off_the_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(RedbStore::FILE);
        let backup = state_file::backup_path(&file);
        let store = RedbStore::open(dir.path()).expect("open");
        store.commit(&[put(Table::Kv, "k", "v")]).expect("commit");
        drop(store);
        assert!(!backup.exists(), "no policy change, no backup");
        let store = RedbStore::open(dir.path()).expect("reopen");
        for i in 0..20 {
            store.commit(&[put(Table::Rules, &format!("r{i}"), "{}")]).expect("commit");
        }
        let records = store.load().expect("load");
        // Dropping the store lets the requested copy finish.
        drop(store);
        assert_eq!(RedbStore::open_at(&backup).load().expect("load"), records, "the backup holds the last state");
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
