//! One picked-up job, from its VM to its final state: a ready VM (a pre-booted one it was given,
//! or one booted for it by the same `guestvm::boot_to_ready` a pre-booted VM took), the job's
//! session on it, artifacts, and the teardown that happens on every path (success, task
//! failure, infrastructure failure, timeout, cancel). Every state change is an event sent to
//! `Jobs`; the final one is sent only after the VM is gone, so a client that sees it can rely on
//! nothing being left.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use minion_channel::{ActionState, ChannelError, JobSpec, LogStream, SessionEvent, SessionOutcome};
use minion_proto::controller as pb;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::guestvm::{self, BootError, BootStep, ReadyVm, TeardownError, VmContext};
use crate::jobs::{self, JobEvent, JobRecord, Jobs, JobsError};
use crate::lifecycle::State;
use crate::pool::Pool;
use crate::prebooted::ParkedVm;
use crate::reporting::Reporter;
use crate::snapshots::Snapshots;

/// Past the job's own timeout, how long the session gets to cancel the guest gracefully before the
/// VM is destroyed regardless.
const HARD_DEADLINE_SLACK: Duration = Duration::from_secs(30);

/// BOOTING's detail when the VM is restored from its pool's snapshot rather than booted.
pub const RESTORED_DETAIL: &str = "restored from a snapshot";

/// The VM a picked-up job runs on.
pub enum Assigned {
    /// A slot to boot a VM in.
    Cold(OwnedSemaphorePermit),
    /// A pre-booted VM taken from the pool (with its slot).
    Parked(Box<ParkedVm>),
}

