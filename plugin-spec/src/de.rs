//! Decoding helpers shared by the wire types (Go-style leniency towards `null`).

use serde::{Deserialize, Deserializer};

/// Decodes `null` as the type's default, as Go's `encoding/json` leaves a field at its zero
/// value when it meets `null`. Use together with `#[serde(default)]` so a missing key is
/// accepted too.
pub(crate) fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}
