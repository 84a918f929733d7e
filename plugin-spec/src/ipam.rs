//! IpamDriver requests and responses (`/IpamDriver.*`), plus the keys dockerd reads or sends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::de::null_default;

pub const IPAM_DRIVER_GET_CAPABILITIES: &str = "/IpamDriver.GetCapabilities";
pub const IPAM_DRIVER_GET_DEFAULT_ADDRESS_SPACES: &str = "/IpamDriver.GetDefaultAddressSpaces";
pub const IPAM_DRIVER_REQUEST_POOL: &str = "/IpamDriver.RequestPool";
pub const IPAM_DRIVER_RELEASE_POOL: &str = "/IpamDriver.ReleasePool";
pub const IPAM_DRIVER_REQUEST_ADDRESS: &str = "/IpamDriver.RequestAddress";
pub const IPAM_DRIVER_RELEASE_ADDRESS: &str = "/IpamDriver.ReleaseAddress";

/// Key in [`RequestPoolResponse::data`] whose CIDR value becomes the network's gateway (then no
/// gateway RequestAddress is sent, but ReleaseAddress for it still comes at `network rm`). Also
/// the value of [`REQUEST_ADDRESS_TYPE`] in a gateway RequestAddress.
pub const GATEWAY_DATA_KEY: &str = "com.docker.network.gateway";
/// Key in [`RequestAddressRequest::options`] marking the network's gateway request; its value
/// is [`GATEWAY_DATA_KEY`].
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";

/// Reply to `/IpamDriver.GetCapabilities` (empty request; optional method).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct IpamCapabilitiesResponse {
    /// dockerd then invents a MAC per endpoint and sends it as a RequestAddress option.
    #[serde(rename = "RequiresMACAddress", default, deserialize_with = "null_default")]
    pub requires_mac_address: bool,
    /// dockerd then replays pools and addresses at its start-up.
    #[serde(rename = "RequiresRequestReplay", default, deserialize_with = "null_default")]
    pub requires_request_replay: bool,
}

/// Reply to `/IpamDriver.GetDefaultAddressSpaces` (empty request; mandatory).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct AddressSpacesResponse {
    /// Sent back as `AddressSpace` in RequestPool and seen in CreateNetwork's IPAM data.
    #[serde(rename = "LocalDefaultAddressSpace", default, deserialize_with = "null_default")]
    pub local_default_address_space: String,
    #[serde(rename = "GlobalDefaultAddressSpace", default, deserialize_with = "null_default")]
    pub global_default_address_space: String,
}

/// `/IpamDriver.RequestPool`: one per `--subnet` (or one per family without subnets).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestPoolRequest {
    #[serde(rename = "AddressSpace", default, deserialize_with = "null_default")]
    pub address_space: String,
    /// `--subnet` CIDR, or `""` for "IPAM chooses".
    #[serde(rename = "Pool", default, deserialize_with = "null_default")]
    pub pool: String,
    /// `--ip-range` CIDR or `""`.
    #[serde(rename = "SubPool", default, deserialize_with = "null_default")]
    pub sub_pool: String,
    /// `--ipam-opt`s (the docker CLI sends `{}` when there are none; API clients may send null).
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: BTreeMap<String, String>,
    /// Family to choose from when `pool` is empty.
    #[serde(rename = "V6", default, deserialize_with = "null_default")]
    pub v6: bool,
}

/// Reply to RequestPool.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestPoolResponse {
    /// Opaque to dockerd; sent back in every later call for this pool.
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
    /// CIDR.
    #[serde(rename = "Pool", default, deserialize_with = "null_default")]
    pub pool: String,
    /// Only [`GATEWAY_DATA_KEY`] is read by dockerd.
    #[serde(rename = "Data", default, deserialize_with = "null_default")]
    pub data: BTreeMap<String, String>,
}

/// `/IpamDriver.ReleasePool`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
}

/// `/IpamDriver.RequestAddress`: the gateway and aux addresses at network creation, then one
/// per family for each endpoint.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
    /// Preferred address without mask (`--ip`, `--gateway`, aux address), or `""` for any.
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
    /// `{"RequestAddressType": "com.docker.network.gateway"}` for the gateway; `null` for
    /// endpoints and aux addresses in 20.10.
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: BTreeMap<String, String>,
}

impl RequestAddressRequest {
    /// True for the network's gateway request.
    pub fn is_gateway(&self) -> bool {
        self.options.get(REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_DATA_KEY)
    }
}

/// Reply to RequestAddress.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestAddressResponse {
    /// CIDR; its prefix length becomes the interface's prefix in the container.
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
    /// Ignored by dockerd.
    #[serde(rename = "Data", default, deserialize_with = "null_default")]
    pub data: BTreeMap<String, String>,
}

