//! Pin trees of other layout versions (`<bpf-root>/v<N>/` with N ≠ CRS_LAYOUT_VERSION): found and
//! removed once this daemon's programs are attached, so nothing stays attached twice and no
//! stale maps are left pinned after an upgrade.
//!
//! Their maps are not migrated: the daemon rebuilds every entry it owns from its own state, and
//! what the programs own (connection tracking, fragments, counters) starts afresh. In tcx mode an
//! old tree's pinned links still hold the old programs on the interfaces; while both are attached
//! the older link runs first and decides (tcx stops at the first program that does not return
//! "next"), and unpinning it here detaches it. In tc mode attaching replaced the old program
//! inside the same filter already.

use std::io;
use std::path::{Path, PathBuf};

use bpf_programs::abi::CRS_LAYOUT_VERSION;

use super::bpf::{unpin_link, BpfError};

/// Version directories under `bpf_root` other than the current one, by path.
pub fn other_layouts(bpf_root: &Path) -> Result<Vec<PathBuf>, BpfError> {
    let entries = match std::fs::read_dir(bpf_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(BpfError::Io { op: "list", path: bpf_root.to_path_buf(), source }),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| BpfError::Io { op: "list", path: bpf_root.to_path_buf(), source })?;
        let name = entry.file_name();
        let Some(version) = name.to_str().and_then(|n| n.strip_prefix('v')).and_then(|v| v.parse::<u32>().ok()) else {
            continue;
        };
        if version != CRS_LAYOUT_VERSION && entry.path().is_dir() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Removes one version tree: its link pins first (releasing each link detaches its program),
/// then its map pins and directories. Returns the number of pins removed.
pub fn remove_layout(tree: &Path) -> Result<usize, BpfError> {
    let mut removed = 0;
    let links = tree.join("links");
    for pin in files(&links)? {
        unpin_link(&pin)?;
        removed += 1;
    }
    removed += files(&tree.join("maps"))?.len();
    std::fs::remove_dir_all(tree).map_err(|source| BpfError::Io { op: "remove", path: tree.to_path_buf(), source })?;
    Ok(removed)
}

fn files(dir: &Path) -> Result<Vec<PathBuf>, BpfError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()).map_err(|source| BpfError::Io { op: "list", path: dir.to_path_buf(), source }))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(BpfError::Io { op: "list", path: dir.to_path_buf(), source }),
    }
}
