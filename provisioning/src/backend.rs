//! Where a VM's disks live and how its guest channel and console are reached: the one seam
//! between the daemon and a libvirt host.
//!
//! - [`LocalFiles`]: libvirtd on the controller's own machine sharing its file system: overlay
//!   and seed in the VM's directory, console written by virtlogd to `console.log`, channel on a
//!   unix socket in that directory. Snapshots (save/restore files) need it.
//! - [`StorageVolumes`]: any libvirt host, reached only through the connection: overlay and seed
//!   are volumes of a storage pool on the host (the overlay backed by the image's volume), the
//!   channel is opened with virDomainOpenChannel and the console with virDomainOpenConsole,
//!   copied into `console.log` in the VM's directory on the controller.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{self, AGENT_CHANNEL};
use crate::error::ProvisionError;
use crate::hostimage::HostImage;
use crate::hypervisor::Hypervisor;
use crate::seed::{self, SeedSpec};
use crate::streams::Progress;
use crate::vm::{self, PrepareTimings, PreparedVm, ReconcileReport, VmRequest};
use crate::vmfiles::VmFiles;
use crate::volumes;

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
}

/// libvirtd on this machine, sharing the controller's file system.
#[derive(Debug)]
pub struct LocalFiles {
    pub state_dir: PathBuf,
}

/// How often a channel socket that is not there yet is tried again.
const CONNECT_RETRY: Duration = Duration::from_millis(5);

impl VmBackend for LocalFiles {
    fn prepare(&self, _hv: &Hypervisor, req: &VmRequest) -> Result<PreparedVm, ProvisionError> {
        vm::prepare(req)
    }

    fn start(&self, hv: &Hypervisor, vm: &PreparedVm) -> Result<(), ProvisionError> {
        hv.create_transient(&vm.xml)?;
        Ok(())
    }

    fn open_channel(
        &self,
        _hv: &Hypervisor,
        vm: &PreparedVm,
        timeout: Duration,
    ) -> Result<UnixStream, ProvisionError> {
        let path = &vm.files.channel_socket;
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Ok(s),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) && Instant::now() + CONNECT_RETRY < deadline =>
                {
                    std::thread::sleep(CONNECT_RETRY)
                }
                Err(e) => return Err(ProvisionError::io("connect to", path)(e)),
            }
        }
    }

    fn teardown(
        &self,
        hv: &Hypervisor,
        vm: &PreparedVm,
        keep_console_as: Option<&Path>,
    ) -> Result<(), ProvisionError> {
        vm::teardown(hv, &vm.name, &vm.files, keep_console_as)
    }

    fn reap(&self, hv: &Hypervisor, is_live: &dyn Fn(&str) -> bool) -> ReconcileReport {
        vm::destroy_marked(hv, &self.state_dir, is_live)
    }
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
        }
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
        let overlay_name = volumes::overlay_volume(&owner, &req.job_id);
        made.push(overlay_name.clone());
        let overlay = hv.create_overlay_volume(
            &self.pool,
            &overlay_name,
            &image.disk,
            image.disk_format,
            capacity,
        )?;
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
        let seed_name = volumes::seed_volume(&owner, &req.job_id);
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
        })
    }

    fn delete_volumes(&self, hv: &Hypervisor, vm_id: &str) -> Result<(), ProvisionError> {
        let owner = self.owner();
        let mut first = None;
        for name in [
            volumes::overlay_volume(&owner, vm_id),
            volumes::seed_volume(&owner, vm_id),
        ] {
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
            if built.is_err() {
                for v in made {
                    if let Err(e) = hv.delete_volume(&self.pool, &v) {
                        tracing::warn!("after a failed prepare: {e}");
                    }
                }
            }
            built
        })
    }

    fn start(&self, hv: &Hypervisor, vm: &PreparedVm) -> Result<(), ProvisionError> {
        // Paused until the console is attached, so the log holds the whole boot; and destroyed
        // by the host's libvirtd if this connection dies (a controller gone, a link cut).
        let name = hv.create_paused(&vm.xml, true)?;
        let attached = hv.open_console(&name).and_then(|stream| {
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
        hv.resume(&name)?;
        Ok(())
    }

    fn open_channel(
        &self,
        hv: &Hypervisor,
        vm: &PreparedVm,
        _timeout: Duration,
    ) -> Result<UnixStream, ProvisionError> {
        // qemu binds the channel's socket before the domain starts: it is there or never.
        let stream = hv.open_channel(&vm.name, AGENT_CHANNEL)?;
        crate::streams::socket_for(stream, &vm.name)
            .map_err(ProvisionError::io("pump the channel of", &vm.files.dir))
    }

    fn teardown(
        &self,
        hv: &Hypervisor,
        vm: &PreparedVm,
        keep_console_as: Option<&Path>,
    ) -> Result<(), ProvisionError> {
        let mut first: Option<ProvisionError> = None;
        if let Err(e) = hv.destroy(&vm.name) {
            tracing::warn!("teardown of {}: {e}", vm.name);
            first = Some(e.into());
        }
        // The domain is gone (or its host is): the console stream ends, its copy is whole.
        if let Some(console) = self.consoles().remove(&vm.name) {
            let _ = console.wait(CONSOLE_END_WAIT);
        }
        if let Some(dest) = keep_console_as {
            if let Err(e) = vm::keep_console(&vm.files, dest) {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = self.delete_volumes(hv, &vm.files.job_id) {
            tracing::warn!("teardown of {}: {e}", vm.name);
            first.get_or_insert(e);
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
}
