//! NetworkDriver requests and responses (`/NetworkDriver.*`), plus the option keys dockerd uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::de::{null_default, object, objects};

pub const NETWORK_DRIVER_GET_CAPABILITIES: &str = "/NetworkDriver.GetCapabilities";
pub const NETWORK_DRIVER_CREATE_NETWORK: &str = "/NetworkDriver.CreateNetwork";
pub const NETWORK_DRIVER_DELETE_NETWORK: &str = "/NetworkDriver.DeleteNetwork";
pub const NETWORK_DRIVER_ALLOCATE_NETWORK: &str = "/NetworkDriver.AllocateNetwork";
pub const NETWORK_DRIVER_FREE_NETWORK: &str = "/NetworkDriver.FreeNetwork";
pub const NETWORK_DRIVER_CREATE_ENDPOINT: &str = "/NetworkDriver.CreateEndpoint";
pub const NETWORK_DRIVER_ENDPOINT_OPER_INFO: &str = "/NetworkDriver.EndpointOperInfo";
pub const NETWORK_DRIVER_DELETE_ENDPOINT: &str = "/NetworkDriver.DeleteEndpoint";
pub const NETWORK_DRIVER_JOIN: &str = "/NetworkDriver.Join";
pub const NETWORK_DRIVER_LEAVE: &str = "/NetworkDriver.Leave";
pub const NETWORK_DRIVER_DISCOVER_NEW: &str = "/NetworkDriver.DiscoverNew";
pub const NETWORK_DRIVER_DISCOVER_DELETE: &str = "/NetworkDriver.DiscoverDelete";
pub const NETWORK_DRIVER_PROGRAM_EXTERNAL_CONNECTIVITY: &str = "/NetworkDriver.ProgramExternalConnectivity";
pub const NETWORK_DRIVER_REVOKE_EXTERNAL_CONNECTIVITY: &str = "/NetworkDriver.RevokeExternalConnectivity";
/// Only sent by Moby ≥ 28 to drivers that declared `GwAllocChecker`; never by 20.10.
pub const NETWORK_DRIVER_GW_ALLOC_CHECK: &str = "/NetworkDriver.GwAllocCheck";

/// CreateNetwork option: JSON bool, always present (`--ipv6`, compose `enable_ipv6`).
pub const OPTION_ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
/// CreateNetwork option: object of string → string, always present (`-o`, compose
/// `driver_opts`). In Join/ProgramExternalConnectivity options of a container that is also on
/// the default bridge it holds legacy-link data with `null` values instead.
pub const OPTION_GENERIC: &str = "com.docker.network.generic";
/// CreateNetwork option: JSON `true`, present only for `--internal`.
pub const OPTION_INTERNAL: &str = "com.docker.network.internal";
/// Driver option (inside [`OPTION_GENERIC`]) conventionally carrying the MTU, as a string.
pub const OPTION_MTU: &str = "com.docker.network.driver.mtu";
/// Endpoint option: array of `{"Proto": <IP protocol number>, "Port": u16}`.
pub const OPTION_EXPOSED_PORTS: &str = "com.docker.network.endpoint.exposedports";
/// Endpoint/sandbox option: array of
/// `{"Proto", "IP", "Port", "HostIP", "HostPort", "HostPortEnd"}` (`-p`).
pub const OPTION_PORT_MAP: &str = "com.docker.network.portmap";
/// Endpoint option: array of strings (`--dns`), present only when DNS servers are set.
pub const OPTION_DNS_SERVERS: &str = "com.docker.network.endpoint.dnsservers";
/// Endpoint option with the requested MAC: in CreateEndpoint `Options` it is the **base64** of
/// the six bytes (Go's `[]byte` encoding, e.g. `"AkIK/G4K"`); as an IPAM RequestAddress option
/// (only with `RequiresMACAddress`) it is the usual `aa:bb:…` text.
pub const MAC_ADDRESS_OPTION: &str = "com.docker.network.endpoint.macaddress";

