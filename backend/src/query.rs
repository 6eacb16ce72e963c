//! Metric queries: the [`Query`] the store answers, and the parsing of
//! `GET /v1/metrics?customer=..&event=..&from=..&to=..&bucket=1m&group_by=dim`.

use crate::event::FieldError;

/// Width of the time buckets a query returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bucket {
    S1,
    S10,
    #[default]
    M1,
    M5,
    H1,
    D1,
}

impl Bucket {
    /// The accepted spellings, for error messages.
    pub const NAMES: &'static str = "1s, 10s, 1m, 5m, 1h, 1d";

    /// Parses `1s`, `10s`, `1m`, `5m`, `1h` or `1d`.
    pub fn parse(text: &str) -> Option<Bucket> {
        Some(match text {
            "1s" => Bucket::S1,
            "10s" => Bucket::S10,
            "1m" => Bucket::M1,
            "5m" => Bucket::M5,
            "1h" => Bucket::H1,
            "1d" => Bucket::D1,
            _ => return None,
        })
    }

    /// Width in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Bucket::S1 => 1_000,
            Bucket::S10 => 10_000,
            Bucket::M1 => 60_000,
            Bucket::M5 => 300_000,
            Bucket::H1 => 3_600_000,
            Bucket::D1 => 86_400_000,
        }
    }
}

/// What to read from the store.
///
/// `from_ms` / `to_ms` bound a half-open range `[from, to)`, at the store's
/// 1 s resolution: a stored second is included when it overlaps the range.
/// `None` means unbounded on that side.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    pub customer: String,
    pub event: String,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub bucket: Bucket,
    /// Split the series by this dimension's value.
    pub group_by: Option<String>,
}

impl Query {
    /// An all-time, 1 m bucket, ungrouped query.
    pub fn new(customer: impl Into<String>, event: impl Into<String>) -> Self {
        Query {
            customer: customer.into(),
            event: event.into(),
            ..Query::default()
        }
    }
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a
/// space, `%XX` a byte); `None` on a broken escape or invalid UTF-8.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn bad(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: Some(field.to_string()),
        message: message.into(),
    }
}

/// Parses the query string of `GET /v1/metrics` (without the `?`).
/// Unknown parameters are ignored; a repeated one keeps its last value.
pub fn parse_query(raw: &str) -> Result<Query, FieldError> {
    let (mut customer, mut event, mut from, mut to, mut bucket, mut group_by) =
        (None, None, None, None, None, None);
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k).ok_or_else(|| bad(k, "badly encoded parameter name"))?;
        let value = decode(v).ok_or_else(|| bad(&key, format!("`{key}` is badly encoded")))?;
        match key.as_str() {
            "customer" => customer = Some(value),
            "event" => event = Some(value),
            "from" => from = Some(value),
            "to" => to = Some(value),
            "bucket" => bucket = Some(value),
            "group_by" => group_by = Some(value),
            _ => {}
        }
    }
    let required = |name: &str, v: Option<String>| match v {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(bad(name, format!("`{name}` is required"))),
    };
    let millis = |name: &str, v: Option<String>| {
        v.map(|v| {
            v.parse::<i64>().map_err(|_| {
                bad(
                    name,
                    format!("`{name}` must be an integer (milliseconds since the Unix epoch)"),
                )
            })
        })
        .transpose()
    };
    let query = Query {
        customer: required("customer", customer)?,
        event: required("event", event)?,
        from_ms: millis("from", from)?,
        to_ms: millis("to", to)?,
        bucket: match bucket {
            None => Bucket::default(),
            Some(b) => Bucket::parse(&b).ok_or_else(|| {
                bad(
                    "bucket",
                    format!("`bucket` must be one of {}", Bucket::NAMES),
                )
            })?,
        },
        group_by: match group_by {
            Some(g) if g.is_empty() => return Err(bad("group_by", "`group_by` must not be empty")),
            g => g,
        },
    };
    if let (Some(from), Some(to)) = (query.from_ms, query.to_ms) {
        if to <= from {
            return Err(bad("to", "`to` must be greater than `from`"));
        }
    }
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(raw: &str) -> Option<String> {
        parse_query(raw).unwrap_err().field
    }

    #[test]
    fn full_query() {
        let q =
            parse_query("customer=c1&event=page_view&from=1000&to=5000&bucket=5m&group_by=country")
                .unwrap();
        assert_eq!(
            q,
            Query {
                customer: "c1".into(),
                event: "page_view".into(),
                from_ms: Some(1000),
                to_ms: Some(5000),
                bucket: Bucket::M5,
                group_by: Some("country".into()),
            }
        );
        assert_eq!(q.bucket.millis(), 300_000);
    }

    #[test]
    fn defaults() {
        let q = parse_query("event=e&customer=c&unknown=1").unwrap();
        assert_eq!(q, Query::new("c", "e"));
        assert_eq!(q.bucket.millis(), 60_000);
    }

    #[test]
    fn decoding() {
        let q = parse_query("customer=acme+corp&event=page%5Fview").unwrap();
        assert_eq!(q.customer, "acme corp");
        assert_eq!(q.event, "page_view");
        assert_eq!(field("customer=%zz&event=e").as_deref(), Some("customer"));
    }

    #[test]
    fn errors_name_the_parameter() {
        assert_eq!(field("event=e").as_deref(), Some("customer"));
        assert_eq!(field("customer=c&event=").as_deref(), Some("event"));
        assert_eq!(
            field("customer=c&event=e&from=yesterday").as_deref(),
            Some("from")
        );
        assert_eq!(field("customer=c&event=e&to=1.5").as_deref(), Some("to"));
        assert_eq!(
            field("customer=c&event=e&bucket=2m").as_deref(),
            Some("bucket")
        );
        assert_eq!(
            field("customer=c&event=e&group_by=").as_deref(),
            Some("group_by")
        );
        assert_eq!(
            field("customer=c&event=e&from=10&to=10").as_deref(),
            Some("to")
        );
        assert_eq!(field("").as_deref(), Some("customer"));
    }
}
