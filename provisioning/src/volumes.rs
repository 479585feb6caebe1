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
/// A restored VM's own copy of its snapshot's save image, until libvirt has read it.
pub const MEMORY_SUFFIX: &str = ".memory";
/// What a daemon's snapshot volumes start with (before its owner tag).
pub const SNAPSHOT_VOLUME_PREFIX: &str = "minion-snap-";

/// The parts of a snapshot on a host, each a volume: the template's overlay (the restored VMs'
/// backing file), its seed (shared read-only), its save image, and the marker written last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotPart {
    Disk,
    Seed,
    Memory,
    Marker,
}

impl SnapshotPart {
    /// In the order a whole one is removed: the marker first, so a half-removed one is not whole.
    pub const ALL: [SnapshotPart; 4] = [
        SnapshotPart::Marker,
        SnapshotPart::Memory,
        SnapshotPart::Disk,
        SnapshotPart::Seed,
    ];

    fn suffix(self) -> &'static str {
        match self {
            SnapshotPart::Disk => "disk.qcow2",
            SnapshotPart::Seed => "seed.iso",
            SnapshotPart::Memory => "memory",
            SnapshotPart::Marker => "json",
        }
    }
}

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

/// The name of a restored VM's copy of its snapshot's save image.
pub fn memory_volume(owner: &str, vm_id: &str) -> String {
    format!(
        "{VM_VOLUME_PREFIX}{}-{vm_id}{MEMORY_SUFFIX}",
        owner_tag(owner)
    )
}

/// The name of part `part` of `owner`'s snapshot `key`.
pub fn snapshot_volume(owner: &str, key: &str, part: SnapshotPart) -> String {
    format!(
        "{SNAPSHOT_VOLUME_PREFIX}{}-{key}.{}",
        owner_tag(owner),
        part.suffix()
    )
}

/// What the names of the spare copies of `owner`'s snapshot `key`'s save image start with.
pub fn spare_prefix(owner: &str, key: &str) -> String {
    format!(
        "{SNAPSHOT_VOLUME_PREFIX}{}-{key}.{SPARE_PART}",
        owner_tag(owner)
    )
}

/// The name of spare copy `n` (a token) of `owner`'s snapshot `key`'s save image: made ahead of
/// the restore that takes it.
pub fn spare_volume(owner: &str, key: &str, n: &str) -> String {
    format!("{}{n}", spare_prefix(owner, key))
}

/// What a spare copy's part name starts with.
const SPARE_PART: &str = "spare-";

/// The prefix of every snapshot volume of `owner`.
pub fn snapshot_volume_prefix(owner: &str) -> String {
    format!("{SNAPSHOT_VOLUME_PREFIX}{}-", owner_tag(owner))
}

/// The snapshot key of one of `owner`'s snapshot volumes; `None` for any other volume.
pub fn snapshot_of_volume<'a>(owner: &str, volume: &'a str) -> Option<&'a str> {
    let rest = volume.strip_prefix(snapshot_volume_prefix(owner).as_str())?;
    let (key, part) = rest.split_once('.')?;
    (SnapshotPart::ALL.iter().any(|p| p.suffix() == part) || part.starts_with(SPARE_PART))
        .then_some(key)
}

/// The VM id of one of `owner`'s VM volumes; `None` for anyone else's volume.
pub fn vm_of_volume<'a>(owner: &str, volume: &'a str) -> Option<&'a str> {
    let rest = volume
        .strip_prefix(VM_VOLUME_PREFIX)?
        .strip_prefix(owner_tag(owner).as_str())?
        .strip_prefix('-')?;
    rest.strip_suffix(OVERLAY_SUFFIX)
        .or_else(|| rest.strip_suffix(SEED_SUFFIX))
        .or_else(|| rest.strip_suffix(MEMORY_SUFFIX))
}

/// The name of an image file's volume: its content's sha256 and its role (`disk`, `kernel`,
/// `initrd`).
pub fn image_volume(sha256: &str, role: &str) -> String {
    format!("{IMAGE_VOLUME_PREFIX}{sha256}.{role}")
}