/// [`StaticRoute::route_type`]: route via [`StaticRoute::next_hop`].
pub const ROUTE_TYPE_NEXTHOP: u8 = 0;
/// [`StaticRoute::route_type`]: on-link route through the joined interface (no next hop).
pub const ROUTE_TYPE_CONNECTED: u8 = 1;

fn is_empty_str(s: &str) -> bool {
    s.is_empty()
}

/// Reply to `/NetworkDriver.GetCapabilities` (empty request).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct CapabilitiesResponse {
    /// `"local"` or `"global"`; anything else makes dockerd refuse the driver.
    #[serde(rename = "Scope", default, deserialize_with = "null_default")]
    pub scope: String,
    /// `"local"`/`"global"`; empty means the same as `scope` (then it is left out).
    #[serde(
        rename = "ConnectivityScope",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_empty_str"
    )]
    pub connectivity_scope: String,
}

/// One address pool of a network as the IPAM granted it.
///
/// Fields are declared in the order dockerd writes the keys (it encodes a sorted map).
/// `Gateway` and the `AuxAddresses` values are CIDR strings carrying the prefix length the IPAM
/// answered (e.g. `10.252.1.1/32`), or the pool data gateway verbatim.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct IpamData {
    #[serde(rename = "AddressSpace", default, deserialize_with = "null_default")]
    pub address_space: String,
    /// `name → CIDR` from `--aux-address`; the key is absent when there are none.
    #[serde(
        rename = "AuxAddresses",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub aux_addresses: BTreeMap<String, String>,
    #[serde(rename = "Gateway", default, deserialize_with = "null_default", skip_serializing_if = "is_empty_str")]
    pub gateway: String,
    #[serde(rename = "Pool", default, deserialize_with = "null_default")]
    pub pool: String,
}

/// `/NetworkDriver.CreateNetwork`, sent after all IPAM work for the network succeeded.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    /// [`OPTION_ENABLE_IPV6`] (bool), [`OPTION_GENERIC`] (object), [`OPTION_INTERNAL`] (bool).
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
    /// `[]` when the family is not configured.
    #[serde(rename = "IPv4Data", default, deserialize_with = "objects")]
    pub ipv4_data: Vec<IpamData>,
    /// `[]` unless the network has IPv6 enabled.
    #[serde(rename = "IPv6Data", default, deserialize_with = "objects")]
    pub ipv6_data: Vec<IpamData>,
}

/// `/NetworkDriver.DeleteNetwork`, sent after the IPAM released the network's pools.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteNetworkRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
}

/// The endpoint's interface: addresses in CIDR form as the IPAM answered them; `""` = unset.
///
/// dockerd always sends all three keys. Encoding leaves out empty fields, which is what a
/// [`CreateEndpointResponse`] needs: every non-empty field there overrides dockerd's value and
/// is refused (the endpoint is rolled back) if dockerd already had one.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointInterface {
    #[serde(rename = "Address", default, deserialize_with = "null_default", skip_serializing_if = "is_empty_str")]
    pub address: String,
    #[serde(rename = "AddressIPv6", default, deserialize_with = "null_default", skip_serializing_if = "is_empty_str")]
    pub address_ipv6: String,
    /// `aa:bb:cc:dd:ee:ff` text form; non-empty only for `--mac-address` (primary network) or an
    /// IPAM with `RequiresMACAddress`.
    #[serde(rename = "MacAddress", default, deserialize_with = "null_default", skip_serializing_if = "is_empty_str")]
    pub mac_address: String,
}

impl EndpointInterface {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.address.is_empty() && self.address_ipv6.is_empty() && self.mac_address.is_empty()
    }
}

