//! The host side of an instance: a guest past Ready that is sent Attach instead of a Job, and then
//! runs commands for as long as the host keeps it.
//!
//! ```text
//! ReadySession --attach--> (InstanceLink, AttachedSession)
//! InstanceLink::exec → Exec (send: input, eof, resize, signal; next: output…, exit)
//! AttachedSession::run: routes the guest's ExecOutput/ExecExit to their Exec until the guest is
//!                       unusable (end of stream, bad frame, silence) or `stop`
//! ```
//!
//! One writer task owns the stream's write half: an `Exec` whose command does not read its stdin
//! holds up only its own input, never the reading of the guest's frames. The guest stays hostile:
//! frames are capped, ids the host never gave are a protocol error, commands at once are bounded,
//! and a silent guest is dead after `heartbeat_timeout`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use minion_proto::guest::{
    guest_frame, host_frame, Attach, ExecInput, ExecResize, ExecSignal, ExecStart, GuestFrame,
    HostFrame, Identity,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf},
    sync::mpsc,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    async_frame::{write_frame_async, AsyncFrameReader},
    session::{agent_error, await_answer, host, kind_name},
    ChannelError, Limits, ReadySession,
};

/// Commands running at once in one instance (the agent's own bound is the same).
pub const MAX_EXECS: usize = 64;
/// How long the agent may take to apply the identity (and bring the network up) before Attached.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// Frames queued for the writer.
const WRITE_QUEUE: usize = 64;
/// Events queued for one command's reader before the guest's frames wait for it.
const EVENT_QUEUE: usize = 256;
/// What the `Closed` error says of an attached session.
const DURING_ATTACHED: &str = "an instance was attached";

/// A command to run in the instance.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub env: HashMap<String, String>,
    /// Empty: `/root`.
    pub cwd: String,
    /// On a pseudo-terminal of `rows` × `cols` (0: 24 × 80).
    pub tty: bool,
    pub rows: u32,
    pub cols: u32,
}

/// What the host tells a running command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecControl {
    Input(Vec<u8>),
    /// End of stdin (a terminal's end-of-file character with a tty).
    Eof,
    Resize {
        rows: u32,
        cols: u32,
    },
    Signal(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStream {
    Stdout,
    Stderr,
}

/// What a running command tells the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Output {
        stream: ExecStream,
        data: Vec<u8>,
    },
    /// The last event. `error`: it could not be started.
    Exit {
        code: i32,
        signal: i32,
        error: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{MAX_EXECS} commands already run in this instance (or its exec ids are used up)")]
    TooMany,
    #[error("no command given")]
    NoCommand,
    #[error("the instance's channel is closed")]
    Closed,
}

type Routes = Arc<Mutex<HashMap<u32, mpsc::Sender<ExecEvent>>>>;

fn lock(r: &Routes) -> std::sync::MutexGuard<'_, HashMap<u32, mpsc::Sender<ExecEvent>>> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts commands in an attached instance. Cheap to clone; the instance's channel stays open
/// while its [`AttachedSession`] runs.
#[derive(Clone)]
pub struct InstanceLink {
    frames: mpsc::Sender<HostFrame>,
    routes: Routes,
    /// The last id given (ids count from 1).
    last_id: Arc<Mutex<u32>>,
}

/// One command running in an instance. Dropping it before its exit kills the command.
pub struct Exec {
    pub id: u32,
    frames: mpsc::Sender<HostFrame>,
    routes: Routes,
    events: mpsc::Receiver<ExecEvent>,
    exited: bool,
}

