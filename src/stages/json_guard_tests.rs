//! Tests for the JSON guard: grammar and offsets, limits, chunking at every split point, and
//! generated documents (a tiny xorshift generator, serialized with serde_json).

use super::*;

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
    assert_eq!(fields, (400, "invalid_json", None, Some(7), None));
    assert_eq!(
        r.message,
        "request body is not valid JSON: invalid escape at byte 7"
    );

    let r = answer(over_limit(DEPTH, 65, 64));
    let fields = (r.status, r.reason, r.limit, r.value, r.retry_after);
    assert_eq!(fields, (422, "json_limit", Some(DEPTH), Some(65), None));
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

/// xorshift64*: deterministic, no crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Chunk sizes: mostly 1 to 6 bytes, sometimes up to 200.
    fn sizes(&mut self) -> impl FnMut() -> usize + '_ {
        move || {
            let most = if self.below(8) == 0 { 200 } else { 6 };
            1 + self.below(most) as usize
        }
    }
}

fn gen_string(rng: &mut Rng) -> String {
    let chars: Vec<char> = "aZ0 \"\\/\n\t\u{1}\u{1f}\u{7f}é€\u{FFFF}😀\u{10FFFF}"
        .chars()
        .collect();
    (0..rng.below(9))
        .map(|_| chars[rng.below(chars.len() as u64) as usize])
        .collect()
}

/// A random value nested up to depth 6.
fn gen_value(rng: &mut Rng, depth: u32) -> serde_json::Value {
    use serde_json::{Number, Value};
    let len = rng.below(6);
    match rng.below(if depth >= 6 { 4 } else { 7 }) {
        0 => [Value::Null, Value::Bool(true), Value::Bool(false)][rng.below(3) as usize].clone(),
        1 => match rng.below(3) {
            0 => Value::from(rng.next() as i64 >> rng.below(64)),
            1 => Value::from((rng.next() as i64 >> rng.below(64)) as f64 / 1000.0),
            _ => Number::from_f64(f64::from_bits(rng.next())).map_or(Value::Null, Value::Number),
        },
        2 | 3 => Value::String(gen_string(rng)),
        4 | 5 => Value::Array((0..len).map(|_| gen_value(rng, depth + 1)).collect()),
        _ => Value::Object(
            (0..len)
                .map(|_| (gen_string(rng), gen_value(rng, depth + 1)))
                .collect(),
        ),
    }
}

/// serde_json writes non-ASCII as it is; this writes it as `\u` escapes (surrogate pairs
/// past U+FFFF), in random case. Decoded lengths do not change.
fn escape_non_ascii(text: &str, rng: &mut Rng) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
            continue;
        }
        for u in c.encode_utf16(&mut [0; 2]) {
            match rng.below(2) {
                0 => out += &format!("\\u{u:04x}"),
                _ => out += &format!("\\u{u:04X}"),
            }
        }
    }
    out
}

/// A random document: compact, pretty, or compact with `\u` escapes (then true).
fn gen_doc(rng: &mut Rng) -> (serde_json::Value, String, bool) {
    let value = gen_value(rng, 0);
    let text = serde_json::to_string(&value).unwrap();
    match rng.below(3) {
        0 => (value, text, false),
        1 => (
            value.clone(),
            serde_json::to_string_pretty(&value).unwrap(),
            false,
        ),
        _ => (value, escape_non_ascii(&text, rng), true),
    }
}

/// (depth, most keys in one object, longest array, longest string in bytes).
fn shape(v: &serde_json::Value) -> [u64; 4] {
    use serde_json::Value;
    let max = |a: [u64; 4], b: [u64; 4]| std::array::from_fn(|i| a[i].max(b[i]));
    match v {
        Value::String(s) => [0, 0, 0, s.len() as u64],
        Value::Array(a) => {
            let [d, k, n, s] = a.iter().map(shape).fold([0; 4], max);
            [d + 1, k, n.max(a.len() as u64), s]
        }
        Value::Object(o) => {
            let members = o
                .iter()
                .map(|(k, v)| max(shape(v), [0, 0, 0, k.len() as u64]));
            let [d, k, n, s] = members.fold([0; 4], max);
            [d + 1, k.max(o.len() as u64), n, s]
        }
        _ => [0; 4],
    }
}

