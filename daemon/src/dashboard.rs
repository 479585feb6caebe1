//! The web dashboard's pages, rendered on the server (minijinja, every value auto-escaped): the
//! jobs list, a job's page, an item's history, pools and images, the sign-in form. The live log
//! is `live.rs`. Pages are data in, HTML out: `web.rs` routes, checks access and sets headers.

mod live;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use minijinja::{context, Environment};
use serde::Serialize;

use crate::artifacts;
use crate::jobs::{JobRecord, Jobs, ListQuery};
use crate::lifecycle::State;
use crate::service::PoolStatus;
use crate::snapshots::SnapshotStatus;
use crate::urlpath;

pub use live::events;

/// Jobs per page of the list.
pub const PAGE: usize = 50;
/// A list filtered on what no index holds (task, submitter) reads at most this many jobs.
pub const SCAN_LIMIT: usize = 20_000;
/// Artifacts listed on a job's page.
const MAX_LISTED: usize = 1000;
/// Jobs on an item's page.
const ITEM_JOBS: usize = 500;

pub const CSS: &str = include_str!("dashboard/static/dashboard.css");
pub const JS: &str = include_str!("dashboard/static/dashboard.js");

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("template: {0}")]
    Template(#[from] minijinja::Error),
    #[error("jobs: {0}")]
    Jobs(#[from] crate::jobs::JobsError),
}

pub struct Dashboard {
    env: Environment<'static>,
}

/// One row of a jobs table.
#[derive(Serialize)]
struct Row {
    id: String,
    short: String,
    created: String,
    state: &'static str,
    pool: String,
    item: String,
    item_url: String,
    task: String,
    submitter: String,
    took: String,
    results: Vec<crate::jobs::TaskResult>,
}

/// `2026-12-02 22:31:05` (UTC).
fn when(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

/// `850 ms`, `4.2 s`, `3 min 04 s`, `2 h 05 min`.
fn took(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {:02} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {:02} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// A serde value for a template.
fn v<T: Serialize>(t: &T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(t))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the list calls the task: the trigger's task name, else the repo's last component (and
/// the formula when it is not the default).
fn task_of(r: &JobRecord) -> String {
    if let Some(p) = r.provenance.as_ref().filter(|p| !p.task_name.is_empty()) {
        return p.task_name.clone();
    }
    let repo = r.request.repo.trim_end_matches('/');
    let base = repo.rsplit('/').next().unwrap_or(repo);
    let base = base.strip_suffix(".git").unwrap_or(base);
    if r.request.formula.is_empty() || r.request.formula == "runtask.yml" {
        base.to_string()
    } else {
        format!("{base} · {}", r.request.formula)
    }
}

fn row(r: &JobRecord) -> Row {
    let end = r
        .state
        .is_final()
        .then(|| r.events.last().map(|e| e.at_ms))
        .flatten()
        .unwrap_or_else(now_ms);
    Row {
        id: r.id.clone(),
        short: r.id.chars().take(8).collect(),
        created: when(r.created_ms),
        state: r.state.as_str(),
        pool: r.request.pool.clone(),
        item: r.request.item.clone(),
        item_url: urlpath::encode(&r.request.item),
        task: task_of(r),
        submitter: r.request.submitter.clone(),
        took: took(end - r.created_ms),
        results: r.results.clone(),
    }
}

/// The jobs list's filters, from its query string.
#[derive(Serialize, Default, Debug, PartialEq, Eq)]
pub struct Filters {
    state: String,
    pool: String,
    item: String,
    task: String,
    submitter: String,
    /// The previous page's last job (its seq): this page is older.
    after: Option<u64>,
}

impl Filters {
    pub fn from_query(q: Option<&str>) -> Filters {
        let mut f = Filters::default();
        for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            let v = v.trim().to_string();
            match &*k {
                "state" => f.state = v,
                "pool" => f.pool = v,
                "item" => f.item = v,
                "task" => f.task = v,
                "submitter" => f.submitter = v,
                "after" => f.after = v.parse().ok(),
                _ => {}
            }
        }
        f
    }

    fn matches(&self, r: &JobRecord) -> bool {
        let task = self.task.as_str();
        (task.is_empty()
            || r.request.repo.contains(task)
            || r.request.formula.contains(task)
            || r.request.namespace.contains(task)
            || r.provenance.as_ref().is_some_and(|p| p.task_name == task))
            && (self.submitter.is_empty() || r.request.submitter == self.submitter)
    }

    fn unindexed(&self) -> bool {
        !self.task.is_empty() || !self.submitter.is_empty()
    }

    /// This list's URL, continuing after `seq`.
    fn after_url(&self, seq: u64) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("state", &self.state),
            ("pool", &self.pool),
            ("item", &self.item),
            ("task", &self.task),
            ("submitter", &self.submitter),
        ] {
            if !v.is_empty() {
                s.append_pair(k, v);
            }
        }
        s.append_pair("after", &seq.to_string());
        format!("/?{}", s.finish())
    }
}

/// One page of the jobs list.
pub struct ListPage {
    pub jobs: Vec<JobRecord>,
    /// Where the next page starts, when more may remain.
    pub next: Option<u64>,
    /// The scan stopped at [`SCAN_LIMIT`]: how many jobs it read.
    pub stopped: Option<usize>,
}

pub fn list_page(jobs: &Jobs, f: &Filters) -> Result<ListPage, DashboardError> {
    let mut q = ListQuery {
        state: State::parse(&f.state),
        pool: (!f.pool.is_empty()).then(|| f.pool.clone()),
        item: (!f.item.is_empty()).then(|| f.item.clone()),
        after_seq: f.after,
        newest_first: true,
        limit: PAGE,
    };
    if !f.unindexed() {
        let page = jobs.list(&q)?;
        return Ok(ListPage {
            jobs: page.jobs,
            next: page.next,
            stopped: None,
        });
    }
    q.limit = 500;
    let (mut out, mut scanned) = (Vec::new(), 0);
    loop {
        let page = jobs.list(&q)?;
        scanned += page.jobs.len();
        for r in page.jobs {
            if f.matches(&r) {
                out.push(r);
                if out.len() == PAGE {
                    let next = out.last().map(|r| r.seq);
                    return Ok(ListPage {
                        jobs: out,
                        next,
                        stopped: None,
                    });
                }
            }
        }
        match page.next {
            Some(n) if scanned < SCAN_LIMIT => q.after_seq = Some(n),
            next => {
                let stopped = next.map(|_| scanned);
                return Ok(ListPage {
                    jobs: out,
                    next,
                    stopped,
                });
            }
        }
    }
}

impl Dashboard {
    pub fn new() -> Result<Dashboard, DashboardError> {
        let mut env = Environment::new();
        for (name, text) in [
            ("base.html", include_str!("dashboard/templates/base.html")),
            ("jobs.html", include_str!("dashboard/templates/jobs.html")),
            ("job.html", include_str!("dashboard/templates/job.html")),
            ("item.html", include_str!("dashboard/templates/item.html")),
            ("pools.html", include_str!("dashboard/templates/pools.html")),
            ("login.html", include_str!("dashboard/templates/login.html")),
        ] {
            env.add_template(name, text)?;
        }
        Ok(Dashboard { env })
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, DashboardError> {
        Ok(self.env.get_template(name)?.render(ctx)?)
    }

    /// `/`: newest first, filtered, paged.
    pub fn jobs(
        &self,
        jobs: &Jobs,
        pools: &[String],
        f: &Filters,
        who: &str,
    ) -> Result<String, DashboardError> {
        let ListPage {
            jobs: page,
            next,
            stopped,
        } = list_page(jobs, f)?;
        let filtered =
            f.unindexed() || !f.state.is_empty() || !f.pool.is_empty() || !f.item.is_empty();
        self.render(
            "jobs.html",
            context! {
                title => "Jobs",
                who,
                states => State::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                pools => v(&pools),
                f => v(f),
                filtered,
                stopped,
                jobs => v(&page.iter().map(row).collect::<Vec<_>>()),
                next => next.map(|n| f.after_url(n)),
            },
        )
    }

    /// `/jobs/<id>`: `None` when there is no such job.
    pub fn job(&self, jobs: &Jobs, id: &str, who: &str) -> Result<Option<String>, DashboardError> {
        let Ok(r) = jobs.get(id) else {
            return Ok(None);
        };
        let now = now_ms();
        let events: Vec<_> = r
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let next = r.events.get(i + 1).map(|n| n.at_ms);
                let took = match next {
                    Some(n) => took(n - e.at_ms),
                    None if e.state.is_final() => String::new(),
                    None => format!("{} so far", took(now - e.at_ms)),
                };
                context! { state => e.state.as_str(), at => when(e.at_ms), took, message => e.message.clone() }
            })
            .collect();
        let listed = if r.artifacts_pruned.is_some() {
            Vec::new()
        } else {
            artifacts::list(&jobs.artifacts_dir(id)).unwrap_or_default()
        };
        let artifacts: Vec<_> = listed
            .iter()
            .take(MAX_LISTED)
            .map(|a| context! { path => a.path.clone(), url => urlpath::encode(&a.path), size => a.size })
            .collect();
        let j = context! {
            id => r.id,
            state => r.state.as_str(),
            final => if r.state.is_final() { "true" } else { "false" },
            failure_reason => r.failure_reason,
            status_message => r.status_message,
            item_url => urlpath::encode(&r.request.item),
            item => r.request.item,
            item_type => r.request.item_type,
            arch => r.request.arch,
            repo => r.request.repo,
            git_ref => r.request.git_ref,
            formula => r.request.formula,
            pool => r.request.pool,
            submitter => if r.request.submitter.is_empty() { "unknown".to_string() } else { r.request.submitter.clone() },
            attempt => r.attempt,
            events,
            results => v(&r.results),
            artifacts,
            artifacts_pruned => r.artifacts_pruned.as_ref().map(|p| p.to_string()),
            log_pruned => r.artifacts_pruned.as_ref().map(|p| p.to_string()),
            provenance => v(&r.provenance),
            reporting => v(&r.reporting),
        };
        Ok(Some(self.render(
            "job.html",
            context! { title => format!("Job {}", &id[..8.min(id.len())]), who, j },
        )?))
    }

    /// `/items/<item>`: every job on one item, with its results.
    pub fn item(&self, jobs: &Jobs, item: &str, who: &str) -> Result<String, DashboardError> {
        let page = jobs.list(&ListQuery {
            state: None,
            pool: None,
            item: Some(item.to_string()),
            after_seq: None,
            newest_first: true,
            limit: ITEM_JOBS,
        })?;
        self.render(
            "item.html",
            context! {
                title => item,
                who,
                item,
                more => page.next.is_some(),
                jobs => v(&page.jobs.iter().map(row).collect::<Vec<_>>()),
            },
        )
    }

    /// `/pools`: each pool's capacity and use, and the image catalog.
    pub fn pools(
        &self,
        pools: Vec<PoolStatus>,
        images_dir: &Path,
        who: &str,
    ) -> Result<String, DashboardError> {
        let pools: Vec<_> = pools
            .into_iter()
            .map(|p| {
                context! {
                    name => p.name, image => p.cfg.image, libvirt_uri => p.cfg.libvirt_uri,
                    max_vms => p.cfg.max_vms, vcpus => p.cfg.vcpus, memory_mib => p.cfg.memory_mib,
                    running => p.running, queued => p.queued, ready => p.ready,
                    booting => p.booting, min_ready => p.cfg.min_ready, drained => p.cfg.drained,
                    snapshot => p.snapshot.as_str(),
                    snapshot_detail => match &p.snapshot {
                        SnapshotStatus::Ready { disk_bytes } => format!("{:.1} MiB", *disk_bytes as f64 / 1048576.0),
                        SnapshotStatus::Broken { reason } => reason.clone(),
                        _ => String::new(),
                    },
                }
            })
            .collect();
        let (images, images_error) = match minion_provisioning::image::list(images_dir) {
            Ok(list) => (
                list.into_iter()
                    .map(|i| {
                        let m = i.manifest;
                        context! {
                            name => m.name, arch => m.arch, format => m.format.as_str(),
                            size => m.file_size.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)),
                            built_at => m.built_at, recipe_hash => m.recipe_hash,
                        }
                    })
                    .collect::<Vec<_>>(),
                None,
            ),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        self.render(
            "pools.html",
            context! { title => "Pools and images", who, pools, images, images_error },
        )
    }

    pub fn login(&self, next: &str, error: Option<&str>) -> Result<String, DashboardError> {
        self.render(
            "login.html",
            context! { title => "Sign in", who => "", next, error },
        )
    }
}

/// Form fields of a POST body (`application/x-www-form-urlencoded`).
pub fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[cfg(test)]
#[path = "dashboard/tests.rs"]
mod tests;
