//! Random sequences of valid plugin calls, in any order, out of order and repeated, made from
//! dockerd's recorded requests: never a 5xx, a 404 or a panic, the answers a simple model
//! expects where the protocol fixes them, and after every call: no address twice, every address
//! in a pool, released addresses free, nothing of a deleted endpoint left in the datapath; after
//! every sequence, a restarted daemon sees what the running one saw.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use axum::http::StatusCode;
use ipnet::IpNet;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

use cilium_rs::endpoint::host_ifname;
use cilium_rs::ids::EndpointId;
use cilium_rs::state::State;
use cilium_rs::store::Store;

use crate::routers::fixtures::{scenarios, Call, Replay};
use crate::routers::{harness, harness_with, send_raw, Harness};
use crate::{block_on, message};

/// Subnets a RequestPool may ask for (overlapping ones included); `None`: any.
const V4_SUBNETS: [Option<&str>; 4] = [None, Some("10.90.0.0/24"), Some("10.90.1.0/24"), Some("10.90.0.0/16")];
const V6_SUBNETS: [Option<&str>; 3] = [None, Some("fd90::/64"), Some("fd90::/48")];

#[derive(Debug, Clone)]
enum Op {
    RequestPool {
        v6: bool,
        subnet: usize,
    },
    ReleasePool {
        pool: Index,
    },
    RequestAddress {
        pool: Index,
        preferred: Option<u8>,
    },
    ReleaseAddress {
        pool: Index,
        address: Index,
    },
    CreateNetwork {
        network: usize,
        v4: Index,
        v6: Option<Index>,
    },
    DeleteNetwork {
        network: usize,
    },
    /// With addresses of the network's pools when `own` (any granted ones otherwise).
    CreateEndpoint {
        network: usize,
        endpoint: usize,
        own: bool,
        v4: Option<Index>,
        v6: Option<Index>,
    },
    /// On the endpoint's own network when `own`, on the other one otherwise.
    Join {
        endpoint: usize,
        own: bool,
    },
    EndpointOperInfo {
        endpoint: usize,
        own: bool,
    },
    Leave {
        endpoint: usize,
        own: bool,
    },
    DeleteEndpoint {
        endpoint: usize,
        own: bool,
    },
    /// The call before, once more (dockerd repeats calls whose connection broke).
    Again,
    /// `docker network create [--ipv6]`: RequestPool (v4, v6), CreateNetwork.
    NetworkUp {
        network: usize,
        v6: bool,
    },
    /// `docker network rm`: ReleasePool of each pool, DeleteNetwork.
    NetworkDown {
        network: usize,
    },
    /// `docker run`: RequestAddress (v4, v6), CreateEndpoint, Join, EndpointOperInfo.
    Run {
        network: usize,
        endpoint: usize,
        v6: bool,
    },
    /// `docker stop`: Leave, DeleteEndpoint, ReleaseAddress of each address.
    Stop {
        endpoint: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let net = || 0usize..2;
    let ep = || 0usize..4;
    let own = || proptest::bool::weighted(0.8);
    prop_oneof![
        2 => (any::<bool>(), 0usize..4).prop_map(|(v6, subnet)| Op::RequestPool { v6, subnet }),
        1 => any::<Index>().prop_map(|pool| Op::ReleasePool { pool }),
        2 => (any::<Index>(), proptest::option::weighted(0.3, any::<u8>()))
            .prop_map(|(pool, preferred)| Op::RequestAddress { pool, preferred }),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(pool, address)| Op::ReleaseAddress { pool, address }),
        2 => (net(), any::<Index>(), proptest::option::of(any::<Index>()))
            .prop_map(|(network, v4, v6)| Op::CreateNetwork { network, v4, v6 }),
        1 => net().prop_map(|network| Op::DeleteNetwork { network }),
        2 => (net(), ep(), own(), proptest::option::weighted(0.8, any::<Index>()), proptest::option::of(any::<Index>()))
            .prop_map(|(network, endpoint, own, v4, v6)| Op::CreateEndpoint { network, endpoint, own, v4, v6 }),
        2 => (ep(), own()).prop_map(|(endpoint, own)| Op::Join { endpoint, own }),
        1 => (ep(), own()).prop_map(|(endpoint, own)| Op::EndpointOperInfo { endpoint, own }),
        2 => (ep(), own()).prop_map(|(endpoint, own)| Op::Leave { endpoint, own }),
        2 => (ep(), own()).prop_map(|(endpoint, own)| Op::DeleteEndpoint { endpoint, own }),
        1 => Just(Op::Again),
        2 => (net(), any::<bool>()).prop_map(|(network, v6)| Op::NetworkUp { network, v6 }),
        1 => net().prop_map(|network| Op::NetworkDown { network }),
        3 => (net(), ep(), any::<bool>()).prop_map(|(network, endpoint, v6)| Op::Run { network, endpoint, v6 }),
        2 => ep().prop_map(|endpoint| Op::Stop { endpoint }),
    ]
}

