//! cilium-rs: a Docker network + IPAM plugin with a routed IPv6 eBPF datapath.

pub mod datapath;
