//! Running a child process with its output streamed live to the sink, killable by cancel.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::StepError;
use crate::context::{CancelFlag, EventSink, LogStream};

/// Stdout kept for `export` is capped; the log still gets all of it.
const MAX_KEPT_STDOUT: usize = 16 * 1024 * 1024;

pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
}

/// Runs `cmd` in its own process group; every chunk of stdout/stderr goes to `sink` as it comes.
/// On cancel the whole group is killed. When the main process exits, whatever it left running in
/// its group is killed too, so a step never outlives itself.
pub(crate) fn run_streaming(
    mut cmd: Command,
    cancel: &CancelFlag,
    sink: &mut dyn EventSink,
) -> Result<Finished, StepError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| StepError::msg(format!("cannot start {:?}: {e}", cmd.get_program())))?;
    let pgid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel::<(LogStream, Vec<u8>)>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(spawn_reader(out, LogStream::Stdout, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(spawn_reader(err, LogStream::Stderr, tx.clone()));
    }
    drop(tx);

    let mut kept = Vec::new();
    let mut killed = false;
    let mut exited = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((stream, data)) => {
                if stream == LogStream::Stdout && kept.len() < MAX_KEPT_STDOUT {
                    let room = MAX_KEPT_STDOUT - kept.len();
                    kept.extend_from_slice(&data[..data.len().min(room)]);
                }
                sink.log(stream, &data);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if cancel.is_cancelled() && !killed {
                    kill_group(pgid);
                    killed = true;
                }
                if exited.is_none() {
                    if let Ok(Some(status)) = child.try_wait() {
                        exited = Some(status);
                        // Leftover background processes would hold the pipes open forever.
                        kill_group(pgid);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let status = match exited {
        Some(s) => s,
        None => child
            .wait()
            .map_err(|e| StepError::msg(format!("waiting for the step's process: {e}")))?,
    };
    if killed {
        return Err(StepError::msg("cancelled"));
    }
    Ok(Finished {
        status,
        stdout: kept,
    })
}

fn spawn_reader<R: Read + Send + 'static>(
    mut r: R,
    stream: LogStream,
    tx: mpsc::Sender<(LogStream, Vec<u8>)>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((stream, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

fn kill_group(pgid: libc::pid_t) {
    // SAFETY: kill(2) with a negative pid signals the process group we created; no memory involved.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// "exited with 3" / "killed by signal 9".
pub(crate) fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "ended abnormally".into(),
    }
}
