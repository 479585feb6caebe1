//! Drives one job's exchange with the guest agent, from Hello to Result, in two steps that may be
//! far apart in time: [`handshake`] (Hello → Ready, done at boot for a pre-booted VM) yields a
//! [`ReadySession`], which can idle ([`ReadySession::idle`]) and later runs exactly one job
//! ([`ReadySession::run_job`]) on the same stream, with the frame reader's buffer carried over.
//! [`run_session`] is both steps back to back (a VM booted for its job).
//!
//! In `run_job` two halves run concurrently in the caller's task (no `'static` needed): the writer
//! sends the Job and the task tar, then Cancel if asked; the reader is the state machine below, and
//! owns every timeout and budget.
//!
//! ```text
//! handshake: Hello --Ready--> ReadySession (idle: Heartbeats only) --run_job-->
//! Running --ArtifactChunk*--> Artifacts --ArtifactEnd--> Collected --Result--> done
//!      any state: Cancel/job timeout -> Stopping (bounded by cancel_grace) -> Cancelled / JobTimeout
//! ```

use std::{path::Path, time::Duration};

use minion_proto::guest::{
    guest_frame, host_frame, Cancel, GuestFrame, Hello, HostFrame, Job, Quiesce, TaskChunk, TaskEnd,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf},
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    artifacts::{spawn_unpacker, Unpacker},
    async_frame::{write_frame_async, AsyncFrameReader},
    task_tar::spawn_packer,
    ChannelError, JobSpec, Limits, SessionEvent, SessionOutcome, PROTOCOL_VERSION,
};

/// Longest agent error message kept (the rest of a hostile guest's text is dropped).
const MAX_AGENT_MESSAGE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Artifacts,
    Collected,
}

impl Phase {
    fn during(self) -> &'static str {
        match self {
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

/// What the handshake is waiting for (also the `Closed` error's wording).
const DURING_READY: &str = "waiting for the agent to be Ready";
/// What a template VM's session is doing (the `Closed` error's wording).
const DURING_QUIESCE: &str = "waiting for the agent to quiesce";
/// Quiesce is a few bytes; any frame limit allows it.
const MAX_QUIESCE_FRAME: usize = 64;
/// What an idle session is doing (the `Closed` error's wording).
const DURING_IDLE: &str = "idle, waiting for a job";

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
    let ready = handshake(stream, limits, cancel.clone()).await?;
    ready
        .run_job(job, task_dir, artifacts_dir, limits, events, cancel)
        .await
}

/// Sends Hello and waits (at most `limits.ready_timeout`) for the agent's Ready. The returned
/// session owns the stream, and any bytes the guest sent past Ready stay buffered in it.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: S,
    limits: &Limits,
    cancel: CancellationToken,
) -> Result<ReadySession<S>, ChannelError> {
    let (rd, mut wr) = tokio::io::split(stream);
    let mut frames = AsyncFrameReader::new(rd, limits.max_frame);
    let deadline = Instant::now() + limits.ready_timeout;
    let timeout = || ChannelError::Timeout {
        what: "the agent's Ready",
        timeout: limits.ready_timeout,
    };
    let hello = host(host_frame::Kind::Hello(Hello {
        protocol_min: PROTOCOL_VERSION,
        protocol_max: PROTOCOL_VERSION,
        heartbeat_interval_ms: millis(limits.heartbeat_interval),
        host_version: env!("CARGO_PKG_VERSION").to_owned(),
    }));
    tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(ChannelError::Cancelled),
        _ = tokio::time::sleep_until(deadline) => return Err(timeout()),
        written = write_frame_async(&mut wr, &hello, limits.max_frame) => written?,
    }
    let frame = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(ChannelError::Cancelled),
        _ = tokio::time::sleep_until(deadline) => return Err(timeout()),
        frame = frames.next::<GuestFrame>() => frame,
    };
    let kind = match frame {
        Ok(Some(GuestFrame { kind: Some(kind) })) => kind,
        Ok(Some(GuestFrame { kind: None })) => {
            return Err(ChannelError::Protocol("frame without a message".into()))
        }
        Ok(None) => {
            return Err(ChannelError::Closed {
                during: DURING_READY,
            })
        }
        Err(e) => return Err(e.into()),
    };
    let ready = match kind {
        guest_frame::Kind::Ready(r) => r,
        guest_frame::Kind::Error(e) => return Err(agent_error(e)),
        other => {
            return Err(ChannelError::Protocol(format!(
                "{} before Ready",
                kind_name(&other)
            )))
        }
    };
    if ready.protocol != PROTOCOL_VERSION {
        return Err(ChannelError::Version {
            guest: ready.protocol,
            min: PROTOCOL_VERSION,
            max: PROTOCOL_VERSION,
        });
    }
    let mut agent_version = ready.agent_version;
    truncate_utf8(&mut agent_version, 256);
    Ok(ReadySession {
        frames,
        wr,
        agent_version,
        last_frame: Instant::now(),
    })
}

