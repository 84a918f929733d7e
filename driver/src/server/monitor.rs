//! The monitor stream of the API socket: newline-delimited JSON, one line per event that
//! passes the filter of the query, until the client goes or the daemon stops. Empty lines
//! every few seconds let a vanished client be noticed (and its trace end).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;

use super::api::failure;
use crate::driver::{Driver, DriverError, TraceGuard};
use crate::monitor::event::{Kind, MonitorEvent};
use crate::monitor::filter::Filter;
use crate::monitor::flows::Flow;

/// GET, query `types=drop,verdict,trace&endpoint=NAME&related_to=NAME`: the stream.
pub const MONITOR: &str = "/v1/monitor";
/// GET, query `endpoint=NAME&related_to=NAME`: the recent flows.
pub const FLOWS: &str = "/v1/flows";

const HEARTBEAT: Duration = Duration::from_secs(5);

/// One subscriber's stream.
struct Subscription {
    lines: Receiver<Arc<MonitorEvent>>,
    filter: Filter,
    heartbeat: tokio::time::Interval,
    closed: BoxFuture<'static, ()>,
    /// Keeps the endpoint traced while the stream lives.
    _trace: Option<TraceGuard>,
}

impl Subscription {
    /// The next chunk to send: the lines waiting now (one write for a burst, not one per
    /// line); `None` when the stream ends.
    async fn next(&mut self) -> Option<Bytes> {
        let mut chunk = Vec::new();
        loop {
            tokio::select! {
                line = self.lines.recv() => match line {
                    Ok(line) => self.add(&mut chunk, &line),
                    Err(RecvError::Lagged(missed)) => self.add_lost(&mut chunk, missed),
                    Err(RecvError::Closed) => return None,
                },
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(b"\n")),
                _ = &mut self.closed => return None,
            }
            while chunk.len() < CHUNK_BYTES {
                match self.lines.try_recv() {
                    Ok(line) => self.add(&mut chunk, &line),
                    Err(TryRecvError::Lagged(missed)) => self.add_lost(&mut chunk, missed),
                    Err(_) => break,
                }
            }
            if !chunk.is_empty() {
                return Some(Bytes::from(chunk));
            }
        }
    }

    fn add(&self, chunk: &mut Vec<u8>, line: &MonitorEvent) {
        if self.filter.matches(line) {
            ndjson(chunk, line);
        }
    }

    fn add_lost(&self, chunk: &mut Vec<u8>, missed: u64) {
        ndjson(chunk, &MonitorEvent::tally(Kind::Lost, missed, SystemTime::now()));
    }
}

/// Lines gathered into one chunk at most (about this many bytes).
const CHUNK_BYTES: usize = 64 * 1024;

fn ndjson(chunk: &mut Vec<u8>, line: &MonitorEvent) {
    if serde_json::to_writer(&mut *chunk, line).is_ok() {
        chunk.push(b'\n');
    }
}

fn refused(e: DriverError) -> Response {
    let status = match e {
        DriverError::UnknownEndpoint(_) => StatusCode::NOT_FOUND,
        DriverError::BadRequest(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    failure(status, e.to_string()).into_response()
}

pub async fn monitor(State(driver): State<Arc<Driver>>, uri: Uri) -> Response {
    let filter = match Filter::from_query(uri.query().unwrap_or("")) {
        Ok(filter) => filter,
        Err(e) => return failure(StatusCode::BAD_REQUEST, e).into_response(),
    };
    // Subscribe first: nothing that happens once the trace is on is missed.
    let lines = driver.monitor().subscribe();
    let trace = match (&filter.endpoint, filter.kinds.contains(&Kind::Trace)) {
        (Some(who), true) => match driver.trace(who).await {
            Ok(guard) => Some(guard),
            Err(e) => return refused(e),
        },
        (Some(who), false) => match driver.find_endpoint(who) {
            Ok(_) => None,
            Err(e) => return refused(e),
        },
        (None, _) => None,
    };
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.reset();
    let subscription =
        Subscription { lines, filter, heartbeat, closed: Box::pin(driver.monitor().closed()), _trace: trace };
    let stream = futures::stream::unfold(subscription, |mut s| async move {
        let chunk = s.next().await?;
        Some((Ok::<Bytes, Infallible>(chunk), s))
    });
    match Response::builder().header(header::CONTENT_TYPE, "application/x-ndjson").body(Body::from_stream(stream)) {
        Ok(response) => response,
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The recent flows the query's filter selects (`endpoint`: either end, as `related_to`).
pub async fn flows(State(driver): State<Arc<Driver>>, uri: Uri) -> Response {
    let filter = match Filter::from_query(uri.query().unwrap_or("")) {
        Ok(filter) => filter,
        Err(e) => return failure(StatusCode::BAD_REQUEST, e).into_response(),
    };
    let wanted = |f: &Flow| {
        [&filter.endpoint, &filter.related_to]
            .into_iter()
            .flatten()
            .all(|who| f.source.is(who) || f.destination.is(who))
    };
    let flows: Vec<Flow> = driver.monitor().flows().into_iter().filter(wanted).collect();
    axum::Json(flows).into_response()
}
