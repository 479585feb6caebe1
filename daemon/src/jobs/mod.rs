//! The job lifecycle's one owner (the ExecDB role). Nothing else changes a job's state: the
//! dispatcher, the runners and the API send [`JobEvent`]s to [`Jobs::apply`], which checks the
//! transition (`State::can_go_to`), writes the record (flushed) and then tells the job's
//! watchers, in that order, as one step. Live output (log chunks, action events) reaches watchers
//! through here too. The store and the fan-out hub are private to this module.
//!
//! ```text
//! QUEUED --PickedUp--> PROVISIONING --VmPrepared--> BOOTING --AgentReady--> RUNNING
//!        --Collecting--> COLLECTING --SessionEnded--> FINISHED   (REPORTING: when results are reported)
//! any in flight --Failed / Cancelled / TimedOut--> final;  QUEUED --Cancelled--> CANCELLED
//! in flight at a restart --Interrupted--> FAILED (daemon restart) --> QUEUED while the retry budget lasts
//! booting on a host that stopped answering --HostLost--> FAILED (host lost) --> QUEUED likewise
//! ```

pub mod convert;
mod hub;
mod record;
mod store;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use minion_channel::SessionOutcome;
use minion_proto::controller as pb;
use tokio::sync::broadcast;

use crate::lifecycle::State;

pub use store::{
    now_ms, Created, ExecStatus, JobRecord, JobRequest, ListQuery, OutboxEntry, Page, Provenance,
    Pruned, Refusal, ReportingStatus, Resolution, StoreError, TaskResult,
};

/// What a finished session's results become when reporting is on: outbox entries to post, and
/// the results refused before posting (namespace policy).
#[derive(Debug, Clone, Default)]
pub struct ReportPlan {
    pub entries: Vec<OutboxEntry>,
    pub refused: Vec<Refusal>,
}

/// What happened to a job. Each one is applied by [`Jobs::apply`].
#[derive(Debug)]
pub enum JobEvent {
    /// The dispatcher gave the job a VM or a slot for one (QUEUED → PROVISIONING). `vm_id` is
    /// a pre-booted VM's id when it got one.
    PickedUp {
        vm_id: Option<String>,
    },
    /// The VM's files exist, or a pre-booted VM was taken (PROVISIONING → BOOTING).
    VmPrepared {
        vm_id: String,
        detail: String,
    },
    /// libvirt started the domain (no state change: splits BOOTING into start and boot).
    DomainStarted,
    /// The agent in the guest answered and the job was handed over (BOOTING → RUNNING).
    AgentReady {
        agent_version: String,
    },
    /// The formula has ended; artifacts and results are being taken (RUNNING → COLLECTING).
    Collecting,
    /// The session ended with the guest's outcome and the VM is gone: COLLECTING → REPORTING
    /// with the results in the outbox when there is reporting to do (`report`), else → FINISHED.
    SessionEnded {
        outcome: Box<SessionOutcome>,
        report: Option<ReportPlan>,
    },
    /// The first attempt at posting is over (what is not posted stays in the outbox):
    /// REPORTING → FINISHED.
    Reported,
    Cancelled {
        reason: String,
    },
    TimedOut {
        reason: String,
    },
    /// An infrastructure fault (the task's own failure is a FINISHED job with NOT_OK).
    Failed {
        reason: String,
    },
    /// The libvirt host could not be reached (or stopped answering) before the job's guest ran
    /// anything: FAILED, then requeued while its retry budget lasts.
    HostLost {
        uri: String,
        error: String,
    },
    /// The daemon restarted while the job was in flight: FAILED, then requeued while its retry
    /// budget lasts.
    Interrupted,
}

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("job {id}: the daemon is shutting down (the next start requeues it)")]
    ShuttingDown { id: String },
}

impl JobsError {
    /// The event lost a race (the job moved on, e.g. a cancel won): not a fault.
    pub fn is_illegal_transition(&self) -> bool {
        matches!(self, JobsError::Store(StoreError::Illegal(_)))
    }
}

