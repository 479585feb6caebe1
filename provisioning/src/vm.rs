//! One VM's whole preparation, and its whole teardown, each as one call, so every path of the
//! daemon (success, failure, timeout, cancel, restart) cleans up the same way. Built only from the
//! other modules; all of it blocks (use `spawn_blocking`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::accel::Accel;
use crate::domain::{self, DomainSpec};
use crate::error::ProvisionError;
use crate::hypervisor::Hypervisor;
use crate::image::Image;
use crate::seed::{self, SeedSpec};
use crate::vmfiles::{self, VmFiles};
use crate::{domain_name, overlay};

/// What one VM needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRequest {
    pub state_dir: PathBuf,
    pub job_id: String,
    pub image: Image,
    pub accel: Accel,
    /// The static agent binary for the seed.
    pub agent_binary: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The guest's host name (NoCloud `local-hostname`).
    pub hostname: String,
    /// The VM's NIC; `None` = no NIC.
    pub network: Option<crate::domain::Nic>,
    /// The VM's disk (its overlay) grown to this many bytes; `None`: the image's size. The
    /// guest's own tools grow its file system (cloud-init's growpart in a cloud image).
    pub disk_bytes: Option<u64>,
    /// Where the VM's host holds the image, for a host reached through storage volumes
    /// ([`crate::backend::StorageVolumes`]); `None` on the local file backend.
    pub host_image: Option<crate::hostimage::HostImage>,
    /// This VM is the template of snapshot `key`: on storage volumes its disks are made under
    /// the snapshot's names, to become the snapshot when it is frozen.
    pub template_of: Option<String>,
}

/// Where the time of [`prepare`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrepareTimings {
    pub overlay: Duration,
    pub seed: Duration,
    /// A restored VM's own copy of its snapshot's save image (zero for a booted VM).
    pub saved_state: Duration,
    pub render: Duration,
}

/// A VM ready to start: its files exist, its XML is rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVm {
    pub name: String,
    pub files: VmFiles,
    pub spec: DomainSpec,
    pub xml: String,
    pub timings: PrepareTimings,
    /// The template of snapshot `key` (see [`VmRequest::template_of`]).
    pub template_of: Option<String>,
    /// A VM to be restored: its own save image, where its host's libvirtd reads it.
    pub saved_state: Option<PathBuf>,
}

/// Creates the VM directory, overlay and seed, and renders the domain XML. On failure nothing is
/// left behind. A directory left by an earlier attempt of the same job is an error (reconcile or
/// [`teardown`] it first) rather than silently reused.
pub fn prepare(req: &VmRequest) -> Result<PreparedVm, ProvisionError> {
    in_new_dir(req, |files| build(req, files))
}

/// Creates the VM's directory (refusing one an earlier attempt left), runs `build` in it, and
/// removes the directory again when `build` fails.
pub(crate) fn in_new_dir(
    req: &VmRequest,
    build: impl FnOnce(&VmFiles) -> Result<PreparedVm, ProvisionError>,
) -> Result<PreparedVm, ProvisionError> {
    let files = VmFiles::new(&req.state_dir, &req.job_id)?;
    if files.exists() {
        return Err(ProvisionError::invalid(
            "job id",
            format!(
                "{} already exists: a VM of job {} was not cleaned up",
                files.dir.display(),
                req.job_id
            ),
        ));
    }
    files.create()?;
    let built = build(&files);
    if built.is_err() {
        if let Err(e) = files.remove_all() {
            tracing::warn!("after a failed prepare: {e}");
        }
    }
    built
}

fn build(req: &VmRequest, files: &VmFiles) -> Result<PreparedVm, ProvisionError> {
    let mut timings = PrepareTimings::default();
    let t = Instant::now();
    overlay::create_from_template(
        &req.image.disk_path(),
        req.image.manifest.format,
        &files.overlay,
        &overlay::templates_dir(&req.state_dir),
    )?;
    if let Some(bytes) = req.disk_bytes {
        overlay::grow(&files.overlay, bytes)?;
    }
    timings.overlay = t.elapsed();

    let t = Instant::now();
    let seed_spec = SeedSpec {
        instance_id: req.job_id.clone(),
        hostname: req.hostname.clone(),
        agent_binary: req.agent_binary.clone(),
    };
    seed::write(&seed_spec, &files.seed)?;
    timings.seed = t.elapsed();
    rendered(req, files, timings)
}

