//! Bounds on what one guest may make the host do.

use std::time::Duration;

use crate::frame::MAX_FRAME;

/// Every budget and wait of a session. `Default` is sized for real jobs; tests shrink it.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame accepted from the guest (and sent to it).
    pub max_frame: usize,
    /// Total bytes of Log data the guest may send.
    pub max_log_bytes: u64,
    /// Total bytes of the artifact tar stream.
    pub max_artifact_bytes: u64,
    /// Tar entries (files and directories) in the artifact stream.
    pub max_artifact_entries: u64,
    /// Writing artifacts stops when the host's filesystem under the artifacts dir has fewer
    /// free bytes than this (so the host's own database always has room). 0: no check.
    pub keep_free_bytes: u64,
    /// From the start of the session to the guest's Ready.
    pub ready_timeout: Duration,
    /// Longest silence accepted from the guest after Ready.
    pub heartbeat_timeout: Duration,
    /// How often the guest is asked to send a Heartbeat (must be well under `heartbeat_timeout`).
    pub heartbeat_interval: Duration,
    /// After sending Cancel (cancellation or job timeout): how long the guest gets to wrap up.
    pub cancel_grace: Duration,
    /// Size of the task tar chunks sent to the guest (fetched files go in full-size frames).
    pub task_chunk: usize,
    /// Fetch requests one job may make.
    pub max_fetch_requests: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: MAX_FRAME,
            max_log_bytes: 64 * 1024 * 1024,
            max_artifact_bytes: 4 * 1024 * 1024 * 1024,
            max_artifact_entries: 100_000,
            keep_free_bytes: 0,
            ready_timeout: Duration::from_secs(120),
            heartbeat_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            cancel_grace: Duration::from_secs(20),
            task_chunk: 256 * 1024,
            max_fetch_requests: 256,
        }
    }
}