/// What a job's watcher gets: live events from the moment it subscribed, and how many bytes of
/// `minion.log` were already written then (the rest arrives live, never twice).
pub struct Subscription {
    pub live: broadcast::Receiver<pb::WatchEvent>,
    pub logged: u64,
}

/// Called with every record that reaches a final state, after it is written (the bus).
pub type FinalHook = Box<dyn Fn(&JobRecord) + Send + Sync>;

pub struct Jobs {
    store: store::Store,
    on_final: std::sync::RwLock<Vec<FinalHook>>,
    hub: hub::Hub,
    state_dir: PathBuf,
    retry_budget: u32,
    shutting_down: AtomicBool,
}

impl Jobs {
    pub fn open(state_dir: &Path, retry_budget: u32) -> Result<Jobs, JobsError> {
        Ok(Jobs {
            store: store::Store::open(&state_dir.join("jobs.db"))?,
            on_final: std::sync::RwLock::new(Vec::new()),
            hub: hub::Hub::default(),
            state_dir: state_dir.to_path_buf(),
            retry_budget,
            shutting_down: AtomicBool::new(false),
        })
    }

    /// Adds a hook told of every final state (after the record is written), in the order added.
    pub fn on_final(&self, hook: FinalHook) {
        self.on_final
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }

    /// The `instances` tree of the jobs database (one database, one lock file, one backup).
    pub fn instances_tree(&self) -> Result<sled::Tree, JobsError> {
        Ok(self.store.tree_named("instances")?)
    }

