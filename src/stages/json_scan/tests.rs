//! Tests for the JSON scan: grammar and offsets, limits, chunking at every split point, and
//! generated documents (a tiny xorshift generator, serialized with serde_json).

use super::*;
use crate::stages::Reason;

const NONE: JsonLimits = JsonLimits {
    max_depth: None,
    max_keys: None,
    max_array_len: None,
    max_string_bytes: None,
};

/// Feeds `doc` in chunks of the sizes `sizes` gives (0: an empty chunk). Every feed before
/// the verdict says Continue, a verdict sticks, and a body scanned to its end is consumed.
fn scan_in(l: JsonLimits, doc: &[u8], sizes: &mut dyn FnMut() -> usize) -> Result<(), JsonVerdict> {
    let mut s = JsonScanner::new(l);
    let mut rest = doc;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(sizes().min(rest.len()));
        rest = tail;
        let v = s.feed(chunk);
        if v != JsonVerdict::Continue {
            assert_eq!(s.feed(b"]"), v, "verdicts stick");
            assert_eq!(s.finish(), Err(v.clone()));
            return Err(v);
        }
    }
    assert_eq!(s.offset(), doc.len() as u64);
    s.finish()
}

fn scan(l: JsonLimits, doc: &[u8]) -> Result<(), JsonVerdict> {
    scan_in(l, doc, &mut || usize::MAX)
}

/// The verdict on `doc` is `want` fed whole, a byte at a time, and in two or (for short
/// documents) three chunks split anywhere, empty chunks included.
fn assert_scans(l: JsonLimits, doc: &[u8], want: Result<(), JsonVerdict>) {
    let show = String::from_utf8_lossy(doc);
    assert_eq!(scan(l, doc), want, "whole: {show}");
    assert_eq!(scan_in(l, doc, &mut || 1), want, "bytewise: {show}");
    for a in 0..=doc.len() {
        let mut cuts = [a, doc.len()].into_iter();
        let got = scan_in(l, doc, &mut || cuts.next().unwrap_or(1));
        assert_eq!(got, want, "split at {a}: {show}");
        for b in (0..=doc.len() - a).take_while(|_| doc.len() <= 64) {
            let mut cuts = [a, b, doc.len()].into_iter();
            let got = scan_in(l, doc, &mut || cuts.next().unwrap_or(1));
            assert_eq!(got, want, "split at {a} and {}: {show}", a + b);
        }
    }
}

fn over_limit(limit: &'static str, value: u64, max: u64) -> JsonVerdict {
    JsonVerdict::OverLimit { limit, value, max }
}

/// Documents separated by spaces.
fn words(docs: &str) -> impl Iterator<Item = &[u8]> {
    docs.split(' ').map(str::as_bytes)
}

fn limits(f: impl FnOnce(&mut JsonLimits)) -> JsonLimits {
    let mut l = NONE;
    f(&mut l);
    l
}

/// One document per line; more with whitespace below.
const VALID: &str = r#"0
-0
7
-12
12.5e-3
1E+9
-0.0e0
123456789012345678901234567890.5e999
true
false
null
""
"a"
[]
{}
[[]]
{"a":{}}
[0,-0,0.5,1e10,-1.5E-10,10,99]
{"a":1,"b":[true,false,null],"c":{"d":"e"}}
"\" \\ \/ \b \f \n \r \t"
"\u0000\u00e9\u20AC\uFFFF\uE000"
"\ud83d\ude00 \uD834\uDD1E\udbff\udfff"
"é€😀"
{"":""}
{"a":1,"a":2}
{"é":["😀",-1.0e+2,"\ud83d\ude00"]}"#;

#[test]
fn valid_documents_pass_however_split() {
    let spaced = [
        " \t\r\n 1 \n",
        " [ 1 , { \"k\" : [ ] } , \"x\" ] ",
        "\"\u{7F}\u{80}\u{7FF}\u{800}\u{10000}\u{10FFFF}\"",
    ];
    for doc in VALID.lines().chain(spaced) {
        assert_scans(NONE, doc.as_bytes(), Ok(()));
    }
}

