//! Kernel features the datapath uses or could use, probed once when it is loaded: kernel BTF
//! (CO-RE), tcx links (`--attach-mode tcx`), netkit devices (the next device mode,
//! docs/datapath.md) and BPF ring buffers (events for the monitor).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use aya::util::KernelVersion;

/// What was found, by feature name.
pub fn probe() -> BTreeMap<String, bool> {
    let kernel = KernelVersion::current().ok();
    let at_least = |major, minor| kernel.is_some_and(|v| v >= KernelVersion::new(major, minor, 0));
    BTreeMap::from([
        ("btf".to_owned(), Path::new("/sys/kernel/btf/vmlinux").exists()),
        // tcx links came with Linux 6.6.
        ("tcx".to_owned(), at_least(6, 6)),
        // netkit came with Linux 6.7, and only when the kernel was built with it.
        ("netkit".to_owned(), at_least(6, 7) && has_netkit()),
        ("ringbuf".to_owned(), aya::sys::is_map_supported(aya::maps::MapType::RingBuf).unwrap_or(false)),
    ])
}

/// The running kernel's version, as `major.minor.patch`.
pub fn kernel_release() -> Option<String> {
    KernelVersion::current().ok().map(|v| v.to_string())
}

/// Whether the netkit driver is in the kernel: built in (its symbols are listed) or a module
/// that is loaded or can be.
fn has_netkit() -> bool {
    if Path::new("/sys/module/netkit").exists() {
        return true;
    }
    if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        let module = format!("/lib/modules/{}/kernel/drivers/net/netkit.ko", release.trim());
        if ["", ".xz", ".zst", ".gz"].iter().any(|ext| Path::new(&format!("{module}{ext}")).exists()) {
            return true;
        }
    }
    match std::fs::File::open("/proc/kallsyms") {
        Ok(file) => std::io::BufReader::new(file).lines().map_while(Result::ok).any(|line| names_netkit(&line)),
        Err(_) => false,
    }
}

/// Whether a `/proc/kallsyms` line names the netkit driver's transmit function. Not any
/// `netkit_` symbol: the core keeps `netkit_peer_dev` (for `bpf_redirect_peer`) in kernels built
/// without the driver (CONFIG_NETKIT unset), as this machine's is.
fn names_netkit(line: &str) -> bool {
    line.split_whitespace().nth(2) == Some("netkit_xmit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netkit_symbols_are_recognised() {
        assert!(names_netkit("ffffffffc0a01230 t netkit_xmit"));
        assert!(!names_netkit("ffffffff81e89590 t netkit_peer_dev"), "the core's, not the driver's");
        assert!(!names_netkit("ffffffff81e89590 t __pfx_netkit_xmit"));
        assert!(!names_netkit("ffffffff81e89590 t veth_xmit"));
        assert!(!names_netkit(""));
    }

    #[test]
    fn every_feature_is_reported() {
        let found = probe();
        assert_eq!(found.keys().map(String::as_str).collect::<Vec<_>>(), ["btf", "netkit", "ringbuf", "tcx"]);
    }
}
