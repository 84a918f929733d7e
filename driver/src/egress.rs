//! Settings of the way outside: which interfaces lead there (`--egress-interface`), the ports
//! masquerading hands out (`--nat-port-range`, kept clear of the host's ephemeral ports), and
//! the forwarding switches the datapath's route lookups need.

use std::fmt;
use std::str::FromStr;

/// `--egress-interface`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EgressChoice {
    /// The interfaces holding a default route, followed as they change.
    #[default]
    Auto,
    /// Nothing leaves the host: no programs on any host interface.
    None,
    /// These interfaces (the ones that exist).
    Named(Vec<String>),
}

impl FromStr for EgressChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "auto" => return Ok(EgressChoice::Auto),
            "none" => return Ok(EgressChoice::None),
            _ => {}
        }
        let names: Vec<String> = text.split(',').map(|n| n.trim().to_owned()).collect();
        for name in &names {
            if let Some(reason) = bad_ifname(name) {
                return Err(format!(
                    "interface name {name:?} is {reason} (give `auto`, `none` or interface names separated by commas)"
                ));
            }
        }
        Ok(EgressChoice::Named(names))
    }
}

/// Why the kernel would refuse `name` as an interface name.
fn bad_ifname(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > 15 {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." || name == "auto" || name == "none" {
        Some("reserved")
    } else if name.chars().any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace()) {
        Some("not a valid interface name")
    } else {
        None
    }
}

/// An inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

/// The default of `--nat-port-range`: above Linux's default ephemeral range (32768-60999).
pub const DEFAULT_NAT_PORTS: PortRange = PortRange { min: 61000, max: 65535 };

impl PortRange {
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.min <= other.max && other.min <= self.max
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parse = |s: &str| s.trim().parse::<u16>().map_err(|_| format!("{:?} is not a port number", s.trim()));
        let (min, max) = match text.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => return Err(format!("{text:?} is not a range FIRST-LAST")),
        };
        if min < 1024 {
            return Err(format!("{min}-{max} starts below 1024 (ports the host's services use)"));
        }
        if max < min {
            return Err(format!("{min}-{max} ends before it starts"));
        }
        Ok(PortRange { min, max })
    }
}

/// Where the host's ephemeral port range is set.
const EPHEMERAL_PORTS: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The host's ephemeral ports (`net.ipv4.ip_local_port_range`, which IPv6 sockets use too).
pub fn host_ephemeral_ports() -> Result<PortRange, String> {
    let text = std::fs::read_to_string(EPHEMERAL_PORTS).map_err(|e| format!("read {EPHEMERAL_PORTS}: {e}"))?;
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next()) {
        (Some(Ok(min)), Some(Ok(max))) => Ok(PortRange { min, max }),
        _ => Err(format!("{EPHEMERAL_PORTS} holds {:?}, not two port numbers", text.trim())),
    }
}

/// Refuses a NAT port range that the host's own sockets could pick: a reply to a masqueraded
/// flow would then be taken for one of theirs, or theirs for ours.
pub fn check_nat_ports(nat: PortRange, ephemeral: PortRange) -> Result<(), String> {
    if nat.overlaps(&ephemeral) {
        return Err(format!(
            "--nat-port-range {nat} overlaps the host's ephemeral ports {ephemeral} (net.ipv4.ip_local_port_range): \
             choose a range outside it, or narrow the sysctl"
        ));
    }
    Ok(())
}

/// The sysctls that let the kernel forward (and the datapath's route lookups, which check
/// them, find a way out), with the value they need.
const FORWARDING: [&str; 2] = ["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"];

/// Turns forwarding on where it is off (as Docker does for its networks); returns the switches
/// it turned on.
pub fn enable_forwarding() -> Result<Vec<&'static str>, String> {
    let mut changed = Vec::new();
    for path in FORWARDING {
        let value = std::fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))?;
        if value.trim() != "1" {
            std::fs::write(path, "1").map_err(|e| {
                let name = path.trim_start_matches("/proc/sys/").replace('/', ".");
                // A managed plugin sees /proc/sys read-only: the host has to do it.
                format!(
                    "turn on {path}: {e} (turn it on on the host: sysctl -w {name}=1, or use --egress-interface none)"
                )
            })?;
            changed.push(path);
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_choices_parse_and_bad_names_are_refused_by_name() {
        assert_eq!("auto".parse(), Ok(EgressChoice::Auto));
        assert_eq!("none".parse(), Ok(EgressChoice::None));
        assert_eq!("eth0, wg0".parse(), Ok(EgressChoice::Named(vec!["eth0".into(), "wg0".into()])));
        let err = "eth0,a/b".parse::<EgressChoice>().expect_err("slash");
        assert!(err.contains("\"a/b\" is not a valid interface name"), "{err}");
        let err = "eth0,,eth1".parse::<EgressChoice>().expect_err("empty");
        assert!(err.contains("\"\" is empty"), "{err}");
        assert!("averyveryverylongname".parse::<EgressChoice>().expect_err("long").contains("longer than 15"));
        assert!("eth0,none".parse::<EgressChoice>().expect_err("mixed").contains("reserved"));
    }

    #[test]
    fn port_ranges_parse_and_must_stay_clear_of_the_ephemeral_ports() {
        assert_eq!("61000-65535".parse(), Ok(DEFAULT_NAT_PORTS));
        assert!("80-90".parse::<PortRange>().expect_err("low").contains("below 1024"));
        assert!("9000-8000".parse::<PortRange>().expect_err("reversed").contains("ends before it starts"));
        assert!("9000".parse::<PortRange>().expect_err("single").contains("not a range"));
        assert!("9000-x".parse::<PortRange>().expect_err("nan").contains("\"x\" is not a port number"));
        let linux = PortRange { min: 32768, max: 60999 };
        assert_eq!(check_nat_ports(DEFAULT_NAT_PORTS, linux), Ok(()));
        let err = check_nat_ports(PortRange { min: 60000, max: 62000 }, linux).expect_err("overlap");
        assert!(err.contains("60000-62000 overlaps the host's ephemeral ports 32768-60999"), "{err}");
        assert!(DEFAULT_NAT_PORTS.contains(61000) && !DEFAULT_NAT_PORTS.contains(60999));
    }
}
