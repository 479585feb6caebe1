//! One pool at run time: its configuration, its VM slots (`max_vms`), how many jobs run on it,
//! its package source, and what an admin may change while it runs
//! (drained, `max_vms`, `min_ready`). Knows nothing of jobs or of how VMs are booted.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use minion_fetch::PackageSource;
use tokio::sync::{Notify, Semaphore};

use crate::config::PoolConfig;

/// Limits an admin asked for that cannot hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("max_vms must be ≥ 1")]
    NoVms,
    #[error("min_ready {ready} is more than max_vms {max}: parked VMs count against max_vms")]
    ReadyOverMax { ready: u32, max: u32 },
}

pub struct Pool {
    pub name: String,
    /// The config file's settings; a reload swaps them (jobs that started keep what they read).
    cfg: std::sync::RwLock<Arc<PoolConfig>>,
    /// One permit per VM allowed alive (a parked pre-booted VM holds one too); held from pickup
    /// (or boot) until the VM is torn down.
    pub slots: Arc<Semaphore>,
    running: AtomicU32,
    /// Where the guests' `environment` packages come from (`packages = DIR`).
    pub packages: Option<Arc<PackageSource>>,
    /// Set at run time (`minion pool drain|undrain|set`); `cfg` holds the file's values.
    drained: AtomicBool,
    max_vms: AtomicU32,
    min_ready: AtomicU32,
    /// Any of the three changed.
    pub changed: Notify,
}

impl Pool {
    pub fn new(name: &str, cfg: &PoolConfig, packages: Option<Arc<PackageSource>>) -> Pool {
        Pool {
            name: name.to_string(),
            cfg: std::sync::RwLock::new(Arc::new(cfg.clone())),
            slots: Arc::new(Semaphore::new(cfg.max_vms as usize)),
            running: AtomicU32::new(0),
            packages,
            drained: AtomicBool::new(cfg.drained),
            max_vms: AtomicU32::new(cfg.max_vms),
            min_ready: AtomicU32::new(cfg.min_ready),
            changed: Notify::new(),
        }
    }

    /// The pool's settings now.
    pub fn cfg(&self) -> Arc<PoolConfig> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A reloaded config file's settings: new jobs use them, and `drained`, `max_vms` and
    /// `min_ready` take their values (what an admin set at run time is replaced). `packages`,
    /// `hosts` and `libvirt_uri` need a restart (kept as they were: the hosts are watched from
    /// the start).
    pub fn reload(&self, new: &PoolConfig) -> Result<(), LimitError> {
        self.set_limits(Some(new.max_vms), Some(new.min_ready))?;
        let old = self.cfg();
        let mut next = new.clone();
        next.packages = old.packages.clone();
        next.hosts = old.hosts.clone();
        next.libvirt_uri = old.libvirt_uri.clone();
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.set_drained(new.drained);
        Ok(())
    }

    /// No job starts while drained (the queue keeps them; running ones finish).
    pub fn drained(&self) -> bool {
        self.drained.load(Ordering::SeqCst)
    }

    pub fn max_vms(&self) -> u32 {
        self.max_vms.load(Ordering::SeqCst)
    }

    /// Pre-booted VMs wanted (none while drained).
    pub fn min_ready(&self) -> u32 {
        self.min_ready.load(Ordering::SeqCst)
    }

    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits while the pool is drained.
    pub async fn undrained(&self) {
        loop {
            let changed = self.changed.notified();
            if !self.drained() {
                return;
            }
            changed.await;
        }
    }

    /// New limits; `None` keeps one. A smaller `max_vms` takes its slots as running VMs go
    /// (none is stopped for it); `min_ready` may not exceed `max_vms`.
    pub fn set_limits(
        &self,
        max_vms: Option<u32>,
        min_ready: Option<u32>,
    ) -> Result<(), LimitError> {
        let max = max_vms.unwrap_or_else(|| self.max_vms());
        let ready = min_ready.unwrap_or_else(|| self.min_ready());
        if max == 0 {
            return Err(LimitError::NoVms);
        }
        if ready > max {
            return Err(LimitError::ReadyOverMax { ready, max });
        }
        let old = self.max_vms.swap(max, Ordering::SeqCst);
        if max > old {
            self.slots.add_permits((max - old) as usize);
        } else if max < old {
            let slots = self.slots.clone();
            let (name, fewer) = (self.name.clone(), old - max);
            tokio::spawn(async move {
                // Slots in use are taken as their VMs go; then they are gone for good.
                if let Ok(p) = slots.acquire_many_owned(fewer).await {
                    p.forget();
                    tracing::info!(pool = %name, "{fewer} VM slots retired");
                }
            });
        }
        self.min_ready.store(ready, Ordering::SeqCst);
        self.changed.notify_waiters();
        Ok(())
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
