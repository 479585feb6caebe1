//! A host's libvirt storage pool, reached only through the libvirt connection: the VMs' overlays
//! and seeds, and the images' files, are volumes in it. Nothing here touches the host's file
//! system directly, so the controller and the hypervisor need not share one.
//!
//! Names: a VM's volumes are `minion-<owner tag>-<vm id>.overlay.qcow2` and `….seed.iso` (the
//! owner tag is [`owner_tag`]: a daemon reaps only its own); an image's files are
//! `minion-image-<sha256 of the file>.<role>`, shared by every daemon using that host.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use virt::error::ErrorNumber;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use crate::hypervisor::{is, Hypervisor, HypervisorError};
use crate::templates::escape_xml;

/// What every volume a daemon makes for a VM starts with.
pub const VM_VOLUME_PREFIX: &str = "minion-";
/// What every image volume starts with.
pub const IMAGE_VOLUME_PREFIX: &str = "minion-image-";
pub const OVERLAY_SUFFIX: &str = ".overlay.qcow2";
pub const SEED_SUFFIX: &str = ".seed.iso";

/// The 12 hex digits that mark a daemon's volumes: its owner string's (its state dir's) sha256.
pub fn owner_tag(owner: &str) -> String {
    hex(&Sha256::digest(owner.as_bytes()))[..12].to_string()
}

/// The name of a VM's overlay volume.
pub fn overlay_volume(owner: &str, vm_id: &str) -> String {
    format!(
        "{VM_VOLUME_PREFIX}{}-{vm_id}{OVERLAY_SUFFIX}",
        owner_tag(owner)
    )
}

/// The name of a VM's seed volume.
pub fn seed_volume(owner: &str, vm_id: &str) -> String {
    format!(
        "{VM_VOLUME_PREFIX}{}-{vm_id}{SEED_SUFFIX}",
        owner_tag(owner)
    )
}

/// The VM id of one of `owner`'s VM volumes; `None` for anyone else's volume.
pub fn vm_of_volume<'a>(owner: &str, volume: &'a str) -> Option<&'a str> {
    let rest = volume
        .strip_prefix(VM_VOLUME_PREFIX)?
        .strip_prefix(owner_tag(owner).as_str())?
        .strip_prefix('-')?;
    rest.strip_suffix(OVERLAY_SUFFIX)
        .or_else(|| rest.strip_suffix(SEED_SUFFIX))
}

/// The name of an image file's volume: its content's sha256 and its role (`disk`, `kernel`,
/// `initrd`).
pub fn image_volume(sha256: &str, role: &str) -> String {
    format!("{IMAGE_VOLUME_PREFIX}{sha256}.{role}")
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of a local file, as hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// A volume's format as its XML says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeFormat {
    Raw,
    Qcow2,
}

impl VolumeFormat {
    fn as_str(self) -> &'static str {
        match self {
            VolumeFormat::Raw => "raw",
            VolumeFormat::Qcow2 => "qcow2",
        }
    }
}

impl Hypervisor {
    fn storage_pool(&self, pool: &str) -> Result<StoragePool, HypervisorError> {
        let p = self
            .retrying(|c| c.lookup_storage_pool_by_name(pool))?
            .map_err(|e| self.call_error("virStoragePoolLookupByName", pool, &e))?;
        match p.is_active() {
            Ok(true) => Ok(p),
            Ok(false) => Err(HypervisorError::Call {
                op: "virStoragePoolIsActive",
                target: pool.to_string(),
                code: 0,
                message: format!(
                    "storage pool {pool} is defined but not running on {} (`virsh pool-start {pool}`)",
                    self.uri()
                ),
            }),
            Err(e) => Err(self.call_error("virStoragePoolIsActive", pool, &e)),
        }
    }

    fn stream_error(&self, op: &'static str, name: &str, message: String) -> HypervisorError {
        HypervisorError::Call {
            op,
            target: name.to_string(),
            code: 0,
            message,
        }
    }

