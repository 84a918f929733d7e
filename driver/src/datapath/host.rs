//! What the socket programs need from the host: the cgroup v2 root they attach to (mounted by
//! the daemon when the system has none) and the cookie of the host's network namespace.

use std::io;
use std::path::{Path, PathBuf};

/// Where the daemon mounts cgroup v2 when nothing else has.
const OWN_MOUNT: &str = "/run/cilium-rs/cgroup2";

/// The mount point of the cgroup v2 hierarchy's root (the root cgroup holds every process),
/// mounting one at /run/cilium-rs/cgroup2 when there is none (a host on cgroup v1 only, or a
/// container that sees only its own cgroup: a managed plugin bind-mounts the host's
/// /sys/fs/cgroup instead, since mounting takes CAP_SYS_ADMIN).
pub fn cgroup2_root() -> io::Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    if let Some(path) = cgroup2_mount(&mountinfo) {
        return Ok(path);
    }
    let path = Path::new(OWN_MOUNT);
    std::fs::create_dir_all(path)?;
    nix::mount::mount(Some("cgroup2"), path, Some("cgroup2"), nix::mount::MsFlags::empty(), None::<&str>).map_err(
        |e| {
            io::Error::other(format!(
                "no cgroup v2 root is mounted, and mounting one at {OWN_MOUNT} failed: {e} \
                 (in a container, bind-mount the host's /sys/fs/cgroup)"
            ))
        },
    )?;
    Ok(path.to_path_buf())
}

/// The first mount point in a `/proc/self/mountinfo` text of a cgroup2 hierarchy's root; a
/// mount of a cgroup below it (what a container is given of its own) does not count.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        let fstype = rest.split_whitespace().next()?;
        let mut fields = fields.split_whitespace();
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&digits, 8) {
                Ok(byte) => out.push(char::from(byte)),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&digits);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux 5.14).
pub fn netns_cookie() -> io::Result<u64> {
    let socket = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the descriptor is open for the duration of the call, and `cookie`/`len` point to
    // writable memory of the size passed.
    let ret = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_among_v1_ones() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                      27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), None);
        // A container's own cgroup, then the host's root bind-mounted over it.
        let plugin = "30 29 0:23 /docker/plugins/5aa4 /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n\
                      31 30 0:23 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(plugin), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("30 29 0:23 /docker/plugins/5aa4 /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n"), None);
        assert_eq!(
            cgroup2_mount("26 25 0:23 / /mnt/my\\040cgroup rw - cgroup2 cgroup2 rw\n"),
            Some(PathBuf::from("/mnt/my cgroup"))
        );
    }
}
