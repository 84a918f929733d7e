//! The Docker plugin socket: every NetworkDriver and IpamDriver call decoded from its wire type,
//! converted to domain types, handed to the driver, and encoded back — no logic of its own.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tracing::{debug, field, info, info_span, warn, Instrument};

use plugin_spec as spec;

use crate::driver::{CreateEndpoint, CreateNetwork, Driver, DriverError, PoolData};
use crate::endpoint::{format_mac, parse_mac, CONTAINER_IFNAME_PREFIX};
use crate::ids::{EndpointId, NetworkId};
use crate::input::quoted;
use crate::ipam::{self, parse_addr, parse_cidr, IpamError, PoolId, PoolRequest};
use crate::metrics::Metrics;
use crate::network::parse_options;
use crate::ports::parse_portmap;

use super::body::{read_body, MAX_BODY_BYTES};

type Shared = Arc<Driver>;

/// An error as dockerd receives it: a status (never 404, which means "method missing") and a
/// message sent as `{"Err": …}`.
#[derive(Debug)]
pub struct PluginError {
    pub status: StatusCode,
    pub message: String,
}

impl PluginError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        PluginError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
}

impl From<DriverError> for PluginError {
    fn from(e: DriverError) -> Self {
        PluginError { status: status_of(&e), message: e.to_string() }
    }
}