/// The VM's spec and XML rendered: the last step of both preparations.
fn rendered(
    req: &VmRequest,
    files: &VmFiles,
    mut timings: PrepareTimings,
) -> Result<PreparedVm, ProvisionError> {
    let t = Instant::now();
    let spec = domain_spec(req, files);
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

fn domain_spec(req: &VmRequest, files: &VmFiles) -> DomainSpec {
    DomainSpec {
        name: domain_name(&req.job_id),
        job_id: req.job_id.clone(),
        owner: owner_of(&req.state_dir),
        vcpus: req.vcpus,
        memory_mib: req.memory_mib,
        accel: req.accel.clone(),
        image: req.image.clone(),
        overlay: files.overlay.clone(),
        seed: files.seed.clone(),
        kernel: req.image.kernel_path(),
        initrd: req.image.initrd_path(),
        console_log: Some(files.console_log.clone()),
        channel_socket: Some(files.channel_socket.clone()),
        network: req.network.clone(),
    }
}

/// Copies the VM's console log to `dest`. A VM that never started has none: nothing to keep.
pub fn keep_console(files: &VmFiles, dest: &Path) -> Result<(), ProvisionError> {
    match std::fs::copy(&files.console_log, dest) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ProvisionError::Io {
            op: "keep the console log as",
            path: dest.to_path_buf(),
            source,
        }),
    }
}

/// Destroys the domain (gone already is fine), optionally copies the console log out (after the
/// destroy, so it is complete), and deletes the VM directory. Every step is attempted even when an
/// earlier one fails; the first error is returned. Idempotent.
pub fn teardown(
    hv: &Hypervisor,
    name: &str,
    files: &VmFiles,
    keep_console_as: Option<&Path>,
) -> Result<(), ProvisionError> {
    let mut first: Option<ProvisionError> = None;
    if let Err(e) = hv.destroy(name) {
        tracing::warn!("teardown of {name}: {e}");
        first = Some(e.into());
    }
    if let Some(dest) = keep_console_as {
        if let Err(e) = keep_console(files, dest) {
            tracing::warn!("teardown of {name}: {e}");
            first.get_or_insert(e);
        }
    }
    if let Err(e) = files.remove_all() {
        tracing::warn!("teardown of {name}: {e}");
        first.get_or_insert(e);
    }
    first.map_or(Ok(()), Err)
}

/// What [`reconcile`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Marked domains destroyed (no live job owned them).
    pub destroyed: Vec<String>,
    /// VM directories deleted (no live job owned them).
    pub removed_dirs: Vec<PathBuf>,
    /// Volumes deleted on the host (no live job owned them).
    pub deleted_volumes: Vec<String>,
    /// What could not be cleaned, as messages (the rest was still attempted).
    pub errors: Vec<String>,
}

/// The owner mark of the domains a daemon with this state directory makes. A state directory
/// belongs to one daemon at a time (its sled store is locked), so it names the daemon; a later
/// daemon on the same directory inherits, and cleans up, what the earlier one left.
pub fn owner_of(state_dir: &Path) -> String {
    state_dir.to_string_lossy().into_owned()
}

/// After a daemon restart: destroys every domain marked as this daemon's ([`owner_of`]
/// `state_dir`) and deletes every VM directory under `state_dir`, whose VM id `is_live` does not
/// claim ([`destroy_marked`], then [`sweep_dirs`]).
pub fn reconcile(
    hv: &Hypervisor,
    state_dir: &Path,
    is_live: &dyn Fn(&str) -> bool,
) -> ReconcileReport {
    let mut report = destroy_marked(hv, state_dir, is_live);
    let swept = sweep_dirs(state_dir, is_live);
    report.removed_dirs = swept.removed_dirs;
    report.errors.extend(swept.errors);
    report
}

/// Destroys every domain on `hv` marked as this daemon's ([`owner_of`] `state_dir`) whose VM id
/// `is_live` does not claim. Domains of other daemons on the same libvirtd are never touched
/// (the original system's concurrent instances removed each other's VMs).
pub fn destroy_marked(
    hv: &Hypervisor,
    state_dir: &Path,
    is_live: &dyn Fn(&str) -> bool,
) -> ReconcileReport {
    let mut report = ReconcileReport::default();
    let owner = owner_of(state_dir);
    match hv.list_marked() {
        Ok(marked) => {
            let (ours, theirs): (Vec<_>, Vec<_>) = marked
                .into_iter()
                .partition(|m| m.owner.as_deref() == Some(owner.as_str()));
            if !theirs.is_empty() {
                tracing::debug!(
                    count = theirs.len(),
                    "marked domains of other daemons (or unowned) left alone"
                );
            }
            for m in ours.into_iter().filter(|m| !is_live(&m.job_id)) {
                match hv.destroy(&m.name) {
                    Ok(()) => report.destroyed.push(m.name),
                    Err(e) => report.errors.push(e.to_string()),
                }
            }
        }
        Err(e) => report.errors.push(e.to_string()),
    }
    if !report.destroyed.is_empty() || !report.errors.is_empty() {
        tracing::info!(
            uri = %hv.uri(),
            destroyed = report.destroyed.len(),
            errors = report.errors.len(),
            "reconciled leftover domains"
        );
    }
    report
}

