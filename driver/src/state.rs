//! The daemon's persisted state and its schema: which records live in which table under which
//! key, how they are encoded, and transactions that remember the records they touch, so that a
//! call commits exactly those (in one store transaction) or puts them back as they were.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::endpoint::Endpoint;
use crate::ids::{EndpointId, NetworkId};
use crate::ipam::{self, Ipam, PoolId};
use crate::network::Network;
use crate::store::{Change, Records, Store, StoreError, Table};

/// Unix seconds: the timestamps records carry (reconciliation leaves young records alone).
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Meta key of the IPAM's pool serial counter.
const META_IPAM_SERIAL: &str = "ipam.next_serial";
/// Meta key of the last endpoint number handed out.
const META_NEXT_NUMBER: &str = "endpoints.next_number";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("corrupt state record {table}/{key}: {reason}")]
    Corrupt { table: &'static str, key: String, reason: String },
    #[error("persist state: {0}")]
    Store(#[from] StoreError),
}

/// Everything the daemon must not forget about networks, pools and endpoints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub ipam: Ipam,
    pub networks: BTreeMap<NetworkId, Network>,
    pub endpoints: BTreeMap<EndpointId, Endpoint>,
    /// The last endpoint number handed out.
    pub next_number: u32,
}

impl State {
    /// Decodes the records of the networks, pools, endpoints and meta tables.
    pub fn decode(records: &Records) -> Result<State, StateError> {
        let mut state = State::default();
        for (table, rows) in records {
            for (key, bytes) in rows {
                match table {
                    Table::Pools => {
                        let pool: ipam::Pool = decode(*table, key, bytes)?;
                        state.ipam.pools.insert(pool.id.clone(), pool);
                    }
                    Table::Networks => {
                        let network: Network = decode(*table, key, bytes)?;
                        state.networks.insert(network.id.clone(), network);
                    }
                    Table::Endpoints => {
                        let mut endpoint: Endpoint = decode(*table, key, bytes)?;
                        if let Some(joined) = endpoint.joined.as_mut().filter(|j| j.sandbox == 0) {
                            // Recorded before sandboxes were: alone in its own.
                            joined.sandbox = endpoint.number;
                        }
                        state.endpoints.insert(endpoint.id.clone(), endpoint);
                    }
                    Table::Meta => match key.as_str() {
                        META_IPAM_SERIAL => state.ipam.next_serial = decode(*table, key, bytes)?,
                        META_NEXT_NUMBER => state.next_number = decode(*table, key, bytes)?,
                        _ => {}
                    },
                    Table::Kv | Table::Rules => {}
                }
            }
        }
        Ok(state)
    }

    /// Every record of the networks, pools, endpoints and meta tables, as a commit writes them.
    pub fn records(&self) -> Result<Records, StateError> {
        let mut changes = Vec::new();
        for (id, pool) in &self.ipam.pools {
            changes.push(encode(Table::Pools, &id.0, Some(pool))?);
        }
        for (id, network) in &self.networks {
            changes.push(encode(Table::Networks, id.as_str(), Some(network))?);
        }
        for (id, endpoint) in &self.endpoints {
            changes.push(encode(Table::Endpoints, id.as_str(), Some(endpoint))?);
        }
        changes.push(encode(Table::Meta, META_IPAM_SERIAL, Some(&self.ipam.next_serial))?);
        changes.push(encode(Table::Meta, META_NEXT_NUMBER, Some(&self.next_number))?);
        let mut records = Records::new();
        for change in changes {
            records.entry(change.table).or_default().insert(change.key, change.value.unwrap_or_default());
        }
        Ok(records)
    }

    /// Hands out the next endpoint number no endpoint holds (never 0).
    pub fn take_number(&mut self) -> u32 {
        loop {
            self.next_number = self.next_number.wrapping_add(1);
            let number = self.next_number;
            if number != 0 && !self.endpoints.values().any(|e| e.number == number) {
                return number;
            }
        }
    }
}

