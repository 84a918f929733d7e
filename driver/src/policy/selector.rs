//! Endpoint selectors (`matchLabels` / `matchExpressions`): parsing, matching against label sets,
//! and which identities a selector may select at all.
//!
//! A key may carry a source prefix (`container:app`, `reserved:init`, `k8s:…`); without a known
//! prefix it matches that key from any source. All requirements must hold (Kubernetes
//! semantics: `NotIn` and `DoesNotExist` also hold when the key is absent). Beyond its labels,
//! an identity is selectable only when it is an endpoint identity, or a reserved identity
//! (host, world, init) that the selector names with a positive requirement on
//! `reserved:<name>`: `{}` selects every endpoint and never init, host or world. CIDR
//! identities are never selected by endpoint selectors.

use std::fmt;

use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};

use super::walk::{array, bounded, check_fields, child, fail, field, index, list, object, string, Walk};
use crate::identity::Identity;
use crate::input::quoted;
use crate::labels::{split_source, Labels, SOURCE_ANY, SOURCE_RESERVED};

/// A `matchExpressions` operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
        }
    }

    fn parse(text: &str) -> Option<Operator> {
        [Operator::In, Operator::NotIn, Operator::Exists, Operator::DoesNotExist]
            .into_iter()
            .find(|op| op.as_str() == text)
    }
}

/// One `matchExpressions` item. `values` is sorted and free of duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Expression {
    /// As written: `app`, `container:app`, `reserved:init`.
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// An endpoint selector. `Selector::default()` (`{}`) selects every endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    /// Key (as written, maybe with a source prefix) → value, sorted by key (a vector: most
    /// selectors have one or two, and a tree node per selector costs far more).
    pub match_labels: Vec<(String, String)>,
    pub match_expressions: Vec<Expression>,
}

/// The source and key a selector key stands for; no known prefix = any source.
fn split_key(key: &str) -> (&str, &str) {
    split_source(key).unwrap_or((SOURCE_ANY, key))
}

impl Selector {
    /// Whether every requirement holds for `labels` (the identity class is not considered).
    pub fn matches_labels(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(key, value)| {
            let (source, key) = split_key(key);
            labels.has(source, key, value)
        }) && self.match_expressions.iter().all(|expr| {
            let (source, key) = split_key(&expr.key);
            match expr.operator {
                Operator::In => labels.with_key(source, key).any(|l| expr.values.contains(&l.value)),
                Operator::NotIn => !labels.with_key(source, key).any(|l| expr.values.contains(&l.value)),
                Operator::Exists => labels.has_key(source, key),
                Operator::DoesNotExist => !labels.has_key(source, key),
            }
        })
    }

    /// Whether the selector selects `identity`, which carries `labels`: the requirements hold
    /// and the identity is an endpoint, or a reserved identity the selector names positively.
    pub fn selects(&self, identity: Identity, labels: &Labels) -> bool {
        let selectable = if identity.is_endpoint() {
            true
        } else if identity.is_reserved() {
            self.names_positively(SOURCE_RESERVED, &identity.name())
        } else {
            false
        };
        selectable && self.matches_labels(labels)
    }

    /// Whether a `matchLabels` entry, an `In` or an `Exists` requires `source:key` explicitly.
    fn names_positively(&self, source: &str, key: &str) -> bool {
        let named = |text: &str| split_source(text) == Some((source, key));
        self.match_labels.iter().any(|(k, _)| named(k))
            || self
                .match_expressions
                .iter()
                .any(|e| matches!(e.operator, Operator::In | Operator::Exists) && named(&e.key))
    }

    /// Parses and validates a selector found at `path`.
    pub(crate) fn parse(value: &Value, path: &str) -> Walk<Selector> {
        let map = object(value, path)?;
        check_fields(map, path, &["matchLabels", "matchExpressions"], |_| None)?;
        let mut selector = Selector::default();
        if let Some(labels) = field(map, "matchLabels") {
            let labels_path = child(path, "matchLabels");
            for (key, value) in object(labels, &labels_path)? {
                check_key(key, &labels_path)?;
                let value_path = format!("{labels_path}[{}]", quoted(key));
                let value = string(value, &value_path)?;
                selector.match_labels.push((key.clone(), value.to_owned()));
            }
        }
        // JSON object keys are unique; serde_json hands them over sorted already.
        selector.match_labels.sort();
        let exprs_path = child(path, "matchExpressions");
        for (i, item) in list(map, "matchExpressions", path)?.iter().enumerate() {
            selector.match_expressions.push(parse_expression(item, &index(&exprs_path, i))?);
        }
        Ok(selector)
    }

    /// Cilium's JSON form (`{}` when empty).
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        if !self.match_labels.is_empty() {
            let labels: Map<String, Value> =
                self.match_labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            map.insert("matchLabels".into(), Value::Object(labels));
        }
        if !self.match_expressions.is_empty() {
            let exprs = self
                .match_expressions
                .iter()
                .map(|e| {
                    let mut item = json!({"key": e.key, "operator": e.operator.as_str()});
                    if !e.values.is_empty() {
                        item["values"] = json!(e.values);
                    }
                    item
                })
                .collect();
            map.insert("matchExpressions".into(), Value::Array(exprs));
        }
        Value::Object(map)
    }
}

