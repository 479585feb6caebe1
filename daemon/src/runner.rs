//! One job, from pickup to its final state: VM files, transient domain, guest session, artifacts,
//! and the teardown that happens on every path (success, task failure, infrastructure failure,
//! timeout, cancel). The final state is written only after the VM is gone, so a client that sees
//! it can rely on nothing being left.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use minion_channel::{
    connect_unix, run_session, ActionState, ChannelError, JobSpec, Limits, LogStream, SessionEvent,
    SessionOutcome,
};
use minion_proto::controller as pb;
use minion_provisioning::vm::PreparedVm;
use minion_provisioning::{image, vm, vmfiles::VmFiles, Hypervisor};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::daemon::{Daemon, Pool, Vm};
use crate::lifecycle::State;
use crate::prebooted::{self, ParkedVm};
use crate::store::{ExecStatus, JobRecord, TaskResult};

/// Past the job's own timeout, how long the session gets to cancel the guest gracefully before the
/// VM is destroyed regardless.
const HARD_DEADLINE_SLACK: Duration = Duration::from_secs(30);
/// How long a cancelled (or timed-out) guest gets to stop its task and send what it has.
const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// How long the channel socket may take to appear after the domain starts.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How a job ended, before it is written down.
enum End {
    Finished(Box<SessionOutcome>),
    Failed(String),
    Cancelled(String),
    TimedOut(String),
}

/// A VM that must be torn down. `Drop` is the backstop for a runner that is aborted or panics;
/// the normal paths call [`VmGuard::teardown`] explicitly and await it.
pub(crate) struct VmGuard {
    hv: Arc<Hypervisor>,
    pub(crate) name: String,
    files: VmFiles,
    keep_console: Option<PathBuf>,
    done: bool,
}

impl VmGuard {
    /// Guards a prepared VM; `keep_console` is where its console log is copied at teardown.
    pub(crate) fn new(
        hv: &Arc<Hypervisor>,
        prepared: &PreparedVm,
        keep_console: Option<PathBuf>,
    ) -> VmGuard {
        VmGuard {
            hv: hv.clone(),
            name: prepared.name.clone(),
            files: prepared.files.clone(),
            keep_console,
            done: false,
        }
    }

    pub(crate) async fn teardown(mut self) -> Result<(), String> {
        self.done = true;
        let (hv, name, files, keep) = (
            self.hv.clone(),
            self.name.clone(),
            self.files.clone(),
            self.keep_console.clone(),
        );
        tokio::task::spawn_blocking(move || vm::teardown(&hv, &name, &files, keep.as_deref()))
            .await
            .map_err(|e| format!("teardown task: {e}"))?
            .map_err(|e| e.to_string())
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        if !self.done {
            let (hv, name, files) = (self.hv.clone(), self.name.clone(), self.files.clone());
            tracing::warn!(domain = %name, "runner ended without teardown: tearing down now");
            let _ = std::thread::spawn(move || {
                if let Err(e) = vm::teardown(&hv, &name, &files, None) {
                    tracing::error!(domain = %name, "backstop teardown: {e}");
                }
            });
        }
    }
}

/// Runs job `id` on `vm`: a pre-booted VM taken from the pool, or a slot to boot one in. Holds
/// the VM's pool slot until the VM is torn down.
pub async fn run_job(
    d: &Arc<Daemon>,
    pool: &Arc<Pool>,
    id: &str,
    cancel: CancellationToken,
    vm: Vm,
) {
    let (permit, parked) = match vm {
        Vm::Cold(permit) => (permit, None),
        Vm::Parked(p) => {
            let ParkedVm { vm, permit } = *p;
            (permit, Some(vm))
        }
    };
    let detail = parked.as_ref().map(prebooted::detail).unwrap_or_default();
    // Lost the race with a cancel (or a restart): someone else owns the job's fate.
    let rec = match d.store.transition(id, State::Provisioning, &detail) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(job = %id, "not started: {e}");
            if let Some(vm) = parked {
                // Never used: back to the pool, still fresh.
                prebooted::park(pool, ParkedVm { vm, permit });
            }
            return;
        }
    };
    let _slot = permit;
    if let Some(vm) = &parked {
        tracing::info!(job = %id, vm = %vm.id, "took pre-booted VM");
    }
    d.publish_lifecycle(&rec);
    let started = Instant::now();
    let timeout = Duration::from_secs(rec.request.timeout_seconds);
    let artifacts = d.artifacts_dir(id);
    let mut guard: Option<VmGuard> = None;

    let hard_deadline = timeout + HARD_DEADLINE_SLACK;
    let run = execute(d, pool, &rec, &artifacts, &cancel, &mut guard, parked);
    let end = match tokio::time::timeout(hard_deadline, run).await {
        Ok(end) => end,
        Err(_) => End::TimedOut(format!("exceeded its timeout of {}s", timeout.as_secs())),
    };

    if d.is_shutting_down() {
        // The session ended because shutdown destroyed the VM: not the job's fault. Leave its
        // in-flight state for the restart to mark FAILED (daemon restart) and requeue.
        if let Some(mut g) = guard.take() {
            g.done = true;
        }
        tracing::info!(job = %id, "left for the restart to requeue");
        return;
    }
    // The guest is done (or abandoned): collect what is ours, then make the VM disappear.
    let end = match end {
        End::Finished(outcome) => match transition(d, id, State::Collecting, "") {
            Ok(_) => End::Finished(outcome),
            Err(e) => End::Failed(e),
        },
        other => other,
    };
    let teardown_err = match guard.take() {
        Some(g) => g.teardown().await.err(),
        None => None,
    };
    if let Some(e) = &teardown_err {
        tracing::error!(job = %id, "teardown: {e}");
    }
    let end = match (end, teardown_err) {
        (End::Finished(_), Some(e)) => End::Failed(format!("teardown: {e}")),
        (end, _) => end,
    };
    let final_rec = finish(d, id, end);
    d.forget_task(id);
    if let Some(r) = final_rec {
        tracing::info!(
            job = %id,
            state = %r.state,
            secs = format_args!("{:.2}", started.elapsed().as_secs_f64()),
            "job ended"
        );
        d.publish_final(&r);
    }
}

