//! Security labels (`source:key=value`) and the label sets identities are allocated for; the
//! filter that decides which container labels count (no I/O).
//!
//! Labels are written as Cilium writes them: `container:app=web` is the container label
//! `app=web`, `docker:network=net1` names the endpoint's network, `reserved:host` marks a
//! reserved identity and `cidr:10.0.0.0/8` a CIDR identity. In selectors a key without a known
//! source prefix (`app`) matches that key from any source.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::input::quoted;

/// Container labels, as Docker reports them.
pub const SOURCE_CONTAINER: &str = "container";
/// Labels the daemon adds from Docker's view of the endpoint (`docker:network=<name>`).
pub const SOURCE_DOCKER: &str = "docker";
/// Labels of the reserved identities (`reserved:host`, `reserved:world`, `reserved:init`).
pub const SOURCE_RESERVED: &str = "reserved";
/// Labels of CIDR identities (`cidr:10.0.0.0/8`).
pub const SOURCE_CIDR: &str = "cidr";
/// In selectors only: matches a key from any source.
pub const SOURCE_ANY: &str = "any";
/// Cilium's spelling of "no source given"; treated as `any`.
pub const SOURCE_UNSPEC: &str = "unspec";

/// Every source prefix recognised in `source:key`; any other prefix is part of the key.
pub const SOURCES: [&str; 7] =
    [SOURCE_CONTAINER, SOURCE_DOCKER, SOURCE_RESERVED, SOURCE_CIDR, SOURCE_ANY, SOURCE_UNSPEC, "k8s"];

/// The key of the label every endpoint carries with its network's name.
pub const NETWORK_KEY: &str = "network";

/// One label: source, key and value (empty for flags such as `reserved:init`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Label {
    pub source: String,
    pub key: String,
    pub value: String,
}

impl Label {
    pub fn new(source: &str, key: &str, value: &str) -> Self {
        Label { source: source.to_owned(), key: key.to_owned(), value: value.to_owned() }
    }

    /// A container label `key=value`.
    pub fn container(key: &str, value: &str) -> Self {
        Label::new(SOURCE_CONTAINER, key, value)
    }

    /// `reserved:<name>`.
    pub fn reserved(name: &str) -> Self {
        Label::new(SOURCE_RESERVED, name, "")
    }

    /// Parses `source:key=value`, `key=value` or `key` (a flag). Without a known source prefix
    /// the label gets `default_source`.
    pub fn parse(text: &str, default_source: &str) -> Result<Label, String> {
        let text = text.trim();
        let (source, rest) = split_source(text).unwrap_or((default_source, text));
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        if key.is_empty() {
            return Err(format!("label {} has an empty key", quoted(text)));
        }
        Ok(Label::new(source, key, value))
    }

    /// Whether the source is one that matches any source (`any`, `unspec`).
    pub fn is_any_source(&self) -> bool {
        self.source == SOURCE_ANY || self.source == SOURCE_UNSPEC
    }
}

/// Splits a known `source:` prefix off `text`.
pub fn split_source(text: &str) -> Option<(&str, &str)> {
    let (prefix, rest) = text.split_once(':')?;
    SOURCES.contains(&prefix).then_some((prefix, rest))
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.source, self.key)
        } else {
            write!(f, "{}:{}={}", self.source, self.key, self.value)
        }
    }
}

/// A set of labels, in canonical (sorted) order: the thing an identity stands for. Kept as a
/// sorted vector: label sets are small, and one tree node per set would cost far more.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "Vec<Label>", into = "Vec<Label>")]
pub struct Labels(Vec<Label>);

impl From<Vec<Label>> for Labels {
    fn from(labels: Vec<Label>) -> Self {
        labels.into_iter().collect()
    }
}

impl From<Labels> for Vec<Label> {
    fn from(labels: Labels) -> Self {
        labels.0
    }
}

impl Labels {
    pub fn new() -> Self {
        Labels::default()
    }

    pub fn insert(&mut self, label: Label) {
        if let Err(at) = self.0.binary_search(&label) {
            self.0.insert(at, label);
        }
    }

