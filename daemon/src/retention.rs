//! Bounded growth: the pruner removes what the retention policy (the `[retention]` config
//! table) no longer keeps, oldest first. Never a job that is not final or whose results still
//! wait in the outbox. A pruned record leaves a tombstone (so `minion job show` says what
//! became of it); pruned artifacts leave the record, marked.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::jobs::{now_ms, Jobs, JobsError, ListQuery, Pruned};

const DAY_MS: i64 = 24 * 3600 * 1000;
/// Records looked at per page of the oldest-first walk.
const PAGE: usize = 500;

/// The `[retention]` config table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Job records and their artifacts older than this many days are removed. 0: kept
    /// forever. Default 90.
    pub max_age_days: u64,
    /// When all artifacts together take more than this many GiB, the oldest jobs' artifacts
    /// are removed (their records stay) until they fit. 0: no limit. Default 100.
    pub max_artifacts_gib: u64,
    /// Seconds between pruner passes. Default 3600.
    pub interval_secs: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age_days: 90,
            max_artifacts_gib: 100,
            interval_secs: 3600,
        }
    }
}

/// What one pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Job records (with their artifacts) removed for age.
    pub records: usize,
    /// Jobs whose artifacts were removed to fit the size limit.
    pub artifacts: usize,
    /// Bytes of artifacts freed, by either rule.
    pub bytes: u64,
    /// Tombstones dropped (their jobs were pruned longer ago than the age limit).
    pub tombstones: usize,
}

pub struct Pruner {
    pub jobs: Arc<Jobs>,
    pub policy: Retention,
}

