//! libvirt streams (a guest channel from virDomainOpenChannel, a console from
//! virDomainOpenConsole) turned into what the rest of Minion reads: a unix socket, a file.
//!
//! Each pump is a pair of plain threads doing blocking stream calls: libvirt's remote client
//! lets one thread wait in virStreamRecv while another sends. A stream that ends (the domain
//! went, the connection died: keepalive notices a silent host) ends its pump, so the socket's
//! reader sees end-of-file.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::JoinHandle;

use virt::stream::Stream;

/// Bytes per receive.
const CHUNK: usize = 256 * 1024;

/// A unix socket whose other end is `stream`: what is written to the returned socket is sent
/// on the stream, what the stream receives can be read from it. `what` names it in logs.
pub fn socket_for(stream: Stream, what: &str) -> std::io::Result<UnixStream> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut to_sock = theirs.try_clone()?;
    let mut from_sock = theirs;
    let rx = stream.clone();
    let name = what.to_string();
    std::thread::Builder::new()
        .name("chan-recv".into())
        .spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match rx.recv(&mut buf) {
                    Ok(0) => break,
                    Ok(n) if n > 0 => {
                        if to_sock.write_all(&buf[..n as usize]).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(channel = %name, "stream receive: {e}");
                        break;
                    }
                }
            }
            let _ = to_sock.shutdown(std::net::Shutdown::Write);
        })?;
    let name = what.to_string();
    std::thread::Builder::new()
        .name("chan-send".into())
        .spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            let ended = loop {
                let n = match from_sock.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => n,
                    Err(_) => break false,
                };
                let mut off = 0;
                while off < n {
                    match stream.send(&buf[off..n]) {
                        Ok(k) if k > 0 => off += k as usize,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(channel = %name, "stream send: {e}");
                            let _ = from_sock.shutdown(std::net::Shutdown::Both);
                            let _ = stream.abort();
                            return;
                        }
                    }
                }
            };
            // Our side hung up: the stream is closed, which also ends the receiving thread.
            let _ = if ended {
                stream.finish()
            } else {
                stream.abort()
            };
        })?;
    Ok(ours)
}

/// Appends what `stream` receives to `path` until it ends, keeping at most `max_bytes` (what
/// comes after is read and dropped, so the guest never blocks on its console, and one line
/// says so). Returns the thread, to be joined once the domain is gone.
pub fn stream_to_file(
    stream: Stream,
    path: &Path,
    max_bytes: u64,
) -> std::io::Result<JoinHandle<()>> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let name = path.display().to_string();
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut written = 0u64;
            let mut full = false;
            loop {
                match stream.recv(&mut buf) {
                    Ok(0) => break,
                    Ok(n) if n > 0 => {
                        let n = n as usize;
                        if full {
                            continue;
                        }
                        let room = max_bytes.saturating_sub(written).min(n as u64) as usize;
                        if f.write_all(&buf[..room]).is_err() {
                            full = true;
                            continue;
                        }
                        written += room as u64;
                        if room < n {
                            full = true;
                            let _ = writeln!(
                                f,
                                "\n[minion: console output over {max_bytes} bytes dropped]"
                            );
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(console = %name, "stream receive: {e}");
                        break;
                    }
                }
            }
            let _ = stream.abort();
        })
}
