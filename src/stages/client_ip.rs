//! Who the client is: the TCP peer, unless the peer is a trusted proxy, in which case the
//! right-most address in `X-Forwarded-For` that is not itself a trusted proxy. Pure.
//!
//! Each proxy appends the address it received the request from, so the right end of the
//! header is written by the proxies nearest to us and the left end by whoever sent the
//! request first, the client included: anything a client writes there arrives first, on
//! the left. Walking from the right and stopping at the first address we do not trust is
//! the only reading a client cannot forge (the left-most entry is whatever it wrote).
//!
//! The resolved address keys `client_ip` rate limits, is logged, and leads the
//! `X-Forwarded-For` sent to the workers ([`ClientIp::forwarded_for`]).

use std::net::IpAddr;

use ipnet::IpNet;

/// Most `X-Forwarded-For` entries walked; a longer chain resolves to the last one reached
/// (bounded work per request whatever a client sends).
pub const MAX_HOPS: usize = 32;

/// `[listen] trusted_proxies`: peers whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(nets)
    }

    /// Parses one entry: a CIDR (`10.0.0.0/8`, `fd00::/8`) or a plain address (one host).
    pub fn parse_entry(text: &str) -> Result<IpNet, String> {
        let t = text.trim();
        t.parse::<IpNet>()
            .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
            .map(|n| n.trunc())
            .map_err(|_| format!("`{t}` is not an address or CIDR (e.g. 10.0.0.0/8)"))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The CIDRs, for the status page.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|n| n.to_string()).collect()
    }
}

/// The client of one request, and the trusted proxies it came through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIp {
    /// The resolved client.
    pub ip: IpAddr,
    /// The addresses between the client and us, nearest to the client first: the trusted
    /// entries of `X-Forwarded-For` to the client's right, then the TCP peer (when the
    /// client is not the peer itself).
    pub via: Vec<IpAddr>,
}

impl ClientIp {
    /// The `X-Forwarded-For` value to send upstream: the client, then the trusted proxies
    /// it came through. What a client wrote to the left of it is dropped, so a worker reading
    /// the left-most entry (as most frameworks do) gets the resolved client, never a forgery.
    pub fn forwarded_for(&self) -> String {
        let mut out = self.ip.to_string();
        for hop in &self.via {
            out.push_str(", ");
            out.push_str(&hop.to_string());
        }
        out
    }
}

/// Resolves the client of a request from its TCP `peer` and its `X-Forwarded-For` header
/// values (in the order they arrived; several header lines are one list).
///
/// - peer not trusted (or nothing trusted): the peer; the header is ignored, whatever it says;
/// - peer trusted: walk the entries right to left, skipping trusted ones; the first
///   untrusted one is the client;
/// - every entry trusted, or no header: the left-most address reached (the peer if none);
/// - an entry that is not an address (garbage, `unknown`, a hidden `_name`): the walk stops
///   and the last address reached is the client, so a client cannot skip past its own entry
///   by writing junk to the right of it.
pub fn resolve<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &TrustedProxies,
) -> ClientIp {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !trusted.contains(peer) {
        return ClientIp {
            ip: peer,
            via: vec![],
        };
    }
    let entries: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let mut ip = peer;
    let mut via = vec![];
    for entry in entries.iter().rev().take(MAX_HOPS) {
        let Some(next) = parse_entry(entry) else {
            break;
        };
        via.push(ip);
        ip = next;
        if !trusted.contains(ip) {
            break;
        }
    }
    via.reverse();
    ClientIp { ip, via }
}