impl Pruner {
    /// Runs a pass at once and then every `interval_secs`, logging what each removed.
    pub async fn run(self: Arc<Self>) {
        let mut every =
            tokio::time::interval(Duration::from_secs(self.policy.interval_secs.max(1)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let p = self.clone();
            match tokio::task::spawn_blocking(move || p.pass(now_ms())).await {
                Ok(Ok(r)) if r == PruneReport::default() => {}
                Ok(Ok(r)) => tracing::info!(
                    records = r.records,
                    artifacts = r.artifacts,
                    bytes = r.bytes,
                    tombstones = r.tombstones,
                    "retention: pruned {} job record(s) and the artifacts of {} more ({} MiB freed)",
                    r.records,
                    r.artifacts,
                    r.bytes / (1024 * 1024)
                ),
                Ok(Err(e)) => tracing::error!("retention pass: {e}"),
                Err(e) => tracing::error!("retention pass: {e}"),
            }
        }
    }

    /// One pass as of `now_ms` (the clock is the caller's: tests move it).
    pub fn pass(&self, now_ms: i64) -> Result<PruneReport, JobsError> {
        let mut report = PruneReport::default();
        let p = &self.policy;
        if p.max_age_days > 0 {
            let age_ms = (p.max_age_days as i64).saturating_mul(DAY_MS);
            let cutoff = now_ms.saturating_sub(age_ms);
            let why = Pruned {
                at_ms: now_ms,
                reason: format!("retention: older than {} days", p.max_age_days),
            };
            self.walk_oldest(|rec| {
                if rec.created_ms >= cutoff {
                    return Ok(false);
                }
                if let Some(bytes) = self.jobs.prune(&rec.id, why.clone())? {
                    report.records += 1;
                    report.bytes += bytes;
                }
                Ok(true)
            })?;
            report.tombstones = self.jobs.forget_pruned(cutoff)?;
        }
        if p.max_artifacts_gib > 0 {
            let limit = p.max_artifacts_gib.saturating_mul(1024 * 1024 * 1024);
            let mut total = self.jobs.artifacts_bytes();
            let why = Pruned {
                at_ms: now_ms,
                reason: format!(
                    "retention: all artifacts together over {} GiB",
                    p.max_artifacts_gib
                ),
            };
            self.walk_oldest(|rec| {
                if total <= limit {
                    return Ok(false);
                }
                if rec.artifacts_pruned.is_none() {
                    if let Some(bytes) = self.jobs.prune_artifacts(&rec.id, why.clone())? {
                        report.artifacts += 1;
                        report.bytes += bytes;
                        total = total.saturating_sub(bytes);
                    }
                }
                Ok(true)
            })?;
        }
        Ok(report)
    }

    /// Calls `f` on every record, oldest first, until it answers false.
    fn walk_oldest(
        &self,
        mut f: impl FnMut(&crate::jobs::JobRecord) -> Result<bool, JobsError>,
    ) -> Result<(), JobsError> {
        let mut after = None;
        loop {
            let page = self.jobs.list(&ListQuery {
                after_seq: after,
                limit: PAGE,
                ..ListQuery::default()
            })?;
            for rec in &page.jobs {
                if !f(rec)? {
                    return Ok(());
                }
            }
            // `next` is the last seq of this page: records `f` removed do not shift it.
            match page.next {
                Some(seq) => after = Some(seq),
                None => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{JobEvent, JobRequest, StoreError};

    fn request(item: &str) -> JobRequest {
        JobRequest {
            pool: "p".into(),
            item: item.into(),
            item_type: "koji_build".into(),
            ..JobRequest::default()
        }
    }

    /// A job cancelled while queued, with `bytes` of artifacts.
    fn ended(j: &Jobs, id: &str, bytes: usize) {
        j.create(id, request(id), "", None).expect("create");
        j.apply(id, JobEvent::Cancelled { reason: "x".into() })
            .expect("cancel");
        let out = j.artifacts_dir(id).join("task_output");
        std::fs::create_dir_all(&out).expect("dir");
        std::fs::write(out.join("big.log"), vec![b'x'; bytes]).expect("artifact");
    }

    fn pruner(j: &Arc<Jobs>, days: u64, gib: u64) -> Pruner {
        Pruner {
            jobs: j.clone(),
            policy: Retention {
                max_age_days: days,
                max_artifacts_gib: gib,
                interval_secs: 1,
            },
        }
    }

    #[test]
    fn old_final_jobs_go_with_their_artifacts_and_leave_a_tombstone() {
        let t = tempfile::tempdir().expect("tmp");
        let j = Arc::new(Jobs::open(t.path(), 1).expect("open"));
        ended(&j, "old", 1000);
        j.create("queued", request("q"), "", None).expect("create");
        let p = pruner(&j, 30, 0);
        let now = now_ms();
        // Nothing is 30 days old yet.
        assert_eq!(p.pass(now).expect("pass"), PruneReport::default());
        assert!(j.get("old").is_ok());
        // 31 days on: the final job goes, the queued one stays.
        let later = now + 31 * DAY_MS;
        let r = p.pass(later).expect("pass");
        assert_eq!((r.records, r.bytes), (1, 1000));
        assert!(!j.artifacts_dir("old").exists());
        let e = j.get("old").expect_err("pruned");
        assert!(matches!(e, JobsError::Store(StoreError::Pruned(_))), "{e}");
        assert!(
            e.to_string().contains("(retention: older than 30 days)"),
            "{e}"
        );
        assert!(j.get("queued").is_ok(), "a job not final is never pruned");
        // 61 days on (30 after the pruning): the tombstone goes too.
        let r = p.pass(later + 31 * DAY_MS).expect("pass");
        assert_eq!(r.tombstones, 1);
        assert!(matches!(
            j.get("old"),
            Err(JobsError::Store(StoreError::NotFound(_)))
        ));
    }

    #[test]
    fn artifacts_over_the_limit_go_oldest_first_and_records_stay() {
        let t = tempfile::tempdir().expect("tmp");
        let j = Arc::new(Jobs::open(t.path(), 1).expect("open"));
        // The limit is 1 GiB: three jobs of 400 MiB (sparse files: length is what counts).
        for id in ["a", "b", "c"] {
            ended(&j, id, 0);
            let f = std::fs::File::create(j.artifacts_dir(id).join("task_output/big.log"))
                .expect("file");
            f.set_len(400 * 1024 * 1024).expect("len");
        }
        let r = pruner(&j, 0, 1).pass(now_ms()).expect("pass");
        assert_eq!((r.records, r.artifacts), (0, 1), "{r:?}");
        assert!(!j.artifacts_dir("a").exists());
        assert!(j.artifacts_dir("b").exists() && j.artifacts_dir("c").exists());
        let a = j.get("a").expect("the record stays");
        let why = a.artifacts_pruned.expect("marked");
        assert_eq!(why.reason, "retention: all artifacts together over 1 GiB");
        // Under the limit now: the next pass removes nothing.
        assert_eq!(
            pruner(&j, 0, 1).pass(now_ms()).expect("pass"),
            PruneReport::default()
        );
    }

    #[test]
    fn results_still_to_post_keep_their_job() {
        let t = tempfile::tempdir().expect("tmp");
        let j = Arc::new(Jobs::open(t.path(), 1).expect("open"));
        j.create("r", request("x"), "", None).expect("create");
        j.hold_for_reporting("r");
        let r = pruner(&j, 1, 0).pass(now_ms() + 10 * DAY_MS).expect("pass");
        assert_eq!(r.records, 0);
        assert!(j.get("r").is_ok());
    }
}
