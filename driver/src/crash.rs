//! Crash points, for the tests that prove a crash between two steps leaves a state the next
//! start repairs: with `CILIUM_RS_CRASH_AT=<point>` and `CILIUM_RS_CRASH_MARKER=<file>` in its
//! environment, the daemon aborts at that point the first time it gets there (the marker file
//! says it did, so the daemon started after it runs through), as a kill -9 there would. Unset,
//! a point costs one comparison.

use std::path::PathBuf;
use std::sync::OnceLock;

/// Every crash point, in the order of the steps they follow.
pub const POINTS: &[&str] = &[
    "create_endpoint.committed",
    "join.applied",
    "join.committed",
    "leave.applied",
    "leave.committed",
    "delete_endpoint.kernel",
    "delete_endpoint.committed",
    "policy.applied",
    "policy.committed",
    "reconcile.endpoints",
];

fn armed() -> Option<&'static (String, PathBuf)> {
    static ARMED: OnceLock<Option<(String, PathBuf)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let at = std::env::var("CILIUM_RS_CRASH_AT").ok()?;
            let marker = std::env::var_os("CILIUM_RS_CRASH_MARKER")?;
            POINTS.contains(&at.as_str()).then(|| (at, PathBuf::from(marker)))
        })
        .as_ref()
}

/// Aborts the process here when this is the armed point and it has not crashed here before.
pub fn point(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "unknown crash point {name}");
    let Some((at, marker)) = armed() else { return };
    if at == name && !marker.exists() && std::fs::write(marker, name).is_ok() {
        tracing::error!(point = name, "crash point reached: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn points_are_unique() {
        let mut points = super::POINTS.to_vec();
        points.sort_unstable();
        points.dedup();
        assert_eq!(points.len(), super::POINTS.len());
    }
}
