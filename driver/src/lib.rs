//! cilium-rs: a Docker network + IPAM plugin with a routed IPv6 eBPF datapath.

pub mod cli;
pub mod datapath;
pub mod docker;
pub mod driver;
pub mod egress;
pub mod endpoint;
pub mod http_unix;
pub mod identity;
pub mod identity_alloc;
pub mod identity_watch;
pub mod ids;
pub mod input;
pub mod ipam;
pub mod kv;
pub mod labels;
pub mod metrics;
pub mod monitor;
pub mod network;
pub mod policy;
pub mod ports;
pub mod reconcile;
pub mod server;
pub mod state;
pub mod store;
pub mod table;
pub mod views;
