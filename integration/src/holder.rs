//! A socket holder, as systemd's socket and service units are together: it binds the daemon's
//! plugin socket itself, hands it to every daemon it starts (sd_listen_fds: fd 3,
//! `LISTEN_FDS=1`, `LISTEN_PID`), listens on a `NOTIFY_SOCKET` for their notifications, and
//! starts a daemon again [`RESTART_DELAY`] after it died unasked (`Restart=on-failure`). While
//! no daemon runs, dockerd's connects wait in the socket's backlog.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::Launch;

/// How long after a daemon died the next one starts (systemd's `RestartSec=`, give or take).
pub const RESTART_DELAY: Duration = Duration::from_millis(1500);

pub struct Holder {
    pub socket: PathBuf,
    shared: Arc<Shared>,
    notify: UnixDatagram,
    notifications: Mutex<Vec<String>>,
    thread: Option<JoinHandle<()>>,
    _listener: Arc<UnixListener>,
    _dir: tempfile::TempDir,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    child: Option<Child>,
    stop: bool,
    starts: u32,
    exits: Vec<ExitStatus>,
    /// Why the holder gave up starting daemons.
    failed: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Holder {
    /// Binds `socket` (mode 0660, as the socket unit) and starts the first daemon.
    pub fn start(socket: &Path, launch: Launch) -> Result<Holder> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).with_context(|| format!("bind {}", socket.display()))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
        let listener = Arc::new(listener);
        let dir = tempfile::Builder::new().prefix("crs-holder-").tempdir()?;
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path)?;
        notify.set_nonblocking(true)?;
        let shared = Arc::new(Shared::default());
        let thread = {
            let (shared, listener) = (shared.clone(), listener.clone());
            std::thread::spawn(move || supervise(&shared, &listener, &notify_path, &launch))
        };
        Ok(Holder {
            socket: socket.to_owned(),
            shared,
            notify,
            notifications: Mutex::new(Vec::new()),
            thread: Some(thread),
            _listener: listener,
            _dir: dir,
        })
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.shared.lock().child.as_ref().map(Child::id)
    }

    /// How many daemons were started so far.
    pub fn starts(&self) -> u32 {
        self.shared.lock().starts
    }

    /// The exit statuses of the daemons that ended, in order.
    pub fn exits(&self) -> Vec<ExitStatus> {
        self.shared.lock().exits.clone()
    }

    /// Every notification received so far (`READY=1`, `STOPPING=1`, ...), in order.
    pub fn notifications(&self) -> Vec<String> {
        let mut all = self.notifications.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.notify.recv(&mut buf) {
            all.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned());
        }
        all.clone()
    }

    /// Waits until `count` daemons in all have said `READY=1`.
    pub fn wait_ready(&self, count: usize, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.notifications().iter().filter(|n| n.as_str() == "READY=1").count() >= count {
                return Ok(());
            }
            if let Some(why) = &self.shared.lock().failed {
                bail!("the holder stopped starting daemons: {why}");
            }
            if start.elapsed() > timeout {
                bail!(
                    "no READY=1 from daemon start {count} after {timeout:?}; notifications {:?}, exits {:?}",
                    self.notifications(),
                    self.exits()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to the running daemon, as a crash would; returns once it is gone (its sockets
    /// closed). The holder starts another [`RESTART_DELAY`] after.
    pub fn kill9(&self) -> Result<()> {
        let ended = {
            let mut state = self.shared.lock();
            let child = state.child.as_mut().context("no daemon runs")?;
            child.kill().context("kill -9 the daemon")?;
            state.exits.len()
        };
        let start = Instant::now();
        while self.shared.lock().exits.len() == ended {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("the daemon outlived SIGKILL for 10 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Stops the holder: SIGTERM to the running daemon, which is not started again; returns
    /// its exit code (`None` when none ran or a signal ended it).
    pub fn stop(&mut self) -> Result<Option<i32>> {
        let Some(thread) = self.thread.take() else { return Ok(None) };
        let running = {
            let mut state = self.shared.lock();
            state.stop = true;
            let running = state.exits.len();
            if let Some(child) = &state.child {
                let pid = libc::pid_t::try_from(child.id()).context("pid")?;
                // SAFETY: kill has no memory preconditions; `child` is not reaped yet (only the
                // supervising thread reaps, under this lock), so the pid is still the daemon's.
                if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                    bail!("SIGTERM the daemon: {}", std::io::Error::last_os_error());
                }
            }
            self.shared.changed.notify_all();
            state.child.is_some().then_some(running)
        };
        let start = Instant::now();
        while !thread.is_finished() {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.kill9();
                bail!("the daemon ignored SIGTERM for 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        thread.join().map_err(|_| anyhow::anyhow!("the holder's thread panicked"))?;
        Ok(running.and_then(|index| self.exits().get(index).and_then(ExitStatus::code)))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Starts daemons until told to stop, one at a time, each `RESTART_DELAY` after the last died.
fn supervise(shared: &Shared, listener: &UnixListener, notify: &Path, launch: &Launch) {
    loop {
        {
            let mut state = shared.lock();
            if state.stop {
                return;
            }
            let started = activated(launch, listener.as_raw_fd(), notify);
            match started {
                Ok(child) => {
                    state.child = Some(child);
                    state.starts += 1;
                }
                Err(e) => {
                    state.failed = Some(format!("{e:#}"));
                    return;
                }
            }
        }
        // Poll rather than block in wait(), so that a signal is only ever sent to an unreaped pid.
        loop {
            let mut state = shared.lock();
            let Some(child) = state.child.as_mut() else { return };
            match child.try_wait() {
                Ok(Some(status)) => {
                    state.child = None;
                    state.exits.push(status);
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    state.failed = Some(format!("wait for the daemon: {e}"));
                    return;
                }
            }
            drop(state);
            std::thread::sleep(Duration::from_millis(10));
        }
        let state = shared.lock();
        let (state, _) = shared
            .changed
            .wait_timeout_while(state, RESTART_DELAY, |s| !s.stop)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.stop {
            return;
        }
    }
}

/// Spawns the daemon of `launch` with `listener` as its fd 3 under the sd_listen_fds
/// protocol, and `NOTIFY_SOCKET` set to `notify`.
fn activated(launch: &Launch, listener: RawFd, notify: &Path) -> Result<Child> {
    let mut command = activated_command(launch, listener)?;
    command.env("NOTIFY_SOCKET", notify);
    command.spawn().context("start the daemon through /bin/sh")
}

/// The command that starts `launch` with `fd` passed as its fd 3 under the sd_listen_fds
/// protocol: `LISTEN_FDS=1` and `LISTEN_PID` its own pid.
///
/// That pid is known only in the child, and setting a variable between fork and exec is not
/// safe in a multi-threaded process (a test), so the program starts through a shell that
/// sets `LISTEN_PID` to its own pid (`$$`) and then execs it: same process, same pid.
pub fn activated_command(launch: &Launch, fd: RawFd) -> Result<Command> {
    let mut shell = launch.command_through(Path::new("/bin/sh"), &["-c", r#"LISTEN_PID=$$ exec "$0" "$@""#])?;
    shell.env("LISTEN_FDS", "1").env_remove("LISTEN_FDNAMES").env_remove("NOTIFY_SOCKET");
    pass_as_fd3(&mut shell, fd);
    Ok(shell)
}

/// Makes `fd` the child's descriptor 3, without close-on-exec, as a service manager passes it.
pub fn pass_as_fd3(command: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs between fork and exec and calls only dup2 and fcntl, which are
    // async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            let ok = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) == 0 } else { libc::dup2(fd, 3) == 3 };
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}
