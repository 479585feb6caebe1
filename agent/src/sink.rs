//! Forwards the formula's live output and action transitions to the host as they happen.

use minion_formula::{ActionState, EventSink, LogStream};
use minion_proto::guest::{self, guest_frame::Kind};

use crate::outbox::Outbox;

/// Keeps each Log frame well below the frame cap, and live: a long line is split rather than held.
const MAX_LOG_FRAME_DATA: usize = 64 * 1024;

pub struct ChannelSink {
    outbox: Outbox,
}

impl ChannelSink {
    pub fn new(outbox: Outbox) -> Self {
        Self { outbox }
    }

    /// A runner message (the agent's own, not the formula's).
    pub fn runner(&mut self, message: &str) {
        // Marked as the formula runner marks its own lines.
        let mut line = format!("[minion] {message}");
        if !line.ends_with('\n') {
            line.push('\n');
        }
        self.log(LogStream::Runner, line.as_bytes());
    }
}

pub fn wire_stream(stream: LogStream) -> guest::LogStream {
    match stream {
        LogStream::Stdout => guest::LogStream::Stdout,
        LogStream::Stderr => guest::LogStream::Stderr,
        LogStream::Runner => guest::LogStream::Runner,
    }
}

pub fn wire_state(state: ActionState) -> guest::ActionState {
    match state {
        ActionState::Started => guest::ActionState::Started,
        ActionState::Succeeded => guest::ActionState::Succeeded,
        ActionState::Failed => guest::ActionState::Failed,
        ActionState::Skipped => guest::ActionState::Skipped,
    }
}

impl EventSink for ChannelSink {
    fn log(&mut self, stream: LogStream, data: &[u8]) {
        let stream = wire_stream(stream) as i32;
        for piece in data.chunks(MAX_LOG_FRAME_DATA) {
            let frame = Kind::Log(guest::Log {
                stream,
                data: piece.to_vec(),
            });
            // A send failure marks the outbox broken; the main loop notices and cancels the run.
            if self.outbox.send(frame).is_err() {
                return;
            }
        }
    }

    fn action(&mut self, index: usize, name: &str, state: ActionState) {
        let frame = Kind::Action(guest::Action {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            name: name.to_owned(),
            state: wire_state(state) as i32,
        });
        let _ = self.outbox.send(frame);
    }
}
