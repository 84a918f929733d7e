//! The plugin calls a real dockerd 20.10 made (`plugin-spec/fixtures/dockerd-20.10`), replayed
//! against the daemon: the recorder's pool ids, subnets and addresses are swapped for the ones
//! this daemon answered, and what only the recorder understood is left out.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::{send, Harness};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-spec/fixtures/dockerd-20.10");
/// The address spaces the recorder answered, and this daemon's.
const ADDRESS_SPACES: [(&str, &str); 2] =
    [("CrsRecorderLocal", "CiliumRsLocal"), ("CrsRecorderGlobal", "CiliumRsGlobal")];
/// Options of the recorder itself (`crs-rec.fail`, `crs-rec.gateway`, …).
const RECORDER_OPTION: &str = "crs-rec.";

/// One recorded call.
#[derive(Debug, Clone, Deserialize)]
pub struct Call {
    pub method: String,
    pub request_body: String,
    pub status: u16,
    pub response_body: String,
    #[serde(skip)]
    pub name: String,
}

impl Call {
    /// The request as dockerd sent it; `None` for the calls without a payload.
    pub fn request(&self) -> Option<Value> {
        let body = self.request_body.trim();
        (!body.is_empty()).then(|| serde_json::from_str(body).unwrap_or_else(|e| panic!("{}: {e}", self.name)))
    }

    fn response(&self) -> Value {
        serde_json::from_str(&self.response_body).unwrap_or(Value::Null)
    }

    /// The recorder made this call fail on purpose (dockerd then rolled back).
    pub fn failed_on_purpose(&self) -> bool {
        self.status >= 500
    }
}

#[derive(Debug)]
pub struct Scenario {
    pub name: String,
    pub calls: Vec<Call>,
}

/// Every recorded scenario, its calls in the order dockerd made them.
pub fn scenarios() -> &'static [Scenario] {
    static ALL: OnceLock<Vec<Scenario>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut dirs: Vec<_> = std::fs::read_dir(FIXTURES)
            .expect("fixtures directory")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        let mut all: Vec<Scenario> = dirs.iter().map(|dir| load(dir)).collect();
        all.push(swarm_discovery());
        all
    })
}

/// The two swarm-only calls, which a local dockerd never makes (so none was recorded), in the
/// shape the protocol reference gives (§2.11).
fn swarm_discovery() -> Scenario {
    let name = "swarm-discovery (protocol reference, not recorded)";
    let call = |method: &str| Call {
        method: method.to_owned(),
        request_body:
            "{\"DiscoveryType\":1,\"DiscoveryData\":{\"Address\":\"10.0.0.1\",\"BindAddress\":\"\",\"Self\":true}}\n"
                .to_owned(),
        status: 200,
        response_body: "{}".to_owned(),
        name: format!("{name}/{method}"),
    };
    Scenario {
        name: name.to_owned(),
        calls: vec![call("NetworkDriver.DiscoverNew"), call("NetworkDriver.DiscoverDelete")],
    }
}

fn load(dir: &Path) -> Scenario {
    let name = dir.file_name().expect("name").to_string_lossy().into_owned();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("scenario directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.as_bytes()[0].is_ascii_digit()))
        .collect();
    files.sort();
    let calls = files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).expect("read fixture");
            let mut call: Call = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            call.name = format!("{name}/{}", path.file_name().expect("name").to_string_lossy());
            call
        })
        .collect();
    Scenario { name, calls }
}

/// Every recorded call with a payload, each with its scenario and its place in it.
pub fn calls_with_payload() -> &'static [(usize, usize)] {
    static ALL: OnceLock<Vec<(usize, usize)>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all = Vec::new();
        for (s, scenario) in scenarios().iter().enumerate() {
            for (c, call) in scenario.calls.iter().enumerate() {
                if call.request().is_some() && !call.failed_on_purpose() {
                    all.push((s, c));
                }
            }
        }
        all
    })
}

/// What the recorder answered, mapped to what this daemon answered to the same call.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    answers: BTreeMap<String, String>,
}

impl Replay {
    /// The request of `call` as this daemon must get it (`None` for calls without payload).
    pub fn translate(&self, call: &Call) -> Option<Value> {
        let mut request = call.request()?;
        self.rewrite(&mut request);
        if let Some(options) = request.get_mut("Options").and_then(Value::as_object_mut) {
            match call.method.as_str() {
                // The scenarios pass --ipam-opt and -o options that cilium-rs refuses by design.
                "IpamDriver.RequestPool" => options.clear(),
                "NetworkDriver.CreateNetwork" => {
                    if let Some(generic) = options.get_mut(plugin_spec::OPTION_GENERIC).and_then(Value::as_object_mut) {
                        generic.retain(|key, _| cilium_rs::network::MTU_OPTIONS.contains(&key.as_str()));
                    }
                }
                // Real host ports are no business of these tests.
                _ => {
                    if let Some(ports) = options.get_mut(plugin_spec::OPTION_PORT_MAP) {
                        *ports = Value::Array(Vec::new());
                    }
                }
            }
        }
        Some(request)
    }

    fn rewrite(&self, value: &mut Value) {
        match value {
            Value::String(text) => {
                if let Some((_, ours)) = ADDRESS_SPACES.iter().find(|(recorded, _)| recorded == text) {
                    *text = (*ours).to_owned();
                } else if let Some(ours) = self.answers.get(text.as_str()) {
                    text.clone_from(ours);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.rewrite(v)),
            Value::Object(map) => {
                map.retain(|key, _| !key.starts_with(RECORDER_OPTION));
                map.values_mut().for_each(|v| self.rewrite(v));
            }
            _ => {}
        }
    }

    /// Learns this daemon's answer to `call`: pool ids, subnets, gateways and addresses.
    pub fn learn(&mut self, call: &Call, ours: &Value) {
        let recorded = call.response();
        let mut pair = |recorded: &Value, ours: &Value| {
            if let (Some(recorded), Some(ours)) = (recorded.as_str(), ours.as_str()) {
                self.answers.insert(recorded.to_owned(), ours.to_owned());
                if let (Some((r, _)), Some((o, _))) = (recorded.split_once('/'), ours.split_once('/')) {
                    // Addresses come back bare in ReleaseAddress.
                    if !recorded.contains('@') && !ours.contains('@') {
                        self.answers.insert(r.to_owned(), o.to_owned());
                    }
                }
            }
        };
        match call.method.as_str() {
            "IpamDriver.RequestPool" => {
                pair(&recorded["PoolID"], &ours["PoolID"]);
                pair(&recorded["Pool"], &ours["Pool"]);
                let gateway = plugin_spec::GATEWAY_DATA_KEY;
                pair(&recorded["Data"][gateway], &ours["Data"][gateway]);
            }
            "IpamDriver.RequestAddress" => pair(&recorded["Address"], &ours["Address"]),
            _ => {}
        }
    }
}

/// Replays the first `count` calls of `scenario`, each of which must succeed (calls the
/// recorder failed on purpose are left out, as dockerd saw them fail), and returns the mapping.
pub async fn replay(h: &Harness, scenario: &Scenario, count: usize) -> Replay {
    let mut replay = Replay::default();
    for call in &scenario.calls[..count] {
        if call.failed_on_purpose() {
            continue;
        }
        let body = replay.translate(call).map(|v| format!("{v}\n")).unwrap_or_default();
        let (status, answer) = send(&h.plugin, "POST", &format!("/{}", call.method), body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{}: {body} answered {answer}", call.name);
        replay.learn(call, &answer);
    }
    replay
}
