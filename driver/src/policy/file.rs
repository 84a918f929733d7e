//! Policy files: JSON or YAML holding a Cilium rule list, a single rule, or Kubernetes
//! `CiliumNetworkPolicy` / `CiliumClusterwideNetworkPolicy` objects (alone, in a `List`, or as
//! documents of a multi-document YAML file), split into rules that are validated one by one.
//! One bad rule refuses the whole file, with an error naming the rule and the field path.

use serde::Deserialize;
use serde_json::{Map, Value};
use thiserror::Error;

use super::rule::Rule;
use super::walk::{array, check_fields, child, field, index, kind, object, string, FieldError, Refusal};
use crate::input::quoted;
use crate::labels::Label;

/// Most rules one file may hold.
pub const MAX_RULES: usize = 100_000;
/// Largest policy file accepted, in bytes.
pub const MAX_FILE: usize = 64 << 20;
/// Longest parser message echoed back (they may quote the input).
const MAX_MESSAGE: usize = 200;

/// Label Cilium adds to the rules of a Kubernetes policy object: its name.
pub const POLICY_NAME_LABEL: &str = "io.cilium.k8s.policy.name";
/// Label Cilium adds to the rules of a Kubernetes policy object: its kind.
pub const POLICY_DERIVED_FROM_LABEL: &str = "io.cilium.k8s.policy.derived-from";

const KINDS: [&str; 2] = ["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("policy file is {size} bytes; the limit is {MAX_FILE}")]
    TooLarge { size: usize },
    #[error("policy file is not valid UTF-8")]
    NotUtf8,
    #[error("policy file is not valid {format}: {message}")]
    Syntax { format: &'static str, message: String },
    #[error("policy file holds more than {MAX_RULES} rules")]
    TooManyRules,
    /// A document or Kubernetes object around the rules is malformed.
    #[error("{path}: {reason}")]
    Document { path: String, reason: String },
    /// Rule `rule` (0-based) of `total` is invalid at `path`.
    #[error("{path}: {reason} (rule {} of {total})", .rule + 1)]
    Rule { rule: usize, total: usize, path: String, reason: String },
}

/// Parses a policy file (JSON or YAML) into validated rules.
pub fn parse_rules(input: &[u8]) -> Result<Vec<Rule>, PolicyError> {
    if input.len() > MAX_FILE {
        return Err(PolicyError::TooLarge { size: input.len() });
    }
    let text = std::str::from_utf8(input).map_err(|_| PolicyError::NotUtf8)?;
    parse_rules_str(text)
}

/// Parses policy text (JSON or YAML) into validated rules.
pub fn parse_rules_str(text: &str) -> Result<Vec<Rule>, PolicyError> {
    if text.len() > MAX_FILE {
        return Err(PolicyError::TooLarge { size: text.len() });
    }
    let docs = documents(text)?;
    let mut raw = Vec::new();
    let several = docs.len() > 1;
    for (i, doc) in docs.iter().enumerate() {
        let prefix = if several { format!("document {}", i + 1) } else { String::new() };
        collect_document(doc, &prefix, i + 1, &mut raw)?;
        if raw.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules);
        }
    }
    let total = raw.len();
    raw.into_iter()
        .enumerate()
        .map(|(i, found)| {
            let mut rule = Rule::parse(found.value, &found.path)
                .map_err(|FieldError { path, reason }| PolicyError::Rule { rule: i, total, path, reason })?;
            rule.labels.extend(found.labels);
            Ok(rule)
        })
        .collect()
}

/// Parses one rule in its JSON form (as [`Rule::to_json`] writes it) through the same validation.
pub fn parse_rule_value(value: &Value) -> Result<Rule, PolicyError> {
    Rule::parse(value, "rule").map_err(|FieldError { path, reason }| PolicyError::Rule {
        rule: 0,
        total: 1,
        path,
        reason,
    })
}

/// A rule found in a document, before validation.
struct Found<'a> {
    value: &'a Value,
    path: String,
    /// Added by Cilium for Kubernetes objects.
    labels: Vec<Label>,
}

fn bounded_message(message: String) -> String {
    let clean: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if clean.chars().count() <= MAX_MESSAGE {
        return clean;
    }
    let mut cut: String = clean.chars().take(MAX_MESSAGE).collect();
    cut.push('…');
    cut
}

/// The documents of the file: one JSON value, or every YAML document.
fn documents(text: &str) -> Result<Vec<Value>, PolicyError> {
    let start = text.trim_start_matches('\u{feff}').trim_start();
    if start.starts_with('[') || start.starts_with('{') {
        match serde_json::from_str::<Value>(start) {
            Ok(value) => return Ok(vec![value]),
            // Maybe YAML in flow style; if that fails too, the JSON error is the relevant one.
            Err(err) => {
                return yaml_documents(text)
                    .map_err(|_| PolicyError::Syntax { format: "JSON", message: bounded_message(err.to_string()) })
            }
        }
    }
    yaml_documents(text)
}