fn transition(d: &Daemon, id: &str, to: State, msg: &str) -> Result<JobRecord, String> {
    let r = d.store.transition(id, to, msg).map_err(|e| e.to_string())?;
    d.publish_lifecycle(&r);
    Ok(r)
}

/// Writes the final state (and, for a finished job, its results).
fn finish(d: &Daemon, id: &str, end: End) -> Option<JobRecord> {
    let r = match end {
        End::Finished(o) => {
            if let Err(e) = transition(d, id, State::Reporting, "") {
                tracing::error!(job = %id, "{e}");
            }
            let results = parse_results(&o.results_yaml);
            d.store.transition_with(id, State::Finished, "", |r| {
                r.execution_status = Some(if o.execution_status_ok {
                    ExecStatus::Ok
                } else {
                    ExecStatus::NotOk
                });
                r.status_message = o.status_message.clone();
                r.exit_code = o.exit_code;
                r.results = results;
                r.results_yaml = o.results_yaml.clone();
                r.tap = o.tap.clone();
            })
        }
        End::Failed(reason) => d.store.transition_with(id, State::Failed, &reason, |r| {
            r.execution_status = Some(ExecStatus::NotOk)
        }),
        End::Cancelled(msg) => d.store.transition_with(id, State::Cancelled, &msg, |r| {
            r.execution_status = Some(ExecStatus::NotOk)
        }),
        End::TimedOut(msg) => d.store.transition_with(id, State::TimedOut, &msg, |r| {
            r.execution_status = Some(ExecStatus::NotOk)
        }),
    };
    match r {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(job = %id, "final state: {e}");
            None
        }
    }
}

/// The guest end a job runs on: a fresh connection, or a pre-booted VM's session past Ready.
enum Guest {
    Cold(tokio::net::UnixStream),
    Ready(Box<prebooted::Session>),
}