/// Why a job did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("guest session: {0}")]
    Session(#[source] ChannelError),
    #[error("teardown: {0}")]
    Teardown(#[source] TeardownError),
    #[error("{path}: {source}", path = path.display())]
    Artifacts {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Jobs(#[from] JobsError),
}

/// How a job ended, before it is written down.
enum End {
    Finished(Box<SessionOutcome>),
    Failed(RunError),
    Cancelled(String),
    TimedOut(String),
    /// The pool's libvirt host could not be reached.
    HostLost {
        uri: String,
        error: String,
    },
}

impl End {
    fn into_event(self) -> JobEvent {
        match self {
            End::Finished(o) => JobEvent::SessionEnded {
                outcome: o,
                report: None,
            },
            End::Failed(e) => JobEvent::Failed {
                reason: e.to_string(),
            },
            End::Cancelled(reason) => JobEvent::Cancelled { reason },
            End::TimedOut(reason) => JobEvent::TimedOut { reason },
            End::HostLost { uri, error } => JobEvent::HostLost { uri, error },
        }
    }
}

/// The job's log among its artifacts.
const LOG_FILE: &str = "minion.log";

/// What a runner works with.
pub struct RunContext {
    pub jobs: Arc<Jobs>,
    pub vms: VmContext,
    /// Reporting to ResultsDB, when configured.
    pub reporter: Option<Arc<Reporter>>,
    /// Answering guests' koji/bodhi/distgit requests from the configured sources.
    pub fetch: Arc<minion_fetch::Fetch>,
    /// How VMs start: booted, or restored from the pool's snapshot.
    pub snapshots: Arc<Snapshots>,
    /// Where a job's VM goes when it is kept (`keep_vm_as`).
    pub instances: Arc<crate::instances::Instances>,
}

/// Runs job `id` (already PROVISIONING) on `vm`. Holds the VM's pool slot until the VM is torn
/// down.
pub async fn run_job(
    rc: &RunContext,
    pool: &Arc<Pool>,
    id: &str,
    cancel: CancellationToken,
    vm: Assigned,
) {
    let jobs = &rc.jobs;
    let rec = match jobs.get(id) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(job = %id, "picked-up job: {e}");
            return;
        }
    };
    let started = Instant::now();
    let timeout = Duration::from_secs(rec.request.timeout_seconds);
    let hard_deadline = tokio::time::Instant::now() + timeout + HARD_DEADLINE_SLACK;
    let artifacts = jobs.artifacts_dir(id);

    let (ready, _slot) =
        match ready_vm(rc, pool, &rec, &artifacts, &cancel, hard_deadline, vm).await {
            Ok(v) => v,
            // Nothing of a VM is left at this point: the final state can be written.
            Err(end) => return finish(jobs, id, started, end),
        };
    let ReadyVm {
        id: vm_id,
        mut guard,
        session,
        ..
    } = ready;

    // RUNNING from the agent's Ready; the session itself runs until the guest reports.
    let job = JobSpec {
        id: id.to_string(),
        uuid: id.to_string(),
        item: rec.request.item.clone(),
        item_type: rec.request.item_type.clone(),
        arch: rec.request.arch.clone(),
        formula_path: rec.request.formula.clone(),
        variables: rec.request.args.clone(),
        timeout,
        fetch: Some(Arc::new(crate::fetching::JobFetch::new(
            id,
            &pool.name,
            rc.fetch.clone(),
            pool.packages.clone(),
        ))),
        package_source: pool.packages.is_some(),
        network: pool.cfg().network == crate::config::GuestNetwork::User,
        identity: Some(guestvm::identity(&vm_id)),
        keep: !rec.request.keep_vm_as.is_empty(),
    };
    let limits = rc.vms.job_limits();
    let (tx, rx) = mpsc::channel(1024);
    let task_dir = jobs.task_dir(id);
    let session = session.run_job(&job, &task_dir, &artifacts, &limits, tx, cancel.clone());
    let events = pump_events(jobs, id, &artifacts, rx);
    let run = async { tokio::join!(session, events).0 };
    // A `[hosts]` host marked down ends the session at once: its VMs are lost (module hosts).
    let host = guard.host().cloned();
    let run = async {
        match &host {
            None => Ok(run.await),
            Some(h) => tokio::select! {
                r = run => Ok(r),
                _ = h.down() => Err(h.clone()),
            },
        }
    };
    let end = match tokio::time::timeout_at(hard_deadline, run).await {
        Err(_) => End::TimedOut(format!("exceeded its timeout of {}s", timeout.as_secs())),
        Ok(Err(h)) => End::HostLost {
            uri: h.cfg.uri.clone(),
            error: format!(
                "{} stopped answering mid-job: {}",
                h.name,
                h.last_error().unwrap_or_default()
            ),
        },
        Ok(Ok(Ok(o))) if o.cancelled => End::Cancelled("cancelled while running".into()),
        Ok(Ok(Ok(o))) => End::Finished(Box::new(o)),
        Ok(Ok(Err(ChannelError::Cancelled))) => End::Cancelled("cancelled while running".into()),
        Ok(Ok(Err(ChannelError::JobTimeout(t)))) => {
            End::TimedOut(format!("exceeded its timeout of {}s", t.as_secs()))
        }
        Ok(Ok(Err(e))) => End::Failed(RunError::Session(e)),
    };
    // The session broke because its `[hosts]` host stopped answering: the host's fault, so
    // the job is requeued (the host's libvirtd destroys the domain when our connection dies).
    let end = match (end, guard.host().cloned()) {
        (End::Failed(RunError::Session(e)), Some(host)) => {
            if host.lost() {
                tracing::warn!(job = %id, host = %host.name, "host lost mid-job: {e}");
                End::HostLost {
                    uri: host.cfg.uri.clone(),
                    error: e.to_string(),
                }
            } else {
                End::Failed(RunError::Session(e))
            }
        }
        (end, _) => end,
    };

    if jobs.is_shutting_down() {
        // The session ended because shutdown destroyed the VM: not the job's fault. Its
        // in-flight state stays for the restart to mark FAILED (daemon restart) and requeue.
        guard.abandon();
        tracing::info!(job = %id, "left for the restart to requeue");
        return;
    }
    if let (End::Finished(_), false) = (&end, rec.request.keep_vm_as.is_empty()) {
        let name = rec.request.keep_vm_as.as_str();
        let kept = rc
            .instances
            .adopt(name, &rec.request.submitter, &pool.cfg(), &vm_id, guard)
            .await;
        match kept {
            Ok(()) => {
                runner_note(
                    jobs,
                    id,
                    &artifacts,
                    &format!("the VM is kept as instance {name}: `minion instance shell {name}`"),
                );
                return write_end(rc, &rec, end, &artifacts, started).await;
            }
            Err((back, e)) => {
                tracing::warn!(job = %id, instance = %name, "keeping the VM: {e}; it is destroyed");
                runner_note(
                    jobs,
                    id,
                    &artifacts,
                    &format!("the VM could not be kept as instance {name}: {e}; it is destroyed"),
                );
                guard = back;
            }
        }
    }
    // The guest is done: once the VM is paused it can do nothing more, so the end is written
    // while the domain and its files are removed; the pool slot is held until they are.
    if let Err(e) = guard.pause().await {
        // Not known to be stopped: the old order, the VM gone first, then the end.
        tracing::warn!(job = %id, "pausing the VM: {e}; tearing it down before the end is written");
        let end = match (end, guard.teardown().await) {
            (end, Ok(())) => end,
            (End::Finished(_), Err(e)) => End::Failed(RunError::Teardown(e)),
            (end, Err(e)) => {
                tracing::error!(job = %id, "teardown: {e}");
                end
            }
        };
        return write_end(rc, &rec, end, &artifacts, started).await;
    }
    let teardown = async {
        if let Err(e) = guard.teardown().await {
            // The domain is paused and marked: the reaper destroys what is left.
            tracing::error!(job = %id, "teardown after the end: {e}");
        }
    };
    tokio::join!(write_end(rc, &rec, end, &artifacts, started), teardown);
}

/// A line of the runner's own in the job's log (live and in its log file), after the guest's.
fn runner_note(jobs: &Jobs, id: &str, artifacts: &Path, text: &str) {
    let chunk = pb::LogChunk {
        stream: pb::LogStream::Runner as i32,
        data: format!("minion: {text}\n").into_bytes(),
    };
    let path = artifacts.join(LOG_FILE);
    jobs.log(id, chunk, |data| {
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .and_then(|mut f| f.write_all(data));
        if let Err(e) = appended {
            tracing::warn!(job = %id, "{}: {e}", path.display());
        }
    });
}

/// Writes how the job ended: REPORTING first when it finished and reporting is on.
async fn write_end(rc: &RunContext, rec: &JobRecord, end: End, artifacts: &Path, started: Instant) {
    match (end, &rc.reporter) {
        (End::Finished(o), Some(reporter)) => {
            report(rc, reporter, rec, o, artifacts, started).await
        }
        (end, _) => finish(&rc.jobs, &rec.id, started, end),
    }
}

/// REPORTING: the results go to the outbox with the job's verdict, one attempt is made to post
/// them, and the job ends FINISHED whatever ResultsDB did (the rest is posted later).
async fn report(
    rc: &RunContext,
    reporter: &Reporter,
    rec: &JobRecord,
    o: Box<SessionOutcome>,
    artifacts: &Path,
    started: Instant,
) {
    let (jobs, id) = (&rc.jobs, rec.id.as_str());
    let plan = reporter.plan(rec, &o, artifacts);
    if plan.entries.is_empty() && plan.refused.is_empty() {
        return finish(jobs, id, started, End::Finished(o));
    }
    let ev = JobEvent::SessionEnded {
        outcome: o,
        report: Some(plan),
    };
    if let Err(e) = jobs.apply(id, ev) {
        tracing::error!(job = %id, "reporting: {e}");
        return;
    }
    reporter.post_job(id, reporter.wait()).await;
    match jobs.apply(id, JobEvent::Reported) {
        Ok(r) => tracing::info!(
            job = %id,
            state = %r.state,
            secs = format_args!("{:.2}", started.elapsed().as_secs_f64()),
            "job ended"
        ),
        Err(e) => tracing::error!(job = %id, "final state: {e}"),
    }
}

/// A VM with its agent Ready for job `rec`: the pre-booted one it was given, or one booted now
/// (BOOTING once its files exist). On `Err` no VM of the job is left.
async fn ready_vm(
    rc: &RunContext,
    pool: &Arc<Pool>,
    rec: &JobRecord,
    artifacts: &Path,
    cancel: &CancellationToken,
    hard_deadline: tokio::time::Instant,
    vm: Assigned,
) -> Result<(ReadyVm, OwnedSemaphorePermit), End> {
    let (jobs, id) = (&rc.jobs, rec.id.as_str());
    let made = std::fs::create_dir_all(artifacts).map_err(|source| RunError::Artifacts {
        path: artifacts.to_path_buf(),
        source,
    });
    match vm {
        Assigned::Parked(p) => {
            let ParkedVm { mut vm, permit } = *p;
            vm.guard.keep_console_as(artifacts.join("console.log"));
            let prepared = made.and_then(|()| {
                if cancel.is_cancelled() {
                    return Ok(Err(End::Cancelled("cancelled".into())));
                }
                let ev = JobEvent::VmPrepared {
                    vm_id: vm.id.clone(),
                    detail: jobs::prebooted_detail(&vm.id),
                };
                jobs.apply(id, ev)?;
                Ok(Ok(()))
            });
            match prepared {
                Ok(Ok(())) => Ok((vm, permit)),
                Ok(Err(end)) => Err(teardown_then(id, vm, end).await),
                Err(e) => Err(teardown_then(id, vm, End::Failed(e)).await),
            }
        }
        Assigned::Cold(permit) => {
            made.map_err(End::Failed)?;
            // The boot has its own bounded waits; past the job's hard deadline it is stopped
            // like a cancel and counts as a timeout.
            let stop = cancel.child_token();
            let timer = {
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(hard_deadline).await;
                    stop.cancel();
                })
            };
            let mut step_err: Option<JobsError> = None;
            let mut progress = |step: BootStep| {
                let ev = match step {
                    BootStep::Prepared { restored } => JobEvent::VmPrepared {
                        vm_id: id.to_string(),
                        detail: if restored {
                            RESTORED_DETAIL.to_string()
                        } else {
                            String::new()
                        },
                    },
                    BootStep::DomainStarted => JobEvent::DomainStarted,
                };
                if let Err(e) = jobs.apply(id, ev) {
                    step_err.get_or_insert(e);
                }
            };
            let booted = rc
                .snapshots
                .start_vm(
                    pool,
                    id,
                    Some(artifacts.join("console.log")),
                    &stop,
                    &mut progress,
                )
                .await;
            timer.abort();
            match (booted, step_err) {
                (Ok(vm), None) => Ok((vm, permit)),
                (Ok(vm), Some(e)) => Err(teardown_then(id, vm, End::Failed(e.into())).await),
                (Err(BootError::Cancelled { .. }), _) if !cancel.is_cancelled() => {
                    Err(End::TimedOut(format!(
                        "exceeded its timeout of {}s",
                        rec.request.timeout_seconds
                    )))
                }
                (Err(e @ BootError::Cancelled { .. }), _) => Err(End::Cancelled(e.to_string())),
                (Err(BootError::Libvirt { uri, source }), _) => Err(End::HostLost {
                    uri,
                    error: source.to_string(),
                }),
                (Err(BootError::HostLost { uri, error }), _) => Err(End::HostLost { uri, error }),
                (Err(e), _) => Err(End::Failed(e.into())),
            }
        }
    }
}

