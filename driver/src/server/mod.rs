//! The daemon's two unix sockets — the Docker plugin socket and the CLI's API socket — and
//! the optional metrics address (decode → call the driver → encode; no logic here).

pub mod activation;
pub mod api;
pub mod body;
pub mod metrics;
pub mod monitor;
pub mod plugin;
pub mod ui;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tracing::{info, warn};

use crate::driver::Driver;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another process is serving {0}; stop it or choose another socket path")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("socket activation: {0}")]
    Activation(#[from] activation::ActivationError),
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

/// Mode of the plugin socket: dockerd (root) and the root group; as systemd's socket unit sets it.
pub const PLUGIN_SOCKET_MODE: u32 = 0o660;
/// Mode of the API socket: root alone reads and changes policy, endpoints and state.
pub const API_SOCKET_MODE: u32 = 0o600;

impl Socket {
    /// Binds `path` with permission bits `mode` (owned by root:root when we are root),
    /// replacing a stale socket file but never one somebody still serves. Nobody can connect
    /// before the mode is set: the socket listens only after that.
    pub fn bind(path: &Path, mode: u32) -> Result<Socket, ServerError> {
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
        let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).map_err(bind_err)?;
        socket.bind(&socket2::SockAddr::unix(path).map_err(bind_err)?).map_err(bind_err)?;
        let file = SocketFile { path: path.to_owned(), owned: true };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            // The group too: a set-group-id directory would otherwise hand the socket its group.
            std::os::unix::fs::chown(path, Some(0), Some(0)).map_err(bind_err)?;
        }
        socket.listen(1024).map_err(bind_err)?;
        socket.set_nonblocking(true).map_err(bind_err)?;
        let std_listener = std::os::unix::net::UnixListener::from(OwnedFd::from(socket));
        let listener = UnixListener::from_std(std_listener).map_err(bind_err)?;
        Ok(Socket { listener, file })
    }

    /// The socket a service manager passed us (sd_listen_fds protocol, see [`activation`]),
    /// if any; `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` are removed from the
    /// environment either way. Its file belongs to the service manager: we neither re-create
    /// nor remove it.
    pub fn from_systemd(path: &Path) -> Result<Option<Socket>, ServerError> {
        let env = activation::ListenEnv::take();
        let Some(fd) = env.passed_fd(std::process::id())? else {
            if let (Some(fds), pid) = (&env.fds, &env.pid) {
                warn!(LISTEN_FDS = %fds, LISTEN_PID = ?pid, "sockets passed to another process: ignored");
            }
            return Ok(None);
        };
        // SAFETY: under the sd_listen_fds protocol the passed descriptors belong to the process
        // named by LISTEN_PID, which is this one; nothing else in the process owns or closes fd 3.
        let std_listener = unsafe { activation::claim(fd) }?;
        let io_err = |source| activation::ActivationError::Io { fd, source };
        std_listener.set_nonblocking(true).map_err(io_err)?;
        let listener = UnixListener::from_std(std_listener).map_err(io_err)?;
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
        let err = Socket::bind(&file, API_SOCKET_MODE).expect_err("a regular file is not replaced");
        assert!(matches!(err, ServerError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&file).expect("still there"), "precious");

        let path = dir.path().join("live.sock");
        let live = Socket::bind(&path, PLUGIN_SOCKET_MODE).expect("bind");
        assert!(
            matches!(Socket::bind(&path, PLUGIN_SOCKET_MODE), Err(ServerError::InUse(_))),
            "a served socket is not taken over"
        );
        drop(live);
        assert!(!path.exists(), "our socket file is removed with us");

        // A stale socket (nobody listening) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).expect("bind stale");
        drop(stale);
        assert!(path.exists());
        Socket::bind(&path, PLUGIN_SOCKET_MODE).expect("stale socket replaced");
    }

    #[tokio::test]
    async fn sockets_get_their_mode_and_root_as_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin = Socket::bind(&dir.path().join("plugin.sock"), PLUGIN_SOCKET_MODE).expect("bind");
        let api = Socket::bind(&dir.path().join("api.sock"), API_SOCKET_MODE).expect("bind");
        let meta = |s: &Socket| std::fs::metadata(&s.file.path).expect("stat");
        assert_eq!(meta(&plugin).mode() & 0o7777, 0o660);
        assert_eq!(meta(&api).mode() & 0o7777, 0o600);
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        for socket in [&plugin, &api] {
            let owner = (meta(socket).uid(), meta(socket).gid());
            // root:root when we are root; otherwise (no chown possible) whoever we are.
            let expected = if euid == 0 { (0, 0) } else { (euid, owner.1) };
            assert_eq!(owner, expected, "{}", socket.file.path.display());
        }
        // Served: a connection is accepted.
        let client = tokio::net::UnixStream::connect(&api.file.path);
        let (accepted, connected) = tokio::join!(api.listener.accept(), client);
        accepted.expect("accept");
        connected.expect("connect");
    }
}
