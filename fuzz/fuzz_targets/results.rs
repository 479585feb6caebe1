//! ResultYAML on arbitrary text (it comes from the guest, which is hostile): never a panic, and
//! every result accepted has an outcome that re-renders.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(results) = minion_formula::parse_results(text) {
        for r in results {
            assert!(!r.effective_outcome().as_str().is_empty());
        }
    }
});
