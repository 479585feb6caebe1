//! Pre-booted fresh VMs (`min_ready`): each pool keeps up to `min_ready` VMs booted to the agent's
//! Ready and parked; a job picked up for the pool takes one (skipping provisioning and boot) and a
//! replacement boots in the background. A pre-booted VM still runs exactly one job and is then
//! destroyed like any other; one that never gets a job is destroyed at shutdown (or, after a
//! crash, by the next start's reconcile: its domain carries this daemon's mark like a job's).
//!
//! ```text
//! refiller: (parked + booting < min_ready and a free slot) → provision → start → connect → handshake
//!           → parked (a watcher task holds the session, reading Heartbeats)
//! parked --taken by a job--> the job's runner (its VmGuard tears it down at the job's end)
//! parked --EOF / garbage / agent error--> destroyed, refill (boot failures back off)
//! ```
//!
//! A parked VM holds one of the pool's `max_vms` slots, so it counts against the limit; the
//! dispatcher takes a parked VM before it waits for a slot, and the refiller only takes a slot
//! nobody waits for (`try_acquire`: a released slot goes to a waiting job first).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minion_channel::ChannelError;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::guestvm::{self, ReadyVm};
use crate::pool::Pool;
use crate::snapshots::Snapshots;

/// A pre-booted VM's id (its VM dir `<state_dir>/vms/<id>/`, its domain `minion-<id>`, and its
/// NoCloud instance-id) is this prefix and a UUID of its own; the job's UUID reaches the guest
/// in the Job frame.
pub const ID_PREFIX: &str = "prebooted-";
/// Pause after the first failed boot; doubles per consecutive failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The refiller also looks every so often, in case a wake-up was missed.
const RECHECK: Duration = Duration::from_secs(1);
/// At shutdown, how long booting and parked VMs get to be torn down before the backstop
/// (`Daemon::destroy_vms`) runs regardless.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(60);

/// A pre-booted VM with the pool slot it occupies.
pub struct ParkedVm {
    pub vm: ReadyVm,
    pub permit: OwnedSemaphorePermit,
}

type Reply = oneshot::Sender<ParkedVm>;

struct Entry {
    id: String,
    /// The `[hosts]` host it runs on, if any.
    host: Option<String>,
    /// The watcher hands the VM over on the sender it receives here.
    take: oneshot::Sender<Reply>,
}