/// A raw volume's XML: `len` bytes, none allocated (libvirt neither fills nor syncs it), `mode`.
fn raw_volume_xml(name: &str, len: u64, mode: u32) -> String {
    format!(
        "<volume><name>{}</name><capacity unit='bytes'>{len}</capacity>\
         <allocation unit='bytes'>0</allocation>\
         <target><format type='raw'/><permissions><mode>{mode:04o}</mode></permissions></target></volume>",
        escape_xml(name)
    )
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

/// virStoragePoolDefineXML, which the `virt` crate does not wrap.
fn define_storage_pool(
    conn: &virt::connect::Connect,
    xml: &str,
) -> Result<StoragePool, virt::error::Error> {
    let c_xml = std::ffi::CString::new(xml).map_err(|_| virt::error::Error::last_error())?;
    // SAFETY: `conn` is a live connection and `c_xml` a NUL-terminated string that outlives the
    // call; a non-null result is a new reference the returned StoragePool owns.
    let ptr = unsafe { virt::sys::virStoragePoolDefineXML(conn.as_ptr(), c_xml.as_ptr(), 0) };
    if ptr.is_null() {
        return Err(virt::error::Error::last_error());
    }
    // SAFETY: non-null, and ours to free.
    Ok(unsafe { StoragePool::from_ptr(ptr) })
}

/// A volume's format as its XML says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VolumeFormat {
    Raw,
    Qcow2,
}

impl VolumeFormat {
    pub fn as_str(self) -> &'static str {
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

