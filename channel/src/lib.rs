//! The guest channel: the frame codec both ends share, and (feature `host`, on by default) the host
//! side the daemon uses to drive one job's exchange with the in-guest agent.
//!
//! Everything the guest sends is treated as hostile: frames are capped before allocation, logs and
//! artifacts have byte and entry budgets, artifact tar entries are confined to the job's directory,
//! and every wait has a timeout.

pub mod fetch_wire;
pub mod frame;

#[cfg(feature = "host")]
mod artifacts;
#[cfg(feature = "host")]
mod async_frame;
#[cfg(feature = "host")]
mod connect;
#[cfg(feature = "host")]
mod error;
#[cfg(feature = "host")]
mod event;
#[cfg(feature = "host")]
mod fetch;
#[cfg(feature = "host")]
mod instance;
#[cfg(feature = "host")]
mod job;
#[cfg(feature = "host")]
mod limits;
#[cfg(feature = "host")]
mod session;
#[cfg(feature = "host")]
mod task_tar;

pub use frame::{FrameError, MAX_FRAME};

/// The protocol version this build speaks (`Hello.protocol_*`, `Ready.protocol`).
pub const PROTOCOL_VERSION: u32 = 1;

#[cfg(feature = "host")]
pub use {
    artifacts::free_bytes,
    connect::connect_unix,
    error::ChannelError,
    event::{ActionState, LogStream, SessionEvent, SessionOutcome},
    fetch::{FetchHandler, HostFile},
    instance::{
        AttachedSession, Exec, ExecControl, ExecError, ExecEvent, ExecSpec, ExecStream,
        InstanceLink,
    },
    job::JobSpec,
    limits::Limits,
    session::{handshake, run_session, ReadySession},
};
