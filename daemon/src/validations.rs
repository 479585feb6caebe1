//! Validation of catalog images: before any pool or instance starts a VM of an image, the image
//! has booted once to the agent's Ready, and how that went is recorded beside its manifest
//! (`validation.json`: ok with the time, or failed with why).
//!
//! ```text
//! a VM of image I is wanted → I's record says ok → go on
//!                           → failed            → refused with its reason
//!                           → none or pending   → validate I (one boot), record, then decide
//! ```
//!
//! Imported images are validated when imported, `minion image build` validates what it built,
//! and an image with no record (built by `make image`) or a pending one (a daemon died during its
//! validation) is validated by the first VM start that wants it. One validation per image at a
//! time: in this daemon by a lock per image directory, and across daemons sharing the catalog by
//! an advisory lock file in that directory (released by the kernel if its holder dies). The VM
//! start that waits holds its pool slot, so the validation boot stays within the pool's limit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minion_provisioning::image::{self, Image};
use minion_provisioning::import::{self, Validation, ValidationState};
use tokio_util::sync::CancellationToken;

use crate::config::{GuestNetwork, PoolConfig, VmStart};
use crate::guestvm::{self, BootError, VmContext};
use crate::pool::Pool;

/// The lock file other daemons sharing the catalog wait on.
const LOCK_FILE: &str = ".validation.lock";
/// The validation boot's console log, beside the manifest.
const CONSOLE_FILE: &str = "validation-console.log";

#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("image {name} failed its validation: {reason}")]
    Failed { name: String, reason: String },
    #[error("image {name}: {source}")]
    Image {
        name: String,
        #[source]
        source: minion_provisioning::ProvisionError,
    },
    #[error("miniond is stopping: the validation of image {0} was stopped")]
    Stopped(String),
    #[error("validation task: {0}")]
    Task(#[source] tokio::task::JoinError),
}

pub struct Validations {
    ctx: VmContext,
    stop: CancellationToken,
    /// One validation at a time per image directory, in this daemon.
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    /// Records this daemon could not write to the catalog (a read-only images_dir): kept for
    /// its lifetime instead.
    unwritten: Mutex<HashMap<PathBuf, Validation>>,
}

