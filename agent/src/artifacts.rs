//! Packs the run directory (`task_output/`, `results.yaml`, `results.tap`) into ArtifactChunk frames.
//!
//! Under TCG every byte copy in the guest is expensive, so this writes the tar stream itself: file
//! data is read straight into the outgoing frame's buffer, behind a hand-encoded frame header, and
//! the frame goes to the port in one write (two guest copies per byte, as a raw `dd` would do).
//! Only regular files and directories are sent: the host refuses links, devices and fifos, so an
//! honest agent skips them (and says so) instead of failing the whole job.

use std::{
    fs,
    io::{self, Read},
    path::{Path, PathBuf},
};

use minion_channel::frame::MAX_FRAME;
use minion_proto::guest::{guest_frame::Kind, ArtifactEnd};
use prost::encoding::{encode_varint, encoded_len_varint};

use crate::outbox::Outbox;

/// Artifact data per frame, leaving room for the frame's envelope within `MAX_FRAME`.
pub const ARTIFACT_CHUNK: usize = MAX_FRAME - 64;
/// Room before the data for the frame header (length, tags, lengths: at most 1+3+1+3+1+3 bytes).
const HEADROOM: usize = 16;
/// `GuestFrame.artifact_chunk` (field 5) and `ArtifactChunk.data` (field 1), both length-delimited.
const TAG_ARTIFACT_CHUNK: u8 = (5 << 3) | 2;
const TAG_DATA: u8 = (1 << 3) | 2;
const BLOCK: usize = 512;
/// Longest name a GNU header holds itself; longer ones get a `././@LongLink` entry first.
const GNU_NAME_MAX: usize = 100;

/// Writes the header of a frame carrying `data_len` artifact bytes so that it ends exactly at
/// `head.len()`; returns where it starts.
fn encode_chunk_header(head: &mut [u8; HEADROOM], data_len: usize) -> usize {
    let inner = 1 + encoded_len_varint(data_len as u64) + data_len;
    let body = 1 + encoded_len_varint(inner as u64) + inner;
    let mut h = Vec::with_capacity(HEADROOM);
    encode_varint(body as u64, &mut h);
    h.push(TAG_ARTIFACT_CHUNK);
    encode_varint(inner as u64, &mut h);
    h.push(TAG_DATA);
    encode_varint(data_len as u64, &mut h);
    let start = HEADROOM - h.len();
    head[start..].copy_from_slice(&h);
    start
}

/// The tar byte stream, cut into frames as it fills.
struct FrameStream<'a> {
    outbox: &'a Outbox,
    /// `HEADROOM` bytes for the header, then up to `ARTIFACT_CHUNK` bytes of data.
    buf: Vec<u8>,
    fill: usize,
    total: u64,
}

impl<'a> FrameStream<'a> {
    fn new(outbox: &'a Outbox) -> Self {
        Self {
            outbox,
            buf: vec![0; HEADROOM + ARTIFACT_CHUNK],
            fill: 0,
            total: 0,
        }
    }

    fn room(&self) -> usize {
        ARTIFACT_CHUNK - self.fill
    }

    fn push(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.room().min(data.len());
            self.buf[HEADROOM + self.fill..HEADROOM + self.fill + n].copy_from_slice(&data[..n]);
            self.fill += n;
            data = &data[n..];
            if self.room() == 0 {
                self.flush_frame()?;
            }
        }
        Ok(())
    }

    fn zeros(&mut self, n: usize) -> io::Result<()> {
        self.push(&vec![0u8; n])
    }

    /// Copies exactly `len` bytes of `r` into the stream, reading straight into the frame buffer.
    /// A file that shrank meanwhile is padded with zeros so the tar stays well-formed.
    fn copy_from(&mut self, r: &mut dyn Read, len: u64) -> io::Result<bool> {
        let mut remaining = len;
        while remaining > 0 {
            let want = (self.room() as u64).min(remaining) as usize;
            let at = HEADROOM + self.fill;
            let n = match r.read(&mut self.buf[at..at + want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.zeros(usize::try_from(remaining).unwrap_or(usize::MAX))?;
                return Ok(false);
            }
            self.fill += n;
            remaining -= n as u64;
            if self.room() == 0 {
                self.flush_frame()?;
            }
        }
        Ok(true)
    }

    fn flush_frame(&mut self) -> io::Result<()> {
        if self.fill == 0 {
            return Ok(());
        }
        let mut head = [0u8; HEADROOM];
        let start = encode_chunk_header(&mut head, self.fill);
        self.buf[..HEADROOM].copy_from_slice(&head);
        self.outbox
            .send_encoded(&self.buf[start..HEADROOM + self.fill])?;
        self.total += self.fill as u64;
        self.fill = 0;
        Ok(())
    }

    fn pad_to_block(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.zeros(BLOCK - rem)?;
        }
        Ok(())
    }

    /// A header (preceded by a GNU long-name entry when the name does not fit).
    fn header(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        size: u64,
        mode: u32,
    ) -> io::Result<()> {
        if name.len() > GNU_NAME_MAX {
            let mut long = tar::Header::new_gnu();
            long.as_gnu_mut()
                .ok_or_else(|| io::Error::other("GNU header"))?
                .name[..13]
                .copy_from_slice(b"././@LongLink");
            long.set_entry_type(tar::EntryType::GNULongName);
            long.set_mode(0o644);
            long.set_mtime(0);
            long.set_size(name.len() as u64 + 1);
            long.set_cksum();
            self.push(long.as_bytes())?;
            self.push(name)?;
            self.push(&[0])?;
            self.pad_to_block(name.len() as u64 + 1)?;
        }
        let mut h = tar::Header::new_gnu();
        let short = &name[..name.len().min(GNU_NAME_MAX)];
        h.as_gnu_mut()
            .ok_or_else(|| io::Error::other("GNU header"))?
            .name[..short.len()]
            .copy_from_slice(short);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_cksum();
        self.push(h.as_bytes())
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
    let mut stream = FrameStream::new(outbox);
    let mut packed = Packed::default();
    add_dir(&mut stream, run_dir, "", &mut packed)?;
    // End of archive: two zero blocks.
    stream.zeros(2 * BLOCK)?;
    stream.flush_frame()?;
    packed.bytes = stream.total;
    outbox
        .send(Kind::ArtifactEnd(ArtifactEnd {
            total_bytes: packed.bytes,
            entries: packed.entries,
        }))
        .map_err(io::Error::other)?;
    Ok(packed)
}

