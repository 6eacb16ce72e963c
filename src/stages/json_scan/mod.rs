//! JSON scan: a streaming scan that refuses malformed or pathologically shaped JSON request
//! bodies chunk by chunk, before the backend does any work. Pure; O(depth) memory.
//!
//! The proxy feeds each body chunk as `request_body_filter` sees it ([`JsonScanner::feed`]),
//! then calls [`JsonScanner::finish`]. Chunks may split the body anywhere (in a string, an
//! escape, a number or a UTF-8 sequence); the scanner keeps only its lexer state, the open
//! string's length and one 8-byte frame (kind + member count) per open container. No DOM,
//! one pass, no allocation per byte; runs of plain string bytes are taken in one step.
//!
//! **Valid** is exactly one RFC 8259 value with only space, tab, LF and CR around it (an
//! empty body is invalid). Strings take the escapes `\" \\ \/ \b \f \n \r \t \uXXXX`, `\u`
//! surrogates only as a high-low pair; raw control characters (< 0x20) are refused and UTF-8
//! is validated across chunks (no overlong forms, encoded surrogates, or code points past
//! U+10FFFF; outside strings any non-ASCII byte is already a syntax error). Numbers are
//! `-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`, magnitude unchecked. A UTF-8 byte
//! order mark is refused: RFC 8259 §8.1 says senders MUST NOT add one, and the backend's
//! parser need not skip it. Duplicate keys are allowed and not tracked (that costs memory).
//!
//! **Limits** ([`JsonLimits`]) are checked at the byte that breaks them (the `[` one level
//! too deep, the quote opening one key too many, the first byte of one element too many, the
//! byte that makes a string too long), so the scan stops there. Without `max_depth`,
//! nesting is capped at [`DEPTH_CAP`]: not even a megabyte of `[` grows the stack past
//! 8 KiB. A configured `max_depth` bounds it instead; the policy layer should keep it sane.
//!
//! **Answers**: invalid JSON is 400 `invalid_json`; a limit is 422 `json_limit`, because the
//! body is well-formed and it is its shape the route refuses. 413 stays for byte-size caps
//! ([`super::payload`]).
//!
//! **Offsets**: `Invalid { offset }` is the first byte no continuation could make valid, so
//! the length of the body's longest valid prefix: `[1,]` is invalid at 3 (the `]`),
//! `"\udc00"` at 4 (`\udc` starts a lone low surrogate). A body that ends early is invalid
//! at its length.
//!
//! Why one file of ~430 lines: the lexer is one state machine fed byte by byte, and its
//! states (strings, escapes, numbers, UTF-8, containers) hand over to one another; the
//! verdict types (`verdict`) and the tests (`tests`, `props`) live in sibling files.

mod verdict;
pub use verdict::{JsonLimits, JsonVerdict, DEPTH_CAP};
use verdict::{ARRAY_LEN, DEPTH, KEYS, STRING_BYTES};

const UNPAIRED: &str = "high surrogate not followed by a low surrogate";

/// One open container: whether it is an object, and its keys or elements so far.
#[derive(Debug, Clone, Copy)]
struct Frame {
    object: bool,
    count: u32,
}

/// Where in a number we are; `Zero`, `Int`, `Frac` and `Exp` may end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

/// Where in a string we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Str {
    Plain,
    /// In a UTF-8 sequence: continuation bytes left, and the range `lo..=hi` the next must be
    /// in (narrower than 0x80..=0xBF after some leads: that refuses overlong forms, encoded
    /// surrogates and code points past U+10FFFF).
    Utf8(u8, u8, u8),
    Escape, // after a backslash
    /// In `\uXXXX`: hex digits read, their value, and whether it must be a low surrogate.
    Hex(u8, u16, bool),
    PairBackslash, // after a high surrogate, whose low half must follow: `\`,
    PairU,         // then `u`
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bom(u8),      // byte 0 was 0xEF: this many bytes of a UTF-8 BOM seen (to say which it was)
    Value,        // a value must come: top level, after `:`, or after `,` in an array
    ValueOrClose, // just after `[`
    KeyOrClose,   // just after `{`
    Key,          // after `,` in an object
    Colon,        // after a key
    AfterValue,   // after a value in a container: `,` or the container's closer
    Done,         // the top-level value is complete; only whitespace may follow
    Str(Str),
    Num(Num),
    Lit(&'static [u8]), // the rest of `true`, `false` or `null`
}

/// Streaming JSON validator for one request body. See the module doc.
#[derive(Debug)]
pub struct JsonScanner {
    limits: JsonLimits,
    max_depth: u32,
    mode: Mode,
    key: bool,    // the open string is a key (its end expects `:`)
    str_len: u64, // decoded bytes of the open string so far
    stack: Vec<Frame>,
    pos: u64, // bytes consumed before the current chunk (or before the verdict's byte)
    verdict: Option<JsonVerdict>,
}

