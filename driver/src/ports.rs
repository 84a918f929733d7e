//! Published ports: what `-p`, `-P` and compose `ports:` ask for (dockerd's
//! `com.docker.network.portmap`), resolved to host ports and held by bound sockets, so that no
//! host process can take a port while it is published and a taken one refuses the container.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use socket2::{Domain, Socket, Type};

use crate::egress::PortRange;
use crate::input::{kind, quoted};

/// The transport protocols a port can be published for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One entry of dockerd's port map: publish container `port` on `host_ip` (every address of
/// the host when `None`) at one free port of `host_port..=host_port_end` (any free port when
/// `host_port` is 0: `-P`, or `-p PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRequest {
    pub proto: Proto,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub host_port_end: u16,
    pub port: u16,
}

/// A published port, as held on the host and programmed into the datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublishedPort {
    pub proto: Proto,
    /// `None`: every address of the host, both families; `0.0.0.0` / `::`: every address of
    /// one family.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub port: u16,
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            None => write!(f, "{}->{}/{}", self.host_port, self.port, self.proto.name()),
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}->{}/{}", self.host_port, self.port, self.proto.name()),
            Some(ip) => write!(f, "{ip}:{}->{}/{}", self.host_port, self.port, self.proto.name()),
        }
    }
}

/// Reads dockerd's `com.docker.network.portmap` (absent or `null`: nothing published).
pub fn parse_portmap(value: Option<&Value>) -> Result<Vec<PortRequest>, String> {
    let entries = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(entries)) => entries,
        Some(other) => return Err(format!("port map must be an array, got {}", kind(other))),
    };
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| parse_entry(entry).map_err(|e| format!("port map entry {i}: {e}")))
        .collect()
}

fn parse_entry(entry: &Value) -> Result<PortRequest, String> {
    let Value::Object(fields) = entry else { return Err(format!("must be an object, got {}", kind(entry))) };
    let number = |name: &str| -> Result<u16, String> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(0),
            Some(Value::Number(n)) => {
                n.as_u64().and_then(|n| u16::try_from(n).ok()).ok_or_else(|| format!("{name} {n} is not a port number"))
            }
            Some(other) => Err(format!("{name} must be a number, got {}", kind(other))),
        }
    };
    let proto = match number("Proto")? {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        132 => return Err("SCTP ports cannot be published by cilium-rs (only tcp and udp)".to_owned()),
        other => return Err(format!("Proto {other} is not tcp (6) or udp (17)")),
    };
    let host_ip = match fields.get("HostIP") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => {
            Some(s.parse::<IpAddr>().map_err(|_| format!("HostIP {} is not an address", quoted(s)))?)
        }
        Some(other) => return Err(format!("HostIP must be a string, got {}", kind(other))),
    };
    let port = number("Port")?;
    if port == 0 {
        return Err("Port (the container's) must be set".to_owned());
    }
    let host_port = number("HostPort")?;
    let host_port_end = number("HostPortEnd")?.max(host_port);
    if host_port == 0 && host_port_end != 0 {
        return Err(format!("HostPortEnd {host_port_end} without a HostPort"));
    }
    Ok(PortRequest { proto, host_ip, host_port, host_port_end, port })
}

/// Sockets holding published host ports: bound, never listening, never read.
#[derive(Debug, Default)]
pub struct PortHold {
    sockets: Vec<Socket>,
}

/// Publishes every request: each gets a free host port (the first of its range that can be
/// bound, or one the kernel picks), held until the returned hold is dropped. Fails as a whole,
/// with Docker's wording, when a port is taken, and refuses ports masquerading uses.
pub fn hold(requests: &[PortRequest], nat_ports: PortRange) -> Result<(Vec<PublishedPort>, PortHold), String> {
    let mut published = Vec::new();
    let mut held = PortHold::default();
    for request in requests {
        let candidates: Vec<u16> =
            if request.host_port == 0 { vec![0] } else { (request.host_port..=request.host_port_end).collect() };
        let mut last_error = None;
        for candidate in candidates {
            if candidate != 0 && nat_ports.contains(candidate) {
                last_error = Some(format!(
                    "host port {candidate} lies in --nat-port-range {nat_ports}, which masquerading uses: \
                     publish another port"
                ));
                continue;
            }
            match bind(request.proto, request.host_ip, candidate) {
                Ok((socket, host_port)) => {
                    published.push(PublishedPort {
                        proto: request.proto,
                        host_ip: request.host_ip,
                        host_port,
                        port: request.port,
                    });
                    held.sockets.push(socket);
                    last_error = None;
                    break;
                }
                Err(e) => {
                    let shown = PublishedPort {
                        proto: request.proto,
                        host_ip: request.host_ip,
                        host_port: candidate,
                        port: request.port,
                    };
                    last_error = Some(match e.kind() {
                        io::ErrorKind::AddrInUse => {
                            format!("Bind for {} failed: port is already allocated", bind_target(&shown))
                        }
                        _ => format!("Bind for {} failed: {e}", bind_target(&shown)),
                    });
                }
            }
        }
        if let Some(error) = last_error {
            return Err(error);
        }
    }
    Ok((published, held))
}

/// Holds ports published before (a restarted daemon); what cannot be bound any more is
/// returned as an error message each, the rest is held.
pub fn hold_again(published: &[PublishedPort]) -> (PortHold, Vec<String>) {
    let mut held = PortHold::default();
    let mut errors = Vec::new();
    for port in published {
        match bind(port.proto, port.host_ip, port.host_port) {
            Ok((socket, _)) => held.sockets.push(socket),
            Err(e) => errors.push(format!("hold {}: {e}", bind_target(port))),
        }
    }
    (held, errors)
}

