//! One pool at run time: its configuration, its VM slots (`max_vms`), how many jobs run on it,
//! its libvirt connection and its package source. Knows nothing of jobs or of how VMs are booted.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use minion_fetch::PackageSource;
use minion_provisioning::{Hypervisor, HypervisorError};
use tokio::sync::Semaphore;

use crate::config::PoolConfig;

pub struct Pool {
    pub name: String,
    pub cfg: PoolConfig,
    /// One permit per VM allowed alive (a parked pre-booted VM holds one too); held from pickup
    /// (or boot) until the VM is torn down.
    pub slots: Arc<Semaphore>,
    running: AtomicU32,
    hv: Mutex<Option<Arc<Hypervisor>>>,
    /// Where the guests' `environment` packages come from (`packages = DIR`).
    pub packages: Option<Arc<PackageSource>>,
}

impl Pool {
    pub fn new(name: &str, cfg: &PoolConfig, packages: Option<Arc<PackageSource>>) -> Pool {
        Pool {
            name: name.to_string(),
            cfg: cfg.clone(),
            slots: Arc::new(Semaphore::new(cfg.max_vms as usize)),
            running: AtomicU32::new(0),
            hv: Mutex::new(None),
            packages,
        }
    }

    /// The pool's libvirt connection, opened on first use. `Hypervisor` itself reconnects when
    /// libvirtd restarts under it, so the one handle lives as long as the pool. Blocks.
    pub fn hypervisor(&self) -> Result<Arc<Hypervisor>, HypervisorError> {
        let mut g = self.hv.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = g.as_ref() {
            return Ok(h.clone());
        }
        let h = Arc::new(Hypervisor::connect(&self.cfg.libvirt_uri)?);
        *g = Some(h.clone());
        Ok(h)
    }

    /// Jobs running on the pool now.
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::SeqCst)
    }

    /// Counts a job as running until the returned guard is dropped.
    pub fn run_one(self: &Arc<Self>) -> RunningJob {
        self.running.fetch_add(1, Ordering::SeqCst);
        RunningJob(self.clone())
    }
}

/// A job counted in [`Pool::running`].
pub struct RunningJob(Arc<Pool>);

impl Drop for RunningJob {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}
