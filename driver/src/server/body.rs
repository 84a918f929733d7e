//! Reading request bodies with a size limit, whatever the Content-Type (dockerd sends none).

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use http_body_util::{BodyExt, Limited};

/// Largest request body accepted on the plugin socket (dockerd's calls are small).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Largest request body accepted on the API socket (a policy file can be big).
pub const MAX_API_BODY_BYTES: usize = 64 << 20;

#[derive(Debug)]
pub struct BodyError {
    pub status: StatusCode,
    pub message: String,
}

pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(BodyError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("request body over {limit} bytes"),
        }),
        Err(e) => Err(BodyError { status: StatusCode::BAD_REQUEST, message: format!("read request body: {e}") }),
    }
}
