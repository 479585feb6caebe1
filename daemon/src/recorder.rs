//! The counters and histograms of events (jobs ending and their phases, VM teardowns, boot
//! failures, ResultsDB posts, reaped leftovers), counted where they happen. Cheap to clone into
//! whatever sees the event; `metrics` registers them beside the gauges it reads at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::jobs::JobRecord;
use crate::lifecycle::State;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    state: String,
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// What the reaper destroyed.
#[derive(Debug, Clone, Copy)]
pub enum Leftover {
    Domain,
    VmDir,
    /// A VM's volume on a `[hosts]` host.
    Volume,
}

/// What became of one ResultsDB POST.
#[derive(Debug, Clone, Copy)]
pub enum Post {
    Posted,
    Refused,
    Retry,
}

/// Seconds, 50 ms to 2 h: a phase's time ranges from a parked VM's hand-over to a long task.
#[derive(Clone, Debug)]
struct Buckets;

const BUCKETS: [f64; 16] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    7200.0,
];

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(BUCKETS)
    }
}

#[derive(Clone, Debug)]
pub struct Recorder {
    ended: Family<JobLabels, Counter>,
    phases: Family<PhaseLabels, Histogram, Buckets>,
    teardown: Histogram,
    boot_failures: Family<PoolLabel, Counter>,
    posts: Family<ResultLabel, Counter>,
    reaped: Family<KindLabel, Counter>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            ended: Family::default(),
            phases: Family::new_with_constructor(Buckets),
            teardown: Histogram::new(BUCKETS),
            boot_failures: Family::default(),
            posts: Family::default(),
            reaped: Family::default(),
        }
    }
}

/// The phase a job spends in `state`, named for the metric.
fn phase(state: State) -> Option<&'static str> {
    Some(match state {
        State::Queued => "queue_wait",
        State::Provisioning => "provisioning",
        State::Booting => "boot",
        State::Running => "run",
        State::Collecting => "collect",
        State::Reporting => "report",
        _ => return None,
    })
}

impl Recorder {
    /// Registers every family under its Prometheus name.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "minion_jobs_ended",
            "Jobs that reached a final state since the daemon started, by state and pool",
            self.ended.clone(),
        );
        registry.register_with_unit(
            "minion_job_phase_duration",
            "Time jobs spent in each phase of their lifecycle, observed when they end",
            Unit::Seconds,
            self.phases.clone(),
        );
        registry.register_with_unit(
            "minion_vm_teardown_duration",
            "Time destroying a VM and removing its files took",
            Unit::Seconds,
            self.teardown.clone(),
        );
        registry.register(
            "minion_boot_failures",
            "VMs that did not reach the agent's Ready (cancelled boots are not failures), by pool",
            self.boot_failures.clone(),
        );
        registry.register(
            "minion_resultsdb_posts",
            "ResultsDB POSTs by what became of them (retry: down, unreachable or 5xx)",
            self.posts.clone(),
        );
        registry.register(
            "minion_reaped_leftovers",
            "Leftovers of this daemon no live VM owned, destroyed by the periodic reaper",
            self.reaped.clone(),
        );
    }

    /// A job reached its final state: counted, and each phase of its lifecycle (every attempt's)
    /// observed from its events.
    pub fn job_ended(&self, r: &JobRecord) {
        let pool = &r.request.pool;
        self.ended
            .get_or_create(&JobLabels {
                state: r.state.to_string(),
                pool: pool.clone(),
            })
            .inc();
        for w in r.events.windows(2) {
            if let Some(phase) = phase(w[0].state) {
                let secs = (w[1].at_ms - w[0].at_ms).max(0) as f64 / 1000.0;
                self.phases
                    .get_or_create(&PhaseLabels {
                        phase,
                        pool: pool.clone(),
                    })
                    .observe(secs);
            }
        }
    }

    pub fn teardown(&self, took: std::time::Duration) {
        self.teardown.observe(took.as_secs_f64());
    }

    pub fn boot_failed(&self, pool: &str) {
        self.boot_failures
            .get_or_create(&PoolLabel { pool: pool.into() })
            .inc();
    }

    pub fn resultsdb_post(&self, how: Post) {
        let result = match how {
            Post::Posted => "posted",
            Post::Refused => "refused",
            Post::Retry => "retry",
        };
        self.posts.get_or_create(&ResultLabel { result }).inc();
    }

    /// The reaper destroyed `n` leftovers of `kind`.
    pub fn reaped(&self, kind: Leftover, n: u64) {
        let kind = match kind {
            Leftover::Domain => "domain",
            Leftover::VmDir => "vm_dir",
            Leftover::Volume => "volume",
        };
        self.reaped.get_or_create(&KindLabel { kind }).inc_by(n);
    }
}
