//! Recorded plugin requests with one field made hostile: of the wrong kind, an id with path
//! traversal or shell metacharacters, an address with a zone id or outside its pool, a
//! malformed MAC, options the driver refuses; and fields and options it does not read, which
//! must change nothing at all.

use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};

use cilium_rs::store::{Store, Table};

use crate::at_call::{any_call, call_of, first_call_of_each_method, AtCall};
use crate::block_on;
use crate::hostile::{bad_address, bad_id, bad_mac, bad_text, other_kind, other_kinds, values_of_kind, BadAddress};
use crate::places::{at, options_read, shown, structs, typed, Step, DECLARED};
use crate::routers::send_raw;
use crate::routers::snapshot::Snapshot;

/// Driver options that would name an interface, where cilium-rs takes none.
const INTERFACE_OPTIONS: [&str; 5] = [
    "com.docker.network.bridge.name",
    "parent",
    "com.docker.network.driver.interface",
    "com.docker.network.endpoint.ifname",
    "ifname",
];

/// The calls that carry a NetworkID, an EndpointID or a PoolID.
const CALLS_WITH_IDS: [&str; 12] = [
    "NetworkDriver.CreateNetwork",
    "NetworkDriver.DeleteNetwork",
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.EndpointOperInfo",
    "NetworkDriver.Join",
    "NetworkDriver.Leave",
    "NetworkDriver.DeleteEndpoint",
    "NetworkDriver.ProgramExternalConnectivity",
    "NetworkDriver.RevokeExternalConnectivity",
    "IpamDriver.ReleasePool",
    "IpamDriver.RequestAddress",
    "IpamDriver.ReleaseAddress",
];