    /// The job's private copy of its task tree.
    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("tasks").join(id)
    }

    pub fn artifacts_dir(&self, id: &str) -> PathBuf {
        self.artifacts_root().join(id)
    }

    fn artifacts_root(&self) -> PathBuf {
        self.state_dir.join("artifacts")
    }

    /// Bytes of every job's artifacts together.
    pub fn artifacts_bytes(&self) -> u64 {
        dir_bytes(&self.artifacts_root())
    }

    /// Removes a final job with nothing left to post, artifacts first, then its record
    /// (leaving a tombstone that says `why`). `None`: the job is kept (not final, results to
    /// post, or gone); else the artifact bytes freed.
    pub fn prune(&self, id: &str, why: Pruned) -> Result<Option<u64>, JobsError> {
        if !self.store.prunable(id)? {
            return Ok(None);
        }
        let bytes = self.remove_artifacts(id);
        self.store.prune(id, why)?;
        Ok(Some(bytes))
    }

    /// Removes the artifacts (and log) of a final job with nothing left to post and marks its
    /// record with `why`. `None`: kept, or there were none.
    pub fn prune_artifacts(&self, id: &str, why: Pruned) -> Result<Option<u64>, JobsError> {
        if !self.store.prunable(id)? || !self.artifacts_dir(id).exists() {
            return Ok(None);
        }
        let bytes = self.remove_artifacts(id);
        self.store.update(id, |r| r.artifacts_pruned = Some(why))?;
        Ok(Some(bytes))
    }

    fn remove_artifacts(&self, id: &str) -> u64 {
        let dir = self.artifacts_dir(id);
        let bytes = dir_bytes(&dir);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::error!(job = %id, "removing {}: {e}", dir.display());
            }
        }
        bytes
    }

    /// Drops the tombstones of jobs pruned before `before_ms`.
    pub fn forget_pruned(&self, before_ms: i64) -> Result<usize, JobsError> {
        Ok(self.store.forget_pruned(before_ms)?)
    }

    /// From now on no event changes a job (the next start requeues what was in flight).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Records a new QUEUED job (durable on return), unless idempotency key `key` (when not
    /// empty) is taken: then the job that took it.
    pub fn create(
        &self,
        id: &str,
        request: JobRequest,
        key: &str,
        provenance: Option<Provenance>,
    ) -> Result<Created, JobsError> {
        Ok(self.store.create(id, request, key, provenance)?)
    }

    /// The job that holds idempotency key `key`.
    pub fn by_key(&self, key: &str) -> Result<Option<JobRecord>, JobsError> {
        Ok(self.store.by_key(key)?)
    }

    pub fn get(&self, id: &str) -> Result<JobRecord, JobsError> {
        Ok(self.store.get(id)?)
    }

    pub fn list(&self, q: &ListQuery) -> Result<Page, JobsError> {
        Ok(self.store.list(q)?)
    }

    /// Every job not final (queued, in flight, reporting), in submission order.
    pub fn active(&self) -> Result<Vec<JobRecord>, JobsError> {
        Ok(self.store.active()?)
    }

    /// How many records were moved aside because they did not decode.
    pub fn quarantined(&self) -> usize {
        self.store.quarantined()
    }

    /// Queued jobs of `pool`, in submission order.
    pub fn queued_in(&self, pool: &str) -> Result<Vec<String>, JobsError> {
        Ok(self
            .store
            .active()?
            .into_iter()
            .filter(|r| r.state == State::Queued && r.request.pool == pool)
            .map(|r| r.id)
            .collect())
    }

    pub fn is_queued(&self, id: &str) -> bool {
        matches!(self.store.get(id), Ok(r) if r.state == State::Queued)
    }

    /// Applies one event: checks the transition, writes the record (flushed), tells the
    /// watchers. A final state also ends the watchers' streams and drops the task tree.
    pub fn apply(&self, id: &str, event: JobEvent) -> Result<JobRecord, JobsError> {
        if self.is_shutting_down() && !matches!(event, JobEvent::Interrupted) {
            return Err(JobsError::ShuttingDown { id: id.to_string() });
        }
        let not_ok = |r: &mut JobRecord| r.execution_status = Some(ExecStatus::NotOk);
        let rec = match event {
            JobEvent::PickedUp { vm_id } => {
                let detail = vm_id.as_deref().map(prebooted_detail).unwrap_or_default();
                self.store
                    .transition_with(id, State::Provisioning, &detail, |r| {
                        r.vm_id = vm_id.unwrap_or_default();
                        r.domain_started_ms = None;
                    })?
            }
            JobEvent::VmPrepared { vm_id, detail } => {
                self.store
                    .transition_with(id, State::Booting, &detail, |r| r.vm_id = vm_id)?
            }
            JobEvent::DomainStarted => {
                // No state change, nothing for watchers.
                return Ok(self
                    .store
                    .update(id, |r| r.domain_started_ms = Some(now_ms()))?);
            }
            JobEvent::AgentReady { agent_version } => self.store.transition_with(
                id,
                State::Running,
                &format!("agent {agent_version} ready"),
                |_| {},
            )?,
            JobEvent::Collecting => {
                self.store
                    .transition_with(id, State::Collecting, "", |_| {})?
            }
            JobEvent::SessionEnded { outcome: o, report } => {
                let results = task_results(id, &o.results_yaml);
                let verdict = |r: &mut JobRecord| {
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
                    r.artifact_bytes = o.artifact_bytes;
                };
                match report {
                    None => self
                        .store
                        .transition_with(id, State::Finished, "", verdict)?,
                    Some(plan) => {
                        let pending = plan.entries.len() as u32;
                        let msg = format!("{pending} result(s) to report");
                        self.store.transition_with_outbox(
                            id,
                            State::Reporting,
                            &msg,
                            |r| {
                                verdict(r);
                                r.reporting = Some(ReportingStatus {
                                    posted: 0,
                                    pending,
                                    refused: plan.refused.clone(),
                                });
                            },
                            &plan.entries,
                        )?
                    }
                }
            }
            JobEvent::Reported => {
                let now = self.store.get(id)?;
                let st = now.reporting.clone().unwrap_or_default();
                let msg = format!(
                    "reported {}, pending {}, refused {}",
                    st.posted,
                    st.pending,
                    st.refused.len()
                );
                self.store
                    .transition_with(id, State::Finished, &msg, |_| {})?
            }
            JobEvent::Cancelled { reason } => {
                self.store
                    .transition_with(id, State::Cancelled, &reason, not_ok)?
            }
            JobEvent::TimedOut { reason } => {
                self.store
                    .transition_with(id, State::TimedOut, &reason, not_ok)?
            }
            JobEvent::Failed { reason } => {
                self.store
                    .transition_with(id, State::Failed, &reason, not_ok)?
            }
            JobEvent::HostLost { uri, error } => {
                let reason = format!("host lost: {uri}: {error}");
                return self.fail_then_requeue(id, &reason, "host lost");
            }
            JobEvent::Interrupted => {
                return self.fail_then_requeue(id, "daemon restart", "daemon restart")
            }
        };
        self.publish(&rec);
        Ok(rec)
    }

    /// FAILED with `reason` (the daemon restarted, or the host was lost before the job ran),
    /// then QUEUED again while the retry budget lasts.
    fn fail_then_requeue(
        &self,
        id: &str,
        reason: &str,
        cause: &str,
    ) -> Result<JobRecord, JobsError> {
        let failed = self.store.transition_with(id, State::Failed, reason, |r| {
            r.execution_status = Some(ExecStatus::NotOk)
        })?;
        if failed.attempt >= self.retry_budget {
            self.publish(&failed);
            return Ok(failed);
        }
        let attempt = failed.attempt + 1;
        let rec = self.store.transition_with(
            id,
            State::Queued,
            &format!("requeued after {cause} (retry {attempt})"),
            |r| {
                r.attempt = attempt;
                r.execution_status = None;
            },
        )?;
        // The next attempt starts with no artifacts (a lost host's run may have left some).
        let _ = std::fs::remove_dir_all(self.artifacts_dir(id));
        self.publish(&rec);
        Ok(rec)
    }

    /// After a (re)start nothing runs: every in-flight job is [`JobEvent::Interrupted`], and the
    /// partial artifacts of every job that will run again are dropped (they would mix with the
    /// next attempt's). A job that was REPORTING has its results: it ends FINISHED, and its
    /// outbox is posted by the reporter.
    pub fn interrupt_in_flight(&self) -> Result<(), JobsError> {
        for rec in self.store.active()? {
            let mut requeued = rec.state == State::Queued;
            if rec.state == State::Reporting {
                self.apply(&rec.id, JobEvent::Reported)?;
                tracing::info!(job = %rec.id, "was REPORTING at restart: FINISHED, its outbox is posted later");
                continue;
            }
            if rec.state.is_in_flight() {
                let after = self.apply(&rec.id, JobEvent::Interrupted)?;
                requeued = after.state == State::Queued;
                if requeued {
                    tracing::warn!(job = %rec.id, "was {} at restart: FAILED, requeued", rec.state);
                } else {
                    tracing::warn!(job = %rec.id, "was {} at restart: FAILED, retry budget spent", rec.state);
                }
            }
            if requeued {
                let _ = std::fs::remove_dir_all(self.artifacts_dir(&rec.id));
            }
        }
        Ok(())
    }

    /// Every result waiting in the outbox.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>, JobsError> {
        Ok(self.store.outbox()?)
    }

    /// Records that a POST of `e` is about to start.
    pub fn outbox_sent(&self, e: &OutboxEntry) -> Result<(), JobsError> {
        Ok(self.store.outbox_sent(e)?)
    }

    /// `e` was posted or refused: it leaves the outbox and is counted on its job.
    pub fn outbox_resolve(
        &self,
        e: &OutboxEntry,
        how: &Resolution,
    ) -> Result<JobRecord, JobsError> {
        Ok(self.store.outbox_resolve(e, how)?)
    }

    /// A log chunk: `write` (appending to minion.log) runs atomically with the publication, so
    /// a watcher sees each chunk exactly once (see [`Jobs::subscribe`]).
    pub fn log(&self, id: &str, chunk: pb::LogChunk, write: impl FnOnce(&[u8])) {
        let data = chunk.data.clone();
        let ev = pb::WatchEvent {
            event: Some(pb::watch_event::Event::Log(chunk)),
        };
        self.hub.publish_after(id, ev, || write(&data));
    }

    /// A formula step started, succeeded, failed or was skipped.
    pub fn action(&self, id: &str, action: pb::ActionEvent) {
        self.hub.publish(
            id,
            pb::WatchEvent {
                event: Some(pb::watch_event::Event::Action(action)),
            },
        );
    }

    /// Subscribes to the job's live events; `log_len` (the log's current length) is taken
    /// under the same lock that [`Jobs::log`] publishes under.
    pub fn subscribe(&self, id: &str, log_len: impl FnOnce() -> u64) -> Subscription {
        let (live, logged) = self.hub.subscribe_with(id, log_len);
        Subscription { live, logged }
    }

    /// Subscribes again after the job's stream was closed under a watcher.
    pub fn resubscribe(&self, id: &str) -> broadcast::Receiver<pb::WatchEvent> {
        self.hub.subscribe(id)
    }

    /// A watcher of `id` has gone (its receiver dropped): frees the job's channel if it was the
    /// last one.
    pub fn unsubscribe(&self, id: &str) {
        self.hub.release(id);
    }

    /// Test helper: takes a QUEUED job to COLLECTING.
    #[cfg(test)]
    pub fn run_to_collecting(&self, id: &str) {
        for ev in [
            JobEvent::PickedUp { vm_id: None },
            JobEvent::VmPrepared {
                vm_id: id.into(),
                detail: String::new(),
            },
            JobEvent::AgentReady {
                agent_version: "1".into(),
            },
            JobEvent::Collecting,
        ] {
            self.apply(id, ev).expect("step");
        }
    }

    /// Test helper: takes a QUEUED job to FINISHED with one result still in the outbox.
    #[cfg(test)]
    pub fn hold_for_reporting(&self, id: &str) {
        self.run_to_collecting(id);
        let plan = ReportPlan {
            entries: vec![OutboxEntry {
                job: id.into(),
                index: 0,
                testcase: "qa.c".into(),
                body: serde_json::json!({}),
                sent: false,
            }],
            refused: Vec::new(),
        };
        let ev = JobEvent::SessionEnded {
            outcome: test_outcome(""),
            report: Some(plan),
        };
        self.apply(id, ev).expect("ended");
        self.apply(id, JobEvent::Reported).expect("reported");
    }

    #[cfg(test)]
    pub fn watched(&self) -> usize {
        self.hub.len()
    }

    fn publish(&self, rec: &JobRecord) {
        if let Some(e) = rec.events.last() {
            self.hub.publish(
                &rec.id,
                pb::WatchEvent {
                    event: Some(pb::watch_event::Event::Lifecycle(convert::event_to_pb(e))),
                },
            );
        }
        if rec.state.is_final() {
            self.hub.publish(
                &rec.id,
                pb::WatchEvent {
                    event: Some(pb::watch_event::Event::Finished(convert::job_to_pb(rec))),
                },
            );
            self.hub.close(&rec.id);
            for hook in self
                .on_final
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                hook(rec);
            }
            // The private copy of the task tree is not needed once the job is final.
            let _ = std::fs::remove_dir_all(self.task_dir(&rec.id));
        }
    }
}

