//! The frame codec shared by host and guest: a protobuf message prefixed with its length as a varint
//! (prost's length-delimited encoding).
//!
//! The decoder is written for a hostile peer: the length is checked against the cap before a single
//! byte is reserved for the body, a malformed varint is an error after at most 10 bytes, and no input
//! makes it panic. It works on a caller-owned buffer so that an async reader can use it cancel-safely
//! and a blocking reader (the agent, which has no tokio) the same way.

use std::io::{self, Read, Write};

use bytes::{Buf, BytesMut};
use prost::Message;

/// Largest frame either side sends or accepts, length prefix excluded (DESIGN.md: 1 MiB).
pub const MAX_FRAME: usize = 1024 * 1024;

/// Longest possible varint for a u64.
const MAX_VARINT_LEN: usize = 10;

/// How much a blocking reader asks the OS for at a time.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: u64, max: usize },
    #[error("malformed frame length prefix (varint longer than 10 bytes or overflowing)")]
    BadLength,
    #[error("undecodable frame of {len} bytes: {source}")]
    Decode {
        len: usize,
        source: prost::DecodeError,
    },
    #[error("stream ended inside a frame ({buffered} bytes of it received)")]
    Truncated { buffered: usize },
    #[error("channel I/O: {0}")]
    Io(#[from] io::Error),
}

/// Reads the varint at the start of `buf`: `Ok(None)` when more bytes are needed, else the value and
/// the prefix length.
fn peek_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().take(MAX_VARINT_LEN).enumerate() {
        // The 10th byte may carry only the top bit of a u64.
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            return Err(FrameError::BadLength);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        return Err(FrameError::BadLength);
    }
    Ok(None)
}

