//! Unpacks the guest's artifact tar stream under the job's artifacts dir, and nowhere else.
//!
//! Only plain files and directories with relative, `..`-free paths are accepted; links, devices and
//! fifos are refused outright (a link inside the dir is harmless today but a trap for whoever reads
//! it later), and so are entries outside the run layout (`task_output/`, `results.yaml`,
//! `results.tap`): the host keeps its own files (`minion.log`, `console.log`) beside them. Entry
//! count is capped here; the byte budget is enforced on the stream by the session.

use std::{
    fs,
    io::{self, Read},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use tokio::{sync::mpsc, task::JoinHandle};

use crate::ChannelError;

/// Chunks buffered between the socket reader and the unpacking thread.
const CHUNKS_IN_FLIGHT: usize = 8;

/// Reads the chunks the session forwards, as one byte stream.
struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.blocking_recv() {
                Some(c) => {
                    self.cur = c;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The running unpacker: feed it chunks, then drop the sender and join.
pub(crate) struct Unpacker {
    pub(crate) tx: mpsc::Sender<Vec<u8>>,
    pub(crate) handle: JoinHandle<Result<u64, ChannelError>>,
}

pub(crate) fn spawn_unpacker(dest: &Path, max_entries: u64, keep_free: u64) -> Unpacker {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let dest = dest.to_path_buf();
    let handle = tokio::task::spawn_blocking(move || {
        let reader = ChunkReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        };
        unpack(reader, &dest, max_entries, keep_free)
    });
    Unpacker { tx, handle }
}

/// Large copies: the chunks arriving are up to 1 MiB, and `io::copy`'s 8 KiB steps would cost a
/// write syscall per 8 KiB of a 200 MB artifact.
const COPY_BUF: usize = 1024 * 1024;

/// How often (bytes written) the filesystem's free space is looked at.
const FREE_CHECK_EVERY: u64 = 8 * 1024 * 1024;

/// Copies one entry's bytes; stops with [`ChannelError::HostDiskFull`] when the filesystem under
/// `path` has less than `keep_free` bytes left, or is full.
fn copy_entry<R: Read>(
    from: &mut R,
    to: &mut fs::File,
    buf: &mut [u8],
    path: &Path,
    keep_free: u64,
) -> Result<(), ChannelError> {
    let mut since_check = FREE_CHECK_EVERY;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ChannelError::ArtifactTar(e)),
        };
        if keep_free > 0 && since_check >= FREE_CHECK_EVERY {
            since_check = 0;
            let free = free_bytes(path);
            if free.is_some_and(|f| f < keep_free.saturating_add(n as u64)) {
                return Err(disk_full(path, keep_free));
            }
        }
        since_check += n as u64;
        io::Write::write_all(to, &buf[..n]).map_err(|e| io_error(path, e, keep_free))?;
    }
}

/// Free bytes (for unprivileged writers) on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

fn disk_full(path: &Path, keep_free: u64) -> ChannelError {
    ChannelError::HostDiskFull {
        path: path.to_path_buf(),
        free: free_bytes(path).unwrap_or(0),
        keep_free,
    }
}

