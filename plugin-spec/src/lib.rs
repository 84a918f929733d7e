//! Docker remote NetworkDriver and IpamDriver wire types (JSON, as dockerd 20.10 sends them).
//!
//! Every call is `POST /<Interface>.<Method>` over the plugin's unix socket; the request body
//! is compact JSON followed by a newline (empty for the four argument-less calls), and every
//! 200 reply must be a JSON object. Field names are spelled out with explicit
//! `#[serde(rename)]`s because Docker's keys (`NetworkID`, `IPv6Data`, `V6`, …) follow no single
//! case rule.
//!
//! Decoding is lenient the way Go's `encoding/json` is: unknown keys are ignored, `null` (or a
//! missing key) means the field's default. Encoding of responses is exact: optional fields that
//! dockerd would misread when present but empty are left out.
//!
//! The fixtures under `fixtures/dockerd-20.10/` were recorded from a real dockerd 20.10.24 and
//! are checked against these types by `tests/fixtures.rs`.

mod de;
mod error;
mod ipam;
mod network;
mod plugin;

pub use error::{decode, shorten_quoted, DecodeError};
pub use ipam::*;
pub use network::*;
pub use plugin::*;
