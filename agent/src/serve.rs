//! The agent's side of one job, as a sequence:
//! Hello → Ready → Job + task tar → run (live Log/Action, Heartbeats, Cancel honoured) →
//! artifacts → Result.

use std::{
    fs,
    io::{self, Write},
    sync::{mpsc, Arc},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use minion_channel::{
    frame::{FrameReader, MAX_FRAME},
    PROTOCOL_VERSION,
};
use minion_formula::CancelFlag;
use minion_proto::guest::{
    self, guest_frame::Kind, host_frame::Kind as H, Heartbeat, HostFrame, Job, Ready,
};

use crate::{
    artifacts::send_artifacts,
    fetch::ChannelFetcher,
    identity,
    outbox::Outbox,
    port::ReadHalf,
    runner::{run_job, Layout, Outcome},
    sink::ChannelSink,
};

/// Used when the host's Hello asks for no particular interval.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Shortest interval honoured (a hostile or buggy host must not make us spin).
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// After the Result, how long the host gets to destroy the VM before the agent powers it off.
const HANG_UP_WAIT: Duration = Duration::from_secs(10);
/// After the host hung up past the Result, the time it has to pause the VM before the agent
/// powers it off.
const AFTER_HANG_UP: Duration = Duration::from_secs(3);
/// Poll interval while the host has not connected to the port yet (reads then return end-of-file).
const HOST_POLL: Duration = Duration::from_millis(5);

pub(crate) type Frames = FrameReader<ReadHalf>;

/// What happened, for the agent's own log and exit code.
pub enum Served {
    Job(Outcome),
    /// An instance's session ended (the host hung up).
    Instance,
}

/// What the agent does when the host hangs up in the middle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnHostLost {
    /// Powers the guest off at once. The host is gone (its controller lost the link, or died):
    /// the job is failed and may run again elsewhere, so this VM must stop, and nothing can be
    /// sent any more (virtio-serial writes block while no host is connected).
    PowerOff,
    /// Exits the agent (a test run on the host, `--no-poweroff`).
    Exit,
}

pub fn serve(
    reader: ReadHalf,
    outbox: Outbox,
    base: &std::path::Path,
    on_host_lost: OnHostLost,
) -> Result<Served> {
    let mut frames = FrameReader::new(reader, MAX_FRAME);
    // A kept job's next session may have begun before its reader saw the hang-up.
    let mut next_hello: Option<guest::Hello> = None;
    // Each pass is one session: a template VM's first ends in Quiesce, and the next one begins
    // after the VM is restored from its snapshot, on a new host connection; a kept job's VM
    // (Job.keep) begins its instance session on the connection after the job's.
    loop {
        let hello = match next_hello.take() {
            Some(h) => h,
            None => wait_for_hello(&mut frames)?,
        };
        if hello.protocol_min > PROTOCOL_VERSION || hello.protocol_max < PROTOCOL_VERSION {
            let msg = format!(
                "host speaks protocol {}..={}, agent speaks {PROTOCOL_VERSION}",
                hello.protocol_min, hello.protocol_max
            );
            let _ = outbox.send(Kind::Error(guest::Error {
                message: msg.clone(),
            }));
            bail!(msg);
        }
        outbox.send(Kind::Ready(Ready {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))?;
        tracing::info!("ready");
        let heartbeat = match hello.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms).max(MIN_HEARTBEAT),
        };
        // Heartbeats from Ready on, through the whole job (task transfer included): a pre-booted
        // VM may wait a long time for its job, and its silence is how the host tells a hung guest.
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let beats = spawn_heartbeats(outbox.clone(), heartbeat, done_rx);
        match next_frame(&mut frames, "the job")? {
            H::Job(job) => {
                let (outcome, kept) =
                    serve_job(frames, &outbox, base, &job, done_tx, on_host_lost)?;
                let _ = beats.join();
                match kept {
                    Some((f, hello)) => {
                        tracing::info!("job done; the VM is kept: waiting for the next session");
                        frames = f;
                        next_hello = hello;
                    }
                    None => return Ok(Served::Job(outcome)),
                }
            }
            H::Attach(attach) => {
                // Heartbeats go on while the instance lives (`done_tx` held until it ends).
                let served = crate::instance::serve(frames, outbox.clone(), &attach);
                drop(done_tx);
                if let Err(e) = &served {
                    let _ = outbox.send(Kind::Error(guest::Error {
                        message: format!("{e:#}"),
                    }));
                }
                return served.map(|()| Served::Instance);
            }
            H::Quiesce(_) => {
                // Heartbeats go on while the boot finishes: restored VMs must not resume it.
                match crate::settle::wait_for_boot(crate::settle::SETTLE_LIMIT) {
                    crate::settle::Settled::NoInit => {}
                    crate::settle::Settled::Booted { state, waited } => {
                        tracing::info!(%state, waited_ms = waited.as_millis() as u64, "boot finished before the snapshot")
                    }
                    crate::settle::Settled::GaveUp { state } => {
                        tracing::warn!(%state, "the boot has not finished after {:?}; quiescing anyway", crate::settle::SETTLE_LIMIT)
                    }
                }
                // No heartbeat may follow Quiesced: the next session would read it before Ready.
                drop(done_tx);
                let _ = beats.join();
                // SAFETY: sync(2) takes no arguments and cannot fail.
                unsafe { libc::sync() };
                outbox.send(Kind::Quiesced(guest::Quiesced {}))?;
                tracing::info!("quiesced: waiting for the session after a restore");
            }
            other => bail!("expected Job from the host, got {other:?}"),
        }
    }
}

