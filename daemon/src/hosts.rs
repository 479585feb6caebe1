//! The libvirt hosts pools run their VMs on (`[hosts.NAME]`, and `local`: this machine's
//! libvirtd, for the pools without `hosts`): each one's connection, VM slots, state (up, down,
//! drained), last error, and which images it holds verified; and the lease a VM holds on its
//! host from its first volume to its teardown. On `local` miniond also makes the storage pool
//! and puts the images there itself.
//!
//! ```text
//! monitor, per host:  down ──connects, answers──▶ (local: storage pool) ▶ reap leftovers ▶ verify images ▶ up
//!                     up ──a ping fails / keepalive closed the connection──▶ down (backoff)
//! lease(pool, image): the least-loaded up, undrained host of the pool holding the image
//!                     verified, with a free slot; else wait for a change
//! ```
//!
//! Knows nothing of jobs; a job whose VM's host is lost is the runner's to fail and requeue.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use minion_provisioning::backend::{StorageVolumes, VmBackend};
use minion_provisioning::hostimage::{self, HostImage, HostImageError, ImageFiles};
use minion_provisioning::{Hypervisor, HypervisorError, Image};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::HostConfig;

/// How often an up host is asked whether it still answers.
const PING_EVERY: Duration = Duration::from_secs(2);
/// An up host that does not answer a ping within this is down, its VMs lost. libvirt's
/// keepalive alone does not bound it while streams are open on the connection (measured: 30 s
/// and more); a host's libvirtd must kill our domains sooner than this once our connection is
/// silent (its `keepalive_interval` × (`keepalive_count` + 1) below it, e.g. 1 × 3), so that
/// no job runs twice at once.
pub const LOST_AFTER: Duration = Duration::from_secs(8);
/// Waits between tries of a down host.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Why a host takes no VM (of an image), or an admin call on it failed: said as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unusable(pub String);

/// Whether VM ids are this daemon's live VMs (the reaping at a host's return leaves those).
pub type IsLive = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The images to check on a host (by its name): those of the pools that use it.
pub type ImagesOf = Arc<dyn Fn(&str) -> Vec<Image> + Send + Sync>;

/// The snapshots to keep on a host (by its name and URI, through its connection): the keys its
/// pools restore from now; `None` when not known. Blocks.
pub type SnapshotKeys =
    Arc<dyn Fn(&str, &str, &Hypervisor) -> Option<HashSet<String>> + Send + Sync>;

/// Whether a host holds an image, as last looked.
#[derive(Debug, Clone)]
pub enum ImageOnHost {
    Verified(HostImage),
    /// Missing, or other bytes: why.
    Refused(String),
}

#[derive(Debug, Clone, Default)]
struct HostState {
    up: bool,
    last_error: Option<String>,
    /// When `up` last changed.
    since: Option<SystemTime>,
}

#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub cfg: HostConfig,
    pub backend: Arc<StorageVolumes>,
    slots: Arc<Semaphore>,
    hv: Connection,
    state: Mutex<HostState>,
    drained: AtomicBool,
    /// By image directory.
    images: Mutex<HashMap<PathBuf, ImageOnHost>>,
    changed: Arc<Notify>,
}