/// Deletes every VM directory under `state_dir` whose VM id `is_live` does not claim (every one
/// is this daemon's: it is under its state dir).
pub fn sweep_dirs(state_dir: &Path, is_live: &dyn Fn(&str) -> bool) -> ReconcileReport {
    let mut report = ReconcileReport::default();
    match vmfiles::list_job_dirs(state_dir) {
        Ok(ids) => {
            for id in ids.into_iter().filter(|id| !is_live(id)) {
                let dir = vmfiles::vms_dir(state_dir).join(&id);
                let removed = match VmFiles::new(state_dir, &id) {
                    Ok(files) => files.remove_all(),
                    // Not a name we would have made: still ours to clean (it is under vms/).
                    Err(_) => {
                        std::fs::remove_dir_all(&dir).map_err(ProvisionError::io("remove", &dir))
                    }
                };
                match removed {
                    Ok(()) => report.removed_dirs.push(dir),
                    Err(e) => report.errors.push(e.to_string()),
                }
            }
        }
        Err(e) => report.errors.push(e.to_string()),
    }
    if !report.removed_dirs.is_empty() || !report.errors.is_empty() {
        tracing::info!(
            removed_dirs = report.removed_dirs.len(),
            errors = report.errors.len(),
            "reconciled leftover VM directories"
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::load;
    use std::fs;

    fn fixture(root: &Path) -> (Image, PathBuf) {
        let img_dir = root.join("images/tiny");
        fs::create_dir_all(&img_dir).expect("mkdir");
        crate::command::run(
            "qemu-img",
            [
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                img_dir.join("disk.qcow2").as_os_str(),
                "16M".as_ref(),
            ] as [&std::ffi::OsStr; 6],
        )
        .expect("base disk");
        fs::write(img_dir.join("vmlinux"), b"k").expect("kernel");
        fs::write(
            img_dir.join("manifest.json"),
            r#"{"name":"tiny","arch":"x86_64","format":"qcow2","disk":"disk.qcow2","kernel":"vmlinux","cmdline":"console=ttyS0","agent_start":"init"}"#,
        )
        .expect("manifest");
        let agent = root.join("agent");
        fs::write(&agent, b"#!/bin/sh\n").expect("agent");
        (load(&root.join("images"), "tiny").expect("image"), agent)
    }

    fn request(root: &Path, job: &str) -> VmRequest {
        let (image, agent_binary) = fixture(root);
        VmRequest {
            state_dir: root.join("state"),
            job_id: job.into(),
            image,
            accel: Accel::Tcg {
                reason: "test".into(),
            },
            agent_binary,
            vcpus: 1,
            memory_mib: 256,
            hostname: "minion".into(),
            network: None,
            disk_bytes: None,
            host_image: None,
            template_of: None,
        }
    }

    #[test]
    fn prepare_start_teardown_on_the_test_driver() {
        if !minion_testenv::require(
            "prepare_start_teardown_on_the_test_driver",
            &[minion_testenv::Need::Program("qemu-img")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let req = request(tmp.path(), "vm-cycle-1");
        let vm = prepare(&req).expect("prepared");
        assert!(vm.files.overlay.is_file() && vm.files.seed.is_file());
        assert_eq!(vm.name, "minion-vm-cycle-1");
        assert!(vm.xml.contains("id=\"vm-cycle-1\""));
        let err = prepare(&req).expect_err("a second prepare of the same job is refused");
        assert!(err.to_string().contains("was not cleaned up"), "{err}");

        let hv = Hypervisor::connect("test:///default").expect("test driver");
        hv.create_transient(&vm.xml).expect("started");
        fs::write(&vm.files.console_log, b"console text").expect("fake console"); // the test driver runs no qemu
        let kept = tmp.path().join("console.kept");
        teardown(&hv, &vm.name, &vm.files, Some(&kept)).expect("teardown");
        assert_eq!(fs::read(&kept).expect("kept"), b"console text");
        assert!(!hv.is_active(&vm.name).expect("is_active"));
        assert!(!vm.files.dir.exists());
        teardown(&hv, &vm.name, &vm.files, Some(&kept)).expect("teardown is idempotent");
    }

    #[test]
    fn failed_prepare_leaves_nothing() {
        if !minion_testenv::require(
            "failed_prepare_leaves_nothing",
            &[minion_testenv::Need::Program("qemu-img")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let mut req = request(tmp.path(), "vm-fail-1");
        req.agent_binary = tmp.path().join("missing-agent");
        let err = prepare(&req).expect_err("no agent");
        assert!(err.to_string().contains("missing-agent"), "{err}");
        assert!(!vmfiles::vms_dir(&req.state_dir).join("vm-fail-1").exists());
        req.agent_binary = tmp.path().join("agent");
        req.vcpus = 0;
        assert!(prepare(&req).is_err());
        assert!(!vmfiles::vms_dir(&req.state_dir).join("vm-fail-1").exists());
    }

    #[test]
    fn reconcile_spares_live_jobs_and_cleans_the_rest() {
        if !minion_testenv::require(
            "reconcile_spares_live_jobs_and_cleans_the_rest",
            &[minion_testenv::Need::Program("qemu-img")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let hv = Hypervisor::connect("test:///default").expect("test driver");
        let live = prepare(&request(tmp.path(), "rec-live-1")).expect("live");
        let dead = prepare(&request(tmp.path(), "rec-dead-1")).expect("dead");
        hv.create_transient(&live.xml).expect("live started");
        hv.create_transient(&dead.xml).expect("dead started");
        let stray = vmfiles::vms_dir(&tmp.path().join("state")).join("stray dir");
        fs::create_dir_all(&stray).expect("stray");

        // The test driver's domains are shared by every test thread of this process: only the
        // ones this test made are "not live", so a concurrent test's domains are spared.
        let report = reconcile(&hv, &tmp.path().join("state"), &|id| {
            id != "rec-dead-1" && id != "stray dir"
        });
        assert!(report.errors.is_empty(), "{report:?}");
        assert!(
            report.destroyed.contains(&"minion-rec-dead-1".to_string()),
            "{report:?}"
        );
        assert!(
            !report.destroyed.contains(&"minion-rec-live-1".to_string()),
            "{report:?}"
        );
        assert!(hv.is_active("minion-rec-live-1").expect("live"));
        assert!(!hv.is_active("minion-rec-dead-1").expect("dead"));
        assert!(live.files.dir.exists() && !dead.files.dir.exists() && !stray.exists());
        teardown(&hv, &live.name, &live.files, None).expect("cleanup");
    }

    #[test]
    fn reconcile_leaves_the_domains_of_another_daemon_alone() {
        if !minion_testenv::require(
            "reconcile_leaves_the_domains_of_another_daemon_alone",
            &[minion_testenv::Need::Program("qemu-img")],
        ) {
            return;
        }
        // Two daemons (two state directories) on one libvirtd: each one's restart must not destroy
        // the other's running VMs, whose jobs it does not know.
        let ours = tempfile::tempdir().expect("tmp");
        let theirs = tempfile::tempdir().expect("tmp");
        let hv = Hypervisor::connect("test:///default").expect("test driver");
        let mine = prepare(&request(ours.path(), "own-dead-1")).expect("ours");
        let other = prepare(&request(theirs.path(), "own-other-1")).expect("theirs");
        assert!(
            other.xml.contains(&format!(
                "owner=\"{}\"",
                theirs.path().join("state").display()
            )),
            "{}",
            other.xml
        );
        hv.create_transient(&mine.xml).expect("ours started");
        hv.create_transient(&other.xml).expect("theirs started");
        let marked = hv.list_marked().expect("list");
        let owner = |name: &str| {
            marked
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| m.owner.clone())
        };
        assert_eq!(
            owner("minion-own-other-1"),
            Some(owner_of(&theirs.path().join("state")))
        );

        // Neither job is live in our store.
        let report = reconcile(&hv, &ours.path().join("state"), &|id| {
            id != "own-dead-1" && id != "own-other-1"
        });
        assert!(report.errors.is_empty(), "{report:?}");
        assert_eq!(report.destroyed, vec!["minion-own-dead-1".to_string()]);
        assert!(!hv.is_active("minion-own-dead-1").expect("ours"));
        assert!(hv
            .is_active("minion-own-other-1")
            .expect("theirs still runs"));
        assert!(
            other.files.dir.exists(),
            "their files are not under our state dir"
        );
        teardown(&hv, &other.name, &other.files, None).expect("cleanup");
    }
}
