//! The JSON scan's limits and verdicts, and how a verdict becomes an HTTP answer.

use super::super::{Reason, Rejection};

/// Deepest nesting accepted when a route sets no `max_depth`. Bounds the scanner's memory.
pub const DEPTH_CAP: u32 = 1024;

pub(super) const DEPTH: &str = "json.max_depth";
pub(super) const KEYS: &str = "json.max_keys";
pub(super) const ARRAY_LEN: &str = "json.max_array_len";
pub(super) const STRING_BYTES: &str = "json.max_string_bytes";

/// A route's JSON shape limits (policy `json = { ... }`); `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JsonLimits {
    /// Deepest nesting of objects and arrays; a top-level container is depth 1, a top-level
    /// scalar depth 0. `None` still caps at [`DEPTH_CAP`].
    pub max_depth: Option<u32>,
    /// Most keys in any one object (per object; a duplicate key counts again).
    pub max_keys: Option<u32>,
    /// Most elements in any one array (per array; nested arrays count separately).
    pub max_array_len: Option<u32>,
    /// Longest string, key or value, in bytes of its decoded UTF-8: `\n` is 1 byte, `\u00e9`
    /// 2, a surrogate pair 4; raw UTF-8 counts as it is.
    pub max_string_bytes: Option<u32>,
}

/// What the scan says so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonVerdict {
    /// Fine so far; feed more.
    Continue,
    /// Invalid JSON: what, and the offset in the whole body of the first byte that made it so.
    Invalid { offset: u64, what: &'static str },
    /// A limit was exceeded: which (`"json.max_depth"`, `"json.max_keys"`,
    /// `"json.max_array_len"`, `"json.max_string_bytes"`), the value reached (the first one
    /// over, e.g. depth 65; one `\u` escape can take a string up to 3 bytes further) and the
    /// limit in force.
    OverLimit {
        limit: &'static str,
        value: u64,
        max: u64,
    },
}

impl JsonVerdict {
    /// The HTTP answer: `Invalid` is 400 `invalid_json` (value = the offset), `OverLimit` is
    /// 422 `json_limit` (limit and value as in the verdict); `Continue` is none.
    pub fn rejection(&self) -> Option<Rejection> {
        let (status, reason, message, limit, value) = match *self {
            JsonVerdict::Continue => return None,
            JsonVerdict::Invalid { offset, what } => {
                let message = format!("request body is not valid JSON: {what} at byte {offset}");
                (400, Reason::InvalidJson, message, None, offset)
            }
            JsonVerdict::OverLimit { limit, value, max } => {
                let what = match limit {
                    DEPTH => "nesting depth",
                    KEYS => "keys in one object",
                    ARRAY_LEN => "elements in one array",
                    _ => "decoded bytes in one string",
                };
                let message =
                    format!("JSON {what} reached {value}, over the limit of {max} ({limit})");
                (422, Reason::JsonLimit, message, Some(limit), value)
            }
        };
        let value = Some(value);
        Some(Rejection {
            status,
            reason,
            message,
            limit,
            value,
            retry_after: None,
        })
    }
}
