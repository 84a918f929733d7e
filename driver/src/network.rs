//! Networks: the persisted record and the driver options dockerd passes at CreateNetwork.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::NetworkId;
use crate::input::{kind, quoted};
use crate::ipam::PoolId;

/// `-o mtu=…` and its long form.
pub const MTU_OPTIONS: [&str; 2] = ["mtu", "com.docker.network.driver.mtu"];
/// `-o cilium-rs.masquerade=false`: the network's subnets are routed to the host.
pub const MASQUERADE_OPTION: &str = "cilium-rs.masquerade";
pub const MIN_MTU: u32 = 1280;
pub const MAX_MTU: u32 = 65535;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: NetworkId,
    pub ipv4_pools: Vec<PoolId>,
    pub ipv6_pools: Vec<PoolId>,
    /// IPv6 pool the driver took itself because the network was created without `--ipv6`.
    pub driver_ipv6_pool: Option<PoolId>,
    pub ipv6_enabled: bool,
    pub internal: bool,
    /// From `-o cilium-rs.masquerade=`: what endpoints send outside leaves with the egress
    /// interface's address (false: the network is routed to the host, addresses stay).
    #[serde(default = "masquerade_by_default")]
    pub masquerade: bool,
    /// From `-o mtu=`; `None` means the host's default-route MTU at Join time.
    pub mtu: Option<u32>,
    pub created_at: u64,
    /// The name Docker knows it by (dockerd never sends it to a driver: the event follower
    /// learns it from Docker's API); `None` until then.
    #[serde(default)]
    pub name: Option<String>,
}

fn masquerade_by_default() -> bool {
    true
}

impl Network {
    /// The IPv6 pool endpoints take addresses from when dockerd sends none.
    pub fn fallback_ipv6_pool(&self) -> Option<&PoolId> {
        self.ipv6_pools.first().or(self.driver_ipv6_pool.as_ref())
    }

    pub fn pools(&self) -> impl Iterator<Item = &PoolId> {
        self.ipv4_pools.iter().chain(&self.ipv6_pools).chain(&self.driver_ipv6_pool)
    }
}

/// Options of `docker network create` that matter to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkOptions {
    pub ipv6_enabled: bool,
    pub internal: bool,
    pub masquerade: bool,
    pub mtu: Option<u32>,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions { ipv6_enabled: false, internal: false, masquerade: true, mtu: None }
    }
}

/// Reads the CreateNetwork `Options` map: `enable_ipv6` and `internal` (JSON booleans) and the
/// `-o` driver options under `com.docker.network.generic`, refusing unknown driver options so
/// a typo is not silently ignored.
pub fn parse_options(options: &Map<String, Value>) -> Result<NetworkOptions, String> {
    let flag = |key: &str| match options.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(Value::String(s)) => Err(format!("option {key} must be a boolean, got {}", quoted(s))),
        Some(other) => Err(format!("option {key} must be a boolean, got {}", kind(other))),
    };
    let mut parsed = NetworkOptions {
        ipv6_enabled: flag(plugin_spec::OPTION_ENABLE_IPV6)?,
        internal: flag(plugin_spec::OPTION_INTERNAL)?,
        ..NetworkOptions::default()
    };
    let generic = match options.get(plugin_spec::OPTION_GENERIC) {
        None | Some(Value::Null) => return Ok(parsed),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(format!("option {} must be an object, got {}", plugin_spec::OPTION_GENERIC, kind(other)))
        }
    };
    for (key, value) in generic {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return Err(format!("driver option {} must be a string, got {}", quoted(key), kind(other))),
        };
        if MTU_OPTIONS.contains(&key.as_str()) {
            parsed.mtu = Some(parse_mtu(&text).map_err(|e| format!("invalid -o {key}={}: {e}", quoted(text.trim())))?);
        } else if key == MASQUERADE_OPTION {
            parsed.masquerade = match text.trim() {
                "true" => true,
                "false" => false,
                other => return Err(format!("invalid -o {key}={}: must be true or false", quoted(other))),
            };
        } else {
            return Err(format!(
                "unknown driver option {}: cilium-rs knows only -o mtu=<{MIN_MTU}-{MAX_MTU}> and \
                 -o {MASQUERADE_OPTION}=true|false",
                quoted(key)
            ));
        }
    }
    Ok(parsed)
}

fn parse_mtu(text: &str) -> Result<u32, String> {
    let mtu: u32 = text.trim().parse().map_err(|_| "not a number".to_owned())?;
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(format!("must be between {MIN_MTU} (the IPv6 minimum) and {MAX_MTU}"));
    }
    Ok(mtu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn reads_dockerd_options() {
        let parsed = parse_options(&opts(json!({
            "com.docker.network.enable_ipv6": true,
            "com.docker.network.generic": {"mtu": "1400", "cilium-rs.masquerade": "false"},
            "com.docker.network.internal": true
        })))
        .expect("valid");
        assert_eq!(parsed, NetworkOptions { ipv6_enabled: true, internal: true, masquerade: false, mtu: Some(1400) });
        let parsed =
            parse_options(&opts(json!({"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {}})))
                .expect("valid");
        assert_eq!(parsed, NetworkOptions::default());
        assert_eq!(parse_options(&Map::new()).expect("empty"), NetworkOptions::default());
    }

    #[test]
    fn refuses_bad_options_with_a_precise_message() {
        let err = parse_options(&opts(json!({"com.docker.network.generic": {"mtu": "900"}}))).expect_err("must fail");
        assert_eq!(err, "invalid -o mtu=\"900\": must be between 1280 (the IPv6 minimum) and 65535");
        let err = parse_options(&opts(json!({"com.docker.network.generic": {"mtu": "1400\n; reboot"}})))
            .expect_err("must fail");
        assert_eq!(err, "invalid -o mtu=\"1400\\n; reboot\": not a number");
        let err = parse_options(&opts(json!({"com.docker.network.generic": {"a\nb": ["x".repeat(10_000)]}})))
            .expect_err("must fail");
        assert_eq!(err, "driver option \"a\\nb\" must be a string, got an array");
        let err =
            parse_options(&opts(json!({"com.docker.network.internal": "x".repeat(10_000)}))).expect_err("must fail");
        assert!(err.len() < 200 && err.starts_with("option com.docker.network.internal must be a boolean"), "{err}");
        let err = parse_options(&opts(json!({"com.docker.network.generic": {"mtuu": "1400"}}))).expect_err("must fail");
        assert!(err.starts_with("unknown driver option \"mtuu\""), "{err}");
        let err = parse_options(&opts(json!({"com.docker.network.enable_ipv6": "yes"}))).expect_err("must fail");
        assert!(err.contains("must be a boolean"), "{err}");
        let err = parse_options(&opts(json!({"com.docker.network.generic": {"cilium-rs.masquerade": "no"}})))
            .expect_err("must fail");
        assert_eq!(err, "invalid -o cilium-rs.masquerade=\"no\": must be true or false");
    }
}