    pub fn contains(&self, label: &Label) -> bool {
        self.0.binary_search(label).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Labels with this key, from `source` or, when `source` is `any`/`unspec`, from any source.
    pub fn with_key<'a>(&'a self, source: &'a str, key: &'a str) -> impl Iterator<Item = &'a Label> + 'a {
        let any = source == SOURCE_ANY || source == SOURCE_UNSPEC;
        self.0.iter().filter(move |l| l.key == key && (any || l.source == source))
    }

    /// Whether a label `source:key` exists (any value).
    pub fn has_key(&self, source: &str, key: &str) -> bool {
        self.with_key(source, key).next().is_some()
    }

    /// Whether `source:key=value` exists.
    pub fn has(&self, source: &str, key: &str, value: &str) -> bool {
        self.with_key(source, key).any(|l| l.value == value)
    }

    /// Parses a list such as `app=web,container:tier=front` (commas or whitespace between
    /// labels), giving labels without a source prefix `default_source`.
    pub fn parse_list(text: &str, default_source: &str) -> Result<Labels, String> {
        let mut labels = Labels::new();
        for part in text.split([',', ' ', '\t', '\n']).filter(|p| !p.is_empty()) {
            labels.insert(Label::parse(part, default_source)?);
        }
        Ok(labels)
    }

    /// The canonical text form: labels in order, separated by `;` (used as a key).
    pub fn canonical(&self) -> String {
        self.0.iter().map(ToString::to_string).collect::<Vec<_>>().join(";")
    }
}

impl Extend<Label> for Labels {
    fn extend<I: IntoIterator<Item = Label>>(&mut self, iter: I) {
        self.0.extend(iter);
        self.0.sort();
        self.0.dedup();
    }
}

impl FromIterator<Label> for Labels {
    fn from_iter<I: IntoIterator<Item = Label>>(iter: I) -> Self {
        let mut labels: Vec<Label> = iter.into_iter().collect();
        labels.sort();
        labels.dedup();
        Labels(labels)
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&text.join(","))
    }
}

/// Which container labels count for identity: a label is kept unless the longest prefix of
/// its key found in the lists is an exclude; when `--label-include` prefixes are given, a
/// label must also match one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelFilter {
    /// (prefix, keep) pairs; the longest matching prefix decides.
    rules: Vec<(String, bool)>,
    /// The user gave `--label-include`: labels matching no include are dropped.
    include_only: bool,
}

/// Compose's bookkeeping labels differ between runs of the same service and would split
/// identities; its project and service names are kept (they are what policy selects on).
pub const DEFAULT_EXCLUDES: [&str; 3] =
    ["com.docker.compose.", "com.docker.compose.project.", "org.opencontainers.image."];
/// Kept despite [`DEFAULT_EXCLUDES`].
pub const DEFAULT_INCLUDES: [&str; 2] = ["com.docker.compose.project", "com.docker.compose.service"];

impl Default for LabelFilter {
    fn default() -> Self {
        LabelFilter::new(&[], &[])
    }
}

impl LabelFilter {
    /// The defaults plus the user's `--label-include` and `--label-exclude` prefixes.
    pub fn new(include: &[String], exclude: &[String]) -> Self {
        let mut rules: Vec<(String, bool)> = DEFAULT_EXCLUDES.iter().map(|p| (p.to_string(), false)).collect();
        rules.extend(DEFAULT_INCLUDES.iter().map(|p| (p.to_string(), true)));
        // The user's word wins over a default of the same prefix.
        for (prefix, keep) in exclude.iter().map(|p| (p, false)).chain(include.iter().map(|p| (p, true))) {
            rules.retain(|(p, _)| p != prefix);
            rules.push((prefix.clone(), keep));
        }
        LabelFilter { rules, include_only: !include.is_empty() }
    }

    /// Whether the container label `key` counts.
    pub fn keeps(&self, key: &str) -> bool {
        let decision = self.rules.iter().filter(|(p, _)| key.starts_with(p.as_str())).max_by_key(|(p, _)| p.len());
        match decision {
            Some((_, keep)) => *keep && (!self.include_only || self.matches_user_include(key)),
            None => !self.include_only,
        }
    }

