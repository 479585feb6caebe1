//! An image's files on a libvirt host: each one a volume named by its content's sha256
//! ([`crate::volumes::image_volume`]), checked by reading it back over the connection, pushed
//! with the storage-volume upload stream.

use std::path::PathBuf;

use crate::hypervisor::{Hypervisor, HypervisorError};
use crate::image::{DiskFormat, Image};
use crate::volumes::{file_sha256, image_volume, VolumeFormat};

/// One file of an image: its role, local path and content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// `disk`, `kernel` or `initrd`.
    pub role: &'static str,
    pub path: PathBuf,
    pub sha256: String,
    pub len: u64,
}

impl ImageFile {
    /// Its volume's name on every host.
    pub fn volume(&self) -> String {
        image_volume(&self.sha256, self.role)
    }
}

/// An image's files, hashed (the disk's hash is the manifest's when it has one and the file
/// has the manifest's size; everything else is read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFiles {
    pub image: Image,
    pub files: Vec<ImageFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum HostImageError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Libvirt(#[from] HypervisorError),
    /// The host has no volume for one of the image's files.
    #[error("image {image} is not on {uri}: no volume {volume} in storage pool {pool} (`minion image push {image} HOST`)")]
    Missing {
        image: String,
        uri: String,
        pool: String,
        volume: String,
    },
    /// The host's volume holds other bytes than the image's file.
    #[error("image {} on {}: volume {} holds sha256 {} ({} bytes), not {} ({} bytes): push the image again", .0.image, .0.uri, .0.volume, .0.found, .0.found_len, .0.want, .0.want_len)]
    Mismatch(Box<Mismatch>),
}

/// What [`HostImageError::Mismatch`] found.
#[derive(Debug)]
pub struct Mismatch {
    pub image: String,
    pub uri: String,
    pub volume: String,
    pub found: String,
    pub found_len: u64,
    pub want: String,
    pub want_len: u64,
}

impl ImageFiles {
    /// Hashes `image`'s disk, kernel and initrd. Blocks for as long as reading them takes.
    pub fn hash(image: &Image) -> Result<ImageFiles, HostImageError> {
        let mut files = Vec::new();
        let mut add = |role: &'static str, path: PathBuf, known: Option<&str>| {
            let read = |source| HostImageError::Read {
                path: path.clone(),
                source,
            };
            let len = std::fs::metadata(&path).map_err(read)?.len();
            let same_size = image.manifest.file_size.is_none_or(|s| s == len);
            let sha256 = match known {
                Some(k) if same_size && role == "disk" => k.to_string(),
                _ => file_sha256(&path).map_err(read)?,
            };
            files.push(ImageFile {
                role,
                path,
                sha256,
                len,
            });
            Ok::<(), HostImageError>(())
        };
        add("disk", image.disk_path(), image.manifest.sha256.as_deref())?;
        if let Some(k) = image.kernel_path() {
            add("kernel", k, None)?;
        }
        if let Some(i) = image.initrd_path() {
            add("initrd", i, None)?;
        }
        Ok(ImageFiles {
            image: image.clone(),
            files,
        })
    }

    fn file(&self, role: &str) -> Option<&ImageFile> {
        self.files.iter().find(|f| f.role == role)
    }
}

/// Where a host holds an image: host paths of its files' volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostImage {
    pub disk: String,
    pub disk_format: VolumeFormat,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
}

fn host_image(
    files: &ImageFiles,
    path_of: impl Fn(&ImageFile) -> Result<String, HostImageError>,
) -> Result<HostImage, HostImageError> {
    let path = |role: &str| files.file(role).map(&path_of).transpose();
    Ok(HostImage {
        disk: path("disk")?.unwrap_or_default(),
        disk_format: match files.image.manifest.format {
            DiskFormat::Qcow2 => VolumeFormat::Qcow2,
            DiskFormat::Raw => VolumeFormat::Raw,
        },
        kernel: path("kernel")?,
        initrd: path("initrd")?,
    })
}

/// Checks that storage pool `pool` on `hv` holds every file of `files`, byte for byte (each
/// volume is read back and hashed: a volume with the right name and other bytes is refused).
pub fn verify(
    hv: &Hypervisor,
    pool: &str,
    files: &ImageFiles,
) -> Result<HostImage, HostImageError> {
    host_image(files, |f| verified(hv, pool, files, f))
}

/// The host path of `f`'s volume, read back and found to hold its bytes.
fn verified(
    hv: &Hypervisor,
    pool: &str,
    files: &ImageFiles,
    f: &ImageFile,
) -> Result<String, HostImageError> {
    let volume = f.volume();
    match hv.volume_sha256(pool, &volume)? {
        None => Err(HostImageError::Missing {
            image: files.image.manifest.name.clone(),
            uri: hv.uri().to_string(),
            pool: pool.to_string(),
            volume,
        }),
        Some((found, found_len)) if found != f.sha256 || found_len != f.len => {
            Err(HostImageError::Mismatch(Box::new(Mismatch {
                image: files.image.manifest.name.clone(),
                uri: hv.uri().to_string(),
                volume,
                found,
                found_len,
                want: f.sha256.clone(),
                want_len: f.len,
            })))
        }
        Some(_) => Ok(hv.volume_path(pool, &volume)?.unwrap_or_default()),
    }
}

/// Uploads every file of `files` the host lacks or holds wrongly, and checks what it uploaded;
/// each volume is read back once when it was right already, twice when it was uploaded.
pub fn push(hv: &Hypervisor, pool: &str, files: &ImageFiles) -> Result<HostImage, HostImageError> {
    host_image(files, |f| match verified(hv, pool, files, f) {
        Err(HostImageError::Missing { .. }) => {
            // Readable by qemu whatever user the host runs it as: an image is no secret.
            hv.upload_volume(pool, &f.volume(), &f.path, 0o644)?;
            verified(hv, pool, files, f)
        }
        Err(HostImageError::Mismatch(_)) => {
            hv.delete_volume(pool, &f.volume())?;
            hv.upload_volume(pool, &f.volume(), &f.path, 0o644)?;
            verified(hv, pool, files, f)
        }
        other => other,
    })
}
