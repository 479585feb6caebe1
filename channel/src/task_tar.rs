//! Packs the task tree into a tar stream, chunked for TaskChunk frames. `tar` is blocking, so the
//! packing runs on a blocking thread and hands chunks over a bounded channel (backpressure from the
//! guest's reading pace).

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

use tokio::{sync::mpsc, task::JoinHandle};

use crate::ChannelError;

/// Chunks in flight between the packer and the socket writer.
const CHUNKS_IN_FLIGHT: usize = 4;

struct ChunkWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    chunk: usize,
}

impl ChunkWriter {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        self.tx
            .blocking_send(full)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "session ended"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.chunk - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.chunk {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

/// Starts packing `task_dir` (its contents at the tar's root). Chunks arrive on the receiver; the
/// handle tells whether packing succeeded once the receiver has drained.
pub(crate) fn spawn_packer(
    task_dir: &Path,
    chunk: usize,
) -> (
    mpsc::Receiver<Vec<u8>>,
    JoinHandle<Result<(), ChannelError>>,
) {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let dir: PathBuf = task_dir.to_path_buf();
    let chunk = chunk.max(512);
    let handle = tokio::task::spawn_blocking(move || {
        let wrap = |source| ChannelError::TaskTree {
            path: dir.clone(),
            source,
        };
        if !dir.is_dir() {
            return Err(wrap(io::Error::new(
                io::ErrorKind::NotFound,
                "not a directory",
            )));
        }
        let writer = ChunkWriter {
            tx,
            buf: Vec::with_capacity(chunk),
            chunk,
        };
        let mut builder = tar::Builder::new(writer);
        // Links stay links: the guest unpacks them inside its own task dir.
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Deterministic);
        builder.append_dir_all(".", &dir).map_err(wrap)?;
        let mut writer = builder.into_inner().map_err(wrap)?;
        writer.flush().map_err(wrap)?;
        Ok(())
    });
    (rx, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn packs_a_tree_in_bounded_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("runtask.yml"), "name: x\n").expect("write");
        std::fs::write(dir.path().join("sub/big"), vec![7u8; 10_000]).expect("write");
        let (mut rx, handle) = spawn_packer(dir.path(), 1024);
        let mut all = Vec::new();
        while let Some(c) = rx.recv().await {
            assert!(c.len() <= 1024);
            all.extend(c);
        }
        handle.await.expect("join").expect("packed");
        let mut names: Vec<String> = tar::Archive::new(&all[..])
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert!(
            names.iter().any(|n| n.ends_with("runtask.yml")),
            "{names:?}"
        );
        assert!(names.iter().any(|n| n.ends_with("sub/big")), "{names:?}");
    }

    #[tokio::test]
    async fn missing_task_dir_is_a_task_tree_error() {
        let (mut rx, handle) = spawn_packer(Path::new("/nonexistent/minion-task"), 1024);
        assert!(rx.recv().await.is_none());
        let err = handle.await.expect("join").expect_err("missing");
        assert!(matches!(err, ChannelError::TaskTree { .. }), "{err}");
    }
}
