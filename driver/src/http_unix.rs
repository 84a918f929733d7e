//! A small HTTP/1.1 client over unix sockets, for the CLI (API socket) and Docker's socket.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect {path}: {source}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("{method} {uri} on {path}: {source}")]
    Transport { method: Method, uri: String, path: PathBuf, source: hyper::Error },
    #[error("{method} {uri}: {status}: {body}")]
    Status { method: Method, uri: String, status: StatusCode, body: String },
    #[error("{method} {uri}: decode reply: {source}")]
    Decode { method: Method, uri: String, source: serde_json::Error },
    #[error("build request {uri}: {source}")]
    Build { uri: String, source: hyper::http::Error },
    #[error("GET {uri} on {path}: no answer within {after:?}")]
    Timeout { uri: String, path: PathBuf, after: std::time::Duration },
}

impl HttpError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Sends one request and returns the whole reply body of a 2xx answer.
pub async fn request(socket: &Path, method: Method, uri: &str, body: Option<Vec<u8>>) -> Result<Bytes, HttpError> {
    let stream =
        UnixStream::connect(socket).await.map_err(|source| HttpError::Connect { path: socket.to_owned(), source })?;
    let transport =
        |source| HttpError::Transport { method: method.clone(), uri: uri.to_owned(), path: socket.to_owned(), source };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(transport)?;
    tokio::spawn(connection);
    let builder = Request::builder().method(method.clone()).uri(uri).header("host", "localhost");
    let builder = if body.is_some() { builder.header("content-type", "application/json") } else { builder };
    let request = builder
        .body(Full::new(body.map(Bytes::from).unwrap_or_default()))
        .map_err(|source| HttpError::Build { uri: uri.to_owned(), source })?;
    let response = sender.send_request(request).await.map_err(transport)?;
    let status = response.status();
    let bytes = response.into_body().collect().await.map_err(transport)?.to_bytes();
    if !status.is_success() {
        let body = String::from_utf8_lossy(&bytes).chars().take(500).collect();
        return Err(HttpError::Status { method, uri: uri.to_owned(), status, body });
    }
    Ok(bytes)
}

/// Sends a GET and returns the body of a 2xx answer as it arrives (for Docker's event stream).
pub async fn get_streaming(socket: &Path, uri: &str) -> Result<hyper::body::Incoming, HttpError> {
    let stream =
        UnixStream::connect(socket).await.map_err(|source| HttpError::Connect { path: socket.to_owned(), source })?;
    let transport =
        |source| HttpError::Transport { method: Method::GET, uri: uri.to_owned(), path: socket.to_owned(), source };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(transport)?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .map_err(|source| HttpError::Build { uri: uri.to_owned(), source })?;
    let response = sender.send_request(request).await.map_err(transport)?;
    let status = response.status();
    if !status.is_success() {
        let bytes = response.into_body().collect().await.map_err(transport)?.to_bytes();
        let body = String::from_utf8_lossy(&bytes).chars().take(500).collect();
        return Err(HttpError::Status { method: Method::GET, uri: uri.to_owned(), status, body });
    }
    Ok(response.into_body())
}

/// `get_json` that gives up after `after` (a dockerd that stopped answering must not hold up
/// background work forever).
pub async fn get_json_within<T: DeserializeOwned>(
    socket: &Path,
    uri: &str,
    after: std::time::Duration,
) -> Result<T, HttpError> {
    tokio::time::timeout(after, get_json(socket, uri)).await.map_err(|_| HttpError::Timeout {
        uri: uri.to_owned(),
        path: socket.to_owned(),
        after,
    })?
}

pub async fn get_json<T: DeserializeOwned>(socket: &Path, uri: &str) -> Result<T, HttpError> {
    let bytes = request(socket, Method::GET, uri, None).await?;
    serde_json::from_slice(&bytes).map_err(|source| HttpError::Decode {
        method: Method::GET,
        uri: uri.to_owned(),
        source,
    })
}

/// Sends `body` with `method` and decodes the JSON reply.
pub async fn send_json<T: DeserializeOwned>(
    socket: &Path,
    method: Method,
    uri: &str,
    body: Vec<u8>,
) -> Result<T, HttpError> {
    let bytes = request(socket, method.clone(), uri, Some(body)).await?;
    serde_json::from_slice(&bytes).map_err(|source| HttpError::Decode { method, uri: uri.to_owned(), source })
}

/// Percent-encodes a query value or path segment (everything but unreserved characters).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_percent_encoded() {
        assert_eq!(percent_encode(r#"{"id":["ab"]}"#), "%7B%22id%22%3A%5B%22ab%22%5D%7D");
        assert_eq!(percent_encode("a-b_c.d~"), "a-b_c.d~");
        assert_eq!(percent_encode("web/1 x"), "web%2F1%20x");
    }
}
