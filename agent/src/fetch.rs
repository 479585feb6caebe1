//! The guest's [`Fetcher`]: a koji/bodhi/distgit step's request goes to the host as a
//! FetchRequest frame; the host's FetchFile/FetchChunk/FetchEnd frames (routed here by the
//! listener thread) are written into the step's target directory. The guest has no network: this
//! is the only way an item gets in.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use minion_formula::{CancelFlag, FetchRequest, Fetched, FetchedKind, Fetcher};
use minion_proto::guest::{guest_frame::Kind, host_frame::Kind as H};

use crate::outbox::Outbox;

/// How often a wait for the host's answer looks at the cancel flag.
const POLL: Duration = Duration::from_millis(200);

pub struct ChannelFetcher {
    outbox: Outbox,
    /// Fetch frames from the host, in order (the listener thread routes them here).
    answers: Mutex<mpsc::Receiver<H>>,
    cancel: CancelFlag,
    next_id: AtomicU32,
}

impl ChannelFetcher {
    pub fn new(outbox: Outbox, answers: mpsc::Receiver<H>, cancel: CancelFlag) -> Self {
        Self {
            outbox,
            answers: Mutex::new(answers),
            cancel,
            next_id: AtomicU32::new(1),
        }
    }
}

/// The file being written, and how many bytes it still expects.
struct Open {
    file: File,
    path: PathBuf,
    left: u64,
}

impl Fetcher for ChannelFetcher {
    fn fetch(&self, request: &FetchRequest, target_dir: &Path) -> Result<Vec<Fetched>, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let answers = self
            .answers
            .lock()
            .map_err(|_| "the fetch channel is poisoned".to_string())?;
        self.outbox
            .send(Kind::FetchRequest(
                minion_channel::fetch_wire::request_to_wire(id, request),
            ))
            .map_err(|e| format!("cannot ask the host: {e}"))?;
        let mut placed = Vec::new();
        let mut open: Option<Open> = None;
        loop {
            let frame = match answers.recv_timeout(POLL) {
                Ok(f) => f,
                Err(mpsc::RecvTimeoutError::Timeout) if self.cancel.is_cancelled() => {
                    return Err("cancelled while the host was fetching".into())
                }
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the host hung up while fetching".into())
                }
            };
            match frame {
                H::FetchFile(f) if f.id == id => {
                    finish(open.take())?;
                    let name = minion_safepath::plain_name(&f.name).map_err(|_| {
                        format!("the host sent a file name that is not plain: {:?}", f.name)
                    })?;
                    let kind = FetchedKind::parse(&f.kind).unwrap_or(FetchedKind::File);
                    let path = target_dir.join(name);
                    let file =
                        File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                    placed.push(Fetched {
                        path: path.clone(),
                        kind,
                    });
                    open = Some(Open {
                        file,
                        path,
                        left: f.size,
                    });
                }
                H::FetchChunk(c) if c.id == id => {
                    let o = open
                        .as_mut()
                        .ok_or("the host sent file bytes before a file")?;
                    let n = c.data.len() as u64;
                    if n > o.left {
                        return Err(format!("{}: more bytes than announced", o.path.display()));
                    }
                    o.left -= n;
                    o.file
                        .write_all(&c.data)
                        .map_err(|e| format!("{}: {e}", o.path.display()))?;
                }
                H::FetchEnd(end) if end.id == id => {
                    if !end.error.is_empty() {
                        return Err(end.error);
                    }
                    finish(open.take())?;
                    return Ok(placed);
                }
                other => tracing::warn!(?other, "ignoring a fetch frame for another request"),
            }
        }
    }
}

/// Closes a file, which must have received every announced byte.
fn finish(open: Option<Open>) -> Result<(), String> {
    let Some(mut o) = open else { return Ok(()) };
    if o.left > 0 {
        return Err(format!("{}: {} bytes missing", o.path.display(), o.left));
    }
    o.file
        .flush()
        .map_err(|e| format!("{}: {e}", o.path.display()))
}
