//! Prometheus scrapes for the tests: `GET /metrics` over loopback, parsed by a text-format
//! parser, and the values of its samples.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A loopback address with a port nobody listens on right now.
pub fn free_loopback() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address")
}

/// `GET /metrics`, parsed.
pub fn scrape(address: SocketAddr) -> Result<prometheus_parse::Scrape> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .with_context(|| format!("connect to the metrics address {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").context("an HTTP reply")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("scrape failed: {head}\n{body}");
    }
    let content_type =
        head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned));
    anyhow::ensure!(
        content_type.as_deref().is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "content type {content_type:?}"
    );
    Ok(prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))?)
}

/// The value of the sample `name` with (at least) `labels`.
pub fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(
        |s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        },
    )
}

pub fn must(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    let v = value(scrape, name, labels).unwrap_or_else(|| panic!("{name}{labels:?} missing from the exposition"));
    assert!(v >= 0.0 && v.fract() == 0.0, "{name}{labels:?} = {v}");
    v as u64
}
