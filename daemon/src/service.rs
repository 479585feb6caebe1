//! The controller as one facade the API calls: submission, cancellation, reads, pool status,
//! and the daemon's own life (start with reconciliation, one dispatcher per pool, shutdown).
//! State changes go to `Jobs` as events; VMs come from `prebooted` or `runner`.
//!
//! ```text
//! submit → Jobs::create (QUEUED) → pool queue → dispatcher: a parked VM, or a slot
//!        → Jobs::apply(PickedUp) → runner::run_job (its own task)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use minion_proto::controller as pb;
use minion_provisioning::{accel::Accel, vm};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::catalog;
use crate::config::{Config, PoolConfig};
use crate::guestvm::VmContext;
use crate::instances::Instances;
use crate::jobs::convert::provenance_from_pb;
use crate::jobs::{Created, JobEvent, JobRecord, JobRequest, Jobs, JobsError, ListQuery, Page};
use crate::lifecycle::State;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::prebooted::{ParkedVm, Prebooted};
use crate::reaper::Reaper;
use crate::reporting::Reporter;
use crate::retention::Pruner;
use crate::runner::{self, Assigned, RunContext};
use crate::snapshots::Snapshots;
use crate::taskrepo::{self, RepoError};

/// Each pool's queue receiver, handed from [`Service::open`] to [`Service::start`].
pub type PoolQueues = Vec<(String, mpsc::UnboundedReceiver<String>)>;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("pool: no pool named `{name}` (pools: {known})")]
    UnknownPool { name: String, known: String },
    #[error("pool: none given and no default pool is configured (pools: {0})")]
    NoPool(String),
    #[error("arch: `{0}` is not supported (x86_64 only)")]
    Arch(String),
    #[error("timeout_seconds: {0} exceeds the maximum of 86400")]
    Timeout(u64),
    #[error("pool {pool}: {why} (once it is mended: `minion image validate`)")]
    Image {
        pool: String,
        #[source]
        why: minion_provisioning::import::Unusable,
    },
    #[error("keep_vm_as: {0}")]
    Keep(#[source] crate::instances::InstanceError),
    #[error("idempotency_key: {0} bytes; at most 512")]
    KeyTooLong(usize),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Jobs(#[from] JobsError),
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("job {id} is already {state}")]
    AlreadyFinal { id: String, state: State },
    #[error(transparent)]
    Jobs(#[from] JobsError),
}

#[derive(Debug, thiserror::Error)]
pub enum PoolAdminError {
    #[error("no pool `{name}` (pools: {known})")]
    Unknown { name: String, known: String },
    #[error("pool `{name}`: {source}")]
    Invalid {
        name: String,
        source: crate::pool::LimitError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Jobs(#[from] JobsError),
    #[error("the fetch cache: {0}")]
    Fetch(#[from] minion_fetch::FetchError),
    #[error("pools.{pool}.packages: {source}")]
    Packages {
        pool: String,
        source: minion_fetch::FetchError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Jobs(#[from] JobsError),
    #[error("reconcile task: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// A pool with what runs it.
struct PoolEntry {
    pool: Arc<Pool>,
    prebooted: Arc<Prebooted>,
    queue: mpsc::UnboundedSender<String>,
}

/// A pool as `ListPools` shows it.
pub struct PoolStatus {
    pub name: String,
    pub cfg: PoolConfig,
    pub running: u32,
    pub queued: u32,
    pub ready: u32,
    pub booting: u32,
    pub snapshot: crate::snapshots::SnapshotStatus,
    /// Its `[hosts]`, each usable for it or why not.
    pub hosts: Vec<(String, Result<(), crate::hosts::Unusable>)>,
}

/// The pools by name; a reload adds to it (entries are never removed while miniond runs).
type PoolMap = Arc<std::sync::RwLock<BTreeMap<String, Arc<PoolEntry>>>>;

pub struct Service {
    cfg: Config,
    jobs: Arc<Jobs>,
    pools: PoolMap,
    /// Where a submission without a pool goes (a reload may change it).
    default_pool: std::sync::RwLock<Option<String>>,
    run: Arc<RunContext>,
    /// The cancel switch of every job a dispatcher has taken and whose runner has not ended.
    cancels: Mutex<HashMap<String, CancellationToken>>,
    bus: Option<Arc<Bus>>,
    reaper: Arc<Reaper>,
    metrics: Arc<Metrics>,
    instances: Arc<Instances>,
}

impl Service {
    /// Opens the jobs database and builds the pools; the returned receivers feed
    /// [`Service::start`].
    pub fn open(cfg: Config, accel: Accel) -> Result<(Arc<Service>, PoolQueues), OpenError> {
        let jobs = Arc::new(Jobs::open(&cfg.state_dir, cfg.retry_budget)?);
        let vms = VmContext::new(&cfg, accel);
        let snapshots = Snapshots::new(&vms);
        let mut map = BTreeMap::new();
        let mut rxs = Vec::new();
        for (name, pc) in &cfg.pools {
            let (entry, rx) = new_entry(name, pc, &cfg.state_dir, &snapshots)?;
            map.insert(name.clone(), entry);
            rxs.push((name.clone(), rx));
        }
        let pools: PoolMap = Arc::new(std::sync::RwLock::new(map));
        let ready_of = pools.clone();
        let metrics = Metrics::new(
            jobs.clone(),
            vms.live.clone(),
            vms.recorder.clone(),
            Box::new(move || {
                read(&ready_of)
                    .iter()
                    .map(|(n, e)| (n.clone(), e.prebooted.ready()))
                    .collect()
            }),
        );
        let recorder = vms.recorder.clone();
        jobs.on_final(Box::new(move |r| recorder.job_ended(r)));
        let bus = cfg.bus.as_ref().map(Bus::new);
        if let Some(b) = &bus {
            let b = b.clone();
            jobs.on_final(Box::new(move |r| b.job_finished(r)));
        }
        let reporter = cfg
            .reporting
            .as_ref()
            .map(|r| Reporter::new(&jobs, r, bus.clone(), vms.recorder.clone()));
        let fetch = crate::fetching::open(cfg.sources(), &cfg.state_dir, &cfg.fetch)?;
        let instances = Instances::new(&cfg.instances, &vms, &snapshots, jobs.instances_tree()?);
        let reaper = Arc::new(Reaper::new(
            vms.live.clone(),
            cfg.state_dir.clone(),
            vms.hosts.clone(),
            std::time::Duration::from_secs(cfg.reap_interval_secs.max(1)),
            vms.recorder.clone(),
        ));
        let run = Arc::new(RunContext {
            jobs: jobs.clone(),
            vms,
            reporter,
            fetch,
            snapshots,
            instances: instances.clone(),
        });
        Ok((
            Arc::new(Service {
                default_pool: std::sync::RwLock::new(cfg.default_pool_name().map(String::from)),
                cfg,
                jobs,
                pools,
                run,
                bus,
                reaper,
                metrics,
                instances,
                cancels: Mutex::new(HashMap::new()),
            }),
            rxs,
        ))
    }

    pub fn jobs(&self) -> &Arc<Jobs> {
        &self.jobs
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn instances(&self) -> &Arc<Instances> {
        &self.instances
    }

    /// Imports a disk into the catalog and validates it ([`catalog::import`]).
    pub async fn import_image<S>(
        &self,
        header: catalog::ImportHeader,
        data: S,
    ) -> Result<
        (
            minion_provisioning::Image,
            minion_provisioning::import::Validation,
        ),
        catalog::CatalogError,
    >
    where
        S: futures::Stream<Item = std::io::Result<Vec<u8>>> + Unpin,
    {
        let keep_free = self.cfg.keep_free_mib.saturating_mul(1024 * 1024);
        catalog::import(
            &self.cfg.images_dir,
            keep_free,
            &self.instances,
            header,
            data,
        )
        .await
    }

    /// Validates catalog image `name` ([`catalog::validate`]).
    pub async fn validate_image(
        &self,
        name: &str,
    ) -> Result<
        (
            minion_provisioning::Image,
            minion_provisioning::import::Validation,
        ),
        catalog::CatalogError,
    > {
        let image = minion_provisioning::image::load(&self.cfg.images_dir, name)?;
        let v = catalog::validate(&image, &self.instances).await?;
        Ok((image, v))
    }

    /// Removes an image no pool names and no instance runs on.
    pub fn remove_image(&self, name: &str) -> Result<PathBuf, catalog::CatalogError> {
        let mut users: Vec<String> = self
            .entries()
            .iter()
            .filter(|e| e.pool.cfg().image == name)
            .map(|e| format!("pool {}", e.pool.name))
            .collect();
        users.extend(self.instances.on_image(name));
        catalog::remove(&self.cfg.images_dir, name, &users)
    }

    pub fn images_dir(&self) -> &Path {
        &self.cfg.images_dir
    }

    /// Reconciles, then starts one dispatcher per pool (queued jobs first, in submission order)
    /// and the pre-booting.
    pub async fn start(self: &Arc<Self>, rxs: PoolQueues) -> Result<(), StartError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || s.reconcile())
            .await
            .map_err(StartError::Task)??;
        for (name, rx) in rxs {
            let s = self.clone();
            tokio::spawn(async move { s.dispatch(name, rx).await });
        }
        for p in self.entries() {
            p.prebooted.start();
        }
        let (snapshots, pools) = (
            self.run.snapshots.clone(),
            self.entries()
                .iter()
                .map(|e| e.pool.clone())
                .collect::<Vec<_>>(),
        );
        // Off the start path: the first call to libvirt may wait seconds for its probing.
        tokio::spawn(async move { snapshots.start(&pools).await });
        if let Some(b) = &self.bus {
            tokio::spawn(b.clone().run());
        }
        if let Some(r) = &self.run.reporter {
            // Results an earlier run could not post are posted from here on.
            tokio::spawn(r.clone().run());
        }
        let pruner = Pruner {
            jobs: self.jobs.clone(),
            policy: self.cfg.retention.clone(),
        };
        tokio::spawn(Arc::new(pruner).run());
        tokio::spawn(self.reaper.clone().run());
        // `[hosts]`: each connected, reaped and checked, then watched (module hosts).
        let (hosts, live) = (self.run.vms.hosts.clone(), self.run.vms.live.clone());
        let live: crate::hosts::IsLive = Arc::new(move |id: &str| live.contains(id));
        let (pools, images_dir) = (self.pools.clone(), self.cfg.images_dir.clone());
        let images: crate::hosts::ImagesOf = Arc::new(move |host: &str| {
            read(&pools)
                .values()
                .filter(|e| e.pool.cfg().hosts.iter().any(|h| h == host))
                .filter_map(|e| {
                    minion_provisioning::image::load(&images_dir, &e.pool.cfg().image).ok()
                })
                .collect()
        });
        tokio::spawn(hosts.monitor(live, images, self.snapshot_keys(), CancellationToken::new()));
        Ok(())
    }

    /// Running jobs are abandoned, not left running: no job changes state any more, pre-booted
    /// VMs are destroyed, then every VM of this daemon. The next start marks the abandoned jobs
    /// FAILED (daemon restart) and requeues them.
    pub async fn shutdown(self: &Arc<Self>) {
        self.jobs.begin_shutdown();
        self.instances.shutdown().await;
        self.run.snapshots.shutdown().await;
        for p in self.entries() {
            p.prebooted.shutdown().await;
        }
        let s = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || s.destroy_vms()).await {
            tracing::error!("destroying VMs at shutdown: {e}");
        }
    }

    /// After a (re)start nothing runs: in-flight jobs are interrupted (FAILED, requeued within
    /// the budget), and every VM this daemon left is destroyed.
    fn reconcile(&self) -> Result<(), JobsError> {
        self.jobs.interrupt_in_flight()?;
        self.destroy_vms();
        self.instances.start();
        Ok(())
    }

    /// Destroys every domain marked as this daemon's (its jobs' and its pre-booted VMs') and
    /// deletes its volumes on every host that answers, then deletes every per-VM dir. Used at start (nothing is
    /// live yet) and at shutdown (what is live is abandoned). Blocks.
    fn destroy_vms(&self) {
        self.run.vms.hosts.reap_all(&|_| false);
        let report = vm::sweep_dirs(&self.cfg.state_dir, &|_| false);
        for d in report.removed_dirs {
            tracing::info!("reconcile: removed {}", d.display());
        }
        for e in report.errors {
            tracing::error!("reconcile: {e}");
        }
    }

    /// The snapshots a host's pools restore from now (the others there are swept).
    fn snapshot_keys(&self) -> crate::hosts::SnapshotKeys {
        let (snapshots, pools) = (self.run.snapshots.clone(), self.pools.clone());
        Arc::new(
            move |host: &str, uri: &str, hv: &minion_provisioning::Hypervisor| {
                let pools: Vec<Arc<Pool>> = read(&pools).values().map(|e| e.pool.clone()).collect();
                snapshots.keys_on_host(&pools, host, uri, hv)
            },
        )
    }

    fn cancels_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.cancels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// FIFO per pool: take the next queued job, take a parked VM or wait for a VM slot, hand
    /// both to a runner.
    async fn dispatch(self: Arc<Self>, name: String, mut rx: mpsc::UnboundedReceiver<String>) {
        let Some(entry) = self.entry(&name) else {
            return;
        };
        match self.jobs.queued_in(&name) {
            Ok(ids) => {
                for id in ids {
                    let _ = entry.queue.send(id);
                }
            }
            Err(e) => tracing::error!(pool = %name, "requeueing queued jobs: {e}"),
        }
        while let Some(id) = rx.recv().await {
            // Drained: the job waits at the head of the queue (FIFO kept) until undrained.
            if entry.pool.drained() {
                tracing::info!(pool = %name, "drained: jobs are queued, none is started");
                entry.pool.undrained().await;
            }
            // Cancelled while queued: skip without taking a VM.
            if !self.jobs.is_queued(&id) {
                continue;
            }
            let Some(vm) = obtain_vm(&entry).await else {
                return;
            };
            let token = CancellationToken::new();
            self.cancels_lock().insert(id.clone(), token.clone());
            let vm_id = match &vm {
                Assigned::Parked(p) => Some(p.vm.id.clone()),
                Assigned::Cold(_) => None,
            };
            let picked = self.jobs.apply(&id, JobEvent::PickedUp { vm_id });
            if picked.is_err() || token.is_cancelled() {
                // Cancelled while waiting for a VM (or the daemon stops): a parked VM goes back
                // to the pool untouched.
                self.cancels_lock().remove(&id);
                match picked {
                    Ok(_) => {
                        let ev = JobEvent::Cancelled {
                            reason: "cancelled".into(),
                        };
                        if let Err(e) = self.jobs.apply(&id, ev) {
                            tracing::error!(job = %id, "{e}");
                        }
                    }
                    Err(e) => tracing::debug!(job = %id, "not started: {e}"),
                }
                give_back(&entry, vm);
                continue;
            }
            if let Assigned::Parked(p) = &vm {
                tracing::info!(job = %id, vm = %p.vm.id, "took pre-booted VM");
            }
            let running = entry.pool.run_one();
            let (s, pool, prebooted) = (self.clone(), entry.pool.clone(), entry.prebooted.clone());
            let queue = entry.queue.clone();
            tokio::spawn(async move {
                runner::run_job(&s.run, &pool, &id, token, vm).await;
                s.cancels_lock().remove(&id);
                drop(running);
                prebooted.slot_freed();
                // Requeued (its host was lost before it ran): back in line.
                if s.jobs.is_queued(&id) {
                    let _ = queue.send(id);
                }
            });
        }
    }

    /// Validates, fetches the task tree and queues the job. On any error nothing is left. A
    /// taken idempotency key returns the job that took it (`Created::Existing`), and nothing is
    /// fetched or queued.
    /// `submitter` is the caller's id (`uid:N`, `token:NAME`), kept on the job.
    pub async fn submit(
        &self,
        req: pb::SubmitJobRequest,
        submitter: String,
    ) -> Result<Created, SubmitError> {
        let t0 = std::time::Instant::now();
        if req.idempotency_key.len() > 512 {
            return Err(SubmitError::KeyTooLong(req.idempotency_key.len()));
        }
        if let Some(existing) = self.jobs.by_key(&req.idempotency_key)? {
            return Ok(Created::Existing(existing));
        }
        let known = || self.pool_names();
        let pool_name = if req.pool.is_empty() {
            self.default_pool
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .ok_or_else(|| SubmitError::NoPool(known()))?
        } else {
            req.pool.clone()
        };
        let entry = self
            .entry(&pool_name)
            .ok_or_else(|| SubmitError::UnknownPool {
                name: pool_name.clone(),
                known: known(),
            })?;
        taskrepo::check_item(&req.item, &req.item_type)?;
        let image_name = entry.pool.cfg().image.clone();
        let images_dir = self.cfg.images_dir.clone();
        // An image that failed its validation (or is not validated yet) runs no job.
        if let Ok(image) = minion_provisioning::image::load(&images_dir, &image_name) {
            minion_provisioning::import::usable(&image).map_err(|why| SubmitError::Image {
                pool: pool_name.clone(),
                why,
            })?;
        }
        let arch = if req.arch.is_empty() {
            "x86_64".to_string()
        } else {
            req.arch.clone()
        };
        if arch != "x86_64" && arch != "noarch" {
            return Err(SubmitError::Arch(arch));
        }
        if req.timeout_seconds > 86_400 {
            return Err(SubmitError::Timeout(req.timeout_seconds));
        }
        let timeout_seconds = if req.timeout_seconds == 0 {
            entry.pool.cfg().default_timeout_seconds
        } else {
            req.timeout_seconds
        };

        let id = uuid::Uuid::new_v4().to_string();
        let tree = self.jobs.task_dir(&id);
        if let Some(parent) = tree.parent() {
            std::fs::create_dir_all(parent).map_err(|source| RepoError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        if !req.keep_vm_as.is_empty() {
            self.instances
                .check_keep(&req.keep_vm_as)
                .map_err(SubmitError::Keep)?;
        }
        if req.task_tar.is_empty() {
            taskrepo::fetch(
                &req.repo,
                &req.git_ref,
                &req.formula,
                &tree,
                &self.cfg.submissions,
            )
            .await?;
        } else {
            let label = if req.repo.is_empty() {
                "task_tar"
            } else {
                req.repo.as_str()
            };
            taskrepo::unpack_upload(label, req.task_tar, &tree, &self.cfg.submissions).await?;
        }
        let formula = {
            let tree = tree.clone();
            let (f, r) = (req.formula.clone(), req.repo.clone());
            tokio::task::spawn_blocking(move || taskrepo::resolve_and_validate(&tree, &f, &r))
                .await
                .unwrap_or_else(|e| Err(RepoError::FormulaInvalid(format!("validator: {e}"))))
        };
        let (formula, namespace) = match formula {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tree);
                return Err(e.into());
            }
        };
        let request = JobRequest {
            pool: pool_name.clone(),
            repo: req.repo,
            git_ref: req.git_ref,
            formula,
            namespace,
            item: req.item,
            item_type: req.item_type,
            arch,
            timeout_seconds,
            args: req.args.into_iter().collect(),
            submitter,
            keep_vm_as: req.keep_vm_as,
        };
        let provenance = req.provenance.as_ref().map(provenance_from_pb);
        let rec = match self
            .jobs
            .create(&id, request, &req.idempotency_key, provenance)
        {
            Ok(Created::New(r)) => r,
            // The same key was submitted meanwhile: that job stands, this copy goes.
            Ok(existing @ Created::Existing(_)) => {
                let _ = std::fs::remove_dir_all(&tree);
                return Ok(existing);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tree);
                return Err(e.into());
            }
        };
        tracing::info!(
            job = %id,
            pool = %pool_name,
            item = %rec.request.item,
            submit_ms = t0.elapsed().as_secs_f64() * 1000.0,
            "queued"
        );
        // The dispatcher lives as long as the daemon: a send cannot fail while we run.
        let _ = entry.queue.send(id);
        Ok(Created::New(rec))
    }

    /// Cancels a job in any state: a queued one directly, a picked-up one through its runner.
    pub fn cancel(&self, id: &str) -> Result<JobRecord, CancelError> {
        let rec = self.jobs.get(id)?;
        if rec.state.is_final() {
            return Err(CancelError::AlreadyFinal {
                id: id.to_string(),
                state: rec.state,
            });
        }
        if let Some(token) = self.cancels_lock().get(id) {
            token.cancel();
            return Ok(self.jobs.get(id)?);
        }
        let ev = JobEvent::Cancelled {
            reason: "cancelled while queued".into(),
        };
        match self.jobs.apply(id, ev) {
            Ok(r) => Ok(r),
            // Picked up between our read and the write: the runner owns it now.
            Err(e) if e.is_illegal_transition() => {
                if let Some(token) = self.cancels_lock().get(id) {
                    token.cancel();
                }
                Ok(self.jobs.get(id)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn get(&self, id: &str) -> Result<JobRecord, JobsError> {
        self.jobs.get(id)
    }

    pub fn list(&self, q: &ListQuery) -> Result<Page, JobsError> {
        self.jobs.list(q)
    }

    /// Job records moved aside because they did not decode.
    pub fn quarantined(&self) -> usize {
        self.jobs.quarantined()
    }

    /// Applies a re-read config file's pools (SIGHUP): a new pool starts taking jobs, a changed
    /// one's settings apply to jobs that start from now (running jobs keep theirs), a pool gone
    /// from the file is drained (its queued jobs wait; a restart removes it), and `default_pool`
    /// follows the file. Nothing is applied when a new pool cannot be set up. Other settings
    /// take effect at the next start. Returns what changed, one line each.
    pub fn reload(self: &Arc<Self>, new: &Config) -> Result<Vec<String>, OpenError> {
        let mut added = Vec::new();
        for (name, pc) in &new.pools {
            if self.entry(name).is_none() {
                added.push((
                    name.clone(),
                    new_entry(name, pc, &self.cfg.state_dir, &self.run.snapshots)?,
                ));
            }
        }
        let mut changes = Vec::new();
        for e in self.entries() {
            let name = &e.pool.name;
            match new.pools.get(name) {
                Some(pc) => {
                    let now = PoolConfig {
                        max_vms: e.pool.max_vms(),
                        min_ready: e.pool.min_ready(),
                        drained: e.pool.drained(),
                        ..(*e.pool.cfg()).clone()
                    };
                    if now == *pc {
                        continue;
                    }
                    if now.packages != pc.packages {
                        changes.push(format!("pool {name}: packages change at the next start"));
                    }
                    if let Err(err) = e.pool.reload(pc) {
                        // Config::parse checks the same limits: only a bug gets here.
                        changes.push(format!("pool {name}: not changed: {err}"));
                        continue;
                    }
                    e.prebooted.trim();
                    changes.push(format!("pool {name}: changed"));
                }
                None if !e.pool.drained() => {
                    e.pool.set_drained(true);
                    e.prebooted.trim();
                    changes.push(format!(
                        "pool {name}: not in the file any more: drained (a restart removes it)"
                    ));
                }
                None => {}
            }
        }
        for (name, (entry, rx)) in added {
            self.pools
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.clone(), entry.clone());
            let s = self.clone();
            let n = name.clone();
            tokio::spawn(async move { s.dispatch(n, rx).await });
            entry.prebooted.start();
            changes.push(format!("pool {name}: added"));
        }
        let default = new.default_pool_name().map(String::from);
        let mut d = self.default_pool.write().unwrap_or_else(|p| p.into_inner());
        if *d != default {
            changes.push(format!(
                "default pool: {}",
                default.as_deref().unwrap_or("none")
            ));
            *d = default;
        }
        Ok(changes)
    }

    fn entry(&self, name: &str) -> Option<Arc<PoolEntry>> {
        read(&self.pools).get(name).cloned()
    }

    fn entries(&self) -> Vec<Arc<PoolEntry>> {
        read(&self.pools).values().cloned().collect()
    }

    fn pool_names(&self) -> String {
        read(&self.pools)
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn pool_entry(&self, name: &str) -> Result<Arc<PoolEntry>, PoolAdminError> {
        self.entry(name).ok_or_else(|| PoolAdminError::Unknown {
            name: name.to_string(),
            known: self.pool_names(),
        })
    }

    /// Drains (`true`) or undrains a pool: while drained no job starts (queued ones wait in
    /// order, running ones finish) and its parked VMs are destroyed. `by` is who asked (logged).
    pub fn drain_pool(
        &self,
        name: &str,
        drain: bool,
        by: &str,
    ) -> Result<PoolStatus, PoolAdminError> {
        let e = self.pool_entry(name)?;
        e.pool.set_drained(drain);
        e.prebooted.trim();
        tracing::info!(pool = %name, caller = %by, "admin: pool {}", if drain { "drained" } else { "undrained" });
        self.pool_status(name)
    }

    /// Changes a pool's `max_vms` / `min_ready` while it runs. `by` is who asked (logged).
    pub fn set_pool(
        &self,
        name: &str,
        max_vms: Option<u32>,
        min_ready: Option<u32>,
        by: &str,
    ) -> Result<PoolStatus, PoolAdminError> {
        let e = self.pool_entry(name)?;
        e.pool
            .set_limits(max_vms, min_ready)
            .map_err(|source| PoolAdminError::Invalid {
                name: name.to_string(),
                source,
            })?;
        e.prebooted.trim();
        tracing::info!(
            pool = %name,
            caller = %by,
            max_vms = e.pool.max_vms(),
            min_ready = e.pool.min_ready(),
            "admin: pool limits set"
        );
        self.pool_status(name)
    }

    fn pool_status(&self, name: &str) -> Result<PoolStatus, PoolAdminError> {
        self.pools()
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| PoolAdminError::Unknown {
                name: name.to_string(),
                known: String::new(),
            })
    }

    pub fn pools(&self) -> Vec<PoolStatus> {
        self.entries()
            .iter()
            .map(|e| PoolStatus {
                name: e.pool.name.clone(),
                cfg: PoolConfig {
                    max_vms: e.pool.max_vms(),
                    min_ready: e.pool.min_ready(),
                    drained: e.pool.drained(),
                    ..(*e.pool.cfg()).clone()
                },
                running: e.pool.running(),
                queued: self
                    .jobs
                    .queued_in(&e.pool.name)
                    .map(|v| v.len() as u32)
                    .unwrap_or(0),
                ready: e.prebooted.ready(),
                booting: e.prebooted.booting(),
                snapshot: self.run.snapshots.status(&e.pool),
                hosts: {
                    let cfg = e.pool.cfg();
                    let image =
                        minion_provisioning::image::load(&self.cfg.images_dir, &cfg.image).ok();
                    self.run.vms.hosts.usable_for(&cfg.hosts, image.as_ref())
                },
            })
            .collect()
    }

    /// Every `[hosts]` host, with the pools that use it.
    pub fn hosts(&self) -> Vec<(crate::hosts::HostStatus, Vec<String>)> {
        let entries = self.entries();
        self.run
            .vms
            .hosts
            .status()
            .into_iter()
            .map(|h| {
                let pools = entries
                    .iter()
                    .filter(|e| e.pool.cfg().hosts.contains(&h.name))
                    .map(|e| e.pool.name.clone())
                    .collect();
                (h, pools)
            })
            .collect()
    }

    /// Drains or undrains a `[hosts]` host. `by` is who asked (logged).
    pub fn drain_host(
        &self,
        name: &str,
        drain: bool,
        by: &str,
    ) -> Result<(crate::hosts::HostStatus, Vec<String>), HostAdminError> {
        if !self.run.vms.hosts.set_drained(name, drain) {
            return Err(HostAdminError::NoSuchHost(name.to_string()));
        }
        tracing::info!(host = %name, caller = %by, "admin: host {}", if drain { "drained" } else { "undrained" });
        if drain {
            // Running jobs finish there; idle VMs would only keep the host from emptying.
            for e in self.entries() {
                e.prebooted.leave_host(name);
            }
        }
        self.hosts()
            .into_iter()
            .find(|(h, _)| h.name == name)
            .ok_or_else(|| HostAdminError::NoSuchHost(name.to_string()))
    }

    /// Pushes image `image` to `names` (every host when `all`): what each lacks is uploaded,
    /// then the whole image is read back and checked. One result per host.
    pub async fn push_image(
        &self,
        image: &str,
        names: &[String],
        all: bool,
        by: &str,
    ) -> Result<
        Vec<(
            String,
            Result<(), crate::hosts::Unusable>,
            std::time::Duration,
        )>,
        HostAdminError,
    > {
        let hosts = &self.run.vms.hosts;
        let targets: Vec<_> = if all {
            hosts.all()
        } else {
            if names.is_empty() {
                return Err(HostAdminError::Invalid("name a host, or --all".into()));
            }
            names
                .iter()
                .map(|n| {
                    hosts
                        .get(n)
                        .ok_or_else(|| HostAdminError::NoSuchHost(n.clone()))
                })
                .collect::<Result<_, _>>()?
        };
        let (dir, name) = (self.cfg.images_dir.clone(), image.to_string());
        let img =
            tokio::task::spawn_blocking(move || minion_provisioning::image::load(&dir, &name))
                .await
                .map_err(|e| HostAdminError::Invalid(e.to_string()))?
                .map_err(|e| HostAdminError::Invalid(e.to_string()))?;
        tracing::info!(image = %image, caller = %by, hosts = targets.len(), "admin: image push");
        let pushes = targets.iter().map(|h| {
            let img = img.clone();
            async move {
                let t = std::time::Instant::now();
                let r = hosts.push(h, &img).await.map(|_| ());
                (h.name.clone(), r, t.elapsed())
            }
        });
        Ok(futures::future::join_all(pushes).await)
    }
}

/// What a host admin call can refuse.
#[derive(Debug, thiserror::Error)]
pub enum HostAdminError {
    #[error("no host {0} in [hosts]")]
    NoSuchHost(String),
    #[error("{0}")]
    Invalid(String),
}

fn read(pools: &PoolMap) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<PoolEntry>>> {
    pools.read().unwrap_or_else(|p| p.into_inner())
}

/// A pool's runtime parts, and the receiver its dispatcher takes jobs from.
fn new_entry(
    name: &str,
    pc: &PoolConfig,
    state_dir: &Path,
    snapshots: &Arc<Snapshots>,
) -> Result<(Arc<PoolEntry>, mpsc::UnboundedReceiver<String>), OpenError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let packages = pc
        .packages
        .as_deref()
        .map(|dir| crate::fetching::open_packages(name, dir, state_dir))
        .transpose()
        .map_err(|source| OpenError::Packages {
            pool: name.to_string(),
            source,
        })?;
    let pool = Arc::new(Pool::new(name, pc, packages));
    let prebooted = Prebooted::new(&pool, snapshots);
    Ok((
        Arc::new(PoolEntry {
            pool,
            prebooted,
            queue: tx,
        }),
        rx,
    ))
}

/// A parked pre-booted VM if there is one, else a slot for a new VM; waits for whichever comes
/// first. `None` once the pool's slots are closed.
async fn obtain_vm(entry: &PoolEntry) -> Option<Assigned> {
    loop {
        if let Some(p) = entry.prebooted.take().await {
            return Some(Assigned::Parked(Box::new(p)));
        }
        tokio::select! {
            biased;
            _ = entry.prebooted.parked_changed.notified() => continue,
            permit = entry.pool.slots.clone().acquire_owned() => {
                return permit.ok().map(Assigned::Cold)
            }
        }
    }
}

/// A VM obtained for a job that did not start: a parked one is parked again, a slot freed.
fn give_back(entry: &PoolEntry, vm: Assigned) {
    match vm {
        Assigned::Parked(p) => {
            let p: ParkedVm = *p;
            entry.prebooted.park(p)
        }
        Assigned::Cold(permit) => {
            drop(permit);
            entry.prebooted.slot_freed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[tokio::test]
    async fn many_jobs_that_end_leave_no_entry_in_any_map_keyed_by_job_id() {
        let state = tempfile::tempdir().expect("state");
        let images = tempfile::tempdir().expect("no images: every job fails at provisioning");
        let mut cfg = config(state.path());
        cfg.images_dir = images.path().to_path_buf();
        let (s, rxs) = Service::open(cfg, tcg()).expect("open");
        s.start(rxs).await.expect("start");
        let r = repo();
        let mut ids = Vec::new();
        for _ in 0..60 {
            match s
                .submit(request(r.path()), "uid:0".into())
                .await
                .expect("submit")
            {
                Created::New(j) => ids.push(j.id),
                Created::Existing(_) => panic!("no key was given"),
            }
        }
        // Half of them are watched (and the watchers stay until the end).
        let mut watchers = Vec::new();
        for id in ids.iter().step_by(2) {
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            let (jobs, rec) = (s.jobs.clone(), s.get(id).expect("job"));
            watchers.push(tokio::spawn(async move {
                crate::watch::watch(&jobs, rec, true, tx).await;
            }));
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
        }
        for id in &ids {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !s.get(id).expect("job").state.is_final() {
                assert!(std::time::Instant::now() < deadline, "job {id} never ended");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert_eq!(s.get(id).expect("job").state, State::Failed);
        }
        for w in watchers {
            w.await.expect("watcher ends with its job");
        }
        // Runners remove their entries just after the final state: give them a moment.
        for _ in 0..100 {
            if s.cancels_lock().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(s.cancels_lock().len(), 0, "cancel switches");
        assert_eq!(s.jobs.watched(), 0, "watch channels");
        assert!(
            ids.iter().all(|id| !s.run.vms.live.contains(id)),
            "live VM claims"
        );
    }

    fn config(state: &Path) -> Config {
        Config::parse(
            Path::new("test.toml"),
            &format!(
                "state_dir = {:?}\n[submissions]\nlocal_repo_roots = [{:?}]\n\
                 [pools.p]\nimage = \"minimal\"\nlibvirt_uri = \"test:///default\"\nmax_vms = 1\n",
                state,
                std::env::temp_dir()
            ),
        )
        .expect("config")
    }

    fn tcg() -> Accel {
        Accel::Tcg {
            reason: "test".into(),
        }
    }

    fn repo() -> tempfile::TempDir {
        let r = tempfile::tempdir().expect("repo");
        std::fs::write(
            r.path().join("runtask.yml"),
            "name: t\nactions:\n  - dummy: {result: PASSED}\n",
        )
        .expect("formula");
        r
    }

    fn request(repo: &Path) -> pb::SubmitJobRequest {
        pb::SubmitJobRequest {
            repo: repo.display().to_string(),
            item: "foo-1.0-1.fc40".into(),
            item_type: "koji_build".into(),
            ..pb::SubmitJobRequest::default()
        }
    }

    #[tokio::test]
    async fn bad_submissions_create_nothing() {
        let state = tempfile::tempdir().expect("state");
        let (s, _rxs) = Service::open(config(state.path()), tcg()).expect("open");
        let r = repo();
        let cases: Vec<(pb::SubmitJobRequest, &str)> = vec![
            (
                pb::SubmitJobRequest {
                    pool: "nope".into(),
                    ..request(r.path())
                },
                "pool: no pool named `nope` (pools: p)",
            ),
            (
                pb::SubmitJobRequest {
                    formula: "missing.yml".into(),
                    ..request(r.path())
                },
                "formula: `missing.yml` not found in repo",
            ),
            (
                pb::SubmitJobRequest {
                    item_type: "rpm".into(),
                    ..request(r.path())
                },
                "item_type: `rpm` is not one of",
            ),
            (
                pb::SubmitJobRequest {
                    arch: "s390x".into(),
                    ..request(r.path())
                },
                "arch: `s390x` is not supported",
            ),
            (
                // Under the roots, but not a git repository.
                pb::SubmitJobRequest {
                    repo: format!("file://{}", r.path().display()),
                    ..request(r.path())
                },
                "cannot fetch",
            ),
            (
                pb::SubmitJobRequest {
                    repo: "file:///nonexistent/x.git".into(),
                    ..request(r.path())
                },
                "no such directory on the daemon's host",
            ),
            (
                pb::SubmitJobRequest {
                    repo: "/usr".into(),
                    ..request(r.path())
                },
                "local task repos are accepted only under the configured roots",
            ),
        ];
        for (req, want) in cases {
            let e = s.submit(req, "uid:0".into()).await.expect_err(want);
            assert!(e.to_string().contains(want), "{e}");
        }
        let all = s
            .list(&ListQuery {
                limit: 100,
                ..ListQuery::default()
            })
            .expect("list");
        assert!(all.jobs.is_empty());
        let leftovers: Vec<_> = std::fs::read_dir(state.path().join("tasks"))
            .map(|r| r.flatten().collect())
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn queued_job_cancels_directly_and_defaults_apply() {
        let state = tempfile::tempdir().expect("state");
        let (s, _rxs) = Service::open(config(state.path()), tcg()).expect("open");
        let r = repo();
        let Created::New(rec) = s
            .submit(request(r.path()), "uid:0".into())
            .await
            .expect("submit")
        else {
            panic!("new job");
        };
        assert_eq!(rec.state, State::Queued);
        assert_eq!(rec.request.pool, "p", "the only pool is the default");
        assert_eq!(rec.request.timeout_seconds, 1800, "the pool's default");
        assert_eq!(rec.request.arch, "x86_64");
        assert_eq!(rec.request.formula, "runtask.yml");
        assert!(s.jobs().task_dir(&rec.id).join("runtask.yml").is_file());
        let c = s.cancel(&rec.id).expect("cancel");
        assert_eq!(c.state, State::Cancelled);
        assert!(!s.jobs().task_dir(&rec.id).exists());
        let again = s.cancel(&rec.id).expect_err("final");
        assert_eq!(
            again.to_string(),
            format!("job {} is already CANCELLED", rec.id)
        );
    }

    #[tokio::test]
    async fn a_resubmitted_idempotency_key_makes_no_second_job() {
        let state = tempfile::tempdir().expect("state");
        let (s, _rxs) = Service::open(config(state.path()), tcg()).expect("open");
        let r = repo();
        let keyed = || pb::SubmitJobRequest {
            idempotency_key: "m1/rpmlint/x86_64".into(),
            provenance: Some(pb::Provenance {
                message_id: "m1".into(),
                topic: "org.fedoraproject.prod.buildsys.build.state.change".into(),
                rule_index: 0,
                task_name: "rpmlint".into(),
            }),
            ..request(r.path())
        };
        let Created::New(first) = s.submit(keyed(), "uid:0".into()).await.expect("first") else {
            panic!("new job");
        };
        assert_eq!(first.provenance.as_ref().map(|p| p.rule_index), Some(0));
        match s.submit(keyed(), "uid:0".into()).await.expect("again") {
            Created::Existing(j) => assert_eq!(j.id, first.id),
            Created::New(j) => panic!("second job {}", j.id),
        }
        let tasks: Vec<_> = std::fs::read_dir(state.path().join("tasks"))
            .expect("tasks")
            .flatten()
            .collect();
        assert_eq!(tasks.len(), 1, "the repeat fetched nothing");
        let long = pb::SubmitJobRequest {
            idempotency_key: "k".repeat(513),
            ..request(r.path())
        };
        let e = s.submit(long, "uid:0".into()).await.expect_err("too long");
        assert_eq!(e.to_string(), "idempotency_key: 513 bytes; at most 512");
    }

    #[tokio::test]
    async fn restart_reconciles_leftover_vm_dirs() {
        let state = tempfile::tempdir().expect("state");
        let r = repo();
        let id = {
            let (s, _rxs) = Service::open(config(state.path()), tcg()).expect("open");
            let Created::New(rec) = s
                .submit(request(r.path()), "uid:0".into())
                .await
                .expect("submit")
            else {
                panic!("new job");
            };
            s.jobs()
                .apply(&rec.id, JobEvent::PickedUp { vm_id: None })
                .expect("picked up");
            rec.id
        };
        // A leftover per-VM dir of that job must go too.
        let vmdir = state.path().join("vms").join(&id);
        std::fs::create_dir_all(&vmdir).expect("vm dir");
        let (s, _rxs) = Service::open(config(state.path()), tcg()).expect("reopen");
        s.reconcile().expect("reconcile");
        assert_eq!(s.get(&id).expect("job").state, State::Queued);
        assert!(!vmdir.exists());
    }
}