/// What the sequence handed out so far, to refer to in later calls.
struct World {
    h: Harness,
    networks: Vec<String>,
    endpoints: Vec<String>,
    /// Every pool RequestPool granted: its id and subnet (released ones stay: calls about
    /// them are valid too).
    pools: Vec<(String, IpNet)>,
    /// Every address RequestAddress granted, with its pool.
    addresses: Vec<(String, IpNet)>,
    /// The last call made, for [`Op::Again`].
    last: Option<(&'static str, Value)>,
}

/// The first request dockerd made of `method` (less what only the recorder took), the
/// template of every such call.
fn template(method: &str) -> Value {
    let call: &Call = scenarios().iter().flat_map(|s| &s.calls).find(|c| c.method == method).expect("recorded");
    Replay::default().translate(call).expect("payload")
}

/// Network and endpoint ids dockerd made (endpoints whose interface names differ).
fn recorded_ids(field: &str, count: usize) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for call in scenarios().iter().flat_map(|s| &s.calls) {
        if let Some(id) = call.request().and_then(|r| r[field].as_str().map(str::to_owned)) {
            if !ids.iter().any(|known| known[..11] == id[..11]) {
                ids.push(id);
            }
        }
    }
    assert!(ids.len() >= count, "the recordings hold {} {field}s", ids.len());
    ids.truncate(count);
    ids
}

fn pick<T: Clone>(items: &[T], at: &Index) -> Option<T> {
    (!items.is_empty()).then(|| items[at.index(items.len())].clone())
}

impl World {
    async fn new() -> World {
        World {
            h: harness().await,
            networks: recorded_ids("NetworkID", 2),
            endpoints: recorded_ids("EndpointID", 4),
            pools: Vec::new(),
            addresses: Vec::new(),
            last: None,
        }
    }

    /// The network an endpoint is on (its own, or the other one), as the store has it.
    fn network_of(&self, endpoint: usize, own: bool) -> String {
        let id = EndpointId::parse(&self.endpoints[endpoint]).expect("id");
        let on = state(&self.h).endpoints.get(&id).map(|e| e.network.as_str().to_owned());
        let on = on.unwrap_or_else(|| self.networks[endpoint % 2].clone());
        if own {
            on
        } else {
            self.networks.iter().find(|n| **n != on).expect("two networks").clone()
        }
    }

    /// Granted addresses of `v6`'s family, of the network's pools when `own`.
    fn addresses_for(&self, network: &str, own: bool, v6: bool) -> Vec<IpNet> {
        let state = state(&self.h);
        let pools: Vec<String> = state
            .networks
            .values()
            .filter(|n| n.id.as_str() == network)
            .flat_map(|n| n.pools().map(|p| p.0.clone()).collect::<Vec<_>>())
            .collect();
        self.addresses
            .iter()
            .filter(|(pool, a)| a.addr().is_ipv6() == v6 && (!own || pools.contains(pool)))
            .map(|(_, a)| *a)
            .collect()
    }

    fn endpoint_call(&self, method: &'static str, endpoint: usize, own: bool) -> (&'static str, Value) {
        let mut r = template(method);
        r["NetworkID"] = json!(self.network_of(endpoint, own));
        r["EndpointID"] = json!(self.endpoints[endpoint]);
        if method == "NetworkDriver.Join" {
            r["Options"][plugin_spec::OPTION_PORT_MAP] = json!([]);
        }
        (method, r)
    }

