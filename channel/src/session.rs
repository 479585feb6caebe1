//! Drives one job's exchange with the guest agent, from Hello to Result.
//!
//! Two halves run concurrently in the caller's task (no `'static` needed): the writer sends Hello, then
//! the Job and the task tar once the guest is Ready, then Cancel if asked; the reader is the state
//! machine below, and owns every timeout and budget.
//!
//! ```text
//! AwaitReady --Ready--> Running --ArtifactChunk*--> Artifacts --ArtifactEnd--> Collected --Result--> done
//!      any state: Cancel/job timeout -> Stopping (bounded by cancel_grace) -> Cancelled / JobTimeout
//! ```

use std::{path::Path, time::Duration};

use minion_proto::guest::{
    guest_frame, host_frame, Cancel, GuestFrame, Hello, HostFrame, Job, TaskChunk, TaskEnd,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, WriteHalf},
    sync::{mpsc, oneshot, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    artifacts::{spawn_unpacker, Unpacker},
    async_frame::{write_frame_async, AsyncFrameReader},
    task_tar::spawn_packer,
    ActionState, ChannelError, JobSpec, Limits, LogStream, SessionEvent, SessionOutcome,
    PROTOCOL_VERSION,
};

/// Longest agent error message kept (the rest of a hostile guest's text is dropped).
const MAX_AGENT_MESSAGE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitReady,
    Running,
    Artifacts,
    Collected,
}

impl Phase {
    fn during(self) -> &'static str {
        match self {
            Phase::AwaitReady => "waiting for the agent to be Ready",
            Phase::Running => "the job was running",
            Phase::Artifacts => "receiving artifacts",
            Phase::Collected => "waiting for the Result",
        }
    }
}

/// Builds the error a stopped session ends with (given the job's timeout).
type StopError = fn(Duration) -> ChannelError;

enum Unpack {
    Idle,
    Running(Unpacker),
    Done { entries: u64 },
}

/// Runs the whole exchange on `stream`. Artifacts land under `artifacts_dir` (created if needed);
/// live events go to `events` (a dropped receiver is ignored). On `cancel` the guest is sent Cancel
/// and given `limits.cancel_grace` to finish, then the session ends with [`ChannelError::Cancelled`];
/// past `job.timeout` the same happens and it ends with [`ChannelError::JobTimeout`].
pub async fn run_session<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: S,
    job: &JobSpec,
    task_dir: &Path,
    artifacts_dir: &Path,
    limits: &Limits,
    events: mpsc::Sender<SessionEvent>,
    cancel: CancellationToken,
) -> Result<SessionOutcome, ChannelError> {
    let (rd, wr) = tokio::io::split(stream);
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = watch::channel(None);
    let writer = write_side(wr, job, task_dir, limits, ready_rx, stop_rx);
    let reader = Reader {
        frames: AsyncFrameReader::new(rd, limits.max_frame),
        job,
        artifacts_dir,
        limits,
        events,
        cancel,
        ready_tx: Some(ready_tx),
        stop_tx,
        phase: Phase::AwaitReady,
        agent_version: String::new(),
        log_bytes: 0,
        artifact_bytes: 0,
        unpack: Unpack::Idle,
        artifact_started: None,
        artifact_transfer: Duration::ZERO,
        stopping: None,
        job_deadline: None,
    }
    .run();
    tokio::pin!(reader, writer);
    let mut writer_done = false;
    loop {
        tokio::select! {
            outcome = &mut reader => return outcome,
            written = &mut writer, if !writer_done => {
                written?;
                writer_done = true;
            }
        }
    }
}

