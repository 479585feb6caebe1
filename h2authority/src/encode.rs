//! The HPACK output side: literal fields only (RFC 7541 §6.2.3), never Huffman, never indexed, so
//! the server's dynamic table stays empty.

/// Appends `value` as an HPACK integer with an `n`-bit prefix; `flags` fills the bits above it.
fn integer(out: &mut Vec<u8>, value: usize, n: u8, flags: u8) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    integer(out, s.len(), 7, 0);
    out.extend_from_slice(s);
}

/// One field as "literal never indexed, new name": an intermediary must keep a never-indexed field
/// never-indexed (§6.2.3) and the decoder does not say which were, so every field is.
pub(crate) fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x10);
    string(out, name);
    string(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_follow_rfc7541_examples() {
        // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix; C.1.3: 42, 8-bit.
        let mut out = Vec::new();
        integer(&mut out, 10, 5, 0);
        assert_eq!(out, [0x0a]);
        out.clear();
        integer(&mut out, 1337, 5, 0);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        out.clear();
        integer(&mut out, 42, 8, 0);
        assert_eq!(out, [0x2a]);
        out.clear();
        integer(&mut out, 127, 7, 0);
        assert_eq!(out, [0x7f, 0x00]);
    }

    #[test]
    fn a_field_decodes_back() {
        let long = vec![b'v'; 300];
        let mut block = Vec::new();
        field(&mut block, b":authority", b"localhost");
        field(&mut block, b"x-long", &long);
        let got = fluke_hpack::Decoder::new()
            .decode(&block)
            .expect("our own encoding decodes");
        assert_eq!(
            got,
            vec![
                (b":authority".to_vec(), b"localhost".to_vec()),
                (b"x-long".to_vec(), long)
            ]
        );
    }
}
