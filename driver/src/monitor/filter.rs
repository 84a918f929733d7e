//! Which monitor lines a subscriber wants: kinds, the endpoint an event is about, an endpoint on
//! either end (no I/O).

use serde::{Deserialize, Serialize};

use super::event::{names_id, Kind, MonitorEvent};
use crate::input::quoted;

/// The kinds a monitor shows when none is asked for.
pub const DEFAULT_KINDS: [Kind; 2] = [Kind::Drop, Kind::Verdict];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Empty: drops and verdicts.
    #[serde(default)]
    pub kinds: Vec<Kind>,
    /// Events about this endpoint (counted or traced on it): container name or endpoint id.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Events with this endpoint on either end.
    #[serde(default)]
    pub related_to: Option<String>,
}

impl Filter {
    /// Parses the API's query form: `types=drop,verdict`, `endpoint=NAME`, `related_to=NAME`.
    pub fn from_query(query: &str) -> Result<Filter, String> {
        let mut filter = Filter::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or_else(|| format!("{}: invalid percent-encoding", quoted(key)))?;
            match key {
                "types" => {
                    for name in value.split(',').filter(|n| !n.is_empty()) {
                        let kind = match name {
                            "drop" => Kind::Drop,
                            "verdict" => Kind::Verdict,
                            "trace" => Kind::Trace,
                            other => {
                                return Err(format!("unknown event type {} (drop, verdict, trace)", quoted(other)))
                            }
                        };
                        if !filter.kinds.contains(&kind) {
                            filter.kinds.push(kind);
                        }
                    }
                }
                "endpoint" if !value.is_empty() => filter.endpoint = Some(value),
                "related_to" if !value.is_empty() => filter.related_to = Some(value),
                "endpoint" | "related_to" => return Err(format!("{key} needs a container name or endpoint id")),
                other => return Err(format!("unknown monitor parameter {}", quoted(other))),
            }
        }
        if filter.kinds.contains(&Kind::Trace) && filter.endpoint.is_none() {
            return Err("trace events need --endpoint: the endpoint to trace".to_owned());
        }
        Ok(filter)
    }

    /// The query form of the filter (what [`Filter::from_query`] reads).
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        if !self.kinds.is_empty() {
            let names: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
            parts.push(format!("types={}", names.join(",")));
        }
        if let Some(endpoint) = &self.endpoint {
            parts.push(format!("endpoint={}", percent_encode(endpoint)));
        }
        if let Some(related) = &self.related_to {
            parts.push(format!("related_to={}", percent_encode(related)));
        }
        parts.join("&")
    }

    pub fn matches(&self, line: &MonitorEvent) -> bool {
        if matches!(line.kind, Kind::Lost | Kind::Suppressed) {
            return true;
        }
        let kinds: &[Kind] = if self.kinds.is_empty() { &DEFAULT_KINDS } else { &self.kinds };
        if !kinds.contains(&line.kind) {
            return false;
        }
        if let Some(who) = &self.endpoint {
            let named = line.endpoint.as_deref() == Some(who.as_str())
                || line.endpoint_id.as_deref().is_some_and(|id| names_id(id, who));
            if !named {
                return false;
            }
        }
        self.related_to.as_deref().is_none_or(|who| line.involves(who))
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::monitor::event::Peer;

    fn line(kind: Kind, at: &str, from: &str, to: &str) -> MonitorEvent {
        let peer = |name: &str| Peer { container: Some(name.to_owned()), ..Peer::default() };
        MonitorEvent {
            kind,
            endpoint: Some(at.to_owned()),
            endpoint_id: Some(format!("{at}00000000")),
            source: Some(peer(from)),
            destination: Some(peer(to)),
            count: None,
            ..MonitorEvent::tally(kind, 0, SystemTime::UNIX_EPOCH)
        }
    }

    #[test]
    fn queries_round_trip_and_bad_ones_are_refused_by_name() {
        let filter = Filter {
            kinds: vec![Kind::Drop, Kind::Trace],
            endpoint: Some("web app".into()),
            related_to: Some("api&1".into()),
        };
        assert_eq!(Filter::from_query(&filter.to_query()), Ok(filter));
        assert_eq!(Filter::from_query(""), Ok(Filter::default()));
        let err = Filter::from_query("types=drop,bogus").expect_err("bogus");
        assert!(err.contains("\"bogus\""), "{err}");
        assert!(Filter::from_query("types=trace").expect_err("trace alone").contains("--endpoint"));
        assert!(Filter::from_query("colour=red").expect_err("unknown").contains("\"colour\""));
        assert!(Filter::from_query("endpoint=%zz").expect_err("bad escape").contains("percent"));
        assert!(Filter::from_query("endpoint=").is_err());
        assert!(Filter::from_query("endpoint=%+f").is_err(), "a sign is no hex digit");
        let long = format!("{}=1", "x".repeat(10_000));
        assert!(Filter::from_query(&long).expect_err("unknown").len() < 200, "the whole key is not echoed");
    }

    #[test]
    fn kinds_endpoints_and_related_endpoints_select_lines() {
        let drop = line(Kind::Drop, "web", "api", "web");
        let verdict = line(Kind::Verdict, "api", "api", "db");
        let trace = line(Kind::Trace, "web", "web", "db");
        let all = Filter::default();
        assert!(all.matches(&drop) && all.matches(&verdict) && !all.matches(&trace), "drops and verdicts by default");
        let traces = Filter { kinds: vec![Kind::Trace], endpoint: Some("web".into()), related_to: None };
        assert!(traces.matches(&trace) && !traces.matches(&drop));
        let at_web = Filter { endpoint: Some("web0".into()), ..Filter::default() };
        assert!(at_web.matches(&drop) && !at_web.matches(&verdict), "by id prefix");
        let with_db = Filter { related_to: Some("db".into()), ..Filter::default() };
        assert!(with_db.matches(&verdict) && !with_db.matches(&drop));
        let tally = MonitorEvent::tally(Kind::Lost, 3, SystemTime::UNIX_EPOCH);
        assert!(with_db.matches(&tally) && traces.matches(&tally), "a reader always learns what it lost");
    }
}