    pub(crate) fn stream_error(
        &self,
        op: &'static str,
        name: &str,
        message: String,
    ) -> HypervisorError {
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

    /// Volume `name` of `p` (storage pool `pool`), which must be there.
    fn existing_volume(
        &self,
        p: &StoragePool,
        pool: &str,
        name: &str,
    ) -> Result<StorageVol, HypervisorError> {
        self.volume(p, name)?.ok_or_else(|| HypervisorError::Call {
            op: "virStorageVolLookupByName",
            target: name.to_string(),
            code: 0,
            message: format!("no volume {name} in storage pool {pool} on {}", self.uri()),
        })
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

    /// Creates volume `name`, `len` bytes of zeros (sparse), for the caller to fill through the
    /// host's filesystem; returns its host path.
    pub fn create_empty_volume(
        &self,
        pool: &str,
        name: &str,
        len: u64,
        mode: u32,
    ) -> Result<String, HypervisorError> {
        let p = self.storage_pool(pool)?;
        let v = StorageVol::create_xml(&p, &raw_volume_xml(name, len, mode), 0)
            .map_err(|e| self.call_error("virStorageVolCreateXML", name, &e))?;
        v.path()
            .map_err(|e| self.call_error("virStorageVolGetPath", name, &e))
    }

    /// Creates volume `name` holding `bytes` (a qcow2 overlay's header, say: its format is the
    /// bytes', whatever the volume's XML says); returns its host path. On any error the volume
    /// is deleted again.
    pub fn create_volume_with(
        &self,
        pool: &str,
        name: &str,
        bytes: Vec<u8>,
        mode: u32,
    ) -> Result<String, HypervisorError> {
        let len = bytes.len() as u64;
        self.create_uploaded(pool, name, len, mode, |stream| {
            crate::streams::upload_bytes(stream, bytes)
        })
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
        self.create_uploaded(pool, name, len, mode, |stream| {
            crate::streams::upload(stream, f)
        })
    }

    /// A new raw volume `name` of `len` bytes (sparse), filled with what `send` sends on its
    /// upload stream; returns its host path. On any error the volume is deleted again.
    fn create_uploaded(
        &self,
        pool: &str,
        name: &str,
        len: u64,
        mode: u32,
        send: impl FnOnce(Stream) -> std::io::Result<crate::streams::Progress>,
    ) -> Result<String, HypervisorError> {
        let p = self.storage_pool(pool)?;
        let v = StorageVol::create_xml(&p, &raw_volume_xml(name, len, mode), 0)
            .map_err(|e| self.call_error("virStorageVolCreateXML", name, &e))?;
        let sent = (|| {
            let stream = Stream::new(&self.conn()?, crate::streams::NONBLOCK)
                .map_err(|e| self.call_error("virStreamNew", name, &e))?;
            v.upload(&stream, 0, len, 0)
                .map_err(|e| self.call_error("virStorageVolUpload", name, &e))?;
            send(stream)
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

    /// Deletes volume `name`; none there is success. On the teardown connection: a VM's
    /// volumes go while the next VM is made on the main one.
    pub fn delete_volume(&self, pool: &str, name: &str) -> Result<(), HypervisorError> {
        let p = self
            .teardown_conn()?
            .lookup_storage_pool_by_name(pool)
            .map_err(|e| self.call_error("virStoragePoolLookupByName", pool, &e))?;
        let Some(v) = self.volume(&p, name)? else {
            return Ok(());
        };
        match v.delete(0) {
            Ok(()) => Ok(()),
            Err(e) if is(&e, ErrorNumber::NoStorageVolume) => Ok(()),
            Err(e) => Err(self.call_error("virStorageVolDelete", name, &e)),
        }
    }

    /// Makes sure storage pool `pool` runs on the host: started if it is defined but stopped,
    /// else defined as a `dir` pool on `dir` (made if missing), started and autostarted. Another
    /// daemon defining it at the same moment is fine.
    pub fn ensure_dir_pool(&self, pool: &str, dir: &Path) -> Result<(), HypervisorError> {
        let found = self.retrying(|c| c.lookup_storage_pool_by_name(pool))?;
        let p = match found {
            Ok(p) => p,
            Err(e) if is(&e, ErrorNumber::NoStoragePool) => {
                let xml = format!(
                    "<pool type='dir'><name>{}</name><target><path>{}</path>\
                     <permissions><mode>0711</mode></permissions></target></pool>",
                    escape_xml(pool),
                    escape_xml(&dir.to_string_lossy())
                );
                let conn = self.conn()?;
                match define_storage_pool(&conn, &xml) {
                    Ok(p) => {
                        p.build(0)
                            .map_err(|e| self.call_error("virStoragePoolBuild", pool, &e))?;
                        if let Err(e) = p.set_autostart(true) {
                            tracing::warn!("storage pool {pool}: no autostart: {e}");
                        }
                        tracing::info!(pool, dir = %dir.display(), uri = %self.uri(), "storage pool defined");
                        p
                    }
                    Err(_) => conn
                        .lookup_storage_pool_by_name(pool)
                        .map_err(|e| self.call_error("virStoragePoolDefineXML", pool, &e))?,
                }
            }
            Err(e) => return Err(self.call_error("virStoragePoolLookupByName", pool, &e)),
        };
        if !p.is_active().unwrap_or(false) {
            if let Err(e) = p.create(0) {
                // Started meanwhile by someone else: that is what was wanted.
                if !p.is_active().unwrap_or(false) {
                    return Err(self.call_error("virStoragePoolCreate", pool, &e));
                }
            }
        }
        Ok(())
    }

    /// The directory on the host that holds the pool's volumes (its `<target><path>`): where a
    /// domain's save image is written so that it becomes one of the pool's volumes.
    pub fn storage_pool_dir(&self, pool: &str) -> Result<String, HypervisorError> {
        let p = self.storage_pool(pool)?;
        let xml = p
            .xml_desc(0)
            .map_err(|e| self.call_error("virStoragePoolGetXMLDesc", pool, &e))?;
        xml.split_once("<target>")
            .and_then(|(_, t)| t.split_once("<path>"))
            .and_then(|(_, t)| t.split_once("</path>"))
            .map(|(path, _)| path.trim().to_string())
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| HypervisorError::Call {
                op: "virStoragePoolGetXMLDesc",
                target: pool.to_string(),
                code: 0,
                message: format!(
                    "storage pool {pool} has no target path on {} (use a `dir` pool)",
                    self.uri()
                ),
            })
    }

    /// Makes the pool see files written on the host by libvirt itself (a save image). libvirt
    /// refuses while a volume is being copied in the pool: tried again for a while.
    pub fn refresh_pool(&self, pool: &str) -> Result<(), HypervisorError> {
        let p = self.storage_pool(pool)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match p.refresh(0) {
                Ok(()) => return Ok(()),
                Err(e)
                    if e.message().contains("asynchronous jobs")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(self.call_error("virStoragePoolRefresh", pool, &e)),
            }
        }
    }

    /// Copies volume `from` into a new raw volume `to` on the host (libvirt copies the bytes
    /// there; nothing passes through the connection); returns its host path. On the teardown
    /// connection: copies are made ahead, while the next VM is made on the main one.
    pub fn clone_volume(
        &self,
        pool: &str,
        from: &str,
        to: &str,
    ) -> Result<String, HypervisorError> {
        let p = self
            .teardown_conn()?
            .lookup_storage_pool_by_name(pool)
            .map_err(|e| self.call_error("virStoragePoolLookupByName", pool, &e))?;
        let src = self.existing_volume(&p, pool, from)?;
        let xml = format!(
            "<volume><name>{}</name><capacity unit='bytes'>0</capacity>\
             <target><format type='raw'/><permissions><mode>0600</mode></permissions></target></volume>",
            escape_xml(to)
        );
        let v = StorageVol::create_xml_from(&p, &xml, &src, 0)
            .map_err(|e| self.call_error("virStorageVolCreateXMLFrom", to, &e))?;
        v.path()
            .map_err(|e| self.call_error("virStorageVolGetPath", to, &e))
    }

    /// Writes `bytes` over volume `name` from `offset` on (virStorageVolUpload of that range;
    /// the rest of the volume stays).
    pub fn write_volume_at(
        &self,
        pool: &str,
        name: &str,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<(), HypervisorError> {
        let p = self.storage_pool(pool)?;
        let v = self.existing_volume(&p, pool, name)?;
        let conn = self.conn()?;
        let stream = Stream::new(&conn, crate::streams::NONBLOCK)
            .map_err(|e| self.call_error("virStreamNew", name, &e))?;
        v.upload(&stream, offset, bytes.len() as u64, 0)
            .map_err(|e| self.call_error("virStorageVolUpload", name, &e))?;
        crate::streams::upload_bytes(stream, bytes)
            .map_err(|e| self.stream_error("virStorageVolUpload", name, e.to_string()))?
            .wait(TRANSFER_STALL)
            .map(|_| ())
            .map_err(|e| self.stream_error("virStorageVolUpload", name, e))
    }

    /// The first `len` bytes of volume `name` (fewer if it is shorter), read over the connection.
    pub fn read_volume_head(
        &self,
        pool: &str,
        name: &str,
        len: u64,
    ) -> Result<Vec<u8>, HypervisorError> {
        let p = self.storage_pool(pool)?;
        let v = self.existing_volume(&p, pool, name)?;
        let size = v
            .info()
            .map_err(|e| self.call_error("virStorageVolGetInfo", name, &e))?
            .capacity;
        let conn = self.conn()?;
        let stream = Stream::new(&conn, crate::streams::NONBLOCK)
            .map_err(|e| self.call_error("virStreamNew", name, &e))?;
        v.download(&stream, 0, len.min(size), 0)
            .map_err(|e| self.call_error("virStorageVolDownload", name, &e))?;
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        crate::streams::download(
            stream,
            Box::new(move |data| {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(data)
            }),
        )
        .map_err(|e| self.stream_error("virStorageVolDownload", name, e.to_string()))?
        .wait(TRANSFER_STALL)
        .map_err(|e| self.stream_error("virStorageVolDownload", name, e))?;
        let out = std::mem::take(&mut *buf.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(out)
    }

    /// Whether volume `name` exists (no refresh: the pool knows what libvirt made).
    pub fn has_volume(&self, pool: &str, name: &str) -> Result<bool, HypervisorError> {
        let p = self.storage_pool(pool)?;
        Ok(self.volume(&p, name)?.is_some())
    }

    /// The bytes volume `name` takes on the host's disk; 0 when there is none.
    pub fn volume_allocation(&self, pool: &str, name: &str) -> Result<u64, HypervisorError> {
        let p = self.storage_pool(pool)?;
        match self.volume(&p, name)? {
            None => Ok(0),
            Some(v) => v
                .info()
                .map(|i| i.allocation)
                .map_err(|e| self.call_error("virStorageVolGetInfo", name, &e)),
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
