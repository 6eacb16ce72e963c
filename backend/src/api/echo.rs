//! `/debug/echo[/...]`, any method: answers with what arrived (method, path, query, headers,
//! body length and digest), so a proxy in front can be shown to pass requests intact.

use bytes::Bytes;
use http::request::Parts;
use serde_json::{json, Map, Value};

/// Path prefix of the echo endpoint.
pub const ECHO_PREFIX: &str = "/debug/echo";

/// FNV-1a 64 of the body, hex: small, stable, and easy to recompute in a test.
pub fn fnv1a_hex(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The echo document for a request.
pub fn describe(parts: &Parts, body: &Bytes) -> Value {
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let entry = headers
            .entry(name.as_str().to_string())
            .or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(values) = entry {
            values.push(Value::String(
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        }
    }
    json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body.len(),
        "body_fnv": fnv1a_hex(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_method_path_query_headers_and_body() {
        let req = http::Request::builder()
            .method("PUT")
            .uri("/debug/echo/x?a=1")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let v = describe(&parts, &Bytes::from_static(b"hello"));
        assert_eq!(v["method"], "PUT");
        assert_eq!(v["path"], "/debug/echo/x");
        assert_eq!(v["query"], "a=1");
        assert_eq!(v["headers"]["x-a"], json!(["1", "2"]));
        assert_eq!(v["body_len"], 5);
        assert_eq!(v["body_fnv"], fnv1a_hex(b"hello"));
        assert_ne!(fnv1a_hex(b"hello"), fnv1a_hex(b"hellp"));
    }
}
