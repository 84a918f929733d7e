//! Security identities: the numbers policy is written against, Cilium's reserved ones, and the
//! labels each reserved identity carries (no I/O; allocation lives in `identity_alloc`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::labels::{Label, Labels};

/// A numeric security identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Identity(pub u32);

impl Identity {
    /// No identity: in policy keys, "any remote identity".
    pub const ANY: Identity = Identity(0);
    /// The host itself (its own addresses).
    pub const HOST: Identity = Identity(1);
    /// Everything outside the host that no CIDR identity covers.
    pub const WORLD: Identity = Identity(2);
    /// An endpoint whose labels are not known yet.
    pub const INIT: Identity = Identity(5);
    /// The first identity allocated for a label set.
    pub const MIN_ALLOCATED: u32 = 256;
    /// The last identity allocated for a label set (CIDR identities start above).
    pub const MAX_ALLOCATED: u32 = (1 << 24) - 1;
    /// The first local CIDR identity (as Cilium numbers them).
    pub const MIN_CIDR: u32 = 1 << 24;

    /// Allocated for the label set of a container endpoint.
    pub fn is_endpoint(self) -> bool {
        (Self::MIN_ALLOCATED..=Self::MAX_ALLOCATED).contains(&self.0)
    }

    /// A local CIDR identity.
    pub fn is_cidr(self) -> bool {
        self.0 >= Self::MIN_CIDR
    }

    /// One of the reserved identities (host, world, init).
    pub fn is_reserved(self) -> bool {
        RESERVED.iter().any(|(id, _)| *id == self)
    }

    /// `reserved`, `cidr` or `endpoint` (allocated for a label set).
    pub fn kind(self) -> &'static str {
        if self.is_cidr() {
            "cidr"
        } else if self.is_reserved() {
            "reserved"
        } else {
            "endpoint"
        }
    }

    /// `host`, `world`, `init`, or the number.
    pub fn name(self) -> String {
        match RESERVED.iter().find(|(id, _)| *id == self) {
            Some((_, name)) => (*name).to_owned(),
            None => self.0.to_string(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The reserved identities and their names (their label is `reserved:<name>`).
pub const RESERVED: [(Identity, &str); 3] =
    [(Identity::HOST, "host"), (Identity::WORLD, "world"), (Identity::INIT, "init")];

/// The labels of a reserved identity: `reserved:<name>`.
pub fn reserved_labels(identity: Identity) -> Option<Labels> {
    RESERVED.iter().find(|(id, _)| *id == identity).map(|(_, name)| [Label::reserved(name)].into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_names_follow_cilium() {
        assert!(Identity(256).is_endpoint() && !Identity(255).is_endpoint());
        assert!(Identity(1 << 24).is_cidr() && !Identity(1 << 24).is_endpoint());
        assert!(Identity::INIT.is_reserved() && !Identity(256).is_reserved());
        assert_eq!(Identity::HOST.name(), "host");
        assert_eq!(Identity(300).name(), "300");
        assert_eq!(reserved_labels(Identity::WORLD).unwrap().canonical(), "reserved:world");
        assert!(reserved_labels(Identity(300)).is_none());
    }
}
