//! All open client connections of the proxy, against `[listen] max_connections` (HAProxy's
//! `maxconn`). Past the cap a new connection is refused at once rather than accepted into a
//! process about to run out of file descriptors, where it would fail later, slower, and make
//! the connect to a worker fail too.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// The proxy's open client connections.
#[derive(Debug, Default)]
pub struct OpenConnections {
    open: AtomicU32,
    refused: AtomicU64,
}

impl OpenConnections {
    pub fn new() -> Arc<OpenConnections> {
        Arc::new(OpenConnections::default())
    }

    /// Counts a new connection unless `cap` are open; then `Err(open)` (and the refusal is
    /// counted).
    pub fn try_open(self: &Arc<Self>, cap: u32) -> Result<ConnectionPermit, u32> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= cap {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(before);
        }
        Ok(ConnectionPermit {
            conns: self.clone(),
        })
    }

    /// Client connections open now.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections refused at the cap since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// One connection's place under the cap, given back when the connection ends.
#[derive(Debug)]
pub struct ConnectionPermit {
    conns: Arc<OpenConnections>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.conns.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_and_closing_frees_a_place() {
        let c = OpenConnections::new();
        let a = c.try_open(2).unwrap();
        let _b = c.try_open(2).unwrap();
        assert_eq!(c.try_open(2).unwrap_err(), 2);
        assert_eq!(c.open(), 2);
        assert_eq!(c.refused(), 1);
        drop(a);
        assert_eq!(c.open(), 1);
        assert!(c.try_open(2).is_ok());
    }

    #[test]
    fn concurrent_opens_never_pass_the_cap() {
        let c = OpenConnections::new();
        let held = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        if let Ok(p) = c.try_open(5) {
                            assert!(c.open() <= 5);
                            held.lock().unwrap().push(p);
                        }
                    }
                });
            }
        });
        assert_eq!(held.lock().unwrap().len(), 5);
        assert_eq!(c.refused(), 8 * 1000 - 5);
    }
}
