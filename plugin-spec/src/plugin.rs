//! The plugin handshake (`/Plugin.Activate`) and the replies shared by both interfaces.

use serde::{Deserialize, Serialize};

use crate::de::null_default;

/// `POST /Plugin.Activate`, empty body; sent once per dockerd process for a legacy plugin.
pub const PLUGIN_ACTIVATE: &str = "/Plugin.Activate";

/// Interface name to list in [`ActivateResponse::implements`] for the network driver.
pub const IMPLEMENTS_NETWORK_DRIVER: &str = "NetworkDriver";
/// Interface name to list in [`ActivateResponse::implements`] for the IPAM driver.
pub const IMPLEMENTS_IPAM_DRIVER: &str = "IpamDriver";

/// The `Accept` header dockerd 20.10 sends with every plugin request (no `Content-Type` is
/// sent, and the `Host` header is empty).
pub const PLUGIN_ACCEPT_HEADER: &str = "application/vnd.docker.plugins.v1.2+json";

/// Reply to `/Plugin.Activate`: `{"Implements": ["NetworkDriver", "IpamDriver"]}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct ActivateResponse {
    /// Interfaces served on this socket, case-sensitive.
    #[serde(rename = "Implements", default, deserialize_with = "null_default")]
    pub implements: Vec<String>,
}

/// Error reply, sent with a non-2xx status: `{"Err": "…"}`. dockerd shows the text as
/// `<Interface>.<Method>: <Err>`. Status 404 means "method not implemented" to dockerd.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorResponse {
    #[serde(rename = "Err", default, deserialize_with = "null_default")]
    pub err: String,
}

/// Success reply without content; serializes as `{}` (an empty 200 body is an error to dockerd).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct EmptyResponse {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activate_response_lists_both_interfaces() {
        let response = ActivateResponse {
            implements: vec![IMPLEMENTS_NETWORK_DRIVER.to_owned(), IMPLEMENTS_IPAM_DRIVER.to_owned()],
        };
        let json = serde_json::to_string(&response).expect("encode");
        assert_eq!(json, r#"{"Implements":["NetworkDriver","IpamDriver"]}"#);
        let back: ActivateResponse = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, response);
    }

    #[test]
    fn activate_response_accepts_null_list() {
        let back: ActivateResponse = serde_json::from_str(r#"{"Implements":null}"#).expect("decode");
        assert!(back.implements.is_empty());
    }

    #[test]
    fn error_response_uses_err_key() {
        let json = serde_json::to_string(&ErrorResponse { err: "no such network".to_owned() }).expect("encode");
        assert_eq!(json, r#"{"Err":"no such network"}"#);
    }

    #[test]
    fn empty_response_is_an_empty_object() {
        assert_eq!(serde_json::to_string(&EmptyResponse {}).expect("encode"), "{}");
        // dockerd-style replies that carry an empty logical error still decode.
        let back: EmptyResponse = serde_json::from_str(r#"{"Err":""}"#).expect("decode");
        assert_eq!(back, EmptyResponse {});
    }

    #[test]
    fn empty_response_rejects_non_objects() {
        assert!(serde_json::from_str::<EmptyResponse>("null").is_err());
        assert!(serde_json::from_str::<EmptyResponse>("\"ok\"").is_err());
    }
}
