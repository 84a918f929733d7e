//! Checks the wire types against requests recorded from a real dockerd 20.10.24 (and the replies
//! the recording plugin gave, which dockerd accepted): see `fixtures/README.md`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use plugin_spec::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/dockerd-20.10");
/// The address space the recorder answered in GetDefaultAddressSpaces.
const RECORDER_SPACE: &str = "CrsRecorderLocal";

#[derive(Deserialize, Debug)]
struct Fixture {
    method: String,
    request_line: String,
    headers: Map<String, Value>,
    request_body: String,
    status: u16,
    response_body: String,
    #[serde(skip)]
    scenario: String,
    #[serde(skip)]
    file: String,
}

impl Fixture {
    fn name(&self) -> String {
        format!("{}/{}", self.scenario, self.file)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.as_str())
    }

    fn request<T: DeserializeOwned>(&self) -> T {
        decode(self.request_body.as_bytes()).unwrap_or_else(|e| panic!("{}: request does not decode: {e}", self.name()))
    }

    fn response<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.response_body)
            .unwrap_or_else(|e| panic!("{}: response does not decode: {e}", self.name()))
    }
}

fn scenario_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(FIXTURES)
        .expect("fixtures directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// The calls of one scenario in the order dockerd made them (`NN-<Method>.json`).
fn load_scenario(dir: &Path) -> Vec<Fixture> {
    let scenario = dir.file_name().expect("name").to_string_lossy().into_owned();
    let mut files: Vec<(u32, PathBuf)> = fs::read_dir(dir)
        .expect("scenario directory")
        .map(|e| e.expect("dir entry").path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            let (number, _) = name.split_once('-')?;
            let number = number.parse().ok()?;
            name.ends_with(".json").then_some((number, p))
        })
        .collect();
    files.sort();
    let fixtures: Vec<Fixture> = files
        .into_iter()
        .enumerate()
        .map(|(i, (number, path))| {
            assert_eq!(number as usize, i + 1, "{}: numbering has a gap", path.display());
            let text = fs::read_to_string(&path).expect("read fixture");
            let mut f: Fixture = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            f.scenario = scenario.clone();
            f.file = path.file_name().expect("name").to_string_lossy().into_owned();
            assert!(
                f.file.ends_with(&format!("-{}.json", f.method)),
                "{}: file name does not match method {}",
                f.name(),
                f.method
            );
            f
        })
        .collect();
    assert!(!fixtures.is_empty(), "{scenario}: no recorded calls");
    fixtures
}

fn all_fixtures() -> Vec<Fixture> {
    let all: Vec<Fixture> = scenario_dirs().iter().flat_map(|d| load_scenario(d)).collect();
    assert!(all.len() > 100, "expected the full recording, found {} calls", all.len());
    all
}

fn scenario(name: &str) -> Vec<Fixture> {
    load_scenario(&Path::new(FIXTURES).join(name))
}

fn methods(calls: &[Fixture]) -> Vec<&str> {
    calls.iter().map(|f| f.method.as_str()).collect()
}

/// Drops `null`, `""`, `[]` and `{}` (recursively) so that "absent", "null" and "empty" compare
/// equal, as they mean the same to both sides; everything with content must match exactly.
fn prune(value: Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::Array(a) if a.is_empty() => None,
        Value::Array(a) => Some(Value::Array(a.into_iter().map(|v| prune(v).unwrap_or(Value::Null)).collect())),
        Value::Object(m) => {
            let m: Map<String, Value> = m.into_iter().filter_map(|(k, v)| prune(v).map(|v| (k, v))).collect();
            (!m.is_empty()).then_some(Value::Object(m))
        }
        other => Some(other),
    }
}

/// Decodes the request, checks that encoding it again loses nothing dockerd sent, and that the
/// encoding decodes to the same value.
fn request_round_trip<T>(f: &Fixture) -> T
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let typed: T = f.request();
    let original: Value = serde_json::from_str(&f.request_body).expect("request is JSON");
    let encoded = serde_json::to_value(&typed).expect("encode");
    assert_eq!(
        prune(encoded.clone()),
        prune(original),
        "{}: re-encoded request differs from what dockerd sent",
        f.name()
    );
    let again: T = serde_json::from_value(encoded).expect("decode re-encoded");
    assert_eq!(again, typed, "{}: round trip changed the value", f.name());
    typed
}