/// The reader handed back for the next session, with its Hello when it came already.
type NextSession = (Frames, Option<guest::Hello>);

/// One job, from its Job frame to its Result (and the host hanging up). Returns the reader back
/// when the job asked to keep the VM and the session ended cleanly, for the next session.
fn serve_job(
    mut frames: Frames,
    outbox: &Outbox,
    base: &std::path::Path,
    job: &Job,
    done_tx: mpsc::Sender<()>,
    on_host_lost: OnHostLost,
) -> Result<(Outcome, Option<NextSession>)> {
    tracing::info!(job = %job.id, item = %job.item, formula = %job.formula_path, "job received");
    if let Some(id) = &job.identity {
        if let Err(e) = identity::apply(id, &identity::Root(std::path::Path::new("/"))) {
            let msg = format!("applying the VM's identity: {e:#}");
            let _ = outbox.send(Kind::Error(guest::Error {
                message: msg.clone(),
            }));
            bail!(msg);
        }
        tracing::info!(hostname = %id.hostname, "identity applied");
    }
    let job_dir = base.join(sanitize(&job.id));
    // A fresh start: nothing of an earlier attempt may leak into this job's artifacts.
    match fs::remove_dir_all(&job_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(format!("clearing {}", job_dir.display())),
    }
    let layout = Layout::new(&job_dir);
    layout.create().context("creating the job directories")?;

    let cancel = CancelFlag::new();
    let mut sink = ChannelSink::new(outbox.clone());
    let (hung_up_tx, hung_up) = mpsc::channel::<()>();
    let result_sent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut listener = None;
    let outcome = match receive_task(&mut frames, &layout) {
        Ok(TaskReceipt::Complete) => {
            let (fetch_tx, fetch_rx) = mpsc::channel();
            listener = Some(spawn_host_listener(
                frames,
                cancel.clone(),
                fetch_tx,
                hung_up_tx,
                result_sent.clone(),
                on_host_lost,
            ));
            let fetcher = Arc::new(ChannelFetcher::new(
                outbox.clone(),
                fetch_rx,
                cancel.clone(),
            ));
            let (_watchdog_stop, watchdog_rx) = mpsc::channel::<()>();
            if job.timeout_ms > 0 {
                spawn_watchdog(job, cancel.clone(), outbox.clone(), watchdog_rx);
            }
            run_job(job, &layout, &cancel, fetcher, &mut sink)
        }
        Ok(TaskReceipt::Cancelled) => {
            drop(hung_up_tx);
            Outcome::failed("cancelled before start".into(), 1, true)
        }
        Err(e) => {
            drop(hung_up_tx);
            let msg = format!("receiving the task tree: {e:#}");
            sink.runner(&msg);
            Outcome::failed(msg, 1, false)
        }
    };
    if outbox.is_broken() {
        bail!("the host went away during the job");
    }
    write_results(&layout, &outcome).context("writing results files")?;
    let packed = send_artifacts(outbox, &layout.run).context("sending artifacts")?;
    tracing::info!(
        bytes = packed.bytes,
        entries = packed.entries,
        "artifacts sent"
    );
    for s in &packed.skipped {
        tracing::warn!(path = %s, "artifact skipped: not a regular file or directory");
    }
    // Set before the Result goes: the host may hang up as soon as it has it, before this thread
    // runs again, and that hang-up is the end of the job, not a host lost mid-job.
    result_sent.store(true, std::sync::atomic::Ordering::SeqCst);
    outbox.send(Kind::Result(guest::Result {
        execution_ok: outcome.execution_ok,
        status_message: outcome.status_message.clone(),
        exit_code: outcome.exit_code,
        cancelled: outcome.cancelled,
        results_yaml: outcome.results_yaml.clone(),
        tap: outcome.tap.clone(),
    }))?;
    drop(done_tx);
    tracing::info!(
        exit_code = outcome.exit_code,
        ok = outcome.execution_ok,
        "result sent"
    );
    if job.keep {
        if let Some(listener) = listener {
            // The host hangs up once it has the Result, then connects again to attach.
            let _ = hung_up.recv();
            if let Ok(next) = listener.join() {
                return Ok((outcome, Some(next)));
            }
        }
    }
    // The host pauses and destroys the VM once it has the Result; powering off under it would
    // race that (libvirt then spends seconds reaping a qemu that stopped itself). So wait: for
    // the host to hang up and then a grace in which it pauses the VM, or at most HANG_UP_WAIT. A
    // host that went away still gets its VM powered off.
    if hung_up.recv_timeout(HANG_UP_WAIT).is_ok() {
        thread::sleep(AFTER_HANG_UP);
    }
    Ok((outcome, None))
}

