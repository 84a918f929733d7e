//! The state file's safety net: what is wrong with it before the store opens it (empty, not a
//! file, gone while its backup is there), calls into the store library that cannot crash the
//! daemon on hostile bytes, and where the backups and set-aside files live.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Once;

use crate::store::StoreError;

/// The copy of the last state the daemon started on, next to the state file.
pub fn backup_path(state_file: &Path) -> PathBuf {
    with_suffix(state_file, "bak")
}

/// The copy taken before the records move to schema `to` (kept: one per migration).
pub fn migration_backup_path(state_file: &Path, from: u32) -> PathBuf {
    with_suffix(state_file, &format!("schema{from}.bak"))
}

/// Where `state recover` moves the state file it replaces (named by the time it did).
pub fn set_aside_path(state_file: &Path, unix_seconds: u64) -> PathBuf {
    with_suffix(state_file, &format!("replaced-{unix_seconds}"))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// What is wrong with the state file that the store library would not say (it takes an empty
/// file for a new database): `Ok(true)` when it exists, `Ok(false)` on a host that never had one.
pub fn precheck(state_file: &Path) -> Result<bool, StoreError> {
    match std::fs::symlink_metadata(state_file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let backup = backup_path(state_file);
            if backup.exists() {
                return Err(StoreError::Missing { path: state_file.to_owned(), backup });
            }
            Ok(false)
        }
        Err(source) => Err(StoreError::Inspect { path: state_file.to_owned(), source }),
        Ok(meta) if !meta.file_type().is_file() => {
            Err(StoreError::damaged(state_file, "is not a regular file".to_owned()))
        }
        Ok(meta) if meta.len() == 0 => Err(StoreError::damaged(state_file, "is empty (0 bytes)".to_owned())),
        Ok(_) => Ok(true),
    }
}

thread_local! {
    /// Set while this thread runs a call that may panic on purpose-built bytes.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `call` on the possibly damaged state file `path`: a panic inside the store library
/// becomes a `Damaged` error (and prints nothing), whatever bytes the file holds.
pub fn contained<T>(path: &Path, call: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    CONTAINED.with(|c| c.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(call));
    CONTAINED.with(|c| c.set(false));
    result.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".to_owned());
        Err(StoreError::damaged(path, format!("cannot be read (the store library gave up on it: {what})")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_sit_next_to_the_state_file() {
        let file = Path::new("/var/lib/cilium-rs/state.redb");
        assert_eq!(backup_path(file), Path::new("/var/lib/cilium-rs/state.redb.bak"));
        assert_eq!(migration_backup_path(file, 1), Path::new("/var/lib/cilium-rs/state.redb.schema1.bak"));
        assert_eq!(set_aside_path(file, 7), Path::new("/var/lib/cilium-rs/state.redb.replaced-7"));
    }

    #[test]
    fn empty_files_and_vanished_ones_with_a_backup_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("state.redb");
        assert!(!precheck(&file).expect("a new host"), "no file, no backup: a new host");
        std::fs::write(&file, b"").expect("write");
        let err = precheck(&file).expect_err("empty").to_string();
        assert!(err.contains("is empty (0 bytes)") && err.contains("state recover"), "{err}");
        std::fs::remove_file(&file).expect("rm");
        std::fs::write(backup_path(&file), b"x").expect("backup");
        let err = precheck(&file).expect_err("gone with a backup").to_string();
        assert!(err.contains("is missing") && err.contains("state.redb.bak"), "{err}");
        std::fs::create_dir(&file).expect("mkdir");
        assert!(precheck(&file).expect_err("a directory").to_string().contains("not a regular file"));
    }

    #[test]
    fn a_panic_becomes_a_damaged_error() {
        let path = Path::new("/x/state.redb");
        let err = contained::<()>(path, || panic!("entered unreachable code")).expect_err("caught");
        let text = err.to_string();
        assert!(text.contains("/x/state.redb") && text.contains("entered unreachable code"), "{text}");
        assert_eq!(contained(path, || Ok(5)).expect("no panic"), 5);
    }
}
