//! One fresh VM, from nothing to an agent that is Ready for a job, and back to nothing: the one
//! path every VM takes, whether it boots for a job that is waiting or is pre-booted and parked.
//!
//! ```text
//! boot_to_ready: image + libvirt connection + overlay/seed/XML (Prepared) → domain started
//!                (DomainStarted) → channel connected → Hello/Ready handshake → ReadyVm
//! any error or cancel on the way: the VM is torn down before boot_to_ready returns
//! ReadyVm.guard.teardown(): domain destroyed, files removed (console log kept if asked)
//! ```
//!
//! It takes a narrow context (paths, accelerator, the pool) and knows nothing of jobs.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minion_channel::{handshake, ChannelError, Limits, ReadySession};
use minion_provisioning::backend::VmBackend;
use minion_provisioning::vm::PreparedVm;
use minion_provisioning::{accel::Accel, image, vm, Hypervisor, HypervisorError, ProvisionError};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, GuestNetwork};
use crate::pool::Pool;
use crate::recorder::Recorder;

/// How long the channel socket may take to appear after the domain starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a cancelled (or timed-out) guest gets to stop its task and send what it has.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// The guest end of a VM past the agent's Ready.
pub type Session = ReadySession<UnixStream>;

/// What making VMs needs from the daemon's configuration.
#[derive(Debug, Clone)]
pub struct VmContext {
    pub state_dir: PathBuf,
    pub images_dir: PathBuf,
    pub agent_binary: PathBuf,
    pub accel: Accel,
    /// Free space kept on the state dir's filesystem while artifacts are written.
    pub keep_free_bytes: u64,
    /// Every VM this daemon owns right now (the reaper leaves these alone).
    pub live: LiveVms,
    /// Boot failures and teardown times.
    pub recorder: Recorder,
    /// Where the pools run their VMs: `[hosts]`, and this machine's libvirtd as host `local`.
    pub hosts: Arc<crate::hosts::Hosts>,
}

/// The VMs this daemon owns right now, by VM id: claimed before a VM's first file is made,
/// released once its teardown has removed everything (or it was abandoned at shutdown).
#[derive(Debug, Clone, Default)]
pub struct LiveVms(Arc<Mutex<HashSet<String>>>);

impl LiveVms {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claim(&self, id: &str) -> Claim {
        self.lock().insert(id.to_string());
        Claim {
            live: self.clone(),
            id: id.to_string(),
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains(id)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A VM id held in [`LiveVms`] until dropped.
#[derive(Debug)]
struct Claim {
    live: LiveVms,
    id: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.live.lock().remove(&self.id);
    }
}

impl VmContext {
    pub fn new(cfg: &Config, accel: Accel) -> VmContext {
        VmContext {
            state_dir: cfg.state_dir.clone(),
            images_dir: cfg.images_dir.clone(),
            agent_binary: cfg.agent_binary.clone(),
            accel,
            keep_free_bytes: cfg.keep_free_mib.saturating_mul(1024 * 1024),
            live: LiveVms::default(),
            recorder: Recorder::default(),
            hosts: Arc::new(crate::hosts::Hosts::new(&cfg.state_dir, &cfg.hosts)),
        }
    }

