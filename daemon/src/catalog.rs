//! The image catalog as admins change it: importing a disk (streamed in, hashed, checked with
//! `qemu-img`, installed, then validated by booting it once to the agent's Ready) and removing an
//! image nobody uses. What may use an image: [`usable`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use minion_provisioning::image::{self, AgentStart, Image};
use minion_provisioning::import::{self, ImportSpec, Validation};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::instances::Instances;

/// Largest upload accepted (bytes).
pub const MAX_IMPORT_BYTES: u64 = 64 << 30;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{0}")]
    BadInput(String),
    #[error("image {name} is in use by {users}: stop using it first")]
    InUse { name: String, users: String },
    #[error("{0}")]
    Provision(#[from] minion_provisioning::ProvisionError),
    #[error("the upload: {0}")]
    Upload(String),
    #[error("the catalog's filesystem has {free} bytes free; the image needs {need} (and {keep} are kept free)")]
    NoSpace { free: u64, need: u64, keep: u64 },
    #[error("{0}")]
    Validation(#[from] crate::validations::ValidationError),
    #[error("catalog task: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// What an import is told before the bytes come.
#[derive(Debug, Clone)]
pub struct ImportHeader {
    pub name: String,
    pub arch: String,
    pub agent_start: String,
    pub size: u64,
}

/// Every catalog image with its validation record (none for a recipe's).
pub fn list(images_dir: &Path) -> Result<Vec<(Image, Option<Validation>)>, CatalogError> {
    Ok(image::list(images_dir)?
        .into_iter()
        .map(|i| {
            let v = import::read_validation(&i);
            (i, v)
        })
        .collect())
}

fn agent_start(s: &str) -> Result<AgentStart, CatalogError> {
    match s {
        "" | "cloud-init" => Ok(AgentStart::CloudInit),
        "systemd" => Ok(AgentStart::Systemd),
        "init" => Ok(AgentStart::Init),
        other => Err(CatalogError::BadInput(format!(
            "agent_start `{other}`: one of cloud-init, systemd, init"
        ))),
    }
}

/// Streams `data` into the catalog as `header.name`, then validates it (the returned image has
/// its validation record: ok or failed). Nothing is left of an upload that fails before the
/// image is installed.
pub async fn import<S>(
    images_dir: &Path,
    keep_free_bytes: u64,
    instances: &Arc<Instances>,
    header: ImportHeader,
    mut data: S,
) -> Result<(Image, Validation), CatalogError>
where
    S: futures::Stream<Item = std::io::Result<Vec<u8>>> + Unpin,
{
    use futures::StreamExt;
    let spec = ImportSpec {
        name: header.name.clone(),
        arch: if header.arch.is_empty() {
            "x86_64".into()
        } else {
            header.arch.clone()
        },
        agent_start: agent_start(&header.agent_start)?,
    };
    if header.size == 0 || header.size > MAX_IMPORT_BYTES {
        return Err(CatalogError::BadInput(format!(
            "size {}: an image of 1 byte to {MAX_IMPORT_BYTES} bytes",
            header.size
        )));
    }
    if image::load(images_dir, &spec.name).is_ok() {
        return Err(CatalogError::BadInput(format!(
            "image {} is in the catalog already (remove it first)",
            spec.name
        )));
    }
    if let Some(free) = minion_channel::free_bytes(images_dir) {
        if free < header.size.saturating_add(keep_free_bytes) {
            return Err(CatalogError::NoSpace {
                free,
                need: header.size,
                keep: keep_free_bytes,
            });
        }
    }
    let staging = import::staging_dir(images_dir, &spec.name)?;
    let received = async {
        let path = staging.join("disk.in");
        let mut f = tokio::fs::File::create(&path)
            .await
            .map_err(|e| CatalogError::Upload(format!("{}: {e}", path.display())))?;
        let (mut hash, mut got) = (Sha256::new(), 0u64);
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| CatalogError::Upload(e.to_string()))?;
            got += chunk.len() as u64;
            if got > header.size {
                return Err(CatalogError::Upload(format!(
                    "more than the {} bytes announced",
                    header.size
                )));
            }
            hash.update(&chunk);
            f.write_all(&chunk)
                .await
                .map_err(|e| CatalogError::Upload(format!("{}: {e}", path.display())))?;
        }
        if got != header.size {
            return Err(CatalogError::Upload(format!(
                "{got} bytes received, {} announced",
                header.size
            )));
        }
        f.sync_all()
            .await
            .map_err(|e| CatalogError::Upload(format!("{}: {e}", path.display())))?;
        Ok(hash
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>())
    }
    .await;
    let sha256 = match received {
        Ok(s) => s,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            return Err(e);
        }
    };
    let (dir, st, sp, sh) = (
        images_dir.to_path_buf(),
        staging.clone(),
        spec.clone(),
        sha256.clone(),
    );
    let image = tokio::task::spawn_blocking(move || import::install(&dir, &st, &sp, &sh))
        .await
        .map_err(CatalogError::Task)??;
    tracing::info!(image = %spec.name, sha256 = %sha256, bytes = header.size, dir = %image.dir.display(), "image imported; validating it");
    let validation = validate(&image, instances).await?;
    Ok((image, validation))
}

/// Boots `image` once to the agent's Ready and records how that went beside its manifest.
pub async fn validate(
    image: &Image,
    instances: &Arc<Instances>,
) -> Result<Validation, CatalogError> {
    Ok(instances.validate(image).await?)
}

/// Removes `name` from the catalog unless something named in `users` uses it.
pub fn remove(images_dir: &Path, name: &str, users: &[String]) -> Result<PathBuf, CatalogError> {
    if !users.is_empty() {
        return Err(CatalogError::InUse {
            name: name.to_string(),
            users: users.join(", "),
        });
    }
    Ok(import::remove(images_dir, name)?)
}
