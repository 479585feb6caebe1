//! The controller's core: pools and their FIFO queues, submission, cancellation, and the
//! reconciliation a restart starts with. The per-job work is in `runner`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use minion_proto::controller as pb;
use minion_provisioning::{accel::Accel, vm, vmfiles, Hypervisor};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PoolConfig};
use crate::hub::Hub;
use crate::lifecycle::State;
use crate::prebooted::{self, ParkedVm, Prebooted};
use crate::store::{JobRecord, JobRequest, Store, StoreError};
use crate::taskrepo::{self, RepoError};
use crate::{convert, runner};

/// The VM a picked-up job runs on.
pub enum Vm {
    /// A slot to provision and boot a VM in.
    Cold(OwnedSemaphorePermit),
    /// A pre-booted VM taken from the pool (with its slot).
    Parked(Box<ParkedVm>),
}

/// Each pool's queue receiver, handed from [`Daemon::open`] to [`Daemon::start`].
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
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("job {id} is already {state}")]
    AlreadyFinal { id: String, state: State },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One pool at run time.
pub struct Pool {
    pub name: String,
    pub cfg: PoolConfig,
    queue: mpsc::UnboundedSender<String>,
    /// One permit per VM allowed alive (a parked pre-booted VM holds one too); held from pickup
    /// (or boot) until the VM is torn down.
    pub slots: Arc<Semaphore>,
    pub running: AtomicU32,
    pub prebooted: Prebooted,
    hv: Mutex<Option<Arc<Hypervisor>>>,
}

impl Pool {
    /// The libvirt connection, (re)connected when missing or dead. Blocks.
    pub fn hypervisor(&self) -> Result<Arc<Hypervisor>, minion_provisioning::HypervisorError> {
        let mut g = self.hv.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = g.as_ref() {
            if h.is_alive() {
                return Ok(h.clone());
            }
        }
        let h = Arc::new(Hypervisor::connect(&self.cfg.libvirt_uri)?);
        *g = Some(h.clone());
        Ok(h)
    }
}

pub struct Daemon {
    pub cfg: Config,
    pub store: Store,
    pub hub: Hub,
    pub pools: BTreeMap<String, Arc<Pool>>,
    pub accel: Accel,
    cancels: Mutex<HashMap<String, CancellationToken>>,
    shutting_down: AtomicBool,
}

