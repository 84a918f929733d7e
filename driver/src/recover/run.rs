//! The `state recover` command's work on the host: makes sure no daemon holds the state,
//! reads what survives, writes the rebuilt state file and keeps the one it replaces.

use std::path::{Path, PathBuf};

use crate::ipam::IpamConfig;
use crate::state::now;
use crate::state_file;
use crate::store::{self, Records, RedbStore, Store, StoreError};

use super::survivors::{self, Survivors};
use super::RecoverReport;

/// Where the state and the survivors are.
#[derive(Debug, Clone)]
pub struct RecoverOptions {
    pub state_dir: PathBuf,
    pub bpf_root: PathBuf,
    pub docker_socket: PathBuf,
    /// The driver name the daemon serves (Docker's networks of that driver are ours).
    pub plugin: String,
    pub ipam: IpamConfig,
}

/// What the command did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recovered {
    pub state_file: PathBuf,
    /// Where the file it replaced went (`None`: there was none).
    pub replaced: Option<PathBuf>,
    /// What the rebuild started from: the state file itself (readable) or its backup.
    pub base: PathBuf,
    pub report: RecoverReport,
}

/// Rebuilds the state under `options.state_dir`; the daemon must be down.
pub async fn recover(options: &RecoverOptions) -> Result<Recovered, String> {
    let file = options.state_dir.join(RedbStore::FILE);
    let backup = state_file::backup_path(&file);
    // A readable state file is the better base (it is newer than its backup).
    let (base, base_path) = match RedbStore::open(&options.state_dir) {
        Ok(store) => (store.load().map_err(|e| e.to_string())?, file.clone()),
        Err(e @ StoreError::InUse { .. }) => return Err(format!("{e}: stop the daemon before recovering its state")),
        Err(e) if e.needs_recovery() => match store::read_file(&backup) {
            Ok(records) => (records.unwrap_or_default(), backup.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "the backup cannot be read either: rebuilding from Docker and the kernel");
                (Records::new(), backup.clone())
            }
        },
        Err(e) => return Err(e.to_string()),
    };
    let networks = survivors::docker_networks(&options.docker_socket, &options.plugin).await?;
    let (kernel, ports) = survivors::kernel_endpoints(&options.bpf_root, &networks).await?;
    let survivors = Survivors { backup: base, networks, kernel, ports };
    let (records, report) = super::rebuild(&survivors, &options.ipam, now()).map_err(|e| e.to_string())?;
    let replaced = set_aside(&file)?;
    store::write_records(&file, &records).map_err(|e| e.to_string())?;
    // Opening it checks it and writes the schema marker.
    drop(RedbStore::open(&options.state_dir).map_err(|e| e.to_string())?);
    Ok(Recovered { state_file: file, replaced, base: base_path, report })
}

/// Moves the state file out of the way (kept, named by the time); `None` when there is none.
fn set_aside(file: &Path) -> Result<Option<PathBuf>, String> {
    if std::fs::symlink_metadata(file).is_err() {
        return Ok(None);
    }
    let aside = state_file::set_aside_path(file, now());
    std::fs::rename(file, &aside).map_err(|e| format!("move {} aside: {e}", file.display()))?;
    Ok(Some(aside))
}
