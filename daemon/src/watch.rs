//! `WatchJob`: replays what a job already did (its lifecycle events and the log written so far),
//! then tails it live until the final state, without a chunk lost or sent twice. A watcher that
//! goes away leaves nothing behind.

use std::time::Duration;

use minion_proto::controller as pb;
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::jobs::convert::{event_to_pb, job_to_pb};
use crate::jobs::{JobRecord, Jobs};

/// How often a watcher re-checks the record, in case it missed the final event.
const RECHECK: Duration = Duration::from_secs(2);

pub type Sender = mpsc::Sender<Result<pb::WatchEvent, Status>>;

/// Streams job `rec`'s events into `tx` (from the start when `from_start`). Returns when the
/// job is final (after its Finished event) or the receiver has gone.
pub async fn watch(jobs: &Jobs, rec: JobRecord, from_start: bool, tx: Sender) {
    let id = rec.id.clone();
    // The log's length is taken atomically with the subscription: every chunk is either in the
    // first `logged` bytes of minion.log or arrives live, never both, never neither.
    let log_path = jobs.artifacts_dir(&id).join("minion.log");
    let sub = jobs.subscribe(&id, || {
        std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0)
    });
    tail(jobs, &rec, from_start, &log_path, sub.live, sub.logged, &tx).await;
    jobs.unsubscribe(&id);
}

async fn send(tx: &Sender, ev: pb::watch_event::Event) -> bool {
    tx.send(Ok(pb::WatchEvent { event: Some(ev) }))
        .await
        .is_ok()
}

async fn tail(
    jobs: &Jobs,
    rec: &JobRecord,
    from_start: bool,
    log_path: &std::path::Path,
    mut live: broadcast::Receiver<pb::WatchEvent>,
    logged: u64,
    tx: &Sender,
) {
    use pb::watch_event::Event;
    if from_start {
        for e in &rec.events {
            if !send(tx, Event::Lifecycle(event_to_pb(e))).await {
                return;
            }
        }
        if let Ok(f) = tokio::fs::File::open(log_path).await {
            let mut f = f.take(logged);
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = f.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let chunk = pb::LogChunk {
                    stream: pb::LogStream::Unspecified as i32,
                    data: buf[..n].to_vec(),
                };
                if !send(tx, Event::Log(chunk)).await {
                    return;
                }
            }
        }
    }
    loop {
        if let Ok(now) = jobs.get(&rec.id) {
            if now.state.is_final() {
                // Drain what is already buffered (the tail of the log), then finish.
                while let Ok(ev) = live.try_recv() {
                    let Some(e) = ev.event else { continue };
                    if matches!(e, Event::Finished(_)) {
                        break;
                    }
                    if !send(tx, e).await {
                        return;
                    }
                }
                let _ = send(tx, Event::Finished(job_to_pb(&now))).await;
                return;
            }
        }
        match tokio::time::timeout(RECHECK, live.recv()).await {
            Ok(Ok(pb::WatchEvent {
                event: Some(Event::Finished(j)),
            })) => {
                let _ = send(tx, Event::Finished(j)).await;
                return;
            }
            Ok(Ok(pb::WatchEvent { event: Some(e) })) => {
                if !send(tx, e).await {
                    return;
                }
            }
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                live = jobs.resubscribe(&rec.id);
            }
        }
    }
}
