//! Downloaded files on the host, kept by content: `blobs/<sha256>` holds the bytes, and
//! `index/<sha256 of the URL>` says which blob an immutable URL (a Koji package file) gave, so a
//! second job fetching the same build reads it from disk. Downloads land in `tmp/` and are
//! renamed in only once complete and of the expected size. The cache is bounded: the least
//! recently used blobs go first.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::http::Http;
use crate::{Budget, FetchError};

/// One file in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// Whether it came from the cache rather than the network.
    pub hit: bool,
}

#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
    /// One pruning at a time.
    prune: Mutex<()>,
}

pub(crate) fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn io(path: &Path, e: std::io::Error) -> FetchError {
    FetchError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl Cache {
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, FetchError> {
        for sub in ["blobs", "index", "tmp"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            prune: Mutex::new(()),
        })
    }

    fn index_path(&self, url: &str) -> PathBuf {
        self.dir
            .join("index")
            .join(hex(&Sha256::digest(url.as_bytes())))
    }

    /// The blob an immutable URL gave before, if it is still here (and still its size).
    fn lookup(&self, url: &str) -> Option<Blob> {
        let text = fs::read_to_string(self.index_path(url)).ok()?;
        let (sha, size) = text.trim().split_once(' ')?;
        let size: u64 = size.parse().ok()?;
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let path = self.dir.join("blobs").join(sha);
        let meta = fs::metadata(&path).ok()?;
        if meta.len() != size {
            return None;
        }
        // Touch: pruning removes the least recently used first.
        let _ = fs::File::options()
            .append(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        Some(Blob {
            path,
            size,
            sha256: sha.to_string(),
            hit: true,
        })
    }

    /// The file at `url`: from the cache when `immutable` and known, else downloaded (counted
    /// against `budget` as it streams, and refused once over it). `expected_size`, when the
    /// service said it, must match.
    pub fn fetch(
        &self,
        http: &Http,
        service: &'static str,
        url: &str,
        immutable: bool,
        expected_size: Option<u64>,
        budget: &mut Budget,
    ) -> Result<Blob, FetchError> {
        if immutable {
            if let Some(b) = self.lookup(url) {
                if expected_size.is_none_or(|s| s == b.size) {
                    budget.take(b.size)?;
                    return Ok(b);
                }
            }
        }
        if let Some(s) = expected_size {
            budget.fits(s)?;
        }
        let answer = http.get(service, url, budget, None)?;
        match answer.status {
            200 => {}
            404 => {
                return Err(FetchError::NotFound {
                    what: url.to_string(),
                })
            }
            s => {
                return Err(FetchError::Unreachable {
                    service,
                    url: url.to_string(),
                    message: format!("HTTP {s}"),
                })
            }
        }
        let tmp = tempfile_in(&self.dir.join("tmp"))?;
        let mut out = fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        let mut reader = answer.body.into_reader();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        let result = loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) => {
                    break Err(FetchError::Unreachable {
                        service,
                        url: url.to_string(),
                        message: format!("download interrupted after {size} bytes: {e}"),
                    })
                }
            };
            size += n as u64;
            if let Err(e) = budget.take(n as u64) {
                break Err(e);
            }
            if let Err(e) = budget.time_left() {
                break Err(e);
            }
            hasher.update(&buf[..n]);
            if let Err(e) = out.write_all(&buf[..n]) {
                break Err(io(&tmp, e));
            }
        };
        let result = result.and_then(|()| match expected_size {
            Some(s) if s != size => Err(FetchError::Protocol {
                service,
                message: format!("{url}: {size} bytes received, the service said {s}"),
            }),
            _ => Ok(()),
        });
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        out.sync_all().map_err(|e| io(&tmp, e))?;
        drop(out);
        let sha = hex(&hasher.finalize());
        let path = self.dir.join("blobs").join(&sha);
        fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        if immutable {
            let index = self.index_path(url);
            let tmp_index = tempfile_in(&self.dir.join("tmp"))?;
            fs::write(&tmp_index, format!("{sha} {size}\n")).map_err(|e| io(&tmp_index, e))?;
            fs::rename(&tmp_index, &index).map_err(|e| io(&index, e))?;
        }
        self.prune_to_bound(&path);
        Ok(Blob {
            path,
            size,
            sha256: sha,
            hit: false,
        })
    }

    /// Removes the least recently used blobs until the cache is within its bound; `keep` (the blob
    /// just fetched) stays. A blob another job is placing stays readable through its open handle
    /// or hard link.
    fn prune_to_bound(&self, keep: &Path) {
        let Ok(_one) = self.prune.lock() else { return };
        let Ok(entries) = fs::read_dir(self.dir.join("blobs")) else {
            return;
        };
        let mut blobs: Vec<(SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = blobs.iter().map(|b| b.1).sum();
        blobs.sort();
        for (_, size, path) in blobs {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            if fs::remove_file(&path).is_ok() {
                tracing::info!(blob = %path.display(), size, "cache: removed (least recently used)");
                total -= size;
            }
        }
    }
}

/// A fresh file name in `dir`.
fn tempfile_in(dir: &Path) -> Result<PathBuf, FetchError> {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(dir.join(format!(".part-{}-{nanos}-{seq}", std::process::id())))
}