/// Takes one complete frame off the front of `buf`, if there is one.
///
/// `Ok(None)`: more bytes are needed (`buf` is left as it was, with room reserved for the rest of the
/// frame once its length is known and within `max`).
pub fn decode_frame<M: Message + Default>(
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<M>, FrameError> {
    let Some((len, prefix)) = peek_varint(buf)? else {
        return Ok(None);
    };
    if len > max as u64 {
        return Err(FrameError::TooLarge { len, max });
    }
    // `len <= max`, which is a usize.
    let len = len as usize;
    let needed = prefix + len;
    if buf.len() < needed {
        buf.reserve(needed - buf.len());
        return Ok(None);
    }
    // Decoding from a slice, then advancing, keeps `buf`'s allocation for the next frame (splitting
    // it off would make every 1 MiB frame a fresh allocation and a round of page faults).
    let decoded = M::decode(&buf[prefix..needed]);
    buf.advance(needed);
    decoded
        .map(Some)
        .map_err(|source| FrameError::Decode { len, source })
}

/// Encodes `msg` as one frame, refusing (rather than sending) one the peer would reject.
pub fn encode_frame<M: Message>(msg: &M, max: usize) -> Result<Vec<u8>, FrameError> {
    let len = msg.encoded_len();
    if len > max {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    let mut out = Vec::with_capacity(len + MAX_VARINT_LEN);
    msg.encode_length_delimited(&mut out)
        .map_err(|e| FrameError::Io(io::Error::other(e)))?;
    Ok(out)
}

/// Writes one frame to a blocking writer (no flush: wrap in nothing, or flush yourself).
pub fn write_frame<W: Write, M: Message>(w: &mut W, msg: &M, max: usize) -> Result<(), FrameError> {
    let bytes = encode_frame(msg, max)?;
    w.write_all(&bytes)?;
    Ok(())
}

/// Reads frames from a blocking reader (the agent's side of the port).
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max,
        }
    }

    /// The next frame; `Ok(None)` on a clean end of stream (between frames).
    pub fn read_frame<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            if let Some(msg) = decode_frame(&mut self.buf, self.max)? {
                return Ok(Some(msg));
            }
            let n = match self.inner.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated {
                        buffered: self.buf.len(),
                    })
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minion_proto::guest::{
        guest_frame, host_frame, GuestFrame, Heartbeat, HostFrame, Log, TaskChunk,
    };

    fn log_frame(data: &[u8]) -> GuestFrame {
        GuestFrame {
            kind: Some(guest_frame::Kind::Log(Log {
                stream: 1,
                data: data.to_vec(),
            })),
        }
    }

    #[test]
    fn round_trip_many_frames_split_at_every_byte() {
        let frames: Vec<GuestFrame> = (0..20).map(|i| log_frame(&vec![i as u8; i * 37])).collect();
        let mut wire = Vec::new();
        for f in &frames {
            write_frame(&mut wire, f, MAX_FRAME).expect("encode");
        }
        // Feed the bytes one at a time: the decoder must never lose or invent a frame.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in &wire {
            buf.extend_from_slice(&[*b]);
            while let Some(f) = decode_frame::<GuestFrame>(&mut buf, MAX_FRAME).expect("decode") {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_length_is_rejected_before_the_body_arrives() {
        let mut buf = BytesMut::new();
        // Varint 1 MiB + 1, with no body at all.
        prost::encoding::encode_varint((MAX_FRAME + 1) as u64, &mut buf);
        let err = decode_frame::<GuestFrame>(&mut buf, MAX_FRAME).expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == (MAX_FRAME + 1) as u64));
        // And nothing was reserved for it.
        assert!(buf.capacity() < MAX_FRAME);
    }

    #[test]
    fn huge_varint_is_rejected() {
        let mut buf = BytesMut::from(&[0xffu8; 10][..]);
        assert!(matches!(
            decode_frame::<GuestFrame>(&mut buf, MAX_FRAME),
            Err(FrameError::BadLength)
        ));
        let mut buf =
            BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(matches!(
            decode_frame::<GuestFrame>(&mut buf, MAX_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn partial_varint_waits_for_more() {
        let mut buf = BytesMut::from(&[0x80u8, 0x80][..]);
        assert!(decode_frame::<GuestFrame>(&mut buf, MAX_FRAME)
            .expect("incomplete is not an error")
            .is_none());
        assert_eq!(buf.len(), 2);
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        // Length 3, then a field with wire type 7 (invalid).
        let mut buf = BytesMut::from(&[3u8, 0x0f, 0xff, 0xff][..]);
        let err = decode_frame::<GuestFrame>(&mut buf, MAX_FRAME).expect_err("garbage");
        assert!(matches!(err, FrameError::Decode { len: 3, .. }), "{err}");
    }

    #[test]
    fn encoder_refuses_frames_over_the_cap() {
        let big = HostFrame {
            kind: Some(host_frame::Kind::TaskChunk(TaskChunk {
                data: vec![0; 100],
            })),
        };
        assert!(matches!(
            encode_frame(&big, 50),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn blocking_reader_reports_clean_eof_and_truncation() {
        let hb = GuestFrame {
            kind: Some(guest_frame::Kind::Heartbeat(Heartbeat { seq: 7 })),
        };
        let mut wire = Vec::new();
        write_frame(&mut wire, &hb, MAX_FRAME).expect("encode");
        let mut r = FrameReader::new(&wire[..], MAX_FRAME);
        assert_eq!(r.read_frame::<GuestFrame>().expect("frame"), Some(hb));
        assert_eq!(r.read_frame::<GuestFrame>().expect("eof"), None);

        let mut r = FrameReader::new(&wire[..wire.len() - 1], MAX_FRAME);
        assert!(matches!(
            r.read_frame::<GuestFrame>(),
            Err(FrameError::Truncated { .. })
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A cheap deterministic xorshift stream; the cargo-fuzz target in fuzz/ goes further.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut input = Vec::new();
            let len = (state % 300) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                input.push(state as u8);
            }
            let mut buf = BytesMut::from(&input[..]);
            while let Ok(Some(_)) = decode_frame::<GuestFrame>(&mut buf, 4096) {}
            let mut buf = BytesMut::from(&input[..]);
            while let Ok(Some(_)) = decode_frame::<HostFrame>(&mut buf, 4096) {}
        }
    }
}