/// The guest's side of an attached instance, to be run (and awaited) by its owner.
pub struct AttachedSession<S> {
    frames: AsyncFrameReader<ReadHalf<S>>,
    routes: Routes,
    last_id: Arc<Mutex<u32>>,
    writer: tokio::task::JoinHandle<Result<(), ChannelError>>,
    heartbeat_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ReadySession<S> {
    /// Makes the guest an instance: sends Attach (its identity, whether it has a network) and
    /// waits for Attached, Heartbeats allowed before it.
    pub async fn attach(
        self,
        identity: Option<Identity>,
        network: bool,
        limits: &Limits,
    ) -> Result<(InstanceLink, AttachedSession<S>), ChannelError> {
        let (mut frames, mut wr) = self.into_parts();
        let attach = host(host_frame::Kind::Attach(Attach { identity, network }));
        let exchange = async {
            write_frame_async(&mut wr, &attach, limits.max_frame).await?;
            await_answer(
                &mut frames,
                |k| matches!(k, guest_frame::Kind::Attached(_)),
                "Attached",
                "waiting for the agent to attach",
            )
            .await
        };
        match tokio::time::timeout(ATTACH_TIMEOUT, exchange).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ChannelError::Timeout {
                    what: "the agent's Attached",
                    timeout: ATTACH_TIMEOUT,
                })
            }
        }
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::spawn(write_frames(wr, rx, limits.max_frame));
        let (routes, last_id) = (Routes::default(), Arc::<Mutex<u32>>::default());
        Ok((
            InstanceLink {
                frames: tx,
                routes: routes.clone(),
                last_id: last_id.clone(),
            },
            AttachedSession {
                frames,
                routes,
                last_id,
                writer,
                heartbeat_timeout: limits.heartbeat_timeout,
            },
        ))
    }
}

async fn write_frames<W: AsyncWrite>(
    mut wr: WriteHalf<W>,
    mut rx: mpsc::Receiver<HostFrame>,
    max: usize,
) -> Result<(), ChannelError> {
    while let Some(frame) = rx.recv().await {
        write_frame_async(&mut wr, &frame, max).await?;
    }
    Ok(())
}

impl InstanceLink {
    /// Starts `spec` in the guest. Its output and exit come through the returned [`Exec`].
    pub async fn exec(&self, spec: ExecSpec) -> Result<Exec, ExecError> {
        if spec.argv.is_empty() {
            return Err(ExecError::NoCommand);
        }
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let id = {
            let mut routes = lock(&self.routes);
            if routes.len() >= MAX_EXECS {
                return Err(ExecError::TooMany);
            }
            let mut last = self.last_id.lock().unwrap_or_else(|p| p.into_inner());
            // Never reused: output still in flight for a command given up on can't reach another.
            let id = last.checked_add(1).ok_or(ExecError::TooMany)?;
            *last = id;
            routes.insert(id, tx);
            id
        };
        let start = host(host_frame::Kind::ExecStart(ExecStart {
            id,
            argv: spec.argv,
            env: spec.env,
            cwd: spec.cwd,
            tty: spec.tty,
            rows: spec.rows,
            cols: spec.cols,
        }));
        if self.frames.send(start).await.is_err() {
            lock(&self.routes).remove(&id);
            return Err(ExecError::Closed);
        }
        Ok(Exec {
            id,
            frames: self.frames.clone(),
            routes: self.routes.clone(),
            events: rx,
            exited: false,
        })
    }

    /// Commands running now.
    pub fn running(&self) -> usize {
        lock(&self.routes).len()
    }
}

impl Exec {
    /// Passes `ctl` to the command; waits while the guest's queue for it is full.
    pub async fn send(&self, ctl: ExecControl) -> Result<(), ExecError> {
        let id = self.id;
        let kind = match ctl {
            ExecControl::Input(data) => host_frame::Kind::ExecInput(ExecInput {
                id,
                data,
                eof: false,
            }),
            ExecControl::Eof => host_frame::Kind::ExecInput(ExecInput {
                id,
                data: Vec::new(),
                eof: true,
            }),
            ExecControl::Resize { rows, cols } => {
                host_frame::Kind::ExecResize(ExecResize { id, rows, cols })
            }
            ExecControl::Signal(signal) => host_frame::Kind::ExecSignal(ExecSignal { id, signal }),
        };
        self.frames
            .send(host(kind))
            .await
            .map_err(|_| ExecError::Closed)
    }

    /// The command's next event; `None` once it exited (after the Exit) or the instance's
    /// channel closed (then there is no Exit).
    pub async fn next(&mut self) -> Option<ExecEvent> {
        if self.exited {
            return None;
        }
        let ev = self.events.recv().await;
        if matches!(ev, Some(ExecEvent::Exit { .. })) {
            self.exited = true;
        }
        ev
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        if self.exited || lock(&self.routes).remove(&self.id).is_none() {
            return;
        }
        // Nobody reads it any more: the command goes too.
        let kill = host(host_frame::Kind::ExecSignal(ExecSignal {
            id: self.id,
            signal: libc_sigkill(),
        }));
        let frames = self.frames.clone();
        if frames.try_send(kill.clone()).is_err() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = frames.send(kill).await;
                });
            }
        }
    }
}