fn wait_for_hello(frames: &mut Frames) -> Result<guest::Hello> {
    loop {
        match frames.read_frame::<HostFrame>()? {
            Some(HostFrame {
                kind: Some(H::Hello(h)),
            }) => return Ok(h),
            Some(other) => bail!("expected Hello from the host, got {other:?}"),
            // virtio-serial reads end-of-file while no host is connected: wait for it.
            None => thread::sleep(HOST_POLL),
        }
    }
}

fn next_frame(frames: &mut Frames, what: &str) -> Result<H> {
    match frames.read_frame::<HostFrame>()? {
        Some(HostFrame { kind: Some(k) }) => Ok(k),
        Some(HostFrame { kind: None }) => {
            bail!("empty frame from the host while waiting for {what}")
        }
        None => bail!("the host hung up while we waited for {what}"),
    }
}

enum TaskReceipt {
    Complete,
    Cancelled,
}

/// Spools the task tar to disk (bounded memory), then unpacks it into the task dir.
fn receive_task(frames: &mut Frames, layout: &Layout) -> Result<TaskReceipt> {
    let spool_path = layout.work.join(".task.tar");
    let mut spool =
        io::BufWriter::new(fs::File::create(&spool_path).context("creating the task spool")?);
    let mut received = 0u64;
    loop {
        match next_frame(frames, "the task tree")? {
            H::TaskChunk(c) => {
                received += c.data.len() as u64;
                spool.write_all(&c.data)?;
            }
            H::TaskEnd(end) => {
                if end.total_bytes != received {
                    bail!(
                        "task tar truncated: host sent {} bytes, received {received}",
                        end.total_bytes
                    );
                }
                break;
            }
            H::Cancel(_) => return Ok(TaskReceipt::Cancelled),
            other => bail!("unexpected frame while receiving the task: {other:?}"),
        }
    }
    spool.flush()?;
    drop(spool);
    let mut archive = tar::Archive::new(fs::File::open(&spool_path)?);
    archive.set_preserve_permissions(true);
    // `unpack` keeps every entry inside the task dir (it skips `..` and absolute paths).
    archive
        .unpack(&layout.task)
        .with_context(|| format!("unpacking into {}", layout.task.display()))?;
    fs::remove_file(&spool_path)?;
    tracing::info!(bytes = received, "task tree unpacked");
    Ok(TaskReceipt::Complete)
}

