//! What a session reports while it runs and when it ends.

use minion_proto::guest;

// One definition of each, shared with the formula runner that produces them in the guest.
pub use minion_formula::{ActionState, LogStream};

/// Unknown values from the guest are shown as the runner's: they are still its bytes.
pub(crate) fn log_stream_from_wire(v: i32) -> LogStream {
    match guest::LogStream::try_from(v) {
        Ok(guest::LogStream::Stdout) => LogStream::Stdout,
        Ok(guest::LogStream::Stderr) => LogStream::Stderr,
        _ => LogStream::Runner,
    }
}

pub(crate) fn action_state_from_wire(v: i32) -> Option<ActionState> {
    match guest::ActionState::try_from(v) {
        Ok(guest::ActionState::Started) => Some(ActionState::Started),
        Ok(guest::ActionState::Succeeded) => Some(ActionState::Succeeded),
        Ok(guest::ActionState::Failed) => Some(ActionState::Failed),
        Ok(guest::ActionState::Skipped) => Some(ActionState::Skipped),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Ready {
        agent_version: String,
    },
    Log {
        stream: LogStream,
        data: Vec<u8>,
    },
    Action {
        index: u32,
        name: String,
        state: ActionState,
    },
    Heartbeat,
    /// The formula has ended and the guest is handing over artifacts and results (the first
    /// ArtifactChunk, or ArtifactEnd when there are none).
    Collecting,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOutcome {
    pub agent_version: String,
    pub execution_status_ok: bool,
    pub status_message: String,
    pub exit_code: i32,
    /// The guest stopped the formula early (host Cancel or the job's own timeout).
    pub cancelled: bool,
    pub results_yaml: String,
    pub tap: String,
    /// Bytes of the artifact tar stream received.
    pub artifact_bytes: u64,
    /// Entries (files and directories) unpacked under the artifacts dir.
    pub artifact_entries: u64,
    /// Bytes of log data received.
    pub log_bytes: u64,
    /// From the first artifact chunk to ArtifactEnd (the channel's artifact throughput).
    pub artifact_transfer: std::time::Duration,
}