fn add_dir(stream: &mut FrameStream, dir: &Path, rel: &str, packed: &mut Packed) -> io::Result<()> {
    let mut entries: Vec<(PathBuf, fs::FileType)> = fs::read_dir(dir)?
        .map(|e| e.and_then(|e| Ok((e.path(), e.file_type()?))))
        .collect::<io::Result<_>>()?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, kind) in entries {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            packed.skipped.push(path.display().to_string());
            continue;
        };
        let rel = format!("{rel}{name}");
        if kind.is_dir() {
            stream.header(
                format!("{rel}/").as_bytes(),
                tar::EntryType::Directory,
                0,
                0o755,
            )?;
            packed.entries += 1;
            add_dir(stream, &path, &format!("{rel}/"), packed)?;
        } else if kind.is_file() {
            let mut f = fs::File::open(&path)?;
            let meta = f.metadata()?;
            let mode = if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0
            {
                0o755
            } else {
                0o644
            };
            stream.header(rel.as_bytes(), tar::EntryType::Regular, meta.len(), mode)?;
            if !stream.copy_from(&mut f, meta.len())? {
                packed
                    .skipped
                    .push(format!("{rel} (shrank while packing; zero-padded)"));
            }
            stream.pad_to_block(meta.len())?;
            packed.entries += 1;
        } else {
            packed.skipped.push(rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use minion_channel::frame::{encode_frame, FrameReader};
    use minion_proto::guest::{guest_frame, ArtifactChunk, GuestFrame};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn hand_encoded_header_matches_prost() {
        // Never called with 0 (empty frames are not sent; prost would omit the empty field).
        for len in [1usize, 127, 128, 16_383, 16_384, ARTIFACT_CHUNK] {
            let frame = GuestFrame {
                kind: Some(guest_frame::Kind::ArtifactChunk(ArtifactChunk {
                    data: vec![7; len],
                })),
            };
            let expected = encode_frame(&frame, MAX_FRAME).expect("encode");
            let mut head = [0u8; HEADROOM];
            let start = encode_chunk_header(&mut head, len);
            let mut ours = head[start..].to_vec();
            ours.extend(vec![7; len]);
            assert_eq!(ours, expected, "data length {len}");
        }
    }

    #[test]
    fn packs_a_tree_the_host_tar_reader_understands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path();
        let long = "d".repeat(150);
        fs::create_dir_all(run.join("task_output").join(&long)).expect("mkdir");
        fs::write(run.join("task_output").join(&long).join("f.txt"), b"deep").expect("write");
        fs::write(
            run.join("task_output/big.bin"),
            vec![3u8; 3 * ARTIFACT_CHUNK + 17],
        )
        .expect("write");
        fs::write(run.join("results.yaml"), b"results: []\n").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", run.join("task_output/link")).expect("symlink");

        let wire = Captured::default();
        let outbox = Outbox::new(Box::new(wire.clone()));
        let packed = send_artifacts(&outbox, run).expect("pack");
        assert_eq!(packed.skipped, vec!["task_output/link".to_string()]);

        let bytes = wire.0.lock().expect("lock").clone();
        let mut frames = FrameReader::new(&bytes[..], MAX_FRAME);
        let mut tar_bytes = Vec::new();
        let mut ended = None;
        while let Some(f) = frames.read_frame::<GuestFrame>().expect("frame") {
            match f.kind {
                Some(guest_frame::Kind::ArtifactChunk(c)) => tar_bytes.extend(c.data),
                Some(guest_frame::Kind::ArtifactEnd(e)) => ended = Some(e),
                other => panic!("unexpected {other:?}"),
            }
        }
        let end = ended.expect("ArtifactEnd");
        assert_eq!(end.total_bytes, tar_bytes.len() as u64);
        assert_eq!(end.entries, packed.entries);

        let out = tempfile::tempdir().expect("tempdir");
        tar::Archive::new(&tar_bytes[..])
            .unpack(out.path())
            .expect("unpack");
        assert_eq!(
            fs::read(out.path().join("task_output").join(&long).join("f.txt")).expect("deep"),
            b"deep"
        );
        assert_eq!(
            fs::read(out.path().join("task_output/big.bin"))
                .expect("big")
                .len(),
            3 * ARTIFACT_CHUNK + 17
        );
        assert!(out.path().join("results.yaml").exists());
    }
}
