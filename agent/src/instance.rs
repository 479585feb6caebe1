//! The agent's side of an instance: after Attach, commands the host asks for (`ExecStart`) run
//! until the host hangs up, several at once, each on pipes or on its own pseudo-terminal. The host
//! hanging up ends the instance: whatever still runs is killed and the guest powers off.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use minion_proto::guest::{
    self, guest_frame::Kind, host_frame::Kind as H, Attach, ExecExit, ExecOutput, ExecStart,
    HostFrame, LogStream,
};

use crate::{identity, outbox::Outbox, serve::Frames};

/// Commands running at once in one instance; more are refused.
pub const MAX_EXECS: usize = 64;
/// Bytes of output per frame.
const OUTPUT_CHUNK: usize = 32 * 1024;
/// Input chunks queued for one command that does not read its stdin (then the host waits).
const INPUT_QUEUE: usize = 64;
/// Once a terminal's program exited, how long its terminal may stay silent before the output is
/// taken as complete (a background process may keep the terminal open for ever).
const TTY_DRAIN: Duration = Duration::from_millis(200);
/// The terminal's end-of-file character (VEOF's default, Ctrl-D).
const TTY_EOF: u8 = 0x04;

enum Input {
    Data(Vec<u8>),
    Eof,
}

struct Running {
    /// The process group (each command leads its own).
    pgid: i32,
    input: mpsc::SyncSender<Input>,
    /// The terminal's master side, for resizes.
    tty: Option<Arc<File>>,
}

type Table = Arc<Mutex<HashMap<u32, Running>>>;

fn lock(t: &Table) -> std::sync::MutexGuard<'_, HashMap<u32, Running>> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves an instance until the host hangs up. `frames` is past the Attach.
pub fn serve(mut frames: Frames, outbox: Outbox, attach: &Attach) -> Result<()> {
    if let Some(id) = &attach.identity {
        identity::apply(id, &identity::Root(std::path::Path::new("/")))
            .context("applying the instance's identity")?;
        tracing::info!(hostname = %id.hostname, "identity applied");
    }
    if attach.network {
        match crate::network::bring_up() {
            Ok(nic) => tracing::info!("network: {nic} up on qemu's user network (NAT out only)"),
            // The instance is still usable without it; the developer sees why in the console.
            Err(e) => tracing::warn!("network: {e}"),
        }
    }
    outbox.send(Kind::Attached(guest::Attached {}))?;
    tracing::info!("attached: serving commands");
    let table: Table = Arc::default();
    loop {
        let frame = match frames.read_frame::<HostFrame>() {
            Ok(Some(HostFrame { kind: Some(k) })) => k,
            Ok(Some(HostFrame { kind: None })) => {
                tracing::warn!("empty frame from the host; ignored");
                continue;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("reading from the host: {e}");
                break;
            }
        };
        match frame {
            H::ExecStart(start) => {
                let id = start.id;
                if let Err(e) = spawn(&table, &outbox, start) {
                    let _ = outbox.send(Kind::ExecExit(ExecExit {
                        id,
                        exit_code: 127,
                        signal: 0,
                        error: format!("{e:#}"),
                    }));
                }
            }
            H::ExecInput(i) => {
                let Some(tx) = lock(&table).get(&i.id).map(|r| r.input.clone()) else {
                    continue;
                };
                // Blocks while the command does not read: backpressure to the host.
                if !i.data.is_empty() {
                    let _ = tx.send(Input::Data(i.data));
                }
                if i.eof {
                    let _ = tx.send(Input::Eof);
                }
            }
            H::ExecResize(r) => {
                if let Some(tty) = lock(&table).get(&r.id).and_then(|r| r.tty.clone()) {
                    if let Err(e) = set_size(&tty, r.rows, r.cols) {
                        tracing::warn!(id = r.id, "resizing the terminal: {e}");
                    }
                }
            }
            H::ExecSignal(s) => {
                if let Some(pgid) = lock(&table).get(&s.id).map(|r| r.pgid) {
                    // SAFETY: kill(2) with a negative pid signals that process group only.
                    unsafe { libc::kill(-pgid, s.signal) };
                }
            }
            other => tracing::warn!(?other, "ignoring unexpected frame in an instance"),
        }
    }
    tracing::info!("the host hung up: ending the instance");
    for r in lock(&table).values() {
        // SAFETY: as above.
        unsafe { libc::kill(-r.pgid, libc::SIGKILL) };
    }
    Ok(())
}

