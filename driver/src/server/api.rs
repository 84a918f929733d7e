//! The API socket the CLI talks to: endpoints, networks, identities, status and the kernel
//! maps as JSON, the policy operations (import, get, delete, validate, wait, trace) and the
//! conntrack flush.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::body::{read_body, MAX_API_BODY_BYTES};
use crate::driver::{DeleteWhich, Deleted, Driver, DriverError, Imported, PolicyEngineError};
use crate::dumps::{BpfEndpointView, CtList, Flushed, IpcacheView, NatView, PolicyEntryView};
use crate::labels::{Labels, SOURCE_ANY, SOURCE_UNSPEC};
use crate::policy::trace::parse_dport;
use crate::policy::{parse_rules, RuleId, Trace};
use crate::views::{EndpointDetail, EndpointView, IdentityView, NetworkView, StatusView};

pub const ENDPOINTS: &str = "/v1/endpoints";
/// GET: one endpoint in full, by container name, endpoint id or unique id prefix.
pub const ENDPOINT: &str = "/v1/endpoints/{query}";
pub const NETWORKS: &str = "/v1/networks";
pub const STATUS: &str = "/v1/status";
pub const IDENTITIES: &str = "/v1/identities";
/// GET: the live rules; PUT (body: a policy file): import.
pub const POLICY: &str = "/v1/policy";
pub const POLICY_DELETE: &str = "/v1/policy/delete";
pub const POLICY_VALIDATE: &str = "/v1/policy/validate";
pub const POLICY_WAIT: &str = "/v1/policy/wait";
pub const POLICY_TRACE: &str = "/v1/policy/trace";
/// GET: the kernel maps in readable form.
pub const BPF_ENDPOINTS: &str = "/v1/bpf/endpoints";
pub const BPF_IPCACHE: &str = "/v1/bpf/ipcache";
pub const BPF_POLICY: &str = "/v1/bpf/policy";
pub const BPF_CT: &str = "/v1/bpf/ct";
pub const BPF_NAT: &str = "/v1/bpf/nat";
/// POST: removes every conntrack entry.
pub const BPF_CT_FLUSH: &str = "/v1/bpf/ct/flush";

/// The path of one endpoint (`query` percent-encoded).
pub fn endpoint_path(query: &str) -> String {
    format!("{ENDPOINTS}/{}", crate::http_unix::percent_encode(query))
}

