//! Everything a request could change, in comparable form: every record of every table of the
//! store, every field of the fake kernel (and the calls that changed it), and the driver's views.

use std::collections::BTreeMap;

use serde_json::Value;

use cilium_rs::store::{Store, Table};

use super::Harness;

/// Datapath operations that change the kernel: a refused request must make none of them.
const KERNEL_CHANGES: [&str; 13] = [
    "create_veth",
    "delete_veth",
    "attach",
    "detach",
    "apply_endpoint",
    "remove_endpoint",
    "apply_policy",
    "apply_egress",
    "set_nat_ports",
    "set_event_rate",
    "flush_ct",
    "sweep_nat",
    "restore",
];

/// Record fields that hold the time of a change (two runs of the same calls differ there only).
const CLOCK_FIELDS: [&str; 2] = ["created_at", "at"];

/// The state of one harness, by where it lives: `store/<table>/<key>`, `kernel/<field>`,
/// `view/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(pub BTreeMap<String, String>);

impl Snapshot {
    pub async fn of(h: &Harness) -> Snapshot {
        let mut all = BTreeMap::new();
        let records = h.store.load().expect("the memory store loads");
        for table in Table::ALL {
            for (key, bytes) in records.get(&table).into_iter().flatten() {
                all.insert(format!("store/{}/{key}", table.name()), String::from_utf8_lossy(bytes).into_owned());
            }
        }
        {
            let k = h.kernel.kernel();
            let fields: [(&str, String); 17] = [
                ("links", format!("{:?}", k.links)),
                ("attached", format!("{:?}", k.attached)),
                ("installed", format!("{:?}", k.installed)),
                ("counters", format!("{:?}", k.counters)),
                ("ledger", format!("{:?}", k.ledger)),
                ("conntrack_entries", format!("{:?}", k.conntrack_entries)),
                ("nat_entries", format!("{:?}", (k.nat_out_entries, k.nat_in_entries))),
                ("host", format!("{:?}", (&k.host_prefixes, &k.host_addresses))),
                ("next_index", format!("{:?}", k.next_index)),
                ("policy", format!("{:?}", k.policy)),
                ("policy_revision", format!("{:?}", k.policy_revision)),
                ("egress", format!("{:?}", (&k.default_routes, &k.other_links, &k.egress))),
                ("nat_ports", format!("{:?}", k.nat_ports)),
                ("event_rate", format!("{:?}", k.event_rate)),
                ("ct", format!("{:?}", k.ct)),
                ("nat", format!("{:?}", k.nat)),
                ("failing", format!("{:?}", k.failing)),
            ];
            for (name, value) in fields {
                all.insert(format!("kernel/{name}"), value);
            }
            let changes: Vec<&String> =
                k.calls.iter().filter(|c| c.split(' ').next().is_some_and(|op| KERNEL_CHANGES.contains(&op))).collect();
            all.insert("kernel/changing calls".to_owned(), format!("{changes:?}"));
        }
        all.insert("view/networks".to_owned(), json(&h.driver.networks().await));
        all.insert("view/endpoints".to_owned(), json(&h.driver.endpoints().await.expect("endpoints view")));
        all.insert("view/identities".to_owned(), json(&h.driver.identity_views().await));
        let (revision, rules) = h.driver.policy().rules().await;
        let rules: Vec<(String, Value)> = rules.into_iter().map(|(id, r)| (format!("{id:?}"), r.to_json())).collect();
        all.insert("view/policy".to_owned(), json(&(revision, rules)));
        Snapshot(all)
    }

    /// The same with the clock taken out of the records, for comparing two harnesses that got
    /// the same calls at different moments.
    pub fn timeless(&self) -> Snapshot {
        let strip = |text: &String| match serde_json::from_str::<Value>(text) {
            Ok(mut value) => {
                zero_clock(&mut value);
                value.to_string()
            }
            Err(_) => text.clone(),
        };
        Snapshot(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), if k.starts_with("store/") { strip(v) } else { v.clone() }))
                .collect(),
        )
    }

    /// What differs from `other`, one line per place (empty when they are the same).
    pub fn differences(&self, other: &Snapshot) -> String {
        let keys: std::collections::BTreeSet<&String> = self.0.keys().chain(other.0.keys()).collect();
        let mut lines = Vec::new();
        for key in keys {
            let (a, b) = (self.0.get(key), other.0.get(key));
            if a != b {
                lines.push(format!("{key}:\n  before: {}\n  after:  {}", shown(a), shown(b)));
            }
        }
        lines.join("\n")
    }
}

fn shown(value: Option<&String>) -> String {
    match value {
        None => "(absent)".to_owned(),
        Some(v) if v.len() > 600 => format!("{}… ({} bytes)", v.chars().take(600).collect::<String>(), v.len()),
        Some(v) => v.clone(),
    }
}

fn zero_clock(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                if CLOCK_FIELDS.contains(&key.as_str()) && field.is_number() {
                    *field = Value::from(0);
                } else {
                    zero_clock(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(zero_clock),
        _ => {}
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("views serialise")
}
