//! Docker object ids (networks, endpoints) as validated newtypes.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::input::quoted;

/// Why an id from dockerd was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} id {shown}: expected 12 to 64 lowercase hex digits")]
pub struct BadId {
    kind: &'static str,
    shown: String,
}

fn check(kind: &'static str, text: &str) -> Result<(), BadId> {
    let ok = (12..=64).contains(&text.len()) && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(())
    } else {
        Err(BadId { kind, shown: quoted(text) })
    }
}

macro_rules! docker_id {
    ($name:ident, $kind:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, BadId> {
                check($kind, text).map(|()| $name(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The first 12 digits, as `docker` prints ids.
            pub fn short(&self) -> &str {
                &self.0[..12]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

docker_id!(NetworkId, "network");
docker_id!(EndpointId, "endpoint");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_docker_ids_and_refuses_hostile_strings() {
        let id = "3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";
        assert_eq!(EndpointId::parse(id).expect("valid").short(), "3f2a1b4c5d6e");
        for bad in ["", "abc", "../../etc/passwd0000", "3F2A1B4C5D6E", "3f2a1b4c5d6e;rm -rf"] {
            assert!(NetworkId::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = "a".repeat(10_000);
        let err = EndpointId::parse(&long).expect_err("must fail").to_string();
        assert!(err.len() < 200, "error echoes the whole input: {err}");
    }
}
