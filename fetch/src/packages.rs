//! A pool's package source: a directory of `.deb` files on the host, indexed as a flat apt
//! repository (one `Packages` file), from which the guest's apt installs a formula's
//! `environment` without network. The guest asks for the index, lets its own apt resolve the
//! dependencies against it, then asks for files by the index's names: only files the index lists
//! are served, so a request cannot reach anything else on the host.
//!
//! The index follows the directory: each request re-reads the listing (names, sizes, mtimes) and
//! indexes only files that are new or changed (`dpkg-deb -f` for the control fields, SHA-256 of
//! the bytes). A file that is not a readable `.deb` is left out with a warning.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

use minion_formula::{FetchRequest, FetchedKind};
use sha2::{Digest, Sha256};

use crate::cache::hex;
use crate::{Blob, Budget, CachedFile, FetchError};

use minion_formula::PACKAGE_INDEX;

#[derive(Debug)]
pub struct PackageSource {
    dir: PathBuf,
    /// Where generated indexes are written (one file per content, so a job streaming the previous
    /// one is not cut short by a rewrite).
    out: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    index: Option<Blob>,
    /// The index written before the current one (still kept on disk).
    previous: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Entry {
    size: u64,
    mtime: Option<SystemTime>,
    /// The package's control fields, then `Filename`, `Size`, `SHA256`.
    stanza: String,
}

impl PackageSource {
    /// Opens `dir` (which must be a directory) and indexes it; generated indexes go to `out`.
    pub fn open(dir: &Path, out: &Path) -> Result<Self, FetchError> {
        let io = |path: &Path, e: std::io::Error| FetchError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let meta = std::fs::metadata(dir).map_err(|e| io(dir, e))?;
        if !meta.is_dir() {
            return Err(FetchError::Io {
                path: dir.to_path_buf(),
                message: "not a directory".into(),
            });
        }
        std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
        let source = Self {
            dir: dir.to_path_buf(),
            out: out.to_path_buf(),
            state: Mutex::new(State::default()),
        };
        source.refresh()?;
        Ok(source)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many packages the index lists now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers a package request ([`FetchRequest::PackageIndex`] or [`FetchRequest::Packages`]),
    /// counting the files against `budget`.
    pub fn fetch(
        &self,
        request: &FetchRequest,
        budget: &mut Budget,
    ) -> Result<Vec<CachedFile>, FetchError> {
        request.check().map_err(FetchError::BadRequest)?;
        budget.time_left()?;
        let blob = self.refresh()?;
        let files = match request {
            FetchRequest::PackageIndex => vec![CachedFile {
                name: PACKAGE_INDEX.into(),
                kind: FetchedKind::File,
                blob,
            }],
            FetchRequest::Packages { files } => {
                let state = self.lock();
                files
                    .iter()
                    .map(|name| {
                        let e = state
                            .entries
                            .get(name)
                            .ok_or_else(|| FetchError::NotFound {
                                what: format!("the pool's package source has no file {name}"),
                            })?;
                        Ok(CachedFile {
                            name: name.clone(),
                            kind: FetchedKind::File,
                            blob: Blob {
                                path: self.dir.join(name),
                                size: e.size,
                                sha256: String::new(),
                                hit: true,
                            },
                        })
                    })
                    .collect::<Result<Vec<_>, FetchError>>()?
            }
            other => {
                return Err(FetchError::BadRequest(format!(
                    "{} is not a package request",
                    other.describe()
                )))
            }
        };
        for f in &files {
            budget.take(f.blob.size)?;
        }
        Ok(files)
    }

    /// Re-reads the directory, indexes what is new or changed, and writes the index if it
    /// changed. Returns the current index.
    fn refresh(&self) -> Result<Blob, FetchError> {
        let listing = std::fs::read_dir(&self.dir).map_err(|e| FetchError::Io {
            path: self.dir.clone(),
            message: e.to_string(),
        })?;
        let mut seen = BTreeMap::new();
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".deb") || minion_formula::check_name("file", &name).is_err() {
                continue;
            }
            // Follows symlinks: an admin may link packages in from elsewhere.
            match std::fs::metadata(entry.path()) {
                Ok(m) if m.is_file() => {
                    seen.insert(name, (m.len(), m.modified().ok()));
                }
                _ => {}
            }
        }
        let mut state = self.lock();
        let mut changed = state.index.is_none() || state.entries.len() != seen.len();
        let mut entries = BTreeMap::new();
        for (name, (size, mtime)) in seen {
            match state.entries.get(&name) {
                Some(e) if e.size == size && e.mtime == mtime => {
                    entries.insert(name, e.clone());
                }
                _ => {
                    changed = true;
                    match index_deb(&self.dir.join(&name), &name, size) {
                        Ok(stanza) => {
                            entries.insert(
                                name,
                                Entry {
                                    size,
                                    mtime,
                                    stanza,
                                },
                            );
                        }
                        Err(e) => tracing::warn!(
                            dir = %self.dir.display(),
                            file = %name,
                            "left out of the package index: {e}"
                        ),
                    }
                }
            }
        }
        if !changed {
            if let Some(b) = &state.index {
                return Ok(b.clone());
            }
        }
        let mut text = String::new();
        for e in entries.values() {
            text.push_str(&e.stanza);
            text.push('\n');
        }
        let sha256 = hex(&Sha256::digest(text.as_bytes()));
        let path = self.out.join(format!("{PACKAGE_INDEX}-{}", &sha256[..16]));
        let tmp = self.out.join(format!(".{PACKAGE_INDEX}.tmp"));
        std::fs::write(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| FetchError::Io {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let blob = Blob {
            path: path.clone(),
            size: text.len() as u64,
            sha256,
            hit: true,
        };
        // Keep the index before this one (a job may still be streaming it), drop older ones.
        if let Some(old) = state.index.as_ref().map(|b| b.path.clone()) {
            if old != path {
                if let Some(older) = state.previous.replace(old) {
                    if older != path {
                        let _ = std::fs::remove_file(older);
                    }
                }
            }
        }
        state.entries = entries;
        state.index = Some(blob.clone());
        tracing::info!(
            dir = %self.dir.display(),
            packages = state.entries.len(),
            "package index written"
        );
        Ok(blob)
    }
}

/// The index stanza of one `.deb`: its control fields (from `dpkg-deb -f`) and where and what it
/// is.
fn index_deb(path: &Path, name: &str, size: u64) -> Result<String, String> {
    let out = Command::new("dpkg-deb")
        .arg("-f")
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run dpkg-deb (install dpkg): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "not a Debian package: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let control = String::from_utf8(out.stdout).map_err(|_| "control fields are not UTF-8")?;
    let package = control
        .lines()
        .find_map(|l| l.strip_prefix("Package:"))
        .map(str::trim)
        .ok_or("no Package field")?;
    minion_formula::check_package_name(package)?;
    let mut sha = Sha256::new();
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    let mut stanza = String::new();
    for line in control.lines().filter(|l| !l.trim().is_empty()) {
        stanza.push_str(line);
        stanza.push('\n');
    }
    stanza.push_str(&format!(
        "Filename: ./{name}\nSize: {size}\nSHA256: {}\n",
        hex(&sha.finalize())
    ));
    Ok(stanza)
}