fn yaml_documents(text: &str) -> Result<Vec<Value>, PolicyError> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(doc)
            .map_err(|err| PolicyError::Syntax { format: "YAML", message: bounded_message(err.to_string()) })?;
        docs.push(value);
        if docs.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules);
        }
    }
    Ok(docs)
}

fn document_error(path: &str, reason: impl Into<String>) -> PolicyError {
    PolicyError::Document { path: path.to_owned(), reason: reason.into() }
}

fn from_field(FieldError { path, reason }: FieldError) -> PolicyError {
    PolicyError::Document { path, reason }
}

/// Appends `[i]`-style suffixes or `.field` paths to a prefix that may be empty.
fn join(prefix: &str, part: &str) -> String {
    if prefix.is_empty() {
        part.to_owned()
    } else {
        format!("{prefix} {part}")
    }
}

fn collect_document<'a>(
    doc: &'a Value,
    prefix: &str,
    number: usize,
    out: &mut Vec<Found<'a>>,
) -> Result<(), PolicyError> {
    match doc {
        // An empty YAML document (a trailing `---`).
        Value::Null => Ok(()),
        Value::Array(items) => {
            let base = join(prefix, "rules");
            out.extend(items.iter().enumerate().map(|(i, value)| Found {
                value,
                path: index(&base, i),
                labels: vec![],
            }));
            Ok(())
        }
        Value::Object(map) if map.contains_key("kind") || map.contains_key("apiVersion") => {
            collect_object(map, &format!("document {number}"), out, true)
        }
        Value::Object(_) => {
            out.push(Found { value: doc, path: join(prefix, "rule"), labels: vec![] });
            Ok(())
        }
        other => Err(document_error(
            if prefix.is_empty() { "policy file" } else { prefix },
            format!("expected a rule, a list of rules or a CiliumNetworkPolicy, found {}", kind(other)),
        )),
    }
}

