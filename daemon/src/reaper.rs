//! The periodic reaper (as Nodepool has): every `reap_interval_secs`, a domain or VM directory
//! carrying this daemon's mark that no live VM owns (a job's, a pre-booted one; see
//! [`LiveVms`]) is destroyed, but only once it has been seen unowned in two consecutive passes,
//! so a VM being made or torn down at the moment of a pass is never touched. The start of the
//! daemon reconciles everything at once; this catches what leaks while it runs (a teardown that
//! failed, a task that died). Each one is logged and counted (`minion_reaped_leftovers_total`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minion_provisioning::backend::VmBackend;
use minion_provisioning::vm;

use crate::guestvm::LiveVms;
use crate::hosts::Hosts;
use crate::recorder::{Leftover, Recorder};

/// Two-pass judgement over VM ids, the reaper's memory between passes.
#[derive(Debug, Default)]
pub struct TwoPass {
    /// Ids seen unowned in the previous pass.
    previous: HashSet<String>,
    /// Ids seen unowned in the pass under way.
    current: HashSet<String>,
}

impl TwoPass {
    /// Whether `id`, met in this pass, is to be destroyed now: unowned now and in the previous
    /// pass too.
    pub fn doomed(&mut self, id: &str, owned: bool) -> bool {
        if owned {
            return false;
        }
        self.current.insert(id.to_string());
        self.previous.contains(id)
    }

    /// Ends a pass: what it saw unowned is what the next one compares with.
    pub fn end_pass(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }
}

pub struct Reaper {
    live: LiveVms,
    state_dir: PathBuf,
    /// Every host (this machine's too): their domains and volumes, while they are up.
    hosts: Arc<Hosts>,
    interval: Duration,
    metrics: Recorder,
    judge: Mutex<TwoPass>,
}

impl Reaper {
    pub fn new(
        live: LiveVms,
        state_dir: PathBuf,
        hosts: Arc<Hosts>,
        interval: Duration,
        metrics: Recorder,
    ) -> Reaper {
        Reaper {
            live,
            state_dir,
            hosts,
            interval,
            metrics,
            judge: Mutex::default(),
        }
    }

    /// Passes every `interval`, the first one `interval` after the start (the start has
    /// reconciled already).
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.interval).await;
            let r = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || r.pass()).await {
                tracing::error!("reaper pass: {e}");
            }
        }
    }

    /// One pass over every host's marked domains, then the VM directories. Blocks.
    pub fn pass(&self) {
        let mut guard = self.judge.lock().unwrap_or_else(|p| p.into_inner());
        let judge = std::cell::RefCell::new(&mut *guard);
        let kept = |id: &str| !judge.borrow_mut().doomed(id, self.live.contains(id));
        for host in self.hosts.all().into_iter().filter(|h| h.is_up()) {
            match host.hypervisor() {
                Ok(hv) => {
                    let report = host.backend.reap(&hv, &kept);
                    for d in &report.destroyed {
                        tracing::warn!(host = %host.name, domain = %d, "reaper: destroyed a domain no live VM owns (seen unowned twice)");
                    }
                    for v in &report.deleted_volumes {
                        tracing::warn!(host = %host.name, volume = %v, "reaper: deleted a volume no live VM owns (seen unowned twice)");
                    }
                    self.metrics
                        .reaped(Leftover::Domain, report.destroyed.len() as u64);
                    self.metrics
                        .reaped(Leftover::Volume, report.deleted_volumes.len() as u64);
                    for e in report.errors {
                        tracing::error!(host = %host.name, "reaper: {e}");
                    }
                }
                Err(e) => tracing::error!(host = %host.name, "reaper: {e}"),
            }
        }
        let report = vm::sweep_dirs(&self.state_dir, &kept);
        for d in &report.removed_dirs {
            tracing::warn!(dir = %d.display(), "reaper: removed a VM directory no live VM owns (seen unowned twice)");
        }
        self.metrics
            .reaped(Leftover::VmDir, report.removed_dirs.len() as u64);
        for e in report.errors {
            tracing::error!("reaper: {e}");
        }
        judge.borrow_mut().end_pass();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_doomed_only_when_seen_unowned_in_two_passes_in_a_row() {
        let mut j = TwoPass::default();
        // Pass 1: a and b unowned, c owned: nothing is destroyed on first sight.
        assert!(!j.doomed("a", false));
        assert!(!j.doomed("b", false));
        assert!(!j.doomed("c", true));
        j.end_pass();
        // Pass 2: a still unowned → doomed; b is owned now (it was being made) → kept; c is
        // unowned for the first time → kept.
        assert!(j.doomed("a", false));
        assert!(!j.doomed("b", true));
        assert!(!j.doomed("c", false));
        j.end_pass();
        // Pass 3: b unowned again, but not in the previous pass → kept; c → doomed.
        assert!(!j.doomed("b", false));
        assert!(j.doomed("c", false));
        // The same id met twice in one pass (domain, then directory) is judged alike.
        assert!(j.doomed("c", false));
        j.end_pass();
        // Pass 4: b gone from the host (never met) is forgotten.
        j.end_pass();
        assert!(!j.doomed("b", false));
    }
}