/// `0.0.0.0:8080/tcp`, `[::]:8080/udp`, `*:8080/tcp` (both families).
fn bind_target(port: &PublishedPort) -> String {
    match port.host_ip {
        None => format!("*:{}/{}", port.host_port, port.proto.name()),
        Some(IpAddr::V6(ip)) => format!("[{ip}]:{}/{}", port.host_port, port.proto.name()),
        Some(ip) => format!("{ip}:{}/{}", port.host_port, port.proto.name()),
    }
}

/// Binds `host_ip`:`port` (`None`: both families, through one dual-stack socket) without
/// listening; returns the socket and the port it got.
fn bind(proto: Proto, host_ip: Option<IpAddr>, port: u16) -> io::Result<(Socket, u16)> {
    let kind = match proto {
        Proto::Tcp => Type::STREAM,
        Proto::Udp => Type::DGRAM,
    };
    let (domain, addr, only_v6) = match host_ip {
        None => (Domain::IPV6, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), Some(false)),
        Some(IpAddr::V6(ip)) => (Domain::IPV6, SocketAddr::from((ip, port)), Some(true)),
        Some(IpAddr::V4(ip)) => (Domain::IPV4, SocketAddr::from((ip, port)), None),
    };
    let socket = match Socket::new(domain, kind, None) {
        // A host without IPv6: every address is every IPv4 address.
        Err(e) if host_ip.is_none() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            return bind(proto, Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), port);
        }
        other => other?,
    };
    if let Some(only_v6) = only_v6 {
        socket.set_only_v6(only_v6)?;
    }
    socket.bind(&addr.into())?;
    let bound = socket.local_addr()?.as_socket().map_or(port, |a| a.port());
    Ok((socket, bound))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NAT: PortRange = PortRange { min: 61000, max: 65535 };

    #[test]
    fn dockerd_port_maps_parse_and_bad_ones_are_refused_precisely() {
        let map = json!([
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
            {"Proto": 17, "IP": "", "Port": 53, "HostIP": "127.0.0.1", "HostPort": 0, "HostPortEnd": 0},
            {"Proto": 6, "Port": 81, "HostIP": "::", "HostPort": 9000, "HostPortEnd": 9009}
        ]);
        let parsed = parse_portmap(Some(&map)).expect("valid");
        assert_eq!(
            parsed,
            vec![
                PortRequest { proto: Proto::Tcp, host_ip: None, host_port: 8080, host_port_end: 8080, port: 80 },
                PortRequest {
                    proto: Proto::Udp,
                    host_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    host_port: 0,
                    host_port_end: 0,
                    port: 53
                },
                PortRequest {
                    proto: Proto::Tcp,
                    host_ip: Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
                    host_port: 9000,
                    host_port_end: 9009,
                    port: 81
                },
            ]
        );
        assert_eq!(parse_portmap(None), Ok(vec![]));
        assert_eq!(parse_portmap(Some(&json!(null))), Ok(vec![]));
        for (bad, message) in [
            (json!({}), "port map must be an array, got an object"),
            (json!([[]]), "port map entry 0: must be an object, got an array"),
            (json!([{"Proto": 132, "Port": 80}]), "port map entry 0: SCTP ports cannot be published"),
            (json!([{"Proto": 6, "Port": 80, "HostIP": "x"}]), "port map entry 0: HostIP \"x\" is not an address"),
            (json!([{"Proto": 6, "Port": 70000}]), "port map entry 0: Port 70000 is not a port number"),
            (json!([{"Proto": 6, "Port": "80"}]), "port map entry 0: Port must be a number, got a string"),
            (json!([{"Proto": 6}]), "port map entry 0: Port (the container's) must be set"),
        ] {
            let err = parse_portmap(Some(&bad)).expect_err("must fail");
            assert!(err.starts_with(message), "{err}");
        }
    }

    #[test]
    fn holding_a_port_keeps_others_from_it_until_released() {
        let request = |host_port, host_port_end| PortRequest {
            proto: Proto::Tcp,
            host_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            host_port,
            host_port_end,
            port: 80,
        };
        // Any free port, then that one again: taken.
        let (first, held) = hold(&[request(0, 0)], NAT).expect("any port");
        let taken = first[0].host_port;
        assert_ne!(taken, 0);
        let err = hold(&[request(taken, taken)], NAT).expect_err("taken");
        assert_eq!(err, format!("Bind for 127.0.0.1:{taken}/tcp failed: port is already allocated"));
        assert!(std::net::TcpListener::bind(("127.0.0.1", taken)).is_err(), "a host process cannot take it");
        // A range skips the taken port.
        if taken < u16::MAX {
            let (next, _held2) = hold(&[request(taken, taken + 1)], NAT).expect("range");
            assert_eq!(next[0].host_port, taken + 1);
        }
        drop(held);
        let (again, _held) = hold(&[request(taken, taken)], NAT).expect("free again");
        assert_eq!(again[0].host_port, taken);
        let err = hold(&[request(62000, 62000)], NAT).expect_err("nat range");
        assert!(err.contains("lies in --nat-port-range 61000-65535"), "{err}");
    }

    #[test]
    fn published_ports_print_as_docker_shows_them() {
        let port = |host_ip| PublishedPort { proto: Proto::Udp, host_ip, host_port: 5353, port: 53 };
        assert_eq!(port(None).to_string(), "5353->53/udp");
        assert_eq!(port(Some(IpAddr::V4(Ipv4Addr::LOCALHOST))).to_string(), "127.0.0.1:5353->53/udp");
        assert_eq!(port(Some(IpAddr::V6(Ipv6Addr::LOCALHOST))).to_string(), "[::1]:5353->53/udp");
    }
}
