//! How a pool's VMs start: booted, or restored from a snapshot. For a `start = "snapshot"` pool
//! the daemon boots one template VM per key (image, agent build, VM shape, libvirt host and its
//! qemu), quiesces its agent, and saves it (`minion_provisioning::snapshot`); every VM after that
//! is restored from it with its own overlay, name, UUID, channel and identity, and gets its Hello
//! and Job as a booted one does.
//!
//! ```text
//! start_vm: key → whole snapshot? → guestvm::boot_to_ready(Restore) ──fails──┐
//!                  └ none yet: build it in the background (a pool slot) ─────┴→ boot_to_ready(Boot)
//! build:    boot_to_ready(Boot) → Quiesce/Quiesced → save + freeze → template torn down
//! ```
//!
//! A snapshot that cannot be made or restored is logged once and its key is not tried again
//! until it changes (or the daemon restarts); the pool's VMs boot meanwhile. Disk is bounded: one
//! snapshot per pool shape in use; a replaced one is removed, and at start every snapshot no pool
//! uses and every half-written one is.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minion_provisioning::backend::VmBackend;
use minion_provisioning::{image, Hypervisor, Image};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{GuestNetwork, PoolConfig};
use crate::guestvm::{self, BootError, BootStep, ReadyVm, Start, VmContext};
use crate::hosts::Host;
use crate::pool::Pool;
use crate::validations::Validations;

/// Bumped when what a snapshot holds changes meaning (the domain XML's shape, the guest protocol).
const SNAPSHOT_FORMAT: u32 = 1;
/// How long the template's agent gets to answer Quiesced: it first lets a systemd guest finish
/// booting (at most 60 s), then flushes.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(90);
/// Prefix of template VMs' ids.
pub const TEMPLATE_PREFIX: &str = "snapshot-";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Boot(#[from] BootError),
    #[error("quiescing the template's agent: {0}")]
    Quiesce(#[source] minion_channel::ChannelError),
    #[error("{0}")]
    Provision(#[from] minion_provisioning::ProvisionError),
    #[error("libvirt {uri}: {source}")]
    Libvirt {
        uri: String,
        #[source]
        source: minion_provisioning::HypervisorError,
    },
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A key's state while it has no whole snapshot on disk.
#[derive(Debug, Clone)]
enum KeyState {
    Building,
    /// Making or restoring it failed (why): the pool's VMs boot until the key changes.
    Broken(String),
}

/// What `minion pool list` says of a pool's snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotStatus {
    /// A `start = "boot"` pool.
    Off,
    /// None yet: the first VM the pool needs boots and starts one.
    None,
    Building,
    /// Its VMs are restored from it.
    Ready {
        disk_bytes: u64,
    },
    /// Its VMs boot until the key changes.
    Broken {
        reason: String,
    },
}

impl SnapshotStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            SnapshotStatus::Off => "off",
            SnapshotStatus::None => "none",
            SnapshotStatus::Building => "building",
            SnapshotStatus::Ready { .. } => "ready",
            SnapshotStatus::Broken { .. } => "broken",
        }
    }
}

/// What a file is, cheaply: a changed file changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ino: u64,
}

fn stamp(path: &Path) -> Result<Stamp, SnapshotError> {
    let m = fs::metadata(path).map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Stamp {
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ino: m.ino(),
    })
}