fn spawn(table: &Table, outbox: &Outbox, start: ExecStart) -> Result<()> {
    let id = start.id;
    {
        let t = lock(table);
        if t.contains_key(&id) {
            anyhow::bail!("exec id {id} is already running");
        }
        if t.len() >= MAX_EXECS {
            anyhow::bail!("{MAX_EXECS} commands already run in this instance");
        }
    }
    let Some((program, args)) = start.argv.split_first() else {
        anyhow::bail!("no command given");
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd.env("HOME", "/root");
    cmd.envs(&start.env);
    let cwd = if start.cwd.is_empty() {
        if std::path::Path::new("/root").is_dir() {
            "/root"
        } else {
            "/"
        }
    } else {
        start.cwd.as_str()
    };
    cmd.current_dir(cwd);
    let (input_tx, input_rx) = mpsc::sync_channel::<Input>(INPUT_QUEUE);
    if start.tty {
        let (master, slave) = open_pty(start.rows, start.cols)?;
        let master = Arc::new(master);
        cmd.stdin(Stdio::from(slave.try_clone()?));
        cmd.stdout(Stdio::from(slave.try_clone()?));
        cmd.stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {program}"))?;
        // The parent's copies of the slave side are gone with `cmd`: only the child holds it.
        drop(cmd);
        let pgid = child.id() as i32;
        lock(table).insert(
            id,
            Running {
                pgid,
                input: input_tx,
                tty: Some(master.clone()),
            },
        );
        let writer = master.clone();
        thread::spawn(move || feed_tty(&writer, input_rx));
        let (exited_tx, exited_rx) = mpsc::channel::<()>();
        let (out, reader) = (outbox.clone(), master);
        let drained = thread::spawn(move || drain_tty(&reader, id, &out, &exited_rx));
        let (table, outbox) = (table.clone(), outbox.clone());
        thread::spawn(move || {
            let status = wait(child);
            let _ = exited_tx.send(());
            let _ = drained.join();
            finish(&table, &outbox, id, status);
        });
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
        let pgid = child.id() as i32;
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        lock(table).insert(
            id,
            Running {
                pgid,
                input: input_tx,
                tty: None,
            },
        );
        if let Some(mut stdin) = stdin {
            thread::spawn(move || {
                while let Ok(Input::Data(d)) = input_rx.recv() {
                    if stdin.write_all(&d).is_err() {
                        break;
                    }
                }
                // Eof, or the command closed its stdin: dropping it closes the pipe.
            });
        }
        let readers: Vec<_> = [
            stdout.map(|s| (Box::new(s) as Box<dyn Read + Send>, LogStream::Stdout)),
            stderr.map(|s| (Box::new(s) as Box<dyn Read + Send>, LogStream::Stderr)),
        ]
        .into_iter()
        .flatten()
        .map(|(r, stream)| {
            let out = outbox.clone();
            thread::spawn(move || pump(r, id, stream, &out))
        })
        .collect();
        let (table, outbox) = (table.clone(), outbox.clone());
        thread::spawn(move || {
            let status = wait(child);
            for r in readers {
                let _ = r.join();
            }
            finish(&table, &outbox, id, status);
        });
    }
    tracing::info!(id, program = %program, tty = start.tty, "exec started");
    Ok(())
}

/// Exit code and signal of a finished child.
fn wait(mut child: Child) -> (i32, i32) {
    match child.wait() {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => (c, 0),
            (None, Some(sig)) => (128 + sig, sig),
            (None, None) => (255, 0),
        },
        Err(e) => {
            tracing::warn!("waiting for a command: {e}");
            (255, 0)
        }
    }
}

