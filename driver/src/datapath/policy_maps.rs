//! The maps policy lives in — crs_policy (entries), crs_ipcache (address → identity),
//! crs_config (the policy revision, and the NAT port range beside it) and crs_ct (connection
//! tracking, read for views) — and the conversion between their keys and the domain's policy
//! keys.

use std::net::IpAddr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError};
use aya::Ebpf;
use bpf_programs::abi::{
    self, CtEntry, CtKey, DatapathConfig, IpcacheData, IpcacheValue, PolicyData, PolicyValue, MAP_CONFIG, MAP_CT,
    MAP_IPCACHE, MAP_POLICY, POLICY_F_DENY, POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL,
};
use ipnet::IpNet;

use super::bpf::{is_not_found, take_map, BpfError};
use crate::identity::Identity;
use crate::policy::{Direction, PolicyEntry, PolicyKey, PROTO_ANY};

/// A policy entry read back: its key, or the raw map key when this daemon could not have
/// written it (to be removed).
pub type PolicyRow = (Result<PolicyKey, Key<PolicyData>>, PolicyEntry);

pub struct PolicyMaps {
    policy: LpmTrie<MapData, PolicyData, PolicyValue>,
    ipcache: LpmTrie<MapData, IpcacheData, IpcacheValue>,
    config: Array<MapData, DatapathConfig>,
    ct: HashMap<MapData, CtKey, CtEntry>,
}

impl std::fmt::Debug for PolicyMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyMaps")
    }
}

fn layout(map: &'static str) -> impl Fn(MapError) -> BpfError {
    move |error| BpfError::MapLayout { map, error: Box::new(error) }
}

fn map_error(op: &'static str, map: &'static str, key: String) -> impl FnOnce(MapError) -> BpfError {
    move |error| BpfError::Map { op, map, key, error: Box::new(error) }
}

/// The map key of a policy key: identities and direction in full, then the protocol and the
/// port's first `port_prefix` bits (nothing more when the protocol is any).
pub fn policy_map_key(key: &PolicyKey) -> Key<PolicyData> {
    let (prefix, proto, port) = if key.proto == PROTO_ANY {
        (POLICY_PREFIX_ANY_PROTO, 0, 0)
    } else {
        let bits = u32::from(key.port_prefix.min(16));
        let mask = if bits == 0 { 0 } else { u16::MAX << (16 - bits) };
        (POLICY_PREFIX_FULL - 16 + bits, key.proto, key.port & mask)
    };
    Key::new(
        prefix,
        PolicyData {
            local_identity: key.local.0,
            remote_identity: key.remote.0,
            dir: direction_code(key.direction),
            proto,
            port: port.to_be_bytes(),
        },
    )
}

fn direction_code(direction: Direction) -> u8 {
    match direction {
        Direction::Egress => abi::METRIC_EGRESS,
        Direction::Ingress => abi::METRIC_INGRESS,
    }
}

/// The policy key a map key stands for; `None` for one this daemon would not have written.
pub fn policy_key_of(key: &Key<PolicyData>) -> Option<PolicyKey> {
    let data = key.data();
    let direction = match data.dir {
        abi::METRIC_EGRESS => Direction::Egress,
        abi::METRIC_INGRESS => Direction::Ingress,
        _ => return None,
    };
    let (proto, port, port_prefix) = match key.prefix_len() {
        POLICY_PREFIX_ANY_PROTO => (PROTO_ANY, 0, 0),
        bits if (POLICY_PREFIX_FULL - 16..=POLICY_PREFIX_FULL).contains(&bits) => {
            (data.proto, u16::from_be_bytes(data.port), (bits - (POLICY_PREFIX_FULL - 16)) as u8)
        }
        _ => return None,
    };
    Some(PolicyKey {
        local: Identity(data.local_identity),
        remote: Identity(data.remote_identity),
        direction,
        proto,
        port,
        port_prefix,
    })
}

fn policy_value(entry: &PolicyEntry) -> PolicyValue {
    PolicyValue {
        flags: if entry.deny { POLICY_F_DENY } else { 0 },
        pad: [0; 3],
        rule: u32::try_from(entry.rule).unwrap_or(u32::MAX),
    }
}