/// Bytes of the files under `path` (0 when it is not there). Symlinks are not followed.
pub fn dir_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| dir_bytes(&e.path())).sum())
        .unwrap_or(0)
}

/// Test helper: a session that ended OK with `yaml` as its ResultYAML.
#[cfg(test)]
pub fn test_outcome(yaml: &str) -> Box<SessionOutcome> {
    Box::new(SessionOutcome {
        agent_version: "a".into(),
        execution_status_ok: true,
        status_message: String::new(),
        exit_code: 0,
        cancelled: false,
        results_yaml: yaml.into(),
        tap: String::new(),
        artifact_bytes: 0,
        artifact_entries: 0,
        log_bytes: 0,
        artifact_transfer: std::time::Duration::ZERO,
    })
}

/// The detail a job's PROVISIONING and BOOTING events carry when it runs on a pre-booted VM.
pub fn prebooted_detail(vm_id: &str) -> String {
    format!("pre-booted VM {vm_id}")
}

/// The task's own outcomes from the guest's ResultYAML. The guest is hostile: text that does not
/// parse gives no results (and a warning), never a failed write.
fn task_results(id: &str, yaml: &str) -> Vec<TaskResult> {
    if yaml.trim().is_empty() {
        return Vec::new();
    }
    match minion_formula::parse_results(yaml) {
        Ok(results) => results
            .into_iter()
            .take(10_000)
            .map(|r| TaskResult {
                outcome: r.effective_outcome().as_str().to_string(),
                item: r.item,
                item_type: r.item_type,
                checkname: r.checkname,
                note: r.note.unwrap_or_default(),
            })
            .collect(),
        Err(e) => {
            tracing::warn!(job = %id, "the guest's ResultYAML does not parse: {e}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(dir: &Path) -> Jobs {
        Jobs::open(dir, 1).expect("open")
    }

    fn request() -> JobRequest {
        JobRequest {
            pool: "p".into(),
            item: "foo-1.0-1.fc40".into(),
            item_type: "koji_build".into(),
            ..JobRequest::default()
        }
    }

    fn states(r: &JobRecord) -> Vec<State> {
        r.events.iter().map(|e| e.state).collect()
    }

    #[test]
    fn a_job_runs_through_its_states_and_reporting_is_skipped() {
        let t = tempfile::tempdir().expect("tmp");
        let j = jobs(t.path());
        j.create("a", request(), "", None).expect("create");
        std::fs::create_dir_all(j.task_dir("a")).expect("task dir");
        let mut watch = j.subscribe("a", || 0);
        j.apply("a", JobEvent::PickedUp { vm_id: None })
            .expect("picked up");
        j.apply(
            "a",
            JobEvent::VmPrepared {
                vm_id: "a".into(),
                detail: String::new(),
            },
        )
        .expect("prepared");
        let r = j.apply("a", JobEvent::DomainStarted).expect("started");
        assert_eq!(r.state, State::Booting);
        assert!(r.domain_started_ms.is_some());
        j.apply(
            "a",
            JobEvent::AgentReady {
                agent_version: "1".into(),
            },
        )
        .expect("ready");
        j.apply("a", JobEvent::Collecting).expect("collecting");
        let yaml = "results:\n  - item: foo\n    type: koji_build\n    checkname: c\n    outcome: FAILED\n    note: n\n";
        let r = j
            .apply(
                "a",
                JobEvent::SessionEnded {
                    outcome: test_outcome(yaml),
                    report: None,
                },
            )
            .expect("ended");
        assert_eq!(
            states(&r),
            [
                State::Queued,
                State::Provisioning,
                State::Booting,
                State::Running,
                State::Collecting,
                State::Finished
            ]
        );
        assert_eq!(r.events[3].message, "agent 1 ready");
        assert_eq!(
            (
                r.results[0].item.as_str(),
                r.results[0].outcome.as_str(),
                r.results[0].note.as_str()
            ),
            ("foo", "FAILED", "n")
        );
        assert_eq!(r.execution_status, Some(ExecStatus::Ok));
        assert!(!j.task_dir("a").exists(), "a final job drops its task tree");
        // Watchers saw every state in order, then Finished, then the end of the stream.
        let mut seen = Vec::new();
        while let Ok(ev) = watch.live.try_recv() {
            seen.push(match ev.event {
                Some(pb::watch_event::Event::Lifecycle(l)) => l.state,
                Some(pb::watch_event::Event::Finished(_)) => -1,
                _ => -2,
            });
        }
        assert_eq!(seen, [2, 3, 4, 5, 7, -1]);
        assert_eq!(j.watched(), 0, "the final state closes the job's channel");
    }

    #[test]
    fn results_to_report_go_through_reporting_and_the_outbox_survives_a_restart() {
        let t = tempfile::tempdir().expect("tmp");
        {
            let j = jobs(t.path());
            j.create("a", request(), "", None).expect("create");
            j.run_to_collecting("a");
            let entry = |index: u32| OutboxEntry {
                job: "a".into(),
                index,
                testcase: format!("qa.c{index}"),
                body: serde_json::json!({"testcase": {"name": format!("qa.c{index}")}}),
                sent: false,
            };
            let plan = ReportPlan {
                entries: vec![entry(0), entry(1)],
                refused: vec![Refusal {
                    testcase: "dist.x".into(),
                    reason: "namespace `dist` is closed to this repo".into(),
                }],
            };
            let r = j
                .apply(
                    "a",
                    JobEvent::SessionEnded {
                        outcome: test_outcome(""),
                        report: Some(plan),
                    },
                )
                .expect("ended");
            assert_eq!(r.state, State::Reporting);
            assert_eq!(r.reporting.as_ref().map(|s| s.pending), Some(2));
            let first = j.outbox().expect("outbox").remove(0);
            j.outbox_sent(&first).expect("sent");
            j.outbox_resolve(&first, &Resolution::Posted)
                .expect("posted");
            // The daemon dies here, in REPORTING, one result still in the outbox.
        }
        let j = jobs(t.path());
        j.interrupt_in_flight().expect("restart");
        let r = j.get("a").expect("a");
        assert_eq!(r.state, State::Finished, "a job with results is not re-run");
        assert_eq!(r.attempt, 0);
        assert_eq!(
            r.events.last().map(|e| e.message.as_str()),
            Some("reported 1, pending 1, refused 1")
        );
        let left = j.outbox().expect("outbox");
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].index, left[0].sent), (1, false));
        let r = j
            .outbox_resolve(&left[0], &Resolution::Refused("400: bad".into()))
            .expect("refused");
        let st = r.reporting.expect("status");
        assert_eq!((st.posted, st.pending, st.refused.len()), (1, 0, 2));
        assert!(j.outbox().expect("outbox").is_empty());
    }

    #[test]
    fn garbage_results_from_the_guest_are_no_results() {
        let t = tempfile::tempdir().expect("tmp");
        let j = jobs(t.path());
        for (id, yaml) in [("g1", ":::"), ("g2", "results: 3"), ("g3", "")] {
            j.create(id, request(), "", None).expect("create");
            j.run_to_collecting(id);
            let r = j
                .apply(
                    id,
                    JobEvent::SessionEnded {
                        outcome: test_outcome(yaml),
                        report: None,
                    },
                )
                .expect("ended");
            assert_eq!(r.state, State::Finished);
            assert!(r.results.is_empty(), "{yaml:?}: {:?}", r.results);
        }
    }

    #[test]
    fn illegal_events_change_nothing_and_say_so() {
        let t = tempfile::tempdir().expect("tmp");
        let j = jobs(t.path());
        j.create("a", request(), "", None).expect("create");
        let e = j.apply("a", JobEvent::Collecting).expect_err("skip");
        assert!(e.is_illegal_transition(), "{e}");
        assert_eq!(
            e.to_string(),
            "job a: illegal transition QUEUED → COLLECTING"
        );
        let e = j
            .apply("a", JobEvent::TimedOut { reason: "x".into() })
            .expect_err("a queued job cannot time out");
        assert!(e.is_illegal_transition());
        let r = j
            .apply(
                "a",
                JobEvent::Cancelled {
                    reason: "cancelled while queued".into(),
                },
            )
            .expect("cancel");
        assert_eq!(r.execution_status, Some(ExecStatus::NotOk));
        assert!(j
            .apply("a", JobEvent::PickedUp { vm_id: None })
            .expect_err("final")
            .is_illegal_transition());
        assert_eq!(j.get("a").expect("get").state, State::Cancelled);
    }

    #[test]
    fn a_lost_host_requeues_the_job_within_its_budget_and_keeps_the_reason() {
        let t = tempfile::tempdir().expect("tmp");
        let j = jobs(t.path());
        j.create("a", request(), "", None).expect("create");
        let lost = || JobEvent::HostLost {
            uri: "qemu+tcp://h1/system".into(),
            error: "connection refused".into(),
        };
        j.apply(
            "a",
            JobEvent::PickedUp {
                vm_id: Some("prebooted-1".into()),
            },
        )
        .expect("picked up");
        let r = j.apply("a", lost()).expect("lost");
        assert_eq!(r.events[1].message, "pre-booted VM prebooted-1");
        assert_eq!(r.state, State::Queued, "nothing ran: it goes again");
        assert_eq!(r.attempt, 1);
        assert_eq!(
            r.events[2].message,
            "host lost: qemu+tcp://h1/system: connection refused"
        );
        assert_eq!(r.events[3].message, "requeued after host lost (retry 1)");
        // The budget (1) is spent: the second loss is final.
        j.apply("a", JobEvent::PickedUp { vm_id: None })
            .expect("picked up");
        let r = j.apply("a", lost()).expect("lost");
        assert_eq!(r.state, State::Failed);
        assert_eq!(
            r.failure_reason,
            "host lost: qemu+tcp://h1/system: connection refused"
        );
    }

    #[test]
    fn shutdown_freezes_every_job_for_the_restart() {
        let t = tempfile::tempdir().expect("tmp");
        let j = jobs(t.path());
        j.create("a", request(), "", None).expect("create");
        j.apply("a", JobEvent::PickedUp { vm_id: None })
            .expect("picked up");
        j.begin_shutdown();
        let e = j
            .apply(
                "a",
                JobEvent::Failed {
                    reason: "domain gone".into(),
                },
            )
            .expect_err("frozen");
        assert!(matches!(e, JobsError::ShuttingDown { .. }), "{e}");
        assert_eq!(j.get("a").expect("get").state, State::Provisioning);
    }

    #[test]
    fn restart_fails_in_flight_jobs_and_requeues_within_budget() {
        let t = tempfile::tempdir().expect("tmp");
        {
            let j = jobs(t.path());
            j.create("a", request(), "", None).expect("create");
            j.create("q", request(), "", None).expect("create");
            j.apply("a", JobEvent::PickedUp { vm_id: None })
                .expect("picked up");
            for id in ["a", "q"] {
                std::fs::create_dir_all(j.artifacts_dir(id)).expect("artifacts");
            }
        }
        let j = jobs(t.path());
        j.interrupt_in_flight().expect("reconcile");
        let r = j.get("a").expect("a");
        assert_eq!(r.state, State::Queued);
        assert_eq!(r.attempt, 1);
        let n = r.events.len();
        assert_eq!(r.events[n - 2].state, State::Failed);
        assert_eq!(r.events[n - 2].message, "daemon restart");
        assert_eq!(
            r.execution_status, None,
            "a requeued job has no verdict yet"
        );
        assert!(!j.artifacts_dir("a").exists() && !j.artifacts_dir("q").exists());
        assert_eq!(j.queued_in("p").expect("queued"), ["a", "q"]);
        drop(j);

        // In flight again, and the budget (1) is spent: FAILED for good, task tree gone.
        let j = jobs(t.path());
        j.apply("a", JobEvent::PickedUp { vm_id: None })
            .expect("again");
        std::fs::create_dir_all(j.task_dir("a")).expect("task dir");
        j.interrupt_in_flight().expect("reconcile");
        let r = j.get("a").expect("a");
        assert_eq!(r.state, State::Failed);
        assert_eq!(r.failure_reason, "daemon restart");
        assert!(!j.task_dir("a").exists());
    }

    #[test]
    fn watchers_of_unknown_or_finished_jobs_leave_nothing() {
        let t = tempfile::tempdir().expect("tmp");
        let j = jobs(t.path());
        for i in 0..100 {
            let id = format!("j{i}");
            let s = j.subscribe(&id, || 0);
            drop(s);
            j.unsubscribe(&id);
        }
        assert_eq!(j.watched(), 0);
    }
}