fn invalid(offset: u64, what: &'static str) -> JsonVerdict {
    JsonVerdict::Invalid { offset, what }
}

fn over(limit: &'static str, max: Option<u32>, value: u64) -> Result<(), JsonVerdict> {
    match max.map(u64::from) {
        Some(max) if value > max => Err(JsonVerdict::OverLimit { limit, value, max }),
        _ => Ok(()),
    }
}

/// Bytes a string takes as they are, if non-ASCII ones make valid UTF-8: the fast path's.
fn is_plain(b: u8) -> bool {
    b >= 0x20 && b != b'"' && b != b'\\'
}

/// The state after a UTF-8 lead byte (b >= 0x80), or None if it cannot lead.
fn utf8_lead(b: u8) -> Option<Str> {
    Some(match b {
        0xC2..=0xDF => Str::Utf8(1, 0x80, 0xBF),
        0xE0 => Str::Utf8(2, 0xA0, 0xBF),
        0xE1..=0xEC | 0xEE..=0xEF => Str::Utf8(2, 0x80, 0xBF),
        0xED => Str::Utf8(2, 0x80, 0x9F),
        0xF0 => Str::Utf8(3, 0x90, 0xBF),
        0xF1..=0xF3 => Str::Utf8(3, 0x80, 0xBF),
        0xF4 => Str::Utf8(3, 0x80, 0x8F),
        _ => return None,
    })
}

impl JsonScanner {
    pub fn new(limits: JsonLimits) -> JsonScanner {
        JsonScanner {
            limits,
            max_depth: limits.max_depth.unwrap_or(DEPTH_CAP),
            mode: Mode::Value,
            key: false,
            str_len: 0,
            stack: Vec::new(),
            pos: 0,
            verdict: None,
        }
    }

    /// Feeds the next chunk. Once a verdict other than `Continue` was returned, it sticks:
    /// later calls return it again and consume nothing.
    pub fn feed(&mut self, chunk: &[u8]) -> JsonVerdict {
        if let Some(v) = &self.verdict {
            return v.clone();
        }
        let mut i = 0;
        let result = self.scan(chunk, &mut i);
        self.pos += i as u64;
        match result {
            Ok(()) => JsonVerdict::Continue,
            Err(v) => self.verdict.insert(v).clone(),
        }
    }

    /// End of body: `Ok(())` if exactly one complete value was fed, else the verdict (an
    /// incomplete body is `Invalid { what: "unexpected end of body" }` at its length).
    pub fn finish(&mut self) -> Result<(), JsonVerdict> {
        if let Mode::Num(Num::Zero | Num::Int | Num::Frac | Num::Exp) = self.mode {
            self.end_value(); // the body's end ends a number
        }
        let v = match (&self.verdict, self.mode) {
            (Some(v), _) => v.clone(),
            (None, Mode::Done) => return Ok(()),
            (None, Mode::Bom(_)) => invalid(0, "expected a value"),
            (None, _) => invalid(self.pos, "unexpected end of body"),
        };
        Err(self.verdict.insert(v).clone())
    }

    /// Bytes consumed so far; after a verdict, the bytes before the one that caused it.
    pub fn offset(&self) -> u64 {
        self.pos
    }

    /// Scans `chunk` from `*i`; on error, `*i` is left at the offending byte.
    fn scan(&mut self, chunk: &[u8], i: &mut usize) -> Result<(), JsonVerdict> {
        while let Some(&b) = chunk.get(*i) {
            let at = self.pos + *i as u64;
            match self.mode {
                Mode::Str(st) => {
                    self.string(st, chunk, i)?;
                    continue;
                }
                Mode::Num(n) => {
                    if !self.number(n, b, at)? {
                        continue; // the number ended before `b`: read `b` again
                    }
                }
                Mode::Lit(rest) => match rest.split_first() {
                    Some((&c, [])) if c == b => self.end_value(),
                    Some((&c, tail)) if c == b => self.mode = Mode::Lit(tail),
                    _ => return Err(invalid(at, "invalid literal")),
                },
                Mode::Bom(n) => match (n, b) {
                    (1, 0xBB) => self.mode = Mode::Bom(2),
                    (2, 0xBF) => return Err(invalid(0, "UTF-8 byte order mark")),
                    _ => return Err(invalid(0, "expected a value")),
                },
                _ if matches!(b, b' ' | b'\t' | b'\n' | b'\r') => {}
                Mode::Value | Mode::ValueOrClose => self.value(b, at)?,
                Mode::KeyOrClose | Mode::Key => self.key(b, at)?,
                Mode::Colon if b == b':' => self.mode = Mode::Value,
                Mode::Colon => return Err(invalid(at, "expected ':' after key")),
                Mode::AfterValue => match (b, self.in_object()) {
                    (b',', true) => self.mode = Mode::Key,
                    (b',', false) => self.mode = Mode::Value,
                    (b'}', true) | (b']', false) => self.close(),
                    (_, true) => return Err(invalid(at, "expected ',' or '}'")),
                    (_, false) => return Err(invalid(at, "expected ',' or ']'")),
                },
                Mode::Done => return Err(invalid(at, "unexpected data after the JSON value")),
            }
            *i += 1;
        }
        Ok(())
    }

