//! The frame codec over tokio I/O. Reading is cancel-safe (bytes accumulate in the reader's own
//! buffer), so it can sit in a `select!` beside timers.

use bytes::BytesMut;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{decode_frame, encode_frame, FrameError};

pub(crate) struct AsyncFrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> AsyncFrameReader<R> {
    pub(crate) fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
            max,
        }
    }

    /// The next frame; `Ok(None)` on a clean end of stream.
    pub(crate) async fn next<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        loop {
            if let Some(msg) = decode_frame(&mut self.buf, self.max)? {
                return Ok(Some(msg));
            }
            if self.buf.capacity() - self.buf.len() < 8 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated {
                        buffered: self.buf.len(),
                    })
                };
            }
        }
    }
}

pub(crate) async fn write_frame_async<W: AsyncWrite + Unpin, M: Message>(
    w: &mut W,
    msg: &M,
    max: usize,
) -> Result<(), FrameError> {
    let bytes = encode_frame(msg, max)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}