/// What `minion host list` shows of a host.
#[derive(Debug, Clone)]
pub struct HostStatus {
    pub name: String,
    pub uri: String,
    pub up: bool,
    pub drained: bool,
    pub vms: u32,
    pub max_vms: u32,
    pub storage_pool: String,
    pub last_error: Option<String>,
    pub since: Option<SystemTime>,
    /// Image name → verified, or why not.
    pub images: Vec<(String, Result<(), Unusable>)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Host {
    fn state(&self) -> HostState {
        lock(&self.state).clone()
    }

    pub fn is_up(&self) -> bool {
        self.state().up
    }

    pub fn drained(&self) -> bool {
        self.drained.load(Ordering::SeqCst)
    }

    /// Why it was last down or refused, if ever.
    pub fn last_error(&self) -> Option<String> {
        self.state().last_error
    }

    /// VMs holding a lease on the host now.
    pub fn vms(&self) -> u32 {
        self.cfg
            .max_vms
            .saturating_sub(self.slots.available_permits() as u32)
    }

    /// The host's connection, opened on first use. Blocks.
    pub fn hypervisor(&self) -> Result<Arc<Hypervisor>, HypervisorError> {
        self.hv.get(&self.cfg.uri)
    }

    /// The host's connection once it answers, with its storage pool running on `local` (made
    /// there if it is missing). Blocks.
    fn answering(&self) -> Result<Arc<Hypervisor>, HypervisorError> {
        let hv = self.hypervisor()?;
        hv.ping()?;
        if let Some(dir) = &self.cfg.local {
            hv.ensure_dir_pool(&self.cfg.storage_pool, dir)?;
        }
        Ok(hv)
    }

    fn set_up(&self, up: bool, error: Option<String>) {
        let mut s = lock(&self.state);
        if s.up != up {
            s.since = Some(SystemTime::now());
            if up {
                tracing::info!(host = %self.name, uri = %self.cfg.uri, "host up");
            } else {
                tracing::warn!(host = %self.name, uri = %self.cfg.uri, error = ?error, "host down: its VMs are lost, it takes no new VM until it answers again");
            }
        }
        s.up = up;
        if error.is_some() {
            s.last_error = error;
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// A VM's provisioning could not reach the host: it is down from now on (its watch connects
    /// again, with backoff), so that the next VMs wait for it or go elsewhere instead of each
    /// failing on it in turn.
    pub fn mark_down(&self, error: String) {
        lock(&self.images).clear();
        self.set_up(false, Some(error));
    }

    /// Returns once the host is down (at once if it is).
    pub async fn down(&self) {
        self.until(|h| !h.is_up()).await
    }

    /// Returns once the host is up (at once if it is).
    pub async fn up(&self) {
        self.until(Host::is_up).await
    }

    async fn until(&self, state: impl Fn(&Host) -> bool) {
        loop {
            let changed = self.changed.notified();
            if state(self) {
                return;
            }
            changed.await;
        }
    }

    /// Whether the host is lost for a VM that ran there: marked down, or its connection closed
    /// (keepalive). Does not block.
    pub fn lost(&self) -> bool {
        if !self.is_up() {
            return true;
        }
        let Some(hv) = self.hv.current() else {
            return false;
        };
        !hv.is_alive()
    }

    /// Removes this daemon's half-made snapshots on the host, and its whole ones not in `keep`
    /// (when known: the keys its pools restore from now). Blocks.
    fn sweep_snapshots(&self, hv: &Hypervisor, keep: Option<&HashSet<String>>) {
        match self
            .backend
            .sweep_snapshots(hv, &|k| keep.is_none_or(|keep| keep.contains(k)))
        {
            Ok(keys) => {
                for k in keys {
                    tracing::info!(host = %self.name, key = %k, "snapshot removed (half-made, or no pool's any more)");
                }
            }
            Err(e) => tracing::warn!(host = %self.name, "sweeping snapshots: {e}"),
        }
    }

    fn image(&self, image: &Image) -> Option<ImageOnHost> {
        lock(&self.images).get(&image.dir).cloned()
    }
}

/// A VM's hold on one of its host's slots, and where that host keeps the VM's image. Dropped
/// when the VM's teardown is done.
#[derive(Debug)]
pub struct HostLease {
    pub host: Arc<Host>,
    pub image: HostImage,
    _permit: OwnedSemaphorePermit,
}

impl Drop for HostLease {
    fn drop(&mut self) {
        self.host.changed.notify_waiters();
    }
}

/// Every `[hosts.NAME]`.
#[derive(Debug)]
pub struct Hosts {
    hosts: BTreeMap<String, Arc<Host>>,
    changed: Arc<Notify>,
    /// Hashes of the images' files, by image directory (a directory's files never change).
    digests: Mutex<HashMap<PathBuf, Arc<ImageFiles>>>,
    /// One verification or push at a time per host.
    verifying: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the pool's hosts {0:?} are not configured")]
    NoHosts(Vec<String>),
    #[error("cancelled while waiting for a host")]
    Cancelled,
}

impl Hosts {
    pub fn new(state_dir: &std::path::Path, cfg: &BTreeMap<String, HostConfig>) -> Hosts {
        let changed = Arc::new(Notify::new());
        let hosts = cfg
            .iter()
            .map(|(name, c)| {
                let host = Host {
                    name: name.clone(),
                    cfg: c.clone(),
                    backend: Arc::new(match &c.local {
                        Some(dir) => {
                            StorageVolumes::new(state_dir, &c.storage_pool).on_this_machine(dir)
                        }
                        None => StorageVolumes::new(state_dir, &c.storage_pool),
                    }),
                    slots: Arc::new(Semaphore::new(c.max_vms as usize)),
                    hv: Connection::default(),
                    state: Mutex::new(HostState::default()),
                    drained: AtomicBool::new(c.drained),
                    images: Mutex::new(HashMap::new()),
                    changed: changed.clone(),
                };
                (name.clone(), Arc::new(host))
            })
            .collect();
        Hosts {
            hosts,
            changed,
            digests: Mutex::new(HashMap::new()),
            verifying: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Host>> {
        self.hosts.get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Host>> {
        self.hosts.values().cloned().collect()
    }

    /// Drains or undrains host `name`; `false` when there is none.
    pub fn set_drained(&self, name: &str, drained: bool) -> bool {
        let Some(h) = self.get(name) else {
            return false;
        };
        h.drained.store(drained, Ordering::SeqCst);
        self.changed.notify_waiters();
        true
    }

    fn digests(&self, image: &Image) -> Result<Arc<ImageFiles>, Unusable> {
        if let Some(d) = lock(&self.digests).get(&image.dir) {
            return Ok(d.clone());
        }
        let d = Arc::new(ImageFiles::hash(image).map_err(|e| Unusable(e.to_string()))?);
        lock(&self.digests).insert(image.dir.clone(), d.clone());
        Ok(d)
    }

    fn verify_lock(&self, host: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.verifying)
            .entry(host.to_string())
            .or_default()
            .clone()
    }

    /// Looks (again) whether `host` holds `image`, reading its volumes back, and records it.
    /// This machine's libvirtd ([`crate::config::LOCAL_HOST`]) is given what it lacks: its
    /// images are the catalog's own.
    pub async fn verify(&self, host: &Arc<Host>, image: &Image) -> ImageOnHost {
        if host.cfg.local.is_some() {
            return self.record(host, image, "push", hostimage::push).await;
        }
        self.record(host, image, "verification", hostimage::verify)
            .await
    }

    /// Uploads `image` to `host` (what it lacks), then records it verified. Blocks the host's
    /// verifications meanwhile.
    pub async fn push(&self, host: &Arc<Host>, image: &Image) -> Result<HostImage, Unusable> {
        match self.record(host, image, "push", hostimage::push).await {
            ImageOnHost::Verified(hi) => Ok(hi),
            ImageOnHost::Refused(why) => Err(Unusable(why)),
        }
    }

    /// Runs `op` (a verification or a push) for `image` on `host`, one at a time per host, and
    /// records what it found (an image whose own files cannot be read is refused, not recorded).
    async fn record(
        &self,
        host: &Arc<Host>,
        image: &Image,
        what: &'static str,
        op: fn(&Hypervisor, &str, &ImageFiles) -> Result<HostImage, HostImageError>,
    ) -> ImageOnHost {
        let guard = self.verify_lock(&host.name);
        let _one = guard.lock().await;
        let digests = match self.digests(image) {
            Ok(d) => d,
            Err(e) => return ImageOnHost::Refused(e.0),
        };
        let h = host.clone();
        let found = tokio::task::spawn_blocking(move || {
            let hv = h.hypervisor().map_err(|e| e.to_string())?;
            op(&hv, &h.cfg.storage_pool, &digests).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("{what} task: {e}")));
        let state = match found {
            Ok(hi) => ImageOnHost::Verified(hi),
            Err(e) => {
                tracing::warn!(host = %host.name, image = %image.manifest.name, "image not usable here: {e}");
                ImageOnHost::Refused(e)
            }
        };
        lock(&host.images).insert(image.dir.clone(), state.clone());
        self.changed.notify_waiters();
        state
    }

    /// A slot on the least-loaded of `names` that is up, undrained and holds `image` verified
    /// (looked at once per host and image until the host goes down); waits until one has.
    pub async fn lease(
        &self,
        names: &[String],
        image: &Image,
        cancel: &CancellationToken,
    ) -> Result<HostLease, LeaseError> {
        let hosts: Vec<Arc<Host>> = names.iter().filter_map(|n| self.get(n)).collect();
        if hosts.is_empty() {
            return Err(LeaseError::NoHosts(names.to_vec()));
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let mut usable: Vec<(Arc<Host>, HostImage)> = Vec::new();
            for h in &hosts {
                if !h.is_up() || h.drained() {
                    continue;
                }
                let state = match h.image(image) {
                    Some(s) => s,
                    None => self.verify(h, image).await,
                };
                if let ImageOnHost::Verified(hi) = state {
                    usable.push((h.clone(), hi));
                }
            }
            // Least loaded first: the fewest VMs for its size, then the name (stable).
            usable.sort_by(|(a, _), (b, _)| {
                let load = |h: &Host| h.vms() as f64 / h.cfg.max_vms.max(1) as f64;
                load(a)
                    .partial_cmp(&load(b))
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then_with(|| a.name.cmp(&b.name))
            });
            for (h, hi) in usable {
                if let Ok(permit) = h.slots.clone().try_acquire_owned() {
                    return Ok(HostLease {
                        host: h,
                        image: hi,
                        _permit: permit,
                    });
                }
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = cancel.cancelled() => return Err(LeaseError::Cancelled),
                // A host that came back, or a push, also notifies; this bounds a missed one.
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    /// Watches every host until `stop`: see the module's diagram. `live` says which VM ids
    /// are this daemon's now (the reaping at a host's return leaves those alone).
    /// `images(host)`: the images of the pools that use the host, checked each time it is up.
    pub async fn monitor(
        self: Arc<Self>,
        live: IsLive,
        images: ImagesOf,
        snapshots: SnapshotKeys,
        stop: CancellationToken,
    ) {
        let mut tasks = Vec::new();
        for h in self.all() {
            let (hosts, live, images, snapshots, stop) = (
                self.clone(),
                live.clone(),
                images.clone(),
                snapshots.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                hosts.watch(h, live, images, snapshots, stop).await
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn watch(
        &self,
        host: Arc<Host>,
        live: IsLive,
        images: ImagesOf,
        snapshots: SnapshotKeys,
        stop: CancellationToken,
    ) {
        let mut wait = RETRY_FIRST;
        loop {
            if host.is_up() {
                let h = host.clone();
                let ping = tokio::task::spawn_blocking(move || {
                    let hv = h.hypervisor().map_err(|e| e.to_string())?;
                    if !hv.is_alive() {
                        return Err("the connection was closed (keepalive: no answer)".to_string());
                    }
                    hv.ping().map_err(|e| e.to_string())
                });
                // A call on a dead link blocks until TCP or keepalive gives up: not waited for.
                let answers = match tokio::time::timeout(LOST_AFTER, ping).await {
                    Ok(r) => r.unwrap_or_else(|e| Err(e.to_string())),
                    Err(_) => Err(format!("no answer within {} s", LOST_AFTER.as_secs())),
                };
                if let Err(e) = answers {
                    host.set_up(false, Some(e));
                    lock(&host.images).clear();
                    wait = RETRY_FIRST;
                    continue;
                }
                tokio::select! {
                    _ = tokio::time::sleep(PING_EVERY) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            let (h, l, keys) = (host.clone(), live.clone(), snapshots.clone());
            let back = tokio::task::spawn_blocking(move || {
                // A fresh connection: the old one died with the link.
                h.hv.reset();
                let hv = h.answering().map_err(|e| e.to_string())?;
                // Before new work: what this daemon left there (domains, volumes) goes.
                let report = h.backend.reap(&hv, &|id| l(id));
                for d in &report.destroyed {
                    tracing::info!(host = %h.name, "reaped leftover domain {d}");
                }
                for v in &report.deleted_volumes {
                    tracing::info!(host = %h.name, "reaped leftover volume {v}");
                }
                // A template cut off with its host leaves a half-made snapshot; one made for
                // an older agent, image or shape is no use any more.
                h.sweep_snapshots(&hv, keys(&h.name, &h.cfg.uri, &hv).as_ref());
                match report.errors.first() {
                    Some(e) => Err(format!("reaping leftovers: {e}")),
                    None => Ok(()),
                }
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match back {
                Ok(()) => {
                    lock(&host.images).clear();
                    host.set_up(true, None);
                    wait = RETRY_FIRST;
                    // What it holds is known before a job asks (and `host list` says so).
                    for image in images(&host.name) {
                        self.verify(&host, &image).await;
                    }
                }
                Err(e) => {
                    {
                        let mut s = lock(&host.state);
                        s.last_error = Some(e);
                        s.since.get_or_insert_with(SystemTime::now);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => return,
                    }
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Every host's state, with the images it was checked for.
    pub fn status(&self) -> Vec<HostStatus> {
        self.all()
            .iter()
            .map(|h| {
                let s = h.state();
                let mut images: Vec<(String, Result<(), Unusable>)> = lock(&h.images)
                    .iter()
                    .map(|(dir, st)| {
                        let name = dir
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        let r = match st {
                            ImageOnHost::Verified(_) => Ok(()),
                            ImageOnHost::Refused(why) => Err(Unusable(why.clone())),
                        };
                        (name, r)
                    })
                    .collect();
                images.sort_by(|a, b| a.0.cmp(&b.0));
                HostStatus {
                    name: h.name.clone(),
                    uri: h.cfg.uri.clone(),
                    up: s.up,
                    drained: h.drained(),
                    vms: h.vms(),
                    max_vms: h.cfg.max_vms,
                    storage_pool: h.cfg.storage_pool.clone(),
                    last_error: s.last_error,
                    since: s.since,
                    images,
                }
            })
            .collect()
    }

    /// Whether each of `names` takes VMs of `image` now, and why not.
    pub fn usable_for(
        &self,
        names: &[String],
        image: Option<&Image>,
    ) -> Vec<(String, Result<(), Unusable>)> {
        names
            .iter()
            .map(|n| {
                let Some(h) = self.get(n) else {
                    return (n.clone(), Err(Unusable("not configured".to_string())));
                };
                let s = h.state();
                let r = if !s.up {
                    Err(format!(
                        "down: {}",
                        s.last_error.as_deref().unwrap_or("not connected yet")
                    ))
                } else if h.drained() {
                    Err("drained".to_string())
                } else {
                    match image.and_then(|i| h.image(i)) {
                        Some(ImageOnHost::Verified(_)) => Ok(()),
                        Some(ImageOnHost::Refused(why)) => Err(why),
                        None => Err("the image is not checked there yet".to_string()),
                    }
                }
                .map_err(Unusable);
                (n.clone(), r)
            })
            .collect()
    }

    /// Destroys this daemon's domains and deletes its volumes on every host that answers
    /// (at start, nothing is live; at shutdown, what is live is abandoned). Blocks. Their
    /// snapshots are swept by the watch, when each host is first (or again) up.
    pub fn reap_all(&self, is_live: &dyn Fn(&str) -> bool) {
        for h in self.all() {
            match h.answering() {
                Ok(hv) => {
                    let report = h.backend.reap(&hv, is_live);
                    for d in report.destroyed {
                        tracing::info!(host = %h.name, "reconcile: destroyed leftover domain {d}");
                    }
                    for v in report.deleted_volumes {
                        tracing::info!(host = %h.name, "reconcile: deleted leftover volume {v}");
                    }
                    for e in report.errors {
                        tracing::error!(host = %h.name, "reconcile: {e}");
                    }
                }
                Err(e) => {
                    tracing::warn!(host = %h.name, "reconcile: not reachable ({e}); reaped when it answers")
                }
            }
        }
    }
}

/// A libvirt connection opened on first use and then kept (a host's);
/// [`Connection::reset`] drops it, so the next use opens a fresh one.
#[derive(Debug, Default)]
struct Connection(Mutex<Option<Arc<Hypervisor>>>);

impl Connection {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Hypervisor>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection to `uri`, opened now if there is none. Blocks.
    pub fn get(&self, uri: &str) -> Result<Arc<Hypervisor>, HypervisorError> {
        let mut g = self.lock();
        if let Some(h) = g.as_ref() {
            return Ok(h.clone());
        }
        let h = Arc::new(Hypervisor::connect(uri)?);
        *g = Some(h.clone());
        Ok(h)
    }

    /// The connection if one is open.
    pub fn current(&self) -> Option<Arc<Hypervisor>> {
        self.lock().clone()
    }

    pub fn reset(&self) {
        *self.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minion_provisioning::volumes::VolumeFormat;

    fn hosts(n: usize, max: u32) -> Hosts {
        let cfg = (1..=n)
            .map(|k| {
                let c: HostConfig = toml::from_str(&format!(
                    "uri = \"qemu+tcp://10.77.{k}.2/system\"\nmax_vms = {max}"
                ))
                .expect("host");
                (format!("h{k}"), c)
            })
            .collect();
        Hosts::new(std::path::Path::new("/var/lib/minion"), &cfg)
    }

    fn image() -> Image {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("t");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("manifest.json"),
            r#"{"name":"t","arch":"x86_64","format":"qcow2","disk":"d.qcow2","cmdline":"","agent_start":"init"}"#,
        )
        .expect("manifest");
        std::fs::write(dir.join("d.qcow2"), b"").expect("disk");
        let img = minion_provisioning::image::load(tmp.path(), "t").expect("image");
        // Its path is only the images map's key from here on.
        drop(tmp);
        img
    }

    fn up_with(h: &Host, img: &Image, state: ImageOnHost) {
        h.set_up(true, None);
        lock(&h.images).insert(img.dir.clone(), state);
    }

    fn verified() -> ImageOnHost {
        ImageOnHost::Verified(HostImage {
            disk: "/pool/d".into(),
            disk_format: VolumeFormat::Qcow2,
            kernel: None,
            initrd: None,
        })
    }

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|k| format!("h{k}")).collect()
    }

    #[tokio::test]
    async fn leases_go_to_the_least_loaded_usable_host_and_never_over_its_limit() {
        let hs = hosts(3, 2);
        let img = image();
        up_with(&hs.get("h1").expect("h1"), &img, verified());
        up_with(&hs.get("h2").expect("h2"), &img, verified());
        up_with(
            &hs.get("h3").expect("h3"),
            &img,
            ImageOnHost::Refused("other bytes".into()),
        );
        let cancel = CancellationToken::new();
        let mut leases = Vec::new();
        for _ in 0..4 {
            leases.push(hs.lease(&names(3), &img, &cancel).await.expect("lease"));
        }
        let on = |n: &str| leases.iter().filter(|l| l.host.name == n).count();
        assert_eq!((on("h1"), on("h2"), on("h3")), (2, 2, 0));
        // Full: the next waits until a slot is freed.
        let all = names(3);
        let waiting = hs.lease(&all, &img, &cancel);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut waiting)
                .await
                .is_err(),
            "a fifth VM on two hosts of 2"
        );
        let freed = leases.remove(0).host.name.clone();
        let next = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("woken by the freed slot")
            .expect("lease");
        assert_eq!(next.host.name, freed);
    }

    #[tokio::test]
    async fn down_and_drained_hosts_take_nothing_and_a_cancel_ends_the_wait() {
        let hs = hosts(2, 2);
        let img = image();
        up_with(&hs.get("h1").expect("h1"), &img, verified());
        up_with(&hs.get("h2").expect("h2"), &img, verified());
        hs.get("h1")
            .expect("h1")
            .set_up(false, Some("no route".into()));
        assert!(hs.set_drained("h2", true));
        assert!(!hs.set_drained("nope", true));
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.cancel();
        });
        assert!(matches!(
            hs.lease(&names(2), &img, &cancel).await,
            Err(LeaseError::Cancelled)
        ));
        let why = hs.usable_for(&names(2), Some(&img));
        assert!(
            why[0].1.as_ref().is_err_and(|e| e.0.contains("no route")),
            "{why:?}"
        );
        assert_eq!(why[1].1, Err(Unusable("drained".into())));
        assert!(matches!(
            hs.lease(&["nope".to_string()], &img, &cancel).await,
            Err(LeaseError::NoHosts(_))
        ));
        hs.set_drained("h2", false);
        let l = hs
            .lease(&names(2), &img, &CancellationToken::new())
            .await
            .expect("h2 again");
        assert_eq!(l.host.name, "h2");
    }
}
