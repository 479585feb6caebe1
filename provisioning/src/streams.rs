//! libvirt streams (a guest channel from virDomainOpenChannel, a console from
//! virDomainOpenConsole) turned into what the rest of Minion reads: a unix socket, a file.
//!
//! Both are driven from libvirt's event loop (the one thread [`crate::hypervisor`] runs), with
//! non-blocking streams, the way `virsh console` does it. A thread blocked in virStreamRecv
//! when its connection dies crashes libvirt 9.0's client (seen here: a segfault in the RPC
//! client's event dispatch once a cut link came back), so no thread ever waits in a stream call.
//!
//! Volume uploads and downloads (an image's push and check, a VM's seed) run the same way:
//! [`upload`] and [`download`] are driven from the loop and report to a waiting caller.
//!
//! A channel pump moves bytes both ways with backpressure: what one side cannot take yet is
//! held (one chunk at most) and that side's readiness is waited for before reading more. The
//! stream ending (EOF, error: the domain went, the connection died) shuts the socket down; our
//! side hanging up aborts the stream. A failed stream is only freed, never finished or aborted.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::raw::{c_char, c_int, c_void};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virt::stream::Stream;
use virt::sys;

/// Bytes per receive or read.
const CHUNK: usize = 256 * 1024;

const ST_READABLE: c_int = 1;
const ST_WRITABLE: c_int = 2;
const ST_ERROR: c_int = 4;
const ST_HANGUP: c_int = 8;
const FD_READABLE: c_int = 1;
const FD_WRITABLE: c_int = 2;

/// `VIR_STREAM_NONBLOCK`: what [`socket_for`] and [`stream_to_file`] need their streams made with.
pub const NONBLOCK: sys::virStreamFlags = 1;

struct Channel {
    stream: Stream,
    sock: UnixStream,
    watch: c_int,
    /// Received from the stream, not yet written to the socket.
    to_sock: Vec<u8>,
    /// Read from the socket, not yet accepted by the stream.
    to_stream: Vec<u8>,
    done: bool,
    name: String,
}

type Shared = Arc<Mutex<Channel>>;

fn lock(c: &Shared) -> std::sync::MutexGuard<'_, Channel> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a channel ended.
enum End {
    /// The stream said EOF: finish it.
    StreamEof,
    /// The stream failed: free it only.
    StreamFailed,
    /// Our side hung up: abort it.
    SocketClosed,
}

impl Channel {
    fn stream_ptr(&self) -> sys::virStreamPtr {
        // SAFETY: the pointer is only used while `self.stream` holds its reference.
        unsafe { self.stream.as_ptr() }
    }

    /// The events each side is waited for, from what is held.
    fn rearm(&self) {
        let st = if self.to_stream.is_empty() {
            0
        } else {
            ST_WRITABLE
        } | if self.to_sock.is_empty() {
            ST_READABLE
        } else {
            0
        };
        let fd = if self.to_sock.is_empty() {
            0
        } else {
            FD_WRITABLE
        } | if self.to_stream.is_empty() {
            FD_READABLE
        } else {
            0
        };
        // SAFETY: the stream holds a callback (added in `socket_for`) and `watch` is live
        // until `end`, after which nothing calls this.
        unsafe {
            sys::virStreamEventUpdateCallback(self.stream_ptr(), st);
            sys::virEventUpdateHandle(self.watch, fd);
        }
    }

