//! Where a VM's disks live and how its guest channel and console are reached: the one seam
//! between the daemon and a libvirt host, this machine's included.
//!
//! [`StorageVolumes`]: any libvirt host, reached only through the connection: overlay and seed
//! are volumes of a storage pool on the host (the overlay backed by the image's volume), the
//! channel is opened with virDomainOpenChannel and the console with virDomainOpenConsole,
//! copied into `console.log` in the VM's directory on the controller.

use std::collections::{HashMap, HashSet};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{self, AGENT_CHANNEL};
use crate::error::ProvisionError;
use crate::hostimage::HostImage;
use crate::hypervisor::Hypervisor;
use crate::overlay;
use crate::saveimage::SaveImage;
use crate::seed::{self, SeedSpec};
use crate::streams::Progress;
use crate::vm::{self, PrepareTimings, PreparedVm, ReconcileReport, VmRequest};
use crate::vmfiles::VmFiles;
use crate::volumes::{self, SnapshotPart, VolumeFormat};

/// A VM's plumbing on one kind of host. Every method blocks.
pub trait VmBackend: Send + Sync + std::fmt::Debug {
    /// The VM's disks where its host's qemu reads them, its directory on the controller (console
    /// log), and its XML. On failure nothing of it is left.
    fn prepare(&self, hv: &Hypervisor, req: &VmRequest) -> Result<PreparedVm, ProvisionError>;

    /// Starts a prepared VM (booted from its disk).
    fn start(&self, hv: &Hypervisor, vm: &PreparedVm) -> Result<(), ProvisionError>;

    /// The running VM's agent channel as a unix socket; waits up to `timeout` for it.
    fn open_channel(
        &self,
        hv: &Hypervisor,
        vm: &PreparedVm,
        timeout: Duration,
    ) -> Result<UnixStream, ProvisionError>;

    /// Destroys the domain, copies its console log to `keep_console_as` if asked, deletes its
    /// disks and directory. Every step is attempted; idempotent.
    fn teardown(
        &self,
        hv: &Hypervisor,
        vm: &PreparedVm,
        keep_console_as: Option<&Path>,
    ) -> Result<(), ProvisionError>;

    /// After a restart or a host's return: destroys this daemon's domains and deletes its disks
    /// on `hv` that no live VM (`is_live`, by VM id) owns.
    fn reap(&self, hv: &Hypervisor, is_live: &dyn Fn(&str) -> bool) -> ReconcileReport;

    /// Whether snapshot `key` is whole where `hv`'s VMs can be restored from it.
    fn snapshot_complete(&self, hv: &Hypervisor, key: &str) -> Result<bool, ProvisionError>;

    /// The bytes snapshot `key` takes there (what is there of it).
    fn snapshot_bytes(&self, hv: &Hypervisor, key: &str) -> Result<u64, ProvisionError>;

    /// Saves the running template `vm` (prepared with `template_of`, its agent quiesced) as
    /// snapshot `key` with `meta` (JSON) describing it: the domain stops and is gone. Returns the
    /// bytes the snapshot takes. On error nothing of the snapshot is whole; the template's own
    /// disks are left for its teardown.
    fn freeze(
        &self,
        hv: &Hypervisor,
        vm: &PreparedVm,
        key: &str,
        meta: &serde_json::Value,
    ) -> Result<u64, ProvisionError>;

    /// Like [`VmBackend::prepare`], for VM `req.job_id` restored from snapshot `key`: its own
    /// overlay on the snapshot's disk and its own save image carrying its name, UUID and paths.
    fn prepare_restore(
        &self,
        hv: &Hypervisor,
        req: &VmRequest,
        key: &str,
    ) -> Result<PreparedVm, ProvisionError>;

    /// Starts a VM prepared by [`VmBackend::prepare_restore`]; its save image goes once read.
    fn restore(&self, hv: &Hypervisor, vm: &PreparedVm) -> Result<(), ProvisionError>;