fn check_key(key: &str, path: &str) -> Walk<()> {
    bounded(key, path)?;
    if split_key(key).1.is_empty() {
        return fail(path, format!("label key {} is empty", quoted(key)));
    }
    Ok(())
}

fn parse_expression(value: &Value, path: &str) -> Walk<Expression> {
    let map = object(value, path)?;
    check_fields(map, path, &["key", "operator", "values"], |_| None)?;
    let key_path = child(path, "key");
    let Some(key) = field(map, "key") else { return fail(&key_path, "required field is missing") };
    let key = string(key, &key_path)?;
    check_key(key, &key_path)?;
    let op_path = child(path, "operator");
    let Some(op) = field(map, "operator") else { return fail(&op_path, "required field is missing") };
    let op = string(op, &op_path)?;
    let Some(operator) = Operator::parse(op) else {
        return fail(
            &op_path,
            format!("operator {} is not supported; expected In, NotIn, Exists or DoesNotExist", quoted(op)),
        );
    };
    let values_path = child(path, "values");
    let mut values = Vec::new();
    if let Some(items) = field(map, "values") {
        for (i, item) in array(items, &values_path)?.iter().enumerate() {
            values.push(string(item, &index(&values_path, i))?.to_owned());
        }
    }
    values.sort();
    values.dedup();
    match operator {
        Operator::In | Operator::NotIn if values.is_empty() => {
            fail(&values_path, format!("operator {} needs at least one value", operator.as_str()))
        }
        Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
            fail(&values_path, format!("operator {} takes no values", operator.as_str()))
        }
        _ => Ok(Expression { key: key.to_owned(), operator, values }),
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Label;
    use serde_json::json;

    fn sel(value: Value) -> Selector {
        Selector::parse(&value, "s").unwrap()
    }

    fn web() -> Labels {
        [Label::container("app", "web"), Label::container("tier", "front"), Label::new("docker", "network", "n1")]
            .into_iter()
            .collect()
    }

    #[test]
    fn match_labels_honour_sources() {
        let labels = web();
        assert!(sel(json!({"matchLabels": {"app": "web"}})).matches_labels(&labels));
        assert!(sel(json!({"matchLabels": {"container:app": "web"}})).matches_labels(&labels));
        assert!(sel(json!({"matchLabels": {"any:app": "web"}})).matches_labels(&labels));
        assert!(sel(json!({"matchLabels": {"unspec:app": "web"}})).matches_labels(&labels));
        assert!(!sel(json!({"matchLabels": {"docker:app": "web"}})).matches_labels(&labels));
        assert!(!sel(json!({"matchLabels": {"k8s:app": "web"}})).matches_labels(&labels));
        assert!(sel(json!({"matchLabels": {"docker:network": "n1"}})).matches_labels(&labels));
        assert!(!sel(json!({"matchLabels": {"app": "web", "tier": "back"}})).matches_labels(&labels));
        assert!(!sel(json!({"matchLabels": {"app": ""}})).matches_labels(&labels));
        assert!(sel(json!({})).matches_labels(&labels));
        assert!(sel(json!({"matchLabels": {}})).matches_labels(&Labels::new()));
    }

    #[test]
    fn every_operator() {
        let labels = web();
        let expr = |op: &str, values: Value| {
            sel(json!({"matchExpressions": [{"key": "app", "operator": op, "values": values}]}))
        };
        let exists = |op: &str, key: &str| sel(json!({"matchExpressions": [{"key": key, "operator": op}]}));
        assert!(expr("In", json!(["db", "web"])).matches_labels(&labels));
        assert!(!expr("In", json!(["db"])).matches_labels(&labels));
        assert!(expr("NotIn", json!(["db"])).matches_labels(&labels));
        assert!(!expr("NotIn", json!(["web"])).matches_labels(&labels));
        assert!(expr("NotIn", json!(["web"])).matches_labels(&Labels::new()), "NotIn holds for an absent key");
        assert!(exists("Exists", "tier").matches_labels(&labels));
        assert!(!exists("Exists", "docker:tier").matches_labels(&labels));
        assert!(!exists("Exists", "role").matches_labels(&labels));
        assert!(exists("DoesNotExist", "role").matches_labels(&labels));
        assert!(!exists("DoesNotExist", "app").matches_labels(&labels));
        // Every requirement must hold.
        let both = sel(json!({
            "matchLabels": {"tier": "front"},
            "matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]},
                                 {"key": "role", "operator": "DoesNotExist"}]
        }));
        assert!(both.matches_labels(&labels));
        let mut other = labels.clone();
        other.insert(Label::container("role", "x"));
        assert!(!both.matches_labels(&other));
    }

    #[test]
    fn reserved_identities_need_a_positive_requirement() {
        let init = crate::identity::reserved_labels(Identity::INIT).unwrap();
        let host = crate::identity::reserved_labels(Identity::HOST).unwrap();
        let all = Selector::default();
        assert!(all.selects(Identity(300), &web()));
        assert!(!all.selects(Identity::INIT, &init), "{{}} never selects init");
        assert!(!all.selects(Identity::HOST, &host));
        assert!(!all.selects(Identity::WORLD, &crate::identity::reserved_labels(Identity::WORLD).unwrap()));
        assert!(sel(json!({"matchLabels": {"reserved:init": ""}})).selects(Identity::INIT, &init));
        assert!(sel(json!({"matchExpressions": [{"key": "reserved:init", "operator": "Exists"}]}))
            .selects(Identity::INIT, &init));
        assert!(sel(json!({"matchExpressions": [{"key": "reserved:host", "operator": "In", "values": [""]}]}))
            .selects(Identity::HOST, &host));
        // Naming another reserved identity, a negative requirement or no source does not count.
        assert!(!sel(json!({"matchLabels": {"reserved:host": ""}})).selects(Identity::INIT, &init));
        assert!(!sel(json!({"matchExpressions": [{"key": "reserved:host", "operator": "DoesNotExist"}]}))
            .selects(Identity::INIT, &init));
        assert!(!sel(json!({"matchLabels": {"init": ""}})).selects(Identity::INIT, &init));
        // CIDR identities and unknown numbers are never selected, whatever their labels.
        let cidr: Labels = [Label::new("cidr", "10.0.0.0/8", ""), Label::reserved("world")].into_iter().collect();
        assert!(!all.selects(Identity(Identity::MIN_CIDR), &cidr));
        assert!(!sel(json!({"matchLabels": {"reserved:world": ""}})).selects(Identity(Identity::MIN_CIDR), &cidr));
        assert!(!all.selects(Identity(3), &Labels::new()));
    }

    #[test]
    fn invalid_selectors_are_refused_with_their_path() {
        let err = |value: Value| Selector::parse(&value, "s").unwrap_err();
        let e = err(json!({"matchLabels": {"app": 1}}));
        assert_eq!(e.path, "s.matchLabels[\"app\"]");
        assert!(e.reason.contains("expected a string"));
        let e = err(json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}));
        assert_eq!(e.path, "s.matchExpressions[0].operator");
        let e = err(json!({"matchExpressions": [{"key": "a", "operator": "In"}]}));
        assert_eq!(e.path, "s.matchExpressions[0].values");
        let e = err(json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}));
        assert!(e.reason.contains("takes no values"));
        let e = err(json!({"matchLabel": {}}));
        assert!(e.reason.contains("unknown field \"matchLabel\""));
        let e = err(json!(["app"]));
        assert!(e.reason.contains("expected an object, found an array"));
        assert!(err(json!({"matchLabels": {"container:": "x"}})).reason.contains("empty"));
    }

    #[test]
    fn json_form_round_trips() {
        let value = json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev", "prod"]},
                                 {"key": "x", "operator": "Exists", "values": []}]
        });
        let selector = sel(value);
        assert_eq!(selector.match_expressions[0].values, vec!["dev", "prod"]);
        assert_eq!(sel(selector.to_json()), selector);
        assert_eq!(Selector::default().to_json(), json!({}));
    }
}
