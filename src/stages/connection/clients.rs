//! Open connections per client IP, so that one client cannot take every connection the
//! proxy will hold. Counted per TCP peer address: sloguard is a sidecar, so its peers are
//! the pod's own clients (or a node-local proxy), not an X-Forwarded-For chain.
//!
//! A connection takes a [`ClientPermit`] when it is accepted and gives it back when it
//! closes, whatever way it closes (RAII). Entries are removed at zero, so the map holds only
//! the clients connected now.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Locks are per shard of addresses, taken once when a connection opens and once when it
/// closes, never per request.
const SHARDS: usize = 16;

/// Open connections per client IP.
#[derive(Debug, Default)]
pub struct ClientConnections {
    shards: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
}

impl ClientConnections {
    pub fn new() -> Arc<ClientConnections> {
        Arc::new(ClientConnections::default())
    }

    fn shard(&self, ip: &IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        let bits = match ip {
            IpAddr::V4(a) => u64::from(a.to_bits()),
            IpAddr::V6(a) => {
                let b = a.to_bits();
                (b as u64) ^ ((b >> 64) as u64)
            }
        };
        let i = (bits ^ (bits >> 8) ^ (bits >> 16)) as usize % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a new connection from `ip` unless it already has `cap` open; then
    /// `Err(open)`. An IPv4 address seen as IPv6 (`::ffff:a.b.c.d`) is the same client.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr, cap: u32) -> Result<ClientPermit, u32> {
        let ip = ip.to_canonical();
        let mut map = self.shard(&ip);
        match map.entry(ip) {
            Entry::Occupied(e) if *e.get() >= cap => return Err(*e.get()),
            Entry::Occupied(mut e) => *e.get_mut() += 1,
            Entry::Vacant(_) if cap == 0 => return Err(0),
            Entry::Vacant(e) => {
                e.insert(1);
            }
        }
        Ok(ClientPermit {
            conns: self.clone(),
            ip,
        })
    }

    fn close(&self, ip: &IpAddr) {
        let mut map = self.shard(ip);
        if let Entry::Occupied(mut e) = map.entry(*ip) {
            if *e.get() <= 1 {
                e.remove();
            } else {
                *e.get_mut() -= 1;
            }
        }
    }

    /// Connections open now from `ip`.
    pub fn open(&self, ip: IpAddr) -> u32 {
        let ip = ip.to_canonical();
        self.shard(&ip).get(&ip).copied().unwrap_or(0)
    }

    /// Client IPs with at least one connection open.
    pub fn clients(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// One open connection of one client; dropping it closes it in the count.
#[derive(Debug)]
pub struct ClientPermit {
    conns: Arc<ClientConnections>,
    ip: IpAddr,
}

impl ClientPermit {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        self.conns.close(&self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_connection_over_the_cap_is_refused_until_one_closes() {
        let c = ClientConnections::new();
        let a = c.try_open(ip("127.0.0.1"), 2).unwrap();
        let _b = c.try_open(ip("127.0.0.1"), 2).unwrap();
        assert_eq!(c.try_open(ip("127.0.0.1"), 2).unwrap_err(), 2);
        // Another client is counted apart.
        let _other = c.try_open(ip("10.1.2.3"), 2).unwrap();
        drop(a);
        assert_eq!(c.open(ip("127.0.0.1")), 1);
        let _c = c.try_open(ip("127.0.0.1"), 2).unwrap();
        assert_eq!(c.open(ip("127.0.0.1")), 2);
    }

    #[test]
    fn entries_go_at_zero_so_the_map_only_holds_connected_clients() {
        let c = ClientConnections::new();
        let permits: Vec<_> = (0..100)
            .map(|i| {
                c.try_open(ip(&format!("10.0.{}.{}", i / 10, i % 10)), 1)
                    .unwrap()
            })
            .collect();
        assert_eq!(c.clients(), 100);
        drop(permits);
        assert_eq!(c.clients(), 0);
        // A refusal leaves nothing behind either.
        assert_eq!(c.try_open(ip("10.9.9.9"), 0).unwrap_err(), 0);
        assert_eq!(c.clients(), 0);
    }

    #[test]
    fn an_ipv4_client_seen_over_ipv6_is_the_same_client() {
        let c = ClientConnections::new();
        let p = c.try_open(ip("::ffff:192.0.2.7"), 1).unwrap();
        assert_eq!(p.ip(), ip("192.0.2.7"));
        assert!(c.try_open(ip("192.0.2.7"), 1).is_err());
        assert!(c.try_open(ip("2001:db8::7"), 1).is_ok());
    }

    #[test]
    fn concurrent_opens_never_pass_the_cap_and_leave_no_entries() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let c = ClientConnections::new();
        let max_seen = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                let max_seen = max_seen.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        if let Ok(p) = c.try_open(ip("127.0.0.1"), 3) {
                            max_seen.fetch_max(c.open(p.ip()), Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(max_seen.load(Ordering::Relaxed) <= 3);
        assert_eq!(c.clients(), 0);
    }
}