async fn write_side<W: AsyncWrite>(
    wr: WriteHalf<W>,
    job: &JobSpec,
    task_dir: &Path,
    limits: &Limits,
    ready: oneshot::Receiver<()>,
    mut stop: watch::Receiver<Option<String>>,
) -> Result<(), ChannelError> {
    let mut wr = wr;
    let max = limits.max_frame;
    let hello = host(host_frame::Kind::Hello(Hello {
        protocol_min: PROTOCOL_VERSION,
        protocol_max: PROTOCOL_VERSION,
        heartbeat_interval_ms: millis(limits.heartbeat_interval),
        host_version: env!("CARGO_PKG_VERSION").to_owned(),
    }));
    write_frame_async(&mut wr, &hello, max).await?;
    if ready.await.is_err() {
        // The reader ended the session before Ready; nothing more to say.
        return Ok(());
    }
    let job_frame = host(host_frame::Kind::Job(Job {
        id: job.id.clone(),
        item: job.item.clone(),
        item_type: job.item_type.clone(),
        arch: job.arch.clone(),
        formula_path: job.formula_path.clone(),
        variables: job.variables.clone().into_iter().collect(),
        timeout_ms: millis(job.timeout),
        uuid: if job.uuid.is_empty() {
            job.id.clone()
        } else {
            job.uuid.clone()
        },
    }));
    write_frame_async(&mut wr, &job_frame, max).await?;

    // Chunk size leaves room for the frame's own few bytes of envelope.
    let chunk = limits.task_chunk.min(max.saturating_sub(64)).max(512);
    let (mut chunks, packer) = spawn_packer(task_dir, chunk);
    let mut total = 0u64;
    while let Some(data) = chunks.recv().await {
        if stop.borrow().is_some() {
            break;
        }
        total += data.len() as u64;
        let frame = host(host_frame::Kind::TaskChunk(TaskChunk { data }));
        write_frame_async(&mut wr, &frame, max).await?;
    }
    drop(chunks);
    if stop.borrow().is_none() {
        packer
            .await
            .map_err(|e| ChannelError::Internal(format!("task packer: {e}")))??;
        let end = host(host_frame::Kind::TaskEnd(TaskEnd { total_bytes: total }));
        write_frame_async(&mut wr, &end, max).await?;
    }

    // Only a Cancel may follow. A closed watch means the session is over.
    let Ok(reason) = stop.wait_for(Option::is_some).await.map(|r| r.clone()) else {
        return Ok(());
    };
    let cancel = host(host_frame::Kind::Cancel(Cancel {
        reason: reason.unwrap_or_default(),
    }));
    write_frame_async(&mut wr, &cancel, max).await?;
    Ok(())
}

struct Reader<'a, R> {
    frames: AsyncFrameReader<R>,
    job: &'a JobSpec,
    artifacts_dir: &'a Path,
    limits: &'a Limits,
    events: mpsc::Sender<SessionEvent>,
    cancel: CancellationToken,
    ready_tx: Option<oneshot::Sender<()>>,
    stop_tx: watch::Sender<Option<String>>,
    phase: Phase,
    agent_version: String,
    log_bytes: u64,
    artifact_bytes: u64,
    unpack: Unpack,
    artifact_started: Option<Instant>,
    artifact_transfer: Duration,
    /// Set once Cancel was sent: when the grace ends, and what the session then returns.
    stopping: Option<(Instant, StopError)>,
    job_deadline: Option<Instant>,
}