/// Decodes the reply dockerd accepted and checks our encoding of it is exactly what was sent.
fn response_exact<T>(f: &Fixture)
where
    T: DeserializeOwned + Serialize,
{
    let typed: T = f.response();
    let sent: Value = serde_json::from_str(&f.response_body).expect("response is JSON");
    assert_eq!(
        serde_json::to_value(&typed).expect("encode"),
        sent,
        "{}: our encoding differs from the reply dockerd accepted",
        f.name()
    );
}

fn is_docker_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64 character") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn mac_bytes(text: &str) -> Vec<u8> {
    text.split(':').map(|b| u8::from_str_radix(b, 16).expect("hex byte")).collect()
}

fn path_of(method: &str) -> Option<&'static str> {
    Some(match method {
        "Plugin.Activate" => PLUGIN_ACTIVATE,
        "NetworkDriver.GetCapabilities" => NETWORK_DRIVER_GET_CAPABILITIES,
        "NetworkDriver.CreateNetwork" => NETWORK_DRIVER_CREATE_NETWORK,
        "NetworkDriver.DeleteNetwork" => NETWORK_DRIVER_DELETE_NETWORK,
        "NetworkDriver.CreateEndpoint" => NETWORK_DRIVER_CREATE_ENDPOINT,
        "NetworkDriver.EndpointOperInfo" => NETWORK_DRIVER_ENDPOINT_OPER_INFO,
        "NetworkDriver.DeleteEndpoint" => NETWORK_DRIVER_DELETE_ENDPOINT,
        "NetworkDriver.Join" => NETWORK_DRIVER_JOIN,
        "NetworkDriver.Leave" => NETWORK_DRIVER_LEAVE,
        "NetworkDriver.ProgramExternalConnectivity" => NETWORK_DRIVER_PROGRAM_EXTERNAL_CONNECTIVITY,
        "NetworkDriver.RevokeExternalConnectivity" => NETWORK_DRIVER_REVOKE_EXTERNAL_CONNECTIVITY,
        "NetworkDriver.DiscoverNew" => NETWORK_DRIVER_DISCOVER_NEW,
        "NetworkDriver.DiscoverDelete" => NETWORK_DRIVER_DISCOVER_DELETE,
        "NetworkDriver.AllocateNetwork" => NETWORK_DRIVER_ALLOCATE_NETWORK,
        "NetworkDriver.FreeNetwork" => NETWORK_DRIVER_FREE_NETWORK,
        "IpamDriver.GetCapabilities" => IPAM_DRIVER_GET_CAPABILITIES,
        "IpamDriver.GetDefaultAddressSpaces" => IPAM_DRIVER_GET_DEFAULT_ADDRESS_SPACES,
        "IpamDriver.RequestPool" => IPAM_DRIVER_REQUEST_POOL,
        "IpamDriver.ReleasePool" => IPAM_DRIVER_RELEASE_POOL,
        "IpamDriver.RequestAddress" => IPAM_DRIVER_REQUEST_ADDRESS,
        "IpamDriver.ReleaseAddress" => IPAM_DRIVER_RELEASE_ADDRESS,
        _ => return None,
    })
}

fn check_create_network(f: &Fixture) {
    let r: CreateNetworkRequest = request_round_trip(f);
    assert!(is_docker_id(&r.network_id), "{}", f.name());
    let ipv6 = r.options.get(OPTION_ENABLE_IPV6).and_then(Value::as_bool);
    assert!(ipv6.is_some(), "{}: enable_ipv6 must be a bool", f.name());
    assert!(
        r.options.get(OPTION_GENERIC).is_some_and(Value::is_object),
        "{}: generic options must be an object",
        f.name()
    );
    if let Some(internal) = r.options.get(OPTION_INTERNAL) {
        assert_eq!(internal, &Value::Bool(true), "{}", f.name());
    }
    assert_eq!(r.ipv4_data.len(), 1, "{}", f.name());
    assert_eq!(ipv6 == Some(true), !r.ipv6_data.is_empty(), "{}", f.name());
    for data in r.ipv4_data.iter().chain(&r.ipv6_data) {
        assert_eq!(data.address_space, RECORDER_SPACE, "{}", f.name());
        assert!(data.pool.contains('/'), "{}: pool is CIDR", f.name());
        assert!(data.gateway.contains('/'), "{}: gateway is CIDR", f.name());
        assert!(data.aux_addresses.values().all(|a| a.contains('/')), "{}", f.name());
    }
}

