//! Per-key async locks: the calls of one endpoint run one at a time (their kernel steps may take
//! milliseconds), calls of other endpoints meanwhile run in parallel.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

#[derive(Debug)]
pub struct KeyedLocks<K> {
    locks: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        KeyedLocks { locks: Mutex::new(HashMap::new()) }
    }
}

/// Held while a call works on one key; the key's entry goes when nobody holds or waits for it.
#[derive(Debug)]
pub struct KeyedGuard<'a, K: Eq + Hash + Clone> {
    owner: &'a KeyedLocks<K>,
    key: K,
    guard: Option<OwnedMutexGuard<()>>,
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    pub async fn lock(&self, key: &K) -> KeyedGuard<'_, K> {
        let lock = self.map().entry(key.clone()).or_default().clone();
        let guard = lock.lock_owned().await;
        KeyedGuard { owner: self, key: key.clone(), guard: Some(guard) }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<tokio::sync::Mutex<()>>>> {
        self.locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether no key has a holder or a waiter.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

impl<K: Eq + Hash + Clone> Drop for KeyedGuard<'_, K> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.owner.map();
        // Only the map holds it: no holder, no waiter.
        if map.get(&self.key).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_holder_per_key_and_entries_go_away() {
        let locks = Arc::new(KeyedLocks::<u32>::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (locks, inside) = (locks.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                let _held = locks.lock(&7).await;
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders of one key");
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        // Another key is not blocked by key 7.
        let other = locks.lock(&8).await;
        drop(other);
        for task in tasks {
            task.await.unwrap();
        }
        assert!(locks.is_empty());
    }
}