impl From<ValidationError> for BootError {
    fn from(e: ValidationError) -> BootError {
        match e {
            ValidationError::Failed { name, reason } => BootError::Unvalidated { name, reason },
            ValidationError::Image { name, source } => BootError::Image { name, source },
            ValidationError::Stopped(_) => BootError::Cancelled {
                while_booting: false,
            },
            ValidationError::Task(source) => BootError::Task {
                what: "validation",
                source,
            },
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Validations {
    pub fn new(ctx: &VmContext) -> Arc<Validations> {
        Arc::new(Validations {
            ctx: ctx.clone(),
            stop: CancellationToken::new(),
            locks: Mutex::default(),
            unwritten: Mutex::default(),
        })
    }

    /// Stops validation boots (they are torn down).
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    fn record(&self, image: &Image) -> Option<Validation> {
        import::read_validation(image).or_else(|| lock(&self.unwritten).get(&image.dir).cloned())
    }

    /// Returns once `pool`'s image may be used: its record says ok, or it has none (or a pending
    /// one) and validating it now, in `pool`'s VM shape, succeeds.
    pub async fn ensure(self: &Arc<Self>, pool: &Pool) -> Result<(), ValidationError> {
        let cfg = pool.cfg();
        let (dir, name) = (self.ctx.images_dir.clone(), cfg.image.clone());
        let img = tokio::task::spawn_blocking(move || image::load(&dir, &name))
            .await
            .map_err(ValidationError::Task)?
            .map_err(|source| ValidationError::Image {
                name: cfg.image.clone(),
                source,
            })?;
        let v = match self.record(&img) {
            Some(v) if v.state != ValidationState::Pending => v,
            // Its own task: a waiter that gives up (its job cancelled) never drops a boot
            // half-way; the next waiter finds the record.
            _ => {
                let (me, img, cfg) = (self.clone(), img.clone(), (*cfg).clone());
                tokio::spawn(async move { me.validate(&img, &cfg, false).await })
                    .await
                    .map_err(ValidationError::Task)??
            }
        };
        match v.state {
            ValidationState::Ok => Ok(()),
            _ => Err(ValidationError::Failed {
                name: img.manifest.name.clone(),
                reason: v.reason,
            }),
        }
    }

    /// Validates `image` by booting it once in the VM shape of `shape` and records the outcome.
    /// Unless `again`, an image another validation recorded meanwhile is not booted twice.
    pub async fn validate(
        &self,
        image: &Image,
        shape: &PoolConfig,
        again: bool,
    ) -> Result<Validation, ValidationError> {
        let in_process = lock(&self.locks)
            .entry(image.dir.clone())
            .or_default()
            .clone();
        let _mine = in_process.lock().await;
        let lock_path = image.dir.join(LOCK_FILE);
        let _shared = tokio::task::spawn_blocking(move || file_lock(&lock_path))
            .await
            .map_err(ValidationError::Task)?;
        if !again {
            if let Some(v) = self
                .record(image)
                .filter(|v| v.state != ValidationState::Pending)
            {
                return Ok(v);
            }
        }
        let name = image.manifest.name.clone();
        tracing::info!(image = %name, "validating the image: one boot to the agent's Ready");
        let v = match self.boot(image, shape).await {
            Ok(ready) => Validation {
                state: ValidationState::Ok,
                reason: String::new(),
                ready_ms: u64::try_from(ready.as_millis()).unwrap_or(u64::MAX),
                at: import::now_rfc3339(),
            },
            // Stopped, not judged: the image keeps the record it had.
            Err(BootError::Cancelled { .. }) => return Err(ValidationError::Stopped(name)),
            Err(why) => Validation {
                state: ValidationState::Failed,
                reason: why.to_string(),
                ready_ms: 0,
                at: import::now_rfc3339(),
            },
        };
        match import::write_validation(&image.dir, &v) {
            Ok(()) => {
                lock(&self.unwritten).remove(&image.dir);
            }
            Err(e) => {
                tracing::warn!(image = %name, "recording the validation: {e}; kept in memory until miniond stops");
                lock(&self.unwritten).insert(image.dir.clone(), v.clone());
            }
        }
        tracing::info!(image = %name, state = ?v.state, ready_ms = v.ready_ms, reason = %v.reason, "image validated");
        Ok(v)
    }

    /// One boot to Ready, torn down: domain start → Ready. The console log is kept beside the
    /// image.
    async fn boot(&self, image: &Image, shape: &PoolConfig) -> Result<Duration, BootError> {
        let pc = PoolConfig {
            image: image.manifest.name.clone(),
            max_vms: 1,
            min_ready: 0,
            drained: false,
            packages: None,
            network: GuestNetwork::None,
            start: VmStart::Boot,
            disk_gib: None,
            ..shape.clone()
        };
        let pool = Arc::new(Pool::new(
            &format!("validate/{}", image.manifest.name),
            &pc,
            None,
        ));
        let vm_id = uuid::Uuid::new_v4().to_string();
        let ready = guestvm::boot_to_ready(
            &self.ctx,
            &pool,
            &vm_id,
            Some(image.dir.join(CONSOLE_FILE)),
            &guestvm::Start::Boot,
            None,
            &self.stop,
            &mut |_| {},
        )
        .await?;
        let took = ready.boot;
        if let Err(e) = ready.guard.teardown().await {
            tracing::error!(image = %image.manifest.name, "teardown after the validation boot: {e}");
        }
        Ok(took)
    }
}

/// An exclusive advisory lock on `path` (created if need be), held until the file is dropped;
/// `None` when the file cannot be made (a read-only catalog: this daemon's own lock serves).
fn file_lock(path: &Path) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(path = %path.display(), "no validation lock file: {e}");
            return None;
        }
    };
    loop {
        // SAFETY: flock on a descriptor we own; it blocks until the lock is ours.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Some(f);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            tracing::warn!(path = %path.display(), "locking for the validation: {err}");
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_file_excludes_a_second_holder_until_the_first_is_dropped() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join(LOCK_FILE);
        let held = file_lock(&path).expect("locked");
        let other = std::fs::File::open(&path).expect("open");
        // SAFETY: a non-blocking try on our own descriptor.
        let try_lock = |f: &std::fs::File| unsafe {
            libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB)
        };
        assert_ne!(try_lock(&other), 0, "a second holder got the lock");
        drop(held);
        assert_eq!(try_lock(&other), 0, "released when the holder is dropped");
    }

    #[test]
    fn no_lock_file_in_a_directory_that_cannot_hold_one() {
        assert!(file_lock(Path::new("/nonexistent-dir/x/.validation.lock")).is_none());
    }
}
