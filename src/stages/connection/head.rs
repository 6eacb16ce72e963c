//! Where a request head ends, and whether a connection is reading one. Pure: the I/O edge
//! feeds it the bytes each read returns; it says when to arm and disarm the head deadline.
//!
//! This runs on every read of every head, the proxy's hottest path, so the usual case costs
//! a few compares: a head read whole ends with an empty line (O(1) check), else a SIMD
//! substring search finds one. Only a head that spans reads, or uses bare-LF line ends,
//! goes through the byte-at-a-time machine.

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// An empty line after CRLF- or LF-ended content: the end of a head in the usual case.
static EMPTY_LINE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\r\n"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Scan {
    /// Nothing but CR/LF so far. httparse skips empty lines before the request line
    /// (RFC 9112 section 2.2), so they cannot end a head; otherwise a client could send
    /// `\r\n\r\n` first and never be timed.
    #[default]
    Leading,
    /// Inside a line (the last byte was not LF).
    Line,
    /// Just after a line's LF.
    Lf,
    /// After a line's LF and then a CR.
    LfCr,
}

/// Finds the empty line that ends a request head, across reads.
///
/// Both CRLF and bare LF line ends count, because httparse (Pingora's parser) accepts
/// both: seeing an end too early would only disarm the deadline (Pingora's own 60 s
/// per-read timeout still applies), while missing one would answer 408 to a request
/// that was already being served.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadEnd {
    scan: Scan,
}

impl HeadEnd {
    /// Feeds the next bytes read; true when the head ends within them. Bytes after the end
    /// (a body) are not looked at.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut rest = bytes;
        // Leading empty lines, or a line end split across two reads: a few bytes at most.
        while self.scan != Scan::Line {
            let Some((&b, tail)) = rest.split_first() else {
                return false;
            };
            rest = tail;
            if self.step(b) {
                return true;
            }
        }
        // Mid-line, CRLF line ends: the whole head in this read (O(1)), or a head and the
        // start of its body.
        if rest.ends_with(b"\n\r\n") || EMPTY_LINE.find(rest).is_some() {
            return true;
        }
        // Bare-LF line ends, and remembering a trailing line end for the next read.
        rest.iter().any(|&b| self.step(b))
    }

    /// One byte through the machine; true at the end of the head.
    fn step(&mut self, b: u8) -> bool {
        self.scan = match (self.scan, b) {
            (Scan::Leading, b'\r' | b'\n') => Scan::Leading,
            (Scan::Lf | Scan::LfCr, b'\n') => return true,
            (Scan::Lf, b'\r') => Scan::LfCr,
            (_, b'\n') => Scan::Lf,
            _ => Scan::Line,
        };
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: nothing of the next head has arrived. Not timed (an idle
    /// keep-alive connection is Pingora's keep-alive timeout's business).
    Waiting,
    /// Part of a head has arrived: its deadline runs.
    Reading,
    /// The head is complete; body and response bytes are not looked at.
    Done,
}

/// What a read meant for the head deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadEvent {
    /// Not part of a head (a body, or an end of file): nothing to do.
    Ignored,
    /// A head began in these bytes and is still incomplete: arm its deadline now.
    Started,
    /// More of a head that is still incomplete; its deadline is already armed.
    Continued,
    /// The head ended in these bytes: disarm (never armed if it came in one read).
    Ended,
}

/// One connection's request heads: armed on a head's first byte, disarmed at its end,
/// waiting again once the connection is reused for the next request.
#[derive(Debug, Clone, Copy)]
pub struct HeadWatch {
    phase: Phase,
    end: HeadEnd,
}

impl Default for HeadWatch {
    fn default() -> Self {
        HeadWatch::new()
    }
}

impl HeadWatch {
    /// A new connection: waiting for its first request head.
    pub fn new() -> HeadWatch {
        HeadWatch {
            phase: Phase::Waiting,
            end: HeadEnd::default(),
        }
    }

    /// The connection is being reused: the next bytes start a new head.
    pub fn expect_head(&mut self) {
        *self = HeadWatch::new();
    }