/// The status dockerd gets for a failure (never 404: dockerd reads 404 as "method missing").
fn status_of(e: &DriverError) -> StatusCode {
    match e {
        DriverError::BadRequest(_)
        | DriverError::BadId(_)
        | DriverError::UnknownNetwork(_)
        | DriverError::UnknownEndpoint(_) => StatusCode::BAD_REQUEST,
        DriverError::Ipam(e) => match e {
            IpamError::SubnetInUse { .. }
            | IpamError::InUse { .. }
            | IpamError::Exhausted { .. }
            | IpamError::NoFreeSubnet { .. }
            | IpamError::NoFreeGateway { .. } => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        },
        DriverError::Conflict(_) => StatusCode::CONFLICT,
        DriverError::Datapath(_)
        | DriverError::State(_)
        | DriverError::Policy(_)
        | DriverError::Kv(_)
        | DriverError::Identity(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<crate::ids::BadId> for PluginError {
    fn from(e: crate::ids::BadId) -> Self {
        PluginError::bad_request(e.to_string())
    }
}

impl IntoResponse for PluginError {
    fn into_response(self) -> Response {
        reply(self.status, &spec::ErrorResponse { err: self.message })
    }
}

fn reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [("content-type", "application/json")], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{{\"Err\":\"encode reply: {e}\"}}")).into_response(),
    }
}

/// Ids a request carries, recorded on the request's span.
trait Ids {
    fn ids(&self) -> (&str, &str) {
        ("", "")
    }
}

macro_rules! ids {
    ($($t:ty => network $($e:ident)?),* $(,)?) => {$(
        impl Ids for $t {
            fn ids(&self) -> (&str, &str) {
                (short(&self.network_id), ids!(@endpoint self $($e)?))
            }
        }
    )*};
    (@endpoint $s:ident endpoint) => { short(&$s.endpoint_id) };
    (@endpoint $s:ident) => { "" };
}

ids!(
    spec::CreateNetworkRequest => network,
    spec::DeleteNetworkRequest => network,
    spec::CreateEndpointRequest => network endpoint,
    spec::EndpointRequest => network endpoint,
    spec::JoinRequest => network endpoint,
    spec::ProgramExternalConnectivityRequest => network endpoint,
);
impl Ids for spec::DiscoveryRequest {}
impl Ids for spec::RequestPoolRequest {}
impl Ids for spec::ReleasePoolRequest {}
impl Ids for spec::RequestAddressRequest {}
impl Ids for spec::ReleaseAddressRequest {}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Decodes the body, runs the call inside the request's span, logs the outcome once, and
/// records its latency (and failure) under `method` in the metrics.
async fn call<Req, Resp, F, Fut>(driver: Shared, method: &'static str, body: Body, handler: F) -> Response
where
    Req: DeserializeOwned + Ids,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp, PluginError>>,
{
    let span = info_span!("plugin", method, network = field::Empty, endpoint = field::Empty);
    async move {
        let started = Instant::now();
        let result = async {
            let mut bytes = read_body(body, MAX_BODY_BYTES)
                .await
                .map_err(|e| PluginError { status: e.status, message: e.message })?;
            let journal = driver.inflight();
            if bytes.iter().all(u8::is_ascii_whitespace) {
                // dockerd's retry of a call the previous daemon read and never answered.
                if let Some(body) = journal.and_then(|j| j.replay(method)) {
                    info!("an empty retry: answering the call the previous daemon left unanswered");
                    bytes = body.into();
                }
            }
            let _recorded = journal.map(|j| j.record(method, &bytes));
            let request: Req = plugin_spec::decode(&bytes).map_err(|e| PluginError::bad_request(e.to_string()))?;
            let (network, endpoint) = request.ids();
            let span = tracing::Span::current();
            if !network.is_empty() {
                span.record("network", network);
            }
            if !endpoint.is_empty() {
                span.record("endpoint", endpoint);
            }
            handler(request).await
        }
        .await;
        let elapsed = started.elapsed();
        driver.metrics().observe_plugin_request(method, elapsed, result.is_err());
        let elapsed_us = elapsed.as_micros() as u64;
        match result {
            Ok(response) => {
                debug!(elapsed_us, "ok");
                reply(StatusCode::OK, &response)
            }
            Err(e) => {
                warn!(elapsed_us, status = e.status.as_u16(), error = %e.message, "failed");
                e.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

/// Calls without a payload: the body (empty, per the protocol) is ignored.
async fn call_empty<Resp: Serialize>(metrics: &Metrics, method: &'static str, response: Resp) -> Response {
    let started = Instant::now();
    let _span = info_span!("plugin", method).entered();
    debug!("ok");
    let reply = reply(StatusCode::OK, &response);
    metrics.observe_plugin_request(method, started.elapsed(), false);
    reply
}

pub fn router(driver: Shared) -> Router {
    Router::new()
        .route(spec::PLUGIN_ACTIVATE, post(activate))
        .route(spec::NETWORK_DRIVER_GET_CAPABILITIES, post(network_capabilities))
        .route(spec::NETWORK_DRIVER_CREATE_NETWORK, post(create_network))
        .route(spec::NETWORK_DRIVER_DELETE_NETWORK, post(delete_network))
        .route(spec::NETWORK_DRIVER_CREATE_ENDPOINT, post(create_endpoint))
        .route(spec::NETWORK_DRIVER_ENDPOINT_OPER_INFO, post(endpoint_oper_info))
        .route(spec::NETWORK_DRIVER_DELETE_ENDPOINT, post(delete_endpoint))
        .route(spec::NETWORK_DRIVER_JOIN, post(join))
        .route(spec::NETWORK_DRIVER_LEAVE, post(leave))
        .route(spec::NETWORK_DRIVER_DISCOVER_NEW, post(discover_new))
        .route(spec::NETWORK_DRIVER_DISCOVER_DELETE, post(discover_delete))
        .route(spec::NETWORK_DRIVER_PROGRAM_EXTERNAL_CONNECTIVITY, post(program_external_connectivity))
        .route(spec::NETWORK_DRIVER_REVOKE_EXTERNAL_CONNECTIVITY, post(revoke_external_connectivity))
        .route(spec::IPAM_DRIVER_GET_CAPABILITIES, post(ipam_capabilities))
        .route(spec::IPAM_DRIVER_GET_DEFAULT_ADDRESS_SPACES, post(address_spaces))
        .route(spec::IPAM_DRIVER_REQUEST_POOL, post(request_pool))
        .route(spec::IPAM_DRIVER_RELEASE_POOL, post(release_pool))
        .route(spec::IPAM_DRIVER_REQUEST_ADDRESS, post(request_address))
        .route(spec::IPAM_DRIVER_RELEASE_ADDRESS, post(release_address))
        .method_not_allowed_fallback(not_post)
        .fallback(unknown_method)
        .with_state(driver)
}

/// dockerd calls every method with POST: another HTTP method gets a JSON error too (axum adds
/// the Allow header).
async fn not_post(method: Method, uri: Uri) -> Response {
    let called = quoted(uri.path().trim_start_matches('/'));
    debug!(%method, called, "plugin method called without POST");
    PluginError { status: StatusCode::METHOD_NOT_ALLOWED, message: format!("{called} takes POST, not {method}") }
        .into_response()
}

async fn unknown_method(uri: Uri) -> Response {
    let path = quoted(uri.path());
    debug!(path, "unknown plugin method");
    PluginError { status: StatusCode::NOT_FOUND, message: format!("cilium-rs does not implement {path}") }
        .into_response()
}

/// A (new) dockerd is talking to us: answer at once, and let the background reconciliation
/// look at its state soon (never from here: dockerd may not serve its API yet).
async fn activate(State(driver): State<Shared>) -> Response {
    driver.request_reconcile();
    call_empty(
        driver.metrics(),
        "Plugin.Activate",
        spec::ActivateResponse { implements: vec!["NetworkDriver".to_owned(), "IpamDriver".to_owned()] },
    )
    .await
}

async fn network_capabilities(State(driver): State<Shared>) -> Response {
    call_empty(
        driver.metrics(),
        "NetworkDriver.GetCapabilities",
        spec::CapabilitiesResponse { scope: "local".to_owned(), connectivity_scope: "local".to_owned() },
    )
    .await
}

async fn ipam_capabilities(State(driver): State<Shared>) -> Response {
    call_empty(
        driver.metrics(),
        "IpamDriver.GetCapabilities",
        spec::IpamCapabilitiesResponse { requires_mac_address: false, requires_request_replay: false },
    )
    .await
}

async fn address_spaces(State(driver): State<Shared>) -> Response {
    call_empty(
        driver.metrics(),
        "IpamDriver.GetDefaultAddressSpaces",
        spec::AddressSpacesResponse {
            local_default_address_space: ipam::LOCAL_ADDRESS_SPACE.to_owned(),
            global_default_address_space: ipam::GLOBAL_ADDRESS_SPACE.to_owned(),
        },
    )
    .await
}

fn network_id(text: &str) -> Result<NetworkId, PluginError> {
    Ok(NetworkId::parse(text)?)
}

fn endpoint_id(text: &str) -> Result<EndpointId, PluginError> {
    Ok(EndpointId::parse(text)?)
}

fn optional_cidr(text: &str, what: &str) -> Result<Option<IpNet>, PluginError> {
    if text.is_empty() {
        Ok(None)
    } else {
        parse_cidr(text, what).map(Some).map_err(PluginError::bad_request)
    }
}

fn pool_data(entries: &[spec::IpamData], family: &str) -> Result<Vec<PoolData>, PluginError> {
    entries
        .iter()
        .map(|d| {
            Ok(PoolData {
                address_space: d.address_space.clone(),
                pool: parse_cidr(&d.pool, &format!("{family} pool")).map_err(PluginError::bad_request)?,
            })
        })
        .collect()
}

async fn create_network(State(driver): State<Shared>, body: Body) -> Response {
    call(driver.clone(), "NetworkDriver.CreateNetwork", body, |r: spec::CreateNetworkRequest| async move {
        let request = CreateNetwork {
            id: network_id(&r.network_id)?,
            options: parse_options(&r.options).map_err(PluginError::bad_request)?,
            ipv4: pool_data(&r.ipv4_data, "IPv4")?,
            ipv6: pool_data(&r.ipv6_data, "IPv6")?,
        };
        driver.create_network(request).await?;
        Ok(spec::EmptyResponse {})
    })
    .await
}

async fn delete_network(State(driver): State<Shared>, body: Body) -> Response {
    call(driver.clone(), "NetworkDriver.DeleteNetwork", body, |r: spec::DeleteNetworkRequest| async move {
        driver.delete_network(&network_id(&r.network_id)?).await?;
        Ok(spec::EmptyResponse {})
    })
    .await
}

async fn create_endpoint(State(driver): State<Shared>, body: Body) -> Response {
    call(driver.clone(), "NetworkDriver.CreateEndpoint", body, |r: spec::CreateEndpointRequest| async move {
        // Ports are published at Join, once per container (dockerd sends the map to every
        // endpoint); a malformed map is refused here already.
        parse_portmap(r.options.get(spec::OPTION_PORT_MAP)).map_err(PluginError::bad_request)?;
        let mac = if r.interface.mac_address.is_empty() {
            None
        } else {
            Some(parse_mac(&r.interface.mac_address).map_err(PluginError::bad_request)?)
        };
        let request = CreateEndpoint {
            network: network_id(&r.network_id)?,
            endpoint: endpoint_id(&r.endpoint_id)?,
            ipv4: optional_cidr(&r.interface.address, "endpoint address")?,
            ipv6: optional_cidr(&r.interface.address_ipv6, "endpoint IPv6 address")?,
            mac,
        };
        let grant = driver.create_endpoint(request).await?;
        // Only fields dockerd left empty may be filled in, or it rolls the endpoint back.
        let interface = spec::EndpointInterface {
            address: String::new(),
            address_ipv6: grant.ipv6.map(|a| a.to_string()).unwrap_or_default(),
            mac_address: grant.mac.map(|m| format_mac(&m)).unwrap_or_default(),
        };
        let empty = interface.address_ipv6.is_empty() && interface.mac_address.is_empty();
        Ok(spec::CreateEndpointResponse { interface: (!empty).then_some(interface) })
    })
    .await
}

async fn endpoint_oper_info(State(driver): State<Shared>, body: Body) -> Response {
    call(driver.clone(), "NetworkDriver.EndpointOperInfo", body, |r: spec::EndpointRequest| async move {
        let info = driver.endpoint_info(&network_id(&r.network_id)?, &endpoint_id(&r.endpoint_id)?).await?;
        let value: Map<String, Value> = info.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        Ok(spec::EndpointOperInfoResponse { value })
    })
    .await
}

async fn join(State(driver): State<Shared>, body: Body) -> Response {
    call(driver.clone(), "NetworkDriver.Join", body, |r: spec::JoinRequest| async move {
        let ports = parse_portmap(r.options.get(spec::OPTION_PORT_MAP)).map_err(PluginError::bad_request)?;
        let plan =
            driver.join(&network_id(&r.network_id)?, &endpoint_id(&r.endpoint_id)?, &r.sandbox_key, &ports).await?;
        Ok(spec::JoinResponse {
            interface_name: Some(spec::InterfaceName {
                src_name: plan.src_name,
                dst_prefix: CONTAINER_IFNAME_PREFIX.to_owned(),
            }),
            gateway: plan.gateway_ipv4.map(|g| g.to_string()).unwrap_or_default(),
            gateway_ipv6: plan.gateway_ipv6.map(|g| g.to_string()).unwrap_or_default(),
            static_routes: plan
                .connected_routes
                .iter()
                .map(|dst| spec::StaticRoute {
                    destination: dst.to_string(),
                    route_type: spec::ROUTE_TYPE_CONNECTED,
                    next_hop: String::new(),
                })
                .chain(plan.subnet_routes.iter().map(|(dst, via)| spec::StaticRoute {
                    destination: dst.to_string(),
                    route_type: spec::ROUTE_TYPE_NEXTHOP,
                    next_hop: via.to_string(),
                }))
                .collect(),
            disable_gateway_service: true,
        })
    })
    .await
}

async fn leave(State(driver): State<Shared>, body: Body) -> Response {
    call(driver.clone(), "NetworkDriver.Leave", body, |r: spec::EndpointRequest| async move {
        driver.leave(&network_id(&r.network_id)?, &endpoint_id(&r.endpoint_id)?).await?;
        Ok(spec::EmptyResponse {})
    })
    .await
}

async fn delete_endpoint(State(driver): State<Shared>, body: Body) -> Response {
    call(driver.clone(), "NetworkDriver.DeleteEndpoint", body, |r: spec::EndpointRequest| async move {
        driver.delete_endpoint(&network_id(&r.network_id)?, &endpoint_id(&r.endpoint_id)?).await?;
        Ok(spec::EmptyResponse {})
    })
    .await
}

/// Swarm node discovery: nothing to do for a local driver.
async fn discover_new(State(driver): State<Shared>, body: Body) -> Response {
    call(driver.clone(), "NetworkDriver.DiscoverNew", body, |_: spec::DiscoveryRequest| async {
        Ok(spec::EmptyResponse {})
    })
    .await
}

async fn discover_delete(State(driver): State<Shared>, body: Body) -> Response {
    call(driver.clone(), "NetworkDriver.DiscoverDelete", body, |_: spec::DiscoveryRequest| async {
        Ok(spec::EmptyResponse {})
    })
    .await
}

/// Routing is set up at Join (no NAT, no port publishing): nothing more to program here.
async fn program_external_connectivity(State(driver): State<Shared>, body: Body) -> Response {
    call(
        driver.clone(),
        "NetworkDriver.ProgramExternalConnectivity",
        body,
        |r: spec::ProgramExternalConnectivityRequest| async move {
            network_id(&r.network_id)?;
            endpoint_id(&r.endpoint_id)?;
            Ok(spec::EmptyResponse {})
        },
    )
    .await
}

async fn revoke_external_connectivity(State(driver): State<Shared>, body: Body) -> Response {
    call(driver.clone(), "NetworkDriver.RevokeExternalConnectivity", body, |r: spec::EndpointRequest| async move {
        network_id(&r.network_id)?;
        endpoint_id(&r.endpoint_id)?;
        Ok(spec::EmptyResponse {})
    })
    .await
}

fn pool_id(text: &str) -> Result<PoolId, PluginError> {
    PoolId::parse(text).map_err(PluginError::bad_request)
}

async fn request_pool(State(driver): State<Shared>, body: Body) -> Response {
    call(driver.clone(), "IpamDriver.RequestPool", body, |r: spec::RequestPoolRequest| async move {
        let request = PoolRequest {
            v6: r.v6,
            subnet: optional_cidr(&r.pool, "--subnet")?,
            range: optional_cidr(&r.sub_pool, "--ip-range")?,
            internal: false,
        };
        let grant = driver.request_pool(request, &r.address_space, &r.options).await?;
        Ok(spec::RequestPoolResponse {
            pool_id: grant.id.0,
            pool: grant.subnet.to_string(),
            data: BTreeMap::from([(spec::GATEWAY_DATA_KEY.to_owned(), grant.gateway.to_string())]),
        })
    })
    .await
}

async fn release_pool(State(driver): State<Shared>, body: Body) -> Response {
    call(driver.clone(), "IpamDriver.ReleasePool", body, |r: spec::ReleasePoolRequest| async move {
        driver.release_pool(&pool_id(&r.pool_id)?).await?;
        Ok(spec::EmptyResponse {})
    })
    .await
}

async fn request_address(State(driver): State<Shared>, body: Body) -> Response {
    call(driver.clone(), "IpamDriver.RequestAddress", body, |r: spec::RequestAddressRequest| async move {
        let preferred = if r.address.is_empty() {
            None
        } else {
            Some(parse_addr(&r.address, "address").map_err(PluginError::bad_request)?)
        };
        let gateway = r.options.get(spec::REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(spec::GATEWAY_DATA_KEY);
        let address = driver.request_address(&pool_id(&r.pool_id)?, preferred, gateway).await?;
        Ok(spec::RequestAddressResponse { address: address.to_string(), data: BTreeMap::new() })
    })
    .await
}

async fn release_address(State(driver): State<Shared>, body: Body) -> Response {
    call(driver.clone(), "IpamDriver.ReleaseAddress", body, |r: spec::ReleaseAddressRequest| async move {
        let address = parse_addr(&r.address, "address").map_err(PluginError::bad_request)?;
        driver.release_address(&pool_id(&r.pool_id)?, address).await?;
        Ok(spec::EmptyResponse {})
    })
    .await
}
