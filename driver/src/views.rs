//! What the API socket reports (endpoints, networks, status), shared by the daemon and the CLI.

use serde::{Deserialize, Serialize};

use crate::datapath::Counters;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub id: String,
    pub network: String,
    pub number: u32,
    pub ipv6: Option<String>,
    pub ipv4: Option<String>,
    pub mac: String,
    pub host_ifname: String,
    pub host_ifindex: Option<u32>,
    pub joined: bool,
    pub counters: Counters,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub id: String,
    pub subnet: String,
    pub ip_range: Option<String>,
    pub gateway: String,
    pub used: usize,
    pub taken_by_driver: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    pub id: String,
    pub ipv6_enabled: bool,
    pub internal: bool,
    pub mtu: Option<u32>,
    pub endpoints: usize,
    pub pools: Vec<PoolView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub networks: usize,
    pub endpoints: usize,
    pub pools: usize,
}
