//! Prometheus metrics, served as OpenMetrics text at `GET /metrics` on `listen_http`.
//!
//! ```text
//! minion_jobs{state,pool}                    jobs not final now (QUEUED … REPORTING)
//! minion_jobs_ended_total{state,pool}        jobs that reached a final state since the start
//! minion_reaped_leftovers_total{kind}        leftovers the periodic reaper destroyed (domain, vm_dir)
//! minion_vms_alive                           VMs this daemon owns now (jobs' and pre-booted)
//! minion_build_info{version}                 1
//! ```
//!
//! Gauges of what is (jobs not final, VMs alive) are read when scraped; counters count events
//! as they happen.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::guestvm::LiveVms;
use crate::jobs::{JobRecord, Jobs};

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    state: String,
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// What the reaper destroyed.
#[derive(Debug, Clone, Copy)]
pub enum Leftover {
    Domain,
    VmDir,
}

pub struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Gauge>,
    ended: Family<JobLabels, Counter>,
    reaped: Family<KindLabel, Counter>,
    vms_alive: Gauge,
    source: Arc<Jobs>,
    live: LiveVms,
}

impl Metrics {
    pub fn new(jobs: Arc<Jobs>, live: LiveVms) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let m = Metrics {
            jobs: Family::default(),
            ended: Family::default(),
            reaped: Family::default(),
            vms_alive: Gauge::default(),
            source: jobs,
            live,
            registry: Registry::default(),
        };
        registry.register(
            "minion_jobs",
            "Jobs not final, by state and pool",
            m.jobs.clone(),
        );
        registry.register(
            "minion_jobs_ended",
            "Jobs that reached a final state since the daemon started, by state and pool",
            m.ended.clone(),
        );
        registry.register(
            "minion_reaped_leftovers",
            "Leftovers of this daemon no live VM owned, destroyed by the periodic reaper",
            m.reaped.clone(),
        );
        registry.register(
            "minion_vms_alive",
            "VMs this daemon owns now (jobs' and pre-booted)",
            m.vms_alive.clone(),
        );
        registry.register(
            "minion_build",
            "The running miniond",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// What counts a job that reached its final state, for [`Jobs::on_final`]. It holds the
    /// counter only (not the metrics, which hold the jobs: no cycle).
    pub fn job_ended(&self) -> crate::jobs::FinalHook {
        let ended = self.ended.clone();
        Box::new(move |r: &JobRecord| {
            ended
                .get_or_create(&JobLabels {
                    state: r.state.to_string(),
                    pool: r.request.pool.clone(),
                })
                .inc();
        })
    }

    /// The reaper destroyed `n` leftovers of `kind`.
    pub fn reaped(&self, kind: Leftover, n: u64) {
        let kind = match kind {
            Leftover::Domain => "domain",
            Leftover::VmDir => "vm_dir",
        };
        self.reaped
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc_by(n);
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

    #[test]
    fn jobs_by_state_ended_jobs_reaped_leftovers_and_the_build_are_exported() {
        let t = tempfile::tempdir().expect("tmp");
        let jobs = Arc::new(Jobs::open(t.path(), 1).expect("jobs"));
        let m = Metrics::new(jobs.clone(), LiveVms::default());
        jobs.on_final(m.job_ended());
        let req = JobRequest {
            pool: "fedora".into(),
            ..JobRequest::default()
        };
        for id in ["a", "b", "c"] {
            jobs.create(id, req.clone(), "", None).expect("create");
        }
        jobs.apply("c", JobEvent::Cancelled { reason: "x".into() })
            .expect("cancel");
        m.reaped(Leftover::Domain, 2);
        m.reaped(Leftover::VmDir, 1);
        let text = m.render();
        for want in [
            "minion_jobs{state=\"QUEUED\",pool=\"fedora\"} 2",
            "minion_jobs_ended_total{state=\"CANCELLED\",pool=\"fedora\"} 1",
            "minion_reaped_leftovers_total{kind=\"domain\"} 2",
            "minion_reaped_leftovers_total{kind=\"vm_dir\"} 1",
            "minion_vms_alive 0",
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