    fn end(&mut self, how: End) {
        if self.done {
            return;
        }
        self.done = true;
        let st = self.stream_ptr();
        // SAFETY: `st` is live (held by `self.stream`); removing a callback or handle from
        // within its own dispatch is allowed (libvirt defers the free).
        unsafe {
            sys::virStreamEventRemoveCallback(st);
            sys::virEventRemoveHandle(self.watch);
            match how {
                End::StreamEof => {
                    sys::virStreamFinish(st);
                }
                End::SocketClosed => {
                    sys::virStreamAbort(st);
                }
                End::StreamFailed => {}
            }
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        tracing::debug!(channel = %self.name, "channel pump ended");
    }

    /// Writes what is held for the socket; `false` once the socket is gone.
    fn flush_to_sock(&mut self) -> bool {
        while !self.to_sock.is_empty() {
            match self.sock.write(&self.to_sock) {
                Ok(0) => return false,
                Ok(n) => {
                    self.to_sock.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Sends what is held for the stream; `Err` once the stream failed.
    fn flush_to_stream(&mut self) -> Result<(), ()> {
        while !self.to_stream.is_empty() {
            // SAFETY: a live stream and a buffer of that length.
            let n = unsafe {
                sys::virStreamSend(
                    self.stream_ptr(),
                    self.to_stream.as_ptr() as *const c_char,
                    self.to_stream.len(),
                )
            };
            match n {
                -2 => return Ok(()),
                n if n > 0 => {
                    self.to_stream.drain(..n as usize);
                }
                _ => return Err(()),
            }
        }
        Ok(())
    }

    fn on_stream(&mut self, events: c_int) {
        if self.done {
            return;
        }
        if events & ST_WRITABLE != 0 && self.flush_to_stream().is_err() {
            return self.end(End::StreamFailed);
        }
        if events & ST_READABLE != 0 && self.to_sock.is_empty() {
            let mut buf = vec![0u8; CHUNK];
            // SAFETY: a live stream and a buffer of that length.
            let n = unsafe {
                sys::virStreamRecv(
                    self.stream_ptr(),
                    buf.as_mut_ptr() as *mut c_char,
                    buf.len(),
                )
            };
            match n {
                -2 => {}
                0 => return self.end(End::StreamEof),
                n if n > 0 => {
                    buf.truncate(n as usize);
                    self.to_sock = buf;
                    if !self.flush_to_sock() {
                        return self.end(End::SocketClosed);
                    }
                }
                _ => return self.end(End::StreamFailed),
            }
        } else if events & (ST_ERROR | ST_HANGUP) != 0 {
            return self.end(End::StreamFailed);
        }
        self.rearm();
    }

    fn on_socket(&mut self, events: c_int) {
        if self.done {
            return;
        }
        if events & FD_WRITABLE != 0 && !self.flush_to_sock() {
            return self.end(End::SocketClosed);
        }
        if events & FD_READABLE != 0 && self.to_stream.is_empty() {
            let mut buf = vec![0u8; CHUNK];
            match self.sock.read(&mut buf) {
                Ok(0) => return self.end(End::SocketClosed),
                Ok(n) => {
                    buf.truncate(n);
                    self.to_stream = buf;
                    if self.flush_to_stream().is_err() {
                        return self.end(End::StreamFailed);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(_) => return self.end(End::SocketClosed),
            }
        } else if events & (4 | 8) != 0 && events & FD_READABLE == 0 {
            return self.end(End::SocketClosed);
        }
        self.rearm();
    }
}

unsafe extern "C" fn channel_stream_cb(_st: sys::virStreamPtr, events: c_int, opaque: *mut c_void) {
    // SAFETY: `opaque` is the Box<Shared> given at registration, freed only by `free_shared`.
    let shared = unsafe { &*(opaque as *const Shared) };
    lock(shared).on_stream(events);
}

unsafe extern "C" fn channel_fd_cb(_watch: c_int, _fd: c_int, events: c_int, opaque: *mut c_void) {
    // SAFETY: as in `channel_stream_cb`.
    let shared = unsafe { &*(opaque as *const Shared) };
    lock(shared).on_socket(events);
}

unsafe extern "C" fn free_shared(opaque: *mut c_void) {
    // SAFETY: `opaque` came from Box::into_raw in `socket_for`, and libvirt frees it once.
    drop(unsafe { Box::from_raw(opaque as *mut Shared) });
}

fn last_error(what: &str) -> std::io::Error {
    std::io::Error::other(format!("{what}: {}", virt::error::Error::last_error()))
}

/// A running channel pump, to end from outside the event loop.
#[derive(Clone)]
pub struct ChannelPump(std::sync::Weak<Mutex<Channel>>);

impl ChannelPump {
    /// Whether the pump still runs.
    pub fn running(&self) -> bool {
        self.0.upgrade().is_some_and(|s| !lock(&s).done)
    }

    /// Ends the pump if it still runs, as if our side had hung up: its stream is aborted, and
    /// libvirtd has closed its end when this returns (virStreamAbort waits for its reply).
    pub fn end(&self) {
        if let Some(s) = self.0.upgrade() {
            lock(&s).end(End::SocketClosed);
        }
    }
}

/// A unix socket whose other end is `stream` (made with [`NONBLOCK`]): what is written to the
/// returned socket is sent on the stream, what the stream receives can be read from it. `what`
/// names it in logs. The pump is returned too, to end it from outside.
pub fn socket_for(stream: Stream, what: &str) -> std::io::Result<(UnixStream, ChannelPump)> {
    crate::hypervisor::ensure_event_loop();
    let (ours, theirs) = UnixStream::pair()?;
    theirs.set_nonblocking(true)?;
    let fd = theirs.as_raw_fd();
    // SAFETY: a live stream pointer, kept alive by `stream` inside the shared state.
    let st = unsafe { stream.as_ptr() };
    let shared: Shared = Arc::new(Mutex::new(Channel {
        stream,
        sock: theirs,
        watch: -1,
        to_sock: Vec::new(),
        to_stream: Vec::new(),
        done: false,
        name: what.to_string(),
    }));
    // Held until both registrations are in: a callback may run as soon as each is.
    let mut g = lock(&shared);
    let for_fd = Box::into_raw(Box::new(shared.clone())) as *mut c_void;
    // SAFETY: `fd` stays open while the state lives; `for_fd` is freed by `free_shared`.
    let watch = unsafe {
        sys::virEventAddHandle(
            fd,
            FD_READABLE,
            Some(channel_fd_cb),
            for_fd,
            Some(free_shared),
        )
    };
    if watch < 0 {
        // SAFETY: not registered, so still ours to free.
        unsafe { free_shared(for_fd) };
        return Err(last_error("virEventAddHandle"));
    }
    g.watch = watch;
    let for_st = Box::into_raw(Box::new(shared.clone())) as *mut c_void;
    // SAFETY: as above; the stream takes its own reference while the callback is registered.
    let rc = unsafe {
        sys::virStreamEventAddCallback(
            st,
            ST_READABLE | ST_ERROR | ST_HANGUP,
            Some(channel_stream_cb),
            for_st,
            Some(free_shared),
        )
    };
    if rc < 0 {
        // SAFETY: not registered, so still ours to free; the handle is removed.
        unsafe {
            free_shared(for_st);
            sys::virEventRemoveHandle(watch);
        }
        return Err(last_error("virStreamEventAddCallback"));
    }
    drop(g);
    Ok((ours, ChannelPump(Arc::downgrade(&shared))))
}

/// Appends what `stream` (made with [`NONBLOCK`]) receives to `path` until it ends, keeping
/// at most `max_bytes` (what comes after is read and dropped, so the guest never blocks on its
/// console, and one line says so).
pub fn stream_to_file(stream: Stream, path: &Path, max_bytes: u64) -> std::io::Result<Progress> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let (mut written, mut full) = (0u64, false);
    download(
        stream,
        Box::new(move |data: &[u8]| {
            if full {
                return;
            }
            let room = max_bytes.saturating_sub(written).min(data.len() as u64) as usize;
            if file.write_all(&data[..room]).is_err() {
                full = true;
                return;
            }
            written += room as u64;
            if room < data.len() {
                full = true;
                let _ = writeln!(
                    file,
                    "\n[minion: console output over {max_bytes} bytes dropped]"
                );
            }
        }),
    )
}

/// Where a download's bytes go, chunk by chunk.
pub type Sink = Box<dyn FnMut(&[u8]) + Send>;

struct Transfer {
    stream: Stream,
    /// Upload: the file read from; download: none.
    src: Option<Box<dyn Read + Send>>,
    /// Read from `src`, not yet accepted by the stream.
    pending: Vec<u8>,
    /// Download: what each received chunk goes to.
    sink: Option<Sink>,
    /// Bytes sent or received so far (read by [`Progress::wait`]).
    moved: Arc<AtomicU64>,
    done: Option<std::sync::mpsc::Sender<Result<u64, String>>>,
}

impl Transfer {
    /// Ends the transfer. `abort`: our side gave up (a file error) on a healthy stream; a
    /// stream that failed on its own is only freed (see the module's comment).
    fn finish(&mut self, r: Result<u64, String>, abort: bool) {
        // SAFETY: used while `self.stream` holds its reference.
        let st = unsafe { self.stream.as_ptr() };
        // SAFETY: a live stream; removal from within its dispatch is deferred by libvirt.
        let r = unsafe {
            sys::virStreamEventRemoveCallback(st);
            match &r {
                Ok(_) if sys::virStreamFinish(st) < 0 => {
                    Err(last_error("virStreamFinish").to_string())
                }
                Err(_) if abort => {
                    sys::virStreamAbort(st);
                    r
                }
                _ => r,
            }
        };
        if let Some(tx) = self.done.take() {
            let _ = tx.send(r);
        }
    }

    fn on_stream(&mut self, events: c_int) {
        if self.done.is_none() {
            return;
        }
        if events & (ST_ERROR | ST_HANGUP) != 0 && events & ST_READABLE == 0 {
            return self.finish(Err("the stream failed (connection lost?)".into()), false);
        }
        if self.src.is_some() {
            self.on_writable()
        } else {
            self.on_readable()
        }
    }

    fn on_writable(&mut self) {
        loop {
            if self.pending.is_empty() {
                let mut buf = vec![0u8; CHUNK];
                let n = match self.src.as_mut().map(|f| f.read(&mut buf)) {
                    Some(Ok(n)) => n,
                    Some(Err(e)) => {
                        return self.finish(Err(format!("reading the file: {e}")), true)
                    }
                    None => 0,
                };
                if n == 0 {
                    return self.finish(Ok(self.moved.load(Ordering::Relaxed)), false);
                }
                buf.truncate(n);
                self.pending = buf;
            }
            // SAFETY: a live stream and a buffer of that length.
            let n = unsafe {
                sys::virStreamSend(
                    self.stream.as_ptr(),
                    self.pending.as_ptr() as *const c_char,
                    self.pending.len(),
                )
            };
            match n {
                -2 => return,
                n if n > 0 => {
                    self.pending.drain(..n as usize);
                    self.moved.fetch_add(n as u64, Ordering::Relaxed);
                }
                _ => return self.finish(Err(last_error("virStreamSend").to_string()), false),
            }
        }
    }

    fn on_readable(&mut self) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            // SAFETY: a live stream and a buffer of that length.
            let n = unsafe {
                sys::virStreamRecv(
                    self.stream.as_ptr(),
                    buf.as_mut_ptr() as *mut c_char,
                    buf.len(),
                )
            };
            match n {
                -2 => return,
                0 => return self.finish(Ok(self.moved.load(Ordering::Relaxed)), false),
                n if n > 0 => {
                    if let Some(s) = self.sink.as_mut() {
                        s(&buf[..n as usize]);
                    }
                    self.moved.fetch_add(n as u64, Ordering::Relaxed);
                }
                _ => return self.finish(Err(last_error("virStreamRecv").to_string()), false),
            }
        }
    }
}

unsafe extern "C" fn transfer_cb(_st: sys::virStreamPtr, events: c_int, opaque: *mut c_void) {
    // SAFETY: `opaque` is the Box given at registration, freed only by `free_transfer`.
    let t = unsafe { &*(opaque as *const Mutex<Transfer>) };
    t.lock()
        .unwrap_or_else(|p| p.into_inner())
        .on_stream(events);
}

unsafe extern "C" fn free_transfer(opaque: *mut c_void) {
    // SAFETY: `opaque` came from Box::into_raw in `transfer`; libvirt frees it once.
    drop(unsafe { Box::from_raw(opaque as *mut Mutex<Transfer>) });
}

/// A transfer under way in the event loop.
#[derive(Debug)]
pub struct Progress {
    ended: std::sync::mpsc::Receiver<Result<u64, String>>,
    moved: Arc<AtomicU64>,
}

impl Progress {
    /// Waits for the end: the bytes moved, or why not; gives up once no byte has moved for
    /// `stall` (the transfer itself then ends whenever its stream does).
    pub fn wait(&self, stall: Duration) -> Result<u64, String> {
        let (mut last, mut moved_at) = (0, Instant::now());
        loop {
            match self.ended.recv_timeout(Duration::from_millis(200)) {
                Ok(r) => return r,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("the transfer ended unheard".into())
                }
                Err(RecvTimeoutError::Timeout) => {
                    let now = self.moved.load(Ordering::Relaxed);
                    if now != last {
                        (last, moved_at) = (now, Instant::now());
                    } else if moved_at.elapsed() > stall {
                        return Err(format!("no progress for {} s", stall.as_secs()));
                    }
                }
            }
        }
    }
}

fn transfer(
    stream: Stream,
    src: Option<Box<dyn Read + Send>>,
    sink: Option<Sink>,
    events: c_int,
) -> std::io::Result<Progress> {
    crate::hypervisor::ensure_event_loop();
    let (tx, ended) = std::sync::mpsc::channel();
    let moved = Arc::new(AtomicU64::new(0));
    // SAFETY: a live stream pointer, kept alive by the state.
    let st = unsafe { stream.as_ptr() };
    let state = Box::into_raw(Box::new(Mutex::new(Transfer {
        stream,
        src,
        pending: Vec::new(),
        sink,
        moved: moved.clone(),
        done: Some(tx),
    }))) as *mut c_void;
    // SAFETY: `state` is freed by `free_transfer` once libvirt drops the callback.
    let rc = unsafe {
        sys::virStreamEventAddCallback(
            st,
            events | ST_ERROR | ST_HANGUP,
            Some(transfer_cb),
            state,
            Some(free_transfer),
        )
    };
    if rc < 0 {
        // SAFETY: not registered, so still ours to free.
        unsafe { free_transfer(state) };
        return Err(last_error("virStreamEventAddCallback"));
    }
    Ok(Progress { ended, moved })
}

/// Sends the whole of `src` on `stream` (made with [`NONBLOCK`], already given to
/// virStorageVolUpload) from the event loop.
pub fn upload(stream: Stream, src: std::fs::File) -> std::io::Result<Progress> {
    transfer(stream, Some(Box::new(src)), None, ST_WRITABLE)
}

/// Sends `bytes` on `stream` like [`upload`].
pub fn upload_bytes(stream: Stream, bytes: Vec<u8>) -> std::io::Result<Progress> {
    transfer(
        stream,
        Some(Box::new(std::io::Cursor::new(bytes))),
        None,
        ST_WRITABLE,
    )
}

/// Receives `stream` (made with [`NONBLOCK`], already given to virStorageVolDownload or
/// virDomainOpenConsole) into `sink` from the event loop.
pub fn download(stream: Stream, sink: Sink) -> std::io::Result<Progress> {
    transfer(stream, None, Some(sink), ST_READABLE)
}
