//! Live fan-out of a job's events (lifecycle, log, actions) to its WatchJob streams.

use std::collections::HashMap;
use std::sync::Mutex;

use minion_proto::controller::WatchEvent;
use tokio::sync::broadcast;

/// Events buffered per job for slow watchers; a watcher that falls further behind is told it lagged.
const CAPACITY: usize = 4096;

#[derive(Default)]
pub struct Hub {
    jobs: Mutex<HashMap<String, broadcast::Sender<WatchEvent>>>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<WatchEvent>>> {
        // Only map inserts/removes happen under the lock: a poisoned map is still consistent.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self, id: &str) -> broadcast::Receiver<WatchEvent> {
        self.lock()
            .entry(id.to_string())
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe()
    }

    pub fn publish(&self, id: &str, ev: WatchEvent) {
        if let Some(tx) = self.lock().get(id) {
            // No receivers is fine: nobody is watching.
            let _ = tx.send(ev);
        }
    }

    /// Drops the job's channel: its watchers see the stream end after what was sent.
    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }
}
