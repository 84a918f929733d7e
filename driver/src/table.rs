//! Plain-text tables for the CLI.

use crate::server::api::PolicyRules;
use crate::views::{EndpointView, IdentityView, NetworkView, StatusView};

/// Renders rows under a header, columns padded to their widest cell.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(w - cell.len() + 2));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

fn dash(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "-".to_owned())
}

/// An endpoint's labels for the table: container labels without their source, the network
/// label left out (the NETWORK column has it).
fn labels_cell(labels: &[String]) -> String {
    let shown: Vec<&str> = labels
        .iter()
        .filter(|l| !l.starts_with("docker:network="))
        .map(|l| l.strip_prefix("container:").unwrap_or(l))
        .collect();
    if shown.is_empty() {
        "-".to_owned()
    } else {
        shown.join(",")
    }
}

pub fn endpoints(list: &[EndpointView]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                short(&e.id),
                dash(&e.container_name),
                short(&e.network),
                e.identity_name.clone(),
                dash(&e.ipv6),
                dash(&e.ipv4),
                e.host_ifname.clone(),
                if e.joined { "joined" } else { "created" }.to_owned(),
                e.counters.egress.packets.to_string(),
                e.counters.egress.bytes.to_string(),
                e.counters.ingress.packets.to_string(),
                e.counters.ingress.bytes.to_string(),
                e.counters.dropped_packets().to_string(),
                if e.published.is_empty() { "-".to_owned() } else { e.published.join(",") },
                labels_cell(&e.labels),
            ]
        })
        .collect();
    render(
        &[
            "ENDPOINT",
            "CONTAINER",
            "NETWORK",
            "IDENTITY",
            "IPV6",
            "IPV4",
            "IFNAME",
            "STATE",
            "TX-PKTS",
            "TX-BYTES",
            "RX-PKTS",
            "RX-BYTES",
            "DROPS",
            "PORTS",
            "LABELS",
        ],
        &rows,
    )
}

pub fn networks(list: &[NetworkView]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|n| {
            let subnets: Vec<String> = n
                .pools
                .iter()
                .map(|p| if p.taken_by_driver { format!("{}*", p.subnet) } else { p.subnet.clone() })
                .collect();
            vec![
                short(&n.id),
                subnets.join(","),
                n.endpoints.to_string(),
                n.mtu.map(|m| m.to_string()).unwrap_or_else(|| "auto".to_owned()),
                if n.internal { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    render(&["NETWORK", "SUBNETS (* = taken by cilium-rs)", "ENDPOINTS", "MTU", "INTERNAL"], &rows)
}

pub fn identities(list: &[IdentityView]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            let endpoints = if i.endpoints.is_empty() { "-".to_owned() } else { i.endpoints.join(",") };
            vec![i.id.to_string(), i.kind.clone(), i.labels.join(","), endpoints]
        })
        .collect();
    render(&["IDENTITY", "KIND", "LABELS", "ENDPOINTS"], &rows)
}

pub fn policy(p: &PolicyRules) -> String {
    let rows: Vec<Vec<String>> = p
        .rules
        .iter()
        .map(|r| {
            let labels = r.rule["labels"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .map(|x| match (x["key"].as_str(), x["value"].as_str()) {
                            (Some(k), Some(v)) if !v.is_empty() => format!("{k}={v}"),
                            (Some(k), _) => k.to_owned(),
                            _ => x.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| "-".to_owned());
            let selector = r.rule["endpointSelector"].to_string();
            let sections: Vec<&str> = ["ingress", "ingressDeny", "egress", "egressDeny"]
                .into_iter()
                .filter(|k| r.rule[*k].as_array().is_some_and(|a| !a.is_empty()))
                .collect();
            vec![r.id.to_string(), labels, selector, sections.join(",")]
        })
        .collect();
    format!(
        "revision {}, {} rules\n{}",
        p.revision,
        p.rules.len(),
        render(&["ID", "LABELS", "SELECTOR", "SECTIONS"], &rows)
    )
}

pub fn status(s: &StatusView) -> String {
    format!(
        "cilium-rs {}: running, {} networks, {} endpoints, {} pools; policy revision {}: {} rules, {} entries, {} identities\n",
        s.version, s.networks, s.endpoints, s.pools, s.policy_revision, s.policy_rules, s.policy_entries, s.identities
    )
}

pub fn flows(list: &[crate::monitor::flows::Flow]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|f| {
            let end = |p: &crate::monitor::event::Peer| {
                let name = p.label();
                match p.identity {
                    Some(id) => format!("{name} [{id}]"),
                    None => name,
                }
            };
            vec![
                end(&f.source),
                end(&f.destination),
                f.port.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                f.protocol.clone(),
                f.verdict.clone(),
                dash(&f.reason),
                f.packets.to_string(),
                f.bytes.to_string(),
                f.first_seen.get(11..19).unwrap_or(&f.first_seen).to_owned(),
                f.last_seen.get(11..19).unwrap_or(&f.last_seen).to_owned(),
            ]
        })
        .collect();
    render(&["SOURCE", "DESTINATION", "PORT", "PROTO", "VERDICT", "REASON", "PACKETS", "BYTES", "FIRST", "LAST"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let out = render(&["A", "LONG"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(out, "A    LONG\nxyz  1\nq    22\n");
    }
}
