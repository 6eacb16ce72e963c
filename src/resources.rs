//! What the process itself can run out of: file descriptors, kernel memory, local ports.
//!
//! A shortage of ours must never be taken for a worker's fault. With the open-file limit at
//! 1024 and 2000 clients, `connect()` to healthy workers failed with `EMFILE`, the guard
//! counted those as the workers' connect failures and ejected and readmitted them over and
//! over. Here: the limit is raised at start (as nginx's `worker_rlimit_nofile` and HAProxy
//! do), the proxy derives its connection cap from it, and [`LocalShortage::of`] tells a
//! local failure apart so the proxy answers it as ours (503 `local_resources`) and leaves
//! the worker's health alone. Counts per cause are kept here for `/status` and the metrics (copied by the monitor).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use pingora::{Error, ErrorType};

/// File descriptors set aside from the proxy's connection cap: upstream probes, Redis, the
/// admin listener and its clients, log and policy files, the runtime's own.
pub const FD_RESERVE: u64 = 128;

/// The soft and hard `RLIMIT_NOFILE` before and after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub was: u64,
    pub now: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard one. Kubernetes and systemd commonly hand a
/// process 1024 soft and a much higher hard limit; a proxy needs two descriptors per proxied
/// request (client and worker) and the soft default is what ran out.
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid, exclusive pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let was = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one `rlimit` through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(FdLimit {
        was,
        now: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// The open-file soft limit now (`None` when unlimited or unreadable).
pub fn fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in `raise_fd_limit`.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    (ok && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// The default `[listen] max_connections` for an open-file limit: every client connection
/// may hold a worker connection too, so half of what is left after [`FD_RESERVE`] (HAProxy
/// derives its default `maxconn` from the limit the same way). At least 16.
pub fn default_max_connections(fd_limit: Option<u64>) -> u32 {
    match fd_limit {
        None => 1_000_000,
        Some(n) => (n.saturating_sub(FD_RESERVE) / 2).clamp(16, 1_000_000) as u32,
    }
}

/// A resource of this process or host that ran out, as opposed to a worker that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalShortage {
    /// `EMFILE`: this process's open-file limit.
    FileDescriptors,
    /// `ENFILE`: the host's open-file table.
    SystemFiles,
    /// `ENOMEM` / `ENOBUFS`: kernel memory for sockets.
    Memory,
    /// `EADDRNOTAVAIL`: no local port left to connect from.
    LocalPorts,
}

const SHORTAGES: [LocalShortage; 4] = [
    LocalShortage::FileDescriptors,
    LocalShortage::SystemFiles,
    LocalShortage::Memory,
    LocalShortage::LocalPorts,
];

impl LocalShortage {
    /// The shortage an OS error code names, if it names one.
    pub fn from_os_error(code: i32) -> Option<LocalShortage> {
        match code {
            libc::EMFILE => Some(LocalShortage::FileDescriptors),
            libc::ENFILE => Some(LocalShortage::SystemFiles),
            libc::ENOMEM | libc::ENOBUFS => Some(LocalShortage::Memory),
            libc::EADDRNOTAVAIL => Some(LocalShortage::LocalPorts),
            _ => None,
        }
    }

    /// The local shortage behind a Pingora error (a failed connect to a worker), if that is
    /// what it is. Pingora reports `EADDRNOTAVAIL` as a `BindError` and wraps the OS error
    /// of a socket it could not create as the root cause.
    pub fn of(e: &Error) -> Option<LocalShortage> {
        if matches!(e.etype(), ErrorType::BindError) {
            return Some(LocalShortage::LocalPorts);
        }
        e.root_cause()
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            .and_then(LocalShortage::from_os_error)
    }

    /// The label in `/status` and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LocalShortage::FileDescriptors => "file_descriptors",
            LocalShortage::SystemFiles => "system_files",
            LocalShortage::Memory => "memory",
            LocalShortage::LocalPorts => "local_ports",
        }
    }

    fn index(self) -> usize {
        SHORTAGES.iter().position(|s| *s == self).unwrap_or(0)
    }
}

static SHORTAGE_COUNTS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// Counts one local failure (one request that could not reach a worker because of it).
pub fn record(shortage: LocalShortage) {
    SHORTAGE_COUNTS[shortage.index()].fetch_add(1, Ordering::Relaxed);
}

/// Local failures since start, per cause (every cause listed, zeros included).
pub fn counts() -> Vec<(&'static str, u64)> {
    SHORTAGES
        .iter()
        .map(|s| {
            (
                s.as_str(),
                SHORTAGE_COUNTS[s.index()].load(Ordering::Relaxed),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_of_ours_are_told_apart_from_a_worker_refusing() {
        assert_eq!(
            LocalShortage::from_os_error(libc::EMFILE),
            Some(LocalShortage::FileDescriptors)
        );
        assert_eq!(
            LocalShortage::from_os_error(libc::EADDRNOTAVAIL),
            Some(LocalShortage::LocalPorts)
        );
        assert_eq!(LocalShortage::from_os_error(libc::ECONNREFUSED), None);
        assert_eq!(LocalShortage::from_os_error(libc::ETIMEDOUT), None);
    }

    #[test]
    fn pingora_errors_carry_the_os_error_as_root_cause() {
        let emfile = Error::because(
            ErrorType::SocketError,
            "failed to create socket",
            io::Error::from_raw_os_error(libc::EMFILE),
        );
        assert_eq!(
            LocalShortage::of(&emfile),
            Some(LocalShortage::FileDescriptors)
        );
        let refused = Error::because(
            ErrorType::ConnectRefused,
            "connect",
            io::Error::from_raw_os_error(libc::ECONNREFUSED),
        );
        assert_eq!(LocalShortage::of(&refused), None);
        let no_port = Error::explain(ErrorType::BindError, "no port");
        assert_eq!(LocalShortage::of(&no_port), Some(LocalShortage::LocalPorts));
    }

    #[test]
    fn the_default_cap_leaves_a_reserve_and_a_worker_fd_per_client() {
        assert_eq!(default_max_connections(Some(1024)), (1024 - 128) / 2);
        assert_eq!(default_max_connections(Some(100)), 16);
        assert_eq!(default_max_connections(None), 1_000_000);
        assert_eq!(
            default_max_connections(Some(1 << 20)),
            (1_048_576 - 128) / 2
        );
    }

    #[test]
    fn raising_the_limit_never_lowers_it() {
        let before = fd_limit();
        let lim = raise_fd_limit().unwrap();
        assert!(lim.now >= lim.was);
        assert!(lim.now <= lim.hard);
        if let Some(b) = before {
            assert!(lim.now >= b);
        }
    }
}