/// Error body of the API socket.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// The live policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyRules {
    pub revision: u64,
    pub rules: Vec<PolicyRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyRule {
    pub id: RuleId,
    /// The rule in Cilium's JSON.
    pub rule: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteRequest {
    #[serde(default)]
    pub all: bool,
    /// Rules carrying every one of these labels (`key=value`, `source:key=value`).
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Validated {
    pub rules: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitRequest {
    pub revision: u64,
    #[serde(default = "default_wait_ms")]
    pub timeout_ms: u64,
}

fn default_wait_ms() -> u64 {
    30_000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitResponse {
    pub revision: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceRequest {
    /// Labels of the source, e.g. `id=app2` or `reserved:host`.
    pub src: String,
    pub dst: String,
    /// `PORT/PROTO`, e.g. `80/tcp`.
    pub dport: String,
}

/// A failed API call: the status and message the CLI shows.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, Json(ApiError { error: self.message })).into_response()
    }
}

pub(super) fn failure(status: StatusCode, message: String) -> Failure {
    Failure { status, message }
}

/// The status the CLI gets for a failure.
fn policy_status(e: &PolicyEngineError) -> StatusCode {
    match e {
        PolicyEngineError::Invalid(_) | PolicyEngineError::TooManyEntries { .. } => StatusCode::BAD_REQUEST,
        PolicyEngineError::NoMatch(_) => StatusCode::NOT_FOUND,
        PolicyEngineError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        PolicyEngineError::Corrupt { .. } | PolicyEngineError::Store(_) | PolicyEngineError::Datapath(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl From<PolicyEngineError> for Failure {
    fn from(e: PolicyEngineError) -> Self {
        let status = policy_status(&e);
        if status.is_server_error() {
            tracing::warn!(error = %e, "policy request failed");
        }
        failure(status, e.to_string())
    }
}

impl From<DriverError> for Failure {
    fn from(e: DriverError) -> Self {
        let status = match &e {
            DriverError::UnknownEndpoint(_) | DriverError::UnknownNetwork(_) => StatusCode::NOT_FOUND,
            DriverError::Conflict(_) => StatusCode::CONFLICT,
            DriverError::BadRequest(_) | DriverError::BadId(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %e, "API request failed");
        }
        failure(status, e.to_string())
    }
}

type Reply<T> = Result<Json<T>, Failure>;

pub fn router(driver: Arc<Driver>) -> Router {
    Router::new()
        .route(ENDPOINTS, get(endpoints))
        .route(ENDPOINT, get(endpoint))
        .route(NETWORKS, get(networks))
        .route(STATUS, get(status))
        .route(IDENTITIES, get(identities))
        .route(POLICY, get(policy_get).put(policy_import))
        .route(POLICY_DELETE, post(policy_delete))
        .route(POLICY_VALIDATE, post(policy_validate))
        .route(POLICY_WAIT, post(policy_wait))
        .route(POLICY_TRACE, post(policy_trace))
        .route(super::monitor::MONITOR, get(super::monitor::monitor))
        .route(super::monitor::FLOWS, get(super::monitor::flows))
        .route(BPF_ENDPOINTS, get(bpf_endpoints))
        .route(BPF_IPCACHE, get(bpf_ipcache))
        .route(BPF_POLICY, get(bpf_policy))
        .route(BPF_CT, get(bpf_ct))
        .route(BPF_CT_FLUSH, post(bpf_ct_flush))
        .route(BPF_NAT, get(bpf_nat))
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            let path = crate::input::quoted(uri.path());
            failure(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not served on {path}: see the Allow header"))
        })
        .fallback(|uri: Uri| async move {
            failure(StatusCode::NOT_FOUND, format!("no such API path {}", crate::input::quoted(uri.path())))
        })
        .with_state(driver)
}

async fn endpoints(State(driver): State<Arc<Driver>>) -> Reply<Vec<EndpointView>> {
    Ok(Json(driver.endpoints().await?))
}

async fn endpoint(
    State(driver): State<Arc<Driver>>,
    query: Result<Path<String>, PathRejection>,
) -> Reply<EndpointDetail> {
    // axum's own refusal (percent-encoded bytes that are no UTF-8) is plain text.
    let Path(query) =
        query.map_err(|e| failure(StatusCode::BAD_REQUEST, format!("endpoint name: {}", e.body_text())))?;
    Ok(Json(driver.endpoint_detail(&query).await?))
}

async fn bpf_endpoints(State(driver): State<Arc<Driver>>) -> Reply<Vec<BpfEndpointView>> {
    Ok(Json(driver.bpf_endpoints().await?))
}

async fn bpf_ipcache(State(driver): State<Arc<Driver>>) -> Reply<Vec<IpcacheView>> {
    Ok(Json(driver.bpf_ipcache().await?))
}

async fn bpf_policy(State(driver): State<Arc<Driver>>) -> Reply<Vec<PolicyEntryView>> {
    Ok(Json(driver.bpf_policy().await?))
}

async fn bpf_ct(State(driver): State<Arc<Driver>>) -> Reply<CtList> {
    Ok(Json(driver.bpf_ct().await?))
}

async fn bpf_ct_flush(State(driver): State<Arc<Driver>>) -> Reply<Flushed> {
    Ok(Json(Flushed { removed: driver.flush_ct().await? }))
}

async fn bpf_nat(State(driver): State<Arc<Driver>>) -> Reply<Vec<NatView>> {
    Ok(Json(driver.bpf_nat().await?))
}

async fn networks(State(driver): State<Arc<Driver>>) -> Json<Vec<NetworkView>> {
    Json(driver.networks().await)
}

async fn status(State(driver): State<Arc<Driver>>) -> Json<StatusView> {
    Json(driver.status().await)
}

async fn identities(State(driver): State<Arc<Driver>>) -> Json<Vec<IdentityView>> {
    Json(driver.identity_views().await)
}

async fn body_bytes(body: Body) -> Result<axum::body::Bytes, Failure> {
    read_body(body, MAX_API_BODY_BYTES).await.map_err(|e| failure(e.status, e.message))
}

async fn json_body<T: DeserializeOwned>(body: Body) -> Result<T, Failure> {
    let bytes = body_bytes(body).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        failure(
            StatusCode::BAD_REQUEST,
            format!("malformed request body: {}", plugin_spec::shorten_quoted(&e.to_string())),
        )
    })
}

async fn policy_get(State(driver): State<Arc<Driver>>) -> Json<PolicyRules> {
    let (revision, rules) = driver.policy().rules().await;
    let rules = rules.into_iter().map(|(id, rule)| PolicyRule { id, rule: rule.to_json() }).collect();
    Json(PolicyRules { revision, rules })
}

async fn policy_import(State(driver): State<Arc<Driver>>, body: Body) -> Reply<Imported> {
    let rules = parse_rules(&body_bytes(body).await?).map_err(PolicyEngineError::from);
    give_back_memory();
    let imported = driver.policy().import(rules?).await;
    give_back_memory();
    Ok(Json(imported?))
}

async fn policy_validate(body: Body) -> Reply<Validated> {
    let rules = parse_rules(&body_bytes(body).await?).map_err(PolicyEngineError::from);
    give_back_memory();
    Ok(Json(Validated { rules: rules?.len() }))
}

/// Parsing a big policy file takes tens of megabytes for a moment; glibc keeps freed memory
/// in its arenas unless told otherwise, and the daemon would stay that big.
fn give_back_memory() {
    // SAFETY: malloc_trim only returns free heap memory to the system; it has no
    // preconditions and does not touch live allocations.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn labels(text: &str, default_source: &str, what: &str) -> Result<Labels, Failure> {
    Labels::parse_list(text, default_source).map_err(|e| failure(StatusCode::BAD_REQUEST, format!("{what}: {e}")))
}

async fn policy_delete(State(driver): State<Arc<Driver>>, body: Body) -> Reply<Deleted> {
    let request: DeleteRequest = json_body(body).await?;
    let which = match (request.all, request.labels.is_empty()) {
        (true, true) => DeleteWhich::All,
        (false, false) => DeleteWhich::Labels(labels(&request.labels.join(","), SOURCE_UNSPEC, "labels")?),
        (true, false) => return Err(failure(StatusCode::BAD_REQUEST, "give either --all or labels, not both".into())),
        (false, true) => return Err(failure(StatusCode::BAD_REQUEST, "give --all or the labels of the rules".into())),
    };
    Ok(Json(driver.policy().delete(which).await?))
}

async fn policy_wait(State(driver): State<Arc<Driver>>, body: Body) -> Reply<WaitResponse> {
    let request: WaitRequest = json_body(body).await?;
    let timeout = Duration::from_millis(request.timeout_ms.min(3_600_000));
    let revision = driver.policy().wait(request.revision, timeout).await?;
    Ok(Json(WaitResponse { revision }))
}

async fn policy_trace(State(driver): State<Arc<Driver>>, body: Body) -> Reply<Trace> {
    let request: TraceRequest = json_body(body).await?;
    let src = container_labels(labels(&request.src, SOURCE_ANY, "--src")?);
    let dst = container_labels(labels(&request.dst, SOURCE_ANY, "--dst")?);
    let (proto, port) =
        parse_dport(&request.dport).map_err(|e| failure(StatusCode::BAD_REQUEST, format!("--dport: {e}")))?;
    Ok(Json(driver.policy().trace(&src, &dst, proto, port).await))
}

/// Trace labels without a source are container labels (as endpoints carry them).
fn container_labels(labels: Labels) -> Labels {
    labels
        .iter()
        .map(|l| {
            let mut l = l.clone();
            if l.is_any_source() {
                l.source = crate::labels::SOURCE_CONTAINER.to_owned();
            }
            l
        })
        .collect()
}
