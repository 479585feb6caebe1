//! What a session reports while it runs and when it ends.

use minion_proto::guest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
    /// The runner's own messages.
    Runner,
}

impl LogStream {
    /// Unknown values from the guest are shown as the runner's: they are still its bytes.
    pub(crate) fn from_wire(v: i32) -> Self {
        match guest::LogStream::try_from(v) {
            Ok(guest::LogStream::Stdout) => Self::Stdout,
            Ok(guest::LogStream::Stderr) => Self::Stderr,
            _ => Self::Runner,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionState {
    Started,
    Succeeded,
    Failed,
    Skipped,
}

impl ActionState {
    pub(crate) fn from_wire(v: i32) -> Option<Self> {
        match guest::ActionState::try_from(v) {
            Ok(guest::ActionState::Started) => Some(Self::Started),
            Ok(guest::ActionState::Succeeded) => Some(Self::Succeeded),
            Ok(guest::ActionState::Failed) => Some(Self::Failed),
            Ok(guest::ActionState::Skipped) => Some(Self::Skipped),
            _ => None,
        }
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
