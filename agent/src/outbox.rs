//! The agent's single way to talk to the host: every thread (formula events, heartbeats, artifact
//! packer) sends whole frames through one lock, so frames never interleave.

use std::io::Write;
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use minion_channel::frame::{write_frame, MAX_FRAME};
use minion_proto::guest::{guest_frame::Kind, GuestFrame};

use crate::port::WriteHalf;

#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Mutex<WriteHalf>>,
    broken: Arc<AtomicBool>,
}

impl Outbox {
    pub fn new(w: WriteHalf) -> Self {
        Self {
            inner: Arc::new(Mutex::new(w)),
            broken: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sends one frame. After the first failure every send fails fast: the host is gone and the job
    /// cannot be reported anyway.
    pub fn send(&self, kind: Kind) -> Result<(), minion_channel::FrameError> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "channel broken").into(),
            );
        }
        let frame = GuestFrame { kind: Some(kind) };
        // A poisoned lock only means another sender panicked mid-write; the stream is then garbage.
        let mut w = self
            .inner
            .lock()
            .map_err(|_| std::io::Error::other("channel writer poisoned"))?;
        let result = write_frame(&mut *w, &frame, MAX_FRAME).and_then(|()| Ok(w.flush()?));
        if result.is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Sends bytes that already form whole frames (the artifact packer encodes its own, to spare
    /// the guest a copy of every artifact byte).
    pub fn send_encoded(&self, frames: &[u8]) -> std::io::Result<()> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "channel broken",
            ));
        }
        let mut w = self
            .inner
            .lock()
            .map_err(|_| std::io::Error::other("channel writer poisoned"))?;
        let result = w.write_all(frames).and_then(|()| w.flush());
        if result.is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
        result
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }
}