    fn create_endpoint(&self, network: &str, endpoint: usize, v4: Option<IpNet>, v6: Option<IpNet>) -> Value {
        let mut r = template("NetworkDriver.CreateEndpoint");
        r["NetworkID"] = json!(network);
        r["EndpointID"] = json!(self.endpoints[endpoint]);
        let cidr = |a: Option<IpNet>| a.map(|a| IpNet::from(a.addr()).to_string()).unwrap_or_default();
        r["Interface"] = json!({"Address": cidr(v4), "AddressIPv6": cidr(v6), "MacAddress": ""});
        r
    }

    fn create_network(&self, network: usize, v4: IpNet, v6: Option<IpNet>) -> Value {
        let mut r = template("NetworkDriver.CreateNetwork");
        r["NetworkID"] = json!(self.networks[network]);
        r["IPv4Data"] = ipam_data(v4);
        r["IPv6Data"] = v6.map(ipam_data).unwrap_or(json!([]));
        r["Options"][plugin_spec::OPTION_ENABLE_IPV6] = json!(v6.is_some());
        r
    }

    fn request_pool(v6: bool, subnet: Option<&str>) -> Value {
        let mut r = template("IpamDriver.RequestPool");
        r["Pool"] = json!(subnet.unwrap_or(""));
        r["SubPool"] = json!("");
        r["V6"] = json!(v6);
        r["AddressSpace"] = json!("CiliumRsLocal");
        r
    }

    fn request_address(pool: &str, preferred: Option<IpAddr>) -> Value {
        let mut r = template("IpamDriver.RequestAddress");
        r["PoolID"] = json!(pool);
        r["Options"] = Value::Null;
        r["Address"] = json!(preferred.map(|a| a.to_string()).unwrap_or_default());
        r
    }

