//! URL paths: `%XX` decoding of what comes in, encoding of what goes into links.

/// `%XX` decoding of a URL path (a path with a bad escape, or not UTF-8, is `None`).
pub fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A path for a URL: every byte but unreserved characters and `/` percent-encoded.
pub fn encode(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_and_bad_escapes() {
        let p = "task output/a b?#%.log";
        assert_eq!(super::encode(p), "task%20output/a%20b%3F%23%25.log");
        assert_eq!(super::decode(&super::encode(p)).as_deref(), Some(p));
        assert_eq!(super::decode("%zz"), None);
        assert_eq!(super::decode("%4"), None);
    }
}