/// PROVISIONING → BOOTING → RUNNING → (session ends). Fills `guard` as soon as a VM exists. With
/// a pre-booted VM, PROVISIONING and BOOTING only record that VM (its boot happened earlier).
async fn execute(
    d: &Arc<Daemon>,
    pool: &Arc<Pool>,
    rec: &JobRecord,
    artifacts: &Path,
    cancel: &CancellationToken,
    guard: &mut Option<VmGuard>,
    parked: Option<prebooted::PrebootedVm>,
) -> End {
    let id = rec.id.as_str();
    macro_rules! check_cancel {
        () => {
            if cancel.is_cancelled() {
                return End::Cancelled("cancelled".into());
            }
        };
    }
    let guest = match parked {
        Some(vm) => {
            let detail = prebooted::detail(&vm);
            let mut g = vm.guard;
            g.keep_console = Some(artifacts.join("console.log"));
            *guard = Some(g);
            if let Err(e) = std::fs::create_dir_all(artifacts) {
                return End::Failed(format!("{}: {e}", artifacts.display()));
            }
            check_cancel!();
            if let Err(e) = transition(d, id, State::Booting, &detail) {
                return End::Failed(e);
            }
            Guest::Ready(Box::new(vm.session))
        }
        None => {
            // PROVISIONING: image, libvirt connection, overlay + seed + XML.
            let (hv, prepared) = match provision(d, pool, id).await {
                Ok(v) => v,
                Err(e) => return End::Failed(e),
            };
            let t = &prepared.timings;
            tracing::info!(
                job = %id,
                overlay_ms = t.overlay.as_secs_f64() * 1000.0,
                seed_ms = t.seed.as_secs_f64() * 1000.0,
                render_ms = t.render.as_secs_f64() * 1000.0,
                "provisioned"
            );
            *guard = Some(VmGuard::new(
                &hv,
                &prepared,
                Some(artifacts.join("console.log")),
            ));
            if let Err(e) = std::fs::create_dir_all(artifacts) {
                return End::Failed(format!("{}: {e}", artifacts.display()));
            }
            check_cancel!();

            // BOOTING: the transient domain.
            if let Err(e) = transition(d, id, State::Booting, "") {
                return End::Failed(e);
            }
            if let Err(e) = start_domain(&hv, &prepared).await {
                return End::Failed(e);
            }
            check_cancel!();
            let socket = &prepared.files.channel_socket;
            tokio::select! {
                s = connect_unix(socket, CONNECT_TIMEOUT) => match s {
                    Ok(s) => Guest::Cold(s),
                    Err(e) => return End::Failed(format!("guest channel: {e}")),
                },
                _ = cancel.cancelled() => return End::Cancelled("cancelled while booting".into()),
            }
        }
    };

    // RUNNING from the agent's Ready; the session itself runs until the guest reports.
    let job = JobSpec {
        id: id.to_string(),
        uuid: id.to_string(),
        item: rec.request.item.clone(),
        item_type: rec.request.item_type.clone(),
        arch: rec.request.arch.clone(),
        formula_path: rec.request.formula.clone(),
        variables: rec.request.args.clone(),
        timeout: Duration::from_secs(rec.request.timeout_seconds),
    };
    let limits = session_limits();
    let (tx, rx) = mpsc::channel(1024);
    let task_dir = d.task_dir(id);
    let session = async {
        match guest {
            Guest::Cold(stream) => {
                run_session(
                    stream,
                    &job,
                    &task_dir,
                    artifacts,
                    &limits,
                    tx,
                    cancel.clone(),
                )
                .await
            }
            Guest::Ready(ready) => {
                ready
                    .run_job(&job, &task_dir, artifacts, &limits, tx, cancel.clone())
                    .await
            }
        }
    };
    let events = pump_events(d, id, artifacts, rx);
    let (outcome, ()) = tokio::join!(session, events);
    match outcome {
        Ok(o) if o.cancelled => End::Cancelled("cancelled while running".into()),
        Ok(o) => End::Finished(Box::new(o)),
        Err(ChannelError::Cancelled) => End::Cancelled("cancelled while running".into()),
        Err(ChannelError::JobTimeout(t)) => {
            End::TimedOut(format!("exceeded its timeout of {}s", t.as_secs()))
        }
        Err(e) => End::Failed(format!("guest session: {e}")),
    }
}

/// The session limits of every guest (the handshake of a pre-booted VM uses them too).
pub(crate) fn session_limits() -> Limits {
    Limits {
        cancel_grace: CANCEL_GRACE,
        ..Limits::default()
    }
}

/// Image, libvirt connection, then the VM's files and XML under `vm_id` (a job's UUID, or a
/// pre-booted VM's own id). On error nothing of the VM exists.
pub(crate) async fn provision(
    d: &Arc<Daemon>,
    pool: &Arc<Pool>,
    vm_id: &str,
) -> Result<(Arc<Hypervisor>, PreparedVm), String> {
    let (d2, pool2, id2) = (d.clone(), pool.clone(), vm_id.to_string());
    tokio::task::spawn_blocking(move || -> Result<_, String> {
        let image = image::load(&d2.cfg.images_dir, &pool2.cfg.image)
            .map_err(|e| format!("image {}: {e}", pool2.cfg.image))?;
        let hv = pool2
            .hypervisor()
            .map_err(|e| format!("libvirt {}: {e}", pool2.cfg.libvirt_uri))?;
        let short = id2.strip_prefix(prebooted::ID_PREFIX).unwrap_or(&id2);
        let req = vm::VmRequest {
            state_dir: d2.cfg.state_dir.clone(),
            job_id: id2.clone(),
            image,
            accel: d2.accel.clone(),
            agent_binary: d2.cfg.agent_binary.clone(),
            vcpus: pool2.cfg.vcpus,
            memory_mib: pool2.cfg.memory_mib,
            hostname: format!("minion-{}", &short[..8.min(short.len())]),
            network: None,
        };
        let prepared = vm::prepare(&req).map_err(|e| format!("provisioning: {e}"))?;
        Ok((hv, prepared))
    })
    .await
    .map_err(|e| format!("provisioning task: {e}"))?
}