fn ipcache_net(key: &Key<IpcacheData>) -> Option<IpNet> {
    let data = key.data();
    let ip = abi::IpKey { family: data.family, pad: [0; 3], addr: data.addr }.ip()?;
    let bits = key.prefix_len().checked_sub(abi::IPCACHE_PREFIX_HEAD)?;
    IpNet::new(ip, u8::try_from(bits).ok()?).ok()
}

impl PolicyMaps {
    /// Takes the maps out of the loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(PolicyMaps {
            policy: LpmTrie::try_from(take_map(ebpf, MAP_POLICY)?).map_err(layout(MAP_POLICY))?,
            ipcache: LpmTrie::try_from(take_map(ebpf, MAP_IPCACHE)?).map_err(layout(MAP_IPCACHE))?,
            config: Array::try_from(take_map(ebpf, MAP_CONFIG)?).map_err(layout(MAP_CONFIG))?,
            ct: HashMap::try_from(take_map(ebpf, MAP_CT)?).map_err(layout(MAP_CT))?,
        })
    }

    pub fn set_policy(&mut self, key: &PolicyKey, entry: &PolicyEntry) -> Result<(), BpfError> {
        self.policy.insert(&policy_map_key(key), policy_value(entry), 0).map_err(map_error(
            "update",
            MAP_POLICY,
            format!("{key:?}"),
        ))
    }

    /// Removes a policy entry; absent is fine.
    pub fn remove_policy(&mut self, key: &PolicyKey) -> Result<(), BpfError> {
        match self.policy.remove(&policy_map_key(key)) {
            Err(error) if !is_not_found(&error) => Err(map_error("delete", MAP_POLICY, format!("{key:?}"))(error)),
            _ => Ok(()),
        }
    }

    /// Every policy entry (a full scan); entries this daemon could not have written are
    /// returned as raw keys for removal.
    pub fn policy_entries(&self) -> Result<Vec<PolicyRow>, BpfError> {
        let mut rows = Vec::new();
        for row in self.policy.iter() {
            let (key, value) = row.map_err(|error| BpfError::MapRead { map: MAP_POLICY, error: Box::new(error) })?;
            let entry = PolicyEntry { deny: value.flags & POLICY_F_DENY != 0, rule: u64::from(value.rule) };
            rows.push((policy_key_of(&key).ok_or(key), entry));
        }
        Ok(rows)
    }

    /// Removes a raw policy map key (one `policy_entries` could not read back).
    pub fn remove_raw_policy(&mut self, key: &Key<PolicyData>) -> Result<(), BpfError> {
        match self.policy.remove(key) {
            Err(error) if !is_not_found(&error) => {
                Err(map_error("delete", MAP_POLICY, format!("{:?}/{}", key.data(), key.prefix_len()))(error))
            }
            _ => Ok(()),
        }
    }

    pub fn set_ipcache(&mut self, net: IpNet, identity: Identity) -> Result<(), BpfError> {
        self.ipcache
            .insert(&IpcacheData::key(net), IpcacheValue { identity: identity.0, flags: 0 }, 0)
            .map_err(map_error("update", MAP_IPCACHE, net.to_string()))
    }

    /// Removes the ipcache entry of exactly `net`; absent is fine.
    pub fn remove_ipcache(&mut self, net: IpNet) -> Result<(), BpfError> {
        match self.ipcache.remove(&IpcacheData::key(net)) {
            Err(error) if !is_not_found(&error) => Err(map_error("delete", MAP_IPCACHE, net.to_string())(error)),
            _ => Ok(()),
        }
    }

    /// Every ipcache entry (a full scan); unreadable keys are skipped.
    pub fn ipcache_entries(&self) -> Result<Vec<(IpNet, Identity)>, BpfError> {
        let mut rows = Vec::new();
        for row in self.ipcache.iter() {
            let (key, value) = row.map_err(|error| BpfError::MapRead { map: MAP_IPCACHE, error: Box::new(error) })?;
            if let Some(net) = ipcache_net(&key) {
                rows.push((net, Identity(value.identity)));
            }
        }
        rows.sort();
        Ok(rows)
    }

    /// The identity the datapath gives `ip` (longest match; world when nothing covers it).
    pub fn identity_of(&self, ip: IpAddr) -> Result<Identity, BpfError> {
        match self.ipcache.get(&IpcacheData::key(IpNet::from(ip)), 0) {
            Ok(value) => Ok(Identity(value.identity)),
            Err(error) if is_not_found(&error) => Ok(Identity::WORLD),
            Err(error) => Err(map_error("look up", MAP_IPCACHE, ip.to_string())(error)),
        }
    }

    pub fn revision(&self) -> Result<u32, BpfError> {
        Ok(self.config()?.policy_revision)
    }

    pub fn set_revision(&mut self, revision: u32) -> Result<(), BpfError> {
        let config = DatapathConfig { policy_revision: revision, ..self.config()? };
        self.write_config(config)
    }

    /// The source ports (and ICMP echo ids) masquerading hands out.
    pub fn set_nat_ports(&mut self, min: u16, max: u16) -> Result<(), BpfError> {
        let config = DatapathConfig { nat_port_min: min, nat_port_max: max, ..self.config()? };
        self.write_config(config)
    }

    /// The host's network namespace: the socket programs translate only its sockets.
    pub fn set_host_netns(&mut self, cookie: u64) -> Result<(), BpfError> {
        let config = DatapathConfig { host_netns_cookie: cookie, ..self.config()? };
        self.write_config(config)
    }

    /// Each CPU's event budget: one event every `interval_ns` after a burst (0: no events).
    pub fn set_event_rate(&mut self, interval_ns: u32, burst: u32) -> Result<(), BpfError> {
        let config = DatapathConfig { event_interval_ns: interval_ns, event_burst: burst, ..self.config()? };
        self.write_config(config)
    }

    fn config(&self) -> Result<DatapathConfig, BpfError> {
        self.config.get(&0, 0).map_err(map_error("read", MAP_CONFIG, "0".to_owned()))
    }

    fn write_config(&mut self, config: DatapathConfig) -> Result<(), BpfError> {
        self.config.set(0, config, 0).map_err(map_error("update", MAP_CONFIG, "0".to_owned()))
    }

    /// Every connection-tracking entry (a full scan).
    pub fn ct_entries(&self) -> Result<Vec<(CtKey, CtEntry)>, BpfError> {
        self.ct
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| BpfError::MapRead { map: MAP_CT, error: Box::new(error) })
    }

    /// Removes every connection-tracking entry there is when it starts (flows the programs
    /// add meanwhile stay); returns how many went.
    pub fn flush_ct(&mut self) -> Result<usize, BpfError> {
        let keys = self
            .ct
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| BpfError::MapRead { map: MAP_CT, error: Box::new(error) })?;
        let mut removed = 0;
        for key in keys {
            match self.ct.remove(&key) {
                Ok(()) => removed += 1,
                // Evicted or expired and replaced meanwhile.
                Err(error) if is_not_found(&error) => {}
                Err(error) => return Err(map_error("delete", MAP_CT, format!("{key:?}"))(error)),
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PROTO_TCP, PROTO_UDP};

    fn key(proto: u8, port: u16, port_prefix: u8) -> PolicyKey {
        PolicyKey {
            local: Identity(300),
            remote: Identity(301),
            direction: Direction::Ingress,
            proto,
            port,
            port_prefix,
        }
    }

    #[test]
    fn policy_keys_round_trip_through_the_map_layout() {
        for k in [key(PROTO_ANY, 0, 0), key(PROTO_TCP, 80, 16), key(PROTO_UDP, 0, 0), key(PROTO_TCP, 1024, 6)] {
            assert_eq!(policy_key_of(&policy_map_key(&k)), Some(k), "{k:?}");
        }
        let map_key = policy_map_key(&key(PROTO_TCP, 80, 16));
        assert_eq!(map_key.prefix_len(), 96);
        assert_eq!(map_key.data().port, [0, 80], "ports are big-endian for prefix matching");
        assert_eq!(map_key.data().dir, abi::METRIC_INGRESS);
        assert_eq!(policy_map_key(&key(PROTO_ANY, 0, 0)).prefix_len(), 72);
        // Bits beyond the prefix are cleared.
        assert_eq!(policy_map_key(&key(PROTO_TCP, 1027, 14)).data().port, 1024u16.to_be_bytes());
    }
}
