//! Small-packet rate: the client blasts 64-byte UDP datagrams for a while (`sendmmsg`, so the
//! path, not the system call, is the cost), the server counts what it received (`recvmmsg`).
//! A TCP connection to the same port number frames the run: `start` (the server notes its
//! count and answers `ok`), the blast, `stop` (the server lets the last datagrams in, then
//! answers `{"received": N}`), so the client reports the rate that arrived, not what it sent.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Bytes of UDP payload of each datagram.
const PAYLOAD: usize = 64;
/// Datagrams per system call, both ways.
const BATCH: usize = 64;
/// How long the server waits after `stop` for datagrams still on their way.
const DRAIN: Duration = Duration::from_millis(50);

/// `BATCH` message headers, each with one buffer of its own (`len` bytes): what
/// `sendmmsg`/`recvmmsg` take. The buffers live (and stay put) as long as the headers.
struct Batch {
    headers: Vec<libc::mmsghdr>,
    _iovecs: Vec<libc::iovec>,
    _buffers: Vec<Vec<u8>>,
}

impl Batch {
    fn new(len: usize) -> Batch {
        let mut buffers: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0x5a; len]).collect();
        let mut iovecs: Vec<libc::iovec> =
            buffers.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
        let headers = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain old data; all zeroes is an empty header (no address,
                // no control data), completed below.
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_iov = iov;
                header.msg_hdr.msg_iovlen = 1;
                header
            })
            .collect();
        Batch { headers, _iovecs: iovecs, _buffers: buffers }
    }
}

/// Counts datagrams on UDP `port` forever; answers control connections on TCP `port`.
pub fn serve(port: u16) -> Result<()> {
    // `[::]` takes IPv4 too (dual stack).
    let socket = UdpSocket::bind(("::", port)).with_context(|| format!("bind udp port {port}"))?;
    let listener = TcpListener::bind(("::", port)).with_context(|| format!("listen on tcp port {port}"))?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    std::thread::spawn(move || {
        let mut batch = Batch::new(PAYLOAD * 2);
        loop {
            // SAFETY: the headers point at BATCH buffers that `batch` owns and keeps in place
            // for the call; no address or control buffers; no timeout.
            let n = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    batch.headers.as_mut_ptr(),
                    BATCH as u32,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if n > 0 {
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let received = received.clone();
        std::thread::spawn(move || control(stream, &received));
    }
    Ok(())
}

/// One client's run on the control connection: `start`, then `stop`.
fn control(stream: TcpStream, received: &AtomicU64) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim() != "start" {
        bail!("expected start, got {line:?}");
    }
    let before = received.load(Ordering::Relaxed);
    writer.write_all(b"ok\n")?;
    line.clear();
    reader.read_line(&mut line)?;
    if line.trim() != "stop" {
        bail!("expected stop, got {line:?}");
    }
    std::thread::sleep(DRAIN);
    let count = received.load(Ordering::Relaxed) - before;
    writer.write_all(format!("{}\n", json!({"received": count})).as_bytes())?;
    Ok(())
}

/// Blasts datagrams at `addr`:`port` for `seconds`; the rate the server received.
pub fn client(addr: IpAddr, port: u16, seconds: f64) -> Result<Value> {
    let target = SocketAddr::new(addr, port);
    let stream =
        TcpStream::connect_timeout(&target, Duration::from_secs(2)).with_context(|| format!("connect to {target}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    writer.write_all(b"start\n")?;
    reader.read_line(&mut line).context("the server's ok")?;
    if line.trim() != "ok" {
        bail!("udp server answered {line:?} to start");
    }
    let local: IpAddr = if addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let socket = UdpSocket::bind((local, 0))?;
    socket.connect(target)?;
    let mut batch = Batch::new(PAYLOAD);
    let (mut sent, mut errors) = (0u64, 0u64);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    while Instant::now() < deadline {
        // SAFETY: the headers point at BATCH buffers that `batch` owns and keeps in place for
        // the call; the socket is connected, so no addresses.
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), batch.headers.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        } else {
            // ECONNREFUSED from an ICMP error, or a full queue: keep sending.
            errors += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    writer.write_all(b"stop\n")?;
    line.clear();
    reader.read_line(&mut line).context("the server's count")?;
    let answer: Value = serde_json::from_str(&line).with_context(|| format!("udp server answered {line:?}"))?;
    let received = answer["received"].as_u64().context("received in the server's answer")?;
    if sent == 0 {
        bail!("no datagram could be sent to {target} ({errors} errors)");
    }
    Ok(json!({"packets_per_second": received as f64 / elapsed, "received": received, "sent": sent,
              "send_errors": errors, "seconds": elapsed}))
}