    /// Carries out `op`: one call, or the calls of a docker command, each checked.
    async fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let of_family = |pools: &[(String, IpNet)], v6: bool| -> Vec<(String, IpNet)> {
            pools.iter().filter(|(_, s)| s.addr().is_ipv6() == v6).cloned().collect()
        };
        match op {
            Op::RequestPool { v6, subnet } => {
                let subnets: &[Option<&str>] = if *v6 { &V6_SUBNETS } else { &V4_SUBNETS };
                self.call("IpamDriver.RequestPool", Self::request_pool(*v6, subnets[subnet % subnets.len()])).await?;
            }
            Op::ReleasePool { pool } => {
                if let Some((id, _)) = pick(&self.pools, pool) {
                    self.call("IpamDriver.ReleasePool", json!({"PoolID": id})).await?;
                }
            }
            Op::RequestAddress { pool, preferred } => {
                if let Some((id, subnet)) = pick(&self.pools, pool) {
                    let preferred = preferred.map(|n| nth(subnet, n));
                    self.call("IpamDriver.RequestAddress", Self::request_address(&id, preferred)).await?;
                }
            }
            Op::ReleaseAddress { pool, address } => {
                if let Some((id, subnet)) = pick(&self.pools, pool) {
                    let same_family = |a: &IpNet| a.addr().is_ipv6() == subnet.addr().is_ipv6();
                    let addresses: Vec<IpNet> = self.addresses.iter().map(|(_, a)| *a).filter(same_family).collect();
                    if let Some(addr) = pick(&addresses, address) {
                        let release = json!({"PoolID": id, "Address": addr.addr().to_string()});
                        self.call("IpamDriver.ReleaseAddress", release).await?;
                    }
                }
            }
            Op::CreateNetwork { network, v4, v6 } => {
                let v4 = pick(&of_family(&self.pools, false), v4).map(|(_, s)| s);
                let v6 = v6.as_ref().and_then(|at| pick(&of_family(&self.pools, true), at)).map(|(_, s)| s);
                if let Some(v4) = v4 {
                    self.call("NetworkDriver.CreateNetwork", self.create_network(*network, v4, v6)).await?;
                }
            }
            Op::DeleteNetwork { network } => {
                self.call("NetworkDriver.DeleteNetwork", json!({"NetworkID": self.networks[*network]})).await?;
            }
            Op::CreateEndpoint { network, endpoint, own, v4, v6 } => {
                let net = self.networks[*network].clone();
                let v4 = v4.as_ref().and_then(|at| pick(&self.addresses_for(&net, *own, false), at));
                let v6 = v6.as_ref().and_then(|at| pick(&self.addresses_for(&net, *own, true), at));
                self.call("NetworkDriver.CreateEndpoint", self.create_endpoint(&net, *endpoint, v4, v6)).await?;
            }
            Op::Join { endpoint, own } => {
                let (method, r) = self.endpoint_call("NetworkDriver.Join", *endpoint, *own);
                self.call(method, r).await?;
            }
            Op::EndpointOperInfo { endpoint, own } => {
                let (method, r) = self.endpoint_call("NetworkDriver.EndpointOperInfo", *endpoint, *own);
                self.call(method, r).await?;
            }
            Op::Leave { endpoint, own } => {
                let (method, r) = self.endpoint_call("NetworkDriver.Leave", *endpoint, *own);
                self.call(method, r).await?;
            }
            Op::DeleteEndpoint { endpoint, own } => {
                let (method, r) = self.endpoint_call("NetworkDriver.DeleteEndpoint", *endpoint, *own);
                self.call(method, r).await?;
            }
            Op::Again => {
                if let Some((method, r)) = self.last.clone() {
                    self.call(method, r).await?;
                }
            }
            Op::NetworkUp { network, v6 } => {
                let Some(v4) = self.call("IpamDriver.RequestPool", Self::request_pool(false, None)).await? else {
                    return Ok(());
                };
                let v6 = match v6 {
                    true => self.call("IpamDriver.RequestPool", Self::request_pool(true, None)).await?,
                    false => None,
                };
                let subnet = |answer: &Value| answer["Pool"].as_str().and_then(|p| p.parse().ok()).expect("a pool");
                let request = self.create_network(*network, subnet(&v4), v6.as_ref().map(subnet));
                self.call("NetworkDriver.CreateNetwork", request).await?;
            }
            Op::NetworkDown { network } => {
                let id = self.networks[*network].clone();
                let pools: Vec<String> = state(&self.h)
                    .networks
                    .values()
                    .filter(|n| n.id.as_str() == id)
                    .flat_map(|n| n.ipv4_pools.iter().chain(&n.ipv6_pools).map(|p| p.0.clone()).collect::<Vec<_>>())
                    .collect();
                for pool in pools {
                    self.call("IpamDriver.ReleasePool", json!({"PoolID": pool})).await?;
                }
                self.call("NetworkDriver.DeleteNetwork", json!({"NetworkID": id})).await?;
            }
            Op::Run { network, endpoint, v6 } => {
                let id = self.networks[*network].clone();
                let Some(net) = state(&self.h).networks.values().find(|n| n.id.as_str() == id).cloned() else {
                    return Ok(());
                };
                let mut granted = [None, None];
                for (slot, pools) in granted.iter_mut().zip([&net.ipv4_pools, &net.ipv6_pools]) {
                    if let Some(pool) = pools.first().filter(|_| *v6 || pools == &net.ipv4_pools) {
                        let answer =
                            self.call("IpamDriver.RequestAddress", Self::request_address(&pool.0, None)).await?;
                        *slot = answer.and_then(|a| a["Address"].as_str().and_then(|a| a.parse::<IpNet>().ok()));
                    }
                }
                let create = self.create_endpoint(&id, *endpoint, granted[0], granted[1]);
                if self.call("NetworkDriver.CreateEndpoint", create).await?.is_some() {
                    let (method, r) = self.endpoint_call("NetworkDriver.Join", *endpoint, true);
                    self.call(method, r).await?;
                    let (method, r) = self.endpoint_call("NetworkDriver.EndpointOperInfo", *endpoint, true);
                    self.call(method, r).await?;
                }
            }
            Op::Stop { endpoint } => {
                let id = EndpointId::parse(&self.endpoints[*endpoint]).expect("id");
                let Some(ep) = state(&self.h).endpoints.get(&id).cloned() else { return Ok(()) };
                for method in ["NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint"] {
                    let (method, r) = self.endpoint_call(method, *endpoint, true);
                    self.call(method, r).await?;
                }
                let given = ep
                    .ipv4
                    .map(IpAddr::V4)
                    .into_iter()
                    .chain(ep.ipv6.filter(|_| ep.ipv6_pool.is_none()).map(IpAddr::V6));
                for addr in given {
                    let pool = self.addresses.iter().find(|(_, a)| a.addr() == addr).map(|(p, _)| p.clone());
                    if let Some(pool) = pool {
                        self.call("IpamDriver.ReleaseAddress", json!({"PoolID": pool, "Address": addr.to_string()}))
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes one call and checks its answer and every invariant afterwards; returns the answer
    /// when the call succeeded.
    async fn call(&mut self, method: &'static str, request: Value) -> Result<Option<Value>, TestCaseError> {
        let before = state(&self.h);
        let (status, answer) = send_raw(&self.h.plugin, "POST", &format!("/{method}"), format!("{request}\n")).await;
        let what = format!("{method} {request}");
        if std::env::var("SEQ_DEBUG").is_ok() {
            eprintln!("SEQ {method} {status}");
        }
        prop_assert!(
            [StatusCode::OK, StatusCode::BAD_REQUEST, StatusCode::CONFLICT].contains(&status),
            "{what}: answered {status} {}",
            String::from_utf8_lossy(&answer)
        );
        let value: Value = serde_json::from_slice(&answer).map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
        if status != StatusCode::OK {
            message(&answer, "Err", &what)?;
        }
        let after = state(&self.h);
        if let Some(expected) = expected_status(&before, method, &request) {
            prop_assert_eq!(status, expected, "{}: {}", what, value);
        }
        if status == StatusCode::OK {
            self.learn(method, &request, &value, &before, &after)?;
        }
        invariants(&self.h, &after)?;
        self.last = Some((method, request));
        Ok((status == StatusCode::OK).then_some(value))
    }
    /// Records what a successful call handed out, and checks what it did.
    fn learn(
        &mut self,
        method: &str,
        request: &Value,
        answer: &Value,
        before: &State,
        after: &State,
    ) -> Result<(), TestCaseError> {
        match method {
            "IpamDriver.RequestPool" => {
                let subnet: IpNet = answer["Pool"].as_str().and_then(|p| p.parse().ok()).expect("a pool");
                self.pools.push((answer["PoolID"].as_str().expect("PoolID").to_owned(), subnet));
            }
            "IpamDriver.RequestAddress" => {
                let pool = request["PoolID"].as_str().expect("PoolID");
                let address: IpNet = answer["Address"].as_str().and_then(|a| a.parse().ok()).expect("an address");
                let held = before.ipam.pools.values().any(|p| p.allocations.contains_key(&address.addr()));
                prop_assert!(!held, "{pool} handed out {address}, which was taken already");
                let user = before.endpoints.values().find(|e| e.addresses().contains(&address.addr()));
                prop_assert!(
                    user.is_none(),
                    "{pool} handed out {address}, which endpoint {:?} holds",
                    user.map(|e| &e.id)
                );
                self.addresses.push((pool.to_owned(), address));
            }
            "IpamDriver.ReleaseAddress" => {
                let addr: IpAddr = request["Address"].as_str().and_then(|a| a.parse().ok()).expect("address");
                let pool = after.ipam.pools.values().find(|p| p.id.0 == request["PoolID"]);
                let still = pool.is_some_and(|p| p.allocations.contains_key(&addr) && p.gateway != addr);
                prop_assert!(!still, "{addr} was released but is still allocated");
            }
            "NetworkDriver.Join" => {
                let name = &answer["InterfaceName"];
                let src = name["SrcName"].as_str().unwrap_or_default();
                prop_assert!(
                    src.len() <= 15 && src.starts_with("tmp") && src[3..].bytes().all(|b| b.is_ascii_hexdigit()),
                    "Join answered the interface name {src:?}"
                );
                prop_assert_eq!(&name["DstPrefix"], "eth");
            }
            "NetworkDriver.DeleteEndpoint" => {
                let id = EndpointId::parse(request["EndpointID"].as_str().expect("id")).expect("id");
                if before.endpoints.get(&id).is_some_and(|e| e.network.as_str() != request["NetworkID"]) {
                    // Another network's endpoint of that id is not this call's to remove.
                    return Ok(());
                }
                let ifname = host_ifname(&id);
                let k = self.h.kernel.kernel();
                let number = before.endpoints.get(&id).map(|e| e.number);
                prop_assert!(
                    !k.links.contains_key(&ifname)
                        && !k.attached.contains(&ifname)
                        && !k.installed.contains_key(&ifname)
                        && number.is_none_or(|n| !k.counters.contains_key(&n)),
                    "DeleteEndpoint left {ifname} in the datapath: {k:?}"
                );
            }
            _ => {}
        }
        Ok(())
    }
}

/// CreateNetwork's `IPv4Data`/`IPv6Data` for a pool of `subnet`.
fn ipam_data(subnet: IpNet) -> Value {
    json!([{"AddressSpace": "CiliumRsLocal", "Pool": subnet.to_string()}])
}

/// The n-th address of `subnet` (wrapping).
fn nth(subnet: IpNet, n: u8) -> IpAddr {
    let hosts: Vec<IpAddr> = subnet.hosts().take(256).collect();
    hosts[n as usize % hosts.len()]
}

fn state(h: &Harness) -> State {
    State::decode(&h.store.load().expect("load")).expect("the store decodes")
}

/// The answer the protocol fixes for a call, given the state before it; `None` where the
/// daemon's own rules decide (claims of addresses, pools already taken, …).
fn expected_status(before: &State, method: &str, request: &Value) -> Option<StatusCode> {
    let endpoint = || {
        let id = EndpointId::parse(request["EndpointID"].as_str()?).ok()?;
        before.endpoints.get(&id).filter(|e| e.network.as_str() == request["NetworkID"])
    };
    let pool = || before.ipam.pools.values().find(|p| p.id.0 == request["PoolID"]);
    match method {
        // A pool goes while no endpoint holds an address of it.
        "IpamDriver.ReleasePool" => Some(match pool() {
            Some(p) if before.endpoints.values().any(|e| e.addresses().iter().any(|a| p.subnet.contains(a))) => {
                StatusCode::CONFLICT
            }
            _ => StatusCode::OK,
        }),
        // Deletions and Leave are idempotent: dockerd repeats them.
        "NetworkDriver.DeleteNetwork" | "NetworkDriver.Leave" => Some(StatusCode::OK),
        "NetworkDriver.DeleteEndpoint" => Some(StatusCode::OK),
        "IpamDriver.ReleaseAddress" => {
            let addr: IpAddr = request["Address"].as_str()?.parse().ok()?;
            if before.endpoints.values().any(|e| e.addresses().contains(&addr)) {
                Some(StatusCode::CONFLICT)
            } else {
                match pool() {
                    Some(p) if p.gateway != addr && !p.subnet.contains(&addr) => Some(StatusCode::BAD_REQUEST),
                    _ => Some(StatusCode::OK),
                }
            }
        }
        "IpamDriver.RequestAddress" => {
            let Some(pool) = pool() else { return Some(StatusCode::BAD_REQUEST) };
            match request["Address"].as_str()?.parse::<IpAddr>() {
                Err(_) => Some(StatusCode::OK),
                Ok(addr) if pool.allocations.contains_key(&addr) => Some(StatusCode::CONFLICT),
                Ok(_) => None,
            }
        }
        "NetworkDriver.Join" | "NetworkDriver.EndpointOperInfo" => {
            Some(if endpoint().is_some() { StatusCode::OK } else { StatusCode::BAD_REQUEST })
        }
        _ => None,
    }
}

/// What must hold after every call, read from the store and the fake kernel.
fn invariants(h: &Harness, state: &State) -> Result<(), TestCaseError> {
    let mut seen: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for ep in state.endpoints.values() {
        for addr in ep.addresses() {
            if let Some(other) = seen.insert(addr, ep.id.as_str()) {
                prop_assert!(false, "{addr} belongs to endpoints {other} and {}", ep.id);
            }
            let allocated =
                state.ipam.pools.values().any(|p| p.subnet.contains(&addr) && p.allocations.contains_key(&addr));
            prop_assert!(allocated, "endpoint {}'s {addr} is in no pool's allocations", ep.id);
        }
    }
    for pool in state.ipam.pools.values() {
        for addr in pool.allocations.keys() {
            prop_assert!(pool.subnet.contains(addr), "{} holds {addr}, outside its subnet", pool.id);
        }
    }
    let k = h.kernel.kernel();
    let ours: BTreeSet<String> = state.endpoints.values().map(|e| e.host_ifname()).collect();
    let numbers: BTreeSet<u32> = state.endpoints.values().map(|e| e.number).collect();
    for name in k.links.keys().chain(&k.attached).chain(k.installed.keys()) {
        prop_assert!(ours.contains(name), "{name} is in the datapath but belongs to no endpoint: {k:?}");
    }
    for number in k.counters.keys() {
        prop_assert!(numbers.contains(number), "counters of endpoint number {number}, which no endpoint has");
    }
    for ep in state.endpoints.values().filter(|e| e.joined.is_some()) {
        let name = ep.host_ifname();
        prop_assert!(
            k.links.contains_key(&name) && k.attached.contains(&name) && k.installed.contains_key(&name),
            "joined endpoint {} is not (fully) in the datapath",
            ep.id
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::config(48))]

    #[test]
    fn random_sequences_of_valid_calls_keep_addresses_and_the_datapath_consistent(
        ops in proptest::collection::vec(op(), 1..48),
    ) {
        block_on(async {
            let mut world = World::new().await;
            for op in &ops {
                world.run(op).await?;
            }
            // What the daemon remembers is what it served: a restart sees the same.
            let networks = world.h.driver.networks().await;
            let endpoints = world.h.driver.endpoints().await.expect("view");
            let restarted = harness_with(world.h.store.clone(), world.h.kernel.clone()).await;
            prop_assert_eq!(restarted.driver.networks().await, networks);
            prop_assert_eq!(restarted.driver.endpoints().await.expect("view"), endpoints);
            Ok(())
        })?;
    }
}

/// The sequence that found it: a pool released while an endpoint held an address of it gave
/// its subnet to the next network, and the same IPv6 address to a second endpoint.
#[test]
fn a_pool_an_endpoint_uses_is_not_released_to_the_next_network() {
    block_on(async {
        let mut world = World::new().await;
        world.run(&Op::NetworkUp { network: 1, v6: true }).await.expect("network up");
        let endpoint = Op::CreateEndpoint { network: 1, endpoint: 0, own: true, v4: None, v6: None };
        world.run(&endpoint).await.expect("endpoint");
        let (v6_pool, _) = world.pools.iter().find(|(_, s)| s.addr().is_ipv6()).cloned().expect("the v6 pool");
        world.call("IpamDriver.ReleasePool", json!({"PoolID": v6_pool})).await.expect("refused, consistent");
        world.run(&Op::NetworkUp { network: 0, v6: false }).await.expect("another network");
        world.run(&Op::Run { network: 0, endpoint: 1, v6: false }).await.expect("a container on it");
        assert_eq!(world.h.driver.endpoints().await.expect("view").len(), 2);
    });
}

/// Every recorded scenario, replayed as dockerd made its calls, answers 200 throughout and ends
/// with no network, pool or endpoint left, in the store or in the datapath.
#[test]
fn every_recorded_scenario_replays_and_leaves_nothing_behind() {
    block_on(async {
        for scenario in scenarios() {
            let h = harness().await;
            crate::routers::fixtures::replay(&h, scenario, scenario.calls.len()).await;
            let state = state(&h);
            assert!(
                state.networks.is_empty() && state.ipam.pools.is_empty() && state.endpoints.is_empty(),
                "{}: left {state:?}",
                scenario.name
            );
            let k = h.kernel.kernel();
            assert!(k.links.is_empty() && k.attached.is_empty() && k.installed.is_empty(), "{}: {k:?}", scenario.name);
        }
    });
}