    /// Whether reads still matter (false once the head is complete: the fast path).
    pub fn watching(&self) -> bool {
        self.phase != Phase::Done
    }

    /// The bytes one read returned.
    pub fn on_bytes(&mut self, bytes: &[u8]) -> HeadEvent {
        if self.phase == Phase::Done || bytes.is_empty() {
            return HeadEvent::Ignored;
        }
        let first = self.phase == Phase::Waiting;
        if self.end.feed(bytes) {
            self.phase = Phase::Done;
            HeadEvent::Ended
        } else {
            self.phase = Phase::Reading;
            if first {
                HeadEvent::Started
            } else {
                HeadEvent::Continued
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADS: &[&[u8]] = &[
        b"GET /v1/metrics HTTP/1.1\r\nhost: x\r\naccept: */*\r\n\r\n",
        b"GET / HTTP/1.1\nhost: x\n\n",
        b"GET / HTTP/1.1\r\nhost: x\n\r\n",
        b"GET / HTTP/1.1\nhost: x\r\n\n",
        b"\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ];

    fn events(pieces: &[&[u8]]) -> Vec<HeadEvent> {
        let mut w = HeadWatch::new();
        pieces.iter().map(|p| w.on_bytes(p)).collect()
    }

    #[test]
    fn a_head_read_whole_ends_without_ever_arming() {
        for head in HEADS {
            assert_eq!(events(&[head]), [HeadEvent::Ended], "{head:?}");
        }
    }

    #[test]
    fn a_head_split_anywhere_ends_exactly_at_its_last_piece() {
        for head in HEADS {
            for cut in 1..head.len() {
                let got = events(&[&head[..cut], &head[cut..]]);
                assert_eq!(
                    got,
                    [HeadEvent::Started, HeadEvent::Ended],
                    "{head:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn a_head_trickled_byte_by_byte_ends_at_its_last_byte() {
        for head in HEADS {
            let pieces: Vec<&[u8]> = head.chunks(1).collect();
            let got = events(&pieces);
            assert_eq!(got[0], HeadEvent::Started, "{head:?}");
            assert!(got[1..got.len() - 1]
                .iter()
                .all(|e| *e == HeadEvent::Continued));
            assert_eq!(*got.last().unwrap(), HeadEvent::Ended, "{head:?}");
        }
    }

    #[test]
    fn line_ends_inside_a_head_do_not_end_it() {
        let got = events(&[b"GET / HTTP/1.1\r\nhost: x\r\n", b"accept: */*\r\n", b"\r"]);
        assert_eq!(
            got,
            [
                HeadEvent::Started,
                HeadEvent::Continued,
                HeadEvent::Continued
            ]
        );
    }

    #[test]
    fn empty_lines_before_the_request_line_are_part_of_the_head_not_its_end() {
        let mut w = HeadWatch::new();
        assert_eq!(w.on_bytes(b"\r\n\r\n\n"), HeadEvent::Started);
        assert_eq!(w.on_bytes(b"\r\n"), HeadEvent::Continued);
        assert_eq!(w.on_bytes(b"GET / HTTP/1.1\r\n\r\n"), HeadEvent::Ended);
    }

    #[test]
    fn body_bytes_after_the_end_are_ignored_until_the_next_head() {
        let mut w = HeadWatch::new();
        assert_eq!(
            w.on_bytes(b"POST /v1/events HTTP/1.1\r\ncontent-length: 5\r\n\r\nhel"),
            HeadEvent::Ended
        );
        assert!(!w.watching());
        assert_eq!(w.on_bytes(b"lo"), HeadEvent::Ignored);
        w.expect_head();
        assert!(w.watching());
        assert_eq!(w.on_bytes(b"GET / HT"), HeadEvent::Started);
    }

    #[test]
    fn an_end_of_file_is_not_a_head() {
        let mut w = HeadWatch::new();
        assert_eq!(w.on_bytes(b""), HeadEvent::Ignored);
        assert_eq!(w.on_bytes(b"G"), HeadEvent::Started);
        assert_eq!(w.on_bytes(b""), HeadEvent::Ignored);
    }
}
