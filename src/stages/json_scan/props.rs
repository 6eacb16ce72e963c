//! Generated and mutated documents: the scanner against serde_json, in random chunks.

use super::*;

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

/// `cargo test --release --lib json_scan -- --ignored --nocapture`
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
