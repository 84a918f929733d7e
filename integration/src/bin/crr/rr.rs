//! Request/response: one TCP connection, one byte each way per transaction, as many
//! transactions a second as the path's latency allows.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Echoes every byte of every connection back, a thread per connection.
pub fn serve(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("::", port)).with_context(|| format!("listen on port {port}"))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut byte = [0u8; 1];
            while stream.read_exact(&mut byte).is_ok() && stream.write_all(&byte).is_ok() {}
        });
    }
    Ok(())
}

/// Ping-pongs one byte over one connection for `seconds`.
pub fn client(addr: IpAddr, port: u16, seconds: f64) -> Result<Value> {
    let target = SocketAddr::new(addr, port);
    let mut stream =
        TcpStream::connect_timeout(&target, Duration::from_secs(2)).with_context(|| format!("connect to {target}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut byte = [7u8; 1];
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut transactions: u64 = 0;
    // Look at the clock every 64 transactions: a clock read is not free at this rate.
    while !transactions.is_multiple_of(64) || Instant::now() < deadline {
        stream.write_all(&byte).context("request")?;
        stream.read_exact(&mut byte).context("response")?;
        transactions += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if transactions == 0 {
        bail!("no transaction completed with {target}");
    }
    Ok(json!({"transactions_per_second": transactions as f64 / elapsed, "transactions": transactions}))
}