/// A guest past Ready that has not been given its job yet. It runs at most one job
/// ([`ReadySession::run_job`] consumes it); dropping it closes the stream (the agent then gives up).
pub struct ReadySession<S> {
    frames: AsyncFrameReader<ReadHalf<S>>,
    wr: WriteHalf<S>,
    agent_version: String,
    /// When the guest last sent a frame (Ready, or a Heartbeat while idle).
    last_frame: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> ReadySession<S> {
    /// The stream's halves, with what the reader buffered past Ready.
    pub(crate) fn into_parts(self) -> (AsyncFrameReader<ReadHalf<S>>, WriteHalf<S>) {
        (self.frames, self.wr)
    }

    /// The version string the agent sent with Ready (truncated to 256 bytes).
    pub fn agent_version(&self) -> &str {
        &self.agent_version
    }

    /// Keeps reading while the session waits for a job, and returns only once the guest is no
    /// longer usable: end of stream, a bad or unexpected frame (only Heartbeats are allowed), an
    /// agent Error, or — when `max_silence` is given — that long without any frame. Cancel-safe:
    /// it may sit in a `select!` beside "a job arrived", and a frame it was reading stays buffered.
    pub async fn idle(&mut self, max_silence: Option<Duration>) -> ChannelError {
        loop {
            let silence = max_silence.map(|d| (self.last_frame + d, d));
            let frame = tokio::select! {
                _ = sleep_until_opt(silence.map(|(at, _)| at)), if silence.is_some() => {
                    return ChannelError::Timeout {
                        what: "a frame from the idle guest (heartbeat)",
                        timeout: silence.map(|(_, d)| d).unwrap_or_default(),
                    };
                }
                frame = self.frames.next::<GuestFrame>() => frame,
            };
            self.last_frame = Instant::now();
            match frame {
                Ok(Some(GuestFrame {
                    kind: Some(guest_frame::Kind::Heartbeat(_)),
                })) => {}
                Ok(Some(GuestFrame {
                    kind: Some(guest_frame::Kind::Error(e)),
                })) => return agent_error(e),
                Ok(Some(GuestFrame { kind: Some(other) })) => {
                    return ChannelError::Protocol(format!(
                        "{} while idle before a job",
                        kind_name(&other)
                    ))
                }
                Ok(Some(GuestFrame { kind: None })) => {
                    return ChannelError::Protocol("frame without a message".into())
                }
                Ok(None) => {
                    return ChannelError::Closed {
                        during: DURING_IDLE,
                    }
                }
                Err(e) => return e.into(),
            }
        }
    }

    /// Makes the guest ready to be saved as a snapshot template: sends Quiesce and waits (at most
    /// `timeout`) for Quiesced, Heartbeats allowed before it. The stream is closed on return; the
    /// agent then waits for the Hello of the session after a restore.
    pub async fn quiesce(self, timeout: Duration) -> Result<(), ChannelError> {
        let ReadySession {
            mut frames, mut wr, ..
        } = self;
        let deadline = Instant::now() + timeout;
        let quiesce = host(host_frame::Kind::Quiesce(Quiesce {}));
        let exchange = async {
            write_frame_async(&mut wr, &quiesce, MAX_QUIESCE_FRAME).await?;
            await_answer(
                &mut frames,
                |k| matches!(k, guest_frame::Kind::Quiesced(_)),
                "Quiesced",
                DURING_QUIESCE,
            )
            .await
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(r) => r,
            Err(_) => Err(ChannelError::Timeout {
                what: "the agent's Quiesced",
                timeout,
            }),
        }
    }

    /// Runs one job on the guest: sends the Job and the task tar, then reads until the Result.
    /// Emits [`SessionEvent::Ready`] first (the job's view starts at the agent being Ready). Same
    /// contract as [`run_session`] from Ready on; the job's timeout runs from this call.
    pub async fn run_job(
        self,
        job: &JobSpec,
        task_dir: &Path,
        artifacts_dir: &Path,
        limits: &Limits,
        events: mpsc::Sender<SessionEvent>,
        cancel: CancellationToken,
    ) -> Result<SessionOutcome, ChannelError> {
        let ReadySession {
            frames,
            wr,
            agent_version,
            ..
        } = self;
        let (stop_tx, stop_rx) = watch::channel(None);
        // One request served and one waiting at most: a guest that sends more breaks the protocol.
        let (fetch_tx, fetch_rx) = mpsc::channel(1);
        let writer = write_side(wr, job, task_dir, limits, stop_rx, fetch_rx);
        let reader = Reader {
            frames,
            job,
            artifacts_dir,
            limits,
            events,
            cancel,
            stop_tx,
            phase: Phase::Running,
            agent_version,
            log_bytes: 0,
            artifact_bytes: 0,
            unpack: Unpack::Idle,
            artifact_started: None,
            artifact_transfer: Duration::ZERO,
            stopping: None,
            job_deadline: None,
            fetch_tx,
            fetch_requests: 0,
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
}

async fn write_side<W: AsyncWrite>(
    wr: WriteHalf<W>,
    job: &JobSpec,
    task_dir: &Path,
    limits: &Limits,
    mut stop: watch::Receiver<Option<String>>,
    mut fetches: mpsc::Receiver<FetchAsk>,
) -> Result<(), ChannelError> {
    let mut wr = wr;
    let max = limits.max_frame;
    let job_frame = host(host_frame::Kind::Job(Job {
        id: job.id.clone(),
        item: job.item.clone(),
        item_type: job.item_type.clone(),
        arch: job.arch.clone(),
        formula_path: job.formula_path.clone(),
        variables: job.variables.clone().into_iter().collect(),
        timeout_ms: millis(job.timeout),
        package_source: job.package_source,
        network: job.network,
        identity: job.identity.clone(),
        keep: job.keep,
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

    // Fetch answers while the formula runs, until a Cancel. A closed watch means the session is
    // over. A fetch being served when Cancel comes is dropped: the guest stops its step on Cancel.
    let handler = job.fetch.clone();
    // Files go in the largest frames allowed: fewer frames, fewer copies per byte.
    let file_chunk = max.saturating_sub(64).max(512);
    let reason = loop {
        // The next request, answered; once the reader is gone, nothing more comes.
        let serve_next = async {
            match fetches.recv().await {
                Some((id, request)) => {
                    let h = handler.as_deref();
                    crate::fetch::serve(&mut wr, id, request, h, file_chunk, max).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            stopped = stop.wait_for(Option::is_some) => match stopped {
                Ok(r) => break r.clone(),
                Err(_) => return Ok(()),
            },
            done = serve_next => done?,
        }
    };
    let cancel = host(host_frame::Kind::Cancel(Cancel {
        reason: reason.unwrap_or_default(),
    }));
    write_frame_async(&mut wr, &cancel, max).await?;
    Ok(())
}

/// A guest's fetch request as the writer gets it: its id, and the checked request or why not.
type FetchAsk = (u32, Result<minion_formula::FetchRequest, String>);

struct Reader<'a, R> {
    frames: AsyncFrameReader<R>,
    job: &'a JobSpec,
    artifacts_dir: &'a Path,
    limits: &'a Limits,
    events: mpsc::Sender<SessionEvent>,
    cancel: CancellationToken,
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
    fetch_tx: mpsc::Sender<FetchAsk>,
    fetch_requests: u32,
}

impl<R: AsyncRead + Unpin> Reader<'_, R> {
    async fn run(mut self) -> Result<SessionOutcome, ChannelError> {
        self.started().await;
        let mut last_frame = Instant::now();
        loop {
            let (silence_deadline, what, allowed) = (
                last_frame + self.limits.heartbeat_timeout,
                "a frame from the guest (heartbeat)",
                self.limits.heartbeat_timeout,
            );
            let grace_deadline = self.stopping.map(|(at, _)| at);
            tokio::select! {
                biased;
                _ = self.cancel.cancelled(), if self.stopping.is_none() => {
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
        match kind {
            Kind::Error(e) => Err(agent_error(e)),
            other => self.handle_running(other).await,
        }
    }

    /// The job starts: its deadline runs from here, and its watchers learn the agent is Ready.
    async fn started(&mut self) {
        if !self.job.timeout.is_zero() {
            self.job_deadline = Some(Instant::now() + self.job.timeout);
        }
        self.emit(SessionEvent::Ready {
            agent_version: self.agent_version.clone(),
        })
        .await;
    }

    /// Frames after Ready (Error already handled).
    async fn handle_running(
        &mut self,
        kind: guest_frame::Kind,
    ) -> Result<Option<SessionOutcome>, ChannelError> {
        use guest_frame::Kind;
        match kind {
            Kind::Ready(_) => Err(ChannelError::Protocol("a second Ready".into())),
            k @ (Kind::Quiesced(_)
            | Kind::Attached(_)
            | Kind::ExecOutput(_)
            | Kind::ExecExit(_)) => Err(ChannelError::Protocol(format!(
                "{} during a job",
                kind_name(&k)
            ))),
            Kind::Log(log) => {
                self.log_bytes += log.data.len() as u64;
                if self.log_bytes > self.limits.max_log_bytes {
                    return Err(ChannelError::LimitExceeded {
                        what: "log bytes",
                        limit: self.limits.max_log_bytes,
                    });
                }
                self.emit(SessionEvent::Log {
                    stream: crate::event::log_stream_from_wire(log.stream),
                    data: log.data,
                })
                .await;
                Ok(None)
            }
            Kind::Action(a) => {
                let state = crate::event::action_state_from_wire(a.state).ok_or_else(|| {
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
            Kind::FetchRequest(r) => {
                self.fetch_request(r)?;
                Ok(None)
            }
            Kind::Error(e) => Err(agent_error(e)),
        }
    }

    /// Hands a guest's fetch request to the writer, which answers it. Only while the formula runs,
    /// one waiting at most, and at most `max_fetch_requests` per job.
    fn fetch_request(&mut self, r: minion_proto::guest::FetchRequest) -> Result<(), ChannelError> {
        if self.phase != Phase::Running {
            return Err(ChannelError::Protocol(format!(
                "FetchRequest while {}",
                self.phase.during()
            )));
        }
        self.fetch_requests += 1;
        if self.fetch_requests > self.limits.max_fetch_requests {
            return Err(ChannelError::LimitExceeded {
                what: "fetch requests",
                limit: u64::from(self.limits.max_fetch_requests),
            });
        }
        let id = r.id;
        let request = crate::fetch_wire::request_from_wire(r);
        match &request {
            Ok(req) => {
                tracing::info!(job = %self.job.id, id, what = %req.describe(), "guest asks to fetch")
            }
            Err(e) => tracing::warn!(job = %self.job.id, id, "guest's fetch request refused: {e}"),
        }
        match self.fetch_tx.try_send((id, request)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(ChannelError::Protocol(
                "a FetchRequest while two are unanswered".into(),
            )),
            // The writer has sent Cancel and finished: the guest is stopping, no answer comes.
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
        }
    }

    async fn artifact_chunk(&mut self, data: Vec<u8>) -> Result<(), ChannelError> {
        if !matches!(self.phase, Phase::Running | Phase::Artifacts) {
            return Err(ChannelError::Protocol(
                "ArtifactChunk after ArtifactEnd".into(),
            ));
        }
        if self.phase == Phase::Running {
            self.emit(SessionEvent::Collecting).await;
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
                self.limits.keep_free_bytes,
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
        if self.phase == Phase::Running {
            self.emit(SessionEvent::Collecting).await;
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

/// Reads until the guest's answer (`is_answer`), Heartbeats allowed before it; anything else is
/// the guest's error or a protocol violation. `what` names the answer, `during` what the session
/// was doing (for the `Closed` error).
pub(crate) async fn await_answer<R: AsyncRead + Unpin>(
    frames: &mut AsyncFrameReader<R>,
    is_answer: impl Fn(&guest_frame::Kind) -> bool,
    what: &str,
    during: &'static str,
) -> Result<(), ChannelError> {
    loop {
        match frames.next::<GuestFrame>().await? {
            Some(GuestFrame { kind: Some(k) }) if is_answer(&k) => return Ok(()),
            Some(GuestFrame {
                kind: Some(guest_frame::Kind::Heartbeat(_)),
            }) => {}
            Some(GuestFrame {
                kind: Some(guest_frame::Kind::Error(e)),
            }) => return Err(agent_error(e)),
            Some(GuestFrame { kind: Some(other) }) => {
                return Err(ChannelError::Protocol(format!(
                    "{} instead of {what}",
                    kind_name(&other)
                )))
            }
            Some(GuestFrame { kind: None }) => {
                return Err(ChannelError::Protocol("frame without a message".into()))
            }
            None => return Err(ChannelError::Closed { during }),
        }
    }
}

pub(crate) fn agent_error(e: minion_proto::guest::Error) -> ChannelError {
    let mut msg = e.message;
    truncate_utf8(&mut msg, MAX_AGENT_MESSAGE);
    ChannelError::Agent(msg)
}

pub(crate) fn kind_name(kind: &guest_frame::Kind) -> &'static str {
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
        Kind::FetchRequest(_) => "FetchRequest",
        Kind::Quiesced(_) => "Quiesced",
        Kind::Attached(_) => "Attached",
        Kind::ExecOutput(_) => "ExecOutput",
        Kind::ExecExit(_) => "ExecExit",
    }
}

pub(crate) fn host(kind: host_frame::Kind) -> HostFrame {
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

#[cfg(test)]
mod tests {
    //! The handshake / idle / run_job split against a `FakeGuest`: a plain task on the other end of
    //! a unix socket pair (the type the daemon gets from qemu's channel socket).

    use super::*;
    use crate::frame::{decode_frame, encode_frame, MAX_FRAME};
    use bytes::BytesMut;
    use minion_proto::guest::{ArtifactEnd, Heartbeat, Ready, Result as GuestResult};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    struct FakeGuest {
        io: UnixStream,
        buf: BytesMut,
    }

    fn bytes(kind: guest_frame::Kind) -> Vec<u8> {
        encode_frame(&GuestFrame { kind: Some(kind) }, MAX_FRAME).expect("encode")
    }

    fn heartbeat(seq: u64) -> Vec<u8> {
        bytes(guest_frame::Kind::Heartbeat(Heartbeat { seq }))
    }

    fn ready_frame() -> Vec<u8> {
        bytes(guest_frame::Kind::Ready(Ready {
            protocol: PROTOCOL_VERSION,
            agent_version: "fake-0".into(),
        }))
    }

    impl FakeGuest {
        async fn recv(&mut self) -> Option<HostFrame> {
            loop {
                if let Some(f) = decode_frame::<HostFrame>(&mut self.buf, MAX_FRAME).expect("valid")
                {
                    return Some(f);
                }
                if self.io.read_buf(&mut self.buf).await.ok()? == 0 {
                    return None;
                }
            }
        }

        async fn send_raw(&mut self, b: &[u8]) {
            self.io.write_all(b).await.expect("guest write");
        }

        async fn expect_hello(&mut self) {
            let f = self.recv().await;
            assert!(
                matches!(
                    &f,
                    Some(HostFrame {
                        kind: Some(host_frame::Kind::Hello(_))
                    })
                ),
                "{f:?}"
            );
        }

        /// Job + task tar up to TaskEnd; then an empty artifact stream and a passing Result.
        async fn do_job(&mut self) -> String {
            let id = match self.recv().await {
                Some(HostFrame {
                    kind: Some(host_frame::Kind::Job(j)),
                }) => j.id,
                other => panic!("expected Job, got {other:?}"),
            };
            loop {
                match self.recv().await {
                    Some(HostFrame {
                        kind: Some(host_frame::Kind::TaskChunk(_)),
                    }) => {}
                    Some(HostFrame {
                        kind: Some(host_frame::Kind::TaskEnd(_)),
                    }) => break,
                    other => panic!("expected the task tar, got {other:?}"),
                }
            }
            self.send_raw(&bytes(guest_frame::Kind::ArtifactEnd(ArtifactEnd {
                total_bytes: 0,
                entries: 0,
            })))
            .await;
            self.send_raw(&bytes(guest_frame::Kind::Result(GuestResult {
                execution_ok: true,
                status_message: "ok".into(),
                results_yaml: "results: []\n".into(),
                ..GuestResult::default()
            })))
            .await;
            id
        }
    }

    fn pair() -> (UnixStream, FakeGuest) {
        let (host, guest) = UnixStream::pair().expect("socket pair");
        (
            host,
            FakeGuest {
                io: guest,
                buf: BytesMut::new(),
            },
        )
    }

    fn limits() -> Limits {
        Limits {
            ready_timeout: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(5),
            cancel_grace: Duration::from_millis(500),
            ..Limits::default()
        }
    }

    fn job() -> JobSpec {
        JobSpec {
            id: "job-split".into(),
            formula_path: "runtask.yml".into(),
            timeout: Duration::from_secs(60),
            ..JobSpec::default()
        }
    }

    #[tokio::test]
    async fn handshake_then_a_job_much_later_on_the_same_stream() {
        let (host, mut g) = pair();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let guest = tokio::spawn(async move {
            g.expect_hello().await;
            // Ready and the first half of a Heartbeat in one write: the rest of that frame comes
            // later, so the half must survive in the session's buffer from handshake to idle.
            let hb = heartbeat(1);
            let mut first = ready_frame();
            first.extend_from_slice(&hb[..2]);
            g.send_raw(&first).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            g.send_raw(&hb[2..]).await;
            g.send_raw(&heartbeat(2)).await;
            go_rx.await.expect("host says go");
            g.do_job().await
        });
        let l = limits();
        let mut ready = handshake(host, &l, CancellationToken::new())
            .await
            .expect("handshake");
        assert_eq!(ready.agent_version(), "fake-0");
        // Parked: the heartbeats are consumed, the guest stays usable.
        let idle = tokio::time::timeout(
            Duration::from_millis(400),
            ready.idle(Some(Duration::from_secs(5))),
        )
        .await;
        assert!(idle.is_err(), "idle ended: {idle:?}");
        go_tx.send(()).expect("guest waits");

        let task = tempfile::tempdir().expect("task");
        std::fs::write(task.path().join("runtask.yml"), "name: t\n").expect("formula");
        let art = tempfile::tempdir().expect("artifacts");
        let (tx, mut rx) = mpsc::channel(16);
        let outcome = ready
            .run_job(
                &job(),
                task.path(),
                art.path(),
                &l,
                tx,
                CancellationToken::new(),
            )
            .await
            .expect("job ran");
        assert!(outcome.execution_status_ok);
        assert_eq!(outcome.agent_version, "fake-0");
        assert_eq!(guest.await.expect("guest"), "job-split");
        match rx.recv().await {
            Some(SessionEvent::Ready { agent_version }) => assert_eq!(agent_version, "fake-0"),
            other => panic!("the job's first event is Ready, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn idle_consumes_heartbeats_and_ends_when_they_stop() {
        let (host, mut g) = pair();
        let guest = tokio::spawn(async move {
            g.expect_hello().await;
            g.send_raw(&ready_frame()).await;
            for seq in 0..6 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                g.send_raw(&heartbeat(seq)).await;
            }
            // Then silence, with the stream held open.
            std::future::pending::<()>().await;
        });
        let mut ready = handshake(host, &limits(), CancellationToken::new())
            .await
            .expect("handshake");
        let t = Instant::now();
        let err = ready.idle(Some(Duration::from_millis(200))).await;
        assert!(
            matches!(
                err,
                ChannelError::Timeout {
                    what: "a frame from the idle guest (heartbeat)",
                    ..
                }
            ),
            "{err:?}"
        );
        // Six heartbeats 50 ms apart kept it alive for ≥ 300 ms; the silence then ended it.
        assert!(
            t.elapsed() >= Duration::from_millis(450),
            "{:?}",
            t.elapsed()
        );
        guest.abort();
    }

    #[tokio::test]
    async fn guest_dying_while_idle_is_detected() {
        // The guest's end closes (qemu gone, agent exited).
        let (host, mut g) = pair();
        let guest = tokio::spawn(async move {
            g.expect_hello().await;
            g.send_raw(&ready_frame()).await;
            g.send_raw(&heartbeat(0)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(g);
        });
        let mut ready = handshake(host, &limits(), CancellationToken::new())
            .await
            .expect("handshake");
        let err = tokio::time::timeout(Duration::from_secs(5), ready.idle(None))
            .await
            .expect("detected without a silence limit");
        assert!(
            matches!(err, ChannelError::Closed { during } if during == DURING_IDLE),
            "{err:?}"
        );
        guest.await.expect("guest");

        // Garbage, and a frame only a running job may send.
        for (bad, want) in [
            (vec![0xff; 16], "bad frame"),
            (
                bytes(guest_frame::Kind::Result(GuestResult::default())),
                "Result while idle before a job",
            ),
        ] {
            let (host, mut g) = pair();
            let guest = tokio::spawn(async move {
                g.expect_hello().await;
                g.send_raw(&ready_frame()).await;
                g.send_raw(&bad).await;
                std::future::pending::<()>().await;
            });
            let mut ready = handshake(host, &limits(), CancellationToken::new())
                .await
                .expect("handshake");
            let err = tokio::time::timeout(Duration::from_secs(5), ready.idle(None))
                .await
                .expect("detected");
            assert!(err.to_string().contains(want), "{err}");
            guest.abort();
        }
    }

    #[tokio::test]
    async fn handshake_is_bounded_and_cancellable() {
        let (host, g) = pair();
        let mut l = limits();
        l.ready_timeout = Duration::from_millis(200);
        let err = handshake(host, &l, CancellationToken::new())
            .await
            .err()
            .expect("silent guest");
        assert!(
            matches!(
                err,
                ChannelError::Timeout {
                    what: "the agent's Ready",
                    ..
                }
            ),
            "{err:?}"
        );
        drop(g);

        let (host, _g) = pair();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = handshake(host, &limits(), cancel)
            .await
            .err()
            .expect("cancelled");
        assert!(matches!(err, ChannelError::Cancelled), "{err:?}");
    }

    #[tokio::test]
    async fn quiesce_waits_for_quiesced_past_heartbeats_and_closes_the_stream() {
        let (host, mut g) = pair();
        let guest = tokio::spawn(async move {
            g.expect_hello().await;
            g.send_raw(&ready_frame()).await;
            let f = g.recv().await;
            assert!(
                matches!(
                    &f,
                    Some(HostFrame {
                        kind: Some(host_frame::Kind::Quiesce(_))
                    })
                ),
                "{f:?}"
            );
            g.send_raw(&heartbeat(1)).await;
            g.send_raw(&bytes(guest_frame::Kind::Quiesced(
                minion_proto::guest::Quiesced {},
            )))
            .await;
            // The host hangs up after Quiesced: the next read is the end of the stream.
            g.recv().await
        });
        let ready = handshake(host, &limits(), CancellationToken::new())
            .await
            .expect("ready");
        ready
            .quiesce(Duration::from_secs(5))
            .await
            .expect("quiesced");
        assert!(guest.await.expect("guest").is_none(), "stream not closed");
    }

    #[tokio::test]
    async fn quiesce_refuses_other_frames_and_is_bounded() {
        let (host, mut g) = pair();
        let guest = tokio::spawn(async move {
            g.expect_hello().await;
            g.send_raw(&ready_frame()).await;
            let _ = g.recv().await;
            g.send_raw(&bytes(guest_frame::Kind::Result(GuestResult::default())))
                .await;
            g
        });
        let ready = handshake(host, &limits(), CancellationToken::new())
            .await
            .expect("ready");
        let err = ready
            .quiesce(Duration::from_secs(5))
            .await
            .expect_err("a Result is not Quiesced");
        assert!(
            err.to_string().contains("Result instead of Quiesced"),
            "{err}"
        );
        drop(guest.await);

        let (host, mut g) = pair();
        let guest = tokio::spawn(async move {
            g.expect_hello().await;
            g.send_raw(&ready_frame()).await;
            // Silent from here on.
            let _ = g.recv().await;
            g
        });
        let ready = handshake(host, &limits(), CancellationToken::new())
            .await
            .expect("ready");
        let err = ready
            .quiesce(Duration::from_millis(200))
            .await
            .expect_err("silent guest");
        assert!(
            matches!(
                err,
                ChannelError::Timeout {
                    what: "the agent's Quiesced",
                    ..
                }
            ),
            "{err:?}"
        );
        drop(guest);
    }
}