    fn value(&mut self, b: u8, at: u64) -> Result<(), JsonVerdict> {
        let next = match b {
            b'{' => Mode::KeyOrClose,
            b'[' => Mode::ValueOrClose,
            b'"' => Mode::Str(Str::Plain),
            b'-' => Mode::Num(Num::Minus),
            b'0' => Mode::Num(Num::Zero),
            b'1'..=b'9' => Mode::Num(Num::Int),
            b't' => Mode::Lit(b"rue"),
            b'f' => Mode::Lit(b"alse"),
            b'n' => Mode::Lit(b"ull"),
            b']' if self.mode == Mode::ValueOrClose => {
                self.close();
                return Ok(());
            }
            // `Value` in an array comes after a comma.
            b']' if !self.stack.is_empty() && !self.in_object() => {
                return Err(invalid(at, "trailing comma before ']'"))
            }
            0xEF if at == 0 => {
                self.mode = Mode::Bom(1);
                return Ok(());
            }
            _ => return Err(invalid(at, "expected a value")),
        };
        if let Some(f) = self.stack.last_mut().filter(|f| !f.object) {
            f.count = f.count.saturating_add(1);
            over(ARRAY_LEN, self.limits.max_array_len, f.count.into())?;
        }
        match next {
            Mode::KeyOrClose | Mode::ValueOrClose => self.push(next == Mode::KeyOrClose)?,
            Mode::Str(_) => (self.key, self.str_len) = (false, 0),
            _ => {}
        }
        self.mode = next;
        Ok(())
    }

    fn key(&mut self, b: u8, at: u64) -> Result<(), JsonVerdict> {
        match b {
            b'"' => {
                if let Some(f) = self.stack.last_mut() {
                    f.count = f.count.saturating_add(1);
                    over(KEYS, self.limits.max_keys, f.count.into())?;
                }
                (self.key, self.str_len) = (true, 0);
                self.mode = Mode::Str(Str::Plain);
                Ok(())
            }
            b'}' if self.mode == Mode::KeyOrClose => {
                self.close();
                Ok(())
            }
            b'}' => Err(invalid(at, "trailing comma before '}'")),
            _ => Err(invalid(at, "expected a string key")),
        }
    }

    /// Advances a number by `b`; `Ok(false)` if `b` is not part of it (the number ended).
    fn number(&mut self, n: Num, b: u8, at: u64) -> Result<bool, JsonVerdict> {
        use Num::*;
        let next = match (n, b) {
            (Minus, b'0') => Zero,
            (Minus, b'1'..=b'9') => Int,
            (Minus, _) => return Err(invalid(at, "expected a digit after '-'")),
            (Zero, b'0'..=b'9') => return Err(invalid(at, "leading zero in number")),
            (Int, b'0'..=b'9') => Int,
            (Zero | Int, b'.') => Dot,
            (Dot | Frac, b'0'..=b'9') => Frac,
            (Dot, _) => return Err(invalid(at, "expected a digit after '.'")),
            (Zero | Int | Frac, b'e' | b'E') => E,
            (E, b'+' | b'-') => ESign,
            (E | ESign | Exp, b'0'..=b'9') => Exp,
            (E | ESign, _) => return Err(invalid(at, "expected a digit in the exponent")),
            (Zero | Int | Frac | Exp, _) => {
                self.end_value();
                return Ok(false);
            }
        };
        self.mode = Mode::Num(next);
        Ok(true)
    }