/// `/IpamDriver.ReleaseAddress`. May name an address never handed out by RequestAddress (the
/// pool-data gateway) or one already released: releasing must be idempotent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
    /// Bare IP without mask.
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<T: Serialize>(value: &T) -> String {
        serde_json::to_string(value).expect("encode")
    }

    #[test]
    fn request_pool_decodes_explicit_subnet() {
        let r: RequestPoolRequest = serde_json::from_str(
            "{\"AddressSpace\":\"L\",\"Pool\":\"fdc1:1a00:97:100::/64\",\"SubPool\":\"fdc1:1a00:97:100::/80\",\
             \"Options\":{\"other\":\"1\",\"pool-option\":\"abc\"},\"V6\":true}\n",
        )
        .expect("decode");
        assert_eq!(r.address_space, "L");
        assert_eq!(r.pool, "fdc1:1a00:97:100::/64");
        assert_eq!(r.sub_pool, "fdc1:1a00:97:100::/80");
        assert_eq!(r.options.get("pool-option").map(String::as_str), Some("abc"));
        assert!(r.v6);
    }

    #[test]
    fn request_pool_accepts_null_options_and_missing_keys() {
        let r: RequestPoolRequest =
            serde_json::from_str(r#"{"AddressSpace":"L","Pool":"","SubPool":"","Options":null,"V6":false}"#)
                .expect("decode");
        assert!(r.options.is_empty());
        let r: RequestPoolRequest = serde_json::from_str(r#"{"V6":true}"#).expect("decode");
        assert_eq!(r, RequestPoolRequest { v6: true, ..Default::default() });
    }

    #[test]
    fn ipam_options_must_be_strings() {
        let err =
            serde_json::from_str::<RequestPoolRequest>(r#"{"Options":{"k":1}}"#).expect_err("number option must fail");
        assert!(err.to_string().contains("expected a string"), "{err}");
        let err = serde_json::from_str::<RequestPoolRequest>(r#"{"V6":"yes"}"#).expect_err("string for bool must fail");
        assert!(err.to_string().contains("expected a boolean"), "{err}");
    }

    #[test]
    fn request_address_gateway_detection() {
        let gateway: RequestAddressRequest = serde_json::from_str(
            r#"{"PoolID":"p","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
        )
        .expect("decode");
        assert!(gateway.is_gateway());
        let endpoint: RequestAddressRequest =
            serde_json::from_str(r#"{"PoolID":"p","Address":"10.252.110.10","Options":null}"#).expect("decode");
        assert!(!endpoint.is_gateway());
        assert_eq!(endpoint.address, "10.252.110.10");
        let other: RequestAddressRequest =
            serde_json::from_str(r#"{"PoolID":"p","Options":{"RequestAddressType":"something-else"}}"#)
                .expect("decode");
        assert!(!other.is_gateway());
    }

    #[test]
    fn release_requests_decode() {
        let r: ReleaseAddressRequest =
            serde_json::from_str("{\"PoolID\":\"p\",\"Address\":\"fdc1:1a00:97:1::2\"}\n").expect("decode");
        assert_eq!(r.address, "fdc1:1a00:97:1::2");
        let r: ReleasePoolRequest = serde_json::from_str(r#"{"PoolID":null}"#).expect("decode");
        assert_eq!(r.pool_id, "");
    }

    #[test]
    fn response_shapes() {
        assert_eq!(
            encode(&IpamCapabilitiesResponse { requires_mac_address: false, requires_request_replay: false }),
            r#"{"RequiresMACAddress":false,"RequiresRequestReplay":false}"#
        );
        assert_eq!(
            encode(&AddressSpacesResponse {
                local_default_address_space: "CiliumRsLocal".to_owned(),
                global_default_address_space: "CiliumRsGlobal".to_owned(),
            }),
            r#"{"LocalDefaultAddressSpace":"CiliumRsLocal","GlobalDefaultAddressSpace":"CiliumRsGlobal"}"#
        );
        assert_eq!(
            encode(&RequestPoolResponse {
                pool_id: "p1".to_owned(),
                pool: "fdc1:1a00:97:1::/64".to_owned(),
                data: BTreeMap::from([(GATEWAY_DATA_KEY.to_owned(), "fe80::1/64".to_owned())]),
            }),
            r#"{"PoolID":"p1","Pool":"fdc1:1a00:97:1::/64","Data":{"com.docker.network.gateway":"fe80::1/64"}}"#
        );
        assert_eq!(
            encode(&RequestAddressResponse { address: "10.252.1.2/32".to_owned(), data: BTreeMap::new() }),
            r#"{"Address":"10.252.1.2/32","Data":{}}"#
        );
    }

    #[test]
    fn responses_round_trip_and_accept_null_data() {
        let response = RequestPoolResponse {
            pool_id: "p1".to_owned(),
            pool: "10.252.1.0/24".to_owned(),
            data: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        };
        let back: RequestPoolResponse = serde_json::from_str(&encode(&response)).expect("decode");
        assert_eq!(back, response);
        let r: RequestAddressResponse =
            serde_json::from_str(r#"{"Address":"10.252.1.2/32","Data":null,"Error":""}"#).expect("decode");
        assert!(r.data.is_empty());
        let caps: IpamCapabilitiesResponse = serde_json::from_str("{}").expect("decode");
        assert_eq!(caps, IpamCapabilitiesResponse::default());
    }
}