proptest! {
    #![proptest_config(crate::config(64))]

    #[test]
    fn fields_of_the_wrong_kind_are_refused(
        call in any_call(),
        which in any::<Index>(),
        other in other_kind(),
    ) {
        block_on(async {
            let at_call = AtCall::new(call).await;
            let mut request = with_recorded_ports(&at_call);
            let places = typed(&at_call.call.method, &request);
            let (place, accepted) = &places[which.index(places.len())];
            let value = other.value(accepted, at(&mut request.clone(), place));
            *at(&mut request, place) = value.clone();
            wrong_kind_refused(&at_call, &request, place, &value).await
        })?;
    }

    #[test]
    fn ids_with_traversal_or_shell_metacharacters_are_refused(
        call in call_of(&CALLS_WITH_IDS),
        which in any::<Index>(),
        id in bad_id(),
    ) {
        block_on(async {
            let at_call = AtCall::new(call).await;
            let mut request = at_call.valid.clone();
            let fields: Vec<&str> = ["NetworkID", "EndpointID", "PoolID"]
                .into_iter()
                .filter(|f| request.get(*f).is_some())
                .collect();
            let field = fields[which.index(fields.len())];
            request[field] = json!(id);
            let message = at_call.refused_json(&request).await?;
            let expected = match field {
                "NetworkID" => "invalid network id ",
                "EndpointID" => "invalid endpoint id ",
                _ => "invalid pool id ",
            };
            prop_assert!(message.starts_with(expected), "{field} = {id:?}: {message}");
            Ok(())
        })?;
    }

    #[test]
    fn addresses_with_zone_ids_or_outside_their_pool_are_refused(
        call in call_of(&["IpamDriver.RequestAddress", "IpamDriver.ReleaseAddress", "NetworkDriver.CreateEndpoint"]),
        v6 in any::<bool>(),
        bad in bad_address(),
    ) {
        block_on(async {
            let at_call = AtCall::new(call).await;
            let mut request = at_call.valid.clone();
            if at_call.call.method == "NetworkDriver.CreateEndpoint" {
                let field = if v6 { "AddressIPv6" } else { "Address" };
                let given = request["Interface"][field].as_str().unwrap_or_default().to_owned();
                let Ok(given) = given.parse::<IpNet>() else { return Ok(()) };
                let subnet = pool_holding(&at_call, given.addr());
                request["Interface"][field] = json!(bad.cidr(subnet));
            } else {
                let subnet = pool_subnet(&at_call, request["PoolID"].as_str().expect("PoolID"));
                request["Address"] = json!(bad.bare(subnet));
            }
            let message = at_call.refused_json(&request).await?;
            prop_assert!(
                ["invalid", "outside", "not in any pool", "is the network address"].iter().any(|m| message.contains(m)),
                "{bad:?}: {message}"
            );
            Ok(())
        })?;
    }

    #[test]
    fn hostile_pools_and_ranges_are_refused(
        call in call_of(&["IpamDriver.RequestPool", "NetworkDriver.CreateNetwork"]),
        bad in bad_address(),
        range in any::<bool>(),
    ) {
        block_on(async {
            let at_call = AtCall::new(call).await;
            let mut request = at_call.valid.clone();
            if at_call.call.method == "IpamDriver.RequestPool" {
                let v6 = request["V6"].as_bool().unwrap_or(false);
                let own: IpNet = request["Pool"].as_str().and_then(|p| p.parse().ok()).unwrap_or_else(|| {
                    (if v6 { "fd77::/64" } else { "10.77.0.0/24" }).parse().expect("subnet")
                });
                match (range, &bad) {
                    // Any subnet is a fine --subnet: only --ip-range can be outside.
                    (false, BadAddress::Outside { .. }) => {
                        let too_small = if v6 { 127 } else { 31 };
                        request["Pool"] = json!(format!("{}/{too_small}", own.network()));
                    }
                    (false, _) => request["Pool"] = json!(bad.cidr(own)),
                    (true, _) => request["SubPool"] = json!(bad.cidr(own)),
                }
            } else {
                let has_v6 = request["IPv6Data"].as_array().is_some_and(|d| !d.is_empty());
                let family = if has_v6 && range { "IPv6Data" } else { "IPv4Data" };
                let Some(pool) = request[family][0]["Pool"].as_str().and_then(|p| p.parse::<IpNet>().ok()) else {
                    return Ok(());
                };
                request[family][0]["Pool"] = json!(bad.cidr(pool));
            }
            let message = at_call.refused_json(&request).await?;
            let reasons =
                ["invalid", "overlaps", "needs a --subnet", "not inside", "not handed out", "too small", "IPv"];
            prop_assert!(reasons.iter().any(|m| message.contains(m)), "{bad:?}: {message}");
            Ok(())
        })?;
    }

    #[test]
    fn malformed_macs_are_refused(call in call_of(&["NetworkDriver.CreateEndpoint"]), mac in bad_mac()) {
        block_on(async {
            let at_call = AtCall::new(call).await;
            let mut request = at_call.valid.clone();
            request["Interface"]["MacAddress"] = json!(mac);
            let message = at_call.refused_json(&request).await?;
            prop_assert!(message.starts_with("invalid MAC address"), "{mac:?}: {message}");
            Ok(())
        })?;
    }

    #[test]
    fn hostile_network_options_are_refused(
        call in call_of(&["NetworkDriver.CreateNetwork"]),
        case in 0usize..5,
        name in bad_text(),
        value in bad_text(),
        number in prop_oneof![Just(0i64), Just(1279), Just(65536), Just(-1), Just(i64::MAX)],
        interface_option in select(&INTERFACE_OPTIONS[..]),
    ) {
        block_on(async {
            let at_call = AtCall::new(call).await;
            let mut request = at_call.valid.clone();
            let options = &mut request["Options"];
            let generic = &mut options[plugin_spec::OPTION_GENERIC];
            let expected = match case {
                0 => { generic[name.as_str()] = json!(value); "unknown driver option" }
                // Interface names where cilium-rs takes none.
                1 => { generic[interface_option] = json!(format!("eth0{value}")); "unknown driver option" }
                2 => {
                    let mtu = if value.len() % 2 == 0 { json!(format!("{value}1400")) } else { json!(number) };
                    generic[cilium_rs::network::MTU_OPTIONS[value.len() % 2]] = mtu;
                    "invalid -o "
                }
                3 => {
                    generic[cilium_rs::network::MASQUERADE_OPTION] = json!(value);
                    "invalid -o cilium-rs.masquerade"
                }
                _ => {
                    let flags = [plugin_spec::OPTION_ENABLE_IPV6, plugin_spec::OPTION_INTERNAL];
                    let flag = flags[value.len() % 2];
                    options[flag] = json!(value);
                    "must be a boolean"
                }
            };
            let message = at_call.refused_json(&request).await?;
            prop_assert!(message.contains(expected), "{}: {message}", request["Options"]);
            Ok(())
        })?;
    }

    #[test]
    fn ipam_options_are_refused(call in call_of(&["IpamDriver.RequestPool"]), name in bad_text(), value in bad_text()) {
        block_on(async {
            let at_call = AtCall::new(call).await;
            let mut request = at_call.valid.clone();
            request["Options"] = json!({ name.clone(): value });
            let message = at_call.refused_json(&request).await?;
            prop_assert!(message.starts_with("unknown --ipam-opt"), "{message}");
            Ok(())
        })?;
    }

    #[test]
    fn hostile_port_maps_are_refused(
        call in call_of(&["NetworkDriver.CreateEndpoint", "NetworkDriver.Join"]),
        field in select(&["Proto", "Port", "HostPort", "HostPortEnd", "HostIP", "entry", "map"][..]),
        pick in any::<Index>(),
        text in bad_text(),
    ) {
        block_on(async {
            let at_call = AtCall::new(call).await;
            let mut request = at_call.valid.clone();
            let mut entry = json!({"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 0, "HostPortEnd": 0});
            let choose = |values: Vec<Value>| values[pick.index(values.len())].clone();
            let ports = match field {
                "Proto" => {
                    entry["Proto"] = choose(vec![json!(0), json!(1), json!(132), json!(256), json!(-6), json!(6.5)]);
                    json!([entry])
                }
                "Port" => {
                    entry["Port"] = choose(vec![json!(0), json!(65536), json!(-1), json!(80.5), json!("80")]);
                    json!([entry])
                }
                "HostPort" => {
                    entry["HostPort"] = choose(vec![json!(65536), json!(-1), json!("8080"), json!(1e10)]);
                    json!([entry])
                }
                "HostPortEnd" => { entry["HostPortEnd"] = json!(8080); json!([entry]) }
                "HostIP" => {
                    let zoned = [json!("fe80::1%eth0"), json!("127.0.0.1%25lo"), json!("10.0.0.1/8")];
                    entry["HostIP"] = choose([&zoned[..], &[json!(text), json!(7)]].concat());
                    json!([entry])
                }
                "entry" => choose(vec![json!([text]), json!([[6, 80]]), json!([null, 5])]),
                _ => choose(vec![json!(text), json!({"Proto": 6}), json!(80), json!(true)]),
            };
            request["Options"][plugin_spec::OPTION_PORT_MAP] = ports;
            let message = at_call.refused_json(&request).await?;
            prop_assert!(message.starts_with("port map"), "{}: {message}", request["Options"]);
            Ok(())
        })?;
    }

    #[test]
    fn what_the_daemon_does_not_read_changes_nothing(
        call in any_call(),
        where_to in any::<Index>(),
        names in proptest::collection::vec("[A-Za-z][A-Za-z0-9._-]{0,20}|\\PC{1,12}", 1..4),
        value in crate::hostile::any_json(),
        as_option in any::<bool>(),
    ) {
        block_on(async {
            let plain = AtCall::new(call).await;
            let method = plain.call.method.clone();
            let mut request = plain.valid.clone();
            match (as_option, options_read(&method)) {
                (true, Some(read)) => {
                    // IPAM options are strings (`map[string]string`).
                    let value = match method.starts_with("IpamDriver.") {
                        true => json!(value.to_string()),
                        false => value.clone(),
                    };
                    for name in names.iter().filter(|n| !read.contains(&n.as_str())) {
                        request["Options"][name.as_str()] = value.clone();
                    }
                }
                _ => {
                    let places = structs(&request);
                    let place = &places[where_to.index(places.len())];
                    for name in names.iter().filter(|n| !DECLARED.contains(&n.as_str())) {
                        at(&mut request, place)[name.as_str()] = value.clone();
                    }
                }
            }
            if method == "NetworkDriver.DiscoverNew" || method == "NetworkDriver.DiscoverDelete" {
                request["DiscoveryData"] = value.clone();
            }
            let twin = AtCall::new(call).await;
            let valid = format!("{}\n", plain.valid);
            let (status, expected) = send_raw(&plain.h.plugin, "POST", &plain.uri(), valid).await;
            let (twin_status, answer) = send_raw(&twin.h.plugin, "POST", &twin.uri(), format!("{request}\n")).await;
            let text = |bytes: &axum::body::Bytes| String::from_utf8_lossy(bytes).into_owned();
            prop_assert_eq!((twin_status, text(&answer)), (status, text(&expected)), "{}", request);
            let (a, b) = (Snapshot::of(&plain.h).await.timeless(), Snapshot::of(&twin.h).await.timeless());
            prop_assert!(a == b, "{request} did not do what the plain request did:\n{}", a.differences(&b));
            Ok(())
        })?;
    }
}

/// Every place of every method's first recorded request whose kind is fixed, with a value of
/// each other kind (the most treacherous one of each).
#[test]
fn every_typed_field_of_every_method_refuses_every_other_kind() {
    block_on(async {
        for call in first_call_of_each_method() {
            let first = AtCall::new(call).await;
            let (request, method) = (with_recorded_ports(&first), first.call.method.clone());
            for (place, accepted) in typed(&method, &request) {
                for kind in other_kinds(&accepted) {
                    let at_call = AtCall::new(call).await;
                    let mut request = request.clone();
                    let value = values_of_kind(kind, at(&mut request.clone(), &place), "x")[0].clone();
                    *at(&mut request, &place) = value.clone();
                    wrong_kind_refused(&at_call, &request, &place, &value).await.unwrap_or_else(|e| panic!("{e}"));
                }
            }
        }
    });
}

/// Text the driver keeps or ignores without reading it as anything: the sandbox key (an opaque
/// name of the container's namespace), the gateways and aux addresses dockerd reports (the
/// routed gateway is the driver's own), the option values of RequestAddress.
fn free_text(method: &str, place: &[Step]) -> bool {
    let place = shown(place);
    place == "SandboxKey"
        || (place.starts_with("IPv") && (place.ends_with("/Gateway") || place.contains("/AuxAddresses/")))
        || (method == "IpamDriver.RequestAddress" && place.starts_with("Options/"))
}

/// A 10 000-character string in every typed place of every method's first request: refused
/// with a message that does not echo it whole, or taken as the free text it is.
#[test]
fn long_strings_are_never_echoed_whole() {
    block_on(async {
        let long = json!("a".repeat(10_000));
        for call in first_call_of_each_method() {
            let first = AtCall::new(call).await;
            let (request, method) = (with_recorded_ports(&first), first.call.method.clone());
            for (place, _) in typed(&method, &request) {
                let at_call = AtCall::new(call).await;
                let mut request = request.clone();
                *at(&mut request, &place) = long.clone();
                let (status, answer) =
                    send_raw(&at_call.h.plugin, "POST", &at_call.uri(), format!("{request}\n")).await;
                if status.is_success() && free_text(&method, &place) {
                    continue;
                }
                crate::refusal(status, &answer, "Err", &format!("{method} {}", shown(&place)))
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
    });
}

async fn wrong_kind_refused(
    at_call: &AtCall,
    request: &Value,
    place: &[Step],
    value: &Value,
) -> Result<(), TestCaseError> {
    let message = at_call.refused_json(request).await?;
    prop_assert!(
        ["invalid type", "must be", "expected"].iter().any(|m| message.contains(m)),
        "{} = {value}: {message}",
        shown(place)
    );
    Ok(())
}

/// The valid request with the ports dockerd recorded put back (host ports left to the kernel,
/// in case the request were accepted after all).
fn with_recorded_ports(at_call: &AtCall) -> Value {
    let mut request = at_call.valid.clone();
    let recorded = at_call.call.request().and_then(|r| r["Options"].get(plugin_spec::OPTION_PORT_MAP).cloned());
    if let (Some(Value::Array(mut entries)), Some(options)) =
        (recorded, request.get_mut("Options").and_then(Value::as_object_mut))
    {
        for entry in entries.iter_mut().filter_map(Value::as_object_mut) {
            entry.insert("HostPort".into(), json!(0));
            entry.insert("HostPortEnd".into(), json!(0));
        }
        options.insert(plugin_spec::OPTION_PORT_MAP.to_owned(), Value::Array(entries));
    }
    request
}

/// The pool records of the store.
fn pools(at_call: &AtCall) -> Vec<Map<String, Value>> {
    let records = at_call.h.store.load().expect("load");
    records
        .get(&Table::Pools)
        .into_iter()
        .flatten()
        .map(|(_, bytes)| serde_json::from_slice(bytes).expect("pool record"))
        .collect()
}

fn subnet_of(pool: &Map<String, Value>) -> IpNet {
    pool["subnet"].as_str().expect("subnet").parse().expect("subnet")
}

fn pool_subnet(at_call: &AtCall, id: &str) -> IpNet {
    let pools = pools(at_call);
    subnet_of(pools.iter().find(|p| p["id"] == id).unwrap_or_else(|| panic!("no pool {id}")))
}

fn pool_holding(at_call: &AtCall, addr: IpAddr) -> IpNet {
    pools(at_call).iter().map(subnet_of).find(|s| s.contains(&addr)).unwrap_or_else(|| panic!("no pool holds {addr}"))
}