    fn matches_user_include(&self, key: &str) -> bool {
        // Default includes count only when the user did not restrict labels.
        self.rules
            .iter()
            .filter(|(p, keep)| *keep && !DEFAULT_INCLUDES.contains(&p.as_str()))
            .any(|(p, _)| key.starts_with(p.as_str()))
    }

    /// The labels of an endpoint: the container labels that count, plus its network.
    pub fn endpoint_labels<'a>(
        &self,
        container_labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        network: &str,
    ) -> Labels {
        let mut labels: Labels =
            container_labels.into_iter().filter(|(k, _)| self.keeps(k)).map(|(k, v)| Label::container(k, v)).collect();
        labels.insert(Label::new(SOURCE_DOCKER, NETWORK_KEY, network));
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_with_and_without_a_source() {
        assert_eq!(Label::parse("container:app=web", SOURCE_ANY).unwrap(), Label::container("app", "web"));
        assert_eq!(Label::parse("app=web", SOURCE_ANY).unwrap(), Label::new("any", "app", "web"));
        assert_eq!(Label::parse("reserved:init", SOURCE_ANY).unwrap(), Label::reserved("init"));
        // A colon that is not a known source belongs to the key; IPv6 CIDR labels keep theirs.
        assert_eq!(Label::parse("io.x:y=1", SOURCE_CONTAINER).unwrap(), Label::container("io.x:y", "1"));
        assert_eq!(Label::parse("cidr:fd00::/8", SOURCE_ANY).unwrap(), Label::new("cidr", "fd00::/8", ""));
        assert!(Label::parse("=x", SOURCE_ANY).is_err());
        assert_eq!(Label::container("app", "web").to_string(), "container:app=web");
        assert_eq!(Label::reserved("host").to_string(), "reserved:host");
    }

    #[test]
    fn lookups_honour_the_source() {
        let labels: Labels =
            [Label::container("app", "web"), Label::new(SOURCE_DOCKER, "network", "n1")].into_iter().collect();
        assert!(labels.has("any", "app", "web"));
        assert!(labels.has("container", "app", "web"));
        assert!(!labels.has("docker", "app", "web"));
        assert!(labels.has_key("docker", "network"));
        assert!(labels.has_key("unspec", "network"));
        assert_eq!(labels.canonical(), "container:app=web;docker:network=n1");
        let list = Labels::parse_list("app=web, tier=db", SOURCE_CONTAINER).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.has("container", "tier", "db"));
    }

    #[test]
    fn compose_bookkeeping_is_dropped_and_its_names_kept() {
        let filter = LabelFilter::default();
        for kept in ["app", "com.docker.compose.project", "com.docker.compose.service", "io.example.tier"] {
            assert!(filter.keeps(kept), "{kept} dropped");
        }
        for dropped in [
            "com.docker.compose.config-hash",
            "com.docker.compose.container-number",
            "com.docker.compose.oneoff",
            "com.docker.compose.version",
            "com.docker.compose.project.working_dir",
            "com.docker.compose.project.config_files",
            "org.opencontainers.image.version",
        ] {
            assert!(!filter.keeps(dropped), "{dropped} kept");
        }
        let labels = filter.endpoint_labels(
            [("app", "web"), ("com.docker.compose.config-hash", "abc"), ("com.docker.compose.service", "web")],
            "net1",
        );
        assert_eq!(
            labels.canonical(),
            "container:app=web;container:com.docker.compose.service=web;docker:network=net1"
        );
    }

    #[test]
    fn user_prefixes_restrict_and_override() {
        let filter = LabelFilter::new(&["app".into()], &[]);
        assert!(filter.keeps("app") && filter.keeps("app.tier"));
        assert!(!filter.keeps("tier"), "only included prefixes count");
        assert!(!filter.keeps("com.docker.compose.service"), "defaults do not widen a user include");
        let filter = LabelFilter::new(&[], &["secret.".into(), "com.docker.compose.service".into()]);
        assert!(!filter.keeps("secret.token"));
        assert!(!filter.keeps("com.docker.compose.service"), "the user's exclude wins over a default include");
        assert!(filter.keeps("app"));
    }
}