fn check_create_endpoint(f: &Fixture) {
    let r: CreateEndpointRequest = request_round_trip(f);
    assert!(is_docker_id(&r.network_id) && is_docker_id(&r.endpoint_id), "{}", f.name());
    assert!(r.interface.address.contains('/'), "{}: IPv4 address is CIDR", f.name());
    match r.options.get(MAC_ADDRESS_OPTION) {
        Some(Value::String(b64)) => {
            assert_eq!(base64_decode(b64), mac_bytes(&r.interface.mac_address), "{}", f.name())
        }
        Some(other) => panic!("{}: unexpected MAC option {other}", f.name()),
        None => assert!(r.interface.mac_address.is_empty(), "{}", f.name()),
    }
}

fn check_join(f: &Fixture) {
    let r: JoinRequest = request_round_trip(f);
    let sandbox = r
        .sandbox_key
        .strip_prefix("/var/run/docker/netns/")
        .unwrap_or_else(|| panic!("{}: sandbox key {}", f.name(), r.sandbox_key));
    assert_eq!(sandbox.len(), 12, "{}", f.name());
}

fn check_request(f: &Fixture) {
    let path = path_of(&f.method).unwrap_or_else(|| panic!("{}: no wire type for {}", f.name(), f.method));
    assert_eq!(f.request_line, format!("POST {path} HTTP/1.1"), "{}", f.name());
    match f.method.as_str() {
        "Plugin.Activate"
        | "NetworkDriver.GetCapabilities"
        | "IpamDriver.GetCapabilities"
        | "IpamDriver.GetDefaultAddressSpaces" => {
            assert_eq!(f.request_body, "", "{}: argument-less call has a body", f.name());
            assert!(matches!(decode::<EmptyResponse>(f.request_body.as_bytes()), Err(DecodeError::EmptyBody)));
        }
        "NetworkDriver.CreateNetwork" => check_create_network(f),
        "NetworkDriver.DeleteNetwork" => {
            let r: DeleteNetworkRequest = request_round_trip(f);
            assert!(is_docker_id(&r.network_id), "{}", f.name());
        }
        "NetworkDriver.CreateEndpoint" => check_create_endpoint(f),
        "NetworkDriver.Join" => check_join(f),
        "NetworkDriver.EndpointOperInfo"
        | "NetworkDriver.DeleteEndpoint"
        | "NetworkDriver.Leave"
        | "NetworkDriver.RevokeExternalConnectivity" => {
            let r: EndpointRequest = request_round_trip(f);
            assert!(is_docker_id(&r.network_id) && is_docker_id(&r.endpoint_id), "{}", f.name());
        }
        "NetworkDriver.ProgramExternalConnectivity" => {
            let r: ProgramExternalConnectivityRequest = request_round_trip(f);
            assert!(r.options.contains_key(OPTION_PORT_MAP), "{}", f.name());
        }
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => {
            request_round_trip::<DiscoveryRequest>(f);
        }
        "IpamDriver.RequestPool" => {
            let r: RequestPoolRequest = request_round_trip(f);
            assert_eq!(r.address_space, RECORDER_SPACE, "{}", f.name());
        }
        "IpamDriver.ReleasePool" => {
            let r: ReleasePoolRequest = request_round_trip(f);
            assert!(!r.pool_id.is_empty(), "{}", f.name());
        }
        "IpamDriver.RequestAddress" => {
            let r: RequestAddressRequest = request_round_trip(f);
            assert!(!r.address.contains('/'), "{}: preferred address is bare", f.name());
            assert!(r.is_gateway() || r.options.is_empty(), "{}", f.name());
        }
        "IpamDriver.ReleaseAddress" => {
            let r: ReleaseAddressRequest = request_round_trip(f);
            assert!(!r.address.is_empty() && !r.address.contains('/'), "{}", f.name());
        }
        other => panic!("{}: unhandled method {other}", f.name()),
    }
}

