//! The optional metrics address (`--metrics-address`): `GET /metrics` answers with the
//! Prometheus text format, built from a snapshot the driver takes when it is scraped (no logic
//! here: take the snapshot, encode it).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tracing::warn;

use super::ServerError;
use crate::driver::Driver;
use crate::metrics::CONTENT_TYPE;

pub const PATH: &str = "/metrics";

/// The bound metrics address and what to show there.
#[derive(Debug)]
pub struct MetricsListener {
    pub listener: TcpListener,
    pub address: SocketAddr,
    /// Show the per-endpoint series (`--metrics-per-endpoint`).
    pub per_endpoint: bool,
}

impl MetricsListener {
    pub async fn bind(address: SocketAddr, per_endpoint: bool) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(address).await.map_err(|source| ServerError::BindTcp { address, source })?;
        let address = listener.local_addr().map_err(|source| ServerError::BindTcp { address, source })?;
        Ok(MetricsListener { listener, address, per_endpoint })
    }
}

#[derive(Clone)]
struct Scraper {
    driver: Arc<Driver>,
    per_endpoint: bool,
    /// One scrape reads the kernel at a time; others wait for their turn (no other path takes
    /// this lock).
    turn: Arc<tokio::sync::Mutex<()>>,
}

pub fn router(driver: Arc<Driver>, per_endpoint: bool) -> Router {
    let scraper = Scraper { driver, per_endpoint, turn: Arc::new(tokio::sync::Mutex::new(())) };
    Router::new().route(PATH, get(scrape)).with_state(scraper)
}

async fn scrape(State(scraper): State<Scraper>) -> Response {
    let snapshot = {
        let _turn = scraper.turn.lock().await;
        scraper.driver.metrics_snapshot().await
    };
    let text = snapshot
        .map_err(|e| e.to_string())
        .and_then(|s| scraper.driver.metrics().encode(&s, scraper.per_endpoint).map_err(|e| e.to_string()));
    match text {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            warn!(%error, "metrics scrape failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response()
        }
    }
}