impl Daemon {
    /// From now on runners leave their jobs' states alone (the restart requeues them) and
    /// [`Daemon::destroy_vms`] owns the VMs.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Opens the store and builds the pools; the returned receivers feed [`Daemon::start`].
    pub fn open(cfg: Config, accel: Accel) -> Result<(Arc<Daemon>, PoolQueues), StoreError> {
        let store = Store::open(&cfg.state_dir.join("jobs.db"))?;
        let mut pools = BTreeMap::new();
        let mut rxs = Vec::new();
        for (name, pc) in &cfg.pools {
            let (tx, rx) = mpsc::unbounded_channel();
            pools.insert(
                name.clone(),
                Arc::new(Pool {
                    name: name.clone(),
                    cfg: pc.clone(),
                    queue: tx,
                    slots: Arc::new(Semaphore::new(pc.max_vms as usize)),
                    running: AtomicU32::new(0),
                    prebooted: Prebooted::default(),
                    hv: Mutex::new(None),
                }),
            );
            rxs.push((name.clone(), rx));
        }
        Ok((
            Arc::new(Daemon {
                cfg,
                store,
                hub: Hub::default(),
                pools,
                accel,
                cancels: Mutex::new(HashMap::new()),
                shutting_down: AtomicBool::new(false),
            }),
            rxs,
        ))
    }

    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("tasks").join(id)
    }

    pub fn artifacts_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("artifacts").join(id)
    }

    /// Reconciles, requeues surviving jobs in submission order, and starts one dispatcher per pool.
    pub async fn start(self: &Arc<Self>, rxs: PoolQueues) -> Result<(), StoreError> {
        let d = self.clone();
        tokio::task::spawn_blocking(move || d.reconcile())
            .await
            .map_err(|e| StoreError::NotFound(format!("reconcile task: {e}")))??;
        for (name, rx) in rxs {
            let d = self.clone();
            tokio::spawn(async move { d.dispatch(name, rx).await });
        }
        for pool in self.pools.values() {
            prebooted::start(self, pool);
        }
        Ok(())
    }

    /// At shutdown: no more pre-booting, and every booting or parked VM destroyed.
    pub async fn stop_prebooted(&self) {
        for pool in self.pools.values() {
            prebooted::shutdown(pool).await;
        }
    }

    /// After a (re)start nothing runs: every in-flight job is FAILED (daemon restart) and requeued
    /// while its retry budget lasts; every marked domain of our jobs and every per-VM dir goes.
    fn reconcile(&self) -> Result<(), StoreError> {
        for rec in self.store.all()? {
            if rec.state.is_in_flight() {
                let failed = self
                    .store
                    .transition(&rec.id, State::Failed, "daemon restart")?;
                if failed.attempt < self.cfg.retry_budget {
                    let attempt = failed.attempt + 1;
                    self.store.transition_with(
                        &rec.id,
                        State::Queued,
                        &format!("requeued after daemon restart (retry {attempt})"),
                        |r| r.attempt = attempt,
                    )?;
                    tracing::warn!(job = %rec.id, "was {} at restart: FAILED, requeued", rec.state);
                } else {
                    tracing::warn!(job = %rec.id, "was {} at restart: FAILED, retry budget spent", rec.state);
                    self.forget_task(&rec.id);
                }
            }
            if rec.state == State::Queued || rec.state.is_in_flight() {
                // Partial artifacts of an interrupted attempt would mix with the next attempt's.
                let _ = std::fs::remove_dir_all(self.artifacts_dir(&rec.id));
            }
        }
        self.destroy_vms();
        Ok(())
    }

    /// Destroys every domain marked as this daemon's (its jobs' and its pre-booted VMs') and
    /// deletes every per-VM dir.
    /// Used at start (nothing is live yet) and at shutdown (what is live is abandoned: the restart
    /// marks those jobs FAILED and requeues them). Blocks.
    pub fn destroy_vms(&self) {
        let mut uris: Vec<&Pool> = Vec::new();
        for p in self.pools.values() {
            if !uris.iter().any(|u| u.cfg.libvirt_uri == p.cfg.libvirt_uri) {
                uris.push(p);
            }
        }
        for p in uris {
            match p.hypervisor() {
                Ok(hv) => {
                    // Nothing is live here: at start nothing runs yet, at shutdown what runs is
                    // abandoned. Only this daemon's domains (owner mark = our state dir) are
                    // considered: another daemon may share the libvirtd.
                    let report = vm::reconcile(&hv, &self.cfg.state_dir, &|_| false);
                    for e in report.errors {
                        tracing::error!("reconcile on {}: {e}", p.cfg.libvirt_uri);
                    }
                    for d in report.destroyed {
                        tracing::info!("reconcile: destroyed leftover domain {d}");
                    }
                }
                Err(e) => tracing::error!("reconcile: libvirt {}: {e}", p.cfg.libvirt_uri),
            }
        }
        // Every per-VM dir is ours (it is under our state dir), known job or not.
        if let Ok(ids) = vmfiles::list_job_dirs(&self.cfg.state_dir) {
            for id in ids {
                let dir = vmfiles::vms_dir(&self.cfg.state_dir).join(&id);
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => tracing::info!("reconcile: removed {}", dir.display()),
                    Err(e) => tracing::error!("reconcile: {}: {e}", dir.display()),
                }
            }
        }
    }

    /// FIFO per pool: take the next queued job, take a parked VM or wait for a VM slot, run it.
    async fn dispatch(self: Arc<Self>, pool_name: String, mut rx: mpsc::UnboundedReceiver<String>) {
        let Some(pool) = self.pools.get(&pool_name).cloned() else {
            return;
        };
        // Jobs queued before the restart first, in submission order.
        if let Ok(all) = self.store.all() {
            for r in all
                .iter()
                .filter(|r| r.state == State::Queued && r.request.pool == pool_name)
            {
                let _ = pool.queue.send(r.id.clone());
            }
        }
        while let Some(id) = rx.recv().await {
            // Cancelled while queued: skip without taking a VM.
            if !self.is_queued(&id) {
                continue;
            }
            let Some(vm) = obtain_vm(&pool).await else {
                return;
            };
            // Cancelled while waiting for a VM: a parked one goes back to the pool untouched.
            if !self.is_queued(&id) {
                match vm {
                    Vm::Parked(p) => prebooted::park(&pool, *p),
                    Vm::Cold(permit) => {
                        drop(permit);
                        pool.prebooted.slot_freed();
                    }
                }
                continue;
            }
            let token = CancellationToken::new();
            self.cancels_lock().insert(id.clone(), token.clone());
            pool.running.fetch_add(1, Ordering::SeqCst);
            let d = self.clone();
            let p = pool.clone();
            tokio::spawn(async move {
                runner::run_job(&d, &p, &id, token, vm).await;
                d.cancels_lock().remove(&id);
                p.running.fetch_sub(1, Ordering::SeqCst);
                p.prebooted.slot_freed();
            });
        }
    }

    fn is_queued(&self, id: &str) -> bool {
        matches!(self.store.get(id), Ok(r) if r.state == State::Queued)
    }

    fn cancels_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.cancels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates, fetches the task tree and queues the job. On any error nothing is left.
    pub async fn submit(&self, req: pb::SubmitJobRequest) -> Result<JobRecord, SubmitError> {
        let t0 = std::time::Instant::now();
        let known = || self.pools.keys().cloned().collect::<Vec<_>>().join(", ");
        let pool_name = if req.pool.is_empty() {
            self.cfg
                .default_pool_name()
                .ok_or_else(|| SubmitError::NoPool(known()))?
                .to_string()
        } else {
            req.pool.clone()
        };
        let pool = self
            .pools
            .get(&pool_name)
            .ok_or_else(|| SubmitError::UnknownPool {
                name: pool_name.clone(),
                known: known(),
            })?;
        taskrepo::check_item(&req.item, &req.item_type)?;
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
            pool.cfg.default_timeout_seconds
        } else {
            req.timeout_seconds
        };

        let id = uuid::Uuid::new_v4().to_string();
        let tree = self.task_dir(&id);
        if let Some(parent) = tree.parent() {
            std::fs::create_dir_all(parent).map_err(|source| RepoError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        taskrepo::fetch(&req.repo, &req.git_ref, &tree).await?;
        let formula = {
            let tree = tree.clone();
            let (f, r) = (req.formula.clone(), req.repo.clone());
            tokio::task::spawn_blocking(move || taskrepo::resolve_and_validate(&tree, &f, &r))
                .await
                .unwrap_or_else(|e| Err(RepoError::FormulaInvalid(format!("validator: {e}"))))
        };
        let formula = match formula {
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
            item: req.item,
            item_type: req.item_type,
            arch,
            timeout_seconds,
            args: req.args.into_iter().collect(),
        };
        let rec = match self.store.create(&id, request) {
            Ok(r) => r,
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
        let _ = pool.queue.send(id);
        Ok(rec)
    }

    /// Cancels a job in any state: a queued one directly, a picked-up one through its runner.
    pub fn cancel(&self, id: &str) -> Result<JobRecord, CancelError> {
        let rec = self.store.get(id)?;
        if rec.state.is_final() {
            return Err(CancelError::AlreadyFinal {
                id: id.to_string(),
                state: rec.state,
            });
        }
        if let Some(token) = self.cancels_lock().get(id) {
            token.cancel();
            return Ok(self.store.get(id)?);
        }
        match self
            .store
            .transition(id, State::Cancelled, "cancelled while queued")
        {
            Ok(r) => {
                self.publish_final(&r);
                self.forget_task(id);
                Ok(r)
            }
            // Picked up between our read and the write: the runner owns it now.
            Err(StoreError::Illegal(_)) => {
                if let Some(token) = self.cancels_lock().get(id) {
                    token.cancel();
                }
                Ok(self.store.get(id)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn publish_lifecycle(&self, rec: &JobRecord) {
        if let Some(e) = rec.events.last() {
            self.hub.publish(
                &rec.id,
                pb::WatchEvent {
                    event: Some(pb::watch_event::Event::Lifecycle(convert::event_to_pb(e))),
                },
            );
        }
    }

    pub fn publish_final(&self, rec: &JobRecord) {
        self.publish_lifecycle(rec);
        self.hub.publish(
            &rec.id,
            pb::WatchEvent {
                event: Some(pb::watch_event::Event::Finished(convert::job_to_pb(rec))),
            },
        );
        self.hub.close(&rec.id);
    }

    /// Deletes the job's private copy of the task tree (it is not needed once the job is final).
    pub fn forget_task(&self, id: &str) {
        let _ = std::fs::remove_dir_all(self.task_dir(id));
    }

    pub fn queued_in(&self, pool: &str) -> u32 {
        self.store
            .all()
            .map(|v| {
                v.iter()
                    .filter(|r| r.state == State::Queued && r.request.pool == pool)
                    .count() as u32
            })
            .unwrap_or(0)
    }

    pub fn images_dir(&self) -> &Path {
        &self.cfg.images_dir
    }
}

/// A parked pre-booted VM if there is one, else a slot for a new VM; waits for whichever comes
/// first. `None` once the pool's slots are closed.
async fn obtain_vm(pool: &Arc<Pool>) -> Option<Vm> {
    loop {
        if let Some(p) = prebooted::take(pool).await {
            return Some(Vm::Parked(Box::new(p)));
        }
        tokio::select! {
            biased;
            _ = pool.prebooted.parked_changed.notified() => continue,
            permit = pool.slots.clone().acquire_owned() => return permit.ok().map(Vm::Cold),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(state: &Path) -> Config {
        Config::parse(
            Path::new("test.toml"),
            &format!(
                "state_dir = {:?}\n[pools.p]\nimage = \"minimal\"\nlibvirt_uri = \"test:///default\"\nmax_vms = 1\n",
                state
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
        let (d, _rxs) = Daemon::open(config(state.path()), tcg()).expect("open");
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
                pb::SubmitJobRequest {
                    repo: "file:///nonexistent/x.git".into(),
                    ..request(r.path())
                },
                "cannot fetch",
            ),
        ];
        for (req, want) in cases {
            let e = d.submit(req).await.expect_err(want);
            assert!(e.to_string().contains(want), "{e}");
        }
        assert!(d.store.all().expect("all").is_empty());
        let leftovers: Vec<_> = std::fs::read_dir(state.path().join("tasks"))
            .map(|r| r.flatten().collect())
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn queued_job_cancels_directly_and_defaults_apply() {
        let state = tempfile::tempdir().expect("state");
        let (d, _rxs) = Daemon::open(config(state.path()), tcg()).expect("open");
        let r = repo();
        let rec = d.submit(request(r.path())).await.expect("submit");
        assert_eq!(rec.state, State::Queued);
        assert_eq!(rec.request.pool, "p", "the only pool is the default");
        assert_eq!(rec.request.timeout_seconds, 1800, "the pool's default");
        assert_eq!(rec.request.arch, "x86_64");
        assert_eq!(rec.request.formula, "runtask.yml");
        assert!(d.task_dir(&rec.id).join("runtask.yml").is_file());
        let c = d.cancel(&rec.id).expect("cancel");
        assert_eq!(c.state, State::Cancelled);
        assert!(!d.task_dir(&rec.id).exists());
        let again = d.cancel(&rec.id).expect_err("final");
        assert_eq!(
            again.to_string(),
            format!("job {} is already CANCELLED", rec.id)
        );
    }

    #[tokio::test]
    async fn restart_fails_in_flight_jobs_and_requeues_within_budget() {
        let state = tempfile::tempdir().expect("state");
        let r = repo();
        let id = {
            let (d, _rxs) = Daemon::open(config(state.path()), tcg()).expect("open");
            let rec = d.submit(request(r.path())).await.expect("submit");
            d.store
                .transition(&rec.id, State::Provisioning, "")
                .expect("picked up");
            d.store
                .transition(&rec.id, State::Booting, "")
                .expect("booting");
            rec.id
        };
        // A leftover per-VM dir of that job must go too.
        let vmdir = state.path().join("vms").join(&id);
        std::fs::create_dir_all(&vmdir).expect("vm dir");

        let (d, _rxs) = Daemon::open(config(state.path()), tcg()).expect("reopen");
        d.reconcile().expect("reconcile");
        let rec = d.store.get(&id).expect("job");
        assert_eq!(rec.state, State::Queued);
        assert_eq!(rec.attempt, 1);
        let n = rec.events.len();
        assert_eq!(rec.events[n - 2].state, State::Failed);
        assert_eq!(rec.events[n - 2].message, "daemon restart");
        assert!(!vmdir.exists());
        drop(d);

        // In flight again, and the budget (1) is spent: FAILED for good.
        let (d, _rxs) = Daemon::open(config(state.path()), tcg()).expect("reopen");
        d.store
            .transition(&id, State::Provisioning, "")
            .expect("again");
        d.reconcile().expect("reconcile");
        let rec = d.store.get(&id).expect("job");
        assert_eq!(rec.state, State::Failed);
        assert_eq!(rec.failure_reason, "daemon restart");
        assert!(!d.task_dir(&id).exists());
    }
}