impl<R: AsyncRead + Unpin> Reader<'_, R> {
    async fn run(mut self) -> Result<SessionOutcome, ChannelError> {
        let start = Instant::now();
        let mut last_frame = start;
        loop {
            let (silence_deadline, what, allowed) = if self.phase == Phase::AwaitReady {
                (
                    start + self.limits.ready_timeout,
                    "the agent's Ready",
                    self.limits.ready_timeout,
                )
            } else {
                (
                    last_frame + self.limits.heartbeat_timeout,
                    "a frame from the guest (heartbeat)",
                    self.limits.heartbeat_timeout,
                )
            };
            let grace_deadline = self.stopping.map(|(at, _)| at);
            tokio::select! {
                biased;
                _ = self.cancel.cancelled(), if self.stopping.is_none() => {
                    if self.phase == Phase::AwaitReady {
                        return Err(ChannelError::Cancelled);
                    }
                    self.begin_stop("cancelled by the host".into(), |_| ChannelError::Cancelled);
                }
                _ = sleep_until_opt(self.job_deadline), if self.stopping.is_none() && self.job_deadline.is_some() => {
                    let reason = format!("job timeout of {:?} exceeded", self.job.timeout);
                    self.begin_stop(reason, ChannelError::JobTimeout);
                }
                _ = sleep_until_opt(grace_deadline), if grace_deadline.is_some() => {
                    return Err(self.stop_error());
                }
                _ = tokio::time::sleep_until(silence_deadline) => {
                    return Err(ChannelError::Timeout { what, timeout: allowed });
                }
                frame = self.frames.next::<GuestFrame>() => {
                    last_frame = Instant::now();
                    let frame = match frame {
                        Ok(Some(f)) => f,
                        Ok(None) if self.stopping.is_some() => return Err(self.stop_error()),
                        Ok(None) => return Err(ChannelError::Closed { during: self.phase.during() }),
                        Err(e) => return Err(e.into()),
                    };
                    if let Some(outcome) = self.handle(frame).await? {
                        return match self.stopping {
                            Some(_) => Err(self.stop_error()),
                            None => Ok(outcome),
                        };
                    }
                }
            }
        }
    }

    fn begin_stop(&mut self, reason: String, error: StopError) {
        tracing::info!(job = %self.job.id, %reason, "stopping the guest");
        self.stopping = Some((Instant::now() + self.limits.cancel_grace, error));
        self.stop_tx.send_replace(Some(reason));
    }

    fn stop_error(&self) -> ChannelError {
        match self.stopping {
            Some((_, make)) => make(self.job.timeout),
            None => ChannelError::Cancelled,
        }
    }

    async fn emit(&self, event: SessionEvent) {
        // The consumer may have gone (daemon shutting down); the session still ends properly.
        let _ = self.events.send(event).await;
    }

    /// Applies one guest frame; `Some` once the Result arrived.
    async fn handle(&mut self, frame: GuestFrame) -> Result<Option<SessionOutcome>, ChannelError> {
        use guest_frame::Kind;
        let Some(kind) = frame.kind else {
            return Err(ChannelError::Protocol("frame without a message".into()));
        };
        match (self.phase, kind) {
            (_, Kind::Error(e)) => Err(agent_error(e)),
            (Phase::AwaitReady, Kind::Ready(ready)) => {
                self.ready(ready).await?;
                Ok(None)
            }
            (Phase::AwaitReady, other) => Err(ChannelError::Protocol(format!(
                "{} before Ready",
                kind_name(&other)
            ))),
            (_, other) => self.handle_running(other).await,
        }
    }

    async fn ready(&mut self, ready: minion_proto::guest::Ready) -> Result<(), ChannelError> {
        if ready.protocol != PROTOCOL_VERSION {
            return Err(ChannelError::Version {
                guest: ready.protocol,
                min: PROTOCOL_VERSION,
                max: PROTOCOL_VERSION,
            });
        }
        let mut version = ready.agent_version;
        truncate_utf8(&mut version, 256);
        self.agent_version = version.clone();
        self.phase = Phase::Running;
        if !self.job.timeout.is_zero() {
            self.job_deadline = Some(Instant::now() + self.job.timeout);
        }
        if let Some(tx) = self.ready_tx.take() {
            let _ = tx.send(());
        }
        self.emit(SessionEvent::Ready {
            agent_version: version,
        })
        .await;
        Ok(())
    }

    /// Frames after Ready (Error already handled).
    async fn handle_running(
        &mut self,
        kind: guest_frame::Kind,
    ) -> Result<Option<SessionOutcome>, ChannelError> {
        use guest_frame::Kind;
        match kind {
            Kind::Ready(_) => Err(ChannelError::Protocol("a second Ready".into())),
            Kind::Log(log) => {
                self.log_bytes += log.data.len() as u64;
                if self.log_bytes > self.limits.max_log_bytes {
                    return Err(ChannelError::LimitExceeded {
                        what: "log bytes",
                        limit: self.limits.max_log_bytes,
                    });
                }
                self.emit(SessionEvent::Log {
                    stream: LogStream::from_wire(log.stream),
                    data: log.data,
                })
                .await;
                Ok(None)
            }
            Kind::Action(a) => {
                let state = ActionState::from_wire(a.state).ok_or_else(|| {
                    ChannelError::Protocol(format!(
                        "action {} has unknown state {}",
                        a.index, a.state
                    ))
                })?;
                let mut name = a.name;
                truncate_utf8(&mut name, 1024);
                self.emit(SessionEvent::Action {
                    index: a.index,
                    name,
                    state,
                })
                .await;
                Ok(None)
            }
            Kind::Heartbeat(_) => {
                self.emit(SessionEvent::Heartbeat).await;
                Ok(None)
            }
            Kind::ArtifactChunk(chunk) => {
                self.artifact_chunk(chunk.data).await?;
                Ok(None)
            }
            Kind::ArtifactEnd(end) => {
                self.artifact_end(end.total_bytes).await?;
                Ok(None)
            }
            Kind::Result(r) => {
                if self.phase != Phase::Collected {
                    return Err(ChannelError::Protocol("Result before ArtifactEnd".into()));
                }
                let Unpack::Done { entries } = self.unpack else {
                    return Err(ChannelError::Internal(
                        "artifacts collected but not joined".into(),
                    ));
                };
                Ok(Some(SessionOutcome {
                    agent_version: self.agent_version.clone(),
                    execution_status_ok: r.execution_ok,
                    status_message: r.status_message,
                    exit_code: r.exit_code,
                    cancelled: r.cancelled,
                    results_yaml: r.results_yaml,
                    tap: r.tap,
                    artifact_bytes: self.artifact_bytes,
                    artifact_entries: entries,
                    log_bytes: self.log_bytes,
                    artifact_transfer: self.artifact_transfer,
                }))
            }
            Kind::Error(e) => Err(agent_error(e)),
        }
    }

    async fn artifact_chunk(&mut self, data: Vec<u8>) -> Result<(), ChannelError> {
        if !matches!(self.phase, Phase::Running | Phase::Artifacts) {
            return Err(ChannelError::Protocol(
                "ArtifactChunk after ArtifactEnd".into(),
            ));
        }
        self.phase = Phase::Artifacts;
        self.artifact_started.get_or_insert_with(Instant::now);
        self.artifact_bytes += data.len() as u64;
        if self.artifact_bytes > self.limits.max_artifact_bytes {
            return Err(ChannelError::LimitExceeded {
                what: "artifact bytes",
                limit: self.limits.max_artifact_bytes,
            });
        }
        if matches!(self.unpack, Unpack::Idle) {
            self.unpack = Unpack::Running(spawn_unpacker(
                self.artifacts_dir,
                self.limits.max_artifact_entries,
            ));
        }
        if let Unpack::Running(u) = &self.unpack {
            if u.tx.send(data).await.is_err() {
                // The unpacker stopped early: either it refused the stream, or the tar ended and
                // what follows is padding we can drop (it is still counted against the budget).
                let entries = self.join_unpacker().await?;
                self.unpack = Unpack::Done { entries };
            }
        }
        Ok(())
    }

    async fn artifact_end(&mut self, total_bytes: u64) -> Result<(), ChannelError> {
        if !matches!(self.phase, Phase::Running | Phase::Artifacts) {
            return Err(ChannelError::Protocol("a second ArtifactEnd".into()));
        }
        if total_bytes != self.artifact_bytes {
            return Err(ChannelError::Protocol(format!(
                "artifact stream truncated: guest says {total_bytes} bytes, {} received",
                self.artifact_bytes
            )));
        }
        let entries = match self.unpack {
            Unpack::Idle => {
                std::fs::create_dir_all(self.artifacts_dir).map_err(|source| {
                    ChannelError::ArtifactIo {
                        path: self.artifacts_dir.to_path_buf(),
                        source,
                    }
                })?;
                0
            }
            Unpack::Running(_) => self.join_unpacker().await?,
            Unpack::Done { entries } => entries,
        };
        self.unpack = Unpack::Done { entries };
        self.phase = Phase::Collected;
        self.artifact_transfer = self
            .artifact_started
            .map(|t| t.elapsed())
            .unwrap_or_default();
        Ok(())
    }

    async fn join_unpacker(&mut self) -> Result<u64, ChannelError> {
        let Unpack::Running(u) = std::mem::replace(&mut self.unpack, Unpack::Idle) else {
            return Ok(0);
        };
        drop(u.tx);
        u.handle
            .await
            .map_err(|e| ChannelError::Internal(format!("artifact unpacker: {e}")))?
    }
}

fn agent_error(e: minion_proto::guest::Error) -> ChannelError {
    let mut msg = e.message;
    truncate_utf8(&mut msg, MAX_AGENT_MESSAGE);
    ChannelError::Agent(msg)
}

fn kind_name(kind: &guest_frame::Kind) -> &'static str {
    use guest_frame::Kind;
    match kind {
        Kind::Ready(_) => "Ready",
        Kind::Log(_) => "Log",
        Kind::Action(_) => "Action",
        Kind::Heartbeat(_) => "Heartbeat",
        Kind::ArtifactChunk(_) => "ArtifactChunk",
        Kind::ArtifactEnd(_) => "ArtifactEnd",
        Kind::Result(_) => "Result",
        Kind::Error(_) => "Error",
    }
}

fn host(kind: host_frame::Kind) -> HostFrame {
    HostFrame { kind: Some(kind) }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}
