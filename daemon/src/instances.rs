//! Developers' instances: a throwaway VM from a catalog image, kept until its owner removes it,
//! that runs commands through its agent (no network, no ssh).
//!
//! ```text
//! create: name reserved (CREATING, recorded) → snapshots::start_vm (restored or booted, as a
//!         pool's VM) → Attach → READY; any failure: the VM is gone and so is the record
//! READY:  exec → Exec over the guest channel; the session's end (VM died, silent) → FAILED,
//!         VM torn down, console log kept
//! remove: VM torn down, record and console log deleted
//! miniond stops: every instance's VM is destroyed and its record says LOST; a restart keeps
//!         the records (LOST) until they are removed
//! ```
//!
//! Each image and VM shape has its own pool (`instances/<image>/<vcpus>x<MiB>[+net]`), so the
//! first instance of a shape boots and builds its snapshot and the next ones are restored.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use minion_channel::{ChannelError, Exec, ExecError, ExecSpec, InstanceLink};
use minion_provisioning::image;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{Caller, Role};
use crate::config::{GuestNetwork, InstancesConfig};
use crate::guestvm::{self, BootError, BootStep, VmContext, VmGuard};
use crate::jobs::now_ms;
use crate::pool::Pool;
use crate::snapshots::Snapshots;

/// How long a kept job's VM may take to accept the new connection.
const ATTACH_CONNECT: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest instance name (a host name label, with room for the suffix of a generated one).
pub const MAX_NAME: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    Creating,
    Ready,
    Failed,
    Lost,
    /// Powered off by `stop`; its files are kept.
    Stopped,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Creating => "creating",
            InstanceState::Ready => "ready",
            InstanceState::Failed => "failed",
            InstanceState::Lost => "lost",
            InstanceState::Stopped => "stopped",
        }
    }
}

/// What the store keeps of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub name: String,
    pub owner: String,
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub network: bool,
    pub state: InstanceState,
    #[serde(default)]
    pub reason: String,
    pub created_at_ms: i64,
    /// Create → agent Ready.
    #[serde(default)]
    pub ready_ms: u64,
    #[serde(default)]
    pub restored: bool,
    /// The VM id (its directory under `vms/`) and its libvirt domain.
    pub vm_id: String,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub agent_version: String,
    /// Its `/etc/machine-id`: kept across a stop and start.
    #[serde(default)]
    pub machine_id: String,
    /// Its console log outlives `remove`.
    #[serde(default)]
    pub keep_console: bool,
}

