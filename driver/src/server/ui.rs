//! The optional web page (`--ui-address`): the service map, one self-contained HTML page (no
//! external assets) that draws `api/map` as SVG and refreshes it every two seconds.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use super::ServerError;
use crate::driver::Driver;

const PAGE: &str = include_str!("ui/index.html");

/// The bound page address.
#[derive(Debug)]
pub struct UiListener {
    pub listener: TcpListener,
    pub address: SocketAddr,
}

impl UiListener {
    pub async fn bind(address: SocketAddr) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(address).await.map_err(|source| ServerError::BindTcp { address, source })?;
        let address = listener.local_addr().map_err(|source| ServerError::BindTcp { address, source })?;
        Ok(UiListener { listener, address })
    }
}

pub fn router(driver: Arc<Driver>) -> Router {
    Router::new().route("/", get(page)).route("/api/map", get(map)).with_state(driver)
}

async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE)).into_response()
}

async fn map(State(driver): State<Arc<Driver>>) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(driver.service_map())).into_response()
}

#[cfg(test)]
mod tests {
    use super::PAGE;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        let outside: Vec<&str> = PAGE
            .split(['"', '\'', '(', ')', ' '])
            .filter(|w| w.contains("://") && *w != "http://www.w3.org/2000/svg")
            .collect();
        assert!(outside.is_empty(), "external references: {outside:?}");
        assert!(PAGE.contains("fetch(\"api/map\""), "it reads the map from its own daemon");
    }
}
