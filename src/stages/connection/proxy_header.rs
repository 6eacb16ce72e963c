//! The PROXY protocol header (HAProxy's spec, versions 1 and 2) that a load balancer sends
//! before the request, naming the client it accepted the connection from. Pure: the I/O
//! edge (`proxy::conn`) feeds the bytes read so far until the header is whole.
//!
//! Version 1 is one text line (`PROXY TCP4 198.51.100.4 10.0.0.1 5555 8080\r\n`, at most
//! 107 bytes); version 2 a 16-byte binary prefix (a 12-byte signature, version and command,
//! address family, length) and the addresses. `LOCAL` (v2) and `UNKNOWN` (v1) carry no
//! client: the connection is the balancer's own (a health check), and its peer stands.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Longest v1 line, CRLF included (the spec's bound).
const V1_MAX: usize = 107;

/// Longest v2 header accepted, TLVs included (AWS NLB, GCP and Azure add well under 1 KiB).
pub const V2_MAX: usize = 4096;

/// What the bytes read so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A header may still be arriving: read more.
    Incomplete,
    /// A whole header of `len` bytes; `client` is `None` for `LOCAL` / `UNKNOWN`.
    Header {
        client: Option<SocketAddr>,
        len: usize,
    },
    /// Not a PROXY header, or a broken one.
    Invalid(&'static str),
}

/// Parses the start of a connection.
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    if buf[0] == b'P' {
        return parse_v1(buf);
    }
    if buf[0] == b'\r' {
        return parse_v2(buf);
    }
    Parsed::Invalid("the connection does not start with a PROXY protocol header")
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let prefix = b"PROXY ";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return Parsed::Invalid("the connection does not start with a PROXY protocol header");
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() < V1_MAX {
            Parsed::Incomplete
        } else {
            Parsed::Invalid("PROXY v1 line longer than 107 bytes")
        };
    };
    if end + 2 > V1_MAX {
        return Parsed::Invalid("PROXY v1 line longer than 107 bytes");
    }
    let Ok(line) = std::str::from_utf8(&buf[prefix.len()..end]) else {
        return Parsed::Invalid("PROXY v1 line is not text");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    match fields.as_slice() {
        ["UNKNOWN", ..] => Parsed::Header { client: None, len },
        [proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip = match (*proto, src.parse::<IpAddr>()) {
                ("TCP4", Ok(ip @ IpAddr::V4(_))) | ("TCP6", Ok(ip @ IpAddr::V6(_))) => ip,
                _ => return Parsed::Invalid("PROXY v1 source address does not match its family"),
            };
            match sport.parse::<u16>() {
                Ok(port) => Parsed::Header {
                    client: Some(SocketAddr::new(ip, port)),
                    len,
                },
                Err(_) => Parsed::Invalid("PROXY v1 source port is not a port"),
            }
        }
        _ => Parsed::Invalid("PROXY v1 line is not TCP4, TCP6 or UNKNOWN with 4 addresses"),
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Parsed::Invalid("the connection does not start with a PROXY protocol header");
    }
    if buf.len() < 16 {
        return Parsed::Incomplete;
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Parsed::Invalid("PROXY v2 header with a version other than 2");
    }
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if len > V2_MAX {
        return Parsed::Invalid("PROXY v2 header longer than 4096 bytes");
    }
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    let addr = &buf[16..len];
    let client = match (command, buf[13] >> 4) {
        (0, _) => None, // LOCAL: the balancer's own connection
        (1, 1) if addr.len() >= 12 => {
            let ip = Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([addr[8], addr[9]]),
            ))
        }
        (1, 2) if addr.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addr[..16]);
            Some(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                u16::from_be_bytes([addr[32], addr[33]]),
            ))
        }
        (1, 1 | 2) => return Parsed::Invalid("PROXY v2 addresses shorter than their family"),
        (1, _) => None, // AF_UNSPEC or AF_UNIX: no IP client to name
        _ => return Parsed::Invalid("PROXY v2 command is neither LOCAL nor PROXY"),
    };
    Parsed::Header { client, len }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 header for a TCP4 client `src:sport`.
    pub fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([0x21, 0x11, 0, 12]);
        h.extend(src);
        h.extend([10, 0, 0, 1]);
        h.extend(sport.to_be_bytes());
        h.extend(8080u16.to_be_bytes());
        h
    }

    #[test]
    fn v1_names_the_client_and_its_length() {
        let raw = b"PROXY TCP4 198.51.100.4 10.0.0.1 5555 8080\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(raw),
            Parsed::Header {
                client: Some("198.51.100.4:5555".parse().unwrap()),
                len: 44
            }
        );
        let raw = b"PROXY TCP6 2001:db8::7 2001:db8::1 443 8080\r\n";
        assert!(matches!(parse(raw), Parsed::Header { client: Some(a), .. } if a.port() == 443));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                client: None,
                len: 15
            }
        );
    }

    #[test]
    fn a_header_arriving_in_pieces_is_incomplete_until_whole() {
        let raw = b"PROXY TCP4 198.51.100.4 10.0.0.1 5555 8080\r\n";
        for cut in 0..raw.len() {
            assert_eq!(parse(&raw[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        let v2 = v2_tcp4([198, 51, 100, 4], 5555);
        for cut in 0..v2.len() {
            assert_eq!(parse(&v2[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn v2_names_the_client_and_local_names_none() {
        let mut raw = v2_tcp4([198, 51, 100, 4], 5555);
        let len = raw.len();
        raw.extend(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&raw),
            Parsed::Header {
                client: Some("198.51.100.4:5555".parse().unwrap()),
                len
            }
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local),
            Parsed::Header {
                client: None,
                len: 16
            }
        );
    }

    #[test]
    fn anything_else_is_invalid() {
        for raw in [
            &b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"[..],
            b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 99999 2\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
            b"\r\n\r\n\0\r\nQUIX\n\x21\x11\0\x0c",
        ] {
            assert!(matches!(parse(raw), Parsed::Invalid(_)), "{raw:?}");
        }
        assert!(matches!(parse(&[b'P'; 200]), Parsed::Invalid(_)));
        let mut v1 = b"PROXY ".to_vec();
        v1.extend([b'x'; 120]);
        assert!(matches!(parse(&v1), Parsed::Invalid(_)));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend([0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&huge), Parsed::Invalid(_)));
        let mut v3 = V2_SIGNATURE.to_vec();
        v3.extend([0x31, 0x11, 0, 12]);
        assert!(matches!(parse(&v3), Parsed::Invalid(_)));
    }
}