/// What `create` is asked for.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub image: String,
    /// Empty: generated.
    pub name: String,
    /// 0: the configured default.
    pub vcpus: u32,
    pub memory_mib: u64,
    pub network: bool,
    /// The disk grown to this many GiB; `None`: the image's size.
    pub disk_gib: Option<u64>,
    /// The console log outlives `remove`.
    pub keep_console: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("instances are turned off on this daemon ([instances] max = 0)")]
    Disabled,
    #[error("instance name {0:?}: use a-z, 0-9 and '-', starting with a letter or digit, at most {MAX_NAME} characters")]
    BadName(String),
    #[error("an instance named {0:?} exists")]
    Exists(String),
    #[error("image {name:?}: {message}")]
    Image { name: String, message: String },
    #[error("{what} {asked} is out of range (1..={max})")]
    Shape {
        what: &'static str,
        asked: u64,
        max: u64,
    },
    #[error("{alive} instances are alive, the limit is {limit}: remove one first")]
    Limit { alive: u32, limit: u32 },
    #[error("{owner} has {alive} instances alive, the limit per owner is {limit}")]
    OwnerLimit {
        owner: String,
        alive: u32,
        limit: u32,
    },
    #[error("no instance {0:?}")]
    NotFound(String),
    #[error("instance {name:?} belongs to {owner}")]
    NotYours { name: String, owner: String },
    #[error("instance {name:?} is {state}{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    NotReady {
        name: String,
        state: &'static str,
        reason: String,
    },
    #[error("starting the instance's VM: {0}")]
    Boot(#[source] BootError),
    #[error("attaching to the instance's agent: {0}")]
    Attach(#[source] ChannelError),
    #[error("{0}")]
    Exec(#[from] ExecError),
    #[error("the instances store: {0}")]
    Store(#[from] sled::Error),
    #[error("undecodable instance record {name:?}: {source}")]
    Corrupt {
        name: String,
        source: serde_json::Error,
    },
    #[error("miniond is shutting down")]
    ShuttingDown,
    #[error("instance task: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// A VM's agent attached: how commands reach it, its session to run, its version.
struct Attached {
    link: InstanceLink,
    session: minion_channel::AttachedSession<tokio::net::UnixStream>,
    agent_version: String,
}

/// One instance this daemon runs now (creating or ready).
struct Live {
    owner: String,
    /// Stops its creation or its session.
    stop: CancellationToken,
    /// Stops the session of this boot only (a `stop` or `reboot`); a child of `stop`.
    session_stop: Mutex<CancellationToken>,
    /// Set once it is ready; gone once its session ended.
    link: Mutex<Option<InstanceLink>>,
    /// Held while the VM is made, attached or torn down, so a remove waits for a create.
    vm: tokio::sync::Mutex<Option<VmGuard>>,
    console: PathBuf,
}

pub struct Instances {
    cfg: InstancesConfig,
    ctx: VmContext,
    snapshots: Arc<Snapshots>,
    tree: sled::Tree,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// One pool per image and VM shape.
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

/// `<image>-<6 hex>`, the image's name made a valid name prefix.
fn generated_name(image: &str) -> String {
    let mut stem: String = image
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(MAX_NAME - 7)
        .collect();
    stem = stem.trim_matches('-').to_string();
    if stem.is_empty() {
        stem = "instance".into();
    }
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{stem}-{suffix}")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Instances {
    pub fn new(
        cfg: &InstancesConfig,
        ctx: &VmContext,
        snapshots: &Arc<Snapshots>,
        tree: sled::Tree,
    ) -> Arc<Instances> {
        Arc::new(Instances {
            cfg: cfg.clone(),
            ctx: ctx.clone(),
            snapshots: snapshots.clone(),
            tree,
            live: Mutex::default(),
            pools: Mutex::default(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    fn pool(&self, pc: &crate::config::PoolConfig) -> Arc<Pool> {
        let name = format!(
            "instances/{}/{}x{}{}{}",
            pc.image,
            pc.vcpus,
            pc.memory_mib,
            pc.disk_gib.map(|g| format!("x{g}G")).unwrap_or_default(),
            if pc.network == GuestNetwork::User {
                "+net"
            } else {
                ""
            }
        );
        lock(&self.pools)
            .entry(name.clone())
            .or_insert_with(|| Arc::new(Pool::new(&name, pc, None)))
            .clone()
    }

    fn put(&self, r: &InstanceRecord) -> Result<(), InstanceError> {
        let bytes = serde_json::to_vec(r).map_err(|source| InstanceError::Corrupt {
            name: r.name.clone(),
            source,
        })?;
        self.tree.insert(r.name.as_bytes(), bytes)?;
        self.tree.flush()?;
        Ok(())
    }

    fn get(&self, name: &str) -> Result<Option<InstanceRecord>, InstanceError> {
        let Some(bytes) = self.tree.get(name.as_bytes())? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| InstanceError::Corrupt {
                name: name.to_string(),
                source,
            })
    }

    fn edit(&self, name: &str, f: impl FnOnce(&mut InstanceRecord)) {
        match self.get(name) {
            Ok(Some(mut r)) => {
                f(&mut r);
                if let Err(e) = self.put(&r) {
                    tracing::error!(instance = %name, "writing the instance record: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(instance = %name, "reading the instance record: {e}"),
        }
    }

    /// Every record, by name; undecodable ones are logged and skipped.
    pub fn list(&self) -> Vec<(InstanceRecord, u32)> {
        let live = lock(&self.live).clone();
        self.tree
            .iter()
            .filter_map(|kv| match kv {
                Ok((k, v)) => match serde_json::from_slice::<InstanceRecord>(&v) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::error!(key = %String::from_utf8_lossy(&k), "undecodable instance record: {e}");
                        None
                    }
                },
                Err(e) => {
                    tracing::error!("reading instance records: {e}");
                    None
                }
            })
            .map(|r| {
                let running = live
                    .get(&r.name)
                    .and_then(|l| lock(&l.link).as_ref().map(|k| k.running() as u32))
                    .unwrap_or(0);
                (r, running)
            })
            .collect()
    }

    /// At start: nothing of an earlier run lives (its VMs were destroyed by the reconcile), so
    /// records that were alive say LOST until removed.
    pub fn start(&self) {
        for (r, _) in self.list() {
            if matches!(
                r.state,
                InstanceState::Creating | InstanceState::Ready | InstanceState::Stopped
            ) {
                self.edit(&r.name, |r| {
                    r.state = InstanceState::Lost;
                    r.reason = "miniond restarted: its VM was destroyed".into();
                });
            }
        }
    }

    /// Destroys every instance's VM (their records say LOST); waits for creations to stop.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let all: Vec<(String, Arc<Live>)> = lock(&self.live).drain().collect();
        for (name, live) in all {
            live.stop.cancel();
            if let Some(guard) = live.vm.lock().await.take() {
                if let Err(e) = guard.teardown().await {
                    tracing::error!(instance = %name, "teardown at shutdown: {e}");
                }
            }
            self.edit(&name, |r| {
                r.state = InstanceState::Lost;
                r.reason = "miniond stopped: its VM was destroyed".into();
            });
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn console_path(&self, name: &str) -> PathBuf {
        self.ctx
            .state_dir
            .join("instances")
            .join(format!("{name}.console.log"))
    }

    /// Makes an instance and returns once its agent is attached (or it failed: then nothing of
    /// it is left). Runs in a task of its own: a caller that goes away does not stop it halfway.
    pub async fn create(
        self: &Arc<Self>,
        caller: &Caller,
        req: CreateRequest,
    ) -> Result<InstanceRecord, InstanceError> {
        if self.cfg.max == 0 {
            return Err(InstanceError::Disabled);
        }
        if self.stop.is_cancelled() {
            return Err(InstanceError::ShuttingDown);
        }
        let vcpus = if req.vcpus == 0 {
            self.cfg.vcpus
        } else {
            req.vcpus
        };
        let memory_mib = if req.memory_mib == 0 {
            self.cfg.memory_mib
        } else {
            req.memory_mib
        };
        if vcpus > self.cfg.max_vcpus {
            return Err(InstanceError::Shape {
                what: "vcpus",
                asked: vcpus.into(),
                max: self.cfg.max_vcpus.into(),
            });
        }
        if !(128..=self.cfg.max_memory_mib).contains(&memory_mib) {
            return Err(InstanceError::Shape {
                what: "memory (MiB; at least 128)",
                asked: memory_mib,
                max: self.cfg.max_memory_mib,
            });
        }
        let name = if req.name.is_empty() {
            generated_name(&req.image)
        } else {
            req.name.clone()
        };
        if !valid_name(&name) {
            return Err(InstanceError::BadName(name));
        }
        let (dir, image_name) = (self.ctx.images_dir.clone(), req.image.clone());
        tokio::task::spawn_blocking(move || {
            let image = image::load(&dir, &image_name).map_err(|e| e.to_string())?;
            minion_provisioning::import::usable(&image).map_err(|e| e.to_string())
        })
        .await
        .map_err(InstanceError::Task)?
        .map_err(|message| InstanceError::Image {
            name: req.image.clone(),
            message,
        })?;
        let network = if req.network {
            GuestNetwork::User
        } else {
            GuestNetwork::None
        };
        if let Some(g) = req.disk_gib {
            if !(1..=self.cfg.max_disk_gib).contains(&g) {
                return Err(InstanceError::Shape {
                    what: "disk (GiB)",
                    asked: g,
                    max: self.cfg.max_disk_gib,
                });
            }
        }
        let pool =
            self.pool(
                &self
                    .cfg
                    .pool_config(&req.image, vcpus, memory_mib, network, req.disk_gib),
            );
        let vm_id = uuid::Uuid::new_v4().to_string();
        let record = InstanceRecord {
            name: name.clone(),
            owner: caller.id.clone(),
            image: req.image.clone(),
            vcpus,
            memory_mib,
            network: req.network,
            state: InstanceState::Creating,
            reason: String::new(),
            created_at_ms: now_ms(),
            ready_ms: 0,
            restored: false,
            vm_id: vm_id.clone(),
            domain: String::new(),
            agent_version: String::new(),
            machine_id: String::new(),
            keep_console: req.keep_console,
        };
        let live = self.reserve(&record)?;
        let me = self.clone();
        let task = self
            .tasks
            .spawn(async move { me.bring_up(record, vm_id, pool, live).await });
        task.await.map_err(InstanceError::Task)?
    }

    /// Takes `record.name` for a new instance (refused when taken or over a limit) and writes
    /// its record.
    fn reserve(&self, record: &InstanceRecord) -> Result<Arc<Live>, InstanceError> {
        let name = &record.name;
        let mut all = lock(&self.live);
        if all.contains_key(name)
            || self
                .get(name)?
                .is_some_and(|r| !matches!(r.state, InstanceState::Failed | InstanceState::Lost))
        {
            return Err(InstanceError::Exists(name.clone()));
        }
        let alive = all.len() as u32;
        if alive >= self.cfg.max {
            return Err(InstanceError::Limit {
                alive,
                limit: self.cfg.max,
            });
        }
        let mine = all.values().filter(|l| l.owner == record.owner).count() as u32;
        if mine >= self.cfg.per_owner {
            return Err(InstanceError::OwnerLimit {
                owner: record.owner.clone(),
                alive: mine,
                limit: self.cfg.per_owner,
            });
        }
        self.put(record)?;
        let stop = self.stop.child_token();
        let live = Arc::new(Live {
            owner: record.owner.clone(),
            session_stop: Mutex::new(stop.child_token()),
            stop,
            link: Mutex::new(None),
            vm: tokio::sync::Mutex::new(None),
            console: self.console_path(name),
        });
        all.insert(name.clone(), live.clone());
        Ok(live)
    }

    /// Runs the instance's session until it ends; one that ends on its own fails the instance.
    fn watch(
        self: &Arc<Self>,
        name: &str,
        live: &Arc<Live>,
        session: minion_channel::AttachedSession<tokio::net::UnixStream>,
    ) {
        let (me, watched, name) = (self.clone(), live.clone(), name.to_string());
        let stop = lock(&live.session_stop).clone();
        self.tasks.spawn(async move {
            let ended = session.run(stop).await;
            if let Err(e) = ended {
                me.failed(&name, &watched, &e.to_string()).await;
            }
        });
    }

    async fn bring_up(
        self: Arc<Self>,
        mut record: InstanceRecord,
        vm_id: String,
        pool: Arc<Pool>,
        live: Arc<Live>,
    ) -> Result<InstanceRecord, InstanceError> {
        let name = record.name.clone();
        let t0 = Instant::now();
        let mut vm_slot = live.vm.lock().await;
        let mut restored = false;
        let started = self
            .snapshots
            .start_vm(&pool, &vm_id, None, &live.stop, &mut |s| {
                if let BootStep::Prepared { restored: r } = s {
                    restored = r;
                }
            })
            .await;
        let attached = match started {
            Ok(ready) => {
                let mut guard = ready.guard;
                if let Some(parent) = live.console.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                guard.keep_console_as(live.console.clone());
                let agent_version = ready.session.agent_version().to_string();
                let mut identity = guestvm::identity(&vm_id);
                identity.hostname = name.clone();
                record.machine_id = identity.machine_id.clone();
                let limits = guestvm::session_limits();
                let attach = tokio::select! {
                    a = ready.session.attach(Some(identity), record.network, &limits) => a.map_err(InstanceError::Attach),
                    _ = live.stop.cancelled() => Err(InstanceError::ShuttingDown),
                };
                match attach {
                    Ok(pair) => Ok((guard, pair, agent_version)),
                    Err(e) => {
                        if let Err(te) = guard.teardown().await {
                            tracing::error!(instance = %name, "teardown after a failed attach: {te}");
                        }
                        Err(e)
                    }
                }
            }
            Err(e) => Err(InstanceError::Boot(e)),
        };
        let (guard, (link, session), agent_version) = match attached {
            Ok(a) if !live.stop.is_cancelled() => a,
            Ok((guard, _, _)) => {
                // Removed (or the daemon stopped) while it was made.
                if let Err(te) = guard.teardown().await {
                    tracing::error!(instance = %name, "teardown of a removed instance: {te}");
                }
                self.forget(&name, &live);
                return Err(InstanceError::ShuttingDown);
            }
            Err(e) => {
                tracing::warn!(instance = %name, "creating the instance failed: {e}");
                self.forget(&name, &live);
                let _ = std::fs::remove_file(&live.console);
                return Err(e);
            }
        };
        record.state = InstanceState::Ready;
        record.ready_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
        record.restored = restored;
        record.agent_version = agent_version;
        record.domain = guard.name().to_string();
        self.put(&record)?;
        *lock(&live.link) = Some(link);
        *vm_slot = Some(guard);
        drop(vm_slot);
        tracing::info!(
            instance = %name,
            owner = %record.owner,
            image = %record.image,
            ready_ms = record.ready_ms,
            restored,
            "instance ready"
        );
        self.watch(&name, &live, session);
        Ok(record)
    }

    /// The instance's session ended on its own: the VM goes, the record says why.
    async fn failed(&self, name: &str, live: &Arc<Live>, why: &str) {
        tracing::warn!(instance = %name, "instance failed: {why}");
        lock(&live.link).take();
        if let Some(guard) = live.vm.lock().await.take() {
            if let Err(e) = guard.teardown().await {
                tracing::error!(instance = %name, "teardown of a failed instance: {e}");
            }
        }
        let mut all = lock(&self.live);
        if all.get(name).is_some_and(|l| Arc::ptr_eq(l, live)) {
            all.remove(name);
            drop(all);
            self.edit(name, |r| {
                r.state = InstanceState::Failed;
                r.reason = why.to_string();
            });
        }
    }

    /// A creation that did not make it: its name is free again and its record gone.
    fn forget(&self, name: &str, live: &Arc<Live>) {
        let mut all = lock(&self.live);
        if all.get(name).is_some_and(|l| Arc::ptr_eq(l, live)) {
            all.remove(name);
            if let Err(e) = self
                .tree
                .remove(name.as_bytes())
                .and_then(|_| self.tree.flush())
            {
                tracing::error!(instance = %name, "removing the instance record: {e}");
            }
        }
    }

    /// Powers instance `name` off, keeping its disk (state STOPPED).
    pub async fn stop_instance(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<InstanceRecord, InstanceError> {
        let (live, r) = self.live_of(caller, name, InstanceState::Ready)?;
        let vm = live.vm.lock().await;
        let Some(guard) = vm.as_ref() else {
            return Err(self.not_ready(name));
        };
        lock(&live.session_stop).cancel();
        lock(&live.link).take();
        guard
            .power_off()
            .await
            .map_err(|e| InstanceError::NotReady {
                name: name.to_string(),
                state: "not stopped",
                reason: e.to_string(),
            })?;
        let mut r = r;
        r.state = InstanceState::Stopped;
        r.reason = String::new();
        self.put(&r)?;
        tracing::info!(instance = %name, by = %caller.id, "instance stopped");
        Ok(r)
    }

    /// Boots stopped instance `name` again from its disk and attaches to its agent.
    pub async fn start_instance(
        self: &Arc<Self>,
        caller: &Caller,
        name: &str,
    ) -> Result<InstanceRecord, InstanceError> {
        let (live, mut r) = self.live_of(caller, name, InstanceState::Stopped)?;
        let vm = live.vm.lock().await;
        let Some(guard) = vm.as_ref() else {
            return Err(self.not_ready(name));
        };
        let t0 = Instant::now();
        let session_stop = live.stop.child_token();
        *lock(&live.session_stop) = session_stop.clone();
        guard.power_on().await.map_err(InstanceError::Boot)?;
        let mut identity = guestvm::identity(&r.vm_id);
        identity.hostname = name.to_string();
        if !r.machine_id.is_empty() {
            identity.machine_id = r.machine_id.clone();
        }
        let attached = Self::reattach(guard, Some(identity), r.network, &session_stop).await;
        let Attached {
            link,
            session,
            agent_version: version,
        } = match attached {
            Ok(a) => a,
            Err(e) => {
                // Not left half-started: powered off again, still STOPPED.
                let _ = guard.power_off().await;
                return Err(e);
            }
        };
        r.state = InstanceState::Ready;
        r.ready_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
        r.restored = false;
        r.agent_version = version;
        self.put(&r)?;
        *lock(&live.link) = Some(link);
        drop(vm);
        self.watch(name, &live, session);
        tracing::info!(instance = %name, by = %caller.id, ready_ms = r.ready_ms, "instance started");
        Ok(r)
    }

    /// Connects to a VM whose agent waits for a new session (a kept job's, a started one's),
    /// hands it the identity and attaches. Returns the link, the session and the agent's version.
    async fn reattach(
        guard: &VmGuard,
        identity: Option<minion_proto::guest::Identity>,
        network: bool,
        stop: &CancellationToken,
    ) -> Result<Attached, InstanceError> {
        let limits = guestvm::session_limits();
        let stream = guard
            .open_channel(ATTACH_CONNECT)
            .await
            .map_err(InstanceError::Boot)?;
        let ready = minion_channel::handshake(stream, &limits, stop.clone())
            .await
            .map_err(InstanceError::Attach)?;
        let version = ready.agent_version().to_string();
        let (link, session) = ready
            .attach(identity, network, &limits)
            .await
            .map_err(InstanceError::Attach)?;
        Ok(Attached {
            link,
            session,
            agent_version: version,
        })
    }

    /// The live instance `name`, if the caller may touch it and it is in state `want`.
    fn live_of(
        &self,
        caller: &Caller,
        name: &str,
        want: InstanceState,
    ) -> Result<(Arc<Live>, InstanceRecord), InstanceError> {
        let r = self
            .get(name)?
            .ok_or_else(|| InstanceError::NotFound(name.to_string()))?;
        Self::may_touch(caller, &r.owner, name)?;
        let live = lock(&self.live).get(name).cloned();
        match live {
            Some(l) if r.state == want => Ok((l, r)),
            _ => Err(InstanceError::NotReady {
                name: name.to_string(),
                state: r.state.as_str(),
                reason: r.reason,
            }),
        }
    }

    fn not_ready(&self, name: &str) -> InstanceError {
        InstanceError::NotReady {
            name: name.to_string(),
            state: "without a VM",
            reason: String::new(),
        }
    }

    /// Whether a job's VM could be kept as instance `name` (checked at submission; the limits
    /// are checked again when it is kept).
    pub fn check_keep(&self, name: &str) -> Result<(), InstanceError> {
        if self.cfg.max == 0 {
            return Err(InstanceError::Disabled);
        }
        if !valid_name(name) {
            return Err(InstanceError::BadName(name.to_string()));
        }
        if lock(&self.live).contains_key(name) {
            return Err(InstanceError::Exists(name.to_string()));
        }
        Ok(())
    }

    /// Makes a job's VM, past its Result, instance `name` of `owner`: the agent waits for a new
    /// connection, which is attached. On any error the VM is handed back (to be torn down as a
    /// job's VM always is).
    pub async fn adopt(
        self: &Arc<Self>,
        name: &str,
        owner: &str,
        pool: &crate::config::PoolConfig,
        vm_id: &str,
        mut guard: VmGuard,
    ) -> Result<(), (VmGuard, InstanceError)> {
        let record = InstanceRecord {
            name: name.to_string(),
            owner: owner.to_string(),
            image: pool.image.clone(),
            vcpus: pool.vcpus,
            memory_mib: pool.memory_mib,
            network: pool.network == GuestNetwork::User,
            state: InstanceState::Creating,
            reason: String::new(),
            created_at_ms: now_ms(),
            ready_ms: 0,
            restored: false,
            vm_id: vm_id.to_string(),
            domain: guard.name().to_string(),
            agent_version: String::new(),
            machine_id: String::new(),
            keep_console: false,
        };
        let live = match self.reserve(&record) {
            Ok(l) => l,
            Err(e) => return Err((guard, e)),
        };
        let t0 = Instant::now();
        let attached = Self::reattach(&guard, None, false, &live.stop).await;
        let Attached {
            link,
            session,
            agent_version,
        } = match attached {
            Ok(a) => a,
            Err(e) => {
                self.forget(name, &live);
                return Err((guard, e));
            }
        };
        if let Some(parent) = live.console.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        guard.keep_console_as(live.console.clone());
        let mut record = record;
        record.state = InstanceState::Ready;
        record.ready_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
        record.agent_version = agent_version;
        if let Err(e) = self.put(&record) {
            self.forget(name, &live);
            return Err((guard, e));
        }
        *lock(&live.link) = Some(link);
        *live.vm.lock().await = Some(guard);
        tracing::info!(instance = %name, owner = %owner, "a job's VM kept as an instance");
        self.watch(name, &live, session);
        Ok(())
    }

    /// Validates `image` again by booting it once in the instances' default shape (how an
    /// imported or rebuilt image is validated), recording the outcome beside it.
    pub async fn validate(
        &self,
        image: &image::Image,
    ) -> Result<minion_provisioning::import::Validation, crate::validations::ValidationError> {
        let shape = self.cfg.pool_config(
            &image.manifest.name,
            self.cfg.vcpus,
            self.cfg.memory_mib,
            GuestNetwork::None,
            None,
        );
        self.snapshots
            .validations()
            .validate(image, &shape, true)
            .await
    }

    /// The instances alive on image `name`.
    pub fn on_image(&self, name: &str) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|(r, _)| {
                r.image == name
                    && matches!(
                        r.state,
                        InstanceState::Creating | InstanceState::Ready | InstanceState::Stopped
                    )
            })
            .map(|(r, _)| format!("instance {}", r.name))
            .collect()
    }

    fn may_touch(caller: &Caller, owner: &str, name: &str) -> Result<(), InstanceError> {
        if caller.role >= Role::Admin || caller.id == owner {
            Ok(())
        } else {
            Err(InstanceError::NotYours {
                name: name.to_string(),
                owner: owner.to_string(),
            })
        }
    }

    /// Removes `names` (or, with `all`, every instance the caller owns): VMs destroyed, records
    /// deleted, console logs deleted or, for an instance created with `keep_console`, moved to
    /// `instances/removed/` (returned beside its name). Nothing is removed when one of the names
    /// is refused.
    pub async fn remove(
        &self,
        caller: &Caller,
        names: &[String],
        all: bool,
    ) -> Result<Vec<(String, Option<PathBuf>)>, InstanceError> {
        let mut targets: Vec<String> = names.to_vec();
        if all {
            for (r, _) in self.list() {
                if r.owner == caller.id && !targets.contains(&r.name) {
                    targets.push(r.name);
                }
            }
        }
        let mut records = HashMap::new();
        for n in &targets {
            let r = self
                .get(n)?
                .ok_or_else(|| InstanceError::NotFound(n.clone()))?;
            Self::may_touch(caller, &r.owner, n)?;
            records.insert(n.clone(), r);
        }
        let mut removed = Vec::new();
        for n in targets {
            let live = lock(&self.live).remove(&n);
            if let Some(live) = live {
                live.stop.cancel();
                lock(&live.link).take();
                if let Some(guard) = live.vm.lock().await.take() {
                    guard.teardown().await.map_err(|e| {
                        tracing::error!(instance = %n, "teardown: {e}");
                        InstanceError::NotReady {
                            name: n.clone(),
                            state: "not torn down",
                            reason: e.to_string(),
                        }
                    })?;
                }
            }
            self.tree.remove(n.as_bytes())?;
            self.tree.flush()?;
            let console = self.console_path(&n);
            let kept = match records.get(&n) {
                Some(r) if r.keep_console => self.keep_removed_console(r, &console),
                _ => None,
            };
            if kept.is_none() {
                let _ = std::fs::remove_file(&console);
            }
            tracing::info!(instance = %n, by = %caller.id, kept_console = ?kept, "instance removed");
            removed.push((n, kept));
        }
        Ok(removed)
    }

    /// Moves a removed instance's console log out of the way of its name's next use:
    /// `instances/removed/<name>-<created ms>.console.log`.
    fn keep_removed_console(
        &self,
        r: &InstanceRecord,
        console: &std::path::Path,
    ) -> Option<PathBuf> {
        let dir = self.ctx.state_dir.join("instances").join("removed");
        let to = dir.join(format!("{}-{}.console.log", r.name, r.created_at_ms));
        let moved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::rename(console, &to));
        match moved {
            Ok(()) => Some(to),
            Err(e) => {
                tracing::warn!(instance = %r.name, "keeping the console log {}: {e}", console.display());
                None
            }
        }
    }

    /// Starts `spec` in instance `name`.
    pub async fn exec(
        &self,
        caller: &Caller,
        name: &str,
        spec: ExecSpec,
    ) -> Result<Exec, InstanceError> {
        let r = self
            .get(name)?
            .ok_or_else(|| InstanceError::NotFound(name.to_string()))?;
        Self::may_touch(caller, &r.owner, name)?;
        let link = lock(&self.live)
            .get(name)
            .and_then(|l| lock(&l.link).clone());
        let Some(link) = link else {
            return Err(InstanceError::NotReady {
                name: name.to_string(),
                state: r.state.as_str(),
                reason: r.reason,
            });
        };
        Ok(link.exec(spec).await?)
    }

    /// The instance's console log (kept after a failure until it is removed) and whether it
    /// still runs (it may grow).
    pub fn console(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<(PathBuf, Option<CancellationToken>), InstanceError> {
        let r = self
            .get(name)?
            .ok_or_else(|| InstanceError::NotFound(name.to_string()))?;
        Self::may_touch(caller, &r.owner, name)?;
        let live = lock(&self.live).get(name).cloned();
        Ok(match live {
            Some(l) => {
                let path = minion_provisioning::vmfiles::vms_dir(&self.ctx.state_dir)
                    .join(&r.vm_id)
                    .join("console.log");
                (path, Some(l.stop.clone()))
            }
            None => (self.console_path(name), None),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_host_name_labels() {
        for ok in ["dev", "f40-test", "a", "0x"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Dev", "a_b", "a.b", "../x", &"x".repeat(41)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn generated_names_are_valid_and_differ() {
        let a = generated_name("standard");
        let b = generated_name("standard");
        assert!(a.starts_with("standard-") && valid_name(&a), "{a}");
        assert_ne!(a, b);
        assert!(valid_name(&generated_name("Fedora_Cloud.Base 40")));
        assert!(valid_name(&generated_name("___")));
        assert!(valid_name(&generated_name(&"x".repeat(100))));
    }
}