fn check_response(f: &Fixture) {
    if f.status != 200 {
        let e: ErrorResponse = f.response();
        assert!(!e.err.is_empty(), "{}: error reply without text", f.name());
        response_exact::<ErrorResponse>(f);
        return;
    }
    match f.method.as_str() {
        "Plugin.Activate" => response_exact::<ActivateResponse>(f),
        "NetworkDriver.GetCapabilities" => response_exact::<CapabilitiesResponse>(f),
        "NetworkDriver.CreateEndpoint" => response_exact::<CreateEndpointResponse>(f),
        "NetworkDriver.EndpointOperInfo" => response_exact::<EndpointOperInfoResponse>(f),
        "NetworkDriver.Join" => response_exact::<JoinResponse>(f),
        "IpamDriver.GetCapabilities" => response_exact::<IpamCapabilitiesResponse>(f),
        "IpamDriver.GetDefaultAddressSpaces" => response_exact::<AddressSpacesResponse>(f),
        "IpamDriver.RequestPool" => response_exact::<RequestPoolResponse>(f),
        "IpamDriver.RequestAddress" => response_exact::<RequestAddressResponse>(f),
        _ => response_exact::<EmptyResponse>(f),
    }
}

#[test]
fn every_recorded_request_decodes_and_round_trips() {
    for f in all_fixtures() {
        check_request(&f);
    }
}

#[test]
fn every_recorded_reply_decodes_and_encodes_identically() {
    for f in all_fixtures() {
        check_response(&f);
    }
}

#[test]
fn headers_are_what_dockerd_20_10_sends() {
    for f in all_fixtures() {
        assert_eq!(f.header("Accept"), Some(PLUGIN_ACCEPT_HEADER), "{}", f.name());
        assert_eq!(f.header("Content-Type"), None, "{}: no Content-Type is sent", f.name());
        assert_eq!(f.header("Host"), Some(""), "{}: Host is empty", f.name());
        assert_eq!(f.header("Transfer-Encoding"), None, "{}", f.name());
        let length: usize = f
            .header("Content-Length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{}: Content-Length", f.name()));
        assert_eq!(length, f.request_body.len(), "{}", f.name());
        if !f.request_body.is_empty() {
            assert!(f.request_body.ends_with("}\n"), "{}: body ends with a newline", f.name());
        }
    }
}

#[test]
fn recording_covers_every_method_a_local_driver_gets() {
    let seen: BTreeSet<String> = all_fixtures().into_iter().map(|f| f.method).collect();
    for method in [
        "Plugin.Activate",
        "NetworkDriver.GetCapabilities",
        "NetworkDriver.CreateNetwork",
        "NetworkDriver.DeleteNetwork",
        "NetworkDriver.CreateEndpoint",
        "NetworkDriver.EndpointOperInfo",
        "NetworkDriver.DeleteEndpoint",
        "NetworkDriver.Join",
        "NetworkDriver.Leave",
        "NetworkDriver.ProgramExternalConnectivity",
        "NetworkDriver.RevokeExternalConnectivity",
        "IpamDriver.GetCapabilities",
        "IpamDriver.GetDefaultAddressSpaces",
        "IpamDriver.RequestPool",
        "IpamDriver.ReleasePool",
        "IpamDriver.RequestAddress",
        "IpamDriver.ReleaseAddress",
    ] {
        assert!(seen.contains(method), "no recording of {method}");
    }
}

#[test]
fn activation_then_network_create_and_remove() {
    let calls = scenario("network-create-v4");
    assert_eq!(
        methods(&calls),
        [
            "Plugin.Activate",
            "NetworkDriver.GetCapabilities",
            "IpamDriver.GetCapabilities",
            "IpamDriver.GetDefaultAddressSpaces",
            "IpamDriver.RequestPool",
            "IpamDriver.RequestAddress",
            "NetworkDriver.CreateNetwork",
            "IpamDriver.ReleaseAddress",
            "IpamDriver.ReleasePool",
            "NetworkDriver.DeleteNetwork",
        ]
    );
    let pool: RequestPoolRequest = calls[4].request();
    assert!(!pool.v6 && pool.pool.is_empty() && pool.sub_pool.is_empty());
    // The docker CLI sends an empty object, not null, when no --ipam-opt is given.
    assert!(calls[4].request_body.contains("\"Options\":{}"));
    let gateway: RequestAddressRequest = calls[5].request();
    assert!(gateway.is_gateway());
    assert_eq!(gateway.address, "");
    let create: CreateNetworkRequest = calls[6].request();
    assert_eq!(create.options[OPTION_ENABLE_IPV6], Value::Bool(false));
    assert!(create.ipv6_data.is_empty());
    assert_eq!(create.ipv4_data[0].gateway, "10.252.1.1/32", "gateway keeps the IPAM's /32");
}

