//! `crr`: the small-message workloads of `make bench`, each a server and a client that prints
//! one JSON line. Run both inside network namespaces (the bench uses `nsenter --net`):
//!
//! ```text
//! crr server PORT                           connect/request/close: answer one byte, close
//! crr client ADDR PORT SECONDS THREADS      {"connections_per_second": …}
//! crr rr-server PORT                        request/response: echo every byte
//! crr rr-client ADDR PORT SECONDS           {"transactions_per_second": …} over one connection
//! crr udp-server PORT                       count 64-byte datagrams on UDP PORT; TCP PORT is
//!                                           the control channel that reports the count
//! crr udp-client ADDR PORT SECONDS          {"packets_per_second": …} as the server received them
//! ```

mod connect;
mod rr;
mod udp;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: crr server PORT | crr client ADDR PORT SECONDS THREADS | \
                     crr rr-server PORT | crr rr-client ADDR PORT SECONDS | \
                     crr udp-server PORT | crr udp-client ADDR PORT SECONDS";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = |p: &str| p.parse::<u16>().context("port");
    let seconds = |s: &str| s.parse::<f64>().context("seconds");
    let report = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["server", p] => return connect::serve(port(p)?),
        ["rr-server", p] => return rr::serve(port(p)?),
        ["udp-server", p] => return udp::serve(port(p)?),
        ["client", addr, p, s, threads] => connect::client(
            addr.parse().context("address")?,
            port(p)?,
            seconds(s)?,
            threads.parse().context("threads")?,
        ),
        ["rr-client", addr, p, s] => rr::client(addr.parse().context("address")?, port(p)?, seconds(s)?)?,
        ["udp-client", addr, p, s] => udp::client(addr.parse().context("address")?, port(p)?, seconds(s)?)?,
        _ => bail!(USAGE),
    };
    println!("{report}");
    Ok(())
}