/// An io error writing `path`; a full filesystem (or quota) is [`ChannelError::HostDiskFull`].
fn io_error(path: &Path, source: io::Error, keep_free: u64) -> ChannelError {
    match source.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => disk_full(path, keep_free),
        _ => ChannelError::ArtifactIo {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// The run layout the agent sends. Anything else could land on files the host keeps beside the
/// artifacts (`minion.log`, `console.log`), so it is refused.
fn allowed_location(rel: &Path, kind: tar::EntryType) -> bool {
    let mut parts = rel.components();
    match parts.next().and_then(|c| c.as_os_str().to_str()) {
        Some(TASK_OUTPUT) => true,
        Some(f) if RESULT_FILES.contains(&f) => parts.next().is_none() && !kind.is_dir(),
        _ => false,
    }
}

/// The run layout: the one directory and the two files the guest may send.
const TASK_OUTPUT: &str = "task_output";
const RESULT_FILES: [&str; 2] = ["results.yaml", "results.tap"];

/// Removes whatever of the run layout is under `dest` (what an unpack that could not finish
/// wrote), leaving the host's own files beside it.
fn remove_unpacked(dest: &Path) {
    let _ = fs::remove_dir_all(dest.join(TASK_OUTPUT));
    for f in RESULT_FILES {
        let _ = fs::remove_file(dest.join(f));
    }
}

/// A relative path made only of normal components (minion-safepath's lexical rule), or why not.
pub(crate) fn confine(path: &Path) -> Result<PathBuf, &'static str> {
    use minion_safepath::PathError;
    minion_safepath::relative(path).map_err(|e| match e {
        PathError::Empty { .. } => "empty path",
        PathError::Parent { .. } => "path contains `..`",
        _ => "absolute path",
    })
}

/// Unpacks a tar stream into `dest`, leaving at least `keep_free` bytes free on its filesystem
/// (0: no such check); returns the number of entries written.
pub(crate) fn unpack<R: Read>(
    reader: R,
    dest: &Path,
    max_entries: u64,
    keep_free: u64,
) -> Result<u64, ChannelError> {
    let unpacked = unpack_all(reader, dest, max_entries, keep_free);
    if matches!(unpacked, Err(ChannelError::HostDiskFull { .. })) {
        // What was written goes at once, so the host's filesystem has room again for the
        // job's final state and the jobs that follow.
        remove_unpacked(dest);
    }
    unpacked
}

fn unpack_all<R: Read>(
    reader: R,
    dest: &Path,
    max_entries: u64,
    keep_free: u64,
) -> Result<u64, ChannelError> {
    let io_err = |path: &Path, source| io_error(path, source, keep_free);
    fs::create_dir_all(dest).map_err(|e| io_err(dest, e))?;
    let mut archive = tar::Archive::new(reader);
    let mut count = 0u64;
    let mut copy_buf = vec![0u8; COPY_BUF];
    for entry in archive.entries().map_err(ChannelError::ArtifactTar)? {
        let mut entry = entry.map_err(ChannelError::ArtifactTar)?;
        count += 1;
        if count > max_entries {
            return Err(ChannelError::LimitExceeded {
                what: "artifact entries",
                limit: max_entries,
            });
        }
        let raw = entry
            .path()
            .map_err(ChannelError::ArtifactTar)?
            .into_owned();
        let shown = raw.to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        let rel = match confine(&raw) {
            Ok(rel) => rel,
            // The archive's own root (`./`) is harmless.
            Err("empty path") if kind.is_dir() => continue,
            Err(reason) => {
                return Err(ChannelError::UnsafeArtifact {
                    path: shown,
                    reason,
                })
            }
        };
        let target = dest.join(&rel);
        if matches!(
            kind,
            tar::EntryType::Directory | tar::EntryType::Regular | tar::EntryType::Continuous
        ) && !allowed_location(&rel, kind)
        {
            return Err(ChannelError::UnsafeArtifact {
                path: shown,
                reason: "outside task_output/, results.yaml and results.tap",
            });
        }
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target).map_err(|e| io_err(&target, e))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
                }
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    // Never write through a link, whatever else may sit in the directory.
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o644)
                    .open(&target)
                    .map_err(|e| io_err(&target, e))?;
                copy_entry(&mut entry, &mut file, &mut copy_buf, &target, keep_free)?;
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(ChannelError::UnsafeArtifact {
                    path: shown,
                    reason: "links are not accepted",
                })
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(ChannelError::UnsafeArtifact {
                    path: shown,
                    reason: "device files are not accepted",
                })
            }
            tar::EntryType::Fifo => {
                return Err(ChannelError::UnsafeArtifact {
                    path: shown,
                    reason: "fifos are not accepted",
                })
            }
            _ => {
                return Err(ChannelError::UnsafeArtifact {
                    path: shown,
                    reason: "unsupported tar entry type",
                })
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().expect("tar")
    }

    fn file_header(size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h
    }

    /// Writes a header with a raw name, bypassing tar's own path checks (a hostile guest would).
    fn raw_entry(b: &mut tar::Builder<Vec<u8>>, name: &[u8], kind: tar::EntryType, link: &[u8]) {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &[][..]).expect("append");
    }

    #[test]
    fn unpacks_files_and_dirs_inside_dest() {
        let data = tar_with(|b| {
            b.append_data(&mut file_header(5), "task_output/a/b.txt", &b"hello"[..])
                .expect("append");
            b.append_data(&mut file_header(2), "results.yaml", &b"x\n"[..])
                .expect("append");
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let n = unpack(&data[..], dir.path(), 10, 0).expect("unpack");
        assert_eq!(n, 2);
        assert_eq!(
            fs::read(dir.path().join("task_output/a/b.txt")).expect("read"),
            b"hello"
        );
    }

    #[test]
    fn a_full_disk_stops_the_unpack_and_leaves_nothing_of_it() {
        let data = tar_with(|b| {
            let mut dir = tar::Header::new_gnu();
            dir.set_entry_type(tar::EntryType::Directory);
            dir.set_mode(0o755);
            dir.set_size(0);
            b.append_data(&mut dir, "task_output/logs", &[][..])
                .expect("append");
            b.append_data(&mut file_header(5), "task_output/logs/a.txt", &b"hello"[..])
                .expect("append");
        });
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("minion.log"), b"host's own").expect("log");
        // No filesystem has this much free: the first file's bytes are refused.
        let err = unpack(&data[..], dir.path(), 10, u64::MAX).expect_err("full");
        assert!(matches!(err, ChannelError::HostDiskFull { .. }), "{err}");
        assert!(
            !dir.path().join("task_output").exists(),
            "the partial unpack is gone"
        );
        assert_eq!(
            fs::read(dir.path().join("minion.log")).expect("log"),
            b"host's own"
        );
    }

    #[test]
    fn rejects_parent_dir_escape() {
        let data = tar_with(|b| raw_entry(b, b"../escape", tar::EntryType::Regular, b""));
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("art");
        let err = unpack(&data[..], &dest, 10, 0).expect_err("escape");
        assert!(
            matches!(
                err,
                ChannelError::UnsafeArtifact {
                    reason: "path contains `..`",
                    ..
                }
            ),
            "{err}"
        );
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn rejects_absolute_paths() {
        let data = tar_with(|b| raw_entry(b, b"/tmp/minion-abs", tar::EntryType::Regular, b""));
        let dir = tempfile::tempdir().expect("tempdir");
        let err = unpack(&data[..], dir.path(), 10, 0).expect_err("absolute");
        assert!(
            matches!(
                err,
                ChannelError::UnsafeArtifact {
                    reason: "absolute path",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn rejects_links_devices_and_fifos() {
        for (kind, reason) in [
            (tar::EntryType::Symlink, "links are not accepted"),
            (tar::EntryType::Link, "links are not accepted"),
            (tar::EntryType::Char, "device files are not accepted"),
            (tar::EntryType::Block, "device files are not accepted"),
            (tar::EntryType::Fifo, "fifos are not accepted"),
        ] {
            let data = tar_with(|b| raw_entry(b, b"evil", kind, b"/etc/passwd"));
            let dir = tempfile::tempdir().expect("tempdir");
            let err = unpack(&data[..], dir.path(), 10, 0).expect_err("refused");
            assert!(
                matches!(&err, ChannelError::UnsafeArtifact { reason: r, .. } if *r == reason),
                "{kind:?}: {err}"
            );
            assert!(!dir.path().join("evil").exists());
        }
    }

    #[test]
    fn caps_entry_count() {
        let data = tar_with(|b| {
            for i in 0..5 {
                b.append_data(&mut file_header(0), format!("task_output/f{i}"), &[][..])
                    .expect("append");
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let err = unpack(&data[..], dir.path(), 3, 0).expect_err("too many");
        assert!(
            matches!(
                err,
                ChannelError::LimitExceeded {
                    what: "artifact entries",
                    limit: 3
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn does_not_write_through_an_existing_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        let dest = dir.path().join("art");
        fs::create_dir_all(dest.join("task_output")).expect("mkdir");
        std::os::unix::fs::symlink(&outside, dest.join("task_output/f")).expect("symlink");
        let data = tar_with(|b| {
            b.append_data(&mut file_header(1), "task_output/f", &b"x"[..])
                .expect("append");
        });
        let err = unpack(&data[..], &dest, 10, 0).expect_err("nofollow");
        assert!(matches!(err, ChannelError::ArtifactIo { .. }), "{err}");
        assert!(!outside.exists());
    }

    #[test]
    fn refuses_files_outside_the_run_layout() {
        for name in ["minion.log", "console.log", "results.yaml/x", "other/f"] {
            let data = tar_with(|b| {
                b.append_data(&mut file_header(1), name, &b"x"[..])
                    .expect("append");
            });
            let dir = tempfile::tempdir().expect("tempdir");
            let err = unpack(&data[..], dir.path(), 10, 0).expect_err(name);
            assert!(
                matches!(
                    err,
                    ChannelError::UnsafeArtifact {
                        reason: "outside task_output/, results.yaml and results.tap",
                        ..
                    }
                ),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn confine_keeps_normal_paths() {
        assert_eq!(
            confine(Path::new("./a/./b")).expect("ok"),
            PathBuf::from("a/b")
        );
        assert!(confine(Path::new("a/../../b")).is_err());
    }
}
