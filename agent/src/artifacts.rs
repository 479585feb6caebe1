//! Packs the run directory (`task_output/`, `results.yaml`, `results.tap`) into ArtifactChunk frames.
//!
//! Only regular files and directories are sent: the host refuses links, devices and fifos, so an
//! honest agent skips them (saying so in the log) instead of failing the whole job.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use minion_proto::guest::{guest_frame::Kind, ArtifactChunk, ArtifactEnd};

use crate::outbox::Outbox;

/// Artifact data per frame: big frames amortise the per-frame cost on the (emulated) guest CPU.
pub const ARTIFACT_CHUNK: usize = 1024 * 1024 - 64;

struct ChunkWriter<'a> {
    outbox: &'a Outbox,
    buf: Vec<u8>,
    total: u64,
}

impl ChunkWriter<'_> {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(ARTIFACT_CHUNK));
        self.total += data.len() as u64;
        self.outbox
            .send(Kind::ArtifactChunk(ArtifactChunk { data }))
            .map_err(io::Error::other)
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (ARTIFACT_CHUNK - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == ARTIFACT_CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

/// What was sent, and what was left out (and why).
#[derive(Debug, Default)]
pub struct Packed {
    pub bytes: u64,
    pub entries: u64,
    pub skipped: Vec<String>,
}

/// Sends everything under `run_dir` as one tar stream, then ArtifactEnd.
pub fn send_artifacts(outbox: &Outbox, run_dir: &Path) -> io::Result<Packed> {
    let writer = ChunkWriter {
        outbox,
        buf: Vec::with_capacity(ARTIFACT_CHUNK),
        total: 0,
    };
    let mut builder = tar::Builder::new(writer);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut packed = Packed::default();
    add_dir(&mut builder, run_dir, Path::new(""), &mut packed)?;
    let mut writer = builder.into_inner()?;
    writer.flush()?;
    packed.bytes = writer.total;
    outbox
        .send(Kind::ArtifactEnd(ArtifactEnd {
            total_bytes: packed.bytes,
            entries: packed.entries,
        }))
        .map_err(io::Error::other)?;
    Ok(packed)
}

fn add_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    packed: &mut Packed,
) -> io::Result<()> {
    let mut entries: Vec<(PathBuf, fs::FileType)> = fs::read_dir(dir)?
        .map(|e| e.and_then(|e| Ok((e.path(), e.file_type()?))))
        .collect::<io::Result<_>>()?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, kind) in entries {
        let Some(name) = path.file_name() else {
            continue;
        };
        let rel = rel.join(name);
        if kind.is_dir() {
            builder.append_dir(&rel, &path)?;
            packed.entries += 1;
            add_dir(builder, &path, &rel, packed)?;
        } else if kind.is_file() {
            let mut f = fs::File::open(&path)?;
            builder.append_file(&rel, &mut f)?;
            packed.entries += 1;
        } else {
            packed.skipped.push(rel.display().to_string());
        }
    }
    Ok(())
}
