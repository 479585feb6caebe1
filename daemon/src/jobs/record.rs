//! What the jobs database holds: a job's record (its request, lifecycle events, verdict and
//! results), the outbox's entries and what is left of a pruned job. Fields added later carry
//! `#[serde(default)]` so that older records still decode.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::lifecycle::State;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecStatus {
    Ok,
    NotOk,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub state: State,
    pub at_ms: i64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TaskResult {
    pub item: String,
    pub item_type: String,
    pub checkname: String,
    pub outcome: String,
    pub note: String,
}

/// What made a job, when a trigger did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Provenance {
    pub message_id: String,
    pub topic: String,
    pub rule_index: u32,
    pub task_name: String,
}

/// What a submission asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct JobRequest {
    pub pool: String,
    pub repo: String,
    pub git_ref: String,
    /// Relative to the task tree.
    pub formula: String,
    /// The formula's `namespace` (its results' testcases are `namespace.checkname`).
    #[serde(default)]
    pub namespace: String,
    pub item: String,
    pub item_type: String,
    pub arch: String,
    pub timeout_seconds: u64,
    pub args: BTreeMap<String, String>,
    /// Who submitted it: `uid:N` (the socket's peer) or `token:NAME`; empty for jobs from before
    /// miniond knew (only an admin may cancel those).
    #[serde(default)]
    pub submitter: String,
    /// Keep the VM as an instance of this name once the job ends (empty: destroy it).
    #[serde(default)]
    pub keep_vm_as: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    /// Submission order (FIFO and paging).
    pub seq: u64,
    pub request: JobRequest,
    pub state: State,
    pub events: Vec<EventRecord>,
    pub execution_status: Option<ExecStatus>,
    pub status_message: String,
    pub exit_code: i32,
    pub failure_reason: String,
    /// Restarts survived (requeues used).
    pub attempt: u32,
    pub results: Vec<TaskResult>,
    pub results_yaml: String,
    pub tap: String,
    pub created_ms: i64,
    /// The VM the current attempt runs on (its id: the job's UUID, or a pre-booted VM's own).
    #[serde(default)]
    pub vm_id: String,
    /// When the current attempt's domain was started (BOOTING is libvirt's start + the guest's
    /// boot; this splits them).
    #[serde(default)]
    pub domain_started_ms: Option<i64>,
    /// The submission's idempotency key (empty: none).
    #[serde(default)]
    pub idempotency_key: String,
    #[serde(default)]
    pub provenance: Option<Provenance>,
    /// Reporting to ResultsDB, once the job has results to report.
    #[serde(default)]
    pub reporting: Option<ReportingStatus>,
    /// What the guest sent back (bytes under the job's artifacts dir).
    #[serde(default)]
    pub artifact_bytes: u64,
    /// The retention pruner removed the job's artifacts (the record stays): when and why.
    #[serde(default)]
    pub artifacts_pruned: Option<Pruned>,
}

/// When and why the retention pruner removed something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    pub at_ms: i64,
    pub reason: String,
}

impl std::fmt::Display for Pruned {
    /// `2026-12-02T10:00:00Z (retention: older than 90 days)`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.at_ms.max(0) as u64);
        write!(
            f,
            "{} ({})",
            humantime::format_rfc3339_seconds(at),
            self.reason
        )
    }
}

/// What is left of a job whose record the retention pruner removed: enough to say so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub id: String,
    pub created_ms: i64,
    pub state: State,
    pub pruned: Pruned,
}

/// Where a job's results are on their way to ResultsDB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReportingStatus {
    pub posted: u32,
    /// In the outbox, not posted yet.
    pub pending: u32,
    pub refused: Vec<Refusal>,
}

/// A result ResultsDB (or the namespace policy) refused, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub testcase: String,
    pub reason: String,
}

/// One result waiting to be posted (the outbox survives restarts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub job: String,
    pub index: u32,
    pub testcase: String,
    /// The `POST /results` body.
    pub body: serde_json::Value,
    /// A POST was started: before posting again, ask ResultsDB whether it arrived.
    #[serde(default)]
    pub sent: bool,
}

impl OutboxEntry {
    pub(super) fn key(&self) -> String {
        format!("{}/{:06}", self.job, self.index)
    }
}

/// What became of an outbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Posted,
    Refused(String),
}