/// One `X-Forwarded-For` entry: an address, with or without a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            list.iter()
                .map(|t| TrustedProxies::parse_entry(t).unwrap())
                .collect(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_its_header_says() {
        let t = trusted(&["10.0.0.0/8"]);
        let c = resolve(ip("203.0.113.9"), ["1.1.1.1, 10.0.0.5"], &t);
        assert_eq!(c.ip, ip("203.0.113.9"));
        assert_eq!(c.forwarded_for(), "203.0.113.9");
        // Nothing trusted at all: the same.
        let c = resolve(ip("10.0.0.5"), ["1.1.1.1"], &TrustedProxies::default());
        assert_eq!(c.ip, ip("10.0.0.5"));
    }

    #[test]
    fn through_trusted_proxies_the_right_most_untrusted_entry_is_the_client() {
        let t = trusted(&["10.0.0.0/8", "192.168.1.1"]);
        // The client forged "6.6.6.6" on the left; the ingress (10.0.0.7) appended the real
        // peer 198.51.100.4, and the node proxy (192.168.1.1) appended the ingress.
        let c = resolve(ip("192.168.1.1"), ["6.6.6.6, 198.51.100.4", "10.0.0.7"], &t);
        assert_eq!(c.ip, ip("198.51.100.4"));
        assert_eq!(c.via, vec![ip("10.0.0.7"), ip("192.168.1.1")]);
        assert_eq!(c.forwarded_for(), "198.51.100.4, 10.0.0.7, 192.168.1.1");
    }

    #[test]
    fn a_trusted_peer_without_a_header_is_the_client() {
        let t = trusted(&["127.0.0.1/32"]);
        let c = resolve(ip("127.0.0.1"), [], &t);
        assert_eq!(
            c,
            ClientIp {
                ip: ip("127.0.0.1"),
                via: vec![]
            }
        );
    }

    #[test]
    fn when_every_entry_is_trusted_the_left_most_is_the_client() {
        let t = trusted(&["10.0.0.0/8"]);
        let c = resolve(ip("10.0.0.1"), ["10.0.0.3, 10.0.0.2"], &t);
        assert_eq!(c.ip, ip("10.0.0.3"));
        assert_eq!(c.forwarded_for(), "10.0.0.3, 10.0.0.2, 10.0.0.1");
    }

    #[test]
    fn junk_stops_the_walk_at_the_last_address_reached() {
        let t = trusted(&["10.0.0.0/8"]);
        // A client cannot hide behind junk written right of a forged trusted address.
        let c = resolve(ip("10.0.0.1"), ["10.9.9.9, unknown, 10.0.0.2"], &t);
        assert_eq!(c.ip, ip("10.0.0.2"));
        let c = resolve(ip("10.0.0.1"), ["garbage"], &t);
        assert_eq!(c.ip, ip("10.0.0.1"));
    }

    #[test]
    fn ports_ipv6_and_mapped_addresses_are_read() {
        let t = trusted(&["10.0.0.0/8", "fd00::/8"]);
        let c = resolve(ip("fd00::1"), ["[2001:db8::7]:443"], &t);
        assert_eq!(c.ip, ip("2001:db8::7"));
        let c = resolve(ip("::ffff:10.0.0.1"), ["198.51.100.4:5555"], &t);
        assert_eq!(c.ip, ip("198.51.100.4"));
        assert_eq!(c.via, vec![ip("10.0.0.1")]);
    }

    #[test]
    fn a_long_chain_is_walked_at_most_max_hops() {
        let t = trusted(&["10.0.0.0/8"]);
        let chain = vec!["10.0.0.9"; 1000].join(", ");
        let c = resolve(ip("10.0.0.1"), [chain.as_str()], &t);
        assert_eq!(c.via.len(), MAX_HOPS);
    }

    #[test]
    fn entries_parse_as_cidrs_or_hosts() {
        assert_eq!(
            TrustedProxies::parse_entry("10.1.2.3/8")
                .unwrap()
                .to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            TrustedProxies::parse_entry("127.0.0.1")
                .unwrap()
                .to_string(),
            "127.0.0.1/32"
        );
        assert!(TrustedProxies::parse_entry("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse_entry("localhost").is_err());
    }
}