/// A Kubernetes object: a Cilium policy, or (when `list_allowed`) a `List` of them.
fn collect_object<'a>(
    map: &'a Map<String, Value>,
    base: &str,
    out: &mut Vec<Found<'a>>,
    list_allowed: bool,
) -> Result<(), PolicyError> {
    let kind_value =
        field(map, "kind").ok_or_else(|| document_error(&child(base, "kind"), "required field is missing"))?;
    let kind_name = string(kind_value, &child(base, "kind")).map_err(from_field)?;
    if list_allowed && (kind_name == "List" || KINDS.iter().any(|k| kind_name == format!("{k}List"))) {
        let here = format!("{base} ({kind_name})");
        check_fields(map, &here, &["apiVersion", "kind", "metadata", "items"], |_| None).map_err(from_field)?;
        let items_path = child(&here, "items");
        let items = match field(map, "items") {
            Some(items) => array(items, &items_path).map_err(from_field)?,
            None => &[],
        };
        for (i, item) in items.iter().enumerate() {
            let item_path = index(&items_path, i);
            let obj = object(item, &item_path).map_err(from_field)?;
            collect_object(obj, &item_path, out, false)?;
        }
        return Ok(());
    }
    let Some(kind_name) = KINDS.iter().find(|k| **k == kind_name) else {
        return Err(document_error(
            &child(base, "kind"),
            format!("kind {} is not supported; expected {} or List", quoted(kind_name), KINDS.join(", ")),
        ));
    };
    let named = |name: Option<&str>| match name {
        Some(name) => format!("{base} ({kind_name} {})", quoted(name)),
        None => format!("{base} ({kind_name})"),
    };
    check_fields(map, &named(None), &["apiVersion", "kind", "metadata", "spec", "specs", "status"], |key| match key {
        "endpointSelector" | "ingress" | "egress" | "ingressDeny" | "egressDeny" => {
            Some(Refusal::Misplaced(format!("{key} belongs inside spec")))
        }
        _ => None,
    })
    .map_err(from_field)?;
    let meta_path = child(&named(None), "metadata");
    let meta = field(map, "metadata").ok_or_else(|| document_error(&meta_path, "required field is missing"))?;
    let meta = object(meta, &meta_path).map_err(from_field)?;
    let name_path = child(&meta_path, "name");
    let name = field(meta, "name").ok_or_else(|| document_error(&name_path, "required field is missing"))?;
    let name = string(name, &name_path).map_err(from_field)?;
    if name.is_empty() {
        return Err(document_error(&name_path, "name is empty"));
    }
    let here = named(Some(name));
    let labels =
        vec![Label::new("k8s", POLICY_NAME_LABEL, name), Label::new("k8s", POLICY_DERIVED_FROM_LABEL, kind_name)];
    let spec = field(map, "spec");
    let specs = match field(map, "specs") {
        Some(specs) => array(specs, &child(&here, "specs")).map_err(from_field)?,
        None => &[],
    };
    if spec.is_none() && specs.is_empty() {
        return Err(document_error(&here, "has neither spec nor specs"));
    }
    if let Some(value) = spec {
        out.push(Found { value, path: child(&here, "spec"), labels: labels.clone() });
    }
    let specs_path = child(&here, "specs");
    out.extend(specs.iter().enumerate().map(|(i, value)| Found {
        value,
        path: index(&specs_path, i),
        labels: labels.clone(),
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Labels;

    fn err(text: &str) -> String {
        parse_rules_str(text).unwrap_err().to_string()
    }

    #[test]
    fn json_arrays_single_objects_and_yaml() {
        let json = r#"[{"endpointSelector": {}}, {"endpointSelector": {"matchLabels": {"a": "b"}}}]"#;
        assert_eq!(parse_rules_str(json).unwrap().len(), 2);
        assert_eq!(parse_rules_str(r#"{"endpointSelector": {}}"#).unwrap().len(), 1);
        let yaml = "- endpointSelector: {}\n  ingress:\n  - fromEntities: [world]\n";
        assert_eq!(parse_rules_str(yaml).unwrap()[0].ingress.len(), 1);
        assert_eq!(parse_rules_str("{endpointSelector: {}}").unwrap().len(), 1, "YAML flow style");
        assert!(parse_rules_str("").unwrap().is_empty());
        assert!(parse_rules(b"[]").unwrap().is_empty());
    }

    #[test]
    fn kubernetes_objects_get_cilium_labels() {
        let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: foo, namespace: default}
spec:
  endpointSelector: {}
specs:
- endpointSelector: {matchLabels: {a: b}}
---
---
apiVersion: cilium.io/v2
kind: List
items:
- apiVersion: cilium.io/v2
  kind: CiliumClusterwideNetworkPolicy
  metadata: {name: bar}
  spec:
    endpointSelector: {}
    labels: ["own=label"]
"#;
        let rules = parse_rules_str(yaml).unwrap();
        assert_eq!(rules.len(), 3);
        let name = |n: &str| Label::new("k8s", POLICY_NAME_LABEL, n);
        assert!(rules[0].labels.contains(&name("foo")) && rules[1].labels.contains(&name("foo")));
        assert!(rules[0].labels.contains(&Label::new("k8s", POLICY_DERIVED_FROM_LABEL, "CiliumNetworkPolicy")));
        let own: Labels = [Label::new("unspec", "own", "label"), name("bar")].into_iter().collect();
        assert!(rules[2].has_labels(&own));
        assert!(rules[2].labels.contains(&Label::new(
            "k8s",
            POLICY_DERIVED_FROM_LABEL,
            "CiliumClusterwideNetworkPolicy"
        )));
    }

    #[test]
    fn errors_name_document_rule_and_path() {
        let yaml = r#"
- endpointSelector: {}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: foo}
specs:
- endpointSelector: {}
- endpointSelector: {}
  ingress:
  - fromEndpoints: [{}]
    toPorts: [{ports: [{port: http}]}]
"#;
        assert_eq!(
            err(yaml),
            "document 2 (CiliumNetworkPolicy \"foo\").specs[1].ingress[0].toPorts[0].ports[0].port: \
             named port \"http\" is not supported; use a port number (rule 3 of 3)"
        );
        assert!(err("kind: Deployment\nmetadata: {name: x}")
            .starts_with("document 1.kind: kind \"Deployment\" is not supported"));
        assert!(
            err("kind: CiliumNetworkPolicy\nspec: {}").contains("document 1 (CiliumNetworkPolicy).metadata: required")
        );
        assert!(err("kind: CiliumNetworkPolicy\nmetadata: {name: x}").contains("has neither spec nor specs"));
        assert!(err("[{\"endpointSelector\": {}}").starts_with("policy file is not valid JSON"));
        assert!(err("a: [b\n").starts_with("policy file is not valid YAML"));
        assert!(err("42").contains("expected a rule, a list of rules"));
        assert!(err(r#"[{"kind": "x", "endpointSelector": {}}]"#).contains("belongs to a Kubernetes object"));
        assert_eq!(parse_rules(&[0xff, 0xfe]).unwrap_err(), PolicyError::NotUtf8);
    }

    #[test]
    fn limits() {
        let many = format!("[{}]", vec!["{\"endpointSelector\": {}}"; MAX_RULES + 1].join(","));
        assert_eq!(parse_rules_str(&many).unwrap_err(), PolicyError::TooManyRules);
        let long = format!(r#"{{"endpointSelector": {{}}, "description": "{}"}}"#, "x".repeat(5000));
        assert!(err(&long).contains("longer than 4096 bytes"));
    }
}