    /// Deletes snapshot `key` (gone already is success).
    fn remove_snapshot(&self, hv: &Hypervisor, key: &str) -> Result<(), ProvisionError>;

    /// Makes copies of snapshot `key`'s save image ahead, until [`SPARES`] wait for the next
    /// restores (which then need not wait for one). Returns at once if another call is making
    /// them; an error leaves the restores to copy it themselves.
    fn stock_spares(&self, hv: &Hypervisor, key: &str) -> Result<(), ProvisionError>;

    /// Removes every half-made snapshot of this daemon, and each whole one `keep` refuses;
    /// returns what went. Only while no snapshot is being made.
    fn sweep_snapshots(
        &self,
        hv: &Hypervisor,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<String>, ProvisionError>;
}

fn saved_state(vm: &PreparedVm) -> Result<&Path, ProvisionError> {
    vm.saved_state.as_deref().ok_or_else(|| {
        ProvisionError::invalid(
            "restore",
            format!("VM {} was prepared to boot, not to be restored", vm.name),
        )
    })
}

/// Any libvirt host, through its connection only: disks are volumes of `pool` on the host.
#[derive(Debug)]
pub struct StorageVolumes {
    pub state_dir: PathBuf,
    /// The storage pool's name on the host.
    pub pool: String,
    /// Console copies still running, by domain name: waited for at teardown so the kept log is
    /// whole.
    consoles: Mutex<HashMap<String, Progress>>,
    /// The start of each snapshot's save image (its domain XML), by key: read from the host
    /// once, rewritten into every VM's own copy.
    saved: Mutex<HashMap<String, std::sync::Arc<SaveImage>>>,
    /// Spare copies of each snapshot's save image made ahead (volume name, host path), by key.
    spares: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// Keys whose spares are being made now.
    stocking: Mutex<HashSet<String>>,
    /// A fresh overlay's bytes by backing file, its format and the capacity: made once with
    /// qemu-img, uploaded for each VM (libvirt would run qemu-img on the host each time).
    overlays: Mutex<HashMap<OverlayShape, std::sync::Arc<Vec<u8>>>>,
    /// The storage pool's directory when the host is this machine (see
    /// [`StorageVolumes::copy_save_image`]).
    local_dir: Option<PathBuf>,
}

/// What a fresh overlay's bytes depend on: its backing file, that file's format, its capacity.
type OverlayShape = (String, VolumeFormat, u64);

/// Spare copies of a snapshot's save image kept made ahead on a host: one per VM restored at once
/// (two, the default slots of a pool).
pub const SPARES: usize = 2;

/// One line per started domain: how long libvirt took to create or restore it, to attach its
/// console and to resume it.
fn log_start(vm: &PreparedVm, created: Duration, console: Duration, resume: Duration) {
    tracing::info!(
        vm = %vm.files.job_id,
        create_ms = created.as_secs_f64() * 1e3,
        console_ms = console.as_secs_f64() * 1e3,
        resume_ms = resume.as_secs_f64() * 1e3,
        "domain running"
    );
}

/// The name of the volume at host path `path` (in a directory pool, its file name).
fn volume_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A token no other volume name of this process has (the owner tag in the name sets daemons
/// apart).
fn spare_token() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{started:x}-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// How long a teardown waits for the console copy to see the domain's end.
const CONSOLE_END_WAIT: Duration = Duration::from_secs(5);

/// Most of a console kept on the controller per VM.
pub const CONSOLE_MAX_BYTES: u64 = 8 << 20;

impl StorageVolumes {
    pub fn new(state_dir: &Path, pool: &str) -> StorageVolumes {
        StorageVolumes {
            state_dir: state_dir.to_path_buf(),
            pool: pool.to_string(),
            consoles: Mutex::new(HashMap::new()),
            saved: Mutex::new(HashMap::new()),
            overlays: Mutex::new(HashMap::new()),
            spares: Mutex::new(HashMap::new()),
            stocking: Mutex::new(HashSet::new()),
            local_dir: None,
        }
    }

    /// The same, for a storage pool whose directory `dir` is on this machine (host `local`).
    pub fn on_this_machine(mut self, dir: &Path) -> StorageVolumes {
        self.local_dir = Some(dir.to_path_buf());
        self
    }

    /// A copy of save image volume `from` as volume `to`; returns its host path. On a host,
    /// libvirtd copies it (virStorageVolCreateXMLFrom: read and written in its own process and
    /// then fsynced: ~28 ms of its CPU and the image's 26 MB written to disk per copy here). On
    /// this machine libvirt makes the volume empty and the kernel fills it (copy_file_range,
    /// not synced: a copy lives until its VM is restored, seconds).
    fn copy_save_image(
        &self,
        hv: &Hypervisor,
        from: &str,
        to: &str,
    ) -> Result<String, ProvisionError> {
        let src = match &self.local_dir {
            Some(dir) => hv
                .volume_path(&self.pool, from)?
                .map(PathBuf::from)
                // A pool defined elsewhere than `dir`: its files are not known to be here.
                .filter(|p| p.parent() == Some(dir.as_path())),
            None => None,
        };
        let Some(src) = src else {
            return Ok(hv.clone_volume(&self.pool, from, to)?);
        };
        let len = std::fs::metadata(&src)
            .map_err(ProvisionError::io("stat", &src))?
            .len();
        let path = hv.create_empty_volume(&self.pool, to, len, 0o600)?;
        let dst = PathBuf::from(&path);
        let filled = if dst.parent() == src.parent() {
            (|| {
                let mut r = std::fs::File::open(&src)?;
                let mut w = std::fs::OpenOptions::new().write(true).open(&dst)?;
                std::io::copy(&mut r, &mut w)
            })()
        } else {
            Err(std::io::Error::other(format!(
                "libvirt put it outside {}",
                src.parent().unwrap_or(Path::new("/")).display()
            )))
        };
        if let Err(e) = filled {
            let _ = hv.delete_volume(&self.pool, to);
            return Err(ProvisionError::io("copy a save image into", &dst)(e));
        }
        Ok(path)
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(String, String)>>> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes every spare copy of `key`'s save image there is on the host, known or not.
    fn remove_spares(&self, hv: &Hypervisor, key: &str) -> Result<(), ProvisionError> {
        self.spares().remove(key);
        for name in hv.list_volumes(&self.pool, &volumes::spare_prefix(&self.owner(), key))? {
            hv.delete_volume(&self.pool, &name)?;
        }
        Ok(())
    }

    /// Creates qcow2 volume `name` of `capacity` bytes on top of the host file `backing` (of
    /// `format`); returns its host path.
    fn create_overlay(
        &self,
        hv: &Hypervisor,
        name: &str,
        backing: &str,
        format: VolumeFormat,
        capacity: u64,
    ) -> Result<String, ProvisionError> {
        let k = (backing.to_string(), format, capacity);
        let cached = self
            .overlays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&k)
            .cloned();
        let header = match cached {
            Some(h) => h,
            None => {
                let h = std::sync::Arc::new(overlay::header(backing, format.as_str(), capacity)?);
                self.overlays
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(k, h.clone());
                h
            }
        };
        Ok(hv.create_volume_with(&self.pool, name, header.to_vec(), 0o600)?)
    }

    fn owner(&self) -> String {
        vm::owner_of(&self.state_dir)
    }

    fn consoles(&self) -> std::sync::MutexGuard<'_, HashMap<String, Progress>> {
        self.consoles.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn build(
        &self,
        hv: &Hypervisor,
        req: &VmRequest,
        image: &HostImage,
        files: &VmFiles,
        made: &mut Vec<String>,
    ) -> Result<PreparedVm, ProvisionError> {
        let owner = self.owner();
        let mut timings = PrepareTimings::default();
        let t = Instant::now();
        let capacity = req
            .disk_bytes
            .or(req.image.manifest.virtual_size)
            .ok_or_else(|| {
                ProvisionError::invalid(
                    "image virtual_size",
                    format!(
                        "{}: the manifest has no virtual_size, which a volume's overlay needs",
                        req.image.dir.display()
                    ),
                )
            })?;
        // A template's disks are its snapshot's from the start: libvirt cannot rename a volume,
        // and copying a qcow2 overlay would flatten it.
        let (overlay_name, seed_name) = match &req.template_of {
            Some(key) => {
                self.remove_parts(hv, key)?;
                (
                    volumes::snapshot_volume(&owner, key, SnapshotPart::Disk),
                    volumes::snapshot_volume(&owner, key, SnapshotPart::Seed),
                )
            }
            None => (
                volumes::overlay_volume(&owner, &req.job_id),
                volumes::seed_volume(&owner, &req.job_id),
            ),
        };
        made.push(overlay_name.clone());
        let overlay =
            self.create_overlay(hv, &overlay_name, &image.disk, image.disk_format, capacity)?;
        timings.overlay = t.elapsed();

        let t = Instant::now();
        seed::write(
            &SeedSpec {
                instance_id: req.job_id.clone(),
                hostname: req.hostname.clone(),
                agent_binary: req.agent_binary.clone(),
            },
            &files.seed,
        )?;
        made.push(seed_name.clone());
        let seed = hv.upload_volume(&self.pool, &seed_name, &files.seed, 0o644)?;
        // The host has it now; the controller's copy is not needed.
        let _ = std::fs::remove_file(&files.seed);
        timings.seed = t.elapsed();

        let t = Instant::now();
        let spec = domain::DomainSpec {
            name: crate::domain_name(&req.job_id),
            job_id: req.job_id.clone(),
            owner,
            vcpus: req.vcpus,
            memory_mib: req.memory_mib,
            accel: req.accel.clone(),
            image: req.image.clone(),
            overlay: PathBuf::from(overlay),
            seed: PathBuf::from(seed),
            kernel: image.kernel.as_ref().map(PathBuf::from),
            initrd: image.initrd.as_ref().map(PathBuf::from),
            console_log: None,
            channel_socket: None,
            network: req.network.clone(),
        };
        let xml = domain::render_xml(&spec)?;
        timings.render = t.elapsed();
        Ok(PreparedVm {
            name: spec.name.clone(),
            files: files.clone(),
            spec,
            xml,
            timings,
            template_of: req.template_of.clone(),
            saved_state: None,
        })
    }

    /// `built`; when it failed, the volumes `made` for it are deleted first.
    fn undone_on_error<T>(
        &self,
        hv: &Hypervisor,
        made: Vec<String>,
        built: Result<T, ProvisionError>,
    ) -> Result<T, ProvisionError> {
        if built.is_err() {
            for v in made {
                if let Err(e) = hv.delete_volume(&self.pool, &v) {
                    tracing::warn!("after a failed prepare: {e}");
                }
            }
        }
        built
    }

    /// Deletes every part of snapshot `key`, the marker first.
    fn remove_parts(&self, hv: &Hypervisor, key: &str) -> Result<(), ProvisionError> {
        let owner = self.owner();
        self.saved_images().remove(key);
        for part in SnapshotPart::ALL {
            hv.delete_volume(&self.pool, &volumes::snapshot_volume(&owner, key, part))?;
        }
        self.remove_spares(hv, key)
    }

    fn saved_images(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, std::sync::Arc<SaveImage>>> {
        self.saved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The start of snapshot `key`'s save image, read from the host the first time.
    fn saved_image(
        &self,
        hv: &Hypervisor,
        key: &str,
    ) -> Result<std::sync::Arc<SaveImage>, ProvisionError> {
        if let Some(i) = self.saved_images().get(key) {
            return Ok(i.clone());
        }
        let name = volumes::snapshot_volume(&self.owner(), key, SnapshotPart::Memory);
        // libvirt's data area is 64 KiB and a bit; a larger one is read again in whole.
        let mut head = hv.read_volume_head(&self.pool, &name, 1 << 20)?;
        let what = Path::new(&name);
        let image = match SaveImage::parse(&head, what) {
            Ok(i) => i,
            Err(_) if head.len() == 1 << 20 => {
                head = hv.read_volume_head(&self.pool, &name, SaveImage::MAX_HEAD as u64)?;
                SaveImage::parse(&head, what)?
            }
            Err(e) => return Err(e),
        };
        let image = std::sync::Arc::new(image);
        self.saved_images().insert(key.to_string(), image.clone());
        Ok(image)
    }

    /// Attaches the domain's console: copied into `console.log` until the domain ends.
    fn attach_console(&self, hv: &Hypervisor, vm: &PreparedVm) {
        let name = &vm.name;
        let attached = hv.open_console(name).and_then(|stream| {
            crate::streams::stream_to_file(stream, &vm.files.console_log, CONSOLE_MAX_BYTES)
                .map_err(|e| crate::hypervisor::HypervisorError::Call {
                    op: "console copy",
                    target: vm.files.console_log.display().to_string(),
                    code: 0,
                    message: e.to_string(),
                })
        });
        match attached {
            Ok(console) => {
                self.consoles().insert(name.clone(), console);
            }
            // A VM without its console still runs its job; the log says why it is empty.
            Err(e) => tracing::warn!(domain = %name, "console not attached: {e}"),
        }
    }

    /// Deletes the VM's overlay and seed, and a restored VM's save image (a spare taken, or a
    /// copy named after the VM: gone already unless the restore never ran).
    fn delete_volumes(&self, hv: &Hypervisor, vm: &PreparedVm) -> Result<(), ProvisionError> {
        let owner = self.owner();
        let id = &vm.files.job_id;
        let saved = vm.saved_state.as_deref().map(volume_name);
        let mut first = None;
        for name in [
            volumes::overlay_volume(&owner, id),
            volumes::seed_volume(&owner, id),
        ]
        .into_iter()
        .chain(saved)
        {
            if let Err(e) = hv.delete_volume(&self.pool, &name) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), |e| Err(e.into()))
    }
}

impl VmBackend for StorageVolumes {
    fn prepare(&self, hv: &Hypervisor, req: &VmRequest) -> Result<PreparedVm, ProvisionError> {
        let image = req.host_image.as_ref().ok_or_else(|| {
            ProvisionError::invalid(
                "host image",
                format!(
                    "image {} has no verified copy on {}",
                    req.image.manifest.name,
                    hv.uri()
                ),
            )
        })?;
        vm::in_new_dir(req, |files| {
            let mut made = Vec::new();
            let built = self.build(hv, req, image, files, &mut made);
            self.undone_on_error(hv, made, built)
        })
    }

    fn start(&self, hv: &Hypervisor, vm: &PreparedVm) -> Result<(), ProvisionError> {
        // Paused until the console is attached, so the log holds the whole boot; and destroyed
        // by the host's libvirtd if this connection dies (a controller gone, a link cut).
        let t0 = Instant::now();
        hv.create_paused(&vm.xml, true)?;
        let created = t0.elapsed();
        self.attach_console(hv, vm);
        let attached = t0.elapsed();
        hv.resume(&vm.name)?;
        log_start(vm, created, attached - created, t0.elapsed() - attached);
        Ok(())
    }

    fn open_channel(
        &self,
        hv: &Hypervisor,
        vm: &PreparedVm,
        _timeout: Duration,
    ) -> Result<UnixStream, ProvisionError> {
        // qemu binds the channel's socket before the domain starts: it is there or never.
        Ok(hv.channel_socket(&vm.name, AGENT_CHANNEL)?)
    }

    fn teardown(
        &self,
        hv: &Hypervisor,
        vm: &PreparedVm,
        keep_console_as: Option<&Path>,
    ) -> Result<(), ProvisionError> {
        let mut first: Option<ProvisionError> = None;
        let t = Instant::now();
        if let Err(e) = hv.destroy(&vm.name) {
            tracing::warn!("teardown of {}: {e}", vm.name);
            first = Some(e.into());
        }
        let destroyed = t.elapsed();
        // The domain is gone (or its host is): the console stream ends, its copy is whole. Taken
        // out first: the map stays free for other VMs while this one is waited for.
        let console = self.consoles().remove(&vm.name);
        if let Some(console) = console {
            let _ = console.wait(CONSOLE_END_WAIT);
        }
        let console_ended = t.elapsed();
        if let Some(dest) = keep_console_as {
            if let Err(e) = vm::keep_console(&vm.files, dest) {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = self.delete_volumes(hv, vm) {
            tracing::warn!("teardown of {}: {e}", vm.name);
            first.get_or_insert(e);
        }
        tracing::info!(
            vm = %vm.files.job_id,
            destroy_ms = destroyed.as_secs_f64() * 1e3,
            console_ms = (console_ended - destroyed).as_secs_f64() * 1e3,
            volumes_ms = (t.elapsed() - console_ended).as_secs_f64() * 1e3,
            "torn down"
        );
        // A template that was not frozen whole leaves no part of its snapshot.
        if let Some(key) = &vm.template_of {
            let whole = self.snapshot_complete(hv, key);
            if !matches!(whole, Ok(true)) {
                if let Err(e) = self.remove_parts(hv, key) {
                    tracing::warn!("teardown of {}: {e}", vm.name);
                    first.get_or_insert(e);
                }
            }
        }
        if let Err(e) = vm.files.remove_all() {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    fn reap(&self, hv: &Hypervisor, is_live: &dyn Fn(&str) -> bool) -> ReconcileReport {
        let mut report = vm::destroy_marked(hv, &self.state_dir, is_live);
        let owner = self.owner();
        match hv.list_volumes(&self.pool, volumes::VM_VOLUME_PREFIX) {
            Ok(names) => {
                for name in names {
                    let Some(vm_id) = volumes::vm_of_volume(&owner, &name) else {
                        continue;
                    };
                    if is_live(vm_id) {
                        continue;
                    }
                    match hv.delete_volume(&self.pool, &name) {
                        Ok(()) => report.deleted_volumes.push(name),
                        Err(e) => report.errors.push(e.to_string()),
                    }
                }
            }
            Err(e) => report.errors.push(e.to_string()),
        }
        report
    }

    fn snapshot_complete(&self, hv: &Hypervisor, key: &str) -> Result<bool, ProvisionError> {
        let owner = self.owner();
        for part in SnapshotPart::ALL {
            if !hv.has_volume(&self.pool, &volumes::snapshot_volume(&owner, key, part))? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn snapshot_bytes(&self, hv: &Hypervisor, key: &str) -> Result<u64, ProvisionError> {
        let owner = self.owner();
        let mut bytes = 0;
        for part in SnapshotPart::ALL {
            bytes +=
                hv.volume_allocation(&self.pool, &volumes::snapshot_volume(&owner, key, part))?;
        }
        Ok(bytes)
    }

    fn freeze(
        &self,
        hv: &Hypervisor,
        vm: &PreparedVm,
        key: &str,
        meta: &serde_json::Value,
    ) -> Result<u64, ProvisionError> {
        if vm.template_of.as_deref() != Some(key) {
            return Err(ProvisionError::invalid(
                "snapshot",
                format!("VM {} was not prepared as the template of {key}", vm.name),
            ));
        }
        let owner = self.owner();
        let name = |part| volumes::snapshot_volume(&owner, key, part);
        for part in [SnapshotPart::Marker, SnapshotPart::Memory] {
            hv.delete_volume(&self.pool, &name(part))?;
        }
        // libvirtd writes the save image into the pool's directory on its host: a volume once
        // the pool is refreshed.
        let dir = hv.storage_pool_dir(&self.pool)?;
        let memory = PathBuf::from(dir).join(name(SnapshotPart::Memory));
        hv.save(&vm.name, &memory)?;
        hv.refresh_pool(&self.pool)?;
        let text = serde_json::to_vec_pretty(meta).map_err(|e| {
            ProvisionError::invalid("snapshot metadata", format!("cannot encode: {e}"))
        })?;
        let local = vm.files.dir.join("snapshot.json");
        std::fs::write(&local, text).map_err(ProvisionError::io("write", &local))?;
        // The marker last: a snapshot without it is half-made.
        hv.upload_volume(&self.pool, &name(SnapshotPart::Marker), &local, 0o644)?;
        self.snapshot_bytes(hv, key)
    }

    fn prepare_restore(
        &self,
        hv: &Hypervisor,
        req: &VmRequest,
        key: &str,
    ) -> Result<PreparedVm, ProvisionError> {
        let owner = self.owner();
        let snap = |part| volumes::snapshot_volume(&owner, key, part);
        // The host path of one of the snapshot's parts, which must be there.
        let part_path = |part, what: &str| -> Result<String, ProvisionError> {
            hv.volume_path(&self.pool, &snap(part))?.ok_or_else(|| {
                ProvisionError::invalid("snapshot", format!("{key} has no {what} on {}", hv.uri()))
            })
        };
        vm::in_new_dir(req, |files| {
            let mut made = Vec::new();
            let built = (|| {
                let mut timings = PrepareTimings::default();
                let t = Instant::now();
                let disk = part_path(SnapshotPart::Disk, "disk")?;
                let seed = part_path(SnapshotPart::Seed, "seed")?;
                let capacity = req
                    .disk_bytes
                    .or(req.image.manifest.virtual_size)
                    .unwrap_or(0);
                let overlay_name = volumes::overlay_volume(&owner, &req.job_id);
                made.push(overlay_name.clone());
                let overlay =
                    self.create_overlay(hv, &overlay_name, &disk, VolumeFormat::Qcow2, capacity)?;
                timings.overlay = t.elapsed();

                let t = Instant::now();
                let image = self.saved_image(hv, key)?;
                // The saved XML names the template's disk (the snapshot's): this VM writes to
                // its own overlay on top of it. The seed stays the snapshot's, read-only.
                let xml = crate::saveimage::restore_xml(&image.xml, &req.job_id)?.replace(
                    &format!("'{disk}'"),
                    &format!("'{}'", crate::templates::escape_xml(&overlay)),
                );
                let head = image.head_with_xml(&xml, Path::new(&req.job_id))?;
                // A copy made ahead if there is one (it is gone if its snapshot was removed
                // meanwhile), else one made now.
                let spare = self.spares().get_mut(key).and_then(|s| s.pop());
                let taken = spare.and_then(|(name, path)| {
                    match hv.write_volume_at(&self.pool, &name, 0, head.clone()) {
                        Ok(()) => {
                            made.push(name);
                            Some(path)
                        }
                        Err(e) => {
                            tracing::debug!("spare {name}: {e}");
                            let _ = hv.delete_volume(&self.pool, &name);
                            None
                        }
                    }
                });
                let memory = match taken {
                    Some(path) => path,
                    None => {
                        let name = volumes::memory_volume(&owner, &req.job_id);
                        made.push(name.clone());
                        let path = self.copy_save_image(hv, &snap(SnapshotPart::Memory), &name)?;
                        hv.write_volume_at(&self.pool, &name, 0, head)?;
                        path
                    }
                };
                timings.saved_state = t.elapsed();

                let spec = domain::DomainSpec {
                    name: crate::domain_name(&req.job_id),
                    job_id: req.job_id.clone(),
                    owner: owner.clone(),
                    vcpus: req.vcpus,
                    memory_mib: req.memory_mib,
                    accel: req.accel.clone(),
                    image: req.image.clone(),
                    overlay: PathBuf::from(&overlay),
                    seed: PathBuf::from(seed),
                    kernel: None,
                    initrd: None,
                    console_log: None,
                    channel_socket: None,
                    network: req.network.clone(),
                };
                Ok(PreparedVm {
                    name: spec.name.clone(),
                    files: files.clone(),
                    // For the record: the domain is described by the XML in its save image.
                    xml,
                    spec,
                    timings,
                    template_of: None,
                    saved_state: Some(PathBuf::from(memory)),
                })
            })();
            self.undone_on_error(hv, made, built)
        })
    }

    fn restore(&self, hv: &Hypervisor, vm: &PreparedVm) -> Result<(), ProvisionError> {
        let saved = saved_state(vm)?;
        // Running at once, its console attached right after: a restored guest writes next to
        // nothing there (its boot was the template's), and pausing it for the console cost
        // ~30 ms (the console's open and the resume wait on qemu's post-restore work). No
        // autodestroy exists for a restore: a VM whose host loses this connection is stopped by
        // its agent, which sees its channel close when libvirtd drops the connection.
        let t0 = Instant::now();
        let restored = hv.restore(saved, &vm.name);
        let created = t0.elapsed();
        if let Err(e) = hv.delete_volume(&self.pool, &volume_name(saved)) {
            tracing::warn!(domain = %vm.name, "deleting the restored save image: {e}");
        }
        restored?;
        let t1 = Instant::now();
        self.attach_console(hv, vm);
        log_start(vm, created, t1.elapsed(), Duration::ZERO);
        Ok(())
    }

    fn remove_snapshot(&self, hv: &Hypervisor, key: &str) -> Result<(), ProvisionError> {
        self.remove_parts(hv, key)
    }

    fn stock_spares(&self, hv: &Hypervisor, key: &str) -> Result<(), ProvisionError> {
        if !self
            .stocking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string())
        {
            return Ok(());
        }
        let owner = self.owner();
        let made = (|| {
            while self.spares().get(key).map_or(0, Vec::len) < SPARES {
                let n = spare_token();
                let name = volumes::spare_volume(&owner, key, &n);
                let from = volumes::snapshot_volume(&owner, key, SnapshotPart::Memory);
                let path = self.copy_save_image(hv, &from, &name)?;
                // Removed meanwhile: the copy goes too.
                if !self.snapshot_complete(hv, key)? {
                    hv.delete_volume(&self.pool, &name)?;
                    return Ok(());
                }
                self.spares()
                    .entry(key.to_string())
                    .or_default()
                    .push((name, path));
            }
            Ok(())
        })();
        self.stocking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        made
    }

    fn sweep_snapshots(
        &self,
        hv: &Hypervisor,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<String>, ProvisionError> {
        let owner = self.owner();
        let names = hv.list_volumes(&self.pool, &volumes::snapshot_volume_prefix(&owner))?;
        let mut keys: Vec<&str> = names
            .iter()
            .filter_map(|n| volumes::snapshot_of_volume(&owner, n))
            .collect();
        keys.dedup();
        let mut removed = Vec::new();
        for key in keys {
            if keep(key) && self.snapshot_complete(hv, key)? {
                // Its spares, left by a daemon that stopped, may be half-copied: made again on
                // demand (`remove_parts` takes them with the rest).
                self.remove_spares(hv, key)?;
                continue;
            }
            self.remove_parts(hv, key)?;
            removed.push(key.to_string());
        }
        Ok(removed)
    }
}