/// `/NetworkDriver.CreateEndpoint`, sent after the IPAM granted the endpoint's addresses.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default, deserialize_with = "object")]
    pub interface: EndpointInterface,
    /// [`OPTION_EXPOSED_PORTS`], [`OPTION_PORT_MAP`], [`OPTION_DNS_SERVERS`],
    /// [`MAC_ADDRESS_OPTION`] and `--driver-opt` strings. The two port arrays are absent for
    /// internal networks and when another endpoint of the container already owns port mappings.
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
}

fn interface_is_empty(interface: &Option<EndpointInterface>) -> bool {
    interface.as_ref().is_none_or(EndpointInterface::is_empty)
}

/// Reply to CreateEndpoint. Only fields dockerd sent empty may be filled in; with nothing to
/// add this encodes as `{}`, with only a MAC as `{"Interface":{"MacAddress":"…"}}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateEndpointResponse {
    #[serde(rename = "Interface", default, skip_serializing_if = "interface_is_empty")]
    pub interface: Option<EndpointInterface>,
}

/// Requests that name only an endpoint: DeleteEndpoint, EndpointOperInfo, Leave and
/// RevokeExternalConnectivity.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
}

/// Reply to EndpointOperInfo: `{"Value": {...}}` (shown by `docker network inspect` nowhere in
/// 20.10; an empty object is fine). An error here fails the container start.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct EndpointOperInfoResponse {
    #[serde(rename = "Value", default, deserialize_with = "null_default")]
    pub value: Map<String, Value>,
}

/// `/NetworkDriver.Join`, sent after CreateEndpoint once the container's sandbox exists.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
    /// `/var/run/docker/netns/<12 hex of the sandbox id>`; in 20.10 the file does not exist yet
    /// when a container starts (it does for `docker network connect`).
    #[serde(rename = "SandboxKey", default, deserialize_with = "null_default")]
    pub sandbox_key: String,
    /// Sandbox-level options: [`OPTION_EXPOSED_PORTS`], [`OPTION_PORT_MAP`], and
    /// [`OPTION_GENERIC`] with legacy-link data (`null` values) when the container is also on
    /// the default bridge. Per-endpoint `--driver-opt`s are not repeated here.
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
}

/// Which host-side interface dockerd moves into the container, and the name prefix it gets there.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct InterfaceName {
    /// Interface in dockerd's network namespace (≤ 15 bytes), left unconfigured.
    #[serde(rename = "SrcName", default, deserialize_with = "null_default")]
    pub src_name: String,
    /// `"eth"` gives `eth0`, `eth1`, … inside the container.
    #[serde(rename = "DstPrefix", default, deserialize_with = "null_default")]
    pub dst_prefix: String,
}

/// A route dockerd installs in the container after moving the interface.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct StaticRoute {
    /// CIDR.
    #[serde(rename = "Destination", default, deserialize_with = "null_default")]
    pub destination: String,
    /// [`ROUTE_TYPE_NEXTHOP`] or [`ROUTE_TYPE_CONNECTED`].
    #[serde(rename = "RouteType", default, deserialize_with = "null_default")]
    pub route_type: u8,
    /// Plain IP; only for [`ROUTE_TYPE_NEXTHOP`], left out when empty.
    #[serde(rename = "NextHop", default, deserialize_with = "null_default", skip_serializing_if = "is_empty_str")]
    pub next_hop: String,
}

/// Reply to Join. Empty `Gateway`/`GatewayIPv6` are left out (dockerd would fail to parse `""`).
///
/// A connected route must be unique within the container: two endpoints of one container that
/// both answer the same [`ROUTE_TYPE_CONNECTED`] destination make the second connect fail with
/// "error setting interface … routes to [...]: file exists" (recorded, see the fixtures).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName", default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<InterfaceName>,
    /// Plain IPv4 address (no mask); must be reachable on-link (e.g. via a connected route).
    #[serde(rename = "Gateway", default, deserialize_with = "null_default", skip_serializing_if = "is_empty_str")]
    pub gateway: String,
    /// Plain IPv6 address; in 20.10 only programmed when `gateway` is set as well.
    #[serde(rename = "GatewayIPv6", default, deserialize_with = "null_default", skip_serializing_if = "is_empty_str")]
    pub gateway_ipv6: String,
    #[serde(
        rename = "StaticRoutes",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub static_routes: Vec<StaticRoute>,
    /// `true` keeps dockerd from attaching the container to `docker_gwbridge`.
    #[serde(rename = "DisableGatewayService", default, deserialize_with = "null_default")]
    pub disable_gateway_service: bool,
}

