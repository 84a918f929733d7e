//! Where the fields of a plugin request are, and which kinds of JSON value each may hold (as
//! the wire types and the driver's option parsers fix them).

use serde_json::Value;

use crate::hostile::Kind;

/// One step into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

pub type Place = Vec<Step>;

pub fn key(name: &str) -> Step {
    Step::Key(name.to_owned())
}

/// The value at `place` (created as `null` when its object lacks the key).
pub fn at<'a>(value: &'a mut Value, place: &[Step]) -> &'a mut Value {
    place.iter().fold(value, |v, step| match step {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

pub fn shown(place: &[Step]) -> String {
    place
        .iter()
        .map(|s| match s {
            Step::Key(k) => k.clone(),
            Step::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Top-level request fields and their kind; `DiscoveryData` is free-form.
const FIELDS: [(&str, Kind); 14] = [
    ("NetworkID", Kind::String),
    ("EndpointID", Kind::String),
    ("PoolID", Kind::String),
    ("Address", Kind::String),
    ("AddressSpace", Kind::String),
    ("Pool", Kind::String),
    ("SubPool", Kind::String),
    ("SandboxKey", Kind::String),
    ("V6", Kind::Bool),
    ("DiscoveryType", Kind::Number),
    ("Options", Kind::Object),
    ("Interface", Kind::Object),
    ("IPv4Data", Kind::Array),
    ("IPv6Data", Kind::Array),
];

/// Every place in `request` (of `method`) whose kind is fixed, with the kinds it accepts
/// besides `null`.
pub fn typed(method: &str, request: &Value) -> Vec<(Place, Vec<Kind>)> {
    let mut places = Vec::new();
    let Some(fields) = request.as_object() else { return places };
    for (name, kind) in FIELDS {
        if fields.contains_key(name) {
            places.push((vec![key(name)], vec![kind]));
        }
    }
    for name in ["Address", "AddressIPv6", "MacAddress"] {
        if request["Interface"].get(name).is_some() {
            places.push((vec![key("Interface"), key(name)], vec![Kind::String]));
        }
    }
    for family in ["IPv4Data", "IPv6Data"] {
        for (i, data) in request[family].as_array().into_iter().flatten().enumerate() {
            let here = vec![key(family), Step::Index(i)];
            places.push((here.clone(), vec![Kind::Object]));
            for name in ["AddressSpace", "Gateway", "Pool"] {
                places.push((with(&here, &[name]), vec![Kind::String]));
            }
            if let Some(aux) = data.get("AuxAddresses").and_then(Value::as_object) {
                places.push((with(&here, &["AuxAddresses"]), vec![Kind::Object]));
                for name in aux.keys() {
                    places.push((with(&here, &["AuxAddresses", name]), vec![Kind::String]));
                }
            }
        }
    }
    let options = request.get("Options").and_then(Value::as_object);
    for (name, _) in options.into_iter().flatten() {
        let place = vec![key("Options"), key(name)];
        match (method, name.as_str()) {
            ("IpamDriver.RequestPool" | "IpamDriver.RequestAddress", _) => places.push((place, vec![Kind::String])),
            ("NetworkDriver.CreateNetwork", plugin_spec::OPTION_ENABLE_IPV6 | plugin_spec::OPTION_INTERNAL) => {
                places.push((place, vec![Kind::Bool]))
            }
            ("NetworkDriver.CreateNetwork", plugin_spec::OPTION_GENERIC) => {
                places.push((place.clone(), vec![Kind::Object]));
                for option in request["Options"][name].as_object().into_iter().flatten().map(|(k, _)| k) {
                    places.push((with(&place, &[option]), vec![Kind::String, Kind::Number]));
                }
            }
            ("NetworkDriver.CreateEndpoint" | "NetworkDriver.Join", plugin_spec::OPTION_PORT_MAP) => {
                places.push((place.clone(), vec![Kind::Array]));
                for (i, _) in request["Options"][name].as_array().into_iter().flatten().enumerate() {
                    let entry = [place.clone(), vec![Step::Index(i)]].concat();
                    places.push((entry.clone(), vec![Kind::Object]));
                    for number in ["Proto", "Port", "HostPort", "HostPortEnd"] {
                        places.push((with(&entry, &[number]), vec![Kind::Number]));
                    }
                    places.push((with(&entry, &["HostIP"]), vec![Kind::String]));
                }
            }
            _ => {}
        }
    }
    places
}

fn with(place: &[Step], names: &[&str]) -> Place {
    place.iter().cloned().chain(names.iter().map(|n| key(n))).collect()
}

/// Field names the wire types declare (at any level): an "unknown" field is none of them.
pub const DECLARED: [&str; 24] = [
    "NetworkID",
    "EndpointID",
    "PoolID",
    "Address",
    "AddressIPv6",
    "MacAddress",
    "AddressSpace",
    "Pool",
    "SubPool",
    "SandboxKey",
    "V6",
    "DiscoveryType",
    "DiscoveryData",
    "Options",
    "Interface",
    "IPv4Data",
    "IPv6Data",
    "AuxAddresses",
    "Gateway",
    "Proto",
    "Port",
    "HostPort",
    "HostPortEnd",
    "HostIP",
];

/// The objects of `request` the wire types decode field by field (where unknown fields are
/// ignored): the request itself, its `Interface`, its `IPv4Data`/`IPv6Data` entries.
pub fn structs(request: &Value) -> Vec<Place> {
    let mut places = vec![Vec::new()];
    if request.get("Interface").is_some_and(Value::is_object) {
        places.push(vec![key("Interface")]);
    }
    for family in ["IPv4Data", "IPv6Data"] {
        for (i, _) in request[family].as_array().into_iter().flatten().enumerate() {
            places.push(vec![key(family), Step::Index(i)]);
        }
    }
    places
}

/// The option keys the driver reads for `method`: any other key of its `Options` is ignored.
pub fn options_read(method: &str) -> Option<&'static [&'static str]> {
    match method {
        "NetworkDriver.CreateNetwork" => {
            Some(&[plugin_spec::OPTION_ENABLE_IPV6, plugin_spec::OPTION_INTERNAL, plugin_spec::OPTION_GENERIC])
        }
        "NetworkDriver.CreateEndpoint" | "NetworkDriver.Join" => Some(&[plugin_spec::OPTION_PORT_MAP]),
        "NetworkDriver.ProgramExternalConnectivity" => Some(&[]),
        "IpamDriver.RequestAddress" => Some(&[plugin_spec::REQUEST_ADDRESS_TYPE]),
        // RequestPool refuses every option (cilium-rs IPAM takes none).
        _ => None,
    }
}
