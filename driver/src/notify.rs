//! Tells the service manager how the daemon is doing (systemd's sd_notify protocol: one
//! datagram per state change to the AF_UNIX socket named by `NOTIFY_SOCKET`).

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

const VARIABLE: &str = "NOTIFY_SOCKET";

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("{VARIABLE}={0:?} is neither an absolute path nor an abstract socket name (@name)")]
    BadAddress(String),
    #[error("{VARIABLE}={0:?}: {1}")]
    Io(String, io::Error),
}

/// Where notifications go; without a service manager listening, nowhere.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    address: SocketAddr,
    /// `NOTIFY_SOCKET` as given, for messages.
    shown: String,
}

impl Notifier {
    /// Takes `NOTIFY_SOCKET` from the environment and removes it there, so that no process the
    /// daemon starts inherits it (the service unit accepts only the main process's messages).
    pub fn from_env() -> Result<Notifier, NotifyError> {
        let value = std::env::var_os(VARIABLE);
        std::env::remove_var(VARIABLE);
        Notifier::to(value.as_deref())
    }

    /// Notifications to the socket `value` names (a path, or `@name` in the abstract
    /// namespace); none when it is unset or empty.
    pub fn to(value: Option<&OsStr>) -> Result<Notifier, NotifyError> {
        let Some(value) = value.filter(|v| !v.is_empty()) else { return Ok(Notifier { target: None }) };
        let shown = value.to_string_lossy().into_owned();
        let address = match value.as_bytes() {
            [b'@', name @ ..] => SocketAddr::from_abstract_name(name),
            [b'/', ..] => SocketAddr::from_pathname(value),
            _ => return Err(NotifyError::BadAddress(shown)),
        }
        .map_err(|e| NotifyError::Io(shown.clone(), e))?;
        let socket = UnixDatagram::unbound().map_err(|e| NotifyError::Io(shown.clone(), e))?;
        Ok(Notifier { target: Some(Target { socket, address, shown }) })
    }

    /// The daemon serves: state restored, datapath ready.
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.send("READY=1")
    }

    /// The daemon is finishing its in-flight requests and will exit.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send("STOPPING=1")
    }

    fn send(&self, state: &str) -> Result<(), NotifyError> {
        let Some(target) = &self.target else { return Ok(()) };
        target
            .socket
            .send_to_addr(state.as_bytes(), &target.address)
            .map(drop)
            .map_err(|e| NotifyError::Io(target.shown.clone(), e))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn received(socket: &UnixDatagram) -> String {
        socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn notifications_reach_a_socket_named_by_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let manager = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier::to(Some(path.as_os_str())).expect("notifier");
        notifier.ready().expect("ready");
        notifier.stopping().expect("stopping");
        assert_eq!(received(&manager), "READY=1");
        assert_eq!(received(&manager), "STOPPING=1");
    }

    #[test]
    fn notifications_reach_an_abstract_socket() {
        let name = format!("crs-notify-test-{}", std::process::id());
        let manager =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).expect("name")).expect("bind");
        let notifier = Notifier::to(Some(OsStr::new(&format!("@{name}")))).expect("notifier");
        notifier.ready().expect("ready");
        assert_eq!(received(&manager), "READY=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_bad_names_are_refused() {
        Notifier::to(None).expect("unset").ready().expect("no-op");
        Notifier::to(Some(OsStr::new(""))).expect("empty").ready().expect("no-op");
        let err = Notifier::to(Some(OsStr::new("run/notify"))).expect_err("relative");
        assert_eq!(
            err.to_string(),
            r#"NOTIFY_SOCKET="run/notify" is neither an absolute path nor an abstract socket name (@name)"#
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let gone = dir.path().join("nobody-listens.sock");
        let err = Notifier::to(Some(gone.as_os_str())).expect("notifier").ready().expect_err("nobody listens");
        assert!(err.to_string().starts_with(&format!("NOTIFY_SOCKET={:?}: ", gone.display().to_string())), "{err}");
    }
}