#[test]
fn explicit_ipam_settings_reach_the_ipam_and_the_driver() {
    let calls = scenario("network-explicit-ipam");
    let pools: Vec<RequestPoolRequest> =
        calls.iter().filter(|f| f.method == "IpamDriver.RequestPool").map(Fixture::request).collect();
    assert_eq!(pools.len(), 2);
    assert_eq!(
        (pools[0].pool.as_str(), pools[0].sub_pool.as_str(), pools[0].v6),
        ("10.252.100.0/24", "10.252.100.128/25", false)
    );
    assert_eq!(
        (pools[1].pool.as_str(), pools[1].sub_pool.as_str(), pools[1].v6),
        ("fdc1:1a00:97:100::/64", "fdc1:1a00:97:100::/80", true)
    );
    for pool in &pools {
        assert_eq!(pool.options.get("pool-option").map(String::as_str), Some("abc"));
        assert_eq!(pool.options.get("other").map(String::as_str), Some("1"));
    }
    let addresses: Vec<RequestAddressRequest> =
        calls.iter().filter(|f| f.method == "IpamDriver.RequestAddress").map(Fixture::request).collect();
    let requested: Vec<(&str, bool)> = addresses.iter().map(|a| (a.address.as_str(), a.is_gateway())).collect();
    assert_eq!(
        requested,
        [
            ("10.252.100.1", true),
            ("10.252.100.2", false),
            ("10.252.100.3", false),
            ("fdc1:1a00:97:100::1", true),
            ("fdc1:1a00:97:100::2", false),
        ]
    );
    let create_call = calls.iter().find(|f| f.method == "NetworkDriver.CreateNetwork").expect("CreateNetwork");
    assert!(!create_call.request_body.contains("crs-rec-label"), "network labels are not sent");
    let create: CreateNetworkRequest = create_call.request();
    assert_eq!(create.options[OPTION_GENERIC][OPTION_MTU], Value::from("1400"));
    assert_eq!(create.options[OPTION_GENERIC]["foo"], Value::from("bar"));
    assert!(!create.options.contains_key(OPTION_INTERNAL));
    assert_eq!(create.ipv4_data[0].aux_addresses["spare"], "10.252.100.3/32");
    assert_eq!(create.ipv6_data[0].aux_addresses["router6"], "fdc1:1a00:97:100::2/128");
}

#[test]
fn internal_network_sets_the_internal_option() {
    let calls = scenario("network-internal");
    let create: CreateNetworkRequest =
        calls.iter().find(|f| f.method == "NetworkDriver.CreateNetwork").expect("CreateNetwork").request();
    assert_eq!(create.options[OPTION_INTERNAL], Value::Bool(true));
    assert_eq!(create.options[OPTION_GENERIC]["mode"], Value::from("internal"));
}

#[test]
fn gateway_in_pool_data_skips_gateway_request_but_not_its_release() {
    let calls = scenario("network-gateway-in-pool-data");
    assert!(!calls.iter().any(|f| f.method == "IpamDriver.RequestAddress"));
    let pool: RequestPoolResponse = calls[0].response();
    let gateway = pool.data[GATEWAY_DATA_KEY].clone();
    let create: CreateNetworkRequest =
        calls.iter().find(|f| f.method == "NetworkDriver.CreateNetwork").expect("CreateNetwork").request();
    assert_eq!(create.ipv4_data[0].gateway, gateway, "pool data gateway is passed verbatim");
    let released: Vec<ReleaseAddressRequest> =
        calls.iter().filter(|f| f.method == "IpamDriver.ReleaseAddress").map(Fixture::request).collect();
    let bare = gateway.split('/').next().expect("address");
    assert!(
        released.iter().any(|r| r.address == bare && r.pool_id == pool.pool_id),
        "dockerd releases a gateway it never requested"
    );
}

#[test]
fn overlapping_pool_is_requested_again_and_released() {
    let calls = scenario("network-pool-overlap");
    assert_eq!(methods(&calls)[..3], ["IpamDriver.RequestPool", "IpamDriver.RequestPool", "IpamDriver.ReleasePool"]);
    let first: RequestPoolResponse = calls[0].response();
    let second: RequestPoolResponse = calls[1].response();
    assert_ne!(first.pool, second.pool);
    let released: ReleasePoolRequest = calls[2].request();
    assert_eq!(released.pool_id, first.pool_id);
}

