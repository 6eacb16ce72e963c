//! Where a worker listens: a TCP address, or a Unix-domain socket.
//!
//! uvicorn and gunicorn can listen on a socket file (`--uds`, `--bind unix:`), and in a pod
//! a socket in a shared `emptyDir` skips the TCP stack on both sides of every request. The
//! policy names one as `unix:/run/app/w1.sock`; probes, ejection, the limiter and hedging
//! treat both kinds alike.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

/// Longest socket path the kernel takes (`sun_path` is 108 bytes, its NUL included).
pub const MAX_UNIX_PATH: usize = 107;

/// A worker's address, as the policy names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WorkerAddr {
    /// `127.0.0.1:8001`.
    Tcp(SocketAddr),
    /// `unix:/run/app/w1.sock`: an absolute path to a socket file.
    Unix(String),
}

/// Why a worker address was refused (the policy loader adds file, line and key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerAddrError {
    #[error("`{0}` is neither an ip:port address nor unix:/absolute/path")]
    Malformed(String),
    #[error("`unix:{0}`: the socket path must be absolute")]
    RelativePath(String),
    #[error("`unix:{path}`: the socket path is {len} bytes, over the {MAX_UNIX_PATH} a Unix socket address holds")]
    PathTooLong { path: String, len: usize },
}

impl FromStr for WorkerAddr {
    type Err = WorkerAddrError;

    fn from_str(text: &str) -> Result<WorkerAddr, WorkerAddrError> {
        let Some(path) = text.strip_prefix("unix:") else {
            return text
                .parse()
                .map(WorkerAddr::Tcp)
                .map_err(|_| WorkerAddrError::Malformed(text.into()));
        };
        if !Path::new(path).is_absolute() {
            return Err(WorkerAddrError::RelativePath(path.into()));
        }
        if path.len() > MAX_UNIX_PATH {
            return Err(WorkerAddrError::PathTooLong {
                path: path.into(),
                len: path.len(),
            });
        }
        Ok(WorkerAddr::Unix(path.into()))
    }
}

impl fmt::Display for WorkerAddr {
    /// As the policy writes it: what the status page, the logs and errors show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerAddr::Tcp(addr) => addr.fmt(f),
            WorkerAddr::Unix(path) => write!(f, "unix:{path}"),
        }
    }
}

impl From<SocketAddr> for WorkerAddr {
    fn from(addr: SocketAddr) -> WorkerAddr {
        WorkerAddr::Tcp(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_unix_addresses_parse_and_print_as_written() {
        for text in ["127.0.0.1:8001", "[::1]:9000", "unix:/run/app/w1.sock"] {
            let addr: WorkerAddr = text.parse().unwrap();
            assert_eq!(addr.to_string(), text);
        }
        assert_eq!(
            "unix:/run/app/w1.sock".parse::<WorkerAddr>().unwrap(),
            WorkerAddr::Unix("/run/app/w1.sock".into())
        );
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        assert_eq!(
            "localhost:8001".parse::<WorkerAddr>(),
            Err(WorkerAddrError::Malformed("localhost:8001".into()))
        );
        assert_eq!(
            "unix:run/w1.sock".parse::<WorkerAddr>(),
            Err(WorkerAddrError::RelativePath("run/w1.sock".into()))
        );
        assert!(matches!(
            "unix:".parse::<WorkerAddr>(),
            Err(WorkerAddrError::RelativePath(_))
        ));
        let long = format!("unix:/{}", "a".repeat(MAX_UNIX_PATH));
        assert!(matches!(
            long.parse::<WorkerAddr>(),
            Err(WorkerAddrError::PathTooLong { len: 108, .. })
        ));
        let longest = format!("unix:/{}", "a".repeat(MAX_UNIX_PATH - 1));
        assert!(longest.parse::<WorkerAddr>().is_ok());
    }
}
