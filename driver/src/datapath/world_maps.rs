//! The maps of the outside world: crs_egress (the egress interfaces and the addresses endpoints
//! are masqueraded to) and crs_ports (published ports), written by the daemon, and crs_nat_out
//! / crs_nat_in (translated flows), written by the programs and only swept by the daemon.

use std::collections::BTreeSet;
use std::net::IpAddr;

use aya::maps::{HashMap, MapData};
use aya::Ebpf;
use bpf_programs::abi::{
    EgressIface, IpKey, NatEntry, NatKey, PortKey, PortTarget, MAP_EGRESS, MAP_NAT_IN, MAP_NAT_OUT, MAP_PORTS,
};

use super::bpf::{is_not_found, take_map, BpfError};
use super::policy_maps::count_keys;

pub struct WorldMaps {
    egress: HashMap<MapData, u32, EgressIface>,
    nat_out: HashMap<MapData, NatKey, NatEntry>,
    nat_in: HashMap<MapData, NatKey, NatEntry>,
    ports: HashMap<MapData, PortKey, PortTarget>,
}

impl std::fmt::Debug for WorldMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorldMaps")
    }
}

/// One translated flow: the key and value of an entry of crs_nat_out or crs_nat_in.
pub type NatRow = (NatKey, NatEntry);

fn layout(map: &'static str) -> impl Fn(aya::maps::MapError) -> BpfError {
    move |error| BpfError::MapLayout { map, error: Box::new(error) }
}

fn read_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> BpfError {
    move |error| BpfError::MapRead { map, error: Box::new(error) }
}

fn ip_of(family: u8, addr: [u8; 16]) -> Option<IpAddr> {
    IpKey { family, pad: [0; 3], addr }.ip()
}

impl WorldMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(WorldMaps {
            egress: HashMap::try_from(take_map(ebpf, MAP_EGRESS)?).map_err(layout(MAP_EGRESS))?,
            nat_out: HashMap::try_from(take_map(ebpf, MAP_NAT_OUT)?).map_err(layout(MAP_NAT_OUT))?,
            nat_in: HashMap::try_from(take_map(ebpf, MAP_NAT_IN)?).map_err(layout(MAP_NAT_IN))?,
            ports: HashMap::try_from(take_map(ebpf, MAP_PORTS)?).map_err(layout(MAP_PORTS))?,
        })
    }

    pub fn set_egress(&mut self, ifindex: u32, value: &EgressIface) -> Result<(), BpfError> {
        self.egress.insert(ifindex, *value, 0).map_err(|error| BpfError::Map {
            op: "update",
            map: MAP_EGRESS,
            key: ifindex.to_string(),
            error: Box::new(error),
        })
    }

    /// Removes the entry of `ifindex`; absent is fine.
    pub fn remove_egress(&mut self, ifindex: u32) -> Result<(), BpfError> {
        match self.egress.remove(&ifindex) {
            Err(error) if !is_not_found(&error) => {
                Err(BpfError::Map { op: "delete", map: MAP_EGRESS, key: ifindex.to_string(), error: Box::new(error) })
            }
            _ => Ok(()),
        }
    }

    pub fn set_port(&mut self, key: &PortKey, target: &PortTarget) -> Result<(), BpfError> {
        self.ports.insert(key, target, 0).map_err(|error| BpfError::Map {
            op: "update",
            map: MAP_PORTS,
            key: format!("{key:?}"),
            error: Box::new(error),
        })
    }

    /// Removes a published port; absent is fine.
    pub fn remove_port(&mut self, key: &PortKey) -> Result<(), BpfError> {
        match self.ports.remove(key) {
            Err(error) if !is_not_found(&error) => {
                Err(BpfError::Map { op: "delete", map: MAP_PORTS, key: format!("{key:?}"), error: Box::new(error) })
            }
            _ => Ok(()),
        }
    }

    /// Every published port (a full scan).
    pub fn port_entries(&self) -> Result<Vec<(PortKey, PortTarget)>, BpfError> {
        self.ports.iter().collect::<Result<Vec<_>, _>>().map_err(read_error(MAP_PORTS))
    }

    pub fn egress_entries(&self) -> Result<Vec<(u32, EgressIface)>, BpfError> {
        self.egress.iter().collect::<Result<Vec<_>, _>>().map_err(read_error(MAP_EGRESS))
    }

    /// Every entry of crs_nat_out (a full scan).
    pub fn nat_out(&self) -> Result<Vec<NatRow>, BpfError> {
        self.nat_out.iter().collect::<Result<Vec<_>, _>>().map_err(read_error(MAP_NAT_OUT))
    }

    /// Every entry of crs_nat_in (a full scan).
    pub fn nat_in(&self) -> Result<Vec<NatRow>, BpfError> {
        self.nat_in.iter().collect::<Result<Vec<_>, _>>().map_err(read_error(MAP_NAT_IN))
    }

    /// How many entries crs_nat_out and crs_nat_in have (a scan of their keys).
    pub fn nat_counts(&self) -> Result<(u64, u64), BpfError> {
        Ok((count_keys(self.nat_out.keys(), MAP_NAT_OUT)?, count_keys(self.nat_in.keys(), MAP_NAT_IN)?))
    }

    /// Removes the translations of every endpoint address not in `live` (their endpoints are
    /// gone); returns how many entries went.
    pub fn sweep(&mut self, live: &BTreeSet<IpAddr>) -> Result<usize, BpfError> {
        let mut removed = 0;
        let stale_out: Vec<NatKey> = self
            .nat_out()?
            .into_iter()
            .filter(|(key, _)| ip_of(key.family, key.saddr).is_none_or(|ip| !live.contains(&ip)))
            .map(|(key, _)| key)
            .collect();
        for key in stale_out {
            removed += remove_nat(&mut self.nat_out, MAP_NAT_OUT, &key)?;
        }
        let stale_in: Vec<NatKey> = self
            .nat_in()?
            .into_iter()
            .filter(|(key, entry)| ip_of(key.family, entry.addr).is_none_or(|ip| !live.contains(&ip)))
            .map(|(key, _)| key)
            .collect();
        for key in stale_in {
            removed += remove_nat(&mut self.nat_in, MAP_NAT_IN, &key)?;
        }
        Ok(removed)
    }
}

/// Removes one translation entry: 1 if it was there, 0 if the datapath dropped it first.
fn remove_nat(
    map: &mut HashMap<MapData, NatKey, NatEntry>,
    name: &'static str,
    key: &NatKey,
) -> Result<usize, BpfError> {
    match map.remove(key) {
        Ok(()) => Ok(1),
        Err(error) if is_not_found(&error) => Ok(0),
        Err(error) => Err(BpfError::Map { op: "delete", map: name, key: format!("{key:?}"), error: Box::new(error) }),
    }
}