#[test]
fn failed_create_network_is_rolled_back_without_delete() {
    let calls = scenario("network-create-fails");
    let create = calls.iter().find(|f| f.method == "NetworkDriver.CreateNetwork").expect("CreateNetwork");
    assert_eq!(create.status, 500);
    assert!(!calls.iter().any(|f| f.method == "NetworkDriver.DeleteNetwork"));
    let releases = calls.iter().filter(|f| f.method.starts_with("IpamDriver.Release")).count();
    assert_eq!(releases, 4, "gateway + pool for each family");
}

#[test]
fn container_with_options_sends_ports_dns_and_mac() {
    let calls = scenario("container-options");
    let seq = methods(&calls);
    let ce = seq.iter().position(|m| *m == "NetworkDriver.CreateEndpoint").expect("CreateEndpoint");
    assert_eq!(seq[ce - 2..ce], ["IpamDriver.RequestAddress", "IpamDriver.RequestAddress"]);
    assert_eq!(seq[ce + 1], "NetworkDriver.Join");
    let v4: RequestAddressRequest = calls[ce - 2].request();
    let v6: RequestAddressRequest = calls[ce - 1].request();
    assert_eq!((v4.address.as_str(), v6.address.as_str()), ("10.252.110.10", "fdc1:1a00:97:110::10"));

    let endpoint: CreateEndpointRequest = calls[ce].request();
    assert_eq!(endpoint.interface.mac_address, "02:42:0a:fc:6e:0a");
    assert_eq!(endpoint.options[MAC_ADDRESS_OPTION], Value::from("AkIK/G4K"));
    assert_eq!(endpoint.options[OPTION_DNS_SERVERS], serde_json::json!(["10.252.110.53"]));
    let exposed = endpoint.options[OPTION_EXPOSED_PORTS].as_array().expect("array");
    assert!(exposed.contains(&serde_json::json!({"Proto": 17, "Port": 9001})));
    assert!(exposed.contains(&serde_json::json!({"Proto": 6, "Port": 9000})));
    let portmap = endpoint.options[OPTION_PORT_MAP].as_array().expect("array");
    assert!(portmap.contains(&serde_json::json!(
        {"Proto": 17, "IP": "", "Port": 53, "HostIP": "127.0.0.1", "HostPort": 18053, "HostPortEnd": 18053}
    )));
    // The reply to a request that had a MAC must not set one.
    let reply: CreateEndpointResponse = calls[ce].response();
    assert_eq!(reply.interface, None);

    let join: JoinRequest = calls[ce + 1].request();
    assert_eq!(join.options[OPTION_PORT_MAP], endpoint.options[OPTION_PORT_MAP]);
    assert!(!join.options.contains_key(OPTION_DNS_SERVERS), "Join gets sandbox options only");
}

