//! The one error type of the file-and-process side of provisioning (libvirt has its own:
//! [`crate::hypervisor::HypervisorError`]). Every variant names the file, field or command at fault.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// No `<images_dir>/<name>/manifest.json`.
    #[error("image `{name}` not found: {manifest} does not exist (build it with `make image`)")]
    ImageNotFound { name: String, manifest: PathBuf },

    /// The manifest exists but cannot be read.
    #[error("{path}: cannot read image manifest: {source}")]
    ManifestRead { path: PathBuf, source: io::Error },

    /// The manifest is not JSON.
    #[error("{path}:{line}:{column}: invalid JSON: {message}")]
    ManifestSyntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    /// A manifest field is missing, has the wrong type, or a bad value.
    #[error("{path}: field `{field}`: {message}")]
    ManifestField {
        path: PathBuf,
        field: String,
        message: String,
    },

    /// The manifest names a file (disk, kernel, initrd) that is not there.
    #[error("{manifest}: field `{field}` names {path}, which does not exist")]
    ImageFileMissing {
        manifest: PathBuf,
        field: String,
        path: PathBuf,
    },

    /// A caller-supplied value (spec field, job id, path) is unusable.
    #[error("invalid {field}: {message}")]
    InvalidSpec { field: String, message: String },

    /// A file-system operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    /// An external program could not be started at all (not installed?).
    #[error("cannot run `{program}` (is it installed?): {source}")]
    Spawn { program: String, source: io::Error },

    /// An external program ran and failed; `stderr` is what it said (trimmed, bounded).
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    /// A libvirt call failed (only from the combined steps in [`crate::vm`]).
    #[error(transparent)]
    Hypervisor(#[from] crate::hypervisor::HypervisorError),

    /// A template failed to load or render (a strict undefined variable, a syntax error).
    #[error("template {template}: {source}")]
    Template {
        template: String,
        source: minijinja::Error,
    },
}

impl ProvisionError {
    /// Shorthand for `map_err(ProvisionError::io("read", path))`.
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ProvisionError {
        let path = path.to_path_buf();
        move |source| ProvisionError::Io { op, path, source }
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ProvisionError {
        ProvisionError::InvalidSpec {
            field: field.into(),
            message: message.into(),
        }
    }
}