/// The command's entry goes before its ExecExit, so the host may reuse the id once it has it.
fn finish(table: &Table, outbox: &Outbox, id: u32, (exit_code, signal): (i32, i32)) {
    lock(table).remove(&id);
    let _ = outbox.send(Kind::ExecExit(ExecExit {
        id,
        exit_code,
        signal,
        error: String::new(),
    }));
    tracing::info!(id, exit_code, signal, "exec ended");
}

fn pump(mut r: Box<dyn Read + Send>, id: u32, stream: LogStream, outbox: &Outbox) {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let frame = Kind::ExecOutput(ExecOutput {
                    id,
                    stream: stream as i32,
                    data: buf[..n].to_vec(),
                });
                if outbox.send(frame).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn feed_tty(master: &File, input: mpsc::Receiver<Input>) {
    let mut w = master;
    while let Ok(i) = input.recv() {
        let bytes = match i {
            Input::Data(d) => d,
            Input::Eof => vec![TTY_EOF],
        };
        if w.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// Reads the terminal until it closes, or, once the program exited, until it has been quiet for
/// [`TTY_DRAIN`].
fn drain_tty(master: &File, id: u32, outbox: &Outbox, exited: &mpsc::Receiver<()>) {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    let mut child_gone = false;
    loop {
        let mut pfd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, TTY_DRAIN.as_millis() as i32) };
        if ready < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        child_gone = child_gone || exited.try_recv().is_ok();
        if ready == 0 {
            if child_gone {
                return;
            }
            continue;
        }
        let mut r = master;
        match r.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let frame = Kind::ExecOutput(ExecOutput {
                    id,
                    stream: LogStream::Stdout as i32,
                    data: buf[..n].to_vec(),
                });
                if outbox.send(frame).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // EIO: every slave side closed.
            Err(_) => return,
        }
    }
}

fn winsize(rows: u32, cols: u32) -> libc::winsize {
    let clamp = |v: u32, d: u16| {
        if v == 0 {
            d
        } else {
            v.min(u16::MAX as u32) as u16
        }
    };
    libc::winsize {
        ws_row: clamp(rows, 24),
        ws_col: clamp(cols, 80),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn open_pty(rows: u32, cols: u32) -> io::Result<(File, File)> {
    let (mut master, mut slave) = (-1, -1);
    let ws = winsize(rows, cols);
    // SAFETY: openpty writes two fds; the name and termios arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just opened and are owned by nobody else.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&m, &s] {
        // SAFETY: FD_CLOEXEC on an fd we own: the commands get the slave only as 0, 1 and 2.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((File::from(m), File::from(s)))
}

fn set_size(tty: &File, rows: u32, cols: u32) -> io::Result<()> {
    let ws = winsize(rows, cols);
    // SAFETY: TIOCSWINSZ reads one winsize.
    if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_sizes_default_and_clamp() {
        let w = winsize(0, 0);
        assert_eq!((w.ws_row, w.ws_col), (24, 80));
        let w = winsize(50, 1_000_000);
        assert_eq!((w.ws_row, w.ws_col), (50, u16::MAX));
    }

    #[test]
    fn a_pty_reports_the_size_it_was_given_and_takes_a_new_one() {
        let (master, slave) = open_pty(30, 100).expect("openpty");
        let mut ws = winsize(1, 1);
        // SAFETY: TIOCGWINSZ writes one winsize.
        assert_eq!(
            unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) },
            0
        );
        assert_eq!((ws.ws_row, ws.ws_col), (30, 100));
        set_size(&master, 40, 120).expect("resize");
        // SAFETY: as above.
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!((ws.ws_row, ws.ws_col), (40, 120));
    }
}