#[test]
fn container_without_mac_gets_the_drivers_mac() {
    let calls = scenario("container-defaults");
    let create = calls.iter().find(|f| f.method == "NetworkDriver.CreateEndpoint").expect("CreateEndpoint");
    let request: CreateEndpointRequest = create.request();
    assert_eq!(request.interface.mac_address, "");
    assert!(!request.interface.address_ipv6.is_empty());
    let reply: CreateEndpointResponse = create.response();
    let interface = reply.interface.expect("interface in reply");
    assert!(!interface.mac_address.is_empty());
    assert_eq!(interface.address, "");
    assert_eq!(create.response_body, format!(r#"{{"Interface":{{"MacAddress":"{}"}}}}"#, interface.mac_address));
    // stop: Revoke (gateway endpoint) → Leave → DeleteEndpoint → ReleaseAddress v4, v6.
    let seq = methods(&calls);
    let revoke = seq.iter().position(|m| *m == "NetworkDriver.RevokeExternalConnectivity").expect("Revoke");
    assert_eq!(
        seq[revoke..revoke + 5],
        [
            "NetworkDriver.RevokeExternalConnectivity",
            "NetworkDriver.Leave",
            "NetworkDriver.DeleteEndpoint",
            "IpamDriver.ReleaseAddress",
            "IpamDriver.ReleaseAddress",
        ]
    );
}

#[test]
fn connect_to_container_with_bridge_ports_omits_port_options() {
    let calls = scenario("connect-bridge-container");
    let endpoint: CreateEndpointRequest =
        calls.iter().find(|f| f.method == "NetworkDriver.CreateEndpoint").expect("CreateEndpoint").request();
    assert!(endpoint.options.is_empty(), "{:?}", endpoint.options);
    let join: JoinRequest = calls.iter().find(|f| f.method == "NetworkDriver.Join").expect("Join").request();
    assert_eq!(join.options[OPTION_PORT_MAP][0]["HostPort"], Value::from(18081));
    assert_eq!(join.options[OPTION_GENERIC]["ChildEndpoints"], Value::Null);
}

#[test]
fn connect_passes_driver_opts_as_endpoint_options() {
    let calls = scenario("network-connect-disconnect");
    let endpoints: Vec<CreateEndpointRequest> =
        calls.iter().filter(|f| f.method == "NetworkDriver.CreateEndpoint").map(Fixture::request).collect();
    assert_eq!(endpoints.len(), 2);
    let second = &endpoints[1];
    assert_eq!(second.options["crs-rec.endpoint-opt"], Value::from("hello"));
    assert_eq!(second.interface.address, "10.252.120.20/32");
    assert_eq!(second.interface.address_ipv6, "fdc1:1a00:97:120::20/128");
    // Both joins name the same sandbox.
    let joins: Vec<JoinRequest> =
        calls.iter().filter(|f| f.method == "NetworkDriver.Join").map(Fixture::request).collect();
    assert_eq!(joins.len(), 2);
    assert_eq!(joins[0].sandbox_key, joins[1].sandbox_key);
    // Only the gateway endpoint (the first network) gets ProgramExternalConnectivity.
    let programmed: Vec<EndpointRequest> = calls
        .iter()
        .filter(|f| f.method == "NetworkDriver.ProgramExternalConnectivity")
        .map(Fixture::request)
        .collect();
    assert_eq!(programmed.len(), 1);
    assert_eq!(programmed[0].endpoint_id, joins[0].endpoint_id);
}

#[test]
fn same_connected_route_on_two_endpoints_fails_and_rolls_back() {
    let calls = scenario("network-connect-route-clash");
    let seq = methods(&calls);
    let joins: Vec<usize> =
        seq.iter().enumerate().filter(|(_, m)| **m == "NetworkDriver.Join").map(|(i, _)| i).collect();
    assert_eq!(joins.len(), 2);
    let first: JoinResponse = calls[joins[0]].response();
    let second: JoinResponse = calls[joins[1]].response();
    assert_eq!(first.static_routes, second.static_routes);
    let failed: JoinRequest = calls[joins[1]].request();
    assert_eq!(
        seq[joins[1] + 1..joins[1] + 4],
        ["NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint", "IpamDriver.ReleaseAddress"]
    );
    let leave: EndpointRequest = calls[joins[1] + 1].request();
    assert_eq!(leave.endpoint_id, failed.endpoint_id);
}

#[test]
fn compose_passes_ipam_options_and_fixed_addresses() {
    let calls = scenario("compose-up-down");
    let pools: Vec<RequestPoolRequest> =
        calls.iter().filter(|f| f.method == "IpamDriver.RequestPool").map(Fixture::request).collect();
    assert_eq!(pools.len(), 2);
    assert!(pools.iter().all(|p| p.options.get("pool-option").map(String::as_str) == Some("from-compose")));
    let create: CreateNetworkRequest =
        calls.iter().find(|f| f.method == "NetworkDriver.CreateNetwork").expect("CreateNetwork").request();
    assert_eq!(create.options[OPTION_ENABLE_IPV6], Value::Bool(true));
    assert_eq!(create.options[OPTION_GENERIC][OPTION_MTU], Value::from("1400"));
    let fixed = calls
        .iter()
        .filter(|f| f.method == "IpamDriver.RequestAddress")
        .map(Fixture::request::<RequestAddressRequest>)
        .any(|r| r.address == "10.252.202.10");
    assert!(fixed, "ipv4_address reaches RequestAddress");
    assert_eq!(calls.iter().filter(|f| f.method == "NetworkDriver.Join").count(), 2);
    assert_eq!(calls.last().map(|f| f.method.as_str()), Some("NetworkDriver.DeleteNetwork"));
}
