//! The listening socket a service manager hands the daemon (systemd's sd_listen_fds protocol:
//! `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, descriptors from 3 on), checked before use.
//!
//! The daemon takes exactly one descriptor, its plugin socket, and it must be a listening
//! AF_UNIX stream socket; anything else is refused with an error naming what was passed
//! (a socket unit with several `ListenStream=` lines is a configuration error, not a choice
//! for the daemon to make by name).

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use socket2::{Domain, SockRef, Type};

/// The first (and for us only) descriptor passed under the protocol.
pub const FIRST_FD: RawFd = 3;

/// The protocol's environment variables, as found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ListenEnv {
    pub pid: Option<String>,
    pub fds: Option<String>,
    pub names: Option<String>,
}

impl ListenEnv {
    const VARIABLES: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

    /// Reads the variables and removes them from the environment, so that no process the
    /// daemon starts inherits them (whatever they say, and whether or not they are ours).
    pub fn take() -> ListenEnv {
        let [pid, fds, names] = ListenEnv::VARIABLES.map(|name| std::env::var(name).ok());
        for name in ListenEnv::VARIABLES {
            std::env::remove_var(name);
        }
        ListenEnv { pid, fds, names }
    }

    /// The descriptor passed to the process `our_pid`: `None` when nothing is passed
    /// (no `LISTEN_FDS`, or 0) or it is meant for another process (`LISTEN_PID` names another
    /// one, or none: variables leaked from a parent); an error when more than one is passed or
    /// the variables are not numbers.
    pub fn passed_fd(&self, our_pid: u32) -> Result<Option<RawFd>, ActivationError> {
        let Some(fds) = self.fds.as_deref() else { return Ok(None) };
        let Some(pid) = self.pid.as_deref() else { return Ok(None) };
        let pid: u32 = pid.trim().parse().map_err(|_| ActivationError::BadVariable("LISTEN_PID", pid.to_owned()))?;
        if pid != our_pid {
            return Ok(None);
        }
        let count: u32 = fds.trim().parse().map_err(|_| ActivationError::BadVariable("LISTEN_FDS", fds.to_owned()))?;
        match count {
            0 => Ok(None),
            1 => Ok(Some(FIRST_FD)),
            count => Err(ActivationError::TooMany {
                count,
                names: self.names.as_deref().map(|n| format!(", LISTEN_FDNAMES={n}")).unwrap_or_default(),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("{0}={1:?} is not a number")]
    BadVariable(&'static str, String),
    #[error(
        "{count} sockets were passed (LISTEN_FDS={count}{names}); the daemon takes exactly one, its plugin \
         socket: give the socket unit a single ListenStream="
    )]
    TooMany { count: u32, names: String },
    #[error("the passed descriptor {fd} is {found}, not a listening unix stream socket (LISTEN_FDS=1 passes the plugin socket)")]
    NotAListener { fd: RawFd, found: String },
    #[error("the passed descriptor {fd}: {source}")]
    Io { fd: RawFd, source: io::Error },
}

/// Checks that `fd` is a listening AF_UNIX stream socket; the error says what it is instead.
pub fn check_listener(fd: RawFd, socket: BorrowedFd<'_>) -> Result<(), ActivationError> {
    let socket = SockRef::from(&socket);
    let not = |found: String| ActivationError::NotAListener { fd, found };
    let domain = match socket.domain() {
        Ok(domain) => domain,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => return Err(not("not a socket".to_owned())),
        Err(source) => return Err(ActivationError::Io { fd, source }),
    };
    let kind = socket.r#type().map_err(|source| ActivationError::Io { fd, source })?;
    if domain != Domain::UNIX || kind != Type::STREAM {
        return Err(not(format!("a {} socket", describe(domain, kind))));
    }
    if !socket.is_listener().map_err(|source| ActivationError::Io { fd, source })? {
        return Err(not("a unix stream socket that is not listening (a connection?)".to_owned()));
    }
    Ok(())
}

/// Takes the passed descriptor `fd` as the plugin socket: checks it is open and a listening
/// unix stream socket, and marks it close-on-exec.
///
/// # Safety
/// Nothing else in the process may own `fd` (under the protocol, the passed descriptors
/// belong to the process they were passed to).
pub unsafe fn claim(fd: RawFd) -> Result<UnixListener, ActivationError> {
    // SAFETY: F_GETFD reads the descriptor's flags; on a number that is not open it fails with
    // EBADF and touches nothing.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        let error = io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::EBADF) => ActivationError::NotAListener { fd, found: "not open".to_owned() },
            _ => ActivationError::Io { fd, source: error },
        });
    }
    // SAFETY: `fd` is open (F_GETFD succeeded) and, per this function's contract, ours; the
    // borrow ends before ownership is taken below.
    check_listener(fd, unsafe { BorrowedFd::borrow_raw(fd) })?;
    // SAFETY: F_SETFD only sets the flags of the open descriptor `fd`.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(ActivationError::Io { fd, source: io::Error::last_os_error() });
    }
    // SAFETY: `fd` is an open socket that nothing else in the process owns (contract above).
    Ok(UnixListener::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// "UDP/IPv4", "unix datagram", ... for an error message.
fn describe(domain: Domain, kind: Type) -> String {
    let family = match domain {
        Domain::UNIX => "unix",
        Domain::IPV4 => "IPv4",
        Domain::IPV6 => "IPv6",
        Domain::PACKET => "packet",
        Domain::VSOCK => "vsock",
        _ => "other-family",
    };
    let kind = match kind {
        Type::STREAM if domain == Domain::UNIX => "stream",
        Type::STREAM => "TCP",
        Type::DGRAM if domain == Domain::UNIX => "datagram",
        Type::DGRAM => "UDP",
        Type::SEQPACKET => "seqpacket",
        Type::RAW => "raw",
        _ => "other-type",
    };
    format!("{kind}/{family}")
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd, IntoRawFd};

    use super::*;

    fn env(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> ListenEnv {
        ListenEnv { pid: pid.map(str::to_owned), fds: fds.map(str::to_owned), names: names.map(str::to_owned) }
    }

    #[test]
    fn only_one_descriptor_passed_to_this_very_process_is_taken() {
        assert_eq!(env(None, None, None).passed_fd(42).expect("nothing"), None);
        assert_eq!(env(Some("42"), Some("1"), None).passed_fd(42).expect("ours"), Some(FIRST_FD));
        assert_eq!(env(Some("42"), Some("0"), None).passed_fd(42).expect("zero"), None);
        // Meant for another process (leaked from a parent): not ours to use.
        assert_eq!(env(Some("41"), Some("1"), None).passed_fd(42).expect("another's"), None);
        assert_eq!(env(None, Some("1"), None).passed_fd(42).expect("no pid"), None);

        let err = env(Some("42"), Some("2"), Some("cilium-rs.socket:extra")).passed_fd(42).expect_err("two");
        let text = err.to_string();
        assert!(text.contains("LISTEN_FDS=2") && text.contains("LISTEN_FDNAMES=cilium-rs.socket:extra"), "{text}");
        let err = env(Some("42"), Some("3"), None).passed_fd(42).expect_err("three");
        assert!(err.to_string().starts_with("3 sockets were passed (LISTEN_FDS=3)"), "{err}");
        let err = env(Some("42"), Some("one"), None).passed_fd(42).expect_err("not a number");
        assert_eq!(err.to_string(), r#"LISTEN_FDS="one" is not a number"#);
        let err = env(Some("pid"), Some("1"), None).passed_fd(42).expect_err("not a number");
        assert_eq!(err.to_string(), r#"LISTEN_PID="pid" is not a number"#);
    }

    fn refusal(socket: BorrowedFd<'_>) -> String {
        check_listener(7, socket).expect_err("refused").to_string()
    }

    #[test]
    fn only_a_listening_unix_stream_socket_is_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = UnixListener::bind(dir.path().join("ok.sock")).expect("bind");
        check_listener(7, listener.as_fd()).expect("a listening unix stream socket");

        let (stream, _peer) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        assert!(refusal(stream.as_fd()).contains("descriptor 7 is a unix stream socket that is not listening"));
        let (datagram, _peer) = std::os::unix::net::UnixDatagram::pair().expect("socketpair");
        assert!(refusal(datagram.as_fd()).contains("is a datagram/unix socket"), "{}", refusal(datagram.as_fd()));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", 0)).expect("udp");
        assert!(refusal(udp.as_fd()).contains("is a UDP/IPv4 socket"), "{}", refusal(udp.as_fd()));
        let tcp = std::net::TcpListener::bind(("::1", 0)).expect("tcp");
        assert!(refusal(tcp.as_fd()).contains("is a TCP/IPv6 socket"), "{}", refusal(tcp.as_fd()));
        let file = tempfile::tempfile().expect("file");
        assert!(refusal(file.as_fd()).contains("is not a socket"), "{}", refusal(file.as_fd()));
        let text = refusal(file.as_fd());
        assert!(text.ends_with("not a listening unix stream socket (LISTEN_FDS=1 passes the plugin socket)"), "{text}");
    }

    #[test]
    fn a_claimed_descriptor_is_checked_and_closed_on_exec() {
        // No descriptor has this number: the table is never that large.
        // SAFETY: nothing owns a descriptor that is not open.
        let err = unsafe { claim(RawFd::MAX) }.expect_err("not open");
        assert!(err.to_string().contains("is not open"), "{err}");

        let udp = std::net::UdpSocket::bind(("127.0.0.1", 0)).expect("udp");
        // SAFETY: the test owns `udp`; a refused claim does not take it (it is dropped below).
        let err = unsafe { claim(udp.as_raw_fd()) }.expect_err("udp");
        assert!(err.to_string().contains("UDP/IPv4"), "{err}");
        drop(udp);

        let dir = tempfile::tempdir().expect("tempdir");
        let fd = UnixListener::bind(dir.path().join("inherited.sock")).expect("bind").into_raw_fd();
        // As a service manager passes it: without close-on-exec.
        // SAFETY: the test owns `fd`; F_SETFD only changes its flags.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
        // SAFETY: the test gave up ownership of `fd` with into_raw_fd.
        let listener = unsafe { claim(fd) }.expect("claimed");
        assert_eq!(listener.as_raw_fd(), fd);
        // SAFETY: F_GETFD only reads the flags of the listener's open descriptor.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "close-on-exec set");
    }
}
