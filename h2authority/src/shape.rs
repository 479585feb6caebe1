//! A structural pass over a header block before the HPACK decoder sees it: every integer and
//! string is complete, and dynamic table size updates come only at the block's start and within
//! the advertised size (RFC 7541 §4.2, §6.3). The decoder crate panics on a truncated size
//! update; this pass turns that, and the rest of the block's shape, into an error.

/// An HPACK integer with an `n`-bit prefix at the start of `buf`: (value, bytes used).
fn integer(buf: &[u8], n: u8) -> Result<(usize, usize), &'static str> {
    let (&first, rest) = buf.split_first().ok_or("a truncated integer")?;
    let max = (1usize << n) - 1;
    let mut value = usize::from(first) & max;
    if value < max {
        return Ok((value, 1));
    }
    // Four continuation bytes reach 2^28: more than any size this crate accepts.
    for (i, &b) in rest.iter().enumerate().take(4) {
        value += usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 2));
        }
    }
    Err(if rest.len() >= 4 {
        "an integer longer than four continuation bytes"
    } else {
        "a truncated integer"
    })
}

/// Skips one string literal: the bytes it used.
fn string(buf: &[u8]) -> Result<usize, &'static str> {
    let (len, used) = integer(buf, 7)?;
    if buf.len() - used < len {
        return Err("a string literal longer than the block");
    }
    Ok(used + len)
}

/// Checks `block`'s shape; `table_size` is the largest size update allowed.
pub(crate) fn check(block: &[u8], table_size: usize) -> Result<(), &'static str> {
    let mut at = 0;
    let mut fields_started = false;
    while at < block.len() {
        let b = &block[at..];
        let first = b[0];
        at += if first & 0x80 != 0 {
            fields_started = true;
            integer(b, 7)?.1
        } else if first & 0xe0 == 0x20 {
            if fields_started {
                return Err("a dynamic table size update after the first field");
            }
            let (size, used) = integer(b, 5)?;
            if size > table_size {
                return Err("a dynamic table size update above the advertised size");
            }
            used
        } else {
            fields_started = true;
            // 01xxxxxx: with indexing (6-bit index); 0000xxxx, 0001xxxx: without / never (4-bit).
            let (index, mut used) = integer(b, if first & 0x40 != 0 { 6 } else { 4 })?;
            if index == 0 {
                used += string(&b[used..])?;
            }
            used + string(&b[used..])?
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(check(&[0x82, 0x86], 4096), Ok(()));
        assert_eq!(check(&[0x3f, 0xe1, 0x1f, 0x82], 4096), Ok(())); // update to 4,096
        assert!(check(&[0x3f, 0xe1, 0x3f, 0x82], 4096).is_err()); // to 8,192
        assert!(check(&[0x3f], 4096).is_err()); // truncated update: the decoder's panic
        assert!(check(&[0x82, 0x20], 4096).is_err()); // update after a field
        assert!(check(&[0x40, 0x03, b'a'], 4096).is_err()); // name longer than the block
        assert!(check(&[0x00, 0x01, b'a', 0x01], 4096).is_err()); // value truncated
        assert_eq!(check(&[0x00, 0x01, b'a', 0x01, b'b'], 4096), Ok(()));
        assert!(check(&[0xff, 0x80, 0x80, 0x80, 0x80, 0x01], 4096).is_err());
    }
}