/// Tears a VM down and then ends the job with `end` (a teardown error replaces nothing: the VM
/// never ran the job).
async fn teardown_then(id: &str, vm: ReadyVm, end: End) -> End {
    if let Err(e) = vm.guard.teardown().await {
        tracing::error!(job = %id, "teardown: {e}");
    }
    end
}

/// Writes the final state (unless the daemon is shutting down: then the restart requeues it).
fn finish(jobs: &Jobs, id: &str, started: Instant, end: End) {
    match jobs.apply(id, end.into_event()) {
        Ok(r) => tracing::info!(
            job = %id,
            state = %r.state,
            secs = format_args!("{:.2}", started.elapsed().as_secs_f64()),
            "job ended"
        ),
        Err(JobsError::ShuttingDown { .. }) => {
            tracing::info!(job = %id, "left for the restart to requeue")
        }
        Err(e) => tracing::error!(job = %id, "final state: {e}"),
    }
}

/// Session events → `minion.log` (written as they come), the job's lifecycle (RUNNING on Ready,
/// COLLECTING when the guest hands over), and its watchers.
async fn pump_events(
    jobs: &Jobs,
    id: &str,
    artifacts: &Path,
    mut rx: mpsc::Receiver<SessionEvent>,
) {
    let log_path = artifacts.join(LOG_FILE);
    let mut log = match std::fs::File::create(&log_path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(job = %id, "{}: {e}", log_path.display());
            None
        }
    };
    let mut first_action_seen = false;
    let step = |ev: JobEvent| {
        if let Err(e) = jobs.apply(id, ev) {
            tracing::error!(job = %id, "{e}");
        }
    };
    while let Some(ev) = rx.recv().await {
        match ev {
            SessionEvent::Ready { agent_version } => step(JobEvent::AgentReady { agent_version }),
            SessionEvent::Collecting => step(JobEvent::Collecting),
            SessionEvent::Log { stream, data } => {
                let chunk = pb::LogChunk {
                    stream: match stream {
                        LogStream::Stdout => pb::LogStream::Stdout,
                        LogStream::Stderr => pb::LogStream::Stderr,
                        LogStream::Runner => pb::LogStream::Runner,
                    } as i32,
                    data,
                };
                jobs.log(id, chunk, |data| {
                    if let Some(f) = log.as_mut() {
                        // Disk errors must not stop the job; the output is also streamed live.
                        let _ = f.write_all(data);
                    }
                });
            }
            SessionEvent::Action { index, name, state } => {
                if state == ActionState::Started && !first_action_seen {
                    first_action_seen = true;
                    log_first_action(jobs, id);
                }
                jobs.action(
                    id,
                    pb::ActionEvent {
                        index,
                        name,
                        state: match state {
                            ActionState::Started => "started",
                            ActionState::Succeeded => "succeeded",
                            ActionState::Failed => "failed",
                            ActionState::Skipped => "skipped",
                        }
                        .into(),
                    },
                );
            }
            SessionEvent::Heartbeat => {}
        }
    }
    if let Some(mut f) = log {
        let _ = f.flush();
    }
}

/// One line per job with where the time to "first formula action running" went (the daemon
/// benchmark reads it): daemon work (queue + provisioning) vs. libvirt/qemu/guest (boot + task
/// hand-over).
fn log_first_action(jobs: &Jobs, id: &str) {
    let Ok(r) = jobs.get(id) else { return };
    let at = |s: State| {
        r.events
            .iter()
            .rev()
            .find(|e| e.state == s)
            .map(|e| e.at_ms)
    };
    let now = jobs::now_ms();
    if let (Some(q), Some(p), Some(b), Some(run)) = (
        at(State::Queued),
        at(State::Provisioning),
        at(State::Booting),
        at(State::Running),
    ) {
        tracing::info!(
            job = %id,
            queued_ms = p - q,
            provisioning_ms = b - p,
            booting_ms = run - b,
            domain_start_ms = r.domain_started_ms.map_or(-1, |s| s - b),
            ready_to_action_ms = now - run,
            total_ms = now - q,
            at_unix_ms = now,
            "first formula action running"
        );
    }
}