/// Starts the prepared VM's transient domain.
pub(crate) async fn start_domain(
    hv: &Arc<Hypervisor>,
    prepared: &PreparedVm,
) -> Result<(), String> {
    let (hv, xml) = (hv.clone(), prepared.xml.clone());
    match tokio::task::spawn_blocking(move || hv.create_transient(&xml)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("starting the domain: {e}")),
        Err(e) => Err(format!("domain task: {e}")),
    }
}

/// Session events → `minion.log` (written as they come), the RUNNING transition on Ready, and
/// the job's watchers.
async fn pump_events(
    d: &Arc<Daemon>,
    id: &str,
    artifacts: &Path,
    mut rx: mpsc::Receiver<SessionEvent>,
) {
    let log_path = artifacts.join("minion.log");
    let mut log = match std::fs::File::create(&log_path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(job = %id, "{}: {e}", log_path.display());
            None
        }
    };
    let mut first_action_seen = false;
    while let Some(ev) = rx.recv().await {
        let out = match ev {
            SessionEvent::Ready { agent_version } => {
                let msg = format!("agent {agent_version} ready");
                if let Err(e) = transition(d, id, State::Running, &msg) {
                    tracing::error!(job = %id, "{e}");
                }
                None
            }
            SessionEvent::Log { stream, data } => {
                let chunk = pb::LogChunk {
                    stream: match stream {
                        LogStream::Stdout => pb::LogStream::Stdout,
                        LogStream::Stderr => pb::LogStream::Stderr,
                        LogStream::Runner => pb::LogStream::Runner,
                    } as i32,
                    data,
                };
                let ev = pb::WatchEvent {
                    event: Some(pb::watch_event::Event::Log(chunk.clone())),
                };
                d.hub.publish_after(id, ev, || {
                    if let Some(f) = log.as_mut() {
                        // Disk errors must not stop the job; the output is also streamed live.
                        let _ = f.write_all(&chunk.data);
                    }
                });
                None
            }
            SessionEvent::Action { index, name, state } => {
                if state == ActionState::Started && !first_action_seen {
                    first_action_seen = true;
                    log_first_action(d, id);
                }
                Some(pb::watch_event::Event::Action(pb::ActionEvent {
                    index,
                    name,
                    state: match state {
                        ActionState::Started => "started",
                        ActionState::Succeeded => "succeeded",
                        ActionState::Failed => "failed",
                        ActionState::Skipped => "skipped",
                    }
                    .into(),
                }))
            }
            SessionEvent::Heartbeat => None,
        };
        if let Some(event) = out {
            d.hub.publish(id, pb::WatchEvent { event: Some(event) });
        }
    }
    if let Some(mut f) = log {
        let _ = f.flush();
    }
}

/// One line per job with where the time to "first formula action running" went (the daemon
/// benchmark reads it): daemon work (queue + provisioning) vs. libvirt/qemu/guest (boot + task
/// hand-over).
fn log_first_action(d: &Daemon, id: &str) {
    let Ok(r) = d.store.get(id) else { return };
    let at = |s: State| {
        r.events
            .iter()
            .rev()
            .find(|e| e.state == s)
            .map(|e| e.at_ms)
    };
    let now = crate::store::now_ms();
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
            ready_to_action_ms = now - run,
            total_ms = now - q,
            "first formula action running"
        );
    }
}

/// The task's own outcomes from its ResultYAML (best effort: the YAML came from the guest).
pub fn parse_results(yaml: &str) -> Vec<TaskResult> {
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(yaml) else {
        return Vec::new();
    };
    let s = |v: &serde_yaml::Value, k: &str| -> String {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    doc.get("results")
        .and_then(|r| r.as_sequence())
        .map(|seq| {
            seq.iter()
                .take(10_000)
                .map(|r| TaskResult {
                    item: s(r, "item"),
                    item_type: s(r, "type"),
                    checkname: s(r, "checkname"),
                    outcome: s(r, "outcome"),
                    note: s(r, "note"),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_parsed_and_garbage_ignored() {
        let y = "results:\n  - item: foo\n    type: koji_build\n    checkname: c\n    outcome: FAILED\n    note: n\n";
        let r = parse_results(y);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (
                r[0].item.as_str(),
                r[0].outcome.as_str(),
                r[0].item_type.as_str()
            ),
            ("foo", "FAILED", "koji_build")
        );
        assert!(parse_results(":::").is_empty());
        assert!(parse_results("results: 3").is_empty());
    }
}
