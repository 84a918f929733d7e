//! The connection rate: connect, send one byte, get one byte back, close — as fast as the path
//! allows, from several client threads. The server closes first, so TIME_WAIT sits on its side
//! and the client never runs out of ephemeral ports.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

const SERVER_THREADS: usize = 8;

pub fn serve(port: u16) -> Result<()> {
    // `[::]` takes IPv4 too (dual stack).
    let listener = TcpListener::bind(("::", port)).with_context(|| format!("listen on port {port}"))?;
    let mut workers = Vec::new();
    for _ in 0..SERVER_THREADS {
        let listener = listener.try_clone()?;
        workers.push(std::thread::spawn(move || loop {
            let Ok((mut stream, _)) = listener.accept() else { continue };
            let _ = stream.set_nodelay(true);
            let mut byte = [0u8; 1];
            if stream.read_exact(&mut byte).is_ok() {
                let _ = stream.write_all(&byte);
            }
        }));
    }
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

/// One connect–request–reply–close; true when the reply came and the server closed.
fn one(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return false };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut byte = [7u8; 1];
    if stream.write_all(&byte).is_err() || stream.read_exact(&mut byte).is_err() {
        return false;
    }
    // Wait for the server's FIN.
    matches!(stream.read(&mut byte), Ok(0))
}

pub fn client(addr: IpAddr, port: u16, seconds: f64, threads: usize) -> Value {
    let target = SocketAddr::new(addr, port);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (done, failed) = (done.clone(), failed.clone());
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    if one(target) {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    json!({"connections_per_second": done as f64 / elapsed, "completed": done, "failed": failed})
}
