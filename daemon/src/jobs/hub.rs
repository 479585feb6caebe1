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

    pub(super) fn subscribe(&self, id: &str) -> broadcast::Receiver<WatchEvent> {
        self.lock()
            .entry(id.to_string())
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe()
    }

    pub(super) fn publish(&self, id: &str, ev: WatchEvent) {
        self.publish_after(id, ev, || {});
    }

    /// Runs `record` (e.g. appending to minion.log) and publishes `ev` atomically with respect to
    /// [`Hub::subscribe_with`]: a watcher sees each log chunk exactly once, either in what it reads
    /// back or live.
    pub(super) fn publish_after(&self, id: &str, ev: WatchEvent, record: impl FnOnce()) {
        let jobs = self.lock();
        record();
        if let Some(tx) = jobs.get(id) {
            // No receivers is fine: nobody is watching.
            let _ = tx.send(ev);
        }
    }

    /// Subscribes and runs `snapshot` (e.g. the log's current length) under the same lock as
    /// [`Hub::publish_after`].
    pub(super) fn subscribe_with<T>(
        &self,
        id: &str,
        snapshot: impl FnOnce() -> T,
    ) -> (broadcast::Receiver<WatchEvent>, T) {
        let mut jobs = self.lock();
        let rx = jobs
            .entry(id.to_string())
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe();
        (rx, snapshot())
    }

    /// Drops the job's channel: its watchers see the stream end after what was sent.
    pub(super) fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    /// A watcher has gone: the job's channel goes too when nobody else listens (a live job's
    /// next event makes no new one; a later watcher does).
    pub(super) fn release(&self, id: &str) {
        let mut jobs = self.lock();
        if jobs.get(id).is_some_and(|tx| tx.receiver_count() == 0) {
            jobs.remove(id);
        }
    }

    /// Jobs with a channel (watched now, or live with a watcher since).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minion_proto::controller::{watch_event::Event, LogChunk};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn log(n: u8) -> WatchEvent {
        WatchEvent {
            event: Some(Event::Log(LogChunk {
                stream: 1,
                data: vec![n],
            })),
        }
    }

    #[test]
    fn snapshot_and_live_events_split_without_overlap() {
        let hub = Hub::default();
        let written = AtomicUsize::new(0);
        hub.publish_after("j", log(0), || {
            written.fetch_add(1, Ordering::SeqCst);
        });
        let (mut rx, seen) = hub.subscribe_with("j", || written.load(Ordering::SeqCst));
        hub.publish_after("j", log(1), || {
            written.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(
            seen, 1,
            "the chunk before the subscription is in the snapshot"
        );
        assert_eq!(rx.try_recv().expect("live"), log(1));
        assert!(rx.try_recv().is_err(), "nothing twice");
        hub.close("j");
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
    }

    #[test]
    fn a_released_channel_goes_once_nobody_listens() {
        let hub = Hub::default();
        let a = hub.subscribe("j");
        let b = hub.subscribe("j");
        drop(a);
        hub.release("j");
        assert_eq!(hub.len(), 1, "b still listens");
        drop(b);
        hub.release("j");
        assert_eq!(hub.len(), 0);
        hub.publish("j", log(9));
        assert_eq!(hub.len(), 0, "publishing makes no channel");
    }
}
