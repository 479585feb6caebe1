//! What can go wrong on the host side of a session.

use std::{io, path::PathBuf, time::Duration};

use crate::frame::FrameError;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("cannot connect to the guest channel socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    #[error("bad frame from the guest: {0}")]
    Frame(#[from] FrameError),
    #[error("the guest closed the channel while {during}")]
    Closed { during: &'static str },
    #[error("guest protocol violation: {0}")]
    Protocol(String),
    #[error("guest speaks protocol {guest}, host speaks {min}..={max}")]
    Version { guest: u32, min: u32, max: u32 },
    #[error("guest exceeded the {what} limit of {limit}")]
    LimitExceeded { what: &'static str, limit: u64 },
    #[error("unsafe artifact entry {path:?}: {reason}")]
    UnsafeArtifact { path: String, reason: &'static str },
    #[error("bad artifact tar stream: {0}")]
    ArtifactTar(io::Error),
    #[error("writing artifact {path}: {source}")]
    ArtifactIo { path: PathBuf, source: io::Error },
    #[error(
        "the host's state dir is full: writing artifact {path} stopped with {free} bytes free \
         (at least {keep_free} are kept free); the job's artifacts were not kept"
    )]
    HostDiskFull {
        path: PathBuf,
        free: u64,
        keep_free: u64,
    },
    #[error("packing the task tree {path}: {source}")]
    TaskTree { path: PathBuf, source: io::Error },
    #[error("the guest agent failed: {0}")]
    Agent(String),
    #[error("the job exceeded its timeout of {0:?}")]
    JobTimeout(Duration),
    #[error("the session was cancelled")]
    Cancelled,
    #[error("internal: {0}")]
    Internal(String),
}
