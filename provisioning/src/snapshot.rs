//! Snapshots on disk: a template VM's saved memory and device state with its frozen disk overlay
//! and seed, one directory per key under `<state_dir>/snapshots/`:
//!
//! ```text
//! <key>/memory.save   libvirt's save image (the guest's RAM and devices, and its domain XML)
//! <key>/disk.qcow2    the template's overlay as it was at the save, read-only: each restored VM
//!                     gets its own overlay on top of it (copy-on-write, never shared writable)
//! <key>/seed.iso      the template's seed (the agent runs from it), read-only
//! <key>/snapshot.json what it was made from, and when
//! ```
//!
//! A snapshot is written into `<key>.partial/` and renamed to `<key>/` only once every file is
//! complete and synced, so a directory without the suffix is whole; a daemon killed half-way leaves
//! a `.partial` directory, which is never used and is removed at the next start.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::ProvisionError;
use crate::hypervisor::Hypervisor;
use crate::saveimage::{element, replace_element, SaveImage};
use crate::vmfiles::VmFiles;

pub const SNAPSHOTS_DIR: &str = "snapshots";
const PARTIAL: &str = ".partial";

/// `<state_dir>/snapshots`.
pub fn snapshots_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(SNAPSHOTS_DIR)
}

/// The paths of one snapshot (nothing is created).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    pub key: String,
    pub dir: PathBuf,
    pub state: PathBuf,
    pub overlay: PathBuf,
    pub seed: PathBuf,
    pub meta: PathBuf,
}

impl SnapshotFiles {
    /// `key` must be a plain name (the daemon uses a hex digest).
    pub fn new(state_dir: &Path, key: &str) -> Result<SnapshotFiles, ProvisionError> {
        if key.is_empty()
            || key.len() > 64
            || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(ProvisionError::invalid(
                "snapshot key",
                format!("`{key}` (use 1-64 of [A-Za-z0-9-])"),
            ));
        }
        Ok(SnapshotFiles::at(snapshots_dir(state_dir).join(key), key))
    }

    fn at(dir: PathBuf, key: &str) -> SnapshotFiles {
        SnapshotFiles {
            key: key.to_string(),
            state: dir.join("memory.save"),
            overlay: dir.join("disk.qcow2"),
            seed: dir.join("seed.iso"),
            meta: dir.join("snapshot.json"),
            dir,
        }
    }

    /// Whether the snapshot is whole: its directory was renamed into place (only done once every
    /// file was written) and nothing of it has gone since.
    pub fn is_complete(&self) -> bool {
        [&self.state, &self.overlay, &self.seed, &self.meta]
            .iter()
            .all(|p| p.is_file())
    }

    /// Bytes on disk (allocated, not apparent: the save image and overlay are sparse).
    pub fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        [&self.state, &self.overlay, &self.seed, &self.meta]
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.blocks() * 512)
            .sum()
    }

    fn partial(&self) -> SnapshotFiles {
        let mut name = self.dir.as_os_str().to_os_string();
        name.push(PARTIAL);
        SnapshotFiles::at(PathBuf::from(name), &self.key)
    }

    /// Deletes the snapshot (and a partial one of the same key); gone already is success.
    pub fn remove(&self) -> Result<(), ProvisionError> {
        for d in [&self.dir, &self.partial().dir] {
            match fs::remove_dir_all(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ProvisionError::io("remove", d)(e)),
            }
        }
        Ok(())
    }
}

/// Saves the running template VM (domain `name`, its files `vm`; its agent quiesced) as snapshot
/// `files`: the domain's
/// state goes to the save image (the domain stops and is gone), its overlay and seed move in
/// beside it, read-only, with `meta` (JSON) describing it; then the directory is renamed into
/// place. On error the partial directory is removed and the template's own files are left for
/// its teardown.
pub fn freeze(
    hv: &Hypervisor,
    name: &str,
    vm: &VmFiles,
    files: &SnapshotFiles,
    meta: &serde_json::Value,
) -> Result<(), ProvisionError> {
    let partial = files.partial();
    files.remove()?;
    let made = write_partial(hv, name, vm, &partial, meta).and_then(|()| {
        fs::rename(&partial.dir, &files.dir).map_err(ProvisionError::io("rename", &partial.dir))?;
        sync_dir(files.dir.parent().unwrap_or(&files.dir))
    });
    if made.is_err() {
        let _ = fs::remove_dir_all(&partial.dir);
    }
    made
}

fn write_partial(
    hv: &Hypervisor,
    name: &str,
    vm: &VmFiles,
    partial: &SnapshotFiles,
    meta: &serde_json::Value,
) -> Result<(), ProvisionError> {
    fs::create_dir_all(&partial.dir).map_err(ProvisionError::io("create", &partial.dir))?;
    // qemu (its own user) reads the files; nobody writes them again.
    fs::set_permissions(&partial.dir, fs::Permissions::from_mode(0o755))
        .map_err(ProvisionError::io("chmod", &partial.dir))?;
    hv.save(name, &partial.state)?;
    for (from, to) in [(&vm.overlay, &partial.overlay), (&vm.seed, &partial.seed)] {
        fs::rename(from, to).map_err(ProvisionError::io("move into the snapshot", from))?;
    }
    let text = serde_json::to_vec_pretty(meta)
        .map_err(|e| ProvisionError::invalid("snapshot metadata", format!("cannot encode: {e}")))?;
    fs::write(&partial.meta, text).map_err(ProvisionError::io("write", &partial.meta))?;
    for p in [
        &partial.state,
        &partial.overlay,
        &partial.seed,
        &partial.meta,
    ] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o444))
            .map_err(ProvisionError::io("chmod", p))?;
        fs::File::open(p)
            .and_then(|f| f.sync_all())
            .map_err(ProvisionError::io("sync", p))?;
    }
    sync_dir(&partial.dir)
}

