//! Fuzzes the streaming JSON guard against serde_json: same accept/refuse verdict on any
//! input (when no limit applies), whatever the chunking, and never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sloguard::stages::json_scan::{JsonLimits, JsonScanner, JsonVerdict};

fuzz_target!(|data: &[u8]| {
    let Some((&split, body)) = data.split_first() else { return };
    let mut scanner = JsonScanner::new(JsonLimits::default());
    let cut = (split as usize).min(body.len());
    let mut verdict = scanner.feed(&body[..cut]);
    if verdict == JsonVerdict::Continue {
        verdict = scanner.feed(&body[cut..]);
    }
    let ours = verdict == JsonVerdict::Continue && scanner.finish().is_ok();
    // serde_json refuses numbers out of f64 range and nests at most 128 deep; compare only
    // where both apply.
    let deep = body.iter().filter(|b| **b == b'[' || **b == b'{').count() > 100;
    if !deep {
        // Into a Value: serde_json validates UTF-8 in strings only when it keeps them.
        let theirs = serde_json::from_slice::<serde_json::Value>(body).is_ok();
        if ours && !theirs {
            // Only a number out of f64's range may legitimately differ (the guard does not
            // check magnitudes; serde_json's Value refuses them): an exponent, or a very long
            // run of digits.
            let huge = body.windows(2).any(|w| w[0].is_ascii_digit() && (w[1] == b'e' || w[1] == b'E'))
                || body.split(|b| !b.is_ascii_digit()).any(|run| run.len() > 300);
            assert!(huge, "we accepted what serde_json refuses: {:?}", String::from_utf8_lossy(body));
        } else if !ours {
            assert!(!theirs, "we refused what serde_json accepts: {:?}", String::from_utf8_lossy(body));
        }
    }
});
