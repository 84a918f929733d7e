//! CIDR identities: the labels the daemon gives the identity of each prefix the rules refer to
//! (`cidr:<P>`, `cidr:<Q>` for every referenced `Q` containing `P`, and `reserved:world`).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use crate::labels::{Label, Labels, SOURCE_CIDR};

/// `cidr:<net>`.
pub fn cidr_label(net: &IpNet) -> Label {
    Label::new(SOURCE_CIDR, &net.to_string(), "")
}

/// Every prefix containing `net`, from `net` itself up to `/0`.
fn supernets(net: &IpNet) -> impl Iterator<Item = IpNet> + '_ {
    (0..=net.prefix_len()).rev().filter_map(move |len| IpNet::new(net.addr(), len).ok().map(|n| n.trunc()))
}

/// The labels of the CIDR identity for `prefix`: `cidr:<prefix>`, `cidr:<Q>` for every `Q` in
/// `referenced` that contains it, and `reserved:world`.
pub fn cidr_labels(prefix: &IpNet, referenced: &BTreeSet<IpNet>) -> Labels {
    let mut labels: Labels = supernets(prefix).filter(|q| referenced.contains(q)).map(|q| cidr_label(&q)).collect();
    labels.insert(cidr_label(&prefix.trunc()));
    labels.insert(Label::reserved("world"));
    labels
}

/// The labels of the CIDR identity of every prefix in `prefixes` (see [`cidr_labels`]).
pub fn cidr_identity_labels(prefixes: &BTreeSet<IpNet>) -> BTreeMap<IpNet, Labels> {
    prefixes.iter().map(|p| (*p, cidr_labels(p, prefixes))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn labels_name_every_referenced_supernet() {
        let set: BTreeSet<IpNet> =
            ["10.0.0.0/8", "10.96.0.0/12", "0.0.0.0/0", "20.1.1.1/32", "fd00:1::/64", "::/0"].map(net).into();
        let labels = cidr_identity_labels(&set);
        assert_eq!(
            labels[&net("10.96.0.0/12")].canonical(),
            "cidr:0.0.0.0/0;cidr:10.0.0.0/8;cidr:10.96.0.0/12;reserved:world"
        );
        assert_eq!(labels[&net("0.0.0.0/0")].canonical(), "cidr:0.0.0.0/0;reserved:world");
        assert_eq!(labels[&net("fd00:1::/64")].canonical(), "cidr:::/0;cidr:fd00:1::/64;reserved:world");
        assert_eq!(labels[&net("20.1.1.1/32")].canonical(), "cidr:0.0.0.0/0;cidr:20.1.1.1/32;reserved:world");
        // A prefix outside the set still gets its own label.
        assert_eq!(
            cidr_labels(&net("192.168.0.0/16"), &BTreeSet::new()).canonical(),
            "cidr:192.168.0.0/16;reserved:world"
        );
    }
}
