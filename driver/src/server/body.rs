//! Reading request bodies with a size limit, whatever the Content-Type (dockerd sends none).

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use http_body_util::{BodyExt, Limited};

/// Largest request body accepted on either socket.
pub const MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Debug)]
pub struct BodyError {
    pub status: StatusCode,
    pub message: String,
}

pub async fn read_body(body: Body) -> Result<Bytes, BodyError> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(BodyError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("request body over {MAX_BODY_BYTES} bytes"),
        }),
        Err(e) => Err(BodyError { status: StatusCode::BAD_REQUEST, message: format!("read request body: {e}") }),
    }
}
