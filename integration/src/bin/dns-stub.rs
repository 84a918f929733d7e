//! `dns-stub`: a DNS server for the outside host of the tests, so that a container's UDP
//! request gets a UDP answer through masquerading (busybox's `nslookup` is the container's only
//! UDP client). Every A query is answered with `ADDR4`, every AAAA query with `ADDR6`, anything
//! else with an empty answer, on port 53 of each `LISTEN` address. One socket per address, so
//! that each answer leaves from the address its query was sent to (as a translated flow needs).
//!
//! ```text
//! dns-stub ADDR4 ADDR6 LISTEN...
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};

use anyhow::{bail, Context, Result};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// The answer to `query`, or `None` for something that is not a one-question query.
fn answer(query: &[u8], v4: Ipv4Addr, v6: Ipv6Addr) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut end = 12;
    loop {
        let len = usize::from(*query.get(end)?);
        end += 1 + len;
        if len == 0 {
            break;
        }
    }
    let qtype = u16::from_be_bytes([*query.get(end)?, *query.get(end + 1)?]);
    end += 4;
    if end > query.len() {
        return None;
    }
    let data: Vec<u8> = match qtype {
        TYPE_A => v4.octets().to_vec(),
        TYPE_AAAA => v6.octets().to_vec(),
        _ => Vec::new(),
    };
    let mut reply = query[..end].to_vec();
    reply[2] = 0x80 | (query[2] & 0x01); // a response, recursion desired echoed
    reply[3] = 0x80; // recursion available, no error
    let answers: u16 = if data.is_empty() { 0 } else { 1 };
    reply[6..8].copy_from_slice(&answers.to_be_bytes());
    reply[8..12].fill(0);
    if !data.is_empty() {
        reply.extend_from_slice(&[0xc0, 12]); // the name: a pointer to the question's
        reply.extend_from_slice(&qtype.to_be_bytes());
        reply.extend_from_slice(&1u16.to_be_bytes()); // class IN
        reply.extend_from_slice(&60u32.to_be_bytes()); // TTL
        reply.extend_from_slice(&(data.len() as u16).to_be_bytes());
        reply.extend_from_slice(&data);
    }
    Some(reply)
}

fn serve(socket: &UdpSocket, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<()> {
    let mut buf = [0u8; 512];
    loop {
        let (len, peer) = socket.recv_from(&mut buf).context("receive")?;
        if let Some(reply) = answer(&buf[..len], v4, v6) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [v4, v6, listen @ ..] = args.as_slice() else { bail!("usage: dns-stub ADDR4 ADDR6 LISTEN...") };
    let v4: Ipv4Addr = v4.parse().context("ADDR4")?;
    let v6: Ipv6Addr = v6.parse().context("ADDR6")?;
    let mut servers = Vec::new();
    for addr in listen {
        let addr: IpAddr = addr.parse().with_context(|| format!("LISTEN {addr}"))?;
        let socket = UdpSocket::bind((addr, 53)).with_context(|| format!("bind [{addr}]:53"))?;
        servers.push(std::thread::spawn(move || serve(&socket, v4, v6)));
    }
    for server in servers {
        server.join().map_err(|_| anyhow::anyhow!("a server thread panicked"))??;
    }
    Ok(())
}
