//! The daemon's two unix sockets — the Docker plugin socket and the CLI's API socket — and
//! the optional metrics address (decode → call the driver → encode; no logic here).

pub mod api;
pub mod body;
pub mod metrics;
pub mod monitor;
pub mod plugin;
pub mod ui;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tracing::info;

use crate::driver::Driver;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another process is serving {0}; stop it or choose another socket path")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("socket-activated fd {fd}: {source}")]
    Activated { fd: RawFd, source: io::Error },
    #[error("serve {path}: {source}")]
    Serve { path: PathBuf, source: io::Error },
    #[error("bind metrics address {address}: {source}")]
    BindTcp { address: SocketAddr, source: io::Error },
    #[error("serve metrics on {address}: {source}")]
    ServeTcp { address: SocketAddr, source: io::Error },
}

/// A listening socket and the file it lives at.
#[derive(Debug)]
pub struct Socket {
    pub listener: UnixListener,
    pub file: SocketFile,
}

/// The socket's path; removed on drop when we created it (not when systemd handed it over).
#[derive(Debug)]
pub struct SocketFile {
    pub path: PathBuf,
    owned: bool,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Socket {
    /// Binds `path`, replacing a stale socket file but never one somebody still serves.
    pub fn bind(path: &Path) -> Result<Socket, ServerError> {
        let bind_err = |source| ServerError::Bind { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(bind_err)?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                return Err(ServerError::NotASocket(path.to_owned()));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(bind_err)?;
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        let file = SocketFile { path: path.to_owned(), owned: true };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
        Ok(Socket { listener, file })
    }

    /// The socket systemd passed us (sd_listen_fds protocol), if any. Its file belongs to
    /// systemd: we neither re-create nor remove it.
    pub fn from_systemd(path: &Path) -> Result<Option<Socket>, ServerError> {
        const FIRST_FD: RawFd = 3;
        let ours = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
        let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
        if !ours || count < 1 {
            return Ok(None);
        }
        // SAFETY: under the sd_listen_fds protocol fd 3 is an open listening socket handed to
        // this process alone; nothing else in the process owns or closes it.
        let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(FIRST_FD) };
        let activated = |source| ServerError::Activated { fd: FIRST_FD, source };
        std_listener.set_nonblocking(true).map_err(activated)?;
        let listener = UnixListener::from_std(std_listener).map_err(activated)?;
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_owned))
            .unwrap_or_else(|| path.to_owned());
        Ok(Some(Socket { listener, file: SocketFile { path, owned: false } }))
    }
}

/// Serves both sockets (and the metrics address and the web page when there are) until
/// `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    driver: Arc<Driver>,
    plugin: Socket,
    api: Socket,
    metrics: Option<metrics::MetricsListener>,
    page: Option<ui::UiListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    info!(plugin = %plugin.file.path.display(), api = %api.file.path.display(), "serving");
    let plugin_server =
        axum::serve(plugin.listener, plugin::router(driver.clone())).with_graceful_shutdown(stopped(rx.clone()));
    let monitor = driver.monitor().clone();
    let api_server = axum::serve(api.listener, api::router(driver.clone())).with_graceful_shutdown(stopped(rx.clone()));
    let (metrics_driver, metrics_rx) = (driver.clone(), rx.clone());
    let metrics_server = async move {
        let Some(m) = metrics else { return Ok(()) };
        info!(address = %m.address, path = metrics::PATH, "serving metrics");
        axum::serve(m.listener, metrics::router(metrics_driver, m.per_endpoint))
            .with_graceful_shutdown(stopped(metrics_rx))
            .await
            .map_err(|source| ServerError::ServeTcp { address: m.address, source })
    };
    let page_server = async move {
        let Some(p) = page else { return Ok(()) };
        info!(address = %p.address, "serving the service map page");
        axum::serve(p.listener, ui::router(driver))
            .with_graceful_shutdown(stopped(rx))
            .await
            .map_err(|source| ServerError::ServeTcp { address: p.address, source })
    };
    let stopper = tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
        // Monitor streams never end by themselves.
        monitor.close();
    });
    let (plugin_result, api_result, metrics_result, page_result) =
        tokio::join!(plugin_server, api_server, metrics_server, page_server);
    stopper.abort();
    plugin_result.map_err(|source| ServerError::Serve { path: plugin.file.path.clone(), source })?;
    api_result.map_err(|source| ServerError::Serve { path: api.file.path.clone(), source })?;
    metrics_result?;
    page_result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binding_replaces_stale_sockets_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("plain.sock");
        std::fs::write(&file, "precious").expect("write");
        let err = Socket::bind(&file).expect_err("a regular file is not replaced");
        assert!(matches!(err, ServerError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&file).expect("still there"), "precious");

        let path = dir.path().join("live.sock");
        let live = Socket::bind(&path).expect("bind");
        assert!(matches!(Socket::bind(&path), Err(ServerError::InUse(_))), "a served socket is not taken over");
        drop(live);
        assert!(!path.exists(), "our socket file is removed with us");

        // A stale socket (nobody listening) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).expect("bind stale");
        drop(stale);
        assert!(path.exists());
        Socket::bind(&path).expect("stale socket replaced");
    }
}
