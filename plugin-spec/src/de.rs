//! Decoding helpers shared by the wire types (Go-style leniency towards `null`; nested structs
//! only from objects).

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, Visitor};
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

/// Decodes a nested struct only from a JSON object (`null` or a missing key: its default).
/// serde would otherwise read an array positionally into the struct's fields, so that
/// `"Interface": []` passed for an interface with no address.
pub(crate) fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    ObjectOnly::deserialize(deserializer).map(|o| o.0)
}

/// A list of nested structs, each only from a JSON object (`null` or a missing key: empty).
pub(crate) fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    let list: Option<Vec<ObjectOnly<T>>> = Option::deserialize(deserializer)?;
    Ok(list.unwrap_or_default().into_iter().map(|o| o.0).collect())
}

struct ObjectOnly<T>(T);

impl<'de, T: Default + Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Only<T>(PhantomData<T>);

        impl<'de, T: Default + Deserialize<'de>> Visitor<'de> for Only<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }

            fn visit_unit<E: de::Error>(self) -> Result<T, E> {
                Ok(T::default())
            }

            fn visit_none<E: de::Error>(self) -> Result<T, E> {
                Ok(T::default())
            }
        }

        deserializer.deserialize_any(Only(PhantomData)).map(ObjectOnly)
    }
}

#[cfg(test)]
mod tests {
    use crate::{decode, CreateEndpointRequest, CreateNetworkRequest};

    #[test]
    fn nested_structs_come_only_from_objects() {
        for body in [
            r#"{"NetworkID":"n","Interface":[]}"#,
            r#"{"NetworkID":"n","Interface":["10.0.0.2/32","",""]}"#,
            r#"{"NetworkID":"n","Interface":"10.0.0.2/32"}"#,
        ] {
            let err = decode::<CreateEndpointRequest>(body.as_bytes()).expect_err(body).to_string();
            assert!(err.contains("expected an object"), "{body}: {err}");
        }
        let err = decode::<CreateNetworkRequest>(br#"{"IPv4Data":[["CiliumRsLocal",{},"","10.0.0.0/24"]]}"#)
            .expect_err("an array for a pool")
            .to_string();
        assert!(err.contains("expected an object"), "{err}");
        let r: CreateEndpointRequest = decode(br#"{"Interface":null}"#).expect("null is the default");
        assert!(r.interface.is_empty());
        let r: CreateNetworkRequest =
            decode(br#"{"IPv4Data":[{"Pool":"10.0.0.0/24"}],"IPv6Data":null}"#).expect("objects");
        assert_eq!((r.ipv4_data[0].pool.as_str(), r.ipv6_data.len()), ("10.0.0.0/24", 0));
    }
}
