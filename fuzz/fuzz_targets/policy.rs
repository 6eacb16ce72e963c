//! Fuzzes the policy parser and validator: any bytes must give a policy or a located error,
//! never a panic (a bad file written over the live one must be refused, not crash us).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match sloguard::Policy::parse(text, std::path::Path::new("fuzz.toml")) {
            Ok(p) => assert!(!p.upstream.workers.is_empty()),
            Err(e) => {
                // Every error renders and names its file.
                assert!(e.to_string().starts_with("fuzz.toml"));
            }
        }
    }
});