/// Reads the host's frames while the formula runs: Cancel sets the flag, fetch answers go to the
/// step waiting for them. Ends at the host's hang-up, or at the Hello of the next session (a kept
/// VM's host may connect again before this end of the port has read the end of the first).
fn spawn_host_listener(
    mut frames: Frames,
    cancel: CancelFlag,
    fetches: mpsc::Sender<H>,
    hung_up: mpsc::Sender<()>,
    result_sent: Arc<std::sync::atomic::AtomicBool>,
    on_host_lost: OnHostLost,
) -> thread::JoinHandle<NextSession> {
    thread::spawn(move || loop {
        match frames.read_frame::<HostFrame>() {
            Ok(Some(HostFrame {
                kind: Some(H::Cancel(c)),
            })) => {
                tracing::info!(reason = %c.reason, "cancel requested by the host");
                cancel.cancel();
            }
            Ok(Some(HostFrame {
                kind: Some(k @ (H::FetchFile(_) | H::FetchChunk(_) | H::FetchEnd(_))),
            })) => {
                // Nobody waiting (the step gave up): the answer is dropped.
                let _ = fetches.send(k);
            }
            Ok(Some(HostFrame {
                kind: Some(H::Hello(h)),
            })) if result_sent.load(std::sync::atomic::Ordering::SeqCst) => {
                tracing::info!("the host connected again after the Result");
                let _ = hung_up.send(());
                return (frames, Some(h));
            }
            Ok(Some(other)) => tracing::warn!(?other, "ignoring unexpected frame from the host"),
            Ok(None) | Err(_) => {
                if result_sent.load(std::sync::atomic::Ordering::SeqCst) {
                    tracing::info!("the host hung up after the Result");
                } else {
                    // Nobody is listening any more, and the job may be run again elsewhere: stop
                    // now rather than run it for no one (or twice).
                    tracing::warn!("the host hung up mid-job; stopping");
                    cancel.cancel();
                    match on_host_lost {
                        OnHostLost::PowerOff => crate::init::power_off_syscall(),
                        OnHostLost::Exit => std::process::exit(3),
                    }
                }
                let _ = hung_up.send(());
                return (frames, None);
            }
        }
    })
}

fn spawn_heartbeats(
    outbox: Outbox,
    every: Duration,
    done: mpsc::Receiver<()>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut seq = 0u64;
        while let Err(mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(every) {
            seq += 1;
            if outbox.send(Kind::Heartbeat(Heartbeat { seq })).is_err() {
                return;
            }
        }
    })
}

fn spawn_watchdog(job: &Job, cancel: CancelFlag, outbox: Outbox, stop: mpsc::Receiver<()>) {
    let timeout = Duration::from_millis(job.timeout_ms);
    thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(timeout) {
            let mut sink = ChannelSink::new(outbox);
            sink.runner(&format!("job timeout of {timeout:?} exceeded: cancelling"));
            cancel.cancel();
        }
    });
}

fn write_results(layout: &Layout, outcome: &Outcome) -> io::Result<()> {
    fs::write(layout.run.join("results.yaml"), &outcome.results_yaml)?;
    fs::write(layout.run.join("results.tap"), &outcome.tap)?;
    Ok(())
}

/// A job id as a single directory name.
fn sanitize(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() {
        "job".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_become_plain_directory_names() {
        assert_eq!(sanitize("6f1c-aa_9"), "6f1c-aa_9");
        assert_eq!(sanitize("../../etc"), "______etc");
        assert_eq!(sanitize(""), "job");
    }
}