/// One pool's pre-booted VMs.
pub struct Prebooted {
    pool: Arc<Pool>,
    snapshots: Arc<Snapshots>,
    parked: Mutex<Vec<Entry>>,
    booting: AtomicU32,
    /// A VM was parked (the dispatcher may be waiting for one).
    pub parked_changed: Notify,
    /// Something changed that may call for a boot: a VM taken or dead, a slot freed.
    refill: Notify,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Prebooted {
    pub fn new(pool: &Arc<Pool>, snapshots: &Arc<Snapshots>) -> Arc<Prebooted> {
        Arc::new(Prebooted {
            pool: pool.clone(),
            snapshots: snapshots.clone(),
            parked: Mutex::default(),
            booting: AtomicU32::new(0),
            parked_changed: Notify::new(),
            refill: Notify::new(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    /// Starts the pool's refiller (it boots while fewer than `min_ready` are parked or booting,
    /// and the pool is not drained).
    pub fn start(self: &Arc<Self>) {
        self.tasks.spawn(refiller(self.clone()));
    }

    /// Destroys parked VMs beyond what the pool wants now (fewer after `min_ready` went down,
    /// none while drained). A dropped entry's watcher destroys its VM and frees its slot.
    pub fn trim(&self) {
        let want = if self.pool.drained() {
            0
        } else {
            self.pool.min_ready()
        } as usize;
        let mut parked = self.lock();
        while parked.len() > want {
            parked.pop();
        }
        drop(parked);
        self.refill.notify_one();
    }

    /// Destroys the VMs parked on `[hosts]` host `host` (drained: it is to be emptied); the
    /// pool boots their replacements on its other hosts.
    pub fn leave_host(&self, host: &str) {
        let mut parked = self.lock();
        let before = parked.len();
        parked.retain(|e| e.host.as_deref() != Some(host));
        let gone = before - parked.len();
        drop(parked);
        if gone > 0 {
            tracing::info!(pool = %self.pool.name, host, vms = gone, "parked VMs on a drained host destroyed");
            self.refill.notify_one();
        }
    }

    /// Stops booting, and destroys every booting and parked VM of the pool (waits for it,
    /// bounded).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!(pool = %self.pool.name, "pre-booted VMs not torn down in time: the final sweep destroys them");
        }
    }

    /// A parked VM for a job, if the pool has one (it leaves the pool; a replacement is asked
    /// for).
    pub async fn take(&self) -> Option<ParkedVm> {
        loop {
            let entry = {
                let mut parked = self.lock();
                if parked.is_empty() {
                    return None;
                }
                parked.remove(0)
            };
            let (tx, rx) = oneshot::channel();
            // A watcher that is gone (its VM died just now) cannot answer: try the next one.
            if entry.take.send(tx).is_err() {
                continue;
            }
            if let Ok(vm) = rx.await {
                self.refill.notify_one();
                return Some(vm);
            }
        }
    }

    /// Parks `vm`: a watcher task holds it until a job takes it, it dies, or shutdown.
    pub fn park(self: &Arc<Self>, vm: ParkedVm) {
        let (tx, rx) = oneshot::channel();
        let id = vm.vm.id.clone();
        let host = vm.vm.guard.host().map(|h| h.name.clone());
        // Registered before the watcher runs, so a VM that dies at once is still removed.
        self.lock().push(Entry {
            id: id.clone(),
            host,
            take: tx,
        });
        self.tasks.spawn(watch(self.clone(), vm, rx));
        self.parked_changed.notify_one();
    }

    /// VMs parked, Ready for a job.
    pub fn ready(&self) -> u32 {
        self.lock().len() as u32
    }

    /// VMs being booted to be parked.
    pub fn booting(&self) -> u32 {
        self.booting.load(Ordering::SeqCst)
    }

    /// A pool slot was freed (a job's VM is gone).
    pub fn slot_freed(&self) {
        self.refill.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove(&self, id: &str) {
        self.lock().retain(|e| e.id != id);
    }
}

/// Keeps the parked VM's session read (Heartbeats) until it is taken, dies, or the daemon stops.
async fn watch(pb: Arc<Prebooted>, mut vm: ParkedVm, mut take: oneshot::Receiver<Reply>) {
    enum Next {
        Taken(Reply),
        Dropped,
        Stop,
        Dead(ChannelError),
    }
    let id = vm.vm.id.clone();
    // The agent sends Heartbeats from Ready on (agent/src/serve.rs): a parked guest silent for
    // the heartbeat timeout is hung; a dead one closes the stream (qemu exits, agent powers off).
    let next = tokio::select! {
        biased;
        _ = pb.stop.cancelled() => Next::Stop,
        r = &mut take => match r {
            Ok(reply) => Next::Taken(reply),
            Err(_) => Next::Dropped,
        },
        e = vm.vm.session.idle(Some(guestvm::session_limits().heartbeat_timeout)) => Next::Dead(e),
    };
    let vm = match next {
        Next::Taken(reply) => match reply.send(vm) {
            Ok(()) => return,
            // The taker went away (daemon stopping): the VM is still ours to destroy.
            Err(vm) => vm,
        },
        Next::Dropped | Next::Stop => {
            pb.remove(&id);
            vm
        }
        Next::Dead(e) => {
            pb.remove(&id);
            tracing::warn!(pool = %pb.pool.name, vm = %id, "parked VM is dead: {e}; destroying it");
            vm
        }
    };
    destroy(vm.vm).await;
    drop(vm.permit);
    pb.refill.notify_one();
}

async fn destroy(vm: ReadyVm) {
    let id = vm.id;
    match vm.guard.teardown().await {
        Ok(()) => tracing::info!(vm = %id, "pre-booted VM destroyed"),
        Err(e) => tracing::error!(vm = %id, "teardown of pre-booted VM: {e}"),
    }
}

/// Boots VMs while the pool has fewer than `min_ready` parked or booting and a slot nobody
/// waits for. One boot at a time: on 2 shared cores parallel boots only slow each other down.
async fn refiller(pb: Arc<Prebooted>) {
    let pool = pb.pool.clone();
    let mut failures: u32 = 0;
    loop {
        if pb.stop.is_cancelled() {
            return;
        }
        let have = pb.ready() + pb.booting();
        if have < pool.min_ready() && !pool.drained() {
            if let Ok(permit) = pool.slots.clone().try_acquire_owned() {
                pb.booting.fetch_add(1, Ordering::SeqCst);
                let booted = boot(&pb).await;
                pb.booting.fetch_sub(1, Ordering::SeqCst);
                match booted {
                    Ok(vm) => {
                        failures = 0;
                        pb.park(ParkedVm { vm, permit });
                        continue;
                    }
                    Err(e) if pb.stop.is_cancelled() => {
                        tracing::debug!(pool = %pool.name, "boot abandoned at shutdown: {e}");
                        return;
                    }
                    Err(e) => {
                        drop(permit);
                        failures = failures.saturating_add(1);
                        let wait = backoff(failures);
                        tracing::warn!(
                            pool = %pool.name,
                            failures,
                            retry_in_s = wait.as_secs(),
                            "pre-booting a VM failed: {e}"
                        );
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = pb.stop.cancelled() => return,
                        }
                        continue;
                    }
                }
            }
        }
        tokio::select! {
            _ = pb.refill.notified() => {}
            _ = pool.changed.notified() => {}
            _ = tokio::time::sleep(RECHECK) => {}
            _ = pb.stop.cancelled() => return,
        }
    }
}

/// Pause before the next boot after `failures` consecutive failed ones.
fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1u32 << shift).min(MAX_BACKOFF)
}

/// Boots one VM up to the agent's Ready (on any error or at shutdown it is torn down first).
async fn boot(pb: &Prebooted) -> Result<ReadyVm, guestvm::BootError> {
    let id = format!("{ID_PREFIX}{}", uuid::Uuid::new_v4());
    let t0 = Instant::now();
    let vm = pb
        .snapshots
        .start_vm(&pb.pool, &id, None, &pb.stop, &mut |_| {})
        .await?;
    tracing::info!(
        pool = %pb.pool.name,
        vm = %id,
        agent = %vm.session.agent_version(),
        provision_ms = (t0.elapsed() - vm.boot).as_secs_f64() * 1000.0,
        boot_ms = vm.boot.as_secs_f64() * 1000.0,
        "pre-booted VM ready"
    );
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let secs: Vec<u64> = [1, 2, 3, 4, 7, 8, 100, u32::MAX]
            .into_iter()
            .map(|f| backoff(f).as_secs())
            .collect();
        assert_eq!(secs, [1, 2, 4, 8, 60, 60, 60, 60]);
    }
}