/// `/NetworkDriver.ProgramExternalConnectivity`: sent during Join when the endpoint became the
/// container's gateway endpoint (it answered a `Gateway`) on a non-internal network. A 404
/// counts as success.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ProgramExternalConnectivityRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
    /// The same sandbox-level map as [`JoinRequest::options`].
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
}

/// `/NetworkDriver.DiscoverNew` and `/NetworkDriver.DiscoverDelete` (swarm only).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct DiscoveryRequest {
    /// 1 = node discovery.
    #[serde(rename = "DiscoveryType", default, deserialize_with = "null_default")]
    pub discovery_type: u32,
    /// For node discovery `{"Address": …, "BindAddress": …, "Self": bool}`.
    #[serde(rename = "DiscoveryData", default)]
    pub discovery_data: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NET: &str = "74b0d6f8a2baf9a9b922cb466a97c1e059300fc58c4d607b95e68eedf1e64ad4";
    const EP: &str = "3a372fe9788bbcd106e19e2c625da6341ad2e09431b9f349510b4e47410b38db";

    fn encode<T: Serialize>(value: &T) -> String {
        serde_json::to_string(value).expect("encode")
    }

    #[test]
    fn create_network_decodes_dual_stack_request() {
        let body = format!(
            "{{\"NetworkID\":\"{NET}\",\"Options\":{{\"com.docker.network.enable_ipv6\":true,\
             \"com.docker.network.generic\":{{\"com.docker.network.driver.mtu\":\"1400\"}}}},\
             \"IPv4Data\":[{{\"AddressSpace\":\"S\",\"AuxAddresses\":{{\"router\":\"10.252.100.2/32\"}},\
             \"Gateway\":\"10.252.100.1/32\",\"Pool\":\"10.252.100.0/24\"}}],\
             \"IPv6Data\":[{{\"AddressSpace\":\"S\",\"Gateway\":\"fdc1:1a00:97:100::1/128\",\
             \"Pool\":\"fdc1:1a00:97:100::/64\"}}]}}\n"
        );
        let r: CreateNetworkRequest = serde_json::from_str(&body).expect("decode");
        assert_eq!(r.network_id, NET);
        assert_eq!(r.options[OPTION_ENABLE_IPV6], json!(true));
        assert_eq!(r.options[OPTION_GENERIC][OPTION_MTU], json!("1400"));
        assert_eq!(r.ipv4_data.len(), 1);
        assert_eq!(r.ipv4_data[0].pool, "10.252.100.0/24");
        assert_eq!(r.ipv4_data[0].gateway, "10.252.100.1/32");
        assert_eq!(r.ipv4_data[0].aux_addresses["router"], "10.252.100.2/32");
        assert_eq!(r.ipv6_data[0].pool, "fdc1:1a00:97:100::/64");
        assert!(r.ipv6_data[0].aux_addresses.is_empty());
    }

    #[test]
    fn create_network_accepts_nulls_and_missing_keys() {
        let r: CreateNetworkRequest = serde_json::from_str(
            r#"{"NetworkID":"n","Options":null,"IPv4Data":[{"AddressSpace":null,"Pool":"10.252.1.0/24","Gateway":null,"AuxAddresses":null}],"IPv6Data":null}"#,
        )
        .expect("decode");
        assert!(r.options.is_empty());
        assert!(r.ipv6_data.is_empty());
        assert_eq!(r.ipv4_data[0].address_space, "");
        assert_eq!(r.ipv4_data[0].gateway, "");
        assert!(r.ipv4_data[0].aux_addresses.is_empty());

        let r: CreateNetworkRequest = serde_json::from_str(r#"{"NetworkID":"n"}"#).expect("decode");
        assert_eq!(r, CreateNetworkRequest { network_id: "n".to_owned(), ..Default::default() });
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let r: EndpointRequest =
            serde_json::from_str(r#"{"NetworkID":"n","EndpointID":"e","Err":"","Future":{"nested":[1,2]}}"#)
                .expect("decode");
        assert_eq!(r.network_id, "n");
        assert_eq!(r.endpoint_id, "e");
    }

    #[test]
    fn keys_are_case_sensitive_as_dockerd_spells_them() {
        // dockerd always writes `NetworkID`; a differently-cased key is just an unknown key.
        let r: DeleteNetworkRequest = serde_json::from_str(r#"{"networkid":"n"}"#).expect("decode");
        assert_eq!(r.network_id, "");
    }

    #[test]
    fn wrong_types_name_the_expected_type() {
        let err = serde_json::from_str::<DeleteNetworkRequest>(r#"{"NetworkID":42}"#)
            .expect_err("number for string must fail");
        let text = err.to_string();
        assert!(text.contains("invalid type: integer `42`, expected a string"), "{text}");

        let err = serde_json::from_str::<CreateNetworkRequest>(r#"{"NetworkID":"n","IPv4Data":{}}"#)
            .expect_err("object for array must fail");
        assert!(err.to_string().contains("expected a sequence"), "{err}");

        let err = serde_json::from_str::<JoinRequest>(r#"{"Options":[1]}"#).expect_err("array for map must fail");
        assert!(err.to_string().contains("expected a map"), "{err}");

        let err = serde_json::from_str::<StaticRoute>(r#"{"Destination":"x","RouteType":256}"#)
            .expect_err("route type out of u8 range must fail");
        assert!(err.to_string().contains("u8"), "{err}");
    }

    #[test]
    fn create_endpoint_decodes_options_of_mixed_types() {
        let body = format!(
            r#"{{"NetworkID":"{NET}","EndpointID":"{EP}","Interface":{{"Address":"10.252.110.10/32","AddressIPv6":"fdc1:1a00:97:110::10/128","MacAddress":"02:42:0a:fc:6e:0a"}},"Options":{{"com.docker.network.endpoint.dnsservers":["10.252.110.53"],"com.docker.network.endpoint.exposedports":[{{"Proto":6,"Port":80}}],"com.docker.network.endpoint.macaddress":"AkIK/G4K","com.docker.network.portmap":[{{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":18080,"HostPortEnd":18080}}]}}}}"#
        );
        let r: CreateEndpointRequest = serde_json::from_str(&body).expect("decode");
        assert_eq!(r.interface.address, "10.252.110.10/32");
        assert_eq!(r.interface.address_ipv6, "fdc1:1a00:97:110::10/128");
        assert_eq!(r.interface.mac_address, "02:42:0a:fc:6e:0a");
        assert_eq!(r.options[MAC_ADDRESS_OPTION], json!("AkIK/G4K"));
        assert_eq!(r.options[OPTION_EXPOSED_PORTS][0]["Port"], json!(80));
        assert_eq!(r.options[OPTION_PORT_MAP][0]["HostPort"], json!(18080));
        assert_eq!(r.options[OPTION_DNS_SERVERS], json!(["10.252.110.53"]));
    }

    #[test]
    fn create_endpoint_accepts_null_interface_and_fields() {
        let r: CreateEndpointRequest =
            serde_json::from_str(r#"{"NetworkID":"n","EndpointID":"e","Interface":null,"Options":null}"#)
                .expect("decode");
        assert!(r.interface.is_empty());
        assert!(r.options.is_empty());
        let r: CreateEndpointRequest =
            serde_json::from_str(r#"{"Interface":{"Address":null,"AddressIPv6":null,"MacAddress":null}}"#)
                .expect("decode");
        assert!(r.interface.is_empty());
    }

    #[test]
    fn create_endpoint_response_with_only_mac() {
        let response = CreateEndpointResponse {
            interface: Some(EndpointInterface { mac_address: "02:42:0a:fc:00:05".to_owned(), ..Default::default() }),
        };
        assert_eq!(encode(&response), r#"{"Interface":{"MacAddress":"02:42:0a:fc:00:05"}}"#);
    }

    #[test]
    fn create_endpoint_response_without_changes_is_empty_object() {
        assert_eq!(encode(&CreateEndpointResponse::default()), "{}");
        let all_empty = CreateEndpointResponse { interface: Some(EndpointInterface::default()) };
        assert_eq!(encode(&all_empty), "{}");
    }

    #[test]
    fn create_endpoint_response_decodes_null_interface() {
        let r: CreateEndpointResponse = serde_json::from_str(r#"{"Interface":null}"#).expect("decode");
        assert_eq!(r.interface, None);
        let r: CreateEndpointResponse = serde_json::from_str("{}").expect("decode");
        assert_eq!(r.interface, None);
    }

    #[test]
    fn join_response_full_shape() {
        let response = JoinResponse {
            interface_name: Some(InterfaceName {
                src_name: "crsp3a372fe9788".to_owned(),
                dst_prefix: "eth".to_owned(),
            }),
            gateway: "169.254.1.1".to_owned(),
            gateway_ipv6: "fe80::1".to_owned(),
            static_routes: vec![
                StaticRoute {
                    destination: "169.254.1.1/32".to_owned(),
                    route_type: ROUTE_TYPE_CONNECTED,
                    next_hop: String::new(),
                },
                StaticRoute {
                    destination: "fdc1:1a00:97:200::/64".to_owned(),
                    route_type: ROUTE_TYPE_NEXTHOP,
                    next_hop: "fe80::1".to_owned(),
                },
            ],
            disable_gateway_service: true,
        };
        assert_eq!(
            encode(&response),
            concat!(
                r#"{"InterfaceName":{"SrcName":"crsp3a372fe9788","DstPrefix":"eth"},"#,
                r#""Gateway":"169.254.1.1","GatewayIPv6":"fe80::1","StaticRoutes":["#,
                r#"{"Destination":"169.254.1.1/32","RouteType":1},"#,
                r#"{"Destination":"fdc1:1a00:97:200::/64","RouteType":0,"NextHop":"fe80::1"}],"#,
                r#""DisableGatewayService":true}"#
            )
        );
        let back: JoinResponse = serde_json::from_str(&encode(&response)).expect("decode");
        assert_eq!(back, response);
    }

    #[test]
    fn join_response_omits_empty_gateways_and_routes() {
        let response = JoinResponse {
            interface_name: Some(InterfaceName { src_name: "tmp0".to_owned(), dst_prefix: "eth".to_owned() }),
            disable_gateway_service: true,
            ..Default::default()
        };
        assert_eq!(
            encode(&response),
            r#"{"InterfaceName":{"SrcName":"tmp0","DstPrefix":"eth"},"DisableGatewayService":true}"#
        );
        assert_eq!(encode(&JoinResponse::default()), r#"{"DisableGatewayService":false}"#);
    }

    #[test]
    fn join_response_decodes_nulls() {
        let r: JoinResponse = serde_json::from_str(
            r#"{"InterfaceName":null,"Gateway":null,"GatewayIPv6":null,"StaticRoutes":null,"DisableGatewayService":null}"#,
        )
        .expect("decode");
        assert_eq!(r, JoinResponse::default());
    }

    #[test]
    fn join_request_keeps_sandbox_options_with_null_values() {
        let body = format!(
            r#"{{"NetworkID":"{NET}","EndpointID":"{EP}","SandboxKey":"/var/run/docker/netns/64059aa5e59d","Options":{{"com.docker.network.endpoint.exposedports":[{{"Proto":6,"Port":80}}],"com.docker.network.generic":{{"ChildEndpoints":null,"ParentEndpoints":null}},"com.docker.network.portmap":[]}}}}"#
        );
        let r: JoinRequest = serde_json::from_str(&body).expect("decode");
        assert_eq!(r.sandbox_key, "/var/run/docker/netns/64059aa5e59d");
        assert_eq!(r.options[OPTION_GENERIC]["ChildEndpoints"], Value::Null);
        assert_eq!(r.options[OPTION_PORT_MAP], json!([]));
    }

    #[test]
    fn capabilities_response_shape() {
        let response = CapabilitiesResponse { scope: "local".to_owned(), connectivity_scope: "local".to_owned() };
        assert_eq!(encode(&response), r#"{"Scope":"local","ConnectivityScope":"local"}"#);
        let only_scope = CapabilitiesResponse { scope: "local".to_owned(), connectivity_scope: String::new() };
        assert_eq!(encode(&only_scope), r#"{"Scope":"local"}"#);
    }

    #[test]
    fn endpoint_oper_info_response_always_has_value() {
        assert_eq!(encode(&EndpointOperInfoResponse::default()), r#"{"Value":{}}"#);
        let mut value = Map::new();
        value.insert("ifname".to_owned(), json!("lxc1"));
        assert_eq!(encode(&EndpointOperInfoResponse { value }), r#"{"Value":{"ifname":"lxc1"}}"#);
        let back: EndpointOperInfoResponse = serde_json::from_str(r#"{"Value":null}"#).expect("decode");
        assert!(back.value.is_empty());
    }

    #[test]
    fn ipam_data_encodes_like_dockerd() {
        let data = IpamData {
            address_space: "S".to_owned(),
            pool: "10.252.1.0/24".to_owned(),
            gateway: "10.252.1.1/32".to_owned(),
            aux_addresses: BTreeMap::new(),
        };
        assert_eq!(encode(&data), r#"{"AddressSpace":"S","Gateway":"10.252.1.1/32","Pool":"10.252.1.0/24"}"#);
    }

    #[test]
    fn program_external_connectivity_round_trip() {
        let body = format!(
            r#"{{"NetworkID":"{NET}","EndpointID":"{EP}","Options":{{"com.docker.network.portmap":[{{"Proto":17,"IP":"","Port":53,"HostIP":"127.0.0.1","HostPort":18053,"HostPortEnd":18053}}]}}}}"#
        );
        let r: ProgramExternalConnectivityRequest = serde_json::from_str(&body).expect("decode");
        assert_eq!(r.options[OPTION_PORT_MAP][0]["HostIP"], json!("127.0.0.1"));
        let again: ProgramExternalConnectivityRequest = serde_json::from_str(&encode(&r)).expect("decode again");
        assert_eq!(again, r);
        assert_eq!(serde_json::to_value(&r).expect("to value"), serde_json::from_str::<Value>(&body).expect("parse"));
    }

    #[test]
    fn discovery_request_decodes_node_data() {
        let r: DiscoveryRequest = serde_json::from_str(
            r#"{"DiscoveryType":1,"DiscoveryData":{"Address":"10.252.0.5","BindAddress":"10.252.0.5","Self":true}}"#,
        )
        .expect("decode");
        assert_eq!(r.discovery_type, 1);
        assert_eq!(r.discovery_data["Self"], json!(true));
        let empty: DiscoveryRequest = serde_json::from_str(r#"{"DiscoveryType":null}"#).expect("decode");
        assert_eq!(empty.discovery_type, 0);
        assert_eq!(empty.discovery_data, Value::Null);
    }
}