/// SIGKILL's number on Linux (the guest's kernel).
const fn libc_sigkill() -> i32 {
    9
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> AttachedSession<S> {
    /// Routes the guest's frames until it is unusable, or `stop` (then `Ok`). Every running
    /// [`Exec`] then sees its events end.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), ChannelError> {
        let result = self.serve(&stop).await;
        // Ends every Exec's stream (no Exit: the instance is gone).
        lock(&self.routes).clear();
        self.writer.abort();
        result
    }

    async fn serve(&mut self, stop: &CancellationToken) -> Result<(), ChannelError> {
        loop {
            let deadline = Instant::now() + self.heartbeat_timeout;
            let frame = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ChannelError::Timeout {
                        what: "a frame from the instance (heartbeat)",
                        timeout: self.heartbeat_timeout,
                    })
                }
                written = &mut self.writer => {
                    return match written {
                        Ok(Ok(())) => Err(ChannelError::Internal("the instance's writer ended".into())),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(ChannelError::Internal(format!("the instance's writer: {e}"))),
                    };
                }
                frame = self.frames.next::<GuestFrame>() => frame?,
            };
            let kind = match frame {
                Some(GuestFrame { kind: Some(k) }) => k,
                Some(GuestFrame { kind: None }) => {
                    return Err(ChannelError::Protocol("frame without a message".into()))
                }
                None => {
                    return Err(ChannelError::Closed {
                        during: DURING_ATTACHED,
                    })
                }
            };
            match kind {
                guest_frame::Kind::Heartbeat(_) => {}
                guest_frame::Kind::ExecOutput(o) => {
                    let stream = match o.stream {
                        1 => ExecStream::Stdout,
                        2 => ExecStream::Stderr,
                        s => {
                            return Err(ChannelError::Protocol(format!(
                                "output of exec {} on stream {s}",
                                o.id
                            )))
                        }
                    };
                    let route = self.route(o.id)?;
                    if let Some(tx) = route {
                        let ev = ExecEvent::Output {
                            stream,
                            data: o.data,
                        };
                        // A reader that went away meanwhile: its output is dropped.
                        tokio::select! {
                            biased;
                            _ = stop.cancelled() => return Ok(()),
                            _ = tx.send(ev) => {}
                        }
                    }
                }
                guest_frame::Kind::ExecExit(x) => {
                    let removed = {
                        let mut routes = lock(&self.routes);
                        routes.remove(&x.id)
                    };
                    let was_given = removed.is_some() || self.abandoned(x.id);
                    if !was_given {
                        return Err(ChannelError::Protocol(format!(
                            "exit of exec {} the host never started",
                            x.id
                        )));
                    }
                    if let Some(tx) = removed {
                        let mut error = x.error;
                        truncate(&mut error, 4096);
                        let _ = tx
                            .send(ExecEvent::Exit {
                                code: x.exit_code,
                                signal: x.signal,
                                error: (!error.is_empty()).then_some(error),
                            })
                            .await;
                    }
                }
                guest_frame::Kind::Error(e) => return Err(agent_error(e)),
                other => {
                    return Err(ChannelError::Protocol(format!(
                        "{} in an attached instance",
                        kind_name(&other)
                    )))
                }
            }
        }
    }

    /// Where exec `id`'s output goes: `None` for a command the host gave up on (its output may
    /// still be in flight), an error for an id the host never gave.
    fn route(&self, id: u32) -> Result<Option<mpsc::Sender<ExecEvent>>, ChannelError> {
        if let Some(tx) = lock(&self.routes).get(&id) {
            return Ok(Some(tx.clone()));
        }
        if self.abandoned(id) {
            return Ok(None);
        }
        Err(ChannelError::Protocol(format!(
            "output of exec {id} the host never started"
        )))
    }

    /// Ids are given in order from 1 and never reused: one not in the table at or below the last
    /// given has been let go.
    fn abandoned(&self, id: u32) -> bool {
        id != 0 && id <= *self.last_id.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}
