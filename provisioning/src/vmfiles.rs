//! The per-VM directory: `<state_dir>/vms/<job id>/{overlay.qcow2,seed.iso,console.log,channel.sock}`
//! (and `memory.save` while a VM is restored from a snapshot).
//! One directory per job makes cleanup one `remove_dir_all` and reconciliation one `read_dir`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::domain::MAX_SOCKET_PATH;
use crate::error::ProvisionError;

pub const VMS_DIR: &str = "vms";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFiles {
    pub job_id: String,
    pub dir: PathBuf,
    pub overlay: PathBuf,
    pub seed: PathBuf,
    pub console_log: PathBuf,
    pub channel_socket: PathBuf,
    /// A restored VM's own copy of its snapshot's save image (removed once it is restored).
    pub saved_state: PathBuf,
}

/// `<state_dir>/vms`.
pub fn vms_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(VMS_DIR)
}

impl VmFiles {
    /// The paths for one job (nothing is created). The job id must be a plain file name, and the
    /// state dir absolute and short enough for the channel socket's path limit.
    pub fn new(state_dir: &Path, job_id: &str) -> Result<VmFiles, ProvisionError> {
        let ok = !job_id.is_empty()
            && job_id.len() <= 128
            && !job_id.starts_with(['-', '.'])
            && job_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            return Err(ProvisionError::invalid(
                "job id",
                format!("`{job_id}` (use 1-128 of [A-Za-z0-9._-])"),
            ));
        }
        if !state_dir.is_absolute() {
            return Err(ProvisionError::invalid(
                "state dir",
                format!(
                    "{} is not absolute (libvirt resolves paths on its side)",
                    state_dir.display()
                ),
            ));
        }
        let dir = vms_dir(state_dir).join(job_id);
        let files = VmFiles {
            job_id: job_id.to_string(),
            overlay: dir.join("overlay.qcow2"),
            seed: dir.join("seed.iso"),
            console_log: dir.join("console.log"),
            channel_socket: dir.join("channel.sock"),
            saved_state: dir.join("memory.save"),
            dir,
        };
        let socket_len = files.channel_socket.as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            return Err(ProvisionError::invalid(
                "state dir",
                format!(
                    "{} makes the channel socket path {socket_len} bytes long; unix sockets allow {MAX_SOCKET_PATH}",
                    state_dir.display()
                ),
            ));
        }
        Ok(files)
    }

    /// Creates `<state_dir>/vms/<job id>/`, mode 0755: qemu runs as its own user (libvirt-qemu on
    /// Debian) and must reach the files libvirt hands it. Existing is fine.
    pub fn create(&self) -> Result<(), ProvisionError> {
        let parent = self.dir.parent().unwrap_or(&self.dir);
        for d in [parent, self.dir.as_path()] {
            match fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::create_dir_all(d).map_err(ProvisionError::io("create", d))?
                }
                Err(e) => {
                    return Err(ProvisionError::Io {
                        op: "create",
                        path: d.to_path_buf(),
                        source: e,
                    })
                }
            }
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))
                .map_err(ProvisionError::io("chmod", d))?;
        }
        if let Some(blocker) = untraversable_ancestor(&self.dir) {
            tracing::warn!(
                "{} is not searchable by other users: qemu, if it runs as a non-root user, cannot open the VM's files under {}",
                blocker.display(),
                self.dir.display()
            );
        }
        Ok(())
    }

    pub fn exists(&self) -> bool {
        self.dir.exists()
    }

    /// Deletes the directory and everything in it; already gone is success.
    pub fn remove_all(&self) -> Result<(), ProvisionError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ProvisionError::Io {
                op: "remove",
                path: self.dir.clone(),
                source: e,
            }),
        }
    }
}

/// The job ids that have a directory under `<state_dir>/vms` (for reconciliation). A missing
/// `vms` dir means none.
pub fn list_job_dirs(state_dir: &Path) -> Result<Vec<String>, ProvisionError> {
    let dir = vms_dir(state_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ProvisionError::Io {
                op: "list",
                path: dir,
                source: e,
            })
        }
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(ProvisionError::io("list", &dir))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if let Some(name) = entry.file_name().to_str() {
                ids.push(name.to_string());
            }
        }
    }
    ids.sort();
    Ok(ids)
}

/// The first ancestor of `path` that others cannot search (mode without o+x), if any.
fn untraversable_ancestor(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .skip(1)
        .find(|a| {
            fs::metadata(a)
                .map(|m| m.permissions().mode() & 0o001 == 0)
                .unwrap_or(false)
        })
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_create_and_idempotent_remove() {
        let tmp = tempfile::tempdir().expect("tmp");
        let files = VmFiles::new(tmp.path(), "0b9c0c3e-1d7a").expect("paths");
        assert_eq!(files.dir, tmp.path().join("vms/0b9c0c3e-1d7a"));
        assert_eq!(files.overlay, files.dir.join("overlay.qcow2"));
        assert_eq!(files.seed, files.dir.join("seed.iso"));
        assert_eq!(files.console_log, files.dir.join("console.log"));
        assert_eq!(files.channel_socket, files.dir.join("channel.sock"));
        assert!(!files.exists());
        files.create().expect("create");
        files.create().expect("create again");
        for d in [files.dir.as_path(), files.dir.parent().expect("vms")] {
            assert_eq!(
                fs::metadata(d).expect("meta").permissions().mode() & 0o777,
                0o755,
                "{}",
                d.display()
            );
        }
        fs::write(&files.overlay, b"x").expect("file");
        assert_eq!(list_job_dirs(tmp.path()).expect("list"), ["0b9c0c3e-1d7a"]);
        files.remove_all().expect("remove");
        assert!(!files.exists());
        files.remove_all().expect("remove again");
        assert!(list_job_dirs(tmp.path()).expect("list").is_empty());
    }

    #[test]
    fn bad_job_ids_and_state_dirs_are_refused() {
        for id in ["", "..", "../x", "a/b", "-x", "a b"] {
            let err = VmFiles::new(Path::new("/var/lib/minion"), id).expect_err("bad id");
            assert!(err.to_string().starts_with("invalid job id"), "{id}: {err}");
        }
        let err = VmFiles::new(Path::new("relative"), "x").expect_err("relative");
        assert!(err.to_string().contains("not absolute"), "{err}");
        let long = PathBuf::from(format!("/{}", "s".repeat(80)));
        let err =
            VmFiles::new(&long, "0b9c0c3e-1d7a-4e5f-9a61-2f1d2c3b4a59").expect_err("too long");
        assert!(err.to_string().contains("unix sockets allow 107"), "{err}");
    }

    #[test]
    fn untraversable_ancestors_are_found() {
        let tmp = tempfile::tempdir().expect("tmp");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        let inner = tmp.path().join("a/b");
        assert_eq!(
            untraversable_ancestor(&inner),
            Some(tmp.path().to_path_buf())
        );
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(untraversable_ancestor(&tmp.path().join("a")), None);
    }
}