#[test]
fn generated_documents_pass_in_random_chunks_and_meet_their_exact_limits() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..1000 {
        let (value, text, escaped) = gen_doc(&mut rng);
        let doc = text.as_bytes();
        let mut chunks = Rng(rng.next() | 1);
        assert_eq!(scan_in(NONE, doc, &mut chunks.sizes()), Ok(()), "{text}");

        // Each limit set to the document's own shape passes; one less fails there.
        for (k, measured) in shape(&value).into_iter().enumerate() {
            let with = |max: u64| {
                let max = Some(max as u32);
                match k {
                    0 => limits(|l| l.max_depth = max),
                    1 => limits(|l| l.max_keys = max),
                    2 => limits(|l| l.max_array_len = max),
                    _ => limits(|l| l.max_string_bytes = max),
                }
            };
            assert_eq!(
                scan_in(with(measured), doc, &mut chunks.sizes()),
                Ok(()),
                "{text}"
            );
            if measured == 0 {
                continue;
            }
            let got = scan_in(with(measured - 1), doc, &mut chunks.sizes()).unwrap_err();
            let limit = [DEPTH, KEYS, ARRAY_LEN, STRING_BYTES][k];
            // A `\u` escape adds up to 4 bytes at once.
            let slack = if escaped && limit == STRING_BYTES {
                3
            } else {
                0
            };
            assert!(
                matches!(got, JsonVerdict::OverLimit { limit: l, value, max }
                    if l == limit && max == measured - 1 && (measured..=measured + slack).contains(&value)),
                "{text}: {got:?}, want {limit} at {measured}"
            );
        }
    }
}

#[test]
fn mutated_documents_never_panic_and_agree_with_serde_json() {
    const INTERESTING: &[u8] = b"\"\\[]{},:0-+.eEu dDf\x00\x1f\x7f\x80\xbf\xc3\xed\xef\xf4\xff";
    let mut rng = Rng(0x0123_4567_89AB_CDEF);
    for _ in 0..3000 {
        let mut doc = gen_doc(&mut rng).1.into_bytes();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(doc.len() as u64 + 1) as usize;
            let byte = match rng.below(2) {
                0 => INTERESTING[rng.below(INTERESTING.len() as u64) as usize],
                _ => rng.next() as u8,
            };
            match rng.below(4) {
                0 if at < doc.len() => doc[at] = byte,
                1 => doc.insert(at, byte),
                2 if at < doc.len() => _ = doc.remove(at),
                _ => doc.truncate(at),
            }
        }
        let show = String::from_utf8_lossy(&doc);
        let whole = scan(NONE, &doc);
        let chunked = scan_in(NONE, &doc, &mut Rng(rng.next() | 1).sizes());
        assert_eq!(chunked, whole, "chunking changed the verdict on {show}");
        let serde_ok = serde_json::from_slice::<serde_json::Value>(&doc).is_ok();
        match whole {
            // serde_json also refuses numbers past f64's range, whose magnitude we ignore.
            Ok(()) => {}
            Err(JsonVerdict::Invalid { offset, .. }) => {
                assert!(
                    !serde_ok,
                    "serde_json accepts what we refused: {show} ({whole:?})"
                );
                let prefix = JsonScanner::new(NONE).feed(&doc[..offset as usize]);
                assert_eq!(
                    prefix,
                    JsonVerdict::Continue,
                    "the bytes before are valid: {show}"
                );
            }
            Err(other) => panic!("no limits set, yet {other:?}"),
        }
        assert!(
            !serde_ok || whole.is_ok(),
            "serde_json accepts what we refused: {show}"
        );
    }
}

/// `cargo test --release --lib json_guard -- --ignored --nocapture`
#[test]
#[ignore]
fn throughput() {
    let mut rng = Rng(42);
    let mut mixed = b"[0".to_vec();
    while mixed.len() < 1 << 20 {
        mixed.push(b',');
        mixed.extend(serde_json::to_vec(&gen_value(&mut rng, 0)).unwrap());
    }
    mixed.push(b']');
    let prose = format!("\"{}\"", "lorem ipsum dolor sit amet ".repeat(40));
    let prose = format!("[{}]", vec![prose; 1000].join(","));
    let utf8 = format!("\"{}\"", "zażółć gęślą jaźń, 日本語の文章 ".repeat(30));
    let utf8 = format!("[{}]", vec![utf8; 1000].join(","));
    let numbers: Vec<String> = (0..150_000u64).map(|i| (i * 7919).to_string()).collect();
    let numbers = format!("[{}]", numbers.join(","));
    for (name, doc) in [
        ("mixed", &mixed[..]),
        ("prose", prose.as_bytes()),
        ("non-ASCII prose", utf8.as_bytes()),
        ("numbers", numbers.as_bytes()),
    ] {
        let (start, rounds) = (std::time::Instant::now(), 20);
        for _ in 0..rounds {
            let mut s = JsonScanner::new(limits(|l| l.max_depth = Some(64)));
            for chunk in doc.chunks(16 * 1024) {
                assert_eq!(s.feed(chunk), JsonVerdict::Continue);
            }
            assert_eq!(s.finish(), Ok(()));
        }
        let mb_per_s = (doc.len() * rounds) as f64 / 1e6 / start.elapsed().as_secs_f64();
        println!("{name}: {} bytes, {mb_per_s:.0} MB/s", doc.len());
    }
}