fn sync_dir(dir: &Path) -> Result<(), ProvisionError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(ProvisionError::io("sync", dir))
}

/// Writes VM `job_id`'s own copy of the snapshot's save image to `dest`, its XML
/// [`restore_xml`]'s. Everything the guest sees stays as saved.
pub fn write_restore_image(
    files: &SnapshotFiles,
    job_id: &str,
    dest: &Path,
) -> Result<(), ProvisionError> {
    let image = SaveImage::read(&files.state)?;
    let xml = restore_xml(&image.xml, job_id)?;
    image.write_with_xml(&files.state, &xml, dest)
}

/// The template's saved domain XML as VM `job_id`'s: the template's id replaced by the job's
/// (name, metadata, every path named after it) and a new UUID and generation id.
pub fn restore_xml(template_xml: &str, job_id: &str) -> Result<String, ProvisionError> {
    let name = element(template_xml, "name")
        .ok_or_else(|| ProvisionError::invalid("save image", "its domain XML has no name"))?;
    let template_id = name
        .strip_prefix(crate::DOMAIN_PREFIX)
        .filter(|id| id.len() >= 8)
        .ok_or_else(|| {
            ProvisionError::invalid("save image", format!("domain {name} is not Minion's"))
        })?;
    let mut xml = template_xml.replace(template_id, job_id);
    for tag in ["uuid", "genid"] {
        xml = replace_element(&xml, tag, &uuid::Uuid::new_v4().to_string()).ok_or_else(|| {
            ProvisionError::invalid("save image", format!("its domain XML has no <{tag}>"))
        })?;
    }
    Ok(xml)
}

/// What [`sweep`] found under `<state_dir>/snapshots`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Whole snapshots kept (their keys).
    pub kept: Vec<String>,
    /// Directories removed: partial ones, and whole ones `keep` refused.
    pub removed: Vec<PathBuf>,
}

/// Removes every partial snapshot, and every whole one whose key `keep` refuses (nothing uses it
/// any more). At start nothing is being written, so a partial one is a dead daemon's leftover.
pub fn sweep(state_dir: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Sweep, ProvisionError> {
    let dir = snapshots_dir(state_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Sweep::default()),
        Err(e) => return Err(ProvisionError::io("list", &dir)(e)),
    };
    let mut out = Sweep::default();
    for entry in entries {
        let entry = entry.map_err(ProvisionError::io("list", &dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let whole = !name.ends_with(PARTIAL)
            && SnapshotFiles::new(state_dir, &name).is_ok_and(|f| f.is_complete());
        if whole && keep(&name) {
            out.kept.push(name);
            continue;
        }
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(ProvisionError::io("remove", &path))?;
        out.removed.push(path);
    }
    out.kept.sort();
    out.removed.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(state: &Path, key: &str) -> SnapshotFiles {
        let f = SnapshotFiles::new(state, key).expect("paths");
        fs::create_dir_all(&f.dir).expect("mkdir");
        for p in [&f.state, &f.overlay, &f.seed, &f.meta] {
            fs::write(p, b"x").expect("write");
        }
        f
    }

    #[test]
    fn layout_and_keys() {
        let tmp = tempfile::tempdir().expect("tmp");
        let f = SnapshotFiles::new(tmp.path(), "ab12").expect("paths");
        assert_eq!(f.dir, tmp.path().join("snapshots/ab12"));
        assert_eq!(f.partial().dir, tmp.path().join("snapshots/ab12.partial"));
        assert!(!f.is_complete());
        for bad in ["", "../x", "a/b", "a.partial", &"k".repeat(65)] {
            assert!(SnapshotFiles::new(tmp.path(), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_partial_snapshot_is_never_whole_and_is_swept() {
        let tmp = tempfile::tempdir().expect("tmp");
        let kept = whole(tmp.path(), "keep");
        let stale = whole(tmp.path(), "stale");
        // Killed half-way: every file there, but never renamed into place.
        let half = SnapshotFiles::new(tmp.path(), "half")
            .expect("paths")
            .partial();
        fs::create_dir_all(&half.dir).expect("mkdir");
        for p in [&half.state, &half.overlay, &half.seed, &half.meta] {
            fs::write(p, b"x").expect("write");
        }
        // Renamed but missing a file (removed by hand): not whole either.
        let broken = whole(tmp.path(), "broken");
        fs::remove_file(&broken.seed).expect("rm");
        assert!(!SnapshotFiles::new(tmp.path(), "half")
            .expect("paths")
            .is_complete());

        let swept = sweep(tmp.path(), &|k| k != "stale").expect("sweep");
        assert_eq!(swept.kept, ["keep"]);
        let mut gone = vec![broken.dir.clone(), half.dir.clone(), stale.dir.clone()];
        gone.sort();
        assert_eq!(swept.removed, gone);
        assert!(kept.is_complete());
        assert!(!stale.dir.exists() && !half.dir.exists() && !broken.dir.exists());
        assert!(kept.disk_bytes() > 0);
        kept.remove().expect("remove");
        kept.remove().expect("remove again");
        assert!(!kept.dir.exists());
    }

    #[test]
    fn sweeping_nothing_is_fine() {
        let tmp = tempfile::tempdir().expect("tmp");
        assert_eq!(
            sweep(tmp.path(), &|_| true).expect("sweep"),
            Sweep::default()
        );
    }
}
