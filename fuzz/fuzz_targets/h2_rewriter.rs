//! The unix socket's HTTP/2 rewriter on arbitrary client bytes after a valid preface: never a
//! panic, and the server reads the same bytes however the stream was split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use minion_h2authority::Rewriter;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn run(chunks: &[&[u8]]) -> (Vec<u8>, Option<String>) {
    let mut r = Rewriter::default();
    let mut out = Vec::new();
    for c in chunks {
        if let Err(e) = r.feed(c, &mut out) {
            return (out, Some(e.to_string()));
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let input = [PREFACE, body].concat();
    let (whole, whole_err) = run(&[&input]);
    let at = (usize::from(cut) * input.len() / 256).min(input.len());
    let (a, b) = input.split_at(at);
    let (split, split_err) = run(&[a, b]);
    assert_eq!(whole_err, split_err);
    if whole_err.is_none() {
        assert_eq!(whole, split);
    }
});
