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

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minion_provisioning::snapshot::{self, SnapshotFiles};
use minion_provisioning::{image, Image};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{GuestNetwork, PoolConfig};
use crate::guestvm::{self, BootError, BootStep, ReadyVm, Start, VmContext};
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
    /// Pool name → the key of its snapshot (a new one replaces it on disk).
    pool_keys: Mutex<HashMap<String, String>>,
    /// Pool name → the key last asked for (being built, broken or whole).
    pool_wants: Mutex<HashMap<String, String>>,
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

    /// At start: removes half-written snapshots and those no pool uses, then starts building
    /// what the `snapshot` pools lack.
    pub async fn start(self: &Arc<Self>, pools: &[Arc<Pool>]) {
        let mut wanted = Vec::new();
        for pool in pools.iter().filter(|p| p.cfg().snapshots()) {
            match self.key(pool).await {
                Ok(k) => wanted.push((pool.clone(), k)),
                Err(e) => {
                    tracing::warn!(pool = %pool.name, "no snapshot for the pool: {e}; its VMs boot")
                }
            }
        }
        let keep: Vec<String> = wanted.iter().map(|(_, k)| k.clone()).collect();
        let state_dir = self.ctx.state_dir.clone();
        let swept = tokio::task::spawn_blocking(move || {
            snapshot::sweep(&state_dir, &|k| keep.iter().any(|w| w == k))
        })
        .await;
        match swept {
            Ok(Ok(s)) => {
                for p in &s.removed {
                    tracing::info!(path = %p.display(), "stale or half-written snapshot removed");
                }
            }
            Ok(Err(e)) => tracing::warn!("sweeping snapshots: {e}"),
            Err(e) => tracing::warn!("sweeping snapshots: {e}"),
        }
        for (pool, key) in wanted {
            self.want(&pool, &key);
        }
    }

    /// The state of `pool`'s snapshot, as far as this daemon has looked (a pool is looked at
    /// at start and whenever it starts a VM).
    pub fn status(&self, pool: &Pool) -> SnapshotStatus {
        if !pool.cfg().snapshots() {
            return SnapshotStatus::Off;
        }
        // Every key a pool has had went through `pool_wants` first (usable, want).
        let Some(key) = Self::lock(&self.pool_wants).get(&pool.name).cloned() else {
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
        match SnapshotFiles::new(&self.ctx.state_dir, &key) {
            Ok(f) if f.is_complete() => SnapshotStatus::Ready {
                disk_bytes: f.disk_bytes(),
            },
            _ => SnapshotStatus::None,
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
        if let Some(files) = self.usable(pool).await {
            let start = Start::Restore(files.clone());
            match guestvm::boot_to_ready(
                &self.ctx,
                pool,
                vm_id,
                keep_console.clone(),
                &start,
                cancel,
                &mut once,
            )
            .await
            {
                Ok(vm) => return Ok(vm),
                Err(e @ (BootError::Cancelled { .. } | BootError::Libvirt { .. })) => {
                    return Err(e)
                }
                Err(e) if !pool.reachable().await => return Err(e),
                Err(e) => self.broken(pool, &files, &format!("restoring it failed: {e}")),
            }
        }
        guestvm::boot_to_ready(
            &self.ctx,
            pool,
            vm_id,
            keep_console,
            &Start::Boot,
            cancel,
            &mut once,
        )
        .await
    }

    /// The pool's whole snapshot, if it is a `snapshot` pool and has one that is not broken;
    /// else `None`, and one is built if it can be.
    async fn usable(self: &Arc<Self>, pool: &Arc<Pool>) -> Option<SnapshotFiles> {
        if !pool.cfg().snapshots() {
            return None;
        }
        let key = match self.key(pool).await {
            Ok(k) => k,
            // The boot reports what is wrong with the image or the host.
            Err(e) => {
                tracing::debug!(pool = %pool.name, "no snapshot key: {e}");
                return None;
            }
        };
        Self::lock(&self.pool_wants).insert(pool.name.clone(), key.clone());
        let files = SnapshotFiles::new(&self.ctx.state_dir, &key).ok()?;
        if Self::lock(&self.keys).contains_key(&key) {
            return None;
        }
        if files.is_complete() {
            Self::lock(&self.pool_keys).insert(pool.name.clone(), key);
            return Some(files);
        }
        self.want(pool, &key);
        None
    }

    /// Starts building `key`'s snapshot for `pool` unless it is being built or is broken.
    fn want(self: &Arc<Self>, pool: &Arc<Pool>, key: &str) {
        Self::lock(&self.pool_wants).insert(pool.name.clone(), key.to_string());
        {
            let mut keys = Self::lock(&self.keys);
            if keys.contains_key(key) {
                return;
            }
            if SnapshotFiles::new(&self.ctx.state_dir, key).is_ok_and(|f| f.is_complete()) {
                drop(keys);
                self.replaces(pool, key);
                return;
            }
            keys.insert(key.to_string(), KeyState::Building);
        }
        let (me, pool, key) = (self.clone(), pool.clone(), key.to_string());
        self.tasks.spawn(async move { me.build(pool, key).await });
    }

    /// A restore from `files` failed: the key is not used again, its files go, VMs boot.
    fn broken(&self, pool: &Pool, files: &SnapshotFiles, why: &str) {
        let first = !matches!(
            Self::lock(&self.keys).insert(files.key.clone(), KeyState::Broken(why.to_string())),
            Some(KeyState::Broken(_))
        );
        if first {
            tracing::warn!(pool = %pool.name, key = %files.key, "snapshot not usable: {why}; the pool's VMs boot from now on");
        }
        if let Err(e) = files.remove() {
            tracing::warn!(key = %files.key, "removing a broken snapshot: {e}");
        }
    }

    /// `key` is now `pool`'s snapshot: the one it had before goes, unless another pool uses it.
    fn replaces(&self, pool: &Pool, key: &str) {
        let old = Self::lock(&self.pool_keys).insert(pool.name.clone(), key.to_string());
        let Some(old) = old.filter(|o| o != key) else {
            return;
        };
        if Self::lock(&self.pool_keys).values().any(|k| *k == old) {
            return;
        }
        if let Ok(files) = SnapshotFiles::new(&self.ctx.state_dir, &old) {
            match files.remove() {
                Ok(()) => {
                    tracing::info!(pool = %pool.name, key = %old, "replaced snapshot removed")
                }
                Err(e) => tracing::warn!(key = %old, "removing a replaced snapshot: {e}"),
            }
        }
    }

    async fn build(self: Arc<Self>, pool: Arc<Pool>, key: String) {
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
        let made = self.make(&pool, &key).await;
        drop(permit);
        match made {
            Ok(files) => {
                Self::lock(&self.keys).remove(&key);
                tracing::info!(
                    pool = %pool.name,
                    key = %key,
                    secs = format_args!("{:.2}", t0.elapsed().as_secs_f64()),
                    disk_mib = format_args!("{:.1}", files.disk_bytes() as f64 / 1048576.0),
                    "snapshot ready: the pool's VMs are restored from it"
                );
                self.replaces(&pool, &key);
            }
            Err(_) if self.stop.is_cancelled() => {
                Self::lock(&self.keys).remove(&key);
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

    /// Boots the template, quiesces it, saves and freezes it; the template is gone on return.
    async fn make(&self, pool: &Arc<Pool>, key: &str) -> Result<SnapshotFiles, SnapshotError> {
        tokio::select! {
            v = self.validations.ensure(pool) => v.map_err(BootError::from)?,
            _ = self.stop.cancelled() => return Err(BootError::Cancelled { while_booting: false }.into()),
        }
        let id = template_id();
        let t0 = Instant::now();
        let vm = guestvm::boot_to_ready(
            &self.ctx,
            pool,
            &id,
            None,
            &Start::Boot,
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
                let files = SnapshotFiles::new(&self.ctx.state_dir, key)?;
                let cfg = pool.cfg();
                let meta = serde_json::json!({
                    "key": key,
                    "format": SNAPSHOT_FORMAT,
                    "pool": pool.name,
                    "image": cfg.image,
                    "vcpus": cfg.vcpus,
                    "memory_mib": cfg.memory_mib,
                    "libvirt_uri": cfg.libvirt_uri,
                    "agent_version": agent_version,
                    "minion_version": env!("CARGO_PKG_VERSION"),
                    "template_boot_ms": boot_ms,
                    "created_at_ms": crate::jobs::now_ms(),
                });
                let (pool2, name, vmfiles, f) = (
                    pool.clone(),
                    guard.name().to_string(),
                    guard.files().clone(),
                    files.clone(),
                );
                let t_save = Instant::now();
                tokio::task::spawn_blocking(move || {
                    let hv = pool2
                        .hypervisor()
                        .map_err(|source| SnapshotError::Libvirt {
                            uri: pool2.cfg().libvirt_uri.clone(),
                            source,
                        })?;
                    snapshot::freeze(&hv, &name, &vmfiles, &f, &meta)?;
                    Ok::<_, SnapshotError>(())
                })
                .await
                .map_err(SnapshotError::Task)
                .and_then(|r| r)
                .map(|()| {
                    tracing::info!(vm = %id, boot_ms, save_ms = t_save.elapsed().as_millis() as u64, "template saved");
                    files
                })
            }
        };
        if let Err(e) = guard.teardown().await {
            tracing::warn!(vm = %id, "teardown of the template: {e}");
        }
        frozen
    }

    /// The snapshot key of `pool` now: everything a saved VM depends on.
    async fn key(&self, pool: &Arc<Pool>) -> Result<String, SnapshotError> {
        let cfg = pool.cfg();
        let image = {
            let (dir, name) = (self.ctx.images_dir.clone(), cfg.image.clone());
            tokio::task::spawn_blocking(move || image::load(&dir, &name)).await??
        };
        let agent = self.agent_digest()?;
        let versions = self.versions(pool).await?;
        key_of(&cfg, &image, &agent, versions, self.ctx.accel.domain_type())
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

    async fn versions(&self, pool: &Arc<Pool>) -> Result<(u32, u32), SnapshotError> {
        let uri = pool.cfg().libvirt_uri.clone();
        if let Some(v) = Self::lock(&self.versions).get(&uri) {
            return Ok(*v);
        }
        let p = pool.clone();
        let v = tokio::task::spawn_blocking(move || p.hypervisor().and_then(|h| h.versions()))
            .await?
            .map_err(|source| SnapshotError::Libvirt {
                uri: uri.clone(),
                source,
            })?;
        Self::lock(&self.versions).insert(uri, v);
        Ok(v)
    }
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
    part("libvirt_uri", &cfg.libvirt_uri);
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
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("t");
        fs::create_dir_all(&dir).expect("mkdir");
        let img = image(&dir);
        let cfg = pool_cfg();
        let base = key_of(&cfg, &img, "agent1", (9000000, 7002000), "qemu").expect("key");
        assert_eq!(base.len(), 32);
        assert_eq!(
            key_of(&cfg, &img, "agent1", (9000000, 7002000), "qemu").expect("key"),
            base,
            "stable"
        );
        let mut others = vec![
            key_of(&cfg, &img, "agent2", (9000000, 7002000), "qemu").expect("key"),
            key_of(&cfg, &img, "agent1", (9000000, 8000000), "qemu").expect("key"),
            key_of(&cfg, &img, "agent1", (9000000, 7002000), "kvm").expect("key"),
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
            others.push(key_of(&changed, &img, "agent1", (9000000, 7002000), "qemu").expect("key"));
        }
        // A rebuilt disk (new file in place) is a new key too.
        std::thread::sleep(Duration::from_millis(20));
        fs::remove_file(dir.join("disk.qcow2")).expect("rm");
        fs::write(dir.join("disk.qcow2"), b"disk2").expect("disk");
        others.push(key_of(&cfg, &img, "agent1", (9000000, 7002000), "qemu").expect("key"));
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
