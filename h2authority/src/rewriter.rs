//! The client→server byte stream as HTTP/2 frames: header blocks are decoded, their invalid
//! `:authority` replaced and re-encoded; everything else is copied as it came.

use std::borrow::Cow;

use crate::{encode, shape, REPLACEMENT};

/// Bounds on what one client may make the rewriter hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// One header block (HEADERS + CONTINUATIONs) as received.
    pub max_block: usize,
    /// One decoded header list, counted as RFC 7541 §4.1 does (name + value + 32 per field).
    pub max_decoded: usize,
    /// The client's HPACK dynamic table: what the server advertises (h2's default).
    pub table_size: usize,
}

pub const LIMITS: Limits = Limits {
    max_block: 1 << 20,
    max_decoded: 1 << 20,
    table_size: 4096,
};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may set (RFC 9113 §6.5.2): always accepted.
const MAX_OUT_PAYLOAD: usize = 16_384;

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RewriteError {
    #[error("HTTP/2 protocol error from the client: {0}")]
    Protocol(&'static str),
    #[error("the client's header block does not decode (HPACK): {0}")]
    Hpack(String),
    #[error("the client's header block is larger than {limit} bytes ({what})")]
    TooLarge { what: &'static str, limit: usize },
}

enum Mode {
    /// Before the client's connection preface.
    Preface,
    Frames,
    /// Not HTTP/2 with prior knowledge: not ours to touch.
    Transparent,
    Failed(RewriteError),
}

/// A header block whose END_HEADERS has not come yet.
struct Pending {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

pub struct Rewriter {
    mode: Mode,
    limits: Limits,
    /// Input held until a whole frame header, or a whole HEADERS/CONTINUATION frame, is here.
    held: Vec<u8>,
    /// Payload bytes of the current pass-through frame still to copy.
    passthrough: usize,
    pending: Option<Pending>,
    decoder: fluke_hpack::Decoder<'static>,
    rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new(LIMITS)
    }
}

impl Rewriter {
    pub fn new(limits: Limits) -> Self {
        let mut decoder = fluke_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(limits.table_size);
        Rewriter {
            mode: Mode::Preface,
            limits,
            held: Vec::new(),
            passthrough: 0,
            pending: None,
            decoder,
            rewritten: 0,
        }
    }

    /// How many `:authority` values were replaced so far.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Consumes `input` (any split of the stream), appending what the server should read to
    /// `out`. After an error every call fails with it again.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        loop {
            match &self.mode {
                Mode::Failed(e) => return Err(e.clone()),
                Mode::Transparent => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                Mode::Preface => {
                    take_until(&mut self.held, &mut input, PREFACE.len());
                    if !PREFACE.starts_with(&self.held) {
                        self.mode = Mode::Transparent;
                    } else if self.held.len() < PREFACE.len() {
                        return Ok(());
                    } else {
                        self.mode = Mode::Frames;
                    }
                    out.append(&mut self.held);
                }
                Mode::Frames => {
                    if self.passthrough > 0 {
                        let n = self.passthrough.min(input.len());
                        out.extend_from_slice(&input[..n]);
                        input = &input[n..];
                        self.passthrough -= n;
                    }
                    if input.is_empty() {
                        return Ok(());
                    }
                    if let Err(e) = self.frame(&mut input, out) {
                        self.mode = Mode::Failed(e.clone());
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Takes from `input` towards the next frame; handles it once it is all here.
    fn frame(&mut self, input: &mut &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        take_until(&mut self.held, input, FRAME_HEADER);
        if self.held.len() < FRAME_HEADER {
            return Ok(());
        }
        let h = &self.held;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        match (&self.pending, kind) {
            (Some(p), CONTINUATION) if p.stream == stream => {}
            (Some(_), _) => {
                return Err(RewriteError::Protocol(
                    "a header block interrupted by another frame",
                ))
            }
            (None, CONTINUATION) => {
                return Err(RewriteError::Protocol(
                    "CONTINUATION without a header block before it",
                ))
            }
            (None, PUSH_PROMISE) => {
                return Err(RewriteError::Protocol("PUSH_PROMISE from a client"))
            }
            (None, HEADERS) => {}
            (None, _) => {
                out.append(&mut self.held);
                self.passthrough = len;
                return Ok(());
            }
        }
        if len > self.limits.max_block {
            return Err(RewriteError::TooLarge {
                what: "one frame",
                limit: self.limits.max_block,
            });
        }
        take_until(&mut self.held, input, FRAME_HEADER + len);
        if self.held.len() < FRAME_HEADER + len {
            return Ok(());
        }
        let payload = std::mem::take(&mut self.held);
        let payload = &payload[FRAME_HEADER..];
        let pending = match self.pending.take() {
            Some(mut p) => {
                if p.block.len() + payload.len() > self.limits.max_block {
                    return Err(RewriteError::TooLarge {
                        what: "as received",
                        limit: self.limits.max_block,
                    });
                }
                p.block.extend_from_slice(payload);
                p
            }
            None => headers_frame(stream, flags, payload)?,
        };
        if flags & END_HEADERS == 0 {
            self.pending = Some(pending);
            return Ok(());
        }
        let block = self.rewrite(&pending.block)?;
        emit(out, &pending, &block);
        Ok(())
    }

    fn rewrite(&mut self, block: &[u8]) -> Result<Vec<u8>, RewriteError> {
        let limit = self.limits.max_decoded;
        let (mut size, mut over) = (0usize, false);
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        shape::check(block, self.limits.table_size)
            .map_err(|e| RewriteError::Hpack(e.to_string()))?;
        self.decoder
            .decode_with_cb(block, |name: Cow<[u8]>, value: Cow<[u8]>| {
                size = size.saturating_add(name.len() + value.len() + 32);
                over |= size > limit;
                if !over {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| RewriteError::Hpack(format!("{e:?}")))?;
        if over {
            return Err(RewriteError::TooLarge {
                what: "decoded",
                limit,
            });
        }
        let mut out = Vec::with_capacity(size);
        for (name, value) in &fields {
            let value = if name == b":authority" && !valid_authority(value) {
                self.rewritten += 1;
                tracing::debug!(
                    "client :authority {:?} is no authority: sent on as {REPLACEMENT}",
                    String::from_utf8_lossy(value)
                );
                REPLACEMENT.as_bytes()
            } else {
                value
            };
            encode::field(&mut out, name, value);
        }
        Ok(out)
    }
}

fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// Strips a HEADERS frame's padding and priority, keeping the priority to send on.
fn headers_frame(stream: u32, flags: u8, payload: &[u8]) -> Result<Pending, RewriteError> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, rest) = p.split_first().ok_or(RewriteError::Protocol(
            "PADDED HEADERS without its pad length",
        ))?;
        pad = usize::from(n);
        p = rest;
    }
    let priority = if flags & PRIORITY != 0 {
        let (prio, rest) = p.split_first_chunk::<5>().ok_or(RewriteError::Protocol(
            "PRIORITY HEADERS shorter than 5 bytes",
        ))?;
        p = rest;
        Some(*prio)
    } else {
        None
    };
    if pad > p.len() {
        return Err(RewriteError::Protocol(
            "HEADERS padding longer than the frame",
        ));
    }
    Ok(Pending {
        stream,
        end_stream: flags & END_STREAM != 0,
        priority,
        block: p[..p.len() - pad].to_vec(),
    })
}

/// Writes `block` as one HEADERS frame and as many CONTINUATIONs as the frame size needs.
fn emit(out: &mut Vec<u8>, p: &Pending, block: &[u8]) {
    let prio_len = if p.priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = block.split_at(block.len().min(MAX_OUT_PAYLOAD - prio_len));
    let mut flags = 0;
    if p.end_stream {
        flags |= END_STREAM;
    }
    if p.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_header(out, prio_len + first.len(), HEADERS, flags, p.stream);
    if let Some(prio) = &p.priority {
        out.extend_from_slice(prio);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, r) = rest.split_at(rest.len().min(MAX_OUT_PAYLOAD));
        rest = r;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        frame_header(out, chunk.len(), CONTINUATION, flags, p.stream);
        out.extend_from_slice(chunk);
    }
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    // `len` is at most MAX_OUT_PAYLOAD, well inside the 24-bit length field.
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// Moves bytes from `input` to `held` until `held` has `want` bytes or `input` is empty.
fn take_until(held: &mut Vec<u8>, input: &mut &[u8], want: usize) {
    let n = want.saturating_sub(held.len()).min(input.len());
    held.extend_from_slice(&input[..n]);
    *input = &input[n..];
}

#[cfg(test)]
#[path = "rewriter/tests.rs"]
mod tests;