#[test]
fn each_kind_of_invalid_json_is_refused_at_the_first_byte_that_cannot_be_valid() {
    let end = "unexpected end of body";
    let after = "unexpected data after the JSON value";
    let value = "expected a value";
    let (digit, utf8) = ("expected a digit after '-'", "invalid UTF-8");
    let cases: &[(&[u8], u64, &str)] = &[
        (b"", 0, end),
        (b"  \n", 3, end),
        (b"[1,2,]", 5, "trailing comma before ']'"),
        (br#"{"a":1,}"#, 7, "trailing comma before '}'"),
        (br#"{"a" 1}"#, 5, "expected ':' after key"),
        (b"{a:1}", 1, "expected a string key"),
        (br#"{"a":}"#, 5, value),
        (b"[1}", 2, "expected ',' or ']'"),
        (br#"{"a":1]"#, 6, "expected ',' or '}'"),
        (br#""\x""#, 2, "invalid escape"),
        (br#""\u12""#, 5, "expected 4 hex digits after \\u"),
        (br#""\ud800""#, 7, UNPAIRED),
        (br#""\ud800\n""#, 8, UNPAIRED),
        (br#""\ud800\u0041""#, 9, UNPAIRED),
        (br#""\ud800\ud800""#, 10, UNPAIRED),
        (br#""\udc00""#, 4, "lone low surrogate in \\u escape"),
        (b"\"a\x01\"", 2, "control character in string"),
        (b"\"\t\"", 1, "control character in string"),
        (b"01", 1, "leading zero in number"),
        (b"[-01]", 3, "leading zero in number"),
        (b"-a", 1, digit),
        (b"-", 1, end),
        (b"[1.]", 3, "expected a digit after '.'"),
        (b"1.", 2, end),
        (b".5", 0, value),
        (b"+1", 0, value),
        (b"[1e+]", 4, "expected a digit in the exponent"),
        (b"1e", 2, end),
        (b"tru", 3, end),
        (b"trux", 3, "invalid literal"),
        (b"nul l", 3, "invalid literal"),
        (b"True", 0, value),
        (b"1 2", 2, after),
        (b"{}{}", 2, after),
        (b"[] x", 3, after),
        (b"\"abc", 4, end),
        (b"[1,[2", 5, end),
        (b"\x0c1", 0, value),
        (b"\"\xC3\x28\"", 2, utf8),
        (b"\"\xC0\x80\"", 1, utf8),
        (b"\"\xE0\x80\x80\"", 2, utf8),
        (b"\"\xED\xA0\x80\"", 2, utf8),
        (b"\"\xF4\x90\x80\x80\"", 2, utf8),
        (b"\"\xF5\x80\x80\x80\"", 1, utf8),
        (b"\"\xFF\"", 1, utf8),
        (b"\"\x80\"", 1, utf8),
        (b"\"\xE2\x82\"", 3, utf8),
        (b"[\xC3\xA9]", 1, value),
        (b"\xEF\xBB\xBF{}", 0, "UTF-8 byte order mark"),
        (b"\xEF\xBBx", 0, value),
        (b"\xEF\xBB", 0, value),
    ];
    for &(doc, offset, what) in cases {
        let show = String::from_utf8_lossy(doc);
        assert_scans(NONE, doc, Err(JsonVerdict::Invalid { offset, what }));
        let mut s = JsonScanner::new(NONE);
        let prefix = s.feed(&doc[..offset as usize]);
        assert_eq!(
            prefix,
            JsonVerdict::Continue,
            "the bytes before are valid: {show}"
        );
    }
}

#[test]
fn max_depth_counts_nesting_of_both_kinds() {
    let l = limits(|l| l.max_depth = Some(3));
    for ok in words(r#"[[[]]] {"a":[{"b":1}]} [[1],[[2]],[[3]]] "[[[[" 1"#) {
        assert_scans(l, ok, Ok(()));
    }
    assert_scans(l, b"[[[[]]]]", Err(over_limit(DEPTH, 4, 3)));
    assert_scans(l, br#"{"a":[{"b":{}}]}"#, Err(over_limit(DEPTH, 4, 3)));
    let zero = limits(|l| l.max_depth = Some(0));
    assert_eq!(scan(zero, b"\"scalar\""), Ok(()));
    assert_eq!(scan(zero, b"{}"), Err(over_limit(DEPTH, 1, 0)));
}

#[test]
fn max_keys_counts_per_object() {
    let l = limits(|l| l.max_keys = Some(2));
    let two_each = r#"[{"a":1,"b":2},{"c":{"x":1,"y":2},"d":[1,2,3]}]"#;
    assert_scans(l, two_each.as_bytes(), Ok(()));
    assert_scans(l, br#"{"a":1,"b":2,"c":3}"#, Err(over_limit(KEYS, 3, 2)));
    assert_scans(l, br#"{"a":1,"a":2,"a":3}"#, Err(over_limit(KEYS, 3, 2)));
    let outer_third = br#"{"a":{"x":1,"y":2},"b":2,"c":3}"#;
    assert_scans(l, outer_third, Err(over_limit(KEYS, 3, 2)));
}

#[test]
fn max_array_len_counts_per_array() {
    let l = limits(|l| l.max_array_len = Some(3));
    for ok in words(r#"[[1,2,3],[1,2,3],[]] {"a":1,"b":2,"c":3,"d":4} [{},[],""]"#) {
        assert_scans(l, ok, Ok(()));
    }
    assert_scans(l, b"[1,2,3,4]", Err(over_limit(ARRAY_LEN, 4, 3)));
    assert_scans(l, b"[[1,2,3,[]]]", Err(over_limit(ARRAY_LEN, 4, 3)));
    assert_scans(l, b"[[1],[2],[3],[4]]", Err(over_limit(ARRAY_LEN, 4, 3)));
}

#[test]
fn max_string_bytes_counts_decoded_bytes_of_keys_and_values() {
    let l = limits(|l| l.max_string_bytes = Some(3));
    for ok in words(r#"{"abc":"xyz"} "\n\n\n" "\u00e9a" "\u20ac" "é1""#) {
        assert_scans(l, ok, Ok(()));
    }
    let over = Err(over_limit(STRING_BYTES, 4, 3));
    for doc in words(r#""abcd" {"abcd":1} "\n\n\n\n" "\u20aca" "€a""#) {
        assert_scans(l, doc, over.clone());
    }
    // One escape can jump past the limit: the value is the length reached.
    assert_scans(l, br#""ab\u20ac""#, Err(over_limit(STRING_BYTES, 5, 3)));
    assert_scans(l, br#""\ud83d\ude00""#, over);
    let four = limits(|l| l.max_string_bytes = Some(4));
    assert_scans(four, br#""\ud83d\ude00""#, Ok(()));
    assert_scans(four, "\"😀\"".as_bytes(), Ok(()));
}

#[test]
fn a_long_plain_run_stops_at_the_first_byte_over() {
    let mut s = JsonScanner::new(limits(|l| l.max_string_bytes = Some(10)));
    assert_eq!(s.feed(b"[\"abcdef"), JsonVerdict::Continue);
    assert_eq!(s.feed(b"ghijklmnop\"]"), over_limit(STRING_BYTES, 11, 10));
    assert_eq!(
        s.offset(),
        12,
        "the string's 11th byte, `k`, is not consumed"
    );
}

#[test]
fn deep_nesting_without_a_limit_stops_at_the_cap_without_growing() {
    let mut s = JsonScanner::new(NONE);
    let cap = u64::from(DEPTH_CAP);
    assert_eq!(
        s.feed(&vec![b'['; 1 << 20]),
        over_limit(DEPTH, cap + 1, cap)
    );
    assert_eq!(s.offset(), cap);
    assert!(
        s.stack.capacity() <= DEPTH_CAP as usize,
        "{}",
        s.stack.capacity()
    );

    let nested = |n| "[".repeat(n) + &"]".repeat(n);
    assert_eq!(scan(NONE, nested(1024).as_bytes()), Ok(()));
    // A configured max_depth replaces the cap.
    let deeper = limits(|l| l.max_depth = Some(2000));
    assert_eq!(scan(deeper, nested(1500).as_bytes()), Ok(()));
}

#[test]
fn rejections_are_400_for_invalid_and_422_for_limits() {
    let answer = |v: JsonVerdict| v.rejection().expect("a verdict to answer");
    assert_eq!(JsonVerdict::Continue.rejection(), None);

    let r = answer(JsonVerdict::Invalid {
        offset: 7,
        what: "invalid escape",
    });
    let fields = (r.status, r.reason, r.limit, r.value, r.retry_after);
    assert_eq!(fields, (400, Reason::InvalidJson, None, Some(7), None));
    assert_eq!(
        r.message,
        "request body is not valid JSON: invalid escape at byte 7"
    );

    let r = answer(over_limit(DEPTH, 65, 64));
    let fields = (r.status, r.reason, r.limit, r.value, r.retry_after);
    assert_eq!(
        fields,
        (422, Reason::JsonLimit, Some(DEPTH), Some(65), None)
    );
    let message = "JSON nesting depth reached 65, over the limit of 64 (json.max_depth)";
    assert_eq!(r.message, message);
    for (limit, what) in [
        (KEYS, "keys"),
        (ARRAY_LEN, "elements"),
        (STRING_BYTES, "bytes"),
    ] {
        let r = answer(over_limit(limit, 9, 8));
        assert_eq!((r.status, r.limit, r.value), (422, Some(limit), Some(9)));
        let m = &r.message;
        assert!(
            m.contains(what) && m.contains("9") && m.contains("8") && m.contains(limit),
            "{m}"
        );
    }
}

#[path = "props.rs"]
mod props;
