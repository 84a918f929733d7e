//! Plain-text tables for the CLI.

use crate::dumps::{BpfEndpointView, CtList, IpcacheView, NatView, PeerView, PolicyEntryView};
use crate::health::{human_ms, unix_ms, LoggedError};
use crate::policy::EnforcementMode;
use crate::server::api::PolicyRules;
use crate::views::{EndpointDetail, EndpointView, IdentityView, NetworkView, StatusView};

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
                e.network_name.clone().unwrap_or_else(|| short(&e.network)),
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
                dash(&n.name),
                subnets.join(","),
                n.endpoints.to_string(),
                n.mtu.map(|m| m.to_string()).unwrap_or_else(|| "auto".to_owned()),
                if n.internal { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    render(&["NETWORK", "NAME", "SUBNETS (* = taken by cilium-rs)", "ENDPOINTS", "MTU", "INTERNAL"], &rows)
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

fn ago(at_ms: u64) -> String {
    format!("{} ago", human_ms(unix_ms().saturating_sub(at_ms)))
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

fn mode(mode: EnforcementMode) -> &'static str {
    match mode {
        EnforcementMode::Default => "default",
        EnforcementMode::Always => "always",
        EnforcementMode::Never => "never",
    }
}

fn count(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

fn error_line(e: &LoggedError) -> String {
    let context = if e.context.is_empty() { String::new() } else { format!("{}: ", e.context) };
    format!("{} {} {context}{}", ago(e.at), e.level, e.message)
}

/// `cilium-rs status`: a verdict, then a line per subsystem; `verbose` adds their detail and
/// every error kept.
pub fn status(s: &StatusView, verbose: bool) -> String {
    let mut out = format!(
        "cilium-rs {}: {}, up {}\n",
        s.version,
        if s.healthy { "healthy" } else { "UNHEALTHY" },
        human_ms(s.uptime_ms)
    );
    for problem in &s.problems {
        out.push_str(&format!("  ! {problem}\n"));
    }
    let d = &s.datapath;
    let found: Vec<&str> = d.features.iter().filter(|(_, on)| **on).map(|(name, _)| name.as_str()).collect();
    out.push_str(&format!(
        "datapath:  {}, attach mode {}, kernel {}, features: {}\n",
        if d.loaded { "loaded" } else { "NOT LOADED" },
        d.attach_mode,
        d.kernel.as_deref().unwrap_or("?"),
        if found.is_empty() { "-".to_owned() } else { found.join(" ") }
    ));
    if verbose {
        if let Some(root) = &d.bpf_root {
            out.push_str(&format!("           pins under {}\n", root.display()));
        }
        for (name, on) in &d.features {
            out.push_str(&format!("           {name}: {}\n", if *on { "found" } else { "not found" }));
        }
        if !d.missing_pins.is_empty() {
            out.push_str(&format!("           missing pins: {}\n", d.missing_pins.join(", ")));
        }
    }
    if let Some(store) = &s.store {
        let state =
            if store.ok { "ok".to_owned() } else { format!("FAILING: {}", store.error.as_deref().unwrap_or("?")) };
        out.push_str(&format!("store:     {state} ({})\n", store.location));
        if let (true, false, Some(error), Some(at)) = (verbose, store.ok, &store.error, store.error_at) {
            out.push_str(&format!("           since {}: {error}\n", ago(at)));
        }
    }
    if let Some(docker) = &s.docker {
        let lag =
            docker.events_lag_ms.map_or_else(|| "never heard".to_owned(), |l| format!("events lag {}", human_ms(l)));
        out.push_str(&format!("docker:    {} for {}, {lag}\n", docker.state.name(), human_ms(docker.since_ms)));
        if let (Some(error), Some(at)) = (&docker.last_error, docker.last_error_at) {
            out.push_str(&format!("           last error {}: {error}\n", ago(at)));
        }
        if verbose {
            out.push_str(&format!(
                "           socket {}, connections made: {}, our networks are driver {}\n",
                docker.socket.as_deref().unwrap_or("?"),
                docker.connects,
                if s.driver.is_empty() { "?" } else { &s.driver }
            ));
        }
    }
    let c = &s.counts;
    out.push_str(&format!(
        "holds:     {} networks, {} endpoints, {} pools, {} identities\n",
        c.networks, c.endpoints, c.pools, c.identities
    ));
    out.push_str(&format!(
        "policy:    revision {}, {} rules, {} entries, enforcement {}\n",
        c.policy_revision,
        c.policy_rules,
        c.policy_entries,
        mode(s.enforcement)
    ));
    out.push_str(&format!(
        "kernel:    {} conntrack entries, NAT {} out / {} in\n",
        count(c.conntrack_entries),
        count(c.nat_out_entries),
        count(c.nat_in_entries)
    ));
    match (s.errors.last(), verbose) {
        (None, _) => out.push_str("errors:    none logged\n"),
        (Some(last), false) => out.push_str(&format!(
            "errors:    {} logged, the last {} (--verbose shows {})\n",
            s.errors_total,
            ago(last.at),
            s.errors.len()
        )),
        (Some(_), true) => {
            out.push_str(&format!("errors:    {} logged, the last {}:\n", s.errors_total, s.errors.len()));
            for e in &s.errors {
                out.push_str(&format!("           {}\n", error_line(e)));
            }
        }
    }
    out
}

/// `cilium-rs endpoint get`.
pub fn endpoint_detail(d: &EndpointDetail) -> String {
    let e = &d.endpoint;
    let mut lines: Vec<(&str, String)> = vec![
        ("endpoint", e.id.clone()),
        ("container", format!("{} {}", dash(&e.container_name), dash(&e.container_id))),
        ("network", format!("{} {}", dash(&e.network_name), e.network)),
        ("state", if e.joined { "joined" } else { "created" }.to_owned()),
        ("ipv6", format!("{} via {}", dash(&e.ipv6), dash(&d.gateway_ipv6))),
        ("ipv4", format!("{} via {}", dash(&e.ipv4), dash(&d.gateway_ipv4))),
        (
            "interface",
            format!(
                "{} (ifindex {}), container side mac {}, mtu {}",
                e.host_ifname,
                e.host_ifindex.map_or_else(|| "-".to_owned(), |i| i.to_string()),
                e.mac,
                d.mtu.map_or_else(|| "-".to_owned(), |m| m.to_string())
            ),
        ),
        (
            "identity",
            format!(
                "{} (in the datapath: {})",
                e.identity_name,
                d.datapath_identity.map_or_else(|| "-".to_owned(), |i| i.to_string())
            ),
        ),
        ("labels", if e.labels.is_empty() { "-".to_owned() } else { e.labels.join(",") }),
        (
            "policy",
            format!(
                "ingress {}, egress {} (enforcement {}; selected by rules {})",
                if d.policy.ingress_enforced { "enforced" } else { "not enforced" },
                if d.policy.egress_enforced { "enforced" } else { "not enforced" },
                mode(d.policy.mode),
                if d.policy.selected_by.is_empty() {
                    "-".to_owned()
                } else {
                    d.policy.selected_by.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
                }
            ),
        ),
        ("outside", format!("internal {}, masquerade {}", yes_no(d.internal), yes_no(d.masquerade))),
        ("ports", if e.published.is_empty() { "-".to_owned() } else { e.published.join(",") }),
        ("sent", format!("{} packets, {} bytes", e.counters.egress.packets, e.counters.egress.bytes)),
        ("received", format!("{} packets, {} bytes", e.counters.ingress.packets, e.counters.ingress.bytes)),
    ];
    if e.counters.drops.is_empty() {
        lines.push(("drops", "none".to_owned()));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut out: String = lines.iter().map(|(k, v)| format!("{:width$}{v}\n", format!("{k}:"))).collect();
    if !e.counters.drops.is_empty() {
        let rows: Vec<Vec<String>> = e
            .counters
            .drops
            .iter()
            .map(|(key, t)| {
                let (reason, dir) = key.split_once('/').unwrap_or((key.as_str(), "-"));
                vec![format!("  {reason}"), dir.to_owned(), t.packets.to_string(), t.bytes.to_string()]
            })
            .collect();
        out.push_str("drops:\n");
        out.push_str(&render(&["  REASON", "DIRECTION", "PACKETS", "BYTES"], &rows));
    }
    out
}

fn list(values: &[String]) -> String {
    if values.is_empty() {
        "-".to_owned()
    } else {
        values.join(",")
    }
}

/// `cilium-rs bpf endpoints list`.
pub fn bpf_endpoints(list_: &[BpfEndpointView]) -> String {
    let rows: Vec<Vec<String>> = list_
        .iter()
        .map(|e| {
            vec![
                e.ifindex.to_string(),
                dash(&e.host_ifname),
                e.number.to_string(),
                dash(&e.container),
                dash(&e.network),
                e.identity_name.clone(),
                dash(&e.ipv6),
                dash(&e.ipv4),
                e.mac.clone(),
                list(&e.flags),
            ]
        })
        .collect();
    render(
        &["IFINDEX", "IFNAME", "ENDPOINT", "CONTAINER", "NETWORK", "IDENTITY", "IPV6", "IPV4", "MAC", "FLAGS"],
        &rows,
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

/// `cilium-rs bpf ipcache list`.
pub fn bpf_ipcache(list_: &[IpcacheView]) -> String {
    let rows: Vec<Vec<String>> =
        list_.iter().map(|e| vec![e.prefix.clone(), e.identity_name.clone(), dash(&e.name), list(&e.labels)]).collect();
    render(&["PREFIX", "IDENTITY", "NAME", "LABELS"], &rows)
}

/// An identity with who carries it: `256 (web,api)`, `host`, `16777217 (cidr:10.0.0.0/8)`.
fn identity_cell(name: &str, endpoints: &[String], labels: &[String]) -> String {
    if !endpoints.is_empty() {
        return format!("{name} ({})", endpoints.join(","));
    }
    match labels.first() {
        Some(label) if name.parse::<u32>().is_ok() => format!("{name} ({label})"),
        _ => name.to_owned(),
    }
}

/// `cilium-rs bpf policy list`.
pub fn bpf_policy(list_: &[PolicyEntryView]) -> String {
    let rows: Vec<Vec<String>> = list_
        .iter()
        .map(|e| {
            vec![
                identity_cell(&e.local_name, &e.local_endpoints, &e.local_labels),
                e.direction.to_string(),
                identity_cell(&e.remote_name, &e.remote_endpoints, &e.remote_labels),
                e.proto.clone(),
                e.port.clone(),
                e.verdict.clone(),
                e.rule.to_string(),
            ]
        })
        .collect();
    render(&["LOCAL", "DIRECTION", "REMOTE", "PROTO", "PORT", "VERDICT", "RULE"], &rows)
}

fn peer(p: &PeerView) -> String {
    let address = if p.address.contains(':') { format!("[{}]", p.address) } else { p.address.clone() };
    match &p.name {
        Some(name) => format!("{address}:{} ({name})", p.port),
        None => format!("{address}:{}", p.port),
    }
}

/// `cilium-rs bpf ct list`.
pub fn bpf_ct(ct: &CtList) -> String {
    let rows: Vec<Vec<String>> = ct
        .entries
        .iter()
        .map(|e| {
            vec![
                e.proto.clone(),
                peer(&e.initiator),
                peer(&e.responder),
                list(&e.allowed),
                list(&e.state),
                format!("{}/{}", e.packets[0], e.packets[1]),
                format!("{}/{}", e.bytes[0], e.bytes[1]),
                if e.expires_in_ms < 0 { "expired".to_owned() } else { human_ms(e.expires_in_ms as u64) },
                if e.stale { format!("{} (stale)", e.revision) } else { e.revision.to_string() },
            ]
        })
        .collect();
    format!(
        "{} entries; the datapath checks at revision {}\n{}",
        ct.entries.len(),
        ct.revision,
        render(&["PROTO", "INITIATOR", "RESPONDER", "ALLOWED", "STATE", "PKTS", "BYTES", "EXPIRES", "REVISION"], &rows)
    )
}

/// `cilium-rs bpf nat list`.
pub fn bpf_nat(list_: &[NatView]) -> String {
    let rows: Vec<Vec<String>> = list_
        .iter()
        .map(|e| {
            vec![
                e.map.clone(),
                e.kind.clone(),
                e.proto.clone(),
                peer(&e.source),
                peer(&e.destination),
                peer(&e.translated),
                e.ifindex.to_string(),
                human_ms(e.age_ms),
            ]
        })
        .collect();
    render(&["MAP", "KIND", "PROTO", "SOURCE", "DESTINATION", "TRANSLATED", "IFINDEX", "AGE"], &rows)
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
