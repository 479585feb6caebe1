//! A pool's package source: a directory of `.deb` files on the host, indexed as a flat apt
//! repository (one `Packages` file), from which the guest's apt installs a formula's
//! `environment` without network. The guest asks for the index, lets its own apt resolve the
//! dependencies against it, then asks for files by the index's names: only files the index lists
//! are served, so a request cannot reach anything else on the host.
//!
//! The index follows the directory: each request re-reads the listing (names, sizes, mtimes) and
//! indexes only files that are new or changed (`dpkg-deb -f` for the control fields, SHA-256 of
//! the bytes). A file that is not a readable `.deb` is left out with a warning, once: it is tried
//! again only when it changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

use minion_formula::{FetchRequest, FetchedKind, PACKAGE_INDEX};
use sha2::{Digest, Sha256};

use crate::cache::{hex, io};
use crate::{Blob, Budget, CachedFile, FetchError};

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
    /// Every `.deb` of the directory as last seen, the ones left out of the index included.
    entries: BTreeMap<String, Entry>,
    index: Option<Blob>,
    /// The index written before the current one (still kept on disk).
    previous: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    size: u64,
    mtime: Option<SystemTime>,
    /// The package's control fields, then `Filename`, `Size`, `SHA256`; `None`: not a readable
    /// `.deb`, left out of the index (and not served).
    stanza: Option<String>,
}

impl PackageSource {
    /// Opens `dir` (which must be a directory) and indexes it; generated indexes go to `out`.
    pub fn open(dir: &Path, out: &Path) -> Result<Self, FetchError> {
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

    /// How many packages the index lists now.
    pub fn package_count(&self) -> usize {
        listed(&self.lock().entries)
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
                            .filter(|e| e.stanza.is_some())
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
        let listing = std::fs::read_dir(&self.dir).map_err(|e| io(&self.dir, e))?;
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
        let mut entries = BTreeMap::new();
        for (name, (size, mtime)) in seen {
            let known = state
                .entries
                .get(&name)
                .filter(|e| e.size == size && e.mtime == mtime);
            let entry = match known {
                Some(e) => e.clone(),
                None => {
                    let stanza = index_deb(&self.dir.join(&name), &name, size)
                        .map_err(|e| {
                            tracing::warn!(
                                dir = %self.dir.display(),
                                file = %name,
                                "left out of the package index: {e}"
                            )
                        })
                        .ok();
                    Entry {
                        size,
                        mtime,
                        stanza,
                    }
                }
            };
            entries.insert(name, entry);
        }
        if entries == state.entries {
            if let Some(b) = &state.index {
                return Ok(b.clone());
            }
        }
        let mut text = String::new();
        for stanza in entries.values().filter_map(|e| e.stanza.as_deref()) {
            text.push_str(stanza);
            text.push('\n');
        }
        let sha256 = hex(&Sha256::digest(text.as_bytes()));
        let path = self.out.join(format!("{PACKAGE_INDEX}-{}", &sha256[..16]));
        let tmp = self.out.join(format!(".{PACKAGE_INDEX}.tmp"));
        std::fs::write(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| io(&path, e))?;
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
            packages = listed(&state.entries),
            "package index written"
        );
        Ok(blob)
    }
}

/// How many of `entries` the index lists.
fn listed(entries: &BTreeMap<String, Entry>) -> usize {
    entries.values().filter(|e| e.stanza.is_some()).count()
}

/// The index stanza of one `.deb`: its control fields (from `dpkg-deb -f`) and where and what it
/// is.
fn index_deb(path: &Path, name: &str, size: u64) -> Result<String, String> {
    let out = minion_children::die_with_parent(&mut Command::new("dpkg-deb"))
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
    std::fs::File::open(path)
        .and_then(|mut f| std::io::copy(&mut f, &mut sha))
        .map_err(|e| e.to_string())?;
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