/// The snapshots of every pool of this daemon.
pub struct Snapshots {
    ctx: VmContext,
    keys: Mutex<HashMap<String, KeyState>>,
    /// Site (a pool, or a pool on one of its hosts: [`site`]) → the key of its snapshot (a new
    /// one replaces it).
    pool_keys: Mutex<HashMap<String, String>>,
    /// Site → the key last asked for (being built, broken or whole).
    pool_wants: Mutex<HashMap<String, String>>,
    /// The bytes of each whole snapshot on a host, by key (a local one's are read from disk).
    host_bytes: Mutex<HashMap<String, u64>>,
    /// The agent binary's digest, by its stamp.
    agent: Mutex<Option<(Stamp, String)>>,
    /// libvirt's and qemu's versions by libvirt URI.
    versions: Mutex<HashMap<String, (u32, u32)>>,
    /// Every image is validated before its first VM.
    validations: Arc<Validations>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Snapshots {
    pub fn new(ctx: &VmContext) -> Arc<Snapshots> {
        Arc::new(Snapshots {
            ctx: ctx.clone(),
            keys: Mutex::default(),
            pool_keys: Mutex::default(),
            pool_wants: Mutex::default(),
            host_bytes: Mutex::default(),
            agent: Mutex::default(),
            versions: Mutex::default(),
            validations: Validations::new(ctx),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// At start: removes what an older miniond kept in the state dir, and builds what the
    /// `snapshot` pools lack on each of their hosts once it is up (a host's stale snapshots are
    /// swept by its watch, before it is up).
    pub async fn start(self: &Arc<Self>, pools: &[Arc<Pool>]) {
        let old = self.ctx.state_dir.join("snapshots");
        if old.exists() {
            match tokio::fs::remove_dir_all(&old).await {
                Ok(()) => {
                    tracing::info!(path = %old.display(), "snapshots of an older miniond removed")
                }
                Err(e) => {
                    tracing::warn!(path = %old.display(), "removing an older miniond's snapshots: {e}")
                }
            }
        }
        for pool in pools.iter().filter(|p| p.cfg().snapshots()) {
            for host in pool
                .cfg()
                .hosts
                .iter()
                .filter_map(|h| self.ctx.hosts.get(h))
            {
                let (me, pool) = (self.clone(), pool.clone());
                self.tasks.spawn(async move {
                    tokio::select! {
                        _ = host.up() => {}
                        _ = me.stop.cancelled() => return,
                    }
                    me.usable(&pool, &host).await;
                });
            }
        }
    }

    /// The state of `pool`'s snapshot, as far as this daemon has looked (a pool is looked at
    /// at start and whenever it starts a VM).
    pub fn status(&self, pool: &Pool) -> SnapshotStatus {
        if !pool.cfg().snapshots() {
            return SnapshotStatus::Off;
        }
        // Ready where any host has one (its bytes summed), else the first state.
        let all: Vec<SnapshotStatus> = pool
            .cfg()
            .hosts
            .iter()
            .map(|h| self.site_status(&site(&pool.name, h)))
            .collect();
        let ready: u64 = all
            .iter()
            .filter_map(|s| match s {
                SnapshotStatus::Ready { disk_bytes } => Some(*disk_bytes),
                _ => None,
            })
            .sum();
        if all
            .iter()
            .any(|s| matches!(s, SnapshotStatus::Ready { .. }))
        {
            return SnapshotStatus::Ready { disk_bytes: ready };
        }
        for want in ["building", "broken"] {
            if let Some(s) = all.iter().find(|s| s.as_str() == want) {
                return s.clone();
            }
        }
        SnapshotStatus::None
    }

    fn site_status(&self, site: &str) -> SnapshotStatus {
        // Every key a site has had went through `pool_wants` first (usable, want).
        let Some(key) = Self::lock(&self.pool_wants).get(site).cloned() else {
            return SnapshotStatus::None;
        };
        match Self::lock(&self.keys).get(&key) {
            Some(KeyState::Building) => return SnapshotStatus::Building,
            Some(KeyState::Broken(reason)) => {
                return SnapshotStatus::Broken {
                    reason: reason.clone(),
                }
            }
            None => {}
        }
        match Self::lock(&self.host_bytes).get(&key) {
            Some(b) => SnapshotStatus::Ready { disk_bytes: *b },
            None => SnapshotStatus::None,
        }
    }

    /// The images' validations (shared with imports and ValidateImage).
    pub fn validations(&self) -> &Arc<Validations> {
        &self.validations
    }

    /// Stops building; a template being made is torn down (waits for it).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.validations.shutdown();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// A VM of `pool` with its agent Ready: restored from the pool's snapshot when it has one
    /// (and it restores), else booted. Same contract as [`guestvm::boot_to_ready`]; `progress`
    /// hears each step once even when a failed restore falls back to a boot.
    pub async fn start_vm(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        vm_id: &str,
        keep_console: Option<std::path::PathBuf>,
        cancel: &CancellationToken,
        progress: &mut (dyn FnMut(BootStep) + Send),
    ) -> Result<ReadyVm, BootError> {
        tokio::select! {
            v = self.validations.ensure(pool) => v.map_err(BootError::from)?,
            _ = cancel.cancelled() => return Err(BootError::Cancelled { while_booting: false }),
        }
        let mut heard = [false; 2];
        let mut once = |step: BootStep| {
            let i = step.index();
            if !heard[i] {
                heard[i] = true;
                progress(step);
            }
        };
        if !pool.cfg().snapshots() {
            return guestvm::boot_to_ready(
                &self.ctx,
                pool,
                vm_id,
                keep_console,
                &Start::Boot,
                None,
                cancel,
                &mut once,
            )
            .await;
        }
        // The VM's host is chosen first: the snapshot is that host's.
        let image = guestvm::pool_image(&self.ctx, pool).await?;
        let lease = guestvm::lease_on(&self.ctx, pool, &image, None, cancel).await?;
        let host = lease.host.clone();
        let mut lease = Some(lease);
        if let Some(key) = self.usable(pool, &host).await {
            let start = Start::Restore(key.clone());
            match guestvm::boot_to_ready(
                &self.ctx,
                pool,
                vm_id,
                keep_console.clone(),
                &start,
                lease.take(),
                cancel,
                &mut once,
            )
            .await
            {
                Ok(vm) => return Ok(vm),
                Err(
                    e @ (BootError::Cancelled { .. }
                    | BootError::Libvirt { .. }
                    | BootError::HostLost { .. }),
                ) => return Err(e),
                Err(e) if host.lost() => return Err(e),
                Err(e) => {
                    self.broken(pool, &host, &key, &format!("restoring it failed: {e}"))
                        .await
                }
            }
        }
        guestvm::boot_to_ready(
            &self.ctx,
            pool,
            vm_id,
            keep_console,
            &Start::Boot,
            lease,
            cancel,
            &mut once,
        )
        .await
    }

    /// Runs `f` with a site's hypervisor and backend on a blocking thread (a first connection
    /// blocks too).
    async fn on_site<T: Send + 'static>(
        &self,
        host: &Arc<Host>,
        f: impl FnOnce(&Hypervisor, &dyn VmBackend) -> Result<T, minion_provisioning::ProvisionError>
            + Send
            + 'static,
    ) -> Result<T, SnapshotError> {
        let host = host.clone();
        tokio::task::spawn_blocking(move || {
            let (hv, backend) = guestvm::connection(&host)?;
            Ok(f(&hv, backend.as_ref())?)
        })
        .await?
    }

    /// The key of the pool's whole snapshot on `host`, if it is a `snapshot` pool and has one
    /// that is not broken; else `None`, and one is built if it can be.
    async fn usable(self: &Arc<Self>, pool: &Arc<Pool>, host: &Arc<Host>) -> Option<String> {
        if !pool.cfg().snapshots() {
            return None;
        }
        let key = match self.key(pool, host).await {
            Ok(k) => k,
            // The boot reports what is wrong with the image or the host.
            Err(e) => {
                tracing::debug!(pool = %pool.name, "no snapshot key: {e}");
                return None;
            }
        };
        let site = site(&pool.name, &host.name);
        Self::lock(&self.pool_wants).insert(site.clone(), key.clone());
        if Self::lock(&self.keys).contains_key(&key) {
            return None;
        }
        let k = key.clone();
        let whole = self
            .on_site(host, move |hv, b| b.snapshot_complete(hv, &k))
            .await;
        match whole {
            Ok(true) => {
                // Found whole but not made by this daemon (it was running before): what it
                // takes is asked once, for the pool's status.
                let unknown = !Self::lock(&self.host_bytes).contains_key(&key);
                if unknown {
                    let k = key.clone();
                    match self
                        .on_site(host, move |hv, b| b.snapshot_bytes(hv, &k))
                        .await
                    {
                        Ok(b) => {
                            Self::lock(&self.host_bytes).insert(key.clone(), b);
                        }
                        Err(e) => tracing::debug!(pool = %pool.name, "snapshot {key}: {e}"),
                    }
                }
                Self::lock(&self.pool_keys).insert(site, key.clone());
                Some(key)
            }
            Ok(false) => {
                self.want(pool, host, &key);
                None
            }
            Err(e) => {
                tracing::debug!(pool = %pool.name, "snapshot {key}: {e}");
                None
            }
        }
    }

    /// Starts building `key`'s snapshot for `pool` on `host` unless it is being built or is
    /// broken.
    fn want(self: &Arc<Self>, pool: &Arc<Pool>, host: &Arc<Host>, key: &str) {
        Self::lock(&self.pool_wants).insert(site(&pool.name, &host.name), key.to_string());
        {
            let mut keys = Self::lock(&self.keys);
            if keys.contains_key(key) {
                return;
            }
            keys.insert(key.to_string(), KeyState::Building);
        }
        let (me, pool, host, key) = (self.clone(), pool.clone(), host.clone(), key.to_string());
        self.tasks
            .spawn(async move { me.build(pool, host, key).await });
    }

    /// A restore from snapshot `key` failed: the key is not used again, the snapshot goes, VMs
    /// boot.
    async fn broken(&self, pool: &Arc<Pool>, host: &Arc<Host>, key: &str, why: &str) {
        let first = !matches!(
            Self::lock(&self.keys).insert(key.to_string(), KeyState::Broken(why.to_string())),
            Some(KeyState::Broken(_))
        );
        if first {
            tracing::warn!(pool = %pool.name, key = %key, "snapshot not usable: {why}; the pool's VMs boot from now on");
        }
        Self::lock(&self.host_bytes).remove(key);
        let k = key.to_string();
        if let Err(e) = self
            .on_site(host, move |hv, b| b.remove_snapshot(hv, &k))
            .await
        {
            tracing::warn!(key = %key, "removing a broken snapshot: {e}");
        }
    }

    /// `key` is now the snapshot of `pool` on `host`: the one it had before goes, unless
    /// another site uses it.
    async fn replaces(&self, pool: &Arc<Pool>, host: &Arc<Host>, key: &str) {
        let old = Self::lock(&self.pool_keys).insert(site(&pool.name, &host.name), key.to_string());
        let Some(old) = old.filter(|o| o != key) else {
            return;
        };
        if Self::lock(&self.pool_keys).values().any(|k| *k == old) {
            return;
        }
        Self::lock(&self.host_bytes).remove(&old);
        let o = old.clone();
        match self
            .on_site(host, move |hv, b| b.remove_snapshot(hv, &o))
            .await
        {
            Ok(()) => tracing::info!(pool = %pool.name, key = %old, "replaced snapshot removed"),
            Err(e) => tracing::warn!(key = %old, "removing a replaced snapshot: {e}"),
        }
    }

    async fn build(self: Arc<Self>, pool: Arc<Pool>, host: Arc<Host>, key: String) {
        // A template is a VM like any other: it waits for a slot of the pool.
        let permit = tokio::select! {
            p = pool.slots.clone().acquire_owned() => p,
            _ = self.stop.cancelled() => {
                Self::lock(&self.keys).remove(&key);
                return;
            }
        };
        let Ok(permit) = permit else {
            Self::lock(&self.keys).remove(&key);
            return;
        };
        let t0 = Instant::now();
        let made = self.make(&pool, &host, &key).await;
        drop(permit);
        match made {
            Ok(bytes) => {
                Self::lock(&self.keys).remove(&key);
                Self::lock(&self.host_bytes).insert(key.clone(), bytes);
                tracing::info!(
                    pool = %pool.name,
                    host = %host.name,
                    key = %key,
                    secs = format_args!("{:.2}", t0.elapsed().as_secs_f64()),
                    disk_mib = format_args!("{:.1}", bytes as f64 / 1048576.0),
                    "snapshot ready: the pool's VMs are restored from it"
                );
                self.replaces(&pool, &host, &key).await;
                let k = key.clone();
                if let Err(e) = self
                    .on_site(&host, move |hv, b| b.stock_spares(hv, &k))
                    .await
                {
                    tracing::warn!(key = %key, "copying the save image ahead: {e}");
                }
            }
            Err(_) if self.stop.is_cancelled() => {
                Self::lock(&self.keys).remove(&key);
            }
            // A host lost while its template ran: tried again once it is back.
            Err(e) if !host.is_up() || host.lost() => {
                Self::lock(&self.keys).remove(&key);
                tracing::warn!(pool = %pool.name, key = %key, "making a snapshot failed with its host: {e}");
            }
            Err(e) => {
                Self::lock(&self.keys).insert(
                    key.clone(),
                    KeyState::Broken(format!("making it failed: {e}")),
                );
                tracing::warn!(pool = %pool.name, key = %key, "making a snapshot failed: {e}; the pool's VMs boot");
            }
        }
    }

    /// Boots the template on `host`, quiesces it, saves and freezes it; the template is gone on
    /// return. Returns the snapshot's bytes.
    async fn make(
        &self,
        pool: &Arc<Pool>,
        host: &Arc<Host>,
        key: &str,
    ) -> Result<u64, SnapshotError> {
        tokio::select! {
            v = self.validations.ensure(pool) => v.map_err(BootError::from)?,
            _ = self.stop.cancelled() => return Err(BootError::Cancelled { while_booting: false }.into()),
        }
        let image = guestvm::pool_image(&self.ctx, pool).await?;
        let lease =
            Some(guestvm::lease_on(&self.ctx, pool, &image, Some(&host.name), &self.stop).await?);
        let id = template_id();
        let t0 = Instant::now();
        let vm = guestvm::boot_to_ready(
            &self.ctx,
            pool,
            &id,
            None,
            &Start::Template(key.to_string()),
            lease,
            &self.stop,
            &mut |_| {},
        )
        .await?;
        let boot_ms = t0.elapsed().as_millis() as u64;
        let ReadyVm { guard, session, .. } = vm;
        let agent_version = session.agent_version().to_string();
        let quiesced = session.quiesce(QUIESCE_TIMEOUT).await;
        let frozen = match quiesced {
            Err(e) => Err(SnapshotError::Quiesce(e)),
            Ok(()) => {
                let cfg = pool.cfg();
                let meta = serde_json::json!({
                    "key": key,
                    "format": SNAPSHOT_FORMAT,
                    "pool": pool.name,
                    "image": cfg.image,
                    "vcpus": cfg.vcpus,
                    "memory_mib": cfg.memory_mib,
                    "host": host.name,
                    "libvirt_uri": host.cfg.uri,
                    "agent_version": agent_version,
                    "minion_version": env!("CARGO_PKG_VERSION"),
                    "template_boot_ms": boot_ms,
                    "created_at_ms": crate::jobs::now_ms(),
                });
                let t_save = Instant::now();
                guard
                    .freeze(key, meta)
                    .await
                    .map_err(SnapshotError::from)
                    .inspect(|_| {
                        tracing::info!(vm = %id, boot_ms, save_ms = t_save.elapsed().as_millis() as u64, "template saved");
                    })
            }
        };
        if let Err(e) = guard.teardown().await {
            tracing::warn!(vm = %id, "teardown of the template: {e}");
        }
        frozen
    }

    /// The snapshot key of `pool` on `host` now: everything a saved VM depends on.
    async fn key(&self, pool: &Arc<Pool>, host: &Arc<Host>) -> Result<String, SnapshotError> {
        let cfg = pool.cfg();
        let image = {
            let (dir, name) = (self.ctx.images_dir.clone(), cfg.image.clone());
            tokio::task::spawn_blocking(move || image::load(&dir, &name)).await??
        };
        let versions = self.versions(host).await?;
        self.key_with(&cfg, &image, versions, &host.cfg.uri)
    }

    /// The key of a pool with `cfg` on `uri`, whose libvirt and qemu are `versions`.
    fn key_with(
        &self,
        cfg: &PoolConfig,
        image: &Image,
        versions: (u32, u32),
        uri: &str,
    ) -> Result<String, SnapshotError> {
        let agent = self.agent_digest()?;
        key_of(
            cfg,
            image,
            &agent,
            versions,
            self.ctx.accel.domain_type(),
            uri,
        )
    }

    /// The keys of the snapshots that `pools` (those over host `host`, reached through `hv`)
    /// would restore from there now; `None` when one cannot be worked out (then every whole
    /// snapshot there stays). Blocks.
    pub fn keys_on_host(
        &self,
        pools: &[Arc<Pool>],
        host: &str,
        uri: &str,
        hv: &Hypervisor,
    ) -> Option<HashSet<String>> {
        let mut keys = HashSet::new();
        let over: Vec<&Arc<Pool>> = pools
            .iter()
            .filter(|p| p.cfg().snapshots() && p.cfg().hosts.iter().any(|h| h == host))
            .collect();
        if over.is_empty() {
            return Some(keys);
        }
        let worked_out = (|| {
            // Bound first: a guard in the match's scrutinee would live through its arms.
            let known = Self::lock(&self.versions).get(uri).copied();
            let versions = match known {
                Some(v) => v,
                None => {
                    let v = hv.versions().map_err(|source| SnapshotError::Libvirt {
                        uri: uri.to_string(),
                        source,
                    })?;
                    Self::lock(&self.versions).insert(uri.to_string(), v);
                    v
                }
            };
            for pool in over {
                let cfg = pool.cfg();
                let image = image::load(&self.ctx.images_dir, &cfg.image)?;
                keys.insert(self.key_with(&cfg, &image, versions, uri)?);
            }
            Ok::<_, SnapshotError>(())
        })();
        match worked_out {
            Ok(()) => Some(keys),
            Err(e) => {
                tracing::warn!(
                    host,
                    "the snapshots its pools use are not known ({e}): the whole ones there stay"
                );
                None
            }
        }
    }

    fn agent_digest(&self) -> Result<String, SnapshotError> {
        let path = &self.ctx.agent_binary;
        let now = stamp(path)?;
        if let Some((s, d)) = Self::lock(&self.agent).as_ref() {
            if *s == now {
                return Ok(d.clone());
            }
        }
        let bytes = fs::read(path).map_err(|source| SnapshotError::Io {
            path: path.clone(),
            source,
        })?;
        let digest = hex(&Sha256::digest(&bytes));
        *Self::lock(&self.agent) = Some((now, digest.clone()));
        Ok(digest)
    }

    async fn versions(&self, host: &Arc<Host>) -> Result<(u32, u32), SnapshotError> {
        let uri = host.cfg.uri.clone();
        if let Some(v) = Self::lock(&self.versions).get(&uri) {
            return Ok(*v);
        }
        let (host, u) = (host.clone(), uri.clone());
        let v = tokio::task::spawn_blocking(move || {
            let (hv, _) = guestvm::connection(&host)?;
            hv.versions()
                .map_err(|source| SnapshotError::Libvirt { uri: u, source })
        })
        .await??;
        Self::lock(&self.versions).insert(uri, v);
        Ok(v)
    }
}

/// The name of where a pool's snapshot is: the pool's on one of its hosts.
fn site(pool: &str, host: &str) -> String {
    format!("{pool}@{host}")
}

/// A new template VM id, no longer than a job's (a UUID): the VM's socket path must fit wherever a
/// job's does.
fn template_id() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{TEMPLATE_PREFIX}{}", &random[..36 - TEMPLATE_PREFIX.len()])
}

/// The key: a digest of the pool's VM shape, the image's files, the agent, the host's libvirt and
/// qemu, and this daemon's snapshot format.
fn key_of(
    cfg: &PoolConfig,
    image: &Image,
    agent_digest: &str,
    (libvirt, qemu): (u32, u32),
    domain_type: &str,
    libvirt_uri: &str,
) -> Result<String, SnapshotError> {
    let mut h = Sha256::new();
    let mut part = |k: &str, v: &str| {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\n");
    };
    part("format", &SNAPSHOT_FORMAT.to_string());
    part("minion", env!("CARGO_PKG_VERSION"));
    part("image", &image.manifest.name);
    part(
        "image_sha256",
        image.manifest.sha256.as_deref().unwrap_or(""),
    );
    part("cmdline", &image.manifest.cmdline);
    for (what, path) in [
        ("disk", Some(image.disk_path())),
        ("kernel", image.kernel_path()),
        ("initrd", image.initrd_path()),
    ] {
        if let Some(p) = path {
            let s = stamp(&p)?;
            part(
                what,
                &format!("{} {} {} {}", p.display(), s.len, s.mtime_ns, s.ino),
            );
        }
    }
    part("agent", agent_digest);
    part("vcpus", &cfg.vcpus.to_string());
    part("memory_mib", &cfg.memory_mib.to_string());
    // Only when set: keys of pools without it stay what they were.
    if let Some(g) = cfg.disk_gib {
        part("disk_gib", &g.to_string());
    }
    part(
        "network",
        match cfg.network {
            GuestNetwork::None => "none",
            GuestNetwork::User => "user",
        },
    );
    part("libvirt_uri", libvirt_uri);
    part("versions", &format!("{libvirt} {qemu}"));
    part("domain_type", domain_type);
    Ok(hex(&h.finalize())[..32].to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path) -> Image {
        fs::write(dir.join("disk.qcow2"), b"disk").expect("disk");
        fs::write(
            dir.join("manifest.json"),
            r#"{"name":"t","arch":"x86_64","format":"qcow2","disk":"disk.qcow2","cmdline":"console=ttyS0"}"#,
        )
        .expect("manifest");
        image::load(dir.parent().expect("parent"), "t").expect("image")
    }

    fn pool_cfg() -> PoolConfig {
        toml::from_str("image = \"t\"").expect("pool")
    }

    #[test]
    fn the_key_follows_everything_a_saved_vm_depends_on() {
        const U: &str = "qemu:///system";
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("t");
        fs::create_dir_all(&dir).expect("mkdir");
        let img = image(&dir);
        let cfg = pool_cfg();
        let base = key_of(&cfg, &img, "agent1", (9000000, 7002000), "qemu", U).expect("key");
        assert_eq!(base.len(), 32);
        assert_eq!(
            key_of(&cfg, &img, "agent1", (9000000, 7002000), "qemu", U).expect("key"),
            base,
            "stable"
        );
        let mut others = vec![
            key_of(&cfg, &img, "agent2", (9000000, 7002000), "qemu", U).expect("key"),
            key_of(&cfg, &img, "agent1", (9000000, 8000000), "qemu", U).expect("key"),
            key_of(&cfg, &img, "agent1", (9000000, 7002000), "kvm", U).expect("key"),
            // Each host of a pool has its own.
            key_of(
                &cfg,
                &img,
                "agent1",
                (9000000, 7002000),
                "qemu",
                "qemu+tcp://h1/system",
            )
            .expect("key"),
        ];
        for changed in [
            PoolConfig {
                memory_mib: 1024,
                ..cfg.clone()
            },
            PoolConfig {
                vcpus: 2,
                ..cfg.clone()
            },
            PoolConfig {
                network: GuestNetwork::User,
                ..cfg.clone()
            },
            PoolConfig {
                disk_gib: Some(8),
                ..cfg.clone()
            },
        ] {
            others.push(
                key_of(&changed, &img, "agent1", (9000000, 7002000), "qemu", U).expect("key"),
            );
        }
        // A rebuilt disk (new file in place) is a new key too.
        std::thread::sleep(Duration::from_millis(20));
        fs::remove_file(dir.join("disk.qcow2")).expect("rm");
        fs::write(dir.join("disk.qcow2"), b"disk2").expect("disk");
        others.push(key_of(&cfg, &img, "agent1", (9000000, 7002000), "qemu", U).expect("key"));
        for k in &others {
            assert_ne!(*k, base);
        }
    }

    #[test]
    fn template_ids_are_as_long_as_job_ids_and_unique() {
        let (a, b) = (template_id(), template_id());
        assert_eq!(a.len(), uuid::Uuid::new_v4().to_string().len());
        assert!(a.starts_with(TEMPLATE_PREFIX), "{a}");
        assert_ne!(a, b);
        assert!(minion_provisioning::VmFiles::new(Path::new("/var/lib/minion"), &a).is_ok());
    }

    #[test]
    fn a_pool_default_is_snapshot() {
        assert_eq!(pool_cfg().start, crate::config::VmStart::Snapshot);
        let boot: PoolConfig = toml::from_str("image = \"t\"\nstart = \"boot\"").expect("pool");
        assert_eq!(boot.start, crate::config::VmStart::Boot);
        let err = toml::from_str::<PoolConfig>("image = \"t\"\nstart = \"fork\"").expect_err("bad");
        assert!(err.to_string().contains("start"), "{err}");
    }
}