fn decode<T: DeserializeOwned>(table: Table, key: &str, bytes: &[u8]) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt {
        table: table.name(),
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(table: Table, key: &str, value: Option<&T>) -> Result<Change, StateError> {
    let value = match value {
        Some(v) => Some(serde_json::to_vec(v).map_err(|e| StateError::Corrupt {
            table: table.name(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?),
        None => None,
    };
    Ok(Change { table, key: key.to_owned(), value })
}

/// A change of the state in progress. Touch a record before changing it; `commit` persists
/// exactly the touched records (and the counters, when they moved) in one store transaction.
/// A transaction dropped without a successful commit puts every touched record back.
pub struct Txn<'a> {
    state: &'a mut State,
    pools: BTreeMap<PoolId, Option<ipam::Pool>>,
    networks: BTreeMap<NetworkId, Option<Network>>,
    endpoints: BTreeMap<EndpointId, Option<Endpoint>>,
    /// The counters before the transaction: (pool serial, endpoint number).
    counters: (u64, u32),
    done: bool,
}

impl<'a> Txn<'a> {
    pub fn new(state: &'a mut State) -> Self {
        let counters = (state.ipam.next_serial, state.next_number);
        Txn {
            state,
            pools: BTreeMap::new(),
            networks: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            counters,
            done: false,
        }
    }

    /// The state as changed so far.
    pub fn state(&self) -> &State {
        self.state
    }

    /// The state, to change records touched before (or counters).
    pub fn state_mut(&mut self) -> &mut State {
        self.state
    }

    /// Remembers pool `id` as it is now (absent included), before it changes.
    pub fn touch_pool(&mut self, id: &PoolId) -> &mut Ipam {
        if !self.pools.contains_key(id) {
            self.pools.insert(id.clone(), self.state.ipam.pools.get(id).cloned());
        }
        &mut self.state.ipam
    }

    pub fn touch_network(&mut self, id: &NetworkId) -> &mut BTreeMap<NetworkId, Network> {
        if !self.networks.contains_key(id) {
            self.networks.insert(id.clone(), self.state.networks.get(id).cloned());
        }
        &mut self.state.networks
    }

    pub fn touch_endpoint(&mut self, id: &EndpointId) -> &mut BTreeMap<EndpointId, Endpoint> {
        if !self.endpoints.contains_key(id) {
            self.endpoints.insert(id.clone(), self.state.endpoints.get(id).cloned());
        }
        &mut self.state.endpoints
    }

    /// Creates a pool (it did not exist before this transaction) and returns its id.
    pub fn create_pool(
        &mut self,
        create: impl FnOnce(&mut Ipam) -> Result<PoolId, ipam::IpamError>,
    ) -> Result<PoolId, ipam::IpamError> {
        let id = create(&mut self.state.ipam)?;
        self.pools.entry(id.clone()).or_insert(None);
        Ok(id)
    }

    /// Whether anything was touched.
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
            && self.networks.is_empty()
            && self.endpoints.is_empty()
            && self.counters == (self.state.ipam.next_serial, self.state.next_number)
    }

    fn changes(&self) -> Result<Vec<Change>, StateError> {
        let mut changes = Vec::new();
        for id in self.pools.keys() {
            changes.push(encode(Table::Pools, &id.0, self.state.ipam.pools.get(id))?);
        }
        for id in self.networks.keys() {
            changes.push(encode(Table::Networks, id.as_str(), self.state.networks.get(id))?);
        }
        for id in self.endpoints.keys() {
            changes.push(encode(Table::Endpoints, id.as_str(), self.state.endpoints.get(id))?);
        }
        if self.counters != (self.state.ipam.next_serial, self.state.next_number) {
            changes.push(encode(Table::Meta, META_IPAM_SERIAL, Some(&self.state.ipam.next_serial))?);
            changes.push(encode(Table::Meta, META_NEXT_NUMBER, Some(&self.state.next_number))?);
        }
        Ok(changes)
    }

    /// Persists the touched records in one transaction; on failure everything is put back.
    pub fn commit(mut self, store: &dyn Store) -> Result<(), StateError> {
        let changes = self.changes()?;
        let started = std::time::Instant::now();
        store.commit(&changes)?;
        tracing::debug!(records = changes.len(), commit_us = started.elapsed().as_micros() as u64, "state committed");
        self.done = true;
        Ok(())
    }

    fn restore(&mut self) {
        for (id, before) in std::mem::take(&mut self.pools) {
            match before {
                Some(pool) => self.state.ipam.pools.insert(id, pool),
                None => self.state.ipam.pools.remove(&id),
            };
        }
        for (id, before) in std::mem::take(&mut self.networks) {
            match before {
                Some(network) => self.state.networks.insert(id, network),
                None => self.state.networks.remove(&id),
            };
        }
        for (id, before) in std::mem::take(&mut self.endpoints) {
            match before {
                Some(endpoint) => self.state.endpoints.insert(id, endpoint),
                None => self.state.endpoints.remove(&id),
            };
        }
        (self.state.ipam.next_serial, self.state.next_number) = self.counters;
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.restore();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::{IpamConfig, PoolRequest};
    use crate::store::MemoryStore;

    fn pool_request() -> PoolRequest {
        PoolRequest { v6: false, subnet: Some("10.9.0.0/24".parse().unwrap()), range: None, internal: false }
    }

    #[test]
    fn commit_writes_only_touched_records_and_reloads_equal() {
        let store = MemoryStore::new();
        let mut state = State::default();
        let mut txn = Txn::new(&mut state);
        let id = txn
            .create_pool(|ipam| Ok(ipam.request_pool(&IpamConfig::default(), &pool_request(), &[], 1)?.id.clone()))
            .unwrap();
        txn.commit(&store).unwrap();
        let mut txn = Txn::new(&mut state);
        txn.touch_pool(&id).request_address(&id, None, ipam::AllocationKind::Address, 2).unwrap();
        let changes = txn.changes().unwrap();
        assert_eq!(changes.len(), 1, "one pool touched, counters unchanged: {changes:?}");
        txn.commit(&store).unwrap();
        assert_eq!(State::decode(&store.load().unwrap()).unwrap(), state);
    }

    #[test]
    fn a_failed_or_abandoned_transaction_puts_every_record_back() {
        let store = MemoryStore::new();
        let mut state = State::default();
        let before = state.clone();
        store.fail_commits(true);
        let mut txn = Txn::new(&mut state);
        txn.create_pool(|ipam| Ok(ipam.request_pool(&IpamConfig::default(), &pool_request(), &[], 1)?.id.clone()))
            .unwrap();
        txn.state_mut().take_number();
        assert!(txn.commit(&store).is_err());
        assert_eq!(state, before, "full record comparison after a failed commit");

        store.fail_commits(false);
        let mut txn = Txn::new(&mut state);
        txn.create_pool(|ipam| Ok(ipam.request_pool(&IpamConfig::default(), &pool_request(), &[], 1)?.id.clone()))
            .unwrap();
        drop(txn);
        assert_eq!(state, before, "an abandoned transaction leaves nothing behind");
        assert!(store.load().unwrap().values().all(|rows| rows.is_empty()));
    }
}