    /// Scans string bytes from `chunk[*i]` until the string or the chunk ends.
    fn string(&mut self, mut st: Str, chunk: &[u8], i: &mut usize) -> Result<(), JsonVerdict> {
        while let Some(&b) = chunk.get(*i) {
            let at = self.pos + *i as u64;
            st = match st {
                Str::Plain if is_plain(b) => {
                    if self.plain_run(chunk, i)? {
                        continue;
                    }
                    // A UTF-8 sequence cut by the chunk's end, or invalid: byte by byte.
                    self.grow(1, utf8_lead(b).ok_or(invalid(at, "invalid UTF-8"))?)?
                }
                Str::Plain if b == b'\\' => Str::Escape,
                Str::Plain if b == b'"' => {
                    *i += 1;
                    self.mode = Mode::Colon;
                    if !self.key {
                        self.end_value();
                    }
                    return Ok(());
                }
                Str::Plain => return Err(invalid(at, "control character in string")),
                Str::Utf8(need, lo, hi) if (lo..=hi).contains(&b) => match need {
                    1 => self.grow(1, Str::Plain)?,
                    _ => self.grow(1, Str::Utf8(need - 1, 0x80, 0xBF))?,
                },
                Str::Utf8(..) => return Err(invalid(at, "invalid UTF-8")),
                Str::Escape => match b {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                        self.grow(1, Str::Plain)?
                    }
                    b'u' => Str::Hex(0, 0, false),
                    _ => return Err(invalid(at, "invalid escape")),
                },
                Str::Hex(n, acc, low) => self.hex(n, acc, low, b, at)?,
                Str::PairBackslash if b == b'\\' => Str::PairU,
                Str::PairU if b == b'u' => Str::Hex(0, 0, true),
                Str::PairBackslash | Str::PairU => return Err(invalid(at, UNPAIRED)),
            };
            *i += 1;
        }
        self.mode = Mode::Str(st);
        Ok(())
    }

    /// One hex digit of `\uXXXX`. Surrogates are judged as soon as two digits tell them
    /// apart, so the offset is the first byte that cannot be valid.
    fn hex(&mut self, n: u8, acc: u16, low: bool, b: u8, at: u64) -> Result<Str, JsonVerdict> {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(invalid(at, "expected 4 hex digits after \\u")),
        };
        let (n, acc) = (n + 1, acc << 4 | u16::from(d));
        let is_low = (0xDC..=0xDF).contains(&acc);
        if !low && n == 2 && is_low {
            return Err(invalid(at, "lone low surrogate in \\u escape"));
        }
        if low && ((n == 1 && acc != 0xD) || (n == 2 && !is_low)) {
            return Err(invalid(at, UNPAIRED));
        }
        match (n, low, acc) {
            (1..=3, ..) => Ok(Str::Hex(n, acc, low)),
            // A pair is one code point past U+FFFF: 4 bytes of UTF-8.
            (_, true, _) => self.grow(4, Str::Plain),
            (_, _, 0xD800..=0xDBFF) => Ok(Str::PairBackslash),
            (_, _, 0..=0x7F) => self.grow(1, Str::Plain),
            (_, _, 0x80..=0x7FF) => self.grow(2, Str::Plain),
            _ => self.grow(3, Str::Plain),
        }
    }

    /// The fast path: moves `*i` past a run of plain bytes that is valid UTF-8 (std checks
    /// that faster than our states), adding it to the open string, or only up to the first
    /// byte over the limit, which is then the verdict's byte. `Ok(false)`: no such run here
    /// (a UTF-8 sequence cut by the chunk's end or invalid is left to the byte-wise states).
    fn plain_run(&mut self, chunk: &[u8], i: &mut usize) -> Result<bool, JsonVerdict> {
        let rest = chunk.get(*i..).unwrap_or_default();
        let run = rest.iter().take_while(|&&c| is_plain(c)).count();
        let run = std::str::from_utf8(&rest[..run]).map_or_else(|e| e.valid_up_to(), str::len);
        let max = self.limits.max_string_bytes.map_or(u64::MAX, u64::from);
        let take = (run as u64).min(max.saturating_sub(self.str_len)) as usize;
        self.str_len += take as u64;
        *i += take;
        if take < run {
            self.grow(1, Str::Plain)?;
        }
        Ok(run > 0)
    }

    /// Adds `n` decoded bytes to the open string; then the string is in state `next`.
    fn grow(&mut self, n: u64, next: Str) -> Result<Str, JsonVerdict> {
        self.str_len += n;
        over(STRING_BYTES, self.limits.max_string_bytes, self.str_len).map(|()| next)
    }

    /// Opens a container, refusing it first if it would be one level too deep.
    fn push(&mut self, object: bool) -> Result<(), JsonVerdict> {
        over(DEPTH, Some(self.max_depth), self.stack.len() as u64 + 1)?;
        self.stack.push(Frame { object, count: 0 });
        Ok(())
    }

    fn close(&mut self) {
        self.stack.pop();
        self.end_value();
    }

    fn end_value(&mut self) {
        self.mode = if self.stack.is_empty() {
            Mode::Done
        } else {
            Mode::AfterValue
        };
    }

    fn in_object(&self) -> bool {
        self.stack.last().is_some_and(|f| f.object)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
