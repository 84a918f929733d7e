//! The plugin calls in flight, each kept in a file while it runs, so that the daemon started
//! after a crash can answer dockerd's retry of one. dockerd 20.10 retries a call whose
//! connection broke with an empty body (the first attempt consumed it); the retry is given the
//! body of an unanswered call of the same method when which one cannot matter: there was one,
//! their bodies are the same, or the method's answer is the same for every call (`{}`).
//! Anything else is refused as an empty body is.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// dockerd gives up retrying after 30 s: unanswered calls older than this are no one's.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// Methods that answer `{}` to every call: retries may take the unanswered calls in any order.
const SAME_ANSWER: &[&str] = &[
    "NetworkDriver.CreateNetwork",
    "NetworkDriver.DeleteNetwork",
    "NetworkDriver.Leave",
    "NetworkDriver.DeleteEndpoint",
    "NetworkDriver.ProgramExternalConnectivity",
    "NetworkDriver.RevokeExternalConnectivity",
    "IpamDriver.ReleasePool",
    "IpamDriver.ReleaseAddress",
];

/// The journal of calls in flight (a directory, one file per call).
#[derive(Debug)]
pub struct InFlight {
    dir: PathBuf,
    next: AtomicU64,
    /// The calls the previous daemon left unanswered, by method, oldest first.
    orphans: Mutex<BTreeMap<String, VecDeque<Vec<u8>>>>,
    opened: Instant,
}

/// A call written down; its file goes when this is dropped (the call answered).
#[derive(Debug)]
pub struct Recorded(Option<PathBuf>);

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl InFlight {
    /// Opens the journal in `dir` (created 0700), taking in what an earlier daemon left there.
    pub fn open(dir: &Path) -> std::io::Result<InFlight> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let mut left: Vec<(u64, String, Vec<u8>)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            // <seq>-<method>
            if let Some((seq, method)) = name.split_once('-') {
                if let (Ok(seq), Ok(body)) = (seq.parse(), std::fs::read(&path)) {
                    left.push((seq, method.to_owned(), body));
                }
            }
            std::fs::remove_file(&path)?;
        }
        left.sort();
        let mut orphans: BTreeMap<String, VecDeque<Vec<u8>>> = BTreeMap::new();
        for (_, method, body) in left {
            orphans.entry(method).or_default().push_back(body);
        }
        if !orphans.is_empty() {
            let calls: Vec<String> = orphans.iter().map(|(m, b)| format!("{m} x{}", b.len())).collect();
            tracing::info!(calls = %calls.join(", "), "calls the previous daemon left unanswered: dockerd's retries get their bodies");
        }
        Ok(InFlight {
            dir: dir.to_owned(),
            next: AtomicU64::new(0),
            orphans: Mutex::new(orphans),
            opened: Instant::now(),
        })
    }

    /// Writes a call down until it is answered (a failure to write only loses the replay).
    pub fn record(&self, method: &str, body: &[u8]) -> Recorded {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{seq:020}-{method}"));
        match std::fs::write(&path, body) {
            Ok(()) => Recorded(Some(path)),
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "write down a call in flight");
                Recorded(None)
            }
        }
    }

    /// The body for an empty-bodied retry of `method`, when it is certain which call it is.
    pub fn replay(&self, method: &str) -> Option<Vec<u8>> {
        if self.opened.elapsed() > FORGET_AFTER {
            return None;
        }
        let mut orphans = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        let calls = orphans.get_mut(method)?;
        let interchangeable =
            calls.len() == 1 || SAME_ANSWER.contains(&method) || calls.iter().all(|b| Some(b) == calls.front());
        if !interchangeable {
            tracing::warn!(method, unanswered = calls.len(), "an empty retry could be any of several calls: refused");
            return None;
        }
        let body = calls.pop_front();
        if calls.is_empty() {
            orphans.remove(method);
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_gets_the_body_of_the_call_the_previous_daemon_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let journal = InFlight::open(dir.path()).expect("open");
            let answered = journal.record("NetworkDriver.Join", b"{\"EndpointID\":\"a\"}");
            drop(answered);
            std::mem::forget(journal.record("NetworkDriver.Join", b"{\"EndpointID\":\"b\"}"));
            std::mem::forget(journal.record("NetworkDriver.Leave", b"{\"EndpointID\":\"c\"}"));
            std::mem::forget(journal.record("NetworkDriver.Leave", b"{\"EndpointID\":\"d\"}"));
            std::mem::forget(journal.record("NetworkDriver.CreateEndpoint", b"{\"EndpointID\":\"e\"}"));
            std::mem::forget(journal.record("NetworkDriver.CreateEndpoint", b"{\"EndpointID\":\"f\"}"));
        }
        let journal = InFlight::open(dir.path()).expect("reopen");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0, "taken in, then removed");
        assert_eq!(journal.replay("NetworkDriver.Join").as_deref(), Some(&b"{\"EndpointID\":\"b\"}"[..]));
        assert_eq!(journal.replay("NetworkDriver.Join"), None, "answered calls are not replayed");
        assert_eq!(journal.replay("NetworkDriver.Leave").as_deref(), Some(&b"{\"EndpointID\":\"c\"}"[..]));
        assert_eq!(journal.replay("NetworkDriver.Leave").as_deref(), Some(&b"{\"EndpointID\":\"d\"}"[..]));
        assert_eq!(journal.replay("NetworkDriver.CreateEndpoint"), None, "two different answers: refused");
        assert_eq!(journal.replay("IpamDriver.RequestPool"), None);
    }
}
