//! The formula parser on arbitrary text (a task repo is the submitter's): it must never panic,
//! and every refusal names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = minion_formula::parse_formula(std::path::Path::new("runtask.yml"), text) {
        assert!(e.to_string().contains("runtask.yml"), "{e}");
    }
});
