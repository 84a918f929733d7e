//! Read-only handles on pinned maps for what is read often and only read (the endpoints'
//! counters, the sizes of the conntrack and NAT maps): opened from the pins once, used from a
//! blocking thread outside every lock the datapath's other operations take.

use std::path::Path;

use aya::maps::{HashMap, Map, MapData, PerCpuHashMap};
use bpf_programs::abi::{
    CtEntry, CtKey, EndpointInfo, EndpointMetrics, NatEntry, NatKey, PortKey, PortTarget, CRS_LAYOUT_VERSION,
    CT_MAX_ENTRIES, MAP_CT, MAP_ENDPOINTS, MAP_METRICS, MAP_NAT_IN, MAP_NAT_OUT, MAP_PORTS, NAT_MAX_ENTRIES,
};

use super::bpf::{all_metrics, BpfError};

pub struct MapReaders {
    metrics: PerCpuHashMap<MapData, u32, EndpointMetrics>,
    ct: HashMap<MapData, CtKey, CtEntry>,
    nat_out: HashMap<MapData, NatKey, NatEntry>,
    nat_in: HashMap<MapData, NatKey, NatEntry>,
}

impl std::fmt::Debug for MapReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MapReaders")
    }
}

/// How many entries each map held when its keys were walked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapSizes {
    pub conntrack: u64,
    pub nat_out: u64,
    pub nat_in: u64,
}

fn open(maps_dir: &Path, map: &'static str) -> Result<Map, BpfError> {
    let layout = |error| BpfError::MapLayout { map, error: Box::new(error) };
    Map::from_map_data(MapData::from_pin(maps_dir.join(map)).map_err(layout)?).map_err(layout)
}

impl MapReaders {
    /// Opens the pins under `maps_dir` (the programs' maps must be pinned there already).
    pub fn open(maps_dir: &Path) -> Result<Self, BpfError> {
        let layout = |map| move |error| BpfError::MapLayout { map, error: Box::new(error) };
        Ok(MapReaders {
            metrics: PerCpuHashMap::try_from(open(maps_dir, MAP_METRICS)?).map_err(layout(MAP_METRICS))?,
            ct: HashMap::try_from(open(maps_dir, MAP_CT)?).map_err(layout(MAP_CT))?,
            nat_out: HashMap::try_from(open(maps_dir, MAP_NAT_OUT)?).map_err(layout(MAP_NAT_OUT))?,
            nat_in: HashMap::try_from(open(maps_dir, MAP_NAT_IN)?).map_err(layout(MAP_NAT_IN))?,
        })
    }

    /// Counters of every endpoint (and of endpoint 0), summed over CPUs.
    pub fn metrics(&self) -> Result<Vec<(u32, EndpointMetrics)>, BpfError> {
        all_metrics(&self.metrics)
    }

    /// The number of entries of crs_ct, crs_nat_out and crs_nat_in, by walking their keys.
    pub fn sizes(&self) -> Result<MapSizes, BpfError> {
        Ok(MapSizes {
            conntrack: count(self.ct.keys(), MAP_CT, CT_MAX_ENTRIES)?,
            nat_out: count(self.nat_out.keys(), MAP_NAT_OUT, NAT_MAX_ENTRIES)?,
            nat_in: count(self.nat_in.keys(), MAP_NAT_IN, NAT_MAX_ENTRIES)?,
        })
    }
}

/// Counts the keys a walk yields, at most `max_entries`: the kernel restarts a walk from the
/// first key when the current one was deleted meanwhile (the programs delete and the LRU maps
/// evict entries all the time), so under churn a walk may see some keys twice, but never more
/// keys than the map can hold.
fn count<K>(
    keys: impl Iterator<Item = Result<K, aya::maps::MapError>>,
    map: &'static str,
    max_entries: u32,
) -> Result<u64, BpfError> {
    let mut n = 0;
    for key in keys.take(max_entries as usize) {
        key.map_err(|error| BpfError::MapRead { map, error: Box::new(error) })?;
        n += 1;
    }
    Ok(n)
}

/// The pinned endpoint entries (by host-side ifindex) and published ports.
pub type PinnedEndpoints = (Vec<(u32, EndpointInfo)>, Vec<(PortKey, PortTarget)>);

/// What the pinned maps of this layout under `bpf_root` say about endpoints, read without
/// loading any program (for `state recover`, with the daemon down): the endpoint behind each
/// host-side interface, and the published ports. Maps never pinned read as empty.
pub fn pinned_endpoints(bpf_root: &Path) -> Result<PinnedEndpoints, BpfError> {
    let maps_dir = bpf_root.join(format!("v{CRS_LAYOUT_VERSION}")).join("maps");
    let read = |map: &'static str| move |error| BpfError::MapRead { map, error: Box::new(error) };
    let layout = |map| move |error| BpfError::MapLayout { map, error: Box::new(error) };
    let endpoints = match maps_dir.join(MAP_ENDPOINTS).exists() {
        false => Vec::new(),
        true => HashMap::<MapData, u32, EndpointInfo>::try_from(open(&maps_dir, MAP_ENDPOINTS)?)
            .map_err(layout(MAP_ENDPOINTS))?
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(read(MAP_ENDPOINTS))?,
    };
    let ports = match maps_dir.join(MAP_PORTS).exists() {
        false => Vec::new(),
        true => HashMap::<MapData, PortKey, PortTarget>::try_from(open(&maps_dir, MAP_PORTS)?)
            .map_err(layout(MAP_PORTS))?
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(read(MAP_PORTS))?,
    };
    Ok((endpoints, ports))
}
