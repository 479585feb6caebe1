//! Prometheus metrics at `GET /metrics` on `listen_http`: OpenMetrics text when the scraper asks
//! for it, the classic text format otherwise.
//!
//! ```text
//! minion_jobs{state,pool}                          jobs not final now (QUEUED … REPORTING)
//! minion_jobs_ended_total{state,pool}              jobs that reached a final state since the start
//! minion_job_phase_duration_seconds{phase,pool}    histogram: queue_wait, provisioning, boot, run,
//!                                                  collect, report (observed when a job ends)
//! minion_vm_teardown_duration_seconds              histogram: destroying a VM and its files
//! minion_boot_failures_total{pool}                 VMs that did not reach the agent's Ready
//! minion_resultsdb_posts_total{result}             posted, refused, retry
//! minion_reaped_leftovers_total{kind}              leftovers the periodic reaper destroyed (domain, vm_dir)
//! minion_vms_alive                                 VMs this daemon owns now (jobs' and pre-booted)
//! minion_vms_ready{pool}                           pre-booted VMs parked, ready for a job
//! minion_build_info{version}                       1
//! ```
//!
//! Gauges of what is (jobs not final, VMs alive and parked) are read when scraped; the
//! [`Recorder`]'s counters and histograms count events as they happen, from wherever they happen.

mod text_format;

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::guestvm::LiveVms;
use crate::jobs::Jobs;
use crate::recorder::Recorder;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape gets: OpenMetrics when its `Accept` asks for it (Prometheus does), the classic
/// text format otherwise. Returns the content type and the text.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (CONTENT_TYPE, openmetrics)
    } else {
        (
            text_format::CONTENT_TYPE,
            text_format::from_openmetrics(&openmetrics),
        )
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    state: String,
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

pub struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Gauge>,
    vms_alive: Gauge,
    vms_ready: Family<PoolLabel, Gauge>,
    source: Arc<Jobs>,
    live: LiveVms,
    ready: ReadyByPool,
}

/// Each pool's parked pre-booted VMs now.
pub type ReadyByPool = Box<dyn Fn() -> Vec<(String, u32)> + Send + Sync>;

impl Metrics {
    /// `ready`: each pool's parked VMs, read when scraped.
    pub fn new(
        jobs: Arc<Jobs>,
        live: LiveVms,
        recorder: Recorder,
        ready: ReadyByPool,
    ) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let (jobs_g, vms_alive, vms_ready) =
            (Family::default(), Gauge::default(), Family::default());
        registry.register(
            "minion_jobs",
            "Jobs not final, by state and pool",
            jobs_g.clone(),
        );
        recorder.register(&mut registry);
        registry.register(
            "minion_vms_alive",
            "VMs this daemon owns now (jobs' and pre-booted)",
            vms_alive.clone(),
        );
        registry.register(
            "minion_vms_ready",
            "Pre-booted VMs parked and ready for a job, by pool",
            vms_ready.clone(),
        );
        registry.register(
            "minion_build",
            "The running miniond",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Arc::new(Metrics {
            registry,
            jobs: jobs_g,
            vms_alive,
            vms_ready,
            source: jobs,
            live,
            ready,
        })
    }

    /// The metrics now, as OpenMetrics text. Reads the jobs not final (an index scan).
    pub fn render(&self) -> String {
        self.jobs.clear();
        match self.source.active() {
            Ok(active) => {
                for r in active {
                    self.jobs
                        .get_or_create(&JobLabels {
                            state: r.state.to_string(),
                            pool: r.request.pool.clone(),
                        })
                        .inc();
                }
            }
            Err(e) => tracing::error!("metrics: jobs not final: {e}"),
        }
        self.vms_alive.set(self.live.len() as i64);
        for (pool, ready) in (self.ready)() {
            self.vms_ready
                .get_or_create(&PoolLabel { pool })
                .set(i64::from(ready));
        }
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!("metrics: encoding: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{JobEvent, JobRequest};
    use crate::recorder::{Leftover, Post};

    #[test]
    fn jobs_by_state_ended_jobs_reaped_leftovers_and_the_build_are_exported() {
        let t = tempfile::tempdir().expect("tmp");
        let jobs = Arc::new(Jobs::open(t.path(), 1).expect("jobs"));
        let rec = Recorder::default();
        let m = Metrics::new(
            jobs.clone(),
            LiveVms::default(),
            rec.clone(),
            Box::new(Vec::new),
        );
        let hook = rec.clone();
        jobs.on_final(Box::new(move |r| hook.job_ended(r)));
        let req = JobRequest {
            pool: "fedora".into(),
            ..JobRequest::default()
        };
        for id in ["a", "b", "c"] {
            jobs.create(id, req.clone(), "", None).expect("create");
        }
        jobs.apply("c", JobEvent::Cancelled { reason: "x".into() })
            .expect("cancel");
        rec.reaped(Leftover::Domain, 2);
        rec.reaped(Leftover::VmDir, 1);
        rec.boot_failed("fedora");
        rec.resultsdb_post(Post::Posted);
        rec.resultsdb_post(Post::Posted);
        rec.resultsdb_post(Post::Refused);
        rec.teardown(std::time::Duration::from_millis(300));
        let text = m.render();
        for want in [
            "minion_jobs{state=\"QUEUED\",pool=\"fedora\"} 2",
            "minion_jobs_ended_total{state=\"CANCELLED\",pool=\"fedora\"} 1",
            "minion_reaped_leftovers_total{kind=\"domain\"} 2",
            "minion_reaped_leftovers_total{kind=\"vm_dir\"} 1",
            "minion_vms_alive 0",
            "minion_boot_failures_total{pool=\"fedora\"} 1",
            "minion_resultsdb_posts_total{result=\"posted\"} 2",
            "minion_resultsdb_posts_total{result=\"refused\"} 1",
            "minion_vm_teardown_duration_seconds_bucket{le=\"0.5\"} 1",
            "minion_vm_teardown_duration_seconds_bucket{le=\"0.25\"} 0",
            "# UNIT minion_job_phase_duration_seconds seconds",
            // c went QUEUED → CANCELLED: one queue wait.
            "minion_job_phase_duration_seconds_count{phase=\"queue_wait\",pool=\"fedora\"} 1",
            "minion_build_info{version=\"",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} not in:\n{text}");
        }
        // A state that has no jobs any more is not left at its old value.
        jobs.apply("a", JobEvent::Cancelled { reason: "x".into() })
            .expect("cancel");
        jobs.apply("b", JobEvent::Cancelled { reason: "x".into() })
            .expect("cancel");
        let text = m.render();
        assert!(!text.contains("minion_jobs{state=\"QUEUED\""), "{text}");
        assert!(
            text.contains("minion_jobs_ended_total{state=\"CANCELLED\",pool=\"fedora\"} 3"),
            "{text}"
        );
    }
}
