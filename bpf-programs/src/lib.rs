//! The cilium-rs eBPF datapath: the compiled object and the Rust mirror of its ABI.

pub mod abi;

/// The compiled endpoint programs (`bpf/endpoint.c`), embedded at build time.
pub static ENDPOINT_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/endpoint.o"));
