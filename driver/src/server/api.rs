//! The API socket the CLI talks to: endpoints, networks and status as JSON.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::driver::Driver;

pub const ENDPOINTS: &str = "/v1/endpoints";
pub const NETWORKS: &str = "/v1/networks";
pub const STATUS: &str = "/v1/status";

/// Error body of the API socket.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ApiError { error: message })).into_response()
}

pub fn router(driver: Arc<Driver>) -> Router {
    Router::new()
        .route(ENDPOINTS, get(endpoints))
        .route(NETWORKS, get(networks))
        .route(STATUS, get(status))
        .fallback(|uri: Uri| async move {
            error(StatusCode::NOT_FOUND, format!("no such API path {}", crate::input::quoted(uri.path())))
        })
        .with_state(driver)
}

async fn endpoints(State(driver): State<Arc<Driver>>) -> Response {
    match driver.endpoints().await {
        Ok(list) => Json(list).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "list endpoints");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

async fn networks(State(driver): State<Arc<Driver>>) -> Response {
    Json(driver.networks().await).into_response()
}

async fn status(State(driver): State<Arc<Driver>>) -> Response {
    Json(driver.status().await).into_response()
}