    /// The limits of a job's session (the handshake's are [`session_limits`]).
    pub fn job_limits(&self) -> Limits {
        Limits {
            keep_free_bytes: self.keep_free_bytes,
            ..session_limits()
        }
    }
}

/// The session limits of every guest.
pub fn session_limits() -> Limits {
    Limits {
        cancel_grace: CANCEL_GRACE,
        ..Limits::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("image {name}: {source}")]
    Image {
        name: String,
        #[source]
        source: ProvisionError,
    },
    #[error("libvirt {uri}: {source}")]
    Libvirt {
        uri: String,
        #[source]
        source: HypervisorError,
    },
    #[error("provisioning: {0}")]
    Provision(#[source] ProvisionError),
    #[error("starting the domain: {0}")]
    Start(#[source] ProvisionError),
    #[error("guest channel: {0}")]
    Channel(#[source] ProvisionError),
    /// The `[hosts]` host stopped answering while the VM booted.
    #[error("host {uri} lost: {error}")]
    HostLost { uri: String, error: String },
    /// The pool's hosts: none configured, or the wait for one was cancelled.
    #[error("{0}")]
    Host(#[source] crate::hosts::LeaseError),
    #[error("guest handshake: {0}")]
    Handshake(#[source] ChannelError),
    /// A libvirt call of the boot that never returned (see [`PAUSE_LIMIT`]).
    #[error("libvirt did not answer {what} within {limit:?}")]
    NoAnswer { what: &'static str, limit: Duration },
    /// `cancel` fired; `while_booting` once the domain had started.
    #[error("{}", if *while_booting { "cancelled while booting" } else { "cancelled" })]
    Cancelled { while_booting: bool },
    #[error("{what} task: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// The image failed its validation boot (`validations`), so no VM of it starts.
    #[error("image {name} failed its validation: {reason} (once it is mended: `minion image validate {name}`)")]
    Unvalidated { name: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error("{0}")]
    Provision(#[source] ProvisionError),
    #[error("teardown task: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("the VM's host is down")]
    HostDown,
    #[error("libvirt did not answer {0} within {1:?}")]
    NoAnswer(&'static str, Duration),
}

/// How long the domain's creation or restore may take (qemu's start; the first call after
/// libvirtd starts waits ~8 s for its capability probing) before the boot fails.
const START_LIMIT: Duration = Duration::from_secs(120);

/// How long a pause may take before the VM is torn down without it. libvirt 9.0's client has
/// been seen to never return a call whose reply libvirtd had sent (a virDomainLookupByName for
/// the pause, on a connection other threads kept using), and a job must not wait on it forever.
const PAUSE_LIMIT: Duration = Duration::from_secs(20);

/// How a VM comes to life.
#[derive(Debug, Clone)]
pub enum Start {
    /// Booted from its image: kernel, init, agent.
    Boot,
    /// Restored from snapshot `key`'s saved memory (on the VM's host): the agent is already
    /// running, waiting for Hello.
    Restore(String),
    /// Booted as the template of snapshot `key`, to be frozen into it.
    Template(String),
}

impl BootStep {
    /// Its place in the order steps come in.
    pub fn index(self) -> usize {
        match self {
            BootStep::Prepared { .. } => 0,
            BootStep::DomainStarted => 1,
        }
    }
}

/// Steps of [`boot_to_ready`] its caller hears about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootStep {
    /// The VM's files exist and its XML is rendered; `restored`: it is to be restored from a
    /// snapshot rather than booted.
    Prepared { restored: bool },
    /// libvirt started the domain.
    DomainStarted,
}

/// A VM whose agent is Ready and has no job yet.
pub struct ReadyVm {
    pub id: String,
    pub guard: VmGuard,
    pub session: Session,
    /// Domain start → Ready.
    pub boot: Duration,
}

/// A VM that must be torn down. `Drop` is the backstop for a task that is aborted or panics; the
/// normal paths call [`VmGuard::teardown`] and await it.
pub struct VmGuard {
    hv: Arc<Hypervisor>,
    backend: Arc<dyn VmBackend>,
    vm: PreparedVm,
    keep_console: Option<PathBuf>,
    done: bool,
    /// Released when the teardown has removed everything.
    claim: Option<Claim>,
    /// The VM's slot on its `[hosts]` host; released with the claim.
    lease: Option<crate::hosts::HostLease>,
    recorder: Recorder,
}

impl VmGuard {
    fn new(
        placement: Placement,
        prepared: &PreparedVm,
        keep_console: Option<PathBuf>,
        claim: Claim,
        recorder: Recorder,
    ) -> VmGuard {
        VmGuard {
            hv: placement.hv,
            backend: placement.backend,
            vm: prepared.clone(),
            keep_console,
            done: false,
            claim: Some(claim),
            lease: Some(placement.lease),
            recorder,
        }
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.vm.name
    }

    /// The host the VM runs on (`None` once its teardown let go of it).
    pub fn host(&self) -> Option<&Arc<crate::hosts::Host>> {
        self.lease.as_ref().map(|l| &l.host)
    }

    fn host_down(&self) -> bool {
        self.host().is_some_and(|h| !h.is_up())
    }

    /// A new connection to the VM's agent channel: a kept or restarted VM's agent waits for one.
    pub async fn open_channel(&self, timeout: Duration) -> Result<UnixStream, BootError> {
        open_channel(&self.hv, &self.backend, &self.vm, timeout).await
    }

    /// Where the console log is copied at teardown.
    pub fn keep_console_as(&mut self, path: PathBuf) {
        self.keep_console = Some(path);
    }

    /// Powers the VM off (its domain destroyed), keeping its files: [`VmGuard::power_on`] boots
    /// it again from its disk.
    pub async fn power_off(&self) -> Result<(), TeardownError> {
        let (hv, name) = (self.hv.clone(), self.vm.name.clone());
        tokio::task::spawn_blocking(move || hv.destroy(&name))
            .await
            .map_err(TeardownError::Task)?
            .map_err(|e| TeardownError::Provision(e.into()))
    }

    /// Boots the VM again from its disk (after [`VmGuard::power_off`]).
    pub async fn power_on(&self) -> Result<(), BootError> {
        let (hv, backend, vm) = (self.hv.clone(), self.backend.clone(), self.vm.clone());
        tokio::task::spawn_blocking(move || backend.start(&hv, &vm))
            .await
            .map_err(|source| BootError::Task {
                what: "domain",
                source,
            })?
            .map_err(BootError::Provision)
    }

    /// Saves the VM, a template booted with [`Start::Template`] and its agent quiesced, as
    /// snapshot `key` on its host; the domain is gone after. Returns the snapshot's bytes.
    pub async fn freeze(&self, key: &str, meta: serde_json::Value) -> Result<u64, BootError> {
        let (hv, backend, vm, key) = (
            self.hv.clone(),
            self.backend.clone(),
            self.vm.clone(),
            key.to_string(),
        );
        tokio::task::spawn_blocking(move || backend.freeze(&hv, &vm, &key, &meta))
            .await
            .map_err(|source| BootError::Task {
                what: "snapshot",
                source,
            })?
            .map_err(BootError::Provision)
    }

    /// Leaves the VM to someone else (at shutdown, the final sweep destroys it).
    pub fn abandon(mut self) {
        self.done = true;
    }

    /// Pauses the VM: from here on it can do nothing, so its job's end may be written before
    /// [`VmGuard::teardown`] removes it. The console log, complete now, is copied out here.
    pub async fn pause(&mut self) -> Result<(), TeardownError> {
        if self.host_down() {
            return Err(TeardownError::HostDown);
        }
        let (hv, name, files, keep) = (
            self.hv.clone(),
            self.vm.name.clone(),
            self.vm.files.clone(),
            self.keep_console.clone(),
        );
        let paused = tokio::task::spawn_blocking(move || {
            hv.pause(&name)
                .map_err(|e| TeardownError::Provision(e.into()))?;
            if let Some(dest) = keep {
                if let Err(e) = vm::keep_console(&files, &dest) {
                    tracing::warn!("keeping the console log of {name}: {e}");
                }
            }
            Ok(())
        });
        tokio::time::timeout(PAUSE_LIMIT, paused)
            .await
            .map_err(|_| TeardownError::NoAnswer("a pause", PAUSE_LIMIT))?
            .map_err(TeardownError::Task)??;
        // Copied: the teardown need not again (on an error it still does).
        self.keep_console = None;
        Ok(())
    }

    /// Destroys the domain and removes its files (copying the console log first if asked).
    pub async fn teardown(mut self) -> Result<(), TeardownError> {
        self.done = true;
        if self.host_down() {
            // Nothing there can be reached now: the host's libvirtd destroys the domain when
            // our connection dies, and its volumes are reaped when it answers again.
            if let Some(dest) = &self.keep_console {
                let _ = vm::keep_console(&self.vm.files, dest);
            }
            tracing::warn!(domain = %self.vm.name, "its host is down: the VM's volumes are reaped when it is back");
            return self.vm.files.remove_all().map_err(TeardownError::Provision);
        }
        let (hv, backend, vm, keep) = (
            self.hv.clone(),
            self.backend.clone(),
            self.vm.clone(),
            self.keep_console.clone(),
        );
        let t0 = std::time::Instant::now();
        tokio::task::spawn_blocking(move || backend.teardown(&hv, &vm, keep.as_deref()))
            .await
            .map_err(TeardownError::Task)?
            .map_err(TeardownError::Provision)?;
        self.recorder.teardown(t0.elapsed());
        Ok(())
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        if !self.done {
            let (hv, backend, vm) = (self.hv.clone(), self.backend.clone(), self.vm.clone());
            let (claim, lease) = (self.claim.take(), self.lease.take());
            tracing::warn!(domain = %vm.name, "VM dropped without teardown: tearing down now");
            let _ = std::thread::spawn(move || {
                if let Err(e) = backend.teardown(&hv, &vm, None) {
                    tracing::error!(domain = %vm.name, "backstop teardown: {e}");
                }
                drop(claim);
                drop(lease);
            });
        }
    }
}

/// Where a VM runs: its host's connection and backend, and its lease on that host.
struct Placement {
    hv: Arc<Hypervisor>,
    backend: Arc<dyn VmBackend>,
    lease: crate::hosts::HostLease,
}

async fn open_channel(
    hv: &Arc<Hypervisor>,
    backend: &Arc<dyn VmBackend>,
    vm: &PreparedVm,
    timeout: Duration,
) -> Result<UnixStream, BootError> {
    let (hv, backend, vm) = (hv.clone(), backend.clone(), vm.clone());
    let sock = tokio::task::spawn_blocking(move || backend.open_channel(&hv, &vm, timeout))
        .await
        .map_err(|source| BootError::Task {
            what: "channel",
            source,
        })?
        .map_err(BootError::Channel)?;
    sock.set_nonblocking(true)
        .and_then(|()| UnixStream::from_std(sock))
        .map_err(|e| {
            BootError::Channel(ProvisionError::Io {
                op: "register the channel socket",
                path: PathBuf::new(),
                source: e,
            })
        })
}

/// The guest's host name: `minion-` and the first 8 characters of the VM id's UUID.
fn hostname(vm_id: &str) -> String {
    let uuid = &vm_id[vm_id.len().saturating_sub(36)..];
    format!("minion-{}", &uuid[..8.min(uuid.len())])
}

/// Bytes of host entropy each guest's RNG is reseeded with.
const GUEST_ENTROPY: usize = 64;

/// Who VM `vm_id` is, for its Job frame: fresh host entropy, the host's clock now, its host name,
/// a new machine id, and its id as cloud-init's instance id. A restored VM would otherwise wake
/// as its template, sharing RNG state and identity with every other VM restored from it.
pub fn identity(vm_id: &str) -> minion_proto::guest::Identity {
    use std::io::Read;
    let mut entropy = vec![0u8; GUEST_ENTROPY];
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut entropy))
    {
        // The agent refuses an identity without entropy: the job fails rather than run unseeded.
        tracing::error!(vm = %vm_id, "reading host entropy: {e}");
        entropy.clear();
    }
    let clock_unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    minion_proto::guest::Identity {
        entropy,
        clock_unix_ns,
        hostname: hostname(vm_id),
        machine_id: uuid::Uuid::new_v4().simple().to_string(),
        instance_id: vm_id.to_string(),
    }
}

/// The libvirt connection and backend of VMs on `host`. Blocks (a first connection).
pub fn connection(
    host: &crate::hosts::Host,
) -> Result<(Arc<Hypervisor>, Arc<dyn VmBackend>), BootError> {
    let hv = host.hypervisor().map_err(|source| BootError::Libvirt {
        uri: host.cfg.uri.clone(),
        source,
    })?;
    Ok((hv, host.backend.clone()))
}

/// The pool's image from the catalog, as it is now.
pub async fn pool_image(
    ctx: &VmContext,
    pool: &Pool,
) -> Result<minion_provisioning::Image, BootError> {
    let (dir, name) = (ctx.images_dir.clone(), pool.cfg().image.clone());
    tokio::task::spawn_blocking(move || image::load(&dir, &name))
        .await
        .map_err(|source| BootError::Task {
            what: "image",
            source,
        })?
        .map_err(|source| BootError::Image {
            name: pool.cfg().image.clone(),
            source,
        })
}

/// A slot on one of `pool`'s hosts (only `host` if given) for a VM of `image`, waiting for one.
pub async fn lease_on(
    ctx: &VmContext,
    pool: &Pool,
    image: &minion_provisioning::Image,
    host: Option<&str>,
    cancel: &CancellationToken,
) -> Result<crate::hosts::HostLease, BootError> {
    let names = match host {
        Some(h) => vec![h.to_string()],
        None => pool.cfg().hosts.clone(),
    };
    ctx.hosts
        .lease(&names, image, cancel)
        .await
        .map_err(|e| match e {
            crate::hosts::LeaseError::Cancelled => BootError::Cancelled {
                while_booting: false,
            },
            e => BootError::Host(e),
        })
}

/// Image, host (`lease`, else a slot on one of the pool's hosts), then the VM's disks and XML
/// under `vm_id`. On error nothing of the VM exists.
async fn provision(
    ctx: &VmContext,
    pool: &Arc<Pool>,
    vm_id: &str,
    start: &Start,
    lease: Option<crate::hosts::HostLease>,
    cancel: &CancellationToken,
) -> Result<(Placement, PreparedVm), BootError> {
    let image = pool_image(ctx, pool).await?;
    let mut given = lease;
    // A host that cannot be reached is marked down and another lease is waited for: the job
    // never started, so it neither fails nor spends a retry on it.
    let (lease, hv, backend) = loop {
        let lease = match given.take() {
            Some(l) => l,
            None => lease_on(ctx, pool, &image, None, cancel).await?,
        };
        let host = lease.host.clone();
        let connected = tokio::task::spawn_blocking(move || connection(&host))
            .await
            .map_err(|source| BootError::Task {
                what: "connection",
                source,
            })?;
        match connected {
            Ok((hv, backend)) => break (lease, hv, backend),
            Err(e) => {
                tracing::warn!(host = %lease.host.name, vm = %vm_id, "host unreachable, waiting for a host: {e}");
                lease.host.mark_down(e.to_string());
            }
        }
    };
    let (ctx, pool, vm_id, start) = (ctx.clone(), pool.clone(), vm_id.to_string(), start.clone());
    tokio::task::spawn_blocking(move || {
        let host_image = Some(lease.image.clone());
        let req = vm::VmRequest {
            state_dir: ctx.state_dir.clone(),
            job_id: vm_id.clone(),
            image,
            accel: ctx.accel.clone(),
            agent_binary: ctx.agent_binary.clone(),
            vcpus: pool.cfg().vcpus,
            memory_mib: pool.cfg().memory_mib,
            hostname: hostname(&vm_id),
            network: match pool.cfg().network {
                GuestNetwork::None => None,
                GuestNetwork::User => Some(minion_provisioning::Nic::User),
            },
            // A restored VM's disk is its template's, grown when the template was made.
            disk_bytes: pool.cfg().disk_gib.map(|g| g.saturating_mul(1 << 30)),
            host_image,
            template_of: match &start {
                Start::Template(key) => Some(key.clone()),
                _ => None,
            },
        };
        let prepared = match &start {
            Start::Boot | Start::Template(_) => backend.prepare(&hv, &req),
            Start::Restore(key) => backend.prepare_restore(&hv, &req, key),
        }
        .map_err(|e| match e {
            // A host that stopped answering mid-way is the host's fault, not the image's; the
            // next VMs wait for it.
            ProvisionError::Hypervisor(source) if lease.host.lost() => {
                lease.host.mark_down(source.to_string());
                BootError::Libvirt {
                    uri: lease.host.cfg.uri.clone(),
                    source,
                }
            }
            e => BootError::Provision(e),
        })?;
        Ok((Placement { hv, backend, lease }, prepared))
    })
    .await
    .map_err(|source| BootError::Task {
        what: "provisioning",
        source,
    })?
}

/// Provisions VM `vm_id` in `pool`, starts its domain (`start`: booted, or restored from a
/// snapshot) and waits for the agent's Ready. Each
/// wait is bounded (channel connect, the session's ready timeout) and `cancel` stops it at
/// once. On any error the VM is torn down (its console log copied to `keep_console` if given)
/// before this returns.
// Each argument is a different thing the caller decides; a struct of them would only move the list.
#[allow(clippy::too_many_arguments)]
pub async fn boot_to_ready(
    ctx: &VmContext,
    pool: &Arc<Pool>,
    vm_id: &str,
    keep_console: Option<PathBuf>,
    start: &Start,
    lease: Option<crate::hosts::HostLease>,
    cancel: &CancellationToken,
    progress: &mut (dyn FnMut(BootStep) + Send),
) -> Result<ReadyVm, BootError> {
    let claim = ctx.live.claim(vm_id);
    let (placement, prepared) = provision(ctx, pool, vm_id, start, lease, cancel).await?;
    let (hv, backend) = (placement.hv.clone(), placement.backend.clone());
    let t = &prepared.timings;
    tracing::info!(
        vm = %vm_id,
        overlay_ms = t.overlay.as_secs_f64() * 1000.0,
        seed_ms = t.seed.as_secs_f64() * 1000.0,
        saved_state_ms = t.saved_state.as_secs_f64() * 1000.0,
        render_ms = t.render.as_secs_f64() * 1000.0,
        "provisioned"
    );
    let guard = VmGuard::new(
        placement,
        &prepared,
        keep_console,
        claim,
        ctx.recorder.clone(),
    );
    progress(BootStep::Prepared {
        restored: matches!(start, Start::Restore(_)),
    });
    let started = async {
        if cancel.is_cancelled() {
            return Err(BootError::Cancelled {
                while_booting: false,
            });
        }
        let t_start = Instant::now();
        let (hv_, backend_, vm, start) =
            (hv.clone(), backend.clone(), prepared.clone(), start.clone());
        let created = tokio::task::spawn_blocking(move || match &start {
            Start::Boot | Start::Template(_) => backend_.start(&hv_, &vm),
            Start::Restore(_) => backend_.restore(&hv_, &vm),
        });
        tokio::time::timeout(START_LIMIT, created)
            .await
            .map_err(|_| BootError::NoAnswer {
                what: "the domain's start",
                limit: START_LIMIT,
            })?
            .map_err(|source| BootError::Task {
                what: "domain",
                source,
            })?
            .map_err(BootError::Start)?;
        progress(BootStep::DomainStarted);
        if cancel.is_cancelled() {
            return Err(BootError::Cancelled {
                while_booting: false,
            });
        }
        let stream = tokio::select! {
            s = tokio::time::timeout(
                CONNECT_TIMEOUT,
                open_channel(&hv, &backend, &prepared, CONNECT_TIMEOUT),
            ) => s.map_err(|_| BootError::NoAnswer {
                what: "the guest channel's open",
                limit: CONNECT_TIMEOUT,
            })??,
            _ = cancel.cancelled() => return Err(BootError::Cancelled { while_booting: true }),
        };
        let session = match handshake(stream, &session_limits(), cancel.clone()).await {
            Ok(s) => s,
            Err(ChannelError::Cancelled) => {
                return Err(BootError::Cancelled {
                    while_booting: true,
                })
            }
            Err(e) => return Err(BootError::Handshake(e)),
        };
        Ok((session, t_start.elapsed()))
    };
    match started.await {
        Ok((session, boot)) => {
            // The next restores find their save image copied ahead.
            if let Start::Restore(key) = start {
                let key = key.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = backend.stock_spares(&hv, &key) {
                        tracing::warn!(key = %key, "copying a snapshot's save image ahead: {e}");
                    }
                });
            }
            Ok(ReadyVm {
                id: vm_id.to_string(),
                guard,
                session,
                boot,
            })
        }
        Err(e) => {
            if !matches!(e, BootError::Cancelled { .. }) {
                ctx.recorder.boot_failed(&pool.name);
            }
            // A `[hosts]` host that stopped answering fails the boot: the host's fault.
            let e = match guard.host().cloned() {
                Some(h) if !matches!(e, BootError::Cancelled { .. }) => {
                    if h.lost() {
                        BootError::HostLost {
                            uri: h.cfg.uri.clone(),
                            error: e.to_string(),
                        }
                    } else {
                        e
                    }
                }
                _ => e,
            };
            if let Err(te) = guard.teardown().await {
                tracing::error!(vm = %vm_id, "teardown after a failed boot: {te}");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_come_from_the_vm_uuid() {
        assert_eq!(
            hostname("0b9c0c3e-1d7a-4d5e-9f00-123456789abc"),
            "minion-0b9c0c3e"
        );
        assert_eq!(
            hostname("prebooted-0b9c0c3e-1d7a-4d5e-9f00-123456789abc"),
            "minion-0b9c0c3e"
        );
        assert_eq!(hostname("ab"), "minion-ab");
    }
}
