//! The cilium-rs eBPF datapath: the compiled object and the Rust mirror of its ABI.

pub mod abi;

/// The compiled datapath (`bpf/datapath.c`: endpoint and egress-interface programs), embedded at build time.
pub static DATAPATH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.o"));