    fn volume(
        &self,
        pool: &StoragePool,
        name: &str,
    ) -> Result<Option<StorageVol>, HypervisorError> {
        match pool.lookup_storage_vol_by_name(name) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is(&e, ErrorNumber::NoStorageVolume) => Ok(None),
            Err(e) => Err(self.call_error("virStorageVolLookupByName", name, &e)),
        }
    }

    /// The host path of volume `name`, `None` when there is none.
    pub fn volume_path(&self, pool: &str, name: &str) -> Result<Option<String>, HypervisorError> {
        let p = self.storage_pool(pool)?;
        match self.volume(&p, name)? {
            None => Ok(None),
            Some(v) => v
                .path()
                .map(Some)
                .map_err(|e| self.call_error("virStorageVolGetPath", name, &e)),
        }
    }

    /// Creates qcow2 volume `name` of `capacity` bytes on top of the host file `backing` (its
    /// format `backing_format`); returns its host path. libvirt runs qemu-img on the host.
    pub fn create_overlay_volume(
        &self,
        pool: &str,
        name: &str,
        backing: &str,
        backing_format: VolumeFormat,
        capacity: u64,
    ) -> Result<String, HypervisorError> {
        let p = self.storage_pool(pool)?;
        let xml = format!(
            "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity>\
             <target><format type='qcow2'/><permissions><mode>0600</mode></permissions></target>\
             <backingStore><path>{}</path><format type='{}'/></backingStore></volume>",
            escape_xml(name),
            escape_xml(backing),
            backing_format.as_str()
        );
        let v = StorageVol::create_xml(&p, &xml, 0)
            .map_err(|e| self.call_error("virStorageVolCreateXML", name, &e))?;
        v.path()
            .map_err(|e| self.call_error("virStorageVolGetPath", name, &e))
    }

    /// Creates volume `name` holding exactly the bytes of local file `src` (sent over the
    /// connection with virStorageVolUpload); returns its host path. On any error the volume is
    /// deleted again.
    pub fn upload_volume(
        &self,
        pool: &str,
        name: &str,
        src: &Path,
        mode: u32,
    ) -> Result<String, HypervisorError> {
        let io_error = |e: std::io::Error| HypervisorError::Call {
            op: "read",
            target: src.display().to_string(),
            code: 0,
            message: e.to_string(),
        };
        let f = std::fs::File::open(src).map_err(io_error)?;
        let len = f.metadata().map_err(io_error)?.len();
        let p = self.storage_pool(pool)?;
        let xml = format!(
            "<volume><name>{}</name><capacity unit='bytes'>{len}</capacity>\
             <allocation unit='bytes'>0</allocation>\
             <target><format type='raw'/><permissions><mode>{mode:04o}</mode></permissions></target></volume>",
            escape_xml(name)
        );
        let v = StorageVol::create_xml(&p, &xml, 0)
            .map_err(|e| self.call_error("virStorageVolCreateXML", name, &e))?;
        let sent = (|| {
            let conn = self.conn()?;
            let stream = Stream::new(&conn, crate::streams::NONBLOCK)
                .map_err(|e| self.call_error("virStreamNew", name, &e))?;
            v.upload(&stream, 0, len, 0)
                .map_err(|e| self.call_error("virStorageVolUpload", name, &e))?;
            crate::streams::upload(stream, f)
                .map_err(|e| self.stream_error("virStorageVolUpload", name, e.to_string()))?
                .wait(TRANSFER_STALL)
                .map(|_| ())
                .map_err(|e| self.stream_error("virStorageVolUpload", name, e))
        })();
        if let Err(e) = sent {
            let _ = v.delete(0);
            return Err(e);
        }
        v.path()
            .map_err(|e| self.call_error("virStorageVolGetPath", name, &e))
    }

    /// The sha256 and length of volume `name`'s bytes, read over the connection
    /// (virStorageVolDownload); `None` when there is no such volume.
    pub fn volume_sha256(
        &self,
        pool: &str,
        name: &str,
    ) -> Result<Option<(String, u64)>, HypervisorError> {
        let p = self.storage_pool(pool)?;
        let Some(v) = self.volume(&p, name)? else {
            return Ok(None);
        };
        let conn = self.conn()?;
        let stream = Stream::new(&conn, crate::streams::NONBLOCK)
            .map_err(|e| self.call_error("virStreamNew", name, &e))?;
        v.download(&stream, 0, 0, 0)
            .map_err(|e| self.call_error("virStorageVolDownload", name, &e))?;
        let hasher = Arc::new(Mutex::new(Sha256::new()));
        let sink = hasher.clone();
        let len = crate::streams::download(
            stream,
            Box::new(move |data| sink.lock().unwrap_or_else(|p| p.into_inner()).update(data)),
        )
        .map_err(|e| self.stream_error("virStorageVolDownload", name, e.to_string()))?
        .wait(TRANSFER_STALL)
        .map_err(|e| self.stream_error("virStorageVolDownload", name, e))?;
        let h = std::mem::take(&mut *hasher.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(Some((hex(&h.finalize()), len)))
    }

    /// Deletes volume `name`; none there is success.
    pub fn delete_volume(&self, pool: &str, name: &str) -> Result<(), HypervisorError> {
        let p = self.storage_pool(pool)?;
        let Some(v) = self.volume(&p, name)? else {
            return Ok(());
        };
        match v.delete(0) {
            Ok(()) => Ok(()),
            Err(e) if is(&e, ErrorNumber::NoStorageVolume) => Ok(()),
            Err(e) => Err(self.call_error("virStorageVolDelete", name, &e)),
        }
    }

    /// The names of the pool's volumes starting with `prefix`, sorted; the pool is refreshed
    /// first, so files that appeared on the host by other means are seen too.
    pub fn list_volumes(&self, pool: &str, prefix: &str) -> Result<Vec<String>, HypervisorError> {
        let p = self.storage_pool(pool)?;
        p.refresh(0)
            .map_err(|e| self.call_error("virStoragePoolRefresh", pool, &e))?;
        let mut names: Vec<String> = p
            .list_volumes()
            .map_err(|e| self.call_error("virStoragePoolListVolumes", pool, &e))?
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        Ok(names)
    }
}

/// A transfer that makes no progress for this long is given up.
const TRANSFER_STALL: Duration = Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_knows_its_own_volumes_only() {
        let owner = "/var/lib/minion";
        let o = overlay_volume(owner, "0b9c0c3e-1d7a");
        let s = seed_volume(owner, "prebooted-77");
        assert!(
            o.starts_with("minion-") && o.ends_with(".overlay.qcow2"),
            "{o}"
        );
        assert_eq!(vm_of_volume(owner, &o), Some("0b9c0c3e-1d7a"));
        assert_eq!(vm_of_volume(owner, &s), Some("prebooted-77"));
        assert_eq!(vm_of_volume("/srv/other", &o), None);
        assert_eq!(vm_of_volume(owner, &image_volume("ab", "disk")), None);
        assert_eq!(vm_of_volume(owner, "minion-x"), None);
    }

    #[test]
    fn image_volumes_are_named_by_content() {
        assert_eq!(image_volume("f8fd", "kernel"), "minion-image-f8fd.kernel");
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("x");
        std::fs::write(&f, b"abc").expect("write");
        assert_eq!(
            file_sha256(&f).expect("hash"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
